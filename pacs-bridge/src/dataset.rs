//! A bounded walker over an encoded dataset (PS3.5 section 7): it checks that every element,
//! item and fragment fits in the bytes that are there before looking at it, and pulls out the
//! attributes that identify an instance. It never allocates on a declared length, so a dataset
//! declaring gigabytes it does not carry is refused instead of acknowledged.
//!
//! It validates structure only; values are stored as received.

use crate::uids::Encoding;
use std::io::Read;
use thiserror::Error;

/// Nesting limit for sequences and items; deeper datasets are refused.
const MAX_DEPTH: usize = 64;

/// Tags of the delimitation items (PS3.5 section 7.5).
const ITEM: u32 = 0xFFFE_E000;
const ITEM_DELIMITATION: u32 = 0xFFFE_E00D;
const SEQUENCE_DELIMITATION: u32 = 0xFFFE_E0DD;
const PIXEL_DATA: u32 = 0x7FE0_0010;
const UNDEFINED: u32 = 0xFFFF_FFFF;

const SOP_CLASS_UID: u32 = 0x0008_0016;
const SOP_INSTANCE_UID: u32 = 0x0008_0018;
const MODALITY: u32 = 0x0008_0060;
const STUDY_INSTANCE_UID: u32 = 0x0020_000D;
const SERIES_INSTANCE_UID: u32 = 0x0020_000E;

/// Why a dataset was refused. Offsets are in the (inflated) dataset bytes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DatasetError {
    #[error("element ({group:04X},{element:04X}) at offset {offset} declares {declared} bytes but only {available} remain")]
    LengthBeyondEnd {
        group: u16,
        element: u16,
        offset: usize,
        declared: u64,
        available: usize,
    },
    #[error("dataset ends inside an element header at offset {offset}")]
    TruncatedHeader { offset: usize },
    #[error("invalid VR {vr:?} for ({group:04X},{element:04X}) at offset {offset}")]
    InvalidVr {
        group: u16,
        element: u16,
        offset: usize,
        vr: [u8; 2],
    },
    #[error("undefined length not allowed for ({group:04X},{element:04X}) at offset {offset}")]
    UndefinedLength {
        group: u16,
        element: u16,
        offset: usize,
    },
    #[error(
        "unexpected ({group:04X},{element:04X}) at offset {offset} where an item was expected"
    )]
    ExpectedItem {
        group: u16,
        element: u16,
        offset: usize,
    },
    #[error("sequence or item left open at the end of the dataset")]
    Unterminated,
    #[error("stray delimiter ({group:04X},{element:04X}) at offset {offset}")]
    StrayDelimiter {
        group: u16,
        element: u16,
        offset: usize,
    },
    #[error("sequences nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("element ({group:04X},{element:04X}) at offset {offset} has {length} bytes, not a multiple of the {size}-byte values of its VR")]
    LengthNotMultiple {
        group: u16,
        element: u16,
        offset: usize,
        length: u32,
        size: u32,
    },
    #[error("({group:04X},{element:04X}) at offset {offset} is UN of undefined length (an implicit VR sequence, PS3.5 6.2.2), which the DICOM parser misreads")]
    UndefinedLengthUn {
        group: u16,
        element: u16,
        offset: usize,
    },
    #[error("deflated dataset could not be inflated: {0}")]
    Inflate(String),
    #[error("inflated dataset exceeds the limit of {limit} bytes")]
    InflatedTooLarge { limit: usize },
    #[error("inflating the deflated dataset past {inflated} bytes would exceed the memory budget")]
    InflateOverBudget { inflated: usize },
    #[error("empty dataset")]
    Empty,
}

/// The attributes that identify an instance, taken from the top level of its dataset.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sop_class_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    pub study_instance_uid: Option<String>,
    pub series_instance_uid: Option<String>,
    pub modality: Option<String>,
}

/// Walk `bytes`, encoded as `encoding`, and return its identifying attributes. A deflated dataset
/// is inflated first, refusing to grow beyond `inflate_limit` bytes. This is ingest's gate: it
/// accepts every structure PS3.5 allows.
pub fn inspect(
    bytes: &[u8],
    encoding: Encoding,
    inflate_limit: usize,
) -> Result<Identity, DatasetError> {
    inspect_charged(bytes, encoding, inflate_limit, &mut |_| true)
}

/// [`inspect`] that asks `reserve(n)` before the inflated copy of a deflated dataset grows by
/// `n` bytes of memory, and stops with [`DatasetError::InflateOverBudget`] when it says no: the
/// SCP charges the copy to its memory budget for datasets in flight.
pub fn inspect_charged(
    bytes: &[u8],
    encoding: Encoding,
    inflate_limit: usize,
    reserve: &mut dyn FnMut(usize) -> bool,
) -> Result<Identity, DatasetError> {
    walk(bytes, encoding, inflate_limit, Gate::Ingest, reserve)
}

