//! Model packages and the registry: verification by SHA-256, clear errors for broken
//! packages, atomic installs with one active version per model.

use models::package::{sha256_file, Package, PackageError};
use models::registry::{Registry, RegistryError};
use std::path::Path;

/// A package whose model files are placeholders: verification only looks at their hashes.
fn write_package(dir: &Path, version: &str, backbone: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("backbone.onnx"), backbone).unwrap();
    std::fs::write(dir.join("head.safetensors"), b"head-bytes").unwrap();
    std::fs::write(dir.join("card.md"), "# Test model\nNot for clinical use.\n").unwrap();
    let manifest = format!(
        r#"id = "test-model"
version = "{version}"
task = "segmentation"
licence = "CC0-1.0"
intended_use = "Tests only. Not for clinical use."
[input]
modality = "CT"
min_slices = 1
size = [64, 64]
spacing_mm = 3.9
channels = [{{ name = "brain", center = 40.0, width = 80.0 }}]
outside_value = -1024.0
[backbone]
file = "backbone.onnx"
sha256 = "{}"
input = "image"
output = "features"
features = 16
[head]
file = "head.safetensors"
sha256 = "{}"
hidden = 16
[[labels]]
value = 1
name = "thing"
colour = [255, 0, 0]
"#,
        sha256_file(&dir.join("backbone.onnx")).unwrap(),
        sha256_file(&dir.join("head.safetensors")).unwrap()
    );
    std::fs::write(dir.join("manifest.toml"), manifest).unwrap();
}

#[test]
fn a_package_with_a_tampered_file_is_refused_with_both_hashes() {
    let dir = tempfile::tempdir().unwrap();
    write_package(dir.path(), "1.0.0", b"backbone");
    assert!(Package::open(dir.path()).is_ok());
    std::fs::write(dir.path().join("backbone.onnx"), b"tampered").unwrap();
    let err = Package::open(dir.path()).unwrap_err();
    assert!(matches!(err, PackageError::HashMismatch { .. }), "{err}");
    assert!(err.to_string().contains("backbone.onnx"));
}

#[test]
fn a_missing_file_and_a_bad_manifest_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_package(dir.path(), "1.0.0", b"backbone");
    std::fs::remove_file(dir.path().join("head.safetensors")).unwrap();
    assert!(matches!(
        Package::open(dir.path()),
        Err(PackageError::MissingFile { .. })
    ));

    write_package(dir.path(), "1.0", b"backbone");
    let err = Package::open(dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .contains("version must be MAJOR.MINOR.PATCH"),
        "{err}"
    );

    let text = std::fs::read_to_string(dir.path().join("manifest.toml")).unwrap();
    std::fs::write(
        dir.path().join("manifest.toml"),
        text.replace("version = \"1.0\"", "version = \"1.0.0\"\nunknown_key = 1"),
    )
    .unwrap();
    let err = Package::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("unknown_key"), "{err}");

    write_package(dir.path(), "1.0.0", b"backbone");
    let text = std::fs::read_to_string(dir.path().join("manifest.toml")).unwrap();
    std::fs::write(
        dir.path().join("manifest.toml"),
        text.replace(
            "licence = \"CC0-1.0\"",
            "licence = \"free for research (ask us)\"",
        ),
    )
    .unwrap();
    let err = Package::open(dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .contains("licence must be the SPDX licence expression"),
        "{err}"
    );

    // samples_per_class: 1024 when absent, bounded when given.
    write_package(dir.path(), "1.0.0", b"backbone");
    assert_eq!(
        Package::open(dir.path())
            .unwrap()
            .manifest
            .head
            .samples_per_class,
        1024
    );
    let text = std::fs::read_to_string(dir.path().join("manifest.toml")).unwrap();
    for (value, ok) in [("1", true), ("65536", true), ("0", false), ("65537", false)] {
        std::fs::write(
            dir.path().join("manifest.toml"),
            text.replace(
                "hidden = 16",
                &format!("hidden = 16\nsamples_per_class = {value}"),
            ),
        )
        .unwrap();
        match Package::open(dir.path()) {
            Ok(p) => {
                assert!(ok, "{value} accepted");
                assert_eq!(p.manifest.head.samples_per_class.to_string(), value);
            }
            Err(err) => {
                assert!(!ok, "{value}: {err}");
                assert!(
                    err.to_string()
                        .contains("head.samples_per_class must be between 1 and 65536"),
                    "{err}"
                );
            }
        }
    }

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Package::open(empty.path()),
        Err(PackageError::MissingFile { .. })
    ));
}

