//! DIMSE command sets (PS3.7 section 9.3 and annex E): decoding the requests we serve and
//! encoding their responses (the SCP), and encoding C-STORE-RQ and decoding its response (the
//! SCU). Command sets are always implicit VR little endian.

use thiserror::Error;

/// Command Field values (PS3.7 section E.1).
pub const C_STORE_RQ: u16 = 0x0001;
pub const C_STORE_RSP: u16 = 0x8001;
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
/// Command Data Set Type value meaning "no dataset follows".
pub const NO_DATASET: u16 = 0x0101;

/// Status codes we send (PS3.7 annex C and PS3.4 B.2.3).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: Out of Resources.
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: Data Set does not match SOP Class.
    pub const DATASET_DOES_NOT_MATCH: u16 = 0xA900;
    /// Error: Cannot understand.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Failure: unrecognized operation (PS3.7 C.5.6).
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    /// Failure: SOP class not supported (PS3.7 C.5.9).
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
}

/// Largest command set we accept; real ones are a few hundred bytes.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("command set truncated at offset {offset}")]
    Truncated { offset: usize },
    #[error(
        "command element (0000,{element:04X}) declares {declared} bytes but {available} remain"
    )]
    LengthBeyondEnd {
        element: u16,
        declared: u32,
        available: usize,
    },
    #[error("command set holds a non-command element ({group:04X},{element:04X})")]
    NotCommandGroup { group: u16, element: u16 },
    #[error("command set lacks (0000,{0:04X})")]
    Missing(u16),
    #[error("command element (0000,{element:04X}) has {length} bytes where 2 were expected")]
    BadUs { element: u16, length: u32 },
}

/// The fields of a request command that we act upon.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Command {
    pub command_field: u16,
    pub message_id: u16,
    pub affected_sop_class_uid: Option<String>,
    pub affected_sop_instance_uid: Option<String>,
    pub has_dataset: bool,
    pub move_originator_ae: Option<String>,
}

/// Walk the elements of a command set, checking each declared length against the bytes present,
/// and hand each (element number, value) to `visit`. Command sets are implicit VR little
/// endian and hold group 0000 only (PS3.7 section 6.3.1).
fn walk(
    bytes: &[u8],
    mut visit: impl FnMut(u16, &[u8]) -> Result<(), CommandError>,
) -> Result<(), CommandError> {
    let mut pos = 0usize;
    while pos < bytes.len() {
        if bytes.len() - pos < 8 {
            return Err(CommandError::Truncated { offset: pos });
        }
        let group = u16::from_le_bytes([bytes[pos], bytes[pos + 1]]);
        let element = u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]);
        let length = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]);
        pos += 8;
        if group != 0 {
            return Err(CommandError::NotCommandGroup { group, element });
        }
        let available = bytes.len() - pos;
        if length as usize > available {
            return Err(CommandError::LengthBeyondEnd {
                element,
                declared: length,
                available,
            });
        }
        let value = &bytes[pos..pos + length as usize];
        pos += length as usize;
        visit(element, value)?;
    }
    Ok(())
}

/// A US value of exactly two bytes.
fn us(element: u16, value: &[u8]) -> Result<u16, CommandError> {
    if value.len() != 2 {
        return Err(CommandError::BadUs {
            element,
            length: value.len() as u32,
        });
    }
    Ok(u16::from_le_bytes([value[0], value[1]]))
}

/// A text value with its padding (NUL or space) and leading spaces removed.
fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .trim_end_matches(['\0', ' '])
        .trim_start()
        .to_string()
}

/// Decode a command set, checking each declared length against the bytes present.
pub fn decode(bytes: &[u8]) -> Result<Command, CommandError> {
    let mut command_field = None;
    let mut message_id = None;
    let mut data_set_type = None;
    let mut cmd = Command::default();
    walk(bytes, |element, value| {
        match element {
            0x0002 => cmd.affected_sop_class_uid = Some(text(value)),
            0x0100 => command_field = Some(us(element, value)?),
            0x0110 => message_id = Some(us(element, value)?),
            0x0800 => data_set_type = Some(us(element, value)?),
            0x1000 => cmd.affected_sop_instance_uid = Some(text(value)),
            0x1030 => cmd.move_originator_ae = Some(text(value)),
            _ => {}
        }
        Ok(())
    })?;
    cmd.command_field = command_field.ok_or(CommandError::Missing(0x0100))?;
    cmd.message_id = message_id.ok_or(CommandError::Missing(0x0110))?;
    cmd.has_dataset = data_set_type.ok_or(CommandError::Missing(0x0800))? != NO_DATASET;
    Ok(cmd)
}

