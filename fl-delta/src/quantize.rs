//! Int8 blockwise quantisation with stochastic rounding.
//!
//! The delta is cut into blocks of `block` values (the last block may be shorter). Each block
//! has one f32 scale, `max|x| / 127`, and each value is sent as the i8 code `x / scale`
//! rounded *stochastically*: down to `floor(x / scale)` and up by one with probability equal to
//! the fractional part. The expected code is then exactly `x / scale`, so the decoded value
//! `code * scale` is an unbiased estimate of `x`, and rounding errors average out over devices
//! and rounds instead of piling up in one direction. Each decoded value is within one scale of
//! the original.
//!
//! Codes lie in `-127..=127`; `-128` is never produced and is refused by
//! [`Quantized::validate`].

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{check_values, DeltaError, Result};

/// The block size used unless the caller has a reason for another.
pub const DEFAULT_BLOCK: usize = 256;

/// Largest code magnitude.
const LEVELS: f32 = 127.0;

/// Bytes of the fixed part of [`Quantized::byte_size`]: `len` and `block` as u32 each.
const HEADER_BYTES: usize = 8;

/// A quantised delta: `len` values in blocks of `block`, one scale per block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantized {
    /// Number of values (of the original delta).
    pub len: usize,
    /// Values per block; the last block holds the remainder.
    pub block: usize,
    /// One scale per block: `max|x| / 127` of that block, zero for an all-zero block.
    pub scales: Vec<f32>,
    /// One code per value, in `-127..=127`.
    pub values: Vec<i8>,
}

impl Quantized {
    /// Checks a `Quantized` received from outside: `len` in `1..=max_len`, a block size above
    /// zero, one code per value, one scale per block, every scale finite, non-negative and small
    /// enough that `127 * scale` stays finite, and no code `-128`.
    pub fn validate(&self, max_len: usize) -> Result<()> {
        const WHAT: &str = "quantized delta";
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
        if self.block == 0 {
            return Err(DeltaError::Malformed {
                what: WHAT,
                reason: "block size is zero".into(),
            });
        }
        if self.values.len() != self.len {
            return Err(DeltaError::Malformed {
                what: WHAT,
                reason: format!("{} codes for {} values", self.values.len(), self.len),
            });
        }
        let blocks = self.len.div_ceil(self.block);
        if self.scales.len() != blocks {
            return Err(DeltaError::Malformed {
                what: WHAT,
                reason: format!("{} scales for {blocks} blocks", self.scales.len()),
            });
        }
        let max_scale = f32::MAX / LEVELS;
        if let Some(i) = self
            .scales
            .iter()
            .position(|s| !s.is_finite() || *s < 0.0 || *s > max_scale)
        {
            return Err(DeltaError::Malformed {
                what: WHAT,
                reason: format!(
                    "scale {i} is {} (must be finite, in 0..=f32::MAX/127)",
                    self.scales[i]
                ),
            });
        }
        if let Some(i) = self.values.iter().position(|&c| c == i8::MIN) {
            return Err(DeltaError::Malformed {
                what: WHAT,
                reason: format!("code {i} is -128, outside -127..=127"),
            });
        }
        Ok(())
    }

    /// Size in bytes of the compact binary form: `len` and `block` as u32, then the f32
    /// scales, then the i8 codes. Compare with `4 * len` for the plain f32 delta.
    pub fn byte_size(&self) -> usize {
        HEADER_BYTES + 4 * self.scales.len() + self.values.len()
    }
}

/// Size in bytes that [`Quantized::byte_size`] will report for `len` values in blocks of
/// `block`, known before encoding.
pub fn encoded_size(len: usize, block: usize) -> Result<usize> {
    if block == 0 {
        return Err(DeltaError::InvalidParameter {
            name: "block",
            value: 0.0,
            reason: "must be greater than zero",
        });
    }
    Ok(HEADER_BYTES + 4 * len.div_ceil(block) + len)
}

