//! The installed models under `<data_dir>/models`: `<id>/<version>/` holds a verified copy of a
//! package, `<id>/active` names the version in use. Installing copies into a temporary folder,
//! fsyncs, then renames, so a crash never leaves a half-installed version that looks whole;
//! switching the active version is one atomic rename too.

use crate::package::{
    contract_of, read_manifest_text, ClassificationSpec, LabelSpec, Package, PackageError,
    ReportSpec,
};
use crate::pipeline::PipelinePackage;
use radiant_core::durable::{create_dir_durable, fsync_dir, write_durable, DurableError};
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

/// A verified package of either contract: 1, a per-slice backbone with a trainable head
/// ([`Package`]), or 2, a pipeline of graphs ([`PipelinePackage`]).
#[derive(Debug, Clone)]
pub enum AnyPackage {
    Head(Package),
    Pipeline(PipelinePackage),
}

impl AnyPackage {
    /// Open and verify the package in `dir`, whichever contract its manifest declares.
    pub fn open(dir: &Path) -> Result<AnyPackage, PackageError> {
        let path = dir.join("manifest.toml");
        let text = read_manifest_text(&path)?;
        Ok(match contract_of(&path, &text)? {
            1 => AnyPackage::Head(Package::open(dir)?),
            _ => AnyPackage::Pipeline(PipelinePackage::open(dir)?),
        })
    }

    pub fn id(&self) -> &str {
        match self {
            AnyPackage::Head(p) => &p.manifest.id,
            AnyPackage::Pipeline(p) => &p.manifest.id,
        }
    }

    pub fn version(&self) -> &str {
        match self {
            AnyPackage::Head(p) => &p.manifest.version,
            AnyPackage::Pipeline(p) => &p.manifest.version,
        }
    }

    pub fn task(&self) -> &str {
        match self {
            AnyPackage::Head(p) => &p.manifest.task,
            AnyPackage::Pipeline(p) => &p.manifest.task,
        }
    }

    pub fn modality(&self) -> &str {
        match self {
            AnyPackage::Head(p) => &p.manifest.input.modality,
            AnyPackage::Pipeline(p) => &p.manifest.input.modality,
        }
    }

    pub fn dir(&self) -> &Path {
        match self {
            AnyPackage::Head(p) => &p.dir,
            AnyPackage::Pipeline(p) => &p.dir,
        }
    }

    /// What results are made of: labels, the finding, the examination.
    pub fn outputs(&self) -> Outputs<'_> {
        match self {
            AnyPackage::Head(p) => Outputs {
                id: &p.manifest.id,
                labels: &p.manifest.labels,
                classification: p.manifest.classification.as_ref(),
                report: p.manifest.report.as_ref(),
            },
            AnyPackage::Pipeline(p) => Outputs {
                id: &p.manifest.id,
                labels: &p.manifest.labels,
                classification: p.manifest.classification.as_ref(),
                report: p.manifest.report.as_ref(),
            },
        }
    }

    /// The package's files besides the manifest and the card.
    fn model_files(&self) -> Vec<String> {
        match self {
            AnyPackage::Head(p) => {
                let m = &p.manifest;
                let mut files = vec![m.backbone.file.clone(), m.head.file.clone()];
                files.extend(m.validation.as_ref().map(|v| v.file.clone()));
                files
            }
            AnyPackage::Pipeline(p) => {
                let mut files: Vec<String> =
                    p.manifest.stages.iter().map(|s| s.file.clone()).collect();
                files.extend(p.trainable().map(|(_, t)| t.head.clone()));
                files.push("LICENSE".into());
                files
            }
        }
    }

    fn same_manifest(&self, other: &AnyPackage) -> bool {
        match (self, other) {
            (AnyPackage::Head(a), AnyPackage::Head(b)) => a.manifest == b.manifest,
            (AnyPackage::Pipeline(a), AnyPackage::Pipeline(b)) => a.manifest == b.manifest,
            _ => false,
        }
    }
}

/// The parts of a manifest, of either contract, that results are written from.
#[derive(Debug, Clone, Copy)]
pub struct Outputs<'a> {
    pub id: &'a str,
    pub labels: &'a [LabelSpec],
    pub classification: Option<&'a ClassificationSpec>,
    pub report: Option<&'a ReportSpec>,
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
        let package = AnyPackage::open(source)?;
        let (id, version) = (package.id().to_string(), package.version().to_string());
        let model_dir = self.root.join(&id);
        let target = model_dir.join(&version);
        create_dir_durable(&model_dir).map_err(durable)?;
        if target.exists() {
            let existing = AnyPackage::open(&target)?;
            if !existing.same_manifest(&package) {
                return Err(RegistryError::Conflict { id, version });
            }
        } else {
            let staging = model_dir.join(format!(".{version}.partial"));
            if staging.exists() {
                fs::remove_dir_all(&staging).map_err(io(&staging))?;
            }
            fs::create_dir(&staging).map_err(io(&staging))?;
            let files = ["manifest.toml".to_string(), "card.md".to_string()];
            for name in files.into_iter().chain(package.model_files()) {
                let from = source.join(&name);
                // The card is optional for contract 1, the licence notice for contract 2.
                if !from.exists() && (name == "card.md" || name == "LICENSE") {
                    continue;
                }
                let to = staging.join(&name);
                fs::copy(&from, &to).map_err(io(&from))?;
                fs::File::open(&to)
                    .and_then(|f| f.sync_all())
                    .map_err(io(&to))?;
            }
            sync_dir(&staging)?;
            fs::rename(&staging, &target).map_err(io(&target))?;
            sync_dir(&model_dir)?;
            // The copy must still verify: a disk error must not install a broken model.
            AnyPackage::open(&target)?;
        }
        let active = self.active_version(&id)?;
        if activate || active.is_none() {
            self.activate(&id, &version)?;
        }
        Ok(Installed {
            active: self.active_version(&id)?.as_deref() == Some(version.as_str()),
            task: package.task().to_string(),
            id,
            version,
        })
    }

    /// Make `version` the active version of `id`; it must still verify against its manifest.
    pub fn activate(&self, id: &str, version: &str) -> Result<(), RegistryError> {
        let model_dir = self.root.join(id);
        if !model_dir.join(version).is_dir() {
            return Err(RegistryError::UnknownVersion {
                id: id.into(),
                version: version.into(),
            });
        }
        AnyPackage::open(&model_dir.join(version))?;
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

    /// The active version of `id`, verified; a contract-1 package (the kind that learns).
    pub fn open_active(&self, id: &str) -> Result<Package, RegistryError> {
        Ok(Package::open(&self.active_dir(id)?)?)
    }

    /// The active version of `id`, verified, whichever its contract.
    pub fn open_active_any(&self, id: &str) -> Result<AnyPackage, RegistryError> {
        Ok(AnyPackage::open(&self.active_dir(id)?)?)
    }

    fn active_dir(&self, id: &str) -> Result<PathBuf, RegistryError> {
        let version = self
            .active_version(id)?
            .ok_or_else(|| RegistryError::UnknownModel(id.into()))?;
        Ok(self.root.join(id).join(version))
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
                let task = fs::read_to_string(version.path().join("manifest.toml"))
                    .ok()
                    .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
                    .and_then(|t| t.get("task").and_then(|v| v.as_str()).map(String::from));
                out.push(Installed {
                    id: id.clone(),
                    version: name.clone(),
                    active: active.as_deref() == Some(name.as_str()),
                    task: task.unwrap_or_else(|| "?".into()),
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
                let result = AnyPackage::open(&self.root.join(&i.id).join(&i.version)).map(|_| ());
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
