//! DICOM UIDs (study, series, instance) as values that cannot leak into a log: `Display` and
//! `Debug` print a short hashed tag, never the UID. Code that needs the UID itself (a file
//! name, a query, a DICOM attribute) asks for it with [`Uid::as_str`], which a reviewer can
//! see.

use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

/// A short, stable, non-reversible tag for a UID, for logs: the first 12 hex digits of its
/// SHA-256. Logs never carry study UIDs or patient attributes in clear.
pub fn log_tag(uid: &str) -> String {
    let digest = Sha256::digest(uid.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// A path as logs and errors may show it: every component that is a UID (digits and dots, with
/// at least one dot), alone or followed by a file extension, prints as its tag. The spool names
/// files `spool/<study UID>/<SOP Instance UID>.dcm`; this is how an error names one.
pub fn redacted_path(path: &Path) -> String {
    let mut shown = PathBuf::new();
    for component in path.components() {
        let part = component.as_os_str().to_string_lossy();
        let (stem, extension) = match part.rsplit_once('.') {
            Some((stem, ext))
                if !ext.is_empty() && ext.chars().all(|c| c.is_ascii_alphabetic()) =>
            {
                (stem, Some(ext))
            }
            _ => (part.as_ref(), None),
        };
        let is_uid = stem.contains('.') && stem.chars().all(|c| c.is_ascii_digit() || c == '.');
        match (is_uid, extension) {
            (true, Some(ext)) => shown.push(format!("uid#{}.{ext}", log_tag(stem))),
            (true, None) => shown.push(format!("uid#{}", log_tag(stem))),
            (false, _) => shown.push(component),
        }
    }
    shown.display().to_string()
}

/// A UID that prints as its [`log_tag`]. Put it in every error that names a study, series or
/// instance.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid(String);

impl Uid {
    pub fn new(uid: impl Into<String>) -> Uid {
        Uid(uid.into())
    }

    /// The UID in clear, for file names, queries and DICOM attributes; never for a log.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn tag(&self) -> String {
        log_tag(&self.0)
    }
}

impl From<&str> for Uid {
    fn from(uid: &str) -> Uid {
        Uid(uid.to_string())
    }
}

impl From<String> for Uid {
    fn from(uid: String) -> Uid {
        Uid(uid)
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid#{}", self.tag())
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uid(#{})", self.tag())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_never_prints_in_clear() {
        let uid = Uid::new("1.2.826.0.1.3680043.8.498.12345");
        let shown = format!("{uid} {uid:?} {:?}", Some(&uid));
        assert!(!shown.contains("3680043"), "{shown}");
        assert!(shown.contains(&log_tag(uid.as_str())), "{shown}");
        assert_eq!(log_tag("1.2.3").len(), 12);
    }

    #[test]
    fn a_spool_path_names_its_study_and_instance_only_by_tag() {
        let path =
            Path::new("/var/lib/radiant/spool/1.2.840.113619.2.55/1.2.840.113619.2.55.3.7.dcm");
        let shown = redacted_path(path);
        assert!(!shown.contains("113619"), "{shown}");
        assert!(shown.starts_with("/var/lib/radiant/spool/uid#"), "{shown}");
        assert!(shown.ends_with(".dcm"), "{shown}");
        assert_eq!(
            redacted_path(Path::new("cases/12/labels.u8")),
            "cases/12/labels.u8"
        );
    }
}
