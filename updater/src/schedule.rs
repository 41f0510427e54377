//! When the updater may switch the appliance to a new version: inside the configured
//! maintenance window (the appliance's local time) and while the appliance is idle, as its
//! `GET /activity` says (no association open, no study still receiving, no job waiting). A
//! daemon that does not answer is not running, so it is idle; one that answers with an error
//! is not known to be idle and is waited for.

use fleet_wire::site::{in_window, parse_window, Activity};
use std::time::Duration;

/// How often the window and the activity are checked while waiting.
pub const POLL: Duration = Duration::from_secs(2);

/// Why the switch cannot happen now.
#[derive(Debug, Clone, PartialEq)]
pub enum Busy {
    /// Outside the maintenance window.
    OutsideWindow(String),
    /// The appliance is working.
    Working(Activity),
    /// The appliance answered, but not with its activity.
    Unknown(String),
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Busy::OutsideWindow(w) => write!(f, "outside the maintenance window {w}"),
            Busy::Working(a) => write!(
                f,
                "the appliance is working: {} association(s) open, {} study(ies) receiving, \
                 {} job(s) waiting",
                a.associations_active, a.studies_receiving, a.jobs_waiting
            ),
            Busy::Unknown(reason) => write!(f, "the appliance's activity is unknown: {reason}"),
        }
    }
}

/// The gate a switch waits on.
pub struct Schedule {
    window: Option<(String, (u32, u32))>,
    activity_url: Option<String>,
    agent: ureq::Agent,
}

impl Schedule {
    /// `window` as `maintenance_window` (already validated); `activity_url` the appliance's
    /// `/activity`, or `None` when its operations endpoint is off (then only the window).
    pub fn new(window: Option<&str>, activity_url: Option<String>) -> Schedule {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .max_redirects(0)
            .build()
            .new_agent();
        Schedule {
            window: window.and_then(|w| parse_window(w).map(|p| (w.to_string(), p))),
            activity_url,
            agent,
        }
    }

    /// `Ok` when a switch may happen now, else why not.
    pub fn check(&self) -> Result<(), Busy> {
        if let Some((text, window)) = &self.window {
            use chrono::Timelike;
            let now = chrono::Local::now();
            if !in_window(*window, now.hour() * 60 + now.minute()) {
                return Err(Busy::OutsideWindow(text.clone()));
            }
        }
        let Some(url) = &self.activity_url else {
            return Ok(());
        };
        let mut response = match self.agent.get(url).call() {
            Ok(r) => r,
            // Nothing listens: the daemon is not running, so nothing is received or inferred.
            Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Ok(())
            }
            Err(e) => return Err(Busy::Unknown(e.to_string())),
        };
        if response.status() != 200 {
            return Err(Busy::Unknown(format!("HTTP status {}", response.status())));
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(4096)
            .read_to_string()
            .map_err(|e| Busy::Unknown(e.to_string()))?;
        let activity: Activity =
            serde_json::from_str(&text).map_err(|e| Busy::Unknown(e.to_string()))?;
        if activity.is_idle() {
            Ok(())
        } else {
            Err(Busy::Working(activity))
        }
    }

    /// Wait until [`Schedule::check`] passes, calling `waiting` with the reason each time it
    /// changes; `stop` ends the wait early (`false`).
    pub fn wait(&self, waiting: &mut dyn FnMut(&Busy), stop: &dyn Fn() -> bool) -> bool {
        let mut last: Option<Busy> = None;
        loop {
            match self.check() {
                Ok(()) => return true,
                Err(busy) => {
                    if last.as_ref() != Some(&busy) {
                        waiting(&busy);
                        last = Some(busy);
                    }
                }
            }
            if stop() {
                return false;
            }
            std::thread::sleep(POLL);
        }
    }
}
