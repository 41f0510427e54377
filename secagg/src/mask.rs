//! The masks: seeds and their expansion into vectors of `u32`.
//!
//! This module owns the pseudo-random generator that turns a 32-byte seed into a mask in
//! Z_2^32^L (the ChaCha20 keystream read as little-endian `u32` words, with a different fixed
//! nonce for self masks and pairwise masks), the derivation of the pairwise seed
//! `s_uv = SHA-256(label ‖ round ‖ graph seed ‖ min(u,v) ‖ max(u,v) ‖ DH(s_u, s_v))`,
//! and the sign convention: device u adds `PRG(s_uv)` when u < v and subtracts it when u > v,
//! so the two masks of a pair cancel in the sum. All arithmetic wraps.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::{ChaCha20, Key, Nonce};
use sha2::{Digest, Sha256};
use x25519_dalek::SharedSecret;
use zeroize::{Zeroize, Zeroizing};

use crate::config::RoundConfig;

const PAIR_SEED_LABEL: &[u8] = b"radiant-edge/secagg/pair-seed/v1";
const SELF_NONCE: &[u8; 12] = b"secagg-self\0";
const PAIR_NONCE: &[u8; 12] = b"secagg-pair\0";

/// Which mask a seed expands to (each has its own keystream nonce).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MaskKind {
    /// `PRG(b_u)`.
    SelfMask,
    /// `PRG(s_uv)`.
    Pairwise,
}

/// Whether a mask is added to or subtracted from a vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sign {
    Add,
    Subtract,
}

impl Sign {
    pub(crate) fn opposite(self) -> Self {
        match self {
            Sign::Add => Sign::Subtract,
            Sign::Subtract => Sign::Add,
        }
    }
}

/// The sign with which device `me` applies its pairwise mask with `other`.
pub(crate) fn pairwise_sign(me: u32, other: u32) -> Sign {
    if me < other {
        Sign::Add
    } else {
        Sign::Subtract
    }
}

/// The seed of the pairwise mask of devices `a` and `b` (order does not matter).
pub(crate) fn pairwise_seed(
    shared: &SharedSecret,
    config: &RoundConfig,
    a: u32,
    b: u32,
) -> Zeroizing<[u8; 32]> {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let mut hasher = Sha256::new();
    hasher.update(PAIR_SEED_LABEL);
    hasher.update(config.round_id().to_be_bytes());
    hasher.update(config.seed());
    hasher.update(lo.to_be_bytes());
    hasher.update(hi.to_be_bytes());
    hasher.update(shared.as_bytes());
    Zeroizing::new(hasher.finalize().into())
}

/// Adds (or subtracts) the mask expanded from `seed` to `vector`, coordinate-wise mod 2^32.
pub(crate) fn apply_mask(vector: &mut [u32], seed: &[u8; 32], kind: MaskKind, sign: Sign) {
    let nonce = match kind {
        MaskKind::SelfMask => SELF_NONCE,
        MaskKind::Pairwise => PAIR_NONCE,
    };
    let mut stream = ChaCha20::new(Key::from_slice(seed), Nonce::from_slice(nonce));
    let mut buffer = [0u8; 4096];
    for chunk in vector.chunks_mut(buffer.len() / 4) {
        let bytes = &mut buffer[..chunk.len() * 4];
        bytes.fill(0);
        stream.apply_keystream(bytes);
        for (value, word) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
            let m = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            *value = match sign {
                Sign::Add => value.wrapping_add(m),
                Sign::Subtract => value.wrapping_sub(m),
            };
        }
    }
    buffer.zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_added_then_subtracted_leaves_the_vector_unchanged() {
        let original: Vec<u32> = (0..5000).map(|i| i * 7).collect();
        let mut v = original.clone();
        apply_mask(&mut v, &[3u8; 32], MaskKind::Pairwise, Sign::Add);
        assert_ne!(v, original);
        apply_mask(&mut v, &[3u8; 32], MaskKind::Pairwise, Sign::Subtract);
        assert_eq!(v, original);
    }

    #[test]
    fn self_and_pairwise_masks_of_one_seed_differ_and_the_two_signs_of_a_pair_are_opposite() {
        let mut a = vec![0u32; 16];
        let mut b = vec![0u32; 16];
        apply_mask(&mut a, &[9u8; 32], MaskKind::SelfMask, Sign::Add);
        apply_mask(&mut b, &[9u8; 32], MaskKind::Pairwise, Sign::Add);
        assert_ne!(a, b);
        assert_eq!(pairwise_sign(1, 2), pairwise_sign(2, 1).opposite());
    }
}
