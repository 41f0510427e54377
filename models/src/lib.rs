//! Model packages and what runs them: the manifest and its checks, the registry of installed
//! packages, preprocessing, the trainable head applied in Rust, and one study through a
//! backbone. Sees volumes and tensors, never DICOM; does no network I/O; reads model packages
//! and writes only under the model registry. Links no ML runtime: the backbone is a
//! [`backbone::Backend`] that `onnx-backends` implements, and learning lives in `learning`.
//!
//! # Layout
//! - [`package`]: the model package format (manifest, backbone, head, card, reference
//!   validation set) and its checks.
//! - [`registry`]: installed packages under `<data_dir>/models`, with an active version each.
//! - [`preprocess`]: volume to model input tensor, as the manifest says.
//! - [`backbone`]: the `Backend` trait a runtime implements, and the one batched loop that
//!   feeds slices through it.
//! - [`head`]: the trainable head, applied in Rust.
//! - [`infer`]: one study through one model, with label volumes and timings.
//! - [`learnable`]: what learning needs of a model of either contract.
//! - [`pipeline`]: contract-2 packages: a pipeline of ONNX graphs declared in the manifest.

pub mod backbone;
pub mod head;
pub mod infer;
pub mod learnable;
pub mod package;
pub mod pipeline;
pub mod preprocess;
pub mod registry;

use thiserror::Error;

/// Why a study could not go through a model.
#[derive(Debug, Error)]
pub enum InferError {
    #[error("the model expects modality {expected}, the series is {found}")]
    WrongModality { expected: String, found: String },
    #[error("the model needs at least {min} slices, the series has {found}")]
    TooFewSlices { min: usize, found: usize },
    #[error("geometry: {0}")]
    Geometry(String),
    #[error("stage {stage}: stage {from} found no foreground to crop to")]
    EmptyRegion { stage: String, from: String },
    #[error("backend: {0}")]
    Backend(String),
    #[error("head: {0}")]
    Head(String),
}
