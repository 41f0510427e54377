//! The appliance's one TOML configuration file: its schema, defaults, and validation that names
//! the key of every problem. `image/etc/appliance.toml` documents every field and is embedded as
//! the default configuration.

use pacs_bridge::scp::{Peer, ScpConfig, TlsListener};
use pacs_bridge::tls;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// The documented example configuration, used when no `--config` is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../image/etc/appliance.toml");

/// Largest configuration file we read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: invalid configuration:\n{}", .problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub dicom: DicomConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub inference: InferenceConfig,
    #[serde(default)]
    pub results: ResultsConfig,
    /// Where results (SEG, SR) are sent.
    #[serde(default)]
    pub destinations: Vec<DestinationConfig>,
    /// Which models a series goes to ([`crate::routes`]); none: `[inference] model` takes
    /// every series of its modality.
    #[serde(default)]
    pub routes: Vec<crate::routes::RouteConfig>,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub learning: LearningConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    /// The site's policy for federated learning; read by the `updater` process too.
    #[serde(default)]
    pub federation: Option<fleet_wire::site::FederationConfig>,
    /// Firmware updates; read by the `updater` process only.
    #[serde(default)]
    pub update: Option<fleet_wire::site::UpdateConfig>,
    /// Where the audit trail is forwarded ([`crate::audit`]).
    #[serde(default)]
    pub audit: AuditConfig,
    /// The web console ([`crate::console`]).
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
}

/// When studies leave the spool ([`crate::retention`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Hours after completion a finished study is purged (0: never by age).
    #[serde(default = "default_max_age_hours")]
    pub max_age_hours: f64,
    /// Used space (percent of the data file system) at which finished studies are purged,
    /// oldest first, ...
    #[serde(default = "default_high_watermark")]
    pub high_watermark_percent: f64,
    /// ... until used space is at or below this.
    #[serde(default = "default_low_watermark")]
    pub low_watermark_percent: f64,
    /// No study is purged sooner than this after it completed.
    #[serde(default = "default_grace_seconds")]
    pub grace_seconds: u64,
    /// Seconds between two retention rounds.
    #[serde(default = "default_retention_interval")]
    pub interval_seconds: u64,
    /// An operator-protected study keeps its spool files (else only what learning needs).
    #[serde(default = "default_true")]
    pub keep_pixel_data_of_protected: bool,
    /// A study a labelled case refers to keeps its spool files (else only the case's labels
    /// and learning sample, once that is stored; the gate then leaves such a held-out case
    /// out, and the study classifier such a training case).
    #[serde(default = "default_true")]
    pub keep_pixel_data_of_cases: bool,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_age_hours: default_max_age_hours(),
            high_watermark_percent: default_high_watermark(),
            low_watermark_percent: default_low_watermark(),
            grace_seconds: default_grace_seconds(),
            interval_seconds: default_retention_interval(),
            keep_pixel_data_of_protected: true,
            keep_pixel_data_of_cases: true,
        }
    }
}

fn default_max_age_hours() -> f64 {
    168.0
}
fn default_high_watermark() -> f64 {
    80.0
}
fn default_low_watermark() -> f64 {
    70.0
}
fn default_grace_seconds() -> u64 {
    600
}
fn default_retention_interval() -> u64 {
    60
}

/// When and how the appliance fine-tunes the model's head on labelled cases, and the gate a
/// fine-tuned head must pass before inference uses it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearningConfig {
    /// Fine-tune on site at all (labelled cases are taken in either way).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Start a fine-tune once this many new training cases arrived since the last one...
    #[serde(default = "default_min_new_cases")]
    pub min_new_cases: usize,
    /// ...or this many hours after the last one when there is at least one new case (0: no
    /// schedule).
    #[serde(default = "default_interval_hours")]
    pub interval_hours: u64,
    /// Cases are grouped by patient (else series); the first and every n-th group is held out
    /// for validation and never trained on.
    #[serde(default = "default_holdout_every")]
    pub holdout_every: usize,
    /// Train on at most this many cases (the most recent ones); only these and the held-out
    /// cases below keep their backbone features on disk.
    #[serde(default = "default_max_training_cases")]
    pub max_training_cases: usize,
    /// Judge candidates on at most this many held-out cases (the most recent ones).
    #[serde(default = "default_max_holdout_cases")]
    pub max_holdout_cases: usize,
    /// The lower bound (at `gate_confidence`) of a candidate's mean Dice gain over the
    /// champion on the held-out cases must exceed this.
    #[serde(default)]
    pub min_local_gain: f64,
    /// Held-out cases with pixel labels needed before any fine-tuned head can be accepted.
    #[serde(default = "default_min_holdout_cases")]
    pub min_holdout_cases: usize,
    /// Confidence of the gate's paired bootstrap bounds.
    #[serde(default = "default_gate_confidence")]
    pub gate_confidence: f64,
    /// Largest loss the lower bound of one label's held-out Dice (and the held-out AUROC) may
    /// show against the champion (non-inferiority).
    #[serde(default = "default_local_margin")]
    pub local_margin: f64,
    /// A candidate may lose at most this on the reference validation set (Dice per label,
    /// AUROC) against the global head.
    #[serde(default = "default_reference_margin")]
    pub reference_margin: f64,
    #[serde(default = "default_learning_seed")]
    pub seed: u64,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    /// Weight of the proximal term toward the global head (FedProx).
    #[serde(default = "default_fedprox_mu")]
    pub fedprox_mu: f64,
    /// Pixels of each class sampled from each case.
    #[serde(default = "default_pixels_per_class")]
    pub pixels_per_class: usize,
    /// Loss weight per class, background first; empty: all 1.
    #[serde(default)]
    pub class_weights: Vec<f32>,
    /// Fine-tune on CUDA device 0 (a build with the `cuda` feature); the CPU otherwise.
    #[serde(default)]
    pub cuda: bool,
}

impl Default for LearningConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_new_cases: default_min_new_cases(),
            interval_hours: default_interval_hours(),
            holdout_every: default_holdout_every(),
            max_training_cases: default_max_training_cases(),
            max_holdout_cases: default_max_holdout_cases(),
            min_local_gain: 0.0,
            min_holdout_cases: default_min_holdout_cases(),
            gate_confidence: default_gate_confidence(),
            local_margin: default_local_margin(),
            reference_margin: default_reference_margin(),
            seed: default_learning_seed(),
            epochs: default_epochs(),
            learning_rate: default_learning_rate(),
            fedprox_mu: default_fedprox_mu(),
            pixels_per_class: default_pixels_per_class(),
            class_weights: Vec::new(),
            cuda: false,
        }
    }
}

fn default_min_new_cases() -> usize {
    8
}
fn default_interval_hours() -> u64 {
    24
}
fn default_holdout_every() -> usize {
    4
}
fn default_max_training_cases() -> usize {
    32
}
fn default_max_holdout_cases() -> usize {
    16
}
fn default_reference_margin() -> f64 {
    0.02
}
fn default_min_holdout_cases() -> usize {
    5
}
fn default_gate_confidence() -> f64 {
    0.95
}
fn default_local_margin() -> f64 {
    0.02
}
fn default_learning_seed() -> u64 {
    1
}
fn default_epochs() -> usize {
    8
}
fn default_learning_rate() -> f64 {
    3e-3
}
fn default_fedprox_mu() -> f64 {
    1.0
}
fn default_pixels_per_class() -> usize {
    512
}

/// What the appliance writes about a result.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsConfig {
    /// Write a SEG and an SR for every inference result (and send them to the destinations).
    #[serde(default = "default_true")]
    pub export: bool,
    /// Identifies this appliance in the objects it writes.
    #[serde(default = "default_device_serial")]
    pub device_serial: String,
    /// Probability at and above which the SR reports the finding as present.
    #[serde(default = "default_finding_threshold")]
    pub finding_threshold: f64,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        Self {
            export: true,
            device_serial: default_device_serial(),
            finding_threshold: default_finding_threshold(),
        }
    }
}

