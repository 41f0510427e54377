//! A scalar volume with its patient-space geometry: what `pacs-bridge` builds from a DICOM
//! series and what preprocessing consumes. No DICOM here: positions and directions are plain
//! vectors in the patient coordinate system (LPS, millimetres).

/// A 3D image of `f32` samples (for CT: Hounsfield units, rescale already applied).
///
/// Voxel `(x, y, z)` is at `voxels[z * rows * columns + y * columns + x]`; `x` runs along
/// `row_direction` (across a row, one column to the next), `y` along `column_direction`, `z`
/// along `normal` with `spacing[2]` between slice centres. `origin` is the centre of voxel
/// `(0, 0, 0)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub columns: usize,
    pub rows: usize,
    pub slices: usize,
    /// Millimetres between voxel centres along x, y and z.
    pub spacing: [f64; 3],
    pub origin: [f64; 3],
    pub row_direction: [f64; 3],
    pub column_direction: [f64; 3],
    pub normal: [f64; 3],
    pub voxels: Vec<f32>,
    /// DICOM Modality of the source (CT, MR, ...).
    pub modality: String,
    pub frame_of_reference_uid: Option<String>,
}

impl Volume {
    /// Patient-space position (mm) of the centre of voxel `(x, y, z)`.
    pub fn position(&self, x: f64, y: f64, z: f64) -> [f64; 3] {
        let mut p = self.origin;
        for (i, item) in p.iter_mut().enumerate() {
            *item += x * self.spacing[0] * self.row_direction[i]
                + y * self.spacing[1] * self.column_direction[i]
                + z * self.spacing[2] * self.normal[i];
        }
        p
    }

    /// The samples of slice `z`.
    pub fn slice(&self, z: usize) -> &[f32] {
        let n = self.rows * self.columns;
        &self.voxels[z * n..(z + 1) * n]
    }

    /// Volume of one voxel in millilitres.
    pub fn voxel_ml(&self) -> f64 {
        self.spacing.iter().product::<f64>() / 1000.0
    }
}

/// Cross product of two 3-vectors.
pub fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// Dot product of two 3-vectors.
pub fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_spacing_and_directions() {
        let v = Volume {
            columns: 2,
            rows: 2,
            slices: 2,
            spacing: [0.5, 0.5, 2.0],
            origin: [10.0, 20.0, 30.0],
            row_direction: [1.0, 0.0, 0.0],
            column_direction: [0.0, 1.0, 0.0],
            normal: [0.0, 0.0, 1.0],
            voxels: vec![0.0; 8],
            modality: "CT".into(),
            frame_of_reference_uid: None,
        };
        assert_eq!(v.position(1.0, 1.0, 1.0), [10.5, 20.5, 32.0]);
        assert_eq!(v.slice(1).len(), 4);
        assert!((v.voxel_ml() - 0.0005).abs() < 1e-12);
        assert_eq!(cross([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]), [0.0, 0.0, 1.0]);
    }
}
