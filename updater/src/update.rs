//! A round's update from this site's head: the delta against the round's global head, tensor
//! by tensor in the round's order, clipped to the round's L2 bound and, when the round asks,
//! noised (Gaussian, `noise_multiplier x clip_norm`) with the privacy spent recorded.

use fl_delta::dp::{self, Accountant};
use fl_delta::rand::SeedableRng;
use fl_delta::topk::ErrorFeedback;
use fleet_wire::message::{RoundAnnounce, UpdateCommit};
use fleet_wire::tensors::{self, Array};
use std::collections::BTreeMap;

/// Float32 tensors as they are.
pub const ENCODING_F32: &str = "f32";
/// Int8 blockwise quantisation with stochastic rounding (`T.q8`, `T.scale`).
pub const ENCODING_INT8: &str = "int8-block256";
/// Top-k sparsification with error feedback over the whole delta (`topk.indices` U32,
/// `topk.values` F32); never under secure aggregation.
pub const ENCODING_TOPK: &str = "topk";
const INT8_BLOCK: usize = 256;

/// δ of the (ε, δ) the updater reports.
pub const DP_DELTA: f64 = 1e-5;

/// The ε (at [`DP_DELTA`]) this round's noise spends; `None` without noise (the accountant's
/// running total is what `updater status` prints).
pub fn round_epsilon(round: &RoundAnnounce) -> anyhow::Result<Option<f64>> {
    if round.noise_multiplier > 0.0 {
        Ok(Some(dp::round_epsilon(round.noise_multiplier, DP_DELTA)?))
    } else {
        Ok(None)
    }
}

/// Named F32 tensors of a head blob.
pub fn head(bytes: &[u8]) -> anyhow::Result<BTreeMap<String, Vec<f32>>> {
    Ok(tensors::decode_f32(bytes)?)
}

/// An update ready to send: its blob and its commit.
pub struct Update {
    pub blob: Vec<u8>,
    pub commit: UpdateCommit,
    /// L2 norm of the delta before clipping.
    pub norm: f64,
}

/// The round's delta of `local` against `global`, flat in the round's tensor order, clipped
/// to the round's L2 bound and noised when the round asks (the privacy spent recorded in
/// `accountant`); with the norm before clipping.
pub fn private_delta(
    round: &RoundAnnounce,
    local: &BTreeMap<String, Vec<f32>>,
    global: &BTreeMap<String, Vec<f32>>,
    accountant: &mut Accountant,
) -> anyhow::Result<(Vec<f32>, f64)> {
    let mut flat = Vec::new();
    for spec in &round.tensors {
        let (l, g) = match (local.get(&spec.name), global.get(&spec.name)) {
            (Some(l), Some(g)) if l.len() == spec.len as usize && g.len() == spec.len as usize => {
                (l, g)
            }
            _ => anyhow::bail!(
                "tensor {} ({} values) is not in both the local and the global head",
                spec.name,
                spec.len
            ),
        };
        flat.extend(l.iter().zip(g).map(|(l, g)| l - g));
    }
    let norm = dp::clip_l2(&mut flat, round.clip_norm)?;
    if round.noise_multiplier > 0.0 {
        let mut rng = fl_delta::rand_chacha::ChaCha20Rng::from_entropy();
        dp::add_gaussian_noise(
            &mut flat,
            round.noise_multiplier * round.clip_norm,
            &mut rng,
        )?;
        accountant.record_round(round.noise_multiplier)?;
    }
    Ok((flat, norm))
}

/// The update of `local` (fine-tuned from the round's global head) against `global`, with no
/// error-feedback memory between rounds (a device keeps one: [`build_with`]).
pub fn build(
    round: &RoundAnnounce,
    local: &BTreeMap<String, Vec<f32>>,
    global: &BTreeMap<String, Vec<f32>>,
    cases: u32,
    accountant: &mut Accountant,
) -> anyhow::Result<Update> {
    build_with(
        round,
        local,
        global,
        cases,
        accountant,
        &mut ErrorFeedback::new(),
    )
}

