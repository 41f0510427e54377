//! The updater's durable state, `<data_dir>/federation/updater.sqlite` (WAL, synchronous
//! FULL): the outbox of updates not yet acknowledged, the chunks of the global head being
//! fetched, the installed global version, the privacy accountant, and the link status that
//! `updater status` prints.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

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

pub fn open(data_dir: &Path) -> rusqlite::Result<Connection> {
    let dir = data_dir.join("federation");
    let _ = std::fs::create_dir_all(&dir);
    let conn = Connection::open(dir.join("updater.sqlite"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
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
