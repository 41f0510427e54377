//! The model manifest (`models::package::parse_manifest`): what `Package::open` does with the
//! text of `manifest.toml` (at most `MAX_MANIFEST_BYTES`), field by field.
//!
//! Properties: returns a manifest or a typed `PackageError::Manifest`, never panics; a
//! manifest it accepts keeps the promises the rest of the appliance relies on (a plain file
//! name for every model file, 64-hex-digit hashes, sizes and counts within their ranges,
//! labels above 0).

use models::package::{self, MAX_MANIFEST_BYTES};
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
