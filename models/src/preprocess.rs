//! Manifest-driven preprocessing: each slice of a volume resampled onto the model's in-plane
//! grid (fixed spacing, centred on the slice centre, bilinear, `outside_value` beyond the
//! image), then one channel per intensity window, clipped to [0, 1]. Output layout
//! `[slices, channels, rows, columns]`.

use crate::package::InputSpec;
use crate::InferError;
use radiant_core::Volume;

/// Check that `volume` satisfies the model's input specification.
pub fn check(volume: &Volume, spec: &InputSpec) -> Result<(), InferError> {
    if !volume.modality.eq_ignore_ascii_case(&spec.modality) {
        return Err(InferError::WrongModality {
            expected: spec.modality.clone(),
            found: volume.modality.clone(),
        });
    }
    if volume.slices < spec.min_slices {
        return Err(InferError::TooFewSlices {
            min: spec.min_slices,
            found: volume.slices,
        });
    }
    Ok(())
}

/// Where model pixel (i, j) samples the source slice: continuous (x, y) source indices.
pub fn source_index(volume: &Volume, spec: &InputSpec, i: usize, j: usize) -> (f64, f64) {
    let (cx, cy) = centre(volume);
    let (mi, mj) = model_centre(spec);
    (
        cx + (j as f64 - mj) * spec.spacing_mm / volume.spacing[0],
        cy + (i as f64 - mi) * spec.spacing_mm / volume.spacing[1],
    )
}

/// Continuous model indices (i, j) of source pixel (x, y): the inverse of [`source_index`].
pub fn model_index(volume: &Volume, spec: &InputSpec, x: usize, y: usize) -> (f64, f64) {
    let (cx, cy) = centre(volume);
    let (mi, mj) = model_centre(spec);
    (
        (y as f64 - cy) * volume.spacing[1] / spec.spacing_mm + mi,
        (x as f64 - cx) * volume.spacing[0] / spec.spacing_mm + mj,
    )
}

fn centre(volume: &Volume) -> (f64, f64) {
    (
        (volume.columns as f64 - 1.0) / 2.0,
        (volume.rows as f64 - 1.0) / 2.0,
    )
}

fn model_centre(spec: &InputSpec) -> (f64, f64) {
    (
        (spec.size[0] as f64 - 1.0) / 2.0,
        (spec.size[1] as f64 - 1.0) / 2.0,
    )
}

/// The model input tensor for slices `range` of `volume`.
pub fn tensor(volume: &Volume, spec: &InputSpec, range: std::ops::Range<usize>) -> Vec<f32> {
    let [rows, columns] = spec.size;
    let plane = rows * columns;
    let channels = spec.channels.len();
    let mut out = vec![0f32; range.len() * channels * plane];
    let mut resampled = vec![0f32; plane];
    for (b, z) in range.enumerate() {
        let slice = volume.slice(z);
        for i in 0..rows {
            for j in 0..columns {
                let (x, y) = source_index(volume, spec, i, j);
                resampled[i * columns + j] = bilinear(slice, volume, x, y, spec.outside_value);
            }
        }
        for (c, window) in spec.channels.iter().enumerate() {
            let low = window.center - window.width / 2.0;
            let dest = &mut out[(b * channels + c) * plane..(b * channels + c + 1) * plane];
            for (d, hu) in dest.iter_mut().zip(&resampled) {
                *d = ((hu - low) / window.width).clamp(0.0, 1.0);
            }
        }
    }
    out
}

/// Bilinear sample at continuous index (x, y); a neighbour outside the image counts as
/// `outside`.
fn bilinear(slice: &[f32], volume: &Volume, x: f64, y: f64, outside: f32) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = ((x - x0) as f32, (y - y0) as f32);
    let at = |xi: f64, yi: f64| -> f32 {
        if xi < 0.0 || yi < 0.0 || xi >= volume.columns as f64 || yi >= volume.rows as f64 {
            outside
        } else {
            slice[yi as usize * volume.columns + xi as usize]
        }
    };
    let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1.0, y0) * fx;
    let bottom = at(x0, y0 + 1.0) * (1.0 - fx) + at(x0 + 1.0, y0 + 1.0) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// A label map on the source grid (one value per voxel, in the volume's voxel order) sampled
