//! The `[federation]` table of the appliance configuration, and the folder through which the
//! appliance and its updater hand each other heads. Both read this one definition: the
//! appliance checks the table in `check-config` and writes its local heads; the updater
//! connects with it and writes verified global heads.
//!
//! `<data_dir>/federation/outgoing/<base>.safetensors` (+ `.json`, [`Outgoing`]): the site's
//! current head fine-tuned from global version `<base>`, written by the appliance.
//! `<data_dir>/federation/global/<version>.safetensors` (+ `.json`, the signed header): a
//! global head the updater verified, for the appliance to put through its gate.
//!
//! Also the `[update]` table (firmware updates) and [`Activity`], what the appliance's
//! `GET /activity` tells the updater before it switches versions.

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
    /// The federation server's ed25519 public key (PEM) that global heads must verify with,
    /// or `"repository"`: the key the fleet's update repository delegates the `federation` role
    /// to (its targets metadata, verified through the trust root of `[update]`), so the
    /// federation key is rotated and revoked through the one trust root.
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

/// `trusted_key = "repository"`: the federation key comes from the update repository's
/// delegation (the `federation` role).
pub const TRUSTED_KEY_FROM_REPOSITORY: &str = "repository";

/// The delegated role of the update repository whose key signs global heads.
pub const FEDERATION_ROLE: &str = "federation";

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

    /// Whether global heads verify with the key the update repository delegates to.
    pub fn trusts_repository(&self) -> bool {
        self.trusted_key == Path::new(TRUSTED_KEY_FROM_REPOSITORY)
    }

    /// Resolve relative paths against the folder of the configuration file.
    pub fn resolve(&mut self, base: &Path) {
        let from_repository = self.trusts_repository();
        for p in [
            &mut self.ca_file,
            &mut self.cert_file,
            &mut self.key_file,
            &mut self.trusted_key,
        ] {
            if from_repository && *p == Path::new(TRUSTED_KEY_FROM_REPOSITORY) {
                continue;
            }
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

/// Write `bytes` to `path` durably, its folder made durably first if missing (the first
/// global head a site installs makes `global/`: a power cut must not take the folder while
/// the updater's state says the head is installed).
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let as_io = |e: radiant_core::durable::DurableError| {
        std::io::Error::new(e.source.kind(), e.to_string())
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        radiant_core::durable::create_dir_durable(dir).map_err(as_io)?;
    }
    radiant_core::durable::write_durable(path, bytes).map_err(as_io)
}

/// `[update]` in the appliance configuration: where the updater finds firmware bundles and
/// what it trusts them through (`updater fetch`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    #[serde(default)]
    pub enabled: bool,
    /// The fleet's update repository: `<repository>/metadata/` (TUF metadata) and
    /// `<repository>/targets/`. An `https://` URL (a static HTTPS server: the vendor's, or a
    /// mirror inside the hospital) or a `file://` one (a mirror on a mounted volume).
    pub repository: String,
    /// The CA an `https://` repository's server certificate must chain to (a private mirror's);
    /// without it, Mozilla's roots. TLS keeps the bytes private and the server genuine; their
    /// integrity comes from the trust root either way.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
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
    /// The fleet group whose release announcements this device follows (`updater run`).
    #[serde(default = "default_group")]
    pub group: String,
    /// `HH:MM-HH:MM`, the appliance's local time: a release is switched to only inside it (it
    /// may span midnight, `22:00-04:00`). Without it, at any time. Either way only once the
    /// appliance is idle (no association, no study waiting, no job); `update --now` waits for
    /// neither.
    #[serde(default)]
    pub maintenance_window: Option<String>,
    /// What restarts the appliance on the new slot after the switch, as argv. Empty (the
    /// default): the updater asks for it by writing `<data_dir>/update/restart-appliance`,
    /// which the image's `radiant-edge-restart.path` unit turns into a restart of the
    /// appliance's unit, so the updater itself needs no privilege over systemd.
    #[serde(default)]
    pub restart_command: Vec<String>,
    /// Model ids whose newer signed packages `updater models` installs (inactive: an admin
    /// activates a version, as with any installed one). Empty: none.
    #[serde(default)]
    pub models: Vec<String>,
    /// The appliance binary that installs a model package (`appliance models install`).
    /// Default: `<install_root>/current/bin/appliance`, the active slot's.
    #[serde(default)]
    pub appliance_binary: Option<PathBuf>,
}

/// What the appliance is busy with (`GET /activity` on its operations endpoint, JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// DICOM associations open now.
    pub associations_active: u64,
    /// Studies whose instances are arriving (not complete yet).
    pub studies_receiving: u64,
    /// Inference jobs queued or running.
    pub jobs_waiting: u64,
}

impl Activity {
    pub fn is_idle(&self) -> bool {
        self.associations_active == 0 && self.studies_receiving == 0 && self.jobs_waiting == 0
    }
}

fn default_group() -> String {
    "default".to_string()
}

/// A maintenance window `HH:MM-HH:MM` as minutes of the day (start, end); end before start
/// spans midnight.
pub fn parse_window(window: &str) -> Option<(u32, u32)> {
    let minutes = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && t.trim().len() == 5).then_some(h * 60 + m)
    };
    let (start, end) = window.split_once('-')?;
    let (start, end) = (minutes(start)?, minutes(end)?);
    (start != end).then_some((start, end))
}

/// Whether `minute` of the day lies in the window `(start, end)` of [`parse_window`].
pub fn in_window((start, end): (u32, u32), minute: u32) -> bool {
    if start < end {
        (start..end).contains(&minute)
    } else {
        minute >= start || minute < end
    }
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
        if !(self.repository.starts_with("file:///") || self.repository.starts_with("https://")) {
            problems.push((
                "update.repository".to_string(),
                "an https://... URL, or file:///... (an absolute path); plain http is refused"
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
        if crate::message::check_id(&self.group).is_err() {
            problems.push((
                "update.group".to_string(),
                "1 to 64 of A-Z a-z 0-9 . _ -".to_string(),
            ));
        }
        for id in &self.models {
            if crate::message::check_id(id).is_err() {
                problems.push((
                    "update.models".to_string(),
                    format!("{id:?}: not a model id"),
                ));
            }
        }
        if let Some(w) = &self.maintenance_window {
            if parse_window(w).is_none() {
                problems.push((
                    "update.maintenance_window".to_string(),
                    format!("{w:?}: HH:MM-HH:MM (24-hour local time, start and end differ)"),
                ));
            }
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
        for p in [&mut self.trusted_root, &mut self.install_root]
            .into_iter()
            .chain(self.ca_file.as_mut())
            .chain(self.appliance_binary.as_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintenance_windows_parse_and_may_span_midnight() {
        assert_eq!(parse_window("02:00-04:30"), Some((120, 270)));
        let night = parse_window("22:00-04:00").unwrap();
        assert!(in_window(night, 23 * 60) && in_window(night, 60) && !in_window(night, 4 * 60));
        let day = parse_window("09:15-10:00").unwrap();
        assert!(in_window(day, 9 * 60 + 15) && !in_window(day, 10 * 60));
        for bad in [
            "",
            "2:00-4:00",
            "24:00-01:00",
            "02:00-02:00",
            "02:00",
            "aa:bb-cc:dd",
        ] {
            assert_eq!(parse_window(bad), None, "{bad}");
        }
    }
}
