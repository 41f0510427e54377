//! Labelled cases: a DICOM SEG about a series the appliance holds (a radiologist's corrected
//! copy of our SEG, or a segmentation of their own) becomes a segmentation label for that
//! series; a verified SR that states the model's finding present or absent (a radiologist's
//! answer to ours) becomes a classification label for the study's series. Both arrive over
//! DICOM (intake when their study completes) or from a file (`appliance cases import`).
//!
//! A SEG is accepted only when it references a series in the spool, lies exactly on that
//! series' grid (the same re-projection that checks our own SEGs before export), and every
//! segment maps to a label of the model (by its Segmented Property Type code, else by its
//! name). An SR is accepted only when a person verified it (Verification Flag VERIFIED), it
//! states the model's classification finding one way (Yes/No, Present/Absent), and its study
//! holds a series of the model's modality (the one its evidence names, else the only one).
//! Our own SEGs and SRs coming back are refused. Otherwise the case is recorded as refused,
//! with the reason. An accepted segmentation is written as one label value per source voxel
//! to `<data_dir>/cases/<id>/labels.u8`, fsync'd before its row commits.

use crate::db::{self, CaseKind, CaseOrigin, CaseState};
use models::learnable::Learnable;
use pacs_bridge::objects::{seg, sr_read};
use pacs_bridge::store::index;
use pacs_bridge::volume::{self, Limits};
use radiant_core::durable::{create_dir_durable, fsync_dir, write_synced};
use radiant_core::Uid;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a SEG or an SR cannot become a label.
#[derive(Debug, Error)]
pub enum CaseError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("not a usable binary SEG ({seg}) nor a readable SR ({sr})")]
    NotALabel { seg: String, sr: String },
    #[error("the SR is not verified by a person (Verification Flag {0}); only a verified report is a label")]
    Unverified(String),
    #[error("model {0} has no classification finding for an SR to state")]
    NoClassification(String),
    #[error("the SR states nothing about {0}")]
    NoStatement(String),
    #[error("{0}")]
    Contradiction(String),
    #[error("the SR's study {study} holds no {modality} series{}", .reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    UnknownStudy {
        study: Uid,
        modality: String,
        reason: Option<String>,
    },
    #[error("the SR's study holds {count} {modality} series and its evidence names none of them")]
    AmbiguousSeries { count: usize, modality: String },
    #[error("the SEG references no series")]
    NoReference,
    #[error("the SEG references series {series}, which the appliance does not hold{}", .reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    UnknownSeries { series: Uid, reason: Option<String> },
    #[error("the referenced series cannot form a volume: {0}")]
    Volume(String),
    #[error("the SEG is not on the geometry of the series it references: {0}")]
    Geometry(String),
    #[error("the object is this appliance's own result (job {0}), not a radiologist's label; a corrected copy needs its own SOP Instance UID")]
    OwnResult(i64),
    #[error("segment {number} ({label:?}, {code}) is not a label of model {model}")]
    UnknownSegment {
        number: u8,
        label: String,
        code: String,
        model: String,
    },
    #[error("taking the object in panicked ({0})")]
    Panicked(String),
    #[error(
        "crashed {0} times: the appliance stopped while taking this object in; not taken in again"
    )]
    Crashed(u32),
}

/// A case as `appliance cases list` prints it.
#[derive(Debug, Serialize)]
pub struct CaseView {
    pub id: i64,
    pub label_sop_uid: String,
    pub origin: CaseOrigin,
    pub state: CaseState,
    pub reason: Option<String>,
    pub study_uid: Option<String>,
    pub series_uid: Option<String>,
    pub model_id: String,
    /// Segmentation (a SEG) or classification (a verified SR).
    pub kind: CaseKind,
    /// Voxels per model label value.
    pub label_voxels: Option<BTreeMap<String, u64>>,
    /// What a classification label says of the model's finding.
    pub finding: Option<bool>,
}

/// An accepted label before it is stored.
struct Label {
    study_uid: Option<String>,
    series_uid: String,
    /// SHA-256 (hex) of the labelled series' issuer and Patient ID, when it has one.
    patient_key: Option<String>,
    content: Content,
}

enum Content {
    /// Model label value per source voxel.
    Segmentation(Vec<u8>),
    /// The finding is present (or absent).
    Finding(bool),
}

/// A decoded label object.
enum LabelObject {
    Seg(seg::DecodedSeg),
    Report(sr_read::DecodedReport),
}

