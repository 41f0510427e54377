//! The fleet's federated learning over a real broker: mosquitto with mutual TLS and an ACL
//! keyed on the certificate CN, the `federation` server and one `updater` per site, each with
//! its own data folder. Heads are small named tensors; the appliance's side of the hand-over
//! folder (`fleet_wire::site`) is played by the test.

use fleet_mqtt::{Incoming, Link, LinkConfig};
use fleet_wire::message::Message;
use fleet_wire::tensors::{self, Array};
use hil_tests::federated::{
    read_head, rounds, server_setup, signing_keys, ServerSetup, Site, B0, FEDERATION, MODEL, W0,
};
use hil_tests::fleet::{run, Broker, FleetPki, Process};
use hil_tests::wait_until;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

fn link(
    pki: &FleetPki,
    broker: &Broker,
    client_id: &str,
    cert: &hil_tests::pki::Issued,
    subscriptions: Vec<String>,
) -> Link {
    Link::start(
        &LinkConfig {
            host: "127.0.0.1".into(),
            port: broker.port,
            client_id: client_id.into(),
            ca_file: pki.ca.cert.clone(),
            cert_file: cert.cert.clone(),
            key_file: cert.key.clone(),
            keep_alive: Duration::from_secs(30),
            persistent_session: true,
        },
        subscriptions,
    )
    .expect("start a link")
}

fn wait_for(
    link: &Link,
    timeout: Duration,
    mut want: impl FnMut(&Incoming) -> bool,
) -> Vec<Incoming> {
    let deadline = std::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match link.events().recv_timeout(left) {
            Ok(event) => {
                let done = want(&event);
                seen.push(event);
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    seen
}

/// A broker, a server and sites, started by the test.
struct Fleet {
    pki: FleetPki,
    broker: Broker,
    server: ServerSetup,
    sites: Vec<Site>,
    federation: Option<Process>,
    updaters: Vec<Option<Process>>,
}

impl Fleet {
    fn new(ids: &[&str], quorum: u32, aggregator: &str, extra: &str) -> Fleet {
        Fleet::with_round_seconds(ids, quorum, aggregator, extra, 120)
    }

    fn with_round_seconds(
        ids: &[&str],
        quorum: u32,
        aggregator: &str,
        extra: &str,
        round_seconds: u64,
    ) -> Fleet {
        let pki = FleetPki::new();
        let broker = Broker::start(&pki);
        let server = server_setup(&pki, &broker, ids, quorum, round_seconds, aggregator);
        let mut text = std::fs::read_to_string(&server.config).unwrap();
        text.push_str(extra);
        // Tests of individual updates turn secure aggregation (on by default) off.
        if !extra.contains("secure_aggregation") {
            text.push_str("secure_aggregation = false\n");
        }
        std::fs::write(&server.config, text).unwrap();
        let sites = ids
            .iter()
            .map(|id| Site::new(&pki, &broker, &server, id))
            .collect();
        Fleet {
            pki,
            broker,
            server,
            sites,
            federation: None,
            updaters: ids.iter().map(|_| None).collect(),
        }
    }

    fn start_server(&mut self) {
        self.federation = Some(Process::start(
            "federation",
            &["serve", "--config", self.server.config.to_str().unwrap()],
            self.server.dir.path().join("server.log"),
        ));
    }

    fn start_updater(&mut self, i: usize) {
        self.updaters[i] = Some(self.sites[i].updater());
    }

    fn server(&mut self) -> &mut Process {
        self.federation.as_mut().expect("server started")
    }

    fn round(&self, number: u64) -> Option<serde_json::Value> {
        rounds(&self.server)
            .into_iter()
            .find(|r| r["round"] == number)
    }

    fn logs(&self) -> String {
        format!(
            "server:\n{}\nsites:\n{}\nbroker:\n{}",
            self.federation
                .as_ref()
                .map(|p| p.log())
                .unwrap_or_default(),
            self.updaters
                .iter()
                .flatten()
                .map(|u| u.log())
                .collect::<Vec<_>>()
                .join("\n---\n"),
            self.broker.log()
        )
    }

    /// Wait until every site in `sites` installed global `version`.
    fn wait_installed(&self, sites: &[usize], version: u64, timeout: Duration) {
        // The updater hands the weights over first and the signed header last: the header
        // marks the hand-over complete (as the appliance's learner reads it).
        let done = wait_until(timeout, || {
            sites.iter().all(|&i| {
                let head = self.sites[i].global(version);
                head.is_file() && head.with_extension("json").is_file()
            })
        });
        assert!(
            done,
            "global {version} not installed everywhere\n{}",
            self.logs()
        );
    }

    fn updater_log(&self, i: usize) -> String {
        self.updaters[i]
            .as_ref()
            .map(|u| u.log())
            .unwrap_or_default()
    }
}

/// Whether `bytes` hold something that looks like a DICOM UID: digits with at least four
/// dots between digit runs (no message of ours has one; every DICOM UID has).
fn has_uid_like(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let mut run_dots = 0;
    let mut last_digit = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            last_digit = true;
        } else if c == '.' && last_digit {
            run_dots += 1;
            last_digit = false;
            if run_dots >= 4 {
                return true;
            }
        } else {
            run_dots = 0;
            last_digit = false;
        }
    }
    false
}

/// Subscribes to `#` with the observer's certificate and keeps every message it sees.
struct Observer {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>,
}

impl Observer {
    fn start(pki: &FleetPki, broker: &Broker) -> Observer {
        let cert = pki.client("observer");
        let observer = link(pki, broker, "observer", &cert, vec!["#".into()]);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = seen.clone();
        std::thread::spawn(move || {
            while let Ok(event) = observer.events().recv() {
                if let Incoming::Message { topic, payload, .. } = event {
                    kept.lock().unwrap().push((topic, payload));
                }
            }
        });
        // Subscribed before anything else happens.
        std::thread::sleep(Duration::from_millis(500));
        Observer { seen }
    }

