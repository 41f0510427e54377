//! Firmware bundles through the fleet's trust root: the repository's TUF metadata is verified
//! (`tough`: signatures and thresholds from the shipped root through every later root, expiry,
//! versions that never go down, kept in `<data_dir>/update/tuf/` and across power cuts by
//! `tuf_seen`), the newest bundle for this hardware and running version is chosen from signed
//! metadata alone, downloaded into `<data_dir>/update/downloads/` (no byte past its signed
//! length, its signed SHA-256), and unpacked there with every file checked against its
//! `bundle.json`; only then is it moved to `<data_dir>/update/staged/<version>/`. Nothing
//! outside the download folder is written before all of that holds, and every refusal is typed
//! and says why.

use crate::transport::RepositoryTransport;
use crate::tuf_seen;
use image::bundle::{self, BundleError};
use std::path::{Path, PathBuf};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tough::{ExpirationEnforcement, Limits, RepositoryLoader, TargetName};

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The durable record of the metadata seen before could not be read or written.
    #[error("the metadata seen before: {0}")]
    Seen(#[from] tuf_seen::SeenError),
    #[error("configuration: {0}")]
    Config(String),
    /// The repository's metadata did not verify (signatures, thresholds, expiry, versions).
    #[error("the repository's metadata is not trusted: {0}")]
    Metadata(String),
    /// The target did not match its signed length or hash.
    #[error("{target}: {reason}")]
    Target { target: String, reason: String },
    /// The bundle itself (its manifest, a file, its compatibility).
    #[error("{target}: {source}")]
    Bundle {
        target: String,
        #[source]
        source: BundleError,
    },
}

/// What `fetch` did.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Fetched {
    /// No signed bundle is newer than the running version for this hardware; `skipped` says
    /// why each firmware target was not taken.
    UpToDate {
        running: String,
        skipped: Vec<Skipped>,
    },
    /// A bundle verified and unpacked into `path`.
    Staged {
        target: String,
        version: String,
        path: PathBuf,
    },
}

/// A signed firmware target this device does not take, and why.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct Skipped {
    pub target: String,
    pub reason: String,
}

/// The update folder's parts.
pub fn update_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("update")
}

/// Most bytes of each metadata file the updater reads (endless-data attacks on metadata).
fn limits() -> Limits {
    Limits {
        max_root_size: 1 << 20,
        max_targets_size: 16 << 20,
        max_timestamp_size: 64 << 10,
        max_snapshot_size: 1 << 20,
        max_root_updates: 64,
    }
}

/// A signed firmware target as its `custom` metadata describes it.
struct Candidate {
    name: TargetName,
    version: semver::Version,
}

/// Check the repository, and fetch and stage the newest bundle newer than `running` for
/// `arch`.
pub fn fetch(
    data_dir: &Path,
    config: &fleet_wire::site::UpdateConfig,
    running: &str,
    arch: &str,
    wanted: Option<&semver::Version>,
) -> Result<Fetched, FetchError> {
    let running_v = semver::Version::parse(running)
        .map_err(|e| FetchError::Config(format!("running version {running:?}: {e}")))?;
    let dir = update_dir(data_dir);
    let downloads = dir.join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let repo = load(data_dir, config).await?;
        stage(&repo, &dir, running, &running_v, arch, wanted).await
    })
}

/// Load and verify the repository's metadata through the trust root (`<data_dir>/update/tuf/`
/// keeps what was seen: versions never go down).
pub(crate) async fn load(
    data_dir: &Path,
    config: &fleet_wire::site::UpdateConfig,
) -> Result<tough::Repository, FetchError> {
    let base = url::Url::parse(&config.repository)
        .map_err(|e| FetchError::Config(format!("update.repository: {e}")))?;
    let base = if base.path().ends_with('/') {
        base
    } else {
        url::Url::parse(&format!("{base}/"))
            .map_err(|e| FetchError::Config(format!("update.repository: {e}")))?
    };
    let join = |p: &str| {
        base.join(p)
            .map_err(|e| FetchError::Config(format!("update.repository: {e}")))
    };
    let (metadata_url, targets_url) = (join("metadata/")?, join("targets/")?);
    let root = std::fs::read(&config.trusted_root).map_err(|e| {
        FetchError::Config(format!(
            "update.trusted_root {}: {e}",
            config.trusted_root.display()
        ))
    })?;
    let tuf = update_dir(data_dir).join("tuf");
    let transport = RepositoryTransport::new(config.ca_file.as_deref())
        .map_err(|e| FetchError::Config(e.to_string()))?;
    let _held = tuf_seen::hold(&tuf)?;
    let loaded = RepositoryLoader::new(&root, metadata_url, targets_url)
        .transport(transport)
        .datastore(&tuf)
        .limits(limits())
        .expiration_enforcement(ExpirationEnforcement::Safe)
        .load()
        .await;
    // Recorded before anything acts on the metadata, and after a refusal too: tough may have
    // taken a newer timestamp before it refused the snapshot.
    tuf_seen::record(&tuf)?;
    loaded.map_err(|e| FetchError::Metadata(e.to_string()))
}