/// [`inspect`] for a dataset dicom-object will parse next: it also refuses the structures that
/// parser reads differently from PS3.5, so that every length the parser trusts is one the
/// walker checked (see `tests/walker_agrees_with_parser.rs`).
pub fn inspect_before_parse(
    bytes: &[u8],
    encoding: Encoding,
    inflate_limit: usize,
) -> Result<Identity, DatasetError> {
    walk(bytes, encoding, inflate_limit, Gate::Parser, &mut |_| true)
}

/// Which rules a walk applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    /// PS3.5 as written.
    Ingest,
    /// PS3.5 less what dicom-object misreads.
    Parser,
}

fn walk(
    bytes: &[u8],
    encoding: Encoding,
    inflate_limit: usize,
    gate: Gate,
    reserve: &mut dyn FnMut(usize) -> bool,
) -> Result<Identity, DatasetError> {
    if bytes.is_empty() {
        return Err(DatasetError::Empty);
    }
    match encoding {
        Encoding::DeflatedExplicitLittle => {
            let inflated = inflate(bytes, inflate_limit, reserve)?;
            walk(
                &inflated,
                Encoding::ExplicitLittle,
                inflate_limit,
                gate,
                reserve,
            )
        }
        _ => {
            let mut walker = Walker {
                bytes,
                pos: 0,
                encoding,
                identity: Identity::default(),
                marks: None,
                gate,
            };
            walker.elements(bytes.len(), 0, false)?;
            Ok(walker.identity)
        }
    }
}

