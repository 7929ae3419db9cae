//! Stage 4, disk: one raw image file with a GPT (written by `gpt`), an EFI system partition
//! (mkfs.fat at an offset, files placed with mtools) holding systemd-boot, the kernel and the
//! initramfs, and the ext4 root (mkfs.ext4 -d at an offset). No loop devices, no mounts.
//!
//! With `--firmware bios` the same disk also boots from a legacy BIOS: SYSLINUX is installed
//! into the FAT ESP by its mtools installer (`syslinux --install --offset`, which writes the
//! partition's boot sector, `ldlinux.sys` and `ldlinux.c32` without mounting), `syslinux.cfg`
//! boots the very kernel, initrd and command line of the systemd-boot entry (both rendered
//! from one [`BootEntry`]), SYSLINUX's `gptmbr.bin` is the protective MBR's boot code and the
//! ESP carries the GPT "legacy BIOS bootable" attribute, which is how `gptmbr.bin` finds it.
//! systemd-boot stays in place, so a BIOS image is hybrid: it boots under UEFI as well.
//!
//! With `disk.verity` (the default) `/usr` is not in the root filesystem: it is its own
//! read-only ext4 partition, followed by its dm-verity hash tree (`crate::verity`), and the
//! boot entry carries the tree's root hash (`usrhash=`) and both partitions' PARTUUIDs. The
//! builder's initramfs opens the verity device and mounts it on `/usr` before `switch_root`;
//! the root partition (`/etc`, `/var`, the usrmerge symlinks) stays writable. Layout: ESP,
//! root, usr, usr-verity (partition types of the Discoverable Partitions Specification).
//!
//! Every identifier is derived from the stage key, and every timestamp from the epoch, so the
//! same inputs give the same bytes (mtools, which SYSLINUX's installer runs, honours
//! `SOURCE_DATE_EPOCH`).

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use uuid::Uuid;

use crate::exec;
use crate::firmware::Firmware;
use crate::gpt::{self, Gpt, Partition, SECTOR};
use crate::verity;

/// A namespace for the UUIDs the builder derives (a random constant, fixed forever).
const NAMESPACE: Uuid = Uuid::from_u128(0x6d1b3f0e_52a4_4c8e_9b7e_3a1c0f5e2d41);
const MIB: u64 = 1024 * 1024;

/// Identifiers of a built disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskIds {
    /// GPT disk GUID.
    pub disk_guid: Uuid,
    /// ESP PARTUUID.
    pub esp_partuuid: Uuid,
    /// Root PARTUUID (on the kernel command line).
    pub root_partuuid: Uuid,
    /// ext4 filesystem UUID (also the htree hash seed).
    pub root_fs_uuid: Uuid,
    /// FAT volume id.
    pub esp_volume_id: String,
    /// /usr PARTUUID (verity data device).
    pub usr_partuuid: Uuid,
    /// /usr verity PARTUUID (hash device).
    pub usr_verity_partuuid: Uuid,
    /// /usr ext4 filesystem UUID.
    pub usr_fs_uuid: Uuid,
    /// UUID in the verity superblock.
    pub verity_uuid: Uuid,
    /// The verity salt (hex, 32 bytes).
    pub verity_salt: String,
}

impl DiskIds {
    /// Derives all identifiers from a stage key.
    pub fn derive(key: &str) -> Self {
        let id = |what: &str| Uuid::new_v5(&NAMESPACE, format!("{key}/{what}").as_bytes());
        let vol = id("esp-volume-id");
        Self {
            disk_guid: id("disk"),
            esp_partuuid: id("esp"),
            root_partuuid: id("root"),
            root_fs_uuid: id("root-fs"),
            esp_volume_id: hex::encode(&vol.as_bytes()[..4]),
            usr_partuuid: id("usr"),
            usr_verity_partuuid: id("usr-verity"),
            usr_fs_uuid: id("usr-fs"),
            verity_uuid: id("usr-verity-superblock"),
            verity_salt: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                format!("{key}/usr-verity-salt").as_bytes(),
            )),
        }
    }
}

/// What the disk stage needs.
#[derive(Debug)]
pub struct DiskSpec<'a> {
    /// The sealed root tree.
    pub root: &'a Path,
    /// Kernel image.
    pub vmlinuz: &'a Path,
    /// Initramfs.
    pub initrd: &'a Path,
    /// Kernel command line without `root=`.
    pub cmdline: &'a str,
    /// Title for the boot entry.
    pub title: &'a str,
    /// Disk size.
    pub size_mib: u64,
    /// ESP size.
    pub esp_mib: u64,
    /// Timestamp for every file.
    pub epoch: u64,
    /// Firmware the disk boots from (BIOS disks boot from UEFI too).
    pub firmware: Firmware,
    /// `/usr` on its own dm-verity protected partition.
    pub verity: bool,
}

/// Sizes of the `/usr` partition and of its hash tree, in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsrSizes {
    /// The /usr filesystem.
    pub usr_mib: u64,
    /// The verity hash device.
    pub verity_mib: u64,
}

impl UsrSizes {
    /// Sizes for the tree at `usr`: room for its blocks and inodes (mkfs.ext4's default
    /// 16 KiB per inode), the journal and some slack. Unused blocks are zeros, which the
    /// VMDK and qcow2 outputs do not store.
    pub fn for_tree(usr: &Path) -> anyhow::Result<Self> {
        let (bytes, inodes) = tree_usage(usr)?;
        let by_data = bytes + bytes / 10 + 40 * MIB;
        let by_inodes = inodes * 16384 + inodes * 4096 + 16 * MIB;
        let usr_mib = by_data.max(by_inodes).div_ceil(MIB);
        let params = verity::Params {
            uuid: Uuid::nil(),
            salt: vec![0; verity::SALT_LEN],
            data_blocks: usr_mib * MIB / verity::BLOCK,
        };
        Ok(Self { usr_mib, verity_mib: params.hash_device_bytes().div_ceil(MIB) })
    }
}

