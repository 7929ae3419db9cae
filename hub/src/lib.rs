//! `capstan-hub`: receives the agents' heartbeats (the wire format is
//! `capstan_agent::heartbeat::wire`), keeps the last state of every node, judges health with
//! per-node deadlines, and remediates a node that stops, once per episode.
//!
//! - [`tracker`]: the per-node state machine and the deadline heap (pure, paused-clock tests);
//! - [`store`]: SQLite or PostgreSQL behind one group-committing writer;
//! - [`remedy`]: the remediation rules and actions;
//! - [`engine`]: ties them together ([`engine::Hub`]);
//! - [`http`]: the HTTPS endpoints and the status page; [`server`]: `capstan-hub serve`;
//! - [`certs`]: `capstan-hub certs`; [`simulate`]: `capstan-hub simulate`.
#![forbid(unsafe_code)]

pub mod certs;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod remedy;
pub mod server;
pub mod simulate;
pub mod store;
pub mod tracker;
