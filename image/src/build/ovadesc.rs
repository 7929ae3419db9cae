//! The OVA: descriptor inputs (hardware, product, vApp properties from the agent's schema)
//! and the archive.

use std::path::Path;

use anyhow::bail;

use super::disk::DiskIds;
use super::profile::Profile;

/// Everything that shapes the descriptor (part of the outputs cache key).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DescriptorInputs {
    /// Product.
    pub product: String,
    /// Vendor.
    pub vendor: String,
    /// Version.
    pub version: String,
    /// Virtual hardware version.
    pub hardware_version: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory.
    pub memory_mib: u64,
    /// Disk capacity.
    pub capacity_bytes: u64,
    /// Disk identifiers.
    pub disk_guid: String,
}

impl DescriptorInputs {
    /// Collects the inputs for `profile`.
    pub fn new(profile: &Profile, ids: &DiskIds) -> anyhow::Result<Self> {
        Ok(Self {
            product: profile.ovf.product.clone(),
            vendor: profile.ovf.vendor.clone(),
            version: profile.version.clone(),
            hardware_version: profile.ovf.hardware_version.clone(),
            cpus: profile.ovf.cpus,
            memory_mib: profile.ovf.memory_mib,
            capacity_bytes: profile.disk.size_mib * 1024 * 1024,
            disk_guid: ids.disk_guid.to_string(),
        })
    }
}

/// Writes the OVA.
pub fn write_ova(
    _profile: &Profile,
    _inputs: &DescriptorInputs,
    _raw: &Path,
    dst: &Path,
    _progress: &dyn Fn(&str),
) -> anyhow::Result<()> {
    bail!("{}: the OVA writer is not wired in yet (build with --formats qcow2,raw)", dst.display())
}
