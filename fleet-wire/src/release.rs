//! Firmware releases over the fleet link: the operator's announcement of a release to a fleet
//! group (retained per group, one wave at a time), which devices belong to a wave, and the
//! status each device reports back (retained per device). An announcement is only a trigger:
//! what a device installs is whatever the update repository's signed metadata says about the
//! announced version, so a forged announcement can at most make a device check early or skip
//! a version, never install something unsigned or older.

use crate::bounds::{bad, check_field_id, check_text, MessageError};
use serde::{Deserialize, Serialize};

/// `fleet rollout start`: `version` goes to `percent` % of the devices of `group`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub group: String,
    /// The firmware version (semver) the wave installs; it must be a signed target.
    pub version: String,
    /// Share of the group in the wave, 0 to 100. Raising it keeps the devices already in: a
    /// device's place in the order of a release is fixed ([`in_wave`]).
    pub percent: u8,
    pub issued_at_ms: u64,
}

impl Release {
    pub fn validate(&self) -> Result<(), MessageError> {
        check_field_id("group", &self.group)?;
        check_version("version", &self.version)?;
        if self.percent > 100 {
            return Err(bad("percent", format!("{} (0 to 100)", self.percent)));
        }
        Ok(())
    }
}

/// What a device reports after every change of its firmware and at each connection.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceStatus {
    pub device: String,
    pub group: String,
    /// The version it runs (the committed one, or the one on trial).
    pub version: Option<String>,
    /// `a` or `b`.
    pub slot: Option<String>,
    /// `committed`, `on_trial`, `not_installed`, or the step of an update in progress
    /// (`fetching`, `waiting`, `installing`, `self_test`).
    pub state: String,
    /// `ok`, or `rolled_back`/`refused` after the last update attempt.
    pub health: String,
    pub last_error: Option<String>,
    /// The release this device is working on or last worked on.
    pub release: Option<String>,
    pub at_ms: u64,
}

pub const STATES: &[&str] = &[
    "committed",
    "on_trial",
    "not_installed",
    "fetching",
    "waiting",
    "installing",
    "self_test",
];
pub const HEALTH: &[&str] = &["ok", "rolled_back", "refused"];

impl DeviceStatus {
    pub fn validate(&self) -> Result<(), MessageError> {
        check_field_id("device", &self.device)?;
        check_field_id("group", &self.group)?;
        for (field, v) in [("version", &self.version), ("release", &self.release)] {
            if let Some(v) = v {
                check_version(field, v)?;
            }
        }
        if let Some(slot) = &self.slot {
            if slot != "a" && slot != "b" {
                return Err(bad("slot", "a or b"));
            }
        }
        if !STATES.contains(&self.state.as_str()) {
            return Err(bad("state", format!("unknown {:?}", self.state)));
        }
        if !HEALTH.contains(&self.health.as_str()) {
            return Err(bad("health", format!("unknown {:?}", self.health)));
        }
        if let Some(e) = &self.last_error {
            check_text("last_error", e, 1024)?;
        }
        Ok(())
    }
}

fn check_version(field: &'static str, v: &str) -> Result<(), MessageError> {
    match semver::Version::parse(v) {
        Ok(_) if v.len() <= 64 => Ok(()),
        _ => Err(bad(field, "a semantic version of at most 64 characters")),
    }
}

/// Whether `device` is in the wave of `version` at `percent`: its place is the first 8 bytes
/// of SHA-256(version, device) taken modulo 100, so each release orders the fleet afresh (the
/// same devices are not always first) and a larger percent of the same release is a superset.
pub fn in_wave(device: &str, version: &str, percent: u8) -> bool {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(version.as_bytes())
        .chain_update([0u8])
        .chain_update(device.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % 100) < u64::from(percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wider_wave_of_the_same_release_keeps_every_device_already_in() {
        let devices: Vec<String> = (0..500).map(|i| format!("site-{i}")).collect();
        let mut previous: Vec<&String> = Vec::new();
        for percent in [0u8, 10, 25, 50, 100] {
            let wave: Vec<&String> = devices
                .iter()
                .filter(|d| in_wave(d, "1.4.0", percent))
                .collect();
            assert!(previous.iter().all(|d| wave.contains(d)), "{percent}");
            // Roughly the share asked for (500 devices: within 8 points).
            let share = wave.len() as f64 / 5.0;
            assert!(
                (share - f64::from(percent)).abs() <= 8.0,
                "{percent}: {share}"
            );
            previous = wave;
        }
        assert_eq!(previous.len(), 500);
    }

    #[test]
    fn each_release_orders_the_fleet_afresh() {
        let devices: Vec<String> = (0..200).map(|i| format!("site-{i}")).collect();
        let first =
            |v: &str| -> Vec<&String> { devices.iter().filter(|d| in_wave(d, v, 10)).collect() };
        assert_ne!(first("1.4.0"), first("1.5.0"));
    }

    #[test]
    fn announcements_and_statuses_out_of_bounds_are_refused() {
        let release = Release {
            group: "radiology-east".into(),
            version: "1.4.0".into(),
            percent: 20,
            issued_at_ms: 0,
        };
        assert!(release.validate().is_ok());
        for bad_one in [
            Release {
                percent: 101,
                ..release.clone()
            },
            Release {
                version: "latest".into(),
                ..release.clone()
            },
            Release {
                group: "east/#".into(),
                ..release.clone()
            },
        ] {
            assert!(bad_one.validate().is_err(), "{bad_one:?}");
        }
        let status = DeviceStatus {
            device: "site-1".into(),
            group: "radiology-east".into(),
            version: Some("1.4.0".into()),
            slot: Some("b".into()),
            state: "committed".into(),
            health: "ok".into(),
            last_error: None,
            release: None,
            at_ms: 1,
        };
        assert!(status.validate().is_ok());
        for bad_one in [
            DeviceStatus {
                slot: Some("c".into()),
                ..status.clone()
            },
            DeviceStatus {
                state: "exploded".into(),
                ..status.clone()
            },
            DeviceStatus {
                last_error: Some("a\nb".into()),
                ..status.clone()
            },
        ] {
            assert!(bad_one.validate().is_err(), "{bad_one:?}");
        }
    }
}