/// Raw deflate (PS3.5 A.5: RFC 1951 without zlib header), bounded by `limit` bytes and by
/// `reserve`, asked for every byte of capacity before the copy grows (by doubling, so the
/// memory held is at most twice what was inflated).
fn inflate(
    bytes: &[u8],
    limit: usize,
    reserve: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<u8>, DatasetError> {
    let mut decoder = flate2::read::DeflateDecoder::new(bytes).take(limit as u64 + 1);
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = decoder
            .read(&mut chunk)
            .map_err(|e| DatasetError::Inflate(e.to_string()))?;
        if n == 0 {
            break;
        }
        let needed = out.len() + n;
        if needed > limit {
            return Err(DatasetError::InflatedTooLarge { limit });
        }
        if needed > out.capacity() {
            let capacity = needed.max(out.capacity() * 2).min(limit);
            if !reserve(capacity - out.capacity()) {
                return Err(DatasetError::InflateOverBudget {
                    inflated: out.len(),
                });
            }
            out.reserve_exact(capacity - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

struct Header {
    tag: u32,
    vr: Option<[u8; 2]>,
    length: u32,
    offset: usize,
}

impl Header {
    fn group(&self) -> u16 {
        (self.tag >> 16) as u16
    }
    fn element(&self) -> u16 {
        self.tag as u16
    }
}

struct Walker<'a> {
    bytes: &'a [u8],
    pos: usize,
    encoding: Encoding,
    identity: Identity,
    /// Where elements begin and how long they say they are, when asked for ([`structure`]).
    marks: Option<Vec<Mark>>,
    gate: Gate,
}

/// One element, sequence or item header the walker met, in order: what a parser must agree
/// with for the walker's bounds to protect it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// An element that is not a sequence, with its declared length.
    Element { tag: u32, length: u32 },
    /// A sequence (or encapsulated pixel data), with its declared length (`0xFFFFFFFF` for
    /// undefined).
    Sequence { tag: u32, length: u32 },
    /// An item of a sequence, or a fragment of encapsulated pixel data.
    Item { length: u32 },
}

/// Whether the standard dictionary knows `tag` as a sequence: what a parser of implicit VR
/// goes by.
fn is_sequence_in_dictionary(tag: u32) -> bool {
    vr_in_dictionary(tag) == Some(*b"SQ")
}

/// The VR the standard dictionary gives `tag` (one of them where several are allowed), as a
/// parser of implicit VR takes it.
fn vr_in_dictionary(tag: u32) -> Option<[u8; 2]> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    let entry = dicom_dictionary_std::StandardDataDictionary
        .by_tag(dicom_core::Tag((tag >> 16) as u16, tag as u16))?;
    let name = entry.vr().relaxed().to_string().as_bytes().to_owned();
    <[u8; 2]>::try_from(name.as_slice()).ok()
}

/// Walk a (not deflated) dataset as [`inspect_before_parse`] does and return every header met,
/// in order.
pub fn structure(bytes: &[u8], encoding: Encoding) -> Result<Vec<Mark>, DatasetError> {
    if encoding == Encoding::DeflatedExplicitLittle {
        return Err(DatasetError::Inflate(
            "inflate a deflated dataset before asking for its structure".into(),
        ));
    }
    let mut walker = Walker {
        bytes,
        pos: 0,
        encoding,
        identity: Identity::default(),
        marks: Some(Vec::new()),
        gate: Gate::Parser,
    };
    walker.elements(bytes.len(), 0, false)?;
    Ok(walker.marks.unwrap_or_default())
}

impl Walker<'_> {
    fn explicit(&self) -> bool {
        self.encoding != Encoding::ImplicitLittle
    }

    fn u16_at(&self, at: usize) -> u16 {
        let b = [self.bytes[at], self.bytes[at + 1]];
        match self.encoding {
            Encoding::ExplicitBig => u16::from_be_bytes(b),
            _ => u16::from_le_bytes(b),
        }
    }

    fn u32_at(&self, at: usize) -> u32 {
        let b = [
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ];
        match self.encoding {
            Encoding::ExplicitBig => u32::from_be_bytes(b),
            _ => u32::from_le_bytes(b),
        }
    }

    /// Tag and 32-bit length of an item or delimiter: always the "implicit" layout (PS3.5 7.5).
    fn item_header(&mut self, end: usize) -> Result<Header, DatasetError> {
        let offset = self.pos;
        if end - self.pos < 8 {
            return Err(DatasetError::TruncatedHeader { offset });
        }
        let tag = (u32::from(self.u16_at(offset)) << 16) | u32::from(self.u16_at(offset + 2));
        let length = self.u32_at(offset + 4);
        self.pos += 8;
        Ok(Header {
            tag,
            vr: None,
            length,
            offset,
        })
    }

    fn element_header(&mut self, end: usize, implicit: bool) -> Result<Header, DatasetError> {
        let offset = self.pos;
        if end - self.pos < 8 {
            return Err(DatasetError::TruncatedHeader { offset });
        }
        let tag = (u32::from(self.u16_at(offset)) << 16) | u32::from(self.u16_at(offset + 2));
        // Items and delimiters never carry a VR, whatever the transfer syntax.
        if implicit || (tag >> 16) == 0xFFFE {
            return self.item_header(end);
        }
        let vr = [self.bytes[offset + 4], self.bytes[offset + 5]];
        if !vr.iter().all(u8::is_ascii_uppercase) {
            return Err(DatasetError::InvalidVr {
                group: (tag >> 16) as u16,
                element: tag as u16,
                offset,
                vr,
            });
        }
        // PS3.5 7.1.2: these VRs have a 16-bit length; every other one, including VRs a later
        // edition defines (SV, UV, OV since 2019), has 2 reserved bytes and a 32-bit length.
        // dicom-object reads an unknown VR the same way (as UN), so both end it at one place.
        let long = !matches!(
            &vr,
            b"AE"
                | b"AS"
                | b"AT"
                | b"CS"
                | b"DA"
                | b"DS"
                | b"DT"
                | b"FL"
                | b"FD"
                | b"IS"
                | b"LO"
                | b"LT"
                | b"PN"
                | b"SH"
                | b"SL"
                | b"SS"
                | b"ST"
                | b"TM"
                | b"UI"
                | b"UL"
                | b"US"
        );
        let length = if long {
            if end - self.pos < 12 {
                return Err(DatasetError::TruncatedHeader { offset });
            }
            self.pos += 12;
            self.u32_at(offset + 8)
        } else {
            self.pos += 8;
            u32::from(self.u16_at(offset + 6))
        };
        Ok(Header {
            tag,
            vr: Some(vr),
            length,
            offset,
        })
    }

    /// Check that `header`'s value fits before `end`, and return where the value ends.
    fn value_end(&self, header: &Header, end: usize) -> Result<usize, DatasetError> {
        let available = end - self.pos;
        if header.length as usize > available {
            return Err(DatasetError::LengthBeyondEnd {
                group: header.group(),
                element: header.element(),
                offset: header.offset,
                declared: u64::from(header.length),
                available,
            });
        }
        Ok(self.pos + header.length as usize)
    }

    /// Walk elements until `end`, or until an item delimiter when `until_delimiter` is set.
    /// `depth` 0 is the top level, where identifying attributes are collected.
    fn elements(
        &mut self,
        end: usize,
        depth: usize,
        until_delimiter: bool,
    ) -> Result<(), DatasetError> {
        self.elements_in(end, depth, until_delimiter, !self.explicit())
    }

    fn elements_in(
        &mut self,
        end: usize,
        depth: usize,
        until_delimiter: bool,
        implicit: bool,
    ) -> Result<(), DatasetError> {
        if depth > MAX_DEPTH {
            return Err(DatasetError::TooDeep);
        }
        while self.pos < end {
            let header = self.element_header(end, implicit)?;
            match header.tag {
                ITEM_DELIMITATION if until_delimiter => return Ok(()),
                ITEM_DELIMITATION | SEQUENCE_DELIMITATION | ITEM => {
                    return Err(DatasetError::StrayDelimiter {
                        group: header.group(),
                        element: header.element(),
                        offset: header.offset,
                    });
                }
                _ => {}
            }
            if header.length == UNDEFINED {
                self.undefined_length_value(&header, end, depth, implicit)?;
                continue;
            }
            let value_end = self.value_end(&header, end)?;
            // In implicit VR a sequence of defined length is known only from the dictionary;
            // dicom-object parses its items, so the walker checks them too.
            let sequence = match header.vr {
                Some(vr) => vr == *b"SQ",
                None => is_sequence_in_dictionary(header.tag),
            };
            if sequence {
                self.mark(Mark::Sequence {
                    tag: header.tag,
                    length: header.length,
                });
                self.items(value_end, depth + 1, false, implicit)?;
                self.pos = value_end;
            } else {
                if self.gate == Gate::Parser {
                    self.check_multiple(&header)?;
                }
                self.mark(Mark::Element {
                    tag: header.tag,
                    length: header.length,
                });
                if depth == 0 {
                    self.collect(header.tag, value_end);
                }
                self.pos = value_end;
            }
        }
        if until_delimiter {
            return Err(DatasetError::Unterminated);
        }
        Ok(())
    }

    fn undefined_length_value(
        &mut self,
        header: &Header,
        end: usize,
        depth: usize,
        implicit: bool,
    ) -> Result<(), DatasetError> {
        self.mark(Mark::Sequence {
            tag: header.tag,
            length: UNDEFINED,
        });
        match header.vr {
            // Implicit VR: only a sequence may have an undefined length.
            None | Some([b'S', b'Q']) => self.items(end, depth + 1, true, implicit),
            // PS3.5 6.2.2: UN with undefined length holds a sequence encoded implicit VR LE.
            // dicom-object 0.10 reads it otherwise (a 4 GiB value from the item tag), so what
            // it will parse may not hold one.
            Some([b'U', b'N']) if self.gate == Gate::Parser => {
                Err(DatasetError::UndefinedLengthUn {
                    group: header.group(),
                    element: header.element(),
                    offset: header.offset,
                })
            }
            Some([b'U', b'N']) => self.items(end, depth + 1, true, true),
            // PS3.5 A.4: encapsulated pixel data, a sequence of fragments.
            Some([b'O', b'B']) | Some([b'O', b'W']) if header.tag == PIXEL_DATA => {
                self.fragments(end)
            }
            Some(_) => Err(DatasetError::UndefinedLength {
                group: header.group(),
                element: header.element(),
                offset: header.offset,
            }),
        }
    }

    /// Items of a sequence, up to `end` (defined length) or to its delimiter.
    fn items(
        &mut self,
        end: usize,
        depth: usize,
        until_delimiter: bool,
        implicit: bool,
    ) -> Result<(), DatasetError> {
        if depth > MAX_DEPTH {
            return Err(DatasetError::TooDeep);
        }
        while self.pos < end {
            let header = self.item_header(end)?;
            match header.tag {
                SEQUENCE_DELIMITATION if until_delimiter => return Ok(()),
                ITEM => {}
                _ => {
                    return Err(DatasetError::ExpectedItem {
                        group: header.group(),
                        element: header.element(),
                        offset: header.offset,
                    })
                }
            }
            self.mark(Mark::Item {
                length: header.length,
            });
            if header.length == UNDEFINED {
                self.elements_in(end, depth, true, implicit)?;
            } else {
                let item_end = self.value_end(&header, end)?;
                self.elements_in(item_end, depth, false, implicit)?;
                self.pos = item_end;
            }
        }
        if until_delimiter {
            return Err(DatasetError::Unterminated);
        }
        Ok(())
    }

    /// Fragments of encapsulated pixel data, up to the sequence delimiter (PS3.5 A.4).
    fn fragments(&mut self, end: usize) -> Result<(), DatasetError> {
        loop {
            if self.pos >= end {
                return Err(DatasetError::Unterminated);
            }
            let header = self.item_header(end)?;
            match header.tag {
                SEQUENCE_DELIMITATION => return Ok(()),
                ITEM if header.length != UNDEFINED => {
                    self.mark(Mark::Item {
                        length: header.length,
                    });
                    self.pos = self.value_end(&header, end)?;
                }
                ITEM => {
                    return Err(DatasetError::UndefinedLength {
                        group: header.group(),
                        element: header.element(),
                        offset: header.offset,
                    })
                }
                _ => {
                    return Err(DatasetError::ExpectedItem {
                        group: header.group(),
                        element: header.element(),
                        offset: header.offset,
                    })
                }
            }
        }
    }

    /// A binary number's length must be a multiple of its size (PS3.5 6.2): dicom-parser reads
    /// whole values and leaves a remainder unread, so every header after it would be read
    /// somewhere else than walked here (the fuzzer turned a 6-byte SL into a gigabyte
    /// allocation). In implicit VR the VR is the dictionary's, as the parser takes it.
    fn check_multiple(&self, header: &Header) -> Result<(), DatasetError> {
        let vr = header.vr.or_else(|| vr_in_dictionary(header.tag));
        let size = match vr.as_ref() {
            Some(b"US" | b"SS" | b"OW") => 2,
            Some(b"UL" | b"SL" | b"FL" | b"OF" | b"OL" | b"AT") => 4,
            Some(b"FD" | b"OD" | b"SV" | b"UV" | b"OV") => 8,
            _ => return Ok(()),
        };
        if header.length % size != 0 {
            return Err(DatasetError::LengthNotMultiple {
                group: header.group(),
                element: header.element(),
                offset: header.offset,
                length: header.length,
                size,
            });
        }
        Ok(())
    }

    fn mark(&mut self, mark: Mark) {
        if let Some(marks) = &mut self.marks {
            marks.push(mark);
        }
    }

    fn collect(&mut self, tag: u32, value_end: usize) {
        let slot = match tag {
            SOP_CLASS_UID => &mut self.identity.sop_class_uid,
            SOP_INSTANCE_UID => &mut self.identity.sop_instance_uid,
            STUDY_INSTANCE_UID => &mut self.identity.study_instance_uid,
            SERIES_INSTANCE_UID => &mut self.identity.series_instance_uid,
            MODALITY => &mut self.identity.modality,
            _ => return,
        };
        let raw = &self.bytes[self.pos..value_end];
        let text = String::from_utf8_lossy(raw);
        let trimmed = text.trim_end_matches(['\0', ' ']).trim_start_matches(' ');
        *slot = Some(trimmed.to_string());
    }
}

