//! Fleet scale benchmark (a benchmark, not a test): how does the real `federation serve`
//! behave with `--devices N` (default 200) devices behind a real broker, round after round?
//!
//! # Setup
//! - mosquitto as the whole-fleet tests run it (`hil_tests::fleet::Broker`): TLS only, client
//!   certificates required, the certificate's CN as user name, the protocol's ACL. One client
//!   certificate per device (`FleetPki::client`, CN = client id = `dev-NNN`, RSA 2048) and one
//!   for the server. The open-files limit of this process (which mosquitto inherits) is raised
//!   to its hard limit first.
//! - The server: the `federation` binary (`serve`) as its own process, its signing key from
//!   `federation keygen`, enrolled = the N device ids, quorum `--quorum` (default 90 % of N,
//!   180 of 200, so a few slow devices cannot block a round), `round_seconds` 120
//!   (`--round-seconds`), fedavg, `max_rounds` = `--rounds` (default 3), encoding `--encoding`
//!   (default `int8-block256`). Its `initial_head` is the package's real head,
//!   `models/reference/head-ct/head.safetensors` (`--head`): the rounds carry deltas of the real
//!   trainable tensors' names and shapes.
//! - N light clients in this one process: a thread each, with its own `fleet_mqtt::Link`
//!   (rumqttc over rustls, exactly the updater's link). A light client subscribes to the round
//!   topic, the global topic and its own down topic, as `updater::device::Device::start` does,
//!   and sends a `hello` on every connect. On a round's `round_announce` it makes a random small
//!   delta (every value uniform in +-`--delta-scale`, default 0.01, seeded by `--seed`, the
//!   device and the round; 10 to 100 cases) and sends it as the round asks (below). A new
//!   `global_head` header whose signature verifies with the server's public key ends the round
//!   for that device. A share of the devices (`--fetch-share`, default 0.1, spread evenly over
//!   the ids) then fetches the head's blob (`fetch`, chunks on its down topic, checked and
//!   decoded) so that a real device's download is measured too; the others keep the header
//!   only. Light clients take every delta against the package's head (they do not track the
//!   global head's values); the server checks names, dtypes, lengths and finiteness, not where
//!   the values come from.
//!
//! # Configurations
//! - plain (`secure_aggregation = false`): the delta becomes the round's update through the
//!   updater's own `updater::update::build` (clipping, int8 blocks with stochastic rounding),
//!   published as chunks (`fleet_wire::blob::split`) and then the `update_commit`, as the
//!   updater's `send_update` does. The client waits for its `ack` (resending after 20 s without
//!   one, or at once on an `incomplete` refusal, as the updater does).
//! - secure aggregation, with `--secure-aggregation` (after the plain one, on a fresh broker
//!   and server, the same certificates): the delta is clipped by `updater::update::private_delta`
//!   and goes through the four phases with the updater's own `updater::secure::SecureRound`
//!   (`advertise_keys`, then an answer to each of the server's `neighbour_keys`,
//!   `relayed_shares` and `unmask_request`). The server's default `phase_seconds` (30) applies.
//!
//! Whether the server's configuration has a `secure_aggregation` key is asked of the
//! `federation` binary itself (`rounds list` loads a copy of the configuration with the key).
//! With a server that has none, the plain configuration runs without the key and the secure
//! row of the report says "not implemented in the server yet" instead of showing numbers.
//!
//! In each configuration the light clients connect first (all at once, timed), then the server
//! starts and opens round 1. The `hello`s sent before the server subscribed are dropped by the
//! broker (no subscriber); the rounds do not need them.
//!
//! # What is measured
//! - Connect: wall time from starting the N links to the last MQTT CONNACK over mutual TLS,
//!   and each client's own time from its start to its CONNACK.
//! - Round time: from the first device seeing the round's `round_announce` to the last device
//!   seeing the new global head's header; per device, from its announcement to its header.
//!   Update time: plain, from publishing the first chunk to receiving the `ack`; secure, from
//!   publishing `advertise_keys` to receiving `unmask_request` (its masked input is in).
//! - Server CPU: user + system time of the `federation` process (`/proc/<pid>/stat`, clock
//!   ticks of `sysconf(_SC_CLK_TCK)`) from the round's announcement (first seen) to the next
//!   round's (first seen; for the last round, to the end of the run), so it includes the
//!   fetches of the round's head. The same for mosquitto and for this process (the light
//!   clients, which share the machine's cores with both). Server peak memory: `VmHWM` of
//!   `/proc/<pid>/status` at the end of each round (a high-water mark since its start).
//! - Bytes per device per round: up = what the device published for its update (plain: the
//!   chunk and `update_commit` frames; secure: its four `sec_agg` frames), as MQTT payloads;
//!   the fetch requests are counted apart. Down = every payload the device received that
//!   belongs to the round: its announcement (the retained one and the server's second
//!   publication on connecting count for round 1), its ack or secure-aggregation messages,
//!   the new head's header (which the server publishes on aggregation and again with the next
//!   round's announcement) and, for fetching devices, the head's chunks. MQTT, TLS and TCP
//!   framing are not counted.
//!
//! Run with `scripts/bench.sh federation [--rounds N]` (with `--secure-aggregation`, then
//! `fed_experiment`), or
//! `target/release/fleet_bench [--devices N] [--rounds N] [--quorum N] [--round-seconds N]
//! [--fetch-share F] [--encoding int8-block256|f32] [--delta-scale X] [--seed N] [--head FILE]
//! [--secure-aggregation]` after `cargo build --release -p hil-tests -p federation`.

