//! Ingest benchmark: C-STORE throughput of the appliance against three reference receivers,
//! measured in one run on loopback with DCMTK `/usr/bin/storescu` as the sender.
//!
//! Receivers: the appliance (fsync before Success), DCMTK `storescp` (writes files, no fsync),
//! Orthanc (its default configuration fsyncs its storage area) and a plain pynetdicom SCP that
//! stores nothing. Scenarios, each repeated `--rounds N` times (default 3) with the rounds of
//! all receivers interleaved, so background load spreads over all of them:
//! - one association: one `storescu` sends the 108-slice CT series of `fixtures/ct-series`;
//! - four associations: four `storescu` processes start at once, each with its own 108 files.
//!
//! A run's wall time goes from spawning `storescu` to the exit of the last one; every exit
//! status is checked and every `-v` log must report 108 Success responses. Every instance sent
//! carries a SOP Instance UID never sent before (the appliance stores a re-sent one once, which
//! would flatter it): each copy of the series gets its Study, Series and SOP Instance UIDs
//! rewritten in place to same-length variants (last six digits replaced by the copy number).
//! The copies are written before a run starts and removed after it, outside the timed window;
//! before each run `sync(2)` writes back all dirty data (the fresh copies, earlier receivers'
//! unsynced files), so no run pays, inside its own fsyncs, for writes made before it began.
//!
//! DCMTK as packaged here (storescu, storescp, and Orthanc, which uses DCMTK's network layer)
//! leaves Nagle's algorithm on unless the environment sets `TCP_NODELAY=1`. With Nagle on, a
//! receiver advertising a small maximum PDU (16 KiB, the default of storescp and Orthanc) waits
//! on delayed ACKs for tens of milliseconds per instance. The default run keeps the tools'
//! defaults; `--tcp-nodelay` sets `TCP_NODELAY=1` for all of them (the appliance always sets
//! TCP_NODELAY on its own sockets).
//!
//! Prints a table (instances, seconds, instances/s, ms per instance) and the appliance's
//! ratios against its targets; exits 0 whether targets are met or not, non-zero if a send or
//! the check of what the receivers stored fails.
//!
//! The appliance runs with the harness's 1-second study quiet period, so studies complete (an
//! index write) while later runs store; `--study-quiet-seconds N` changes it.
//!
//! Run with `scripts/bench.sh [--rounds N] [--tcp-nodelay] [--study-quiet-seconds N]`.

use anyhow::{bail, ensure, Context, Result};
use hil_tests::appliance::{self, Appliance};
use hil_tests::fixtures::CtSeries;
use hil_tests::peers::{self, PeerProcess, STORESCU};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Concurrent associations in the second scenario.
const CONCURRENT: usize = 4;
/// Digits of every UID replaced by the copy number.
const SUFFIX_DIGITS: usize = 6;
/// Calling AE title of every `storescu`; the example configuration admits it from 127.0.0.1.
const CALLING_AE: &str = "STORESCU";

/// Targets for the appliance.
const TARGET_VS_STORESCP: f64 = 10.0;
const TARGET_VS_ORTHANC: f64 = 10.0;
const TARGET_VS_PYNETDICOM: f64 = 1.5;
const TARGET_CONCURRENT_RATE: f64 = 500.0;

