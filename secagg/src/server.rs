//! The server side of a round.
//!
//! This module owns the server's state machine. The server receives device messages one at a
//! time in any order (`receive_*`), and the caller, which owns the clock, ends each phase
//! (`close_*`) when everyone answered or its deadline passed; closing returns the messages to
//! send to each device still in the round. Sets of devices:
//!
//! * U1: advertised keys in phase 0;
//! * U2 ⊆ U1: sent their encrypted shares in phase 1;
//! * U3 ⊆ U2: sent a masked input in phase 2, the **survivors**; U2 \ U3 are the **dropped**.
//!
//! A message is checked completely before it changes the state, so a refused message leaves
//! the server as it was. [`Server::finish`] may be called as soon as enough unmask responses
//! arrived; when some secret still lacks shares it returns an error and the server stays in
//! the unmasking phase, waiting for more.
//!
//! A device that sent its masked input but never answers the unmask request is still a
//! survivor: its input is in the sum, and its self mask is removed with the shares its
//! neighbours reveal. Only its own response is missing, which costs nothing as long as each
//! survivor's self-mask seed and each dropped device's key still gets t shares.

use std::collections::{BTreeMap, BTreeSet};

use x25519_dalek::{PublicKey, StaticSecret};

use crate::config::RoundConfig;
use crate::crypto::SHARE_CIPHERTEXT_LEN;
use crate::error::{Phase, ProtocolError, SecretKind};
use crate::graph::NeighbourGraph;
use crate::mask::{apply_mask, pairwise_seed, pairwise_sign, MaskKind, Sign};
use crate::messages::{
    AdvertiseKeys, DeviceKeys, EncryptedShares, MaskedInput, NeighbourKeys, RelayedShares,
    RevealedShare, ShareKeys, UnmaskRequest, UnmaskResponse,
};
use crate::shamir::{self, Share};
use crate::{share_point, strictly_increasing};

/// What the server outputs at the end of a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateOutput {
    /// Σ x_u mod 2^32 over the survivors.
    pub sum: Vec<u32>,
    /// The survivors U3, increasing: exactly the devices whose inputs are in `sum`.
    pub survivors: Vec<u32>,
    /// The devices that shared keys but sent no masked input, increasing.
    pub dropped: Vec<u32>,
}

/// The server of one round.
#[derive(Debug)]
pub struct Server {
    config: RoundConfig,
    graph: NeighbourGraph,
    phase: Phase,
    /// U1 with their keys.
    keys: BTreeMap<u32, DeviceKeys>,
    /// Every public key advertised so far, to refuse reuse in O(log n).
    keys_in_use: BTreeSet<[u8; 32]>,
    /// U1 as a set, fixed when phase 0 closes.
    advertised: BTreeSet<u32>,
    /// Ciphertexts of phase 1, by recipient, then by sender.
    mailbox: BTreeMap<u32, BTreeMap<u32, Vec<u8>>>,
    /// U2.
    shared: BTreeSet<u32>,
    /// Running Σ y_u.
    masked_sum: Vec<u32>,
    /// U3.
    survivors: BTreeSet<u32>,
    /// U2 \ U3, fixed when phase 2 closes.
    dropped: BTreeSet<u32>,
    /// Devices that answered the unmask request.
    responded: BTreeSet<u32>,
    self_mask_shares: BTreeMap<u32, Vec<Share>>,
    mask_key_shares: BTreeMap<u32, Vec<Share>>,
}

impl Server {
    /// A server for the round `config` (validated), in phase 0.
    pub fn new(config: RoundConfig) -> Result<Self, ProtocolError> {
        config.validate()?;
        let graph = config.graph()?;
        Ok(Self {
            graph,
            phase: Phase::AdvertiseKeys,
            keys: BTreeMap::new(),
            keys_in_use: BTreeSet::new(),
            advertised: BTreeSet::new(),
            mailbox: BTreeMap::new(),
            shared: BTreeSet::new(),
            masked_sum: vec![0; config.vector_len()],
            survivors: BTreeSet::new(),
            dropped: BTreeSet::new(),
            responded: BTreeSet::new(),
            self_mask_shares: BTreeMap::new(),
            mask_key_shares: BTreeMap::new(),
            config,
        })
    }

