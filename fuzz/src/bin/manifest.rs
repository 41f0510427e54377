//! The model manifest of both contracts (`models::package::parse_manifest` for contract 1,
//! `models::pipeline::parse_manifest` for contract 2, chosen by `contract_of` as
//! `AnyPackage::open` does): what opening a package does with the text of `manifest.toml` (at
//! most `MAX_MANIFEST_BYTES`), field by field.
//!
//! Properties: returns a manifest or a typed `PackageError::Manifest`, never panics; a
//! manifest it accepts keeps the promises the rest of the appliance relies on (a plain file
//! name for every model file, 64-hex-digit hashes, sizes and counts within their ranges,
//! labels above 0; for contract 2 also stage names and regions that refer to earlier stages
//! and graph grids within their bounds).

use models::package::{self, MAX_MANIFEST_BYTES};
use models::pipeline::manifest::{MAX_GRID_VOXELS, MAX_SIDE, MAX_STAGES};
use std::path::Path;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        check(data);
    });
}

fn check(data: &[u8]) {
    if data.len() as u64 > MAX_MANIFEST_BYTES {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match package::contract_of(Path::new("manifest.toml"), text) {
        Ok(2) => return check_pipeline(text),
        Ok(_) => {}
        Err(package::PackageError::Manifest { .. }) => return,
        Err(other) => panic!("reading the contract gave a non-manifest error: {other}"),
    }
    let m = match package::parse_manifest(Path::new("manifest.toml"), text) {
        Ok(m) => m,
        Err(package::PackageError::Manifest { .. }) => return,
        Err(other) => panic!("parsing text gave a non-manifest error: {other}"),
    };
    let plain = |f: &str| !f.is_empty() && !f.contains('/') && !f.contains("..");
    assert!(plain(&m.backbone.file) && plain(&m.head.file));
    assert!(m
        .validation
        .as_ref()
        .is_none_or(|v| plain(&v.file) && (1..=package::MAX_VALIDATION_CASES).contains(&v.cases)));
    let hex64 = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(hex64(&m.backbone.sha256) && hex64(&m.head.sha256));
    assert!(m.input.size.iter().all(|s| (8..=1024).contains(s)));
    assert!(m.input.spacing_mm > 0.0);
    assert!(!m.input.channels.is_empty() && m.input.channels.iter().all(|c| c.width > 0.0));
    assert!(!m.labels.is_empty() && m.labels.iter().all(|l| l.value > 0));
}

fn check_pipeline(text: &str) {
    let m = match models::pipeline::parse_manifest(Path::new("manifest.toml"), text) {
        Ok(m) => m,
        Err(package::PackageError::Manifest { .. }) => return,
        Err(other) => panic!("parsing text gave a non-manifest error: {other}"),
    };
    assert!((1..=MAX_STAGES).contains(&m.stages.len()));
    let hex64 = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    for (i, stage) in m.stages.iter().enumerate() {
        assert!(!stage.file.is_empty() && !stage.file.contains('/') && !stage.file.contains(".."));
        assert!(hex64(&stage.sha256));
        assert!(stage.shape.iter().all(|s| (1..=MAX_SIDE).contains(s)));
        assert!(stage.shape.iter().product::<usize>() <= MAX_GRID_VOXELS);
        assert!(!stage.channels.is_empty());
        if let Some(region) = &stage.region {
            assert!(m.stages[..i].iter().any(|s| s.name == region.stage));
        }
        assert!(m.stages[..i].iter().all(|s| s.name != stage.name));
    }
    assert!(m.labels.iter().all(|l| l.value > 0));
}
