//! The federation server: rounds over MQTT (`server`), their durable state (`store`), the
//! configuration (`config`), aggregation (`aggregate`) and secure aggregation's server side
//! (`secure`), and the fleet's update repository (`repo`: one TUF trust root for firmware
//! bundles and model packages), the operator's rollouts and device statuses over the broker
//! (`rollout`). The server's commands are in `main.rs`, the operator's in
//! `bin/fleet.rs`.

pub mod aggregate;
pub mod config;
pub mod repo;
pub mod rollout;
pub mod secure;
pub mod server;
pub mod store;
