//! The manifest of a contract-2 package (`models/PACKAGE.md` documents every field): an
//! ordered list of ONNX stages, each with its input layout, spatial handling, region, intensity
//! steps, score decoding and post-processing, all declared in TOML. Parsing refuses unknown
//! keys (the error names the key) and checks every count, size and float before anything runs.

use crate::package::{ClassificationSpec, LabelSpec, ReportSpec, MAX_SAMPLES_PER_CLASS};
use serde::Deserialize;

/// Most stages a pipeline may declare.
pub const MAX_STAGES: usize = 8;
/// Largest side of a stage's model grid.
pub const MAX_SIDE: usize = 1024;
/// Most voxels of one model grid (a 512³ volume).
pub const MAX_GRID_VOXELS: usize = 512 * 512 * 512;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineManifest {
    /// Always 2 here; a manifest without `contract` is a contract-1 package.
    pub contract: u32,
    pub id: String,
    pub version: String,
    pub task: String,
    #[serde(default)]
    pub description: String,
    pub licence: String,
    pub intended_use: String,
    #[serde(default)]
    pub provenance: toml::Table,
    pub input: VolumeInput,
    pub stages: Vec<Stage>,
    pub labels: Vec<LabelSpec>,
    pub classification: Option<ClassificationSpec>,
    pub report: Option<ReportSpec>,
    #[serde(default)]
    pub metrics: toml::Table,
}

/// What series the model takes and how a volume is put on the canonical grid.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolumeInput {
    pub modality: String,
    pub min_slices: usize,
    /// The canonical voxel order every stage sees, reached by permuting and flipping the
    /// series' axes after their direction cosines (never assumed axial).
    pub orientation: Orientation,
    /// Resampling of the canonical volume to a spacing or a shape before the stages; none when
    /// absent.
    pub resample: Option<Resample>,
    /// Value of NaN or infinite samples (after rescale); the source's own values otherwise.
    #[serde(default)]
    pub non_finite_value: f32,
}

/// Canonical axis order: the first array axis points to the first letter's side.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum Orientation {
    /// Right, Anterior, Superior (NIfTI's RAS+, what nibabel's `as_closest_canonical` gives).
    #[serde(rename = "RAS")]
    Ras,
    /// Left, Posterior, Superior (DICOM patient axes).
    #[serde(rename = "LPS")]
    Lps,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Resample {
    /// Target spacing along the canonical axes, mm.
    pub spacing_mm: Option<[f64; 3]>,
    /// Target shape along the canonical axes.
    pub shape: Option<[usize; 3]>,
    pub interpolation: Interpolation,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Interpolation {
    /// PyTorch's `nearest-exact`: source index `floor((i + 0.5) · in / out)` in float32.
    NearestExact,
    /// Trilinear (bilinear in a plane) with aligned corners off, edge samples repeated.
    Linear,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum Layout {
    NCHW,
    NHWC,
    NCDHW,
    NDHWC,
}

impl Layout {
    pub fn is_3d(self) -> bool {
        matches!(self, Layout::NCDHW | Layout::NDHWC)
    }
}

/// How the region a stage reads becomes the graph's spatial input.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Spatial {
    /// Each slice across `slice_axis` on its own, resized to `shape` (2 values).
    Slice,
    /// `slab` neighbouring slices as channels around each slice (edges repeated).
    Slab,
    /// The whole region resized to `shape` (3 values).
    Volume,
    /// Patches of `shape` (3 values) at stride `shape · (1 − overlap)`, blended by a Gaussian.
    Patches,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: String,
    pub file: String,
    pub sha256: String,
    /// Graph input and output names.
    pub input: String,
    pub output: String,
    pub layout: Layout,
    pub spatial: Spatial,
    /// The graph's spatial input size: 2 values for slice and slab, 3 for volume and patches.
    pub shape: Vec<usize>,
    /// How the region is resized to `shape` (slice, slab and volume) and the scores back.
    #[serde(default = "nearest_exact")]
    pub resize: Interpolation,
    /// Canonical axis the slices of slice and slab stages run across (default 2).
    #[serde(default = "two")]
    pub slice_axis: usize,
    /// Slices per slab (odd), slab stages only.
    pub slab: Option<usize>,
    /// Patch overlap in [0, 0.9), patches stages only.
    pub overlap: Option<f64>,
    /// The part of the canonical volume the stage reads; all of it when absent.
    pub region: Option<RegionFrom>,
    /// One list of intensity steps per input channel.
    pub channels: Vec<Vec<IntensityStep>>,
    pub scores: Scores,
    #[serde(default)]
    pub postprocess: Vec<PostStep>,
    /// The part of the segmentation stage that learns on site: a head over the graph's class
    /// logits and a named intermediate output.
    pub trainable: Option<Trainable>,
}

/// Most channels of the intermediate output a head may read.
pub const MAX_HEAD_CHANNELS: usize = 4096;

/// A head trained on site, applied per voxel of the stage's graph grid in place of the graph's
/// own output: its inputs are the class logits of the voxel (`logits`, one per class,
/// background first) followed by the `channels` values of `features`, an intermediate output
/// `stride` times coarser on every axis (a voxel reads the cell it lies in); its output is a
/// softmax over background and the labels (`models::head::Head`, without its study
/// classifier). The shipped `head` reproduces the graph's declared output, so the package
/// computes what it computed without one until a fine-tuned head is in use.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Trainable {
    /// The shipped head's weights, a safetensors file of the package.
    pub head: String,
    pub head_sha256: String,
    /// Graph output: per-voxel class scores before any activation, `[1, classes, D, H, W]`.
    pub logits: String,
    /// Graph output: the intermediate features, `[1, channels, D/stride, H/stride, W/stride]`.
    pub features: String,
    pub channels: usize,
    pub stride: usize,
    /// Hidden units of the head.
    pub hidden: usize,
    /// Voxels of each class a labelled case keeps for learning (a class-balanced sample):
    /// a case's learning data is at most `samples_per_class * classes * (classes + channels)`
    /// floats.
    pub samples_per_class: usize,
}

