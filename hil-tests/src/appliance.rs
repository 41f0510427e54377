//! The appliance under test: its binary, run on a configuration derived from the documented
//! example `image/etc/appliance.toml` (so the example is exercised by every test), with its own
//! data directory and ports.

use crate::{free_port, http_get, port_open, repo_root, signal, wait_until};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// The appliance binary next to the test executable (`target/<profile>/appliance`).
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("APPLIANCE_BIN") {
        return PathBuf::from(path);
    }
    binary_named("appliance")
}

/// A binary of the workspace next to the test executable (`target/<profile>/<name>`).
pub fn binary_named(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    // A test runs from target/<profile>/deps/, a binary (the benchmark) from target/<profile>/.
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let bin = d.join(name);
        if bin.is_file() {
            return bin;
        }
        if d.file_name().is_some_and(|n| n == "target") {
            break;
        }
        dir = d.parent();
    }
    panic!(
        "no {name} binary near {}: build it first (cargo build --release --workspace)",
        exe.display()
    )
}

/// The example configuration as a TOML table, for tests to adjust.
pub fn example_config() -> toml::Table {
    let text = std::fs::read_to_string(repo_root().join("image/etc/appliance.toml"))
        .expect("read image/etc/appliance.toml");
    text.parse().expect("image/etc/appliance.toml is TOML")
}

pub struct Appliance {
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub port: u16,
    pub http_port: u16,
    pub ae_title: String,
    /// Whether the configuration serves HTTP (health, metrics): launch then waits for it too.
    http_enabled: bool,
    child: Option<Child>,
    log_path: PathBuf,
}

/// Adjusts the example configuration before start.
pub type Tweak<'a> = &'a dyn Fn(&mut toml::Table);

impl Appliance {
    /// Start on the example configuration with fresh ports and data directory, a 1-second
    /// quiet period and a small disk floor; `tweak` may change anything else.
    pub fn start(tweak: Tweak<'_>) -> Appliance {
        let appliance = Appliance::configure(None, tweak);
        appliance.launched()
    }

    /// Like [`Appliance::start`] with the data directory at `data_dir` (on another file
    /// system, say), not yet launched.
    pub fn configure_at(data_dir: &Path, tweak: Tweak<'_>) -> Appliance {
        Appliance::configure(Some(data_dir), tweak)
    }

    fn launched(mut self) -> Appliance {
        self.launch();
        self
    }

    fn configure(data_dir: Option<&Path>, tweak: Tweak<'_>) -> Appliance {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = data_dir.map_or_else(|| dir.path().join("data"), Path::to_path_buf);
        let port = free_port();
        let http_port = free_port();
        let mut config = example_config();
        config.insert(
            "data_dir".into(),
            data_dir.to_string_lossy().as_ref().into(),
        );
        {
            let dicom = table(&mut config, "dicom");
            dicom.insert("port".into(), i64::from(port).into());
            dicom.insert("bind".into(), "127.0.0.1".into());
            dicom.insert("study_quiet_seconds".into(), 1i64.into());
            dicom.insert("shutdown_grace_seconds".into(), 10i64.into());
            // The example's peers, with the quiet period override removed so tests control it.
            if let Some(toml::Value::Array(peers)) = dicom.get_mut("peers") {
                for peer in peers.iter_mut() {
                    if let toml::Value::Table(p) = peer {
                        p.remove("study_quiet_seconds");
                    }
                }
            }
        }
        table(&mut config, "http").insert("port".into(), i64::from(http_port).into());
        table(&mut config, "storage").insert("min_free_mb".into(), 1i64.into());
        // Inference is off unless a test turns it on (and installs a model); results go nowhere
        // unless a test names a destination.
        table(&mut config, "inference").insert("enabled".into(), false.into());
        config.remove("destinations");
        tweak(&mut config);
        let ae_title = config
            .get("dicom")
            .and_then(|d| d.get("ae_title"))
            .and_then(|a| a.as_str())
            .unwrap_or("RADIANT")
            .to_string();
        let http_enabled = config
            .get("http")
            .and_then(|h| h.get("enabled"))
            .and_then(|e| e.as_bool())
            .unwrap_or(true);
        let config_path = dir.path().join("appliance.toml");
        std::fs::write(
            &config_path,
            toml::to_string(&config).expect("serialize config"),
        )
        .expect("write config");
        let log_path = dir.path().join("appliance.log");
        Appliance {
            dir,
            config_path,
            data_dir,
            port,
            http_port,
            ae_title,
            http_enabled,
            child: None,
            log_path,
        }
    }

