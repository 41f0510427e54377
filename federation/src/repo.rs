//! The fleet's update repository, operator side: one TUF trust root (the `tough` crate) for
//! firmware bundles and model packages. `fleet repo init` makes the keys and the first root;
//! `fleet repo publish` adds a target and signs new targets, snapshot and timestamp metadata;
//! `fleet repo refresh` re-signs the snapshot and timestamp (they expire within days, so a
//! device that is served stale metadata notices: the freeze attack); `fleet repo rotate-key`
//! replaces a role's key with a new root version signed by the old root keys (and by the new
//! ones when the root key itself rotates).
//!
//! Layout of a repository folder:
//! - `keys/`: the private keys (PKCS#8 DER, mode 0600): `root-1.pk8` .. `root-N.pk8`,
//!   `targets.pk8`, `snapshot.pk8`, `timestamp.pk8`. Only the operator holds these; in
//!   production the root keys live offline, each with another person.
//! - `repository/metadata/`: what devices fetch (`N.root.json`, `timestamp.json`,
//!   `N.snapshot.json`, `N.targets.json`: consistent snapshots).
//! - `repository/targets/`: the targets, named by their SHA-256 (`<sha256>.<name>`).
//!
//! `fleet repo delegate-federation` delegates the `federation` role (paths `heads/*`) to the
//! federation server's key, which signs global heads.
//!
//! A target's `custom` metadata says what it is, so a device picks what to download from
//! signed metadata alone: `{"kind": "firmware", "version", "hardware", "min_from_version"}`
//! or `{"kind": "model", "model", "version"}`.

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use thiserror::Error;
use tough::editor::signed::SignedRole;
use tough::editor::RepositoryEditor;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Target};
use tough::TargetName;

#[derive(Debug, Error)]
pub enum RepoError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("TUF: {0}")]
    Tuf(String),
    #[error("{0}")]
    Invalid(String),
}

fn tuf(e: impl std::fmt::Display) -> RepoError {
    RepoError::Tuf(e.to_string())
}

/// How long each role's metadata stays valid.
#[derive(Debug, Clone, Copy)]
pub struct Expiry {
    pub root: jiff::SignedDuration,
    pub targets: jiff::SignedDuration,
    pub snapshot: jiff::SignedDuration,
    pub timestamp: jiff::SignedDuration,
}

impl Default for Expiry {
    /// Root a year, targets 90 days, snapshot a week, timestamp a day (`fleet repo refresh`
    /// daily keeps a repository fresh).
    fn default() -> Self {
        let days = |d: i64| jiff::SignedDuration::from_hours(24 * d);
        Expiry {
            root: days(365),
            targets: days(90),
            snapshot: days(7),
            timestamp: days(1),
        }
    }
}

/// A repository folder.
#[derive(Debug, Clone)]
pub struct Repo {
    pub dir: PathBuf,
}

const TOP_ROLES: [RoleType; 3] = [RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp];