fn main() {
    if let Err(e) = run() {
        eprintln!("ingest_bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let Options {
        rounds,
        tcp_nodelay,
        study_quiet_seconds,
    } = parse_options()?;
    if tcp_nodelay {
        // Inherited by storescu and by the storescp and Orthanc processes started below.
        std::env::set_var("TCP_NODELAY", "1");
    }
    let mut copies = CopyMaker::new(&CtSeries::load())?;
    let per_copy = copies.len();

    println!("Radiant Edge ingest benchmark");
    println!("  cpus (nproc):        {}", nproc());
    println!("  load average:        {}", load_average());
    println!("  sender:              {STORESCU} -v (DCMTK), loopback, calling AE {CALLING_AE}");
    println!(
        "  series:              fixtures/ct-series, {per_copy} instances, {} bytes in all; \
         fresh Study/Series/SOP Instance UIDs per copy",
        copies.bytes()
    );
    println!("  rounds:              {rounds} per receiver and scenario (interleaved)");
    println!(
        "  DCMTK TCP_NODELAY:   {}",
        if tcp_nodelay {
            "1 for storescu, storescp and Orthanc (--tcp-nodelay): Nagle off"
        } else {
            "unset (DCMTK default here: Nagle on; see --tcp-nodelay)"
        }
    );
    println!("  appliance quiet:     study_quiet_seconds = {study_quiet_seconds}");
    println!(
        "  appliance durability: each instance's file fdatasync'd and its folder fsync'd (shared by a \
         batch) before Success, always; the index commit is not fsync'd (rebuilt from the files)"
    );
    println!();

    let receivers = start_receivers(study_quiet_seconds)?;
    let scenarios = [1, CONCURRENT];
    // results[scenario][receiver]
    let mut results: Vec<Vec<Measurement>> = scenarios
        .iter()
        .map(|_| receivers.iter().map(|_| Measurement::default()).collect())
        .collect();
    let logs = tempfile::tempdir().context("temp dir for storescu logs")?;
    for (s, &associations) in scenarios.iter().enumerate() {
        for round in 1..=rounds {
            for (r, receiver) in receivers.iter().enumerate() {
                let sets: Vec<Copy> = (0..associations)
                    .map(|_| copies.make())
                    .collect::<Result<_>>()?;
                write_back_dirty_data();
                let elapsed = send(receiver, &sets, logs.path()).with_context(|| {
                    format!(
                        "{}, {associations} association(s), round {round}",
                        receiver.name()
                    )
                })?;
                eprintln!(
                    "  {:<12} {} assoc. round {round}: {:>4} instances in {:.3} s",
                    receiver.name(),
                    associations,
                    associations * per_copy,
                    elapsed.as_secs_f64()
                );
                results[s][r].add((associations * per_copy) as u64, elapsed);
                for set in sets {
                    set.remove()?;
                }
            }
        }
    }

    println!("Stored by the receivers (checked):");
    for (r, receiver) in receivers.iter().enumerate() {
        let sent: u64 = results.iter().map(|per| per[r].instances).sum();
        println!("  {:<12} {}", receiver.name(), receiver.check_stored(sent)?);
    }
    println!();
    println!("  load average after:  {}", load_average());
    println!();

    print_table(&receivers, &scenarios, &results);
    if !tcp_nodelay {
        println!(
            "Note: Nagle's algorithm is on in DCMTK's sockets here, so storescp and Orthanc \
             (16 KiB maximum PDU) wait on delayed ACKs per instance; rerun with --tcp-nodelay \
             to compare without that stall."
        );
        println!();
    }
    print_targets(&receivers, &results);
    Ok(())
}

struct Options {
    rounds: usize,
    tcp_nodelay: bool,
    study_quiet_seconds: u32,
}

const USAGE: &str = "usage: ingest_bench [--rounds N] [--tcp-nodelay] [--study-quiet-seconds N]";

/// `--rounds N` (default 3), `--tcp-nodelay`, `--study-quiet-seconds N` (default 1).
fn parse_options() -> Result<Options> {
    let mut options = Options {
        rounds: 3,
        tcp_nodelay: false,
        study_quiet_seconds: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => {
                options.rounds = number_after(&arg, args.next())? as usize;
                ensure!(options.rounds > 0, "--rounds must be at least 1");
            }
            "--study-quiet-seconds" => {
                options.study_quiet_seconds = number_after(&arg, args.next())?;
            }
            "--tcp-nodelay" => options.tcp_nodelay = true,
            "-h" | "--help" => {
                println!("{USAGE}   (builds and fixtures first: scripts/bench.sh)");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} ({USAGE})"),
        }
    }
    Ok(options)
}

fn number_after(flag: &str, value: Option<String>) -> Result<u32> {
    let value = value.with_context(|| format!("{flag} needs a number"))?;
    value
        .parse()
        .with_context(|| format!("{flag} {value}: not a number"))
}

/// sync(2): start and wait for writeback of every file system's dirty data.
fn write_back_dirty_data() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

fn nproc() -> String {
    std::thread::available_parallelism()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

// ---------------------------------------------------------------------------------------------
// Copies of the series with fresh UIDs

/// One fixture file and where in it the last digits of each UID to rewrite sit.
struct Template {
    name: String,
    bytes: Vec<u8>,
    suffix_at: Vec<usize>,
}

/// Writes copies of the series, each with its own Study, Series and SOP Instance UIDs.
struct CopyMaker {
    templates: Vec<Template>,
    root: TempDir,
    next: u32,
}

/// One copy on disk.
struct Copy {
    dir: PathBuf,
    files: Vec<PathBuf>,
}

impl Copy {
    fn remove(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).with_context(|| format!("remove {}", self.dir.display()))
    }
}

