//! Volumes on the canonical grid: a series' voxels put in the manifest's canonical axis order
//! by permuting and flipping its axes after their direction cosines (no interpolation, as
//! nibabel's `as_closest_canonical`), labels mapped back onto the source voxels, and the
//! separable resizes (PyTorch's `nearest-exact`, and linear) every stage uses.

use super::manifest::{Interpolation, Orientation};
use crate::InferError;
use radiant_core::Volume;

/// A dense 3D array in C order (the last axis varies fastest).
#[derive(Debug, Clone, PartialEq)]
pub struct Grid<T> {
    pub shape: [usize; 3],
    pub data: Vec<T>,
}

impl<T: Copy + Default> Grid<T> {
    pub fn filled(shape: [usize; 3], value: T) -> Grid<T> {
        Grid {
            shape,
            data: vec![value; shape.iter().product()],
        }
    }

    pub fn index(&self, i: usize, j: usize, k: usize) -> usize {
        (i * self.shape[1] + j) * self.shape[2] + k
    }

    /// The sub-array `lo..hi` on each axis (bounds already clipped to the shape).
    pub fn crop(&self, lo: [usize; 3], hi: [usize; 3]) -> Grid<T> {
        let shape = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
        let mut data = Vec::with_capacity(shape.iter().product());
        for i in lo[0]..hi[0] {
            for j in lo[1]..hi[1] {
                let start = self.index(i, j, lo[2]);
                data.extend_from_slice(&self.data[start..start + shape[2]]);
            }
        }
        Grid { shape, data }
    }

    /// Write `part` at offset `lo`.
    pub fn paste(&mut self, lo: [usize; 3], part: &Grid<T>) {
        for i in 0..part.shape[0] {
            for j in 0..part.shape[1] {
                let from = part.index(i, j, 0);
                let to = self.index(lo[0] + i, lo[1] + j, lo[2]);
                self.data[to..to + part.shape[2]]
                    .copy_from_slice(&part.data[from..from + part.shape[2]]);
            }
        }
    }
}

/// How each canonical axis reads the source: which volume axis (0 = columns, 1 = rows,
/// 2 = slices) and whether reversed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisMap {
    pub source: [usize; 3],
    pub flipped: [bool; 3],
}

impl AxisMap {
    /// The closest permutation and flips that put `volume`'s axes in `orientation`: the
    /// largest direction cosine is assigned first, then the largest of what is left (the
    /// rule of nibabel's `io_orientation`), so an oblique series goes to its nearest
    /// canonical order.
    pub fn of(volume: &Volume, orientation: Orientation) -> Result<AxisMap, InferError> {
        // World axes in DICOM patient coordinates (LPS) the canonical axes point to.
        let sign = match orientation {
            Orientation::Ras => [-1.0, -1.0, 1.0],
            Orientation::Lps => [1.0, 1.0, 1.0],
        };
        let directions = [volume.row_direction, volume.column_direction, volume.normal];
        for d in &directions {
            let norm = d.iter().map(|v| v * v).sum::<f64>().sqrt();
            if !norm.is_finite() || (norm - 1.0).abs() > 1e-3 {
                return Err(InferError::Geometry(format!(
                    "a direction cosine is not a unit vector: {d:?}"
                )));
            }
        }
        let mut source = [usize::MAX; 3];
        let mut flipped = [false; 3];
        let mut used_source = [false; 3];
        for _ in 0..3 {
            let mut best: Option<(f64, usize, usize)> = None;
            for (s, d) in directions.iter().enumerate() {
                if used_source[s] {
                    continue;
                }
                for w in 0..3 {
                    if source[w] != usize::MAX {
                        continue;
                    }
                    let c = d[w].abs();
                    if best.is_none_or(|(b, _, _)| c > b) {
                        best = Some((c, s, w));
                    }
                }
            }
            let Some((c, s, w)) = best else { break };
            if c < 1e-6 {
                return Err(InferError::Geometry(
                    "the direction cosines are degenerate".into(),
                ));
            }
            source[w] = s;
            flipped[w] = directions[s][w] * sign[w] < 0.0;
            used_source[s] = true;
        }
        Ok(AxisMap { source, flipped })
    }

    fn source_sizes(volume: &Volume) -> [usize; 3] {
        [volume.columns, volume.rows, volume.slices]
    }

    /// Shape of the canonical array.
    pub fn shape(&self, volume: &Volume) -> [usize; 3] {
        let n = Self::source_sizes(volume);
        [n[self.source[0]], n[self.source[1]], n[self.source[2]]]
    }

    /// Voxel spacing along the canonical axes, mm.
    pub fn spacing(&self, volume: &Volume) -> [f64; 3] {
        [
            volume.spacing[self.source[0]],
            volume.spacing[self.source[1]],
            volume.spacing[self.source[2]],
        ]
    }

