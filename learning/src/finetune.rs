//! Fine-tuning of the trainable head with candle. Only the head learns (the backbone is
//! frozen), so a fine-tune needs the head's inputs on the model grid, never the images: a
//! class-balanced sample of each case's pixels for the segmentation MLP (`crate::sampled`), and
//! for the study classifier what the caller computes of each whole case under the new MLP
//! ([`StudyExamples`]; the appliance runs the case's series through the backbone again).
//!
//! What is trained, and how:
//! - the per-pixel segmentation MLP of [`Head`], on the cases with pixel labels, with
//!   class-weighted softmax cross-entropy over a deterministic, class-balanced subsample of
//!   pixels. Each sampled pixel carries the importance weight `class_weight[c] * n_c / k_c`
//!   (`n_c` pixels of class `c` in the case, `k_c` sampled), so the loss estimates the
//!   full-image loss the head was trained on and the class prior does not drift towards the
//!   rare classes. When no case has pixel labels (study labels only), the MLP is kept as in
//!   the start head ([`SegmentationOutcome::Kept`]);
//! - then the study classifier (logistic on the maximum last-label probability and
//!   ln(1 + last-label ml)), on every case with a study label, pixel-labelled or not, with its
//!   inputs computed on the whole case by the (freshly trained or kept) segmentation head
//!   exactly as inference computes them;
//! - both with a FedProx proximal term `mu / 2 * ||w - w_global||^2` toward the global head,
//!   so that what is learnt locally stays close to what the federation shares.
//!
//! Determinism: pixel sampling and batch order come from a SplitMix64 stream seeded by
//! `FineTuneConfig::seed`; every reduction runs in a fixed order on the CPU, so one seed gives
//! bit-identical weights (tested). The CUDA device (feature `cuda`) is not covered by that
//! promise.
//!
//! The forward pass here ([`candle_probabilities`]) and the inference path
//! ([`Head::probabilities`], after tract or ONNX Runtime) compute the same function; the tests
//! hold them to 1e-5.

use crate::case::Case;
use crate::evaluate;
use candle_core::{Device, Tensor, Var};
use models::head::Head;
use radiant_core::rng::SplitMix64;
use radiant_core::Cancel;
use std::time::Instant;
use thiserror::Error;

