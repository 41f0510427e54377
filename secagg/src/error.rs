//! The errors of the protocol state machines.
//!
//! This module owns [`ProtocolError`], returned by the client and the server whenever a
//! message is malformed, unexpected, out of bounds or fails a cryptographic check, or when
//! the round can no longer proceed safely. Every check on received data ends in one of these
//! variants; nothing received is unwrapped.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::ConfigError;
use crate::shamir::ShamirError;

/// The phases of a round, as seen by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Phase 0: collecting the devices' public keys.
    AdvertiseKeys,
    /// Phase 1: collecting the encrypted shares.
    ShareKeys,
    /// Phase 2: collecting the masked inputs.
    MaskedInput,
    /// Phase 3: collecting the revealed shares.
    Unmasking,
    /// The sum has been output.
    Finished,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Phase::AdvertiseKeys => "AdvertiseKeys",
            Phase::ShareKeys => "ShareKeys",
            Phase::MaskedInput => "MaskedInput",
            Phase::Unmasking => "Unmasking",
            Phase::Finished => "Finished",
        };
        f.write_str(name)
    }
}

/// Which of a device's two secrets a share belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SecretKind {
    /// The self-mask seed `b_u`.
    SelfMask,
    /// The mask secret key `s_sk_u`.
    MaskKey,
}