fn role_name(role: RoleType) -> &'static str {
    match role {
        RoleType::Root => "root",
        RoleType::Targets => "targets",
        RoleType::Snapshot => "snapshot",
        RoleType::Timestamp => "timestamp",
        RoleType::DelegatedTargets => "delegated",
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, RepoError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A new ed25519 key as PKCS#8 DER, written with mode 0600.
fn new_key(path: &Path) -> Result<(), RepoError> {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let der = key
        .to_pkcs8_der()
        .map_err(|e| RepoError::Invalid(format!("encode key: {e}")))?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(der.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn source(path: PathBuf) -> Box<dyn KeySource> {
    Box::new(LocalKeySource { path })
}

impl Repo {
    pub fn new(dir: &Path) -> Repo {
        Repo {
            dir: dir.to_path_buf(),
        }
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }

    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join("repository/metadata")
    }

    pub fn targets_dir(&self) -> PathBuf {
        self.dir.join("repository/targets")
    }

    /// The key files of `role` (the root's, all of them).
    pub fn key_files(&self, role: RoleType) -> Result<Vec<PathBuf>, RepoError> {
        let name = role_name(role);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.keys_dir())? {
            let path = entry?.path();
            let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
            let stem = file.strip_suffix(".pk8").unwrap_or("");
            if stem == name || stem.strip_prefix(name).is_some_and(|n| n.starts_with('-')) {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }

    fn keys_of(&self, roles: &[RoleType]) -> Result<Vec<Box<dyn KeySource>>, RepoError> {
        let mut out = Vec::new();
        for role in roles {
            out.extend(self.key_files(*role)?.into_iter().map(source));
        }
        Ok(out)
    }

    /// The newest root version in the repository, and its path.
    pub fn latest_root(&self) -> Result<(u64, PathBuf), RepoError> {
        self.latest("root")
    }

    /// The newest `N.<role>.json` in the metadata folder, and its path.
    fn latest(&self, role: &str) -> Result<(u64, PathBuf), RepoError> {
        let suffix = format!(".{role}.json");
        let mut best = None;
        for entry in std::fs::read_dir(self.metadata_dir())? {
            let path = entry?.path();
            let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
            if let Some(n) = file
                .strip_suffix(&suffix)
                .and_then(|n| n.parse::<u64>().ok())
            {
                if best.as_ref().is_none_or(|(b, _)| n > *b) {
                    best = Some((n, path));
                }
            }
        }
        best.ok_or_else(|| RepoError::Invalid(format!("no N{suffix} in the repository")))
    }

    /// Make the keys (`root_keys` root keys of which `threshold` must sign, one key each for
    /// targets, snapshot and timestamp), the first root and empty targets metadata.
    pub fn init(&self, root_keys: usize, threshold: u64, expiry: Expiry) -> Result<(), RepoError> {
        if root_keys == 0 || threshold == 0 || threshold > root_keys as u64 {
            return Err(RepoError::Invalid(format!(
                "a threshold of {threshold} of {root_keys} root keys cannot sign"
            )));
        }
        if self.dir.join("repository").exists() {
            return Err(RepoError::Invalid(format!(
                "{} holds a repository already",
                self.dir.display()
            )));
        }
        std::fs::create_dir_all(self.keys_dir())?;
        std::fs::create_dir_all(self.metadata_dir())?;
        std::fs::create_dir_all(self.targets_dir())?;
        for i in 1..=root_keys {
            new_key(&self.keys_dir().join(format!("root-{i}.pk8")))?;
        }
        for role in TOP_ROLES {
            new_key(&self.keys_dir().join(format!("{}.pk8", role_name(role))))?;
        }
        let rt = runtime()?;
        rt.block_on(async {
            let mut root = Root {
                spec_version: "1.0.0".into(),
                consistent_snapshot: true,
                version: NonZeroU64::MIN,
                expires: jiff::Timestamp::now() + expiry.root,
                keys: Default::default(),
                roles: Default::default(),
                _extra: Default::default(),
            };
            let mut plan = vec![(RoleType::Root, self.key_files(RoleType::Root)?, threshold)];
            for role in TOP_ROLES {
                plan.push((role, self.key_files(role)?, 1));
            }
            for (role, files, threshold) in plan {
                self.assign(&mut root, role, &files, threshold).await?;
            }
            let signed = SignedRole::new(
                root.clone(),
                &KeyHolder::Root(root),
                &self.keys_of(&[RoleType::Root])?,
                &aws_lc_rs::rand::SystemRandom::new(),
            )
            .await
            .map_err(tuf)?;
            signed.write(self.metadata_dir(), true).await.map_err(tuf)?;
            let (_, root_path) = self.latest_root()?;
            let mut editor = RepositoryEditor::new(&root_path).await.map_err(tuf)?;
            let one = NonZeroU64::MIN;
            stamp(&mut editor, [one; 3], expiry)?;
            let signed = editor.sign(&self.keys_of(&TOP_ROLES)?).await.map_err(tuf)?;
            signed.write(self.metadata_dir()).await.map_err(tuf)
        })
    }

    /// Give `role` the keys in `files` (replacing its keys) with `threshold`.
    async fn assign(
        &self,
        root: &mut Root,
        role: RoleType,
        files: &[PathBuf],
        threshold: u64,
    ) -> Result<(), RepoError> {
        let mut keyids = Vec::new();
        for file in files {
            let key = source(file.clone()).as_sign().await.map_err(tuf)?.tuf_key();
            let id = key.key_id().map_err(tuf)?;
            root.keys.insert(id.clone(), key);
            keyids.push(id);
        }
        let threshold = NonZeroU64::new(threshold)
            .ok_or_else(|| RepoError::Invalid("a threshold of 0".into()))?;
        root.roles.insert(
            role,
            RoleKeys {
                keyids,
                threshold,
                _extra: Default::default(),
            },
        );
        // Keys no role uses any more leave the root.
        let used: std::collections::HashSet<_> = root
            .roles
            .values()
            .flat_map(|r| r.keyids.iter().cloned())
            .collect();
        root.keys.retain(|id, _| used.contains(id));
        Ok(())
    }

    /// Sign new targets (with `add` added, when given), snapshot and timestamp metadata, one
    /// version above the current ones.
    async fn resign(
        &self,
        add: Option<(&Path, &str, serde_json::Map<String, serde_json::Value>)>,
        edit: impl FnOnce(&mut tough::schema::Targets) -> Result<(), RepoError>,
        expiry: Expiry,
    ) -> Result<(), RepoError> {
        // The operator's own metadata, read as written (not verified: after a key rotation the
        // current timestamp is signed by the retired key, and this re-signs it).
        let (targets_v, targets_path) = self.latest("targets")?;
        let (snapshot_v, _) = self.latest("snapshot")?;
        let timestamp: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.metadata_dir().join("timestamp.json"))?)
                .map_err(|e| RepoError::Invalid(format!("timestamp.json: {e}")))?;
        let timestamp_v = timestamp["signed"]["version"]
            .as_u64()
            .ok_or_else(|| RepoError::Invalid("timestamp.json has no version".into()))?;
        let mut targets: tough::schema::Signed<tough::schema::Targets> =
            serde_json::from_slice(&std::fs::read(&targets_path)?)
                .map_err(|e| RepoError::Invalid(format!("{}: {e}", targets_path.display())))?;
        edit(&mut targets.signed)?;
        let next = |v: u64| {
            v.checked_add(1)
                .and_then(NonZeroU64::new)
                .ok_or_else(|| RepoError::Invalid("version overflow".into()))
        };
        let (targets_v, snapshot_v, timestamp_v) =
            (next(targets_v)?, next(snapshot_v)?, next(timestamp_v)?);
        let (_, root_path) = self.latest_root()?;
        let mut editor = RepositoryEditor::new(&root_path).await.map_err(tuf)?;
        editor.targets(targets).map_err(tuf)?;
        if let Some((file, name, custom)) = &add {
            let mut target = Target::from_path(file).await.map_err(tuf)?;
            target.custom.extend(custom.clone());
            editor.add_target(*name, target).map_err(tuf)?;
        }
        stamp(&mut editor, [targets_v, snapshot_v, timestamp_v], expiry)?;
        let signed = editor.sign(&self.keys_of(&TOP_ROLES)?).await.map_err(tuf)?;
        if let Some((file, name, _)) = add {
            let name = TargetName::new(name).map_err(tuf)?;
            signed
                .copy_target(
                    file,
                    &self.targets_dir(),
                    tough::editor::signed::PathExists::Replace,
                    Some(&name),
                )
                .await
                .map_err(tuf)?;
        }
        signed.write(self.metadata_dir()).await.map_err(tuf)
    }

    /// Publish a firmware bundle: checked (its `bundle.json`), added under its file name
    /// with its version, hardware and oldest version it updates from in the signed metadata.
    pub fn publish_bundle(&self, bundle: &Path, expiry: Expiry) -> Result<String, RepoError> {
        let manifest = read_bundle_manifest(bundle)?;
        let file = bundle
            .file_name()
            .and_then(|f| f.to_str())
            .ok_or_else(|| RepoError::Invalid(format!("{}: no file name", bundle.display())))?;
        let name = file.to_string();
        let mut custom = serde_json::Map::new();
        custom.insert("kind".into(), "firmware".into());
        custom.insert("version".into(), manifest.version.clone().into());
        custom.insert("hardware".into(), manifest.hardware.clone().into());
        custom.insert(
            "min_from_version".into(),
            manifest.min_from_version.clone().into(),
        );
        runtime()?.block_on(self.resign(Some((bundle, &name, custom)), |_| Ok(()), expiry))?;
        Ok(name)
    }

    /// Publish a model package folder (its `manifest.toml` names `id` and `version`): every
    /// file of the folder goes into one archive in the firmware bundle's format (each file's
    /// SHA-256 checked when a device unpacks it), added as `model-<id>-<version>.tar` with
    /// `{"kind": "model", "model": id, "version"}` in its signed metadata.
    pub fn publish_model(&self, package: &Path, expiry: Expiry) -> Result<String, RepoError> {
        let manifest_path = package.join("manifest.toml");
        let text = std::fs::read_to_string(&manifest_path)?;
        let manifest: toml::Table = text
            .parse()
            .map_err(|e| RepoError::Invalid(format!("{}: {e}", manifest_path.display())))?;
        let field = |key: &str| {
            manifest
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| RepoError::Invalid(format!("{}: no {key}", manifest_path.display())))
        };
        let (id, version) = (field("id")?, field("version")?);
        fleet_wire::message::check_id(&id)
            .map_err(|e| RepoError::Invalid(format!("model id {id:?}: {e}")))?;
        semver::Version::parse(&version)
            .map_err(|e| RepoError::Invalid(format!("model version {version:?}: {e}")))?;
        let mut files = Vec::new();
        for entry in std::fs::read_dir(package)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                return Err(RepoError::Invalid(format!(
                    "{}: a model package holds plain files only",
                    entry.path().display()
                )));
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            files.push((name, entry.path(), 0o644));
        }
        let work = tempfile::tempdir()?;
        let name = format!("model-{id}-{version}.tar");
        let archive = work.path().join(&name);
        image::bundle::make(&version, &["any".to_string()], "0.0.0", &files, &archive)
            .map_err(|e| RepoError::Invalid(format!("{}: {e}", package.display())))?;
        let mut custom = serde_json::Map::new();
        custom.insert("kind".into(), "model".into());
        custom.insert("model".into(), id.into());
        custom.insert("version".into(), version.into());
        runtime()?.block_on(self.resign(Some((&archive, &name, custom)), |_| Ok(()), expiry))?;
        Ok(name)
    }

    /// Delegate the `federation` role (global heads, paths `heads/*`) to the federation
    /// server's ed25519 public key (`federation keygen`'s PEM), replacing the key it had: the
    /// targets key signs which key speaks for the federation, so devices configured with
    /// `trusted_key = "repository"` take it through the trust root, and rotating or revoking
    /// it is this command with another key. Only the public key is needed here. Returns the
    /// key id.
    pub fn delegate_federation(
        &self,
        public_key: &Path,
        expiry: Expiry,
    ) -> Result<String, RepoError> {
        let pem = std::fs::read_to_string(public_key)?;
        let key = fleet_wire::signed::verifying_key_from_pem(&pem)
            .map_err(|e| RepoError::Invalid(format!("{}: {e}", public_key.display())))?;
        let key: tough::schema::key::Key = serde_json::from_value(serde_json::json!({
            "keytype": "ed25519",
            "scheme": "ed25519",
            "keyval": {"public": hex::encode(key.as_bytes())},
        }))
        .map_err(tuf)?;
        let id = key.key_id().map_err(tuf)?;
        let keyid = hex::encode(id.as_ref() as &[u8]);
        let role = tough::schema::DelegatedRole {
            name: fleet_wire::site::FEDERATION_ROLE.to_string(),
            keyids: vec![id.clone()],
            threshold: NonZeroU64::MIN,
            paths: tough::schema::PathSet::Paths(vec![
                tough::schema::PathPattern::new("heads/*").map_err(tuf)?
            ]),
            terminating: true,
            targets: None,
        };
        let edit = |targets: &mut tough::schema::Targets| {
            let delegations =
                targets
                    .delegations
                    .get_or_insert_with(|| tough::schema::Delegations {
                        keys: Default::default(),
                        roles: Vec::new(),
                    });
            delegations
                .roles
                .retain(|r| r.name != fleet_wire::site::FEDERATION_ROLE);
            delegations.roles.push(role);
            delegations.keys.insert(id, key);
            // Keys no delegated role names any more leave the metadata.
            let used: std::collections::HashSet<_> = delegations
                .roles
                .iter()
                .flat_map(|r| r.keyids.iter().cloned())
                .collect();
            delegations.keys.retain(|id, _| used.contains(id));
            Ok(())
        };
        runtime()?.block_on(self.resign(None, edit, expiry))?;
        Ok(keyid)
    }

    /// Re-sign targets, snapshot and timestamp with fresh expiries.
    pub fn refresh(&self, expiry: Expiry) -> Result<(), RepoError> {
        runtime()?.block_on(self.resign(None, |_| Ok(()), expiry))
    }

    /// Replace `role`'s keys by one new key (`count` new keys and `threshold` for the root), in a
    /// new root version signed by the current root keys and, for a root rotation, the new ones
    /// too; then re-sign the other metadata. The old key files are kept as `*.pk8.retired`.
    pub fn rotate_key(
        &self,
        role: RoleType,
        count: usize,
        threshold: u64,
        expiry: Expiry,
    ) -> Result<(), RepoError> {
        let (version, root_path) = self.latest_root()?;
        let old_root_keys = self.key_files(RoleType::Root)?;
        let old = self.key_files(role)?;
        let (count, threshold) = if role == RoleType::Root {
            (count, threshold)
        } else {
            (1, 1)
        };
        if count == 0 || threshold == 0 || threshold > count as u64 {
            return Err(RepoError::Invalid(format!(
                "a threshold of {threshold} of {count} keys cannot sign"
            )));
        }
        let stamp = version + 1;
        let mut fresh = Vec::new();
        for i in 1..=count {
            let name = if role == RoleType::Root {
                format!("root-v{stamp}-{i}.pk8")
            } else {
                format!("{}-v{stamp}.pk8", role_name(role))
            };
            let path = self.keys_dir().join(name);
            new_key(&path)?;
            fresh.push(path);
        }
        let rt = runtime()?;
        rt.block_on(async {
            let current: tough::schema::Signed<Root> =
                serde_json::from_slice(&std::fs::read(&root_path)?)
                    .map_err(|e| RepoError::Invalid(format!("{}: {e}", root_path.display())))?;
            let mut root = current.signed.clone();
            root.version =
                NonZeroU64::new(stamp).ok_or_else(|| RepoError::Invalid("version".into()))?;
            root.expires = jiff::Timestamp::now() + expiry.root;
            self.assign(&mut root, role, &fresh, threshold).await?;
            // Signed by the old root's keys (the device trusts them) and, when the root key
            // rotates, by the new root's too (a root must satisfy its own threshold).
            let old_signers: Vec<Box<dyn KeySource>> =
                old_root_keys.iter().cloned().map(source).collect();
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let by_old = SignedRole::new(
                root.clone(),
                &KeyHolder::Root(current.signed.clone()),
                &old_signers,
                &rng,
            )
            .await
            .map_err(tuf)?;
            let signed = if role == RoleType::Root {
                let new_signers: Vec<Box<dyn KeySource>> =
                    fresh.iter().cloned().map(source).collect();
                SignedRole::new(root.clone(), &KeyHolder::Root(root), &new_signers, &rng)
                    .await
                    .map_err(tuf)?
                    .add_old_signatures(by_old.signed().signatures.clone())
                    .map_err(tuf)?
            } else {
                by_old
            };
            signed.write(self.metadata_dir(), true).await.map_err(tuf)
        })?;
        for path in old {
            let retired = PathBuf::from(format!("{}.retired", path.display()));
            std::fs::rename(&path, retired)?;
        }
        self.refresh(expiry)
    }
}

