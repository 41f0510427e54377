//! One study through a contract-2 model: the series on the canonical grid (and resampled when
//! the manifest asks), then each stage in order: its region (all of it, or the box of an
//! earlier stage's mask with a margin), its input (slices, slabs, the whole region resized, or
//! Gaussian-blended patches) with its intensity steps, the graph, and the graph's scores turned
//! into decisions and post-processed. The segmentation stage's labels go back onto the source
//! voxels; per-slice and per-study scores become the finding's probability.

use super::grid::{resize, AxisMap, Grid};
use super::intensity::{self, Windows};
use super::manifest::{
    Activation, Decision, DecisionGrid, Interpolation, Layout, PipelineManifest, RegionFrom,
    ScoreLevel, Spatial, Stage, Trainable,
};
use super::trainable::{self, TrainableInputs};
use super::{Graph, PipelinePackage};
use crate::head::Head;
use crate::infer::{Inference, LabelVolume, StageTiming, Timings};
use crate::InferError;
use radiant_core::Volume;
use std::collections::HashMap;
use std::time::Instant;

/// Slices per graph run for slice and slab stages.
pub const SLICE_BATCH: usize = 16;
/// Most patches one stage may run on one study: a tiny patch with a large overlap over a large
/// region is refused with the count instead of running for hours.
pub const MAX_PATCHES: usize = 4096;

/// A loaded contract-2 model: its package and one graph per stage.
pub struct PipelineModel {
    pub package: PipelinePackage,
    pub graphs: Vec<Box<dyn Graph>>,
    /// The head the trainable stage applies instead of its graph's own output: a fine-tuned
    /// one. `None`: the graph's output, which the shipped head reproduces.
    head: Option<Head>,
}

impl PipelineModel {
    pub fn new(
        package: PipelinePackage,
        graphs: Vec<Box<dyn Graph>>,
    ) -> Result<PipelineModel, InferError> {
        if graphs.len() != package.manifest.stages.len() {
            return Err(InferError::Backend(format!(
                "{} graphs loaded for {} stages",
                graphs.len(),
                package.manifest.stages.len()
            )));
        }
        Ok(PipelineModel {
            package,
            graphs,
            head: None,
        })
    }

    /// Use `head` in the trainable stage (`None`: the graph's own output); a head whose shape
    /// does not fit the stage is refused.
    pub fn set_head(&mut self, head: Option<Head>) -> Result<(), InferError> {
        if let Some(h) = &head {
            let Some((index, t)) = self.package.trainable() else {
                return Err(InferError::Head(format!(
                    "model {} has no trainable stage",
                    self.package.manifest.id
                )));
            };
            let classes = stage_classes(&self.package.manifest.stages[index]);
            h.check()?;
            if (h.features, h.hidden, h.classes) != (t.head_inputs(classes), t.hidden, classes) {
                return Err(InferError::Head(format!(
                    "a head of {}/{}/{} (inputs/hidden/classes) does not fit stage {}, which \
                     needs {}/{}/{classes}",
                    h.features,
                    h.hidden,
                    h.classes,
                    self.package.manifest.stages[index].name,
                    t.head_inputs(classes),
                    t.hidden
                )));
            }
        }
        self.head = head;
        Ok(())
    }

    /// The head in use (`None`: the graph's own output).
    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    /// The runtime of the first graph ("tract", "ort-cpu", "ort-cuda").
    pub fn backend_name(&self) -> &'static str {
        self.graphs.first().map(|g| g.name()).unwrap_or("none")
    }
}

/// What a stage left for later stages: its labels on its decision grid and the region that
/// grid covers.
struct StageMask {
    labels: Grid<u8>,
    lo: [usize; 3],
    hi: [usize; 3],
}

/// Classes of a per-voxel stage's decisions, background included.
fn stage_classes(stage: &Stage) -> usize {
    match stage.scores.decision {
        Some(Decision::Argmax) => stage.scores.channels,
        _ => stage.scores.channels + 1,
    }
}

/// How far a run went.
enum Ran {
    Inference(Inference),
    /// Stopped at the trainable stage, with its inputs.
    Tapped(TrainableInputs),
}

/// Run `model` on `volume`.
pub fn run(model: &mut PipelineModel, volume: &Volume) -> Result<Inference, InferError> {
    match run_stages(model, volume, None)? {
        Ran::Inference(inference) => Ok(inference),
        Ran::Tapped(_) => Err(InferError::Backend(
            "the run stopped at the trainable stage unasked".into(),
        )),
    }
}

/// Run `model` on `volume` through its trainable stage and return that stage's head inputs,
/// with `labels` (a class per source voxel, 0 background) brought onto its graph grid by the
/// same reorientation, resampling, crop and resize as the image (nearest voxel).
pub fn trainable_inputs(
    model: &mut PipelineModel,
    volume: &Volume,
    labels: &[u8],
) -> Result<TrainableInputs, InferError> {
    if labels.len() != volume.voxels.len() {
        return Err(InferError::Geometry(format!(
            "a label map of {} voxels for a series of {}",
            labels.len(),
            volume.voxels.len()
        )));
    }
    if model.package.trainable().is_none() {
        return Err(InferError::Head(format!(
            "model {} has no trainable stage",
            model.package.manifest.id
        )));
    }
    match run_stages(model, volume, Some(labels))? {
        Ran::Tapped(inputs) => Ok(inputs),
        Ran::Inference(_) => Err(InferError::Backend(
            "the run never reached the trainable stage".into(),
        )),
    }
}

