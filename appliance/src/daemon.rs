//! `appliance serve`: bring the parts up in dependency order (spool, SCP, study assembly, HTTP,
//! inference worker, learner, outbox sender, retention) and take them down in reverse on SIGTERM/SIGINT,
//! so that every association in progress ends, every queued commit is written and the index is
//! closed cleanly.
//!
//! One shutdown signal: every thread runs under a child of it ([`Supervisor`]); the daemon
//! raises the children in order, and a thread that panicked or failed raises the root, which
//! stops the SCP and everything else, and makes `serve` return an error (a non-zero exit).
//!
//! Start-up does no work on received data before the SCP accepts: the spool opens (temporary
//! files of interrupted transfers go), the SCP binds, and the recovery of jobs and labelled
//! cases runs on the inference thread while `server.run` serves associations.

use crate::audit::{self, AuditLog};
use crate::config::Config;
use crate::http::HttpEndpoint;
use crate::metrics::{ApplianceMetrics, Exposition};
use crate::readiness::Readiness;
use crate::supervisor::Supervisor;
use anyhow::Context;
use pacs_bridge::metrics::Metrics;
use pacs_bridge::scp::Server;
use pacs_bridge::store::studies::{Assembler, StudyCompleted};
use pacs_bridge::store::Spool;
use radiant_core::file_lock::FileLock;
use radiant_core::{log_tag, Cancel, Doorbell};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// How often study assembly looks for quiet studies.
const ASSEMBLY_TICK: Duration = Duration::from_millis(500);

