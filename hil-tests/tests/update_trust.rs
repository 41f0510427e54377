//! Firmware updates through the fleet's trust root, attacked. The operator's side is the real
//! `fleet repo` command (TUF metadata signed by `tough`), the device's the real `updater fetch`;
//! each fixture is named after the attack it is. Every attack is refused with its reason, and
//! nothing is staged: the download folder holds no partial file and no unpacked bundle.

use hil_tests::appliance::binary_named;
use hil_tests::fleet::{make_bundle, stand_in_appliance};
use hil_tests::peers::{start_https_static, PeerProcess};
use hil_tests::pki::{Issued, Pki};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A repository with one published bundle (0.2.0 for this machine), served by a static HTTPS
/// server on loopback, and a device trusting its first root and the server's CA.
struct Fleet {
    dir: tempfile::TempDir,
    pki: Pki,
    ca: Issued,
    server: PeerProcess,
}

impl Fleet {
    fn new() -> Fleet {
        let fleet = Fleet::empty();
        fleet.publish("0.2.0", std::env::consts::ARCH, &[]);
        fleet
    }

    /// A repository with nothing published yet.
    fn empty() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let ca = pki.ca("updates");
        let cert = pki.issue(&ca, "repository", "updates.example", &["localhost"]);
        let init = Command::new(binary_named("fleet"))
            .args(["repo", "init"])
            .arg(dir.path().join("repo"))
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        let server = start_https_static(&dir.path().join("repo/repository"), &cert.cert, &cert.key);
        Fleet {
            dir,
            pki,
            ca,
            server,
        }
    }

    /// The repository as the device reaches it.
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.server.port)
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn metadata(&self) -> PathBuf {
        self.repo().join("repository/metadata")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("device")
    }

    /// Run `fleet ARGS... PATHS... EXTRA...`; it must succeed.
    fn fleet(&self, args: &[&str], paths: &[&Path]) -> String {
        self.fleet_with(args, paths, &[])
    }

    fn fleet_with(&self, args: &[&str], paths: &[&Path], extra: &[&str]) -> String {
        let out = Command::new(binary_named("fleet"))
            .args(args)
            .args(paths)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fleet {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Make and publish a bundle of `version` for this machine from `bundle make` arguments.
    fn publish_with(&self, version: &str, files: &[String]) -> PathBuf {
        let bundle = self.dir.path().join(format!("radiant-edge-{version}.tar"));
        make_bundle(version, std::env::consts::ARCH, &bundle, files);
        self.fleet(&["repo", "publish"], &[&self.repo(), &bundle]);
        bundle
    }

    /// Make and publish a bundle of `version` for `arch`.
    fn publish(&self, version: &str, arch: &str, expiry: &[&str]) -> PathBuf {
        self.publish_sized(version, arch, expiry, 0)
    }

    /// The same with a model file of `model_bytes` bytes in the bundle too.
    fn publish_sized(
        &self,
        version: &str,
        arch: &str,
        expiry: &[&str],
        model_bytes: usize,
    ) -> PathBuf {
        let stage = self.dir.path().join(format!("stage-{version}"));
        std::fs::create_dir_all(&stage).unwrap();
        // These fixtures are about the trust root and the slots: a self-test that takes a
        // moment and passes.
        std::fs::write(
            stage.join("appliance"),
            stand_in_appliance(version, true, 0.3),
        )
        .unwrap();
        let model: Vec<u8> = (0..model_bytes)
            .map(|i| (i * 7 + version.len()) as u8)
            .collect();
        std::fs::write(stage.join("model.onnx"), &model).unwrap();
        let bundle = self
            .dir
            .path()
            .join(format!("radiant-edge-{version}-{arch}.tar"));
        make_bundle(
            version,
            arch,
            &bundle,
            &[
                format!(
                    "--file=bin/appliance={}:755",
                    stage.join("appliance").display()
                ),
                format!(
                    "--file=models/model.onnx={}:644",
                    stage.join("model.onnx").display()
                ),
            ],
        );
        self.fleet_with(&["repo", "publish"], &[&self.repo(), &bundle], expiry);
        bundle
    }

    /// `updater fetch` on the device over HTTPS: (exit success, its JSON line).
    fn fetch(&self) -> (bool, serde_json::Value) {
        self.fetch_from(&self.url(), &self.ca.cert)
    }

    /// `updater fetch` from `repository`, trusting `ca` for its TLS certificate.
    fn fetch_from(&self, repository: &str, ca: &Path) -> (bool, serde_json::Value) {
        let out = self.run_fetch(repository, ca);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), json)
    }

    fn run_fetch(&self, repository: &str, ca: &Path) -> std::process::Output {
        let config = self.dir.path().join("appliance.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[update]\nenabled = true\nrepository = {repository:?}\n\
                 ca_file = {ca:?}\ntrusted_root = {:?}\n",
                self.data(),
                self.metadata().join("1.root.json")
            ),
        )
        .unwrap();
        Command::new(binary_named("updater"))
            .args(["fetch", "--config"])
            .arg(&config)
            .args(["--running", "0.1.0"])
            .output()
            .unwrap()
    }

    /// The fetch is refused with a reason containing `says`, and nothing is staged.
    fn refused(&self, attack: &str, says: &str) -> String {
        self.refused_from(attack, says, self.fetch())
    }

    fn refused_from(&self, attack: &str, says: &str, fetched: (bool, serde_json::Value)) -> String {
        let (ok, json) = fetched;
        assert!(!ok, "{attack}: accepted: {json}");
        assert_eq!(json["state"], "refused", "{attack}: {json}");
        let reason = json["reason"].as_str().unwrap().to_string();
        assert!(reason.contains(says), "{attack}: {reason}");
        self.nothing_staged(attack);
        eprintln!("{attack}: refused: {reason}");
        reason
    }

    fn nothing_staged(&self, attack: &str) {
        let update = self.data().join("update");
        let staged = update.join("staged");
        assert!(
            !staged.exists() || std::fs::read_dir(&staged).unwrap().next().is_none(),
            "{attack}: something was staged"
        );
        if let Ok(entries) = std::fs::read_dir(update.join("downloads")) {
            for entry in entries {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                assert!(
                    !name.ends_with(".part") && !name.ends_with(".d"),
                    "{attack}: {name} left in the download folder"
                );
            }
        }
    }

    /// The only file in the targets folder (the published bundle).
    fn target_file(&self) -> PathBuf {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.repo().join("repository/targets"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        files.remove(0)
    }

    fn edit_json(&self, file: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        edit(&mut json);
        std::fs::write(file, serde_json::to_vec(&json).unwrap()).unwrap();
    }
}

