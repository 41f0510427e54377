//! The firmware bundle: one tar archive holding `bundle.json` (its manifest) and the files it
//! names (binaries, systemd units, the default configuration, model packages). The manifest
//! states the version, the hardware it runs on, the oldest version it can update from, and
//! the SHA-256 and size of every file. The archive as a whole is a target of the fleet's trust
//! root (its hash and length are signed there); the manifest makes every file inside it
//! checkable on its own, so a file from another release, a truncated file or an extra file is
//! refused by name before anything is installed.
//!
//! Everything read from a bundle is bounded: the manifest's size, the number of files, each
//! path (relative, no `..`, no links), and the bytes unpacked, which can never exceed what the
//! manifest declares.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use thiserror::Error;

/// The manifest's name inside the archive.
pub const MANIFEST: &str = "bundle.json";
/// The only manifest format this code reads.
pub const FORMAT: u32 = 1;
/// Most bytes of `bundle.json`.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Most files in a bundle.
pub const MAX_FILES: usize = 4096;
/// Most bytes of all files of a bundle together.
pub const MAX_BUNDLE_BYTES: u64 = 8 << 30;

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bundle.json: {0}")]
    Manifest(String),
    #[error("file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("built for hardware {wanted:?}, this device is {have}")]
    Hardware { wanted: Vec<String>, have: String },
    #[error("version {version} updates from {min_from} or later; this device runs {running}")]
    TooOld {
        version: String,
        min_from: String,
        running: String,
    },
    #[error("version {version} is not newer than the running {running}")]
    NotNewer { version: String, running: String },
}

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub sha256: String,
    pub size: u64,
    /// Unix permission bits (0o755 for the binaries, 0o644 else).
    pub mode: u32,
}

/// `bundle.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Semantic version of the firmware.
    pub version: String,
    /// Machine architectures it runs on (`std::env::consts::ARCH`, e.g. `x86_64`).
    pub hardware: Vec<String>,
    /// The oldest running version it can update (its migrations start there).
    pub min_from_version: String,
    /// Every file, by its path relative to the slot.
    pub files: BTreeMap<String, FileEntry>,
}

impl Manifest {
    /// Parse and check `bundle.json`: format, versions, paths, hashes, bounds.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, BundleError> {
        let bad = |reason: String| BundleError::Manifest(reason);
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(bad(format!(
                "{} bytes, at most {MAX_MANIFEST_BYTES}",
                bytes.len()
            )));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if m.format != FORMAT {
            return Err(bad(format!(
                "format {}, this updater reads {FORMAT}",
                m.format
            )));
        }
        for (name, v) in [
            ("version", &m.version),
            ("min_from_version", &m.min_from_version),
        ] {
            semver::Version::parse(v).map_err(|e| bad(format!("{name} {v:?}: {e}")))?;
        }
        if m.hardware.is_empty() {
            return Err(bad("hardware lists no architecture".into()));
        }
        if m.files.is_empty() || m.files.len() > MAX_FILES {
            return Err(bad(format!(
                "{} files, between 1 and {MAX_FILES}",
                m.files.len()
            )));
        }
        let mut total = 0u64;
        for (path, entry) in &m.files {
            check_path(path).map_err(|reason| BundleError::File {
                path: path.clone(),
                reason,
            })?;
            if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BundleError::File {
                    path: path.clone(),
                    reason: "sha256 must be 64 hex digits".into(),
                });
            }
            if entry.mode & !0o777 != 0 {
                return Err(BundleError::File {
                    path: path.clone(),
                    reason: format!("mode {:o} has bits beyond 0o777", entry.mode),
                });
            }
            total = total.saturating_add(entry.size);
        }
        if total > MAX_BUNDLE_BYTES {
            return Err(bad(format!(
                "{total} bytes of files, at most {MAX_BUNDLE_BYTES}"
            )));
        }
        Ok(m)
    }

    /// Can this bundle replace `running` on `arch`?
    pub fn check_compatible(&self, running: &str, arch: &str) -> Result<(), BundleError> {
        if !self.hardware.iter().any(|h| h == arch) {
            return Err(BundleError::Hardware {
                wanted: self.hardware.clone(),
                have: arch.to_string(),
            });
        }
        let parse = |v: &str| {
            semver::Version::parse(v).map_err(|e| BundleError::Manifest(format!("{v:?}: {e}")))
        };
        let (version, min_from, now) = (
            parse(&self.version)?,
            parse(&self.min_from_version)?,
            parse(running)?,
        );
        if now < min_from {
            return Err(BundleError::TooOld {
                version: self.version.clone(),
                min_from: self.min_from_version.clone(),
                running: running.to_string(),
            });
        }
        if version <= now {
            return Err(BundleError::NotNewer {
                version: self.version.clone(),
                running: running.to_string(),
            });
        }
        Ok(())
    }
}

