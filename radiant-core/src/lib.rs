//! What several Radiant Edge crates need and none of them owns: small, dependency-light types
//! and one implementation of each durable-write step. No DICOM, no ML runtime, no network.
//!
//! # Layout
//! - [`volume`]: a scalar volume with its patient-space geometry, and the vector helpers that
//!   geometry checks use.
//! - [`cancel`]: the one shutdown/cancel signal, checked between steps and waited on instead
//!   of sleep-polling.
//! - [`code`]: a coded concept (scheme, value, meaning), as model packages and result objects
//!   carry them.
//! - [`digest`]: SHA-256 of a stream, as hex.
//! - [`durable`]: write-temp, fdatasync, rename, fsync the directory: the one way a file
//!   becomes durable.
//! - [`file_lock`]: exclusive advisory locks (`flock`), taken at once or waited for.
//! - [`panic`]: the message of a caught panic.
//! - [`uid`]: a DICOM UID that prints only a hashed tag, so logs and errors never carry it in
//!   clear.
//! - [`rng`]: SplitMix64, the seeded stream every deterministic choice uses.
//! - [`sqlite`]: the one way a durable SQLite database is opened beside other processes (lock
//!   wait first, WAL, synchronous FULL, the schema in one write transaction, retried on busy).

pub mod cancel;
pub mod code;
pub mod digest;
pub mod durable;
pub mod file_lock;
pub mod panic;
pub mod rng;
pub mod sqlite;
pub mod uid;
pub mod volume;

pub use cancel::{Cancel, Doorbell, Wake};
pub use code::Code;
pub use panic::{contain, panic_message};
pub use uid::{log_tag, redacted_path, Uid};
pub use volume::Volume;