/// onto the model grid `[slices, rows, columns]`: each model pixel takes the label of the
/// source voxel nearest to where [`tensor`] samples it, 0 outside the image. This is how a
/// radiologist's segmentation becomes a training target for the head.
pub fn labels_to_model_grid(volume: &Volume, spec: &InputSpec, labels: &[u8]) -> Vec<u8> {
    let [rows, columns] = spec.size;
    let plane = rows * columns;
    let source_plane = volume.rows * volume.columns;
    let mut lookup = vec![None; plane];
    for i in 0..rows {
        for j in 0..columns {
            let (x, y) = source_index(volume, spec, i, j);
            let (x, y) = (x.round(), y.round());
            if x >= 0.0 && y >= 0.0 && x < volume.columns as f64 && y < volume.rows as f64 {
                lookup[i * columns + j] = Some(y as usize * volume.columns + x as usize);
            }
        }
    }
    let mut out = vec![0u8; volume.slices * plane];
    for z in 0..volume.slices {
        let source = &labels[z * source_plane..((z + 1) * source_plane).min(labels.len())];
        for (p, at) in lookup.iter().enumerate() {
            if let Some(value) = at.and_then(|s| source.get(s)) {
                out[z * plane + p] = *value;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::WindowSpec;

    fn volume(columns: usize, rows: usize, slices: usize, spacing: f64) -> Volume {
        Volume {
            columns,
            rows,
            slices,
            spacing: [spacing, spacing, 2.0],
            origin: [0.0; 3],
            row_direction: [1.0, 0.0, 0.0],
            column_direction: [0.0, 1.0, 0.0],
            normal: [0.0, 0.0, 1.0],
            voxels: vec![0.0; columns * rows * slices],
            modality: "CT".into(),
            frame_of_reference_uid: None,
        }
    }

    fn spec(size: usize, spacing_mm: f64) -> InputSpec {
        InputSpec {
            modality: "CT".into(),
            min_slices: 1,
            size: [size, size],
            spacing_mm,
            channels: vec![WindowSpec {
                name: "w".into(),
                center: 0.0,
                width: 1.0,
            }],
            outside_value: 0.0,
        }
    }

    #[test]
    fn labels_on_the_model_grid_follow_the_sample_points_and_are_zero_outside_the_image() {
        // 8x8 source of 1 mm, model 8x8 of 2 mm: the model covers 16 mm, the image 8 mm.
        let v = volume(8, 8, 2, 1.0);
        let s = spec(8, 2.0);
        // Slice 0: label 1 in the right half of the image (x >= 4); slice 1: label 2 at x = 7.
        let mut labels = vec![0u8; 8 * 8 * 2];
        for y in 0..8 {
            for x in 4..8 {
                labels[y * 8 + x] = 1;
            }
            labels[64 + y * 8 + 7] = 2;
        }
        let model = labels_to_model_grid(&v, &s, &labels);
        assert_eq!(model.len(), 2 * 64);
        for i in 0..8 {
            for j in 0..8 {
                let (x, y) = source_index(&v, &s, i, j);
                let (x, y) = (x.round(), y.round());
                let inside = (0.0..8.0).contains(&x) && (0.0..8.0).contains(&y);
                let expect0 = u8::from(inside && x >= 4.0);
                let expect1 = if inside && x == 7.0 { 2 } else { 0 };
                assert_eq!(
                    model[i * 8 + j],
                    expect0,
                    "slice 0 at ({i}, {j}) from ({x}, {y})"
                );
                assert_eq!(model[64 + i * 8 + j], expect1, "slice 1 at ({i}, {j})");
            }
        }
        // Something is inside and something is outside on this grid.
        assert!(model[..64].contains(&1) && model[..64].contains(&0));
        assert!(model[64..].contains(&2));
    }
}
