//! Test support shared by the crates of the workspace: where the fixtures are, and one way to
//! run dicom3tools' `dciodvfy`.
//!
//! # Layout
//! - [`fixtures`]: paths of the files `scripts/fixtures.sh` builds (the 108-slice head CT, its
//!   copy with a lesion, the pydicom test files), each failing with what to run when missing.
//! - [`dciodvfy`]: validate a DICOM file against its IOD; every error it reports fails the
//!   check, and so does its exit status.
//!
//! Invariant: depends on no crate of the workspace (not `models`, `pacs-bridge` or
//! `appliance`), so it can be a dev-dependency of any of them without a cycle. Seeded random
//! numbers come from `radiant_core::rng::SplitMix64`, not from here.

pub mod dciodvfy;
pub mod fixtures;

use std::path::PathBuf;

/// The repository root (the parent of this crate's folder).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support lives inside the repository")
        .to_path_buf()
}