#[test]
fn a_signed_bundle_for_this_device_is_verified_and_staged_and_the_next_check_is_up_to_date() {
    let fleet = Fleet::new();
    let (ok, json) = fleet.fetch();
    assert!(ok, "{json}");
    assert_eq!(json["state"], "staged", "{json}");
    assert_eq!(json["version"], "0.2.0");
    let staged = PathBuf::from(json["path"].as_str().unwrap());
    let appliance = std::fs::read_to_string(staged.join("bin/appliance")).unwrap();
    assert!(appliance.contains("# appliance 0.2.0 "), "{appliance}");
    // A bundle for other hardware is signed too, and skipped with the reason.
    fleet.publish("0.3.0", "riscv64", &[]);
    let (ok, json) = fleet.fetch();
    assert!(ok, "{json}");
    assert_eq!(json["state"], "staged", "{json}");
    assert_eq!(json["version"], "0.2.0");
}

#[test]
fn a_repository_server_whose_certificate_is_not_from_the_configured_ca_is_refused() {
    // Someone on the path answers for the repository with a certificate of another CA.
    let fleet = Fleet::new();
    let other = fleet.pki.ca("impostor");
    let reason = fleet.refused_from(
        "impostor server",
        "UnknownIssuer",
        fleet.fetch_from(&fleet.url(), &other.cert),
    );
    assert!(reason.contains("metadata"), "{reason}");
}

#[test]
fn a_plain_http_repository_is_refused_by_the_configuration() {
    let fleet = Fleet::new();
    let url = format!("http://127.0.0.1:{}/", fleet.server.port);
    let out = fleet.run_fetch(&url, &fleet.ca.cert);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("update.repository: an https://"), "{text}");
    fleet.nothing_staged("plain http");
}

#[test]
fn wrong_hardware_is_not_taken_and_says_why() {
    let fleet = Fleet::empty();
    fleet.publish("0.2.0", "riscv64", &[]);
    let (ok, json) = fleet.fetch();
    assert!(ok, "{json}");
    assert_eq!(json["state"], "up_to_date", "{json}");
    fleet.nothing_staged("wrong hardware");
    let skipped = json["skipped"].as_array().cloned().unwrap_or_default();
    let riscv = skipped
        .iter()
        .find(|s| s["target"].as_str().unwrap().contains("riscv64"))
        .unwrap_or_else(|| panic!("{json}"));
    assert!(
        riscv["reason"].as_str().unwrap().contains(&format!(
            "built for hardware [\"riscv64\"], this device is {}",
            std::env::consts::ARCH
        )),
        "{json}"
    );
}

#[test]
fn bad_signature_is_refused() {
    let fleet = Fleet::new();
    fleet.edit_json(&fleet.metadata().join("timestamp.json"), |j| {
        let sig = j["signatures"][0]["sig"].as_str().unwrap().to_string();
        let flipped = if sig.starts_with('0') { "1" } else { "0" };
        j["signatures"][0]["sig"] = format!("{flipped}{}", &sig[1..]).into();
    });
    fleet.refused(
        "bad signature",
        "Signature threshold of 1 not met for role timestamp",
    );
}

