//! The result objects we write, on real series: every SEG and SR passes dicom3tools' `dciodvfy`
//! without errors, highdicom (an independent reader) gets exactly our mask back on the source
//! instances, and the read-back geometry check refuses every deliberately wrong geometry.

mod common;

use common::{code, creator, mutated};
use pacs_bridge::objects::seg::{self, Segment};
use pacs_bridge::objects::sr::{self, Finding, MeasuredSegment, Report};
use pacs_bridge::objects::ObjectError;
use pacs_bridge::objects::{glyphs, sc};
use pacs_bridge::volume::{build, Limits, SeriesVolume, SliceSource};
use radiant_core::rng::SplitMix64;
use radiant_core::volume::Volume;
use std::path::{Path, PathBuf};
use std::process::Command;
use test_support::dciodvfy;
use test_support::fixtures::{ct_series, pydicom};

fn segments() -> Vec<Segment> {
    vec![
        Segment {
            number: 1,
            label: "intracranial space".into(),
            category: code("SCT", "91723000", "Anatomical Structure"),
            property_type: code("SCT", "12738006", "Brain"),
            colour: [64, 160, 255],
        },
        Segment {
            number: 2,
            label: "lesion".into(),
            category: code("SCT", "49755003", "Morphologically Altered Structure"),
            property_type: code("SCT", "50960005", "Hemorrhage"),
            colour: [255, 64, 32],
        },
    ]
}

/// Soft tissue as label 1 and a ball as label 2: an asymmetric label map, so that any
/// transposition or flip of the mask shows.
fn labels_of(volume: &Volume) -> Vec<u8> {
    let (c, r) = (volume.columns, volume.rows);
    let mut labels = vec![0u8; volume.voxels.len()];
    for z in 0..volume.slices {
        for y in 0..r {
            for x in 0..c {
                let i = z * r * c + y * c + x;
                let hu = volume.voxels[i];
                let (dx, dy, dz) = (x as f64 - 150.0, y as f64 - 90.0, (z as f64 - 40.0) * 1.5);
                labels[i] = if dx * dx + dy * dy + dz * dz < 15.0 * 15.0 {
                    2
                } else if (0.0..80.0).contains(&hu) {
                    1
                } else {
                    0
                };
            }
        }
    }
    labels
}

fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn seg_of(series: &SeriesVolume, labels: &[u8]) -> seg::WrittenSeg {
    seg::build(series, labels, &segments(), &creator(), "test-job-1").unwrap()
}

#[test]
fn a_seg_of_the_ct_series_reads_back_onto_the_source_grid_voxel_for_voxel() {
    let paths = ct_series();
    let series = build(&paths, &Limits::default()).unwrap();
    let labels = labels_of(&series.volume);
    let written = seg_of(&series, &labels);
    let decoded = seg::decode(&written.bytes).unwrap();
    assert_eq!(decoded.frames.len(), written.frames);
    assert!(written.frames > 108, "both segments span many slices");
    seg::check_geometry(&decoded, &series, &labels).unwrap();
    // The same job gives the same UIDs: a re-run is a repeat at the PACS, not a new object.
    let again = seg_of(&series, &labels);
    assert_eq!(again.sop_instance_uid, written.sop_instance_uid);
    assert_eq!(again.series_instance_uid, written.series_instance_uid);
}

#[test]
fn the_geometry_check_refuses_a_transposed_mask() {
    let paths = ct_series();
    let series = build(&paths, &Limits::default()).unwrap();
    let labels = labels_of(&series.volume);
    let mut decoded = seg::decode(&seg_of(&series, &labels).bytes).unwrap();
    let n = decoded.columns;
    for frame in &mut decoded.frames {
        let m = frame.mask.clone();
        for y in 0..n {
            for x in 0..n {
                frame.mask[y * n + x] = m[x * n + y];
            }
        }
    }
    let err = seg::check_geometry(&decoded, &series, &labels).unwrap_err();
    assert!(
        matches!(err, ObjectError::Geometry(ref m) if m.contains("voxels differ")),
        "{err}"
    );
}