/// The class of every voxel of the trainable stage's graph grid that `head` decides, as the
/// stage decides on its scores (before post-processing).
pub fn head_labels(
    manifest: &PipelineManifest,
    head: &Head,
    inputs: &TrainableInputs,
) -> Result<Vec<u8>, InferError> {
    let stage = manifest
        .segmentation_stage()
        .map(|i| &manifest.stages[i])
        .filter(|s| s.trainable.is_some())
        .ok_or_else(|| InferError::Head(format!("model {} has no trainable stage", manifest.id)))?;
    let first = usize::from(stage.scores.channels != inputs.classes);
    let probabilities = trainable::probabilities(head, inputs, first)?;
    let grids = channel_grids(probabilities, stage.scores.channels, inputs.shape);
    Ok(decide(stage, &grids, inputs.shape).data)
}

/// Split channel-major scores into one grid per channel.
fn channel_grids(scores: Vec<f32>, channels: usize, shape: [usize; 3]) -> Vec<Grid<f32>> {
    if channels == 1 {
        return vec![Grid {
            shape,
            data: scores,
        }];
    }
    let spatial: usize = shape.iter().product();
    scores
        .chunks_exact(spatial)
        .map(|c| Grid {
            shape,
            data: c.to_vec(),
        })
        .collect()
}

fn run_stages(
    model: &mut PipelineModel,
    volume: &Volume,
    tap: Option<&[u8]>,
) -> Result<Ran, InferError> {
    let manifest = model.package.manifest.clone();
    let trainable_stage = model.package.trainable().map(|(i, _)| i);
    check_volume(volume, &manifest)?;
    let mut timings = Timings::default();
    let t = Instant::now();
    let axes = AxisMap::of(volume, manifest.input.orientation)?;
    let canonical = axes.canonical(volume, manifest.input.non_finite_value);
    let work = match &manifest.input.resample {
        None => canonical.clone(),
        Some(r) => {
            let shape = match (r.spacing_mm, r.shape) {
                (Some(target), _) => {
                    let spacing = axes.spacing(volume);
                    std::array::from_fn(|a| {
                        ((canonical.shape[a] as f64 * spacing[a] / target[a]).round() as usize)
                            .clamp(1, super::manifest::MAX_SIDE)
                    })
                }
                (None, Some(shape)) => shape,
                (None, None) => canonical.shape,
            };
            let voxels = shape.iter().product::<usize>();
            if voxels > super::manifest::MAX_GRID_VOXELS {
                return Err(InferError::Geometry(format!(
                    "resampling to {shape:?} makes {voxels} voxels, more than {}",
                    super::manifest::MAX_GRID_VOXELS
                )));
            }
            resize(&canonical, shape, r.interpolation)
        }
    };
    timings.preprocess_ms = t.elapsed().as_secs_f64() * 1e3;

    let mut windows = Windows::new();
    let mut masks: HashMap<String, StageMask> = HashMap::new();
    let segmentation = manifest.segmentation_stage();
    let mut seg_labels = Grid::filled(work.shape, 0u8);
    let mut seg_model_counts = Vec::new();
    let mut max_last_probability = 0f32;
    let mut finding_probability = None;
    let head = model.head.as_ref();
    for (index, (stage, graph)) in manifest
        .stages
        .iter()
        .zip(model.graphs.iter_mut())
        .enumerate()
    {
        let tapped = tap.is_some() && Some(index) == trainable_stage;
        let mut timing = StageTiming {
            stage: stage.name.clone(),
            ..StageTiming::default()
        };
        let t = Instant::now();
        let (lo, hi) = match &stage.region {
            None => ([0; 3], work.shape),
            Some(from) => region_from(from, &masks, work.shape, &stage.name)?,
        };
        timing.region = std::array::from_fn(|a| [lo[a], hi[a]]);
        let region = work.crop(lo, hi);
        timing.prepare_ms += t.elapsed().as_secs_f64() * 1e3;
        // The label map on this stage's region, when the run taps it.
        let region_labels = match tap {
            Some(labels) if tapped => {
                let on_canonical = axes.from_source(volume, labels);
                let on_work = if work.shape == canonical.shape {
                    on_canonical
                } else {
                    resize(&on_canonical, work.shape, Interpolation::NearestExact)
                };
                Some(on_work.crop(lo, hi))
            }
            _ => None,
        };
        let uses = StageUses {
            head: head.filter(|_| Some(index) == trainable_stage),
            tap: region_labels.as_ref(),
        };
        let outcome = run_stage(
            stage,
            graph.as_mut(),
            &region,
            &mut windows,
            &mut timing,
            uses,
        )?;
        let t = Instant::now();
        match outcome {
            StageOutcome::Tapped(inputs) => return Ok(Ran::Tapped(inputs)),
            StageOutcome::Voxels {
                labels,
                decision_grid,
                max_last,
            } => {
                if Some(index) == segmentation {
                    seg_labels.paste(lo, &labels);
                    seg_model_counts = (1..=manifest.labels.len())
                        .map(|c| {
                            decision_grid
                                .data
                                .iter()
                                .filter(|l| **l as usize == c)
                                .count() as u64
                        })
                        .collect();
                    max_last_probability = max_last;
                }
                masks.insert(
                    stage.name.clone(),
                    StageMask {
                        labels: decision_grid,
                        lo,
                        hi,
                    },
                );
            }
            StageOutcome::Classes(probabilities) => {
                if finding_probability.is_none() {
                    finding_probability = probabilities.first().map(|p| *p as f64);
                }
            }
        }
        timing.decide_ms += t.elapsed().as_secs_f64() * 1e3;
        timings.inference_ms += timing.graph_ms;
        timings.preprocess_ms += timing.prepare_ms;
        timings.postprocess_ms += timing.decide_ms;
        timings.stages.push(timing);
    }

    let t = Instant::now();
    let on_canonical = if work.shape == canonical.shape {
        seg_labels
    } else {
        resize(&seg_labels, canonical.shape, Interpolation::NearestExact)
    };
    let label_map = axes.to_source(volume, &on_canonical);
    let labels = manifest
        .labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let class = (i + 1) as u8;
            let voxels = label_map.iter().filter(|l| **l == class).count() as u64;
            LabelVolume {
                value: label.value,
                name: label.name.clone(),
                voxels,
                ml: voxels as f64 * volume.voxel_ml(),
                model_pixels: seg_model_counts.get(i).copied().unwrap_or(0),
            }
        })
        .collect();
    // Label values in the map are class indices; the manifest's values name them.
    let values: Vec<u8> = std::iter::once(0)
        .chain(manifest.labels.iter().map(|l| l.value))
        .collect();
    let label_map = label_map
        .into_iter()
        .map(|c| values.get(c as usize).copied().unwrap_or(0))
        .collect();
    timings.postprocess_ms += t.elapsed().as_secs_f64() * 1e3;
    Ok(Ran::Inference(Inference {
        model_id: manifest.id.clone(),
        model_version: manifest.version.clone(),
        backend: model.backend_name().to_string(),
        labels,
        finding: manifest.classification.as_ref().map(|c| c.name.clone()),
        finding_probability,
        max_label_probability: max_last_probability,
        timings,
        label_map,
    }))
}

