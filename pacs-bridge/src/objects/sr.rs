//! The result as a Comprehensive SR (PS3.3 A.35.3) with TID 1500 "Measurement Report" content
//! (PS3.16): the device that observed (TID 1004), the procedure reported, an image library of
//! the source instances (TID 1600), one volumetric measurement group per segment (TID 1411:
//! tracking identifiers, the referenced SEG segment, its source series, its volume in ml, and
//! the algorithm, TID 4019), one measurement group for the study-level finding's probability
//! (TID 1501), and the finding as a qualitative evaluation.

use super::{
    code, code_item, copy_patient_and_study, derived_uid, now_da_tm, part10, put_ds, put_seq,
    put_sop_common, put_str, put_u16, seg::SEGMENTATION_STORAGE, Creator, ObjectError, MODEL_NAME,
};
use crate::volume::SeriesVolume;
use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use radiant_core::Code;

pub const COMPREHENSIVE_SR_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.88.33";
/// Our private coding scheme (PS3.16 8.2: designators starting with "99" are local).
pub const LOCAL_SCHEME: &str = "99RADEDGE";

/// A segment of the SEG with its measured volume.
#[derive(Debug, Clone)]
pub struct MeasuredSegment {
    pub number: u8,
    pub label: String,
    pub property_type: Code,
    pub volume_ml: f64,
}

/// A study-level classification finding.
#[derive(Debug, Clone)]
pub struct Finding {
    pub code: Code,
    pub probability: f64,
    /// Probability at and above which the finding is reported present.
    pub threshold: f64,
}

/// What the report says.
#[derive(Debug, Clone)]
pub struct Report {
    pub procedure: Code,
    pub seg_sop_instance_uid: String,
    pub seg_series_instance_uid: String,
    pub segments: Vec<MeasuredSegment>,
    pub finding: Option<Finding>,
}

#[derive(Debug, Clone)]
pub struct WrittenSr {
    pub bytes: Vec<u8>,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
}

