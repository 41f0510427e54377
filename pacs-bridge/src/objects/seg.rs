//! DICOM Segmentation (PS3.3 A.51), binary, one segment per label, on the exact geometry of the
//! source series: every frame is one source slice of one segment, with that slice's position,
//! the series' orientation and spacing, and a derivation reference to the source instance.
//! Frames with no foreground are omitted.
//!
//! Before a SEG may leave, [`decode`] reads the written bytes back and [`check_geometry`]
//! re-projects every frame through its own position and orientation onto the source grid and
//! compares it with the label map inference produced, voxel for voxel. A SEG whose mask is
//! transposed, flipped or shifted against its headers (the rotated-mask failure) cannot pass.

use super::{
    code, code_item, copy_patient_and_study, items, now_da_tm, part10, put_ds, put_empty, put_seq,
    put_sop_common, put_str, put_u16, referenced_instance, referenced_series, string, Creator,
    ObjectError,
};
use crate::volume::SeriesVolume;
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use radiant_core::volume::{dot, Volume};
use radiant_core::Code;

pub const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// Millimetres a re-projected pixel may sit off a source voxel centre (DS rounding).
const POSITION_TOLERANCE_MM: f64 = 1e-3;
/// Most pixels (all frames together) a SEG we decode may have.
const MAX_DECODED_PIXELS: usize = 1 << 30;
/// Largest SEG file (and inflated dataset) we decode.
const MAX_SEG_BYTES: usize = 256 << 20;
/// Direction cosines of the SEG must match the source's to this.
const COSINE_TOLERANCE: f64 = 1e-5;

/// One label of the model as a segment.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Segment Number; equals the label value in the label map.
    pub number: u8,
    pub label: String,
    pub category: Code,
    pub property_type: Code,
    /// Recommended display colour, sRGB.
    pub colour: [u8; 3],
}

/// A SEG as written, with the identity the SR and the outbox need.
pub type WrittenSeg = super::Written;

