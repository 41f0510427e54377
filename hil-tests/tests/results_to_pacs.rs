//! Results back to the PACS, with Orthanc as the PACS: Orthanc sends a head CT to the
//! appliance, the appliance answers with a SEG and an SR, and Orthanc then holds them under the
//! same study; what Orthanc stored passes dciodvfy and is byte for byte what the appliance
//! wrote. The outbox survives the PACS going away mid-delivery and the appliance being killed,
//! and stops at once on a permanent refusal.

use hil_tests::appliance::{set, set_destination, set_peers, Appliance};
use hil_tests::fixtures::lesion_series;
use hil_tests::peers::{
    self, orthanc_json, orthanc_push, orthanc_upload, start_orthanc_at, storescu, PeerProcess,
};
use hil_tests::{free_port, http_get_bytes, wait_until};
use std::path::PathBuf;
use std::time::Duration;

/// Orthanc's series (one study here): (modality, instance ids).
fn orthanc_series(orthanc: &PeerProcess) -> Vec<(String, Vec<String>)> {
    peers::orthanc_series(orthanc)
        .into_iter()
        .map(|(_, modality, instances)| (modality, instances))
        .collect()
}

fn modalities(orthanc: &PeerProcess) -> Vec<String> {
    orthanc_series(orthanc)
        .into_iter()
        .map(|(m, _)| m)
        .collect()
}

/// Exit 0 when two DICOM files hold the same dataset (pydicom equality: tags, VRs and values,
/// nested sequences included); otherwise print the tags that differ.
const SAME_DATASET: &str = r#"
import sys, pydicom
a, b = (pydicom.dcmread(p) for p in sys.argv[1:3])
if a != b:
    print([str(e.tag) for e in a if e.tag not in b or b[e.tag] != e], [str(e.tag) for e in b if e.tag not in a])
    sys.exit(1)
"#;

fn ours_entry<'a>(objects: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    objects.iter().find(|o| o["kind"] == kind).unwrap()
}

fn ours_path(app: &Appliance, entry: &serde_json::Value) -> PathBuf {
    app.data_dir.join(entry["path"].as_str().unwrap())
}

#[test]
fn orthanc_holds_the_seg_and_sr_under_the_study_it_sent_and_they_validate() {
    let (orthanc_port, orthanc_http) = (free_port(), free_port());
    let app = Appliance::start_with_model(&|c| {
        set_destination(c, "pacs", "ORTHANC", orthanc_port);
    });
    let orthanc = start_orthanc_at(&app.ae_title, app.port, orthanc_port, orthanc_http);
    let (files, study_uid) = lesion_series();
    let studies = orthanc_upload(&orthanc, &files);
    assert_eq!(studies.len(), 1);
    orthanc_push(&orthanc, &studies[0]);

    let arrived = wait_until(Duration::from_secs(120), || {
        modalities(&orthanc) == ["CT", "SEG", "SR"]
    });
    assert!(
        arrived,
        "Orthanc holds {:?}; outbox {:?}\n{}",
        modalities(&orthanc),
        app.outbox(),
        app.log()
    );
    // One study in Orthanc: the results landed under the Study Instance UID it sent.
    let all = orthanc_json(&orthanc, "/studies");
    assert_eq!(all.as_array().unwrap().len(), 1);
    let study = orthanc_json(&orthanc, &format!("/studies/{}", all[0].as_str().unwrap()));
    assert_eq!(
        study["MainDicomTags"]["StudyInstanceUID"],
        study_uid.as_str()
    );

    // What Orthanc stored validates and is exactly what the appliance wrote.
    let job = &app.jobs(&study_uid)[0];
    let objects = job["result"]["objects"].as_array().unwrap();
    for (modality, instances) in orthanc_series(&orthanc) {
        if modality == "CT" {
            assert_eq!(instances.len(), 108);
            continue;
        }
        assert_eq!(instances.len(), 1, "{modality}: one object, no duplicate");
        let (status, stored) = http_get_bytes(
            orthanc.http_port,
            &format!("/instances/{}/file", instances[0]),
        )
        .unwrap();
        assert_eq!(status, 200);
        test_support::dciodvfy::assert_valid_bytes(
            &stored,
            &format!("{modality} stored by Orthanc"),
        );
        // Orthanc (DCMTK) re-encodes sequences with explicit lengths when it stores, so compare
        // what the objects say, element by element (pydicom), not their byte encoding; what
        // crossed the wire byte for byte is checked against storescp -B in the SCU tests.
        let dir = tempfile::tempdir().unwrap();
        let theirs_path = dir.path().join("orthanc.dcm");
        std::fs::write(&theirs_path, &stored).unwrap();
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(SAME_DATASET)
            .arg(&theirs_path)
            .arg(ours_path(&app, ours_entry(objects, &modality)))
            .output()
            .expect("python3 with pydicom");
        assert!(
            out.status.success(),
            "{modality} in Orthanc differs from what the appliance wrote: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if modality == "SEG" {
            let seg = pacs_bridge::objects::seg::decode(&stored).unwrap();
            assert_eq!(seg.segment_numbers(), [1, 2]);
            let lesion_frames = seg.frames.iter().filter(|f| f.segment == 2).count();
            assert!(lesion_frames > 0, "the implanted lesion is in the SEG");
        }
    }
    let entries = app.outbox();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(entries
        .iter()
        .all(|e| e["state"] == "sent" && e["attempts"] == 1));
    assert_eq!(app.expect_metric("radiant_outbox_sent_total"), 2.0);
    // The histograms an operator reads: each delivery, each stage of the one job, each instance.
    assert_eq!(
        app.expect_metric("radiant_outbox_delivery_latency_seconds_count"),
        2.0
    );
    for stage in [
        "decode",
        "preprocess",
        "backbone_head",
        "postprocess",
        "export",
    ] {
        let name = format!("radiant_inference_stage_seconds_count{{stage=\"{stage}\"}}");
        assert_eq!(app.expect_metric(&name), 1.0, "{name}");
    }
    assert_eq!(
        app.expect_metric("radiant_ingest_latency_seconds_count"),
        app.expect_metric("radiant_instances_received_total")
    );
}

