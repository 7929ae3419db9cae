//! The lb image's verified /usr: `veritysetup verify` (Debian cryptsetup-bin) accepts the
//! /usr partition with the root hash from the image's own boot entry and refuses it after one
//! flipped byte; `capstan image check` names the changed block and the file it belongs to; a
//! lab boot of a copy whose /usr was changed after the build never runs the changed file
//! (the read fails with EIO); and a copy whose hash tree was changed stops in the initramfs
//! with a clear message.

#[path = "image_support.rs"]
mod support;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use capstan_e2e::run;
use support::{boot_lock, capstan, lb_image, s};

/// The Discoverable Partitions types the builder writes.
const USR: &str = "8484680C-9521-48C6-9C11-B0720656F69E";
const USR_VERITY: &str = "77FF5F63-E7B6-4633-ACF4-1565B864C0E6";
const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// A raw copy of the lb image with the byte offsets of its ESP, usr and usr-verity partitions.
struct Raw {
    path: PathBuf,
    esp: u64,
    usr: (u64, u64),
    tree: (u64, u64),
}

impl Raw {
    fn of_lb(tmp: &Path) -> Raw {
        let path = tmp.join("lb.raw");
        let qcow2 = lb_image().join("lb.qcow2");
        run(Command::new("qemu-img").args(["convert", "-O", "raw", s(&qcow2), s(&path)])).unwrap();
        let table: serde_json::Value =
            serde_json::from_str(&run(Command::new("sfdisk").args(["--json", s(&path)])).unwrap())
                .unwrap();
        let parts = table["partitiontable"]["partitions"].as_array().unwrap().clone();
        let find = |t: &str| {
            let p = parts
                .iter()
                .find(|p| p["type"] == t)
                .unwrap_or_else(|| panic!("no {t}: {table:#}"));
            (p["start"].as_u64().unwrap() * 512, p["size"].as_u64().unwrap() * 512)
        };
        Raw { esp: find(ESP).0, usr: find(USR), tree: find(USR_VERITY), path }
    }

    /// `usrhash=` of the systemd-boot entry (mtools reads the ESP).
    fn usrhash(&self) -> String {
        let entry = run(Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(format!("{}@@{}", s(&self.path), self.esp))
            .arg("::/loader/entries/capstan.conf"))
        .unwrap();
        entry
            .split_whitespace()
            .find_map(|w| w.strip_prefix("usrhash="))
            .unwrap_or_else(|| panic!("no usrhash= in the boot entry:\n{entry}"))
            .to_string()
    }

    /// Copies a partition into its own file (veritysetup verify takes files).
    fn cut(&self, (start, size): (u64, u64), to: &Path) -> PathBuf {
        let mut f = std::fs::File::open(&self.path).unwrap();
        f.seek(SeekFrom::Start(start)).unwrap();
        let mut out = std::fs::File::create(to).unwrap();
        std::io::copy(&mut f.take(size), &mut out).unwrap();
        to.to_path_buf()
    }

    /// Byte offset in the image of the first data block of `path` in the /usr filesystem.
    fn usr_file_block(&self, path: &str) -> (u64, u64) {
        let dev = format!("{}?offset={}", s(&self.path), self.usr.0);
        let out =
            run(Command::new("debugfs").args(["-R", &format!("bmap {path} 0"), &dev])).unwrap();
        let block: u64 = out.trim().parse().unwrap_or_else(|_| panic!("bmap {path}: {out:?}"));
        (block, self.usr.0 + block * 4096)
    }

    fn flip(&self, at: u64) {
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&self.path).unwrap();
        let mut b = [0u8];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[b[0] ^ 0x20]).unwrap();
    }
}

fn veritysetup_verify(data: &Path, tree: &Path, root: &str) -> std::process::Output {
    Command::new("veritysetup")
        .arg("verify")
        .arg(data)
        .arg(tree)
        .arg(root)
        .output()
        .expect("veritysetup (Debian cryptsetup-bin, scripts/setup)")
}

/// `capstan lab run IMAGE --wait-ready --json`, successful or not, with its serial log.
fn lab(image: &Path, timeout: u32) -> (std::process::Output, String) {
    let _guard = boot_lock();
    let log = image.with_extension("serial.log");
    let o = Command::new(capstan())
        .args(["lab", "run", s(image), "--wait-ready", "--json"])
        .args(["--timeout", &timeout.to_string(), "--serial-log", s(&log)])
        .output()
        .expect("run capstan lab run");
    let serial = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
    (o, serial)
}

#[test]
fn veritysetup_accepts_lb_usr_with_the_boot_entrys_hash_and_refuses_a_flipped_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = Raw::of_lb(tmp.path());
    let root = raw.usrhash();
    assert_eq!(root.len(), 64, "{root}");
    let tree = raw.cut(raw.tree, &tmp.path().join("usr-verity.img"));
    let usr = raw.cut(raw.usr, &tmp.path().join("usr.img"));
    let o = veritysetup_verify(&usr, &tree, &root);
    assert!(
        o.status.success(),
        "veritysetup refused the built /usr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = run(Command::new(capstan()).args(["image", "check", s(&raw.path)])).unwrap();
    assert!(out.contains("is sealed"), "{out}");

    // One flipped byte in the agent binary's first block (its ELF magic).
    let (block, at) = raw.usr_file_block("/bin/capstan-agent");
    raw.flip(at + 1);
    let usr = raw.cut(raw.usr, &tmp.path().join("usr.img"));
    let o = veritysetup_verify(&usr, &tree, &root);
    assert!(!o.status.success(), "veritysetup accepted a /usr with a flipped byte");
    let o = Command::new(capstan()).args(["image", "check", s(&raw.path)]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "image check passed a tampered /usr:\n{text}");
    assert!(
        text.contains(&format!("FAIL usr-verity: /usr data block {block} ("))
            && text.contains("/usr/bin/capstan-agent does not match"),
        "{text}"
    );
}

#[test]
fn lab_boot_of_a_changed_usr_fails_the_read_and_never_runs_the_changed_file() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = Raw::of_lb(tmp.path());
    // Served unverified, the agent's changed ELF magic would fail with "Exec format error"
    // (and the shell would try it as a script); dm-verity fails the read instead.
    let (_, at) = raw.usr_file_block("/bin/capstan-agent");
    raw.flip(at + 1);
    let (o, serial) = lab(&raw.path, 600);
    assert!(
        o.status.success(),
        "lab run failed:\n{}\n{serial}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["ready"], true, "{r:#}");
    let report = r["status"].as_str().unwrap_or_else(|| panic!("the agent ran: {r:#}"));
    assert!(report.contains("Input/output error"), "no EIO in the report: {r:#}");
    assert_ne!(r["status_rc"], 0, "{r:#}");
    for served in ["Exec format error", "Syntax error", "not found"] {
        assert!(!report.contains(served), "the changed file was served ({served}): {r:#}");
    }
}

#[test]
fn lab_boot_of_a_changed_hash_tree_stops_in_the_initramfs_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = Raw::of_lb(tmp.path());
    // The top block of the tree (block 1 of the hash partition): no block of /usr verifies.
    raw.flip(raw.tree.0 + 4096 + 3);
    let (o, serial) = lab(&raw.path, 150);
    assert!(!o.status.success(), "a /usr that does not match usrhash= booted:\n{serial}");
    assert!(
        serial.contains("capstan-initramfs: verity: /usr") && serial.contains("refusing to boot"),
        "no clear stop on the console:\n{serial}"
    );
    assert!(!serial.contains("CAPSTAN-READY-BEGIN"), "{serial}");
}
