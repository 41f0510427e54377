//! The power-cut exploration's deterministic subset for CI: every durable path run once without
//! a cut (its trace of syncs recorded), then cut at its first sync, in the middle of its trace
//! and at its end, plus regression points found by name in the trace, on a file system that
//! reorders unsynced directory operations and tears the last unsynced write.
//! `scripts/crashcheck.sh` runs hundreds of such cuts.

use hil_tests::lazyfs::model::CutOptions;
use hil_tests::power_cut::{DurablePath, Explorer};

fn explore(path: DurablePath) {
    explore_with(path, |_| Vec::new());
}

/// As [`explore`], plus the cut points `regressions` finds in the recorded trace.
fn explore_with(path: DurablePath, regressions: impl Fn(&Explorer) -> Vec<u64>) {
    let mut explorer = Explorer::new(path).unwrap_or_else(|e| panic!("{e}"));
    assert!(explorer.trace > 0, "{}: the work made no sync", path.name());
    // Random cuts: unsynced directory operations reordered, the last write torn.
    let random = CutOptions {
        reorder_dirs: true,
        tear: true,
    };
    // Regression cuts: no unsynced directory operation survives, so a missing directory fsync
    // shows every time rather than for some seeds.
    let strict = CutOptions {
        reorder_dirs: false,
        tear: true,
    };
    let mut points: Vec<(u64, CutOptions)> = [1, explorer.trace / 2 + 1, explorer.trace + 1]
        .into_iter()
        .map(|k| (k, random))
        .collect();
    points.extend(regressions(&explorer).into_iter().map(|k| (k, strict)));
    let mut failures = Vec::new();
    for (i, (k, options)) in points.into_iter().enumerate() {
        let report = explorer.trial_with(k, 100 + i as u64, options);
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

/// The cut right after the first sync of `name` that follows the sync of `marker` in the
/// recorded trace (syncs count from 1).
fn after(explorer: &Explorer, marker: &str, name: &str) -> u64 {
    let names = &explorer.trace_names;
    let at = names
        .iter()
        .position(|n| n == marker)
        .and_then(|m| names[m..].iter().position(|n| n == name).map(|i| m + i))
        .unwrap_or_else(|| panic!("no sync of {name} after {marker} in {names:#?}"));
    at as u64 + 1
}

#[test]
fn study_completion_inference_and_delivery_survive_power_cuts() {
    // Regression: cut right after the job's result commit. The first job's `results/` folder
    // was never synced into the data folder, so the outbox named a result file that was gone.
    explore_with(DurablePath::Completion, |e| {
        vec![after(e, "data/results/1/", "data/results.sqlite-wal")]
    });
}

#[test]
fn labelled_cases_fine_tune_and_champion_survive_power_cuts() {
    // Also cut right after the new head's row is committed, its folders just made.
    explore_with(DurablePath::Learning, |e| {
        vec![after(
            e,
            "data/heads/head-ct-ich/0.1.0/",
            "data/results.sqlite-wal",
        )]
    });
}

#[test]
fn a_purge_survives_power_cuts() {
    explore(DurablePath::Purge);
}

#[test]
fn a_model_install_survives_power_cuts() {
    explore(DurablePath::ModelInstall);
}
