//! Stage 2, customize: unpack the rootfs, take the kernel out for the ESP and the initramfs
//! too (or make it: `builder/initramfs.rs`), prune packages, paths and kernel modules, copy
//! overlays, install the agent and its units, write the
//! baked agent defaults, and set unit states with `systemctl --root` (no chroot, no boot).

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::initramfs;
use super::profile::{InitramfsKind, LoadedProfile};
use crate::exec;

/// Inputs besides the profile.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The `capstan-agent` binary to install.
    pub agent_bin: PathBuf,
    /// Directory with the agent's systemd units (`agent/units`), if present.
    pub agent_units: Option<PathBuf>,
    /// Kubernetes binaries (`--kube-bin`) installed to /usr/bin, as [`read_kube_bin`] found
    /// them (empty without `--kube-bin`).
    pub kube_bin: Vec<KubeBinary>,
    /// `SOURCE_DATE_EPOCH`: the builder's initramfs takes its file times from it.
    pub epoch: u64,
}

/// What the stage produced.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Customized {
    /// The root tree.
    pub root: PathBuf,
    /// Kernel image taken out of /boot.
    pub vmlinuz: PathBuf,
    /// Initramfs for the ESP: taken out of /boot, or made by the builder.
    pub initrd: PathBuf,
    /// The builder's initramfs (`kernel.initramfs = "capstan"`): modules, sizes.
    #[serde(default)]
    pub initramfs: Option<initramfs::Made>,
    /// Kernel version.
    pub kernel_version: String,
    /// Modules kept / total.
    pub modules_kept: usize,
    /// Modules in the kernel package.
    pub modules_total: usize,
    /// Things worth a human's look (e.g. a unit the profile names does not exist).
    pub warnings: Vec<String>,
    /// Each package's licence from its DEP-5 copyright file, read before the prune (which may
    /// remove `/usr/share/doc`) for the SBOM; not kept in the entry (the SBOM is).
    #[serde(skip)]
    pub licences: std::collections::BTreeMap<String, String>,
    /// The SBOM's size and cost (set by the pipeline once it is written).
    #[serde(default)]
    pub sbom: Option<super::sbom::Made>,
}

/// Part of the customize stage's cache key: bump it whenever what customize or seal do to a
/// tree changes, so caches made by an older builder are not reused.
pub const RECIPE: &str = "2026-12-03.1 initramfs capstan-veritysetup";

/// The Kubernetes binaries `--kube-bin DIR` must hold; installed to /usr/bin, mode 0755.
pub const KUBE_BINARIES: [&str; 3] = ["kubeadm", "kubelet", "kubectl"];

/// One `--kube-bin` binary, read once before any stage runs: its digest keys the customize
/// stage and goes into the build report, and the install checks the file still has it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KubeBinary {
    /// `kubeadm`, `kubelet` or `kubectl`.
    pub name: &'static str,
    /// `DIR/NAME` as given (a symlink is followed: its target's content is what counts).
    pub source: PathBuf,
    /// Size of the content read.
    pub bytes: u64,
    /// SHA-256 of the content read.
    pub sha256: String,
}

/// Checks `--kube-bin DIR` before any stage runs and reads each of [`KUBE_BINARIES`] once:
/// DIR is a directory and each binary a regular file (symlinks followed) with an execute bit.
pub fn read_kube_bin(dir: &Path) -> anyhow::Result<Vec<KubeBinary>> {
    let meta = fs::metadata(dir).with_context(|| format!("--kube-bin {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("--kube-bin {}: not a directory", dir.display());
    }
    let mut found = Vec::with_capacity(KUBE_BINARIES.len());
    for name in KUBE_BINARIES {
        let path = dir.join(name);
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => {
                let mode = m.permissions().mode() & 0o7777;
                if mode & 0o111 == 0 {
                    bail!(
                        "--kube-bin {}: {} is not executable (mode {mode:o})",
                        dir.display(),
                        path.display()
                    );
                }
            }
            Ok(_) => {
                bail!("--kube-bin {}: {} is not a regular file", dir.display(), path.display())
            }
            Err(e) => {
                bail!("--kube-bin {}: {name} is missing ({}: {e})", dir.display(), path.display())
            }
        }
        let f = fs::File::open(&path)
            .with_context(|| format!("--kube-bin {}: opening {name}", dir.display()))?;
        let (sha256, bytes) = crate::cache::sha256_of(f, io::sink())
            .with_context(|| format!("--kube-bin {}: reading {name}", dir.display()))?;
        found.push(KubeBinary { name, source: path, bytes, sha256 });
    }
    Ok(found)
}

