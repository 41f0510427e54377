//! The systemd units of the image, checked by systemd's own tools: `systemd-analyze verify`
//! (syntax, directives this systemd knows) and `systemd-analyze security --offline` (the
//! exposure score of the sandbox, held under a threshold), on copies whose ExecStart points at
//! a binary that exists here.

use std::path::{Path, PathBuf};
use std::process::Command;

fn unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A copy of the unit in `dir` with its binaries replaced by /usr/bin/true.
fn runnable_copy(dir: &Path, name: &str) -> PathBuf {
    let text = unit(name)
        .replace("/opt/radiant-edge/current/bin/appliance", "/usr/bin/true")
        .replace("/opt/radiant-edge/current/bin/updater", "/usr/bin/true");
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn analyze(args: &[&str], unit: &Path) -> (bool, String) {
    analyze_together(args, &[unit])
}

/// `systemd-analyze ARGS UNITS...`: whether it succeeded, and what it said.
fn analyze_together(args: &[&str], units: &[&Path]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .args(units)
        .output()
        .expect("systemd-analyze (the systemd package; scripts/setup.sh installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn the_units_verify_and_their_sandbox_exposure_stays_low() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "radiant-edge.service",
        "radiant-updater.service",
        "radiant-edge-models.service",
    ] {
        let copy = runnable_copy(dir.path(), name);
        let (ok, said) = analyze(&["verify"], &copy);
        assert!(ok && said.trim().is_empty(), "{name}: {said}");
        // systemd's scale: 0 (locked down) to 10 (exposed); below 2 reads "OK".
        let (ok, said) = analyze(&["security", "--offline=yes", "--threshold=20"], &copy);
        assert!(ok, "{name}: exposure above 2.0:\n{said}");
    }
}

#[test]
fn the_model_timer_starts_the_model_service_daily() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("radiant-edge-models.timer"),
        unit("radiant-edge-models.timer"),
    )
    .unwrap();
    let service = runnable_copy(dir.path(), "radiant-edge-models.service");
    let timer = dir.path().join("radiant-edge-models.timer");
    let (ok, said) = analyze_together(&["verify"], &[&timer, &service]);
    assert!(ok && said.trim().is_empty(), "{said}");
    assert!(unit("radiant-edge-models.timer").contains("OnCalendar=daily"));
    assert!(unit("radiant-edge-models.service").contains("updater models --config"));
}

#[test]
fn the_restart_path_unit_watches_the_file_the_updater_writes_and_restarts_the_appliance() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["radiant-edge-restart.path", "radiant-edge-restart.service"] {
        std::fs::write(dir.path().join(name), unit(name)).unwrap();
    }
    // Verified together, so the path unit's Unit= resolves.
    let (_, said) = analyze_together(
        &["verify"],
        &[
            &dir.path().join("radiant-edge-restart.path"),
            &dir.path().join("radiant-edge-restart.service"),
        ],
    );
    // radiant-edge.service is not installed in this check; nothing else may be reported.
    let problems: Vec<&str> = said
        .lines()
        .filter(|l| !l.contains("radiant-edge.service"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(problems.is_empty(), "{said}");
    assert!(unit("radiant-edge-restart.path")
        .contains("PathChanged=/var/lib/radiant-edge/update/restart-appliance"));
    assert!(unit("radiant-edge-restart.service")
        .contains("ExecStart=/bin/systemctl restart radiant-edge.service"));
    // The appliance unit counts boots before anything else starts.
    let appliance = unit("radiant-edge.service");
    let first_pre = appliance
        .lines()
        .find(|l| l.starts_with("ExecStartPre="))
        .unwrap();
    assert!(first_pre.contains("updater boot"), "{first_pre}");
}

#[test]
fn the_appliance_unit_is_a_watched_notify_service_with_one_capability_and_one_writable_folder() {
    let text = unit("radiant-edge.service");
    let directives: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for wanted in [
        "Type=notify",
        "WatchdogSec=30",
        "User=radiant-edge",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/radiant-edge",
        "PrivateTmp=true",
        "NoNewPrivileges=true",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "MemoryMax=12G",
    ] {
        assert!(
            directives.contains(&wanted),
            "radiant-edge.service lacks {wanted}"
        );
    }
    assert_eq!(
        directives
            .iter()
            .filter(|d| d.starts_with("ReadWritePaths="))
            .count(),
        1
    );
}
