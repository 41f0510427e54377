//! The DICOM objects the appliance writes about a study it received: a Segmentation
//! ([`seg`]) on the exact geometry of the source series, and a TID 1500 measurement report
//! ([`sr`]) that references it. Both copy the patient and study attributes of the source, get
//! UIDs derived from what they describe (a re-run of the same job yields the same UIDs, so a
//! PACS sees a repeat, not a second result), and are written as Explicit VR Little Endian Part
//! 10 files.
//!
//! # Layout
//! - [`seg`]: the Segmentation IOD (PS3.3 A.51), and [`seg::decode`] + [`seg::check_geometry`],
//!   which read a written SEG back onto the source grid before it may leave.
//! - [`sr`]: the Comprehensive SR IOD (PS3.3 A.35.3) with TID 1500 content (PS3.16).
//! - [`sr_read`]: the other direction: the Yes/No, Present/Absent findings of an SR a
//!   radiologist sends back (usually an edited copy of ours), read with bounded work.
//! - [`sc`]: a Multi-frame True Color Secondary Capture (PS3.3 A.8.5.3) of the source slices
//!   with the outlines and a "not for diagnostic use" banner burned in ([`glyphs`]: its font).

pub mod glyphs;
pub mod sc;
pub mod seg;
pub mod sr;
pub mod sr_read;

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use radiant_core::Code;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Explicit VR Little Endian: what we write.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
use crate::uids::{
    IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME as IMPLEMENTATION_VERSION,
};
pub const MANUFACTURER: &str = "Radiant Edge";
pub const MODEL_NAME: &str = "Radiant Edge appliance";

#[derive(Debug, Error)]
pub enum ObjectError {
    #[error("the model manifest lacks {what}, needed to export this result")]
    Manifest { what: String },
    #[error("the result does not fit the source series: {0}")]
    Mismatch(String),
    #[error("cannot encode the {object}: {reason}")]
    Encode {
        object: &'static str,
        reason: String,
    },
    #[error("the written SEG is not what inference produced: {0}")]
    Geometry(String),
    /// A SEG does not map onto its source series (the reason alone: the caller says whose
    /// SEG it is).
    #[error("{0}")]
    Reprojection(String),
    #[error("cannot decode the SEG: {0}")]
    Decode(String),
}

/// A multi-frame object as written (SEG, SC): its Part 10 bytes and the identity the SR and
/// the outbox need.
#[derive(Debug, Clone)]
pub struct Written {
    pub bytes: Vec<u8>,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    pub frames: usize,
}

/// An item naming one source instance: Referenced SOP Class and Instance UID.
pub(crate) fn referenced_instance(source: &crate::volume::SliceSource) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(
        &mut item,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        &source.sop_class_uid,
    );
    put_str(
        &mut item,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        &source.sop_instance_uid,
    );
    item
}

/// The Referenced Series item of the source series (PS3.3 C.12.2), naming the instance of each
/// of `slices` once, in that order.
pub(crate) fn referenced_series(
    series: &crate::volume::SeriesVolume,
    slices: impl IntoIterator<Item = usize>,
) -> InMemDicomObject {
    let mut seen = std::collections::HashSet::new();
    let instances = slices
        .into_iter()
        .filter_map(|z| series.sources.get(z))
        .filter(|s| seen.insert(s.sop_instance_uid.as_str()))
        .map(referenced_instance)
        .collect();
    let mut item = InMemDicomObject::new_empty();
    put_str(
        &mut item,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &series.series_uid,
    );
    put_seq(&mut item, tags::REFERENCED_INSTANCE_SEQUENCE, instances);
    item
}

/// What made a result, for every object that reports it.
#[derive(Debug, Clone)]
pub struct Creator {
    pub model_name: String,
    pub model_version: String,
    /// The inference backend that ran (tract, ort-cpu, ort-cuda).
    pub backend: String,
    /// This appliance (Device Serial Number, Device Observer Serial Number).
    pub device_serial: String,
    /// The appliance software version.
    pub software_version: String,
}

/// A UID under 2.25 (PS3.5 B.2) derived from `parts`: the same parts give the same UID.
pub fn derived_uid(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for p in parts {
        hash.update((p.len() as u64).to_le_bytes());
        hash.update(p.as_bytes());
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // A UUID-shaped value: the 128 bits as one unsigned decimal integer, no leading zero.
    format!("2.25.{}", u128::from_be_bytes(bytes))
}

/// Attributes copied verbatim from the source: Patient (PS3.3 C.7.1.1), General Study
/// (C.7.2.1) and Patient Study identifiers. Absent Type 2 attributes are written empty.
const COPIED: &[(Tag, VR, bool)] = &[
    (tags::SPECIFIC_CHARACTER_SET, VR::CS, false),
    (tags::PATIENT_NAME, VR::PN, true),
    (tags::PATIENT_ID, VR::LO, true),
    (tags::ISSUER_OF_PATIENT_ID, VR::LO, false),
    (tags::PATIENT_BIRTH_DATE, VR::DA, true),
    (tags::PATIENT_SEX, VR::CS, true),
    (tags::PATIENT_AGE, VR::AS, false),
    (tags::STUDY_INSTANCE_UID, VR::UI, true),
    (tags::STUDY_DATE, VR::DA, true),
    (tags::STUDY_TIME, VR::TM, true),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN, true),
    (tags::STUDY_ID, VR::SH, true),
    (tags::ACCESSION_NUMBER, VR::SH, true),
    (tags::STUDY_DESCRIPTION, VR::LO, false),
];