impl Trainable {
    /// Inputs of the head per voxel: the class logits, then the features.
    pub fn head_inputs(&self, classes: usize) -> usize {
        classes + self.channels
    }

    fn check(&self, stage: &Stage, segmentation: bool) -> Result<(), String> {
        if !segmentation {
            return Err("trainable is for the segmentation stage (the last per-voxel one)".into());
        }
        if !matches!(stage.layout, Layout::NCDHW | Layout::NCHW)
            || !matches!(
                stage.spatial,
                Spatial::Volume | Spatial::Slice | Spatial::Slab
            )
        {
            return Err(
                "trainable needs spatial = \"volume\", \"slice\" or \"slab\" and a \
                 channels-first layout (NCDHW, NCHW)"
                    .into(),
            );
        }
        if self.head.is_empty() || self.head.contains('/') || self.head.contains("..") {
            return Err(format!(
                "trainable.head {:?} must be a plain file name",
                self.head
            ));
        }
        if self.head_sha256.len() != 64 || !self.head_sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err("trainable.head_sha256 must be 64 hex digits".into());
        }
        if self.logits.is_empty() || self.features.is_empty() || self.logits == self.features {
            return Err("trainable.logits and trainable.features name two graph outputs".into());
        }
        if !(1..=MAX_HEAD_CHANNELS).contains(&self.channels) {
            return Err(format!(
                "trainable.channels must be between 1 and {MAX_HEAD_CHANNELS}"
            ));
        }
        if !(1..=64).contains(&self.stride) || stage.shape.iter().any(|s| s % self.stride != 0) {
            return Err("trainable.stride must be 1 to 64 and divide every side of shape".into());
        }
        if !(1..=1024).contains(&self.hidden) {
            return Err("trainable.hidden must be between 1 and 1024".into());
        }
        if !(1..=MAX_SAMPLES_PER_CLASS).contains(&self.samples_per_class) {
            return Err(format!(
                "trainable.samples_per_class must be between 1 and {MAX_SAMPLES_PER_CLASS}"
            ));
        }
        Ok(())
    }
}

