//! What happens to a weight delta between the learner and the wire.
//!
//! A device fine-tunes the network head locally and sends a *delta* (local head minus global
//! head) to the federation server, which aggregates the deltas of many devices into the next
//! global head. This crate is the mathematics of those deltas: pure functions and small serde
//! state structs, deterministic for a given random-number generator, with no I/O, no async and
//! no network. Tensors are flat `&[f32]` slices; the caller flattens its named tensors in one
//! fixed order on both sides.
//!
//! # Layout
//!
//! - [`quantize`]: int8 blockwise quantisation with stochastic (unbiased) rounding, to shrink
//!   what a device uploads about fourfold.
//! - [`topk`]: top-k sparsification with error feedback: a device sends only its k largest
//!   coordinates and carries the rest over to the next round.
//! - [`dp`]: client-side differential privacy: L2 clipping, Gaussian noise and a Rényi-DP
//!   accountant that turns the noise multipliers of past rounds into an (ε, δ) guarantee.
//! - [`aggregate`]: server-side aggregation: FedAvg, the robust coordinate-wise trimmed mean
//!   and median, norm bounding of individual updates, a staleness discount, and the FedAdam
//!   server optimiser.
//!
//! Every function checks its input (empty input, non-finite values, mismatched lengths,
//! out-of-range parameters) and answers a typed [`DeltaError`]; none panics on bad input.
//! Functions that mutate state (error-feedback residuals, optimiser moments, vectors being
//! clipped or noised) leave it untouched when they return an error.
//!
//! # Randomness
//!
//! Randomised functions take any `rand` 0.8 [`rand::Rng`]; this crate re-exports [`rand`] and
//! [`rand_chacha`] so that callers build a generator of the matching version. Tests seed a
//! [`rand_chacha::ChaCha20Rng`] with a fixed seed for reproducibility. In production the
//! generator that draws differential-privacy noise must be seeded from the operating system
//! (`ChaCha20Rng::from_entropy()`): noise drawn from a known seed can be subtracted again.
//!
//! # Which combinations are sound
//!
//! - **Robust aggregation** ([`aggregate::trimmed_mean`], [`aggregate::median`],
//!   [`aggregate::bound_norms`]) needs every individual update in the clear. It therefore
//!   cannot run under secure aggregation, where the server sees only the sum of the masked
//!   updates. Under secure aggregation the only defence of this kind left is a clipping that
//!   each device applies to itself ([`dp::clip_l2`]), which a malicious device can skip.
//! - **Top-k** ([`topk`]) is off under secure aggregation: the pairwise masks make every
//!   coordinate of every masked upload dense, so nothing would be saved, and sending the
//!   support (which coordinates a device chose) in the clear would leak what secure
//!   aggregation hides.
//! - **Quantisation** ([`quantize`]) is compatible with secure aggregation once the values are
//!   fixed-point integers summed in a modular group: the i8 codes with a scale that all devices
//!   share. The per-block scales of [`quantize::Quantized`] differ from device to device, so the
//!   codes themselves cannot be summed as they are; a secure-aggregation path fixes the scale
//!   (for example from the clipping norm) before encoding.
//! - **Client-side DP noise** ([`dp`]) is compatible with everything: it is added on the
//!   device before compression, masking or aggregation, and post-processing (quantising,
//!   sparsifying, summing, trimming) cannot weaken a DP guarantee.

pub mod aggregate;
pub mod dp;
pub mod quantize;
pub mod topk;

pub use rand;
pub use rand_chacha;

use thiserror::Error;

/// Everything that can be wrong with the input of a function of this crate.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DeltaError {
    /// A vector or a set of updates with nothing in it.
    #[error("{what} is empty")]
    Empty { what: &'static str },
    /// A NaN or an infinity where a finite number is needed.
    #[error("{what}[{index}] is not finite")]
    NonFinite { what: &'static str, index: usize },
    /// Two vectors that must have the same length do not.
    #[error("{what} has length {found}, expected {expected}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// A parameter outside its range (zero, negative, not finite, too large).
    #[error("parameter {name} = {value} is invalid: {reason}")]
    InvalidParameter {
        name: &'static str,
        value: f64,
        reason: &'static str,
    },
    /// A length above the bound the caller accepts, or above what the encoding can carry.
    #[error("{what} has length {len}, more than the limit {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// An encoded delta whose parts disagree with each other.
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    /// A trimmed mean that would trim away every value of a coordinate.
    #[error("trimming {trimmed} of {n} values from each end leaves nothing")]
    NothingRemains { n: usize, trimmed: usize },
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, DeltaError>;

/// Refuses an empty slice or one with a non-finite value.
pub(crate) fn check_values(what: &'static str, values: &[f32]) -> Result<()> {
    if values.is_empty() {
        return Err(DeltaError::Empty { what });
    }
    check_finite(what, values)
}

/// Refuses a slice with a non-finite value (an empty one passes).
pub(crate) fn check_finite(what: &'static str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(DeltaError::NonFinite { what, index }),
        None => Ok(()),
    }
}

/// Refuses a parameter that is not finite or not strictly positive.
pub(crate) fn check_positive(name: &'static str, value: f64) -> Result<()> {
    if !value.is_finite() {
        return Err(DeltaError::InvalidParameter {
            name,
            value,
            reason: "must be finite",
        });
    }
    if value <= 0.0 {
        return Err(DeltaError::InvalidParameter {
            name,
            value,
            reason: "must be greater than zero",
        });
    }
    Ok(())
}

/// L2 norm, accumulated in f64 so that it neither overflows nor loses the small terms.
pub(crate) fn l2_norm(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt()
}

/// Scales `values` in place so that their L2 norm (`norm`, already measured) is at most
/// `max_norm`. The factor is shrunk by a few f32 ulps so that the rounding of the products
/// cannot leave the norm a hair above the bound, which a sensitivity argument relies on.
pub(crate) fn scale_to_norm(values: &mut [f32], norm: f64, max_norm: f64) {
    // Each product is rounded to f32 with a relative error of at most 2^-24, so the norm of
    // the result is within 2^-24 of `factor * norm`; a margin of 2^-22 covers it.
    let mut factor = max_norm / norm * (1.0 - 2f64.powi(-22));
    let original: Vec<f32> = values.to_vec();
    for _ in 0..8 {
        for (v, &o) in values.iter_mut().zip(&original) {
            *v = (f64::from(o) * factor) as f32;
        }
        if l2_norm(values) <= max_norm {
            return;
        }
        factor *= 1.0 - 2f64.powi(-20);
    }
    // Unreachable by the bound above; zero is the one vector certainly inside the ball.
    values.iter_mut().for_each(|v| *v = 0.0);
}
