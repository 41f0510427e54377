//! The Radiant Edge daemon and its CLI, as a library so that tests can drive the same code.
//!
//! # Layout
//! - [`activity`]: what the daemon is doing now (`/activity`), for the updater's idle wait.
//! - [`cases`]: labelled cases: a SEG about a held series becomes a label for fine-tuning.
//! - [`config`]: the TOML configuration, its defaults and validation by key.
//! - [`daemon`]: `appliance serve`: starts the spool, the DICOM SCP, study assembly and the
//!   HTTP endpoints, and stops them in order on SIGTERM/SIGINT.
//! - [`db`]: `results.sqlite`: the only module that opens it; every table's schema, the
//!   numbered migrations (`PRAGMA user_version`), the clock rows are stamped with, and the
//!   stored states as enums.
//! - [`doctor`]: `appliance doctor`: every check an install needs, each with its fix.
//! - [`http`]: `/health/live`, `/health/ready`, `/metrics`, `/activity`.
//! - [`jobs`]: durable inference jobs for completed studies, and their results.
//! - [`export`]: a result as SEG and SR files, geometry-checked and fsync'd.
//! - [`federated`]: the learner's side of the federation hand-over folder: its champion out,
//!   verified global heads in through the gate.
//! - [`heads`]: head versions with their lineage, and the champion inference uses.
//! - [`loaded`]: a model loaded for inference, of either package contract.
//! - [`learn`]: on-site fine-tuning of the head: features of labelled cases, when a run is
//!   due, yielding to inference, and the validation gate.
//! - [`metrics`]: the appliance's metrics (inference stages, outbox, learning) and the one
//!   OpenMetrics registry `/metrics` renders, DICOM side included.
//! - [`outbox`]: durable delivery of result objects to the configured destinations.
//! - [`routes`]: which installed models a series goes to (`[[routes]]`).
//! - [`self_test`]: the clinical self-test a firmware version passes before it is committed.
//! - [`supervisor`]: the daemon's threads under one shutdown signal; a panic is logged,
//!   fails readiness and stops the daemon with an error.
//! - [`retention`]: which studies leave the spool and when (age, disk watermarks, never one
//!   unfinished, protected or needed by the learner), and the crash-safe purge.
//! - [`readiness`]: what `/health/ready` answers from (parts up, shutting down, failed).
//! - [`systemd`]: `sd_notify` (ready, stopping) and the watchdog fed while the daemon is
//!   healthy.
//! - [`studies`]: what `appliance studies ...` prints and changes.

pub mod activity;
pub mod audit;
pub mod cases;
pub mod config;
pub mod conformance;
pub mod console;
pub mod daemon;
pub mod db;
pub mod doctor;
pub mod export;
pub mod federated;
pub mod heads;
pub mod http;
pub mod jobs;
pub mod learn;
pub mod loaded;
pub mod metrics;
pub mod outbox;
pub mod readiness;
pub mod retention;
pub mod routes;
pub mod self_test;
pub mod studies;
pub mod supervisor;
pub mod systemd;