/// Encode the SEG of `labels` (one label value per source voxel, in volume order).
/// `uid_seed` names the result (job key): the same seed gives the same UIDs.
pub fn build(
    series: &SeriesVolume,
    labels: &[u8],
    segments: &[Segment],
    creator: &Creator,
    uid_seed: &str,
) -> Result<WrittenSeg, ObjectError> {
    let volume = &series.volume;
    let plane = volume.rows * volume.columns;
    if labels.len() != volume.voxels.len() {
        return Err(ObjectError::Mismatch(format!(
            "label map has {} voxels, the series {}",
            labels.len(),
            volume.voxels.len()
        )));
    }
    if series.sources.len() != volume.slices {
        return Err(ObjectError::Mismatch(format!(
            "{} slice sources for {} slices",
            series.sources.len(),
            volume.slices
        )));
    }
    let frame_of_reference = volume.frame_of_reference_uid.as_deref().ok_or_else(|| {
        ObjectError::Mismatch("the source series has no Frame of Reference UID".into())
    })?;
    if segments.is_empty() {
        return Err(ObjectError::Manifest {
            what: "labels".into(),
        });
    }
    let sop_instance_uid = super::derived_uid(&[uid_seed, "seg-instance"]);
    let series_instance_uid = super::derived_uid(&[uid_seed, "seg-series"]);
    let dimension_uid = super::derived_uid(&[uid_seed, "seg-dimensions"]);
    let (date, time) = now_da_tm();

    // Frames: segment-major, then slice order along the normal (PS3.3 C.8.20.2.3).
    let mut frames: Vec<(u8, usize)> = Vec::new();
    for segment in segments {
        for z in 0..volume.slices {
            let slice = &labels[z * plane..(z + 1) * plane];
            if slice.contains(&segment.number) {
                frames.push((segment.number, z));
            }
        }
    }
    if frames.is_empty() {
        // An empty result still needs one frame (Number of Frames is at least 1).
        frames.push((segments[0].number, 0));
    }

    let mut o = InMemDicomObject::new_empty();
    copy_patient_and_study(&series.header, &mut o);
    put_sop_common(
        &mut o,
        SEGMENTATION_STORAGE,
        &sop_instance_uid,
        &date,
        &time,
        creator,
    );
    // General Series (C.7.3.1) and Segmentation Series (C.8.20.1).
    put_str(&mut o, tags::MODALITY, VR::CS, "SEG");
    put_str(
        &mut o,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &series_instance_uid,
    );
    put_str(&mut o, tags::SERIES_NUMBER, VR::IS, "9901");
    put_str(
        &mut o,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        &format!("{} segmentation", creator.model_name),
    );
    put_str(&mut o, tags::SERIES_DATE, VR::DA, &date);
    put_str(&mut o, tags::SERIES_TIME, VR::TM, &time);
    // Frame of Reference (C.7.4.1).
    put_str(
        &mut o,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        frame_of_reference,
    );
    put_empty(&mut o, tags::POSITION_REFERENCE_INDICATOR, VR::LO);
    // General Image (C.7.6.1) and Segmentation Image (C.8.20.2).
    put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(&mut o, tags::CONTENT_DATE, VR::DA, &date);
    put_str(&mut o, tags::CONTENT_TIME, VR::TM, &time);
    o.put(DataElement::new(
        tags::IMAGE_TYPE,
        VR::CS,
        PrimitiveValue::Strs(["DERIVED", "PRIMARY"].map(String::from).into()),
    ));
    put_str(&mut o, tags::CONTENT_LABEL, VR::CS, "SEGMENTATION");
    put_str(
        &mut o,
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        &format!(
            "{} {} on {}; not for clinical use",
            creator.model_name, creator.model_version, creator.backend
        ),
    );
    put_str(
        &mut o,
        tags::CONTENT_CREATOR_NAME,
        VR::PN,
        "Radiant Edge^Appliance",
    );
    put_str(&mut o, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put_str(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    // Image Pixel (C.7.6.3) as the Segmentation Image module constrains it.
    put_u16(&mut o, tags::SAMPLES_PER_PIXEL, 1);
    put_str(
        &mut o,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    put_u16(&mut o, tags::ROWS, dim(volume.rows)?);
    put_u16(&mut o, tags::COLUMNS, dim(volume.columns)?);
    put_u16(&mut o, tags::BITS_ALLOCATED, 1);
    put_u16(&mut o, tags::BITS_STORED, 1);
    put_u16(&mut o, tags::HIGH_BIT, 0);
    put_u16(&mut o, tags::PIXEL_REPRESENTATION, 0);
    put_seq(
        &mut o,
        tags::SEGMENT_SEQUENCE,
        segments.iter().map(|s| segment_item(s, creator)).collect(),
    );
    // Multi-frame Dimension (C.7.6.17): frames are indexed by segment, then position.
    let mut organization = InMemDicomObject::new_empty();
    put_str(
        &mut organization,
        tags::DIMENSION_ORGANIZATION_UID,
        VR::UI,
        &dimension_uid,
    );
    put_seq(
        &mut o,
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![organization],
    );
    put_str(&mut o, tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D");
    put_seq(
        &mut o,
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            dimension_index(
                &dimension_uid,
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                "Segment Number",
            ),
            dimension_index(
                &dimension_uid,
                tags::IMAGE_POSITION_PATIENT,
                tags::PLANE_POSITION_SEQUENCE,
                "Image Position Patient",
            ),
        ],
    );
    // Multi-frame Functional Groups (C.7.6.16): shared geometry, per-frame position and source.
    put_str(
        &mut o,
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        &frames.len().to_string(),
    );
    put_seq(
        &mut o,
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![shared_groups(volume)],
    );
    put_seq(
        &mut o,
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        frames
            .iter()
            .map(|(segment, z)| per_frame_groups(series, *segment, *z))
            .collect(),
    );
    // Common Instance Reference (C.12.2): every source instance a frame derives from.
    put_seq(
        &mut o,
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![referenced_series(series, {
            let mut slices: Vec<usize> = frames.iter().map(|(_, z)| *z).collect();
            slices.sort_unstable();
            slices
        })],
    );
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(pack_frames(labels, plane, &frames).into()),
    ));
    let bytes = part10(o, SEGMENTATION_STORAGE, &sop_instance_uid, "SEG")?;
    Ok(WrittenSeg {
        bytes,
        sop_instance_uid,
        series_instance_uid,
        frames: frames.len(),
    })
}

fn dim(n: usize) -> Result<u16, ObjectError> {
    u16::try_from(n).map_err(|_| ObjectError::Mismatch(format!("{n} rows or columns")))
}

fn segment_item(segment: &Segment, creator: &Creator) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_u16(&mut item, tags::SEGMENT_NUMBER, u16::from(segment.number));
    put_str(&mut item, tags::SEGMENT_LABEL, VR::LO, &segment.label);
    put_str(&mut item, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
    put_str(
        &mut item,
        tags::SEGMENT_ALGORITHM_NAME,
        VR::LO,
        &format!("{} {}", creator.model_name, creator.model_version),
    );
    put_seq(
        &mut item,
        tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
        vec![code_item(&segment.category)],
    );
    put_seq(
        &mut item,
        tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
        vec![code_item(&segment.property_type)],
    );
    item.put(DataElement::new(
        tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
        VR::US,
        PrimitiveValue::U16(srgb_to_dicom_lab(segment.colour).to_vec().into()),
    ));
    item
}

fn dimension_index(uid: &str, pointer: Tag, group: Tag, label: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::DIMENSION_ORGANIZATION_UID, VR::UI, uid);
    item.put(DataElement::new(
        tags::DIMENSION_INDEX_POINTER,
        VR::AT,
        PrimitiveValue::Tags(vec![pointer].into()),
    ));
    item.put(DataElement::new(
        tags::FUNCTIONAL_GROUP_POINTER,
        VR::AT,
        PrimitiveValue::Tags(vec![group].into()),
    ));
    put_str(&mut item, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
    item
}

fn shared_groups(volume: &Volume) -> InMemDicomObject {
    let mut measures = InMemDicomObject::new_empty();
    // Pixel Spacing is (row spacing, column spacing): between rows first (PS3.3 10.7.1.3).
    put_ds(
        &mut measures,
        tags::PIXEL_SPACING,
        &[volume.spacing[1], volume.spacing[0]],
    );
    put_ds(&mut measures, tags::SLICE_THICKNESS, &[volume.spacing[2]]);
    put_ds(
        &mut measures,
        tags::SPACING_BETWEEN_SLICES,
        &[volume.spacing[2]],
    );
    let mut orientation = InMemDicomObject::new_empty();
    let o: Vec<f64> = volume
        .row_direction
        .iter()
        .chain(&volume.column_direction)
        .copied()
        .collect();
    put_ds(&mut orientation, tags::IMAGE_ORIENTATION_PATIENT, &o);
    let mut shared = InMemDicomObject::new_empty();
    put_seq(&mut shared, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
    put_seq(
        &mut shared,
        tags::PLANE_ORIENTATION_SEQUENCE,
        vec![orientation],
    );
    shared
}

fn per_frame_groups(series: &SeriesVolume, segment: u8, z: usize) -> InMemDicomObject {
    let slice = &series.sources[z];
    let mut content = InMemDicomObject::new_empty();
    content.put(DataElement::new(
        tags::DIMENSION_INDEX_VALUES,
        VR::UL,
        PrimitiveValue::U32(vec![u32::from(segment), z as u32 + 1].into()),
    ));
    let mut position = InMemDicomObject::new_empty();
    put_ds(
        &mut position,
        tags::IMAGE_POSITION_PATIENT,
        &series.volume.position(0.0, 0.0, z as f64),
    );
    let mut identification = InMemDicomObject::new_empty();
    put_u16(
        &mut identification,
        tags::REFERENCED_SEGMENT_NUMBER,
        u16::from(segment),
    );
    // Derivation Image (C.7.6.16.2.6): this frame derives from that source slice.
    let mut source_image = referenced_instance(slice);
    // The mask is on the source's own pixel grid (PS3.3 C.7.6.1.1.x Spatial Locations
    // Preserved): viewers and readers may overlay it without resampling.
    put_str(
        &mut source_image,
        tags::SPATIAL_LOCATIONS_PRESERVED,
        VR::CS,
        "YES",
    );
    if is_multi_frame(series, &slice.sop_instance_uid) {
        source_image.put(DataElement::new(
            tags::REFERENCED_FRAME_NUMBER,
            VR::IS,
            PrimitiveValue::from((slice.frame + 1).to_string()),
        ));
    }
    put_seq(
        &mut source_image,
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code_item(&code(
            "DCM",
            "121322",
            "Source image for image processing operation",
        ))],
    );
    let mut derivation = InMemDicomObject::new_empty();
    put_seq(
        &mut derivation,
        tags::DERIVATION_CODE_SEQUENCE,
        vec![code_item(&code("DCM", "113076", "Segmentation"))],
    );
    put_seq(
        &mut derivation,
        tags::SOURCE_IMAGE_SEQUENCE,
        vec![source_image],
    );
    let mut item = InMemDicomObject::new_empty();
    put_seq(&mut item, tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]);
    put_seq(&mut item, tags::FRAME_CONTENT_SEQUENCE, vec![content]);
    put_seq(&mut item, tags::PLANE_POSITION_SEQUENCE, vec![position]);
    put_seq(
        &mut item,
        tags::SEGMENT_IDENTIFICATION_SEQUENCE,
        vec![identification],
    );
    item
}

