//! The operator's commands, run as the built binary.

use std::process::Command;

fn appliance(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_appliance"))
        .args(args)
        .output()
        .expect("run the appliance binary")
}

#[test]
fn check_config_accepts_the_documented_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../image/etc/appliance.toml");
    let out = appliance(&["check-config", "--config", example]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

#[test]
fn check_config_explains_each_problem_by_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "data_dir = \"d\"\n[dicom]\nae_title = \"\"\nport = 11112\nmax_associations = 0\n[http]\nbind = \"localhost\"\n",
    )
    .unwrap();
    let out = appliance(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "dicom.ae_title",
        "dicom.max_associations",
        "dicom.peers",
        "http.bind",
    ] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
}

#[test]
fn check_config_reports_toml_syntax_errors_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, "data_dir = \"d\"\n[dicom\nport = 1\n").unwrap();
    let out = appliance(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
}

#[test]
fn studies_list_before_the_daemon_ever_ran_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = appliance(&[
        "studies",
        "list",
        "--json",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has not run"));
}
