//! Firmware releases heard over the fleet link, on the device: the retained announcement of
//! this device's group (`fleet rollout start`) starts an update on a worker thread when this
//! device is in the wave and the version is newer than the one it runs; the update itself is
//! `apply` (trust root, window and idle wait, A/B switch, self-test, commit or rollback). Every
//! step and outcome becomes this device's retained status, which `fleet devices list` reads.
//! A version that failed its self-test here is not tried again when its announcement comes
//! back on the next connection (a newer one is); a refused one is, as its cause may pass.

use crate::apply::{self, Outcome, Step};
use crate::config::FirmwareConfig;
use crate::state;
use fleet_wire::release::{in_wave, DeviceStatus, Release};
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

/// What the worker tells the loop.
enum Event {
    /// A step started (with why it waits, when it does).
    Step(Step, Option<String>),
    /// The update ended.
    Done { release: String, outcome: Outcome },
    /// The update could not run to the end (I/O, a slot error): the reason.
    Failed { release: String, reason: String },
}

pub struct Releases {
    firmware: FirmwareConfig,
    config_path: PathBuf,
    device: String,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    worker: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// The step of the update in progress, and the release it is for.
    step: Option<(Step, String)>,
    /// The newest announcement heard while an update ran.
    pending: Option<Release>,
}

impl Releases {
    pub fn new(firmware: FirmwareConfig, config_path: PathBuf, device: String) -> Releases {
        let (events_tx, events) = mpsc::channel();
        Releases {
            firmware,
            config_path,
            device,
            events_tx,
            events,
            worker: None,
            stop: Arc::new(AtomicBool::new(false)),
            step: None,
            pending: None,
        }
    }

    pub fn group(&self) -> &str {
        &self.firmware.update.group
    }

    /// An announcement for this device's group: start its update when it applies here.
    /// Returns why not, for the log.
    pub fn announced(&mut self, conn: &Connection, release: Release) -> Result<(), String> {
        if release.group != self.firmware.update.group {
            return Err(format!("for group {}, not this one", release.group));
        }
        if self.worker.is_some() {
            // Looked at again once the update in progress ends (a wider wave, a newer
            // version): the retained announcement is not delivered twice on one connection.
            self.pending = Some(release);
            return Err("an update is running; this announcement waits for its end".into());
        }
        if !in_wave(&self.device, &release.version, release.percent) {
            return Err(format!(
                "this device is not in the {} % wave of {}",
                release.percent, release.version
            ));
        }
        let wanted = semver::Version::parse(&release.version).map_err(|e| e.to_string())?;
        let running = apply::running_version(&self.firmware);
        if semver::Version::parse(&running).is_ok_and(|r| wanted <= r) {
            return Err(format!("{wanted} is not newer than {running}, which runs"));
        }
        let failed = state::get(conn, "firmware_failed_release").map_err(|e| e.to_string())?;
        if failed.as_deref() == Some(release.version.as_str()) {
            return Err(format!(
                "{} failed here before; a newer release is needed",
                release.version
            ));
        }
        tracing::info!(release = %release.version, percent = release.percent, "release announced for this device");
        self.spawn(running, Some(wanted), release.version)
    }

    /// At start: a trial that a stop or a power cut interrupted gets its self-test now.
    pub fn resume_interrupted(&mut self) -> Result<(), String> {
        let trial = apply::slots(&self.firmware)
            .state()
            .map_err(|e| e.to_string())?
            .trial;
        match trial {
            Some(trial) if self.firmware.update.self_test && self.worker.is_none() => {
                let running = apply::running_version(&self.firmware);
                self.spawn(running, None, trial.version)
            }
            _ => Ok(()),
        }
    }

    fn spawn(
        &mut self,
        running: String,
        wanted: Option<semver::Version>,
        version: String,
    ) -> Result<(), String> {
        let (firmware, config_path, tx, stop) = (
            self.firmware.clone(),
            self.config_path.clone(),
            self.events_tx.clone(),
            self.stop.clone(),
        );
        self.step = Some((Step::Fetching, version.clone()));
        self.worker = Some(
            std::thread::Builder::new()
                .name("firmware-update".into())
                .spawn(move || {
                    let step_tx = tx.clone();
                    let mut progress = |step: Step, why: Option<&str>| {
                        let _ = step_tx.send(Event::Step(step, why.map(str::to_string)));
                    };
                    let stopped = || stop.load(Ordering::Relaxed);
                    let result = apply::run(
                        &firmware,
                        &config_path,
                        apply::Options {
                            running,
                            wanted,
                            now: false,
                            progress: &mut progress,
                            stop: &stopped,
                        },
                    );
                    let _ = tx.send(match result {
                        Ok(outcome) => Event::Done {
                            release: version,
                            outcome,
                        },
                        Err(e) => Event::Failed {
                            release: version,
                            reason: format!("{e:#}"),
                        },
                    });
                })
                .map_err(|e| e.to_string())?,
        );
        Ok(())
    }

