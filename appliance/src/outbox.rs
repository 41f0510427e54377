//! The durable outbox: result objects waiting to be delivered to the configured destinations
//! over C-STORE, in the `outbox` table of `results.sqlite` ([`crate::db`]).
//!
//! An entry is created in the same transaction that stores the job's result, after its file
//! is fsync'd, so every result that is reported done is also queued for delivery. The sender
//! sends due entries per destination on one association each, in the order they were queued
//! (a SEG before the SR that references it). A delivered entry is marked `sent`; a transient
//! failure (peer down, busy, timeout, out of resources) is retried with a doubling wait up to
//! `retry_max_seconds`, until `give_up_after_hours`; a permanent refusal (rejected
//! association, SOP class not accepted, failure status) stops at once as `failed` with the
//! reason: no retry loops. A crash after the peer stored an object but before it was marked
//! sent re-sends the same object (same SOP Instance UID) after restart: the PACS sees a
//! repeat, never a second result.

use crate::audit::{self, AuditLog};
use crate::config::{Config, DestinationConfig, OutboxConfig};
use crate::db::{self, OutboxState};
use crate::export::Exported;
use crate::metrics::ApplianceMetrics;
use pacs_bridge::scu::{self, Destination, ScuConfig};
use radiant_core::log_tag;
use radiant_core::{Cancel, Doorbell};
use rusqlite::{params, Connection, Transaction};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Entries one association carries at most.
pub const BATCH: usize = 64;
/// How often the sender looks for due entries.
const POLL: Duration = Duration::from_millis(500);

/// Queue the objects of job `job_id` for every destination of a study from `calling_ae`,
/// inside the transaction that stores the job's result: each destination gets the kinds it
/// takes (`objects`), and nothing of a negative result when it does not want negative
/// studies. An object already queued for a destination (the same SOP Instance UID: UIDs
/// derive from the job) is left as it is.
pub fn enqueue(
    tx: &Transaction<'_>,
    config: &Config,
    job_id: i64,
    study_uid: &str,
    calling_ae: &str,
    exported: &Exported,
    now_ms: i64,
) -> rusqlite::Result<usize> {
    let mut queued = 0;
    for dest in config.destinations_for(calling_ae) {
        if exported.negative && !dest.negative_studies {
            continue;
        }
        for object in exported
            .objects
            .iter()
            .filter(|o| dest.objects.contains(&o.kind))
        {
            queued += tx.execute(
                "INSERT INTO outbox (job_id, study_uid, destination, kind, sop_instance_uid,
                     path, state, next_attempt_at_ms, created_at_ms, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?8, ?7, ?7, ?7)
                 ON CONFLICT (destination, sop_instance_uid) DO NOTHING",
                params![
                    job_id,
                    study_uid,
                    dest.name,
                    object.kind.as_str(),
                    object.sop_instance_uid,
                    object.path.to_string_lossy(),
                    now_ms,
                    OutboxState::Pending
                ],
            )?;
        }
    }
    Ok(queued)
}

/// One outbox entry, as `appliance outbox list` prints it.
#[derive(Debug, Serialize)]
pub struct EntryView {
    pub id: i64,
    pub job_id: i64,
    pub study_uid: String,
    pub destination: String,
    pub kind: String,
    pub sop_instance_uid: String,
    pub state: OutboxState,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub sent_at_ms: Option<i64>,
}

/// Every entry, oldest first (optionally only those in `state`).
pub fn list(conn: &Connection, state: Option<OutboxState>) -> rusqlite::Result<Vec<EntryView>> {
    let mut stmt = conn.prepare(
        "SELECT id, job_id, study_uid, destination, kind, sop_instance_uid, state, attempts,
                last_error, next_attempt_at_ms, created_at_ms, sent_at_ms
         FROM outbox WHERE (?1 IS NULL OR state = ?1) ORDER BY id",
    )?;
    let rows = stmt.query_map([state], |r| {
        let state: OutboxState = r.get(6)?;
        let next: i64 = r.get(9)?;
        Ok(EntryView {
            id: r.get(0)?,
            job_id: r.get(1)?,
            study_uid: r.get(2)?,
            destination: r.get(3)?,
            kind: r.get(4)?,
            sop_instance_uid: r.get(5)?,
            next_attempt_at_ms: (state == OutboxState::Pending).then_some(next),
            state,
            attempts: r.get(7)?,
            last_error: r.get(8)?,
            created_at_ms: r.get(10)?,
            sent_at_ms: r.get(11)?,
        })
    })?;
    rows.collect()
}

/// Put failed entries (one, or all with `id == None`) back in the queue, due now: for after
/// the operator fixed what the destination refused.
pub fn retry(conn: &Connection, id: Option<i64>, now_ms: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE outbox SET state = ?3, next_attempt_at_ms = ?2, updated_at_ms = ?2,
             attempts = 0
         WHERE state = ?4 AND (?1 IS NULL OR id = ?1)",
        params![id, now_ms, OutboxState::Pending, OutboxState::Failed],
    )
}

