//! The SOP classes and transfer syntaxes the SCP negotiates, and UID syntax (PS3.5 section 9).

/// Verification SOP Class (PS3.4 annex A).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
/// DICOM Application Context Name (PS3.7 annex A.2.1).
pub const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
/// Our implementation class UID (PS3.7 D.3.3.2), sent in every A-ASSOCIATE-RQ and -AC and
/// written into the file meta group of every file we write; under the UUID-derived root 2.25
/// (PS3.5 B.2), which needs no registration.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.231452345906431196318719405683374716801";
/// Our implementation version name (at most 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = "RADIANT_EDGE_01";

pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
pub const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";
pub const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";

/// Storage SOP classes we accept, with a short name used in logs and metrics.
pub const STORAGE_SOP_CLASSES: &[(&str, &str)] = &[
    ("1.2.840.10008.5.1.4.1.1.1", "CR"),
    ("1.2.840.10008.5.1.4.1.1.1.1", "DX-presentation"),
    ("1.2.840.10008.5.1.4.1.1.1.1.1", "DX-processing"),
    ("1.2.840.10008.5.1.4.1.1.2", "CT"),
    ("1.2.840.10008.5.1.4.1.1.2.1", "Enhanced-CT"),
    ("1.2.840.10008.5.1.4.1.1.4", "MR"),
    ("1.2.840.10008.5.1.4.1.1.4.1", "Enhanced-MR"),
    ("1.2.840.10008.5.1.4.1.1.7", "SC"),
    ("1.2.840.10008.5.1.4.1.1.7.1", "SC-MF-single-bit"),
    ("1.2.840.10008.5.1.4.1.1.7.2", "SC-MF-grayscale-byte"),
    ("1.2.840.10008.5.1.4.1.1.7.3", "SC-MF-grayscale-word"),
    ("1.2.840.10008.5.1.4.1.1.7.4", "SC-MF-true-color"),
    ("1.2.840.10008.5.1.4.1.1.66.4", "SEG"),
    ("1.2.840.10008.5.1.4.1.1.88.11", "Basic-Text-SR"),
    ("1.2.840.10008.5.1.4.1.1.88.22", "Enhanced-SR"),
    ("1.2.840.10008.5.1.4.1.1.88.33", "Comprehensive-SR"),
    ("1.2.840.10008.5.1.4.1.1.88.34", "Comprehensive-3D-SR"),
];

/// Transfer syntaxes we accept. Encapsulated ones are stored as received, bytes unchanged.
pub const TRANSFER_SYNTAXES: &[&str] = &[
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    DEFLATED_EXPLICIT_VR_LE,
    "1.2.840.10008.1.2.5",    // RLE Lossless
    "1.2.840.10008.1.2.4.50", // JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51", // JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57", // JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70", // JPEG Lossless SV1 (Process 14, selection value 1)
    "1.2.840.10008.1.2.4.80", // JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81", // JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90", // JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91", // JPEG 2000
];

/// How the bytes of a dataset are laid out on the wire (PS3.5 section 10 and annex A).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    ImplicitLittle,
    ExplicitLittle,
    ExplicitBig,
    /// Explicit VR little endian, deflated (PS3.5 A.5).
    DeflatedExplicitLittle,
}

/// The encoding of a transfer syntax we accept; `None` for one we do not.
pub fn encoding_of(transfer_syntax: &str) -> Option<Encoding> {
    match transfer_syntax {
        IMPLICIT_VR_LE => Some(Encoding::ImplicitLittle),
        EXPLICIT_VR_BE => Some(Encoding::ExplicitBig),
        DEFLATED_EXPLICIT_VR_LE => Some(Encoding::DeflatedExplicitLittle),
        ts if TRANSFER_SYNTAXES.contains(&ts) => Some(Encoding::ExplicitLittle),
        _ => None,
    }
}

pub fn is_storage_class(sop_class: &str) -> bool {
    STORAGE_SOP_CLASSES.iter().any(|(uid, _)| *uid == sop_class)
}

/// Short name of an accepted storage class, or "other".
pub fn storage_class_name(sop_class: &str) -> &'static str {
    STORAGE_SOP_CLASSES
        .iter()
        .find(|(uid, _)| *uid == sop_class)
        .map(|(_, name)| *name)
        .unwrap_or("other")
}

/// The standard's name of a SOP class (PS3.6 annex A), e.g. "CT Image Storage".
pub fn sop_class_name(uid: &str) -> Option<&'static str> {
    use dicom_core::dictionary::UidDictionary;
    dicom_dictionary_std::StandardSopClassDictionary
        .by_uid(uid)
        .map(|entry| entry.name)
}

/// The name of a transfer syntax, e.g. "JPEG 2000 Image Compression (Lossless Only)".
pub fn transfer_syntax_name(uid: &str) -> Option<&'static str> {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(uid)
        .map(|ts| ts.name())
}

/// Whether `uid` is a syntactically valid UID (PS3.5 section 9.1): 1 to 64 characters, digits and
/// dots, no empty component. Leading zeros in a component are invalid too but common in the
/// field, so they are tolerated. We also use UIDs as file names, so this check is what keeps path
/// separators and `..` out of the spool.
pub fn is_valid_uid(uid: &str) -> bool {
    if uid.is_empty() || uid.len() > 64 {
        return false;
    }
    uid.split('.')
        .all(|component| !component.is_empty() && component.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_syntax_rejects_path_tricks_and_bad_lengths() {
        assert!(is_valid_uid("1.2.840.10008.5.1.4.1.1.2"));
        assert!(is_valid_uid("1.2.0.3"));
        assert!(!is_valid_uid(""));
        assert!(!is_valid_uid("1..2"));
        assert!(!is_valid_uid("../etc"));
        assert!(!is_valid_uid("1.2/3"));
        assert!(!is_valid_uid(&"1".repeat(65)));
    }

    #[test]
    fn every_accepted_transfer_syntax_has_an_encoding() {
        for ts in TRANSFER_SYNTAXES {
            assert!(encoding_of(ts).is_some(), "{ts}");
        }
        assert_eq!(encoding_of("1.2.840.10008.1.2.4.100"), None);
    }

    #[test]
    fn every_uid_we_accept_has_its_standard_name() {
        for (uid, _) in STORAGE_SOP_CLASSES {
            assert!(sop_class_name(uid).is_some(), "{uid}");
        }
        for ts in TRANSFER_SYNTAXES {
            assert!(transfer_syntax_name(ts).is_some(), "{ts}");
        }
        assert_eq!(sop_class_name(VERIFICATION), Some("Verification SOP Class"));
    }
}