use anyhow::{bail, ensure, Context, Result};
use fl_delta::rand::{Rng, SeedableRng};
use fleet_mqtt::{Incoming, Link, LinkConfig};
use fleet_wire::message::{
    AckOutcome, Fetch, Hello, Message, RoundAnnounce, SecAggHeader, SecAggPhase,
};
use fleet_wire::signed::{SignedGlobalHead, VerifyingKey};
use fleet_wire::{blob, frame, Topics};
use hil_tests::appliance::binary_named;
use hil_tests::fleet::{Broker, FleetPki, Process};
use hil_tests::pki::Issued;
use hil_tests::repo_root;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const FEDERATION: &str = "fleet-bench";
/// The model id of the reference package (`models/reference/head-ct/manifest.toml`).
const MODEL: &str = "head-ct-ich";
/// As the updater: unacknowledged updates are sent again after this long.
const RESEND_AFTER: Duration = Duration::from_secs(20);

fn main() {
    if let Err(e) = run() {
        eprintln!("fleet_bench: {e:#}");
        std::process::exit(1);
    }
}

struct Options {
    devices: usize,
    rounds: u64,
    quorum: Option<u32>,
    round_seconds: u64,
    fetch_share: f64,
    encoding: String,
    delta_scale: f32,
    seed: u64,
    head: PathBuf,
    secure_aggregation: bool,
}

fn parse_options() -> Result<Options> {
    let mut o = Options {
        devices: 200,
        rounds: 3,
        quorum: None,
        round_seconds: 120,
        fetch_share: 0.1,
        encoding: "int8-block256".into(),
        delta_scale: 0.01,
        seed: 1,
        head: repo_root().join("models/reference/head-ct/head.safetensors"),
        secure_aggregation: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--devices" => o.devices = value()?.parse().context("--devices")?,
            "--rounds" => o.rounds = value()?.parse().context("--rounds")?,
            "--quorum" => o.quorum = Some(value()?.parse().context("--quorum")?),
            "--round-seconds" => o.round_seconds = value()?.parse().context("--round-seconds")?,
            "--fetch-share" => o.fetch_share = value()?.parse().context("--fetch-share")?,
            "--encoding" => o.encoding = value()?,
            "--delta-scale" => o.delta_scale = value()?.parse().context("--delta-scale")?,
            "--seed" => o.seed = value()?.parse().context("--seed")?,
            "--head" => o.head = value()?.into(),
            "--secure-aggregation" => o.secure_aggregation = true,
            "--help" | "-h" => {
                println!(
                    "fleet_bench [--devices N] [--rounds N] [--quorum N] [--round-seconds N] \
                     [--fetch-share F] [--encoding int8-block256|f32] [--delta-scale X] \
                     [--seed N] [--head FILE] [--secure-aggregation]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (see --help)"),
        }
    }
    ensure!(
        (3..=999).contains(&o.devices),
        "--devices: 3 to 999 (ids dev-000 to dev-998; secure aggregation needs 3)"
    );
    ensure!(o.rounds >= 1, "--rounds must be at least 1");
    ensure!(
        (0.0..=1.0).contains(&o.fetch_share),
        "--fetch-share: 0 to 1"
    );
    ensure!(
        o.delta_scale.is_finite() && o.delta_scale > 0.0,
        "--delta-scale: a finite number above 0"
    );
    ensure!(
        ["int8-block256", "f32"].contains(&o.encoding.as_str()),
        "--encoding: int8-block256 or f32"
    );
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// /proc readings

/// Raise this process's open-files limit to its hard limit (mosquitto, started from here,
/// inherits it); the new soft limit.
fn raise_open_files() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0,
            "getrlimit: {}",
            std::io::Error::last_os_error()
        );
        limit.rlim_cur = limit.rlim_max;
        ensure!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0,
            "setrlimit: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(limit.rlim_cur)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// User + system CPU seconds of `pid` (`/proc/<pid>/stat`, fields 14 and 15).
fn cpu_seconds(pid: &str, ticks: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .context("no ')' in /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    Ok((utime + stime) / ticks)
}

/// `VmHWM` of `pid` in KiB.
fn peak_rss_kib(pid: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/<pid>/status")
}

/// The pid of our running child whose command name is `comm` (the harness keeps its `Child`
/// private).
fn child_pid(comm: &str) -> Result<String> {
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let name = head.split_once(" (").map(|(_, n)| n).unwrap_or("");
        let ppid = rest.split_whitespace().nth(1).unwrap_or("");
        if name == comm && ppid == me {
            return Ok(pid);
        }
    }
    bail!("no child process named {comm}")
}

/// CPU seconds of the server, the broker and this process, and the server's VmHWM, at once.
#[derive(Debug, Clone, Copy)]
struct Sample {
    server_cpu: f64,
    broker_cpu: f64,
    bench_cpu: f64,
    server_hwm_kib: u64,
    broker_hwm_kib: u64,
    bench_hwm_kib: u64,
}

struct Pids {
    server: String,
    broker: String,
    ticks: f64,
}

