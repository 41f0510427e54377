//! The bounds every field received keeps: plain ids that are safe MQTT topic levels,
//! lower-case SHA-256 hex, printable text of a bounded length, finite numbers, and blob sizes
//! whose chunk counts agree.

use crate::{CHUNK_BYTES, MAX_BLOB_BYTES};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MessageError {
    #[error("{field}: {reason}")]
    Field { field: &'static str, reason: String },
}

pub(crate) fn bad(field: &'static str, reason: impl Into<String>) -> MessageError {
    MessageError::Field {
        field,
        reason: reason.into(),
    }
}

/// A device, federation or model id: 1 to 64 of `A-Z a-z 0-9 . _ -`, so that it is a safe
/// MQTT topic level and never a wildcard.
pub fn check_id(id: &str) -> Result<(), MessageError> {
    if id.is_empty() || id.len() > 64 {
        return Err(bad("id", format!("{} characters (1 to 64)", id.len())));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad("id", "only A-Z a-z 0-9 . _ - are allowed"));
    }
    Ok(())
}

pub(crate) fn check_field_id(field: &'static str, id: &str) -> Result<(), MessageError> {
    check_id(id).map_err(|e| match e {
        MessageError::Field { reason, .. } => bad(field, reason),
    })
}

/// Lower-case hex SHA-256.
pub fn check_sha256(field: &'static str, hash: &str) -> Result<(), MessageError> {
    if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad(field, "not a lower-case hex SHA-256"));
    }
    Ok(())
}

pub(crate) fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), MessageError> {
    if text.len() > max || text.chars().any(char::is_control) {
        return Err(bad(field, format!("at most {max} printable characters")));
    }
    Ok(())
}

pub(crate) fn check_finite(field: &'static str, value: f64) -> Result<(), MessageError> {
    if !value.is_finite() {
        return Err(bad(field, "not a finite number"));
    }
    Ok(())
}

/// Chunk count of a blob of `size` bytes.
pub fn chunk_count(size: u64) -> u32 {
    size.div_ceil(CHUNK_BYTES as u64) as u32
}

pub(crate) fn check_blob_shape(size: u64, count: u32) -> Result<(), MessageError> {
    if size == 0 || size > MAX_BLOB_BYTES {
        return Err(bad("size", format!("{size} bytes (1 to {MAX_BLOB_BYTES})")));
    }
    if count != chunk_count(size) {
        return Err(bad(
            "count",
            format!(
                "{count} chunks for {size} bytes; expected {}",
                chunk_count(size)
            ),
        ));
    }
    Ok(())
}
