//! What the device remembers of the repository's metadata across power cuts. `tough` reads
//! back the timestamp and snapshot metadata it last trusted (versions must never go down) and
//! the latest time it saw (the clock must not step back), but writes them in place in its
//! datastore without fsync: a power cut can leave them empty or torn, `tough` then reads them
//! as never seen, and metadata older than what the device acted on would be taken. This module
//! keeps a durable copy of those files in `<datastore>/seen/`, recorded (fsync'd, renamed)
//! after every load and put back into the datastore before the next one. A load keeps what
//! [`hold`] returns from the restore to the record, so updater processes side by side (`run` taking a
//! release while an admin runs `update --now`) never write the datastore at once.

use radiant_core::durable::{create_dir_durable, fsync_dir, write_synced, DurableError};
use radiant_core::file_lock::{FileLock, LockError};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The datastore files `tough` reads back before it trusts new metadata.
const READ_BACK: [&str; 3] = ["timestamp.json", "snapshot.json", "latest_known_time.json"];

#[derive(Debug, Error)]
pub enum SeenError {
    #[error(transparent)]
    Durable(#[from] DurableError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot {step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SeenError + 'a {
    move |source| SeenError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

fn seen_dir(datastore: &Path) -> PathBuf {
    datastore.join("seen")
}

/// Hold the datastore for one load, waiting for another updater process that holds it: the
/// folder made durably, the lock taken, the recorded copies put back. Keep what it returns
/// until [`record`] has run after `tough`'s load.
pub fn hold(datastore: &Path) -> Result<FileLock, SeenError> {
    create_dir_durable(datastore)?;
    let held = FileLock::take(&datastore.join("seen.lock"))?;
    restore(datastore)?;
    Ok(held)
}

/// A file's bytes, or `None` when it does not exist.
fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, SeenError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path)(e)),
    }
}

/// Put the recorded copies back into the datastore before `tough` reads it. A copy that was
/// never recorded leaves the datastore's file as it is (a device that never loaded).
fn restore(datastore: &Path) -> Result<(), SeenError> {
    let seen = seen_dir(datastore);
    for name in READ_BACK {
        if let Some(bytes) = read_if_present(&seen.join(name))? {
            let path = datastore.join(name);
            std::fs::write(&path, bytes).map_err(io("write", &path))?;
        }
    }
    Ok(())
}

/// Record durably what `tough` left in the datastore after a load, successful or not: it
/// writes a file only once the metadata verified, so what is there never goes back. A file
/// `tough` removed (metadata whose keys the root rotated) is removed from the record too; one
/// that does not parse (never the case after a whole load) keeps the record as it was.
pub fn record(datastore: &Path) -> Result<(), SeenError> {
    let seen = seen_dir(datastore);
    create_dir_durable(&seen)?;
    for name in READ_BACK {
        let recorded = seen.join(name);
        match read_if_present(&datastore.join(name))? {
            Some(bytes) if serde_json::from_slice::<serde_json::Value>(&bytes).is_ok() => {
                if read_if_present(&recorded)?.as_deref() != Some(&bytes[..]) {
                    write_synced(&recorded, &bytes)?;
                }
            }
            Some(_) => {}
            None => match std::fs::remove_file(&recorded) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &recorded)(e)),
            },
        }
    }
    fsync_dir(&seen)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = r#"{"signed":{"version":2}}"#;
    const V3: &str = r#"{"signed":{"version":3}}"#;
    const V4: &str = r#"{"signed":{"version":4}}"#;

    fn write(store: &Path, name: &str, text: &str) {
        std::fs::write(store.join(name), text).unwrap();
    }

    /// What `tough` reads in `store` once a load holds it; `None` when the file is absent.
    fn read_back(store: &Path, name: &str) -> Option<String> {
        drop(hold(store).unwrap());
        std::fs::read_to_string(store.join(name)).ok()
    }

    /// A store whose load left timestamp 3 and snapshot 2, recorded.
    fn recorded_store() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "timestamp.json", V3);
        write(dir.path(), "snapshot.json", V2);
        record(dir.path()).unwrap();
        dir
    }

    #[test]
    fn a_torn_datastore_file_is_put_back_as_it_was_recorded() {
        let dir = recorded_store();
        let store = dir.path();
        // What a power cut leaves of files written in place and never synced.
        write(store, "timestamp.json", r#"{"signed":{"ver"#);
        std::fs::remove_file(store.join("snapshot.json")).unwrap();
        assert_eq!(read_back(store, "timestamp.json").as_deref(), Some(V3));
        assert_eq!(read_back(store, "snapshot.json").as_deref(), Some(V2));
        assert_eq!(read_back(store, "latest_known_time.json"), None);
    }

    #[test]
    fn a_later_load_replaces_the_record_and_a_removal_is_recorded() {
        let dir = recorded_store();
        let store = dir.path();
        write(store, "timestamp.json", V4);
        std::fs::remove_file(store.join("snapshot.json")).unwrap();
        record(store).unwrap();
        write(store, "timestamp.json", "");
        assert_eq!(read_back(store, "timestamp.json").as_deref(), Some(V4));
        assert_eq!(read_back(store, "snapshot.json"), None);
    }

    #[test]
    fn a_file_that_does_not_parse_keeps_the_record() {
        let dir = recorded_store();
        let store = dir.path();
        write(store, "timestamp.json", r#"{"sig"#);
        record(store).unwrap();
        assert_eq!(read_back(store, "timestamp.json").as_deref(), Some(V3));
    }
}
