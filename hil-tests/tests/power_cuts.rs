//! The power-cut exploration's deterministic subset for CI: every durable path run once without
//! a cut (its trace of syncs recorded), then cut at its first sync, in the middle of its trace
//! and at its end, on a file system that reorders unsynced directory operations and tears the
//! last unsynced write. `scripts/crashcheck.sh` runs hundreds of such cuts.

use hil_tests::power_cut::{DurablePath, Explorer};

fn explore(path: DurablePath) {
    let mut explorer = Explorer::new(path).unwrap_or_else(|e| panic!("{e}"));
    assert!(explorer.trace > 0, "{}: the work made no sync", path.name());
    let points = [1, explorer.trace / 2 + 1, explorer.trace + 1];
    let mut failures = Vec::new();
    for (i, k) in points.into_iter().enumerate() {
        let report = explorer.trial(k, 100 + i as u64);
        if !report.violations.is_empty() {
            failures.push(format!("cut after sync {k}: {:?}", report.violations));
        }
    }
    assert!(failures.is_empty(), "{}: {failures:#?}", path.name());
}

#[test]
fn ingest_survives_power_cuts() {
    explore(DurablePath::Ingest);
}

#[test]
fn study_completion_inference_and_delivery_survive_power_cuts() {
    explore(DurablePath::Completion);
}

#[test]
fn a_purge_survives_power_cuts() {
    explore(DurablePath::Purge);
}

#[test]
fn a_model_install_survives_power_cuts() {
    explore(DurablePath::ModelInstall);
}
