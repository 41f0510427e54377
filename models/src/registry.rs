//! The installed models under `<data_dir>/models`: `<id>/<version>/` holds a verified copy of a
//! package, `<id>/active` names the version in use. Installing copies into a temporary folder,
//! fsyncs, then renames, so a crash never leaves a half-installed version that looks whole;
//! switching the active version is one atomic rename too.

use crate::package::{Package, PackageError};
use radiant_core::durable::{fsync_dir, write_durable, DurableError};
use std::fs;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("model {id} {version} is installed already with different files")]
    Conflict { id: String, version: String },
    #[error("no model {0} is installed")]
    UnknownModel(String),
    #[error("model {id} has no installed version {version}")]
    UnknownVersion { id: String, version: String },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RegistryError + '_ {
    move |e| RegistryError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// One installed version, as `appliance models list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Installed {
    pub id: String,
    pub version: String,
    pub active: bool,
    pub task: String,
}

pub struct Registry {
    root: PathBuf,
}

impl Registry {
    pub fn new(data_dir: &Path) -> Registry {
        Registry {
            root: data_dir.join("models"),
        }
    }

    /// Verify the package in `source` and install it; the first version of a model becomes
    /// active, later ones only when `activate` is set. Installing the same files again is a
    /// no-op.
    pub fn install(&self, source: &Path, activate: bool) -> Result<Installed, RegistryError> {
        let package = Package::open(source)?;
        let m = &package.manifest;
        let model_dir = self.root.join(&m.id);
        let target = model_dir.join(&m.version);
        fs::create_dir_all(&model_dir).map_err(io(&model_dir))?;
        if target.exists() {
            let existing = Package::open(&target)?;
            if existing.manifest != package.manifest {
                return Err(RegistryError::Conflict {
                    id: m.id.clone(),
                    version: m.version.clone(),
                });
            }
        } else {
            let staging = model_dir.join(format!(".{}.partial", m.version));
            if staging.exists() {
                fs::remove_dir_all(&staging).map_err(io(&staging))?;
            }
            fs::create_dir(&staging).map_err(io(&staging))?;
            let validation = m.validation.as_ref().map(|v| v.file.as_str());
            let files = ["manifest.toml", "card.md", &m.backbone.file, &m.head.file];
            for name in files.into_iter().chain(validation) {
                let from = source.join(name);
                if !from.exists() && name == "card.md" {
                    continue;
                }
                let to = staging.join(name);
                fs::copy(&from, &to).map_err(io(&from))?;
                fs::File::open(&to)
                    .and_then(|f| f.sync_all())
                    .map_err(io(&to))?;
            }
            sync_dir(&staging)?;
            fs::rename(&staging, &target).map_err(io(&target))?;
            sync_dir(&model_dir)?;
            // The copy must still verify: a disk error must not install a broken model.
            Package::open(&target)?;
        }
        let active = self.active_version(&m.id)?;
        if activate || active.is_none() {
            self.activate(&m.id, &m.version)?;
        }
        Ok(Installed {
            id: m.id.clone(),
            version: m.version.clone(),
            active: self.active_version(&m.id)?.as_deref() == Some(m.version.as_str()),
            task: m.task.clone(),
        })
    }

    /// Make `version` the active version of `id`.
    pub fn activate(&self, id: &str, version: &str) -> Result<(), RegistryError> {
        let model_dir = self.root.join(id);
        if !model_dir.join(version).is_dir() {
            return Err(RegistryError::UnknownVersion {
                id: id.into(),
                version: version.into(),
            });
        }
        write_durable(&model_dir.join("active"), version.as_bytes()).map_err(durable)
    }

    pub fn active_version(&self, id: &str) -> Result<Option<String>, RegistryError> {
        let path = self.root.join(id).join("active");
        match fs::read_to_string(&path) {
            Ok(v) => Ok(Some(v.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The active version of `id`, verified.
    pub fn open_active(&self, id: &str) -> Result<Package, RegistryError> {
        let version = self
            .active_version(id)?
            .ok_or_else(|| RegistryError::UnknownModel(id.into()))?;
        Ok(Package::open(&self.root.join(id).join(version))?)
    }

    /// Every installed version, sorted by id and version.
    pub fn list(&self) -> Result<Vec<Installed>, RegistryError> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&self.root)(e)),
        };
        for model in entries {
            let model = model.map_err(io(&self.root))?;
            let id = model.file_name().to_string_lossy().into_owned();
            if !model.path().is_dir() || id.starts_with('.') {
                continue;
            }
            let active = self.active_version(&id)?;
            for version in fs::read_dir(model.path()).map_err(io(&model.path()))? {
                let version = version.map_err(io(&model.path()))?;
                let name = version.file_name().to_string_lossy().into_owned();
                if !version.path().is_dir() || name.starts_with('.') {
                    continue;
                }
                let manifest = fs::read_to_string(version.path().join("manifest.toml"))
                    .ok()
                    .and_then(|t| toml::from_str::<crate::package::Manifest>(&t).ok());
                out.push(Installed {
                    id: id.clone(),
                    version: name.clone(),
                    active: active.as_deref() == Some(name.as_str()),
                    task: manifest.map(|m| m.task).unwrap_or_else(|| "?".into()),
                });
            }
        }
        out.sort_by(|a, b| (&a.id, &a.version).cmp(&(&b.id, &b.version)));
        Ok(out)
    }

    /// Verify every installed version; returns each with its result.
    pub fn verify_all(&self) -> Result<Vec<(Installed, Result<(), PackageError>)>, RegistryError> {
        Ok(self
            .list()?
            .into_iter()
            .map(|i| {
                let result = Package::open(&self.root.join(&i.id).join(&i.version)).map(|_| ());
                (i, result)
            })
            .collect())
    }
}

fn sync_dir(dir: &Path) -> Result<(), RegistryError> {
    fsync_dir(dir).map_err(durable)
}

fn durable(e: DurableError) -> RegistryError {
    RegistryError::Io {
        path: e.path,
        reason: format!("cannot {}: {}", e.step, e.source),
    }
}