    /// Some update went by (a topic ending in `update_topic`), and no message held DICOM,
    /// anything shaped like a UID, or any of `identifiers`.
    fn assert_nothing_identifying(&self, update_topic: &str, identifiers: &[&str]) {
        let seen = self.messages();
        assert!(
            seen.iter().any(|(t, _)| t.ends_with(update_topic)),
            "the observer saw no update"
        );
        for (topic, payload) in &seen {
            assert!(
                !payload.windows(4).any(|w| w == b"DICM"),
                "{topic}: DICOM on the broker"
            );
            assert!(
                !has_uid_like(payload),
                "{topic}: something shaped like a UID on the broker"
            );
            for id in identifiers {
                assert!(
                    !payload.windows(id.len()).any(|w| w == id.as_bytes()),
                    "{topic}: an identifier on the broker"
                );
            }
        }
    }

    fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.seen.lock().unwrap().clone()
    }
}

/// Three sites, quorum 3, float32 deltas: every site sends its delta, the server aggregates by
/// FedAvg weighted
/// by case counts, signs global version 2, and every site verifies and installs it; the
/// round is recorded with its participants and bytes, and the next round opens. An observer
/// subscribed to `#` for the whole run sees no DICOM and nothing shaped like a UID.
#[test]
fn three_sites_complete_a_round_and_install_the_signed_fedavg_global_head() {
    let mut fleet = Fleet::new(
        &["site-a", "site-b", "site-c"],
        3,
        "fedavg",
        "encoding = \"f32\"\n",
    );
    let observer = Observer::start(&fleet.pki, &fleet.broker);
    let deltas: [([f32; 6], [f32; 2], u32); 3] = [
        ([0.1, 0.0, 0.0, 0.2, 0.0, 0.0], [0.01, 0.0], 10),
        ([0.0, 0.3, 0.0, 0.0, -0.2, 0.0], [0.0, 0.02], 30),
        ([0.2, 0.0, -0.1, 0.0, 0.0, 0.4], [0.03, 0.0], 60),
    ];
    for (site, (dw, db, cases)) in fleet.sites.iter().zip(&deltas) {
        let w: Vec<f32> = W0.iter().zip(dw).map(|(a, d)| a + d).collect();
        let b: Vec<f32> = B0.iter().zip(db).map(|(a, d)| a + d).collect();
        site.put_local_head(1, &w, &b, *cases);
    }
    fleet.start_server();
    for i in 0..3 {
        fleet.start_updater(i);
    }
    fleet.wait_installed(&[0, 1, 2], 2, Duration::from_secs(90));
    let total: f32 = deltas.iter().map(|d| d.2 as f32).sum();
    let expected_w: Vec<f32> = (0..6)
        .map(|i| W0[i] + deltas.iter().map(|d| d.0[i] * d.2 as f32).sum::<f32>() / total)
        .collect();
    let expected_b: Vec<f32> = (0..2)
        .map(|i| B0[i] + deltas.iter().map(|d| d.1[i] * d.2 as f32).sum::<f32>() / total)
        .collect();
    for site in &fleet.sites {
        let head = read_head(&site.global(2));
        for (got, want) in head["w"]
            .iter()
            .zip(&expected_w)
            .chain(head["b"].iter().zip(&expected_b))
        {
            assert!(
                (got - want).abs() < 1e-6,
                "{}: {head:?} vs {expected_w:?} {expected_b:?}",
                site.id
            );
        }
        let header: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(site.global(2).with_extension("json")).unwrap(),
        )
        .unwrap();
        assert_eq!(header["version"], 2);
        assert_eq!(header["participants"], 3);
    }
    let first = fleet.round(1).expect("round 1");
    assert_eq!(first["state"], "aggregated");
    assert_eq!(first["participants"], 3);
    assert_eq!(first["new_version"], 2);
    assert!(first["bytes_in"].as_u64().unwrap() > 0);
    assert!(wait_until(Duration::from_secs(10), || fleet
        .round(2)
        .is_some_and(|r| r["state"] == "open")));
    for site in &fleet.sites {
        assert!(
            wait_until(Duration::from_secs(10), || {
                let status = site.status();
                status["global_version"] == 2
                    && status["queued_updates"] == 0
                    && status["connected"] == true
            }),
            "{}: {}",
            site.id,
            site.status()
        );
    }
    let devices = run(
        "federation",
        &[
            "devices",
            "list",
            "--config",
            fleet.server.config.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(devices.lines().count(), 3, "{devices}");
    observer.assert_nothing_identifying("/up", &[]);
    for updater in fleet.updaters.iter_mut().flatten() {
        assert!(updater.stop(), "{}", updater.log());
    }
    assert!(fleet.server().stop(), "{}", fleet.logs());
}

/// The ACL keys every topic on the certificate: a device cannot publish on another device's
/// topic (PUBACK "not authorised"), cannot announce a round, and a client whose certificate
/// comes from another CA never gets a session.
#[test]
fn the_broker_refuses_other_devices_topics_and_certificates_of_another_ca() {
    let pki = FleetPki::new();
    let broker = Broker::start(&pki);
    let site_a = pki.client("site-a");
    let a = link(&pki, &broker, "site-a", &site_a, vec![]);
    assert!(
        wait_for(&a, Duration::from_secs(10), |e| *e == Incoming::Connected)
            .contains(&Incoming::Connected)
    );
    let topics = fleet_wire::Topics::new(FEDERATION);
    for topic in [topics.up("site-b"), topics.round(), topics.global(MODEL)] {
        a.publish(&topic, b"x".to_vec(), false).unwrap();
        let seen = wait_for(&a, Duration::from_secs(10), |e| {
            matches!(e, Incoming::PublishRefused { .. })
        });
        assert!(
            seen.iter().any(|e| matches!(e, Incoming::PublishRefused { reason } if reason.contains("NotAuthorized"))),
            "{topic}: {seen:?}"
        );
    }
    // Its own topic is allowed.
    a.publish(&topics.up("site-a"), b"x".to_vec(), false)
        .unwrap();
    let seen = wait_for(&a, Duration::from_secs(3), |e| {
        matches!(e, Incoming::PublishRefused { .. })
    });
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Incoming::PublishRefused { .. })),
        "{seen:?}"
    );

    let other = hil_tests::pki::Pki::new();
    let other_ca = other.ca("other");
    let stranger = other.issue(&other_ca, "site-x", "site-x", &[]);
    let x = link(&pki, &broker, "site-x", &stranger, vec![]);
    let seen = wait_for(&x, Duration::from_secs(8), |e| *e == Incoming::Connected);
    assert!(!seen.contains(&Incoming::Connected), "{seen:?}");
    assert!(
        seen.iter().any(|e| matches!(e, Incoming::Disconnected(_))),
        "{seen:?}"
    );
}

