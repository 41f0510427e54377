//! A DICOM C-STORE SCU (PS3.4 annex B, PS3.7 section 9.1.1, PS3.8): sends Part 10 files to a
//! peer over one association, with std TCP and no async runtime.
//!
//! [`send`] reads every file's meta group and walks its dataset first; files that do not parse
//! fail on their own (permanently) and are never sent. It proposes one presentation context per
//! SOP class and *kind* of transfer syntax: files in a native (uncompressed) syntax share a
//! context proposing their own syntax plus Explicit and Implicit VR Little Endian, and are
//! re-encoded when the peer picks another native syntax; files in an encapsulated or deflated
//! syntax get a context proposing only that syntax, because we cannot produce any other (a
//! peer offered an alternative it prefers would otherwise pick one we cannot send).
//!
//! Errors come at two levels. [`ScuError`]: no association (cannot connect, rejected, aborted
//! or timed out before A-ASSOCIATE-AC), nothing was sent. [`StoreFailure`]: one file, inside an
//! [`StoreOutcome`]; once the association is up, every file gets an outcome, in input order,
//! including the files left unsent when the association is lost mid-way. Both say whether a
//! retry may succeed (`is_transient`).
//!
//! With [`Destination::tls`] the association runs over TLS (PS3.15 annex B, [`crate::tls`]):
//! the handshake, with the server's certificate checked against the configured CA and name,
//! must finish within `connect_timeout`; a certificate that does not verify is a permanent
//! error, a handshake that times out a transient one.
//!
//! Logs name the peer and a file's position in the batch, and tag instances with
//! [`radiant_core::log_tag`]; they never carry UIDs of instances, file paths or patient data.

mod part10;
mod status;

pub use part10::FileError;
pub use status::{classify, meaning, StatusClass};

use crate::dimse::{self, ResponseFields, StoreRequest};
use crate::tls::{self, ClientTls, TlsError};
use crate::uids;
use crate::ul::{self, PduError, PduStream};
use dicom_ul::pdu::{
    AbortRQSource, AssociationAC, AssociationRJResult, AssociationRJSource, AssociationRQ, Pdu,
    PresentationContextProposed, PresentationContextResultReason, UserVariableItem,
};
use radiant_core::log_tag;
use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The peer to send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Called AE title (1 to 16 characters, PS3.5 table 6.2-1).
    pub ae_title: String,
    pub host: String,
    pub port: u16,
    /// Connect over TLS with these settings; plain TCP when `None`.
    pub tls: Option<ClientTls>,
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.ae_title, self.host, self.port)?;
        if self.tls.is_some() {
            f.write_str(" (TLS)")?;
        }
        Ok(())
    }
}

/// How we associate.
#[derive(Debug, Clone)]
pub struct ScuConfig {
    /// Calling AE title (1 to 16 characters, PS3.5 table 6.2-1).
    pub calling_ae: String,
    /// Longest wait for the TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for any one reply (A-ASSOCIATE-AC, each C-STORE-RSP, A-RELEASE-RP), and
    /// the longest any one write may block.
    pub io_timeout: Duration,
    /// Largest PDU we receive (sent as Maximum Length, PS3.8 D.1) and largest we send.
    pub max_pdu_length: u32,
    /// Largest file we read and send.
    pub max_file_bytes: u64,
}

impl ScuConfig {
    /// Defaults: 10 s to connect, 60 s per reply, 256 KiB PDUs, files up to 1 GiB.
    pub fn new(calling_ae: impl Into<String>) -> Self {
        ScuConfig {
            calling_ae: calling_ae.into(),
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(60),
            max_pdu_length: 256 * 1024,
            max_file_bytes: 1 << 30,
        }
    }
}

/// Smallest and largest `max_pdu_length` we allow. PS3.8 D.1 allows any size (0 meaning
/// unlimited); we keep every read bounded and every fragment a sensible size.
const MIN_PDU_LENGTH: u32 = dicom_ul::pdu::MINIMUM_PDU_SIZE;
const MAX_PDU_LENGTH: u32 = 64 * 1024 * 1024;

/// Largest A-ASSOCIATE-AC we read (one result per proposed context plus user items: a few KiB).
const MAX_ASSOCIATE_AC: u32 = ul::MAX_ASSOCIATE_RQ;

/// PS3.8 section 9.3.2.2: presentation context IDs are odd numbers 1 to 255.
pub const MAX_CONTEXTS: usize = 128;

/// Proposed after a file's own transfer syntax when that one is native: the peer may take any,
/// and we re-encode between native syntaxes.
pub const FALLBACK_SYNTAXES: [&str; 2] = [uids::EXPLICIT_VR_LE, uids::IMPLICIT_VR_LE];

/// The one transfer syntax a C-ECHO proposes: the default every DICOM peer accepts.
pub const ECHO_SYNTAX: &str = uids::IMPLICIT_VR_LE;