/// A DICOM peer (the PACS) that receives results over C-STORE.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Our name for it, in the outbox and logs.
    pub name: String,
    pub ae_title: String,
    pub host: String,
    pub port: u16,
    /// Results of studies from these calling AE titles go here. A destination without it is a
    /// default: it gets the results of studies whose sender no destination names.
    #[serde(default)]
    pub for_calling_ae: Vec<String>,
    /// Send over DICOM TLS (PS3.15 annex B); needs `ca_file`.
    #[serde(default)]
    pub tls: bool,
    /// PEM CA certificate(s) the destination's server certificate must chain to.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain and key we present when the destination asks (mutual TLS).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the server certificate must carry (SAN DNS name or IP address); `host` when
    /// not set.
    #[serde(default)]
    pub server_name: Option<String>,
    /// The result objects this destination gets: `SEG`, `SR`, `SC` (the source slices with
    /// the outlines burned in, for viewers that show no SEG).
    #[serde(default = "default_result_objects")]
    pub objects: Vec<ResultObject>,
    /// Send results of negative studies too (no finding, nothing segmented).
    #[serde(default = "default_true")]
    pub negative_studies: bool,
}

/// A kind of object a result is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ResultObject {
    /// Segmentation (the result itself).
    #[serde(rename = "SEG")]
    Seg,
    /// TID 1500 measurement report, referencing the SEG.
    #[serde(rename = "SR")]
    Sr,
    /// Multi-frame true colour Secondary Capture with the outlines burned in.
    #[serde(rename = "SC")]
    Sc,
}

impl ResultObject {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Seg => "SEG",
            Self::Sr => "SR",
            Self::Sc => "SC",
        }
    }
}

fn default_result_objects() -> Vec<ResultObject> {
    vec![ResultObject::Seg, ResultObject::Sr]
}

impl DestinationConfig {
    /// The SCU's TLS settings for this destination, loaded from the files; `None` without TLS.
    pub fn client_tls(&self) -> Result<Option<tls::ClientTls>, tls::TlsError> {
        if !self.tls {
            return Ok(None);
        }
        let Some(ca_file) = &self.ca_file else {
            return Err(tls::TlsError::Config(format!(
                "destination {:?}: tls = true needs ca_file",
                self.name
            )));
        };
        let client = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            _ => None,
        };
        let name = self.server_name.as_deref().unwrap_or(&self.host);
        tls::ClientTls::load(ca_file, client, name).map(Some)
    }
}

/// How the outbox retries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// First wait after a transient failure; it doubles with every further failure...
    #[serde(default = "default_retry_initial")]
    pub retry_initial_seconds: u64,
    /// ...up to this.
    #[serde(default = "default_retry_max")]
    pub retry_max_seconds: u64,
    /// An object still undelivered this long after it was queued is given up (failed).
    #[serde(default = "default_give_up_hours")]
    pub give_up_after_hours: u64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
    /// Longest wait for any answer of the destination during an association.
    #[serde(default = "default_outbox_io_timeout")]
    pub io_timeout_seconds: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            retry_initial_seconds: default_retry_initial(),
            retry_max_seconds: default_retry_max(),
            give_up_after_hours: default_give_up_hours(),
            connect_timeout_seconds: default_connect_timeout(),
            io_timeout_seconds: default_outbox_io_timeout(),
        }
    }
}

fn default_device_serial() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.len() <= 64)
        .unwrap_or_else(|| "radiant-edge".into())
}
fn default_finding_threshold() -> f64 {
    0.5
}
fn default_retry_initial() -> u64 {
    10
}
fn default_retry_max() -> u64 {
    600
}
fn default_give_up_hours() -> u64 {
    72
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_outbox_io_timeout() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Installed model id whose active version runs on completed studies.
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default)]
    pub backend: BackendKind,
    /// ONNX Runtime shared library for the ort backends (else $ORT_DYLIB_PATH).
    #[serde(default)]
    pub onnxruntime_library: Option<PathBuf>,
    /// Jobs waiting at most; a study completing beyond that is recorded as rejected.
    #[serde(default = "default_max_queued_jobs")]
    pub max_queued_jobs: usize,
    /// Starts of one job, or of one labelled case's intake, at most: one found unfinished at
    /// start-up (the appliance stopped during it) runs again until it has started this often,
    /// then fails (the case is refused) with the count.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Resident memory the loaded models may hold together, MiB: a model is loaded by its
    /// first job, and the least recently used others are unloaded while the total is above
    /// this (the one a job needs always stays).
    #[serde(default = "default_model_memory_mb")]
    pub model_memory_mb: u64,
}

