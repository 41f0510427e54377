//! The public parameters of one aggregation round, and their validation.
//!
//! This module owns [`RoundConfig`]: the round id, the 32-byte seed of the neighbour graph,
//! the sorted participant ids, the length of the vectors, the degree k and the Shamir
//! threshold t. The server publishes it with the round; a device must call
//! [`RoundConfig::validate`] (the client and server constructors do) before trusting a
//! configuration it deserialised, because every later check is made against it.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::graph::{self, GraphError, NeighbourGraph};

/// Largest number of participants in one round.
pub const MAX_PARTICIPANTS: usize = 1 << 20;

/// Largest number of `u32` coordinates in one vector (64 MiB).
pub const MAX_VECTOR_LEN: usize = 1 << 24;

/// Why a round configuration is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// Fewer than 2 or more than [`MAX_PARTICIPANTS`] participants.
    #[error("a round has 2..={max} participants, got {got}")]
    ParticipantCount {
        /// Participants given.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// The round seed is not 64 hex digits.
    #[error("the round seed is not 32 bytes of hex")]
    Seed,
    /// A participant id appears twice.
    #[error("participant {id} is listed twice")]
    DuplicateParticipant {
        /// The id.
        id: u32,
    },
    /// The participant list of a received configuration is not strictly increasing.
    #[error("the participant list is not sorted in strictly increasing order")]
    ParticipantsNotSorted,
    /// Vector length 0 or above [`MAX_VECTOR_LEN`].
    #[error("vector length {got} is outside 1..={max}")]
    VectorLength {
        /// Length given.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// The degree is not one the graph can have for this many participants (see
    /// [`graph::effective_degree`]).
    #[error("degree {got} is not a valid degree for {participants} participants (expected {expected:?})")]
    Degree {
        /// Degree given.
        got: usize,
        /// Number of participants.
        participants: usize,
        /// The effective degree for the requested one, when there is one.
        expected: Option<usize>,
    },
    /// The threshold is not in `1..=degree`.
    #[error("threshold {threshold} is outside 1..={degree}")]
    Threshold {
        /// Threshold given.
        threshold: usize,
        /// The round's degree.
        degree: usize,
    },
    /// The graph could not be built.
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// Public parameters of one round. Build it with [`RoundConfig::new`] (server side) or
/// deserialise it and call [`RoundConfig::validate`] (device side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundConfig {
    round_id: u64,
    seed: [u8; 32],
    participants: Vec<u32>,
    vector_len: usize,
    degree: usize,
    threshold: usize,
}

impl RoundConfig {
    /// A round over `participants` (any order, no duplicates) with the default degree
    /// ([`graph::default_degree`]) and the default threshold `⌊k/2⌋ + 1`.
    pub fn new(
        round_id: u64,
        seed: [u8; 32],
        mut participants: Vec<u32>,
        vector_len: usize,
    ) -> Result<Self, ConfigError> {
        participants.sort_unstable();
        if let Some(w) = participants.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::DuplicateParticipant { id: w[0] });
        }
        let n = participants.len();
        check_count(n)?;
        let degree = graph::effective_degree(n, graph::default_degree(n))?;
        let config = Self {
            round_id,
            seed,
            participants,
            vector_len,
            degree,
            threshold: default_threshold(degree),
        };
        config.validate()?;
        Ok(config)
    }

    /// The same round with another requested degree (rounded as in
    /// [`graph::effective_degree`]) and the default threshold for it.
    pub fn with_degree(mut self, degree: usize) -> Result<Self, ConfigError> {
        self.degree = graph::effective_degree(self.participants.len(), degree)?;
        self.threshold = default_threshold(self.degree);
        self.validate()?;
        Ok(self)
    }

    /// The same round with another threshold, `1..=degree`.
    pub fn with_threshold(mut self, threshold: usize) -> Result<Self, ConfigError> {
        self.threshold = threshold;
        self.validate()?;
        Ok(self)
    }

    /// Checks every field: sorted unique participants within bounds, a vector length within
    /// bounds, a degree the graph really has for this many participants, a threshold in
    /// `1..=degree`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.participants.len();
        check_count(n)?;
        if self.participants.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ConfigError::ParticipantsNotSorted);
        }
        if self.vector_len == 0 || self.vector_len > MAX_VECTOR_LEN {
            return Err(ConfigError::VectorLength {
                got: self.vector_len,
                max: MAX_VECTOR_LEN,
            });
        }
        let expected = graph::effective_degree(n, self.degree).ok();
        if expected != Some(self.degree) {
            return Err(ConfigError::Degree {
                got: self.degree,
                participants: n,
                expected,
            });
        }
        if self.threshold == 0 || self.threshold > self.degree {
            return Err(ConfigError::Threshold {
                threshold: self.threshold,
                degree: self.degree,
            });
        }
        Ok(())
    }

    /// The round id, bound into every key derivation and ciphertext of the round.
    pub fn round_id(&self) -> u64 {
        self.round_id
    }

    /// The graph seed.
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// The participant ids, strictly increasing.
    pub fn participants(&self) -> &[u32] {
        &self.participants
    }

    /// Number of `u32` coordinates of every vector of the round.
    pub fn vector_len(&self) -> usize {
        self.vector_len
    }

    /// The degree k of the neighbour graph.
    pub fn degree(&self) -> usize {
        self.degree
    }

    /// The Shamir threshold t.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The index of `id` in the participant list.
    pub fn index_of(&self, id: u32) -> Option<usize> {
        self.participants.binary_search(&id).ok()
    }

    /// The round's neighbour graph over participant indices.
    pub fn graph(&self) -> Result<NeighbourGraph, ConfigError> {
        Ok(NeighbourGraph::new(
            &self.seed,
            self.participants.len(),
            self.degree,
        )?)
    }
}

