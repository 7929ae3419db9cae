//! A GUID partition table, rendered as bytes: protective MBR, primary header and entries at
//! the start, backup entries and header at the end. Pure: the disk stage writes these bytes
//! into the raw image file, so no loop device or partitioning tool is involved.

use uuid::Uuid;

/// Logical block size.
pub const SECTOR: u64 = 512;
const ENTRIES: usize = 128;
const ENTRY_SIZE: usize = 128;
/// Sectors taken by the entry array.
const ENTRY_SECTORS: u64 = (ENTRIES * ENTRY_SIZE) as u64 / SECTOR;

/// EFI system partition type.
pub const TYPE_ESP: Uuid = Uuid::from_u128(0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B);
/// Linux root (x86-64) type, as in the Discoverable Partitions Specification.
pub const TYPE_ROOT_X86_64: Uuid = Uuid::from_u128(0x4F68BCE3_E8CD_4DB1_96E7_FBCAF984B709);
/// Linux /usr (x86-64) type, Discoverable Partitions Specification.
pub const TYPE_USR_X86_64: Uuid = Uuid::from_u128(0x8484680C_9521_48C6_9C11_B0720656F69E);
/// Linux /usr verity (x86-64) type: the dm-verity hash tree of the /usr partition.
pub const TYPE_USR_VERITY_X86_64: Uuid = Uuid::from_u128(0x77FF5F63_E7B6_4633_ACF4_1565B864C0E6);
/// Attribute bit 2, "legacy BIOS bootable": SYSLINUX's `gptmbr.bin` boots the first partition
/// that has it.
pub const ATTR_LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;
/// The MBR boot code area (the rest of the sector is the disk signature and partition table).
pub const MBR_BOOT_CODE: usize = 440;

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Type GUID.
    pub type_guid: Uuid,
    /// Unique partition GUID (PARTUUID).
    pub guid: Uuid,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
    /// Attribute bits.
    pub attrs: u64,
    /// Name (at most 36 UTF-16 code units).
    pub name: String,
}

/// A partition table for a disk of `disk_sectors` sectors.
#[derive(Debug, Clone)]
pub struct Gpt {
    /// Disk GUID.
    pub disk_guid: Uuid,
    /// Disk size in sectors.
    pub disk_sectors: u64,
    /// Partitions in table order.
    pub partitions: Vec<Partition>,
}

impl Gpt {
    /// First LBA a partition may use.
    pub fn first_usable(&self) -> u64 {
        2 + ENTRY_SECTORS
    }

    /// Last LBA a partition may use.
    pub fn last_usable(&self) -> u64 {
        self.disk_sectors - 2 - ENTRY_SECTORS
    }

