//! The appliance's own initramfs, made without a VM: the image's static busybox, the storage
//! and CD-ROM drivers in dependency order, and a small `/init` that waits for the root
//! partition named by `root=` (`PARTUUID=`, read from the GPT; `UUID=`/`LABEL=` through
//! `findfs`; or a device path), mounts it and hands over to its init with `switch_root`.
//!
//! Debian's initramfs-tools, even with `MODULES=list`, ships udev, kmod (and through it
//! libcrypto), device-mapper and blkid: 16 MB unpacked, 6.3 MB compressed. This one is about
//! 2.5 MB unpacked. No udev runs before the real root: devtmpfs creates the device nodes, and
//! udev in the real root adds its links later. The CD-ROM drivers are loaded here so that
//! `/dev/sr0` (the OVF environment) exists before the agent's first boot.
//!
//! With a verified `/usr` (`disk.verity`) it also holds dm-verity and its dependencies and
//! `capstan-veritysetup` ([`VERITYSETUP`], a static helper `capstan` carries, which loads the
//! table with the device-mapper ioctls; `image/initramfs/veritysetup.rs`): `/init` maps the
//! `/usr` partition through dm-verity with the root hash from `usrhash=`, reads its first
//! block (dm-verity checks lazily; this makes a tree that does not match the root hash stop
//! the boot here, with a message on the console) and mounts it read-only on the new root's
//! `/usr`. (The image's `dmsetup` with the libraries it links was 2.3 MB of the initramfs,
//! the helper is 0.5 MB compressed.)
//!
//! Reproducible: entries sorted by path, every mtime the build epoch, owner root, inode
//! numbers in order, `gzip -n`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use super::customize::{module_name, parse_modules_dep};

/// Where the static busybox is in the root (`busybox-static`, usrmerged).
pub const BUSYBOX: &str = "usr/bin/busybox";

/// `capstan-veritysetup`, built static by `image/build.rs` from `image/initramfs/veritysetup.rs`.
pub const VERITYSETUP: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/capstan-veritysetup"));
/// The kernel module that provides the `verity` target (its dependencies come with it).
pub const DM_VERITY: &str = "dm_verity";

/// The busybox applets `/init` calls, linked in `/bin`.
const APPLETS: &[&str] = &[
    "cat",
    "dd",
    "echo",
    "findfs",
    "insmod",
    "ls",
    "mount",
    "od",
    "readlink",
    "sh",
    "switch_root",
    "tr",
    "usleep",
];