fn default_model_memory_mb() -> u64 {
    8192
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            model: default_model(),
            backend: BackendKind::Tract,
            onnxruntime_library: None,
            max_queued_jobs: default_max_queued_jobs(),
            max_attempts: default_max_attempts(),
            model_memory_mb: default_model_memory_mb(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Pure-Rust tract on the CPU.
    #[default]
    Tract,
    /// ONNX Runtime: CUDA when its provider starts, else the CPU (logged).
    Ort,
    /// ONNX Runtime on the CPU.
    OrtCpu,
}

impl BackendKind {
    pub fn choice(self) -> onnx_backends::Choice {
        match self {
            BackendKind::Tract => onnx_backends::Choice::Tract,
            BackendKind::Ort => onnx_backends::Choice::Ort(onnx_backends::OrtDevice::CudaOrCpu),
            BackendKind::OrtCpu => onnx_backends::Choice::Ort(onnx_backends::OrtDevice::Cpu),
        }
    }
}

fn default_model() -> String {
    "head-ct-ich".into()
}
fn default_max_attempts() -> u32 {
    3
}
fn default_max_queued_jobs() -> usize {
    100
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomConfig {
    pub ae_title: String,
    #[serde(default = "default_bind")]
    pub bind: String,
    pub port: u16,
    #[serde(default = "default_max_associations")]
    pub max_associations: usize,
    #[serde(default = "default_max_pdu_length")]
    pub max_pdu_length: u32,
    #[serde(default = "default_study_quiet_seconds")]
    pub study_quiet_seconds: u64,
    #[serde(default = "default_association_request_timeout")]
    pub association_request_timeout_seconds: u64,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u64,
    /// Seconds one DIMSE message (a C-STORE's command and dataset) may take in all.
    #[serde(default = "default_message_timeout")]
    pub message_timeout_seconds: u64,
    /// Connections from addresses of no configured peer waiting for admission, at most.
    #[serde(default = "default_max_unauthenticated")]
    pub max_unauthenticated: usize,
    /// Bytes of datasets being received across all associations, at most.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: u64,
    #[serde(default = "default_max_instance_bytes")]
    pub max_instance_bytes: u64,
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_seconds: u64,
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// The DICOM TLS listener (PS3.15 annex B).
    #[serde(default)]
    pub tls: Option<DicomTlsConfig>,
}

/// `[dicom.tls]`: a TLS listener on `port`, beside the plain one on `dicom.port`, or instead of
/// it when both ports are the same.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomTlsConfig {
    pub port: u16,
    /// PEM certificate chain (ours first) and its private key.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// PEM CA certificate(s): when set, every TLS client must present a certificate issued by
    /// one of them (mutual TLS); needed for `[[dicom.peers]] tls_identity`.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub ae_title: String,
    pub host: Option<String>,
    pub study_quiet_seconds: Option<u64>,
    /// Admit this AE title only over TLS with a client certificate naming this identity
    /// (subject CN or SAN DNS name).
    #[serde(default)]
    pub tls_identity: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default = "default_min_free_mb")]
    pub min_free_mb: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            min_free_mb: default_min_free_mb(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_http_bind")]
    pub bind: String,
    #[serde(default = "default_http_port")]
    pub port: u16,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: default_http_bind(),
            port: default_http_port(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_bind() -> String {
    "0.0.0.0".into()
}
fn default_max_associations() -> usize {
    16
}
fn default_max_pdu_length() -> u32 {
    262_144
}
fn default_study_quiet_seconds() -> u64 {
    60
}
fn default_association_request_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    60
}
fn default_message_timeout() -> u64 {
    600
}
fn default_max_unauthenticated() -> usize {
    4
}
fn default_max_inflight_bytes() -> u64 {
    2 << 30
}
fn default_max_instance_bytes() -> u64 {
    1 << 30
}
fn default_shutdown_grace() -> u64 {
    30
}
fn default_min_free_mb() -> u64 {
    1024
}
fn default_true() -> bool {
    true
}
fn default_http_bind() -> String {
    "127.0.0.1".into()
}
fn default_http_port() -> u16 {
    8480
}
fn default_log_level() -> String {
    "info".into()
}

impl Config {
    /// Load and validate a configuration file; relative paths resolve against its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_toml(&text, &path.display().to_string(), &base)
    }

    /// The embedded default; relative paths resolve against the current directory.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Self::from_toml(EMBEDDED_DEFAULT, "embedded default", Path::new("."))
    }

    pub fn from_toml(text: &str, origin: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        if config.data_dir.is_relative() {
            config.data_dir = base.join(&config.data_dir);
        }
        let resolve_path = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        if let Some(lib) = config.inference.onnxruntime_library.as_mut() {
            resolve_path(lib);
        }
        if let Some(t) = config.dicom.tls.as_mut() {
            resolve_path(&mut t.cert_file);
            resolve_path(&mut t.key_file);
            t.client_ca_file.iter_mut().for_each(resolve_path);
        }
        for d in &mut config.destinations {
            for path in [&mut d.ca_file, &mut d.cert_file, &mut d.key_file] {
                path.iter_mut().for_each(resolve_path);
            }
        }
        if let Some(f) = config.federation.as_mut() {
            f.resolve(base);
        }
        if let Some(u) = config.update.as_mut() {
            u.resolve(base);
        }
        if let Some(c) = config.console.as_mut() {
            c.resolve(base);
        }
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                origin: origin.to_string(),
                problems,
            });
        }
        Ok(config)
    }

    /// What is valid but unsafe, by key: plain DICOM reachable from other machines (images
    /// and patient attributes in clear), every peer admitted on its AE title alone (no host,
    /// no TLS identity), and a destination off this machine reached without TLS.
    /// `check-config` prints these and `serve` logs them at warn; neither refuses.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let bind_is_loopback = self
            .dicom
            .bind
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
        if !bind_is_loopback && self.plain_listener() {
            out.push(Problem {
                key: "dicom.bind".into(),
                message: match &self.dicom.tls {
                    None => format!(
                        "{} is reachable from other machines without TLS: images and patient attributes cross the network in clear (set [dicom.tls])",
                        self.dicom.bind
                    ),
                    Some(t) => format!(
                        "{} is reachable from other machines and port {} is plain DICOM beside TLS on {}: images and patient attributes sent there cross the network in clear (set dicom.tls.port to dicom.port to serve TLS only)",
                        self.dicom.bind, self.dicom.port, t.port
                    ),
                },
            });
        }
        for (i, peer) in self.dicom.peers.iter().enumerate() {
            if peer.host.is_none() && peer.tls_identity.is_none() {
                out.push(Problem {
                    key: format!("dicom.peers[{i}].host"),
                    message: format!(
                        "not set, nor tls_identity: any machine that calls itself {:?} is admitted",
                        peer.ae_title
                    ),
                });
            }
        }
        for (i, dest) in self.destinations.iter().enumerate() {
            let local = dest.host == "localhost"
                || dest.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if dest.objects.contains(&ResultObject::Sr)
                && !dest.objects.contains(&ResultObject::Seg)
            {
                out.push(Problem {
                    key: format!("destinations[{i}].objects"),
                    message: format!(
                        "SR without SEG: the report {:?} gets references a SEG it never receives",
                        dest.name
                    ),
                });
            }
            if !local && !dest.tls {
                out.push(Problem {
                    key: format!("destinations[{i}].tls"),
                    message: format!(
                        "not set: results for {:?} cross the network to {} in clear",
                        dest.name, dest.host
                    ),
                });
            }
        }
        out
    }

    /// Whether the plain (non-TLS) listener is open: no TLS, or TLS on another port.
    pub fn plain_listener(&self) -> bool {
        self.dicom
            .tls
            .as_ref()
            .is_none_or(|t| t.port != self.dicom.port)
    }

    /// Every problem, by key. Host names in `dicom.peers` are resolved here too.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |key: &str, message: String| {
            out.push(Problem {
                key: key.to_string(),
                message,
            })
        };
        if self.data_dir.as_os_str().is_empty() {
            problem("data_dir", "must not be empty".into());
        }
        let d = &self.dicom;
        if let Err(m) = check_ae_title(&d.ae_title) {
            problem("dicom.ae_title", m);
        }
        if d.bind.parse::<IpAddr>().is_err() {
            problem("dicom.bind", format!("{:?} is not an IP address", d.bind));
        }
        if d.port == 0 {
            problem("dicom.port", "must be between 1 and 65535".into());
        }
        if !(1..=1024).contains(&d.max_associations) {
            problem(
                "dicom.max_associations",
                "must be between 1 and 1024".into(),
            );
        }
        if !(4096..=16 << 20).contains(&d.max_pdu_length) {
            problem(
                "dicom.max_pdu_length",
                "must be between 4096 and 16777216 bytes".into(),
            );
        }
        if !(1..=7 * 86_400).contains(&d.study_quiet_seconds) {
            problem(
                "dicom.study_quiet_seconds",
                "must be between 1 and 604800".into(),
            );
        }
        for (key, value) in [
            (
                "dicom.association_request_timeout_seconds",
                d.association_request_timeout_seconds,
            ),
            ("dicom.idle_timeout_seconds", d.idle_timeout_seconds),
            ("dicom.message_timeout_seconds", d.message_timeout_seconds),
        ] {
            if !(1..=3600).contains(&value) {
                problem(key, "must be between 1 and 3600".into());
            }
        }
        if !(1..=1024).contains(&d.max_unauthenticated) {
            problem(
                "dicom.max_unauthenticated",
                "must be between 1 and 1024".into(),
            );
        }
        if d.max_inflight_bytes < d.max_instance_bytes {
            problem(
                "dicom.max_inflight_bytes",
                format!(
                    "must be at least dicom.max_instance_bytes ({}), or an instance of that size can never be received",
                    d.max_instance_bytes
                ),
            );
        }
        if d.shutdown_grace_seconds > 3600 {
            problem(
                "dicom.shutdown_grace_seconds",
                "must be at most 3600".into(),
            );
        }
        if !(1024..=4 << 30).contains(&d.max_instance_bytes) {
            problem(
                "dicom.max_instance_bytes",
                "must be between 1024 and 4294967296".into(),
            );
        }
        if d.peers.is_empty() {
            problem(
                "dicom.peers",
                "no peer is allowed to associate; add at least one [[dicom.peers]]".into(),
            );
        }
        let mut seen = HashSet::new();
        for (i, peer) in d.peers.iter().enumerate() {
            let key = format!("dicom.peers[{i}]");
            if let Err(m) = check_ae_title(&peer.ae_title) {
                problem(&format!("{key}.ae_title"), m);
            } else if !seen.insert(peer.ae_title.clone()) {
                problem(
                    &format!("{key}.ae_title"),
                    format!("{:?} is listed twice", peer.ae_title),
                );
            }
            if let Some(host) = &peer.host {
                if let Err(m) = resolve(host) {
                    problem(&format!("{key}.host"), m);
                }
            }
            if let Some(q) = peer.study_quiet_seconds {
                if !(1..=7 * 86_400).contains(&q) {
                    problem(
                        &format!("{key}.study_quiet_seconds"),
                        "must be between 1 and 604800".into(),
                    );
                }
            }
            if let Some(identity) = &peer.tls_identity {
                if identity.trim().is_empty() || identity.len() > 255 {
                    problem(
                        &format!("{key}.tls_identity"),
                        "must be 1 to 255 characters".into(),
                    );
                } else if d.tls.as_ref().is_none_or(|t| t.client_ca_file.is_none()) {
                    problem(
                        &format!("{key}.tls_identity"),
                        "needs dicom.tls.client_ca_file: without client certificates no identity can match".into(),
                    );
                }
            }
        }
        if let Some(t) = &d.tls {
            if t.port == 0 {
                problem("dicom.tls.port", "must be between 1 and 65535".into());
            }
            for (key, message) in tls_file_problems(t) {
                problem(key, message);
            }
        }
        if self.http.bind.parse::<IpAddr>().is_err() {
            problem(
                "http.bind",
                format!("{:?} is not an IP address", self.http.bind),
            );
        }
        if self.http.enabled && self.http.port == 0 {
            problem("http.port", "must be between 1 and 65535".into());
        }
        if self.http.enabled && self.http.port == d.port && self.http.bind == d.bind {
            problem("http.port", "must differ from dicom.port".into());
        }
        if let Some(t) = &d.tls {
            if self.http.enabled && self.http.port == t.port && self.http.bind == d.bind {
                problem("http.port", "must differ from dicom.tls.port".into());
            }
        }
        for (key, message) in crate::routes::problems(&self.routes) {
            problem(&key, message);
        }
        if !(64..=1 << 20).contains(&self.inference.model_memory_mb) {
            problem(
                "inference.model_memory_mb",
                "must be between 64 and 1048576".into(),
            );
        }
        if !(1..=100).contains(&self.inference.max_attempts) {
            problem("inference.max_attempts", "must be between 1 and 100".into());
        }
        if !(1..=100_000).contains(&self.inference.max_queued_jobs) {
            problem(
                "inference.max_queued_jobs",
                "must be between 1 and 100000".into(),
            );
        }
        if let Some(lib) = &self.inference.onnxruntime_library {
            if self.inference.backend != BackendKind::Tract && !lib.is_file() {
                problem(
                    "inference.onnxruntime_library",
                    format!("{} is not a file", lib.display()),
                );
            }
        }
        let r = &self.results;
        if r.device_serial.trim().is_empty() || r.device_serial.len() > 64 {
            problem("results.device_serial", "must be 1 to 64 characters".into());
        }
        if !(0.0..=1.0).contains(&r.finding_threshold) {
            problem(
                "results.finding_threshold",
                "must be between 0 and 1".into(),
            );
        }
        let mut names = HashSet::new();
        for (i, dest) in self.destinations.iter().enumerate() {
            let key = format!("destinations[{i}]");
            if dest.name.trim().is_empty() {
                problem(&format!("{key}.name"), "must not be empty".into());
            } else if !names.insert(dest.name.clone()) {
                problem(
                    &format!("{key}.name"),
                    format!("{:?} is used twice", dest.name),
                );
            }
            if let Err(m) = check_ae_title(&dest.ae_title) {
                problem(&format!("{key}.ae_title"), m);
            }
            if dest.host.trim().is_empty() {
                problem(&format!("{key}.host"), "must not be empty".into());
            }
            if dest.port == 0 {
                problem(&format!("{key}.port"), "must be between 1 and 65535".into());
            }
            for (j, ae) in dest.for_calling_ae.iter().enumerate() {
                if let Err(m) = check_ae_title(ae) {
                    problem(&format!("{key}.for_calling_ae[{j}]"), m);
                }
            }
            for (field, message) in destination_tls_problems(dest) {
                problem(&format!("{key}.{field}"), message);
            }
            if dest.objects.is_empty() {
                problem(
                    &format!("{key}.objects"),
                    "must name at least one of \"SEG\", \"SR\", \"SC\"".into(),
                );
            }
            for (j, object) in dest.objects.iter().enumerate() {
                if dest.objects[..j].contains(object) {
                    problem(
                        &format!("{key}.objects[{j}]"),
                        format!("{:?} is named twice", object.as_str()),
                    );
                }
            }
        }
        let o = &self.outbox;
        if !(1..=86_400).contains(&o.retry_initial_seconds) {
            problem(
                "outbox.retry_initial_seconds",
                "must be between 1 and 86400".into(),
            );
        }
        if o.retry_max_seconds < o.retry_initial_seconds || o.retry_max_seconds > 86_400 {
            problem(
                "outbox.retry_max_seconds",
                "must be at least retry_initial_seconds and at most 86400".into(),
            );
        }
        if !(1..=24 * 365).contains(&o.give_up_after_hours) {
            problem(
                "outbox.give_up_after_hours",
                "must be between 1 and 8760".into(),
            );
        }
        for (key, value) in [
            ("outbox.connect_timeout_seconds", o.connect_timeout_seconds),
            ("outbox.io_timeout_seconds", o.io_timeout_seconds),
        ] {
            if !(1..=3600).contains(&value) {
                problem(key, "must be between 1 and 3600".into());
            }
        }
        let l = &self.learning;
        for (key, value, range) in [
            ("learning.min_new_cases", l.min_new_cases, 1..=100_000),
            ("learning.holdout_every", l.holdout_every, 2..=100),
            (
                "learning.max_training_cases",
                l.max_training_cases,
                1..=10_000,
            ),
            (
                "learning.max_holdout_cases",
                l.max_holdout_cases,
                1..=10_000,
            ),
            (
                "learning.min_holdout_cases",
                l.min_holdout_cases,
                1..=10_000,
            ),
            ("learning.epochs", l.epochs, 1..=1000),
            (
                "learning.pixels_per_class",
                l.pixels_per_class,
                1..=1_000_000,
            ),
        ] {
            if !range.contains(&value) {
                problem(
                    key,
                    format!("must be between {} and {}", range.start(), range.end()),
                );
            }
        }
        if l.interval_hours > 24 * 365 {
            problem("learning.interval_hours", "must be at most 8760".into());
        }
        for (key, value, max) in [
            ("learning.min_local_gain", l.min_local_gain, 1.0),
            ("learning.reference_margin", l.reference_margin, 1.0),
            ("learning.local_margin", l.local_margin, 1.0),
            ("learning.learning_rate", l.learning_rate, 10.0),
            ("learning.fedprox_mu", l.fedprox_mu, 1e6),
        ] {
            if !(value.is_finite() && (0.0..=max).contains(&value)) {
                problem(key, format!("must be a number between 0 and {max}"));
            }
        }
        if !(l.gate_confidence.is_finite() && (0.5..=0.999).contains(&l.gate_confidence)) {
            problem(
                "learning.gate_confidence",
                "must be a number between 0.5 and 0.999".into(),
            );
        }
        if l.min_holdout_cases > l.max_holdout_cases {
            problem(
                "learning.min_holdout_cases",
                format!(
                    "must be at most max_holdout_cases ({}): the gate judges on no more",
                    l.max_holdout_cases
                ),
            );
        }
        if l.learning_rate == 0.0 {
            problem("learning.learning_rate", "must be above 0".into());
        }
        if l.cuda && !cfg!(feature = "cuda") {
            problem(
                "learning.cuda",
                "this build has no CUDA support (cargo build --features cuda)".into(),
            );
        }
        if l.class_weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            problem(
                "learning.class_weights",
                "must be finite and not negative".into(),
            );
        }
        let r = &self.retention;
        if !(r.max_age_hours.is_finite() && (0.0..=24.0 * 3650.0).contains(&r.max_age_hours)) {
            problem(
                "retention.max_age_hours",
                "must be a number between 0 and 87600".into(),
            );
        }
        let percent = |v: f64| v.is_finite() && (1.0..=99.0).contains(&v);
        if !percent(r.high_watermark_percent) {
            problem(
                "retention.high_watermark_percent",
                "must be a number between 1 and 99".into(),
            );
        }
        if !percent(r.low_watermark_percent) {
            problem(
                "retention.low_watermark_percent",
                "must be a number between 1 and 99".into(),
            );
        } else if percent(r.high_watermark_percent)
            && r.low_watermark_percent >= r.high_watermark_percent
        {
            problem(
                "retention.low_watermark_percent",
                format!(
                    "must be below retention.high_watermark_percent ({})",
                    r.high_watermark_percent
                ),
            );
        }
        if r.grace_seconds > 7 * 86_400 {
            problem("retention.grace_seconds", "must be at most 604800".into());
        }
        for (key, reason) in self.federation.iter().flat_map(|f| f.problems()) {
            problem(&key, reason);
        }
        for (key, reason) in self.update.iter().flat_map(|u| u.problems()) {
            problem(&key, reason);
        }
        if let Some(syslog) = &self.audit.syslog {
            if self.audit.syslog_addr().is_none() {
                problem(
                    "audit.syslog",
                    format!("{syslog:?} is not a host:port that resolves"),
                );
            }
        }
        for (key, reason) in self.console.iter().flat_map(|c| c.problems(self)) {
            problem(&key, reason);
        }
        if !(1..=86_400).contains(&r.interval_seconds) {
            problem(
                "retention.interval_seconds",
                "must be between 1 and 86400".into(),
            );
        }
        // The watermark must be reached before the ingest floor; only a data folder that
        // exists has a file system to measure (`serve` checks again once it made it).
        if self.data_dir.is_dir() {
            if let Some(p) = self.retention_floor_problem() {
                problem(&p.key, p.message);
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            problem(
                "log.level",
                format!("{:?} is not a log level or filter", self.log.level),
            );
        }
        out
    }

    /// When retention is on and the file system holding `data_dir` is measured: a problem
    /// naming `retention.high_watermark_percent` if the free space left at that watermark
    /// would be below the ingest floor (`storage.min_free_mb`), so ingest would refuse
    /// studies before retention starts to purge. `None` when fine or not measurable.
    pub fn retention_floor_problem(&self) -> Option<Problem> {
        if !self.retention.enabled {
            return None;
        }
        let usage = pacs_bridge::store::fs_usage(&self.data_dir).ok()?;
        self.retention_floor_problem_on(usage.usable_bytes())
    }

    /// [`Config::retention_floor_problem`] for a file system of `usable_bytes`.
    pub fn retention_floor_problem_on(&self, usable_bytes: u64) -> Option<Problem> {
        let high = self.retention.high_watermark_percent;
        let free_at_high = usable_bytes as f64 * (100.0 - high) / 100.0;
        let floor = self.storage.min_free_mb.saturating_mul(1 << 20);
        (free_at_high <= floor as f64).then(|| Problem {
            key: "retention.high_watermark_percent".into(),
            message: format!(
                "at {high}% used the file system of data_dir ({} MiB usable) has {} MiB free, \
                 not above storage.min_free_mb ({} MiB): ingest would refuse studies before \
                 retention purges any; lower the watermark or the floor",
                usable_bytes >> 20,
                (free_at_high as u64) >> 20,
                self.storage.min_free_mb
            ),
        })
    }

    /// The SCP's view of this configuration (peer host names resolved; one that does not
    /// resolve is logged at error and matches no address; TLS files loaded, an error naming
    /// the key when they no longer load).
    pub fn scp(&self) -> Result<ScpConfig, ConfigError> {
        let d = &self.dicom;
        let ip: IpAddr = d.bind.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let tls = match &d.tls {
            None => None,
            Some(t) => {
                let config =
                    tls::server_config(&t.cert_file, &t.key_file, t.client_ca_file.as_deref())
                        .map_err(|e| ConfigError::Invalid {
                            origin: "configuration".into(),
                            problems: vec![Problem {
                                key: "dicom.tls".into(),
                                message: e.to_string(),
                            }],
                        })?;
                Some(TlsListener {
                    bind: SocketAddr::new(ip, t.port),
                    config,
                })
            }
        };
        Ok(ScpConfig {
            ae_title: d.ae_title.clone(),
            bind: self.plain_listener().then(|| SocketAddr::new(ip, d.port)),
            tls,
            max_associations: d.max_associations,
            max_pdu_length: d.max_pdu_length,
            peers: d
                .peers
                .iter()
                .map(|p| Peer {
                    ae_title: p.ae_title.clone(),
                    addresses: p.host.as_deref().map(|host| {
                        // Validation resolved it; a name that stopped resolving since locks the
                        // peer out (fail closed), and says so.
                        resolve(host).unwrap_or_else(|reason| {
                            tracing::error!(calling_ae = %p.ae_title, %reason, "peer host does not resolve: its associations are refused until it does and the appliance restarts");
                            Vec::new()
                        })
                    }),
                    tls_identity: p.tls_identity.clone(),
                })
                .collect(),
            association_request_timeout: Duration::from_secs(d.association_request_timeout_seconds),
            idle_timeout: Duration::from_secs(d.idle_timeout_seconds),
            message_timeout: Duration::from_secs(d.message_timeout_seconds),
            max_unauthenticated: d.max_unauthenticated,
            max_inflight_bytes: usize::try_from(d.max_inflight_bytes).unwrap_or(usize::MAX),
            max_instance_bytes: usize::try_from(d.max_instance_bytes).unwrap_or(usize::MAX),
            min_free_bytes: self.storage.min_free_mb.saturating_mul(1 << 20),
            shutdown_grace: Duration::from_secs(d.shutdown_grace_seconds),
        })
    }

    /// The destinations that get the results of a study from `calling_ae`: those that name it,
    /// or else the defaults (those that name no calling AE).
    /// Whether a destination of a study from `calling_ae` will be sent `object` of a result
    /// (negative or not): an object nobody gets is not written.
    pub fn sends(&self, calling_ae: &str, object: ResultObject, negative: bool) -> bool {
        self.destinations_for(calling_ae)
            .iter()
            .any(|d| d.objects.contains(&object) && (d.negative_studies || !negative))
    }

    pub fn destinations_for(&self, calling_ae: &str) -> Vec<&DestinationConfig> {
        let named: Vec<_> = self
            .destinations
            .iter()
            .filter(|d| d.for_calling_ae.iter().any(|a| a == calling_ae))
            .collect();
        if !named.is_empty() {
            return named;
        }
        self.destinations
            .iter()
            .filter(|d| d.for_calling_ae.is_empty())
            .collect()
    }

    /// Quiet period per calling AE, for those peers that override the default.
    pub fn quiet_by_ae(&self) -> HashMap<String, Duration> {
        self.dicom
            .peers
            .iter()
            .filter_map(|p| {
                p.study_quiet_seconds
                    .map(|q| (p.ae_title.clone(), Duration::from_secs(q)))
            })
            .collect()
    }
}

