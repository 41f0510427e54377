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

/// One loaded model and what inference keeps with it.
pub struct Entry {
    pub id: String,
    pub model: Loaded,
    /// Contract 1: the package's own head, and the head in use (`None`: that global head).
    pub global: Option<models::head::Head>,
    pub in_use: Option<i64>,
    /// Resident memory the model is charged with: what loading it added, plus what its first
    /// job added (ONNX Runtime allocates its arena on the first run); at least its files.
    bytes: u64,
    first_run_counted: bool,
    last_used: u64,
}

impl Entry {
    /// Run with `head` (`None`: the global head: a contract-1 package's own head, or a
    /// contract-2 stage's graph output, which its shipped head reproduces).
    pub fn use_head(&mut self, head: Option<models::head::Head>) -> anyhow::Result<()> {
        match &mut self.model {
            Loaded::Head(m) => {
                m.head = match (head, &self.global) {
                    (Some(h), _) => h,
                    (None, Some(global)) => global.clone(),
                    (None, None) => anyhow::bail!("model {} has no global head", self.id),
                };
            }
            Loaded::Pipeline(m) => m.set_head(head)?,
        }
        Ok(())
    }
}

/// The models inference has loaded, within a memory budget: a model is loaded when a job
/// needs it, and the least recently used others are unloaded while the total is above the
/// budget (the model a job needs is never unloaded for it).
pub struct LoadedModels {
    budget: u64,
    entries: Vec<Entry>,
    clock: u64,
}

impl LoadedModels {
    pub fn new(budget_mb: u64) -> LoadedModels {
        LoadedModels {
            budget: budget_mb.saturating_mul(1 << 20),
            entries: Vec::new(),
            clock: 0,
        }
    }

    /// Resident bytes charged to loaded models.
    pub fn charged(&self) -> u64 {
        self.entries.iter().map(|e| e.bytes).sum()
    }

    /// Ids of the loaded models.
    pub fn ids(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.id.clone()).collect()
    }

    /// The loaded `package`, loading it (and unloading others) when it is not.
    pub fn get(&mut self, config: &Config, package: &AnyPackage) -> anyhow::Result<&mut Entry> {
        self.clock += 1;
        let id = package.id().to_string();
        if let Some(i) = self.entries.iter().position(|e| e.id == id) {
            self.entries[i].last_used = self.clock;
            return Ok(&mut self.entries[i]);
        }
        let before = resident_bytes();
        let model = Loaded::load(config, package)?;
        let added = resident_bytes().saturating_sub(before);
        let global = match &model {
            Loaded::Head(m) => Some(m.head.clone()),
            Loaded::Pipeline(_) => None,
        };
        tracing::info!(model = %id, version = %package.version(), backend = model.backend_name(), resident_mib = added >> 20, "model loaded");
        self.entries.push(Entry {
            id: id.clone(),
            model,
            global,
            in_use: None,
            bytes: added.max(files_bytes(package)),
            first_run_counted: false,
            last_used: self.clock,
        });
        self.fit(&id);
        let i = self.entries.len() - 1;
        Ok(&mut self.entries[i])
    }

    /// Charge `id` with what its first job added to the resident set (`before`: the resident
    /// bytes when the job started), then fit the budget again.
    pub fn count_first_run(&mut self, id: &str, before: u64) {
        let grown = resident_bytes().saturating_sub(before);
        if let Some(e) = self.entries.iter_mut().find(|e| e.id == id) {
            if !e.first_run_counted {
                e.first_run_counted = true;
                e.bytes = e.bytes.saturating_add(grown);
            }
        }
        self.fit(id);
    }

    /// Unload `id` (after a panic cut its state short, or to make room).
    pub fn unload(&mut self, id: &str) {
        self.entries.retain(|e| e.id != id);
    }

    /// Unload the least recently used models other than `keep` while above the budget.
    fn fit(&mut self, keep: &str) {
        while self.charged() > self.budget {
            let Some(victim) = self
                .entries
                .iter()
                .filter(|e| e.id != keep)
                .min_by_key(|e| e.last_used)
                .map(|e| e.id.clone())
            else {
                break;
            };
            tracing::info!(model = %victim, charged_mib = self.charged() >> 20, budget_mib = self.budget >> 20, "model unloaded to stay within inference.model_memory_mb");
            self.unload(&victim);
        }
    }
}

/// The process's resident set, bytes (0 where /proc is not there).
pub fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.saturating_mul(u64::try_from(page).unwrap_or(4096))
}

/// Bytes of a package's model files.
fn files_bytes(package: &AnyPackage) -> u64 {
    let files = match package {
        AnyPackage::Head(p) => vec![p.backbone_path(), p.head_path()],
        AnyPackage::Pipeline(p) => p.stage_paths(),
    };
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(dir: &str) -> AnyPackage {
        AnyPackage::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir)).unwrap()
    }

    #[test]
    fn a_model_a_job_needs_is_loaded_and_the_least_recently_used_others_leave_above_the_budget() {
        let config = Config::embedded_default().unwrap();
        let head_ct = package("models/reference/head-ct");
        let deepbet = package("models/deepbet/package");
        // A budget nothing fits in: only the model in use stays.
        let mut tight = LoadedModels::new(0);
        tight.get(&config, &head_ct).unwrap();
        assert_eq!(tight.ids(), ["head-ct-ich"]);
        tight.get(&config, &deepbet).unwrap();
        assert_eq!(tight.ids(), ["deepbet"]);
        assert!(tight.charged() >= 17_000_000, "{}", tight.charged());
        tight.get(&config, &head_ct).unwrap();
        assert_eq!(tight.ids(), ["head-ct-ich"]);
        // A budget both fit in: both stay, and using one again loads nothing.
        let mut roomy = LoadedModels::new(1 << 20);
        roomy.get(&config, &head_ct).unwrap();
        roomy.get(&config, &deepbet).unwrap();
        let charged = roomy.charged();
        roomy.get(&config, &head_ct).unwrap();
        assert_eq!(roomy.ids(), ["head-ct-ich", "deepbet"]);
        assert_eq!(roomy.charged(), charged);
    }
}
