//! Metrics of the DICOM side: associations, instances, the spool, refusals by reason, and how
//! long an instance takes from its last byte received to durable (the time a sender waits for
//! its Success on top of the transfer). They register into an OpenMetrics registry
//! (`prometheus-client`) that the appliance serves; the appliance's own metrics (jobs, outbox,
//! learning) live in the appliance.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The label of `radiant_rejects_total`: a `scp::RejectReason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

/// Counters and gauges are shared handles: clones count into the same series.
#[derive(Clone)]
pub struct Metrics {
    pub associations: Counter,
    pub associations_active: Gauge,
    /// Bytes of datasets being received across associations (the SCP's memory budget in use).
    pub inflight_dataset_bytes: Gauge,
    /// The memory budget for datasets being received.
    pub inflight_budget_bytes: Gauge,
    pub instances_received: Counter,
    pub instances_duplicate: Counter,
    pub received_bytes: Counter,
    pub echoes: Counter,
    /// Bytes of instance files in the spool; set at start-up from the index, then kept current.
    pub spool_bytes: Gauge,
    pub spool_instances: Gauge,
    pub commit_batches: Counter,
    /// Seconds from a C-STORE dataset's last fragment to its instance being durable.
    pub ingest_latency: Histogram,
    rejects: Family<Reason, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            associations: Counter::default(),
            associations_active: Gauge::default(),
            inflight_dataset_bytes: Gauge::default(),
            inflight_budget_bytes: Gauge::default(),
            instances_received: Counter::default(),
            instances_duplicate: Counter::default(),
            received_bytes: Counter::default(),
            echoes: Counter::default(),
            spool_bytes: Gauge::default(),
            spool_instances: Gauge::default(),
            commit_batches: Counter::default(),
            // 0.25 ms to about 4 s: an fsync'd instance takes about a millisecond here.
            ingest_latency: Histogram::new(exponential_buckets(0.000_25, 2.0, 15)),
            rejects: Family::default(),
        }
    }
}

impl Metrics {
    /// Count a refusal under its reason label (`scp::RejectReason::label`).
    pub fn reject(&self, reason: &'static str) {
        self.rejects.get_or_create(&Reason { reason }).inc();
    }

    pub fn rejects(&self, reason: &'static str) -> u64 {
        self.rejects.get_or_create(&Reason { reason }).get()
    }

    /// Register every series under its `radiant_` name.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "radiant_associations",
            "DICOM associations accepted",
            self.associations.clone(),
        );
        registry.register(
            "radiant_associations_active",
            "DICOM associations in progress",
            self.associations_active.clone(),
        );
        registry.register(
            "radiant_scp_inflight_dataset_bytes",
            "Bytes of datasets being received, across associations",
            self.inflight_dataset_bytes.clone(),
        );
        registry.register(
            "radiant_scp_inflight_budget_bytes",
            "Memory budget for datasets being received; beyond it an instance waits, then gets A700",
            self.inflight_budget_bytes.clone(),
        );
        registry.register(
            "radiant_instances_received",
            "Instances stored durably and acknowledged with Success",
            self.instances_received.clone(),
        );
        registry.register(
            "radiant_instances_duplicate",
            "Instances re-sent with a SOP Instance UID already stored",
            self.instances_duplicate.clone(),
        );
        registry.register(
            "radiant_received_bytes",
            "Dataset bytes of stored instances",
            self.received_bytes.clone(),
        );
        registry.register(
            "radiant_echoes",
            "C-ECHO requests answered",
            self.echoes.clone(),
        );
        registry.register(
            "radiant_spool_bytes",
            "Bytes of instance files in the spool",
            self.spool_bytes.clone(),
        );
        registry.register(
            "radiant_spool_instances",
            "Instances in the spool",
            self.spool_instances.clone(),
        );
        registry.register(
            "radiant_commit_batches",
            "Group commits of the spool index (one fsync of the index each)",
            self.commit_batches.clone(),
        );
        registry.register_with_unit(
            "radiant_ingest_latency",
            "Time from a C-STORE dataset's last fragment to its instance being durable (fsync'd file and index), per instance",
            Unit::Seconds,
            self.ingest_latency.clone(),
        );
        registry.register(
            "radiant_rejects",
            "Associations and instances refused, by reason",
            self.rejects.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn rejects_and_latency_are_rendered_under_their_names() {
        let m = Metrics::default();
        m.reject("calling_ae_title");
        m.reject("calling_ae_title");
        m.ingest_latency.observe(0.001);
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("radiant_rejects_total{reason=\"calling_ae_title\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("radiant_instances_received_total 0"),
            "{text}"
        );
        assert!(
            text.contains("radiant_ingest_latency_seconds_count 1"),
            "{text}"
        );
        assert_eq!(m.rejects("calling_ae_title"), 2);
    }
}
