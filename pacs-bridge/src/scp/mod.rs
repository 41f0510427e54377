//! The DICOM Upper Layer SCP (PS3.8): a listener that bounds concurrent associations, and one
//! thread per association running [`association::serve`].
//!
//! Shutdown: [`ShutdownHandle::trigger`] stops the accept loop; associations in progress get
//! `shutdown_grace` to end on their own (the peer releases), then their sockets are closed. An
//! instance whose Success was not sent is not acknowledged, so the sender retries it.

mod association;
mod reject;

pub use reject::RejectReason;

use crate::metrics::Metrics;
use crate::store::Spool;
use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

/// A calling AE we accept, optionally only from given addresses.
#[derive(Debug, Clone)]
pub struct Peer {
    pub ae_title: String,
    /// When set, the caller's address must be one of these.
    pub addresses: Option<Vec<IpAddr>>,
}

/// Everything the SCP needs to know; the appliance builds it from its TOML configuration.
#[derive(Debug, Clone)]
pub struct ScpConfig {
    pub ae_title: String,
    pub bind: SocketAddr,
    pub max_associations: usize,
    /// Largest P-DATA-TF PDU we receive (sent as Maximum Length in A-ASSOCIATE-AC).
    pub max_pdu_length: u32,
    pub peers: Vec<Peer>,
    /// How long a new connection may take to send its A-ASSOCIATE-RQ (the ARTIM timer).
    pub association_request_timeout: Duration,
    /// How long an association may stay silent (or a PDU take to arrive) before we abort it.
    pub idle_timeout: Duration,
    /// Largest dataset we accept in one C-STORE (also bounds an inflated deflate dataset).
    pub max_instance_bytes: usize,
    /// Refuse associations and instances while the spool's file system has less free space.
    pub min_free_bytes: u64,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Error)]
pub enum ScpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Stops a running [`Server`] from another thread (a signal handler, a test).
#[derive(Clone)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
    wake: SocketAddr,
}

impl ShutdownHandle {
    pub fn trigger(&self) {
        if !self.flag.swap(true, Ordering::SeqCst) {
            // Wake the blocking accept with a connection of our own.
            let _ = TcpStream::connect_timeout(&self.wake, Duration::from_secs(1));
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

pub(crate) struct Shared {
    pub config: ScpConfig,
    pub spool: Arc<Spool>,
    pub metrics: Arc<Metrics>,
}

pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: ShutdownHandle,
}

/// Streams of associations in progress, so that shutdown can close those that outlive the grace.
type OpenStreams = Arc<Mutex<HashMap<u64, TcpStream>>>;

/// Connections that are being refused for the association limit, handled off the accept thread;
/// beyond this many, extra connections are closed without a PDU.
const MAX_REFUSING: usize = 16;

impl Server {
    pub fn bind(
        config: ScpConfig,
        spool: Arc<Spool>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ScpError> {
        let listener = TcpListener::bind(config.bind).map_err(|source| ScpError::Bind {
            addr: config.bind,
            source,
        })?;
        let local = listener.local_addr().map_err(|source| ScpError::Bind {
            addr: config.bind,
            source,
        })?;
        let wake_ip = match local.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => IpAddr::from([127, 0, 0, 1]),
            ip if ip.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                config,
                spool,
                metrics,
            }),
            shutdown: ShutdownHandle {
                flag: Arc::new(AtomicBool::new(false)),
                wake: SocketAddr::new(wake_ip, local.port()),
            },
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Accept associations until shutdown is triggered, then drain them.
    pub fn run(self) {
        let active = Arc::new(AtomicUsize::new(0));
        let refusing = Arc::new(AtomicUsize::new(0));
        let open: OpenStreams = Arc::new(Mutex::new(HashMap::new()));
        let next_id = AtomicU64::new(0);
        tracing::info!(
            addr = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            ae_title = %self.shared.config.ae_title,
            "DICOM SCP listening"
        );
        for conn in self.listener.incoming() {
            if self.shutdown.is_triggered() {
                break;
            }
            let stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let peer = match stream.peer_addr() {
                Ok(p) => p,
                Err(_) => continue,
            };
            let _ = stream.set_nodelay(true);
            if active.load(Ordering::SeqCst) >= self.shared.config.max_associations {
                self.refuse_over_limit(stream, peer, &refusing);
                continue;
            }
            active.fetch_add(1, Ordering::SeqCst);
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            if let (Ok(mut map), Ok(clone)) = (open.lock(), stream.try_clone()) {
                map.insert(id, clone);
            }
            let shared = self.shared.clone();
            let active_c = active.clone();
            let open_c = open.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("assoc-{id}"))
                .spawn(move || {
                    association::serve(stream, peer, &shared);
                    if let Ok(mut map) = open_c.lock() {
                        map.remove(&id);
                    }
                    active_c.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start an association thread");
                active.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.drain(&active, &open);
    }

    fn refuse_over_limit(&self, stream: TcpStream, peer: SocketAddr, refusing: &Arc<AtomicUsize>) {
        self.shared
            .metrics
            .reject(RejectReason::AssociationLimit.label());
        if refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSING {
            refusing.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(%peer, "association limit reached; connection closed");
            return;
        }
        let shared = self.shared.clone();
        let refusing = refusing.clone();
        let spawned = std::thread::Builder::new()
            .name("assoc-refuse".into())
            .spawn(move || {
                association::refuse_busy(stream, peer, &shared);
                refusing.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            tracing::error!(%peer, "could not start a thread to refuse an association");
        }
    }

    fn drain(&self, active: &AtomicUsize, open: &OpenStreams) {
        let deadline = Instant::now() + self.shared.config.shutdown_grace;
        let in_flight = active.load(Ordering::SeqCst);
        if in_flight > 0 {
            tracing::info!(
                in_flight,
                "shutting down: waiting for associations in progress"
            );
        }
        while active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(map) = open.lock() {
            for stream in map.values() {
                tracing::warn!("closing an association that outlived the shutdown grace");
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        while active.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::info!("DICOM SCP stopped");
    }
}
