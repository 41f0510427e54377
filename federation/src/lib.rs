//! The federation server: rounds over MQTT (`server`), their durable state (`store`), the
//! configuration (`config`) and aggregation (`aggregate`). The operator's commands are in
//! `main.rs`.

pub mod aggregate;
pub mod config;
pub mod server;
pub mod store;
