//! The tamper-evident audit trail: `<data_dir>/audit/audit.jsonl`, one JSON record per line,
//! appended by the daemon (associations, result deliveries, retention purges, start and stop)
//! and by the CLI (administrative actions), each record carrying the SHA-256 of the line
//! before it. Changing, inserting or removing a line breaks the chain at the next line, which
//! `appliance audit verify` finds and names; only cutting off the newest lines leaves a
//! shorter chain that is still whole (forward the trail elsewhere to catch that).
//!
//! Each record names its event with the DICOM Audit Message code (PS3.15 A.5, DCM scheme)
//! where one exists. Patient and study identifiers never enter the trail in clear: studies
//! appear as [`radiant_core::log_tag`]s, like in the logs.
//!
//! Appends from several processes are serialised by an exclusive lock on the file; each
//! record is fsync'd before `append` returns. With `[audit] syslog` set, each record is also
//! sent, once on disk, to that syslog server as an RFC 5424 message over UDP (RFC 5426;
//! facility 13, log audit): a copy out of the appliance's reach, which also shows a trail cut
//! short at its end.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest line we write or read; a longer one is damage.
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Error)]
pub enum AuditError {
    #[error("audit trail {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit record too large ({0} bytes)")]
    TooLarge(usize),
    #[error("audit trail {path}: the last line is not a record: {reason}")]
    Damaged { path: PathBuf, reason: String },
}

/// A DICOM audit event (PS3.15 A.5.3 EventID, DCM codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DicomEvent {
    /// 110100 Application Activity (start, stop).
    ApplicationActivity,
    /// 110104 DICOM Instances Transferred (an association that stored, a delivery).
    InstancesTransferred,
    /// 110105 DICOM Study Deleted (a retention purge).
    StudyDeleted,
    /// 110113 Security Alert (a refused association; a change of software configuration).
    SecurityAlert,
    /// 110114 User Authenticated (a console login or logout).
    UserAuthenticated,
}

impl DicomEvent {
    pub fn code(self) -> (&'static str, &'static str) {
        match self {
            Self::ApplicationActivity => ("110100", "Application Activity"),
            Self::InstancesTransferred => ("110104", "DICOM Instances Transferred"),
            Self::StudyDeleted => ("110105", "DICOM Study Deleted"),
            Self::SecurityAlert => ("110113", "Security Alert"),
            Self::UserAuthenticated => ("110114", "User Authenticated"),
        }
    }
}

/// What to record: the caller fills these; sequence, time and chain are added by `append`.
#[derive(Debug, Clone)]
pub struct Event {
    /// Our name for it: `association`, `delivery`, `model.install`, `head.rollback`, ...
    pub action: String,
    /// Who: `peer:AE@address`, `cli:user`, `console:user`, `daemon`.
    pub actor: String,
    /// `success`, or `failure: reason`.
    pub outcome: String,
    pub dicom: Option<DicomEvent>,
    /// What it was done to (never an identifier in clear).
    pub detail: serde_json::Value,
}

/// One line of the trail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    pub action: String,
    pub actor: String,
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dicom_event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dicom_meaning: Option<String>,
    pub detail: serde_json::Value,
    /// SHA-256 of the previous line (its bytes, without the newline), hex.
    pub prev: String,
}

/// The trail of a data folder, and where its records are forwarded.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    syslog: Option<std::net::SocketAddr>,
}

pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join("audit").join("audit.jsonl")
}

fn hash_hex(line: &[u8]) -> String {
    format!("{:x}", Sha256::digest(line))
}

impl AuditLog {
    /// The trail of `data_dir`, kept on disk only.
    pub fn new(data_dir: &Path) -> Self {
        AuditLog {
            path: path_in(data_dir),
            syslog: None,
        }
    }

