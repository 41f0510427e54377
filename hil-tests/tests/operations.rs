//! What radiology IT watches: health endpoints, Prometheus metrics, logs without patient data,
//! and the CLI's view of studies.

use hil_tests::appliance::Appliance;
use hil_tests::fixtures::CtSeries;
use hil_tests::peers::{echoscu, storescu};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

#[test]
fn health_and_metrics_report_what_happened() {
    let app = Appliance::start(&|_| {});
    assert_eq!(app.http("/health/live"), (200, "live\n".to_string()));
    assert_eq!(app.http("/health/ready").0, 200);
    let series = CtSeries::load();
    assert!(storescu(
        "STORESCU",
        &app.ae_title,
        app.port,
        &[],
        &series.paths()[..12]
    )
    .status
    .success());
    assert!(!echoscu("NOBODY", &app.ae_title, app.port).status.success());
    let bytes: u64 = series.paths()[..12]
        .iter()
        .zip(&series.slices)
        .map(|(p, s)| std::fs::metadata(p).unwrap().len() - s.dataset_offset as u64)
        .sum();
    assert_eq!(app.expect_metric("radiant_instances_received_total"), 12.0);
    assert_eq!(
        app.expect_metric("radiant_received_bytes_total"),
        bytes as f64
    );
    assert_eq!(app.expect_metric("radiant_spool_bytes"), bytes as f64);
    assert_eq!(
        app.expect_metric("radiant_rejects_total{reason=\"calling_ae_title\"}"),
        1.0
    );
    assert!(app.expect_metric("radiant_associations_total") >= 1.0);
    assert_eq!(app.http("/nope").0, 404);
}

#[test]
fn logs_never_carry_patient_names_ids_or_study_uids_in_clear() {
    let app =
        Appliance::start(&|c| hil_tests::appliance::set_dicom(c, "study_quiet_seconds", 1i64));
    let series = CtSeries::load();
    assert!(storescu(
        "STORESCU",
        &app.ae_title,
        app.port,
        &[],
        &series.paths()[..3]
    )
    .status
    .success());
    assert!(hil_tests::wait_until(
        std::time::Duration::from_secs(10),
        || app.log().contains("study complete")
    ));
    let log = app.log();
    for secret in [
        "Anonymous^Cranium",
        "Cranium",
        "RE-CT-0001",
        series.study_instance_uid.as_str(),
    ] {
        assert!(!log.contains(secret), "log contains {secret:?}");
    }
    assert!(log.contains(&radiant_core::log_tag(&series.study_instance_uid)));
}

#[test]
fn a_second_serve_on_the_same_data_folder_exits_with_the_reason_and_the_first_keeps_serving() {
    let app = Appliance::start(&|_| {});
    let series = CtSeries::load();
    assert!(storescu(
        "STORESCU",
        &app.ae_title,
        app.port,
        &[],
        &series.paths()[..3]
    )
    .status
    .success());
    // Same configuration and data folder (its ports are taken: the lock must refuse first,
    // before recovery touches the spool or a port is bound).
    let second = std::process::Command::new(hil_tests::appliance::binary())
        .args(["serve", "--config"])
        .arg(&app.config_path)
        .output()
        .expect("run a second serve");
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        said.contains("another appliance serve is running"),
        "{said}"
    );
    assert_eq!(app.expect_metric("radiant_instances_received_total"), 3.0);
    assert!(storescu(
        "STORESCU",
        &app.ae_title,
        app.port,
        &[],
        &series.paths()[3..6]
    )
    .status
    .success());
    assert_eq!(app.studies()[0]["instances"], 6, "{:?}", app.studies());
}

