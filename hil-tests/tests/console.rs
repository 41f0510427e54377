//! The web console (`appliance::console`), served by the real daemon over HTTPS with a
//! certificate from a throw-away CA, driven by headless Chromium through the DevTools protocol
//! over a pipe (`--remote-debugging-pipe`: no port, no extra crate), beside a small HTTPS
//! client built on pacs-bridge's TLS for what a browser does not show (the status of a refused
//! form, headers, the bytes of a PNG, malformed requests).
//!
//! Accounts are made with `appliance console set-user`, the password on standard input.
//!
//! With `RADIANT_SCREENSHOTS=1` the admin's view of every page is saved under
//! `docs/screenshots/` (1280x900); otherwise screenshots are only taken and decoded.

use hil_tests::appliance::{set, Appliance};
use hil_tests::peers::storescu;
use hil_tests::pki::Pki;
use hil_tests::{free_port, port_open, repo_root, wait_until};
use pacs_bridge::tls::{self, ClientTls};
use rusqlite::{params, Connection, OpenFlags};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const ADMIN: (&str, &str) = ("ada", "admin console password");
const VIEWER: (&str, &str) = ("vic", "viewer console password");
const MODEL: &str = "head-ct-ich";
/// The reference model's label colours (models/reference/head-ct/manifest.toml).
const BRAIN_COLOUR: [u8; 3] = [64, 160, 255];
const LESION_COLOUR: [u8; 3] = [255, 64, 32];

/// An appliance with its console on HTTPS, and the CA that issued the console's certificate.
struct Site {
    app: Appliance,
    port: u16,
    ca: PathBuf,
    _pki: Pki,
}

