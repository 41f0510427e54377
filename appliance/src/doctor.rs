//! `appliance doctor`: one pass over everything an appliance needs to do its job, each check
//! with what is wrong and how to fix it: the configuration, the data folder (writable, and
//! fsync works), the disk against the ingest floor and the retention watermark, every
//! installed model version against its manifest's hashes, the model each route (or
//! `[inference] model`) runs loaded on the configured runtime (which loads ONNX Runtime and
//! says whether CUDA came up), and a C-ECHO to every destination. Read-only apart from one
//! probe file in the data folder; it can run beside the daemon.

use crate::config::Config;
use pacs_bridge::scu::{self, Destination, ScuConfig};
use serde::Serialize;
use std::time::Duration;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warning,
    Problem,
}

/// One check's finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What was checked (`configuration`, `data_dir`, `disk`, `model head-ct-ich 0.1.0`,
    /// `runtime head-ct-ich`, `destination pacs`).
    pub check: String,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about it (none when it is fine).
    pub fix: Option<String>,
}

fn finding(check: impl Into<String>, verdict: Verdict, detail: impl Into<String>) -> Finding {
    Finding {
        check: check.into(),
        verdict,
        detail: detail.into(),
        fix: None,
    }
}

impl Finding {
    fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }
}

/// Run every check on `config` (or report why it did not load).
pub fn examine(config: anyhow::Result<Config>) -> Vec<Finding> {
    let config =
        match config {
            Ok(c) => c,
            Err(e) => {
                return vec![finding("configuration", Verdict::Problem, format!("{e:#}")).fix(
                "correct the key named (`appliance check-config --config FILE` explains each)",
            )]
            }
        };
    let mut out = vec![finding(
        "configuration",
        Verdict::Ok,
        format!(
            "AE title {} on {}:{}, data_dir {}",
            config.dicom.ae_title,
            config.dicom.bind,
            config.dicom.port,
            config.data_dir.display()
        ),
    )];
    for warning in config.warnings() {
        out.push(
            finding("configuration", Verdict::Warning, warning.to_string())
                .fix(format!("review {}", warning.key)),
        );
    }
    out.push(data_dir(&config));
    out.extend(disk(&config));
    out.extend(models(&config));
    out.extend(destinations(&config));
    out
}

fn data_dir(config: &Config) -> Finding {
    let dir = &config.data_dir;
    let probe = dir.join(".doctor-probe");
    let result = std::fs::create_dir_all(dir).and_then(|()| {
        let mut f = std::fs::File::create(&probe)?;
        std::io::Write::write_all(&mut f, b"probe")?;
        f.sync_all()?;
        std::fs::remove_file(&probe)
    });
    match result {
        Ok(()) => finding(
            "data_dir",
            Verdict::Ok,
            format!("{} is writable and syncs", dir.display()),
        ),
        Err(e) => finding(
            "data_dir",
            Verdict::Problem,
            format!("{}: {e}", dir.display()),
        )
        .fix("create the folder and give the appliance's user (radiant-edge) write access to it"),
    }
}

fn disk(config: &Config) -> Vec<Finding> {
    let usage = match pacs_bridge::store::fs_usage(&config.data_dir) {
        Ok(u) => u,
        Err(e) => {
            return vec![finding(
                "disk",
                Verdict::Problem,
                format!(
                    "cannot read the file system of {}: {e}",
                    config.data_dir.display()
                ),
            )]
        }
    };
    let mut out = Vec::new();
    let floor = config.storage.min_free_mb.saturating_mul(1 << 20);
    let free = usage.available_bytes;
    let used = usage.used_percent();
    let detail = format!(
        "{used:.1} % used, {} MiB free (ingest floor {} MiB)",
        free >> 20,
        config.storage.min_free_mb
    );
    if free < floor {
        out.push(finding("disk", Verdict::Problem, detail.clone()).fix(
            "ingest refuses studies below the floor: free space (`appliance studies purge` or \
             retention), or grow the volume",
        ));
    } else if config.retention.enabled && used >= config.retention.high_watermark_percent {
        out.push(
            finding("disk", Verdict::Warning, detail.clone()).fix(format!(
            "above retention.high_watermark_percent ({} %): retention is purging; if it cannot \
             (studies held), see `appliance studies list`",
            config.retention.high_watermark_percent
        )),
        );
    } else {
        out.push(finding("disk", Verdict::Ok, detail));
    }
    if let Some(problem) = config.retention_floor_problem() {
        out.push(
            finding("disk", Verdict::Problem, problem.message.clone())
                .fix(format!("change {}", problem.key)),
        );
    }
    out
}

