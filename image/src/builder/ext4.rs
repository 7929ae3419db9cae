//! The last touch on each ext4 filesystem the disk stage makes: zero `s_kbytes_written` in
//! every superblock copy and redo each copy's checksum.
//!
//! libext2fs adds the bytes each session wrote to `s_kbytes_written` ("Lifetime writes") when
//! it closes the filesystem. mkfs.ext4 `-d` counts what it read from the tree, which depends on
//! how the host filesystem reports holes (a tree on tmpfs and the same tree on ext4 gave a few
//! KB apart, found by `scripts/check-reproducible`), so the counter is the one superblock field
//! not decided by the inputs. It is statistics only: e2fsck ignores it and the kernel adds to
//! it from the value it finds.
//!
//! Which groups hold a backup superblock follows e2fsprogs' `ext2fs_bg_has_super`; the checksum
//! (`metadata_csum`) is `ext2fs_superblock_csum_set`'s: CRC-32C seeded with `~0`, without the
//! final inversion, over the superblock up to `s_checksum`. Every copy is checked before
//! anything is written (magic, and its group number), so a layout this code misreads changes
//! nothing.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context};

/// Superblock size and the offsets used here (`struct ext4_super_block`).
const SB_LEN: usize = 1024;
const BLOCKS_COUNT_LO: usize = 0x04;
const FIRST_DATA_BLOCK: usize = 0x14;
const LOG_BLOCK_SIZE: usize = 0x18;
const BLOCKS_PER_GROUP: usize = 0x20;
const MAGIC: usize = 0x38;
const BLOCK_GROUP_NR: usize = 0x5A;
const FEATURE_COMPAT: usize = 0x5C;
const FEATURE_INCOMPAT: usize = 0x60;
const FEATURE_RO_COMPAT: usize = 0x64;
const BLOCKS_COUNT_HI: usize = 0x150;
const KBYTES_WRITTEN: usize = 0x178;
const BACKUP_BGS: usize = 0x24C;
const CHECKSUM: usize = 0x3FC;

const EXT4_MAGIC: u16 = 0xEF53;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const INCOMPAT_64BIT: u32 = 0x80;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

fn u16_at(sb: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([sb[o], sb[o + 1]])
}

fn u32_at(sb: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(sb[o..o + 4].try_into().expect("4 bytes"))
}

/// CRC-32C (Castagnoli, reflected) from `crc`, without the final inversion, as libext2fs'
/// `ext2fs_crc32c_le` (one superblock at a time: bitwise is fast enough).
pub fn crc32c_le(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    crc
}

/// The checksum `ext2fs_superblock_csum_set` stores for `sb`.
pub fn superblock_csum(sb: &[u8]) -> u32 {
    crc32c_le(!0, &sb[..CHECKSUM])
}

/// Whether block group `g` holds a superblock copy (`ext2fs_bg_has_super`).
fn has_super(sb: &[u8], g: u64) -> bool {
    if g == 0 {
        return true;
    }
    if u32_at(sb, FEATURE_COMPAT) & COMPAT_SPARSE_SUPER2 != 0 {
        let bgs = [u32_at(sb, BACKUP_BGS), u32_at(sb, BACKUP_BGS + 4)];
        return bgs.iter().any(|&b| u64::from(b) == g);
    }
    if g <= 1 || u32_at(sb, FEATURE_RO_COMPAT) & RO_COMPAT_SPARSE_SUPER == 0 {
        return true;
    }
    if g % 2 == 0 {
        return false;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut p = base;
        while p < g {
            p *= base;
        }
        p == g
    })
}

