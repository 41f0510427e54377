//! A/B installation of firmware bundles, with a trial that must be committed and a boot counter
//! that rolls back by itself.
//!
//! Layout under the install root (`[update] install_root`):
//! - `slots/a/`, `slots/b/`: each a verified, unpacked bundle (with its `bundle.json`);
//! - `current`: a symlink to the slot that runs (the units start `current/bin/appliance`),
//!   switched atomically (a new link renamed over the old one, then the folder fsync'd);
//! - `state.json`: which slot is committed (known good), the trial if one runs (its slot,
//!   version, starts so far, the database snapshot of the version it replaced), the last error.
//!
//! Installing: the inactive slot is emptied and filled from the staged bundle (every file
//! checked again), the appliance's databases are snapshotted (`VACUUM INTO`), the trial is
//! recorded, and only then does `current` switch. Every start of the appliance first runs
//! [`Slots::boot`]: a trial started more than `max_boot_attempts` times without a commit is
//! rolled back. A rollback points `current` at the committed slot again and puts the snapshot
//! back; instances acknowledged in between stay in the spool, and the spool's recovery
//! indexes them again from their files at the next start.
//!
//! Crash safety: the link is the truth of what runs, `state.json` of whether it is a trial.
//! Each step is written durably before the next; [`Slots::recover`] (run first by every
//! command) finishes or undoes a step a crash cut short, so a kill at any point leaves a
//! `current` that points at a complete, verified slot.
//!
//! On a device with A/B partitions the same state machine drives the bootloader instead of a
//! link: "switch" sets the next-boot partition (RAUC's `rauc install` + `mark-active`, or
//! U-Boot's `BOOT_ORDER` with a boot counter like Mender's `upgrade_available` and `bootcount`),
//! [`Slots::boot`] is the bootloader's counter decrement, and [`Slots::commit`] is
//! `rauc status mark-good` / clearing `upgrade_available`.

