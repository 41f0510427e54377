//! The device side of a round, as a typestate machine.
//!
//! This module owns what a device holds and does in each phase. Each phase is a method that
//! consumes the previous state, checks the server's message against the round and the
//! device's own view, and returns the next state with the message to send:
//!
//! ```text
//! advertise_keys(config, id, rng)         -> ClientKeysAdvertised + AdvertiseKeys
//! ClientKeysAdvertised::share_keys(..)    -> ClientSharesSent     + ShareKeys
//! ClientSharesSent::masked_input(..)      -> ClientInputSent      + MaskedInput
//! ClientInputSent::unmask(..)             -> UnmaskResponse (the state is consumed)
//! ```
//!
//! Because `unmask` consumes the state, a device answers at most one unmask request per round,
//! so a server cannot collect self-mask shares with one request and key shares of the same
//! device with another. Any error also consumes the state: the device then drops out of the
//! round, which is always safe. Secrets (x25519 keys, `b_u`, held shares) are zeroised on drop.

use std::collections::BTreeMap;

use rand_core::{CryptoRng, RngCore};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::config::RoundConfig;
use crate::crypto::{agree, open_shares, random_bytes, random_secret, seal_shares, SharePair};
use crate::error::ProtocolError;
use crate::graph::NeighbourGraph;
use crate::mask::{apply_mask, pairwise_seed, pairwise_sign, MaskKind, Sign};
use crate::messages::{
    AdvertiseKeys, EncryptedShares, MaskedInput, NeighbourKeys, RelayedShares, RevealedShare,
    ShareKeys, UnmaskRequest, UnmaskResponse,
};
use crate::shamir::{self, Share};
use crate::{share_point, strictly_increasing};

/// What a device knows for the whole round.
struct Core {
    config: RoundConfig,
    graph: NeighbourGraph,
    id: u32,
    index: usize,
    /// Indices of the device's neighbours, increasing.
    neighbours: Vec<usize>,
    c_sk: StaticSecret,
    s_sk: StaticSecret,
}

impl Core {
    fn check_header(&self, round_id: u64, recipient: u32) -> Result<(), ProtocolError> {
        if round_id != self.config.round_id() {
            return Err(ProtocolError::WrongRound {
                expected: self.config.round_id(),
                got: round_id,
            });
        }
        if recipient != self.id {
            return Err(ProtocolError::WrongRecipient {
                expected: self.id,
                got: recipient,
            });
        }
        Ok(())
    }

