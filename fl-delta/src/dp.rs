//! Client-side differential privacy: clipping, Gaussian noise, and a Rényi-DP accountant.
//!
//! A device clips its delta to L2 norm `max_norm` ([`clip_l2`]), then adds Gaussian noise of
//! standard deviation `std` to every coordinate ([`add_gaussian_noise`]). The *noise
//! multiplier* of that release is `z = std / max_norm` ([`noise_multiplier`]).
//!
//! # What the accountant assumes
//!
//! - One release per round: each round a device sends one clipped and noised delta, and every
//!   round is recorded with [`Accountant::record_round`].
//! - Sensitivity `max_norm`: the two neighbouring worlds differ by at most `max_norm` in L2, as
//!   when the device's clipped contribution is compared with no contribution (the usual
//!   device-level guarantee of DP-FedAvg). Against an observer that compares *any* two datasets
//!   of the device (the local-DP reading), the sensitivity is `2 * max_norm` and the caller
//!   must record `z / 2`.
//! - Full participation, no subsampling amplification: every round counts at full cost, as if
//!   the device took part in each one; participating in only a random fraction of rounds would
//!   give a smaller ε, which this accountant does not claim.
//! - The Gaussian mechanism of noise multiplier `z` is (α, α / (2 z²))-RDP for every order
//!   α > 1 (Mironov 2017, "Rényi Differential Privacy"), RDP composes by adding, and an
//!   (α, ρ)-RDP mechanism is (ρ + ln(1/δ) / (α − 1), δ)-DP; [`Accountant::epsilon`] takes the
//!   smallest of those over the grid [`alphas`].
//! - Noise drawn in floating point is only an approximation of a Gaussian; the accountant
//!   treats it as exact.

use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::{check_positive, check_values, l2_norm, scale_to_norm, DeltaError, Result};

/// Clips `values` in place to L2 norm at most `max_norm` and returns the norm they had before.
///
/// A vector already within the bound is left unchanged (bit for bit); a longer one is scaled
/// down to norm `max_norm`, within a relative 1e-6 and never above it.
pub fn clip_l2(values: &mut [f32], max_norm: f64) -> Result<f64> {
    check_values("values", values)?;
    check_positive("max_norm", max_norm)?;
    let norm = l2_norm(values);
    if norm > max_norm {
        scale_to_norm(values, norm, max_norm);
    }
    Ok(norm)
}

/// Adds independent Gaussian noise of mean zero and standard deviation `std` to each value.
///
/// `rng` must be seeded from the operating system in production (see the crate docs). Refuses
/// an empty or non-finite input, a `std` that is not finite and positive, and a result that
/// overflows f32; on error `values` is unchanged.
pub fn add_gaussian_noise<R: Rng + ?Sized>(
    values: &mut [f32],
    std: f64,
    rng: &mut R,
) -> Result<()> {
    check_values("values", values)?;
    check_positive("std", std)?;
    let normal = Normal::new(0.0, std).map_err(|_| DeltaError::InvalidParameter {
        name: "std",
        value: std,
        reason: "not a valid standard deviation",
    })?;
    let noised: Vec<f32> = values
        .iter()
        .map(|&v| (f64::from(v) + normal.sample(rng)) as f32)
        .collect();
    crate::check_finite("noised values", &noised)?;
    values.copy_from_slice(&noised);
    Ok(())
}

/// The noise multiplier `z = std / max_norm` of a release clipped to `max_norm` and noised
/// with `std`.
pub fn noise_multiplier(std: f64, max_norm: f64) -> Result<f64> {
    check_positive("std", std)?;
    check_positive("max_norm", max_norm)?;
    let z = std / max_norm;
    check_positive("noise multiplier", z)?;
    Ok(z)
}

/// The Rényi orders α over which ε is minimised: 1.25 to 16 by 0.25, 17 to 64 by 1, 72 to 256
/// by 8 (132 orders).
pub fn alphas() -> impl Iterator<Item = f64> {
    let fine = (5..=64).map(|i| f64::from(i) * 0.25);
    let middle = (17..=64).map(f64::from);
    let coarse = (9..=32).map(|i| f64::from(i) * 8.0);
    fine.chain(middle).chain(coarse)
}

/// Privacy spent by one device over the rounds it has recorded.
///
/// The Gaussian mechanism's RDP is `α / (2 z²)` per round, so the total over rounds is
/// `α / 2 · Σ 1/z²`; the state keeps that sum and the count of rounds. It is serde so the
/// caller can persist it with the device's other durable state: losing it forgets spent
/// privacy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Accountant {
    /// Rounds recorded.
    pub rounds: u64,
    /// Σ 1/z² over the recorded rounds.
    pub sum_inverse_z_squared: f64,
}

impl Accountant {
    /// An accountant with nothing spent.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one round released with noise multiplier `z` (finite, above zero).
    pub fn record_round(&mut self, z: f64) -> Result<()> {
        check_positive("noise multiplier", z)?;
        let added = self.sum_inverse_z_squared + 1.0 / (z * z);
        if !added.is_finite() {
            return Err(DeltaError::InvalidParameter {
                name: "noise multiplier",
                value: z,
                reason: "so small that the privacy spent is infinite",
            });
        }
        self.sum_inverse_z_squared = added;
        self.rounds += 1;
        Ok(())
    }