#[test]
fn the_geometry_check_refuses_a_frame_moved_to_another_slice() {
    let paths = ct_series();
    let series = build(&paths, &Limits::default()).unwrap();
    let labels = labels_of(&series.volume);
    let mut decoded = seg::decode(&seg_of(&series, &labels).bytes).unwrap();
    decoded.frames[5].position[2] += series.volume.spacing[2];
    let err = seg::check_geometry(&decoded, &series, &labels).unwrap_err();
    assert!(
        err.to_string().contains("references another instance"),
        "{err}"
    );
    // Off the grid altogether (half a pixel).
    let mut decoded = seg::decode(&seg_of(&series, &labels).bytes).unwrap();
    decoded.frames[0].position[0] += series.volume.spacing[0] / 2.0;
    let err = seg::check_geometry(&decoded, &series, &labels).unwrap_err();
    assert!(err.to_string().contains("not on a source slice"), "{err}");
}

#[test]
fn the_geometry_check_refuses_a_seg_written_on_a_rotated_geometry() {
    let paths = ct_series();
    let series = build(&paths, &Limits::default()).unwrap();
    let labels = labels_of(&series.volume);
    // The writer is handed a geometry whose row and column directions are swapped (the
    // classic rotated-mask bug): the SEG is self-consistent but wrong against the source.
    let mut lying = series.clone();
    std::mem::swap(
        &mut lying.volume.row_direction,
        &mut lying.volume.column_direction,
    );
    let written = seg_of(&lying, &labels);
    let decoded = seg::decode(&written.bytes).unwrap();
    let err = seg::check_geometry(&decoded, &series, &labels).unwrap_err();
    assert!(err.to_string().contains("orientation"), "{err}");
    // And a flipped column direction with a mask flipped to match still lands elsewhere.
    let mut decoded = seg::decode(&seg_of(&series, &labels).bytes).unwrap();
    for v in &mut decoded.orientation[3..] {
        *v = -*v;
    }
    assert!(seg::check_geometry(&decoded, &series, &labels).is_err());
}

#[test]
fn the_geometry_check_refuses_a_mask_that_differs_by_one_voxel() {
    let paths = ct_series();
    let series = build(&paths, &Limits::default()).unwrap();
    let labels = labels_of(&series.volume);
    let mut decoded = seg::decode(&seg_of(&series, &labels).bytes).unwrap();
    let frame = &mut decoded.frames[3];
    let p = frame.mask.iter().position(|b| *b).unwrap();
    frame.mask[p] = false;
    let err = seg::check_geometry(&decoded, &series, &labels).unwrap_err();
    assert!(err.to_string().contains("1 voxels differ"), "{err}");
}

