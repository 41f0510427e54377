//! The server's configuration file (`federation serve --config FILE`), TOML, every field
//! checked with the key named in the error.

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The federation's name (a topic level).
    pub federation: String,
    /// `mqtts://host:port`.
    pub broker: String,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The ed25519 key (PKCS#8 PEM) that signs global heads.
    pub signing_key_file: PathBuf,
    /// Rounds, updates and global heads (SQLite and blobs).
    pub data_dir: PathBuf,
    /// The model whose trainable tensors are federated.
    pub model: String,
    /// Its first global head (safetensors of F32 tensors): global version 1.
    pub initial_head: PathBuf,
    /// Device ids enrolled in the federation.
    pub enrolled: Vec<String>,
    /// Accepted updates a round needs to aggregate.
    pub quorum: u32,
    #[serde(default = "default_round_seconds")]
    pub round_seconds: u64,
    /// `fedavg`, `fedadam`, `trimmed_mean` or `median`.
    #[serde(default = "default_aggregator")]
    pub aggregator: String,
    /// L2 bound of one device's update (clipped on the device; bounded again here).
    #[serde(default = "default_clip_norm")]
    pub clip_norm: f64,
    /// Gaussian noise on the device, as a multiple of `clip_norm` (0: none).
    #[serde(default)]
    pub noise_multiplier: f64,
    /// Secure aggregation (SecAgg+): the server sees only the sum of the devices' deltas.
    /// Needs an aggregator of the sum (`fedavg`, weighted by `secure_case_cap`-bounded case
    /// counts that travel masked too, or `fedadam`).
    #[serde(default = "default_true")]
    pub secure_aggregation: bool,
    /// Under secure aggregation, FedAvg weights a device by `min(cases, secure_case_cap)`: the
    /// weight travels masked with the delta, so its scale must be fixed for the round.
    #[serde(default = "default_secure_case_cap")]
    pub secure_case_cap: u32,
    /// How long each of its four phases waits for devices before they count as dropped.
    #[serde(default = "default_phase_seconds")]
    pub phase_seconds: u64,
    /// How devices encode their deltas: `int8-block256` (int8 blockwise with stochastic
    /// rounding, a quarter of the bytes) or `f32`.
    #[serde(default = "default_encoding")]
    pub encoding: String,
    /// With `encoding = "topk"`: the share of coordinates a device sends per round.
    #[serde(default = "default_topk_fraction")]
    pub topk_fraction: f64,
    /// Share of updates `trimmed_mean` drops at each end of every coordinate.
    #[serde(default = "default_trim_fraction")]
    pub trim_fraction: f64,
    /// Rounds to run before the server idles (0: no limit).
    #[serde(default)]
    pub max_rounds: u64,
    /// Bytes of chunks one device may leave waiting for their commit (chunks of unfinished
    /// blobs are dropped when the round ends).
    #[serde(default = "default_max_pending_bytes_per_device")]
    pub max_pending_bytes_per_device: u64,
}

fn default_round_seconds() -> u64 {
    600
}
fn default_aggregator() -> String {
    "fedavg".into()
}
fn default_true() -> bool {
    true
}
fn default_phase_seconds() -> u64 {
    30
}
fn default_encoding() -> String {
    "int8-block256".into()
}
fn default_topk_fraction() -> f64 {
    0.1
}
fn default_max_pending_bytes_per_device() -> u64 {
    2 * fleet_wire::MAX_BLOB_BYTES
}
fn default_secure_case_cap() -> u32 {
    1000
}
fn default_trim_fraction() -> f64 {
    0.1
}
fn default_clip_norm() -> f64 {
    10.0
}

