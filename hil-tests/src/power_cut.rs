//! Power-cut exploration of the appliance's durable paths on the lazy file system.
//!
//! An [`Explorer`] prepares one path's starting state on the real disk (a template data
//! directory; empty for ingest, which so starts with the appliance's first boot), then runs
//! trials: the template copied, mounted through [`LazyFs`], the daemon started on it, the path's
//! work driven by real peers, the power cut right after sync number `k` (counted from the
//! mount, so the daemon's start and recovery are in it), the daemon restarted on a fresh mount
//! of what survived, and the invariants checked. A recording run (no cut) gives the number of
//! syncs the start and the work make; `k` is drawn from `1..=syncs + 1` (the last: a cut once
//! the work is over and the appliance idle), so enough trials hit every window between two
//! syncs.
//!
//! Invariants, on every path: the daemon starts again and stays up (no crash loop); every
//! SQLite database under the data directory passes `PRAGMA integrity_check`; no panic in the
//! log. Per path, see [`DurablePath`].

use crate::appliance::{set, set_destination, Appliance};
use crate::federated::{self, server_setup, ServerSetup, Site, B0, W0};
use crate::fixtures::{self, CtSeries};
use crate::fleet::{Broker, FleetPki, Process};
use crate::lazyfs::model::{CutOptions, CutSummary};
use crate::lazyfs::LazyFs;
use crate::peers::{start_storescp, storescu_successes, PeerProcess, STORESCU};
use crate::{repo_root, site};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The durable paths explored, each with what must hold after a cut anywhere in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurablePath {
    /// A first boot on an empty data folder, then three associations at once, each sending a
    /// new study, which completes after its quiet second. After the cut: every instance
    /// acknowledged with Success is indexed and byte-identical; the spool holds exactly the
    /// files the index names (no partial or orphan file).
    Ingest,
    /// A received study (durable before the cut) completes, its job runs the reference model,
    /// commits its result and outbox rows, and the outbox delivers the SEG and SR to a DCMTK
    /// `storescp`. After the cut and a restart: the study's 108 instances are indexed; it ends
    /// with exactly one job, done, with one result; every outbox entry of it is sent.
    Completion,
    /// `appliance studies purge --all` removes two finished studies. After the cut: no index
    /// row names a missing file, and once retention has run again no purged study leaves a
    /// file behind; each study is either whole or gone.
    Purge,
    /// Two radiologist SEGs come back by `storescu`: each becomes a labelled case (the first
    /// held out), the learner stores the second's features, fine-tunes the head, the gate
    /// accepts it and it becomes the champion. After the cut and a restart: every SEG
    /// acknowledged is indexed and intact and becomes an accepted case; learning ends with one
    /// accepted champion head, fine-tuned on the training case; `heads list` reads every head.
    Learning,
    /// `appliance models install` of the reference package. After the cut: `models verify`
    /// passes (a version is either whole or absent) and installing again succeeds.
    ModelInstall,
    /// A firmware update on a site running 0.2.0 (committed in slot A, a received study in its
    /// databases), from signed `file://` repositories: `updater update --now` of 0.3.0, whose
    /// self-test fails (fetched, staged, installed into slot B, databases snapshotted, switched
    /// on trial, rolled back with the snapshot restored), then of 0.4.0, whose self-test
    /// passes (installed again into slot B, committed). After the cut, before anything runs:
    /// a recorded trial has its whole snapshot. Then the unit's `updater boot` succeeds,
    /// `current` points at a slot whose every file verifies and which the state names, 0.3.0
    /// is never committed, the index keeps every instance, and updating again ends with 0.4.0
    /// committed.
    Update,
    /// The site's part of a federated round: the appliance handed over its head fine-tuned
    /// from global 1 (in the template); `updater run` on the mount fetches global 1, builds
    /// the noised update for round 1 (its ε accounted), queues, sends it, and installs global
    /// 2, which the federation server (quorum 1, with its broker on the real disk: only the
    /// site loses power) aggregated from it. After the cut and a restart of the updater: it
    /// ends with global 2 installed and nothing queued; the round counted the site once; the
    /// update the server counted is the one the site's outbox keeps (a site that forgot it
    /// would build another with fresh noise: its data released twice, once unaccounted); the
    /// site's ε is spent.
    FederatedRound,
}

impl DurablePath {
    pub const ALL: [DurablePath; 7] = [
        DurablePath::Ingest,
        DurablePath::Completion,
        DurablePath::Learning,
        DurablePath::Purge,
        DurablePath::ModelInstall,
        DurablePath::Update,
        DurablePath::FederatedRound,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DurablePath::Ingest => "ingest",
            DurablePath::Completion => "completion",
            DurablePath::Learning => "learning",
            DurablePath::Purge => "purge",
            DurablePath::ModelInstall => "model-install",
            DurablePath::Update => "update",
            DurablePath::FederatedRound => "federated-round",
        }
    }

    pub fn parse(name: &str) -> Option<DurablePath> {
        DurablePath::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// A class of the appliance's syncs the file system can be told to ignore, to measure which
/// of them the invariants need (a sync that can go breaks nothing when ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsynced {
    /// fdatasync of an instance's file before it is renamed into the spool.
    InstanceFiles,
    /// fsync of the spool's study folders and of the spool folder.
    SpoolFolders,
    /// The spool index's commits (fsyncs of `index.sqlite` and its WAL).
    Index,
}

impl Unsynced {
    pub const ALL: [Unsynced; 3] = [
        Unsynced::InstanceFiles,
        Unsynced::SpoolFolders,
        Unsynced::Index,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Unsynced::InstanceFiles => "instance-files",
            Unsynced::SpoolFolders => "spool-folders",
            Unsynced::Index => "index",
        }
    }

    pub fn parse(name: &str) -> Option<Unsynced> {
        Unsynced::ALL.into_iter().find(|u| u.name() == name)
    }

    /// Whether a sync of `path` (relative to the mount) is of this class.
    fn matches(self, path: &Path, dir: bool) -> bool {
        let in_spool = path.starts_with("data/spool");
        match self {
            Unsynced::InstanceFiles => in_spool && !dir,
            Unsynced::SpoolFolders => in_spool && dir,
            Unsynced::Index => path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("index.sqlite")),
        }
    }
}

