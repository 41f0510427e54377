//! What the updater reads of the appliance configuration: `data_dir`, `[federation]`
//! (`fleet_wire::site::FederationConfig`, with the device id defaulting to the CN of the
//! device certificate), `[update]`, and where `[http]` puts the appliance's activity.

use fleet_wire::site::FederationConfig;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct UpdaterConfig {
    pub data_dir: PathBuf,
    pub federation: FederationConfig,
    pub device_id: String,
}

#[derive(serde::Deserialize)]
struct ApplianceFile {
    data_dir: PathBuf,
    federation: Option<toml::Value>,
    update: Option<toml::Value>,
    #[serde(default)]
    http: HttpTable,
}

/// The appliance's `[http]` (its operations endpoint), as far as the updater needs it.
#[derive(serde::Deserialize)]
struct HttpTable {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "loopback")]
    bind: String,
    #[serde(default = "http_port")]
    port: u16,
}

impl Default for HttpTable {
    fn default() -> Self {
        HttpTable {
            enabled: true,
            bind: loopback(),
            port: http_port(),
        }
    }
}

fn yes() -> bool {
    true
}
fn loopback() -> String {
    "127.0.0.1".into()
}
fn http_port() -> u16 {
    8480
}

impl HttpTable {
    /// Where the appliance answers `GET /activity` (a wildcard bind is reached on loopback).
    fn activity_url(&self) -> Option<String> {
        if !self.enabled {
            return None;
        }
        let host = match self.bind.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
            Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => self.bind.clone(),
        };
        Some(format!("http://{host}:{}/activity", self.port))
    }
}

/// What `updater fetch` reads of the appliance configuration: `data_dir` and `[update]`.
#[derive(Debug, Clone)]
pub struct FirmwareConfig {
    pub data_dir: PathBuf,
    pub update: fleet_wire::site::UpdateConfig,
    /// The appliance's `GET /activity` (`None`: its operations endpoint is off).
    pub activity_url: Option<String>,
}

impl FirmwareConfig {
    pub fn load(path: &Path) -> anyhow::Result<FirmwareConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let file: ApplianceFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let table = file
            .update
            .ok_or_else(|| anyhow::anyhow!("{}: no [update] table", path.display()))?;
        let mut update: fleet_wire::site::UpdateConfig = table
            .try_into()
            .map_err(|e| anyhow::anyhow!("{}: [update]: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        update.resolve(base);
        if let Some((key, reason)) = update.problems().first() {
            anyhow::bail!("{}: {key}: {reason}", path.display());
        }
        let data_dir = if file.data_dir.is_relative() {
            base.join(&file.data_dir)
        } else {
            file.data_dir
        };
        Ok(FirmwareConfig {
            data_dir,
            update,
            activity_url: file.http.activity_url(),
        })
    }
}

impl UpdaterConfig {
    pub fn load(path: &Path) -> anyhow::Result<UpdaterConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let file: ApplianceFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let table = file
            .federation
            .ok_or_else(|| anyhow::anyhow!("{}: no [federation] table", path.display()))?;
        let mut federation: FederationConfig = table
            .try_into()
            .map_err(|e| anyhow::anyhow!("{}: [federation]: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        federation.resolve(base);
        let problems = federation.problems();
        if let Some((key, reason)) = problems.first() {
            anyhow::bail!("{}: {key}: {reason}", path.display());
        }
        let data_dir = if file.data_dir.is_relative() {
            base.join(&file.data_dir)
        } else {
            file.data_dir
        };
        let device_id = match &federation.device_id {
            Some(id) => id.clone(),
            None => certificate_cn(&federation.cert_file)?,
        };
        fleet_wire::message::check_id(&device_id)
            .map_err(|e| anyhow::anyhow!("device id {device_id:?}: {e}"))?;
        Ok(UpdaterConfig {
            data_dir,
            federation,
            device_id,
        })
    }
}

/// The subject CN of the first certificate in a PEM file.
pub fn certificate_cn(path: &Path) -> anyhow::Result<String> {
    let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate: {e}", path.display()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| anyhow::anyhow!("{}: the certificate has no CN", path.display()))?;
    Ok(cn.to_string())
}
