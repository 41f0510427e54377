//! Index rows rebuilt from the Part 10 files: the files are the truth. At start-up, a spool
//! file the index does not list (its index commit cut short by a crash, or the index lost or
//! replaced) is read back: the file meta group we wrote names the sender (Source Application
//! Entity Title) and the transfer syntax, the bounded walker gives the identifying attributes,
//! and a file whose place in the spool (`spool/<study>/<sop>.dcm`) agrees with them gets its
//! `instances` row and a `receiving` study row again; assembly then completes the study as
//! usual. A file that cannot be placed so is not guessed at: the caller quarantines it.

use crate::dataset;
use rusqlite::{params, Connection};
use std::path::Path;

/// Most bytes read of one file here: the largest instance the SCP can accept is far below.
const MAX_FILE_BYTES: u64 = 4 << 30;

/// Put the spool file at `path` (`relative` to the data folder) back into the index, or say
/// why it cannot be placed.
pub(super) fn reindex(conn: &Connection, path: &Path, relative: &str) -> Result<(), String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > MAX_FILE_BYTES {
        return Err(format!("{size} bytes, more than any instance we accept"));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err("not a Part 10 file".into());
    }
    let (meta_end, encoding) = dataset::check_meta(&bytes, bytes.len()).map_err(|e| match e {
        dataset::MetaError::Malformed(m) => format!("file meta group: {m}"),
        dataset::MetaError::TransferSyntax(t) => format!("transfer syntax {t} is not accepted"),
    })?;
    let meta = dicom_object::meta::FileMetaTable::from_reader(&bytes[128..meta_end])
        .map_err(|e| format!("file meta group: {e}"))?;
    let calling_ae = meta
        .source_application_entity_title
        .as_deref()
        .map(|t| t.trim_end_matches(['\0', ' ']).trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or("no Source Application Entity Title: not a file the spool wrote")?;
    let identity = dataset::inspect(&bytes[meta_end..], encoding, MAX_FILE_BYTES as usize)
        .map_err(|e| format!("dataset: {e}"))?;
    let field = |value: Option<String>, name: &str| {
        value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("no {name}"))
    };
    let sop_instance_uid = field(identity.sop_instance_uid, "SOP Instance UID")?;
    let sop_class_uid = field(identity.sop_class_uid, "SOP Class UID")?;
    let study_uid = field(identity.study_instance_uid, "Study Instance UID")?;
    let series_uid = field(identity.series_instance_uid, "Series Instance UID")?;
    let expected = format!("spool/{study_uid}/{sop_instance_uid}.dcm");
    if relative != expected {
        return Err("its place in the spool does not match its UIDs".into());
    }
    let received_at_ms = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let transfer_syntax = meta.transfer_syntax().trim_end_matches('\0').to_string();
    let fail = |e: rusqlite::Error| format!("index: {e}");
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid,
             modality, transfer_syntax_uid, calling_ae, path, size, received_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            sop_instance_uid,
            sop_class_uid,
            study_uid,
            series_uid,
            identity.modality.unwrap_or_default(),
            transfer_syntax,
            calling_ae,
            relative,
            (bytes.len() - meta_end) as i64,
            received_at_ms
        ],
    )
    .map_err(fail)?;
    if inserted == 0 {
        return Err("another spool file holds its SOP Instance UID".into());
    }
    // The study completes again after its quiet period, like one still receiving.
    conn.execute(
        "INSERT INTO studies (study_uid, calling_ae, state, first_received_at_ms, last_received_at_ms)
         VALUES (?1, ?2, 'receiving', ?3, ?3)
         ON CONFLICT (study_uid, calling_ae) DO UPDATE SET
             first_received_at_ms = min(first_received_at_ms, excluded.first_received_at_ms),
             last_received_at_ms = max(last_received_at_ms, excluded.last_received_at_ms),
             state = 'receiving', completed_at_ms = NULL, completion_announced = 0",
        params![study_uid, calling_ae, received_at_ms],
    )
    .map_err(fail)?;
    Ok(())
}