/// One trial's outcome.
#[derive(Debug, Clone)]
pub struct TrialReport {
    pub cut_after: u64,
    pub seed: u64,
    /// Whether the work reached sync `cut_after` (else the cut fell once it was over).
    pub reached: bool,
    /// Instances the peers were told were stored (ingest).
    pub acknowledged: usize,
    pub summary: CutSummary,
    pub violations: Vec<String>,
    pub seconds: f64,
}

/// A new study sent by one association: its files and their SOP Instance UIDs.
struct Study {
    uid: String,
    files: Vec<PathBuf>,
    sop_of: HashMap<PathBuf, String>,
}

/// One path's prepared state and inputs.
pub struct Explorer {
    path: DurablePath,
    work: TempDir,
    studies: Vec<Study>,
    lesion_study: String,
    destination: Option<PeerProcess>,
    /// Update: the signed repositories of the two releases, in the order they are taken.
    repositories: Vec<PathBuf>,
    /// Update: the instances the template's index holds.
    indexed: usize,
    /// Update: what each `updater update` of the last trial's work said.
    pub update_outcomes: Vec<String>,
    /// FederatedRound: the fleet's certificates, and the last trial's broker, server, site.
    fleet_pki: Option<FleetPki>,
    federation: Option<Federation>,
    ignored: Option<Unsynced>,
    /// Syncs the work made in the recording run.
    pub trace: u64,
    /// Those syncs, each named by its path.
    pub trace_names: Vec<String>,
    trials: u64,
}

const STUDIES_PER_INGEST: usize = 3;
const SLICES_PER_STUDY: usize = 10;

impl Explorer {
    /// Prepare `path`'s template and run it once without a cut (which must pass its checks).
    pub fn new(path: DurablePath) -> Result<Explorer, String> {
        Explorer::ignoring(path, None)
    }

    /// Like [`Explorer::new`], with the syncs of `ignored` answered but not performed (the
    /// run without a cut is then not checked: it cannot tell).
    pub fn ignoring(path: DurablePath, ignored: Option<Unsynced>) -> Result<Explorer, String> {
        let work = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut explorer = Explorer {
            path,
            work,
            studies: Vec::new(),
            lesion_study: String::new(),
            destination: None,
            repositories: Vec::new(),
            indexed: 0,
            update_outcomes: Vec::new(),
            fleet_pki: None,
            federation: None,
            ignored,
            trace: 0,
            trace_names: Vec::new(),
            trials: 0,
        };
        explorer.prepare()?;
        let recording = explorer.trial(u64::MAX, 0);
        if ignored.is_none() && !recording.violations.is_empty() {
            return Err(format!(
                "{}: the run without a cut already fails: {:?}",
                path.name(),
                recording.violations
            ));
        }
        // The update path is only explored if it really rolls back and then commits.
        if path == DurablePath::Update && explorer.update_outcomes != ["rolled_back", "committed"] {
            return Err(format!(
                "update: the run without a cut said {:?}, not a rollback then a commit",
                explorer.update_outcomes
            ));
        }
        Ok(explorer)
    }

    fn template(&self) -> PathBuf {
        self.work.path().join("template")
    }

    fn tweak(&self, config: &mut toml::Table, trial: bool) {
        match self.path {
            DurablePath::Completion => {
                set(config, "inference", "enabled", true);
                if trial {
                    if let Some(peer) = &self.destination {
                        set_destination(config, "pacs", "STORESCP", peer.port);
                    }
                } else {
                    // Prepared: the study is received but must not complete before the trial.
                    set(config, "dicom", "study_quiet_seconds", 3600i64);
                }
            }
            DurablePath::Learning => {
                set(config, "inference", "enabled", true);
                set(config, "learning", "min_new_cases", 1i64);
                set(config, "learning", "holdout_every", 2i64);
                set(config, "learning", "min_holdout_cases", 1i64);
                set(config, "learning", "interval_hours", 0i64);
            }
            // A finished study may go at once.
            DurablePath::Purge => set(config, "retention", "grace_seconds", 0i64),
            DurablePath::Ingest
            | DurablePath::ModelInstall
            | DurablePath::Update
            | DurablePath::FederatedRound => {}
        }
    }

