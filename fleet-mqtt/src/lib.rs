//! The MQTT link of the fleet: one MQTT 5 client over mutual TLS (rumqttc, rustls with the
//! ring provider), behind a blocking interface: `publish` and a channel of [`Incoming`]
//! events. Only `updater` and `federation` use it; the async runtime rumqttc runs on stays
//! inside rumqttc's own connection thread.
//!
//! Choices (see `updater/PROTOCOL.md`): QoS 1 for everything, a persistent session for
//! devices and the server (`clean_start = false`, 7 days' expiry) so messages wait at the
//! broker for a client that is away (the operator's one-shot command starts clean), packets up to [`fleet_wire::MAX_FRAME_BYTES`] in both directions (rumqttc's default cap
//! is 10 KiB), and a reconnect loop with a bounded back-off. Subscriptions are made again on
//! every connection.

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Largest MQTT packet either side sends or takes: a frame plus the topic and MQTT framing.
pub const MAX_PACKET_BYTES: u32 = fleet_wire::MAX_FRAME_BYTES as u32 + 4096;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("the MQTT client is closed: {0}")]
    Closed(String),
}

/// Where the broker is and who we are.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub host: String,
    pub port: u16,
    /// The MQTT client id (the device id, or the server's name).
    pub client_id: String,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub keep_alive: Duration,
    /// Keep the session at the broker between connections (devices and the server: messages
    /// wait for them); `false` for a one-shot client such as the operator's command.
    pub persistent_session: bool,
}

/// What the link reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// Connected (again); subscriptions are in place once the broker answers them.
    Connected,
    /// The connection failed or dropped; the link tries again by itself.
    Disconnected(String),
    Message {
        topic: String,
        payload: Vec<u8>,
        retained: bool,
    },
    /// The broker refused a publish (MQTT 5 PUBACK reason, e.g. not authorised by the ACL).
    PublishRefused { reason: String },
}

/// A running MQTT client.
pub struct Link {
    client: Client,
    events: mpsc::Receiver<Incoming>,
}

fn read_pem(path: &Path) -> Result<Vec<u8>, LinkError> {
    std::fs::read(path).map_err(|e| LinkError::Pem {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// The rustls client configuration: the fleet CA as the only root, our certificate and key
/// for client authentication, TLS 1.2 and 1.3 with the ring provider's safe defaults.
pub fn tls_config(config: &LinkConfig) -> Result<rustls::ClientConfig, LinkError> {
    let pem_error = |path: &Path, reason: String| LinkError::Pem {
        path: path.into(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut read_pem(&config.ca_file)?.as_slice()) {
        let cert = cert.map_err(|e| pem_error(&config.ca_file, e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| pem_error(&config.ca_file, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(pem_error(&config.ca_file, "no certificate".into()));
    }
    let chain = rustls_pemfile::certs(&mut read_pem(&config.cert_file)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&config.cert_file, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(&config.cert_file, "no certificate".into()));
    }
    let key = rustls_pemfile::private_key(&mut read_pem(&config.key_file)?.as_slice())
        .map_err(|e| pem_error(&config.key_file, e.to_string()))?
        .ok_or_else(|| pem_error(&config.key_file, "no private key".into()))?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| LinkError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| LinkError::Tls(e.to_string()))
}

impl Link {
    /// Start the client; it connects, subscribes to `subscriptions` on every connection, and
    /// reconnects by itself. Events arrive on [`Link::events`].
    pub fn start(config: &LinkConfig, subscriptions: Vec<String>) -> Result<Link, LinkError> {
        let tls = tls_config(config)?;
        let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
        options
            .set_keep_alive(config.keep_alive)
            .set_clean_start(!config.persistent_session)
            .set_session_expiry_interval(config.persistent_session.then_some(7 * 24 * 3600))
            .set_max_packet_size(Some(MAX_PACKET_BYTES))
            .set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls))));
        let (client, mut connection) = Client::new(options, 256);
        let (sender, events) = mpsc::channel();
        let subscriber = client.clone();
        std::thread::Builder::new()
            .name(format!("mqtt-{}", config.client_id))
            .spawn(move || {
                let mut backoff = Duration::from_millis(200);
                for event in connection.iter() {
                    let incoming = match event {
                        Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                            if ack.code != ConnectReturnCode::Success {
                                Some(Incoming::Disconnected(format!("refused: {:?}", ack.code)))
                            } else {
                                backoff = Duration::from_millis(200);
                                for topic in &subscriptions {
                                    if let Err(e) =
                                        subscriber.try_subscribe(topic, QoS::AtLeastOnce)
                                    {
                                        tracing::warn!(topic, error = %e, "subscribe failed");
                                    }
                                }
                                Some(Incoming::Connected)
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => Some(Incoming::Message {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            retained: p.retain,
                        }),
                        Ok(Event::Incoming(Packet::PubAck(ack)))
                            if !matches!(
                                ack.reason,
                                PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                            ) =>
                        {
                            Some(Incoming::PublishRefused {
                                reason: format!("{:?}", ack.reason),
                            })
                        }
                        Ok(_) => None,
                        Err(rumqttc::v5::ConnectionError::RequestsDone) => break,
                        Err(e) => {
                            let reason = e.to_string();
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            Some(Incoming::Disconnected(reason))
                        }
                    };
                    if let Some(incoming) = incoming {
                        if sender.send(incoming).is_err() {
                            break;
                        }
                    }
                }
            })
            .map_err(|e| LinkError::Closed(e.to_string()))?;
        Ok(Link { client, events })
    }

    /// Queue `payload` for `topic` at QoS 1 (blocks while rumqttc's request queue is full).
    pub fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), LinkError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .map_err(|e| LinkError::Closed(e.to_string()))
    }

    /// What the link reports, in order.
    pub fn events(&self) -> &mpsc::Receiver<Incoming> {
        &self.events
    }

    /// Disconnect cleanly (the session stays at the broker).
    pub fn close(&self) {
        let _ = self.client.disconnect();
    }
}
