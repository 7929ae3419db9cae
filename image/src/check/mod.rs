//! Image hygiene: what a sealed template must not contain, checked on a root tree or read
//! straight out of a built image (raw, qcow2, VMDK or OVA) without booting or mounting it.
//!
//! The same rules drive sealing (`builder::seal`) and checking, so the two cannot drift.
//!
//! An image with a verified `/usr` (partitions of the Discoverable Partitions types for /usr
//! and its verity tree) is also checked block by block: the hash tree is recomputed from the
//! /usr partition and compared with the root hash in the image's boot entry (`usrhash=`);
//! a finding names the first block that differs and, for a data block, the file it holds.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::{exec, gpt, verity};

/// One hygiene problem.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Short rule name (`machine-id`, `ssh-host-keys`, `agent-state`, `leases`, `logs`,
    /// `shell-history`, `random-seed`, `root-password`, `usr-verity`).
    pub rule: &'static str,
    /// What was found, with the path.
    pub detail: String,
}

/// Directories (relative to the root) whose files must not exist at all in a template.
pub const STATE_DIRS: &[(&str, &str)] = &[
    ("agent-state", "var/lib/capstan"),
    ("leases", "var/lib/dhcp"),
    ("leases", "var/lib/systemd/network"),
    ("leases", "var/lib/NetworkManager"),
    ("leases", "var/lib/dhclient"),
];

/// Single files that must not exist.
pub const STATE_FILES: &[(&str, &str)] = &[
    ("random-seed", "var/lib/systemd/random-seed"),
    ("random-seed", "var/lib/systemd/credential.secret"),
    ("machine-id", "var/lib/dbus/machine-id"),
];

/// The paths the image reader extracts (everything the rules look at).
const EXTRACT: &[&str] = &[
    "etc/machine-id",
    "etc/shadow",
    "etc/ssh",
    "var/lib/dbus",
    "var/lib/capstan",
    "var/lib/dhcp",
    "var/lib/systemd",
    "var/lib/NetworkManager",
    "var/lib/dhclient",
    "var/log",
    "root",
    "home",
];

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            files_under(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

fn rel(root: &Path, p: &Path) -> String {
    format!("/{}", p.strip_prefix(root).unwrap_or(p).display())
}

/// Checks a root tree.
pub fn check_root(root: &Path) -> Vec<Finding> {
    let mut f = Vec::new();
    let mut add = |rule, detail: String| f.push(Finding { rule, detail });

    match fs::read_to_string(root.join("etc/machine-id")) {
        Ok(s) if s.trim().is_empty() || s.trim() == "uninitialized" => {}
        Ok(s) => add("machine-id", format!("/etc/machine-id is set ({})", s.trim())),
        Err(_) => {}
    }
    for (rule, path) in STATE_FILES {
        let p = root.join(path);
        if p.symlink_metadata().is_ok_and(|m| m.is_file() && m.len() > 0) {
            add(rule, format!("/{path} exists"));
        }
    }
    if let Ok(rd) = fs::read_dir(root.join("etc/ssh")) {
        let mut keys: Vec<String> = rd
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ssh_host_"))
            .collect();
        keys.sort();
        for k in keys {
            add("ssh-host-keys", format!("/etc/ssh/{k} exists"));
        }
    }
    for (rule, dir) in STATE_DIRS {
        let mut files = Vec::new();
        files_under(&root.join(dir), &mut files);
        for p in files {
            add(rule, format!("{} exists", rel(root, &p)));
        }
    }
    let mut logs = Vec::new();
    files_under(&root.join("var/log"), &mut logs);
    for p in logs {
        if let Ok(m) = p.symlink_metadata() {
            if m.is_file() && m.len() > 0 {
                add("logs", format!("{} is not empty ({} bytes)", rel(root, &p), m.len()));
            }
        }
    }
    let mut homes = vec![root.join("root")];
    if let Ok(rd) = fs::read_dir(root.join("home")) {
        let mut h: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
        h.sort();
        homes.extend(h);
    }
    for home in homes {
        if let Ok(rd) = fs::read_dir(&home) {
            let mut hist: Vec<_> = rd
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with("_history"))
                .map(|e| e.path())
                .collect();
            hist.sort();
            for p in hist {
                add("shell-history", format!("{} exists", rel(root, &p)));
            }
        }
    }
    if let Ok(shadow) = fs::read_to_string(root.join("etc/shadow")) {
        for line in shadow.lines() {
            let mut parts = line.split(':');
            if parts.next() == Some("root") {
                let pw = parts.next().unwrap_or("");
                if !(pw.starts_with('!') || pw.starts_with('*')) {
                    add("root-password", "root has a usable password in /etc/shadow".into());
                }
            }
        }
    }
    f
}

