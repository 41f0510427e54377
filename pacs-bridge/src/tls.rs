//! DICOM TLS for both sides, the SCP's listener and the SCU's connections: loading PEM
//! certificates and keys, the handshake under a deadline, the stream an association runs
//! over (plain TCP or TLS), and the names in a client certificate.
//!
//! # Profile
//! PS3.15 annex B, the "Non-downgrading BCP 195 TLS Secure Transport Connection Profile" (the
//! profile DCMTK 3.6.7 offers by default as `--profile-bcp195-nd`): the TLS port speaks TLS
//! only, never falls back to plain DICOM or an older protocol version, and negotiates what
//! RFC 9325 (BCP 195) recommends:
//! - TLS 1.3 and TLS 1.2 only (no SSL, no TLS 1.0 or 1.1);
//! - rustls' cipher suites with the `ring` provider: TLS 1.3 AES-GCM and ChaCha20-Poly1305;
//!   TLS 1.2 ECDHE (forward secrecy) with ECDSA or RSA and AES-GCM or ChaCha20-Poly1305 only
//!   (AEAD; no CBC, RC4, 3DES, NULL or export suites);
//! - no renegotiation (rustls does not implement it), no TLS compression;
//! - the server's certificate is verified by the client against a configured CA and name
//!   (RFC 6125: SAN DNS name or IP address); with a client CA configured, the server requires
//!   and verifies a client certificate (mutual TLS: peer authentication in both directions).
//!
//! The names of a verified client certificate (its subject CN and SAN DNS names,
//! [`certificate_names`]) are what `[[dicom.peers]] tls_identity` binds an AE title to; the
//! SCP checks it during access control and refuses with a typed reason.
//!
//! Every handshake has a deadline ([`accept`], [`connect`]): a peer that opens TCP and never
//! finishes the handshake holds its association slot no longer than that; a failed handshake
//! is an error naming the reason, never a panic. PEM files are read with a size bound.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig};
use rustls::{ServerConnection, StreamOwned};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Largest PEM file we read (a chain of a few certificates is a few KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is larger than {MAX_PEM_BYTES} bytes", .path.display())]
    TooLarge { path: PathBuf },
    #[error("{} is not valid PEM: {detail}", .path.display())]
    Pem { path: PathBuf, detail: String },
    #[error("{} holds no certificate (PEM \"BEGIN CERTIFICATE\")", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no private key (PEM PKCS#8, PKCS#1 or SEC1)", .path.display())]
    NoKey { path: PathBuf },
    #[error("{}: certificate {index} is not usable: {detail}", .path.display())]
    BadCertificate {
        path: PathBuf,
        index: usize,
        detail: String,
    },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(String),
    #[error("{name:?} is not a DNS name or IP address to verify a server certificate against")]
    ServerName { name: String },
    #[error("TLS handshake not finished within {} ms", .after.as_millis())]
    Timeout { after: Duration },
    #[error("the peer closed the connection during the TLS handshake")]
    Closed,
    #[error("I/O error during the TLS handshake: {0}")]
    Io(#[source] io::Error),
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] rustls::Error),
}

impl TlsError {
    /// Whether trying again may succeed: network trouble may pass; a certificate that does
    /// not verify, or a file that does not load, needs someone to change something.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TlsError::Timeout { .. } | TlsError::Closed | TlsError::Io(_)
        )
    }
}

/// The one crypto provider: rustls' `ring` (no aws-lc), with its default (BCP 195) suites.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 and 1.2, nothing older (BCP 195).
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The protocol versions we speak, newest first, by their IANA names (for the conformance
/// statement).
pub fn protocol_versions() -> Vec<String> {
    VERSIONS
        .iter()
        .map(|v| format!("{:?}", v.version))
        .collect()
}

/// The cipher suites we offer and accept, in preference order, by their IANA names.
pub fn cipher_suites() -> Vec<String> {
    provider()
        .cipher_suites
        .iter()
        .filter(|suite| {
            VERSIONS
                .iter()
                .any(|v| v.version == suite.version().version)
        })
        .map(|suite| format!("{:?}", suite.suite()))
        .collect()
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Every certificate in a PEM file, in order (a chain: the end entity first); at least one,
/// each one an X.509 certificate.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_bounded(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    for (index, cert) in certs.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(cert) {
            return Err(TlsError::BadCertificate {
                path: path.to_path_buf(),
                index,
                detail: e.to_string(),
            });
        }
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC), unencrypted.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_bounded(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        other => TlsError::Pem {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    })
}

/// The certificates of a PEM file as trust anchors (a CA bundle).
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (index, cert) in load_certificates(path)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            index,
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The SCP's TLS configuration: our certificate chain and key and, with `client_ca_file`,
/// required client certificates issued by that CA (mutual TLS).
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certificates(cert_file)?;
    let key = load_private_key(key_file)?;
    let verifier = match client_ca_file {
        Some(ca) => {
            WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                .build()
                .map_err(|e| TlsError::Config(format!("client CA {}: {e}", ca.display())))?
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// How the SCU connects over TLS to one destination.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Eq for ClientTls {}

impl ClientTls {
    /// Trust the CAs in `ca_file`, verify the server's certificate against `server_name` (a
    /// DNS name or an IP address), and present `client` (certificate chain file, key file)
    /// when given.
    pub fn load(
        ca_file: &Path,
        client: Option<(&Path, &Path)>,
        server_name: &str,
    ) -> Result<ClientTls, TlsError> {
        let server_name =
            ServerName::try_from(server_name.to_string()).map_err(|_| TlsError::ServerName {
                name: server_name.to_string(),
            })?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(load_roots(ca_file)?);
        let config = match client {
            Some((cert_file, key_file)) => builder
                .with_client_auth_cert(load_certificates(cert_file)?, load_private_key(key_file)?)
                .map_err(|e| TlsError::Config(e.to_string()))?,
            None => builder.with_no_client_auth(),
        };
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
        })
    }
}

