//! The fleet's federated learning over a real broker: mosquitto with mutual TLS and an ACL
//! keyed on the certificate CN, the `federation` server and one `updater` per site, each with
//! its own data folder. Heads are small named tensors; the appliance's side of the hand-over
//! folder (`fleet_wire::site`) is played by the test.

use fleet_mqtt::{Incoming, Link, LinkConfig};
use fleet_wire::message::Message;
use fleet_wire::tensors::{self, Array};
use hil_tests::fleet::{run, Broker, FleetPki, Process};
use hil_tests::wait_until;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

const FEDERATION: &str = "fleet-test";
const MODEL: &str = "head-test";

fn head_blob(w: &[f32], b: &[f32]) -> Vec<u8> {
    tensors::encode(
        &[
            ("b".to_string(), Array::F32(b.to_vec())),
            ("w".to_string(), Array::F32(w.to_vec())),
        ],
        &BTreeMap::new(),
    )
    .expect("encode a head")
}

fn read_head(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (arrays, _) = tensors::decode(&bytes).expect("a head blob");
    arrays
        .into_iter()
        .map(|(name, a)| match a {
            Array::F32(v) => (name, v),
            other => panic!("{name}: {other:?}"),
        })
        .collect()
}

const W0: [f32; 6] = [0.5, -0.25, 1.0, 0.0, 2.0, -1.5];
const B0: [f32; 2] = [0.1, -0.1];

/// The server's folder, keys and configuration.
struct ServerSetup {
    dir: TempDir,
    config: PathBuf,
    public_key: PathBuf,
    private_key: PathBuf,
}

fn server_setup(
    pki: &FleetPki,
    broker: &Broker,
    enrolled: &[&str],
    quorum: u32,
    round_seconds: u64,
    aggregator: &str,
) -> ServerSetup {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = pki.client("federation-server");
    let private_key = dir.path().join("signing.pem");
    let public_key = dir.path().join("signing.pub.pem");
    run(
        "federation",
        &[
            "keygen",
            "--private",
            private_key.to_str().unwrap(),
            "--public",
            public_key.to_str().unwrap(),
        ],
    );
    std::fs::write(dir.path().join("initial.safetensors"), head_blob(&W0, &B0)).unwrap();
    let config = dir.path().join("federation.toml");
    let enrolled: Vec<String> = enrolled.iter().map(|d| format!("{d:?}")).collect();
    std::fs::write(
        &config,
        format!(
            "federation = {FEDERATION:?}\nbroker = {broker:?}\nca_file = {ca:?}\ncert_file = {cert:?}\n\
             key_file = {key:?}\nsigning_key_file = \"signing.pem\"\ndata_dir = \"data\"\n\
             model = {MODEL:?}\ninitial_head = \"initial.safetensors\"\nenrolled = [{enrolled}]\n\
             quorum = {quorum}\nround_seconds = {round_seconds}\naggregator = {aggregator:?}\n\
             clip_norm = 100.0\n",
            broker = broker.url(),
            ca = pki.ca.cert,
            cert = cert.cert,
            key = cert.key,
            enrolled = enrolled.join(", "),
        ),
    )
    .unwrap();
    ServerSetup {
        dir,
        config,
        public_key,
        private_key,
    }
}

/// One site: its data folder with an appliance configuration whose `[federation]` table the
/// updater reads, and its local head fine-tuned from global version 1.
struct Site {
    id: String,
    dir: TempDir,
    config: PathBuf,
}

impl Site {
    fn new(pki: &FleetPki, broker: &Broker, server: &ServerSetup, id: &str) -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = pki.client(id);
        let mut config = hil_tests::appliance::example_config();
        config.insert(
            "data_dir".into(),
            toml::Value::String(dir.path().join("data").display().to_string()),
        );
        let federation: toml::Table = toml::from_str(&format!(
            "enabled = true\nbroker = {broker:?}\nca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {key:?}\n\
             federation = {FEDERATION:?}\ntrusted_key = {trusted:?}\nmodel = {MODEL:?}\n",
            broker = broker.url(),
            ca = pki.ca.cert,
            cert = cert.cert,
            key = cert.key,
            trusted = server.public_key,
        ))
        .unwrap();
        config.insert("federation".into(), toml::Value::Table(federation));
        let path = dir.path().join("appliance.toml");
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        Site {
            id: id.to_string(),
            dir,
            config: path,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What the appliance hands over after fine-tuning from global `base`.
    fn put_local_head(&self, base: u64, w: &[f32], b: &[f32], cases: u32) {
        let dir = fleet_wire::site::outgoing_dir(&self.data());
        fleet_wire::site::write_durably(&dir.join(format!("{base}.safetensors")), &head_blob(w, b))
            .unwrap();
        let meta = fleet_wire::site::Outgoing {
            model: MODEL.into(),
            base_version: base,
            cases,
        };
        fleet_wire::site::write_durably(
            &dir.join(format!("{base}.json")),
            serde_json::to_string(&meta).unwrap().as_bytes(),
        )
        .unwrap();
    }

    fn global(&self, version: u64) -> PathBuf {
        fleet_wire::site::global_dir(&self.data()).join(format!("{version}.safetensors"))
    }

    fn updater(&self) -> Process {
        Process::start(
            "updater",
            &["run", "--config", self.config.to_str().unwrap()],
            self.dir.path().join("updater.log"),
        )
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&run(
            "updater",
            &[
                "status",
                "--config",
                self.config.to_str().unwrap(),
                "--json",
            ],
        ))
        .unwrap()
    }
}

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