/// What kind of file an image is, from its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A raw disk.
    Raw,
    /// qcow2.
    Qcow2,
    /// A VMDK (any subformat qemu-img reads).
    Vmdk,
    /// An OVA (tar).
    Ova,
}

/// Sniffs the format of `path`.
pub fn sniff(path: &Path) -> anyhow::Result<ImageFormat> {
    let mut head = vec![0u8; 512];
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = f.read(&mut head)?;
    head.truncate(n);
    Ok(if head.starts_with(b"QFI\xfb") {
        ImageFormat::Qcow2
    } else if head.starts_with(b"KDMV") {
        ImageFormat::Vmdk
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        ImageFormat::Ova
    } else {
        ImageFormat::Raw
    })
}

/// Makes a raw disk from any supported image; returns the raw path (inside `tmp` unless the
/// input is raw already).
pub fn to_raw(image: &Path, tmp: &Path) -> anyhow::Result<PathBuf> {
    let format = sniff(image)?;
    let (src, fmt) = match format {
        ImageFormat::Raw => return Ok(image.to_path_buf()),
        ImageFormat::Qcow2 => (image.to_path_buf(), "qcow2"),
        ImageFormat::Vmdk => (image.to_path_buf(), "vmdk"),
        ImageFormat::Ova => (extract_ova_disk(image, tmp)?, "vmdk"),
    };
    let raw = tmp.join("disk.raw");
    exec::run(
        Command::new("qemu-img").args(["convert", "-f", fmt, "-O", "raw"]).arg(&src).arg(&raw),
    )?;
    Ok(raw)
}

/// Extracts the first `.vmdk` member of an OVA into `tmp`.
pub fn extract_ova_disk(ova: &Path, tmp: &Path) -> anyhow::Result<PathBuf> {
    let list = exec::output(Command::new("tar").arg("-tf").arg(ova))?;
    let Some(member) = list.lines().find(|l| l.ends_with(".vmdk")) else {
        bail!("{}: no .vmdk member in the OVA", ova.display());
    };
    exec::run(Command::new("tar").arg("-xf").arg(ova).arg("-C").arg(tmp).arg(member))?;
    Ok(tmp.join(member))
}

/// Byte offset and size of the root partition of a GPT raw disk.
pub fn root_partition(raw: &Path) -> anyhow::Result<(u64, u64)> {
    let mut head = vec![0u8; 34 * 512];
    fs::File::open(raw)?
        .read_exact(&mut head)
        .with_context(|| format!("{}: too small to be a disk", raw.display()))?;
    let parts = gpt::read(&head).map_err(|e| anyhow::anyhow!("{}: {e}", raw.display()))?;
    let p = parts
        .iter()
        .find(|p| p.type_guid == gpt::TYPE_ROOT_X86_64)
        .or_else(|| parts.iter().find(|p| p.type_guid != gpt::TYPE_ESP))
        .with_context(|| format!("{}: no root partition in the GPT", raw.display()))?;
    Ok((p.first_lba * gpt::SECTOR, (p.last_lba - p.first_lba + 1) * gpt::SECTOR))
}

/// The partitions of a GPT raw disk.
fn partitions(raw: &Path) -> anyhow::Result<Vec<gpt::Partition>> {
    let mut head = vec![0u8; 34 * 512];
    fs::File::open(raw)?
        .read_exact(&mut head)
        .with_context(|| format!("{}: too small to be a disk", raw.display()))?;
    gpt::read(&head).map_err(|e| anyhow::anyhow!("{}: {e}", raw.display()))
}

/// Byte offset and size of the first partition of type `type_guid`, if any.
fn partition_of(parts: &[gpt::Partition], type_guid: uuid::Uuid) -> Option<(u64, u64)> {
    parts
        .iter()
        .find(|p| p.type_guid == type_guid)
        .map(|p| (p.first_lba * gpt::SECTOR, (p.last_lba - p.first_lba + 1) * gpt::SECTOR))
}

