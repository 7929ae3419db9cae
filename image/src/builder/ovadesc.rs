//! The OVA: a descriptor built with `ovf::descriptor::builder` (hardware from the profile,
//! vApp properties from the agent's schema), the streamOptimized VMDK, a SHA256 manifest,
//! packed with `ovf::ova` (descriptor first, deterministic tar).

use std::fs;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{bail, Context};
use ovf::descriptor::builder::{
    DiskSpec, Firmware, NicSpec, ProductInfo, ProductProperty, ScsiController, VmBuilder,
};

use super::disk::DiskIds;
use super::profile::Profile;
use crate::firmware::Firmware as BuildFirmware;

/// The OVF environment transports: vCenter writes the environment both to guestinfo and to a
/// CD-ROM ISO; the agent reads either.
pub const TRANSPORT: &str = "com.vmware.guestInfo iso";

/// Everything that shapes the descriptor (part of the outputs cache key).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DescriptorInputs {
    /// VM and file name stem.
    pub name: String,
    /// Product.
    pub product: String,
    /// Vendor.
    pub vendor: String,
    /// Version.
    pub version: String,
    /// Annotation.
    pub description: String,
    /// Virtual hardware version.
    pub hardware_version: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory.
    pub memory_mib: u64,
    /// Disk capacity.
    pub capacity_bytes: u64,
    /// Disk GUID (identifies the build).
    pub disk_guid: String,
    /// Archive member times.
    pub epoch: u64,
    /// Boot firmware: `efi` writes `vmw:Config firmware=efi`; `bios` writes none, which is
    /// vSphere's default (legacy BIOS).
    pub firmware: BuildFirmware,
    /// The schema's properties, rendered for the cache key.
    pub properties_digest: String,
    #[serde(skip)]
    properties: Vec<ProductProperty>,
}

impl DescriptorInputs {
    /// Collects the inputs for `profile`.
    pub fn new(
        profile: &Profile,
        ids: &DiskIds,
        epoch: u64,
        firmware: BuildFirmware,
    ) -> anyhow::Result<Self> {
        let properties = capstan_agent::schema::ovf_properties(&profile.name);
        let properties_digest =
            crate::cache::Key::new("properties").str("debug", &format!("{properties:?}")).finish();
        Ok(Self {
            name: profile.name.clone(),
            product: profile.ovf.product.clone(),
            vendor: profile.ovf.vendor.clone(),
            version: profile.version.clone(),
            description: profile.description.clone(),
            hardware_version: profile.ovf.hardware_version.clone(),
            cpus: profile.ovf.cpus,
            memory_mib: profile.ovf.memory_mib,
            capacity_bytes: profile.disk.size_mib * 1024 * 1024,
            disk_guid: ids.disk_guid.to_string(),
            epoch,
            firmware,
            properties_digest,
            properties,
        })
    }

    /// The VMDK's name inside the OVA.
    pub fn disk_name(&self) -> String {
        format!("{}-disk1.vmdk", self.name)
    }

    /// The descriptor for a VMDK of `vmdk_size` bytes.
    pub fn descriptor(&self, vmdk_size: u64) -> ovf::descriptor::Envelope {
        let mut disk = DiskSpec::new(self.disk_name(), self.capacity_bytes);
        disk.file_size = Some(vmdk_size);
        VmBuilder::new(format!("capstan-{}", self.name))
            .os("debian12_64Guest", 96)
            .hardware_version(&self.hardware_version)
            .cpus(self.cpus)
            .memory_mib(self.memory_mib)
            .firmware(match self.firmware {
                BuildFirmware::Efi => Firmware::Efi,
                BuildFirmware::Bios => Firmware::Bios,
            })
            .scsi(ScsiController::ParaVirtual)
            .disk(disk)
            .nic(NicSpec::new("VM Network"))
            .cdrom()
            .transport(TRANSPORT)
            // The guest sees stable disk serials (/dev/disk/by-id), what CSI drivers need.
            .config("flags.diskUuidEnabled", "true")
            .extra_config("disk.EnableUUID", "TRUE")
            // Time comes from NTP (the agent's `ntp` settings), never from the ESXi host.
            .config("tools.syncTimeWithHost", "false")
            .product(ProductInfo {
                product: self.product.clone(),
                vendor: self.vendor.clone(),
                version: self.version.clone(),
                full_version: Some(format!("{} (build {})", self.version, &self.disk_guid[..8])),
                ..ProductInfo::default()
            })
            .properties(self.properties.iter().cloned())
            .annotation(&self.description)
            .build()
    }
}

