//! Retention: which studies leave the spool, and when (`[retention]`).
//!
//! - Eligible ([`hold`]): a (study, sender) group is purgeable only when it is complete and its
//!   completion announced, at least `grace_seconds` ago; no inference job of it is queued or
//!   running; every outbox entry of its jobs is sent or given up; it is not protected by an
//!   operator (`appliance studies protect`) unless `keep_pixel_data_of_protected = false`;
//!   no accepted labelled case refers to it unless `keep_pixel_data_of_cases = false`, and even
//!   then only once every such case has its features stored (the learner needs the pixels
//!   until then, and the learning lock must be free while it goes). This is the one place
//!   that decides; it reads the spool index and `results.sqlite` ([`facts`]).
//! - Policy ([`plan`]): an eligible study goes `max_age_hours` after it completed; and when the
//!   data file system is used at or above `high_watermark_percent`, eligible studies go oldest
//!   completion first until the bytes they free bring it down to `low_watermark_percent`. The
//!   planner takes `now` and the measured usage as parameters, so tests drive it with a fake
//!   clock and disk.
//! - Purge ([`Retention::round`]): each chosen study is judged once more inside the index
//!   transaction that removes its rows (`pacs_bridge::store::purge`), then its files are
//!   deleted; a round first finishes deletions an interrupted round left. What learning needs
//!   (labels and features under `<data_dir>/cases/`) is never in the spool, so it stays.
//! - The daemon runs a round every `interval_seconds` on its own thread ([`serve`]), never on
//!   the ingest path; `appliance studies purge [--dry-run] [--all]` runs one from the CLI.

use crate::config::{Config, RetentionConfig};
use crate::db::{self, CaseState, DbError, JobState, OutboxState};
use crate::metrics::ApplianceMetrics;
use pacs_bridge::store::index::{self, StudyGroup};
use pacs_bridge::store::purge::{self, Target};
use pacs_bridge::store::{self, FsUsage, StoreError};
use radiant_core::{log_tag, Cancel};
use rusqlite::{params, Connection};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RetentionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{what}: {source}")]
    Sqlite {
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot measure the file system of {}: {source}", path.display())]
    Usage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("learning lock: {0}")]
    Lock(String),
}

fn sql(what: &'static str) -> impl Fn(rusqlite::Error) -> RetentionError {
    move |source| RetentionError::Sqlite { what, source }
}

/// The retention settings in the units the planner works in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// `None`: no purge by age.
    pub max_age_ms: Option<i64>,
    pub high_watermark_percent: f64,
    pub low_watermark_percent: f64,
    pub grace_ms: i64,
    pub keep_pixel_data_of_protected: bool,
    pub keep_pixel_data_of_cases: bool,
}

impl Policy {
    pub fn of(config: &RetentionConfig) -> Policy {
        Policy {
            max_age_ms: (config.max_age_hours > 0.0)
                .then(|| (config.max_age_hours * 3_600_000.0).round() as i64),
            high_watermark_percent: config.high_watermark_percent,
            low_watermark_percent: config.low_watermark_percent,
            grace_ms: (config.grace_seconds as i64).saturating_mul(1000),
            keep_pixel_data_of_protected: config.keep_pixel_data_of_protected,
            keep_pixel_data_of_cases: config.keep_pixel_data_of_cases,
        }
    }
}

/// Why a study stays in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hold {
    /// Still receiving, or its completion not yet handed to inference and label intake.
    Receiving,
    /// Completed less than `grace_seconds` ago.
    Grace,
    /// An inference job of it is queued or running.
    Inference,
    /// A result of it waits in the outbox.
    Outbox,
    /// An operator protected it.
    Protected,
    /// A labelled case refers to it and `keep_pixel_data_of_cases` is on.
    Case,
    /// A labelled case refers to it and its features are not stored yet (or the learner holds
    /// the learning lock).
    Learner,
}

impl Hold {
    pub const ALL: [Hold; 7] = [
        Hold::Receiving,
        Hold::Grace,
        Hold::Inference,
        Hold::Outbox,
        Hold::Protected,
        Hold::Case,
        Hold::Learner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Hold::Receiving => "receiving",
            Hold::Grace => "grace",
            Hold::Inference => "inference",
            Hold::Outbox => "outbox",
            Hold::Protected => "protected",
            Hold::Case => "case",
            Hold::Learner => "learner",
        }
    }
}

/// Why a study goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Older than `max_age_hours` after completion.
    Age,
    /// The file system is at the high watermark; oldest first.
    Watermark,
    /// `appliance studies purge --all`: every eligible study.
    Operator,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Age => "age",
            Reason::Watermark => "watermark",
            Reason::Operator => "operator",
        }
    }
}

