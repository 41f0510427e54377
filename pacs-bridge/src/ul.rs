//! The DICOM Upper Layer framing both sides use (PS3.8 section 9.3): PDU types, reading a PDU
//! with its length checked against a bound before the body is read, and writing one. The SCP
//! (`scp`) and the SCU (`scu`) share it. Association PDUs are decoded and encoded by
//! `dicom-ul`; P-DATA-TF is walked here item by item so that fragment bytes go straight from
//! the socket buffer into the message being assembled, with every length checked first. The
//! bytes travel over a [`Transport`]: plain TCP or TLS (`tls`); framing is the same on both.

use crate::tls::Transport;
use dicom_ul::pdu::{self, Pdu};
use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use thiserror::Error;

pub const A_ASSOCIATE_RQ: u8 = 0x01;
pub const A_ASSOCIATE_AC: u8 = 0x02;
pub const A_ASSOCIATE_RJ: u8 = 0x03;
pub const P_DATA_TF: u8 = 0x04;
pub const A_RELEASE_RQ: u8 = 0x05;
pub const A_RELEASE_RP: u8 = 0x06;
pub const A_ABORT: u8 = 0x07;

/// Largest A-ASSOCIATE-RQ we read; real ones are a few KiB even with 128 contexts.
pub const MAX_ASSOCIATE_RQ: u32 = 64 * 1024;

#[derive(Debug, Error)]
pub enum PduError {
    #[error("peer closed the connection")]
    Closed,
    #[error("timed out waiting for the peer")]
    Timeout,
    #[error("I/O error: {0}")]
    Io(io::Error),
    #[error("PDU of {length} bytes exceeds the limit of {limit}")]
    TooLarge { length: u32, limit: u32 },
    #[error("malformed PDU: {0}")]
    Malformed(String),
}

impl From<io::Error> for PduError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => PduError::Timeout,
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => PduError::Closed,
            _ => PduError::Io(e),
        }
    }
}

/// One presentation data value item header inside a P-DATA-TF PDU (PS3.8 section 9.3.5.1).
#[derive(Debug, Clone, Copy)]
pub struct PdvHeader {
    pub context_id: u8,
    pub is_command: bool,
    pub is_last: bool,
    /// Bytes of fragment data that follow.
    pub data_length: usize,
}

/// PDUs over a transport. Reads go through a buffer; writes go straight to the transport
/// (each PDU in one call), which is reached through the buffer's `get_mut`.
pub struct PduStream {
    reader: BufReader<Deadlined>,
    /// A handle on the same socket, for timeouts, TCP options and shutdown.
    tcp: TcpStream,
}

/// The transport's reads under a deadline for a whole exchange (an association request, a
/// message), not for each read: before every read the socket's timeout is set to the time
/// left, and none is left is a timeout. A peer that trickles a byte at a time cannot stretch
/// the exchange past the deadline. Without a deadline the socket's own timeout applies per
/// read.
struct Deadlined {
    transport: Transport,
    tcp: TcpStream,
    deadline: Option<Instant>,
    /// Longest silence within the exchange, whatever time is left of it.
    silence: Option<Duration>,
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut timeout = self.silence;
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the deadline for this exchange passed",
                ));
            }
            timeout = Some(timeout.map_or(left, |silence| silence.min(left)));
        }
        if timeout.is_some() {
            self.tcp.set_read_timeout(timeout)?;
        }
        self.transport.read(buf)
    }
}

impl PduStream {
    pub fn new(stream: TcpStream) -> io::Result<Self> {
        Self::over(Transport::Plain(stream))
    }

    pub fn over(transport: Transport) -> io::Result<Self> {
        let tcp = transport.tcp().try_clone()?;
        let reads = Deadlined {
            tcp: tcp.try_clone()?,
            transport,
            deadline: None,
            silence: None,
        };
        Ok(Self {
            reader: BufReader::with_capacity(256 * 1024, reads),
            tcp,
        })
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub fn transport(&self) -> &Transport {
        &self.reader.get_ref().transport
    }

    /// Where writes go: the transport itself, past the read buffer.
    pub fn writer(&mut self) -> &mut Transport {
        &mut self.reader.get_mut().transport
    }

    /// Every read from now on must end before `deadline` (`None`: the socket's read timeout
    /// applies to each read). Bytes already buffered are read whatever the deadline.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.reader.get_mut().deadline = deadline;
    }

    /// No read may wait longer than `silence`, however much of the deadline is left.
    pub fn set_silence_limit(&mut self, silence: Option<Duration>) {
        self.reader.get_mut().silence = silence;
    }

