//! The server's durable state in SQLite (`<data_dir>/federation.sqlite`, WAL, synchronous
//! FULL): rounds, the updates and chunks received, devices, evaluations and global heads
//! (their blobs are files in `<data_dir>/globals/`). A restart resumes the open round from here.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::path::{Path, PathBuf};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS globals (version INTEGER PRIMARY KEY, round INTEGER NOT NULL,
    blob TEXT NOT NULL, size INTEGER NOT NULL, header_json TEXT NOT NULL,
    created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (round INTEGER PRIMARY KEY, state TEXT NOT NULL,
    global_version INTEGER NOT NULL, opened_ms INTEGER NOT NULL, deadline_ms INTEGER NOT NULL,
    extended INTEGER NOT NULL DEFAULT 0, quorum INTEGER NOT NULL, enrolled INTEGER NOT NULL,
    aggregator TEXT NOT NULL, seed TEXT NOT NULL, bytes_in INTEGER NOT NULL DEFAULT 0,
    participants INTEGER NOT NULL DEFAULT 0, new_version INTEGER, reason TEXT,
    secure INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS chunks (blob TEXT NOT NULL, idx INTEGER NOT NULL,
    device TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (blob, idx));
CREATE TABLE IF NOT EXISTS updates (round INTEGER NOT NULL, device TEXT NOT NULL,
    blob TEXT NOT NULL, cases INTEGER NOT NULL, base_version INTEGER NOT NULL,
    weight REAL NOT NULL, received_ms INTEGER NOT NULL, PRIMARY KEY (round, device));
CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, software TEXT NOT NULL,
    global_version INTEGER NOT NULL, participate INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS server_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evaluations (round INTEGER NOT NULL, device TEXT NOT NULL,
    global_version INTEGER NOT NULL, cases INTEGER NOT NULL, metrics_json TEXT NOT NULL,
    PRIMARY KEY (round, device));
CREATE TABLE IF NOT EXISTS secagg_sessions (round INTEGER PRIMARY KEY, params_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS secagg_events (seq INTEGER PRIMARY KEY AUTOINCREMENT,
    round INTEGER NOT NULL, device TEXT, phase TEXT NOT NULL, body BLOB);
";

/// Keep a secure-aggregation session's parameters with its round.
pub fn put_secagg_session(conn: &Connection, params: &crate::secure::Params) -> anyhow::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO secagg_sessions (round, params_json) VALUES (?1, ?2)",
        rusqlite::params![params.round, serde_json::to_string(params)?],
    )?;
    Ok(())
}

/// Append one step of round `round`'s secure-aggregation history.
pub fn put_secagg_event(
    conn: &Connection,
    round: u64,
    event: &crate::secure::Event,
) -> rusqlite::Result<()> {
    let (device, phase, body) = match event {
        crate::secure::Event::Message {
            device,
            phase,
            body,
        } => (Some(device.as_str()), phase.as_str(), Some(body.as_slice())),
        crate::secure::Event::Closed { phase } => (None, phase.as_str(), None),
    };
    conn.execute(
        "INSERT INTO secagg_events (round, device, phase, body) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![round, device, phase, body],
    )?;
    Ok(())
}

/// Round `round`'s secure-aggregation parameters and history, if stored.
pub fn secagg_session(
    conn: &Connection,
    round: u64,
) -> anyhow::Result<Option<(crate::secure::Params, Vec<crate::secure::Event>)>> {
    let params: Option<String> = conn
        .query_row(
            "SELECT params_json FROM secagg_sessions WHERE round = ?1",
            [round],
            |r| r.get(0),
        )
        .optional()?;
    let Some(params) = params else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare("SELECT device, phase, body FROM secagg_events WHERE round = ?1 ORDER BY seq")?;
    let events = stmt
        .query_map([round], |r| {
            let device: Option<String> = r.get(0)?;
            let phase: String = r.get(1)?;
            let body: Option<Vec<u8>> = r.get(2)?;
            Ok(match device {
                Some(device) => crate::secure::Event::Message {
                    device,
                    phase,
                    body: body.unwrap_or_default(),
                },
                None => crate::secure::Event::Closed { phase },
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some((serde_json::from_str(&params)?, events)))
}

/// Forget every round's secure-aggregation history (a round's ends with it).
pub fn clear_secagg(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("DELETE FROM secagg_events; DELETE FROM secagg_sessions;")
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why the store cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Folder(#[from] radiant_core::durable::DurableError),
    #[error("federation.sqlite: {0}")]
    Database(#[from] rusqlite::Error),
}

/// Open (or make) the store. `globals/` is made durably: the signed heads the database lists
/// must survive a power cut with it.
pub fn open(data_dir: &Path) -> Result<Connection, StoreError> {
    radiant_core::durable::create_dir_durable(&data_dir.join("globals"))?;
    // `fleet` and `rounds list` may open it while `serve` sets it up (`radiant_core::sqlite`).
    Ok(radiant_core::sqlite::open_durable(
        &data_dir.join("federation.sqlite"),
        SCHEMA,
    )?)
}

/// Where global version `version`'s blob is kept.
pub fn global_path(data_dir: &Path, version: u64) -> PathBuf {
    data_dir
        .join("globals")
        .join(format!("{version}.safetensors"))
}

/// One round, as `federation rounds list` prints it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Round {
    pub round: u64,
    pub state: String,
    pub global_version: u64,
    pub deadline_ms: u64,
    pub extended: bool,
    pub quorum: u32,
    pub enrolled: u32,
    pub participants: u32,
    pub aggregator: String,
    pub bytes_in: u64,
    pub new_version: Option<u64>,
    pub reason: Option<String>,
    /// Secure aggregation: the server saw only the sum.
    pub secure: bool,
    #[serde(skip)]
    pub seed: String,
}

fn round_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<Round> {
    Ok(Round {
        round: row.get(0)?,
        state: row.get(1)?,
        global_version: row.get(2)?,
        deadline_ms: row.get(3)?,
        extended: row.get(4)?,
        quorum: row.get(5)?,
        enrolled: row.get(6)?,
        participants: row.get(7)?,
        aggregator: row.get(8)?,
        bytes_in: row.get(9)?,
        new_version: row.get(10)?,
        reason: row.get(11)?,
        seed: row.get(12)?,
        secure: row.get(13)?,
    })
}

const ROUND_COLUMNS: &str = "round, state, global_version, deadline_ms, extended, quorum, enrolled,
    participants, aggregator, bytes_in, new_version, reason, seed, secure";

pub fn rounds(conn: &Connection) -> rusqlite::Result<Vec<Round>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {ROUND_COLUMNS} FROM rounds ORDER BY round"
    ))?;
    let rows = stmt.query_map([], round_from)?;
    rows.collect()
}

pub fn open_round(conn: &Connection) -> rusqlite::Result<Option<Round>> {
    conn.query_row(
        &format!(
            "SELECT {ROUND_COLUMNS} FROM rounds WHERE state = 'open' ORDER BY round DESC LIMIT 1"
        ),
        [],
        round_from,
    )
    .optional()
}

pub fn last_round_number(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT COALESCE(MAX(round), 0) FROM rounds", [], |r| {
        r.get(0)
    })
}