/// Four sites, one poisoned (a delta of +5 on every weight): with `trimmed_mean` dropping a
/// quarter at each end, every weight of the new global head stays within what the honest
/// sites sent (within the int8 quantisation step of the default encoding, max|delta|/127 a
/// block), where FedAvg would have moved it by more than a whole unit.
#[test]
fn a_poisoned_device_does_not_move_the_trimmed_mean_global_head_outside_the_honest_updates() {
    let ids = ["site-a", "site-b", "site-c", "site-d"];
    let mut fleet = Fleet::new(&ids, 4, "trimmed_mean", "trim_fraction = 0.25\n");
    let honest: [[f32; 6]; 3] = [
        [0.1, -0.1, 0.05, 0.0, 0.2, -0.05],
        [0.12, -0.08, 0.0, 0.03, 0.15, 0.0],
        [0.08, -0.12, 0.02, 0.01, 0.25, -0.02],
    ];
    for (i, site) in fleet.sites.iter().enumerate() {
        let delta: [f32; 6] = if i < 3 { honest[i] } else { [5.0; 6] };
        let w: Vec<f32> = W0.iter().zip(&delta).map(|(a, d)| a + d).collect();
        let b: Vec<f32> = B0
            .iter()
            .map(|b| b + if i < 3 { 0.0 } else { 5.0 })
            .collect();
        site.put_local_head(1, &w, &b, 10);
    }
    fleet.start_server();
    for i in 0..4 {
        fleet.start_updater(i);
    }
    fleet.wait_installed(&[0, 1, 2, 3], 2, Duration::from_secs(90));
    let head = read_head(&fleet.sites[0].global(2));
    for (k, got) in head["w"].iter().enumerate() {
        let low = honest
            .iter()
            .map(|d| W0[k] + d[k])
            .fold(f32::INFINITY, f32::min);
        let high = honest
            .iter()
            .map(|d| W0[k] + d[k])
            .fold(f32::NEG_INFINITY, f32::max);
        // One quantisation step: the block's max |delta| (0.25 honest) over 127; the
        // poisoned block's codes never reach the middle values.
        let step = 0.25 / 127.0 + 1e-6;
        assert!(
            (low - step..=high + step).contains(got),
            "w[{k}] = {got}, honest range {low}..{high}"
        );
    }
    for (k, got) in head["b"].iter().enumerate() {
        assert!((got - B0[k]).abs() < 1e-6, "b[{k}] = {got}");
    }
}