    /// Take the worker's news; each status to publish, newest last.
    pub fn poll(&mut self, conn: &Connection) -> anyhow::Result<Vec<DeviceStatus>> {
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            match event {
                Event::Step(step, why) => {
                    let release = self.step.take().map(|(_, r)| r);
                    self.step = Some((step, release.unwrap_or_default()));
                    if let Some(why) = why {
                        state::set(conn, "firmware_waiting", &why)?;
                    }
                }
                Event::Done { release, outcome } => {
                    self.finish();
                    let (health, error) = match &outcome {
                        Outcome::Refused { reason } => ("refused", Some(reason.clone())),
                        Outcome::RolledBack { reason, .. } => ("rolled_back", Some(reason.clone())),
                        _ => ("ok", None),
                    };
                    tracing::info!(release = %release, outcome = %serde_json::to_string(&outcome).unwrap_or_default(), "release done");
                    self.record(conn, &release, health, error.as_deref())?;
                }
                Event::Failed { release, reason } => {
                    self.finish();
                    tracing::error!(release = %release, reason = %reason, "release failed");
                    self.record(conn, &release, "refused", Some(&reason))?;
                }
            }
            out.push(self.status(conn)?);
        }
        if self.worker.is_none() {
            if let Some(release) = self.pending.take() {
                let version = release.version.clone();
                match self.announced(conn, release) {
                    Ok(()) => out.push(self.status(conn)?),
                    Err(why) => tracing::info!(release = %version, %why, "release not taken"),
                }
            }
        }
        Ok(out)
    }

    fn finish(&mut self) {
        self.step = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }

    fn record(
        &self,
        conn: &Connection,
        release: &str,
        health: &str,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        state::set(conn, "firmware_release", release)?;
        state::set(conn, "firmware_health", health)?;
        state::set(conn, "firmware_error", error.unwrap_or(""))?;
        // A release that failed its self-test here is not tried again; a refusal (the
        // repository unreachable, metadata that did not verify) is, at the announcement's next
        // delivery, as the cause may pass.
        if health == "rolled_back" {
            state::set(conn, "firmware_failed_release", release)?;
        }
        Ok(())
    }

    /// This device's firmware status now.
    pub fn status(&self, conn: &Connection) -> anyhow::Result<DeviceStatus> {
        // Read only: state.json is replaced atomically, and recovery is the worker's and the
        // boot counter's business (they hold the slots' lock).
        let slot_state = apply::slots(&self.firmware).state()?;
        let (version, slot, settled) = match (&slot_state.trial, &slot_state.committed) {
            (Some(t), _) => (Some(t.version.clone()), Some(t.slot), "on_trial"),
            (None, Some((s, v))) => (Some(v.clone()), Some(*s), "committed"),
            (None, None) => (None, None, "not_installed"),
        };
        let text = |key: &str| -> anyhow::Result<Option<String>> {
            Ok(state::get(conn, key)?.filter(|v| !v.is_empty()))
        };
        let last_error = text("firmware_error")?.or(slot_state.last_error.clone());
        let state = match &self.step {
            Some((step, _)) => step.as_str().to_string(),
            None => settled.to_string(),
        };
        Ok(DeviceStatus {
            device: self.device.clone(),
            group: self.firmware.update.group.clone(),
            version,
            slot: slot.map(|s| match s {
                crate::slots::Slot::A => "a".to_string(),
                crate::slots::Slot::B => "b".to_string(),
            }),
            state,
            health: text("firmware_health")?.unwrap_or_else(|| "ok".into()),
            last_error: last_error.map(|e| bounded(&e)),
            release: match &self.step {
                Some((_, release)) => Some(release.clone()),
                None => text("firmware_release")?,
            },
            at_ms: state::now_ms(),
        })
    }

    /// Stop a wait in progress and let the worker end.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// An error text as the status carries it: one line, at most 1024 bytes.
fn bounded(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut end = line.len().min(1024);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}
