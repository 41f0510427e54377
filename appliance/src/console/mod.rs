//! The web console: a small HTTPS site the daemon serves for the site's staff, with local
//! accounts, server-rendered pages and no JavaScript.
//!
//! # Layout
//! - [`users`]: the accounts file `<data_dir>/console/users.toml` (Argon2id PHC strings, roles
//!   `viewer` and `admin`) and [`users::set_password`], which the CLI exposes.
//! - [`sessions`]: sessions (random tokens in a `Secure; HttpOnly; SameSite=Strict` cookie,
//!   a CSRF token each, idle and absolute expiry) and the throttle on failed logins.
//! - [`server`]: HTTP/1.1 over TLS (rustls, `ring`), bounded requests, a fixed worker pool,
//!   a panic boundary around every handler.
//! - [`pages`]: routing, authentication, CSRF and role checks, and each page.
//! - [`views`]: what the pages show, read from `results.sqlite` (a `query_only` connection),
//!   the spool index (read-only), the model registry and the readiness the daemon keeps.
//! - [`images`]: a result's SEG drawn over its source slices, rendered here as PNG.
//!
//! # Rules
//! - HTTPS only, with the certificate and key `[console]` names; plain HTTP only when the
//!   console is bound to a loopback address and `insecure_loopback_http = true` (refused at
//!   load otherwise).
//! - Every page but the login form needs a session; every change is a POST carrying the
//!   session's CSRF token (and, when the browser sends one, an `Origin` of this server);
//!   admin actions answer 403 to a viewer.
//! - No patient name, patient ID or UID on any page: studies are named by `log_tag` of their
//!   UID, results by job id. With `show_identifiers = true` an admin (only) also sees the
//!   study and series UIDs and the patient ID.
//! - Nothing a request sends can take a thread down: unknown ids and bad query strings are
//!   404 and 400 pages, and a panic in a handler is a 500 page and a log line.

pub mod images;
pub mod pages;
pub mod server;
pub mod sessions;
pub mod users;
pub mod views;

use crate::config::Config;
use crate::readiness::Readiness;
use crate::supervisor::Supervisor;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `[console]`: the web console.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Address the console listens on.
    #[serde(default = "default_bind")]
    pub bind: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// The appliance's certificate chain (PEM, end entity first) and its private key.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Serve plain HTTP, allowed only when `bind` is a loopback address (tests, or a reverse
    /// proxy on this machine that terminates TLS).
    #[serde(default)]
    pub insecure_loopback_http: bool,
    /// A session ends after this many seconds without a request...
    #[serde(default = "default_idle")]
    pub session_idle_seconds: u64,
    /// ...and this many hours after its login, however busy.
    #[serde(default = "default_max_hours")]
    pub session_max_hours: u64,
    /// Failed logins of one user name before further attempts are refused for
    /// `lockout_seconds` (from one client address: four times as many).
    #[serde(default = "default_max_failed")]
    pub max_failed_logins: u32,
    #[serde(default = "default_lockout")]
    pub lockout_seconds: u64,
    /// Show study and series UIDs and the patient ID to admins.
    #[serde(default)]
    pub show_identifiers: bool,
    /// Requests served at once.
    #[serde(default = "default_workers")]
    pub workers: usize,
}

fn default_bind() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    8443
}
fn default_idle() -> u64 {
    1800
}
fn default_max_hours() -> u64 {
    12
}
fn default_max_failed() -> u32 {
    5
}
fn default_lockout() -> u64 {
    900
}
fn default_workers() -> usize {
    4
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: false,
            bind: default_bind(),
            port: default_port(),
            cert_file: None,
            key_file: None,
            insecure_loopback_http: false,
            session_idle_seconds: default_idle(),
            session_max_hours: default_max_hours(),
            max_failed_logins: default_max_failed(),
            lockout_seconds: default_lockout(),
            show_identifiers: false,
            workers: default_workers(),
        }
    }
}