/// The cases of one fine-tune.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingSet {
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// Adam (beta1 0.9, beta2 0.999, eps 1e-8).
    Adam,
    /// Plain SGD with heavy-ball momentum (0 for none).
    Sgd { momentum: f64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct FineTuneConfig {
    /// Seeds pixel sampling and batch order. Same seed, same data: the same weights, bit for bit.
    pub seed: u64,
    /// Passes over the sampled pixels.
    pub epochs: usize,
    /// Pixels per step.
    pub batch: usize,
    pub learning_rate: f64,
    pub optimizer: Optimizer,
    /// FedProx: weight of `1/2 ||w - w_global||^2` in the loss (0: plain fine-tuning).
    pub mu: f64,
    /// Loss weight per class (background first); `None`: all 1.
    pub class_weights: Option<Vec<f32>>,
    /// At most this many pixels of each class are sampled from each case.
    pub pixels_per_class: usize,
    /// Full-batch optimizer steps for the study classifier (0: keep the start head's).
    pub classifier_steps: usize,
    pub classifier_learning_rate: f64,
    /// Train on CUDA device 0 (needs the `cuda` feature).
    pub cuda: bool,
}

impl Default for FineTuneConfig {
    fn default() -> Self {
        FineTuneConfig {
            seed: 0,
            epochs: 10,
            batch: 1024,
            learning_rate: 3e-3,
            optimizer: Optimizer::Adam,
            mu: 0.01,
            class_weights: None,
            pixels_per_class: 1024,
            classifier_steps: 200,
            classifier_learning_rate: 0.05,
            cuda: false,
        }
    }
}

/// What became of the segmentation MLP.
#[derive(Debug, Clone, PartialEq)]
pub enum SegmentationOutcome {
    /// Trained on the sampled pixels of the `cases` cases with pixel labels.
    Trained { cases: usize },
    /// Kept as in the start head (bit for bit), and why.
    Kept(String),
}

/// What became of the study classifier.
#[derive(Debug, Clone, PartialEq)]
pub enum ClassifierOutcome {
    /// Trained on `cases` labelled cases; mean logistic loss before and after.
    Trained {
        cases: usize,
        loss_before: f32,
        loss_after: f32,
    },
    /// Kept as in the start head, and why.
    Kept(String),
}

/// How a fine-tune went.
#[derive(Debug, Clone, PartialEq)]
pub struct FineTuneReport {
    pub segmentation: SegmentationOutcome,
    /// Mean objective (weighted cross-entropy + proximal term) over each epoch's steps of the
    /// segmentation MLP; empty when it was kept.
    pub epoch_losses: Vec<f32>,
    /// Optimizer steps of the segmentation MLP; 0 when it was kept.
    pub steps: usize,
    /// Pixels sampled per class (background first); all 0 when the segmentation was kept.
    pub samples_per_class: Vec<usize>,
    pub classifier: ClassifierOutcome,
    /// Euclidean distance of all weights to the start and to the global head.
    pub distance_to_start: f64,
    pub distance_to_global: f64,
    pub seconds: f64,
    pub device: String,
}

#[derive(Debug, Error)]
pub enum FineTuneError {
    #[error("the training set has no cases")]
    EmptySet,
    #[error("case {index} ({id}): {reason}")]
    Case {
        index: usize,
        id: String,
        reason: String,
    },
    #[error("the {which} head: {reason}")]
    Head { which: &'static str, reason: String },
    #[error("configuration: {0}")]
    Config(String),
    #[error("the training set has no pixel of class {class}; cannot fine-tune on nothing")]
    NoPixels { class: usize },
    /// Neither part of the head could learn from the set; the start head is no candidate.
    #[error(
        "nothing to train: segmentation kept ({segmentation}); classifier kept ({classifier})"
    )]
    NothingToTrain {
        segmentation: String,
        classifier: String,
    },
    #[error("the loss is not finite ({loss}) at epoch {epoch}, step {step}")]
    NonFiniteLoss {
        epoch: usize,
        step: usize,
        loss: f32,
    },
    #[error("the fine-tuned weights are not finite")]
    NonFiniteWeights,
    /// The cancellation flag was raised; nothing was produced (a partly trained head is no
    /// candidate). During the study classifier's fit (after the last epoch), `epoch` is the
    /// configured epoch count and `step` the classifier's step.
    #[error("cancelled at epoch {epoch}, step {step}")]
    Cancelled { epoch: usize, step: usize },
    /// The study classifier's examples could not be computed (a case's series unreadable).
    #[error("study examples: {0}")]
    StudyExamples(String),
    #[error("device: {0}")]
    Device(String),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Fine-tune without progress reports or cancellation. See [`fine_tune_with`].
pub fn fine_tune(
    start: &Head,
    global: &Head,
    data: &TrainingSet,
    config: &FineTuneConfig,
) -> Result<(Head, FineTuneReport), FineTuneError> {
    fine_tune_with(start, global, data, config, |_, _| {}, &Cancel::new())
}

/// Fine-tune `start` on `data`, whole cases held in memory, pulled toward `global` by the
/// proximal term: [`fine_tune_from_samples`] with the study classifier's examples computed from
/// the cases themselves. An empty set is [`FineTuneError::EmptySet`].
pub fn fine_tune_with(
    start: &Head,
    global: &Head,
    data: &TrainingSet,
    config: &FineTuneConfig,
    progress: impl FnMut(usize, f32),
    cancel: &Cancel,
) -> Result<(Head, FineTuneReport), FineTuneError> {
    if data.cases.is_empty() {
        return Err(FineTuneError::EmptySet);
    }
    let mut examples = |head: &Head| -> Result<Option<Vec<StudyExample>>, String> {
        let mut out = Vec::new();
        for case in &data.cases {
            out.extend(StudyExample::of(head, case).map_err(|e| format!("{}: {e}", case.id))?);
        }
        Ok(Some(out))
    };
    fine_tune_from_samples(start, global, data, &mut examples, config, progress, cancel)
}

/// One example for the study classifier: what inference computes of a whole case under a
/// head (its largest last-label probability and its last-label volume) and the case's study
/// label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StudyExample {
    pub max_probability: f32,
    pub ml: f64,
    pub finding: bool,
}