/// Bytes (in 4 KiB blocks, directories included) and inodes of a tree.
fn tree_usage(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let (mut bytes, mut inodes) = (4096, 1);
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let m = e.path().symlink_metadata()?;
        inodes += 1;
        if m.is_dir() {
            let (b, i) = tree_usage(&e.path())?;
            bytes += b;
            inodes += i - 1;
        } else if m.is_file() || m.len() > 59 {
            bytes += m.len().div_ceil(4096) * 4096;
        }
    }
    Ok((bytes, inodes))
}

/// SYSLINUX's MBR boot code for GPT disks (Debian `syslinux-common`).
pub const GPTMBR: &str = "/usr/lib/syslinux/mbr/gptmbr.bin";
/// SYSLINUX's mtools-based installer (Debian `syslinux`).
pub const SYSLINUX: &str = "syslinux";
/// Directory on the ESP that holds `ldlinux.sys`, `ldlinux.c32` and `syslinux.cfg`.
pub const SYSLINUX_DIR: &str = "syslinux";
/// The kernel on the ESP, as both boot loaders name it.
pub const ESP_KERNEL: &str = "capstan/vmlinuz";
/// The initramfs on the ESP, as both boot loaders name it.
pub const ESP_INITRD: &str = "capstan/initrd.img";

/// The partition table for a disk of `size_mib` with an ESP of `esp_mib`; for BIOS the ESP is
/// marked legacy BIOS bootable. With `usr`, the /usr and /usr verity partitions follow the
/// root at the end of the disk (the root keeps its place, partition 2).
pub fn layout(
    ids: &DiskIds,
    size_mib: u64,
    esp_mib: u64,
    firmware: Firmware,
    usr: Option<UsrSizes>,
) -> Gpt {
    let sectors = size_mib * MIB / SECTOR;
    let per_mib = MIB / SECTOR;
    // The last MiB holds the backup GPT (and keeps the end aligned).
    let end = sectors - per_mib;
    let usr_sectors = usr.map_or(0, |u| (u.usr_mib + u.verity_mib) * per_mib);
    let mut table = Gpt {
        disk_guid: ids.disk_guid,
        disk_sectors: sectors,
        partitions: vec![
            Partition {
                type_guid: gpt::TYPE_ESP,
                guid: ids.esp_partuuid,
                first_lba: per_mib,
                last_lba: per_mib * (1 + esp_mib) - 1,
                attrs: match firmware {
                    Firmware::Efi => 0,
                    Firmware::Bios => gpt::ATTR_LEGACY_BIOS_BOOTABLE,
                },
                name: "ESP".into(),
            },
            Partition {
                type_guid: gpt::TYPE_ROOT_X86_64,
                guid: ids.root_partuuid,
                first_lba: per_mib * (1 + esp_mib),
                last_lba: end - usr_sectors - 1,
                attrs: 0,
                name: "root".into(),
            },
        ],
    };
    if let Some(u) = usr {
        let usr_first = end - usr_sectors;
        let verity_first = usr_first + u.usr_mib * per_mib;
        table.partitions.push(Partition {
            type_guid: gpt::TYPE_USR_X86_64,
            guid: ids.usr_partuuid,
            first_lba: usr_first,
            last_lba: verity_first - 1,
            attrs: 0,
            name: "usr".into(),
        });
        table.partitions.push(Partition {
            type_guid: gpt::TYPE_USR_VERITY_X86_64,
            guid: ids.usr_verity_partuuid,
            first_lba: verity_first,
            last_lba: end - 1,
            attrs: 0,
            name: "usr-verity".into(),
        });
    }
    table
}

/// What the boot entry needs to open a verified /usr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsrVerity {
    /// The hash tree's root hash (hex).
    pub root_hash: String,
    /// The /usr partition (data device).
    pub data_partuuid: Uuid,
    /// The hash device partition.
    pub hash_partuuid: Uuid,
}

/// Kernel command line keys for a verified /usr: systemd's names (`usrhash=`,
/// `systemd.verity_usr_data=`, `systemd.verity_usr_hash=`), read by the builder's initramfs.
pub const USRHASH: &str = "usrhash=";
/// The data device key.
pub const USR_DATA: &str = "systemd.verity_usr_data=";
/// The hash device key.
pub const USR_HASH_DEV: &str = "systemd.verity_usr_hash=";

/// The one boot entry of an image: what to boot and with which command line. systemd-boot's
/// loader entry and SYSLINUX's configuration are both rendered from it, so the two boot paths
/// cannot drift apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// Title (a comment for SYSLINUX, which shows no menu).
    pub title: String,
    /// Kernel path on the ESP, absolute (`/capstan/vmlinuz`).
    pub linux: String,
    /// Initramfs path on the ESP, absolute.
    pub initrd: String,
    /// Full kernel command line.
    pub options: String,
}

impl BootEntry {
    /// The entry for the kernel and initrd at [`ESP_KERNEL`] / [`ESP_INITRD`] with the root
    /// partition named by PARTUUID. Refuses line breaks (each format is line-based).
    pub fn new(title: &str, root_partuuid: &Uuid, cmdline: &str) -> anyhow::Result<Self> {
        for (what, v) in [("title", title), ("kernel command line", cmdline)] {
            if v.contains(['\n', '\r']) {
                anyhow::bail!("boot entry {what} {v:?} contains a line break");
            }
        }
        Ok(Self {
            title: title.to_string(),
            linux: format!("/{ESP_KERNEL}"),
            initrd: format!("/{ESP_INITRD}"),
            options: format!("root=PARTUUID={root_partuuid} rw {cmdline}").trim_end().to_string(),
        })
    }