/// The key the repository's targets role delegates the `federation` role to: the one key
/// global heads must be signed with (`[federation] trusted_key = "repository"`).
pub fn federation_key(
    data_dir: &Path,
    config: &fleet_wire::site::UpdateConfig,
) -> Result<fleet_wire::signed::VerifyingKey, FetchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let repo = rt.block_on(load(data_dir, config))?;
    let role_name = fleet_wire::site::FEDERATION_ROLE;
    let not_delegated = |why: &str| FetchError::Metadata(format!("the {role_name} role: {why}"));
    let delegations = repo
        .targets()
        .signed
        .delegations
        .as_ref()
        .ok_or_else(|| not_delegated("the targets metadata delegates nothing"))?;
    let role = delegations
        .roles
        .iter()
        .find(|r| r.name == role_name)
        .ok_or_else(|| not_delegated("not delegated"))?;
    let [keyid] = role.keyids.as_slice() else {
        return Err(not_delegated("it must have exactly one key"));
    };
    match delegations.keys.get(keyid) {
        Some(tough::schema::key::Key::Ed25519 { keyval, .. }) => {
            let bytes: &[u8] = keyval.public.as_ref();
            let bytes: [u8; 32] = bytes
                .try_into()
                .map_err(|_| not_delegated("its key is not 32 bytes"))?;
            fleet_wire::signed::VerifyingKey::from_bytes(&bytes)
                .map_err(|e| not_delegated(&format!("its key: {e}")))
        }
        Some(_) => Err(not_delegated("its key is not ed25519")),
        None => Err(not_delegated("its key is not listed")),
    }
}

/// Download `name` into `downloads` through `<file>.part` (tough stops at its signed length
/// and checks its signed hash); returns the finished file and its plain name. A failure
/// leaves no partial file.
pub(crate) async fn download(
    repo: &tough::Repository,
    name: &TargetName,
    downloads: &Path,
) -> Result<(PathBuf, String), FetchError> {
    let target_error = |reason: String| FetchError::Target {
        target: name.raw().to_string(),
        reason,
    };
    // Names are checked by tough (no separators that leave the folder); the file name used
    // here is the plain name with anything but [A-Za-z0-9._-] replaced.
    let file: String = name
        .raw()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let part = downloads.join(format!("{file}.part"));
    let done = downloads.join(&file);
    let mut stream = repo
        .read_target(name)
        .await
        .map_err(|e| target_error(e.to_string()))?
        .ok_or_else(|| target_error("listed, then not found".into()))?;
    let mut out = tokio::fs::File::create(&part).await?;
    use futures_util::StreamExt;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => out.write_all(&bytes).await?,
            Err(e) => {
                drop(out);
                let _ = std::fs::remove_file(&part);
                return Err(target_error(e.to_string()));
            }
        }
    }
    out.sync_all().await?;
    drop(out);
    std::fs::rename(&part, &done)?;
    Ok((done, file))
}