#[test]
fn the_outbox_delivers_after_the_pacs_returns_even_across_an_appliance_kill() {
    let (orthanc_port, orthanc_http) = (free_port(), free_port());
    let mut app = Appliance::start_with_model(&|c| {
        set_destination(c, "pacs", "ORTHANC", orthanc_port);
    });
    let mut orthanc = start_orthanc_at(&app.ae_title, app.port, orthanc_port, orthanc_http);
    // The PACS goes away after sending the study, while the appliance works on it.
    let (files, study_uid) = lesion_series();
    let studies = orthanc_upload(&orthanc, &files);
    orthanc_push(&orthanc, &studies[0]);
    orthanc.kill();

    let retrying = wait_until(Duration::from_secs(120), || {
        let e = app.outbox();
        e.len() == 2
            && e.iter()
                .all(|e| e["state"] == "pending" && e["attempts"].as_i64() >= Some(2))
    });
    assert!(retrying, "{:?}\n{}", app.outbox(), app.log());
    let entry = &app.outbox()[0];
    assert!(
        entry["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("connect"),
        "{entry}"
    );
    assert!(app.expect_metric("radiant_outbox_retries_total") >= 2.0);
    assert_eq!(app.expect_metric("radiant_outbox_pending"), 2.0);

    // A hard stop of the appliance loses nothing: the entries are still there after restart.
    app.kill9();
    app.launch();
    orthanc.restart_orthanc();
    let delivered = wait_until(Duration::from_secs(60), || {
        let entries = app.outbox();
        !entries.is_empty() && entries.iter().all(|e| e["state"] == "sent")
    });
    assert!(delivered, "{:?}\n{}", app.outbox(), app.log());
    let series = orthanc_series(&orthanc);
    let results: Vec<_> = series.iter().filter(|(m, _)| m != "CT").collect();
    assert_eq!(results.len(), 2, "{series:?}");
    assert!(results.iter().all(|(_, i)| i.len() == 1), "{series:?}");
    // The job ran once: no second result, no second set of objects.
    assert_eq!(app.jobs(&study_uid).len(), 1);
    assert_eq!(app.outbox().len(), 2);
}

#[test]
fn a_permanent_refusal_stops_delivery_at_once_and_retry_queues_it_again() {
    // The "PACS" is a second appliance that does not know our AE title: a permanent
    // A-ASSOCIATE-RJ (calling AE title not recognized).
    let mut pacs = Appliance::start(&|c| {
        set(c, "dicom", "ae_title", "PACS");
        set_peers(c, &[("SOMEONE_ELSE", None)]);
    });
    let app = Appliance::start_with_model(&|c| {
        set_destination(c, "pacs", "PACS", pacs.port);
    });
    let (files, _) = lesion_series();
    let out = storescu("STORESCU", &app.ae_title, app.port, &[], &files);
    assert!(out.status.success());
    let failed = wait_until(Duration::from_secs(90), || {
        let e = app.outbox();
        e.len() == 2 && e.iter().all(|e| e["state"] == "failed")
    });
    assert!(failed, "{:?}\n{}", app.outbox(), app.log());
    let entry = &app.outbox()[0];
    assert_eq!(entry["attempts"], 1, "{entry}");
    assert!(
        entry["last_error"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("reject"),
        "{entry}"
    );
    // No retry loop: a few retry periods later nothing has been tried again.
    std::thread::sleep(Duration::from_secs(4));
    assert!(app.outbox().iter().all(|e| e["attempts"] == 1));
    assert_eq!(app.expect_metric("radiant_outbox_failed_total"), 2.0);

    // The operator fixes the PACS side, then queues the entries again.
    pacs.terminate(Duration::from_secs(15));
    let config = std::fs::read_to_string(&pacs.config_path).unwrap();
    std::fs::write(
        &pacs.config_path,
        config.replace("SOMEONE_ELSE", &app.ae_title),
    )
    .unwrap();
    pacs.launch();
    let out = app.cli(&["outbox", "retry"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            let entries = app.outbox();
            !entries.is_empty() && entries.iter().all(|e| e["state"] == "sent")
        }),
        "{:?}",
        app.outbox()
    );
    assert_eq!(pacs.studies()[0]["instances"], 2);
}