/// What one round purges: by policy, or every eligible study (the operator's `--all`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Policy,
    AllEligible,
}

/// Everything [`hold`] needs to know about one (study, sender) group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyFacts {
    pub group: StudyGroup,
    /// Inference jobs of the group queued or running.
    pub jobs_waiting: u64,
    /// Outbox entries of the group's jobs not yet sent nor given up.
    pub outbox_pending: u64,
    pub protected: bool,
    /// Accepted labelled cases that refer to the study.
    pub cases: u64,
    /// Of those, cases without stored features.
    pub cases_without_features: u64,
}

/// Why the group stays, or `None` when it may go. The order is the order of the reasons a
/// reader looks for first.
pub fn hold(f: &StudyFacts, now_ms: i64, policy: &Policy) -> Option<Hold> {
    let Some(completed) = f.group.completed_at_ms.filter(|_| f.group.complete) else {
        return Some(Hold::Receiving);
    };
    if now_ms.saturating_sub(completed) < policy.grace_ms {
        return Some(Hold::Grace);
    }
    if f.jobs_waiting > 0 {
        return Some(Hold::Inference);
    }
    if f.outbox_pending > 0 {
        return Some(Hold::Outbox);
    }
    if f.protected && policy.keep_pixel_data_of_protected {
        return Some(Hold::Protected);
    }
    if f.cases > 0 && policy.keep_pixel_data_of_cases {
        return Some(Hold::Case);
    }
    if f.cases_without_features > 0 {
        return Some(Hold::Learner);
    }
    None
}

/// Which groups go, by index into `studies`, oldest completion first within each reason:
/// those past `max_age` (or every eligible one in [`Mode::AllEligible`]), then, while `usage`
/// is at or above the high watermark, the oldest eligible others until the bytes they free
/// bring it to the low watermark.
pub fn plan(
    studies: &[StudyFacts],
    usage: Option<FsUsage>,
    now_ms: i64,
    policy: &Policy,
    mode: Mode,
) -> Vec<(usize, Reason)> {
    let mut eligible: Vec<usize> = (0..studies.len())
        .filter(|&i| hold(&studies[i], now_ms, policy).is_none())
        .collect();
    eligible.sort_by(|&a, &b| {
        let (a, b) = (&studies[a].group, &studies[b].group);
        (a.completed_at_ms, &a.study_uid, &a.calling_ae).cmp(&(
            b.completed_at_ms,
            &b.study_uid,
            &b.calling_ae,
        ))
    });
    if mode == Mode::AllEligible {
        return eligible
            .into_iter()
            .map(|i| (i, Reason::Operator))
            .collect();
    }
    let mut out = Vec::new();
    let mut rest = Vec::new();
    let mut freed = 0u64;
    for i in eligible {
        let completed = studies[i].group.completed_at_ms.unwrap_or(now_ms);
        match policy.max_age_ms {
            Some(max) if now_ms.saturating_sub(completed) >= max => {
                freed = freed.saturating_add(studies[i].group.bytes);
                out.push((i, Reason::Age));
            }
            _ => rest.push(i),
        }
    }
    if let Some(usage) = usage {
        let usable = usage.usable_bytes() as f64;
        if usage.used_percent() >= policy.high_watermark_percent {
            let target = usable * policy.low_watermark_percent / 100.0;
            let need = usage.used_bytes as f64 - target;
            for i in rest {
                if freed as f64 >= need {
                    break;
                }
                freed = freed.saturating_add(studies[i].group.bytes);
                out.push((i, Reason::Watermark));
            }
        }
    }
    out
}

/// The facts of every group in the index, oldest completion first.
pub fn facts(index: &Connection, results: &Connection) -> Result<Vec<StudyFacts>, RetentionError> {
    let groups = index::study_groups(index).map_err(sql("read the spool index"))?;
    groups
        .into_iter()
        .map(|group| facts_of(results, group))
        .collect()
}