    /// The participant index of `id` when it is one of this device's neighbours.
    fn neighbour_index(&self, id: u32) -> Result<usize, ProtocolError> {
        self.config
            .index_of(id)
            .filter(|index| self.neighbours.binary_search(index).is_ok())
            .ok_or(ProtocolError::NotANeighbour { id })
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("round_id", &self.config.round_id())
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The public keys of a neighbour, as received in phase 0.
#[derive(Debug, Clone)]
struct Peer {
    index: usize,
    c_pk: [u8; 32],
    s_pk: [u8; 32],
}

/// Phase 0: makes the device's two key pairs for the round and the message advertising them.
/// `config` is validated; `id` must be a participant.
pub fn advertise_keys<R: RngCore + CryptoRng>(
    config: RoundConfig,
    id: u32,
    rng: &mut R,
) -> Result<(ClientKeysAdvertised, AdvertiseKeys), ProtocolError> {
    config.validate()?;
    let index = config
        .index_of(id)
        .ok_or(ProtocolError::UnknownDevice { id })?;
    let graph = config.graph()?;
    let neighbours = graph
        .neighbours(index)
        .ok_or(ProtocolError::UnknownDevice { id })?;
    let c_sk = random_secret(rng)?;
    let s_sk = random_secret(rng)?;
    let message = AdvertiseKeys {
        round_id: config.round_id(),
        sender: id,
        c_pk: PublicKey::from(&c_sk).to_bytes(),
        s_pk: PublicKey::from(&s_sk).to_bytes(),
    };
    let core = Core {
        config,
        graph,
        id,
        index,
        neighbours,
        c_sk,
        s_sk,
    };
    Ok((ClientKeysAdvertised { core }, message))
}

/// A device that advertised its keys and awaits its neighbours' keys.
#[derive(Debug)]
pub struct ClientKeysAdvertised {
    core: Core,
}

impl ClientKeysAdvertised {
    /// The device's id.
    pub fn id(&self) -> u32 {
        self.core.id
    }

    /// The device's neighbours in this round (ids, increasing).
    pub fn neighbour_ids(&self) -> Vec<u32> {
        let participants = self.core.config.participants();
        self.core
            .neighbours
            .iter()
            .filter_map(|&i| participants.get(i).copied())
            .collect()
    }

    /// Phase 1: draws the self-mask seed `b_u`, splits it and `s_sk_u` t-of-m among the
    /// neighbours that advertised keys, and encrypts each neighbour's pair of shares for it.
    ///
    /// Refuses neighbour lists that are too long, unsorted, name non-neighbours, repeat a
    /// public key, or hold fewer than t neighbours.
    pub fn share_keys<R: RngCore + CryptoRng>(
        self,
        message: &NeighbourKeys,
        rng: &mut R,
    ) -> Result<(ClientSharesSent, ShareKeys), ProtocolError> {
        let core = self.core;
        core.check_header(message.round_id, message.recipient)?;
        if message.neighbours.len() > core.neighbours.len() {
            return Err(ProtocolError::TooManyEntries {
                got: message.neighbours.len(),
                max: core.neighbours.len(),
            });
        }
        if !strictly_increasing(message.neighbours.iter().map(|k| k.id)) {
            return Err(ProtocolError::NotStrictlyIncreasing);
        }
        let mut keys_in_use = std::collections::BTreeSet::new();
        keys_in_use.insert(PublicKey::from(&core.c_sk).to_bytes());
        keys_in_use.insert(PublicKey::from(&core.s_sk).to_bytes());
        let mut peers = BTreeMap::new();
        for keys in &message.neighbours {
            let index = core.neighbour_index(keys.id)?;
            if !keys_in_use.insert(keys.c_pk) || !keys_in_use.insert(keys.s_pk) {
                return Err(ProtocolError::DuplicatePublicKey { id: keys.id });
            }
            peers.insert(
                keys.id,
                Peer {
                    index,
                    c_pk: keys.c_pk,
                    s_pk: keys.s_pk,
                },
            );
        }
        let threshold = core.config.threshold();
        if peers.len() < threshold {
            return Err(ProtocolError::TooFewNeighbours {
                have: peers.len(),
                need: threshold,
            });
        }
        // The share held by neighbour v sits at v's position in this device's list.
        let points = peers
            .iter()
            .map(|(&id, peer)| {
                share_point(&core.neighbours, peer.index).ok_or(ProtocolError::NotANeighbour { id })
            })
            .collect::<Result<Vec<u8>, _>>()?;
        let self_mask_seed = random_bytes(rng)?;
        let self_mask_shares = shamir::split(&self_mask_seed, threshold, &points, rng)
            .map_err(ProtocolError::Sharing)?;
        let mask_key = Zeroizing::new(core.s_sk.to_bytes());
        let mask_key_shares =
            shamir::split(&mask_key, threshold, &points, rng).map_err(ProtocolError::Sharing)?;
        let mut shares = Vec::with_capacity(peers.len());
        for ((&id, peer), (b, s)) in peers
            .iter()
            .zip(self_mask_shares.iter().zip(&mask_key_shares))
        {
            let shared = agree(&core.c_sk, &peer.c_pk, id)?;
            let pair = SharePair {
                x: b.x,
                self_mask: b.y,
                mask_key: s.y,
            };
            let ciphertext = seal_shares(&shared, &core.config, core.id, id, &pair)?;
            shares.push(EncryptedShares {
                peer: id,
                ciphertext,
            });
        }
        let message = ShareKeys {
            round_id: core.config.round_id(),
            sender: core.id,
            shares,
        };
        Ok((
            ClientSharesSent {
                core,
                peers,
                self_mask_seed,
            },
            message,
        ))
    }
}

/// A device that sent its encrypted shares and awaits its neighbours' shares.
#[derive(Debug)]
pub struct ClientSharesSent {
    core: Core,
    peers: BTreeMap<u32, Peer>,
    self_mask_seed: Zeroizing<[u8; 32]>,
}

impl ClientSharesSent {
    /// The device's id.
    pub fn id(&self) -> u32 {
        self.core.id
    }

    /// Phase 2: opens and checks the shares relayed from the neighbours, then masks `input`
    /// with `PRG(b_u)` and with `±PRG(s_uv)` for every neighbour v whose shares arrived (those
    /// are the ones the server can unmask if they drop).
    ///
    /// Refuses an input of the wrong length, relayed lists that are too long, unsorted, from
    /// non-neighbours or with ciphertexts that fail to authenticate, and fewer than t senders.
    pub fn masked_input(
        self,
        message: &RelayedShares,
        input: &[u32],
    ) -> Result<(ClientInputSent, MaskedInput), ProtocolError> {
        let Self {
            core,
            peers,
            self_mask_seed,
        } = self;
        core.check_header(message.round_id, message.recipient)?;
        let vector_len = core.config.vector_len();
        if input.len() != vector_len {
            return Err(ProtocolError::WrongVectorLength {
                expected: vector_len,
                got: input.len(),
            });
        }
        if message.shares.len() > peers.len() {
            return Err(ProtocolError::TooManyEntries {
                got: message.shares.len(),
                max: peers.len(),
            });
        }
        if !strictly_increasing(message.shares.iter().map(|s| s.peer)) {
            return Err(ProtocolError::NotStrictlyIncreasing);
        }
        let mut held = BTreeMap::new();
        for relayed in &message.shares {
            let sender = relayed.peer;
            let peer = peers
                .get(&sender)
                .ok_or(ProtocolError::NotANeighbour { id: sender })?;
            let their_neighbours = core
                .graph
                .neighbours(peer.index)
                .ok_or(ProtocolError::NotANeighbour { id: sender })?;
            let x = share_point(&their_neighbours, core.index)
                .ok_or(ProtocolError::NotANeighbour { id: sender })?;
            let shared = agree(&core.c_sk, &peer.c_pk, sender)?;
            let pair = open_shares(
                &shared,
                &core.config,
                sender,
                core.id,
                x,
                &relayed.ciphertext,
            )?;
            held.insert(sender, pair);
        }
        let threshold = core.config.threshold();
        if held.len() < threshold {
            return Err(ProtocolError::TooFewNeighbours {
                have: held.len(),
                need: threshold,
            });
        }
        let mut values = input.to_vec();
        apply_mask(&mut values, &self_mask_seed, MaskKind::SelfMask, Sign::Add);
        for &other in held.keys() {
            let peer = peers
                .get(&other)
                .ok_or(ProtocolError::NotANeighbour { id: other })?;
            let shared = agree(&core.s_sk, &peer.s_pk, other)?;
            let seed = pairwise_seed(&shared, &core.config, core.id, other);
            apply_mask(
                &mut values,
                &seed,
                MaskKind::Pairwise,
                pairwise_sign(core.id, other),
            );
        }
        let message = MaskedInput {
            round_id: core.config.round_id(),
            sender: core.id,
            values,
        };
        Ok((ClientInputSent { core, held }, message))
    }
}

/// A device that sent its masked input and awaits the server's unmask request.
#[derive(Debug)]
pub struct ClientInputSent {
    core: Core,
    /// The share pairs received in phase 1, by owner.
    held: BTreeMap<u32, SharePair>,
}

impl std::fmt::Debug for SharePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharePair(<redacted>)")
    }
}