/// Hostile traffic on both sides, after a first round: junk, an oversized frame and an update
/// for a round that is not open are refused by the server with the reason, and a replayed
/// update is recognised and not counted again; a tampered, an older and a junk global head are refused
/// by the devices with the reason; everyone keeps running and the next round still completes.
#[test]
fn malformed_oversized_replayed_out_of_round_and_tampered_messages_are_refused_and_everyone_keeps_running(
) {
    // Two whole chunks of 192 KiB may wait per device, not three.
    let mut fleet = Fleet::new(
        &["site-a", "site-b"],
        2,
        "fedavg",
        "max_pending_bytes_per_device = 400000\n",
    );
    let observer = Observer::start(&fleet.pki, &fleet.broker);
    for site in &fleet.sites {
        site.put_local_head(1, &[0.6, -0.25, 1.0, 0.0, 2.0, -1.5], &B0, 5);
    }
    fleet.start_server();
    fleet.start_updater(0);
    fleet.start_updater(1);
    fleet.wait_installed(&[0, 1], 2, Duration::from_secs(90));
    assert!(wait_until(Duration::from_secs(10), || fleet
        .round(2)
        .is_some()));
    let topics = fleet_wire::Topics::new(FEDERATION);

    // Device side to the server, with site-a's own certificate.
    let site_a = fleet.pki.client("site-a");
    let a = link(&fleet.pki, &fleet.broker, "site-a-test", &site_a, vec![]);
    assert!(
        wait_for(&a, Duration::from_secs(10), |e| *e == Incoming::Connected)
            .contains(&Incoming::Connected)
    );
    a.publish(
        &topics.up("site-a"),
        b"\x00\x00\x00\x05{junk".to_vec(),
        false,
    )
    .unwrap();
    let mut big = fleet_wire::frame::encode(
        &Message::Fetch(fleet_wire::message::Fetch {
            model: MODEL.into(),
            version: 2,
        }),
        b"",
    );
    big.resize(fleet_wire::MAX_FRAME_BYTES + 100, b' ');
    a.publish(&topics.up("site-a"), big, false).unwrap();
    // Site-a's own round-1 update, replayed verbatim from what the observer saw.
    let replay: Vec<Vec<u8>> = observer
        .messages()
        .into_iter()
        .filter(|(t, _)| *t == topics.up("site-a"))
        .map(|(_, p)| p)
        .filter(|p| {
            matches!(
                fleet_wire::frame::decode(p),
                Ok((Message::Chunk(_) | Message::UpdateCommit(_), _))
            )
        })
        .collect();
    assert!(replay.len() >= 2, "the observer saw no update of site-a");
    for payload in &replay {
        a.publish(&topics.up("site-a"), payload.clone(), false)
            .unwrap();
    }
    // An update for a round that is not open.
    let future = Message::UpdateCommit(fleet_wire::message::UpdateCommit {
        round: 99,
        blob: "cd".repeat(32),
        size: 100,
        count: 1,
        cases: 3,
        base_version: 2,
        encoding: "int8-block256".into(),
        clip_norm: None,
        noise_multiplier: None,
    });
    a.publish(
        &topics.up("site-a"),
        fleet_wire::frame::encode(&future, b""),
        false,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || {
            let log = fleet.federation.as_ref().unwrap().log();
            log.contains("header is not a JSON object")
                || log.contains("frame of") && log.contains("exceeds the limit")
        }),
        "{}",
        fleet.logs()
    );
    assert!(
        wait_until(Duration::from_secs(15), || {
            let log = fleet.federation.as_ref().unwrap().log();
            log.contains("exceeds the limit")
                && log.contains("out of round: update for round 99, round 2 is open")
                && log.contains("duplicate update")
        }),
        "{}",
        fleet.logs()
    );
    assert_eq!(
        fleet.round(2).unwrap()["participants"],
        0,
        "a replay counted"
    );

    // Server side to the devices, with the server's certificate but not its key.
    let server_cert = fleet.pki.client("federation-server");
    let t = link(&fleet.pki, &fleet.broker, "tamperer", &server_cert, vec![]);
    assert!(
        wait_for(&t, Duration::from_secs(10), |e| *e == Incoming::Connected)
            .contains(&Incoming::Connected)
    );
    let real_key = fleet_wire::signed::signing_key_from_pem(
        &std::fs::read_to_string(&fleet.server.private_key).unwrap(),
    )
    .unwrap();
    let other_key = fleet_wire::signed::SigningKey::from_bytes(&[7u8; 32]);
    let head = |version: u64| fleet_wire::signed::GlobalHead {
        federation: FEDERATION.into(),
        model: MODEL.into(),
        version,
        base_version: version - 1,
        round: 9,
        blob: "ab".repeat(32),
        size: 100,
        count: 1,
        aggregator: "fedavg".into(),
        participants: 2,
    };
    let global_topic = topics.global(MODEL);
    t.publish(
        &global_topic,
        fleet_wire::frame::encode(&Message::GlobalHead(head(3).sign(&other_key)), b""),
        false,
    )
    .unwrap();
    t.publish(
        &global_topic,
        fleet_wire::frame::encode(&Message::GlobalHead(head(1).sign(&real_key)), b""),
        false,
    )
    .unwrap();
    t.publish(&topics.down("site-a"), b"not a frame".to_vec(), false)
        .unwrap();
    for i in 0..2 {
        assert!(
            wait_until(Duration::from_secs(15), || {
                let log = fleet.updater_log(i);
                log.contains("the signature does not verify with the trusted key")
                    && log.contains("version 1 is not above the installed version 2")
            }),
            "{}",
            fleet.logs()
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || fleet
            .updater_log(0)
            .contains("header declares")),
        "{}",
        fleet.logs()
    );
    assert!(fleet.server().is_running(), "{}", fleet.logs());
    for updater in fleet.updaters.iter_mut().flatten() {
        assert!(updater.is_running(), "{}", updater.log());
    }
    for site in &fleet.sites {
        assert_eq!(site.status()["global_version"], 2);
    }
    // The next round still completes.
    for site in &fleet.sites {
        site.put_local_head(2, &[0.6, -0.25, 1.0, 0.0, 2.0, -1.5], &B0, 5);
    }
    fleet.wait_installed(&[0, 1], 3, Duration::from_secs(90));

    // Chunks of blobs never committed: the third whole chunk is over the device's allowance
    // and refused; the server keeps running.
    for fill in 0..3u8 {
        let blob = vec![fill; 2 * fleet_wire::CHUNK_BYTES];
        let chunks = fleet_wire::blob::split(&blob).unwrap();
        let (header, body) = &chunks[0];
        a.publish(
            &topics.up("site-a"),
            fleet_wire::frame::encode(&Message::Chunk(header.clone()), body),
            false,
        )
        .unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(15), || fleet
            .federation
            .as_ref()
            .unwrap()
            .log()
            .contains("393216 bytes of chunks already wait from this device")),
        "{}",
        fleet.logs()
    );
    assert!(fleet.server().is_running(), "{}", fleet.logs());
}