/// One group's facts from `results.sqlite`.
fn facts_of(results: &Connection, group: StudyGroup) -> Result<StudyFacts, RetentionError> {
    let read = sql("read results.sqlite");
    let jobs_waiting: i64 = results
        .query_row(
            "SELECT COUNT(*) FROM jobs WHERE study_uid = ?1 AND calling_ae = ?2
               AND state IN (?3, ?4)",
            params![
                group.study_uid,
                group.calling_ae,
                JobState::WAITING[0],
                JobState::WAITING[1]
            ],
            |r| r.get(0),
        )
        .map_err(&read)?;
    let outbox_pending: i64 = results
        .query_row(
            "SELECT COUNT(*) FROM outbox o JOIN jobs j ON j.id = o.job_id
             WHERE j.study_uid = ?1 AND j.calling_ae = ?2 AND o.state = ?3",
            params![group.study_uid, group.calling_ae, OutboxState::Pending],
            |r| r.get(0),
        )
        .map_err(&read)?;
    let protected: bool = results
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM protected_studies WHERE study_uid = ?1)",
            [&group.study_uid],
            |r| r.get(0),
        )
        .map_err(&read)?;
    let (cases, cases_without_features): (i64, i64) = results
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(f.case_id IS NULL), 0)
             FROM cases c LEFT JOIN case_features f ON f.case_id = c.id
             WHERE c.study_uid = ?1 AND c.state = ?2",
            params![group.study_uid, CaseState::Accepted],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(&read)?;
    Ok(StudyFacts {
        group,
        jobs_waiting: jobs_waiting.max(0) as u64,
        outbox_pending: outbox_pending.max(0) as u64,
        protected,
        cases: cases.max(0) as u64,
        cases_without_features: cases_without_features.max(0) as u64,
    })
}

/// One study a round purged, or would purge (a dry run).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PurgeLine {
    pub study_uid: String,
    pub calling_ae: String,
    pub reason: Reason,
    pub instances: u64,
    pub bytes: u64,
    pub completed_at_ms: Option<i64>,
}

/// What a round saw and did.
#[derive(Debug, Clone, Default)]
pub struct Round {
    pub purged: Vec<PurgeLine>,
    /// Files of an earlier, interrupted round deleted first.
    pub resumed_files: u64,
    /// Usage before the round (None when it could not be measured).
    pub usage: Option<FsUsage>,
    /// Groups that stay, by reason.
    pub held: HashMap<Hold, u64>,
}

/// The retention of one data folder: its policy and its two databases.
pub struct Retention {
    data_dir: PathBuf,
    audit: crate::audit::AuditLog,
    index_path: PathBuf,
    policy: Policy,
    index: Connection,
    results: Connection,
}

impl Retention {
    pub fn open(config: &Config) -> Result<Retention, RetentionError> {
        let data_dir = config.data_dir.clone();
        Ok(Retention {
            index: purge::open_index(&data_dir)?,
            results: db::open(&data_dir)?,
            index_path: store::index_path(&data_dir),
            policy: Policy::of(&config.retention),
            audit: crate::audit::AuditLog::of(config),
            data_dir,
        })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Used and available space of the data file system now.
    pub fn usage(&self) -> Result<FsUsage, RetentionError> {
        store::fs_usage(&self.data_dir).map_err(|source| RetentionError::Usage {
            path: self.data_dir.clone(),
            source,
        })
    }

    /// One round at `now_ms`: finish what an interrupted round left, judge every study, purge
    /// what the policy (or `mode`) picks. With `dry_run` nothing changes and `purged` lists
    /// what would go.
    pub fn round(
        &mut self,
        now_ms: i64,
        mode: Mode,
        dry_run: bool,
    ) -> Result<Round, RetentionError> {
        let mut round = Round::default();
        if !dry_run {
            let resumed = purge::finish_pending(&mut self.index, &self.data_dir, &self.index_path)?;
            if resumed.files_deleted > 0 {
                tracing::warn!(
                    files = resumed.files_deleted,
                    "retention finished deleting the files of studies purged before an interruption"
                );
            }
            round.resumed_files = resumed.files_deleted;
        }
        let usage = match self.usage() {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::error!(error = %e, "retention cannot measure the disk; purging by age only");
                None
            }
        };
        round.usage = usage;
        let studies = facts(&self.index, &self.results)?;
        for f in &studies {
            if let Some(h) = hold(f, now_ms, &self.policy) {
                *round.held.entry(h).or_default() += 1;
            }
        }
        let picked = plan(&studies, usage, now_ms, &self.policy, mode);
        // The learner reads the spool only under its lock; a study a case refers to goes only
        // while this round holds that lock (taken once, when first needed).
        let mut learn_lock: Option<Option<radiant_core::file_lock::FileLock>> = None;
        for (i, reason) in picked {
            let f = &studies[i];
            let line = PurgeLine {
                study_uid: f.group.study_uid.clone(),
                calling_ae: f.group.calling_ae.clone(),
                reason,
                instances: f.group.instances,
                bytes: f.group.bytes,
                completed_at_ms: f.group.completed_at_ms,
            };
            if dry_run {
                round.purged.push(line);
                continue;
            }
            if f.cases > 0 {
                let lock = match &learn_lock {
                    Some(lock) => lock.is_some(),
                    None => {
                        let taken = radiant_core::file_lock::FileLock::try_take(
                            &self.data_dir.join("learn.lock"),
                        )
                        .map_err(|e| RetentionError::Lock(format!("{e:#}")))?;
                        let held = taken.is_some();
                        learn_lock = Some(taken);
                        held
                    }
                };
                if !lock {
                    *round.held.entry(Hold::Learner).or_default() += 1;
                    continue;
                }
            }
            let results = &self.results;
            let policy = self.policy;
            let judged = f.group.clone();
            let purged = purge::purge_group(
                &mut self.index,
                &self.index_path,
                Target {
                    study_uid: &f.group.study_uid,
                    calling_ae: &f.group.calling_ae,
                    last_received_at_ms: f.group.last_received_at_ms,
                },
                reason.as_str(),
                now_ms,
                // Judged again under the index's write lock: an operator's protection, a
                // retried delivery or a new case since the plan keeps it.
                |_| match facts_of(results, judged) {
                    Ok(now) => Ok(hold(&now, now_ms, &policy).is_none()),
                    Err(e) => Err(e.to_string()),
                },
            )?;
            let Some(purged) = purged else {
                continue;
            };
            purge::finish_pending(&mut self.index, &self.data_dir, &self.index_path)?;
            tracing::info!(
                study = %log_tag(&purged.study_uid),
                calling_ae = %purged.calling_ae,
                reason = reason.as_str(),
                instances = purged.instances,
                bytes = purged.bytes,
                "study purged from the spool"
            );
            crate::audit::record(
                &self.audit,
                crate::audit::Event {
                    action: "retention.purge".into(),
                    actor: "retention".into(),
                    outcome: "success".into(),
                    dicom: Some(crate::audit::DicomEvent::StudyDeleted),
                    detail: serde_json::json!({
                        "study": log_tag(&purged.study_uid),
                        "calling_ae": purged.calling_ae,
                        "reason": reason.as_str(),
                        "instances": purged.instances,
                        "bytes": purged.bytes,
                    }),
                },
            );
            round.purged.push(PurgeLine {
                instances: purged.instances,
                bytes: purged.bytes,
                ..line
            });
        }
        Ok(round)
    }