impl ConsoleConfig {
    /// Resolve relative certificate and key paths against `base` (the configuration's folder).
    pub fn resolve(&mut self, base: &Path) {
        for path in [&mut self.cert_file, &mut self.key_file]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    fn bind_ip(&self) -> Option<IpAddr> {
        self.bind.parse().ok()
    }

    /// Every problem, by key (`console.port`); `config` is the whole configuration, for the
    /// ports the console must not share.
    pub fn problems(&self, config: &Config) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut problem =
            |key: &str, message: String| out.push((format!("console.{key}"), message));
        let ip = self.bind_ip();
        if ip.is_none() {
            problem("bind", format!("{:?} is not an IP address", self.bind));
        }
        if self.port == 0 {
            problem("port", "must be between 1 and 65535".into());
        }
        if self.enabled {
            let same_address = |other: &str| other == self.bind;
            if self.port == config.dicom.port && same_address(&config.dicom.bind) {
                problem("port", "must differ from dicom.port".into());
            }
            if let Some(t) = &config.dicom.tls {
                if self.port == t.port && same_address(&config.dicom.bind) {
                    problem("port", "must differ from dicom.tls.port".into());
                }
            }
            if config.http.enabled
                && self.port == config.http.port
                && same_address(&config.http.bind)
            {
                problem("port", "must differ from http.port".into());
            }
        }
        let loopback = ip.is_some_and(|ip| ip.is_loopback());
        if self.insecure_loopback_http && !loopback {
            problem(
                "insecure_loopback_http",
                format!(
                    "allowed only on a loopback bind, not {}: the console would send passwords \
                     and session cookies in clear",
                    self.bind
                ),
            );
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                if self.enabled {
                    if let Err(e) = pacs_bridge::tls::load_certificates(cert) {
                        problem("cert_file", e.to_string());
                    } else if let Err(e) = pacs_bridge::tls::load_private_key(key) {
                        problem("key_file", e.to_string());
                    } else if let Err(e) = pacs_bridge::tls::server_config(cert, key, None) {
                        problem("key_file", e.to_string());
                    }
                }
            }
            (Some(_), None) => problem("key_file", "needed with cert_file".into()),
            (None, Some(_)) => problem("cert_file", "needed with key_file".into()),
            (None, None) => {
                if self.enabled && !(self.insecure_loopback_http && loopback) {
                    problem(
                        "cert_file",
                        "needed: the console serves HTTPS only (plain HTTP only on a loopback \
                         bind with insecure_loopback_http = true)"
                            .into(),
                    );
                }
            }
        }
        if !(5..=86_400).contains(&self.session_idle_seconds) {
            problem("session_idle_seconds", "must be between 5 and 86400".into());
        }
        if !(1..=24 * 7).contains(&self.session_max_hours) {
            problem("session_max_hours", "must be between 1 and 168".into());
        }
        if !(1..=1000).contains(&self.max_failed_logins) {
            problem("max_failed_logins", "must be between 1 and 1000".into());
        }
        if !(1..=86_400).contains(&self.lockout_seconds) {
            problem("lockout_seconds", "must be between 1 and 86400".into());
        }
        if !(1..=64).contains(&self.workers) {
            problem("workers", "must be between 1 and 64".into());
        }
        out
    }
}

/// The running console.
pub struct Console {
    server: server::Running,
}

impl Console {
    /// Start the console `config.console` describes (which must be enabled), under
    /// `supervisor`.
    pub fn start(
        config: &Config,
        readiness: Arc<Readiness>,
        supervisor: &Supervisor,
    ) -> anyhow::Result<Console> {
        let c = config
            .console
            .clone()
            .filter(|c| c.enabled)
            .ok_or_else(|| anyhow::anyhow!("[console] is not enabled"))?;
        let ip = c
            .bind_ip()
            .ok_or_else(|| anyhow::anyhow!("console.bind {:?} is not an IP address", c.bind))?;
        let tls = match (&c.cert_file, &c.key_file) {
            (Some(cert), Some(key)) => Some(pacs_bridge::tls::server_config(cert, key, None)?),
            _ if c.insecure_loopback_http && ip.is_loopback() => {
                tracing::warn!(bind = %ip, "console on plain HTTP (insecure_loopback_http): loopback only");
                None
            }
            _ => anyhow::bail!(
                "the console serves HTTPS only: set console.cert_file and console.key_file"
            ),
        };
        let https = tls.is_some();
        let state = Arc::new(pages::State::new(config.clone(), c.clone(), readiness)?);
        let handler: server::Handler = Arc::new(move |request| pages::handle(&state, request));
        let server = server::start(
            SocketAddr::new(ip, c.port),
            tls,
            c.workers,
            handler,
            supervisor,
        )?;
        tracing::info!(addr = %server.local_addr, https, "web console listening");
        match users::list(&config.data_dir) {
            Ok(accounts) if accounts.is_empty() => tracing::warn!(
                "the console has no accounts yet: add one with `appliance console set-user NAME --role admin` (password on standard input)"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "the console's accounts cannot be read; nobody can log in")
            }
        }
        Ok(Console { server })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr
    }

    /// Stop accepting and wait for the requests in progress.
    pub fn stop(self, supervisor: &Supervisor) {
        self.server.stop(supervisor);
    }
}