    fn prepare(&mut self) -> Result<(), String> {
        let data = self.template().join("data");
        std::fs::create_dir_all(self.template()).map_err(|e| e.to_string())?;
        let series = CtSeries::load();
        let count = match self.path {
            DurablePath::Ingest => STUDIES_PER_INGEST,
            DurablePath::Purge => 2,
            DurablePath::Update => 1,
            _ => 0,
        };
        for n in 0..count {
            let (uid, files) = fixtures::new_study(&series, SLICES_PER_STUDY, self.work.path(), n);
            let sop_of = files
                .iter()
                .map(|f| Ok((f.clone(), sop_instance_uid(f)?)))
                .collect::<Result<_, String>>()?;
            self.studies.push(Study { uid, files, sop_of });
        }
        if self.path == DurablePath::Ingest {
            // Nothing before the first boot.
            return Ok(());
        }
        let mut app = Appliance::configure_at(&data, &|c| self.tweak(c, false));
        if self.path == DurablePath::Completion {
            self.destination = Some(start_storescp());
        }
        if matches!(self.path, DurablePath::Completion | DurablePath::Learning) {
            install_reference_model(&app)?;
        }
        app.try_launch(Duration::from_secs(30))?;
        match self.path {
            DurablePath::Completion => {
                let (files, study) = fixtures::lesion_series();
                self.lesion_study = study;
                let log = send(&app, &files);
                if storescu_successes(&log).len() != files.len() {
                    return Err(format!("preparing: not every slice was stored:\n{log}"));
                }
            }
            DurablePath::Update => {
                let log = send(&app, &self.studies[0].files);
                self.indexed = storescu_successes(&log).len();
                if self.indexed != self.studies[0].files.len() {
                    return Err(format!("preparing: not every slice was stored:\n{log}"));
                }
            }
            DurablePath::Purge => {
                for study in &self.studies {
                    send(&app, &study.files);
                }
                let complete = crate::wait_until(Duration::from_secs(30), || {
                    let studies = app.studies();
                    self.studies.iter().all(|s| {
                        studies
                            .iter()
                            .any(|j| j["study_uid"] == s.uid.as_str() && j["state"] == "complete")
                    })
                });
                if !complete {
                    return Err(format!(
                        "preparing: studies not complete: {:?}",
                        app.studies()
                    ));
                }
            }
            DurablePath::Learning => {
                // Two site studies inferred, and the radiologist's SEG of each.
                let mut labels = Vec::new();
                for (tag, offset) in [("A", [0.0, -10.0, 6.0]), ("B", [6.0, 8.0, -6.0])] {
                    let (files, study) = site::site_study(self.work.path(), tag, offset);
                    let job = site::infer(&app, &files, &study);
                    let seg = self.work.path().join(format!("{tag}-radiologist.dcm"));
                    site::radiologist_seg(
                        self.work.path(),
                        tag,
                        &site::seg_of(&app, &job),
                        &seg,
                        None,
                    );
                    labels.push(seg);
                }
                let sop_of = labels
                    .iter()
                    .map(|f| Ok((f.clone(), sop_instance_uid(f)?)))
                    .collect::<Result<_, String>>()?;
                self.studies.push(Study {
                    uid: String::new(),
                    files: labels,
                    sop_of,
                });
            }
            DurablePath::Ingest | DurablePath::ModelInstall | DurablePath::FederatedRound => {}
        }
        app.terminate(Duration::from_secs(15))
            .ok_or_else(|| "preparing: the daemon did not stop".to_string())?;
        if self.path == DurablePath::Update {
            self.prepare_update(&app)?;
        }
        if self.path == DurablePath::FederatedRound {
            // The head the appliance fine-tuned from global 1 on five cases.
            let w: Vec<f32> = W0.iter().map(|w| w + 0.125).collect();
            federated::put_local_head(&data, 1, &w, &B0, 5);
            self.fleet_pki = Some(FleetPki::new());
        }
        Ok(())
    }

    /// A trial's broker and federation server (on the real disk), and the site on the mount
    /// with its updater running.
    fn start_federation(&self, app: &Appliance) -> Result<Federation, String> {
        let pki = self
            .fleet_pki
            .as_ref()
            .ok_or_else(|| "the fleet's certificates were not prepared".to_string())?;
        let broker = Broker::start(pki);
        let server = server_setup(pki, &broker, &[SITE], 1, 120, "fedavg");
        let mut config = std::fs::read_to_string(&server.config).map_err(|e| e.to_string())?;
        // Updates one by one, each noised on the device (so its ε is spent).
        config.push_str("secure_aggregation = false\nnoise_multiplier = 1.0\n");
        std::fs::write(&server.config, config).map_err(|e| e.to_string())?;
        let server_process = Process::start(
            "federation",
            &["serve", "--config", &server.config.to_string_lossy()],
            server.dir.path().join("server.log"),
        );
        let site_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let site = Site::with_data(pki, &broker, &server, SITE, site_dir, app.data_dir.clone());
        let updater = site.updater();
        Ok(Federation {
            _broker: broker,
            server,
            _server_process: server_process,
            site,
            updater,
        })
    }

    /// The update path's repositories and the site's first install: 0.2.0 published and
    /// installed (committed in slot A), then 0.3.0 (failing its self-test) published; the
    /// second repository is the first plus 0.4.0 (passing), as the fleet publishes it later.
    fn prepare_update(&mut self, app: &Appliance) -> Result<(), String> {
        let first = self.work.path().join("repositories/first");
        let second = self.work.path().join("repositories/second");
        run_ok(
            Command::new(crate::appliance::binary_named("fleet"))
                .args(["repo", "init"])
                .arg(&first),
        )?;
        self.publish(&first, "0.2.0", true)?;
        let config = updater_config(app, &first)?;
        let installed = updater_json(&config, &["update", "--now", "--running", "0.1.0"])?;
        if installed["state"] != "committed" || installed["version"] != "0.2.0" {
            return Err(format!("preparing: the first install said {installed}"));
        }
        self.publish(&first, "0.3.0", false)?;
        copy_tree(&first, &second)?;
        self.publish(&second, "0.4.0", true)?;
        self.repositories = vec![first, second];
        Ok(())
    }

    /// Make a release's bundle (a stand-in appliance whose self-test passes or fails, and a
    /// model file in a second folder) and publish it in `repository`.
    fn publish(&self, repository: &Path, version: &str, passes: bool) -> Result<(), String> {
        let stage = self.work.path().join(format!("release-{version}"));
        std::fs::create_dir_all(&stage).map_err(|e| e.to_string())?;
        let appliance = stage.join("appliance");
        let model = stage.join("model.onnx");
        std::fs::write(
            &appliance,
            crate::fleet::stand_in_appliance(version, passes, 0.2),
        )
        .and_then(|()| {
            let bytes: Vec<u8> = (0..64 * 1024)
                .map(|i| (i * 7 + version.len()) as u8)
                .collect();
            std::fs::write(&model, bytes)
        })
        .map_err(|e| e.to_string())?;
        let bundle = stage.join(format!("radiant-edge-{version}.tar"));
        run_ok(
            Command::new(crate::appliance::binary_named("bundle"))
                .args(["make", "--version", version, "--min-from", "0.1.0"])
                .args(["--hardware", std::env::consts::ARCH, "--out"])
                .arg(&bundle)
                .arg(format!("--file=bin/appliance={}:755", appliance.display()))
                .arg(format!("--file=models/model.onnx={}:644", model.display())),
        )?;
        run_ok(
            Command::new(crate::appliance::binary_named("fleet"))
                .args(["repo", "publish"])
                .arg(repository)
                .arg(&bundle),
        )?;
        Ok(())
    }

