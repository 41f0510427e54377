//! The fixture files `scripts/fixtures.sh` builds, for the integration tests of this crate.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    assert!(
        dir.join("ct-series").is_dir(),
        "run scripts/fixtures.sh first"
    );
    dir
}

/// The 108 slices of the head CT series, in file order.
pub fn ct_series() -> Vec<PathBuf> {
    (0..108)
        .map(|i| fixtures().join(format!("ct-series/slice_{i:03}.dcm")))
        .collect()
}