    /// Total RDP ε at order `alpha` over the recorded rounds: `α / 2 · Σ 1/z²`.
    pub fn rdp(&self, alpha: f64) -> f64 {
        alpha / 2.0 * self.sum_inverse_z_squared
    }

    /// The (ε, δ)-DP ε of the recorded rounds: the minimum over [`alphas`] of
    /// `rdp(α) + ln(1/δ) / (α − 1)`. Zero before any round. `delta` must lie in (0, 1).
    pub fn epsilon(&self, delta: f64) -> Result<f64> {
        self.check_state()?;
        check_delta(delta)?;
        if self.rounds == 0 {
            return Ok(0.0);
        }
        let log_inv_delta = (1.0 / delta).ln();
        Ok(alphas()
            .map(|a| self.rdp(a) + log_inv_delta / (a - 1.0))
            .fold(f64::INFINITY, f64::min))
    }

    /// Refuses a state read back from outside that no sequence of rounds could produce.
    fn check_state(&self) -> Result<()> {
        let s = self.sum_inverse_z_squared;
        let consistent = s.is_finite() && s >= 0.0 && ((self.rounds == 0) == (s == 0.0));
        if consistent {
            Ok(())
        } else {
            Err(DeltaError::Malformed {
                what: "accountant",
                reason: format!("{} rounds with sum of 1/z^2 = {s}", self.rounds),
            })
        }
    }
}

/// The ε of a single round with noise multiplier `z`, at `delta`.
pub fn round_epsilon(z: f64, delta: f64) -> Result<f64> {
    let mut accountant = Accountant::new();
    accountant.record_round(z)?;
    accountant.epsilon(delta)
}