fn check_volume(volume: &Volume, manifest: &PipelineManifest) -> Result<(), InferError> {
    let input = &manifest.input;
    if !volume.modality.eq_ignore_ascii_case(&input.modality) {
        return Err(InferError::WrongModality {
            expected: input.modality.clone(),
            found: volume.modality.clone(),
        });
    }
    if volume.slices < input.min_slices {
        return Err(InferError::TooFewSlices {
            min: input.min_slices,
            found: volume.slices,
        });
    }
    let voxels = volume.columns * volume.rows * volume.slices;
    if voxels != volume.voxels.len() || voxels == 0 {
        return Err(InferError::Geometry(format!(
            "{} samples for {}x{}x{} voxels",
            volume.voxels.len(),
            volume.columns,
            volume.rows,
            volume.slices
        )));
    }
    if !volume.spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
        return Err(InferError::Geometry(format!(
            "voxel spacing {:?} is not positive",
            volume.spacing
        )));
    }
    Ok(())
}

/// The box of an earlier stage's foreground, on the working grid. On the earlier stage's
/// decision grid, a plane counts when more than `min_slice_fraction` of it is foreground; the
/// box's centre and size are scaled to that stage's region, the size grown by the margin on
/// each side, both rounded half to even and the bounds truncated, in f32 (deepbet's
/// `get_bbox_with_margin`), then clipped to the region.
fn region_from(
    from: &RegionFrom,
    masks: &HashMap<String, StageMask>,
    work: [usize; 3],
    stage: &str,
) -> Result<([usize; 3], [usize; 3]), InferError> {
    let mask = masks.get(&from.stage).ok_or_else(|| {
        InferError::Backend(format!("stage {stage}: stage {} left no mask", from.stage))
    })?;
    let shape = mask.labels.shape;
    let mut counts = [
        vec![0usize; shape[0]],
        vec![0usize; shape[1]],
        vec![0usize; shape[2]],
    ];
    for i in 0..shape[0] {
        for j in 0..shape[1] {
            for k in 0..shape[2] {
                if mask.labels.data[mask.labels.index(i, j, k)] != 0 {
                    counts[0][i] += 1;
                    counts[1][j] += 1;
                    counts[2][k] += 1;
                }
            }
        }
    }
    let mut lo = [0; 3];
    let mut hi = [0; 3];
    let grow = 1.0f32 + 2.0f32 * from.margin as f32;
    for a in 0..3 {
        let plane = shape.iter().product::<usize>() / shape[a];
        let inside: Vec<usize> = (0..shape[a])
            .filter(|r| {
                let c = counts[a][*r];
                c > 0 && c as f64 / plane as f64 > from.min_slice_fraction
            })
            .collect();
        let (Some(first), Some(last)) = (inside.first(), inside.last()) else {
            return Err(InferError::EmptyRegion {
                stage: stage.to_string(),
                from: from.stage.clone(),
            });
        };
        let extent = mask.hi[a] - mask.lo[a];
        let scale = extent as f32 / shape[a] as f32;
        let centre = (((last + 1 + first) as f64 / 2.0) as f32 * scale).round_ties_even();
        let size = ((((last + 1 - first) as f32) * scale) * grow).round_ties_even();
        let start = ((centre - size / 2.0) as i64).clamp(0, extent as i64) as usize;
        let end = ((centre + size / 2.0) as i64).clamp(0, extent as i64) as usize;
        lo[a] = (mask.lo[a] + start).min(work[a]);
        hi[a] = (mask.lo[a] + end).min(work[a]);
        if hi[a] <= lo[a] {
            return Err(InferError::EmptyRegion {
                stage: stage.to_string(),
                from: from.stage.clone(),
            });
        }
    }
    Ok((lo, hi))
}

