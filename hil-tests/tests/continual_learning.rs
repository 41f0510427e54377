//! Continual learning on the appliance, end to end: studies of a simulated site (lesions
//! fainter than the training data's) come in over DICOM, the radiologist's SEGs come back by
//! DCMTK `storescu`, the learner fine-tunes the head once enough cases arrived, the validation
//! gate accepts it, the next study runs on it, and a rollback returns to the global head and
//! survives a restart. A poisoned label is refused by the gate, and a fine-tune started with
//! `appliance learn now` yields to a study that arrives while it runs.

use hil_tests::appliance::{set, Appliance};
use hil_tests::peers::storescu;
use hil_tests::site::{
    heads, infer, job_done, lesion_ml, radiologist_seg, seg_of, send_label, site_study, truth_ml,
};
use hil_tests::{repo_root, signal, wait_until};
use std::process::Command;
use std::time::{Duration, Instant};

const MODEL: &str = "head-ct-ich";

#[test]
fn a_corrected_seg_from_dcmtk_leads_to_a_validated_head_the_next_study_uses_and_rollback_survives_a_restart(
) {
    let mut app = Appliance::start_with_model(&|c| {
        set(c, "learning", "min_new_cases", 1);
        set(c, "learning", "holdout_every", 2);
        set(c, "learning", "min_holdout_cases", 1);
        set(c, "learning", "interval_hours", 0);
    });
    let site = tempfile::tempdir().unwrap();
    let (a_files, a_study) = site_study(site.path(), "A", [0.0, -10.0, 6.0]);
    let (b_files, b_study) = site_study(site.path(), "B", [6.0, 8.0, -6.0]);
    let a = infer(&app, &a_files, &a_study);
    let b = infer(&app, &b_files, &b_study);
    assert_eq!(a["result"]["head"], "global");

    // The radiologist corrects both; the first case is held out, the second trains. The
    // second comes from a tool that paints the lesion over the brain (overlapping segments):
    // the lesion's priority takes the shared voxels.
    let a_seg = site.path().join("A-radiologist.dcm");
    let b_seg = site.path().join("B-radiologist.dcm");
    assert!(radiologist_seg(site.path(), "A", &seg_of(&app, &a), &a_seg, None) > 0);
    let b_lesion = radiologist_seg(site.path(), "B", &seg_of(&app, &b), &b_seg, Some("overlap"));
    assert!(b_lesion > 0);
    send_label(&app, &a_seg, 0);
    // Nothing to learn from yet: the only case is held out.
    assert_eq!(heads(&app).len(), 1);
    let b_case = send_label(&app, &b_seg, 1);
    assert_eq!(b_case["label_voxels"]["2"], b_lesion, "{b_case}");

    // One new training case is due (min_new_cases = 1): features, fine-tune, gate.
    assert!(
        wait_until(Duration::from_secs(180), || heads(&app).len() > 1),
        "{}",
        app.log()
    );
    let all = heads(&app);
    let (global, tuned) = (&all[0], &all[1]);
    eprintln!("gate: {}", tuned["metrics"]["gate"]);
    eprintln!("fine-tune: {}", tuned["metrics"]["fine_tune"]);
    assert_eq!(global["state"], "global");
    assert_eq!(tuned["state"], "accepted", "{tuned}");
    // The gate's paired bootstrap, over the one held-out case this test allows.
    let bootstrap = &tuned["metrics"]["gate"]["bootstrap"];
    assert_eq!(bootstrap["cases"], 1, "{bootstrap}");
    assert_eq!(bootstrap["confidence"], 0.95, "{bootstrap}");
    assert!(
        bootstrap["mean_lower"].as_f64().unwrap() > 0.0,
        "{bootstrap}"
    );
    assert_eq!(tuned["champion"], true);
    assert_eq!(global["champion"], false);
    assert_eq!(tuned["parent"], serde_json::Value::Null);
    assert_eq!(tuned["global_version"], "0.1.0");
    assert_eq!(tuned["trigger"], "1 new cases");
    assert_eq!(tuned["trained_on"].as_array().unwrap().len(), 1);
    assert_eq!(tuned["trained_on"][0]["case"], 2);
    assert_eq!(tuned["held_out"][0]["case"], 1);
    assert_eq!(
        tuned["trained_on"][0]["labels_sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    let gate = &tuned["metrics"]["gate"];
    assert!(gate["local_candidate"].as_f64() > gate["local_champion"].as_f64());
    assert!(app.log().contains("fine-tuned head accepted"));
    // Counted just after the head's row commits.
    assert!(wait_until(Duration::from_secs(10), || app
        .metric("radiant_learning_heads_accepted_total")
        == Some(1.0)));
    // The run is counted once its record commits, just after the head's.
    assert!(wait_until(Duration::from_secs(10), || app
        .metric("radiant_learning_runs_total")
        == Some(1.0)));
    let head_id = tuned["id"].as_i64().unwrap();

    // The next study runs on the new head, and finds more of its faint lesion.
    let (c_files, c_study) = site_study(site.path(), "C", [-4.0, 0.0, 12.0]);
    let c = infer(&app, &c_files, &c_study);
    assert_eq!(c["result"]["head"], head_id.to_string());
    assert_eq!(
        c["result"]["model_version"],
        format!("0.1.0+head.{head_id}")
    );
    // The SEG and the SR that go to the PACS name the head too.
    for object in c["result"]["objects"].as_array().unwrap() {
        let bytes = std::fs::read(app.data_dir.join(object["path"].as_str().unwrap())).unwrap();
        let version = format!("0.1.0+head.{head_id}");
        assert!(
            bytes
                .windows(version.len())
                .any(|w| w == version.as_bytes()),
            "{object}"
        );
    }
    let out = Command::new(hil_tests::appliance::binary())
        .args(["infer", site.path().join("C").to_str().unwrap(), "--model"])
        .arg(repo_root().join("models/reference/head-ct"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let global_c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let global_ml = global_c["labels"][1]["ml"].as_f64().unwrap();
    let truth = truth_ml(site.path(), "C");
    eprintln!(
        "study C lesion: truth {truth:.2} ml, global head {global_ml:.2} ml, head {head_id} {:.2} ml",
        lesion_ml(&c)
    );
    assert!(
        (lesion_ml(&c) - truth).abs() < (global_ml - truth).abs(),
        "the fine-tuned head is no closer to the truth"
    );

    // Rollback: instant (the next study), recorded, and it survives a restart.
    let out = app.cli(&["heads", "rollback", MODEL]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("champion head global"));
    app.terminate(Duration::from_secs(30));
    app.launch();
    let after = heads(&app);
    assert_eq!(after[0]["champion"], true);
    assert_eq!(after[1]["champion"], false);
    assert!(after[1]["rolled_back_at_ms"].is_i64());
    let (d_files, d_study) = site_study(site.path(), "D", [2.0, -6.0, -10.0]);
    let d = infer(&app, &d_files, &d_study);
    assert_eq!(d["result"]["head"], "global");
    assert_eq!(d["result"]["model_version"], "0.1.0");
    // Nothing older than the global head to go back to; and forward again by id.
    let out = app.cli(&["heads", "rollback", MODEL]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("global head already"));
    let out = app.cli(&["heads", "rollback", MODEL, "--to", &head_id.to_string()]);
    assert!(out.status.success());
    assert_eq!(heads(&app)[1]["champion"], true);
}

#[test]
fn learn_now_shows_progress_yields_to_a_new_study_and_the_gate_refuses_a_poisoned_label() {
    // No automatic trigger; a long fine-tune, so that a study arrives while it runs.
    let app = Appliance::start_with_model(&|c| {
        set(c, "learning", "min_new_cases", 100);
        set(c, "learning", "holdout_every", 2);
        set(c, "learning", "min_holdout_cases", 1);
        set(c, "learning", "interval_hours", 0);
        set(c, "learning", "epochs", 60);
        set(c, "learning", "pixels_per_class", 100_000);
    });
    let site = tempfile::tempdir().unwrap();
    let (a_files, a_study) = site_study(site.path(), "A", [0.0, -10.0, 6.0]);
    let (b_files, b_study) = site_study(site.path(), "B", [6.0, 8.0, -6.0]);
    let a = infer(&app, &a_files, &a_study);
    let b = infer(&app, &b_files, &b_study);
    let a_seg = site.path().join("A-radiologist.dcm");
    let b_seg = site.path().join("B-poisoned.dcm");
    radiologist_seg(site.path(), "A", &seg_of(&app, &a), &a_seg, None);
    // A broken tool that mixed up its label table: each segment has the other's mask.
    radiologist_seg(site.path(), "B", &seg_of(&app, &b), &b_seg, Some("swap"));
    send_label(&app, &a_seg, 0);
    send_label(&app, &b_seg, 1);

    // Ready before the fine-tune starts, so that it arrives while the fine-tune runs.
    let (c_files, c_study) = site_study(site.path(), "C", [-4.0, 0.0, 12.0]);
    let mut learn = Command::new(hil_tests::appliance::binary())
        .args(["learn", "now", "--json", "--config"])
        .arg(&app.config_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once it trains, a study arrives.
    let stderr_path = site.path().join("learn.stderr");
    let mut stderr = learn.stderr.take().unwrap();
    let copier = std::thread::spawn(move || {
        let mut file = std::fs::File::create(&stderr_path).unwrap();
        std::io::copy(&mut stderr, &mut file).unwrap();
        stderr_path
    });
    let progress = site.path().join("learn.stderr");
    assert!(
        wait_until(Duration::from_secs(120), || std::fs::read_to_string(
            &progress
        )
        .is_ok_and(|t| t.contains("epochs, loss"))),
        "{}",
        std::fs::read_to_string(&progress).unwrap_or_default()
    );
    // Hold the fine-tune still while study C arrives and its job is queued: however fast the
    // 60 epochs go on this machine, the fine-tune is then certainly running when inference
    // needs the machine (CI once saw all 60 done before C's quiet period ended).
    signal(learn.id(), libc::SIGSTOP);
    let sent = Instant::now();
    let out = storescu("STORESCU", &app.ae_title, app.port, &[], &c_files);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(120), || !app.jobs(&c_study).is_empty()),
        "{}",
        app.log()
    );
    signal(learn.id(), libc::SIGCONT);
    let c = job_done(&app, &c_study);
    let c_seconds = sent.elapsed().as_secs_f64();
    let status = learn.wait().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut learn.stdout.take().unwrap(), &mut stdout).unwrap();
    let stderr_text = std::fs::read_to_string(copier.join().unwrap()).unwrap();
    assert!(status.success(), "{stdout}\n{stderr_text}");
    // Progress, then the yield, then a complete run. (The daemon's learner may have stored the
    // cases' features already, while it was idle; then there is no features bar.)
    assert!(stderr_text.contains("fine-tune ["), "{stderr_text}");
    assert!(
        stderr_text.contains("yielded to inference"),
        "{stderr_text}"
    );
    assert!(stderr_text.contains("60/60 epochs"), "{stderr_text}");
    let timing = |j: &serde_json::Value, key: &str| j["result"]["timings"][key].as_f64().unwrap();
    eprintln!(
        "inference while idle (study A): decode {:.0} ms, backbone+head {:.0} ms; during a \
         fine-tune (study C): decode {:.0} ms, backbone+head {:.0} ms; C from storescu to done {c_seconds:.1} s",
        timing(&a, "decode_ms"),
        timing(&a, "inference_ms"),
        timing(&c, "decode_ms"),
        timing(&c, "inference_ms"),
    );

    // The poisoned case made a head that is worse on the held-out case and on the reference
    // set: refused, with why.
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("learn now: {report}");
    assert_eq!(report["outcome"], "refused", "{report}");
    let reasons = report["reasons"].to_string();
    assert!(reasons.contains("does not beat the champion"), "{reasons}");
    assert!(reasons.contains("reference Dice of label"), "{reasons}");
    let all = heads(&app);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["champion"], true);
    assert_eq!(all[1]["state"], "refused");
    // The study that arrived during the fine-tune ran on the global head.
    assert_eq!(c["result"]["head"], "global");
}

#[test]
fn without_a_reference_validation_set_no_head_can_pass_and_the_run_says_why() {
    // The reference package less its validation set: same files, no [validation] section.
    let package = tempfile::tempdir().unwrap();
    let source = repo_root().join("models/reference/head-ct");
    for name in ["backbone.onnx", "head.safetensors", "card.md"] {
        std::fs::copy(source.join(name), package.path().join(name)).unwrap();
    }
    let manifest = std::fs::read_to_string(source.join("manifest.toml")).unwrap();
    let mut table: toml::Table = manifest.parse().unwrap();
    assert!(table.remove("validation").is_some());
    std::fs::write(
        package.path().join("manifest.toml"),
        toml::to_string(&table).unwrap(),
    )
    .unwrap();
    let app = Appliance::start_with_package(package.path(), &|c| {
        set(c, "learning", "min_new_cases", 100);
        set(c, "learning", "holdout_every", 2);
        set(c, "learning", "min_holdout_cases", 1);
    });
    let site = tempfile::tempdir().unwrap();
    for (n, (tag, offset)) in [("A", [0.0, -10.0, 6.0]), ("B", [6.0, 8.0, -6.0])]
        .into_iter()
        .enumerate()
    {
        let (files, study) = site_study(site.path(), tag, offset);
        let job = infer(&app, &files, &study);
        let seg = site.path().join(format!("{tag}.dcm"));
        radiologist_seg(site.path(), tag, &seg_of(&app, &job), &seg, None);
        send_label(&app, &seg, n);
    }
    let out = app.cli(&["learn", "now"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.starts_with("failed"), "{stdout}");
    assert!(
        stderr.contains("ships no reference validation set"),
        "{stderr}"
    );
    // Nothing was promoted; the daemon runs on and still answers studies.
    assert_eq!(heads(&app).len(), 1);
    assert_eq!(heads(&app)[0]["champion"], true);
    let (files, study) = site_study(site.path(), "C", [-4.0, 0.0, 12.0]);
    assert_eq!(infer(&app, &files, &study)["result"]["head"], "global");
}

/// A case keeps a bounded sample of its pixels, never its dense features; and with
/// `keep_pixel_data_of_cases` off, retention purges a case's study once that sample is stored.
/// The next fine-tune cannot score the held-out case whose series is gone: it leaves it out of
/// the gate with the reason, and the gate, left without evidence, promotes nothing.
#[test]
fn a_case_keeps_a_bounded_sample_and_a_purged_held_out_series_is_left_out_of_the_gate() {
    let app = Appliance::start_with_model(&|c| {
        set(c, "learning", "min_new_cases", 100);
        set(c, "learning", "holdout_every", 2);
        set(c, "learning", "min_holdout_cases", 1);
        set(c, "learning", "pixels_per_class", 2048);
        set(c, "retention", "keep_pixel_data_of_cases", false);
        set(c, "retention", "interval_seconds", 3600i64);
        set(c, "retention", "grace_seconds", 0i64);
    });
    // check-config warns about both settings, and still accepts them.
    let out = app.cli(&["check-config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("keep_pixel_data_of_cases = false: model head-ct-ich scores"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pixels_per_class = 2048, but a case of model head-ct-ich keeps 1024"),
        "{stderr}"
    );
    let site = tempfile::tempdir().unwrap();
    for (n, (tag, offset)) in [("A", [0.0, -10.0, 6.0]), ("B", [6.0, 8.0, -6.0])]
        .into_iter()
        .enumerate()
    {
        let (files, study) = site_study(site.path(), tag, offset);
        let job = infer(&app, &files, &study);
        let seg = site.path().join(format!("{tag}.dcm"));
        assert!(radiologist_seg(site.path(), tag, &seg_of(&app, &job), &seg, None) > 0);
        send_label(&app, &seg, n);
    }
    // The learner stores each case's sample while idle: at most samples_per_class (1024)
    // pixels of each of 3 classes, 16 features of 4 bytes each, where the 108-slice study's
    // features were 28 MB.
    let sample = |id: i64| app.data_dir.join(format!("cases/{id}/sample.f32"));
    // The labels file is written after the features: wait for it, not only the first.
    let sample_labels = |id: i64| app.data_dir.join(format!("cases/{id}/sample_labels.u8"));
    assert!(
        wait_until(Duration::from_secs(60), || [1, 2].iter().all(|&id| sample(
            id
        )
        .is_file()
            && sample_labels(id).is_file())),
        "{}",
        app.log()
    );
    for id in [1, 2] {
        let bytes = std::fs::metadata(sample(id)).unwrap().len();
        let labels = std::fs::metadata(app.data_dir.join(format!("cases/{id}/sample_labels.u8")))
            .unwrap()
            .len();
        assert!(
            labels > 1024 && labels <= 3 * 1024,
            "case {id}: {labels} samples"
        );
        assert_eq!(bytes, labels * 16 * 4, "case {id}");
        assert!(!app
            .data_dir
            .join(format!("cases/{id}/features.f32"))
            .exists());
    }
    // Retention takes the studies once their cases' learning data are stored (their rows
    // commit just after the files).
    assert!(
        wait_until(Duration::from_secs(30), || {
            let out = app.cli(&["studies", "purge", "--all", "--json"]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            app.studies().is_empty()
        }),
        "{:?}",
        app.studies()
    );

    let out = app.cli(&["learn", "now"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("held-out cases left out of the gate"),
        "{said}"
    );
    let all = heads(&app);
    assert_eq!(all.len(), 2, "{said}");
    let candidate = &all[1];
    assert_eq!(candidate["state"], "refused", "{candidate}");
    assert_eq!(
        candidate["metrics"]["held_out_without_series"],
        serde_json::json!([1]),
        "{candidate}"
    );
    assert!(
        candidate["reasons"].as_array().unwrap().iter().any(|r| r
            .as_str()
            .unwrap()
            .contains("held-out cases [1] were left out")),
        "{candidate}"
    );
    assert_eq!(all[0]["champion"], true);
}
