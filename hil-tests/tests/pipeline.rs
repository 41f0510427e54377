//! Completed studies go through the installed model as durable jobs: DCMTK sends a series, the
//! study completes, and a result is stored once, even across a kill -9 mid-job.
//!
//! Whether a job ran again is read from `results.sqlite` itself: the results table has one row
//! per job and the worker writes it with `INSERT OR REPLACE`, so a re-run leaves one row and
//! one result that looks the same; only the job's `updated_at_ms`, the result's
//! `created_at_ms` and the worker's "inference done" log lines tell.

use hil_tests::appliance::Appliance;
use hil_tests::peers::storescu;
use hil_tests::{repo_root, wait_until};
use rusqlite::{Connection, OpenFlags};
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

/// A job as `results.sqlite` holds it, with the time its result row was written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JobRow {
    id: i64,
    state: String,
    updated_at_ms: i64,
    result_created_at_ms: Option<i64>,
}

/// The study's jobs, read (read-only) from the appliance's `results.sqlite`; empty before the
/// first job exists.
fn job_rows(app: &Appliance, study: &str) -> Vec<JobRow> {
    let path = app.data_dir.join("results.sqlite");
    if !path.exists() {
        return Vec::new();
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut stmt = match conn.prepare(
        "SELECT j.id, j.state, j.updated_at_ms, r.created_at_ms
         FROM jobs j LEFT JOIN results r ON r.job_id = j.id
         WHERE j.study_uid = ?1 ORDER BY j.id",
    ) {
        Ok(stmt) => stmt,
        // The daemon creates the file before its tables.
        Err(e) if e.to_string().contains("no such table") => return Vec::new(),
        Err(e) => panic!("query {}: {e}", path.display()),
    };
    stmt.query_map([study], |r| {
        Ok(JobRow {
            id: r.get(0)?,
            state: r.get(1)?,
            updated_at_ms: r.get(2)?,
            result_created_at_ms: r.get(3)?,
        })
    })
    .and_then(|rows| rows.collect())
    .unwrap_or_else(|e| panic!("read jobs from {}: {e}", path.display()))
}

/// How many jobs the worker finished, by its log (which every launch appends to).
fn jobs_finished(app: &Appliance) -> usize {
    app.log().matches("inference done").count()
}

/// How many times the inference worker came up, by the log.
fn worker_starts(app: &Appliance) -> usize {
    app.log().matches("inference worker ready").count()
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

    // A restart neither re-runs nor duplicates a finished job: after it, the job row and its
    // result are the very rows written the first time (a re-run rewrites both timestamps, even
    // where INSERT OR REPLACE leaves one result row).
    let before = job_rows(&app, &study);
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].state, "done");
    assert!(before[0].result_created_at_ms.is_some(), "{before:?}");
    assert_eq!(jobs_finished(&app), 1, "{}", app.log());
    let starts = worker_starts(&app);
    app.terminate(Duration::from_secs(15));
    app.launch();
    assert!(
        wait_until(Duration::from_secs(30), || worker_starts(&app) > starts),
        "the inference worker did not come back:\n{}",
        app.log()
    );
    // The worker polls the queue every 200 ms: a job put back in it would be running by now.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        job_rows(&app, &study),
        before,
        "the finished job was touched after the restart:\n{}",
        app.log()
    );
    assert_eq!(jobs_finished(&app), 1, "a job ran again:\n{}", app.log());
    assert_eq!(jobs(&app, &study).len(), 1);
}

#[test]
fn a_job_interrupted_by_kill_9_runs_again_after_restart_and_stores_one_result() {
    let mut app = with_model();
    let study = send_lesion_series(&app);
    // SIGKILL as soon as the job table says the job runs (polled every 25 ms; the job itself
    // decodes 108 slices and runs the backbone on them, which takes seconds).
    let running = wait_until(Duration::from_secs(60), || {
        job_rows(&app, &study)
            .first()
            .is_some_and(|j| j.state == "running")
    });
    assert!(
        running,
        "the job was never seen running: {:?}\n{}",
        job_rows(&app, &study),
        app.log()
    );
    app.kill9();
    // What the database holds now is what it held at the kill: the job must have been
    // interrupted, not finished, or this test proves nothing about a re-run.
    let at_kill = job_rows(&app, &study);
    assert_eq!(at_kill.len(), 1, "{at_kill:?}");
    assert_eq!(
        at_kill[0].state, "running",
        "the job finished before the kill; the kill must land while it runs"
    );
    assert_eq!(at_kill[0].result_created_at_ms, None, "{at_kill:?}");
    assert_eq!(jobs_finished(&app), 0, "{}", app.log());

    app.launch();
    assert!(
        wait_until(Duration::from_secs(120), || {
            job_rows(&app, &study)
                .first()
                .is_some_and(|j| j.state == "done")
        }),
        "{:?}\n{}",
        job_rows(&app, &study),
        app.log()
    );
    assert!(
        app.log()
            .contains("re-running inference jobs interrupted by a stop"),
        "{}",
        app.log()
    );
    let after = job_rows(&app, &study);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].id, at_kill[0].id);
    assert!(
        after[0].updated_at_ms > at_kill[0].updated_at_ms,
        "{after:?}"
    );
    assert_eq!(jobs_finished(&app), 1, "{}", app.log());
    let all = jobs(&app, &study);
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(all[0]["result"]["finding_probability"].as_f64().is_some());
}
