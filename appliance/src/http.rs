//! The operations endpoint: liveness, readiness (with the reason when not ready) and Prometheus
//! metrics, on a loopback port by default.

use pacs_bridge::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What readiness depends on; set by the daemon as parts come up and go down.
#[derive(Default)]
pub struct Readiness {
    pub scp_listening: AtomicBool,
    pub shutting_down: AtomicBool,
}

pub struct HttpEndpoint {
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Something that tells whether free disk is above the floor: `Err(reason)` when not.
pub type DiskCheck = Box<dyn Fn() -> Result<(), String> + Send>;

impl HttpEndpoint {
    pub fn start(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
        disk: DiskCheck,
    ) -> anyhow::Result<Self> {
        let server = Arc::new(
            tiny_http::Server::http(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {addr}: {e}"))?,
        );
        let worker = server.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let worker_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || serve(&worker, &worker_stop, &metrics, &readiness, &disk))?;
        tracing::info!(%addr, "health and metrics endpoint listening");
        Ok(Self {
            server,
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    server: &tiny_http::Server,
    stop: &AtomicBool,
    metrics: &Metrics,
    readiness: &Readiness,
    disk: &DiskCheck,
) {
    while !stop.load(Ordering::SeqCst) {
        let request = match server.recv_timeout(Duration::from_millis(250)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(_) => return,
        };
        let (code, body, content_type) = match (request.method(), request.url()) {
            (tiny_http::Method::Get, "/health/live") => (200, "live\n".to_string(), "text/plain"),
            (tiny_http::Method::Get, "/health/ready") => match ready(readiness, disk) {
                Ok(()) => (200, "ready\n".to_string(), "text/plain"),
                Err(reason) => (503, format!("not ready: {reason}\n"), "text/plain"),
            },
            (tiny_http::Method::Get, "/metrics") => (
                200,
                metrics.render(),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
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
    if readiness.shutting_down.load(Ordering::SeqCst) {
        return Err("shutting down".into());
    }
    if !readiness.scp_listening.load(Ordering::SeqCst) {
        return Err("DICOM SCP not listening".into());
    }
    disk()
}
