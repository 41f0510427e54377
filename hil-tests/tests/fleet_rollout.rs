//! Firmware rollouts through the fleet broker, end to end: the operator's real `fleet` command
//! keeps the TUF repository (served by a static HTTPS server on loopback) and announces
//! releases over a real mosquitto broker (mutual TLS, certificate-keyed ACL); four real
//! `updater run` processes, one per device, hear them, fetch through the trust root, switch
//! A/B slots, restart (a command that records what `current` names), self-test, and commit
//! or roll back; `fleet devices list --json` shows what each reports.
//!
//! The bundles' `bin/appliance` here is a script answering `self-test` with a pass or a fail:
//! this file is about the rollout's orchestration. The real self-test (the golden study
//! through the real SCP, inference and C-STORE) is `update_trust`'s
//! `a_release_passing_its_self_test_is_committed_and_one_failing_it_rolls_back_by_itself`.

use hil_tests::appliance::binary_named;
use hil_tests::fleet::{make_bundle, run, stand_in_appliance, Broker, FleetPki, Process};
use hil_tests::peers::{start_https_static, PeerProcess};
use hil_tests::pki::Issued;
use hil_tests::wait_until;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const FEDERATION: &str = "fleet-test";
const GROUP: &str = "east";

struct Fleet {
    dir: tempfile::TempDir,
    pki: FleetPki,
    broker: Broker,
    https: PeerProcess,
    https_ca: Issued,
    operator: PathBuf,
    trusted_key: PathBuf,
}

struct Device {
    id: String,
    dir: tempfile::TempDir,
    process: Process,
}

impl Fleet {
    fn new() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let pki = FleetPki::new();
        let broker = Broker::start(&pki);
        let https_ca = pki.pki.ca("updates");
        let cert = pki
            .pki
            .issue(&https_ca, "repository", "updates.example", &["localhost"]);
        let repo = dir.path().join("repo");
        run("fleet", &["repo", "init", repo.to_str().unwrap()]);
        let https = start_https_static(&repo.join("repository"), &cert.cert, &cert.key);
        let operator_cert = pki.client("fleet-operator");
        let operator = dir.path().join("operator.toml");
        std::fs::write(
            &operator,
            format!(
                "federation = {FEDERATION:?}\nbroker = {:?}\nca_file = {:?}\ncert_file = {:?}\n\
                 key_file = {:?}\n",
                broker.url(),
                pki.ca.cert,
                operator_cert.cert,
                operator_cert.key
            ),
        )
        .unwrap();
        let trusted_key = dir.path().join("signing.pub.pem");
        run(
            "federation",
            &[
                "keygen",
                "--private",
                dir.path().join("signing.pem").to_str().unwrap(),
                "--public",
                trusted_key.to_str().unwrap(),
            ],
        );
        Fleet {
            dir,
            pki,
            broker,
            https,
            https_ca,
            operator,
            trusted_key,
        }
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// Publish `version`, whose `appliance self-test` passes or fails.
    fn publish(&self, version: &str, self_test_passes: bool) {
        let stage = self.dir.path().join(format!("stage-{version}"));
        std::fs::create_dir_all(&stage).unwrap();
        std::fs::write(
            stage.join("appliance"),
            stand_in_appliance(version, self_test_passes, 0.1),
        )
        .unwrap();
        let bundle = self.dir.path().join(format!("radiant-edge-{version}.tar"));
        make_bundle(
            version,
            std::env::consts::ARCH,
            &bundle,
            &[format!(
                "--file=bin/appliance={}:755",
                stage.join("appliance").display()
            )],
        );
        run(
            "fleet",
            &[
                "repo",
                "publish",
                self.repo().to_str().unwrap(),
                bundle.to_str().unwrap(),
            ],
        );
    }

    fn rollout(&self, version: &str, percent: u8) -> String {
        run(
            "fleet",
            &[
                "rollout",
                "start",
                "--config",
                self.operator.to_str().unwrap(),
                "--group",
                GROUP,
                "--percent",
                &percent.to_string(),
                "--version",
                version,
            ],
        )
    }