    /// The cut point of trial `i` of `n`: strided over the trace so every window is hit once
    /// `n` reaches the trace's length, then offset by the seed.
    pub fn cut_point(&self, i: u64, n: u64, seed: u64) -> u64 {
        let windows = self.trace + 1;
        if n >= windows {
            1 + (i + seed) % windows
        } else {
            1 + (i * windows / n.max(1) + seed % windows.max(1)) % windows
        }
    }

    /// One trial: cut right after sync `cut_after` of the work (`u64::MAX`: only at its end).
    pub fn trial(&mut self, cut_after: u64, seed: u64) -> TrialReport {
        let options = CutOptions {
            reorder_dirs: true,
            tear: true,
        };
        self.trial_with(cut_after, seed, options)
    }

    /// [`Explorer::trial`] with the cut's options: without `reorder_dirs`, no unsynced directory
    /// operation survives (the cut that finds a missing directory fsync every time).
    pub fn trial_with(&mut self, cut_after: u64, seed: u64, options: CutOptions) -> TrialReport {
        let started = Instant::now();
        let mut violations = Vec::new();
        self.trials += 1;
        self.federation = None;
        let root = self.work.path().join(format!("trial-{}", self.trials));
        let disk = root.join("disk");
        let mnt = root.join("mnt");
        let setup = std::fs::create_dir_all(&mnt)
            .map_err(|e| e.to_string())
            .and_then(|()| copy_tree(&self.template(), &disk));
        let mut report = TrialReport {
            cut_after,
            seed,
            reached: false,
            acknowledged: 0,
            summary: CutSummary::default(),
            violations: Vec::new(),
            seconds: 0.0,
        };
        if let Err(e) = setup {
            report.violations.push(format!("setting up: {e}"));
            return report;
        }
        let fs = match LazyFs::mount(&disk, &mnt) {
            Ok(fs) => fs,
            Err(e) => {
                report.violations.push(format!("mounting: {e}"));
                return report;
            }
        };
        if let Some(class) = self.ignored {
            fs.ignore_syncs(Box::new(move |path, dir| class.matches(path, dir)));
        }
        let mut app = Appliance::configure_at(&mnt.join("data"), &|c| self.tweak(c, true));
        // Syncs count from the mount: the daemon's start (its recovery) is part of the trace.
        fs.cut_after_sync(cut_after);
        let observed = match app.try_launch(Duration::from_secs(30)) {
            Ok(()) => self.work(&mut app, &fs),
            // The power went while it started.
            Err(_) if fs.frozen() => Vec::new(),
            Err(e) => {
                report.violations.push(format!("first start: {e}"));
                app.kill9();
                return report;
            }
        };
        report.reached = fs.frozen();
        report.acknowledged = observed.len();
        if cut_after == u64::MAX {
            self.trace = fs.syncs();
            self.trace_names = fs.trace();
        }
        fs.freeze();
        app.kill9();
        if let Some(federation) = self.federation.as_mut() {
            federation.updater.kill();
        }
        match fs.power_cut(options, seed) {
            Ok(summary) => report.summary = summary,
            Err(e) => {
                report.violations.push(format!("power cut: {e}"));
                return report;
            }
        }
        let fs = match LazyFs::mount(&disk, &mnt) {
            Ok(fs) => fs,
            Err(e) => {
                report
                    .violations
                    .push(format!("mounting after the cut: {e}"));
                return report;
            }
        };
        if self.path == DurablePath::Update {
            self.check_update_before_start(&app, &mut violations);
        }
        match app.try_launch(Duration::from_secs(30)) {
            Err(e) => violations.push(format!("restart: {}", tail(&e, 2000))),
            Ok(()) => {
                if let Some(federation) = self.federation.as_mut() {
                    federation.updater.start_again();
                } else if self.path == DurablePath::FederatedRound {
                    // The power went before the round's work began: it runs after the restart.
                    match self.start_federation(&app) {
                        Ok(federation) => self.federation = Some(federation),
                        Err(e) => violations.push(format!("starting the federation: {e}")),
                    }
                }
                self.check(&app, &observed, &mut violations);
                check_databases(&app.data_dir, &mut violations);
                if app.exited().is_some() {
                    violations.push(format!(
                        "the daemon exited after the restart: {}",
                        tail(&app.log(), 2000)
                    ));
                }
            }
        }
        if app.log().contains("panicked") {
            violations.push(format!("a panic in the log: {}", tail(&app.log(), 2000)));
        }
        app.terminate(Duration::from_secs(15));
        let _ = fs.unmount();
        let _ = std::fs::remove_dir_all(&root);
        report.violations = violations;
        report.seconds = started.elapsed().as_secs_f64();
        report
    }

