//! Heartbeats (contract 3): the message the agent sends to `capstan-hub` ([`wire`], shared
//! with the hub), the HTTPS client ([`client`]), host facts ([`facts`]), the sending task
//! ([`sender::spawn`]) and the short status for `guestinfo.capstan.status` ([`status`]).
//!
//! `capstan-agent run` calls [`sender::spawn_observed`] with [`HeartbeatSettings`] built from
//! the schema's `heartbeat.*` keys ([`HeartbeatSettings::from_config`]), a closure that fills a
//! [`Heartbeat`] with the role's checks, and one that publishes the short status.

pub mod client;
pub mod facts;
pub mod sender;
pub mod status;
pub mod wire;

pub use sender::{spawn, spawn_observed, HeartbeatSettings, Sender};
pub use status::Outcome;
pub use wire::{Check, Heartbeat, HostFacts};
