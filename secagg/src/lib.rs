//! Secure aggregation of weight deltas by pairwise masks: SecAgg+ (Bell et al. 2020), i.e.
//! the SecAgg protocol of Bonawitz et al. (2017) over a sparse random neighbour graph.
//!
//! Devices send the federation server masked vectors in Z_2^32; the masks cancel or are
//! removed in the sum, so the server learns the sum of the surviving devices' vectors. This
//! crate is a pure library: typed serde messages and state machines, no I/O, no async.
//!
//! # Protocol (one round)
//! * Setup: the server publishes a [`RoundConfig`]: round id, 32-byte seed, sorted participant
//!   ids, vector length L, degree k, threshold t. Everyone derives the same k-regular neighbour
//!   graph from it ([`graph`]); device u deals only with its neighbours N(u).
//! * Phase 0, AdvertiseKeys: u makes two fresh x25519 key pairs, c (to encrypt shares) and s
//!   (for masks), and sends both public keys; the server forwards each device its
//!   neighbours' keys.
//! * Phase 1, ShareKeys: u draws a self-mask seed b_u, splits b_u and s_sk_u t-of-|N(u)|
//!   ([`shamir`]), and seals each neighbour's two shares with ChaCha20-Poly1305 under a key
//!   from DH(c_u, c_v) bound to sender, recipient and round; the server relays them unread.
//! * Phase 2, MaskedInput: u sends y_u = x_u + PRG(b_u) + Σ_v ±PRG(s_uv) mod 2^32 over the
//!   neighbours v whose shares reached it, with s_uv = H(DH(s_u, s_v), round, pair), + when
//!   u < v and − otherwise: the pairwise masks of two survivors cancel in the sum.
//! * Phase 3, Unmasking: the server names each survivor's surviving and dropped neighbours;
//!   the survivor returns its shares of b_v for the former and of s_sk_v for the latter,
//!   never both for one device, and nothing when fewer than t neighbours survive. The server
//!   rebuilds those secrets, subtracts the survivors' self masks and the dropped devices'
//!   pairwise masks with their surviving neighbours, and outputs Σ_{u survivor} x_u.
//!
//! Use [`FixedPoint`] to turn `f32` deltas into `u32` vectors whose sum cannot wrap.
//!
//! # Threat model
//! * The server is honest but curious: it runs the protocol as written and tries to learn
//!   from what it sees. It then learns only the sum over the survivors, and who survived and
//!   who dropped. Fewer than t of a device's neighbours, even pooling their shares with the
//!   server, learn nothing about its secrets b_u and s_sk_u.
//! * Devices are authenticated by mutual TLS at the MQTT broker, so the keys of phase 0 are not
//!   signed. An actively malicious server could therefore (a) substitute its own public keys
//!   for a device's, read the shares meant for it and rebuild that device's secrets; (b) tell
//!   some neighbours of v that v survived and others that it dropped, collecting t shares of
//!   both b_v and s_sk_v and so unmasking y_v alone (each device refuses both for one device,
//!   but cannot see what the others were told); (c) pick the graph seed that suits it. SecAgg's
//!   signature step closes (a) and (b): each device signs its public keys with a long-term
//!   identity key, and in an extra consistency round the survivors sign the survivor list
//!   they were sent and refuse to unmask unless at least t matching signatures come back. A
//!   seed drawn jointly (commit-and-reveal) would close (c).
//! * Messages are checked for round, sender, recipient, phase, repeats, list lengths (O(k)),
//!   vector length and ciphertext length before use; errors are typed ([`ProtocolError`]) and
//!   no received data can make the library panic.
//!
//! # Cost
//! With k the degree (default 2⌈log2 n⌉, see [`graph`]), a device does O(k) key agreements,
//! shares and ciphertexts and O(k · L) mask expansion, and sends O(k + L) bytes; the server
//! does O(n · k) work for the relay and O(n · L + d · k · L) for unmasking with d drop-outs.

pub mod client;
pub mod config;
mod crypto;
pub mod error;
pub mod fixed_point;
pub mod graph;
mod mask;
pub mod messages;
pub mod server;
pub mod shamir;

pub use client::{advertise_keys, ClientInputSent, ClientKeysAdvertised, ClientSharesSent};
pub use config::{from_announcement, ConfigError, RoundConfig};
pub use crypto::SHARE_CIPHERTEXT_LEN;
pub use error::{Phase, ProtocolError, SecretKind};
pub use fixed_point::{FixedPoint, FixedPointError};
pub use graph::{GraphError, NeighbourGraph};
pub use messages::{
    AdvertiseKeys, DeviceKeys, EncryptedShares, MaskedInput, NeighbourKeys, RelayedShares,
    RevealedShare, ShareKeys, UnmaskRequest, UnmaskResponse,
};
pub use rand_core::OsRng;
pub use server::{AggregateOutput, Server};
pub use shamir::{ShamirError, Share};

/// The Shamir point of the share held by participant `holder` of a secret owned by a device
/// whose (increasing) neighbour list is `owner_neighbours`: 1 + the holder's position.
pub(crate) fn share_point(owner_neighbours: &[usize], holder: usize) -> Option<u8> {
    let position = owner_neighbours.binary_search(&holder).ok()?;
    u8::try_from(position + 1).ok()
}

/// Whether `ids` is strictly increasing (sorted, no repeats).
pub(crate) fn strictly_increasing(ids: impl IntoIterator<Item = u32>) -> bool {
    let mut last: Option<u32> = None;
    for id in ids {
        if last.is_some_and(|l| l >= id) {
            return false;
        }
        last = Some(id);
    }
    true
}
