//! Study assembly: instances are grouped by (Study Instance UID, calling AE); a study becomes
//! `complete` after a quiet period without new instances (per calling AE, with a default), or on
//! demand. Completion is recorded in the index and announced once through [`StudyCompleted`]
//! events; an announcement that was not yet made when the daemon stopped is made after restart.

use rusqlite::{params, Connection, TransactionBehavior};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{index, now_ms, StoreError};

/// A study that has just become complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyCompleted {
    pub study_uid: String,
    pub calling_ae: String,
    pub instances: u64,
}

pub struct Assembler {
    conn: Connection,
    index_path: PathBuf,
    default_quiet: Duration,
    quiet_by_ae: HashMap<String, Duration>,
}

impl Assembler {
    pub fn open(
        data_dir: &std::path::Path,
        default_quiet: Duration,
        quiet_by_ae: HashMap<String, Duration>,
    ) -> Result<Self, StoreError> {
        let index_path = super::index_path(data_dir);
        let conn = index::open(&index_path)?;
        Ok(Self {
            conn,
            index_path,
            default_quiet,
            quiet_by_ae,
        })
    }

    fn quiet_for(&self, calling_ae: &str) -> Duration {
        self.quiet_by_ae
            .get(calling_ae)
            .copied()
            .unwrap_or(self.default_quiet)
    }

    /// Complete the studies that have been quiet long enough, then return (and mark as
    /// announced) every completed study not announced yet.
    pub fn tick(&mut self) -> Result<Vec<StudyCompleted>, StoreError> {
        let now = now_ms();
        let ix = |e| StoreError::index(&self.index_path, e);
        let receiving: Vec<(String, String, i64)> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT study_uid, calling_ae, last_received_at_ms FROM studies
                     WHERE state = 'receiving'",
                )
                .map_err(ix)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(ix)?;
            rows.collect::<Result<_, _>>().map_err(ix)?
        };
        for (study_uid, calling_ae, last) in receiving {
            let quiet_ms = self.quiet_for(&calling_ae).as_millis() as i64;
            if now - last >= quiet_ms {
                // The guard on last_received_at_ms keeps a study open that just got an instance.
                self.conn
                    .execute(
                        "UPDATE studies SET state = 'complete', completed_at_ms = ?1
                         WHERE study_uid = ?2 AND calling_ae = ?3 AND state = 'receiving'
                           AND last_received_at_ms = ?4",
                        params![now, study_uid, calling_ae, last],
                    )
                    .map_err(ix)?;
            }
        }
        self.announce()
    }

    fn announce(&mut self) -> Result<Vec<StudyCompleted>, StoreError> {
        let ix = |e| StoreError::index(&self.index_path, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(ix)?;
        let completed: Vec<StudyCompleted> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT s.study_uid, s.calling_ae,
                            (SELECT COUNT(*) FROM instances i
                             WHERE i.study_uid = s.study_uid AND i.calling_ae = s.calling_ae)
                     FROM studies s WHERE s.state = 'complete' AND s.completion_announced = 0",
                )
                .map_err(ix)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(StudyCompleted {
                        study_uid: r.get(0)?,
                        calling_ae: r.get(1)?,
                        instances: r.get::<_, i64>(2)? as u64,
                    })
                })
                .map_err(ix)?;
            rows.collect::<Result<_, _>>().map_err(ix)?
        };
        for study in &completed {
            tx.execute(
                "UPDATE studies SET completion_announced = 1
                 WHERE study_uid = ?1 AND calling_ae = ?2 AND state = 'complete'",
                params![study.study_uid, study.calling_ae],
            )
            .map_err(ix)?;
        }
        tx.commit().map_err(ix)?;
        Ok(completed)
    }
}