fn is_multi_frame(series: &SeriesVolume, sop_instance_uid: &str) -> bool {
    series
        .sources
        .iter()
        .filter(|s| s.sop_instance_uid == sop_instance_uid)
        .take(2)
        .count()
        > 1
}

/// Binary frames packed one bit per pixel, first pixel in the least significant bit, frames
/// back to back without padding (PS3.5 8.1.1, PS3.3 C.8.20.2.1); padded to an even length.
fn pack_frames(labels: &[u8], plane: usize, frames: &[(u8, usize)]) -> Vec<u8> {
    let bits = frames.len() * plane;
    let mut out = vec![0u8; bits.div_ceil(8)];
    for (f, (segment, z)) in frames.iter().enumerate() {
        let slice = &labels[z * plane..(z + 1) * plane];
        for (p, label) in slice.iter().enumerate() {
            if label == segment {
                let bit = f * plane + p;
                out[bit / 8] |= 1 << (bit % 8);
            }
        }
    }
    if out.len() % 2 == 1 {
        out.push(0);
    }
    out
}

/// sRGB to the CIELab encoding of Recommended Display CIELab Value (PS3.3 C.10.7.1.1): L* in
/// 0..100 and a*, b* in -128..127 scaled to 0..65535, D65 white point.
pub fn srgb_to_dicom_lab(rgb: [u8; 3]) -> [u16; 3] {
    let lin = |c: u8| {
        let c = f64::from(c) / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let (r, g, b) = (lin(rgb[0]), lin(rgb[1]), lin(rgb[2]));
    let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.950_47;
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.088_83;
    let f = |t: f64| {
        if t > 216.0 / 24389.0 {
            t.cbrt()
        } else {
            (24389.0 / 27.0 * t + 16.0) / 116.0
        }
    };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    let l = 116.0 * fy - 16.0;
    let a = 500.0 * (fx - fy);
    let bb = 200.0 * (fy - fz);
    let scale = |v: f64, lo: f64, hi: f64| {
        (((v - lo) / (hi - lo)).clamp(0.0, 1.0) * 65535.0).round() as u16
    };
    [
        scale(l, 0.0, 100.0),
        scale(a, -128.0, 127.0),
        scale(bb, -128.0, 127.0),
    ]
}

/// One frame of a SEG as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedFrame {
    pub segment: u8,
    pub position: [f64; 3],
    /// The source instance the frame says it derives from.
    pub source_sop_instance_uid: Option<String>,
    /// One flag per pixel, row by row.
    pub mask: Vec<bool>,
}