/// Quantises `values` in blocks of `block` with stochastic rounding drawn from `rng`.
///
/// Refuses an empty or non-finite input and a zero block size.
pub fn encode<R: Rng + ?Sized>(values: &[f32], block: usize, rng: &mut R) -> Result<Quantized> {
    check_values("delta", values)?;
    if block == 0 {
        return Err(DeltaError::InvalidParameter {
            name: "block",
            value: 0.0,
            reason: "must be greater than zero",
        });
    }
    let mut scales = Vec::with_capacity(values.len().div_ceil(block));
    let mut codes = Vec::with_capacity(values.len());
    for chunk in values.chunks(block) {
        let max_abs = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = block_scale(max_abs);
        scales.push(scale);
        if scale == 0.0 {
            codes.extend(std::iter::repeat_n(0i8, chunk.len()));
            continue;
        }
        // The ratio is taken against the f32 scale that is sent, so that the expected decoded
        // value is the original; f64 keeps the ratio and its fraction exact enough.
        let scale = f64::from(scale);
        for &v in chunk {
            let ratio = f64::from(v) / scale;
            let floor = ratio.floor();
            let up = rng.gen::<f64>() < ratio - floor;
            let code = if up { floor + 1.0 } else { floor };
            // The f32 scale may round a hair below max|x|/127; the clamp keeps the code in range.
            codes.push(code.clamp(-f64::from(LEVELS), f64::from(LEVELS)) as i8);
        }
    }
    Ok(Quantized {
        len: values.len(),
        block,
        scales,
        values: codes,
    })
}

/// The scale of a block whose largest magnitude is `max_abs`: `max_abs / 127`, but never zero
/// for a block that is not all zeros (a subnormal maximum would otherwise underflow to zero).
fn block_scale(max_abs: f32) -> f32 {
    if max_abs == 0.0 {
        return 0.0;
    }
    (max_abs / LEVELS).max(f32::from_bits(1))
}