fn nearest_exact() -> Interpolation {
    Interpolation::NearestExact
}

fn two() -> usize {
    2
}

/// A crop stage: the bounding box of an earlier stage's mask, grown by a margin.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegionFrom {
    /// The earlier stage whose foreground gives the box.
    pub stage: String,
    /// A grid plane counts as inside the box when more than this fraction of it is
    /// foreground (0 = any voxel).
    #[serde(default)]
    pub min_slice_fraction: f64,
    /// Added on each side, as a fraction of the box's size.
    #[serde(default)]
    pub margin: f64,
}

/// One intensity step, applied in order to the stage's resized input.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum IntensityStep {
    /// `clamp((x − (center − width/2)) / width, 0, 1)`: a CT window.
    Window { center: f32, width: f32 },
    /// `clamp(x, min, max)`.
    Clip { min: f32, max: f32 },
    /// Percentiles `low` and `high` (linear interpolation, as NumPy and PyTorch) of the
    /// stage's input, or of the input of the stage named by `from`; then
    /// `clamp((x − p_low) / (p_high − p_low), 0, 1)`.
    PercentileWindow {
        low: f64,
        high: f64,
        from: Option<String>,
    },
    /// `(x − mean) / std` over the stage's input (`std` with N − 1). (An empty struct, not a
    /// unit variant: serde would let a unit variant ignore unknown keys.)
    Zscore {},
    /// `(x − mean) / std` with fixed values.
    Standardise { mean: f32, std: f32 },
    /// `x · factor + offset`.
    Affine { factor: f32, offset: f32 },
}

/// What the graph's output is and how it becomes decisions.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scores {
    /// Per voxel, per slice or per study.
    pub per: ScoreLevel,
    /// Applied to the output channels: softmax, sigmoid, or none (already probabilities).
    pub activation: Activation,
    /// Output channels.
    pub channels: usize,
    /// Per-voxel outputs only: argmax over the channels (class = channel index), or a
    /// threshold on each channel (channel k above it is class k + 1; the highest wins).
    pub decision: Option<Decision>,
    /// Strictly above this a channel is present (threshold decisions).
    pub threshold: Option<f32>,
    /// Where voxel decisions and post-processing happen: on the graph's grid or on the
    /// stage's region at source resolution.
    #[serde(default = "region_grid")]
    pub grid: DecisionGrid,
    /// Per-slice and per-study scores: what each channel's probability is about (a finding
    /// code for the report), one per channel.
    #[serde(default)]
    pub codes: Vec<radiant_core::Code>,
}