enum StageOutcome {
    /// Labels on the region (class indices), the labels on the decision grid, and the largest
    /// probability of the last class.
    Voxels {
        labels: Grid<u8>,
        decision_grid: Grid<u8>,
        max_last: f32,
    },
    /// One probability per channel.
    Classes(Vec<f32>),
    /// The trainable stage's head inputs, for learning (the run stops there).
    Tapped(TrainableInputs),
}

/// What a stage run uses beyond its graph: the head in place of the graph's output, or a
/// label map on the stage's region, when it only hands its head inputs (with those labels on
/// its grid) back.
#[derive(Clone, Copy)]
struct StageUses<'a> {
    head: Option<&'a Head>,
    tap: Option<&'a Grid<u8>>,
}

impl StageUses<'_> {
    /// Whether the stage runs its trainable part instead of its graph's declared output.
    fn trainable(&self, stage: &Stage) -> bool {
        stage.trainable.is_some() && (self.tap.is_some() || self.head.is_some())
    }
}

fn run_stage(
    stage: &Stage,
    graph: &mut dyn Graph,
    region: &Grid<f32>,
    windows: &mut Windows,
    timing: &mut StageTiming,
    uses: StageUses<'_>,
) -> Result<StageOutcome, InferError> {
    let channels = stage.scores.channels;
    // Patches are blended as probabilities, so their scores come back activated.
    let (mut scores, score_shape, activated) = match stage.spatial {
        Spatial::Volume => {
            let t = Instant::now();
            let shape = [stage.shape[0], stage.shape[1], stage.shape[2]];
            let resized = resize(region, shape, stage.resize);
            let input = channel_inputs(stage, &resized.data, windows)?;
            timing.prepare_ms += t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            match &stage.trainable {
                Some(trainable) if uses.trainable(stage) => {
                    let dims = [1, stage.input_channels(), shape[0], shape[1], shape[2]];
                    let (logits, features) =
                        run_trainable_graph(stage, trainable, graph, &input, &dims)?;
                    timing.graph_ms += t.elapsed().as_secs_f64() * 1e3;
                    let s = trainable.stride;
                    let inputs =
                        trainable_inputs_of(stage, trainable, logits, features, shape, [s, s, s])?;
                    let t = Instant::now();
                    let probabilities = match trainable_outcome(stage, inputs, uses, |labels| {
                        resize(labels, shape, Interpolation::NearestExact)
                    })? {
                        Ok(probabilities) => probabilities,
                        Err(tapped) => return Ok(tapped),
                    };
                    timing.decide_ms += t.elapsed().as_secs_f64() * 1e3;
                    (probabilities, shape, true)
                }
                _ => {
                    let out = run_graph(stage, graph, input, 1, &shape)?;
                    timing.graph_ms += t.elapsed().as_secs_f64() * 1e3;
                    (out, shape, false)
                }
            }
        }
        Spatial::Patches => {
            let t = Instant::now();
            let input = channel_inputs(stage, &region.data, windows)?;
            timing.prepare_ms += t.elapsed().as_secs_f64() * 1e3;
            let out = run_patches(stage, graph, &input, region.shape, timing)?;
            (out, region.shape, true)
        }
        Spatial::Slice | Spatial::Slab => {
            let t = Instant::now();
            let axis = stage.slice_axis;
            let stack = to_stack(region, axis);
            let shape = [stack.shape[0], stage.shape[0], stage.shape[1]];
            let resized = resize(&stack, shape, stage.resize);
            let mut prepared = channel_inputs(stage, &resized.data, windows)?;
            let plane = shape[1] * shape[2];
            let n = shape[0];
            let per_slice_channels = stage.input_channels();
            timing.prepare_ms += t.elapsed().as_secs_f64() * 1e3;
            let per_voxel = stage.scores.per == ScoreLevel::Voxel;
            let out_per_slice = if per_voxel {
                channels * plane
            } else {
                channels
            };
            // A trainable stage run for its head: class logits and features of every slice,
            // channel-major over the stack of slices.
            let trainable = stage.trainable.as_ref().filter(|_| uses.trainable(stage));
            let mut head_inputs = trainable.map(|_| (Vec::new(), Vec::new(), Vec::new()));
            let mut out = Vec::with_capacity(if trainable.is_some() {
                0
            } else {
                n * out_per_slice
            });
            let mut start = 0;
            while start < n {
                let end = (start + SLICE_BATCH).min(n);
                let t = Instant::now();
                let mut batch = Vec::with_capacity((end - start) * per_slice_channels * plane);
                for z in start..end {
                    if stage.spatial == Spatial::Slab {
                        let half = (per_slice_channels / 2) as isize;
                        for d in -half..=half {
                            let s = (z as isize + d).clamp(0, n as isize - 1) as usize;
                            batch.extend_from_slice(&prepared[s * plane..(s + 1) * plane]);
                        }
                    } else {
                        for c in 0..per_slice_channels {
                            let at = (c * n + z) * plane;
                            batch.extend_from_slice(&prepared[at..at + plane]);
                        }
                    }
                }
                timing.prepare_ms += t.elapsed().as_secs_f64() * 1e3;
                let t = Instant::now();
                match (trainable, head_inputs.as_mut()) {
                    (Some(trainable), Some((logits, features, items))) => {
                        let dims = [end - start, per_slice_channels, shape[1], shape[2]];
                        let (l, f) = run_trainable_graph(stage, trainable, graph, &batch, &dims)?;
                        logits.push(l);
                        features.push(f);
                        items.push(end - start);
                    }
                    _ => out.extend(run_graph(
                        stage,
                        graph,
                        batch,
                        end - start,
                        &[shape[1], shape[2]],
                    )?),
                }
                timing.graph_ms += t.elapsed().as_secs_f64() * 1e3;
                start = end;
            }
            prepared.clear();
            let mut head_scores = None;
            if let (Some(trainable), Some((logits, features, items))) = (trainable, head_inputs) {
                let t = Instant::now();
                let classes = stage_classes(stage);
                let s = trainable.stride;
                let cells = plane / (s * s);
                let logits = by_channel_of(&logits, &items, classes, plane);
                let features = by_channel_of(&features, &items, trainable.channels, cells);
                let inputs =
                    trainable_inputs_of(stage, trainable, logits, features, shape, [1, s, s])?;
                match trainable_outcome(stage, inputs, uses, |labels| {
                    resize(&to_stack(labels, axis), shape, Interpolation::NearestExact)
                })? {
                    Ok(probabilities) => head_scores = Some(probabilities),
                    Err(tapped) => return Ok(tapped),
                }
                timing.decide_ms += t.elapsed().as_secs_f64() * 1e3;
            }
            if !per_voxel {
                // Per slice: the study's probability of a channel is its largest over slices.
                let t = Instant::now();
                activate(&mut out, stage.scores.activation, channels, 1);
                let result = (0..channels)
                    .map(|c| (0..n).map(|z| out[z * channels + c]).fold(0f32, f32::max))
                    .collect();
                timing.decide_ms += t.elapsed().as_secs_f64() * 1e3;
                return Ok(StageOutcome::Classes(result));
            }
            // [n, K, h, w] -> [K, n, h, w] (a head's scores are already so), then each channel
            // back to the region's axis order.
            let activated = head_scores.is_some();
            let by_channel = match head_scores {
                Some(scores) => scores,
                None => by_channel_of(&[out], &[n], channels, plane),
            };
            let volume = n * plane;
            let mut regrouped = Vec::with_capacity(by_channel.len());
            let mut grid_shape = shape;
            for c in 0..channels {
                let g = from_stack(
                    &Grid {
                        shape,
                        data: by_channel[c * volume..(c + 1) * volume].to_vec(),
                    },
                    axis,
                );
                grid_shape = g.shape;
                regrouped.extend(g.data);
            }
            (regrouped, grid_shape, activated)
        }
    };
    let t = Instant::now();
    let spatial: usize = score_shape.iter().product();
    if stage.scores.per != ScoreLevel::Voxel {
        activate(&mut scores, stage.scores.activation, channels, 1);
        timing.decide_ms += t.elapsed().as_secs_f64() * 1e3;
        return Ok(StageOutcome::Classes(scores));
    }
    if !activated {
        activate(&mut scores, stage.scores.activation, channels, spatial);
    }
    let decide_on = match stage.scores.grid {
        DecisionGrid::Model => score_shape,
        DecisionGrid::Region => region.shape,
    };
    // One channel is the scores themselves; several are split without resizing yet.
    let channel_grids = channel_grids(scores, channels, score_shape);
    let max_last = channel_grids
        .last()
        .map(|g| g.data.iter().copied().fold(0f32, f32::max))
        .unwrap_or(0.0);
    let mut decided = if decide_on == score_shape {
        decide(stage, &channel_grids, decide_on)
    } else if stage.resize == Interpolation::NearestExact {
        // Nearest-exact picks a score, so deciding first and resizing the decisions gives the
        // same labels as resizing every channel's scores and deciding after, on a quarter of
        // the bytes.
        let on_scores = decide(stage, &channel_grids, score_shape);
        drop(channel_grids);
        resize(&on_scores, decide_on, Interpolation::NearestExact)
    } else {
        let resized: Vec<Grid<f32>> = channel_grids
            .iter()
            .map(|g| resize(g, decide_on, stage.resize))
            .collect();
        drop(channel_grids);
        decide(stage, &resized, decide_on)
    };
    super::morphology::apply(&mut decided, &stage.postprocess);
    let labels = if decided.shape == region.shape {
        decided.clone()
    } else {
        resize(&decided, region.shape, Interpolation::NearestExact)
    };
    timing.decide_ms += t.elapsed().as_secs_f64() * 1e3;
    Ok(StageOutcome::Voxels {
        labels,
        decision_grid: decided,
        max_last,
    })
}