impl Pids {
    fn sample(&self) -> Result<Sample> {
        Ok(Sample {
            server_cpu: cpu_seconds(&self.server, self.ticks)?,
            broker_cpu: cpu_seconds(&self.broker, self.ticks)?,
            bench_cpu: cpu_seconds("self", self.ticks)?,
            server_hwm_kib: peak_rss_kib(&self.server)?,
            broker_hwm_kib: peak_rss_kib(&self.broker)?,
            bench_hwm_kib: peak_rss_kib("self")?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Light clients

/// What every light client of one configuration shares.
struct Shared {
    topics: Topics,
    trusted: VerifyingKey,
    /// The package's head: the base every delta is taken against.
    head: BTreeMap<String, Vec<f32>>,
    port: u16,
    ca_file: PathBuf,
    seed: u64,
    delta_scale: f32,
    stop: AtomicBool,
}

/// What a light client reports to the main thread as it happens.
enum Event {
    /// Connected for the first time, this long after the client started.
    Connected(Duration),
    /// A device saw a round's announcement for the first time.
    Announced(u64),
    /// The round ended for a device: the new global head's header (or the round closed).
    Finished(u64),
    Fetched(u64),
}

/// One device's round.
#[derive(Default)]
struct RoundLog {
    announced: Option<Instant>,
    /// The first frame of its update published (first chunk; `advertise_keys`).
    sent: Option<Instant>,
    acked: Option<(Instant, AckOutcome)>,
    /// Secure aggregation: when each server message arrived, by phase.
    phases: BTreeMap<String, Instant>,
    /// Secure aggregation: `unmask_response` sent (the device went through every phase).
    unmasked: Option<Instant>,
    head: Option<Instant>,
    closed: bool,
    fetched: Option<Instant>,
    up_update: u64,
    up_fetch: u64,
    down: u64,
    resends: u32,
}

/// One device's run.
struct LightLog {
    fetcher: bool,
    started: Instant,
    connected: Option<Instant>,
    disconnects: Vec<String>,
    /// Frames refused (undecodable, bad signature, bad chunk), with the reason.
    problems: Vec<String>,
    /// Payloads that belong to no round (the initial global head's header).
    down_other: u64,
    up_hello: u64,
    rounds: BTreeMap<u64, RoundLog>,
}

struct Outstanding {
    round: u64,
    blob: String,
    frames: Vec<Vec<u8>>,
    sent: Instant,
}

struct Light {
    index: usize,
    id: String,
    cert: Issued,
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
    link: Option<Link>,
    log: LightLog,
    installed: u64,
    outstanding: Option<Outstanding>,
    secure: Option<updater::secure::SecureRound>,
    /// The head being fetched and the chunks of it received.
    fetching: Option<(SignedGlobalHead, BTreeMap<u32, Vec<u8>>)>,
}

impl Light {
    fn link(&self) -> &Link {
        self.link.as_ref().expect("started")
    }

    fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<u64> {
        let len = payload.len() as u64;
        self.link().publish(topic, payload, false)?;
        Ok(len)
    }

    fn run(mut self) -> LightLog {
        self.log.started = Instant::now();
        let s = &self.shared;
        let link = Link::start(
            &LinkConfig {
                host: "127.0.0.1".into(),
                port: s.port,
                client_id: self.id.clone(),
                ca_file: s.ca_file.clone(),
                cert_file: self.cert.cert.clone(),
                key_file: self.cert.key.clone(),
                keep_alive: Duration::from_secs(30),
                persistent_session: true,
            },
            vec![
                s.topics.round(),
                s.topics.global(MODEL),
                s.topics.down(&self.id),
            ],
        );
        match link {
            Ok(link) => self.link = Some(link),
            Err(e) => {
                self.log.problems.push(format!("link: {e}"));
                return self.log;
            }
        }
        while !self.shared.stop.load(Ordering::Relaxed) {
            let event = self
                .link()
                .events()
                .recv_timeout(Duration::from_millis(100));
            let outcome = match event {
                Ok(Incoming::Connected) => self.connected(),
                Ok(Incoming::Disconnected(reason)) => {
                    let phase = if self.log.connected.is_some() {
                        "after connecting"
                    } else {
                        "while connecting"
                    };
                    self.log.disconnects.push(format!("{phase}: {reason}"));
                    Ok(())
                }
                Ok(Incoming::PublishRefused { reason }) => {
                    Err(anyhow::anyhow!("publish refused: {reason}"))
                }
                Ok(Incoming::Message { topic, payload, .. }) => self.handle(&topic, &payload),
                Err(mpsc::RecvTimeoutError::Timeout) => Ok(()),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.log.problems.push("the MQTT link stopped".into());
                    break;
                }
            };
            let outcome = outcome.and_then(|()| match &self.outstanding {
                Some(o) if o.sent.elapsed() >= RESEND_AFTER => self.resend(),
                _ => Ok(()),
            });
            if let Err(e) = outcome {
                self.log.problems.push(format!("{e:#}"));
            }
        }
        self.link().close();
        self.log
    }

    fn connected(&mut self) -> Result<()> {
        if self.log.connected.is_none() {
            self.log.connected = Some(Instant::now());
            let _ = self
                .events
                .send(Event::Connected(self.log.started.elapsed()));
        }
        let hello = Message::Hello(Hello {
            device: self.id.clone(),
            software: env!("CARGO_PKG_VERSION").into(),
            model: MODEL.into(),
            global_version: self.installed,
            participate: true,
        });
        let sent = self.publish(&self.shared.topics.up(&self.id), frame::encode(&hello, b""))?;
        self.log.up_hello += sent;
        if self.outstanding.is_some() {
            self.resend()?;
        }
        let pending = self
            .fetching
            .as_ref()
            .map(|(signed, _)| (signed.head.round, signed.head.version));
        if let Some((round, version)) = pending {
            self.fetch(round, version)?;
        }
        Ok(())
    }

    fn handle(&mut self, topic: &str, payload: &[u8]) -> Result<()> {
        let len = payload.len() as u64;
        let now = Instant::now();
        let (message, body) = match frame::decode(payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                self.log.down_other += len;
                bail!("frame refused: {e}");
            }
        };
        match message {
            Message::RoundAnnounce(round) => {
                let log = self.log.rounds.entry(round.round).or_default();
                log.down += len;
                if log.announced.is_some() {
                    return Ok(()); // retained and published again by the server
                }
                log.announced = Some(now);
                let _ = self.events.send(Event::Announced(round.round));
                ensure!(
                    round.federation == FEDERATION && round.model == MODEL,
                    "round {} is for another federation or model",
                    round.round
                );
                self.send_update(&round)
            }
            Message::RoundClosed(closed) => {
                let log = self.log.rounds.entry(closed.round).or_default();
                log.down += len;
                if !log.closed {
                    log.closed = true;
                    if log.head.is_none() {
                        let _ = self.events.send(Event::Finished(closed.round));
                    }
                }
                Ok(())
            }
            Message::GlobalHead(signed) => {
                let round = signed.head.round;
                match round {
                    0 => self.log.down_other += len,
                    r => self.log.rounds.entry(r).or_default().down += len,
                }
                if signed.head.version <= self.installed {
                    return Ok(()); // retained, or published again with the next round
                }
                signed
                    .verify(&self.shared.trusted, FEDERATION, MODEL, self.installed)
                    .map_err(|e| anyhow::anyhow!("global head refused: {e}"))?;
                self.installed = signed.head.version;
                if round == 0 {
                    return Ok(()); // the package's head: every light client has it
                }
                let log = self.log.rounds.entry(round).or_default();
                if log.head.is_none() {
                    log.head = Some(now);
                    if !log.closed {
                        let _ = self.events.send(Event::Finished(round));
                    }
                }
                if self.log.fetcher {
                    let version = signed.head.version;
                    self.fetching = Some((signed, BTreeMap::new()));
                    self.fetch(round, version)?;
                }
                Ok(())
            }
            Message::Chunk(header) => {
                let Some((signed, chunks)) = &mut self.fetching else {
                    self.log.down_other += len;
                    return Ok(()); // a fetch answered twice
                };
                if header.blob != signed.head.blob || header.size != signed.head.size {
                    self.log.down_other += len;
                    bail!("a chunk of another blob than the head being fetched");
                }
                let round = signed.head.round;
                self.log.rounds.entry(round).or_default().down += len;
                blob::check_chunk(&header, body)?;
                chunks.insert(header.index, body.to_vec());
                if chunks.len() < header.count as usize {
                    return Ok(());
                }
                let bytes: Vec<u8> = chunks.values().flatten().copied().collect();
                blob::check_blob(&bytes, &signed.head.blob, signed.head.size)?;
                updater::update::head(&bytes)?;
                self.fetching = None;
                let log = self.log.rounds.entry(round).or_default();
                if log.fetched.is_none() {
                    log.fetched = Some(now);
                    let _ = self.events.send(Event::Fetched(round));
                }
                Ok(())
            }
            Message::Ack(ack) => {
                self.log.rounds.entry(ack.round).or_default().down += len;
                let Some(outstanding) = &self.outstanding else {
                    return Ok(()); // a redelivered ack
                };
                if outstanding.round != ack.round || outstanding.blob != ack.blob {
                    bail!("ack for an update not sent (round {})", ack.round);
                }
                if ack.outcome == AckOutcome::Refused
                    && ack
                        .reason
                        .as_deref()
                        .unwrap_or("")
                        .starts_with("incomplete")
                {
                    return self.resend();
                }
                self.outstanding = None;
                let log = self.log.rounds.entry(ack.round).or_default();
                log.acked = Some((now, ack.outcome));
                if ack.outcome == AckOutcome::Refused {
                    bail!(
                        "update of round {} refused: {}",
                        ack.round,
                        ack.reason.unwrap_or_default()
                    );
                }
                Ok(())
            }
            Message::SecAgg(header) => {
                ensure!(
                    topic == self.shared.topics.down(&self.id),
                    "secure aggregation outside this device's topic"
                );
                let log = self.log.rounds.entry(header.round).or_default();
                log.down += len;
                log.phases.entry(header.phase.clone()).or_insert(now);
                let secure = self
                    .secure
                    .as_mut()
                    .filter(|s| s.round == header.round)
                    .with_context(|| {
                        format!(
                            "{} for round {}, not this device's",
                            header.phase, header.round
                        )
                    })?;
                let (phase, answer) = secure.on_message(&header.phase, body)?;
                let reply = Message::SecAgg(SecAggHeader {
                    round: header.round,
                    phase: phase.into(),
                });
                let sent = self.publish(
                    &self.shared.topics.up(&self.id),
                    frame::encode(&reply, &answer),
                )?;
                let log = self.log.rounds.entry(header.round).or_default();
                log.up_update += sent;
                if phase == SecAggPhase::UNMASK_RESPONSE {
                    log.unmasked = Some(Instant::now());
                    self.secure = None;
                }
                Ok(())
            }
            other => bail!("the server does not send {}", other.kind()),
        }
    }

    /// This device's seeded random local head for `round`: the package's head moved by a
    /// small delta, and its case count.
    fn local_head(&self, round: u64) -> (BTreeMap<String, Vec<f32>>, u32) {
        let s = &self.shared;
        let mut rng = fl_delta::rand_chacha::ChaCha20Rng::seed_from_u64(
            s.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add((self.index as u64) << 24)
                .wrapping_add(round),
        );
        let local = s
            .head
            .iter()
            .map(|(name, values)| {
                let moved = values
                    .iter()
                    .map(|v| v + rng.gen_range(-s.delta_scale..=s.delta_scale))
                    .collect();
                (name.clone(), moved)
            })
            .collect();
        (local, rng.gen_range(10..=100))
    }

    /// This device's update of `round` as the round asks: chunks and then the commit (through
    /// the updater's own encoding), or the first phase of secure aggregation.
    fn send_update(&mut self, round: &RoundAnnounce) -> Result<()> {
        let (local, cases) = self.local_head(round.round);
        let mut accountant = fl_delta::dp::Accountant::new();
        if round.secure_aggregation {
            let (delta, _norm) =
                updater::update::private_delta(round, &local, &self.shared.head, &mut accountant)?;
            let (secure, body) =
                updater::secure::SecureRound::start(round, &self.id, &delta, cases)?;
            self.secure = Some(secure);
            let advertise = Message::SecAgg(SecAggHeader {
                round: round.round,
                phase: SecAggPhase::ADVERTISE_KEYS.into(),
            });
            let log = self.log.rounds.entry(round.round).or_default();
            log.sent = Some(Instant::now());
            let sent = self.publish(
                &self.shared.topics.up(&self.id),
                frame::encode(&advertise, &body),
            )?;
            self.log.rounds.entry(round.round).or_default().up_update += sent;
            return Ok(());
        }
        let update =
            updater::update::build(round, &local, &self.shared.head, cases, &mut accountant)?;
        let mut frames = Vec::new();
        for (header, body) in blob::split(&update.blob)? {
            frames.push(frame::encode(&Message::Chunk(header), body));
        }
        frames.push(frame::encode(
            &Message::UpdateCommit(update.commit.clone()),
            b"",
        ));
        self.outstanding = Some(Outstanding {
            round: round.round,
            blob: update.commit.blob,
            frames,
            sent: Instant::now(),
        });
        self.log.rounds.entry(round.round).or_default().sent = Some(Instant::now());
        self.publish_outstanding()
    }

    fn publish_outstanding(&mut self) -> Result<()> {
        let Some(outstanding) = &mut self.outstanding else {
            return Ok(());
        };
        outstanding.sent = Instant::now();
        let up = self.shared.topics.up(&self.id);
        let mut bytes = 0;
        for frame in &outstanding.frames {
            bytes += frame.len() as u64;
            self.link
                .as_ref()
                .expect("started")
                .publish(&up, frame.clone(), false)?;
        }
        let round = outstanding.round;
        self.log.rounds.entry(round).or_default().up_update += bytes;
        Ok(())
    }

    fn resend(&mut self) -> Result<()> {
        if let Some(o) = &self.outstanding {
            let round = o.round;
            self.log.rounds.entry(round).or_default().resends += 1;
        }
        self.publish_outstanding()
    }

    fn fetch(&mut self, round: u64, version: u64) -> Result<()> {
        let fetch = Message::Fetch(Fetch {
            model: MODEL.into(),
            version,
        });
        let bytes = self.publish(&self.shared.topics.up(&self.id), frame::encode(&fetch, b""))?;
        self.log.rounds.entry(round).or_default().up_fetch += bytes;
        Ok(())
    }
}

/// Whether device `index` fetches global heads: `share` of the devices, spread evenly.
fn fetches(index: usize, share: f64) -> bool {
    ((index + 1) as f64 * share).floor() > (index as f64 * share).floor()
}

// ---------------------------------------------------------------------------------------------
// Figures

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Nearest-rank percentile `p` (0 to 100) of `values`; NaN when empty.
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        f64::NAN
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// "mean" or "mean (min-max)" of byte counts.
fn bytes_cell(values: &[f64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if min == max {
        format!("{min:.0}")
    } else {
        format!("{:.0} ({min:.0}-{max:.0})", mean(values))
    }
}

// ---------------------------------------------------------------------------------------------
// The fleet: certificates and keys, shared by the configurations

struct Fleet {
    o: Options,
    quorum: u32,
    pki: FleetPki,
    ids: Vec<String>,
    certs: Vec<Issued>,
    server_cert: Issued,
    /// The server's signing key pair (`federation keygen`).
    keys: tempfile::TempDir,
    trusted: VerifyingKey,
    head: BTreeMap<String, Vec<f32>>,
    fetchers: usize,
}

impl Fleet {
    /// The server's configuration in `dir` for the broker at `broker_url`; `secure` is the
    /// value of its `secure_aggregation` key (None: no such key).
    fn server_config(&self, dir: &Path, broker_url: &str, secure: Option<bool>) -> Result<PathBuf> {
        let o = &self.o;
        let enrolled: Vec<String> = self.ids.iter().map(|d| format!("{d:?}")).collect();
        let config = dir.join("federation.toml");
        let mut text = format!(
            "federation = {FEDERATION:?}\nbroker = {broker_url:?}\nca_file = {ca:?}\n\
             cert_file = {cert:?}\nkey_file = {key:?}\nsigning_key_file = {signing:?}\n\
             data_dir = \"data\"\nmodel = {MODEL:?}\ninitial_head = {head:?}\n\
             enrolled = [{enrolled}]\nquorum = {quorum}\nround_seconds = {seconds}\n\
             aggregator = \"fedavg\"\nencoding = {encoding:?}\nmax_rounds = {rounds}\n",
            ca = self.pki.ca.cert,
            cert = self.server_cert.cert,
            key = self.server_cert.key,
            signing = self.keys.path().join("signing.pem"),
            head = o.head,
            enrolled = enrolled.join(", "),
            quorum = self.quorum,
            seconds = o.round_seconds,
            encoding = o.encoding,
            rounds = o.rounds,
        );
        if let Some(secure) = secure {
            text.push_str(&format!("secure_aggregation = {secure}\n"));
        }
        std::fs::write(&config, text)?;
        Ok(config)
    }

    /// Whether the `federation` binary's configuration takes a `secure_aggregation` key: a
    /// configuration with it is loaded by `federation rounds list` (in a folder of its own).
    fn server_takes_secure_aggregation(&self) -> Result<bool> {
        let dir = tempfile::tempdir()?;
        let config = self.server_config(dir.path(), "mqtts://127.0.0.1:8883", Some(true))?;
        let out = Command::new(binary_named("federation"))
            .args(["rounds", "list", "--config"])
            .arg(&config)
            .output()
            .context("run federation rounds list")?;
        if out.status.success() {
            return Ok(true);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            stderr.contains("secure_aggregation"),
            "federation rounds list failed for another reason: {stderr}"
        );
        Ok(false)
    }
}

// ---------------------------------------------------------------------------------------------
// One configuration

/// Run `--rounds` rounds with a fresh broker, server and light clients; print what was
/// measured. False if the run did not complete in time.
fn run_configuration(fleet: &Fleet, secure: Option<bool>, title: &str) -> Result<bool> {
    let o = &fleet.o;
    let secure_run = secure == Some(true);
    println!();
    println!("== {title}");
    let broker = Broker::start(&fleet.pki);
    let server_dir = tempfile::tempdir()?;
    let config = fleet.server_config(server_dir.path(), &broker.url(), secure)?;
    let shared = Arc::new(Shared {
        topics: Topics::new(FEDERATION),
        trusted: fleet.trusted,
        head: fleet.head.clone(),
        port: broker.port,
        ca_file: fleet.pki.ca.cert.clone(),
        seed: o.seed,
        delta_scale: o.delta_scale,
        stop: AtomicBool::new(false),
    });

    // The light clients connect, all at once.
    let (events_tx, events) = mpsc::channel();
    let connect_started = Instant::now();
    let mut threads = Vec::new();
    for (index, (id, cert)) in fleet.ids.iter().zip(&fleet.certs).enumerate() {
        let light = Light {
            index,
            id: id.clone(),
            cert: cert.clone(),
            shared: shared.clone(),
            events: events_tx.clone(),
            link: None,
            log: LightLog {
                fetcher: fetches(index, o.fetch_share),
                started: Instant::now(),
                connected: None,
                disconnects: Vec::new(),
                problems: Vec::new(),
                down_other: 0,
                up_hello: 0,
                rounds: BTreeMap::new(),
            },
            installed: 1,
            outstanding: None,
            secure: None,
            fetching: None,
        };
        threads.push(
            std::thread::Builder::new()
                .name(id.clone())
                .spawn(move || light.run())?,
        );
    }
    drop(events_tx);
    let mut per_client = Vec::new();
    let connect_deadline = Instant::now() + Duration::from_secs(180);
    while per_client.len() < o.devices {
        let left = connect_deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Connected(after)) => per_client.push(secs(after)),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let connect_wall = connect_started.elapsed();
    let connected = per_client.len();
    if connected < o.devices {
        shared.stop.store(true, Ordering::Relaxed);
        let tail: Vec<String> = broker
            .log()
            .lines()
            .rev()
            .take(30)
            .map(String::from)
            .collect();
        bail!(
            "only {connected} of {} light clients connected in 180 s; broker log (newest \
             first):\n{}",
            o.devices,
            tail.join("\n")
        );
    }
    println!(
        "connect: {connected} mutual-TLS MQTT connections established in {:.2} s (start of the \
         first link to the last CONNACK); per client p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
        secs(connect_wall),
        percentile(&per_client, 50.0) * 1e3,
        percentile(&per_client, 95.0) * 1e3,
        percentile(&per_client, 100.0) * 1e3,
    );

    // The server; rounds.
    let mut server = Process::start(
        "federation",
        &["serve", "--config", config.to_str().context("path")?],
        server_dir.path().join("server.log"),
    );
    let pids = Pids {
        server: child_pid("federation")?,
        broker: child_pid("mosquitto")?,
        ticks: clock_ticks(),
    };
    let server_started = Instant::now();
    let mut boundaries: BTreeMap<u64, Sample> = BTreeMap::new();
    let mut finished: BTreeMap<u64, usize> = BTreeMap::new();
    let mut fetched: BTreeMap<u64, usize> = BTreeMap::new();
    let limit = Duration::from_secs(o.rounds * (2 * o.round_seconds + 30) + 60);
    let all_done = |finished: &BTreeMap<u64, usize>, fetched: &BTreeMap<u64, usize>| {
        (1..=o.rounds).all(|r| {
            finished.get(&r).copied().unwrap_or(0) >= o.devices
                && fetched.get(&r).copied().unwrap_or(0) >= fleet.fetchers
        })
    };
    let mut complete = false;
    while server_started.elapsed() < limit {
        match events.recv_timeout(Duration::from_millis(500)) {
            Ok(Event::Announced(round)) => {
                if !boundaries.contains_key(&round) {
                    boundaries.insert(round, pids.sample()?);
                }
            }
            Ok(Event::Finished(round)) => *finished.entry(round).or_default() += 1,
            Ok(Event::Fetched(round)) => *fetched.entry(round).or_default() += 1,
            Ok(Event::Connected(_)) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if all_done(&finished, &fetched) {
            complete = true;
            break;
        }
        if !server.is_running() {
            break;
        }
    }
    let end = (Instant::now(), pids.sample()?);
    let rounds_list = hil_tests::fleet::run(
        "federation",
        &[
            "rounds",
            "list",
            "--config",
            config.to_str().context("path")?,
            "--json",
        ],
    );
    shared.stop.store(true, Ordering::Relaxed);
    let logs: Vec<LightLog> = threads
        .into_iter()
        .map(|t| {
            t.join()
                .map_err(|_| anyhow::anyhow!("a light client panicked"))
        })
        .collect::<Result<_>>()?;
    let server_exit_ok = server.stop();

    // Timing and CPU per round.
    let server_rounds: BTreeMap<u64, serde_json::Value> = rounds_list
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["round"].as_u64()?, v)))
        .collect();
    println!();
    println!(
        "{:>5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "round",
        if secure_run { "all phases" } else { "accepted" },
        "round s",
        "dev p50 s",
        "update",
        "update",
        "server",
        "server",
        "broker",
        "bench CPU"
    );
    println!(
        "{:>5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "", "/ devices", "", "", "p50 ms", "max ms", "CPU s", "HWM MiB", "CPU s", "s (light)"
    );
    let mut bytes_rows = Vec::new();
    let mut phase_rows = Vec::new();
    for round in 1..=o.rounds {
        let of_round: Vec<&RoundLog> = logs.iter().filter_map(|l| l.rounds.get(&round)).collect();
        let through = if secure_run {
            of_round.iter().filter(|r| r.unmasked.is_some()).count()
        } else {
            of_round
                .iter()
                .filter(|r| matches!(r.acked, Some((_, AckOutcome::Accepted))))
                .count()
        };
        let announced: Vec<Instant> = of_round.iter().filter_map(|r| r.announced).collect();
        let heads: Vec<Instant> = of_round.iter().filter_map(|r| r.head).collect();
        let round_s = match (announced.iter().min(), heads.iter().max()) {
            (Some(a), Some(h)) if heads.len() == o.devices => format!("{:.2}", secs(*h - *a)),
            (Some(a), Some(h)) => format!("{:.2}*", secs(*h - *a)),
            _ => "-".into(),
        };
        let per_device: Vec<f64> = of_round
            .iter()
            .filter_map(|r| Some(secs(r.head? - r.announced?)))
            .collect();
        let update_ms: Vec<f64> = of_round
            .iter()
            .filter_map(|r| {
                let done = if secure_run {
                    *r.phases.get(SecAggPhase::UNMASK_REQUEST)?
                } else {
                    r.acked?.0
                };
                Some(secs(done - r.sent?) * 1e3)
            })
            .collect();
        let start = boundaries.get(&round).copied();
        let stop = boundaries.get(&(round + 1)).copied().unwrap_or(end.1);
        let (server_cpu, broker_cpu, bench_cpu, hwm) = match start {
            Some(s) => (
                format!("{:.2}", stop.server_cpu - s.server_cpu),
                format!("{:.2}", stop.broker_cpu - s.broker_cpu),
                format!("{:.2}", stop.bench_cpu - s.bench_cpu),
                format!("{:.1}", stop.server_hwm_kib as f64 / 1024.0),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:>5} {:>10} {:>9} {:>9.2} {:>9.0} {:>9.0} {:>9} {:>9} {:>9} {:>10}",
            round,
            format!("{through}/{}", o.devices),
            round_s,
            percentile(&per_device, 50.0),
            percentile(&update_ms, 50.0),
            percentile(&update_ms, 100.0),
            server_cpu,
            hwm,
            broker_cpu,
            bench_cpu,
        );
        let up: Vec<f64> = of_round
            .iter()
            .filter(|r| r.sent.is_some())
            .map(|r| r.up_update as f64)
            .collect();
        let down = |fetcher: bool| -> Vec<f64> {
            logs.iter()
                .filter(|l| l.fetcher == fetcher)
                .filter_map(|l| l.rounds.get(&round))
                .map(|r| r.down as f64)
                .collect()
        };
        let fetch_ms: Vec<f64> = of_round
            .iter()
            .filter_map(|r| Some(secs(r.fetched? - r.head?) * 1e3))
            .collect();
        let resends: u32 = of_round.iter().map(|r| r.resends).sum();
        let server_row = server_rounds
            .get(&round)
            .and_then(|v| {
                Some(format!(
                    "{} {}/{}",
                    v["state"].as_str()?,
                    v["participants"],
                    v["bytes_in"]
                ))
            })
            .unwrap_or_else(|| "-".into());
        bytes_rows.push(format!(
            "{:>5} {:>20} {:>20} {:>20} {:>10.0} {:>8} {:>18}",
            round,
            bytes_cell(&up),
            bytes_cell(&down(false)),
            bytes_cell(&down(true)),
            percentile(&fetch_ms, 50.0),
            resends,
            server_row,
        ));
        let after_announce = |at: &dyn Fn(&RoundLog) -> Option<Instant>| -> f64 {
            let v: Vec<f64> = of_round
                .iter()
                .filter_map(|r| Some(secs(at(r)? - r.announced?) * 1e3))
                .collect();
            percentile(&v, 50.0)
        };
        phase_rows.push(format!(
            "{:>5} {:>15.0} {:>15.0} {:>15.0} {:>15.0} {:>15.0}",
            round,
            after_announce(&|r| r.phases.get(SecAggPhase::NEIGHBOUR_KEYS).copied()),
            after_announce(&|r| r.phases.get(SecAggPhase::RELAYED_SHARES).copied()),
            after_announce(&|r| r.phases.get(SecAggPhase::UNMASK_REQUEST).copied()),
            after_announce(&|r| r.unmasked),
            after_announce(&|r| r.head),
        ));
    }

    // Bytes per round.
    println!();
    println!(
        "{:>5} {:>20} {:>20} {:>20} {:>10} {:>8} {:>18}",
        "round",
        "up B/device",
        "down B/device",
        "down B/device",
        "fetch p50",
        "resends",
        "server says"
    );
    println!(
        "{:>5} {:>20} {:>20} {:>20} {:>10} {:>8} {:>18}",
        "",
        if secure_run {
            "4 sec_agg frames"
        } else {
            "chunks+commit"
        },
        format!("header only ({})", o.devices - fleet.fetchers),
        format!("fetched head ({})", fleet.fetchers),
        "ms",
        "",
        "state n/bytes_in"
    );
    for row in bytes_rows {
        println!("{row}");
    }
    if secure_run {
        println!();
        println!("secure aggregation, p50 ms after the device saw the announcement:");
        println!(
            "{:>5} {:>15} {:>15} {:>15} {:>15} {:>15}",
            "round",
            "neighbour_keys",
            "relayed_shares",
            "unmask_request",
            "unmask sent",
            "new head"
        );
        for row in phase_rows {
            println!("{row}");
        }
    }

    // Totals and anything that went wrong.
    println!();
    let (fetch_up, hello_up): (u64, u64) = logs.iter().fold((0, 0), |(f, h), l| {
        (
            f + l.rounds.values().map(|r| r.up_fetch).sum::<u64>(),
            h + l.up_hello,
        )
    });
    println!(
        "server: {:.2} CPU s and VmHWM {:.1} MiB over the run ({:.1} s from its start), exit {}; \
         broker {:.2} CPU s and VmHWM {:.1} MiB; this process (the light clients) {:.2} CPU s \
         and VmHWM {:.1} MiB",
        end.1.server_cpu,
        end.1.server_hwm_kib as f64 / 1024.0,
        secs(end.0 - server_started),
        if server_exit_ok { "0" } else { "non-zero" },
        end.1.broker_cpu,
        end.1.broker_hwm_kib as f64 / 1024.0,
        end.1.bench_cpu,
        end.1.bench_hwm_kib as f64 / 1024.0,
    );
    println!(
        "not in the up column: fetch requests {fetch_up} B in all, hellos {hello_up} B in all \
         (sent on connect, before the server subscribed)"
    );
    let mut disconnects: BTreeMap<&str, usize> = BTreeMap::new();
    for reason in logs.iter().flat_map(|l| &l.disconnects) {
        *disconnects.entry(reason.as_str()).or_default() += 1;
    }
    println!(
        "disconnects (the link reconnects by itself): {}{}",
        disconnects.values().sum::<usize>(),
        disconnects
            .iter()
            .map(|(reason, n)| format!("\n  {n} x {reason}"))
            .collect::<String>()
    );
    let problems: Vec<String> = logs
        .iter()
        .zip(&fleet.ids)
        .flat_map(|(l, id)| l.problems.iter().map(move |p| format!("{id}: {p}")))
        .collect();
    println!(
        "problems: {}{}",
        problems.len(),
        problems
            .iter()
            .take(10)
            .map(|p| format!("\n  {p}"))
            .collect::<String>()
    );
    if !complete {
        let log = std::fs::read_to_string(server_dir.path().join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        println!(
            "INCOMPLETE: not done within {} s: devices finished per round {finished:?}, fetched \
             {fetched:?}; server log (newest first):\n{}",
            limit.as_secs(),
            tail.join("\n")
        );
    }
    Ok(complete)
}

// ---------------------------------------------------------------------------------------------

fn run() -> Result<()> {
    let o = parse_options()?;
    let run_started = Instant::now();
    let open_files = raise_open_files()?;
    let quorum = o
        .quorum
        .unwrap_or(((o.devices as f64) * 0.9).ceil().max(1.0) as u32);
    ensure!(
        quorum >= 1 && quorum as usize <= o.devices,
        "--quorum: 1 to --devices"
    );
    let head_bytes =
        std::fs::read(&o.head).with_context(|| format!("read {}", o.head.display()))?;
    let shapes = fleet_wire::tensors::shapes(&head_bytes)?;
    let head = updater::update::head(&head_bytes)?;
    let values: usize = head.values().map(Vec::len).sum();
    let ids: Vec<String> = (0..o.devices).map(|i| format!("dev-{i:03}")).collect();
    let fetchers = (0..o.devices)
        .filter(|&i| fetches(i, o.fetch_share))
        .count();

    println!(
        "fleet_bench: {} light clients, {} rounds, quorum {quorum}, round_seconds {}, encoding \
         {}, fetching the blob: {fetchers} devices ({:.0} %), open files limit {open_files}",
        o.devices,
        o.rounds,
        o.round_seconds,
        o.encoding,
        o.fetch_share * 100.0
    );
    println!(
        "machine: {} CPUs, load average at start {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "head: {} ({} F32 tensors, {values} values): {}",
        o.head.display(),
        shapes.len(),
        shapes
            .iter()
            .map(|(name, shape)| format!("{name} {shape:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Certificates and the server's keys, for every configuration.
    let setup = Instant::now();
    let pki = FleetPki::new();
    let certs: Vec<Issued> = ids.iter().map(|id| pki.client(id)).collect();
    let server_cert = pki.client("federation-server");
    let keys = tempfile::tempdir()?;
    let (private_key, public_key) = (
        keys.path().join("signing.pem"),
        keys.path().join("signing.pub.pem"),
    );
    hil_tests::fleet::run(
        "federation",
        &[
            "keygen",
            "--private",
            private_key.to_str().context("path")?,
            "--public",
            public_key.to_str().context("path")?,
        ],
    );
    let trusted =
        fleet_wire::signed::verifying_key_from_pem(&std::fs::read_to_string(&public_key)?)?;
    println!(
        "setup: {} client certificates (openssl, RSA 2048) and the server's signing key in \
         {:.1} s",
        certs.len() + 1,
        secs(setup.elapsed())
    );
    let fleet = Fleet {
        o,
        quorum,
        pki,
        ids,
        certs,
        server_cert,
        keys,
        trusted,
        head,
        fetchers,
    };
    let secure_key = fleet.server_takes_secure_aggregation()?;
    let server_binary = binary_named("federation");
    let age = std::fs::metadata(&server_binary)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| m.elapsed().ok())
        .map_or("?".into(), |d| format!("{:.0}", d.as_secs_f64()));
    println!(
        "server: {} (modified {age} s ago), takes a secure_aggregation key: {}",
        server_binary.display(),
        if secure_key { "yes" } else { "no" }
    );

    let mut complete = run_configuration(
        &fleet,
        secure_key.then_some(false),
        &format!(
            "plain: {} updates (chunks + update_commit), fedavg",
            fleet.o.encoding
        ),
    )?;
    println!();
    if !secure_key {
        println!("== secure aggregation: not implemented in the server yet");
    } else if !fleet.o.secure_aggregation {
        println!("== secure aggregation: not run (pass --secure-aggregation)");
    } else {
        complete &= run_configuration(
            &fleet,
            Some(true),
            "secure aggregation: SecAgg+ (four phases, masked fixed-point inputs), mean of \
             the survivors",
        )?;
    }
    println!();
    println!(
        "notes: round s = first announcement seen to the last device seeing the new head (* = \
         not every device saw it); dev p50 = per device, its announcement to its head; update = \
         first chunk published to ack (plain), advertise_keys published to unmask_request \
         received (secure); accepted = accepted acks (plain), all phases = devices that sent \
         unmask_response (secure); CPU = from the round's announcement to the next one's (the \
         last round: to the end), so the fetches of the round's head are in it"
    );
    println!("run time: {:.1} s", secs(run_started.elapsed()));
    ensure!(
        complete,
        "a configuration did not complete (see INCOMPLETE above)"
    );
    Ok(())
}