    /// The round.
    pub fn config(&self) -> &RoundConfig {
        &self.config
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The survivors so far (U3), increasing.
    pub fn survivors(&self) -> Vec<u32> {
        self.survivors.iter().copied().collect()
    }

    fn expect(&self, round_id: u64, phase: Phase) -> Result<(), ProtocolError> {
        if self.phase != phase {
            return Err(ProtocolError::WrongPhase {
                current: self.phase,
                message: phase,
            });
        }
        if round_id != self.config.round_id() {
            return Err(ProtocolError::WrongRound {
                expected: self.config.round_id(),
                got: round_id,
            });
        }
        Ok(())
    }

    fn index(&self, id: u32) -> Result<usize, ProtocolError> {
        self.config
            .index_of(id)
            .ok_or(ProtocolError::UnknownDevice { id })
    }

    /// Ids of the neighbours of `id` that belong to `set`, increasing.
    fn neighbours_in(&self, id: u32, set: &BTreeSet<u32>) -> Result<Vec<u32>, ProtocolError> {
        let index = self.index(id)?;
        let participants = self.config.participants();
        Ok(self
            .graph
            .neighbours(index)
            .ok_or(ProtocolError::UnknownDevice { id })?
            .into_iter()
            .filter_map(|i| participants.get(i).copied())
            .filter(|v| set.contains(v))
            .collect())
    }

    fn require_at_least(&self, have: usize) -> Result<(), ProtocolError> {
        let need = self.config.threshold();
        if have < need {
            return Err(ProtocolError::TooFewParticipants {
                phase: self.phase,
                have,
                need,
            });
        }
        Ok(())
    }

    /// Phase 0: records a device's public keys. Refuses unknown devices, repeats, and keys
    /// already advertised by anyone (including the device's other key).
    pub fn receive_advertise_keys(&mut self, message: &AdvertiseKeys) -> Result<(), ProtocolError> {
        self.expect(message.round_id, Phase::AdvertiseKeys)?;
        let id = message.sender;
        self.index(id)?;
        if self.keys.contains_key(&id) {
            return Err(ProtocolError::DuplicateMessage {
                id,
                phase: Phase::AdvertiseKeys,
            });
        }
        if message.c_pk == message.s_pk
            || self.keys_in_use.contains(&message.c_pk)
            || self.keys_in_use.contains(&message.s_pk)
        {
            return Err(ProtocolError::DuplicatePublicKey { id });
        }
        self.keys_in_use.insert(message.c_pk);
        self.keys_in_use.insert(message.s_pk);
        self.keys.insert(
            id,
            DeviceKeys {
                id,
                c_pk: message.c_pk,
                s_pk: message.s_pk,
            },
        );
        Ok(())
    }

    /// Ends phase 0: for every device that advertised, the keys of its neighbours that did.
    pub fn close_advertise_keys(&mut self) -> Result<Vec<NeighbourKeys>, ProtocolError> {
        self.expect(self.config.round_id(), Phase::AdvertiseKeys)?;
        self.require_at_least(self.keys.len())?;
        self.advertised = self.keys.keys().copied().collect();
        let mut out = Vec::with_capacity(self.advertised.len());
        for &id in &self.advertised {
            let neighbours = self
                .neighbours_in(id, &self.advertised)?
                .into_iter()
                .filter_map(|v| self.keys.get(&v).cloned())
                .collect();
            out.push(NeighbourKeys {
                round_id: self.config.round_id(),
                recipient: id,
                neighbours,
            });
        }
        self.phase = Phase::ShareKeys;
        Ok(out)
    }

    /// Phase 1: records a device's ciphertexts. Refuses senders outside U1, repeats, and lists
    /// that are not exactly one ciphertext of the right length for each neighbour in U1.
    pub fn receive_share_keys(&mut self, message: &ShareKeys) -> Result<(), ProtocolError> {
        self.expect(message.round_id, Phase::ShareKeys)?;
        let id = message.sender;
        if !self.keys.contains_key(&id) {
            return Err(ProtocolError::UnexpectedSender {
                id,
                phase: Phase::ShareKeys,
            });
        }
        if self.shared.contains(&id) {
            return Err(ProtocolError::DuplicateMessage {
                id,
                phase: Phase::ShareKeys,
            });
        }
        let expected = self.neighbours_in(id, &self.advertised)?;
        if message.shares.len() != expected.len()
            || message
                .shares
                .iter()
                .zip(&expected)
                .any(|(s, &v)| s.peer != v)
        {
            return Err(ProtocolError::WrongShareRecipients { sender: id });
        }
        if let Some(bad) = message
            .shares
            .iter()
            .find(|s| s.ciphertext.len() != SHARE_CIPHERTEXT_LEN)
        {
            return Err(ProtocolError::WrongCiphertextLength {
                peer: bad.peer,
                got: bad.ciphertext.len(),
                expected: SHARE_CIPHERTEXT_LEN,
            });
        }
        for share in &message.shares {
            self.mailbox
                .entry(share.peer)
                .or_default()
                .insert(id, share.ciphertext.clone());
        }
        self.shared.insert(id);
        Ok(())
    }

    /// Ends phase 1: for every device of U2, the ciphertexts its U2 neighbours sent it.
    pub fn close_share_keys(&mut self) -> Result<Vec<RelayedShares>, ProtocolError> {
        self.expect(self.config.round_id(), Phase::ShareKeys)?;
        self.require_at_least(self.shared.len())?;
        let mut out = Vec::with_capacity(self.shared.len());
        for &id in &self.shared {
            let shares = self
                .mailbox
                .get(&id)
                .map(|from| {
                    from.iter()
                        .filter(|(sender, _)| self.shared.contains(sender))
                        .map(|(&sender, ciphertext)| EncryptedShares {
                            peer: sender,
                            ciphertext: ciphertext.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(RelayedShares {
                round_id: self.config.round_id(),
                recipient: id,
                shares,
            });
        }
        self.mailbox.clear();
        self.phase = Phase::MaskedInput;
        Ok(out)
    }

    /// Phase 2: adds a device's masked input to the running sum. Refuses senders outside U2,
    /// repeats, and vectors whose length is not the round's.
    pub fn receive_masked_input(&mut self, message: &MaskedInput) -> Result<(), ProtocolError> {
        self.expect(message.round_id, Phase::MaskedInput)?;
        let id = message.sender;
        if !self.shared.contains(&id) {
            return Err(ProtocolError::UnexpectedSender {
                id,
                phase: Phase::MaskedInput,
            });
        }
        if self.survivors.contains(&id) {
            return Err(ProtocolError::DuplicateMessage {
                id,
                phase: Phase::MaskedInput,
            });
        }
        if message.values.len() != self.config.vector_len() {
            return Err(ProtocolError::WrongVectorLength {
                expected: self.config.vector_len(),
                got: message.values.len(),
            });
        }
        for (acc, &y) in self.masked_sum.iter_mut().zip(&message.values) {
            *acc = acc.wrapping_add(y);
        }
        self.survivors.insert(id);
        Ok(())
    }

    /// Ends phase 2: fixes survivors and dropped devices and makes, for each survivor, the
    /// request naming its surviving and its dropped neighbours.
    pub fn close_masked_inputs(&mut self) -> Result<Vec<UnmaskRequest>, ProtocolError> {
        self.expect(self.config.round_id(), Phase::MaskedInput)?;
        self.require_at_least(self.survivors.len())?;
        self.dropped = self.shared.difference(&self.survivors).copied().collect();
        let mut out = Vec::with_capacity(self.survivors.len());
        for &id in &self.survivors {
            out.push(UnmaskRequest {
                round_id: self.config.round_id(),
                recipient: id,
                survivors: self.neighbours_in(id, &self.survivors)?,
                dropped: self.neighbours_in(id, &self.dropped)?,
            });
        }
        self.phase = Phase::Unmasking;
        Ok(out)
    }

    /// Checks that `revealed` holds exactly one share for each of `expected` owners, at
    /// the point of `from` in the owner's neighbour list.
    fn check_revealed(
        &self,
        from: u32,
        from_index: usize,
        revealed: &[RevealedShare],
        expected: &[u32],
        kind: SecretKind,
    ) -> Result<(), ProtocolError> {
        for (i, share) in revealed.iter().enumerate() {
            if expected.get(i) != Some(&share.owner) {
                return Err(ProtocolError::UnrequestedShare {
                    from,
                    owner: share.owner,
                    kind,
                });
            }
            let owner_index = self.index(share.owner)?;
            let owner_neighbours = self
                .graph
                .neighbours(owner_index)
                .ok_or(ProtocolError::UnknownDevice { id: share.owner })?;
            if share_point(&owner_neighbours, from_index) != Some(share.share.x) {
                return Err(ProtocolError::WrongSharePoint {
                    from,
                    owner: share.owner,
                });
            }
        }
        if let Some(&missing) = expected.get(revealed.len()) {
            return Err(ProtocolError::UnrequestedShare {
                from,
                owner: missing,
                kind,
            });
        }
        Ok(())
    }

    /// Phase 3: records a survivor's revealed shares. Refuses non-survivors, repeats, and
    /// responses that are not exactly the shares its request asked for, at its own points.
    pub fn receive_unmask_response(
        &mut self,
        message: &UnmaskResponse,
    ) -> Result<(), ProtocolError> {
        self.expect(message.round_id, Phase::Unmasking)?;
        let id = message.sender;
        if !self.survivors.contains(&id) {
            return Err(ProtocolError::UnexpectedSender {
                id,
                phase: Phase::Unmasking,
            });
        }
        if self.responded.contains(&id) {
            return Err(ProtocolError::DuplicateMessage {
                id,
                phase: Phase::Unmasking,
            });
        }
        let index = self.index(id)?;
        let expected_survivors = self.neighbours_in(id, &self.survivors)?;
        let expected_dropped = self.neighbours_in(id, &self.dropped)?;
        debug_assert!(strictly_increasing(expected_survivors.iter().copied()));
        self.check_revealed(
            id,
            index,
            &message.self_mask_shares,
            &expected_survivors,
            SecretKind::SelfMask,
        )?;
        self.check_revealed(
            id,
            index,
            &message.mask_key_shares,
            &expected_dropped,
            SecretKind::MaskKey,
        )?;
        for r in &message.self_mask_shares {
            self.self_mask_shares
                .entry(r.owner)
                .or_default()
                .push(r.share.clone());
        }
        for r in &message.mask_key_shares {
            self.mask_key_shares
                .entry(r.owner)
                .or_default()
                .push(r.share.clone());
        }
        self.responded.insert(id);
        Ok(())
    }

    fn rebuild(
        &self,
        owner: u32,
        kind: SecretKind,
    ) -> Result<zeroize::Zeroizing<[u8; 32]>, ProtocolError> {
        let store = match kind {
            SecretKind::SelfMask => &self.self_mask_shares,
            SecretKind::MaskKey => &self.mask_key_shares,
        };
        let shares = store.get(&owner).map(Vec::as_slice).unwrap_or_default();
        let need = self.config.threshold();
        if shares.len() < need {
            return Err(ProtocolError::NotEnoughShares {
                owner,
                kind,
                have: shares.len(),
                need,
            });
        }
        shamir::reconstruct(shares, need).map_err(|source| ProtocolError::Reconstruction {
            owner,
            kind,
            source,
        })
    }

    /// Ends the round: rebuilds each survivor's self-mask seed and each dropped device's mask
    /// key (when it has surviving neighbours), removes those masks from the sum and returns
    /// the sum over the survivors. On error nothing changes, and more responses may be
    /// received before trying again.
    pub fn finish(&mut self) -> Result<AggregateOutput, ProtocolError> {
        self.expect(self.config.round_id(), Phase::Unmasking)?;
        // Cheap counting first, so a premature call costs no cryptography.
        for &owner in &self.survivors {
            let have = self.self_mask_shares.get(&owner).map_or(0, Vec::len);
            if have < self.config.threshold() {
                return Err(ProtocolError::NotEnoughShares {
                    owner,
                    kind: SecretKind::SelfMask,
                    have,
                    need: self.config.threshold(),
                });
            }
        }
        let mut sum = self.masked_sum.clone();
        for &owner in &self.survivors {
            let seed = self.rebuild(owner, SecretKind::SelfMask)?;
            apply_mask(&mut sum, &seed, MaskKind::SelfMask, Sign::Subtract);
        }
        for &owner in &self.dropped {
            let surviving = self.neighbours_in(owner, &self.survivors)?;
            if surviving.is_empty() {
                continue;
            }
            let key_bytes = self.rebuild(owner, SecretKind::MaskKey)?;
            let key = StaticSecret::from(*key_bytes);
            let advertised = self
                .keys
                .get(&owner)
                .ok_or(ProtocolError::UnknownDevice { id: owner })?;
            if PublicKey::from(&key).to_bytes() != advertised.s_pk {
                return Err(ProtocolError::KeyMismatch { owner });
            }
            for survivor in surviving {
                let survivor_keys = self
                    .keys
                    .get(&survivor)
                    .ok_or(ProtocolError::UnknownDevice { id: survivor })?;
                let shared = crate::crypto::agree(&key, &survivor_keys.s_pk, survivor)?;
                let seed = pairwise_seed(&shared, &self.config, survivor, owner);
                // The survivor applied this mask with its own sign; take it back out.
                let sign = pairwise_sign(survivor, owner).opposite();
                apply_mask(&mut sum, &seed, MaskKind::Pairwise, sign);
            }
        }
        self.phase = Phase::Finished;
        self.self_mask_shares.clear();
        self.mask_key_shares.clear();
        Ok(AggregateOutput {
            sum,
            survivors: self.survivors.iter().copied().collect(),
            dropped: self.dropped.iter().copied().collect(),
        })
    }
}
