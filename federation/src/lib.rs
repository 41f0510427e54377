//! The federation server: rounds over MQTT (`server`), their durable state (`store`), the
//! configuration (`config`), aggregation (`aggregate`) and secure aggregation's server side
//! (`secure`). The operator's commands are in
//! `main.rs`.

pub mod aggregate;
pub mod config;
pub mod secure;
pub mod server;
pub mod store;
