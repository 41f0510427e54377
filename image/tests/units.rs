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
        .replace("/usr/bin/appliance", "/usr/bin/true")
        .replace("/usr/bin/updater", "/usr/bin/true");
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
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
    for name in ["radiant-edge.service", "radiant-updater.service"] {
        let copy = runnable_copy(dir.path(), name);
        let (ok, said) = analyze(&["verify"], &copy);
        assert!(ok && said.trim().is_empty(), "{name}: {said}");
        // systemd's scale: 0 (locked down) to 10 (exposed); below 2 reads "OK".
        let (ok, said) = analyze(&["security", "--offline=yes", "--threshold=20"], &copy);
        assert!(ok, "{name}: exposure above 2.0:\n{said}");
    }
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
