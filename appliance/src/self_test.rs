//! The clinical self-test a firmware version passes before the updater commits it: a golden
//! study goes through this binary's real path (the DICOM SCP, study assembly, inference, the
//! SEG and SR, the outbox's C-STORE) to a loopback sink, within a latency budget, and the
//! result must equal the golden one within tolerance.
//!
//! It never touches the site's data or the PACS: two daemons of this binary run on loopback
//! with their own data folders under `<data_dir>/selftest-<pid>/` (removed afterwards), one the
//! appliance under test (the site's configuration with its network, learning, federation and
//! destinations replaced; the installed models read through a link), one the sink (inference
//! off). The golden folder holds `study/` (the DICOM files) and `expected.json` (what
//! `appliance infer` printed for that study with the version that made the bundle).

use crate::config::Config;
use crate::jobs;
use anyhow::Context;
use pacs_bridge::scu::{self, Destination, ScuConfig};
use pacs_bridge::store::index;
use serde::Serialize;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Relative tolerance on each label's voxel count.
const VOXEL_TOLERANCE: f64 = 0.01;
/// Absolute tolerance on the finding's probability.
const PROBABILITY_TOLERANCE: f64 = 0.02;

const TEST_AE: &str = "SELFTEST";
const SINK_AE: &str = "SELFTESTSINK";
const SENDER_AE: &str = "SELFTESTSCU";

/// How the self-test went.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub passed: bool,
    /// From the first byte sent to the SEG and SR both stored at the sink.
    pub seconds: f64,
    pub budget_seconds: f64,
    /// Every failed condition, in words; empty when passed.
    pub reasons: Vec<String>,
    /// Modalities of what arrived at the sink.
    pub received: Vec<String>,
}

/// A daemon of this binary, stopped (SIGTERM, then SIGKILL) when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn table<'a>(t: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    let entry = t
        .entry(key.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !entry.is_table() {
        *entry = toml::Value::Table(toml::Table::new());
    }
    match entry {
        toml::Value::Table(t) => t,
        _ => unreachable!("replaced by a table above"),
    }
}

/// The site's configuration made into one of the self-test's loopback daemons.
fn loopback_config(
    site: &toml::Table,
    data_dir: &Path,
    ae_title: &str,
    port: u16,
    peer_ae: &str,
) -> toml::Table {
    let mut c = site.clone();
    c.insert(
        "data_dir".into(),
        data_dir.to_string_lossy().as_ref().into(),
    );
    for key in ["federation", "update", "destinations"] {
        c.remove(key);
    }
    let dicom = table(&mut c, "dicom");
    dicom.remove("tls");
    dicom.insert("port".into(), i64::from(port).into());
    dicom.insert("bind".into(), "127.0.0.1".into());
    dicom.insert("ae_title".into(), ae_title.into());
    dicom.insert("study_quiet_seconds".into(), 1i64.into());
    let mut peer = toml::Table::new();
    peer.insert("ae_title".into(), peer_ae.into());
    peer.insert("host".into(), "127.0.0.1".into());
    dicom.insert("peers".into(), toml::Value::Array(vec![peer.into()]));
    table(&mut c, "http").insert("enabled".into(), false.into());
    table(&mut c, "learning").insert("enabled".into(), false.into());
    table(&mut c, "retention").insert("enabled".into(), false.into());
    c
}