impl StudyExample {
    /// The example of `case` (whole, not a sample) under `head`; `None` when the case has no
    /// study label.
    pub fn of(head: &Head, case: &Case) -> Result<Option<StudyExample>, String> {
        let Some(finding) = case.finding else {
            return Ok(None);
        };
        case.check(head.features, head.classes)?;
        if case.class_counts.is_some() {
            return Err("it keeps a sample of its grid; the study inputs need every pixel".into());
        }
        let inputs = evaluate::study_inputs(head, case);
        Ok(Some(StudyExample {
            max_probability: inputs.max_probability,
            ml: inputs.ml,
            finding,
        }))
    }
}

/// Computes the study classifier's examples under a head: every training case with a study
/// label, run through the head on its whole grid as inference runs it. `Ok(None)`: cancelled.
pub type StudyExamples<'a> = dyn FnMut(&Head) -> Result<Option<Vec<StudyExample>>, String> + 'a;

/// Fine-tune `start`, pulled toward `global` by the proximal term: the segmentation MLP on the
/// pixels of `pixels` (whole cases or class-balanced samples of them, `crate::sampled`), then
/// the study classifier on what `examples` computes under the freshly trained MLP (called once,
/// only when the classifier trains). `progress` gets (epoch number from 1, mean loss of that
/// epoch) after every epoch of the segmentation MLP (never when it is kept); `cancel` is read
/// before every optimizer step and, once true, ends the fine-tune with
/// [`FineTuneError::Cancelled`]. When neither part can learn, the result is
/// [`FineTuneError::NothingToTrain`].
pub fn fine_tune_from_samples(
    start: &Head,
    global: &Head,
    pixels: &TrainingSet,
    examples: &mut StudyExamples,
    config: &FineTuneConfig,
    mut progress: impl FnMut(usize, f32),
    cancel: &Cancel,
) -> Result<(Head, FineTuneReport), FineTuneError> {
    let began = Instant::now();
    check_inputs(start, global, pixels, config)?;
    let device = device(config)?;
    let segmented: Vec<&Case> = pixels
        .cases
        .iter()
        .filter(|c| c.has_pixel_labels())
        .collect();
    let (mut head, segmentation) = if segmented.is_empty() {
        let kept = SegmentationRun {
            outcome: SegmentationOutcome::Kept("no case has pixel labels".into()),
            epoch_losses: Vec::new(),
            steps: 0,
            samples_per_class: vec![0; start.classes],
        };
        (start.clone(), kept)
    } else {
        train_segmentation(
            start,
            global,
            &segmented,
            config,
            &device,
            &mut progress,
            cancel,
        )?
    };
    let classifier = train_classifier(&mut head, global, examples, config, &device, cancel)?;
    if let (SegmentationOutcome::Kept(segmentation), ClassifierOutcome::Kept(classifier)) =
        (&segmentation.outcome, &classifier)
    {
        return Err(FineTuneError::NothingToTrain {
            segmentation: segmentation.clone(),
            classifier: classifier.clone(),
        });
    }
    if head.parameters().iter().any(|w| !w.is_finite()) {
        return Err(FineTuneError::NonFiniteWeights);
    }
    let report = FineTuneReport {
        segmentation: segmentation.outcome,
        epoch_losses: segmentation.epoch_losses,
        steps: segmentation.steps,
        samples_per_class: segmentation.samples_per_class,
        classifier,
        distance_to_start: head.distance(start).unwrap_or(f64::NAN),
        distance_to_global: head.distance(global).unwrap_or(f64::NAN),
        seconds: began.elapsed().as_secs_f64(),
        device: format!("{device:?}"),
    };
    Ok((head, report))
}

/// The segmentation MLP's part of a fine-tune.
struct SegmentationRun {
    outcome: SegmentationOutcome,
    epoch_losses: Vec<f32>,
    steps: usize,
    samples_per_class: Vec<usize>,
}