/// Quorum 3 of 4, rounds of 30 s. Two sites send their update; the broker restarts; the server is killed
/// with SIGKILL and started again (the round resumes from its store with both updates); the
/// third site, which built its update while the broker was down, survives a SIGKILL of its
/// own with the update queued, and sends it when the broker is back; at the deadline the round
/// aggregates with the three.
/// The fourth site, offline for the whole round, starts afterwards and catches up.
#[test]
fn a_round_survives_broker_and_server_restarts_a_device_crash_and_an_offline_device_catches_up() {
    let ids = ["site-a", "site-b", "site-c", "site-d"];
    let mut fleet = Fleet::with_round_seconds(&ids, 3, "fedavg", "", 30);
    for site in &fleet.sites[..2] {
        site.put_local_head(1, &[0.7, -0.25, 1.0, 0.0, 2.0, -1.5], &B0, 4);
    }
    fleet.start_server();
    for i in 0..3 {
        fleet.start_updater(i);
    }
    assert!(
        wait_until(Duration::from_secs(60), || fleet
            .round(1)
            .is_some_and(|r| r["participants"] == 2)),
        "{}",
        fleet.logs()
    );
    assert!(wait_until(Duration::from_secs(30), || fleet.sites[2]
        .status()["global_version"]
        == 1));
    fleet.broker.restart();
    fleet.server().kill_and_restart();
    assert!(
        wait_until(Duration::from_secs(30), || fleet
            .server()
            .log()
            .matches("connected to the broker")
            .count()
            >= 2),
        "{}",
        fleet.logs()
    );
    assert_eq!(fleet.round(1).unwrap()["participants"], 2);
    assert_eq!(fleet.round(1).unwrap()["state"], "open");

    fleet.broker.stop();
    fleet.sites[2].put_local_head(1, &[0.4, -0.25, 1.0, 0.0, 2.0, -1.5], &B0, 4);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let status = fleet.sites[2].status();
            status["queued_updates"] == 1 && status["connected"] == false
        }),
        "{}\n{}",
        fleet.sites[2].status(),
        fleet.logs()
    );
    fleet.updaters[2].as_mut().unwrap().kill_and_restart();
    assert_eq!(fleet.sites[2].status()["queued_updates"], 1);
    fleet.broker.restart();
    fleet.wait_installed(&[0, 1, 2], 2, Duration::from_secs(90));
    let first = fleet.round(1).unwrap();
    assert_eq!(first["state"], "aggregated");
    assert_eq!(first["participants"], 3);
    let head = read_head(&fleet.sites[0].global(2));
    assert!((head["w"][0] - 0.6).abs() < 1e-6, "{head:?}");
    fleet.start_updater(3);
    fleet.wait_installed(&[3], 2, Duration::from_secs(60));
    assert!(
        wait_until(Duration::from_secs(10), || fleet.sites[3].status()
            ["global_version"]
            == 2),
        "{}",
        fleet.sites[3].status()
    );
}

/// The three updating sites' deltas in the secure-aggregation tests.
const SECURE_DELTAS: [[f32; 6]; 3] = [
    [0.1, 0.0, 0.0, 0.2, 0.0, 0.0],
    [0.0, 0.3, 0.0, 0.0, -0.2, 0.0],
    [0.2, 0.0, -0.1, 0.0, 0.0, 0.4],
];

/// The first three sites hand over global 1 plus their [`SECURE_DELTAS`], trained on `cases`.
fn put_secure_heads(fleet: &Fleet, cases: &[u32; 3]) {
    for ((site, delta), n) in fleet.sites.iter().zip(&SECURE_DELTAS).zip(cases) {
        let w: Vec<f32> = W0.iter().zip(delta).map(|(a, d)| a + d).collect();
        site.put_local_head(1, &w, &B0, *n);
    }
}

/// Global 2 at site 0 is global 1 plus the case-weighted mean of [`SECURE_DELTAS`].
fn assert_case_weighted_mean(fleet: &Fleet, cases: &[u32; 3]) {
    let head = read_head(&fleet.sites[0].global(2));
    let total: u32 = cases.iter().sum();
    for k in 0..6 {
        let mean = SECURE_DELTAS
            .iter()
            .zip(cases)
            .map(|(d, n)| d[k] * *n as f32)
            .sum::<f32>()
            / total as f32;
        assert!(
            (head["w"][k] - (W0[k] + mean)).abs() < 1e-4,
            "w[{k}] = {} vs {}",
            head["w"][k],
            W0[k] + mean
        );
    }
}

/// Secure aggregation with four enrolled devices, quorum 3, the fourth offline, so the key
/// phase waits out its deadline. While it waits, after the three sites advertised their keys,
/// the server is killed with SIGKILL and started again: it rebuilds the session from its
/// store, and the round completes with the three sites' case-weighted mean.
#[test]
fn a_secure_round_resumes_after_the_server_is_killed_mid_round() {
    let ids = ["site-a", "site-b", "site-c", "site-d"];
    let mut fleet = Fleet::new(
        &ids,
        3,
        "fedavg",
        "secure_aggregation = true\nphase_seconds = 15\n",
    );
    let observer = Observer::start(&fleet.pki, &fleet.broker);
    let cases = [20u32, 5, 40];
    put_secure_heads(&fleet, &cases);
    fleet.start_server();
    for i in 0..3 {
        fleet.start_updater(i);
    }
    let advertised = || {
        observer
            .messages()
            .iter()
            .filter(|(_, p)| {
                matches!(
                    fleet_wire::frame::decode(p),
                    Ok((Message::SecAgg(h), _)) if h.phase == "advertise_keys"
                )
            })
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(14), || advertised() == 3),
        "{}",
        fleet.logs()
    );
    assert!(fleet.round(1).unwrap()["state"] == "open");
    fleet.server().kill_and_restart();
    fleet.wait_installed(&[0, 1, 2], 2, Duration::from_secs(90));
    let first = fleet.round(1).unwrap();
    assert_eq!(first["state"], "aggregated", "{first}");
    assert_eq!(first["participants"], 3, "{first}");
    assert!(
        fleet
            .server()
            .log()
            .contains("secure aggregation resumed after a restart"),
        "{}",
        fleet.logs()
    );
    assert_case_weighted_mean(&fleet, &cases);
}

