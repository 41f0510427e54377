//! Every message header of the protocol, and the bounds each field keeps: ids are short and
//! plain, hashes are SHA-256 hex, counts and sizes fit the blob limits, floats are finite.
//! [`Message::validate`] runs on everything received, so the code behind it can trust them.

use crate::signed::SignedGlobalHead;
use crate::{CHUNK_BYTES, MAX_BLOB_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::bounds::{bad, check_blob_shape, check_field_id, check_finite, check_text};
pub use crate::bounds::{check_id, check_sha256, chunk_count, MessageError};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Hello(Hello),
    Chunk(ChunkHeader),
    UpdateCommit(UpdateCommit),
    Evaluation(Evaluation),
    Fetch(Fetch),
    Ack(Ack),
    RoundAnnounce(RoundAnnounce),
    RoundClosed(RoundClosed),
    GlobalHead(SignedGlobalHead),
    /// A secure-aggregation message; its body is the phase's message (JSON of the `secagg`
    /// crate's type for `phase`).
    SecAgg(SecAggHeader),
    /// A firmware release announced to a fleet group (`fleet rollout start`; retained).
    Release(crate::release::Release),
    /// A device's firmware status (retained on its `status` topic).
    DeviceStatus(crate::release::DeviceStatus),
}

impl Message {
    /// The `type` of the header, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Chunk(_) => "chunk",
            Message::UpdateCommit(_) => "update_commit",
            Message::Evaluation(_) => "evaluation",
            Message::Fetch(_) => "fetch",
            Message::Ack(_) => "ack",
            Message::RoundAnnounce(_) => "round_announce",
            Message::RoundClosed(_) => "round_closed",
            Message::GlobalHead(_) => "global_head",
            Message::SecAgg(_) => "sec_agg",
            Message::Release(_) => "release",
            Message::DeviceStatus(_) => "device_status",
        }
    }

    /// Check every field against its bounds.
    pub fn validate(&self) -> Result<(), MessageError> {
        match self {
            Message::Hello(m) => {
                check_field_id("device", &m.device)?;
                check_field_id("model", &m.model)?;
                check_text("software", &m.software, 64)
            }
            Message::Chunk(m) => m.validate(),
            Message::UpdateCommit(m) => {
                check_sha256("blob", &m.blob)?;
                check_blob_shape(m.size, m.count)?;
                if m.cases == 0 || m.cases > 1_000_000 {
                    return Err(bad("cases", format!("{} (1 to 1000000)", m.cases)));
                }
                check_text("encoding", &m.encoding, 32)?;
                for (field, value) in [
                    ("clip_norm", m.clip_norm),
                    ("noise_multiplier", m.noise_multiplier),
                ] {
                    if let Some(v) = value {
                        check_finite(field, v)?;
                        if v < 0.0 {
                            return Err(bad(field, "negative"));
                        }
                    }
                }
                Ok(())
            }
            Message::Evaluation(m) => {
                if m.metrics.len() > 64 {
                    return Err(bad("metrics", "more than 64 entries"));
                }
                for (name, value) in &m.metrics {
                    check_field_id("metrics", name)?;
                    check_finite("metrics", *value)?;
                }
                Ok(())
            }
            Message::Fetch(m) => check_field_id("model", &m.model),
            Message::Ack(m) => {
                check_sha256("blob", &m.blob)?;
                if let Some(reason) = &m.reason {
                    check_text("reason", reason, 512)?;
                }
                Ok(())
            }
            Message::RoundAnnounce(m) => {
                check_field_id("federation", &m.federation)?;
                check_field_id("model", &m.model)?;
                check_text("aggregator", &m.aggregator, 32)?;
                check_text("encoding", &m.encoding, 32)?;
                if m.quorum == 0 || m.quorum > m.enrolled {
                    return Err(bad(
                        "quorum",
                        format!("{} of {} enrolled", m.quorum, m.enrolled),
                    ));
                }
                check_finite("clip_norm", m.clip_norm)?;
                check_finite("noise_multiplier", m.noise_multiplier)?;
                if m.clip_norm <= 0.0 || m.noise_multiplier < 0.0 {
                    return Err(bad("clip_norm", "clip_norm > 0 and noise_multiplier >= 0"));
                }
                if m.tensors.is_empty() || m.tensors.len() > 256 {
                    return Err(bad("tensors", "1 to 256 trainable tensors"));
                }
                for t in &m.tensors {
                    check_field_id("tensors", &t.name)?;
                    if t.len == 0 || t.len as u64 * 4 > MAX_BLOB_BYTES {
                        return Err(bad("tensors", format!("{}: length {}", t.name, t.len)));
                    }
                }
                if m.participants.len() > 10_000 {
                    return Err(bad("participants", "more than 10000"));
                }
                if m.secure_aggregation && m.participants.len() < 3 {
                    return Err(bad("participants", "secure aggregation needs 3 or more"));
                }
                for p in &m.participants {
                    check_field_id("participants", p)?;
                }
                if m.participants.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(bad("participants", "not strictly increasing"));
                }
                if let Some(f) = m.topk_fraction {
                    if !(f.is_finite() && f > 0.0 && f <= 1.0) {
                        return Err(bad("topk_fraction", "above 0 and at most 1"));
                    }
                }
                if let Some(cap) = m.case_cap {
                    if !(1..=1_000_000).contains(&cap) {
                        return Err(bad("case_cap", "1 to 1000000"));
                    }
                }
                if m.encoding == "topk" && m.topk_fraction.is_none() {
                    return Err(bad("topk_fraction", "encoding topk needs it"));
                }
                check_sha256("seed", &m.seed)
            }
            Message::RoundClosed(m) => check_text("reason", &m.reason, 512),
            Message::GlobalHead(m) => m.head.validate(),
            Message::Release(m) => m.validate(),
            Message::DeviceStatus(m) => m.validate(),
            Message::SecAgg(m) => {
                if SecAggPhase::ALL.contains(&m.phase.as_str()) {
                    Ok(())
                } else {
                    Err(bad("phase", "unknown"))
                }
            }
        }
    }
}

