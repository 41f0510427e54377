//! `appliance studies ...`: reads the spool index directly, so it works with or without a
//! running daemon (SQLite WAL lets it read while the daemon writes).

use pacs_bridge::store::{self, index};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

/// One line of `studies list --json`.
#[derive(Debug, Serialize)]
pub struct StudyLine {
    pub study_uid: String,
    pub instances: u64,
    pub series: u64,
    pub state: String,
    pub calling_ae: String,
    /// When the first instance arrived (RFC 3339, UTC).
    pub received_at: String,
    pub last_received_at: String,
    pub completed_at: Option<String>,
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn list(data_dir: &Path) -> anyhow::Result<Vec<StudyLine>> {
    let conn = index::open_read_only(&store::index_path(data_dir))?;
    Ok(index::list_studies(&conn)?
        .into_iter()
        .map(|s| StudyLine {
            study_uid: s.study_uid,
            instances: s.instances,
            series: s.series,
            state: s.state,
            calling_ae: s.calling_ae,
            received_at: rfc3339(s.first_received_at_ms),
            last_received_at: rfc3339(s.last_received_at_ms),
            completed_at: s.completed_at_ms.map(rfc3339),
        })
        .collect())
}