/// The association could not be used: nothing was sent (before A-ASSOCIATE-AC), or, inside a
/// [`StoreFailure::Association`], the association was lost while sending.
#[derive(Debug, Error)]
pub enum ScuError {
    #[error("invalid SCU configuration: {0}")]
    Config(String),
    #[error(
        "{count} SOP class and transfer syntax combinations need more than the {MAX_CONTEXTS} \
         presentation contexts of one association (PS3.8 9.3.2.2); send fewer files at once"
    )]
    TooManyContexts { count: usize },
    #[error("cannot resolve {peer}: {source}")]
    Resolve {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {peer}: {source}")]
    Connect {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {peer} failed: {source}")]
    Tls {
        peer: String,
        #[source]
        source: TlsError,
    },
    #[error("{peer} rejected the association ({}): {reason} (PS3.8 9.3.4)", if *.permanent { "rejected-permanent" } else { "rejected-transient" })]
    Rejected {
        peer: String,
        permanent: bool,
        reason: AssociationRJSource,
    },
    #[error("{peer} aborted the association (source {abort_source:?}, PS3.8 9.3.8)")]
    Aborted {
        peer: String,
        abort_source: AbortRQSource,
    },
    #[error("no reply from {peer} within {} ms while waiting for {awaiting}", .after.as_millis())]
    Timeout {
        peer: String,
        awaiting: &'static str,
        after: Duration,
    },
    #[error("{peer} closed the connection while we waited for {awaiting}")]
    Closed {
        peer: String,
        awaiting: &'static str,
    },
    #[error("I/O error with {peer}: {source}")]
    Io {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{peer} broke the protocol: {detail}")]
    Protocol { peer: String, detail: String },
}

impl ScuError {
    /// Whether trying again later may succeed: network trouble, timeouts, aborts and
    /// rejected-transient may pass; a bad configuration, a rejected-permanent association
    /// (PS3.8 9.3.4: e.g. our calling AE title is not known there) and a peer that breaks the
    /// protocol will not pass without someone changing something.
    pub fn is_transient(&self) -> bool {
        match self {
            ScuError::Config(_) | ScuError::TooManyContexts { .. } | ScuError::Protocol { .. } => {
                false
            }
            ScuError::Rejected { permanent, .. } => !permanent,
            ScuError::Tls { source, .. } => source.is_transient(),
            ScuError::Resolve { .. }
            | ScuError::Connect { .. }
            | ScuError::Aborted { .. }
            | ScuError::Timeout { .. }
            | ScuError::Closed { .. }
            | ScuError::Io { .. } => true,
        }
    }
}

/// Why one file was not delivered.
#[derive(Debug, Error)]
pub enum StoreFailure {
    #[error("cannot send {}: {source}", .path.display())]
    File {
        path: PathBuf,
        #[source]
        source: FileError,
    },
    #[error(
        "{peer} accepted no presentation context for {} (SOP class {sop_class}, transfer \
         syntax {transfer_syntax}): {reason} (PS3.8 9.3.3.2)",
        .path.display()
    )]
    NotAccepted {
        peer: String,
        path: PathBuf,
        sop_class: String,
        transfer_syntax: String,
        reason: String,
    },
    #[error("cannot re-encode {} from {from} to {to}: {detail}", .path.display())]
    Reencode {
        path: PathBuf,
        from: String,
        to: String,
        detail: String,
    },
    #[error(
        "{peer} refused {} with status {status:#06x} ({}){}",
        .path.display(),
        status::meaning(*.status),
        .comment.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
    )]
    Refused {
        peer: String,
        path: PathBuf,
        status: u16,
        comment: Option<String>,
    },
    #[error("{} was not delivered: {source}", .path.display())]
    Association {
        path: PathBuf,
        #[source]
        source: Arc<ScuError>,
    },
}

impl StoreFailure {
    /// Whether sending the same file again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreFailure::File { .. }
            | StoreFailure::NotAccepted { .. }
            | StoreFailure::Reencode { .. } => false,
            StoreFailure::Refused { status, .. } => classify(*status) == StatusClass::Transient,
            StoreFailure::Association { source, .. } => source.is_transient(),
        }
    }
}

/// A delivered file: stored, or stored with a warning to report (PS3.4 B.2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    Success,
    Warning {
        status: u16,
        comment: Option<String>,
    },
}

/// What happened to one file.
#[derive(Debug)]
pub struct StoreOutcome {
    pub file: PathBuf,
    /// From the file meta group; `None` when the file could not be read.
    pub sop_instance_uid: Option<String>,
    /// The C-STORE-RSP status, when the peer answered.
    pub status: Option<u16>,
    /// The transfer syntax the dataset was sent in, when it was sent.
    pub transfer_syntax: Option<String>,
    pub result: Result<Delivered, StoreFailure>,
}

/// Send `files` (Part 10) to `dest` on one association, in order, and release it.
///
/// `Err` only when no association was established (nothing sent); otherwise one outcome per
/// file, in the order given. With no readable file, no connection is made.
pub fn send(
    dest: &Destination,
    config: &ScuConfig,
    files: &[PathBuf],
) -> Result<Vec<StoreOutcome>, ScuError> {
    check_config(dest, config)?;
    let peer = dest.to_string();
    let mut outcomes: Vec<StoreOutcome> = files
        .iter()
        .map(|path| StoreOutcome {
            file: path.clone(),
            sop_instance_uid: None,
            status: None,
            transfer_syntax: None,
            result: Err(StoreFailure::Association {
                path: path.clone(),
                source: Arc::new(ScuError::Closed {
                    peer: peer.clone(),
                    awaiting: "the association",
                }),
            }),
        })
        .collect();

    // Read every file first: the contexts to propose depend on them.
    let mut ready: Vec<(usize, part10::Meta)> = Vec::with_capacity(files.len());
    for (index, path) in files.iter().enumerate() {
        match part10::read(path, config.max_file_bytes) {
            Ok((meta, _)) => {
                outcomes[index].sop_instance_uid = Some(meta.sop_instance_uid.clone());
                ready.push((index, meta));
            }
            Err(e) => {
                tracing::warn!(%peer, file = index, error = %e, "file not sent");
                outcomes[index].result = Err(StoreFailure::File {
                    path: path.clone(),
                    source: e,
                });
            }
        }
    }
    if ready.is_empty() {
        return Ok(outcomes);
    }
    let proposals = Proposals::for_files(ready.iter().map(|(_, meta)| meta))?;

    let started = Instant::now();
    let mut association = Association::open(dest, config, &proposals)?;
    tracing::info!(
        %peer,
        files = ready.len(),
        contexts_proposed = proposals.contexts.len(),
        contexts_accepted = association.accepted.len(),
        "association established"
    );
    let mut lost: Option<Arc<ScuError>> = None;
    let (mut delivered, mut failed) = (0usize, 0usize);
    for (index, meta) in &ready {
        let index = *index;
        let path = &files[index];
        let outcome = &mut outcomes[index];
        if let Some(cause) = &lost {
            outcome.result = Err(StoreFailure::Association {
                path: path.clone(),
                source: cause.clone(),
            });
            failed += 1;
            continue;
        }
        match association.store(path, meta, &proposals, outcome) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(%peer, file = index, error = %e, "association lost");
                let cause = Arc::new(e);
                outcome.result = Err(StoreFailure::Association {
                    path: path.clone(),
                    source: cause.clone(),
                });
                lost = Some(cause);
            }
        }
        match &outcome.result {
            Ok(Delivered::Success) => {
                delivered += 1;
                tracing::debug!(%peer, file = index, sop = %log_tag(&meta.sop_instance_uid), "instance stored");
            }
            Ok(Delivered::Warning { status, .. }) => {
                delivered += 1;
                tracing::warn!(
                    %peer,
                    file = index,
                    sop = %log_tag(&meta.sop_instance_uid),
                    status = format!("{status:#06x}"),
                    meaning = status::meaning(*status),
                    "instance stored with a warning"
                );
            }
            Err(failure) => {
                failed += 1;
                tracing::warn!(
                    %peer,
                    file = index,
                    sop = %log_tag(&meta.sop_instance_uid),
                    transient = failure.is_transient(),
                    reason = failure_kind(failure),
                    status = outcome.status.map(|s| format!("{s:#06x}")),
                    "instance not stored"
                );
            }
        }
    }
    if lost.is_none() {
        association.release();
    }
    tracing::info!(
        %peer,
        delivered,
        failed,
        seconds = started.elapsed().as_secs_f64(),
        "association ended"
    );
    Ok(outcomes)
}

