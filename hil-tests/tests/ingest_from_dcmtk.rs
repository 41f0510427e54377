//! DCMTK as the sender: C-ECHO, every test file in its own transfer syntax, the 108-slice CT
//! series, idempotent re-sends, and study assembly.

use hil_tests::appliance::Appliance;
use hil_tests::fixtures::{self, CtSeries};
use hil_tests::peers::{echoscu, storescu, storescu_proposal, storescu_successes};
use hil_tests::wait_until;
use std::collections::BTreeMap;
use std::time::Duration;

#[test]
fn echoscu_gets_success() {
    let app = Appliance::start(&|_| {});
    let out = echoscu("ECHOSCU", &app.ae_title, app.port);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(app.expect_metric("radiant_echoes_total"), 1.0);
}

/// DCMTK re-encodes some files while sending (drops group lengths, relabels encapsulated pixel
/// data OB), so the reference for "unchanged" is what crossed the wire: the same send to DCMTK
/// `storescp -B`, which writes datasets bit-preserving.
#[test]
fn every_test_file_is_stored_with_the_dataset_bytes_it_was_sent_with() {
    let app = Appliance::start(&|_| {});
    let reference = hil_tests::peers::start_storescp_bit_preserving();
    let files = fixtures::test_files();
    let mut by_syntax: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for f in &files {
        by_syntax
            .entry(f.transfer_syntax_uid.clone())
            .or_default()
            .push(f.clone());
    }
    for (syntax, group) in &by_syntax {
        let paths: Vec<_> = group.iter().map(|f| f.path()).collect();
        for (ae, port) in [
            (app.ae_title.as_str(), app.port),
            ("STORESCP", reference.port),
        ] {
            let out = storescu(
                "STORESCU",
                ae,
                port,
                &["-R", storescu_proposal(syntax)],
                &paths,
            );
            let log = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "storescu to {ae} failed for {syntax}:\n{log}\nappliance log:\n{}",
                app.log()
            );
            assert_eq!(
                storescu_successes(&log).len(),
                group.len(),
                "{syntax}:\n{log}"
            );
        }
    }
    let reference_files = hil_tests::peers::files_below(&reference.storage_dir());

    for f in &files {
        let stored = app
            .stored_path(&f.sop_instance_uid)
            .unwrap_or_else(|| panic!("{} ({}) not in the index", f.file, f.category));
        let on_the_wire = reference_files
            .iter()
            .find(|p| p.to_string_lossy().ends_with(&f.sop_instance_uid))
            .unwrap_or_else(|| panic!("storescp did not store {}", f.file));
        let mut sent = fixtures::dataset_of(on_the_wire);
        let mut received = fixtures::dataset_of(&stored);
        if f.transfer_syntax_uid == "1.2.840.10008.1.2.1.99" {
            // storescp -B re-deflates (its stream ends one padding byte shorter): compare the
            // inflated content; our stored bytes are checked against the source below.
            sent = fixtures::inflate(&sent);
            received = fixtures::inflate(&received);
        }
        assert!(
            sent == received,
            "{} ({}): dataset bytes differ ({} sent, {} stored)",
            f.file,
            f.transfer_syntax_uid,
            sent.len(),
            received.len()
        );
    }
    let categories: std::collections::BTreeSet<_> =
        files.iter().map(|f| f.category.as_str()).collect();
    for needed in [
        "ct",
        "mr",
        "seg",
        "sr",
        "enhanced_ct",
        "enhanced_mr",
        "cr",
        "sc",
    ] {
        assert!(categories.contains(needed), "fixtures lack a {needed} file");
    }
    assert_eq!(
        app.expect_metric("radiant_instances_received_total"),
        files.len() as f64
    );
}

#[test]
fn the_ct_series_arrives_byte_identical_and_completes_as_one_study() {
    let app = Appliance::start(&|_| {});
    let series = CtSeries::load();
    let out = storescu("STORESCU", &app.ae_title, app.port, &[], &series.paths());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(storescu_successes(&log).len(), 108);
    for (i, (slice, path)) in series.slices.iter().zip(series.paths()).enumerate() {
        let stored = app
            .stored_path(&slice.sop_instance_uid)
            .expect("slice indexed");
        if i % 27 == 0 {
            // The Part 10 file we wrote (our file meta group + the dataset) validates.
            test_support::dciodvfy::assert_valid(&stored);
        }
        assert_eq!(
            std::fs::read(&path).unwrap()[slice.dataset_offset..],
            fixtures::dataset_of(&stored)[..]
        );
    }
    let complete = wait_until(Duration::from_secs(10), || {
        app.studies()
            .first()
            .map(|s| s["state"] == "complete")
            .unwrap_or(false)
    });
    assert!(complete, "study never completed: {:?}", app.studies());
    let studies = app.studies();
    assert_eq!(studies.len(), 1);
    let study = &studies[0];
    assert_eq!(study["study_uid"], series.study_instance_uid.as_str());
    assert_eq!(study["instances"], 108);
    assert_eq!(study["series"], 1);
    assert_eq!(study["calling_ae"], "STORESCU");
    assert!(study["received_at"].as_str().unwrap_or("").ends_with('Z'));
    assert!(app.log().contains("study complete"));
}

#[test]
fn a_resent_series_is_stored_once_and_answered_with_success() {
    let app = Appliance::start(&|_| {});
    let series = CtSeries::load();
    let paths = &series.paths()[..10];
    for _ in 0..2 {
        let out = storescu("STORESCU", &app.ae_title, app.port, &[], paths);
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(storescu_successes(&log).len(), 10, "{log}");
    }
    assert_eq!(app.expect_metric("radiant_instances_received_total"), 10.0);
    assert_eq!(app.expect_metric("radiant_instances_duplicate_total"), 10.0);
    assert_eq!(app.expect_metric("radiant_spool_instances"), 10.0);
    let files = hil_tests::peers::files_below(&app.data_dir.join("spool"));
    assert_eq!(files.len(), 10, "{files:?}");
}

#[test]
fn a_study_can_be_completed_on_demand_before_its_quiet_period() {
    let app =
        Appliance::start(&|c| hil_tests::appliance::set_dicom(c, "study_quiet_seconds", 3600i64));
    let series = CtSeries::load();
    let out = storescu(
        "STORESCU",
        &app.ae_title,
        app.port,
        &[],
        &series.paths()[..3],
    );
    assert!(out.status.success());
    assert_eq!(app.studies()[0]["state"], "receiving");
    let done = app.cli(&["studies", "complete", &series.study_instance_uid]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(app.studies()[0]["state"], "complete");
    assert!(wait_until(Duration::from_secs(5), || app
        .log()
        .contains("study complete")));
    let again = app.cli(&["studies", "complete", &series.study_instance_uid]);
    assert!(
        !again.status.success(),
        "completing twice must say nothing was receiving"
    );
}
