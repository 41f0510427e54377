//! The DICOM Upper Layer SCP (PS3.8): listeners (plain TCP, and TLS when configured: PS3.15
//! annex B, see [`crate::tls`]) that share one bound on concurrent associations, and one
//! thread per association running [`association::serve`].
//!
//! Two pools of connections: a connection from the address of a configured peer (one with
//! `host`) takes one of `max_associations` slots at once; any other connection first takes one
//! of `max_unauthenticated` slots and moves to the main pool only once access control admitted
//! it. Unknown addresses (a scanner probing, a stray script) can then fill only their own small
//! pool, never lock the configured PACS out. Every connection has `association_request_timeout`
//! in all (TLS handshake included) to send its A-ASSOCIATE-RQ, and every DIMSE message
//! `message_timeout` from its first PDU to its last: deadlines for the whole exchange, not per
//! read, so trickling a byte at a time holds nothing longer. The datasets in flight share one
//! memory budget ([`budget`]).
//!
//! Shutdown: [`ShutdownHandle::trigger`] stops the accept loop; associations in progress get
//! `shutdown_grace` to end on their own (the peer releases), then their sockets are closed. An
//! instance whose Success was not sent is not acknowledged, so the sender retries it.

mod association;
pub mod budget;
mod reject;

pub use reject::{Answer, RejectReason};

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
    /// When set, the caller must come over TLS with a verified client certificate naming this
    /// identity (subject CN or SAN DNS name).
    pub tls_identity: Option<String>,
}

/// The TLS listener (PS3.15 annex B).
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub bind: SocketAddr,
    pub config: Arc<rustls::ServerConfig>,
}

/// Everything the SCP needs to know; the appliance builds it from its TOML configuration.
#[derive(Debug, Clone)]
pub struct ScpConfig {
    pub ae_title: String,
    /// The plain TCP listener; `None` when DICOM is served over TLS only.
    pub bind: Option<SocketAddr>,
    pub tls: Option<TlsListener>,
    pub max_associations: usize,
    /// Largest P-DATA-TF PDU we receive (sent as Maximum Length in A-ASSOCIATE-AC).
    pub max_pdu_length: u32,
    pub peers: Vec<Peer>,
    /// How long a new connection may take to send its A-ASSOCIATE-RQ (the ARTIM timer).
    pub association_request_timeout: Duration,
    /// How long an association may stay silent between messages before we abort it.
    pub idle_timeout: Duration,
    /// How long one DIMSE message (command and dataset) may take from its first PDU to its
    /// last.
    pub message_timeout: Duration,
    /// Connections from addresses no peer is bound to, not yet admitted, at most.
    pub max_unauthenticated: usize,
    /// Bytes of datasets being received, across associations, at most.
    pub max_inflight_bytes: usize,
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
    #[error("no listener configured: neither a plain bind address nor TLS")]
    NoListener,
}

/// Stops a running [`Server`] from another thread (a signal handler, a test).
#[derive(Clone)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
    /// One address per listener.
    wake: Vec<SocketAddr>,
}