    /// Drive the path's work until it is done or the file system froze; returns what the
    /// peers were told (acknowledged files).
    fn work(&mut self, app: &mut Appliance, fs: &LazyFs) -> Vec<PathBuf> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let until = |done: &dyn Fn() -> bool| {
            while Instant::now() < deadline && !fs.frozen() && !done() {
                std::thread::sleep(Duration::from_millis(250));
            }
        };
        let acknowledged = match self.path {
            DurablePath::Ingest => {
                let senders: Vec<_> = self
                    .studies
                    .iter()
                    .map(|s| {
                        let (ae, port, files) = (app.ae_title.clone(), app.port, s.files.clone());
                        std::thread::spawn(move || send_to(&ae, port, &files))
                    })
                    .collect();
                until(&|| senders.iter().all(|s| s.is_finished()));
                if fs.frozen() {
                    // The machine stopped: the senders see the connection drop.
                    app.kill9();
                }
                senders
                    .into_iter()
                    .filter_map(|s| s.join().ok())
                    .flat_map(|log| storescu_successes(&log))
                    .collect()
            }
            DurablePath::Completion => {
                until(&|| self.completion_done(app));
                Vec::new()
            }
            DurablePath::Learning => {
                // One association per SEG, in order: the first case is the held-out one.
                let mut acknowledged = Vec::new();
                for seg in &self.studies[0].files {
                    let log = send_label(app, seg);
                    acknowledged.extend(storescu_successes(&log));
                    if fs.frozen() {
                        break;
                    }
                }
                until(&|| learned(app));
                acknowledged
            }
            DurablePath::Purge => {
                let _ = app.cli(&["studies", "purge", "--all"]);
                Vec::new()
            }
            DurablePath::ModelInstall => {
                let _ = install_reference_model(app);
                Vec::new()
            }
            DurablePath::FederatedRound => {
                match self.start_federation(app) {
                    Ok(federation) => {
                        let installed = federation.site.global(2);
                        self.federation = Some(federation);
                        until(&|| {
                            installed.is_file() && installed.with_extension("json").is_file()
                        });
                    }
                    Err(e) => {
                        self.federation = None;
                        eprintln!("federated round: {e}");
                    }
                }
                Vec::new()
            }
            DurablePath::Update => {
                let mut outcomes = Vec::new();
                for repository in &self.repositories {
                    let said = updater_config(app, repository)
                        .and_then(|config| updater_json(&config, &["update", "--now"]));
                    outcomes.push(match said {
                        Ok(json) => json["state"].as_str().unwrap_or("?").to_string(),
                        Err(e) => e,
                    });
                    if fs.frozen() {
                        break;
                    }
                }
                self.update_outcomes = outcomes;
                Vec::new()
            }
        };
        // Let what the work set off (a study completing, a checkpoint) settle into the trace.
        let mut last = fs.syncs();
        let mut quiet_since = Instant::now();
        while !fs.frozen() && quiet_since.elapsed() < Duration::from_millis(1500) {
            std::thread::sleep(Duration::from_millis(100));
            if fs.syncs() != last {
                last = fs.syncs();
                quiet_since = Instant::now();
            }
        }
        acknowledged
    }

    fn completion_done(&self, app: &Appliance) -> bool {
        let jobs = app.jobs(&self.lesion_study);
        let outbox = app.outbox();
        jobs.len() == 1
            && jobs[0]["state"] == "done"
            && outbox.len() >= 2
            && outbox.iter().all(|e| e["state"] == "sent")
    }

    /// Every file a peer was told was stored is indexed and byte-identical.
    fn check_acknowledged(
        &self,
        app: &Appliance,
        acknowledged: &[PathBuf],
        violations: &mut Vec<String>,
    ) {
        let sop_of: HashMap<&PathBuf, &String> =
            self.studies.iter().flat_map(|s| s.sop_of.iter()).collect();
        for file in acknowledged {
            let Some(sop) = sop_of.get(file) else {
                violations.push(format!("{} acknowledged but unknown", file.display()));
                continue;
            };
            match app.stored_path(sop) {
                None => violations.push(format!(
                    "{} was acknowledged but is not indexed",
                    file.display()
                )),
                Some(stored) => {
                    if !same_dataset(file, &stored) {
                        violations.push(format!(
                            "{} was acknowledged but its stored copy differs",
                            file.display()
                        ));
                    }
                }
            }
        }
    }

    fn check(&self, app: &Appliance, acknowledged: &[PathBuf], violations: &mut Vec<String>) {
        match self.path {
            DurablePath::Ingest => {
                self.check_acknowledged(app, acknowledged, violations);
                spool_matches_index(&app.data_dir, violations);
            }
            DurablePath::Learning => {
                self.check_acknowledged(app, acknowledged, violations);
                let labels = self.studies[0].files.len();
                let done = crate::wait_until(Duration::from_secs(240), || {
                    let cases = app.cases();
                    cases.len() >= acknowledged.len()
                        && cases.iter().all(|c| c["state"] == "accepted")
                        && (acknowledged.len() < labels || learned(app))
                });
                if !done {
                    violations.push(format!(
                        "{} SEGs acknowledged; cases {:?}; heads {:?}",
                        acknowledged.len(),
                        app.cases(),
                        head_list(app)
                    ));
                }
                match head_list(app) {
                    Err(e) => violations.push(format!("heads list: {e}")),
                    Ok(heads) => {
                        let champions = heads.iter().filter(|h| h["champion"] == true).count();
                        if champions != 1 {
                            violations.push(format!("{champions} champion heads: {heads:?}"));
                        }
                        let tuned = heads.iter().filter(|h| h["state"] == "accepted").count();
                        if tuned > 1 {
                            violations
                                .push(format!("the one training case was learned {tuned} times"));
                        }
                    }
                }
            }
            DurablePath::Completion => {
                let indexed = index_paths(&app.data_dir).map(|p| p.len()).unwrap_or(0);
                if indexed != 108 {
                    violations.push(format!("{indexed} of 108 received instances indexed"));
                }
                let done =
                    crate::wait_until(Duration::from_secs(120), || self.completion_done(app));
                if !done {
                    violations.push(format!(
                        "the study did not end with one job done and its results sent: jobs {:?}, outbox {:?}",
                        app.jobs(&self.lesion_study),
                        app.outbox()
                    ));
                }
                let results = count_rows(&app.data_dir.join("results.sqlite"), "results");
                if results != Ok(1) {
                    violations.push(format!("results rows: {results:?}, one expected"));
                }
            }
            DurablePath::Purge => {
                spool_has_every_indexed_file(&app.data_dir, violations);
                let out = app.cli(&["studies", "purge", "--all"]);
                if !out.status.success() {
                    violations.push(format!(
                        "purging again after the restart failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                spool_matches_index(&app.data_dir, violations);
                let left = index_paths(&app.data_dir)
                    .map(|p| p.len())
                    .unwrap_or(usize::MAX);
                if left != 0 {
                    violations.push(format!("{left} instances left after purging again"));
                }
            }
            DurablePath::Update => self.check_update(app, violations),
            DurablePath::FederatedRound => self.check_federated_round(violations),
            DurablePath::ModelInstall => {
                let out = app.cli(&["models", "verify"]);
                if !out.status.success() {
                    violations.push(format!(
                        "models verify after the cut: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                if let Err(e) = install_reference_model(app) {
                    // Already installed whole is fine; anything else is not.
                    if !e.contains("already installed") {
                        violations.push(format!("installing again: {e}"));
                    }
                }
            }
        }
    }
}

impl Explorer {
    /// The update configuration of the site with the last repository (the one a start after
    /// the cut would use).
    fn site_update_config(&self, app: &Appliance) -> Result<PathBuf, String> {
        let repository = self
            .repositories
            .last()
            .ok_or_else(|| "no update repository prepared".to_string())?;
        updater_config(app, repository)
    }

    /// Before anything runs after the cut: a trial `state.json` records has its whole snapshot
    /// of the databases (a rollback puts it back); then the unit's `updater boot` succeeds.
    fn check_update_before_start(&self, app: &Appliance, violations: &mut Vec<String>) {
        let state_path = install_root(app).join("state.json");
        match std::fs::read(&state_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                violations.push("state.json is gone: the committed 0.2.0 is forgotten".into())
            }
            Err(e) => violations.push(format!("state.json: {e}")),
            Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Err(e) => violations.push(format!("state.json does not parse: {e}")),
                Ok(state) => {
                    if let Some(snapshot) = state["trial"]["snapshot"].as_str() {
                        self.check_snapshot(Path::new(snapshot), violations);
                    }
                }
            },
        }
        self.check_remembered_metadata(app, violations);
        match self
            .site_update_config(app)
            .and_then(|config| updater_json(&config, &["boot"]))
        {
            Ok(boot) if boot.get("boot").is_some() => {}
            Ok(other) => violations.push(format!("updater boot said {other}")),
            Err(e) => violations.push(format!("updater boot: {e}")),
        }
    }

    /// The repository's timestamp version the updater's next load reads back as the newest
    /// it saw is never below what it knew before the trace, nor below the version of a
    /// repository it took a release from (staged, or in a slot): a power cut must not reopen
    /// the door to older signed metadata.
    fn check_remembered_metadata(&self, app: &Appliance, violations: &mut Vec<String>) {
        let mut floor = remembered_timestamp(&self.template().join("data/update/tuf"));
        for (release, repository) in ["0.3.0", "0.4.0"].iter().zip(&self.repositories) {
            if took_release(app, release) {
                let published = repository.join("repository/metadata/timestamp.json");
                floor = floor.max(timestamp_version(&published).unwrap_or(0));
            }
        }
        let remembered = remembered_timestamp(&app.data_dir.join("update/tuf"));
        if remembered < floor {
            violations.push(format!(
                "the updater remembers timestamp version {remembered}, but it saw {floor}: \
                 older signed metadata would be taken"
            ));
        }
    }

    /// A trial's snapshot holds each database the site had, whole, the index with every
    /// instance.
    fn check_snapshot(&self, snapshot: &Path, violations: &mut Vec<String>) {
        for name in ["index.sqlite", "results.sqlite"] {
            if !self.template().join("data").join(name).exists() {
                continue;
            }
            let copy = snapshot.join(name);
            if !copy.is_file() {
                violations.push(format!(
                    "a trial is recorded but its snapshot lacks {name} ({})",
                    snapshot.display()
                ));
            }
        }
        let instances = count_rows(&snapshot.join("index.sqlite"), "instances");
        if instances != Ok(self.indexed as i64) {
            violations.push(format!(
                "the trial's snapshot of the index holds {instances:?} instances, {} expected",
                self.indexed
            ));
        }
    }

    /// After the restart: what runs verifies and is what the state says; the index keeps
    /// every instance; updating again ends with 0.4.0 committed and running.
    fn check_update(&self, app: &Appliance, violations: &mut Vec<String>) {
        let config = match self.site_update_config(app) {
            Ok(config) => config,
            Err(e) => return violations.push(e),
        };
        check_running_slot(app, &config, "after the cut", violations);
        let instances = count_rows(&app.data_dir.join("index.sqlite"), "instances");
        if instances != Ok(self.indexed as i64) {
            violations.push(format!(
                "the index holds {instances:?} instances, {} expected",
                self.indexed
            ));
        }
        // A trial the cut interrupted is finished first (its self-test, then its commit or
        // rollback), so 0.4.0 may take more than one run.
        let mut said = Vec::new();
        for _ in 0..3 {
            match updater_json(&config, &["update", "--now"]) {
                Ok(json) => {
                    let done = (json["state"] == "committed" && json["version"] == "0.4.0")
                        || (json["state"] == "up_to_date" && json["running"] == "0.4.0");
                    said.push(json);
                    if done {
                        break;
                    }
                }
                Err(e) => {
                    violations.push(format!("updating again: {e}"));
                    return;
                }
            }
        }
        if check_running_slot(app, &config, "updated again", violations).as_deref() != Some("0.4.0")
        {
            violations.push(format!(
                "updating again did not end with 0.4.0 committed: {said:?}"
            ));
        }
    }
}

impl Explorer {
    /// After the restart of the site and its updater: global 2 installed and nothing queued;
    /// round 1 counted the site once, with the update its outbox keeps; ε spent.
    fn check_federated_round(&self, violations: &mut Vec<String>) {
        let Some(federation) = &self.federation else {
            return violations.push("the federation did not start".into());
        };
        let site = &federation.site;
        let mut status = Err(String::new());
        let settled = crate::wait_until(Duration::from_secs(90), || {
            status = updater_json(&site.config, &["status", "--json"]);
            status.as_ref().is_ok_and(|s| {
                s["global_version"] == 2 && s["queued_updates"] == 0 && s["connected"] == true
            })
        });
        if !settled {
            violations.push(format!(
                "the site did not end with global 2 and nothing queued: {status:?}; updater: {}",
                log_summary(&federation.updater.log())
            ));
        }
        if let Err(e) = federated::try_read_head(&site.global(2)) {
            violations.push(format!("global 2 as handed over: {e}"));
        }
        let round = federated::rounds(&federation.server)
            .into_iter()
            .find(|r| r["round"] == 1);
        match round {
            Some(r) if r["state"] == "aggregated" && r["participants"] == 1 => {}
            other => violations.push(format!("round 1 on the server: {other:?}")),
        }
        let counted = query_text(
            &federation.server.dir.path().join("data/federation.sqlite"),
            &format!("SELECT blob FROM updates WHERE round = 1 AND device = '{SITE}'"),
        );
        let kept = query_text(
            &site.data().join("federation/updater.sqlite"),
            "SELECT blob FROM outbox WHERE round = 1",
        );
        if counted.is_err() || counted != kept {
            violations.push(format!(
                "the server counted update {counted:?} from the site, whose outbox keeps {kept:?}"
            ));
        }
        let spent = status
            .as_ref()
            .ok()
            .and_then(|s| s["epsilon"].as_f64())
            .unwrap_or(0.0);
        if spent <= 0.0 {
            violations.push(format!(
                "the site's update went out noised but its ε is {spent}: {status:?}"
            ));
        }
    }
}

/// The lines of a log that say what went wrong (errors, warnings, a panic's message, the
/// error a process exited with), at most the last twenty.
fn log_summary(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("ERROR")
                || l.contains("WARN")
                || l.contains("panicked")
                || l.starts_with("Error")
        })
        .collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A federated round's peers in one trial.
struct Federation {
    _broker: Broker,
    server: ServerSetup,
    _server_process: Process,
    site: Site,
    updater: Process,
}

/// The one site of the federated-round path.
const SITE: &str = "site-a";

/// The one text value `sql` selects from `db`, read only.
fn query_text(db: &Path, sql: &str) -> Result<String, String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("{}: {e}", db.display()))?;
    let _ = conn.busy_timeout(Duration::from_secs(5));
    conn.query_row(sql, [], |r| r.get(0))
        .map_err(|e| format!("{}: {e}", db.display()))
}

