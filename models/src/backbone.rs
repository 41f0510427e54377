//! The frozen backbone as the rest of the code sees it: the [`Backend`] trait that runtimes
//! implement (the `onnx-backends` crate: tract, ONNX Runtime), and [`run_in_batches`], the one
//! loop that feeds a stack of slices through it and checks what comes back. Inference, the
//! learner's feature extraction and the reference validation set all go through that loop, so
//! they batch and check the same way.

use crate::package::Manifest;
use crate::InferError;
use radiant_core::Cancel;
use std::ops::Range;

/// Slices per backbone run: large enough to keep a runtime's kernels busy, small enough that
/// one batch of dense features stays in tens of megabytes.
pub const BATCH: usize = 16;

pub trait Backend: Send {
    /// Short name recorded with every result ("tract", "ort-cpu", "ort-cuda").
    fn name(&self) -> &'static str;
    /// Run the backbone on `input` `[n, channels, rows, columns]`; returns its output.
    fn run(&mut self, input: &[f32], shape: [usize; 4]) -> Result<Vec<f32>, InferError>;
}

/// How a stack of slices enters the backbone and what it must give back.
#[derive(Debug, Clone, Copy)]
pub struct BatchShape {
    pub slices: usize,
    pub channels: usize,
    pub rows: usize,
    pub columns: usize,
    /// Feature channels the backbone gives per pixel (the manifest's `backbone.features`).
    pub features: usize,
}

impl BatchShape {
    /// The shape in which `manifest`'s backbone takes a volume of `slices` slices.
    pub fn of(manifest: &Manifest, slices: usize) -> BatchShape {
        let [rows, columns] = manifest.input.size;
        BatchShape {
            slices,
            channels: manifest.input.channels.len(),
            rows,
            columns,
            features: manifest.backbone.features,
        }
    }
}

/// Whether [`run_in_batches`] went through every slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    Finished,
    /// The cancel signal was raised between two batches; the rest was not run.
    Cancelled,
}

/// Run `backend` over `shape.slices` slices, [`BATCH`] at a time: `input` gives the input
/// tensor of a range of slices, `each` receives the range and its features (checked to be
/// `slices × features × rows × columns` values). `cancel` is checked before every batch.
pub fn run_in_batches<E: From<InferError>>(
    backend: &mut dyn Backend,
    shape: BatchShape,
    cancel: Option<&Cancel>,
    mut input: impl FnMut(Range<usize>) -> Result<Vec<f32>, E>,
    mut each: impl FnMut(Range<usize>, Vec<f32>) -> Result<(), E>,
) -> Result<Completion, E> {
    let plane = shape.rows * shape.columns;
    let mut start = 0;
    while start < shape.slices {
        if cancel.is_some_and(Cancel::is_cancelled) {
            return Ok(Completion::Cancelled);
        }
        let end = (start + BATCH).min(shape.slices);
        let n = end - start;
        let tensor = input(start..end)?;
        let expected_input = n * shape.channels * plane;
        if tensor.len() != expected_input {
            return Err(InferError::Backend(format!(
                "the input of slices {start}..{end} has {} values, expected {expected_input}",
                tensor.len()
            ))
            .into());
        }
        let features = backend.run(&tensor, [n, shape.channels, shape.rows, shape.columns])?;
        let expected = n * shape.features * plane;
        if features.len() != expected {
            return Err(InferError::Backend(format!(
                "the backbone gave {} values for {n} slices, expected {expected}",
                features.len()
            ))
            .into());
        }
        each(start..end, features)?;
        start = end;
    }
    Ok(Completion::Finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives `features` copies of each input value, or a wrong count when told to.
    struct Repeat {
        features: usize,
        short: bool,
    }

    impl Backend for Repeat {
        fn name(&self) -> &'static str {
            "repeat"
        }
        fn run(&mut self, input: &[f32], _shape: [usize; 4]) -> Result<Vec<f32>, InferError> {
            let mut out: Vec<f32> = input
                .iter()
                .flat_map(|v| std::iter::repeat(*v).take(self.features))
                .collect();
            if self.short {
                out.pop();
            }
            Ok(out)
        }
    }

    fn shape(slices: usize) -> BatchShape {
        BatchShape {
            slices,
            channels: 1,
            rows: 2,
            columns: 2,
            features: 3,
        }
    }

    #[test]
    fn every_slice_goes_through_once_in_batches_of_at_most_batch() {
        let mut backend = Repeat {
            features: 3,
            short: false,
        };
        let mut seen = Vec::new();
        let done = run_in_batches::<InferError>(
            &mut backend,
            shape(BATCH + 3),
            None,
            |r| Ok(vec![r.start as f32; r.len() * 4]),
            |r, f| {
                assert_eq!(f.len(), r.len() * 12);
                seen.push(r);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(done, Completion::Finished);
        assert_eq!(seen, vec![0..BATCH, BATCH..BATCH + 3]);
    }

    #[test]
    fn a_backbone_giving_the_wrong_count_is_an_error_naming_both_counts() {
        let mut backend = Repeat {
            features: 3,
            short: true,
        };
        let err = run_in_batches::<InferError>(
            &mut backend,
            shape(2),
            None,
            |r| Ok(vec![0.0; r.len() * 4]),
            |_, _| Ok(()),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("23") && err.to_string().contains("24"),
            "{err}"
        );
    }

    #[test]
    fn a_raised_cancel_stops_before_the_next_batch() {
        let mut backend = Repeat {
            features: 3,
            short: false,
        };
        let cancel = Cancel::new();
        let mut batches = 0;
        let done = run_in_batches::<InferError>(
            &mut backend,
            shape(3 * BATCH),
            Some(&cancel),
            |r| Ok(vec![0.0; r.len() * 4]),
            |_, _| {
                batches += 1;
                cancel.cancel();
                Ok(())
            },
        )
        .unwrap();
        assert_eq!((done, batches), (Completion::Cancelled, 1));
    }
}