    /// The trail of the configuration's data folder, forwarded to its `[audit] syslog`.
    pub fn of(config: &crate::config::Config) -> Self {
        AuditLog {
            path: path_in(&config.data_dir),
            syslog: config.audit.syslog_addr(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Append `event` after the last record, fsync'd; returns the record written.
    pub fn append(&self, event: Event) -> Result<Record, AuditError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.is_dir()) {
            radiant_core::durable::create_dir_durable(dir).map_err(|e| self.io(e.source))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        file.lock().map_err(|e| self.io(e))?;
        let (prev, seq) = match self.last_line(&mut file)? {
            None => (GENESIS.to_string(), 1),
            Some(line) => {
                let last: Record =
                    serde_json::from_slice(&line).map_err(|e| AuditError::Damaged {
                        path: self.path.clone(),
                        reason: e.to_string(),
                    })?;
                (hash_hex(&line), last.seq + 1)
            }
        };
        let (dicom_event, dicom_meaning) = match event.dicom.map(DicomEvent::code) {
            Some((code, meaning)) => (Some(code.to_string()), Some(meaning.to_string())),
            None => (None, None),
        };
        let record = Record {
            seq,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            action: event.action,
            actor: event.actor,
            outcome: event.outcome,
            dicom_event,
            dicom_meaning,
            detail: event.detail,
            prev,
        };
        let mut line = serde_json::to_vec(&record).map_err(|e| self.io(e.into()))?;
        if line.len() > MAX_LINE {
            return Err(AuditError::TooLarge(line.len()));
        }
        line.push(b'\n');
        file.write_all(&line).map_err(|e| self.io(e))?;
        file.sync_data().map_err(|e| self.io(e))?;
        if seq == 1 {
            if let Some(dir) = self.path.parent() {
                radiant_core::durable::fsync_dir(dir).map_err(|e| self.io(e.source))?;
            }
        }
        drop(file);
        if let Some(addr) = self.syslog {
            line.pop();
            forward(addr, &record, &line);
        }
        Ok(record)
    }

    /// The last line of the file (without its newline), `None` when it is empty. A torn last
    /// line (no newline: a crash during an append, which therefore never returned) was never
    /// a record: it is cut off, with a warning, and the next record chains to the line before.
    fn last_line(&self, file: &mut File) -> Result<Option<Vec<u8>>, AuditError> {
        let len = file.seek(SeekFrom::End(0)).map_err(|e| self.io(e))?;
        if len == 0 {
            return Ok(None);
        }
        let take = len.min(2 * MAX_LINE as u64 + 2);
        file.seek(SeekFrom::Start(len - take))
            .map_err(|e| self.io(e))?;
        let mut tail = Vec::with_capacity(take as usize);
        file.take(take)
            .read_to_end(&mut tail)
            .map_err(|e| self.io(e))?;
        let body = match tail.strip_suffix(b"\n") {
            Some(body) => body,
            None => {
                let kept = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                if kept == 0 && take < len {
                    return Err(AuditError::Damaged {
                        path: self.path.clone(),
                        reason: "the last line is longer than a record may be".into(),
                    });
                }
                let new_len = len - take + kept as u64;
                tracing::warn!(path = %self.path.display(), bytes = len - new_len, "audit trail: cutting off a record torn by a crash");
                file.set_len(new_len).map_err(|e| self.io(e))?;
                file.sync_data().map_err(|e| self.io(e))?;
                if kept == 0 {
                    return Ok(None);
                }
                tail.truncate(kept);
                tail.pop();
                &tail[..]
            }
        };
        let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if start == 0 && take < len {
            return Err(AuditError::Damaged {
                path: self.path.clone(),
                reason: "the last line is longer than a record may be".into(),
            });
        }
        Ok(Some(body[start..].to_vec()))
    }

    /// Check the whole chain: every line a record, `seq` counting up from 1, every `prev` the
    /// hash of the line before. Returns the number of records, or where the chain breaks.
    pub fn verify(&self) -> Result<Verified, AuditError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Verified {
                    records: 0,
                    broken: None,
                })
            }
            Err(e) => return Err(self.io(e)),
        };
        let mut reader = BufReader::new(file);
        let mut prev = GENESIS.to_string();
        let mut records = 0u64;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(|e| self.io(e))?;
            if n == 0 {
                return Ok(Verified {
                    records,
                    broken: None,
                });
            }
            let number = records + 1;
            let broken = |reason: String| {
                Ok(Verified {
                    records,
                    broken: Some(Break {
                        line: number,
                        reason,
                    }),
                })
            };
            let Some(body) = line.strip_suffix(b"\n") else {
                return broken("cut short or too long".into());
            };
            let record: Record = match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(e) => return broken(format!("not a record: {e}")),
            };
            if record.seq != number {
                return broken(format!("sequence {} where {number} was due", record.seq));
            }
            if record.prev != prev {
                return broken(
                    "does not chain to the line before (that line was changed, removed or \
                     inserted)"
                        .into(),
                );
            }
            prev = hash_hex(body);
            records = number;
        }
    }

    /// The newest `count` records (all when `None`), oldest first.
    pub fn tail(&self, count: Option<usize>) -> Result<Vec<Record>, AuditError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut out = std::collections::VecDeque::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| self.io(e))?;
            if let Ok(record) = serde_json::from_str::<Record>(&line) {
                out.push_back(record);
                if count.is_some_and(|c| out.len() > c) {
                    out.pop_front();
                }
            }
        }
        Ok(out.into())
    }
}

