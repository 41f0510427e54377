//! The fixture files `scripts/fixtures.sh` builds, for the integration tests of this crate.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use radiant_core::Code;
use pacs_bridge::objects::Creator;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    assert!(
        dir.join("ct-series").is_dir(),
        "run scripts/fixtures.sh first"
    );
    dir
}

/// The 108 slices of the head CT series, in file order.
pub fn ct_series() -> Vec<PathBuf> {
    (0..108)
        .map(|i| fixtures().join(format!("ct-series/slice_{i:03}.dcm")))
        .collect()
}

/// xorshift64*: deterministic pseudo-random numbers for the mutation tests.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A copy of a Part 10 file with 1 to 4 random edits past the preamble (a byte overwritten, a
/// byte inserted, or 4 bytes replaced by a random length), as a broken or hostile sender
/// might produce.
pub fn mutated(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        // Leave the preamble alone: a mutation there changes nothing we read.
        let at = 128 + rng.below(bytes.len() - 128);
        match rng.below(3) {
            0 => bytes[at] = rng.next() as u8,
            1 => bytes.insert(at, rng.next() as u8),
            _ => {
                let len = (rng.next() as u32).to_le_bytes();
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