/// A path inside a bundle: relative, plain components only, at most 255 bytes.
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > 255 || path == MANIFEST {
        return Err("empty, longer than 255 bytes, or the manifest's own name".into());
    }
    let p = Path::new(path);
    if !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err("not a plain relative path (absolute, `..` or `.`)".into());
    }
    Ok(())
}

/// Make a bundle of `files` (path in the bundle, file on disk, mode): the archive at `out`,
/// `bundle.json` first. Returns its manifest.
pub fn make(
    version: &str,
    hardware: &[String],
    min_from_version: &str,
    files: &[(String, PathBuf, u32)],
    out: &Path,
) -> Result<Manifest, BundleError> {
    let mut entries = BTreeMap::new();
    for (path, source, mode) in files {
        let f = std::fs::File::open(source)?;
        let size = f.metadata()?.len();
        entries.insert(
            path.clone(),
            FileEntry {
                sha256: radiant_core::digest::sha256_hex(f)?,
                size,
                mode: *mode,
            },
        );
    }
    let manifest = Manifest {
        format: FORMAT,
        version: version.to_string(),
        hardware: hardware.to_vec(),
        min_from_version: min_from_version.to_string(),
        files: entries,
    };
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| BundleError::Manifest(e.to_string()))?;
    // What `make` writes must be what `parse` reads.
    Manifest::parse(&json)?;
    let mut builder = tar::Builder::new(std::fs::File::create(out)?);
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, MANIFEST, json.as_slice())?;
    for (path, source, mode) in files {
        let mut header = tar::Header::new_gnu();
        let f = std::fs::File::open(source)?;
        header.set_size(f.metadata()?.len());
        header.set_mode(*mode);
        header.set_cksum();
        builder.append_data(&mut header, path, f)?;
    }
    builder.into_inner()?.sync_all()?;
    Ok(manifest)
}

