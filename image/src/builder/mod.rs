//! The template builder: `capstan build PROFILE`.
//!
//! A build walks [`Stage::ALL`]; each cached stage lives under a key that digests its inputs
//! and the previous stage's key:
//!
//! ```text
//! rootfs (mmdebstrap) -> customize + seal -> disk (GPT, ESP, ext4) -> outputs -> check
//! ```
//!
//! A warm build (nothing changed) only re-keys the inputs and copies the cached outputs;
//! changing the agent binary or an overlay reuses the rootfs and redoes the rest.
//!
//! Imports point down: `builder` uses `crate::{cache, exec, gpt, firmware, check, sign}` and the
//! `ovf` and `capstan_agent` crates; nothing below it (`lab`, `check`, `cache`) imports it.

pub mod customize;
pub mod disk;
pub mod ext4;
pub mod initramfs;
pub mod kube;
pub mod oci;
pub mod outputs;
pub mod ovadesc;
mod pipeline;
pub mod profile;
pub mod rootfs;
pub mod sbom;
pub mod seal;
pub mod stage;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

use self::outputs::{ArtefactKind, Format};
pub use self::stage::Stage;
use crate::firmware::Firmware;

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
    /// Ignore the cache for these stages only.
    pub rebuild: BTreeSet<Stage>,
    /// Sign the OVA with this key (`--sign-key`, `--sign-cert`). The cached OVA stays
    /// unsigned; the one in `out` is signed from it.
    pub sign: Option<std::sync::Arc<crate::sign::SigningKey>>,
}

/// One stage in the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageReport {
    /// Stage name.
    pub name: Stage,
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
    /// The format that wrote it.
    pub format: Format,
    /// What it is; left out for the format's image.
    #[serde(skip_serializing_if = "ArtefactKind::is_image")]
    pub kind: ArtefactKind,
    /// Path.
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256.
    pub sha256: String,
    /// The signer's certificate subject, for a signed OVA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
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

/// Runs a build; writes the outputs and `PROFILE.build.json` into `opts.out`.
pub fn build(opts: &BuildOptions) -> anyhow::Result<BuildReport> {
    let report = pipeline::Pipeline::prepare(opts)?.walk()?;
    let report_path = opts.out.join(format!("{}.build.json", report.profile));
    let mut json = serde_json::to_vec_pretty(&report)?;
    json.push(b'\n');
    fs::write(&report_path, json).with_context(|| format!("writing {}", report_path.display()))?;
    Ok(report)
}

/// Bytes under `path` (apparent sizes; symlinks not followed).
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
            let sum =
                crate::exec::output(std::process::Command::new("sha256sum").arg(&src)).unwrap();
            assert_eq!(entry["name"], name);
            assert_eq!(entry["path"], format!("/usr/bin/{name}"));
            assert_eq!(entry["bytes"], fs::metadata(&src).unwrap().len());
            assert_eq!(entry["sha256"].as_str(), sum.split_whitespace().next(), "{entry}");
        }
    }
}

#[cfg(test)]
mod layering {
    use std::path::Path;

    /// The `crate::` modules that `file` (or any file under it) names.
    fn imports(path: &Path, out: &mut Vec<(String, String)>) {
        if path.is_dir() {
            for e in std::fs::read_dir(path).unwrap() {
                imports(&e.unwrap().path(), out);
            }
            return;
        }
        let text = std::fs::read_to_string(path).unwrap();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let module: String =
                rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let module = if module.is_empty() && rest.starts_with('{') {
                rest[1..].split('}').next().unwrap_or_default().to_string()
            } else {
                module
            };
            out.push((path.display().to_string(), module));
        }
    }

    /// docs/architecture.md, "The builder": arrows point down. Each module below `builder`
    /// names none of the modules above it (in code, tests or docs comments alike).
    #[test]
    fn modules_below_the_builder_never_import_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let rules: [(&str, &[&str]); 8] = [
            ("sign", &["builder", "cmd", "lab", "check", "cache", "exec", "gpt", "firmware"]),
            ("lab", &["builder", "cmd"]),
            ("check", &["builder", "cmd", "lab", "cache"]),
            ("cache", &["builder", "cmd", "lab", "check"]),
            ("exec.rs", &["builder", "cmd", "lab", "check", "cache", "gpt"]),
            ("gpt.rs", &["builder", "cmd", "lab", "check", "cache", "exec"]),
            ("firmware.rs", &["builder", "cmd", "lab", "check", "cache", "exec", "gpt"]),
            ("builder", &["cmd", "lab"]),
        ];
        let mut broken = Vec::new();
        for (module, forbidden) in rules {
            let mut found = Vec::new();
            imports(&src.join(module), &mut found);
            for (file, named) in found {
                if forbidden.iter().any(|f| named.split([',', ' ']).any(|n| n.trim() == *f)) {
                    broken.push(format!("{file} names crate::{named}"));
                }
            }
        }
        assert!(broken.is_empty(), "imports that point up:\n{}", broken.join("\n"));
    }
}