/// `current` points at a slot whose every file verifies against its bundle.json, and the
/// state names that version (the trial's, else the committed one); a version that failed its
/// self-test is never committed. The committed version when there is no trial.
fn check_running_slot(
    app: &Appliance,
    config: &Path,
    when: &str,
    violations: &mut Vec<String>,
) -> Option<String> {
    let slots = match updater_json(config, &["slots"]) {
        Ok(slots) => slots,
        Err(e) => {
            violations.push(format!("{when}: updater slots: {e}"));
            return None;
        }
    };
    let manifest = match image::bundle::verify_dir(&install_root(app).join("current")) {
        Ok(manifest) => manifest,
        Err(e) => {
            violations.push(format!("{when}: current does not verify: {e}; {slots}"));
            return None;
        }
    };
    if slots["committed"][1] == "0.3.0" {
        violations.push(format!(
            "{when}: 0.3.0 failed its self-test but is committed"
        ));
    }
    let named = if slots["trial"].is_null() {
        &slots["committed"][1]
    } else {
        &slots["trial"]["version"]
    };
    if *named != manifest.version.as_str() {
        violations.push(format!(
            "{when}: current runs {} but the state says {slots}",
            manifest.version
        ));
        return None;
    }
    slots["trial"].is_null().then(|| manifest.version.clone())
}

