//! The template builder: `capstan build PROFILE`.
//!
//! Stages, each cached under a key that digests its inputs and the previous stage's key:
//!
//! ```text
//! rootfs (mmdebstrap) -> customize + seal -> disk (GPT, ESP, ext4) -> outputs -> check
//! ```
//!
//! A warm build (nothing changed) only re-keys the inputs and copies the cached outputs;
//! changing the agent binary or an overlay reuses the rootfs and redoes the rest.

pub mod cache;
pub mod customize;
pub mod disk;
pub mod exec;
pub mod gpt;
pub mod initramfs;
pub mod outputs;
pub mod ovadesc;
pub mod profile;
pub mod rootfs;
pub mod seal;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use self::cache::{Entry, Key};
use self::outputs::Format;
use self::profile::LoadedProfile;

/// Boot firmware of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// UEFI with systemd-boot on the ESP.
    Efi,
    /// Legacy BIOS.
    Bios,
}

/// Everything `capstan build` was asked to do.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// `buildroot/` directory.
    pub buildroot: PathBuf,
    /// Profile name (or a directory path).
    pub profile: String,
    /// Output directory.
    pub out: PathBuf,
    /// Formats to write.
    pub formats: BTreeSet<Format>,
    /// Firmware.
    pub firmware: Firmware,
    /// Kubernetes binaries to install.
    pub kube_bin: Option<PathBuf>,
    /// The agent binary.
    pub agent_bin: PathBuf,
    /// The agent's unit files.
    pub agent_units: Option<PathBuf>,
    /// Stage cache directory.
    pub cache: PathBuf,
    /// Ignore cached stages.
    pub no_cache: bool,
    /// Ignore the cache for these stages only (`customize`, `disk`, `outputs`).
    pub rebuild: Vec<String>,
}

/// One stage in the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageReport {
    /// Stage name.
    pub name: &'static str,
    /// Cache key.
    pub key: String,
    /// Whether the cached output was used.
    pub cached: bool,
    /// Wall time.
    pub seconds: f64,
}

/// One output file in the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutputReport {
    /// Format.
    pub format: Format,
    /// Path.
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256.
    pub sha256: String,
}

/// `DIR/PROFILE.build.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildReport {
    /// Profile name.
    pub profile: String,
    /// Product version.
    pub version: String,
    /// Firmware.
    pub firmware: Firmware,
    /// SOURCE_DATE_EPOCH used.
    pub source_date_epoch: u64,
    /// Input digests.
    pub inputs: serde_json::Value,
    /// Per-stage cache keys and times.
    pub stages: Vec<StageReport>,
    /// Sizes and facts about the image.
    pub image: serde_json::Value,
    /// Files written.
    pub outputs: Vec<OutputReport>,
    /// Total wall time.
    pub seconds: f64,
    /// Things a human should look at.
    pub warnings: Vec<String>,
}

struct Stage {
    bar: ProgressBar,
    started: Instant,
    name: &'static str,
}

impl Stage {
    fn start(name: &'static str, what: &str) -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:>9} {elapsed:>4} {wide_msg}")
                .expect("valid template"),
        );
        bar.set_prefix(name);
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar, started: Instant::now(), name }
    }

    fn msg(&self, m: &str) {
        self.bar.set_message(m.chars().take(120).collect::<String>());
    }

    fn done(self, key: &str, cached: bool) -> StageReport {
        let secs = self.started.elapsed().as_secs_f64();
        self.bar.finish_and_clear();
        eprintln!(
            "capstan build: {:<9} {:>6.1}s{}",
            self.name,
            secs,
            if cached { "  (cached)" } else { "" }
        );
        StageReport { name: self.name, key: key.to_string(), cached, seconds: secs }
    }
}

fn epoch(profile: &profile::Profile) -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(profile.source_date_epoch),
    }
}

fn du(path: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(path) else {
        return 0;
    };
    if m.is_dir() {
        fs::read_dir(path)
            .map(|rd| rd.filter_map(Result::ok).map(|e| du(&e.path())).sum())
            .unwrap_or(0)
    } else {
        m.len()
    }
}