/// A device says who it is and what it runs, on every connect.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub device: String,
    pub software: String,
    pub model: String,
    pub global_version: u64,
    pub participate: bool,
}

/// One piece of a blob; the body is the chunk's bytes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChunkHeader {
    /// SHA-256 of the whole blob.
    pub blob: String,
    pub index: u32,
    pub count: u32,
    /// Size of the whole blob.
    pub size: u64,
    /// SHA-256 of this chunk's body.
    pub sha256: String,
}

impl ChunkHeader {
    pub fn validate(&self) -> Result<(), MessageError> {
        check_sha256("blob", &self.blob)?;
        check_sha256("sha256", &self.sha256)?;
        check_blob_shape(self.size, self.count)?;
        if self.index >= self.count {
            return Err(bad(
                "index",
                format!("{} of {} chunks", self.index, self.count),
            ));
        }
        Ok(())
    }

    /// Bytes this chunk's body must have.
    pub fn body_len(&self) -> usize {
        let start = self.index as u64 * CHUNK_BYTES as u64;
        (self.size - start).min(CHUNK_BYTES as u64) as usize
    }
}

/// The device's update for a round is complete: its blob's chunks were all sent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpdateCommit {
    pub round: u64,
    pub blob: String,
    pub size: u64,
    pub count: u32,
    /// Labelled cases the update was trained on (FedAvg's weight).
    pub cases: u32,
    /// The global version the delta is taken against.
    pub base_version: u64,
    pub encoding: String,
    pub clip_norm: Option<f64>,
    pub noise_multiplier: Option<f64>,
}

/// A global head scored on a device's held-out cases: counts and scores, nothing else.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    pub round: u64,
    pub global_version: u64,
    pub cases: u32,
    pub metrics: BTreeMap<String, f64>,
}

/// A device asks for the chunks of the current global head of `model`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fetch {
    pub model: String,
    pub version: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AckOutcome {
    Accepted,
    Duplicate,
    Late,
    Refused,
}

