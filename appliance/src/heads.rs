//! Head versions: every head a fine-tune produced (accepted or refused by the gate) with its
//! lineage, and which head is the champion that inference uses, per model and global version.
//!
//! A head's weights are written to `<data_dir>/heads/<model>/<global version>/<id>.safetensors`
//! and fsync'd before the row that names them commits; the row keeps their SHA-256, checked
//! again whenever a head is loaded. The champion is one row in `champions` (no row, or a NULL
//! head: the global head the package shipped), so a promotion or a rollback is one committed
//! update: instant, and it survives a restart. A new global version starts from its own
//! shipped head; the heads of an older version stay listed.

use crate::db::{self, now_ms, HeadState};
use anyhow::Context;
use models::head::Head;
use models::learnable::Learnable;
use radiant_core::durable::{create_dir_durable, fsync_dir, write_synced};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A case a head was trained or validated on: its id and the SHA-256 of what it taught (its
/// series, its labels on the model grid, its study-level finding).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CaseRef {
    pub case: i64,
    pub labels_sha256: String,
}

/// A fine-tuned head about to be recorded.
pub struct NewHead<'a> {
    pub model: &'a Learnable,
    pub parent: Option<i64>,
    pub head: &'a Head,
    pub accepted: bool,
    pub reasons: &'a [String],
    pub trigger: &'a str,
    pub trained_on: &'a [CaseRef],
    pub held_out: &'a [CaseRef],
    pub metrics: serde_json::Value,
    pub seconds: f64,
}

/// One head version, as `appliance heads list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HeadView {
    /// `None`: the global head of the package.
    pub id: Option<i64>,
    pub model_id: String,
    pub global_version: String,
    /// The head it was fine-tuned from (`None`: the global head).
    pub parent: Option<i64>,
    pub sha256: String,
    pub state: HeadStatus,
    pub champion: bool,
    pub reasons: Vec<String>,
    pub trigger: Option<String>,
    pub trained_on: Vec<CaseRef>,
    pub held_out: Vec<CaseRef>,
    pub metrics: serde_json::Value,
    pub seconds: Option<f64>,
    pub created_at_ms: Option<i64>,
    pub rolled_back_at_ms: Option<i64>,
}

/// What a head listed is: the package's global head, or a fine-tuned head with the gate's
/// verdict. Shown as "global", "accepted" or "refused".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadStatus {
    Global,
    Gate(HeadState),
}

impl HeadStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HeadStatus::Global => "global",
            HeadStatus::Gate(state) => state.as_str(),
        }
    }
}

