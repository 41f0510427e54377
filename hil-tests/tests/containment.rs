//! Hostile studies that ingest correctly acknowledges must not break the appliance later: the
//! job of such a study fails with its reason, the daemon stays up and ready, and the next good
//! study gets its result. The log of each run, error paths included, is searched for every
//! identifier of the studies sent (UIDs, patient name and ID): none may appear in clear.

use hil_tests::appliance::{set, Appliance};
use hil_tests::fixtures::{lesion_series, CtSeries};
use hil_tests::peers::storescu;
use hil_tests::wait_until;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every identifier of the CT series and of the lesion series: UIDs, patient name and ID.
fn identifiers() -> Vec<String> {
    let mut out = vec![
        "Anonymous^Cranium".to_string(),
        "RE-CT-0001".into(),
        "RE-CT-0002".into(),
    ];
    for dir in [
        test_support::fixtures::ct_series_dir(),
        test_support::fixtures::lesion_series_dir(),
    ] {
        let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
        let m: serde_json::Value = serde_json::from_str(&text).unwrap();
        for key in ["study_instance_uid", "series_instance_uid"] {
            out.push(m[key].as_str().unwrap().to_string());
        }
        for slice in m["slices"].as_array().unwrap() {
            out.push(slice["sop_instance_uid"].as_str().unwrap().to_string());
        }
    }
    out
}

/// The daemon's log, error paths included, names no identifier in clear.
fn assert_no_identifier_in(log: &str) {
    let found: Vec<String> = identifiers()
        .into_iter()
        .filter(|id| log.contains(id.as_str()))
        .collect();
    assert!(found.is_empty(), "identifiers in the log: {found:?}\n{log}");
}

/// The 108-slice CT, RLE-compressed by pydicom, with the last RLE segment of one slice cut
/// short: the DICOM dependency's RLE decoder indexes out of range on it.
fn rle_series_with_a_short_segment(dir: &Path) -> Vec<PathBuf> {
    let script = r#"
import sys, pathlib, pydicom
from pydicom.uid import RLELossless
from pydicom.encaps import generate_fragments, encapsulate
out = pathlib.Path(sys.argv[1])
for i, source in enumerate(sys.argv[2:]):
    ds = pydicom.dcmread(source)
    ds.compress(RLELossless)
    if i == 50:
        frame = list(generate_fragments(ds.PixelData))[-1]
        segments = int.from_bytes(frame[0:4], "little")
        last = int.from_bytes(frame[4 * segments:4 * segments + 4], "little")
        short = frame[:last + 10]
        ds.PixelData = encapsulate([short + b"\0" * (len(short) % 2)])
    ds.save_as(out / f"slice_{i:03}.dcm", enforce_file_format=True)
"#;
    series_by_pydicom(dir, script)
}

