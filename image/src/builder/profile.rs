//! `buildroot/<name>/profile.toml`: what goes into an appliance image.
//!
//! Strict serde: an unknown or misspelled key is an error naming the file, so a typo never
//! silently drops a package or a module from a template.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors loading a profile.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The profile directory or file could not be read.
    #[error("cannot read profile {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid profile.
    #[error("invalid profile {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: toml::de::Error,
    },
    /// A cross-field rule is broken.
    #[error("invalid profile {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A parsed profile plus where it came from.
#[derive(Debug, Clone)]
pub struct LoadedProfile {
    /// The profile directory (`buildroot/<name>`).
    pub dir: PathBuf,
    /// The parsed `profile.toml`.
    pub profile: Profile,
}

/// The contents of `profile.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Profile name; must match the directory name.
    pub name: String,
    /// One line for humans and the OVF annotation.
    pub description: String,
    /// Product version written into the OVF ProductSection.
    pub version: String,
    /// Timestamps in the image are clamped to this; `SOURCE_DATE_EPOCH` overrides it.
    pub source_date_epoch: u64,
    /// Overlay directories copied over the root, in order, relative to the profile directory.
    #[serde(default)]
    pub overlays: Vec<PathBuf>,
    /// Debian packages.
    pub debian: Debian,
    /// Kernel, initramfs and module pruning.
    pub kernel: Kernel,
    /// Unit states.
    #[serde(default)]
    pub systemd: Systemd,
    /// What to take out of the root after installation.
    #[serde(default)]
    pub prune: Prune,
    /// Sealing policy.
    #[serde(default)]
    pub seal: Seal,
    /// Disk layout.
    pub disk: Disk,
    /// Agent defaults written verbatim (as TOML) to `/etc/capstan/agent.toml`.
    #[serde(default)]
    pub agent: toml::Table,
    /// OVF hardware and product metadata.
    pub ovf: Ovf,
}

/// `[debian]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Debian {
    /// Suite, e.g. `bookworm`.
    pub suite: String,
    /// apt source lines passed to mmdebstrap (the host's apt sources are never used).
    pub mirrors: Vec<String>,
    /// The kernel package.
    pub kernel: String,
    /// Packages on top of `minbase`.
    pub packages: Vec<String>,
}

/// `[kernel]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Kernel command line (root= is added by the builder).
    pub cmdline: String,
    /// Who makes the initramfs.
    #[serde(default)]
    pub initramfs: InitramfsKind,
    /// Modules placed in the initramfs.
    pub initramfs_modules: Vec<String>,
    /// Modules kept in the root (with their dependencies); `["*"]` keeps all.
    pub modules: Vec<String>,
    /// Modules loaded at boot via modules-load.d.
    #[serde(default)]
    pub load: Vec<String>,
}

/// `[kernel] initramfs`: who makes the initramfs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitramfsKind {
    /// Debian's initramfs-tools, when the kernel package is installed (`MODULES=list` with
    /// `initramfs_modules`, or Debian's default `MODULES=most` when that list is empty).
    #[default]
    InitramfsTools,
    /// The builder's own (`builder/initramfs.rs`): the image's `busybox-static` and
    /// `initramfs_modules`, no udev. Needs `busybox-static` in `debian.packages`.
    Capstan,
}

/// `[systemd]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Systemd {
    /// Units to enable.
    #[serde(default)]
    pub enable: Vec<String>,
    /// Units to disable.
    #[serde(default)]
    pub disable: Vec<String>,
    /// Units to mask.
    #[serde(default)]
    pub mask: Vec<String>,
}

/// `[prune]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prune {
    /// Packages purged after installation (`dpkg --purge --force-depends`): things a
    /// dependency pulled in that the appliance never runs.
    #[serde(default)]
    pub purge: Vec<String>,
    /// Paths removed (relative to the root; `*` allowed in the last component).
    #[serde(default)]
    pub paths: Vec<String>,
}

/// `[seal]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seal {
    /// Lock root's password (login only with keys the agent installs).
    #[serde(default = "yes")]
    pub root_locked: bool,
}