impl ShutdownHandle {
    pub fn trigger(&self) {
        if !self.flag.swap(true, Ordering::SeqCst) {
            // Wake each blocking accept with a connection of our own.
            for addr in &self.wake {
                let _ = TcpStream::connect_timeout(addr, Duration::from_secs(1));
            }
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
    pub budget: Arc<budget::MemoryBudget>,
    pub observer: std::sync::OnceLock<Observer>,
}

/// What became of one association, for an audit trail.
#[derive(Debug, Clone)]
pub struct AssociationReport {
    pub peer: SocketAddr,
    pub calling_ae: String,
    pub called_ae: String,
    pub tls: bool,
    pub outcome: AssociationOutcome,
}

#[derive(Debug, Clone)]
pub enum AssociationOutcome {
    /// Refused with an A-ASSOCIATE-RJ.
    Refused(RejectReason),
    /// Accepted, then ended: how (`released`, `aborted by peer`, ...), the instances stored,
    /// and the instances refused.
    Ended {
        end: String,
        stored: u64,
        refused: u64,
    },
}

/// Told of every association the SCP refused or served, once it is over; called on the
/// association's thread, so it must be quick.
pub type Observer = Arc<dyn Fn(&AssociationReport) + Send + Sync>;

pub struct Server {
    listeners: Vec<Listener>,
    shared: Arc<Shared>,
    shutdown: ShutdownHandle,
}

/// One listening socket; with `tls`, every connection starts with a TLS handshake.
struct Listener {
    socket: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// Streams of associations in progress, so that shutdown can close those that outlive the grace.
type OpenStreams = Arc<Mutex<HashMap<u64, TcpStream>>>;

/// Connections that are being refused for the association limit, handled off the accept thread;
/// beyond this many, extra connections are closed without a PDU.
const MAX_REFUSING: usize = 16;

/// What the accept loops of all listeners share.
pub(crate) struct Slots {
    /// Connections in the main pool: from a configured peer's address, or admitted.
    active: AtomicUsize,
    /// Connections from other addresses not yet admitted.
    unauthenticated: AtomicUsize,
    refusing: Arc<AtomicUsize>,
    open: OpenStreams,
    next_id: AtomicU64,
}

/// Which pool a connection counts against; gives its slot back when dropped.
pub(crate) struct Admission {
    slots: Arc<Slots>,
    max_associations: usize,
    pending: AtomicBool,
}

impl Admission {
    /// Access control admitted the association: an unauthenticated connection moves into the
    /// main pool, `false` when that pool is full (the caller refuses, transiently).
    pub(crate) fn admitted(&self) -> bool {
        if !self.pending.load(Ordering::SeqCst) {
            return true;
        }
        let taken = self
            .slots
            .active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_associations).then_some(n + 1)
            })
            .is_ok();
        if taken {
            self.slots.unauthenticated.fetch_sub(1, Ordering::SeqCst);
            self.pending.store(false, Ordering::SeqCst);
        }
        taken
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.pending.load(Ordering::SeqCst) {
            self.slots.unauthenticated.fetch_sub(1, Ordering::SeqCst);
        } else {
            self.slots.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Server {
    pub fn bind(
        config: ScpConfig,
        spool: Arc<Spool>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ScpError> {
        let mut listeners = Vec::new();
        let mut wake = Vec::new();
        let plain = config.bind.map(|addr| (addr, None));
        let tls = config
            .tls
            .as_ref()
            .map(|t| (t.bind, Some(t.config.clone())));
        for (addr, tls) in plain.into_iter().chain(tls) {
            let bind_error = |source| ScpError::Bind { addr, source };
            let socket = TcpListener::bind(addr).map_err(bind_error)?;
            let local = socket.local_addr().map_err(bind_error)?;
            let wake_ip = match local.ip() {
                ip if ip.is_unspecified() && ip.is_ipv4() => IpAddr::from([127, 0, 0, 1]),
                ip if ip.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            wake.push(SocketAddr::new(wake_ip, local.port()));
            listeners.push(Listener { socket, tls });
        }
        if listeners.is_empty() {
            return Err(ScpError::NoListener);
        }
        metrics
            .inflight_budget_bytes
            .set(i64::try_from(config.max_inflight_bytes).unwrap_or(i64::MAX));
        Ok(Server {
            listeners,
            shared: Arc::new(Shared {
                budget: budget::MemoryBudget::new(
                    config.max_inflight_bytes,
                    metrics.inflight_dataset_bytes.clone(),
                ),
                config,
                spool,
                metrics,
                observer: std::sync::OnceLock::new(),
            }),
            shutdown: ShutdownHandle {
                flag: Arc::new(AtomicBool::new(false)),
                wake,
            },
        })
    }

    /// The address of the first listener (the plain one when there is one).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners[0].socket.local_addr()
    }

    /// The address of the TLS listener, when there is one.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.tls.is_some())
            .and_then(|l| l.socket.local_addr().ok())
    }

    /// Tell `observer` of every association from now on (set once; later calls are ignored).
    pub fn observe(&self, observer: Observer) {
        let _ = self.shared.observer.set(observer);
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Accept associations on every listener until shutdown is triggered, then drain them.
    pub fn run(self) {
        let slots = Slots {
            active: AtomicUsize::new(0),
            unauthenticated: AtomicUsize::new(0),
            refusing: Arc::new(AtomicUsize::new(0)),
            open: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
        };
        let slots = Arc::new(slots);
        std::thread::scope(|scope| {
            for listener in &self.listeners {
                let slots = slots.clone();
                let server = &self;
                let spawned = std::thread::Builder::new()
                    .name("scp-accept".into())
                    .spawn_scoped(scope, move || server.accept_loop(listener, &slots));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "could not start an accept thread");
                    self.shutdown.trigger();
                }
            }
        });
        self.drain(&slots);
    }

    fn accept_loop(&self, listener: &Listener, slots: &Arc<Slots>) {
        tracing::info!(
            addr = %listener.socket.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            ae_title = %self.shared.config.ae_title,
            tls = listener.tls.is_some(),
            "DICOM SCP listening"
        );
        for conn in listener.socket.incoming() {
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
            let tls = listener.tls.clone();
            let Some(admission) = self.admit(peer.ip(), slots) else {
                if self.is_known_address(peer.ip()) {
                    self.refuse_over_limit(stream, peer, tls, &slots.refusing);
                } else {
                    self.shared
                        .metrics
                        .reject(RejectReason::UnauthenticatedLimit.label());
                    tracing::warn!(
                        %peer,
                        max_unauthenticated = self.shared.config.max_unauthenticated,
                        "connection closed: too many connections from addresses of no configured peer"
                    );
                }
                continue;
            };
            let id = slots.next_id.fetch_add(1, Ordering::Relaxed);
            if let (Ok(mut map), Ok(clone)) = (slots.open.lock(), stream.try_clone()) {
                map.insert(id, clone);
            }
            let shared = self.shared.clone();
            let slots_c = slots.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("assoc-{id}"))
                .spawn(move || {
                    association::serve(stream, peer, tls.as_ref(), &shared, &admission);
                    if let Ok(mut map) = slots_c.open.lock() {
                        map.remove(&id);
                    }
                    drop(admission);
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start an association thread");
            }
        }
    }

    /// Whether `ip` is the address of a configured peer bound to a host.
    fn is_known_address(&self, ip: IpAddr) -> bool {
        let ip = association::canonical(ip);
        self.shared
            .config
            .peers
            .iter()
            .any(|p| p.addresses.as_ref().is_some_and(|a| a.contains(&ip)))
    }

    /// A slot in the pool of `ip`'s kind, or `None` when that pool is full.
    fn admit(&self, ip: IpAddr, slots: &Arc<Slots>) -> Option<Admission> {
        let config = &self.shared.config;
        let (counter, limit, pending) = if self.is_known_address(ip) {
            (&slots.active, config.max_associations, false)
        } else {
            (&slots.unauthenticated, config.max_unauthenticated, true)
        };
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(Admission {
            slots: slots.clone(),
            max_associations: config.max_associations,
            pending: AtomicBool::new(pending),
        })
    }

    fn refuse_over_limit(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        refusing: &Arc<AtomicUsize>,
    ) {
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
                association::refuse_busy(stream, peer, tls.as_ref(), &shared);
                refusing.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            tracing::error!(%peer, "could not start a thread to refuse an association");
        }
    }

    fn drain(&self, slots: &Slots) {
        let in_flight =
            || slots.active.load(Ordering::SeqCst) + slots.unauthenticated.load(Ordering::SeqCst);
        let deadline = Instant::now() + self.shared.config.shutdown_grace;
        if in_flight() > 0 {
            tracing::info!(
                in_flight = in_flight(),
                "shutting down: waiting for associations in progress"
            );
        }
        while in_flight() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(map) = slots.open.lock() {
            for stream in map.values() {
                tracing::warn!("closing an association that outlived the shutdown grace");
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        while in_flight() > 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::info!("DICOM SCP stopped");
    }
}