pub use fleet_wire::site::broker_address;

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut config: Config =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.ca_file,
            &mut config.cert_file,
            &mut config.key_file,
            &mut config.signing_key_file,
            &mut config.data_dir,
            &mut config.initial_head,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        let problem = |key: &str, reason: String| anyhow::anyhow!("{key}: {reason}");
        fleet_wire::message::check_id(&self.federation)
            .map_err(|e| problem("federation", e.to_string()))?;
        fleet_wire::message::check_id(&self.model).map_err(|e| problem("model", e.to_string()))?;
        broker_address(&self.broker).map_err(|e| problem("broker", e))?;
        for device in &self.enrolled {
            fleet_wire::message::check_id(device)
                .map_err(|e| problem("enrolled", format!("{device:?}: {e}")))?;
        }
        if self.quorum == 0 || self.quorum as usize > self.enrolled.len() {
            return Err(problem(
                "quorum",
                format!(
                    "{} of {} enrolled devices",
                    self.quorum,
                    self.enrolled.len()
                ),
            ));
        }
        if !(1..=7 * 24 * 3600).contains(&self.round_seconds) {
            return Err(problem("round_seconds", "1 to 604800".into()));
        }
        if !["fedavg", "fedadam", "trimmed_mean", "median"].contains(&self.aggregator.as_str()) {
            return Err(problem(
                "aggregator",
                format!(
                    "{:?}: fedavg, fedadam, trimmed_mean or median",
                    self.aggregator
                ),
            ));
        }
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return Err(problem("clip_norm", "a finite number above 0".into()));
        }
        if self.secure_aggregation {
            if !["fedavg", "fedadam"].contains(&self.aggregator.as_str()) {
                return Err(problem(
                    "secure_aggregation",
                    format!(
                        "{} needs every device's update, which secure aggregation hides: use fedavg or fedadam, or turn it off",
                        self.aggregator
                    ),
                ));
            }
            if self.enrolled.len() < 3 {
                return Err(problem(
                    "secure_aggregation",
                    "needs 3 or more enrolled devices".into(),
                ));
            }
        }
        if !(1..=1_000_000).contains(&self.secure_case_cap) {
            return Err(problem("secure_case_cap", "1 to 1000000".into()));
        }
        if !(1..=3600).contains(&self.phase_seconds) {
            return Err(problem("phase_seconds", "1 to 3600".into()));
        }
        if self.encoding == "topk" && self.secure_aggregation {
            return Err(problem(
                "encoding",
                "topk cannot run under secure aggregation: the masks make every coordinate dense, and the indices sent would tell the server which weights the site changed".into(),
            ));
        }
        if !(self.topk_fraction.is_finite()
            && self.topk_fraction > 0.0
            && self.topk_fraction <= 1.0)
        {
            return Err(problem("topk_fraction", "above 0 and at most 1".into()));
        }
        if !["int8-block256", "f32", "topk"].contains(&self.encoding.as_str()) {
            return Err(problem(
                "encoding",
                format!("{:?}: int8-block256, f32 or topk", self.encoding),
            ));
        }
        if !(self.trim_fraction.is_finite() && (0.0..0.5).contains(&self.trim_fraction)) {
            return Err(problem("trim_fraction", "at least 0 and below 0.5".into()));
        }
        if self.max_pending_bytes_per_device < fleet_wire::CHUNK_BYTES as u64 {
            return Err(problem(
                "max_pending_bytes_per_device",
                format!("at least one chunk ({} bytes)", fleet_wire::CHUNK_BYTES),
            ));
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.0) {
            return Err(problem(
                "noise_multiplier",
                "a finite number, 0 or more".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("federation.example.toml");
        let config = Config::load(&path).unwrap();
        assert!(config.secure_aggregation);
        assert_eq!(config.quorum, 2);
    }

    #[test]
    fn robust_aggregators_are_refused_under_secure_aggregation_with_the_reason() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("federation.example.toml");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("aggregator = \"fedavg\"", "aggregator = \"median\"");
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("f.toml");
        std::fs::write(&copy, text).unwrap();
        let error = Config::load(&copy).unwrap_err().to_string();
        assert!(
            error.starts_with("secure_aggregation: median needs every device's update"),
            "{error}"
        );
    }
}