/// Train the segmentation MLP of `start` on the pixels of `cases` (all with pixel labels);
/// the study classifier's weights are copied from `start`.
fn train_segmentation(
    start: &Head,
    global: &Head,
    cases: &[&Case],
    config: &FineTuneConfig,
    device: &Device,
    progress: &mut impl FnMut(usize, f32),
    cancel: &Cancel,
) -> Result<(Head, SegmentationRun), FineTuneError> {
    let (f, h, c) = (start.features, start.hidden, start.classes);
    let samples = sample_pixels(cases, start, config)?;
    let n = samples.targets.len();

    let var = |v: &[f32], shape: &[usize]| -> Result<Var, FineTuneError> {
        Ok(Var::from_tensor(&Tensor::from_vec(
            v.to_vec(),
            shape,
            device,
        )?)?)
    };
    let params = [
        var(&start.w1, &[h, f])?,
        var(&start.b1, &[h])?,
        var(&start.w2, &[c, h])?,
        var(&start.b2, &[c])?,
    ];
    let anchors = [
        Tensor::from_vec(global.w1.clone(), (h, f), device)?,
        Tensor::from_vec(global.b1.clone(), h, device)?,
        Tensor::from_vec(global.w2.clone(), (c, h), device)?,
        Tensor::from_vec(global.b2.clone(), c, device)?,
    ];
    let mut optimizer = OptimizerState::new(config.optimizer, &params)?;
    // Batch order: a second stream, independent of the pixel sampling one.
    let mut rng = SplitMix64::new(config.seed ^ 0x6f72_6465_725f_7273);
    let mut order: Vec<usize> = (0..n).collect();
    let mut epoch_losses = Vec::with_capacity(config.epochs);
    let mut steps = 0;
    let mut x = Vec::with_capacity(config.batch * f);
    let mut t = Vec::with_capacity(config.batch * c);
    for epoch in 0..config.epochs {
        rng.shuffle(&mut order);
        let mut total = 0f64;
        let mut count = 0usize;
        for (step, batch) in order.chunks(config.batch).enumerate() {
            if cancel.is_cancelled() {
                return Err(FineTuneError::Cancelled {
                    epoch: epoch + 1,
                    step,
                });
            }
            x.clear();
            t.clear();
            let weight: f32 = batch.iter().map(|&i| samples.weights[i]).sum();
            for &i in batch {
                x.extend_from_slice(&samples.features[i * f..(i + 1) * f]);
                let mut row = vec![0f32; c];
                row[usize::from(samples.targets[i])] = samples.weights[i] / weight;
                t.extend_from_slice(&row);
            }
            let xs = Tensor::from_slice(&x, (batch.len(), f), device)?;
            let ts = Tensor::from_slice(&t, (batch.len(), c), device)?;
            let logits = forward(&xs, &params)?;
            let cross_entropy = ts.mul(&log_softmax(&logits)?)?.sum_all()?.neg()?;
            let loss = (cross_entropy + proximal(&params, &anchors, config.mu)?)?;
            let value = loss.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(FineTuneError::NonFiniteLoss {
                    epoch: epoch + 1,
                    step,
                    loss: value,
                });
            }
            let grads = loss.backward()?;
            optimizer.step(&params, &grads, config.learning_rate)?;
            total += f64::from(value);
            count += 1;
            steps += 1;
        }
        let mean = (total / count.max(1) as f64) as f32;
        epoch_losses.push(mean);
        progress(epoch + 1, mean);
    }

    let to_vec = |v: &Var| v.as_tensor().flatten_all()?.to_vec1::<f32>();
    let head = Head {
        features: f,
        hidden: h,
        classes: c,
        w1: to_vec(&params[0])?,
        b1: to_vec(&params[1])?,
        w2: to_vec(&params[2])?,
        b2: to_vec(&params[3])?,
        cls_w: start.cls_w,
        cls_b: start.cls_b,
    };
    let run = SegmentationRun {
        outcome: SegmentationOutcome::Trained { cases: cases.len() },
        epoch_losses,
        steps,
        samples_per_class: samples.per_class,
    };
    Ok((head, run))
}

