//! The spool: every received instance as a DICOM Part 10 file, indexed in SQLite, durable before
//! the SCP answers Success.
//!
//! Write path of one instance (association thread, then the committer thread):
//! 1. write `spool/tmp/<n>.part` (preamble, file meta group, dataset bytes as received), fdatasync;
//! 2. hand it to the committer, which takes every instance waiting at that moment as one batch:
//!    skips SOP Instance UIDs already indexed (idempotent re-sends), renames each file to
//!    `spool/<study>/<sop>.dcm`, fsyncs each touched directory once, inserts the rows and upserts
//!    the studies in one transaction, commits, then answers every waiter.
//!
//! The files are the truth and the index is rebuilt from them: recovery at open removes `.part`
//! files (never acknowledged) and indexes again every spool file the index does not list. So the
//! committer's commits are not fsync'd (`synchronous=NORMAL` on its connection; the WAL keeps
//! them consistent and the next fsync of the WAL, by any other writer or a checkpoint, makes
//! them durable): an instance is acknowledged once its file and its folder entry are durable,
//! two fsyncs shared by a batch where the index commit made three. The power-cut exploration
//! (`scripts/crashcheck.sh`, with `--ignore-syncs index`) is what showed the index commit's
//! fsync adds nothing to what an acknowledgement guarantees. Every other writer of the index
//! (study completion, purge) commits with `synchronous=FULL`, since files are deleted or jobs
//! created on the strength of its commits.

pub mod index;
pub mod purge;
mod rebuild;
pub mod studies;

use crate::metrics::Metrics;
use crate::uids;
use dicom_object::FileMetaTableBuilder;
use radiant_core::Uid;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Most instances one group commit takes.
const MAX_BATCH: usize = 512;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("spool I/O on {}: {source}", radiant_core::redacted_path(.path))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spool index {}: {source}", radiant_core::redacted_path(.path))]
    Index {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("no spool index at {0}: the daemon has not run with this data_dir yet")]
    NoIndex(PathBuf),
    #[error("invalid UID {0}")]
    InvalidUid(Uid),
    #[error("could not encode the file meta group: {0}")]
    Meta(String),
    #[error("the spool is shut down")]
    Closed,
    #[error("{} is not under the data folder", radiant_core::redacted_path(.0))]
    NotUnderDataDir(PathBuf),
    #[error("the spool's committer thread panicked")]
    CommitterPanicked,
    #[error("cannot check whether study {study} may still be purged: {reason}")]
    PurgeCheck { study: Uid, reason: String },
}

impl StoreError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn index(path: &Path, source: rusqlite::Error) -> Self {
        Self::Index {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An instance as it arrived, already checked by the SCP.
#[derive(Debug, Clone)]
pub struct IncomingInstance<'a> {
    pub sop_class_uid: &'a str,
    pub sop_instance_uid: &'a str,
    pub study_uid: &'a str,
    pub series_uid: &'a str,
    /// Modality (0008,0060), empty when absent.
    pub modality: &'a str,
    pub transfer_syntax_uid: &'a str,
    pub calling_ae: &'a str,
    pub called_ae: &'a str,
    /// The dataset bytes exactly as received, in `transfer_syntax_uid`.
    pub dataset: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Written and committed.
    Stored,
    /// This SOP Instance UID was already stored; the new copy was discarded.
    Duplicate,
}

struct CommitJob {
    tmp: PathBuf,
    sop_instance_uid: String,
    sop_class_uid: String,
    study_uid: String,
    series_uid: String,
    modality: String,
    transfer_syntax_uid: String,
    calling_ae: String,
    size: u64,
    reply: SyncSender<Result<StoreOutcome, String>>,
}

pub struct Spool {
    data_dir: PathBuf,
    spool_dir: PathBuf,
    tmp_dir: PathBuf,
    index_path: PathBuf,
    sender: Mutex<Option<Sender<CommitJob>>>,
    committer: Mutex<Option<JoinHandle<()>>>,
    next_tmp: AtomicU64,
}

/// Path of the index inside a data directory.
pub fn index_path(data_dir: &Path) -> PathBuf {
    data_dir.join("index.sqlite")
}

impl Spool {
    /// Open the spool under `data_dir`, recover from any crash, and start the committer.
    pub fn open(data_dir: &Path, metrics: Arc<Metrics>) -> Result<Arc<Spool>, StoreError> {
        let spool_dir = data_dir.join("spool");
        let tmp_dir = spool_dir.join("tmp");
        // Durable at every level: on a first start the spool folder is new in the data folder.
        radiant_core::durable::create_dir_durable(&tmp_dir)
            .map_err(|e| StoreError::io(&tmp_dir, e.source))?;
        let index_path = index_path(data_dir);
        let conn = index::open(&index_path)?;
        recover(data_dir, &spool_dir, &tmp_dir, &conn, &index_path)?;
        // Ingest's commits need no fsync of their own: see the module documentation.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| StoreError::index(&index_path, e))?;
        let (count, bytes) = index::totals(&conn).map_err(|e| StoreError::index(&index_path, e))?;
        metrics
            .spool_instances
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        metrics
            .spool_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));