fn start_site(with_model: bool, extra: &[(&str, toml::Value)]) -> Site {
    let pki = Pki::new();
    let ca = pki.ca("console");
    let server = pki.issue(&ca, "console", "localhost", &["localhost"]);
    let port = free_port();
    let tweak = |c: &mut toml::Table| {
        set(c, "console", "enabled", true);
        set(c, "console", "bind", "127.0.0.1");
        set(c, "console", "port", i64::from(port));
        set(
            c,
            "console",
            "cert_file",
            server.cert.to_string_lossy().as_ref(),
        );
        set(
            c,
            "console",
            "key_file",
            server.key.to_string_lossy().as_ref(),
        );
        for (key, value) in extra {
            set(c, "console", key, value.clone());
        }
    };
    let app = if with_model {
        Appliance::start_with_model(&tweak)
    } else {
        Appliance::start(&tweak)
    };
    // The accounts, as an admin makes them: the CLI, the password on standard input. The
    // console re-reads them on every request.
    for ((name, password), role) in [(ADMIN, "admin"), (VIEWER, "viewer")] {
        let out = app.cli_with_input(
            &["console", "set-user", name, "--role", role],
            &format!("{password}\n"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let users = app.cli(&["console", "users"]);
    let listed = String::from_utf8_lossy(&users.stdout).to_string();
    assert!(
        listed.contains("ada") && listed.contains("admin") && listed.contains("vic"),
        "{listed}"
    );
    let on_disk = std::fs::read_to_string(app.data_dir.join("console/users.toml")).unwrap();
    assert!(
        on_disk.contains("$argon2id$") && !on_disk.contains(ADMIN.1),
        "{on_disk}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || port_open(port)),
        "console not listening:\n{}",
        app.log()
    );
    Site {
        app,
        port,
        ca: ca.cert,
        _pki: pki,
    }
}

// ---------------------------------------------------------------------------------------
// A small HTTPS client: one request per connection, as the console answers.

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The value a `Set-Cookie` gives cookie `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .find_map(|(_, v)| v.strip_prefix(&format!("{name}=")))
            .map(|rest| rest.split(';').next().unwrap_or("").to_string())
    }

    fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

fn connect(site: &Site) -> pacs_bridge::tls::Transport {
    let client = ClientTls::load(&site.ca, None, "localhost").expect("client TLS");
    let stream = TcpStream::connect(("127.0.0.1", site.port)).expect("connect to the console");
    let t = tls::connect(stream, &client, Instant::now() + Duration::from_secs(10))
        .expect("TLS handshake with the console, verified against the test CA");
    t.tcp()
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    t.tcp()
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    t
}

/// Send `raw` over TLS and read until the console closes.
fn raw(site: &Site, raw: &[u8]) -> Vec<u8> {
    let mut t = connect(site);
    t.write_all(raw).unwrap();
    t.flush().unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match t.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A close without close_notify after the whole answer.
            Err(e) if !out.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) if !out.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the console's answer: {e}"),
        }
    }
    out
}

fn parse_reply(bytes: &[u8]) -> Reply {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(bytes)));
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let body = bytes[end + 4..].to_vec();
    let reply = Reply {
        status,
        headers,
        body,
    };
    if let Some(length) = reply.header("content-length") {
        assert_eq!(
            reply.body.len(),
            length.parse::<usize>().unwrap(),
            "Content-Length"
        );
    }
    reply
}

fn https(site: &Site, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
        site.port,
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    parse_reply(&raw(site, &bytes))
}

fn get(site: &Site, path: &str, session: Option<&str>) -> Reply {
    match session {
        Some(s) => https(
            site,
            "GET",
            path,
            &[("Cookie", &format!("radiant_session={s}"))],
            b"",
        ),
        None => https(site, "GET", path, &[], b""),
    }
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                b' ' => "+".into(),
                other => format!("%{other:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(n, v)| format!("{}={}", enc(n), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn post(
    site: &Site,
    path: &str,
    session: &str,
    pairs: &[(&str, &str)],
    extra: &[(&str, &str)],
) -> Reply {
    let cookie = format!("radiant_session={session}");
    let mut headers = vec![
        ("Cookie", cookie.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    headers.extend_from_slice(extra);
    https(site, "POST", path, &headers, form_encode(pairs).as_bytes())
}

/// Log in through the form as the browser would; the session token, or the refusal.
fn log_in(site: &Site, (user, password): (&str, &str)) -> Result<String, Reply> {
    let form = get(site, "/login", None);
    assert_eq!(form.status, 200, "{}", form.text());
    let token = form.cookie("radiant_login").expect("login form cookie");
    let body = form_encode(&[("csrf", &token), ("user", user), ("password", password)]);
    let reply = https(
        site,
        "POST",
        "/login",
        &[
            ("Cookie", &format!("radiant_login={token}")),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    );
    match (reply.status, reply.cookie("radiant_session")) {
        (303, Some(session)) => Ok(session),
        _ => Err(reply),
    }
}

/// The CSRF token a page's forms carry.
fn csrf_in(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in {html}"))
        + 19;
    html[at..at + 64].to_string()
}

// ---------------------------------------------------------------------------------------
// Headless Chromium through the DevTools protocol on fds 3 and 4.

struct Browser {
    child: Child,
    to: std::fs::File,
    messages: Receiver<Value>,
    events: Vec<Value>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

fn pipe() -> (i32, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

impl Browser {
    fn launch() -> Browser {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("headless Chromium (apt-get install chromium)");
        let profile = tempfile::tempdir().unwrap();
        let (child_in, parent_out) = pipe();
        let (parent_in, child_out) = pipe();
        let mut command = Command::new(chromium);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--hide-scrollbars",
                "--ignore-certificate-errors",
                "--window-size=1280,900",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only fcntl and dup2 between fork and exec. The pipe ends are first moved
        // above 9 so that putting them on 3 and 4 cannot overwrite one with the other; dup2
        // leaves the new descriptors open across exec.
        unsafe {
            command.pre_exec(move || {
                let a = libc::fcntl(child_in, libc::F_DUPFD_CLOEXEC, 10);
                let b = libc::fcntl(child_out, libc::F_DUPFD_CLOEXEC, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start chromium");
        // SAFETY: each descriptor came from pipe2 above and is owned by exactly one File.
        let (to, from) = unsafe {
            drop(std::fs::File::from_raw_fd(child_in));
            drop(std::fs::File::from_raw_fd(child_out));
            (
                std::fs::File::from_raw_fd(parent_out),
                std::fs::File::from_raw_fd(parent_in),
            )
        };
        let (sender, messages) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(from);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        buf.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if sender.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut browser = Browser {
            child,
            to,
            messages,
            events: Vec::new(),
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}), false);
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
            false,
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser.call("Page.enable", json!({}), true);
        browser.call("Network.enable", json!({}), true);
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
            true,
        );
        browser
    }

    fn next_message(&mut self, deadline: Instant) -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        self.messages
            .recv_timeout(left)
            .expect("Chromium answered within the time allowed")
    }

    /// Call `method`; its result (an error answer fails the test).
    fn call(&mut self, method: &str, params: Value, in_session: bool) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if in_session {
            message["sessionId"] = self.session.clone().into();
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to Chromium");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let m = self.next_message(deadline);
            if m["id"].as_u64() == Some(id) {
                assert!(m.get("error").is_none(), "{method}: {m}");
                return m["result"].clone();
            }
            self.events.push(m);
        }
    }

    fn wait_event(&mut self, method: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(at) = self.events.iter().position(|e| e["method"] == method) {
                return self.events.remove(at);
            }
            let m = self.next_message(deadline);
            self.events.push(m);
        }
    }

    /// The status of the last document loaded (after redirects) and its HTML.
    fn loaded(&mut self) -> (u16, String) {
        self.wait_event("Page.loadEventFired");
        let status = self
            .events
            .iter()
            .rev()
            .find(|e| {
                e["method"] == "Network.responseReceived" && e["params"]["type"] == "Document"
            })
            .and_then(|e| e["params"]["response"]["status"].as_u64())
            .expect("a document response") as u16;
        self.events.clear();
        (
            status,
            self.eval("document.documentElement.outerHTML")
                .as_str()
                .unwrap()
                .to_string(),
        )
    }

    fn goto(&mut self, url: &str) -> (u16, String) {
        self.events.clear();
        let r = self.call("Page.navigate", json!({"url": url}), true);
        assert!(r.get("errorText").is_none(), "{url}: {r}");
        self.loaded()
    }

    /// Run `script` (which submits a form) and wait for the page it leads to.
    fn submit(&mut self, script: &str) -> (u16, String) {
        self.events.clear();
        self.eval(script);
        self.loaded()
    }

    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            true,
        );
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    fn cookie(&mut self, name: &str) -> Option<String> {
        let r = self.call("Network.getCookies", json!({}), true);
        r["cookies"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| {
                assert_eq!(c["secure"], true, "{c}");
                assert_eq!(c["httpOnly"], true, "{c}");
                assert_eq!(c["sameSite"], "Strict", "{c}");
                c["value"].as_str().unwrap().to_string()
            })
    }

    /// A PNG of the viewport, saved as `docs/screenshots/<name>.png` when RADIANT_SCREENSHOTS=1.
    fn screenshot(&mut self, name: &str) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}), true);
        let png = base64_decode(r["data"].as_str().unwrap());
        let (w, h, _) = decode_png(&png);
        assert_eq!((w, h), (1280, 900), "{name}");
        if std::env::var("RADIANT_SCREENSHOTS").as_deref() == Ok("1") {
            let dir = repo_root().join("docs/screenshots");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Decode an 8-bit RGB or RGBA, non-interlaced PNG (what the console and Chromium write):
/// width, height, RGB pixels. Written here, independent of the encoder under test.
fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let (mut at, mut width, mut height, mut channels) = (8usize, 0u32, 0u32, 0usize);
    let mut idat = Vec::new();
    loop {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = &bytes[at + 4..at + 8];
        let data = &bytes[at + 8..at + 8 + len];
        match kind {
            b"IHDR" => {
                width = u32::from_be_bytes(data[0..4].try_into().unwrap());
                height = u32::from_be_bytes(data[4..8].try_into().unwrap());
                assert_eq!(data[8], 8, "bit depth");
                channels = match data[9] {
                    2 => 3,
                    6 => 4,
                    other => panic!("colour type {other}"),
                };
                assert_eq!(data[12], 0, "interlace");
            }
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => break,
            _ => {}
        }
        at += 12 + len;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .expect("inflate IDAT");
    let stride = width as usize * channels;
    assert_eq!(raw.len(), (stride + 1) * height as usize, "scanlines");
    let mut pixels = vec![0u8; stride * height as usize];
    for y in 0..height as usize {
        let filter = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        for x in 0..stride {
            let a = if x >= channels {
                pixels[y * stride + x - channels]
            } else {
                0
            };
            let b = if y > 0 {
                pixels[(y - 1) * stride + x]
            } else {
                0
            };
            let c = if x >= channels && y > 0 {
                pixels[(y - 1) * stride + x - channels]
            } else {
                0
            };
            let predicted = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                4 => {
                    let p = i16::from(a) + i16::from(b) - i16::from(c);
                    let (pa, pb, pc) = (
                        (p - i16::from(a)).abs(),
                        (p - i16::from(b)).abs(),
                        (p - i16::from(c)).abs(),
                    );
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                other => panic!("filter {other}"),
            };
            pixels[y * stride + x] = line[x].wrapping_add(predicted);
        }
    }
    let rgb = pixels
        .chunks_exact(channels)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    (width, height, rgb)
}

fn has_colour(rgb: &[u8], colour: [u8; 3]) -> bool {
    rgb.chunks_exact(3).any(|p| p == colour)
}

// ---------------------------------------------------------------------------------------

/// Everything that identifies the test study's patient or names an object: the patient's
/// name (and its parts) and ID, and every UID of the fixture and of the objects the job made.
fn identifiers(files: &[PathBuf], job: &Value) -> Vec<String> {
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("fixtures/ct-series-lesion/manifest.json"))
            .unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    fn uids(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s)
                if s.len() > 8
                    && s.contains('.')
                    && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
            {
                out.push(s.clone())
            }
            Value::Array(items) => items.iter().for_each(|i| uids(i, out)),
            Value::Object(map) => map.values().for_each(|i| uids(i, out)),
            _ => {}
        }
    }
    uids(&manifest, &mut out);
    uids(&job["result"]["objects"], &mut out);
    let dump = Command::new("/usr/bin/dcmdump")
        .args(["+P", "PatientName", "+P", "PatientID"])
        .arg(&files[0])
        .output()
        .expect("dcmdump (apt-get install dcmtk)");
    for line in String::from_utf8_lossy(&dump.stdout).lines() {
        if let (Some(a), Some(b)) = (line.find('['), line.find(']')) {
            let value = &line[a + 1..b];
            out.push(value.to_string());
            out.extend(value.split('^').filter(|p| p.len() >= 4).map(String::from));
        }
    }
    assert!(out.iter().any(|v| v == "RE-CT-0002"), "{out:?}");
    assert!(out.iter().any(|v| v == "CraniumLesion"), "{out:?}");
    assert!(out.len() > 100, "the fixture's UIDs: {}", out.len());
    out
}

fn assert_no_identifiers(page: &str, html: &str, identifiers: &[String]) {
    for id in identifiers {
        assert!(!html.contains(id.as_str()), "{page} shows {id:?}");
    }
}

/// Two fine-tuned heads of the model, both accepted by the gate, head 2 (child of 1) the
/// champion: the rows and files `appliance::heads::record` would have written.
fn record_heads(app: &Appliance, version: &str) {
    let head = repo_root().join("models/reference/head-ct/head.safetensors");
    let sha = radiant_core::digest::sha256_hex(std::fs::File::open(&head).unwrap()).unwrap();
    let dir = app.data_dir.join("heads").join(MODEL).join(version);
    std::fs::create_dir_all(&dir).unwrap();
    let conn = Connection::open(app.data_dir.join("results.sqlite")).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    for (id, parent, champion_dice, candidate_dice) in
        [(1i64, None, 0.612, 0.655), (2, Some(1i64), 0.655, 0.683)]
    {
        std::fs::copy(&head, dir.join(format!("{id}.safetensors"))).unwrap();
        let metrics = json!({"gate": {
            "local_champion": champion_dice,
            "local_candidate": candidate_dice,
            "bootstrap": {"mean_lower": 0.0123, "confidence": 0.95},
        }});
        conn.execute(
            "INSERT INTO heads (id, model_id, global_version, parent_id, sha256, path, state,
                 reasons_json, trigger, cases_json, holdout_json, metrics_json, seconds,
                 created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'accepted', '[]', 'new cases', ?7, ?8, ?9, 2.5, ?10)",
            params![
                id,
                MODEL,
                version,
                parent,
                sha,
                format!("heads/{MODEL}/{version}/{id}.safetensors"),
                json!([{"case": id, "labels_sha256": "ab"}, {"case": id + 10, "labels_sha256": "cd"}]).to_string(),
                json!([{"case": 3, "labels_sha256": "ef"}]).to_string(),
                metrics.to_string(),
                1_767_225_600_000i64 + id * 60_000,
            ],
        )
        .unwrap();
    }
    conn.execute(
        "INSERT INTO champions (model_id, global_version, head_id, updated_at_ms)
         VALUES (?1, ?2, 2, 0)
         ON CONFLICT (model_id, global_version) DO UPDATE SET head_id = 2",
        params![MODEL, version],
    )
    .unwrap();
}

/// (champion head, when head 2 was rolled back) as results.sqlite holds them.
fn champion_row(app: &Appliance, version: &str) -> (Option<i64>, Option<i64>) {
    let conn = Connection::open_with_flags(
        app.data_dir.join("results.sqlite"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let champion = conn
        .query_row(
            "SELECT head_id FROM champions WHERE model_id = ?1 AND global_version = ?2",
            params![MODEL, version],
            |r| r.get(0),
        )
        .unwrap();
    let rolled_back = conn
        .query_row(
            "SELECT rolled_back_at_ms FROM heads WHERE id = 2",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (champion, rolled_back)
}

/// The Series Instance UID of a DICOM file, by DCMTK's dcmdump.
fn files_series_uid(file: &Path) -> String {
    let out = Command::new("/usr/bin/dcmdump")
        .args(["+P", "SeriesInstanceUID"])
        .arg(file)
        .output()
        .expect("dcmdump (apt-get install dcmtk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let (a, b) = (text.find('[').unwrap(), text.find(']').unwrap());
    text[a + 1..b].to_string()
}

/// The daemon's log lines about the console.
fn console_log(app: &Appliance) -> String {
    app.log()
        .lines()
        .filter(|l| l.contains("console"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn url(site: &Site, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", site.port)
}

/// Log in through the login form in the browser.
fn browser_log_in(b: &mut Browser, site: &Site, (user, password): (&str, &str)) -> (u16, String) {
    let (status, html) = b.goto(&url(site, "/login"));
    assert_eq!(status, 200, "{html}");
    b.submit(&format!(
        "document.querySelector('input[name=user]').value = {user:?};
         document.querySelector('input[name=password]').value = {password:?};
         document.querySelector('form.login').submit(); true"
    ))
}

#[test]
fn viewer_and_admin_browse_every_page_without_identifiers_and_only_the_admin_rolls_back_a_head() {
    let site = start_site(true, &[]);
    let (files, study) = hil_tests::fixtures::lesion_series();
    let out = storescu("STORESCU", &site.app.ae_title, site.app.port, &[], &files);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = wait_until(Duration::from_secs(120), || {
        site.app
            .jobs(&study)
            .first()
            .is_some_and(|j| j["state"] == "done")
    });
    assert!(
        done,
        "no result: {:?}\n{}",
        site.app.jobs(&study),
        site.app.log()
    );
    let job = site.app.jobs(&study)[0].clone();
    let job_id = job["job_id"].as_i64().unwrap();
    let version = job["model_version"].as_str().unwrap().to_string();
    let tag = radiant_core::log_tag(&study);
    let secrets = identifiers(&files, &job);
    record_heads(&site.app, &version);

    let mut b = Browser::launch();
    // Not logged in: every page leads to the login form.
    let (status, html) = b.goto(&url(&site, "/studies"));
    assert_eq!(status, 200);
    assert!(html.contains("action=\"/login\""), "{html}");
    b.screenshot("login");
    // A wrong password is refused with the reason, and no session cookie.
    let (status, html) = browser_log_in(&mut b, &site, (VIEWER.0, "not the password"));
    assert_eq!(status, 401, "{html}\n{}", console_log(&site.app));
    assert!(html.contains("Wrong user name or password"), "{html}");
    assert!(b.cookie("radiant_session").is_none());
    assert!(
        !site.app.log().contains("not the password"),
        "a password was logged"
    );

    let pages: Vec<(&str, String, Vec<String>)> = vec![
        (
            "status",
            "/".into(),
            vec![
                "class=\"good\">ready".into(),
                env!("CARGO_PKG_VERSION").into(),
                MODEL.into(),
            ],
        ),
        (
            "queues",
            "/queues".into(),
            vec![format!("/results/{job_id}"), "done".into()],
        ),
        (
            "studies",
            "/studies".into(),
            vec![
                format!("/studies/{tag}"),
                "complete".into(),
                "1 done".into(),
            ],
        ),
        (
            "study",
            format!("/studies/{tag}"),
            vec![
                format!("/results/{job_id}"),
                "lesion".into(),
                "STORESCU".into(),
            ],
        ),
        (
            "result",
            format!("/results/{job_id}"),
            vec!["slices/".into(), "lesion".into(), "(head global)".into()],
        ),
        (
            "models",
            "/models".into(),
            vec![
                MODEL.into(),
                "local_candidate 0.6830".into(),
                "mean_lower 0.0123".into(),
            ],
        ),
    ];
    for who in [VIEWER, ADMIN] {
        let admin = who == ADMIN;
        if admin {
            b.call("Network.clearBrowserCookies", json!({}), true);
        }
        let (status, html) = browser_log_in(&mut b, &site, who);
        assert_eq!(status, 200, "{html}");
        assert!(html.contains("id=\"readiness\""), "{html}");
        let session = b.cookie("radiant_session").expect("a session cookie");
        for (name, path, expected) in &pages {
            let (status, html) = b.goto(&url(&site, path));
            assert_eq!(status, 200, "{} {path}: {html}", who.0);
            for text in expected {
                assert!(
                    html.contains(text.as_str()),
                    "{} {path} lacks {text:?}:\n{html}",
                    who.0
                );
            }
            assert_no_identifiers(path, &html, &secrets);
            assert_eq!(
                html.contains("/models/head-ct-ich/rollback"),
                admin && *name == "models",
                "{} {path}: the rollback form is for admins on the models page",
                who.0
            );
            if admin {
                b.screenshot(name);
            }
        }
        // The result's images: every one decoded by the browser, and by this test from the
        // bytes the console sends, drawn with the model's colours.
        b.goto(&url(&site, &format!("/results/{job_id}")));
        let images = b.eval(
            "Array.from(document.querySelectorAll('#slices img')).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth, i.naturalHeight])",
        );
        let images = images.as_array().unwrap();
        assert!(!images.is_empty(), "no slice images");
        let (mut brain, mut lesion) = (false, false);
        for image in images {
            assert_eq!(
                (image[1].as_bool(), image[2].as_u64(), image[3].as_u64()),
                (Some(true), Some(256), Some(256)),
                "{image}"
            );
            let png = get(&site, image[0].as_str().unwrap(), Some(&session));
            assert_eq!(png.status, 200);
            assert_eq!(png.header("content-type"), Some("image/png"));
            let (w, h, rgb) = decode_png(&png.body);
            assert_eq!((w, h), (256, 256));
            brain |= has_colour(&rgb, BRAIN_COLOUR);
            lesion |= has_colour(&rgb, LESION_COLOUR);
            assert!(
                rgb.chunks_exact(3)
                    .any(|p| p[0] == p[1] && p[1] == p[2] && p[0] > 40),
                "no grey anatomy"
            );
        }
        assert!(
            brain && lesion,
            "outline colours: brain {brain}, lesion {lesion}"
        );

        let html = b.goto(&url(&site, "/models")).1;
        if !admin {
            // A viewer's rollback, with a valid CSRF token, is forbidden and changes nothing.
            let csrf = csrf_in(&html);
            let r = post(
                &site,
                "/models/head-ct-ich/rollback",
                &session,
                &[("csrf", &csrf), ("to", "")],
                &[],
            );
            assert_eq!(r.status, 403, "{}", r.text());
            assert_eq!(champion_row(&site.app, &version), (Some(2), None));
            continue;
        }
        // An admin's POST without the CSRF token, or from another origin, is refused.
        let csrf = csrf_in(&html);
        let r = post(
            &site,
            "/models/head-ct-ich/rollback",
            &session,
            &[("to", "")],
            &[],
        );
        assert_eq!(r.status, 403, "{}", r.text());
        let r = post(
            &site,
            "/models/head-ct-ich/rollback",
            &session,
            &[("csrf", &csrf), ("to", "")],
            &[("Origin", "https://attacker.example")],
        );
        assert_eq!(r.status, 403, "{}", r.text());
        let r = post(
            &site,
            "/models/head-ct-ich/rollback",
            &session,
            &[("csrf", "0".repeat(64).as_str())],
            &[],
        );
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(champion_row(&site.app, &version), (Some(2), None));
        // The admin rolls back through the form: head 1 (the champion's parent) is the
        // champion, head 2 is marked, and the page and the CLI say so.
        let (status, html) = b.submit("document.querySelector('form.rollback').submit(); true");
        assert_eq!(status, 200, "{html}");
        assert!(html.contains("its champion is now head 1"), "{html}");
        b.screenshot("models-rolled-back");
        let (champion, rolled_back) = champion_row(&site.app, &version);
        assert_eq!(champion, Some(1));
        assert!(rolled_back.is_some());
        let listed = site.app.cli(&["heads", "list", "--json"]);
        let champion: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|h| h["champion"] == true)
            .collect();
        assert_eq!(champion.len(), 1, "{champion:?}");
        assert_eq!(champion[0]["id"], 1);
        assert!(site.app.log().contains("head rolled back from the console"));
        // Logging out ends the session: the old cookie leads to the login form.
        let (status, html) = b.submit("document.querySelector('form.who').submit(); true");
        assert_eq!(status, 200);
        assert!(html.contains("action=\"/login\""), "{html}");
        let r = get(&site, "/", Some(&session));
        assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    }
    let ready = site.app.http("/health/ready");
    assert_eq!(ready.0, 200, "{}", ready.1);

    // The audit trail holds the logins (the wrong password too), the viewer's refused
    // rollback, the admin's rollback and the logout, each by its console user; the chain holds.
    let trail = site.app.audit();
    let find = |action: &str, actor: &str, outcome: &str| {
        trail.iter().any(|r| {
            r["action"] == action
                && r["actor"] == actor
                && r["outcome"].as_str().unwrap_or("").starts_with(outcome)
        })
    };
    assert!(
        find("console.login", "console:ada", "success"),
        "{trail:#?}"
    );
    assert!(
        find("console.login", "console:vic", "failure"),
        "{trail:#?}"
    );
    assert!(
        find("console.login", "console:vic", "success"),
        "{trail:#?}"
    );
    assert!(
        find("head.rollback", "console:vic", "failure: not an admin"),
        "{trail:#?}"
    );
    assert!(
        find("head.rollback", "console:ada", "success: champion 1"),
        "{trail:#?}"
    );
    assert!(
        find("console.logout", "console:ada", "success"),
        "{trail:#?}"
    );
    assert!(site.app.cli(&["audit", "verify"]).status.success());
}

#[test]
fn the_console_refuses_forged_and_expired_sessions_bad_forms_and_repeated_wrong_passwords() {
    let site = start_site(
        false,
        &[
            ("session_idle_seconds", 5i64.into()),
            ("max_failed_logins", 3i64.into()),
            ("show_identifiers", true.into()),
        ],
    );
    // Plain HTTP on the HTTPS port gets no page.
    let mut plain = TcpStream::connect(("127.0.0.1", site.port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain
        .write_all(b"GET /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"),
        "plain HTTP answered"
    );

    // Headers every answer carries.
    let form = get(&site, "/login", None);
    assert_eq!(form.status, 200);
    for (name, value) in [
        ("strict-transport-security", "max-age="),
        ("content-security-policy", "default-src 'none'"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
    ] {
        assert!(
            form.header(name).is_some_and(|v| v.contains(value)),
            "{name}: {:?}",
            form.headers
        );
    }

    // A wrong password is refused and logged without the password.
    let r = log_in(&site, (ADMIN.0, "wrong password here")).unwrap_err();
    assert_eq!(r.status, 401);
    assert!(r.text().contains("Wrong user name or password"));
    // A login POST without the form's token is refused.
    let r = https(
        &site,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form_encode(&[("user", ADMIN.0), ("password", ADMIN.1)]).as_bytes(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.cookie("radiant_session").is_none());

    // With show_identifiers, admins (only) see the study's and series' UIDs.
    let (files, study) = hil_tests::fixtures::lesion_series();
    let out = storescu(
        "STORESCU",
        &site.app.ae_title,
        site.app.port,
        &[],
        &files[..3],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let series = files_series_uid(&files[0]);
    let viewer = log_in(&site, VIEWER).expect("the viewer logs in");
    let admin = log_in(&site, ADMIN).expect("the admin logs in");
    let tag = radiant_core::log_tag(&study);
    for (path, uid) in [
        ("/studies".to_string(), &study),
        (format!("/studies/{tag}"), &series),
    ] {
        let shown = get(&site, &path, Some(&admin)).text();
        assert!(
            shown.contains(uid.as_str()),
            "{path} for an admin:\n{shown}"
        );
        let hidden = get(&site, &path, Some(&viewer)).text();
        assert!(hidden.contains(&tag), "{path} for a viewer:\n{hidden}");
        assert!(
            !hidden.contains(uid.as_str()),
            "{path} shows a viewer {uid}"
        );
    }

    let session = log_in(&site, ADMIN).expect("the admin logs in");
    let r = log_in(&site, ADMIN).unwrap();
    assert_ne!(r, session, "a new session per login");
    let page = get(&site, "/queues", Some(&session));
    assert_eq!(page.status, 200, "{}", page.text());
    let csrf = csrf_in(&page.text());
    // Bad query strings and unknown ids are 400 and 404 pages, not a dead thread.
    for (path, status) in [
        ("/studies?limit=abc", 400),
        ("/studies?limit=0", 400),
        ("/studies?limit=%ZZ", 400),
        ("/studies/0123456789ab", 404),
        ("/studies/..%2F..%2Fetc", 404),
        ("/results/999999", 404),
        ("/results/-1", 404),
        ("/results/abc/slices/1.png", 404),
        ("/results/1/slices/abc", 404),
        ("/nowhere", 404),
    ] {
        let r = get(&site, path, Some(&session));
        assert_eq!(r.status, status, "{path}: {}", r.text());
    }
    let r = https(
        &site,
        "DELETE",
        "/models",
        &[("Cookie", &format!("radiant_session={session}"))],
        b"",
    );
    assert_eq!(r.status, 405);
    // Malformed requests are answered and closed.
    let r = parse_reply(&raw(&site, b"NONSENSE\r\n\r\n"));
    assert_eq!(r.status, 400);
    let mut big = b"GET / HTTP/1.1\r\nX-Fill: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20 << 10));
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(parse_reply(&raw(&site, &big)).status, 431);
    let r = parse_reply(&raw(
        &site,
        b"POST /login HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
    ));
    assert_eq!(r.status, 413);
    // Logout without the CSRF token is refused; with it, it ends the session.
    let r = post(&site, "/logout", &session, &[], &[]);
    assert_eq!(r.status, 403);
    assert_eq!(get(&site, "/", Some(&session)).status, 200);

    // A forged session cookie leads to the login form (and is cleared).
    let forged = "ab".repeat(32);
    let r = get(&site, "/", Some(&forged));
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    assert!(r
        .set_cookies()
        .iter()
        .any(|c| c.starts_with("radiant_session=;") && c.contains("Max-Age=0")));
    let r = get(&site, "/", Some("not-a-token"));
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    // An idle session expires.
    std::thread::sleep(Duration::from_secs(7));
    let r = get(&site, "/", Some(&session));
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    let r = post(&site, "/logout", &session, &[("csrf", &csrf)], &[]);
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));

    // Three wrong passwords lock the user out, right password or not, for the lockout time.
    for _ in 0..2 {
        assert_eq!(
            log_in(&site, (VIEWER.0, "guess guess guess"))
                .unwrap_err()
                .status,
            401
        );
    }
    let r = log_in(&site, (VIEWER.0, "guess guess guess")).unwrap_err();
    assert_eq!(r.status, 401);
    let r = log_in(&site, VIEWER).unwrap_err();
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    // Another user from the same address is not locked out.
    assert!(log_in(&site, ADMIN).is_ok());
    let log = site.app.log();
    assert!(log.contains("console login failed"), "{log}");
    assert!(log.contains("too many failed attempts"), "{log}");
    for password in [
        "guess guess guess",
        "wrong password here",
        ADMIN.1,
        VIEWER.1,
    ] {
        assert!(!log.contains(password), "the log shows a password");
    }
    // Nothing above took a thread down.
    let ready = site.app.http("/health/ready");
    assert_eq!(ready.0, 200, "{}", ready.1);
}

#[test]
fn check_config_refuses_a_console_without_tls_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let check = |console: &str| {
        let mut config = hil_tests::appliance::example_config();
        // The shipped [console] (off) gives way to the one under test.
        config.remove("console");
        config.insert(
            "data_dir".into(),
            dir.path().join("data").to_string_lossy().as_ref().into(),
        );
        let mut text = toml::to_string(&config).unwrap();
        text.push_str(console);
        let path = dir.path().join("appliance.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(hil_tests::appliance::binary())
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    let (ok, out) = check("\n[console]\nenabled = true\nbind = \"0.0.0.0\"\nport = 9443\n");
    assert!(!ok && out.contains("console.cert_file"), "{out}");
    let (ok, out) = check(
        "\n[console]\nenabled = true\nbind = \"0.0.0.0\"\nport = 9443\ninsecure_loopback_http = true\n",
    );
    assert!(
        !ok && out.contains("console.insecure_loopback_http"),
        "{out}"
    );
    let (ok, out) = check(
        "\n[console]\nenabled = true\nbind = \"127.0.0.1\"\nport = 9443\ninsecure_loopback_http = true\n",
    );
    assert!(ok, "{out}");
}
