//! What the integration tests of this crate share: mutated copies of our objects, coded
//! concepts and the creator our test objects name. Fixture paths come from `test_support`.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use pacs_bridge::objects::Creator;
use radiant_core::rng::SplitMix64;
use radiant_core::Code;

/// A copy of a Part 10 file with 1 to 4 random edits past the preamble (a byte overwritten, a
/// byte inserted, or 4 bytes replaced by a random length), as a broken or hostile sender
/// might produce.
pub fn mutated(base: &[u8], rng: &mut SplitMix64) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        // Leave the preamble alone: a mutation there changes nothing we read.
        let at = 128 + rng.below(bytes.len() - 128);
        match rng.below(3) {
            0 => bytes[at] = rng.next_u64() as u8,
            1 => bytes.insert(at, rng.next_u64() as u8),
            _ => {
                let len = (rng.next_u64() as u32).to_le_bytes();
                let end = (at + 4).min(bytes.len());
                bytes[at..end].copy_from_slice(&len[..end - at]);
            }
        }
    }
    bytes
}

/// A coded concept.
pub fn code(scheme: &str, value: &str, meaning: &str) -> Code {
    Code {
        scheme: scheme.into(),
        value: value.into(),
        meaning: meaning.into(),
    }
}

/// The model and device our test objects name as their creator.
pub fn creator() -> Creator {
    Creator {
        model_name: "head-ct-ich".into(),
        model_version: "0.1.0".into(),
        backend: "tract".into(),
        device_serial: "TEST-0001".into(),
        software_version: "0.1.0".into(),
    }
}
