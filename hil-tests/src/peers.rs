//! Real DICOM peers on loopback: DCMTK's `storescu`/`echoscu`/`storescp`, Orthanc, and a plain
//! pynetdicom SCP. DCMTK tools are called by absolute path: pip's pynetdicom installs Python
//! tools of the same names that may come first on PATH.

use crate::{free_port, port_open, repo_root, wait_until};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use tempfile::TempDir;

pub const STORESCU: &str = "/usr/bin/storescu";
pub const ECHOSCU: &str = "/usr/bin/echoscu";
pub const STORESCP: &str = "/usr/bin/storescp";
pub const ORTHANC: &str = "/usr/sbin/Orthanc";

/// The `storescu` option that proposes exactly this transfer syntax, so the file travels in
/// its own encoding (no transcoding by the sender).
pub fn storescu_proposal(transfer_syntax: &str) -> &'static str {
    match transfer_syntax {
        "1.2.840.10008.1.2" => "-xi",
        "1.2.840.10008.1.2.1" => "-xe",
        "1.2.840.10008.1.2.2" => "-xb",
        "1.2.840.10008.1.2.1.99" => "-xd",
        "1.2.840.10008.1.2.5" => "-xr",
        "1.2.840.10008.1.2.4.50" => "-xy",
        "1.2.840.10008.1.2.4.51" => "-xx",
        "1.2.840.10008.1.2.4.57" | "1.2.840.10008.1.2.4.70" => "-xs",
        "1.2.840.10008.1.2.4.80" => "-xt",
        "1.2.840.10008.1.2.4.81" => "-xu",
        "1.2.840.10008.1.2.4.90" => "-xv",
        "1.2.840.10008.1.2.4.91" => "-xw",
        other => panic!("no storescu proposal option for {other}"),
    }
}

/// Run DCMTK `storescu -v` as `calling_ae` against `called_ae` on `port` with extra options.
pub fn storescu(
    calling_ae: &str,
    called_ae: &str,
    port: u16,
    options: &[&str],
    files: &[PathBuf],
) -> Output {
    Command::new(STORESCU)
        .args(["-v", "-aet", calling_ae, "-aec", called_ae])
        .args(options)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .args(files)
        .output()
        .expect("run DCMTK storescu (apt-get install dcmtk)")
}

/// Files `storescu -v` logged as answered with Success, in order.
pub fn storescu_successes(log: &str) -> Vec<PathBuf> {
    let mut current: Option<PathBuf> = None;
    let mut done = Vec::new();
    for line in log.lines() {
        if let Some(file) = line.strip_prefix("I: Sending file: ") {
            current = Some(PathBuf::from(file.trim()));
        } else if line.starts_with("I: Received Store Response (Success)") {
            if let Some(f) = current.take() {
                done.push(f);
            }
        }
    }
    done
}

pub fn echoscu(calling_ae: &str, called_ae: &str, port: u16) -> Output {
    Command::new(ECHOSCU)
        .args(["-aet", calling_ae, "-aec", called_ae, "127.0.0.1"])
        .arg(port.to_string())
        .output()
        .expect("run DCMTK echoscu (apt-get install dcmtk)")
}

/// A peer process killed when dropped.
pub struct PeerProcess {
    pub name: &'static str,
    pub dir: TempDir,
    pub port: u16,
    pub http_port: u16,
    child: Child,
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PeerProcess {
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }
}

/// DCMTK `storescp` writing every instance to its own file (no fsync), accepting all
/// transfer syntaxes.
pub fn start_storescp() -> PeerProcess {
    spawn_storescp(&[])
}

/// DCMTK `storescp -B`: writes each dataset exactly as it arrived, the reference for what
/// crossed the wire.
pub fn start_storescp_bit_preserving() -> PeerProcess {
    spawn_storescp(&["-B"])
}

fn spawn_storescp(extra: &[&str]) -> PeerProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = dir.path().join("storage");
    std::fs::create_dir_all(&storage).expect("storescp storage dir");
    let port = free_port();
    let child = Command::new(STORESCP)
        .args(["-aet", "STORESCP", "+xa"])
        .args(extra)
        .arg("-od")
        .arg(&storage)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn DCMTK storescp");
    let peer = PeerProcess {
        name: "dcmtk-storescp",
        dir,
        port,
        http_port: 0,
        child,
    };
    assert!(
        wait_until(Duration::from_secs(10), || port_open(port)),
        "storescp did not start"
    );
    peer
}

