//! Model packages, preprocessing, inference backends and fine-tuning. Sees volumes and
//! tensors, never DICOM; does no network I/O; reads model packages and writes only under the
//! model registry.
//!
//! # Layout
//! - [`package`]: the model package format (manifest, backbone, head, card, reference
//!   validation set) and its checks.
//! - [`registry`]: installed packages under `<data_dir>/models`, with an active version each.
//! - [`preprocess`]: volume to model input tensor, as the manifest says.
//! - [`backend`]: the `Backend` trait and the tract backend (the embedded default).
//! - [`head`]: the trainable head, applied in Rust.
//! - [`infer`]: one study through one model, with label volumes and timings.
//! - [`finetune`]: fine-tuning of the head with candle on cached backbone features (FedProx
//!   toward the global head, deterministic for a seed, cancellable).
//! - [`evaluate`]: Dice per label, AUROC, and a head scored on labelled cases as inference
//!   would run it.
//! - [`gate`]: the champion/challenger decision on a fine-tuned head.
//! - [`validation`]: the reference validation set a package ships, read with bounds checks
//!   and run through the backbone into cases the gate scores.

pub mod backend;
pub mod evaluate;
pub mod finetune;
pub mod gate;
pub mod head;
pub mod infer;
pub mod package;
pub mod preprocess;
pub mod registry;
pub mod validation;


use thiserror::Error;

/// Why a study could not go through a model.
#[derive(Debug, Error)]
pub enum InferError {
    #[error("the model expects modality {expected}, the series is {found}")]
    WrongModality { expected: String, found: String },
    #[error("the model needs at least {min} slices, the series has {found}")]
    TooFewSlices { min: usize, found: usize },
    #[error("backend: {0}")]
    Backend(String),
    #[error("head: {0}")]
    Head(String),
}