/// Run the self-test of this binary on the site's configuration at `config_path` with the
/// golden study in `golden`.
pub fn run(config_path: &Path, golden: &Path, budget: Duration) -> anyhow::Result<Outcome> {
    let site: toml::Table = std::fs::read_to_string(config_path)
        .with_context(|| format!("read {}", config_path.display()))?
        .parse()
        .with_context(|| format!("{} is not TOML", config_path.display()))?;
    let config = Config::load(config_path)?;
    let expected: serde_json::Value = serde_json::from_slice(
        &std::fs::read(golden.join("expected.json")).context("golden expected.json")?,
    )
    .context("golden expected.json is not JSON")?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden.join("study"))
        .context("golden study/")?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "dcm"));
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "the golden study/ folder holds no .dcm file"
    );

    let work = config
        .data_dir
        .join(format!("selftest-{}", std::process::id()));
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(work.join("test"))?;
    let result = run_in(&site, &config, &work, &files, &expected, budget);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn run_in(
    site: &toml::Table,
    config: &Config,
    work: &Path,
    files: &[PathBuf],
    expected: &serde_json::Value,
    budget: Duration,
) -> anyhow::Result<Outcome> {
    let (sink_port, test_port) = (free_port()?, free_port()?);
    let sink_config = loopback_config(site, &work.join("sink"), SINK_AE, sink_port, TEST_AE);
    let mut sink_config = sink_config;
    table(&mut sink_config, "inference").insert("enabled".into(), false.into());
    sink_config.remove("routes");
    let mut test_config = loopback_config(site, &work.join("test"), TEST_AE, test_port, SENDER_AE);
    let mut sink = toml::Table::new();
    sink.insert("name".into(), "selftest-sink".into());
    sink.insert("ae_title".into(), SINK_AE.into());
    sink.insert("host".into(), "127.0.0.1".into());
    sink.insert("port".into(), i64::from(sink_port).into());
    test_config.insert("destinations".into(), toml::Value::Array(vec![sink.into()]));
    // The installed models, read where they are.
    std::os::unix::fs::symlink(config.data_dir.join("models"), work.join("test/models"))?;
    let exe = std::env::current_exe()?;
    let start = |name: &str, table: &toml::Table| -> anyhow::Result<Daemon> {
        let path = work.join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(table)?)?;
        let log = std::fs::File::create(work.join(format!("{name}.log")))?;
        Ok(Daemon(
            Command::new(&exe)
                .args(["serve", "--config"])
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        ))
    };
    let _sink = start("sink", &sink_config)?;
    let _test = start("test", &test_config)?;
    let listening = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    let up = Instant::now();
    while !(listening(sink_port) && listening(test_port)) {
        anyhow::ensure!(
            up.elapsed() < Duration::from_secs(60),
            "the self-test's daemons did not start within 60 s: {}",
            std::fs::read_to_string(work.join("test.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let began = Instant::now();
    let destination = Destination {
        ae_title: TEST_AE.into(),
        host: "127.0.0.1".into(),
        port: test_port,
        tls: None,
    };
    let outcomes = scu::send(&destination, &ScuConfig::new(SENDER_AE), files)
        .context("send the golden study")?;
    let mut reasons = Vec::new();
    let refused = outcomes.iter().filter(|o| o.result.is_err()).count();
    if refused > 0 {
        reasons.push(format!(
            "{refused} of {} golden instances not stored",
            files.len()
        ));
    }
    // Wait for the SEG and the SR at the sink.
    let sink_index = pacs_bridge::store::index_path(&work.join("sink"));
    let mut received = Vec::new();
    while began.elapsed() < budget {
        if sink_index.exists() {
            if let Ok(conn) = index::open_read_only(&sink_index) {
                received = conn
                    .prepare("SELECT modality FROM instances ORDER BY modality")?
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<_, _>>()?;
            }
        }
        if received.iter().any(|m| m == "SEG") && received.iter().any(|m| m == "SR") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let seconds = began.elapsed().as_secs_f64();
    if !(received.iter().any(|m| m == "SEG") && received.iter().any(|m| m == "SR")) {
        reasons.push(format!(
            "the SEG and the SR did not both reach the sink within {} s (received {received:?})",
            budget.as_secs_f64()
        ));
    } else {
        reasons.extend(compare(work, expected)?);
    }
    Ok(Outcome {
        passed: reasons.is_empty(),
        seconds,
        budget_seconds: budget.as_secs_f64(),
        reasons,
        received,
    })
}

/// The test daemon's result against the golden one: every label's voxels within 1 %, the
/// finding's probability within 0.02.
fn compare(work: &Path, expected: &serde_json::Value) -> anyhow::Result<Vec<String>> {
    let test = work.join("test");
    let conn = index::open_read_only(&pacs_bridge::store::index_path(&test))?;
    let study: String = conn.query_row(
        "SELECT study_uid FROM instances WHERE calling_ae = ?1 LIMIT 1",
        [SENDER_AE],
        |r| r.get(0),
    )?;
    let views = jobs::show(&test, &study)?;
    let Some(result) = views.iter().find_map(|v| v.result.clone()) else {
        return Ok(vec![format!(
            "no inference result for the golden study ({} jobs: {:?})",
            views.len(),
            views.iter().map(|v| v.error.clone()).collect::<Vec<_>>()
        )]);
    };
    let mut reasons = Vec::new();
    let labels = |v: &serde_json::Value| -> Vec<(i64, f64)> {
        v["labels"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| Some((l["value"].as_i64()?, l["voxels"].as_f64()?)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let got = labels(&result);
    let want = labels(expected);
    if want.is_empty() {
        reasons.push("expected.json lists no label".into());
    }
    for (value, voxels) in &want {
        match got.iter().find(|(v, _)| v == value) {
            Some((_, g)) if (g - voxels).abs() <= VOXEL_TOLERANCE * voxels.max(1.0) => {}
            Some((_, g)) => reasons.push(format!(
                "label {value}: {g} voxels, the golden result {voxels} (tolerance {} %)",
                VOXEL_TOLERANCE * 100.0
            )),
            None => reasons.push(format!("label {value} is missing from the result")),
        }
    }
    let probability = |v: &serde_json::Value| v["finding_probability"].as_f64();
    match (probability(&result), probability(expected)) {
        (Some(g), Some(w)) if (g - w).abs() <= PROBABILITY_TOLERANCE => {}
        (Some(g), Some(w)) => reasons.push(format!(
            "finding probability {g:.4}, the golden result {w:.4} (tolerance {PROBABILITY_TOLERANCE})"
        )),
        (None, Some(_)) => reasons.push("the result has no finding probability".into()),
        _ => {}
    }
    Ok(reasons)
}