        let (sender, receiver) = mpsc::channel();
        let committer = Committer {
            conn,
            data_dir: data_dir.to_path_buf(),
            spool_dir: spool_dir.clone(),
            index_path: index_path.clone(),
            metrics,
            synced_study_dirs: HashSet::new(),
        };
        let handle = std::thread::Builder::new()
            .name("spool-committer".into())
            .spawn(move || committer.run(receiver))
            .map_err(|e| StoreError::io(&spool_dir, e))?;
        Ok(Arc::new(Spool {
            data_dir: data_dir.to_path_buf(),
            spool_dir,
            tmp_dir,
            index_path,
            sender: Mutex::new(Some(sender)),
            committer: Mutex::new(Some(handle)),
            next_tmp: AtomicU64::new(0),
        }))
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn index_path(&self) -> &Path {
        &self.index_path
    }

    /// Store one instance durably. Returns only once the file and its index row are on disk.
    pub fn store(&self, instance: &IncomingInstance<'_>) -> Result<StoreOutcome, StoreError> {
        for uid in [instance.sop_instance_uid, instance.study_uid] {
            if !uids::is_valid_uid(uid) {
                return Err(StoreError::InvalidUid(Uid::new(uid)));
            }
        }
        let sender = self
            .sender
            .lock()
            .map_err(|_| StoreError::Closed)?
            .clone()
            .ok_or(StoreError::Closed)?;
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .tmp_dir
            .join(format!("{}-{n}.part", std::process::id()));
        let size = match write_part10(&tmp, instance) {
            Ok(size) => size,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let (reply, answer) = mpsc::sync_channel(1);
        let job = CommitJob {
            tmp: tmp.clone(),
            sop_instance_uid: instance.sop_instance_uid.to_string(),
            sop_class_uid: instance.sop_class_uid.to_string(),
            study_uid: instance.study_uid.to_string(),
            series_uid: instance.series_uid.to_string(),
            modality: instance.modality.to_string(),
            transfer_syntax_uid: instance.transfer_syntax_uid.to_string(),
            calling_ae: instance.calling_ae.to_string(),
            size,
            reply,
        };
        if sender.send(job).is_err() {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Closed);
        }
        match answer.recv() {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(message)) => Err(StoreError::Io {
                path: self.spool_dir.clone(),
                source: std::io::Error::other(message),
            }),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Free bytes on the file system holding the spool.
    pub fn free_bytes(&self) -> Result<u64, StoreError> {
        free_bytes(&self.spool_dir).map_err(|e| StoreError::io(&self.spool_dir, e))
    }

    /// Stop taking instances, let the committer finish its batch, and wait for it. An error
    /// when the committer panicked (the instances it held were never acknowledged).
    pub fn close(&self) -> Result<(), StoreError> {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
        let handle = self.committer.lock().ok().and_then(|mut h| h.take());
        match handle.map(JoinHandle::join) {
            Some(Err(_)) => Err(StoreError::CommitterPanicked),
            _ => Ok(()),
        }
    }
}

/// Free bytes available to us on the file system holding `path` (statvfs).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let stat = statvfs(path)?;
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Space on the file system holding a path, as `df` counts it: `used` is what is taken
/// (reserved blocks aside), `available` what we may still write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub used_bytes: u64,
    pub available_bytes: u64,
}

