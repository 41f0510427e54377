//! The Radiant Edge daemon and its CLI, as a library so that tests can drive the same code.
//!
//! # Layout
//! - [`config`]: the TOML configuration, its defaults and validation by key.
//! - [`daemon`]: `appliance serve`: starts the spool, the DICOM SCP, study assembly and the
//!   HTTP endpoints, and stops them in order on SIGTERM/SIGINT.
//! - [`http`]: `/health/live`, `/health/ready`, `/metrics`.
//! - [`jobs`]: durable inference jobs for completed studies, and their results.
//! - [`studies`]: what `appliance studies ...` prints and changes.

pub mod config;
pub mod daemon;
pub mod http;
pub mod jobs;
pub mod studies;
