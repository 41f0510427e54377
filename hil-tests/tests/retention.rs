//! Retention on the real daemon: a steady stream of studies into a small file system (a
//! loop-mounted ext4 image, never the host's disk) keeps the spool between the watermarks, and
//! no instance of a protected or unfinished study is lost; the CLI's dry run shows what an
//! operator's purge then takes.

use hil_tests::appliance::{set, Appliance};
use hil_tests::fixtures::CtSeries;
use hil_tests::peers::storescu;
use hil_tests::wait_until;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// An ext4 file system in an image file, loop-mounted for one test and unmounted after.
struct SmallFs {
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

impl SmallFs {
    /// `None` (with the reason on stderr) where loop mounts are not possible here.
    fn mount(mib: u64) -> Option<SmallFs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("fs.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).expect("mount point");
        let file = std::fs::File::create(&image).expect("image file");
        file.set_len(mib << 20).expect("size the image");
        drop(file);
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image)
            .output()
            .expect("run mkfs.ext4");
        assert!(
            mkfs.status.success(),
            "{}",
            String::from_utf8_lossy(&mkfs.stderr)
        );
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount)
            .output()
            .expect("run mount");
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot loop-mount a test file system here (root and /dev/loop* needed): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(SmallFs { _dir: dir, mount })
    }

    fn used_percent(&self) -> f64 {
        pacs_bridge::store::fs_usage(&self.mount)
            .expect("statvfs of the test file system")
            .used_percent()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mount)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}

/// `count` slices of the fixture CT series as a study of its own: new Study and Series
/// Instance UIDs, new SOP Instance UIDs (DCMTK `dcmodify`), in `dir`.

