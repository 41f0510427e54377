//! `updater`: the device side of the federation, as its own process.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use updater::apply;
use updater::config::UpdaterConfig;

#[derive(Parser)]
#[command(
    name = "updater",
    about = "Device side of the Radiant fleet: federated updates and signed global heads over MQTT/TLS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run until SIGTERM (the appliance configuration's [federation] table).
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// The key global heads must be signed with, as this device trusts it ([federation]
    /// trusted_key: a PEM file, or "repository": the update repository's delegation); prints
    /// JSON with its hex.
    FederationKey {
        #[arg(long)]
        config: PathBuf,
    },
    /// Install newer signed model packages of the models [update] models names (inactive);
    /// prints JSON. Exit status 1 when one was refused.
    Models {
        #[arg(long)]
        config: PathBuf,
    },
    /// Check the update repository through the trust root and fetch, verify and stage the
    /// newest firmware bundle for this device ([update]); prints JSON. Exit status 1 with the
    /// reason when anything does not verify.
    Fetch {
        #[arg(long)]
        config: PathBuf,
        /// The running firmware version (default: this updater's).
        #[arg(long)]
        running: Option<String>,
    },
    /// Check, fetch and stage the newest bundle (as `fetch`); wait for the maintenance window
    /// and an idle appliance; install it into the inactive slot on trial, restart the
    /// appliance on it, run its clinical self-test, and commit or roll back; prints JSON.
    Update {
        #[arg(long)]
        config: PathBuf,
        /// Switch at once: do not wait for the maintenance window or an idle appliance.
        #[arg(long)]
        now: bool,
        #[arg(long)]
        running: Option<String>,
    },
    /// Install the newest staged bundle into the inactive slot and switch to it on trial.
    Install {
        #[arg(long)]
        config: PathBuf,
    },
    /// Count a start of the appliance (its unit's ExecStartPre): a trial that started more than
    /// max_boot_attempts times without a commit rolls back.
    Boot {
        #[arg(long)]
        config: PathBuf,
    },
    /// The version on trial passed: keep it.
    Commit {
        #[arg(long)]
        config: PathBuf,
    },
    /// Go back to the committed version and its databases.
    Rollback {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = "rolled back by the operator")]
        reason: String,
    },
    /// Slots: committed version, trial, last error (JSON).
    Slots {
        #[arg(long)]
        config: PathBuf,
    },
    /// Federation: connection, installed global version, last round, queued updates and bytes,
    /// ε spent (when [federation] is enabled); firmware: version, slot, state (committed, on
    /// trial), last error ([update]).
    Status {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run { config } => {
            let config_path = config;
            let config = UpdaterConfig::load(&config_path)?;
            if !config.federation.enabled {
                tracing::info!("[federation] enabled = false: nothing to do");
                return Ok(());
            }
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, stop.clone())?;
            }
            let releases = match has_update_table(&config_path)? {
                true => {
                    let firmware = updater::config::FirmwareConfig::load(&config_path)?;
                    firmware.update.enabled.then(|| {
                        updater::releases::Releases::new(
                            firmware,
                            config_path.clone(),
                            config.device_id.clone(),
                        )
                    })
                }
                false => None,
            };
            let trusted = trusted_federation_key(&config, &config_path)?;
            let mut device = updater::device::Device::start(config, trusted, releases)?;
            device.run(&stop)
        }
        Command::FederationKey { config } => {
            let path = config;
            let config = UpdaterConfig::load(&path)?;
            let key = trusted_federation_key(&config, &path)?;
            println!(
                "{}",
                serde_json::json!({
                    "source": if config.federation.trusts_repository() { "repository" } else { "file" },
                    "ed25519": hex_of(key.as_bytes()),
                })
            );
            Ok(())
        }
        Command::Models { config } => {
            let path = config;
            let config = updater::config::FirmwareConfig::load(&path)?;
            let done = updater::model_updates::update(&config.data_dir, &config.update, &path);
            match done {
                Ok(updates) => {
                    println!("{}", serde_json::to_string(&updates)?);
                    if updates
                        .iter()
                        .any(|u| matches!(u, updater::model_updates::ModelUpdate::Refused { .. }))
                    {
                        std::process::exit(1);
                    }
                    Ok(())
                }
                Err(e) => refuse(&e.to_string()),
            }
        }
        Command::Fetch { config, running } => {
            let config = updater::config::FirmwareConfig::load(&config)?;
            if !config.update.enabled {
                println!("{}", serde_json::json!({"state": "disabled"}));
                return Ok(());
            }
            let running = running.unwrap_or_else(|| apply::running_version(&config));
            match updater::firmware::fetch(
                &config.data_dir,
                &config.update,
                &running,
                std::env::consts::ARCH,
                None,
            ) {
                Ok(fetched) => {
                    println!("{}", serde_json::to_string(&fetched)?);
                    Ok(())
                }
                Err(e) => refuse(&e.to_string()),
            }
        }
        Command::Update {
            config,
            now,
            running,
        } => {
            let config_path = config;
            let config = updater::config::FirmwareConfig::load(&config_path)?;
            let running = running.unwrap_or_else(|| apply::running_version(&config));
            let outcome = apply::run(
                &config,
                &config_path,
                apply::Options {
                    running,
                    wanted: None,
                    now,
                    progress: &mut |step, why| match why {
                        Some(why) => tracing::info!(step = step.as_str(), why, "update"),
                        None => tracing::info!(step = step.as_str(), "update"),
                    },
                    stop: &|| false,
                },
            )?;
            println!("{}", serde_json::to_string(&outcome)?);
            match outcome {
                apply::Outcome::Refused { .. } | apply::Outcome::RolledBack { .. } => {
                    std::process::exit(1)
                }
                _ => Ok(()),
            }
        }
        Command::Install { config } => {
            let config = updater::config::FirmwareConfig::load(&config)?;
            println!("{}", serde_json::to_string(&apply::install(&config)?)?);
            Ok(())
        }
        Command::Boot { config } => {
            let config = updater::config::FirmwareConfig::load(&config)?;
            let boot = apply::slots(&config).boot()?;
            if let updater::slots::Boot::RolledBack { reason } = &boot {
                tracing::error!(reason = %reason, "rolled back to the committed version");
            }
            println!("{}", serde_json::to_string(&boot)?);
            Ok(())
        }
        Command::Commit { config } => {
            let config = updater::config::FirmwareConfig::load(&config)?;
            let version = apply::slots(&config).commit()?;
            println!(
                "{}",
                serde_json::json!({"state": "committed", "version": version})
            );
            Ok(())
        }
        Command::Rollback { config, reason } => {
            let config = updater::config::FirmwareConfig::load(&config)?;
            apply::slots(&config).rollback(&reason)?;
            println!(
                "{}",
                serde_json::json!({"state": "rolled_back", "reason": reason})
            );
            Ok(())
        }
        Command::Slots { config } => {
            let config = updater::config::FirmwareConfig::load(&config)?;
            let slots = apply::slots(&config);
            slots.recover()?;
            let state = slots.state()?;
            println!(
                "{}",
                serde_json::json!({
                    "running": slots.running(),
                    "committed": state.committed,
                    "trial": state.trial,
                    "last_error": state.last_error,
                })
            );
            Ok(())
        }
        Command::Status { config, json } => {
            // The federation's part when [federation] is there, the firmware's when [update] is.
            let table: toml::Table = std::fs::read_to_string(&config)?
                .parse()
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
            let federated = table
                .get("federation")
                .and_then(|f| f.get("enabled"))
                .and_then(|e| e.as_bool())
                .unwrap_or(false);
            let federation = match federated {
                true => {
                    let config = UpdaterConfig::load(&config)?;
                    let conn = updater::state::open(&config.data_dir)?;
                    Some(updater::state::status(&conn, &config.device_id)?)
                }
                false => None,
            };
            let firmware = match updater::config::FirmwareConfig::load(&config) {
                Ok(config) => {
                    let slots = apply::slots(&config);
                    slots.recover()?;
                    let state = slots.state()?;
                    let (version, slot, status) = match (&state.trial, &state.committed) {
                        (Some(t), _) => (Some(t.version.clone()), Some(t.slot), "on_trial"),
                        (None, Some((slot, v))) => (Some(v.clone()), Some(*slot), "committed"),
                        (None, None) => (None, None, "not_installed"),
                    };
                    Some(serde_json::json!({
                        "version": version,
                        "slot": slot,
                        "state": status,
                        "committed": state.committed,
                        "last_error": state.last_error,
                    }))
                }
                Err(_) => None,
            };
            if json {
                let mut out = match &federation {
                    Some(status) => serde_json::to_value(status)?,
                    None => serde_json::json!({}),
                };
                out["firmware"] = firmware.clone().unwrap_or(serde_json::Value::Null);
                println!("{out}");
            } else {
                if let Some(status) = &federation {
                    println!(
                        "device {}: {}, global version {}, last round {}, {} updates ({} bytes) \
                         queued",
                        status.device,
                        if status.connected {
                            "connected"
                        } else {
                            "not connected"
                        },
                        status.global_version,
                        status
                            .last_round
                            .map(|r| r.to_string())
                            .unwrap_or_else(|| "none".into()),
                        status.queued_updates,
                        status.queued_bytes
                    );
                }
                if let Some(f) = &firmware {
                    println!(
                        "firmware {} in slot {} ({}); last error: {}",
                        f["version"].as_str().unwrap_or("none"),
                        f["slot"].as_str().unwrap_or("none"),
                        f["state"].as_str().unwrap_or("?"),
                        f["last_error"].as_str().unwrap_or("none")
                    );
                }
            }
            Ok(())
        }
    }
}

