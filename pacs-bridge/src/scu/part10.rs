//! Reading a DICOM Part 10 file for sending (PS3.10 section 7.1): the preamble, the file meta
//! group (always explicit VR little endian) walked element by element with every length
//! checked, then the dataset walked by [`crate::dataset`]. The files are our own, but nothing is
//! trusted: a file that does not parse is a permanent failure of that file, never a panic.

use crate::dataset::{self, DatasetError};
use crate::uids;
use std::io::Read;
use std::path::Path;
use thiserror::Error;

/// Preamble (128 bytes) plus "DICM" (PS3.10 section 7.1).
const PREFIX: usize = 132;

/// Why a file cannot be sent. The path is not part of the message: the caller knows it, and
/// outbox file names may carry UIDs that logs must not show.
#[derive(Debug, Error)]
pub enum FileError {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("file of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("not a DICOM Part 10 file (no \"DICM\" after the 128-byte preamble, PS3.10 7.1)")]
    NotPart10,
    #[error("malformed file meta element at offset {offset}: {detail}")]
    Meta { offset: usize, detail: String },
    #[error("file meta group lacks {0} (PS3.10 table 7.1-1)")]
    MissingMeta(&'static str),
    #[error("{0} in the file meta group is not a valid UID (PS3.5 9.1)")]
    BadUid(&'static str),
    #[error("transfer syntax {0} is not one we can check before sending")]
    UnknownTransferSyntax(String),
    #[error("dataset does not parse: {0}")]
    Dataset(#[from] DatasetError),
    #[error("{0} in the dataset differs from the file meta group (PS3.10 7.1)")]
    Mismatch(&'static str),
    #[error("the file changed between reads")]
    Changed,
}

/// What the file meta group says about a file, plus where its dataset starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Media Storage SOP Class UID (0002,0002).
    pub sop_class_uid: String,
    /// Media Storage SOP Instance UID (0002,0003).
    pub sop_instance_uid: String,
    /// Transfer Syntax UID (0002,0010).
    pub transfer_syntax_uid: String,
    pub dataset_offset: usize,
}

/// Read a whole Part 10 file (at most `limit` bytes), check its meta group and dataset, and
/// return both. The dataset's own SOP Class and Instance UIDs must match the meta group's.
pub fn read(path: &Path, limit: u64) -> Result<(Meta, Vec<u8>), FileError> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    if size > limit {
        return Err(FileError::TooLarge { size, limit });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    let meta = parse_meta(&bytes)?;
    let encoding = uids::encoding_of(&meta.transfer_syntax_uid)
        .ok_or_else(|| FileError::UnknownTransferSyntax(meta.transfer_syntax_uid.clone()))?;
    let identity = dataset::inspect(
        &bytes[meta.dataset_offset..],
        encoding,
        usize::try_from(limit).unwrap_or(usize::MAX),
    )?;
    if identity.sop_class_uid.as_deref() != Some(meta.sop_class_uid.as_str()) {
        return Err(FileError::Mismatch("SOP Class UID (0008,0016)"));
    }
    if identity.sop_instance_uid.as_deref() != Some(meta.sop_instance_uid.as_str()) {
        return Err(FileError::Mismatch("SOP Instance UID (0008,0018)"));
    }
    Ok((meta, bytes))
}

/// Walk the file meta group (PS3.10 section 7.1): explicit VR little endian elements of group
/// 0002 after the preamble and "DICM"; the dataset starts at the first element of another group.
pub fn parse_meta(bytes: &[u8]) -> Result<Meta, FileError> {
    if bytes.len() < PREFIX || &bytes[128..PREFIX] != b"DICM" {
        return Err(FileError::NotPart10);
    }
    let mut pos = PREFIX;
    let (mut class, mut instance, mut syntax) = (None, None, None);
    while bytes.len() - pos >= 2 && bytes[pos] == 0x02 && bytes[pos + 1] == 0x00 {
        let bad = |detail: &str| FileError::Meta {
            offset: pos,
            detail: detail.to_string(),
        };
        if bytes.len() - pos < 8 {
            return Err(bad("element header truncated"));
        }
        let element = u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]);
        let vr = [bytes[pos + 4], bytes[pos + 5]];
        if !vr.iter().all(u8::is_ascii_uppercase) {
            return Err(bad("invalid VR"));
        }
        // PS3.5 section 7.1.2: these VRs have two reserved bytes and a 32-bit length.
        let long = matches!(
            &vr,
            b"OB"
                | b"OD"
                | b"OF"
                | b"OL"
                | b"OV"
                | b"OW"
                | b"SQ"
                | b"SV"
                | b"UC"
                | b"UN"
                | b"UR"
                | b"UT"
                | b"UV"
        );
        let (header, length) = if long {
            if bytes.len() - pos < 12 {
                return Err(bad("element header truncated"));
            }
            let length = u32::from_le_bytes([
                bytes[pos + 8],
                bytes[pos + 9],
                bytes[pos + 10],
                bytes[pos + 11],
            ]);
            (12usize, length as usize)
        } else {
            (
                8usize,
                u16::from_le_bytes([bytes[pos + 6], bytes[pos + 7]]) as usize,
            )
        };
        if length == 0xFFFF_FFFF || length > bytes.len() - pos - header {
            return Err(bad("length beyond the end of the file"));
        }
        let value = &bytes[pos + header..pos + header + length];
        let text = || {
            String::from_utf8_lossy(value)
                .trim_end_matches(['\0', ' '])
                .to_string()
        };
        match element {
            0x0002 => class = Some(text()),
            0x0003 => instance = Some(text()),
            0x0010 => syntax = Some(text()),
            _ => {}
        }
        pos += header + length;
    }
    let class = class.ok_or(FileError::MissingMeta(
        "Media Storage SOP Class UID (0002,0002)",
    ))?;
    let instance = instance.ok_or(FileError::MissingMeta(
        "Media Storage SOP Instance UID (0002,0003)",
    ))?;
    let syntax = syntax.ok_or(FileError::MissingMeta("Transfer Syntax UID (0002,0010)"))?;
    for (name, uid) in [
        ("Media Storage SOP Class UID", &class),
        ("Media Storage SOP Instance UID", &instance),
        ("Transfer Syntax UID", &syntax),
    ] {
        if !uids::is_valid_uid(uid) {
            return Err(FileError::BadUid(name));
        }
    }
    Ok(Meta {
        sop_class_uid: class,
        sop_instance_uid: instance,
        transfer_syntax_uid: syntax,
        dataset_offset: pos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(out: &mut Vec<u8>, element: u16, vr: &[u8; 2], value: &[u8]) {
        out.extend([0x02, 0x00]);
        out.extend(element.to_le_bytes());
        out.extend(vr);
        if vr == b"OB" {
            out.extend([0, 0]);
            out.extend((value.len() as u32).to_le_bytes());
        } else {
            out.extend((value.len() as u16).to_le_bytes());
        }
        out.extend(value);
    }

    fn file() -> Vec<u8> {
        let mut bytes = vec![0u8; 128];
        bytes.extend(b"DICM");
        element(&mut bytes, 0x0001, b"OB", &[0, 1]);
        element(&mut bytes, 0x0002, b"UI", b"1.2.840.10008.5.1.4.1.1.66.4\0");
        element(&mut bytes, 0x0003, b"UI", b"1.2.3.4\0");
        element(&mut bytes, 0x0010, b"UI", b"1.2.840.10008.1.2.1\0");
        // (0008,0016) UI, the start of the dataset.
        bytes.extend([0x08, 0x00, 0x16, 0x00, b'U', b'I', 2, 0, b'1', 0]);
        bytes
    }

    #[test]
    fn the_meta_group_gives_uids_and_where_the_dataset_starts() {
        let bytes = file();
        let meta = parse_meta(&bytes).unwrap();
        assert_eq!(meta.sop_class_uid, "1.2.840.10008.5.1.4.1.1.66.4");
        assert_eq!(meta.sop_instance_uid, "1.2.3.4");
        assert_eq!(meta.transfer_syntax_uid, "1.2.840.10008.1.2.1");
        assert_eq!(
            &bytes[meta.dataset_offset..meta.dataset_offset + 2],
            &[0x08, 0x00]
        );
    }

    /// Property: a file cut anywhere before the end of its meta group is refused; cut inside
    /// the dataset, its meta group reads whole (the dataset is not `parse_meta`'s to check).
    #[test]
    fn every_truncation_of_a_meta_group_is_refused() {
        let full = file();
        let whole = parse_meta(&full).unwrap();
        for cut in 0..full.len() {
            let result = parse_meta(&full[..cut]);
            if cut < whole.dataset_offset {
                assert!(result.is_err(), "cut at {cut} read as {result:?}");
            } else {
                assert_eq!(
                    result.as_ref().ok(),
                    Some(&whole),
                    "cut at {cut}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn a_meta_element_declaring_more_than_present_is_refused() {
        let mut bytes = vec![0u8; 128];
        bytes.extend(b"DICM");
        bytes.extend([
            0x02, 0x00, 0x01, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0x7F,
        ]);
        assert!(matches!(parse_meta(&bytes), Err(FileError::Meta { .. })));
    }

    #[test]
    fn a_file_without_dicm_is_not_part10() {
        assert!(matches!(parse_meta(&[0u8; 200]), Err(FileError::NotPart10)));
    }
}
