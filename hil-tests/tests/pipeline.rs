//! Completed studies go through the installed model as durable jobs: DCMTK sends a series, the
//! study completes, and a result is stored once, even across a kill -9 mid-job.

use hil_tests::appliance::Appliance;
use hil_tests::peers::storescu;
use hil_tests::{repo_root, wait_until};
use std::time::Duration;

fn with_model() -> Appliance {
    Appliance::start_with_model(&|_| {})
}

fn send_lesion_series(app: &Appliance) -> String {
    let (files, study) = hil_tests::fixtures::lesion_series();
    let out = storescu("STORESCU", &app.ae_title, app.port, &[], &files);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    study
}

fn jobs(app: &Appliance, study: &str) -> Vec<serde_json::Value> {
    app.jobs(study)
}

fn expected_probability() -> f64 {
    let e: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("models/reference/expected.json")).unwrap(),
    )
    .unwrap();
    e["series"]["ct-series-lesion"]["study_lesion_probability"]
        .as_f64()
        .unwrap()
}

#[test]
fn a_study_sent_by_dcmtk_ends_with_one_stored_result_from_the_reference_model() {
    let mut app = with_model();
    let study = send_lesion_series(&app);
    let done = wait_until(Duration::from_secs(60), || {
        jobs(&app, &study)
            .first()
            .is_some_and(|j| j["state"] == "done")
    });
    assert!(done, "no result: {:?}\n{}", jobs(&app, &study), app.log());
    let job = &jobs(&app, &study)[0];
    assert_eq!(job["model_id"], "head-ct-ich");
    assert_eq!(job["result"]["backend"], "tract");
    assert_eq!(job["result"]["slices"], 108);
    let p = job["result"]["finding_probability"].as_f64().unwrap();
    assert!((p - expected_probability()).abs() < 1e-3, "{p}");
    assert!(job["result"]["labels"][1]["ml"].as_f64().unwrap() > 1.0);
    // A restart neither re-runs nor duplicates a finished job.
    app.terminate(Duration::from_secs(15));
    app.launch();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(jobs(&app, &study).len(), 1);
}

#[test]
fn a_job_interrupted_by_kill_9_runs_again_after_restart_and_stores_one_result() {
    let mut app = with_model();
    let study = send_lesion_series(&app);
    assert!(wait_until(Duration::from_secs(30), || {
        jobs(&app, &study)
            .first()
            .is_some_and(|j| j["state"] == "running" || j["state"] == "done")
    }));
    app.kill9();
    app.launch();
    assert!(
        wait_until(Duration::from_secs(60), || {
            jobs(&app, &study)
                .first()
                .is_some_and(|j| j["state"] == "done")
        }),
        "{:?}",
        jobs(&app, &study)
    );
    let all = jobs(&app, &study);
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(all[0]["result"]["finding_probability"].as_f64().is_some());
}
