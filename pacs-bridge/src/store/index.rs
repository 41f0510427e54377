//! The spool's SQLite index: schema, connection settings and the queries other modules share.
//!
//! WAL mode with `synchronous=FULL`: a committed transaction is on disk when `commit` returns,
//! and readers (the CLI, the assembler) never block the committer.
//!
//! `purge_pending` and `purged_studies` belong to retention ([`super::purge`]): the spool files
//! of purged studies not deleted yet, and the record of every purge. Both are created where
//! missing, so an index of an earlier release gains them on open.

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

use super::StoreError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid    TEXT PRIMARY KEY NOT NULL,
    sop_class_uid       TEXT NOT NULL,
    study_uid           TEXT NOT NULL,
    series_uid          TEXT NOT NULL,
    modality            TEXT NOT NULL DEFAULT '',
    transfer_syntax_uid TEXT NOT NULL,
    calling_ae          TEXT NOT NULL,
    path                TEXT NOT NULL,
    size                INTEGER NOT NULL,
    received_at_ms      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_study ON instances(study_uid, calling_ae);
CREATE TABLE IF NOT EXISTS studies (
    study_uid             TEXT NOT NULL,
    calling_ae            TEXT NOT NULL,
    state                 TEXT NOT NULL CHECK (state IN ('receiving', 'complete')),
    first_received_at_ms  INTEGER NOT NULL,
    last_received_at_ms   INTEGER NOT NULL,
    completed_at_ms       INTEGER,
    completion_announced  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (study_uid, calling_ae)
);
CREATE TABLE IF NOT EXISTS purge_pending (
    path          TEXT PRIMARY KEY NOT NULL,
    purged_at_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS purged_studies (
    id            INTEGER PRIMARY KEY,
    study_uid     TEXT NOT NULL,
    calling_ae    TEXT NOT NULL,
    reason        TEXT NOT NULL,
    instances     INTEGER NOT NULL,
    bytes         INTEGER NOT NULL,
    purged_at_ms  INTEGER NOT NULL
);
";

/// Open (creating if needed) the index at `path` with the durability settings above.
pub fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| StoreError::index(path, e))?;
    configure(&conn).map_err(|e| StoreError::index(path, e))?;
    conn.execute_batch(SCHEMA)
        .map_err(|e| StoreError::index(path, e))?;
    Ok(conn)
}

/// Open an existing index for reading only (the CLI); fails if the daemon never ran.
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::NoIndex(path.to_path_buf()));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| StoreError::index(path, e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| StoreError::index(path, e))?;
    Ok(conn)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

/// One row of `appliance studies list`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StudySummary {
    pub study_uid: String,
    pub calling_ae: String,
    pub state: String,
    pub instances: u64,
    pub series: u64,
    pub first_received_at_ms: i64,
    pub last_received_at_ms: i64,
    pub completed_at_ms: Option<i64>,
}

pub fn list_studies(conn: &Connection) -> rusqlite::Result<Vec<StudySummary>> {
    let mut stmt = conn.prepare(
        "SELECT s.study_uid, s.calling_ae, s.state,
                COUNT(i.sop_instance_uid), COUNT(DISTINCT i.series_uid),
                s.first_received_at_ms, s.last_received_at_ms, s.completed_at_ms
         FROM studies s
         LEFT JOIN instances i ON i.study_uid = s.study_uid AND i.calling_ae = s.calling_ae
         GROUP BY s.study_uid, s.calling_ae
         ORDER BY s.first_received_at_ms, s.study_uid",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(StudySummary {
            study_uid: r.get(0)?,
            calling_ae: r.get(1)?,
            state: r.get(2)?,
            instances: r.get::<_, i64>(3)? as u64,
            series: r.get::<_, i64>(4)? as u64,
            first_received_at_ms: r.get(5)?,
            last_received_at_ms: r.get(6)?,
            completed_at_ms: r.get(7)?,
        })
    })?;
    rows.collect()
}

/// An instance's place in the spool, relative to the data directory.
pub fn instance_path(
    conn: &Connection,
    sop_instance_uid: &str,
) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT path FROM instances WHERE sop_instance_uid = ?1",
        [sop_instance_uid],
        |r| r.get(0),
    )
    .optional()
}