impl Default for Seal {
    fn default() -> Self {
        Self { root_locked: true }
    }
}

fn yes() -> bool {
    true
}

/// `[disk]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Virtual disk size in MiB (the root partition fills what the ESP leaves).
    pub size_mib: u64,
    /// EFI system partition size in MiB.
    pub esp_mib: u64,
    /// `/usr` on its own read-only partition, verified by dm-verity at every read (needs
    /// `kernel.initramfs = "capstan"`, whose /init opens it). On by default.
    #[serde(default = "yes")]
    pub verity: bool,
    /// Why a profile turns `verity` off (required then).
    #[serde(default)]
    pub verity_reason: Option<String>,
}

/// `[ovf]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ovf {
    /// Product name.
    pub product: String,
    /// Vendor.
    pub vendor: String,
    /// Virtual hardware version, e.g. `vmx-15`.
    pub hardware_version: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

impl LoadedProfile {
    /// Loads `NAME` from `root/NAME/profile.toml`, or a profile directory given as a path.
    pub fn load(root: &Path, name_or_dir: &str) -> Result<Self, ProfileError> {
        let dir = if name_or_dir.contains('/') {
            PathBuf::from(name_or_dir)
        } else {
            root.join(name_or_dir)
        };
        let path = dir.join("profile.toml");
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ProfileError::Read { path: path.clone(), source })?;
        let profile = Profile::parse(&text)
            .map_err(|source| ProfileError::Parse { path: path.clone(), source })?;
        profile.validate().map_err(|reason| ProfileError::Invalid { path, reason })?;
        Ok(Self { dir, profile })
    }

    /// Absolute overlay directories, in order.
    pub fn overlay_dirs(&self) -> Vec<PathBuf> {
        self.profile.overlays.iter().map(|o| self.dir.join(o)).collect()
    }
}

