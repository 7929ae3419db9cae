//! The Capstan node agent: zero-touch first boot from the OVF environment and VMware guestinfo,
//! the node roles, and heartbeats.
//!
//! The binary (`capstan-agent`) is a thin shell over this library:
//! - [`schema`]: the one typed, versioned table of settings, and everything generated from it;
//! - [`sources`]: reading and merging baked defaults, the OVF environment, cloud-init VMware
//!   guestinfo keys, direct `guestinfo.capstan.*` keys and the override file;
//! - [`guestinfo`]: the key/value transports (VMware backdoor, QEMU fw_cfg, a directory);
//! - [`state`]: what was applied per instance, under `/var/lib/capstan/`;
//! - [`cli`], [`daemon`]: the commands;
//! - `steps`, `cloudinit`, `root`, `types`: first-boot steps and their inputs;
//! - `lb`: the load-balancer role.
pub mod cli;
pub mod cloudinit;
pub mod daemon;
pub mod guestinfo;
pub mod lb;
pub mod root;
pub mod schema;
pub mod sources;
pub mod state;
pub mod steps;
pub mod types;
