//! The images the builder makes itself (no registry can be reached, and Debian packages no
//! container images): etcd for kubeadm's stacked etcd, a kube-proxy that holds what it runs,
//! and a busybox for test pods. Each is one layer of files taken from Debian packages and a
//! Debian root (libraries), written by `builder/oci`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::elf;
use crate::builder::oci::{Image, Layer, Node};
use crate::exec;

/// The etcd image kubeadm v1.20 names (`kubeadm config images list --kubernetes-version
/// v1.20.2`): kubeadm runs whatever carries this name; the content is Debian's etcd-server
/// (3.4.x, the same minor).
pub const ETCD: (&str, &str) = ("k8s.gcr.io/etcd", "3.4.13-0");
/// The test-pod image: busybox-static, `sh`, `httpd`, `wget` and every other applet.
pub const BUSYBOX: (&str, &str) = ("capstan.local/busybox", "1.35");
/// kube-proxy's repository; the tag is the carried Kubernetes version.
pub const KUBE_PROXY: &str = "k8s.gcr.io/kube-proxy";

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What every image gets: merged-/usr links, /tmp, /run, and the name-service files a Go
/// or glibc program reads.
fn base() -> Layer {
    let mut l = Layer::default();
    for (link, target) in
        [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")]
    {
        l.add(link, Node::Symlink(target.into()));
    }
    l.add("tmp", Node::Dir(0o1777))
        .add("run", Node::Dir(0o755))
        .add("var/run", Node::Symlink("../run".into()))
        .add("etc/nsswitch.conf", Node::Bytes(b"hosts: files dns\n".to_vec(), 0o644))
        .add("etc/passwd", Node::Bytes(b"root:x:0:0:root:/root:/bin/sh\n".to_vec(), 0o644))
        .add("etc/group", Node::Bytes(b"root:x:0:\n".to_vec(), 0o644));
    l
}

/// Adds `files` and the libraries they need (from `root`) to `layer`.
fn with_libraries(layer: &mut Layer, root: &Path, files: &[PathBuf]) -> anyhow::Result<()> {
    for (path, src) in elf::libraries(root, files)? {
        layer.add(&path, Node::File(src, 0o755));
    }
    Ok(())
}

fn image(repo: &str, tag: &str, entrypoint: &[&str], cmd: &[&str], layer: Layer) -> Image {
    Image {
        repository: repo.to_string(),
        tag: tag.to_string(),
        entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        env: vec![PATH_ENV.to_string()],
        layer,
    }
}

/// etcd from `etcd_deb` (an unpacked etcd-server), libraries from `root`. kubeadm's static
/// pod runs `etcd ...` through PATH, with its data in /var/lib/etcd (a hostPath).
pub fn etcd(etcd_deb: &Path, root: &Path) -> anyhow::Result<Image> {
    let bin = etcd_deb.join("usr/bin/etcd");
    if !bin.is_file() {
        bail!("{}: the etcd-server package holds no usr/bin/etcd", etcd_deb.display());
    }
    let mut l = base();
    l.add("usr/local/bin/etcd", Node::File(bin.clone(), 0o755))
        .add("var/lib/etcd", Node::Dir(0o700));
    with_libraries(&mut l, root, &[bin])?;
    Ok(image(ETCD.0, ETCD.1, &[], &["etcd"], l))
}

/// busybox from `busybox_deb` (an unpacked busybox-static): `/bin/busybox` and a link per
/// applet, as `busybox --install` would make them.
pub fn busybox(busybox_deb: &Path) -> anyhow::Result<Image> {
    let bin = busybox_deb.join("bin/busybox");
    let bin = if bin.is_file() { bin } else { busybox_deb.join("usr/bin/busybox") };
    let list = exec::output(Command::new(&bin).arg("--list"))
        .with_context(|| format!("listing the applets of {}", bin.display()))?;
    let mut l = base();
    l.add("usr/bin/busybox", Node::File(bin, 0o755));
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "busybox") {
        if applet.contains('/') {
            bail!("busybox --list gave {applet:?}");
        }
        l.add(&format!("usr/bin/{applet}"), Node::Symlink("busybox".into()));
    }
    l.add("var/www", Node::Dir(0o755));
    Ok(image(BUSYBOX.0, BUSYBOX.1, &[], &["sh"], l))
}

/// The iptables commands kube-proxy (and kubelet's own rules) call, each as Debian names it.
const IPTABLES: [&str; 18] = [
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
    "iptables-legacy",
    "iptables-legacy-save",
    "iptables-legacy-restore",
    "ip6tables-legacy",
    "ip6tables-legacy-save",
    "ip6tables-legacy-restore",
    "iptables-nft",
    "iptables-nft-save",
    "iptables-nft-restore",
    "ip6tables-nft",
    "ip6tables-nft-save",
    "ip6tables-nft-restore",
];

/// Follows `rel`'s symlinks inside `root` (absolute targets resolved against `root`, as
/// `/etc/alternatives` links are); returns the final file's path relative to `root`.
fn resolve_in(root: &Path, rel: &str) -> anyhow::Result<String> {
    let mut rel = rel.trim_start_matches('/').to_string();
    for _ in 0..16 {
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path)
            .with_context(|| format!("{}: missing in the root", path.display()))?;
        if !meta.file_type().is_symlink() {
            return Ok(rel);
        }
        let target = fs::read_link(&path)?;
        let target = target.to_string_lossy();
        rel = match target.strip_prefix('/') {
            Some(abs) => abs.to_string(),
            None => {
                let parent = Path::new(&rel).parent().unwrap_or(Path::new(""));
                normalise(&parent.join(&*target))
            }
        };
    }
    bail!("{}: too many levels of symlinks", root.join(rel).display())
}

fn normalise(p: &Path) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    out.join("/")
}

/// kube-proxy (`kube_proxy`, the carried binary, at /usr/local/bin as kubeadm's DaemonSet
/// runs it) with iptables (legacy and nft, the plain names as `root`'s alternatives choose),
/// the xtables extensions, conntrack, and their libraries from `root`.
pub fn kube_proxy(kube_proxy: &Path, version: &str, root: &Path) -> anyhow::Result<Image> {
    let mut l = base();
    l.add("usr/local/bin/kube-proxy", Node::File(kube_proxy.to_path_buf(), 0o755));
    let mut elves = Vec::new();
    for name in IPTABLES.iter().chain(&["conntrack"]) {
        let rel = resolve_in(root, &format!("usr/sbin/{name}"))
            .with_context(|| format!("kube-proxy image: {name}"))?;
        let real = Path::new(&rel).file_name().expect("a file").to_string_lossy().into_owned();
        let dst = format!("usr/sbin/{real}");
        l.add(&dst, Node::File(root.join(&rel), 0o755));
        if real != *name {
            l.add(&format!("usr/sbin/{name}"), Node::Symlink(real));
        }
        elves.push(root.join(&rel));
    }
    let xt = root.join("usr/lib/x86_64-linux-gnu/xtables");
    let mut ext: Vec<_> = fs::read_dir(&xt)
        .with_context(|| format!("reading {}", xt.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    ext.sort();
    for e in ext {
        let name = e.file_name().expect("a file").to_string_lossy().into_owned();
        l.add(&format!("usr/lib/x86_64-linux-gnu/xtables/{name}"), Node::File(e.clone(), 0o644));
        elves.push(e);
    }
    with_libraries(&mut l, root, &elves)?;
    Ok(image(KUBE_PROXY, version, &[], &["/usr/local/bin/kube-proxy"], l))
}
