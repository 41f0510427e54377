//! Model packages, preprocessing, inference backends and fine-tuning. Sees volumes and
//! tensors, never DICOM; does no network I/O.
//!
//! # Layout
//! - [`volume`]: a scalar volume with its patient-space geometry (built by `pacs-bridge`).
//!
//! Model packages, backends and fine-tuning are the next steps of the inference issue.

pub mod volume;
