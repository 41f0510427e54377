//! Inference backends behind one trait. `tract` (pure Rust) is always built and is the
//! embedded default. A backend runs only the frozen backbone; the head is applied in Rust so
//! that every backend computes the same function from the same features.

use crate::InferError;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::*;

pub trait Backend: Send {
    /// Short name recorded with every result ("tract", "ort-cpu", "ort-cuda").
    fn name(&self) -> &'static str;
    /// Run the backbone on `input` `[n, channels, rows, columns]`; returns its output.
    fn run(&mut self, input: &[f32], shape: [usize; 4]) -> Result<Vec<f32>, InferError>;
}

/// tract: the ONNX graph is parsed once, and one optimised plan per batch size is kept.
pub struct TractBackend {
    model: InferenceModel,
    plans: HashMap<usize, Arc<TypedRunnableModel>>,
}

impl TractBackend {
    pub fn load(path: &Path) -> Result<Self, InferError> {
        let model = tract_onnx::onnx().model_for_path(path).map_err(|e| {
            InferError::Backend(format!("tract cannot load {}: {e}", path.display()))
        })?;
        Ok(Self {
            model,
            plans: HashMap::new(),
        })
    }

    fn plan(&mut self, shape: [usize; 4]) -> Result<Arc<TypedRunnableModel>, InferError> {
        if let Some(plan) = self.plans.get(&shape[0]) {
            return Ok(plan.clone());
        }
        let plan = self
            .model
            .clone()
            .with_input_fact(0, f32::fact(shape).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| InferError::Backend(format!("tract cannot plan batch {shape:?}: {e}")))?;
        self.plans.insert(shape[0], plan.clone());
        Ok(plan)
    }
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn run(&mut self, input: &[f32], shape: [usize; 4]) -> Result<Vec<f32>, InferError> {
        let plan = self.plan(shape)?;
        let tensor = Tensor::from_shape(&shape, input)
            .map_err(|e| InferError::Backend(format!("input tensor: {e}")))?;
        let outputs = plan
            .run(tvec!(tensor.into()))
            .map_err(|e| InferError::Backend(format!("tract run: {e}")))?;
        let view = outputs[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| InferError::Backend(format!("backbone output: {e}")))?;
        Ok(view.iter().copied().collect())
    }
}
