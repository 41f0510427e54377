//! The appliance's own metrics (inference stages, the outbox, learning) and the one OpenMetrics
//! registry `/metrics` renders, which also holds the DICOM side's series
//! (`pacs_bridge::metrics`). Built on `prometheus-client`: counters, gauges and histograms are
//! shared handles, so the parts that count hold clones and nothing renders text by hand.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

/// The label of `radiant_inference_stage_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Stage {
    /// `decode`, `preprocess`, `backbone_head`, `postprocess` or `export`.
    pub stage: &'static str,
}

/// The label of `radiant_retention_studies_purged`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PurgeReason {
    /// `age`, `watermark` or `operator`.
    pub reason: String,
}

/// The label of `radiant_retention_studies_held`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HoldReason {
    /// Why studies stay: `receiving`, `grace`, `inference`, `outbox`, `protected`, `case`,
    /// `learner` (see `retention::Hold`).
    pub reason: &'static str,
}

/// Retention's series ([`crate::retention`]).
#[derive(Clone, Default)]
pub struct RetentionMetrics {
    /// Studies purged from the spool (daemon and CLI alike: counted from the index's record).
    pub studies_purged: Family<PurgeReason, Counter>,
    /// Dataset bytes of the purged studies' instances.
    pub freed_bytes: Counter,
    /// Unix time of the latest purge.
    pub last_purge_timestamp_seconds: Gauge,
    /// Studies that stay, by reason, at the last round.
    pub studies_held: Family<HoldReason, Gauge>,
    pub disk_used_percent: Gauge<f64, AtomicU64>,
    pub high_watermark_percent: Gauge<f64, AtomicU64>,
    pub low_watermark_percent: Gauge<f64, AtomicU64>,
}

impl RetentionMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "radiant_retention_studies_purged",
            "Studies purged from the spool, by reason (age, watermark, operator)",
            self.studies_purged.clone(),
        );
        registry.register_with_unit(
            "radiant_retention_freed",
            "Bytes of instances purged from the spool",
            Unit::Bytes,
            self.freed_bytes.clone(),
        );
        registry.register(
            "radiant_retention_last_purge_timestamp_seconds",
            "Unix time of the latest purge (0: none yet)",
            self.last_purge_timestamp_seconds.clone(),
        );
        registry.register(
            "radiant_retention_studies_held",
            "Studies retention keeps, by reason, at its last round",
            self.studies_held.clone(),
        );
        registry.register(
            "radiant_disk_used_percent",
            "Used space of the data file system, in percent (as df shows it)",
            self.disk_used_percent.clone(),
        );
        registry.register(
            "radiant_retention_high_watermark_percent",
            "Used space at which retention purges finished studies, oldest first",
            self.high_watermark_percent.clone(),
        );
        registry.register(
            "radiant_retention_low_watermark_percent",
            "Used space retention purges down to once at the high watermark",
            self.low_watermark_percent.clone(),
        );
    }
}