/// C-ECHO (PS3.7 section 9.1.5): associate proposing only the Verification SOP Class in
/// Implicit VR Little Endian (PS3.4 annex A), send one C-ECHO-RQ, read its C-ECHO-RSP, and
/// release. Returns the response's status (0x0000: success) and how long it took.
pub fn echo(dest: &Destination, config: &ScuConfig) -> Result<(u16, Duration), ScuError> {
    check_config(dest, config)?;
    let started = Instant::now();
    let proposals = Proposals {
        contexts: vec![PresentationContextProposed {
            id: 1,
            abstract_syntax: uids::VERIFICATION.to_string(),
            transfer_syntaxes: vec![ECHO_SYNTAX.to_string()],
        }],
        by_key: HashMap::new(),
    };
    let mut association = Association::open(dest, config, &proposals)?;
    if !association.accepted.contains_key(&1) {
        let reason = association
            .refused
            .get(&1)
            .cloned()
            .unwrap_or_else(|| "no result for the proposed context".into());
        association.release();
        return Err(ScuError::Protocol {
            peer: dest.to_string(),
            detail: format!("the Verification SOP Class was not accepted: {reason}"),
        });
    }
    let message_id = association.next_message_id;
    let command = dimse::EchoRequest { message_id }.encode();
    association.write_message(1, &command, None)?;
    let rsp = association.read_response("C-ECHO-RSP", 1)?;
    if rsp.command_field != dimse::C_ECHO_RSP || rsp.message_id_being_responded_to != message_id {
        return Err(association.protocol(format!(
            "answered C-ECHO-RQ {message_id} with command {:#06x} for message {}",
            rsp.command_field, rsp.message_id_being_responded_to
        )));
    }
    association.release();
    Ok((rsp.status, started.elapsed()))
}

/// A failure's kind for logs, without paths or UIDs.
fn failure_kind(failure: &StoreFailure) -> String {
    match failure {
        StoreFailure::File { source, .. } => format!("file: {source}"),
        StoreFailure::NotAccepted { reason, .. } => format!("no presentation context: {reason}"),
        StoreFailure::Reencode { from, to, .. } => format!("cannot re-encode {from} to {to}"),
        StoreFailure::Refused { status, .. } => status::meaning(*status).to_string(),
        StoreFailure::Association { source, .. } => source.to_string(),
    }
}

/// AE titles (PS3.5 table 6.2-1: at most 16 characters of the default repertoire, no backslash
/// or control characters, not only spaces) and bounds.
fn check_config(dest: &Destination, config: &ScuConfig) -> Result<(), ScuError> {
    for (name, ae) in [
        ("calling AE title", &config.calling_ae),
        ("called AE title", &dest.ae_title),
    ] {
        let valid = !ae.trim().is_empty()
            && ae.len() <= 16
            && ae.bytes().all(|b| (0x20..0x7F).contains(&b) && b != b'\\');
        if !valid {
            return Err(ScuError::Config(format!(
                "{name} {ae:?} is not a valid AE title (1 to 16 ASCII characters, no backslash)"
            )));
        }
    }
    if !(MIN_PDU_LENGTH..=MAX_PDU_LENGTH).contains(&config.max_pdu_length) {
        return Err(ScuError::Config(format!(
            "max_pdu_length {} is outside {MIN_PDU_LENGTH}..={MAX_PDU_LENGTH}",
            config.max_pdu_length
        )));
    }
    if config.connect_timeout.is_zero() || config.io_timeout.is_zero() {
        return Err(ScuError::Config("timeouts must be above zero".into()));
    }
    Ok(())
}

/// Native transfer syntaxes: the ones dicom-object can re-encode between.
fn is_native(transfer_syntax: &str) -> bool {
    matches!(
        transfer_syntax,
        uids::IMPLICIT_VR_LE | uids::EXPLICIT_VR_LE | uids::EXPLICIT_VR_BE
    )
}

/// Which context a file goes on: its SOP class, and its transfer syntax unless native.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ContextKey {
    sop_class: String,
    /// `None`: any native syntax.
    encapsulated: Option<String>,
}

impl ContextKey {
    fn of(meta: &part10::Meta) -> Self {
        ContextKey {
            sop_class: meta.sop_class_uid.clone(),
            encapsulated: (!is_native(&meta.transfer_syntax_uid))
                .then(|| meta.transfer_syntax_uid.clone()),
        }
    }
}

/// The presentation contexts we propose (PS3.8 section 9.3.2.2).
struct Proposals {
    contexts: Vec<PresentationContextProposed>,
    by_key: HashMap<ContextKey, u8>,
}

