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
//! A session is rebuilt after a restart from what the server stored as it went: its
//! [`Params`], and in order every device message it accepted and every phase it closed
//! ([`Event`]). Replaying them through a fresh `secagg::Server` gives the same state (the
//! protocol's server side is deterministic given those), the phase being collected gets a new
//! deadline, and the messages of the last close are sent again (a device that had them
//! refuses the repeat, and one that had not goes on).

use fleet_wire::message::SecAggPhase;
use secagg::{AdvertiseKeys, FixedPoint, MaskedInput, Server, ShareKeys, UnmaskResponse};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// What a session is made of, stored with its round.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Params {
    pub round: u64,
    /// The round's seed (hex).
    pub seed: String,
    /// The device ids, sorted: a device's index is its id in the protocol.
    pub participants: Vec<String>,
    /// The delta's length; with `case_cap`, one weight coordinate follows it.
    pub vector_len: usize,
    pub case_cap: Option<u32>,
    pub clip_norm: f64,
    pub phase_ms: u64,
}

/// One step of a session's history, as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A device's message the session accepted.
    Message {
        device: String,
        phase: String,
        body: Vec<u8>,
    },
    /// The phase collecting `phase` messages closed.
    Closed { phase: String },
}

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
    params: Params,
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

/// The messages a closed phase yields, each with its recipient and the phase it travels as.
#[allow(clippy::type_complexity)]
fn addressed<M: Serialize>(
    messages: &[M],
    recipient: impl Fn(&M) -> u32,
    phase: &'static str,
) -> anyhow::Result<Vec<(u32, &'static str, Vec<u8>)>> {
    messages
        .iter()
        .map(|m| Ok((recipient(m), phase, serde_json::to_vec(m)?)))
        .collect()
}

/// The fixed-point code both sides use: values in [-clip, clip], sums of `n` that cannot wrap.
pub fn fixed_point(clip_norm: f64, n: usize) -> anyhow::Result<FixedPoint> {
    Ok(FixedPoint::new(clip_norm as f32, n as u32)?)
}

impl Session {
    pub fn new(params: Params, now_ms: u64) -> anyhow::Result<Session> {
        let n = params.participants.len();
        let weighted = params.case_cap.is_some();
        let config = secagg::from_announcement(
            params.round,
            &params.seed,
            n,
            params.vector_len + usize::from(weighted),
        )?;
        Ok(Session {
            round: params.round,
            server: Server::new(config)?,
            fixed: fixed_point(params.clip_norm, n)?,
            weighted,
            clip_norm: params.clip_norm,
            participants: params.participants.clone(),
            collecting: SecAggPhase::ADVERTISE_KEYS,
            expected: (0..n as u32).collect(),
            received: BTreeSet::new(),
            deadline_ms: now_ms + params.phase_ms,
            phase_ms: params.phase_ms,
            bytes_in: 0,
            params,
        })
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The phase whose messages are being collected.
    pub fn collecting(&self) -> &'static str {
        self.collecting
    }

    /// The session as it was after `events`, with a fresh deadline for the phase being
    /// collected, and the messages its last close sent (to send again).
    #[allow(clippy::type_complexity)]
    pub fn resume(
        params: Params,
        events: Vec<Event>,
        now_ms: u64,
    ) -> anyhow::Result<(Session, Vec<(String, &'static str, Vec<u8>)>)> {
        let mut session = Session::new(params, now_ms)?;
        let mut last = Vec::new();
        for event in events {
            match event {
                Event::Message {
                    device,
                    phase,
                    body,
                } => session.receive(&device, &phase, &body)?,
                Event::Closed { phase } => {
                    if phase != session.collecting {
                        anyhow::bail!(
                            "the stored history closes {phase} while {} is collected",
                            session.collecting
                        );
                    }
                    match session.close(now_ms)? {
                        Step::Send(messages) => last = messages,
                        _ => anyhow::bail!("the stored close of {phase} does not replay"),
                    }
                }
            }
        }
        session.deadline_ms = now_ms + session.phase_ms;
        Ok((session, last))
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
        self.close(now_ms)
    }

    /// Close the phase being collected with the messages in: the next phase's messages, or
    /// after the last phase the outcome.
    fn close(&mut self, now_ms: u64) -> anyhow::Result<Step> {
        let to = |participants: &[String], id: u32| participants.get(id as usize).cloned();
        let outgoing: Vec<(u32, &'static str, Vec<u8>)> = match self.collecting {
            SecAggPhase::ADVERTISE_KEYS => match self.server.close_advertise_keys() {
                Ok(messages) => {
                    self.collecting = SecAggPhase::SHARE_KEYS;
                    addressed(&messages, |m| m.recipient, SecAggPhase::NEIGHBOUR_KEYS)?
                }
                Err(e) => return Ok(Step::Failed(format!("secure aggregation, keys: {e}"))),
            },
            SecAggPhase::SHARE_KEYS => match self.server.close_share_keys() {
                Ok(messages) => {
                    self.collecting = SecAggPhase::MASKED_INPUT;
                    addressed(&messages, |m| m.recipient, SecAggPhase::RELAYED_SHARES)?
                }
                Err(e) => return Ok(Step::Failed(format!("secure aggregation, shares: {e}"))),
            },
            SecAggPhase::MASKED_INPUT => match self.server.close_masked_inputs() {
                Ok(messages) => {
                    self.collecting = SecAggPhase::UNMASK_RESPONSE;
                    addressed(&messages, |m| m.recipient, SecAggPhase::UNMASK_REQUEST)?
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