fn send(app: &Appliance, calling_ae: &str, files: &[PathBuf]) {
    let out = storescu(calling_ae, &app.ae_title, app.port, &[], files);
    assert!(
        out.status.success(),
        "storescu failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn spool_files_of(app: &Appliance, study: &str) -> usize {
    std::fs::read_dir(app.data_dir.join("spool").join(study)).map_or(0, |d| d.count())
}

fn cli_ok(app: &Appliance, args: &[&str]) -> String {
    let out = app.cli(args);
    assert!(
        out.status.success(),
        "appliance {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const HIGH: f64 = 60.0;
const LOW: f64 = 40.0;

#[test]
fn a_steady_stream_into_a_small_disk_stays_between_the_watermarks_and_keeps_protected_and_unfinished_studies(
) {
    let Some(fs) = SmallFs::mount(64) else {
        return;
    };
    let data_dir = fs.mount.join("data");
    let mut app = Appliance::start(&|c| {
        c.insert(
            "data_dir".into(),
            data_dir.to_string_lossy().as_ref().into(),
        );
        set(c, "retention", "max_age_hours", 0.0);
        set(c, "retention", "high_watermark_percent", HIGH);
        set(c, "retention", "low_watermark_percent", LOW);
        set(c, "retention", "grace_seconds", 1i64);
        set(c, "retention", "interval_seconds", 1i64);
        // A sender whose studies stay open: its study is "still receiving" all along.
        let peers = c
            .get_mut("dicom")
            .and_then(|d| d.as_table_mut())
            .and_then(|d| d.get_mut("peers"))
            .and_then(|p| p.as_array_mut())
            .expect("dicom.peers");
        let mut slow = toml::Table::new();
        slow.insert("ae_title".into(), "SLOW".into());
        slow.insert("host".into(), "127.0.0.1".into());
        slow.insert("study_quiet_seconds".into(), 3600i64.into());
        peers.push(toml::Value::Table(slow));
    });
    app.data_dir = data_dir.clone();
    let series = CtSeries::load();
    let work = tempfile::tempdir().expect("temp dir");
    const SLICES: usize = 12;

    // Protected before it arrives; and one study that never completes.
    let (protected, protected_files) =
        hil_tests::fixtures::new_study(&series, SLICES, work.path(), 0);
    let said = cli_ok(&app, &["studies", "protect", &protected, "--json"]);
    assert!(said.contains("\"in_spool\":false"), "{said}");
    send(&app, "STORESCU", &protected_files);
    let (open, open_files) = hil_tests::fixtures::new_study(&series, SLICES, work.path(), 1);
    send(&app, "SLOW", &open_files);

    let mut streamed = Vec::new();
    let mut max_used = 0.0f64;
    let started = Instant::now();
    for n in 2..52 {
        let (study, files) = hil_tests::fixtures::new_study(&series, SLICES, work.path(), n);
        send(&app, "STORESCU", &files);
        streamed.push(study);
        std::thread::sleep(Duration::from_millis(1200));
        max_used = max_used.max(fs.used_percent());
        std::fs::remove_dir_all(work.path().join(format!("study-{n}"))).ok();
    }
    // Let the last studies complete and retention settle.
    std::thread::sleep(Duration::from_secs(6));
    let settled = fs.used_percent();
    let streamed_mib = 50.0 * (SLICES as f64) * 132_584.0 / f64::from(1 << 20);
    eprintln!(
        "retention: {:.0} MiB streamed in {:.0} s into 64 MiB; disk used at most {max_used:.1}%, \
         {settled:.1}% after settling (watermarks {LOW}%..{HIGH}%)",
        streamed_mib,
        started.elapsed().as_secs_f64()
    );

    // More than the disk holds went through, so retention purged; the disk never filled
    // beyond the studies still in their grace period, and ended between the watermarks.
    let purged = app.expect_metric("radiant_retention_studies_purged_total{reason=\"watermark\"}");
    assert!(purged >= 10.0, "purged {purged}");
    assert!(max_used < HIGH + 10.0, "disk used up to {max_used:.1}%");
    assert!(
        (LOW - 5.0..=HIGH).contains(&settled),
        "disk used {settled:.1}% after settling"
    );
    assert!(app.expect_metric("radiant_disk_used_percent") > 0.0);
    assert_eq!(
        app.expect_metric("radiant_retention_high_watermark_percent"),
        HIGH
    );
    assert!(app.expect_metric("radiant_retention_freed_bytes_total") > 0.0);
    assert!(app.expect_metric("radiant_retention_last_purge_timestamp_seconds") > 0.0);

    // The protected and the unfinished study keep every instance, in the index and on disk.
    let studies = app.studies();
    for (study, files, state) in [
        (&protected, &protected_files, "complete"),
        (&open, &open_files, "receiving"),
    ] {
        let row = studies
            .iter()
            .find(|s| s["study_uid"] == study.as_str())
            .unwrap_or_else(|| panic!("study {study} is gone: {studies:?}"));
        assert_eq!(row["instances"], SLICES, "{row}");
        assert_eq!(row["state"], state, "{row}");
        assert_eq!(spool_files_of(&app, study), SLICES);
        assert_eq!(files.len(), SLICES);
    }
    // Every purged study is gone from the index and the disk; the count matches /metrics.
    let listed: Vec<&str> = studies
        .iter()
        .filter_map(|s| s["study_uid"].as_str())
        .collect();
    let gone: Vec<&String> = streamed
        .iter()
        .filter(|s| !listed.contains(&s.as_str()))
        .collect();
    assert_eq!(gone.len() as f64, purged);
    for study in &gone {
        assert_eq!(
            spool_files_of(&app, study),
            0,
            "files of purged {study} remain"
        );
    }
    // Logged with the hashed tag, never the UID.
    let log = app.log();
    assert!(log.contains("study purged from the spool"));
    assert!(log.contains(&radiant_core::log_tag(gone[0])));
    for study in gone.iter().take(5) {
        assert!(!log.contains(study.as_str()), "log names {study} in clear");
    }
    app.terminate(Duration::from_secs(15));
}

#[test]
fn a_dry_run_shows_what_an_operator_purge_then_takes_and_a_protected_study_stays() {
    let app = Appliance::start(&|c| {
        // Only the CLI purges here: the daemon's round runs at start, then waits an hour.
        set(c, "retention", "interval_seconds", 3600i64);
        set(c, "retention", "max_age_hours", 0.0005);
        set(c, "retention", "grace_seconds", 0i64);
        set(c, "retention", "high_watermark_percent", 99.0);
        set(c, "retention", "low_watermark_percent", 98.0);
    });
    let series = CtSeries::load();
    let work = tempfile::tempdir().expect("temp dir");
    let (old, old_files) = hil_tests::fixtures::new_study(&series, 4, work.path(), 0);
    let (kept, kept_files) = hil_tests::fixtures::new_study(&series, 4, work.path(), 1);
    send(&app, "STORESCU", &old_files);
    send(&app, "STORESCU", &kept_files);
    assert!(wait_until(Duration::from_secs(20), || {
        let s = app.studies();
        s.len() == 2 && s.iter().all(|s| s["state"] == "complete")
    }));
    let said = cli_ok(&app, &["studies", "protect", &kept]);
    assert!(said.contains("protected"), "{said}");
    // Past max_age (1.8 s) after completion.
    std::thread::sleep(Duration::from_secs(3));

    let dry = cli_ok(&app, &["studies", "purge", "--dry-run", "--json"]);
    let lines: Vec<serde_json::Value> = dry
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{dry}");
    assert_eq!(lines[0]["study_uid"], old.as_str());
    assert_eq!(lines[0]["reason"], "age");
    assert_eq!(lines[0]["instances"], 4);
    assert_eq!(spool_files_of(&app, &old), 4, "a dry run deletes nothing");

    let done = cli_ok(&app, &["studies", "purge"]);
    assert!(done.contains(&format!("purged {old}")), "{done}");
    assert_eq!(spool_files_of(&app, &old), 0);
    assert_eq!(spool_files_of(&app, &kept), 4);
    let listed: Vec<serde_json::Value> = app.studies();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["study_uid"], kept.as_str());
    // Lifting the protection lets the next purge take it.
    cli_ok(&app, &["studies", "unprotect", &kept]);
    let done = cli_ok(&app, &["studies", "purge", "--all", "--json"]);
    assert!(done.contains(&kept), "{done}");
    assert!(done.contains("\"reason\":\"operator\""), "{done}");
    assert_eq!(spool_files_of(&app, &kept), 0);
    // The same instances sent again are a new study the appliance takes as usual.
    send(&app, "STORESCU", &old_files);
    assert_eq!(spool_files_of(&app, &old), 4);
}