/// Complete a study now, whatever its quiet period (`appliance studies complete UID`). Returns
/// how many (study, calling AE) groups changed state; a running daemon announces them on its
/// next tick.
pub fn complete_now(data_dir: &std::path::Path, study_uid: &str) -> Result<usize, StoreError> {
    let index_path = super::index_path(data_dir);
    if !index_path.exists() {
        return Err(StoreError::NoIndex(index_path));
    }
    let conn = index::open(&index_path)?;
    conn.execute(
        "UPDATE studies SET state = 'complete', completed_at_ms = ?1
         WHERE study_uid = ?2 AND state = 'receiving'",
        params![now_ms(), study_uid],
    )
    .map_err(|e| StoreError::index(&index_path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::store::{IncomingInstance, Spool};
    use crate::uids;
    use std::sync::Arc;

    fn store(spool: &Spool, sop: &str, ae: &str) {
        spool
            .store(&IncomingInstance {
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2",
                sop_instance_uid: sop,
                study_uid: "1.2.3",
                series_uid: "1.2.3.1",
                modality: "CT",
                transfer_syntax_uid: uids::EXPLICIT_VR_LE,
                calling_ae: ae,
                called_ae: "RADIANT",
                dataset: b"abcd",
            })
            .unwrap();
    }

    #[test]
    fn a_study_completes_after_its_quiet_period_and_is_announced_once() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        store(&spool, "1.2.3.4", "A");
        store(&spool, "1.2.3.5", "A");
        let mut asm =
            Assembler::open(dir.path(), Duration::from_secs(3600), HashMap::new()).unwrap();
        assert!(asm.tick().unwrap().is_empty());
        let mut fast = Assembler::open(dir.path(), Duration::ZERO, HashMap::new()).unwrap();
        let done = fast.tick().unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].instances, 2);
        assert!(fast.tick().unwrap().is_empty());
        spool.close().unwrap();
    }

    #[test]
    fn the_same_study_from_two_callers_is_two_groups_with_their_own_quiet_period() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        store(&spool, "1.2.3.4", "A");
        store(&spool, "1.2.3.5", "B");
        let per_ae = HashMap::from([("B".to_string(), Duration::from_secs(3600))]);
        let mut asm = Assembler::open(dir.path(), Duration::ZERO, per_ae).unwrap();
        let done = asm.tick().unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].calling_ae, "A");
        spool.close().unwrap();
    }

    /// The committer and the assembler write the index from two connections; a transaction
    /// that read before writing used to fail with "database is locked" (SQLITE_BUSY_SNAPSHOT,
    /// which the busy timeout does not retry) when the other committed in between.
    #[test]
    fn stores_and_study_completion_running_together_never_fail() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let data_dir = dir.path().to_path_buf();
        let stop_c = stop.clone();
        let assembler = std::thread::spawn(move || {
            let mut asm = Assembler::open(&data_dir, Duration::ZERO, HashMap::new()).unwrap();
            let mut ticks = 0;
            while !stop_c.load(std::sync::atomic::Ordering::SeqCst) {
                asm.tick().expect("assembly tick");
                ticks += 1;
            }
            ticks
        });
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let spool = spool.clone();
                std::thread::spawn(move || {
                    for i in 0..150 {
                        let sop = format!("1.2.3.{w}.{i}");
                        spool
                            .store(&IncomingInstance {
                                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2",
                                sop_instance_uid: &sop,
                                study_uid: &format!("1.2.{w}.{}", i / 10),
                                series_uid: "1.2.3.1",
                                modality: "CT",
                                transfer_syntax_uid: uids::EXPLICIT_VR_LE,
                                calling_ae: "A",
                                called_ae: "RADIANT",
                                dataset: b"abcd",
                            })
                            .expect("store while the assembler writes");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(assembler.join().unwrap() > 0);
        spool.close().unwrap();
    }

    #[test]
    fn forced_completion_is_announced_and_a_late_instance_reopens_the_study() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        store(&spool, "1.2.3.4", "A");
        let mut asm =
            Assembler::open(dir.path(), Duration::from_secs(3600), HashMap::new()).unwrap();
        assert_eq!(complete_now(dir.path(), "1.2.3").unwrap(), 1);
        assert_eq!(asm.tick().unwrap().len(), 1);
        store(&spool, "1.2.3.6", "A");
        let conn = index::open_read_only(&crate::store::index_path(dir.path())).unwrap();
        let studies = index::list_studies(&conn).unwrap();
        assert_eq!(studies[0].state, "receiving");
        assert_eq!(studies[0].instances, 2);
        spool.close().unwrap();
    }
}
