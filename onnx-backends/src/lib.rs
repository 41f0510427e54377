//! The runtimes that run a package's frozen ONNX backbone behind `models::backbone::Backend`:
//! `tract` (pure Rust, always built, the embedded default) and ONNX Runtime through `ort`
//! (the shared library is loaded at run time; CUDA when its provider starts, else the CPU).
//! Only this crate links an ML runtime for inference: `models`, `learning` and everything that
//! needs packages or heads build without it. A backend runs only the backbone; the head is
//! applied in Rust so that every backend computes the same function from the same features.

use models::backbone::Backend;
use models::package::Package;
use models::pipeline::{Graph, PipelinePackage};
use models::InferError;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::*;

/// tract: the ONNX graph is parsed once, and one optimised plan per input shape is kept.
pub struct TractBackend {
    model: InferenceModel,
    /// The output a plain run returns: the graph's first, or the stage's named one.
    output: Option<String>,
    /// One plan per input shape and set of outputs.
    plans: HashMap<(Vec<usize>, Vec<String>), Arc<TypedRunnableModel>>,
}

impl TractBackend {
    pub fn load(path: &Path) -> Result<Self, InferError> {
        let model = tract_onnx::onnx().model_for_path(path).map_err(|e| {
            InferError::Backend(format!("tract cannot load {}: {e}", path.display()))
        })?;
        Ok(Self {
            model,
            output: None,
            plans: HashMap::new(),
        })
    }

    /// Load a stage graph whose plain run returns the output named `output`.
    pub fn load_stage(path: &Path, output: &str) -> Result<Self, InferError> {
        let mut backend = Self::load(path)?;
        backend.output = Some(output.to_string());
        Ok(backend)
    }

    /// The plan for input `shape` computing `outputs` (none: the graph's declared outputs).
    fn plan(
        &mut self,
        shape: &[usize],
        outputs: &[String],
    ) -> Result<Arc<TypedRunnableModel>, InferError> {
        let key = (shape.to_vec(), outputs.to_vec());
        if let Some(plan) = self.plans.get(&key) {
            return Ok(plan.clone());
        }
        let mut model = self.model.clone();
        if !outputs.is_empty() {
            model.select_outputs_by_name(outputs).map_err(|e| {
                InferError::Backend(format!("tract: graph outputs {outputs:?}: {e}"))
            })?;
        }
        let plan = model
            .with_input_fact(0, f32::fact(shape).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| InferError::Backend(format!("tract cannot plan input {shape:?}: {e}")))?;
        self.plans.insert(key, plan.clone());
        Ok(plan)
    }

    fn run_plan(
        &mut self,
        input: &[f32],
        shape: &[usize],
        outputs: &[String],
    ) -> Result<Vec<Vec<f32>>, InferError> {
        let plan = self.plan(shape, outputs)?;
        let tensor = Tensor::from_shape(shape, input)
            .map_err(|e| InferError::Backend(format!("input tensor: {e}")))?;
        let results = plan.run(tvec!(tensor.into()));
        clear_upper_vector_state();
        let results = results.map_err(|e| InferError::Backend(format!("tract run: {e}")))?;
        results
            .iter()
            .map(|r| {
                r.to_plain_array_view::<f32>()
                    .map(|view| view.iter().copied().collect())
                    .map_err(|e| InferError::Backend(format!("graph output: {e}")))
            })
            .collect()
    }
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn run(&mut self, input: &[f32], shape: [usize; 4]) -> Result<Vec<f32>, InferError> {
        Graph::run(self, input, &shape)
    }
}

impl Graph for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn run(&mut self, input: &[f32], shape: &[usize]) -> Result<Vec<f32>, InferError> {
        let outputs: Vec<String> = self.output.iter().cloned().collect();
        self.run_plan(input, shape, &outputs)?
            .into_iter()
            .next()
            .ok_or_else(|| InferError::Backend("the graph gave no output".into()))
    }

    fn run_outputs(
        &mut self,
        input: &[f32],
        shape: &[usize],
        outputs: &[&str],
    ) -> Result<Vec<Vec<f32>>, InferError> {
        let names: Vec<String> = outputs.iter().map(|o| o.to_string()).collect();
        self.run_plan(input, shape, &names)
    }
}