impl Proposals {
    fn for_files<'a>(metas: impl Iterator<Item = &'a part10::Meta>) -> Result<Self, ScuError> {
        // Each context's own syntaxes (those of its files), in order of first appearance.
        let mut keys: Vec<(ContextKey, Vec<String>)> = Vec::new();
        for meta in metas {
            let key = ContextKey::of(meta);
            let at = match keys.iter().position(|(k, _)| *k == key) {
                Some(at) => at,
                None => {
                    keys.push((key, Vec::new()));
                    keys.len() - 1
                }
            };
            let own = &mut keys[at].1;
            if !own.contains(&meta.transfer_syntax_uid) {
                own.push(meta.transfer_syntax_uid.clone());
            }
        }
        if keys.len() > MAX_CONTEXTS {
            return Err(ScuError::TooManyContexts { count: keys.len() });
        }
        let mut contexts = Vec::with_capacity(keys.len());
        let mut by_key = HashMap::with_capacity(keys.len());
        for (index, (key, mut syntaxes)) in keys.into_iter().enumerate() {
            // The files' own syntaxes first, so a peer that takes the first acceptable one
            // (as ours does) gets the bytes unchanged; native fallbacks after them.
            if key.encapsulated.is_none() {
                for fallback in FALLBACK_SYNTAXES {
                    if !syntaxes.iter().any(|s| s == fallback) {
                        syntaxes.push(fallback.to_string());
                    }
                }
            }
            let id = (2 * index + 1) as u8;
            contexts.push(PresentationContextProposed {
                id,
                abstract_syntax: key.sop_class.clone(),
                transfer_syntaxes: syntaxes,
            });
            by_key.insert(key, id);
        }
        Ok(Proposals { contexts, by_key })
    }
}

/// An accepted context (keyed by its ID): the transfer syntax the peer chose.
struct Accepted {
    transfer_syntax: String,
}

struct Association<'a> {
    io: PduStream,
    peer: String,
    config: &'a ScuConfig,
    accepted: HashMap<u8, Accepted>,
    /// Results of the contexts the peer did not accept, by ID, for messages.
    refused: HashMap<u8, String>,
    /// Largest PDV fragment we send: the smaller of the peer's and our maximum length, less
    /// the PDV item header (PS3.8 section 9.3.5.1 and D.1).
    max_fragment: usize,
    next_message_id: u16,
}

fn pdu_error(peer: &str, awaiting: &'static str, after: Duration, e: PduError) -> ScuError {
    match e {
        PduError::Closed => ScuError::Closed {
            peer: peer.to_string(),
            awaiting,
        },
        PduError::Timeout => ScuError::Timeout {
            peer: peer.to_string(),
            awaiting,
            after,
        },
        PduError::Io(source) => ScuError::Io {
            peer: peer.to_string(),
            source,
        },
        PduError::TooLarge { length, limit } => ScuError::Protocol {
            peer: peer.to_string(),
            detail: format!("PDU of {length} bytes exceeds our limit of {limit} (PS3.8 D.1)"),
        },
        PduError::Malformed(detail) => ScuError::Protocol {
            peer: peer.to_string(),
            detail: format!("malformed PDU: {detail}"),
        },
    }
}

impl<'a> Association<'a> {
    /// Connect, request the association and read the answer (PS3.8 section 9.3.2 to 9.3.4).
    fn open(
        dest: &Destination,
        config: &'a ScuConfig,
        proposals: &Proposals,
    ) -> Result<Self, ScuError> {
        let peer = dest.to_string();
        let stream = connect(dest, &peer, config.connect_timeout)?;
        let io_err = |source| ScuError::Io {
            peer: peer.clone(),
            source,
        };
        // Requests go out in whole PDUs; Nagle's algorithm would hold the tail of each one
        // until the peer's (delayed) ACK.
        stream.set_nodelay(true).map_err(io_err)?;
        let transport = match &dest.tls {
            None => tls::Transport::Plain(stream),
            Some(client) => {
                let deadline = Instant::now() + config.connect_timeout;
                tls::connect(stream, client, deadline).map_err(|source| ScuError::Tls {
                    peer: peer.clone(),
                    source,
                })?
            }
        };
        transport
            .tcp()
            .set_write_timeout(Some(config.io_timeout))
            .map_err(io_err)?;
        let io = PduStream::over(transport).map_err(io_err)?;
        let mut association = Association {
            io,
            peer: peer.clone(),
            config,
            accepted: HashMap::new(),
            refused: HashMap::new(),
            max_fragment: 0,
            next_message_id: 1,
        };
        let rq = AssociationRQ {
            protocol_version: 1,
            calling_ae_title: config.calling_ae.clone(),
            called_ae_title: dest.ae_title.clone(),
            application_context_name: uids::APPLICATION_CONTEXT.to_string(),
            presentation_contexts: proposals.contexts.clone(),
            user_variables: vec![
                UserVariableItem::MaxLength(config.max_pdu_length),
                UserVariableItem::ImplementationClassUID(
                    uids::IMPLEMENTATION_CLASS_UID.to_string(),
                ),
                UserVariableItem::ImplementationVersionName(
                    uids::IMPLEMENTATION_VERSION_NAME.to_string(),
                ),
            ],
        };
        association
            .io
            .write_pdu(&Pdu::AssociationRQ(rq))
            .map_err(|e| pdu_error(&peer, "A-ASSOCIATE-RQ", config.io_timeout, e))?;
        let ac = association.read_association_answer()?;
        association.negotiated(&ac, proposals)?;
        Ok(association)
    }