/// The report's `image.kube_bin`: each installed binary with the size and SHA-256 read when
/// the build started (the install checked the copy against them).
fn kube_bin_report(bins: &[customize::KubeBinary]) -> serde_json::Value {
    bins.iter()
        .map(|b| {
            serde_json::json!({
                "name": b.name,
                "path": format!("/usr/bin/{}", b.name),
                "bytes": b.bytes,
                "sha256": b.sha256,
            })
        })
        .collect()
}

/// Runs a build; writes the outputs and `PROFILE.build.json` into `opts.out`.
pub fn build(opts: &BuildOptions) -> anyhow::Result<BuildReport> {
    let started = Instant::now();
    let p = LoadedProfile::load(&opts.buildroot, &opts.profile)?;
    let prof = &p.profile;
    let epoch = epoch(prof)?;
    fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating output directory {}", opts.out.display()))?;
    fs::create_dir_all(&opts.cache)
        .with_context(|| format!("creating cache directory {}", opts.cache.display()))?;
    // Held to the end: `capstan cache prune` never removes what this build reads or writes.
    let _cache_lock = cache::lock_shared(&opts.cache)?;
    let mut stages = Vec::new();
    let mut warnings = Vec::new();
    if let Some(bad) = opts
        .rebuild
        .iter()
        .find(|r| !["rootfs", "customize", "disk", "outputs"].contains(&r.as_str()))
    {
        bail!("--rebuild {bad}: stages are rootfs, customize, disk, outputs");
    }
    // A bad --kube-bin fails now, not after a minute of mmdebstrap. Each binary is read once
    // here: its digest keys the customize stage and goes into the report.
    let kube_bin = match &opts.kube_bin {
        Some(k) => customize::read_kube_bin(k)?,
        None => Vec::new(),
    };
    let hit = |e: &Entry, stage: &str| {
        !opts.no_cache && !opts.rebuild.iter().any(|r| r == stage) && e.is_complete()
    };

    // rootfs
    let rootfs_key = rootfs::key(prof, epoch)?.finish();
    let rootfs = Entry::new(&opts.cache, "rootfs", rootfs_key.clone());
    let st = Stage::start("rootfs", "mmdebstrap");
    let cached = hit(&rootfs, "rootfs");
    if cached {
        rootfs.mark_used()?;
    } else {
        rootfs.begin()?;
        rootfs::run(prof, epoch, &rootfs.dir, &|l| st.msg(l))?;
        rootfs.commit()?;
    }
    stages.push(st.done(&rootfs_key, cached));
    let rootfs_tar = rootfs.dir.join("rootfs.tar");

    // customize + seal
    let inputs = customize::Inputs {
        agent_bin: opts.agent_bin.clone(),
        agent_units: opts.agent_units.clone(),
        kube_bin: kube_bin.clone(),
        epoch,
    };
    let mut ck = Key::new("customize");
    ck.str("recipe", customize::RECIPE)
        .str("rootfs", &rootfs_key)
        .json("kernel", &prof.kernel)
        .json("systemd", &prof.systemd)
        .json("seal", &prof.seal)
        .json("prune", &prof.prune)
        .json("agent", &prof.agent)
        .str("name", &prof.name)
        .str("epoch", &epoch.to_string())
        .file("agent-bin", &opts.agent_bin)?;
    for dir in p.overlay_dirs() {
        ck.dir("overlay", &dir)?;
    }
    if let Some(u) = opts.agent_units.as_ref().filter(|u| u.is_dir()) {
        ck.dir("agent-units", u)?;
    }
    // What is installed: the three binaries' content (a symlink's target, not its name),
    // not whatever else DIR holds.
    for b in &kube_bin {
        ck.str("kube-bin", b.name).str("sha256", &b.sha256);
    }
    let custom_key = ck.finish();
    let custom = Entry::new(&opts.cache, "customize", custom_key.clone());
    let st = Stage::start("customize", "overlay, agent, units, prune, seal");
    let cached = hit(&custom, "customize");
    let meta_path = custom.dir.join("customized.json");
    if cached {
        custom.mark_used()?;
    } else {
        custom.begin()?;
        let c = customize::run(&p, &inputs, &rootfs_tar, &custom.dir)?;
        st.msg("sealing");
        seal::run(&c.root, prof.seal.root_locked, epoch)?;
        let findings = crate::check::check_root(&c.root);
        if !findings.is_empty() {
            let list: Vec<String> =
                findings.iter().map(|f| format!("{}: {}", f.rule, f.detail)).collect();
            bail!("sealing left state behind:\n  {}", list.join("\n  "));
        }
        fs::write(&meta_path, serde_json::to_vec_pretty(&c)?)?;
        custom.commit()?;
    }
    let c: customize::Customized = serde_json::from_slice(
        &fs::read(&meta_path).with_context(|| format!("reading {}", meta_path.display()))?,
    )
    .context("cached customize stage is unreadable (remove the cache entry)")?;
    warnings.extend(c.warnings.iter().cloned());
    stages.push(st.done(&custom_key, cached));

    // disk
    let mut dk = Key::new("disk");
    dk.str("customize", &custom_key)
        .json("disk", &prof.disk)
        .str("cmdline", &prof.kernel.cmdline)
        .json("firmware", &opts.firmware)
        .str(
            "mkfs",
            &exec::output(std::process::Command::new("mkfs.ext4").arg("-V")).unwrap_or_default(),
        );
    if let Some(bootloader) = disk::bootloader_key(opts.firmware)? {
        dk.str("bootloader", &bootloader);
    }
    let disk_key = dk.finish();
    let disk_entry = Entry::new(&opts.cache, "disk", disk_key.clone());
    let ids = disk::DiskIds::derive(&disk_key);
    let st = Stage::start("disk", "GPT, ESP, ext4");
    let cached = hit(&disk_entry, "disk");
    if cached {
        disk_entry.mark_used()?;
    } else {
        disk_entry.begin()?;
        let title = format!("{} {}", prof.ovf.product, prof.version);
        disk::run(
            &disk::DiskSpec {
                root: &c.root,
                vmlinuz: &c.vmlinuz,
                initrd: &c.initrd,
                cmdline: &prof.kernel.cmdline,
                title: &title,
                size_mib: prof.disk.size_mib,
                esp_mib: prof.disk.esp_mib,
                epoch,
                firmware: opts.firmware,
            },
            &ids,
            &disk_entry.dir,
        )?;
        disk_entry.commit()?;
    }
    stages.push(st.done(&disk_key, cached));
    let raw = disk_entry.dir.join("disk.raw");

    // outputs (each cached by the disk key and what shapes it)
    let descriptor_inputs = ovadesc::DescriptorInputs::new(prof, &ids, epoch, opts.firmware)?;
    let mut ok = Key::new("outputs");
    ok.str("disk", &disk_key).json("descriptor", &descriptor_inputs);
    let out_key = ok.finish();
    let out_entry = Entry::new(&opts.cache, "outputs", out_key.clone());
    let st = Stage::start("outputs", "");
    let fresh_outputs = opts.no_cache || opts.rebuild.iter().any(|r| r == "outputs");
    let cached = hit(&out_entry, "outputs")
        && opts
            .formats
            .iter()
            .all(|f| out_entry.dir.join(format!("{}.{}", prof.name, f.ext())).is_file());
    if cached {
        out_entry.mark_used()?;
    } else {
        if !out_entry.is_complete() || fresh_outputs {
            out_entry.begin()?;
        }
        for f in &opts.formats {
            let dst = out_entry.dir.join(format!("{}.{}", prof.name, f.ext()));
            if dst.is_file() {
                continue;
            }
            st.msg(&format!("writing {}", dst.display()));
            match f {
                Format::Raw => outputs::sparse_copy(&raw, &dst)?,
                Format::Qcow2 => outputs::qcow2(&raw, &dst)?,
                Format::Vmdk => {
                    outputs::vmdk(
                        &raw,
                        &dst,
                        &format!("{}-disk1.vmdk", prof.name),
                        &mut |r, t| st.msg(&format!("vmdk {}%", r * 100 / t.max(1))),
                    )?;
                }
                Format::Ova => {
                    ovadesc::write_ova(&descriptor_inputs, &raw, &dst, &|m| st.msg(m))?;
                }
            }
        }
        out_entry.commit()?;
    }
    stages.push(st.done(&out_key, cached));

    let mut outs = Vec::new();
    for f in &opts.formats {
        let name = format!("{}.{}", prof.name, f.ext());
        let src = out_entry.dir.join(&name);
        let dst = opts.out.join(&name);
        if dst.exists() {
            fs::remove_file(&dst)?;
        }
        if *f == Format::Raw {
            outputs::sparse_copy(&src, &dst)?;
        } else if fs::hard_link(&src, &dst).is_err() {
            fs::copy(&src, &dst)?;
        }
        outs.push(OutputReport {
            format: *f,
            bytes: fs::metadata(&dst)?.len(),
            sha256: cache::file_sha256(&dst)?,
            path: dst,
        });
    }

    // check: read the hygiene rules back out of the built disk.
    let st = Stage::start("check", "image hygiene");
    let tmp = tempfile::Builder::new().prefix("capstan-check").tempdir()?;
    crate::check::extract_root(&raw, tmp.path())?;
    let findings = crate::check::check_root(tmp.path());
    if !findings.is_empty() {
        let list: Vec<String> =
            findings.iter().map(|f| format!("{}: {}", f.rule, f.detail)).collect();
        bail!("the built image fails its hygiene check:\n  {}", list.join("\n  "));
    }
    stages.push(st.done(&disk_key, false));

    let report = BuildReport {
        profile: prof.name.clone(),
        version: prof.version.clone(),
        firmware: opts.firmware,
        source_date_epoch: epoch,
        inputs: serde_json::json!({
            "profile_dir": p.dir,
            "debian": prof.debian,
            "agent_bin": opts.agent_bin,
            "agent_bin_sha256": cache::file_sha256(&opts.agent_bin)?,
            "kube_bin": opts.kube_bin,
            "mmdebstrap": rootfs::mmdebstrap_version()?,
        }),
        stages,
        image: serde_json::json!({
            "kernel": c.kernel_version,
            "modules_kept": c.modules_kept,
            "modules_total": c.modules_total,
            "initramfs": c.initramfs,
            "kube_bin": opts.kube_bin.as_ref().map(|_| kube_bin_report(&kube_bin)),
            "root_bytes": du(&c.root),
            "disk_bytes": prof.disk.size_mib * 1024 * 1024,
            "ids": ids,
        }),
        outputs: outs,
        seconds: started.elapsed().as_secs_f64(),
        warnings,
    };
    let report_path = opts.out.join(format!("{}.build.json", prof.name));
    let mut json = serde_json::to_vec_pretty(&report)?;
    json.push(b'\n');
    fs::write(&report_path, json).with_context(|| format!("writing {}", report_path.display()))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn kube_bin_report_lists_what_was_read() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("kube");
        fs::create_dir(&dir).unwrap();
        for name in customize::KUBE_BINARIES {
            fs::write(dir.join(name), format!("#!/bin/sh\necho {name}\n")).unwrap();
            fs::set_permissions(dir.join(name), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let r = kube_bin_report(&customize::read_kube_bin(&dir).unwrap());
        let list = r.as_array().unwrap();
        assert_eq!(list.len(), 3);
        for (entry, name) in list.iter().zip(customize::KUBE_BINARIES) {
            let src = dir.join(name);
            let sum = exec::output(std::process::Command::new("sha256sum").arg(&src)).unwrap();
            assert_eq!(entry["name"], name);
            assert_eq!(entry["path"], format!("/usr/bin/{name}"));
            assert_eq!(entry["bytes"], fs::metadata(&src).unwrap().len());
            assert_eq!(entry["sha256"].as_str(), sum.split_whitespace().next(), "{entry}");
        }
    }
}
