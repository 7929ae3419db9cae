//! The OVF environment (`ovf-env.xml`) that vSphere hands a guest.