/// The group and byte offset (from the filesystem's start) of every superblock copy, primary
/// first, read from the primary superblock `sb`.
pub fn superblock_copies(sb: &[u8]) -> anyhow::Result<Vec<(u64, u64)>> {
    if u16_at(sb, MAGIC) != EXT4_MAGIC {
        bail!("no ext4 superblock (magic {:#06x})", u16_at(sb, MAGIC));
    }
    let log = u32_at(sb, LOG_BLOCK_SIZE);
    if log > 6 {
        bail!("ext4 block size 1024 << {log} is out of range");
    }
    let block = 1024u64 << log;
    let first = u64::from(u32_at(sb, FIRST_DATA_BLOCK));
    let per_group = u64::from(u32_at(sb, BLOCKS_PER_GROUP));
    let mut blocks = u64::from(u32_at(sb, BLOCKS_COUNT_LO));
    if u32_at(sb, FEATURE_INCOMPAT) & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(u32_at(sb, BLOCKS_COUNT_HI)) << 32;
    }
    if per_group == 0 || blocks <= first {
        bail!("ext4 superblock: {blocks} blocks, {per_group} per group");
    }
    let groups = (blocks - first).div_ceil(per_group);
    let mut out = vec![(0, 1024)];
    out.extend(
        (1..groups).filter(|&g| has_super(sb, g)).map(|g| (g, (first + g * per_group) * block)),
    );
    Ok(out)
}

