//! What on-site learning needs to know of a model, whichever its package contract: who it is,
//! its labels and finding, the shape of its head and where the shipped head lies, and the key
//! that says when stored learning data no longer fits the frozen part that computed it.

use crate::head::Head;
use crate::package::{ClassificationSpec, LabelSpec};
use crate::registry::AnyPackage;
use crate::InferError;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// A model that learns on site.
#[derive(Debug, Clone, PartialEq)]
pub struct Learnable {
    pub id: String,
    pub version: String,
    pub modality: String,
    pub labels: Vec<LabelSpec>,
    pub classification: Option<ClassificationSpec>,
    /// The head's inputs per pixel or voxel, hidden units; its classes are the labels and
    /// background.
    pub features: usize,
    pub hidden: usize,
    pub head_path: PathBuf,
    pub head_sha256: String,
    /// Changes whenever what computes the head's inputs changes (the backbone, or every graph
    /// up to the trainable stage) or how much of a case is kept: stored learning data of
    /// another key are stale.
    pub features_key: String,
    /// A labelled case keeps a class-balanced sample of at most this many pixels (contract 1)
    /// or voxels (contract 2) of each class, with the class counts of the whole grid, so that
    /// fine-tuning weighs each sample back to its class's share.
    pub samples_per_class: usize,
}

impl Learnable {
    /// The learnable part of `package`: always for contract 1, for contract 2 when its
    /// segmentation stage is trainable.
    pub fn of(package: &AnyPackage) -> Option<Learnable> {
        let outputs = package.outputs();
        let mut model = Learnable {
            id: package.id().to_string(),
            version: package.version().to_string(),
            modality: package.modality().to_string(),
            labels: outputs.labels.to_vec(),
            classification: outputs.classification.cloned(),
            features: 0,
            hidden: 0,
            head_path: PathBuf::new(),
            head_sha256: String::new(),
            features_key: String::new(),
            samples_per_class: 0,
        };
        let mut key = Sha256::new();
        match package {
            AnyPackage::Head(p) => {
                let m = &p.manifest;
                model.features = m.backbone.features;
                model.hidden = m.head.hidden;
                model.head_path = p.head_path();
                model.head_sha256 = m.head.sha256.clone();
                model.samples_per_class = m.head.samples_per_class;
                key.update(m.backbone.sha256.as_bytes());
                key.update(b"\n");
            }
            AnyPackage::Pipeline(p) => {
                let (index, t) = p.trainable()?;
                let classes = model.classes();
                for stage in &p.manifest.stages[..=index] {
                    key.update(stage.sha256.as_bytes());
                    key.update(b"\n");
                }
                model.features = t.head_inputs(classes);
                model.hidden = t.hidden;
                model.head_path = p.dir.join(&t.head);
                model.head_sha256 = t.head_sha256.clone();
                model.samples_per_class = t.samples_per_class;
            }
        }
        key.update(format!("sampled {}", model.samples_per_class).as_bytes());
        model.features_key = key.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Some(model)
    }

    /// The head class of every label value (1-based, in manifest order; 0 for background and
    /// any value the model does not have).
    pub fn class_of_values(&self) -> [u8; 256] {
        let mut class_of = [0u8; 256];
        for (index, label) in self.labels.iter().enumerate() {
            class_of[usize::from(label.value)] = (index + 1) as u8;
        }
        class_of
    }

    /// Most bytes of learning data one labelled case keeps: every sampled pixel's head
    /// inputs as f32 and its class as one byte.
    pub fn case_bytes(&self) -> usize {
        self.samples_per_class * self.classes() * (4 * self.features + 1)
    }

    /// Background and the labels.
    pub fn classes(&self) -> usize {
        self.labels.len() + 1
    }

    /// Read a head of this model from safetensors bytes, checking every tensor's shape.
    pub fn head_from(&self, bytes: &[u8]) -> Result<Head, InferError> {
        Head::from_safetensors(bytes, self.features, self.hidden, self.classes())
    }

    /// The head the package shipped.
    pub fn shipped_head(&self) -> Result<Head, InferError> {
        let bytes = std::fs::read(&self.head_path).map_err(|e| {
            InferError::Head(format!("cannot read {}: {e}", self.head_path.display()))
        })?;
        self.head_from(&bytes)
    }
}