    /// Set the socket's read timeout to what is left until `deadline`.
    fn arm(&mut self, awaiting: &'static str, deadline: Instant) -> Result<(), ScuError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timeout(awaiting));
        }
        self.io
            .tcp()
            .set_read_timeout(Some(left))
            .map_err(|source| ScuError::Io {
                peer: self.peer.clone(),
                source,
            })
    }

    fn timeout(&self, awaiting: &'static str) -> ScuError {
        ScuError::Timeout {
            peer: self.peer.clone(),
            awaiting,
            after: self.config.io_timeout,
        }
    }

    fn protocol(&self, detail: impl Into<String>) -> ScuError {
        ScuError::Protocol {
            peer: self.peer.clone(),
            detail: detail.into(),
        }
    }

    fn pdu_error(&self, awaiting: &'static str, e: PduError) -> ScuError {
        pdu_error(&self.peer, awaiting, self.config.io_timeout, e)
    }

    /// A-ASSOCIATE-AC, -RJ or A-ABORT, each bounded in size before its body is read.
    fn read_association_answer(&mut self) -> Result<AssociationAC, ScuError> {
        const AWAITING: &str = "A-ASSOCIATE-AC";
        let deadline = Instant::now() + self.config.io_timeout;
        let result = self.read_answer_pdu(AWAITING, deadline);
        let pdu = match result {
            Ok(pdu) => pdu,
            Err(e) => {
                self.abort_if_ours(&e);
                return Err(e);
            }
        };
        match pdu {
            Pdu::AssociationAC(ac) => Ok(ac),
            Pdu::AssociationRJ(rj) => Err(ScuError::Rejected {
                peer: self.peer.clone(),
                permanent: rj.result == AssociationRJResult::Permanent,
                reason: rj.source,
            }),
            Pdu::AbortRQ { source } => Err(ScuError::Aborted {
                peer: self.peer.clone(),
                abort_source: source,
            }),
            other => {
                let e = self.protocol(format!(
                    "answered A-ASSOCIATE-RQ with {}",
                    other.short_description()
                ));
                self.abort();
                Err(e)
            }
        }
    }

    fn read_answer_pdu(
        &mut self,
        awaiting: &'static str,
        deadline: Instant,
    ) -> Result<Pdu, ScuError> {
        self.arm(awaiting, deadline)?;
        let (ty, length) = self
            .io
            .read_header()
            .map_err(|e| self.pdu_error(awaiting, e))?;
        // PS3.8 section 9.3: A-ASSOCIATE-RJ and A-ABORT bodies are 4 bytes.
        let limit = match ty {
            ul::A_ASSOCIATE_AC => MAX_ASSOCIATE_AC,
            ul::A_ASSOCIATE_RJ | ul::A_ABORT => 4,
            other => {
                return Err(self.protocol(format!(
                    "PDU type {other:#04x} where {awaiting} was expected"
                )))
            }
        };
        if length > limit {
            return Err(self.protocol(format!(
                "PDU type {ty:#04x} of {length} bytes exceeds {limit}"
            )));
        }
        self.arm(awaiting, deadline)?;
        self.io
            .read_body(ty, length)
            .map_err(|e| self.pdu_error(awaiting, e))
    }

    /// Record which contexts the peer accepted and the fragment size (PS3.8 9.3.3.2, D.1).
    fn negotiated(&mut self, ac: &AssociationAC, proposals: &Proposals) -> Result<(), ScuError> {
        for result in &ac.presentation_contexts {
            let Some(proposed) = proposals.contexts.iter().find(|pc| pc.id == result.id) else {
                tracing::warn!(peer = %self.peer, id = result.id, "result for a context we did not propose; ignored");
                continue;
            };
            let ts = result.transfer_syntax.trim_end_matches('\0').trim();
            if result.reason != PresentationContextResultReason::Acceptance {
                self.refused.insert(result.id, result.reason.to_string());
            } else if !proposed.transfer_syntaxes.iter().any(|p| p == ts) {
                // PS3.8 9.3.3.2: the accepted transfer syntax must be one we proposed.
                self.refused.insert(
                    result.id,
                    format!("accepted with transfer syntax {ts}, which we did not propose"),
                );
            } else {
                self.accepted.insert(
                    result.id,
                    Accepted {
                        transfer_syntax: ts.to_string(),
                    },
                );
            }
        }
        // Maximum Length 0 or absent: no limit from the peer (PS3.8 D.1.1); ours applies.
        let peer_max = ac
            .user_variables
            .iter()
            .find_map(|item| match item {
                UserVariableItem::MaxLength(n) if *n > 0 => Some(*n),
                _ => None,
            })
            .unwrap_or(self.config.max_pdu_length);
        let max_pdu = peer_max.min(self.config.max_pdu_length) as usize;
        // A PDV item header is 6 bytes; fragments of at least 2 bytes keep even lengths.
        if max_pdu < 6 + 2 {
            let e = self.protocol(format!("Maximum Length {peer_max} leaves no room for data"));
            self.abort();
            return Err(e);
        }
        self.max_fragment = (max_pdu - 6) & !1;
        Ok(())
    }

    /// Send one file on the context chosen for it and read its response. `Err` means the
    /// association is lost; a refusal of the file is recorded in `outcome`.
    fn store(
        &mut self,
        path: &Path,
        meta: &part10::Meta,
        proposals: &Proposals,
        outcome: &mut StoreOutcome,
    ) -> Result<(), ScuError> {
        let not_accepted = |reason: String| StoreFailure::NotAccepted {
            peer: self.peer.clone(),
            path: path.to_path_buf(),
            sop_class: meta.sop_class_uid.clone(),
            transfer_syntax: meta.transfer_syntax_uid.clone(),
            reason,
        };
        let Some(&context_id) = proposals.by_key.get(&ContextKey::of(meta)) else {
            outcome.result = Err(not_accepted("not proposed".into()));
            return Ok(());
        };
        let Some(accepted) = self.accepted.get(&context_id) else {
            let reason = self
                .refused
                .get(&context_id)
                .cloned()
                .unwrap_or_else(|| "no result for the proposed context".into());
            outcome.result = Err(not_accepted(reason));
            return Ok(());
        };
        let target = accepted.transfer_syntax.clone();
        // Read again: the first read only looked. The file must still be the same instance.
        let (now, bytes) = match part10::read(path, self.config.max_file_bytes) {
            Ok(read) => read,
            Err(source) => {
                outcome.result = Err(StoreFailure::File {
                    path: path.to_path_buf(),
                    source,
                });
                return Ok(());
            }
        };
        if now != *meta {
            outcome.result = Err(StoreFailure::File {
                path: path.to_path_buf(),
                source: FileError::Changed,
            });
            return Ok(());
        }
        let original = &bytes[meta.dataset_offset..];
        let reencoded;
        let dataset: &[u8] = if target == meta.transfer_syntax_uid {
            original
        } else if is_native(&target) && is_native(&meta.transfer_syntax_uid) {
            match reencode(original, &meta.transfer_syntax_uid, &target, meta) {
                Ok(d) => {
                    reencoded = d;
                    &reencoded
                }
                Err(detail) => {
                    outcome.result = Err(StoreFailure::Reencode {
                        path: path.to_path_buf(),
                        from: meta.transfer_syntax_uid.clone(),
                        to: target,
                        detail,
                    });
                    return Ok(());
                }
            }
        } else {
            outcome.result = Err(not_accepted(format!(
                "accepted only {target}, which we cannot produce from the file's syntax"
            )));
            return Ok(());
        };

        let message_id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1);
        let command = StoreRequest {
            message_id,
            affected_sop_class_uid: &meta.sop_class_uid,
            affected_sop_instance_uid: &meta.sop_instance_uid,
        }
        .encode();
        self.write_message(context_id, &command, Some(dataset))?;
        outcome.transfer_syntax = Some(target);
        let rsp = self.read_response("C-STORE-RSP", context_id)?;
        // PS3.7 section 9.3.1.2: the response answers our message, for our instance.
        if rsp.command_field != dimse::C_STORE_RSP
            || rsp.message_id_being_responded_to != message_id
            || rsp.has_dataset
        {
            let e = self.protocol(format!(
                "answered C-STORE-RQ {message_id} with command {:#06x} for message {}{}",
                rsp.command_field,
                rsp.message_id_being_responded_to,
                if rsp.has_dataset {
                    " and a dataset"
                } else {
                    ""
                }
            ));
            self.abort();
            return Err(e);
        }
        if rsp
            .affected_sop_instance_uid
            .as_deref()
            .is_some_and(|uid| uid != meta.sop_instance_uid)
        {
            let e = self.protocol("C-STORE-RSP names another SOP instance");
            self.abort();
            return Err(e);
        }
        outcome.status = Some(rsp.status);
        outcome.result = match classify(rsp.status) {
            StatusClass::Success => Ok(Delivered::Success),
            StatusClass::Warning => Ok(Delivered::Warning {
                status: rsp.status,
                comment: rsp.error_comment,
            }),
            StatusClass::Transient | StatusClass::Permanent => Err(StoreFailure::Refused {
                peer: self.peer.clone(),
                path: path.to_path_buf(),
                status: rsp.status,
                comment: rsp.error_comment,
            }),
        };
        Ok(())
    }

    /// Write a command and its dataset as P-DATA-TF PDUs of one PDV each, every fragment within
    /// the negotiated maximum length (PS3.8 9.3.5, annex E: the command's fragments first, the
    /// last one flagged, then the dataset's). Small PDUs are coalesced into few writes.
    fn write_message(
        &mut self,
        context_id: u8,
        command: &[u8],
        dataset: Option<&[u8]>,
    ) -> Result<(), ScuError> {
        let max = self.max_fragment;
        let peer = self.peer.clone();
        let after = self.config.io_timeout;
        let mut out = BufWriter::with_capacity(64 * 1024, self.io.writer());
        let result =
            write_fragments(&mut out, context_id, command, dataset, max).and_then(|()| out.flush());
        // Not drop: BufWriter's drop would try to write the rest again, past the timeout.
        let _ = out.into_parts();
        if let Err(e) = result {
            let e = pdu_error(&peer, "the peer to read our data", after, e.into());
            self.abort_if_ours(&e);
            return Err(e);
        }
        Ok(())
    }

    /// Read the response command (`awaiting`) on `context_id`, within `io_timeout`.
    fn read_response(
        &mut self,
        awaiting: &'static str,
        context_id: u8,
    ) -> Result<ResponseFields, ScuError> {
        let deadline = Instant::now() + self.config.io_timeout;
        let result = self.read_command(awaiting, context_id, deadline);
        if let Err(e) = &result {
            self.abort_if_ours(e);
        }
        result
    }

    fn read_command(
        &mut self,
        awaiting: &'static str,
        context_id: u8,
        deadline: Instant,
    ) -> Result<ResponseFields, ScuError> {
        let mut command = Vec::new();
        loop {
            self.arm(awaiting, deadline)?;
            let (ty, length) = self
                .io
                .read_header()
                .map_err(|e| self.pdu_error(awaiting, e))?;
            match ty {
                ul::P_DATA_TF => {}
                ul::A_ABORT => {
                    return Err(
                        match self.read_small_body(awaiting, ty, length, deadline)? {
                            Pdu::AbortRQ { source } => ScuError::Aborted {
                                peer: self.peer.clone(),
                                abort_source: source,
                            },
                            _ => self.protocol("malformed A-ABORT"),
                        },
                    );
                }
                other => {
                    return Err(self.protocol(format!(
                        "PDU type {other:#04x} where {awaiting} was expected"
                    )))
                }
            }
            // PS3.8 D.1: the peer must not exceed the Maximum Length we announced; checked
            // before a byte of the body is read.
            if length > self.config.max_pdu_length {
                return Err(self.protocol(format!(
                    "P-DATA-TF of {length} bytes exceeds our maximum length {}",
                    self.config.max_pdu_length
                )));
            }
            let mut remaining = length;
            while remaining > 0 {
                self.arm(awaiting, deadline)?;
                let pdv = self
                    .io
                    .read_pdv_header(remaining)
                    .map_err(|e| self.pdu_error(awaiting, e))?;
                remaining -= pdv.data_length as u32 + 6;
                if pdv.context_id != context_id || !pdv.is_command {
                    return Err(self.protocol(format!(
                        "{} fragment on context {} while waiting for {awaiting} on context {context_id}",
                        if pdv.is_command { "command" } else { "dataset" },
                        pdv.context_id
                    )));
                }
                if command.len() + pdv.data_length > dimse::MAX_COMMAND_BYTES {
                    return Err(self.protocol("response command set larger than 64 KiB"));
                }
                self.arm(awaiting, deadline)?;
                self.io
                    .read_into(&mut command, pdv.data_length)
                    .map_err(|e| self.pdu_error(awaiting, e))?;
                if pdv.is_last {
                    if remaining != 0 {
                        return Err(self.protocol("data after the last command fragment"));
                    }
                    return dimse::decode_response(&command)
                        .map_err(|e| self.protocol(format!("bad response command set: {e}")));
                }
            }
        }
    }

    fn read_small_body(
        &mut self,
        awaiting: &'static str,
        ty: u8,
        length: u32,
        deadline: Instant,
    ) -> Result<Pdu, ScuError> {
        if length != 4 {
            return Err(self.protocol(format!(
                "PDU type {ty:#04x} of {length} bytes where 4 were expected"
            )));
        }
        self.arm(awaiting, deadline)?;
        self.io
            .read_body(ty, length)
            .map_err(|e| self.pdu_error(awaiting, e))
    }

    /// A-RELEASE-RQ, then wait for A-RELEASE-RP (PS3.8 section 7.2). Every file has its outcome
    /// by now, so a failed release is only logged.
    fn release(&mut self) {
        const AWAITING: &str = "A-RELEASE-RP";
        if let Err(e) = self.io.write_pdu(&Pdu::ReleaseRQ) {
            tracing::warn!(peer = %self.peer, error = %e, "cannot send A-RELEASE-RQ");
            return;
        }
        let deadline = Instant::now() + self.config.io_timeout;
        let result = (|| {
            self.arm(AWAITING, deadline)?;
            let (ty, length) = self
                .io
                .read_header()
                .map_err(|e| self.pdu_error(AWAITING, e))?;
            match ty {
                ul::A_RELEASE_RP => self
                    .read_small_body(AWAITING, ty, length, deadline)
                    .map(|_| ()),
                ul::A_ABORT => Err(
                    match self.read_small_body(AWAITING, ty, length, deadline)? {
                        Pdu::AbortRQ { source } => ScuError::Aborted {
                            peer: self.peer.clone(),
                            abort_source: source,
                        },
                        _ => self.protocol("malformed A-ABORT"),
                    },
                ),
                other => Err(self.protocol(format!(
                    "PDU type {other:#04x} where {AWAITING} was expected"
                ))),
            }
        })();
        if let Err(e) = result {
            tracing::warn!(peer = %self.peer, error = %e, "association not released cleanly");
            self.abort_if_ours(&e);
        }
    }

    /// Abort when the fault is ours to report (a timeout or the peer breaking the protocol);
    /// not when the peer aborted, closed or rejected (PS3.8 section 9.2, state machine AA-*).
    fn abort_if_ours(&mut self, e: &ScuError) {
        if matches!(e, ScuError::Timeout { .. } | ScuError::Protocol { .. }) {
            self.abort();
        }
    }

    fn abort(&mut self) {
        // A peer that stopped reading must not hold us another io_timeout.
        let _ = self
            .io
            .tcp()
            .set_write_timeout(Some(Duration::from_secs(1).min(self.config.io_timeout)));
        let _ = self.io.write_pdu(&Pdu::AbortRQ {
            source: AbortRQSource::ServiceUser,
        });
        let _ = self.io.tcp().shutdown(std::net::Shutdown::Both);
    }
}

