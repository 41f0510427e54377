//! Which aggregator a round uses, over flat weighted updates (the arithmetic is `fl_delta`'s).
//! Server-side norm bounding comes first: every update is scaled to at most `clip_norm` (L2),
//! whatever the device did. FedAdam keeps its moments across rounds in the server's store.

use fl_delta::aggregate::{self, FedAdam, FedAdamParams, Update};

/// Weight of an update `staleness` global versions behind: (1 + s)^-0.5.
pub fn staleness_weight(staleness: u64) -> f64 {
    aggregate::staleness_weight(staleness, 0.5).unwrap_or(0.0)
}

/// Combine `(weight, delta)` updates into the delta to add to the global head. `adam` is the
/// FedAdam state (read and updated when the aggregator is `fedadam`).
pub fn combine(
    aggregator: &str,
    updates: &[(f64, Vec<f32>)],
    clip_norm: f64,
    trim_fraction: f64,
    adam: &mut Option<FedAdam>,
) -> anyhow::Result<Vec<f32>> {
    let mut updates: Vec<Update> = updates
        .iter()
        .map(|(weight, values)| Update {
            weight: *weight,
            values: values.clone(),
        })
        .collect();
    let bounded = aggregate::bound_norms(&mut updates, clip_norm)?;
    if bounded > 0 {
        tracing::info!(bounded, clip_norm, "updates scaled down to the norm bound");
    }
    Ok(match aggregator {
        "fedavg" => aggregate::fedavg(&updates)?,
        "trimmed_mean" => aggregate::trimmed_mean(&updates, trim_fraction)?,
        "median" => aggregate::median(&updates)?,
        "fedadam" => {
            let mean = aggregate::fedavg(&updates)?;
            let state = match adam.take() {
                Some(state) if state.m.is_empty() || state.m.len() == mean.len() => state,
                _ => FedAdam::new(FedAdamParams::default())?,
            };
            let mut state = state;
            let step = state.step(&mean)?;
            *adam = Some(state);
            step
        }
        other => {
            anyhow::bail!("aggregator {other} is not one of fedavg, fedadam, trimmed_mean, median")
        }
    })
}
