//! How the updater reaches the fleet's update repository: `https://` (a static HTTPS server,
//! the vendor's or a hospital mirror) or `file://` (a mounted medium). The bytes are untrusted
//! either way: `tough` verifies every metadata file and target against the trust root and
//! reads no more than the signed length, so this module only moves bytes, with bounded waits.
//!
//! HTTPS is `ureq` over rustls with the ring provider: the server must present a certificate
//! chaining to `update.ca_file` when one is configured (a private mirror), else to Mozilla's
//! roots; redirects may not leave HTTPS; no content decoding (the bytes hashed are the bytes
//! sent). The blocking client runs on tokio's blocking pool and hands the body over in chunks
//! through a small channel, so a slow server holds one thread and no memory beyond a few
//! chunks, and the stream stops the moment tough stops reading.

use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tough::{FilesystemTransport, Transport, TransportError, TransportErrorKind, TransportStream};
use url::Url;

/// Bytes handed over per chunk.
const CHUNK: usize = 64 << 10;
/// A server that sends nothing for this long is given up on.
const STALL: Duration = Duration::from_secs(30);
/// The connection, and the response's status and headers, must come within this.
const CONNECT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum TransportConfigError {
    #[error("update.ca_file {path}: {reason}")]
    Ca { path: String, reason: String },
}

/// The repository's transport: `file://` and `https://` URLs; anything else is refused.
#[derive(Debug, Clone)]
pub struct RepositoryTransport {
    agent: ureq::Agent,
}

impl RepositoryTransport {
    /// A transport trusting `ca_file`'s certificates for HTTPS, or Mozilla's roots without one.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, TransportConfigError> {
        let roots = match ca_file {
            None => ureq::tls::RootCerts::WebPki,
            Some(path) => {
                let ca_error = |reason: String| TransportConfigError::Ca {
                    path: path.display().to_string(),
                    reason,
                };
                let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
                let mut certs = Vec::new();
                for item in ureq::tls::parse_pem(&pem) {
                    if let ureq::tls::PemItem::Certificate(cert) =
                        item.map_err(|e| ca_error(e.to_string()))?
                    {
                        certs.push(cert);
                    }
                }
                if certs.is_empty() {
                    return Err(ca_error("no certificate in it".into()));
                }
                ureq::tls::RootCerts::Specific(Arc::new(certs))
            }
        };
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(roots)
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            .http_status_as_error(false)
            .max_redirects(3)
            .timeout_connect(Some(CONNECT))
            .timeout_recv_response(Some(CONNECT))
            .timeout_per_read(Some(STALL))
            .build()
            .new_agent();
        Ok(Self { agent })
    }

    async fn https(&self, url: Url) -> Result<TransportStream, TransportError> {
        let agent = self.agent.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, TransportError>>(4);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let name = url.to_string();
        let worker_name = name.clone();
        tokio::task::spawn_blocking(move || {
            let name = worker_name;
            let other =
                |e: String| TransportError::new_with_cause(TransportErrorKind::Other, &name, e);
            let response = match agent.get(url.as_str()).call() {
                Ok(r) => r,
                Err(e) => {
                    let _ = first_tx.send(Err(other(e.to_string())));
                    return;
                }
            };
            let status = response.status().as_u16();
            if status != 200 {
                let kind = if status == 404 || status == 403 {
                    TransportErrorKind::FileNotFound
                } else {
                    TransportErrorKind::Other
                };
                let _ = first_tx.send(Err(TransportError::new_with_cause(
                    kind,
                    &name,
                    format!("HTTP status {status}"),
                )));
                return;
            }
            if first_tx.send(Ok(())).is_err() {
                return;
            }
            // No limit here: tough counts the bytes against the signed length and drops the
            // stream past it, which ends this loop at its next send.
            let mut body = response.into_body().into_with_config().reader();
            let mut buf = vec![0u8; CHUNK];
            loop {
                let chunk = match std::io::Read::read(&mut body, &mut buf) {
                    Ok(0) => return,
                    Ok(n) => Ok(Bytes::copy_from_slice(&buf[..n])),
                    Err(e) => Err(other(e.to_string())),
                };
                let failed = chunk.is_err();
                if tx.blocking_send(chunk).is_err() || failed {
                    return;
                }
            }
        });
        match first_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(TransportError::new_with_cause(
                    TransportErrorKind::Other,
                    &name,
                    "the HTTPS worker stopped",
                ))
            }
        }
        Ok(Box::pin(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }
}

#[async_trait::async_trait]
impl Transport for RepositoryTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        match url.scheme() {
            "file" => FilesystemTransport.fetch(url).await,
            "https" => self.https(url).await,
            _ => Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url,
            )),
        }
    }
}