impl ClientInputSent {
    /// The device's id.
    pub fn id(&self) -> u32 {
        self.core.id
    }

    /// Phase 3: reveals the self-mask shares of the surviving neighbours and the mask-key
    /// shares of the dropped ones. Consumes the device's state: it answers once per round.
    ///
    /// Refuses ([`ProtocolError::BothSharesRequested`]) when a device is named both survivor
    /// and dropped, ([`ProtocolError::TooFewSurvivors`]) when fewer than t neighbours survive,
    /// and when the request is too long, unsorted, names devices whose shares it does not
    /// hold, or leaves one of them out.
    pub fn unmask(self, request: &UnmaskRequest) -> Result<UnmaskResponse, ProtocolError> {
        let Self { core, held } = self;
        core.check_header(request.round_id, request.recipient)?;
        for list in [&request.survivors, &request.dropped] {
            if list.len() > held.len() {
                return Err(ProtocolError::TooManyEntries {
                    got: list.len(),
                    max: held.len(),
                });
            }
            if !strictly_increasing(list.iter().copied()) {
                return Err(ProtocolError::NotStrictlyIncreasing);
            }
            if let Some(&id) = list.iter().find(|id| !held.contains_key(id)) {
                return Err(ProtocolError::NotANeighbour { id });
            }
        }
        if let Some(&id) = request
            .dropped
            .iter()
            .find(|id| request.survivors.binary_search(id).is_ok())
        {
            return Err(ProtocolError::BothSharesRequested { id });
        }
        if let Some(&id) = held.keys().find(|id| {
            request.survivors.binary_search(id).is_err()
                && request.dropped.binary_search(id).is_err()
        }) {
            return Err(ProtocolError::IncompleteUnmaskRequest { id });
        }
        let threshold = core.config.threshold();
        if request.survivors.len() < threshold {
            return Err(ProtocolError::TooFewSurvivors {
                survivors: request.survivors.len(),
                threshold,
            });
        }
        let reveal = |ids: &[u32], pick: fn(&SharePair) -> [u8; 32]| -> Vec<RevealedShare> {
            ids.iter()
                .filter_map(|owner| {
                    held.get(owner).map(|pair| RevealedShare {
                        owner: *owner,
                        share: Share {
                            x: pair.x,
                            y: pick(pair),
                        },
                    })
                })
                .collect()
        };
        Ok(UnmaskResponse {
            round_id: core.config.round_id(),
            sender: core.id,
            self_mask_shares: reveal(&request.survivors, |p| p.self_mask),
            mask_key_shares: reveal(&request.dropped, |p| p.mask_key),
        })
    }
}
