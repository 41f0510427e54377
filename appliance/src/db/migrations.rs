//! Numbered migrations of `results.sqlite`, keyed on `PRAGMA user_version`.
//!
//! The version is the number of the last migration applied. Version 0 is a database no
//! numbered migration has touched: brand new and empty, or written by a release before
//! numbered migrations (it may hold any of migration 1's tables already, its `cases` table
//! perhaps without `kind` and `finding`). Every pending migration and the new version commit
//! in one immediate transaction, so a crash leaves the old version whole, and a second process
//! opening the file at the same moment waits and then finds nothing left to do. A version
//! newer than this code knows is refused: an older release must not write a newer schema.

use super::{schema, DbError};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use std::path::Path;

/// One step of the schema.
pub(super) struct Migration {
    /// The `user_version` after it.
    pub version: i64,
    pub apply: fn(&Transaction<'_>) -> rusqlite::Result<()>,
}

/// Every migration, in order; versions count up from 1.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        apply: tables_before_numbered_migrations,
    },
    Migration {
        version: 2,
        apply: job_attempts,
    },
    Migration {
        version: 3,
        apply: protected_studies,
    },
    Migration {
        version: 4,
        apply: intake_attempts,
    },
    Migration {
        version: 5,
        apply: case_patient_key,
    },
    Migration {
        version: 6,
        apply: case_class_counts,
    },
];

/// The schema version this code writes and reads: the last migration's.
pub const SCHEMA_VERSION: i64 = 6;
const _: () = assert!(MIGRATIONS[MIGRATIONS.len() - 1].version == SCHEMA_VERSION);

/// Migration 1: the tables of the releases before numbered migrations, created where missing;
/// a `cases` table of a release before classification labels gains `kind` and `finding`.
fn tables_before_numbered_migrations(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(schema::JOBS)?;
    tx.execute_batch(schema::OUTBOX)?;
    tx.execute_batch(schema::CASES)?;
    let has_kind: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('cases') WHERE name = 'kind')",
        [],
        |r| r.get(0),
    )?;
    if !has_kind {
        tx.execute_batch(schema::CASES_KIND_AND_FINDING)?;
    }
    tx.execute_batch(schema::HEADS)?;
    tx.execute_batch(schema::LEARN)?;
    Ok(())
}

/// Migration 2: jobs count how often a worker started them, so that a job that takes the
/// process down every time (an abort no panic boundary catches) stops being retried.
fn job_attempts(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(schema::JOB_ATTEMPTS)
}

/// Migration 3: studies an operator protected from retention.
fn protected_studies(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(schema::PROTECTED_STUDIES)
}

/// Migration 4: case intakes count their attempts, so one that crashes the process is not
/// retried for ever.
fn intake_attempts(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(schema::INTAKE_ATTEMPTS)
}

/// Migration 5: cases keep a key of their patient, for a learning split by patient.
fn case_patient_key(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(schema::CASE_PATIENT_KEY)
}

/// Migration 6: a contract-2 model's cases keep a sample of their voxels, with the class
/// counts of the whole grid.
fn case_class_counts(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(schema::CASE_CLASS_COUNTS)
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Bring the database at `path` to [`SCHEMA_VERSION`].
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), DbError> {
    migrate_with(conn, path, MIGRATIONS)
}