/// Encode the report about `source`. `uid_seed` names the result, as for the SEG.
pub fn build(
    series: &SeriesVolume,
    report: &Report,
    creator: &Creator,
    uid_seed: &str,
) -> Result<WrittenSr, ObjectError> {
    let sop_instance_uid = derived_uid(&[uid_seed, "sr-instance"]);
    let series_instance_uid = derived_uid(&[uid_seed, "sr-series"]);
    let (date, time) = now_da_tm();

    let mut o = InMemDicomObject::new_empty();
    copy_patient_and_study(&series.header, &mut o);
    put_sop_common(
        &mut o,
        COMPREHENSIVE_SR_STORAGE,
        &sop_instance_uid,
        &date,
        &time,
        creator,
    );
    let mut local = InMemDicomObject::new_empty();
    put_str(
        &mut local,
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        LOCAL_SCHEME,
    );
    put_str(
        &mut local,
        tags::CODING_SCHEME_NAME,
        VR::ST,
        "Radiant Edge local codes",
    );
    put_seq(
        &mut o,
        tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
        vec![local],
    );
    // SR Document Series (C.17.1) and General Equipment (C.7.5.1).
    put_str(&mut o, tags::MODALITY, VR::CS, "SR");
    put_str(
        &mut o,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &series_instance_uid,
    );
    put_str(&mut o, tags::SERIES_NUMBER, VR::IS, "9902");
    put_str(
        &mut o,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        &format!("{} report", creator.model_name),
    );
    put_seq(
        &mut o,
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        vec![],
    );
    // SR Document General (C.17.2).
    put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(&mut o, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put_str(&mut o, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put_str(&mut o, tags::CONTENT_DATE, VR::DA, &date);
    put_str(&mut o, tags::CONTENT_TIME, VR::TM, &time);
    put_seq(&mut o, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]);
    put_seq(
        &mut o,
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![evidence(series, report)],
    );
    // SR Document Content (C.17.3): the root container and its tree.
    put_str(&mut o, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    put_seq(
        &mut o,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code_item(&dcm("126000", "Imaging Measurement Report"))],
    );
    put_str(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    let mut template = InMemDicomObject::new_empty();
    put_str(&mut template, tags::MAPPING_RESOURCE, VR::CS, "DCMR");
    put_str(&mut template, tags::TEMPLATE_IDENTIFIER, VR::CS, "1500");
    put_seq(&mut o, tags::CONTENT_TEMPLATE_SEQUENCE, vec![template]);

    let mut content = vec![
        // TID 1204 Language of Content Item and Descendants.
        code_value(
            "HAS CONCEPT MOD",
            &dcm("121049", "Language of Content Item and Descendants"),
            &code("RFC5646", "en-US", "English (United States)"),
        ),
    ];
    // TID 1001/1004 Observation Context: the device that produced the content.
    content.push(code_value(
        "HAS OBS CONTEXT",
        &dcm("121005", "Observer Type"),
        &dcm("121007", "Device"),
    ));
    content.push(uidref(
        "HAS OBS CONTEXT",
        &dcm("121012", "Device Observer UID"),
        &derived_uid(&["device", &creator.device_serial]),
    ));
    content.push(text(
        "HAS OBS CONTEXT",
        &dcm("121013", "Device Observer Name"),
        "Radiant Edge",
    ));
    content.push(text(
        "HAS OBS CONTEXT",
        &dcm("121014", "Device Observer Manufacturer"),
        super::MANUFACTURER,
    ));
    content.push(text(
        "HAS OBS CONTEXT",
        &dcm("121015", "Device Observer Model Name"),
        MODEL_NAME,
    ));
    content.push(text(
        "HAS OBS CONTEXT",
        &dcm("121016", "Device Observer Serial Number"),
        &creator.device_serial,
    ));
    content.push(code_value(
        "HAS CONCEPT MOD",
        &dcm("121058", "Procedure reported"),
        &report.procedure,
    ));
    content.push(image_library(series));
    content.push(measurements(series, report, creator, uid_seed));
    if let Some(finding) = &report.finding {
        let present = finding.probability >= finding.threshold;
        content.push(container(
            "CONTAINS",
            &code("UMLS", "C0034375", "Qualitative Evaluations"),
            vec![code_value(
                "CONTAINS",
                &finding.code,
                &if present {
                    code("SCT", "373066001", "Yes")
                } else {
                    code("SCT", "373067005", "No")
                },
            )],
        ));
    }
    put_seq(&mut o, tags::CONTENT_SEQUENCE, content);
    let bytes = part10(o, COMPREHENSIVE_SR_STORAGE, &sop_instance_uid, "SR")?;
    Ok(WrittenSr {
        bytes,
        sop_instance_uid,
        series_instance_uid,
    })
}

fn dcm(value: &str, meaning: &str) -> Code {
    code("DCM", value, meaning)
}

/// Hierarchical SOP Instance Reference (C.17.2.1): the source instances and the SEG.
fn evidence(series: &SeriesVolume, report: &Report) -> InMemDicomObject {
    let mut study = InMemDicomObject::new_empty();
    put_str(
        &mut study,
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        &series.study_uid,
    );
    let mut seg_ref = InMemDicomObject::new_empty();
    put_str(
        &mut seg_ref,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        SEGMENTATION_STORAGE,
    );
    put_str(
        &mut seg_ref,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        &report.seg_sop_instance_uid,
    );
    let mut seg_series = InMemDicomObject::new_empty();
    put_str(
        &mut seg_series,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &report.seg_series_instance_uid,
    );
    put_seq(
        &mut seg_series,
        tags::REFERENCED_SOP_SEQUENCE,
        vec![seg_ref],
    );
    let mut source_series = InMemDicomObject::new_empty();
    put_str(
        &mut source_series,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &series.series_uid,
    );
    put_seq(
        &mut source_series,
        tags::REFERENCED_SOP_SEQUENCE,
        source_instances(series)
            .into_iter()
            .map(|(class, instance)| sop_ref(class, instance, None))
            .collect(),
    );
    put_seq(
        &mut study,
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![source_series, seg_series],
    );
    study
}

/// Distinct source instances, in slice order.
fn source_instances(series: &SeriesVolume) -> Vec<(&str, &str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for s in &series.sources {
        if !out.iter().any(|(_, i)| *i == s.sop_instance_uid) {
            out.push((&s.sop_class_uid, &s.sop_instance_uid));
        }
    }
    out
}

fn sop_ref(class: &str, instance: &str, segment: Option<u8>) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class);
    put_str(
        &mut item,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        instance,
    );
    if let Some(n) = segment {
        put_u16(&mut item, tags::REFERENCED_SEGMENT_NUMBER, u16::from(n));
    }
    item
}

/// TID 1600 Image Library: one entry per source instance.
fn image_library(series: &SeriesVolume) -> InMemDicomObject {
    let images = source_instances(series)
        .into_iter()
        .map(|(class, instance)| {
            let mut item = content_item("CONTAINS", "IMAGE", None);
            put_seq(
                &mut item,
                tags::REFERENCED_SOP_SEQUENCE,
                vec![sop_ref(class, instance, None)],
            );
            item
        })
        .collect();
    container(
        "CONTAINS",
        &dcm("111028", "Image Library"),
        vec![container(
            "CONTAINS",
            &dcm("126200", "Image Library Group"),
            images,
        )],
    )
}

