//! The operator's side of firmware rollouts over the fleet broker: announcing a release to a
//! fleet group (retained on `release/<group>`, so a device that connects later still hears
//! it; a wider percent of the same version replaces the announcement and keeps the devices
//! already in the wave), and reading every device's retained firmware status. The release
//! itself is whatever the update repository signed; the announcement only says which version
//! goes to how much of a group now.

use fleet_mqtt::{Incoming, Link, LinkConfig};
use fleet_wire::message::Message;
use fleet_wire::release::{DeviceStatus, Release};
use fleet_wire::{frame, Topics};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the operator's command needs of a configuration file: the federation server's own
/// file works, and so does a small one with only these keys.
#[derive(Debug, Deserialize)]
pub struct OperatorConfig {
    pub federation: String,
    /// `mqtts://host:port`.
    pub broker: String,
    pub ca_file: PathBuf,
    /// The operator's certificate: the broker's ACL must let its CN write `release/#` and
    /// read `device/+/status`.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("the fleet broker: {0}")]
    Link(String),
    #[error("the broker refused the announcement: {0} (does the ACL let this certificate write release/#?)")]
    Refused(String),
    #[error("no answer from the broker within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Invalid(String),
}

impl OperatorConfig {
    pub fn load(path: &Path) -> Result<OperatorConfig, RolloutError> {
        let config_error = |reason: String| RolloutError::Config {
            path: path.into(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| config_error(e.to_string()))?;
        let mut config: OperatorConfig =
            toml::from_str(&text).map_err(|e| config_error(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.ca_file,
            &mut config.cert_file,
            &mut config.key_file,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        fleet_wire::message::check_id(&config.federation)
            .map_err(|e| config_error(format!("federation: {e}")))?;
        Ok(config)
    }

    fn link(&self, subscriptions: Vec<String>) -> Result<Link, RolloutError> {
        let (host, port) =
            fleet_wire::site::broker_address(&self.broker).map_err(RolloutError::Link)?;
        Link::start(
            &LinkConfig {
                host,
                port,
                client_id: format!("fleet-operator-{}", std::process::id()),
                ca_file: self.ca_file.clone(),
                cert_file: self.cert_file.clone(),
                key_file: self.key_file.clone(),
                keep_alive: Duration::from_secs(30),
                persistent_session: false,
            },
            subscriptions,
        )
        .map_err(|e| RolloutError::Link(e.to_string()))
    }
}

/// Announce `release` (retained) and wait until the broker hands it back on the release topic,
/// which proves it was accepted and stored.
pub fn announce(
    config: &OperatorConfig,
    release: &Release,
    wait: Duration,
) -> Result<(), RolloutError> {
    release
        .validate()
        .map_err(|e| RolloutError::Invalid(e.to_string()))?;
    let topic = Topics::new(&config.federation).release(&release.group);
    let link = config.link(vec![topic.clone()])?;
    let payload = frame::encode(&Message::Release(release.clone()), b"");
    let deadline = Instant::now() + wait;
    let mut sent = false;
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(RolloutError::Timeout(wait));
        }
        match link.events().recv_timeout(left) {
            Ok(Incoming::Connected) if !sent => {
                // Subscribed before publishing: the broker sends the retained copy back.
                std::thread::sleep(Duration::from_millis(200));
                link.publish(&topic, payload.clone(), true)
                    .map_err(|e| RolloutError::Link(e.to_string()))?;
                sent = true;
            }
            Ok(Incoming::Message {
                topic: t,
                payload: p,
                ..
            }) if sent && t == topic && p == payload => break Ok(()),
            Ok(Incoming::PublishRefused { reason }) => break Err(RolloutError::Refused(reason)),
            Ok(Incoming::Disconnected(reason)) if !sent => break Err(RolloutError::Link(reason)),
            Ok(_) => {}
            Err(_) => break Err(RolloutError::Timeout(wait)),
        }
    };
    link.close();
    result
}

/// Every device's retained status, newest per device, sorted by device. Collects until no
/// status has come for `quiet`, or `wait` has passed.
pub fn devices(
    config: &OperatorConfig,
    wait: Duration,
    quiet: Duration,
) -> Result<Vec<DeviceStatus>, RolloutError> {
    let topics = Topics::new(&config.federation);
    let link = config.link(vec![topics.all_status()])?;
    let deadline = Instant::now() + wait;
    let mut seen: std::collections::BTreeMap<String, DeviceStatus> = Default::default();
    let mut connected = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = if connected { left.min(quiet) } else { left };
        if timeout.is_zero() {
            break;
        }
        match link.events().recv_timeout(timeout) {
            Ok(Incoming::Connected) => connected = true,
            Ok(Incoming::Message { topic, payload, .. }) => {
                let Some(device) = topic
                    .strip_suffix("/status")
                    .and_then(|t| t.rsplit('/').next())
                else {
                    continue;
                };
                match frame::decode(&payload) {
                    Ok((Message::DeviceStatus(status), _)) if status.device == device => {
                        if seen.get(device).is_none_or(|s| s.at_ms <= status.at_ms) {
                            seen.insert(device.to_string(), status);
                        }
                    }
                    Ok(_) => tracing::warn!(%topic, "not a status of this device; ignored"),
                    Err(e) => tracing::warn!(%topic, reason = %e, "status refused"),
                }
            }
            Ok(_) => {}
            Err(_) if connected => break,
            Err(_) => {
                link.close();
                return Err(RolloutError::Timeout(wait));
            }
        }
    }
    link.close();
    Ok(seen.into_values().collect())
}
