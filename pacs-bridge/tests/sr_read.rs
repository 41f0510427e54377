//! The findings radiologists send back as SR, read for on-site learning: our own TID 1500
//! report reads back as written, a verified report written by highdicom (not us) reads as
//! verified with its "No", a report that says Yes and No to one finding is refused per finding,
//! and whatever else arrives (a CT, a SEG, a truncated or mutated file, a deflate bomb, a content
//! tree too deep or too large) is a typed error, never a panic.

mod common;

use common::{code, creator, mutated};
use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use pacs_bridge::dataset::DatasetError;
use pacs_bridge::objects::seg::{self, Segment};
use pacs_bridge::objects::sr::{self, Finding, Report};
use pacs_bridge::objects::sr_read::{
    decode_findings, Contradiction, SrReadError, COMPREHENSIVE_3D_SR_STORAGE, ENHANCED_SR_STORAGE,
    MAX_CONTENT_DEPTH, MAX_CONTENT_ITEMS, MAX_SR_BYTES,
};
use pacs_bridge::volume::{build, Limits, SeriesVolume};
use radiant_core::rng::SplitMix64;
use radiant_core::Code;
use std::path::{Path, PathBuf};
use std::process::Command;

fn hemorrhage() -> Code {
    code("SCT", "50960005", "Hemorrhage")
}

fn lesion_dir() -> PathBuf {
    test_support::fixtures::lesion_series_dir()
}

fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(lesion_dir().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn lesion_slices() -> Vec<PathBuf> {
    manifest()["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| lesion_dir().join(s["file"].as_str().unwrap()))
        .collect()
}

fn lesion_series() -> SeriesVolume {
    build(&lesion_slices(), &Limits::default()).unwrap()
}

const SEG_SERIES: &str = "2.25.1001";

/// Our TID 1500 report on the lesion series, with the study-level finding at `probability`.
fn our_sr(series: &SeriesVolume, probability: Option<f64>) -> sr::WrittenSr {
    let report = Report {
        procedure: code("LN", "24725-4", "CT Head"),
        seg_sop_instance_uid: "2.25.1000".into(),
        seg_series_instance_uid: SEG_SERIES.into(),
        segments: vec![],
        finding: probability.map(|probability| Finding {
            code: hemorrhage(),
            probability,
            threshold: 0.5,
        }),
    };
    sr::build(series, &report, &creator(), "sr-read-job").unwrap()
}

/// `bytes` parsed, changed by `change`, and written again (Explicit VR Little Endian).
fn edited(bytes: &[u8], change: impl FnOnce(&mut InMemDicomObject)) -> Vec<u8> {
    let mut file = dicom_object::from_reader(&bytes[128..]).unwrap();
    change(&mut file);
    let mut out = Vec::new();
    file.write_all(&mut out).unwrap();
    out
}

fn code_sequence(item: &mut InMemDicomObject, tag: Tag, c: &Code) {
    let mut entry = InMemDicomObject::new_empty();
    for (t, vr, v) in [
        (tags::CODE_VALUE, VR::SH, &c.value),
        (tags::CODING_SCHEME_DESIGNATOR, VR::SH, &c.scheme),
        (tags::CODE_MEANING, VR::LO, &c.meaning),
    ] {
        entry.put(DataElement::new(t, vr, PrimitiveValue::from(v.as_str())));
    }
    item.put(DataElement::new(
        tag,
        VR::SQ,
        DataSetSequence::from(vec![entry]),
    ));
}

fn content_item(value_type: &str, concept: &Code) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    item.put(DataElement::new(
        tags::RELATIONSHIP_TYPE,
        VR::CS,
        PrimitiveValue::from("CONTAINS"),
    ));
    item.put(DataElement::new(
        tags::VALUE_TYPE,
        VR::CS,
        PrimitiveValue::from(value_type),
    ));
    code_sequence(&mut item, tags::CONCEPT_NAME_CODE_SEQUENCE, concept);
    item
}

fn statement(concept: &Code, value: &Code) -> InMemDicomObject {
    let mut item = content_item("CODE", concept);
    code_sequence(&mut item, tags::CONCEPT_CODE_SEQUENCE, value);
    item
}

fn set_children(item: &mut InMemDicomObject, children: Vec<InMemDicomObject>) {
    item.put(DataElement::new(
        tags::CONTENT_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(children),
    ));
}

/// Append `item` to the root's children.
fn append_to_root(root: &mut InMemDicomObject, item: InMemDicomObject) {
    let mut children = root
        .element(tags::CONTENT_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()
        .to_vec();
    children.push(item);
    set_children(root, children);
}

/// `levels` containers, each the only child of the one above, around "Hemorrhage: Yes": the
/// statement sits at depth `levels + 1` below the root.
fn nested_statement(levels: usize) -> InMemDicomObject {
    let mut item = statement(&hemorrhage(), &code("SCT", "373066001", "Yes"));
    for _ in 0..levels {
        let mut container = content_item("CONTAINER", &code("DCM", "125007", "Measurement Group"));
        set_children(&mut container, vec![item]);
        item = container;
    }
    item
}

fn write_with_highdicom(dir: &Path, flavour: &str, syntax: &str) -> Vec<u8> {
    let out = dir.join(format!("{flavour}-{syntax}.dcm"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/write_label_sr.py");
    let run = Command::new("python3")
        .arg(&script)
        .arg(&out)
        .arg(flavour)
        .arg(syntax)
        .args(&lesion_slices()[..3])
        .output()
        .expect("python3");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    std::fs::read(&out).unwrap()
}

#[test]
fn our_own_report_reads_back_with_the_finding_as_written_and_unverified() {
    let series = lesion_series();
    let m = manifest();
    for (probability, present) in [(0.93, true), (0.2, false)] {
        let written = our_sr(&series, Some(probability));
        let report = decode_findings(&written.bytes).unwrap();
        assert_eq!(report.finding(&hemorrhage()), Ok(Some(present)));
        assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
        assert_eq!(report.findings[0].presence(), Some(present));
        // Our writer leaves verification to a person (PS3.3 C.17.2: UNVERIFIED).
        assert_eq!(report.verification_flag.as_deref(), Some("UNVERIFIED"));
        assert!(!report.verified);
        assert_eq!(report.completion_flag.as_deref(), Some("COMPLETE"));
        assert_eq!(report.sop_instance_uid, written.sop_instance_uid);
        assert_eq!(report.series_uid, written.series_instance_uid);
        assert_eq!(report.sop_class_uid, sr::COMPREHENSIVE_SR_STORAGE);
        assert_eq!(report.study_uid, m["study_instance_uid"].as_str().unwrap());
        assert_eq!(
            report.evidence_series,
            vec![
                m["series_instance_uid"].as_str().unwrap().to_string(),
                SEG_SERIES.to_string()
            ]
        );
    }
    // Without a finding the report states nothing about it.
    let report = decode_findings(&our_sr(&series, None).bytes).unwrap();
    assert!(report.findings.is_empty());
    assert_eq!(report.finding(&hemorrhage()), Ok(None));
}

#[test]
fn a_verified_report_from_highdicom_saying_no_hemorrhage_reads_as_verified_and_absent() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest();
    for (flavour, syntax, class) in [
        ("comprehensive", "explicit", sr::COMPREHENSIVE_SR_STORAGE),
        ("comprehensive", "implicit", sr::COMPREHENSIVE_SR_STORAGE),
        ("comprehensive", "deflated", sr::COMPREHENSIVE_SR_STORAGE),
        ("enhanced", "explicit", ENHANCED_SR_STORAGE),
    ] {
        let bytes = write_with_highdicom(dir.path(), flavour, syntax);
        let report = decode_findings(&bytes).unwrap_or_else(|e| panic!("{flavour} {syntax}: {e}"));
        assert_eq!(report.sop_class_uid, class);
        assert!(report.verified, "{flavour} {syntax}");
        assert_eq!(report.verification_flag.as_deref(), Some("VERIFIED"));
        assert_eq!(report.completion_flag.as_deref(), Some("COMPLETE"));
        assert_eq!(report.finding(&hemorrhage()), Ok(Some(false)));
        assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
        assert_eq!(report.findings[0].value.value, "373067005");
        assert_eq!(report.study_uid, m["study_instance_uid"].as_str().unwrap());
        assert_eq!(
            report.evidence_series,
            vec![m["series_instance_uid"].as_str().unwrap().to_string()]
        );
    }
}

#[test]
fn a_report_stating_a_finding_both_ways_is_refused_for_that_finding_only() {
    let series = lesion_series();
    let bytes = edited(&our_sr(&series, Some(0.93)).bytes, |root| {
        let mut evaluations = content_item(
            "CONTAINER",
            &code("UMLS", "C0034375", "Qualitative Evaluations"),
        );
        set_children(
            &mut evaluations,
            vec![
                statement(&hemorrhage(), &code("SCT", "2667000", "Absent")),
                statement(
                    &code("SCT", "52988006", "Lesion"),
                    &code("SCT", "52101004", "Present"),
                ),
            ],
        );
        append_to_root(root, evaluations);
    });
    let report = decode_findings(&bytes).unwrap();
    assert_eq!(report.findings.len(), 3);
    assert_eq!(
        report.finding(&hemorrhage()),
        Err(Contradiction(hemorrhage()))
    );
    assert_eq!(
        report.finding(&code("SCT", "52988006", "Lesion")),
        Ok(Some(true))
    );
}

#[test]
fn a_ct_slice_and_a_seg_are_refused_as_what_they_are() {
    let ct = std::fs::read(&lesion_slices()[0]).unwrap();
    match decode_findings(&ct) {
        Err(e @ SrReadError::NotAnSr { kind: "CT", .. }) => {
            assert!(e.to_string().contains("CT"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let series = build(&lesion_slices()[..4], &Limits::default()).unwrap();
    let segment = Segment {
        number: 1,
        label: "lesion".into(),
        category: code("SCT", "49755003", "Morphologically Altered Structure"),
        property_type: hemorrhage(),
        colour: [255, 64, 32],
    };
    let labels = vec![0u8; series.volume.voxels.len()];
    let written = seg::build(&series, &labels, &[segment], &creator(), "sr-read-seg").unwrap();
    assert!(matches!(
        decode_findings(&written.bytes),
        Err(SrReadError::NotAnSr { kind: "SEG", .. })
    ));
}

#[test]
fn other_sr_storage_classes_are_read_and_unknown_ones_are_not() {
    let series = lesion_series();
    let bytes = our_sr(&series, Some(0.93)).bytes;
    let with_class = |class: &str| {
        edited(&bytes, |root| {
            root.put(DataElement::new(
                tags::SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from(class),
            ));
        })
    };
    let report = decode_findings(&with_class(COMPREHENSIVE_3D_SR_STORAGE)).unwrap();
    assert_eq!(report.sop_class_uid, COMPREHENSIVE_3D_SR_STORAGE);
    assert_eq!(report.finding(&hemorrhage()), Ok(Some(true)));
    // Key Object Selection is an SR-shaped document, but not one of the storage classes we read.
    assert!(matches!(
        decode_findings(&with_class("1.2.840.10008.5.1.4.1.1.88.59")),
        Err(SrReadError::NotAnSr { kind: "other", .. })
    ));
}

#[test]
fn garbage_oversized_and_truncated_files_are_typed_errors() {
    assert!(matches!(
        decode_findings(b"not dicom at all"),
        Err(SrReadError::NotPart10)
    ));
    assert!(matches!(
        decode_findings(&vec![0u8; MAX_SR_BYTES + 1]),
        Err(SrReadError::TooLarge { .. })
    ));
    let bytes = our_sr(&lesion_series(), Some(0.93)).bytes;
    // Cut inside the content tree: the walker sees an element run past the end.
    let cut = &bytes[..bytes.len() * 2 / 3];
    assert!(
        matches!(decode_findings(cut), Err(SrReadError::Malformed(_))),
        "{:?}",
        decode_findings(cut)
    );
    // Cut inside the meta group.
    assert!(matches!(
        decode_findings(&bytes[..150]),
        Err(SrReadError::Meta(_))
    ));
    // Every cut either fails with a typed error or, at a top-level element boundary (which
    // DICOM cannot tell from the end of a file), reads without inventing a finding.
    let step = (bytes.len() / 1500).max(1);
    for at in (0..bytes.len()).step_by(step) {
        if let Ok(report) = decode_findings(&bytes[..at]) {
            assert!(
                matches!(report.finding(&hemorrhage()), Ok(None) | Ok(Some(true))),
                "cut at {at}"
            );
        }
    }
}

/// Our report, deflated (PS3.5 A.5), with `padding` zero bytes of Data Set Trailing Padding
/// (FFFC,FFFC) OB (PS3.10 7.2), which deflate to almost nothing.
fn deflated_with_padding(padding: u32) -> Vec<u8> {
    use std::io::Write;
    let written = our_sr(&lesion_series(), Some(0.93));
    let group_length = u32::from_le_bytes(written.bytes[140..144].try_into().unwrap());
    let mut dataset = written.bytes[144 + group_length as usize..].to_vec();
    dataset.extend([0xFC, 0xFF, 0xFC, 0xFF, b'O', b'B', 0, 0]);
    dataset.extend(padding.to_le_bytes());
    dataset.resize(dataset.len() + padding as usize, 0);
    let mut deflater = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    deflater.write_all(&dataset).unwrap();
    let meta = dicom_object::meta::FileMetaTableBuilder::new()
        .transfer_syntax("1.2.840.10008.1.2.1.99")
        .media_storage_sop_class_uid(sr::COMPREHENSIVE_SR_STORAGE)
        .media_storage_sop_instance_uid(&written.sop_instance_uid)
        .implementation_class_uid("2.25.1")
        .build()
        .unwrap();
    let mut bytes = vec![0u8; 128];
    bytes.extend(b"DICM");
    meta.write(&mut bytes).unwrap();
    bytes.extend(deflater.finish().unwrap());
    bytes
}

#[test]
fn a_deflated_report_that_inflates_past_the_size_bound_is_refused() {
    let small = decode_findings(&deflated_with_padding(1024)).unwrap();
    assert_eq!(small.finding(&hemorrhage()), Ok(Some(true)));
    let bomb = deflated_with_padding(MAX_SR_BYTES as u32);
    assert!(bomb.len() < MAX_SR_BYTES / 100, "{} bytes", bomb.len());
    assert!(matches!(
        decode_findings(&bomb),
        Err(SrReadError::Malformed(
            DatasetError::InflatedTooLarge { .. }
        ))
    ));
}

#[test]
fn a_content_tree_deeper_than_the_bound_is_refused_and_one_at_the_bound_is_read() {
    let bytes = our_sr(&lesion_series(), None).bytes;
    let at_bound = edited(&bytes, |root| {
        append_to_root(root, nested_statement(MAX_CONTENT_DEPTH - 1))
    });
    let report = decode_findings(&at_bound).unwrap();
    assert_eq!(report.finding(&hemorrhage()), Ok(Some(true)));

    let too_deep = edited(&bytes, |root| {
        append_to_root(root, nested_statement(MAX_CONTENT_DEPTH))
    });
    match decode_findings(&too_deep) {
        Err(SrReadError::TooDeep { path }) => {
            assert_eq!(path.split('.').count(), MAX_CONTENT_DEPTH + 2, "{path}")
        }
        other => panic!("{other:?}"),
    }
    // Far deeper: refused by the dataset walker before dicom-object recurses into it.
    let far_too_deep = edited(&bytes, |root| append_to_root(root, nested_statement(200)));
    assert!(matches!(
        decode_findings(&far_too_deep),
        Err(SrReadError::Malformed(DatasetError::TooDeep))
    ));
}

#[test]
fn a_content_tree_with_more_items_than_the_bound_is_refused() {
    let bytes = edited(&our_sr(&lesion_series(), None).bytes, |root| {
        let mut container = content_item("CONTAINER", &code("DCM", "111028", "Image Library"));
        let many = (0..MAX_CONTENT_ITEMS)
            .map(|_| statement(&hemorrhage(), &code("SCT", "373066001", "Yes")))
            .collect();
        set_children(&mut container, many);
        append_to_root(root, container);
    });
    assert!(matches!(
        decode_findings(&bytes),
        Err(SrReadError::TooManyItems)
    ));
}

/// Property: whatever a viewer sends, `decode_findings` returns; 3000 mutations of our report
/// (bytes overwritten, inserted, lengths replaced) never panic, most are refused with a typed
/// error, and one that still reads never turns our "present" into an "absent".
#[test]
fn mutated_reports_never_panic() {
    let base = our_sr(&lesion_series(), Some(0.93)).bytes;
    let mut rng = SplitMix64::new(0x9E37_79B9_7F4A_7C15);
    let mut refused = 0;
    for i in 0..3000 {
        let bytes = mutated(&base, &mut rng);
        match decode_findings(&bytes) {
            Err(_) => refused += 1,
            Ok(report) => assert!(
                !matches!(report.finding(&hemorrhage()), Ok(Some(false))),
                "mutation {i} reads as no hemorrhage"
            ),
        }
    }
    eprintln!("{refused} of 3000 mutated reports refused");
    // Most edits break a length, a VR or a value the reader checks.
    assert!(refused > 1500, "{refused} of 3000 refused");
}