    /// The entry with a verified /usr: its root hash and both partitions go on the command
    /// line right after `rw`.
    pub fn with_usr(mut self, usr: &UsrVerity) -> Self {
        let at = self.options.find(" rw").map_or(self.options.len(), |i| i + 3);
        self.options.insert_str(
            at,
            &format!(
                " {USRHASH}{} {USR_DATA}PARTUUID={} {USR_HASH_DEV}PARTUUID={}",
                usr.root_hash, usr.data_partuuid, usr.hash_partuuid
            ),
        );
        self
    }

    /// `loader/entries/capstan.conf` for systemd-boot.
    pub fn systemd_boot(&self) -> String {
        format!(
            "title {}\nlinux {}\ninitrd {}\noptions {}\n",
            self.title, self.linux, self.initrd, self.options
        )
    }

    /// `syslinux/syslinux.cfg`: boot the entry at once, no menu, no prompt; SYSLINUX's own
    /// messages also go to the first serial port (the lab's console log).
    pub fn syslinux(&self) -> String {
        format!(
            "# {}: legacy BIOS boot. The same kernel, initrd and command line as\n\
             # /loader/entries/capstan.conf (systemd-boot, UEFI).\n\
             SERIAL 0 115200\nDEFAULT capstan\nPROMPT 0\nTIMEOUT 0\nNOESCAPE 1\n\n\
             LABEL capstan\n  LINUX {}\n  INITRD {}\n  APPEND {}\n",
            self.title, self.linux, self.initrd, self.options
        )
    }
}

/// What the BIOS boot path depends on outside the image, for the disk stage's cache key:
/// digests of the SYSLINUX installer (it carries `ldlinux.sys`/`ldlinux.c32`) and of
/// `gptmbr.bin`. `None` for UEFI-only disks.
pub fn bootloader_key(firmware: Firmware) -> anyhow::Result<Option<String>> {
    match firmware {
        Firmware::Efi => Ok(None),
        Firmware::Bios => {
            let installer = which(SYSLINUX)?;
            let mbr = gptmbr()?;
            Ok(Some(format!(
                "syslinux={} gptmbr={}",
                crate::cache::file_sha256(&installer)?,
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&mbr))
            )))
        }
    }
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file()).with_context(|| {
        format!(
            "{program} is not installed: --firmware bios needs the Debian packages syslinux \
             and syslinux-common (scripts/setup)"
        )
    })
}

/// The 440 bytes of `gptmbr.bin`.
fn gptmbr() -> anyhow::Result<Vec<u8>> {
    let code = fs::read(GPTMBR).with_context(|| {
        format!("reading {GPTMBR}: --firmware bios needs the Debian package syslinux-common")
    })?;
    if code.len() != gpt::MBR_BOOT_CODE {
        anyhow::bail!(
            "{GPTMBR} is {} bytes, expected {} (MBR boot code)",
            code.len(),
            gpt::MBR_BOOT_CODE
        );
    }
    Ok(code)
}

/// What the disk stage does beyond its inputs, in its cache key: changed when the same inputs
/// give other bytes (here: the ext4 superblocks' lifetime-writes counter zeroed).
pub const RECIPE: &str = "2026-12-03.1 ext4 s_kbytes_written zeroed";

/// systemd-boot's loader configuration: no menu, no editor.
pub const LOADER_CONF: &str = "default capstan.conf\ntimeout 0\neditor no\nconsole-mode keep\n";

/// Builds `out/disk.raw`.
pub fn run(spec: &DiskSpec<'_>, ids: &DiskIds, out: &Path) -> anyhow::Result<PathBuf> {
    let usr = match spec.verity {
        true => Some(UsrSizes::for_tree(&spec.root.join("usr"))?),
        false => None,
    };
    let table = layout(ids, spec.size_mib, spec.esp_mib, spec.firmware, usr);
    table.validate().map_err(|e| anyhow::anyhow!("disk layout: {e}"))?;
    let boot_code = match spec.firmware {
        Firmware::Efi => None,
        Firmware::Bios => Some(gptmbr()?),
    };
    let raw = out.join("disk.raw");
    {
        let mut f = fs::File::create(&raw)?;
        f.set_len(spec.size_mib * MIB)?;
        f.write_all(&table.primary(boot_code.as_deref()))?;
        f.seek(SeekFrom::Start(table.backup_offset()))?;
        f.write_all(&table.backup())?;
        f.sync_all()?;
    }
    let esp = &table.partitions[0];
    let root = &table.partitions[1];
    let usr = match table.partitions.get(2..4) {
        Some([usr, hash]) => Some(make_usr(spec, ids, &raw, usr, hash)?),
        _ => None,
    };
    make_root(spec, ids, &raw, root, usr.is_some(), out)?;
    make_esp(spec, ids, &raw, esp, out, usr.as_ref())?;
    Ok(raw)
}

/// Makes the /usr filesystem from the tree's `usr` and writes its hash tree into the next
/// partition; returns what the boot entry needs.
fn make_usr(
    spec: &DiskSpec<'_>,
    ids: &DiskIds,
    raw: &Path,
    usr: &Partition,
    hash: &Partition,
) -> anyhow::Result<UsrVerity> {
    let tree = spec.root.join("usr");
    mkfs_ext4(spec.epoch, &tree, raw, usr, "capstan-usr", &ids.usr_fs_uuid)
        .context("making the /usr filesystem")?;
    finish_ext4(&tree, spec.epoch, raw, usr.first_lba * SECTOR)?;
    let usr_bytes = (usr.last_lba - usr.first_lba + 1) * SECTOR;
    let params = verity::Params {
        uuid: ids.verity_uuid,
        salt: hex::decode(&ids.verity_salt).expect("hex from DiskIds::derive"),
        data_blocks: usr_bytes / verity::BLOCK,
    };
    let mut f = fs::OpenOptions::new().read(true).write(true).open(raw)?;
    f.seek(SeekFrom::Start(usr.first_lba * SECTOR))?;
    let tree = verity::format(&params, &mut std::io::BufReader::with_capacity(1 << 20, &mut f))
        .context("making the /usr hash tree")?;
    let room = (hash.last_lba - hash.first_lba + 1) * SECTOR;
    if tree.hash_device.len() as u64 > room {
        anyhow::bail!(
            "the /usr hash tree ({} bytes) does not fit its partition ({room})",
            tree.hash_device.len()
        );
    }
    f.seek(SeekFrom::Start(hash.first_lba * SECTOR))?;
    f.write_all(&tree.hash_device)?;
    f.sync_all()?;
    Ok(UsrVerity {
        root_hash: tree.root_hex(),
        data_partuuid: ids.usr_partuuid,
        hash_partuuid: ids.usr_verity_partuuid,
    })
}

