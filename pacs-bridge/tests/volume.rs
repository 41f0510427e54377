//! Series to volume on real data: the 108-slice head CT and the pydicom test files built by
//! `scripts/fixtures.sh`.

use pacs_bridge::volume::{build, decode_frames, Limits, VolumeError};
use std::path::{Path, PathBuf};
use test_support::fixtures::{ct_series, pydicom, pydicom_dir};

/// The int16 pixel values of a CT slice fixture: its Pixel Data is the last element.
fn raw_pixels(path: &Path, count: usize) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    bytes[bytes.len() - 2 * count..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32)
        .collect()
}

#[test]
fn the_ct_series_in_any_file_order_forms_one_regular_volume() {
    let mut paths = ct_series();
    paths.reverse();
    paths.swap(3, 70);
    let series = build(&paths, &Limits::default()).unwrap();
    let v = &series.volume;
    assert_eq!((v.columns, v.rows, v.slices), (256, 256, 108));
    assert!((v.spacing[0] - 0.9570312).abs() < 1e-6, "{:?}", v.spacing);
    assert!((v.spacing[2] - 1.5).abs() < 1e-6, "{:?}", v.spacing);
    assert_eq!(v.normal, [0.0, 0.0, 1.0]);
    assert_eq!(v.modality, "CT");
    assert!(v.frame_of_reference_uid.is_some());
    // Slices run along +z, whatever the file order; each holds its own file's pixels.
    for w in series.sources.windows(2) {
        assert!(w[1].position[2] > w[0].position[2]);
    }
    for z in [0usize, 53, 107] {
        assert_eq!(
            v.slice(z),
            raw_pixels(&ct_series()[z], 256 * 256).as_slice(),
            "slice {z}"
        );
    }
    let min = v.voxels.iter().copied().fold(f32::MAX, f32::min);
    let max = v.voxels.iter().copied().fold(f32::MIN, f32::max);
    assert!(min <= -1000.0 && max > 1000.0, "HU range {min}..{max}");
}

#[test]
fn a_missing_slice_is_refused_as_uneven_spacing() {
    let mut paths = ct_series();
    paths.remove(50);
    let err = build(&paths, &Limits::default()).unwrap_err();
    assert!(
        matches!(err, VolumeError::UnevenSpacing { gap, expected, .. } if (gap - 3.0).abs() < 1e-6 && (expected - 1.5).abs() < 1e-6),
        "{err}"
    );
    assert!(err.to_string().contains("missing slice"));
}

#[test]
fn a_slice_given_twice_is_refused_as_a_duplicate_position() {
    let mut paths = ct_series();
    paths.push(paths[10].clone());
    let err = build(&paths, &Limits::default()).unwrap_err();
    assert!(
        matches!(err, VolumeError::DuplicatePosition { .. }),
        "{err}"
    );
}

#[test]
fn files_of_another_series_are_refused() {
    let mut paths = ct_series();
    paths.push(pydicom("CT_small.dcm"));
    let err = build(&paths, &Limits::default()).unwrap_err();
    assert!(matches!(err, VolumeError::MixedSeries { .. }), "{err}");
}

#[test]
fn a_volume_over_the_voxel_limit_is_refused_before_decoding() {
    let limits = Limits {
        max_voxels: 256 * 256 * 100,
        ..Limits::default()
    };
    let err = build(&ct_series(), &limits).unwrap_err();
    assert!(matches!(err, VolumeError::TooLarge { .. }), "{err}");
}

#[test]
fn lossless_jpeg_2000_decodes_to_the_same_values_as_the_uncompressed_file() {
    for (compressed, plain) in [
        ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),
    ] {
        let a = build(&[pydicom(compressed)], &Limits::default());
        let b = build(&[pydicom(plain)], &Limits::default());
        match (a, b) {
            (Ok(a), Ok(b)) => assert!(
                a.volume.voxels == b.volume.voxels,
                "{compressed} differs from {plain}"
            ),
            // CR images lack Image Position/Orientation; both must then fail the same way.
            (Err(a), Err(b)) => assert_eq!(a.to_string().replace(compressed, plain), b.to_string()),
            (a, b) => panic!("{compressed}: {:?} vs {plain}: {:?}", a.err(), b.err()),
        }
    }
}

