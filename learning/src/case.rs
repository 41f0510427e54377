//! A labelled case as learning sees it: backbone features and labels on the model grid, and
//! the checks every case passes before it is trained on or scored.

/// One labelled case: the backbone features of its slices and the reference labels, both on
/// the model grid. No image, no DICOM. A case carries pixel labels, a study label, or both.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Caller's name for the case (a hash of the study, for lineage); used in errors.
    pub id: String,
    pub slices: usize,
    /// Pixels per slice on the model grid (rows * columns).
    pub plane: usize,
    /// Backbone output `[slices, features, plane]`, as [`models::backbone::Backend::run`] gives it.
    pub features: Vec<f32>,
    /// Class of every model-grid pixel `[slices, plane]`; 0 is background. Empty: the case
    /// has no segmentation label (a study-level label alone, e.g. from an SR), and then
    /// `finding` must be `Some`; such a case teaches and scores the study classifier only.
    pub labels: Vec<u8>,
    /// Study-level label: is the finding (the last label) present? `None`: not labelled.
    pub finding: Option<bool>,
    /// Volume of one model-grid pixel in millilitres (model spacing² × slice spacing / 1000),
    /// as inference measures the lesion volume the study classifier sees.
    pub pixel_ml: f64,
    /// For a case that keeps a sample of its pixels (a contract-2 model's class-balanced
    /// sample): how many pixels of each class the whole grid has, so that fine-tuning weighs
    /// each sampled pixel back to its class's share. `None`: the case holds every pixel.
    pub class_counts: Option<Vec<u64>>,
}

impl Case {
    /// Does the case carry a segmentation label (a class for every pixel)?
    pub fn has_pixel_labels(&self) -> bool {
        !self.labels.is_empty()
    }

    /// Check the case against a head of `features` inputs and `classes` outputs.
    pub fn check(&self, features: usize, classes: usize) -> Result<(), String> {
        let pixels = self.slices * self.plane;
        if pixels == 0 {
            return Err("no pixels (0 slices or an empty plane)".into());
        }
        if self.features.len() != pixels * features {
            return Err(format!(
                "{} feature values for {} slices of {} pixels, a head of {features} features needs {}",
                self.features.len(),
                self.slices,
                self.plane,
                pixels * features
            ));
        }
        if !self.has_pixel_labels() && self.finding.is_none() {
            return Err("no label at all: no pixel labels and no study label".into());
        }
        if self.has_pixel_labels() && self.labels.len() != pixels {
            return Err(format!(
                "{} labels for {} slices of {} pixels",
                self.labels.len(),
                self.slices,
                self.plane
            ));
        }
        if let Some(bad) = self.labels.iter().find(|l| usize::from(**l) >= classes) {
            return Err(format!("label {bad} but the head has {classes} classes"));
        }
        if let Some(counts) = &self.class_counts {
            if counts.len() != classes {
                return Err(format!(
                    "class counts for {} classes, the head has {classes}",
                    counts.len()
                ));
            }
            let mut sampled = vec![0u64; classes];
            for l in &self.labels {
                sampled[usize::from(*l)] += 1;
            }
            if let Some(c) = (0..classes).find(|c| sampled[*c] > counts[*c]) {
                return Err(format!(
                    "{} pixels of class {c} sampled from a grid that has {}",
                    sampled[c], counts[c]
                ));
            }
        }
        if !self.pixel_ml.is_finite() || self.pixel_ml <= 0.0 {
            return Err(format!("pixel volume {} ml", self.pixel_ml));
        }
        Ok(())
    }
}
