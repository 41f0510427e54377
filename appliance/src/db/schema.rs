//! The tables of `results.sqlite`, as migration 1 creates them: the schema the releases before
//! numbered migrations wrote, which a brand-new database gets too. A later change to a table
//! is a new migration in [`super::migrations`], never an edit here.

/// `jobs` and `results`: inference jobs and their results ([`crate::jobs`]).
pub(super) const JOBS: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id             INTEGER PRIMARY KEY,
    study_uid      TEXT NOT NULL,
    calling_ae     TEXT NOT NULL,
    series_uid     TEXT NOT NULL,
    model_id       TEXT NOT NULL,
    model_version  TEXT NOT NULL,
    instances      INTEGER NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'rejected')),
    error          TEXT,
    created_at_ms  INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    UNIQUE (study_uid, calling_ae, series_uid, model_id, model_version, instances)
);
CREATE TABLE IF NOT EXISTS results (
    job_id         INTEGER PRIMARY KEY REFERENCES jobs(id),
    result_json    TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL
);
";

/// Migration 2: how many times a worker started each job.
pub(super) const JOB_ATTEMPTS: &str =
    "ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;";

/// `intake_attempts`: label objects whose intake as a case has started and not yet been
/// recorded, with how often it started ([`crate::cases::begin_intake`]). A row left behind is
/// an intake that took the process down.
/// Cases remember whose they are (SHA-256 of issuer and Patient ID: never the ID itself), so
/// that every case of one patient lands on the same side of the learning split.
pub(super) const CASE_PATIENT_KEY: &str = "ALTER TABLE cases ADD COLUMN patient_key TEXT;";

/// A sampled case's class counts on its whole grid (a JSON array, background first); NULL for
/// a case that keeps every pixel.
pub(super) const CASE_CLASS_COUNTS: &str =
    "ALTER TABLE case_features ADD COLUMN class_counts TEXT;";

pub(super) const INTAKE_ATTEMPTS: &str = "
CREATE TABLE IF NOT EXISTS intake_attempts (
    label_sop_uid   TEXT PRIMARY KEY,
    attempts        INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL
);";

/// `outbox`: result objects waiting for delivery ([`crate::outbox`]).
pub(super) const OUTBOX: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    id                  INTEGER PRIMARY KEY,
    job_id              INTEGER NOT NULL REFERENCES jobs(id),
    study_uid           TEXT NOT NULL,
    destination         TEXT NOT NULL,
    kind                TEXT NOT NULL,
    sop_instance_uid    TEXT NOT NULL,
    path                TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms  INTEGER NOT NULL,
    last_error          TEXT,
    created_at_ms       INTEGER NOT NULL,
    updated_at_ms       INTEGER NOT NULL,
    sent_at_ms          INTEGER,
    UNIQUE (destination, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at_ms);
";

/// `cases`: labelled cases, accepted or refused ([`crate::cases`]).
pub(super) const CASES: &str = "
CREATE TABLE IF NOT EXISTS cases (
    id                 INTEGER PRIMARY KEY,
    label_sop_uid      TEXT NOT NULL UNIQUE,
    origin             TEXT NOT NULL CHECK (origin IN ('dicom', 'import')),
    state              TEXT NOT NULL CHECK (state IN ('accepted', 'refused')),
    reason             TEXT,
    study_uid          TEXT,
    series_uid         TEXT,
    model_id           TEXT NOT NULL,
    labels_path        TEXT,
    label_voxels_json  TEXT,
    created_at_ms      INTEGER NOT NULL,
    kind               TEXT NOT NULL DEFAULT 'segmentation'
                       CHECK (kind IN ('segmentation', 'classification')),
    finding            INTEGER
);
";

/// The columns an earlier `cases` table lacks: those a verified SR's classification label
/// needs. An earlier release's `cases` table gets them by `ALTER TABLE`.
pub(super) const CASES_KIND_AND_FINDING: &str = "
ALTER TABLE cases ADD COLUMN kind TEXT NOT NULL DEFAULT 'segmentation'
    CHECK (kind IN ('segmentation', 'classification'));
ALTER TABLE cases ADD COLUMN finding INTEGER;
";

/// `heads` and `champions`: head versions and the head inference uses ([`crate::heads`]).
pub(super) const HEADS: &str = "
CREATE TABLE IF NOT EXISTS heads (
    id              INTEGER PRIMARY KEY,
    model_id        TEXT NOT NULL,
    global_version  TEXT NOT NULL,
    parent_id       INTEGER REFERENCES heads(id),
    sha256          TEXT NOT NULL,
    path            TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('accepted', 'refused')),
    reasons_json    TEXT NOT NULL,
    trigger         TEXT NOT NULL,
    cases_json      TEXT NOT NULL,
    holdout_json    TEXT NOT NULL,
    metrics_json    TEXT NOT NULL,
    seconds         REAL NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    rolled_back_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS champions (
    model_id        TEXT NOT NULL,
    global_version  TEXT NOT NULL,
    head_id         INTEGER REFERENCES heads(id),
    updated_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (model_id, global_version)
);
";

/// `case_splits`, `case_features` and `learn_runs`: the learner's state ([`crate::learn`]).
pub(super) const LEARN: &str = "
CREATE TABLE IF NOT EXISTS case_splits (
    case_id        INTEGER PRIMARY KEY REFERENCES cases(id),
    split          TEXT NOT NULL CHECK (split IN ('train', 'holdout'))
);
CREATE TABLE IF NOT EXISTS case_features (
    case_id         INTEGER PRIMARY KEY REFERENCES cases(id),
    backbone_sha256 TEXT NOT NULL,
    slices          INTEGER NOT NULL,
    plane           INTEGER NOT NULL,
    pixel_ml        REAL NOT NULL,
    finding         INTEGER,
    features_path   TEXT NOT NULL,
    labels_path     TEXT NOT NULL,
    labels_sha256   TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS learn_runs (
    id              INTEGER PRIMARY KEY,
    model_id        TEXT NOT NULL,
    global_version  TEXT NOT NULL,
    trigger         TEXT NOT NULL,
    last_case_id    INTEGER NOT NULL,
    outcome         TEXT NOT NULL CHECK (outcome IN ('accepted', 'refused', 'failed')),
    head_id         INTEGER REFERENCES heads(id),
    detail          TEXT,
    started_at_ms   INTEGER NOT NULL,
    finished_at_ms  INTEGER NOT NULL
);
";

/// Migration 3: studies an operator protected from retention (`appliance studies protect`);
/// a row may name a study the spool does not hold (yet): it is protected when it arrives.
/// Retention judges every study each round: its outbox and case lookups get an index.
pub(super) const PROTECTED_STUDIES: &str = "
CREATE TABLE IF NOT EXISTS protected_studies (
    study_uid        TEXT PRIMARY KEY NOT NULL,
    protected_at_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_job ON outbox (job_id);
CREATE INDEX IF NOT EXISTS cases_by_study ON cases (study_uid);
";
