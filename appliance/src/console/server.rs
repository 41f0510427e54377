//! The console's HTTP/1.1 server: one request per connection (`Connection: close`), over TLS
//! (pacs-bridge's rustls configuration with the `ring` provider: TLS 1.3 and 1.2 only) or, on
//! loopback only and when configured, plain TCP.
//!
//! Bounded everywhere: an accept thread hands connections to a fixed pool of workers through a
//! bounded queue (a connection that finds the queue full is closed at once); the TLS handshake
//! and the whole request must arrive within [`REQUEST_SECONDS`]; the request line and headers
//! within [`MAX_HEAD_BYTES`], at most [`MAX_HEADERS`] headers, a body only with a
//! `Content-Length` of at most [`MAX_BODY_BYTES`] (no chunked bodies). Every handler runs behind
//! a panic boundary: a panic is logged and answered 500, and the worker goes on.

use crate::supervisor::{Supervised, Supervisor};
use pacs_bridge::tls::Transport;
use radiant_core::Cancel;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Seconds a connection has for its TLS handshake and its whole request.
pub const REQUEST_SECONDS: u64 = 10;
/// Largest request line plus headers.
pub const MAX_HEAD_BYTES: usize = 16 << 10;
/// Most header lines.
pub const MAX_HEADERS: usize = 64;
/// Largest request body (the console's forms are small).
pub const MAX_BODY_BYTES: usize = 64 << 10;
/// Connections waiting for a worker before new ones are closed.
const QUEUE: usize = 64;
/// Seconds a response may take to write.
const WRITE_SECONDS: u64 = 30;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path, without the query; not percent-decoded.
    pub path: String,
    /// The raw query string (after `?`), empty when none.
    pub query: String,
    /// Header names in lowercase.
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: IpAddr,
    pub tls: bool,
}

impl Request {
    /// A request for tests and internal use.
    pub fn new(method: &str, target: &str, peer: IpAddr) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            peer,
            tls: true,
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Request {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    pub fn with_body(mut self, body: &[u8]) -> Request {
        self.body = body.to_vec();
        self
    }

    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of cookie `name`, from every `Cookie` header.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.trim())
    }

    /// The body as `application/x-www-form-urlencoded` pairs; `None` when it is not that (or
    /// not UTF-8 after decoding).
    pub fn form(&self) -> Option<Vec<(String, String)>> {
        let content_type = self.header("content-type").unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return None;
        }
        decode_pairs(std::str::from_utf8(&self.body).ok()?)
    }

    /// The query string's pairs; `None` when it does not decode.
    pub fn query_pairs(&self) -> Option<Vec<(String, String)>> {
        decode_pairs(&self.query)
    }
}

/// `a=b&c=d` with `+` as space and `%XX` escapes; `None` for a bad escape or text that is not
/// UTF-8 once decoded.
pub fn decode_pairs(text: &str) -> Option<Vec<(String, String)>> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode_component(name)?, decode_component(value)?))
        })
        .collect()
}

