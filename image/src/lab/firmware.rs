//! Which firmware the lab boots an image with, decided the way the image's consumer would:
//! for an OVA, what its descriptor asks vSphere for (`vmw:Config firmware`: `efi`, or `bios`
//! and absent, which is vSphere's default); for a bare disk (qcow2, raw, VMDK), whether its
//! protective MBR carries boot code (a `capstan build --firmware bios` disk has SYSLINUX's
//! `gptmbr.bin` there, an EFI-only disk has zeros).

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use crate::exec;
use crate::firmware::Firmware;
use crate::gpt::MBR_BOOT_CODE;

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

/// The firmware an OVA descriptor asks for: `vmw:Config firmware` of its virtual hardware,
/// `bios` when absent (vSphere's default). `descriptor` names the file in errors.
///
/// The one place that reads this key: `capstan lab run` boots with the decision and
/// `capstan ova inspect` shows it, so both always agree. A value other than `efi`/`bios`, or
/// two different values, is an error naming the descriptor and the key (vCenter would refuse
/// the OVA too); values are quoted escaped and cut to [`SHOWN_VALUE`] bytes, so a hostile
/// descriptor cannot put control characters or kilobytes into the message.
pub fn from_descriptor(
    env: &ovf::descriptor::Envelope,
    descriptor: &str,
) -> anyhow::Result<Decision> {
    // Every distinct value once, in document order: `efi, bios, efi` is the conflict
    // `efi`/`bios`, and a thousand copies of one value are that value.
    let mut values: Vec<&str> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    if let Some(content) = &env.content {
        for vs in content.systems() {
            for hw in vs.hardware() {
                for c in hw.configs.iter().filter(|c| c.key == "firmware") {
                    if seen.insert(c.value.as_str()) {
                        values.push(c.value.as_str());
                    }
                }
            }
        }
    }
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
        [one] => bail!(
            "{descriptor}: vmw:Config firmware={} is neither \"efi\" nor \"bios\"",
            shown(one)
        ),
        many => {
            let listed: Vec<String> = many.iter().take(4).map(|v| shown(v)).collect();
            let more = match many.len() {
                n if n > 4 => format!(" and {} more", n - 4),
                _ => String::new(),
            };
            bail!(
                "{descriptor}: vmw:Config firmware is set to different values ({}{more}); \
                 give it once, \"efi\" or \"bios\"",
                listed.join(", ")
            )
        }
    }
}

/// The most bytes of a descriptor value an error message quotes.
pub const SHOWN_VALUE: usize = 64;

/// A value as an error shows it: Rust-escaped (`"efi\nbios"`), cut at [`SHOWN_VALUE`] bytes
/// with its full length named.
fn shown(value: &str) -> String {
    if value.len() <= SHOWN_VALUE {
        return format!("{value:?}");
    }
    let mut cut = SHOWN_VALUE;
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{:?}... ({} bytes)", &value[..cut], value.len())
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

    const NAME: &str = "x/node.ovf";

    #[test]
    fn descriptor_decides_for_an_ova() {
        let d = from_descriptor(&envelope(OvfFirmware::Efi), NAME).unwrap();
        assert_eq!(d.firmware, Firmware::Efi);
        assert!(d.from.contains("firmware=efi"), "{}", d.from);
        let d = from_descriptor(&envelope(OvfFirmware::Bios), NAME).unwrap();
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

    fn error(values: &[&str]) -> String {
        format!("{:#}", from_descriptor(&with_firmware(values), NAME).unwrap_err())
    }

    #[test]
    fn hostile_descriptor_values_are_named() {
        assert_eq!(
            from_descriptor(&with_firmware(&["bios"]), NAME).unwrap().firmware,
            Firmware::Bios
        );
        assert_eq!(
            error(&["coreboot"]),
            "x/node.ovf: vmw:Config firmware=\"coreboot\" is neither \"efi\" nor \"bios\""
        );
        // Case matters to vSphere, and so it does here.
        assert!(error(&["EFI"]).contains("firmware=\"EFI\""));
        assert!(error(&[""]).contains("firmware=\"\""));
        // A newline is shown escaped: the message stays one line.
        let err = error(&["efi\nbios"]);
        assert!(err.contains("firmware=\"efi\\nbios\""), "{err}");
        assert!(!err.contains('\n'), "{err}");
        // 10 KiB are cut to a bounded quote that names the full length.
        let big = "e".repeat(10 * 1024);
        let err = error(&[&big]);
        assert!(err.starts_with("x/node.ovf: vmw:Config firmware=\"eee"), "{err}");
        assert!(err.contains("... (10240 bytes)"), "{err}");
        assert!(err.len() < SHOWN_VALUE + 120, "{} bytes: {err}", err.len());
        // Cut on a character boundary (a multi-byte character straddles byte 64).
        let wide = format!("{}{}", "e".repeat(SHOWN_VALUE - 1), "\u{e9}".repeat(100));
        assert!(error(&[&wide]).contains(&format!("({} bytes)", wide.len())));
    }

    #[test]
    fn conflicting_values_are_listed_once_each() {
        assert_eq!(
            error(&["efi", "bios"]),
            "x/node.ovf: vmw:Config firmware is set to different values (\"efi\", \"bios\"); \
             give it once, \"efi\" or \"bios\""
        );
        // Not only consecutive duplicates: efi, bios, efi, bios is still the pair.
        let err = error(&["efi", "bios", "efi", "bios", "efi"]);
        assert!(err.contains("(\"efi\", \"bios\");"), "{err}");
        // The same value any number of times is merely redundant.
        let d = from_descriptor(&with_firmware(&["efi"; 50]), NAME).unwrap();
        assert_eq!(d.firmware, Firmware::Efi);
        // Many distinct values: four quoted, the rest counted.
        let many: Vec<String> = (0..1000).map(|i| format!("fw{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let err = error(&refs);
        assert!(err.contains("\"fw3\" and 996 more"), "{err}");
        assert!(!err.contains("fw4\""), "{err}");
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
