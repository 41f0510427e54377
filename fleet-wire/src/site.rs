//! The `[federation]` table of the appliance configuration, and the folder through which the
//! appliance and its updater hand each other heads. Both read this one definition: the
//! appliance checks the table in `check-config` and writes its local heads; the updater
//! connects with it and writes verified global heads.
//!
//! `<data_dir>/federation/outgoing/<base>.safetensors` (+ `.json`, [`Outgoing`]): the site's
//! current head fine-tuned from global version `<base>`, written by the appliance.
//! `<data_dir>/federation/global/<version>.safetensors` (+ `.json`, the signed header): a
//! global head the updater verified, for the appliance to put through its gate.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[federation]` in the appliance configuration.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    #[serde(default)]
    pub enabled: bool,
    /// `mqtts://host:port`.
    pub broker: String,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The federation's name (a topic level).
    pub federation: String,
    /// Default: the CN of `cert_file`.
    #[serde(default)]
    pub device_id: Option<String>,
    /// The federation server's ed25519 public key (PEM) that global heads must verify with.
    pub trusted_key: PathBuf,
    /// The model whose head is federated.
    pub model: String,
    /// Send updates (false: a paused site still receives global heads).
    #[serde(default = "default_true")]
    pub participate: bool,
    /// Longest a round's work may take on this site.
    #[serde(default = "default_max_round_seconds")]
    pub max_round_seconds: u64,
    /// A site with fewer labelled held-out cases than its gate needs (`[learning]
    /// min_holdout_cases`) has nothing of its own to judge a global head on: take it when it
    /// passes the reference set alone (true), or keep its head until it has them (false).
    #[serde(default = "default_true")]
    pub adopt_without_local_cases: bool,
}

fn default_true() -> bool {
    true
}
fn default_max_round_seconds() -> u64 {
    3600
}

impl FederationConfig {
    /// Every problem as (key, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, reason: String| {
            problems.push((format!("federation.{key}"), reason));
        };
        if let Err(e) = broker_address(&self.broker) {
            problem("broker", e);
        }
        if let Err(e) = crate::message::check_id(&self.federation) {
            problem("federation", e.to_string());
        }
        if let Err(e) = crate::message::check_id(&self.model) {
            problem("model", e.to_string());
        }
        if let Some(id) = &self.device_id {
            if let Err(e) = crate::message::check_id(id) {
                problem("device_id", e.to_string());
            }
        }
        if !(1..=7 * 24 * 3600).contains(&self.max_round_seconds) {
            problem("max_round_seconds", "1 to 604800".into());
        }
        problems
    }

    /// Resolve relative paths against the folder of the configuration file.
    pub fn resolve(&mut self, base: &Path) {
        for p in [
            &mut self.ca_file,
            &mut self.cert_file,
            &mut self.key_file,
            &mut self.trusted_key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

/// Host and port of an `mqtts://host:port` URL (plain `mqtt://` is refused: the fleet speaks
/// only TLS).
pub fn broker_address(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtts://")
        .ok_or_else(|| format!("{url:?}: only mqtts:// (MQTT over TLS) is allowed"))?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?}: no port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{url:?}: port {port:?} is not a number"))?;
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok((host.to_string(), port))
}

/// What the appliance says of an outgoing head (`<base>.json`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Outgoing {
    pub model: String,
    /// The global version the head was fine-tuned from.
    pub base_version: u64,
    /// Labelled cases it was trained on.
    pub cases: u32,
}

pub fn outgoing_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("federation").join("outgoing")
}

pub fn global_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("federation").join("global")
}

/// Write `bytes` to `path` durably: a temporary file, fsync, rename, fsync of the folder.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = path.with_extension("partial");
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `[update]` in the appliance configuration: where the updater finds firmware bundles and
/// what it trusts them through (`updater fetch`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    #[serde(default)]
    pub enabled: bool,
    /// The fleet's update repository: `<repository>/metadata/` (TUF metadata) and
    /// `<repository>/targets/`. A `file://` URL (a mirror on a mounted volume).
    pub repository: String,
    /// The root metadata the firmware shipped with (the repository's `1.root.json`, or a later
    /// one): the trust anchor of every update. Later roots are taken only when this one's
    /// keys sign them.
    pub trusted_root: PathBuf,
    /// Where the A/B slots live: `slots/a`, `slots/b`, the `current` link the units start
    /// from, and `state.json`.
    #[serde(default = "default_install_root")]
    pub install_root: PathBuf,
    /// Starts a new version gets to pass its self-test; one more and it rolls back.
    #[serde(default = "default_max_boot_attempts")]
    pub max_boot_attempts: u32,
    /// Run the new version's clinical self-test after the switch (`appliance self-test` with the
    /// bundle's `selftest/` golden study), then commit it or roll it back by itself.
    #[serde(default = "default_true")]
    pub self_test: bool,
    /// Most seconds from sending the golden study to its SEG and SR at the sink.
    #[serde(default = "default_self_test_budget")]
    pub self_test_budget_seconds: f64,
}

fn default_self_test_budget() -> f64 {
    120.0
}

fn default_install_root() -> PathBuf {
    PathBuf::from("/opt/radiant-edge")
}

fn default_max_boot_attempts() -> u32 {
    3
}

impl UpdateConfig {
    /// Every problem as (key, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !self.repository.starts_with("file:///") {
            problems.push((
                "update.repository".to_string(),
                "a file:///... URL (an absolute path): the only transport this updater has"
                    .to_string(),
            ));
        }
        if !(self.self_test_budget_seconds.is_finite()
            && (1.0..=3600.0).contains(&self.self_test_budget_seconds))
        {
            problems.push((
                "update.self_test_budget_seconds".to_string(),
                "1 to 3600".to_string(),
            ));
        }
        if !(1..=100).contains(&self.max_boot_attempts) {
            problems.push((
                "update.max_boot_attempts".to_string(),
                "1 to 100".to_string(),
            ));
        }
        problems
    }

    /// Resolve a relative `trusted_root` against the folder of the configuration file.
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.trusted_root, &mut self.install_root] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}
