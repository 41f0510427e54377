//! Server-side aggregation of the devices' deltas into one delta for the global head.
//!
//! - [`fedavg`]: the mean weighted by each update's `weight` (its case count).
//! - [`trimmed_mean`] and [`median`]: coordinate-wise robust aggregators, which bound the pull
//!   of a minority of poisoned updates. They ignore `weight`: a reported case count is itself
//!   something a malicious device controls.
//! - [`bound_norms`]: scales every update down to an L2 norm bound before aggregation, so that
//!   no single update can dominate a weighted mean.
//! - [`staleness_weight`]: the discount of an update computed against an older global head.
//! - [`FedAdam`]: the adaptive server optimiser that turns the aggregated delta into the step
//!   applied to the global head.
//!
//! [`trimmed_mean`], [`median`] and [`bound_norms`] need every individual update in the clear
//! and so do not run under secure aggregation (see the crate docs). [`fedavg`] needs only the
//! sum of the weighted updates and the sum of the weights, and [`FedAdam`] only the aggregate,
//! so both also work on what secure aggregation reveals.

use serde::{Deserialize, Serialize};

use crate::{
    check_finite, check_positive, check_values, l2_norm, scale_to_norm, DeltaError, Result,
};

/// One device's delta and its weight in [`fedavg`] (typically its number of training cases,
/// times a [`staleness_weight`] for a late update).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// Weight in the weighted mean; finite and above zero.
    pub weight: f64,
    /// The delta, flattened in the order the server expects.
    pub values: Vec<f32>,
}

/// Checks a set of updates: not empty, each non-empty, finite and of one length. Returns the
/// length.
fn check_updates(updates: &[Update]) -> Result<usize> {
    let first = updates
        .first()
        .ok_or(DeltaError::Empty { what: "updates" })?;
    let len = first.values.len();
    for u in updates {
        check_values("update values", &u.values)?;
        if u.values.len() != len {
            return Err(DeltaError::LengthMismatch {
                what: "update values",
                expected: len,
                found: u.values.len(),
            });
        }
    }
    Ok(len)
}

/// The mean of the updates weighted by their `weight`: `Σ wᵢ xᵢ / Σ wᵢ`, accumulated in f64.
///
/// Refuses no updates, updates of different lengths, non-finite values, and a weight that is
/// not finite and above zero.
pub fn fedavg(updates: &[Update]) -> Result<Vec<f32>> {
    let len = check_updates(updates)?;
    let mut total_weight = 0f64;
    for u in updates {
        check_positive("update weight", u.weight)?;
        total_weight += u.weight;
    }
    check_positive("total weight", total_weight)?;
    let mut sum = vec![0f64; len];
    for u in updates {
        // Normalising each weight first keeps the products in range for any finite weights.
        let w = u.weight / total_weight;
        for (s, &v) in sum.iter_mut().zip(&u.values) {
            *s += w * f64::from(v);
        }
    }
    Ok(sum.into_iter().map(|s| s as f32).collect())
}

/// Coordinate-wise trimmed mean: for each coordinate, drops the `floor(trim_fraction * n)`
/// largest and as many smallest of the `n` values and averages the rest (unweighted).
///
/// `trim_fraction` must be finite and in `[0, 1)`; zero is the plain mean. Refuses a fraction
/// that would trim away every value ([`DeltaError::NothingRemains`]), as well as what
/// [`fedavg`] refuses about the values.
pub fn trimmed_mean(updates: &[Update], trim_fraction: f64) -> Result<Vec<f32>> {
    let len = check_updates(updates)?;
    if !(trim_fraction.is_finite() && (0.0..1.0).contains(&trim_fraction)) {
        return Err(DeltaError::InvalidParameter {
            name: "trim_fraction",
            value: trim_fraction,
            reason: "must lie in [0, 1)",
        });
    }
    let n = updates.len();
    // Exact for any realistic n: n is far below 2^53.
    let trimmed = (trim_fraction * n as f64).floor() as usize;
    if 2 * trimmed >= n {
        return Err(DeltaError::NothingRemains { n, trimmed });
    }
    Ok(per_coordinate(updates, len, |column| {
        let kept = &column[trimmed..n - trimmed];
        kept.iter().map(|&v| f64::from(v)).sum::<f64>() / kept.len() as f64
    }))
}