fn make_esp(
    spec: &DiskSpec<'_>,
    ids: &DiskIds,
    raw: &Path,
    esp: &Partition,
    work: &Path,
    usr: Option<&UsrVerity>,
) -> anyhow::Result<()> {
    let blocks_kib = (esp.last_lba - esp.first_lba + 1) * SECTOR / 1024;
    exec::run(
        Command::new("mkfs.fat")
            .args(["-F", "32", "-s", "1", "-n", "ESP", "--invariant"])
            .arg("-i")
            .arg(&ids.esp_volume_id)
            .arg(format!("--offset={}", esp.first_lba))
            .arg(raw)
            .arg(blocks_kib.to_string()),
    )?;
    // Stage the ESP tree on disk with clamped times, then copy it in with mtools.
    let stage = work.join("esp");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    let put = |rel: &str, content: Option<&[u8]>, from: Option<&Path>| -> anyhow::Result<()> {
        let p = stage.join(rel);
        fs::create_dir_all(p.parent().expect("has parent"))?;
        match (content, from) {
            (Some(c), _) => fs::write(&p, c)?,
            (None, Some(src)) => {
                fs::copy(src, &p).with_context(|| format!("copying {}", src.display()))?;
            }
            _ => unreachable!("content or source"),
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644))?;
        Ok(())
    };
    let sdboot = spec.root.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    put("EFI/BOOT/BOOTX64.EFI", None, Some(&sdboot))
        .context("systemd-boot (package systemd-boot-efi in the profile)")?;
    put("loader/loader.conf", Some(LOADER_CONF.as_bytes()), None)?;
    let mut entry = BootEntry::new(spec.title, &ids.root_partuuid, spec.cmdline)?;
    if let Some(usr) = usr {
        entry = entry.with_usr(usr);
    }
    put("loader/entries/capstan.conf", Some(entry.systemd_boot().as_bytes()), None)?;
    put(ESP_KERNEL, None, Some(spec.vmlinuz))?;
    put(ESP_INITRD, None, Some(spec.initrd))?;
    let mut dirs = vec!["EFI", "loader", ESP_KERNEL.split('/').next().expect("a directory")];
    if spec.firmware == Firmware::Bios {
        put(&format!("{SYSLINUX_DIR}/syslinux.cfg"), Some(entry.syslinux().as_bytes()), None)?;
        dirs.push(SYSLINUX_DIR);
    }
    exec::run(
        Command::new("find")
            .arg(&stage)
            .args(["-exec", "touch", "-h", "-d"])
            .arg(format!("@{}", spec.epoch))
            .args(["{}", "+"]),
    )?;
    let image = format!("{}@@{}", raw.display(), esp.first_lba * SECTOR);
    for dir in dirs {
        mcopy_sorted(&image, &stage, Path::new(dir), spec.epoch)?;
    }
    fs::remove_dir_all(&stage)?;
    if spec.firmware == Firmware::Bios {
        install_syslinux(raw, esp.first_lba * SECTOR, spec.epoch)?;
    }
    Ok(())
}

/// Copies `stage/rel` (a directory) into the FAT `image` as `::/rel`, one entry at a time in
/// byte order of the names: `mcopy -s` would follow the staging filesystem's readdir order,
/// which decides the FAT's directory entries and cluster allocation (tmpfs and ext4 differ).
fn mcopy_sorted(image: &str, stage: &Path, rel: &Path, epoch: u64) -> anyhow::Result<()> {
    let mtools = |tool: &str| {
        let mut c = Command::new(tool);
        // FAT times are local times: mtools converts the epoch with TZ.
        c.env("MTOOLS_SKIP_CHECK", "1")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .env("TZ", "UTC");
        c
    };
    exec::run(mtools("mmd").args(["-i", image]).arg(format!("::/{}", rel.display())))?;
    let mut entries: Vec<_> = fs::read_dir(stage.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let rel = rel.join(e.file_name());
        if e.file_type()?.is_dir() {
            mcopy_sorted(image, stage, &rel, epoch)?;
        } else {
            exec::run(
                mtools("mcopy")
                    .args(["-m", "-Q", "-i", image])
                    .arg(e.path())
                    .arg(format!("::/{}", rel.display())),
            )?;
        }
    }
    Ok(())
}

/// Installs SYSLINUX into the FAT at `offset` of `raw`: the partition boot sector (keeping the
/// BPB mkfs.fat wrote) and `ldlinux.sys`/`ldlinux.c32` in [`SYSLINUX_DIR`], written through
/// mtools, so no loop device or mount is involved. The files get the epoch as their time
/// (mtools reads `SOURCE_DATE_EPOCH`); ldlinux.sys's sector map depends only on the FAT's
/// allocation, which is the same for the same inputs.
fn install_syslinux(raw: &Path, offset: u64, epoch: u64) -> anyhow::Result<()> {
    let installer = which(SYSLINUX)?;
    exec::run(
        Command::new(installer)
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("TZ", "UTC")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .arg("--install")
            .arg("--offset")
            .arg(offset.to_string())
            .arg("--directory")
            .arg(format!("/{SYSLINUX_DIR}"))
            .arg(raw),
    )
    .context("installing SYSLINUX into the ESP (BIOS boot)")
}

