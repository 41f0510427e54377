//! Removing a study from the spool, crash-safe. Which study may go is retention's decision
//! (`appliance::retention`); this module only carries it out on the index and the files.
//!
//! Order, so that a crash at any point leaves nothing half-known:
//! 1. one immediate transaction: the caller's last check (run under the index's write lock, so
//!    no instance of the study can arrive in between), the study's files recorded in
//!    `purge_pending`, its `instances` and `studies` rows deleted, a `purged_studies` row
//!    written; commit (durable: WAL with synchronous=FULL);
//! 2. [`finish_pending`]: under the write lock again, each pending file is deleted unless an
//!    instance row names it once more (the same instance re-sent after the purge), the study
//!    folders are synced and removed when empty, the spool folder synced, the pending rows
//!    deleted.
//!
//! A crash after 1 leaves files no instance row names and a `purge_pending` row for each: the
//! next [`finish_pending`] (retention runs it first, every round) deletes them. Only files named
//! in `purge_pending` are ever deleted here; a file of a study still indexed never is.

use super::{index, StoreError};
use radiant_core::Uid;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// What one purge took out of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    pub study_uid: String,
    pub calling_ae: String,
    pub instances: u64,
    /// Dataset bytes of its instances, as the index recorded them.
    pub bytes: u64,
}

/// The study group retention judged, as it was when judged.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub study_uid: &'a str,
    pub calling_ae: &'a str,
    /// The study's `last_received_at_ms` when it was judged: a study that got an instance
    /// since is not purged.
    pub last_received_at_ms: i64,
}

/// What [`finish_pending`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Finished {
    /// Files deleted (a file already gone counts as done, not here).
    pub files_deleted: u64,
    /// Pending files kept because an instance row names them again.
    pub files_kept: u64,
}

/// Take (study, calling AE) out of the index and queue its files for deletion, if
/// `still_purgeable` (run inside the transaction, with the index's write lock held) agrees and
/// the study is still complete with no instance newer than when it was judged. Returns
/// `None` when it does not, or when the study is no longer indexed. Call [`finish_pending`]
/// after it to delete the files.
pub fn purge_group(
    conn: &mut Connection,
    index_path: &Path,
    target: Target<'_>,
    reason: &str,
    now_ms: i64,
    still_purgeable: impl FnOnce(&Connection) -> Result<bool, String>,
) -> Result<Option<Purged>, StoreError> {
    let Target {
        study_uid,
        calling_ae,
        last_received_at_ms,
    } = target;
    let ix = |e| StoreError::index(index_path, e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(ix)?;
    // A late instance reopens the study (state receiving, a newer last_received_at_ms): then
    // it is not the study that was judged, and stays.
    let unchanged: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM studies WHERE study_uid = ?1 AND calling_ae = ?2
               AND state = 'complete' AND last_received_at_ms = ?3",
            params![study_uid, calling_ae, last_received_at_ms],
            |r| r.get(0),
        )
        .optional()
        .map_err(ix)?;
    if unchanged.is_none() {
        return Ok(None);
    }
    let purgeable = still_purgeable(&tx).map_err(|reason| StoreError::PurgeCheck {
        study: Uid::new(study_uid),
        reason,
    })?;
    if !purgeable {
        return Ok(None);
    }
    let (instances, bytes): (i64, i64) = tx
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM instances
             WHERE study_uid = ?1 AND calling_ae = ?2",
            params![study_uid, calling_ae],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(ix)?;
    tx.execute(
        "INSERT OR REPLACE INTO purge_pending (path, purged_at_ms)
         SELECT path, ?3 FROM instances WHERE study_uid = ?1 AND calling_ae = ?2",
        params![study_uid, calling_ae, now_ms],
    )
    .map_err(ix)?;
    tx.execute(
        "DELETE FROM instances WHERE study_uid = ?1 AND calling_ae = ?2",
        params![study_uid, calling_ae],
    )
    .map_err(ix)?;
    tx.execute(
        "DELETE FROM studies WHERE study_uid = ?1 AND calling_ae = ?2",
        params![study_uid, calling_ae],
    )
    .map_err(ix)?;
    tx.execute(
        "INSERT INTO purged_studies (study_uid, calling_ae, reason, instances, bytes, purged_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![study_uid, calling_ae, reason, instances, bytes, now_ms],
    )
    .map_err(ix)?;
    tx.commit().map_err(ix)?;
    Ok(Some(Purged {
        study_uid: study_uid.to_string(),
        calling_ae: calling_ae.to_string(),
        instances: instances.max(0) as u64,
        bytes: bytes.max(0) as u64,
    }))
}