/// tract's AVX kernels return with the upper halves of the vector registers dirty, and the
/// baseline x86-64 (SSE) code that runs next on the thread then pays the AVX-SSE transition
/// penalty: `infer_bench` measured the head at 252-277 ms per study right after tract runs and
/// 65-74 ms with a `vzeroupper` in between (after ONNX Runtime runs it is fast without one).
/// One `vzeroupper` after each run restores the speed; it changes no value.
fn clear_upper_vector_state() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        #[target_feature(enable = "avx")]
        unsafe fn zero_upper() {
            std::arch::x86_64::_mm256_zeroupper();
        }
        // SAFETY: the CPU has AVX, checked just above.
        unsafe { zero_upper() }
    }
}

/// Which processor ONNX Runtime should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrtDevice {
    Cpu,
    /// The CUDA execution provider, with a logged fallback to the CPU when it cannot start.
    CudaOrCpu,
}

/// ONNX Runtime through `ort`, with the library loaded at run time.
pub struct OrtBackend {
    session: ort::session::Session,
    input: String,
    output: String,
    provider: &'static str,
    intra_threads: usize,
    /// Where bound outputs land: host memory on the CPU provider; on CUDA, pinned host memory
    /// the device copies into directly (no pageable staging copy).
    output_memory: ort::memory::MemoryInfo<'static>,
}

static ORT_ENVIRONMENT: std::sync::OnceLock<Result<ort::environment::Environment, String>> =
    std::sync::OnceLock::new();

/// Load the ONNX Runtime shared library once per process.
fn ort_environment(library: &Path) -> Result<&'static ort::environment::Environment, InferError> {
    ORT_ENVIRONMENT
        .get_or_init(|| {
            ort::init_from(library)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", library.display()))?
                .build()
                .map_err(|e| format!("ONNX Runtime environment: {e}"))
        })
        .as_ref()
        .map_err(|e| InferError::Backend(e.clone()))
}

impl OrtBackend {
    /// Load `model` with ONNX Runtime from `library` (`libonnxruntime.so.1.x`).
    pub fn load(
        model: &Path,
        library: &Path,
        input: &str,
        output: &str,
        device: OrtDevice,
    ) -> Result<Self, InferError> {
        let environment = ort_environment(library)?;
        let err = |e: ort::Error| InferError::Backend(format!("ONNX Runtime: {e}"));
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let builder = || {
            ort::session::Session::builder(environment)
                .map_err(err)?
                .with_intra_threads(threads)
                .map_err(|e| err(e.into()))
        };
        let mut provider = "ort-cpu";
        let mut session = None;
        if device == OrtDevice::CudaOrCpu {
            let cuda = builder()?
                .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
                .map_err(|e| err(e.into()))
                .and_then(|mut b| b.commit_from_file(model).map_err(err));
            match cuda {
                Ok(s) => {
                    session = Some(s);
                    provider = "ort-cuda";
                }
                Err(e) => {
                    tracing::warn!(error = %e, "CUDA execution provider unavailable; using the CPU")
                }
            }
        }
        let session = match session {
            Some(s) => s,
            None => builder()?.commit_from_file(model).map_err(err)?,
        };
        use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
        let output_memory = if provider == "ort-cuda" {
            MemoryInfo::new(
                AllocationDevice::CUDA_PINNED,
                0,
                AllocatorType::Device,
                MemoryType::CPUOutput,
            )
        } else {
            MemoryInfo::new(
                AllocationDevice::CPU,
                0,
                AllocatorType::Arena,
                MemoryType::Default,
            )
        }
        .map_err(err)?;
        Ok(Self {
            session,
            input: input.to_string(),
            output: output.to_string(),
            provider,
            intra_threads: threads,
            output_memory,
        })
    }