#[test]
fn wrong_key_id_is_refused() {
    // A timestamp signed by a key the root does not name: another repository's.
    let fleet = Fleet::new();
    let other = tempfile::tempdir().unwrap();
    fleet.fleet(&["repo", "init"], &[&other.path().join("r")]);
    std::fs::copy(
        other.path().join("r/repository/metadata/timestamp.json"),
        fleet.metadata().join("timestamp.json"),
    )
    .unwrap();
    fleet.refused(
        "wrong key id",
        "Signature threshold of 1 not met for role timestamp",
    );
}

#[test]
fn expired_timestamp_is_refused() {
    let fleet = Fleet::new();
    fleet.fleet_with(
        &["repo", "refresh"],
        &[&fleet.repo()],
        &["--timestamp-seconds", "-60"],
    );
    fleet.refused("expired timestamp", "expired");
}

#[test]
fn freeze_attack_with_stale_metadata_is_refused_once_it_expires() {
    // The mirror keeps serving what was fresh a moment ago, past its expiry.
    let fleet = Fleet::new();
    fleet.fleet_with(
        &["repo", "refresh"],
        &[&fleet.repo()],
        &["--timestamp-seconds", "10"],
    );
    let signed = std::time::Instant::now();
    let (ok, json) = fleet.fetch();
    assert!(ok, "{json}");
    std::fs::remove_dir_all(fleet.data().join("update/staged")).unwrap();
    // Past the timestamp's expiry (10 s after it was signed, which was before `signed`).
    std::thread::sleep(std::time::Duration::from_secs(11).saturating_sub(signed.elapsed()));
    fleet.refused("freeze attack", "expired");
}

/// The device takes refreshed metadata (timestamp version 3); `between` runs on its data
/// folder; then the mirror goes back to the older, validly signed set (version 2), which must
/// be refused.
fn a_rolled_back_mirror_is_refused(what: &str, between: impl FnOnce(&Path)) {
    let fleet = Fleet::new();
    let old = fleet.dir.path().join("old-metadata");
    copy_dir(&fleet.metadata(), &old);
    fleet.fleet(&["repo", "refresh"], &[&fleet.repo()]);
    let (ok, json) = fleet.fetch();
    assert!(ok, "{json}");
    std::fs::remove_dir_all(fleet.data().join("update/staged")).unwrap();
    between(&fleet.data());
    std::fs::remove_dir_all(fleet.metadata()).unwrap();
    copy_dir(&old, &fleet.metadata());
    fleet.refused(
        what,
        "Found version 2 of timestamp metadata when we had previously fetched version 3",
    );
}

#[test]
fn rolled_back_version_is_refused() {
    a_rolled_back_mirror_is_refused("rolled-back version", |_| {});
}

#[test]
fn rolled_back_version_is_refused_after_a_power_cut_tore_the_metadata_tough_keeps() {
    // tough rewrites its datastore in place without fsync; a power cut can leave the files it
    // reads back empty or torn (what the lazy file system's cuts leave). The device still
    // remembers the versions it saw.
    a_rolled_back_mirror_is_refused("rolled-back version after a power cut", |data| {
        let tuf = data.join("update/tuf");
        let timestamp = std::fs::read(tuf.join("timestamp.json")).unwrap();
        std::fs::write(
            tuf.join("timestamp.json"),
            &timestamp[..timestamp.len() / 2],
        )
        .unwrap();
        std::fs::write(tuf.join("snapshot.json"), b"").unwrap();
    });
}

#[test]
fn threshold_not_met_for_a_new_root_is_refused() {
    // A new root version signed by one root key where two must sign (one stolen key).
    let fleet = Fleet::new();
    let keys = fleet.repo().join("keys");
    let aside = fleet.dir.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    for k in ["root-2.pk8", "root-3.pk8"] {
        std::fs::rename(keys.join(k), aside.join(k)).unwrap();
    }
    fleet.fleet(
        &["repo", "rotate-key"],
        &[&fleet.repo(), Path::new("timestamp")],
    );
    fleet.refused(
        "threshold not met",
        "Signature threshold of 2 not met for role root",
    );
}

#[test]
fn a_rotated_key_is_followed_through_the_root_chain() {
    // The timestamp key rotated (say, a stolen online key): root 2 names the new one, signed
    // by the root keys the device trusts; the device follows.
    let fleet = Fleet::new();
    fleet.fleet(
        &["repo", "rotate-key"],
        &[&fleet.repo(), Path::new("timestamp")],
    );
    let (ok, json) = fleet.fetch();
    assert!(ok, "{json}");
    assert_eq!(json["state"], "staged", "{json}");
    let root: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fleet.data().join("update/tuf/root.json")).unwrap())
            .unwrap();
    assert_eq!(root["signed"]["version"], 2);
}

#[test]
fn truncated_bundle_is_refused() {
    let fleet = Fleet::new();
    let target = fleet.target_file();
    let bytes = std::fs::read(&target).unwrap();
    std::fs::write(&target, &bytes[..bytes.len() / 2]).unwrap();
    fleet.refused("truncated bundle", "Hash mismatch");
}

