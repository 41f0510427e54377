//! The trainable head, applied in Rust on the backbone's features: a per-pixel two-layer MLP
//! for segmentation (softmax over background and the labels) and a logistic study-level
//! classifier. Weights come from `head.safetensors`; shapes are checked against the manifest.

use crate::package::Manifest;
use crate::InferError;

#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub features: usize,
    pub hidden: usize,
    pub classes: usize,
    /// `[hidden, features]`, row-major.
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    /// `[classes, hidden]`.
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
    /// Study-level classifier on (max lesion probability, ln(1 + lesion ml)).
    pub cls_w: [f32; 2],
    pub cls_b: f32,
}

impl Head {
    /// Read the head of a package, checking every tensor's dtype and shape.
    pub fn load(bytes: &[u8], manifest: &Manifest) -> Result<Head, InferError> {
        let tensors = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| InferError::Head(format!("not a safetensors file: {e}")))?;
        let features = manifest.backbone.features;
        let hidden = manifest.head.hidden;
        let classes = manifest.labels.len() + 1;
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, InferError> {
            let t = tensors
                .tensor(name)
                .map_err(|_| InferError::Head(format!("tensor {name} missing")))?;
            if t.dtype() != safetensors::Dtype::F32 || t.shape() != shape {
                return Err(InferError::Head(format!(
                    "tensor {name} is {:?} {:?}, expected F32 {shape:?}",
                    t.dtype(),
                    t.shape()
                )));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let cls_w = get("cls.w", &[2])?;
        Ok(Head {
            features,
            hidden,
            classes,
            w1: get("seg.w1", &[hidden, features])?,
            b1: get("seg.b1", &[hidden])?,
            w2: get("seg.w2", &[classes, hidden])?,
            b2: get("seg.b2", &[classes])?,
            cls_w: [cls_w[0], cls_w[1]],
            cls_b: get("cls.b", &[1])?[0],
        })
    }

    /// Class probabilities of every pixel of a batch of feature maps `[n, features, plane]`;
    /// returns `[n, plane, classes]`.
    pub fn probabilities(&self, features: &[f32], n: usize, plane: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * plane * self.classes];
        let mut f = vec![0f32; self.features];
        let mut h = vec![0f32; self.hidden];
        for b in 0..n {
            let base = b * self.features * plane;
            for p in 0..plane {
                for (k, fk) in f.iter_mut().enumerate() {
                    *fk = features[base + k * plane + p];
                }
                for (r, hr) in h.iter_mut().enumerate() {
                    let row = &self.w1[r * self.features..(r + 1) * self.features];
                    let s: f32 = row.iter().zip(&f).map(|(w, x)| w * x).sum::<f32>() + self.b1[r];
                    *hr = s.max(0.0);
                }
                let logits =
                    &mut out[(b * plane + p) * self.classes..(b * plane + p + 1) * self.classes];
                for (c, l) in logits.iter_mut().enumerate() {
                    let row = &self.w2[c * self.hidden..(c + 1) * self.hidden];
                    *l = row.iter().zip(&h).map(|(w, x)| w * x).sum::<f32>() + self.b2[c];
                }
                softmax(logits);
            }
        }
        out
    }

    /// Study-level probability from the maximum lesion probability and the lesion volume (ml).
    pub fn classify(&self, max_probability: f32, lesion_ml: f64) -> f64 {
        let z = f64::from(self.cls_w[0]) * f64::from(max_probability)
            + f64::from(self.cls_w[1]) * (1.0 + lesion_ml).ln()
            + f64::from(self.cls_b);
        1.0 / (1.0 + (-z).exp())
    }
}

fn softmax(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::MIN, f32::max);
    let mut sum = 0.0;
    for v in values.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in values.iter_mut() {
        *v /= sum;
    }
}