/// Set the targets, snapshot and timestamp versions (in that order) and their expiries from
/// now.
fn stamp(
    editor: &mut RepositoryEditor,
    [targets, snapshot, timestamp]: [NonZeroU64; 3],
    expiry: Expiry,
) -> Result<(), RepoError> {
    let now = jiff::Timestamp::now();
    editor
        .targets_version(targets)
        .map_err(tuf)?
        .targets_expires(now + expiry.targets)
        .map_err(tuf)?
        .snapshot_version(snapshot)
        .snapshot_expires(now + expiry.snapshot)
        .timestamp_version(timestamp)
        .timestamp_expires(now + expiry.timestamp);
    Ok(())
}

/// The `bundle.json` of a firmware bundle (the archive's first member), checked.
pub fn read_bundle_manifest(bundle: &Path) -> Result<image::bundle::Manifest, RepoError> {
    use std::io::Read;
    let mut tar = tar::Archive::new(std::fs::File::open(bundle)?);
    let mut entries = tar.entries()?;
    let first = entries
        .next()
        .ok_or_else(|| RepoError::Invalid(format!("{}: an empty archive", bundle.display())))??;
    if first.path()?.as_ref() != Path::new(image::bundle::MANIFEST) {
        return Err(RepoError::Invalid(format!(
            "{}: not a firmware bundle (it does not start with bundle.json)",
            bundle.display()
        )));
    }
    let mut json = Vec::new();
    first
        .take(image::bundle::MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut json)?;
    image::bundle::Manifest::parse(&json)
        .map_err(|e| RepoError::Invalid(format!("{}: {e}", bundle.display())))
}