/// The fields of a response command that a requester acts upon (PS3.7 section 9.3.1.2 for
/// C-STORE-RSP).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResponseFields {
    pub command_field: u16,
    pub message_id_being_responded_to: u16,
    pub affected_sop_class_uid: Option<String>,
    pub affected_sop_instance_uid: Option<String>,
    pub has_dataset: bool,
    pub status: u16,
    /// Error Comment (0000,0902), when the peer sent one.
    pub error_comment: Option<String>,
}

/// Decode a response command set, checking each declared length against the bytes present.
pub fn decode_response(bytes: &[u8]) -> Result<ResponseFields, CommandError> {
    let mut command_field = None;
    let mut responded_to = None;
    let mut data_set_type = None;
    let mut status = None;
    let mut rsp = ResponseFields::default();
    walk(bytes, |element, value| {
        match element {
            0x0002 => rsp.affected_sop_class_uid = Some(text(value)),
            0x0100 => command_field = Some(us(element, value)?),
            0x0120 => responded_to = Some(us(element, value)?),
            0x0800 => data_set_type = Some(us(element, value)?),
            0x0900 => status = Some(us(element, value)?),
            0x0902 => rsp.error_comment = Some(text(value)),
            0x1000 => rsp.affected_sop_instance_uid = Some(text(value)),
            _ => {}
        }
        Ok(())
    })?;
    rsp.command_field = command_field.ok_or(CommandError::Missing(0x0100))?;
    rsp.message_id_being_responded_to = responded_to.ok_or(CommandError::Missing(0x0120))?;
    rsp.has_dataset = data_set_type.ok_or(CommandError::Missing(0x0800))? != NO_DATASET;
    rsp.status = status.ok_or(CommandError::Missing(0x0900))?;
    Ok(rsp)
}

/// Priority (0000,0700) of a request (PS3.7 section 9.3.1.1): we always ask for MEDIUM.
pub const PRIORITY_MEDIUM: u16 = 0x0000;

/// A C-STORE-RQ command set to encode (PS3.7 section 9.3.1.1).
#[derive(Debug, Clone)]
pub struct StoreRequest<'a> {
    pub message_id: u16,
    pub affected_sop_class_uid: &'a str,
    pub affected_sop_instance_uid: &'a str,
}

impl StoreRequest<'_> {
    /// Encode as implicit VR little endian, elements in tag order, group length first
    /// (PS3.7 section 6.3.1 and E.1). A dataset always follows a C-STORE-RQ.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(160);
        put_text(&mut body, 0x0002, self.affected_sop_class_uid, 0);
        put_us(&mut body, 0x0100, C_STORE_RQ);
        put_us(&mut body, 0x0110, self.message_id);
        put_us(&mut body, 0x0700, PRIORITY_MEDIUM);
        // Command Data Set Type: any value other than 0101 means a dataset follows.
        put_us(&mut body, 0x0800, 0x0000);
        put_text(&mut body, 0x1000, self.affected_sop_instance_uid, 0);
        with_group_length(body)
    }
}

/// A C-ECHO-RQ command set to encode (PS3.7 section 9.3.5.1): no dataset follows.
#[derive(Debug, Clone)]
pub struct EchoRequest {
    pub message_id: u16,
}

impl EchoRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(64);
        put_text(&mut body, 0x0002, crate::uids::VERIFICATION, 0);
        put_us(&mut body, 0x0100, C_ECHO_RQ);
        put_us(&mut body, 0x0110, self.message_id);
        put_us(&mut body, 0x0800, NO_DATASET);
        with_group_length(body)
    }
}

