//! `fleet`: the fleet operator's command. `fleet repo ...` keeps the update repository, the
//! one TUF trust root of firmware bundles and model packages (`federation::repo`);
//! `fleet rollout start` announces a release to a share of a group and `fleet devices list`
//! shows what each device runs (`federation::rollout`, over the fleet broker).

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use federation::repo::{Expiry, Repo};
use federation::rollout::{self, OperatorConfig};
use fleet_wire::release::Release;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "fleet", about = "The Radiant fleet operator's command")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The update repository (TUF): keys, metadata and targets under one folder.
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// Firmware rollouts over the fleet broker.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// The devices' firmware, as each reports it over the fleet broker.
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Announce VERSION (a firmware target published in the repository) to PERCENT % of the
    /// devices of GROUP; run again with a larger percent to widen the same wave, 0 to pause.
    Start {
        /// federation, broker, ca_file, cert_file, key_file (the server's file will do).
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        group: String,
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: u8,
        #[arg(long)]
        version: String,
    },
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// Every device's version, slot, state, health, last error and when it last reported.
    List {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
        /// Most seconds to collect statuses.
        #[arg(long, default_value_t = 10)]
        wait_seconds: u64,
    },
}

#[derive(Subcommand)]
enum RepoCommand {
    /// Make the keys and the first signed root of a new repository in DIR.
    Init {
        dir: PathBuf,
        /// Root keys to make.
        #[arg(long, default_value_t = 3)]
        root_keys: usize,
        /// Root signatures a new root version needs.
        #[arg(long, default_value_t = 2)]
        root_threshold: u64,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Publish a firmware bundle (image/build.sh), or a model package folder, as a signed
    /// target.
    Publish {
        dir: PathBuf,
        bundle: PathBuf,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Delegate the `federation` role (global heads) to the federation server's public key
    /// (`federation keygen --public`); again with another key to rotate or revoke it.
    DelegateFederation {
        dir: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Re-sign targets, snapshot and timestamp with fresh expiries (run daily: a device refuses
    /// a timestamp past its expiry).
    Refresh {
        dir: PathBuf,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Replace a role's key (a stolen or retiring key): a new root version signed by the
    /// current root keys, then fresh metadata.
    RotateKey {
        dir: PathBuf,
        role: Role,
        /// For the root: how many new root keys, and how many must sign.
        #[arg(long, default_value_t = 3)]
        root_keys: usize,
        #[arg(long, default_value_t = 2)]
        root_threshold: u64,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Role {
    Root,
    Targets,
    Snapshot,
    Timestamp,
}

/// Validity of what is signed, in seconds (defaults: root a year, targets 90 days, snapshot a
/// week, timestamp a day). Negative values sign metadata that has already expired: what the
/// tests' expired-metadata fixtures are made with.
#[derive(Args)]
struct ExpiryArgs {
    #[arg(long, allow_hyphen_values = true)]
    root_seconds: Option<i64>,
    #[arg(long, allow_hyphen_values = true)]
    targets_seconds: Option<i64>,
    #[arg(long, allow_hyphen_values = true)]
    snapshot_seconds: Option<i64>,
    #[arg(long, allow_hyphen_values = true)]
    timestamp_seconds: Option<i64>,
}

impl ExpiryArgs {
    fn expiry(&self) -> Expiry {
        let d = Expiry::default();
        let or = |s: Option<i64>, default| s.map_or(default, jiff::SignedDuration::from_secs);
        Expiry {
            root: or(self.root_seconds, d.root),
            targets: or(self.targets_seconds, d.targets),
            snapshot: or(self.snapshot_seconds, d.snapshot),
            timestamp: or(self.timestamp_seconds, d.timestamp),
        }
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Repo { command } => match command {
            RepoCommand::Init {
                dir,
                root_keys,
                root_threshold,
                expiry,
            } => {
                let repo = Repo::new(&dir);
                repo.init(root_keys, root_threshold, expiry.expiry())?;
                let (_, root) = repo.latest_root()?;
                println!(
                    "repository made in {}: {root_keys} root keys ({root_threshold} must sign), \
                     one key each for targets, snapshot and timestamp in {}; serve {}; ship {} \
                     with the firmware as the devices' trusted root",
                    dir.display(),
                    repo.keys_dir().display(),
                    dir.join("repository").display(),
                    root.display()
                );
            }
            RepoCommand::Publish {
                dir,
                bundle,
                expiry,
            } => {
                let repo = Repo::new(&dir);
                let name = if bundle.is_dir() {
                    repo.publish_model(&bundle, expiry.expiry())
                } else {
                    repo.publish_bundle(&bundle, expiry.expiry())
                }
                .with_context(|| format!("publish {}", bundle.display()))?;
                println!("published {name}");
            }
            RepoCommand::DelegateFederation { dir, key, expiry } => {
                let id = Repo::new(&dir)
                    .delegate_federation(&key, expiry.expiry())
                    .with_context(|| format!("delegate to {}", key.display()))?;
                println!("the federation role is delegated to key {id}");
            }
            RepoCommand::Refresh { dir, expiry } => {
                Repo::new(&dir).refresh(expiry.expiry())?;
                println!("re-signed targets, snapshot and timestamp");
            }
            RepoCommand::RotateKey {
                dir,
                role,
                root_keys,
                root_threshold,
                expiry,
            } => {
                use tough::schema::RoleType;
                let role = match role {
                    Role::Root => RoleType::Root,
                    Role::Targets => RoleType::Targets,
                    Role::Snapshot => RoleType::Snapshot,
                    Role::Timestamp => RoleType::Timestamp,
                };
                let repo = Repo::new(&dir);
                repo.rotate_key(role, root_keys, root_threshold, expiry.expiry())?;
                let (version, _) = repo.latest_root()?;
                println!("root version {version} names the new key; the old one is retired");
            }
        },
        Command::Rollout {
            command:
                RolloutCommand::Start {
                    config,
                    group,
                    percent,
                    version,
                },
        } => {
            let config = OperatorConfig::load(&config)?;
            let issued_at_ms = jiff::Timestamp::now().as_millisecond().max(0) as u64;
            let release = Release {
                group,
                version,
                percent,
                issued_at_ms,
            };
            rollout::announce(&config, &release, Duration::from_secs(20))?;
            println!(
                "announced {} to {} % of group {}",
                release.version, release.percent, release.group
            );
        }
        Command::Devices {
            command:
                DevicesCommand::List {
                    config,
                    json,
                    wait_seconds,
                },
        } => {
            let config = OperatorConfig::load(&config)?;
            let devices = rollout::devices(
                &config,
                Duration::from_secs(wait_seconds),
                Duration::from_millis(1500),
            )?;
            let last_seen = |ms: u64| {
                jiff::Timestamp::from_millisecond(ms.min(i64::MAX as u64) as i64)
                    .map(|t| t.to_string())
                    .unwrap_or_default()
            };
            if json {
                let rows: Vec<serde_json::Value> = devices
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "device": d.device,
                            "group": d.group,
                            "version": d.version,
                            "slot": d.slot,
                            "state": d.state,
                            "health": d.health,
                            "last_error": d.last_error,
                            "release": d.release,
                            "last_seen": last_seen(d.at_ms),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!(
                    "{:<24} {:<16} {:<10} {:<4} {:<13} {:<11} last seen",
                    "device", "group", "version", "slot", "state", "health"
                );
                for d in &devices {
                    println!(
                        "{:<24} {:<16} {:<10} {:<4} {:<13} {:<11} {}{}",
                        d.device,
                        d.group,
                        d.version.as_deref().unwrap_or("-"),
                        d.slot.as_deref().unwrap_or("-"),
                        d.state,
                        d.health,
                        last_seen(d.at_ms),
                        d.last_error
                            .as_deref()
                            .map(|e| format!("  ({e})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(())
}