/// Secure aggregation with four enrolled devices, quorum 3: three sites run their updater; the
/// fourth, played by the test with the `secagg` client, advertises its keys and shares them,
/// then goes silent before its masked input. The server unmasks the three survivors' sum with
/// the dropped device's shares and installs their mean weighted by case counts (which travel
/// masked too); no update travels in clear (the
/// observer sees no `update_commit`).
#[test]
fn secure_aggregation_recovers_the_case_weighted_mean_when_a_device_drops_after_sharing_keys() {
    let ids = ["site-a", "site-b", "site-c", "site-d"];
    let mut fleet = Fleet::new(
        &ids,
        3,
        "fedavg",
        "secure_aggregation = true\nphase_seconds = 5\n",
    );
    let observer = Observer::start(&fleet.pki, &fleet.broker);
    // Case counts differ: the masked sum carries them, and FedAvg weights by them.
    let cases = [10u32, 30, 60];
    put_secure_heads(&fleet, &cases);
    let topics = fleet_wire::Topics::new(FEDERATION);
    let cert = fleet.pki.client("site-d");
    let dropper = link(
        &fleet.pki,
        &fleet.broker,
        "site-d",
        &cert,
        vec![topics.round(), topics.down("site-d")],
    );
    fleet.start_server();
    for i in 0..3 {
        fleet.start_updater(i);
    }
    // The fourth device: keys, shares, then silence.
    let mut client = None;
    let mut shares_sent = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !shares_sent && std::time::Instant::now() < deadline {
        let Ok(Incoming::Message { payload, .. }) =
            dropper.events().recv_timeout(Duration::from_secs(1))
        else {
            continue;
        };
        let Ok((message, body)) = fleet_wire::frame::decode(&payload) else {
            continue;
        };
        let secure_frame = |phase: &str, body: Vec<u8>, round: u64| {
            fleet_wire::frame::encode(
                &Message::SecAgg(fleet_wire::message::SecAggHeader {
                    round,
                    phase: phase.into(),
                }),
                &body,
            )
        };
        match message {
            Message::RoundAnnounce(round) if round.secure_aggregation && client.is_none() => {
                let index = round
                    .participants
                    .iter()
                    .position(|p| p == "site-d")
                    .unwrap() as u32;
                let config = secagg::from_announcement(
                    round.round,
                    &round.seed,
                    round.participants.len(),
                    // The head's 8 weights and the case weight.
                    9,
                )
                .unwrap();
                let (state, keys) =
                    secagg::advertise_keys(config, index, &mut secagg::OsRng).unwrap();
                dropper
                    .publish(
                        &topics.up("site-d"),
                        secure_frame(
                            "advertise_keys",
                            serde_json::to_vec(&keys).unwrap(),
                            round.round,
                        ),
                        false,
                    )
                    .unwrap();
                client = Some((round.round, state));
            }
            Message::SecAgg(header) if header.phase == "neighbour_keys" => {
                let (round, state) = client.take().expect("keys advertised first");
                let neighbours: secagg::NeighbourKeys = serde_json::from_slice(body).unwrap();
                let (_, shares) = state.share_keys(&neighbours, &mut secagg::OsRng).unwrap();
                dropper
                    .publish(
                        &topics.up("site-d"),
                        secure_frame("share_keys", serde_json::to_vec(&shares).unwrap(), round),
                        false,
                    )
                    .unwrap();
                shares_sent = true;
            }
            _ => {}
        }
    }
    assert!(
        shares_sent,
        "the dropping device never got to share its keys\n{}",
        fleet.logs()
    );
    fleet.wait_installed(&[0, 1, 2], 2, Duration::from_secs(90));
    let first = fleet.round(1).unwrap();
    assert_eq!(first["state"], "aggregated", "{first}");
    assert_eq!(first["participants"], 3, "{first}");
    assert_eq!(first["secure"], true, "{first}");
    assert_case_weighted_mean(&fleet, &cases);
    let seen = observer.messages();
    assert!(
        !seen.iter().any(|(_, p)| matches!(
            fleet_wire::frame::decode(p),
            Ok((Message::UpdateCommit(_), _))
        )),
        "an update travelled in clear"
    );
    assert!(seen.iter().any(|(_, p)| matches!(fleet_wire::frame::decode(p), Ok((Message::SecAgg(h), _)) if h.phase == "masked_input")));
}

/// A federation server for the real head-CT model (`f32` updates, no secure aggregation),
/// started, with its folder, configuration and the public half of its signing key.
struct RealHeadServer {
    dir: TempDir,
    config: PathBuf,
    public_key: PathBuf,
    process: Process,
}

impl RealHeadServer {
    fn start(
        pki: &FleetPki,
        broker: &Broker,
        enrolled: &[&str],
        quorum: u32,
        round_seconds: u64,
    ) -> RealHeadServer {
        let dir = tempfile::tempdir().unwrap();
        let cert = pki.client("federation-server");
        let (_, public_key) = signing_keys(dir.path());
        let enrolled: Vec<String> = enrolled.iter().map(|d| format!("{d:?}")).collect();
        let config = dir.path().join("federation.toml");
        std::fs::write(
            &config,
            format!(
                "federation = {FEDERATION:?}\nbroker = {broker:?}\nca_file = {ca:?}\n\
                 cert_file = {cert:?}\nkey_file = {key:?}\nsigning_key_file = \"signing.pem\"\n\
                 data_dir = \"data\"\nmodel = \"head-ct-ich\"\ninitial_head = {head:?}\n\
                 enrolled = [{enrolled}]\nquorum = {quorum}\nround_seconds = {round_seconds}\n\
                 secure_aggregation = false\nencoding = \"f32\"\nclip_norm = 1000.0\n",
                broker = broker.url(),
                ca = pki.ca.cert,
                cert = cert.cert,
                key = cert.key,
                head = hil_tests::repo_root().join("models/reference/head-ct/head.safetensors"),
                enrolled = enrolled.join(", "),
            ),
        )
        .unwrap();
        let process = Process::start(
            "federation",
            &["serve", "--config", config.to_str().unwrap()],
            dir.path().join("server.log"),
        );
        RealHeadServer {
            dir,
            config,
            public_key,
            process,
        }
    }
}

