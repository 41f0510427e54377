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

/// The cut right after the sync of the last of `names`, each found in the recorded trace
/// after the one before it (syncs count from 1).
fn after(explorer: &Explorer, names: &[&str]) -> u64 {
    let trace = &explorer.trace_names;
    let mut at = None;
    for name in names {
        let from = at.map_or(0, |i| i + 1);
        at = trace[from..]
            .iter()
            .position(|n| n == name)
            .map(|i| from + i);
        if at.is_none() {
            panic!("no sync of {name} in the sequence {names:?} in {trace:#?}");
        }
    }
    at.map_or(0, |i| i as u64 + 1)
}

#[test]
fn study_completion_inference_and_delivery_survive_power_cuts() {
    // Regression: cut right after the job's result commit. The first job's `results/` folder
    // was never synced into the data folder, so the outbox named a result file that was gone.
    explore_with(DurablePath::Completion, |e| {
        vec![after(e, &["data/results/1/", "data/results.sqlite-wal"])]
    });
}

#[test]
fn labelled_cases_fine_tune_and_champion_survive_power_cuts() {
    // Also cut right after the new head's row is committed, its folders just made.
    explore_with(DurablePath::Learning, |e| {
        vec![after(
            e,
            &["data/heads/head-ct-ich/0.1.0/", "data/results.sqlite-wal"],
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

#[test]
fn a_firmware_update_its_rollback_and_its_commit_survive_power_cuts() {
    // Also cut right after the trial is recorded (its database snapshot just made) and right
    // after `current` switched to the new slot.
    explore_with(DurablePath::Update, |e| {
        let recorded = ["data/update/snapshots/0.2.0/", "install/"];
        vec![
            after(e, &recorded),
            after(e, &[recorded[0], recorded[1], "install/"]),
        ]
    });
}

#[test]
fn a_sites_federated_round_survives_power_cuts() {
    // Also cut right after global 2 is handed over: its folder was made at the first global
    // head without a sync of its parent, so the head could vanish while the updater's state
    // said it was installed (and would never fetch it again).
    explore_with(DurablePath::FederatedRound, |e| {
        vec![after(
            e,
            &[
                "data/federation/global/2.json.part",
                "data/federation/global/",
            ],
        )]
    });
}