impl LabelObject {
    fn sop_instance_uid(&self) -> Option<String> {
        match self {
            LabelObject::Seg(d) => d.sop_instance_uid.clone(),
            LabelObject::Report(r) => Some(r.sop_instance_uid.clone()),
        }
    }
}

/// Read and decode the SEG or SR at `path`.
fn read_label_object(path: &Path) -> Result<LabelObject, CaseError> {
    let bytes = std::fs::read(path).map_err(|e| CaseError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let seg_error = match seg::decode(&bytes) {
        Ok(d) => return Ok(LabelObject::Seg(d)),
        Err(e) => e.to_string(),
    };
    sr_read::decode_findings(&bytes)
        .map(LabelObject::Report)
        .map_err(|e| CaseError::NotALabel {
            seg: seg_error,
            sr: e.to_string(),
        })
}

/// Whether an SR that arrived over DICOM speaks about the model's finding at all (stated either
/// way, or both): only those become cases. Other SRs (a scanner's dose report, a report on
/// something else) are not labels and are left alone, not recorded as refused.
pub fn sr_mentions_finding(path: &Path, manifest: &Learnable) -> bool {
    let Some(code) = manifest
        .classification
        .as_ref()
        .and_then(|c| c.finding.as_ref())
    else {
        return false;
    };
    std::fs::read(path)
        .ok()
        .and_then(|bytes| sr_read::decode_findings(&bytes).ok())
        .is_some_and(|report| !matches!(report.finding(code), Ok(None)))
}

/// Turn a decoded SR into a classification label for `manifest`'s model, or say why not.
fn finding_of(
    data_dir: &Path,
    manifest: &Learnable,
    report: sr_read::DecodedReport,
) -> Result<Label, CaseError> {
    if !report.verified {
        return Err(CaseError::Unverified(
            report
                .verification_flag
                .clone()
                .unwrap_or_else(|| "absent".into()),
        ));
    }
    let code = manifest
        .classification
        .as_ref()
        .and_then(|c| c.finding.as_ref())
        .ok_or_else(|| CaseError::NoClassification(manifest.id.clone()))?;
    let present = report
        .finding(code)
        .map_err(|e| CaseError::Contradiction(e.to_string()))?
        .ok_or_else(|| {
            CaseError::NoStatement(format!("{} ({} {})", code.meaning, code.scheme, code.value))
        })?;
    let modality = &manifest.modality;
    let unknown = |e: &dyn std::fmt::Display| CaseError::UnknownStudy {
        study: Uid::new(report.study_uid.as_str()),
        modality: modality.clone(),
        reason: Some(e.to_string()),
    };
    let spool = index::open_read_only(&pacs_bridge::store::index_path(data_dir))
        .map_err(|e| unknown(&e))?;
    let candidates =
        index::series_of_modality(&spool, &report.study_uid, modality).map_err(|e| unknown(&e))?;
    let series_uid = match candidates.as_slice() {
        [] => {
            return Err(CaseError::UnknownStudy {
                study: Uid::new(report.study_uid.as_str()),
                modality: modality.clone(),
                reason: None,
            })
        }
        [only] => only.clone(),
        many => report
            .evidence_series
            .iter()
            .find(|s| many.contains(s))
            .cloned()
            .ok_or(CaseError::AmbiguousSeries {
                count: many.len(),
                modality: modality.clone(),
            })?,
    };
    Ok(Label {
        study_uid: Some(report.study_uid),
        series_uid,
        patient_key: None,
        content: Content::Finding(present),
    })
}

/// Turn a decoded SEG into a label for `manifest`'s model, or say why not.
fn label_of(
    data_dir: &Path,
    manifest: &Learnable,
    decoded: seg::DecodedSeg,
) -> Result<Label, CaseError> {
    // Segment number -> model label value.
    let mut map = [0u8; 256];
    for s in &decoded.segments {
        let by_code = s.property_type.as_ref().and_then(|code| {
            manifest.labels.iter().find(|l| {
                l.property_type
                    .as_ref()
                    .is_some_and(|t| t.scheme == code.scheme && t.value == code.value)
            })
        });
        let label = by_code
            .or_else(|| {
                manifest
                    .labels
                    .iter()
                    .find(|l| l.name.eq_ignore_ascii_case(s.label.trim()))
            })
            .ok_or_else(|| CaseError::UnknownSegment {
                number: s.number,
                label: s.label.clone(),
                code: s
                    .property_type
                    .as_ref()
                    .map(|c| format!("{} {} {:?}", c.scheme, c.value, c.meaning))
                    .unwrap_or_else(|| "no type code".into()),
                model: manifest.id.clone(),
            })?;
        map[usize::from(s.number)] = label.value;
    }
    let series_uid = decoded
        .referenced_series
        .first()
        .ok_or(CaseError::NoReference)?
        .clone();
    let spool = index::open_read_only(&pacs_bridge::store::index_path(data_dir)).map_err(|e| {
        CaseError::UnknownSeries {
            series: Uid::new(series_uid.as_str()),
            reason: Some(e.to_string()),
        }
    })?;
    let files = index::series_files(&spool, data_dir, &series_uid)
        .map_err(|e| CaseError::UnknownSeries {
            series: Uid::new(series_uid.as_str()),
            reason: Some(e.to_string()),
        })?
        .ok_or_else(|| CaseError::UnknownSeries {
            series: Uid::new(series_uid.as_str()),
            reason: None,
        })?
        .files;
    let series =
        volume::build(&files, &Limits::default()).map_err(|e| CaseError::Volume(e.to_string()))?;
    // Overlapping segments (a lesion painted over the brain) go to the label of higher
    // priority, as the manifest declares it.
    let priority = |segment: u8| -> u32 {
        let value = map[usize::from(segment)];
        manifest
            .labels
            .iter()
            .find(|l| l.value == value)
            .map_or(u32::from(value), |l| l.priority.unwrap_or(u32::from(value)))
    };
    let segments = seg::reproject_resolving(&decoded, &series, Some(&priority))
        .map_err(|e| CaseError::Geometry(e.to_string()))?;
    let patient_key = series.patient_identity().map(|who| {
        use sha2::{Digest, Sha256};
        Sha256::digest(who.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    });
    Ok(Label {
        study_uid: decoded.study_uid.clone().or(Some(series.study_uid.clone())),
        series_uid,
        patient_key,
        content: Content::Segmentation(segments.iter().map(|s| map[usize::from(*s)]).collect()),
    })
}

/// Take the SEG or SR at `path` in as a case of `manifest`'s model: accepted with its label
/// stored, or refused with the reason. Both are recorded (a re-sent object replaces its
/// earlier record); the result says which.
pub fn ingest(
    conn: &Connection,
    data_dir: &Path,
    manifest: &Learnable,
    path: &Path,
    origin: CaseOrigin,
) -> anyhow::Result<Result<CaseView, CaseError>> {
    let decoded = read_label_object(path);
    // An object that cannot be read is recorded under the name the spool gave it (its SOP
    // Instance UID), so intake knows it next time; a file from the CLI under its path.
    let sop_uid = decoded
        .as_ref()
        .ok()
        .and_then(LabelObject::sop_instance_uid)
        .unwrap_or_else(|| fallback_key(path, origin));
    let now = db::now_ms();
    // A PACS that routes everything back returns our own SEGs and SRs too: learning from them
    // would teach the model its own mistakes.
    let own_job = own_result(conn, &sop_uid)?;
    // Re-projection reads the referenced series' pixel data: behind a panic boundary too.
    let outcome = decoded.and_then(|d| {
        radiant_core::contain(|| match (own_job, d) {
            (Some(job), _) => Err(CaseError::OwnResult(job)),
            (None, LabelObject::Seg(seg)) => label_of(data_dir, manifest, seg),
            (None, LabelObject::Report(report)) => finding_of(data_dir, manifest, report),
        })
        .unwrap_or_else(|panic| Err(CaseError::Panicked(panic)))
    });
    // One transaction: a reader sees no case, or the case in its final state with its label.
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let (state, reason) = match &outcome {
        Ok(_) => (CaseState::Accepted, None),
        Err(e) => (CaseState::Refused, Some(e.to_string())),
    };
    let id: i64 = tx.query_row(
        "INSERT INTO cases (label_sop_uid, origin, state, reason, model_id, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (label_sop_uid) DO UPDATE SET origin = excluded.origin,
             state = excluded.state, reason = excluded.reason, model_id = excluded.model_id,
             study_uid = NULL, series_uid = NULL, patient_key = NULL, labels_path = NULL,
             label_voxels_json = NULL,
             kind = ?7, finding = NULL, created_at_ms = excluded.created_at_ms
         RETURNING id",
        params![
            sop_uid,
            origin,
            state,
            reason,
            manifest.id,
            now,
            CaseKind::Segmentation
        ],
        |r| r.get(0),
    )?;
    match outcome {
        Ok(Label {
            study_uid,
            series_uid,
            content: Content::Finding(present),
            ..
        }) => {
            tx.execute(
                "UPDATE cases SET study_uid = ?2, series_uid = ?3, kind = ?5,
                     finding = ?4 WHERE id = ?1",
                params![id, study_uid, series_uid, present, CaseKind::Classification],
            )?;
            tx.commit()?;
            tracing::info!(case = id, study = %study_uid.as_deref().map(radiant_core::log_tag).unwrap_or_default(), present, "classification label accepted");
            Ok(Ok(
                get(conn, id)?.ok_or_else(|| anyhow::anyhow!("case {id} vanished"))?
            ))
        }
        Ok(Label {
            study_uid,
            series_uid,
            patient_key,
            content: Content::Segmentation(labels),
        }) => {
            let mut counts = BTreeMap::new();
            for l in &manifest.labels {
                let n = labels.iter().filter(|v| **v == l.value).count() as u64;
                counts.insert(l.value.to_string(), n);
            }
            let dir = PathBuf::from("cases").join(id.to_string());
            let absolute = data_dir.join(&dir);
            create_dir_durable(&absolute)?;
            write_synced(&absolute.join("labels.u8"), &labels)?;
            fsync_dir(&absolute)?;
            tx.execute(
                "UPDATE cases SET study_uid = ?2, series_uid = ?3, labels_path = ?4,
                     label_voxels_json = ?5, patient_key = ?6 WHERE id = ?1",
                params![
                    id,
                    study_uid,
                    series_uid,
                    dir.join("labels.u8").to_string_lossy(),
                    serde_json::to_string(&counts)?,
                    patient_key
                ],
            )?;
            tx.commit()?;
            tracing::info!(case = id, study = %study_uid.as_deref().map(radiant_core::log_tag).unwrap_or_default(), "segmentation label accepted");
            Ok(Ok(
                get(conn, id)?.ok_or_else(|| anyhow::anyhow!("case {id} vanished"))?
            ))
        }
        Err(e) => {
            tx.commit()?;
            tracing::warn!(case = id, reason = %e, "labelled case refused");
            Ok(Err(e))
        }
    }
}

/// The job whose result objects include this SOP Instance UID, if any.
fn own_result(conn: &Connection, sop_uid: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT r.job_id FROM results r, json_each(r.result_json, '$.objects') o
         WHERE json_extract(o.value, '$.sop_instance_uid') = ?1 LIMIT 1",
        [sop_uid],
        |r| r.get(0),
    )
    .optional()
}

fn get(conn: &Connection, id: i64) -> anyhow::Result<Option<CaseView>> {
    Ok(list(conn)?.into_iter().find(|c| c.id == id))
}

/// Every case, oldest first. Stored label counts that are not valid JSON are an error naming
/// the case.
pub fn list(conn: &Connection) -> anyhow::Result<Vec<CaseView>> {
    let mut stmt = conn.prepare(
        "SELECT id, label_sop_uid, origin, state, reason, study_uid, series_uid, model_id,
                label_voxels_json, kind, finding FROM cases ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        let view = CaseView {
            id: r.get(0)?,
            label_sop_uid: r.get(1)?,
            origin: r.get(2)?,
            state: r.get(3)?,
            reason: r.get(4)?,
            study_uid: r.get(5)?,
            series_uid: r.get(6)?,
            model_id: r.get(7)?,
            label_voxels: None,
            kind: r.get(9)?,
            finding: r.get(10)?,
        };
        Ok((view, r.get::<_, Option<String>>(8)?))
    })?;
    let mut cases = Vec::new();
    for row in rows {
        let (mut view, counts) = row?;
        if let Some(counts) = counts {
            view.label_voxels = Some(db::stored_json(
                "cases",
                view.id,
                "label_voxels_json",
                &counts,
            )?);
        }
        cases.push(view);
    }
    Ok(cases)
}