/// Why the file meta group of a Part 10 file cannot be read.
#[derive(Debug)]
pub enum MetaError {
    Malformed(String),
    TransferSyntax(String),
}

/// Check the file meta group (PS3.10 7.1) of a Part 10 file (preamble and "DICM" checked by
/// the caller) with the bounded walker, and return where the dataset starts and how it is
/// encoded. What we read from outside goes through this and [`inspect`] before
/// dicom-object parses it: every length then fits the bytes present and nesting is bounded.
pub fn check_meta(bytes: &[u8], limit: usize) -> Result<(usize, crate::uids::Encoding), MetaError> {
    let malformed = |m: String| MetaError::Malformed(m);
    // (0002,0000) UL, length 4: File Meta Information Group Length, first and Type 1.
    let header = bytes
        .get(132..144)
        .ok_or_else(|| malformed("the file ends inside the group length".into()))?;
    if header[..8] != [0x02, 0x00, 0x00, 0x00, b'U', b'L', 0x04, 0x00] {
        return Err(malformed(
            "it does not start with File Meta Information Group Length".into(),
        ));
    }
    let group_length = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let meta_end = 144usize
        .checked_add(group_length as usize)
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| {
            malformed(format!(
                "group length {group_length} runs past the end of the file"
            ))
        })?;
    inspect(
        &bytes[132..meta_end],
        crate::uids::Encoding::ExplicitLittle,
        limit,
    )
    .map_err(|e| malformed(e.to_string()))?;
    let meta = dicom_object::meta::FileMetaTable::from_reader(&bytes[128..meta_end])
        .map_err(|e| malformed(e.to_string()))?;
    let syntax = meta.transfer_syntax();
    let encoding =
        crate::uids::encoding_of(syntax).ok_or_else(|| MetaError::TransferSyntax(syntax.into()))?;
    Ok((meta_end, encoding))
}