/// One segment as the SEG describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedSegment {
    pub number: u8,
    pub label: String,
    pub property_type: Option<Code>,
}

/// A SEG as read back from its bytes: what a viewer would see.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedSeg {
    pub sop_instance_uid: Option<String>,
    pub study_uid: Option<String>,
    /// Series the SEG says it derives from (Referenced Series Sequence).
    pub referenced_series: Vec<String>,
    pub rows: usize,
    pub columns: usize,
    /// Row direction then column direction.
    pub orientation: [f64; 6],
    /// Row spacing, column spacing (as Pixel Spacing).
    pub pixel_spacing: [f64; 2],
    pub frame_of_reference_uid: Option<String>,
    pub segments: Vec<DecodedSegment>,
    pub frames: Vec<DecodedFrame>,
}

impl DecodedSeg {
    pub fn segment_numbers(&self) -> Vec<u8> {
        self.segments.iter().map(|s| s.number).collect()
    }
}

/// Read a binary SEG (Part 10 bytes) back: ours, or one from another tool that puts its
/// geometry in the functional groups as PS3.3 C.8.20 requires. Runs behind a panic boundary:
/// a SEG from outside that makes the parser panic is a [`ObjectError::Decode`] naming it.
pub fn decode(bytes: &[u8]) -> Result<DecodedSeg, ObjectError> {
    radiant_core::contain(|| decode_unguarded(bytes)).unwrap_or_else(|panic| {
        Err(ObjectError::Decode(format!(
            "the decoder panicked ({panic})"
        )))
    })
}