/// Zeroes `s_kbytes_written` in every superblock copy of the ext4 filesystem at `offset` of
/// `image` and redoes each copy's checksum (with `metadata_csum`). Returns how many copies it
/// rewrote. Every copy is read and checked first; nothing is written if one does not look
/// like a copy of the primary.
pub fn zero_lifetime_writes(image: &Path, offset: u64) -> anyhow::Result<usize> {
    let ctx = || format!("ext4 superblocks at offset {offset} of {}", image.display());
    let mut f = fs::OpenOptions::new().read(true).write(true).open(image).with_context(ctx)?;
    let read_at = |f: &mut fs::File, at: u64| -> std::io::Result<Vec<u8>> {
        let mut sb = vec![0u8; SB_LEN];
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(&mut sb)?;
        Ok(sb)
    };
    let primary = read_at(&mut f, offset + 1024).with_context(ctx)?;
    let layout = superblock_copies(&primary).with_context(ctx)?;
    let mut copies = Vec::with_capacity(layout.len());
    for &(group, at) in &layout {
        let sb = read_at(&mut f, offset + at).with_context(ctx)?;
        // libext2fs writes the group into each backup (capped at 65535).
        if u16_at(&sb, MAGIC) != EXT4_MAGIC
            || u64::from(u16_at(&sb, BLOCK_GROUP_NR)) != group.min(0xFFFF)
            || superblock_copies(&sb).ok().as_ref() != Some(&layout)
        {
            bail!("{}: the copy at byte {at} (group {group}) is not a superblock copy", ctx());
        }
        copies.push((at, sb));
    }
    let n = copies.len();
    for (at, mut sb) in copies {
        sb[KBYTES_WRITTEN..KBYTES_WRITTEN + 8].fill(0);
        if u32_at(&sb, FEATURE_RO_COMPAT) & RO_COMPAT_METADATA_CSUM != 0 {
            let csum = superblock_csum(&sb);
            sb[CHECKSUM..].copy_from_slice(&csum.to_le_bytes());
        }
        f.seek(SeekFrom::Start(offset + at)).with_context(ctx)?;
        f.write_all(&sb).with_context(ctx)?;
    }
    f.sync_all().with_context(ctx)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // CRC-32C("123456789") = 0xE3069283 with the final inversion.
        assert_eq!(!crc32c_le(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn backup_groups_follow_sparse_super() {
        let mut sb = vec![0u8; SB_LEN];
        sb[FEATURE_RO_COMPAT] = RO_COMPAT_SPARSE_SUPER as u8;
        let with: Vec<u64> = (0..60).filter(|&g| has_super(&sb, g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49]);
        sb[FEATURE_COMPAT + 1] = (COMPAT_SPARSE_SUPER2 >> 8) as u8;
        sb[BACKUP_BGS..BACKUP_BGS + 4].copy_from_slice(&1u32.to_le_bytes());
        sb[BACKUP_BGS + 4..BACKUP_BGS + 8].copy_from_slice(&40u32.to_le_bytes());
        let with: Vec<u64> = (0..60).filter(|&g| has_super(&sb, g)).collect();
        assert_eq!(with, [0, 1, 40]);
    }

    fn dumpe2fs(img: &Path, args: &[&str]) -> String {
        let o = Command::new("dumpe2fs").args(args).arg(img).output().unwrap();
        assert!(o.status.success(), "dumpe2fs: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A real mkfs.ext4 (metadata_csum, sparse_super, a few groups) at an offset: our checksum
    /// equals mke2fs's on every copy; after zeroing, dumpe2fs lists the same backups and
    /// reads no lifetime writes, and e2fsck -fn finds the filesystem clean.
    #[test]
    fn zeroed_filesystem_is_clean_and_every_copy_is_rewritten() {
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        fs::create_dir_all(tree.join("d")).unwrap();
        fs::write(tree.join("d/f"), vec![7u8; 300_000]).unwrap();
        let img = t.path().join("img");
        let offset = 1 << 20;
        fs::File::create(&img).unwrap().set_len(offset + (300 << 20)).unwrap();
        let o = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-g", "4096", "-E"])
            .arg(format!("offset={offset}"))
            .arg("-d")
            .arg(&tree)
            .arg(&img)
            .arg("300M")
            .output()
            .unwrap();
        assert!(o.status.success(), "mkfs: {}", String::from_utf8_lossy(&o.stderr));
        let part = t.path().join("part");
        let cut = |img: &Path, part: &Path| {
            let data = fs::read(img).unwrap();
            fs::write(part, &data[offset as usize..]).unwrap();
        };
        cut(&img, &part);
        let data = fs::read(&part).unwrap();
        let offsets: Vec<u64> =
            superblock_copies(&data[1024..2048]).unwrap().into_iter().map(|c| c.1).collect();
        let listed = dumpe2fs(&part, &[]);
        let backups = listed.matches("Backup superblock at").count();
        assert_eq!(offsets.len(), backups + 1, "{offsets:?}");
        assert!(backups >= 5, "{backups} backups");
        for &at in &offsets {
            let sb = &data[at as usize..at as usize + SB_LEN];
            assert_eq!(superblock_csum(sb), u32_at(sb, CHECKSUM), "copy at {at}");
        }
        assert!(dumpe2fs(&part, &["-h"]).contains("Lifetime writes:"), "mkfs counted");

        assert_eq!(zero_lifetime_writes(&img, offset).unwrap(), offsets.len());
        cut(&img, &part);
        let header = dumpe2fs(&part, &["-h"]);
        assert!(!header.contains("Lifetime writes:"), "{header}");
        let data = fs::read(&part).unwrap();
        for &at in &offsets {
            let sb = &data[at as usize..at as usize + SB_LEN];
            assert_eq!(&sb[KBYTES_WRITTEN..KBYTES_WRITTEN + 8], &[0; 8], "copy at {at}");
            assert_eq!(superblock_csum(sb), u32_at(sb, CHECKSUM), "copy at {at}");
        }
        let fsck = Command::new("e2fsck").args(["-f", "-n"]).arg(&part).output().unwrap();
        assert!(fsck.status.success(), "e2fsck: {}", String::from_utf8_lossy(&fsck.stdout));
        // Each backup is the primary but for its group number and checksum (and s_state at
        // 0x3A, which libext2fs writes as "not clean" into backups).
        let primary = &data[1024..1024 + SB_LEN];
        for &at in &offsets[1..] {
            let sb = &data[at as usize..at as usize + SB_LEN];
            let differ: Vec<usize> = (0..SB_LEN).filter(|&i| sb[i] != primary[i]).collect();
            assert!(
                differ.iter().all(|&i| (BLOCK_GROUP_NR..BLOCK_GROUP_NR + 2).contains(&i)
                    || (0x3A..0x3C).contains(&i)
                    || i >= CHECKSUM),
                "copy at {at} differs at {differ:?}"
            );
        }
    }

    #[test]
    fn a_bad_backup_stops_before_any_write() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("img");
        fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
        let o = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-g", "4096"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(o.status.success());
        let mut data = fs::read(&img).unwrap();
        let copies = superblock_copies(&data[1024..2048]).unwrap();
        data[copies[2].1 as usize + MAGIC] = 0;
        fs::write(&img, &data).unwrap();
        let e = zero_lifetime_writes(&img, 0).unwrap_err();
        assert!(format!("{e:#}").contains("is not a superblock copy"), "{e:#}");
        assert_eq!(fs::read(&img).unwrap(), data, "nothing written");
        let e = zero_lifetime_writes(&t.path().join("missing"), 0).unwrap_err();
        assert!(format!("{e:#}").contains("missing"), "{e:#}");
    }
}