/// Studies still receiving: instances came in and the study is not complete yet.
pub fn receiving_studies(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT COUNT(*) FROM studies WHERE state = 'receiving'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
}

/// Number of instances and their total bytes.
pub fn totals(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM instances",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
}

/// One series of a study from one sender, with its files (absolute paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesFiles {
    pub series_uid: String,
    pub modality: String,
    pub files: Vec<std::path::PathBuf>,
}

/// One series with the spool files of its instances, whoever sent them.
pub fn series_files(
    conn: &Connection,
    data_dir: &Path,
    series_uid: &str,
) -> rusqlite::Result<Option<SeriesFiles>> {
    let mut stmt =
        conn.prepare("SELECT modality, path FROM instances WHERE series_uid = ?1 ORDER BY path")?;
    let rows = stmt.query_map([series_uid], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out: Option<SeriesFiles> = None;
    for row in rows {
        let (modality, path) = row?;
        out.get_or_insert_with(|| SeriesFiles {
            series_uid: series_uid.to_string(),
            modality,
            files: Vec::new(),
        })
        .files
        .push(data_dir.join(path));
    }
    Ok(out)
}

/// The series of a study with this modality, whoever sent them (Series Instance UIDs, sorted).
pub fn series_of_modality(
    conn: &Connection,
    study_uid: &str,
    modality: &str,
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT DISTINCT series_uid FROM instances
         WHERE study_uid = ?1 AND modality = ?2 COLLATE NOCASE ORDER BY series_uid",
    )?;
    let rows = stmt.query_map([study_uid, modality], |r| r.get(0))?;
    rows.collect()
}

/// The series of (study, calling AE) with the spool files of their instances.
pub fn series_of_study(
    conn: &Connection,
    data_dir: &Path,
    study_uid: &str,
    calling_ae: &str,
) -> rusqlite::Result<Vec<SeriesFiles>> {
    let mut stmt = conn.prepare(
        "SELECT series_uid, modality, path FROM instances
         WHERE study_uid = ?1 AND calling_ae = ?2 ORDER BY series_uid, path",
    )?;
    let rows = stmt.query_map([study_uid, calling_ae], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out: Vec<SeriesFiles> = Vec::new();
    for row in rows {
        let (series_uid, modality, path) = row?;
        match out.last_mut() {
            Some(last) if last.series_uid == series_uid => last.files.push(data_dir.join(path)),
            _ => out.push(SeriesFiles {
                series_uid,
                modality,
                files: vec![data_dir.join(path)],
            }),
        }
    }
    Ok(out)
}

/// One (study, calling AE) group as retention judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyGroup {
    pub study_uid: String,
    pub calling_ae: String,
    /// `complete` and its completion announced (inference and label intake were handed it).
    pub complete: bool,
    pub completed_at_ms: Option<i64>,
    pub last_received_at_ms: i64,
    pub instances: u64,
    pub bytes: u64,
}

/// Every (study, calling AE) group with its instance count and bytes, oldest completion first.
pub fn study_groups(conn: &Connection) -> rusqlite::Result<Vec<StudyGroup>> {
    let mut stmt = conn.prepare(
        "SELECT s.study_uid, s.calling_ae,
                s.state = 'complete' AND s.completion_announced = 1,
                s.completed_at_ms, s.last_received_at_ms,
                COUNT(i.sop_instance_uid), COALESCE(SUM(i.size), 0)
         FROM studies s
         LEFT JOIN instances i ON i.study_uid = s.study_uid AND i.calling_ae = s.calling_ae
         GROUP BY s.study_uid, s.calling_ae
         ORDER BY s.completed_at_ms, s.first_received_at_ms, s.study_uid",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(StudyGroup {
            study_uid: r.get(0)?,
            calling_ae: r.get(1)?,
            complete: r.get(2)?,
            completed_at_ms: r.get(3)?,
            last_received_at_ms: r.get(4)?,
            instances: r.get::<_, i64>(5)?.max(0) as u64,
            bytes: r.get::<_, i64>(6)?.max(0) as u64,
        })
    })?;
    rows.collect()
}
