//! The audit trail: a day of the appliance (a study sent by DCMTK, a caller refused, results
//! delivered to a DCMTK storescp, administrative commands of the CLI, a restart) leaves one
//! hash-chained record per event with its DICOM audit code and no identifier in clear;
//! `appliance audit verify` passes, and fails naming the line once a record is edited.

use hil_tests::appliance::{set, set_destination, Appliance};
use hil_tests::fixtures::lesion_series;
use hil_tests::peers::{echoscu, start_rsyslog, start_storescp, storescu};
use hil_tests::wait_until;
use std::time::Duration;

fn actions(records: &[serde_json::Value], action: &str) -> Vec<serde_json::Value> {
    records
        .iter()
        .filter(|r| r["action"] == action)
        .cloned()
        .collect()
}

#[test]
fn every_association_delivery_and_admin_action_is_chained_and_an_edit_is_found() {
    let viewer = start_storescp();
    let port = viewer.port;
    let syslog = start_rsyslog();
    let syslog_at = format!("127.0.0.1:{}", syslog.port);
    let mut app = Appliance::start_with_model(&|c| {
        set_destination(c, "archive", "STORESCP", port);
        set(c, "audit", "syslog", syslog_at.as_str());
    });
    let (files, study_uid) = lesion_series();
    let out = storescu("STORESCU", &app.ae_title, app.port, &[], &files);
    assert!(out.status.success());
    // A caller no peer entry names is refused.
    let refused = echoscu("INTRUDER", &app.ae_title, app.port);
    assert!(!refused.status.success());
    let delivered = wait_until(Duration::from_secs(180), || {
        let e = app.outbox();
        e.len() == 2 && e.iter().all(|e| e["state"] == "sent")
    });
    assert!(delivered, "{:?}\n{}", app.outbox(), app.log());
    // Administrative actions: one that works, one that fails.
    assert!(app
        .cli(&["studies", "protect", &study_uid])
        .status
        .success());
    assert!(!app.cli(&["outbox", "retry"]).status.success());
    app.terminate(Duration::from_secs(30));
    // An admin routes CT to the model explicitly (a change of the file, seen at the start).
    let text = std::fs::read_to_string(&app.config_path).unwrap();
    let mut config: toml::Table = toml::from_str(&text).unwrap();
    let mut route = toml::Table::new();
    route.insert("model".into(), "head-ct-ich".into());
    route.insert("modality".into(), "CT".into());
    config.insert("routes".into(), toml::Value::Array(vec![route.into()]));
    std::fs::write(&app.config_path, toml::to_string(&config).unwrap()).unwrap();
    app.launch();

    let all = app.audit();
    let sent: Vec<_> = actions(&all, "association")
        .into_iter()
        .filter(|r| r["detail"]["calling_ae"] == "STORESCU")
        .collect();
    assert_eq!(sent.len(), 1, "{all:#?}");
    assert_eq!(sent[0]["detail"]["instances"]["stored"], 108);
    assert_eq!(sent[0]["dicom_event"], "110104");
    assert!(sent[0]["outcome"].as_str().unwrap().starts_with("success"));
    let intruder: Vec<_> = actions(&all, "association")
        .into_iter()
        .filter(|r| r["detail"]["calling_ae"] == "INTRUDER")
        .collect();
    assert_eq!(intruder.len(), 1);
    assert_eq!(intruder[0]["dicom_event"], "110113");
    assert!(intruder[0]["outcome"]
        .as_str()
        .unwrap()
        .contains("calling_ae_title"));
    let deliveries = actions(&all, "delivery");
    assert_eq!(deliveries.len(), 2, "{all:#?}");
    assert!(deliveries
        .iter()
        .all(|d| d["outcome"] == "success" && d["detail"]["destination"] == "archive"));
    let routes = actions(&all, "routes.change");
    assert_eq!(routes.len(), 1, "{all:#?}");
    assert_eq!(routes[0]["detail"]["before"], serde_json::json!([]));
    assert_eq!(routes[0]["detail"]["after"][0]["model"], "head-ct-ich");
    let protect = actions(&all, "study.protect");
    assert_eq!(protect.len(), 1);
    assert!(protect[0]["actor"].as_str().unwrap().starts_with("cli:"));
    let retry = actions(&all, "outbox.retry");
    assert!(retry[0]["outcome"].as_str().unwrap().starts_with("failure"));
    // Every start but that of the daemon now running has its stop (the harness may restart
    // the daemon while it sets up, so count the pairs, not the starts).
    let starts = actions(&all, "application.start").len();
    let stops = actions(&all, "application.stop");
    assert!(starts >= 2, "{all:#?}");
    assert_eq!(stops.len(), starts - 1);
    assert!(stops
        .iter()
        .all(|s| s["outcome"] == "success" && s["dicom_event"] == "110100"));

    // No identifier in clear: the study appears only as its log tag.
    let path = app.data_dir.join("audit/audit.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&study_uid));
    assert!(text.contains(&radiant_core::log_tag(&study_uid)));

    let verify = app.cli(&["audit", "verify"]);
    let said = String::from_utf8_lossy(&verify.stdout).to_string();
    assert!(verify.status.success(), "{said}");
    assert!(
        said.contains(&format!("{} records, chain intact", all.len())),
        "{said}"
    );

    // rsyslogd got every record as RFC 5424 (facility log audit, the action as MSGID), the
    // record's line as the message: a copy the appliance cannot edit afterwards.
    let got = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(syslog.dir.path().join("messages"))
            .map(|m| m.lines().count() >= all.len())
            .unwrap_or(false)
    });
    assert!(got, "rsyslog holds too few messages");
    let messages = std::fs::read_to_string(syslog.dir.path().join("messages")).unwrap();
    for line in text.lines() {
        // Two processes may send in another order than they appended: match by content.
        let message = messages
            .lines()
            .find(|m| m.ends_with(line))
            .unwrap_or_else(|| panic!("not forwarded: {line}\n{messages}"));
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let failure = record["outcome"].as_str().unwrap().starts_with("failure");
        let pri = if failure { "<108>1 " } else { "<109>1 " };
        assert!(message.starts_with(pri), "{message}");
        let fields: Vec<&str> = message.splitn(8, ' ').collect();
        assert_eq!(fields[3], "radiant-edge", "{message}");
        assert_eq!(fields[5], record["action"].as_str().unwrap(), "{message}");
        assert_eq!(fields[6], "-");
        assert_eq!(fields[7], line, "the message is the record's line");
    }

    // Someone edits a record: the chain breaks at the next line, and verify says which.
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("\"outbox.retry\""))
        .unwrap();
    let edited = text.replacen(lines[at], &lines[at].replace("failure", "success"), 1);
    std::fs::write(&path, edited).unwrap();
    let verify = app.cli(&["audit", "verify"]);
    let said = String::from_utf8_lossy(&verify.stderr).to_string();
    assert!(!verify.status.success());
    assert!(
        said.contains(&format!("broken at line {}", at + 2)),
        "{said}"
    );
}
