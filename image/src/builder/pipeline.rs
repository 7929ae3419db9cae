//! The walk over [`Stage::ALL`]: one cache protocol for every cached stage (key, hit or
//! make, commit), and per stage only what is its own: the key's inputs, the work, and what
//! later stages read from its entry.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};

use super::customize::{self, Customized, KubeBinary};
use super::disk::{self, DiskIds};
use super::kube::{self, KubeDir, Preload, Preloaded};
use super::outputs;
use super::ovadesc::DescriptorInputs;
use super::profile::{LoadedProfile, Profile};
use super::stage::{Progress, Stage};
use super::{rootfs, sbom, seal, BuildOptions, BuildReport, OutputReport, StageReport};
use crate::cache::{self, CacheLock, Entry, Key};
use crate::exec;

/// The build in progress: its inputs, and what each finished stage left for the next.
pub(super) struct Pipeline<'a> {
    opts: &'a BuildOptions,
    profile: LoadedProfile,
    epoch: u64,
    kube_bin: Vec<KubeBinary>,
    preload: Option<Preload>,
    started: Instant,
    // Held to the end: `capstan cache prune` never removes what this build reads or writes.
    _cache_lock: CacheLock,
    stages: Vec<StageReport>,
    warnings: Vec<String>,
    rootfs: Option<Entry>,
    customized: Option<(Entry, Customized)>,
    disk: Option<(Entry, DiskIds)>,
    descriptor: Option<DescriptorInputs>,
    outputs: Option<Entry>,
    published: Vec<OutputReport>,
}

/// The umask every build runs under (Debian's `dpkg-buildpackage` sets the same).
pub(super) const BUILD_UMASK: u32 = 0o022;

/// The customize stage's facts (kernel, modules, warnings), in its entry.
const CUSTOMIZED: &str = "customized.json";

/// What the preload carried ([`Preloaded`]), in the customize entry when images were.
const PRELOADED: &str = "kube-images.json";

impl<'a> Pipeline<'a> {
    /// Loads the profile, checks the inputs that can fail early, and takes the cache lock.
    pub(super) fn prepare(opts: &'a BuildOptions) -> anyhow::Result<Self> {
        let started = Instant::now();
        // The modes of every file the builder and the tools it runs (mmdebstrap, dpkg,
        // depmod, systemctl) create come from the umask: one build started under 077 and
        // another under 002 must still make the same image.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(BUILD_UMASK));
        let profile = LoadedProfile::load(&opts.buildroot, &opts.profile)?;
        let epoch = epoch(&profile.profile)?;
        fs::create_dir_all(&opts.out)
            .with_context(|| format!("creating output directory {}", opts.out.display()))?;
        fs::create_dir_all(&opts.cache)
            .with_context(|| format!("creating cache directory {}", opts.cache.display()))?;
        let cache_lock = cache::lock_shared(&opts.cache)?;
        // A bad --kube-bin fails now, not after a minute of mmdebstrap. Each binary is read
        // once here: its digest keys the customize stage and goes into the report.
        // DIR/bin + DIR/images (kubernetes.sh's folder) or a flat DIR of binaries.
        let kube_dir = opts.kube_bin.as_deref().map(KubeDir::resolve);
        let kube_bin = match &kube_dir {
            Some(k) => customize::read_kube_bin(&k.bin)?,
            None => Vec::new(),
        };
        let preload = match &kube_dir {
            Some(k) => Preload::read(k, &opts.cache.join("debs"))?,
            None => None,
        };
        Ok(Self {
            opts,
            profile,
            epoch,
            kube_bin,
            preload,
            started,
            _cache_lock: cache_lock,
            stages: Vec::new(),
            warnings: Vec::new(),
            rootfs: None,
            customized: None,
            disk: None,
            descriptor: None,
            outputs: None,
            published: Vec::new(),
        })
    }

    /// Runs every stage in order and returns the report.
    pub(super) fn walk(mut self) -> anyhow::Result<BuildReport> {
        for stage in Stage::ALL {
            let report = self.run(stage)?;
            self.stages.push(report);
            if stage == Stage::Outputs {
                self.publish()?;
            }
        }
        self.report()
    }

    fn prof(&self) -> &Profile {
        &self.profile.profile
    }

    /// Whether `stage` may come from the cache.
    fn use_cache(&self, stage: Stage) -> bool {
        !self.opts.no_cache && !self.opts.rebuild.contains(&stage)
    }