fn decode_unguarded(bytes: &[u8]) -> Result<DecodedSeg, ObjectError> {
    let fail = |what: &str| ObjectError::Decode(what.to_string());
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err(fail("not a Part 10 file"));
    }
    if bytes.len() > MAX_SEG_BYTES {
        return Err(ObjectError::Decode(format!(
            "{} bytes; SEGs above {MAX_SEG_BYTES} bytes are refused",
            bytes.len()
        )));
    }
    // A SEG may come from anyone (a radiologist's tool, a file to import): the bounded walker
    // checks every length and the nesting before dicom-object builds anything.
    let (meta_end, encoding) =
        crate::dataset::check_meta(bytes, MAX_SEG_BYTES).map_err(|e| match e {
            crate::dataset::MetaError::Malformed(m) => {
                ObjectError::Decode(format!("file meta group: {m}"))
            }
            crate::dataset::MetaError::TransferSyntax(t) => {
                ObjectError::Decode(format!("transfer syntax {t} is not one we read"))
            }
        })?;
    crate::dataset::inspect_before_parse(&bytes[meta_end..], encoding, MAX_SEG_BYTES)
        .map_err(|e| ObjectError::Decode(format!("malformed dataset: {e}")))?;
    let file =
        dicom_object::from_reader(&bytes[128..]).map_err(|e| ObjectError::Decode(e.to_string()))?;
    let o: &InMemDicomObject = &file;
    let uint = |obj: &InMemDicomObject, tag: Tag| -> Option<u32> {
        obj.element_opt(tag).ok().flatten()?.to_int::<u32>().ok()
    };
    let rows = uint(o, tags::ROWS).ok_or_else(|| fail("Rows"))? as usize;
    let columns = uint(o, tags::COLUMNS).ok_or_else(|| fail("Columns"))? as usize;
    let count = uint(o, tags::NUMBER_OF_FRAMES).ok_or_else(|| fail("Number of Frames"))? as usize;
    if uint(o, tags::BITS_ALLOCATED) != Some(1) {
        return Err(fail("Bits Allocated is not 1 (not a binary SEG)"));
    }
    let per_frame = items(o, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    // Geometry shared by all frames, or else (as some tools write it) in the first frame's
    // groups; a SEG whose frames differ in orientation or spacing is not on one source grid.
    let shared = items(o, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE).first();
    let group = |sequence: Tag, tag: Tag| {
        shared
            .and_then(|g| nested_floats(g, sequence, tag))
            .or_else(|| nested_floats(per_frame.first()?, sequence, tag))
    };
    let orientation = group(
        tags::PLANE_ORIENTATION_SEQUENCE,
        tags::IMAGE_ORIENTATION_PATIENT,
    )
    .and_then(|v| <[f64; 6]>::try_from(v).ok())
    .ok_or_else(|| fail("Image Orientation (Patient) in the functional groups"))?;
    let pixel_spacing = group(tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING)
        .and_then(|v| <[f64; 2]>::try_from(v).ok())
        .ok_or_else(|| fail("Pixel Spacing in the functional groups"))?;
    let mut segments = Vec::new();
    for s in items(o, tags::SEGMENT_SEQUENCE) {
        let number = uint(s, tags::SEGMENT_NUMBER).ok_or_else(|| fail("Segment Number"))?;
        let number = u8::try_from(number)
            .map_err(|_| ObjectError::Decode(format!("segment number {number} above 255")))?;
        segments.push(DecodedSegment {
            number,
            label: string(s, tags::SEGMENT_LABEL).unwrap_or_default(),
            property_type: items(s, tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE)
                .first()
                .and_then(|c| {
                    Some(Code {
                        scheme: string(c, tags::CODING_SCHEME_DESIGNATOR)?,
                        value: string(c, tags::CODE_VALUE)?,
                        meaning: string(c, tags::CODE_MEANING).unwrap_or_default(),
                    })
                }),
        });
    }
    if per_frame.len() != count {
        return Err(ObjectError::Decode(format!(
            "{} per-frame items for {count} frames",
            per_frame.len()
        )));
    }
    let pixels = o
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .and_then(|e| e.to_bytes().ok())
        .ok_or_else(|| fail("Pixel Data"))?;
    // A SEG may come from outside (a radiologist's label): bound what decoding allocates
    // (one flag per pixel of every frame) before trusting its dimensions.
    let plane = rows * columns;
    if plane == 0 || count == 0 || count.saturating_mul(plane) > MAX_DECODED_PIXELS {
        return Err(ObjectError::Decode(format!(
            "{count} frames of {rows}x{columns} pixels: empty, or more than {MAX_DECODED_PIXELS} \
             pixels in all"
        )));
    }
    if pixels.len() < (count * plane).div_ceil(8) {
        return Err(ObjectError::Decode(format!(
            "Pixel Data has {} bytes for {count} frames of {rows}x{columns}",
            pixels.len()
        )));
    }
    // A SEG of one segment may name it once for all frames (highdicom does).
    let referenced_segment = |groups: &InMemDicomObject| {
        items(groups, tags::SEGMENT_IDENTIFICATION_SEQUENCE)
            .first()
            .and_then(|s| uint(s, tags::REFERENCED_SEGMENT_NUMBER))
    };
    let shared_segment = shared.and_then(referenced_segment);
    let mut frames = Vec::with_capacity(count);
    for (f, item) in per_frame.iter().enumerate() {
        let segment = referenced_segment(item)
            .or(shared_segment)
            .ok_or_else(|| fail("Referenced Segment Number"))?;
        let segment = u8::try_from(segment).map_err(|_| {
            ObjectError::Decode(format!(
                "frame {f}: referenced segment number {segment} above 255"
            ))
        })?;
        let position = nested_floats(
            item,
            tags::PLANE_POSITION_SEQUENCE,
            tags::IMAGE_POSITION_PATIENT,
        )
        .and_then(|v| <[f64; 3]>::try_from(v).ok())
        .ok_or_else(|| fail("per-frame Image Position (Patient)"))?;
        let source_sop_instance_uid = items(item, tags::DERIVATION_IMAGE_SEQUENCE)
            .first()
            .and_then(|d| items(d, tags::SOURCE_IMAGE_SEQUENCE).first().cloned())
            .and_then(|s| {
                s.element_opt(tags::REFERENCED_SOP_INSTANCE_UID)
                    .ok()
                    .flatten()?
                    .to_str()
                    .ok()
                    .map(|u| u.trim_end_matches(['\0', ' ']).to_string())
            });
        let mask = (0..plane)
            .map(|p| {
                let bit = f * plane + p;
                pixels[bit / 8] & (1 << (bit % 8)) != 0
            })
            .collect();
        frames.push(DecodedFrame {
            segment,
            position,
            source_sop_instance_uid,
            mask,
        });
    }
    Ok(DecodedSeg {
        sop_instance_uid: string(o, tags::SOP_INSTANCE_UID),
        study_uid: string(o, tags::STUDY_INSTANCE_UID),
        referenced_series: items(o, tags::REFERENCED_SERIES_SEQUENCE)
            .iter()
            .filter_map(|s| string(s, tags::SERIES_INSTANCE_UID))
            .collect(),
        rows,
        columns,
        orientation,
        pixel_spacing,
        frame_of_reference_uid: string(o, tags::FRAME_OF_REFERENCE_UID),
        segments,
        frames,
    })
}

