//! Inference jobs and their results, in the `jobs` and `results` tables of `results.sqlite`
//! ([`crate::db`]).
//!
//! A completed study gets one job per series whose modality the model takes. A job is keyed by
//! (study, sender, series, model, version, instance count): a study completing again with the
//! same data creates nothing new, one that grew (late instances) runs again. Jobs run one at a
//! time in a worker thread (one CPU/GPU pool); the result and the job's `done` state commit in
//! one transaction, so a restart re-runs exactly the unfinished jobs, never duplicating a
//! result. With export on, the job also writes its SEG and SR (checked and fsync'd) and queues
//! them in the outbox in that same transaction.

use crate::config::{Config, ResultObject};
use crate::db::{self, now_ms, CaseOrigin, JobState};
use crate::export::Exported;
use crate::loaded::{Loaded, LoadedModels};
use anyhow::Context;
use models::backbone::Backend;
use models::learnable::Learnable;
use models::package::Package;
use models::registry::AnyPackage;
use pacs_bridge::store::index;
use pacs_bridge::volume::{self, Limits};
use radiant_core::log_tag;
use radiant_core::{Cancel, Doorbell};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A job with its result, as `appliance results show` prints it.
#[derive(Debug, Serialize)]
pub struct JobView {
    pub job_id: i64,
    pub study_uid: String,
    pub calling_ae: String,
    pub series_uid: String,
    pub model_id: String,
    pub model_version: String,
    pub state: JobState,
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
}

/// Every job of a study, with results where done. A stored result that is not valid JSON is
/// an error naming the job.
/// How long the idle worker waits before it looks at the job table again without being rung:
/// only jobs queued by another process (none today) would wait that long.
const QUEUE_RECHECK: Duration = Duration::from_secs(2);

pub fn show(data_dir: &Path, study_uid: &str) -> anyhow::Result<Vec<JobView>> {
    let path = db::path(data_dir);
    anyhow::ensure!(
        path.exists(),
        "no results yet: {} does not exist",
        path.display()
    );
    let conn = db::open(data_dir)?;
    let mut stmt = conn.prepare(
        "SELECT j.id, j.study_uid, j.calling_ae, j.series_uid, j.model_id, j.model_version,
                j.state, j.error, r.result_json
         FROM jobs j LEFT JOIN results r ON r.job_id = j.id
         WHERE j.study_uid = ?1 ORDER BY j.id",
    )?;
    let rows = stmt.query_map([study_uid], |r| {
        let view = JobView {
            job_id: r.get(0)?,
            study_uid: r.get(1)?,
            calling_ae: r.get(2)?,
            series_uid: r.get(3)?,
            model_id: r.get(4)?,
            model_version: r.get(5)?,
            state: r.get(6)?,
            error: r.get(7)?,
            result: None,
        };
        Ok((view, r.get::<_, Option<String>>(8)?))
    })?;
    let mut jobs = Vec::new();
    for row in rows {
        let (mut view, json) = row?;
        if let Some(json) = json {
            view.result = Some(db::stored_json(
                "results",
                view.job_id,
                "result_json",
                &json,
            )?);
        }
        jobs.push(view);
    }
    Ok(jobs)
}

/// The backbone backend the configuration asks for, on `package`'s backbone.
pub fn load_backend(config: &Config, package: &Package) -> anyhow::Result<Box<dyn Backend>> {
    let inference = &config.inference;
    Ok(onnx_backends::load(
        inference.backend.choice(),
        package,
        inference.onnxruntime_library.as_deref(),
    )?)
}

/// Jobs left `running` by a stop: queued again while they have started fewer than
/// `max_attempts` times, failed with the count otherwise (a job that takes the process down
/// each time must not do it forever). Returns (queued again, failed).
pub fn requeue_interrupted(
    conn: &Connection,
    max_attempts: u32,
) -> rusqlite::Result<(usize, usize)> {
    let now = now_ms();
    let given_up = conn.execute(
        "UPDATE jobs SET state = ?2, updated_at_ms = ?1,
             error = 'crashed ' || attempts || ' times: the appliance stopped while this job ran; not run again'
         WHERE state = ?3 AND attempts >= ?4",
        params![now, JobState::Failed, JobState::Running, max_attempts],
    )?;
    let requeued = conn.execute(
        "UPDATE jobs SET state = ?2, updated_at_ms = ?1 WHERE state = ?3",
        params![now, JobState::Queued, JobState::Running],
    )?;
    Ok((requeued, given_up))
}

