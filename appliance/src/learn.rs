//! On-site learning: accepted labelled cases become training or validation data, a fine-tune
//! of the head runs when it is due, and the gate decides whether its result replaces the
//! champion that inference uses.
//!
//! - Split: every case gets a split the first time the learner sees it, and keeps it. Cases
//!   are grouped by patient (the key intake stored: a hash of issuer and Patient ID), else by
//!   series, else alone; every case of a group takes the split its group already has, and a
//!   new group is held out (never trained on) when it is the first, or every
//!   `holdout_every`-th, group of the model. So two labels of one patient, or of one series,
//!   never land on both sides.
//! - Features: for each accepted case, the frozen part runs once on its series (from the
//!   spool) and what the head learns from is written to `<data_dir>/cases/<id>/`, fsync'd
//!   before its row commits: a class-balanced sample of the grid (`learning::sampled`: at most
//!   the package's `samples_per_class` pixels of each class of the model grid with their
//!   backbone features, contract 1, or voxels of the trainable stage with their head inputs,
//!   contract 2; with the grid's class counts), f32 little endian `[features, samples]`, and
//!   their labels; a study label alone keeps nothing per pixel. They are recomputed when the
//!   frozen part or `samples_per_class` changes, and kept only for the most recent
//!   `max_training_cases` training and `max_holdout_cases` held-out cases (disk and memory
//!   stay bounded; older cases keep their labels).
//! - Due: `min_new_cases` new training cases since the last finished fine-tune, or
//!   `interval_hours` since it with at least one; `appliance learn now` runs one at once.
//! - Yielding: a fine-tune (and feature extraction) runs only while no inference job waits;
//!   a watcher raises the cancel flag as soon as one does, the run stops at its next step and
//!   starts over once the queue is idle. A cancelled run leaves no head and no record.
//! - Gate: the candidate and the champion are scored on the held-out cases (case by case, for
//!   the gate's paired bootstrap; nothing is accepted on fewer than `min_holdout_cases`); the
//!   candidate and the global head on the package's reference validation set
//!   ([`learning::gate`]). Held-out cases are scored on every pixel of their grid: each
//!   series runs through the frozen part again (one case in memory at a time), and so do the
//!   training cases with a study label for the study classifier (contract 1). A contract-2
//!   model has no reference set and no study classifier. Every candidate is recorded with
//!   its lineage ([`crate::heads`]); an accepted one becomes the champion in the same
//!   transaction.
//!
//! One fine-tune at a time per data folder: the daemon and `appliance learn now` share the
//! lock file `<data_dir>/learn.lock`.

use crate::config::Config;
use crate::db::{self, now_ms, CaseKind, CaseState, LearnOutcome, Split};
use crate::heads::{self, CaseRef};
use crate::jobs::inference_busy;
use crate::loaded::Loaded;
use crate::metrics::ApplianceMetrics;
use anyhow::Context;
use learning::case::Case;
use learning::evaluate;
use learning::finetune::{self, FineTuneConfig, FineTuneError, StudyExample, TrainingSet};
use learning::gate::{self, GateConfig};
use models::backbone::{self, BatchShape, Completion};
use models::head::Head;
use models::learnable::Learnable;
use models::package::Package;
use models::preprocess;
use pacs_bridge::store::index;
use pacs_bridge::volume::{self, Limits};
use radiant_core::durable::{create_dir_durable, fsync_dir, write_synced};
use radiant_core::file_lock::FileLock;
use radiant_core::Cancel;
use rusqlite::{named_params, params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// SQL condition on case `c`: it is a training or validation case of its own (a segmentation
/// case, or a classification label about a series without one). Binds `:segmentation` and
/// `:accepted`.
const STANDS_ALONE: &str = "(c.kind = :segmentation OR NOT EXISTS (
    SELECT 1 FROM cases g WHERE g.kind = :segmentation AND g.state = :accepted
      AND g.model_id = c.model_id AND g.series_uid = c.series_uid))";

/// SQL expression: the study-level finding of case `c` with features `f`. A verified SR about
/// the series (the latest) outranks what a segmentation implies. Binds `:classification` and
/// `:accepted`.
const FINDING: &str = "COALESCE((SELECT r.finding FROM cases r WHERE r.kind = :classification
    AND r.state = :accepted AND r.model_id = c.model_id AND r.series_uid = c.series_uid
    ORDER BY r.id DESC LIMIT 1), f.finding)";

/// How often a running fine-tune looks at the inference queue.
const YIELD_POLL: Duration = Duration::from_millis(50);

/// What a learning run is doing, for logs, metrics and the CLI's progress bar.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Backbone features of new cases: `done` of `total` cases.
    Features {
        done: usize,
        total: usize,
    },
    /// A fine-tune started on `train` cases, `holdout` held out.
    Started {
        train: usize,
        holdout: usize,
        epochs: usize,
    },
    Epoch {
        epoch: usize,
        epochs: usize,
        loss: f32,
    },
    Validating,
    /// Inference wanted the machine; the run stopped and will start over.
    Yielded,
}

/// How a learning run ended.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub outcome: LearnOutcome,
    pub head_id: Option<i64>,
    pub parent: Option<i64>,
    pub trigger: String,
    pub reasons: Vec<String>,
    pub train_cases: usize,
    pub holdout_cases: usize,
    pub reference_cases: usize,
    pub decision: Option<gate::Decision>,
    pub fine_tune_seconds: f64,
    pub seconds: f64,
}

/// How often the daemon's learner looks whether a fine-tune is due and inference is idle.
const LEARN_TICK: Duration = Duration::from_millis(500);

/// Why a run did not produce a recorded outcome.
#[derive(Debug)]
pub enum NotRun {
    /// Another process holds the learning lock.
    Busy,
    /// Inference wanted the machine.
    Yielded,
    /// Nothing to learn from yet, and why.
    NotEnough(String),
    /// The daemon is stopping; the run starts over after the restart.
    Stopped,
}

impl std::fmt::Display for NotRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotRun::Busy => write!(f, "another fine-tune holds the learning lock"),
            NotRun::Yielded => write!(f, "yielded to inference"),
            NotRun::NotEnough(why) => write!(f, "not enough cases: {why}"),
            NotRun::Stopped => write!(f, "the appliance is stopping"),
        }
    }
}

/// Which trigger makes a fine-tune due, if any: `new` training cases arrived since the last
/// run, `from_ms` is when the schedule's interval started.
fn trigger(
    new: usize,
    from_ms: Option<i64>,
    now_ms: i64,
    config: &crate::config::LearningConfig,
) -> Option<String> {
    if new >= config.min_new_cases {
        return Some(format!("{new} new cases"));
    }
    let interval_ms = (config.interval_hours as i64).saturating_mul(3_600_000);
    match from_ms {
        Some(from) if new > 0 && interval_ms > 0 && now_ms - from >= interval_ms => {
            Some(format!("schedule ({} h)", config.interval_hours))
        }
        _ => None,
    }
}

/// The most recent `limit` accepted cases of `split` that stand alone (see [`STANDS_ALONE`]).
fn window(
    conn: &Connection,
    model_id: &str,
    split: Split,
    limit: usize,
) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT c.id FROM cases c JOIN case_splits s ON s.case_id = c.id
         WHERE c.state = :accepted AND c.model_id = :model_id AND s.split = :split
           AND {STANDS_ALONE}
         ORDER BY c.id DESC LIMIT :limit"
    ))?;
    let rows = stmt.query_map(
        named_params! {
            ":model_id": model_id,
            ":split": split,
            ":limit": limit.min(i64::MAX as usize) as i64,
            ":accepted": CaseState::Accepted,
            ":segmentation": CaseKind::Segmentation,
        },
        |r| r.get(0),
    )?;
    rows.collect()
}

/// Remove the stored features of every case not in `keep` (its row first, then its files: a
/// crash in between leaves a file nobody names, never a row naming a missing file). The
/// radiologist's label itself stays. Returns how many cases lost their features.
fn prune(conn: &Connection, data_dir: &Path, keep: &HashSet<i64>) -> anyhow::Result<usize> {
    let stored: Vec<(i64, String, String)> = conn
        .prepare("SELECT case_id, features_path, labels_path FROM case_features")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut pruned = 0;
    for (id, features, labels) in stored {
        if keep.contains(&id) {
            continue;
        }
        conn.execute("DELETE FROM case_features WHERE case_id = ?1", [id])?;
        for file in [features, labels] {
            match std::fs::remove_file(data_dir.join(&file)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("remove {file}")),
            }
        }
        pruned += 1;
    }
    Ok(pruned)
}