/// Class probabilities of `features` `[n, features, plane]` computed by candle (the forward
/// pass fine-tuning differentiates); returns `[n, plane, classes]` like
/// [`Head::probabilities`].
pub fn candle_probabilities(
    head: &Head,
    features: &[f32],
    n: usize,
    plane: usize,
) -> Result<Vec<f32>, FineTuneError> {
    head.check().map_err(|e| FineTuneError::Head {
        which: "given",
        reason: e.to_string(),
    })?;
    let (f, h, c) = (head.features, head.hidden, head.classes);
    if features.len() != n * f * plane {
        return Err(FineTuneError::Config(format!(
            "{} feature values, [{n}, {f}, {plane}] needs {}",
            features.len(),
            n * f * plane
        )));
    }
    let device = Device::Cpu;
    let x = Tensor::from_slice(features, (n, f, plane), &device)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n * plane, f))?;
    let params = [
        Tensor::from_slice(&head.w1, (h, f), &device)?,
        Tensor::from_slice(&head.b1, h, &device)?,
        Tensor::from_slice(&head.w2, (c, h), &device)?,
        Tensor::from_slice(&head.b2, c, &device)?,
    ];
    let logits = x
        .matmul(&params[0].t()?)?
        .broadcast_add(&params[1])?
        .relu()?
        .matmul(&params[2].t()?)?
        .broadcast_add(&params[3])?;
    Ok(log_softmax(&logits)?
        .exp()?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

fn forward(x: &Tensor, p: &[Var; 4]) -> candle_core::Result<Tensor> {
    x.matmul(&p[0].as_tensor().t()?)?
        .broadcast_add(p[1].as_tensor())?
        .relu()?
        .matmul(&p[2].as_tensor().t()?)?
        .broadcast_add(p[3].as_tensor())
}

/// Row-wise log-softmax of `[n, classes]`, shifted by the (constant) row maximum.
fn log_softmax(logits: &Tensor) -> candle_core::Result<Tensor> {
    let shifted = logits.broadcast_sub(&logits.max_keepdim(1)?.detach())?;
    let log_sum = shifted.exp()?.sum_keepdim(1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}

/// `mu / 2 * sum ||p - anchor||^2`.
fn proximal(params: &[Var], anchors: &[Tensor], mu: f64) -> candle_core::Result<Tensor> {
    let mut sum = params[0].as_tensor().sub(&anchors[0])?.sqr()?.sum_all()?;
    for (p, a) in params.iter().zip(anchors).skip(1) {
        sum = (sum + p.as_tensor().sub(a)?.sqr()?.sum_all()?)?;
    }
    sum.affine(mu / 2.0, 0.0)
}

fn device(config: &FineTuneConfig) -> Result<Device, FineTuneError> {
    if !config.cuda {
        return Ok(Device::Cpu);
    }
    #[cfg(feature = "cuda")]
    {
        Device::new_cuda(0).map_err(|e| FineTuneError::Device(format!("CUDA device 0: {e}")))
    }
    #[cfg(not(feature = "cuda"))]
    Err(FineTuneError::Device(
        "CUDA asked for, but this build has no `cuda` feature".into(),
    ))
}

fn check_inputs(
    start: &Head,
    global: &Head,
    data: &TrainingSet,
    config: &FineTuneConfig,
) -> Result<(), FineTuneError> {
    start.check().map_err(|e| FineTuneError::Head {
        which: "start",
        reason: e.to_string(),
    })?;
    global.check().map_err(|e| FineTuneError::Head {
        which: "global",
        reason: e.to_string(),
    })?;
    let shape = |h: &Head| (h.features, h.hidden, h.classes);
    if shape(start) != shape(global) {
        return Err(FineTuneError::Head {
            which: "global",
            reason: format!(
                "shape (features, hidden, classes) {:?} differs from the start head's {:?}",
                shape(global),
                shape(start)
            ),
        });
    }
    let bad = |what: String| Err(FineTuneError::Config(what));
    if config.batch == 0 || config.pixels_per_class == 0 {
        return bad("batch and pixels_per_class must be at least 1".into());
    }
    for (name, value) in [
        ("learning_rate", config.learning_rate),
        ("classifier_learning_rate", config.classifier_learning_rate),
    ] {
        if !value.is_finite() || value <= 0.0 {
            return bad(format!("{name} must be finite and positive, not {value}"));
        }
    }
    if !config.mu.is_finite() || config.mu < 0.0 {
        return bad(format!("mu must be finite and >= 0, not {}", config.mu));
    }
    if let Optimizer::Sgd { momentum } = config.optimizer {
        if !(0.0..1.0).contains(&momentum) {
            return bad(format!("SGD momentum must be in [0, 1), not {momentum}"));
        }
    }
    if let Some(w) = &config.class_weights {
        if w.len() != start.classes || w.iter().any(|x| !x.is_finite() || *x < 0.0) {
            return bad(format!(
                "class_weights {w:?}: need {} finite non-negative weights",
                start.classes
            ));
        }
    }
    for (index, case) in data.cases.iter().enumerate() {
        case.check(start.features, start.classes)
            .map_err(|reason| FineTuneError::Case {
                index,
                id: case.id.clone(),
                reason,
            })?;
    }
    Ok(())
}

/// Sampled pixels: features `[n, F]` row-major, class, importance weight.
struct Samples {
    features: Vec<f32>,
    targets: Vec<u8>,
    weights: Vec<f32>,
    per_class: Vec<usize>,
}

/// Up to `pixels_per_class` pixels of each class from each case (all with pixel labels),
/// uniformly without replacement, each weighted `class_weight * n_c / k_c`.
fn sample_pixels(
    cases: &[&Case],
    head: &Head,
    config: &FineTuneConfig,
) -> Result<Samples, FineTuneError> {
    let (f, c) = (head.features, head.classes);
    let class_weights = config.class_weights.clone().unwrap_or_else(|| vec![1.0; c]);
    let mut rng = SplitMix64::new(config.seed);
    let mut out = Samples {
        features: Vec::new(),
        targets: Vec::new(),
        weights: Vec::new(),
        per_class: vec![0; c],
    };
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); c];
    for case in cases {
        by_class.iter_mut().for_each(Vec::clear);
        for (i, label) in case.labels.iter().enumerate() {
            by_class[usize::from(*label)].push(i);
        }
        for (class, pixels) in by_class.iter_mut().enumerate() {
            let k = pixels.len().min(config.pixels_per_class);
            if k == 0 {
                continue;
            }
            // Partial Fisher-Yates: the first k entries become a uniform sample.
            for i in 0..k {
                let j = i + rng.below(pixels.len() - i);
                pixels.swap(i, j);
            }
            // What the pixels of this class stand for: all of the class's pixels in the case,
            // or in the whole grid when the case keeps only a sample.
            let represented = case
                .class_counts
                .as_ref()
                .map_or(pixels.len() as f32, |counts| counts[class] as f32);
            let weight = class_weights[class] * represented / k as f32;
            for &i in &pixels[..k] {
                let (slice, p) = (i / case.plane, i % case.plane);
                let base = slice * f * case.plane + p;
                out.features
                    .extend((0..f).map(|k| case.features[base + k * case.plane]));
                out.targets.push(class as u8);
                out.weights.push(weight);
            }
            out.per_class[class] += k;
        }
    }
    if let Some(class) = out.per_class.iter().position(|n| *n == 0) {
        // Background and every label must appear, or the head would learn to forget a class.
        return Err(FineTuneError::NoPixels { class });
    }
    Ok(out)
}

