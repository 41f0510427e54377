//! Why the SCP refused an association or an instance: the typed reason access control and
//! the message loop return, what each one answers on the wire (an A-ASSOCIATE-RJ, a C-STORE
//! failure status, an A-ABORT, or a closed connection), and the label that counts it in the
//! metrics. The conformance statement is rendered from these tables, so what it says is what
//! the SCP sends.

use crate::dimse::status;
use dicom_ul::pdu::{
    AssociationRJResult, AssociationRJServiceProviderASCEReason,
    AssociationRJServiceProviderPresentationReason, AssociationRJServiceUserReason,
    AssociationRJSource,
};

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
    /// The dataset's identity disagrees with its command, or lacks a UID we need.
    SopMismatch,
    /// The command's SOP class is not the one negotiated on its presentation context.
    SopClassNotNegotiated,
    /// A command with a dataset that we do not serve (anything but C-STORE).
    UnrecognizedCommand,
    TooLarge,
    StoreFailed,
    PduTooLarge,
    Timeout,
    Protocol,
}

/// What the SCP sends for a refusal, as the conformance statement lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An A-ASSOCIATE-RJ (PS3.8 9.3.4).
    Reject(AssociationRJResult, AssociationRJSource),
    /// A C-STORE-RSP with this failure status; the association goes on.
    Status(u16),
    /// An A-ABORT from the service provider; the association ends.
    Abort,
    /// The connection is closed without a PDU.
    Close,
}

impl Answer {
    /// The answer in words, an A-ASSOCIATE-RJ with its PS3.8 table 9-21 numbers.
    pub fn describe(&self) -> String {
        use AssociationRJServiceProviderASCEReason as Asce;
        use AssociationRJServiceProviderPresentationReason as Presentation;
        use AssociationRJServiceUserReason as User;
        use AssociationRJSource as Source;
        match self {
            Answer::Reject(result, source) => {
                let result = match result {
                    AssociationRJResult::Permanent => "result 1 (permanent)",
                    AssociationRJResult::Transient => "result 2 (transient)",
                };
                let source = match source {
                    Source::ServiceUser(User::NoReasonGiven) => {
                        "source 1, reason 1 (no reason given)"
                    }
                    Source::ServiceUser(User::ApplicationContextNameNotSupported) => {
                        "source 1, reason 2 (application context name not supported)"
                    }
                    Source::ServiceUser(User::CallingAETitleNotRecognized) => {
                        "source 1, reason 3 (calling AE title not recognized)"
                    }
                    Source::ServiceUser(User::CalledAETitleNotRecognized) => {
                        "source 1, reason 7 (called AE title not recognized)"
                    }
                    Source::ServiceProviderASCE(Asce::ProtocolVersionNotSupported) => {
                        "source 2, reason 2 (protocol version not supported)"
                    }
                    Source::ServiceProviderPresentation(Presentation::TemporaryCongestion) => {
                        "source 3, reason 1 (temporary congestion)"
                    }
                    Source::ServiceProviderPresentation(Presentation::LocalLimitExceeded) => {
                        "source 3, reason 2 (local limit exceeded)"
                    }
                    other => return format!("A-ASSOCIATE-RJ {result}, {other:?}"),
                };
                format!("A-ASSOCIATE-RJ {result}, {source}")
            }
            Answer::Status(code) => format!("C-STORE-RSP status {code:04X}"),
            Answer::Abort => "A-ABORT (service provider)".to_string(),
            Answer::Close => "connection closed without a PDU".to_string(),
        }
    }
}

