//! A round's update from this site's head: the delta against the round's global head, tensor
//! by tensor in the round's order, clipped to the round's L2 bound and, when the round asks,
//! noised (Gaussian, `noise_multiplier x clip_norm`) with the privacy spent recorded.

use fl_delta::dp::{self, Accountant};
use fl_delta::rand::SeedableRng;
use fleet_wire::message::{RoundAnnounce, UpdateCommit};
use fleet_wire::tensors::{self, Array};
use std::collections::BTreeMap;

/// Float32 tensors as they are.
pub const ENCODING_F32: &str = "f32";
/// Int8 blockwise quantisation with stochastic rounding (`T.q8`, `T.scale`).
pub const ENCODING_INT8: &str = "int8-block256";
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
    let (arrays, _) = tensors::decode(bytes)?;
    arrays
        .into_iter()
        .map(|(name, array)| match array {
            Array::F32(values) => Ok((name, values)),
            _ => Err(anyhow::anyhow!("head tensor {name} is not F32")),
        })
        .collect()
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

/// The update of `local` (fine-tuned from the round's global head) against `global`.
pub fn build(
    round: &RoundAnnounce,
    local: &BTreeMap<String, Vec<f32>>,
    global: &BTreeMap<String, Vec<f32>>,
    cases: u32,
    accountant: &mut Accountant,
) -> anyhow::Result<Update> {
    let (flat, norm) = private_delta(round, local, global, accountant)?;
    let mut named = Vec::new();
    let mut at = 0;
    let mut rng = fl_delta::rand_chacha::ChaCha20Rng::from_entropy();
    for spec in &round.tensors {
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
