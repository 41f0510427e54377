//! The messages of a round, as plain serde-serialisable data.
//!
//! This module owns the wire types only; the transport (MQTT topics, framing, encoding) is the
//! caller's. Every message names its round and its sender or recipient, and is checked by the
//! receiving state machine against the [`crate::RoundConfig`] before anything in it is used.
//! The transport should still cap the size of what it deserialises: the largest honest message
//! is a [`MaskedInput`] of `4 · vector_len` bytes of payload; the others are O(k).
//!
//! Direction and phase:
//!
//! | phase | device → server | server → device |
//! |---|---|---|
//! | 0 AdvertiseKeys | [`AdvertiseKeys`] | [`NeighbourKeys`] |
//! | 1 ShareKeys | [`ShareKeys`] | [`RelayedShares`] |
//! | 2 MaskedInput | [`MaskedInput`] | [`UnmaskRequest`] |
//! | 3 Unmasking | [`UnmaskResponse`] | — |

use serde::{Deserialize, Serialize};

use crate::shamir::Share;

/// Phase 0, device → server: the two fresh public keys of the device for this round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertiseKeys {
    /// The round.
    pub round_id: u64,
    /// The device.
    pub sender: u32,
    /// Public key c_pk, for encrypting shares to this device.
    pub c_pk: [u8; 32],
    /// Public key s_pk, for the pairwise masks.
    pub s_pk: [u8; 32],
}

/// The public keys of one device, as forwarded by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeys {
    /// The device.
    pub id: u32,
    /// Its c public key.
    pub c_pk: [u8; 32],
    /// Its s public key.
    pub s_pk: [u8; 32],
}

/// Phase 0, server → device: the keys of the recipient's neighbours that advertised, sorted
/// by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighbourKeys {
    /// The round.
    pub round_id: u64,
    /// The device this is for.
    pub recipient: u32,
    /// The neighbours' keys, strictly increasing ids.
    pub neighbours: Vec<DeviceKeys>,
}

/// One ciphertext holding a device's two shares for one neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedShares {
    /// The other end: the recipient in [`ShareKeys`], the sender in [`RelayedShares`].
    pub peer: u32,
    /// ChaCha20-Poly1305 ciphertext of [`crate::SHARE_CIPHERTEXT_LEN`] bytes.
    pub ciphertext: Vec<u8>,
}

/// Phase 1, device → server: one ciphertext per neighbour that advertised, sorted by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareKeys {
    /// The round.
    pub round_id: u64,
    /// The device.
    pub sender: u32,
    /// The ciphertexts, strictly increasing `peer` (recipient).
    pub shares: Vec<EncryptedShares>,
}

/// Phase 1, server → device: the ciphertexts the recipient's neighbours sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayedShares {
    /// The round.
    pub round_id: u64,
    /// The device this is for.
    pub recipient: u32,
    /// The ciphertexts, strictly increasing `peer` (sender).
    pub shares: Vec<EncryptedShares>,
}

/// Phase 2, device → server: the masked input vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedInput {
    /// The round.
    pub round_id: u64,
    /// The device.
    pub sender: u32,
    /// `x_u + PRG(b_u) + Σ ±PRG(s_uv)` mod 2^32, of the round's length.
    pub values: Vec<u32>,
}

/// Phase 3, server → device: which of the recipient's neighbours survived (sent a masked
/// input) and which dropped (shared keys but sent no masked input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    /// The round.
    pub round_id: u64,
    /// The device this is for.
    pub recipient: u32,
    /// Surviving neighbours, strictly increasing: reveal their self-mask shares.
    pub survivors: Vec<u32>,
    /// Dropped neighbours, strictly increasing: reveal their mask-key shares.
    pub dropped: Vec<u32>,
}

/// A share revealed in phase 3, with the device whose secret it is a share of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevealedShare {
    /// The device whose secret this shares.
    pub owner: u32,
    /// The share.
    pub share: Share,
}

/// Phase 3, device → server: the shares asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskResponse {
    /// The round.
    pub round_id: u64,
    /// The device.
    pub sender: u32,
    /// Shares of `b_v` for each surviving neighbour v, strictly increasing owner.
    pub self_mask_shares: Vec<RevealedShare>,
    /// Shares of `s_sk_v` for each dropped neighbour v, strictly increasing owner.
    pub mask_key_shares: Vec<RevealedShare>,
}