/// The options line of the image's systemd-boot entry, read from the ESP with mtools.
pub fn boot_options(raw: &Path) -> anyhow::Result<String> {
    let parts = partitions(raw)?;
    let (esp, _) = partition_of(&parts, gpt::TYPE_ESP)
        .with_context(|| format!("{}: no EFI system partition", raw.display()))?;
    let entry = exec::output(
        Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(format!("{}@@{esp}", raw.display()))
            .arg("::/loader/entries/capstan.conf"),
    )
    .context("reading the boot entry from the ESP (mtools)")?;
    entry
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .map(str::to_string)
        .with_context(|| format!("{}: the boot entry has no options line", raw.display()))
}

/// Checks the verified /usr of `raw`, if it has one: `None` when the image has no /usr
/// partition, else the findings (empty when every block matches the boot entry's root hash).
pub fn check_usr(raw: &Path) -> anyhow::Result<Option<Vec<Finding>>> {
    let parts = partitions(raw)?;
    let (Some((usr, usr_len)), Some((hash, hash_len))) = (
        partition_of(&parts, gpt::TYPE_USR_X86_64),
        partition_of(&parts, gpt::TYPE_USR_VERITY_X86_64),
    ) else {
        return Ok(None);
    };
    let finding = |detail: String| Ok(Some(vec![Finding { rule: "usr-verity", detail }]));
    let options = boot_options(raw)?;
    let Some(root_hash) = options.split_whitespace().find_map(|w| w.strip_prefix("usrhash="))
    else {
        return finding("the boot entry has no usrhash=: /usr would boot unverified".into());
    };
    let mut f = fs::File::open(raw)?;
    f.seek(SeekFrom::Start(hash))?;
    let mut tree = vec![0u8; hash_len as usize];
    f.read_exact(&mut tree).context("reading the /usr verity partition")?;
    f.seek(SeekFrom::Start(usr))?;
    let mut data = std::io::BufReader::with_capacity(1 << 20, f.take(usr_len));
    match verity::verify(&tree, &mut data, root_hash) {
        Ok(_) => Ok(Some(Vec::new())),
        Err(verity::VerityError::DataBlock { block, offset }) => {
            let file = usr_file_of_block(raw, usr, block).unwrap_or_default();
            finding(format!(
                "/usr data block {block} (byte {} of the image){file} does not match the hash tree",
                usr + offset
            ))
        }
        Err(e @ verity::VerityError::Io { .. }) => Err(e).context("checking the /usr hash tree"),
        Err(e) => finding(format!("{e} (usrhash={root_hash})")),
    }
}

/// `: /usr/PATH` for the file holding filesystem block `block` of the /usr ext4 at
/// `offset`, found with debugfs `icheck`/`ncheck`; empty when no file holds it.
fn usr_file_of_block(raw: &Path, offset: u64, block: u64) -> anyhow::Result<String> {
    let dev = format!("{}?offset={offset}", raw.display());
    let debugfs = |req: String| exec::output(Command::new("debugfs").arg("-R").arg(req).arg(&dev));
    let icheck = debugfs(format!("icheck {block}"))?;
    let Some(inode) = icheck.lines().nth(1).and_then(|l| l.split_whitespace().nth(1)) else {
        return Ok(String::new());
    };
    if inode.parse::<u64>().is_err() {
        return Ok(String::new());
    }
    let ncheck = debugfs(format!("ncheck {inode}"))?;
    Ok(ncheck
        .lines()
        .nth(1)
        .and_then(|l| l.split_once(char::is_whitespace))
        .map(|(_, path)| format!(": /usr{}", path.trim()))
        .unwrap_or_default())
}