/// Under systemd (`Type=notify`, `WatchdogSec`): the daemon says READY=1 once the SCP accepts
/// associations, pings the watchdog every half interval, and says STOPPING=1 on SIGTERM. The
/// test plays systemd's side of the protocol: a datagram socket named by `NOTIFY_SOCKET`.
#[test]
fn the_daemon_tells_systemd_it_is_ready_feeds_its_watchdog_and_says_when_it_stops() {
    let mut app = Appliance::start(&|_| {});
    assert!(app.terminate(Duration::from_secs(30)).is_some());
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut child = std::process::Command::new(hil_tests::appliance::binary())
        .args(["serve", "--config"])
        .arg(&app.config_path)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut heard: Vec<String> = Vec::new();
    listen(&socket, &mut heard, "READY=1", Duration::from_secs(20));
    assert!(
        heard.iter().any(|m| m == "READY=1"),
        "no READY=1: {heard:?}"
    );
    assert!(
        hil_tests::port_open(app.port),
        "READY=1 before the SCP listens"
    );
    // 0.4 s watchdog: a ping every 0.2 s, so at least 5 in 1.5 s.
    listen(&socket, &mut heard, "never", Duration::from_millis(1500));
    let pings = heard.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(pings >= 5, "{pings} watchdog pings in 1.5 s: {heard:?}");
    hil_tests::signal(child.id(), libc::SIGTERM);
    listen(&socket, &mut heard, "STOPPING=1", Duration::from_secs(20));
    assert!(heard.iter().any(|m| m == "STOPPING=1"), "{heard:?}");
    assert!(child.wait().unwrap().success());
}

/// Append every `sd_notify` line `socket` receives to `heard`, until one equals `until` or
/// `limit` passed.
fn listen(socket: &UnixDatagram, heard: &mut Vec<String>, until: &str, limit: Duration) {
    let end = Instant::now() + limit;
    let mut buf = [0u8; 512];
    while Instant::now() < end && !heard.iter().any(|m| m == until) {
        if let Ok(n) = socket.recv(&mut buf) {
            heard.extend(String::from_utf8_lossy(&buf[..n]).lines().map(String::from));
        }
    }
}

/// `appliance doctor --json`: one finding per line, and its exit status.
fn doctor(app: &Appliance) -> (bool, Vec<serde_json::Value>) {
    let out = app.cli(&["doctor", "--json"]);
    let findings = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (out.status.success(), findings)
}

fn find<'a>(findings: &'a [serde_json::Value], check: &str) -> &'a serde_json::Value {
    findings
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no finding for {check}: {findings:#?}"))
}

#[test]
fn the_doctor_passes_a_working_install_after_echoing_its_destination_through_dcmtk() {
    let pacs = hil_tests::peers::start_storescp();
    let app = Appliance::start_with_model(&|c| {
        hil_tests::appliance::set_destination(c, "pacs", "STORESCP", pacs.port)
    });
    let (ok, findings) = doctor(&app);
    assert!(ok, "{findings:#?}");
    let echo = find(&findings, "destination pacs");
    assert_eq!(echo["verdict"], "ok", "{echo}");
    assert!(
        echo["detail"]
            .as_str()
            .unwrap()
            .contains("C-ECHO to STORESCP@127.0.0.1"),
        "{echo}"
    );
    assert_eq!(find(&findings, "model head-ct-ich 0.1.0")["verdict"], "ok");
    let runtime = find(&findings, "runtime head-ct-ich");
    assert_eq!(runtime["detail"], "loads on tract", "{runtime}");
    assert_eq!(find(&findings, "data_dir")["verdict"], "ok");
    assert_eq!(find(&findings, "disk")["verdict"], "ok");
}

#[test]
fn the_doctor_names_an_unreachable_destination_and_a_damaged_model_with_their_fixes_and_fails() {
    // A port nothing listens on, and a model file changed on disk after its install.
    let closed = hil_tests::free_port();
    let app = Appliance::start_with_model(&|c| {
        hil_tests::appliance::set_destination(c, "pacs", "ORTHANC", closed)
    });
    let head = app
        .data_dir
        .join("models/head-ct-ich/0.1.0/head.safetensors");
    let mut bytes = std::fs::read(&head).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&head, bytes).unwrap();
    let (ok, findings) = doctor(&app);
    assert!(!ok, "{findings:#?}");
    let echo = find(&findings, "destination pacs");
    assert_eq!(echo["verdict"], "problem", "{echo}");
    assert!(
        echo["fix"].as_str().unwrap().contains("AE title ORTHANC"),
        "{echo}"
    );
    let model = find(&findings, "model head-ct-ich 0.1.0");
    assert_eq!(model["verdict"], "problem", "{model}");
    assert!(
        model["detail"]
            .as_str()
            .unwrap()
            .contains("head.safetensors"),
        "{model}"
    );
    assert!(
        model["fix"].as_str().unwrap().contains("models install"),
        "{model}"
    );
    // The text form says the same to a person.
    let out = app.cli(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("PROBLEM  destination pacs"), "{text}");
    assert!(text.contains("fix: "), "{text}");
    assert_eq!(out.status.code(), Some(1));
}