/// The root filesystem; with a separate /usr, from a copy of the tree without /usr's
/// contents (an empty /usr is the mount point).
fn make_root(
    spec: &DiskSpec<'_>,
    ids: &DiskIds,
    raw: &Path,
    root: &Partition,
    usr_apart: bool,
    work: &Path,
) -> anyhow::Result<()> {
    let stage = work.join("root-without-usr");
    let tree = match usr_apart {
        true => {
            stage_without_usr(spec.root, &stage, spec.epoch)?;
            stage.as_path()
        }
        false => spec.root,
    };
    mkfs_ext4(spec.epoch, tree, raw, root, "capstan-root", &ids.root_fs_uuid)
        .context("making the root filesystem")?;
    finish_ext4(tree, spec.epoch, raw, root.first_lba * SECTOR)?;
    if usr_apart {
        fs::remove_dir_all(&stage)?;
    }
    Ok(())
}

/// Copies `root` but /usr's contents to `stage` (`cp -a`: owners, modes, times, xattrs); the
/// empty /usr keeps its mode and gets the epoch's time, as the stage's top does.
fn stage_without_usr(root: &Path, stage: &Path, epoch: u64) -> anyhow::Result<()> {
    if stage.exists() {
        fs::remove_dir_all(stage)?;
    }
    fs::create_dir(stage)?;
    let mut entries: Vec<_> = fs::read_dir(root)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries.iter().filter(|e| e.file_name() != "usr") {
        exec::run(Command::new("cp").arg("-a").arg(e.path()).arg(stage))
            .with_context(|| format!("copying {} for the root filesystem", e.path().display()))?;
    }
    fs::create_dir(stage.join("usr"))?;
    for (dir, from) in
        [(stage.join("usr"), root.join("usr")), (stage.to_path_buf(), root.to_path_buf())]
    {
        fs::set_permissions(&dir, fs::metadata(&from)?.permissions())?;
        exec::run(Command::new("touch").arg("-h").arg("-d").arg(format!("@{epoch}")).arg(&dir))?;
    }
    Ok(())
}

/// `mkfs.ext4 -d TREE` into `part` of `raw`: every id and time from the inputs.
fn mkfs_ext4(
    epoch: u64,
    tree: &Path,
    raw: &Path,
    part: &Partition,
    label: &str,
    fs_uuid: &Uuid,
) -> anyhow::Result<()> {
    let size_kib = (part.last_lba - part.first_lba + 1) * SECTOR / 1024;
    let uuid = fs_uuid.to_string();
    // mkfs.ext4 -d (1.47.0) reads each directory with scandir(3) and alphasort, which
    // collates by LC_COLLATE: pinned to C, so the entries are added in byte order whatever
    // the host's locale or its filesystem's readdir order (tested in
    // `tests::disk_does_not_depend_on_the_readdir_order_of_the_tree`).
    exec::run(
        Command::new("mkfs.ext4")
            .env("LC_ALL", "C")
            .env("TZ", "UTC")
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .args(["-q", "-F", "-b", "4096", "-I", "256", "-m", "1"])
            .args(["-L", label, "-U", &uuid])
            .arg("-E")
            .arg(format!(
                "offset={},hash_seed={uuid},root_owner=0:0,lazy_itable_init=0,nodiscard",
                part.first_lba * SECTOR
            ))
            .arg("-d")
            .arg(tree)
            .arg(raw)
            .arg(format!("{size_kib}k")),
    )
}

/// The last writes to the ext4 filesystem made from `tree` at `offset`: inode times, then
/// the superblocks' lifetime-writes counter (see [`super::ext4`]).
fn finish_ext4(tree: &Path, epoch: u64, raw: &Path, offset: u64) -> anyhow::Result<()> {
    fix_times(tree, epoch, raw, offset)?;
    super::ext4::zero_lifetime_writes(raw, offset)?;
    Ok(())
}

/// mkfs.ext4 -d copies atime and ctime from the source tree, and neither can be set there
/// (reading a file bumps its atime, any change bumps its ctime): set both to the epoch in the
/// built filesystem with debugfs, for every path of the tree.
fn fix_times(tree: &Path, epoch: u64, raw: &Path, offset: u64) -> anyhow::Result<()> {
    let mut paths = Vec::new();
    collect_paths(tree, tree, &mut paths)?;
    let mut script = String::with_capacity(paths.len() * 80);
    let e = epoch;
    for p in &paths {
        if p.contains('"') || p.contains('\n') {
            anyhow::bail!("path {p:?} in the root cannot be passed to debugfs");
        }
        script.push_str(&format!("sif \"{p}\" atime @{e}\nsif \"{p}\" ctime @{e}\n"));
    }
    let cmds = raw.with_extension("debugfs");
    fs::write(&cmds, script)?;
    exec::run(
        Command::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", e.to_string())
            .arg("-w")
            .arg("-f")
            .arg(&cmds)
            .arg(format!("{}?offset={offset}", raw.display())),
    )
    .context("clamping inode times with debugfs")?;
    fs::remove_file(cmds)?;
    Ok(())
}

