//! One association, from A-ASSOCIATE-RQ to release or abort (PS3.8 section 9 and PS3.7 section
//! 9.1): access control and presentation context negotiation, then the DIMSE message loop
//! serving C-ECHO and C-STORE. On the TLS listener the association starts with the TLS
//! handshake (PS3.15 annex B), under the same ARTIM deadline as the A-ASSOCIATE-RQ.

use super::budget::Charge;
use super::reject::{Answer, RejectReason};
use super::{Admission, AssociationOutcome, AssociationReport, Peer, Shared};
use crate::dataset::{self, DatasetError, Identity};
use crate::dimse::{self, status, Command, Response};
use crate::store::{IncomingInstance, StoreOutcome};
use crate::tls;
use crate::uids;
use crate::ul::{self, PduError, PduStream};
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationAC, AssociationRJ, AssociationRJResult,
    AssociationRJServiceUserReason, AssociationRJSource, AssociationRQ, Pdu,
    PresentationContextResult, PresentationContextResultReason, UserVariableItem,
};
use radiant_core::log_tag;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a dataset that does not fit the memory budget waits for room before its instance
/// is refused with A700.
const BUDGET_WAIT: Duration = Duration::from_secs(10);

/// An accepted presentation context.
struct Context {
    abstract_syntax: String,
    transfer_syntax: String,
}

/// A refusal of the association, with what goes into the A-ASSOCIATE-RJ.
struct Refusal {
    result: AssociationRJResult,
    source: AssociationRJSource,
    reason: RejectReason,
}

/// The A-ASSOCIATE-RJ for `reason` (see [`RejectReason::answer`]); a reason that is not
/// answered with one at the association level gets a permanent "no reason given".
fn refusal(reason: RejectReason) -> Refusal {
    let (result, source) = match reason.answer() {
        Answer::Reject(result, source) => (result, source),
        _ => (
            AssociationRJResult::Permanent,
            AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::NoReasonGiven),
        ),
    };
    Refusal {
        result,
        source,
        reason,
    }
}

/// Read the A-ASSOCIATE-RQ of a connection over the association limit and answer it with a
/// transient A-ASSOCIATE-RJ (local limit exceeded), so the caller knows to retry later.
pub(crate) fn refuse_busy(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<&Arc<rustls::ServerConfig>>,
    shared: &Shared,
) {
    let Ok(mut io) = open(stream, peer, tls, shared) else {
        return;
    };
    if read_request(&mut io, peer).is_some() {
        tracing::warn!(%peer, "association refused: association limit reached");
        send_refusal(&mut io, refusal(RejectReason::AssociationLimit));
    }
}

/// Set the ARTIM timeouts, and on the TLS listener run the handshake within the same deadline
/// (PS3.8 9.1.5: the connection must lead to an A-ASSOCIATE-RQ within ARTIM). A failed
/// handshake is logged with its reason and counted; the connection is closed.
fn open(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<&Arc<rustls::ServerConfig>>,
    shared: &Shared,
) -> Result<PduStream, ()> {
    let deadline = Instant::now() + shared.config.association_request_timeout;
    let transport = match tls {
        None => tls::Transport::Plain(stream),
        Some(config) => match tls::accept(stream, config, deadline) {
            Ok(transport) => transport,
            Err(e) => {
                shared.metrics.reject(RejectReason::TlsHandshake.label());
                tracing::warn!(
                    %peer,
                    error = %e,
                    reason = RejectReason::TlsHandshake.label(),
                    "TLS handshake failed; connection closed"
                );
                return Err(());
            }
        },
    };
    if transport
        .tcp()
        .set_write_timeout(Some(shared.config.idle_timeout))
        .is_err()
    {
        return Err(());
    }
    // The whole A-ASSOCIATE-RQ must arrive before the ARTIM deadline, however it trickles in.
    let mut io = PduStream::over(transport).map_err(|_| ())?;
    io.set_deadline(Some(deadline));
    Ok(io)
}