/// The functions of `/init` that find the root; kept apart from the main part so that a test
/// can run them against a fake `/sys` and a disk file. `$sys` and `$dev` are the sysfs and
/// device directories.
pub const FIND_ROOT: &str = r#"
# partuuid PART: the GPT unique partition GUID of $dev/PART in lower case, or nothing (not a
# partition, or not on a GPT disk).
partuuid() {
	local n disk bs lba esz
	n=$(cat "$sys/class/block/$1/partition" 2>/dev/null) || return 0
	disk=$(readlink -f "$sys/class/block/$1/..") || return 0
	disk=${disk##*/}
	bs=$(cat "$sys/block/$disk/queue/logical_block_size" 2>/dev/null) || bs=512
	[ "$(dd if="$dev/$disk" bs=1 skip="$bs" count=8 2>/dev/null)" = "EFI PART" ] || return 0
	lba=$(od -A n -t u8 -j $((bs + 72)) -N 8 "$dev/$disk") || return 0
	esz=$(od -A n -t u4 -j $((bs + 84)) -N 4 "$dev/$disk") || return 0
	set -- $(od -A n -t x1 -j $((lba * bs + (n - 1) * esz + 16)) -N 16 "$dev/$disk")
	[ $# -eq 16 ] || return 0
	echo "$4$3$2$1-$6$5-$8$7-$9${10}-${11}${12}${13}${14}${15}${16}"
}

# find_root SPEC: the device node for root=SPEC if it is there yet, or nothing.
find_root() {
	local want p
	case "$1" in
	PARTUUID=*)
		want=$(echo "${1#PARTUUID=}" | tr A-F a-f)
		for p in "$sys"/class/block/*; do
			p=${p##*/}
			if [ "$(partuuid "$p")" = "$want" ]; then
				echo "$dev/$p"
				return 0
			fi
		done
		;;
	UUID=* | LABEL=*) findfs "$1" 2>/dev/null ;;
	/dev/*) [ -b "$1" ] && echo "$1" ;;
	esac
	return 0
}
"#;

/// The functions of `/init` that map and mount a verified `/usr` (kept apart, like
/// [`FIND_ROOT`], for the tests). Needs `die` and `wait_dev`.
pub const OPEN_USR: &str = r#"
# verity_table HASH DATA HASHDEV: the dm-verity table for DATA with the tree on HASHDEV
# (superblock at its start, as capstan build and veritysetup write it) and root hash HASH.
verity_table() {
	local blocks n salt
	[ "$(dd if="$3" bs=1 count=6 2>/dev/null)" = verity ] || return 1
	blocks=$(od -A n -t u8 -j 72 -N 8 "$3" | tr -d ' ')
	n=$(od -A n -t u2 -j 80 -N 2 "$3" | tr -d ' ')
	salt=$(od -A n -t x1 -j 88 -N "$n" "$3" | tr -d ' 
')
	[ -n "$blocks" ] && [ "$blocks" -gt 0 ] || return 1
	echo "0 $((blocks * 8)) verity 1 $2 $3 4096 4096 $blocks 1 sha256 $1 $salt"
}

# open_usr HASH DATASPEC HASHSPEC: maps /usr through dm-verity and mounts it read-only on
# /root/usr, or stops the boot.
open_usr() {
	local data hashdev table mapper
	case "$1" in
	"" | *[!0-9a-f]*) die "usrhash=$1 is not a lower-case hex root hash" ;;
	esac
	[ -n "$2" ] && [ -n "$3" ] || die "usrhash= needs systemd.verity_usr_data= and systemd.verity_usr_hash="
	data=$(wait_dev "$2") || exit 1
	hashdev=$(wait_dev "$3") || exit 1
	table=$(verity_table "$1" "$data" "$hashdev") || die "verity: no dm-verity superblock on $hashdev ($3): refusing to boot"
	mapper=$(capstan-veritysetup create usr "$table") && [ -b "$mapper" ] || die "verity: cannot map /usr ($data, hash tree $hashdev): refusing to boot"
	# dm-verity checks blocks when they are read: read one now, so that a tree that does not
	# match usrhash= stops the boot here and not at the first exec.
	dd if="$mapper" of=/dev/null bs=4096 count=1 2>/dev/null || die "verity: /usr ($data) does not match usrhash=$1: refusing to boot"
	mount -t ext4 -o ro "$mapper" /root/usr || die "cannot mount the verified /usr ($mapper) on /root/usr"
	echo "capstan-initramfs: /usr verified by dm-verity (root hash $1)" > /dev/kmsg 2>/dev/null
}
"#;

/// The rest of `/init`; `@MODULES@` is replaced by the module names in load order.
const MAIN: &str = r#"
die() {
	echo "<2>capstan-initramfs: $*" > /dev/kmsg 2>/dev/null
	echo "capstan-initramfs: $*" > /dev/console 2>/dev/null
	exit 1
}

# wait_dev SPEC: the device node for SPEC (as root= takes it), polled for up to $wait s.
# SCSI buses (PVSCSI, virtio-scsi) are scanned asynchronously.
wait_dev() {
	local tries node
	tries=$((wait * 10))
	node=$(find_root "$1")
	while [ -z "$node" ]; do
		tries=$((tries - 1))
		[ "$tries" -gt 0 ] || die "$1 not found after ${wait}s; block devices: $(ls "$sys/class/block" | tr '\n' ' ')"
		usleep 100000
		node=$(find_root "$1")
	done
	echo "$node"
}

sys=/sys
dev=/dev
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys

root='' fstype=ext4 flags='' mode=ro init=/sbin/init wait=30 usrhash='' usrdata='' usrtree=''
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	usrhash=*) usrhash=${arg#usrhash=} ;;
	systemd.verity_usr_data=*) usrdata=${arg#*=} ;;
	systemd.verity_usr_hash=*) usrtree=${arg#*=} ;;
	root=*) root=${arg#root=} ;;
	rootfstype=*) fstype=${arg#rootfstype=} ;;
	rootflags=*) flags=,${arg#rootflags=} ;;
	rootdelay=*) wait=${arg#rootdelay=} ;;
	init=*) init=${arg#init=} ;;
	ro | rw) mode=$arg ;;
	esac
done

for m in @MODULES@; do
	insmod "/lib/modules/$m.ko" || echo "<3>capstan-initramfs: insmod $m failed" > /dev/kmsg
done

[ -n "$root" ] || die "no root= on the kernel command line"
node=$(wait_dev "$root") || exit 1
mount -t "$fstype" -o "$mode$flags" "$node" /root || die "cannot mount $node (root=$root) on /root"
[ -z "$usrhash" ] || open_usr "$usrhash" "$usrdata" "$usrtree"
for d in dev proc sys; do
	mount -o move "/$d" "/root/$d"
done
exec switch_root /root "$init" "$@"
"#;

/// What [`build`] made.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Made {
    /// Module file names (without `.ko`) in load order.
    pub modules: Vec<String>,
    /// Size of the uncompressed cpio archive.
    pub cpio_bytes: u64,
    /// Size of the compressed initramfs.
    pub bytes: u64,
}

/// The `/init` script for modules loaded in `order`.
///
/// The text is part of every image: change it together with a `customize::RECIPE` bump.
pub fn init_script(order: &[String], verity: bool) -> String {
    format!(
        "#!/bin/sh\n# The capstan initramfs, written by capstan build (image/src/builder/initramfs.rs).\n\
         export PATH=/bin\n{FIND_ROOT}{}{}",
        if verity { OPEN_USR } else { "" },
        MAIN.replace("@MODULES@", &order.join(" "))
    )
}

/// The modules to load for `wanted`, dependencies first (each once), as `modules.dep` paths.
/// Built-in modules (`builtin`) are skipped; a name that is neither is an error.
pub fn load_order(
    modules_dep: &str,
    builtin: &BTreeSet<String>,
    wanted: &[String],
) -> anyhow::Result<Vec<String>> {
    let deps = parse_modules_dep(modules_dep);
    fn visit(
        name: &str,
        deps: &HashMap<String, (String, Vec<String>)>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        let Some((path, d)) = deps.get(name) else {
            return;
        };
        // modules.dep lists a module's dependencies nearest first; load the farthest first.
        for dep in d.iter().rev() {
            visit(&module_name(dep), deps, seen, out);
        }
        out.push(path.clone());
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    for w in wanted {
        let n = w.replace('-', "_");
        if builtin.contains(&n) {
            continue;
        }
        if !deps.contains_key(&n) {
            unknown.push(w.clone());
            continue;
        }
        visit(&n, &deps, &mut seen, &mut out);
    }
    if !unknown.is_empty() {
        bail!("kernel.initramfs_modules: not modules of this kernel (misspelled?): {unknown:?}");
    }
    Ok(out)
}

/// Whether an ELF file is statically linked (has no program interpreter).
fn is_static_elf(data: &[u8]) -> bool {
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| data.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    let u64_at = |o: usize| data.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    // ELF64 little-endian only (the appliance is x86_64).
    if data.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum as usize).all(|i| {
        let off = phoff as usize + i * phentsize as usize;
        u32_at(off).is_some_and(|t| t != 3) // PT_INTERP
    })
}

/// One cpio member.
#[derive(Debug)]
enum Member {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32, mode: u32 },
}

/// Writes a `newc` cpio archive of `members` (sorted by path, so parents come first); every
/// member is owned by root and has `mtime`.
fn cpio(members: &BTreeMap<String, Member>, mtime: u64) -> Vec<u8> {
    /// Appends a header: the 13 fields are ino, mode, uid, gid, nlink, mtime, filesize,
    /// devmajor, devminor, rdevmajor, rdevminor, namesize, check; then the name, padded.
    fn header(out: &mut Vec<u8>, fields: [u32; 13], name: &str) {
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(out);
    }
    fn pad4(out: &mut Vec<u8>) {
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    let mtime = u32::try_from(mtime).unwrap_or(u32::MAX);
    let mut out = Vec::new();
    for (i, (path, m)) in members.iter().enumerate() {
        let ino = i as u32 + 1;
        let (mode, nlink, data, (major, minor)): (u32, u32, &[u8], (u32, u32)) = match m {
            Member::Dir => (0o040755, 2, &[], (0, 0)),
            Member::File { data, mode } => (0o100000 | mode, 1, data, (0, 0)),
            Member::Symlink(target) => (0o120777, 1, target.as_bytes(), (0, 0)),
            Member::CharDev { major, minor, mode } => (0o020000 | mode, 1, &[], (*major, *minor)),
        };
        let size = data.len() as u32;
        let namesize = path.len() as u32 + 1;
        header(
            &mut out,
            [ino, mode, 0, 0, nlink, mtime, size, 0, 0, major, minor, namesize, 0],
            path,
        );
        out.extend_from_slice(data);
        pad4(&mut out);
    }
    header(&mut out, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0], "TRAILER!!!");
    out
}

/// Makes the initramfs for the kernel `version` in `root` into `out` (gzip-compressed cpio);
/// with `verity`, what opens a verified `/usr` too (dm-verity, `capstan-veritysetup`).
pub fn build(
    root: &Path,
    version: &str,
    wanted: &[String],
    verity: bool,
    epoch: u64,
    out: &Path,
) -> anyhow::Result<Made> {
    let busybox_path = root.join(BUSYBOX);
    let busybox = fs::read(&busybox_path).with_context(|| {
        format!(
            "kernel.initramfs = \"capstan\" needs /{BUSYBOX} in the image: add `busybox-static` to debian.packages"
        )
    })?;
    if !is_static_elf(&busybox) {
        bail!(
            "/{BUSYBOX} in the image is dynamically linked: the initramfs needs `busybox-static`, not `busybox`"
        );
    }
    let mod_dir = root.join("usr/lib/modules").join(version);
    let dep = fs::read_to_string(mod_dir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", mod_dir.display()))?;
    let builtin = fs::read_to_string(mod_dir.join("modules.builtin")).unwrap_or_default();
    let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();
    let mut wanted = wanted.to_vec();
    if verity {
        wanted.push(DM_VERITY.into());
    }
    let order = load_order(&dep, &builtin, &wanted)?;

    let mut members = BTreeMap::new();
    for d in ["bin", "dev", "lib", "lib/modules", "proc", "root", "sys"] {
        members.insert(d.to_string(), Member::Dir);
    }
    members.insert("dev/console".into(), Member::CharDev { major: 5, minor: 1, mode: 0o600 });
    members.insert("bin/busybox".into(), Member::File { data: busybox, mode: 0o755 });
    for a in APPLETS {
        members.insert(format!("bin/{a}"), Member::Symlink("busybox".into()));
    }
    if verity {
        members.insert(
            "bin/capstan-veritysetup".into(),
            Member::File { data: VERITYSETUP.to_vec(), mode: 0o755 },
        );
    }
    let mut names = Vec::new();
    for path in &order {
        if !path.ends_with(".ko") {
            bail!("initramfs: {path} is a compressed module; busybox insmod loads plain .ko files");
        }
        let name = module_name(path);
        let data =
            fs::read(mod_dir.join(path)).with_context(|| format!("reading module {path}"))?;
        members.insert(format!("lib/modules/{name}.ko"), Member::File { data, mode: 0o644 });
        names.push(name);
    }
    members.insert(
        "init".into(),
        Member::File { data: init_script(&names, verity).into_bytes(), mode: 0o755 },
    );
    let archive = cpio(&members, epoch);

    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut child = Command::new("gzip")
        .args(["-n", "-9", "-c"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("cannot start gzip")?;
    child.stdin.take().expect("piped").write_all(&archive).context("writing to gzip")?;
    let status = child.wait()?;
    if !status.success() {
        bail!("gzip -n -9 failed ({status}) writing {}", out.display());
    }
    Ok(Made { modules: names, cpio_bytes: archive.len() as u64, bytes: fs::metadata(out)?.len() })
}

/// The helper's ioctl encoding, compiled into capstan's tests as a module and checked against
/// the kernel's header (`veritysetup_*` tests).
#[cfg(test)]
#[path = "../../initramfs/dm.rs"]
#[allow(dead_code)]
mod veritysetup;

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's `linux/dm-ioctl.h` (Debian linux-libc-dev) as the oracle: the sizes,
    /// field offsets and ioctl numbers the helper writes by hand, printed by a C program.
    #[test]
    fn veritysetup_speaks_the_kernels_dm_ioctl_layout() {
        let t = tempfile::tempdir().unwrap();
        let c = t.path().join("layout.c");
        fs::write(
            &c,
            r#"#include <stdio.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <linux/dm-ioctl.h>
int main(void) {
    printf("%zu %zu %zu %zu %zu %zu %zu %zu\n", sizeof(struct dm_ioctl),
        offsetof(struct dm_ioctl, data_size), offsetof(struct dm_ioctl, data_start),
        offsetof(struct dm_ioctl, target_count), offsetof(struct dm_ioctl, flags),
        offsetof(struct dm_ioctl, dev), offsetof(struct dm_ioctl, name),
        sizeof(struct dm_target_spec));
    printf("%zu %zu %zu %zu\n", offsetof(struct dm_target_spec, length),
        offsetof(struct dm_target_spec, next), offsetof(struct dm_target_spec, target_type),
        (size_t)DM_READONLY_FLAG);
    printf("%lu %lu %lu %lu %u\n", (unsigned long)DM_DEV_CREATE, (unsigned long)DM_DEV_REMOVE,
        (unsigned long)DM_DEV_SUSPEND, (unsigned long)DM_TABLE_LOAD, DM_VERSION_MAJOR);
    return 0;
}
"#,
        )
        .unwrap();
        let bin = t.path().join("layout");
        let o = Command::new("cc").arg(&c).arg("-o").arg(&bin).output().expect("cc");
        assert!(o.status.success(), "cc: {}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8(Command::new(&bin).output().unwrap().stdout).unwrap();
        use veritysetup::*;
        let want = format!(
            "{HEADER} 12 16 20 28 40 48 {SPEC}\n8 20 24 {READONLY}\n{DM_DEV_CREATE} \
             {DM_DEV_REMOVE} {DM_DEV_SUSPEND} {DM_TABLE_LOAD} 4\n"
        );
        assert_eq!(out, want);
    }

    #[test]
    fn veritysetup_encodes_one_verity_target() {
        use veritysetup::*;
        let line = "0 2048 verity 1 /dev/sda3 /dev/sda4 4096 4096 256 1 sha256 ab cd";
        let t = parse_table(line).unwrap();
        assert_eq!((t.start, t.length, t.kind), (0, 2048, "verity"));
        assert_eq!(t.params, "1 /dev/sda3 /dev/sda4 4096 4096 256 1 sha256 ab cd");
        let b = encode_table("usr", READONLY, &t).unwrap();
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!((u32_at(0), u32_at(12), u32_at(16), u32_at(20)), (4, BUFFER as u32, 312, 1));
        assert_eq!(u32_at(28), READONLY);
        assert_eq!(&b[48..52], b"usr\0");
        assert_eq!(&b[312 + 8..312 + 16], &2048u64.to_le_bytes());
        assert_eq!(&b[312 + 24..312 + 31], b"verity\0");
        let p = &b[312 + SPEC..];
        assert_eq!(&p[..t.params.len()], t.params.as_bytes());
        assert_eq!(p[t.params.len()], 0, "NUL-terminated");
        assert_eq!(u32_at(312 + 20) as usize % 8, 0);
        // huge_encode_dev: minor 0x12345 on major 253.
        let mut h = vec![0u8; 312];
        let dev: u64 = 0x45 | (253 << 8) | (0x123 << 20);
        h[40..48].copy_from_slice(&dev.to_le_bytes());
        assert_eq!(minor(&h), 0x12345);
        for bad in ["", "0 10", "x 10 verity 1", "0 0 verity 1", "0 10 a-very-long-target-name 1"] {
            assert!(parse_table(bad).is_err(), "{bad:?}");
        }
        assert!(encode_header("a/b", 0).is_err());
        assert!(encode_header(&"n".repeat(128), 0).is_err());
        let huge = format!("0 8 verity {}", "x".repeat(BUFFER));
        assert!(encode_table("usr", 0, &parse_table(&huge).unwrap()).is_err());
    }

    /// The embedded helper is a static executable that runs here and says what is missing
    /// (this host has no device-mapper; the lab boot in tests/tests/image_verity.rs maps /usr
    /// with it for real).
    #[test]
    fn veritysetup_is_static_and_names_what_fails() {
        assert!(is_static_elf(VERITYSETUP), "linked statically");
        assert!(VERITYSETUP.len() < 2 << 20, "{} bytes", VERITYSETUP.len());
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("capstan-veritysetup");
        fs::write(&bin, VERITYSETUP).unwrap();
        fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let run = |args: &[&str]| {
            let o = Command::new(&bin).args(args).output().unwrap();
            (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
        };
        let (code, err) = run(&[]);
        assert_eq!(code, Some(1));
        assert!(err.contains("usage: capstan-veritysetup create NAME"), "{err}");
        let (code, err) = run(&["create", "usr", "0 zero verity 1"]);
        assert_eq!(code, Some(1));
        assert!(err.contains("length \"zero\""), "{err}");
        if !Path::new("/dev/mapper/control").exists() {
            let (code, err) = run(&["create", "usr", "0 8 verity 1 /dev/a /dev/b"]);
            assert_eq!(code, Some(1));
            assert!(err.contains("/dev/mapper/control (is dm_mod loaded?)"), "{err}");
        }
    }

    const DEP: &str = "kernel/drivers/scsi/sr_mod.ko: kernel/drivers/cdrom/cdrom.ko kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko\n\
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko\n\
kernel/drivers/scsi/scsi_common.ko:\n\
kernel/drivers/cdrom/cdrom.ko:\n\
kernel/drivers/scsi/vmw_pvscsi.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko\n\
kernel/fs/isofs/isofs.ko:\n";

    #[test]
    fn modules_load_after_their_dependencies_once() {
        let builtin = BTreeSet::from(["ext4".to_string()]);
        let order = load_order(
            DEP,
            &builtin,
            &["vmw_pvscsi".into(), "sr-mod".into(), "ext4".into(), "isofs".into()],
        )
        .unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(names, ["scsi_common", "scsi_mod", "vmw_pvscsi", "cdrom", "sr_mod", "isofs"]);
    }

    #[test]
    fn unknown_module_is_named() {
        let err = load_order(DEP, &BTreeSet::new(), &["vmw_pvscsii".into()]).unwrap_err();
        assert!(err.to_string().contains("vmw_pvscsii"), "{err}");
    }

    #[test]
    fn cpio_is_newc_sorted_and_padded() {
        let mut m = BTreeMap::new();
        m.insert("init".to_string(), Member::File { data: b"#!/bin/sh\n".to_vec(), mode: 0o755 });
        m.insert("bin".to_string(), Member::Dir);
        m.insert("bin/sh".to_string(), Member::Symlink("busybox".into()));
        m.insert("dev".to_string(), Member::Dir);
        m.insert("dev/console".to_string(), Member::CharDev { major: 5, minor: 1, mode: 0o600 });
        let a = cpio(&m, 1_767_225_600);
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        // Every header starts on a 4-byte boundary, in path order, and the archive ends with
        // the trailer; cpio(1) itself lists it (when it is installed, as it is on Debian).
        let text = String::from_utf8_lossy(&a);
        let pos = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s} missing"));
        assert!(pos("bin\0") < pos("bin/sh\0") && pos("bin/sh\0") < pos("dev\0"));
        assert!(pos("dev/console\0") < pos("init\0") && pos("init\0") < pos("TRAILER!!!\0"));
        // mtime field (6th) is the epoch for members.
        assert_eq!(&a[6 + 5 * 8..6 + 6 * 8], format!("{:08x}", 1_767_225_600u32).as_bytes());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.cpio");
        fs::write(&file, &a).unwrap();
        let out = Command::new("cpio").args(["-t", "-v", "--quiet", "-F"]).arg(&file).output();
        let out = out.expect("cpio(1) is needed for this test (Debian package cpio)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listing = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 5, "{listing}");
        assert!(
            lines[1].starts_with("lrwxrwxrwx") && lines[1].ends_with("bin/sh -> busybox"),
            "{listing}"
        );
        assert!(lines[3].starts_with("crw-------") && lines[3].contains("5,   1"), "{listing}");
        assert!(lines.iter().all(|l| l.contains("Jan  1  2026")), "{listing}");
        assert!(lines[4].starts_with("-rwxr-xr-x") && lines[4].ends_with(" init"), "{listing}");
    }

    #[test]
    fn init_reads_the_verity_table_from_the_superblock_as_veritysetup_would_load_it() {
        let t = tempfile::tempdir().unwrap();
        let data = vec![7u8; 300 * 4096];
        let params = crate::verity::Params {
            uuid: uuid::Uuid::from_u128(1),
            salt: (0..32).collect(),
            data_blocks: 300,
        };
        let tree = crate::verity::format(&params, &mut data.as_slice()).unwrap();
        let hash = t.path().join("usr-verity");
        fs::write(&hash, &tree.hash_device).unwrap();
        let run = |file: &Path| {
            let script = format!(
                "{OPEN_USR}\nverity_table {} /dev/vda3 {}\n",
                tree.root_hex(),
                file.display()
            );
            Command::new("busybox")
                .args(["sh", "-c", &script])
                .output()
                .expect("busybox is needed for this test (Debian package busybox-static)")
        };
        let o = run(&hash);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let want = params.table("/dev/vda3", &hash.display().to_string(), &tree.root_hex());
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), want);
        // Not a verity superblock: refused (open_usr stops the boot on it).
        let other = t.path().join("zeros");
        fs::write(&other, vec![0u8; 8192]).unwrap();
        assert!(!run(&other).status.success());
    }

    #[test]
    fn static_elf_is_told_from_dynamic() {
        // The test binary itself is dynamically linked (it has an interpreter).
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }

    /// A disk file with a GPT whose partition `n` (1-based) has the unique GUID `guid`, laid
    /// out as the kernel would show it under a fake `/sys`.
    fn fake_disk(dir: &Path, bs: u64, entries_lba: u64, n: u64, guid: [u8; 16]) {
        let sys = dir.join("sys");
        let dev = dir.join("dev");
        fs::create_dir_all(sys.join("devices/pci0/block/vda/vda2")).unwrap();
        fs::create_dir_all(sys.join("block")).unwrap();
        fs::create_dir_all(sys.join("class/block")).unwrap();
        fs::create_dir_all(&dev).unwrap();
        std::os::unix::fs::symlink("../devices/pci0/block/vda", sys.join("block/vda")).unwrap();
        std::os::unix::fs::symlink("../../devices/pci0/block/vda", sys.join("class/block/vda"))
            .unwrap();
        std::os::unix::fs::symlink(
            "../../devices/pci0/block/vda/vda2",
            sys.join("class/block/vda2"),
        )
        .unwrap();
        fs::create_dir_all(sys.join("devices/pci0/block/vda/queue")).unwrap();
        fs::write(sys.join("devices/pci0/block/vda/queue/logical_block_size"), format!("{bs}\n"))
            .unwrap();
        fs::write(sys.join("devices/pci0/block/vda/vda2/partition"), format!("{n}\n")).unwrap();
        let esz = 128u64;
        let mut disk = vec![0u8; ((entries_lba + 1) * bs + n * esz) as usize];
        let h = bs as usize;
        disk[h..h + 8].copy_from_slice(b"EFI PART");
        disk[h + 72..h + 80].copy_from_slice(&entries_lba.to_le_bytes());
        disk[h + 84..h + 88].copy_from_slice(&(esz as u32).to_le_bytes());
        let e = (entries_lba * bs + (n - 1) * esz) as usize;
        disk[e + 16..e + 32].copy_from_slice(&guid);
        fs::write(dev.join("vda"), disk).unwrap();
    }

    fn run_find_root(dir: &Path, spec: &str) -> String {
        let script = format!(
            "{FIND_ROOT}\nsys={}\ndev={}\nfind_root '{spec}'\n",
            dir.join("sys").display(),
            dir.join("dev").display()
        );
        let out = Command::new("busybox")
            .args(["sh", "-c", &script])
            .output()
            .expect("busybox is needed for this test (Debian package busybox-static)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    #[test]
    fn init_finds_the_root_by_partuuid_in_the_gpt() {
        // GUID 0x33221100-5544-7766-8899-aabbccddeeff in its on-disk (mixed-endian) form.
        let guid = [
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ];
        for (bs, lba) in [(512, 2), (4096, 2), (512, 34)] {
            let dir = tempfile::tempdir().unwrap();
            fake_disk(dir.path(), bs, lba, 2, guid);
            let dev = dir.path().join("dev/vda2").display().to_string();
            let want = "33221100-5544-7766-8899-aabbccddeeff";
            assert_eq!(run_find_root(dir.path(), &format!("PARTUUID={want}")), dev);
            // Upper case on the command line is the same GUID.
            let upper = want.to_uppercase();
            assert_eq!(run_find_root(dir.path(), &format!("PARTUUID={upper}")), dev);
            assert_eq!(
                run_find_root(dir.path(), "PARTUUID=33221100-5544-7766-8899-aabbccddee00"),
                ""
            );
        }
    }

    #[test]
    fn init_ignores_a_disk_without_gpt() {
        let dir = tempfile::tempdir().unwrap();
        fake_disk(dir.path(), 512, 2, 2, [7; 16]);
        let disk = dir.path().join("dev/vda");
        let mut d = fs::read(&disk).unwrap();
        d[512..520].copy_from_slice(b"NOT GPT!");
        fs::write(&disk, d).unwrap();
        assert_eq!(run_find_root(dir.path(), "PARTUUID=07070707-0707-0707-0707-070707070707"), "");
    }

    #[test]
    fn init_script_lists_modules_in_order_and_parses_with_sh() {
        let s = init_script(&["scsi_common".into(), "vmw_pvscsi".into()], true);
        assert!(s.contains("open_usr \"$usrhash\""), "{s}");
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("for m in scsi_common vmw_pvscsi; do"));
        assert!(s.contains("exec switch_root /root \"$init\" \"$@\""));
        let out = Command::new("busybox")
            .args(["sh", "-n", "-c", &s])
            .output()
            .expect("busybox is needed for this test (Debian package busybox-static)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}