/// Delete the files of purged studies that are still on disk (see the module's order). Holds
/// the index's write lock while it deletes, so the committer cannot put a re-sent instance
/// into one of these paths meanwhile.
pub fn finish_pending(
    conn: &mut Connection,
    data_dir: &Path,
    index_path: &Path,
) -> Result<Finished, StoreError> {
    let ix = |e| StoreError::index(index_path, e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(ix)?;
    let pending: Vec<(String, bool)> = {
        let mut stmt = tx
            .prepare(
                "SELECT p.path, EXISTS (SELECT 1 FROM instances i WHERE i.path = p.path)
                 FROM purge_pending p ORDER BY p.path",
            )
            .map_err(ix)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(ix)?;
        rows.collect::<Result<_, _>>().map_err(ix)?
    };
    if pending.is_empty() {
        return Ok(Finished::default());
    }
    let spool_dir = data_dir.join("spool");
    let mut done = Finished::default();
    let mut folders = BTreeSet::new();
    for (relative, indexed_again) in &pending {
        if *indexed_again {
            done.files_kept += 1;
            continue;
        }
        let path = spool_file(data_dir, &spool_dir, relative)?;
        match fs::remove_file(&path) {
            Ok(()) => done.files_deleted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(&path, e)),
        }
        if let Some(parent) = path.parent() {
            folders.insert(parent.to_path_buf());
        }
    }
    for folder in &folders {
        // Several senders of one study share its folder: one not empty yet stays.
        match fs::remove_dir(folder) {
            Ok(()) => {}
            Err(_) if folder.is_dir() => radiant_core::durable::fsync_dir(folder)
                .map_err(|e| StoreError::io(folder, e.source))?,
            Err(_) => {}
        }
    }
    if !folders.is_empty() {
        radiant_core::durable::fsync_dir(&spool_dir)
            .map_err(|e| StoreError::io(&spool_dir, e.source))?;
    }
    tx.execute("DELETE FROM purge_pending", []).map_err(ix)?;
    tx.commit().map_err(ix)?;
    Ok(done)
}

/// The absolute path of a spool file the index names; a name that would leave the spool
/// folder (`..`, an absolute path) is refused, never deleted.
fn spool_file(data_dir: &Path, spool_dir: &Path, relative: &str) -> Result<PathBuf, StoreError> {
    let relative = Path::new(relative);
    let plain = relative
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    let path = data_dir.join(relative);
    if !plain || !path.starts_with(spool_dir) {
        return Err(StoreError::NotUnderDataDir(path));
    }
    Ok(path)
}

/// Every purge recorded in the index: (reason, studies, bytes, latest purge time in ms).
pub fn purged_totals(conn: &Connection) -> rusqlite::Result<Vec<(String, u64, u64, i64)>> {
    let mut stmt = conn.prepare(
        "SELECT reason, COUNT(*), COALESCE(SUM(bytes), 0), MAX(purged_at_ms)
         FROM purged_studies GROUP BY reason ORDER BY reason",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get::<_, i64>(1)?.max(0) as u64,
            r.get::<_, i64>(2)?.max(0) as u64,
            r.get(3)?,
        ))
    })?;
    rows.collect()
}

/// Whether the index still lists the study (from any sender).
pub fn is_indexed(conn: &Connection, study_uid: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM studies WHERE study_uid = ?1)",
        [study_uid],
        |r| r.get(0),
    )
}

