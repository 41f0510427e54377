//! One firmware update from start to end, the same for `updater update` and for a release
//! heard over MQTT (`device`): fetch and stage through the trust root (`firmware`), wait for
//! the maintenance window and an idle appliance (`schedule`, unless told to go now), install
//! into the inactive slot and switch on trial (`slots`), restart the appliance on it, run the
//! new version's clinical self-test, then commit, or roll back and restart on the old slot.
//! Each step is reported to `progress` before it starts, so the fleet can see where a device
//! is; the outcome says what happened and why.

use crate::config::FirmwareConfig;
use crate::firmware::{self, Fetched, Skipped};
use crate::schedule::{Busy, Schedule};
use crate::slots::{Installed, Slots};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A step of an update, as the device reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Fetching,
    Waiting,
    Installing,
    SelfTest,
}

impl Step {
    /// The `state` word of `fleet_wire::release::DeviceStatus`.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Fetching => "fetching",
            Step::Waiting => "waiting",
            Step::Installing => "installing",
            Step::SelfTest => "self_test",
        }
    }
}

/// What an update did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Outcome {
    /// Nothing signed to take (`skipped` says why each target was not).
    UpToDate {
        running: String,
        skipped: Vec<Skipped>,
    },
    /// Refused before anything was installed: the reason.
    Refused { reason: String },
    /// Installed on trial without a self-test (`self_test = false`): `updater commit` or the
    /// boot counter decides.
    OnTrial { version: String },
    /// Committed: after its self-test passed, or at once as the first install (nothing to go
    /// back to; no self-test).
    Committed {
        version: String,
        self_test: Option<serde_json::Value>,
    },
    RolledBack {
        version: String,
        reason: String,
        self_test: serde_json::Value,
    },
    /// The wait for the window or an idle appliance was stopped; the bundle stays staged.
    Stopped { version: String, waiting: String },
}

/// How to run it.
pub struct Options<'a> {
    /// The version this device runs.
    pub running: String,
    /// Exactly this version (a release announced it), or the newest signed.
    pub wanted: Option<semver::Version>,
    /// Switch at once, without waiting for the window or an idle appliance.
    pub now: bool,
    pub progress: &'a mut dyn FnMut(Step, Option<&str>),
    /// Ends a wait early.
    pub stop: &'a dyn Fn() -> bool,
}

pub fn slots(config: &FirmwareConfig) -> Slots {
    Slots::new(
        &config.update.install_root,
        &config.data_dir,
        config.update.max_boot_attempts,
    )
}

/// The version this device runs: the committed slot's, else this updater's own.
pub fn running_version(config: &FirmwareConfig) -> String {
    slots(config)
        .state()
        .ok()
        .and_then(|s| s.committed.map(|(_, v)| v))
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string())
}

/// Run one update (`config_path` is handed to the new version's self-test).
pub fn run(
    config: &FirmwareConfig,
    config_path: &Path,
    options: Options<'_>,
) -> anyhow::Result<Outcome> {
    let Options {
        running,
        wanted,
        now,
        progress,
        stop,
    } = options;
    if let Some(trial) = slots(config).state()?.trial {
        // A trial left by a stop or a power cut before its self-test ended: finish it first.
        if config.update.self_test {
            tracing::warn!(version = %trial.version, "a trial was interrupted; running its self-test again");
            return finish_trial(config, config_path, trial.version, &running, progress);
        }
        return Ok(Outcome::Refused {
            reason: format!(
                "version {} is on trial: it must commit or roll back first",
                trial.version
            ),
        });
    }
    progress(Step::Fetching, None);
    let fetched = firmware::fetch(
        &config.data_dir,
        &config.update,
        &running,
        std::env::consts::ARCH,
        wanted.as_ref(),
    );
    let version = match fetched {
        Ok(Fetched::Staged { version, .. }) => version,
        Ok(Fetched::UpToDate { running, skipped }) => {
            return Ok(Outcome::UpToDate { running, skipped })
        }
        Err(e) => {
            tracing::error!(reason = %e, "update refused; nothing installed");
            return Ok(Outcome::Refused {
                reason: e.to_string(),
            });
        }
    };
    if !now {
        let schedule = Schedule::new(
            config.update.maintenance_window.as_deref(),
            config.activity_url.clone(),
        );
        let mut last = String::new();
        let mut waiting = |busy: &Busy| {
            last = busy.to_string();
            tracing::info!(version = %version, reason = %last, "waiting to switch");
            progress(Step::Waiting, Some(&last));
        };
        if !schedule.wait(&mut waiting, stop) {
            return Ok(Outcome::Stopped {
                version,
                waiting: last,
            });
        }
    }
    progress(Step::Installing, None);
    let installed = install(config)?;
    if installed.state != "on_trial" {
        return Ok(Outcome::Committed {
            version: installed.version,
            self_test: None,
        });
    }
    restart_appliance(config, &installed.version)?;
    if !config.update.self_test {
        return Ok(Outcome::OnTrial {
            version: installed.version,
        });
    }
    finish_trial(config, config_path, installed.version, &running, progress)
}

