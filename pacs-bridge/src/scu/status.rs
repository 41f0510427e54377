//! What a C-STORE-RSP status means for the sender (PS3.7 annex C, PS3.4 section B.2.3): delivered,
//! delivered with a warning, worth retrying later, or not worth retrying.

/// The class of a C-STORE-RSP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// 0000: stored.
    Success,
    /// Stored, with a warning the sender should report (PS3.7 C.4, PS3.4 B.2.3): B000 coercion
    /// of data elements, B007 data set does not match SOP class, B006 elements discarded, any
    /// other Bxxx, and the general warnings 0001, 0107 (attribute list error) and 0116
    /// (attribute value out of range).
    Warning,
    /// Not stored, for a reason that may pass: A7xx refused, out of resources (PS3.4 B.2.3),
    /// 0110 processing failure, 0213 resource limitation and 0210 duplicate invocation
    /// (PS3.7 C.5), FE00 cancel (PS3.7 C.3).
    Transient,
    /// Not stored, and sending the same file again will not change that: A9xx data set does
    /// not match SOP class, Cxxx cannot understand (PS3.4 B.2.3), 0122 SOP class not
    /// supported, 0124 not authorized, 0111 duplicate SOP instance, 0211 unrecognized
    /// operation, 0212 mistyped argument, 0117 invalid object instance (PS3.7 C.5), and any
    /// status we do not know (including Pending FFxx, which C-STORE never sends).
    Permanent,
}

impl StatusClass {
    /// Whether the instance was stored (with or without a warning).
    pub fn is_delivered(self) -> bool {
        matches!(self, StatusClass::Success | StatusClass::Warning)
    }
}

/// Classify a C-STORE-RSP status (PS3.7 annex C; PS3.4 table B.2-1).
pub fn classify(status: u16) -> StatusClass {
    match status {
        0x0000 => StatusClass::Success,
        0x0001 | 0x0107 | 0x0116 => StatusClass::Warning,
        0xB000..=0xBFFF => StatusClass::Warning,
        0xA700..=0xA7FF => StatusClass::Transient,
        0x0110 | 0x0210 | 0x0213 | 0xFE00 => StatusClass::Transient,
        _ => StatusClass::Permanent,
    }
}

/// A short name for a status, for messages (PS3.7 annex C, PS3.4 table B.2-1).
pub fn meaning(status: u16) -> &'static str {
    match status {
        0x0000 => "success",
        0x0001 => "warning",
        0x0107 => "warning: attribute list error",
        0x0116 => "warning: attribute value out of range",
        0xB000..=0xBFFF => match status {
            0xB000 => "warning: coercion of data elements",
            0xB006 => "warning: elements discarded",
            0xB007 => "warning: data set does not match SOP class",
            _ => "warning",
        },
        0xA700..=0xA7FF => "refused: out of resources",
        0xA900..=0xA9FF => "error: data set does not match SOP class",
        0xC000..=0xCFFF => "error: cannot understand",
        0x0110 => "processing failure",
        0x0111 => "duplicate SOP instance",
        0x0117 => "invalid object instance",
        0x0122 => "SOP class not supported",
        0x0124 => "not authorized",
        0x0210 => "duplicate invocation",
        0x0211 => "unrecognized operation",
        0x0212 => "mistyped argument",
        0x0213 => "resource limitation",
        0xFE00 => "cancel",
        0xFF00 | 0xFF01 => "pending (not valid for C-STORE)",
        _ => "unknown status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_and_warnings_count_as_delivered() {
        assert_eq!(classify(0x0000), StatusClass::Success);
        for warning in [0xB000, 0xB006, 0xB007, 0xB123, 0x0001, 0x0107, 0x0116] {
            assert_eq!(classify(warning), StatusClass::Warning, "{warning:#06x}");
            assert!(classify(warning).is_delivered());
        }
    }

    #[test]
    fn out_of_resources_and_processing_failures_are_retried() {
        for transient in [0xA700, 0xA701, 0xA7FF, 0x0110, 0x0210, 0x0213, 0xFE00] {
            assert_eq!(
                classify(transient),
                StatusClass::Transient,
                "{transient:#06x}"
            );
            assert!(!classify(transient).is_delivered());
        }
    }

    #[test]
    fn mismatches_unsupported_classes_and_unknown_statuses_are_not_retried() {
        for permanent in [
            0xA900, 0xA9FF, 0xC000, 0xC123, 0x0122, 0x0124, 0x0111, 0x0117, 0x0211, 0x0212, 0xFF00,
            0xFF01, 0xA800, 0x0105, 0xD000,
        ] {
            assert_eq!(
                classify(permanent),
                StatusClass::Permanent,
                "{permanent:#06x}"
            );
        }
    }

    /// Property: every status has exactly one class and a name, and only 0000 and warnings are
    /// delivered.
    #[test]
    fn every_status_is_classified_and_named() {
        for status in 0..=u16::MAX {
            let class = classify(status);
            assert!(!meaning(status).is_empty());
            assert_eq!(
                class.is_delivered(),
                status == 0
                    || (0xB000..=0xBFFF).contains(&status)
                    || [1, 0x107, 0x116].contains(&status)
            );
        }
    }
}
