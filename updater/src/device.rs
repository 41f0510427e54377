//! The updater's loop: one MQTT link; on each connection a `hello` and the outbox again; a
//! round announced with a global head this site has and a local head fine-tuned from it
//! becomes an update (queued durably, then sent: chunks, then the commit) that stays queued
//! until the server's `ack`; a signed global head newer than the installed one is fetched,
//! checked and handed to the appliance (`fleet_wire::site`). Everything refused is logged
//! with the reason, and the loop goes on. With `[update]` enabled it also follows its fleet
//! group's firmware releases and reports its firmware status (`releases`).

use crate::config::UpdaterConfig;
use crate::releases::Releases;
use crate::secure::SecureRound;
use crate::state::{self, now_ms};
use crate::update;
use fl_delta::dp::Accountant;
use fleet_mqtt::{Incoming, Link, LinkConfig};
use fleet_wire::message::{AckOutcome, Fetch, Hello, Message, RoundAnnounce, UpdateCommit};
use fleet_wire::release::DeviceStatus;
use fleet_wire::signed::{SignedGlobalHead, VerifyingKey};
use fleet_wire::site::{self, broker_address, Outgoing};
use fleet_wire::{blob, frame, Topics};
use rusqlite::{params, Connection, OptionalExtension};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often unacknowledged updates are sent again.
const RESEND_AFTER: Duration = Duration::from_secs(20);

pub struct Device {
    config: UpdaterConfig,
    conn: Connection,
    link: Link,
    topics: Topics,
    trusted: VerifyingKey,
    round: Option<RoundAnnounce>,
    last_resend: std::time::Instant,
    /// This round's secure aggregation, while it runs.
    secure: Option<SecureRound>,
    /// When the open round was announced to this device (`max_round_seconds` counts from it).
    round_seen: std::time::Instant,
    /// Firmware releases for this device's group, when `[update]` is enabled.
    releases: Option<Releases>,
}

impl Device {
    /// Start the link; with `releases`, firmware releases are followed too.
    /// `trusted` is the key global heads must be signed with (`[federation] trusted_key`, or
    /// the update repository's delegation).
    pub fn start(
        config: UpdaterConfig,
        trusted: VerifyingKey,
        releases: Option<Releases>,
    ) -> anyhow::Result<Device> {
        let conn = state::open(&config.data_dir)?;
        let topics = Topics::new(&config.federation.federation);
        let (host, port) = broker_address(&config.federation.broker).map_err(anyhow::Error::msg)?;
        let link = Link::start(
            &LinkConfig {
                host,
                port,
                client_id: config.device_id.clone(),
                ca_file: config.federation.ca_file.clone(),
                cert_file: config.federation.cert_file.clone(),
                key_file: config.federation.key_file.clone(),
                keep_alive: Duration::from_secs(30),
                persistent_session: true,
            },
            vec![
                topics.round(),
                topics.global(&config.federation.model),
                topics.down(&config.device_id),
            ]
            .into_iter()
            .chain(releases.as_ref().map(|r| topics.release(r.group())))
            .collect(),
        )?;
        Ok(Device {
            config,
            conn,
            link,
            topics,
            trusted,
            round: None,
            last_resend: std::time::Instant::now(),
            secure: None,
            round_seen: std::time::Instant::now(),
            releases,
        })
    }

