//! The Upper Layer reader (`pacs_bridge::ul`) on a byte stream, driven the way the SCP's
//! message loop drives it: PDU header; non-data PDUs bounded by `MAX_ASSOCIATE_RQ` and decoded
//! by dicom-ul (an A-RELEASE-RQ body skipped); P-DATA-TF bounded by a max PDU length, walked
//! PDV by PDV, command fragments assembled (at most `MAX_COMMAND_BYTES`) and decoded by
//! `dimse::decode` and `dimse::decode_response`, dataset fragments collected up to a bound.
//!
//! Properties: every call returns (a typed `PduError` or a value), nothing is allocated beyond
//! the bounds, a failed `read_into` leaves its buffer as it was, and the framing round-trips:
//! each P-DATA-TF read is framed again from its PDV headers and fragments into exactly the
//! bytes that were read (reserved bits of the message control header aside).

use pacs_bridge::{dimse, ul};
use std::io::Cursor;

/// The SCP's `max_pdu_length` bound (what it announces), here 1 MiB.
const MAX_PDU_LENGTH: u32 = 1 << 20;
/// A dataset larger than this is dropped (the SCP's `max_instance_bytes`, scaled down).
const MAX_DATASET_BYTES: usize = 4 << 20;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        one_stream(data);
    });
}

fn one_stream(data: &[u8]) {
    let mut stream = Cursor::new(data);
    let mut command = Vec::new();
    let mut dataset = Vec::new();
    // Every turn consumes at least the 6 header bytes, so the loop ends with the input.
    loop {
        let start = stream.position() as usize;
        let Ok((ty, length)) = ul::read_header(&mut stream) else {
            return;
        };
        if ty != ul::P_DATA_TF {
            // The SCP reads a non-data PDU whole only after bounding it by MAX_ASSOCIATE_RQ.
            if length > ul::MAX_ASSOCIATE_RQ {
                return;
            }
            let read = if ty == ul::A_RELEASE_RQ {
                ul::skip(&mut stream, u64::from(length))
            } else {
                ul::read_body(&mut stream, ty, length).map(drop)
            };
            if read.is_err() {
                return;
            }
            continue;
        }
        if length > MAX_PDU_LENGTH {
            return;
        }
        let mut reframed = data[start..start + 6].to_vec();
        let mut remaining = length;
        while remaining > 0 {
            let Ok(pdv) = ul::read_pdv_header(&mut stream, remaining) else {
                return;
            };
            // read_pdv_header promises the item fits in what is left of the PDU.
            let item = pdv.data_length as u32 + 6;
            assert!(item <= remaining, "PDV of {item} bytes, {remaining} left");
            remaining -= item;
            let (buffer, bound) = if pdv.is_command {
                (&mut command, dimse::MAX_COMMAND_BYTES)
            } else {
                (&mut dataset, MAX_DATASET_BYTES)
            };
            if buffer.len() + pdv.data_length > bound {
                return;
            }
            let before = buffer.len();
            if ul::read_into(&mut stream, buffer, pdv.data_length).is_err() {
                assert_eq!(buffer.len(), before, "a failed read_into kept bytes");
                return;
            }
            reframed.extend((pdv.data_length as u32 + 2).to_be_bytes());
            reframed.push(pdv.context_id);
            reframed.push(u8::from(pdv.is_command) | (u8::from(pdv.is_last) << 1));
            reframed.extend_from_slice(&buffer[before..]);
            if pdv.is_last && pdv.is_command {
                let _ = dimse::decode(&command);
                let _ = dimse::decode_response(&command);
                command.clear();
            } else if pdv.is_last {
                dataset.clear();
            }
        }
        let end = stream.position() as usize;
        let mut expected = data[start..end].to_vec();
        // Only the two low bits of each message control header are defined (PS3.8 E.2).
        let mut at = 6;
        while at < expected.len() {
            let item = u32::from_be_bytes([
                expected[at],
                expected[at + 1],
                expected[at + 2],
                expected[at + 3],
            ]) as usize;
            expected[at + 5] &= 0x03;
            at += 4 + item;
        }
        assert_eq!(reframed, expected, "P-DATA-TF framed again differently");
    }
}