#[test]
fn installing_keeps_one_active_version_and_refuses_conflicting_reinstalls() {
    let data = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let registry = Registry::new(data.path());
    write_package(&src.path().join("v1"), "1.0.0", b"one");
    write_package(&src.path().join("v2"), "1.1.0", b"two");
    assert!(
        registry
            .install(&src.path().join("v1"), false)
            .unwrap()
            .active
    );
    // A second version does not replace the active one unless asked.
    assert!(
        !registry
            .install(&src.path().join("v2"), false)
            .unwrap()
            .active
    );
    assert_eq!(
        registry.active_version("test-model").unwrap().as_deref(),
        Some("1.0.0")
    );
    registry.activate("test-model", "1.1.0").unwrap();
    assert_eq!(
        registry.open_active("test-model").unwrap().manifest.version,
        "1.1.0"
    );
    // The same files again: a no-op. Different files under the same version: refused.
    registry.install(&src.path().join("v1"), false).unwrap();
    write_package(&src.path().join("v1b"), "1.0.0", b"other");
    assert!(matches!(
        registry.install(&src.path().join("v1b"), false),
        Err(RegistryError::Conflict { .. })
    ));
    let listed = registry.list().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|m| m.active == (m.version == "1.1.0")));
    assert!(registry
        .verify_all()
        .unwrap()
        .iter()
        .all(|(_, r)| r.is_ok()));
    // Corruption after install is found by verify.
    std::fs::write(
        data.path().join("models/test-model/1.0.0/backbone.onnx"),
        b"bitrot",
    )
    .unwrap();
    let results = registry.verify_all().unwrap();
    assert!(results
        .iter()
        .any(|(m, r)| m.version == "1.0.0" && r.is_err()));
    assert!(matches!(
        registry.activate("test-model", "9.9.9"),
        Err(RegistryError::UnknownVersion { .. })
    ));
    assert!(matches!(
        registry.open_active("nope"),
        Err(RegistryError::UnknownModel(_))
    ));
}

/// Add a `[validation]` section naming `file` (placeholder bytes: only the hash is checked).
fn add_validation_set(dir: &Path, file: &str) {
    std::fs::write(dir.join("validation.safetensors"), b"validation-bytes").unwrap();
    let sha = sha256_file(&dir.join("validation.safetensors")).unwrap();
    let mut manifest = std::fs::read_to_string(dir.join("manifest.toml")).unwrap();
    manifest.push_str(&format!(
        "[validation]\nfile = \"{file}\"\nsha256 = \"{sha}\"\ncases = 8\n"
    ));
    std::fs::write(dir.join("manifest.toml"), manifest).unwrap();
}

#[test]
fn a_tampered_or_missing_validation_set_is_refused_like_a_model_file() {
    let dir = tempfile::tempdir().unwrap();
    write_package(dir.path(), "1.0.0", b"backbone");
    add_validation_set(dir.path(), "validation.safetensors");
    let package = Package::open(dir.path()).unwrap();
    assert_eq!(
        package.validation_path(),
        Some(dir.path().join("validation.safetensors"))
    );

    std::fs::write(dir.path().join("validation.safetensors"), b"tampered").unwrap();
    let err = Package::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, PackageError::HashMismatch { path, .. } if path.ends_with("validation.safetensors")),
        "{err}"
    );
    std::fs::remove_file(dir.path().join("validation.safetensors")).unwrap();
    assert!(matches!(
        Package::open(dir.path()),
        Err(PackageError::MissingFile { .. })
    ));
}

#[test]
fn a_validation_set_outside_the_package_folder_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    write_package(dir.path(), "1.0.0", b"backbone");
    add_validation_set(dir.path(), "../validation.safetensors");
    let err = Package::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("plain file name"), "{err}");
}

#[test]
fn installing_a_package_copies_its_validation_set_and_the_copy_verifies() {
    let data = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    write_package(src.path(), "1.0.0", b"backbone");
    add_validation_set(src.path(), "validation.safetensors");
    let registry = Registry::new(data.path());
    registry.install(src.path(), true).unwrap();
    let installed = registry.open_active("test-model").unwrap();
    let copy = installed.validation_path().unwrap();
    assert!(copy.starts_with(data.path()), "{}", copy.display());
    assert_eq!(std::fs::read(copy).unwrap(), b"validation-bytes");
}
