//! The appliance's side of the federation hand-over folder (`fleet_wire::site`), used by the
//! learner when `[federation] enabled`: after a fine-tune it accepted, it writes the champion
//! head for the updater to send as this site's update (against the global version it was
//! trained from); it takes each global head the updater verified through the gate on its own
//! held-out cases, and writes the global's scores there (federated evaluation: counts and
//! scores only). Which global version the site has taken is kept durably in
//! `federation/adopted`; version 1 is the package's own head.

use fleet_wire::site::{self, Outgoing};
use models::head::Head;
use models::package::Manifest;
use std::path::{Path, PathBuf};

/// The global version the site has taken (1: the package's head).
pub fn adopted(data_dir: &Path) -> u64 {
    std::fs::read_to_string(data_dir.join("federation").join("adopted"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1)
}

pub fn set_adopted(data_dir: &Path, version: u64) -> std::io::Result<()> {
    site::write_durably(
        &data_dir.join("federation").join("adopted"),
        version.to_string().as_bytes(),
    )
}

/// The newest global head the updater handed over above `after`, with its signed header.
pub fn next_global(data_dir: &Path, after: u64) -> Option<(u64, PathBuf, serde_json::Value)> {
    let dir = site::global_dir(data_dir);
    let newest = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".safetensors")?.parse::<u64>().ok()
        })
        .filter(|v| *v > after)
        .max()?;
    let header = std::fs::read_to_string(dir.join(format!("{newest}.json")))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())?;
    Some((newest, dir.join(format!("{newest}.safetensors")), header))
}

/// The head of global `version` as handed over, checked against the package's manifest.
pub fn load_global(path: &Path, manifest: &Manifest) -> anyhow::Result<Head> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Head::load(&bytes, manifest)?)
}

/// Hand this site's champion, fine-tuned from global `base` on `cases` training cases, to
/// the updater.
pub fn offer_local(
    data_dir: &Path,
    manifest: &Manifest,
    head: &Head,
    base: u64,
    cases: usize,
) -> anyhow::Result<()> {
    let dir = site::outgoing_dir(data_dir);
    site::write_durably(
        &dir.join(format!("{base}.safetensors")),
        &head.to_safetensors()?,
    )?;
    let meta = Outgoing {
        model: manifest.id.clone(),
        base_version: base,
        cases: cases.clamp(1, 1_000_000) as u32,
    };
    site::write_durably(
        &dir.join(format!("{base}.json")),
        serde_json::to_string(&meta)?.as_bytes(),
    )?;
    Ok(())
}

/// The global `version`'s scores on this site's held-out cases, for the updater to report.
pub fn write_evaluation(
    data_dir: &Path,
    version: u64,
    cases: usize,
    metrics: &std::collections::BTreeMap<String, f64>,
) -> anyhow::Result<()> {
    let path = data_dir
        .join("federation")
        .join("evaluations")
        .join(format!("{version}.json"));
    let body = serde_json::json!({ "global_version": version, "cases": cases, "metrics": metrics });
    site::write_durably(&path, body.to_string().as_bytes())?;
    Ok(())
}
