//! `appliance serve`: bring the parts up in dependency order (spool, SCP, study assembly, HTTP,
//! inference worker, learner, outbox sender)
//! and take them down in reverse on SIGTERM/SIGINT, so that every association in progress ends,
//! every queued commit is written and the index is closed cleanly.

use crate::config::Config;
use crate::http::{HttpEndpoint, Readiness};
use anyhow::Context;
use radiant_core::log_tag;
use pacs_bridge::metrics::Metrics;
use pacs_bridge::scp::Server;
use pacs_bridge::store::studies::{Assembler, StudyCompleted};
use pacs_bridge::store::Spool;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// How often study assembly looks for quiet studies.
const ASSEMBLY_TICK: Duration = Duration::from_millis(500);

pub fn serve(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let metrics = Arc::new(Metrics::default());
    let spool = Spool::open(&config.data_dir, metrics.clone())?;
    let scp_config = config.scp();
    let min_free = scp_config.min_free_bytes;
    let server = Server::bind(scp_config, spool.clone(), metrics.clone())?;
    let shutdown = server.shutdown_handle();

    let readiness = Arc::new(Readiness::default());
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
            metrics.clone(),
            readiness.clone(),
            disk,
        )?)
    } else {
        None
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

    let (events, completed) = mpsc::channel::<StudyCompleted>();
    let stop_assembly = Arc::new(AtomicBool::new(false));
    let mut assembler = Assembler::open(
        &config.data_dir,
        Duration::from_secs(config.dicom.study_quiet_seconds),
        config.quiet_by_ae(),
    )?;
    let assembly_stop = stop_assembly.clone();
    let assembly = std::thread::Builder::new()
        .name("assembly".into())
        .spawn(move || {
            while !assembly_stop.load(Ordering::SeqCst) {
                match assembler.tick() {
                    Ok(done) => {
                        for study in done {
                            if events.send(study).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "study assembly failed"),
                }
                std::thread::sleep(ASSEMBLY_TICK);
            }
        })?;
    let pipeline = crate::jobs::Pipeline::new(&config)?.map(|p| p.with_metrics(metrics.clone()));
    let stop_worker = Arc::new(AtomicBool::new(false));
    let worker =
        match &pipeline {
            Some(p) => {
                p.recover()?;
                let worker = p.clone();
                let stop = stop_worker.clone();
                Some(std::thread::Builder::new().name("inference".into()).spawn(move || {
                if let Err(e) = worker.work(stop) {
                    tracing::error!(error = %format!("{e:#}"), "inference worker stopped");
                }
            })?)
            }
            None => None,
        };
    // The learner fine-tunes the head while inference is idle (it needs the model inference
    // runs; without it there is nothing to fine-tune).
    let stop_learner = Arc::new(AtomicBool::new(false));
    let learner = match (&pipeline, config.learning.enabled) {
        (Some(_), true) => match crate::learn::Learner::new(&config) {
            Ok(learner) => {
                let stop = stop_learner.clone();
                let learner_metrics = metrics.clone();
                Some(
                    std::thread::Builder::new()
                        .name("learner".into())
                        .spawn(move || learner.serve(stop, learner_metrics))?,
                )
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
    let stop_outbox = Arc::new(AtomicBool::new(false));
    let outbox = {
        let sender = crate::outbox::Sender {
            data_dir: config.data_dir.clone(),
            config: config.clone(),
            metrics: metrics.clone(),
        };
        let stop = stop_outbox.clone();
        std::thread::Builder::new()
            .name("outbox".into())
            .spawn(move || {
                if let Err(e) = sender.run(stop) {
                    tracing::error!(error = %format!("{e:#}"), "outbox sender stopped");
                }
            })?
    };
    // Completion is the hook inference attaches to: one job per series the model takes.
    let consumer = std::thread::Builder::new()
        .name("study-events".into())
        .spawn(move || {
            for study in completed {
                tracing::info!(
                    study = %log_tag(&study.study_uid),
                    calling_ae = %study.calling_ae,
                    instances = study.instances,
                    "study complete"
                );
                if let Some(p) = &pipeline {
                    match p.enqueue(&study.study_uid, &study.calling_ae) {
                        Ok(jobs) => tracing::info!(study = %log_tag(&study.study_uid), jobs, "inference queued"),
                        Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot queue inference"),
                    }
                    // A SEG in the study is a radiologist's label for a series we hold.
                    if let Err(e) = p.intake_labels(&study.study_uid, &study.calling_ae) {
                        tracing::error!(error = %format!("{e:#}"), "cannot take in labelled cases");
                    }
                }
            }
        })?;

    readiness.scp_listening.store(true, Ordering::SeqCst);
    server.run();
    readiness.scp_listening.store(false, Ordering::SeqCst);

    stop_assembly.store(true, Ordering::SeqCst);
    let _ = assembly.join();
    let _ = consumer.join();
    stop_learner.store(true, Ordering::SeqCst);
    if let Some(l) = learner {
        let _ = l.join();
    }
    stop_worker.store(true, Ordering::SeqCst);
    if let Some(w) = worker {
        let _ = w.join();
    }
    stop_outbox.store(true, Ordering::SeqCst);
    let _ = outbox.join();
    spool.close();
    if let Some(http) = http {
        http.stop();
    }
    signal_handle.close();
    tracing::info!("appliance stopped");
    Ok(())
}