/// TID 1500 row 6: Imaging Measurements, one TID 1411 group per segment and a TID 1501 group
/// for the study-level finding.
fn measurements(
    series: &SeriesVolume,
    report: &Report,
    creator: &Creator,
    uid_seed: &str,
) -> InMemDicomObject {
    let mut groups = Vec::new();
    for segment in &report.segments {
        let mut children = vec![
            text(
                "CONTAINS",
                &dcm("112039", "Tracking Identifier"),
                &segment.label,
            ),
            uidref(
                "CONTAINS",
                &dcm("112040", "Tracking Unique Identifier"),
                &derived_uid(&[uid_seed, "tracking", &segment.number.to_string()]),
            ),
            code_value(
                "CONTAINS",
                &dcm("121071", "Finding"),
                &segment.property_type,
            ),
        ];
        children.extend(algorithm(creator));
        let mut referenced = content_item(
            "CONTAINS",
            "IMAGE",
            Some(&dcm("121191", "Referenced Segment")),
        );
        put_seq(
            &mut referenced,
            tags::REFERENCED_SOP_SEQUENCE,
            vec![sop_ref(
                SEGMENTATION_STORAGE,
                &report.seg_sop_instance_uid,
                Some(segment.number),
            )],
        );
        children.push(referenced);
        children.push(uidref(
            "CONTAINS",
            &dcm("121232", "Source series for segmentation"),
            &series.series_uid,
        ));
        children.push(num(
            "CONTAINS",
            &code("SCT", "118565006", "Volume"),
            segment.volume_ml,
            &code("UCUM", "ml", "milliliter"),
        ));
        groups.push(container(
            "CONTAINS",
            &dcm("125007", "Measurement Group"),
            children,
        ));
    }
    if let Some(finding) = &report.finding {
        let mut children = vec![
            text(
                "CONTAINS",
                &dcm("112039", "Tracking Identifier"),
                &format!("{} (study level)", finding.code.meaning),
            ),
            uidref(
                "CONTAINS",
                &dcm("112040", "Tracking Unique Identifier"),
                &derived_uid(&[uid_seed, "tracking", "finding"]),
            ),
            code_value("CONTAINS", &dcm("121071", "Finding"), &finding.code),
        ];
        children.extend(algorithm(creator));
        children.push(num(
            "CONTAINS",
            &code(LOCAL_SCHEME, "P-FINDING", "Probability of finding"),
            finding.probability,
            &code("UCUM", "1", "no units"),
        ));
        groups.push(container(
            "CONTAINS",
            &dcm("125007", "Measurement Group"),
            children,
        ));
    }
    container("CONTAINS", &dcm("126010", "Imaging Measurements"), groups)
}

/// TID 4019 Algorithm Identification: name, version, and the backend as a parameter.
fn algorithm(creator: &Creator) -> Vec<InMemDicomObject> {
    vec![
        text(
            "HAS CONCEPT MOD",
            &dcm("111001", "Algorithm Name"),
            &creator.model_name,
        ),
        text(
            "HAS CONCEPT MOD",
            &dcm("111003", "Algorithm Version"),
            &creator.model_version,
        ),
        text(
            "HAS CONCEPT MOD",
            &dcm("111002", "Algorithm Parameters"),
            &format!("backend={}", creator.backend),
        ),
    ]
}

fn content_item(relationship: &str, value_type: &str, concept: Option<&Code>) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::RELATIONSHIP_TYPE, VR::CS, relationship);
    put_str(&mut item, tags::VALUE_TYPE, VR::CS, value_type);
    if let Some(c) = concept {
        put_seq(
            &mut item,
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code_item(c)],
        );
    }
    item
}

fn container(
    relationship: &str,
    concept: &Code,
    children: Vec<InMemDicomObject>,
) -> InMemDicomObject {
    let mut item = content_item(relationship, "CONTAINER", Some(concept));
    put_str(&mut item, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    if !children.is_empty() {
        put_seq(&mut item, tags::CONTENT_SEQUENCE, children);
    }
    item
}

fn text(relationship: &str, concept: &Code, value: &str) -> InMemDicomObject {
    let mut item = content_item(relationship, "TEXT", Some(concept));
    put_str(&mut item, tags::TEXT_VALUE, VR::UT, value);
    item
}

fn uidref(relationship: &str, concept: &Code, value: &str) -> InMemDicomObject {
    let mut item = content_item(relationship, "UIDREF", Some(concept));
    put_str(&mut item, tags::UID, VR::UI, value);
    item
}

fn code_value(relationship: &str, concept: &Code, value: &Code) -> InMemDicomObject {
    let mut item = content_item(relationship, "CODE", Some(concept));
    put_seq(
        &mut item,
        tags::CONCEPT_CODE_SEQUENCE,
        vec![code_item(value)],
    );
    item
}

fn num(relationship: &str, concept: &Code, value: f64, unit: &Code) -> InMemDicomObject {
    let mut measured = InMemDicomObject::new_empty();
    put_seq(
        &mut measured,
        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
        vec![code_item(unit)],
    );
    put_ds(&mut measured, tags::NUMERIC_VALUE, &[value]);
    let mut item = content_item(relationship, "NUM", Some(concept));
    put_seq(&mut item, tags::MEASURED_VALUE_SEQUENCE, vec![measured]);
    item
}