    /// Start with inference on and the reference model installed; returns once the inference
    /// worker has loaded it.
    pub fn start_with_model(tweak: Tweak<'_>) -> Appliance {
        Appliance::start_with_package(&repo_root().join("models/reference/head-ct"), tweak)
    }

    /// Start with deepbet (`models/deepbet/package`) installed as `[inference] model`, run by
    /// ONNX Runtime on the CPU; returns once the inference worker has loaded it.
    pub fn start_with_deepbet(tweak: Tweak<'_>) -> Appliance {
        Appliance::start_with_package(&repo_root().join("models/deepbet/package"), &|c| {
            set(c, "inference", "model", "deepbet");
            use_ort_cpu(c);
            tweak(c);
        })
    }

    /// Start with inference on and the model package in `package` installed; returns once the
    /// inference worker has loaded it.
    pub fn start_with_package(package: &std::path::Path, tweak: Tweak<'_>) -> Appliance {
        let mut app = Appliance::start(&|c| {
            set(c, "inference", "enabled", true);
            tweak(c);
        });
        let out = app.cli(&["models", "install", &package.to_string_lossy()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The daemon picks the model up at start.
        app.restart_with_models();
        app
    }

    /// Stop and start the daemon, returning once the inference worker has loaded the
    /// installed models (the daemon reads them at start).
    pub fn restart_with_models(&mut self) {
        self.terminate(Duration::from_secs(15));
        self.launch();
        assert!(
            wait_until(Duration::from_secs(60), || self
                .log()
                .contains("inference worker ready")),
            "{}",
            self.log()
        );
    }

    /// `results show STUDY --json`: one object per job.
    pub fn jobs(&self, study: &str) -> Vec<serde_json::Value> {
        self.json_lines(&["results", "show", study, "--json"])
    }

    /// `outbox list --json`: one object per entry.
    pub fn outbox(&self) -> Vec<serde_json::Value> {
        self.json_lines(&["outbox", "list", "--json"])
    }

    /// `cases list --json`: one object per labelled case.
    pub fn cases(&self) -> Vec<serde_json::Value> {
        self.json_lines(&["cases", "list", "--json"])
    }

    /// `audit list --last 0`: every record of the audit trail, oldest first.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        self.json_lines(&["audit", "list", "--last", "0"])
    }

    fn json_lines(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let out = self.cli(args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Start the daemon process (again) and wait until it accepts DICOM connections.
    pub fn launch(&mut self) {
        if let Err(e) = self.try_launch(Duration::from_secs(20)) {
            panic!("{e}");
        }
    }

    /// Start the daemon process (again); `Err` with its log when it does not accept DICOM
    /// connections within `timeout` or exits first.
    pub fn try_launch(&mut self, timeout: Duration) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open appliance log");
        let child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn appliance");
        self.child = Some(child);
        let port = self.port;
        // Done waiting once it listens or once it exited. One DICOM probe connection that
        // succeeds, never a second: each holds one of the peer's association slots until the
        // daemon sees it close, and a test with a pool of two may need both at once. The SCP
        // binds before the HTTP endpoint starts, so HTTP is waited for after it.
        let (http_enabled, http_port) = (self.http_enabled, self.http_port);
        let mut dicom_listening = false;
        let mut listening = false;
        wait_until(timeout, || {
            if self.exited().is_some() {
                return true;
            }
            dicom_listening = dicom_listening || port_open(port);
            listening = dicom_listening && (!http_enabled || port_open(http_port));
            listening
        });
        if listening {
            Ok(())
        } else {
            Err(format!("appliance did not start; log:\n{}", self.log()))
        }
    }

    /// The daemon's exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL: no chance to flush or clean up anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the exit status (at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        signal(child.id(), libc::SIGTERM);
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        status
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Run the appliance CLI with this configuration.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .expect("run appliance CLI")
    }

    /// Run the appliance CLI with this configuration and `input` on its standard input.
    pub fn cli_with_input(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run appliance CLI");
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .expect("write the CLI's input");
        }
        child
            .wait_with_output()
            .expect("wait for the appliance CLI")
    }