    fn entries(&self) -> Vec<u8> {
        let mut out = vec![0u8; ENTRIES * ENTRY_SIZE];
        for (i, p) in self.partitions.iter().enumerate() {
            let e = &mut out[i * ENTRY_SIZE..(i + 1) * ENTRY_SIZE];
            e[0..16].copy_from_slice(&p.type_guid.to_bytes_le());
            e[16..32].copy_from_slice(&p.guid.to_bytes_le());
            e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            e[48..56].copy_from_slice(&p.attrs.to_le_bytes());
            for (j, unit) in p.name.encode_utf16().take(36).enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
            }
        }
        out
    }

    fn header(&self, my_lba: u64, alternate: u64, entries_lba: u64, entries_crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alternate.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_usable().to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable().to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.to_bytes_le());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Checks that partitions fit, are in order and do not overlap.
    pub fn validate(&self) -> Result<(), String> {
        if self.partitions.len() > ENTRIES {
            return Err("too many partitions".into());
        }
        let mut prev_end = self.first_usable() - 1;
        for p in &self.partitions {
            if p.first_lba <= prev_end
                || p.last_lba < p.first_lba
                || p.last_lba > self.last_usable()
            {
                return Err(format!(
                    "partition {:?} ({}..={}) overlaps or leaves the usable area",
                    p.name, p.first_lba, p.last_lba
                ));
            }
            prev_end = p.last_lba;
        }
        Ok(())
    }

    /// The first `34` sectors: protective MBR, primary header, primary entries.
    /// `boot_code` (at most [`MBR_BOOT_CODE`] bytes, longer input is cut there) goes into the
    /// MBR for BIOS boot.
    pub fn primary(&self, boot_code: Option<&[u8]>) -> Vec<u8> {
        let entries = self.entries();
        let crc = crc32fast::hash(&entries);
        let mut out = vec![0u8; SECTOR as usize];
        if let Some(code) = boot_code {
            let n = code.len().min(MBR_BOOT_CODE);
            out[..n].copy_from_slice(&code[..n]);
        }
        // Protective MBR: one 0xEE partition covering the disk (capped at 2^32-1 sectors).
        // Its boot indicator stays 0x00 even with boot code: the UEFI spec requires it (and
        // some UEFI firmware treats an active protective MBR as a legacy disk), while SeaBIOS,
        // VMware's BIOS and gptmbr.bin run the boot code without looking at it.
        let p = &mut out[446..462];
        p[0] = 0;
        p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
        p[4] = 0xEE;
        p[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        p[8..12].copy_from_slice(&1u32.to_le_bytes());
        let size = (self.disk_sectors - 1).min(u32::MAX as u64) as u32;
        p[12..16].copy_from_slice(&size.to_le_bytes());
        out[510] = 0x55;
        out[511] = 0xAA;
        out.extend(self.header(1, self.disk_sectors - 1, 2, crc));
        out.extend(entries);
        out
    }

    /// The last `33` sectors: backup entries then backup header; written at
    /// `(disk_sectors - 33) * 512`.
    pub fn backup(&self) -> Vec<u8> {
        let entries = self.entries();
        let crc = crc32fast::hash(&entries);
        let last = self.disk_sectors - 1;
        let mut out = entries;
        out.extend(self.header(last, 1, last - ENTRY_SECTORS, crc));
        out
    }

    /// Byte offset of [`Gpt::backup`].
    pub fn backup_offset(&self) -> u64 {
        (self.disk_sectors - 1 - ENTRY_SECTORS) * SECTOR
    }
}