impl RejectReason {
    /// Every reason, in the order the conformance statement lists them.
    pub const ALL: [RejectReason; 20] = [
        Self::CalledAeTitle,
        Self::CallingAeTitle,
        Self::CallingHost,
        Self::TlsIdentity,
        Self::ApplicationContext,
        Self::ProtocolVersion,
        Self::AssociationLimit,
        Self::UnauthenticatedLimit,
        Self::TlsHandshake,
        Self::DiskFloor,
        Self::TooLarge,
        Self::MemoryBudget,
        Self::Malformed,
        Self::SopMismatch,
        Self::SopClassNotNegotiated,
        Self::UnrecognizedCommand,
        Self::StoreFailed,
        Self::PduTooLarge,
        Self::Timeout,
        Self::Protocol,
    ];

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
            Self::SopClassNotNegotiated => "sop_class_not_negotiated",
            Self::UnrecognizedCommand => "unrecognized_command",
            Self::TooLarge => "too_large",
            Self::StoreFailed => "store_failed",
            Self::PduTooLarge => "pdu_too_large",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol_error",
        }
    }

    /// When this reason applies, in a few words.
    pub fn condition(self) -> &'static str {
        match self {
            Self::CalledAeTitle => "the called AE title is not ours",
            Self::CallingAeTitle => "the calling AE title is not a configured peer",
            Self::CallingHost => "the peer's address is not one bound to its AE title",
            Self::TlsIdentity => {
                "the AE title is bound to a TLS identity and the client certificate does not name it"
            }
            Self::ApplicationContext => "the application context is not the DICOM one",
            Self::ProtocolVersion => "the protocol version lacks bit 0",
            Self::AssociationLimit => "all association slots are taken",
            Self::UnauthenticatedLimit => {
                "too many connections from unknown addresses await admission"
            }
            Self::TlsHandshake => "the TLS handshake failed or did not finish in time",
            Self::DiskFloor => "free disk space is below the configured floor",
            Self::TooLarge => "the dataset exceeds the largest instance accepted",
            Self::MemoryBudget => "the datasets in flight fill the memory budget (retry later)",
            Self::Malformed => "the dataset cannot be parsed",
            Self::SopMismatch => {
                "SOP Class/Instance UID differ from the command's, or a study/series UID is missing or invalid"
            }
            Self::SopClassNotNegotiated => {
                "the command's SOP class is not the one of its presentation context"
            }
            Self::UnrecognizedCommand => "a command other than C-STORE carries a dataset",
            Self::StoreFailed => "the instance could not be written and synced to disk",
            Self::PduTooLarge => "a P-DATA-TF PDU exceeds the Maximum Length we sent",
            Self::Timeout => "the peer is silent too long, or a message takes too long",
            Self::Protocol => {
                "a PDU or command set breaks PS3.7/PS3.8 (unknown context, bad fragment order)"
            }
        }
    }

    /// What the SCP answers for this reason.
    pub fn answer(self) -> Answer {
        use AssociationRJResult::{Permanent, Transient};
        use AssociationRJSource::{ServiceProviderASCE, ServiceProviderPresentation, ServiceUser};
        match self {
            Self::CalledAeTitle => Answer::Reject(
                Permanent,
                ServiceUser(AssociationRJServiceUserReason::CalledAETitleNotRecognized),
            ),
            Self::CallingAeTitle | Self::CallingHost | Self::TlsIdentity => Answer::Reject(
                Permanent,
                ServiceUser(AssociationRJServiceUserReason::CallingAETitleNotRecognized),
            ),
            Self::ApplicationContext => Answer::Reject(
                Permanent,
                ServiceUser(AssociationRJServiceUserReason::ApplicationContextNameNotSupported),
            ),
            Self::ProtocolVersion => Answer::Reject(
                Permanent,
                ServiceProviderASCE(
                    AssociationRJServiceProviderASCEReason::ProtocolVersionNotSupported,
                ),
            ),
            Self::AssociationLimit => Answer::Reject(
                Transient,
                ServiceProviderPresentation(
                    AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
                ),
            ),
            // Refused before the association when the disk is already full, per instance once
            // it fills during one; this is the association-level answer.
            Self::DiskFloor => Answer::Reject(
                Transient,
                ServiceProviderPresentation(
                    AssociationRJServiceProviderPresentationReason::TemporaryCongestion,
                ),
            ),
            Self::UnauthenticatedLimit | Self::TlsHandshake => Answer::Close,
            Self::TooLarge | Self::MemoryBudget | Self::StoreFailed => {
                Answer::Status(status::OUT_OF_RESOURCES)
            }
            Self::Malformed => Answer::Status(status::CANNOT_UNDERSTAND),
            Self::SopMismatch => Answer::Status(status::DATASET_DOES_NOT_MATCH),
            Self::SopClassNotNegotiated => Answer::Status(status::SOP_CLASS_NOT_SUPPORTED),
            Self::UnrecognizedCommand => Answer::Status(status::UNRECOGNIZED_OPERATION),
            Self::PduTooLarge | Self::Timeout | Self::Protocol => Answer::Abort,
        }
    }

    /// The C-STORE status an instance refused for this reason gets. Reasons that end the
    /// association elsewhere still map to a status, for a refusal found inside a message:
    /// a full disk (A700) and a protocol error in the dataset's context (C000).
    pub fn store_status(self) -> u16 {
        match self.answer() {
            Answer::Status(code) => code,
            _ if self == Self::DiskFloor => status::OUT_OF_RESOURCES,
            _ => status::CANNOT_UNDERSTAND,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_once_with_its_own_label() {
        let mut labels: Vec<_> = RejectReason::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RejectReason::ALL.len());
    }

    #[test]
    fn instance_refusals_keep_the_association() {
        assert_eq!(RejectReason::TooLarge.store_status(), 0xA700);
        assert_eq!(RejectReason::SopClassNotNegotiated.store_status(), 0x0122);
        assert_eq!(RejectReason::DiskFloor.store_status(), 0xA700);
        assert_eq!(RejectReason::Protocol.store_status(), 0xC000);
        assert!(matches!(
            RejectReason::AssociationLimit.answer(),
            Answer::Reject(AssociationRJResult::Transient, _)
        ));
    }
}
