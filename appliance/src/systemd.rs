//! The systemd service protocol (`sd_notify`): `READY=1` once the DICOM SCP is bound and the
//! daemon's threads run, `WATCHDOG=1` every half `WatchdogSec` while the daemon is healthy (no
//! supervised thread failed, not stopping), `STOPPING=1` when it stops. A daemon that hangs or
//! loses a thread stops feeding the watchdog and systemd restarts it. Started outside systemd
//! (no `NOTIFY_SOCKET`), every call does nothing.

use crate::readiness::Readiness;
use crate::supervisor::{Supervised, Supervisor};
use sd_notify::NotifyState;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Tell systemd the service is up.
pub fn ready() {
    notify(&[NotifyState::Ready], "READY");
}

/// Tell systemd the service is stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping], "STOPPING");
}

fn notify(state: &[NotifyState], what: &str) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot tell systemd {what}");
    }
}

/// When systemd watches the service (`WatchdogSec`), a supervised thread that pings it every
/// half interval while `readiness` says the daemon is healthy; `None` without a watchdog.
pub fn watchdog(
    supervisor: &Supervisor,
    readiness: Arc<Readiness>,
) -> std::io::Result<Option<Supervised>> {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return Ok(None);
    };
    let period = interval / 2;
    tracing::info!(
        seconds = interval.as_secs_f64(),
        "systemd watchdog on: pinged while the daemon is healthy"
    );
    supervisor
        .spawn("watchdog", move |stop| {
            while !stop.wait_timeout(period) {
                if let Some(reason) = readiness.failure() {
                    tracing::error!(reason = %reason, "not feeding the systemd watchdog: a part of the daemon failed");
                } else if !readiness.shutting_down.load(Ordering::SeqCst) {
                    notify(&[NotifyState::Watchdog], "WATCHDOG");
                }
            }
            Ok(())
        })
        .map(Some)
}