/// Creates jobs for completed studies, one per series and model its routes send it to, and
/// runs them.
#[derive(Clone)]
pub struct Pipeline {
    data_dir: PathBuf,
    config: Config,
    /// The active version of every routed model that is installed.
    packages: Vec<AnyPackage>,
    router: crate::routes::Router,
    metrics: Option<Arc<crate::metrics::ApplianceMetrics>>,
}

/// How many jobs wait for or hold the worker.
pub fn waiting_jobs(conn: &Connection) -> rusqlite::Result<i64> {
    let [queued, running] = JobState::WAITING;
    conn.query_row(
        "SELECT COUNT(*) FROM jobs WHERE state IN (?1, ?2)",
        [queued, running],
        |r| r.get(0),
    )
}

/// Whether an inference job waits or runs: the learner yields to inference while one does.
pub fn inference_busy(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(waiting_jobs(conn)? > 0)
}

/// Whether one more job may wait: `queued` while fewer than `max_queued` jobs are queued or
/// running, `rejected` beyond that (the queue is bounded; a rejected job is recorded with its
/// reason, never silently dropped).
fn admission(conn: &Connection, max_queued: usize) -> rusqlite::Result<JobState> {
    Ok(if waiting_jobs(conn)? as usize >= max_queued {
        JobState::Rejected
    } else {
        JobState::Queued
    })
}

impl Pipeline {
    /// The pipeline for the configured routes, or `None` (logged) when inference is off or no
    /// routed model is installed. A routed model that is not installed is logged and left out.
    pub fn new(config: &Config) -> anyhow::Result<Option<Pipeline>> {
        let data_dir = &config.data_dir;
        if !config.inference.enabled {
            tracing::info!("inference disabled in the configuration");
            return Ok(None);
        }
        let router = crate::routes::Router::new(&config.routes, &config.inference.model)
            .map_err(|e| anyhow::anyhow!("routes: {e}"))?;
        let registry = models::registry::Registry::new(data_dir);
        let mut packages = Vec::new();
        for id in router.models() {
            match registry.open_active_any(&id) {
                Ok(p) => packages.push(p),
                Err(e) => {
                    tracing::warn!(model = %id, error = %e, "model not available: series routed to it are left alone (install it with `appliance models install`)")
                }
            }
        }
        if packages.is_empty() {
            tracing::warn!("inference off: no routed model is installed");
            return Ok(None);
        }
        db::open(data_dir)?;
        Ok(Some(Pipeline {
            data_dir: data_dir.to_path_buf(),
            config: config.clone(),
            packages,
            router,
            metrics: None,
        }))
    }

    /// `[inference] model`, whose head the learner fine-tunes and whose labelled cases are
    /// taken in; `None` when it is not installed or has no trainable part (a contract-2
    /// package without `[stages.trainable]`).
    fn learning_model(&self) -> Option<Learnable> {
        self.package(&self.config.inference.model)
            .and_then(Learnable::of)
    }

    /// Whether `[inference] model` has a head the learner fine-tunes.
    pub fn learns(&self) -> bool {
        self.learning_model().is_some()
    }

    fn package(&self, id: &str) -> Option<&AnyPackage> {
        self.packages.iter().find(|p| p.id() == id)
    }