/// Reads the partition entries of a GPT disk image (primary table), checking both CRCs.
pub fn read(disk: &[u8]) -> Result<Vec<Partition>, String> {
    if disk.len() < (2 + ENTRY_SECTORS as usize) * SECTOR as usize {
        return Err("image too small for a GPT".into());
    }
    let h = &disk[SECTOR as usize..2 * SECTOR as usize];
    if &h[0..8] != b"EFI PART" {
        return Err("no GPT signature at LBA 1".into());
    }
    let mut hc = h[..92].to_vec();
    hc[16..20].fill(0);
    let want = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
    if crc32fast::hash(&hc) != want {
        return Err("GPT header CRC mismatch".into());
    }
    let lba = u64::from_le_bytes(h[72..80].try_into().expect("8 bytes"));
    let n = u32::from_le_bytes(h[80..84].try_into().expect("4 bytes")) as usize;
    let size = u32::from_le_bytes(h[84..88].try_into().expect("4 bytes")) as usize;
    if size != ENTRY_SIZE || n > 1024 {
        return Err(format!("unsupported GPT entry layout ({n} x {size})"));
    }
    let start = (lba * SECTOR) as usize;
    let raw = disk.get(start..start + n * size).ok_or("GPT entries past the end of the image")?;
    if crc32fast::hash(raw) != u32::from_le_bytes(h[88..92].try_into().expect("4 bytes")) {
        return Err("GPT entry array CRC mismatch".into());
    }
    let mut parts = Vec::new();
    for e in raw.chunks(size) {
        let type_guid = Uuid::from_bytes_le(e[0..16].try_into().expect("16 bytes"));
        if type_guid.is_nil() {
            continue;
        }
        let name: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        parts.push(Partition {
            type_guid,
            guid: Uuid::from_bytes_le(e[16..32].try_into().expect("16 bytes")),
            first_lba: u64::from_le_bytes(e[32..40].try_into().expect("8 bytes")),
            last_lba: u64::from_le_bytes(e[40..48].try_into().expect("8 bytes")),
            attrs: u64::from_le_bytes(e[48..56].try_into().expect("8 bytes")),
            name: String::from_utf16_lossy(&name),
        });
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn sample() -> Gpt {
        let sectors = 64 * 1024 * 1024 / SECTOR;
        Gpt {
            disk_guid: Uuid::from_u128(1),
            disk_sectors: sectors,
            partitions: vec![
                Partition {
                    type_guid: TYPE_ESP,
                    guid: Uuid::from_u128(2),
                    first_lba: 2048,
                    last_lba: 2048 + 20 * 2048 - 1,
                    attrs: 0,
                    name: "ESP".into(),
                },
                Partition {
                    type_guid: TYPE_ROOT_X86_64,
                    guid: Uuid::from_u128(3),
                    first_lba: 22 * 2048,
                    last_lba: sectors - 2048 - 1,
                    attrs: 0,
                    name: "root".into(),
                },
            ],
        }
    }

    fn image(g: &Gpt) -> tempfile::NamedTempFile {
        image_with(g, None)
    }

    fn image_with(g: &Gpt, boot_code: Option<&[u8]>) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(g.disk_sectors * SECTOR).unwrap();
        f.write_all(&g.primary(boot_code)).unwrap();
        f.seek(SeekFrom::Start(g.backup_offset())).unwrap();
        f.write_all(&g.backup()).unwrap();
        f.flush().unwrap();
        f
    }

    #[test]
    fn round_trips_through_our_reader() {
        let g = sample();
        g.validate().unwrap();
        let f = image(&g);
        let bytes = std::fs::read(f.path()).unwrap();
        assert_eq!(read(&bytes).unwrap(), g.partitions);
    }

    #[test]
    fn sfdisk_reads_it_without_complaint() {
        let g = sample();
        let f = image(&g);
        let out = std::process::Command::new("sfdisk")
            .arg("--json")
            .arg(f.path())
            .output()
            .expect("sfdisk (util-linux) must be installed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.trim().is_empty(), "sfdisk warned: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = &v["partitiontable"];
        assert_eq!(t["label"], "gpt");
        assert_eq!(t["id"], "00000000-0000-0000-0000-000000000001");
        let p = t["partitions"].as_array().unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0]["start"], 2048);
        assert_eq!(p[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(p[1]["uuid"], "00000000-0000-0000-0000-000000000003");
        assert_eq!(p[1]["name"], "root");
        let v =
            std::process::Command::new("sfdisk").arg("--verify").arg(f.path()).output().unwrap();
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    }

    #[test]
    fn boot_code_and_bios_attribute_reach_sfdisk() {
        let mut g = sample();
        g.partitions[0].attrs = ATTR_LEGACY_BIOS_BOOTABLE;
        let code: Vec<u8> = (0..500u32).map(|i| (i % 251) as u8 + 1).collect();
        let primary = g.primary(Some(&code));
        assert_eq!(&primary[..MBR_BOOT_CODE], &code[..MBR_BOOT_CODE]);
        // Disk signature and the rest of the MBR are untouched by over-long code.
        assert_eq!(&primary[MBR_BOOT_CODE..446], &[0u8; 6]);
        assert_eq!(primary[446], 0, "protective MBR must not be marked active");
        assert_eq!(&primary[510..512], &[0x55, 0xAA]);
        let f = image_with(&g, Some(&code));
        let out = std::process::Command::new("sfdisk")
            .arg("--json")
            .arg(f.path())
            .output()
            .expect("sfdisk (util-linux) must be installed");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let p = &v["partitiontable"]["partitions"];
        assert_eq!(p[0]["attrs"], "LegacyBIOSBootable", "{v:#}");
        assert!(p[1].get("attrs").is_none(), "{v:#}");
        let bytes = std::fs::read(f.path()).unwrap();
        assert_eq!(read(&bytes).unwrap()[0].attrs, ATTR_LEGACY_BIOS_BOOTABLE);
        let v =
            std::process::Command::new("sfdisk").arg("--verify").arg(f.path()).output().unwrap();
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    }

    #[test]
    fn corrupted_header_is_detected() {
        let g = sample();
        let mut bytes = g.primary(None);
        bytes[SECTOR as usize + 40] ^= 1;
        bytes.resize(bytes.len() + 1024, 0);
        assert!(read(&bytes).unwrap_err().contains("CRC"));
    }

    #[test]
    fn overlap_is_rejected() {
        let mut g = sample();
        g.partitions[1].first_lba = 3000;
        assert!(g.validate().is_err());
    }
}
