//! What `/health/ready` answers from: set by the daemon as parts come up and go down, and by
//! the supervisor when a thread fails for good.

use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, PoisonError};

/// What readiness depends on; set by the daemon as parts come up and go down.
#[derive(Default)]
pub struct Readiness {
    pub scp_listening: AtomicBool,
    pub shutting_down: AtomicBool,
    /// Set once when a part of the daemon failed for good (a thread panicked); never cleared.
    failed: Mutex<Option<String>>,
}

impl Readiness {
    /// Mark the daemon as failed with `reason`; the first reason is kept.
    pub fn fail(&self, reason: String) {
        let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        failed.get_or_insert(reason);
    }

    pub fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
