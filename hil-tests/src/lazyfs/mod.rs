//! A lazy file system for power-cut tests, in the spirit of LazyFS: a FUSE mount that keeps
//! everything not synced in memory, and on command "cuts the power", leaving on its backing
//! folder only what a disk would hold (the persistence model is [`model`]'s documentation).
//!
//! Use: [`LazyFs::mount`] loads the backing folder and mounts it; processes then use the mount
//! point as an ordinary folder. [`LazyFs::cut_after_sync`] arms a cut at the k-th sync (the
//! sync itself completes; every later operation fails with EIO, as if the machine had stopped),
//! and [`LazyFs::power_cut`] (after the test has killed every process on the mount) unmounts
//! and replaces the backing folder with what survived. [`LazyFs::unmount`] is the clean
//! shutdown: everything written is kept.

pub mod model;

use fuser::{
    BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use model::{CutOptions, CutSummary, Ino, Kind, Model};
use radiant_core::rng::SplitMix64;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// The model and the cut control, shared by the FUSE thread and the test.
struct Shared {
    model: Model,
    /// Freeze right after this sync completes (1-based).
    cut_after: Option<u64>,
    frozen: bool,
    /// Syncs of paths this matches are answered but do nothing: the tool for measuring which
    /// syncs the invariants need.
    ignored: Option<SyncFilter>,
    /// Every sync so far, in order: the path (relative to the mount, '/' for a directory).
    trace: Vec<String>,
}

/// Matches a path relative to the mount, and whether it is a directory.
pub type SyncFilter = Box<dyn Fn(&Path, bool) -> bool + Send>;

/// A mounted lazy file system.
pub struct LazyFs {
    shared: Arc<Mutex<Shared>>,
    session: Option<BackgroundSession>,
    backing: PathBuf,
    mountpoint: PathBuf,
}

impl LazyFs {
    /// Mount `backing`'s tree at `mountpoint` (an existing empty folder).
    pub fn mount(backing: &Path, mountpoint: &Path) -> std::io::Result<LazyFs> {
        let shared = Arc::new(Mutex::new(Shared {
            model: Model::load(backing)?,
            cut_after: None,
            frozen: false,
            ignored: None,
            trace: Vec::new(),
        }));
        let fs = Fuse {
            shared: shared.clone(),
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName("lazyfs".into()),
            MountOption::DefaultPermissions,
        ];
        let session = fuser::spawn_mount(fs, mountpoint, &config)?;
        Ok(LazyFs {
            shared,
            session: Some(session),
            backing: backing.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Syncs (file and directory fsyncs) so far.
    pub fn syncs(&self) -> u64 {
        self.lock().model.syncs()
    }

    /// Freeze the file system right after sync number `k` (counted from the mount).
    pub fn cut_after_sync(&self, k: u64) {
        let mut shared = self.lock();
        shared.cut_after = Some(k);
        if shared.model.syncs() >= k {
            shared.frozen = true;
        }
    }

    /// The syncs so far, in order, each named by its path ('/' ending a directory's).
    pub fn trace(&self) -> Vec<String> {
        self.lock().trace.clone()
    }

    /// Answer syncs of the paths `filter` matches without making anything durable.
    pub fn ignore_syncs(&self, filter: SyncFilter) {
        self.lock().ignored = Some(filter);
    }

    /// Freeze now: every later operation fails with EIO.
    pub fn freeze(&self) {
        self.lock().frozen = true;
    }

    pub fn frozen(&self) -> bool {
        self.lock().frozen
    }

    /// Make everything written so far durable, as sync(2) would.
    pub fn sync_everything(&self) {
        self.lock().model.sync_everything();
    }

    /// Cut the power: freeze, unmount, and replace the backing folder with what survives.
    /// Every process using the mount must have been killed first.
    pub fn power_cut(mut self, options: CutOptions, seed: u64) -> std::io::Result<CutSummary> {
        self.freeze();
        self.unmount_session()?;
        let shared = self.lock();
        replace_dir(&self.backing, |dest| {
            shared
                .model
                .write_after_cut(dest, options, &mut SplitMix64::new(seed))
        })
    }

    /// Unmount cleanly, keeping everything written (synced or not).
    pub fn unmount(mut self) -> std::io::Result<()> {
        self.unmount_session()?;
        let shared = self.lock();
        replace_dir(&self.backing, |dest| shared.model.write_current(dest))
    }

    fn unmount_session(&mut self) -> std::io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let Err(e) = session.umount_and_join() else {
            return Ok(());
        };
        // Busy (a process still has a file open): detach it lazily; the kernel fails that
        // process's later calls. Quiet: the mount may already be gone.
        let _ = std::process::Command::new("fusermount3")
            .args(["-u", "-z", "-q"])
            .arg(&self.mountpoint)
            .stderr(std::process::Stdio::null())
            .status();
        // The kernel ended the connection as the mount went (reading /dev/fuse after an abort
        // says ECONNABORTED rather than ENODEV): nothing can reach the model any more, which
        // holds everything, so the unmount is done.
        if e.raw_os_error() == Some(libc::ECONNABORTED) {
            Ok(())
        } else {
            Err(e)
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let _ = self.unmount_session();
    }
}

/// Fill a fresh folder with `fill`, then swap it in for `dir`.
fn replace_dir<T>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let fresh = dir.with_extension("lazyfs-new");
    let _ = std::fs::remove_dir_all(&fresh);
    std::fs::create_dir(&fresh)?;
    let out = fill(&fresh)?;
    std::fs::remove_dir_all(dir)?;
    std::fs::rename(&fresh, dir)?;
    Ok(out)
}

/// The FUSE side: every request is answered from the model under one lock.
struct Fuse {
    shared: Arc<Mutex<Shared>>,
    uid: u32,
    gid: u32,
}

const TTL: Duration = Duration::ZERO;

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl Fuse {
    /// The state, or EIO once the power is cut.
    fn live(&self) -> Result<MutexGuard<'_, Shared>, Errno> {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if shared.frozen {
            Err(Errno::EIO)
        } else {
            Ok(shared)
        }
    }

    fn attr(&self, model: &Model, ino: Ino) -> Result<FileAttr, Errno> {
        let node = model.node(ino).map_err(errno)?;
        let (kind, size, nlink) = match node.kind {
            Kind::File => (FileType::RegularFile, node.data.len() as u64, 1),
            Kind::Symlink => (FileType::Symlink, node.data.len() as u64, 1),
            Kind::Dir => (FileType::Directory, 4096, 2),
        };
        let now = SystemTime::now();
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm: node.mode as u16,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Sync `ino` (unless ignored), count it and freeze if it is the armed one.
    fn sync(&self, ino: INodeNo, dir: bool) -> Result<(), Errno> {
        let mut shared = self.live()?;
        let path = shared.model.path_of(ino.0);
        let ignored = shared.ignored.as_ref().is_some_and(|f| f(&path, dir));
        let name = format!(
            "{}{}{}",
            path.display(),
            if dir { "/" } else { "" },
            if ignored { " (ignored)" } else { "" }
        );
        shared.trace.push(name);
        if ignored {
            shared.model.count_ignored_sync();
        } else if dir {
            shared.model.fsync_dir(ino.0).map_err(errno)?;
        } else {
            shared.model.fsync_file(ino.0).map_err(errno)?;
        }
        if shared.cut_after.is_some_and(|k| shared.model.syncs() >= k) {
            shared.frozen = true;
        }
        Ok(())
    }

    /// `unlink` (`dir` false) or `rmdir` (`dir` true) of `name` in `parent`.
    fn remove_entry(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        match self
            .live()
            .and_then(|mut s| s.model.remove(parent.0, name, dir).map_err(errno))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create_entry(
        &self,
        parent: INodeNo,
        name: &OsStr,
        kind: Kind,
        mode: u32,
        target: &[u8],
    ) -> Result<FileAttr, Errno> {
        let mut shared = self.live()?;
        let ino = shared
            .model
            .create(parent.0, name, kind, mode, target)
            .map_err(errno)?;
        self.attr(&shared.model, ino)
    }
}

impl Filesystem for Fuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self.live().and_then(|shared| {
            let ino = shared.model.lookup(parent.0, name).map_err(errno)?;
            self.attr(&shared.model, ino)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self
            .live()
            .and_then(|shared| self.attr(&shared.model, ino.0))
        {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.live().and_then(|mut shared| {
            if let Some(size) = size {
                shared.model.resize(ino.0, size).map_err(errno)?;
            }
            if let Some(mode) = mode {
                shared.model.chmod(ino.0, mode).map_err(errno)?;
            }
            self.attr(&shared.model, ino.0)
        });
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.live() {
            Ok(shared) => match shared.model.node(ino.0) {
                Ok(node) if node.kind == Kind::Symlink => reply.data(&node.data),
                Ok(_) => reply.error(Errno::EINVAL),
                Err(e) => reply.error(errno(e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        match self.create_entry(parent, name, Kind::File, mode & !umask, &[]) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.create_entry(parent, name, Kind::Dir, mode & !umask, &[]) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove_entry(parent, name, false, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove_entry(parent, name, true, reply);
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes();
        match self.create_entry(parent, link_name, Kind::Symlink, 0o777, target) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self.live().and_then(|mut s| {
            s.model
                .rename((parent.0, name), (newparent.0, newname), no_replace)
                .map_err(errno)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = self.live().and_then(|mut s| {
            s.model.node(ino.0).map_err(errno)?;
            if flags.0 & libc::O_TRUNC != 0 {
                s.model.resize(ino.0, 0).map_err(errno)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        match self.live() {
            Ok(shared) => match shared.model.read(ino.0, offset, size) {
                Ok(bytes) => reply.data(bytes),
                Err(e) => reply.error(errno(e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        match self
            .live()
            .and_then(|mut s| s.model.write(ino.0, offset, data).map_err(errno))
        {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.sync(ino, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let shared = match self.live() {
            Ok(shared) => shared,
            Err(e) => return reply.error(e),
        };
        let node = match shared.model.node(ino.0) {
            Ok(node) if node.kind == Kind::Dir => node,
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(errno(e)),
        };
        let mut entries: Vec<(u64, FileType, &OsStr)> = vec![
            (ino.0, FileType::Directory, OsStr::new(".")),
            (ino.0, FileType::Directory, OsStr::new("..")),
        ];
        for (name, child) in &node.children {
            let kind = match shared.model.node(*child).map(|n| n.kind) {
                Ok(Kind::Dir) => FileType::Directory,
                Ok(Kind::Symlink) => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            entries.push((*child, kind, name.as_os_str()));
        }
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.sync(ino, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // A large, empty disk: the appliance's free-space floors must not trip.
        let blocks = 64 << 20;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.create_entry(parent, name, Kind::File, mode & !umask, &[]) {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        let result = self.live().and_then(|mut s| {
            let size = s.model.node(ino.0).map_err(errno)?.data.len() as u64;
            let end = offset.saturating_add(length);
            if end > size {
                s.model.resize(ino.0, end).map_err(errno)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