    fn devices(&self) -> Vec<serde_json::Value> {
        let out = run(
            "fleet",
            &[
                "devices",
                "list",
                "--json",
                "--config",
                self.operator.to_str().unwrap(),
            ],
        );
        serde_json::from_str::<Vec<serde_json::Value>>(out.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    fn device(&self, id: &str) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let cert = self.pki.client(id);
        let restarts = dir.path().join("restarts.log");
        let restart = dir.path().join("restart.sh");
        std::fs::write(
            &restart,
            format!(
                "#!/bin/sh\necho \"$RADIANT_EDGE_VERSION $(readlink {root}/current)\" >> {log}\n",
                root = dir.path().join("install").display(),
                log = restarts.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&restart, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.path().join("appliance.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {data:?}\n\
                 [http]\nenabled = false\n\
                 [federation]\nenabled = true\nbroker = {broker:?}\nca_file = {ca:?}\n\
                 cert_file = {cert:?}\nkey_file = {key:?}\nfederation = {FEDERATION:?}\n\
                 trusted_key = {trusted:?}\nmodel = \"head-ct-ich\"\nparticipate = false\n\
                 [update]\nenabled = true\nrepository = \"https://127.0.0.1:{port}/\"\n\
                 ca_file = {https_ca:?}\ntrusted_root = {root:?}\ninstall_root = {install:?}\n\
                 group = {GROUP:?}\nrestart_command = [{restart:?}]\n",
                data = dir.path().join("data"),
                broker = self.broker.url(),
                ca = self.pki.ca.cert,
                cert = cert.cert,
                key = cert.key,
                trusted = self.trusted_key,
                port = self.https.port,
                https_ca = self.https_ca.cert,
                root = self.repo().join("repository/metadata/1.root.json"),
                install = dir.path().join("install"),
                restart = restart,
            ),
        )
        .unwrap();
        let process = Process::start(
            "updater",
            &["run", "--config", config.to_str().unwrap()],
            dir.path().join("updater.log"),
        );
        Device {
            id: id.to_string(),
            dir,
            process,
        }
    }
}

impl Device {
    fn restarts(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("restarts.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// The statuses `fleet devices list` shows, by device, once `done` holds for all of them.
fn wait_for_statuses(
    fleet: &Fleet,
    devices: &[Device],
    mut done: impl FnMut(&Device, &serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let mut last = Vec::new();
    let settled = wait_until(Duration::from_secs(90), || {
        last = fleet.devices();
        devices.iter().all(|d| {
            last.iter()
                .find(|s| s["device"] == d.id.as_str())
                .is_some_and(|s| done(d, s))
        })
    });
    if !settled {
        for d in devices {
            eprintln!("--- {} ---\n{}", d.id, d.process.log());
        }
        panic!("the devices did not get there: {last:#?}");
    }
    last
}

fn status_of<'a>(statuses: &'a [serde_json::Value], device: &Device) -> &'a serde_json::Value {
    statuses
        .iter()
        .find(|s| s["device"] == device.id.as_str())
        .unwrap()
}

#[test]
fn a_release_goes_to_exactly_its_wave_widens_to_the_group_and_a_failing_one_rolls_back_everywhere()
{
    let fleet = Fleet::new();
    // Four devices of which some, not all, are in the 50 % wave of 0.3.0.
    let ids: Vec<String> = (0..64)
        .map(|i| format!("site-{i}"))
        .collect::<Vec<_>>()
        .windows(4)
        .map(|w| w.to_vec())
        .find(|w| {
            let n = w
                .iter()
                .filter(|d| fleet_wire::release::in_wave(d, "0.3.0", 50))
                .count();
            (1..=3).contains(&n)
        })
        .expect("four device ids with a mixed wave");
    let mut devices: Vec<Device> = ids.iter().map(|id| fleet.device(id)).collect();

    // Every device reports in before anything is announced.
    let statuses = wait_for_statuses(&fleet, &devices, |_, s| s["state"] == "not_installed");
    assert_eq!(statuses.len(), 4, "{statuses:#?}");

    // 0.2.0 to the whole group: the first install, committed at once (nothing to go back to).
    fleet.publish("0.2.0", true);
    fleet.rollout("0.2.0", 100);
    wait_for_statuses(&fleet, &devices, |_, s| {
        s["version"] == "0.2.0" && s["state"] == "committed"
    });

    // 0.3.0 to half of it: exactly the wave moves, through trial, restart and self-test.
    fleet.publish("0.3.0", true);
    fleet.rollout("0.3.0", 50);
    let in_wave = |d: &Device| fleet_wire::release::in_wave(&d.id, "0.3.0", 50);
    let statuses = wait_for_statuses(&fleet, &devices, |d, s| {
        if in_wave(d) {
            s["version"] == "0.3.0" && s["state"] == "committed"
        } else {
            s["version"] == "0.2.0"
        }
    });
    // Those outside the wave did not move (given time to, had they been asked).
    std::thread::sleep(Duration::from_secs(3));
    let statuses_later = fleet.devices();
    for d in &devices {
        let s = status_of(&statuses_later, d);
        let expected = if in_wave(d) { "0.3.0" } else { "0.2.0" };
        assert_eq!(s["version"], expected, "{}: {s}", d.id);
        assert_eq!(s["health"], "ok", "{}: {s}", d.id);
        assert!(
            s["last_seen"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{s}"
        );
        if in_wave(d) {
            // Restarted once, on the new slot, before the self-test committed it.
            assert_eq!(d.restarts().len(), 1, "{}: {:?}", d.id, d.restarts());
            assert!(d.restarts()[0].starts_with("0.3.0 "), "{:?}", d.restarts());
            assert!(d.restarts()[0].ends_with("slots/b"), "{:?}", d.restarts());
            assert_eq!(s["slot"], "b", "{s}");
        } else {
            assert!(d.restarts().is_empty(), "{}: {:?}", d.id, d.restarts());
        }
    }
    drop(statuses);

    // Widened to the whole group: the rest follows, the wave is not touched again.
    fleet.rollout("0.3.0", 100);
    wait_for_statuses(&fleet, &devices, |_, s| {
        s["version"] == "0.3.0" && s["state"] == "committed"
    });
    for d in &devices {
        assert_eq!(d.restarts().len(), 1, "{}: {:?}", d.id, d.restarts());
    }

    // 0.4.0 fails its self-test on every device: each rolls back by itself, restarts on its
    // old slot, and says why.
    fleet.publish("0.4.0", false);
    fleet.rollout("0.4.0", 100);
    let statuses = wait_for_statuses(&fleet, &devices, |_, s| s["health"] == "rolled_back");
    for d in &devices {
        let s = status_of(&statuses, d);
        assert_eq!(s["version"], "0.3.0", "{s}");
        assert_eq!(s["state"], "committed", "{s}");
        assert_eq!(s["release"], "0.4.0", "{s}");
        let error = s["last_error"].as_str().unwrap_or_default();
        assert!(
            error.contains("0.4.0 failed its self-test") && error.contains("SEG differs"),
            "{s}"
        );
        let restarts = d.restarts();
        assert_eq!(restarts.len(), 3, "{}: {restarts:?}", d.id);
        assert!(
            restarts[1].starts_with("0.4.0 ") && restarts[1].ends_with("slots/a"),
            "{restarts:?}"
        );
        assert!(
            restarts[2].starts_with("0.3.0 ") && restarts[2].ends_with("slots/b"),
            "{restarts:?}"
        );
    }

    // A device that restarts hears the retained 0.4.0 again and does not try it twice.
    devices[0].process.kill_and_restart();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        devices[0].process.log().contains("failed here before"),
        "{}",
        devices[0].process.log()
    );
    assert_eq!(devices[0].restarts().len(), 3);
    for d in &mut devices {
        assert!(d.process.stop(), "{}: {}", d.id, d.process.log());
    }
}

#[test]
fn an_operator_certificate_the_acl_does_not_name_cannot_announce_a_release() {
    let fleet = Fleet::new();
    let intruder = fleet.pki.client("site-7");
    let config = fleet.dir.path().join("intruder.toml");
    std::fs::write(
        &config,
        format!(
            "federation = {FEDERATION:?}\nbroker = {:?}\nca_file = {:?}\ncert_file = {:?}\n\
             key_file = {:?}\n",
            fleet.broker.url(),
            fleet.pki.ca.cert,
            intruder.cert,
            intruder.key
        ),
    )
    .unwrap();
    let out = Command::new(binary_named("fleet"))
        .args(["rollout", "start", "--config"])
        .arg(&config)
        .args(["--group", GROUP, "--percent", "100", "--version", "9.9.9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("refused the announcement"), "{said}");
}