fn stage_histogram() -> Histogram {
    // 1 ms to about 65 s: a stage of the reference model takes 10 ms to 1 s on the CPU.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

#[derive(Clone)]
pub struct ApplianceMetrics {
    /// Seconds each stage of an inference job took, per job.
    pub inference_stage: Family<Stage, Histogram, fn() -> Histogram>,
    pub jobs_done: Counter,
    pub jobs_failed: Counter,
    /// Series of completed studies no route sent to a model (stored and left alone).
    pub series_unrouted: Counter,
    /// Result objects waiting in the outbox (set by the sender each round).
    pub outbox_pending: Gauge,
    pub outbox_sent: Counter,
    pub outbox_retries: Counter,
    pub outbox_failed: Counter,
    /// Seconds from a result object's queueing to its destination's Success.
    pub outbox_delivery_latency: Histogram,
    pub learning_progress_percent: Gauge,
    pub learning_runs: Counter,
    pub learning_yields: Counter,
    pub learning_heads_accepted: Counter,
    pub learning_heads_refused: Counter,
    /// Head version inference uses; 0 is the model's global head.
    pub learning_champion_head: Gauge,
    pub retention: RetentionMetrics,
}

impl Default for ApplianceMetrics {
    fn default() -> Self {
        ApplianceMetrics {
            inference_stage: Family::new_with_constructor(stage_histogram),
            jobs_done: Counter::default(),
            jobs_failed: Counter::default(),
            series_unrouted: Counter::default(),
            outbox_pending: Gauge::default(),
            outbox_sent: Counter::default(),
            outbox_retries: Counter::default(),
            outbox_failed: Counter::default(),
            // 10 ms to about 11 days: a delivery that waited for a PACS outage counts too.
            outbox_delivery_latency: Histogram::new(exponential_buckets(0.01, 4.0, 18)),
            learning_progress_percent: Gauge::default(),
            learning_runs: Counter::default(),
            learning_yields: Counter::default(),
            learning_heads_accepted: Counter::default(),
            learning_heads_refused: Counter::default(),
            learning_champion_head: Gauge::default(),
            retention: RetentionMetrics::default(),
        }
    }
}

impl ApplianceMetrics {
    /// Record how long `stage` of one job took, in milliseconds (as job results state them).
    pub fn observe_stage(&self, stage: &'static str, milliseconds: f64) {
        if milliseconds.is_finite() && milliseconds >= 0.0 {
            self.inference_stage
                .get_or_create(&Stage { stage })
                .observe(milliseconds / 1e3);
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "radiant_inference_stage",
            "Time of each stage of an inference job (decode, preprocess, backbone_head, postprocess, export)",
            Unit::Seconds,
            self.inference_stage.clone(),
        );
        registry.register(
            "radiant_jobs_done",
            "Inference jobs finished with a result",
            self.jobs_done.clone(),
        );
        registry.register(
            "radiant_jobs_failed",
            "Inference jobs failed (the reason is in the job)",
            self.jobs_failed.clone(),
        );
        registry.register(
            "radiant_series_unrouted",
            "Series of completed studies that no route sent to a model (stored and left alone)",
            self.series_unrouted.clone(),
        );
        registry.register(
            "radiant_outbox_pending",
            "Result objects (SEG, SR) waiting to be delivered",
            self.outbox_pending.clone(),
        );
        registry.register(
            "radiant_outbox_sent",
            "Result objects delivered to a destination",
            self.outbox_sent.clone(),
        );
        registry.register(
            "radiant_outbox_retries",
            "Deliveries that failed transiently and were rescheduled",
            self.outbox_retries.clone(),
        );
        registry.register(
            "radiant_outbox_failed",
            "Deliveries refused permanently or given up (not retried)",
            self.outbox_failed.clone(),
        );
        registry.register_with_unit(
            "radiant_outbox_delivery_latency",
            "Time from a result object's queueing to its destination's Success",
            Unit::Seconds,
            self.outbox_delivery_latency.clone(),
        );
        registry.register(
            "radiant_learning_progress_percent",
            "Epochs done of the fine-tune in progress (or of the last one), in percent",
            self.learning_progress_percent.clone(),
        );
        registry.register(
            "radiant_learning_runs",
            "Fine-tunes finished (accepted, refused by the gate, or failed)",
            self.learning_runs.clone(),
        );
        registry.register(
            "radiant_learning_yields",
            "Fine-tunes stopped because a study needed inference (started over later)",
            self.learning_yields.clone(),
        );
        registry.register(
            "radiant_learning_heads_accepted",
            "Fine-tuned heads the validation gate accepted",
            self.learning_heads_accepted.clone(),
        );
        registry.register(
            "radiant_learning_heads_refused",
            "Fine-tuned heads the validation gate refused",
            self.learning_heads_refused.clone(),
        );
        registry.register(
            "radiant_learning_champion_head",
            "Head version inference uses (0: the model's global head)",
            self.learning_champion_head.clone(),
        );
        self.retention.register(registry);
    }
}

/// Everything `/metrics` shows: the DICOM side's series and the appliance's.
pub struct Exposition {
    registry: Registry,
}

/// The content type of [`Exposition::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Exposition {
    pub fn new(dicom: &pacs_bridge::metrics::Metrics, appliance: &ApplianceMetrics) -> Exposition {
        let mut registry = Registry::default();
        dicom.register(&mut registry);
        appliance.register(&mut registry);
        Exposition { registry }
    }

    /// The OpenMetrics text of every series.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "cannot render the metrics");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_times_are_histograms_in_seconds_and_both_sides_render() {
        let dicom = pacs_bridge::metrics::Metrics::default();
        let app = ApplianceMetrics::default();
        app.observe_stage("backbone_head", 850.0);
        app.observe_stage("decode", f64::NAN);
        app.outbox_sent.inc();
        dicom.instances_received.inc();
        let text = Exposition::new(&dicom, &app).render();
        assert!(
            text.contains("radiant_inference_stage_seconds_count{stage=\"backbone_head\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("radiant_inference_stage_seconds_sum{stage=\"backbone_head\"} 0.85"),
            "{text}"
        );
        assert!(!text.contains("stage=\"decode\""), "{text}");
        assert!(text.contains("radiant_outbox_sent_total 1"), "{text}");
        assert!(
            text.contains("radiant_instances_received_total 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
