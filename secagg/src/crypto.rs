//! Key agreement and the encryption of shares between devices.
//!
//! This module owns the use of the primitives for the key material of a round: drawing
//! secrets from the caller's CSPRNG, x25519 agreement (refusing non-contributory, low-order
//! results), deriving a one-direction ChaCha20-Poly1305 key per (round, sender, recipient)
//! from DH(c_u, c_v), and sealing/opening the fixed-size plaintext that carries a device's two
//! shares for one neighbour. The plaintext repeats sender, recipient, round and Shamir point,
//! and the same header is the AEAD's associated data, so a ciphertext replayed to another
//! device, direction or round fails to open.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::config::RoundConfig;
use crate::error::ProtocolError;

const SHARE_KEY_LABEL: &[u8] = b"radiant-edge/secagg/share-key/v1";
const SHARE_AD_LABEL: &[u8] = b"radiant-edge/secagg/share-ad/v1";

/// Bytes of the plaintext of one encrypted share pair: sender, recipient, round, point,
/// share of `b`, share of `s_sk`.
pub(crate) const SHARE_PLAINTEXT_LEN: usize = 4 + 4 + 8 + 1 + 32 + 32;

/// Bytes of one encrypted share pair (plaintext plus the 16-byte Poly1305 tag).
pub const SHARE_CIPHERTEXT_LEN: usize = SHARE_PLAINTEXT_LEN + 16;

/// 32 bytes from the caller's CSPRNG, without panicking when it fails.
pub(crate) fn random_bytes<R: RngCore + CryptoRng>(
    rng: &mut R,
) -> Result<Zeroizing<[u8; 32]>, ProtocolError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rng.try_fill_bytes(bytes.as_mut())
        .map_err(|_| ProtocolError::Randomness)?;
    Ok(bytes)
}

/// A fresh x25519 secret key.
pub(crate) fn random_secret<R: RngCore + CryptoRng>(
    rng: &mut R,
) -> Result<StaticSecret, ProtocolError> {
    Ok(StaticSecret::from(*random_bytes(rng)?))
}

/// x25519 agreement with `peer`'s public key, refusing low-order points.
pub(crate) fn agree(
    secret: &StaticSecret,
    peer_public: &[u8; 32],
    peer: u32,
) -> Result<SharedSecret, ProtocolError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer_public));
    if shared.was_contributory() {
        Ok(shared)
    } else {
        Err(ProtocolError::WeakPublicKey { id: peer })
    }
}

/// A device's two shares for one neighbour, as carried inside the ciphertext.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct SharePair {
    pub(crate) x: u8,
    pub(crate) self_mask: [u8; 32],
    pub(crate) mask_key: [u8; 32],
}

fn header(config: &RoundConfig, sender: u32, recipient: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&sender.to_be_bytes());
    h[4..8].copy_from_slice(&recipient.to_be_bytes());
    h[8..].copy_from_slice(&config.round_id().to_be_bytes());
    h
}

/// The AEAD for shares sent from `sender` to `recipient` in this round. The key is
/// SHA-256(label ‖ round seed ‖ header ‖ DH(c_sender, c_recipient)): different for each
/// direction of a pair and each round, so the fixed nonce below is never reused under a key.
fn share_cipher(
    shared: &SharedSecret,
    config: &RoundConfig,
    sender: u32,
    recipient: u32,
) -> ChaCha20Poly1305 {
    let mut hasher = Sha256::new();
    hasher.update(SHARE_KEY_LABEL);
    hasher.update(config.seed());
    hasher.update(header(config, sender, recipient));
    hasher.update(shared.as_bytes());
    let mut key: Zeroizing<[u8; 32]> = Zeroizing::new(hasher.finalize().into());
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key.as_ref()));
    key.zeroize();
    cipher
}

fn nonce(sender: u32, recipient: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&sender.to_be_bytes());
    n[4..8].copy_from_slice(&recipient.to_be_bytes());
    n
}

fn associated_data(config: &RoundConfig, sender: u32, recipient: u32) -> Vec<u8> {
    let mut ad = Vec::with_capacity(SHARE_AD_LABEL.len() + 48);
    ad.extend_from_slice(SHARE_AD_LABEL);
    ad.extend_from_slice(config.seed());
    ad.extend_from_slice(&header(config, sender, recipient));
    ad
}

/// Seals `pair` for `recipient`.
pub(crate) fn seal_shares(
    shared: &SharedSecret,
    config: &RoundConfig,
    sender: u32,
    recipient: u32,
    pair: &SharePair,
) -> Result<Vec<u8>, ProtocolError> {
    let mut plaintext = Zeroizing::new(Vec::with_capacity(SHARE_PLAINTEXT_LEN));
    plaintext.extend_from_slice(&header(config, sender, recipient));
    plaintext.push(pair.x);
    plaintext.extend_from_slice(&pair.self_mask);
    plaintext.extend_from_slice(&pair.mask_key);
    let cipher = share_cipher(shared, config, sender, recipient);
    let ad = associated_data(config, sender, recipient);
    cipher
        .encrypt(
            Nonce::from_slice(&nonce(sender, recipient)),
            Payload {
                msg: &plaintext,
                aad: &ad,
            },
        )
        .map_err(|_| ProtocolError::EncryptionFailed)
}

/// Opens the shares `sender` sealed for `recipient` and checks their header and point.
pub(crate) fn open_shares(
    shared: &SharedSecret,
    config: &RoundConfig,
    sender: u32,
    recipient: u32,
    expected_x: u8,
    ciphertext: &[u8],
) -> Result<SharePair, ProtocolError> {
    if ciphertext.len() != SHARE_CIPHERTEXT_LEN {
        return Err(ProtocolError::WrongCiphertextLength {
            peer: sender,
            got: ciphertext.len(),
            expected: SHARE_CIPHERTEXT_LEN,
        });
    }
    let cipher = share_cipher(shared, config, sender, recipient);
    let ad = associated_data(config, sender, recipient);
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(&nonce(sender, recipient)),
                Payload {
                    msg: ciphertext,
                    aad: &ad,
                },
            )
            .map_err(|_| ProtocolError::DecryptionFailed { from: sender })?,
    );
    let expected_header = header(config, sender, recipient);
    if plaintext.len() != SHARE_PLAINTEXT_LEN
        || plaintext[..16] != expected_header
        || plaintext[16] != expected_x
    {
        return Err(ProtocolError::ShareHeaderMismatch { from: sender });
    }
    let mut pair = SharePair {
        x: expected_x,
        self_mask: [0u8; 32],
        mask_key: [0u8; 32],
    };
    pair.self_mask.copy_from_slice(&plaintext[17..49]);
    pair.mask_key.copy_from_slice(&plaintext[49..81]);
    Ok(pair)
}