/// Writes the OVA at `dst` from the raw disk.
pub fn write_ova(
    inputs: &DescriptorInputs,
    raw: &Path,
    dst: &Path,
    progress: &dyn Fn(&str),
) -> anyhow::Result<()> {
    if inputs.properties.is_empty() {
        bail!("the agent's schema has no vApp properties for profile {:?}", inputs.name);
    }
    let work = dst.with_extension("ova.d");
    fs::create_dir_all(&work)?;
    let vmdk = work.join(inputs.disk_name());
    super::outputs::vmdk(raw, &vmdk, &inputs.disk_name(), &mut |r, t| {
        progress(&format!("ova: vmdk {}%", r * 100 / t.max(1)))
    })?;
    let size = fs::metadata(&vmdk)?.len();
    let envelope = inputs.descriptor(size);
    let problems: Vec<String> = ovf::descriptor::validate::validate(&envelope, &Default::default())
        .into_iter()
        .filter(|d| d.is_error())
        .map(|d| d.to_string())
        .collect();
    if !problems.is_empty() {
        bail!("the generated descriptor is invalid:\n  {}", problems.join("\n  "));
    }
    let xml = envelope.to_xml();
    fs::write(work.join(format!("{}.ovf", inputs.name)), &xml)?;
    let tmp = dst.with_extension("ova.partial");
    let out = BufWriter::new(fs::File::create(&tmp)?);
    ovf::ova::write_ova(
        out,
        &format!("{}.ovf", inputs.name),
        &xml,
        &[ovf::ova::OvaFile::new(inputs.disk_name(), &vmdk)],
        &ovf::ova::OvaOptions { mtime: inputs.epoch, manifest: true },
        &mut |d, t| progress(&format!("ova: packing {}%", d * 100 / t.max(1))),
    )
    .with_context(|| format!("writing {}", dst.display()))?;
    fs::rename(&tmp, dst)?;
    fs::remove_dir_all(&work)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(firmware: BuildFirmware) -> DescriptorInputs {
        let buildroot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildroot");
        let p = super::super::profile::LoadedProfile::load(&buildroot, "lb").unwrap();
        DescriptorInputs::new(&p.profile, &DiskIds::derive("k"), 1, firmware).unwrap()
    }

    fn firmware_configs(env: &ovf::descriptor::Envelope) -> Vec<String> {
        let content = env.content.as_ref().unwrap();
        content
            .systems()
            .into_iter()
            .flat_map(|vs| vs.hardware())
            .flat_map(|h| h.configs.iter())
            .filter(|c| c.key == "firmware")
            .map(|c| c.value.clone())
            .collect()
    }

    #[test]
    fn efi_descriptor_asks_for_efi_and_bios_for_nothing() {
        let efi = inputs(BuildFirmware::Efi).descriptor(1000);
        assert_eq!(firmware_configs(&efi), ["efi"]);
        let bios = inputs(BuildFirmware::Bios).descriptor(1000);
        assert!(firmware_configs(&bios).is_empty(), "{}", bios.to_xml());
        // Everything else is the same document.
        let without_firmware: Vec<String> = efi
            .to_xml()
            .lines()
            .filter(|l| !l.contains(r#"vmw:key="firmware""#))
            .map(str::to_string)
            .collect();
        let bios_lines: Vec<String> = bios.to_xml().lines().map(str::to_string).collect();
        assert!(without_firmware == bios_lines, "efi and bios descriptors differ beyond firmware");
        for env in [&efi, &bios] {
            let errors: Vec<String> = ovf::descriptor::validate::validate(env, &Default::default())
                .into_iter()
                .filter(|d| d.is_error())
                .map(|d| d.to_string())
                .collect();
            assert!(errors.is_empty(), "{errors:?}");
        }
    }
}
