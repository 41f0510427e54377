//! Why the SCP refused an association or an instance: the typed reason access control and
//! the message loop return, which maps to a PS3.8 A-ASSOCIATE-RJ reason or an abort, and whose
//! label counts it in the metrics.

/// Why an association or an instance was refused; the label value in `rejects_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RejectReason {
    CalledAeTitle,
    CallingAeTitle,
    CallingHost,
    ApplicationContext,
    ProtocolVersion,
    AssociationLimit,
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
            Self::ApplicationContext => "application_context",
            Self::ProtocolVersion => "protocol_version",
            Self::AssociationLimit => "association_limit",
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