/// Prefix a command body with its Command Group Length (0000,0000), UL.
fn with_group_length(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 12);
    out.extend(0u16.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend(4u32.to_le_bytes());
    out.extend((body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

/// A response command set to encode.
#[derive(Debug, Clone)]
pub struct Response<'a> {
    pub command_field: u16,
    pub message_id_being_responded_to: u16,
    pub affected_sop_class_uid: Option<&'a str>,
    pub affected_sop_instance_uid: Option<&'a str>,
    pub status: u16,
    /// Error Comment (0000,0902), LO: at most 64 characters, cut if longer.
    pub error_comment: Option<&'a str>,
}

impl Response<'_> {
    /// Encode as implicit VR little endian, with the group length first (PS3.7 E.1).
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(160);
        if let Some(uid) = self.affected_sop_class_uid {
            put_text(&mut body, 0x0002, uid, 0);
        }
        put_us(&mut body, 0x0100, self.command_field);
        put_us(&mut body, 0x0120, self.message_id_being_responded_to);
        put_us(&mut body, 0x0800, NO_DATASET);
        put_us(&mut body, 0x0900, self.status);
        if let Some(comment) = self.error_comment {
            let cut: String = comment
                .chars()
                .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '\\')
                .take(64)
                .collect();
            put_text(&mut body, 0x0902, &cut, b' ');
        }
        if let Some(uid) = self.affected_sop_instance_uid {
            put_text(&mut body, 0x1000, uid, 0);
        }
        with_group_length(body)
    }
}

fn put_us(out: &mut Vec<u8>, element: u16, value: u16) {
    out.extend(0u16.to_le_bytes());
    out.extend(element.to_le_bytes());
    out.extend(2u32.to_le_bytes());
    out.extend(value.to_le_bytes());
}

