//! OVF descriptors and environments, `.mf` manifests, OVA archives and streamOptimized VMDK.
//!
//! This crate is the format layer of Capstan: it parses, writes and validates what vCenter and
//! vSphere guests exchange, with no policy and no CLI. Everything that touches disk images
//! streams through `Read`/`Write`, so a 20 GiB disk never sits in memory.
//!
//! - [`descriptor`]: the `.ovf` envelope — typed model, parser, writer, builder, validation.
//! - [`env`](mod@env): the OVF environment (`ovf-env.xml`) a vSphere guest receives.
//! - [`xml`]: the namespace-aware element tree both are built on; unknown content of a
//!   descriptor is kept as [`xml::Element`]s so it survives a round trip.
#![forbid(unsafe_code)]

pub mod cert;
pub mod descriptor;
pub mod env;
pub mod manifest;
pub mod ova;
pub mod vmdk;
pub mod xml;