/// [`build`] with the device's error-feedback state, which the top-k encoding reads and
/// updates (the caller stores it with the update).
pub fn build_with(
    round: &RoundAnnounce,
    local: &BTreeMap<String, Vec<f32>>,
    global: &BTreeMap<String, Vec<f32>>,
    cases: u32,
    accountant: &mut Accountant,
    feedback: &mut ErrorFeedback,
) -> anyhow::Result<Update> {
    let (flat, norm) = private_delta(round, local, global, accountant)?;
    let mut named = Vec::new();
    let mut at = 0;
    let mut rng = fl_delta::rand_chacha::ChaCha20Rng::from_entropy();
    if round.encoding == ENCODING_TOPK {
        let fraction = round
            .topk_fraction
            .ok_or_else(|| anyhow::anyhow!("round {} has no topk_fraction", round.round))?;
        let k = ((flat.len() as f64 * fraction).ceil() as usize).max(1);
        if feedback.residual.len() != flat.len() {
            // A residual of another layout (a new model) is dropped, not applied.
            *feedback = ErrorFeedback::new();
        }
        let sparse = feedback.compress(&flat, k)?;
        named.push(("topk.indices".to_string(), Array::U32(sparse.indices)));
        named.push(("topk.values".to_string(), Array::F32(sparse.values)));
    }
    for spec in round
        .tensors
        .iter()
        .filter(|_| round.encoding != ENCODING_TOPK)
    {
        let end = at + spec.len as usize;
        let values = &flat[at..end];
        match round.encoding.as_str() {
            ENCODING_F32 => named.push((spec.name.clone(), Array::F32(values.to_vec()))),
            ENCODING_INT8 => {
                // Stochastic rounding: unbiased, so the server's average is too.
                let q = fl_delta::quantize::encode(values, INT8_BLOCK, &mut rng)?;
                named.push((format!("{}.q8", spec.name), Array::I8(q.values)));
                named.push((format!("{}.scale", spec.name), Array::F32(q.scales)));
            }
            other => anyhow::bail!("round {} asks for encoding {other:?}", round.round),
        }
        at = end;
    }
    let metadata = BTreeMap::from([
        ("encoding".to_string(), round.encoding.clone()),
        ("round".to_string(), round.round.to_string()),
        ("base_version".to_string(), round.global_version.to_string()),
    ]);
    let blob = tensors::encode(&named, &metadata)?;
    let commit = UpdateCommit {
        round: round.round,
        blob: fleet_wire::sha256_hex(&blob),
        size: blob.len() as u64,
        count: fleet_wire::message::chunk_count(blob.len() as u64),
        cases,
        base_version: round.global_version,
        encoding: round.encoding.clone(),
        clip_norm: Some(round.clip_norm),
        noise_multiplier: Some(round.noise_multiplier),
    };
    Ok(Update { blob, commit, norm })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_wire::message::TensorSpec;

    fn round(noise_multiplier: f64, encoding: &str) -> RoundAnnounce {
        RoundAnnounce {
            round: 3,
            federation: "f".into(),
            model: "m".into(),
            global_version: 2,
            deadline_ms: u64::MAX,
            quorum: 1,
            enrolled: 1,
            aggregator: "fedavg".into(),
            secure_aggregation: false,
            encoding: encoding.into(),
            clip_norm: 1.0,
            noise_multiplier,
            tensors: vec![
                TensorSpec {
                    name: "w".into(),
                    len: 3,
                },
                TensorSpec {
                    name: "b".into(),
                    len: 1,
                },
            ],
            seed: "0".repeat(64),
            participants: Vec::new(),
            topk_fraction: Some(0.5),
            case_cap: None,
        }
    }

    fn heads() -> (BTreeMap<String, Vec<f32>>, BTreeMap<String, Vec<f32>>) {
        let local = BTreeMap::from([
            ("w".to_string(), vec![3.0, 0.0, 4.0]),
            ("b".to_string(), vec![1.0]),
        ]);
        let global = BTreeMap::from([
            ("w".to_string(), vec![0.0, 0.0, 0.0]),
            ("b".to_string(), vec![1.0]),
        ]);
        (local, global)
    }

    #[test]
    fn the_delta_follows_the_rounds_tensor_order_and_is_clipped_to_its_bound() {
        let (local, global) = heads();
        let mut accountant = Accountant::default();
        let (delta, norm) =
            private_delta(&round(0.0, ENCODING_F32), &local, &global, &mut accountant).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let expected = [0.6, 0.0, 0.8, 0.0];
        for (got, want) in delta.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{delta:?}");
        }
        assert_eq!(accountant.epsilon(DP_DELTA).unwrap(), 0.0);
        assert_eq!(round_epsilon(&round(0.0, ENCODING_F32)).unwrap(), None);
    }

    #[test]
    fn noise_is_added_and_its_privacy_cost_recorded() {
        let (local, global) = heads();
        let mut accountant = Accountant::default();
        let announce = round(1.0, ENCODING_INT8);
        let (noisy, _) = private_delta(&announce, &local, &global, &mut accountant).unwrap();
        assert_ne!(noisy, vec![0.6, 0.0, 0.8, 0.0]);
        let spent = accountant.epsilon(DP_DELTA).unwrap();
        assert!((spent - round_epsilon(&announce).unwrap().unwrap()).abs() < 1e-9);
        let built = build(&announce, &local, &global, 7, &mut accountant).unwrap();
        assert_eq!(built.commit.encoding, ENCODING_INT8);
        let (arrays, _) = tensors::decode(&built.blob).unwrap();
        assert!(arrays.contains_key("w.q8") && arrays.contains_key("b.scale"));
        assert!(accountant.epsilon(DP_DELTA).unwrap() > spent);
    }

    /// Top-k keeps the largest coordinates and the residual keeps the rest: what is sent plus
    /// the residual is the delta.
    #[test]
    fn topk_sends_the_largest_coordinates_and_keeps_the_rest_for_later_rounds() {
        let (local, global) = heads();
        let mut announce = round(0.0, ENCODING_TOPK);
        announce.clip_norm = 100.0;
        let mut feedback = ErrorFeedback::new();
        let built = build_with(
            &announce,
            &local,
            &global,
            2,
            &mut Accountant::default(),
            &mut feedback,
        )
        .unwrap();
        let (arrays, _) = tensors::decode(&built.blob).unwrap();
        assert_eq!(arrays["topk.indices"], Array::U32(vec![0, 2]));
        assert_eq!(arrays["topk.values"], Array::F32(vec![3.0, 4.0]));
        assert_eq!(feedback.residual, vec![0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn a_head_without_a_tensor_of_the_round_is_an_error_naming_it() {
        let (mut local, global) = heads();
        local.remove("b");
        let error = private_delta(
            &round(0.0, ENCODING_F32),
            &local,
            &global,
            &mut Accountant::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("tensor b"), "{error}");
    }
}