/// Decodes a [`Quantized`] back to f32 values: `code * scale` of its block.
///
/// Checks the structure first (as [`Quantized::validate`] without a length bound), so an
/// inconsistent one is an error rather than a panic.
pub fn decode(q: &Quantized) -> Result<Vec<f32>> {
    q.validate(usize::MAX)?;
    let out = q
        .values
        .chunks(q.block)
        .zip(&q.scales)
        .flat_map(|(codes, &scale)| codes.iter().map(move |&c| f32::from(c) * scale))
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn sample(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.gen_range(-0.05f32..0.05)).collect()
    }

    #[test]
    fn each_decoded_value_is_within_one_scale_of_the_original() {
        let x = sample(1000, 1);
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let q = encode(&x, DEFAULT_BLOCK, &mut rng).unwrap();
        assert_eq!(q.scales.len(), 4); // 256 + 256 + 256 + 232
        let y = decode(&q).unwrap();
        assert_eq!(y.len(), x.len());
        for (i, (a, b)) in x.iter().zip(&y).enumerate() {
            let scale = q.scales[i / DEFAULT_BLOCK];
            assert!(scale > 0.0);
            assert!(
                (a - b).abs() < scale,
                "value {i}: {a} decoded as {b}, scale {scale}"
            );
        }
    }

    #[test]
    fn the_largest_value_of_a_block_is_exact() {
        let x = [0.5f32, -2.0, 1.0, 0.25];
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let q = encode(&x, 4, &mut rng).unwrap();
        assert_eq!(q.values[1], -127);
        assert_eq!(decode(&q).unwrap()[1], -2.0);
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        // 2000 encodings of the same 512 values with one seeded generator. One encoding of a
        // value has an error of standard deviation at most scale/2 (a Bernoulli of a fraction,
        // times the scale), so the mean of 2000 has one of at most scale / (2 sqrt 2000), about
        // 0.0112 scale. The tolerance is six of those: 0.067 scale per value.
        const N: usize = 2000;
        let x = sample(512, 4);
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let mut sum = vec![0f64; x.len()];
        let mut scales = Vec::new();
        for _ in 0..N {
            let q = encode(&x, DEFAULT_BLOCK, &mut rng).unwrap();
            for (s, v) in sum.iter_mut().zip(decode(&q).unwrap()) {
                *s += f64::from(v);
            }
            scales = q.scales;
        }
        let sigma = 0.5 / (N as f64).sqrt();
        let mut worst = 0f64;
        for (i, (&s, &orig)) in sum.iter().zip(&x).enumerate() {
            let scale = f64::from(scales[i / DEFAULT_BLOCK]);
            let bias = (s / N as f64 - f64::from(orig)) / scale;
            worst = worst.max(bias.abs());
            assert!(
                bias.abs() < 6.0 * sigma,
                "value {i}: mean bias {bias} scales"
            );
        }
        // Rounding to nearest instead would be off by up to half a scale for some value.
        let nearest_worst = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let scale = f64::from(scales[i / DEFAULT_BLOCK]);
                let r = f64::from(v) / scale;
                (r.round() - r).abs()
            })
            .fold(0f64, f64::max);
        assert!(nearest_worst > 0.4, "{nearest_worst}");
        assert!(worst < nearest_worst / 5.0, "{worst} vs {nearest_worst}");
    }

    #[test]
    fn an_all_zero_block_has_scale_zero_and_decodes_to_zeros() {
        let mut x = vec![0f32; 8];
        x.extend([1.0, -0.5, 0.25, 0.0]);
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let q = encode(&x, 8, &mut rng).unwrap();
        assert_eq!(q.scales[0], 0.0);
        assert!(q.values[..8].iter().all(|&c| c == 0));
        let y = decode(&q).unwrap();
        assert!(y[..8].iter().all(|&v| v == 0.0));
        assert_eq!(y[8], 1.0);
    }

    #[test]
    fn a_subnormal_block_does_not_divide_by_zero() {
        let tiny = f32::from_bits(3);
        let x = [tiny, -tiny, 0.0];
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let q = encode(&x, 3, &mut rng).unwrap();
        assert!(q.scales[0] > 0.0);
        q.validate(3).unwrap();
        let y = decode(&q).unwrap();
        assert!(y.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn the_same_seed_gives_the_same_encoding() {
        let x = sample(300, 8);
        let a = encode(&x, 64, &mut ChaCha20Rng::seed_from_u64(9)).unwrap();
        let b = encode(&x, 64, &mut ChaCha20Rng::seed_from_u64(9)).unwrap();
        let c = encode(&x, 64, &mut ChaCha20Rng::seed_from_u64(10)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.values, c.values);
    }

    #[test]
    fn encode_refuses_bad_input() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        assert_eq!(
            encode(&[], 4, &mut rng),
            Err(DeltaError::Empty { what: "delta" })
        );
        assert_eq!(
            encode(&[1.0, f32::NAN], 4, &mut rng),
            Err(DeltaError::NonFinite {
                what: "delta",
                index: 1
            })
        );
        assert!(matches!(
            encode(&[1.0, f32::INFINITY], 4, &mut rng),
            Err(DeltaError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            encode(&[1.0], 0, &mut rng),
            Err(DeltaError::InvalidParameter { name: "block", .. })
        ));
    }

    #[test]
    fn validate_refuses_an_inconsistent_quantized() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let good = encode(&sample(10, 13), 4, &mut rng).unwrap();
        good.validate(10).unwrap();
        let malformed = |q: &Quantized| {
            assert!(
                matches!(q.validate(100), Err(DeltaError::Malformed { .. })),
                "{q:?} passed"
            );
            // decode checks the same and answers an error, not a panic.
            assert!(decode(q).is_err());
        };

        let mut q = good.clone();
        q.values.pop();
        malformed(&q);
        let mut q = good.clone();
        q.scales.pop();
        malformed(&q);
        let mut q = good.clone();
        q.scales.push(1.0);
        malformed(&q);
        let mut q = good.clone();
        q.block = 0;
        malformed(&q);
        let mut q = good.clone();
        q.block = 5; // 10 values in blocks of 5 need 2 scales, not 3
        malformed(&q);
        let mut q = good.clone();
        q.scales[1] = f32::NAN;
        malformed(&q);
        let mut q = good.clone();
        q.scales[1] = -1.0;
        malformed(&q);
        let mut q = good.clone();
        q.scales[1] = f32::MAX; // 127 * scale would overflow
        malformed(&q);
        let mut q = good.clone();
        q.values[0] = -128;
        malformed(&q);

        assert_eq!(
            good.validate(9),
            Err(DeltaError::TooLarge {
                what: "quantized delta",
                len: 10,
                max: 9
            })
        );
        let empty = Quantized {
            len: 0,
            block: 4,
            scales: vec![],
            values: vec![],
        };
        assert!(matches!(empty.validate(10), Err(DeltaError::Empty { .. })));
    }

    #[test]
    fn a_quantized_survives_json_and_is_about_a_quarter_of_f32() {
        let x = sample(1024, 14);
        let q = encode(&x, DEFAULT_BLOCK, &mut ChaCha20Rng::seed_from_u64(15)).unwrap();
        let json = serde_json::to_string(&q).unwrap();
        let back: Quantized = serde_json::from_str(&json).unwrap();
        assert_eq!(back, q);
        back.validate(1024).unwrap();
        // 8 header + 4 scales * 4 + 1024 codes
        assert_eq!(q.byte_size(), 8 + 16 + 1024);
        assert_eq!(encoded_size(1024, DEFAULT_BLOCK), Ok(q.byte_size()));
        assert!(q.byte_size() * 3 < 4 * x.len());
    }
}