/// Everything that can go wrong in a round, on either side.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// The round configuration is not valid.
    #[error("invalid round configuration: {0}")]
    Config(#[from] ConfigError),
    /// The device id is not a participant of the round.
    #[error("device {id} is not a participant of this round")]
    UnknownDevice {
        /// The id.
        id: u32,
    },
    /// A message of another round.
    #[error("message of round {got}, expected round {expected}")]
    WrongRound {
        /// This round.
        expected: u64,
        /// The message's round.
        got: u64,
    },
    /// A message addressed to another device.
    #[error("message addressed to device {got}, this is device {expected}")]
    WrongRecipient {
        /// This device.
        expected: u32,
        /// The message's recipient.
        got: u32,
    },
    /// A message that this phase does not accept.
    #[error("the server is in phase {current}, this message belongs to phase {message}")]
    WrongPhase {
        /// The server's phase.
        current: Phase,
        /// The phase the message belongs to.
        message: Phase,
    },
    /// A sender that the current phase does not expect (did not take part in an earlier phase).
    #[error("device {id} may not send a message in phase {phase}")]
    UnexpectedSender {
        /// The sender.
        id: u32,
        /// The phase.
        phase: Phase,
    },
    /// A second message from the same device in the same phase.
    #[error("device {id} already sent its message of phase {phase}")]
    DuplicateMessage {
        /// The sender.
        id: u32,
        /// The phase.
        phase: Phase,
    },
    /// A list in a message names a device that is not a neighbour (or not eligible).
    #[error("device {id} is not an eligible neighbour here")]
    NotANeighbour {
        /// The id.
        id: u32,
    },
    /// A list of ids in a message is not strictly increasing (or repeats an id).
    #[error("a list of device ids is not strictly increasing")]
    NotStrictlyIncreasing,
    /// A list in a message is longer than the round allows.
    #[error("a list has {got} entries, at most {max} are allowed")]
    TooManyEntries {
        /// Entries given.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// A vector whose length is not the round's.
    #[error("vector of length {got}, the round's length is {expected}")]
    WrongVectorLength {
        /// The round's length.
        expected: usize,
        /// The vector's length.
        got: usize,
    },
    /// A ciphertext whose length is not that of an encrypted share.
    #[error("ciphertext from device {peer} has {got} bytes, expected {expected}")]
    WrongCiphertextLength {
        /// The other end of the ciphertext.
        peer: u32,
        /// Bytes given.
        got: usize,
        /// Expected length.
        expected: usize,
    },
    /// Authenticated decryption failed: the ciphertext, or its binding, was altered.
    #[error("the encrypted shares from device {from} do not authenticate")]
    DecryptionFailed {
        /// The sender of the shares.
        from: u32,
    },
    /// The decrypted shares name another sender, recipient, round or point than expected.
    #[error("the decrypted shares from device {from} carry a wrong header")]
    ShareHeaderMismatch {
        /// The sender of the shares.
        from: u32,
    },
    /// Two devices advertised the same public key, or a device used one key for both pairs.
    #[error("device {id} advertised a public key already in use")]
    DuplicatePublicKey {
        /// The device.
        id: u32,
    },
    /// A public key whose Diffie-Hellman output is not contributory (a low-order point).
    #[error("device {id} advertised a low-order public key")]
    WeakPublicKey {
        /// The device.
        id: u32,
    },
    /// Too few neighbours took part for the device's secrets to be shared t-of-m.
    #[error("{have} neighbours take part, the threshold is {need}")]
    TooFewNeighbours {
        /// Neighbours taking part.
        have: usize,
        /// The threshold.
        need: usize,
    },
    /// Fewer surviving neighbours than the threshold: the client refuses to unmask.
    #[error("{survivors} surviving neighbours, the threshold is {threshold}: refusing to unmask")]
    TooFewSurvivors {
        /// Survivors named.
        survivors: usize,
        /// The threshold.
        threshold: usize,
    },
    /// Too few devices reached the end of a phase for the round to go on.
    #[error("{have} devices completed phase {phase}, at least {need} are needed")]
    TooFewParticipants {
        /// The phase.
        phase: Phase,
        /// Devices that completed it.
        have: usize,
        /// The minimum (the threshold).
        need: usize,
    },
    /// The server asked for both the self-mask share and the key share of one device.
    #[error("both the self-mask share and the mask-key share of device {id} were requested")]
    BothSharesRequested {
        /// The device.
        id: u32,
    },
    /// The unmask request does not classify every device whose shares this client holds.
    #[error("the unmask request says nothing about device {id}")]
    IncompleteUnmaskRequest {
        /// A device left out.
        id: u32,
    },
    /// A device's shares from phase 1 do not go to exactly its eligible neighbours.
    #[error("the shares of device {sender} are not addressed to exactly its neighbours")]
    WrongShareRecipients {
        /// The sender.
        sender: u32,
    },
    /// An unmask response does not hold exactly the requested shares.
    #[error("the unmask response of device {from} does not match its request ({kind:?} share of {owner})")]
    UnrequestedShare {
        /// The responder.
        from: u32,
        /// Owner of the offending share.
        owner: u32,
        /// Which secret.
        kind: SecretKind,
    },
    /// A revealed share carries a point other than the responder's.
    #[error("device {from} revealed a share of device {owner} at the wrong point")]
    WrongSharePoint {
        /// The responder.
        from: u32,
        /// The owner.
        owner: u32,
    },
    /// Not enough shares arrived to rebuild a secret.
    #[error("{have} shares of the {kind:?} secret of device {owner} arrived, {need} are needed")]
    NotEnoughShares {
        /// The owner.
        owner: u32,
        /// Which secret.
        kind: SecretKind,
        /// Shares available.
        have: usize,
        /// The threshold.
        need: usize,
    },
    /// Reconstruction of a secret failed.
    #[error("rebuilding the {kind:?} secret of device {owner} failed: {source}")]
    Reconstruction {
        /// The owner.
        owner: u32,
        /// Which secret.
        kind: SecretKind,
        /// Why.
        source: ShamirError,
    },
    /// A rebuilt mask secret key does not match the public key its owner advertised.
    #[error("the rebuilt mask key of device {owner} does not match its advertised public key")]
    KeyMismatch {
        /// The owner.
        owner: u32,
    },
    /// Splitting a secret failed.
    #[error("splitting a secret failed: {0}")]
    Sharing(ShamirError),
    /// The random number generator failed.
    #[error("the random number generator failed")]
    Randomness,
    /// Authenticated encryption failed (cannot happen for share-sized plaintexts).
    #[error("encrypting a share failed")]
    EncryptionFailed,
}