pub fn serve(config: Config) -> anyhow::Result<()> {
    // Durable at every level: on a first boot that makes the data folder, what is acknowledged
    // in it must not vanish with the folder's own entry at a power cut.
    radiant_core::durable::create_dir_durable(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    // One daemon per data folder, taken before recovery: a second one would remove the
    // temporary files of instances the first is about to acknowledge.
    let lock_path = config.data_dir.join("serve.lock");
    let Some(_data_dir_lock) = FileLock::try_take(&lock_path)? else {
        anyhow::bail!(
            "another appliance serve is running on {} (it holds {}); stop it first",
            config.data_dir.display(),
            lock_path.display()
        );
    };
    for warning in config.warnings() {
        tracing::warn!(key = %warning.key, "{}", warning.message);
    }
    let audit = AuditLog::of(&config);
    // The results database is created, put in WAL mode and migrated here, once, before any
    // thread opens it: SQLite answers a connection that switches a fresh file to WAL while
    // another holds it with "database is locked" at once, busy timeout or not (seen: the
    // outbox thread failed so at start, and the daemon stopped).
    crate::db::open(&config.data_dir).context("results database")?;
    let metrics = Arc::new(Metrics::default());
    let appliance_metrics = Arc::new(ApplianceMetrics::default());
    // The retention watermark must come before the ingest floor on the file system data_dir
    // is on (check-config can only tell once the folder exists).
    if let Some(problem) = config.retention_floor_problem() {
        anyhow::bail!("invalid configuration: {problem}");
    }
    let spool = Spool::open(&config.data_dir, metrics.clone())?;
    let scp_config = config.scp()?;
    let min_free = scp_config.min_free_bytes;
    let server = Server::bind(scp_config, spool.clone(), metrics.clone())?;
    server.observe(audit_associations(audit.clone()));
    let shutdown = server.shutdown_handle();
    audit_routes(&audit, &config);
    let mut start = application_activity("application.start", "success".into());
    start.detail["routes"] = serde_json::to_value(&config.routes).unwrap_or_default();
    audit::record(&audit, start);

    let readiness = Arc::new(Readiness::default());
    let supervisor = Supervisor::new(Cancel::new(), readiness.clone());
    let http = if config.http.enabled {
        let ip: IpAddr = config.http.bind.parse()?;
        let disk_spool = spool.clone();
        let disk = Box::new(move || match disk_spool.free_bytes() {
            Ok(free) if free >= min_free => Ok(()),
            Ok(free) => Err(format!(
                "free disk {free} bytes is below the floor of {min_free}"
            )),
            Err(e) => Err(format!("cannot read free disk space: {e}")),
        });
        Some(HttpEndpoint::start(
            SocketAddr::new(ip, config.http.port),
            Exposition::new(&metrics, &appliance_metrics),
            readiness.clone(),
            disk,
            crate::activity::ActivityProbe::new(config.data_dir.clone(), metrics.clone()),
            &supervisor,
        )?)
    } else {
        None
    };
    // The web console (HTTPS, accounts), when configured; stopped just before HTTP.
    let console = match &config.console {
        Some(c) if c.enabled => Some(crate::console::Console::start(
            &config,
            readiness.clone(),
            &supervisor,
        )?),
        _ => None,
    };

    let signals_shutdown = shutdown.clone();
    let signal_readiness = readiness.clone();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let signal_handle = signals.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!(signal, "shutdown requested");
                signal_readiness.shutting_down.store(true, Ordering::SeqCst);
                signals_shutdown.trigger();
            }
        })?;
    // A thread that panicked or failed raises the root signal: the SCP stops too, and `serve`
    // fails.
    let root = supervisor.shutdown().clone();
    let panic_shutdown = shutdown.clone();
    let relay = std::thread::Builder::new()
        .name("shutdown-relay".into())
        .spawn(move || {
            root.wait();
            panic_shutdown.trigger();
        })?;

    let (events, completed) = mpsc::channel::<StudyCompleted>();
    let mut assembler = Assembler::open(
        &config.data_dir,
        Duration::from_secs(config.dicom.study_quiet_seconds),
        config.quiet_by_ae(),
    )?;
    let assembly = supervisor.spawn("assembly", move |stop| {
        // Quiet periods are measured in time, so assembly looks on a tick; a stop ends the
        // wait at once.
        while !stop.is_cancelled() {
            match assembler.tick() {
                Ok(done) => {
                    for study in done {
                        if events.send(study).is_err() {
                            return Ok(());
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "study assembly failed"),
            }
            stop.wait_timeout(ASSEMBLY_TICK);
        }
        Ok(())
    })?;
    let pipeline =
        crate::jobs::Pipeline::new(&config)?.map(|p| p.with_metrics(appliance_metrics.clone()));
    // Rung when a job is queued (the worker waits on it) and when a job queued results (the
    // outbox sender waits on it).
    // Each doorbell is rung by its waiter's own stop signal too, so an ordered stop of that
    // thread wakes it at once.
    let worker_stop = supervisor.stop_signal();
    let outbox_stop = supervisor.stop_signal();
    let jobs_queued = Doorbell::new(&worker_stop);
    let results_queued = Doorbell::new(&outbox_stop);
    // Recovery (jobs a stop interrupted, studies completed but never announced, labels not
    // yet taken in) is the worker's first task, on its thread: the SCP is already accepting
    // by then, and a hostile study met again in recovery fails its job like any other.
    // Raised once recovery is done (at once without inference: nothing to recover).
    let recovered = Cancel::new();
    let worker = match &pipeline {
        Some(p) => {
            let worker = p.clone();
            let wake = jobs_queued.clone();
            let done = results_queued.clone();
            let recovery_done = recovered.clone();
            Some(
                supervisor.spawn_under("inference", worker_stop, move |stop| {
                    worker.recover()?;
                    recovery_done.cancel();
                    worker.work(stop, wake, &done)
                })?,
            )
        }
        None => {
            recovered.cancel();
            None
        }
    };
    // The learner fine-tunes the head while inference is idle (it needs the model inference
    // runs; without it there is nothing to fine-tune).
    let learner = match (&pipeline, config.learning.enabled) {
        (Some(p), true) if !p.learns() => {
            tracing::info!(model = %config.inference.model, "learning off: the model has no trainable part (a contract-2 package without [stages.trainable])");
            None
        }
        (Some(_), true) => match crate::learn::Learner::new(&config) {
            Ok(learner) => {
                let learner_metrics = appliance_metrics.clone();
                Some(supervisor.spawn("learner", move |stop| {
                    learner.serve(stop, learner_metrics);
                    Ok(())
                })?)
            }
            // Inference goes on without learning.
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "learning off: the learner cannot start");
                None
            }
        },
        _ => None,
    };
    // Result objects go out through the outbox, whatever made them (a job of this run or an
    // entry left pending by an earlier one).
    let outbox = {
        let sender = crate::outbox::Sender {
            data_dir: config.data_dir.clone(),
            config: config.clone(),
            metrics: appliance_metrics.clone(),
            audit: audit.clone(),
        };
        let wake = results_queued.clone();
        supervisor.spawn_under("outbox", outbox_stop, move |stop| sender.run(stop, wake))?
    };
    // Retention purges finished studies on its own thread, off the ingest path; its first
    // round waits for recovery to queue the jobs of studies a crash left without them, so it
    // never judges such a study finished.
    let retention = if config.retention.enabled {
        let retention_config = config.clone();
        let retention_metrics = appliance_metrics.clone();
        let dicom_metrics = metrics.clone();
        let recovery = recovered.clone();
        Some(supervisor.spawn("retention", move |stop| {
            // Recovery runs on the inference thread; a study it has yet to queue looks
            // finished to retention.
            while !recovery.wait_timeout(Duration::from_millis(200)) {
                if stop.is_cancelled() {
                    return Ok(());
                }
            }
            crate::retention::serve(&retention_config, stop, retention_metrics, dicom_metrics);
            Ok(())
        })?)
    } else {
        tracing::info!("retention disabled: nothing leaves the spool by itself");
        None
    };
    // Completion is the hook inference attaches to: one job per series the model takes. The
    // thread ends when assembly ends and drops its end of the channel.
    let consumer = supervisor.spawn("study-events", move |_stop| {
        for study in completed {
            tracing::info!(
                study = %log_tag(&study.study_uid),
                calling_ae = %study.calling_ae,
                instances = study.instances,
                "study complete"
            );
            if let Some(p) = &pipeline {
                match p.enqueue(&study.study_uid, &study.calling_ae) {
                    Ok(jobs) => {
                        tracing::info!(study = %log_tag(&study.study_uid), jobs, "inference queued");
                        jobs_queued.ring();
                    }
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot queue inference"),
                }
                // A SEG in the study is a radiologist's label for a series we hold.
                if let Err(e) = p.intake_labels(&study.study_uid, &study.calling_ae) {
                    tracing::error!(error = %format!("{e:#}"), "cannot take in labelled cases");
                }
            }
        }
        Ok(())
    })?;

    readiness.scp_listening.store(true, Ordering::SeqCst);
    let watchdog = crate::systemd::watchdog(&supervisor, readiness.clone())?;
    crate::systemd::ready();
    server.run();
    crate::systemd::stopping();
    readiness.scp_listening.store(false, Ordering::SeqCst);
    if let Some(w) = watchdog {
        supervisor.stop(w);
    }

    supervisor.stop(assembly);
    if let Some(r) = retention {
        supervisor.stop(r);
    }
    supervisor.join(consumer);
    if let Some(l) = learner {
        supervisor.stop(l);
    }
    if let Some(w) = worker {
        supervisor.stop(w);
    }
    supervisor.stop(outbox);
    if let Err(e) = spool.close() {
        supervisor.record_failure("spool-committer", &e.to_string());
    }
    if let Some(console) = console {
        console.stop(&supervisor);
    }
    if let Some(http) = http {
        http.stop(&supervisor);
    }
    signal_handle.close();
    supervisor.shutdown().cancel();
    if relay.join().is_err() {
        tracing::error!("the shutdown relay panicked");
    }
    let failed = supervisor.failed();
    let outcome = if failed.is_empty() {
        "success".to_string()
    } else {
        format!("failure: {}", failed.join("; "))
    };
    audit::record(&audit, application_activity("application.stop", outcome));
    anyhow::ensure!(
        failed.is_empty(),
        "stopped because a thread failed: {}",
        failed.join("; ")
    );
    tracing::info!("appliance stopped");
    Ok(())
}