/// Copies `bin` to `dst` (mode 0755), hashing what it copies: a source that changed since
/// [`read_kube_bin`] (a download still running, a rebuilt binary) fails the stage instead of
/// caching content its key does not describe.
pub fn install_kube_binary(bin: &KubeBinary, dst: &Path) -> anyhow::Result<()> {
    let src = &bin.source;
    let f =
        fs::File::open(src).with_context(|| format!("--kube-bin: opening {}", src.display()))?;
    if dst.symlink_metadata().is_ok() {
        fs::remove_file(dst).with_context(|| format!("replacing {}", dst.display()))?;
    }
    fs::create_dir_all(dst.parent().expect("has parent"))?;
    let out = fs::File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
    let (sha256, bytes) = crate::cache::sha256_of(f, io::BufWriter::new(out))
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    if sha256 != bin.sha256 {
        bail!(
            "--kube-bin: {} changed while the build ran ({} bytes, sha256 {} when it started; \
             {bytes} bytes, sha256 {sha256} now)",
            src.display(),
            bin.bytes,
            bin.sha256
        );
    }
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Runs the stage: `rootfs_tar` is unpacked into `out_dir/root`.
pub fn run(
    p: &LoadedProfile,
    inputs: &Inputs,
    rootfs_tar: &Path,
    out_dir: &Path,
) -> anyhow::Result<Customized> {
    let root = out_dir.join("root");
    fs::create_dir_all(&root)?;
    exec::run(
        Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
            .arg(rootfs_tar)
            .arg("-C")
            .arg(&root),
    )?;
    let mut warnings = Vec::new();
    let kernel_version = kernel_version(&root)?;

    // The kernel and initramfs live on the ESP only: no second copy in the root. Taken out
    // (or made) before pruning, which may purge initramfs-tools and busybox-static.
    let boot = out_dir.join("boot");
    let (vmlinuz, initrd, initramfs) =
        take_out_boot_files(p, inputs, &root, &kernel_version, &boot)?;
    let licences = super::sbom::dpkg::read_licences(&root);
    prune(&root, &p.profile.prune)?;
    let (modules_kept, modules_total) =
        prune_modules(&root, &kernel_version, &p.profile.kernel.modules)?;
    for name in [
        "vmlinuz",
        "vmlinuz.old",
        "initrd.img",
        "initrd.img.old",
        "boot/vmlinuz",
        "boot/initrd.img",
    ] {
        let path = root.join(name);
        if path.symlink_metadata().is_ok() {
            fs::remove_file(&path)?;
        }
    }
    let sysmap = root.join(format!("boot/System.map-{kernel_version}"));
    if sysmap.exists() {
        fs::remove_file(sysmap)?;
    }

    for dir in p.overlay_dirs() {
        copy_tree(&dir, &root).with_context(|| format!("copying overlay {}", dir.display()))?;
    }

    install_agent(&root, inputs, &mut warnings)?;
    for bin in &inputs.kube_bin {
        install_kube_binary(bin, &root.join("usr/bin").join(bin.name))?;
    }

    write_config(p, &root)?;
    set_units(&root, &p.profile.systemd, &mut warnings)?;
    Ok(Customized {
        root,
        vmlinuz,
        initrd,
        initramfs,
        kernel_version,
        modules_kept,
        modules_total,
        warnings,
        licences,
        sbom: None,
    })
}

/// Moves the kernel (and initramfs-tools' initramfs) out of the root into `boot`, or makes
/// the builder's initramfs there: (vmlinuz, initrd, what the builder's initramfs holds).
fn take_out_boot_files(
    p: &LoadedProfile,
    inputs: &Inputs,
    root: &Path,
    kernel_version: &str,
    boot: &Path,
) -> anyhow::Result<(PathBuf, PathBuf, Option<initramfs::Made>)> {
    fs::create_dir_all(boot)?;
    let vmlinuz = boot.join("vmlinuz");
    let initrd = boot.join("initrd.img");
    fs::rename(root.join(format!("boot/vmlinuz-{kernel_version}")), &vmlinuz)
        .context("moving the kernel out of /boot")?;
    let debian_initrd = root.join(format!("boot/initrd.img-{kernel_version}"));
    let initramfs = match p.profile.kernel.initramfs {
        InitramfsKind::InitramfsTools => {
            fs::rename(&debian_initrd, &initrd)
                .context("moving the initramfs out of /boot (was it generated?)")?;
            None
        }
        InitramfsKind::Capstan => {
            if debian_initrd.exists() {
                fs::remove_file(&debian_initrd)?;
            }
            let made = initramfs::build(
                root,
                kernel_version,
                &p.profile.kernel.initramfs_modules,
                p.profile.disk.verity,
                inputs.epoch,
                &initrd,
            )
            .context("making the initramfs")?;
            Some(made)
        }
    };
    Ok((vmlinuz, initrd, initramfs))
}

/// The baked agent defaults (checked against the agent's schema), modules-load.d and fstab.
fn write_config(p: &LoadedProfile, root: &Path) -> anyhow::Result<()> {
    let agent_toml = toml::to_string(&p.profile.agent).context("rendering [agent] as TOML")?;
    check_agent_defaults(&agent_toml, &p.dir.join("profile.toml"))?;
    let etc_capstan = root.join("etc/capstan");
    fs::create_dir_all(&etc_capstan)?;
    fs::write(
        etc_capstan.join("agent.toml"),
        format!(
            "# Baked defaults for this template (profile {}). Written by capstan build.\n{agent_toml}",
            p.profile.name
        ),
    )?;

    if !p.profile.kernel.load.is_empty() {
        let dir = root.join("etc/modules-load.d");
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("capstan.conf"), format!("{}\n", p.profile.kernel.load.join("\n")))?;
    }
    fs::write(
        root.join("etc/fstab"),
        "# Written by capstan build.\nLABEL=capstan-root / ext4 defaults,noatime,errors=remount-ro 0 1\n",
    )?;
    Ok(())
}