/// Logistic fit of the study classifier on the examples `examples` computes with the
/// segmentation weights in `head` (as inference computes them), proximal toward `global`.
fn train_classifier(
    head: &mut Head,
    global: &Head,
    examples: &mut StudyExamples,
    config: &FineTuneConfig,
    device: &Device,
    cancel: &Cancel,
) -> Result<ClassifierOutcome, FineTuneError> {
    if config.classifier_steps == 0 {
        return Ok(ClassifierOutcome::Kept("classifier_steps is 0".into()));
    }
    let cancelled = FineTuneError::Cancelled {
        epoch: config.epochs,
        step: 0,
    };
    if cancel.is_cancelled() {
        return Err(cancelled);
    }
    let Some(labelled) = examples(head).map_err(FineTuneError::StudyExamples)? else {
        return Err(cancelled);
    };
    let positives = labelled.iter().filter(|e| e.finding).count();
    if positives == 0 || positives == labelled.len() {
        return Ok(ClassifierOutcome::Kept(format!(
            "{} study labels, {positives} positive: both outcomes are needed",
            labelled.len()
        )));
    }
    let mut x = Vec::with_capacity(labelled.len() * 2);
    let mut y = Vec::with_capacity(labelled.len());
    for example in &labelled {
        if !example.max_probability.is_finite() || !example.ml.is_finite() || example.ml < 0.0 {
            return Err(FineTuneError::StudyExamples(format!(
                "a study example is not finite: maximum probability {}, {} ml",
                example.max_probability, example.ml
            )));
        }
        x.extend_from_slice(&[example.max_probability, (1.0 + example.ml).ln() as f32]);
        y.push(if example.finding { 1f32 } else { 0f32 });
    }
    let m = labelled.len();
    let xs = Tensor::from_vec(x, (m, 2), device)?;
    let ys = Tensor::from_vec(y, (m, 1), device)?;
    let params = [
        Var::from_tensor(&Tensor::from_vec(head.cls_w.to_vec(), (2, 1), device)?)?,
        Var::from_tensor(&Tensor::from_vec(vec![head.cls_b], 1, device)?)?,
    ];
    let anchors = [
        Tensor::from_vec(global.cls_w.to_vec(), (2, 1), device)?,
        Tensor::from_vec(vec![global.cls_b], 1, device)?,
    ];
    let objective = |params: &[Var; 2]| -> candle_core::Result<(Tensor, Tensor)> {
        let z = xs
            .matmul(params[0].as_tensor())?
            .broadcast_add(params[1].as_tensor())?;
        // Binary cross-entropy with logits: softplus(z) - y z, softplus computed stably.
        let softplus = (z.relu()? + z.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?;
        let bce = (softplus - ys.mul(&z)?)?.mean_all()?;
        let total = (&bce + proximal(params, &anchors, config.mu)?)?;
        Ok((bce, total))
    };
    let loss_before = objective(&params)?.0.to_scalar::<f32>()?;
    let mut optimizer = OptimizerState::new(config.optimizer, &params)?;
    for step in 0..config.classifier_steps {
        if cancel.is_cancelled() {
            return Err(FineTuneError::Cancelled {
                epoch: config.epochs,
                step,
            });
        }
        let (_, total) = objective(&params)?;
        let value = total.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(FineTuneError::NonFiniteLoss {
                epoch: config.epochs,
                step,
                loss: value,
            });
        }
        let grads = total.backward()?;
        optimizer.step(&params, &grads, config.classifier_learning_rate)?;
    }
    let loss_after = objective(&params)?.0.to_scalar::<f32>()?;
    let w = params[0].as_tensor().flatten_all()?.to_vec1::<f32>()?;
    head.cls_w = [w[0], w[1]];
    head.cls_b = params[1].as_tensor().to_vec1::<f32>()?[0];
    Ok(ClassifierOutcome::Trained {
        cases: m,
        loss_before,
        loss_after,
    })
}

