//! `updater`: the device side of the federation, as its own process.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
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
    /// Connection, installed global version, last round, queued updates and bytes, ε spent.
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
            let config = UpdaterConfig::load(&config)?;
            if !config.federation.enabled {
                tracing::info!("[federation] enabled = false: nothing to do");
                return Ok(());
            }
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, stop.clone())?;
            }
            let mut device = updater::device::Device::start(config)?;
            device.run(&stop)
        }
        Command::Fetch { config, running } => {
            let config = updater::config::FirmwareConfig::load(&config)?;
            if !config.update.enabled {
                println!("{}", serde_json::json!({"state": "disabled"}));
                return Ok(());
            }
            let running = running.unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
            match updater::firmware::fetch(
                &config.data_dir,
                &config.update,
                &running,
                std::env::consts::ARCH,
            ) {
                Ok(fetched) => {
                    println!("{}", serde_json::to_string(&fetched)?);
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(reason = %e, "update refused; nothing installed");
                    println!(
                        "{}",
                        serde_json::json!({"state": "refused", "reason": e.to_string()})
                    );
                    std::process::exit(1);
                }
            }
        }
        Command::Status { config, json } => {
            let config = UpdaterConfig::load(&config)?;
            let conn = updater::state::open(&config.data_dir)?;
            let status = updater::state::status(&conn, &config.device_id)?;
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                println!(
                    "device {}: {}, global version {}, last round {}, {} updates ({} bytes) queued",
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
            Ok(())
        }
    }
}