/// A case with stored features, as training and validation read it.
#[derive(Debug, Clone, PartialEq)]
struct StoredCase {
    id: i64,
    slices: i64,
    plane: i64,
    pixel_ml: f64,
    finding: Option<bool>,
    features_path: String,
    labels_path: String,
    labels_sha256: String,
    /// JSON: a sampled case's class counts on its whole grid.
    class_counts: Option<String>,
}

/// The most recent `limit` cases of `split` with features of this backbone, oldest first: each
/// segmentation case (with the finding of the latest verified SR about its series, if any),
/// and each classification label about a series without one.
fn stored_cases(
    conn: &Connection,
    model_id: &str,
    backbone_sha256: &str,
    split: Split,
    limit: usize,
) -> rusqlite::Result<Vec<StoredCase>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT f.case_id, f.slices, f.plane, f.pixel_ml, {FINDING}, f.features_path,
                f.labels_path, f.labels_sha256, f.class_counts
         FROM case_features f JOIN case_splits s ON s.case_id = f.case_id
         JOIN cases c ON c.id = f.case_id
         WHERE s.split = :split AND c.state = :accepted AND c.model_id = :model_id
           AND f.backbone_sha256 = :backbone_sha256 AND {STANDS_ALONE}
         ORDER BY f.case_id DESC LIMIT :limit"
    ))?;
    let rows = stmt.query_map(
        named_params! {
            ":split": split,
            ":model_id": model_id,
            ":backbone_sha256": backbone_sha256,
            ":limit": limit.min(i64::MAX as usize) as i64,
            ":accepted": CaseState::Accepted,
            ":segmentation": CaseKind::Segmentation,
            ":classification": CaseKind::Classification,
        },
        |r| {
            Ok(StoredCase {
                id: r.get(0)?,
                slices: r.get(1)?,
                plane: r.get(2)?,
                pixel_ml: r.get(3)?,
                finding: r.get(4)?,
                features_path: r.get(5)?,
                labels_path: r.get(6)?,
                labels_sha256: r.get(7)?,
                class_counts: r.get(8)?,
            })
        },
    )?;
    let mut out = rows.collect::<Result<Vec<_>, _>>()?;
    out.reverse();
    Ok(out)
}

/// The learner of the configured model.
pub struct Learner {
    data_dir: PathBuf,
    config: Config,
    /// What learning knows of the model, whichever its contract.
    model: Learnable,
    /// What computes the head's inputs, frozen: a contract-1 backbone, or a contract-2
    /// pipeline (run up to its trainable stage).
    frozen: Loaded,
    /// The head the package shipped.
    global: Head,
    /// The reference validation set's cases (features computed once).
    reference: Option<Vec<Case>>,
    /// The daemon's stop signal (never raised for the CLI's `learn now`); every run's cancel
    /// is a child of it, so a stop reaches a fine-tune or a feature extraction in progress.
    stop: Cancel,
    /// The federation's global head this site took last (version, head), when `[federation]`
    /// is enabled: fine-tunes are pulled toward it (FedProx) and offered against it.
    federated: Option<(u64, Head)>,
    /// A federated global head was just taken: fine-tune from it for the next round.
    round_due: Option<u64>,
}

/// The learning lock: one run at a time per data folder, daemon or CLI.
pub struct LearnLock {
    _held: FileLock,
}

impl LearnLock {
    /// Take the lock, or `None` when another process holds it.
    pub fn try_take(data_dir: &Path) -> anyhow::Result<Option<LearnLock>> {
        Ok(FileLock::try_take(&data_dir.join("learn.lock"))?.map(|held| LearnLock { _held: held }))
    }
}

/// Raise `cancel` while inference is busy, until `done`; polls the job table.
/// The job table is the only place that knows (the CLI's `learn now` runs in another process
/// than the daemon's worker), so this one wait polls; it ends at once when `done` is raised.
fn watch_inference(data_dir: &Path, cancel: &Cancel, done: &Cancel) -> anyhow::Result<()> {
    let conn = db::open(data_dir)?;
    while !done.is_cancelled() {
        if inference_busy(&conn)? {
            cancel.cancel();
            return Ok(());
        }
        done.wait_timeout(YIELD_POLL);
    }
    Ok(())
}

/// A case's series and its label map, as learning reads them from the spool and the case
/// folder.
struct CaseSeries {
    series_uid: String,
    volume: radiant_core::Volume,
    /// The label map on the source voxels as head classes ([`Learnable::class_of_values`]);
    /// `None` for a classification label.
    classes: Option<Vec<u8>>,
    finding: Option<bool>,
}

