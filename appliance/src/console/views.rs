//! What the console's pages show, gathered from the appliance's stores: `results.sqlite`
//! through [`crate::db::open`] with `PRAGMA query_only` set (the console never writes it but
//! through [`crate::heads::rollback`]), the spool index opened read-only, the model registry,
//! and the daemon's readiness.
//!
//! Every view names studies by `log_tag` of their UID and results by job id; the UIDs and the
//! patient ID are filled in only when the caller asks (an admin with `show_identifiers`).

use crate::db::{self, JobState, OutboxState};
use pacs_bridge::store::{self, index};
use radiant_core::log_tag;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

/// Studies the study list shows at most.
pub const MAX_STUDIES: usize = 1000;

/// `results.sqlite` for reading: every write on this connection fails.
pub fn read_db(data_dir: &Path) -> anyhow::Result<Connection> {
    let conn = db::open(data_dir)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// Milliseconds since the epoch as `2026-01-31 12:34:56Z`.
pub fn when(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replacen('T', " ", 1)
}

/// Bytes in words (`1.5 GiB`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[derive(Debug, Serialize)]
pub struct Count {
    pub name: String,
    pub count: i64,
}

#[derive(Debug, Serialize)]
pub struct DiskView {
    pub used_percent: String,
    pub free: String,
    pub total: String,
    pub floor: String,
    pub above_floor: bool,
    pub high_watermark: String,
}

#[derive(Debug, Serialize)]
pub struct ModelLine {
    pub id: String,
    pub version: String,
    pub active: bool,
    pub task: String,
}

#[derive(Debug, Serialize)]
pub struct StatusView {
    pub ready: bool,
    pub reason: Option<String>,
    pub scp_listening: bool,
    pub shutting_down: bool,
    pub disk: Option<DiskView>,
    pub disk_error: Option<String>,
    pub version: &'static str,
    pub schema_version: i64,
    pub models: Vec<ModelLine>,
    pub models_error: Option<String>,
    pub instances: u64,
    pub spool_bytes: String,
    pub studies: usize,
    pub studies_receiving: u64,
    pub jobs_waiting: i64,
    pub console_started: String,
}

/// Readiness as `/health/ready` answers it, disk, versions and the spool's size.
pub fn status(
    config: &crate::config::Config,
    readiness: &crate::readiness::Readiness,
    started_ms: i64,
) -> anyhow::Result<StatusView> {
    use std::sync::atomic::Ordering;
    let data_dir = &config.data_dir;
    let floor = config.storage.min_free_mb.saturating_mul(1 << 20);
    let (disk, disk_error) = match store::fs_usage(data_dir) {
        Ok(u) => {
            let free = u.available_bytes;
            (
                Some(DiskView {
                    used_percent: format!("{:.1} %", u.used_percent()),
                    free: bytes(free),
                    total: bytes(u.usable_bytes()),
                    floor: bytes(floor),
                    above_floor: free >= floor,
                    high_watermark: format!("{} %", config.retention.high_watermark_percent),
                }),
                None,
            )
        }
        Err(e) => (None, Some(e.to_string())),
    };
    let scp_listening = readiness.scp_listening.load(Ordering::SeqCst);
    let shutting_down = readiness.shutting_down.load(Ordering::SeqCst);
    let reason = if let Some(failure) = readiness.failure() {
        Some(failure)
    } else if shutting_down {
        Some("shutting down".to_string())
    } else if !scp_listening {
        Some("DICOM SCP not listening".to_string())
    } else {
        match &disk {
            Some(d) if !d.above_floor => Some(format!(
                "free disk {} is below the floor of {}",
                d.free, d.floor
            )),
            Some(_) => None,
            None => Some("cannot read free disk space".into()),
        }
    };
    let (models, models_error) = match models::registry::Registry::new(data_dir).list() {
        Ok(list) => (
            list.into_iter()
                .map(|m| ModelLine {
                    id: m.id,
                    version: m.version,
                    active: m.active,
                    task: m.task,
                })
                .collect(),
            None,
        ),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let (instances, spool_bytes, studies, studies_receiving) =
        match index::open_read_only(&store::index_path(data_dir)) {
            Ok(conn) => {
                let (n, b) = index::totals(&conn)?;
                let studies = index::list_studies(&conn)?.len();
                (n, b, studies, index::receiving_studies(&conn)?)
            }
            Err(_) => (0, 0, 0, 0),
        };
    let conn = read_db(data_dir)?;
    Ok(StatusView {
        ready: reason.is_none(),
        reason,
        scp_listening,
        shutting_down,
        disk,
        disk_error,
        version: env!("CARGO_PKG_VERSION"),
        schema_version: db::SCHEMA_VERSION,
        models,
        models_error,
        instances,
        spool_bytes: bytes(spool_bytes),
        studies,
        studies_receiving,
        jobs_waiting: crate::jobs::waiting_jobs(&conn)?,
        console_started: when(started_ms),
    })
}

#[derive(Debug, Serialize)]
pub struct JobLine {
    pub id: i64,
    pub study: String,
    pub model: String,
    pub version: String,
    pub state: String,
    pub error: Option<String>,
    pub updated: String,
}

#[derive(Debug, Serialize)]
pub struct OutboxCount {
    pub destination: String,
    pub pending: i64,
    pub sent: i64,
    pub failed: i64,
}

#[derive(Debug, Serialize)]
pub struct OutboxLine {
    pub job: i64,
    pub kind: String,
    pub destination: String,
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub updated: String,
}

#[derive(Debug, Serialize)]
pub struct LearnLine {
    pub model: String,
    pub trigger: String,
    pub outcome: String,
    pub head: Option<i64>,
    pub detail: Option<String>,
    pub finished: String,
}

#[derive(Debug, Serialize)]
pub struct QueuesView {
    pub jobs: Vec<Count>,
    pub recent_jobs: Vec<JobLine>,
    pub outbox: Vec<OutboxCount>,
    pub outbox_open: Vec<OutboxLine>,
    pub cases: Vec<Count>,
    pub splits: Vec<Count>,
    pub heads: i64,
    pub learn_runs: Vec<LearnLine>,
}

fn counts(conn: &Connection, sql: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Inference jobs, outbox and learning, counted, with the latest lines of each.
pub fn queues(data_dir: &Path) -> anyhow::Result<QueuesView> {
    let conn = read_db(data_dir)?;
    let by_state = counts(&conn, "SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
    let jobs = JobState::ALL
        .iter()
        .map(|s| Count {
            name: s.as_str().into(),
            count: by_state.get(s.as_str()).copied().unwrap_or(0),
        })
        .collect();
    let recent_jobs = job_lines(
        &conn,
        "SELECT id, study_uid, model_id, model_version, state, error, updated_at_ms FROM jobs
         ORDER BY updated_at_ms DESC, id DESC LIMIT 20",
        params![],
    )?;
    let mut outbox: BTreeMap<String, OutboxCount> = BTreeMap::new();
    {
        let mut stmt = conn.prepare(
            "SELECT destination, state, COUNT(*) FROM outbox GROUP BY destination, state",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, OutboxState>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (destination, state, n) = row?;
            let entry = outbox
                .entry(destination.clone())
                .or_insert_with(|| OutboxCount {
                    destination,
                    pending: 0,
                    sent: 0,
                    failed: 0,
                });
            match state {
                OutboxState::Pending => entry.pending += n,
                OutboxState::Sent => entry.sent += n,
                OutboxState::Failed => entry.failed += n,
            }
        }
    }
    let outbox_open = outbox_lines(
        &conn,
        "SELECT job_id, kind, destination, state, attempts, last_error, updated_at_ms FROM outbox
         WHERE state != 'sent' ORDER BY updated_at_ms DESC LIMIT 20",
        params![],
    )?;
    let cases = counts(
        &conn,
        "SELECT kind || ', ' || state, COUNT(*) FROM cases GROUP BY kind, state",
    )?
    .into_iter()
    .map(|(name, count)| Count { name, count })
    .collect();
    let splits = counts(
        &conn,
        "SELECT split, COUNT(*) FROM case_splits GROUP BY split",
    )?
    .into_iter()
    .map(|(name, count)| Count { name, count })
    .collect();
    let heads = conn.query_row("SELECT COUNT(*) FROM heads", [], |r| r.get(0))?;
    let mut stmt = conn.prepare(
        "SELECT model_id, trigger, outcome, head_id, detail, finished_at_ms FROM learn_runs
         ORDER BY id DESC LIMIT 10",
    )?;
    let learn_runs = stmt
        .query_map([], |r| {
            Ok(LearnLine {
                model: r.get(0)?,
                trigger: r.get(1)?,
                outcome: r.get(2)?,
                head: r.get(3)?,
                detail: r.get(4)?,
                finished: when(r.get(5)?),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(QueuesView {
        jobs,
        recent_jobs,
        outbox: outbox.into_values().collect(),
        outbox_open,
        cases,
        splits,
        heads,
        learn_runs,
    })
}

fn job_lines(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> anyhow::Result<Vec<JobLine>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(args, |r| {
        Ok(JobLine {
            id: r.get(0)?,
            study: log_tag(&r.get::<_, String>(1)?),
            model: r.get(2)?,
            version: r.get(3)?,
            state: r.get::<_, JobState>(4)?.as_str().into(),
            error: r.get(5)?,
            updated: when(r.get(6)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn outbox_lines(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> anyhow::Result<Vec<OutboxLine>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(args, |r| {
        Ok(OutboxLine {
            job: r.get(0)?,
            kind: r.get(1)?,
            destination: r.get(2)?,
            state: r.get::<_, OutboxState>(3)?.as_str().into(),
            attempts: r.get(4)?,
            last_error: r.get(5)?,
            updated: when(r.get(6)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[derive(Debug, Serialize)]
pub struct StudyLine {
    pub tag: String,
    pub calling_ae: String,
    pub state: String,
    pub instances: u64,
    pub series: u64,
    pub received: String,
    pub completed: Option<String>,
    /// `2 done, 1 queued`.
    pub jobs: String,
    /// Only when identifiers are shown.
    pub study_uid: Option<String>,
}

/// The most recent `limit` studies (of each sender), newest first.
pub fn studies(data_dir: &Path, limit: usize, identifiers: bool) -> anyhow::Result<Vec<StudyLine>> {
    let index = match index::open_read_only(&store::index_path(data_dir)) {
        Ok(i) => i,
        Err(pacs_bridge::store::StoreError::NoIndex(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let conn = read_db(data_dir)?;
    let mut jobs: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    {
        let mut stmt =
            conn.prepare("SELECT study_uid, state, COUNT(*) FROM jobs GROUP BY study_uid, state")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, JobState>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (study, state, n) = row?;
            jobs.entry(study)
                .or_default()
                .insert(state.as_str().to_string(), n);
        }
    }
    let mut all = index::list_studies(&index)?;
    all.sort_by_key(|s| std::cmp::Reverse(s.first_received_at_ms));
    Ok(all
        .into_iter()
        .take(limit)
        .map(|s| StudyLine {
            tag: log_tag(&s.study_uid),
            jobs: jobs
                .get(&s.study_uid)
                .map(|by_state| {
                    by_state
                        .iter()
                        .map(|(state, n)| format!("{n} {state}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "none".into()),
            calling_ae: s.calling_ae,
            state: s.state,
            instances: s.instances,
            series: s.series,
            received: when(s.first_received_at_ms),
            completed: s.completed_at_ms.map(when),
            study_uid: identifiers.then_some(s.study_uid),
        })
        .collect())
}

#[derive(Debug, Serialize)]
pub struct SeriesLine {
    pub tag: String,
    pub modality: String,
    pub instances: usize,
    pub series_uid: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LabelLine {
    pub name: String,
    pub ml: String,
    pub voxels: u64,
}

#[derive(Debug, Serialize)]
pub struct StudyJob {
    pub id: i64,
    pub series: String,
    pub model: String,
    pub version: String,
    pub state: String,
    pub error: Option<String>,
    pub finding: Option<String>,
    pub labels: Vec<LabelLine>,
    pub updated: String,
}

#[derive(Debug, Serialize)]
pub struct StudyGroupView {
    pub calling_ae: String,
    pub state: String,
    pub instances: u64,
    pub received: String,
    pub completed: Option<String>,
    pub series: Vec<SeriesLine>,
}

#[derive(Debug, Serialize)]
pub struct StudyView {
    pub tag: String,
    pub study_uid: Option<String>,
    pub groups: Vec<StudyGroupView>,
    pub jobs: Vec<StudyJob>,
}

/// The finding of a stored result in words: `intracranial hemorrhage 0.97`.
fn finding_of(result: &serde_json::Value) -> Option<String> {
    let p = result["finding_probability"].as_f64()?;
    let name = result["finding"].as_str().unwrap_or("finding");
    Some(format!("{name} {p:.3}"))
}

fn labels_of(result: &serde_json::Value) -> Vec<LabelLine> {
    result["labels"]
        .as_array()
        .map(|labels| {
            labels
                .iter()
                .filter(|l| l["value"].as_u64() != Some(0))
                .map(|l| LabelLine {
                    name: l["name"].as_str().unwrap_or("?").to_string(),
                    ml: l["ml"]
                        .as_f64()
                        .map(|v| format!("{v:.2}"))
                        .unwrap_or_else(|| "-".into()),
                    voxels: l["voxels"].as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The study whose UID's `log_tag` is `tag` (every sender's copy), with its series and jobs;
/// `None` when the spool has no such study.
pub fn study(data_dir: &Path, tag: &str, identifiers: bool) -> anyhow::Result<Option<StudyView>> {
    if tag.len() != 12 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let index = match index::open_read_only(&store::index_path(data_dir)) {
        Ok(i) => i,
        Err(pacs_bridge::store::StoreError::NoIndex(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let groups: Vec<_> = index::list_studies(&index)?
        .into_iter()
        .filter(|s| log_tag(&s.study_uid) == tag)
        .collect();
    let Some(first) = groups.first() else {
        return Ok(None);
    };
    let study_uid = first.study_uid.clone();
    let mut views = Vec::new();
    for g in &groups {
        let series = index::series_of_study(&index, data_dir, &g.study_uid, &g.calling_ae)?
            .into_iter()
            .map(|s| SeriesLine {
                tag: log_tag(&s.series_uid),
                modality: s.modality,
                instances: s.files.len(),
                series_uid: identifiers.then_some(s.series_uid),
            })
            .collect();
        views.push(StudyGroupView {
            calling_ae: g.calling_ae.clone(),
            state: g.state.clone(),
            instances: g.instances,
            received: when(g.first_received_at_ms),
            completed: g.completed_at_ms.map(when),
            series,
        });
    }
    let conn = read_db(data_dir)?;
    let mut stmt = conn.prepare(
        "SELECT j.id, j.series_uid, j.model_id, j.model_version, j.state, j.error,
                j.updated_at_ms, r.result_json
         FROM jobs j LEFT JOIN results r ON r.job_id = j.id
         WHERE j.study_uid = ?1 ORDER BY j.id",
    )?;
    let rows = stmt.query_map([&study_uid], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, JobState>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, Option<String>>(7)?,
        ))
    })?;
    let mut jobs = Vec::new();
    for row in rows {
        let (id, series, model, version, state, error, updated, json) = row?;
        let result: serde_json::Value = match json {
            Some(text) => db::stored_json("results", id, "result_json", &text)?,
            None => serde_json::Value::Null,
        };
        jobs.push(StudyJob {
            id,
            series: log_tag(&series),
            model,
            version: result["model_version"]
                .as_str()
                .map(String::from)
                .unwrap_or(version),
            state: state.as_str().into(),
            error,
            finding: finding_of(&result),
            labels: labels_of(&result),
            updated: when(updated),
        });
    }
    Ok(Some(StudyView {
        tag: tag.to_string(),
        study_uid: identifiers.then_some(study_uid),
        groups: views,
        jobs,
    }))
}

/// A job as the result page and the images need it.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: i64,
    pub study_uid: String,
    pub calling_ae: String,
    pub series_uid: String,
    pub model_id: String,
    pub model_version: String,
    pub state: JobState,
    pub error: Option<String>,
    pub result: serde_json::Value,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Job `id` with its result; `None` when there is no such job.
pub fn job(data_dir: &Path, id: i64) -> anyhow::Result<Option<JobRecord>> {
    let conn = read_db(data_dir)?;
    let row = conn
        .query_row(
            "SELECT j.id, j.study_uid, j.calling_ae, j.series_uid, j.model_id, j.model_version,
                    j.state, j.error, r.result_json, j.created_at_ms, j.updated_at_ms
             FROM jobs j LEFT JOIN results r ON r.job_id = j.id WHERE j.id = ?1",
            [id],
            |r| {
                Ok((
                    JobRecord {
                        id: r.get(0)?,
                        study_uid: r.get(1)?,
                        calling_ae: r.get(2)?,
                        series_uid: r.get(3)?,
                        model_id: r.get(4)?,
                        model_version: r.get(5)?,
                        state: r.get(6)?,
                        error: r.get(7)?,
                        result: serde_json::Value::Null,
                        created_at_ms: r.get(9)?,
                        updated_at_ms: r.get(10)?,
                    },
                    r.get::<_, Option<String>>(8)?,
                ))
            },
        )
        .optional()?;
    let Some((mut job, json)) = row else {
        return Ok(None);
    };
    if let Some(text) = json {
        job.result = db::stored_json("results", id, "result_json", &text)?;
    }
    Ok(Some(job))
}

#[derive(Debug, Serialize)]
pub struct ResultView {
    pub id: i64,
    pub study: String,
    pub series: String,
    pub calling_ae: String,
    pub model: String,
    pub version: String,
    pub head: Option<String>,
    pub backend: Option<String>,
    pub state: String,
    pub error: Option<String>,
    pub finding: Option<String>,
    pub labels: Vec<LabelLine>,
    pub slices: Option<u64>,
    pub created: String,
    pub updated: String,
    pub outbox: Vec<OutboxLine>,
    pub study_uid: Option<String>,
    pub series_uid: Option<String>,
}

/// The result page's figures for `job` (its images come from [`super::images`]).
pub fn result(data_dir: &Path, job: &JobRecord, identifiers: bool) -> anyhow::Result<ResultView> {
    let conn = read_db(data_dir)?;
    let outbox = outbox_lines(
        &conn,
        "SELECT job_id, kind, destination, state, attempts, last_error, updated_at_ms FROM outbox
         WHERE job_id = ?1 ORDER BY id",
        [job.id],
    )?;
    let r = &job.result;
    Ok(ResultView {
        id: job.id,
        study: log_tag(&job.study_uid),
        series: log_tag(&job.series_uid),
        calling_ae: job.calling_ae.clone(),
        model: job.model_id.clone(),
        version: r["model_version"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| job.model_version.clone()),
        head: r["head"].as_str().map(String::from),
        backend: r["backend"].as_str().map(String::from),
        state: job.state.as_str().into(),
        error: job.error.clone(),
        finding: finding_of(r),
        labels: labels_of(r),
        slices: r["slices"].as_u64(),
        created: when(job.created_at_ms),
        updated: when(job.updated_at_ms),
        outbox,
        study_uid: identifiers.then(|| job.study_uid.clone()),
        series_uid: identifiers.then(|| job.series_uid.clone()),
    })
}

#[derive(Debug, Serialize)]
pub struct RouteLine {
    pub model: String,
    pub rule: String,
}

/// `[[routes]]` in words; with none, `[inference] model` takes its modality.
pub fn routes(config: &crate::config::Config) -> Vec<RouteLine> {
    if config.routes.is_empty() {
        return vec![RouteLine {
            model: config.inference.model.clone(),
            rule: "every series of the model's modality ([inference] model, no [[routes]])".into(),
        }];
    }
    config
        .routes
        .iter()
        .map(|r| {
            let mut rule = Vec::new();
            let mut add = |name: &str, value: &Option<String>| {
                if let Some(v) = value {
                    rule.push(format!("{name} {v:?}"));
                }
            };
            add("modality", &r.modality);
            add("body part", &r.body_part);
            add("series description", &r.series_description);
            add("image type", &r.image_type);
            add("calling AE", &r.calling_ae);
            if let Some([lo, hi]) = r.slice_thickness_mm {
                rule.push(format!("slice thickness {lo}-{hi} mm"));
            }
            RouteLine {
                model: r.model.clone(),
                rule: if rule.is_empty() {
                    "every series".into()
                } else {
                    rule.join(", ")
                },
            }
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Serialize)]
pub struct HeadLine {
    pub id: String,
    pub state: String,
    pub parent: String,
    pub champion: bool,
    pub trigger: String,
    pub trained_on: usize,
    pub held_out: usize,
    pub figures: Vec<Figure>,
    pub reasons: String,
    pub created: String,
    pub rolled_back: Option<String>,
}

/// Every number the gate recorded (`metrics.gate`, one level of nesting), by name.
pub fn gate_figures(metrics: &serde_json::Value) -> Vec<Figure> {
    let mut out = Vec::new();
    let Some(gate) = metrics["gate"].as_object() else {
        return out;
    };
    let show = |v: &serde_json::Value| -> Option<String> {
        match v {
            serde_json::Value::Number(n) => n.as_f64().map(|f| {
                if f.fract() == 0.0 && f.abs() < 1e9 {
                    format!("{f}")
                } else {
                    format!("{f:.4}")
                }
            }),
            serde_json::Value::Array(items) if items.iter().all(|i| i.is_number()) => Some(
                items
                    .iter()
                    .filter_map(|i| i.as_f64())
                    .map(|f| format!("{f:.4}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    };
    for (name, value) in gate {
        if let Some(v) = show(value) {
            out.push(Figure {
                name: name.clone(),
                value: v,
            });
        } else if let Some(inner) = value.as_object() {
            for (k, v) in inner {
                if let Some(v) = show(v) {
                    out.push(Figure {
                        name: format!("{name}.{k}"),
                        value: v,
                    });
                }
            }
        }
    }
    out
}

/// Head versions of one model as the models page lists them.
pub fn head_lines(heads: &[crate::heads::HeadView]) -> Vec<HeadLine> {
    heads
        .iter()
        .map(|h| HeadLine {
            id: crate::heads::describe(h.id),
            state: h.state.as_str().into(),
            parent: if h.id.is_some() {
                crate::heads::describe(h.parent)
            } else {
                "-".into()
            },
            champion: h.champion,
            trigger: h.trigger.clone().unwrap_or_else(|| "-".into()),
            trained_on: h.trained_on.len(),
            held_out: h.held_out.len(),
            figures: gate_figures(&h.metrics),
            reasons: h.reasons.join("; "),
            created: h.created_at_ms.map(when).unwrap_or_else(|| "-".into()),
            rolled_back: h.rolled_back_at_ms.map(when),
        })
        .collect()
}
