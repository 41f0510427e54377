//! Learning data of a contract-2 model, whose head reads a graph's class logits and
//! intermediate features (`models::pipeline::trainable`): a labelled case keeps a
//! class-balanced sample of its voxels' head inputs, bounded by the package's
//! `samples_per_class` (dense features of a large backbone would not fit: 16.7 M voxels of
//! 10 inputs are 671 MB), with the class counts of the whole grid so that fine-tuning weighs
//! each sample back to its class's share. Held-out cases are scored on every voxel of the
//! grid by running the model again, never on a sample.

use crate::case::Case;
use crate::evaluate::{self, EvalError, Overlap};
use models::head::Head;
use models::pipeline::manifest::PipelineManifest;
use models::pipeline::run::head_labels;
use models::pipeline::trainable::TrainableInputs;
use models::InferError;
use radiant_core::rng::SplitMix64;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SampleError {
    #[error("the inputs: {0}")]
    Inputs(#[from] InferError),
    #[error("the inputs carry no label map")]
    NoLabels,
    #[error("label {label} on the grid, but the model has {classes} classes")]
    LabelOutOfRange { label: u8, classes: usize },
    #[error("evaluation: {0}")]
    Eval(#[from] EvalError),
}

/// A case of at most `samples_per_class` voxels of each class of `inputs`, drawn uniformly
/// within the class by a SplitMix64 stream of `seed` (one seed, one sample), in the layout
/// [`Case`] has for one slice of `samples` pixels.
pub fn sample_case(
    id: String,
    inputs: &TrainableInputs,
    samples_per_class: usize,
    seed: u64,
    voxel_ml: f64,
) -> Result<Case, SampleError> {
    inputs.check()?;
    if inputs.labels.is_empty() {
        return Err(SampleError::NoLabels);
    }
    let classes = inputs.classes;
    let mut by_class: Vec<Vec<u32>> = vec![Vec::new(); classes];
    for (v, label) in inputs.labels.iter().enumerate() {
        let list = by_class
            .get_mut(usize::from(*label))
            .ok_or(SampleError::LabelOutOfRange {
                label: *label,
                classes,
            })?;
        list.push(v as u32);
    }
    let counts: Vec<u64> = by_class.iter().map(|l| l.len() as u64).collect();
    let mut rng = SplitMix64::new(seed);
    let mut chosen: Vec<(u8, u32)> = Vec::new();
    for (class, voxels) in by_class.iter_mut().enumerate() {
        let k = voxels.len().min(samples_per_class);
        // Partial Fisher-Yates: the first k entries become a uniform sample.
        for i in 0..k {
            let j = i + rng.below(voxels.len() - i);
            voxels.swap(i, j);
        }
        chosen.extend(voxels[..k].iter().map(|v| (class as u8, *v)));
    }
    let n = chosen.len();
    let width = inputs.width();
    let mut features = vec![0f32; width * n];
    let mut x = vec![0f32; width];
    for (p, (_, v)) in chosen.iter().enumerate() {
        inputs.inputs_of(*v as usize, &mut x);
        for (f, value) in x.iter().enumerate() {
            features[f * n + p] = *value;
        }
    }
    Ok(Case {
        id,
        slices: 1,
        plane: n,
        features,
        labels: chosen.iter().map(|(c, _)| *c).collect(),
        finding: None,
        pixel_ml: voxel_ml,
        class_counts: Some(counts),
    })
}

/// The overlap of every label between what `head` decides on the whole grid of `inputs` and
/// the grid's label map.
pub fn overlaps(
    manifest: &PipelineManifest,
    head: &Head,
    inputs: &TrainableInputs,
) -> Result<Vec<Overlap>, SampleError> {
    if inputs.labels.is_empty() {
        return Err(SampleError::NoLabels);
    }
    let predicted = head_labels(manifest, head, inputs)?;
    Ok(evaluate::overlaps(
        &predicted,
        &inputs.labels,
        inputs.classes,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4³ grid, stride 2: class 1 in the first 8 voxels, logits (v, −v), feature = cell.
    fn inputs() -> TrainableInputs {
        let voxels = 64;
        let mut logits: Vec<f32> = (0..voxels).map(|v| v as f32).collect();
        logits.extend((0..voxels).map(|v| -(v as f32)));
        TrainableInputs {
            shape: [4, 4, 4],
            classes: 2,
            logits,
            channels: 1,
            stride: [2; 3],
            features: (0..8).map(|c| 100.0 + c as f32).collect(),
            labels: (0..voxels).map(|v| u8::from(v < 8)).collect(),
        }
    }

    #[test]
    fn a_sample_keeps_at_most_k_voxels_a_class_with_their_inputs_and_the_grid_counts() {
        let case = sample_case("c".into(), &inputs(), 5, 7, 1.0).unwrap();
        assert_eq!(case.class_counts, Some(vec![56, 8]));
        assert_eq!(case.plane, 10);
        assert_eq!(case.labels.iter().filter(|l| **l == 1).count(), 5);
        case.check(3, 2).unwrap();
        // Every sampled pixel carries its own voxel's logits and its cell's feature.
        let n = case.plane;
        for p in 0..n {
            let v = case.features[p] as usize;
            assert_eq!(case.features[n + p], -(v as f32));
            assert_eq!(u8::from(v < 8), case.labels[p]);
            let (i, j, k) = (v / 16, (v / 4) % 4, v % 4);
            let cell = ((i / 2) * 2 + j / 2) * 2 + k / 2;
            assert_eq!(case.features[2 * n + p], 100.0 + cell as f32);
        }
        // One seed, one sample; another seed, another.
        assert_eq!(case, sample_case("c".into(), &inputs(), 5, 7, 1.0).unwrap());
        assert_ne!(
            case.features,
            sample_case("c".into(), &inputs(), 5, 8, 1.0)
                .unwrap()
                .features
        );
        // Fewer voxels than k: all of them.
        assert_eq!(
            sample_case("c".into(), &inputs(), 100, 7, 1.0)
                .unwrap()
                .plane,
            64
        );
    }

    #[test]
    fn labels_out_of_range_or_missing_are_refused() {
        let mut bad = inputs();
        bad.labels[3] = 2;
        assert!(matches!(
            sample_case("c".into(), &bad, 5, 7, 1.0),
            Err(SampleError::LabelOutOfRange { label: 2, .. })
        ));
        bad.labels.clear();
        assert!(matches!(
            sample_case("c".into(), &bad, 5, 7, 1.0),
            Err(SampleError::NoLabels)
        ));
    }
}
