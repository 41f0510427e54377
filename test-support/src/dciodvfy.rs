//! dicom3tools' `dciodvfy`: checks a DICOM file against its IOD (PS3.3) and the value
//! representations (PS3.5). Always `/usr/bin/dciodvfy` (Debian's `dicom3tools`), never
//! whatever `PATH` finds.
//!
//! It prints its findings on stderr, one per line, either at the start of the line
//! (`Error - Missing attribute ...`) or after the element it is about
//! (`(0x0018,0x0050) DS ... - Error - ...`); it stops with `Abort - ...` when it cannot read
//! the file at all; it exits 1 when it found an error. A file is valid when it exits 0 and
//! reports no error or abort line; warnings are printed for the test log only.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

pub const DCIODVFY: &str = "/usr/bin/dciodvfy";

/// What `dciodvfy` said about one file.
#[derive(Debug)]
pub struct Report {
    pub path: PathBuf,
    pub status: ExitStatus,
    /// Lines reporting an error or an abort, in the order printed.
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// Everything it printed, stdout then stderr.
    pub output: String,
}

impl Report {
    /// Exit status 0 and no error line.
    pub fn is_valid(&self) -> bool {
        self.status.success() && self.errors.is_empty()
    }
}

/// Whether a line of dciodvfy's output reports an error (or an abort: the file could not be
/// read), wherever on the line the severity stands.
pub fn is_error_line(line: &str) -> bool {
    let line = line.trim_start();
    ["Error", "Abort"]
        .iter()
        .any(|s| line.starts_with(s) || line.contains(&format!(" - {s} - ")))
}

fn is_warning_line(line: &str) -> bool {
    let line = line.trim_start();
    line.starts_with("Warning") || line.contains(" - Warning - ")
}

/// Run `/usr/bin/dciodvfy` on `path`; warnings are printed to stderr for the test log.
pub fn run(path: &Path) -> Report {
    let out = Command::new(DCIODVFY)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("run {DCIODVFY} (apt-get install dicom3tools): {e}"));
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let errors: Vec<String> = output
        .lines()
        .filter(|l| is_error_line(l))
        .map(String::from)
        .collect();
    let warnings: Vec<String> = output
        .lines()
        .filter(|l| !is_error_line(l) && is_warning_line(l))
        .map(String::from)
        .collect();
    if !warnings.is_empty() {
        eprintln!(
            "dciodvfy warnings for {}:\n{}",
            path.display(),
            warnings.join("\n")
        );
    }
    Report {
        path: path.to_path_buf(),
        status: out.status,
        errors,
        warnings,
        output,
    }
}

/// Panic, listing every error line (or the whole output when only the exit status says
/// something is wrong), unless `dciodvfy` finds `path` valid.
pub fn assert_valid(path: &Path) {
    let report = run(path);
    assert!(
        report.errors.is_empty(),
        "dciodvfy finds {} error(s) in {} ({}):\n{}",
        report.errors.len(),
        path.display(),
        report.status,
        report.errors.join("\n")
    );
    assert!(
        report.status.success(),
        "dciodvfy {} on {} without an error line; its output:\n{}",
        report.status,
        path.display(),
        report.output
    );
}

/// [`assert_valid`] for bytes not on disk (`name` says what they are in the message).
pub fn assert_valid_bytes(bytes: &[u8], name: &str) {
    let dir = tempfile::tempdir().expect("temporary directory for dciodvfy");
    let path = dir
        .path()
        .join(format!("{}.dcm", name.replace(['/', ' '], "_")));
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    assert_valid(&path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_recognised_at_the_start_of_a_line_and_after_an_element() {
        assert!(is_error_line(
            "Error - Missing attribute Type 1 Required Element=<PixelSpacing> Module=<ImagePlane>"
        ));
        assert!(is_error_line(
            "(0x6167,0x6272)  ?  - Error - Bad Value Length - not a multiple of 2"
        ));
        assert!(is_error_line("Abort - File open for read failed - \"/x\""));
        assert!(!is_error_line(
            "Warning - Missing attribute or value that would be needed to build DICOMDIR - Modality"
        ));
        assert!(!is_error_line("CTImage"));
    }

    #[test]
    fn a_file_dciodvfy_cannot_read_is_invalid_with_its_error_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.dcm");
        std::fs::write(&path, b"garbage\n").unwrap();
        let report = run(&path);
        assert!(!report.is_valid());
        assert!(!report.status.success(), "{}", report.output);
        assert!(!report.errors.is_empty(), "{}", report.output);
    }

    #[test]
    #[should_panic(expected = "error(s) in")]
    fn assert_valid_fails_on_a_missing_file() {
        assert_valid(Path::new("/nonexistent/file.dcm"));
    }

    #[test]
    fn the_ct_fixture_slice_is_valid() {
        assert_valid(&crate::fixtures::ct_series()[0]);
    }
}
