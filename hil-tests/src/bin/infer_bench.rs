//! Inference benchmark: per-study latency of the reference head-CT model, split by stage, for
//! the tract backend and for ONNX Runtime on the CPU (`ort`, the library of the pip
//! `onnxruntime` wheel), with Python `onnxruntime` running the same ONNX file on the same
//! input tensors in the same run as the reference.
//!
//! One study is the 108-slice head CT `fixtures/ct-series-lesion` (`--series DIR` for another).
//! A Rust study goes through the code the appliance runs: `pacs_bridge::volume::build`
//! (decode), then `models::infer::run` unchanged, whose backend is wrapped so the backbone call
//! is timed on its own. Stages:
//! - decode: DICOM files to a volume (`volume::build`);
//! - preprocess: `infer::Timings::preprocess_ms` (resample, window, batches of 16 slices);
//! - backbone: `Backend::run` only (input copy, session run, output copy, as the appliance pays);
//! - head: `Timings::inference_ms` minus the backbone (the Rust head on every pixel);
//! - argmax: the rest of `infer::run`'s wall time, which its `Timings` leave out (per-pixel
//!   argmax and maximum between batches, the input check);
//! - postprocess: `Timings::postprocess_ms` (labels back on the source grid, volumes, finding);
//! - total: decode plus the wall time of `infer::run`.
//!
//! Python (`hil-tests/peers/ort_reference.py`) runs the backbone only: the bench writes the
//! exact batches its ort backend was fed (captured in the warm-up study; preprocessing is
//! deterministic, and tract's captured batches are checked to be bit-identical) as `.npy`,
//! Python loads them with numpy and times `session.run` per batch, in two sessions: default
//! `SessionOptions` and `intra_op_num_threads` set to the Rust session's count. It also
//! compares its outputs with the features ort and tract returned (max abs diff).
//!
//! Models are loaded once; one warm-up study (Rust) and one warm-up pass (Python) precede the
//! `--rounds N` timed rounds (default 5); within a round the engines run one after the other,
//! starting with a different engine each round, so machine noise spreads over all of them. The
//! table shows the median and, in brackets, the minimum over rounds, in milliseconds.
//!
//! FLOPs: multiply-accumulates of the backbone counted from the ONNX graph by tract's cost
//! model (Conv: output elements x input channels / groups x kernel surface; MatMul alike),
//! node by node for one slice, plus the head's per pixel (features x hidden + hidden x
//! classes). 1 MAC = 2 FLOP.
//!
//! CUDA: an ort session is also opened with `OrtDevice::CudaOrCpu`; where it gets CUDA it is
//! benchmarked as a column of its own, otherwise the bench says so (the fallback is logged).
//!
//! Run with `scripts/bench.sh infer [--rounds N]` or `target/release/infer_bench --help`.

use anyhow::{bail, ensure, Context, Result};
use hil_tests::repo_root;
use models::backbone::Backend;
use models::infer::{self, Inference, Model};
use models::package::Package;
use models::InferError;
use onnx_backends::{OrtBackend, OrtDevice, TractBackend};
use pacs_bridge::volume::{build, Limits};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Target: the ort backbone within this factor of Python onnxruntime's.
const TARGET_ORT_VS_PYTHON: f64 = 1.1;
/// Pause between engines, outside every timer, so that ONNX Runtime's spinning worker threads
/// from one engine's run have gone idle before the next engine starts.
const SETTLE: Duration = Duration::from_millis(50);

const USAGE: &str =
    "usage: infer_bench [--rounds N] [--series DIR] [--model DIR] [--ort-library PATH] [--python PATH]";

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    if let Err(e) = run() {
        eprintln!("infer_bench: {e:#}");
        std::process::exit(1);
    }
}

struct Options {
    rounds: usize,
    series: PathBuf,
    model: PathBuf,
    ort_library: Option<PathBuf>,
    python: String,
}