/// The server's answer to an `update_commit`; the device drops the update from its outbox.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    pub round: u64,
    pub blob: String,
    pub outcome: AckOutcome,
    pub reason: Option<String>,
}

/// One trainable tensor of the round's model: its name and element count.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub len: u32,
}

/// The open round (retained).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoundAnnounce {
    pub round: u64,
    pub federation: String,
    pub model: String,
    pub global_version: u64,
    pub deadline_ms: u64,
    pub quorum: u32,
    pub enrolled: u32,
    pub aggregator: String,
    pub secure_aggregation: bool,
    pub encoding: String,
    pub clip_norm: f64,
    pub noise_multiplier: f64,
    /// The trainable tensors an update must carry.
    pub tensors: Vec<TensorSpec>,
    /// Random per round (hex SHA-256 size): the secure-aggregation graph and masks use it.
    pub seed: String,
    /// Under secure aggregation: the device ids of the round, sorted; a device's index in
    /// this list is its id in the masking protocol.
    #[serde(default)]
    pub participants: Vec<String>,
    /// With encoding `topk`: the share of the delta's coordinates a device sends (the rest
    /// waits in its error-feedback residual).
    #[serde(default)]
    pub topk_fraction: Option<f64>,
    /// Under secure aggregation: devices weight their delta by `min(cases, case_cap) /
    /// case_cap` and append that weight (times `clip_norm`) as one more masked coordinate, so
    /// the unmasked sum gives the case-weighted mean and no device's count. `None`: unweighted.
    #[serde(default)]
    pub case_cap: Option<u32>,
}

/// The phases of secure aggregation, named by the message that travels (device → server:
/// `advertise_keys`, `share_keys`, `masked_input`, `unmask_response`; server → device:
/// `neighbour_keys`, `relayed_shares`, `unmask_request`).
pub struct SecAggPhase;

impl SecAggPhase {
    pub const ADVERTISE_KEYS: &'static str = "advertise_keys";
    pub const NEIGHBOUR_KEYS: &'static str = "neighbour_keys";
    pub const SHARE_KEYS: &'static str = "share_keys";
    pub const RELAYED_SHARES: &'static str = "relayed_shares";
    pub const MASKED_INPUT: &'static str = "masked_input";
    pub const UNMASK_REQUEST: &'static str = "unmask_request";
    pub const UNMASK_RESPONSE: &'static str = "unmask_response";
    pub const ALL: [&'static str; 7] = [
        Self::ADVERTISE_KEYS,
        Self::NEIGHBOUR_KEYS,
        Self::SHARE_KEYS,
        Self::RELAYED_SHARES,
        Self::MASKED_INPUT,
        Self::UNMASK_REQUEST,
        Self::UNMASK_RESPONSE,
    ];
}

/// The header of a secure-aggregation message.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecAggHeader {
    pub round: u64,
    pub phase: String,
}

/// The last round ended without a new round open, with the reason (retained).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoundClosed {
    pub round: u64,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_topic_levels() {
        assert!(check_id("site-a.01_x").is_ok());
        for bad in ["", "a/b", "+", "#", "a b", &"x".repeat(65), "é"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_commit_with_an_inconsistent_size_or_nan_is_refused() {
        let commit = UpdateCommit {
            round: 1,
            blob: "0".repeat(64),
            size: 400_000,
            count: 3,
            cases: 10,
            base_version: 1,
            encoding: "f32".into(),
            clip_norm: Some(1.0),
            noise_multiplier: None,
        };
        assert!(Message::UpdateCommit(commit.clone()).validate().is_ok());
        let mut wrong_count = commit.clone();
        wrong_count.count = 2;
        assert!(Message::UpdateCommit(wrong_count).validate().is_err());
        let mut nan = commit.clone();
        nan.clip_norm = Some(f64::NAN);
        assert!(Message::UpdateCommit(nan).validate().is_err());
        let mut huge = commit;
        huge.size = MAX_BLOB_BYTES + 1;
        huge.count = chunk_count(huge.size);
        assert!(Message::UpdateCommit(huge).validate().is_err());
    }
}
