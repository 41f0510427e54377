//! Contract-2 packages: a model as an ordered pipeline of ONNX graphs, everything about how a
//! volume reaches each graph and how its scores become labels declared in the manifest
//! (`models/PACKAGE.md`), so that adding a model of a known kind needs no code change.
//!
//! # Layout
//! - [`manifest`]: the manifest's types and their checks.
//! - [`grid`]: the canonical grid (permute and flip after the direction cosines), resizes.
//! - [`intensity`]: intensity steps.
//! - [`morphology`]: post-processing of label grids.
//! - [`run`]: one study through the stages, with a crop between them.
//! - [`trainable`]: the head a segmentation stage learns on site, applied per voxel.

pub mod grid;
pub mod intensity;
pub mod manifest;
pub mod morphology;
pub mod run;
pub mod trainable;

use crate::package::{read_manifest_text, sha256_file, PackageError};
use crate::InferError;
use manifest::PipelineManifest;
use std::path::{Path, PathBuf};

/// One ONNX graph as a runtime holds it (`onnx-backends` implements it for tract and ONNX
/// Runtime). The caller checks the output's length against what the stage declares.
pub trait Graph: Send {
    /// Short name recorded with every result ("tract", "ort-cpu", "ort-cuda").
    fn name(&self) -> &'static str;
    /// Run the graph on `input` of `shape`; returns its output (the stage's `output`),
    /// flattened.
    fn run(&mut self, input: &[f32], shape: &[usize]) -> Result<Vec<f32>, InferError>;
    /// Run the graph on `input` of `shape`; returns the named outputs, flattened, in the order
    /// asked (a trainable stage's class logits and features).
    fn run_outputs(
        &mut self,
        input: &[f32],
        shape: &[usize],
        outputs: &[&str],
    ) -> Result<Vec<Vec<f32>>, InferError>;
}

/// A contract-2 package whose manifest parsed and checked and whose graph files match their
/// hashes.
#[derive(Debug, Clone)]
pub struct PipelinePackage {
    pub dir: PathBuf,
    pub manifest: PipelineManifest,
}

impl PipelinePackage {
    pub fn open(dir: &Path) -> Result<PipelinePackage, PackageError> {
        let path = dir.join("manifest.toml");
        let text = read_manifest_text(&path)?;
        let manifest = parse_manifest(&path, &text)?;
        let package = PipelinePackage {
            dir: dir.to_path_buf(),
            manifest,
        };
        package.verify()?;
        Ok(package)
    }

    /// The graph file of each stage, in order.
    pub fn stage_paths(&self) -> Vec<PathBuf> {
        self.manifest
            .stages
            .iter()
            .map(|s| self.dir.join(&s.file))
            .collect()
    }

    /// The segmentation stage's index and its trainable part, when it has one.
    pub fn trainable(&self) -> Option<(usize, &manifest::Trainable)> {
        let index = self.manifest.segmentation_stage()?;
        self.manifest.stages[index]
            .trainable
            .as_ref()
            .map(|t| (index, t))
    }

    /// The shipped head's file, when the package has a trainable stage.
    pub fn head_path(&self) -> Option<PathBuf> {
        self.trainable().map(|(_, t)| self.dir.join(&t.head))
    }

    /// Check every stage's graph, and the shipped head, against its SHA-256.
    pub fn verify(&self) -> Result<(), PackageError> {
        let mut files: Vec<(PathBuf, &str)> = self
            .manifest
            .stages
            .iter()
            .zip(self.stage_paths())
            .map(|(stage, path)| (path, stage.sha256.as_str()))
            .collect();
        if let (Some(path), Some((_, t))) = (self.head_path(), self.trainable()) {
            files.push((path, t.head_sha256.as_str()));
        }
        for (path, expected) in files {
            let actual = sha256_file(&path)?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(PackageError::HashMismatch {
                    path,
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        Ok(())
    }
}

/// Parse and check a contract-2 manifest's text; `path` only names it in errors. Unknown keys
/// are refused by name.
pub fn parse_manifest(path: &Path, text: &str) -> Result<PipelineManifest, PackageError> {
    let invalid = |reason: String| PackageError::Manifest {
        path: path.to_path_buf(),
        reason,
    };
    let manifest: PipelineManifest = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    crate::package::check_common(
        &manifest.id,
        &manifest.version,
        &manifest.licence,
        &manifest.labels,
    )
    .map_err(invalid)?;
    manifest.check().map_err(invalid)?;
    Ok(manifest)
}