    /// Bring the retention and spool metrics up to date with the index (purges of the CLI
    /// included) and the last round.
    pub fn publish(
        &self,
        round: &Round,
        seen: &mut HashMap<String, (u64, u64)>,
        metrics: &ApplianceMetrics,
        dicom: &pacs_bridge::metrics::Metrics,
    ) -> Result<(), RetentionError> {
        let m = &metrics.retention;
        for (reason, studies, bytes, last_ms) in
            purge::purged_totals(&self.index).map_err(sql("read the purge record"))?
        {
            let before = seen.entry(reason.clone()).or_default();
            let label = crate::metrics::PurgeReason { reason };
            m.studies_purged
                .get_or_create(&label)
                .inc_by(studies.saturating_sub(before.0));
            m.freed_bytes.inc_by(bytes.saturating_sub(before.1));
            *before = (studies.max(before.0), bytes.max(before.1));
            if last_ms / 1000 > m.last_purge_timestamp_seconds.get() {
                m.last_purge_timestamp_seconds.set(last_ms / 1000);
            }
        }
        for h in Hold::ALL {
            m.studies_held
                .get_or_create(&crate::metrics::HoldReason { reason: h.as_str() })
                .set(round.held.get(&h).copied().unwrap_or(0) as i64);
        }
        if let Some(usage) = round.usage.or_else(|| self.usage().ok()) {
            m.disk_used_percent.set(usage.used_percent());
        }
        m.high_watermark_percent
            .set(self.policy.high_watermark_percent);
        m.low_watermark_percent
            .set(self.policy.low_watermark_percent);
        let (count, bytes) = index::totals(&self.index).map_err(sql("read the spool index"))?;
        dicom
            .spool_instances
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        dicom
            .spool_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        Ok(())
    }
}

/// The daemon's retention thread: a round every `interval_seconds` until `stop`. A failed round
/// is logged and tried again at the next interval.
pub fn serve(
    config: &Config,
    stop: &Cancel,
    metrics: Arc<ApplianceMetrics>,
    dicom: Arc<pacs_bridge::metrics::Metrics>,
) {
    let interval = Duration::from_secs(config.retention.interval_seconds);
    let mut retention: Option<Retention> = None;
    let mut seen = HashMap::new();
    while !stop.is_cancelled() {
        if retention.is_none() {
            match Retention::open(config) {
                Ok(r) => retention = Some(r),
                Err(e) => tracing::error!(error = %e, "retention cannot open its databases"),
            }
        }
        if let Some(r) = retention.as_mut() {
            match r.round(db::now_ms(), Mode::Policy, false) {
                Ok(round) => {
                    if let Err(e) = r.publish(&round, &mut seen, &metrics, &dicom) {
                        tracing::error!(error = %e, "retention metrics not updated");
                    }
                }
                Err(e) => tracing::error!(error = %e, "retention round failed"),
            }
        }
        stop.wait_timeout(interval);
    }
}