/// Wait before attempt `attempts + 1` after a transient failure.
pub fn backoff(config: &OutboxConfig, attempts: u32) -> Duration {
    let factor = 1u64 << attempts.min(20);
    Duration::from_secs(
        config
            .retry_initial_seconds
            .saturating_mul(factor)
            .min(config.retry_max_seconds),
    )
}

/// Delivers due entries until stopped.
pub struct Sender {
    pub data_dir: PathBuf,
    pub config: Config,
    pub metrics: Arc<ApplianceMetrics>,
    pub audit: AuditLog,
}

struct Due {
    id: i64,
    study_uid: String,
    destination: String,
    path: String,
    attempts: u32,
    created_at_ms: i64,
    kind: String,
}

enum Outcome {
    Sent,
    Transient(String),
    Permanent(String),
}

impl Sender {
    /// Send rounds until `stop` is raised. Between rounds it waits on `wake` (rung when a job
    /// queues results) for at most [`POLL`], which paces retries and picks up entries that
    /// `appliance outbox retry` queued from another process.
    pub fn run(self, stop: &Cancel, mut wake: Doorbell) -> anyhow::Result<()> {
        let conn = db::open(&self.data_dir)?;
        while !stop.is_cancelled() {
            if let Err(e) = self.round(&conn) {
                tracing::error!(error = %format!("{e:#}"), "outbox round failed");
            }
            wake.wait(POLL);
        }
        Ok(())
    }