impl std::fmt::Display for HeadStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for HeadStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The champion's head row: `None` is the global head.
pub fn champion(conn: &Connection, model_id: &str, version: &str) -> rusqlite::Result<Option<i64>> {
    Ok(conn
        .query_row(
            "SELECT head_id FROM champions WHERE model_id = ?1 AND global_version = ?2",
            params![model_id, version],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()?
        .flatten())
}

fn set_champion(
    tx: &Connection,
    model_id: &str,
    version: &str,
    head: Option<i64>,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO champions (model_id, global_version, head_id, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (model_id, global_version) DO UPDATE SET head_id = excluded.head_id,
             updated_at_ms = excluded.updated_at_ms",
        params![model_id, version, head, now_ms()],
    )?;
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Record a fine-tuned head; an accepted one becomes the champion in the same transaction.
/// Returns its id.
pub fn record(conn: &Connection, data_dir: &Path, new: &NewHead) -> anyhow::Result<i64> {
    let bytes = new.head.to_safetensors()?;
    let sha = sha256_hex(&bytes);
    let m = new.model;
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let id: i64 = tx.query_row(
        "INSERT INTO heads (model_id, global_version, parent_id, sha256, path, state,
             reasons_json, trigger, cases_json, holdout_json, metrics_json, seconds, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, '', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) RETURNING id",
        params![
            m.id,
            m.version,
            new.parent,
            sha,
            if new.accepted {
                HeadState::Accepted
            } else {
                HeadState::Refused
            },
            serde_json::to_string(new.reasons)?,
            new.trigger,
            serde_json::to_string(new.trained_on)?,
            serde_json::to_string(new.held_out)?,
            new.metrics.to_string(),
            new.seconds,
            now_ms()
        ],
        |r| r.get(0),
    )?;
    let relative = PathBuf::from("heads")
        .join(&m.id)
        .join(&m.version)
        .join(format!("{id}.safetensors"));
    let absolute = data_dir.join(&relative);
    let dir = absolute.parent().context("head path has no folder")?;
    create_dir_durable(dir)?;
    write_synced(&absolute, &bytes)?;
    fsync_dir(dir)?;
    tx.execute(
        "UPDATE heads SET path = ?2 WHERE id = ?1",
        params![id, relative.to_string_lossy()],
    )?;
    if new.accepted {
        set_champion(&tx, &m.id, &m.version, Some(id))?;
    }
    tx.commit()?;
    Ok(id)
}

/// Load head `id` of `manifest`'s model, checking its SHA-256 and shape.
pub fn load(
    conn: &Connection,
    data_dir: &Path,
    manifest: &Learnable,
    id: i64,
) -> anyhow::Result<Head> {
    let (path, sha): (String, String) = conn
        .query_row(
            "SELECT path, sha256 FROM heads WHERE id = ?1 AND model_id = ?2 AND global_version = ?3",
            params![id, manifest.id, manifest.version],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .with_context(|| format!("no head {id} of {} {}", manifest.id, manifest.version))?;
    let path = data_dir.join(path);
    let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    let actual = sha256_hex(&bytes);
    anyhow::ensure!(
        actual == sha,
        "{}: SHA-256 is {actual}, recorded {sha}",
        path.display()
    );
    Ok(manifest.head_from(&bytes)?)
}

/// Make the champion's parent the champion again (or `to`: a given accepted head, `None`
/// for the global head); returns the new champion. The head rolled back from is marked so.
pub fn rollback(
    conn: &Connection,
    manifest: &Learnable,
    to: Option<Target>,
) -> anyhow::Result<Option<i64>> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let current = champion(&tx, &manifest.id, &manifest.version)?;
    let target = match to {
        Some(Target::Global) => None,
        Some(Target::Head(id)) => {
            let state: Option<HeadState> = tx
                .query_row(
                    "SELECT state FROM heads WHERE id = ?1 AND model_id = ?2 AND global_version = ?3",
                    params![id, manifest.id, manifest.version],
                    |r| r.get(0),
                )
                .optional()?;
            match state {
                Some(HeadState::Accepted) => Some(id),
                Some(other) => anyhow::bail!(
                    "head {id} was {other} by the gate; only accepted heads can be champion"
                ),
                None => anyhow::bail!("no head {id} of {} {}", manifest.id, manifest.version),
            }
        }
        None => {
            let Some(current) = current else {
                anyhow::bail!(
                    "{} {} runs its global head already; nothing to roll back",
                    manifest.id,
                    manifest.version
                );
            };
            tx.query_row(
                "SELECT parent_id FROM heads WHERE id = ?1",
                [current],
                |r| r.get::<_, Option<i64>>(0),
            )?
        }
    };
    anyhow::ensure!(
        target != current,
        "head {} is the champion already",
        describe(target)
    );
    if let Some(current) = current {
        tx.execute(
            "UPDATE heads SET rolled_back_at_ms = ?2 WHERE id = ?1",
            params![current, now_ms()],
        )?;
    }
    set_champion(&tx, &manifest.id, &manifest.version, target)?;
    tx.commit()?;
    Ok(target)
}

/// Where a rollback goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Global,
    Head(i64),
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "global" {
            return Ok(Target::Global);
        }
        s.parse()
            .map(Target::Head)
            .map_err(|_| format!("{s:?} is neither a head id nor \"global\""))
    }
}

/// "global" or the head id, for messages.
pub fn describe(head: Option<i64>) -> String {
    head.map(|id| id.to_string())
        .unwrap_or_else(|| "global".into())
}