/// An IPv4 address as itself, also when it arrives IPv4-mapped on an IPv6 socket.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn read_request(io: &mut PduStream, peer: SocketAddr) -> Option<AssociationRQ> {
    let result = io.read_header().and_then(|(ty, len)| {
        if ty != ul::A_ASSOCIATE_RQ {
            return Err(PduError::Malformed(format!(
                "expected A-ASSOCIATE-RQ, got PDU type {ty:#04x}"
            )));
        }
        if len > ul::MAX_ASSOCIATE_RQ {
            return Err(PduError::TooLarge {
                length: len,
                limit: ul::MAX_ASSOCIATE_RQ,
            });
        }
        io.read_body(ty, len)
    });
    match result {
        Ok(Pdu::AssociationRQ(rq)) => Some(rq),
        Ok(_) => None,
        Err(PduError::Closed) => None,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "no valid A-ASSOCIATE-RQ; aborting");
            abort(io);
            None
        }
    }
}

fn send_refusal(io: &mut PduStream, refusal: Refusal) {
    let _ = io.write_pdu(&Pdu::AssociationRJ(AssociationRJ {
        result: refusal.result,
        source: refusal.source,
    }));
}

fn abort(io: &mut PduStream) {
    let _ = io.write_pdu(&Pdu::AbortRQ {
        source: AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::ReasonNotSpecified),
    });
}

/// Serve one connection until release, abort, timeout or error. Never panics on peer input.
pub(crate) fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<&Arc<rustls::ServerConfig>>,
    shared: &Shared,
    admission: &Admission,
) {
    let Ok(mut io) = open(stream, peer, tls, shared) else {
        return;
    };
    let Some(rq) = read_request(&mut io, peer) else {
        return;
    };
    let client_names = io.transport().client_names();
    if let Err(refused) = check_access(&rq, peer.ip(), client_names.as_deref(), shared) {
        shared.metrics.reject(refused.reason.label());
        tracing::warn!(
            %peer,
            calling_ae = %rq.calling_ae_title,
            called_ae = %rq.called_ae_title,
            tls = io.transport().is_tls(),
            client_certificate = ?client_names,
            reason = refused.reason.label(),
            "association refused"
        );
        report(
            shared,
            peer,
            (&rq.calling_ae_title, &rq.called_ae_title),
            io.transport().is_tls(),
            AssociationOutcome::Refused(refused.reason),
        );
        send_refusal(&mut io, refused);
        return;
    }
    // A connection from an address no peer is bound to moves into the main pool only now.
    if !admission.admitted() {
        shared
            .metrics
            .reject(RejectReason::AssociationLimit.label());
        tracing::warn!(%peer, calling_ae = %rq.calling_ae_title, "association refused: association limit reached");
        report(
            shared,
            peer,
            (&rq.calling_ae_title, &rq.called_ae_title),
            io.transport().is_tls(),
            AssociationOutcome::Refused(RejectReason::AssociationLimit),
        );
        send_refusal(&mut io, refusal(RejectReason::AssociationLimit));
        return;
    }
    let (results, contexts) = negotiate(&rq);
    let ac = AssociationAC {
        protocol_version: 1,
        calling_ae_title: rq.calling_ae_title.clone(),
        called_ae_title: rq.called_ae_title.clone(),
        application_context_name: uids::APPLICATION_CONTEXT.to_string(),
        presentation_contexts: results,
        user_variables: vec![
            UserVariableItem::MaxLength(shared.config.max_pdu_length),
            UserVariableItem::ImplementationClassUID(uids::IMPLEMENTATION_CLASS_UID.to_string()),
            UserVariableItem::ImplementationVersionName(
                uids::IMPLEMENTATION_VERSION_NAME.to_string(),
            ),
        ],
    };
    if io.write_pdu(&Pdu::AssociationAC(ac)).is_err() {
        return;
    }
    // From here a silence longer than `idle_timeout` ends the association, inside a message
    // as well as between messages.
    io.set_silence_limit(Some(shared.config.idle_timeout));
    shared.metrics.associations.inc();
    shared.metrics.associations_active.inc();
    tracing::info!(
        %peer,
        calling_ae = %rq.calling_ae_title,
        contexts = contexts.len(),
        "association accepted"
    );
    let tls = io.transport().is_tls();
    let mut association = Association {
        io,
        peer,
        calling_ae: rq.calling_ae_title,
        called_ae: rq.called_ae_title,
        contexts,
        shared,
        stored: 0,
        refused: 0,
        started: Instant::now(),
        waiting: Wait::NextMessage,
    };
    let end = association.message_loop();
    shared.metrics.associations_active.dec();
    tracing::info!(
        peer = %association.peer,
        calling_ae = %association.calling_ae,
        stored = association.stored,
        seconds = association.started.elapsed().as_secs_f64(),
        end = %end,
        "association ended"
    );
    report(
        shared,
        peer,
        (&association.calling_ae, &association.called_ae),
        tls,
        AssociationOutcome::Ended {
            end: end.to_string(),
            stored: association.stored,
            refused: association.refused,
        },
    );
}