    /// Report the head in use to these metrics.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::ApplianceMetrics>) -> Pipeline {
        self.metrics = Some(metrics);
        self
    }

    /// Queue one job per series of a completed study and model its routes send it to; a series
    /// no route takes is stored and left alone, and counted.
    pub fn enqueue(&self, study_uid: &str, calling_ae: &str) -> anyhow::Result<usize> {
        self.enqueue_routed(study_uid, calling_ae, true)
    }

    fn enqueue_routed(
        &self,
        study_uid: &str,
        calling_ae: &str,
        count_unrouted: bool,
    ) -> anyhow::Result<usize> {
        let index = index::open_read_only(&pacs_bridge::store::index_path(&self.data_dir))?;
        let series = index::series_of_study(&index, &self.data_dir, study_uid, calling_ae)?;
        let conn = db::open(&self.data_dir)?;
        let mut created = 0;
        for s in series {
            // Radiologists' SEGs and SRs are labels, taken in by `intake_labels`.
            if s.modality.eq_ignore_ascii_case("SEG") || s.modality.eq_ignore_ascii_case("SR") {
                continue;
            }
            let models = self.models_for(&s, calling_ae);
            if models.is_empty() {
                if count_unrouted {
                    if let Some(m) = &self.metrics {
                        m.series_unrouted.inc();
                    }
                    tracing::info!(study = %log_tag(study_uid), series = %log_tag(&s.series_uid), modality = %s.modality, "no route takes the series; stored and left alone");
                }
                continue;
            }
            for package in models {
                let state = admission(&conn, self.config.inference.max_queued_jobs)?;
                if state == JobState::Rejected {
                    tracing::warn!(study = %log_tag(study_uid), "inference queue full; job rejected");
                }
                let now = now_ms();
                created += conn.execute(
                    "INSERT OR IGNORE INTO jobs (study_uid, calling_ae, series_uid, model_id,
                         model_version, instances, state, error, created_at_ms, updated_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
                    params![
                        study_uid,
                        calling_ae,
                        s.series_uid,
                        package.id(),
                        package.version(),
                        s.files.len() as i64,
                        state,
                        (state == JobState::Rejected).then_some("queue full"),
                        now
                    ],
                )?;
            }
        }
        Ok(created)
    }

    /// The installed models the routes send `series` to. A model only takes series of its
    /// modality (a localizer of another modality is not its input); too few slices is left to
    /// the job, which fails with that reason.
    fn models_for(&self, series: &index::SeriesFiles, calling_ae: &str) -> Vec<&AnyPackage> {
        let Some(first) = series.files.first() else {
            return Vec::new();
        };
        let attributes = match volume::series_attributes(first, &Limits::default()) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(series = %log_tag(&series.series_uid), error = %e, "cannot read the series' attributes; not routed");
                return Vec::new();
            }
        };
        self.router
            .route(&attributes, calling_ae)
            .iter()
            .filter_map(|id| self.package(id))
            .filter(|p| p.modality().eq_ignore_ascii_case(&attributes.modality))
            .collect()
    }

    /// Take every SEG and SR of a completed study that is new to us in as a labelled case for
    /// the model (accepted or refused, with the reason); returns how many were taken in.
    pub fn intake_labels(&self, study_uid: &str, calling_ae: &str) -> anyhow::Result<usize> {
        // A model without a trainable part learns nothing: labelled objects stay in the spool.
        let Some(model) = self.learning_model() else {
            return Ok(0);
        };
        let index = index::open_read_only(&pacs_bridge::store::index_path(&self.data_dir))?;
        let series = index::series_of_study(&index, &self.data_dir, study_uid, calling_ae)?;
        let conn = db::open(&self.data_dir)?;
        let mut taken = 0;
        // A SEG is a segmentation label; an SR may be a verified answer about the finding.
        for s in series.iter().filter(|s| {
            s.modality.eq_ignore_ascii_case("SEG") || s.modality.eq_ignore_ascii_case("SR")
        }) {
            for file in &s.files {
                let sop = file
                    .file_stem()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                if crate::cases::known(&conn, &sop)? {
                    continue;
                }
                // Counted before anything decodes it (the SR check below reads the file too):
                // an object whose intake takes the process down (an abort no panic boundary
                // catches) is refused after `max_attempts` starts, instead of crashing every
                // recovery.
                let crashes = crate::cases::begin_intake(&conn, &sop)?;
                if crashes < self.config.inference.max_attempts
                    && s.modality.eq_ignore_ascii_case("SR")
                    && !crate::cases::sr_mentions_finding(file, &model)
                {
                    crate::cases::end_intake(&conn, &sop)?;
                    continue;
                }
                if crashes >= self.config.inference.max_attempts {
                    let reason = crate::cases::refuse_crashed(
                        &conn,
                        &model,
                        &sop,
                        CaseOrigin::Dicom,
                        crashes,
                    )?;
                    tracing::error!(object = %log_tag(&sop), reason = %reason, "labelled case refused");
                } else {
                    crate::cases::ingest(&conn, &self.data_dir, &model, file, CaseOrigin::Dicom)?
                        .ok();
                }
                crate::cases::end_intake(&conn, &sop)?;
                taken += 1;
            }
        }
        Ok(taken)
    }

    /// Queue jobs for completed studies that have none (an announcement a crash interrupted),
    /// and put jobs a crash left `running` back in the queue.
    pub fn recover(&self) -> anyhow::Result<()> {
        let conn = db::open(&self.data_dir)?;
        let (requeued, given_up) = requeue_interrupted(&conn, self.config.inference.max_attempts)?;
        if requeued > 0 {
            tracing::warn!(requeued, "re-running inference jobs interrupted by a stop");
        }
        if given_up > 0 {
            tracing::error!(
                given_up,
                max_attempts = self.config.inference.max_attempts,
                "inference jobs the appliance stopped during too often are failed, not run again"
            );
        }
        let index = index::open_read_only(&pacs_bridge::store::index_path(&self.data_dir))?;
        for study in index::list_studies(&index)? {
            if study.state != "complete" {
                continue;
            }
            // Counted once, when the study completed; not again at every start.
            self.enqueue_routed(&study.study_uid, &study.calling_ae, false)?;
            self.intake_labels(&study.study_uid, &study.calling_ae)?;
        }
        Ok(())
    }

    /// Run queued jobs one at a time until `stop` is raised. Routed models are loaded at start
    /// while they fit `inference.model_memory_mb`, the others by their first job. The worker
    /// waits on `wake`, which [`Pipeline::enqueue`]'s caller rings; the timeout only covers
    /// jobs queued by another process. `done` is rung after every finished job (the outbox
    /// sender waits on it).
    pub fn work(self, stop: &Cancel, mut wake: Doorbell, done: &Doorbell) -> anyhow::Result<()> {
        let mut loaded = LoadedModels::new(self.config.inference.model_memory_mb);
        for package in &self.packages {
            if loaded.charged() < self.config.inference.model_memory_mb << 20 {
                // A model that cannot load fails its jobs with the reason; the others run.
                if let Err(e) = loaded.get(&self.config, package) {
                    tracing::error!(model = %package.id(), error = %format!("{e:#}"), "cannot load the model; its jobs fail until it loads");
                }
            }
        }
        tracing::info!(models = ?loaded.ids(), "inference worker ready");
        let mut conn = db::open(&self.data_dir)?;
        while !stop.is_cancelled() {
            let next: Option<(i64, String, String, String, String)> = conn
                .query_row(
                    "SELECT id, study_uid, calling_ae, series_uid, model_id FROM jobs
                     WHERE state = ?1 ORDER BY id LIMIT 1",
                    [JobState::Queued],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let Some((id, study, ae, series, model_id)) = next else {
                wake.wait(QUEUE_RECHECK);
                continue;
            };
            conn.execute(
                "UPDATE jobs SET state = ?3, attempts = attempts + 1, updated_at_ms = ?2
                 WHERE id = ?1",
                params![id, now_ms(), JobState::Running],
            )?;
            let started = Instant::now();
            let outcome = match self.package(&model_id) {
                None => Err(anyhow::anyhow!(
                    "model {model_id} is not installed or no route names it any more"
                )),
                Some(package) => match loaded.get(&self.config, package) {
                    Err(e) => Err(e.context(format!("cannot load model {model_id}"))),
                    Ok(entry) => {
                        if let Some(learnable) = Learnable::of(package) {
                            self.swap_champion(&conn, entry, &learnable)?;
                        }
                        let in_use = entry.in_use;
                        // What the job adds to the resident set; a load just now is already
                        // charged to the model.
                        let before = crate::loaded::resident_bytes();
                        // A panic anywhere in the job (a dependency's decoder, a runtime) fails
                        // this job with its message; the model, whose state the panic may have
                        // cut short, is unloaded and loaded again by the next job that needs it.
                        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            self.run_one(
                                &mut entry.model,
                                package,
                                in_use,
                                id,
                                &study,
                                &ae,
                                &series,
                            )
                        })) {
                            Ok(result) => {
                                loaded.count_first_run(&model_id, before);
                                result
                            }
                            Err(panic) => {
                                loaded.unload(&model_id);
                                Err(anyhow::anyhow!(
                                    "the job panicked: {}",
                                    radiant_core::panic_message(panic.as_ref())
                                ))
                            }
                        }
                    }
                },
            };
            match outcome {
                Ok((json, exported)) => {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    tx.execute(
                        "INSERT OR REPLACE INTO results (job_id, result_json, created_at_ms) VALUES (?1, ?2, ?3)",
                        params![id, json.to_string(), now_ms()],
                    )?;
                    tx.execute(
                        "UPDATE jobs SET state = ?3, error = NULL, updated_at_ms = ?2 WHERE id = ?1",
                        params![id, now_ms(), JobState::Done],
                    )?;
                    let queued = crate::outbox::enqueue(
                        &tx,
                        &self.config,
                        id,
                        &study,
                        &ae,
                        &exported,
                        now_ms(),
                    )?;
                    tx.commit()?;
                    if queued > 0 {
                        done.ring();
                    }
                    self.observe(&json);
                    tracing::info!(study = %log_tag(&study), job = id, seconds = started.elapsed().as_secs_f64(), finding = ?json["finding_probability"].as_f64(), objects = exported.objects.len(), negative = exported.negative, queued, "inference done");
                }
                Err(e) => {
                    if let Some(m) = &self.metrics {
                        m.jobs_failed.inc();
                    }
                    tracing::warn!(study = %log_tag(&study), job = id, error = %format!("{e:#}"), "inference failed");
                    conn.execute(
                        "UPDATE jobs SET state = ?4, error = ?2, updated_at_ms = ?3 WHERE id = ?1",
                        params![id, format!("{e:#}"), now_ms(), JobState::Failed],
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Count a finished job and its stage times (from the result's `timings`).
    fn observe(&self, result: &serde_json::Value) {
        let Some(m) = &self.metrics else { return };
        m.jobs_done.inc();
        let timings = &result["timings"];
        for (stage, key) in [
            ("decode", "decode_ms"),
            ("preprocess", "preprocess_ms"),
            ("backbone_head", "inference_ms"),
            ("postprocess", "postprocess_ms"),
            ("export", "export_ms"),
        ] {
            if let Some(ms) = timings[key].as_f64() {
                m.observe_stage(stage, ms);
            }
        }
    }

    /// Put the champion head in the loaded model when it changed since the last job
    /// (`entry.in_use`; `None` is the global head). A champion that cannot be read is logged
    /// and not used.
    fn swap_champion(
        &self,
        conn: &Connection,
        entry: &mut crate::loaded::Entry,
        model: &Learnable,
    ) -> anyhow::Result<()> {
        let champion = crate::heads::champion(conn, &model.id, &model.version)?;
        if champion == entry.in_use {
            return Ok(());
        }
        let head = match champion {
            None => Ok(None),
            Some(h) => crate::heads::load(conn, &self.data_dir, model, h).map(Some),
        };
        match head.and_then(|h| entry.use_head(h)) {
            Ok(()) => {
                entry.in_use = champion;
                self.metrics_champion(entry.in_use);
                tracing::info!(head = %crate::heads::describe(entry.in_use), "inference uses a new head");
            }
            // A champion that cannot be read is not used; the head in use stays.
            Err(e) => {
                tracing::error!(head = %crate::heads::describe(champion), error = %format!("{e:#}"), "cannot load the champion head; keeping the head in use")
            }
        }
        Ok(())
    }

    fn metrics_champion(&self, head: Option<i64>) {
        if let Some(m) = &self.metrics {
            m.learning_champion_head.set(head.unwrap_or(0));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_one(
        &self,
        model: &mut Loaded,
        package: &AnyPackage,
        head: Option<i64>,
        job_id: i64,
        study: &str,
        ae: &str,
        series: &str,
    ) -> anyhow::Result<(serde_json::Value, Exported)> {
        let index = index::open_read_only(&pacs_bridge::store::index_path(&self.data_dir))?;
        let files = index::series_of_study(&index, &self.data_dir, study, ae)?
            .into_iter()
            .find(|s| s.series_uid == series)
            .context("the series is no longer in the spool")?
            .files;
        let t = Instant::now();
        let volume = volume::build(&files, &Limits::default())?;
        let decode_ms = t.elapsed().as_secs_f64() * 1e3;
        let mut result = model.run(&volume.volume)?;
        // A head fine-tuned here is part of what made the result: "0.1.0+head.3".
        if let Some(h) = head {
            result.model_version = format!("{}+head.{h}", result.model_version);
        }
        let mut json = serde_json::to_value(&result)?;
        json["head"] = crate::heads::describe(head).into();
        json["timings"]["decode_ms"] = decode_ms.into();
        json["slices"] = volume.volume.slices.into();
        let mut exported = Exported::default();
        if self.config.results.export {
            let t = Instant::now();
            // The job's identity names its objects: a re-run makes the same UIDs.
            let seed = format!(
                "{study}|{ae}|{series}|{}|{}|{}",
                package.id(),
                package.version(),
                files.len()
            );
            exported = crate::export::export(
                &self.data_dir,
                job_id,
                &volume,
                &result,
                package.outputs(),
                &self.config.results,
                &seed,
                &|negative| self.config.sends(ae, ResultObject::Sc, negative),
            )?;
            json["timings"]["export_ms"] = (t.elapsed().as_secs_f64() * 1e3).into();
            json["objects"] = serde_json::to_value(&exported.objects)?;
            json["negative"] = exported.negative.into();
        }
        Ok((json, exported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(conn: &Connection, n: usize, state: JobState) {
        for _ in 0..n {
            let i: i64 = conn
                .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
                .unwrap();
            conn.execute(
                "INSERT INTO jobs (study_uid, calling_ae, series_uid, model_id, model_version,
                     instances, state, created_at_ms, updated_at_ms)
                 VALUES (?1, 'A', 's', 'm', '1', 1, ?2, 0, 0)",
                params![format!("{state}-{i}"), state],
            )
            .unwrap();
        }
    }

    #[test]
    fn the_queue_admits_jobs_until_queued_and_running_reach_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db::open(dir.path()).unwrap();
        assert_eq!(admission(&conn, 3).unwrap(), JobState::Queued);
        assert!(!inference_busy(&conn).unwrap());
        insert(&conn, 1, JobState::Running);
        assert!(inference_busy(&conn).unwrap());
        insert(&conn, 1, JobState::Queued);
        // Finished, failed and rejected jobs do not wait, so they do not count.
        insert(&conn, 5, JobState::Done);
        insert(&conn, 2, JobState::Failed);
        insert(&conn, 2, JobState::Rejected);
        assert_eq!(admission(&conn, 3).unwrap(), JobState::Queued);
        insert(&conn, 1, JobState::Queued);
        assert_eq!(admission(&conn, 3).unwrap(), JobState::Rejected);
        assert_eq!(admission(&conn, 4).unwrap(), JobState::Queued);
    }

    #[test]
    fn a_job_the_appliance_stopped_during_max_attempts_times_fails_with_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db::open(dir.path()).unwrap();
        insert(&conn, 2, JobState::Running);
        conn.execute("UPDATE jobs SET attempts = 3 WHERE id = 1", [])
            .unwrap();
        conn.execute("UPDATE jobs SET attempts = 2 WHERE id = 2", [])
            .unwrap();
        assert_eq!(requeue_interrupted(&conn, 3).unwrap(), (1, 1));
        let (state, error): (JobState, Option<String>) = conn
            .query_row("SELECT state, error FROM jobs WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(state, JobState::Failed);
        assert!(error.unwrap().starts_with("crashed 3 times"));
        let state: JobState = conn
            .query_row("SELECT state FROM jobs WHERE id = 2", [], |r| r.get(0))
            .unwrap();
        assert_eq!(state, JobState::Queued);
    }

    #[test]
    fn a_corrupt_stored_result_fails_the_show_naming_its_job() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db::open(dir.path()).unwrap();
        insert(&conn, 1, JobState::Done);
        conn.execute(
            "INSERT INTO results (job_id, result_json, created_at_ms) VALUES (1, '{\"finding', 0)",
            [],
        )
        .unwrap();
        let err = show(dir.path(), "done-0").unwrap_err().to_string();
        assert!(
            err.starts_with("results row 1: result_json is corrupt: "),
            "{err}"
        );
        // A valid result is shown.
        conn.execute("UPDATE results SET result_json = '{\"finding\": 1}'", [])
            .unwrap();
        let jobs = show(dir.path(), "done-0").unwrap();
        assert_eq!(jobs[0].state, JobState::Done);
        assert_eq!(jobs[0].result, Some(serde_json::json!({"finding": 1})));
    }
}