/// Coordinate-wise median (unweighted); with an even number of updates, the mean of the two
/// middle values.
pub fn median(updates: &[Update]) -> Result<Vec<f32>> {
    let len = check_updates(updates)?;
    let n = updates.len();
    Ok(per_coordinate(updates, len, |column| {
        if n % 2 == 1 {
            f64::from(column[n / 2])
        } else {
            (f64::from(column[n / 2 - 1]) + f64::from(column[n / 2])) / 2.0
        }
    }))
}

/// Applies `reduce` to each coordinate's values, sorted ascending.
fn per_coordinate(updates: &[Update], len: usize, reduce: impl Fn(&[f32]) -> f64) -> Vec<f32> {
    let mut column = vec![0f32; updates.len()];
    (0..len)
        .map(|j| {
            for (c, u) in column.iter_mut().zip(updates) {
                *c = u.values[j];
            }
            column.sort_unstable_by(f32::total_cmp);
            reduce(&column) as f32
        })
        .collect()
}

/// Scales each update whose L2 norm is above `max_norm` down to (at most) `max_norm`, and
/// returns how many it scaled. Updates within the bound are left unchanged.
///
/// Checks every update before changing any, so on error nothing is scaled.
pub fn bound_norms(updates: &mut [Update], max_norm: f64) -> Result<usize> {
    check_updates(updates)?;
    check_positive("max_norm", max_norm)?;
    let mut scaled = 0;
    for u in updates.iter_mut() {
        let norm = l2_norm(&u.values);
        if norm > max_norm {
            scale_to_norm(&mut u.values, norm, max_norm);
            scaled += 1;
        }
    }
    Ok(scaled)
}

/// The weight factor `(1 + s)^-exponent` of an update computed against a global head
/// `staleness_rounds` rounds old: 1 for a fresh update, shrinking with age.
///
/// `exponent` must be finite and non-negative; zero means no discount.
pub fn staleness_weight(staleness_rounds: u64, exponent: f64) -> Result<f64> {
    if !(exponent.is_finite() && exponent >= 0.0) {
        return Err(DeltaError::InvalidParameter {
            name: "exponent",
            value: exponent,
            reason: "must be finite and not negative",
        });
    }
    // u64 to f64 rounds above 2^53 rounds, harmless for a discount.
    Ok((1.0 + staleness_rounds as f64).powf(-exponent))
}

/// Hyper-parameters of [`FedAdam`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FedAdamParams {
    /// Server learning rate η, above zero.
    pub lr: f64,
    /// Decay of the first moment, in `[0, 1)`.
    pub beta1: f64,
    /// Decay of the second moment, in `[0, 1)`.
    pub beta2: f64,
    /// Adaptivity τ added to `sqrt(v)`, above zero: the larger, the less adaptive.
    pub tau: f64,
}

impl Default for FedAdamParams {
    /// η = 0.01, β₁ = 0.9, β₂ = 0.99, τ = 1e-3: the paper's β's, and a τ and η to tune.
    fn default() -> Self {
        Self {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        }
    }
}

impl FedAdamParams {
    fn validate(&self) -> Result<()> {
        check_positive("lr", self.lr)?;
        check_positive("tau", self.tau)?;
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(beta.is_finite() && (0.0..1.0).contains(&beta)) {
                return Err(DeltaError::InvalidParameter {
                    name,
                    value: beta,
                    reason: "must lie in [0, 1)",
                });
            }
        }
        Ok(())
    }
}