/// Copies the paths the rules need out of the ext4 root of `raw` into `dest` with debugfs.
pub fn extract_root(raw: &Path, dest: &Path) -> anyhow::Result<()> {
    let (offset, _) = root_partition(raw)?;
    let mut script = String::new();
    for p in EXTRACT {
        let parent = Path::new(p).parent().unwrap_or(Path::new(""));
        fs::create_dir_all(dest.join(parent))?;
        script.push_str(&format!("rdump /{p} {}\n", dest.join(parent).display()));
    }
    let cmds = dest.join(".debugfs-commands");
    fs::write(&cmds, script)?;
    let dev = format!("{}?offset={offset}", raw.display());
    exec::run(Command::new("debugfs").arg("-f").arg(&cmds).arg(&dev))
        .context("reading the root filesystem with debugfs (e2fsprogs)")?;
    fs::remove_file(cmds)?;
    Ok(())
}

/// The bytes of the file at `path` (absolute in the image) in the ext4 root of the image
/// `image` (raw, qcow2, VMDK or OVA), read with debugfs; `None` if the image has no such file.
pub fn read_image_file(image: &Path, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let tmp = tempfile::Builder::new().prefix("capstan-read").tempdir()?;
    let raw = to_raw(image, tmp.path())?;
    // With a /usr partition, /usr's files are there (its root is /usr).
    let usr = partition_of(&partitions(&raw)?, gpt::TYPE_USR_X86_64);
    let (offset, path) = match (usr, path.strip_prefix("/usr/")) {
        (Some((usr, _)), Some(rest)) => (usr, format!("/{rest}")),
        _ => (root_partition(&raw)?.0, path.to_string()),
    };
    let path = path.as_str();
    let out = tmp.path().join("file");
    // debugfs takes one command line: a path with a newline or a quote could smuggle another.
    if path.contains(['\n', '"']) || !path.starts_with('/') {
        bail!("{path:?}: not an absolute path debugfs can name");
    }
    let dev = format!("{}?offset={offset}", raw.display());
    exec::run(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump \"{path}\" \"{}\"", out.display()))
            .arg(&dev),
    )
    .with_context(|| format!("reading {path} from {} with debugfs (e2fsprogs)", image.display()))?;
    // debugfs reports a missing file on stderr and still exits 0, creating nothing.
    match fs::read(&out) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", out.display())),
    }
}

/// Checks an image file of any supported format.
pub fn check_image(image: &Path) -> anyhow::Result<Vec<Finding>> {
    let tmp = tempfile::Builder::new().prefix("capstan-check").tempdir()?;
    let raw = to_raw(image, tmp.path())?;
    let root = tmp.path().join("root");
    fs::create_dir_all(&root)?;
    extract_root(&raw, &root)?;
    if !root.join("etc").is_dir() {
        bail!("{}: the root filesystem has no /etc", image.display());
    }
    let mut findings = check_root(&root);
    findings.extend(check_usr(&raw)?.unwrap_or_default());
    Ok(findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed_root() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["etc/ssh", "var/log/journal", "var/lib/capstan", "root", "home/op"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(r.join("etc/machine-id"), "").unwrap();
        fs::write(r.join("etc/ssh/sshd_config"), "x").unwrap();
        fs::write(r.join("etc/shadow"), "root:!*:19675:0:99999:7:::\n").unwrap();
        fs::write(r.join("var/log/empty.log"), "").unwrap();
        t
    }

    #[test]
    fn a_sealed_root_is_clean() {
        let t = sealed_root();
        assert_eq!(check_root(t.path()), vec![]);
    }

    #[test]
    fn every_leftover_is_named() {
        let t = sealed_root();
        let r = t.path();
        fs::write(r.join("etc/machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
        fs::write(r.join("etc/ssh/ssh_host_ed25519_key"), "k").unwrap();
        fs::write(r.join("var/lib/capstan/firstboot.json"), "{}").unwrap();
        fs::create_dir_all(r.join("var/lib/dhcp")).unwrap();
        fs::write(r.join("var/lib/dhcp/dhclient.eth0.leases"), "l").unwrap();
        fs::write(r.join("var/log/journal/system.journal"), "j").unwrap();
        fs::write(r.join("home/op/.bash_history"), "ls").unwrap();
        fs::write(r.join("etc/shadow"), "root:$6$abc$def:19675:0:99999:7:::\n").unwrap();
        let rules: Vec<_> = check_root(r).iter().map(|f| f.rule).collect();
        assert_eq!(
            rules,
            [
                "machine-id",
                "ssh-host-keys",
                "agent-state",
                "leases",
                "logs",
                "shell-history",
                "root-password"
            ]
        );
    }
}