/// The self-test of the version on trial, then its commit, or the rollback to `previous` and
/// a restart on it.
fn finish_trial(
    config: &FirmwareConfig,
    config_path: &Path,
    version: String,
    previous: &str,
    progress: &mut dyn FnMut(Step, Option<&str>),
) -> anyhow::Result<Outcome> {
    progress(Step::SelfTest, None);
    let outcome = self_test(config, config_path);
    let slots = slots(config);
    if outcome["passed"] == true {
        let version = slots.commit()?;
        tracing::info!(version = %version, seconds = %outcome["seconds"], "self-test passed; committed");
        Ok(Outcome::Committed {
            version,
            self_test: Some(outcome),
        })
    } else {
        let reason = format!(
            "version {version} failed its self-test: {}",
            outcome["reasons"]
        );
        slots.rollback(&reason)?;
        tracing::error!(reason = %reason, "rolled back");
        restart_appliance(config, previous)?;
        Ok(Outcome::RolledBack {
            version,
            reason,
            self_test: outcome,
        })
    }
}

/// Install the newest staged bundle on trial; the staged copy is removed once installed.
pub fn install(config: &FirmwareConfig) -> anyhow::Result<Installed> {
    let staged_dir = firmware::update_dir(&config.data_dir).join("staged");
    let mut newest: Option<(semver::Version, PathBuf)> = None;
    for entry in std::fs::read_dir(&staged_dir)
        .map_err(|e| anyhow::anyhow!("{}: {e} (nothing fetched)", staged_dir.display()))?
    {
        let path = entry?.path();
        let Some(version) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| semver::Version::parse(n).ok())
        else {
            continue;
        };
        if newest.as_ref().is_none_or(|(v, _)| version > *v) {
            newest = Some((version, path));
        }
    }
    let (_, path) = newest.ok_or_else(|| anyhow::anyhow!("no staged bundle to install"))?;
    let installed = slots(config).install(&path)?;
    std::fs::remove_dir_all(&path)?;
    tracing::info!(version = %installed.version, state = installed.state, "installed");
    Ok(installed)
}

/// The file whose change the image's `radiant-edge-restart.path` unit turns into a restart of
/// the appliance's unit.
pub fn restart_request(data_dir: &Path) -> PathBuf {
    firmware::update_dir(data_dir).join("restart-appliance")
}

/// Restart the appliance on whatever `current` points at now: `restart_command` when one is
/// configured, else a restart request for systemd's path unit.
fn restart_appliance(config: &FirmwareConfig, version: &str) -> anyhow::Result<()> {
    let command = &config.update.restart_command;
    if let Some((program, args)) = command.split_first() {
        let status = std::process::Command::new(program)
            .args(args)
            .env("RADIANT_EDGE_VERSION", version)
            .status()
            .map_err(|e| anyhow::anyhow!("update.restart_command {program}: {e}"))?;
        if !status.success() {
            anyhow::bail!("update.restart_command {program}: {status}");
        }
    } else {
        let path = restart_request(&config.data_dir);
        let tmp = path.with_extension("tmp");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        std::fs::write(
            &tmp,
            serde_json::json!({"version": version, "at_ms": now as u64}).to_string(),
        )?;
        std::fs::rename(&tmp, &path)?;
    }
    tracing::info!(version = %version, "appliance restart requested");
    Ok(())
}

/// Run the clinical self-test of the version `current` now points at: its own `appliance
/// self-test` with its bundle's golden study. A self-test that cannot even run is a failure
/// with the reason.
pub fn self_test(config: &FirmwareConfig, config_path: &Path) -> serde_json::Value {
    let current = slots(config).current_link();
    let out = std::process::Command::new(current.join("bin/appliance"))
        .args(["self-test", "--config"])
        .arg(config_path)
        .arg("--golden")
        .arg(current.join("selftest"))
        .arg("--budget-seconds")
        .arg(config.update.self_test_budget_seconds.to_string())
        .output();
    let failed = |reason: String| serde_json::json!({"passed": false, "reasons": [reason]});
    match out {
        Err(e) => failed(format!("cannot run the new version's appliance: {e}")),
        Ok(out) => match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            Ok(v) if v.get("passed").is_some() => v,
            _ => failed(format!(
                "the new version's self-test did not report (exit {}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            )),
        },
    }
}