/// `appliance studies protect`: what the spool holds of the study now.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Protection {
    pub study_uid: String,
    pub protected: bool,
    /// Whether the spool holds the study now (a study not held yet is protected on arrival).
    pub in_spool: bool,
    /// Whether retention had purged it before the protection was recorded.
    pub purged_before: bool,
}

/// Protect `study_uid` from retention. Recorded first; then the index is read under its write
/// lock, so a purge in progress either finished before (`purged_before`, reported) or will see
/// the protection.
pub fn protect(data_dir: &Path, study_uid: &str) -> Result<Protection, RetentionError> {
    let results = db::open(data_dir)?;
    results
        .execute(
            "INSERT OR IGNORE INTO protected_studies (study_uid, protected_at_ms) VALUES (?1, ?2)",
            params![study_uid, db::now_ms()],
        )
        .map_err(sql("record the protection"))?;
    let (in_spool, purged_before) = match purge::open_index(data_dir) {
        Ok(mut index) => {
            let tx = index
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sql("lock the spool index"))?;
            let held = purge::is_indexed(&tx, study_uid).map_err(sql("read the spool index"))?;
            let purged: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM purged_studies WHERE study_uid = ?1)",
                    [study_uid],
                    |r| r.get(0),
                )
                .map_err(sql("read the purge record"))?;
            (held, purged && !held)
        }
        Err(StoreError::NoIndex(_)) => (false, false),
        Err(e) => return Err(e.into()),
    };
    Ok(Protection {
        study_uid: study_uid.to_string(),
        protected: true,
        in_spool,
        purged_before,
    })
}