/// Open the index of `data_dir` for a purge (read-write); fails if the daemon never ran.
pub fn open_index(data_dir: &Path) -> Result<Connection, StoreError> {
    let path = super::index_path(data_dir);
    if !path.exists() {
        return Err(StoreError::NoIndex(path));
    }
    index::open(&path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::store::{IncomingInstance, Spool};
    use crate::uids;
    use std::sync::Arc;

    fn store(spool: &Spool, study: &str, sop: &str) {
        spool
            .store(&IncomingInstance {
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2",
                sop_instance_uid: sop,
                study_uid: study,
                series_uid: "1.2.3.1",
                modality: "CT",
                transfer_syntax_uid: uids::EXPLICIT_VR_LE,
                calling_ae: "A",
                called_ae: "RADIANT",
                dataset: b"abcd",
            })
            .unwrap();
    }

    fn target(last_received_at_ms: i64) -> Target<'static> {
        Target {
            study_uid: "1.2.3",
            calling_ae: "A",
            last_received_at_ms,
        }
    }

    fn complete(conn: &Connection) -> i64 {
        conn.execute(
            "UPDATE studies SET state = 'complete', completed_at_ms = 1, completion_announced = 1",
            [],
        )
        .unwrap();
        conn.query_row(
            "SELECT last_received_at_ms FROM studies WHERE study_uid = '1.2.3'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn a_purge_interrupted_after_the_index_commit_deletes_its_files_on_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        store(&spool, "1.2.3", "1.2.3.4");
        store(&spool, "1.2.3", "1.2.3.5");
        store(&spool, "1.2.9", "1.2.9.1");
        let index_path = crate::store::index_path(dir.path());
        let mut conn = index::open(&index_path).unwrap();
        let last = complete(&conn);
        let purged = purge_group(&mut conn, &index_path, target(last), "age", 5, |_| Ok(true))
            .unwrap()
            .expect("purged");
        assert_eq!((purged.instances, purged.bytes), (2, 8));
        // The "crash": the index no longer names the files, they are still there.
        let study_dir = dir.path().join("spool/1.2.3");
        assert!(study_dir.join("1.2.3.4.dcm").exists());
        assert!(index::instance_path(&conn, "1.2.3.4").unwrap().is_none());
        drop(conn);
        // The next run, with another connection (a restarted process).
        let mut conn = index::open(&index_path).unwrap();
        let done = finish_pending(&mut conn, dir.path(), &index_path).unwrap();
        assert_eq!(done.files_deleted, 2);
        assert!(!study_dir.exists());
        assert!(dir.path().join("spool/1.2.9/1.2.9.1.dcm").exists());
        assert_eq!(
            finish_pending(&mut conn, dir.path(), &index_path).unwrap(),
            Finished::default()
        );
        assert_eq!(
            purged_totals(&conn).unwrap(),
            vec![("age".to_string(), 1, 8, 5)]
        );
        // A study purged once takes new instances again, in a folder synced anew.
        store(&spool, "1.2.3", "1.2.3.6");
        assert!(study_dir.join("1.2.3.6.dcm").exists());
        spool.close().unwrap();
    }

    #[test]
    fn a_study_that_got_a_new_instance_or_fails_the_last_check_is_not_purged() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        store(&spool, "1.2.3", "1.2.3.4");
        let index_path = crate::store::index_path(dir.path());
        let mut conn = index::open(&index_path).unwrap();
        let last = complete(&conn);
        let refused = purge_group(&mut conn, &index_path, target(last), "age", 5, |_| {
            Ok(false)
        })
        .unwrap();
        assert_eq!(refused, None);
        let stale = purge_group(&mut conn, &index_path, target(last - 1), "age", 5, |_| {
            Ok(true)
        })
        .unwrap();
        assert_eq!(stale, None);
        let failed = purge_group(&mut conn, &index_path, target(last), "age", 5, |_| {
            Err("results database locked".into())
        });
        assert!(matches!(failed, Err(StoreError::PurgeCheck { .. })));
        finish_pending(&mut conn, dir.path(), &index_path).unwrap();
        assert!(dir.path().join("spool/1.2.3/1.2.3.4.dcm").exists());
        assert!(index::instance_path(&conn, "1.2.3.4").unwrap().is_some());
        spool.close().unwrap();
    }

    #[test]
    fn a_pending_file_that_an_instance_row_names_again_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        store(&spool, "1.2.3", "1.2.3.4");
        let index_path = crate::store::index_path(dir.path());
        let mut conn = index::open(&index_path).unwrap();
        let last = complete(&conn);
        let purged =
            purge_group(&mut conn, &index_path, target(last), "age", 5, |_| Ok(true)).unwrap();
        assert!(purged.is_some());
        // The sender re-sends the instance before the files were deleted.
        store(&spool, "1.2.3", "1.2.3.4");
        let done = finish_pending(&mut conn, dir.path(), &index_path).unwrap();
        assert_eq!(done.files_kept, 1);
        assert!(dir.path().join("spool/1.2.3/1.2.3.4.dcm").exists());
        spool.close().unwrap();
    }

    #[test]
    fn a_pending_path_outside_the_spool_is_refused_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        spool.close().unwrap();
        let index_path = crate::store::index_path(dir.path());
        let mut conn = index::open(&index_path).unwrap();
        fs::write(dir.path().join("results.sqlite"), b"keep").unwrap();
        for bad in ["results.sqlite", "spool/../results.sqlite"] {
            conn.execute(
                "INSERT INTO purge_pending (path, purged_at_ms) VALUES (?1, 1)",
                [bad],
            )
            .unwrap();
            assert!(finish_pending(&mut conn, dir.path(), &index_path).is_err());
            conn.execute("DELETE FROM purge_pending", []).unwrap();
        }
        assert!(dir.path().join("results.sqlite").exists());
    }
}