/// Unpack the bundle `archive` into `dir` (which must not exist yet), checking every file
/// against the manifest as it is written: only the files it names, each once, regular files
/// only, no byte beyond a declared size, every hash; then fsync. Returns the manifest.
pub fn unpack(archive: &Path, dir: &Path) -> Result<Manifest, BundleError> {
    let mut tar = tar::Archive::new(std::fs::File::open(archive)?);
    let mut entries = tar.entries()?;
    let first = entries
        .next()
        .ok_or_else(|| BundleError::Manifest("the archive is empty".into()))??;
    if first.path()?.as_ref() != Path::new(MANIFEST) {
        return Err(BundleError::Manifest(format!(
            "the archive starts with {}, not {MANIFEST}",
            first.path()?.display()
        )));
    }
    let mut json = Vec::new();
    first.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut json)?;
    let manifest = Manifest::parse(&json)?;
    std::fs::create_dir(dir)?;
    let mut seen = std::collections::BTreeSet::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let file_error = |reason: String| BundleError::File {
            path: path.clone(),
            reason,
        };
        let Some(expected) = manifest.files.get(&path) else {
            return Err(file_error("not in bundle.json".into()));
        };
        if !entry.header().entry_type().is_file() {
            return Err(file_error("not a regular file".into()));
        }
        if !seen.insert(path.clone()) {
            return Err(file_error("twice in the archive".into()));
        }
        let target = dir.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = std::fs::File::create(&target)?;
        let mut hasher = Sha256::new();
        let mut limited = entry.take(expected.size + 1);
        let mut buf = vec![0u8; 1 << 16];
        let mut written = 0u64;
        loop {
            let n = limited.read(&mut buf)?;
            if n == 0 {
                break;
            }
            written += n as u64;
            if written > expected.size {
                return Err(file_error(format!("more than its {} bytes", expected.size)));
            }
            hasher.update(&buf[..n]);
            std::io::Write::write_all(&mut out, &buf[..n])?;
        }
        if written != expected.size {
            return Err(file_error(format!(
                "{written} bytes, bundle.json says {}",
                expected.size
            )));
        }
        let got: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if got != expected.sha256 {
            return Err(file_error(format!(
                "SHA-256 {got}, bundle.json says {}",
                expected.sha256
            )));
        }
        use std::os::unix::fs::PermissionsExt;
        out.set_permissions(std::fs::Permissions::from_mode(expected.mode))?;
        out.sync_all()?;
    }
    if let Some(missing) = manifest.files.keys().find(|p| !seen.contains(*p)) {
        return Err(BundleError::File {
            path: missing.clone(),
            reason: "named in bundle.json but not in the archive".into(),
        });
    }
    // The manifest goes with the files, so a slot can be checked again later (`verify_dir`).
    let mut out = std::fs::File::create(dir.join(MANIFEST))?;
    std::io::Write::write_all(&mut out, &json)?;
    out.sync_all()?;
    sync_tree(dir)?;
    Ok(manifest)
}

/// Check an unpacked bundle in `dir` against its own `bundle.json`: every file there, with its
/// size and SHA-256. Returns the manifest.
pub fn verify_dir(dir: &Path) -> Result<Manifest, BundleError> {
    let mut json = Vec::new();
    std::fs::File::open(dir.join(MANIFEST))?
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut json)?;
    let manifest = Manifest::parse(&json)?;
    for (path, entry) in &manifest.files {
        let file_error = |reason: String| BundleError::File {
            path: path.clone(),
            reason,
        };
        let f = std::fs::File::open(dir.join(path)).map_err(|e| file_error(e.to_string()))?;
        let size = f.metadata()?.len();
        if size != entry.size {
            return Err(file_error(format!(
                "{size} bytes, bundle.json says {}",
                entry.size
            )));
        }
        let sha = radiant_core::digest::sha256_hex(f)?;
        if sha != entry.sha256 {
            return Err(file_error(format!(
                "SHA-256 {sha}, bundle.json says {}",
                entry.sha256
            )));
        }
    }
    Ok(manifest)
}