fn decode_component(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// A response to send.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
        }
    }

    pub fn html(status: u16, body: String) -> Response {
        Response::new(status, "text/html; charset=utf-8", body.into_bytes())
    }

    pub fn text(status: u16, body: &str) -> Response {
        Response::new(
            status,
            "text/plain; charset=utf-8",
            body.as_bytes().to_vec(),
        )
    }

    /// 303 See Other to `location` (a path on this server).
    pub fn redirect(location: &str) -> Response {
        Response::text(303, "see other\n").with_header("Location", location)
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (Set-Cookie may come more than once).
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Why no request came.
#[derive(Debug)]
enum ReadError {
    /// The peer closed, or the deadline passed: nothing to answer.
    Gone,
    /// A malformed or too large request: answer with this status and close.
    Status(u16, &'static str),
}

/// Read one request from `stream` by `deadline`.
fn read_request(
    stream: &mut Transport,
    deadline: Instant,
    peer: IpAddr,
) -> Result<Request, ReadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(ReadError::Status(431, "request head too large"));
        }
        let n = read_some(stream, &mut chunk, deadline)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end > MAX_HEAD_BYTES {
        return Err(ReadError::Status(431, "request head too large"));
    }
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| ReadError::Status(400, "request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Status(400, "malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ReadError::Status(400, "malformed method"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(ReadError::Status(505, "HTTP/1.0 or 1.1 only"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(ReadError::Status(400, "malformed request target"));
    }
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() >= MAX_HEADERS {
            return Err(ReadError::Status(431, "too many headers"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Status(400, "malformed header"));
        };
        if name.is_empty() || !name.bytes().all(is_token) {
            return Err(ReadError::Status(400, "malformed header name"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut request = Request::new(method, target, peer);
    request.headers = headers;
    if request.header("transfer-encoding").is_some() {
        return Err(ReadError::Status(
            501,
            "chunked request bodies are not accepted",
        ));
    }
    let length = match request.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ReadError::Status(400, "malformed Content-Length"))?,
    };
    if length > MAX_BODY_BYTES {
        return Err(ReadError::Status(413, "request body too large"));
    }
    let mut body = buf.split_off(head_end + 4);
    while body.len() < length {
        let n = read_some(stream, &mut chunk, deadline)?;
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    request.body = body;
    Ok(request)
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One read, bounded by what is left until `deadline`; 0 bytes (closed) is [`ReadError::Gone`].
fn read_some(
    stream: &mut Transport,
    chunk: &mut [u8],
    deadline: Instant,
) -> Result<usize, ReadError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ReadError::Gone);
    }
    stream
        .tcp()
        .set_read_timeout(Some(left))
        .map_err(|_| ReadError::Gone)?;
    match stream.read(chunk) {
        Ok(0) | Err(_) => Err(ReadError::Gone),
        Ok(n) => Ok(n),
    }
}

/// Headers every response carries: nothing cached, no framing, no sniffing, no referrer to
/// other sites, and a content security policy that allows only this server's own styles,
/// images and forms.
fn security_headers(tls: bool) -> Vec<(&'static str, &'static str)> {
    let mut h = vec![
        (
            "Content-Security-Policy",
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        // Not "no-referrer": with it browsers send `Origin: null` on the console's own
        // forms, which the origin check must refuse.
        ("Referrer-Policy", "same-origin"),
        ("Cache-Control", "no-store"),
        ("Connection", "close"),
    ];
    if tls {
        h.push(("Strict-Transport-Security", "max-age=31536000"));
    }
    h
}

fn write_response(stream: &mut Transport, response: &Response, tls: bool) -> std::io::Result<()> {
    stream
        .tcp()
        .set_write_timeout(Some(Duration::from_secs(WRITE_SECONDS)))?;
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\n",
        response.status,
        reason(response.status),
        response.body.len()
    );
    for (name, value) in security_headers(tls) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    for (name, value) in &response.headers {
        // Values are ours; a stray line break would split the header.
        let value: String = value.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(&response.body)?;
    stream.flush()
}

/// What answers requests.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Serve one connection: handshake, one request, one response, close.
fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<&Arc<rustls::ServerConfig>>,
    handler: &Handler,
) {
    let deadline = Instant::now() + Duration::from_secs(REQUEST_SECONDS);
    let mut transport = match tls {
        Some(config) => match pacs_bridge::tls::accept(stream, config, deadline) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(peer = %peer.ip(), error = %e, "console TLS handshake failed");
                return;
            }
        },
        None => Transport::Plain(stream),
    };
    let response = match read_request(&mut transport, deadline, peer.ip()) {
        Ok(request) => match radiant_core::contain(|| handler(&request)) {
            Ok(response) => response,
            Err(panic) => {
                tracing::error!(method = %request.method, path = %request.path, panic = %panic, "console request handler panicked; answered 500");
                Response::text(500, "internal error\n")
            }
        },
        Err(ReadError::Gone) => return,
        Err(ReadError::Status(status, why)) => {
            let response = Response::text(status, &format!("{why}\n"));
            if write_response(&mut transport, &response, tls.is_some()).is_ok() {
                linger(&mut transport);
            }
            return;
        }
    };
    if let Err(e) = write_response(&mut transport, &response, tls.is_some()) {
        tracing::debug!(peer = %peer.ip(), error = %e, "console response not delivered");
    }
}

/// After answering a request that was not read whole: end our side (close_notify, then the
/// TCP write half) and read and drop what the peer still sends, briefly, so that closing with
/// unread bytes does not reset the connection before the peer read the answer.
fn linger(transport: &mut Transport) {
    if let Transport::Server(s) = transport {
        s.conn.send_close_notify();
        while s.conn.wants_write() {
            if !matches!(s.conn.write_tls(&mut s.sock), Ok(n) if n > 0) {
                break;
            }
        }
    }
    let tcp = transport.tcp();
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    let mut sink = [0u8; 4096];
    let mut left = MAX_HEAD_BYTES + MAX_BODY_BYTES;
    let mut reader = tcp;
    while left > 0 {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// A listening server: its accept thread and workers.
pub struct Running {
    stop: Cancel,
    wake: SocketAddr,
    accept: Supervised,
    workers: Vec<Supervised>,
    pub local_addr: SocketAddr,
}

impl Running {
    /// Stop accepting, let the workers finish the connections they hold, join everything.
    pub fn stop(self, supervisor: &Supervisor) {
        self.stop.cancel();
        // Wake the blocked accept.
        let _ = TcpStream::connect_timeout(&self.wake, Duration::from_secs(1));
        supervisor.stop(self.accept);
        // The accept thread dropped the queue's sender: each worker ends after its connection.
        for worker in self.workers {
            supervisor.join(worker);
        }
    }
}

/// Bind `addr` and serve with `workers` threads.
pub fn start(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    workers: usize,
    handler: Handler,
    supervisor: &Supervisor,
) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen for the console on {addr}: {e}"))?;
    let local_addr = listener.local_addr()?;
    let wake = SocketAddr::new(
        match local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        },
        local_addr.port(),
    );
    let (sender, receiver) = sync_channel::<(TcpStream, SocketAddr)>(QUEUE);
    let receiver: Arc<Mutex<Receiver<(TcpStream, SocketAddr)>>> = Arc::new(Mutex::new(receiver));
    let mut pool = Vec::new();
    for _ in 0..workers.max(1) {
        let receiver = receiver.clone();
        let handler = handler.clone();
        let tls = tls.clone();
        pool.push(supervisor.spawn("console-worker", move |_stop| {
            loop {
                // The lock is held only while waiting for the next connection.
                let next = receiver
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .recv();
                let Ok((stream, peer)) = next else {
                    return Ok(());
                };
                serve_connection(stream, peer, tls.as_ref(), &handler);
            }
        })?);
    }
    let stop = supervisor.stop_signal();
    let accept = supervisor.spawn_under("console", stop.clone(), move |stop| {
        for connection in listener.incoming() {
            if stop.is_cancelled() {
                break;
            }
            let stream = match connection {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "console accept failed");
                    // Out of descriptors and the like: do not spin.
                    stop.wait_timeout(Duration::from_millis(100));
                    continue;
                }
            };
            let peer = match stream.peer_addr() {
                Ok(p) => p,
                Err(_) => continue,
            };
            match sender.try_send((stream, peer)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(peer = %peer.ip(), "console busy: connection closed")
                }
                Err(TrySendError::Disconnected(_)) => break,
            }
        }
        drop(sender);
        Ok(())
    })?;
    Ok(Running {
        stop,
        wake,
        accept,
        workers: pool,
        local_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_decode_escapes_and_refuse_broken_ones() {
        assert_eq!(
            decode_pairs("a=1+2&b=%2Fx%3D&c").unwrap(),
            vec![
                ("a".to_string(), "1 2".to_string()),
                ("b".to_string(), "/x=".to_string()),
                ("c".to_string(), String::new())
            ]
        );
        assert!(decode_pairs("a=%4").is_none());
        assert!(decode_pairs("a=%zz").is_none());
        assert!(decode_pairs("a=%ff").is_none(), "not UTF-8");
    }

    #[test]
    fn cookies_are_found_among_several() {
        let r = Request::new("GET", "/", IpAddr::V4(Ipv4Addr::LOCALHOST))
            .with_header("Cookie", "a=1; radiant_session=abc ; b=2");
        assert_eq!(r.cookie("radiant_session"), Some("abc"));
        assert_eq!(r.cookie("c"), None);
    }
}