#[test]
fn seg_and_sr_of_the_ct_series_pass_dciodvfy_and_highdicom_reads_our_mask() {
    let dir = tempfile::tempdir().unwrap();
    let paths = ct_series();
    let series = build(&paths, &Limits::default()).unwrap();
    let labels = labels_of(&series.volume);
    let written = seg_of(&series, &labels);
    let seg_path = write_temp(dir.path(), "seg.dcm", &written.bytes);
    dciodvfy::assert_valid(&seg_path);

    let voxel_ml = series.volume.voxel_ml();
    let report = Report {
        procedure: code("LN", "24725-4", "CT Head"),
        seg_sop_instance_uid: written.sop_instance_uid.clone(),
        seg_series_instance_uid: written.series_instance_uid.clone(),
        segments: segments()
            .iter()
            .map(|s| MeasuredSegment {
                number: s.number,
                label: s.label.clone(),
                property_type: s.property_type.clone(),
                volume_ml: labels.iter().filter(|l| **l == s.number).count() as f64 * voxel_ml,
            })
            .collect(),
        finding: Some(Finding {
            code: code("SCT", "50960005", "Hemorrhage"),
            probability: 0.93,
            threshold: 0.5,
        }),
    };
    let sr = sr::build(&series, &report, &creator(), "test-job-1").unwrap();
    let sr_path = write_temp(dir.path(), "sr.dcm", &sr.bytes);
    dciodvfy::assert_valid(&sr_path);

    // highdicom maps every frame back to its source instance through our references; the
    // counts per (source instance, segment) must be ours exactly.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/read_seg.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&seg_path)
        .arg(sr_path.as_os_str())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plane = series.volume.rows * series.volume.columns;
    for (z, slice) in series.sources.iter().enumerate() {
        for s in segments() {
            let ours = labels[z * plane..(z + 1) * plane]
                .iter()
                .filter(|l| **l == s.number)
                .count() as u64;
            let theirs = read["pixels"][&slice.sop_instance_uid][s.number.to_string()]
                .as_u64()
                .unwrap_or(0);
            assert_eq!(ours, theirs, "slice {z} segment {}", s.number);
        }
        // The mask itself, not only its size: a hash of the positions of each slice's pixels.
        let ours: Vec<String> = (1..=2u8)
            .map(|n| {
                let idx: Vec<String> = labels[z * plane..(z + 1) * plane]
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| **l == n)
                    .map(|(i, _)| i.to_string())
                    .collect();
                idx.join(",")
            })
            .collect();
        for (k, n) in [1u8, 2].iter().enumerate() {
            let theirs = read["indices"][&slice.sop_instance_uid][n.to_string()]
                .as_str()
                .unwrap_or("");
            assert_eq!(ours[k], theirs, "pixel positions of slice {z} segment {n}");
        }
    }
    assert_eq!(
        read["segment_labels"],
        serde_json::json!(["intracranial space", "lesion"])
    );
    // The SR as pydicom reads it: the SEG it references, one volume per segment, the finding.
    assert_eq!(
        read["sr"]["referenced_seg"],
        written.sop_instance_uid.as_str()
    );
    let volumes = read["sr"]["volumes_ml"].as_array().unwrap();
    assert_eq!(volumes.len(), 2);
    for (v, s) in volumes.iter().zip(&report.segments) {
        assert!((v.as_f64().unwrap() - s.volume_ml).abs() < 1e-3 * s.volume_ml.max(1.0));
    }
    assert_eq!(read["sr"]["probability"].as_f64(), Some(0.93));
    assert_eq!(read["sr"]["template"], "1500");
    assert_eq!(read["sr"]["volumetric_groups"], 2);
}

#[test]
fn a_seg_of_an_enhanced_multi_frame_ct_checks_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let path = pydicom("eCT_Supplemental.dcm");
    let series = build(std::slice::from_ref(&path), &Limits::default()).unwrap();
    let mut labels = vec![0u8; series.volume.voxels.len()];
    let plane = series.volume.rows * series.volume.columns;
    labels[plane + 5] = 1; // one voxel on the second frame
    let written = seg_of(&series, &labels);
    let decoded = seg::decode(&written.bytes).unwrap();
    assert_eq!(decoded.frames.len(), 1);
    seg::check_geometry(&decoded, &series, &labels).unwrap();
    let seg_path = write_temp(dir.path(), "seg.dcm", &written.bytes);
    dciodvfy::assert_valid(&seg_path);
}

#[test]
fn an_empty_result_is_one_empty_frame_and_still_checks() {
    let paths = ct_series();
    let series = build(&paths[..10], &Limits::default()).unwrap();
    let labels = vec![0u8; series.volume.voxels.len()];
    let written = seg_of(&series, &labels);
    let decoded = seg::decode(&written.bytes).unwrap();
    assert_eq!(decoded.frames.len(), 1);
    assert!(decoded.frames[0].mask.iter().all(|b| !b));
    seg::check_geometry(&decoded, &series, &labels).unwrap();
}