/// A command and its dataset as P-DATA-TF PDUs of one PDV each, fragments of at most `max`
/// bytes: the command's fragments, the last one flagged, then the dataset's (PS3.8 annex E).
fn write_fragments(
    out: &mut impl Write,
    context_id: u8,
    command: &[u8],
    dataset: Option<&[u8]>,
    max: usize,
) -> std::io::Result<()> {
    // A message without a dataset (C-ECHO-RQ) is its command's fragments only.
    for (data, is_command) in [(Some(command), true), (dataset, false)] {
        let Some(data) = data else {
            continue;
        };
        if data.is_empty() {
            write_pdv(out, context_id, is_command, true, &[])?;
        }
        let mut chunks = data.chunks(max.max(2)).peekable();
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            write_pdv(out, context_id, is_command, last, chunk)?;
        }
    }
    Ok(())
}

/// One P-DATA-TF PDU holding one PDV (PS3.8 section 9.3.5 and annex E.2: bit 0 of the message
/// control header is "command", bit 1 is "last fragment").
fn write_pdv(
    out: &mut impl Write,
    context_id: u8,
    is_command: bool,
    is_last: bool,
    data: &[u8],
) -> std::io::Result<()> {
    let item_length = data.len() as u32 + 2;
    let mut header = [0u8; 12];
    header[0] = ul::P_DATA_TF;
    header[2..6].copy_from_slice(&(item_length + 4).to_be_bytes());
    header[6..10].copy_from_slice(&item_length.to_be_bytes());
    header[10] = context_id;
    header[11] = u8::from(is_command) | (u8::from(is_last) << 1);
    out.write_all(&header)?;
    out.write_all(data)
}

