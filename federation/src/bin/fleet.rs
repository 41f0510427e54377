//! `fleet`: the fleet operator's command. `fleet repo ...` keeps the update repository, the
//! one TUF trust root of firmware bundles and model packages (`federation::repo`).

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use federation::repo::{Expiry, Repo};
use std::path::PathBuf;

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
    /// Publish a firmware bundle (image/build.sh) as a signed target.
    Publish {
        dir: PathBuf,
        bundle: PathBuf,
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
                let name = Repo::new(&dir)
                    .publish_bundle(&bundle, expiry.expiry())
                    .with_context(|| format!("publish {}", bundle.display()))?;
                println!("published {name}");
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
    }
    Ok(())
}