    /// Send what is due, one association per destination.
    fn round(&self, conn: &Connection) -> anyhow::Result<()> {
        let now = db::now_ms();
        let pending: i64 = conn.query_row(
            "SELECT COUNT(*) FROM outbox WHERE state = ?1",
            [OutboxState::Pending],
            |r| r.get(0),
        )?;
        self.metrics.outbox_pending.set(pending);
        let due: Vec<Due> = {
            let mut stmt = conn.prepare(
                "SELECT id, study_uid, destination, path, attempts, created_at_ms, kind FROM outbox
                 WHERE state = ?3 AND next_attempt_at_ms <= ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now, BATCH as i64, OutboxState::Pending], |r| {
                Ok(Due {
                    id: r.get(0)?,
                    study_uid: r.get(1)?,
                    destination: r.get(2)?,
                    path: r.get(3)?,
                    attempts: r.get::<_, i64>(4)?.clamp(0, i64::from(u32::MAX)) as u32,
                    created_at_ms: r.get(5)?,
                    kind: r.get(6)?,
                })
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut destinations: Vec<&str> = Vec::new();
        for d in &due {
            if !destinations.contains(&d.destination.as_str()) {
                destinations.push(&d.destination);
            }
        }
        for name in destinations {
            let entries: Vec<&Due> = due.iter().filter(|d| d.destination == name).collect();
            let outcomes = match self.config.destinations.iter().find(|d| d.name == name) {
                Some(dest) => self.send(dest, &entries),
                None => entries
                    .iter()
                    .map(|_| {
                        Outcome::Permanent(format!(
                            "destination {name:?} is no longer in the configuration"
                        ))
                    })
                    .collect(),
            };
            for (entry, outcome) in entries.iter().zip(outcomes) {
                self.record(conn, entry, outcome)?;
            }
        }
        Ok(())
    }

    fn send(&self, dest: &DestinationConfig, entries: &[&Due]) -> Vec<Outcome> {
        // TLS files are read for each batch: a renewed certificate is used without a restart;
        // one that no longer loads fails the batch, permanently (someone must fix the files,
        // then `appliance outbox retry`).
        let tls = match dest.client_tls() {
            Ok(tls) => tls,
            Err(e) => {
                let reason = format!("TLS settings of destination {:?}: {e}", dest.name);
                tracing::error!(destination = %dest.name, error = %e, "cannot load the destination's TLS settings");
                return entries
                    .iter()
                    .map(|_| Outcome::Permanent(reason.clone()))
                    .collect();
            }
        };
        let destination = Destination {
            ae_title: dest.ae_title.clone(),
            host: dest.host.clone(),
            port: dest.port,
            tls,
        };
        let mut config = ScuConfig::new(self.config.dicom.ae_title.clone());
        config.connect_timeout = Duration::from_secs(self.config.outbox.connect_timeout_seconds);
        config.io_timeout = Duration::from_secs(self.config.outbox.io_timeout_seconds);
        config.max_pdu_length = self.config.dicom.max_pdu_length;
        let files: Vec<PathBuf> = entries
            .iter()
            .map(|e| self.data_dir.join(&e.path))
            .collect();
        match scu::send(&destination, &config, &files) {
            Err(e) if e.is_transient() => entries
                .iter()
                .map(|_| Outcome::Transient(e.to_string()))
                .collect(),
            Err(e) => entries
                .iter()
                .map(|_| Outcome::Permanent(e.to_string()))
                .collect(),
            Ok(outcomes) => outcomes
                .into_iter()
                .map(|o| match o.result {
                    Ok(delivered) => {
                        if let scu::Delivered::Warning { status, comment } = delivered {
                            tracing::warn!(destination = %dest.name, status = format!("{status:04X}"), comment = ?comment, "destination stored the object with a warning");
                        }
                        Outcome::Sent
                    }
                    Err(f) if f.is_transient() => Outcome::Transient(f.to_string()),
                    Err(f) => Outcome::Permanent(f.to_string()),
                })
                .collect(),
        }
    }

    fn record(&self, conn: &Connection, entry: &Due, outcome: Outcome) -> rusqlite::Result<()> {
        let now = db::now_ms();
        let study = log_tag(&entry.study_uid);
        self.audit_delivery(entry, &study, &outcome);
        match outcome {
            Outcome::Sent => {
                conn.execute(
                    "UPDATE outbox SET state = ?3, sent_at_ms = ?2, updated_at_ms = ?2,
                         attempts = attempts + 1, last_error = NULL WHERE id = ?1",
                    params![entry.id, now, OutboxState::Sent],
                )?;
                self.metrics.outbox_sent.inc();
                let waited_ms = now.saturating_sub(entry.created_at_ms).max(0);
                self.metrics
                    .outbox_delivery_latency
                    .observe(waited_ms as f64 / 1e3);
                tracing::info!(study = %study, destination = %entry.destination, entry = entry.id, "result delivered");
            }
            Outcome::Transient(reason) => {
                let attempts = entry.attempts + 1;
                let give_up_ms =
                    entry.created_at_ms + self.config.outbox.give_up_after_hours as i64 * 3_600_000;
                if now >= give_up_ms {
                    let reason = format!(
                        "given up after {} hours and {attempts} attempts; last: {reason}",
                        self.config.outbox.give_up_after_hours
                    );
                    self.fail(conn, entry, &reason, now)?;
                    return Ok(());
                }
                let wait = backoff(&self.config.outbox, entry.attempts);
                conn.execute(
                    "UPDATE outbox SET attempts = ?2, last_error = ?3, next_attempt_at_ms = ?4,
                         updated_at_ms = ?5 WHERE id = ?1",
                    params![
                        entry.id,
                        i64::from(attempts),
                        reason,
                        now + wait.as_millis() as i64,
                        now
                    ],
                )?;
                self.metrics.outbox_retries.inc();
                tracing::warn!(study = %study, destination = %entry.destination, entry = entry.id, attempts, retry_in_seconds = wait.as_secs(), error = %reason, "delivery failed; will retry");
            }
            Outcome::Permanent(reason) => self.fail(conn, entry, &reason, now)?,
        }
        Ok(())
    }

    /// Every attempt goes into the audit trail: what was sent where, and how it went.
    fn audit_delivery(&self, entry: &Due, study: &str, outcome: &Outcome) {
        let outcome = match outcome {
            Outcome::Sent => "success".to_string(),
            Outcome::Transient(reason) => format!("failure (will retry): {reason}"),
            Outcome::Permanent(reason) => format!("failure: {reason}"),
        };
        audit::record(
            &self.audit,
            audit::Event {
                action: "delivery".into(),
                actor: "daemon".into(),
                outcome,
                dicom: Some(audit::DicomEvent::InstancesTransferred),
                detail: serde_json::json!({
                    "destination": entry.destination,
                    "object": entry.kind,
                    "outbox_entry": entry.id,
                    "study": study,
                }),
            },
        );
    }

    fn fail(&self, conn: &Connection, entry: &Due, reason: &str, now: i64) -> rusqlite::Result<()> {
        conn.execute(
            "UPDATE outbox SET state = ?4, attempts = attempts + 1, last_error = ?2,
                 updated_at_ms = ?3 WHERE id = ?1",
            params![entry.id, reason, now, OutboxState::Failed],
        )?;
        self.metrics.outbox_failed.inc();
        tracing::error!(study = %log_tag(&entry.study_uid), destination = %entry.destination, entry = entry.id, error = %reason, "delivery refused; not retrying (appliance outbox retry to try again)");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_from_the_initial_one_up_to_the_maximum() {
        let config = OutboxConfig {
            retry_initial_seconds: 10,
            retry_max_seconds: 600,
            ..OutboxConfig::default()
        };
        let waits: Vec<u64> = (0..8).map(|a| backoff(&config, a).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(backoff(&config, u32::MAX).as_secs(), 600);
    }
}
