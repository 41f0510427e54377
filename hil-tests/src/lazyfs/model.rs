//! The persistence model of the lazy file system, free of FUSE so it can be tested directly.
//!
//! Two states are kept side by side. The *current* state is what processes see: every write,
//! truncate, create, rename and unlink takes effect in it at once. The *durable* state is what a
//! disk would hold after a power cut:
//!
//! - **File data** (content and size) becomes durable only by `fsync` or `fdatasync` of that
//!   file; both make the whole current content durable. Writes since the last sync are kept, in
//!   order, for tearing.
//! - **Directory entries** (create, mkdir, symlink, unlink, rmdir, rename) are logged as pending
//!   operations. `fsync` of a directory makes durable every pending operation that changes an
//!   entry of that directory, together with the earlier pending operations on the same entries
//!   (a rename is one operation: syncing either of its directories persists both halves). An
//!   `fsync` of a file never persists its name, and a directory's own entry in its parent is
//!   durable only when the parent is synced.
//! - **Mode bits** are durable at once; times are not modelled (every file reads as modified
//!   now).
//!
//! At a power cut the durable state is what survives, with two optional liberties a real disk
//! takes: a random subset of the pending directory operations is applied (in log order, and an
//! operation only when every earlier pending operation on one of its entries was applied too),
//! and the most recent unsynced write is torn: the file's earlier unsynced writes land whole and
//! that write lands up to a random 512-byte sector boundary. Anything unreachable from the root
//! in the durable state (a file whose name never became durable) is gone.

use radiant_core::rng::SplitMix64;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

pub type Ino = u64;
/// The root directory's inode number (FUSE's).
pub const ROOT: Ino = 1;
/// Writes tear at this granularity.
pub const SECTOR: u64 = 512;

/// An errno for the FUSE reply.
pub type Errno = i32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone)]
enum DataOp {
    Write { offset: u64, bytes: Vec<u8> },
    Resize(u64),
}

#[derive(Debug)]
pub struct Node {
    pub kind: Kind,
    pub mode: u32,
    /// File: current content. Symlink: the target.
    pub data: Vec<u8>,
    /// File: content as of its last sync.
    durable: Vec<u8>,
    /// File: data operations since its last sync, oldest first, with their sequence numbers.
    pending: Vec<(u64, DataOp)>,
    /// Directory: current entries.
    pub children: BTreeMap<OsString, Ino>,
}

impl Node {
    fn new(kind: Kind, mode: u32, data: Vec<u8>) -> Node {
        Node {
            kind,
            mode,
            durable: if kind == Kind::File {
                Vec::new()
            } else {
                data.clone()
            },
            data,
            pending: Vec::new(),
            children: BTreeMap::new(),
        }
    }
}

/// A directory entry: (directory inode, name).
type Entry = (Ino, OsString);

#[derive(Debug, Clone)]
enum DirOp {
    Insert { at: Entry, ino: Ino },
    Remove { at: Entry },
    Rename { from: Entry, to: Entry, ino: Ino },
}

impl DirOp {
    fn entries(&self) -> Vec<&Entry> {
        match self {
            DirOp::Insert { at, .. } | DirOp::Remove { at } => vec![at],
            DirOp::Rename { from, to, .. } => vec![from, to],
        }
    }

    fn touches_dir(&self, dir: Ino) -> bool {
        self.entries().iter().any(|(d, _)| *d == dir)
    }
}

/// What a power cut may do beyond dropping everything unsynced.
#[derive(Debug, Clone, Copy, Default)]
pub struct CutOptions {
    /// Apply a random legal subset of the pending directory operations.
    pub reorder_dirs: bool,
    /// Tear the most recent unsynced write at a sector boundary.
    pub tear: bool,
}

/// What a power cut dropped, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutSummary {
    /// Pending directory operations at the cut, and how many of them were applied.
    pub dir_ops_pending: usize,
    pub dir_ops_applied: usize,
    /// Files with unsynced data at the cut.
    pub files_unsynced: usize,
    /// The torn write: bytes of it that landed, of its length.
    pub torn: Option<(u64, u64)>,
}

