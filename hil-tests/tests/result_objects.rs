//! Results every PACS can show: each destination gets the objects it takes (`objects`: SEG,
//! SR, SC) and, with `negative_studies = false`, nothing of a negative result. The Secondary
//! Capture with the outlines burned in is stored by Orthanc (the PACS) and by DCMTK storescp
//! (a plain viewer's archive), passes dciodvfy, and references every source slice.

use hil_tests::appliance::{set, set_destination, Appliance};
use hil_tests::fixtures::lesion_series;
use hil_tests::peers::{self, start_orthanc_at, start_storescp, storescu, PeerProcess};
use hil_tests::{free_port, http_get_bytes, wait_until};
use std::path::PathBuf;
use std::time::Duration;

const SC: &str = "1.2.840.10008.5.1.4.1.1.7.4";

/// A destination on loopback taking `objects`.
fn destination(name: &str, ae: &str, port: u16, objects: &[&str], negative: bool) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("name".into(), name.into());
    t.insert("ae_title".into(), ae.into());
    t.insert("host".into(), "127.0.0.1".into());
    t.insert("port".into(), i64::from(port).into());
    t.insert(
        "objects".into(),
        toml::Value::Array(objects.iter().map(|o| (*o).into()).collect()),
    );
    t.insert("negative_studies".into(), negative.into());
    toml::Value::Table(t)
}

/// Every file DCMTK storescp wrote, as (SOP Class UID, path).
fn received(scp: &PeerProcess) -> Vec<(String, PathBuf)> {
    let dir = scp.dir.path().join("storage");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let object = dicom_object::open_file(&path).unwrap();
        out.push((
            object.meta().media_storage_sop_class_uid().to_string(),
            path,
        ));
    }
    out
}

fn send_lesion_study(app: &Appliance) -> String {
    let (files, study_uid) = lesion_series();
    let out = storescu("STORESCU", &app.ae_title, app.port, &[], &files);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    study_uid
}

#[test]
fn each_destination_gets_the_objects_it_takes_and_the_outline_sc_validates_in_orthanc_and_storescp()
{
    let (orthanc_port, orthanc_http) = (free_port(), free_port());
    let viewer = start_storescp();
    let viewer_port = viewer.port;
    let app = Appliance::start_with_model(&|c| {
        set_destination(c, "pacs", "ORTHANC", orthanc_port);
        c.insert(
            "destinations".into(),
            toml::Value::Array(vec![
                destination("pacs", "ORTHANC", orthanc_port, &["SEG", "SR", "SC"], true),
                destination("viewer", "STORESCP", viewer_port, &["SC"], true),
            ]),
        );
        set(c, "dicom", "study_quiet_seconds", 2i64);
    });
    let orthanc = start_orthanc_at(&app.ae_title, app.port, orthanc_port, orthanc_http);
    let study_uid = send_lesion_study(&app);

    let delivered = wait_until(Duration::from_secs(180), || {
        let e = app.outbox();
        e.len() == 4 && e.iter().all(|e| e["state"] == "sent")
    });
    assert!(delivered, "{:?}\n{}", app.outbox(), app.log());
    let mut kinds: Vec<(String, String)> = app
        .outbox()
        .iter()
        .map(|e| {
            (
                e["destination"].as_str().unwrap().to_string(),
                e["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("pacs".into(), "SC".into()),
            ("pacs".into(), "SEG".into()),
            ("pacs".into(), "SR".into()),
            ("viewer".into(), "SC".into())
        ]
    );

    // The viewer's archive got the SC only, and it validates and names its sources.
    let files = received(&viewer);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].0, SC);
    let bytes = std::fs::read(&files[0].1).unwrap();
    test_support::dciodvfy::assert_valid_bytes(&bytes, "SC stored by storescp");
    let sc = dicom_object::open_file(&files[0].1).unwrap();
    let text = |tag| {
        sc.element(tag)
            .unwrap()
            .to_str()
            .unwrap()
            .trim()
            .to_string()
    };
    use dicom_dictionary_std::tags;
    assert_eq!(text(tags::STUDY_INSTANCE_UID), study_uid);
    assert_eq!(text(tags::BURNED_IN_ANNOTATION), "YES");
    assert_eq!(text(tags::NUMBER_OF_FRAMES), "108");
    let sources = sc
        .element(tags::SOURCE_IMAGE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()
        .len();
    assert_eq!(sources, 108, "every source slice is referenced");

    // Orthanc holds the three results under the study, and its SC validates too.
    let series = peers::orthanc_series(&orthanc);
    let mut modalities: Vec<_> = series.iter().map(|(_, m, _)| m.clone()).collect();
    modalities.sort();
    assert_eq!(modalities, ["OT", "SEG", "SR"], "{series:?}");
    let (_, _, instances) = series.iter().find(|(_, m, _)| m == "OT").unwrap();
    let (status, stored) = http_get_bytes(
        orthanc.http_port,
        &format!("/instances/{}/file", instances[0]),
    )
    .unwrap();
    assert_eq!(status, 200);
    test_support::dciodvfy::assert_valid_bytes(&stored, "SC stored by Orthanc");
    let job = &app.jobs(&study_uid)[0];
    assert_eq!(job["result"]["negative"], false, "{job}");
}

#[test]
fn a_destination_that_wants_no_negative_studies_gets_nothing_of_a_negative_result() {
    let everything = start_storescp();
    let positives_only = start_storescp();
    let (a, b) = (everything.port, positives_only.port);
    let app = Appliance::start_with_model(&|c| {
        c.insert(
            "destinations".into(),
            toml::Value::Array(vec![
                destination("archive", "STORESCP", a, &["SEG", "SR"], true),
                destination("worklist", "STORESCP", b, &["SEG", "SR", "SC"], false),
            ]),
        );
        // No probability reaches 1.0: the finding is absent, the result negative.
        set(c, "results", "finding_threshold", 1.0);
        set(c, "dicom", "study_quiet_seconds", 2i64);
    });
    let study_uid = send_lesion_study(&app);
    let done = wait_until(Duration::from_secs(180), || {
        let e = app.outbox();
        e.len() == 2 && e.iter().all(|e| e["state"] == "sent")
    });
    assert!(done, "{:?}\n{}", app.outbox(), app.log());
    let job = &app.jobs(&study_uid)[0];
    assert_eq!(job["result"]["negative"], true, "{job}");
    assert!(app.outbox().iter().all(|e| e["destination"] == "archive"));
    assert_eq!(received(&everything).len(), 2);
    // Give the sender a few more polls: nothing may go to the other destination.
    std::thread::sleep(Duration::from_secs(2));
    assert!(received(&positives_only).is_empty());
    // The one destination that takes the SC wants no negative result: it was never written.
    let objects = job["result"]["objects"].as_array().unwrap();
    assert!(objects.iter().all(|o| o["kind"] != "SC"), "{objects:?}");
}
