//! The federation protocol's messages as types (`updater/PROTOCOL.md` is the prose): frames,
//! message headers, blob chunking, signed global heads and tensor blobs. Both sides of the
//! wire, `updater` (device) and `federation` (server), use this crate and nothing else to read
//! or write a payload, so the two cannot drift apart. No I/O, no MQTT, no async.
//!
//! Layout:
//! - [`frame`]: a payload = length-prefixed JSON header + body, bounded.
//! - [`bounds`]: the limits every received field keeps.
//! - [`message`]: every header type, with the bounds each field must keep.
//! - [`blob`]: cutting a blob into chunks and checking chunks and whole blobs by SHA-256.
//! - [`release`]: firmware release announcements per fleet group, staged waves, and the
//!   status each device reports.
//! - [`signed`]: the global head header, signed with ed25519, and the checks a device makes.
//! - [`site`]: the appliance's `[federation]` table and the folder the appliance and the
//!   updater hand heads through.
//! - [`tensors`]: named tensors to and from a safetensors blob, checked against the model's
//!   trainable tensors.

pub mod blob;
pub mod bounds;
pub mod frame;
pub mod message;
pub mod release;
pub mod signed;
pub mod site;
pub mod tensors;

/// The protocol version every header carries as `"v"`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame anyone sends or accepts, and the MQTT packet size both sides set.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;
/// Largest JSON header of a frame.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Body bytes of every chunk but the last.
pub const CHUNK_BYTES: usize = 192 * 1024;
/// Largest blob (an update or a global head) either side accepts.
pub const MAX_BLOB_BYTES: u64 = 64 * 1024 * 1024;

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The topics of one federation (`updater/PROTOCOL.md`, "Topics").
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(federation: &str) -> Topics {
        Topics {
            prefix: format!("radiant/v1/{federation}"),
        }
    }
    pub fn round(&self) -> String {
        format!("{}/round", self.prefix)
    }
    pub fn global(&self, model: &str) -> String {
        format!("{}/global/{model}", self.prefix)
    }
    pub fn up(&self, device: &str) -> String {
        format!("{}/device/{device}/up", self.prefix)
    }
    pub fn down(&self, device: &str) -> String {
        format!("{}/device/{device}/down", self.prefix)
    }
    /// The retained release announcement of a fleet group.
    pub fn release(&self, group: &str) -> String {
        format!("{}/release/{group}", self.prefix)
    }
    /// A device's retained firmware status.
    pub fn status(&self, device: &str) -> String {
        format!("{}/device/{device}/status", self.prefix)
    }
    /// What the operator subscribes to: every device's status.
    pub fn all_status(&self) -> String {
        format!("{}/device/+/status", self.prefix)
    }
    /// What the server subscribes to: every device's `up` topic.
    pub fn all_up(&self) -> String {
        format!("{}/device/+/up", self.prefix)
    }
    /// The device whose `up` topic `topic` is, if it is one of this federation.
    pub fn device_of_up(&self, topic: &str) -> Option<String> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix("/device/")?;
        let device = rest.strip_suffix("/up")?;
        message::check_id(device).ok()?;
        Some(device.to_string())
    }
}
