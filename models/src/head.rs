//! The trainable head, applied in Rust on the backbone's features: a per-pixel two-layer MLP
//! for segmentation (softmax over background and the labels) and a logistic study-level
//! classifier. Weights come from `head.safetensors`; shapes are checked against the manifest.
//! A fine-tuned head is written back in the same format ([`Head::to_safetensors`]).

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
        Head::from_safetensors(
            bytes,
            manifest.backbone.features,
            manifest.head.hidden,
            manifest.labels.len() + 1,
        )
    }

    /// Read a head from `head.safetensors` bytes, checking every tensor's dtype and shape
    /// against the given sizes.
    pub fn from_safetensors(
        bytes: &[u8],
        features: usize,
        hidden: usize,
        classes: usize,
    ) -> Result<Head, InferError> {
        let tensors = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| InferError::Head(format!("not a safetensors file: {e}")))?;
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

    /// The head as `head.safetensors` bytes, in the package format: F32 little-endian tensors
    /// `seg.w1`, `seg.b1`, `seg.w2`, `seg.b2`, `cls.w`, `cls.b`, sorted by name, header padded
    /// to 8 bytes (what `train_head_ct.py` writes; [`Head::from_safetensors`] reads it back).
    ///
    /// Fails only for a head whose vectors do not match its sizes ([`Head::check`]).
    pub fn to_safetensors(&self) -> Result<Vec<u8>, InferError> {
        self.check()?;
        let le = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let tensors: Vec<(&str, Vec<usize>, Vec<u8>)> = vec![
            ("cls.b", vec![1], le(&[self.cls_b])),
            ("cls.w", vec![2], le(&self.cls_w)),
            ("seg.b1", vec![self.hidden], le(&self.b1)),
            ("seg.b2", vec![self.classes], le(&self.b2)),
            ("seg.w1", vec![self.hidden, self.features], le(&self.w1)),
            ("seg.w2", vec![self.classes, self.hidden], le(&self.w2)),
        ];
        let views = tensors.iter().map(|(name, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .map_err(|e| InferError::Head(format!("tensor {name}: {e}")))?;
            Ok((*name, view))
        });
        let views = views.collect::<Result<Vec<_>, InferError>>()?;
        safetensors::serialize(views, None)
            .map_err(|e| InferError::Head(format!("cannot serialize the head: {e}")))
    }

    /// Check that every weight vector has the length its sizes say (the fields are public,
    /// so a hand-built head can be inconsistent).
    pub fn check(&self) -> Result<(), InferError> {
        let (f, h, c) = (self.features, self.hidden, self.classes);
        for (name, len, expected) in [
            ("seg.w1", self.w1.len(), h * f),
            ("seg.b1", self.b1.len(), h),
            ("seg.w2", self.w2.len(), c * h),
            ("seg.b2", self.b2.len(), c),
        ] {
            if len != expected {
                return Err(InferError::Head(format!(
                    "{name} has {len} values, a head of {f} features, {h} hidden and {c} classes needs {expected}"
                )));
            }
        }
        if f == 0 || h == 0 || c < 2 {
            return Err(InferError::Head(format!(
                "a head needs features, hidden units and at least 2 classes, not {f}/{h}/{c}"
            )));
        }
        Ok(())
    }

    /// Every weight, in a fixed order (seg.w1, seg.b1, seg.w2, seg.b2, cls.w, cls.b).
    pub fn parameters(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.w1.len() + self.b1.len() + self.w2.len() + 16);
        out.extend_from_slice(&self.w1);
        out.extend_from_slice(&self.b1);
        out.extend_from_slice(&self.w2);
        out.extend_from_slice(&self.b2);
        out.extend_from_slice(&self.cls_w);
        out.push(self.cls_b);
        out
    }

    /// Euclidean distance between the weights of two heads of the same shape (the FedProx
    /// proximal term is `mu / 2` times its square); `None` when the shapes differ.
    pub fn distance(&self, other: &Head) -> Option<f64> {
        if (self.features, self.hidden, self.classes)
            != (other.features, other.hidden, other.classes)
        {
            return None;
        }
        let sum: f64 = self
            .parameters()
            .iter()
            .zip(other.parameters())
            .map(|(a, b)| (f64::from(*a) - f64::from(b)).powi(2))
            .sum();
        Some(sum.sqrt())
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
                let at = (b * plane + p) * self.classes;
                self.probabilities_of(&f, &mut h, &mut out[at..at + self.classes]);
            }
        }
        out
    }

    /// Class probabilities of one pixel's `features` into `out` (`classes` long); `hidden` is
    /// scratch space of `hidden` values.
    pub fn probabilities_of(&self, features: &[f32], hidden: &mut [f32], out: &mut [f32]) {
        for (r, hr) in hidden.iter_mut().enumerate() {
            let row = &self.w1[r * self.features..(r + 1) * self.features];
            let s: f32 = row.iter().zip(features).map(|(w, x)| w * x).sum::<f32>() + self.b1[r];
            *hr = s.max(0.0);
        }
        self.probabilities_from_hidden(hidden, out);
    }

    /// Class probabilities into `out` from the hidden layer's activations (after the ReLU).
    pub fn probabilities_from_hidden(&self, hidden: &[f32], out: &mut [f32]) {
        for (c, l) in out.iter_mut().enumerate() {
            let row = &self.w2[c * self.hidden..(c + 1) * self.hidden];
            *l = row.iter().zip(hidden).map(|(w, x)| w * x).sum::<f32>() + self.b2[c];
        }
        softmax(out);
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
