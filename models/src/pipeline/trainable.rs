//! The trainable part of a contract-2 segmentation stage (`[stages.trainable]`): a
//! [`Head`] applied to every voxel of the stage's graph grid, reading the voxel's class logits
//! and the intermediate features of the coarser cell it lies in; and [`TrainableInputs`], what
//! a run of the stages hands learning (those inputs, with a label map on the same grid).

use crate::head::Head;
use crate::InferError;

/// The head's inputs on one stage's graph grid, as the graph gave them.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainableInputs {
    /// The graph grid: the stage's `shape` for a volume stage; slices × the stage's 2D
    /// `shape` for a slice or slab stage.
    pub shape: [usize; 3],
    /// Background and the labels.
    pub classes: usize,
    /// Class logits, channel-major `[classes, voxels]`.
    pub logits: Vec<f32>,
    pub channels: usize,
    /// How much coarser the features are on each axis (1 across the slices of a slice stage).
    pub stride: [usize; 3],
    /// Intermediate features, channel-major `[channels, cells]` on the grid `shape / stride`.
    pub features: Vec<f32>,
    /// Class of every voxel of the graph grid (a label map brought onto it, nearest voxel);
    /// empty when none was given.
    pub labels: Vec<u8>,
}

impl TrainableInputs {
    pub fn voxels(&self) -> usize {
        self.shape.iter().product()
    }

    /// Inputs per voxel: the class logits, then the features.
    pub fn width(&self) -> usize {
        self.classes + self.channels
    }

    fn cells(&self) -> [usize; 3] {
        std::array::from_fn(|a| self.shape[a] / self.stride[a].max(1))
    }

    /// Check the lengths against the shape, stride and counts.
    pub fn check(&self) -> Result<(), InferError> {
        let cells: usize = self.cells().iter().product();
        let ok = self.stride.iter().all(|s| *s > 0)
            && (0..3).all(|a| self.shape[a] % self.stride[a] == 0)
            && self.logits.len() == self.classes * self.voxels()
            && self.features.len() == self.channels * cells
            && (self.labels.is_empty() || self.labels.len() == self.voxels());
        if ok {
            Ok(())
        } else {
            Err(InferError::Head(format!(
                "trainable inputs: {} logits, {} features and {} labels do not fit grid {:?}, \
                 stride {:?}, {} classes and {} channels",
                self.logits.len(),
                self.features.len(),
                self.labels.len(),
                self.shape,
                self.stride,
                self.classes,
                self.channels
            )))
        }
    }

    /// Write the head's inputs of voxel `v` (flat index on the graph grid) into `out`.
    pub fn inputs_of(&self, v: usize, out: &mut [f32]) {
        let voxels = self.voxels();
        for (c, o) in out[..self.classes].iter_mut().enumerate() {
            *o = self.logits[c * voxels + v];
        }
        let [_, h, w] = self.shape;
        let (i, j, k) = (v / (h * w), (v / w) % h, v % w);
        let [_, ch, cw] = self.cells();
        let [si, sj, sk] = self.stride;
        let cell = ((i / si) * ch + j / sj) * cw + k / sk;
        let cells: usize = self.cells().iter().product();
        for (c, o) in out[self.classes..].iter_mut().enumerate() {
            *o = self.features[c * cells + cell];
        }
    }
}

/// Class probabilities of every voxel, channel-major `[classes, voxels]`, from class
/// `first_class` on (1 drops the background). Voxels are split across the machine's cores.
pub fn probabilities(
    head: &Head,
    inputs: &TrainableInputs,
    first_class: usize,
) -> Result<Vec<f32>, InferError> {
    inputs.check()?;
    head.check()?;
    if head.features != inputs.width() || head.classes != inputs.classes {
        return Err(InferError::Head(format!(
            "the head takes {} inputs to {} classes; the stage gives {} inputs for {} classes",
            head.features,
            head.classes,
            inputs.width(),
            inputs.classes
        )));
    }
    let voxels = inputs.voxels();
    let kept = head.classes.saturating_sub(first_class);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16);
    let chunk = voxels.div_ceil(threads).max(1);
    // Voxel-major per chunk, then one transpose to channel-major.
    let mut by_voxel = vec![0f32; voxels * kept];
    std::thread::scope(|scope| {
        for (n, out) in by_voxel.chunks_mut(chunk * kept).enumerate() {
            scope.spawn(move || {
                let mut x = vec![0f32; head.features];
                let mut hidden = vec![0f32; head.hidden];
                let mut p = vec![0f32; head.classes];
                let start = n * chunk;
                for (offset, probs) in out.chunks_exact_mut(kept).enumerate() {
                    inputs.inputs_of(start + offset, &mut x);
                    head.probabilities_of(&x, &mut hidden, &mut p);
                    probs.copy_from_slice(&p[first_class..]);
                }
            });
        }
    });
    if kept == 1 {
        return Ok(by_voxel);
    }
    let mut out = vec![0f32; voxels * kept];
    for v in 0..voxels {
        for c in 0..kept {
            out[c * voxels + v] = by_voxel[v * kept + c];
        }
    }
    Ok(out)
}