/// Every CT and MR test file, in whatever transfer syntax it comes, becomes a volume; the JPEG-LS
/// Enhanced MR goes through CharLS and the Enhanced CT through its functional groups.
#[test]
fn every_ct_and_mr_test_file_decodes_in_its_own_transfer_syntax() {
    let manifest: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(pydicom_dir().join("manifest.json")).unwrap(),
    )
    .unwrap();
    let mut decoded = Vec::new();
    for entry in &manifest {
        let category = entry["category"].as_str().unwrap_or("");
        if !["ct", "mr", "enhanced_ct", "enhanced_mr"].contains(&category) {
            continue;
        }
        let file = entry["file"].as_str().unwrap();
        let frames = match build(&[pydicom(file)], &Limits::default()) {
            Ok(series) => {
                let v = series.volume;
                assert_eq!(v.voxels.len(), v.columns * v.rows * v.slices);
                vec![v.voxels]
            }
            // Some test files carry no geometry at all: refused as a volume, naming what is
            // missing, while their pixels still decode.
            Err(VolumeError::MissingAttribute { attribute, .. }) => {
                assert!(attribute.contains("Image"), "{file}: {attribute}");
                decode_frames(&pydicom(file), &Limits::default())
                    .unwrap_or_else(|e| panic!("{file}: {e}"))
            }
            Err(e) => panic!("{file} ({}): {e}", entry["transfer_syntax_uid"]),
        };
        for f in &frames {
            assert!(f.iter().any(|x| *x != f[0]), "{file}: constant image");
        }
        decoded.push(entry["transfer_syntax_uid"].as_str().unwrap().to_string());
    }
    for needed in [
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
    ] {
        assert!(
            decoded.iter().any(|d| d == needed),
            "no CT/MR file in {needed} decoded: {decoded:?}"
        );
    }
}

#[test]
fn colour_images_are_refused_with_the_reason() {
    let err = build(&[pydicom("SC_rgb_rle.dcm")], &Limits::default()).unwrap_err();
    assert!(
        matches!(err, VolumeError::NotMonochrome { samples: 3, .. }),
        "{err}"
    );
}

