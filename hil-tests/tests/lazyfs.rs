//! The lazy file system through the kernel: real system calls on the mount, then a power cut,
//! then what is left on the backing folder. The persistence model's own cases are unit tests
//! in `hil_tests::lazyfs::model`.

use hil_tests::lazyfs::model::CutOptions;
use hil_tests::lazyfs::LazyFs;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

fn mounted() -> (tempfile::TempDir, LazyFs) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("disk")).unwrap();
    std::fs::create_dir(dir.path().join("mnt")).unwrap();
    let fs = LazyFs::mount(&dir.path().join("disk"), &dir.path().join("mnt")).unwrap();
    (dir, fs)
}

fn fsync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

#[test]
fn only_what_was_synced_survives_a_power_cut() {
    let (dir, fs) = mounted();
    let mnt = fs.mountpoint().to_path_buf();
    std::fs::create_dir(mnt.join("spool")).unwrap();
    fsync_dir(&mnt);
    // durable: written, fsync'd, directory fsync'd.
    let mut f = File::create(mnt.join("spool/durable")).unwrap();
    f.write_all(b"kept").unwrap();
    f.sync_data().unwrap();
    fsync_dir(&mnt.join("spool"));
    // Data written after the sync, and a file whose name was never synced (the root is not
    // synced again below; the spool folder is, which persists all of its entries).
    f.write_all(b" and lost").unwrap();
    let mut g = File::create(mnt.join("unnamed")).unwrap();
    g.write_all(b"synced data, unsynced name").unwrap();
    g.sync_all().unwrap();
    // Atomic replace, synced: the new content wins.
    std::fs::write(mnt.join("spool/config"), b"old").unwrap();
    fsync_dir(&mnt.join("spool"));
    std::fs::write(mnt.join("spool/config.tmp"), b"new").unwrap();
    File::open(mnt.join("spool/config.tmp"))
        .unwrap()
        .sync_data()
        .unwrap();
    std::fs::rename(mnt.join("spool/config.tmp"), mnt.join("spool/config")).unwrap();
    fsync_dir(&mnt.join("spool"));
    // Seen in full through the mount before the cut.
    assert_eq!(
        std::fs::read(mnt.join("spool/durable")).unwrap(),
        b"kept and lost"
    );
    assert_eq!(fs.syncs(), 7);
    drop((f, g));

    fs.power_cut(CutOptions::default(), 1).unwrap();
    let disk = dir.path().join("disk/spool");
    assert_eq!(std::fs::read(disk.join("durable")).unwrap(), b"kept");
    assert!(!dir.path().join("disk/unnamed").exists());
    assert_eq!(std::fs::read(disk.join("config")).unwrap(), b"new");
    assert!(!disk.join("config.tmp").exists());
}

#[test]
fn a_clean_unmount_keeps_everything_and_a_remount_sees_it() {
    let (dir, fs) = mounted();
    let mnt = fs.mountpoint().to_path_buf();
    std::fs::create_dir_all(mnt.join("a/b")).unwrap();
    std::fs::write(mnt.join("a/b/file"), b"unsynced").unwrap();
    std::os::unix::fs::symlink("b", mnt.join("a/link")).unwrap();
    fs.unmount().unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("disk/a/b/file")).unwrap(),
        b"unsynced"
    );

    let fs = LazyFs::mount(&dir.path().join("disk"), &dir.path().join("mnt")).unwrap();
    assert_eq!(std::fs::read(mnt.join("a/link/file")).unwrap(), b"unsynced");
    let names: Vec<_> = std::fs::read_dir(mnt.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // What was loaded counts as durable.
    fs.power_cut(CutOptions::default(), 1).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("disk/a/b/file")).unwrap(),
        b"unsynced"
    );
}

#[test]
fn an_armed_cut_freezes_right_after_its_sync() {
    let (dir, fs) = mounted();
    let mnt = fs.mountpoint().to_path_buf();
    fs.cut_after_sync(2);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(mnt.join("log"))
        .unwrap();
    f.write_all(b"one\n").unwrap();
    f.sync_data().unwrap();
    fsync_dir(&mnt);
    assert!(fs.frozen());
    // The machine has stopped: nothing more gets through.
    assert!(f.write_all(b"two\n").is_err());
    assert!(std::fs::read(mnt.join("log")).is_err());
    drop(f);
    fs.power_cut(CutOptions::default(), 1).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("disk/log")).unwrap(),
        b"one\n"
    );
}

/// SQLite in WAL mode, as the appliance runs it: every transaction whose COMMIT returned before
/// the cut is there afterwards, and the database passes its integrity check, wherever the cut
/// falls and whatever the disk reorders or tears.
#[test]
fn sqlite_keeps_every_commit_across_power_cuts() {
    for (k, seed) in [(1u64, 11u64), (3, 12), (6, 13), (9, 14), (14, 15), (21, 16)] {
        let (dir, fs) = mounted();
        let mnt = fs.mountpoint().to_path_buf();
        fs.cut_after_sync(k);
        let mut committed = 0;
        if let Ok(db) = rusqlite::Connection::open(mnt.join("db.sqlite")) {
            let setup = db
                .execute_batch(
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
                     CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, payload BLOB);",
                )
                .is_ok();
            // The database file's own name becomes durable with its folder.
            let named = setup && File::open(&mnt).and_then(|d| d.sync_all()).is_ok();
            for n in 1..=20 {
                if !named {
                    break;
                }
                let payload = vec![n as u8; 3000];
                if db
                    .execute(
                        "INSERT INTO t VALUES (?1, ?2)",
                        rusqlite::params![n, payload],
                    )
                    .is_err()
                {
                    break;
                }
                committed = n;
            }
        }
        assert!(fs.frozen(), "cut point {k} was never reached");
        let options = CutOptions {
            reorder_dirs: true,
            tear: true,
        };
        fs.power_cut(options, seed).unwrap();
        let path = dir.path().join("disk/db.sqlite");
        if committed == 0 {
            continue;
        }
        let db = rusqlite::Connection::open(&path).unwrap();
        let check: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "cut after sync {k}");
        let rows: i64 = db
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert!(
            rows >= committed,
            "cut after sync {k}: {committed} commits returned, {rows} rows survived"
        );
    }
}