#[test]
fn endless_data_a_target_larger_than_its_declared_length_is_refused() {
    let fleet = Fleet::new();
    let target = fleet.target_file();
    let mut bytes = std::fs::read(&target).unwrap();
    bytes.extend(std::iter::repeat_n(0u8, 1 << 20));
    std::fs::write(&target, &bytes).unwrap();
    fleet.refused(
        "endless data (target)",
        "(specified by targets.json) exceeded",
    );
}

#[test]
fn endless_data_in_metadata_is_refused() {
    let fleet = Fleet::new();
    fleet.edit_json(&fleet.metadata().join("timestamp.json"), |j| {
        j["padding"] = "x".repeat(1 << 20).into();
    });
    fleet.refused(
        "endless data (metadata)",
        "Maximum size 65536 (specified by max_timestamp_size argument) exceeded",
    );
}

#[test]
fn mix_and_match_of_metadata_from_two_releases_is_refused() {
    // Targets metadata of release 0.2.0 served under the name of release 0.3.0's.
    let fleet = Fleet::new();
    fleet.publish("0.3.0", std::env::consts::ARCH, &[]);
    std::fs::copy(
        fleet.metadata().join("2.targets.json"),
        fleet.metadata().join("3.targets.json"),
    )
    .unwrap();
    fleet.refused("mix-and-match", "3.targets.json': Hash mismatch");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Power cuts during an update, while the appliance receives a study: `updater update --now`
/// (verify, download over HTTPS, unpack, install into the inactive slot, snapshot the
/// databases, switch, restart request, self-test, commit) of a 32 MiB bundle is killed with
/// SIGKILL at 20 points spread over its run (measured on a first, uninterrupted one). After
/// each kill, `current` points at a complete slot whose every file verifies against its
/// bundle.json, the state says the same thing, a trial the kill interrupted is finished by the
/// next run (its self-test again, then the commit), and at the end every instance the
/// appliance acknowledged is in its spool.
#[test]
fn kill_9_at_any_point_of_an_update_leaves_a_verified_slot_and_loses_no_instance() {
    use hil_tests::appliance::{set, Appliance};
    use std::time::Instant;
    const MODEL_BYTES: usize = 32 << 20;
    let fleet = Fleet::empty();
    fleet.publish_sized("0.2.0", std::env::consts::ARCH, &[], MODEL_BYTES);
    let app = Appliance::start(&|c| set(c, "dicom", "study_quiet_seconds", 1i64));
    let root = fleet.dir.path().join("install");
    let config = fleet.dir.path().join("device.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[update]\nenabled = true\nrepository = {:?}\nca_file = {:?}\n\
             trusted_root = {:?}\ninstall_root = {:?}\nmax_boot_attempts = 3\n\
             self_test = true\n",
            app.data_dir,
            fleet.url(),
            fleet.ca.cert,
            fleet.metadata().join("1.root.json"),
            root
        ),
    )
    .unwrap();
    let updater = |args: &[&str]| {
        let mut command = Command::new(binary_named("updater"));
        command.args(args).arg("--config").arg(&config);
        command
    };
    // 0.2.0 installed and committed first; every later release is a trial.
    let out = updater(&["update", "--now"])
        .args(["--running", "0.1.0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let series = hil_tests::fixtures::CtSeries::load();
    let studies = fleet.dir.path().join("studies");
    let mut sent = 0usize;
    let mut running = semver::Version::new(0, 2, 0);
    // How long an uninterrupted update takes here, measured on the first release.
    let mut full = Duration::from_millis(300);
    for run in 0..20u64 {
        let next = semver::Version::new(0, 3 + run, 0);
        fleet.publish_sized(&next.to_string(), std::env::consts::ARCH, &[], MODEL_BYTES);
        let (_, files) = hil_tests::fixtures::new_study(&series, 4, &studies, run as usize);
        let sender = {
            let (ae, port, files) = (app.ae_title.clone(), app.port, files.clone());
            std::thread::spawn(move || {
                hil_tests::peers::storescu("STORESCU", &ae, port, &[], &files)
                    .status
                    .success()
            })
        };
        // Kill points spread over the whole run (the first run is not killed: it measures).
        let delay = full.mul_f64(run as f64 / 19.0);
        let began = Instant::now();
        let mut child = updater(&["update", "--now"])
            .args(["--running", &running.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let killed = if run == 0 {
            false
        } else {
            std::thread::sleep(delay);
            hil_tests::signal(child.id(), libc::SIGKILL);
            true
        };
        let status = child.wait().unwrap();
        if run == 0 {
            assert!(status.success());
            full = began.elapsed();
        }
        assert!(sender.join().unwrap(), "run {run}: storescu failed");
        sent += files.len();
        // Where the kill landed, from what it left.
        let update_dir = app.data_dir.join("update");
        let since = std::time::SystemTime::now() - began.elapsed();
        let left = |dir: &str, suffix: &str| {
            std::fs::read_dir(update_dir.join(dir))
                .map(|d| {
                    d.filter_map(Result::ok).any(|e| {
                        e.file_name().to_string_lossy().ends_with(suffix)
                            && e.metadata()
                                .and_then(|m| m.modified())
                                .is_ok_and(|t| t >= since)
                    })
                })
                .unwrap_or(false)
        };
        let phase = if left("downloads", ".part") {
            "downloading"
        } else if left("downloads", ".d") {
            "unpacking"
        } else if left("staged", "") {
            "staged, not installed"
        } else if killed && slots_trial_before_kill(&root) {
            "switched, self-testing"
        } else if killed && !slots_trial_before_kill(&root) {
            "verifying metadata, installing, or done"
        } else {
            "done"
        };
        // What a start after the power cut sees.
        let out = updater(&["slots"]).output().unwrap();
        assert!(
            out.status.success(),
            "run {run}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let slots: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let current = root.join("current");
        let manifest = image::bundle::verify_dir(&current)
            .unwrap_or_else(|e| panic!("run {run} (killed {killed}, {delay:?}): {e}; {slots}"));
        let trial = &slots["trial"];
        if trial.is_null() {
            assert_eq!(
                slots["committed"][1],
                manifest.version.as_str(),
                "run {run}: {slots}"
            );
        } else {
            assert_eq!(
                trial["version"],
                manifest.version.as_str(),
                "run {run}: {slots}"
            );
            assert_eq!(manifest.version, next.to_string());
            // The next start finishes the interrupted trial: its self-test, then the commit.
            let out = updater(&["update", "--now"])
                .args(["--running", &running.to_string()])
                .output()
                .unwrap();
            let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            assert_eq!(said["state"], "committed", "run {run}: {said}");
            assert_eq!(said["version"], next.to_string(), "run {run}: {said}");
        }
        running = semver::Version::parse(&manifest.version).unwrap();
        // A staged bundle the kill left is installed by the next run, or replaced by a newer.
        eprintln!(
            "run {run}: killed {killed} after {delay:?} (a full update took {full:?}) while \
             {phase}: runs {}, trial {}",
            manifest.version, slots["trial"]
        );
    }
    // `updater status` says what runs.
    let out = updater(&["status", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["firmware"]["state"], "committed", "{status}");
    assert_eq!(
        status["firmware"]["version"],
        running.to_string(),
        "{status}"
    );
    // Every acknowledged instance is in the spool.
    assert!(
        hil_tests::wait_until(Duration::from_secs(30), || {
            app.studies()
                .iter()
                .map(|s| s["instances"].as_u64().unwrap_or(0) as usize)
                .sum::<usize>()
                == sent
        }),
        "{:?}",
        app.studies()
    );
}

/// Whether `state.json` names a trial (read before the updater's own recovery runs).
fn slots_trial_before_kill(root: &Path) -> bool {
    std::fs::read(root.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|s| !s["trial"].is_null())
}

/// The clinical self-test decides a trial by itself. Real bundles (this build's appliance,
/// the reference model installed on the site, the golden study `ct-series-lesion` with what
/// `appliance infer` says of it): a release whose result matches is committed after its
/// self-test; a release whose result does not match the golden one (here: its golden result
/// says the lesion is 20 % larger, as a regressed model would differ) rolls back by itself,
/// with the reason, and the site keeps running the committed version.
#[test]
fn a_release_passing_its_self_test_is_committed_and_one_failing_it_rolls_back_by_itself() {
    use hil_tests::appliance::Appliance;
    let fleet = Fleet::empty();
    let app = Appliance::start_with_model(&|_| {});
    let work = fleet.dir.path();
    // This build's appliance without debug info, as image/build.sh bundles it.
    let binary = work.join("appliance");
    let out = Command::new("strip")
        .args(["--strip-debug", "-o"])
        .arg(&binary)
        .arg(hil_tests::appliance::binary())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let golden = test_support::fixtures::lesion_series_dir();
    let out = Command::new(&binary)
        .args(["infer"])
        .arg(&golden)
        .args(["--model"])
        .arg(hil_tests::repo_root().join("models/reference/head-ct"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let good = work.join("expected.json");
    std::fs::write(&good, &out.stdout).unwrap();
    let mut wrong: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lesion = wrong["labels"][1]["voxels"].as_f64().unwrap();
    wrong["labels"][1]["voxels"] = ((lesion * 1.2).round() as i64).into();
    let bad = work.join("expected-wrong.json");
    std::fs::write(&bad, serde_json::to_vec(&wrong).unwrap()).unwrap();
    let files = |expected: &Path| {
        vec![
            format!("--file=bin/appliance={}:755", binary.display()),
            format!("--folder=selftest/study={}", golden.display()),
            format!("--file=selftest/expected.json={}:644", expected.display()),
        ]
    };
    // The site's configuration with [update].
    let mut config: toml::Table = std::fs::read_to_string(&app.config_path)
        .unwrap()
        .parse()
        .unwrap();
    let mut update = toml::Table::new();
    update.insert("enabled".into(), true.into());
    update.insert(
        "repository".into(),
        format!("file://{}/", fleet.repo().join("repository").display()).into(),
    );
    update.insert(
        "trusted_root".into(),
        fleet
            .metadata()
            .join("1.root.json")
            .to_string_lossy()
            .into_owned()
            .into(),
    );
    update.insert(
        "install_root".into(),
        work.join("install").to_string_lossy().into_owned().into(),
    );
    config.insert("update".into(), update.into());
    let config_path = work.join("site.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let update_now = |running: &str| {
        let out = Command::new(binary_named("updater"))
            .args(["update", "--now", "--running", running, "--config"])
            .arg(&config_path)
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.success(), json)
    };

    // The first install has nothing to go back to: committed as it lands.
    fleet.publish_with("0.2.0", &files(&good));
    let (ok, json) = update_now("0.1.0");
    assert!(ok, "{json}");
    assert_eq!(json["state"], "committed", "{json}");
    // A good release: on trial, self-tested, committed.
    fleet.publish_with("0.3.0", &files(&good));
    let (ok, json) = update_now("0.2.0");
    assert!(ok, "{json}");
    assert_eq!(json["state"], "committed", "{json}");
    assert_eq!(json["version"], "0.3.0");
    assert_eq!(json["self_test"]["passed"], true, "{json}");
    assert_eq!(
        json["self_test"]["received"],
        serde_json::json!(["SEG", "SR"])
    );
    let seconds = json["self_test"]["seconds"].as_f64().unwrap();
    eprintln!(
        "self-test of 0.3.0 passed in {seconds:.2} s (golden study to SEG and SR at the sink)"
    );
    // A release whose result differs from its golden one: rolled back by itself.
    fleet.publish_with("0.4.0", &files(&bad));
    let (ok, json) = update_now("0.3.0");
    assert!(!ok, "{json}");
    assert_eq!(json["state"], "rolled_back", "{json}");
    let reason = json["reason"].as_str().unwrap();
    assert!(
        reason.contains("version 0.4.0 failed its self-test") && reason.contains("label 2"),
        "{reason}"
    );
    eprintln!("0.4.0: {reason}");
    let out = Command::new(binary_named("updater"))
        .args(["status", "--json", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["firmware"]["version"], "0.3.0", "{status}");
    assert_eq!(status["firmware"]["state"], "committed", "{status}");
    assert_eq!(status["firmware"]["last_error"], reason, "{status}");
    // The self-test's loopback daemons left nothing in the site's data folder.
    for entry in std::fs::read_dir(&app.data_dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with("selftest-"), "{name} left behind");
    }
}

/// Minutes since midnight UTC now.
fn utc_minute_now() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    ((secs % 86_400) / 60) as u32
}

fn hhmm(minute: u32) -> String {
    let m = minute % 1440;
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// A device configuration for `updater update` (without `--now`) against this repository.
fn scheduled_config(fleet: &Fleet, extra_update: &str, http: &str) -> PathBuf {
    let config = fleet.dir.path().join("scheduled.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[http]\n{http}\n[update]\nenabled = true\nrepository = {:?}\n\
             ca_file = {:?}\ntrusted_root = {:?}\ninstall_root = {:?}\n{extra_update}\n",
            fleet.data(),
            fleet.url(),
            fleet.ca.cert,
            fleet.metadata().join("1.root.json"),
            fleet.dir.path().join("install"),
        ),
    )
    .unwrap();
    config
}

#[test]
fn an_update_waits_for_its_maintenance_window_and_switches_inside_it() {
    let fleet = Fleet::new();
    let now = utc_minute_now();
    // A window two hours from now (the updater's local time is UTC here): it waits.
    let closed = format!(
        "maintenance_window = \"{}-{}\"",
        hhmm(now + 120),
        hhmm(now + 180)
    );
    let config = scheduled_config(&fleet, &closed, "enabled = false");
    let log = fleet.dir.path().join("updater.log");
    let mut child = Command::new(binary_named("updater"))
        .args(["update", "--config"])
        .arg(&config)
        .env("TZ", "UTC")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let waited = hil_tests::wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("outside the maintenance window"))
    });
    std::thread::sleep(Duration::from_secs(3));
    let still_waiting = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(waited && still_waiting, "{said}");
    assert!(
        !fleet.dir.path().join("install/current").exists(),
        "switched outside its window"
    );
    // The bundle it fetched while waiting stays staged for the window.
    assert!(fleet.data().join("update/staged/0.2.0").is_dir(), "{said}");

    // A window that is open now: it switches.
    let open = format!(
        "maintenance_window = \"{}-{}\"",
        hhmm(now + 1440 - 5),
        hhmm(now + 60)
    );
    let config = scheduled_config(&fleet, &open, "enabled = false");
    let out = Command::new(binary_named("updater"))
        .args(["update", "--config"])
        .arg(&config)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success(),
        "{json} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json["state"], "committed", "{json}");
    assert_eq!(json["version"], "0.2.0", "{json}");
}

#[test]
fn an_update_waits_until_no_study_is_being_received_or_inferred() {
    use hil_tests::appliance::{set, Appliance};
    let fleet = Fleet::new();
    let app = Appliance::start_with_model(&|c| set(c, "dicom", "study_quiet_seconds", 3i64));
    // Idle: the activity the updater reads says so.
    let (code, body) = app.http("/activity");
    assert_eq!(code, 200, "{body}");
    let idle: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        idle,
        serde_json::json!({"associations_active": 0, "studies_receiving": 0, "jobs_waiting": 0})
    );
    // A study arrives; the update is asked for while it waits for completion and inference.
    let series = hil_tests::fixtures::CtSeries::load();
    let (study, files) =
        hil_tests::fixtures::new_study(&series, 24, &fleet.dir.path().join("studies"), 0);
    let sent = hil_tests::peers::storescu("STORESCU", &app.ae_title, app.port, &[], &files);
    assert!(sent.status.success());
    let config = scheduled_config(
        &fleet,
        "",
        &format!("bind = \"127.0.0.1\"\nport = {}", app.http_port),
    );
    let out = Command::new(binary_named("updater"))
        .args(["update", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(out.status.success(), "{json} {said}");
    assert_eq!(json["state"], "committed", "{json}");
    assert!(said.contains("the appliance is working"), "{said}");
    // It switched only once the study was complete and its job no longer queued or running.
    let jobs = app.jobs(&study);
    assert!(!jobs.is_empty(), "no job for the study");
    for job in &jobs {
        let state = job["state"].as_str().unwrap_or_default();
        assert!(state != "queued" && state != "running", "{job}");
    }
    assert_eq!(app.studies()[0]["state"], "complete", "{:?}", app.studies());
}

/// The federation's signing key under the one trust root: the targets role delegates the
/// `federation` role (global heads) to it, a device with `trusted_key = "repository"` takes
/// the key from verified metadata only, follows a rotation, keeps it across later releases,
/// and refuses a delegation changed by anyone but the targets key's holder.
#[test]
fn the_federation_key_is_the_one_the_repository_delegates_to_and_follows_its_rotation() {
    let fleet = Fleet::new();
    let keygen = |name: &str| -> (PathBuf, String) {
        let (private, public) = (
            fleet.dir.path().join(format!("{name}.pem")),
            fleet.dir.path().join(format!("{name}.pub.pem")),
        );
        let out = Command::new(binary_named("federation"))
            .args(["keygen", "--private"])
            .arg(&private)
            .arg("--public")
            .arg(&public)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key =
            fleet_wire::signed::verifying_key_from_pem(&std::fs::read_to_string(&public).unwrap())
                .unwrap();
        let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        (public, hex)
    };
    let (first, first_hex) = keygen("federation-1");
    let (second, second_hex) = keygen("federation-2");
    let config = fleet.dir.path().join("site.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[federation]\nenabled = true\nbroker = \"mqtts://127.0.0.1:8883\"\n\
             ca_file = \"ca.pem\"\ncert_file = \"site.pem\"\nkey_file = \"site.key\"\n\
             federation = \"fleet\"\ndevice_id = \"site-1\"\ntrusted_key = \"repository\"\n\
             model = \"head-ct-ich\"\n[update]\nenabled = true\nrepository = {:?}\n\
             ca_file = {:?}\ntrusted_root = {:?}\n",
            fleet.data(),
            fleet.url(),
            fleet.ca.cert,
            fleet.metadata().join("1.root.json"),
        ),
    )
    .unwrap();
    let key_of_device = || {
        let out = Command::new(binary_named("updater"))
            .args(["federation-key", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        match out.status.success() {
            true => {
                let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(json["source"], "repository", "{json}");
                Ok(json["ed25519"].as_str().unwrap().to_string())
            }
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    };
    // Nothing delegated yet: no key, and the reason.
    let refused = key_of_device().unwrap_err();
    assert!(refused.contains("the federation role"), "{refused}");

    fleet.fleet_with(
        &["repo", "delegate-federation"],
        &[&fleet.repo()],
        &["--key", first.to_str().unwrap()],
    );
    assert_eq!(key_of_device().unwrap(), first_hex);

    // A later release keeps the delegation.
    fleet.publish("0.3.0", std::env::consts::ARCH, &[]);
    assert_eq!(key_of_device().unwrap(), first_hex);

    // Rotation: the operator delegates to the new key; the device follows.
    fleet.fleet_with(
        &["repo", "delegate-federation"],
        &[&fleet.repo()],
        &["--key", second.to_str().unwrap()],
    );
    assert_eq!(key_of_device().unwrap(), second_hex);

    // Someone with the mirror but not the targets key puts the old key back: refused.
    let mut newest: Vec<PathBuf> = std::fs::read_dir(fleet.metadata())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".targets.json"))
        .collect();
    newest.sort_by_key(|p| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .split('.')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    });
    let targets = newest.pop().unwrap();
    let text = std::fs::read_to_string(&targets).unwrap();
    assert!(text.contains(&second_hex));
    std::fs::write(&targets, text.replace(&second_hex, &first_hex)).unwrap();
    // A device that has not seen this repository yet (it must read every file afresh).
    std::fs::remove_dir_all(fleet.data().join("update/tuf")).unwrap();
    let refused = key_of_device().unwrap_err();
    assert!(refused.contains("not trusted"), "{refused}");
}

/// Model packages under the same trust root: the operator publishes a package folder, the
/// device installs a signed version newer than its own (inactive: activating stays an admin's
/// decision) through the appliance's own install, says it is up to date the next time, and
/// refuses a package whose bytes on the mirror are not the signed ones.
#[test]
fn a_signed_model_package_newer_than_the_installed_one_is_installed_inactive_and_a_tampered_one_is_refused(
) {
    use hil_tests::appliance::Appliance;
    let fleet = Fleet::new();
    let app = Appliance::start_with_model(&|_| {});
    let publish = |version: &str| {
        let package = fleet.dir.path().join(format!("head-ct-{version}"));
        copy_dir(
            &hil_tests::repo_root().join("models/reference/head-ct"),
            &package,
        );
        let manifest = package.join("manifest.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert!(text.contains("\nversion = \"0.1.0\"\n"));
        std::fs::write(
            &manifest,
            text.replacen(
                "\nversion = \"0.1.0\"\n",
                &format!("\nversion = \"{version}\"\n"),
                1,
            ),
        )
        .unwrap();
        fleet.fleet(&["repo", "publish"], &[&fleet.repo(), &package]);
    };
    publish("0.2.0");
    let mut config: toml::Table = std::fs::read_to_string(&app.config_path)
        .unwrap()
        .parse()
        .unwrap();
    let mut update = toml::Table::new();
    update.insert("enabled".into(), true.into());
    update.insert("repository".into(), fleet.url().into());
    update.insert(
        "ca_file".into(),
        fleet.ca.cert.to_string_lossy().into_owned().into(),
    );
    update.insert(
        "trusted_root".into(),
        fleet
            .metadata()
            .join("1.root.json")
            .to_string_lossy()
            .into_owned()
            .into(),
    );
    update.insert(
        "models".into(),
        vec![toml::Value::from("head-ct-ich")].into(),
    );
    update.insert(
        "appliance_binary".into(),
        binary_named("appliance")
            .to_string_lossy()
            .into_owned()
            .into(),
    );
    config.insert("update".into(), update.into());
    let device = fleet.dir.path().join("device-models.toml");
    std::fs::write(&device, toml::to_string(&config).unwrap()).unwrap();
    let models = || {
        let out = Command::new(binary_named("updater"))
            .args(["models", "--config"])
            .arg(&device)
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.success(), json)
    };
    let (ok, json) = models();
    assert!(ok, "{json}");
    assert_eq!(json[0]["state"], "installed", "{json}");
    assert_eq!(json[0]["version"], "0.2.0", "{json}");
    let listed =
        String::from_utf8_lossy(&app.cli(&["models", "list", "--json"]).stdout).into_owned();
    assert!(listed.contains("0.2.0"), "{listed}");
    let active = app.data_dir.join("models/head-ct-ich/active");
    assert_eq!(std::fs::read_to_string(&active).unwrap().trim(), "0.1.0");
    // The admin's step.
    let activated = app.cli(&["models", "activate", "head-ct-ich", "0.2.0"]);
    assert!(
        activated.status.success(),
        "{}",
        String::from_utf8_lossy(&activated.stderr)
    );
    assert_eq!(std::fs::read_to_string(&active).unwrap().trim(), "0.2.0");
    let (ok, json) = models();
    assert!(ok, "{json}");
    assert_eq!(json[0]["state"], "up_to_date", "{json}");
    assert_eq!(json[0]["installed"], "0.2.0", "{json}");

    // 0.3.0 is signed, but the mirror serves other bytes under its name.
    publish("0.3.0");
    let target = std::fs::read_dir(fleet.repo().join("repository/targets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("model-head-ct-ich-0.3.0.tar"))
        .unwrap();
    let mut bytes = std::fs::read(&target).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&target, bytes).unwrap();
    let (ok, json) = models();
    assert!(!ok, "{json}");
    assert_eq!(json[0]["state"], "refused", "{json}");
    assert!(
        json[0]["reason"]
            .as_str()
            .unwrap()
            .contains("Hash mismatch"),
        "{json}"
    );
    assert!(!app.data_dir.join("models/head-ct-ich/0.3.0").exists());
    fleet.nothing_staged("tampered model package");
}