/// rsyslogd in the foreground, taking RFC 5424 over UDP on a loopback port and writing each
/// message as received, one per line, to `messages` in its folder (`PeerProcess::dir`).
pub fn start_rsyslog() -> PeerProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let conf = dir.path().join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{work}\")\n\
             module(load=\"imudp\")\n\
             input(type=\"imudp\" address=\"127.0.0.1\" port=\"{port}\")\n\
             template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
             *.* action(type=\"omfile\" file=\"{out}\" template=\"raw\")\n",
            work = dir.path().display(),
            out = dir.path().join("messages").display(),
        ),
    )
    .expect("write rsyslog.conf");
    let child = Command::new("/usr/sbin/rsyslogd")
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.path().join("rsyslogd.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rsyslogd (apt-get install rsyslog)");
    // UDP has no port to probe: wait for rsyslogd to have bound it.
    let bound = wait_until(Duration::from_secs(10), || {
        std::net::UdpSocket::bind(("127.0.0.1", port)).is_err()
    });
    assert!(bound, "rsyslogd did not bind UDP port {port}");
    PeerProcess {
        name: "rsyslogd",
        dir,
        port,
        http_port: 0,
        child,
    }
}

/// The plain pynetdicom storage SCP in `hil-tests/peers/pynetdicom_scp.py` (AE title ANY-SCP);
/// with `write_files` it writes each dataset to a file, as a typical SCP does.
pub fn start_pynetdicom(write_files: bool) -> PeerProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("hil-tests/peers/pynetdicom_scp.py"))
        .args(["--port", &port.to_string()]);
    if write_files {
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("pynetdicom storage dir");
        cmd.arg("--out").arg(storage);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the pynetdicom SCP (python3 with pynetdicom)");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut first = String::new();
    let _ = BufReader::new(stdout).read_line(&mut first);
    assert_eq!(first.trim(), "ready", "pynetdicom SCP did not start");
    PeerProcess {
        name: "pynetdicom",
        dir,
        port,
        http_port: 0,
        child,
    }
}

/// A static HTTPS server (`hil-tests/peers/https_static.py`: Python's `http.server` behind TLS)
/// serving `root` on loopback with `cert`/`key`; `port` is where it listens.
pub fn start_https_static(root: &Path, cert: &Path, key: &Path) -> PeerProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new("python3")
        .arg(repo_root().join("hil-tests/peers/https_static.py"))
        .args([root, cert, key])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn python3 https_static.py");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut first = String::new();
    let _ = BufReader::new(stdout).read_line(&mut first);
    let port = first
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the HTTPS server did not start: {first:?}"));
    PeerProcess {
        name: "https-static",
        dir,
        port,
        http_port: port,
        child,
    }
}

/// Orthanc with a throw-away configuration: DICOM and HTTP on loopback, AE title ORTHANC, one
/// modality `appliance` pointing at (`appliance_ae`, `appliance_port`).
pub fn start_orthanc(appliance_ae: &str, appliance_port: u16) -> PeerProcess {
    start_orthanc_at(appliance_ae, appliance_port, free_port(), free_port())
}

/// GET `path` from Orthanc's REST API, which must answer 200 with JSON.
pub fn orthanc_json(orthanc: &PeerProcess, path: &str) -> serde_json::Value {
    let (status, body) = crate::http_get(orthanc.http_port, path).expect("Orthanc REST");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("Orthanc JSON")
}

/// (Study Instance UID, modality, instance ids) of every series Orthanc holds, sorted.
pub fn orthanc_series(orthanc: &PeerProcess) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for study in orthanc_json(orthanc, "/studies").as_array().unwrap() {
        let id = study.as_str().unwrap();
        let uid = orthanc_json(orthanc, &format!("/studies/{id}"))["MainDicomTags"]
            ["StudyInstanceUID"]
            .as_str()
            .unwrap()
            .to_string();
        for s in orthanc_json(orthanc, &format!("/studies/{id}/series"))
            .as_array()
            .unwrap()
        {
            let modality = s["MainDicomTags"]["Modality"].as_str().unwrap_or("");
            let instances = s["Instances"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_str().unwrap().to_string())
                .collect();
            out.push((uid.clone(), modality.to_string(), instances));
        }
    }
    out.sort();
    out
}

