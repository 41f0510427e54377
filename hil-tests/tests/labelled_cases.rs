//! Labelled cases in: a radiologist's corrected copy of the appliance's SEG, sent back by DCMTK,
//! becomes a segmentation label of the series it references, voxel for voxel; SEGs that do not
//! fit the series they name (rotated, unknown segment, unknown series, not a SEG, the
//! appliance's own SEG come back) are refused with the reason, over DICOM and through
//! `appliance cases import` alike. A verified SR answering the appliance's finding becomes the
//! study's classification label; an unverified one, or our own, is refused.

use hil_tests::appliance::Appliance;
use hil_tests::fixtures::lesion_series;
use hil_tests::peers::{python_peer, storescu};
use hil_tests::site::{job_done, send_label};
use hil_tests::wait_until;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Run `peers/edit_seg.py MODE IN OUT [SUFFIX]`; returns what it printed.
fn edit_seg(mode: &str, input: &Path, output: &Path, suffix: Option<&str>) -> String {
    let mut args = vec![OsStr::new(mode), input.as_os_str(), output.as_os_str()];
    args.extend(suffix.map(OsStr::new));
    python_peer("edit_seg.py", args)
}

/// The appliance after it answered the lesion CT: (appliance, study UID, its SEG file, job).
fn answered() -> (Appliance, String, PathBuf, serde_json::Value) {
    let app = Appliance::start_with_model(&|_| {});
    let (files, study) = lesion_series();
    let out = storescu("STORESCU", &app.ae_title, app.port, &[], &files);
    assert!(out.status.success());
    let job = job_done(&app, &study);
    let seg = app
        .data_dir
        .join(job["result"]["objects"][0]["path"].as_str().unwrap());
    (app, study, seg, job)
}

#[test]
fn a_corrected_seg_sent_by_dcmtk_becomes_the_label_of_the_series_it_references() {
    let (app, study, seg, job) = answered();
    let dir = tempfile::tempdir().unwrap();
    let corrected = dir.path().join("corrected.dcm");
    let removed: u64 = edit_seg("correct", &seg, &corrected, None).parse().unwrap();
    assert!(removed > 0);
    send_label(&app, &corrected, 0);
    let all = app.cases();
    assert_eq!(all.len(), 1, "{all:?}");
    let case = &all[0];
    assert_eq!(case["state"], "accepted", "{case}");
    assert_eq!(case["origin"], "dicom");
    assert_eq!(case["study_uid"], study.as_str());
    assert_eq!(case["series_uid"], job["series_uid"]);
    // The label is the appliance's own result less what the radiologist removed.
    let voxels = |value: &str| case["label_voxels"][value].as_u64().unwrap();
    let ours = |i: usize| job["result"]["labels"][i]["voxels"].as_u64().unwrap();
    assert_eq!(voxels("1"), ours(0));
    assert_eq!(voxels("2"), ours(1) - removed);
    let labels = app.data_dir.join("cases/1/labels.u8");
    assert_eq!(std::fs::metadata(labels).unwrap().len(), 108 * 256 * 256);
    // The returned SEG started no inference job of its own.
    assert_eq!(app.jobs(&study).len(), 1);
}

/// Run `peers/edit_sr.py IN OUT ANSWER [unverified]`.
fn edit_sr(input: &Path, output: &Path, answer: &str, verified: bool) {
    let mut args = vec![input.as_os_str(), output.as_os_str(), OsStr::new(answer)];
    args.extend((!verified).then_some(OsStr::new("unverified")));
    python_peer("edit_sr.py", args);
}

#[test]
fn a_verified_sr_sent_by_dcmtk_becomes_the_studys_classification_label() {
    let (app, study, _, job) = answered();
    let ours = app
        .data_dir
        .join(job["result"]["objects"][1]["path"].as_str().unwrap());
    assert_eq!(job["result"]["objects"][1]["kind"], "SR");
    let dir = tempfile::tempdir().unwrap();
    // The radiologist says: no haemorrhage, and signs the report.
    let answer = dir.path().join("no.dcm");
    edit_sr(&ours, &answer, "no", true);
    let case = &send_label(&app, &answer, 0);
    assert_eq!(case["state"], "accepted", "{case}");
    assert_eq!(case["kind"], "classification");
    assert_eq!(case["finding"], false);
    assert_eq!(case["study_uid"], study.as_str());
    assert_eq!(case["series_uid"], job["series_uid"]);

    // Not signed by anyone: not a label.
    let unsigned = dir.path().join("unsigned.dcm");
    edit_sr(&ours, &unsigned, "yes", false);
    let out = app.cli(&["cases", "import", unsigned.to_str().unwrap()]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("not verified"), "{stdout}");
    // Our own SR come back: not a label either.
    let out = app.cli(&["cases", "import", ours.to_str().unwrap()]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("own result (job 1)"), "{stdout}");
    // The signed "yes" by file import replaces nothing and is a second label.
    let yes = dir.path().join("yes.dcm");
    edit_sr(&ours, &yes, "yes", true);
    let out = app.cli(&["cases", "import", yes.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let all = app.cases();
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(all[3]["finding"], true);
    assert_eq!(all[3]["origin"], "import");
}

#[test]
fn segs_that_do_not_fit_their_series_are_refused_with_the_reason() {
    let (app, _, seg, _) = answered();
    let dir = tempfile::tempdir().unwrap();
    for (mode, reason) in [
        ("rotate", "orientation"),
        ("unknown", "is not a label of model head-ct-ich"),
        ("orphan", "does not hold"),
    ] {
        let edited = dir.path().join(format!("{mode}.dcm"));
        edit_seg(mode, &seg, &edited, None);
        let out = app.cli(&["cases", "import", edited.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{mode}: {stdout}");
        assert!(
            stdout.contains("refused") && stdout.contains(reason),
            "{mode}: {stdout}"
        );
    }
    // Not a SEG at all.
    let (files, _) = lesion_series();
    let out = app.cli(&["cases", "import", files[0].to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("not a usable binary SEG"));
    // Our own SEG, as a PACS that routes everything back would return it: not a label.
    let out = app.cli(&["cases", "import", seg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("own result (job 1)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Each refusal is on record with its reason; nothing was accepted.
    let all = app.cases();
    assert_eq!(all.len(), 5, "{all:?}");
    assert!(all
        .iter()
        .all(|c| c["state"] == "refused" && c["reason"].is_string()));
    // A rotated SEG sent over DICOM is refused the same way (it was acknowledged, and kept).
    let rotated = dir.path().join("rotated-dicom.dcm");
    edit_seg("rotate", &seg, &rotated, Some("9"));
    let out = storescu("STORESCU", &app.ae_title, app.port, &["-R"], &[rotated]);
    assert!(out.status.success());
    assert!(
        wait_until(Duration::from_secs(30), || app.cases().len() == 6),
        "{:?}",
        app.cases()
    );
    let last = &app.cases()[5];
    assert_eq!(last["origin"], "dicom");
    assert_eq!(last["state"], "refused");
    assert!(
        last["reason"].as_str().unwrap().contains("orientation"),
        "{last}"
    );
}
