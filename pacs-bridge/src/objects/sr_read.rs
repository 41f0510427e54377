//! Reading the labels radiologists send back as SR (PS3.3 A.35), for on-site learning: a
//! confirmed or rejected finding is a CODE content item whose concept is the finding and whose
//! value is Yes/No or Present/Absent, usually in an edited copy of our TID 1500 report.
//!
//! An SR comes from the network, so [`decode_findings`] first runs the bounded
//! [`dataset`](crate::dataset) walker over the file meta group and the dataset (every declared
//! length within the bytes present, sequences at most 64 deep, a deflated dataset inflated to
//! at most [`MAX_SR_BYTES`]), and only then lets dicom-object build the tree. The content tree
//! is walked with its own bounds ([`MAX_CONTENT_DEPTH`], [`MAX_CONTENT_ITEMS`]).

use super::sr::COMPREHENSIVE_SR_STORAGE;
use super::{items, string};
use crate::dataset::{self, DatasetError};
use crate::uids;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use radiant_core::Code;
use radiant_core::Uid;
use thiserror::Error;

pub const BASIC_TEXT_SR_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.88.11";
pub const ENHANCED_SR_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.88.22";
pub const COMPREHENSIVE_3D_SR_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.88.34";
/// The SR storage SOP classes whose content tree we read.
pub const SR_STORAGE_CLASSES: &[&str] = &[
    BASIC_TEXT_SR_STORAGE,
    ENHANCED_SR_STORAGE,
    COMPREHENSIVE_SR_STORAGE,
    COMPREHENSIVE_3D_SR_STORAGE,
];

/// Largest SR file (and inflated dataset) we parse. A TID 1500 report whose image library lists
/// 2000 instances is well under 1 MiB; parsing costs a small multiple of this in memory.
pub const MAX_SR_BYTES: usize = 8 << 20;
/// Deepest content item below the root (the root's children are at depth 1).
pub const MAX_CONTENT_DEPTH: usize = 32;
/// Most content items in one tree.
pub const MAX_CONTENT_ITEMS: usize = 10_000;

/// Concept values (SCT) that state a finding, with the presence each states: Yes/No (PS3.16
/// CID 230) and Present/Absent.
const PRESENCE_VALUES: &[(&str, bool)] = &[
    ("373066001", true),  // Yes
    ("373067005", false), // No
    ("52101004", true),   // Present
    ("2667000", false),   // Absent
];

