//! The round loop of `federation serve`: announces rounds, takes updates (chunks, then a
//! commit), answers each with an `ack`, aggregates when the quorum is met by the deadline
//! (extends once, then closes with the reason), signs the new global head and publishes it.
//! One thread; every decision is written to SQLite before it is announced, so a restart
//! resumes where it was.

use crate::aggregate;
use crate::config::{broker_address, Config};
use crate::secure::{Session, Step};
use crate::store::{self, now_ms, Round};
use ed25519_dalek::SigningKey;
use fleet_mqtt::{Incoming, Link, LinkConfig};
use fleet_wire::message::{
    Ack, AckOutcome, Message, RoundAnnounce, RoundClosed, TensorSpec, UpdateCommit,
};
use fleet_wire::signed::{GlobalHead, SignedGlobalHead};
use fleet_wire::tensors::{self, Array};
use fleet_wire::{blob, frame, Topics};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The MQTT client id and certificate CN of the server.
pub const SERVER_ID: &str = "federation-server";

pub struct Server {
    config: Config,
    conn: Connection,
    link: Link,
    topics: Topics,
    key: SigningKey,
    /// The trainable tensors of the model, in order, from the initial head.
    tensors: Vec<TensorSpec>,
    /// Their shapes in the initial head, which every global head keeps.
    shapes: BTreeMap<String, Vec<usize>>,
    /// The secure-aggregation session of the open round, if it uses one.
    secure: Option<Session>,
    /// The enrolled devices, sorted: their index is their id in secure aggregation.
    participants: Vec<String>,
}

/// The F32 tensors of a head blob, by name.
fn head_tensors(blob: &[u8]) -> anyhow::Result<BTreeMap<String, Vec<f32>>> {
    Ok(tensors::decode_f32(blob)?)
}

