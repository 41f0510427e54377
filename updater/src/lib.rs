//! The device side of the fleet: `updater run` keeps one MQTT link to the fleet broker, sends
//! this site's head updates from a durable outbox, and fetches, verifies and hands over signed
//! global heads (`updater/PROTOCOL.md`); `updater fetch|update|install|boot|commit|rollback`
//! take firmware bundles through the fleet's trust root into A/B slots.
//!
//! Layout: `config` (the appliance configuration's `[federation]` and `[update]` tables and
//! data folder), `state` (SQLite: outbox, global chunks, installed version, accountant,
//! status), `device` (the loop), `secure` (this device's side of secure aggregation), `update`
//! (turning a local head into the round's update blob: delta, clipping, noise), `firmware`
//! (firmware bundles verified through the fleet's TUF trust root, downloaded and checked file
//! by file, then staged), `transport` (the repository over HTTPS or from a mounted folder), `tuf_seen` (a durable copy of
//! the metadata tough reads back to refuse rollbacks),
//! `model_updates` (model packages through the same trust root, installed inactive by the
//! appliance), `slots` (A/B install of a staged bundle on trial, the boot counter, commit and rollback
//! with the databases' snapshot), `schedule` (the maintenance window and the appliance's
//! idleness a switch waits for), `apply` (one update from fetch to commit or rollback), and
//! `releases` (release announcements of this device's fleet group over MQTT, and the status
//! it reports back).
//!
//! It runs as its own process, not a thread of the appliance daemon: the device's TLS key and
//! the trust key stay out of the process that parses DICOM from the network, the async
//! runtime under rumqttc stays out of the daemon, and either can restart without the other.
//! They share only the data folder's `federation/` hand-over files.

pub mod apply;
pub mod config;
pub mod device;
pub mod firmware;
pub mod model_updates;
pub mod releases;
pub mod schedule;
pub mod secure;
pub mod slots;
pub mod state;
pub mod transport;
pub mod tuf_seen;
pub mod update;
