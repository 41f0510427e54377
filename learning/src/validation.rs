//! The reference validation set a model package ships (`[validation]` in the manifest): what
//! the gate ([`crate::gate`]) scores a candidate head on so that learning at a site cannot
//! silently make the model worse on what it was built for. This module reads and bounds the
//! file and turns it into [`Case`]s by running the package's backbone; it knows nothing of
//! how the set was made (`models/reference/make_validation_set.py`).
//!
//! The file is safetensors with these tensors (all shapes are checked against the manifest
//! before anything is allocated):
//! - `input` U8 `[slices, channels, rows, columns]`: the model input, each value in [0, 1]
//!   stored as round(255 × value); read back as value / 255. The set *is* these values.
//! - `labels` U8 `[slices, rows, columns]`: class of every model-grid pixel, 0 background.
//! - `slices` U32 `[cases]`: slices per case, in file order, summing to the first dimension.
//! - `finding` U8 `[cases]`: 1 when the finding (the last label) is present, 0 when not.
//! - `pixel_ml` F64 `[cases]`: volume of one model-grid pixel in millilitres.

use crate::case::Case;
use models::backbone::{self, Backend, BatchShape};
use models::package::{Manifest, Package, MAX_VALIDATION_CASES};
use models::InferError;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Largest validation file we read.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum ValidationError {
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path}: {bytes} bytes, more than the {MAX_FILE_BYTES} a validation set may have")]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("case {index} ({id}): {source}")]
    Backbone {
        index: usize,
        id: String,
        source: InferError,
    },
}

/// One case of the set: a block of consecutive model-grid slices of one study.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceCase {
    /// `reference-<n>`, n its place in the file.
    pub id: String,
    pub slices: usize,
    /// Quantised model input `[slices, channels, rows, columns]` (value = stored / 255).
    pub input: Vec<u8>,
    /// Class of every pixel `[slices, rows, columns]`.
    pub labels: Vec<u8>,
    /// Is the finding (the last label) present?
    pub finding: bool,
    pub pixel_ml: f64,
}

/// A package's reference validation set, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceSet {
    pub cases: Vec<ReferenceCase>,
    /// Input channels, rows and columns of every slice (as the manifest's input says).
    pub channels: usize,
    pub rows: usize,
    pub columns: usize,
}

impl ReferenceSet {
    /// The set of `package`, or `None` when its manifest names none. The package was verified
    /// when it was opened; this reads the file again and checks its content.
    pub fn load(package: &Package) -> Result<Option<ReferenceSet>, ValidationError> {
        let Some(path) = package.validation_path() else {
            return Ok(None);
        };
        let io = |e: std::io::Error| ValidationError::Io {
            path: path.clone(),
            reason: e.to_string(),
        };
        let bytes = std::fs::metadata(&path).map_err(io)?.len();
        if bytes > MAX_FILE_BYTES {
            return Err(ValidationError::TooLarge { path, bytes });
        }
        let data = std::fs::read(&path).map_err(io)?;
        ReferenceSet::from_bytes(&data, &package.manifest, &path).map(Some)
    }