fn migrate_with(
    conn: &mut Connection,
    path: &Path,
    migrations: &[Migration],
) -> Result<(), DbError> {
    let known = migrations.last().map_or(0, |m| m.version);
    let too_new = |found: i64| DbError::TooNew {
        path: path.to_path_buf(),
        found,
        known,
    };
    let sqlite = |source| DbError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let found = user_version(conn).map_err(sqlite)?;
    if found == known {
        return Ok(());
    }
    if found > known {
        return Err(too_new(found));
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite)?;
    // Read again under the write lock: another process may have migrated meanwhile.
    let found = user_version(&tx).map_err(sqlite)?;
    if found > known {
        return Err(too_new(found));
    }
    for m in migrations.iter().filter(|m| m.version > found) {
        (m.apply)(&tx)
            .and_then(|()| tx.pragma_update(None, "user_version", m.version))
            .map_err(|source| DbError::Migration {
                path: path.to_path_buf(),
                version: m.version,
                source,
            })?;
    }
    tx.commit().map_err(sqlite)?;
    if found < known {
        tracing::info!(path = %path.display(), from = found, to = known, "results database migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db;

    /// Every table of migration 1 as the last release before numbered migrations created it,
    /// its `cases` table with `kind` and `finding` already.
    const VERSION_0_LATEST: &str = "
        CREATE TABLE IF NOT EXISTS jobs (
            id             INTEGER PRIMARY KEY,
            study_uid      TEXT NOT NULL,
            calling_ae     TEXT NOT NULL,
            series_uid     TEXT NOT NULL,
            model_id       TEXT NOT NULL,
            model_version  TEXT NOT NULL,
            instances      INTEGER NOT NULL,
            state          TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'rejected')),
            error          TEXT,
            created_at_ms  INTEGER NOT NULL,
            updated_at_ms  INTEGER NOT NULL,
            UNIQUE (study_uid, calling_ae, series_uid, model_id, model_version, instances)
        );
        CREATE TABLE IF NOT EXISTS results (
            job_id         INTEGER PRIMARY KEY REFERENCES jobs(id),
            result_json    TEXT NOT NULL,
            created_at_ms  INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS outbox (
            id                  INTEGER PRIMARY KEY,
            job_id              INTEGER NOT NULL REFERENCES jobs(id),
            study_uid           TEXT NOT NULL,
            destination         TEXT NOT NULL,
            kind                TEXT NOT NULL,
            sop_instance_uid    TEXT NOT NULL,
            path                TEXT NOT NULL,
            state               TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
            attempts            INTEGER NOT NULL DEFAULT 0,
            next_attempt_at_ms  INTEGER NOT NULL,
            last_error          TEXT,
            created_at_ms       INTEGER NOT NULL,
            updated_at_ms       INTEGER NOT NULL,
            sent_at_ms          INTEGER,
            UNIQUE (destination, sop_instance_uid)
        );
        CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at_ms);
        CREATE TABLE IF NOT EXISTS cases (
            id                 INTEGER PRIMARY KEY,
            label_sop_uid      TEXT NOT NULL UNIQUE,
            origin             TEXT NOT NULL CHECK (origin IN ('dicom', 'import')),
            state              TEXT NOT NULL CHECK (state IN ('accepted', 'refused')),
            reason             TEXT,
            study_uid          TEXT,
            series_uid         TEXT,
            model_id           TEXT NOT NULL,
            labels_path        TEXT,
            label_voxels_json  TEXT,
            created_at_ms      INTEGER NOT NULL,
            kind               TEXT NOT NULL DEFAULT 'segmentation'
                               CHECK (kind IN ('segmentation', 'classification')),
            finding            INTEGER
        );
        CREATE TABLE IF NOT EXISTS heads (
            id              INTEGER PRIMARY KEY,
            model_id        TEXT NOT NULL,
            global_version  TEXT NOT NULL,
            parent_id       INTEGER REFERENCES heads(id),
            sha256          TEXT NOT NULL,
            path            TEXT NOT NULL,
            state           TEXT NOT NULL CHECK (state IN ('accepted', 'refused')),
            reasons_json    TEXT NOT NULL,
            trigger         TEXT NOT NULL,
            cases_json      TEXT NOT NULL,
            holdout_json    TEXT NOT NULL,
            metrics_json    TEXT NOT NULL,
            seconds         REAL NOT NULL,
            created_at_ms   INTEGER NOT NULL,
            rolled_back_at_ms INTEGER
        );
        CREATE TABLE IF NOT EXISTS champions (
            model_id        TEXT NOT NULL,
            global_version  TEXT NOT NULL,
            head_id         INTEGER REFERENCES heads(id),
            updated_at_ms   INTEGER NOT NULL,
            PRIMARY KEY (model_id, global_version)
        );
        CREATE TABLE IF NOT EXISTS case_splits (
            case_id        INTEGER PRIMARY KEY REFERENCES cases(id),
            split          TEXT NOT NULL CHECK (split IN ('train', 'holdout'))
        );
        CREATE TABLE IF NOT EXISTS case_features (
            case_id         INTEGER PRIMARY KEY REFERENCES cases(id),
            backbone_sha256 TEXT NOT NULL,
            slices          INTEGER NOT NULL,
            plane           INTEGER NOT NULL,
            pixel_ml        REAL NOT NULL,
            finding         INTEGER,
            features_path   TEXT NOT NULL,
            labels_path     TEXT NOT NULL,
            labels_sha256   TEXT NOT NULL,
            created_at_ms   INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS learn_runs (
            id              INTEGER PRIMARY KEY,
            model_id        TEXT NOT NULL,
            global_version  TEXT NOT NULL,
            trigger         TEXT NOT NULL,
            last_case_id    INTEGER NOT NULL,
            outcome         TEXT NOT NULL CHECK (outcome IN ('accepted', 'refused', 'failed')),
            head_id         INTEGER REFERENCES heads(id),
            detail          TEXT,
            started_at_ms   INTEGER NOT NULL,
            finished_at_ms  INTEGER NOT NULL
        );
    ";

    /// The tables of a release before classification labels: jobs, results, the outbox and a
    /// `cases` table without `kind` and `finding`.
    const VERSION_0_BEFORE_CLASSIFICATION_LABELS: &str = "
        CREATE TABLE jobs (
            id             INTEGER PRIMARY KEY,
            study_uid      TEXT NOT NULL,
            calling_ae     TEXT NOT NULL,
            series_uid     TEXT NOT NULL,
            model_id       TEXT NOT NULL,
            model_version  TEXT NOT NULL,
            instances      INTEGER NOT NULL,
            state          TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'rejected')),
            error          TEXT,
            created_at_ms  INTEGER NOT NULL,
            updated_at_ms  INTEGER NOT NULL,
            UNIQUE (study_uid, calling_ae, series_uid, model_id, model_version, instances)
        );
        CREATE TABLE results (
            job_id         INTEGER PRIMARY KEY REFERENCES jobs(id),
            result_json    TEXT NOT NULL,
            created_at_ms  INTEGER NOT NULL
        );
        CREATE TABLE outbox (
            id                  INTEGER PRIMARY KEY,
            job_id              INTEGER NOT NULL REFERENCES jobs(id),
            study_uid           TEXT NOT NULL,
            destination         TEXT NOT NULL,
            kind                TEXT NOT NULL,
            sop_instance_uid    TEXT NOT NULL,
            path                TEXT NOT NULL,
            state               TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
            attempts            INTEGER NOT NULL DEFAULT 0,
            next_attempt_at_ms  INTEGER NOT NULL,
            last_error          TEXT,
            created_at_ms       INTEGER NOT NULL,
            updated_at_ms       INTEGER NOT NULL,
            sent_at_ms          INTEGER,
            UNIQUE (destination, sop_instance_uid)
        );
        CREATE INDEX outbox_due ON outbox (state, next_attempt_at_ms);
        CREATE TABLE cases (
            id INTEGER PRIMARY KEY, label_sop_uid TEXT NOT NULL UNIQUE,
            origin TEXT NOT NULL, state TEXT NOT NULL, reason TEXT, study_uid TEXT,
            series_uid TEXT, model_id TEXT NOT NULL, labels_path TEXT,
            label_voxels_json TEXT, created_at_ms INTEGER NOT NULL);
    ";

    /// A database file at `dir` as an earlier release left it: `schema`, then `rows`.
    fn written_by_an_earlier_release(dir: &Path, schema: &str, rows: &str) {
        let conn = Connection::open(db::path(dir)).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(schema).unwrap();
        conn.execute_batch(rows).unwrap();
    }

    fn version(conn: &Connection) -> i64 {
        user_version(conn).unwrap()
    }

    /// Table -> its columns (name, type, not null, default, primary key), and the indexes.
    fn shape(conn: &Connection) -> Vec<(String, Vec<(String, String, bool, Option<String>, i64)>)> {
        let mut tables: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'index') ORDER BY name",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        tables.retain(|t| !t.starts_with("sqlite_"));
        tables
            .into_iter()
            .map(|t| {
                let columns = conn
                    .prepare(
                        "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1)",
                    )
                    .unwrap()
                    .query_map([&t], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                (t, columns)
            })
            .collect()
    }

    #[test]
    fn a_version_0_database_with_the_cases_table_before_classification_labels_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        written_by_an_earlier_release(
            dir.path(),
            VERSION_0_BEFORE_CLASSIFICATION_LABELS,
            "INSERT INTO jobs (id, study_uid, calling_ae, series_uid, model_id, model_version,
                 instances, state, created_at_ms, updated_at_ms)
             VALUES (7, '1.2.3', 'CT1', '1.2.3.4', 'm', '1', 20, 'done', 1, 2);
             INSERT INTO results (job_id, result_json, created_at_ms)
             VALUES (7, '{\"finding_probability\": 0.25}', 2);
             INSERT INTO outbox (job_id, study_uid, destination, kind, sop_instance_uid, path,
                 state, next_attempt_at_ms, created_at_ms, updated_at_ms)
             VALUES (7, '1.2.3', 'pacs', 'SEG', '1.2.3.9', 'results/7/seg.dcm', 'pending', 2, 2, 2);
             INSERT INTO cases (label_sop_uid, origin, state, model_id, created_at_ms)
             VALUES ('1.2.3.8', 'dicom', 'accepted', 'm', 3);",
        );
        let conn = db::open(dir.path()).unwrap();
        assert_eq!(version(&conn), SCHEMA_VERSION);
        let job: (String, db::JobState, String) = conn
            .query_row(
                "SELECT j.study_uid, j.state, r.result_json FROM jobs j JOIN results r
                 ON r.job_id = j.id WHERE j.id = 7",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            job,
            (
                "1.2.3".into(),
                db::JobState::Done,
                "{\"finding_probability\": 0.25}".into()
            )
        );
        let entry: (String, db::OutboxState) = conn
            .query_row("SELECT sop_instance_uid, state FROM outbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(entry, ("1.2.3.9".into(), db::OutboxState::Pending));
        // The old case is a segmentation case without a finding, and a new kind is checked.
        let case: (String, db::CaseState, db::CaseKind, Option<bool>) = conn
            .query_row(
                "SELECT label_sop_uid, state, kind, finding FROM cases",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(
            case,
            (
                "1.2.3.8".into(),
                db::CaseState::Accepted,
                db::CaseKind::Segmentation,
                None
            )
        );
        assert!(conn
            .execute(
                "INSERT INTO cases (label_sop_uid, origin, state, model_id, created_at_ms, kind)
                 VALUES ('1.2.3.10', 'dicom', 'accepted', 'm', 0, 'other')",
                [],
            )
            .is_err());
        // The tables that release did not have are there now.
        for table in [
            "heads",
            "champions",
            "case_splits",
            "case_features",
            "learn_runs",
        ] {
            let n: i64 = conn
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 0, "{table}");
        }
    }

    #[test]
    fn a_version_0_database_of_the_last_release_before_numbered_migrations_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        written_by_an_earlier_release(
            dir.path(),
            VERSION_0_LATEST,
            "INSERT INTO cases (id, label_sop_uid, origin, state, series_uid, model_id,
                 created_at_ms, kind, finding)
             VALUES (1, '1.2.3.8', 'import', 'accepted', '1.2.3.4', 'm', 3, 'classification', 1);
             INSERT INTO case_splits (case_id, split) VALUES (1, 'holdout');
             INSERT INTO heads (id, model_id, global_version, sha256, path, state, reasons_json,
                 trigger, cases_json, holdout_json, metrics_json, seconds, created_at_ms)
             VALUES (1, 'm', '1', 'ab', 'heads/m/1/1.safetensors', 'refused', '[\"worse\"]',
                 'learn now', '[]', '[]', '{}', 1.5, 4);
             INSERT INTO champions (model_id, global_version, head_id, updated_at_ms)
             VALUES ('m', '1', NULL, 4);
             INSERT INTO learn_runs (model_id, global_version, trigger, last_case_id, outcome,
                 head_id, started_at_ms, finished_at_ms)
             VALUES ('m', '1', 'learn now', 1, 'refused', 1, 3, 4);",
        );
        let conn = db::open(dir.path()).unwrap();
        assert_eq!(version(&conn), SCHEMA_VERSION);
        let case: (db::CaseOrigin, db::CaseKind, Option<bool>, db::Split) = conn
            .query_row(
                "SELECT c.origin, c.kind, c.finding, s.split FROM cases c
                 JOIN case_splits s ON s.case_id = c.id",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(
            case,
            (
                db::CaseOrigin::Import,
                db::CaseKind::Classification,
                Some(true),
                db::Split::Holdout
            )
        );
        let head: (db::HeadState, String) = conn
            .query_row(
                "SELECT state, reasons_json FROM heads WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(head, (db::HeadState::Refused, "[\"worse\"]".into()));
        let outcome: db::LearnOutcome = conn
            .query_row("SELECT outcome FROM learn_runs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(outcome, db::LearnOutcome::Refused);
    }

    #[test]
    fn a_version_1_database_gains_job_attempts_and_keeps_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = db::path(dir.path());
        let mut conn = Connection::open(&path).unwrap();
        migrate_with(&mut conn, &path, &MIGRATIONS[..1]).unwrap();
        assert_eq!(version(&conn), 1);
        conn.execute(
            "INSERT INTO jobs (study_uid, calling_ae, series_uid, model_id, model_version,
                 instances, state, created_at_ms, updated_at_ms)
             VALUES ('s', 'A', 'x', 'm', '1', 1, ?1, 0, 0)",
            [db::JobState::Running],
        )
        .unwrap();
        drop(conn);
        let conn = db::open(dir.path()).unwrap();
        assert_eq!(version(&conn), SCHEMA_VERSION);
        let (state, attempts): (db::JobState, i64) = conn
            .query_row("SELECT state, attempts FROM jobs", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((state, attempts), (db::JobState::Running, 0));
    }

    #[test]
    fn a_version_2_database_gains_protected_studies_and_keeps_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = db::path(dir.path());
        let mut conn = Connection::open(&path).unwrap();
        migrate_with(&mut conn, &path, &MIGRATIONS[..2]).unwrap();
        assert_eq!(version(&conn), 2);
        conn.execute(
            "INSERT INTO jobs (study_uid, calling_ae, series_uid, model_id, model_version,
                 instances, state, created_at_ms, updated_at_ms)
             VALUES ('s', 'A', 'x', 'm', '1', 1, ?1, 0, 0)",
            [db::JobState::Done],
        )
        .unwrap();
        drop(conn);
        let conn = db::open(dir.path()).unwrap();
        assert_eq!(version(&conn), SCHEMA_VERSION);
        conn.execute(
            "INSERT INTO protected_studies (study_uid, protected_at_ms) VALUES ('s', 1)",
            [],
        )
        .unwrap();
        let jobs: i64 = conn
            .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(jobs, 1);
    }

    #[test]
    fn a_new_database_and_an_upgraded_one_end_in_the_same_schema() {
        let fresh = tempfile::tempdir().unwrap();
        let new = db::open(fresh.path()).unwrap();
        assert_eq!(version(&new), SCHEMA_VERSION);
        for earlier in [VERSION_0_LATEST, VERSION_0_BEFORE_CLASSIFICATION_LABELS] {
            let dir = tempfile::tempdir().unwrap();
            written_by_an_earlier_release(dir.path(), earlier, "");
            let upgraded = db::open(dir.path()).unwrap();
            assert_eq!(shape(&upgraded), shape(&new));
        }
    }

    #[test]
    fn opening_a_current_database_again_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db::open(dir.path()).unwrap();
        conn.execute(
            "INSERT INTO jobs (study_uid, calling_ae, series_uid, model_id, model_version,
                 instances, state, created_at_ms, updated_at_ms)
             VALUES ('s', 'A', 'x', 'm', '1', 1, ?1, 0, 0)",
            [db::JobState::Queued],
        )
        .unwrap();
        drop(conn);
        let again = db::open(dir.path()).unwrap();
        assert_eq!(version(&again), SCHEMA_VERSION);
        let n: i64 = again
            .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_database_of_a_newer_schema_version_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(db::path(dir.path())).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = db::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, DbError::TooNew { found, known, .. } if found == SCHEMA_VERSION + 1 && known == SCHEMA_VERSION),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
            "{text}"
        );
        let conn = Connection::open(db::path(dir.path())).unwrap();
        assert_eq!(version(&conn), SCHEMA_VERSION + 1);
        let tables: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0);
    }

    #[test]
    fn a_failing_migration_leaves_the_database_at_its_earlier_version() {
        fn fails(tx: &Transaction<'_>) -> rusqlite::Result<()> {
            tx.execute_batch("CREATE TABLE half_done (x); SELECT * FROM no_such_table;")
        }
        let dir = tempfile::tempdir().unwrap();
        let path = db::path(dir.path());
        let mut conn = Connection::open(&path).unwrap();
        let steps = [
            Migration {
                version: 1,
                apply: tables_before_numbered_migrations,
            },
            Migration {
                version: 2,
                apply: fails,
            },
        ];
        let err = migrate_with(&mut conn, &path, &steps).unwrap_err();
        assert!(
            matches!(err, DbError::Migration { version: 2, .. }),
            "{err:?}"
        );
        // Neither migration 1 nor the first half of 2 is left.
        assert_eq!(version(&conn), 0);
        let tables: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0);
    }
}