/// `signed.version` of a TUF metadata file, `None` when it is missing or does not parse.
fn timestamp_version(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    json["signed"]["version"].as_u64()
}

/// The timestamp version the updater's next load trusts as seen: its durable record
/// (`seen/`, put back before tough reads), else tough's own file; 0 when neither parses.
fn remembered_timestamp(tuf: &Path) -> u64 {
    timestamp_version(&tuf.join("seen/timestamp.json"))
        .or_else(|| timestamp_version(&tuf.join("timestamp.json")))
        .unwrap_or(0)
}

/// Whether the updater took `release` from its repository: it is staged, or a slot holds it.
fn took_release(app: &Appliance, release: &str) -> bool {
    let in_slot = |slot: &str| {
        let manifest = install_root(app)
            .join("slots")
            .join(slot)
            .join("bundle.json");
        std::fs::read(manifest)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|m| m["version"] == release)
    };
    app.data_dir.join("update/staged").join(release).is_dir() || in_slot("a") || in_slot("b")
}

/// The install root of the site whose data directory `app` runs on: next to it, on the same
/// file system.
fn install_root(app: &Appliance) -> PathBuf {
    app.data_dir
        .parent()
        .unwrap_or(&app.data_dir)
        .join("install")
}

/// The site's `[update]` configuration for `repository` (a signed repository read through
/// `file://`), written next to the appliance's configuration. The restart it asks for is a
/// no-op: the checks restart the appliance themselves.
fn updater_config(app: &Appliance, repository: &Path) -> Result<PathBuf, String> {
    let name = repository
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let config = app.dir.path().join(format!("update-{name}.toml"));
    let text = format!(
        "data_dir = {:?}\n[update]\nenabled = true\nrepository = \"file://{}/repository/\"\n\
         trusted_root = {:?}\ninstall_root = {:?}\nmax_boot_attempts = 3\nself_test = true\n\
         restart_command = [\"/bin/true\"]\n",
        app.data_dir,
        repository.display(),
        repository.join("repository/metadata/1.root.json"),
        install_root(app),
    );
    std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
    Ok(config)
}