/// The FedAdam server optimiser (Reddi et al. 2021, "Adaptive Federated Optimization",
/// Algorithm 2). Given the aggregated delta Δ of a round:
///
/// ```text
/// m ← β₁ m + (1 − β₁) Δ
/// v ← β₂ v + (1 − β₂) Δ²
/// step = η m / (sqrt(v) + τ)
/// ```
///
/// and the new global head is the old one plus `step`. As in the paper there is no bias
/// correction, so the first step has magnitude about `η (1 − β₁) / sqrt(1 − β₂)` per
/// coordinate (η with the default β's) wherever |Δ| is well above τ. The state is serde so the
/// server can persist it between rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FedAdam {
    /// Hyper-parameters.
    pub params: FedAdamParams,
    /// First moment; empty before the first step.
    pub m: Vec<f32>,
    /// Second moment; empty before the first step.
    pub v: Vec<f32>,
}

impl FedAdam {
    /// A fresh optimiser (zero moments) with checked hyper-parameters.
    pub fn new(params: FedAdamParams) -> Result<Self> {
        params.validate()?;
        Ok(Self {
            params,
            m: Vec::new(),
            v: Vec::new(),
        })
    }

    /// Takes one step on the aggregated delta and returns the update to add to the global
    /// weights. Refuses an empty or non-finite delta, a delta of another length than the
    /// moments, bad hyper-parameters, or moments that are not finite (or a negative second
    /// moment) as read back from outside; on error the state is unchanged.
    pub fn step(&mut self, aggregated_delta: &[f32]) -> Result<Vec<f32>> {
        self.params.validate()?;
        check_values("aggregated delta", aggregated_delta)?;
        let len = aggregated_delta.len();
        let fresh = self.m.is_empty() && self.v.is_empty();
        if !fresh {
            for (what, moment) in [("first moment", &self.m), ("second moment", &self.v)] {
                if moment.len() != len {
                    return Err(DeltaError::LengthMismatch {
                        what,
                        expected: len,
                        found: moment.len(),
                    });
                }
                check_finite(what, moment)?;
            }
            if let Some(index) = self.v.iter().position(|&x| x < 0.0) {
                return Err(DeltaError::Malformed {
                    what: "second moment",
                    reason: format!("value {index} is negative"),
                });
            }
        }
        let FedAdamParams {
            lr,
            beta1,
            beta2,
            tau,
        } = self.params;
        let mut m = Vec::with_capacity(len);
        let mut v = Vec::with_capacity(len);
        let mut step = Vec::with_capacity(len);
        for (i, &d) in aggregated_delta.iter().enumerate() {
            let d = f64::from(d);
            let (m0, v0) = if fresh {
                (0.0, 0.0)
            } else {
                (f64::from(self.m[i]), f64::from(self.v[i]))
            };
            let mi = beta1 * m0 + (1.0 - beta1) * d;
            let vi = beta2 * v0 + (1.0 - beta2) * d * d;
            m.push(mi as f32);
            v.push(vi as f32);
            step.push((lr * mi / (vi.sqrt() + tau)) as f32);
        }
        check_finite("first moment", &m)?;
        check_finite("second moment", &v)?;
        check_finite("step", &step)?;
        self.m = m;
        self.v = v;
        Ok(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn update(weight: f64, values: &[f32]) -> Update {
        Update {
            weight,
            values: values.to_vec(),
        }
    }

    #[test]
    fn fedavg_of_equal_weights_is_the_mean() {
        let updates = [
            update(5.0, &[1.0, -2.0, 0.5]),
            update(5.0, &[3.0, 2.0, 0.5]),
            update(5.0, &[2.0, 3.0, 2.0]),
        ];
        let avg = fedavg(&updates).unwrap();
        let expected = [2.0f32, 1.0, 1.0];
        for (a, e) in avg.iter().zip(expected) {
            assert!((a - e).abs() < 1e-6, "{avg:?}");
        }
    }

    #[test]
    fn fedavg_respects_the_weights() {
        // (1 · 0 + 3 · 4) / 4 = 3 and (1 · 8 + 3 · 0) / 4 = 2.
        let avg = fedavg(&[update(1.0, &[0.0, 8.0]), update(3.0, &[4.0, 0.0])]).unwrap();
        assert_eq!(avg, vec![3.0, 2.0]);
        // Scaling every weight changes nothing.
        let avg = fedavg(&[update(1e300, &[0.0, 8.0]), update(3e300, &[4.0, 0.0])]).unwrap();
        assert_eq!(avg, vec![3.0, 2.0]);
    }

    /// Nine honest updates close to a common delta, and one poisoned update of 1e6 everywhere.
    fn honest_and_poisoned() -> (Vec<Update>, Vec<Update>) {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let base: Vec<f32> = (0..50).map(|_| rng.gen_range(-0.5f32..0.5)).collect();
        let honest: Vec<Update> = (0..9)
            .map(|_| Update {
                weight: 100.0,
                values: base
                    .iter()
                    .map(|&b| b + rng.gen_range(-0.1f32..0.1))
                    .collect(),
            })
            .collect();
        let mut all = honest.clone();
        all.push(update(100.0, &[1e6; 50]));
        (honest, all)
    }

    /// Per coordinate, the spread (largest minus smallest) of the honest values.
    fn spread(honest: &[Update], j: usize) -> f32 {
        let column = honest.iter().map(|u| u.values[j]);
        let max = column.clone().fold(f32::MIN, f32::max);
        let min = column.fold(f32::MAX, f32::min);
        max - min
    }

    #[test]
    fn one_poisoned_update_barely_moves_the_trimmed_mean_and_median_but_wrecks_fedavg() {
        let (honest, all) = honest_and_poisoned();
        let honest_mean = fedavg(&honest).unwrap();
        let trimmed = trimmed_mean(&all, 0.1).unwrap(); // floor(0.1 · 10) = 1 from each end
        let med = median(&all).unwrap();
        let avg = fedavg(&all).unwrap();
        for j in 0..honest_mean.len() {
            let s = spread(&honest, j);
            assert!(s > 0.0);
            let moved_trimmed = (trimmed[j] - honest_mean[j]).abs();
            let moved_median = (med[j] - honest_mean[j]).abs();
            let moved_fedavg = (avg[j] - honest_mean[j]).abs();
            assert!(
                moved_trimmed < s,
                "coordinate {j}: trimmed mean moved {moved_trimmed}, spread {s}"
            );
            assert!(
                moved_median < s,
                "coordinate {j}: median moved {moved_median}, spread {s}"
            );
            // FedAvg moves by about 1e6 / 10 = 1e5: a hundred thousand times the honest spread.
            assert!(
                moved_fedavg > 1e4 * s,
                "coordinate {j}: fedavg moved only {moved_fedavg}"
            );
        }
    }

    #[test]
    fn bounding_norms_limits_the_pull_of_a_poisoned_update_on_fedavg() {
        let (honest, mut all) = honest_and_poisoned();
        let max_norm = honest
            .iter()
            .map(|u| l2_norm(&u.values))
            .fold(0f64, f64::max);
        let before: Vec<Vec<f32>> = honest.iter().map(|u| u.values.clone()).collect();
        // Only the poisoned update is above the largest honest norm.
        assert_eq!(bound_norms(&mut all, max_norm), Ok(1));
        assert!(l2_norm(&all[9].values) <= max_norm);
        assert!(all[..9].iter().zip(&before).all(|(u, b)| &u.values == b));
        let honest_mean = fedavg(&honest).unwrap();
        let avg = fedavg(&all).unwrap();
        let moved = honest_mean
            .iter()
            .zip(&avg)
            .map(|(h, a)| f64::from(h - a).powi(2))
            .sum::<f64>()
            .sqrt();
        // The poisoned update now weighs one tenth of a vector of norm max_norm at most
        // (plus the honest updates' share it displaced).
        assert!(moved <= 0.2 * max_norm, "{moved} vs {max_norm}");
    }

    #[test]
    fn trimmed_mean_and_median_on_small_cases() {
        let ups = [
            update(1.0, &[1.0, 10.0]),
            update(1.0, &[2.0, 40.0]),
            update(1.0, &[3.0, 20.0]),
            update(1.0, &[100.0, 30.0]),
        ];
        // floor(0.25 · 4) = 1 from each end: mean of {2, 3} and of {20, 30}.
        assert_eq!(trimmed_mean(&ups, 0.25), Ok(vec![2.5, 25.0]));
        // Zero trimming is the plain mean.
        assert_eq!(trimmed_mean(&ups, 0.0), Ok(vec![26.5, 25.0]));
        assert_eq!(median(&ups), Ok(vec![2.5, 25.0]));
        assert_eq!(median(&ups[..3]), Ok(vec![2.0, 20.0]));
        // Robust aggregators ignore the weights.
        let mut heavy = ups.to_vec();
        heavy[3].weight = 1e9;
        assert_eq!(median(&heavy), median(&ups));
    }

    #[test]
    fn trimming_everything_is_an_error() {
        let ups = vec![update(1.0, &[1.0]); 4];
        // floor(0.5 · 4) = 2 from each end of 4 leaves nothing.
        assert_eq!(
            trimmed_mean(&ups, 0.5),
            Err(DeltaError::NothingRemains { n: 4, trimmed: 2 })
        );
        // floor(0.5 · 3) = 1 from each end of 3 leaves one.
        assert_eq!(trimmed_mean(&ups[..3], 0.5), Ok(vec![1.0]));
        for bad in [-0.1, 1.0, f64::NAN] {
            assert!(matches!(
                trimmed_mean(&ups, bad),
                Err(DeltaError::InvalidParameter {
                    name: "trim_fraction",
                    ..
                })
            ));
        }
    }

    #[test]
    fn mismatched_lengths_are_an_error_everywhere() {
        let ups = [update(1.0, &[1.0, 2.0]), update(1.0, &[1.0])];
        let mismatch = DeltaError::LengthMismatch {
            what: "update values",
            expected: 2,
            found: 1,
        };
        assert_eq!(fedavg(&ups), Err(mismatch.clone()));
        assert_eq!(trimmed_mean(&ups, 0.0), Err(mismatch.clone()));
        assert_eq!(median(&ups), Err(mismatch.clone()));
        let mut copy = ups.to_vec();
        assert_eq!(bound_norms(&mut copy, 1.0), Err(mismatch));
        assert_eq!(copy, ups.to_vec());

        let mut adam = FedAdam::new(FedAdamParams::default()).unwrap();
        adam.step(&[1.0, 2.0]).unwrap();
        assert!(matches!(
            adam.step(&[1.0]),
            Err(DeltaError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn aggregators_refuse_bad_input() {
        assert_eq!(fedavg(&[]), Err(DeltaError::Empty { what: "updates" }));
        assert!(median(&[]).is_err());
        assert!(matches!(
            fedavg(&[update(1.0, &[])]),
            Err(DeltaError::Empty { .. })
        ));
        assert!(matches!(
            median(&[update(1.0, &[f32::NAN])]),
            Err(DeltaError::NonFinite { .. })
        ));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                fedavg(&[update(bad, &[1.0])]),
                Err(DeltaError::InvalidParameter { .. })
            ));
        }
        assert!(fedavg(&[update(f64::MAX, &[1.0]), update(f64::MAX, &[1.0])]).is_err());
        let mut ups = vec![update(1.0, &[3.0, 4.0])];
        assert!(bound_norms(&mut ups, 0.0).is_err());
        assert_eq!(ups[0].values, vec![3.0, 4.0]);
    }

    #[test]
    fn staleness_discounts_late_updates() {
        assert_eq!(staleness_weight(0, 0.5), Ok(1.0));
        assert_eq!(staleness_weight(3, 0.5), Ok(0.5)); // (1 + 3)^-0.5
        assert_eq!(staleness_weight(9, 0.0), Ok(1.0));
        let w: Vec<f64> = (0..5).map(|s| staleness_weight(s, 1.0).unwrap()).collect();
        assert!(w.windows(2).all(|p| p[1] < p[0]));
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(staleness_weight(1, bad).is_err());
        }
    }

    #[test]
    fn fedadam_first_step_has_the_sign_of_the_delta_and_magnitude_about_lr() {
        let params = FedAdamParams::default();
        let mut adam = FedAdam::new(params).unwrap();
        let delta = [0.5f32, -0.2, 1.0, -3.0];
        let step = adam.step(&delta).unwrap();
        for (s, d) in step.iter().zip(delta) {
            assert_eq!(s.signum(), d.signum());
            // m = 0.1 d, v = 0.01 d², step = lr · 0.1 d / (0.1 |d| + τ): within 5 % of lr
            // when |d| ≥ 0.2 and τ = 1e-3 (0.02 / 0.021 = 0.952 at |d| = 0.2).
            let relative = (f64::from(s.abs()) - params.lr) / params.lr;
            assert!(relative.abs() < 0.05, "{s} for {d}");
            assert!(f64::from(s.abs()) < params.lr);
        }
        // A zero coordinate takes no step.
        let mut adam = FedAdam::new(params).unwrap();
        assert_eq!(adam.step(&[0.0, 1.0]).unwrap()[0], 0.0);
    }

    #[test]
    fn fedadam_follows_the_recursion_under_a_constant_delta() {
        // With a constant Δ the moments after t steps are m = (1 − β₁^t) Δ and
        // v = (1 − β₂^t) Δ², so the step is η (1 − β₁^t) Δ / (sqrt(1 − β₂^t) |Δ| + τ). Without
        // bias correction it rises above η while v warms up more slowly than m, then settles
        // towards η |Δ| / (|Δ| + τ).
        let p = FedAdamParams::default();
        let mut adam = FedAdam::new(p).unwrap();
        let d = 0.3f64;
        for t in 1..=200 {
            let step = f64::from(adam.step(&[d as f32]).unwrap()[0]);
            let expected =
                p.lr * (1.0 - p.beta1.powi(t)) * d / ((1.0 - p.beta2.powi(t)).sqrt() * d + p.tau);
            assert!(
                (step - expected).abs() < 1e-4 * expected,
                "step {t}: {step} vs {expected}"
            );
        }
        let back: FedAdam = serde_json::from_str(&serde_json::to_string(&adam).unwrap()).unwrap();
        assert_eq!(back, adam);
    }

    #[test]
    fn fedadam_refuses_bad_parameters_and_state_and_keeps_its_state() {
        for params in [
            FedAdamParams {
                lr: 0.0,
                ..Default::default()
            },
            FedAdamParams {
                tau: -1.0,
                ..Default::default()
            },
            FedAdamParams {
                beta1: 1.0,
                ..Default::default()
            },
            FedAdamParams {
                beta2: f64::NAN,
                ..Default::default()
            },
        ] {
            assert!(matches!(
                FedAdam::new(params),
                Err(DeltaError::InvalidParameter { .. })
            ));
        }
        let mut adam = FedAdam::new(FedAdamParams::default()).unwrap();
        adam.step(&[1.0, -1.0]).unwrap();
        let before = adam.clone();
        assert!(adam.step(&[]).is_err());
        assert!(adam.step(&[1.0, f32::INFINITY]).is_err());
        assert_eq!(adam, before);
        adam.v[0] = -1.0;
        assert!(matches!(
            adam.step(&[1.0, 1.0]),
            Err(DeltaError::Malformed { .. })
        ));
        adam.v[0] = f32::NAN;
        assert!(matches!(
            adam.step(&[1.0, 1.0]),
            Err(DeltaError::NonFinite { .. })
        ));
    }
}
