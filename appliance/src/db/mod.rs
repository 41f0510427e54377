//! `<data_dir>/results.sqlite`, the appliance's database. This module alone opens it (WAL,
//! synchronous=FULL, a busy timeout), owns the schema of every table in it and the numbered
//! migrations that bring an earlier release's file up to date ([`migrations`], keyed on
//! `PRAGMA user_version`), the clock its rows are stamped with ([`now_ms`]), and the states
//! stored in it as enums ([`states`]). The feature modules (`jobs`, `outbox`, `cases`, `heads`,
//! `learn`) query their own tables through the connection [`open`] returns.

mod migrations;
mod schema;
pub mod states;

pub use migrations::SCHEMA_VERSION;
pub use states::{
    CaseKind, CaseOrigin, CaseState, HeadState, JobState, LearnOutcome, OutboxState, Split,
    UnknownState,
};

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// What went wrong with `results.sqlite` or with what is stored in it.
#[derive(Debug, Error)]
pub enum DbError {
    #[error("open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "{} has schema version {found}, this release knows up to {known}: it was written by a \
         newer release (install that release again, or restore a backup of the file)",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("migrate {} to schema version {version}", path.display())]
    Migration {
        path: PathBuf,
        version: i64,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{table} row {id}: {column} is corrupt: {reason}")]
    CorruptRow {
        table: &'static str,
        id: i64,
        column: &'static str,
        reason: String,
    },
}

/// The database file of `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("results.sqlite")
}

/// Open (creating it if need be) the database of `data_dir`, migrated to [`SCHEMA_VERSION`].
pub fn open(data_dir: &Path) -> Result<Connection, DbError> {
    let path = path(data_dir);
    let open_error = |source| DbError::Open {
        path: path.clone(),
        source,
    };
    let mut conn = Connection::open(&path).map_err(open_error)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(open_error)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_error)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_error)?;
    migrations::migrate(&mut conn, &path)?;
    Ok(conn)
}

/// Milliseconds since the Unix epoch: the clock every row's time is stamped with.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parse the JSON stored in `column` of row `id` of `table`; corrupt JSON is an error naming
/// the row and the reason, never a default.
pub fn stored_json<T: serde::de::DeserializeOwned>(
    table: &'static str,
    id: i64,
    column: &'static str,
    text: &str,
) -> Result<T, DbError> {
    serde_json::from_str(text).map_err(|e| DbError::CorruptRow {
        table,
        id,
        column,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_stored_json_is_an_error_naming_the_row_and_the_reason() {
        let err = stored_json::<Vec<String>>("heads", 3, "reasons_json", "[\"cut off")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("heads row 3: reasons_json is corrupt: "),
            "{err}"
        );
        assert!(err.contains("EOF"), "{err}");
        let ok: Vec<String> = stored_json("heads", 3, "reasons_json", "[\"a\"]").unwrap();
        assert_eq!(ok, ["a"]);
    }

    #[test]
    fn the_database_is_opened_in_wal_mode_with_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(dir.path()).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL");
    }
}