/// Send one record to a syslog server as RFC 5424 over UDP: PRI (facility 13, log audit;
/// severity notice, or warning for a failure), the record's time, this host, `radiant-edge`,
/// the process, the action as MSGID, no structured data, and the record's line as MSG. A
/// lost datagram is not retried: the file is the trail, syslog a copy.
fn forward(addr: std::net::SocketAddr, record: &Record, line: &[u8]) {
    const LOG_AUDIT: u8 = 13;
    let severity = if record.outcome.starts_with("failure") {
        4
    } else {
        5
    };
    let msgid: String = record
        .action
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    let mut datagram = format!(
        "<{}>1 {} {} radiant-edge {} {} - ",
        LOG_AUDIT * 8 + severity,
        record.time,
        hostname(),
        std::process::id(),
        if msgid.is_empty() { "-" } else { &msgid }
    )
    .into_bytes();
    datagram.extend_from_slice(line);
    let local: std::net::SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sent = std::net::UdpSocket::bind(local).and_then(|s| s.send_to(&datagram, addr));
    if let Err(e) = sent {
        tracing::warn!(%addr, error = %e, "cannot forward an audit record to syslog");
    }
}

/// This machine's name for syslog's HOSTNAME field (`-` when it has none).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name: String = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end])
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(255)
            .collect()
    } else {
        String::new()
    };
    if name.is_empty() {
        "-".into()
    } else {
        name
    }
}

/// The result of [`AuditLog::verify`].
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// Records that chain correctly from the start.
    pub records: u64,
    pub broken: Option<Break>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Break {
    /// 1-based line number of the first line that does not chain.
    pub line: u64,
    pub reason: String,
}

/// The actor of a CLI command: `cli:` and the user running it.
pub fn cli_actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| {
            // SAFETY: getuid has no preconditions and cannot fail.
            format!("uid{}", unsafe { libc::getuid() })
        });
    format!("cli:{user}")
}

/// Record `event`, logging (not failing) when the trail cannot be written: the action already
/// happened, and the log line says the trail missed it.
pub fn record(log: &AuditLog, event: Event) {
    let action = event.action.clone();
    if let Err(e) = log.append(event) {
        tracing::error!(%action, error = %e, "cannot append to the audit trail");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &str) -> Event {
        Event {
            action: action.into(),
            actor: "cli:test".into(),
            outcome: "success".into(),
            dicom: Some(DicomEvent::SecurityAlert),
            detail: serde_json::json!({ "n": action.len() }),
        }
    }

    #[test]
    fn a_chain_of_appends_verifies_and_any_edit_breaks_it_where_it_was_made() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        for a in ["one", "two", "three", "four"] {
            log.append(event(a)).unwrap();
        }
        let ok = log.verify().unwrap();
        assert_eq!((ok.records, ok.broken.is_none()), (4, true));
        assert_eq!(log.tail(Some(2)).unwrap()[1].action, "four");
        let original = std::fs::read_to_string(log.path()).unwrap();
        let lines: Vec<&str> = original.lines().collect();

        // An edited record: the next line no longer chains.
        let edited = original.replacen("\"two\"", "\"TWO\"", 1);
        std::fs::write(log.path(), &edited).unwrap();
        let v = log.verify().unwrap();
        assert_eq!(v.broken.unwrap().line, 3);

        // A removed record: sequence and chain break at the gap.
        let removed = [lines[0], lines[2], lines[3]].join("\n") + "\n";
        std::fs::write(log.path(), removed).unwrap();
        let v = log.verify().unwrap();
        assert_eq!(v.broken.unwrap().line, 2);

        // A torn last line (crash mid-write) is named; the next append cuts it off and
        // chains to the last whole record.
        std::fs::write(log.path(), format!("{}{}", original, &lines[0][..20])).unwrap();
        let v = log.verify().unwrap();
        assert_eq!((v.records, v.broken.unwrap().line), (4, 5));
        assert_eq!(log.append(event("five")).unwrap().seq, 5);
        let v = log.verify().unwrap();
        assert_eq!((v.records, v.broken.is_none()), (5, true));
    }

    #[test]
    fn appends_from_many_threads_make_one_unbroken_chain() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        std::thread::scope(|s| {
            for t in 0..4 {
                let log = log.clone();
                s.spawn(move || {
                    for i in 0..25 {
                        log.append(event(&format!("t{t}-{i}"))).unwrap();
                    }
                });
            }
        });
        let v = log.verify().unwrap();
        assert_eq!((v.records, v.broken.is_none()), (100, true));
    }
}