    /// `studies list --json`, parsed.
    pub fn studies(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["studies", "list", "--json"]);
        assert!(
            out.status.success(),
            "studies list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    }

    /// Where the spool holds an instance, if the index lists it.
    pub fn stored_path(&self, sop_instance_uid: &str) -> Option<PathBuf> {
        let index = pacs_bridge::store::index_path(&self.data_dir);
        let conn = pacs_bridge::store::index::open_read_only(&index).ok()?;
        pacs_bridge::store::index::instance_path(&conn, sop_instance_uid)
            .ok()
            .flatten()
            .map(|p| self.data_dir.join(p))
    }

    pub fn http(&self, path: &str) -> (u16, String) {
        http_get(self.http_port, path).expect("HTTP request to the appliance")
    }

    /// A metric's value from /metrics (label set included in `name`, as printed); `None` when
    /// /metrics does not show it (yet).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.http("/metrics");
        metric_in(&body, name)
    }

    /// A metric's value from /metrics; a metric /metrics does not show fails the test with its
    /// name (a missing metric is never read as 0).
    pub fn expect_metric(&self, name: &str) -> f64 {
        let (status, body) = self.http("/metrics");
        metric_in(&body, name).unwrap_or_else(|| {
            panic!("metric {name} missing from /metrics (HTTP {status}):\n{body}")
        })
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The value of `name` in a Prometheus text exposition, if a sample line has it.
fn metric_in(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn table<'a>(config: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    config
        .entry(key.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("configuration section is a table")
}

/// Replace the peer list with these (AE title, optional host).
pub fn set_peers(config: &mut toml::Table, peers: &[(&str, Option<&str>)]) {
    let list: Vec<toml::Value> = peers
        .iter()
        .map(|(ae, host)| {
            let mut t = toml::Table::new();
            t.insert("ae_title".into(), (*ae).into());
            if let Some(h) = host {
                t.insert("host".into(), (*h).into());
            }
            toml::Value::Table(t)
        })
        .collect();
    table(config, "dicom").insert("peers".into(), toml::Value::Array(list));
}

/// Set `[dicom] key = value`.
pub fn set_dicom(config: &mut toml::Table, key: &str, value: impl Into<toml::Value>) {
    table(config, "dicom").insert(key.into(), value.into());
}

/// Send results to one destination (and nowhere else); fast retries for tests.
pub fn set_destination(config: &mut toml::Table, name: &str, ae_title: &str, port: u16) {
    let mut t = toml::Table::new();
    t.insert("name".into(), name.into());
    t.insert("ae_title".into(), ae_title.into());
    t.insert("host".into(), "127.0.0.1".into());
    t.insert("port".into(), i64::from(port).into());
    config.insert(
        "destinations".into(),
        toml::Value::Array(vec![toml::Value::Table(t)]),
    );
    let outbox = table(config, "outbox");
    outbox.insert("retry_initial_seconds".into(), 1i64.into());
    outbox.insert("retry_max_seconds".into(), 2i64.into());
    outbox.insert("connect_timeout_seconds".into(), 2i64.into());
    outbox.insert("io_timeout_seconds".into(), 10i64.into());
}

/// Set `[section] key = value`.
/// Run inference on ONNX Runtime's CPU provider, from the library of Python's `onnxruntime`.
pub fn use_ort_cpu(config: &mut toml::Table) {
    set(config, "inference", "backend", "ort-cpu");
    set(
        config,
        "inference",
        "onnxruntime_library",
        crate::ort_library().to_string_lossy().as_ref(),
    );
}

pub fn set(config: &mut toml::Table, section: &str, key: &str, value: impl Into<toml::Value>) {
    table(config, section).insert(key.into(), value.into());
}