/// Run a trainable stage's graph on `input` of `dims` (`[n, C, spatial...]`) for its class
/// logits and features, each item-major as the graph gives them; their lengths are checked.
fn run_trainable_graph(
    stage: &Stage,
    trainable: &Trainable,
    graph: &mut dyn Graph,
    input: &[f32],
    dims: &[usize],
) -> Result<(Vec<f32>, Vec<f32>), InferError> {
    let mut outputs = graph.run_outputs(input, dims, &[&trainable.logits, &trainable.features])?;
    let (n, spatial) = (dims[0], dims[2..].iter().product::<usize>());
    let cells = spatial / trainable.stride.pow(dims.len() as u32 - 2);
    let expected = [
        n * stage_classes(stage) * spatial,
        n * trainable.channels * cells,
    ];
    if outputs.len() != 2 || outputs.iter().zip(expected).any(|(o, e)| o.len() != e) {
        return Err(InferError::Backend(format!(
            "stage {}: the graph gave outputs of {:?} values for input {dims:?}, expected \
             {expected:?} (class logits, features)",
            stage.name,
            outputs.iter().map(Vec::len).collect::<Vec<_>>()
        )));
    }
    if let Some(bad) = outputs.iter().flatten().find(|v| !v.is_finite()) {
        return Err(InferError::Backend(format!(
            "stage {}: the graph gave a non-finite logit or feature ({bad})",
            stage.name
        )));
    }
    let features = outputs.pop().unwrap_or_default();
    let logits = outputs.pop().unwrap_or_default();
    Ok((logits, features))
}