use image::bundle;
use radiant_core::durable::{create_dir_durable, DurableError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SlotError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Durable(#[from] DurableError),
    #[error("{0}")]
    Bundle(#[from] bundle::BundleError),
    #[error("state.json: {0}")]
    State(String),
    #[error("database snapshot: {0}")]
    Snapshot(String),
    #[error("{0}")]
    Refused(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

/// A version on trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub slot: Slot,
    pub version: String,
    /// Starts of the appliance on this trial so far.
    pub boots: u32,
    /// The databases as they were before the switch.
    pub snapshot: PathBuf,
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotState {
    /// The known-good slot and its version (`None`: nothing installed yet).
    pub committed: Option<(Slot, String)>,
    pub trial: Option<Trial>,
    pub last_error: Option<String>,
    /// A rollback in progress, and why: set before `current` switches back, cleared once the
    /// databases are restored, so a crash in between finishes the rollback.
    #[serde(default)]
    pub rolling_back: Option<String>,
}

/// What [`Slots::boot`] decided.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "boot", rename_all = "snake_case")]
pub enum Boot {
    /// The committed version starts.
    Committed,
    /// The trial starts (its `boots`-th start).
    Trial { version: String, boots: u32 },
    /// The trial failed to commit within its starts: rolled back.
    RolledBack { reason: String },
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Installed {
    pub version: String,
    /// `on_trial`, or `committed` for the first install.
    pub state: &'static str,
}

/// The install root.
pub struct Slots {
    root: PathBuf,
    data_dir: PathBuf,
    max_boot_attempts: u32,
}

/// The appliance databases a trial snapshots: results and the spool index.
const DATABASES: [&str; 2] = ["results.sqlite", "index.sqlite"];

impl Slots {
    pub fn new(root: &Path, data_dir: &Path, max_boot_attempts: u32) -> Slots {
        Slots {
            root: root.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            max_boot_attempts,
        }
    }

    fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.root.join("slots").join(slot.name())
    }

    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    /// One change of the slots at a time, across processes: the updater's update, the
    /// appliance unit's `updater boot` (which a restart during an update runs) and the
    /// operator's commands. An exclusive lock on `<install_root>/lock`, released when the
    /// returned file closes (also by a crash).
    fn lock(&self) -> Result<std::fs::File, SlotError> {
        create_dir_durable(&self.root)?;
        let path = self.root.join("lock");
        // Opened for reading when it exists: the boot counter runs as root and the updater as
        // its own user, and a lock needs no write access.
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?,
            Err(e) => return Err(e.into()),
        };
        file.lock()?;
        Ok(file)
    }

    fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    pub fn state(&self) -> Result<SlotState, SlotError> {
        match std::fs::read(self.state_path()) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| SlotError::State(e.to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SlotState {
                committed: None,
                trial: None,
                last_error: None,
                rolling_back: None,
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn write_state(&self, state: &SlotState) -> Result<(), SlotError> {
        let json = serde_json::to_vec_pretty(state).map_err(|e| SlotError::State(e.to_string()))?;
        write_atomically(&self.state_path(), &json)
    }

    /// The slot `current` points at, if any.
    pub fn running(&self) -> Option<Slot> {
        let target = std::fs::read_link(self.current_link()).ok()?;
        [Slot::A, Slot::B]
            .into_iter()
            .find(|s| target == Path::new("slots").join(s.name()))
    }

    /// Point `current` at `slot`: a new link renamed over the old one, the folder fsync'd.
    fn switch(&self, slot: Slot) -> Result<(), SlotError> {
        let tmp = self.root.join("current.new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("slots").join(slot.name()), &tmp)?;
        std::fs::rename(&tmp, self.current_link())?;
        sync_dir(&self.root)
    }

    /// Finish or undo what a crash cut short: a trial recorded but not switched to is
    /// abandoned (its slot is not what runs); a link to a slot that is neither committed nor
    /// on trial goes back to the committed one.
    pub fn recover(&self) -> Result<(), SlotError> {
        let _lock = self.lock()?;
        self.recover_unlocked()
    }

    fn recover_unlocked(&self) -> Result<(), SlotError> {
        create_dir_durable(&self.root.join("slots"))?;
        let mut state = self.state()?;
        if let Some(reason) = state.rolling_back.clone() {
            return self.rollback_unlocked(&reason);
        }
        let running = self.running();
        if let Some(trial) = &state.trial {
            if running != Some(trial.slot) {
                // Recorded, never switched to: nothing ran on it.
                let reason = format!("install of {} interrupted before the switch", trial.version);
                state.trial = None;
                state.last_error = Some(reason);
                self.write_state(&state)?;
            }
            return Ok(());
        }
        if let Some((slot, _)) = &state.committed {
            if running != Some(*slot) {
                self.switch(*slot)?;
            }
        }
        Ok(())
    }

    /// Install the verified, unpacked bundle in `staged` into the inactive slot and switch to
    /// it on trial (the very first install, with nothing to go back to, is committed at once).
    /// Refused while another trial runs.
    pub fn install(&self, staged: &Path) -> Result<Installed, SlotError> {
        let _lock = self.lock()?;
        self.recover_unlocked()?;
        let mut state = self.state()?;
        if let Some(trial) = &state.trial {
            return Err(SlotError::Refused(format!(
                "version {} is on trial in slot {}: commit or roll it back first",
                trial.version,
                trial.slot.name()
            )));
        }
        let manifest = bundle::verify_dir(staged)?;
        let target = match &state.committed {
            Some((slot, _)) => slot.other(),
            None => Slot::A,
        };
        let dir = self.slot_dir(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        let filling = self
            .root
            .join("slots")
            .join(format!("{}.new", target.name()));
        if filling.exists() {
            std::fs::remove_dir_all(&filling)?;
        }
        copy_tree(staged, &filling)?;
        bundle::verify_dir(&filling)?;
        std::fs::rename(&filling, &dir)?;
        sync_dir(&self.root.join("slots"))?;
        if state.committed.is_none() {
            // The first install has nothing to try against: it is committed as it lands.
            state.committed = Some((target, manifest.version.clone()));
            state.last_error = None;
            self.write_state(&state)?;
            self.switch(target)?;
            return Ok(Installed {
                version: manifest.version,
                state: "committed",
            });
        }
        let snapshot = self.snapshot_databases(&state)?;
        state.trial = Some(Trial {
            slot: target,
            version: manifest.version.clone(),
            boots: 0,
            snapshot,
        });
        state.last_error = None;
        self.write_state(&state)?;
        self.switch(target)?;
        Ok(Installed {
            version: manifest.version,
            state: "on_trial",
        })
    }

    /// Snapshot the appliance's databases (consistent copies by `VACUUM INTO`, fsync'd) into
    /// `<data_dir>/update/snapshots/<committed version>/`.
    fn snapshot_databases(&self, state: &SlotState) -> Result<PathBuf, SlotError> {
        let version = state
            .committed
            .as_ref()
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "none".into());
        let dir = self.data_dir.join("update/snapshots").join(&version);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        // Every level durable: the trial recorded next names this folder, and a rollback
        // after a power cut must find it.
        create_dir_durable(&dir)?;
        for name in DATABASES {
            let source = self.data_dir.join(name);
            if !source.exists() {
                continue;
            }
            let conn = rusqlite::Connection::open(&source)
                .map_err(|e| SlotError::Snapshot(format!("{name}: {e}")))?;
            conn.execute("VACUUM INTO ?1", [dir.join(name).to_string_lossy()])
                .map_err(|e| SlotError::Snapshot(format!("{name}: {e}")))?;
            std::fs::File::open(dir.join(name))?.sync_all()?;
        }
        sync_dir(&dir)?;
        Ok(dir)
    }

    /// Count a start of the appliance; a trial past `max_boot_attempts` starts rolls back.
    pub fn boot(&self) -> Result<Boot, SlotError> {
        let _lock = self.lock()?;
        self.recover_unlocked()?;
        let mut state = self.state()?;
        let Some(trial) = state.trial.as_mut() else {
            return Ok(Boot::Committed);
        };
        trial.boots += 1;
        if trial.boots > self.max_boot_attempts {
            let reason = format!(
                "version {} started {} times without passing its self-test",
                trial.version, self.max_boot_attempts
            );
            self.rollback_unlocked(&reason)?;
            return Ok(Boot::RolledBack { reason });
        }
        let boot = Boot::Trial {
            version: trial.version.clone(),
            boots: trial.boots,
        };
        self.write_state(&state)?;
        Ok(boot)
    }

    /// The trial passed: it becomes the committed version.
    pub fn commit(&self) -> Result<String, SlotError> {
        let _lock = self.lock()?;
        self.recover_unlocked()?;
        let mut state = self.state()?;
        let trial = state
            .trial
            .take()
            .ok_or_else(|| SlotError::Refused("no version is on trial".into()))?;
        state.committed = Some((trial.slot, trial.version.clone()));
        state.last_error = None;
        self.write_state(&state)?;
        Ok(trial.version)
    }

    /// Go back to the committed version: `current` points at it again and the databases
    /// snapshotted before the switch are put back (the spool's files are the truth: its
    /// recovery indexes what arrived since at the next start).
    pub fn rollback(&self, reason: &str) -> Result<(), SlotError> {
        let _lock = self.lock()?;
        self.rollback_unlocked(reason)
    }

    fn rollback_unlocked(&self, reason: &str) -> Result<(), SlotError> {
        let mut state = self.state()?;
        let trial = state
            .trial
            .clone()
            .ok_or_else(|| SlotError::Refused("no version is on trial".into()))?;
        let (committed, _) = state
            .committed
            .clone()
            .ok_or_else(|| SlotError::State("a trial without a committed version".into()))?;
        if state.rolling_back.is_none() {
            state.rolling_back = Some(reason.to_string());
            self.write_state(&state)?;
        }
        self.switch(committed)?;
        for name in DATABASES {
            let saved = trial.snapshot.join(name);
            if !saved.exists() {
                continue;
            }
            let live = self.data_dir.join(name);
            let tmp = self.data_dir.join(format!("{name}.restore"));
            std::fs::copy(&saved, &tmp)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            for suffix in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(self.data_dir.join(format!("{name}{suffix}")));
            }
            std::fs::rename(&tmp, &live)?;
        }
        sync_dir(&self.data_dir)?;
        state.trial = None;
        state.rolling_back = None;
        state.last_error = Some(reason.to_string());
        self.write_state(&state)
    }
}

fn sync_dir(dir: &Path) -> Result<(), SlotError> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Write `bytes` to `path` through a temporary file renamed over it, fsync'd.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SlotError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut f, bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Copy the regular files and folders of `from` into the new folder `to`, fsync'd.
fn copy_tree(from: &Path, to: &Path) -> Result<(), SlotError> {
    std::fs::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
            std::fs::File::open(&target)?.sync_all()?;
        } else {
            return Err(SlotError::Refused(format!(
                "{}: not a regular file or folder",
                entry.path().display()
            )));
        }
    }
    sync_dir(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(dir: &Path, version: &str) -> PathBuf {
        let stage = dir.join(format!("stage-{version}"));
        std::fs::create_dir_all(&stage).unwrap();
        std::fs::write(stage.join("app"), format!("appliance {version}")).unwrap();
        let archive = dir.join(format!("{version}.tar"));
        bundle::make(
            version,
            &[std::env::consts::ARCH.into()],
            "0.1.0",
            &[("bin/appliance".into(), stage.join("app"), 0o755)],
            &archive,
        )
        .unwrap();
        let out = dir.join(format!("unpacked-{version}"));
        let _ = std::fs::remove_dir_all(&out);
        bundle::unpack(&archive, &out).unwrap();
        out
    }

    fn runs(slots: &Slots) -> String {
        std::fs::read_to_string(slots.current_link().join("bin/appliance")).unwrap()
    }

    #[test]
    fn starts_counted_from_several_processes_at_once_are_each_counted_once() {
        // The appliance unit's `updater boot` may run while the updater itself changes the
        // state (a restart during an update): without the lock, one write loses the other.
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let root = dir.path().join("root");
        let slots = Slots::new(&root, &data, 100);
        slots.install(&staged(dir.path(), "0.1.0")).unwrap();
        slots.install(&staged(dir.path(), "0.2.0")).unwrap();
        let counters: Vec<_> = (0..4)
            .map(|_| {
                let (root, data) = (root.clone(), data.clone());
                std::thread::spawn(move || {
                    let slots = Slots::new(&root, &data, 100);
                    for _ in 0..20 {
                        assert!(matches!(slots.boot().unwrap(), Boot::Trial { .. }));
                    }
                })
            })
            .collect();
        for c in counters {
            c.join().unwrap();
        }
        assert_eq!(slots.state().unwrap().trial.unwrap().boots, 80);
    }

    #[test]
    fn a_trial_is_committed_or_rolled_back_after_too_many_starts_with_its_databases() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let slots = Slots::new(&dir.path().join("root"), &data, 2);
        // The first install is committed as it lands.
        slots.install(&staged(dir.path(), "0.1.0")).unwrap();
        assert_eq!(runs(&slots), "appliance 0.1.0");
        assert_eq!(slots.boot().unwrap(), Boot::Committed);
        // A database the trial will change.
        let db = rusqlite::Connection::open(data.join("results.sqlite")).unwrap();
        db.execute_batch("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(db);
        slots.install(&staged(dir.path(), "0.2.0")).unwrap();
        assert_eq!(runs(&slots), "appliance 0.2.0");
        assert_eq!(slots.running(), Some(Slot::B));
        // Another install waits for the trial to end.
        assert!(matches!(
            slots.install(&staged(dir.path(), "0.3.0")),
            Err(SlotError::Refused(_))
        ));
        let db = rusqlite::Connection::open(data.join("results.sqlite")).unwrap();
        db.execute("INSERT INTO t VALUES (2)", []).unwrap();
        drop(db);
        assert_eq!(
            slots.boot().unwrap(),
            Boot::Trial {
                version: "0.2.0".into(),
                boots: 1
            }
        );
        assert!(matches!(
            slots.boot().unwrap(),
            Boot::Trial { boots: 2, .. }
        ));
        // The third start without a commit: back to 0.1.0 and its database.
        let Boot::RolledBack { reason } = slots.boot().unwrap() else {
            panic!("not rolled back");
        };
        assert!(reason.contains("0.2.0 started 2 times"), "{reason}");
        assert_eq!(runs(&slots), "appliance 0.1.0");
        let db = rusqlite::Connection::open(data.join("results.sqlite")).unwrap();
        let rows: i64 = db
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
        assert_eq!(slots.state().unwrap().last_error, Some(reason));
        // Installed again and committed: the next one goes to the other slot.
        slots.install(&staged(dir.path(), "0.2.1")).unwrap();
        assert_eq!(
            slots.boot().unwrap(),
            Boot::Trial {
                version: "0.2.1".into(),
                boots: 1
            }
        );
        assert_eq!(slots.commit().unwrap(), "0.2.1");
        assert_eq!(slots.boot().unwrap(), Boot::Committed);
        assert_eq!(
            slots.state().unwrap().committed,
            Some((Slot::B, "0.2.1".into()))
        );
        slots.install(&staged(dir.path(), "0.3.0")).unwrap();
        assert_eq!(slots.running(), Some(Slot::A));
    }

    #[test]
    fn a_rollback_a_crash_cut_short_is_finished_databases_included() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let slots = Slots::new(&dir.path().join("root"), &data, 3);
        slots.install(&staged(dir.path(), "0.1.0")).unwrap();
        let db = rusqlite::Connection::open(data.join("results.sqlite")).unwrap();
        db.execute_batch("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(db);
        slots.install(&staged(dir.path(), "0.2.0")).unwrap();
        let db = rusqlite::Connection::open(data.join("results.sqlite")).unwrap();
        db.execute("INSERT INTO t VALUES (2)", []).unwrap();
        drop(db);
        // As if the power went right after the link went back: intent written, link switched,
        // databases not restored yet.
        let mut state = slots.state().unwrap();
        state.rolling_back = Some("self-test failed".into());
        slots.write_state(&state).unwrap();
        slots.switch(Slot::A).unwrap();
        assert_eq!(slots.boot().unwrap(), Boot::Committed);
        let state = slots.state().unwrap();
        assert_eq!((state.trial, state.rolling_back), (None, None));
        assert_eq!(state.last_error.as_deref(), Some("self-test failed"));
        let db = rusqlite::Connection::open(data.join("results.sqlite")).unwrap();
        let rows: i64 = db
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
    }

    #[test]
    fn a_crash_between_recording_the_trial_and_the_switch_abandons_the_trial() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let slots = Slots::new(&dir.path().join("root"), &data, 3);
        slots.install(&staged(dir.path(), "0.1.0")).unwrap();
        slots.install(&staged(dir.path(), "0.2.0")).unwrap();
        // As if the switch never happened.
        slots.switch(Slot::A).unwrap();
        assert_eq!(slots.boot().unwrap(), Boot::Committed);
        assert_eq!(runs(&slots), "appliance 0.1.0");
        let state = slots.state().unwrap();
        assert_eq!(state.trial, None);
        assert!(state
            .last_error
            .unwrap()
            .contains("interrupted before the switch"));
    }
}
