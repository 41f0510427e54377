//! Shamir t-of-m secret sharing of 32-byte secrets.
//!
//! This module owns the splitting of a device's self-mask seed `b_u` and of its mask secret
//! key `s_sk_u` among its neighbours, and their reconstruction by the server.
//!
//! # Field
//! Sharing is byte-wise over GF(2^8) (the AES field, modulus x^8 + x^4 + x^3 + x + 1): each of
//! the 32 bytes of a secret is the constant term of its own random polynomial of degree t − 1,
//! and a share is the x-coordinate plus the 32 evaluations. Why GF(2^8) rather than a prime
//! field:
//! * a share is exactly as long as the secret (33 bytes with its x), and any 32-byte string
//!   (an x25519 key, a ChaCha20 key) is a valid secret with no reduction modulo a prime;
//! * at most 255 holders are possible (x ∈ 1..=255), which SecAgg+ never approaches: a device
//!   shares among its k = O(log n) neighbours, k ≤ [`crate::graph::MAX_DEGREE`];
//! * the arithmetic is a few shifts and XORs, written here without secret-dependent branches
//!   or table look-ups, so the time taken does not depend on the secret.
//!
//! Perfect secrecy holds byte by byte: any t − 1 shares are independent of the secret.
//! Reconstruction interpolates at 0 from the first t shares and checks that every further
//! share lies on the same polynomials ([`ShamirError::InconsistentShares`] otherwise).

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of a shared secret.
pub const SECRET_LEN: usize = 32;

/// One holder's share of a 32-byte secret: the point `x` (never 0) and the 32 byte-wise
/// evaluations of the sharing polynomials at `x`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct Share {
    /// The evaluation point, 1..=255.
    pub x: u8,
    /// The evaluations.
    pub y: [u8; SECRET_LEN],
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share")
            .field("x", &self.x)
            .field("y", &"<redacted>")
            .finish()
    }
}

/// Why a secret could not be split or reconstructed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShamirError {
    /// The threshold is 0 or larger than the number of holders.
    #[error("threshold {threshold} is not in 1..={holders}")]
    InvalidThreshold {
        /// Threshold asked for.
        threshold: usize,
        /// Number of holders.
        holders: usize,
    },
    /// Fewer shares than the threshold.
    #[error("{got} shares given, {needed} needed")]
    TooFewShares {
        /// The threshold.
        needed: usize,
        /// Shares given.
        got: usize,
    },
    /// A share (or holder) at x = 0, which would be the secret itself.
    #[error("a share has x = 0")]
    ZeroX,
    /// Two shares (or holders) at the same x.
    #[error("two shares have x = {x}")]
    DuplicateX {
        /// The repeated point.
        x: u8,
    },
    /// More than t shares were given and they do not lie on one polynomial of degree t − 1.
    #[error("the shares are inconsistent: they do not lie on one polynomial")]
    InconsistentShares,
    /// The random number generator failed.
    #[error("the random number generator failed")]
    Randomness,
}

/// Product in GF(2^8), without branches or table look-ups on the operands.
fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0u8;
    for _ in 0..8 {
        product ^= a & 0u8.wrapping_sub(b & 1);
        let carry = a >> 7;
        a = (a << 1) ^ (0x1b & 0u8.wrapping_sub(carry));
        b >>= 1;
    }
    product
}

/// Inverse in GF(2^8) as a^254 (0 maps to 0; callers never invert 0).
fn gf_inv(a: u8) -> u8 {
    // 254 = 0b1111_1110: square-and-multiply with a fixed sequence of operations.
    let mut result = 1u8;
    for bit in (0..8).rev() {
        result = gf_mul(result, result);
        if (254u8 >> bit) & 1 == 1 {
            result = gf_mul(result, a);
        }
    }
    result
}

fn check_points(xs: impl IntoIterator<Item = u8>) -> Result<(), ShamirError> {
    let mut seen = [false; 256];
    for x in xs {
        if x == 0 {
            return Err(ShamirError::ZeroX);
        }
        if seen[x as usize] {
            return Err(ShamirError::DuplicateX { x });
        }
        seen[x as usize] = true;
    }
    Ok(())
}

/// Splits `secret` into one share per point of `xs` (distinct, non-zero), any `threshold` of
/// which reconstruct it and any `threshold − 1` of which reveal nothing.
pub fn split<R: RngCore + CryptoRng>(
    secret: &[u8; SECRET_LEN],
    threshold: usize,
    xs: &[u8],
    rng: &mut R,
) -> Result<Vec<Share>, ShamirError> {
    if threshold == 0 || threshold > xs.len() {
        return Err(ShamirError::InvalidThreshold {
            threshold,
            holders: xs.len(),
        });
    }
    check_points(xs.iter().copied())?;
    // coefficients[j] holds the degree-(j+1) coefficients of the 32 polynomials.
    let mut coefficients = Zeroizing::new(vec![[0u8; SECRET_LEN]; threshold - 1]);
    for c in coefficients.iter_mut() {
        rng.try_fill_bytes(c).map_err(|_| ShamirError::Randomness)?;
    }
    let shares = xs
        .iter()
        .map(|&x| {
            let mut y = [0u8; SECRET_LEN];
            for (byte, out) in y.iter_mut().enumerate() {
                // Horner's rule from the highest coefficient down to the secret.
                let mut acc = 0u8;
                for c in coefficients.iter().rev() {
                    acc = gf_mul(acc, x) ^ c[byte];
                }
                *out = gf_mul(acc, x) ^ secret[byte];
            }
            Share { x, y }
        })
        .collect();
    Ok(shares)
}

