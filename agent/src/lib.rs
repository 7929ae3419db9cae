//! The Capstan node agent: zero-touch first boot from the OVF environment and VMware guestinfo,
//! the node roles, and heartbeats.
