//! Debian packages the images are made from (etcd-server, busybox-static): the version and
//! SHA-256 the host's apt lists name, fetched once with `apt-get download` into the cache and
//! checked against that digest, so a warm build reads no network and the customize key
//! digests exactly the packages used.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::exec;

/// One package file in the cache.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deb {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// SHA-256 of the .deb (from the apt lists, checked after the download).
    pub sha256: String,
    /// The file.
    pub path: PathBuf,
}

/// The candidate's (version, file name, sha256) from `apt-cache show`'s first stanza.
fn candidate(name: &str) -> anyhow::Result<(String, String, String)> {
    let text = exec::output(Command::new("apt-cache").args(["show", "--no-all-versions", name]))
        .with_context(|| {
            format!("apt-cache show {name} (is the apt list current? apt-get update)")
        })?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .with_context(|| format!("apt-cache show {name}: no {key:?} field"))
    };
    let file = field("Filename:")?;
    let base = file.rsplit('/').next().unwrap_or(&file).to_string();
    Ok((field("Version:")?, base, field("SHA256:")?))
}

/// `name`'s candidate .deb in `dir` (downloaded when missing or wrong).
pub fn fetch(name: &str, dir: &Path) -> anyhow::Result<Deb> {
    let (version, base, sha256) = candidate(name)?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(&base);
    let good = |p: &Path| crate::cache::file_sha256(p).map(|s| s == sha256).unwrap_or(false);
    if !good(&path) {
        exec::run(
            Command::new("apt-get")
                .args(["download", "-q", &format!("{name}={version}")])
                .current_dir(dir),
        )
        .with_context(|| format!("downloading {name} {version}"))?;
        // apt-get names the file with the epoch (`1%3a1.35.0-…`), the pool without it.
        let got = fs::read_dir(dir)?.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            p != &path
                && p.file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with(&format!("{name}_")))
                && good(p)
        });
        if let Some(got) = got {
            fs::rename(&got, &path)?;
        }
        if !good(&path) {
            bail!(
                "{}: downloaded, but its SHA-256 is not {sha256} (the apt list's)",
                path.display()
            );
        }
    }
    Ok(Deb { name: name.to_string(), version, sha256, path })
}

/// Unpacks `deb` into `dir` (`dpkg-deb -x`, no maintainer scripts).
pub fn extract(deb: &Deb, dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    exec::run(Command::new("dpkg-deb").arg("-x").arg(&deb.path).arg(dir))
        .with_context(|| format!("unpacking {}", deb.path.display()))
}