/// Send `hostile` (proposing with `storescu_flags`) to a daemon with the model: its job fails
/// with an error containing `reason`, the daemon stays ready, a good study afterwards gets its
/// result, and the log names no identifier of either.
fn a_hostile_study_fails_alone(
    make: fn(&Path) -> Vec<PathBuf>,
    storescu_flags: &[&str],
    reason: &str,
) {
    let app = Appliance::start_with_model(&|_| {});
    let dir = tempfile::tempdir().unwrap();
    let hostile = make(dir.path());
    let out = storescu(
        "STORESCU",
        &app.ae_title,
        app.port,
        storescu_flags,
        &hostile,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let study = CtSeries::load().study_instance_uid;
    let failed = wait_until(Duration::from_secs(120), || {
        app.jobs(&study).iter().any(|j| j["state"] == "failed")
    });
    assert!(failed, "jobs: {:?}\nlog:\n{}", app.jobs(&study), app.log());
    let error = app.jobs(&study)[0]["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(error.contains(reason), "{error}");
    assert_eq!(app.http("/health/ready").0, 200, "{}", app.log());
    // The worker is still there: a good study afterwards gets its result.
    let (files, good) = lesion_series();
    let out = storescu("STORESCU", &app.ae_title, app.port, &[], &files);
    assert!(out.status.success());
    let done = wait_until(Duration::from_secs(120), || {
        app.jobs(&good).iter().any(|j| j["state"] == "done")
    });
    assert!(done, "jobs: {:?}\nlog:\n{}", app.jobs(&good), app.log());
    assert_no_identifier_in(&app.log());
}

#[test]
fn a_study_whose_decoder_panics_fails_its_job_and_the_next_study_still_gets_a_result() {
    a_hostile_study_fails_alone(rle_series_with_a_short_segment, &["-xr"], "panicked");
}

#[test]
fn a_job_that_took_the_appliance_down_max_attempts_times_fails_with_the_count_and_is_not_run_again()
{
    let mut app = Appliance::start_with_model(&|c| set(c, "inference", "max_attempts", 1));
    let (files, study) = lesion_series();
    let out = storescu("STORESCU", &app.ae_title, app.port, &[], &files);
    assert!(out.status.success());
    // SIGKILL while the job runs: for the appliance, a job that took the process down.
    let running = wait_until(Duration::from_secs(60), || {
        app.jobs(&study).iter().any(|j| j["state"] == "running")
    });
    assert!(running, "jobs: {:?}\nlog:\n{}", app.jobs(&study), app.log());
    app.kill9();
    assert_eq!(
        app.jobs(&study)[0]["state"],
        "running",
        "the job finished before the kill; the kill must land while it runs"
    );
    app.launch();
    let failed = wait_until(Duration::from_secs(60), || {
        app.jobs(&study).iter().any(|j| j["state"] == "failed")
    });
    assert!(failed, "jobs: {:?}\nlog:\n{}", app.jobs(&study), app.log());
    let error = app.jobs(&study)[0]["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(error.starts_with("crashed 1 times"), "{error}");
    assert_eq!(app.http("/health/ready").0, 200, "{}", app.log());
    // Another study still gets its result, and the failed job stays failed.
    let other = CtSeries::load();
    let out = storescu("STORESCU", &app.ae_title, app.port, &[], &other.paths());
    assert!(out.status.success());
    let done = wait_until(Duration::from_secs(120), || {
        app.jobs(&other.study_instance_uid)
            .iter()
            .any(|j| j["state"] == "done")
    });
    assert!(done, "log:\n{}", app.log());
    assert_eq!(app.jobs(&study)[0]["state"], "failed");
    // SIGTERM ends it cleanly, and it comes back without running the job again.
    assert_eq!(
        app.terminate(Duration::from_secs(30)).map(|s| s.success()),
        Some(true),
        "{}",
        app.log()
    );
    app.launch();
    assert!(wait_until(Duration::from_secs(30), || app
        .http("/health/ready")
        .0
        == 200));
    assert_eq!(app.jobs(&study)[0]["state"], "failed");
    assert_no_identifier_in(&app.log());
}

/// The 108-slice CT compressed to JPEG-LS by pydicom, one slice's frame header (SOF55) made to
/// declare a 65535 x 65535 image: a decoder that trusts it allocates 8 GiB.
fn jpeg_ls_series_with_a_lying_frame_header(dir: &Path) -> Vec<PathBuf> {
    let script = r#"
import sys, pathlib, pydicom
from pydicom.uid import JPEGLSLossless
from pydicom.encaps import generate_frames, encapsulate
out = pathlib.Path(sys.argv[1])
for i, source in enumerate(sys.argv[2:]):
    ds = pydicom.dcmread(source)
    ds.compress(JPEGLSLossless)
    if i == 50:
        frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
        sof = frame.index(b"\xff\xf7")
        frame[sof + 5:sof + 9] = b"\xff\xff\xff\xff"
        ds.PixelData = encapsulate([bytes(frame)])
    ds.save_as(out / f"slice_{i:03}.dcm", enforce_file_format=True)
"#;
    series_by_pydicom(dir, script)
}

/// Run `script` with the output folder and the 108 CT slices as arguments; the files it wrote.
fn series_by_pydicom(dir: &Path, script: &str) -> Vec<PathBuf> {
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .args(CtSeries::load().paths())
        .status()
        .expect("run python3");
    assert!(status.success(), "pydicom could not write the series");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn a_codestream_that_declares_a_larger_image_than_its_header_is_refused_before_decoding() {
    a_hostile_study_fails_alone(
        jpeg_ls_series_with_a_lying_frame_header,
        &["-xt"],
        "JPEG-LS codestream declares 65535x65535 pixels",
    );
}