    /// For every canonical voxel in C order, the index of the source voxel it is.
    fn for_each(&self, volume: &Volume, mut f: impl FnMut(usize, usize)) {
        let n = Self::source_sizes(volume);
        let shape = self.shape(volume);
        // Source strides: columns 1, rows `columns`, slices `rows · columns`.
        let stride = [1, volume.columns, volume.rows * volume.columns];
        let step: [isize; 3] = std::array::from_fn(|a| {
            let s = stride[self.source[a]] as isize;
            if self.flipped[a] {
                -s
            } else {
                s
            }
        });
        let start: [isize; 3] = std::array::from_fn(|a| {
            if self.flipped[a] {
                ((n[self.source[a]] - 1) * stride[self.source[a]]) as isize
            } else {
                0
            }
        });
        let base = start.iter().sum::<isize>();
        let mut c = 0;
        for i in 0..shape[0] {
            let si = base + i as isize * step[0];
            for j in 0..shape[1] {
                let sj = si + j as isize * step[1];
                for k in 0..shape[2] {
                    f(c, (sj + k as isize * step[2]) as usize);
                    c += 1;
                }
            }
        }
    }

    /// The volume's samples on the canonical grid; NaN and infinities become `non_finite`.
    pub fn canonical(&self, volume: &Volume, non_finite: f32) -> Grid<f32> {
        let mut grid = Grid::filled(self.shape(volume), 0f32);
        self.for_each(volume, |c, s| {
            let v = volume.voxels[s];
            grid.data[c] = if v.is_finite() { v } else { non_finite };
        });
        grid
    }

    /// Canonical labels back on the source voxels, in the volume's voxel order.
    pub fn to_source(&self, volume: &Volume, labels: &Grid<u8>) -> Vec<u8> {
        let mut out = vec![0u8; volume.voxels.len()];
        self.for_each(volume, |c, s| out[s] = labels.data[c]);
        out
    }

    /// Source labels (volume voxel order) on the canonical grid.
    pub fn from_source(&self, volume: &Volume, labels: &[u8]) -> Grid<u8> {
        let mut grid = Grid::filled(self.shape(volume), 0u8);
        self.for_each(volume, |c, s| {
            grid.data[c] = labels.get(s).copied().unwrap_or(0)
        });
        grid
    }
}

/// PyTorch's `nearest-exact` source index (CPU kernel): `scale = f32(in / out)`, then
/// `min(floor(f32((dst + 0.5) · scale)), in − 1)`.
pub fn nearest_exact_index(input: usize, output: usize) -> Vec<usize> {
    let scale = (input as f64 / output as f64) as f32;
    (0..output)
        .map(|i| {
            let at = ((i as f64 + 0.5) * scale as f64) as f32;
            (at.floor() as usize).min(input - 1)
        })
        .collect()
}

/// Linear weights along one axis, half-pixel centres (`align_corners = False`), edges
/// clamped: for each output index the two source indices and the weight of the second.
fn linear_index(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|i| {
            let at = ((i as f64 + 0.5) * scale - 0.5).clamp(0.0, (input - 1) as f64);
            let lo = at.floor() as usize;
            let hi = (lo + 1).min(input - 1);
            (lo, hi, (at - lo as f64) as f32)
        })
        .collect()
}

/// Resize one axis of `grid` to `size`.
fn resize_axis<T: Copy + Default + Into<f32> + FromF32>(
    grid: &Grid<T>,
    axis: usize,
    size: usize,
    interpolation: Interpolation,
) -> Grid<T> {
    if grid.shape[axis] == size {
        return grid.clone();
    }
    let mut shape = grid.shape;
    shape[axis] = size;
    let mut out = Grid::filled(shape, T::default());
    // outer × axis × inner
    let outer: usize = grid.shape[..axis].iter().product();
    let inner: usize = grid.shape[axis + 1..].iter().product();
    let n = grid.shape[axis];
    match interpolation {
        Interpolation::NearestExact => {
            let index = nearest_exact_index(n, size);
            for o in 0..outer {
                for (d, s) in index.iter().enumerate() {
                    let from = (o * n + s) * inner;
                    let to = (o * size + d) * inner;
                    out.data[to..to + inner].copy_from_slice(&grid.data[from..from + inner]);
                }
            }
        }
        Interpolation::Linear => {
            let index = linear_index(n, size);
            for o in 0..outer {
                for (d, (lo, hi, w)) in index.iter().enumerate() {
                    let a = (o * n + lo) * inner;
                    let b = (o * n + hi) * inner;
                    let to = (o * size + d) * inner;
                    for x in 0..inner {
                        let va: f32 = grid.data[a + x].into();
                        let vb: f32 = grid.data[b + x].into();
                        out.data[to + x] = T::from_f32(va + (vb - va) * w);
                    }
                }
            }
        }
    }
    out
}

/// Conversion back from an interpolated value.
pub trait FromF32 {
    fn from_f32(v: f32) -> Self;
}