/// Routes live in the configuration file, so a change shows at the next start: when the
/// routes in force differ from those the last start recorded, the change is recorded with
/// both (before the new start, which records the routes it runs with).
fn audit_routes(audit: &AuditLog, config: &Config) {
    let now = serde_json::to_value(&config.routes).unwrap_or_default();
    let before = match audit.tail(None) {
        Ok(records) => records
            .into_iter()
            .rev()
            .find(|r| r.action == "application.start")
            .map(|r| r.detail["routes"].clone()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the audit trail for the last routes");
            return;
        }
    };
    // No earlier start (a new trail): the start record itself holds the first routes.
    let Some(before) = before else { return };
    if before != now {
        audit::record(
            audit,
            audit::Event {
                action: "routes.change".into(),
                actor: "configuration".into(),
                outcome: "success".into(),
                dicom: Some(audit::DicomEvent::SecurityAlert),
                detail: serde_json::json!({ "before": before, "after": now }),
            },
        );
    }
}

fn application_activity(action: &str, outcome: String) -> audit::Event {
    audit::Event {
        action: action.into(),
        actor: "daemon".into(),
        outcome,
        dicom: Some(audit::DicomEvent::ApplicationActivity),
        detail: serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }),
    }
}

/// Every association the SCP refused or served, into the audit trail: the peer, both AE
/// titles, the outcome and the counts.
fn audit_associations(audit: AuditLog) -> pacs_bridge::scp::Observer {
    use pacs_bridge::scp::AssociationOutcome;
    Arc::new(move |report| {
        let (outcome, dicom, counts) = match &report.outcome {
            AssociationOutcome::Refused(reason) => (
                format!("failure: refused ({})", reason.label()),
                audit::DicomEvent::SecurityAlert,
                serde_json::Value::Null,
            ),
            AssociationOutcome::Ended {
                end,
                stored,
                refused,
            } => (
                format!("success: {end}"),
                audit::DicomEvent::InstancesTransferred,
                serde_json::json!({ "stored": stored, "refused": refused }),
            ),
        };
        audit::record(
            &audit,
            audit::Event {
                action: "association".into(),
                actor: format!("peer:{}@{}", report.calling_ae, report.peer.ip()),
                outcome,
                dicom: Some(dicom),
                detail: serde_json::json!({
                    "calling_ae": report.calling_ae,
                    "called_ae": report.called_ae,
                    "peer": report.peer.to_string(),
                    "tls": report.tls,
                    "instances": counts,
                }),
            },
        );
    })
}