#[test]
fn twelve_bit_jpeg_extended_is_refused_with_the_reason() {
    let err = decode_frames(&pydicom("JPGExtended.dcm"), &Limits::default()).unwrap_err();
    assert!(
        matches!(err, VolumeError::UnsupportedCompression { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("12-bit"), "{err}");
}

#[test]
fn single_images_and_enhanced_multi_frame_objects_form_volumes() {
    let single = build(&[pydicom("CT_small.dcm")], &Limits::default()).unwrap();
    assert_eq!(
        (
            single.volume.columns,
            single.volume.rows,
            single.volume.slices
        ),
        (128, 128, 1)
    );
    let enhanced = build(&[pydicom("eCT_Supplemental.dcm")], &Limits::default()).unwrap();
    assert_eq!(enhanced.volume.slices, 2);
    assert_eq!(enhanced.sources.len(), 2);
    assert!(enhanced
        .sources
        .iter()
        .all(|s| s.sop_instance_uid == enhanced.sources[0].sop_instance_uid));
    assert_ne!(enhanced.sources[0].frame, enhanced.sources[1].frame);
}

/// Copies of three consecutive slices of the CT series with `tag` set to `value` in each.
fn slices_with(dir: &Path, tag: dicom_core::Tag, vr: dicom_core::VR, value: &str) -> Vec<PathBuf> {
    ct_series()[10..13]
        .iter()
        .enumerate()
        .map(|(i, source)| {
            let mut object = dicom_object::open_file(source).unwrap();
            object.put(dicom_core::DataElement::new(
                tag,
                vr,
                dicom_core::PrimitiveValue::from(value),
            ));
            let path = dir.join(format!("slice_{i}.dcm"));
            object.write_to_file(&path).unwrap();
            path
        })
        .collect()
}

#[test]
fn non_finite_positions_orientations_and_spacings_are_refused_naming_the_attribute() {
    use dicom_core::VR;
    use dicom_dictionary_std::tags;
    let dir = tempfile::tempdir().unwrap();
    // The untouched copies form a volume: what follows is refused for the value alone.
    let good = slices_with(dir.path(), tags::PATIENT_ID, VR::LO, "anonymous");
    assert_eq!(build(&good, &Limits::default()).unwrap().volume.slices, 3);
    let cases = [
        (
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            "NaN\\NaN\\NaN",
            "Image Position",
        ),
        (
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            "0\\0\\inf",
            "Image Position",
        ),
        (
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            "1\\0\\0\\0\\NaN\\0",
            "Image Orientation",
        ),
        (tags::PIXEL_SPACING, VR::DS, "NaN\\0.5", "Pixel Spacing"),
    ];
    for (tag, vr, value, attribute) in cases {
        let dir = tempfile::tempdir().unwrap();
        let paths = slices_with(dir.path(), tag, vr, value);
        match build(&paths, &Limits::default()) {
            Err(VolumeError::MissingAttribute { attribute: a, .. }) => {
                assert!(a.starts_with(attribute), "{value}: {a}")
            }
            other => panic!(
                "{value} in {attribute}: {:?}",
                other.map(|s| s.volume.slices)
            ),
        }
    }
    // A NaN Rescale Slope: refused, or (as the decoder does today) not applied; either way
    // no non-finite sample reaches a model.
    let dir = tempfile::tempdir().unwrap();
    let paths = slices_with(dir.path(), tags::RESCALE_SLOPE, VR::DS, "NaN");
    match build(&paths, &Limits::default()) {
        Err(VolumeError::Decode { reason, .. }) => {
            assert!(reason.contains("not finite"), "{reason}")
        }
        Ok(series) => assert!(series.volume.voxels.iter().all(|v| v.is_finite())),
        Err(e) => panic!("NaN slope: {e}"),
    }
}

#[test]
fn a_declared_number_of_frames_beyond_the_voxel_limit_is_refused_before_allocating() {
    use dicom_core::VR;
    use dicom_dictionary_std::tags;
    let dir = tempfile::tempdir().unwrap();
    // Four billion declared frames of 512 x 512: about 4e15 voxels, on three small files.
    let paths = slices_with(dir.path(), tags::NUMBER_OF_FRAMES, VR::IS, "4000000000");
    match build(&paths, &Limits::default()) {
        Err(VolumeError::TooLarge { voxels, limit }) => assert!(voxels > limit),
        other => panic!("{:?}", other.map(|s| s.volume.slices)),
    }
}

#[test]
fn bits_stored_beyond_bits_allocated_is_refused_before_decoding() {
    use dicom_core::VR;
    use dicom_dictionary_std::tags;
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = ct_series()[10..13]
        .iter()
        .enumerate()
        .map(|(i, source)| {
            let mut object = dicom_object::open_file(source).unwrap();
            object.put(dicom_core::DataElement::new(
                tags::BITS_STORED,
                VR::US,
                dicom_core::PrimitiveValue::from(32u16),
            ));
            let path = dir.path().join(format!("slice_{i}.dcm"));
            object.write_to_file(&path).unwrap();
            path
        })
        .collect();
    match build(&paths, &Limits::default()) {
        Err(VolumeError::Decode { reason, .. }) => {
            assert!(reason.contains("Bits Stored 32"), "{reason}")
        }
        other => panic!("{:?}", other.map(|s| s.volume.slices)),
    }
}

/// An RLE slice whose last segment is cut short (written by pydicom from a CT slice, then
/// truncated): the dependency's RLE decoder indexes out of range on it. The panic stays inside
/// the decode and comes back as a typed error naming it.
#[test]
fn a_decoder_panic_on_short_rle_segments_is_a_decode_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short_rle.dcm");
    let script = r#"
import sys, pydicom
from pydicom.uid import RLELossless
from pydicom.encaps import generate_fragments, encapsulate
ds = pydicom.dcmread(sys.argv[1])
ds.compress(RLELossless)
frame = list(generate_fragments(ds.PixelData))[-1]
segments = int.from_bytes(frame[0:4], "little")
last = int.from_bytes(frame[4 * segments:4 * segments + 4], "little")
short = frame[:last + 10]
ds.PixelData = encapsulate([short + b"\0" * (len(short) % 2)])
ds.save_as(sys.argv[2], enforce_file_format=True)
"#;
    let made = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&ct_series()[10])
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success(), "pydicom could not write the RLE file");
    for result in [
        build(&[path.clone()], &Limits::default()).map(|_| ()),
        decode_frames(&path, &Limits::default()).map(|_| ()),
    ] {
        match result {
            Err(VolumeError::Decode { reason, .. }) => {
                assert!(reason.contains("panicked"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}