    /// One stage: the uncached check runs as is; a cached stage is a hit (the entry is
    /// complete and holds what this build needs) or is made into its entry and committed.
    fn run(&mut self, stage: Stage) -> anyhow::Result<StageReport> {
        if !stage.is_cached() {
            let progress = Progress::start(stage);
            self.check()?;
            return Ok(progress.done(&self.disk().0.key, false));
        }
        // Keyed before the spinner starts: a stage's time is its work, not the hashing.
        let key = self.key(stage)?;
        let progress = Progress::start(stage);
        let entry = Entry::new(&self.opts.cache, stage.name(), key.clone());
        let reusable = self.use_cache(stage) && entry.is_complete();
        let hit = reusable && self.holds_everything(stage, &entry);
        if hit {
            entry.mark_used()?;
        } else {
            // A complete outputs entry that lacks a format keeps the formats it has.
            if !reusable {
                entry.begin()?;
            }
            self.make(stage, &entry, &progress)?;
            entry.commit()?;
        }
        self.finish(stage, entry)?;
        Ok(progress.done(&key, hit))
    }

    /// The cache key of a cached stage (each digests the previous stage's key).
    fn key(&self, stage: Stage) -> anyhow::Result<String> {
        Ok(match stage {
            Stage::Rootfs => rootfs::key(self.prof(), self.epoch)?.finish(),
            Stage::Customize => self.customize_key()?,
            Stage::Disk => self.disk_key()?,
            Stage::Outputs => {
                let mut k = Key::new(Stage::Outputs.name());
                k.str("disk", &self.disk().0.key).json("descriptor", self.descriptor());
                k.finish()
            }
            Stage::Check => unreachable!("the check stage is not cached"),
        })
    }