fn region_grid() -> DecisionGrid {
    DecisionGrid::Region
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreLevel {
    Voxel,
    Slice,
    Study,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    None,
    Softmax,
    Sigmoid,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    Argmax,
    Threshold,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DecisionGrid {
    Model,
    Region,
}

/// One post-processing step on a stage's voxel decisions, within its region.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PostStep {
    /// Keep only the largest connected foreground component (6, 18 or 26 neighbours).
    LargestComponent { connectivity: u8 },
    /// Background not connected (6 neighbours) to the region's border becomes foreground.
    FillHoles {},
    /// Drop foreground components of fewer voxels.
    MinComponentVoxels { voxels: usize },
}

impl PipelineManifest {
    /// Check every field the types cannot; the first failure is returned, naming its field.
    pub fn check(&self) -> Result<(), String> {
        if self.contract != 2 {
            return Err(format!(
                "contract = {} is not a contract this appliance runs (absent for 1, or 2)",
                self.contract
            ));
        }
        if !(1..=MAX_STAGES).contains(&self.stages.len()) {
            return Err(format!("stages: between 1 and {MAX_STAGES} stages"));
        }
        if self.input.min_slices == 0 {
            return Err("input.min_slices must be at least 1".into());
        }
        if !self.input.non_finite_value.is_finite() {
            return Err("input.non_finite_value must be finite".into());
        }
        if let Some(r) = &self.input.resample {
            match (r.spacing_mm, r.shape) {
                (Some(s), None) if s.iter().all(|v| v.is_finite() && (0.05..=20.0).contains(v)) => {
                }
                (None, Some(s)) if s.iter().all(|v| (1..=MAX_SIDE).contains(v)) => {}
                _ => {
                    return Err(
                        "input.resample: exactly one of spacing_mm (0.05 to 20 mm) or \
                                shape (1 to 1024)"
                            .into(),
                    )
                }
            }
        }
        let segmentation = self.segmentation_stage();
        if segmentation.is_none() && !self.labels.is_empty() {
            return Err("labels are declared but no stage gives per-voxel scores".into());
        }
        for (i, stage) in self.stages.iter().enumerate() {
            stage
                .check(
                    &self.stages[..i],
                    Some(i) == segmentation,
                    self.labels.len(),
                )
                .map_err(|e| format!("stages[{i}] ({}): {e}", stage.name))?;
        }
        Ok(())
    }
}

impl PipelineManifest {
    /// The stage whose voxel decisions are the model's segmentation: the last per-voxel stage.
    pub fn segmentation_stage(&self) -> Option<usize> {
        self.stages
            .iter()
            .rposition(|s| s.scores.per == ScoreLevel::Voxel)
    }
}

impl Stage {
    fn check(&self, earlier: &[Stage], segmentation: bool, labels: usize) -> Result<(), String> {
        let name_ok = (1..=32).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok || earlier.iter().any(|s| s.name == self.name) {
            return Err("name must be unique, 1-32 characters of [a-z0-9-]".into());
        }
        if self.file.is_empty() || self.file.contains('/') || self.file.contains("..") {
            return Err(format!("file {:?} must be a plain file name", self.file));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("sha256 must be 64 hex digits".into());
        }
        let dims = match self.spatial {
            Spatial::Slice | Spatial::Slab => 2,
            Spatial::Volume | Spatial::Patches => 3,
        };
        if self.layout.is_3d() != (dims == 3) {
            return Err(format!(
                "layout {:?} does not fit spatial {:?}",
                self.layout, self.spatial
            ));
        }
        if self.shape.len() != dims || !self.shape.iter().all(|s| (1..=MAX_SIDE).contains(s)) {
            return Err(format!(
                "shape must be {dims} sizes between 1 and {MAX_SIDE}"
            ));
        }
        if self.shape.iter().product::<usize>() > MAX_GRID_VOXELS {
            return Err(format!("shape has more than {MAX_GRID_VOXELS} voxels"));
        }
        if self.slice_axis > 2 {
            return Err("slice_axis must be 0, 1 or 2".into());
        }
        match (self.spatial, self.slab) {
            (Spatial::Slab, Some(k)) if k % 2 == 1 && (3..=31).contains(&k) => {}
            (Spatial::Slab, _) => return Err("slab must be an odd count from 3 to 31".into()),
            (_, Some(_)) => return Err("slab is for slab stages only".into()),
            _ => {}
        }
        match (self.spatial, self.overlap) {
            (Spatial::Patches, Some(o)) if (0.0..0.9).contains(&o) => {}
            (Spatial::Patches, _) => return Err("overlap must be in [0, 0.9)".into()),
            (_, Some(_)) => return Err("overlap is for patches stages only".into()),
            _ => {}
        }
        if let Some(region) = &self.region {
            let Some(source) = earlier.iter().find(|s| s.name == region.stage) else {
                return Err(format!(
                    "region.stage {:?} is not an earlier stage",
                    region.stage
                ));
            };
            if source.scores.per != ScoreLevel::Voxel {
                return Err(format!(
                    "region.stage {:?} gives no voxel mask",
                    region.stage
                ));
            }
            if !(0.0..1.0).contains(&region.min_slice_fraction) {
                return Err("region.min_slice_fraction must be in [0, 1)".into());
            }
            if !(0.0..=2.0).contains(&region.margin) {
                return Err("region.margin must be in [0, 2]".into());
            }
        }
        let inputs = match self.spatial {
            Spatial::Slab => self.slab.unwrap_or(1),
            _ => 1,
        };
        if self.channels.is_empty()
            || self.channels.len() > 16
            || (self.spatial == Spatial::Slab && self.channels.len() != 1)
        {
            return Err(format!(
                "channels must list 1 to 16 step lists (one for slab stages, whose {inputs} \
                 slices are the channels)"
            ));
        }
        for step in self.channels.iter().flatten() {
            step.check(earlier)?;
        }
        self.scores.check(segmentation, labels)?;
        if let Some(t) = &self.trainable {
            t.check(self, segmentation)?;
        }
        if !self.postprocess.is_empty() && self.scores.per != ScoreLevel::Voxel {
            return Err("postprocess is for per-voxel scores only".into());
        }
        for step in &self.postprocess {
            match step {
                PostStep::LargestComponent { connectivity }
                    if ![6, 18, 26].contains(connectivity) =>
                {
                    return Err("largest-component connectivity must be 6, 18 or 26".into())
                }
                PostStep::MinComponentVoxels { voxels } if *voxels == 0 => {
                    return Err("min-component-voxels voxels must be at least 1".into())
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Channels the graph takes.
    pub fn input_channels(&self) -> usize {
        match self.spatial {
            Spatial::Slab => self.slab.unwrap_or(1),
            _ => self.channels.len(),
        }
    }
}

impl IntensityStep {
    fn check(&self, earlier: &[Stage]) -> Result<(), String> {
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        match self {
            IntensityStep::Window { center, width }
                if finite(&[*center, *width]) && *width > 0.0 =>
            {
                Ok(())
            }
            IntensityStep::Window { .. } => Err("window width must be positive and finite".into()),
            IntensityStep::Clip { min, max } if finite(&[*min, *max]) && min < max => Ok(()),
            IntensityStep::Clip { .. } => Err("clip needs finite min < max".into()),
            IntensityStep::PercentileWindow { low, high, from } => {
                if !(0.0 <= *low && low < high && *high <= 100.0) {
                    return Err("percentile-window needs 0 <= low < high <= 100".into());
                }
                match from {
                    Some(f) if !earlier.iter().any(|s| &s.name == f) => Err(format!(
                        "percentile-window from {f:?} is not an earlier stage"
                    )),
                    _ => Ok(()),
                }
            }
            IntensityStep::Zscore {} => Ok(()),
            IntensityStep::Standardise { mean, std } if finite(&[*mean, *std]) && *std > 0.0 => {
                Ok(())
            }
            IntensityStep::Standardise { .. } => {
                Err("standardise std must be positive and finite".into())
            }
            IntensityStep::Affine { factor, offset } if finite(&[*factor, *offset]) => Ok(()),
            IntensityStep::Affine { .. } => Err("affine factor and offset must be finite".into()),
        }
    }
}

impl Scores {
    fn check(&self, segmentation: bool, labels: usize) -> Result<(), String> {
        if !(1..=64).contains(&self.channels) {
            return Err("scores.channels must be between 1 and 64".into());
        }
        if self.per == ScoreLevel::Voxel {
            let classes = match (self.decision, self.threshold) {
                (Some(Decision::Argmax), None) if self.channels >= 2 => self.channels - 1,
                (Some(Decision::Threshold), Some(t)) if t.is_finite() => self.channels,
                _ => {
                    return Err(
                        "per-voxel scores need decision = \"argmax\" (2 channels or \
                                more, no threshold) or decision = \"threshold\" with a finite \
                                threshold"
                            .into(),
                    )
                }
            };
            if segmentation && classes != labels {
                return Err(format!(
                    "the segmentation stage decides {classes} classes but the manifest has \
                     {labels} labels"
                ));
            }
            if !self.codes.is_empty() {
                return Err("codes are for per-slice and per-study scores".into());
            }
        } else {
            if self.decision.is_some() || self.threshold.is_some() {
                return Err("decision and threshold are for per-voxel scores".into());
            }
            if self.codes.len() != self.channels {
                return Err("per-slice and per-study scores need one code per channel".into());
            }
        }
        Ok(())
    }
}