impl Profile {
    /// Parses the TOML text of a profile.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Cross-field rules.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return Err(format!("name {:?}: use lowercase letters, digits and '-'", self.name));
        }
        if self.disk.esp_mib < 33 {
            return Err("disk.esp_mib must be at least 33 (FAT16 minimum)".into());
        }
        if self.disk.size_mib < self.disk.esp_mib + 256 {
            return Err("disk.size_mib leaves less than 256 MiB for the root".into());
        }
        if self.debian.mirrors.is_empty() {
            return Err("debian.mirrors is empty".into());
        }
        if self.kernel.initramfs == InitramfsKind::Capstan {
            if self.kernel.initramfs_modules.is_empty() {
                return Err("kernel.initramfs = \"capstan\" needs kernel.initramfs_modules (the storage drivers)".into());
            }
            if !self.debian.packages.iter().any(|p| p == "busybox-static") {
                return Err(
                    "kernel.initramfs = \"capstan\" needs busybox-static in debian.packages".into(),
                );
            }
        }
        if self.disk.verity && self.kernel.initramfs != InitramfsKind::Capstan {
            return Err("disk.verity needs kernel.initramfs = \"capstan\" (its /init opens the verity device); \
                 or set disk.verity = false with disk.verity_reason"
                .into());
        }
        if !self.disk.verity
            && self.disk.verity_reason.as_deref().is_none_or(|r| r.trim().is_empty())
        {
            return Err(
                "disk.verity = false needs disk.verity_reason: write down why /usr is not verified"
                    .into(),
            );
        }
        if ["usrhash=", "systemd.verity_usr_"].iter().any(|k| self.kernel.cmdline.contains(k)) {
            return Err("kernel.cmdline must not set usrhash= or systemd.verity_usr_* (the builder adds them)".into());
        }
        if self.kernel.cmdline.contains("root=") {
            return Err("kernel.cmdline must not set root= (the builder adds it)".into());
        }
        for unit in
            self.systemd.enable.iter().chain(&self.systemd.disable).chain(&self.systemd.mask)
        {
            if unit.contains('/') || !unit.contains('.') {
                return Err(format!("systemd unit {unit:?} is not a unit file name"));
            }
        }
        for p in &self.prune.paths {
            let parent_has_glob = p.rsplit_once('/').is_some_and(|(d, _)| d.contains('*'));
            if p.starts_with('/')
                || p.split('/').any(|c| c == "..")
                || p.is_empty()
                || parent_has_glob
            {
                return Err(format!(
                    "prune.paths {p:?}: use a relative path inside the root, `*` only in the last component"
                ));
            }
        }
        if !self.ovf.hardware_version.starts_with("vmx-") {
            return Err(format!(
                "ovf.hardware_version {:?} must look like vmx-15",
                self.ovf.hardware_version
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_buildroot() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildroot")
    }

    #[test]
    fn shipped_profiles_parse_and_validate() {
        for name in ["lb", "node", "bench-stock"] {
            let p = LoadedProfile::load(&repo_buildroot(), name).unwrap();
            assert_eq!(p.profile.name, name);
            for dir in p.overlay_dirs() {
                assert!(dir.is_dir(), "{} missing", dir.display());
            }
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = std::fs::read_to_string(repo_buildroot().join("lb/profile.toml")).unwrap();
        let bad = text.replace("[disk]\n", "[disk]\nsize_gib = 3\n");
        let err = Profile::parse(&bad).unwrap_err().to_string();
        assert!(err.contains("size_gib"), "{err}");
    }

    #[test]
    fn capstan_initramfs_needs_busybox_static_and_modules() {
        let text = std::fs::read_to_string(repo_buildroot().join("lb/profile.toml")).unwrap();
        let p = Profile::parse(&text).unwrap();
        assert_eq!(p.kernel.initramfs, InitramfsKind::Capstan);
        let mut no_busybox = p.clone();
        no_busybox.debian.packages.retain(|p| p != "busybox-static");
        assert!(no_busybox.validate().unwrap_err().contains("busybox-static"));
        let mut no_modules = p.clone();
        no_modules.kernel.initramfs_modules.clear();
        assert!(no_modules.validate().unwrap_err().contains("initramfs_modules"));
        let bad = text.replace("initramfs = \"capstan\"", "initramfs = \"dracut\"");
        let err = Profile::parse(&bad).unwrap_err().to_string();
        assert!(err.contains("dracut"), "{err}");
        let stock = std::fs::read_to_string(repo_buildroot().join("bench-stock/profile.toml"));
        let stock = Profile::parse(&stock.unwrap()).unwrap();
        assert_eq!(stock.kernel.initramfs, InitramfsKind::InitramfsTools);
    }

    #[test]
    fn verity_is_on_by_default_and_off_only_with_a_reason() {
        let text = std::fs::read_to_string(repo_buildroot().join("lb/profile.toml")).unwrap();
        let p = Profile::parse(&text).unwrap();
        assert!(p.disk.verity, "lb verifies /usr");
        let mut off = p.clone();
        off.disk.verity = false;
        assert!(off.validate().unwrap_err().contains("verity_reason"));
        off.disk.verity_reason = Some("  ".into());
        assert!(off.validate().unwrap_err().contains("verity_reason"));
        off.disk.verity_reason = Some("a test".into());
        off.validate().unwrap();
        let mut tools = p.clone();
        tools.kernel.initramfs = InitramfsKind::InitramfsTools;
        assert!(tools.validate().unwrap_err().contains("disk.verity"));
        let mut usrhash = p.clone();
        usrhash.kernel.cmdline.push_str(" usrhash=00");
        assert!(usrhash.validate().unwrap_err().contains("usrhash="));
        for name in ["node", "bench-stock"] {
            let t = std::fs::read_to_string(repo_buildroot().join(name).join("profile.toml"));
            let q = Profile::parse(&t.unwrap()).unwrap();
            assert!(q.disk.verity || q.disk.verity_reason.is_some(), "{name}");
        }
    }

    #[test]
    fn root_in_cmdline_is_rejected() {
        let text = std::fs::read_to_string(repo_buildroot().join("lb/profile.toml")).unwrap();
        let mut p = Profile::parse(&text).unwrap();
        p.kernel.cmdline.push_str(" root=/dev/sda1");
        assert!(p.validate().unwrap_err().contains("root="));
    }
}