    /// Ask the kernel to acknowledge received segments at once (Linux TCP_QUICKACK, which the
    /// kernel clears again after a while, so it is re-armed before each read). Senders that
    /// leave Nagle's algorithm on (DCMTK does) hold their last small segment until our ACK; a
    /// delayed ACK then stalls every such message by ~40 ms.
    fn quickack(&self) {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: a valid socket descriptor and a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                self.tcp.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    /// Read a PDU header: type and length. A clean EOF before its first byte is `Closed`.
    pub fn read_header(&mut self) -> Result<(u8, u32), PduError> {
        self.quickack();
        read_header(&mut self.reader)
    }

    /// Read `length` body bytes of a non-data PDU and decode it with `dicom-ul`.
    pub fn read_body(&mut self, pdu_type: u8, length: u32) -> Result<Pdu, PduError> {
        read_body(&mut self.reader, pdu_type, length)
    }

    /// Read and discard `length` bytes.
    pub fn skip(&mut self, length: u64) -> Result<(), PduError> {
        skip(&mut self.reader, length)
    }

    /// Read the next PDV item header, with `remaining` bytes left in the current P-DATA-TF PDU.
    pub fn read_pdv_header(&mut self, remaining: u32) -> Result<PdvHeader, PduError> {
        self.quickack();
        read_pdv_header(&mut self.reader, remaining)
    }

    /// Append exactly `length` bytes from the stream to `out`.
    pub fn read_into(&mut self, out: &mut Vec<u8>, length: usize) -> Result<(), PduError> {
        read_into(&mut self.reader, out, length)
    }

    /// Encode a PDU with `dicom-ul` and write it in one call.
    pub fn write_pdu(&mut self, pdu: &Pdu) -> Result<(), PduError> {
        let mut bytes = Vec::with_capacity(256);
        pdu::write_pdu(&mut bytes, pdu).map_err(|e| PduError::Malformed(e.to_string()))?;
        let writer = self.writer();
        writer.write_all(&bytes)?;
        writer.flush()?;
        Ok(())
    }

    /// Send a command set as one P-DATA-TF PDU holding one last-fragment command PDV, in a
    /// single write: split writes meet Nagle's algorithm and delayed ACKs and cost ~40 ms each.
    pub fn write_command(&mut self, context_id: u8, command: &[u8]) -> Result<(), PduError> {
        let item_length = command.len() as u32 + 2;
        let mut bytes = Vec::with_capacity(command.len() + 12);
        bytes.push(P_DATA_TF);
        bytes.push(0);
        bytes.extend((item_length + 4).to_be_bytes());
        bytes.extend(item_length.to_be_bytes());
        bytes.push(context_id);
        bytes.push(0x03);
        bytes.extend(command);
        let writer = self.writer();
        writer.write_all(&bytes)?;
        writer.flush()?;
        Ok(())
    }
}

// The reading half of the framing over any byte source. `PduStream` calls these on its socket;
// they are public so that `fuzz/` drives the very same code from memory.

/// Read a PDU header: type and length. A clean EOF before its first byte is `Closed`.
pub fn read_header(reader: &mut impl Read) -> Result<(u8, u32), PduError> {
    let mut head = [0u8; 6];
    let first = reader.read(&mut head[..1])?;
    if first == 0 {
        return Err(PduError::Closed);
    }
    reader.read_exact(&mut head[1..])?;
    Ok((
        head[0],
        u32::from_be_bytes([head[2], head[3], head[4], head[5]]),
    ))
}

/// Read `length` body bytes of a non-data PDU and decode it with `dicom-ul`. The caller bounds
/// `length` (by PDU type) before calling: the body is read into memory whole.
pub fn read_body(reader: &mut impl Read, pdu_type: u8, length: u32) -> Result<Pdu, PduError> {
    let mut whole = Vec::with_capacity(6 + length as usize);
    whole.push(pdu_type);
    whole.push(0);
    whole.extend(length.to_be_bytes());
    whole.resize(6 + length as usize, 0);
    reader.read_exact(&mut whole[6..])?;
    let limit = length.clamp(pdu::MINIMUM_PDU_SIZE, pdu::MAXIMUM_PDU_SIZE);
    match pdu::read_pdu(&whole[..], limit, false) {
        Ok(Some(pdu)) => Ok(pdu),
        Ok(None) => Err(PduError::Malformed("incomplete PDU".into())),
        Err(e) => Err(PduError::Malformed(e.to_string())),
    }
}

/// Read and discard `length` bytes.
pub fn skip(reader: &mut impl Read, length: u64) -> Result<(), PduError> {
    let copied = io::copy(&mut reader.take(length), &mut io::sink())?;
    if copied < length {
        return Err(PduError::Closed);
    }
    Ok(())
}

/// Read the next PDV item header, with `remaining` bytes left in the current P-DATA-TF PDU
/// (PS3.8 section 9.3.5.1): the item must fit in them.
pub fn read_pdv_header(reader: &mut impl Read, remaining: u32) -> Result<PdvHeader, PduError> {
    if remaining < 6 {
        return Err(PduError::Malformed(format!(
            "{remaining} stray bytes at the end of a P-DATA-TF PDU"
        )));
    }
    let mut head = [0u8; 6];
    reader.read_exact(&mut head)?;
    let item_length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if item_length < 2 || item_length > remaining - 4 {
        return Err(PduError::Malformed(format!(
            "PDV item length {item_length} does not fit the {remaining} bytes left in its PDU"
        )));
    }
    Ok(PdvHeader {
        context_id: head[4],
        is_command: head[5] & 0x01 != 0,
        is_last: head[5] & 0x02 != 0,
        data_length: item_length as usize - 2,
    })
}

/// Append exactly `length` bytes from `reader` to `out`; on error `out` is left as it was.
pub fn read_into(reader: &mut impl Read, out: &mut Vec<u8>, length: usize) -> Result<(), PduError> {
    let start = out.len();
    out.resize(start + length, 0);
    if let Err(e) = reader.read_exact(&mut out[start..]) {
        out.truncate(start);
        return Err(e.into());
    }
    Ok(())
}