impl CopyMaker {
    fn new(series: &CtSeries) -> Result<CopyMaker> {
        let mut uids = vec![
            series.study_instance_uid.as_str(),
            series.series_instance_uid.as_str(),
        ];
        uids.extend(series.slices.iter().map(|s| s.sop_instance_uid.as_str()));
        check_rewritable(&uids)?;

        let mut templates = Vec::new();
        for (slice, path) in series.slices.iter().zip(series.paths()) {
            let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            let mut suffix_at = Vec::new();
            for (uid, least) in [
                (series.study_instance_uid.as_str(), 1),
                (series.series_instance_uid.as_str(), 1),
                // file meta (0002,0003) and dataset (0008,0018)
                (slice.sop_instance_uid.as_str(), 2),
            ] {
                let found = occurrences(&bytes, uid.as_bytes());
                ensure!(
                    found.len() >= least,
                    "{}: UID {uid} found {} times, expected at least {least}",
                    path.display(),
                    found.len()
                );
                suffix_at.extend(found.into_iter().map(|at| at + uid.len() - SUFFIX_DIGITS));
            }
            templates.push(Template {
                name: slice.file.clone(),
                bytes,
                suffix_at,
            });
        }
        Ok(CopyMaker {
            templates,
            root: tempfile::tempdir().context("temp dir for series copies")?,
            next: 1,
        })
    }

    fn len(&self) -> usize {
        self.templates.len()
    }

    fn bytes(&self) -> usize {
        self.templates.iter().map(|t| t.bytes.len()).sum()
    }

    /// Write the next copy: every rewritten UID ends in the copy number, zero-padded.
    fn make(&mut self) -> Result<Copy> {
        let k = self.next;
        ensure!(
            k < 10u32.pow(SUFFIX_DIGITS as u32),
            "ran out of copy numbers"
        );
        self.next += 1;
        let suffix = format!("{k:0width$}", width = SUFFIX_DIGITS);
        let dir = self.root.path().join(format!("copy-{suffix}"));
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut files = Vec::with_capacity(self.templates.len());
        for t in &self.templates {
            let mut bytes = t.bytes.clone();
            for &at in &t.suffix_at {
                bytes[at..at + SUFFIX_DIGITS].copy_from_slice(suffix.as_bytes());
            }
            let path = dir.join(&t.name);
            std::fs::write(&path, &bytes).with_context(|| format!("write {}", path.display()))?;
            files.push(path);
        }
        Ok(Copy { dir, files })
    }
}

/// Each UID must end in a component longer than the replaced digits (so the result stays a
/// valid UID of the same length), and the UIDs must stay distinct once those digits are equal.
fn check_rewritable(uids: &[&str]) -> Result<()> {
    let mut prefixes = std::collections::HashSet::new();
    for uid in uids {
        let last = uid.rsplit('.').next().unwrap_or_default();
        ensure!(
            last.len() > SUFFIX_DIGITS && last.bytes().all(|b| b.is_ascii_digit()),
            "UID {uid}: last component too short to rewrite its last {SUFFIX_DIGITS} digits"
        );
        ensure!(
            prefixes.insert(&uid[..uid.len() - SUFFIX_DIGITS]),
            "UID {uid}: not distinct from another UID of the series once rewritten"
        );
    }
    Ok(())
}

/// Start offsets of `needle` in `haystack`.
fn occurrences(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(at, _)| at)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Receivers

enum Receiver {
    Appliance(Appliance),
    Storescp(PeerProcess),
    Orthanc(PeerProcess),
    Pynetdicom(PeerProcess),
}