/// The numbers of a nested attribute; `None` when any is not finite (a NaN compares false with
/// everything and would slip through the geometry checks), as for source volumes.
fn nested_floats(object: &InMemDicomObject, sequence: Tag, tag: Tag) -> Option<Vec<f64>> {
    items(object, sequence)
        .first()?
        .element_opt(tag)
        .ok()
        .flatten()?
        .to_multi_float64()
        .ok()
        .filter(|v| v.iter().all(|x| x.is_finite()))
}

/// Re-project every frame of `seg` onto the grid of `series` through the frame's own position,
/// the shared orientation and spacing, and compare with `labels` (what inference produced, one
/// value per source voxel). Any difference in frame of reference, orientation, spacing,
/// position, source reference or mask is an error that says where.
pub fn check_geometry(
    seg: &DecodedSeg,
    series: &crate::volume::SeriesVolume,
    labels: &[u8],
) -> Result<(), ObjectError> {
    let v = &series.volume;
    let reprojected = reproject(seg, series).map_err(|e| match e {
        ObjectError::Reprojection(reason) => ObjectError::Geometry(reason),
        other => other,
    })?;
    if labels.len() != reprojected.len() {
        return Err(ObjectError::Geometry(format!(
            "label map has {} voxels, the source {}",
            labels.len(),
            reprojected.len()
        )));
    }
    let plane = v.rows * v.columns;
    let differing: Vec<usize> = reprojected
        .iter()
        .zip(labels)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect();
    if let Some(first) = differing.first() {
        return Err(ObjectError::Geometry(format!(
            "{} voxels differ from the inference result, the first on slice {}",
            differing.len(),
            first / plane + 1
        )));
    }
    Ok(())
}

/// The label map of `seg` on the grid of `series` (segment number per source voxel, 0 for
/// none): every frame goes through its own position and the SEG's orientation and spacing,
/// which must put it exactly on a source slice that it also references. A SEG that is not on
/// the source grid (other frame of reference, orientation, spacing, off-grid or mis-referenced
/// frames, overlapping segments) is refused with the reason.
pub fn reproject(
    seg: &DecodedSeg,
    series: &crate::volume::SeriesVolume,
) -> Result<Vec<u8>, ObjectError> {
    reproject_resolving(seg, series, None)
}