/// Lift an operator's protection; `false` when the study was not protected.
pub fn unprotect(data_dir: &Path, study_uid: &str) -> Result<bool, RetentionError> {
    let results = db::open(data_dir)?;
    let n = results
        .execute(
            "DELETE FROM protected_studies WHERE study_uid = ?1",
            [study_uid],
        )
        .map_err(sql("remove the protection"))?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacs_bridge::metrics::Metrics;
    use pacs_bridge::store::{IncomingInstance, Spool};

    const HOUR: i64 = 3_600_000;

    fn policy() -> Policy {
        Policy {
            max_age_ms: Some(24 * HOUR),
            high_watermark_percent: 80.0,
            low_watermark_percent: 60.0,
            grace_ms: 60_000,
            keep_pixel_data_of_protected: true,
            keep_pixel_data_of_cases: true,
        }
    }

    fn finished(uid: &str, completed_at_ms: i64, bytes: u64) -> StudyFacts {
        StudyFacts {
            group: StudyGroup {
                study_uid: uid.into(),
                calling_ae: "A".into(),
                complete: true,
                completed_at_ms: Some(completed_at_ms),
                last_received_at_ms: completed_at_ms - 1000,
                instances: 1,
                bytes,
            },
            jobs_waiting: 0,
            outbox_pending: 0,
            protected: false,
            cases: 0,
            cases_without_features: 0,
        }
    }

    #[test]
    fn only_a_finished_unprotected_study_nobody_needs_is_eligible() {
        let now = 10 * HOUR;
        let p = policy();
        let done = finished("1", 0, 10);
        assert_eq!(hold(&done, now, &p), None);
        let mut receiving = done.clone();
        receiving.group.complete = false;
        assert_eq!(hold(&receiving, now, &p), Some(Hold::Receiving));
        let mut unannounced = done.clone();
        unannounced.group.completed_at_ms = None;
        assert_eq!(hold(&unannounced, now, &p), Some(Hold::Receiving));
        let fresh = finished("1", now - 1000, 10);
        assert_eq!(hold(&fresh, now, &p), Some(Hold::Grace));
        let mut queued = done.clone();
        queued.jobs_waiting = 1;
        assert_eq!(hold(&queued, now, &p), Some(Hold::Inference));
        let mut outbox = done.clone();
        outbox.outbox_pending = 2;
        assert_eq!(hold(&outbox, now, &p), Some(Hold::Outbox));
        let mut protected = done.clone();
        protected.protected = true;
        assert_eq!(hold(&protected, now, &p), Some(Hold::Protected));
        let mut case = done.clone();
        case.cases = 1;
        assert_eq!(hold(&case, now, &p), Some(Hold::Case));
        // Pixel data of protected and case studies may go when so configured, but only once
        // the learner has what it needs.
        let loose = Policy {
            keep_pixel_data_of_protected: false,
            keep_pixel_data_of_cases: false,
            ..p
        };
        assert_eq!(hold(&protected, now, &loose), None);
        assert_eq!(hold(&case, now, &loose), None);
        let mut learner = case.clone();
        learner.cases_without_features = 1;
        assert_eq!(hold(&learner, now, &loose), Some(Hold::Learner));
        assert_eq!(hold(&learner, now, &p), Some(Hold::Case));
    }

    fn usage(used: u64, usable: u64) -> Option<FsUsage> {
        Some(FsUsage {
            used_bytes: used,
            available_bytes: usable - used,
        })
    }

    #[test]
    fn age_purges_old_studies_and_the_high_watermark_purges_oldest_first_down_to_the_low() {
        let p = policy();
        let now = 100 * HOUR;
        let studies = vec![
            finished("young", now - HOUR, 10),
            finished("old", now - 30 * HOUR, 10),
            finished("middle", now - 5 * HOUR, 10),
            finished("older", now - 10 * HOUR, 10),
        ];
        // Below the high watermark: only age.
        let picked = plan(&studies, usage(79, 100), now, &p, Mode::Policy);
        assert_eq!(picked, [(1, Reason::Age)]);
        // At 85 of 100 with 10 freed by age: 15 more to reach 60, oldest first.
        let picked = plan(&studies, usage(85, 100), now, &p, Mode::Policy);
        assert_eq!(
            picked,
            [
                (1, Reason::Age),
                (3, Reason::Watermark),
                (2, Reason::Watermark)
            ]
        );
        // The operator's --all takes every eligible one.
        let mut held = studies.clone();
        held[0].protected = true;
        let picked = plan(&held, usage(10, 100), now, &p, Mode::AllEligible);
        assert_eq!(picked.len(), 3);
        assert!(picked
            .iter()
            .all(|(i, r)| *i != 0 && *r == Reason::Operator));
        // No age limit: nothing below the watermark.
        let no_age = Policy {
            max_age_ms: None,
            ..p
        };
        assert!(plan(&studies, usage(50, 100), now, &no_age, Mode::Policy).is_empty());
    }

    /// Hours of simulated time: a study of 4 units arrives every 10 minutes on a disk of 1000
    /// units; every study is delivered 30 minutes after it completes, one in five stays
    /// protected, one in seven keeps an undelivered result for 8 hours. Retention runs every
    /// minute. The disk stays between the watermarks (within a study of them) once it first
    /// reaches the high one, and no protected or unfinished study is ever picked.
    #[test]
    fn under_a_steady_stream_the_disk_stays_between_the_watermarks_for_two_days() {
        let p = Policy {
            max_age_ms: None,
            ..policy()
        };
        let usable = 1000u64;
        let base = 5u64; // what is not the spool
        let mut present: Vec<(StudyFacts, i64)> = Vec::new(); // facts, arrival
        let mut min_after_high = f64::MAX;
        let mut max_seen = 0.0f64;
        let mut reached_high = false;
        let mut purged = 0;
        let minute = 60_000;
        for t in 0..(48 * 60) {
            let now = t as i64 * minute;
            if t % 10 == 0 {
                let n = t / 10;
                let mut f = finished(&format!("s{n}"), now + 2 * minute, 4);
                f.group.complete = false;
                f.protected = n % 5 == 0;
                present.push((f, now));
            }
            for (f, arrived) in present.iter_mut() {
                let age = now - *arrived;
                f.group.complete = age >= 2 * minute;
                let n: u64 = f.group.study_uid[1..].parse().unwrap();
                let delivered_after = if n % 7 == 3 { 8 * 60 } else { 30 };
                f.outbox_pending = u64::from(f.group.complete && age < delivered_after * minute);
            }
            let used = base + present.iter().map(|(f, _)| f.group.bytes).sum::<u64>();
            let u = FsUsage {
                used_bytes: used,
                available_bytes: usable - used,
            };
            max_seen = max_seen.max(u.used_percent());
            if u.used_percent() >= p.high_watermark_percent {
                reached_high = true;
            }
            let facts: Vec<StudyFacts> = present.iter().map(|(f, _)| f.clone()).collect();
            let picked = plan(&facts, Some(u), now, &p, Mode::Policy);
            for (i, _) in &picked {
                let f = &facts[*i];
                assert!(!f.protected, "a protected study was picked at minute {t}");
                assert!(
                    f.group.complete && f.outbox_pending == 0,
                    "unfinished study picked"
                );
            }
            let mut gone: Vec<usize> = picked.iter().map(|(i, _)| *i).collect();
            gone.sort_unstable();
            for i in gone.into_iter().rev() {
                present.remove(i);
                purged += 1;
            }
            if reached_high {
                let used = base + present.iter().map(|(f, _)| f.group.bytes).sum::<u64>();
                min_after_high = min_after_high.min(used as f64 * 100.0 / usable as f64);
            }
        }
        assert!(reached_high && purged > 0);
        assert!(max_seen < p.high_watermark_percent + 0.5, "max {max_seen}");
        assert!(
            min_after_high >= p.low_watermark_percent - 0.5,
            "min {min_after_high}"
        );
        // Every protected study that ever arrived is still there.
        let protected = present.iter().filter(|(f, _)| f.protected).count();
        assert_eq!(protected, 48 * 6 / 5 + 1);
    }

    fn store(spool: &Spool, study: &str, sop: &str, ae: &str) {
        spool
            .store(&IncomingInstance {
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2",
                sop_instance_uid: sop,
                study_uid: study,
                series_uid: &format!("{study}.1"),
                modality: "CT",
                transfer_syntax_uid: pacs_bridge::uids::EXPLICIT_VR_LE,
                calling_ae: ae,
                called_ae: "RADIANT",
                dataset: b"abcdefgh",
            })
            .unwrap();
    }

    fn config(dir: &Path) -> Config {
        let mut c = Config::embedded_default().unwrap();
        c.data_dir = dir.to_path_buf();
        c.retention.max_age_hours = 1.0;
        c.retention.grace_seconds = 0;
        // Whatever the test machine's disk holds, only age decides here.
        c.retention.high_watermark_percent = 99.0;
        c.retention.low_watermark_percent = 98.0;
        c
    }

    /// The databases as the daemon leaves them: each study of the eligibility matrix in the
    /// spool and in results.sqlite; one round an hour later purges exactly the finished one.
    #[test]
    fn a_round_purges_exactly_the_studies_nothing_holds_and_logs_their_hashed_tag() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        let studies = [
            "1.9.1", // finished: job done, outbox sent
            "1.9.2", // receiving
            "1.9.3", // job queued
            "1.9.4", // job running
            "1.9.5", // outbox pending
            "1.9.6", // protected
            "1.9.7", // labelled case, features stored
            "1.9.8", // labelled case, learner has not got its features yet
            "1.9.9", // job failed, outbox given up
        ];
        for s in studies {
            store(&spool, s, &format!("{s}.1"), "A");
            store(&spool, s, &format!("{s}.2"), "A");
        }
        spool.close().unwrap();
        let index = index::open(&store::index_path(dir.path())).unwrap();
        index
            .execute(
                "UPDATE studies SET state = 'complete', completed_at_ms = 0,
                     completion_announced = 1 WHERE study_uid != '1.9.2'",
                [],
            )
            .unwrap();
        let results = db::open(dir.path()).unwrap();
        let job = |study: &str, state: JobState| -> i64 {
            results
                .execute(
                    "INSERT INTO jobs (study_uid, calling_ae, series_uid, model_id, model_version,
                         instances, state, created_at_ms, updated_at_ms)
                     VALUES (?1, 'A', 'x', 'm', '1', 2, ?2, 0, 0)",
                    params![study, state],
                )
                .unwrap();
            results.last_insert_rowid()
        };
        let outbox =
            |job: i64, study: &str, state: OutboxState| {
                results
                .execute(
                    "INSERT INTO outbox (job_id, study_uid, destination, kind, sop_instance_uid,
                         path, state, next_attempt_at_ms, created_at_ms, updated_at_ms)
                     VALUES (?1, ?2, 'pacs', 'seg', ?3, 'p', ?4, 0, 0, 0)",
                    params![job, study, format!("{study}.{job}.{}", state.as_str()), state],
                )
                .unwrap();
            };
        let j = job("1.9.1", JobState::Done);
        outbox(j, "1.9.1", OutboxState::Sent);
        job("1.9.3", JobState::Queued);
        job("1.9.4", JobState::Running);
        let j = job("1.9.5", JobState::Done);
        outbox(j, "1.9.5", OutboxState::Sent);
        outbox(j, "1.9.5", OutboxState::Pending);
        results
            .execute(
                "INSERT INTO protected_studies (study_uid, protected_at_ms) VALUES ('1.9.6', 0)",
                [],
            )
            .unwrap();
        for (id, study) in [(1, "1.9.7"), (2, "1.9.8")] {
            results
                .execute(
                    "INSERT INTO cases (id, label_sop_uid, origin, state, study_uid, series_uid,
                         model_id, created_at_ms)
                     VALUES (?1, ?2, 'dicom', ?3, ?4, 'x', 'm', 0)",
                    params![id, format!("seg{id}"), CaseState::Accepted, study],
                )
                .unwrap();
        }
        results
            .execute(
                "INSERT INTO case_features (case_id, backbone_sha256, slices, plane, pixel_ml,
                     features_path, labels_path, labels_sha256, created_at_ms)
                 VALUES (1, 'b', 1, 1, 1.0, 'f', 'l', 's', 0)",
                [],
            )
            .unwrap();
        let j = job("1.9.9", JobState::Failed);
        outbox(j, "1.9.9", OutboxState::Failed);

        let mut r = Retention::open(&config(dir.path())).unwrap();
        // Within the hour: nothing goes (the disk of the test machine is far from 80%).
        assert!(r
            .round(HOUR - 1, Mode::Policy, false)
            .unwrap()
            .purged
            .is_empty());
        let dry = r.round(HOUR, Mode::Policy, true).unwrap();
        let would: Vec<&str> = dry.purged.iter().map(|l| l.study_uid.as_str()).collect();
        assert_eq!(would, ["1.9.1", "1.9.9"]);
        assert!(dir.path().join("spool/1.9.1/1.9.1.1.dcm").exists());
        assert_eq!(dry.held.get(&Hold::Case), Some(&2));
        let round = r.round(HOUR, Mode::Policy, false).unwrap();
        let gone: Vec<&str> = round.purged.iter().map(|l| l.study_uid.as_str()).collect();
        assert_eq!(gone, ["1.9.1", "1.9.9"]);
        assert_eq!(round.purged[0].bytes, 16);
        for s in studies {
            let kept = !gone.contains(&s);
            for n in 1..=2 {
                let file = dir.path().join(format!("spool/{s}/{s}.{n}.dcm"));
                assert_eq!(file.exists(), kept, "{s}");
                assert_eq!(
                    index::instance_path(&index, &format!("{s}.{n}"))
                        .unwrap()
                        .is_some(),
                    kept,
                    "{s}"
                );
            }
        }
        // With the pixel data of case studies allowed to go, the case whose features are
        // stored goes, the one the learner still needs stays.
        let mut loose = config(dir.path());
        loose.retention.keep_pixel_data_of_cases = false;
        let mut r = Retention::open(&loose).unwrap();
        let round = r.round(HOUR, Mode::Policy, false).unwrap();
        let gone: Vec<&str> = round.purged.iter().map(|l| l.study_uid.as_str()).collect();
        assert_eq!(gone, ["1.9.7"]);
        assert_eq!(round.held.get(&Hold::Learner), Some(&1));
        let metrics = ApplianceMetrics::default();
        let dicom = Metrics::default();
        let mut seen = HashMap::new();
        r.publish(&round, &mut seen, &metrics, &dicom).unwrap();
        let text = crate::metrics::Exposition::new(&dicom, &metrics).render();
        assert!(
            text.contains("radiant_retention_studies_purged_total{reason=\"age\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("radiant_retention_freed_bytes_total 48"),
            "{text}"
        );
        assert!(text.contains("radiant_spool_instances 12"), "{text}");
        // Publishing again counts nothing twice.
        r.publish(&round, &mut seen, &metrics, &dicom).unwrap();
        let text = crate::metrics::Exposition::new(&dicom, &metrics).render();
        assert!(
            text.contains("radiant_retention_studies_purged_total{reason=\"age\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn a_protection_recorded_after_the_plan_keeps_the_study_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        store(&spool, "1.8.1", "1.8.1.1", "A");
        spool.close().unwrap();
        let index = index::open(&store::index_path(dir.path())).unwrap();
        index
            .execute(
                "UPDATE studies SET state = 'complete', completed_at_ms = 0, completion_announced = 1",
                [],
            )
            .unwrap();
        let mut r = Retention::open(&config(dir.path())).unwrap();
        let dry = r.round(HOUR, Mode::Policy, true).unwrap();
        assert_eq!(dry.purged.len(), 1);
        let p = protect(dir.path(), "1.8.1").unwrap();
        assert!(p.in_spool && !p.purged_before);
        assert!(r
            .round(HOUR, Mode::Policy, false)
            .unwrap()
            .purged
            .is_empty());
        assert!(dir.path().join("spool/1.8.1/1.8.1.1.dcm").exists());
        assert!(unprotect(dir.path(), "1.8.1").unwrap());
        assert!(!unprotect(dir.path(), "1.8.1").unwrap());
        let round = r.round(HOUR, Mode::Policy, false).unwrap();
        assert_eq!(round.purged.len(), 1);
        assert!(!dir.path().join("spool/1.8.1").exists());
        // Protecting it now says it is gone.
        let p = protect(dir.path(), "1.8.1").unwrap();
        assert!(!p.in_spool && p.purged_before);
    }
}