/// Whether `name` matches `pattern` (`*` matches any run of characters).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

fn prune(root: &Path, prune: &super::profile::Prune) -> anyhow::Result<()> {
    if !prune.purge.is_empty() {
        // `--force-remove-essential`: the profile names each package, so an Essential one
        // (perl-base) goes only when a profile asks for it. dpkg works through the list in
        // order: whatever a maintainer script needs (perl for debconf) must come later.
        exec::run(
            Command::new("chroot")
                .arg(root)
                .args(["dpkg", "--purge", "--force-depends", "--force-remove-essential"])
                .args(&prune.purge),
        )
        .context("purging prune.purge packages")?;
    }
    for pattern in &prune.paths {
        let (dir, leaf) = match pattern.rsplit_once('/') {
            Some((d, l)) => (root.join(d), l),
            None => (root.to_path_buf(), pattern.as_str()),
        };
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.filter_map(Result::ok) {
            if glob_match(leaf, &e.file_name().to_string_lossy()) {
                let path = e.path();
                if e.file_type()?.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                }
                .with_context(|| format!("prune.paths: removing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// Checks the profile's `[agent]` table with the agent's own schema: every key must be a
/// setting and every value valid for it. (Settings the deployer must give, like `lb.vip`, are
/// not required here: the template only bakes defaults.)
pub fn check_agent_defaults(text: &str, profile_path: &Path) -> anyhow::Result<()> {
    use capstan_agent::schema;
    let flat = schema::flatten_toml(text, profile_path, schema::Source::Defaults)
        .with_context(|| format!("{}: [agent]", profile_path.display()))?;
    for (key, v) in flat {
        let setting = schema::lookup(&key).with_context(|| {
            format!(
                "{}: [agent] {key}: not a setting of the agent's schema",
                profile_path.display()
            )
        })?;
        schema::check_value(&setting.kind, &v.value).map_err(|reason| {
            anyhow::anyhow!("{}: [agent] {key} = {:?}: {reason}", profile_path.display(), v.value)
        })?;
    }
    Ok(())
}

fn kernel_version(root: &Path) -> anyhow::Result<String> {
    let mut versions: Vec<String> = fs::read_dir(root.join("usr/lib/modules"))
        .context("no /usr/lib/modules in the rootfs (no kernel package?)")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    match versions.as_slice() {
        [v] => Ok(v.clone()),
        _ => bail!("expected one kernel in the rootfs, found {versions:?}"),
    }
}

/// Module name as modprobe sees it: file stem with `-` folded to `_`.
pub(super) fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// `modules.dep` (lines `path: dep dep ...`) by module name: (path, dependency paths).
pub(super) fn parse_modules_dep(modules_dep: &str) -> HashMap<String, (String, Vec<String>)> {
    let mut deps = HashMap::new();
    for line in modules_dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let d = rest.split_whitespace().map(str::to_string).collect();
        deps.insert(module_name(path), (path.to_string(), d));
    }
    deps
}

/// The closure of `keep` over `modules.dep` (lines `path: dep dep ...`).
/// Returns the relative paths to keep; unknown names are an error so a typo is caught.
pub fn module_closure(modules_dep: &str, keep: &[String]) -> anyhow::Result<BTreeSet<String>> {
    let deps = parse_modules_dep(modules_dep);
    let mut out = BTreeSet::new();
    let mut stack: Vec<String> = Vec::new();
    let mut unknown = Vec::new();
    for name in keep {
        let n = name.replace('-', "_");
        match deps.get(&n) {
            Some((path, _)) => stack.push(path.clone()),
            None => unknown.push(name.clone()),
        }
    }
    if !unknown.is_empty() {
        bail!("kernel.modules names modules this kernel does not have as modules (built in, or misspelled): {unknown:?}");
    }
    while let Some(path) = stack.pop() {
        if out.insert(path.clone()) {
            if let Some((_, d)) = deps.get(&module_name(&path)) {
                stack.extend(d.iter().cloned());
            }
        }
    }
    Ok(out)
}

fn prune_modules(root: &Path, version: &str, keep: &[String]) -> anyhow::Result<(usize, usize)> {
    let mod_dir = root.join("usr/lib/modules").join(version);
    let dep = fs::read_to_string(mod_dir.join("modules.dep")).context("reading modules.dep")?;
    let total = dep.lines().filter(|l| l.contains(':')).count();
    if keep.iter().any(|k| k == "*") {
        return Ok((total, total));
    }
    // Built-in modules need no file; drop them from the list quietly.
    let builtin = fs::read_to_string(mod_dir.join("modules.builtin")).unwrap_or_default();
    let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();
    let keep: Vec<String> =
        keep.iter().filter(|k| !builtin.contains(&k.replace('-', "_"))).cloned().collect();
    let kept = module_closure(&dep, &keep)?;
    for line in dep.lines() {
        let Some((path, _)) = line.split_once(':') else {
            continue;
        };
        if !kept.contains(path) {
            fs::remove_file(mod_dir.join(path)).with_context(|| format!("removing {path}"))?;
        }
    }
    remove_empty_dirs(&mod_dir.join("kernel"))?;
    // The image's own depmod (same kmod as will read the indexes at boot); chroot needs no
    // mounts for it.
    exec::run(Command::new("chroot").arg(root).args(["depmod", "-a", version]))?;
    Ok((kept.len(), total))
}

fn remove_empty_dirs(dir: &Path) -> anyhow::Result<bool> {
    let mut empty = true;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            if remove_empty_dirs(&entry.path())? {
                fs::remove_dir(entry.path())?;
            } else {
                empty = false;
            }
        } else {
            empty = false;
        }
    }
    Ok(empty)
}

/// Copies a tree over `dst`: directories merged, files and symlinks replaced, owner root, in
/// sorted order; modes as git keeps them ([`crate::cache::tree_mode`]: 0644, or 0755 for an
/// executable or a directory), so the checkout's umask does not reach the image.
pub fn copy_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(src)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        // `.keep` files only exist so that git keeps empty overlay directories.
        if entry.file_name() == ".keep" {
            continue;
        }
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let ft = entry.file_type()?;
        if ft.is_dir() {
            if !to.is_dir() {
                fs::create_dir_all(&to)?;
                let mode = crate::cache::tree_mode(&fs::metadata(&from)?);
                fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
            }
            copy_tree(&from, &to)?;
        } else if ft.is_symlink() {
            if to.symlink_metadata().is_ok() {
                fs::remove_file(&to)?;
            }
            symlink(fs::read_link(&from)?, &to)?;
        } else {
            install_file(&from, &to, crate::cache::tree_mode(&fs::metadata(&from)?))?;
        }
    }
    Ok(())
}

