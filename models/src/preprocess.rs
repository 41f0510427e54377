//! Manifest-driven preprocessing: each slice of a volume resampled onto the model's in-plane
//! grid (fixed spacing, centred on the slice centre, bilinear, `outside_value` beyond the
//! image), then one channel per intensity window, clipped to [0, 1]. Output layout
//! `[slices, channels, rows, columns]`.

use crate::package::InputSpec;
use crate::volume::Volume;
use crate::InferError;

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