#[test]
fn a_label_map_of_the_wrong_size_is_refused_before_anything_is_written() {
    let paths = ct_series();
    let series = build(&paths[..10], &Limits::default()).unwrap();
    let err = seg::build(&series, &[0u8; 7], &segments(), &creator(), "x").unwrap_err();
    assert!(matches!(err, ObjectError::Mismatch(_)), "{err}");
}

/// Property: whatever a radiologist's tool sends back, `seg::decode` returns, with a typed
/// error or a SEG; 2000 mutations of ours (bytes overwritten, inserted, lengths replaced)
/// never panic and never hang (the bounded walker runs before dicom-object).
#[test]
fn mutated_segs_never_panic() {
    let series = build(&ct_series(), &Limits::default()).unwrap();
    let labels = labels_of(&series.volume);
    let base = seg_of(&series, &labels).bytes;
    let mut rng = SplitMix64::new(0x2545_F491_4F6C_DD1D);
    let mut refused = 0;
    for _ in 0..2000 {
        refused += usize::from(seg::decode(&mutated(&base, &mut rng)).is_err());
    }
    eprintln!("{refused} of 2000 mutated SEGs refused");
    // Most edits break something the decoder checks.
    assert!(refused > 500, "{refused} of 2000 refused");
}

/// A SEG from outside whose pixels land past the last column once the allowed slack adds up
/// (a pixel spacing of 1 µm, the frame 0.6 pixel along the row, under the 1 µm position
/// tolerance) is refused with the reason, never written into the wrong row or out of bounds.
#[test]
fn a_seg_pixel_mapping_past_the_source_slice_is_refused_not_wrapped_into_the_next_row() {
    let paths = ct_series();
    let mut series = build(&paths[..10], &Limits::default()).unwrap();
    let (columns, plane) = (
        series.volume.columns,
        series.volume.rows * series.volume.columns,
    );
    let mut labels = vec![0u8; series.volume.voxels.len()];
    labels[plane + columns - 1] = 1; // the last column of the first row, second slice
    let mut decoded = seg::decode(&seg_of(&series, &labels).bytes).unwrap();
    series.volume.spacing[0] = 0.001;
    series.volume.spacing[1] = 0.001;
    decoded.pixel_spacing = [0.001, 0.001];
    let row_direction = series.volume.row_direction;
    for frame in &mut decoded.frames {
        for (p, d) in frame.position.iter_mut().zip(row_direction) {
            *p += 0.0006 * d;
        }
    }
    match seg::reproject(&decoded, &series) {
        Err(err) => assert!(err.to_string().contains("outside source slice"), "{err}"),
        Ok(_) => panic!("a pixel past the last column was re-projected (into the next row)"),
    }
}