/// Tell the observer, if any, what became of an association.
fn report(
    shared: &Shared,
    peer: SocketAddr,
    (calling_ae, called_ae): (&str, &str),
    tls: bool,
    outcome: AssociationOutcome,
) {
    if let Some(observer) = shared.observer.get() {
        observer(&AssociationReport {
            peer,
            calling_ae: calling_ae.to_string(),
            called_ae: called_ae.to_string(),
            tls,
            outcome,
        });
    }
}

/// Access control (PS3.8 section 7.1.1): protocol version, application context, called AE
/// title, then the calling AE title, address and TLS identity against `[[dicom.peers]]`,
/// then free disk. `client_names`: the names of the verified client certificate (PS3.15
/// annex B), `None` without TLS or without a client certificate.
fn check_access(
    rq: &AssociationRQ,
    ip: IpAddr,
    client_names: Option<&[String]>,
    shared: &Shared,
) -> Result<(), Refusal> {
    let config = &shared.config;
    if rq.protocol_version & 1 == 0 {
        return Err(refusal(RejectReason::ProtocolVersion));
    }
    if rq.application_context_name.trim_end_matches('\0') != uids::APPLICATION_CONTEXT {
        return Err(refusal(RejectReason::ApplicationContext));
    }
    if rq.called_ae_title != config.ae_title {
        return Err(refusal(RejectReason::CalledAeTitle));
    }
    let peer = config
        .peers
        .iter()
        .find(|p| p.ae_title == rq.calling_ae_title)
        .ok_or_else(|| refusal(RejectReason::CallingAeTitle))?;
    if !address_allowed(peer, ip) {
        return Err(refusal(RejectReason::CallingHost));
    }
    if !identity_allowed(peer, client_names) {
        return Err(refusal(RejectReason::TlsIdentity));
    }
    if below_disk_floor(shared) {
        return Err(refusal(RejectReason::DiskFloor));
    }
    Ok(())
}

fn address_allowed(peer: &Peer, ip: IpAddr) -> bool {
    let ip = canonical(ip);
    match &peer.addresses {
        None => true,
        Some(allowed) => allowed.contains(&ip),
    }
}

/// A peer bound to a TLS identity is admitted only over TLS with a verified client certificate
/// naming it; a peer without one is admitted either way.
fn identity_allowed(peer: &Peer, client_names: Option<&[String]>) -> bool {
    match (&peer.tls_identity, client_names) {
        (None, _) => true,
        (Some(identity), Some(names)) => tls::names_match(names, identity),
        (Some(_), None) => false,
    }
}

fn below_disk_floor(shared: &Shared) -> bool {
    match shared.spool.free_bytes() {
        Ok(free) => free < shared.config.min_free_bytes,
        Err(e) => {
            tracing::error!(error = %e, "cannot read free disk space; treating as full");
            true
        }
    }
}

