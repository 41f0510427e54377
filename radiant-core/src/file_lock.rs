//! Advisory locks on files (`flock`, exclusive): one `appliance serve` per data folder, one
//! learning run, one edit of the console's users, one load of the update repository's
//! metadata at a time. The lock goes with the descriptor, so a crashed holder releases it.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A lock file that could not be opened or locked, naming it.
#[derive(Debug, Error)]
#[error("cannot {step} {path}: {source}")]
pub struct LockError {
    pub step: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// A held lock; released when dropped (or when the process ends, however it ends).
pub struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    /// Take the lock on `path` (created if missing), or `None` when another holder has it.
    pub fn try_take(path: &Path) -> Result<Option<FileLock>, LockError> {
        let file = open(path)?;
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(Some(FileLock { _file: file })),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(source) => Err(lock_error(path, source)),
        }
    }

    /// Take the lock on `path` (created if missing), waiting while another holder has it.
    pub fn take(path: &Path) -> Result<FileLock, LockError> {
        let file = open(path)?;
        loop {
            match flock(&file, libc::LOCK_EX) {
                Ok(()) => return Ok(FileLock { _file: file }),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(lock_error(path, source)),
            }
        }
    }
}

fn open(path: &Path) -> Result<std::fs::File, LockError> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| LockError {
            step: "open",
            path: path.to_path_buf(),
            source,
        })
}

fn lock_error(path: &Path, source: std::io::Error) -> LockError {
    LockError {
        step: "lock",
        path: path.to_path_buf(),
        source,
    }
}

fn flock(file: &std::fs::File, operation: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on a descriptor `file` owns for the whole call; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_held_lock_is_refused_to_a_second_taker_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.lock");
        let first = FileLock::try_take(&path).unwrap();
        assert!(first.is_some());
        assert!(FileLock::try_take(&path).unwrap().is_none());
        drop(first);
        assert!(FileLock::try_take(&path).unwrap().is_some());
    }

    #[test]
    fn a_waiting_taker_gets_the_lock_once_its_holder_drops_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen.lock");
        let held = FileLock::take(&path).unwrap();
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || {
                let _lock = FileLock::take(&path).unwrap();
                Instant::now()
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let released = Instant::now();
        drop(held);
        assert!(waiter.join().unwrap() >= released);
    }

    #[test]
    fn a_lock_file_in_a_missing_folder_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/serve.lock");
        let e = FileLock::take(&path).err().unwrap();
        assert_eq!((e.step, e.path), ("open", path));
    }
}