/// Every head of `manifest`'s model and global version, the global head first. A head whose
/// stored lineage, reasons or metrics are not valid JSON is an error naming it.
pub fn list(conn: &Connection, manifest: &Learnable) -> anyhow::Result<Vec<HeadView>> {
    let champion = champion(conn, &manifest.id, &manifest.version)?;
    let mut out = vec![HeadView {
        id: None,
        model_id: manifest.id.clone(),
        global_version: manifest.version.clone(),
        parent: None,
        sha256: manifest.head_sha256.clone(),
        state: HeadStatus::Global,
        champion: champion.is_none(),
        reasons: Vec::new(),
        trigger: None,
        trained_on: Vec::new(),
        held_out: Vec::new(),
        metrics: serde_json::Value::Null,
        seconds: None,
        created_at_ms: None,
        rolled_back_at_ms: None,
    }];
    let mut stmt = conn.prepare(
        "SELECT id, parent_id, sha256, state, reasons_json, trigger, cases_json, holdout_json,
                metrics_json, seconds, created_at_ms, rolled_back_at_ms
         FROM heads WHERE model_id = ?1 AND global_version = ?2 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![manifest.id, manifest.version], |r| {
        let id: i64 = r.get(0)?;
        let view = HeadView {
            id: Some(id),
            model_id: manifest.id.clone(),
            global_version: manifest.version.clone(),
            parent: r.get(1)?,
            sha256: r.get(2)?,
            state: HeadStatus::Gate(r.get(3)?),
            champion: champion == Some(id),
            reasons: Vec::new(),
            trigger: Some(r.get(5)?),
            trained_on: Vec::new(),
            held_out: Vec::new(),
            metrics: serde_json::Value::Null,
            seconds: Some(r.get(9)?),
            created_at_ms: Some(r.get(10)?),
            rolled_back_at_ms: r.get(11)?,
        };
        let json: [String; 4] = [r.get(4)?, r.get(6)?, r.get(7)?, r.get(8)?];
        Ok((id, view, json))
    })?;
    for row in rows {
        let (id, mut view, [reasons, trained_on, held_out, metrics]) = row?;
        view.reasons = db::stored_json("heads", id, "reasons_json", &reasons)?;
        view.trained_on = db::stored_json("heads", id, "cases_json", &trained_on)?;
        view.held_out = db::stored_json("heads", id, "holdout_json", &held_out)?;
        view.metrics = db::stored_json("heads", id, "metrics_json", &metrics)?;
        out.push(view);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Learnable {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/reference/head-ct");
        Learnable::of(&models::registry::AnyPackage::open(&dir).unwrap()).unwrap()
    }

    #[test]
    fn a_head_with_corrupt_stored_lineage_fails_the_list_naming_the_head() {
        let m = manifest();
        let dir = tempfile::tempdir().unwrap();
        let conn = db::open(dir.path()).unwrap();
        conn.execute(
            "INSERT INTO heads (id, model_id, global_version, sha256, path, state, reasons_json,
                 trigger, cases_json, holdout_json, metrics_json, seconds, created_at_ms)
             VALUES (2, ?1, ?2, 'ab', 'p', ?3, '[]', 't', '[{\"case\": 1', '[]', '{}', 1.0, 0)",
            params![m.id, m.version, HeadState::Refused],
        )
        .unwrap();
        let err = format!("{:#}", list(&conn, &m).unwrap_err());
        assert!(
            err.starts_with("heads row 2: cases_json is corrupt: "),
            "{err}"
        );
        // Valid JSON of the wrong shape is corrupt too, never an empty lineage.
        conn.execute(
            "UPDATE heads SET cases_json = '[]', reasons_json = '\"worse\"'",
            [],
        )
        .unwrap();
        let err = format!("{:#}", list(&conn, &m).unwrap_err());
        assert!(
            err.starts_with("heads row 2: reasons_json is corrupt: "),
            "{err}"
        );
        conn.execute(
            "UPDATE heads SET cases_json = '[{\"case\": 1, \"labels_sha256\": \"cd\"}]',
                 reasons_json = '[\"worse\"]'",
            [],
        )
        .unwrap();
        let all = list(&conn, &m).unwrap();
        assert_eq!(all[0].state, HeadStatus::Global);
        assert_eq!(all[1].state, HeadStatus::Gate(HeadState::Refused));
        assert_eq!(
            all[1].trained_on,
            [CaseRef {
                case: 1,
                labels_sha256: "cd".into()
            }]
        );
        assert_eq!(all[1].reasons, ["worse"]);
    }
}