/// Accept each proposed context whose abstract syntax we serve, with the first transfer syntax
/// in the proposer's order that we accept (so the sender need not transcode); reject the others
/// one by one (PS3.8 section 9.3.3.2), never the whole association.
fn negotiate(rq: &AssociationRQ) -> (Vec<PresentationContextResult>, HashMap<u8, Context>) {
    let mut results = Vec::with_capacity(rq.presentation_contexts.len());
    let mut accepted = HashMap::new();
    for pc in &rq.presentation_contexts {
        let abstract_syntax = pc.abstract_syntax.trim_end_matches('\0');
        let served =
            abstract_syntax == uids::VERIFICATION || uids::is_storage_class(abstract_syntax);
        let chosen = pc
            .transfer_syntaxes
            .iter()
            .map(|ts| ts.trim_end_matches('\0'))
            .find(|ts| uids::encoding_of(ts).is_some());
        let (reason, ts) = match (served, chosen) {
            (false, _) => (
                PresentationContextResultReason::AbstractSyntaxNotSupported,
                uids::IMPLICIT_VR_LE,
            ),
            (true, None) => (
                PresentationContextResultReason::TransferSyntaxesNotSupported,
                uids::IMPLICIT_VR_LE,
            ),
            (true, Some(ts)) => {
                accepted.insert(
                    pc.id,
                    Context {
                        abstract_syntax: abstract_syntax.to_string(),
                        transfer_syntax: ts.to_string(),
                    },
                );
                (PresentationContextResultReason::Acceptance, ts)
            }
        };
        results.push(PresentationContextResult {
            id: pc.id,
            reason,
            transfer_syntax: ts.to_string(),
        });
    }
    (results, accepted)
}

/// Where the message being assembled stands.
enum Pending {
    /// Waiting for (more of) a command set.
    Command { bytes: Vec<u8> },
    /// Command decoded; its dataset is arriving on `context_id`.
    Dataset {
        command: Command,
        context_id: u8,
        bytes: Vec<u8>,
        /// Set when the dataset outgrew `max_instance_bytes` or the memory budget: the rest is
        /// read and dropped, and the instance refused with A700.
        overflowed: Option<Overflow>,
        /// What `bytes` hold of the memory budget.
        charge: Charge,
    },
}

struct Association<'a> {
    io: PduStream,
    peer: SocketAddr,
    calling_ae: String,
    called_ae: String,
    contexts: HashMap<u8, Context>,
    shared: &'a Shared,
    stored: u64,
    /// Instances answered with a failure status.
    refused: u64,
    started: Instant,
    /// Which deadline the reads are under.
    waiting: Wait,
}

#[derive(Clone, Copy)]
enum Wait {
    NextMessage,
    RestOfMessage,
}

/// Why a dataset's bytes were not kept.
#[derive(Clone, Copy, Debug)]
enum Overflow {
    /// Larger than `max_instance_bytes`.
    TooLarge,
    /// The datasets in flight across associations filled the memory budget.
    Budget,
}

/// How an association ended, for the log.
enum End {
    Released,
    AbortedByPeer,
    Closed,
    Aborted(RejectReason, String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Released => f.write_str("released"),
            End::AbortedByPeer => f.write_str("aborted by peer"),
            End::Closed => f.write_str("connection closed by peer without release"),
            End::Aborted(reason, detail) => write!(f, "aborted ({}): {detail}", reason.label()),
        }
    }
}