impl FsUsage {
    /// What we can use in all: used plus available (the root reserve is neither).
    pub fn usable_bytes(&self) -> u64 {
        self.used_bytes.saturating_add(self.available_bytes)
    }

    /// Used space in percent of [`FsUsage::usable_bytes`] (`df`'s Use%), 0 for an empty file
    /// system.
    pub fn used_percent(&self) -> f64 {
        match self.usable_bytes() {
            0 => 0.0,
            usable => self.used_bytes as f64 * 100.0 / usable as f64,
        }
    }
}

/// Used and available space on the file system holding `path` (statvfs).
pub fn fs_usage(path: &Path) -> std::io::Result<FsUsage> {
    let stat = statvfs(path)?;
    let frsize = stat.f_frsize as u64;
    let blocks = stat.f_blocks as u64;
    let free = stat.f_bfree as u64;
    let avail = stat.f_bavail as u64;
    Ok(FsUsage {
        used_bytes: blocks.saturating_sub(free).saturating_mul(frsize),
        available_bytes: avail.saturating_mul(frsize),
    })
}

fn statvfs(path: &Path) -> std::io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path holds a NUL byte"))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a writable statvfs.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat)
}

/// Write a Part 10 file (PS3.10 section 7.1): 128-byte preamble, "DICM", the file meta group,
/// then the dataset bytes unchanged. Returns the dataset size.
fn write_part10(path: &Path, instance: &IncomingInstance<'_>) -> Result<u64, StoreError> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(instance.sop_class_uid)
        .media_storage_sop_instance_uid(instance.sop_instance_uid)
        .transfer_syntax(instance.transfer_syntax_uid)
        .implementation_class_uid(uids::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(uids::IMPLEMENTATION_VERSION_NAME)
        .source_application_entity_title(instance.calling_ae)
        .receiving_application_entity_title(instance.called_ae)
        .build()
        .map_err(|e| StoreError::Meta(e.to_string()))?;
    let mut head = Vec::with_capacity(512);
    head.extend([0u8; 128]);
    head.extend(b"DICM");
    meta.write(&mut head)
        .map_err(|e| StoreError::Meta(e.to_string()))?;
    let mut file = File::create(path).map_err(|e| StoreError::io(path, e))?;
    file.write_all(&head).map_err(|e| StoreError::io(path, e))?;
    file.write_all(instance.dataset)
        .map_err(|e| StoreError::io(path, e))?;
    file.sync_data().map_err(|e| StoreError::io(path, e))?;
    Ok(instance.dataset.len() as u64)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Move a spool file the index does not list to `<data_dir>/quarantine/`, keeping its path
/// below the spool (`relative` is `spool/<study>/<file>`), both folders synced.
fn quarantine(data_dir: &Path, path: &Path, relative: &str) -> Result<(), StoreError> {
    let below_spool = Path::new(relative)
        .strip_prefix("spool")
        .unwrap_or(Path::new(relative));
    let target = data_dir.join("quarantine").join(below_spool);
    let folder = target.parent().unwrap_or(data_dir);
    radiant_core::durable::create_dir_durable(folder)
        .map_err(|e| StoreError::io(folder, e.source))?;
    fs::rename(path, &target).map_err(|e| StoreError::io(path, e))?;
    radiant_core::durable::fsync_dir(folder).map_err(|e| StoreError::io(folder, e.source))?;
    if let Some(parent) = path.parent() {
        radiant_core::durable::fsync_dir(parent).map_err(|e| StoreError::io(parent, e.source))?;
    }
    tracing::warn!(file = %radiant_core::redacted_path(path), "spool file not in the index moved to quarantine");
    Ok(())
}

/// Undo what a crash left behind: remove `.part` files, index again the spool files the index
/// does not list (quarantining those that cannot be placed), and log instances whose files are
/// missing.
fn recover(
    data_dir: &Path,
    spool_dir: &Path,
    tmp_dir: &Path,
    conn: &Connection,
    index_path: &Path,
) -> Result<(), StoreError> {
    let mut removed = 0usize;
    for entry in fs::read_dir(tmp_dir).map_err(|e| StoreError::io(tmp_dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(tmp_dir, e))?;
        fs::remove_file(entry.path()).map_err(|e| StoreError::io(&entry.path(), e))?;
        removed += 1;
    }
    let paths = |sql: &str| -> Result<HashSet<String>, StoreError> {
        let mut stmt = conn
            .prepare(sql)
            .map_err(|e| StoreError::index(index_path, e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| StoreError::index(index_path, e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| StoreError::index(index_path, e))
    };
    let indexed = paths("SELECT path FROM instances")?;
    // Files of a purge a crash interrupted: retention finishes those.
    let purging = paths("SELECT path FROM purge_pending")?;
    let mut present = 0usize;
    let mut reindexed = 0usize;
    let mut quarantined = 0usize;
    for study in fs::read_dir(spool_dir).map_err(|e| StoreError::io(spool_dir, e))? {
        let study = study.map_err(|e| StoreError::io(spool_dir, e))?;
        let study_path = study.path();
        if study_path == tmp_dir || !study_path.is_dir() {
            continue;
        }
        for file in fs::read_dir(&study_path).map_err(|e| StoreError::io(&study_path, e))? {
            let file = file.map_err(|e| StoreError::io(&study_path, e))?;
            let path = file.path();
            // The index names files relative to the data folder; a file that cannot be named
            // so cannot be matched, and recovery never removes what it cannot match.
            let relative = path
                .strip_prefix(data_dir)
                .map(|p| p.to_string_lossy().into_owned())
                .map_err(|_| StoreError::NotUnderDataDir(path.clone()))?;
            if indexed.contains(&relative) {
                present += 1;
            } else if !purging.contains(&relative) {
                // Not listed: an instance whose index commit a crash cut short, or one the
                // index lost. The files are the truth: indexed again, or set aside when they
                // cannot be placed; never deleted.
                match rebuild::reindex(conn, &path, &relative) {
                    Ok(()) => reindexed += 1,
                    Err(reason) => {
                        tracing::warn!(file = %radiant_core::redacted_path(&path), %reason, "spool file cannot be indexed again");
                        quarantine(data_dir, &path, &relative)?;
                        quarantined += 1;
                    }
                }
            }
        }
    }
    if removed > 0 {
        tracing::warn!(removed, "recovery removed partial transfers");
    }
    if reindexed > 0 {
        tracing::warn!(
            reindexed,
            "spool files the index did not list were indexed again from their own headers"
        );
    }
    if quarantined > 0 {
        tracing::warn!(
            quarantined,
            "spool files that could not be indexed again were moved to quarantine/; nothing was deleted"
        );
    }
    if present < indexed.len() {
        tracing::error!(
            missing = indexed.len() - present,
            "index lists instances whose spool files are missing"
        );
    }
    Ok(())
}

struct Committer {
    conn: Connection,
    data_dir: PathBuf,
    spool_dir: PathBuf,
    index_path: PathBuf,
    metrics: Arc<Metrics>,
    /// Study folders whose entry in the spool folder this process has fsync'd. A folder left by
    /// an earlier process or by a failed batch is fsync'd again before the first instance in it
    /// is acknowledged.
    synced_study_dirs: HashSet<PathBuf>,
}

impl Committer {
    fn run(mut self, jobs: Receiver<CommitJob>) {
        while let Ok(first) = jobs.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let mut renamed = Vec::new();
            match self.commit(&batch, &mut renamed) {
                Ok(outcomes) => {
                    self.metrics.commit_batches.inc();
                    for (job, outcome) in batch.iter().zip(outcomes) {
                        let _ = job.reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, batch = batch.len(), "group commit failed");
                    // Nothing of the batch is indexed: remove its files wherever they are.
                    for path in renamed {
                        let _ = fs::remove_file(path);
                    }
                    for job in &batch {
                        let _ = fs::remove_file(&job.tmp);
                        let _ = job.reply.send(Err(e.to_string()));
                    }
                }
            }
        }
    }

    /// Commit one batch; `renamed` collects the spool files moved into place, so that a
    /// failed batch can take them out again.
    fn commit(
        &mut self,
        batch: &[CommitJob],
        renamed: &mut Vec<PathBuf>,
    ) -> Result<Vec<StoreOutcome>, StoreError> {
        let index_path = self.index_path.clone();
        let ix = |e| StoreError::index(&index_path, e);
        let now = now_ms();
        // IMMEDIATE: take the write lock at BEGIN, where the busy timeout applies. A deferred
        // transaction that reads first cannot upgrade after another connection committed.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(ix)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut dirs_to_sync = BTreeSet::new();
        let mut stored_bytes = 0u64;
        let mut new_study_dirs = Vec::new();
        for job in batch {
            let indexed: Option<String> = tx
                .query_row(
                    "SELECT path FROM instances WHERE sop_instance_uid = ?1",
                    [&job.sop_instance_uid],
                    |r| r.get(0),
                )
                .optional()
                .map_err(ix)?;
            if let Some(relative) = indexed {
                let stored = self.data_dir.join(&relative);
                if stored.is_file() {
                    fs::remove_file(&job.tmp).map_err(|e| StoreError::io(&job.tmp, e))?;
                } else {
                    // The index row outlived its file (a disk error, a hand that deleted it):
                    // the re-sent copy takes its place, so the Success we send is true.
                    tracing::warn!(
                        file = %radiant_core::redacted_path(&stored),
                        "a re-sent instance restores its missing spool file"
                    );
                    if let Some(parent) = stored.parent() {
                        fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
                        dirs_to_sync.insert(parent.to_path_buf());
                        if let Some(spool) = parent.parent() {
                            dirs_to_sync.insert(spool.to_path_buf());
                        }
                    }
                    fs::rename(&job.tmp, &stored).map_err(|e| StoreError::io(&stored, e))?;
                    renamed.push(stored);
                    tx.execute(
                        "UPDATE instances SET size = ?2, transfer_syntax_uid = ?3
                         WHERE sop_instance_uid = ?1",
                        params![
                            job.sop_instance_uid,
                            job.size as i64,
                            job.transfer_syntax_uid
                        ],
                    )
                    .map_err(ix)?;
                }
                outcomes.push(StoreOutcome::Duplicate);
                continue;
            }
            let study_dir = self.spool_dir.join(&job.study_uid);
            let mut created = false;
            if !study_dir.is_dir() {
                fs::create_dir(&study_dir).map_err(|e| StoreError::io(&study_dir, e))?;
                created = true;
            }
            // A folder this process synced once may have been removed since (retention removes
            // the folder of a purged study): one created now needs its entry synced again.
            if created || !self.synced_study_dirs.contains(&study_dir) {
                dirs_to_sync.insert(self.spool_dir.clone());
                new_study_dirs.push(study_dir.clone());
            }
            let final_path = study_dir.join(format!("{}.dcm", job.sop_instance_uid));
            fs::rename(&job.tmp, &final_path).map_err(|e| StoreError::io(&final_path, e))?;
            renamed.push(final_path.clone());
            dirs_to_sync.insert(study_dir);
            let relative = final_path
                .strip_prefix(&self.data_dir)
                .map(|p| p.to_string_lossy().into_owned())
                .map_err(|_| StoreError::NotUnderDataDir(final_path.clone()))?;
            tx.execute(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid,
                     modality, transfer_syntax_uid, calling_ae, path, size, received_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    job.sop_instance_uid,
                    job.sop_class_uid,
                    job.study_uid,
                    job.series_uid,
                    job.modality,
                    job.transfer_syntax_uid,
                    job.calling_ae,
                    relative,
                    job.size as i64,
                    now
                ],
            )
            .map_err(ix)?;
            // A late instance reopens a completed study: it completes again after the quiet period.
            tx.execute(
                "INSERT INTO studies (study_uid, calling_ae, state, first_received_at_ms, last_received_at_ms)
                 VALUES (?1, ?2, 'receiving', ?3, ?3)
                 ON CONFLICT (study_uid, calling_ae) DO UPDATE SET
                     last_received_at_ms = excluded.last_received_at_ms,
                     state = 'receiving', completed_at_ms = NULL, completion_announced = 0",
                params![job.study_uid, job.calling_ae, now],
            )
            .map_err(ix)?;
            stored_bytes += job.size;
            outcomes.push(StoreOutcome::Stored);
        }
        for dir in &dirs_to_sync {
            radiant_core::durable::fsync_dir(dir).map_err(|e| StoreError::io(dir, e.source))?;
        }
        tx.commit().map_err(ix)?;
        self.synced_study_dirs.extend(new_study_dirs);
        let stored = outcomes
            .iter()
            .filter(|o| **o == StoreOutcome::Stored)
            .count() as u64;
        self.metrics
            .spool_instances
            .inc_by(i64::try_from(stored).unwrap_or(i64::MAX));
        self.metrics
            .spool_bytes
            .inc_by(i64::try_from(stored_bytes).unwrap_or(i64::MAX));
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance<'a>(sop: &'a str, dataset: &'a [u8]) -> IncomingInstance<'a> {
        IncomingInstance {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2",
            sop_instance_uid: sop,
            study_uid: "1.2.3",
            series_uid: "1.2.3.1",
            modality: "CT",
            transfer_syntax_uid: uids::EXPLICIT_VR_LE,
            calling_ae: "MODALITY",
            called_ae: "RADIANT",
            dataset,
        }
    }

    #[test]
    fn a_stored_instance_keeps_its_dataset_bytes_after_the_meta_group() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        let dataset = b"\x08\x00\x18\x00UI\x04\x001.2\0".to_vec();
        assert_eq!(
            spool.store(&instance("1.2.3.4", &dataset)).unwrap(),
            StoreOutcome::Stored
        );
        spool.close().unwrap();
        let file = fs::read(dir.path().join("spool/1.2.3/1.2.3.4.dcm")).unwrap();
        assert_eq!(&file[128..132], b"DICM");
        assert!(file.ends_with(&dataset));
    }

    #[test]
    fn a_resent_instance_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let spool = Spool::open(dir.path(), metrics.clone()).unwrap();
        let dataset = b"\x08\x00\x18\x00UI\x04\x001.2\0".to_vec();
        spool.store(&instance("1.2.3.4", &dataset)).unwrap();
        assert_eq!(
            spool.store(&instance("1.2.3.4", &dataset)).unwrap(),
            StoreOutcome::Duplicate
        );
        spool.close().unwrap();
        assert_eq!(metrics.spool_instances.get(), 1);
        assert_eq!(
            fs::read_dir(dir.path().join("spool/tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_resent_instance_whose_file_went_missing_is_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        let dataset = b"\x08\x00\x18\x00UI\x04\x001.2\0".to_vec();
        spool.store(&instance("1.2.3.4", &dataset)).unwrap();
        let file = dir.path().join("spool/1.2.3/1.2.3.4.dcm");
        fs::remove_file(&file).unwrap();
        assert_eq!(
            spool.store(&instance("1.2.3.4", &dataset)).unwrap(),
            StoreOutcome::Duplicate
        );
        spool.close().unwrap();
        assert!(fs::read(&file).unwrap().ends_with(&dataset));
        assert_eq!(
            fs::read_dir(dir.path().join("spool/tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn recovery_removes_partial_and_unindexed_files_but_keeps_indexed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        spool.store(&instance("1.2.3.4", b"abcd")).unwrap();
        spool.close().unwrap();
        fs::write(dir.path().join("spool/tmp/9-9.part"), b"half").unwrap();
        fs::write(dir.path().join("spool/1.2.3/1.2.3.5.dcm"), b"orphan").unwrap();
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        spool.close().unwrap();
        assert!(dir.path().join("spool/1.2.3/1.2.3.4.dcm").exists());
        assert!(!dir.path().join("spool/1.2.3/1.2.3.5.dcm").exists());
        assert_eq!(
            fs::read(dir.path().join("quarantine/1.2.3/1.2.3.5.dcm")).unwrap(),
            b"orphan"
        );
        assert!(!dir.path().join("spool/tmp/9-9.part").exists());
    }

    /// An explicit VR little endian dataset with the identifying attributes of `sop` in
    /// study 1.2.3, series 1.2.3.1.
    fn identified(sop: &str) -> Vec<u8> {
        let mut ds = Vec::new();
        let mut element = |group: u16, number: u16, vr: &[u8; 2], value: &str| {
            let mut value = value.as_bytes().to_vec();
            if value.len() % 2 == 1 {
                value.push(0);
            }
            ds.extend(group.to_le_bytes());
            ds.extend(number.to_le_bytes());
            ds.extend(vr);
            ds.extend((value.len() as u16).to_le_bytes());
            ds.extend(value);
        };
        element(0x0008, 0x0016, b"UI", "1.2.840.10008.5.1.4.1.1.2");
        element(0x0008, 0x0018, b"UI", sop);
        element(0x0008, 0x0060, b"CS", "CT");
        element(0x0020, 0x000D, b"UI", "1.2.3");
        element(0x0020, 0x000E, b"UI", "1.2.3.1");
        ds
    }

    #[test]
    fn a_lost_index_is_rebuilt_from_the_part10_files_and_what_cannot_be_placed_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        let (a, b) = (identified("1.2.3.4"), identified("1.2.3.6"));
        spool.store(&instance("1.2.3.4", &a)).unwrap();
        spool.store(&instance("1.2.3.6", &b)).unwrap();
        spool.store(&instance("1.2.3.8", b"not a dataset")).unwrap();
        spool.close().unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let _ = fs::remove_file(format!("{}{suffix}", index_path(dir.path()).display()));
        }
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        spool.close().unwrap();
        let conn = index::open(&index_path(dir.path())).unwrap();
        let rows: Vec<(String, String, String)> = conn
            .prepare("SELECT sop_instance_uid, calling_ae, path FROM instances ORDER BY 1")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (
                    "1.2.3.4".into(),
                    "MODALITY".into(),
                    "spool/1.2.3/1.2.3.4.dcm".into()
                ),
                (
                    "1.2.3.6".into(),
                    "MODALITY".into(),
                    "spool/1.2.3/1.2.3.6.dcm".into()
                ),
            ]
        );
        let state: String = conn
            .query_row(
                "SELECT state FROM studies WHERE study_uid = '1.2.3'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(state, "receiving");
        assert!(dir.path().join("spool/1.2.3/1.2.3.4.dcm").exists());
        assert!(dir.path().join("quarantine/1.2.3/1.2.3.8.dcm").exists());
    }

    #[test]
    fn a_lost_index_deletes_nothing_and_unreadable_files_are_set_aside_in_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        spool.store(&instance("1.2.3.4", b"abcd")).unwrap();
        spool.store(&instance("1.2.3.6", b"efgh")).unwrap();
        spool.close().unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let _ = fs::remove_file(format!("{}{suffix}", index_path(dir.path()).display()));
        }
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        spool.close().unwrap();
        for sop in ["1.2.3.4", "1.2.3.6"] {
            assert!(
                dir.path()
                    .join(format!("quarantine/1.2.3/{sop}.dcm"))
                    .exists(),
                "{sop}"
            );
        }
    }

    #[test]
    fn a_uid_that_would_escape_the_spool_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        let mut bad = instance("1.2.3.4", b"abcd");
        bad.study_uid = "../../etc";
        assert!(matches!(spool.store(&bad), Err(StoreError::InvalidUid(_))));
        spool.close().unwrap();
    }
}