/// Resolve and connect within `timeout` (each address in turn).
fn connect(dest: &Destination, peer: &str, timeout: Duration) -> Result<TcpStream, ScuError> {
    let addrs: Vec<SocketAddr> = (dest.host.as_str(), dest.port)
        .to_socket_addrs()
        .map_err(|source| ScuError::Resolve {
            peer: peer.to_string(),
            source,
        })?
        .collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(ScuError::Connect {
        peer: peer.to_string(),
        source: last,
    })
}

/// Re-encode a dataset from one native transfer syntax to another with dicom-object, then
/// walk the result and check it is still the same instance.
fn reencode(dataset: &[u8], from: &str, to: &str, meta: &part10::Meta) -> Result<Vec<u8>, String> {
    use dicom_object::InMemDicomObject;
    let (Some(from_ts), Some(to_ts)) = (native_syntax(from), native_syntax(to)) else {
        return Err("not a native transfer syntax".into());
    };
    let object =
        InMemDicomObject::read_dataset_with_ts(dataset, &from_ts).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(dataset.len() + dataset.len() / 8);
    object
        .write_dataset_with_ts(&mut out, &to_ts)
        .map_err(|e| e.to_string())?;
    let encoding = uids::encoding_of(to).ok_or("no encoding for the target syntax")?;
    let identity = crate::dataset::inspect(&out, encoding, out.len()).map_err(|e| e.to_string())?;
    if identity.sop_instance_uid.as_deref() != Some(meta.sop_instance_uid.as_str()) {
        return Err("re-encoded dataset lost its SOP Instance UID".into());
    }
    Ok(out)
}