impl Association<'_> {
    fn message_loop(&mut self) -> End {
        let mut pending = Pending::Command { bytes: Vec::new() };
        let end = loop {
            // Between messages the peer has `idle_timeout` in all to start the next one; once
            // it has, the whole message has `message_timeout`.
            let between = matches!(&pending, Pending::Command { bytes } if bytes.is_empty());
            if between {
                self.io
                    .set_deadline(Some(Instant::now() + self.shared.config.idle_timeout));
                self.waiting = Wait::NextMessage;
            }
            let (ty, length) = match self.io.read_header() {
                Ok(h) => h,
                Err(e) => break self.io_end(e),
            };
            if between {
                self.io
                    .set_deadline(Some(Instant::now() + self.shared.config.message_timeout));
                self.waiting = Wait::RestOfMessage;
            }
            match ty {
                ul::P_DATA_TF => {
                    if length > self.shared.config.max_pdu_length {
                        break End::Aborted(
                            RejectReason::PduTooLarge,
                            format!(
                                "P-DATA-TF of {length} bytes exceeds max_pdu_length {}",
                                self.shared.config.max_pdu_length
                            ),
                        );
                    }
                    if let Err(end) = self.p_data(length, &mut pending) {
                        break end;
                    }
                }
                ul::A_RELEASE_RQ => {
                    let _ = self.io.skip(u64::from(length));
                    let _ = self.io.write_pdu(&Pdu::ReleaseRP);
                    break End::Released;
                }
                ul::A_ABORT => break End::AbortedByPeer,
                other => {
                    break End::Aborted(
                        RejectReason::Protocol,
                        format!("unexpected PDU type {other:#04x}"),
                    )
                }
            }
        };
        if let End::Aborted(reason, detail) = &end {
            self.shared.metrics.reject(reason.label());
            tracing::warn!(peer = %self.peer, calling_ae = %self.calling_ae, reason = reason.label(), %detail, "aborting association");
            abort(&mut self.io);
        }
        end
    }

    fn io_end(&self, e: PduError) -> End {
        match e {
            PduError::Closed => End::Closed,
            PduError::Timeout => End::Aborted(
                RejectReason::Timeout,
                match self.waiting {
                    Wait::NextMessage => format!(
                        "no message from the peer for {} s",
                        self.shared.config.idle_timeout.as_secs()
                    ),
                    Wait::RestOfMessage => format!(
                        "no data from the peer for {} s, or a message took longer than {} s",
                        self.shared.config.idle_timeout.as_secs(),
                        self.shared.config.message_timeout.as_secs()
                    ),
                },
            ),
            other => End::Aborted(RejectReason::Protocol, other.to_string()),
        }
    }

    /// Consume one P-DATA-TF PDU of `length` bytes, routing each PDV into `pending`.
    fn p_data(&mut self, length: u32, pending: &mut Pending) -> Result<(), End> {
        let mut remaining = length;
        while remaining > 0 {
            let pdv = self
                .io
                .read_pdv_header(remaining)
                .map_err(|e| self.io_end(e))?;
            remaining -= pdv.data_length as u32 + 6;
            if !self.contexts.contains_key(&pdv.context_id) {
                return Err(End::Aborted(
                    RejectReason::Protocol,
                    format!(
                        "PDV on presentation context {} that was not accepted",
                        pdv.context_id
                    ),
                ));
            }
            match pending {
                Pending::Command { bytes } => {
                    if !pdv.is_command {
                        return Err(End::Aborted(
                            RejectReason::Protocol,
                            "dataset fragment where a command was expected".into(),
                        ));
                    }
                    if bytes.len() + pdv.data_length > dimse::MAX_COMMAND_BYTES {
                        return Err(End::Aborted(
                            RejectReason::Protocol,
                            "command set larger than 64 KiB".into(),
                        ));
                    }
                    self.io
                        .read_into(bytes, pdv.data_length)
                        .map_err(|e| self.io_end(e))?;
                    if pdv.is_last {
                        let command = dimse::decode(bytes).map_err(|e| {
                            End::Aborted(RejectReason::Protocol, format!("bad command set: {e}"))
                        })?;
                        if command.has_dataset {
                            *pending = Pending::Dataset {
                                command,
                                context_id: pdv.context_id,
                                bytes: Vec::new(),
                                overflowed: None,
                                charge: self.shared.budget.charge(),
                            };
                        } else {
                            self.respond_without_dataset(&command, pdv.context_id)?;
                            *pending = Pending::Command { bytes: Vec::new() };
                        }
                    }
                }
                Pending::Dataset {
                    command,
                    context_id,
                    bytes,
                    overflowed,
                    charge,
                } => {
                    if pdv.is_command || pdv.context_id != *context_id {
                        return Err(End::Aborted(
                            RejectReason::Protocol,
                            "command fragment or other context inside a dataset".into(),
                        ));
                    }
                    if overflowed.is_none()
                        && bytes.len() + pdv.data_length > self.shared.config.max_instance_bytes
                    {
                        *overflowed = Some(Overflow::TooLarge);
                    }
                    // Charged before the bytes are read: a dataset that does not fit waits for
                    // other associations to give memory back, then is dropped.
                    if overflowed.is_none() && !charge.grow(pdv.data_length, BUDGET_WAIT) {
                        *overflowed = Some(Overflow::Budget);
                    }
                    if overflowed.is_some() {
                        *bytes = Vec::new();
                        charge.release();
                        self.io
                            .skip(pdv.data_length as u64)
                            .map_err(|e| self.io_end(e))?;
                    } else {
                        self.io
                            .read_into(bytes, pdv.data_length)
                            .map_err(|e| self.io_end(e))?;
                    }
                    if pdv.is_last {
                        let command = std::mem::take(command);
                        let context_id = *context_id;
                        let overflowed = *overflowed;
                        let dataset = std::mem::take(bytes);
                        let mut charge = std::mem::replace(charge, self.shared.budget.charge());
                        *pending = Pending::Command { bytes: Vec::new() };
                        self.respond_to_dataset(
                            &command,
                            context_id,
                            &dataset,
                            overflowed,
                            &mut charge,
                        )?;
                        // The dataset's memory goes back once its instance is stored.
                        drop(charge);
                    }
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, context_id: u8, response: Response<'_>) -> Result<(), End> {
        self.io
            .write_command(context_id, &response.encode())
            .map_err(|e| self.io_end(e))
    }

    fn respond_without_dataset(&mut self, command: &Command, context_id: u8) -> Result<(), End> {
        let (field, status) = match command.command_field {
            dimse::C_ECHO_RQ => {
                self.shared.metrics.echoes.inc();
                (dimse::C_ECHO_RSP, status::SUCCESS)
            }
            other => (other | 0x8000, status::UNRECOGNIZED_OPERATION),
        };
        let class = command.affected_sop_class_uid.clone();
        self.send(
            context_id,
            Response {
                command_field: field,
                message_id_being_responded_to: command.message_id,
                affected_sop_class_uid: class.as_deref(),
                affected_sop_instance_uid: None,
                status,
                error_comment: None,
            },
        )
    }

    fn respond_to_dataset(
        &mut self,
        command: &Command,
        context_id: u8,
        dataset: &[u8],
        overflowed: Option<Overflow>,
        charge: &mut Charge,
    ) -> Result<(), End> {
        let (field, outcome) = if command.command_field == dimse::C_STORE_RQ {
            let outcome = match overflowed {
                Some(Overflow::TooLarge) => Err((
                    RejectReason::TooLarge,
                    format!(
                        "instance exceeds max_instance_bytes ({})",
                        self.shared.config.max_instance_bytes
                    ),
                )),
                Some(Overflow::Budget) => Err((
                    RejectReason::MemoryBudget,
                    format!(
                        "datasets in flight fill the memory budget ({} bytes); retry later",
                        self.shared.budget.limit()
                    ),
                )),
                None => self.store(command, context_id, dataset, charge),
            };
            (dimse::C_STORE_RSP, outcome)
        } else {
            (
                command.command_field | 0x8000,
                Err((
                    RejectReason::UnrecognizedCommand,
                    format!("command {:#06x} is not served", command.command_field),
                )),
            )
        };
        let (status, comment) = match outcome {
            Ok(()) => (status::SUCCESS, None),
            Err((reason, comment)) => {
                let status = reason.store_status();
                self.shared.metrics.reject(reason.label());
                self.refused += 1;
                tracing::warn!(
                    peer = %self.peer,
                    calling_ae = %self.calling_ae,
                    reason = reason.label(),
                    status = format!("{status:#06x}"),
                    detail = %comment,
                    "instance refused"
                );
                (status, Some(comment))
            }
        };
        self.send(
            context_id,
            Response {
                command_field: field,
                message_id_being_responded_to: command.message_id,
                affected_sop_class_uid: command.affected_sop_class_uid.as_deref(),
                affected_sop_instance_uid: command.affected_sop_instance_uid.as_deref(),
                status,
                error_comment: comment.as_deref(),
            },
        )
    }

    /// Check a C-STORE dataset against its command and context, then store it durably. A
    /// deflated dataset's inflated copy is charged to `charge` (the dataset's share of the
    /// memory budget) as it grows.
    fn store(
        &mut self,
        command: &Command,
        context_id: u8,
        dataset: &[u8],
        charge: &mut Charge,
    ) -> Result<(), (RejectReason, String)> {
        let received = Instant::now();
        let Some(context) = self.contexts.get(&context_id) else {
            return Err((
                RejectReason::Protocol,
                "unknown presentation context".into(),
            ));
        };
        let mismatch = |detail: String| (RejectReason::SopMismatch, detail);
        let class = command.affected_sop_class_uid.as_deref().unwrap_or("");
        if class != context.abstract_syntax || !uids::is_storage_class(class) {
            return Err((
                RejectReason::SopClassNotNegotiated,
                format!("SOP class {class} not negotiated on this context"),
            ));
        }
        let Some(encoding) = uids::encoding_of(&context.transfer_syntax) else {
            return Err((
                RejectReason::Protocol,
                "transfer syntax not supported".into(),
            ));
        };
        let identity = dataset::inspect_charged(
            dataset,
            encoding,
            self.shared.config.max_instance_bytes,
            &mut |bytes| charge.grow(bytes, BUDGET_WAIT),
        )
        .map_err(|e| match e {
            DatasetError::InflateOverBudget { .. } => (
                RejectReason::MemoryBudget,
                format!(
                    "inflating: memory budget of {} bytes full; retry later",
                    self.shared.budget.limit()
                ),
            ),
            _ => (RejectReason::Malformed, e.to_string()),
        })?;
        let Identity {
            sop_class_uid,
            sop_instance_uid,
            study_instance_uid,
            series_instance_uid,
            modality,
        } = identity;
        let sop_instance_uid =
            sop_instance_uid.ok_or_else(|| mismatch("no SOP Instance UID (0008,0018)".into()))?;
        if Some(sop_instance_uid.as_str()) != command.affected_sop_instance_uid.as_deref() {
            return Err(mismatch(
                "SOP Instance UID differs from the command's".into(),
            ));
        }
        if sop_class_uid.as_deref() != Some(class) {
            return Err(mismatch("SOP Class UID differs from the command's".into()));
        }
        let study_uid = study_instance_uid
            .ok_or_else(|| mismatch("no Study Instance UID (0020,000D)".into()))?;
        let series_uid = series_instance_uid
            .ok_or_else(|| mismatch("no Series Instance UID (0020,000E)".into()))?;
        for (name, uid) in [
            ("SOP Instance UID", &sop_instance_uid),
            ("Study Instance UID", &study_uid),
            ("Series Instance UID", &series_uid),
        ] {
            if !uids::is_valid_uid(uid) {
                return Err(mismatch(format!("{name} is not a valid UID")));
            }
        }
        if below_disk_floor(self.shared) {
            return Err((
                RejectReason::DiskFloor,
                "free disk space below the configured floor".into(),
            ));
        }
        let outcome = self
            .shared
            .spool
            .store(&IncomingInstance {
                sop_class_uid: class,
                sop_instance_uid: &sop_instance_uid,
                study_uid: &study_uid,
                series_uid: &series_uid,
                modality: modality.as_deref().unwrap_or(""),
                transfer_syntax_uid: &context.transfer_syntax,
                calling_ae: &self.calling_ae,
                called_ae: &self.called_ae,
                dataset,
            })
            .map_err(|e| {
                tracing::error!(error = %e, "storing an instance failed");
                (
                    RejectReason::StoreFailed,
                    "could not store the instance".to_string(),
                )
            })?;
        let metrics = &self.shared.metrics;
        metrics
            .ingest_latency
            .observe(received.elapsed().as_secs_f64());
        match outcome {
            StoreOutcome::Stored => {
                self.stored += 1;
                metrics.instances_received.inc();
                metrics.received_bytes.inc_by(dataset.len() as u64);
                tracing::debug!(
                    study = %log_tag(&study_uid),
                    class = uids::storage_class_name(class),
                    bytes = dataset.len(),
                    "instance stored"
                );
            }
            StoreOutcome::Duplicate => {
                metrics.instances_duplicate.inc();
                tracing::info!(study = %log_tag(&study_uid), "re-sent instance already stored");
            }
        }
        Ok(())
    }
}
