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

use super::exec;
use super::gpt::{self, Gpt, Partition, SECTOR};
use super::Firmware;

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
/// marked legacy BIOS bootable.
pub fn layout(ids: &DiskIds, size_mib: u64, esp_mib: u64, firmware: Firmware) -> Gpt {
    let sectors = size_mib * MIB / SECTOR;
    let per_mib = MIB / SECTOR;
    Gpt {
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
                // The last MiB holds the backup GPT (and keeps the end aligned).
                last_lba: sectors - per_mib - 1,
                attrs: 0,
                name: "root".into(),
            },
        ],
    }
}

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
                super::cache::file_sha256(&installer)?,
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

/// systemd-boot's loader configuration: no menu, no editor.
pub const LOADER_CONF: &str = "default capstan.conf\ntimeout 0\neditor no\nconsole-mode keep\n";

/// Builds `out/disk.raw`.
pub fn run(spec: &DiskSpec<'_>, ids: &DiskIds, out: &Path) -> anyhow::Result<PathBuf> {
    let table = layout(ids, spec.size_mib, spec.esp_mib, spec.firmware);
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
    make_esp(spec, ids, &raw, esp, out)?;
    make_root(spec, ids, &raw, root)?;
    Ok(raw)
}

fn make_esp(
    spec: &DiskSpec<'_>,
    ids: &DiskIds,
    raw: &Path,
    esp: &Partition,
    work: &Path,
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
    let entry = BootEntry::new(spec.title, &ids.root_partuuid, spec.cmdline)?;
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
        exec::run(
            Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .env("SOURCE_DATE_EPOCH", spec.epoch.to_string())
                .args(["-s", "-m", "-Q", "-i", &image])
                .arg(stage.join(dir))
                .arg("::/"),
        )?;
    }
    fs::remove_dir_all(&stage)?;
    if spec.firmware == Firmware::Bios {
        install_syslinux(raw, esp.first_lba * SECTOR, spec.epoch)?;
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

fn make_root(
    spec: &DiskSpec<'_>,
    ids: &DiskIds,
    raw: &Path,
    root: &Partition,
) -> anyhow::Result<()> {
    let size_kib = (root.last_lba - root.first_lba + 1) * SECTOR / 1024;
    let uuid = ids.root_fs_uuid.to_string();
    exec::run(
        Command::new("mkfs.ext4")
            .env("E2FSPROGS_FAKE_TIME", spec.epoch.to_string())
            .env("SOURCE_DATE_EPOCH", spec.epoch.to_string())
            .args(["-q", "-F", "-b", "4096", "-I", "256", "-m", "1"])
            .args(["-L", "capstan-root", "-U", &uuid])
            .arg("-E")
            .arg(format!(
                "offset={},hash_seed={uuid},root_owner=0:0,lazy_itable_init=0,nodiscard",
                root.first_lba * SECTOR
            ))
            .arg("-d")
            .arg(spec.root)
            .arg(raw)
            .arg(format!("{size_kib}k")),
    )
    .context("making the root filesystem")?;
    fix_times(spec, raw, root.first_lba * SECTOR)
}

/// mkfs.ext4 -d copies atime and ctime from the source tree, and neither can be set there
/// (reading a file bumps its atime, any change bumps its ctime): set both to the epoch in the
/// built filesystem with debugfs, for every path of the tree.
fn fix_times(spec: &DiskSpec<'_>, raw: &Path, offset: u64) -> anyhow::Result<()> {
    let mut paths = Vec::new();
    collect_paths(spec.root, spec.root, &mut paths)?;
    let mut script = String::with_capacity(paths.len() * 80);
    let e = spec.epoch;
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
        let g = layout(&ids, 4096, 64, Firmware::Efi);
        g.validate().unwrap();
        assert_eq!(g.partitions[0].attrs, 0);
        let b = layout(&ids, 4096, 64, Firmware::Bios);
        assert_eq!(b.partitions[0].attrs, gpt::ATTR_LEGACY_BIOS_BOOTABLE);
        assert_eq!(b.partitions[1].attrs, 0);
        assert_eq!(g.partitions[0].first_lba, 2048);
        assert_eq!(g.partitions[1].first_lba % 2048, 0);
        assert_eq!((g.partitions[1].last_lba + 1) % 2048, 0);
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
            size_mib: 80,
            esp_mib: 40,
            epoch: 1_767_225_600,
            firmware,
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
            super::super::cache::file_sha256(&a).unwrap(),
            super::super::cache::file_sha256(&b).unwrap(),
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
}
