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
//! by file, then staged), `slots` (A/B install of a staged bundle on trial, the boot counter,
//! commit and rollback with the databases' snapshot).
//!
//! It runs as its own process, not a thread of the appliance daemon: the device's TLS key and
//! the trust key stay out of the process that parses DICOM from the network, the async
//! runtime under rumqttc stays out of the daemon, and either can restart without the other.
//! They share only the data folder's `federation/` hand-over files.

pub mod config;
pub mod device;
pub mod firmware;
pub mod secure;
pub mod slots;
pub mod state;
pub mod update;