#[allow(clippy::too_many_arguments)]
pub fn insert_round(
    conn: &Connection,
    round: u64,
    global_version: u64,
    deadline_ms: u64,
    quorum: u32,
    enrolled: u32,
    aggregator: &str,
    seed: &str,
    secure: bool,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO rounds (round, state, global_version, opened_ms, deadline_ms, quorum, enrolled,
             aggregator, seed, secure) VALUES (?1, 'open', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![round, global_version, now_ms(), deadline_ms, quorum, enrolled, aggregator, seed, secure],
    )?;
    Ok(())
}

/// A global head stored: version, round, blob hash, header JSON.
#[derive(Debug, Clone)]
pub struct Global {
    pub version: u64,
    pub header_json: String,
}

pub fn latest_global(conn: &Connection) -> rusqlite::Result<Option<Global>> {
    conn.query_row(
        "SELECT version, header_json FROM globals ORDER BY version DESC LIMIT 1",
        [],
        |r| {
            Ok(Global {
                version: r.get(0)?,
                header_json: r.get(1)?,
            })
        },
    )
    .optional()
}

/// A device, as `federation devices list` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub device: String,
    pub software: String,
    pub global_version: u64,
    pub participate: bool,
    pub last_seen_ms: u64,
    pub updates: u64,
}

pub fn devices(conn: &Connection) -> rusqlite::Result<Vec<Device>> {
    let mut stmt = conn.prepare(
        "SELECT d.device, d.software, d.global_version, d.participate, d.last_seen_ms,
             (SELECT COUNT(*) FROM updates u WHERE u.device = d.device)
         FROM devices d ORDER BY d.device",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Device {
            device: r.get(0)?,
            software: r.get(1)?,
            global_version: r.get(2)?,
            participate: r.get(3)?,
            last_seen_ms: r.get(4)?,
            updates: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// A JSON value the server keeps between rounds (the FedAdam moments).
pub fn state<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    key: &str,
) -> anyhow::Result<Option<T>> {
    let text: Option<String> = conn
        .query_row(
            "SELECT value FROM server_state WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| anyhow::anyhow!("server state {key}: {e}")))
        .transpose()
}

pub fn set_state<T: Serialize>(conn: &Connection, key: &str, value: &T) -> anyhow::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO server_state (key, value) VALUES (?1, ?2)",
        params![key, serde_json::to_string(value)?],
    )?;
    Ok(())
}

/// One device's scores of one global head, as `federation evaluations list` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub round: u64,
    pub device: String,
    pub global_version: u64,
    pub cases: u32,
    pub metrics: serde_json::Value,
}

pub fn evaluations(conn: &Connection) -> anyhow::Result<Vec<Evaluation>> {
    let mut stmt = conn.prepare(
        "SELECT round, device, global_version, cases, metrics_json FROM evaluations
         ORDER BY global_version, device",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    rows.map(|row| {
        let (round, device, global_version, cases, metrics) = row?;
        let metrics = serde_json::from_str(&metrics)
            .map_err(|e| anyhow::anyhow!("evaluation of {device}: {e}"))?;
        Ok(Evaluation {
            round,
            device,
            global_version,
            cases,
            metrics,
        })
    })
    .collect()
}