    /// The intra-op thread count the session was built with (one per available CPU).
    pub fn intra_threads(&self) -> usize {
        self.intra_threads
    }
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        self.provider
    }

    fn run(&mut self, input: &[f32], shape: [usize; 4]) -> Result<Vec<f32>, InferError> {
        Graph::run(self, input, &shape)
    }
}

impl Graph for OrtBackend {
    fn name(&self) -> &'static str {
        self.provider
    }

    fn run(&mut self, input: &[f32], shape: &[usize]) -> Result<Vec<f32>, InferError> {
        let output = self.output.clone();
        self.run_outputs(input, shape, &[output.as_str()])?
            .pop()
            .ok_or_else(|| InferError::Backend("the graph gave no output".into()))
    }

    /// Through an I/O binding: the input is bound once, and only the outputs asked for are
    /// bound (a graph may declare more: a trainable stage's logits and features are not
    /// computed into outputs on a plain run), into [`OrtBackend::output_memory`].
    fn run_outputs(
        &mut self,
        input: &[f32],
        shape: &[usize],
        outputs: &[&str],
    ) -> Result<Vec<Vec<f32>>, InferError> {
        let err = |e: ort::Error| InferError::Backend(format!("ONNX Runtime run: {e}"));
        let dims: Vec<i64> = shape.iter().map(|d| *d as i64).collect();
        let tensor = ort::value::Tensor::from_array((dims, input.to_vec())).map_err(err)?;
        let mut binding = self.session.create_binding().map_err(err)?;
        binding
            .bind_input(self.input.as_str(), &tensor)
            .map_err(err)?;
        for name in outputs {
            binding
                .bind_output_to_device(*name, &self.output_memory)
                .map_err(err)?;
        }
        let results = self.session.run_binding(&binding).map_err(err)?;
        outputs
            .iter()
            .map(|name| {
                let value = results.get(*name).ok_or_else(|| {
                    InferError::Backend(format!("ONNX Runtime: the graph has no output {name}"))
                })?;
                let (_, data) = value.try_extract_tensor::<f32>().map_err(err)?;
                Ok(data.to_vec())
            })
            .collect()
    }
}

/// Which runtime runs the backbone, as the configuration or the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Tract,
    Ort(OrtDevice),
}

/// Load the backbone of `package` with the chosen runtime. ONNX Runtime needs its shared
/// library: `library`, else `ORT_DYLIB_PATH`; without either it is an error that says so.
pub fn load(
    choice: Choice,
    package: &Package,
    library: Option<&Path>,
) -> Result<Box<dyn Backend>, InferError> {
    let device = match choice {
        Choice::Tract => return Ok(Box::new(TractBackend::load(&package.backbone_path())?)),
        Choice::Ort(device) => device,
    };
    let library = ort_library(library)?;
    let b = &package.manifest.backbone;
    Ok(Box::new(OrtBackend::load(
        &package.backbone_path(),
        &library,
        &b.input,
        &b.output,
        device,
    )?))
}

/// The ONNX Runtime library to load: `library`, else `ORT_DYLIB_PATH`.
fn ort_library(library: Option<&Path>) -> Result<std::path::PathBuf, InferError> {
    library
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(std::path::PathBuf::from))
        .ok_or_else(|| {
            InferError::Backend(
                "ONNX Runtime needs its library: set onnxruntime_library (--ort-library) or \
                 ORT_DYLIB_PATH"
                    .into(),
            )
        })
}

/// Load every stage graph of a contract-2 `package` with the chosen runtime, in stage order.
pub fn load_pipeline(
    choice: Choice,
    package: &PipelinePackage,
    library: Option<&Path>,
) -> Result<Vec<Box<dyn Graph>>, InferError> {
    let mut graphs: Vec<Box<dyn Graph>> = Vec::new();
    for (stage, path) in package.manifest.stages.iter().zip(package.stage_paths()) {
        graphs.push(match choice {
            Choice::Tract => Box::new(TractBackend::load_stage(&path, &stage.output)?),
            Choice::Ort(device) => Box::new(OrtBackend::load(
                &path,
                &ort_library(library)?,
                &stage.input,
                &stage.output,
                device,
            )?),
        });
    }
    Ok(graphs)
}