fn check_delta(delta: f64) -> Result<()> {
    if delta.is_finite() && delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(DeltaError::InvalidParameter {
            name: "delta",
            value: delta,
            reason: "must lie strictly between 0 and 1",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn a_short_vector_is_left_unchanged_by_clipping() {
        let original = vec![0.3f32, -0.4, 0.0]; // norm 0.5
        let mut v = original.clone();
        let norm = clip_l2(&mut v, 1.0).unwrap();
        assert!((norm - 0.5).abs() < 1e-7);
        assert_eq!(v, original);
        // Exactly at the bound is within it.
        let mut v = vec![3.0f32, 4.0];
        assert_eq!(clip_l2(&mut v, 5.0), Ok(5.0));
        assert_eq!(v, vec![3.0, 4.0]);
    }

    #[test]
    fn a_long_vector_is_scaled_to_max_norm() {
        let mut v = vec![3.0f32, -4.0];
        assert_eq!(clip_l2(&mut v, 1.0), Ok(5.0));
        assert!(
            (v[0] - 0.6).abs() < 1e-6 && (v[1] + 0.8).abs() < 1e-6,
            "{v:?}"
        );

        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for max_norm in [1e-3, 0.1, 1.0, 7.5] {
            let mut v: Vec<f32> = (0..10_000).map(|_| rng.gen_range(-1f32..1.0)).collect();
            let before = clip_l2(&mut v, max_norm).unwrap();
            assert!(before > max_norm);
            let after = l2_norm(&v);
            assert!(after <= max_norm, "{after} above {max_norm}");
            assert!(
                (after - max_norm) / max_norm > -1e-6,
                "{after} vs {max_norm}"
            );
        }
    }

    #[test]
    fn clipping_refuses_bad_input() {
        assert!(matches!(
            clip_l2(&mut [], 1.0),
            Err(DeltaError::Empty { .. })
        ));
        assert!(matches!(
            clip_l2(&mut [1.0, f32::NAN], 1.0),
            Err(DeltaError::NonFinite { index: 1, .. })
        ));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                clip_l2(&mut [1.0], bad),
                Err(DeltaError::InvalidParameter {
                    name: "max_norm",
                    ..
                })
            ));
        }
    }

    #[test]
    fn noise_has_the_requested_standard_deviation_and_is_reproducible() {
        let mut v = vec![1.0f32; 100_000];
        add_gaussian_noise(&mut v, 0.5, &mut ChaCha20Rng::seed_from_u64(2)).unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        // Standard errors: mean 0.5/sqrt(1e5) = 0.0016; std about 0.5/sqrt(2e5) = 0.0011.
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.01, "{}", var.sqrt());

        let mut w = vec![1.0f32; 100_000];
        add_gaussian_noise(&mut w, 0.5, &mut ChaCha20Rng::seed_from_u64(2)).unwrap();
        assert_eq!(v, w);
    }

    #[test]
    fn noise_refuses_bad_input_and_leaves_values_unchanged() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        for bad in [0.0, -0.5, f64::NAN, f64::INFINITY] {
            let mut v = vec![1.0f32];
            assert!(add_gaussian_noise(&mut v, bad, &mut rng).is_err());
            assert_eq!(v, vec![1.0]);
        }
        assert!(add_gaussian_noise(&mut [], 1.0, &mut rng).is_err());
        let mut v = vec![f32::MAX; 64];
        assert!(matches!(
            add_gaussian_noise(&mut v, 1e38, &mut rng),
            Err(DeltaError::NonFinite { .. })
        ));
        assert_eq!(v, vec![f32::MAX; 64]);
    }

    #[test]
    fn a_single_round_matches_the_hand_computation() {
        // z = 1, δ = 1e-5. Per round RDP is α / (2 z²) = α / 2, and ln(1/δ) = ln(1e5) =
        // 11.512925464970229. ε(α) = α/2 + 11.512925 / (α − 1) is smallest near
        // α* = 1 + sqrt(2 · 11.512925) = 5.7985; the nearest orders of the grid give
        //   α = 5.75: 2.875 + 11.512925 / 4.75 = 2.875 + 2.423774 = 5.298774
        //   α = 6.00: 3.000 + 11.512925 / 5.00 = 3.000 + 2.302585 = 5.302585
        // so ε = 5.298774 (the continuous optimum is 0.5 + 2 sqrt(0.5 · 11.512925) = 5.298526).
        let eps = round_epsilon(1.0, 1e-5).unwrap();
        assert!((eps - 5.298_774).abs() < 1e-6, "{eps}");
        assert!(eps >= 5.298_525);
        assert_eq!(noise_multiplier(2.0, 2.0), Ok(1.0));
    }

    #[test]
    fn composition_adds_rdp() {
        let mut acc = Accountant::new();
        assert_eq!(acc.epsilon(1e-5), Ok(0.0));
        for _ in 0..10 {
            acc.record_round(1.0).unwrap();
        }
        assert_eq!(acc.rounds, 10);
        for alpha in alphas() {
            let single = alpha / 2.0;
            assert!((acc.rdp(alpha) - 10.0 * single).abs() < 1e-9 * acc.rdp(alpha));
        }
        // Ten rounds at z = 1 are worth one round at z = 1/sqrt(10), and cost more than one
        // round at z = 1 but less than ten times its ε (RDP composition beats adding ε).
        let ten = acc.epsilon(1e-5).unwrap();
        let equivalent = round_epsilon(1.0 / 10f64.sqrt(), 1e-5).unwrap();
        assert!((ten - equivalent).abs() < 1e-9, "{ten} vs {equivalent}");
        let one = round_epsilon(1.0, 1e-5).unwrap();
        assert!(one < ten && ten < 10.0 * one, "{one} {ten}");
        // Mixed multipliers add their 1/z².
        let mut mixed = Accountant::new();
        mixed.record_round(1.0).unwrap();
        mixed.record_round(2.0).unwrap();
        assert!((mixed.sum_inverse_z_squared - 1.25).abs() < 1e-12);
    }

    #[test]
    fn epsilon_decreases_as_the_noise_multiplier_grows() {
        let zs = [0.5, 0.8, 1.0, 1.5, 2.0, 4.0, 8.0];
        let eps: Vec<f64> = zs
            .iter()
            .map(|&z| round_epsilon(z, 1e-5).unwrap())
            .collect();
        assert!(eps.windows(2).all(|w| w[1] < w[0]), "{eps:?}");
        // And grows as δ shrinks.
        assert!(round_epsilon(1.0, 1e-9).unwrap() > round_epsilon(1.0, 1e-5).unwrap());
    }

    #[test]
    fn the_accountant_refuses_bad_parameters_and_state() {
        let mut acc = Accountant::new();
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(acc.record_round(bad).is_err());
        }
        assert!(acc.record_round(1e-200).is_err());
        assert_eq!(acc, Accountant::new());
        acc.record_round(1.0).unwrap();
        for bad in [0.0, 1.0, -0.1, f64::NAN] {
            assert!(acc.epsilon(bad).is_err());
        }
        let forged = Accountant {
            rounds: 0,
            sum_inverse_z_squared: 3.0,
        };
        assert!(matches!(
            forged.epsilon(1e-5),
            Err(DeltaError::Malformed { .. })
        ));
        let forged = Accountant {
            rounds: 2,
            sum_inverse_z_squared: -1.0,
        };
        assert!(forged.epsilon(1e-5).is_err());
    }

    #[test]
    fn the_accountant_survives_json() {
        let mut acc = Accountant::new();
        acc.record_round(1.1).unwrap();
        acc.record_round(0.9).unwrap();
        let back: Accountant = serde_json::from_str(&serde_json::to_string(&acc).unwrap()).unwrap();
        assert_eq!(back, acc);
        assert_eq!(back.epsilon(1e-6), acc.epsilon(1e-6));
    }

    #[test]
    fn the_alpha_grid_spans_1_25_to_256() {
        let grid: Vec<f64> = alphas().collect();
        assert_eq!(grid.len(), 60 + 48 + 24);
        assert_eq!(grid[0], 1.25);
        assert_eq!(*grid.last().unwrap(), 256.0);
        assert!(grid.windows(2).all(|w| w[1] > w[0]));
    }
}