/// A reader's tool paints a lesion over the brain it lies in: segments 1 and 2 overlap. Plain
/// re-projection refuses it with a reason about that SEG (not the export check's wording);
/// with priorities the higher segment takes the shared voxels, and equal priorities refuse.
#[test]
fn overlapping_segments_go_to_the_higher_priority_or_are_refused_with_the_reason() {
    let paths = ct_series();
    let series = build(&paths[..10], &Limits::default()).unwrap();
    let labels = labels_of(&series.volume);
    let mut decoded = seg::decode(&seg_of(&series, &labels).bytes).unwrap();
    // A copy of a segment-1 frame, claimed by segment 2: every pixel of it overlaps.
    let mut painted = decoded
        .frames
        .iter()
        .find(|f| f.segment == 1 && f.mask.iter().any(|m| *m))
        .cloned()
        .unwrap();
    painted.segment = 2;
    let overlap = painted.mask.iter().filter(|m| **m).count();
    decoded.frames.push(painted);

    let err = seg::reproject(&decoded, &series).unwrap_err();
    assert!(matches!(err, ObjectError::Reprojection(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("segments 1 and 2 overlap on slice"), "{text}");
    assert!(!text.contains("written SEG"), "{text}");

    let by_number = |s: u8| u32::from(s);
    let resolved = seg::reproject_resolving(&decoded, &series, Some(&by_number)).unwrap();
    let twos_before = labels.iter().filter(|v| **v == 2).count();
    let twos_after = resolved.iter().filter(|v| **v == 2).count();
    assert_eq!(twos_after, twos_before + overlap);

    let same = |_: u8| 7u32;
    let err = seg::reproject_resolving(&decoded, &series, Some(&same)).unwrap_err();
    assert!(err.to_string().contains("the same priority"), "{err}");
}

// ---- Secondary Capture with burned-in outlines (objects::sc) ----

/// A 64 x 48 x 3 CT-like series built in memory: values rise along x and y (so every pixel
/// has its own grey), the header names a window of 40/80 unless `window` is `None`.
fn synthetic_series(window: Option<(f64, f64)>) -> SeriesVolume {
    use dicom_core::value::PrimitiveValue;
    use dicom_core::{DataElement, VR};
    use dicom_dictionary_std::tags;
    let (columns, rows, slices) = (64usize, 48usize, 3usize);
    let mut voxels = Vec::with_capacity(columns * rows * slices);
    for z in 0..slices {
        for y in 0..rows {
            for x in 0..columns {
                voxels.push(x as f32 * 1.5 + y as f32 - 20.0 + z as f32);
            }
        }
    }
    let volume = Volume {
        columns,
        rows,
        slices,
        spacing: [0.5, 0.5, 2.0],
        origin: [-16.0, -12.0, 30.0],
        row_direction: [1.0, 0.0, 0.0],
        column_direction: [0.0, 1.0, 0.0],
        normal: [0.0, 0.0, 1.0],
        voxels,
        modality: "CT".into(),
        frame_of_reference_uid: Some("1.2.826.0.1.3680043.10.999.9".into()),
    };
    let mut header = dicom_object::InMemDicomObject::new_empty();
    let mut put = |tag, vr, value: &str| {
        header.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
    };
    put(tags::PATIENT_NAME, VR::PN, "Test^Synthetic");
    put(tags::PATIENT_ID, VR::LO, "SYN-1");
    put(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        "1.2.826.0.1.3680043.10.999.1",
    );
    if let Some((center, width)) = window {
        put(tags::WINDOW_CENTER, VR::DS, &center.to_string());
        put(tags::WINDOW_WIDTH, VR::DS, &width.to_string());
    }
    let sources = (0..slices)
        .map(|z| SliceSource {
            sop_instance_uid: format!("1.2.826.0.1.3680043.10.999.3.{}", z + 1),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            frame: 0,
            position: volume.position(0.0, 0.0, z as f64),
        })
        .collect();
    SeriesVolume {
        volume,
        header,
        study_uid: "1.2.826.0.1.3680043.10.999.1".into(),
        series_uid: "1.2.826.0.1.3680043.10.999.2".into(),
        sources,
    }
}

fn read_back(bytes: &[u8]) -> dicom_object::DefaultDicomObject {
    dicom_object::from_reader(&bytes[128..]).expect("our SC reads back")
}

fn text(o: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> String {
    o.element(tag)
        .unwrap_or_else(|_| panic!("{tag} present"))
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_string()
}

fn sc_of(series: &SeriesVolume, labels: &[u8], seed: &str) -> sc::WrittenSc {
    sc::build(series, labels, &segments(), &creator(), seed).unwrap()
}

#[test]
fn an_outline_sc_of_the_ct_series_passes_dciodvfy_and_references_every_source_slice() {
    use dicom_dictionary_std::tags;
    let paths = ct_series();
    let series = build(&paths, &Limits::default()).unwrap();
    let labels = labels_of(&series.volume);
    let written = sc_of(&series, &labels, "test-job-1");
    assert_eq!(written.frames, series.volume.slices);
    let dir = tempfile::tempdir().unwrap();
    let path = write_temp(dir.path(), "sc.dcm", &written.bytes);
    dciodvfy::assert_valid(&path);

    let o = read_back(&written.bytes);
    assert_eq!(
        text(&o, tags::SOP_CLASS_UID),
        sc::MULTI_FRAME_TRUE_COLOR_SC_STORAGE
    );
    assert_eq!(text(&o, tags::SOP_INSTANCE_UID), written.sop_instance_uid);
    // Same study as the source, its own series.
    assert_eq!(text(&o, tags::STUDY_INSTANCE_UID), series.study_uid);
    assert_eq!(
        text(&o, tags::SERIES_INSTANCE_UID),
        written.series_instance_uid
    );
    assert_ne!(written.series_instance_uid, series.series_uid);
    assert_eq!(text(&o, tags::BURNED_IN_ANNOTATION), "YES");
    assert_eq!(text(&o, tags::CONVERSION_TYPE), "WSD");
    assert_eq!(text(&o, tags::IMAGE_TYPE), "DERIVED\\SECONDARY");
    assert_eq!(text(&o, tags::SERIES_DESCRIPTION), sc::SERIES_DESCRIPTION);
    assert!(text(&o, tags::DERIVATION_DESCRIPTION).contains("outlines"));
    assert_eq!(text(&o, tags::PHOTOMETRIC_INTERPRETATION), "RGB");
    assert_eq!(text(&o, tags::NUMBER_OF_FRAMES), "108");
    // Item n of the Source Image Sequence is the source of frame n.
    let sources = o
        .element(tags::SOURCE_IMAGE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(sources.len(), series.sources.len());
    for (item, source) in sources.iter().zip(&series.sources) {
        assert_eq!(
            text(item, tags::REFERENCED_SOP_INSTANCE_UID),
            source.sop_instance_uid
        );
        assert_eq!(
            text(item, tags::REFERENCED_SOP_CLASS_UID),
            source.sop_class_uid
        );
    }
    let referenced = o
        .element(tags::REFERENCED_SERIES_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(referenced.len(), 1);
    assert_eq!(
        text(&referenced[0], tags::SERIES_INSTANCE_UID),
        series.series_uid
    );
    let pixels = o.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let (w, h) = (series.volume.columns, series.volume.rows);
    assert_eq!(pixels.len(), w * h * 3 * written.frames);
}

/// A source of one multi-frame instance (enhanced CT): each frame's reference names its
/// Referenced Frame Number, and the SC still validates.
#[test]
fn an_outline_sc_of_an_enhanced_multi_frame_ct_names_source_frames_and_validates() {
    use dicom_dictionary_std::tags;
    let path = pydicom("eCT_Supplemental.dcm");
    let series = build(std::slice::from_ref(&path), &Limits::default()).unwrap();
    let mut labels = vec![0u8; series.volume.voxels.len()];
    let plane = series.volume.rows * series.volume.columns;
    labels[plane + 5] = 1;
    let written = sc_of(&series, &labels, "test-job-1");
    dciodvfy::assert_valid_bytes(&written.bytes, "sc of enhanced ct");
    let o = read_back(&written.bytes);
    let sources = o
        .element(tags::SOURCE_IMAGE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    for (item, source) in sources.iter().zip(&series.sources) {
        assert_eq!(
            text(item, tags::REFERENCED_FRAME_NUMBER),
            (source.frame + 1).to_string()
        );
    }
}

/// Boundary pixels of a label are drawn in its segment's colour; the inside and the outside
/// keep the windowed grey of the source (the header's window, 40/80), and the SC frame is
/// exactly what `render_slice` gives the console.
#[test]
fn outlines_colour_the_border_of_a_label_and_leave_its_inside_and_outside_grey() {
    use dicom_dictionary_std::tags;
    let series = synthetic_series(Some((40.0, 80.0)));
    let v = &series.volume;
    let (w, h, plane) = (v.columns, v.rows, v.columns * v.rows);
    let (x0, x1, y0, y1) = (20, 40, 24, 44); // inclusive square on slice 1
    let mut labels = vec![0u8; v.voxels.len()];
    for y in y0..=y1 {
        for x in x0..=x1 {
            labels[plane + y * w + x] = 2;
        }
    }
    let written = sc_of(&series, &labels, "square");
    dciodvfy::assert_valid_bytes(&written.bytes, "sc of a synthetic series");
    let o = read_back(&written.bytes);
    let pixels = o.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    assert_eq!(pixels.len(), plane * 3 * 3);
    let at = |z: usize, x: usize, y: usize| {
        let i = (z * plane + y * w + x) * 3;
        [pixels[i], pixels[i + 1], pixels[i + 2]]
    };
    let window = sc::Window {
        center: 40.0,
        width: 80.0,
    };
    assert_eq!(sc::window_for(&series, 1), window);
    let grey = |z: usize, x: usize, y: usize| {
        let g = window.grey(v.voxels[z * plane + y * w + x]);
        [g, g, g]
    };
    let lesion = segments()[1].colour;
    let banner = sc::banner_height(w, h, &[sc::WARNING, "head-ct-ich 0.1.0"]);
    assert!(
        banner < y0,
        "the banner ({banner} rows) stays clear of the square"
    );
    for y in banner..h {
        for x in 0..w {
            let inside = (x0..=x1).contains(&x) && (y0..=y1).contains(&y);
            let border = inside && (x == x0 || x == x1 || y == y0 || y == y1);
            let expected = if border { lesion } else { grey(1, x, y) };
            assert_eq!(at(1, x, y), expected, "slice 1 pixel ({x}, {y})");
            // The other slices have no label: grey everywhere.
            assert_eq!(at(0, x, y), grey(0, x, y), "slice 0 pixel ({x}, {y})");
            assert_eq!(at(2, x, y), grey(2, x, y), "slice 2 pixel ({x}, {y})");
        }
    }
    // The grey really varies (the window is not saturating everything).
    assert_ne!(at(1, 30, 34), at(1, 31, 34));
    // The console's rendering is the SC's frame, byte for byte.
    let lines = sc::banner_lines(&creator());
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let slice = sc::SliceView::of(v, &labels, 1).unwrap();
    let image = sc::render_slice(&slice, &segments(), window, &lines).unwrap();
    assert_eq!((image.width, image.height), (w, h));
    assert_eq!(image.pixels, pixels[plane * 3..plane * 6]);
    // Without a window in the header, each slice spans its own minimum to maximum.
    let unwindowed = synthetic_series(None);
    let first = &unwindowed.volume.voxels[..plane];
    assert_eq!(sc::window_for(&unwindowed, 0), sc::Window::spanning(first));
    let span = sc::Window::spanning(first);
    let lowest = first.iter().copied().fold(f32::INFINITY, f32::min);
    let highest = first.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert_eq!((span.grey(lowest), span.grey(highest)), (0, 255));
}

/// Every frame carries the warning: the top rows are a dark bar holding bright text, and
/// nothing else; the image starts below it.
#[test]
fn every_frame_carries_the_not_for_diagnostic_use_banner_on_a_dark_bar() {
    use dicom_dictionary_std::tags;
    let paths = ct_series();
    let series = build(&paths[..12], &Limits::default()).unwrap();
    let labels = labels_of(&series.volume);
    let written = sc_of(&series, &labels, "banner");
    let o = read_back(&written.bytes);
    let pixels = o.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let (w, h) = (series.volume.columns, series.volume.rows);
    let lines = sc::banner_lines(&creator());
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let bar = sc::banner_height(w, h, &lines);
    assert!(bar >= 9 && bar < h / 4, "bar of {bar} rows on {h}");
    let font_pixels: usize = lines
        .iter()
        .flat_map(|l| l.chars())
        .map(|c| {
            glyphs::glyph(c)
                .iter()
                .map(|row| row.count_ones() as usize)
                .sum::<usize>()
        })
        .sum();
    for (f, frame) in pixels.chunks_exact(w * h * 3).enumerate() {
        let banner: Vec<&[u8]> = frame[..bar * w * 3].chunks_exact(3).collect();
        assert!(
            banner.iter().all(|p| *p == sc::BAR || *p == sc::TEXT),
            "frame {f}: the bar holds only bar and text pixels"
        );
        let text = banner.iter().filter(|p| **p == sc::TEXT).count();
        let dark = banner.iter().filter(|p| **p == sc::BAR).count();
        // Exactly the font pixels of both lines, each drawn as a square of scale x scale.
        assert!(
            text > 0 && text % font_pixels == 0,
            "frame {f}: {text} text pixels"
        );
        let scale = ((text / font_pixels) as f64).sqrt() as usize;
        assert_eq!(scale * scale * font_pixels, text, "frame {f}");
        assert!(dark > 2 * text, "frame {f}: {dark} bar pixels, {text} text");
        let below: Vec<&[u8]> = frame[bar * w * 3..(bar + 1) * w * 3]
            .chunks_exact(3)
            .collect();
        assert!(
            below.iter().any(|p| *p != sc::BAR),
            "frame {f}: the image starts below"
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_sc_uids_and_another_seed_others() {
    let series = synthetic_series(Some((40.0, 80.0)));
    let labels = vec![0u8; series.volume.voxels.len()];
    let a = sc_of(&series, &labels, "job-7");
    let b = sc_of(&series, &labels, "job-7");
    let c = sc_of(&series, &labels, "job-8");
    assert_eq!(a.sop_instance_uid, b.sop_instance_uid);
    assert_eq!(a.series_instance_uid, b.series_instance_uid);
    assert_ne!(a.sop_instance_uid, c.sop_instance_uid);
    assert_ne!(a.series_instance_uid, c.series_instance_uid);
    // Not the SEG's UIDs for the same job.
    let seg_uid = pacs_bridge::objects::derived_uid(&["job-7", "seg-instance"]);
    assert_ne!(a.sop_instance_uid, seg_uid);
}

#[test]
fn a_wrong_label_map_an_empty_or_oversized_series_is_a_typed_error_not_a_panic() {
    let series = synthetic_series(None);
    let n = series.volume.voxels.len();
    for labels in [vec![0u8; n - 1], vec![0u8; n + 1], Vec::new()] {
        let err = sc::build(&series, &labels, &segments(), &creator(), "x").unwrap_err();
        assert!(matches!(err, ObjectError::Mismatch(_)), "{err}");
    }
    let mut empty = series.clone();
    empty.volume.slices = 0;
    empty.volume.voxels.clear();
    empty.sources.clear();
    let err = sc::build(&empty, &[], &segments(), &creator(), "x").unwrap_err();
    assert!(matches!(err, ObjectError::Mismatch(_)), "{err}");
    // 60000 x 60000 x 100 RGB is far over the cap: refused before anything is allocated.
    let mut huge = series.clone();
    (huge.volume.columns, huge.volume.rows, huge.volume.slices) = (60_000, 60_000, 100);
    let err = sc::build(&huge, &[], &segments(), &creator(), "x").unwrap_err();
    assert!(matches!(err, ObjectError::Encode { .. }), "{err}");
    // More slice sources than slices.
    let mut extra = series.clone();
    extra.sources.push(extra.sources[0].clone());
    let err = sc::build(&extra, &vec![0u8; n], &segments(), &creator(), "x").unwrap_err();
    assert!(matches!(err, ObjectError::Mismatch(_)), "{err}");
    // render_slice refuses a slice whose buffers do not match its size.
    let slice = sc::SliceView {
        columns: 4,
        rows: 4,
        values: &[0.0; 15],
        labels: &[0; 16],
    };
    assert!(matches!(
        sc::render_slice(&slice, &[], sc::Window::spanning(&[]), &[sc::WARNING]),
        Err(ObjectError::Mismatch(_))
    ));
    assert!(sc::SliceView::of(&series.volume, &vec![0u8; n], 3).is_err());
}