/// Adam or SGD state, one slot per parameter.
struct OptimizerState {
    kind: Optimizer,
    step: i32,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
}

impl OptimizerState {
    fn new(kind: Optimizer, params: &[Var]) -> candle_core::Result<Self> {
        let zeros = || -> candle_core::Result<Vec<Tensor>> {
            params.iter().map(|p| p.as_tensor().zeros_like()).collect()
        };
        Ok(OptimizerState {
            kind,
            step: 0,
            first: zeros()?,
            second: zeros()?,
        })
    }

    fn step(
        &mut self,
        params: &[Var],
        grads: &candle_core::backprop::GradStore,
        lr: f64,
    ) -> candle_core::Result<()> {
        self.step += 1;
        for (i, p) in params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else {
                continue;
            };
            match self.kind {
                Optimizer::Adam => {
                    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
                    self.first[i] = (self.first[i].affine(b1, 0.0)? + g.affine(1.0 - b1, 0.0)?)?;
                    self.second[i] =
                        (self.second[i].affine(b2, 0.0)? + g.sqr()?.affine(1.0 - b2, 0.0)?)?;
                    let m_hat = self.first[i].affine(1.0 / (1.0 - b1.powi(self.step)), 0.0)?;
                    let v_hat = self.second[i].affine(1.0 / (1.0 - b2.powi(self.step)), 0.0)?;
                    let update = m_hat.div(&v_hat.sqrt()?.affine(1.0, eps)?)?;
                    p.set(&p.as_tensor().sub(&update.affine(lr, 0.0)?)?)?;
                }
                Optimizer::Sgd { momentum } => {
                    self.first[i] = (self.first[i].affine(momentum, 0.0)? + g)?;
                    p.set(&p.as_tensor().sub(&self.first[i].affine(lr, 0.0)?)?)?;
                }
            }
        }
        Ok(())
    }
}