/// Read case `id`'s series from the spool and its label map from its folder; `None` when the
/// series is no longer in the spool (retention purged it: `keep_pixel_data_of_cases` off).
fn case_series(
    conn: &Connection,
    spool: &Connection,
    data_dir: &Path,
    model: &Learnable,
    id: i64,
) -> anyhow::Result<Option<CaseSeries>> {
    let (series_uid, labels_path, finding): (String, Option<String>, Option<bool>) = conn
        .query_row(
            "SELECT series_uid, labels_path, finding FROM cases WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
    let Some(files) = index::series_files(spool, data_dir, &series_uid)? else {
        return Ok(None);
    };
    let files = files.files;
    let volume = volume::build(&files, &Limits::default())?.volume;
    let classes = match &labels_path {
        Some(path) => {
            let source =
                std::fs::read(data_dir.join(path)).with_context(|| format!("read {path}"))?;
            anyhow::ensure!(
                source.len() == volume.voxels.len(),
                "its label map has {} voxels, the series {}",
                source.len(),
                volume.voxels.len()
            );
            let class_of = model.class_of_values();
            Some(source.iter().map(|v| class_of[usize::from(*v)]).collect())
        }
        None => None,
    };
    Ok(Some(CaseSeries {
        series_uid,
        volume,
        classes,
        finding,
    }))
}

/// What a case's learning data are before they are written: a class-balanced sample of its
/// pixels (one slice of `plane` samples), or nothing per pixel for a study label alone.
struct StoredFeatures {
    slices: usize,
    plane: usize,
    /// f32 little endian, `[slices, features, plane]`.
    features: Vec<u8>,
    labels: Vec<u8>,
    finding: Option<bool>,
    pixel_ml: f64,
    class_counts: Option<Vec<u64>>,
}

impl StoredFeatures {
    fn of(case: &Case) -> StoredFeatures {
        StoredFeatures {
            slices: case.slices,
            plane: case.plane,
            features: case.features.iter().flat_map(|v| v.to_le_bytes()).collect(),
            labels: case.labels.clone(),
            finding: case.finding,
            pixel_ml: case.pixel_ml,
            class_counts: case.class_counts.clone(),
        }
    }

    /// A study label alone: nothing per pixel to keep.
    fn study_label_only(case: &Case) -> StoredFeatures {
        StoredFeatures {
            slices: 0,
            plane: 0,
            features: Vec::new(),
            labels: Vec::new(),
            finding: case.finding,
            pixel_ml: case.pixel_ml,
            class_counts: None,
        }
    }
}

/// A contract-1 case whole: the backbone's features of every slice and the labels on the
/// model grid, in memory (never stored: a case keeps a sample of them); `None` when cancelled.
/// `finding` is the case's study label; a segmentation sets it from its labels.
fn whole_slices(
    model: &mut models::infer::Model,
    id: i64,
    volume: &radiant_core::Volume,
    source_classes: Option<&[u8]>,
    finding: Option<bool>,
    cancel: &Cancel,
) -> anyhow::Result<Option<Case>> {
    let manifest = model.package.manifest.clone();
    let spec = &manifest.input;
    preprocess::check(volume, spec)?;
    // A classification label has no pixels: its case trains the study classifier only.
    let labels: Vec<u8> = match source_classes {
        Some(classes) => preprocess::labels_to_model_grid(volume, spec, classes),
        None => Vec::new(),
    };
    let [rows, columns] = spec.size;
    let plane = rows * columns;
    let mut features = Vec::with_capacity(volume.slices * manifest.backbone.features * plane);
    let shape = BatchShape::of(&manifest, volume.slices);
    let completion = backbone::run_in_batches::<anyhow::Error>(
        model.backend.as_mut(),
        shape,
        Some(cancel),
        |range| Ok(preprocess::tensor(volume, spec, range)),
        |_, out| {
            features.extend_from_slice(&out);
            Ok(())
        },
    )?;
    if completion == Completion::Cancelled {
        return Ok(None);
    }
    let last_class = manifest.labels.len() as u8;
    // A segmentation tells whether the finding (the last label) is there.
    let finding = match source_classes {
        Some(_) if finding.is_none() => Some(labels.contains(&last_class)),
        _ => finding,
    };
    Ok(Some(Case {
        id: format!("case-{id}"),
        slices: volume.slices,
        plane,
        features,
        labels,
        finding,
        pixel_ml: spec.spacing_mm * spec.spacing_mm * volume.spacing[2] / 1000.0,
        class_counts: None,
    }))
}

/// A refusal names the held-out cases the gate could not score (their series purged).
fn say_left_out(decision: &mut gate::Decision, without_series: &[i64]) {
    if !decision.accepted && !without_series.is_empty() {
        decision.reasons.push(format!(
            "held-out cases {without_series:?} were left out: their series are no longer in \
             the spool (retention.keep_pixel_data_of_cases is off)"
        ));
    }
}

/// Two heads' scores on the held-out cases ([`Learner::score_held_out`]).
struct HeldOutScores {
    first: evaluate::Scores,
    second: evaluate::Scores,
    /// Held-out cases left out: their series are no longer in the spool.
    without_series: Vec<i64>,
}

/// A contract-1 case read whole again.
enum Whole {
    Case(Case),
    /// Its series is no longer in the spool: it cannot be scored or fed to the classifier.
    SeriesGone,
    Cancelled,
}

/// Contract-1 case `id` whole: its series read again from the spool and run through the
/// backbone, with `finding` (its current study label: a later verified SR outranks what its
/// segmentation implies).
#[allow(clippy::too_many_arguments)]
fn whole_case(
    frozen: &mut models::infer::Model,
    conn: &Connection,
    spool: &Connection,
    data_dir: &Path,
    model: &Learnable,
    id: i64,
    finding: Option<bool>,
    cancel: &Cancel,
) -> anyhow::Result<Whole> {
    let Some(series) = case_series(conn, spool, data_dir, model, id)? else {
        return Ok(Whole::SeriesGone);
    };
    let whole = whole_slices(
        frozen,
        id,
        &series.volume,
        series.classes.as_deref(),
        finding,
        cancel,
    )?;
    Ok(whole.map_or(Whole::Cancelled, Whole::Case))
}

/// Contract-1 case `id` whole from the features it stored before cases kept a sample (a
/// database of before 2026-12-02, features of this backbone); `None` when it has none. Lets
/// the upgrade sample a case whose series retention has purged.
fn stored_whole(
    conn: &Connection,
    data_dir: &Path,
    model: &Learnable,
    backbone_sha256: &str,
    id: i64,
) -> anyhow::Result<Option<Case>> {
    let row: Option<(i64, i64, f64, Option<bool>, String, String)> = conn
        .query_row(
            "SELECT slices, plane, pixel_ml, finding, features_path, labels_path
             FROM case_features WHERE case_id = ?1 AND backbone_sha256 = ?2
               AND class_counts IS NULL AND slices > 0",
            params![id, backbone_sha256],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .optional()?;
    let Some((slices, plane, pixel_ml, finding, features_path, labels_path)) = row else {
        return Ok(None);
    };
    let (slices, plane) = (usize::try_from(slices)?, usize::try_from(plane)?);
    let bytes = std::fs::read(data_dir.join(&features_path))
        .with_context(|| format!("read {features_path}"))?;
    let expected = slices
        .checked_mul(plane)
        .and_then(|n| n.checked_mul(model.features * 4))
        .context("its stored shape overflows")?;
    anyhow::ensure!(
        bytes.len() == expected,
        "{features_path} has {} bytes, expected {expected}",
        bytes.len()
    );
    let case = Case {
        id: format!("case-{id}"),
        slices,
        plane,
        features: bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        labels: std::fs::read(data_dir.join(&labels_path))
            .with_context(|| format!("read {labels_path}"))?,
        finding,
        pixel_ml,
        class_counts: None,
    };
    case.check(model.features, model.classes())
        .map_err(|e| anyhow::anyhow!("its stored features: {e}"))?;
    Ok(Some(case))
}

impl Learner {
    /// The learner for the configured model's active version, with its own runtime.
    pub fn new(config: &Config) -> anyhow::Result<Learner> {
        let registry = models::registry::Registry::new(&config.data_dir);
        let package = registry
            .open_active_any(&config.inference.model)
            .with_context(|| format!("model {}", config.inference.model))?;
        let model = Learnable::of(&package).with_context(|| {
            format!(
                "model {} has no trainable part (a contract-2 package without \
                 [stages.trainable]): nothing to learn",
                config.inference.model
            )
        })?;
        let global = model.shipped_head()?;
        let frozen = Loaded::load(config, &package)?;
        db::open(&config.data_dir)?;
        let federated = match (config.federation.as_ref().filter(|f| f.enabled), &frozen) {
            (None, _) => None,
            (Some(_), Loaded::Pipeline(_)) => {
                tracing::warn!(model = %model.id, "the federation exchanges contract-1 heads only: this model learns on site and takes no part in rounds");
                None
            }
            (Some(_), Loaded::Head(frozen)) => {
                let package = &frozen.package;
                let version = crate::federated::adopted(&config.data_dir);
                let path = fleet_wire::site::global_dir(&config.data_dir)
                    .join(format!("{version}.safetensors"));
                match crate::federated::load_global(&path, &package.manifest) {
                    Ok(head) if version > 1 => Some((version, head)),
                    _ => Some((1, global.clone())),
                }
            }
        };
        Ok(Learner {
            data_dir: config.data_dir.clone(),
            config: config.clone(),
            model,
            frozen,
            global,
            reference: None,
            stop: Cancel::new(),
            federated,
            round_due: None,
        })
    }

    /// The contract-1 package, when the model is one (its backbone, reference set and
    /// federation belong to that contract).
    fn head_package(&self) -> Option<&Package> {
        match &self.frozen {
            Loaded::Head(m) => Some(&m.package),
            Loaded::Pipeline(_) => None,
        }
    }

    /// Give every accepted case of the model without a split its split.
    fn assign_splits(&self, conn: &Connection) -> rusqlite::Result<()> {
        assign_splits(conn, &self.model.id, self.config.learning.holdout_every)
    }

    /// The cases whose features the learner keeps: the most recent `max_training_cases`
    /// training and `max_holdout_cases` held-out cases that stand alone.
    fn kept(&self, conn: &Connection) -> rusqlite::Result<HashSet<i64>> {
        let l = &self.config.learning;
        let mut out = HashSet::new();
        for (split, limit) in [
            (Split::Train, l.max_training_cases),
            (Split::Holdout, l.max_holdout_cases),
        ] {
            out.extend(window(conn, &self.model.id, split, limit)?);
        }
        Ok(out)
    }

    /// Kept cases whose features are missing or from another backbone, oldest first.
    fn cases_without_features(&self, conn: &Connection) -> rusqlite::Result<Vec<i64>> {
        let kept = self.kept(conn)?;
        let mut stmt = conn.prepare(
            "SELECT c.id FROM cases c LEFT JOIN case_features f ON f.case_id = c.id
             WHERE c.state = ?3 AND c.model_id = ?1
               AND (f.case_id IS NULL OR f.backbone_sha256 != ?2)
             ORDER BY c.id",
        )?;
        let rows = stmt.query_map(
            params![self.model.id, self.model.features_key, CaseState::Accepted],
            |r| r.get::<_, i64>(0),
        )?;
        let mut out = Vec::new();
        for id in rows {
            let id = id?;
            if kept.contains(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Compute and store the features of every case that lacks them; stops early (returning
    /// `Err(NotRun::Yielded)`) when `cancel` rises.
    pub fn prepare_features(
        &mut self,
        conn: &Connection,
        cancel: &Cancel,
        progress: &mut dyn FnMut(Progress),
    ) -> anyhow::Result<Result<usize, NotRun>> {
        self.assign_splits(conn)?;
        let pruned = prune(conn, &self.data_dir, &self.kept(conn)?)?;
        if pruned > 0 {
            tracing::info!(
                cases = pruned,
                "features of cases beyond max_training_cases and max_holdout_cases removed"
            );
        }
        let pending = self.cases_without_features(conn)?;
        for (done, id) in pending.iter().enumerate() {
            progress(Progress::Features {
                done,
                total: pending.len(),
            });
            match self.case_features(conn, *id, cancel) {
                Ok(true) => {}
                Ok(false) => return Ok(Err(NotRun::Yielded)),
                // One unreadable case must not stop learning from the others: it is refused
                // with the reason, as at intake.
                Err(e) => {
                    let reason = format!("cannot compute its features: {e:#}");
                    tracing::warn!(case = id, reason = %reason, "labelled case refused");
                    conn.execute(
                        "UPDATE cases SET state = ?3, reason = ?2 WHERE id = ?1",
                        params![id, reason, CaseState::Refused],
                    )?;
                }
            }
        }
        if !pending.is_empty() {
            progress(Progress::Features {
                done: pending.len(),
                total: pending.len(),
            });
        }
        Ok(Ok(pending.len()))
    }

    /// Features and model-grid labels of case `id`; `false` when cancelled.
    fn case_features(
        &mut self,
        conn: &Connection,
        id: i64,
        cancel: &Cancel,
    ) -> anyhow::Result<bool> {
        let spool = index::open_read_only(&pacs_bridge::store::index_path(&self.data_dir))?;
        let seed = self.config.learning.seed ^ (id as u64);
        let samples_per_class = self.model.samples_per_class;
        let Some(series) = case_series(conn, &spool, &self.data_dir, &self.model, id)? else {
            // A case stored whole before cases kept a sample is sampled from what it stored.
            let backbone = match &self.frozen {
                Loaded::Head(m) => Some(m.package.manifest.backbone.sha256.clone()),
                Loaded::Pipeline(_) => None,
            };
            let whole = match backbone {
                Some(sha) => stored_whole(conn, &self.data_dir, &self.model, &sha, id)?,
                None => None,
            };
            let whole = whole.context("its series is no longer in the spool")?;
            let series_uid: String =
                conn.query_row("SELECT series_uid FROM cases WHERE id = ?1", [id], |r| {
                    r.get(0)
                })?;
            let stored = if whole.has_pixel_labels() {
                StoredFeatures::of(&learning::sampled::sample_dense(
                    &whole,
                    self.model.features,
                    self.model.classes(),
                    samples_per_class,
                    seed,
                )?)
            } else {
                StoredFeatures::study_label_only(&whole)
            };
            self.store_features(conn, id, &series_uid, whole.slices, stored)?;
            return Ok(true);
        };
        let CaseSeries {
            series_uid,
            volume,
            classes: source_classes,
            finding,
        } = series;
        let volume = &volume;
        let stored = match &mut self.frozen {
            Loaded::Head(m) => {
                // A segmentation's finding comes from its labels.
                let finding = finding.filter(|_| source_classes.is_none());
                let Some(whole) =
                    whole_slices(m, id, volume, source_classes.as_deref(), finding, cancel)?
                else {
                    return Ok(false);
                };
                if whole.has_pixel_labels() {
                    let case = learning::sampled::sample_dense(
                        &whole,
                        self.model.features,
                        self.model.classes(),
                        samples_per_class,
                        seed,
                    )?;
                    StoredFeatures::of(&case)
                } else {
                    StoredFeatures::study_label_only(&whole)
                }
            }
            Loaded::Pipeline(m) => {
                let classes = source_classes
                    .context("a classification label: this model learns from segmentations only")?;
                if cancel.is_cancelled() {
                    return Ok(false);
                }
                let inputs = models::pipeline::run::trainable_inputs(m, volume, &classes)?;
                if cancel.is_cancelled() {
                    return Ok(false);
                }
                StoredFeatures::of(&learning::sampled::sample_case(
                    format!("case-{id}"),
                    &inputs,
                    samples_per_class,
                    seed,
                    volume.voxel_ml(),
                )?)
            }
        };
        self.store_features(conn, id, &series_uid, volume.slices, stored)?;
        Ok(true)
    }

    /// Write case `id`'s learning data (fsync'd), then its row; then remove what an earlier
    /// row named under other file names (whole features of before 2026-12-02).
    fn store_features(
        &self,
        conn: &Connection,
        id: i64,
        series_uid: &str,
        slices: usize,
        stored: StoredFeatures,
    ) -> anyhow::Result<()> {
        let dir = PathBuf::from("cases").join(id.to_string());
        let absolute = self.data_dir.join(&dir);
        create_dir_durable(&absolute)?;
        let (features_path, labels_path) = (dir.join("sample.f32"), dir.join("sample_labels.u8"));
        write_synced(&self.data_dir.join(&features_path), &stored.features)?;
        write_synced(&self.data_dir.join(&labels_path), &stored.labels)?;
        fsync_dir(&absolute)?;
        let mut hasher = Sha256::new();
        hasher.update(series_uid.as_bytes());
        hasher.update(&stored.labels);
        let labels_sha: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let class_counts = stored
            .class_counts
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        let (features_path, labels_path) = (
            features_path.to_string_lossy().into_owned(),
            labels_path.to_string_lossy().into_owned(),
        );
        let earlier: Option<(String, String)> = conn
            .query_row(
                "SELECT features_path, labels_path FROM case_features WHERE case_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        conn.execute(
            "INSERT OR REPLACE INTO case_features (case_id, backbone_sha256, slices, plane,
                 pixel_ml, finding, features_path, labels_path, labels_sha256, created_at_ms,
                 class_counts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                id,
                self.model.features_key,
                stored.slices as i64,
                stored.plane as i64,
                stored.pixel_ml,
                stored.finding,
                features_path,
                labels_path,
                labels_sha,
                now_ms(),
                class_counts
            ],
        )?;
        for old in earlier.into_iter().flat_map(|(f, l)| [f, l]) {
            if old != features_path && old != labels_path {
                match std::fs::remove_file(self.data_dir.join(&old)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(case = id, file = %old, error = %e, "earlier learning data not removed")
                    }
                }
            }
        }
        tracing::info!(
            case = id,
            slices,
            bytes = stored.features.len() + stored.labels.len(),
            "labelled case learning data stored"
        );
        Ok(())
    }

    /// The highest accepted case id the last finished run saw, and when it finished.
    fn last_run(&self, conn: &Connection) -> rusqlite::Result<Option<(i64, i64)>> {
        conn.query_row(
            "SELECT last_case_id, finished_at_ms FROM learn_runs
             WHERE model_id = ?1 AND global_version = ?2 ORDER BY id DESC LIMIT 1",
            params![self.model.id, self.model.version],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
    }

    /// Whether a fine-tune is due, and by which trigger.
    pub fn due(&self, conn: &Connection) -> anyhow::Result<Option<String>> {
        self.assign_splits(conn)?;
        let last = self.last_run(conn)?;
        let since = last.map(|(id, _)| id).unwrap_or(0);
        let (new, oldest): (i64, Option<i64>) = conn.query_row(
            "SELECT COUNT(*), MIN(c.created_at_ms) FROM cases c
             JOIN case_splits s ON s.case_id = c.id
             WHERE c.state = ?3 AND c.model_id = ?1 AND s.split = ?4 AND c.id > ?2",
            params![self.model.id, since, CaseState::Accepted, Split::Train],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        // The schedule counts from the last finished run, or from the oldest new case.
        let from = last.map(|(_, at)| at).or(oldest);
        Ok(trigger(new as usize, from, now_ms(), &self.config.learning))
    }

    /// Load the stored cases of one split (the most recent `limit`), with their hashes.
    fn load_cases(
        &self,
        conn: &Connection,
        split: Split,
        limit: usize,
    ) -> anyhow::Result<(Vec<Case>, Vec<CaseRef>)> {
        let rows = stored_cases(conn, &self.model.id, &self.model.features_key, split, limit)?;
        let features_per_pixel = self.model.features;
        let mut cases = Vec::new();
        let mut refs = Vec::new();
        for StoredCase {
            id,
            slices,
            plane,
            pixel_ml,
            finding,
            features_path,
            labels_path,
            labels_sha256: sha,
            class_counts,
        } in rows
        {
            let class_counts: Option<Vec<u64>> = class_counts
                .map(|json| {
                    serde_json::from_str(&json)
                        .with_context(|| format!("case {id}: class_counts {json:?} is corrupt"))
                })
                .transpose()?;
            let (slices, plane) = (slices as usize, plane as usize);
            let bytes = std::fs::read(self.data_dir.join(&features_path))
                .with_context(|| format!("case {id}: read {features_path}"))?;
            anyhow::ensure!(
                bytes.len() == slices * plane * features_per_pixel * 4,
                "case {id}: {features_path} has {} bytes, expected {}",
                bytes.len(),
                slices * plane * features_per_pixel * 4
            );
            let labels = std::fs::read(self.data_dir.join(&labels_path))
                .with_context(|| format!("case {id}: read {labels_path}"))?;
            cases.push(Case {
                id: format!("case-{id}"),
                slices,
                plane,
                features: bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                labels,
                finding,
                pixel_ml,
                class_counts,
            });
            // What the case taught: its series and pixel labels (hashed when stored) and the
            // finding it carries now (a later verified SR may have set it).
            let mut hasher = Sha256::new();
            hasher.update(sha.as_bytes());
            hasher.update([finding.map_or(2, u8::from)]);
            refs.push(CaseRef {
                case: id,
                labels_sha256: hasher
                    .finalize()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            });
        }
        Ok((cases, refs))
    }

    /// The reference validation set's cases, computed once per learner.
    fn reference_cases(&mut self) -> anyhow::Result<Vec<Case>> {
        if let Some(cases) = &self.reference {
            return Ok(cases.clone());
        }
        let (id, version, features) = (&self.model.id, &self.model.version, self.model.features);
        let Loaded::Head(frozen) = &mut self.frozen else {
            anyhow::bail!("model {id} is not contract 1: it ships no reference validation set");
        };
        let set =
            learning::validation::ReferenceSet::load(&frozen.package)?.with_context(|| {
                format!(
                "model {id} {version} ships no reference validation set; no candidate can pass \
                 the gate"
            )
            })?;
        let cases = set.cases(frozen.backend.as_mut(), features)?;
        self.reference = Some(cases.clone());
        Ok(cases)
    }

    /// Two heads (the champion and a challenger) scored on the held-out cases over their whole
    /// grid (a case keeps only a sample, and Dice is decided at the mask's edge): each case's
    /// series runs again through the backbone (contract 1; the study classifier is scored too)
    /// or through the pipeline up to its trainable stage (contract 2), and both heads decide
    /// every pixel. `refs` and `stored` are the held-out cases as [`Learner::load_cases`] gives
    /// them (the stored case carries the current study label). A case whose series retention
    /// purged is left out of both. `None` when cancelled.
    fn score_held_out(
        &mut self,
        conn: &Connection,
        refs: &[CaseRef],
        stored: &[Case],
        heads: [&Head; 2],
        cancel: &Cancel,
    ) -> anyhow::Result<Option<HeldOutScores>> {
        let spool = index::open_read_only(&pacs_bridge::store::index_path(&self.data_dir))?;
        let mut per_case: [Vec<evaluate::CaseScore>; 2] = [Vec::new(), Vec::new()];
        let mut without_series = Vec::new();
        for (r, case) in refs.iter().zip(stored) {
            let (id, finding) = (r.case, case.finding);
            if cancel.is_cancelled() {
                return Ok(None);
            }
            let context = || format!("held-out case {id}");
            match &mut self.frozen {
                Loaded::Head(m) => {
                    let whole = whole_case(
                        m,
                        conn,
                        &spool,
                        &self.data_dir,
                        &self.model,
                        id,
                        finding,
                        cancel,
                    )
                    .with_context(context)?;
                    let whole = match whole {
                        Whole::Case(case) => case,
                        Whole::SeriesGone => {
                            without_series.push(id);
                            continue;
                        }
                        Whole::Cancelled => return Ok(None),
                    };
                    for (scores, head) in per_case.iter_mut().zip(heads) {
                        scores.push(
                            evaluate::score_case(head, &whole)
                                .map_err(|e| anyhow::anyhow!("{}: {e}", context()))?,
                        );
                    }
                }
                Loaded::Pipeline(model) => {
                    let series = case_series(conn, &spool, &self.data_dir, &self.model, id)
                        .with_context(context)?;
                    let Some(series) = series else {
                        without_series.push(id);
                        continue;
                    };
                    let classes = series.classes.context("it has no label map")?;
                    let inputs =
                        models::pipeline::run::trainable_inputs(model, &series.volume, &classes)?;
                    for (scores, head) in per_case.iter_mut().zip(heads) {
                        let overlaps =
                            learning::sampled::overlaps(&model.package.manifest, head, &inputs)?;
                        scores.push(evaluate::CaseScore {
                            overlaps: Some(overlaps),
                            study: None,
                        });
                    }
                }
            }
        }
        if !without_series.is_empty() {
            tracing::warn!(cases = ?without_series, "held-out cases left out of the gate: their series are no longer in the spool (retention.keep_pixel_data_of_cases is off)");
        }
        let labels = self.model.labels.len();
        let [first, second] = per_case;
        Ok(Some(HeldOutScores {
            first: evaluate::scores_of(first, labels)?,
            second: evaluate::scores_of(second, labels)?,
            without_series,
        }))
    }

    fn fine_tune_config(&self) -> FineTuneConfig {
        let l = &self.config.learning;
        FineTuneConfig {
            seed: l.seed,
            epochs: l.epochs,
            learning_rate: l.learning_rate,
            mu: l.fedprox_mu,
            pixels_per_class: l.pixels_per_class,
            class_weights: (!l.class_weights.is_empty()).then(|| l.class_weights.clone()),
            cuda: l.cuda,
            // A contract-2 model has no study classifier to fit.
            classifier_steps: match self.frozen {
                Loaded::Head(_) => FineTuneConfig::default().classifier_steps,
                Loaded::Pipeline(_) => 0,
            },
            ..FineTuneConfig::default()
        }
    }

    /// One learning run: features, fine-tune, gate, record. Inference preempts it.
    pub fn run(
        &mut self,
        trigger: &str,
        metrics: &ApplianceMetrics,
        progress: &mut dyn FnMut(Progress),
    ) -> anyhow::Result<Result<RunReport, NotRun>> {
        let Some(_lock) = LearnLock::try_take(&self.data_dir)? else {
            return Ok(Err(NotRun::Busy));
        };
        let began = Instant::now();
        let started_at = now_ms();
        let conn = db::open(&self.data_dir)?;
        // Cases accepted from here on are new to the next run.
        let last_case_id: i64 = conn.query_row(
            "SELECT COALESCE(MAX(id), 0) FROM cases WHERE state = ?2 AND model_id = ?1",
            params![self.model.id, CaseState::Accepted],
            |r| r.get(0),
        )?;
        let cancel = self.stop.child();
        let done = Cancel::new();
        let data_dir = self.data_dir.clone();
        let outcome = std::thread::scope(|scope| {
            let watcher = scope.spawn(|| watch_inference(&data_dir, &cancel, &done));
            let result = self.run_watched(&conn, trigger, &cancel, metrics, progress);
            done.cancel();
            match watcher.join() {
                Ok(Ok(())) => result,
                Ok(Err(e)) => Err(e),
                Err(_) => Err(anyhow::anyhow!("the inference watcher panicked")),
            }
        });
        let mut report = match outcome {
            Ok(Ok(report)) => report,
            // What stops a run (no reference set, a case file gone, the database) is recorded
            // as a failed run with its reason: the next one waits for new cases instead of
            // failing again every few seconds.
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "fine-tune failed; the champion stays");
                RunReport {
                    outcome: LearnOutcome::Failed,
                    head_id: None,
                    parent: None,
                    trigger: trigger.to_string(),
                    reasons: vec![format!("{e:#}")],
                    train_cases: 0,
                    holdout_cases: 0,
                    reference_cases: 0,
                    decision: None,
                    fine_tune_seconds: 0.0,
                    seconds: 0.0,
                }
            }
            Ok(Err(NotRun::Yielded)) if self.stop.is_cancelled() => {
                return Ok(Err(NotRun::Stopped));
            }
            Ok(Err(NotRun::Yielded)) => {
                metrics.learning_yields.inc();
                progress(Progress::Yielded);
                return Ok(Err(NotRun::Yielded));
            }
            Ok(Err(other)) => return Ok(Err(other)),
        };
        report.seconds = began.elapsed().as_secs_f64();
        conn.execute(
            "INSERT INTO learn_runs (model_id, global_version, trigger, last_case_id, outcome,
                 head_id, detail, started_at_ms, finished_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                self.model.id,
                self.model.version,
                trigger,
                last_case_id,
                report.outcome,
                report.head_id,
                serde_json::to_string(&report)?,
                started_at,
                now_ms()
            ],
        )?;
        metrics.learning_runs.inc();
        Ok(Ok(report))
    }

    fn run_watched(
        &mut self,
        conn: &Connection,
        trigger: &str,
        cancel: &Cancel,
        metrics: &ApplianceMetrics,
        progress: &mut dyn FnMut(Progress),
    ) -> anyhow::Result<Result<RunReport, NotRun>> {
        if let Err(not_run) = self.prepare_features(conn, cancel, progress)? {
            return Ok(Err(not_run));
        }
        let l = self.config.learning.clone();
        let (train, trained_on) = self.load_cases(conn, Split::Train, l.max_training_cases)?;
        let (holdout, held_out) = self.load_cases(conn, Split::Holdout, l.max_holdout_cases)?;
        if train.is_empty() || holdout.is_empty() {
            return Ok(Err(NotRun::NotEnough(format!(
                "{} training and {} held-out cases; a fine-tune needs at least one of each",
                train.len(),
                holdout.len()
            ))));
        }
        // A contract-2 package ships no reference set: its gate is the held-out cases alone.
        let reference = match self.frozen {
            Loaded::Head(_) => Some(self.reference_cases()?),
            Loaded::Pipeline(_) => None,
        };
        let parent = heads::champion(conn, &self.model.id, &self.model.version)?;
        let champion = match parent {
            Some(id) => heads::load(conn, &self.data_dir, &self.model, id)?,
            None => self.global.clone(),
        };
        progress(Progress::Started {
            train: train.len(),
            holdout: holdout.len(),
            epochs: l.epochs,
        });
        let epochs = l.epochs;
        let fine_tune_began = Instant::now();
        // FedProx pulls toward the fleet's global head when the site is federated.
        let anchor = self
            .federated
            .as_ref()
            .map(|(_, head)| head.clone())
            .unwrap_or_else(|| self.global.clone());
        // The study classifier learns from whole cases: each training case with a study label
        // runs through the backbone again, under the freshly trained segmentation MLP.
        let study: Vec<(i64, bool)> = trained_on
            .iter()
            .zip(&train)
            .filter_map(|(r, case)| case.finding.map(|finding| (r.case, finding)))
            .collect();
        let pixels = TrainingSet {
            cases: train.into_iter().filter(Case::has_pixel_labels).collect(),
        };
        let fine_tune_config = self.fine_tune_config();
        let (frozen, data_dir, model) = (&mut self.frozen, &self.data_dir, &self.model);
        let mut examples = |head: &Head| -> Result<Option<Vec<StudyExample>>, String> {
            let Loaded::Head(m) = &mut *frozen else {
                return Ok(Some(Vec::new()));
            };
            let spool = index::open_read_only(&pacs_bridge::store::index_path(data_dir))
                .map_err(|e| format!("the spool index: {e}"))?;
            let mut out = Vec::with_capacity(study.len());
            for &(id, finding) in &study {
                let whole = whole_case(m, conn, &spool, data_dir, model, id, Some(finding), cancel)
                    .map_err(|e| format!("training case {id}: {e:#}"))?;
                let whole = match whole {
                    Whole::Case(case) => case,
                    Whole::SeriesGone => {
                        tracing::warn!(case = id, "training case left out of the study classifier's fit: its series is no longer in the spool");
                        continue;
                    }
                    Whole::Cancelled => return Ok(None),
                };
                out.extend(
                    StudyExample::of(head, &whole)
                        .map_err(|e| format!("training case {id}: {e}"))?,
                );
            }
            Ok(Some(out))
        };
        let tuned = finetune::fine_tune_from_samples(
            &champion,
            &anchor,
            &pixels,
            &mut examples,
            &fine_tune_config,
            |epoch, loss| {
                metrics
                    .learning_progress_percent
                    .set((epoch * 100 / epochs.max(1)) as i64);
                tracing::info!(epoch, epochs, loss, "fine-tune epoch");
                progress(Progress::Epoch {
                    epoch,
                    epochs,
                    loss,
                })
            },
            cancel,
        );
        let fine_tune_seconds = fine_tune_began.elapsed().as_secs_f64();
        let (train_cases, holdout_cases) = (trained_on.len(), held_out.len());
        let report = |outcome: LearnOutcome, reasons: Vec<String>| RunReport {
            outcome,
            head_id: None,
            parent,
            trigger: trigger.to_string(),
            reasons,
            train_cases,
            holdout_cases,
            reference_cases: reference.as_ref().map_or(0, Vec::len),
            decision: None,
            fine_tune_seconds,
            seconds: 0.0,
        };
        let (candidate, fine_tune_report) = match tuned {
            Ok(t) => t,
            Err(FineTuneError::Cancelled { .. }) => return Ok(Err(NotRun::Yielded)),
            Err(e) => {
                // Bad training data (no lesion pixel anywhere, a diverging loss) is an outcome
                // to record, not a crash: the champion stays.
                tracing::warn!(reason = %e, "fine-tune failed; the champion stays");
                return Ok(Ok(report(LearnOutcome::Failed, vec![e.to_string()])));
            }
        };
        progress(Progress::Validating);
        let Some(HeldOutScores {
            first: before,
            second: after,
            without_series,
        }) = self.score_held_out(conn, &held_out, &holdout, [&champion, &candidate], cancel)?
        else {
            return Ok(Err(NotRun::Yielded));
        };
        let mut decision = match &reference {
            Some(reference) => gate::decide(
                &before,
                &after,
                &evaluate::score(&self.global, reference)?,
                &evaluate::score(&candidate, reference)?,
                &gate_config(&l),
            ),
            // A contract-2 package ships no reference set: its gate is the held-out cases alone.
            None => gate::decide_without_reference(&before, &after, &gate_config(&l)),
        };
        say_left_out(&mut decision, &without_series);
        let metrics_json = serde_json::json!({
            "gate": decision,
            "held_out_without_series": without_series,
            "fine_tune": {
                "epoch_losses": fine_tune_report.epoch_losses,
                "steps": fine_tune_report.steps,
                "samples_per_class": fine_tune_report.samples_per_class,
                "segmentation": format!("{:?}", fine_tune_report.segmentation),
                "classifier": format!("{:?}", fine_tune_report.classifier),
                "distance_to_start": fine_tune_report.distance_to_start,
                "distance_to_global": fine_tune_report.distance_to_global,
                "seconds": fine_tune_seconds,
                "device": fine_tune_report.device,
                "seed": l.seed,
            },
        });
        let id = heads::record(
            conn,
            &self.data_dir,
            &heads::NewHead {
                model: &self.model,
                parent,
                head: &candidate,
                accepted: decision.accepted,
                reasons: &decision.reasons,
                trigger,
                trained_on: &trained_on,
                held_out: &held_out,
                metrics: metrics_json,
                seconds: fine_tune_seconds,
            },
        )?;
        if decision.accepted {
            if let Some((base, _)) = &self.federated {
                let Some(package) = self.head_package() else {
                    anyhow::bail!("a federated learner without a contract-1 package");
                };
                crate::federated::offer_local(
                    &self.data_dir,
                    &package.manifest,
                    &candidate,
                    *base,
                    trained_on.len(),
                )?;
                tracing::info!(
                    head = id,
                    base_version = base,
                    "champion handed to the updater for the next federated round"
                );
            }
            metrics.learning_heads_accepted.inc();
            metrics.learning_champion_head.set(id);
            tracing::info!(head = id, parent = %heads::describe(parent), local_before = decision.local_champion, local_after = decision.local_candidate, "fine-tuned head accepted; it is the champion now");
        } else {
            metrics.learning_heads_refused.inc();
            tracing::warn!(head = id, reasons = ?decision.reasons, "fine-tuned head refused by the gate; the champion stays");
        }
        let outcome = if decision.accepted {
            LearnOutcome::Accepted
        } else {
            LearnOutcome::Refused
        };
        let mut report = report(outcome, decision.reasons.clone());
        report.head_id = Some(id);
        report.decision = Some(decision);
        Ok(Ok(report))
    }

    /// The daemon's learning loop: while inference is idle, store features of new cases and
    /// run a fine-tune when one is due; until `stop`. An error is logged and the loop waits a
    /// minute before it tries again: learning must not take the daemon down.
    pub fn serve(mut self, stop: &Cancel, metrics: Arc<ApplianceMetrics>) {
        self.stop = stop.clone();
        let mut quiet_until = Instant::now();
        let mut conn = None;
        // The loop looks at the job and case tables, which other processes change too, so it
        // waits a tick between looks; a stop ends the wait at once.
        while !stop.wait_timeout(LEARN_TICK) {
            if Instant::now() < quiet_until {
                continue;
            }
            let turn = match &conn {
                Some(c) => self.step(c, &metrics),
                None => db::open(&self.data_dir)
                    .map_err(anyhow::Error::from)
                    .map(|c| {
                        conn = Some(c);
                        true
                    }),
            };
            match turn {
                Ok(true) => {}
                Ok(false) => quiet_until = Instant::now() + Duration::from_secs(60),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "learner error; trying again in a minute");
                    quiet_until = Instant::now() + Duration::from_secs(60);
                    conn = None;
                }
            }
        }
    }

    /// Take the newest global head the updater handed over, through the gate: it becomes the
    /// champion only if it beats the local champion on the held-out cases (the same rule as a
    /// fine-tuned head) and is not worse on the reference set; otherwise the site keeps its
    /// own head (personalisation) and the refused row says why. Either way it is the head
    /// later fine-tunes are pulled toward and offered against, and its scores are handed back.
    fn take_global(
        &mut self,
        conn: &Connection,
        metrics: &ApplianceMetrics,
    ) -> anyhow::Result<bool> {
        let Some((adopted, _)) = &self.federated else {
            return Ok(false);
        };
        let Some((version, path, header)) = crate::federated::next_global(&self.data_dir, *adopted)
        else {
            return Ok(false);
        };
        let Some(_lock) = LearnLock::try_take(&self.data_dir)? else {
            return Ok(false);
        };
        let Some(package) = self.head_package() else {
            return Ok(false);
        };
        let head = match crate::federated::load_global(&path, &package.manifest) {
            Ok(head) => head,
            Err(e) => {
                tracing::error!(version, reason = %format!("{e:#}"), "federated global head does not fit the model; not taken");
                crate::federated::set_adopted(&self.data_dir, version)?;
                if let Some((adopted, _)) = self.federated.as_mut() {
                    *adopted = version;
                }
                return Ok(true);
            }
        };
        let l = self.config.learning.clone();
        let (holdout, held_out) = self.load_cases(conn, Split::Holdout, l.max_holdout_cases)?;
        let reference = self.reference_cases()?;
        let parent = heads::champion(conn, &self.model.id, &self.model.version)?;
        let champion = match parent {
            Some(id) => heads::load(conn, &self.data_dir, &self.model, id)?,
            None => self.global.clone(),
        };
        let baseline_reference = evaluate::score(&self.global, &reference)?;
        let global_reference = evaluate::score(&head, &reference)?;
        // Taken again after a restart when the daemon stops in between.
        let Some(HeldOutScores {
            first: champion_local,
            second: global_local,
            without_series,
        }) = self.score_held_out(
            conn,
            &held_out,
            &holdout,
            [&champion, &head],
            &self.stop.child(),
        )?
        else {
            return Ok(false);
        };
        let gate_config = gate_config(&l);
        let adopt_without_local_cases = self
            .config
            .federation
            .as_ref()
            .is_some_and(|f| f.adopt_without_local_cases);
        let evidence = global_local.segmentation_cases;
        let mut decision = if evidence < l.min_holdout_cases && adopt_without_local_cases {
            tracing::info!(
                version,
                held_out = evidence,
                min_holdout_cases = l.min_holdout_cases,
                "too few local held-out cases to judge on: the federated global head is judged on the reference set alone"
            );
            gate::decide_on_reference_only(&baseline_reference, &global_reference, &gate_config)
        } else {
            gate::decide(
                &champion_local,
                &global_local,
                &baseline_reference,
                &global_reference,
                &gate_config,
            )
        };
        say_left_out(&mut decision, &without_series);
        let trigger = format!(
            "federated global {version} (round {}, {} sites, {})",
            header["round"],
            header["participants"],
            header["aggregator"].as_str().unwrap_or("?")
        );
        let id = heads::record(
            conn,
            &self.data_dir,
            &heads::NewHead {
                model: &self.model,
                parent,
                head: &head,
                accepted: decision.accepted,
                reasons: &decision.reasons,
                trigger: &trigger,
                trained_on: &[],
                held_out: &held_out,
                metrics: serde_json::json!({
                    "gate": decision,
                    "federated": header,
                    "held_out_without_series": without_series,
                }),
                seconds: 0.0,
            },
        )?;
        let mut scores = std::collections::BTreeMap::new();
        for (label, dice) in global_local.dice.iter().enumerate() {
            if dice.is_finite() {
                scores.insert(format!("dice_label_{}", label + 1), *dice);
            }
        }
        if let Some(auroc) = global_local.auroc.filter(|a| a.is_finite()) {
            scores.insert("auroc".to_string(), auroc);
        }
        crate::federated::write_evaluation(
            &self.data_dir,
            version,
            held_out.len() - without_series.len(),
            &scores,
        )?;
        crate::federated::set_adopted(&self.data_dir, version)?;
        if decision.accepted {
            metrics.learning_champion_head.set(id);
            tracing::info!(
                version,
                head = id,
                "federated global head accepted by the gate; it is the champion now"
            );
        } else {
            tracing::info!(version, head = id, reasons = ?decision.reasons, "federated global head refused by the gate: this site keeps its own champion");
        }
        self.federated = Some((version, head));
        self.round_due = Some(version);
        Ok(true)
    }

    /// One turn of the daemon's loop; `false` when it should wait a while.
    fn step(&mut self, conn: &Connection, metrics: &ApplianceMetrics) -> anyhow::Result<bool> {
        if inference_busy(conn)? {
            return Ok(true);
        }
        if self.take_global(conn, metrics)? {
            return Ok(true);
        }
        let due = match self.round_due.take() {
            Some(version) => Some(format!("federated round from global {version}")),
            None => self.due(conn)?,
        };
        let Some(trigger) = due else {
            // Store the features of new cases ahead of the fine-tune.
            if !self.cases_without_features(conn)?.is_empty() {
                let Some(_lock) = LearnLock::try_take(&self.data_dir)? else {
                    return Ok(false);
                };
                let cancel = self.stop.child();
                let done = Cancel::new();
                let data_dir = self.data_dir.clone();
                std::thread::scope(|scope| {
                    let watcher = scope.spawn(|| watch_inference(&data_dir, &cancel, &done));
                    let r = self.prepare_features(conn, &cancel, &mut |_| {});
                    done.cancel();
                    match watcher.join() {
                        Ok(Ok(())) => r,
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(anyhow::anyhow!("the inference watcher panicked")),
                    }
                })?
                .ok();
            }
            return Ok(true);
        };
        tracing::info!(trigger = %trigger, "fine-tune due");
        match self.run(&trigger, metrics, &mut |p| {
            if p == Progress::Yielded {
                tracing::info!(
                    "fine-tune yielded to inference; it starts over when the queue is idle"
                );
            }
        })? {
            Ok(report) => {
                tracing::info!(outcome = %report.outcome, head = ?report.head_id, seconds = report.seconds, "fine-tune finished");
                Ok(true)
            }
            Err(NotRun::Yielded) => Ok(true),
            Err(why) => {
                tracing::info!(reason = %why, "fine-tune not run");
                Ok(false)
            }
        }
    }
}

/// A case's group for the split: its patient, else its series, else itself.
const SPLIT_GROUP: &str =
    "COALESCE('patient:' || c.patient_key, 'series:' || c.series_uid, 'case:' || c.id)";

/// Split every accepted case of `model` that has none (in id order, in one transaction): the
/// split of its group if the group has one, else held out when the group is the first or
/// every `holdout_every`-th group of the model.
fn assign_splits(conn: &Connection, model: &str, holdout_every: usize) -> rusqlite::Result<()> {
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let pending: Vec<(i64, String)> = tx
        .prepare(&format!(
            "SELECT c.id, {SPLIT_GROUP} FROM cases c
             WHERE c.state = ?2 AND c.model_id = ?1
               AND c.id NOT IN (SELECT case_id FROM case_splits) ORDER BY c.id"
        ))?
        .query_map(params![model, CaseState::Accepted], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    let every = holdout_every.max(1) as i64;
    for (id, group) in pending {
        let known: Option<Split> = tx
            .query_row(
                &format!(
                    "SELECT s.split FROM case_splits s JOIN cases c ON c.id = s.case_id
                     WHERE c.model_id = ?1 AND {SPLIT_GROUP} = ?2 LIMIT 1"
                ),
                params![model, group],
                |r| r.get(0),
            )
            .optional()?;
        let split = match known {
            Some(split) => split,
            None => {
                let groups: i64 = tx.query_row(
                    &format!(
                        "SELECT COUNT(DISTINCT {SPLIT_GROUP}) FROM case_splits s
                         JOIN cases c ON c.id = s.case_id WHERE c.model_id = ?1"
                    ),
                    [model],
                    |r| r.get(0),
                )?;
                if groups % every == 0 {
                    Split::Holdout
                } else {
                    Split::Train
                }
            }
        };
        tx.execute(
            "INSERT INTO case_splits (case_id, split) VALUES (?1, ?2)",
            params![id, split],
        )?;
    }
    tx.commit()
}

/// The gate as `[learning]` configures it.
fn gate_config(l: &crate::config::LearningConfig) -> GateConfig {
    GateConfig {
        min_local_gain: l.min_local_gain,
        reference_margin: l.reference_margin,
        min_holdout_cases: l.min_holdout_cases,
        confidence: l.gate_confidence,
        local_margin: l.local_margin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LearningConfig;

    fn case(conn: &Connection, id: i64, kind: CaseKind, series: &str, finding: Option<bool>) {
        conn.execute(
            "INSERT INTO cases (id, label_sop_uid, origin, state, series_uid, model_id,
                 created_at_ms, kind, finding)
             VALUES (?1, ?2, 'dicom', 'accepted', ?3, 'm', ?1, ?4, ?5)",
            params![id, format!("sop{id}"), series, kind, finding],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO case_splits (case_id, split) VALUES (?1, 'train')",
            [id],
        )
        .unwrap();
    }

    fn features(conn: &Connection, id: i64, finding: Option<bool>) {
        conn.execute(
            "INSERT INTO case_features (case_id, backbone_sha256, slices, plane, pixel_ml,
                 finding, features_path, labels_path, labels_sha256, created_at_ms)
             VALUES (?1, 'b', 1, 1, 1.0, ?2, 'f', 'l', 'h', 0)",
            params![id, finding],
        )
        .unwrap();
    }

    #[test]
    fn a_case_stored_whole_before_cases_kept_samples_is_read_back_to_be_sampled() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db::open(dir.path()).unwrap();
        let package = models::registry::AnyPackage::open(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/reference/head-ct"),
        )
        .unwrap();
        let model = Learnable::of(&package).unwrap();
        // 2 slices of 4 pixels, 16 features each: value = index; labels 0, 1, 2, 0, ...
        let (slices, plane) = (2usize, 4usize);
        let values: Vec<f32> = (0..slices * plane * model.features)
            .map(|v| v as f32)
            .collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::create_dir_all(dir.path().join("cases/1")).unwrap();
        std::fs::write(dir.path().join("cases/1/features.f32"), &bytes).unwrap();
        let labels: Vec<u8> = (0..slices * plane).map(|p| (p % 3) as u8).collect();
        std::fs::write(dir.path().join("cases/1/model_labels.u8"), &labels).unwrap();
        case(&conn, 1, CaseKind::Segmentation, "S1", None);
        conn.execute(
            "INSERT INTO case_features (case_id, backbone_sha256, slices, plane, pixel_ml,
                 finding, features_path, labels_path, labels_sha256, created_at_ms)
             VALUES (1, 'old', 2, 4, 0.5, 1, 'cases/1/features.f32', 'cases/1/model_labels.u8',
                 'h', 0)",
            [],
        )
        .unwrap();
        let whole = stored_whole(&conn, dir.path(), &model, "old", 1)
            .unwrap()
            .unwrap();
        assert_eq!((whole.slices, whole.plane), (slices, plane));
        assert_eq!((whole.features, whole.labels), (values, labels));
        assert_eq!((whole.finding, whole.pixel_ml), (Some(true), 0.5));
        // Another backbone's features, or a sample, are not read as whole.
        assert!(stored_whole(&conn, dir.path(), &model, "other", 1)
            .unwrap()
            .is_none());
        // A file that does not hold what its row says is refused with the reason.
        std::fs::write(dir.path().join("cases/1/features.f32"), &bytes[4..]).unwrap();
        let err = stored_whole(&conn, dir.path(), &model, "old", 1).unwrap_err();
        assert!(format!("{err:#}").contains("expected 512"), "{err:#}");
    }

    #[test]
    fn cases_of_one_patient_or_one_series_land_on_one_side_of_the_split() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db::open(dir.path()).unwrap();
        let add = |id: i64, patient: Option<&str>, series: &str| {
            conn.execute(
                "INSERT INTO cases (id, label_sop_uid, origin, state, series_uid, patient_key,
                     model_id, created_at_ms)
                 VALUES (?1, ?2, 'dicom', 'accepted', ?3, ?4, 'm', ?1)",
                params![id, format!("sop{id}"), series, patient],
            )
            .unwrap();
        };
        // Patients P1 (two series), P2, P3, P4; a series without a patient key twice; P1
        // again later.
        add(1, Some("P1"), "S1");
        add(2, Some("P1"), "S2");
        add(3, Some("P2"), "S3");
        add(4, None, "S4");
        add(5, None, "S4");
        add(6, Some("P3"), "S5");
        add(7, Some("P4"), "S6");
        assign_splits(&conn, "m", 2).unwrap();
        add(8, Some("P1"), "S7");
        add(9, Some("P2"), "S8");
        assign_splits(&conn, "m", 2).unwrap();
        let split = |id: i64| -> Split {
            conn.query_row(
                "SELECT split FROM case_splits WHERE case_id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
        };
        // Groups in order: P1 (held out), P2, series S4 (held out), P3, P4 (held out).
        let expected = [
            (1, Split::Holdout),
            (2, Split::Holdout),
            (3, Split::Train),
            (4, Split::Holdout),
            (5, Split::Holdout),
            (6, Split::Train),
            (7, Split::Holdout),
            (8, Split::Holdout),
            (9, Split::Train),
        ];
        for (id, want) in expected {
            assert_eq!(split(id), want, "case {id}");
        }
    }

    #[test]
    fn a_verified_sr_sets_the_finding_of_its_series_segmentation_or_stands_alone() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db::open(dir.path()).unwrap();
        // Series S1: a SEG with a lesion, then an SR saying there is none (the SR wins).
        case(&conn, 1, CaseKind::Segmentation, "S1", None);
        features(&conn, 1, Some(true));
        case(&conn, 2, CaseKind::Classification, "S1", Some(false));
        // Series S2: an SR alone, with features of its own.
        case(&conn, 3, CaseKind::Classification, "S2", Some(true));
        features(&conn, 3, Some(true));
        // Series S3: a SEG without an SR keeps what its pixels say.
        case(&conn, 4, CaseKind::Segmentation, "S3", None);
        features(&conn, 4, Some(true));
        let got: Vec<(i64, Option<bool>)> = stored_cases(&conn, "m", "b", Split::Train, 10)
            .unwrap()
            .into_iter()
            .map(|c| (c.id, c.finding))
            .collect();
        assert_eq!(got, [(1, Some(false)), (3, Some(true)), (4, Some(true))]);
        // The most recent ones within the limit, oldest first.
        let got: Vec<i64> = stored_cases(&conn, "m", "b", Split::Train, 2)
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(got, [3, 4]);
        // Another backbone's features are not used.
        assert!(stored_cases(&conn, "m", "other", Split::Train, 10)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn features_are_kept_for_the_most_recent_cases_of_each_split_and_removed_for_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db::open(dir.path()).unwrap();
        for id in 1..=5 {
            case(&conn, id, CaseKind::Segmentation, &format!("S{id}"), None);
        }
        conn.execute(
            "UPDATE case_splits SET split = 'holdout' WHERE case_id IN (1, 4)",
            [],
        )
        .unwrap();
        for id in 1..=5 {
            let (f, l) = (
                format!("cases/{id}/features.f32"),
                format!("cases/{id}/m.u8"),
            );
            std::fs::create_dir_all(dir.path().join(format!("cases/{id}"))).unwrap();
            std::fs::write(dir.path().join(&f), b"f").unwrap();
            std::fs::write(dir.path().join(&l), b"l").unwrap();
            conn.execute(
                "INSERT INTO case_features (case_id, backbone_sha256, slices, plane, pixel_ml,
                     finding, features_path, labels_path, labels_sha256, created_at_ms)
                 VALUES (?1, 'b', 1, 1, 1.0, 1, ?2, ?3, 'h', 0)",
                params![id, f, l],
            )
            .unwrap();
        }
        // Training 2, 3, 5: keep the last 2; held out 1, 4: keep the last 1.
        let mut keep: HashSet<i64> = window(&conn, "m", Split::Train, 2)
            .unwrap()
            .into_iter()
            .collect();
        keep.extend(window(&conn, "m", Split::Holdout, 1).unwrap());
        assert_eq!(keep, HashSet::from([3, 5, 4]));
        assert_eq!(prune(&conn, dir.path(), &keep).unwrap(), 2);
        for id in 1..=5 {
            let kept = keep.contains(&id);
            assert_eq!(
                dir.path().join(format!("cases/{id}/features.f32")).exists(),
                kept,
                "case {id}"
            );
        }
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM case_features", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 3);
        // A file already gone is no error; nothing more to prune.
        assert_eq!(prune(&conn, dir.path(), &keep).unwrap(), 0);
    }

    #[test]
    fn a_fine_tune_is_due_after_enough_new_cases_or_when_the_schedule_has_new_ones() {
        let hour = 3_600_000;
        let c = LearningConfig {
            min_new_cases: 8,
            interval_hours: 24,
            ..LearningConfig::default()
        };
        assert_eq!(trigger(8, None, 0, &c).as_deref(), Some("8 new cases"));
        assert_eq!(trigger(7, Some(0), 23 * hour, &c), None);
        assert_eq!(
            trigger(1, Some(0), 24 * hour, &c).as_deref(),
            Some("schedule (24 h)")
        );
        // The schedule alone does not re-train on what was already learnt.
        assert_eq!(trigger(0, Some(0), 100 * hour, &c), None);
        // interval_hours = 0: no schedule.
        let no_schedule = LearningConfig {
            interval_hours: 0,
            ..c.clone()
        };
        assert_eq!(trigger(7, Some(0), 1000 * hour, &no_schedule), None);
    }
}