/// Print the refusal as JSON and exit 1: nothing was installed.
fn refuse(reason: &str) -> anyhow::Result<()> {
    tracing::error!(reason = %reason, "update refused; nothing installed");
    println!(
        "{}",
        serde_json::json!({"state": "refused", "reason": reason})
    );
    std::process::exit(1);
}

/// Whether the configuration has an `[update]` table.
fn has_update_table(path: &std::path::Path) -> anyhow::Result<bool> {
    let table: toml::Table = std::fs::read_to_string(path)?
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(table.contains_key("update"))
}

/// The key global heads must verify with: the PEM file `[federation] trusted_key` names, or,
/// with `trusted_key = "repository"`, the key the update repository delegates the federation
/// role to (verified through the trust root of `[update]`).
fn trusted_federation_key(
    config: &UpdaterConfig,
    path: &std::path::Path,
) -> anyhow::Result<fleet_wire::signed::VerifyingKey> {
    if config.federation.trusts_repository() {
        let firmware = updater::config::FirmwareConfig::load(path)?;
        return updater::firmware::federation_key(&firmware.data_dir, &firmware.update)
            .map_err(|e| anyhow::anyhow!("the federation key from the update repository: {e}"));
    }
    let file = &config.federation.trusted_key;
    let pem =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok(fleet_wire::signed::verifying_key_from_pem(&pem)?)
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
