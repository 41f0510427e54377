//! Top-k sparsification with error feedback.
//!
//! A device sends only the `k` coordinates of largest magnitude. What it did not send is not
//! dropped: it is kept as a *residual* and added to the next round's delta before choosing
//! again, so every coordinate is eventually sent and the sum of what a device sends tracks the
//! sum of its deltas (the residual is the difference, and it stays bounded). The residual is
//! device state that must survive restarts; [`ErrorFeedback`] is serde so the caller can
//! persist it durably next to the model, and must be reset when the model layout changes.
//!
//! Ties in magnitude are broken by the lower index, so the choice is deterministic.

use serde::{Deserialize, Serialize};

use crate::{check_finite, check_values, DeltaError, Result};

/// A sparse delta: `values[i]` at coordinate `indices[i]` of a vector of `len`, zeros elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sparse {
    /// Length of the dense vector.
    pub len: usize,
    /// Coordinates sent, strictly increasing, each below `len`.
    pub indices: Vec<u32>,
    /// The value at each coordinate of `indices`.
    pub values: Vec<f32>,
}

/// Bytes of the fixed part of [`Sparse::byte_size`]: `len` and the count as u32 each.
const HEADER_BYTES: usize = 8;

impl Sparse {
    /// Checks a `Sparse` received from outside: `len` in `1..=max_len`, as many values as
    /// indices, indices strictly increasing (so sorted and unique) and below `len`, values
    /// finite.
    pub fn validate(&self, max_len: usize) -> Result<()> {
        const WHAT: &str = "sparse delta";
        if self.len == 0 {
            return Err(DeltaError::Empty { what: WHAT });
        }
        if self.len > max_len {
            return Err(DeltaError::TooLarge {
                what: WHAT,
                len: self.len,
                max: max_len,
            });
        }
        if self.indices.len() != self.values.len() {
            return Err(DeltaError::Malformed {
                what: WHAT,
                reason: format!(
                    "{} indices but {} values",
                    self.indices.len(),
                    self.values.len()
                ),
            });
        }
        for (i, pair) in self.indices.windows(2).enumerate() {
            if pair[0] >= pair[1] {
                return Err(DeltaError::Malformed {
                    what: WHAT,
                    reason: format!(
                        "index {} ({}) is not above index {i} ({})",
                        i + 1,
                        pair[1],
                        pair[0]
                    ),
                });
            }
        }
        if let Some(&last) = self.indices.last() {
            if last as usize >= self.len {
                return Err(DeltaError::Malformed {
                    what: WHAT,
                    reason: format!("index {last} is not below the length {}", self.len),
                });
            }
        }
        check_finite("sparse delta values", &self.values)
    }

    /// The dense vector: zeros except at the sent coordinates.
    ///
    /// Checks the structure first (as [`Sparse::validate`] without a length bound), so an
    /// inconsistent one is an error rather than a panic.
    pub fn densify(&self) -> Result<Vec<f32>> {
        self.validate(usize::MAX)?;
        let mut dense = vec![0f32; self.len];
        for (&i, &v) in self.indices.iter().zip(&self.values) {
            dense[i as usize] = v;
        }
        Ok(dense)
    }

    /// Size in bytes of the compact binary form: `len` and the count as u32, then a u32 index
    /// and an f32 value per coordinate sent. Compare with `4 * len` for the plain f32 delta.
    pub fn byte_size(&self) -> usize {
        HEADER_BYTES + 8 * self.indices.len()
    }
}

/// The error-feedback state of one device: what it has not sent yet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorFeedback {
    /// Per coordinate, the part of past deltas not sent yet. Empty before the first round.
    pub residual: Vec<f32>,
}

