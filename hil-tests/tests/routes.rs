//! Several models at once, routed by rules: the head-CT model and deepbet are both installed;
//! `[[routes]]` send CT head series to the one and axial T1 MRIs to the other, by Modality,
//! Body Part Examined and Series Description. Each study gets one SEG and one SR from the model
//! its series went to; a series no route takes is stored, left alone and counted in /metrics;
//! `models list` shows the routes and `check-config` refuses a route to a model that is not
//! installed, naming the route.

use hil_tests::appliance::{use_ort_cpu, Appliance};
use hil_tests::fixtures::lesion_series;
use hil_tests::peers::storescu;
use hil_tests::{repo_root, wait_until};
use std::path::PathBuf;
use std::time::Duration;
use test_support::fixtures::mr_series;

fn route(pairs: &[(&str, &str)]) -> toml::Value {
    toml::Value::Table(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), toml::Value::from(*v)))
            .collect(),
    )
}

fn send(app: &Appliance, files: &[PathBuf]) {
    let out = storescu("STORESCU", &app.ae_title, app.port, &[], files);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn study_uid(file: &PathBuf) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, pydicom; print(pydicom.dcmread(sys.argv[1], stop_before_pixels=True).StudyInstanceUID)",
        ])
        .arg(file)
        .output()
        .expect("python3 with pydicom");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn each_series_goes_to_the_models_its_routes_name_and_an_unrouted_series_is_counted() {
    let mut app = Appliance::start_with_model(&|c| {
        use_ort_cpu(c);
        c.insert(
            "routes".into(),
            toml::Value::Array(vec![
                route(&[
                    ("model", "head-ct-ich"),
                    ("modality", "CT"),
                    ("body_part", "(?i)^head$"),
                ]),
                route(&[
                    ("model", "deepbet"),
                    ("modality", "MR"),
                    ("series_description", "(?i)axial"),
                ]),
            ]),
        );
    });
    // A route to a model that is not installed yet: check-config names it.
    let refused = app.cli(&["check-config"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("routes[1].model") && stderr.contains("deepbet"),
        "{stderr}"
    );
    let out = app.cli(&[
        "models",
        "install",
        &repo_root().join("models/deepbet/package").to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checked = app.cli(&["check-config"]);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    app.restart_with_models();
    let listed = String::from_utf8_lossy(&app.cli(&["models", "list"]).stdout).to_string();
    assert!(
        listed.contains("deepbet") && listed.contains("series_description=(?i)axial"),
        "{listed}"
    );

    let (ct, ct_study) = lesion_series();
    let axial = mr_series("colin27-axial");
    let sagittal = mr_series("colin27-sagittal");
    let (axial_study, sagittal_study) = (study_uid(&axial[0]), study_uid(&sagittal[0]));
    send(&app, &ct);
    send(&app, &axial);
    send(&app, &sagittal);
    // One read of the job list per poll: two reads raced, an empty list
    // passing `all` and a job created in between passing `!is_empty`.
    let done = |study: &str| {
        let jobs = app.jobs(study);
        !jobs.is_empty()
            && jobs
                .iter()
                .all(|j| j["state"] == "done" || j["state"] == "failed")
    };
    assert!(
        wait_until(Duration::from_secs(240), || done(&ct_study)
            && done(&axial_study)
            && app.metric("radiant_series_unrouted_total") == Some(1.0)),
        "ct {:?}\naxial {:?}\nunrouted {:?}\n{}",
        app.jobs(&ct_study),
        app.jobs(&axial_study),
        app.metric("radiant_series_unrouted_total"),
        app.log()
    );
    for (study, model) in [(&ct_study, "head-ct-ich"), (&axial_study, "deepbet")] {
        let jobs = app.jobs(study);
        assert_eq!(jobs.len(), 1, "{study}: {jobs:?}");
        assert_eq!(jobs[0]["model_id"], model);
        assert_eq!(jobs[0]["state"], "done", "{jobs:?}");
        let kinds: Vec<_> = jobs[0]["result"]["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["kind"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kinds, ["SEG", "SR"], "{model}");
    }
    // The sagittal series is stored and nobody ran on it.
    assert!(app.jobs(&sagittal_study).is_empty());
    assert!(app
        .studies()
        .iter()
        .any(|s| s["study_uid"] == sagittal_study.as_str()));
}