/// Why an SR could not be read. Content item positions are written as in Referenced Content
/// Item Identifier (PS3.3 C.17.3.2.5): "1" is the root, "1.5.2" its fifth child's second child.
#[derive(Debug, Error)]
pub enum SrReadError {
    #[error("not a DICOM Part 10 file (no DICM prefix after the preamble)")]
    NotPart10,
    #[error("the file has {bytes} bytes; SRs above {limit} bytes are refused")]
    TooLarge { bytes: usize, limit: usize },
    #[error("the file meta group is malformed: {0}")]
    Meta(String),
    #[error("transfer syntax {0} is not one we read")]
    TransferSyntax(String),
    #[error("the dataset is malformed: {0}")]
    Malformed(#[from] DatasetError),
    #[error("cannot parse the dataset: {0}")]
    Parse(String),
    #[error("a {kind} instance (SOP class {sop_class}), not an SR")]
    NotAnSr {
        sop_class: String,
        kind: &'static str,
    },
    #[error("{0} is missing or empty")]
    Missing(&'static str),
    #[error("{attribute} {value:?} is not a valid UID")]
    InvalidUid { attribute: &'static str, value: Uid },
    #[error("content item {path} is nested deeper than {MAX_CONTENT_DEPTH} levels")]
    TooDeep { path: String },
    #[error("the content tree has more than {MAX_CONTENT_ITEMS} items")]
    TooManyItems,
    #[error("content item {path}: {reason}")]
    ContentItem { path: String, reason: &'static str },
}

/// A report states a finding both present and absent.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("the report states {} ({} {}) both present and absent", .0.meaning, .0.scheme, .0.value)]
pub struct Contradiction(pub Code);

/// One coded statement about a finding: `concept` is the finding, `value` Yes/No/Present/Absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodedFinding {
    pub concept: Code,
    pub value: Code,
}

impl CodedFinding {
    /// Whether the finding is stated present (`Some(true)`) or absent (`Some(false)`).
    pub fn presence(&self) -> Option<bool> {
        presence_of(&self.value)
    }
}

/// What an SR says, as far as on-site learning needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedReport {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub study_uid: String,
    pub series_uid: String,
    pub completion_flag: Option<String>,
    pub verification_flag: Option<String>,
    /// Verification Flag is VERIFIED: a named observer vouches for the content (C.17.2).
    pub verified: bool,
    /// Series Instance UIDs referenced as evidence (Current Requested Procedure Evidence and
    /// Pertinent Other Evidence), each once, in the order first met.
    pub evidence_series: Vec<String>,
    /// Every CODE content item, at any depth, whose value is Yes/No/Present/Absent.
    pub findings: Vec<CodedFinding>,
}

impl DecodedReport {
    /// Whether the report states `code` present (`Some(true)`), absent (`Some(false)`) or not
    /// at all (`None`). Codes match on scheme and value; meanings vary between tools.
    pub fn finding(&self, code: &Code) -> Result<Option<bool>, Contradiction> {
        let mut stated = None;
        for f in self.findings.iter().filter(|f| same_code(&f.concept, code)) {
            match (stated, f.presence()) {
                (Some(a), Some(b)) if a != b => return Err(Contradiction(f.concept.clone())),
                (_, Some(b)) => stated = Some(b),
                (_, None) => {}
            }
        }
        Ok(stated)
    }
}

fn same_code(a: &Code, b: &Code) -> bool {
    a.scheme == b.scheme && a.value == b.value
}

fn presence_of(value: &Code) -> Option<bool> {
    if value.scheme != "SCT" {
        return None;
    }
    PRESENCE_VALUES
        .iter()
        .find(|(v, _)| *v == value.value)
        .map(|(_, present)| *present)
}

/// Read an SR (Part 10 bytes) and the findings it states. Anything that is not one of the
/// [`SR_STORAGE_CLASSES`], or is malformed, truncated or beyond the bounds, is an error that
/// says which.
pub fn decode_findings(bytes: &[u8]) -> Result<DecodedReport, SrReadError> {
    if bytes.len() > MAX_SR_BYTES {
        return Err(SrReadError::TooLarge {
            bytes: bytes.len(),
            limit: MAX_SR_BYTES,
        });
    }
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err(SrReadError::NotPart10);
    }
    let (meta_end, encoding) = super::check_meta(bytes, MAX_SR_BYTES).map_err(|e| match e {
        super::MetaError::Malformed(m) => SrReadError::Meta(m),
        super::MetaError::TransferSyntax(t) => SrReadError::TransferSyntax(t),
    })?;
    let identity = dataset::inspect_as_parsed(&bytes[meta_end..], encoding, MAX_SR_BYTES)?;
    let sop_class_uid = identity
        .sop_class_uid
        .filter(|s| !s.is_empty())
        .ok_or(SrReadError::Missing("SOP Class UID"))?;
    if !SR_STORAGE_CLASSES.contains(&sop_class_uid.as_str()) {
        return Err(SrReadError::NotAnSr {
            kind: uids::storage_class_name(&sop_class_uid),
            sop_class: sop_class_uid,
        });
    }
    // Every length now fits the bytes present and nesting is bounded: dicom-object may build
    // the tree.
    let file =
        dicom_object::from_reader(&bytes[128..]).map_err(|e| SrReadError::Parse(e.to_string()))?;
    let o: &InMemDicomObject = &file;
    let uid = |tag: Tag, attribute: &'static str| -> Result<String, SrReadError> {
        let value = string(o, tag).ok_or(SrReadError::Missing(attribute))?;
        checked_uid(value, attribute)
    };
    let verification_flag = string(o, tags::VERIFICATION_FLAG);
    let mut evidence_series = Vec::new();
    for sequence in [
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        tags::PERTINENT_OTHER_EVIDENCE_SEQUENCE,
    ] {
        for study in items(o, sequence) {
            for series in items(study, tags::REFERENCED_SERIES_SEQUENCE) {
                let value = string(series, tags::SERIES_INSTANCE_UID)
                    .ok_or(SrReadError::Missing("evidence Series Instance UID"))?;
                let value = checked_uid(value, "evidence Series Instance UID")?;
                if !evidence_series.contains(&value) {
                    evidence_series.push(value);
                }
            }
        }
    }
    // The root is a CONTAINER (PS3.3 C.17.3); its children hold the statements.
    if string(o, tags::VALUE_TYPE).as_deref() != Some("CONTAINER") {
        return Err(SrReadError::ContentItem {
            path: "1".into(),
            reason: "the root content item is not a CONTAINER",
        });
    }
    let mut walk = Walk {
        items: 0,
        findings: Vec::new(),
    };
    walk.children(o, "1", 1)?;
    Ok(DecodedReport {
        sop_instance_uid: uid(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
        sop_class_uid,
        study_uid: uid(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
        series_uid: uid(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
        completion_flag: string(o, tags::COMPLETION_FLAG),
        verified: verification_flag.as_deref() == Some("VERIFIED"),
        verification_flag,
        evidence_series,
        findings: walk.findings,
    })
}

fn checked_uid(value: String, attribute: &'static str) -> Result<String, SrReadError> {
    if uids::is_valid_uid(&value) {
        Ok(value)
    } else {
        Err(SrReadError::InvalidUid {
            attribute,
            value: Uid::new(value),
        })
    }
}

/// The state of one walk over a content tree.
struct Walk {
    items: usize,
    findings: Vec<CodedFinding>,
}

impl Walk {
    /// Visit the children of the item at `path`, which sit at `depth`.
    fn children(
        &mut self,
        parent: &InMemDicomObject,
        path: &str,
        depth: usize,
    ) -> Result<(), SrReadError> {
        let children = items(parent, tags::CONTENT_SEQUENCE);
        if children.is_empty() {
            return Ok(());
        }
        if depth > MAX_CONTENT_DEPTH {
            return Err(SrReadError::TooDeep {
                path: format!("{path}.1"),
            });
        }
        for (i, item) in children.iter().enumerate() {
            self.items += 1;
            if self.items > MAX_CONTENT_ITEMS {
                return Err(SrReadError::TooManyItems);
            }
            let path = format!("{path}.{}", i + 1);
            // By-reference items (Referenced Content Item Identifier) have no Value Type and
            // state nothing new.
            if string(item, tags::VALUE_TYPE).as_deref() == Some("CODE") {
                self.code_item(item, &path)?;
            }
            self.children(item, &path, depth + 1)?;
        }
        Ok(())
    }

    /// A CODE item (PS3.3 C.17.3.2.1): concept name and concept code are both Type 1 here.
    fn code_item(&mut self, item: &InMemDicomObject, path: &str) -> Result<(), SrReadError> {
        let bad = |reason| SrReadError::ContentItem {
            path: path.to_string(),
            reason,
        };
        let value = first_code(item, tags::CONCEPT_CODE_SEQUENCE)
            .ok_or_else(|| bad("CODE item without a Concept Code Sequence code"))?;
        if presence_of(&value).is_none() {
            return Ok(());
        }
        let concept = first_code(item, tags::CONCEPT_NAME_CODE_SEQUENCE)
            .ok_or_else(|| bad("Yes/No or Present/Absent without a concept name"))?;
        self.findings.push(CodedFinding { concept, value });
        Ok(())
    }
}

/// The first code of a Code Sequence (PS3.3 Table 8.8-1): Code Value, else Long Code Value,
/// else URN Code Value.
fn first_code(object: &InMemDicomObject, sequence: Tag) -> Option<Code> {
    let item = items(object, sequence).first()?;
    let value = string(item, tags::CODE_VALUE)
        .or_else(|| string(item, tags::LONG_CODE_VALUE))
        .or_else(|| string(item, tags::URN_CODE_VALUE))?;
    Some(Code {
        scheme: string(item, tags::CODING_SCHEME_DESIGNATOR).unwrap_or_default(),
        value,
        meaning: string(item, tags::CODE_MEANING).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sct(value: &str, meaning: &str) -> Code {
        Code {
            scheme: "SCT".into(),
            value: value.into(),
            meaning: meaning.into(),
        }
    }

    fn report(findings: Vec<CodedFinding>) -> DecodedReport {
        DecodedReport {
            sop_instance_uid: "1.2.3".into(),
            sop_class_uid: COMPREHENSIVE_SR_STORAGE.into(),
            study_uid: "1.2".into(),
            series_uid: "1.2.4".into(),
            completion_flag: None,
            verification_flag: None,
            verified: false,
            evidence_series: vec![],
            findings,
        }
    }

    fn stated(concept: &Code, value: &Code) -> CodedFinding {
        CodedFinding {
            concept: concept.clone(),
            value: value.clone(),
        }
    }

    #[test]
    fn presence_reads_the_four_sct_values_and_nothing_else() {
        let bleed = sct("50960005", "Hemorrhage");
        let of = |v: &str| stated(&bleed, &sct(v, "")).presence();
        assert_eq!(of("373066001"), Some(true));
        assert_eq!(of("52101004"), Some(true));
        assert_eq!(of("373067005"), Some(false));
        assert_eq!(of("2667000"), Some(false));
        assert_eq!(of("12738006"), None);
        let mut yes_elsewhere = sct("373066001", "Yes");
        yes_elsewhere.scheme = "99LOCAL".into();
        assert_eq!(stated(&bleed, &yes_elsewhere).presence(), None);
    }

    #[test]
    fn a_finding_matches_on_scheme_and_value_not_meaning() {
        let bleed = sct("50960005", "Hemorrhage");
        let r = report(vec![stated(
            &sct("50960005", "Haemorrhage (disorder)"),
            &sct("2667000", "Absent"),
        )]);
        assert_eq!(r.finding(&bleed), Ok(Some(false)));
        assert_eq!(r.finding(&sct("12738006", "Brain")), Ok(None));
        let mut other_scheme = bleed.clone();
        other_scheme.scheme = "99LOCAL".into();
        assert_eq!(r.finding(&other_scheme), Ok(None));
    }

    #[test]
    fn the_same_statement_twice_agrees_and_opposite_statements_contradict() {
        let bleed = sct("50960005", "Hemorrhage");
        let yes = sct("373066001", "Yes");
        let present = sct("52101004", "Present");
        let no = sct("373067005", "No");
        let r = report(vec![stated(&bleed, &yes), stated(&bleed, &present)]);
        assert_eq!(r.finding(&bleed), Ok(Some(true)));
        let r = report(vec![stated(&bleed, &yes), stated(&bleed, &no)]);
        assert_eq!(r.finding(&bleed), Err(Contradiction(bleed.clone())));
    }

    #[test]
    fn short_unprefixed_or_meta_less_bytes_are_refused() {
        assert!(matches!(
            decode_findings(b"garbage"),
            Err(SrReadError::NotPart10)
        ));
        assert!(matches!(
            decode_findings(&[0u8; 200]),
            Err(SrReadError::NotPart10)
        ));
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        assert!(matches!(decode_findings(&bytes), Err(SrReadError::Meta(_))));
    }
}