/// fsync every folder under `dir`, deepest first, and `dir` itself.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(dir: &Path) -> Vec<(String, PathBuf, u32)> {
        std::fs::write(dir.join("a"), b"appliance binary").unwrap();
        std::fs::write(dir.join("b"), b"[Unit]\n").unwrap();
        vec![
            ("bin/appliance".into(), dir.join("a"), 0o755),
            ("systemd/radiant-edge.service".into(), dir.join("b"), 0o644),
        ]
    }

    fn arch() -> Vec<String> {
        vec![std::env::consts::ARCH.to_string()]
    }

    #[test]
    fn a_bundle_unpacks_to_exactly_its_files_with_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let files = staged(dir.path());
        let archive = dir.path().join("b.tar");
        let made = make("0.2.0", &arch(), "0.1.0", &files, &archive).unwrap();
        let slot = dir.path().join("slot");
        assert_eq!(unpack(&archive, &slot).unwrap(), made);
        assert_eq!(verify_dir(&slot).unwrap(), made);
        std::fs::write(slot.join("bin/appliance"), b"appliance BINARY").unwrap();
        let err = verify_dir(&slot).unwrap_err().to_string();
        assert!(err.contains("bin/appliance: SHA-256"), "{err}");
        std::fs::write(slot.join("bin/appliance"), b"appliance binary").unwrap();
        assert_eq!(
            std::fs::read(slot.join("bin/appliance")).unwrap(),
            b"appliance binary"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(slot.join("bin/appliance"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        made.check_compatible("0.1.0", std::env::consts::ARCH)
            .unwrap();
    }

    #[test]
    fn wrong_hardware_too_old_a_device_or_no_newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = staged(dir.path());
        let archive = dir.path().join("b.tar");
        let m = make("0.3.0", &["riscv64".into()], "0.2.0", &files, &archive).unwrap();
        assert!(matches!(
            m.check_compatible("0.2.0", "x86_64"),
            Err(BundleError::Hardware { .. })
        ));
        let m = Manifest {
            hardware: vec!["x86_64".into()],
            ..m
        };
        assert!(matches!(
            m.check_compatible("0.1.9", "x86_64"),
            Err(BundleError::TooOld { .. })
        ));
        assert!(matches!(
            m.check_compatible("0.3.0", "x86_64"),
            Err(BundleError::NotNewer { .. })
        ));
    }

    #[test]
    fn manifests_with_unsafe_paths_bad_hashes_or_unknown_keys_are_refused_by_name() {
        let good = r#"{"format":1,"version":"1.0.0","hardware":["x86_64"],"min_from_version":"0.1.0",
            "files":{"bin/x":{"sha256":"SHA","size":1,"mode":493}}}"#;
        let ok = good.replace("SHA", &"a".repeat(64));
        Manifest::parse(ok.as_bytes()).unwrap();
        for (bad, says) in [
            (
                ok.replace("bin/x", "../etc/passwd"),
                "not a plain relative path",
            ),
            (
                ok.replace("bin/x", "/etc/passwd"),
                "not a plain relative path",
            ),
            (good.replace("SHA", "abc"), "64 hex digits"),
            (ok.replace("\"format\":1", "\"format\":2"), "format 2"),
            (ok.replace("\"mode\":493", "\"mode\":2541"), "beyond 0o777"),
            (
                ok.replace("\"format\":1", "\"format\":1,\"extra\":0"),
                "unknown field `extra`",
            ),
            (ok.replace("1.0.0", "1.0"), "version \"1.0\""),
        ] {
            let err = Manifest::parse(bad.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn a_file_swapped_for_another_releases_or_an_extra_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let files = staged(dir.path());
        let archive = dir.path().join("b.tar");
        make("0.2.0", &arch(), "0.1.0", &files, &archive).unwrap();
        // The same archive with the binary's bytes replaced by another release's (same size).
        let mut bytes = std::fs::read(&archive).unwrap();
        let at = bytes
            .windows(16)
            .position(|w| w == b"appliance binary")
            .unwrap();
        bytes[at..at + 16].copy_from_slice(b"appliance BINARY");
        let swapped = dir.path().join("swapped.tar");
        std::fs::write(&swapped, &bytes).unwrap();
        let err = unpack(&swapped, &dir.path().join("s1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bin/appliance: SHA-256"), "{err}");
        // The archive with one more file than bundle.json names.
        let extra = dir.path().join("extra.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&extra).unwrap());
        let mut original = tar::Archive::new(std::fs::File::open(&archive).unwrap());
        for entry in original.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut header = entry.header().clone();
            let path = entry.path().unwrap().into_owned();
            builder.append_data(&mut header, path, &mut entry).unwrap();
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o755);
        header.set_cksum();
        builder
            .append_data(&mut header, "bin/extra", &b"x"[..])
            .unwrap();
        builder.finish().unwrap();
        drop(builder);
        let err = unpack(&extra, &dir.path().join("s3"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bin/extra: not in bundle.json"), "{err}");
        // Truncated: the last file cut short.
        let bytes = std::fs::read(&archive).unwrap();
        let cut = dir.path().join("cut.tar");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        assert!(unpack(&cut, &dir.path().join("s2")).is_err());
    }
}