impl ErrorFeedback {
    /// A fresh state (no residual yet); the first [`compress`](Self::compress) sets its length.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the residual to `delta`, keeps the `k` coordinates of largest magnitude as the
    /// [`Sparse`] to send, and stores all the others as the new residual. A `k` at or above
    /// the length sends everything.
    ///
    /// Refuses an empty or non-finite delta, `k == 0`, a delta longer than `u32::MAX`, a
    /// residual of another length (a persisted state from a different model layout) or with a
    /// non-finite value, and a sum that overflows f32. On error the state is unchanged.
    pub fn compress(&mut self, delta: &[f32], k: usize) -> Result<Sparse> {
        check_values("delta", delta)?;
        if k == 0 {
            return Err(DeltaError::InvalidParameter {
                name: "k",
                value: 0.0,
                reason: "must be greater than zero",
            });
        }
        let max = u32::MAX as usize;
        if delta.len() > max {
            return Err(DeltaError::TooLarge {
                what: "delta",
                len: delta.len(),
                max,
            });
        }
        let mut acc = delta.to_vec();
        if !self.residual.is_empty() {
            if self.residual.len() != delta.len() {
                return Err(DeltaError::LengthMismatch {
                    what: "error-feedback residual",
                    expected: delta.len(),
                    found: self.residual.len(),
                });
            }
            check_finite("error-feedback residual", &self.residual)?;
            for (a, &r) in acc.iter_mut().zip(&self.residual) {
                *a += r;
            }
            check_finite("delta plus residual", &acc)?;
        }

        let mut chosen: Vec<usize> = (0..acc.len()).collect();
        let k = k.min(acc.len());
        if k < acc.len() {
            // Larger magnitude first; among equal magnitudes the lower index first.
            let order = |&a: &usize, &b: &usize| {
                acc[b]
                    .abs()
                    .total_cmp(&acc[a].abs())
                    .then_with(|| a.cmp(&b))
            };
            chosen.select_nth_unstable_by(k - 1, order);
            chosen.truncate(k);
            chosen.sort_unstable();
        }

        let mut indices = Vec::with_capacity(k);
        let mut values = Vec::with_capacity(k);
        for &i in &chosen {
            // i < acc.len() <= u32::MAX, checked above.
            indices.push(i as u32);
            values.push(acc[i]);
            acc[i] = 0.0;
        }
        self.residual = acc;
        Ok(Sparse {
            len: delta.len(),
            indices,
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn sample(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.gen_range(-1f32..1.0)).collect()
    }

    #[test]
    fn what_is_sent_plus_the_new_residual_is_delta_plus_the_old_residual_exactly() {
        let mut ef = ErrorFeedback::new();
        for round in 0..20u64 {
            let delta = sample(500, round);
            let old = if ef.residual.is_empty() {
                vec![0f32; delta.len()]
            } else {
                ef.residual.clone()
            };
            let sent = ef.compress(&delta, 37).unwrap();
            sent.validate(500).unwrap();
            assert_eq!(sent.indices.len(), 37);
            let dense = sent.densify().unwrap();
            for i in 0..delta.len() {
                // Bitwise: each coordinate is either sent whole or kept whole.
                assert_eq!(
                    (dense[i] + ef.residual[i]).to_bits(),
                    (delta[i] + old[i]).to_bits(),
                    "round {round}, coordinate {i}"
                );
                assert!(dense[i] == 0.0 || ef.residual[i] == 0.0);
            }
        }
    }

    #[test]
    fn the_k_largest_magnitudes_are_sent_ties_to_the_lower_index() {
        let mut ef = ErrorFeedback::new();
        let sent = ef.compress(&[0.1, -5.0, 2.0, -2.0, 0.0, 3.0], 3).unwrap();
        assert_eq!(sent.indices, vec![1, 2, 5]);
        assert_eq!(sent.values, vec![-5.0, 2.0, 3.0]);
        assert_eq!(ef.residual, vec![0.1, 0.0, 0.0, -2.0, 0.0, 0.0]);
        // Next round the residual -2.0 joins the delta and wins.
        let sent = ef.compress(&[0.0, 0.0, 0.0, -0.5, 0.0, 0.0], 1).unwrap();
        assert_eq!(sent.indices, vec![3]);
        assert_eq!(sent.values, vec![-2.5]);
    }

    #[test]
    fn error_feedback_makes_the_sum_sent_converge_to_rounds_times_delta() {
        // A constant delta with magnitudes spread over two orders, 5 of 100 coordinates a round.
        let delta: Vec<f32> = (0..100)
            .map(|i| (if i % 2 == 0 { 1.0 } else { -1.0 }) * (0.01 + i as f32 / 100.0))
            .collect();
        let delta_norm = delta
            .iter()
            .map(|&d| f64::from(d).powi(2))
            .sum::<f64>()
            .sqrt();
        let target_norm = |rounds: usize| rounds as f64 * delta_norm;
        let relative_gap = |sum: &[f64], rounds: usize| {
            let gap: f64 = sum
                .iter()
                .zip(&delta)
                .map(|(s, &d)| (s - rounds as f64 * f64::from(d)).powi(2))
                .sum::<f64>()
                .sqrt();
            gap / target_norm(rounds)
        };

        let mut ef = ErrorFeedback::new();
        let mut sum = vec![0f64; delta.len()];
        let mut gaps = Vec::new();
        for round in 1..=2000 {
            let sent = ef.compress(&delta, 5).unwrap();
            for (&i, &v) in sent.indices.iter().zip(&sent.values) {
                sum[i as usize] += f64::from(v);
            }
            if round % 500 == 0 {
                gaps.push(relative_gap(&sum, round));
            }
        }
        // The gap is the residual, which stays bounded, so relative to rounds x delta it shrinks
        // like 1/rounds.
        assert!(gaps.windows(2).all(|w| w[1] < w[0]), "{gaps:?}");
        assert!(gaps[3] < 0.01, "{gaps:?}");
        assert!(sum.iter().all(|&s| s != 0.0), "every coordinate was sent");

        // Without error feedback (a fresh state each round) the same 5 coordinates are sent
        // every time and the other 95 never arrive.
        let mut plain = vec![0f64; delta.len()];
        for _ in 0..2000 {
            let sent = ErrorFeedback::new().compress(&delta, 5).unwrap();
            for (&i, &v) in sent.indices.iter().zip(&sent.values) {
                plain[i as usize] += f64::from(v);
            }
        }
        assert_eq!(plain.iter().filter(|&&s| s == 0.0).count(), 95);
        assert!(relative_gap(&plain, 2000) > 0.5);
    }

    #[test]
    fn k_at_or_above_the_length_sends_everything() {
        let mut ef = ErrorFeedback::new();
        let sent = ef.compress(&[1.0, 0.0, -2.0], 10).unwrap();
        assert_eq!(sent.indices, vec![0, 1, 2]);
        assert_eq!(ef.residual, vec![0.0; 3]);
    }

    #[test]
    fn compress_refuses_bad_input_and_keeps_its_state() {
        let mut ef = ErrorFeedback::new();
        ef.compress(&[1.0, 2.0, 3.0], 1).unwrap();
        let before = ef.clone();
        assert!(matches!(ef.compress(&[], 1), Err(DeltaError::Empty { .. })));
        assert!(matches!(
            ef.compress(&[1.0, f32::NAN, 0.0], 1),
            Err(DeltaError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            ef.compress(&[1.0, 2.0, 3.0], 0),
            Err(DeltaError::InvalidParameter { name: "k", .. })
        ));
        assert_eq!(
            ef.compress(&[1.0, 2.0], 1),
            Err(DeltaError::LengthMismatch {
                what: "error-feedback residual",
                expected: 2,
                found: 3
            })
        );
        assert_eq!(ef, before);

        let mut large = ErrorFeedback {
            residual: vec![0.0, f32::MAX],
        };
        let before = large.clone();
        assert_eq!(
            large.compress(&[1.0, f32::MAX], 1),
            Err(DeltaError::NonFinite {
                what: "delta plus residual",
                index: 1
            })
        );
        assert_eq!(large, before);

        let mut poisoned = ErrorFeedback {
            residual: vec![0.0, f32::INFINITY],
        };
        assert!(matches!(
            poisoned.compress(&[1.0, 1.0], 1),
            Err(DeltaError::NonFinite { index: 1, .. })
        ));
    }

    #[test]
    fn validate_refuses_unsorted_duplicate_and_out_of_range_indices() {
        let good = Sparse {
            len: 10,
            indices: vec![1, 4, 9],
            values: vec![0.5, -1.0, 2.0],
        };
        good.validate(10).unwrap();
        assert_eq!(good.byte_size(), 8 + 3 * 8);
        let malformed = |s: Sparse| {
            assert!(
                matches!(s.validate(100), Err(DeltaError::Malformed { .. })),
                "{s:?} passed"
            );
            assert!(s.densify().is_err());
        };
        malformed(Sparse {
            indices: vec![4, 1, 9],
            ..good.clone()
        });
        malformed(Sparse {
            indices: vec![1, 4, 4],
            ..good.clone()
        });
        malformed(Sparse {
            indices: vec![1, 4, 10],
            ..good.clone()
        });
        malformed(Sparse {
            values: vec![0.5, -1.0],
            ..good.clone()
        });
        assert!(matches!(
            Sparse {
                values: vec![0.5, f32::NAN, 2.0],
                ..good.clone()
            }
            .validate(10),
            Err(DeltaError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(good.validate(9), Err(DeltaError::TooLarge { .. })));
        assert!(matches!(
            Sparse {
                len: 0,
                indices: vec![],
                values: vec![]
            }
            .validate(10),
            Err(DeltaError::Empty { .. })
        ));
    }

    #[test]
    fn the_residual_survives_json() {
        let mut ef = ErrorFeedback::new();
        ef.compress(&sample(50, 3), 5).unwrap();
        let back: ErrorFeedback =
            serde_json::from_str(&serde_json::to_string(&ef).unwrap()).unwrap();
        assert_eq!(back, ef);
    }
}