/// The byte stream an association runs over: plain TCP, or TLS on top of it.
pub enum Transport {
    Plain(TcpStream),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Transport {
    /// The TCP socket underneath (timeouts, TCP options, shutdown).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Server(s) => s.get_ref(),
            Transport::Client(s) => s.get_ref(),
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Transport::Plain(_))
    }

    /// The names in the verified client certificate of a TLS connection we accepted: `None`
    /// over plain TCP or when the client presented none.
    pub fn client_names(&self) -> Option<Vec<String>> {
        match self {
            Transport::Server(s) => s
                .conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| certificate_names(cert)),
            _ => None,
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Server(s) => s.read(buf),
            Transport::Client(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Server(s) => s.write(buf),
            Transport::Client(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Server(s) => s.flush(),
            Transport::Client(s) => s.flush(),
        }
    }
}

impl Drop for Transport {
    /// End a TLS connection with close_notify (RFC 8446 6.1), so the peer can tell the end of
    /// the association from a truncation. Best effort, within the socket's write timeout.
    fn drop(&mut self) {
        match self {
            Transport::Plain(_) => {}
            Transport::Server(s) => {
                let StreamOwned { conn, sock } = &mut **s;
                conn.send_close_notify();
                while conn.wants_write() {
                    if !matches!(conn.write_tls(sock), Ok(n) if n > 0) {
                        break;
                    }
                }
            }
            Transport::Client(s) => {
                let StreamOwned { conn, sock } = &mut **s;
                conn.send_close_notify();
                while conn.wants_write() {
                    if !matches!(conn.write_tls(sock), Ok(n) if n > 0) {
                        break;
                    }
                }
            }
        }
    }
}

/// Run the server side of the handshake on an accepted connection, finishing by `deadline`.
pub fn accept(
    stream: TcpStream,
    config: &Arc<ServerConfig>,
    deadline: Instant,
) -> Result<Transport, TlsError> {
    let conn = ServerConnection::new(config.clone()).map_err(TlsError::Handshake)?;
    let (conn, sock) = handshake(Connection::Server(conn), stream, deadline)?;
    match conn {
        Connection::Server(conn) => Ok(Transport::Server(Box::new(StreamOwned::new(conn, sock)))),
        Connection::Client(_) => Err(TlsError::Config("not a server connection".into())),
    }
}

/// Run the client side of the handshake on a connected socket, finishing by `deadline`.
pub fn connect(
    stream: TcpStream,
    tls: &ClientTls,
    deadline: Instant,
) -> Result<Transport, TlsError> {
    let conn = ClientConnection::new(tls.config.clone(), tls.server_name.clone())
        .map_err(TlsError::Handshake)?;
    let (conn, sock) = handshake(Connection::Client(conn), stream, deadline)?;
    match conn {
        Connection::Client(conn) => Ok(Transport::Client(Box::new(StreamOwned::new(conn, sock)))),
        Connection::Server(_) => Err(TlsError::Config("not a client connection".into())),
    }
}

/// Drive a handshake to its end, each read and write bounded by what is left until
/// `deadline` (so a peer trickling bytes cannot stretch it). A fatal error sends its alert.
fn handshake(
    mut conn: Connection,
    mut sock: TcpStream,
    deadline: Instant,
) -> Result<(Connection, TcpStream), TlsError> {
    let total = deadline.saturating_duration_since(Instant::now());
    let io_error = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => TlsError::Timeout { after: total },
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => TlsError::Closed,
        _ => TlsError::Io(e),
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TlsError::Timeout { after: total });
        }
        sock.set_read_timeout(Some(left)).map_err(TlsError::Io)?;
        sock.set_write_timeout(Some(left)).map_err(TlsError::Io)?;
        while conn.wants_write() {
            conn.write_tls(&mut sock).map_err(io_error)?;
        }
        if !conn.is_handshaking() {
            return Ok((conn, sock));
        }
        if conn.wants_read() {
            if conn.read_tls(&mut sock).map_err(io_error)? == 0 {
                return Err(TlsError::Closed);
            }
            if let Err(e) = conn.process_new_packets() {
                // Tell the peer why (the alert rustls queued), then give up.
                while conn.wants_write() {
                    if !matches!(conn.write_tls(&mut sock), Ok(n) if n > 0) {
                        break;
                    }
                }
                return Err(TlsError::Handshake(e));
            }
        }
    }
}

/// The names a certificate states for its subject: each subject Common Name, then each
/// Subject Alternative Name of type DNS name, in order. An unparsable certificate has none.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_string)
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_string());
            }
        }
    }
    names
}

/// Whether a certificate with `names` carries `identity` (ASCII case-insensitive, as DNS
/// names compare; a CN is compared the same way).
pub fn names_match(names: &[String], identity: &str) -> bool {
    names.iter().any(|n| n.eq_ignore_ascii_case(identity))
}