    /// Parse a validation file's bytes for a model of `manifest`; `path` names it in errors.
    pub fn from_bytes(
        data: &[u8],
        manifest: &Manifest,
        path: &Path,
    ) -> Result<ReferenceSet, ValidationError> {
        let bad = |reason: String| ValidationError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let tensors =
            SafeTensors::deserialize(data).map_err(|e| bad(format!("not safetensors: {e}")))?;
        let channels = manifest.input.channels.len();
        let [rows, columns] = manifest.input.size;
        let plane = rows * columns;
        let classes = manifest.labels.len() + 1;

        // Shapes first: safetensors has checked that each tensor's bytes match its shape, so
        // once the shapes are right, every slice below is in bounds.
        let get = |name: &str, dtype: Dtype| {
            let t = tensors
                .tensor(name)
                .map_err(|_| bad(format!("tensor {name} missing")))?;
            if t.dtype() != dtype {
                return Err(bad(format!(
                    "tensor {name} is {:?}, not {dtype:?}",
                    t.dtype()
                )));
            }
            Ok(t)
        };
        let counts = get("slices", Dtype::U32)?;
        let cases = match counts.shape() {
            [n] if (1..=MAX_VALIDATION_CASES).contains(n) => *n,
            s => {
                return Err(bad(format!(
                    "slices has shape {s:?}, need [1 to {MAX_VALIDATION_CASES}]"
                )))
            }
        };
        let declared = manifest.validation.as_ref().map(|v| v.cases);
        if let Some(declared) = declared.filter(|d| *d != cases) {
            return Err(bad(format!("{cases} cases, the manifest says {declared}")));
        }
        let counts: Vec<usize> = counts
            .data()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .collect();
        let total = counts
            .iter()
            .try_fold(0usize, |sum, n| sum.checked_add(*n))
            .ok_or_else(|| bad("slice counts overflow".into()))?;
        if let Some(index) = counts.iter().position(|n| *n == 0) {
            return Err(bad(format!("case {index} has no slices")));
        }
        let input = get("input", Dtype::U8)?;
        if input.shape() != [total, channels, rows, columns] {
            return Err(bad(format!(
                "input has shape {:?}, the slice counts and the manifest need {:?}",
                input.shape(),
                [total, channels, rows, columns]
            )));
        }
        let labels = get("labels", Dtype::U8)?;
        if labels.shape() != [total, rows, columns] {
            return Err(bad(format!(
                "labels has shape {:?}, need {:?}",
                labels.shape(),
                [total, rows, columns]
            )));
        }
        if let Some(l) = labels.data().iter().find(|l| usize::from(**l) >= classes) {
            return Err(bad(format!("label {l}, the model has {classes} classes")));
        }
        let finding = get("finding", Dtype::U8)?;
        if finding.shape() != [cases] || finding.data().iter().any(|f| *f > 1) {
            return Err(bad(format!(
                "finding must be [{cases}] values of 0 or 1, is {:?}",
                finding.shape()
            )));
        }
        let pixel_ml = get("pixel_ml", Dtype::F64)?;
        if pixel_ml.shape() != [cases] {
            return Err(bad(format!(
                "pixel_ml has shape {:?}, need [{cases}]",
                pixel_ml.shape()
            )));
        }
        let pixel_ml: Vec<f64> = pixel_ml
            .data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect();
        if let Some(v) = pixel_ml.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(bad(format!("pixel volume {v} ml")));
        }

        let mut out = Vec::with_capacity(cases);
        let mut first = 0;
        for (index, n) in counts.iter().enumerate() {
            let slices = first..first + n;
            let per_input = channels * plane;
            out.push(ReferenceCase {
                id: format!("reference-{index}"),
                slices: *n,
                input: input.data()[slices.start * per_input..slices.end * per_input].to_vec(),
                labels: labels.data()[slices.start * plane..slices.end * plane].to_vec(),
                finding: finding.data()[index] == 1,
                pixel_ml: pixel_ml[index],
            });
            first = slices.end;
        }
        Ok(ReferenceSet {
            cases: out,
            channels,
            rows,
            columns,
        })
    }

    /// Run the backbone on every case, in batches of [`backbone::BATCH`] slices as inference does, and
    /// return the cases as fine-tuning and scoring take them. `backbone_features` is the
    /// manifest's `backbone.features`; an output of another size is an error.
    pub fn cases(
        &self,
        backend: &mut dyn Backend,
        backbone_features: usize,
    ) -> Result<Vec<Case>, ValidationError> {
        let plane = self.rows * self.columns;
        let per_slice = self.channels * plane;
        let mut out = Vec::with_capacity(self.cases.len());
        for (index, case) in self.cases.iter().enumerate() {
            let failed = |source: InferError| ValidationError::Backbone {
                index,
                id: case.id.clone(),
                source,
            };
            let mut features = Vec::with_capacity(case.slices * backbone_features * plane);
            let shape = BatchShape {
                slices: case.slices,
                channels: self.channels,
                rows: self.rows,
                columns: self.columns,
                features: backbone_features,
            };
            backbone::run_in_batches(
                backend,
                shape,
                None,
                |range| {
                    let bytes = &case.input[range.start * per_slice..range.end * per_slice];
                    Ok(bytes.iter().map(|v| f32::from(*v) / 255.0).collect())
                },
                |_, output| {
                    features.extend(output);
                    Ok(())
                },
            )
            .map_err(failed)?;
            out.push(Case {
                id: case.id.clone(),
                slices: case.slices,
                plane,
                features,
                labels: case.labels.clone(),
                finding: Some(case.finding),
                pixel_ml: case.pixel_ml,
                class_counts: None,
            });
        }
        Ok(out)
    }
}
