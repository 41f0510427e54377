//! What the daemon is doing right now, for whoever must not disturb it: the updater switches
//! to a new version only once the appliance is idle (`GET /activity` on the operations
//! endpoint). Counted from the live association gauge and from both databases, so a study the
//! spool holds but has not completed, or a job not yet run, counts as work too.

use fleet_wire::site::Activity;
use pacs_bridge::metrics::Metrics;
use pacs_bridge::store::{self, index};
use std::path::PathBuf;
use std::sync::Arc;

/// Reads the appliance's activity on demand.
pub struct ActivityProbe {
    data_dir: PathBuf,
    metrics: Arc<Metrics>,
}

impl ActivityProbe {
    pub fn new(data_dir: PathBuf, metrics: Arc<Metrics>) -> Self {
        Self { data_dir, metrics }
    }

    /// The activity now, or why it cannot be read (then nobody may assume it is idle).
    pub fn read(&self) -> Result<Activity, String> {
        let index = index::open_read_only(&store::index_path(&self.data_dir))
            .map_err(|e| format!("spool index: {e}"))?;
        let studies_receiving =
            index::receiving_studies(&index).map_err(|e| format!("spool index: {e}"))?;
        let results = crate::db::open(&self.data_dir).map_err(|e| e.to_string())?;
        let jobs_waiting = crate::jobs::waiting_jobs(&results)
            .map_err(|e| format!("results database: {e}"))?
            .max(0) as u64;
        Ok(Activity {
            associations_active: self.metrics.associations_active.get().max(0) as u64,
            studies_receiving,
            jobs_waiting,
        })
    }
}
