//! The Capstan node agent: zero-touch first boot from the OVF environment and VMware guestinfo,
//! the node roles, and heartbeats.
//!
//! The binary (`capstan-agent`) is a thin shell over this library. Arrows point down:
//! - [`cli`]: clap types and printing; [`daemon`]: the supervisor, status socket, instance
//!   watch;
//! - [`boot`]: the first-boot engine (sources → plan → steps → state);
//! - [`roles`]: the [`roles::Role`] trait and the roles (`lb` today);
//! - [`sources`]: the [`sources::Provider`] trait, precedence, and the VMware provider;
//! - [`steps`]: the first-boot steps, the plan, and the runner; [`cloudinit`]: pure parsers;
//! - [`schema`], [`guestinfo`], [`state`], [`root`], [`types`], [`error`]: the leaves.
//!
//! `docs/architecture.md` draws the layout and states the import rules.
pub mod boot;
pub mod cli;
pub mod cloudinit;
pub mod daemon;
pub mod encoding;
pub mod error;
pub mod guestinfo;
pub mod heartbeat;
pub mod reidentify;
pub mod roles;
pub mod root;
pub mod schema;
pub mod sources;
pub mod state;
pub mod steps;
pub mod systemd;
pub mod tls;
pub mod types;
