//! `federation`: the operator's command for the federation server.

use anyhow::Context;
use clap::{Parser, Subcommand};
use federation::{config::Config, server, store};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "federation",
    about = "Federated learning server of the Radiant fleet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run rounds until SIGTERM.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Rounds, one JSON object a line with --json.
    Rounds {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Devices seen, one JSON object a line with --json.
    Devices {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Global heads scored by devices on their held-out cases (federated evaluation).
    Evaluations {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Make the ed25519 key pair that signs global heads (PKCS#8 PEM, public key PEM).
    Keygen {
        #[arg(long)]
        private: PathBuf,
        #[arg(long)]
        public: PathBuf,
    },
}

#[derive(Subcommand)]
enum ListCommand {
    List {
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
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            let stop = server::stop_on_signals()?;
            let mut server = server::Server::start(config)?;
            server.run(&stop)
        }
        Command::Rounds {
            command: ListCommand::List { config, json },
        } => {
            let config = Config::load(&config)?;
            let conn = store::open(&config.data_dir)?;
            for round in store::rounds(&conn)? {
                if json {
                    println!("{}", serde_json::to_string(&round)?);
                } else {
                    println!(
                        "round {} {} global {} participants {}/{} quorum {} {} bytes in {}{}",
                        round.round,
                        round.state,
                        round.global_version,
                        round.participants,
                        round.enrolled,
                        round.quorum,
                        round.aggregator,
                        round.bytes_in,
                        round.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
        Command::Devices {
            command: ListCommand::List { config, json },
        } => {
            let config = Config::load(&config)?;
            let conn = store::open(&config.data_dir)?;
            for device in store::devices(&conn)? {
                if json {
                    println!("{}", serde_json::to_string(&device)?);
                } else {
                    println!(
                        "{} global {} participate {} updates {}",
                        device.device, device.global_version, device.participate, device.updates
                    );
                }
            }
            Ok(())
        }
        Command::Evaluations {
            command: ListCommand::List { config, json },
        } => {
            let config = Config::load(&config)?;
            let conn = store::open(&config.data_dir)?;
            for evaluation in store::evaluations(&conn)? {
                if json {
                    println!("{}", serde_json::to_string(&evaluation)?);
                } else {
                    println!(
                        "global {} by {} on {} cases: {}",
                        evaluation.global_version,
                        evaluation.device,
                        evaluation.cases,
                        evaluation.metrics
                    );
                }
            }
            Ok(())
        }
        Command::Keygen { private, public } => {
            use ed25519_dalek::pkcs8::{
                spki::der::pem::LineEnding, EncodePrivateKey, EncodePublicKey,
            };
            let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
            let private_pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .context("encode the private key")?;
            let public_pem = key
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .context("encode the public key")?;
            std::fs::write(&private, private_pem.as_bytes())
                .with_context(|| private.display().to_string())?;
            std::fs::write(&public, public_pem).with_context(|| public.display().to_string())?;
            Ok(())
        }
    }
}