impl Server {
    pub fn start(config: Config) -> anyhow::Result<Server> {
        let pem = std::fs::read_to_string(&config.signing_key_file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", config.signing_key_file.display()))?;
        let key = fleet_wire::signed::signing_key_from_pem(&pem)?;
        let conn = store::open(&config.data_dir)?;
        let initial = std::fs::read(&config.initial_head)
            .map_err(|e| anyhow::anyhow!("{}: {e}", config.initial_head.display()))?;
        let tensors: Vec<TensorSpec> = head_tensors(&initial)?
            .into_iter()
            .map(|(name, values)| TensorSpec {
                name,
                len: values.len() as u32,
            })
            .collect();
        let shapes = tensors::shapes(&initial)?;
        let topics = Topics::new(&config.federation);
        let (host, port) = broker_address(&config.broker).map_err(anyhow::Error::msg)?;
        let link = Link::start(
            &LinkConfig {
                host,
                port,
                client_id: SERVER_ID.into(),
                ca_file: config.ca_file.clone(),
                cert_file: config.cert_file.clone(),
                key_file: config.key_file.clone(),
                keep_alive: Duration::from_secs(30),
                persistent_session: true,
            },
            vec![topics.all_up()],
        )?;
        let mut participants = config.enrolled.clone();
        participants.sort();
        participants.dedup();
        let mut server = Server {
            config,
            conn,
            link,
            topics,
            key,
            tensors,
            shapes,
            secure: None,
            participants,
        };
        if store::latest_global(&server.conn)?.is_none() {
            server.store_global(1, 0, 0, &initial, "initial", 0)?;
        }
        Ok(server)
    }

    /// Serve until `stop` is raised.
    pub fn run(&mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        if let Some(round) = store::open_round(&self.conn)? {
            if round.secure {
                self.resume_secure(&round)?;
            }
        }
        self.ensure_open_round()?;
        while !stop.load(Ordering::Relaxed) {
            match self.link.events().recv_timeout(Duration::from_millis(200)) {
                Ok(Incoming::Connected) => {
                    tracing::info!("connected to the broker");
                    self.publish_state()?;
                }
                Ok(Incoming::Disconnected(reason)) => {
                    tracing::warn!(%reason, "broker connection lost; reconnecting");
                }
                Ok(Incoming::PublishRefused { reason }) => {
                    tracing::error!(%reason, "the broker refused a publish");
                }
                Ok(Incoming::Message { topic, payload, .. }) => {
                    let Some(device) = self.topics.device_of_up(&topic) else {
                        tracing::warn!(%topic, "message on a topic that is no device's: ignored");
                        continue;
                    };
                    if let Err(e) = self.handle(&device, &payload) {
                        tracing::warn!(device, error = %e, "message refused");
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("the MQTT link stopped")
                }
            }
            self.tick()?;
        }
        self.link.close();
        Ok(())
    }

    fn publish(
        &self,
        topic: &str,
        message: &Message,
        body: &[u8],
        retain: bool,
    ) -> anyhow::Result<()> {
        self.link
            .publish(topic, frame::encode(message, body), retain)?;
        Ok(())
    }

    /// The retained round (or closed-round) message and the current global head.
    fn publish_state(&self) -> anyhow::Result<()> {
        if let Some(global) = store::latest_global(&self.conn)? {
            let signed: SignedGlobalHead = serde_json::from_str(&global.header_json)?;
            self.publish(
                &self.topics.global(&self.config.model),
                &Message::GlobalHead(signed),
                b"",
                true,
            )?;
        }
        if let Some(round) = store::open_round(&self.conn)? {
            self.publish(
                &self.topics.round(),
                &Message::RoundAnnounce(self.announce(&round)),
                b"",
                true,
            )?;
        }
        Ok(())
    }

    fn announce(&self, round: &Round) -> RoundAnnounce {
        RoundAnnounce {
            round: round.round,
            federation: self.config.federation.clone(),
            model: self.config.model.clone(),
            global_version: round.global_version,
            deadline_ms: round.deadline_ms,
            quorum: round.quorum,
            enrolled: round.enrolled,
            aggregator: round.aggregator.clone(),
            secure_aggregation: round.secure,
            encoding: self.config.encoding.clone(),
            clip_norm: self.config.clip_norm,
            noise_multiplier: self.config.noise_multiplier,
            tensors: self.tensors.clone(),
            seed: round.seed.clone(),
            participants: if round.secure {
                self.participants.clone()
            } else {
                Vec::new()
            },
            topk_fraction: (self.config.encoding == "topk").then_some(self.config.topk_fraction),
            case_cap: round.secure.then_some(self.config.secure_case_cap),
        }
    }

    fn ensure_open_round(&mut self) -> anyhow::Result<()> {
        if store::open_round(&self.conn)?.is_some() {
            return Ok(());
        }
        let next = store::last_round_number(&self.conn)? + 1;
        if self.config.max_rounds > 0 && next > self.config.max_rounds {
            return Ok(());
        }
        let global =
            store::latest_global(&self.conn)?.ok_or_else(|| anyhow::anyhow!("no global head"))?;
        let mut seed = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
        store::insert_round(
            &self.conn,
            next,
            global.version,
            now_ms() + self.config.round_seconds * 1000,
            self.config.quorum,
            self.config.enrolled.len() as u32,
            &self.config.aggregator,
            &hex::encode(seed),
            self.config.secure_aggregation,
        )?;
        if self.config.secure_aggregation {
            let vector_len = self.tensors.iter().map(|t| t.len as usize).sum();
            let params = crate::secure::Params {
                round: next,
                seed: hex::encode(seed),
                participants: self.participants.clone(),
                vector_len,
                case_cap: Some(self.config.secure_case_cap),
                clip_norm: self.config.clip_norm,
                phase_ms: self.config.phase_seconds * 1000,
            };
            store::put_secagg_session(&self.conn, &params)?;
            self.secure = Some(Session::new(params, now_ms())?);
        }
        tracing::info!(
            round = next,
            global_version = global.version,
            "round opened"
        );
        self.publish_state()
    }

    fn handle(&mut self, device: &str, payload: &[u8]) -> anyhow::Result<()> {
        let (message, body) = frame::decode(payload)?;
        if !self.config.enrolled.iter().any(|d| d == device) {
            anyhow::bail!("device is not enrolled");
        }
        match message {
            Message::Hello(hello) => {
                if hello.device != device {
                    anyhow::bail!(
                        "hello names device {:?} on another device's topic",
                        hello.device
                    );
                }
                self.conn.execute(
                    "INSERT INTO devices (device, software, global_version, participate, last_seen_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (device) DO UPDATE SET
                     software = excluded.software, global_version = excluded.global_version,
                     participate = excluded.participate, last_seen_ms = excluded.last_seen_ms",
                    params![device, hello.software, hello.global_version, hello.participate, now_ms()],
                )?;
                Ok(())
            }
            Message::Chunk(header) => {
                store::open_round(&self.conn)?
                    .ok_or_else(|| anyhow::anyhow!("chunk while no round is open"))?;
                blob::check_chunk(&header, body)?;
                // What one device may keep waiting here (two whole blobs by default). Chunks
                // of a round are dropped when it ends.
                let pending: u64 = self.conn.query_row(
                    "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM chunks WHERE device = ?1",
                    [device],
                    |r| r.get(0),
                )?;
                if pending + body.len() as u64 > self.config.max_pending_bytes_per_device {
                    anyhow::bail!(
                        "{pending} bytes of chunks already wait from this device (max_pending_bytes_per_device {})",
                        self.config.max_pending_bytes_per_device
                    );
                }
                self.conn.execute(
                    "INSERT OR IGNORE INTO chunks (blob, idx, device, body) VALUES (?1, ?2, ?3, ?4)",
                    params![header.blob, header.index, device, body],
                )?;
                Ok(())
            }
            Message::UpdateCommit(commit) => {
                let (outcome, reason) = match self.take_update(device, &commit) {
                    Ok(outcome) => (outcome, None),
                    Err(e) => {
                        tracing::warn!(device, round = commit.round, reason = %e, "update refused");
                        (AckOutcome::Refused, Some(e.to_string()))
                    }
                };
                let ack = Message::Ack(Ack {
                    round: commit.round,
                    blob: commit.blob.clone(),
                    outcome,
                    reason: reason.map(|r| r.chars().take(500).collect()),
                });
                self.publish(&self.topics.down(device), &ack, b"", false)
            }
            Message::Evaluation(evaluation) => {
                self.conn.execute(
                    "INSERT OR REPLACE INTO evaluations (round, device, global_version, cases, metrics_json)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        evaluation.round,
                        device,
                        evaluation.global_version,
                        evaluation.cases,
                        serde_json::to_string(&evaluation.metrics)?
                    ],
                )?;
                Ok(())
            }
            Message::Fetch(fetch) => self.send_global(device, fetch.version),
            Message::SecAgg(header) => {
                let session = self
                    .secure
                    .as_mut()
                    .ok_or_else(|| anyhow::anyhow!("no round with secure aggregation is open"))?;
                if header.round != session.round {
                    anyhow::bail!(
                        "out of round: {} for round {}, round {} is open",
                        header.phase,
                        header.round,
                        session.round
                    );
                }
                session.receive(device, &header.phase, body)?;
                store::put_secagg_event(
                    &self.conn,
                    header.round,
                    &crate::secure::Event::Message {
                        device: device.to_string(),
                        phase: header.phase,
                        body: body.to_vec(),
                    },
                )?;
                Ok(())
            }
            other => anyhow::bail!("a device may not send {}", other.kind()),
        }
    }

    /// Check and record an update; the outcome for the device's ack.
    fn take_update(&mut self, device: &str, commit: &UpdateCommit) -> anyhow::Result<AckOutcome> {
        let round =
            store::open_round(&self.conn)?.ok_or_else(|| anyhow::anyhow!("no round is open"))?;
        if round.secure {
            anyhow::bail!(
                "round {} uses secure aggregation: updates go masked",
                round.round
            );
        }
        // A blob this device already had counted (a replay, or a redelivery after a restart)
        // counts once; two devices may send the same bytes.
        let seen: Option<u64> = self
            .conn
            .query_row(
                "SELECT round FROM updates WHERE device = ?3 AND (blob = ?1 OR round = ?2)",
                params![commit.blob, round.round, device],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(seen) = seen {
            tracing::info!(
                device,
                round = seen,
                "duplicate update (a replay or a redelivery): counted once"
            );
            return Ok(AckOutcome::Duplicate);
        }
        // An update of an earlier round, taken against an older global head, is late: it joins
        // the open round with the staleness weight. Any other round is refused.
        let late = commit.round < round.round && commit.base_version < round.global_version;
        if commit.round != round.round && !late {
            anyhow::bail!(
                "out of round: update for round {}, round {} is open",
                commit.round,
                round.round
            );
        }
        if commit.base_version > round.global_version {
            anyhow::bail!(
                "base version {} is newer than the round's global {}",
                commit.base_version,
                round.global_version
            );
        }
        if commit.encoding != self.config.encoding {
            anyhow::bail!(
                "encoding {:?}; this round takes {}",
                commit.encoding,
                self.config.encoding
            );
        }
        let bytes = self.assemble(&commit.blob, commit.count, commit.size)?;
        self.check_delta(&bytes)?;
        let staleness = round.global_version - commit.base_version;
        let weight = f64::from(commit.cases) * aggregate::staleness_weight(staleness);
        self.conn.execute(
            "INSERT INTO updates (round, device, blob, cases, base_version, weight, received_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                round.round,
                device,
                commit.blob,
                commit.cases,
                commit.base_version,
                weight,
                now_ms()
            ],
        )?;
        self.conn.execute(
            "UPDATE rounds SET bytes_in = bytes_in + ?2, participants = participants + 1 WHERE round = ?1",
            params![round.round, commit.size],
        )?;
        tracing::info!(device, round = round.round, staleness, "update accepted");
        Ok(if staleness > 0 {
            AckOutcome::Late
        } else {
            AckOutcome::Accepted
        })
    }

    fn assemble(&self, blob_hash: &str, count: u32, size: u64) -> anyhow::Result<Vec<u8>> {
        let mut stmt = self
            .conn
            .prepare("SELECT idx, body FROM chunks WHERE blob = ?1 ORDER BY idx")?;
        let chunks: Vec<(u32, Vec<u8>)> = stmt
            .query_map([blob_hash], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let missing: Vec<u32> = (0..count)
            .filter(|i| !chunks.iter().any(|(idx, _)| idx == i))
            .collect();
        if !missing.is_empty() {
            anyhow::bail!("incomplete: chunks {missing:?} of {count} missing");
        }
        let bytes: Vec<u8> = chunks.into_iter().flat_map(|(_, body)| body).collect();
        blob::check_blob(&bytes, blob_hash, size)?;
        Ok(bytes)
    }

    /// The delta of an update blob in the round's encoding: exactly the round's tensors, every
    /// value finite; int8 blocks are checked (`Quantized::validate`) and decoded.
    fn check_delta(&self, bytes: &[u8]) -> anyhow::Result<BTreeMap<String, Vec<f32>>> {
        let (mut arrays, _) = tensors::decode(bytes)?;
        if self.config.encoding == "topk" {
            return self.sparse_delta(arrays);
        }
        let per_tensor = if self.config.encoding == "int8-block256" {
            2
        } else {
            1
        };
        if arrays.len() != self.tensors.len() * per_tensor {
            anyhow::bail!(
                "{} tensors; the model has {} in encoding {}",
                arrays.len(),
                self.tensors.len(),
                self.config.encoding
            );
        }
        let mut delta = BTreeMap::new();
        for spec in &self.tensors {
            let len = spec.len as usize;
            let values = if per_tensor == 2 {
                let codes = arrays.remove(&format!("{}.q8", spec.name));
                let scales = arrays.remove(&format!("{}.scale", spec.name));
                let (Some(Array::I8(values)), Some(Array::F32(scales))) = (codes, scales) else {
                    anyhow::bail!("tensor {}: no I8 codes and F32 scales", spec.name);
                };
                let quantized = fl_delta::quantize::Quantized {
                    len,
                    block: 256,
                    scales,
                    values,
                };
                quantized.validate(len)?;
                fl_delta::quantize::decode(&quantized)?
            } else {
                match arrays.remove(&spec.name) {
                    Some(Array::F32(values)) => values,
                    _ => anyhow::bail!("tensor {} missing or not F32", spec.name),
                }
            };
            if values.len() != len {
                anyhow::bail!(
                    "tensor {}: {} values, {len} expected",
                    spec.name,
                    values.len()
                );
            }
            delta.insert(spec.name.clone(), values);
        }
        Ok(delta)
    }

    /// A top-k update: exactly `topk.indices` (U32) and `topk.values` (F32) over the round's
    /// flat delta, indices strictly increasing and in range; densified into the tensors.
    fn sparse_delta(
        &self,
        mut arrays: BTreeMap<String, Array>,
    ) -> anyhow::Result<BTreeMap<String, Vec<f32>>> {
        let total: usize = self.tensors.iter().map(|t| t.len as usize).sum();
        let (Some(Array::U32(indices)), Some(Array::F32(values))) =
            (arrays.remove("topk.indices"), arrays.remove("topk.values"))
        else {
            anyhow::bail!("a topk update has U32 topk.indices and F32 topk.values");
        };
        if !arrays.is_empty() {
            anyhow::bail!("a topk update has only topk.indices and topk.values");
        }
        let sparse = fl_delta::topk::Sparse {
            len: total,
            indices,
            values,
        };
        sparse.validate(total)?;
        let dense = sparse.densify()?;
        Ok(unflatten(&self.tensors, &dense)
            .into_iter()
            .filter_map(|(name, array)| match array {
                Array::F32(values) => Some((name, values)),
                _ => None,
            })
            .collect())
    }

    /// Close the open round when everyone answered or the deadline passed.
    fn tick(&mut self) -> anyhow::Result<()> {
        let Some(round) = store::open_round(&self.conn)? else {
            return self.ensure_open_round();
        };
        if round.secure {
            return self.tick_secure(&round);
        }
        let everyone = round.participants >= round.enrolled;
        if !everyone && now_ms() < round.deadline_ms {
            return Ok(());
        }
        if round.participants >= round.quorum {
            self.aggregate(&round)?;
        } else if !round.extended {
            let deadline = now_ms() + self.config.round_seconds * 1000;
            self.conn.execute(
                "UPDATE rounds SET extended = 1, deadline_ms = ?2 WHERE round = ?1",
                params![round.round, deadline],
            )?;
            tracing::warn!(
                round = round.round,
                participants = round.participants,
                quorum = round.quorum,
                "quorum not met by the deadline: round extended once"
            );
            self.publish_state()?;
            return Ok(());
        } else {
            let reason = format!("quorum not met: {} of {}", round.participants, round.quorum);
            self.close_round(&round, reason)?;
        }
        self.ensure_open_round()
    }

    fn send_secure(
        &self,
        round: u64,
        messages: Vec<(String, &'static str, Vec<u8>)>,
    ) -> anyhow::Result<()> {
        for (device, phase, body) in messages {
            let header = Message::SecAgg(fleet_wire::message::SecAggHeader {
                round,
                phase: phase.into(),
            });
            self.publish(&self.topics.down(&device), &header, &body, false)?;
        }
        Ok(())
    }

    /// After a restart: rebuild the open round's secure-aggregation session from its stored
    /// history and send the last phase's messages again; a round whose history cannot be
    /// replayed is closed with the reason.
    fn resume_secure(&mut self, round: &Round) -> anyhow::Result<()> {
        let resumed = match store::secagg_session(&self.conn, round.round)? {
            Some((params, events)) => {
                let count = events.len();
                Session::resume(params, events, now_ms()).map(|(s, last)| (s, last, count))
            }
            None => Err(anyhow::anyhow!("no stored session")),
        };
        match resumed {
            Ok((session, last, count)) => {
                tracing::info!(
                    round = round.round,
                    phase = session.collecting(),
                    events = count,
                    "secure aggregation resumed after a restart"
                );
                self.secure = Some(session);
                self.send_secure(round.round, last)
            }
            Err(e) => self.close_round(
                round,
                format!(
                    "the server restarted during secure aggregation and could not resume it: {e:#}"
                ),
            ),
        }
    }

    fn close_round(&mut self, round: &Round, reason: String) -> anyhow::Result<()> {
        self.secure = None;
        self.conn.execute("DELETE FROM chunks", [])?;
        store::clear_secagg(&self.conn)?;
        self.conn.execute(
            "UPDATE rounds SET state = 'closed', reason = ?2 WHERE round = ?1",
            params![round.round, reason],
        )?;
        tracing::warn!(round = round.round, %reason, "round closed");
        self.publish(
            &self.topics.round(),
            &Message::RoundClosed(RoundClosed {
                round: round.round,
                reason,
            }),
            b"",
            true,
        )
    }

    /// Drive the open round's secure aggregation one step.
    fn tick_secure(&mut self, round: &Round) -> anyhow::Result<()> {
        let Some(session) = self.secure.as_mut() else {
            return self.close_round(round, "no secure-aggregation session for the round".into());
        };
        let collecting = session.collecting();
        match session.step(now_ms())? {
            Step::Wait => Ok(()),
            Step::Send(messages) => {
                // Durable before anything goes out, so a restart replays this close.
                store::put_secagg_event(
                    &self.conn,
                    round.round,
                    &crate::secure::Event::Closed {
                        phase: collecting.to_string(),
                    },
                )?;
                self.send_secure(round.round, messages)
            }
            Step::Failed(reason) => {
                self.close_round(round, reason)?;
                self.ensure_open_round()
            }
            Step::Done { mean, survivors } => {
                let bytes_in = session.bytes_in;
                self.secure = None;
                self.conn.execute(
                    "UPDATE rounds SET participants = ?2, bytes_in = ?3 WHERE round = ?1",
                    params![round.round, survivors as u32, bytes_in],
                )?;
                if (survivors as u32) < round.quorum {
                    self.close_round(
                        round,
                        format!("quorum not met: {survivors} of {}", round.quorum),
                    )?;
                } else {
                    let mut adam = store::state(&self.conn, "fedadam")?;
                    let combined = if round.aggregator == "fedadam" {
                        aggregate::combine(
                            "fedadam",
                            &[(1.0, mean)],
                            f64::INFINITY,
                            0.0,
                            &mut adam,
                        )?
                    } else {
                        mean
                    };
                    if let Some(adam) = &adam {
                        store::set_state(&self.conn, "fedadam", adam)?;
                    }
                    self.install_global(round, &combined, survivors as u32)?;
                }
                self.ensure_open_round()
            }
        }
    }

    fn aggregate(&mut self, round: &Round) -> anyhow::Result<()> {
        let mut stmt = self
            .conn
            .prepare("SELECT blob, cases, weight FROM updates WHERE round = ?1 ORDER BY device")?;
        let rows: Vec<(String, u32, f64)> = stmt
            .query_map([round.round], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        let mut updates = Vec::new();
        for (blob_hash, _cases, weight) in &rows {
            let size: u64 = self.conn.query_row(
                "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM chunks WHERE blob = ?1",
                [blob_hash],
                |r| r.get(0),
            )?;
            let count = fleet_wire::message::chunk_count(size);
            let delta = self.check_delta(&self.assemble(blob_hash, count, size)?)?;
            updates.push((*weight, flatten(&self.tensors, &delta)));
        }
        let mut adam = store::state(&self.conn, "fedadam")?;
        let combined = aggregate::combine(
            &round.aggregator,
            &updates,
            self.config.clip_norm,
            self.config.trim_fraction,
            &mut adam,
        )?;
        if let Some(adam) = &adam {
            store::set_state(&self.conn, "fedadam", adam)?;
        }
        self.install_global(round, &combined, rows.len() as u32)
    }

    /// The new global head = the round's global + `combined`: stored, signed, announced.
    fn install_global(
        &mut self,
        round: &Round,
        combined: &[f32],
        participants: u32,
    ) -> anyhow::Result<()> {
        let global_blob = std::fs::read(store::global_path(
            &self.config.data_dir,
            round.global_version,
        ))?;
        let global = flatten(&self.tensors, &head_tensors(&global_blob)?);
        let new: Vec<f32> = global.iter().zip(combined).map(|(g, d)| g + d).collect();
        let blob = tensors::encode_shaped(
            &unflatten(&self.tensors, &new),
            &self.shapes,
            &BTreeMap::new(),
        )?;
        let version = round.global_version + 1;
        self.store_global(
            version,
            round.global_version,
            round.round,
            &blob,
            &round.aggregator,
            participants,
        )?;
        self.conn.execute(
            "UPDATE rounds SET state = 'aggregated', new_version = ?2 WHERE round = ?1",
            params![round.round, version],
        )?;
        // A round's chunks, the refused and the unfinished included, end with it (a device
        // whose commit comes later is told which chunks are missing and sends them again), and
        // so does its secure-aggregation history.
        self.conn.execute("DELETE FROM chunks", [])?;
        store::clear_secagg(&self.conn)?;
        tracing::info!(
            round = round.round,
            version,
            participants,
            "round aggregated; new global head"
        );
        self.publish_state()
    }

    fn store_global(
        &mut self,
        version: u64,
        base_version: u64,
        round: u64,
        blob: &[u8],
        aggregator: &str,
        participants: u32,
    ) -> anyhow::Result<()> {
        fleet_wire::site::write_durably(&store::global_path(&self.config.data_dir, version), blob)?;
        let signed = GlobalHead {
            federation: self.config.federation.clone(),
            model: self.config.model.clone(),
            version,
            base_version,
            round,
            blob: fleet_wire::sha256_hex(blob),
            size: blob.len() as u64,
            count: fleet_wire::message::chunk_count(blob.len() as u64),
            aggregator: aggregator.into(),
            participants,
        }
        .sign(&self.key);
        self.conn.execute(
            "INSERT INTO globals (version, round, blob, size, header_json, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                version,
                round,
                signed.head.blob,
                blob.len() as u64,
                serde_json::to_string(&signed)?,
                now_ms()
            ],
        )?;
        Ok(())
    }

    /// Send the chunks of global `version` to `device`'s down topic.
    fn send_global(&self, device: &str, version: u64) -> anyhow::Result<()> {
        let path = store::global_path(&self.config.data_dir, version);
        let bytes =
            std::fs::read(&path).map_err(|_| anyhow::anyhow!("no global version {version}"))?;
        for (header, body) in blob::split(&bytes)? {
            self.publish(
                &self.topics.down(device),
                &Message::Chunk(header),
                body,
                false,
            )?;
        }
        Ok(())
    }
}

/// The tensors in the model's order, one flat vector.
pub fn flatten(specs: &[TensorSpec], tensors: &BTreeMap<String, Vec<f32>>) -> Vec<f32> {
    specs
        .iter()
        .flat_map(|s| tensors.get(&s.name).cloned().unwrap_or_default())
        .collect()
}

/// A flat vector back into the model's named tensors.
pub fn unflatten(specs: &[TensorSpec], flat: &[f32]) -> Vec<(String, Array)> {
    let mut at = 0;
    specs
        .iter()
        .map(|s| {
            let end = (at + s.len as usize).min(flat.len());
            let values = flat[at..end].to_vec();
            at = end;
            (s.name.clone(), Array::F32(values))
        })
        .collect()
}

/// Raise `stop` on SIGTERM or SIGINT.
pub fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    Ok(stop)
}