fn install_file(src: &Path, dst: &Path, mode: u32) -> anyhow::Result<()> {
    if dst.symlink_metadata().is_ok() {
        fs::remove_file(dst).with_context(|| format!("replacing {}", dst.display()))?;
    }
    fs::create_dir_all(dst.parent().expect("has parent"))?;
    fs::copy(src, dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn install_agent(root: &Path, inputs: &Inputs, warnings: &mut Vec<String>) -> anyhow::Result<()> {
    let dst = root.join("usr/bin/capstan-agent");
    // Stripped: debug info would be most of the binary and of no use in the appliance.
    exec::run(
        Command::new("strip").arg("--strip-unneeded").arg("-o").arg(&dst).arg(&inputs.agent_bin),
    )
    .context("installing the agent binary (binutils `strip`)")?;
    fs::set_permissions(&dst, fs::Permissions::from_mode(0o755))?;
    match &inputs.agent_units {
        Some(dir) if dir.is_dir() => {
            let unit_dir = root.join("usr/lib/systemd/system");
            let mut units: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
            units.sort_by_key(|e| e.file_name());
            for e in units {
                let name = e.file_name().to_string_lossy().into_owned();
                if [".service", ".timer", ".socket", ".path", ".target"]
                    .iter()
                    .any(|s| name.ends_with(s))
                {
                    install_file(&e.path(), &unit_dir.join(&name), 0o644)?;
                }
            }
        }
        _ => warnings.push(
            "agent units directory (agent/units) not found: agent units not installed".into(),
        ),
    }
    Ok(())
}

fn unit_exists(root: &Path, unit: &str) -> bool {
    let template =
        unit.split_once('@').map(|(a, b)| format!("{a}@.{}", b.rsplit('.').next().unwrap_or("")));
    ["etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"].iter().any(|d| {
        root.join(d).join(unit).exists()
            || template.as_ref().is_some_and(|t| root.join(d).join(t).exists())
    })
}

fn set_units(
    root: &Path,
    s: &super::profile::Systemd,
    warnings: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut systemctl = |verb: &str, units: &[String], must_exist: bool| -> anyhow::Result<()> {
        let mut present = Vec::new();
        for u in units {
            if !must_exist || unit_exists(root, u) {
                present.push(u.clone());
            } else {
                warnings.push(format!("systemd.{verb}: unit {u} does not exist in the image"));
            }
        }
        if present.is_empty() {
            return Ok(());
        }
        // SYSTEMCTL_SKIP_SYSV: no rc?.d links for units that also ship a SysV script
        // (open-vm-tools, ssh): systemd never reads them, and update-rc.d is perl, which an
        // appliance profile may have purged.
        exec::run(
            Command::new("systemctl")
                .env("SYSTEMCTL_SKIP_SYSV", "1")
                .arg(format!("--root={}", root.display()))
                .arg(verb)
                .args(&present),
        )
    };
    systemctl("enable", &s.enable, true)?;
    systemctl("disable", &s.disable, true)?;
    systemctl("mask", &s.mask, false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/scsi/vmw_pvscsi.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko\n\
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko\n\
kernel/drivers/scsi/scsi_common.ko:\n\
kernel/drivers/net/vmxnet3/vmxnet3.ko:\n\
kernel/fs/isofs/isofs.ko:\n\
kernel/drivers/firmware/qemu_fw_cfg.ko:\n";

    #[test]
    fn closure_follows_dependencies() {
        let keep = module_closure(DEP, &["vmw_pvscsi".into(), "qemu-fw-cfg".into()]).unwrap();
        let v: Vec<_> = keep.iter().map(|s| module_name(s)).collect();
        assert_eq!(v, ["qemu_fw_cfg", "scsi_common", "scsi_mod", "vmw_pvscsi"]);
    }

    #[test]
    fn agent_defaults_are_checked_against_the_schema() {
        let p = Path::new("buildroot/lb/profile.toml");
        check_agent_defaults("role = \"lb\"\n", p).unwrap();
        let err = check_agent_defaults("rolle = \"lb\"\n", p).unwrap_err();
        assert!(format!("{err:#}").contains("rolle"), "{err:#}");
        let err = check_agent_defaults("role = \"dancer\"\n", p).unwrap_err();
        assert!(format!("{err:#}").contains("dancer"), "{err:#}");
    }

    #[test]
    fn globs_match_the_last_component() {
        assert!(glob_match("*.so", "UTF-16.so"));
        assert!(glob_match("hwdb.bin", "hwdb.bin"));
        assert!(!glob_match("hwdb.bin", "hwdb.bin2"));
        assert!(glob_match("20-*-vendor*.hwdb", "20-pci-vendor-model.hwdb"));
        assert!(!glob_match("*.so", "gconv-modules"));
    }

    #[test]
    fn unknown_module_is_an_error() {
        let err = module_closure(DEP, &["vmxnet4".into()]).unwrap_err().to_string();
        assert!(err.contains("vmxnet4"), "{err}");
    }

    #[test]
    fn copy_tree_merges_and_takes_modes_as_git_keeps_them() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("etc/x")).unwrap();
        fs::write(src.path().join("etc/x/run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.path().join("etc/x/run.sh"), fs::Permissions::from_mode(0o750))
            .unwrap();
        // As a checkout under umask 077 has them: 0600 file, 0700 directory.
        fs::write(src.path().join("etc/x/conf"), "c").unwrap();
        fs::set_permissions(src.path().join("etc/x/conf"), fs::Permissions::from_mode(0o600))
            .unwrap();
        fs::set_permissions(src.path().join("etc/x"), fs::Permissions::from_mode(0o700)).unwrap();
        symlink("run.sh", src.path().join("etc/x/link")).unwrap();
        fs::create_dir_all(dst.path().join("etc")).unwrap();
        fs::write(dst.path().join("etc/keep"), "k").unwrap();
        copy_tree(src.path(), dst.path()).unwrap();
        assert_eq!(fs::read_to_string(dst.path().join("etc/keep")).unwrap(), "k");
        let mode =
            |p: &str| fs::metadata(dst.path().join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("etc/x/run.sh"), 0o755);
        assert_eq!(mode("etc/x/conf"), 0o644);
        assert_eq!(mode("etc/x"), 0o755);
        assert_eq!(fs::read_link(dst.path().join("etc/x/link")).unwrap(), Path::new("run.sh"));
    }

    /// `DIR` with the three binaries (mode 0700: the install makes them 0755), kubectl a
    /// symlink to a file outside DIR, as an unpacked release may have it.
    fn kube_dir(t: &Path) -> PathBuf {
        let dir = t.join("kube");
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(t.join("elsewhere")).unwrap();
        for name in KUBE_BINARIES {
            let path =
                if name == "kubectl" { t.join("elsewhere/kubectl.real") } else { dir.join(name) };
            fs::write(&path, format!("#!/bin/sh\necho {name}\n{}", "x".repeat(3 << 20))).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        }
        symlink("../elsewhere/kubectl.real", dir.join("kubectl")).unwrap();
        dir
    }

    #[test]
    fn kube_bin_digests_are_what_sha256sum_says() {
        let t = tempfile::tempdir().unwrap();
        let dir = kube_dir(t.path());
        let bins = read_kube_bin(&dir).unwrap();
        let names: Vec<&str> = bins.iter().map(|b| b.name).collect();
        assert_eq!(names, KUBE_BINARIES);
        for b in &bins {
            // coreutils' sha256sum follows the symlink too.
            let out = exec::output(Command::new("sha256sum").arg(&b.source)).unwrap();
            assert_eq!(out.split_whitespace().next(), Some(b.sha256.as_str()), "{b:?}");
            assert_eq!(b.bytes, fs::metadata(&b.source).unwrap().len(), "{b:?}");
            assert!(b.bytes > 3 << 20, "more than one read buffer: {b:?}");
        }
        // The symlink's target content counts, not its name: a new kubectl behind the same
        // link is a different input (the old directory key hashed only the link text).
        let before = bins[2].sha256.clone();
        fs::write(t.path().join("elsewhere/kubectl.real"), "#!/bin/sh\necho v2\n").unwrap();
        assert_ne!(read_kube_bin(&dir).unwrap()[2].sha256, before);
    }

    #[test]
    fn kube_binaries_install_0755_and_a_changed_source_fails() {
        let t = tempfile::tempdir().unwrap();
        let dir = kube_dir(t.path());
        let bins = read_kube_bin(&dir).unwrap();
        let root = t.path().join("root");
        for b in &bins {
            let dst = root.join("usr/bin").join(b.name);
            install_kube_binary(b, &dst).unwrap();
            let m = fs::symlink_metadata(&dst).unwrap();
            assert!(m.is_file(), "{}: not a regular file", dst.display());
            assert_eq!(m.permissions().mode() & 0o7777, 0o755);
            assert_eq!(fs::read(&dst).unwrap(), fs::read(&b.source).unwrap());
        }
        // The source changed after the build read it: the stage fails, naming the file.
        fs::write(dir.join("kubelet"), "#!/bin/sh\necho replaced\n").unwrap();
        let err = install_kube_binary(&bins[1], &root.join("usr/bin/kubelet")).unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("kube/kubelet changed while the build ran"), "{err}");
        assert!(err.contains(&bins[1].sha256), "{err}");
    }

    #[test]
    fn bad_kube_bin_dirs_name_the_flag_and_the_file() {
        let t = tempfile::tempdir().unwrap();
        let err = |dir: &Path| format!("{:#}", read_kube_bin(dir).unwrap_err());
        let e = err(&t.path().join("no-such-dir"));
        assert!(e.starts_with("--kube-bin ") && e.contains("no-such-dir"), "{e}");
        fs::write(t.path().join("a-file"), "x").unwrap();
        assert!(err(&t.path().join("a-file")).ends_with("a-file: not a directory"));
        let dir = kube_dir(t.path());
        fs::set_permissions(dir.join("kubeadm"), fs::Permissions::from_mode(0o644)).unwrap();
        let e = err(&dir);
        assert!(e.contains("kubeadm is not executable (mode 644)"), "{e}");
        fs::remove_file(dir.join("kubeadm")).unwrap();
        fs::create_dir(dir.join("kubeadm")).unwrap();
        assert!(err(&dir).contains("kubeadm is not a regular file"));
        fs::remove_dir(dir.join("kubeadm")).unwrap();
        let e = err(&dir);
        assert!(e.contains("--kube-bin") && e.contains("kubeadm is missing"), "{e}");
        // A dangling symlink is a missing binary, not a panic or an empty file.
        fs::write(dir.join("kubeadm"), "x").unwrap();
        fs::set_permissions(dir.join("kubeadm"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::remove_file(t.path().join("elsewhere/kubectl.real")).unwrap();
        assert!(err(&dir).contains("kubectl is missing"));
    }
}
