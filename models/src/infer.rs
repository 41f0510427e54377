//! One study through one model: preprocess in batches of slices, run the backbone on the
//! chosen backend, apply the head, then map labels back onto the source grid and measure.

use crate::backbone::{self, Backend, BatchShape};
use crate::head::Head;
use crate::package::Package;
use crate::{preprocess, InferError};
use radiant_core::Volume;
use serde::Serialize;
use std::time::Instant;

/// A loaded model: verified package, head weights and a backend holding the backbone. Load
/// once, run many studies.
pub struct Model {
    pub package: Package,
    pub head: Head,
    pub backend: Box<dyn Backend>,
}

impl Model {
    pub fn new(package: Package, backend: Box<dyn Backend>) -> Result<Model, InferError> {
        let bytes = std::fs::read(package.head_path())
            .map_err(|e| InferError::Head(format!("{}: {e}", package.head_path().display())))?;
        let head = Head::load(&bytes, &package.manifest)?;
        Ok(Model {
            package,
            head,
            backend,
        })
    }
}

/// Volume of one label on the source grid.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LabelVolume {
    pub value: u8,
    pub name: String,
    pub voxels: u64,
    pub ml: f64,
    /// Pixels with this label on the model grid, over all slices.
    pub model_pixels: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Timings {
    pub preprocess_ms: f64,
    pub inference_ms: f64,
    pub postprocess_ms: f64,
    /// Contract-2 models: each stage's share.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageTiming>,
}

/// Where one stage spent its time.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StageTiming {
    pub stage: String,
    /// Region, resize and intensity steps.
    pub prepare_ms: f64,
    /// The graph.
    pub graph_ms: f64,
    /// Activation, decisions, resizing back and post-processing.
    pub decide_ms: f64,
    /// The region the stage read, on the working grid: `[lo, hi)` per axis.
    pub region: [[usize; 2]; 3],
}

/// What a model said about a study.
#[derive(Debug, Clone, Serialize)]
pub struct Inference {
    pub model_id: String,
    pub model_version: String,
    pub backend: String,
    pub labels: Vec<LabelVolume>,
    /// Study-level probability of the classification finding (the last label present).
    pub finding: Option<String>,
    pub finding_probability: Option<f64>,
    /// Largest per-pixel probability of the last label.
    pub max_label_probability: f32,
    pub timings: Timings,
    /// Label of every source voxel, in the volume's voxel order.
    #[serde(skip)]
    pub label_map: Vec<u8>,
}

/// Run `model` on `volume`.
pub fn run(model: &mut Model, volume: &Volume) -> Result<Inference, InferError> {
    let manifest = model.package.manifest.clone();
    let spec = &manifest.input;
    preprocess::check(volume, spec)?;
    let [rows, columns] = spec.size;
    let plane = rows * columns;
    let classes = model.head.classes;
    let mut timings = Timings::default();
    let mut model_labels = vec![0u8; volume.slices * plane];
    let mut max_prob = 0f32;
    let last = classes - 1;
    let shape = BatchShape::of(&manifest, volume.slices);
    let head = &model.head;
    let looped = Instant::now();
    backbone::run_in_batches::<InferError>(
        model.backend.as_mut(),
        shape,
        None,
        |range| {
            let t = Instant::now();
            let input = preprocess::tensor(volume, spec, range);
            timings.preprocess_ms += t.elapsed().as_secs_f64() * 1e3;
            Ok(input)
        },
        |range, features| {
            let probs = head.probabilities(&features, range.len(), plane);
            for (k, p) in probs.chunks_exact(classes).enumerate() {
                let (arg, _) = p.iter().enumerate().fold((0, f32::MIN), |best, (c, v)| {
                    if *v > best.1 {
                        (c, *v)
                    } else {
                        best
                    }
                });
                model_labels[range.start * plane + k] = arg as u8;
                max_prob = max_prob.max(p[last]);
            }
            Ok(())
        },
    )?;
    // Backbone and head together: the loop's time less what preprocessing took inside it.
    timings.inference_ms = looped.elapsed().as_secs_f64() * 1e3 - timings.preprocess_ms;
    let t = Instant::now();
    let label_map = to_source_grid(volume, spec, &model_labels);
    let mut labels = Vec::new();
    for (index, label) in manifest.labels.iter().enumerate() {
        let class = (index + 1) as u8;
        let voxels = label_map.iter().filter(|l| **l == class).count() as u64;
        let model_pixels = model_labels.iter().filter(|l| **l == class).count() as u64;
        labels.push(LabelVolume {
            value: label.value,
            name: label.name.clone(),
            voxels,
            ml: voxels as f64 * volume.voxel_ml(),
            model_pixels,
        });
    }
    let (finding, finding_probability) = match (&manifest.classification, labels.last()) {
        (Some(c), Some(last_label)) => {
            let model_ml = last_label.model_pixels as f64
                * spec.spacing_mm
                * spec.spacing_mm
                * volume.spacing[2]
                / 1000.0;
            (
                Some(c.name.clone()),
                Some(model.head.classify(max_prob, model_ml)),
            )
        }
        _ => (None, None),
    };
    timings.postprocess_ms = t.elapsed().as_secs_f64() * 1e3;
    Ok(Inference {
        model_id: manifest.id.clone(),
        model_version: manifest.version.clone(),
        backend: model.backend.name().to_string(),
        labels,
        finding,
        finding_probability,
        max_label_probability: max_prob,
        timings,
        label_map,
    })
}

/// Nearest-neighbour map of model-grid labels back onto every source voxel.
fn to_source_grid(volume: &Volume, spec: &crate::package::InputSpec, model: &[u8]) -> Vec<u8> {
    let [rows, columns] = spec.size;
    let mut out = vec![0u8; volume.voxels.len()];
    let mut lookup = vec![None; volume.rows * volume.columns];
    for y in 0..volume.rows {
        for x in 0..volume.columns {
            let (i, j) = preprocess::model_index(volume, spec, x, y);
            let (i, j) = (i.round(), j.round());
            if i >= 0.0 && j >= 0.0 && (i as usize) < rows && (j as usize) < columns {
                lookup[y * volume.columns + x] = Some(i as usize * columns + j as usize);
            }
        }
    }
    let plane = rows * columns;
    let source_plane = volume.rows * volume.columns;
    for z in 0..volume.slices {
        for (p, at) in lookup.iter().enumerate() {
            if let Some(m) = at {
                out[z * source_plane + p] = model[z * plane + m];
            }
        }
    }
    out
}