/// [`reproject`], except that where segments overlap, `priority` (of a segment number) picks
/// the segment whose voxel it is: the higher wins, as readers' tools paint a lesion over the
/// organ it lies in; segments of equal priority that overlap are refused.
pub fn reproject_resolving(
    seg: &DecodedSeg,
    series: &crate::volume::SeriesVolume,
    priority: Option<&dyn Fn(u8) -> u32>,
) -> Result<Vec<u8>, ObjectError> {
    let v = &series.volume;
    let bad = |reason: String| Err(ObjectError::Reprojection(reason));
    if seg.frame_of_reference_uid != v.frame_of_reference_uid {
        return bad("Frame of Reference UID differs from the source's".into());
    }
    if (seg.rows, seg.columns) != (v.rows, v.columns) {
        return bad(format!(
            "frames are {}x{}, source slices {}x{}",
            seg.rows, seg.columns, v.rows, v.columns
        ));
    }
    let row_dir = [seg.orientation[0], seg.orientation[1], seg.orientation[2]];
    let col_dir = [seg.orientation[3], seg.orientation[4], seg.orientation[5]];
    let expected: Vec<f64> = v
        .row_direction
        .iter()
        .chain(&v.column_direction)
        .copied()
        .collect();
    if seg
        .orientation
        .iter()
        .zip(&expected)
        .any(|(a, b)| (a - b).abs() > COSINE_TOLERANCE)
    {
        return bad(format!(
            "orientation {:?} differs from the source's {:?}",
            seg.orientation, expected
        ));
    }
    let [row_spacing, column_spacing] = seg.pixel_spacing;
    if (row_spacing - v.spacing[1]).abs() > 1e-6 || (column_spacing - v.spacing[0]).abs() > 1e-6 {
        return bad(format!(
            "pixel spacing {:?} differs from the source's [{}, {}]",
            seg.pixel_spacing, v.spacing[1], v.spacing[0]
        ));
    }
    let plane = v.rows * v.columns;
    let mut reprojected = vec![0u8; v.voxels.len()];
    for (f, frame) in seg.frames.iter().enumerate() {
        if !seg.segments.iter().any(|s| s.number == frame.segment) {
            return bad(format!(
                "frame {} names segment {} which the SEG does not describe",
                f + 1,
                frame.segment
            ));
        }
        // Where the frame's first pixel lies on the source grid.
        let (x0, y0, z0) = to_source_index(v, frame.position);
        let z = z0.round();
        let off_grid = (x0.abs() * v.spacing[0]).max(y0.abs() * v.spacing[1]);
        if off_grid > POSITION_TOLERANCE_MM
            || ((z0 - z) * v.spacing[2]).abs() > POSITION_TOLERANCE_MM
            || z < 0.0
            || z as usize >= v.slices
        {
            return bad(format!(
                "frame {} at {:?} is not on a source slice",
                f + 1,
                frame.position
            ));
        }
        let z = z as usize;
        if frame.source_sop_instance_uid.as_deref()
            != Some(series.sources[z].sop_instance_uid.as_str())
        {
            return bad(format!(
                "frame {} lies on source slice {} but references another instance",
                f + 1,
                z + 1
            ));
        }
        // Pixel (c, r) of the frame sits at position + c * column spacing * row direction
        // + r * row spacing * column direction; with the checked orientation and spacing that
        // is source voxel (c, r, z). Written out so that a change to the checks above cannot
        // silently leave a transposed mapping here.
        for (p, set) in frame.mask.iter().enumerate() {
            if !set {
                continue;
            }
            let (c, r) = ((p % seg.columns) as f64, (p / seg.columns) as f64);
            let mut at = frame.position;
            for i in 0..3 {
                at[i] += c * column_spacing * row_dir[i] + r * row_spacing * col_dir[i];
            }
            let (x, y, _) = to_source_index(v, at);
            let (x, y) = (x.round(), y.round());
            // Each check above allows a little slack; together they can still carry a pixel
            // past the last column or row (tiny spacing, an offset under the tolerance).
            if !(x >= 0.0 && x < v.columns as f64 && y >= 0.0 && y < v.rows as f64) {
                return bad(format!(
                    "frame {} pixel {} maps outside source slice {} (column {x}, row {y})",
                    f + 1,
                    p + 1,
                    z + 1
                ));
            }
            let (x, y) = (x as usize, y as usize);
            let voxel = z * plane + y * v.columns + x;
            let held = reprojected[voxel];
            if held != 0 && held != frame.segment {
                match priority.map(|p| (p(held), p(frame.segment))) {
                    Some((a, b)) if a > b => continue,
                    Some((a, b)) if b > a => {}
                    Some(_) => {
                        return bad(format!(
                            "segments {held} and {} overlap on slice {} and their labels have \
                             the same priority",
                            frame.segment,
                            z + 1
                        ))
                    }
                    None => {
                        return bad(format!(
                            "segments {held} and {} overlap on slice {}",
                            frame.segment,
                            z + 1
                        ))
                    }
                }
            }
            reprojected[voxel] = frame.segment;
        }
    }
    Ok(reprojected)
}