/// PS3.5 table 6.2-1 (AE): up to 16 characters of the default repertoire, no backslash or
/// control characters, not only spaces. Leading and trailing spaces are not significant, so we
/// refuse them rather than guess.
fn check_ae_title(title: &str) -> Result<(), String> {
    if title.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if title.len() > 16 {
        return Err(format!("{title:?} is longer than 16 characters"));
    }
    if title != title.trim() {
        return Err(format!("{title:?} has leading or trailing spaces"));
    }
    if !title
        .chars()
        .all(|c| c.is_ascii() && !c.is_ascii_control() && c != '\\')
    {
        return Err(format!(
            "{title:?} may only hold printable ASCII without backslash"
        ));
    }
    Ok(())
}

/// `[dicom.tls]` files that do not load, by key: each file on its own, then the certificate
/// and key together (a key that does not match the certificate).
fn tls_file_problems(t: &DicomTlsConfig) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Err(e) = tls::load_certificates(&t.cert_file) {
        out.push(("dicom.tls.cert_file", e.to_string()));
    }
    if let Err(e) = tls::load_private_key(&t.key_file) {
        out.push(("dicom.tls.key_file", e.to_string()));
    }
    if let Some(ca) = &t.client_ca_file {
        if let Err(e) = tls::load_roots(ca) {
            out.push(("dicom.tls.client_ca_file", e.to_string()));
        }
    }
    if out.is_empty() {
        if let Err(e) = tls::server_config(&t.cert_file, &t.key_file, t.client_ca_file.as_deref()) {
            out.push(("dicom.tls.key_file", e.to_string()));
        }
    }
    out
}

