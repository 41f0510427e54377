//! `bundle`: make a firmware bundle from staged files, or check one by unpacking it
//! (`image::bundle`). `image/build.sh` calls `bundle make` with the release's files.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "bundle",
    about = "Make or check a Radiant Edge firmware bundle"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the bundle: bundle.json (SHA-256, size and mode of every file) and the files.
    Make {
        /// Semantic version of the firmware.
        #[arg(long)]
        version: String,
        /// The oldest running version it can update.
        #[arg(long)]
        min_from: String,
        /// A machine architecture it runs on (`uname -m`); repeat for several.
        #[arg(long, required = true)]
        hardware: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        /// PATH_IN_BUNDLE=FILE:MODE (octal), e.g. bin/appliance=target/release/appliance:755.
        #[arg(long = "file")]
        files: Vec<String>,
        /// PREFIX=FOLDER: every file under FOLDER, mode 644, under PREFIX in the bundle.
        #[arg(long = "folder")]
        folders: Vec<String>,
    },
    /// Unpack a bundle into a new folder, checking every file against bundle.json.
    Unpack { archive: PathBuf, dir: PathBuf },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Make {
            version,
            min_from,
            hardware,
            out,
            files,
            folders,
        } => {
            let mut staged = Vec::new();
            for spec in &files {
                let (path, rest) = spec.split_once('=').context("--file PATH=FILE:MODE")?;
                let (file, mode) = rest.rsplit_once(':').context("--file PATH=FILE:MODE")?;
                let mode = u32::from_str_radix(mode, 8)
                    .with_context(|| format!("--file {spec}: mode {mode} is not octal"))?;
                staged.push((path.to_string(), PathBuf::from(file), mode));
            }
            for spec in &folders {
                let (prefix, folder) = spec.split_once('=').context("--folder PREFIX=FOLDER")?;
                add_folder(prefix, Path::new(folder), Path::new(folder), &mut staged)?;
            }
            let manifest = image::bundle::make(&version, &hardware, &min_from, &staged, &out)?;
            println!(
                "{}: version {}, {} files",
                out.display(),
                manifest.version,
                manifest.files.len()
            );
        }
        Command::Unpack { archive, dir } => {
            let manifest = image::bundle::unpack(&archive, &dir)?;
            println!(
                "{}: version {}, {} files verified",
                dir.display(),
                manifest.version,
                manifest.files.len()
            );
        }
    }
    Ok(())
}

fn add_folder(
    prefix: &str,
    root: &Path,
    dir: &Path,
    staged: &mut Vec<(String, PathBuf, u32)>,
) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            add_folder(prefix, root, &path, staged)?;
        } else if entry.file_type()?.is_file() {
            let relative = path.strip_prefix(root)?.to_string_lossy().into_owned();
            staged.push((format!("{prefix}/{relative}"), path, 0o644));
        } else {
            anyhow::bail!("{}: not a regular file or folder", path.display());
        }
    }
    Ok(())
}