fn rounds(server: &ServerSetup) -> Vec<serde_json::Value> {
    run(
        "federation",
        &[
            "rounds",
            "list",
            "--config",
            server.config.to_str().unwrap(),
            "--json",
        ],
    )
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect()
}

/// Three sites, quorum 3: every site sends its delta, the server aggregates by FedAvg weighted
/// by case counts, signs global version 2, and every site verifies and installs it; the
/// round is recorded with its participants and bytes, and the next round opens.
#[test]
fn three_sites_complete_a_round_and_install_the_signed_fedavg_global_head() {
    let pki = FleetPki::new();
    let broker = Broker::start(&pki);
    let server = server_setup(
        &pki,
        &broker,
        &["site-a", "site-b", "site-c"],
        3,
        120,
        "fedavg",
    );
    let deltas: [([f32; 6], [f32; 2], u32); 3] = [
        ([0.1, 0.0, 0.0, 0.2, 0.0, 0.0], [0.01, 0.0], 10),
        ([0.0, 0.3, 0.0, 0.0, -0.2, 0.0], [0.0, 0.02], 30),
        ([0.2, 0.0, -0.1, 0.0, 0.0, 0.4], [0.03, 0.0], 60),
    ];
    let sites: Vec<Site> = ["site-a", "site-b", "site-c"]
        .iter()
        .map(|id| Site::new(&pki, &broker, &server, id))
        .collect();
    for (site, (dw, db, cases)) in sites.iter().zip(&deltas) {
        let w: Vec<f32> = W0.iter().zip(dw).map(|(a, d)| a + d).collect();
        let b: Vec<f32> = B0.iter().zip(db).map(|(a, d)| a + d).collect();
        site.put_local_head(1, &w, &b, *cases);
    }
    let mut federation = Process::start(
        "federation",
        &["serve", "--config", server.config.to_str().unwrap()],
        server.dir.path().join("server.log"),
    );
    let mut updaters: Vec<Process> = sites.iter().map(Site::updater).collect();
    let installed = wait_until(Duration::from_secs(90), || {
        sites.iter().all(|s| s.global(2).is_file())
    });
    assert!(
        installed,
        "server:\n{}\nsites:\n{}\nbroker:\n{}",
        federation.log(),
        updaters
            .iter()
            .map(|u| u.log())
            .collect::<Vec<_>>()
            .join("\n---\n"),
        broker.log()
    );
    let total: f32 = deltas.iter().map(|d| d.2 as f32).sum();
    let expected_w: Vec<f32> = (0..6)
        .map(|i| W0[i] + deltas.iter().map(|d| d.0[i] * d.2 as f32).sum::<f32>() / total)
        .collect();
    let expected_b: Vec<f32> = (0..2)
        .map(|i| B0[i] + deltas.iter().map(|d| d.1[i] * d.2 as f32).sum::<f32>() / total)
        .collect();
    for site in &sites {
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
    let listed = rounds(&server);
    assert_eq!(listed[0]["round"], 1);
    assert_eq!(listed[0]["state"], "aggregated");
    assert_eq!(listed[0]["participants"], 3);
    assert_eq!(listed[0]["new_version"], 2);
    assert!(listed[0]["bytes_in"].as_u64().unwrap() > 0);
    assert!(wait_until(Duration::from_secs(10), || rounds(&server)
        .iter()
        .any(|r| r["round"] == 2 && r["state"] == "open")));
    for site in &sites {
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
            server.config.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(devices.lines().count(), 3, "{devices}");
    for updater in &mut updaters {
        assert!(updater.stop(), "{}", updater.log());
    }
    assert!(federation.stop(), "{}", federation.log());
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
