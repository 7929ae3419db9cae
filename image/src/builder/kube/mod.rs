//! What the node template carries of Kubernetes besides its three binaries: the container
//! images kubeadm needs for the carried version, preloaded into containerd's `k8s.io`
//! namespace at build time (clones cannot pull), as image-builder does.
//!
//! `--kube-bin DIR` is either a flat directory with kubeadm, kubelet and kubectl (binaries
//! only, nothing preloaded), or `../shared/tools/kubernetes.sh`'s folder: `DIR/bin/` (those
//! three plus `kube-proxy`) and `DIR/images/*.tar` (image archives `ctr images import`
//! reads). With `images/`, the builder also makes (`images.rs`, written by `builder/oci`):
//! etcd from Debian's etcd-server under the name kubeadm expects, a kube-proxy with iptables
//! and conntrack (it replaces any kube-proxy archive in `images/`), and a busybox for test
//! pods; then imports everything into the tree (`preload.rs`).

pub mod debs;
pub mod elf;
pub mod images;
pub mod preload;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::builder::oci;
use crate::exec;

/// Part of the customize key when images are carried: bump when what is built or how it
/// is imported changes.
pub const RECIPE: &str = "2026-12-03.1 oci layout, etcd/kube-proxy/busybox, ctr import";

/// The Debian packages the built images come from.
const DEBS: [&str; 2] = ["etcd-server", "busybox-static"];

/// `--kube-bin DIR` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeDir {
    /// Where kubeadm, kubelet, kubectl (and kube-proxy) are: `DIR/bin` or `DIR`.
    pub bin: PathBuf,
    /// `DIR/images`, when DIR has one.
    pub images: Option<PathBuf>,
}

impl KubeDir {
    /// `DIR/bin` and `DIR/images` when DIR has a `bin/`; DIR itself otherwise.
    pub fn resolve(dir: &Path) -> Self {
        if dir.join("bin").is_dir() {
            let images = dir.join("images");
            Self { bin: dir.join("bin"), images: images.is_dir().then_some(images) }
        } else {
            Self { bin: dir.to_path_buf(), images: None }
        }
    }
}

/// One archive of `DIR/images`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Archive {
    /// The file.
    pub path: PathBuf,
    /// Its `repository:tag` (Docker `manifest.json`'s `RepoTags`).
    pub reference: String,
    /// SHA-256 of the file.
    pub sha256: String,
}

/// Everything the preload needs, read before any stage runs (its digests key customize).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preload {
    /// `kubeadm version -o short` of the carried kubeadm.
    pub version: String,
    /// The carried kube-proxy binary.
    pub kube_proxy: PathBuf,
    /// SHA-256 of the kube-proxy binary.
    pub kube_proxy_sha256: String,
    /// The archives imported as they are (a kube-proxy archive left out).
    pub archives: Vec<Archive>,
    /// The packages the built images come from.
    pub debs: Vec<debs::Deb>,
}

/// The repo tags of a Docker or OCI archive (Docker `manifest.json`).
fn repo_tags(archive: &Path) -> anyhow::Result<Vec<String>> {
    let out = exec::output(Command::new("tar").arg("-xOf").arg(archive).arg("manifest.json"))
        .with_context(|| {
            format!("{}: no manifest.json (not an image archive?)", archive.display())
        })?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("{}: manifest.json is not JSON", archive.display()))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|m| m["RepoTags"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect())
}

impl Preload {
    /// Reads `dir` (a [`KubeDir`] with images), fetching the Debian packages into
    /// `deb_cache` if needed.
    pub fn read(dir: &KubeDir, deb_cache: &Path) -> anyhow::Result<Option<Self>> {
        let Some(images) = &dir.images else { return Ok(None) };
        let kubeadm = dir.bin.join("kubeadm");
        let version = exec::output(Command::new(&kubeadm).args(["version", "-o", "short"]))
            .with_context(|| format!("--kube-bin: {} version", kubeadm.display()))?
            .trim()
            .to_string();
        let kube_proxy = dir.bin.join("kube-proxy");
        if !kube_proxy.is_file() {
            bail!(
                "--kube-bin: {} has images/ but {} is missing (the kube-proxy image is built from it)",
                images.display(),
                kube_proxy.display()
            );
        }
        let mut archives = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(images)
            .with_context(|| format!("--kube-bin: reading {}", images.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "tar"))
            .collect();
        files.sort();
        for path in files {
            let tags =
                repo_tags(&path).with_context(|| format!("--kube-bin: {}", path.display()))?;
            let Some(reference) = tags.into_iter().next() else {
                bail!("--kube-bin: {} names no image (RepoTags empty)", path.display());
            };
            if reference.starts_with(&format!("{}:", images::KUBE_PROXY)) {
                continue;
            }
            let sha256 = crate::cache::file_sha256(&path)?;
            archives.push(Archive { path, reference, sha256 });
        }
        let debs = DEBS.iter().map(|d| debs::fetch(d, deb_cache)).collect::<Result<_, _>>()?;
        Ok(Some(Self {
            version,
            kube_proxy_sha256: crate::cache::file_sha256(&kube_proxy)?,
            kube_proxy,
            archives,
            debs,
        }))
    }

