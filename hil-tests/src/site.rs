//! A simulated site for the continual-learning tests and benchmark: its studies (lesions
//! fainter than the training data's, `peers/site_case.py study`), the radiologist's SEGs
//! (`peers/site_case.py label`), and the traffic between them and the appliance.

use crate::appliance::Appliance;
use crate::peers::{python_peer, storescu};
use crate::wait_until;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A site study: `peers/site_case.py study`. Returns its files and Study Instance UID.
pub fn site_study(dir: &Path, tag: &str, offset_mm: [f64; 3]) -> (Vec<PathBuf>, String) {
    let out_dir = dir.join(tag);
    let mut args = vec![
        "study".to_string(),
        out_dir.display().to_string(),
        tag.to_string(),
    ];
    args.extend(offset_mm.map(|v| v.to_string()));
    let study = python_peer("site_case.py", args);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    (files, study)
}

/// The radiologist's SEG for site study `tag`: `peers/site_case.py label`. Returns the
/// number of lesion voxels it labels.
pub fn radiologist_seg(
    dir: &Path,
    tag: &str,
    ours: &Path,
    out: &Path,
    poison: Option<&str>,
) -> u64 {
    let study = dir.join(tag);
    let mut args = vec![
        OsStr::new("label"),
        ours.as_os_str(),
        study.as_os_str(),
        out.as_os_str(),
    ];
    args.extend(poison.map(OsStr::new));
    python_peer("site_case.py", args)
        .parse()
        .expect("site_case.py label prints a voxel count")
}

/// Send a study with DCMTK and wait for its inference job; returns the job.
pub fn infer(app: &Appliance, files: &[PathBuf], study: &str) -> serde_json::Value {
    let out = storescu("STORESCU", &app.ae_title, app.port, &[], files);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    job_done(app, study)
}

/// Wait until the first job of `study` is done; that job.
pub fn job_done(app: &Appliance, study: &str) -> serde_json::Value {
    assert!(
        wait_until(Duration::from_secs(120), || app
            .jobs(study)
            .first()
            .is_some_and(|j| j["state"] == "done")),
        "{:?}\n{}",
        app.jobs(study),
        app.log()
    );
    app.jobs(study)[0].clone()
}

/// The appliance's SEG file of a done job.
pub fn seg_of(app: &Appliance, job: &serde_json::Value) -> PathBuf {
    app.data_dir
        .join(job["result"]["objects"][0]["path"].as_str().unwrap())
}

/// Send a radiologist's SEG or SR with DCMTK (`-R`: propose only the SOP classes of the file
/// sent; SEG is not in storescu's default set) and wait until it is an accepted case.
pub fn send_label(app: &Appliance, seg: &Path, cases_before: usize) -> serde_json::Value {
    let out = storescu(
        "STORESCU",
        &app.ae_title,
        app.port,
        &["-R"],
        &[seg.to_path_buf()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(60), || app.cases().len() > cases_before),
        "{}",
        app.log()
    );
    let case = app.cases()[cases_before].clone();
    assert_eq!(case["state"], "accepted", "{case}");
    case
}

pub fn heads(app: &Appliance) -> Vec<serde_json::Value> {
    let out = app.cli(&["heads", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn lesion_ml(job: &serde_json::Value) -> f64 {
    job["result"]["labels"][1]["ml"].as_f64().unwrap()
}

pub fn truth_ml(dir: &Path, tag: &str) -> f64 {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(tag).join("manifest.json")).unwrap(),
    )
    .unwrap();
    manifest["lesion"]["label_ml"].as_f64().unwrap()
}