/// The `[federation]` table of site `id` of the real head-CT model.
fn site_federation(pki: &FleetPki, broker: &Broker, id: &str, trusted: &Path) -> toml::Table {
    let cert = pki.client(id);
    toml::from_str(&format!(
        "enabled = true\nbroker = {broker:?}\nca_file = {ca:?}\ncert_file = {cert:?}\n\
         key_file = {key:?}\nfederation = {FEDERATION:?}\ntrusted_key = {trusted:?}\n\
         model = \"head-ct-ich\"\n",
        broker = broker.url(),
        ca = pki.ca.cert,
        cert = cert.cert,
        key = cert.key,
    ))
    .unwrap()
}

/// The whole path with a real appliance: studies and a radiologist's corrections arrive over
/// DICOM, the learner fine-tunes and its gate accepts a head, which it hands to its updater;
/// the server aggregates the round (one site, quorum 1) and signs global version 2; the
/// updater verifies it and hands it back, and the learner takes it through its gate (a row in
/// `heads list` says whether it became the champion or the site kept its own) and reports the
/// global's scores, which the server keeps. An observer on `#` sees no DICOM, nothing shaped
/// like a UID, and none of the studies' UIDs.
#[test]
fn an_appliance_hands_its_fine_tuned_head_to_the_fleet_and_takes_the_global_head_through_its_gate()
{
    use hil_tests::appliance::{set, Appliance};
    use hil_tests::site::{heads, infer, radiologist_seg, seg_of, send_label, site_study};
    let pki = FleetPki::new();
    let broker = Broker::start(&pki);
    let observer = Observer::start(&pki, &broker);
    let RealHeadServer {
        dir: _server_dir,
        config: server_config,
        public_key: public,
        process: mut server,
    } = RealHeadServer::start(&pki, &broker, &["site-a"], 1, 600);
    let federation_table = site_federation(&pki, &broker, "site-a", &public);
    let app = Appliance::start_with_model(&|c| {
        set(c, "learning", "min_new_cases", 1);
        set(c, "learning", "holdout_every", 2);
        set(c, "learning", "min_holdout_cases", 1);
        set(c, "learning", "interval_hours", 0);
        c.insert(
            "federation".into(),
            toml::Value::Table(federation_table.clone()),
        );
    });
    let mut updater = Process::start(
        "updater",
        &["run", "--config", app.config_path.to_str().unwrap()],
        app.dir.path().join("updater.log"),
    );
    let logs = |server: &Process, updater: &Process| {
        format!(
            "server:\n{}\nupdater:\n{}\nappliance:\n{}",
            server.log(),
            updater.log(),
            app.log()
        )
    };

    let site = tempfile::tempdir().unwrap();
    let (a_files, a_study) = site_study(site.path(), "A", [0.0, -10.0, 6.0]);
    let (b_files, b_study) = site_study(site.path(), "B", [6.0, 8.0, -6.0]);
    let a = infer(&app, &a_files, &a_study);
    let b = infer(&app, &b_files, &b_study);
    let (a_seg, b_seg) = (
        site.path().join("A-radiologist.dcm"),
        site.path().join("B-radiologist.dcm"),
    );
    assert!(radiologist_seg(site.path(), "A", &seg_of(&app, &a), &a_seg, None) > 0);
    assert!(radiologist_seg(site.path(), "B", &seg_of(&app, &b), &b_seg, None) > 0);
    send_label(&app, &a_seg, 0);
    send_label(&app, &b_seg, 1);

    // Fine-tuned, accepted, handed over; the round aggregates; global 2 comes back.
    let outgoing = fleet_wire::site::outgoing_dir(&app.data_dir).join("1.safetensors");
    assert!(
        wait_until(Duration::from_secs(240), || outgoing.is_file()),
        "{}",
        logs(&server, &updater)
    );
    let global_2 = fleet_wire::site::global_dir(&app.data_dir).join("2.safetensors");
    assert!(
        wait_until(Duration::from_secs(60), || global_2.is_file()),
        "{}",
        logs(&server, &updater)
    );
    let round = rounds_of(&server_config)
        .into_iter()
        .find(|r| r["round"] == 1)
        .unwrap();
    assert_eq!(round["state"], "aggregated", "{round}");
    assert_eq!(round["participants"], 1);

    // The learner takes it through its gate: a row says what became of it.
    let taken = || {
        heads(&app).into_iter().find(|h| {
            h["trigger"]
                .as_str()
                .is_some_and(|t| t.starts_with("federated global 2"))
        })
    };
    assert!(
        wait_until(Duration::from_secs(120), || taken().is_some()),
        "{}",
        logs(&server, &updater)
    );
    let row = taken().unwrap();
    assert!(
        row["state"] == "accepted" || row["state"] == "refused",
        "{row}"
    );
    assert!(app.log().contains("federated global head"), "{}", app.log());
    // Its scores reach the server.
    assert!(
        wait_until(Duration::from_secs(60), || run(
            "federation",
            &[
                "evaluations",
                "list",
                "--config",
                server_config.to_str().unwrap(),
                "--json"
            ]
        )
        .lines()
        .any(|l| l.contains("\"global_version\":2") && l.contains("site-a"))),
        "{}",
        logs(&server, &updater)
    );

    observer.assert_nothing_identifying("/site-a/up", &[&a_study, &b_study]);
    assert!(updater.stop(), "{}", updater.log());
    assert!(server.stop(), "{}", server.log());
}

fn rounds_of(config: &Path) -> Vec<serde_json::Value> {
    run(
        "federation",
        &[
            "rounds",
            "list",
            "--config",
            config.to_str().unwrap(),
            "--json",
        ],
    )
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect()
}