/// Fractional voxel index of a patient-space point on the volume's grid: the inverse of
/// `Volume::position`. Row and column directions are unit vectors but need not be exactly
/// orthogonal (`volume::direction_cosines` allows a cosine of 0.01 between them), so the
/// in-plane part solves the 2x2 system of their Gram matrix instead of projecting on each:
/// a projection would move a pixel of row r by r x that cosine columns (5 on a 512-row image).
fn to_source_index(v: &Volume, point: [f64; 3]) -> (f64, f64, f64) {
    let d = [
        point[0] - v.origin[0],
        point[1] - v.origin[1],
        point[2] - v.origin[2],
    ];
    let (along_row, along_column) = (dot(d, v.row_direction), dot(d, v.column_direction));
    let k = dot(v.row_direction, v.column_direction);
    let det = 1.0 - k * k;
    (
        (along_row - k * along_column) / det / v.spacing[0],
        (along_column - k * along_row) / det / v.spacing[1],
        dot(d, v.normal) / v.spacing[2],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_puts_the_first_pixel_in_the_lowest_bit_and_pads_to_even() {
        // Two frames of 2x2 (4 bits each): frame 1 = segment 1 on slice 0, frame 2 = segment 1
        // on slice 1.
        let labels = [1, 0, 0, 1, 0, 1, 1, 1];
        let packed = pack_frames(&labels, 4, &[(1, 0), (1, 1)]);
        assert_eq!(packed, vec![0b1110_1001, 0]);
    }

    #[test]
    fn colours_map_to_their_cielab_values() {
        assert_eq!(srgb_to_dicom_lab([255, 255, 255])[0], 65535);
        assert_eq!(srgb_to_dicom_lab([0, 0, 0]), [0, 32896, 32896]);
        // Pure red: L* 53.2, a* 80.1, b* 67.2.
        let [l, a, b] = srgb_to_dicom_lab([255, 0, 0]);
        assert!((f64::from(l) / 65535.0 * 100.0 - 53.24).abs() < 0.1);
        assert!((f64::from(a) / 65535.0 * 255.0 - 128.0 - 80.09).abs() < 0.2);
        assert!((f64::from(b) / 65535.0 * 255.0 - 128.0 - 67.20).abs() < 0.2);
    }

    #[test]
    fn a_seg_that_is_not_part10_or_declares_no_pixels_is_a_decode_error_not_a_panic() {
        assert!(matches!(decode(b"garbage"), Err(ObjectError::Decode(_))));
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        bytes.extend_from_slice(&[0xFF; 64]);
        assert!(matches!(decode(&bytes), Err(ObjectError::Decode(_))));
    }

    /// Property: `to_source_index` inverts `Volume::position` on every grid `volume::build`
    /// accepts, skewed ones included (directions 0.01 from orthogonal): the far corner of a
    /// 512 x 512 slice comes back to its own voxel, not 5 columns off.
    #[test]
    fn voxel_indices_invert_positions_on_skewed_grids() {
        let k: f64 = 0.0099;
        let v = Volume {
            columns: 512,
            rows: 512,
            slices: 40,
            spacing: [0.7, 0.45, 2.5],
            origin: [-120.0, 33.0, 7.5],
            row_direction: [1.0, 0.0, 0.0],
            column_direction: [k, (1.0 - k * k).sqrt(), 0.0],
            normal: [0.0, 0.0, 1.0],
            voxels: Vec::new(),
            modality: "CT".into(),
            frame_of_reference_uid: None,
        };
        for (x, y, z) in [(0.0, 0.0, 0.0), (511.0, 511.0, 39.0), (3.0, 500.0, 17.0)] {
            let (a, b, c) = to_source_index(&v, v.position(x, y, z));
            assert!(
                (a - x).abs() < 1e-9 && (b - y).abs() < 1e-9 && (c - z).abs() < 1e-9,
                "({x}, {y}, {z}) came back as ({a}, {b}, {c})"
            );
        }
    }

    #[test]
    fn decimal_positions_survive_the_round_trip() {
        assert_eq!(crate::objects::ds(-125.0).parse::<f64>().unwrap(), -125.0);
    }
}
