//! Fixed-point encoding of `f32` weight deltas into Z_2^32, such that sums cannot wrap.
//!
//! This module owns the map between real-valued deltas and the `u32` vectors the protocol
//! adds. A value is clipped to `[-clip, clip]`, multiplied by the scale, rounded to the
//! nearest integer q with |q| ≤ M, and stored as q mod 2^32 (two's complement). With
//! `n · M ≤ 2^31 − 1`, the sum of up to n encoded values, read back as an `i32`, is the exact
//! integer sum: the modular sum never wraps. Decoding divides that integer by the scale.
//!
//! Error bound: each encoded value is within `0.5 / scale` of its clipped input, so a decoded
//! sum of m ≤ n values is within `m · 0.5 / scale` of the sum of the clipped inputs (plus the
//! rounding of the final `f32`). [`FixedPoint::new`] takes the largest scale that fits,
//! `scale = ⌊(2^31 − 1) / n⌋ / clip`.

use thiserror::Error;

/// Why a fixed-point encoding cannot be set up or applied.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum FixedPointError {
    /// The clip bound is not a finite positive number.
    #[error("the clip bound must be finite and positive, got {clip}")]
    InvalidClip {
        /// The bound given.
        clip: f32,
    },
    /// The scale is not a finite positive number.
    #[error("the scale must be finite and positive, got {scale}")]
    InvalidScale {
        /// The scale given.
        scale: f64,
    },
    /// The number of summands is 0.
    #[error("the number of summands must be at least 1")]
    NoSummands,
    /// `n` values of magnitude `clip · scale` could overflow a 32-bit signed sum, or the
    /// magnitude rounds to less than one unit (no resolution left).
    #[error(
        "{summands} values of magnitude up to {clip} at scale {scale} do not fit a 32-bit sum"
    )]
    DoesNotFit {
        /// Number of summands.
        summands: u32,
        /// The clip bound.
        clip: f32,
        /// The scale.
        scale: f64,
    },
    /// A value to encode is NaN or infinite.
    #[error("value at index {index} is not finite")]
    NonFinite {
        /// Its index.
        index: usize,
    },
}

/// A fixed-point code for sums of up to `max_summands` values in `[-clip, clip]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedPoint {
    clip: f32,
    scale: f64,
    max_summands: u32,
    /// M: the largest magnitude of an encoded value.
    max_magnitude: i64,
}

const SUM_LIMIT: i64 = i32::MAX as i64;

impl FixedPoint {
    /// The finest code for which `max_summands` values clipped to `[-clip, clip]` sum
    /// without wrapping. Refuses a bad clip, zero summands, and more summands than leave at
    /// least one unit of resolution.
    pub fn new(clip: f32, max_summands: u32) -> Result<Self, FixedPointError> {
        check_clip(clip)?;
        if max_summands == 0 {
            return Err(FixedPointError::NoSummands);
        }
        let max_magnitude = SUM_LIMIT / i64::from(max_summands);
        if max_magnitude < 1 {
            return Err(FixedPointError::DoesNotFit {
                summands: max_summands,
                clip,
                scale: 0.0,
            });
        }
        Ok(Self {
            clip,
            scale: max_magnitude as f64 / f64::from(clip),
            max_summands,
            max_magnitude,
        })
    }

    /// The code with the given scale; refused ([`FixedPointError::DoesNotFit`]) when
    /// `max_summands · round(clip · scale)` exceeds `2^31 − 1` or rounds to 0.
    pub fn with_scale(clip: f32, max_summands: u32, scale: f64) -> Result<Self, FixedPointError> {
        check_clip(clip)?;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(FixedPointError::InvalidScale { scale });
        }
        if max_summands == 0 {
            return Err(FixedPointError::NoSummands);
        }
        let magnitude = (f64::from(clip) * scale).round();
        let fits = magnitude >= 1.0 && magnitude * f64::from(max_summands) <= SUM_LIMIT as f64;
        if !fits {
            return Err(FixedPointError::DoesNotFit {
                summands: max_summands,
                clip,
                scale,
            });
        }
        Ok(Self {
            clip,
            scale,
            max_summands,
            // `magnitude` is in 1..=2^31 − 1 here, so the cast is exact.
            max_magnitude: magnitude as i64,
        })
    }

    /// The clip bound.
    pub fn clip(&self) -> f32 {
        self.clip
    }

    /// Units per 1.0.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The largest number of values whose sum is guaranteed not to wrap.
    pub fn max_summands(&self) -> u32 {
        self.max_summands
    }

    /// The largest error of one encoded value against its clipped input: `0.5 / scale`.
    pub fn max_error_per_value(&self) -> f64 {
        0.5 / self.scale
    }

    /// Encodes one value (clipped to `[-clip, clip]`).
    pub fn encode_one(&self, value: f32) -> Option<u32> {
        if !value.is_finite() {
            return None;
        }
        let clipped = f64::from(value.clamp(-self.clip, self.clip));
        let q =
            ((clipped * self.scale).round() as i64).clamp(-self.max_magnitude, self.max_magnitude);
        // Two's complement: q mod 2^32.
        Some(q as i32 as u32)
    }

    /// Encodes a vector; a NaN or infinite value is refused with its index.
    pub fn encode(&self, values: &[f32]) -> Result<Vec<u32>, FixedPointError> {
        values
            .iter()
            .enumerate()
            .map(|(index, &v)| {
                self.encode_one(v)
                    .ok_or(FixedPointError::NonFinite { index })
            })
            .collect()
    }

    /// Decodes a sum of at most `max_summands` encoded vectors.
    pub fn decode_sum(&self, sum: &[u32]) -> Vec<f32> {
        sum.iter()
            .map(|&s| (f64::from(s as i32) / self.scale) as f32)
            .collect()
    }
}