/// `updater ARGS --config CONFIG`: the JSON it prints (whatever its exit status: a refused or
/// rolled-back update exits 1 and says why), or its stderr when it printed none.
fn updater_json(config: &Path, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = Command::new(crate::appliance::binary_named("updater"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .map_err(|e| format!("updater: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).map_err(|_| {
        format!(
            "updater {args:?} exited {} without JSON: {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 1000)
        )
    })
}

/// Run `command`; its stdout, or its stderr as the error.
fn run_ok(command: &mut Command) -> Result<String, String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `heads list --json`, or why it failed.
fn head_list(app: &Appliance) -> Result<Vec<serde_json::Value>, String> {
    let out = app.cli(&["heads", "list", "--json"]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Whether a fine-tuned head passed the gate and is the champion.
fn learned(app: &Appliance) -> bool {
    head_list(app).is_ok_and(|heads| {
        heads
            .iter()
            .any(|h| h["state"] == "accepted" && h["champion"] == true)
    })
}

/// A radiologist's SEG by `storescu -R` (SEG is not in storescu's default proposal); its log.
fn send_label(app: &Appliance, seg: &Path) -> String {
    Command::new(STORESCU)
        .args([
            "-v",
            "-R",
            "-aet",
            "STORESCU",
            "-aec",
            &app.ae_title,
            "127.0.0.1",
        ])
        .arg(app.port.to_string())
        .arg(seg)
        .stdout(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default()
}

fn install_reference_model(app: &Appliance) -> Result<(), String> {
    let package = repo_root().join("models/reference/head-ct");
    let out = app.cli(&["models", "install", &package.to_string_lossy()]);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn send(app: &Appliance, files: &[PathBuf]) -> String {
    send_to(&app.ae_title, app.port, files)
}

/// `storescu -v` of `files` in one association; its log.
fn send_to(ae_title: &str, port: u16, files: &[PathBuf]) -> String {
    Command::new(STORESCU)
        .args(["-v", "-aet", "STORESCU", "-aec", ae_title, "127.0.0.1"])
        .arg(port.to_string())
        .args(files)
        .stdout(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default()
}

fn sop_instance_uid(file: &Path) -> Result<String, String> {
    let out = Command::new("/usr/bin/dcmdump")
        .args(["-q", "-s", "+P", "0008,0018"])
        .arg(file)
        .output()
        .map_err(|e| format!("dcmdump: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split('[')
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .map(|uid| uid.trim_end_matches('\0').to_string())
        .ok_or_else(|| format!("no SOP Instance UID in {}", file.display()))
}

fn same_dataset(original: &Path, stored: &Path) -> bool {
    match (std::fs::read(original), std::fs::read(stored)) {
        (Ok(a), Ok(b)) => {
            let (a, b) = (
                fixtures::dataset_after_meta(&a),
                fixtures::dataset_after_meta(&b),
            );
            a.is_some() && a == b
        }
        _ => false,
    }
}

/// The spool paths the index names (relative to the data directory).
fn index_paths(data_dir: &Path) -> Result<BTreeSet<PathBuf>, String> {
    let index = pacs_bridge::store::index_path(data_dir);
    let conn =
        rusqlite::Connection::open_with_flags(&index, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("open {}: {e}", index.display()))?;
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let mut stmt = conn
        .prepare("SELECT path FROM instances")
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(|e| e.to_string())?;
    rows.map(|r| r.map(PathBuf::from).map_err(|e| e.to_string()))
        .collect()
}

/// Every file the index names exists.
fn spool_has_every_indexed_file(data_dir: &Path, violations: &mut Vec<String>) {
    match index_paths(data_dir) {
        Err(e) => violations.push(format!("reading the index: {e}")),
        Ok(paths) => {
            for p in paths.iter().filter(|p| !data_dir.join(p).is_file()) {
                violations.push(format!("the index names {} but it is gone", p.display()));
            }
        }
    }
}

/// The spool holds exactly the files the index names: nothing missing, no partial file left.
fn spool_matches_index(data_dir: &Path, violations: &mut Vec<String>) {
    spool_has_every_indexed_file(data_dir, violations);
    let Ok(indexed) = index_paths(data_dir) else {
        return;
    };
    let spool = data_dir.join("spool");
    for file in crate::peers::files_below(&spool) {
        let relative = file.strip_prefix(data_dir).unwrap_or(&file).to_path_buf();
        if !indexed.contains(&relative) {
            violations.push(format!(
                "{} is in the spool but not indexed",
                relative.display()
            ));
        }
    }
}

/// `PRAGMA integrity_check` of every database under the data directory.
fn check_databases(data_dir: &Path, violations: &mut Vec<String>) {
    for file in crate::peers::files_below(data_dir) {
        if file.extension().is_none_or(|e| e != "sqlite") {
            continue;
        }
        let check = rusqlite::Connection::open_with_flags(
            &file,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|c| {
            c.busy_timeout(Duration::from_secs(5))?;
            c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        });
        match check {
            Ok(ok) if ok == "ok" => {}
            other => violations.push(format!("{}: integrity_check {other:?}", file.display())),
        }
    }
}

fn count_rows(db: &Path, table: &str) -> Result<i64, String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| e.to_string())?;
    let _ = conn.busy_timeout(Duration::from_secs(5));
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .map_err(|e| e.to_string())
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for entry in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type().map_err(|e| e.to_string())?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(entry.path()).map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink(link, &target).map_err(|e| e.to_string())?;
        } else {
            std::fs::copy(entry.path(), &target)
                .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn tail(text: &str, max: usize) -> &str {
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    &text[start..]
}