/// The key of an object that cannot be decoded: the spool names a file after its SOP Instance
/// UID; a file given to the CLI goes by its path.
fn fallback_key(path: &Path, origin: CaseOrigin) -> String {
    match (origin, path.file_stem()) {
        (CaseOrigin::Dicom, Some(stem)) => stem.to_string_lossy().into_owned(),
        _ => path.display().to_string(),
    }
}

/// Count one more start of the intake of the object `sop_uid`, committed before anything
/// decodes it; returns how many earlier starts never reached [`end_intake`] (each one took
/// the process down).
pub fn begin_intake(conn: &Connection, sop_uid: &str) -> rusqlite::Result<u32> {
    let attempts: u32 = conn.query_row(
        "INSERT INTO intake_attempts (label_sop_uid, attempts, updated_at_ms) VALUES (?1, 1, ?2)
         ON CONFLICT (label_sop_uid) DO UPDATE SET attempts = attempts + 1,
             updated_at_ms = excluded.updated_at_ms
         RETURNING attempts",
        params![sop_uid, db::now_ms()],
        |r| r.get(0),
    )?;
    Ok(attempts.saturating_sub(1))
}

/// The intake of `sop_uid` ended (a case row, accepted or refused, is recorded).
pub fn end_intake(conn: &Connection, sop_uid: &str) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM intake_attempts WHERE label_sop_uid = ?1",
        [sop_uid],
    )?;
    Ok(())
}