/// A destination's TLS settings that are missing, inconsistent or do not load, by field.
fn destination_tls_problems(dest: &DestinationConfig) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !dest.tls {
        let set = [
            ("ca_file", dest.ca_file.is_some()),
            ("cert_file", dest.cert_file.is_some()),
            ("key_file", dest.key_file.is_some()),
            ("server_name", dest.server_name.is_some()),
        ];
        for (field, is_set) in set {
            if is_set {
                out.push((field, "set, but tls is not true".to_string()));
            }
        }
        return out;
    }
    match &dest.ca_file {
        None => out.push((
            "ca_file",
            "required with tls = true (the CA the destination's certificate chains to)".into(),
        )),
        Some(ca) => {
            if let Err(e) = tls::load_roots(ca) {
                out.push(("ca_file", e.to_string()));
            }
        }
    }
    match (&dest.cert_file, &dest.key_file) {
        (Some(cert), Some(key)) => {
            if let Err(e) = tls::load_certificates(cert) {
                out.push(("cert_file", e.to_string()));
            }
            if let Err(e) = tls::load_private_key(key) {
                out.push(("key_file", e.to_string()));
            }
        }
        (Some(_), None) => out.push(("key_file", "required with cert_file".into())),
        (None, Some(_)) => out.push(("cert_file", "required with key_file".into())),
        (None, None) => {}
    }
    if out.is_empty() {
        if let Err(e) = dest.client_tls() {
            let field = match e {
                tls::TlsError::ServerName { .. } => "server_name",
                _ => "key_file",
            };
            out.push((field, e.to_string()));
        }
    }
    out
}