/// Item-major batches `[items, K, size]` as one channel-major block `[K, all items, size]`.
fn by_channel_of(batches: &[Vec<f32>], items: &[usize], k: usize, size: usize) -> Vec<f32> {
    let n: usize = items.iter().sum();
    let mut out = vec![0f32; k * n * size];
    let mut z0 = 0;
    for (batch, count) in batches.iter().zip(items) {
        for z in 0..*count {
            for c in 0..k {
                let from = (z * k + c) * size;
                let to = (c * n + z0 + z) * size;
                out[to..to + size].copy_from_slice(&batch[from..from + size]);
            }
        }
        z0 += count;
    }
    out
}

/// The head inputs of a trainable stage on its grid `shape` (features `stride` times coarser).
fn trainable_inputs_of(
    stage: &Stage,
    trainable: &Trainable,
    logits: Vec<f32>,
    features: Vec<f32>,
    shape: [usize; 3],
    stride: [usize; 3],
) -> Result<TrainableInputs, InferError> {
    let inputs = TrainableInputs {
        shape,
        classes: stage_classes(stage),
        logits,
        channels: trainable.channels,
        stride,
        features,
        labels: Vec::new(),
    };
    inputs.check().map_err(|e| {
        InferError::Backend(format!("stage {}: the graph's outputs: {e}", stage.name))
    })?;
    Ok(inputs)
}

/// A trainable stage's head scores (channel-major, as the stage's scores), or, when the run
/// only taps its inputs, the outcome that hands them back with the region's labels brought
/// onto the stage's grid by `onto_grid` (the image's own steps, nearest voxel).
fn trainable_outcome(
    stage: &Stage,
    mut inputs: TrainableInputs,
    uses: StageUses<'_>,
    onto_grid: impl Fn(&Grid<u8>) -> Grid<u8>,
) -> Result<Result<Vec<f32>, StageOutcome>, InferError> {
    if let Some(labels) = uses.tap {
        inputs.labels = onto_grid(labels).data;
        return Ok(Err(StageOutcome::Tapped(inputs)));
    }
    let head = uses
        .head
        .ok_or_else(|| InferError::Head(format!("stage {}: no head to run", stage.name)))?;
    let first = usize::from(stage.scores.channels != inputs.classes);
    Ok(Ok(trainable::probabilities(head, &inputs, first)?))
}

/// The stage's input channels, each a copy of `values` through its intensity steps,
/// concatenated (channel-major).
fn channel_inputs(
    stage: &Stage,
    values: &[f32],
    windows: &mut Windows,
) -> Result<Vec<f32>, InferError> {
    let mut out = Vec::with_capacity(values.len() * stage.channels.len());
    for steps in &stage.channels {
        let mut channel = values.to_vec();
        intensity::apply(&mut channel, steps, &stage.name, windows)?;
        out.extend(channel);
    }
    Ok(out)
}

