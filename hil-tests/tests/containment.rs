//! Hostile studies that ingest correctly acknowledges must not break the appliance later: the
//! job of such a study fails with its reason, the daemon stays up and ready, and the next good
//! study gets its result.

use hil_tests::appliance::Appliance;
use hil_tests::fixtures::{lesion_series, CtSeries};
use hil_tests::peers::storescu;
use hil_tests::wait_until;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .args(CtSeries::load().paths())
        .status()
        .expect("run python3");
    assert!(status.success(), "pydicom could not write the RLE series");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn a_study_whose_decoder_panics_fails_its_job_and_the_next_study_still_gets_a_result() {
    let app = Appliance::start_with_model(&|_| {});
    let dir = tempfile::tempdir().unwrap();
    let hostile = rle_series_with_a_short_segment(dir.path());
    let out = storescu("STORESCU", &app.ae_title, app.port, &["-xr"], &hostile);
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
    assert!(error.contains("panicked"), "{error}");
    assert_eq!(app.http("/health/ready").0, 200, "{}", app.log());
    // The worker is still there: a good study afterwards gets its result.
    let (files, good) = lesion_series();
    let out = storescu("STORESCU", &app.ae_title, app.port, &[], &files);
    assert!(out.status.success());
    let done = wait_until(Duration::from_secs(120), || {
        app.jobs(&good).iter().any(|j| j["state"] == "done")
    });
    assert!(done, "jobs: {:?}\nlog:\n{}", app.jobs(&good), app.log());
}
