//! SEG decode and re-projection (`pacs_bridge::objects::seg`): what case intake does with a
//! radiologist's SEG and what export does with ours before it may leave.
//!
//! The input is a Part 10 file. When it decodes, a source series is made up from the SEG's
//! own geometry (its frame of reference, orientation, spacing, and a slice for each frame
//! position along the normal) and the SEG is re-projected onto it.
//!
//! Properties: `decode` and `reproject` return a value or a typed `ObjectError`, never panic,
//! never allocate beyond their bounds; a re-projected label map has one value per voxel, each
//! 0 or a segment the SEG describes; and when it holds labels on a sane grid (coordinates
//! within 10 m, spacings 0.01-100 mm) it round-trips through our writer: `seg::build` of
//! those labels on that series decodes again and passes `check_geometry` against them, the
//! check every exported SEG must pass.

use dicom_object::InMemDicomObject;
use pacs_bridge::objects::seg::{self, DecodedSeg, Segment};
use pacs_bridge::objects::Creator;
use pacs_bridge::volume::{self, SeriesVolume, SliceSource};
use radiant_core::volume::{dot, Volume};
use radiant_core::Code;

/// Most slices and voxels of the made-up source series.
const MAX_SLICES: usize = 64;
const MAX_VOXELS: usize = 1 << 22;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        check(data);
    });
}

fn check(data: &[u8]) {
    let show = radiant_fuzz::show_results();
    let decoded = seg::decode(data);
    if show {
        eprintln!("decode: {:?}", decoded.as_ref().map(|s| s.frames.len()));
    }
    let Ok(decoded) = decoded else {
        return;
    };
    let Some(series) = source_series(&decoded) else {
        return;
    };
    let labels = seg::reproject(&decoded, &series);
    if show {
        eprintln!(
            "reproject: {:?}",
            labels
                .as_ref()
                .map(|l| l.iter().filter(|v| **v != 0).count())
        );
    }
    let Ok(labels) = labels else {
        return;
    };
    assert_eq!(labels.len(), series.volume.voxels.len());
    let numbers = decoded.segment_numbers();
    assert!(labels.iter().all(|l| *l == 0 || numbers.contains(l)));
    // Our writer needs a frame of reference (export refuses a series without one).
    let has_frame_of_reference = series.volume.frame_of_reference_uid.is_some();
    if !labels.iter().any(|l| *l != 0) || !has_frame_of_reference || !sane(&series.volume) {
        return;
    }
    let segments: Vec<Segment> = numbers
        .iter()
        .filter(|n| **n != 0)
        .enumerate()
        .filter(|(i, n)| !numbers[..*i].contains(n))
        .map(|(_, &number)| Segment {
            number,
            label: format!("segment {number}"),
            category: code("91723000", "Anatomical Structure"),
            property_type: code("12738006", "Brain"),
            colour: [255, 0, 0],
        })
        .collect();
    let creator = Creator {
        model_name: "fuzz".into(),
        model_version: "0.0.0".into(),
        backend: "none".into(),
        device_serial: "0".into(),
        software_version: "0".into(),
    };
    let written = seg::build(&series, &labels, &segments, &creator, "fuzz")
        .expect("our writer encodes labels re-projected from a SEG");
    let again = seg::decode(&written.bytes).expect("a SEG we wrote decodes");
    seg::check_geometry(&again, &series, &labels)
        .expect("a SEG we wrote re-projects onto its own labels");
}

fn code(value: &str, meaning: &str) -> Code {
    Code {
        scheme: "SCT".into(),
        value: value.into(),
        meaning: meaning.into(),
    }
}

/// Coordinates within 10 m and spacings of 0.01-100 mm: the grids a scanner writes, where
/// 16-character decimal strings (DS) keep positions well within the 1 µm tolerance.
fn sane(v: &Volume) -> bool {
    v.origin.iter().all(|x| x.abs() < 1e4)
        && v.spacing.iter().all(|s| (0.01..=100.0).contains(s))
        && v.slices as f64 * v.spacing[2] < 1e4
        && (v.rows.max(v.columns) as f64) * v.spacing[0].max(v.spacing[1]) < 1e4
}

/// A source series with the SEG's geometry, as `volume::build` could have produced it
/// (direction cosines through `volume::direction_cosines`, positive spacings, a regular stack
/// along the normal), or `None`.
fn source_series(s: &DecodedSeg) -> Option<SeriesVolume> {
    let [row, column, normal] = volume::direction_cosines(&s.orientation)?;
    let [row_spacing, column_spacing] = s.pixel_spacing;
    if !(row_spacing > 0.0 && column_spacing > 0.0) {
        return None;
    }
    let mut along: Vec<(f64, usize)> = s
        .frames
        .iter()
        .enumerate()
        .map(|(i, f)| (dot(f.position, normal), i))
        .collect();
    along.sort_by(|a, b| a.0.total_cmp(&b.0));
    let first = *along.first()?;
    let gap = along
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .filter(|g| *g > 1e-3)
        .fold(f64::INFINITY, f64::min);
    let gap = if gap.is_finite() { gap } else { 1.0 };
    let span = ((along.last()?.0 - first.0) / gap).round();
    if !(0.0..MAX_SLICES as f64).contains(&span) {
        return None;
    }
    let slices = span as usize + 1;
    let voxels = s.rows.checked_mul(s.columns)?.checked_mul(slices)?;
    if voxels > MAX_VOXELS {
        return None;
    }
    let origin = s.frames[first.1].position;
    let sources = (0..slices)
        .map(|z| {
            let frame = along
                .iter()
                .find(|(d, _)| ((d - first.0) / gap).round() as usize == z)
                .map(|(_, i)| &s.frames[*i]);
            SliceSource {
                sop_instance_uid: frame
                    .and_then(|f| f.source_sop_instance_uid.clone())
                    .unwrap_or_else(|| format!("1.2.3.{z}")),
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                frame: 0,
                position: std::array::from_fn(|k| origin[k] + z as f64 * gap * normal[k]),
            }
        })
        .collect();
    Some(SeriesVolume {
        volume: Volume {
            columns: s.columns,
            rows: s.rows,
            slices,
            spacing: [column_spacing, row_spacing, gap],
            origin,
            row_direction: row,
            column_direction: column,
            normal,
            voxels: vec![0.0; voxels],
            modality: "CT".into(),
            frame_of_reference_uid: s.frame_of_reference_uid.clone(),
        },
        header: InMemDicomObject::new_empty(),
        study_uid: s.study_uid.clone().unwrap_or_else(|| "1.2.3".into()),
        series_uid: s
            .referenced_series
            .first()
            .cloned()
            .unwrap_or_else(|| "1.2.3.4".into()),
        sources,
    })
}