/// Choose, download, check, unpack and stage the bundle to take from a verified repository.
async fn stage(
    repo: &tough::Repository,
    dir: &Path,
    running: &str,
    running_v: &semver::Version,
    arch: &str,
    wanted: Option<&semver::Version>,
) -> Result<Fetched, FetchError> {
    let downloads = dir.join("downloads");
    {
        let (candidate, skipped) = newest(repo, running_v, arch, wanted);
        let Some(candidate) = candidate else {
            return Ok(Fetched::UpToDate {
                running: running.to_string(),
                skipped,
            });
        };
        let target = candidate.name.raw().to_string();
        let target_error = |reason: String| FetchError::Target {
            target: target.clone(),
            reason,
        };
        let (done, file) = download(repo, &candidate.name, &downloads).await?;
        // Unpacked inside the download folder, every file checked; then staged.
        let unpacked = downloads.join(format!("{file}.d"));
        if unpacked.exists() {
            std::fs::remove_dir_all(&unpacked)?;
        }
        let bundle_error = |source: BundleError| FetchError::Bundle {
            target: target.clone(),
            source,
        };
        let manifest = match bundle::unpack(&done, &unpacked) {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&unpacked);
                return Err(bundle_error(e));
            }
        };
        // The bundle must be the release the signed metadata describes (not another
        // release's archive under this name), and fit this device.
        if manifest.version != candidate.version.to_string() {
            let _ = std::fs::remove_dir_all(&unpacked);
            return Err(target_error(format!(
                "its bundle.json says version {}, the signed metadata {}",
                manifest.version, candidate.version
            )));
        }
        if let Err(e) = manifest.check_compatible(running, arch) {
            let _ = std::fs::remove_dir_all(&unpacked);
            return Err(bundle_error(e));
        }
        let staged = dir.join("staged").join(&manifest.version);
        std::fs::create_dir_all(dir.join("staged"))?;
        if staged.exists() {
            std::fs::remove_dir_all(&staged)?;
        }
        std::fs::rename(&unpacked, &staged)?;
        std::fs::File::open(dir.join("staged"))?.sync_all()?;
        // The archive is unpacked and every file checked: it is not needed any more, nor is a
        // bundle staged earlier and not installed (this one is newer).
        std::fs::remove_file(&done)?;
        for entry in std::fs::read_dir(dir.join("staged"))? {
            let path = entry?.path();
            if path != staged {
                std::fs::remove_dir_all(&path)?;
            }
        }
        Ok(Fetched::Staged {
            target,
            version: manifest.version,
            path: staged,
        })
    }
}

/// The newest signed firmware for `arch` that can replace `running` (exactly `wanted` when a
/// release announced one), and why each other firmware target is not taken.
fn newest(
    repo: &tough::Repository,
    running: &semver::Version,
    arch: &str,
    wanted: Option<&semver::Version>,
) -> (Option<Candidate>, Vec<Skipped>) {
    let mut best: Option<Candidate> = None;
    let mut skipped = Vec::new();
    for (name, target) in repo.all_targets() {
        let custom = &target.custom;
        if custom.get("kind").and_then(|k| k.as_str()) != Some("firmware") {
            continue;
        }
        let text = |key: &str| custom.get(key).and_then(|v| v.as_str());
        let version = text("version").and_then(|v| semver::Version::parse(v).ok());
        let min_from = text("min_from_version").and_then(|v| semver::Version::parse(v).ok());
        let hardware: Vec<&str> = custom
            .get("hardware")
            .and_then(|h| h.as_array())
            .map(|h| h.iter().filter_map(|a| a.as_str()).collect())
            .unwrap_or_default();
        let reason = match (&version, &min_from) {
            (None, _) | (_, None) => Some("its signed metadata has no valid version".to_string()),
            _ if !hardware.contains(&arch) => Some(format!(
                "built for hardware {hardware:?}, this device is {arch}"
            )),
            (Some(v), _) if v <= running => {
                Some(format!("version {v} is not newer than {running}"))
            }
            (_, Some(min)) if running < min => Some(format!(
                "it updates from {min} or later; this device runs {running}"
            )),
            (Some(v), _) if wanted.is_some_and(|w| w != v) => Some(format!(
                "the release announced is {}",
                wanted.map(|w| w.to_string()).unwrap_or_default()
            )),
            _ => None,
        };
        let (Some(version), None) = (version, &reason) else {
            skipped.push(Skipped {
                target: name.raw().to_string(),
                reason: reason.unwrap_or_default(),
            });
            continue;
        };
        if let Some(b) = best.take() {
            let (keep, drop) = if version > b.version {
                (
                    Candidate {
                        name: name.clone(),
                        version,
                    },
                    b,
                )
            } else {
                (
                    b,
                    Candidate {
                        name: name.clone(),
                        version,
                    },
                )
            };
            skipped.push(Skipped {
                target: drop.name.raw().to_string(),
                reason: format!("{} is newer", keep.version),
            });
            best = Some(keep);
        } else {
            best = Some(Candidate {
                name: name.clone(),
                version,
            });
        }
    }
    (best, skipped)
}
