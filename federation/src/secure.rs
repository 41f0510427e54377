//! Secure aggregation on the server side of one round: a `secagg::Server` driven phase by
//! phase. Each phase collects one message per device that got the previous one and closes when
//! all are in or its deadline passes (devices that did not answer have dropped); closing it
//! yields the next messages to send. The output is the survivors' mean of their clipped
//! deltas, weighted by case counts: with the round's `case_cap`, each device masks its delta
//! times `w = min(cases, cap) / cap` and, as one more coordinate, `w · clip`, so the unmasked
//! sum holds the weighted sum and the total weight; the server learns neither one device's
//! delta nor its count. It cannot bound norms (it sees no single update; the devices clip, and
//! the fixed-point range enforces the bound per coordinate).
//!
//! The state is in memory only: a server restarted mid-round cannot recover masked inputs, so
//! such a round is closed with the reason and the next one opens.

use fleet_wire::message::SecAggPhase;
use secagg::{AdvertiseKeys, FixedPoint, MaskedInput, Server, ShareKeys, UnmaskResponse};
use std::collections::BTreeSet;

/// What the round loop does next.
pub enum Step {
    /// Nothing to do yet.
    Wait,
    /// Send these (device, phase, body) and go on.
    Send(Vec<(String, &'static str, Vec<u8>)>),
    /// The mean delta of the survivors, and how many they were.
    Done { mean: Vec<f32>, survivors: usize },
    /// The round cannot complete, with the reason.
    Failed(String),
}

pub struct Session {
    pub round: u64,
    server: Server,
    fixed: FixedPoint,
    /// The last coordinate of the sum is the survivors' total weight (times `clip_norm`).
    weighted: bool,
    clip_norm: f64,
    participants: Vec<String>,
    collecting: &'static str,
    expected: BTreeSet<u32>,
    received: BTreeSet<u32>,
    deadline_ms: u64,
    phase_ms: u64,
    /// Bytes of masked inputs received (what the round's `bytes_in` counts).
    pub bytes_in: u64,
}

/// The fixed-point code both sides use: values in [-clip, clip], sums of `n` that cannot wrap.
pub fn fixed_point(clip_norm: f64, n: usize) -> anyhow::Result<FixedPoint> {
    Ok(FixedPoint::new(clip_norm as f32, n as u32)?)
}

impl Session {
    /// `vector_len`: the delta's length; with `case_cap`, one weight coordinate follows it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        round: u64,
        seed_hex: &str,
        participants: Vec<String>,
        vector_len: usize,
        case_cap: Option<u32>,
        clip_norm: f64,
        phase_ms: u64,
        now_ms: u64,
    ) -> anyhow::Result<Session> {
        let n = participants.len();
        let weighted = case_cap.is_some();
        let config =
            secagg::from_announcement(round, seed_hex, n, vector_len + usize::from(weighted))?;
        Ok(Session {
            round,
            server: Server::new(config)?,
            fixed: fixed_point(clip_norm, n)?,
            weighted,
            clip_norm,
            participants,
            collecting: SecAggPhase::ADVERTISE_KEYS,
            expected: (0..n as u32).collect(),
            received: BTreeSet::new(),
            deadline_ms: now_ms + phase_ms,
            phase_ms,
            bytes_in: 0,
        })
    }

    /// A device's message for this round; refused unless it is the phase being collected and
    /// comes from the device it names.
    pub fn receive(&mut self, device: &str, phase: &str, body: &[u8]) -> anyhow::Result<()> {
        let id = self
            .participants
            .binary_search_by(|p| p.as_str().cmp(device))
            .map_err(|_| anyhow::anyhow!("not a participant of round {}", self.round))?
            as u32;
        if phase != self.collecting {
            anyhow::bail!("{phase} while collecting {}", self.collecting);
        }
        if !self.expected.contains(&id) {
            anyhow::bail!("{phase} from a device that dropped earlier in the round");
        }
        let sender = |s: u32| {
            if s == id {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "the message names participant {s}, not {id}"
                ))
            }
        };
        match phase {
            SecAggPhase::ADVERTISE_KEYS => {
                let m: AdvertiseKeys = serde_json::from_slice(body)?;
                sender(m.sender)?;
                self.server.receive_advertise_keys(&m)?;
            }
            SecAggPhase::SHARE_KEYS => {
                let m: ShareKeys = serde_json::from_slice(body)?;
                sender(m.sender)?;
                self.server.receive_share_keys(&m)?;
            }
            SecAggPhase::MASKED_INPUT => {
                let m: MaskedInput = serde_json::from_slice(body)?;
                sender(m.sender)?;
                self.server.receive_masked_input(&m)?;
                self.bytes_in += body.len() as u64;
            }
            SecAggPhase::UNMASK_RESPONSE => {
                let m: UnmaskResponse = serde_json::from_slice(body)?;
                sender(m.sender)?;
                self.server.receive_unmask_response(&m)?;
            }
            other => anyhow::bail!("a device does not send {other}"),
        }
        self.received.insert(id);
        Ok(())
    }

    /// Close the phase when every device expected answered or its deadline passed.
    pub fn step(&mut self, now_ms: u64) -> anyhow::Result<Step> {
        let complete = self.received == self.expected;
        if !complete && now_ms < self.deadline_ms {
            return Ok(Step::Wait);
        }
        let to = |participants: &[String], id: u32| participants.get(id as usize).cloned();
        let outgoing: Vec<(u32, &'static str, Vec<u8>)> = match self.collecting {
            SecAggPhase::ADVERTISE_KEYS => match self.server.close_advertise_keys() {
                Ok(messages) => {
                    self.collecting = SecAggPhase::SHARE_KEYS;
                    messages
                        .iter()
                        .map(|m| {
                            Ok((
                                m.recipient,
                                SecAggPhase::NEIGHBOUR_KEYS,
                                serde_json::to_vec(m)?,
                            ))
                        })
                        .collect::<anyhow::Result<_>>()?
                }
                Err(e) => return Ok(Step::Failed(format!("secure aggregation, keys: {e}"))),
            },
            SecAggPhase::SHARE_KEYS => match self.server.close_share_keys() {
                Ok(messages) => {
                    self.collecting = SecAggPhase::MASKED_INPUT;
                    messages
                        .iter()
                        .map(|m| {
                            Ok((
                                m.recipient,
                                SecAggPhase::RELAYED_SHARES,
                                serde_json::to_vec(m)?,
                            ))
                        })
                        .collect::<anyhow::Result<_>>()?
                }
                Err(e) => return Ok(Step::Failed(format!("secure aggregation, shares: {e}"))),
            },
            SecAggPhase::MASKED_INPUT => match self.server.close_masked_inputs() {
                Ok(messages) => {
                    self.collecting = SecAggPhase::UNMASK_RESPONSE;
                    messages
                        .iter()
                        .map(|m| {
                            Ok((
                                m.recipient,
                                SecAggPhase::UNMASK_REQUEST,
                                serde_json::to_vec(m)?,
                            ))
                        })
                        .collect::<anyhow::Result<_>>()?
                }
                Err(e) => return Ok(Step::Failed(format!("secure aggregation, inputs: {e}"))),
            },
            _ => {
                return Ok(match self.server.finish() {
                    Ok(output) => {
                        let survivors = output.survivors.len();
                        let mut sum = self.fixed.decode_sum(&output.sum);
                        let total = if self.weighted {
                            // Each survivor's weight is at least 1 / cap; rounding moved it by
                            // far less than that.
                            let w = sum.pop().unwrap_or(0.0) as f64 / self.clip_norm;
                            if !(w.is_finite() && w > 0.0) {
                                return Ok(Step::Failed(format!(
                                    "secure aggregation: the survivors' total weight is {w}"
                                )));
                            }
                            w
                        } else {
                            survivors.max(1) as f64
                        };
                        Step::Done {
                            mean: sum.iter().map(|v| (*v as f64 / total) as f32).collect(),
                            survivors,
                        }
                    }
                    Err(e) if now_ms >= self.deadline_ms => {
                        Step::Failed(format!("secure aggregation, unmasking: {e}"))
                    }
                    Err(_) => Step::Wait,
                });
            }
        };
        self.expected = outgoing.iter().map(|(id, _, _)| *id).collect();
        self.received.clear();
        self.deadline_ms = now_ms + self.phase_ms;
        Ok(Step::Send(
            outgoing
                .into_iter()
                .filter_map(|(id, phase, body)| {
                    to(&self.participants, id).map(|d| (d, phase, body))
                })
                .collect(),
        ))
    }
}