fn resolve(host: &str) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let addrs: Vec<IpAddr> = (host, 0)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .map(|a| a.ip())
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host:?} resolves to no address"));
    }
    Ok(addrs)
}

/// `[audit]`: forwarding of the audit trail.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `host:port` of a syslog server taking RFC 5424 over UDP; none: the trail stays on disk.
    #[serde(default)]
    pub syslog: Option<String>,
}

impl AuditConfig {
    /// The syslog server's address, resolved; `None` when not set or not resolvable (the
    /// configuration check names the latter).
    pub fn syslog_addr(&self) -> Option<SocketAddr> {
        self.syslog
            .as_deref()
            .and_then(|s| s.to_socket_addrs().ok())
            .and_then(|mut addrs| addrs.next())
    }
}

/// `[console]`: the web console.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Address the console listens on.
    #[serde(default = "default_console_bind")]
    pub bind: String,
    #[serde(default = "default_console_port")]
    pub port: u16,
    /// The appliance's certificate chain (PEM, end entity first) and its private key.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Serve plain HTTP, allowed only when `bind` is a loopback address (tests, or a reverse
    /// proxy on this machine that terminates TLS).
    #[serde(default)]
    pub insecure_loopback_http: bool,
    /// A session ends after this many seconds without a request...
    #[serde(default = "default_console_idle")]
    pub session_idle_seconds: u64,
    /// ...and this many hours after its login, however busy.
    #[serde(default = "default_console_max_hours")]
    pub session_max_hours: u64,
    /// Failed logins of one user name before further attempts are refused for
    /// `lockout_seconds` (from one client address: four times as many).
    #[serde(default = "default_console_max_failed")]
    pub max_failed_logins: u32,
    #[serde(default = "default_console_lockout")]
    pub lockout_seconds: u64,
    /// Show study and series UIDs and the patient ID to admins.
    #[serde(default)]
    pub show_identifiers: bool,
    /// Requests served at once.
    #[serde(default = "default_console_workers")]
    pub workers: usize,
}

fn default_console_bind() -> String {
    "127.0.0.1".into()
}
fn default_console_port() -> u16 {
    8443
}
fn default_console_idle() -> u64 {
    1800
}
fn default_console_max_hours() -> u64 {
    12
}
fn default_console_max_failed() -> u32 {
    5
}
fn default_console_lockout() -> u64 {
    900
}
fn default_console_workers() -> usize {
    4
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: false,
            bind: default_console_bind(),
            port: default_console_port(),
            cert_file: None,
            key_file: None,
            insecure_loopback_http: false,
            session_idle_seconds: default_console_idle(),
            session_max_hours: default_console_max_hours(),
            max_failed_logins: default_console_max_failed(),
            lockout_seconds: default_console_lockout(),
            show_identifiers: false,
            workers: default_console_workers(),
        }
    }
}

