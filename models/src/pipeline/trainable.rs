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
            && (0..3).all(|a| self.shape[a].is_multiple_of(self.stride[a]))
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
/// `first_class` on (1 drops the background).
///
/// The features are the same for every voxel of a cell, so the hidden layer's feature part
/// (`b1 + W1_features · f`) is computed once per cell and each voxel adds only its logits'
/// part: per voxel `hidden × classes` multiply-adds instead of `hidden × (classes + channels)`
/// (1024 channels at stride 16 are then almost free). Planes of cells are split across the
/// machine's cores.
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
    let [_, h, w] = inputs.shape;
    let [si, sj, sk] = inputs.stride;
    let [planes, ch, cw] = inputs.cells();
    let per_plane = ch * cw;
    let cells = planes * per_plane;
    let plane_voxels = si * h * w;
    let (k, hidden, width) = (inputs.classes, head.hidden, head.features);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16);
    let planes_per_thread = planes.div_ceil(threads).max(1);
    // Voxel-major per thread, then one transpose to channel-major.
    let mut by_voxel = vec![0f32; voxels * kept];
    std::thread::scope(|scope| {
        for (n, out) in by_voxel
            .chunks_mut(planes_per_thread * plane_voxels * kept)
            .enumerate()
        {
            scope.spawn(move || {
                // [hidden, cells of one plane]: b1 + W1_features · f of every cell.
                let mut cell_part = vec![0f32; hidden * per_plane];
                let mut act = vec![0f32; hidden];
                let mut p = vec![0f32; head.classes];
                for (local, plane_out) in out.chunks_mut(plane_voxels * kept).enumerate() {
                    let ci = n * planes_per_thread + local;
                    for r in 0..hidden {
                        let row = &mut cell_part[r * per_plane..(r + 1) * per_plane];
                        row.fill(head.b1[r]);
                        for c in 0..inputs.channels {
                            let weight = head.w1[r * width + k + c];
                            let at = c * cells + ci * per_plane;
                            for (acc, f) in row.iter_mut().zip(&inputs.features[at..at + per_plane])
                            {
                                *acc += weight * f;
                            }
                        }
                    }
                    let first_voxel = ci * plane_voxels;
                    for (offset, probs) in plane_out.chunks_exact_mut(kept).enumerate() {
                        let v = first_voxel + offset;
                        let (j, kk) = ((v / w) % h, v % w);
                        let cell = (j / sj) * cw + kk / sk;
                        for (r, a) in act.iter_mut().enumerate() {
                            let mut pre = cell_part[r * per_plane + cell];
                            for class in 0..k {
                                pre +=
                                    head.w1[r * width + class] * inputs.logits[class * voxels + v];
                            }
                            *a = pre.max(0.0);
                        }
                        head.probabilities_from_hidden(&act, &mut p);
                        probs.copy_from_slice(&p[first_class..]);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use radiant_core::rng::SplitMix64;

    /// Per cell or per voxel, the same head: the cell-wise computation gives what the head
    /// gives on each voxel's inputs.
    #[test]
    fn the_cellwise_head_matches_the_head_on_every_voxel() {
        let mut rng = SplitMix64::new(3);
        let mut random = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| (rng.below(2001) as f32 - 1000.0) / 500.0)
                .collect()
        };
        for (shape, stride, classes) in [([6, 4, 8], [2, 2, 2], 2), ([5, 8, 4], [1, 4, 2], 3)] {
            let channels = 5;
            let voxels: usize = shape.iter().product();
            let cells = voxels / stride.iter().product::<usize>();
            let inputs = TrainableInputs {
                shape,
                classes,
                logits: random(classes * voxels),
                channels,
                stride,
                features: random(channels * cells),
                labels: Vec::new(),
            };
            let (hidden, width) = (7, classes + channels);
            let head = Head {
                features: width,
                hidden,
                classes,
                w1: random(hidden * width),
                b1: random(hidden),
                w2: random(classes * hidden),
                b2: random(classes),
                cls_w: [0.0; 2],
                cls_b: 0.0,
            };
            let fast = probabilities(&head, &inputs, 0).unwrap();
            let mut x = vec![0f32; width];
            let (mut act, mut p) = (vec![0f32; hidden], vec![0f32; classes]);
            for v in 0..voxels {
                inputs.inputs_of(v, &mut x);
                head.probabilities_of(&x, &mut act, &mut p);
                for c in 0..classes {
                    let got = fast[c * voxels + v];
                    assert!(
                        (got - p[c]).abs() < 1e-5,
                        "voxel {v} class {c}: {got} vs {}",
                        p[c]
                    );
                }
            }
        }
    }
}