/// Run the graph on `n` items of channel-major `input` (`[n, C, spatial]`), in the stage's
/// layout; returns channel-first scores `[n, K, spatial]` (or `[n, K]`), checked in length.
fn run_graph(
    stage: &Stage,
    graph: &mut dyn Graph,
    input: Vec<f32>,
    n: usize,
    spatial: &[usize],
) -> Result<Vec<f32>, InferError> {
    let c = stage.input_channels();
    let size: usize = spatial.iter().product();
    let channels_last = matches!(stage.layout, Layout::NHWC | Layout::NDHWC);
    let input = if channels_last {
        transpose(&input, n, c, size)
    } else {
        input
    };
    let mut shape = vec![n];
    if channels_last {
        shape.extend_from_slice(spatial);
        shape.push(c);
    } else {
        shape.push(c);
        shape.extend_from_slice(spatial);
    }
    let out = graph.run(&input, &shape)?;
    let k = stage.scores.channels;
    let per_voxel = stage.scores.per == ScoreLevel::Voxel;
    let expected = if per_voxel { n * k * size } else { n * k };
    if out.len() != expected {
        return Err(InferError::Backend(format!(
            "stage {}: the graph gave {} values for input {shape:?}, expected {expected}",
            stage.name,
            out.len()
        )));
    }
    if let Some(bad) = out.iter().find(|v| !v.is_finite()) {
        return Err(InferError::Backend(format!(
            "stage {}: the graph gave a non-finite score ({bad})",
            stage.name
        )));
    }
    Ok(if channels_last && per_voxel {
        transpose(&out, n, size, k)
    } else {
        out
    })
}

/// `[n, a, b]` to `[n, b, a]`.
fn transpose(data: &[f32], n: usize, a: usize, b: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for item in 0..n {
        let base = item * a * b;
        for i in 0..a {
            for j in 0..b {
                out[base + j * a + i] = data[base + i * b + j];
            }
        }
    }
    out
}

/// Softmax or sigmoid over `channels` channels of `spatial` values each, per item.
fn activate(scores: &mut [f32], activation: Activation, channels: usize, spatial: usize) {
    match activation {
        Activation::None => {}
        Activation::Sigmoid => scores
            .iter_mut()
            .for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
        Activation::Softmax => {
            for item in scores.chunks_exact_mut(channels * spatial) {
                for p in 0..spatial {
                    let max = (0..channels)
                        .map(|c| item[c * spatial + p])
                        .fold(f32::MIN, f32::max);
                    let mut sum = 0f32;
                    for c in 0..channels {
                        let e = (item[c * spatial + p] - max).exp();
                        item[c * spatial + p] = e;
                        sum += e;
                    }
                    for c in 0..channels {
                        item[c * spatial + p] /= sum;
                    }
                }
            }
        }
    }
}

/// Class index per voxel (0 = background).
fn decide(stage: &Stage, channels: &[Grid<f32>], shape: [usize; 3]) -> Grid<u8> {
    let mut out = Grid::filled(shape, 0u8);
    let threshold = stage.scores.threshold.unwrap_or(0.5);
    for (v, label) in out.data.iter_mut().enumerate() {
        match stage.scores.decision {
            Some(Decision::Argmax) => {
                let mut best = 0;
                for c in 1..channels.len() {
                    if channels[c].data[v] > channels[best].data[v] {
                        best = c;
                    }
                }
                *label = best as u8;
            }
            _ => {
                let mut best: Option<(usize, f32)> = None;
                for (c, g) in channels.iter().enumerate() {
                    let p = g.data[v];
                    if p > threshold && best.is_none_or(|(_, b)| p > b) {
                        best = Some((c, p));
                    }
                }
                *label = best.map(|(c, _)| c as u8 + 1).unwrap_or(0);
            }
        }
    }
    out
}