fn collect_paths(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    if dir == root {
        out.push("/".into());
    }
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        out.push(format!("/{}", path.strip_prefix(root).expect("under root").display()));
        if e.file_type()?.is_dir() {
            collect_paths(root, &path, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = DiskIds::derive("k1");
        let b = DiskIds::derive("k1");
        let c = DiskIds::derive("k2");
        assert_eq!(a.root_partuuid, b.root_partuuid);
        assert_ne!(a.root_partuuid, c.root_partuuid);
        assert_ne!(a.root_partuuid, a.esp_partuuid);
        assert_eq!(a.esp_volume_id.len(), 8);
    }

    #[test]
    fn layout_is_aligned_and_valid() {
        let ids = DiskIds::derive("k");
        let g = layout(&ids, 4096, 64, Firmware::Efi, None);
        g.validate().unwrap();
        assert_eq!(g.partitions[0].attrs, 0);
        let b = layout(&ids, 4096, 64, Firmware::Bios, None);
        assert_eq!(b.partitions[0].attrs, gpt::ATTR_LEGACY_BIOS_BOOTABLE);
        assert_eq!(b.partitions[1].attrs, 0);
        assert_eq!(g.partitions[0].first_lba, 2048);
        assert_eq!(g.partitions[1].first_lba % 2048, 0);
        assert_eq!((g.partitions[1].last_lba + 1) % 2048, 0);
        // With /usr apart: the root stays partition 2, /usr and its tree end the disk.
        let usr = UsrSizes { usr_mib: 300, verity_mib: 3 };
        let v = layout(&ids, 4096, 64, Firmware::Efi, Some(usr));
        v.validate().unwrap();
        let names: Vec<&str> = v.partitions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ESP", "root", "usr", "usr-verity"]);
        assert_eq!(v.partitions[2].type_guid, gpt::TYPE_USR_X86_64);
        assert_eq!(v.partitions[3].type_guid, gpt::TYPE_USR_VERITY_X86_64);
        assert_eq!((v.partitions[2].last_lba - v.partitions[2].first_lba + 1) * SECTOR, 300 * MIB);
        assert_eq!(v.partitions[3].last_lba, g.partitions[1].last_lba);
        assert_eq!(v.partitions[1].first_lba, g.partitions[1].first_lba);
        assert_eq!(v.partitions[2].first_lba, v.partitions[1].last_lba + 1);
    }

    #[test]
    fn usr_entry_adds_the_root_hash_and_both_partitions_after_rw() {
        let u = Uuid::from_u128(7);
        let usr = UsrVerity {
            root_hash: "ab".repeat(32),
            data_partuuid: Uuid::from_u128(8),
            hash_partuuid: Uuid::from_u128(9),
        };
        let e = BootEntry::new("t", &u, "console=ttyS0 quiet").unwrap().with_usr(&usr);
        assert_eq!(
            e.options,
            format!(
                "root=PARTUUID=00000000-0000-0000-0000-000000000007 rw usrhash={} \
                 systemd.verity_usr_data=PARTUUID=00000000-0000-0000-0000-000000000008 \
                 systemd.verity_usr_hash=PARTUUID=00000000-0000-0000-0000-000000000009 \
                 console=ttyS0 quiet",
                "ab".repeat(32)
            )
        );
        assert!(e.syslinux().contains(&format!("APPEND {}\n", e.options)));
    }

    #[test]
    fn entry_names_the_root_partition() {
        let u = Uuid::from_u128(7);
        let e = BootEntry::new("Capstan lb", &u, "quiet").unwrap().systemd_boot();
        assert!(e.contains("options root=PARTUUID=00000000-0000-0000-0000-000000000007 rw quiet\n"));
    }

    #[test]
    fn both_loaders_boot_the_same_entry() {
        let u = Uuid::from_u128(7);
        let e = BootEntry::new("Capstan LB 0.1.0", &u, "console=ttyS0,115200 quiet").unwrap();
        assert_eq!(
            e.systemd_boot(),
            "title Capstan LB 0.1.0\n\
             linux /capstan/vmlinuz\n\
             initrd /capstan/initrd.img\n\
             options root=PARTUUID=00000000-0000-0000-0000-000000000007 rw console=ttyS0,115200 quiet\n"
        );
        assert_eq!(
            e.syslinux(),
            "# Capstan LB 0.1.0: legacy BIOS boot. The same kernel, initrd and command line as\n\
             # /loader/entries/capstan.conf (systemd-boot, UEFI).\n\
             SERIAL 0 115200\n\
             DEFAULT capstan\n\
             PROMPT 0\n\
             TIMEOUT 0\n\
             NOESCAPE 1\n\
             \n\
             LABEL capstan\n\
             \x20 LINUX /capstan/vmlinuz\n\
             \x20 INITRD /capstan/initrd.img\n\
             \x20 APPEND root=PARTUUID=00000000-0000-0000-0000-000000000007 rw console=ttyS0,115200 quiet\n"
        );
    }

    /// A small disk from a fake root: the real mkfs, mtools and SYSLINUX installer.
    fn small_disk(firmware: Firmware, t: &Path, out: &str) -> PathBuf {
        small_disk_with(firmware, false, t, out)
    }

    fn small_disk_with(firmware: Firmware, verity: bool, t: &Path, out: &str) -> PathBuf {
        let root = t.join("root");
        let efi = root.join("usr/lib/systemd/boot/efi");
        if !efi.exists() {
            fs::create_dir_all(&efi).unwrap();
            fs::write(efi.join("systemd-bootx64.efi"), b"MZ not really systemd-boot").unwrap();
            fs::create_dir_all(root.join("etc")).unwrap();
            fs::write(root.join("etc/hostname"), b"capstan\n").unwrap();
            fs::write(t.join("vmlinuz"), vec![0x4b; 300_000]).unwrap();
            fs::write(t.join("initrd.img"), vec![0x1f; 100_000]).unwrap();
        }
        let out = t.join(out);
        fs::create_dir_all(&out).unwrap();
        let spec = DiskSpec {
            root: &root,
            vmlinuz: &t.join("vmlinuz"),
            initrd: &t.join("initrd.img"),
            cmdline: "console=ttyS0,115200 quiet",
            title: "Capstan test 1.0",
            size_mib: 160,
            esp_mib: 40,
            epoch: 1_767_225_600,
            firmware,
            verity,
        };
        run(&spec, &DiskIds::derive("unit-test"), &out).unwrap()
    }

    fn mtools(args: &[&str], raw: &Path) -> String {
        let mut cmd = Command::new(args[0]);
        cmd.env("MTOOLS_SKIP_CHECK", "1")
            .args(&args[1..args.len() - 1])
            .arg("-i")
            .arg(format!("{}@@{}", raw.display(), MIB))
            .arg(args[args.len() - 1]);
        exec::output(&mut cmd).unwrap()
    }

    #[test]
    fn bios_disk_is_hybrid_and_the_same_bytes_every_time() {
        let t = tempfile::tempdir().unwrap();
        let a = small_disk(Firmware::Bios, t.path(), "a");
        // FAT times have a 2 s resolution: a clock leaking into the FAT would show.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let b = small_disk(Firmware::Bios, t.path(), "b");
        assert_eq!(
            crate::cache::file_sha256(&a).unwrap(),
            crate::cache::file_sha256(&b).unwrap(),
            "two BIOS disks from the same inputs differ"
        );
        let bytes = fs::read(&a).unwrap();
        assert_eq!(&bytes[..gpt::MBR_BOOT_CODE], &gptmbr().unwrap()[..]);
        let parts = gpt::read(&bytes[..(64 * SECTOR) as usize]).unwrap();
        assert_eq!(parts[0].attrs, gpt::ATTR_LEGACY_BIOS_BOOTABLE);
        let listing = mtools(&["mdir", "-a", "-b", "::/syslinux"], &a).to_lowercase();
        for f in ["ldlinux.sys", "ldlinux.c32", "syslinux.cfg"] {
            assert!(listing.contains(f), "{f} missing:\n{listing}");
        }
        let cfg = mtools(&["mtype", "::/syslinux/syslinux.cfg"], &a);
        let entry = mtools(&["mtype", "::/loader/entries/capstan.conf"], &a);
        let ids = DiskIds::derive("unit-test");
        let e =
            BootEntry::new("Capstan test 1.0", &ids.root_partuuid, "console=ttyS0,115200 quiet")
                .unwrap();
        assert_eq!(cfg, e.syslinux());
        assert_eq!(entry, e.systemd_boot());
        // Hybrid: systemd-boot and the kernel the entries name are there too.
        mtools(&["mdir", "-b", "::/EFI/BOOT/BOOTX64.EFI"], &a);
        mtools(&["mdir", "-b", &format!("::/{ESP_KERNEL}")], &a);
        // The ESP's boot sector is SYSLINUX's now, with mkfs.fat's FAT32 BPB kept.
        let vbr = &bytes[MIB as usize..MIB as usize + 512];
        assert_eq!(&vbr[82..90], b"FAT32   ");
        assert_eq!(&vbr[510..512], &[0x55, 0xAA]);
    }

    /// A root tree with many names in one directory, made in `order` (on tmpfs the readdir
    /// order is the creation order; on ext4 it is the htree's hash order).
    fn tree_in(base: &Path, order: &[String]) -> PathBuf {
        let root = base.join("root");
        let efi = root.join("usr/lib/systemd/boot/efi");
        fs::create_dir_all(&efi).unwrap();
        fs::write(efi.join("systemd-bootx64.efi"), b"MZ not really systemd-boot").unwrap();
        let d = root.join("usr/share/many");
        fs::create_dir_all(&d).unwrap();
        for n in order {
            fs::write(d.join(n), n.repeat(20)).unwrap();
        }
        fs::hard_link(d.join("a000"), root.join("usr/share/a-hard-link")).unwrap();
        // vmlinuz and initrd in this filesystem too (the ESP's staging follows them there).
        fs::write(base.join("vmlinuz"), vec![0x4b; 300_000]).unwrap();
        fs::write(base.join("initrd.img"), vec![0x1f; 100_000]).unwrap();
        exec::run(Command::new("find").arg(base).args([
            "-exec",
            "touch",
            "-h",
            "-d",
            "@1767225600",
            "{}",
            "+",
        ]))
        .unwrap();
        root
    }

    fn disk_of(base: &Path, root: &Path) -> PathBuf {
        let out = base.join("out");
        fs::create_dir_all(&out).unwrap();
        let spec = DiskSpec {
            root,
            vmlinuz: &base.join("vmlinuz"),
            initrd: &base.join("initrd.img"),
            cmdline: "quiet",
            title: "Capstan test 1.0",
            size_mib: 80,
            esp_mib: 40,
            epoch: 1_767_225_600,
            firmware: Firmware::Efi,
            // One ext4 root (the verity layout's ext4 /usr comes from the same mkfs_ext4).
            verity: false,
        };
        run(&spec, &DiskIds::derive("unit-test"), &out).unwrap()
    }

    fn readdir_order(dir: &Path) -> Vec<String> {
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
    }

    /// The same tree on ext4 and on tmpfs, made in opposite orders (so the two filesystems
    /// list it in different orders) and under a different locale: the same disk bytes.
    #[test]
    fn disk_does_not_depend_on_the_readdir_order_of_the_tree() {
        let mut names: Vec<String> =
            (0..200).map(|i| format!("{}{i:03}", ["a", "B", "_c", "Z-", "z."][i % 5])).collect();
        let on_disk = tempfile::tempdir().unwrap();
        let a = tree_in(on_disk.path(), &names);
        names.reverse();
        let shm = Path::new("/dev/shm");
        assert!(shm.is_dir(), "/dev/shm (tmpfs) is needed for a second readdir order");
        let on_tmpfs = tempfile::tempdir_in(shm).unwrap();
        let b = tree_in(on_tmpfs.path(), &names);
        let (oa, ob) =
            (readdir_order(&a.join("usr/share/many")), readdir_order(&b.join("usr/share/many")));
        assert_ne!(oa, ob, "the test needs two different readdir orders");
        let (da, db) = (disk_of(on_disk.path(), &a), disk_of(on_tmpfs.path(), &b));
        let same =
            crate::cache::file_sha256(&da).unwrap() == crate::cache::file_sha256(&db).unwrap();
        assert!(same, "the same tree in another readdir order gave other bytes");
        // And the directory lists its entries in byte order (mkfs.ext4's scandir+alphasort
        // under LC_ALL=C), not in either readdir order.
        let ls = exec::output(
            Command::new("debugfs").arg("-R").arg("ls -p /usr/share/many").arg(format!(
                "{}?offset={}",
                da.display(),
                (1 + 40) * MIB
            )),
        )
        .unwrap();
        let listed: Vec<&str> = ls
            .lines()
            .filter_map(|l| l.split('/').nth(5))
            .filter(|n| !n.starts_with('.'))
            .collect();
        let mut sorted = listed.clone();
        sorted.sort_unstable();
        assert_eq!(listed.len(), 200, "{ls}");
        assert_eq!(listed, sorted);
    }

    #[test]
    fn efi_disk_has_no_bios_boot_path() {
        let t = tempfile::tempdir().unwrap();
        let raw = small_disk(Firmware::Efi, t.path(), "efi");
        let bytes = fs::read(&raw).unwrap();
        assert!(bytes[..gpt::MBR_BOOT_CODE].iter().all(|&b| b == 0));
        assert_eq!(gpt::read(&bytes[..(64 * SECTOR) as usize]).unwrap()[0].attrs, 0);
        let root = mtools(&["mdir", "-a", "-b", "::/"], &raw).to_lowercase();
        assert!(!root.contains("syslinux"), "{root}");
        assert!(!root.contains("ldlinux"), "{root}");
    }

    #[test]
    fn line_breaks_cannot_reach_the_loader_configs() {
        let u = Uuid::from_u128(7);
        let err = BootEntry::new("t", &u, "quiet\nLABEL evil").unwrap_err();
        assert!(err.to_string().contains("kernel command line"), "{err}");
        assert!(BootEntry::new("t\r", &u, "quiet").is_err());
    }

    /// The usr and usr-verity partitions of `raw`, copied into files (veritysetup reads
    /// files), and the options of its systemd-boot entry.
    fn usr_parts(raw: &Path, t: &Path) -> (PathBuf, PathBuf, String) {
        let bytes = fs::read(raw).unwrap();
        let parts = gpt::read(&bytes[..(64 * SECTOR) as usize]).unwrap();
        let cut = |p: &Partition, name: &str| {
            let f = t.join(name);
            fs::write(
                &f,
                &bytes[(p.first_lba * SECTOR) as usize..((p.last_lba + 1) * SECTOR) as usize],
            )
            .unwrap();
            f
        };
        let entry = mtools(&["mtype", "::/loader/entries/capstan.conf"], raw);
        let options = entry.lines().find_map(|l| l.strip_prefix("options ")).unwrap().to_string();
        (cut(&parts[2], "usr.img"), cut(&parts[3], "usr-verity.img"), options)
    }

    #[test]
    fn verity_disk_has_usr_apart_and_veritysetup_accepts_its_tree() {
        let t = tempfile::tempdir().unwrap();
        let a = small_disk_with(Firmware::Bios, true, t.path(), "a");
        let b = small_disk_with(Firmware::Bios, true, t.path(), "b");
        assert_eq!(
            crate::cache::file_sha256(&a).unwrap(),
            crate::cache::file_sha256(&b).unwrap(),
            "two verity disks from the same inputs differ"
        );
        let (usr, hash, options) = usr_parts(&a, t.path());
        let ids = DiskIds::derive("unit-test");
        let root_hash = options
            .split_whitespace()
            .find_map(|w| w.strip_prefix(USRHASH))
            .expect("usrhash= in the entry")
            .to_string();
        assert!(options.contains(&format!("{USR_DATA}PARTUUID={}", ids.usr_partuuid)), "{options}");
        assert!(options.contains(&format!("{USR_HASH_DEV}PARTUUID={}", ids.usr_verity_partuuid)));
        let cfg = mtools(&["mtype", "::/syslinux/syslinux.cfg"], &a);
        assert!(cfg.contains(&format!("APPEND {options}\n")), "{cfg}");
        let verify = |data: &Path| {
            Command::new("veritysetup")
                .arg("verify")
                .arg(data)
                .arg(&hash)
                .arg(&root_hash)
                .output()
                .expect("veritysetup is needed for this test (cryptsetup-bin, scripts/setup)")
        };
        let o = verify(&usr);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // /usr's files are in the usr filesystem, and the root's /usr is an empty directory.
        let ls = |img: String, dir: &str| {
            exec::output(Command::new("debugfs").arg("-R").arg(format!("ls -p {dir}")).arg(img))
                .unwrap()
        };
        let usr_ls = ls(usr.display().to_string(), "/lib/systemd/boot/efi");
        assert!(usr_ls.contains("systemd-bootx64.efi"), "{usr_ls}");
        let bytes = fs::read(&a).unwrap();
        let parts = gpt::read(&bytes[..(64 * SECTOR) as usize]).unwrap();
        let root = format!("{}?offset={}", a.display(), parts[1].first_lba * SECTOR);
        let root_usr = ls(root.clone(), "/usr");
        assert!(!root_usr.contains("lib"), "{root_usr}");
        assert!(ls(root, "/etc").contains("hostname"));
        // One flipped byte in the /usr filesystem: veritysetup and our check refuse it.
        let mut data = fs::read(&usr).unwrap();
        data[5 * 4096 + 17] ^= 0x01;
        fs::write(&usr, &data).unwrap();
        assert!(!verify(&usr).status.success(), "veritysetup accepted a changed /usr");
        let e = verity::verify(&fs::read(&hash).unwrap(), &mut data.as_slice(), &root_hash)
            .unwrap_err();
        assert!(matches!(e, verity::VerityError::DataBlock { block: 5, .. }), "{e}");
    }
}
