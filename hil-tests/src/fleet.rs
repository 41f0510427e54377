//! The fleet half under test: a mosquitto broker with mutual TLS and a certificate-keyed ACL,
//! the `federation` server and `updater` processes, each in its own temporary folder, with
//! their logs kept for assertions.

use crate::appliance::binary_named;
use crate::pki::{Issued, Pki};
use crate::{free_port, port_open, repo_root, wait_until};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// The ACL of `updater/PROTOCOL.md`, plus an observer that may read everything.
pub const ACL: &str = "\
pattern read radiant/v1/+/round
pattern read radiant/v1/+/global/#
pattern write radiant/v1/+/device/%u/up
pattern read radiant/v1/+/device/%u/down
pattern read radiant/v1/+/release/#
pattern write radiant/v1/+/device/%u/status
user federation-server
topic readwrite radiant/v1/#
user fleet-operator
topic readwrite radiant/v1/+/release/#
topic read radiant/v1/+/device/+/status
user observer
topic read #
";

/// The fleet's PKI: one CA, the broker's certificate, and one per client.
pub struct FleetPki {
    pub pki: Pki,
    pub ca: Issued,
    pub broker: Issued,
}

impl FleetPki {
    pub fn new() -> FleetPki {
        let pki = Pki::new();
        let ca = pki.ca("fleet");
        let broker = pki.issue(&ca, "broker", "localhost", &["localhost"]);
        let fleet = FleetPki { pki, ca, broker };
        fleet.open_to_the_broker();
        fleet
    }

    /// A client certificate of this fleet's CA with CN `cn`.
    pub fn client(&self, cn: &str) -> Issued {
        let issued = self.pki.issue(&self.ca, cn, cn, &[]);
        self.open_to_the_broker();
        issued
    }

    /// mosquitto started as root reads its files as the `mosquitto` user: the throw-away
    /// folder and its files must be readable by it (test keys only).
    fn open_to_the_broker(&self) {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.pki.dir.path();
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644));
        }
    }
}

impl Default for FleetPki {
    fn default() -> Self {
        FleetPki::new()
    }
}

fn open_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777));
}

/// mosquitto on loopback: TLS only, client certificates required, the certificate's CN as
/// user name, the ACL above, persistence in its folder (so a restart keeps sessions and
/// retained messages).
pub struct Broker {
    pub port: u16,
    pub dir: TempDir,
    child: Option<Child>,
}

impl Broker {
    pub fn start(pki: &FleetPki) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        open_dir(dir.path());
        let port = free_port();
        std::fs::write(dir.path().join("acl"), ACL).expect("write acl");
        let conf = format!(
            "per_listener_settings false\n\
             allow_anonymous false\n\
             persistence true\n\
             persistence_location {dir}/\n\
             autosave_interval 1\n\
             max_packet_size 300000\n\
             max_queued_messages 10000\n\
             acl_file {dir}/acl\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\n log_type warning\n log_type notice\n log_type information\n\
             listener {port} 127.0.0.1\n\
             cafile {ca}\n\
             certfile {cert}\n\
             keyfile {key}\n\
             require_certificate true\n\
             use_identity_as_username true\n",
            dir = dir.path().display(),
            ca = pki.ca.cert.display(),
            cert = pki.broker.cert.display(),
            key = pki.broker.key.display(),
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("write mosquitto.conf");
        let mut broker = Broker {
            port,
            dir,
            child: None,
        };
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        assert!(
            wait_until(Duration::from_secs(10), || port_open(self.port)),
            "mosquitto did not listen on {}: {}",
            self.port,
            self.log()
        );
    }

    /// Stop the broker (SIGTERM, so it saves its persistence) and start it again.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::signal(child.id(), libc::SIGTERM);
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A process of ours (server or updater) with its stderr in a log file.
pub struct Process {
    pub name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    pub fn start(binary: &str, args: &[&str], log: PathBuf) -> Process {
        let mut process = Process {
            name: binary.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            log,
            child: None,
        };
        process.launch();
        process
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = Command::new(binary_named(&self.name))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .current_dir(repo_root())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name));
        self.child = Some(child);
    }

    /// SIGTERM, wait; true if it exited 0.
    pub fn stop(&mut self) -> bool {
        match self.child.take() {
            Some(mut child) => {
                crate::signal(child.id(), libc::SIGTERM);
                child.wait().map(|s| s.success()).unwrap_or(false)
            }
            None => true,
        }
    }

    /// SIGKILL, then start again.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// SIGKILL (the machine it runs on lost power); [`Process::start_again`] restarts it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.launch();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Run a workspace binary to completion; its stdout, or a panic with its stderr.
pub fn run(binary: &str, args: &[&str]) -> String {
    let out = Command::new(binary_named(binary))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {binary}: {e}"));
    assert!(
        out.status.success(),
        "{binary} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `bundle make` of `version` for `arch` into `out` with `files` (its --file/--folder
/// arguments), updating from 0.1.0; it must succeed.
pub fn make_bundle(version: &str, arch: &str, out: &Path, files: &[String]) {
    let made = Command::new(binary_named("bundle"))
        .args(["make", "--version", version, "--min-from", "0.1.0"])
        .args(["--hardware", arch, "--out"])
        .arg(out)
        .args(files)
        .output()
        .expect("run bundle");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// A stand-in `bin/appliance` for bundles in tests of the updater's orchestration: a script
/// whose `self-test` takes `seconds` and passes or fails (naming a SEG that differs). The
/// real self-test (the golden study through the real appliance) has its own test.
pub fn stand_in_appliance(version: &str, passes: bool, seconds: f64) -> String {
    let report = if passes {
        format!(r#"{{"passed": true, "seconds": {seconds}, "reasons": []}}"#)
    } else {
        format!(
            r#"{{"passed": false, "seconds": {seconds}, "reasons": ["SEG differs from the golden one"]}}"#
        )
    };
    format!(
        "#!/bin/sh\n# appliance {version} (a test's stand-in)\nsleep {seconds}\n\
         [ \"$1\" = self-test ] && echo '{report}'\n"
    )
}
