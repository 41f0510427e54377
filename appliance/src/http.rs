//! The operations endpoint: liveness, readiness (with the reason when not ready), Prometheus
//! metrics and the activity the updater waits on, on a loopback port by default.

use crate::metrics::{Exposition, CONTENT_TYPE};
use crate::readiness::Readiness;
use crate::supervisor::{Supervised, Supervisor};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub struct HttpEndpoint {
    server: Arc<tiny_http::Server>,
    thread: Supervised,
}

/// Something that tells whether free disk is above the floor: `Err(reason)` when not.
pub type DiskCheck = Box<dyn Fn() -> Result<(), String> + Send>;

/// What `GET /activity` answers, and what reads it.
pub use crate::activity::ActivityProbe;

impl HttpEndpoint {
    pub fn start(
        addr: SocketAddr,
        metrics: Exposition,
        readiness: Arc<Readiness>,
        disk: DiskCheck,
        activity: ActivityProbe,
        supervisor: &Supervisor,
    ) -> anyhow::Result<Self> {
        let server = Arc::new(
            tiny_http::Server::http(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {addr}: {e}"))?,
        );
        let worker = server.clone();
        let thread = supervisor.spawn("http", move |_stop| {
            serve(&worker, &metrics, &readiness, &disk, &activity);
            Ok(())
        })?;
        tracing::info!(%addr, "health and metrics endpoint listening");
        Ok(Self { server, thread })
    }

    /// Stop answering: the blocked `recv` returns once the server is unblocked.
    pub fn stop(self, supervisor: &Supervisor) {
        self.server.unblock();
        supervisor.stop(self.thread);
    }
}

/// Answer requests until [`HttpEndpoint::stop`] unblocks the server.
fn serve(
    server: &tiny_http::Server,
    metrics: &Exposition,
    readiness: &Readiness,
    disk: &DiskCheck,
    activity: &ActivityProbe,
) {
    while let Ok(request) = server.recv() {
        let (code, body, content_type) = match (request.method(), request.url()) {
            (tiny_http::Method::Get, "/health/live") => (200, "live\n".to_string(), "text/plain"),
            (tiny_http::Method::Get, "/health/ready") => match ready(readiness, disk) {
                Ok(()) => (200, "ready\n".to_string(), "text/plain"),
                Err(reason) => (503, format!("not ready: {reason}\n"), "text/plain"),
            },
            (tiny_http::Method::Get, "/metrics") => (200, metrics.render(), CONTENT_TYPE),
            (tiny_http::Method::Get, "/activity") => match activity.read() {
                Ok(a) => (
                    200,
                    serde_json::to_string(&a).unwrap_or_default(),
                    "application/json",
                ),
                Err(reason) => (503, format!("activity unknown: {reason}\n"), "text/plain"),
            },
            _ => (404, "not found\n".to_string(), "text/plain"),
        };
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes());
        let mut response = tiny_http::Response::from_string(body).with_status_code(code);
        if let Ok(h) = header {
            response = response.with_header(h);
        }
        let _ = request.respond(response);
    }
}

fn ready(readiness: &Readiness, disk: &DiskCheck) -> Result<(), String> {
    if let Some(reason) = readiness.failure() {
        return Err(reason);
    }
    if readiness.shutting_down.load(Ordering::SeqCst) {
        return Err("shutting down".into());
    }
    if !readiness.scp_listening.load(Ordering::SeqCst) {
        return Err("DICOM SCP not listening".into());
    }
    disk()
}