/// Lagrange basis values at `at` for the points `xs` (distinct, non-zero, `at` not among them
/// unless it is 0).
fn lagrange_at(xs: &[u8], at: u8) -> Vec<u8> {
    xs.iter()
        .enumerate()
        .map(|(i, &xi)| {
            let mut num = 1u8;
            let mut den = 1u8;
            for (m, &xm) in xs.iter().enumerate() {
                if m != i {
                    num = gf_mul(num, at ^ xm);
                    den = gf_mul(den, xi ^ xm);
                }
            }
            gf_mul(num, gf_inv(den))
        })
        .collect()
}

/// Rebuilds the secret from at least `threshold` shares with distinct non-zero points.
/// Shares beyond the first `threshold` are checked against the polynomial the first ones
/// define.
pub fn reconstruct(
    shares: &[Share],
    threshold: usize,
) -> Result<Zeroizing<[u8; SECRET_LEN]>, ShamirError> {
    if threshold == 0 {
        return Err(ShamirError::InvalidThreshold {
            threshold,
            holders: shares.len(),
        });
    }
    if shares.len() < threshold {
        return Err(ShamirError::TooFewShares {
            needed: threshold,
            got: shares.len(),
        });
    }
    check_points(shares.iter().map(|s| s.x))?;
    let (basis_shares, extra) = shares.split_at(threshold);
    let xs: Vec<u8> = basis_shares.iter().map(|s| s.x).collect();
    let interpolate = |at: u8| -> Zeroizing<[u8; SECRET_LEN]> {
        let weights = lagrange_at(&xs, at);
        let mut out = Zeroizing::new([0u8; SECRET_LEN]);
        for (share, &w) in basis_shares.iter().zip(&weights) {
            for (o, &y) in out.iter_mut().zip(&share.y) {
                *o ^= gf_mul(w, y);
            }
        }
        out
    };
    for share in extra {
        let expected = interpolate(share.x);
        // Not secret-dependent in a useful way: a mismatch aborts the round.
        if *expected != share.y {
            return Err(ShamirError::InconsistentShares);
        }
    }
    Ok(interpolate(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn xs(m: u8) -> Vec<u8> {
        (1..=m).collect()
    }

    #[test]
    fn field_inverse_times_element_is_one_for_every_non_zero_element() {
        for a in 1..=255u8 {
            assert_eq!(gf_mul(a, gf_inv(a)), 1, "a={a}");
        }
        assert_eq!(gf_mul(0x57, 0x83), 0xc1, "the worked example of FIPS-197");
    }

    #[test]
    fn any_t_of_m_shares_reconstruct_the_secret() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let shares = split(&secret, 3, &xs(6), &mut rng).unwrap();
        for a in 0..6 {
            for b in 0..6 {
                for c in 0..6 {
                    if a == b || b == c || a == c {
                        continue;
                    }
                    let subset = [shares[a].clone(), shares[b].clone(), shares[c].clone()];
                    assert_eq!(*reconstruct(&subset, 3).unwrap(), secret);
                }
            }
        }
        assert_eq!(*reconstruct(&shares, 3).unwrap(), secret, "all six agree");
    }

    #[test]
    fn fewer_than_t_shares_are_a_typed_error() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let shares = split(&[9u8; 32], 4, &xs(5), &mut rng).unwrap();
        assert_eq!(
            reconstruct(&shares[..3], 4),
            Err(ShamirError::TooFewShares { needed: 4, got: 3 })
        );
    }

    #[test]
    fn duplicate_and_zero_points_are_typed_errors() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let shares = split(&[1u8; 32], 2, &xs(3), &mut rng).unwrap();
        let dup = [shares[0].clone(), shares[0].clone()];
        assert_eq!(reconstruct(&dup, 2), Err(ShamirError::DuplicateX { x: 1 }));
        let mut zero = shares[1].clone();
        zero.x = 0;
        assert_eq!(
            reconstruct(&[shares[0].clone(), zero], 2),
            Err(ShamirError::ZeroX)
        );
        assert_eq!(
            split(&[1u8; 32], 2, &[1, 2, 2], &mut rng),
            Err(ShamirError::DuplicateX { x: 2 })
        );
        assert!(matches!(
            split(&[1u8; 32], 4, &[1, 2, 3], &mut rng),
            Err(ShamirError::InvalidThreshold { .. })
        ));
    }

    #[test]
    fn a_tampered_extra_share_is_reported_as_inconsistent() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let mut shares = split(&[5u8; 32], 3, &xs(5), &mut rng).unwrap();
        shares[4].y[17] ^= 1;
        assert_eq!(
            reconstruct(&shares, 3),
            Err(ShamirError::InconsistentShares)
        );
        assert_eq!(*reconstruct(&shares[..4], 3).unwrap(), [5u8; 32]);
    }
}
