//! Which firmware the lab boots an image with, decided the way the image's consumer would:
//! for an OVA, what its descriptor asks vSphere for (`vmw:Config firmware`: `efi`, or `bios`
//! and absent, which is vSphere's default); for a bare disk (qcow2, raw, VMDK), whether its
//! protective MBR carries boot code (a `capstan build --firmware bios` disk has SYSLINUX's
//! `gptmbr.bin` there, an EFI-only disk has zeros).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use crate::build::gpt::MBR_BOOT_CODE;
use crate::build::{exec, Firmware};

/// `--firmware` of `capstan lab run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirmwareChoice {
    /// Decide from the OVA descriptor or the disk.
    Auto,
    /// This firmware, whatever the image says.
    Force(Firmware),
}

/// The firmware chosen and why (shown in `--json` as `firmware` and `firmware_from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The firmware.
    pub firmware: Firmware,
    /// Where the choice came from.
    pub from: String,
}

/// The firmware an OVA descriptor asks for. A `firmware` value other than `efi`/`bios`, or two
/// different values, is an error naming the key (vCenter would refuse the OVA too).
pub fn from_descriptor(env: &ovf::descriptor::Envelope) -> anyhow::Result<Decision> {
    let mut values: Vec<&str> = Vec::new();
    if let Some(content) = &env.content {
        for vs in content.systems() {
            for hw in vs.hardware() {
                for c in hw.configs.iter().filter(|c| c.key == "firmware") {
                    values.push(c.value.as_str());
                }
            }
        }
    }
    values.dedup();
    match values.as_slice() {
        [] => Ok(Decision {
            firmware: Firmware::Bios,
            from: "OVA descriptor: no vmw:Config firmware (vSphere's default, BIOS)".into(),
        }),
        ["efi"] => Ok(Decision {
            firmware: Firmware::Efi,
            from: "OVA descriptor: vmw:Config firmware=efi".into(),
        }),
        ["bios"] => Ok(Decision {
            firmware: Firmware::Bios,
            from: "OVA descriptor: vmw:Config firmware=bios".into(),
        }),
        [one] => {
            bail!("OVA descriptor: vmw:Config firmware={one:?} is neither \"efi\" nor \"bios\"")
        }
        many => bail!("OVA descriptor: vmw:Config firmware is set more than once ({many:?})"),
    }
}

/// The firmware for a bare disk from its first sector: MBR boot code means BIOS (such a
/// Capstan disk also boots under UEFI, but BIOS is what it was built for), none means UEFI.
pub fn from_first_sector(sector: &[u8]) -> Decision {
    let code = &sector[..sector.len().min(MBR_BOOT_CODE)];
    if sector.len() >= 512 && code.iter().any(|&b| b != 0) {
        Decision { firmware: Firmware::Bios, from: "disk: MBR boot code present".into() }
    } else {
        Decision { firmware: Firmware::Efi, from: "disk: no MBR boot code".into() }
    }
}

/// Reads the first sector of a disk image in any format QEMU reads (the lab's overlay).
pub fn first_sector(disk: &Path, format: &str, work: &Path) -> anyhow::Result<Vec<u8>> {
    let out = work.join("sector0.raw");
    exec::run(
        Command::new("qemu-img")
            .args(["dd", "-f", format, "-O", "raw", "bs=512", "count=1"])
            .arg(format!("if={}", disk.display()))
            .arg(format!("of={}", out.display())),
    )
    .context("reading the disk's first sector (qemu-img dd)")?;
    let bytes = std::fs::read(&out)?;
    std::fs::remove_file(&out)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovf::descriptor::builder::{Firmware as OvfFirmware, VmBuilder};

    fn envelope(fw: OvfFirmware) -> ovf::descriptor::Envelope {
        VmBuilder::new("vm").firmware(fw).build()
    }

    #[test]
    fn descriptor_decides_for_an_ova() {
        let d = from_descriptor(&envelope(OvfFirmware::Efi)).unwrap();
        assert_eq!(d.firmware, Firmware::Efi);
        assert!(d.from.contains("firmware=efi"), "{}", d.from);
        let d = from_descriptor(&envelope(OvfFirmware::Bios)).unwrap();
        assert_eq!(d.firmware, Firmware::Bios);
        assert!(d.from.contains("default"), "{}", d.from);
    }

    fn with_firmware(values: &[&str]) -> ovf::descriptor::Envelope {
        let mut b = VmBuilder::new("vm");
        for v in values {
            b = b.config("firmware", *v);
        }
        b.build()
    }

    #[test]
    fn hostile_descriptor_values_are_named() {
        assert_eq!(from_descriptor(&with_firmware(&["bios"])).unwrap().firmware, Firmware::Bios);
        let err = from_descriptor(&with_firmware(&["coreboot"])).unwrap_err().to_string();
        assert!(err.contains("firmware=\"coreboot\""), "{err}");
        let err = from_descriptor(&with_firmware(&["efi", "bios"])).unwrap_err().to_string();
        assert!(err.contains("more than once"), "{err}");
        // The same value twice is merely redundant.
        assert_eq!(
            from_descriptor(&with_firmware(&["efi", "efi"])).unwrap().firmware,
            Firmware::Efi
        );
    }

    #[test]
    fn boot_code_means_bios() {
        let mut sector = vec![0u8; 512];
        sector[510] = 0x55;
        sector[511] = 0xAA;
        sector[446 + 4] = 0xEE;
        assert_eq!(from_first_sector(&sector).firmware, Firmware::Efi);
        sector[0] = 0x33;
        assert_eq!(from_first_sector(&sector).firmware, Firmware::Bios);
        // A short read is not boot code.
        assert_eq!(from_first_sector(&sector[..100]).firmware, Firmware::Efi);
    }

    #[test]
    fn first_sector_reads_through_qcow2() {
        let t = tempfile::tempdir().unwrap();
        let raw = t.path().join("d.raw");
        let mut bytes = vec![0u8; 1024 * 1024];
        bytes[..4].copy_from_slice(b"\xfa\x31\xc0\x8e");
        std::fs::write(&raw, &bytes).unwrap();
        let q = t.path().join("d.qcow2");
        exec::run(Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(&q))
            .unwrap();
        let s = first_sector(&q, "qcow2", t.path()).unwrap();
        assert_eq!(s.len(), 512);
        assert_eq!(&s[..4], b"\xfa\x31\xc0\x8e");
        assert_eq!(from_first_sector(&s).firmware, Firmware::Bios);
    }
}