fn models(config: &Config) -> Vec<Finding> {
    let registry = models::registry::Registry::new(&config.data_dir);
    let mut out = Vec::new();
    match registry.verify_all() {
        Ok(all) => {
            for (installed, result) in all {
                let check = format!("model {} {}", installed.id, installed.version);
                out.push(match result {
                    Ok(()) => finding(
                        check,
                        Verdict::Ok,
                        format!(
                            "its files match the manifest's SHA-256{}",
                            if installed.active { " (active)" } else { "" }
                        ),
                    ),
                    Err(e) => finding(check, Verdict::Problem, e.to_string()).fix(
                        "install the package again (`appliance models install FOLDER`) or \
                         activate another version",
                    ),
                });
            }
        }
        Err(e) => out.push(finding("models", Verdict::Problem, e.to_string())),
    }
    if !config.inference.enabled {
        out.push(
            finding("inference", Verdict::Warning, "inference is off")
                .fix("set [inference] enabled = true for the appliance to run models"),
        );
        return out;
    }
    // The models inference runs, each loaded once on the configured runtime.
    let mut ids: Vec<&str> = config.routes.iter().map(|r| r.model.as_str()).collect();
    if ids.is_empty() {
        ids.push(&config.inference.model);
    }
    ids.sort();
    ids.dedup();
    for id in ids {
        let check = format!("runtime {id}");
        let package = match registry.open_active_any(id) {
            Ok(p) => p,
            Err(e) => {
                out.push(finding(check, Verdict::Problem, e.to_string()).fix(format!(
                    "install {id} (`appliance models install FOLDER`) or route to an installed model"
                )));
                continue;
            }
        };
        out.push(match crate::loaded::Loaded::load(config, &package) {
            Ok(loaded) => {
                let runs_on = loaded.backend_name();
                let wanted_gpu = config.inference.backend == crate::config::BackendKind::Ort;
                if wanted_gpu && runs_on != "ort-cuda" {
                    finding(
                        check,
                        Verdict::Warning,
                        format!("loads, but on {runs_on}: ONNX Runtime's CUDA provider did not start"),
                    )
                    .fix(
                        "install the onnxruntime-gpu library and the CUDA/cuDNN it needs, and check \
                         the GPU is visible (nvidia-smi); or set backend = \"ort-cpu\"",
                    )
                } else {
                    finding(check, Verdict::Ok, format!("loads on {runs_on}"))
                }
            }
            Err(e) => finding(check, Verdict::Problem, format!("{e:#}")).fix(
                "for ONNX Runtime, point [inference] onnxruntime_library at libonnxruntime.so \
                 (or set ORT_DYLIB_PATH); or set backend = \"tract\"",
            ),
        });
    }
    out
}

fn destinations(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    if config.destinations.is_empty() {
        out.push(
            finding(
                "destinations",
                Verdict::Warning,
                "no destination: results stay here",
            )
            .fix("add a [[destinations]] table for the PACS"),
        );
    }
    for dest in &config.destinations {
        let check = format!("destination {}", dest.name);
        let tls = match dest.client_tls() {
            Ok(tls) => tls,
            Err(e) => {
                out.push(
                    finding(check, Verdict::Problem, format!("its TLS settings: {e}"))
                        .fix("correct ca_file, cert_file and key_file of this destination"),
                );
                continue;
            }
        };
        let destination = Destination {
            ae_title: dest.ae_title.clone(),
            host: dest.host.clone(),
            port: dest.port,
            tls,
        };
        let mut scu_config = ScuConfig::new(config.dicom.ae_title.clone());
        scu_config.connect_timeout = Duration::from_secs(5);
        scu_config.io_timeout = Duration::from_secs(10);
        out.push(match scu::echo(&destination, &scu_config) {
            Ok((0, took)) => finding(
                check,
                Verdict::Ok,
                format!(
                    "C-ECHO to {destination}: success in {} ms",
                    took.as_millis()
                ),
            ),
            Ok((status, _)) => finding(
                check,
                Verdict::Problem,
                format!("C-ECHO to {destination}: status {status:#06x}"),
            )
            .fix("the PACS answered with a failure status: see its log"),
            Err(e) => finding(
                check,
                Verdict::Problem,
                format!("C-ECHO to {destination}: {e}"),
            )
            .fix(format!(
                "check host, port and AE title {}, that the PACS knows this appliance as \
                     AE {} at this address, and the firewall between them",
                dest.ae_title, config.dicom.ae_title
            )),
        });
    }
    out
}