/// A text value padded to even length with `pad` (NUL for UI, space for LO).
fn put_text(out: &mut Vec<u8>, element: u16, value: &str, pad: u8) {
    let padded_len = value.len() + value.len() % 2;
    out.extend(0u16.to_le_bytes());
    out.extend(element.to_le_bytes());
    out.extend((padded_len as u32).to_le_bytes());
    out.extend(value.as_bytes());
    if value.len() % 2 == 1 {
        out.push(pad);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_rq() -> Vec<u8> {
        let mut body = Vec::new();
        put_text(&mut body, 0x0002, "1.2.840.10008.5.1.4.1.1.2", 0);
        put_us(&mut body, 0x0100, C_STORE_RQ);
        put_us(&mut body, 0x0110, 7);
        put_us(&mut body, 0x0700, 0);
        put_us(&mut body, 0x0800, 0x0000);
        put_text(&mut body, 0x1000, "1.2.3.4.5", 0);
        body
    }

    #[test]
    fn a_store_request_decodes_with_padding_removed() {
        let cmd = decode(&store_rq()).unwrap();
        assert_eq!(cmd.command_field, C_STORE_RQ);
        assert_eq!(cmd.message_id, 7);
        assert!(cmd.has_dataset);
        assert_eq!(
            cmd.affected_sop_class_uid.as_deref(),
            Some("1.2.840.10008.5.1.4.1.1.2")
        );
        assert_eq!(cmd.affected_sop_instance_uid.as_deref(), Some("1.2.3.4.5"));
    }

    #[test]
    fn a_response_round_trips_through_the_decoder() {
        let rsp = Response {
            command_field: C_STORE_RSP,
            message_id_being_responded_to: 7,
            affected_sop_class_uid: Some("1.2.840.10008.5.1.4.1.1.2"),
            affected_sop_instance_uid: Some("1.2.3"),
            status: status::CANNOT_UNDERSTAND,
            error_comment: Some("odd"),
        };
        let bytes = rsp.encode();
        assert_eq!(bytes.len() % 2, 0);
        let back = decode(&[&bytes[..], &[0, 0, 0x10, 0x01, 2, 0, 0, 0, 1, 0]].concat()).unwrap();
        assert_eq!(back.command_field, C_STORE_RSP);
        assert_eq!(back.affected_sop_instance_uid.as_deref(), Some("1.2.3"));
        assert!(!back.has_dataset);
    }

    /// Property: every response we can encode decodes to the same fields (round trip), for
    /// UIDs and comments of every length up to their limits.
    #[test]
    fn responses_round_trip_for_all_lengths() {
        for len in 1..=64usize {
            let uid: String = "1.2.840.10008.5.1.4.1.1.2.99999999999999999999999999999999999999999"
                .chars()
                .take(len)
                .collect();
            let uid = uid.trim_end_matches('.').to_string();
            let comment = "x".repeat(len + 10);
            let rsp = Response {
                command_field: C_STORE_RSP,
                message_id_being_responded_to: len as u16,
                affected_sop_class_uid: Some(&uid),
                affected_sop_instance_uid: Some(&uid),
                status: 0xA700 + len as u16,
                error_comment: Some(&comment),
            };
            let mut bytes = rsp.encode();
            bytes.extend([0, 0, 0x10, 0x01, 2, 0, 0, 0, 1, 0]);
            let back = decode(&bytes).unwrap();
            assert_eq!(back.affected_sop_class_uid.as_deref(), Some(uid.as_str()));
            assert_eq!(
                back.affected_sop_instance_uid.as_deref(),
                Some(uid.as_str())
            );
            assert_eq!(back.command_field, C_STORE_RSP);
        }
    }

    /// (element, start, end) of each element of an encoded command set.
    fn element_spans(bytes: &[u8]) -> Vec<(u16, usize, usize)> {
        let mut spans = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let element = u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]);
            let length = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap());
            spans.push((element, pos, pos + 8 + length as usize));
            pos += 8 + length as usize;
        }
        spans
    }

    /// Property: a command set cut inside an element is refused as truncated; cut between two
    /// elements (which PS3.7 lets no one tell from a shorter command set) it is refused for
    /// what it lacks, or reads exactly the elements before the cut.
    #[test]
    fn every_truncation_of_a_command_is_refused_or_reads_only_what_was_sent() {
        let full = store_rq();
        let whole = decode(&full).unwrap();
        let spans = element_spans(&full);
        let kept =
            |cut: usize, element: u16| spans.iter().any(|(e, _, end)| *e == element && *end <= cut);
        let mut read = 0;
        for cut in 0..full.len() {
            let result = decode(&full[..cut]);
            let at_boundary = cut == 0 || spans.iter().any(|(_, _, end)| *end == cut);
            match result {
                Err(CommandError::Truncated { .. } | CommandError::LengthBeyondEnd { .. })
                    if !at_boundary => {}
                Err(CommandError::Missing(_)) if at_boundary => {}
                Ok(cmd) if at_boundary => {
                    read += 1;
                    let expected = Command {
                        affected_sop_class_uid: whole
                            .affected_sop_class_uid
                            .clone()
                            .filter(|_| kept(cut, 0x0002)),
                        affected_sop_instance_uid: whole
                            .affected_sop_instance_uid
                            .clone()
                            .filter(|_| kept(cut, 0x1000)),
                        ..whole.clone()
                    };
                    assert_eq!(cmd, expected, "cut at {cut}");
                }
                other => panic!("cut at {cut} of {}: {other:?}", full.len()),
            }
        }
        // Only the cut just before the last (optional) element reads.
        assert_eq!(read, 1);
    }

    #[test]
    fn a_command_declaring_more_than_present_is_refused() {
        let mut bytes = store_rq();
        bytes.extend([0, 0, 0x00, 0x10, 0xFF, 0xFF, 0xFF, 0x7F]);
        assert!(matches!(
            decode(&bytes),
            Err(CommandError::LengthBeyondEnd { .. })
        ));
    }

    #[test]
    fn a_command_without_a_command_field_is_refused() {
        let mut body = Vec::new();
        put_us(&mut body, 0x0110, 1);
        put_us(&mut body, 0x0800, NO_DATASET);
        assert_eq!(decode(&body), Err(CommandError::Missing(0x0100)));
    }
    /// Property: every C-STORE-RQ we encode decodes (with the SCP's decoder) to the same
    /// fields, for UIDs of every length up to 64 characters and message IDs across the range.
    #[test]
    fn store_requests_round_trip_through_the_scp_decoder() {
        let long = "1.2.840.10008.5.1.4.1.1.2.99999999999999999999999999999999999999999";
        for len in 1..=64usize {
            let uid = long[..len].trim_end_matches('.').to_string();
            let message_id = (len as u16).wrapping_mul(1021);
            let bytes = StoreRequest {
                message_id,
                affected_sop_class_uid: "1.2.840.10008.5.1.4.1.1.66.4",
                affected_sop_instance_uid: &uid,
            }
            .encode();
            assert_eq!(bytes.len() % 2, 0);
            let declared = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            assert_eq!(declared as usize, bytes.len() - 12, "group length");
            let back = decode(&bytes).unwrap();
            assert_eq!(back.command_field, C_STORE_RQ);
            assert_eq!(back.message_id, message_id);
            assert!(back.has_dataset);
            assert_eq!(
                back.affected_sop_class_uid.as_deref(),
                Some("1.2.840.10008.5.1.4.1.1.66.4")
            );
            assert_eq!(
                back.affected_sop_instance_uid.as_deref(),
                Some(uid.as_str())
            );
        }
    }

    /// Property: every response the SCP encodes decodes with the requester's decoder to the
    /// same status, message ID, UIDs and (cut) comment.
    #[test]
    fn responses_round_trip_through_the_response_decoder() {
        for (i, status) in [0x0000u16, 0xB000, 0xA700, 0xA900, 0xC000, 0x0122]
            .into_iter()
            .enumerate()
        {
            let comment = "y".repeat(i * 20 + 1);
            let rsp = Response {
                command_field: C_STORE_RSP,
                message_id_being_responded_to: i as u16 + 1,
                affected_sop_class_uid: Some("1.2.840.10008.5.1.4.1.1.88.22"),
                affected_sop_instance_uid: Some("1.2.3.4"),
                status,
                error_comment: Some(&comment),
            };
            let back = decode_response(&rsp.encode()).unwrap();
            assert_eq!(back.command_field, C_STORE_RSP);
            assert_eq!(back.message_id_being_responded_to, i as u16 + 1);
            assert_eq!(back.status, status);
            assert!(!back.has_dataset);
            assert_eq!(back.affected_sop_instance_uid.as_deref(), Some("1.2.3.4"));
            let cut: String = comment.chars().take(64).collect();
            assert_eq!(back.error_comment.as_deref(), Some(cut.as_str()));
        }
    }

    #[test]
    fn a_response_without_a_status_is_refused() {
        let mut body = Vec::new();
        put_us(&mut body, 0x0100, C_STORE_RSP);
        put_us(&mut body, 0x0120, 1);
        put_us(&mut body, 0x0800, NO_DATASET);
        assert_eq!(decode_response(&body), Err(CommandError::Missing(0x0900)));
    }

    /// Property: a response cut inside an element is refused as truncated; cut between two
    /// elements it is refused for what it lacks, or reads exactly the elements before the cut.
    #[test]
    fn every_truncation_of_a_response_is_refused_or_reads_only_what_was_sent() {
        let full = Response {
            command_field: C_STORE_RSP,
            message_id_being_responded_to: 3,
            affected_sop_class_uid: Some("1.2.840.10008.5.1.4.1.1.2"),
            affected_sop_instance_uid: Some("1.2.3"),
            status: 0,
            error_comment: Some("fine"),
        }
        .encode();
        let whole = decode_response(&full).unwrap();
        let spans = element_spans(&full);
        let kept =
            |cut: usize, element: u16| spans.iter().any(|(e, _, end)| *e == element && *end <= cut);
        let mut read = 0;
        for cut in 0..full.len() {
            let result = decode_response(&full[..cut]);
            let at_boundary = cut == 0 || spans.iter().any(|(_, _, end)| *end == cut);
            match result {
                Err(CommandError::Truncated { .. } | CommandError::LengthBeyondEnd { .. })
                    if !at_boundary => {}
                Err(CommandError::Missing(_)) if at_boundary => {}
                Ok(rsp) if at_boundary => {
                    read += 1;
                    let expected = ResponseFields {
                        affected_sop_class_uid: whole
                            .affected_sop_class_uid
                            .clone()
                            .filter(|_| kept(cut, 0x0002)),
                        error_comment: whole.error_comment.clone().filter(|_| kept(cut, 0x0902)),
                        affected_sop_instance_uid: whole
                            .affected_sop_instance_uid
                            .clone()
                            .filter(|_| kept(cut, 0x1000)),
                        ..whole.clone()
                    };
                    assert_eq!(rsp, expected, "cut at {cut}");
                }
                other => panic!("cut at {cut} of {}: {other:?}", full.len()),
            }
        }
        // The cuts after the status and after the error comment read.
        assert_eq!(read, 2);
    }
}