/// Top-k with error feedback instead of int8 (secure aggregation off): with half the
/// coordinates sent, every site's few changed weights go, and the round's FedAvg is exact.
#[test]
fn topk_updates_complete_a_round_with_the_exact_fedavg() {
    let mut fleet = Fleet::new(
        &["site-a", "site-b", "site-c"],
        3,
        "fedavg",
        "encoding = \"topk\"\ntopk_fraction = 0.5\n",
    );
    let deltas: [([f32; 6], u32); 3] = [
        ([0.1, 0.0, 0.0, 0.2, 0.0, 0.0], 10),
        ([0.0, 0.3, 0.0, 0.0, -0.2, 0.0], 30),
        ([0.2, 0.0, -0.1, 0.0, 0.0, 0.4], 60),
    ];
    for (site, (dw, cases)) in fleet.sites.iter().zip(&deltas) {
        let w: Vec<f32> = W0.iter().zip(dw).map(|(a, d)| a + d).collect();
        site.put_local_head(1, &w, &B0, *cases);
    }
    fleet.start_server();
    for i in 0..3 {
        fleet.start_updater(i);
    }
    fleet.wait_installed(&[0, 1, 2], 2, Duration::from_secs(90));
    let total: f32 = deltas.iter().map(|d| d.1 as f32).sum();
    let head = read_head(&fleet.sites[0].global(2));
    for k in 0..6 {
        let want = W0[k] + deltas.iter().map(|d| d.0[k] * d.1 as f32).sum::<f32>() / total;
        assert!(
            (head["w"][k] - want).abs() < 1e-6,
            "w[{k}] = {} vs {want}",
            head["w"][k]
        );
    }
}

/// A new site has no labelled case yet, so nothing of its own to judge a global head on: with
/// `adopt_without_local_cases` (the default) its appliance takes the signed global that passes
/// the package's reference set alone, says so in `heads list`, and runs it as its champion.
/// The global comes from a round another site's update made (quorum 1 of 2, so the round
/// aggregates at its 5 s deadline).
#[test]
fn a_site_without_held_out_cases_takes_a_global_head_that_passes_the_reference_set() {
    use hil_tests::appliance::Appliance;
    use hil_tests::site::heads;
    let pki = FleetPki::new();
    let broker = Broker::start(&pki);
    let package_head = hil_tests::repo_root().join("models/reference/head-ct/head.safetensors");
    let RealHeadServer {
        dir: _server_dir,
        public_key: public,
        process: mut server,
        ..
    } = RealHeadServer::start(&pki, &broker, &["site-a", "site-b"], 1, 5);
    let federation_table = |id: &str| site_federation(&pki, &broker, id, &public);

    // Site A: only its updater, handing over a head fine-tuned from global 1 (the package's
    // head with a nudged lesion bias: within the reference margin).
    let site_a = tempfile::tempdir().unwrap();
    let mut config_a = hil_tests::appliance::example_config();
    config_a.insert(
        "data_dir".into(),
        toml::Value::String(site_a.path().join("data").display().to_string()),
    );
    config_a.insert(
        "federation".into(),
        toml::Value::Table(federation_table("site-a")),
    );
    let config_a_path = site_a.path().join("appliance.toml");
    std::fs::write(&config_a_path, toml::to_string(&config_a).unwrap()).unwrap();
    let mut tensors_a = read_head(&package_head);
    let b2 = tensors_a.get_mut("seg.b2").expect("seg.b2");
    let last = b2.len() - 1;
    b2[last] += 0.01;
    let shapes = tensors::shapes(&std::fs::read(&package_head).unwrap()).unwrap();
    let arrays: Vec<(String, Array)> = tensors_a
        .into_iter()
        .map(|(name, values)| (name, Array::F32(values)))
        .collect();
    let outgoing = fleet_wire::site::outgoing_dir(&site_a.path().join("data"));
    fleet_wire::site::write_durably(
        &outgoing.join("1.safetensors"),
        &tensors::encode_shaped(&arrays, &shapes, &BTreeMap::new()).unwrap(),
    )
    .unwrap();
    fleet_wire::site::write_durably(
        &outgoing.join("1.json"),
        serde_json::to_string(&fleet_wire::site::Outgoing {
            model: "head-ct-ich".into(),
            base_version: 1,
            cases: 4,
        })
        .unwrap()
        .as_bytes(),
    )
    .unwrap();
    let mut updater_a = Process::start(
        "updater",
        &["run", "--config", config_a_path.to_str().unwrap()],
        site_a.path().join("updater.log"),
    );

    // Site B: a whole appliance with no labelled case, and its updater.
    let app = Appliance::start_with_model(&|c| {
        c.insert(
            "federation".into(),
            toml::Value::Table(federation_table("site-b")),
        );
    });
    let mut updater_b = Process::start(
        "updater",
        &["run", "--config", app.config_path.to_str().unwrap()],
        app.dir.path().join("updater.log"),
    );
    let logs = || {
        format!(
            "server:\n{}\nupdater a:\n{}\nupdater b:\n{}\nappliance:\n{}",
            server.log(),
            updater_a.log(),
            updater_b.log(),
            app.log()
        )
    };
    let taken = || {
        heads(&app).into_iter().find(|h| {
            h["trigger"]
                .as_str()
                .is_some_and(|t| t.starts_with("federated global 2"))
        })
    };
    assert!(
        wait_until(Duration::from_secs(120), || taken().is_some()),
        "{}",
        logs()
    );
    let row = taken().unwrap();
    assert_eq!(row["state"], "accepted", "{row}\n{}", logs());
    assert!(
        app.log()
            .contains("too few local held-out cases to judge on: the federated global head is judged on the reference set alone"),
        "{}",
        app.log()
    );
    assert!(
        app.log()
            .contains("federated global head accepted by the gate; it is the champion now"),
        "{}",
        app.log()
    );
    assert!(updater_a.stop(), "{}", updater_a.log());
    assert!(updater_b.stop(), "{}", updater_b.log());
    assert!(server.stop(), "{}", server.log());
}
