//! Nothing acknowledged is lost: after `kill -9` at any moment, every instance DCMTK logged as
//! Success is present and intact after restart, partial files are gone, and the study resumes.
//! On SIGTERM the daemon lets the association in progress finish before it exits.

use hil_tests::appliance::{set_dicom, Appliance};
use hil_tests::fixtures::{self, CtSeries};
use hil_tests::peers::{files_below, storescu_successes, STORESCU};
use hil_tests::wait_until;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Start `storescu -v` on `files`; call `on_success(n)` after each Success it logs; return the
/// files it logged as Success once it exits.
fn send_watching(
    app: &Appliance,
    files: &[PathBuf],
    mut on_success: impl FnMut(usize),
) -> Vec<PathBuf> {
    let mut child = Command::new(STORESCU)
        .args(["-v", "-aet", "STORESCU", "-aec", &app.ae_title, "127.0.0.1"])
        .arg(app.port.to_string())
        .args(files)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn storescu");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut log = String::new();
    let mut successes = 0;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.starts_with("I: Received Store Response (Success)") {
            successes += 1;
            on_success(successes);
        }
        log.push_str(&line);
        log.push('\n');
    }
    let _ = child.wait();
    storescu_successes(&log)
}

fn assert_all_present_and_intact(app: &Appliance, acknowledged: &[PathBuf], series: &CtSeries) {
    let by_path: HashMap<PathBuf, &fixtures::Slice> = series
        .paths()
        .into_iter()
        .zip(series.slices.iter())
        .collect();
    for path in acknowledged {
        let slice = by_path[path];
        let stored = app.stored_path(&slice.sop_instance_uid).unwrap_or_else(|| {
            panic!(
                "{} was acknowledged but is not in the index",
                path.display()
            )
        });
        let original = std::fs::read(path).unwrap();
        assert_eq!(
            fixtures::dataset_of(&stored),
            original[slice.dataset_offset..],
            "{} is not intact",
            path.display()
        );
    }
}

#[test]
fn after_kill_9_mid_transfer_every_acknowledged_instance_is_present_and_intact() {
    let series = CtSeries::load();
    let mut app = Appliance::start(&|_| {});
    let mut acknowledged = Vec::new();
    // Kill at three different points of three sends, restarting in between.
    for kill_after in [7usize, 40, 75] {
        let pid = app.pid();
        let acked = send_watching(&app, &series.paths(), |n| {
            if n == kill_after {
                hil_tests::signal(pid, libc::SIGKILL);
            }
        });
        assert!(
            acked.len() >= kill_after && acked.len() < 108,
            "kill landed after {} successes",
            acked.len()
        );
        app.kill9();
        app.launch();
        acknowledged.extend(acked);
        assert_all_present_and_intact(&app, &acknowledged, &series);
        let tmp = files_below(&app.data_dir.join("spool/tmp"));
        assert!(tmp.is_empty(), "partial files left: {tmp:?}");
        let stored = files_below(&app.data_dir.join("spool")).len();
        let indexed = app.expect_metric("radiant_spool_instances") as usize;
        assert_eq!(stored, indexed, "files on disk and index rows disagree");
    }
    // The sender retries everything; the study then completes with all 108 instances.
    let acked = send_watching(&app, &series.paths(), |_| {});
    assert_eq!(acked.len(), 108);
    assert!(
        wait_until(Duration::from_secs(10), || {
            app.studies()
                .first()
                .map(|s| s["state"] == "complete" && s["instances"] == 108)
                .unwrap_or(false)
        }),
        "{:?}",
        app.studies()
    );
}

#[test]
fn a_study_receiving_at_a_crash_completes_after_restart() {
    let series = CtSeries::load();
    let mut app = Appliance::start(&|c| set_dicom(c, "study_quiet_seconds", 2i64));
    let acked = send_watching(&app, &series.paths()[..20], |_| {});
    assert_eq!(acked.len(), 20);
    assert_eq!(app.studies()[0]["state"], "receiving");
    app.kill9();
    app.launch();
    assert!(wait_until(Duration::from_secs(10), || app.studies()[0]
        ["state"]
        == "complete"));
    assert!(wait_until(Duration::from_secs(5), || app
        .log()
        .contains("study complete")));
}

#[test]
fn sigterm_lets_the_association_in_progress_finish_then_exits_cleanly() {
    let series = CtSeries::load();
    let mut app = Appliance::start(&|_| {});
    let pid = app.pid();
    let acked = send_watching(&app, &series.paths(), |n| {
        if n == 10 {
            hil_tests::signal(pid, libc::SIGTERM);
        }
    });
    assert_eq!(
        acked.len(),
        108,
        "the association in progress was cut short"
    );
    let status = app
        .terminate(Duration::from_secs(15))
        .expect("daemon exited");
    assert!(status.success(), "exit status {status:?}\n{}", app.log());
    assert!(app.log().contains("appliance stopped"));
    // Restarted, the daemon finds everything it acknowledged.
    app.launch();
    assert_all_present_and_intact(&app, &acked, &series);
}

#[test]
fn a_lost_index_is_rebuilt_from_the_spool_files_and_no_acknowledged_instance_is_lost() {
    let series = CtSeries::load();
    let mut app = Appliance::start(&|c| set_dicom(c, "study_quiet_seconds", 1i64));
    let acked = send_watching(&app, &series.paths(), |_| {});
    assert_eq!(acked.len(), 108);
    assert!(app.terminate(Duration::from_secs(15)).is_some());
    // The index is gone (a disk error, an operator's mistake): only the Part 10 files remain.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(app.data_dir.join(format!("index.sqlite{suffix}")));
    }
    app.launch();
    assert!(
        app.log()
            .contains("spool files the index did not list were indexed again"),
        "{}",
        app.log()
    );
    assert_all_present_and_intact(&app, &acked, &series);
    // Indexed under the sender that sent them, and complete again after the quiet period.
    assert!(
        wait_until(Duration::from_secs(30), || app.studies().iter().any(|s| {
            s["study_uid"] == series.study_instance_uid.as_str()
                && s["instances"] == 108
                && s["calling_ae"] == "STORESCU"
                && s["state"] == "complete"
        })),
        "{:?}\n{}",
        app.studies(),
        app.log()
    );
    assert!(files_below(&app.data_dir.join("quarantine")).is_empty());
}
