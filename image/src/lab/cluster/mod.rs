//! `capstan lab cluster`: Cluster API + CAPV played on one machine. A cluster is a network
//! namespace with a bridge ([`net`]), the lb pair holding the control-plane VIP, control
//! planes and workers, each a lab VM on a tap with CAPV's `guestinfo.metadata` ([`capv`]) and
//! CABPK's `guestinfo.userdata` ([`cabpk`], with the PKI of [`pki`]); where each VM goes is
//! decided by [`plan`], what exists is recorded by [`state`].

pub mod cabpk;
pub mod capv;
pub mod forward;
pub mod lb;
pub mod net;
pub mod ops;
pub mod pki;
pub mod plan;
pub mod state;
pub mod vm;
