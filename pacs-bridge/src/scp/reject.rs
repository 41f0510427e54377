//! Why the SCP refused an association or an instance: the typed reason access control and
//! the message loop return, which maps to a PS3.8 A-ASSOCIATE-RJ reason or an abort, and whose
//! label counts it in the metrics.

/// Why an association or an instance was refused; the label value in `rejects_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RejectReason {
    CalledAeTitle,
    CallingAeTitle,
    CallingHost,
    /// The calling AE title is bound to a TLS identity (`tls_identity`) and the association
    /// did not come over TLS with a verified client certificate naming it.
    TlsIdentity,
    /// The TLS handshake failed or did not finish in time (no association was requested).
    TlsHandshake,
    ApplicationContext,
    ProtocolVersion,
    AssociationLimit,
    /// Too many connections from addresses of no configured peer are waiting for admission.
    UnauthenticatedLimit,
    /// The datasets in flight across associations filled the memory budget.
    MemoryBudget,
    DiskFloor,
    Malformed,
    SopMismatch,
    TooLarge,
    StoreFailed,
    PduTooLarge,
    Timeout,
    Protocol,
}

impl RejectReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::CalledAeTitle => "called_ae_title",
            Self::CallingAeTitle => "calling_ae_title",
            Self::CallingHost => "calling_host",
            Self::TlsIdentity => "tls_identity",
            Self::TlsHandshake => "tls_handshake",
            Self::ApplicationContext => "application_context",
            Self::ProtocolVersion => "protocol_version",
            Self::AssociationLimit => "association_limit",
            Self::UnauthenticatedLimit => "unauthenticated_limit",
            Self::MemoryBudget => "memory_budget",
            Self::DiskFloor => "disk_floor",
            Self::Malformed => "malformed_dataset",
            Self::SopMismatch => "sop_mismatch",
            Self::TooLarge => "too_large",
            Self::StoreFailed => "store_failed",
            Self::PduTooLarge => "pdu_too_large",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol_error",
        }
    }
}