/// [`start_orthanc`] on chosen DICOM and HTTP ports (for an appliance configured before
/// Orthanc starts).
pub fn start_orthanc_at(
    appliance_ae: &str,
    appliance_port: u16,
    port: u16,
    http_port: u16,
) -> PeerProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = serde_json::json!({
        "Name": "radiant-edge-test",
        "StorageDirectory": dir.path().join("storage"),
        "IndexDirectory": dir.path().join("index"),
        "HttpPort": http_port,
        "DicomPort": port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": false,
        "AuthenticationEnabled": false,
        "HttpServerEnabled": true,
        "DicomServerEnabled": true,
        "DicomCheckCalledAet": false,
        "DicomAlwaysAllowStore": true,
        "Plugins": [],
        "StableAge": 1,
        "DicomModalities": { "appliance": [appliance_ae, "127.0.0.1", appliance_port] },
    });
    let config_path = dir.path().join("orthanc.json");
    std::fs::write(&config_path, config.to_string()).expect("write Orthanc config");
    let child = spawn_orthanc(&config_path);
    let mut peer = PeerProcess {
        name: "orthanc",
        dir,
        port,
        http_port,
        child,
    };
    peer.wait_for_orthanc();
    peer
}

fn spawn_orthanc(config_path: &Path) -> Child {
    Command::new(ORTHANC)
        .arg(config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn Orthanc (apt-get install orthanc)")
}

impl PeerProcess {
    fn wait_for_orthanc(&mut self) {
        let (port, http_port) = (self.port, self.http_port);
        let up = wait_until(Duration::from_secs(30), || {
            port_open(http_port) && port_open(port)
        });
        assert!(up, "Orthanc did not start");
    }

    /// SIGKILL the peer; its directory and ports stay for a restart.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start Orthanc again on the same configuration, storage and ports.
    pub fn restart_orthanc(&mut self) {
        self.child = spawn_orthanc(&self.dir.path().join("orthanc.json"));
        self.wait_for_orthanc();
    }
}

/// HTTP POST on loopback (Orthanc's REST API): (status, body).
pub fn http_post(port: u16, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    crate::http_request(port, "POST", path, body, Duration::from_secs(120))
}

/// Upload files to Orthanc through its REST API; returns the Orthanc study IDs touched.
pub fn orthanc_upload(orthanc: &PeerProcess, files: &[PathBuf]) -> Vec<String> {
    let mut studies = Vec::new();
    for file in files {
        let bytes = std::fs::read(file).expect("read fixture");
        let (status, body) =
            http_post(orthanc.http_port, "/instances", &bytes).expect("POST /instances");
        assert_eq!(status, 200, "Orthanc refused {}: {body}", file.display());
        let reply: serde_json::Value = serde_json::from_str(&body).expect("Orthanc JSON reply");
        if let Some(study) = reply["ParentStudy"].as_str() {
            if !studies.iter().any(|s| s == study) {
                studies.push(study.to_string());
            }
        }
    }
    studies
}

/// Have Orthanc send one of its studies to the modality `appliance` (synchronously).
pub fn orthanc_push(orthanc: &PeerProcess, study: &str) {
    let body = serde_json::json!({ "Resources": [study], "Synchronous": true }).to_string();
    let (status, reply) = http_post(
        orthanc.http_port,
        "/modalities/appliance/store",
        body.as_bytes(),
    )
    .expect("store request");
    assert_eq!(status, 200, "Orthanc could not push the study: {reply}");
}

/// Files below `dir`, recursively.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// DCMTK `storescp` (accepting all transfer syntaxes) with extra options after the defaults,
/// so they override them: `+xi` to accept Implicit VR Little Endian only, `--abort-after`,
/// `--sleep-after N`, `--refuse`.
pub fn start_storescp_with(extra: &[&str]) -> PeerProcess {
    spawn_storescp(extra)
}

/// Run `python3 hil-tests/peers/SCRIPT ARGS...` (pydicom, highdicom, numpy); panics with its
/// stderr if it fails. Returns what it printed, trimmed.
pub fn python_peer<I, S>(script: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new("python3")
        .arg(crate::repo_root().join("hil-tests/peers").join(script))
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
