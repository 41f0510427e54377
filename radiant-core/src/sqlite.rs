//! The one way a durable SQLite database is opened by processes that may start side by side
//! (a daemon and the CLI beside it): the lock wait is set before anything else, then WAL,
//! synchronous FULL and the schema are set up in one write transaction taken up front. Two
//! processes setting up a new database, or one recovering after a power cut, can each hold the
//! read lock the other must upgrade from; SQLite then answers "busy" at once instead of
//! waiting, so the set-up is tried again until the lock wait is over.

use rusqlite::{Connection, ErrorCode};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long opening a database waits for another process's lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Open (or make) the database at `path`, WAL and synchronous FULL, with `schema` (idempotent
/// statements such as `CREATE TABLE IF NOT EXISTS`) applied.
pub fn open_durable(path: &Path, schema: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(LOCK_WAIT)?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match set_up(&conn, schema) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
            Ok(()) => return Ok(conn),
        }
    }
}

fn set_up(conn: &Connection, schema: &str) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(&format!("BEGIN IMMEDIATE;{schema}COMMIT;"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_opening_a_new_database_at_once_all_get_it() {
        let schema = "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);";
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let openers: Vec<_> = (0..4)
                .map(|i| {
                    let path = dir.path().join("state.sqlite");
                    std::thread::spawn(move || {
                        let conn = open_durable(&path, schema)?;
                        conn.execute(
                            "INSERT INTO kv (key, value) VALUES (?1, 'yes')",
                            [format!("opener-{i}")],
                        )?;
                        Ok::<_, rusqlite::Error>(())
                    })
                })
                .collect();
            for opener in openers {
                opener.join().unwrap().unwrap();
            }
        }
    }

    #[test]
    fn the_database_is_wal_and_synchronous_full() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_durable(&dir.path().join("db.sqlite"), "").unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let synchronous: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), synchronous), ("wal", 2));
    }
}
