//! Secure aggregation on the device: this site's clipped delta (weighted by its case count
//! when the round names a `case_cap`, the weight appended as one more coordinate), in the
//! fixed-point code of the round, goes through the four phases of `secagg` (keys, shares, masked input, unmasking);
//! the server only ever gets it masked. The state lives in memory: a device that restarts
//! mid-round has dropped out of it, which the protocol tolerates.

use fleet_wire::message::{RoundAnnounce, SecAggPhase};
use secagg::{
    ClientInputSent, ClientKeysAdvertised, ClientSharesSent, FixedPoint, NeighbourKeys,
    RelayedShares, UnmaskRequest,
};

/// What this device masks: with a case cap, `w · delta` and then `w · clip_norm`, where
/// `w = min(max(cases, 1), cap) / cap` (at most 1, so every coordinate stays within the
/// fixed-point range); without one, the delta as it is.
fn weighted_input(delta: &[f32], cases: u32, case_cap: Option<u32>, clip_norm: f64) -> Vec<f32> {
    match case_cap {
        Some(cap) if cap > 0 => {
            let w = cases.clamp(1, cap) as f64 / cap as f64;
            let mut v: Vec<f32> = delta.iter().map(|d| (*d as f64 * w) as f32).collect();
            v.push((w * clip_norm) as f32);
            v
        }
        _ => delta.to_vec(),
    }
}

enum Client {
    Advertised(ClientKeysAdvertised),
    Shared(ClientSharesSent),
    Sent(ClientInputSent),
    Done,
}

/// One round's secure aggregation on this device.
pub struct SecureRound {
    pub round: u64,
    input: Vec<u32>,
    client: Client,
}

impl SecureRound {
    /// Start with `delta` (clipped to the round's bound), fine-tuned on `cases` cases; the
    /// body of `advertise_keys`.
    pub fn start(
        announce: &RoundAnnounce,
        device: &str,
        delta: &[f32],
        cases: u32,
    ) -> anyhow::Result<(SecureRound, Vec<u8>)> {
        let index = announce
            .participants
            .binary_search_by(|p| p.as_str().cmp(device))
            .map_err(|_| anyhow::anyhow!("this device is not a participant of the round"))?;
        let n = announce.participants.len();
        let vector = weighted_input(delta, cases, announce.case_cap, announce.clip_norm);
        let config = secagg::from_announcement(announce.round, &announce.seed, n, vector.len())?;
        let fixed = FixedPoint::new(announce.clip_norm as f32, n as u32)?;
        let input = fixed.encode(&vector)?;
        let (client, message) = secagg::advertise_keys(config, index as u32, &mut secagg::OsRng)?;
        Ok((
            SecureRound {
                round: announce.round,
                input,
                client: Client::Advertised(client),
            },
            serde_json::to_vec(&message)?,
        ))
    }

    /// The server's message of `phase`; the answer to send (phase, body), if any.
    pub fn on_message(
        &mut self,
        phase: &str,
        body: &[u8],
    ) -> anyhow::Result<(&'static str, Vec<u8>)> {
        let client = std::mem::replace(&mut self.client, Client::Done);
        match (client, phase) {
            (Client::Advertised(c), SecAggPhase::NEIGHBOUR_KEYS) => {
                let m: NeighbourKeys = serde_json::from_slice(body)?;
                let (next, answer) = c.share_keys(&m, &mut secagg::OsRng)?;
                self.client = Client::Shared(next);
                Ok((SecAggPhase::SHARE_KEYS, serde_json::to_vec(&answer)?))
            }
            (Client::Shared(c), SecAggPhase::RELAYED_SHARES) => {
                let m: RelayedShares = serde_json::from_slice(body)?;
                let (next, answer) = c.masked_input(&m, &self.input)?;
                self.client = Client::Sent(next);
                Ok((SecAggPhase::MASKED_INPUT, serde_json::to_vec(&answer)?))
            }
            (Client::Sent(c), SecAggPhase::UNMASK_REQUEST) => {
                let m: UnmaskRequest = serde_json::from_slice(body)?;
                let answer = c.unmask(&m)?;
                Ok((SecAggPhase::UNMASK_RESPONSE, serde_json::to_vec(&answer)?))
            }
            (client, phase) => {
                self.client = client;
                anyhow::bail!("{phase} is not what this device waits for")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weight_scales_the_delta_and_travels_as_the_last_coordinate() {
        let v = weighted_input(&[1.0, -2.0], 250, Some(1000), 10.0);
        assert_eq!(v, vec![0.25, -0.5, 2.5]);
        // Counts are clamped to the cap and to at least one case.
        assert_eq!(
            weighted_input(&[1.0], 5000, Some(1000), 4.0),
            vec![1.0, 4.0]
        );
        assert_eq!(weighted_input(&[1.0], 0, Some(2), 4.0), vec![0.5, 2.0]);
        assert_eq!(weighted_input(&[1.0, 3.0], 7, None, 4.0), vec![1.0, 3.0]);
    }
}