/// Both states of the file system, and the sync counter power cuts are placed by.
#[derive(Debug)]
pub struct Model {
    nodes: HashMap<Ino, Node>,
    durable_dirs: HashMap<Ino, BTreeMap<OsString, Ino>>,
    pending_dirs: Vec<DirOp>,
    /// Each inode's last known name, for naming syncs.
    names: HashMap<Ino, Entry>,
    next_ino: Ino,
    next_seq: u64,
    syncs: u64,
}

impl Model {
    /// A model whose current and durable states are both the tree at `root`.
    pub fn load(root: &Path) -> io::Result<Model> {
        let mut model = Model {
            nodes: HashMap::new(),
            durable_dirs: HashMap::new(),
            pending_dirs: Vec::new(),
            names: HashMap::new(),
            next_ino: ROOT + 1,
            next_seq: 0,
            syncs: 0,
        };
        let mode = std::fs::metadata(root)?.permissions().mode() & 0o7777;
        model
            .nodes
            .insert(ROOT, Node::new(Kind::Dir, mode, Vec::new()));
        model.durable_dirs.insert(ROOT, BTreeMap::new());
        model.load_dir(root, ROOT)?;
        Ok(model)
    }

    fn load_dir(&mut self, path: &Path, ino: Ino) -> io::Result<()> {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let meta = entry.path().symlink_metadata()?;
            let mode = meta.permissions().mode() & 0o7777;
            let child = self.next_ino;
            self.next_ino += 1;
            let node = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                Node::new(Kind::Symlink, mode, target.as_os_str().as_bytes().to_vec())
            } else if meta.is_dir() {
                Node::new(Kind::Dir, mode, Vec::new())
            } else if meta.is_file() {
                let mut node = Node::new(Kind::File, mode, std::fs::read(entry.path())?);
                node.durable = node.data.clone();
                node
            } else {
                return Err(io::Error::other(format!(
                    "{}: only files, directories and symlinks are modelled",
                    entry.path().display()
                )));
            };
            let is_dir = node.kind == Kind::Dir;
            self.nodes.insert(child, node);
            self.names.insert(child, (ino, entry.file_name()));
            self.node_mut(ino)?
                .children
                .insert(entry.file_name(), child);
            self.durable_dirs
                .entry(ino)
                .or_default()
                .insert(entry.file_name(), child);
            if is_dir {
                self.durable_dirs.insert(child, BTreeMap::new());
                self.load_dir(&entry.path(), child)?;
            }
        }
        Ok(())
    }

    fn node_mut(&mut self, ino: Ino) -> io::Result<&mut Node> {
        self.nodes
            .get_mut(&ino)
            .ok_or_else(|| io::Error::other(format!("inode {ino} is not in the model")))
    }

    pub fn node(&self, ino: Ino) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: Ino) -> Result<&Node, Errno> {
        let node = self.node(ino)?;
        if node.kind == Kind::Dir {
            Ok(node)
        } else {
            Err(libc::ENOTDIR)
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut Node, Errno> {
        let node = self.nodes.get_mut(&ino).ok_or(libc::ENOENT)?;
        match node.kind {
            Kind::File => Ok(node),
            Kind::Dir => Err(libc::EISDIR),
            Kind::Symlink => Err(libc::EINVAL),
        }
    }

    /// fsyncs and directory fsyncs so far: the clock power cuts are placed by.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Count a sync that is answered but does nothing (a disk that ignores it).
    pub fn count_ignored_sync(&mut self) {
        self.syncs += 1;
    }

    /// `ino`'s last known path below the root ("" for the root).
    pub fn path_of(&self, mut ino: Ino) -> std::path::PathBuf {
        let mut parts = Vec::new();
        while let Some((parent, name)) = self.names.get(&ino) {
            parts.push(name.clone());
            if parts.len() > 4096 {
                break;
            }
            ino = *parent;
        }
        parts.iter().rev().collect()
    }

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Ino, Errno> {
        self.dir(parent)?
            .children
            .get(name)
            .copied()
            .ok_or(libc::ENOENT)
    }

    /// Create `name` in `parent` (file, directory or symlink with `target`).
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        mode: u32,
        target: &[u8],
    ) -> Result<Ino, Errno> {
        if self.dir(parent)?.children.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes
            .insert(ino, Node::new(kind, mode & 0o7777, target.to_vec()));
        if kind == Kind::Dir {
            self.durable_dirs.insert(ino, BTreeMap::new());
        }
        if let Some(dir) = self.nodes.get_mut(&parent) {
            dir.children.insert(name.to_owned(), ino);
        }
        self.names.insert(ino, (parent, name.to_owned()));
        self.pending_dirs.push(DirOp::Insert {
            at: (parent, name.to_owned()),
            ino,
        });
        Ok(ino)
    }

    /// unlink (`dir` false) or rmdir (`dir` true).
    pub fn remove(&mut self, parent: Ino, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        let node = self.node(ino)?;
        match (dir, node.kind) {
            (true, Kind::Dir) if !node.children.is_empty() => return Err(libc::ENOTEMPTY),
            (true, Kind::Dir) | (false, Kind::File | Kind::Symlink) => {}
            (true, _) => return Err(libc::ENOTDIR),
            (false, Kind::Dir) => return Err(libc::EISDIR),
        }
        if let Some(d) = self.nodes.get_mut(&parent) {
            d.children.remove(name);
        }
        self.pending_dirs.push(DirOp::Remove {
            at: (parent, name.to_owned()),
        });
        Ok(())
    }

    /// rename(2), replacing what `to` names unless `no_replace`.
    pub fn rename(
        &mut self,
        from: (Ino, &OsStr),
        to: (Ino, &OsStr),
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(from.0, from.1)?;
        self.dir(to.0)?;
        if from.0 == to.0 && from.1 == to.1 {
            return Ok(());
        }
        let moving_dir = self.node(ino)?.kind == Kind::Dir;
        if let Ok(old) = self.lookup(to.0, to.1) {
            if no_replace {
                return Err(libc::EEXIST);
            }
            let old = self.node(old)?;
            match (moving_dir, old.kind == Kind::Dir) {
                (true, true) if !old.children.is_empty() => return Err(libc::ENOTEMPTY),
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                _ => {}
            }
        }
        if let Some(d) = self.nodes.get_mut(&from.0) {
            d.children.remove(from.1);
        }
        if let Some(d) = self.nodes.get_mut(&to.0) {
            d.children.insert(to.1.to_owned(), ino);
        }
        self.names.insert(ino, (to.0, to.1.to_owned()));
        self.pending_dirs.push(DirOp::Rename {
            from: (from.0, from.1.to_owned()),
            to: (to.0, to.1.to_owned()),
            ino,
        });
        Ok(())
    }

    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<&[u8], Errno> {
        let node = self.node(ino)?;
        if node.kind != Kind::File {
            return Err(libc::EISDIR);
        }
        let len = node.data.len() as u64;
        let start = offset.min(len) as usize;
        let end = offset.saturating_add(u64::from(size)).min(len) as usize;
        Ok(&node.data[start..end])
    }

    pub fn write(&mut self, ino: Ino, offset: u64, bytes: &[u8]) -> Result<u32, Errno> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let node = self.file_mut(ino)?;
        let end = offset
            .checked_add(bytes.len() as u64)
            .filter(|end| *end <= 1 << 36)
            .ok_or(libc::EFBIG)? as usize;
        if node.data.len() < end {
            node.data.resize(end, 0);
        }
        node.data[offset as usize..end].copy_from_slice(bytes);
        node.pending.push((
            seq,
            DataOp::Write {
                offset,
                bytes: bytes.to_vec(),
            },
        ));
        u32::try_from(bytes.len()).map_err(|_| libc::EINVAL)
    }

    /// truncate(2) or an extending fallocate.
    pub fn resize(&mut self, ino: Ino, size: u64) -> Result<(), Errno> {
        if size > 1 << 36 {
            return Err(libc::EFBIG);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let node = self.file_mut(ino)?;
        node.data.resize(size as usize, 0);
        node.pending.push((seq, DataOp::Resize(size)));
        Ok(())
    }

    pub fn chmod(&mut self, ino: Ino, mode: u32) -> Result<(), Errno> {
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)?.mode = mode & 0o7777;
        Ok(())
    }

    /// fsync or fdatasync of a file: its whole current content becomes durable.
    pub fn fsync_file(&mut self, ino: Ino) -> Result<(), Errno> {
        let node = self.nodes.get_mut(&ino).ok_or(libc::ENOENT)?;
        if node.kind == Kind::Dir {
            return self.fsync_dir(ino);
        }
        node.durable = node.data.clone();
        node.pending.clear();
        self.syncs += 1;
        Ok(())
    }

    /// fsync of a directory: every pending operation on its entries becomes durable, with the
    /// earlier pending operations on the same entries.
    pub fn fsync_dir(&mut self, ino: Ino) -> Result<(), Errno> {
        self.dir(ino)?;
        let mut entries: HashSet<Entry> = HashSet::new();
        let mut chosen = vec![false; self.pending_dirs.len()];
        for (i, op) in self.pending_dirs.iter().enumerate().rev() {
            if op.touches_dir(ino) || op.entries().iter().any(|e| entries.contains(*e)) {
                chosen[i] = true;
                entries.extend(op.entries().into_iter().cloned());
            }
        }
        let ops = std::mem::take(&mut self.pending_dirs);
        for (op, chosen) in ops.into_iter().zip(chosen) {
            if chosen {
                apply(&mut self.durable_dirs, &op);
            } else {
                self.pending_dirs.push(op);
            }
        }
        self.syncs += 1;
        Ok(())
    }

    /// sync(2): everything becomes durable (used to checkpoint a prepared state).
    pub fn sync_everything(&mut self) {
        for op in std::mem::take(&mut self.pending_dirs) {
            apply(&mut self.durable_dirs, &op);
        }
        for node in self.nodes.values_mut() {
            if node.kind == Kind::File {
                node.durable = node.data.clone();
                node.pending.clear();
            }
        }
    }

    /// Write the tree a power cut now would leave into `dest` (an empty directory).
    pub fn write_after_cut(
        &self,
        dest: &Path,
        options: CutOptions,
        rng: &mut SplitMix64,
    ) -> io::Result<CutSummary> {
        let mut dirs = self.durable_dirs.clone();
        let mut summary = CutSummary {
            dir_ops_pending: self.pending_dirs.len(),
            files_unsynced: self
                .nodes
                .values()
                .filter(|n| !n.pending.is_empty())
                .count(),
            ..CutSummary::default()
        };
        if options.reorder_dirs {
            let mut skipped: HashSet<&Entry> = HashSet::new();
            for op in &self.pending_dirs {
                let blocked = op.entries().iter().any(|e| skipped.contains(e));
                if !blocked && rng.below(2) == 0 {
                    apply(&mut dirs, op);
                    summary.dir_ops_applied += 1;
                } else {
                    skipped.extend(op.entries());
                }
            }
        }
        let mut contents: HashMap<Ino, Vec<u8>> = HashMap::new();
        if options.tear {
            let last = self
                .nodes
                .iter()
                .filter_map(|(ino, n)| n.pending.last().map(|(seq, _)| (*seq, *ino)))
                .max();
            if let Some((_, ino)) = last {
                let node = &self.nodes[&ino];
                let mut data = node.durable.clone();
                let (_, final_op) = &node.pending[node.pending.len() - 1];
                for (_, op) in &node.pending[..node.pending.len() - 1] {
                    replay(&mut data, op);
                }
                if let DataOp::Write { offset, bytes } = final_op {
                    let end = offset + bytes.len() as u64;
                    let first = offset / SECTOR + 1;
                    let boundaries: Vec<u64> = (first..)
                        .map(|s| s * SECTOR)
                        .take_while(|b| *b < end)
                        .collect();
                    let keep = if boundaries.is_empty() {
                        0
                    } else {
                        boundaries[rng.below(boundaries.len())] - offset
                    };
                    replay(
                        &mut data,
                        &DataOp::Write {
                            offset: *offset,
                            bytes: bytes[..keep as usize].to_vec(),
                        },
                    );
                    summary.torn = Some((keep, bytes.len() as u64));
                }
                contents.insert(ino, data);
            }
        }
        let mut visited = HashSet::new();
        self.write_dir(dest, ROOT, &dirs, &contents, &mut visited)?;
        Ok(summary)
    }

    /// Write the current state into `dest` (an empty directory): a clean unmount.
    pub fn write_current(&self, dest: &Path) -> io::Result<()> {
        let dirs: HashMap<Ino, BTreeMap<OsString, Ino>> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.kind == Kind::Dir)
            .map(|(ino, n)| (*ino, n.children.clone()))
            .collect();
        let contents = self
            .nodes
            .iter()
            .filter(|(_, n)| n.kind == Kind::File)
            .map(|(ino, n)| (*ino, n.data.clone()))
            .collect();
        self.write_dir(dest, ROOT, &dirs, &contents, &mut HashSet::new())
    }

    fn write_dir(
        &self,
        path: &Path,
        dir: Ino,
        dirs: &HashMap<Ino, BTreeMap<OsString, Ino>>,
        contents: &HashMap<Ino, Vec<u8>>,
        visited: &mut HashSet<Ino>,
    ) -> io::Result<()> {
        let Some(entries) = dirs.get(&dir) else {
            return Ok(());
        };
        for (name, ino) in entries {
            if !visited.insert(*ino) {
                continue;
            }
            let Some(node) = self.nodes.get(ino) else {
                continue;
            };
            let target = path.join(name);
            match node.kind {
                Kind::Dir => {
                    std::fs::create_dir(&target)?;
                    self.write_dir(&target, *ino, dirs, contents, visited)?;
                }
                Kind::File => {
                    let data = contents.get(ino).unwrap_or(&node.durable);
                    std::fs::write(&target, data)?;
                }
                Kind::Symlink => {
                    symlink(OsStr::from_bytes(&node.data), &target)?;
                    continue;
                }
            }
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(node.mode))?;
        }
        Ok(())
    }
}

