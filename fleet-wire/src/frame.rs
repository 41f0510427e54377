//! A payload on the wire: 4-byte big-endian header length, the JSON header (with `"v"` and
//! `"type"`), then the body. Only chunks and secure-aggregation messages carry a body.

use crate::message::{Message, MessageError};
use crate::{MAX_FRAME_BYTES, MAX_HEADER_BYTES, PROTOCOL_VERSION};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("frame of {0} bytes is shorter than its 4-byte header length")]
    Truncated(usize),
    #[error("header declares {declared} bytes; {available} follow (limit {MAX_HEADER_BYTES})")]
    HeaderLength { declared: usize, available: usize },
    #[error("header is not a JSON object: {0}")]
    Json(String),
    #[error("protocol version {0:?}; this side speaks {PROTOCOL_VERSION}")]
    Version(Option<u64>),
    #[error("{0}")]
    Message(#[from] MessageError),
    #[error("a {0} message carries {1} body bytes; only chunks and sec_agg have a body")]
    UnexpectedBody(&'static str, usize),
}

/// Encode `message` and `body` as one frame.
pub fn encode(message: &Message, body: &[u8]) -> Vec<u8> {
    let mut header = serde_json::to_value(message).unwrap_or_default();
    if let Some(object) = header.as_object_mut() {
        object.insert("v".into(), PROTOCOL_VERSION.into());
    }
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let mut frame = Vec::with_capacity(4 + header.len() + body.len());
    frame.extend((header.len() as u32).to_be_bytes());
    frame.extend(header);
    frame.extend(body);
    frame
}

/// Decode a frame received from outside: bounded, versioned, every field checked
/// ([`Message::validate`]).
pub fn decode(frame: &[u8]) -> Result<(Message, &[u8]), FrameError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(frame.len()));
    }
    let length = frame
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or(FrameError::Truncated(frame.len()))?;
    let available = frame.len() - 4;
    if length > MAX_HEADER_BYTES || length > available {
        return Err(FrameError::HeaderLength {
            declared: length,
            available,
        });
    }
    let (header, body) = frame[4..].split_at(length);
    let mut value: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| FrameError::Json(e.to_string()))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| FrameError::Json("not an object".into()))?;
    match object.remove("v") {
        Some(v) if v.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        other => return Err(FrameError::Version(other.and_then(|v| v.as_u64()))),
    }
    let message: Message =
        serde_json::from_value(value).map_err(|e| FrameError::Json(e.to_string()))?;
    message.validate()?;
    if !body.is_empty() && !matches!(message, Message::Chunk(_) | Message::SecAgg(_)) {
        return Err(FrameError::UnexpectedBody(message.kind(), body.len()));
    }
    Ok((message, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Ack, AckOutcome};

    fn ack() -> Message {
        Message::Ack(Ack {
            round: 3,
            blob: "ab".repeat(32),
            outcome: AckOutcome::Accepted,
            reason: None,
        })
    }

    #[test]
    fn a_frame_round_trips() {
        let frame = encode(&ack(), b"");
        assert_eq!(decode(&frame).unwrap(), (ack(), &b""[..]));
    }

    #[test]
    fn hostile_frames_are_typed_errors() {
        let good = encode(&ack(), b"");
        assert!(matches!(decode(&good[..3]), Err(FrameError::Truncated(3))));
        let mut long = good.clone();
        long[..4].copy_from_slice(&(1u32 << 30).to_be_bytes());
        assert!(matches!(
            decode(&long),
            Err(FrameError::HeaderLength { .. })
        ));
        assert!(matches!(
            decode(&vec![0u8; MAX_FRAME_BYTES + 1]),
            Err(FrameError::TooLarge(_))
        ));
        let other_version = String::from_utf8(good[4..].to_vec())
            .unwrap()
            .replace("\"v\":1", "\"v\":2");
        let mut frame = (other_version.len() as u32).to_be_bytes().to_vec();
        frame.extend(other_version.as_bytes());
        assert_eq!(decode(&frame), Err(FrameError::Version(Some(2))));
        let with_body = encode(&ack(), b"xyz");
        assert_eq!(
            decode(&with_body),
            Err(FrameError::UnexpectedBody("ack", 3))
        );
        let mut junk = 5u32.to_be_bytes().to_vec();
        junk.extend(b"{\"v\":");
        assert!(matches!(decode(&junk), Err(FrameError::Json(_))));
    }

    /// Every prefix and every single-byte change of a valid frame decodes to a value or a
    /// typed error, never a panic.
    #[test]
    fn mutated_frames_never_panic() {
        let frame = encode(&ack(), b"");
        for cut in 0..frame.len() {
            let _ = decode(&frame[..cut]);
        }
        for at in 0..frame.len() {
            for byte in [0u8, b'"', b'}', 0xFF, b'9'] {
                let mut changed = frame.clone();
                changed[at] = byte;
                let _ = decode(&changed);
            }
        }
    }
}