fn native_syntax(uid: &str) -> Option<dicom_encoding::TransferSyntax> {
    use dicom_encoding::{AdapterFreeTransferSyntax as Ts, Codec, Endianness};
    let ts = match uid {
        uids::IMPLICIT_VR_LE => Ts::new(
            uids::IMPLICIT_VR_LE,
            "Implicit VR Little Endian",
            Endianness::Little,
            false,
            Codec::None,
        ),
        uids::EXPLICIT_VR_LE => Ts::new(
            uids::EXPLICIT_VR_LE,
            "Explicit VR Little Endian",
            Endianness::Little,
            true,
            Codec::None,
        ),
        uids::EXPLICIT_VR_BE => Ts::new(
            uids::EXPLICIT_VR_BE,
            "Explicit VR Big Endian",
            Endianness::Big,
            true,
            Codec::None,
        ),
        _ => return None,
    };
    Some(ts.erased())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_ul::pdu::{PDataValueType, Pdu};

    fn meta(class: &str, instance: &str, ts: &str) -> part10::Meta {
        part10::Meta {
            sop_class_uid: class.into(),
            sop_instance_uid: instance.into(),
            transfer_syntax_uid: ts.into(),
            dataset_offset: 132,
        }
    }

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const SEG: &str = "1.2.840.10008.5.1.4.1.1.66.4";
    const J2K: &str = "1.2.840.10008.1.2.4.90";

    #[test]
    fn native_files_share_a_context_per_class_and_encapsulated_ones_get_their_own() {
        let files = [
            meta(CT, "1", uids::IMPLICIT_VR_LE),
            meta(CT, "2", J2K),
            meta(SEG, "3", uids::EXPLICIT_VR_LE),
            meta(CT, "4", uids::EXPLICIT_VR_BE),
            meta(CT, "5", uids::IMPLICIT_VR_LE),
        ];
        let proposals = Proposals::for_files(files.iter()).unwrap();
        let contexts: Vec<(u8, &str, Vec<&str>)> = proposals
            .contexts
            .iter()
            .map(|pc| {
                (
                    pc.id,
                    pc.abstract_syntax.as_str(),
                    pc.transfer_syntaxes.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            contexts,
            vec![
                // The files' own syntaxes first, in order, then the fallbacks.
                (
                    1,
                    CT,
                    vec![
                        uids::IMPLICIT_VR_LE,
                        uids::EXPLICIT_VR_BE,
                        uids::EXPLICIT_VR_LE
                    ]
                ),
                // Nothing we could not produce from a JPEG 2000 file.
                (3, CT, vec![J2K]),
                (5, SEG, vec![uids::EXPLICIT_VR_LE, uids::IMPLICIT_VR_LE]),
            ]
        );
        for (file, id) in files.iter().zip([1u8, 3, 5, 1, 1]) {
            assert_eq!(proposals.by_key[&ContextKey::of(file)], id);
        }
    }

    #[test]
    fn more_than_128_contexts_are_refused_before_connecting() {
        let files: Vec<_> = (0..129)
            .map(|i| meta(&format!("1.2.3.{i}"), "1", uids::EXPLICIT_VR_LE))
            .collect();
        let err = Proposals::for_files(files.iter()).err().unwrap();
        assert!(matches!(err, ScuError::TooManyContexts { count: 129 }));
        assert!(!err.is_transient());
        assert!(Proposals::for_files(files[..128].iter()).is_ok());
    }

    /// Property: what we write decodes (with dicom-ul) to PDUs within the maximum length whose
    /// fragments reassemble to the command and dataset, flagged command/last correctly, for
    /// sizes around every fragment boundary.
    #[test]
    fn fragments_round_trip_within_the_maximum_length() {
        let command: Vec<u8> = (0..150u8).collect();
        for max in [2usize, 64, 1000, 4096] {
            for len in [1usize, max - 1, max, max + 1, 3 * max, 3 * max + 7] {
                let dataset: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                let mut wire = Vec::new();
                write_fragments(&mut wire, 5, &command, Some(&dataset), max).unwrap();
                let (mut got_command, mut got_dataset) = (Vec::<u8>::new(), Vec::<u8>::new());
                let (mut command_done, mut dataset_done) = (false, false);
                let mut pos = 0;
                while pos < wire.len() {
                    let length = u32::from_be_bytes(wire[pos + 2..pos + 6].try_into().unwrap());
                    assert!(
                        length as usize <= max + 6,
                        "PDU of {length} bytes for max {max}"
                    );
                    let pdu = dicom_ul::pdu::read_pdu(
                        &wire[pos..],
                        dicom_ul::pdu::MAXIMUM_PDU_SIZE,
                        false,
                    )
                    .unwrap()
                    .unwrap();
                    pos += 6 + length as usize;
                    let Pdu::PData { data } = pdu else {
                        panic!("not P-DATA-TF")
                    };
                    assert_eq!(data.len(), 1);
                    let pdv = &data[0];
                    assert_eq!(pdv.presentation_context_id, 5);
                    match pdv.value_type {
                        PDataValueType::Command => {
                            assert!(!command_done && got_dataset.is_empty());
                            got_command.extend(&pdv.data);
                            command_done = pdv.is_last;
                        }
                        PDataValueType::Data => {
                            assert!(command_done && !dataset_done);
                            got_dataset.extend(&pdv.data);
                            dataset_done = pdv.is_last;
                        }
                    }
                }
                assert!(command_done && dataset_done);
                assert_eq!(got_command, command);
                assert_eq!(got_dataset, dataset);
            }
        }
    }

    #[test]
    fn invalid_ae_titles_and_pdu_limits_are_configuration_errors() {
        let dest = Destination {
            ae_title: "PACS".into(),
            host: "127.0.0.1".into(),
            port: 104,
            tls: None,
        };
        assert!(check_config(&dest, &ScuConfig::new("RADIANT")).is_ok());
        for bad in ["", "   ", "SEVENTEEN_CHARS_X", "BACK\\SLASH", "TAB\tBED"] {
            let err = check_config(&dest, &ScuConfig::new(bad)).unwrap_err();
            assert!(!err.is_transient());
        }
        let mut config = ScuConfig::new("RADIANT");
        config.max_pdu_length = 100;
        assert!(check_config(&dest, &config).is_err());
    }
}