    fn customize_key(&self) -> anyhow::Result<String> {
        let prof = self.prof();
        let mut k = Key::new(Stage::Customize.name());
        k.str("recipe", customize::RECIPE)
            .str("sbom", sbom::RECIPE)
            .str("agent-crates", sbom::AGENT_CRATES)
            // The initramfs helper is part of capstan, not of the inputs: its bytes are.
            .str(
                "veritysetup",
                &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(super::initramfs::VERITYSETUP)),
            )
            .str("rootfs", &self.rootfs().key)
            .json("kernel", &prof.kernel)
            .json("systemd", &prof.systemd)
            .json("seal", &prof.seal)
            .json("prune", &prof.prune)
            .json("verity", &prof.disk.verity)
            .json("agent", &prof.agent)
            .str("name", &prof.name)
            .str("epoch", &self.epoch.to_string())
            .file("agent-bin", &self.opts.agent_bin)?;
        for dir in self.profile.overlay_dirs() {
            k.dir("overlay", &dir)?;
        }
        if let Some(u) = self.opts.agent_units.as_ref().filter(|u| u.is_dir()) {
            k.dir("agent-units", u)?;
        }
        // What is installed: the three binaries' content (a symlink's target, not its name),
        // not whatever else DIR holds.
        for b in &self.kube_bin {
            k.str("kube-bin", b.name).str("sha256", &b.sha256);
        }
        if let Some(p) = &self.preload {
            p.key(&mut k);
        }
        Ok(k.finish())
    }

    fn disk_key(&self) -> anyhow::Result<String> {
        let prof = self.prof();
        let mut k = Key::new(Stage::Disk.name());
        k.str("recipe", disk::RECIPE)
            .str("customize", &self.customized().0.key)
            .json("disk", &prof.disk)
            .str("cmdline", &prof.kernel.cmdline)
            .json("firmware", &self.opts.firmware)
            .str(
                "mkfs",
                &exec::output(std::process::Command::new("mkfs.ext4").arg("-V"))
                    .unwrap_or_default(),
            );
        if let Some(bootloader) = disk::bootloader_key(self.opts.firmware)? {
            k.str("bootloader", &bootloader);
        }
        Ok(k.finish())
    }

    /// Whether a complete entry holds what this build needs: the outputs entry must hold
    /// every requested format's artefacts; the other stages' entries are whole.
    fn holds_everything(&self, stage: Stage, entry: &Entry) -> bool {
        stage != Stage::Outputs
            || self.opts.formats.iter().all(|f| {
                f.artefacts(&self.prof().name).iter().all(|a| entry.dir.join(&a.name).is_file())
            })
    }

    /// The work of a cached stage, into its (begun) entry.
    fn make(&self, stage: Stage, entry: &Entry, progress: &Progress) -> anyhow::Result<()> {
        let prof = self.prof();
        match stage {
            Stage::Rootfs => {
                rootfs::run(prof, self.epoch, &entry.dir, &|l| progress.msg(l)).map(drop)
            }
            Stage::Customize => self.make_customize(entry, progress),
            Stage::Disk => self.make_disk(entry),
            Stage::Outputs => {
                let sources = outputs::Sources {
                    raw: &self.raw(),
                    sbom: &self.customized().0.dir,
                    name: &prof.name,
                    descriptor: self.descriptor(),
                };
                for f in &self.opts.formats {
                    f.write(&sources, &entry.dir, &|m| progress.msg(m))?;
                }
                Ok(())
            }
            Stage::Check => unreachable!("the check stage is not cached"),
        }
    }

    fn make_customize(&self, entry: &Entry, progress: &Progress) -> anyhow::Result<()> {
        let inputs = customize::Inputs {
            agent_bin: self.opts.agent_bin.clone(),
            agent_units: self.opts.agent_units.clone(),
            kube_bin: self.kube_bin.clone(),
            epoch: self.epoch,
        };
        let rootfs_tar = self.rootfs().dir.join("rootfs.tar");
        let mut c = customize::run(&self.profile, &inputs, &rootfs_tar, &entry.dir)?;
        let preloaded = match &self.preload {
            Some(p) => {
                progress.msg("building and preloading container images");
                let made = kube::preload(p, &c.root, self.epoch, &entry.dir.join("images"))?;
                fs::write(entry.dir.join(PRELOADED), serde_json::to_vec_pretty(&made)?)?;
                Some(made)
            }
            None => None,
        };
        progress.msg("SBOM");
        c.sbom = Some(self.make_sbom(&c, preloaded.as_ref(), entry)?);
        progress.msg("sealing");
        seal::run(&c.root, self.prof().seal.root_locked, self.epoch)?;
        fail_on_findings(&c.root, "sealing left state behind")?;
        fs::write(entry.dir.join(CUSTOMIZED), serde_json::to_vec_pretty(&c)?)?;
        Ok(())
    }

    /// The SBOM of the customized root, before the seal (which leaves the dpkg database
    /// alone) so that its file in the image gets the epoch's times with the rest.
    fn make_sbom(
        &self,
        c: &Customized,
        preloaded: Option<&Preloaded>,
        entry: &Entry,
    ) -> anyhow::Result<sbom::Made> {
        let started = Instant::now();
        let prof = self.prof();
        let digests = self.rootfs().dir.join(rootfs::DEB_DIGESTS);
        let sbom = sbom::Sbom::collect(
            &c.root,
            &sbom::Inputs {
                name: &prof.name,
                version: &prof.version,
                epoch: self.epoch,
                seed: &entry.key,
                deb_manifest: Some(&digests),
                licences: &c.licences,
                files: self.kube_bin.iter().map(|b| (b.name, b.sha256.as_str())).collect(),
                images: preloaded
                    .map(|p| {
                        p.images.iter().map(|i| (i.name.as_str(), i.digest.as_str())).collect()
                    })
                    .unwrap_or_default(),
            },
        )
        .context("making the SBOM")?;
        let made = sbom.write(&c.root, &entry.dir).context("writing the SBOM")?;
        Ok(sbom::Made { seconds: started.elapsed().as_secs_f64(), ..made })
    }

    fn make_disk(&self, entry: &Entry) -> anyhow::Result<()> {
        let prof = self.prof();
        let c = &self.customized().1;
        let title = format!("{} {}", prof.ovf.product, prof.version);
        let ids = DiskIds::derive(&entry.key);
        disk::run(
            &disk::DiskSpec {
                root: &c.root,
                vmlinuz: &c.vmlinuz,
                initrd: &c.initrd,
                cmdline: &prof.kernel.cmdline,
                title: &title,
                size_mib: prof.disk.size_mib,
                esp_mib: prof.disk.esp_mib,
                epoch: self.epoch,
                firmware: self.opts.firmware,
                verity: prof.disk.verity,
            },
            &ids,
            &entry.dir,
        )
        .map(drop)
    }

    /// Records what a finished stage leaves for the next ones.
    fn finish(&mut self, stage: Stage, made: Entry) -> anyhow::Result<()> {
        match stage {
            Stage::Rootfs => self.rootfs = Some(made),
            Stage::Customize => {
                let path = made.dir.join(CUSTOMIZED);
                let c: Customized = serde_json::from_slice(
                    &fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                )
                .context("cached customize stage is unreadable (remove the cache entry)")?;
                self.warnings.extend(c.warnings.iter().cloned());
                self.customized = Some((made, c));
            }
            Stage::Disk => {
                let ids = DiskIds::derive(&made.key);
                self.descriptor =
                    Some(DescriptorInputs::new(self.prof(), &ids, self.epoch, self.opts.firmware)?);
                self.disk = Some((made, ids));
            }
            Stage::Outputs => self.outputs = Some(made),
            Stage::Check => {}
        }
        Ok(())
    }
}