impl Receiver {
    fn name(&self) -> &'static str {
        match self {
            Receiver::Appliance(_) => "appliance",
            Receiver::Storescp(_) => "storescp",
            Receiver::Orthanc(_) => "orthanc",
            Receiver::Pynetdicom(_) => "pynetdicom",
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Receiver::Appliance(_) => "Radiant Edge appliance, fsync before Success",
            Receiver::Storescp(_) => {
                "DCMTK storescp +xa, one file per instance, no fsync, one association at a time"
            }
            Receiver::Orthanc(_) => {
                "Orthanc, default storage (SyncStorageArea: fsync) + SQLite index"
            }
            Receiver::Pynetdicom(_) => {
                "plain pynetdicom SCP, STORES NOTHING (answers Success only)"
            }
        }
    }

    fn called_ae(&self) -> &str {
        match self {
            Receiver::Appliance(app) => &app.ae_title,
            Receiver::Storescp(_) => "STORESCP",
            Receiver::Orthanc(_) => "ORTHANC",
            Receiver::Pynetdicom(_) => "ANY-SCP",
        }
    }

    fn port(&self) -> u16 {
        match self {
            Receiver::Appliance(app) => app.port,
            Receiver::Storescp(p) | Receiver::Orthanc(p) | Receiver::Pynetdicom(p) => p.port,
        }
    }

    /// What the receiver logged, to explain a failed send.
    fn diagnostics(&self) -> String {
        match self {
            Receiver::Appliance(app) => {
                format!(
                    "\nlast lines of the appliance log:\n{}",
                    tail(&app.log(), 30)
                )
            }
            _ => String::new(),
        }
    }

    /// Check the receiver holds exactly the `sent` instances (where it stores anything).
    fn check_stored(&self, sent: u64) -> Result<String> {
        match self {
            Receiver::Appliance(app) => {
                let metric = |name: &str| {
                    app.metric(name)
                        .with_context(|| format!("appliance /metrics lacks {name}"))
                };
                let received = metric("radiant_instances_received_total")?;
                let duplicates = metric("radiant_instances_duplicate_total")?;
                let batches = metric("radiant_commit_batches_total")?;
                ensure!(
                    received == sent as f64 && duplicates == 0.0,
                    "appliance stored {received} instances ({duplicates} duplicates) of {sent} sent"
                );
                Ok(format!(
                    "{received} instances stored, {duplicates} duplicates, {batches} group commits"
                ))
            }
            Receiver::Storescp(p) => {
                let files = peers::files_below(&p.storage_dir()).len() as u64;
                ensure!(files == sent, "storescp wrote {files} files of {sent} sent");
                Ok(format!("{files} files written"))
            }
            Receiver::Orthanc(p) => {
                let (status, body) = hil_tests::http_get(p.http_port, "/statistics")
                    .context("GET Orthanc /statistics")?;
                ensure!(status == 200, "Orthanc /statistics: HTTP {status}: {body}");
                let stats: serde_json::Value =
                    serde_json::from_str(&body).context("Orthanc /statistics is JSON")?;
                let count = stats["CountInstances"]
                    .as_u64()
                    .context("Orthanc /statistics lacks CountInstances")?;
                ensure!(
                    count == sent,
                    "Orthanc holds {count} instances of {sent} sent"
                );
                Ok(format!("{count} instances stored"))
            }
            Receiver::Pynetdicom(_) => Ok("nothing stored (by design)".into()),
        }
    }
}

fn start_receivers(study_quiet_seconds: u32) -> Result<Vec<Receiver>> {
    let mut receivers = Vec::new();
    let timed = |name: &str, start: Instant| {
        eprintln!("  started {name} in {:.2} s", start.elapsed().as_secs_f64());
    };

    let t = Instant::now();
    let app = Appliance::start(&|config| {
        appliance::set_dicom(config, "max_associations", 16i64);
        appliance::set_dicom(
            config,
            "study_quiet_seconds",
            i64::from(study_quiet_seconds),
        );
    });
    timed("appliance", t);
    receivers.push(Receiver::Appliance(app));

    let t = Instant::now();
    receivers.push(Receiver::Storescp(peers::start_storescp()));
    timed("storescp", t);

    let t = Instant::now();
    // Orthanc's modality entry is never used here: point it at a port nobody listens on.
    receivers.push(Receiver::Orthanc(peers::start_orthanc(
        "RADIANT",
        hil_tests::free_port(),
    )));
    timed("orthanc", t);

    let t = Instant::now();
    receivers.push(Receiver::Pynetdicom(peers::start_pynetdicom(false)));
    timed("pynetdicom", t);
    eprintln!();

    println!("Receivers:");
    for r in &receivers {
        println!("  {:<12} AE {:<9} {}", r.name(), r.called_ae(), r.what());
    }
    println!();
    Ok(receivers)
}

// ---------------------------------------------------------------------------------------------
// Sending

