//! Counters of the DICOM side, rendered in the Prometheus text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    pub associations_total: AtomicU64,
    pub associations_active: AtomicI64,
    pub instances_total: AtomicU64,
    pub instances_duplicate_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub echoes_total: AtomicU64,
    /// Bytes of instance files in the spool; set at start-up from the index, then kept current.
    pub spool_bytes: AtomicU64,
    pub spool_instances: AtomicU64,
    pub commit_batches_total: AtomicU64,
    /// Result objects waiting in the outbox (set by the sender each round).
    pub outbox_pending: AtomicU64,
    pub outbox_sent_total: AtomicU64,
    pub outbox_retries_total: AtomicU64,
    pub outbox_failed_total: AtomicU64,
    /// On-site learning (set by the appliance's learner).
    pub learning_progress_percent: AtomicU64,
    pub learning_runs_total: AtomicU64,
    pub learning_yields_total: AtomicU64,
    pub learning_heads_accepted_total: AtomicU64,
    pub learning_heads_refused_total: AtomicU64,
    /// Head version inference uses; 0 is the model's global head.
    pub learning_champion_head: AtomicU64,
    /// Refusals by reason label (`scp::RejectReason::label`).
    rejects: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn reject(&self, reason: &'static str) {
        if let Ok(mut map) = self.rejects.lock() {
            *map.entry(reason).or_default() += 1;
        }
    }

    pub fn rejects(&self, reason: &str) -> u64 {
        self.rejects
            .lock()
            .map(|m| m.get(reason).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Render every counter in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        let series: [(&str, &str, &str, String); 19] = [
            (
                "radiant_associations_total",
                "DICOM associations accepted.",
                "counter",
                get(&self.associations_total),
            ),
            (
                "radiant_associations_active",
                "DICOM associations in progress.",
                "gauge",
                self.associations_active.load(Ordering::Relaxed).to_string(),
            ),
            (
                "radiant_instances_received_total",
                "Instances stored durably and acknowledged with Success.",
                "counter",
                get(&self.instances_total),
            ),
            (
                "radiant_instances_duplicate_total",
                "Instances re-sent with a SOP Instance UID already stored.",
                "counter",
                get(&self.instances_duplicate_total),
            ),
            (
                "radiant_received_bytes_total",
                "Dataset bytes of stored instances.",
                "counter",
                get(&self.bytes_total),
            ),
            (
                "radiant_echoes_total",
                "C-ECHO requests answered.",
                "counter",
                get(&self.echoes_total),
            ),
            (
                "radiant_spool_bytes",
                "Bytes of instance files in the spool.",
                "gauge",
                get(&self.spool_bytes),
            ),
            (
                "radiant_spool_instances",
                "Instances in the spool.",
                "gauge",
                get(&self.spool_instances),
            ),
            (
                "radiant_commit_batches_total",
                "Group commits of the spool index (one fsync of the index each).",
                "counter",
                get(&self.commit_batches_total),
            ),
            (
                "radiant_outbox_pending",
                "Result objects (SEG, SR) waiting to be delivered.",
                "gauge",
                get(&self.outbox_pending),
            ),
            (
                "radiant_outbox_sent_total",
                "Result objects delivered to a destination.",
                "counter",
                get(&self.outbox_sent_total),
            ),
            (
                "radiant_outbox_retries_total",
                "Deliveries that failed transiently and were rescheduled.",
                "counter",
                get(&self.outbox_retries_total),
            ),
            (
                "radiant_outbox_failed_total",
                "Deliveries refused permanently or given up (not retried).",
                "counter",
                get(&self.outbox_failed_total),
            ),
            (
                "radiant_learning_progress_percent",
                "Epochs done of the fine-tune in progress (or of the last one), in percent.",
                "gauge",
                get(&self.learning_progress_percent),
            ),
            (
                "radiant_learning_runs_total",
                "Fine-tunes finished (accepted, refused by the gate, or failed).",
                "counter",
                get(&self.learning_runs_total),
            ),
            (
                "radiant_learning_yields_total",
                "Fine-tunes stopped because a study needed inference (started over later).",
                "counter",
                get(&self.learning_yields_total),
            ),
            (
                "radiant_learning_heads_accepted_total",
                "Fine-tuned heads the validation gate accepted.",
                "counter",
                get(&self.learning_heads_accepted_total),
            ),
            (
                "radiant_learning_heads_refused_total",
                "Fine-tuned heads the validation gate refused.",
                "counter",
                get(&self.learning_heads_refused_total),
            ),
            (
                "radiant_learning_champion_head",
                "Head version inference uses (0: the model's global head).",
                "gauge",
                get(&self.learning_champion_head),
            ),
        ];
        let mut out = String::new();
        for (name, help, kind, value) in series {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP radiant_rejects_total Associations and instances refused, by reason.\n# TYPE radiant_rejects_total counter"
        );
        if let Ok(map) = self.rejects.lock() {
            for (reason, count) in map.iter() {
                let _ = writeln!(
                    out,
                    "radiant_rejects_total{{reason=\"{}\"}} {count}",
                    reason
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_are_rendered_with_their_reason_label() {
        let m = Metrics::default();
        m.reject("calling_ae_title");
        m.reject("calling_ae_title");
        let text = m.render();
        assert!(text.contains("radiant_rejects_total{reason=\"calling_ae_title\"} 2"));
        assert!(text.contains("radiant_instances_received_total 0"));
    }
}