#[cfg(test)]
mod tests {
    use super::*;
    use radiant_core::rng::SplitMix64;

    /// Explicit VR little endian element with a short (16-bit) length.
    fn short(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(group.to_le_bytes());
        out.extend(element.to_le_bytes());
        out.extend(vr);
        out.extend((value.len() as u16).to_le_bytes());
        out.extend(value);
        out
    }

    fn long_header(group: u16, element: u16, vr: &[u8; 2], length: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(group.to_le_bytes());
        out.extend(element.to_le_bytes());
        out.extend(vr);
        out.extend([0, 0]);
        out.extend(length.to_le_bytes());
        out
    }

    fn item(tag_element: u16, length: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(0xFFFEu16.to_le_bytes());
        out.extend(tag_element.to_le_bytes());
        out.extend(length.to_le_bytes());
        out
    }

    fn identifying() -> Vec<u8> {
        let mut ds = short(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0");
        ds.extend(short(0x0008, 0x0018, b"UI", b"1.2.3.4"));
        ds.extend(short(0x0008, 0x0060, b"CS", b"CT"));
        ds.extend(short(0x0020, 0x000D, b"UI", b"1.2.3"));
        ds.extend(short(0x0020, 0x000E, b"UI", b"1.2.3.5\0"));
        ds
    }

    #[test]
    fn identifying_attributes_are_extracted_without_padding() {
        let id = inspect(&identifying(), Encoding::ExplicitLittle, 1 << 20).unwrap();
        assert_eq!(
            id.sop_class_uid.as_deref(),
            Some("1.2.840.10008.5.1.4.1.1.2")
        );
        assert_eq!(id.sop_instance_uid.as_deref(), Some("1.2.3.4"));
        assert_eq!(id.series_instance_uid.as_deref(), Some("1.2.3.5"));
        assert_eq!(id.modality.as_deref(), Some("CT"));
    }

    #[test]
    fn pixel_data_declaring_more_than_present_is_refused() {
        let mut ds = identifying();
        ds.extend(long_header(0x7FE0, 0x0010, b"OW", 4_000_000_000));
        ds.extend([0u8; 1024]);
        let err = inspect(&ds, Encoding::ExplicitLittle, 1 << 20).unwrap_err();
        assert!(matches!(
            err,
            DatasetError::LengthBeyondEnd {
                group: 0x7FE0,
                declared: 4_000_000_000,
                ..
            }
        ));
    }

    #[test]
    fn truncated_header_is_refused() {
        let mut ds = identifying();
        ds.extend([0x08, 0x00, 0x20]);
        assert!(matches!(
            inspect(&ds, Encoding::ExplicitLittle, 1 << 20),
            Err(DatasetError::TruncatedHeader { .. })
        ));
    }

    #[test]
    fn nested_sequences_with_undefined_lengths_are_walked_and_nested_uids_ignored() {
        let mut ds = identifying();
        ds.extend(long_header(0x0008, 0x1140, b"SQ", UNDEFINED));
        ds.extend(item(0xE000, UNDEFINED));
        ds.extend(short(0x0008, 0x1155, b"UI", b"9.9.9"));
        ds.extend(short(0x0008, 0x0018, b"UI", b"7.7.7"));
        ds.extend(item(0xE00D, 0));
        ds.extend(item(0xE0DD, 0));
        ds.extend(short(0x0020, 0x0013, b"IS", b"1 "));
        let id = inspect(&ds, Encoding::ExplicitLittle, 1 << 20).unwrap();
        assert_eq!(id.sop_instance_uid.as_deref(), Some("1.2.3.4"));
    }

    #[test]
    fn an_unterminated_sequence_is_refused() {
        let mut ds = identifying();
        ds.extend(long_header(0x0008, 0x1140, b"SQ", UNDEFINED));
        ds.extend(item(0xE000, UNDEFINED));
        ds.extend(short(0x0008, 0x1155, b"UI", b"9.9.9"));
        assert_eq!(
            inspect(&ds, Encoding::ExplicitLittle, 1 << 20),
            Err(DatasetError::Unterminated)
        );
    }

    #[test]
    fn encapsulated_fragments_are_bounded() {
        let mut ds = identifying();
        ds.extend(long_header(0x7FE0, 0x0010, b"OB", UNDEFINED));
        ds.extend(item(0xE000, 0));
        ds.extend(item(0xE000, 4));
        ds.extend([1, 2, 3, 4]);
        ds.extend(item(0xE0DD, 0));
        assert!(inspect(&ds, Encoding::ExplicitLittle, 1 << 20).is_ok());

        let mut bad = identifying();
        bad.extend(long_header(0x7FE0, 0x0010, b"OB", UNDEFINED));
        bad.extend(item(0xE000, 1_000_000));
        bad.extend([1, 2, 3, 4]);
        assert!(matches!(
            inspect(&bad, Encoding::ExplicitLittle, 1 << 20),
            Err(DatasetError::LengthBeyondEnd { .. })
        ));
    }

    #[test]
    fn excessive_nesting_is_refused_not_overflowing_the_stack() {
        let mut ds = Vec::new();
        for _ in 0..200 {
            ds.extend(long_header(0x0008, 0x1140, b"SQ", UNDEFINED));
            ds.extend(item(0xE000, UNDEFINED));
        }
        assert_eq!(
            inspect(&ds, Encoding::ExplicitLittle, 1 << 20),
            Err(DatasetError::TooDeep)
        );
    }

    #[test]
    fn implicit_and_big_endian_layouts_are_understood() {
        let mut implicit = Vec::new();
        implicit.extend([0x08, 0x00, 0x18, 0x00, 8, 0, 0, 0]);
        implicit.extend(b"1.2.3.4\0");
        let id = inspect(&implicit, Encoding::ImplicitLittle, 1 << 20).unwrap();
        assert_eq!(id.sop_instance_uid.as_deref(), Some("1.2.3.4"));

        let mut big = Vec::new();
        big.extend([0x00, 0x08, 0x00, 0x18, b'U', b'I', 0, 8]);
        big.extend(b"1.2.3.4\0");
        let id = inspect(&big, Encoding::ExplicitBig, 1 << 20).unwrap();
        assert_eq!(id.sop_instance_uid.as_deref(), Some("1.2.3.4"));
    }

    #[test]
    fn sv_uv_and_unknown_vrs_have_32_bit_lengths_as_the_parser_reads_them() {
        for vr in [b"SV", b"UV", b"ZZ"] {
            let mut ds = identifying();
            ds.extend(long_header(0x0011, 0x1010, vr, 8));
            ds.extend([7u8; 8]);
            let marks = structure(&ds, Encoding::ExplicitLittle).unwrap();
            assert_eq!(
                marks.last(),
                Some(&Mark::Element {
                    tag: 0x0011_1010,
                    length: 8
                }),
                "{vr:?}"
            );
            // A 32-bit length beyond the end is refused, not read as 16 bits.
            let mut lying = identifying();
            lying.extend(long_header(0x0011, 0x1010, vr, 4_000_000_000));
            assert!(inspect(&lying, Encoding::ExplicitLittle, 1 << 20).is_err());
        }
    }

    #[test]
    fn an_implicit_vr_sequence_of_defined_length_is_descended_and_its_items_checked() {
        // (0008,1140) Referenced Image Sequence, defined length 24, one item of 16 bytes.
        let mut ds = vec![0x08, 0x00, 0x40, 0x11, 24, 0, 0, 0];
        ds.extend([0xFE, 0xFF, 0x00, 0xE0, 16, 0, 0, 0]);
        ds.extend([0x08, 0x00, 0x55, 0x11, 8, 0, 0, 0]);
        ds.extend(b"1.2.3.4\0");
        assert_eq!(
            structure(&ds, Encoding::ImplicitLittle).unwrap(),
            vec![
                Mark::Sequence {
                    tag: 0x0008_1140,
                    length: 24
                },
                Mark::Item { length: 16 },
                Mark::Element {
                    tag: 0x0008_1155,
                    length: 8
                },
            ]
        );
        // The item inside hides a 4 GiB element length: refused.
        ds[16..24].copy_from_slice(&[0x08, 0x00, 0x55, 0x11, 0xF0, 0xFF, 0xFF, 0xFF]);
        assert!(matches!(
            inspect(&ds, Encoding::ImplicitLittle, 1 << 20),
            Err(DatasetError::LengthBeyondEnd { .. })
        ));
    }

    #[test]
    fn un_of_undefined_length_is_read_at_ingest_and_refused_before_the_parser() {
        let mut ds = identifying();
        ds.extend(long_header(0x0011, 0x1010, b"UN", UNDEFINED));
        ds.extend(item(0xE000, UNDEFINED));
        ds.extend([0x08, 0x00, 0x55, 0x11, 6, 0, 0, 0]);
        ds.extend(b"1.2.3\0");
        ds.extend(item(0xE00D, 0));
        ds.extend(item(0xE0DD, 0));
        assert!(inspect(&ds, Encoding::ExplicitLittle, 1 << 20).is_ok());
        assert!(matches!(
            inspect_before_parse(&ds, Encoding::ExplicitLittle, 1 << 20),
            Err(DatasetError::UndefinedLengthUn { group: 0x0011, .. })
        ));
    }

    #[test]
    fn a_binary_number_whose_length_is_not_a_multiple_of_its_size_is_refused_before_the_parser() {
        let mut ds = identifying();
        ds.extend(short(0x0028, 0x0010, b"US", b"abc\0\0"));
        assert!(inspect(&ds, Encoding::ExplicitLittle, 1 << 20).is_ok());
        assert!(matches!(
            inspect_before_parse(&ds, Encoding::ExplicitLittle, 1 << 20),
            Err(DatasetError::LengthNotMultiple {
                group: 0x0028,
                length: 5,
                size: 2,
                ..
            })
        ));
        // Implicit VR: the dictionary's VR (Rows is US) is what the parser goes by.
        let implicit = [0x28, 0x00, 0x10, 0x00, 3, 0, 0, 0, 1, 2, 3];
        assert!(matches!(
            inspect_before_parse(&implicit, Encoding::ImplicitLittle, 1 << 20),
            Err(DatasetError::LengthNotMultiple { size: 2, .. })
        ));
    }

    /// A sequence of undefined length with one item of undefined length.
    fn sequence() -> Vec<u8> {
        let mut out = long_header(0x0008, 0x1140, b"SQ", UNDEFINED);
        out.extend(item(0xE000, UNDEFINED));
        out.extend(short(0x0008, 0x1155, b"UI", b"9.9.9"));
        out.extend(item(0xE00D, 0));
        out.extend(item(0xE0DD, 0));
        out
    }

    /// Encapsulated pixel data with one fragment.
    fn encapsulated_pixels() -> Vec<u8> {
        let mut out = long_header(0x7FE0, 0x0010, b"OB", UNDEFINED);
        out.extend(item(0xE000, 4));
        out.extend([1, 2, 3, 4]);
        out.extend(item(0xE0DD, 0));
        out
    }

    /// The dataset of the mutation and truncation tests: identifying attributes, a sequence and
    /// encapsulated pixel data.
    fn with_sequence_and_fragments() -> Vec<u8> {
        [identifying(), sequence(), encapsulated_pixels()].concat()
    }

    /// Property: a dataset cut anywhere inside an element (header, value, sequence or
    /// encapsulated pixel data) is refused with a typed error; only a cut between two top-level
    /// elements, which no walker can tell from the end of a dataset, reads.
    #[test]
    fn every_cut_inside_an_element_is_refused() {
        let full = with_sequence_and_fragments();
        // Top-level element boundaries: after each of the five identifying elements, and
        // between the sequence and the pixel data.
        let mut boundaries = vec![0usize];
        let mut pos = 0;
        for _ in 0..5 {
            pos += 8 + u16::from_le_bytes([full[pos + 6], full[pos + 7]]) as usize;
            boundaries.push(pos);
        }
        boundaries.push(pos + sequence().len());
        for cut in 1..full.len() {
            let result = inspect(&full[..cut], Encoding::ExplicitLittle, 1 << 20);
            if boundaries.contains(&cut) {
                assert!(result.is_ok(), "cut at element boundary {cut}: {result:?}");
            } else {
                assert!(
                    result.is_err(),
                    "cut at {cut} of {} read as {result:?}",
                    full.len()
                );
            }
        }
    }

    /// Property: whatever a peer sends, `inspect` returns (never panics, never reads out of
    /// bounds), in every encoding. 20 000 mutations of a dataset with sequences and fragments;
    /// some mutations leave a readable dataset (a changed value byte), but most break a length,
    /// a VR or a delimiter and must be refused.
    #[test]
    fn mutated_datasets_never_panic_in_any_encoding() {
        let base = with_sequence_and_fragments();
        let mut rng = SplitMix64::new(0x9E37_79B9_7F4A_7C15);
        let encodings = [
            Encoding::ExplicitLittle,
            Encoding::ImplicitLittle,
            Encoding::ExplicitBig,
            Encoding::DeflatedExplicitLittle,
        ];
        let mut refused = [0usize; 4];
        let mut truncated_read = 0;
        let runs = 20_000;
        for _ in 0..runs {
            let mut bytes = base.clone();
            let mut truncated = false;
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len());
                match rng.below(4) {
                    0 => bytes[at] = rng.next_u64() as u8,
                    1 => {
                        bytes.truncate(at);
                        truncated = true;
                    }
                    2 => bytes.insert(at, rng.next_u64() as u8),
                    _ => {
                        let len = (rng.next_u64() as u32).to_le_bytes();
                        let end = (at + 4).min(bytes.len());
                        bytes[at..end].copy_from_slice(&len[..end - at]);
                    }
                }
                if bytes.is_empty() {
                    break;
                }
            }
            for (n, encoding) in encodings.into_iter().enumerate() {
                let result = inspect(&bytes, encoding, 1 << 20);
                refused[n] += usize::from(result.is_err());
                if encoding == Encoding::ExplicitLittle && truncated && result.is_ok() {
                    truncated_read += 1;
                }
            }
        }
        eprintln!(
            "refused of {runs}, by encoding: {refused:?}; truncated yet read: {truncated_read}"
        );
        // Explicit little endian is the encoding the base is written in: most edits break it
        // (18 160 of 20 000 with this seed). Read in another encoding, the bytes are nonsense.
        for (n, encoding) in encodings.into_iter().enumerate() {
            assert!(
                refused[n] > runs * 3 / 4,
                "{encoding:?}: only {} of {runs} mutated datasets refused",
                refused[n]
            );
        }
        // A truncation leaves a readable dataset only when it falls between two top-level
        // elements (or the other edits happen to repair it): rare (175 with this seed).
        assert!(
            truncated_read < runs / 20,
            "{truncated_read} truncated datasets read without error"
        );
    }

    #[test]
    fn a_deflate_bomb_is_stopped_at_the_limit() {
        use std::io::Write;
        let mut plain = identifying();
        plain.extend(long_header(0x0009, 0x0010, b"OB", 4_000_000));
        plain.extend(vec![0u8; 4_000_000]);
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&plain).unwrap();
        let deflated = enc.finish().unwrap();
        assert!(inspect(&deflated, Encoding::DeflatedExplicitLittle, 8 << 20).is_ok());
        assert_eq!(
            inspect(&deflated, Encoding::DeflatedExplicitLittle, 1 << 20),
            Err(DatasetError::InflatedTooLarge { limit: 1 << 20 })
        );
    }

    /// The inflated copy asks for its memory before it grows: what it was granted covers it
    /// (at most twice what it holds), and a refusal stops it with the reason.
    #[test]
    fn the_inflated_copy_asks_for_its_memory_and_stops_when_refused() {
        use std::io::Write;
        let mut dataset = identifying();
        dataset.extend(long_header(0x0009, 0x1010, b"OB", 3 << 20));
        dataset.extend(vec![7u8; 3 << 20]);
        let mut deflate =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        deflate.write_all(&dataset).unwrap();
        let deflated = deflate.finish().unwrap();
        let mut granted = 0usize;
        let identity = inspect_charged(
            &deflated,
            Encoding::DeflatedExplicitLittle,
            8 << 20,
            &mut |n| {
                granted += n;
                true
            },
        )
        .unwrap();
        assert_eq!(
            identity,
            inspect(&dataset, Encoding::ExplicitLittle, 0).unwrap()
        );
        assert!(
            granted >= dataset.len() && granted <= 2 * dataset.len(),
            "{granted} granted for {} bytes",
            dataset.len()
        );
        let mut left = 1usize << 20;
        let refused = inspect_charged(
            &deflated,
            Encoding::DeflatedExplicitLittle,
            8 << 20,
            &mut |n| {
                let fits = n <= left;
                left = left.saturating_sub(n);
                fits
            },
        );
        assert!(
            matches!(refused, Err(DatasetError::InflateOverBudget { inflated }) if inflated <= 1 << 20),
            "{refused:?}"
        );
    }
}