impl ConsoleConfig {
    /// Resolve relative certificate and key paths against `base` (the configuration's folder).
    pub fn resolve(&mut self, base: &Path) {
        for path in [&mut self.cert_file, &mut self.key_file]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    pub fn bind_ip(&self) -> Option<IpAddr> {
        self.bind.parse().ok()
    }

    /// Every problem, by key (`console.port`); `config` is the whole configuration, for the
    /// ports the console must not share.
    pub fn problems(&self, config: &Config) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut problem =
            |key: &str, message: String| out.push((format!("console.{key}"), message));
        let ip = self.bind_ip();
        if ip.is_none() {
            problem("bind", format!("{:?} is not an IP address", self.bind));
        }
        if self.port == 0 {
            problem("port", "must be between 1 and 65535".into());
        }
        if self.enabled {
            let same_address = |other: &str| other == self.bind;
            if self.port == config.dicom.port && same_address(&config.dicom.bind) {
                problem("port", "must differ from dicom.port".into());
            }
            if let Some(t) = &config.dicom.tls {
                if self.port == t.port && same_address(&config.dicom.bind) {
                    problem("port", "must differ from dicom.tls.port".into());
                }
            }
            if config.http.enabled
                && self.port == config.http.port
                && same_address(&config.http.bind)
            {
                problem("port", "must differ from http.port".into());
            }
        }
        let loopback = ip.is_some_and(|ip| ip.is_loopback());
        if self.insecure_loopback_http && !loopback {
            problem(
                "insecure_loopback_http",
                format!(
                    "allowed only on a loopback bind, not {}: the console would send passwords \
                     and session cookies in clear",
                    self.bind
                ),
            );
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                if self.enabled {
                    if let Err(e) = pacs_bridge::tls::load_certificates(cert) {
                        problem("cert_file", e.to_string());
                    } else if let Err(e) = pacs_bridge::tls::load_private_key(key) {
                        problem("key_file", e.to_string());
                    } else if let Err(e) = pacs_bridge::tls::server_config(cert, key, None) {
                        problem("key_file", e.to_string());
                    }
                }
            }
            (Some(_), None) => problem("key_file", "needed with cert_file".into()),
            (None, Some(_)) => problem("cert_file", "needed with key_file".into()),
            (None, None) => {
                if self.enabled && !(self.insecure_loopback_http && loopback) {
                    problem(
                        "cert_file",
                        "needed: the console serves HTTPS only (plain HTTP only on a loopback \
                         bind with insecure_loopback_http = true)"
                            .into(),
                    );
                }
            }
        }
        if !(5..=86_400).contains(&self.session_idle_seconds) {
            problem("session_idle_seconds", "must be between 5 and 86400".into());
        }
        if !(1..=24 * 7).contains(&self.session_max_hours) {
            problem("session_max_hours", "must be between 1 and 168".into());
        }
        if !(1..=1000).contains(&self.max_failed_logins) {
            problem("max_failed_logins", "must be between 1 and 1000".into());
        }
        if !(1..=86_400).contains(&self.lockout_seconds) {
            problem("lockout_seconds", "must be between 1 and 86400".into());
        }
        if !(1..=64).contains(&self.workers) {
            problem("workers", "must be between 1 and 64".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_loads_and_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/etc/appliance.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.dicom.ae_title, "RADIANT");
        assert_eq!(config.dicom.port, 11112);
        assert_eq!(config.dicom.bind, "127.0.0.1");
        // Safe as shipped: loopback only, and every peer bound to a host.
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());
        assert!(config.dicom.peers.iter().any(|p| p.ae_title == "STORESCU"));
        assert_eq!(config.http.bind, "127.0.0.1");
        assert_eq!(config.scp().unwrap().min_free_bytes, 1024 << 20);
        assert!(config.retention.enabled);
        assert_eq!(config.retention.max_age_hours, 168.0);
        assert_eq!(
            (
                config.retention.high_watermark_percent,
                config.retention.low_watermark_percent
            ),
            (80.0, 70.0)
        );
        assert!(Config::embedded_default().is_ok());
    }

    #[test]
    fn problems_are_reported_by_key_all_at_once() {
        let text = r#"
            data_dir = "data"
            [dicom]
            ae_title = "A_TITLE_THAT_IS_TOO_LONG"
            port = 0
            max_pdu_length = 10
            [[dicom.peers]]
            ae_title = "X"
            [[dicom.peers]]
            ae_title = "X"
            host = "no-such-host.invalid"
        "#;
        let err = Config::from_toml(text, "test", Path::new("/etc")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "dicom.ae_title",
                "dicom.port",
                "dicom.max_pdu_length",
                "dicom.peers[1].ae_title",
                "dicom.peers[1].host"
            ]
        );
    }

    #[test]
    fn results_go_to_the_destinations_that_name_the_sender_or_else_to_the_defaults() {
        let text = r#"
            data_dir = "d"
            [dicom]
            ae_title = "A"
            port = 104
            [[dicom.peers]]
            ae_title = "B"
            [[destinations]]
            name = "main"
            ae_title = "PACS"
            host = "127.0.0.1"
            port = 4242
            [[destinations]]
            name = "research"
            ae_title = "RESEARCH"
            host = "127.0.0.1"
            port = 4243
            for_calling_ae = ["CT1"]
        "#;
        let config = Config::from_toml(text, "test", Path::new(".")).unwrap();
        let names = |ae: &str| -> Vec<String> {
            config
                .destinations_for(ae)
                .iter()
                .map(|d| d.name.clone())
                .collect()
        };
        assert_eq!(names("CT1"), ["research"]);
        assert_eq!(names("MR7"), ["main"]);
    }

    #[test]
    fn bad_learning_settings_are_named() {
        let text = r#"
            data_dir = "d"
            [dicom]
            ae_title = "A"
            port = 104
            [[dicom.peers]]
            ae_title = "B"
            [learning]
            min_new_cases = 0
            holdout_every = 1
            epochs = 0
            reference_margin = -0.1
            learning_rate = 0.0
            fedprox_mu = nan
            class_weights = [1.0, -1.0]
            cuda = true
            min_holdout_cases = 20
            gate_confidence = 0.3
            local_margin = 2.0
        "#;
        let err = Config::from_toml(text, "test", Path::new(".")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        let mut keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        keys.dedup();
        let mut expected = vec![
            "learning.min_new_cases",
            "learning.holdout_every",
            "learning.epochs",
            "learning.reference_margin",
            "learning.local_margin",
            "learning.fedprox_mu",
            "learning.gate_confidence",
            "learning.min_holdout_cases",
            "learning.learning_rate",
        ];
        // A build with the feature may fine-tune on CUDA; one without names the key.
        if !cfg!(feature = "cuda") {
            expected.push("learning.cuda");
        }
        expected.push("learning.class_weights");
        assert_eq!(keys, expected, "{problems:?}");
        // The defaults are valid.
        let ok = "data_dir = \"d\"\n[dicom]\nae_title = \"A\"\nport = 104\n[[dicom.peers]]\nae_title = \"B\"\n[learning]\n";
        let config = Config::from_toml(ok, "test", Path::new(".")).unwrap();
        assert_eq!(config.learning.min_new_cases, 8);
        assert_eq!(config.learning.fedprox_mu, 1.0);
        assert_eq!(config.learning.min_holdout_cases, 5);
        assert_eq!(config.learning.gate_confidence, 0.95);
    }

    #[test]
    fn bad_retention_settings_are_named() {
        let text = r#"
            data_dir = "d"
            [dicom]
            ae_title = "A"
            port = 104
            [[dicom.peers]]
            ae_title = "B"
            [retention]
            max_age_hours = -1.0
            high_watermark_percent = 70
            low_watermark_percent = 80
            grace_seconds = 9999999
            interval_seconds = 0
        "#;
        let err = Config::from_toml(text, "test", Path::new(".")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "retention.max_age_hours",
                "retention.low_watermark_percent",
                "retention.grace_seconds",
                "retention.interval_seconds"
            ],
            "{problems:?}"
        );
        let ok = "data_dir = \"d\"\n[dicom]\nae_title = \"A\"\nport = 104\n[[dicom.peers]]\nae_title = \"B\"\n";
        let config = Config::from_toml(ok, "test", Path::new(".")).unwrap();
        assert!(config.retention.enabled);
        assert!(config.retention.keep_pixel_data_of_cases);
        assert!(config.retention.low_watermark_percent < config.retention.high_watermark_percent);
    }

    #[test]
    fn a_high_watermark_past_the_ingest_floor_is_named() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/etc/appliance.toml");
        let config = Config::load(&path).unwrap();
        // 1 GiB floor: on a 4 GiB disk, 80% used leaves 0.8 GiB free, below it.
        let problem = config
            .retention_floor_problem_on(4 << 30)
            .expect("a problem");
        assert_eq!(problem.key, "retention.high_watermark_percent");
        assert!(problem.message.contains("storage.min_free_mb"), "{problem}");
        // On 100 GiB, 80% leaves 20 GiB: fine.
        assert_eq!(config.retention_floor_problem_on(100 << 30), None);
        // A data folder on a file system measured at load: a tiny floor passes.
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "data_dir = {:?}\n[dicom]\nae_title = \"A\"\nport = 104\n[[dicom.peers]]\nae_title = \"B\"\n[storage]\nmin_free_mb = 1\n",
            dir.path()
        );
        assert!(Config::from_toml(&text, "test", Path::new(".")).is_ok());
    }

    #[test]
    fn bad_destinations_and_outbox_settings_are_named() {
        let text = r#"
            data_dir = "d"
            [dicom]
            ae_title = "A"
            port = 104
            [[dicom.peers]]
            ae_title = "B"
            [[destinations]]
            name = "x"
            ae_title = "WAY_TOO_LONG_AE_TITLE"
            host = ""
            port = 0
            [[destinations]]
            name = "x"
            ae_title = "P"
            host = "h"
            port = 1
            [outbox]
            retry_initial_seconds = 60
            retry_max_seconds = 10
        "#;
        let err = Config::from_toml(text, "test", Path::new(".")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "destinations[0].ae_title",
                "destinations[0].host",
                "destinations[0].port",
                "destinations[1].name",
                "outbox.retry_max_seconds"
            ]
        );
    }

    #[test]
    fn each_destination_names_its_objects_once_and_an_sr_without_its_seg_is_warned_of() {
        let base = "data_dir = \"d\"\n[dicom]\nae_title = \"X\"\nport = 104\n\
                    [[dicom.peers]]\nae_title = \"P\"\nhost = \"127.0.0.1\"\n";
        let dest = |objects: &str| {
            format!(
                "{base}[[destinations]]\nname = \"p\"\nae_title = \"P\"\nhost = \"127.0.0.1\"\n\
                 port = 1\nobjects = {objects}\n"
            )
        };
        let keys = |objects: &str| match Config::from_toml(&dest(objects), "t", Path::new(".")) {
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.into_iter().map(|p| p.key).collect::<Vec<_>>()
            }
            other => panic!("expected Invalid, got {other:?}"),
        };
        assert_eq!(keys("[]"), ["destinations[0].objects"]);
        assert_eq!(keys("[\"SC\", \"SC\"]"), ["destinations[0].objects[1]"]);
        let err = Config::from_toml(&dest("[\"PNG\"]"), "t", Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("PNG"), "{err}");

        let sr_only = Config::from_toml(&dest("[\"SR\"]"), "t", Path::new(".")).unwrap();
        let warned: Vec<_> = sr_only.warnings().into_iter().map(|p| p.key).collect();
        assert!(
            warned.contains(&"destinations[0].objects".to_string()),
            "{warned:?}"
        );
        let sc = Config::from_toml(&dest("[\"SEG\", \"SR\"]"), "t", Path::new(".")).unwrap();
        let warned: Vec<_> = sc.warnings().into_iter().map(|p| p.key).collect();
        assert!(
            !warned.contains(&"destinations[0].objects".to_string()),
            "{warned:?}"
        );
        let sc = Config::from_toml(&dest("[\"SC\"]"), "t", Path::new(".")).unwrap();
        assert!(sc.sends("ANY", ResultObject::Sc, true));
        assert!(!sc.sends("ANY", ResultObject::Seg, false));
        // The default: SEG and SR, negative studies included.
        let default = Config::from_toml(
            &format!("{base}[[destinations]]\nname = \"p\"\nae_title = \"P\"\nhost = \"127.0.0.1\"\nport = 1\n"),
            "t",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(
            default.destinations[0].objects,
            [ResultObject::Seg, ResultObject::Sr]
        );
        assert!(default.sends("ANY", ResultObject::Sr, true));
        assert!(!default.sends("ANY", ResultObject::Sc, false));
    }

    #[test]
    fn an_audit_syslog_that_does_not_resolve_is_named_by_key() {
        let base = "data_dir = \"d\"\n[dicom]\nae_title = \"X\"\nport = 104\n\
                    [[dicom.peers]]\nae_title = \"P\"\nhost = \"127.0.0.1\"\n";
        let bad = format!("{base}[audit]\nsyslog = \"no port here\"\n");
        match Config::from_toml(&bad, "t", Path::new(".")) {
            Err(ConfigError::Invalid { problems, .. }) => {
                let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
                assert_eq!(keys, ["audit.syslog"]);
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        let good = format!("{base}[audit]\nsyslog = \"127.0.0.1:514\"\n");
        let config = Config::from_toml(&good, "t", Path::new(".")).unwrap();
        assert_eq!(
            config.audit.syslog_addr(),
            Some(([127, 0, 0, 1], 514).into())
        );
    }

    #[test]
    fn a_misspelt_key_is_named() {
        let text = "data_dir = \"d\"\n[dicom]\nae_titel = \"X\"\nport = 104\n";
        let err = Config::from_toml(text, "test", Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("ae_titel"), "{err}");
    }

    #[test]
    fn a_relative_data_dir_resolves_against_the_config_folder() {
        let text = "data_dir = \"spool\"\n[dicom]\nae_title = \"A\"\nport = 104\n[[dicom.peers]]\nae_title = \"B\"\n";
        let config = Config::from_toml(text, "test", Path::new("/etc/radiant")).unwrap();
        assert_eq!(config.data_dir, Path::new("/etc/radiant/spool"));
    }

    #[test]
    fn an_open_bind_and_a_peer_without_a_host_are_warnings_naming_their_keys() {
        let mut config = Config::embedded_default().unwrap();
        config.dicom.bind = "0.0.0.0".into();
        config.dicom.peers[1].host = None;
        let warnings: Vec<String> = config.warnings().iter().map(|w| w.to_string()).collect();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("dicom.bind: 0.0.0.0 is reachable"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].starts_with("dicom.peers[1].host: not set"),
            "{warnings:?}"
        );
        assert!(config.problems().is_empty(), "warnings are not problems");
    }
    /// The example with its commented TLS settings switched on: the lines a reader would
    /// uncomment.
    fn example_with_tls() -> String {
        let keys = [
            "[dicom.tls]",
            "port = ",
            "cert_file = ",
            "key_file = ",
            "client_ca_file = ",
            "tls_identity = ",
            "tls = ",
            "ca_file = ",
            "server_name = ",
        ];
        EMBEDDED_DEFAULT
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if keys.iter().any(|k| rest.starts_with(k)) => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_example_documents_real_tls_keys_and_files_that_do_not_load_are_named_by_key() {
        let text = example_with_tls();
        assert!(text.contains("\n[dicom.tls]\n"), "no [dicom.tls] example");
        // Every documented key parses (unknown keys are refused); the example's files are not
        // on this machine, and each is named by its key.
        let err = Config::from_toml(&text, "test", Path::new("/nonexistent")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "dicom.tls.cert_file",
                "dicom.tls.key_file",
                "dicom.tls.client_ca_file",
                "destinations[0].ca_file",
                "destinations[0].cert_file",
                "destinations[0].key_file",
            ],
            "{problems:?}"
        );
        assert!(
            problems[0].message.contains("appliance.crt"),
            "{problems:?}"
        );
    }

    #[test]
    fn tls_settings_that_cannot_work_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let text = format!(
            r#"
            data_dir = "d"
            [dicom]
            ae_title = "A"
            port = 104
            [[dicom.peers]]
            ae_title = "B"
            tls_identity = "b.example"
            [[destinations]]
            name = "plain-with-ca"
            ae_title = "P"
            host = "127.0.0.1"
            port = 1
            ca_file = "garbage.pem"
            [[destinations]]
            name = "tls-without-ca"
            ae_title = "P"
            host = "127.0.0.1"
            port = 1
            tls = true
            [[destinations]]
            name = "half-a-client-certificate"
            ae_title = "P"
            host = "127.0.0.1"
            port = 1
            tls = true
            ca_file = "{garbage}"
            cert_file = "garbage.pem"
            "#,
            garbage = garbage.display()
        );
        let err = Config::from_toml(&text, "test", dir.path()).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "dicom.peers[0].tls_identity",
                "destinations[0].ca_file",
                "destinations[1].ca_file",
                "destinations[2].ca_file",
                "destinations[2].key_file",
            ],
            "{problems:?}"
        );
        assert!(
            problems[0].message.contains("client_ca_file"),
            "{problems:?}"
        );
        assert!(
            problems[3].message.contains("no certificate"),
            "{problems:?}"
        );

        // [dicom.tls] with files that are not PEM certificates and keys: each key named.
        let text = String::from(
            "data_dir = \"d\"\n[dicom]\nae_title = \"A\"\nport = 104\n[[dicom.peers]]\nae_title = \"B\"\n[dicom.tls]\nport = 0\ncert_file = \"garbage.pem\"\nkey_file = \"garbage.pem\"\nclient_ca_file = \"missing.pem\"\n"
        );
        let err = Config::from_toml(&text, "test", dir.path()).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "dicom.tls.port",
                "dicom.tls.cert_file",
                "dicom.tls.key_file",
                "dicom.tls.client_ca_file"
            ],
            "{problems:?}"
        );
        assert!(problems[3].message.contains("missing.pem"), "{problems:?}");
    }

    #[test]
    fn plain_dicom_off_loopback_peers_admitted_on_their_title_alone_and_plain_remote_destinations_are_warned_about(
    ) {
        let mut config = Config::embedded_default().unwrap();
        config.dicom.bind = "0.0.0.0".into();
        let tls = DicomTlsConfig {
            port: config.dicom.port,
            cert_file: "c".into(),
            key_file: "k".into(),
            client_ca_file: Some("ca".into()),
        };
        // TLS instead of plain: no warning about the bind.
        config.dicom.tls = Some(tls.clone());
        assert!(!config.plain_listener());
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());
        // TLS beside plain: the plain port is still in clear.
        config.dicom.tls = Some(DicomTlsConfig { port: 2762, ..tls });
        assert!(config.plain_listener());
        let warnings: Vec<String> = config.warnings().iter().map(|w| w.to_string()).collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("plain DICOM beside TLS"),
            "{warnings:?}"
        );
        // A peer bound to a certificate needs no host; one bound to neither is warned about.
        config.dicom.peers[0].host = None;
        config.dicom.peers[0].tls_identity = Some("pacs.example".into());
        config.dicom.peers[1].host = None;
        config.destinations[0].host = "10.1.2.3".into();
        let warnings: Vec<String> = config.warnings().iter().map(|w| w.to_string()).collect();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings[1].starts_with("dicom.peers[1].host: not set, nor tls_identity"),
            "{warnings:?}"
        );
        assert!(
            warnings[2].starts_with("destinations[0].tls: not set"),
            "{warnings:?}"
        );
        config.destinations[0].tls = true;
        assert_eq!(config.warnings().len(), 2);
    }
}
