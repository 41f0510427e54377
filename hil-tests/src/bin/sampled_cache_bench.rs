//! What one labelled case of a contract-2 model costs learning, measured: the series runs
//! through the pipeline up to the trainable stage (as the learner does for a new case), the
//! case's class-balanced sample is drawn (`learning::sampled`), and the package's head is
//! fine-tuned on it. Prints one JSON object: the bytes of the stored sample against the bound
//! the manifest states and against the head's inputs on every voxel of the grid (what a dense
//! cache would hold), the times of each step, and the process's peak resident memory.
//!
//!     sampled_cache_bench --model PACKAGE_DIR --series SERIES_DIR --labels LABELS.u8
//!         [--backend ort-cpu|tract] [--ort-library PATH] [--epochs N]
//!
//! LABELS.u8 is one byte per voxel of the series in its slice order (the MR fixtures'
//! `truth.u8`); every non-zero voxel is the model's first label. `scripts/bench.sh models`
//! runs it on deepbet and on the 100 M-parameter synthetic package.

use anyhow::{bail, ensure, Context, Result};
use learning::finetune::{self, FineTuneConfig, TrainingSet};
use models::learnable::Learnable;
use models::pipeline::run::{trainable_inputs, PipelineModel};
use models::registry::AnyPackage;
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut series, mut labels) = (None, None, None);
    let (mut backend, mut library, mut epochs) = ("ort-cpu".to_string(), None, 10usize);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--series" => series = Some(PathBuf::from(value()?)),
            "--labels" => labels = Some(PathBuf::from(value()?)),
            "--backend" => backend = value()?,
            "--ort-library" => library = Some(PathBuf::from(value()?)),
            "--epochs" => epochs = value()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    let (model, series, labels) = (
        model.context("--model")?,
        series.context("--series")?,
        labels.context("--labels")?,
    );
    let package = AnyPackage::open(&model)?;
    let learnable = Learnable::of(&package).context("the package has no trainable stage")?;
    let AnyPackage::Pipeline(pipeline) = package else {
        bail!("a contract-2 package is needed");
    };
    let samples_per_class = learnable.samples_per_class;
    let choice = match backend.as_str() {
        "tract" => onnx_backends::Choice::Tract,
        "ort-cpu" => onnx_backends::Choice::Ort(onnx_backends::OrtDevice::Cpu),
        other => bail!("backend {other}: tract or ort-cpu"),
    };
    let graphs = onnx_backends::load_pipeline(choice, &pipeline, library.as_deref())?;
    let mut runner = PipelineModel::new(pipeline, graphs)?;

    let mut files: Vec<PathBuf> = std::fs::read_dir(&series)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    let volume = pacs_bridge::volume::build(&files, &pacs_bridge::volume::Limits::default())?;
    let volume = volume.volume;
    let source: Vec<u8> = std::fs::read(&labels)?
        .into_iter()
        .map(|v| u8::from(v != 0))
        .collect();
    ensure!(
        source.len() == volume.voxels.len(),
        "{} labels for {} voxels",
        source.len(),
        volume.voxels.len()
    );

    let t = Instant::now();
    let inputs = trainable_inputs(&mut runner, &volume, &source)?;
    let extract_ms = t.elapsed().as_secs_f64() * 1e3;
    let dense_bytes = 4 * (inputs.logits.len() + inputs.features.len()) + inputs.labels.len();
    let dense_on_grid_bytes = inputs.voxels() * (4 * inputs.width() + 1);
    let t = Instant::now();
    let case = learning::sampled::sample_case("case".into(), &inputs, samples_per_class, 0, 1.0)?;
    let sample_ms = t.elapsed().as_secs_f64() * 1e3;
    let case_bytes = 4 * case.features.len() + case.labels.len();
    let grid = inputs.shape;
    drop(inputs);

    let head = learnable.shipped_head()?;
    let config = FineTuneConfig {
        epochs,
        pixels_per_class: samples_per_class,
        classifier_steps: 0,
        ..FineTuneConfig::default()
    };
    let t = Instant::now();
    let (_, report) = finetune::fine_tune(
        &head,
        &head,
        &TrainingSet {
            cases: vec![case.clone()],
        },
        &config,
    )?;
    let fine_tune_ms = t.elapsed().as_secs_f64() * 1e3;
    let peak_kib: u64 = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "model": learnable.id,
            "backend": backend,
            "grid": grid,
            "head_inputs": learnable.features,
            "class_counts": case.class_counts,
            "samples": case.plane,
            "case_bytes": case_bytes,
            "case_bytes_bound": learnable.case_bytes(),
            "graph_outputs_bytes": dense_bytes,
            "dense_head_inputs_bytes": dense_on_grid_bytes,
            "extract_ms": extract_ms,
            "sample_ms": sample_ms,
            "fine_tune_ms": fine_tune_ms,
            "fine_tune_epochs": epochs,
            "fine_tune_losses": report.epoch_losses,
            "peak_rss_mib": peak_kib / 1024,
        })
    );
    Ok(())
}