/// Copy the patient and study attributes of `source` into `object`.
pub(crate) fn copy_patient_and_study(source: &InMemDicomObject, object: &mut InMemDicomObject) {
    for (tag, vr, type2) in COPIED {
        match source.get(*tag) {
            Some(element) => {
                object.put(element.clone());
            }
            None if *type2 => put_empty(object, *tag, *vr),
            None => {}
        }
    }
}

pub(crate) fn put_str(object: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    object.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

pub(crate) fn put_empty(object: &mut InMemDicomObject, tag: Tag, vr: VR) {
    object.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
}

pub(crate) fn put_u16(object: &mut InMemDicomObject, tag: Tag, value: u16) {
    object.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
}

/// Decimal strings, each within the 16 bytes DS allows (PS3.5 6.2).
pub(crate) fn put_ds(object: &mut InMemDicomObject, tag: Tag, values: &[f64]) {
    let text: Vec<String> = values.iter().map(|v| ds(*v)).collect();
    object.put(DataElement::new(
        tag,
        VR::DS,
        PrimitiveValue::Strs(text.into()),
    ));
}

/// One DS value: at most 16 characters, no exponent unless it is needed.
pub(crate) fn ds(value: f64) -> String {
    let value = if value == 0.0 { 0.0 } else { value }; // no "-0"
    for precision in (0..=10).rev() {
        let s = format!("{value:.precision$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{value:.6e}")
}

pub(crate) fn put_seq(object: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    object.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

/// A Code Sequence Macro item (PS3.3 Table 8.8-1).
pub(crate) fn code_item(code: &Code) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::CODE_VALUE, VR::SH, &code.value);
    put_str(
        &mut item,
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        &code.scheme,
    );
    put_str(&mut item, tags::CODE_MEANING, VR::LO, &code.meaning);
    item
}

pub(crate) fn code(scheme: &str, value: &str, meaning: &str) -> Code {
    Code {
        scheme: scheme.into(),
        value: value.into(),
        meaning: meaning.into(),
    }
}

/// Today's date and time (UTC) as DICOM DA and TM.
pub(crate) fn now_da_tm() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}{month:02}{day:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
}

/// SOP Common (PS3.3 C.12.1) and (Enhanced) General Equipment (C.7.5.1, C.7.5.2), shared by
/// our objects.
pub(crate) fn put_sop_common(
    object: &mut InMemDicomObject,
    sop_class: &str,
    sop_instance: &str,
    date: &str,
    time: &str,
    creator: &Creator,
) {
    put_str(object, tags::SOP_CLASS_UID, VR::UI, sop_class);
    put_str(object, tags::SOP_INSTANCE_UID, VR::UI, sop_instance);
    put_str(object, tags::INSTANCE_CREATION_DATE, VR::DA, date);
    put_str(object, tags::INSTANCE_CREATION_TIME, VR::TM, time);
    put_str(object, tags::MANUFACTURER, VR::LO, MANUFACTURER);
    put_str(object, tags::MANUFACTURER_MODEL_NAME, VR::LO, MODEL_NAME);
    put_str(
        object,
        tags::DEVICE_SERIAL_NUMBER,
        VR::LO,
        &creator.device_serial,
    );
    put_str(
        object,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        &creator.software_version,
    );
}

/// The object as Part 10 bytes, Explicit VR Little Endian.
pub(crate) fn part10(
    object: InMemDicomObject,
    sop_class: &str,
    sop_instance: &str,
    what: &'static str,
) -> Result<Vec<u8>, ObjectError> {
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(EXPLICIT_VR_LE)
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION);
    let file = object.with_meta(meta).map_err(|e| ObjectError::Encode {
        object: what,
        reason: e.to_string(),
    })?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes)
        .map_err(|e| ObjectError::Encode {
            object: what,
            reason: e.to_string(),
        })?;
    Ok(bytes)
}

/// A string attribute, without padding; `None` when absent or empty.
pub(crate) fn string(object: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = object.element_opt(tag).ok().flatten()?.to_str().ok()?;
    let s = s.trim_end_matches(['\0', ' ']).trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// The items of a sequence attribute; none when absent.
pub(crate) fn items(object: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    object
        .element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.items())
        .unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uids_are_stable_valid_and_distinct() {
        let a = derived_uid(&["study", "seg"]);
        assert_eq!(a, derived_uid(&["study", "seg"]));
        assert_ne!(a, derived_uid(&["study", "sr"]));
        // Length-prefixed: moving a boundary between parts changes the UID.
        assert_ne!(derived_uid(&["ab", "c"]), derived_uid(&["a", "bc"]));
        assert!(crate::uids::is_valid_uid(&a), "{a}");
        assert!(!a["2.25.".len()..].starts_with('0'));
    }

    #[test]
    fn decimal_strings_fit_sixteen_bytes() {
        assert_eq!(ds(0.5), "0.5");
        assert_eq!(ds(-0.0), "0");
        assert_eq!(ds(3.0), "3");
        assert_eq!(ds(-123.456789012345678), "-123.4567890123");
        for v in [1e-9, 123456789.123456789, -0.000123456789, 1e20] {
            assert!(ds(v).len() <= 16, "{v} -> {}", ds(v));
            assert!(ds(v).parse::<f64>().is_ok());
        }
    }

    #[test]
    fn dates_are_civil() {
        let (d, t) = now_da_tm();
        assert_eq!(d.len(), 8);
        assert_eq!(t.len(), 6);
        assert!(d.as_str() > "20240101");
    }
}