fn parse_options() -> Result<Options> {
    let root = repo_root();
    let mut options = Options {
        rounds: 5,
        series: root.join("fixtures/ct-series-lesion"),
        model: root.join("models/reference/head-ct"),
        ort_library: std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
        python: "python3".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--rounds" => {
                let v = value()?;
                options.rounds = v.parse().with_context(|| format!("--rounds {v}"))?;
                ensure!(options.rounds > 0, "--rounds must be at least 1");
            }
            "--series" => options.series = value()?.into(),
            "--model" => options.model = value()?.into(),
            "--ort-library" => options.ort_library = Some(value()?.into()),
            "--python" => options.python = value()?,
            "-h" | "--help" => {
                println!("{USAGE}   (builds and fixtures first: scripts/bench.sh infer)");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} ({USAGE})"),
        }
    }
    Ok(options)
}

fn run() -> Result<()> {
    let options = parse_options()?;
    let package = Package::open(&options.model)
        .with_context(|| format!("model package {}", options.model.display()))?;
    let manifest = package.manifest.clone();
    let files = dicom_files(&options.series)?;
    let library = match &options.ort_library {
        Some(p) => p.clone(),
        None => wheel_library(&options.python)?,
    };

    // Load every engine once.
    let t = Instant::now();
    let tract = TractBackend::load(&package.backbone_path())?;
    let tract_load = t.elapsed();
    let b = &manifest.backbone;
    let tasks = task_count();
    let t = Instant::now();
    let ort = OrtBackend::load(
        &package.backbone_path(),
        &library,
        &b.input,
        &b.output,
        OrtDevice::Cpu,
    )?;
    let ort_load = t.elapsed();
    let ort_threads_started = task_count().saturating_sub(tasks);
    let ort_intra = ort.intra_threads();
    let tasks = task_count();
    let cuda = OrtBackend::load(
        &package.backbone_path(),
        &library,
        &b.input,
        &b.output,
        OrtDevice::CudaOrCpu,
    )?;
    let cuda_threads_started = task_count().saturating_sub(tasks);
    let cuda = (cuda.name() == "ort-cuda").then_some(cuda);

    let mut engines = vec![
        Engine::rust(Box::new(tract), &package)?,
        Engine::rust(Box::new(ort), &package)?,
    ];
    if let Some(cuda) = cuda {
        engines.push(Engine::rust(Box::new(cuda), &package)?);
    }

    println!("Radiant Edge inference benchmark");
    println!("  cpus (nproc):        {}", nproc());
    println!("  load average:        {}", load_average());
    println!(
        "  model:               {} {} ({})",
        manifest.id,
        manifest.version,
        package.backbone_path().display()
    );
    println!(
        "  series:              {} ({} files)",
        options.series.display(),
        files.len()
    );
    println!("  ONNX Runtime:        {}", library.display());
    println!(
        "  rounds:              {} (after one warm-up study per engine; engines interleaved)",
        options.rounds
    );
    println!(
        "  tract:               1 thread (tract's default executor); loaded in {:.1} ms",
        ms(tract_load)
    );
    println!(
        "  ort-cpu:             intra_op_num_threads = {ort_intra} (OrtBackend: available_parallelism), \
         {ort_threads_started} thread(s) started by loading (ONNX Runtime environment + session), \
         {cuda_threads_started} by the next session; loaded in {:.1} ms",
        ms(ort_load)
    );
    if engines.len() == 2 {
        println!(
            "  CUDA:                not available here: OrtDevice::CudaOrCpu fell back to the CPU \
             (warning above); no ort-cuda column"
        );
    } else {
        println!("  CUDA:                ort-cuda session opened; benchmarked as its own column");
    }

    // Warm-up study per Rust engine, capturing the backbone's inputs and outputs.
    let mut reference: Option<Inference> = None;
    for engine in &mut engines {
        engine.log.lock().unwrap().record = true;
        let (_, result) = engine.study(&files)?;
        engine.log.lock().unwrap().record = false;
        match &reference {
            None => {
                println!("  {:<20} {}", engine.name, describe(&result));
                reference = Some(result);
            }
            Some(r) => {
                println!("  {:<20} {}", engine.name, describe(&result));
                ensure!(
                    same_labels(r, &result),
                    "{} labels the study differently from tract",
                    engine.name
                );
            }
        }
    }
    let tensors = tempfile::tempdir().context("temp dir for tensors")?;
    let features = manifest.backbone.features;
    let (tract_log, ort_log) = (engines[0].take_log(), engines[1].take_log());
    ensure!(
        tract_log.inputs == ort_log.inputs,
        "tract and ort were fed different batches"
    );
    for (k, ((input, shape), out)) in ort_log.inputs.iter().zip(&ort_log.outputs).enumerate() {
        let out_shape = [shape[0], features, shape[2], shape[3]];
        write_npy(
            &tensors.path().join(format!("input_{k:03}.npy")),
            shape,
            input,
        )?;
        write_npy(
            &tensors.path().join(format!("ort_{k:03}.npy")),
            &out_shape,
            out,
        )?;
        write_npy(
            &tensors.path().join(format!("tract_{k:03}.npy")),
            &out_shape,
            &tract_log.outputs[k],
        )?;
    }
    let tract_vs_ort = max_abs_diff(&tract_log.outputs, &ort_log.outputs);
    let batches: Vec<usize> = ort_log.inputs.iter().map(|(_, s)| s[0]).collect();
    let slices: usize = batches.iter().sum();
    println!(
        "  batches:             {} ({batches:?} slices), the same .npy tensors for Python",
        batches.len()
    );

    let mut python = Python::start(
        &options.python,
        &package.backbone_path(),
        tensors.path(),
        ort_intra,
    )?;
    println!(
        "  python-ort:          onnxruntime {} (Python {}, numpy {}), CPUExecutionProvider",
        python.ready["onnxruntime"].as_str().unwrap_or("?"),
        python.ready["python"].as_str().unwrap_or("?"),
        python.ready["numpy"].as_str().unwrap_or("?"),
    );
    for name in PYTHON_SESSIONS {
        let s = &python.ready["sessions"][name];
        println!(
            "    {name:<8} intra_op_num_threads = {} ({}), {} thread(s) started by loading",
            s["intra_op_num_threads"],
            if name == "default" {
                "0: onnxruntime chooses"
            } else {
                "set to the Rust session's"
            },
            s["threads_started"]
        );
    }
    for name in PYTHON_SESSIONS {
        python.run(name)?; // warm-up
    }
    println!();

    // Timed rounds.
    let columns = engines.len() + PYTHON_SESSIONS.len();
    let mut measured: Vec<Vec<Stages>> = vec![Vec::new(); columns];
    for round in 0..options.rounds {
        for i in 0..columns {
            let c = (i + round) % columns;
            std::thread::sleep(SETTLE);
            if c < engines.len() {
                let (stages, _) = engines[c].study(&files)?;
                measured[c].push(stages);
            } else {
                let name = PYTHON_SESSIONS[c - engines.len()];
                let backbone = python.run(name)?;
                measured[c].push(Stages {
                    backbone,
                    ..Stages::python()
                });
            }
        }
        eprintln!(
            "  round {}: {}",
            round + 1,
            (0..columns)
                .map(|c| format!(
                    "{} {:.1} ms",
                    column_name(&engines, c),
                    measured[c].last().unwrap().headline()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let check = python.check()?;
    python.quit()?;
    println!("  load average after:  {}", load_average());
    println!();

    let names: Vec<String> = (0..columns).map(|c| column_name(&engines, c)).collect();
    let summaries: Vec<Summary> = measured.iter().map(|m| Summary::of(m)).collect();
    print_table(&names, &summaries, options.rounds);

    // Agreement.
    println!("Same answer (backbone features, max abs diff over all {slices} slices):");
    println!("  tract vs ort-cpu (Rust):      {tract_vs_ort:.3e}");
    println!(
        "  subnormal features:           tract {}, ort-cpu {} (of {} values)",
        subnormals(&tract_log.outputs),
        subnormals(&ort_log.outputs),
        ort_log.outputs.iter().map(Vec::len).sum::<usize>()
    );
    for (key, value) in check.as_object().into_iter().flatten() {
        let shown = match value.get("max_abs_diff").and_then(|v| v.as_f64()) {
            Some(d) => format!("{d:.3e}"),
            None => value.to_string(),
        };
        println!(
            "  {:<29} {shown}",
            format!("{} :", key.replace("_vs_", " vs python-")).replace(" :", ":")
        );
    }
    println!();

    // FLOPs.
    let flops = Flops::count(&package, &manifest)?;
    let study_backbone_gflop = 2.0 * flops.backbone_macs_per_slice as f64 * slices as f64 / 1e9;
    let study_head_gflop = 2.0 * flops.head_macs_per_slice as f64 * slices as f64 / 1e9;
    println!("FLOPs (1 MAC = 2 FLOP; counted by tract's cost model on the ONNX graph):");
    for (op, macs) in &flops.by_op {
        println!("  backbone {op:<20} {:>12} MAC per slice", macs);
    }
    println!(
        "  backbone total             {:>12} MAC per slice = {:.3} GFLOP per study of {slices} slices",
        flops.backbone_macs_per_slice, study_backbone_gflop
    );
    println!(
        "  head (Rust)                {:>12} MAC per slice ({} pixels x ({}x{} + {}x{})) = {:.3} GFLOP per study",
        flops.head_macs_per_slice,
        flops.plane,
        manifest.backbone.features,
        manifest.head.hidden,
        manifest.head.hidden,
        manifest.labels.len() + 1,
        study_head_gflop
    );
    println!("  achieved, on the median:");
    for (name, s) in names.iter().zip(&summaries) {
        let head = if s.head.median > 0.0 {
            format!(
                ", head {:.2} GFLOP/s",
                study_head_gflop / (s.head.median / 1e3)
            )
        } else {
            String::new()
        };
        println!(
            "    {name:<20} backbone {:.2} GFLOP/s{head}",
            study_backbone_gflop / (s.backbone.median / 1e3)
        );
    }
    println!();

    // Ratios against the targets.
    let ort = &summaries[1];
    let py_default = &summaries[engines.len()];
    let py_aligned = &summaries[engines.len() + 1];
    println!("Ratios (medians):");
    let r = ort.backbone.median / py_default.backbone.median;
    println!(
        "  ort-cpu / python-ort-default, backbone: {r:.3}  (target <= {TARGET_ORT_VS_PYTHON}: {})",
        if r <= TARGET_ORT_VS_PYTHON {
            "met"
        } else {
            "NOT met"
        }
    );
    let r = ort.backbone.median / py_aligned.backbone.median;
    println!(
        "  ort-cpu / python-ort-aligned, backbone: {r:.3}  (target <= {TARGET_ORT_VS_PYTHON}: {})",
        if r <= TARGET_ORT_VS_PYTHON {
            "met"
        } else {
            "NOT met"
        }
    );
    let r = ort.backbone.min / py_default.backbone.min;
    println!("  ort-cpu / python-ort-default, backbone, on the minimum: {r:.3}");
    let tract = &summaries[0];
    println!(
        "  tract / ort-cpu: backbone {:.2}, total {:.2}",
        tract.backbone.median / ort.backbone.median,
        tract.total.median / ort.total.median
    );
    if engines.len() > 2 {
        let cuda = &summaries[2];
        println!(
            "  ort-cuda / ort-cpu: backbone {:.2}, total {:.2}",
            cuda.backbone.median / ort.backbone.median,
            cuda.total.median / ort.total.median
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rust engines

/// What the wrapped backend saw: time in `Backend::run`, and (when recording) its batches.
#[derive(Default)]
struct Log {
    backbone: Duration,
    record: bool,
    inputs: Vec<(Vec<f32>, [usize; 4])>,
    outputs: Vec<Vec<f32>>,
}

/// A backend that times the wrapped backend's `run` and can record what went in and out.
/// Copies are made only while recording (the warm-up), never inside a timed study.
struct Timed {
    inner: Box<dyn Backend>,
    log: Arc<Mutex<Log>>,
}

impl Backend for Timed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn run(&mut self, input: &[f32], shape: [usize; 4]) -> Result<Vec<f32>, InferError> {
        let t = Instant::now();
        let out = self.inner.run(input, shape)?;
        let elapsed = t.elapsed();
        let mut log = self.log.lock().unwrap();
        log.backbone += elapsed;
        if log.record {
            log.inputs.push((input.to_vec(), shape));
            log.outputs.push(out.clone());
        }
        Ok(out)
    }
}

struct Engine {
    name: String,
    model: Model,
    log: Arc<Mutex<Log>>,
}

impl Engine {
    fn rust(backend: Box<dyn Backend>, package: &Package) -> Result<Engine> {
        let name = backend.name().to_string();
        let log = Arc::new(Mutex::new(Log::default()));
        let timed = Timed {
            inner: backend,
            log: log.clone(),
        };
        Ok(Engine {
            name,
            model: Model::new(package.clone(), Box::new(timed))?,
            log,
        })
    }

    /// One study: decode the files, then `infer::run` as the appliance calls it.
    fn study(&mut self, files: &[PathBuf]) -> Result<(Stages, Inference)> {
        let t = Instant::now();
        let series = build(files, &Limits::default()).context("decode the series")?;
        let decode = t.elapsed();
        self.log.lock().unwrap().backbone = Duration::ZERO;
        let t = Instant::now();
        let result = infer::run(&mut self.model, &series.volume)
            .with_context(|| format!("{} inference", self.name))?;
        let wall = ms(t.elapsed());
        let backbone = ms(self.log.lock().unwrap().backbone);
        let tm = &result.timings;
        let stages = Stages {
            decode: ms(decode),
            preprocess: tm.preprocess_ms,
            backbone,
            head: tm.inference_ms - backbone,
            argmax: wall - tm.preprocess_ms - tm.inference_ms - tm.postprocess_ms,
            postprocess: tm.postprocess_ms,
            total: ms(decode) + wall,
        };
        Ok((stages, result))
    }

    fn take_log(&mut self) -> Log {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

fn column_name(engines: &[Engine], c: usize) -> String {
    if c < engines.len() {
        engines[c].name.clone()
    } else {
        format!("python-ort-{}", PYTHON_SESSIONS[c - engines.len()])
    }
}

/// The warm-up study's answer, in one line.
fn describe(result: &Inference) -> String {
    let labels: Vec<String> = result
        .labels
        .iter()
        .map(|l| format!("{} {:.1} ml", l.name, l.ml))
        .collect();
    format!(
        "{}; {} {:.4}",
        labels.join(", "),
        result.finding.as_deref().unwrap_or("finding"),
        result.finding_probability.unwrap_or(f64::NAN)
    )
}

/// Label counts on the model grid within 3 pixels and the finding within 1e-3 (the
/// tolerances of hil-tests/tests/inference.rs).
fn same_labels(a: &Inference, b: &Inference) -> bool {
    a.labels.len() == b.labels.len()
        && a.labels
            .iter()
            .zip(&b.labels)
            .all(|(x, y)| x.model_pixels.abs_diff(y.model_pixels) <= 3)
        && match (a.finding_probability, b.finding_probability) {
            (Some(p), Some(q)) => (p - q).abs() <= 1e-3,
            (p, q) => p.is_none() && q.is_none(),
        }
}

/// Values whose arithmetic is slow on x86 unless flushed to zero.
fn subnormals(outputs: &[Vec<f32>]) -> usize {
    outputs
        .iter()
        .flatten()
        .filter(|v| v.is_subnormal())
        .count()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

// ---------------------------------------------------------------------------------------------
// Stages and statistics

/// One study's milliseconds per stage; NaN where an engine has no such stage.
#[derive(Debug, Clone, Copy)]
struct Stages {
    decode: f64,
    preprocess: f64,
    backbone: f64,
    head: f64,
    argmax: f64,
    postprocess: f64,
    total: f64,
}

impl Stages {
    /// Python runs the backbone only.
    fn python() -> Stages {
        Stages {
            decode: f64::NAN,
            preprocess: f64::NAN,
            backbone: f64::NAN,
            head: f64::NAN,
            argmax: f64::NAN,
            postprocess: f64::NAN,
            total: f64::NAN,
        }
    }

    fn headline(&self) -> f64 {
        if self.total.is_nan() {
            self.backbone
        } else {
            self.total
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
}

impl Stat {
    fn of(values: impl Iterator<Item = f64>) -> Stat {
        let mut v: Vec<f64> = values.collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let median = if v.is_empty() {
            f64::NAN
        } else if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Stat {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
        }
    }
}

struct Summary {
    decode: Stat,
    preprocess: Stat,
    backbone: Stat,
    head: Stat,
    argmax: Stat,
    postprocess: Stat,
    total: Stat,
}

impl Summary {
    fn of(m: &[Stages]) -> Summary {
        Summary {
            decode: Stat::of(m.iter().map(|s| s.decode)),
            preprocess: Stat::of(m.iter().map(|s| s.preprocess)),
            backbone: Stat::of(m.iter().map(|s| s.backbone)),
            head: Stat::of(m.iter().map(|s| s.head)),
            argmax: Stat::of(m.iter().map(|s| s.argmax)),
            postprocess: Stat::of(m.iter().map(|s| s.postprocess)),
            total: Stat::of(m.iter().map(|s| s.total)),
        }
    }
}

/// A table row: its label and the statistic it shows.
type Row = (&'static str, fn(&Summary) -> Stat);

fn print_table(names: &[String], summaries: &[Summary], rounds: usize) {
    println!("Per-study latency, ms: median (min) over {rounds} rounds");
    let width = 19;
    print!("  {:<26}", "stage");
    for n in names {
        print!("{n:>width$}");
    }
    println!();
    let rows: [Row; 7] = [
        ("decode (volume::build)", |s| s.decode),
        ("preprocess", |s| s.preprocess),
        ("inference: backbone", |s| s.backbone),
        ("inference: head (Rust)", |s| s.head),
        ("argmax (untimed in infer)", |s| s.argmax),
        ("postprocess", |s| s.postprocess),
        ("total", |s| s.total),
    ];
    for (label, get) in rows {
        print!("  {label:<26}");
        for s in summaries {
            let v = get(s);
            let cell = if v.median.is_nan() {
                "-".to_string()
            } else {
                format!("{:.2} ({:.2})", v.median, v.min)
            };
            print!("{cell:>width$}");
        }
        println!();
    }
    println!();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------------
// The Python reference

const PYTHON_SESSIONS: [&str; 2] = ["default", "aligned"];

struct Python {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    ready: serde_json::Value,
}

impl Python {
    fn start(python: &str, model: &Path, tensors: &Path, intra: usize) -> Result<Python> {
        let script = repo_root().join("hil-tests/peers/ort_reference.py");
        let mut child = Command::new(python)
            .arg(&script)
            .arg("--model")
            .arg(model)
            .arg("--batches")
            .arg(tensors)
            .arg("--intra-op-threads")
            .arg(intra.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {python} {}", script.display()))?;
        let stdin = child.stdin.take().context("python stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("python stdout")?);
        let mut p = Python {
            child,
            stdin,
            stdout,
            ready: serde_json::Value::Null,
        };
        p.ready = p.read()?;
        ensure!(p.ready["ready"] == true, "python reference: {}", p.ready);
        Ok(p)
    }

    fn read(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .context("read from python")?;
        ensure!(n > 0, "the python reference exited (see its stderr above)");
        let value: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("python said {line:?}"))?;
        ensure!(value.get("error").is_none(), "python reference: {value}");
        Ok(value)
    }

    fn send(&mut self, command: &str) -> Result<()> {
        writeln!(self.stdin, "{command}").context("write to python")?;
        self.stdin.flush().context("write to python")
    }

    /// Time every batch through one session; the sum of its `session.run` times, in ms.
    fn run(&mut self, session: &str) -> Result<f64> {
        self.send(&format!("run {session}"))?;
        let answer = self.read()?;
        answer["total_ms"]
            .as_f64()
            .with_context(|| format!("python run: {answer}"))
    }

    fn check(&mut self) -> Result<serde_json::Value> {
        self.send("check")?;
        Ok(self.read()?["check"].clone())
    }

    fn quit(mut self) -> Result<()> {
        self.send("quit")?;
        let status = self.child.wait().context("wait for python")?;
        ensure!(status.success(), "python reference exited with {status}");
        Ok(())
    }
}

/// `libonnxruntime.so.1.*` of the pip wheel that `python` imports.
fn wheel_library(python: &str) -> Result<PathBuf> {
    let out = Command::new(python)
        .args(["-c", "import onnxruntime, os, glob; print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so.*'))[0])"])
        .output()
        .with_context(|| format!("run {python}"))?;
    ensure!(
        out.status.success(),
        "no onnxruntime wheel for {python} (scripts/setup.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A float32 array as NumPy's `.npy` (version 1.0, little-endian, C order).
fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    ensure!(
        shape.iter().product::<usize>() == data.len(),
        "{}: shape {shape:?} does not hold {} values",
        path.display(),
        data.len()
    );
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    // magic (6) + version (2) + header length (2) + header, padded to 64 bytes, ends in \n.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// FLOPs

struct Flops {
    /// Multiply-accumulates per op kind, one slice.
    by_op: Vec<(String, u64)>,
    backbone_macs_per_slice: u64,
    head_macs_per_slice: u64,
    plane: usize,
}

impl Flops {
    fn count(package: &Package, manifest: &models::package::Manifest) -> Result<Flops> {
        use tract_onnx::prelude::*;
        use tract_onnx::tract_core::internal::Cost;
        let [rows, columns] = manifest.input.size;
        let shape = [1, manifest.input.channels.len(), rows, columns];
        let model = tract_onnx::onnx()
            .model_for_path(package.backbone_path())?
            .with_input_fact(0, f32::fact(shape).into())?
            .into_typed()?
            .into_decluttered()?;
        let mut by_op: std::collections::BTreeMap<String, u64> = Default::default();
        for id in model.eval_order()? {
            let node = &model.nodes[id];
            let inputs = model.node_input_facts(id)?;
            for (cost, count) in node.op.cost(&inputs)? {
                if let Cost::FMA(_) = cost {
                    let n = count
                        .to_i64()
                        .with_context(|| format!("cost of node {} is symbolic", node.name))?;
                    *by_op.entry(node.op.name().to_string()).or_default() += n as u64;
                }
            }
        }
        let plane = rows * columns;
        let classes = manifest.labels.len() + 1;
        let head = plane
            * (manifest.backbone.features * manifest.head.hidden + manifest.head.hidden * classes);
        Ok(Flops {
            backbone_macs_per_slice: by_op.values().sum(),
            by_op: by_op.into_iter().collect(),
            head_macs_per_slice: head as u64,
            plane,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Machine

fn dicom_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {} (run scripts/fixtures.sh)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no .dcm files in {}", dir.display());
    Ok(files)
}

fn task_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn nproc() -> String {
    std::thread::available_parallelism()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
