//! Learning on a model's trainable head: what turns labelled cases into a candidate head and
//! decides whether it may replace the champion. Sees backbone features, labels and heads; runs
//! no ONNX runtime (the reference validation set is run through a caller's
//! `models::backbone::Backend`), speaks no DICOM and does no network I/O.
//!
//! # Layout
//! - [`case`]: a labelled case (features and labels on the model grid) and its checks.
//! - [`finetune`]: fine-tuning of the head with candle on cached backbone features (FedProx
//!   toward the global head, deterministic for a seed, cancellable between steps).
//! - [`evaluate`]: Dice per label, AUROC, and a head scored on labelled cases as inference
//!   would run it.
//! - [`gate`]: the champion/challenger decision on a fine-tuned head.
//! - [`sampled`]: a contract-2 model's learning data: a class-balanced sample of a case's
//!   voxels, and held-out cases scored on their whole grid.
//! - [`validation`]: the reference validation set a package ships, read with bounds checks
//!   and run through the backbone into cases the gate scores.

pub mod case;
pub mod evaluate;
pub mod finetune;
pub mod gate;
pub mod sampled;
pub mod validation;
