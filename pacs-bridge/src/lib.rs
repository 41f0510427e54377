//! The appliance's only DICOM speaker: the network side (an Upper Layer SCP for C-ECHO and
//! C-STORE) and the durable spool of what it received.
//!
//! # Layout
//! - [`uids`]: the SOP classes and transfer syntaxes we accept, and UID syntax checks.
//! - [`dataset`]: a bounded walker over encoded datasets (PS3.5 section 7) that checks every
//!   declared length against the bytes present and extracts the identifying attributes.
//! - [`dimse`]: DIMSE command sets (PS3.7 section 9.3): decode requests, encode responses.
//! - [`ul`]: Upper Layer framing shared by SCP and SCU (PS3.8 section 9.3): PDU types, bounded
//!   reads, writes, over plain TCP or TLS.
//! - [`tls`]: DICOM TLS (PS3.15 annex B, BCP 195 profile) for both sides with rustls: PEM
//!   certificates and keys, handshakes under a deadline, client certificate names.
//! - [`scp`]: associations (PS3.8): negotiation with access control, the message loop, timeouts,
//!   and the listener that bounds concurrent associations and shuts down gracefully.
//! - [`scu`]: a C-STORE SCU (PS3.4 annex B, PS3.8): sends Part 10 files to a peer on one
//!   association, re-encoding between native transfer syntaxes when the peer asks, with every
//!   read bounded by a timeout and the negotiated PDU size; typed, retry-aware errors.
//! - [`store`]: the spool (Part 10 files) and its SQLite index, written with group commit so that
//!   an instance is durable before its Success status leaves; study assembly on top of it.
//! - [`metrics`]: counters the daemon exposes in Prometheus text format.
//! - [`volume`]: a series' pixel data decoded, rescaled and ordered into a `radiant_core::Volume`.
//! - [`codestream`]: what a compressed frame's own header declares (JPEG, JPEG-LS, JPEG 2000,
//!   RLE), checked against the dataset before any decoder allocates from it.
//! - [`objects`]: the result objects we write (SEG, TID 1500 SR) and the read-back geometry
//!   check a SEG must pass before it leaves.
//!
//! No async runtime: one OS thread per association, bounded by `max_associations`; durability
//! work of concurrent associations is batched by a single committer thread.

pub mod codestream;
pub mod dataset;
pub mod dimse;
pub mod metrics;
pub mod objects;
pub mod scp;
pub mod scu;
pub mod store;
pub mod tls;
pub mod uids;
pub mod ul;
pub mod volume;