fn check_clip(clip: f32) -> Result<(), FixedPointError> {
    if clip.is_finite() && clip > 0.0 {
        Ok(())
    } else {
        Err(FixedPointError::InvalidClip { clip })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1.5, 1.5] (some beyond the clip of 1.0).
    fn values(count: usize, salt: u64) -> Vec<f32> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ salt;
        (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 11) as f64 / (1u64 << 53) as f64 * 3.0 - 1.5) as f32
            })
            .collect()
    }

    #[test]
    fn a_round_trip_is_within_half_a_unit_of_the_clipped_value() {
        let code = FixedPoint::new(1.0, 200).unwrap();
        let xs = values(10_000, 1);
        let decoded = code.decode_sum(&code.encode(&xs).unwrap());
        for (x, d) in xs.iter().zip(&decoded) {
            let clipped = f64::from(x.clamp(-1.0, 1.0));
            let err = (f64::from(*d) - clipped).abs();
            // f32 output adds at most one ulp of a value <= 1.
            assert!(
                err <= code.max_error_per_value() + f64::from(f32::EPSILON),
                "{x} {d}"
            );
        }
    }

    #[test]
    fn the_sum_of_n_extreme_values_decodes_without_wrapping_within_the_error_bound() {
        let n = 200u32;
        let code = FixedPoint::new(1.0, n).unwrap();
        for extreme in [1.0f32, -1.0, 7.0, -7.0] {
            let mut sum = vec![0u32; 1];
            for _ in 0..n {
                sum[0] = sum[0].wrapping_add(code.encode_one(extreme).unwrap());
            }
            let decoded = f64::from(code.decode_sum(&sum)[0]);
            let expected = f64::from(extreme.clamp(-1.0, 1.0)) * f64::from(n);
            let bound = f64::from(n) * code.max_error_per_value() + expected.abs() * 1e-6;
            assert!((decoded - expected).abs() <= bound, "{extreme}: {decoded}");
        }
        let xs: Vec<Vec<f32>> = (0..n).map(|i| values(100, u64::from(i))).collect();
        let mut sum = vec![0u32; 100];
        for x in &xs {
            for (s, e) in sum.iter_mut().zip(code.encode(x).unwrap()) {
                *s = s.wrapping_add(e);
            }
        }
        for (j, d) in code.decode_sum(&sum).iter().enumerate() {
            let expected: f64 = xs.iter().map(|x| f64::from(x[j].clamp(-1.0, 1.0))).sum();
            let bound = f64::from(n) * code.max_error_per_value() + expected.abs() * 1e-6;
            assert!((f64::from(*d) - expected).abs() <= bound);
        }
    }

    #[test]
    fn parameters_that_could_overflow_are_refused() {
        assert!(matches!(
            FixedPoint::with_scale(1.0, 1000, 1e7),
            Err(FixedPointError::DoesNotFit { .. })
        ));
        assert!(FixedPoint::with_scale(1.0, 1000, 2e6).is_ok());
        assert!(matches!(
            FixedPoint::with_scale(1.0, 10, 0.1),
            Err(FixedPointError::DoesNotFit { .. })
        ));
        assert!(matches!(
            FixedPoint::new(1.0, u32::MAX),
            Err(FixedPointError::DoesNotFit { .. })
        ));
        assert_eq!(FixedPoint::new(1.0, 0), Err(FixedPointError::NoSummands));
        assert!(matches!(
            FixedPoint::new(f32::NAN, 10),
            Err(FixedPointError::InvalidClip { .. })
        ));
        assert!(matches!(
            FixedPoint::new(-1.0, 10),
            Err(FixedPointError::InvalidClip { .. })
        ));
        assert!(matches!(
            FixedPoint::with_scale(1.0, 10, f64::INFINITY),
            Err(FixedPointError::InvalidScale { .. })
        ));
    }

    #[test]
    fn non_finite_values_are_refused_with_their_index() {
        let code = FixedPoint::new(1.0, 10).unwrap();
        assert_eq!(
            code.encode(&[0.5, f32::NAN]),
            Err(FixedPointError::NonFinite { index: 1 })
        );
        assert_eq!(
            code.encode(&[f32::INFINITY]),
            Err(FixedPointError::NonFinite { index: 0 })
        );
    }
}