/// The round a federation announcement defines, as both the server and every device derive
/// it: participants `0..n` (each device's index in the announced sorted id list), the
/// announced 32-byte seed in hex, the default degree and threshold.
pub fn from_announcement(
    round_id: u64,
    seed_hex: &str,
    n: usize,
    vector_len: usize,
) -> Result<RoundConfig, ConfigError> {
    let digits = seed_hex.as_bytes();
    if digits.len() != 64 {
        return Err(ConfigError::Seed);
    }
    let mut seed = [0u8; 32];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let text = std::str::from_utf8(pair).map_err(|_| ConfigError::Seed)?;
        seed[i] = u8::from_str_radix(text, 16).map_err(|_| ConfigError::Seed)?;
    }
    RoundConfig::new(round_id, seed, (0..n as u32).collect(), vector_len)
}

/// `⌊k/2⌋ + 1`: a strict majority of a device's neighbours is needed to rebuild its secrets.
pub fn default_threshold(degree: usize) -> usize {
    degree / 2 + 1
}

fn check_count(n: usize) -> Result<(), ConfigError> {
    if !(2..=MAX_PARTICIPANTS).contains(&n) {
        return Err(ConfigError::ParticipantCount {
            got: n,
            max: MAX_PARTICIPANTS,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_round_sorts_ids_and_picks_the_default_degree_and_threshold() {
        let c =
            RoundConfig::new(1, [0; 32], vec![30, 10, 20, 40, 50, 60, 70, 80, 90, 100], 5).unwrap();
        assert_eq!(c.participants()[0], 10);
        assert_eq!(c.degree(), 8);
        assert_eq!(c.threshold(), 5);
        assert_eq!(c.index_of(30), Some(2));
        assert_eq!(c.index_of(31), None);
    }

    #[test]
    fn malformed_configurations_are_typed_errors() {
        assert_eq!(
            RoundConfig::new(1, [0; 32], vec![1, 2, 2], 5),
            Err(ConfigError::DuplicateParticipant { id: 2 })
        );
        assert!(matches!(
            RoundConfig::new(1, [0; 32], vec![1], 5),
            Err(ConfigError::ParticipantCount { .. })
        ));
        assert!(matches!(
            RoundConfig::new(1, [0; 32], vec![1, 2, 3], 0),
            Err(ConfigError::VectorLength { .. })
        ));
        let c = RoundConfig::new(1, [0; 32], (0..10).collect(), 5).unwrap();
        assert!(matches!(
            c.clone().with_threshold(9),
            Err(ConfigError::Threshold { .. })
        ));
        let mut json: serde_json::Value = serde_json::to_value(&c).unwrap();
        json["degree"] = 7.into();
        let odd: RoundConfig = serde_json::from_value(json.clone()).unwrap();
        assert!(matches!(odd.validate(), Err(ConfigError::Degree { .. })));
        json["degree"] = 8.into();
        json["participants"] = serde_json::json!([0, 2, 1, 3, 4, 5, 6, 7, 8, 9]);
        let unsorted: RoundConfig = serde_json::from_value(json).unwrap();
        assert_eq!(unsorted.validate(), Err(ConfigError::ParticipantsNotSorted));
    }
}
