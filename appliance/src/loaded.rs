//! A model loaded for inference, whichever its package contract: a contract-1 backbone with
//! the head the learner may swap, or a contract-2 pipeline of graphs. Both give the same
//! [`Inference`], so jobs, export and metrics do not care which ran.

use crate::config::Config;
use models::infer::{Inference, Model};
use models::pipeline::run::PipelineModel;
use models::registry::AnyPackage;
use models::InferError;
use radiant_core::Volume;
use std::path::Path;

pub enum Loaded {
    Head(Model),
    Pipeline(PipelineModel),
}

impl Loaded {
    /// Load `package` on the runtime `config` names.
    pub fn load(config: &Config, package: &AnyPackage) -> anyhow::Result<Loaded> {
        let inference = &config.inference;
        Loaded::load_with(
            inference.backend.choice(),
            inference.onnxruntime_library.as_deref(),
            package,
        )
    }

    /// Load `package` on `choice` (ONNX Runtime from `library`, else `ORT_DYLIB_PATH`).
    pub fn load_with(
        choice: onnx_backends::Choice,
        library: Option<&Path>,
        package: &AnyPackage,
    ) -> anyhow::Result<Loaded> {
        Ok(match package {
            AnyPackage::Head(p) => Loaded::Head(Model::new(
                p.clone(),
                onnx_backends::load(choice, p, library)?,
            )?),
            AnyPackage::Pipeline(p) => Loaded::Pipeline(PipelineModel::new(
                p.clone(),
                onnx_backends::load_pipeline(choice, p, library)?,
            )?),
        })
    }

    pub fn run(&mut self, volume: &Volume) -> Result<Inference, InferError> {
        match self {
            Loaded::Head(m) => models::infer::run(m, volume),
            Loaded::Pipeline(m) => models::pipeline::run::run(m, volume),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Loaded::Head(m) => m.backend.name(),
            Loaded::Pipeline(m) => m.backend_name(),
        }
    }
}
