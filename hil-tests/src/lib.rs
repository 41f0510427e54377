//! Harness for whole-system tests: starts the appliance binary and real peers (DCMTK, Orthanc,
//! pynetdicom) on loopback, each in its own temporary directory, and offers a minimal raw
//! DICOM SCU for the inputs no well-behaved peer would send.
//!
//! # Layout
//! - [`appliance`]: the appliance under test, configured from `image/etc/appliance.toml`.
//! - [`peers`]: DCMTK tools, Orthanc, DCMTK `storescp`, the pynetdicom SCP.
//! - [`raw`]: hand-built PDUs and DIMSE messages over a plain TCP socket.
//! - [`fixtures`]: the manifests of the DICOM files `scripts/fixtures.sh` prepares (their
//!   paths: `test_support::fixtures`).
//! - [`site`]: a simulated site's studies and radiologist's SEGs (continual learning).
//! - [`fleet`]: mosquitto with mutual TLS and the fleet ACL, the `federation` server and
//!   `updater` processes.
//! - [`federated`]: a federation server's setup and its sites, with their local heads.
//! - [`pki`]: throw-away CAs and certificates (the `openssl` CLI) for the DICOM TLS tests.
//! - [`lazyfs`]: a FUSE file system that forgets what was not synced, for power-cut tests.
//! - [`power_cut`]: the appliance's durable paths cut after each sync, restarted and checked.

pub mod appliance;
pub mod federated;
pub mod fixtures;
pub mod fleet;
pub mod lazyfs;
pub mod peers;
pub mod pki;
pub mod power_cut;
pub mod raw;
pub mod site;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use test_support::repo_root;

/// The shared library of the pip `onnxruntime` wheel that scripts/setup.sh installs.
pub fn ort_library() -> std::path::PathBuf {
    let out = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime, os, glob; print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so.*'))[0])"])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "onnxruntime wheel missing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A TCP port that was free a moment ago on loopback, and never handed out before in this test
/// process: the kernel may give a released port to the next `bind(0)`, and two tests running
/// side by side would then start peers on one port, the second one's readiness probe reaching
/// the first one's listener (CI saw storescp refuse a connection its probe had just made).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral port on loopback");
        if HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(port)
        {
            return port;
        }
    }
}

/// Poll `check` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    check()
}

/// Whether something accepts TCP connections on `port` on loopback.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Minimal HTTP/1.0 request on loopback: (status code, body).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = status_code(&text)?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The status code of an HTTP response; a response without one is an error, never status 0.
fn status_code(response: &str) -> std::io::Result<u16> {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            let first = response.lines().next().unwrap_or("");
            std::io::Error::other(format!("no HTTP status in the response: {first:?}"))
        })
}

/// HTTP GET on loopback of a binary body (a DICOM file from Orthanc): (status code, body).
pub fn http_get_bytes(port: u16, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of HTTP headers"))?;
    let status = status_code(&String::from_utf8_lossy(&raw[..split]))?;
    Ok((status, raw[split + 4..].to_vec()))
}

/// HTTP GET on loopback: (status code, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(port, "GET", path, b"", Duration::from_secs(10))
}

/// Send SIGKILL or SIGTERM to a child process.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a pid we spawned.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}