    /// The customize key's part.
    pub fn key(&self, k: &mut crate::cache::Key) {
        k.str("preload", RECIPE).str("kube-version", &self.version);
        k.str("kube-proxy", &self.kube_proxy_sha256);
        for a in &self.archives {
            k.str("archive", &a.reference).str("sha256", &a.sha256);
        }
        for d in &self.debs {
            k.str("deb", &d.name).str("sha256", &d.sha256);
        }
    }
}

/// One image in the node's store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Carried {
    /// `repository:tag`.
    pub name: String,
    /// The manifest digest containerd knows it by.
    pub digest: String,
    /// Where it came from: `kube-bin images/FILE` or `built from PKG VERSION`.
    pub source: String,
}

/// What the preload did: the report's `image.kubernetes`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Preloaded {
    /// The carried Kubernetes version.
    pub version: String,
    /// The images in containerd's `k8s.io` namespace.
    pub images: Vec<Carried>,
    /// Images `kubeadm config images list` names that are not carried (CoreDNS: Debian
    /// packages none).
    pub missing: Vec<String>,
    /// The built images' archives (in the customize entry), for tests and `ctr import`.
    pub built: Vec<oci::Written>,
}

/// Builds the images into `work`, imports them and the kube-bin archives into `root`.
pub fn preload(p: &Preload, root: &Path, epoch: u64, work: &Path) -> anyhow::Result<Preloaded> {
    std::fs::create_dir_all(work)?;
    let unpacked = |name: &str| -> anyhow::Result<PathBuf> {
        let deb = p.debs.iter().find(|d| d.name == name).expect("DEBS lists it");
        let dir = work.join("debs").join(name);
        debs::extract(deb, &dir)?;
        Ok(dir)
    };
    let deb_source = |name: &str| {
        let d = p.debs.iter().find(|d| d.name == name).expect("DEBS lists it");
        format!("built from {} {}", d.name, d.version)
    };
    let recipes = [
        (images::etcd(&unpacked("etcd-server")?, root)?, deb_source("etcd-server")),
        (
            images::kube_proxy(&p.kube_proxy, &p.version, root)?,
            "built from kube-bin bin/kube-proxy and the node's iptables, conntrack".to_string(),
        ),
        (images::busybox(&unpacked("busybox-static")?)?, deb_source("busybox-static")),
    ];
    let mut built = Vec::new();
    let mut sources = Vec::new();
    for (image, source) in &recipes {
        let file =
            work.join(format!("{}.tar", image.repository.rsplit('/').next().unwrap_or("image")));
        built.push(oci::write_archive(image, epoch, &file)?);
        sources.push((file, image.reference(), source.clone()));
    }
    for a in &p.archives {
        let file = a.path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        sources.push((a.path.clone(), a.reference.clone(), format!("kube-bin images/{file}")));
    }
    std::fs::remove_dir_all(work.join("debs")).ok();
    let paths: Vec<&Path> = sources.iter().map(|s| s.0.as_path()).collect();
    let listed = preload::import(root, &paths)?;
    let mut carried = Vec::new();
    for (_, name, source) in &sources {
        let Some((_, digest)) = listed.iter().find(|(n, _)| n == name) else {
            bail!("preload: {name} was imported but containerd does not list it");
        };
        carried.push(Carried {
            name: name.clone(),
            digest: digest.clone(),
            source: source.clone(),
        });
    }
    carried.sort_by(|a, b| a.name.cmp(&b.name));
    let kubeadm = root.join("usr/bin/kubeadm");
    let wanted = exec::output(Command::new(&kubeadm).args([
        "config",
        "images",
        "list",
        "--kubernetes-version",
        &p.version,
    ]))?;
    let missing = wanted
        .lines()
        .map(str::trim)
        .filter(|w| !w.is_empty() && !carried.iter().any(|c| c.name == *w))
        .map(str::to_string)
        .collect();
    Ok(Preloaded { version: p.version.clone(), images: carried, missing, built })
}

#[cfg(test)]
mod tests;