/// Record the object `sop_uid` as refused without decoding it: its intake crashed the process
/// `crashes` times.
pub fn refuse_crashed(
    conn: &Connection,
    manifest: &Learnable,
    sop_uid: &str,
    origin: CaseOrigin,
    crashes: u32,
) -> rusqlite::Result<CaseError> {
    let reason = CaseError::Crashed(crashes);
    conn.execute(
        "INSERT INTO cases (label_sop_uid, origin, state, reason, model_id, created_at_ms, kind)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (label_sop_uid) DO UPDATE SET state = excluded.state,
             reason = excluded.reason",
        params![
            sop_uid,
            origin,
            CaseState::Refused,
            reason.to_string(),
            manifest.id,
            db::now_ms(),
            CaseKind::Segmentation
        ],
    )?;
    Ok(reason)
}

/// Whether the SEG or SR with this SOP Instance UID was already taken in (accepted or refused).
pub fn known(conn: &Connection, sop_uid: &str) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM cases WHERE label_sop_uid = ?1",
            [sop_uid],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_stored_label_counts_fail_the_list_naming_the_case() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db::open(dir.path()).unwrap();
        conn.execute(
            "INSERT INTO cases (id, label_sop_uid, origin, state, model_id, created_at_ms,
                 label_voxels_json)
             VALUES (4, '1.2.3', ?1, ?2, 'm', 0, '{\"1\": 12')",
            params![CaseOrigin::Dicom, CaseState::Accepted],
        )
        .unwrap();
        let err = format!("{:#}", list(&conn).unwrap_err());
        assert!(
            err.starts_with("cases row 4: label_voxels_json is corrupt: "),
            "{err}"
        );
        conn.execute("UPDATE cases SET label_voxels_json = '{\"1\": 12}'", [])
            .unwrap();
        let all = list(&conn).unwrap();
        assert_eq!(
            all[0].label_voxels,
            Some(BTreeMap::from([("1".into(), 12)]))
        );
        assert_eq!(all[0].kind, CaseKind::Segmentation);
    }

    #[test]
    fn an_intake_that_never_ended_counts_as_a_crash_and_a_crashed_object_becomes_known() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db::open(dir.path()).unwrap();
        // A clean intake leaves nothing behind: the next one starts from zero.
        assert_eq!(begin_intake(&conn, "1.2.3").unwrap(), 0);
        end_intake(&conn, "1.2.3").unwrap();
        assert_eq!(begin_intake(&conn, "1.2.3").unwrap(), 0);
        // Two starts that never ended (the process died in them).
        assert_eq!(begin_intake(&conn, "1.2.3").unwrap(), 1);
        assert_eq!(begin_intake(&conn, "1.2.3").unwrap(), 2);
        assert!(!known(&conn, "1.2.3").unwrap());
        let package = models::registry::AnyPackage::open(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/reference/head-ct"),
        )
        .unwrap();
        let manifest = Learnable::of(&package).unwrap();
        let reason = refuse_crashed(&conn, &manifest, "1.2.3", CaseOrigin::Dicom, 2).unwrap();
        end_intake(&conn, "1.2.3").unwrap();
        assert!(known(&conn, "1.2.3").unwrap());
        let case = &list(&conn).unwrap()[0];
        assert_eq!(case.state, CaseState::Refused);
        assert_eq!(case.reason.as_deref(), Some(reason.to_string().as_str()));
        assert!(
            reason.to_string().starts_with("crashed 2 times"),
            "{reason}"
        );
    }
}
