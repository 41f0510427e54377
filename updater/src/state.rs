//! The updater's durable state, `<data_dir>/federation/updater.sqlite` (WAL, synchronous
//! FULL): the outbox of updates not yet acknowledged, the chunks of the global head being
//! fetched, the installed global version, the privacy accountant, and the link status that
//! `updater status` prints.

use radiant_core::durable::{create_dir_durable, DurableError};
use radiant_core::sqlite::open_durable;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use thiserror::Error;

/// Why the state cannot be opened.
#[derive(Debug, Error)]
pub enum StateError {
    #[error("{0}")]
    Folder(#[from] DurableError),
    #[error("updater.sqlite: {0}")]
    Database(#[from] rusqlite::Error),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (round INTEGER PRIMARY KEY, blob TEXT NOT NULL,
    bytes BLOB NOT NULL, commit_json TEXT NOT NULL, state TEXT NOT NULL,
    created_ms INTEGER NOT NULL, sent_ms INTEGER);
CREATE TABLE IF NOT EXISTS global_chunks (blob TEXT NOT NULL, idx INTEGER NOT NULL,
    body BLOB NOT NULL, PRIMARY KEY (blob, idx));
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Open (or make) the state. Its folder is made durably: a power cut after the first update
/// went out must not take the outbox and the privacy accountant with it. `updater status` may
/// open it while `updater run` sets it up (`radiant_core::sqlite`).
pub fn open(data_dir: &Path) -> Result<Connection, StateError> {
    let dir = data_dir.join("federation");
    create_dir_durable(&dir)?;
    Ok(open_durable(&dir.join("updater.sqlite"), SCHEMA)?)
}

pub fn get(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

pub fn set(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)",
        params![key, value],
    )?;
    Ok(())
}

pub fn installed_version(conn: &Connection) -> rusqlite::Result<u64> {
    Ok(get(conn, "installed_version")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// What `updater status --json` prints.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub device: String,
    pub connected: bool,
    pub last_event: Option<String>,
    pub global_version: u64,
    pub last_round: Option<u64>,
    pub queued_updates: u64,
    pub queued_bytes: u64,
    pub epsilon: Option<f64>,
}

pub fn status(conn: &Connection, device: &str) -> rusqlite::Result<Status> {
    let (queued_updates, queued_bytes): (u64, u64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(bytes)), 0) FROM outbox WHERE state = 'queued'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(Status {
        device: device.to_string(),
        connected: get(conn, "connected")?.as_deref() == Some("true"),
        last_event: get(conn, "last_event")?,
        global_version: installed_version(conn)?,
        last_round: get(conn, "last_round")?.and_then(|v| v.parse().ok()),
        queued_updates,
        queued_bytes,
        epsilon: get(conn, "epsilon")?.and_then(|v| v.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_opening_a_new_state_at_once_all_get_it() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let opened: Vec<_> = (0..4)
                .map(|i| {
                    let data = dir.path().to_path_buf();
                    std::thread::spawn(move || {
                        let conn = open(&data)?;
                        set(&conn, &format!("opener-{i}"), "yes")?;
                        Ok::<_, StateError>(())
                    })
                })
                .collect();
            for opener in opened {
                opener.join().unwrap().unwrap();
            }
        }
    }
}
