//! The `appliance` command: the daemon (`serve`) and the operator's tools.

use anyhow::Context;
use appliance::config::{Config, LogFormat};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "appliance",
    version,
    about = "Radiant Edge: DICOM AI appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArgs {
    /// Configuration file (TOML). Without it, the embedded default is used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Use this data directory instead of the configuration's `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::embedded_default()?,
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        Ok(config)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Serve(ConfigArgs),
    /// Validate a configuration file and explain each problem by key.
    CheckConfig(ConfigArgs),
    /// Studies received by the appliance.
    Studies {
        #[command(subcommand)]
        command: StudiesCommand,
    },
}

#[derive(Subcommand)]
enum StudiesCommand {
    /// List studies: one JSON object per line with --json.
    List {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        json: bool,
    },
    /// Mark a study complete now, without waiting for its quiet period.
    Complete {
        #[command(flatten)]
        config: ConfigArgs,
        /// Study Instance UID.
        study_uid: String,
    },
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.load()?;
            init_logging(&config);
            appliance::daemon::serve(config)
        }
        Command::CheckConfig(args) => {
            let config = args.load()?;
            println!(
                "configuration is valid: AE title {} on {}:{}, {} peer(s), data_dir {}",
                config.dicom.ae_title,
                config.dicom.bind,
                config.dicom.port,
                config.dicom.peers.len(),
                config.data_dir.display()
            );
            Ok(())
        }
        Command::Studies { command } => match command {
            StudiesCommand::List { config, json } => {
                let config = config.load()?;
                let lines = appliance::studies::list(&config.data_dir)?;
                for line in lines {
                    if json {
                        println!("{}", serde_json::to_string(&line)?);
                    } else {
                        println!(
                            "{:<64} {:<9} {:>5} inst {:>3} series  from {:<16} {}",
                            line.study_uid,
                            line.state,
                            line.instances,
                            line.series,
                            line.calling_ae,
                            line.received_at
                        );
                    }
                }
                Ok(())
            }
            StudiesCommand::Complete { config, study_uid } => {
                let config = config.load()?;
                let changed =
                    pacs_bridge::store::studies::complete_now(&config.data_dir, &study_uid)
                        .context("cannot complete the study")?;
                if changed == 0 {
                    anyhow::bail!("no study {study_uid} is receiving");
                }
                println!("study {study_uid} marked complete ({changed} sender group(s))");
                Ok(())
            }
        },
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
