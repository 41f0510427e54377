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
