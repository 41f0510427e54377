//! Model packages through the fleet's trust root: for each model id `[update] models` names,
//! the newest signed `model` target newer than every version installed on this site is
//! downloaded (its signed length and hash), unpacked inside the download folder with every
//! file checked against its `bundle.json`, and handed to the appliance's own `appliance models
//! install` (which verifies the package against its manifest again and installs it inactive:
//! activating a model version stays an admin's decision). Everything else on the disk is left
//! alone until all of that held.

use crate::firmware::{self, FetchError};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What happened to one model id.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ModelUpdate {
    /// Nothing signed is newer than what is installed.
    UpToDate {
        model: String,
        installed: Option<String>,
    },
    /// Installed (inactive unless it is the model's first version).
    Installed {
        model: String,
        version: String,
        said: String,
    },
    /// Refused, with the reason; nothing installed.
    Refused { model: String, reason: String },
}

/// The versions of `model` installed on the site (`<data_dir>/models/<id>/<version>/`).
pub fn installed_versions(data_dir: &Path, model: &str) -> Vec<semver::Version> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("models").join(model)) else {
        return Vec::new();
    };
    let mut out: Vec<semver::Version> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| semver::Version::parse(&e.file_name().to_string_lossy()).ok())
        .collect();
    out.sort();
    out
}

/// Check the repository and install what is newer for every followed model.
pub fn update(
    data_dir: &Path,
    config: &fleet_wire::site::UpdateConfig,
    config_path: &Path,
) -> Result<Vec<ModelUpdate>, FetchError> {
    let downloads = firmware::update_dir(data_dir).join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let appliance = config
        .appliance_binary
        .clone()
        .unwrap_or_else(|| config.install_root.join("current/bin/appliance"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let repo = firmware::load(data_dir, config).await?;
        let mut out = Vec::new();
        for model in &config.models {
            let installed = installed_versions(data_dir, model).pop();
            let newest = repo
                .all_targets()
                .filter(|(_, t)| {
                    t.custom.get("kind").and_then(|k| k.as_str()) == Some("model")
                        && t.custom.get("model").and_then(|m| m.as_str()) == Some(model.as_str())
                })
                .filter_map(|(name, t)| {
                    let v = t.custom.get("version")?.as_str()?;
                    Some((semver::Version::parse(v).ok()?, name.clone()))
                })
                .filter(|(v, _)| installed.as_ref().is_none_or(|i| v > i))
                .max_by(|a, b| a.0.cmp(&b.0));
            let Some((version, name)) = newest else {
                out.push(ModelUpdate::UpToDate {
                    model: model.clone(),
                    installed: installed.map(|v| v.to_string()),
                });
                continue;
            };
            let refused = |reason: String| ModelUpdate::Refused {
                model: model.clone(),
                reason,
            };
            let (archive, file) = match firmware::download(&repo, &name, &downloads).await {
                Ok(d) => d,
                Err(e) => {
                    out.push(refused(e.to_string()));
                    continue;
                }
            };
            let unpacked = downloads.join(format!("{file}.d"));
            let result = install(&archive, &unpacked, &version, &appliance, config_path);
            let _ = std::fs::remove_dir_all(&unpacked);
            let _ = std::fs::remove_file(&archive);
            out.push(match result {
                Ok(said) => {
                    tracing::info!(model = %model, version = %version, "model package installed");
                    ModelUpdate::Installed {
                        model: model.clone(),
                        version: version.to_string(),
                        said,
                    }
                }
                Err(reason) => {
                    tracing::error!(model = %model, version = %version, reason = %reason, "model package refused");
                    refused(reason)
                }
            });
        }
        Ok(out)
    })
}

/// Unpack (every file checked), check the version is the signed one, and let the appliance
/// install it; what the appliance said, or why not.
fn install(
    archive: &Path,
    unpacked: &PathBuf,
    version: &semver::Version,
    appliance: &Path,
    config_path: &Path,
) -> Result<String, String> {
    if unpacked.exists() {
        std::fs::remove_dir_all(unpacked).map_err(|e| e.to_string())?;
    }
    let manifest = image::bundle::unpack(archive, unpacked).map_err(|e| e.to_string())?;
    if manifest.version != version.to_string() {
        return Err(format!(
            "its bundle.json says version {}, the signed metadata {version}",
            manifest.version
        ));
    }
    let out = std::process::Command::new(appliance)
        .args(["models", "install"])
        .arg(unpacked)
        .arg("--config")
        .arg(config_path)
        .output()
        .map_err(|e| format!("{}: {e}", appliance.display()))?;
    if !out.status.success() {
        return Err(format!(
            "appliance models install: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