impl Pipeline<'_> {
    fn rootfs(&self) -> &Entry {
        self.rootfs.as_ref().expect("Stage::ALL runs rootfs before customize")
    }

    fn customized(&self) -> &(Entry, Customized) {
        self.customized.as_ref().expect("Stage::ALL runs customize before disk")
    }

    fn disk(&self) -> &(Entry, DiskIds) {
        self.disk.as_ref().expect("Stage::ALL runs disk before outputs and check")
    }

    fn descriptor(&self) -> &DescriptorInputs {
        self.descriptor.as_ref().expect("Stage::ALL runs disk before outputs")
    }

    /// The customize entry's [`Preloaded`], when images were carried.
    fn preloaded(&self) -> anyhow::Result<Option<Preloaded>> {
        let path = self.customized().0.dir.join(PRELOADED);
        if self.preload.is_none() || !path.is_file() {
            return Ok(None);
        }
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(serde_json::from_slice(&bytes).context("cached preload record is unreadable")?))
    }

    fn raw(&self) -> PathBuf {
        self.disk().0.dir.join("disk.raw")
    }

    /// Copies every requested format's artefacts from the outputs entry into `-o DIR`; with a
    /// signing key the OVA is signed on the way (after the outputs stage, so the cached OVA,
    /// and the stage's key, know nothing of the key).
    fn publish(&mut self) -> anyhow::Result<()> {
        let from = self.outputs.as_ref().expect("runs after the outputs stage").dir.clone();
        for f in &self.opts.formats {
            for a in f.artefacts(&self.prof().name) {
                // Every format names the SBOM; it is published (and reported) once.
                if self.published.iter().any(|p| p.path.file_name() == Some(a.name.as_ref())) {
                    continue;
                }
                let key = self.opts.sign.as_deref().filter(|_| a.is_signable());
                let path = match key {
                    Some(key) => a.publish_signed(&from, &self.opts.out, key)?,
                    None => a.publish(&from, &self.opts.out)?,
                };
                self.published.push(OutputReport {
                    format: a.format,
                    kind: a.kind,
                    bytes: fs::metadata(&path)?.len(),
                    sha256: cache::file_sha256(&path)?,
                    path,
                    signed_by: key.map(|k| k.signer().subject.clone()),
                });
            }
        }
        Ok(())
    }

    /// The check stage: the hygiene rules read back out of the built disk.
    fn check(&self) -> anyhow::Result<()> {
        let tmp = tempfile::Builder::new().prefix("capstan-check").tempdir()?;
        crate::check::extract_root(&self.raw(), tmp.path())?;
        fail_on_findings(tmp.path(), "the built image fails its hygiene check")
    }

    fn report(self) -> anyhow::Result<BuildReport> {
        let opts = self.opts;
        let prof = self.prof();
        let (_, c) = self.customized();
        let (_, ids) = self.disk();
        Ok(BuildReport {
            profile: prof.name.clone(),
            version: prof.version.clone(),
            firmware: opts.firmware,
            source_date_epoch: self.epoch,
            inputs: serde_json::json!({
                "profile_dir": self.profile.dir,
                "debian": prof.debian,
                "agent_bin": opts.agent_bin,
                "agent_bin_sha256": cache::file_sha256(&opts.agent_bin)?,
                "kube_bin": opts.kube_bin,
                "mmdebstrap": rootfs::mmdebstrap_version()?,
            }),
            stages: self.stages.clone(),
            image: serde_json::json!({
                "kernel": c.kernel_version,
                "modules_kept": c.modules_kept,
                "modules_total": c.modules_total,
                "rootfs_packages": rootfs::installed(&self.rootfs().dir)?,
                "initramfs": c.initramfs,
                "sbom": c.sbom,
                "kube_bin": opts.kube_bin.as_ref().map(|_| super::kube_bin_report(&self.kube_bin)),
                "kubernetes": self.preloaded()?,
                "root_bytes": super::du(&c.root),
                "disk_bytes": prof.disk.size_mib * 1024 * 1024,
                "ids": ids,
            }),
            outputs: self.published.clone(),
            seconds: self.started.elapsed().as_secs_f64(),
            warnings: self.warnings.clone(),
        })
    }
}

/// Fails with `what` and the list of findings if the hygiene check finds anything in `root`.
fn fail_on_findings(root: &Path, what: &str) -> anyhow::Result<()> {
    let findings = crate::check::check_root(root);
    if !findings.is_empty() {
        let list: Vec<String> =
            findings.iter().map(|f| format!("{}: {}", f.rule, f.detail)).collect();
        bail!("{what}:\n  {}", list.join("\n  "));
    }
    Ok(())
}

fn epoch(profile: &Profile) -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(profile.source_date_epoch),
    }
}
