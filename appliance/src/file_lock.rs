//! Advisory locks on files in the data folder (`flock`, exclusive, never waiting): one
//! `appliance serve` per data folder (`serve.lock`), one learning run per data folder
//! (`learn.lock`). The lock goes with the descriptor, so a crashed holder releases it.

use anyhow::Context;
use std::os::fd::AsRawFd;
use std::path::Path;

/// A held lock; released when dropped (or when the process ends, however it ends).
pub struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    /// Take the lock on `path` (created if missing), or `None` when another holder has it.
    pub fn try_take(path: &Path) -> anyhow::Result<Option<FileLock>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(FileLock { _file: file }));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e).with_context(|| format!("lock {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
