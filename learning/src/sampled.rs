//! Learning data bounded per case, whichever the model's contract: a labelled case keeps a
//! class-balanced sample of its grid's pixels or voxels, at most the package's
//! `samples_per_class` of each class, each with its head inputs, and the class counts of the
//! whole grid, so that fine-tuning weighs each sample back to its class's share. Dense head
//! inputs would not fit: 16.7 M voxels of 10 inputs are 671 MB, and a contract-1 case of 107
//! slices of 16 features at 64x64 is 28 MB where its sample is 200 KB. A contract-1 case is
//! sampled from its dense features ([`sample_dense`]), a contract-2 case from its trainable
//! stage's inputs ([`sample_case`]). Held-out cases are scored, and the study classifier fed,
//! on every pixel of the grid by running the frozen part again, never on a sample.

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
    #[error("the case: {0}")]
    Case(String),
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
    let grid = Grid {
        labels: &inputs.labels,
        classes: inputs.classes,
        width: inputs.width(),
    };
    let mut case = grid.sample(id, samples_per_class, seed, |v, x| inputs.inputs_of(v, x))?;
    case.pixel_ml = voxel_ml;
    Ok(case)
}

/// A contract-1 case reduced to at most `samples_per_class` pixels of each class of its
/// labels (see [`sample_case`]); it keeps its study label and pixel volume. `features` are the
/// head's inputs per pixel, `classes` its classes.
pub fn sample_dense(
    case: &Case,
    features: usize,
    classes: usize,
    samples_per_class: usize,
    seed: u64,
) -> Result<Case, SampleError> {
    case.check(features, classes).map_err(SampleError::Case)?;
    if case.class_counts.is_some() {
        return Err(SampleError::Case("it is a sample already".into()));
    }
    let grid = Grid {
        labels: &case.labels,
        classes,
        width: features,
    };
    let per_slice = features * case.plane;
    let mut sampled = grid.sample(case.id.clone(), samples_per_class, seed, |p, x| {
        let base = (p / case.plane) * per_slice + p % case.plane;
        for (f, value) in x.iter_mut().enumerate() {
            *value = case.features[base + f * case.plane];
        }
    })?;
    sampled.finding = case.finding;
    sampled.pixel_ml = case.pixel_ml;
    Ok(sampled)
}

/// A label map and the width of each element's head inputs.
struct Grid<'a> {
    labels: &'a [u8],
    classes: usize,
    width: usize,
}

impl Grid<'_> {
    /// Sample at most `per_class` elements of each class; `inputs_of(element, out)` writes an
    /// element's head inputs.
    fn sample(
        &self,
        id: String,
        per_class: usize,
        seed: u64,
        inputs_of: impl Fn(usize, &mut [f32]),
    ) -> Result<Case, SampleError> {
        if self.labels.is_empty() {
            return Err(SampleError::NoLabels);
        }
        let classes = self.classes;
        let mut by_class: Vec<Vec<u32>> = vec![Vec::new(); classes];
        for (v, label) in self.labels.iter().enumerate() {
            let list =
                by_class
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
        for (class, elements) in by_class.iter_mut().enumerate() {
            let k = elements.len().min(per_class);
            // Partial Fisher-Yates: the first k entries become a uniform sample.
            for i in 0..k {
                let j = i + rng.below(elements.len() - i);
                elements.swap(i, j);
            }
            chosen.extend(elements[..k].iter().map(|v| (class as u8, *v)));
        }
        let n = chosen.len();
        let mut features = vec![0f32; self.width * n];
        let mut x = vec![0f32; self.width];
        for (p, (_, v)) in chosen.iter().enumerate() {
            inputs_of(*v as usize, &mut x);
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
            pixel_ml: 1.0,
            class_counts: Some(counts),
        })
    }
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
    fn a_dense_case_keeps_at_most_k_pixels_a_class_with_their_own_features() {
        // 2 slices of 6 pixels, 2 features: feature 0 is the pixel's index, feature 1 its
        // negation; class 1 on the first 3 pixels of the second slice.
        let (slices, plane, features) = (2, 6, 2);
        let mut values = vec![0f32; slices * features * plane];
        for z in 0..slices {
            for p in 0..plane {
                let i = (z * plane + p) as f32;
                values[(z * features) * plane + p] = i;
                values[(z * features + 1) * plane + p] = -i;
            }
        }
        let dense = Case {
            id: "d".into(),
            slices,
            plane,
            features: values,
            labels: (0..slices * plane)
                .map(|i| u8::from((6..9).contains(&i)))
                .collect(),
            finding: Some(true),
            pixel_ml: 0.5,
            class_counts: None,
        };
        let case = sample_dense(&dense, features, 2, 2, 3).unwrap();
        assert_eq!(case.class_counts, Some(vec![9, 3]));
        assert_eq!((case.slices, case.plane), (1, 4));
        assert_eq!((case.finding, case.pixel_ml), (Some(true), 0.5));
        case.check(features, 2).unwrap();
        for p in 0..case.plane {
            let i = case.features[p];
            assert_eq!(case.features[case.plane + p], -i);
            assert_eq!(dense.labels[i as usize], case.labels[p]);
        }
        assert_eq!(case, sample_dense(&dense, features, 2, 2, 3).unwrap());
        // A sample is not sampled again, and a case must fit the head.
        assert!(matches!(
            sample_dense(&case, features, 2, 2, 3),
            Err(SampleError::Case(_))
        ));
        assert!(matches!(
            sample_dense(&dense, 3, 2, 2, 3),
            Err(SampleError::Case(_))
        ));
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
