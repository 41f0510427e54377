//! The one implementation of making a file durable: write it under a temporary name in the
//! same directory, fdatasync it, rename it over the final name, and fsync the directory so the
//! rename itself survives a power cut. Callers that write several files into one directory
//! may use [`write_synced`] for each and [`fsync_dir`] once; everything else uses
//! [`write_durable`]. A folder is made with [`create_dir_durable`], which syncs every level
//! (a directory's entry is durable only once its parent is fsync'd).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A durable-write step that failed, naming the path and the step.
#[derive(Debug, Error)]
#[error("cannot {step} {path}: {source}")]
pub struct DurableError {
    pub step: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl DurableError {
    fn at<'a>(
        step: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> DurableError + 'a {
        move |source| DurableError {
            step,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The temporary name [`write_synced`] writes before the rename: `<name>.part` beside it.
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// Write `bytes` to `path` through a temporary file that is fdatasync'd and renamed over it.
/// The directory entry is not yet durable: call [`fsync_dir`] on the parent before reporting
/// the file as stored (or use [`write_durable`]).
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), DurableError> {
    let tmp = temporary_path(path);
    let mut file = File::create(&tmp).map_err(DurableError::at("create", &tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_data())
        .map_err(DurableError::at("write", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(DurableError::at("rename into", path))
}

/// fsync a directory, so that entries created, renamed or removed in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(DurableError::at("fsync directory", dir))
}

/// Create `dir` and any missing ancestors so that the whole path survives a power cut: the
/// parent of every level created is fsync'd, and so is `dir`'s own parent, always (a folder an
/// interrupted earlier attempt made may not be durable yet). What is later written into `dir`
/// still needs [`fsync_dir`] of `dir`.
pub fn create_dir_durable(dir: &Path) -> Result<(), DurableError> {
    let mut missing = Vec::new();
    let mut level = dir;
    while !level.as_os_str().is_empty() && !level.is_dir() {
        missing.push(level);
        match level.parent() {
            Some(parent) => level = parent,
            None => break,
        }
    }
    for created in missing.iter().rev() {
        match std::fs::create_dir(created) {
            Ok(()) => {}
            // Another thread or process made it meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && created.is_dir() => {}
            Err(e) => return Err(DurableError::at("create directory", created)(e)),
        }
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
    }
    if missing.is_empty() {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

/// [`write_synced`], then [`fsync_dir`] of the parent: when this returns `Ok`, the file with
/// these bytes survives a power cut.
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), DurableError> {
    write_synced(path, bytes)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fsync_dir(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_dir_durable_makes_every_missing_level_and_accepts_an_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("results/7/objects");
        create_dir_durable(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_durable(&deep).unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        assert!(create_dir_durable(&dir.path().join("file/sub")).is_err());
    }

    #[test]
    fn a_durable_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("head.safetensors");
        write_durable(&path, b"first").unwrap();
        write_durable(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!temporary_path(&path).exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_names_the_path_and_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("file");
        let err = write_durable(&path, b"x").unwrap_err();
        assert_eq!(err.step, "create");
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