impl FromF32 for f32 {
    fn from_f32(v: f32) -> f32 {
        v
    }
}

impl FromF32 for u8 {
    fn from_f32(v: f32) -> u8 {
        v.round().clamp(0.0, 255.0) as u8
    }
}

/// Resize `grid` to `shape`, one axis after the other.
pub fn resize<T: Copy + Default + Into<f32> + FromF32>(
    grid: &Grid<T>,
    shape: [usize; 3],
    interpolation: Interpolation,
) -> Grid<T> {
    let mut out = resize_axis(grid, 0, shape[0], interpolation);
    out = resize_axis(&out, 1, shape[1], interpolation);
    resize_axis(&out, 2, shape[2], interpolation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(row: [f64; 3], column: [f64; 3], normal: [f64; 3], size: [usize; 3]) -> Volume {
        let n = size.iter().product();
        Volume {
            columns: size[0],
            rows: size[1],
            slices: size[2],
            spacing: [1.0, 2.0, 3.0],
            origin: [0.0; 3],
            row_direction: row,
            column_direction: column,
            normal,
            voxels: (0..n).map(|v| v as f32).collect(),
            modality: "MR".into(),
            frame_of_reference_uid: None,
        }
    }

    #[test]
    fn an_axial_lps_series_becomes_ras_by_flipping_columns_and_rows() {
        let v = volume([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [4, 3, 2]);
        let map = AxisMap::of(&v, Orientation::Ras).unwrap();
        assert_eq!(map.source, [0, 1, 2]);
        assert_eq!(map.flipped, [true, true, false]);
        let g = map.canonical(&v, 0.0);
        assert_eq!(g.shape, [4, 3, 2]);
        // Canonical (0, 0, 0) is the last column, last row, first slice.
        assert_eq!(g.data[0], v.voxels[2 * 4 + 3]);
        assert_eq!(map.spacing(&v), [1.0, 2.0, 3.0]);
        let labels = Grid {
            shape: g.shape,
            data: (0..24).map(|v| v as u8).collect(),
        };
        let back = map.to_source(&v, &labels);
        assert_eq!(map.from_source(&v, &back), labels);
    }

    #[test]
    fn a_sagittal_series_is_permuted_to_the_canonical_order() {
        // Columns run anterior to posterior (+y), rows head to feet (-z), slices right-ward
        // (-x): R (-x in LPS) follows the slices unflipped, A (-y) the columns reversed, S
        // (+z) the rows reversed.
        let v = volume(
            [0.0, 1.0, 0.0],
            [0.0, 0.0, -1.0],
            [-1.0, 0.0, 0.0],
            [5, 4, 3],
        );
        let map = AxisMap::of(&v, Orientation::Ras).unwrap();
        assert_eq!(map.source, [2, 0, 1]);
        assert_eq!(map.flipped, [false, true, true]);
        assert_eq!(map.shape(&v), [3, 5, 4]);
        assert_eq!(map.spacing(&v), [3.0, 1.0, 2.0]);
    }

    #[test]
    fn an_oblique_series_goes_to_its_nearest_canonical_order() {
        let (c, s) = (20f64.to_radians().cos(), 20f64.to_radians().sin());
        let v = volume([c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0], [3, 3, 3]);
        let map = AxisMap::of(&v, Orientation::Lps).unwrap();
        assert_eq!(map.source, [0, 1, 2]);
        assert_eq!(map.flipped, [false, false, false]);
    }

    #[test]
    fn nearest_exact_matches_pytorch_on_known_sizes() {
        // torch.nn.functional.interpolate(torch.arange(n), m, mode="nearest-exact").
        assert_eq!(nearest_exact_index(5, 3), vec![0, 2, 4]);
        assert_eq!(nearest_exact_index(3, 5), vec![0, 0, 1, 2, 2]);
        assert_eq!(nearest_exact_index(4, 8), vec![0, 0, 1, 1, 2, 2, 3, 3]);
        let up = nearest_exact_index(181, 128);
        assert_eq!((up[0], up[127]), (0, 180));
    }

    #[test]
    fn resizing_is_separable_and_linear_keeps_constants() {
        let g = Grid {
            shape: [2, 2, 2],
            data: vec![1.5f32; 8],
        };
        let r = resize(&g, [3, 5, 4], Interpolation::Linear);
        assert_eq!(r.shape, [3, 5, 4]);
        assert!(r.data.iter().all(|v| (*v - 1.5).abs() < 1e-6));
        let ramp = Grid {
            shape: [1, 1, 4],
            data: vec![0f32, 1.0, 2.0, 3.0],
        };
        let half = resize(&ramp, [1, 1, 2], Interpolation::Linear);
        assert_eq!(half.data, vec![0.5, 2.5]);
        let crop = r.crop([1, 1, 1], [3, 4, 2]);
        assert_eq!(crop.shape, [2, 3, 1]);
    }
}