fn apply(dirs: &mut HashMap<Ino, BTreeMap<OsString, Ino>>, op: &DirOp) {
    match op {
        DirOp::Insert { at, ino } => {
            dirs.entry(at.0).or_default().insert(at.1.clone(), *ino);
        }
        DirOp::Remove { at } => {
            if let Some(d) = dirs.get_mut(&at.0) {
                d.remove(&at.1);
            }
        }
        DirOp::Rename { from, to, ino } => {
            if let Some(d) = dirs.get_mut(&from.0) {
                d.remove(&from.1);
            }
            dirs.entry(to.0).or_default().insert(to.1.clone(), *ino);
        }
    }
}

fn replay(data: &mut Vec<u8>, op: &DataOp) {
    match op {
        DataOp::Write { offset, bytes } => {
            let end = *offset as usize + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[*offset as usize..end].copy_from_slice(bytes);
        }
        DataOp::Resize(size) => data.resize(*size as usize, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn empty() -> (tempfile::TempDir, Model) {
        let dir = tempfile::tempdir().unwrap();
        let model = Model::load(dir.path()).unwrap();
        (dir, model)
    }

    /// The tree a cut leaves, as sorted (path, content) pairs; directories end in '/'.
    fn after_cut(model: &Model, options: CutOptions, seed: u64) -> Vec<(String, Vec<u8>)> {
        let dest = tempfile::tempdir().unwrap();
        model
            .write_after_cut(dest.path(), options, &mut SplitMix64::new(seed))
            .unwrap();
        let mut out = Vec::new();
        list(dest.path(), dest.path(), &mut out);
        out.sort();
        out
    }

    fn list(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                out.push((format!("{rel}/"), Vec::new()));
                list(root, &path, out);
            } else {
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }

    fn file(path: &str, data: &[u8]) -> (String, Vec<u8>) {
        (path.to_string(), data.to_vec())
    }

    #[test]
    fn nothing_unsynced_survives() {
        let (_d, mut m) = empty();
        let f = m.create(ROOT, name("a"), Kind::File, 0o644, &[]).unwrap();
        m.write(f, 0, b"hello").unwrap();
        assert_eq!(after_cut(&m, CutOptions::default(), 1), vec![]);
    }

    #[test]
    fn a_file_fsync_keeps_data_but_not_the_name() {
        let (_d, mut m) = empty();
        let f = m.create(ROOT, name("a"), Kind::File, 0o644, &[]).unwrap();
        m.write(f, 0, b"hello").unwrap();
        m.fsync_file(f).unwrap();
        assert_eq!(after_cut(&m, CutOptions::default(), 1), vec![]);
        m.fsync_dir(ROOT).unwrap();
        assert_eq!(
            after_cut(&m, CutOptions::default(), 1),
            vec![file("a", b"hello")]
        );
        // Data written after the sync is lost again; the name stays.
        m.write(f, 5, b" world").unwrap();
        assert_eq!(
            after_cut(&m, CutOptions::default(), 1),
            vec![file("a", b"hello")]
        );
        assert_eq!(m.syncs(), 2);
    }

    #[test]
    fn a_synced_name_without_synced_data_is_an_empty_file() {
        let (_d, mut m) = empty();
        let f = m.create(ROOT, name("a"), Kind::File, 0o644, &[]).unwrap();
        m.write(f, 0, b"hello").unwrap();
        m.fsync_dir(ROOT).unwrap();
        assert_eq!(
            after_cut(&m, CutOptions::default(), 1),
            vec![file("a", b"")]
        );
    }

    #[test]
    fn a_directory_entry_needs_its_parent_synced() {
        let (_d, mut m) = empty();
        let sub = m.create(ROOT, name("sub"), Kind::Dir, 0o755, &[]).unwrap();
        let f = m.create(sub, name("a"), Kind::File, 0o644, &[]).unwrap();
        m.write(f, 0, b"x").unwrap();
        m.fsync_file(f).unwrap();
        m.fsync_dir(sub).unwrap();
        // sub's own entry in the root is not durable: the whole subtree is unreachable.
        assert_eq!(after_cut(&m, CutOptions::default(), 1), vec![]);
        m.fsync_dir(ROOT).unwrap();
        assert_eq!(
            after_cut(&m, CutOptions::default(), 1),
            vec![("sub/".to_string(), vec![]), file("sub/a", b"x")]
        );
    }

    #[test]
    fn write_fsync_rename_fsync_dir_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"old").unwrap();
        let mut m = Model::load(dir.path()).unwrap();
        let t = m
            .create(ROOT, name("a.tmp"), Kind::File, 0o644, &[])
            .unwrap();
        m.write(t, 0, b"new").unwrap();
        m.fsync_file(t).unwrap();
        m.rename((ROOT, name("a.tmp")), (ROOT, name("a")), false)
            .unwrap();
        // Before the directory sync, every legal outcome holds old or new whole, never a mix,
        // and never the temporary name with unsynced data.
        for seed in 0..64 {
            let options = CutOptions {
                reorder_dirs: true,
                tear: true,
            };
            let tree = after_cut(&m, options, seed);
            assert!(
                tree == vec![file("a", b"old")]
                    || tree == vec![file("a", b"new")]
                    || tree == vec![file("a", b"old"), file("a.tmp", b"new")],
                "seed {seed}: {tree:?}"
            );
        }
        m.fsync_dir(ROOT).unwrap();
        assert_eq!(
            after_cut(&m, CutOptions::default(), 1),
            vec![file("a", b"new")]
        );
    }

    #[test]
    fn reordering_applies_subsets_but_never_an_operation_before_its_entry_exists() {
        let (_d, mut m) = empty();
        let a = m.create(ROOT, name("a"), Kind::File, 0o644, &[]).unwrap();
        m.write(a, 0, b"A").unwrap();
        m.fsync_file(a).unwrap();
        m.rename((ROOT, name("a")), (ROOT, name("b")), false)
            .unwrap();
        let c = m.create(ROOT, name("c"), Kind::File, 0o644, &[]).unwrap();
        m.fsync_file(c).unwrap();
        let mut seen = HashSet::new();
        for seed in 0..200 {
            let options = CutOptions {
                reorder_dirs: true,
                tear: false,
            };
            let tree = after_cut(&m, options, seed);
            let names: Vec<&str> = tree.iter().map(|(p, _)| p.as_str()).collect();
            // "b" exists only if "a"'s creation was applied too (then renamed away).
            assert!(!(names.contains(&"a") && names.contains(&"b")), "{names:?}");
            seen.insert(names.join(","));
        }
        // All of: nothing, a, b, c, a+c, b+c.
        assert_eq!(seen.len(), 6, "{seen:?}");
    }

    #[test]
    fn the_last_unsynced_write_tears_at_a_sector_boundary() {
        let (_d, mut m) = empty();
        let f = m.create(ROOT, name("f"), Kind::File, 0o644, &[]).unwrap();
        m.write(f, 0, &[0u8; 4096]).unwrap();
        m.fsync_file(f).unwrap();
        m.fsync_dir(ROOT).unwrap();
        m.write(f, 100, &[1u8; 2000]).unwrap();
        let mut kept = HashSet::new();
        for seed in 0..100 {
            let options = CutOptions {
                reorder_dirs: false,
                tear: true,
            };
            let tree = after_cut(&m, options, seed);
            let data = &tree[0].1;
            assert_eq!(data.len(), 4096);
            let ones = data.iter().filter(|b| **b == 1).count();
            // Torn at 512, 1024, 1536 or 2048: the write's bytes before that boundary landed.
            assert!([412, 924, 1436, 1948].contains(&ones), "{ones}");
            assert!(data[100..100 + ones].iter().all(|b| *b == 1));
            kept.insert(ones);
        }
        assert_eq!(kept.len(), 4);
    }

    #[test]
    fn removals_and_directory_renames_follow_the_same_rules() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/x"), b"x").unwrap();
        let mut m = Model::load(dir.path()).unwrap();
        let d = m.lookup(ROOT, name("d")).unwrap();
        assert_eq!(m.remove(ROOT, name("d"), true), Err(libc::ENOTEMPTY));
        assert_eq!(m.remove(ROOT, name("d"), false), Err(libc::EISDIR));
        m.remove(d, name("x"), false).unwrap();
        m.fsync_dir(d).unwrap();
        m.rename((ROOT, name("d")), (ROOT, name("e")), false)
            .unwrap();
        assert_eq!(
            after_cut(&m, CutOptions::default(), 1),
            vec![("d/".to_string(), vec![])]
        );
        m.fsync_dir(ROOT).unwrap();
        assert_eq!(
            after_cut(&m, CutOptions::default(), 1),
            vec![("e/".to_string(), vec![])]
        );
    }

    #[test]
    fn a_clean_unmount_keeps_everything() {
        let (_d, mut m) = empty();
        let f = m.create(ROOT, name("a"), Kind::File, 0o600, &[]).unwrap();
        m.write(f, 0, b"kept").unwrap();
        m.create(ROOT, name("l"), Kind::Symlink, 0o777, b"a")
            .unwrap();
        let dest = tempfile::tempdir().unwrap();
        m.write_current(dest.path()).unwrap();
        assert_eq!(std::fs::read(dest.path().join("a")).unwrap(), b"kept");
        assert_eq!(std::fs::read(dest.path().join("l")).unwrap(), b"kept");
        let mode = std::fs::metadata(dest.path().join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