/// One `storescu -v` per copy, all spawned at once; the wall time until the last one exits.
fn send(receiver: &Receiver, copies: &[Copy], logs: &Path) -> Result<Duration> {
    let port = receiver.port().to_string();
    let mut log_paths = Vec::with_capacity(copies.len());
    let mut commands = Vec::with_capacity(copies.len());
    for (i, copy) in copies.iter().enumerate() {
        let log_path = logs.join(format!("{}-{i}.log", receiver.name()));
        let log =
            File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
        let mut cmd = Command::new(STORESCU);
        cmd.args(["-v", "-aet", CALLING_AE, "-aec", receiver.called_ae()])
            .arg("127.0.0.1")
            .arg(&port)
            .args(&copy.files)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicate log handle")?)
            .stderr(log);
        commands.push(cmd);
        log_paths.push(log_path);
    }

    let start = Instant::now();
    let mut children: Vec<Child> = Vec::with_capacity(commands.len());
    for cmd in &mut commands {
        match cmd.spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                for mut child in children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(e).context(format!("spawn {STORESCU} (apt-get install dcmtk)"));
            }
        }
    }
    let mut statuses = Vec::with_capacity(children.len());
    for child in &mut children {
        statuses.push(child.wait().context("wait for storescu")?);
    }
    let elapsed = start.elapsed();

    for ((status, copy), log_path) in statuses.iter().zip(copies).zip(&log_paths) {
        let log = std::fs::read_to_string(log_path)
            .with_context(|| format!("read {}", log_path.display()))?;
        let successes = peers::storescu_successes(&log).len();
        if !status.success() || successes != copy.files.len() {
            bail!(
                "storescu to {} (AE {}, port {port}) exited with {status}, {successes} of {} \
                 instances answered Success; last lines of its log:\n{}{}",
                receiver.name(),
                receiver.called_ae(),
                copy.files.len(),
                tail(&log, 12),
                receiver.diagnostics()
            );
        }
    }
    Ok(elapsed)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Default)]
struct Measurement {
    instances: u64,
    runs: Vec<Duration>,
}

impl Measurement {
    fn add(&mut self, instances: u64, elapsed: Duration) {
        self.instances += instances;
        self.runs.push(elapsed);
    }

    fn seconds(&self) -> f64 {
        self.runs.iter().map(Duration::as_secs_f64).sum()
    }

    fn rate(&self) -> f64 {
        self.instances as f64 / self.seconds()
    }

    fn ms_per_instance(&self) -> f64 {
        self.seconds() * 1000.0 / self.instances as f64
    }
}

fn print_table(receivers: &[Receiver], scenarios: &[usize], results: &[Vec<Measurement>]) {
    println!(
        "{:<12} {:>6} {:>9} {:>9} {:>11} {:>9}  runs (s)",
        "receiver", "assoc.", "instances", "seconds", "instances/s", "ms/inst."
    );
    for (s, associations) in scenarios.iter().enumerate() {
        for (r, receiver) in receivers.iter().enumerate() {
            let m = &results[s][r];
            let runs: Vec<String> = m
                .runs
                .iter()
                .map(|d| format!("{:.3}", d.as_secs_f64()))
                .collect();
            println!(
                "{:<12} {:>6} {:>9} {:>9.3} {:>11.1} {:>9.3}  {}",
                receiver.name(),
                associations,
                m.instances,
                m.seconds(),
                m.rate(),
                m.ms_per_instance(),
                runs.join(" ")
            );
        }
    }
    println!(
        "(ms/inst. is wall time per instance: with {CONCURRENT} associations, \
         of all of them together; pynetdicom stores nothing)"
    );
    println!();
}

fn print_targets(receivers: &[Receiver], results: &[Vec<Measurement>]) {
    let single = &results[0];
    let concurrent = &results[1];
    let rate_of = |name: &str, per: &[Measurement]| {
        receivers
            .iter()
            .position(|r| r.name() == name)
            .map(|i| per[i].rate())
            .unwrap_or(f64::NAN)
    };
    let appliance = rate_of("appliance", single);
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };

    println!("Targets (appliance):");
    for (peer, target) in [
        ("storescp", TARGET_VS_STORESCP),
        ("orthanc", TARGET_VS_ORTHANC),
        ("pynetdicom", TARGET_VS_PYNETDICOM),
    ] {
        let ratio = appliance / rate_of(peer, single);
        println!(
            "  1 association,  vs {peer:<11} {ratio:>7.2}x   (target >= {target}x)   {}",
            verdict(ratio >= target)
        );
    }
    let rate = rate_of("appliance", concurrent);
    println!(
        "  {CONCURRENT} associations, rate          {rate:>7.1}/s  (target >= {TARGET_CONCURRENT_RATE}/s) {}",
        verdict(rate >= TARGET_CONCURRENT_RATE)
    );
}
