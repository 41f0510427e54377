//! One inference result as DICOM objects on disk: a SEG on the source geometry, a TID 1500
//! SR that references it, and, when a destination takes it, a Secondary Capture of the source
//! slices with the outlines burned in; under `<data_dir>/results/<job id>/`. The SEG is read
//! back and checked against the label map before anything is kept; every file is fsync'd
//! (file, then directory) before the job that made them may commit, so the outbox never
//! points at a file a crash could lose. Whether the result is negative (no finding, nothing
//! segmented) is decided here too, for destinations that do not want negative studies.

use crate::config::{ResultObject, ResultsConfig};
use anyhow::Context;
use models::infer::Inference;
use models::registry::Outputs;
use pacs_bridge::objects::sc;
use pacs_bridge::objects::seg::{self, Segment};
use pacs_bridge::objects::sr::{self, Finding, MeasuredSegment, Report};
use pacs_bridge::objects::Creator;
use pacs_bridge::volume::SeriesVolume;
use radiant_core::durable::{create_dir_durable, fsync_dir, write_synced};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The SOP classes of the objects a result is written as (the SCU's abstract syntaxes).
pub const CREATED_SOP_CLASSES: &[&str] = &[
    seg::SEGMENTATION_STORAGE,
    sr::COMPREHENSIVE_SR_STORAGE,
    sc::MULTI_FRAME_TRUE_COLOR_SC_STORAGE,
];

/// What a created object of SOP class `uid` holds, in words.
pub fn created_object_role(uid: &str) -> &'static str {
    match uid {
        seg::SEGMENTATION_STORAGE => "the segmentation, on the source series' geometry",
        sr::COMPREHENSIVE_SR_STORAGE => {
            "the findings and measurements (TID 1500), referencing the SEG"
        }
        sc::MULTI_FRAME_TRUE_COLOR_SC_STORAGE => {
            "the source slices with the outlines and a NOT FOR DIAGNOSTIC USE banner burned in, \
             referencing each source slice"
        }
        _ => "(not created)",
    }
}

/// One object written for a result.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedObject {
    pub kind: ResultObject,
    pub sop_instance_uid: String,
    /// Relative to the data directory.
    pub path: PathBuf,
}

/// The folder of one job's objects, relative to the data directory.
pub fn job_dir(job_id: i64) -> PathBuf {
    PathBuf::from("results").join(job_id.to_string())
}

/// The objects of one result, and whether it is negative.
#[derive(Debug, Clone, Default)]
pub struct Exported {
    pub objects: Vec<ExportedObject>,
    /// No finding at or above the threshold (for a model that classifies), or no voxel
    /// segmented (for one that does not).
    pub negative: bool,
}

/// Write, check and fsync the SEG and SR of `result`, and its SC when `sc_wanted` says so for
/// a result that is (`true`) or is not negative. `uid_seed` names the job: the same job gives
/// the same UIDs.
#[allow(clippy::too_many_arguments)]
pub fn export(
    data_dir: &Path,
    job_id: i64,
    series: &SeriesVolume,
    result: &Inference,
    manifest: Outputs<'_>,
    config: &ResultsConfig,
    uid_seed: &str,
    sc_wanted: &dyn Fn(bool) -> bool,
) -> anyhow::Result<Exported> {
    let creator = Creator {
        model_name: manifest.id.to_string(),
        // The version of what ran: "0.1.0", or "0.1.0+head.3" with a head fine-tuned here.
        model_version: result.model_version.clone(),
        backend: result.backend.clone(),
        device_serial: config.device_serial.clone(),
        software_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut segments = Vec::new();
    for label in manifest.labels {
        let (Some(category), Some(property_type)) = (&label.category, &label.property_type) else {
            anyhow::bail!(
                "model {} label {:?} has no category and type codes in its manifest; \
                 a SEG needs them",
                manifest.id,
                label.name
            );
        };
        segments.push(Segment {
            number: label.value,
            label: label.name.clone(),
            category: category.clone(),
            property_type: property_type.clone(),
            colour: label.colour,
        });
    }
    let written = seg::build(series, &result.label_map, &segments, &creator, uid_seed)?;
    // What a viewer will see must be what inference produced (the rotated-mask failure).
    let decoded = seg::decode(&written.bytes)?;
    seg::check_geometry(&decoded, series, &result.label_map)
        .context("the SEG failed its geometry check; nothing is sent")?;

    let procedure = manifest
        .report
        .map(|r| r.procedure.clone())
        .with_context(|| {
            format!(
                "model {} has no [report] procedure code in its manifest",
                manifest.id
            )
        })?;
    let finding = match (
        manifest.classification.and_then(|c| c.finding.clone()),
        result.finding_probability,
    ) {
        (Some(code), Some(probability)) => Some(Finding {
            code,
            probability,
            threshold: config.finding_threshold,
        }),
        _ => None,
    };
    let report = Report {
        procedure,
        seg_sop_instance_uid: written.sop_instance_uid.clone(),
        seg_series_instance_uid: written.series_instance_uid.clone(),
        segments: segments
            .iter()
            .map(|s| MeasuredSegment {
                number: s.number,
                label: s.label.clone(),
                property_type: s.property_type.clone(),
                volume_ml: result
                    .labels
                    .iter()
                    .find(|l| l.value == s.number)
                    .map(|l| l.ml)
                    .unwrap_or(0.0),
            })
            .collect(),
        finding,
    };
    let negative = match &report.finding {
        Some(f) => f.probability < f.threshold,
        None => result.label_map.iter().all(|&label| label == 0),
    };
    let sr = sr::build(series, &report, &creator, uid_seed)?;
    let outlines = if sc_wanted(negative) {
        Some(sc::build(
            series,
            &result.label_map,
            &segments,
            &creator,
            uid_seed,
        )?)
    } else {
        None
    };

    let dir = job_dir(job_id);
    let absolute = data_dir.join(&dir);
    // Every level durable: the first job's `results` folder is new in the data folder too.
    create_dir_durable(&absolute)?;
    write_synced(&absolute.join("seg.dcm"), &written.bytes)?;
    write_synced(&absolute.join("sr.dcm"), &sr.bytes)?;
    if let Some(outlines) = &outlines {
        write_synced(&absolute.join("sc.dcm"), &outlines.bytes)?;
    }
    fsync_dir(&absolute)?;
    let mut objects = vec![
        ExportedObject {
            kind: ResultObject::Seg,
            sop_instance_uid: written.sop_instance_uid,
            path: dir.join("seg.dcm"),
        },
        ExportedObject {
            kind: ResultObject::Sr,
            sop_instance_uid: sr.sop_instance_uid,
            path: dir.join("sr.dcm"),
        },
    ];
    if let Some(outlines) = outlines {
        objects.push(ExportedObject {
            kind: ResultObject::Sc,
            sop_instance_uid: outlines.sop_instance_uid,
            path: dir.join("sc.dcm"),
        });
    }
    Ok(Exported { objects, negative })
}