/// Patches of the stage's shape over the region at stride `shape · (1 − overlap)`, the last
/// patch flush with the far edge, each weighted by a Gaussian (σ = side / 8) and the sum
/// divided by the weights. A region smaller than a patch is padded with zeros.
fn run_patches(
    stage: &Stage,
    graph: &mut dyn Graph,
    input: &[f32],
    shape: [usize; 3],
    timing: &mut StageTiming,
) -> Result<Vec<f32>, InferError> {
    let patch = [stage.shape[0], stage.shape[1], stage.shape[2]];
    let overlap = stage.overlap.unwrap_or(0.5);
    let c_in = stage.input_channels();
    let k = stage.scores.channels;
    let padded: [usize; 3] = std::array::from_fn(|a| shape[a].max(patch[a]));
    let starts: Vec<Vec<usize>> = (0..3)
        .map(|a| {
            let stride = ((patch[a] as f64 * (1.0 - overlap)).floor() as usize).max(1);
            let last = padded[a] - patch[a];
            let mut s: Vec<usize> = (0..=last).step_by(stride).collect();
            if s.last() != Some(&last) {
                s.push(last);
            }
            s
        })
        .collect();
    let count: usize = starts.iter().map(Vec::len).product();
    if count > MAX_PATCHES {
        return Err(InferError::Backend(format!(
            "stage {}: {count} patches of {patch:?} over a region of {shape:?}, more than \
             {MAX_PATCHES}",
            stage.name
        )));
    }
    let weights: Vec<f32> = {
        let axis = |n: usize| -> Vec<f64> {
            let sigma = n as f64 / 8.0;
            let centre = (n as f64 - 1.0) / 2.0;
            (0..n)
                .map(|i| (-((i as f64 - centre).powi(2)) / (2.0 * sigma * sigma)).exp())
                .collect()
        };
        let (w0, w1, w2) = (axis(patch[0]), axis(patch[1]), axis(patch[2]));
        let mut w = Vec::with_capacity(patch.iter().product());
        for a in &w0 {
            for b in &w1 {
                for c in &w2 {
                    w.push(((a * b * c) as f32).max(1e-6));
                }
            }
        }
        w
    };
    let region_size: usize = shape.iter().product();
    let padded_size: usize = padded.iter().product();
    let patch_size: usize = patch.iter().product();
    let mut sum = vec![0f32; k * padded_size];
    let mut weight_sum = vec![0f32; padded_size];
    let at = |s: [usize; 3], i: usize, j: usize, l: usize| {
        ((s[0] + i) * padded[1] + s[1] + j) * padded[2] + s[2] + l
    };
    for &s0 in &starts[0] {
        for &s1 in &starts[1] {
            for &s2 in &starts[2] {
                let s = [s0, s1, s2];
                let t = Instant::now();
                let mut tensor = Vec::with_capacity(c_in * patch_size);
                for c in 0..c_in {
                    let channel = &input[c * region_size..(c + 1) * region_size];
                    for i in 0..patch[0] {
                        for j in 0..patch[1] {
                            for l in 0..patch[2] {
                                let (x, y, z) = (s0 + i, s1 + j, s2 + l);
                                tensor.push(if x < shape[0] && y < shape[1] && z < shape[2] {
                                    channel[(x * shape[1] + y) * shape[2] + z]
                                } else {
                                    0.0
                                });
                            }
                        }
                    }
                }
                timing.prepare_ms += t.elapsed().as_secs_f64() * 1e3;
                let t = Instant::now();
                let mut out = run_graph(stage, graph, tensor, 1, &patch)?;
                timing.graph_ms += t.elapsed().as_secs_f64() * 1e3;
                let t = Instant::now();
                activate(&mut out, stage.scores.activation, k, patch_size);
                let mut p = 0;
                for i in 0..patch[0] {
                    for j in 0..patch[1] {
                        for l in 0..patch[2] {
                            let v = at(s, i, j, l);
                            weight_sum[v] += weights[p];
                            for c in 0..k {
                                sum[c * padded_size + v] += out[c * patch_size + p] * weights[p];
                            }
                            p += 1;
                        }
                    }
                }
                timing.decide_ms += t.elapsed().as_secs_f64() * 1e3;
            }
        }
    }
    // The blended probabilities, cropped back to the region's shape.
    let mut out = Vec::with_capacity(k * region_size);
    for c in 0..k {
        for x in 0..shape[0] {
            for y in 0..shape[1] {
                for z in 0..shape[2] {
                    let v = (x * padded[1] + y) * padded[2] + z;
                    out.push(sum[c * padded_size + v] / weight_sum[v].max(1e-12));
                }
            }
        }
    }
    Ok(out)
}

/// Move `axis` of `grid` to the front: a stack of slices across it.
fn to_stack<T: Copy + Default>(grid: &Grid<T>, axis: usize) -> Grid<T> {
    permute(
        grid,
        match axis {
            0 => [0, 1, 2],
            1 => [1, 0, 2],
            _ => [2, 0, 1],
        },
    )
}

/// Undo [`to_stack`].
fn from_stack<T: Copy + Default>(grid: &Grid<T>, axis: usize) -> Grid<T> {
    permute(
        grid,
        match axis {
            0 => [0, 1, 2],
            1 => [1, 0, 2],
            _ => [1, 2, 0],
        },
    )
}

/// Output axis `a` is input axis `order[a]`.
fn permute<T: Copy + Default>(grid: &Grid<T>, order: [usize; 3]) -> Grid<T> {
    if order == [0, 1, 2] {
        return grid.clone();
    }
    let shape = [
        grid.shape[order[0]],
        grid.shape[order[1]],
        grid.shape[order[2]],
    ];
    let mut out = Grid::filled(shape, T::default());
    let stride_in = [grid.shape[1] * grid.shape[2], grid.shape[2], 1];
    let stride = [
        stride_in[order[0]],
        stride_in[order[1]],
        stride_in[order[2]],
    ];
    let mut v = 0;
    for i in 0..shape[0] {
        for j in 0..shape[1] {
            for k in 0..shape[2] {
                out.data[v] = grid.data[i * stride[0] + j * stride[1] + k * stride[2]];
                v += 1;
            }
        }
    }
    out
}
