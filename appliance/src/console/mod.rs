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
use std::net::SocketAddr;
use std::sync::Arc;

pub use crate::config::ConsoleConfig;

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