    pub fn run(&mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        state::set(&self.conn, "connected", "false")?;
        if let Some(releases) = self.releases.as_mut() {
            if let Err(reason) = releases.resume_interrupted() {
                tracing::error!(%reason, "cannot finish the interrupted firmware trial");
            }
        }
        while !stop.load(Ordering::Relaxed) {
            match self.link.events().recv_timeout(Duration::from_millis(200)) {
                Ok(Incoming::Connected) => {
                    tracing::info!("connected to the fleet broker");
                    state::set(&self.conn, "connected", "true")?;
                    state::set(&self.conn, "last_event", "connected")?;
                    self.hello()?;
                    self.send_outbox()?;
                    self.fetch_pending()?;
                    self.publish_firmware_status()?;
                }
                Ok(Incoming::Disconnected(reason)) => {
                    tracing::warn!(%reason, "fleet broker connection lost; reconnecting");
                    state::set(&self.conn, "connected", "false")?;
                    state::set(&self.conn, "last_event", &format!("disconnected: {reason}"))?;
                }
                Ok(Incoming::PublishRefused { reason }) => {
                    tracing::error!(%reason, "the broker refused a publish");
                }
                Ok(Incoming::Message { topic, payload, .. }) => {
                    if let Err(e) = self.handle(&topic, &payload) {
                        tracing::warn!(%topic, reason = %e, "message refused");
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("the MQTT link stopped")
                }
            }
            if let Err(e) = self.work() {
                tracing::warn!(reason = %e, "round work failed; trying again later");
            }
            if let Some(releases) = self.releases.as_mut() {
                for status in releases.poll(&self.conn)? {
                    self.publish_status(&status)?;
                }
            }
        }
        if let Some(releases) = self.releases.as_mut() {
            releases.stop();
        }
        self.link.close();
        state::set(&self.conn, "connected", "false")?;
        Ok(())
    }

    fn publish(&self, topic: &str, message: &Message, body: &[u8]) -> anyhow::Result<()> {
        self.link
            .publish(topic, frame::encode(message, body), false)?;
        Ok(())
    }

    /// This device's firmware status, retained on its `status` topic.
    fn publish_firmware_status(&self) -> anyhow::Result<()> {
        match &self.releases {
            Some(releases) => self.publish_status(&releases.status(&self.conn)?),
            None => Ok(()),
        }
    }

    fn publish_status(&self, status: &DeviceStatus) -> anyhow::Result<()> {
        let message = Message::DeviceStatus(status.clone());
        self.link.publish(
            &self.topics.status(&self.config.device_id),
            frame::encode(&message, b""),
            true,
        )?;
        Ok(())
    }

    fn hello(&self) -> anyhow::Result<()> {
        self.publish(
            &self.topics.up(&self.config.device_id),
            &Message::Hello(Hello {
                device: self.config.device_id.clone(),
                software: env!("CARGO_PKG_VERSION").into(),
                model: self.config.federation.model.clone(),
                global_version: state::installed_version(&self.conn)?,
                participate: self.config.federation.participate,
            }),
            b"",
        )
    }

    fn handle(&mut self, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
        let (message, body) = frame::decode(payload)?;
        if let Some(releases) = self.releases.as_mut() {
            if topic == self.topics.release(releases.group()) {
                let Message::Release(release) = message else {
                    anyhow::bail!("not a release on the release topic");
                };
                let version = release.version.clone();
                match releases.announced(&self.conn, release) {
                    Ok(()) => return self.publish_firmware_status(),
                    Err(why) => {
                        tracing::info!(release = %version, %why, "release not taken");
                        return Ok(());
                    }
                }
            }
        }
        let from_server = topic == self.topics.round()
            || topic == self.topics.global(&self.config.federation.model)
            || topic == self.topics.down(&self.config.device_id);
        if !from_server {
            anyhow::bail!("not a topic this device listens to");
        }
        match message {
            Message::RoundAnnounce(round) => {
                if round.federation != self.config.federation.federation
                    || round.model != self.config.federation.model
                {
                    anyhow::bail!("round {} is for another federation or model", round.round);
                }
                tracing::info!(
                    round = round.round,
                    global_version = round.global_version,
                    "round announced"
                );
                state::set(&self.conn, "last_round", &round.round.to_string())?;
                if self.round.as_ref().map(|r| r.round) != Some(round.round) {
                    self.round_seen = std::time::Instant::now();
                }
                self.round = Some(round);
                Ok(())
            }
            Message::RoundClosed(closed) => {
                tracing::warn!(round = closed.round, reason = %closed.reason, "round closed without a new global head");
                Ok(())
            }
            Message::GlobalHead(signed) => self.offer_global(signed),
            Message::Chunk(header) => self.take_global_chunk(&header, body),
            Message::Ack(ack) => {
                let waiting: Option<(String, String)> = self
                    .conn
                    .query_row(
                        "SELECT blob, state FROM outbox WHERE round = ?1",
                        [ack.round],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                match waiting {
                    Some((blob, state)) if blob == ack.blob => {
                        if state != "queued" {
                            // A second answer to an update sent again (QoS 1 redelivery).
                            tracing::debug!(
                                round = ack.round,
                                "ack of an update already acknowledged"
                            );
                            return Ok(());
                        }
                    }
                    _ => anyhow::bail!("ack for an update not in the outbox (round {})", ack.round),
                }
                match ack.outcome {
                    AckOutcome::Accepted | AckOutcome::Duplicate | AckOutcome::Late => {
                        tracing::info!(round = ack.round, outcome = ?ack.outcome, "update acknowledged");
                    }
                    AckOutcome::Refused => {
                        let reason = ack.reason.unwrap_or_default();
                        if reason.starts_with("incomplete") {
                            tracing::warn!(round = ack.round, %reason, "server misses chunks; sending again");
                            return self.send_update(ack.round);
                        }
                        tracing::error!(round = ack.round, %reason, "update refused by the server");
                    }
                }
                self.conn.execute(
                    "UPDATE outbox SET state = ?2 WHERE round = ?1",
                    params![ack.round, format!("{:?}", ack.outcome).to_lowercase()],
                )?;
                Ok(())
            }
            Message::SecAgg(header) => {
                if topic != self.topics.down(&self.config.device_id) {
                    anyhow::bail!("secure aggregation outside this device's topic");
                }
                let secure = self
                    .secure
                    .as_mut()
                    .filter(|s| s.round == header.round)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{} for round {}, which this device is not in",
                            header.phase,
                            header.round
                        )
                    })?;
                let (phase, answer) = secure.on_message(&header.phase, body)?;
                tracing::info!(round = header.round, phase, "secure aggregation");
                self.publish(
                    &self.topics.up(&self.config.device_id),
                    &Message::SecAgg(fleet_wire::message::SecAggHeader {
                        round: header.round,
                        phase: phase.into(),
                    }),
                    &answer,
                )
            }
            other => anyhow::bail!("the server does not send {}", other.kind()),
        }
    }

    /// A global head header: verify it, and fetch its blob when it is newer than ours.
    fn offer_global(&mut self, signed: SignedGlobalHead) -> anyhow::Result<()> {
        let installed = state::installed_version(&self.conn)?;
        if signed.head.version == installed {
            return Ok(());
        }
        if let Some(pending) = state::get(&self.conn, "pending_global")? {
            let pending: SignedGlobalHead = serde_json::from_str(&pending)?;
            if pending == signed {
                // Already being fetched (the header arrives retained and again on connect).
                return Ok(());
            }
        }
        let head = signed
            .verify(
                &self.trusted,
                &self.config.federation.federation,
                &self.config.federation.model,
                installed,
            )
            .map_err(|e| anyhow::anyhow!("global head refused: {e}"))?;
        tracing::info!(
            version = head.version,
            "new signed global head; fetching it"
        );
        state::set(
            &self.conn,
            "pending_global",
            &serde_json::to_string(&signed)?,
        )?;
        self.publish(
            &self.topics.up(&self.config.device_id),
            &Message::Fetch(Fetch {
                model: self.config.federation.model.clone(),
                version: signed.head.version,
            }),
            b"",
        )
    }

    /// Ask again for the global head being fetched (a fetch may have been lost with a
    /// connection).
    fn fetch_pending(&self) -> anyhow::Result<()> {
        let Some(pending) = state::get(&self.conn, "pending_global")? else {
            return Ok(());
        };
        let pending: SignedGlobalHead = serde_json::from_str(&pending)?;
        self.publish(
            &self.topics.up(&self.config.device_id),
            &Message::Fetch(Fetch {
                model: self.config.federation.model.clone(),
                version: pending.head.version,
            }),
            b"",
        )
    }

    fn take_global_chunk(
        &mut self,
        header: &fleet_wire::message::ChunkHeader,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let pending: SignedGlobalHead = match state::get(&self.conn, "pending_global")? {
            Some(text) => serde_json::from_str(&text)?,
            None if state::get(&self.conn, "installed_blob")?.as_deref()
                == Some(header.blob.as_str()) =>
            {
                // The installed head's chunks again (a fetch answered twice).
                return Ok(());
            }
            None => anyhow::bail!("a chunk while no global head is being fetched"),
        };
        if header.blob != pending.head.blob || header.size != pending.head.size {
            anyhow::bail!("a chunk of another blob than the global head being fetched");
        }
        blob::check_chunk(header, body)?;
        self.conn.execute(
            "INSERT OR IGNORE INTO global_chunks (blob, idx, body) VALUES (?1, ?2, ?3)",
            params![header.blob, header.index, body],
        )?;
        let have: u32 = self.conn.query_row(
            "SELECT COUNT(*) FROM global_chunks WHERE blob = ?1",
            [&header.blob],
            |r| r.get(0),
        )?;
        if have < header.count {
            return Ok(());
        }
        let mut stmt = self
            .conn
            .prepare("SELECT body FROM global_chunks WHERE blob = ?1 ORDER BY idx")?;
        let bytes: Vec<u8> = stmt
            .query_map([&header.blob], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<Result<Vec<_>, _>>()?
            .concat();
        drop(stmt);
        blob::check_blob(&bytes, &pending.head.blob, pending.head.size)?;
        update::head(&bytes)?;
        let version = pending.head.version;
        let dir = site::global_dir(&self.config.data_dir);
        site::write_durably(&dir.join(format!("{version}.safetensors")), &bytes)?;
        site::write_durably(
            &dir.join(format!("{version}.json")),
            serde_json::to_string_pretty(&pending)?.as_bytes(),
        )?;
        state::set(&self.conn, "installed_version", &version.to_string())?;
        state::set(&self.conn, "installed_blob", &pending.head.blob)?;
        self.conn.execute("DELETE FROM global_chunks", [])?;
        self.conn
            .execute("DELETE FROM kv WHERE key = 'pending_global'", [])?;
        tracing::info!(
            version,
            round = pending.head.round,
            participants = pending.head.participants,
            "global head verified and handed to the appliance"
        );
        self.hello()
    }

    /// Send the appliance's scores of global heads (federated evaluation) not sent yet.
    fn send_evaluations(&self) -> anyhow::Result<()> {
        let dir = self.config.data_dir.join("federation").join("evaluations");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(version) = name
                .strip_suffix(".json")
                .and_then(|v| v.parse::<u64>().ok())
            else {
                continue;
            };
            let key = format!("evaluation_sent_{version}");
            if state::get(&self.conn, &key)?.is_some() {
                continue;
            }
            #[derive(serde::Deserialize)]
            struct Scores {
                global_version: u64,
                cases: u32,
                metrics: std::collections::BTreeMap<String, f64>,
            }
            let scores: Scores = serde_json::from_str(&std::fs::read_to_string(entry.path())?)?;
            let round = state::get(&self.conn, "last_round")?
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let message = Message::Evaluation(fleet_wire::message::Evaluation {
                round,
                global_version: scores.global_version,
                cases: scores.cases,
                metrics: scores.metrics,
            });
            message.validate()?;
            self.publish(&self.topics.up(&self.config.device_id), &message, b"")?;
            state::set(&self.conn, &key, "sent")?;
            tracing::info!(version, "evaluation of the global head sent");
        }
        Ok(())
    }

    /// Build this round's update when everything it needs is there; resend what waits.
    fn work(&mut self) -> anyhow::Result<()> {
        if self.last_resend.elapsed() >= RESEND_AFTER {
            self.last_resend = std::time::Instant::now();
            self.send_outbox()?;
            // A fetch nobody answered (sent in the moment before the server subscribed, or
            // lost) is asked again; chunks that then come twice are ignored.
            self.fetch_pending()?;
        }
        if state::get(&self.conn, "connected")?.as_deref() == Some("true") {
            self.send_evaluations()?;
        }
        let Some(round) = self.round.clone() else {
            return Ok(());
        };
        let too_late = now_ms() > round.deadline_ms
            || self.round_seen.elapsed().as_secs() > self.config.federation.max_round_seconds;
        if !self.config.federation.participate || too_late {
            return Ok(());
        }
        let queued: bool = self
            .conn
            .query_row(
                "SELECT 1 FROM outbox WHERE round = ?1",
                [round.round],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        let started = state::get(&self.conn, "secure_round")?.as_deref()
            == Some(round.round.to_string().as_str());
        if queued || started {
            return Ok(());
        }
        let outgoing_dir = site::outgoing_dir(&self.config.data_dir);
        let base = round.global_version;
        let Ok(meta) = std::fs::read_to_string(outgoing_dir.join(format!("{base}.json"))) else {
            return Ok(());
        };
        let global_path =
            site::global_dir(&self.config.data_dir).join(format!("{base}.safetensors"));
        let Ok(global) = std::fs::read(&global_path) else {
            return Ok(());
        };
        let meta: Outgoing = serde_json::from_str(&meta)?;
        if meta.model != round.model || meta.base_version != base {
            anyhow::bail!(
                "outgoing head {base} is for model {} base {}",
                meta.model,
                meta.base_version
            );
        }
        let local = std::fs::read(outgoing_dir.join(format!("{base}.safetensors")))?;
        let mut accountant: Accountant = state::get(&self.conn, "accountant")?
            .map(|t| serde_json::from_str(&t))
            .transpose()?
            .unwrap_or_default();
        if round.secure_aggregation {
            let (delta, norm) = update::private_delta(
                &round,
                &update::head(&local)?,
                &update::head(&global)?,
                &mut accountant,
            )?;
            let (secure, body) =
                SecureRound::start(&round, &self.config.device_id, &delta, meta.cases)?;
            let epsilon = accountant.epsilon(update::DP_DELTA)?;
            let round_epsilon = update::round_epsilon(&round)?;
            state::set(&self.conn, "secure_round", &round.round.to_string())?;
            state::set(
                &self.conn,
                "accountant",
                &serde_json::to_string(&accountant)?,
            )?;
            state::set(&self.conn, "epsilon", &epsilon.to_string())?;
            self.secure = Some(secure);
            tracing::info!(
                round = round.round,
                norm,
                clip_norm = round.clip_norm,
                round_epsilon,
                epsilon,
                "update goes masked (secure aggregation)"
            );
            return self.publish(
                &self.topics.up(&self.config.device_id),
                &Message::SecAgg(fleet_wire::message::SecAggHeader {
                    round: round.round,
                    phase: fleet_wire::message::SecAggPhase::ADVERTISE_KEYS.into(),
                }),
                &body,
            );
        }
        let mut feedback: fl_delta::topk::ErrorFeedback = state::get(&self.conn, "topk_residual")?
            .map(|t| serde_json::from_str(&t))
            .transpose()?
            .unwrap_or_default();
        let built = update::build_with(
            &round,
            &update::head(&local)?,
            &update::head(&global)?,
            meta.cases,
            &mut accountant,
            &mut feedback,
        )?;
        let epsilon = accountant.epsilon(update::DP_DELTA)?;
        let round_epsilon = update::round_epsilon(&round)?;
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO outbox (round, blob, bytes, commit_json, state, created_ms) VALUES (?1, ?2, ?3, ?4, 'queued', ?5)",
            params![round.round, built.commit.blob, built.blob, serde_json::to_string(&built.commit)?, now_ms()],
        )?;
        state::set(&tx, "accountant", &serde_json::to_string(&accountant)?)?;
        state::set(&tx, "epsilon", &epsilon.to_string())?;
        state::set(&tx, "topk_residual", &serde_json::to_string(&feedback)?)?;
        tx.commit()?;
        tracing::info!(
            round = round.round,
            bytes = built.blob.len(),
            norm = built.norm,
            clip_norm = round.clip_norm,
            round_epsilon,
            epsilon,
            "update queued"
        );
        self.send_update(round.round)
    }

    fn send_outbox(&self) -> anyhow::Result<()> {
        let rounds: Vec<u64> = {
            let mut stmt = self
                .conn
                .prepare("SELECT round FROM outbox WHERE state = 'queued' ORDER BY round")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for round in rounds {
            self.send_update(round)?;
        }
        Ok(())
    }

    fn send_update(&self, round: u64) -> anyhow::Result<()> {
        let (bytes, commit): (Vec<u8>, String) = self.conn.query_row(
            "SELECT bytes, commit_json FROM outbox WHERE round = ?1",
            [round],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let commit: UpdateCommit = serde_json::from_str(&commit)?;
        let up = self.topics.up(&self.config.device_id);
        for (header, body) in blob::split(&bytes)? {
            self.publish(&up, &Message::Chunk(header), body)?;
        }
        self.publish(&up, &Message::UpdateCommit(commit), b"")?;
        self.conn.execute(
            "UPDATE outbox SET sent_ms = ?2 WHERE round = ?1",
            params![round, now_ms()],
        )?;
        Ok(())
    }
}
