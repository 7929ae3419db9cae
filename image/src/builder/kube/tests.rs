//! The built images against a real containerd (the host's, the node's 1.6 line) and runc:
//! imported by the preload, then run.

use std::path::{Path, PathBuf};

use super::preload::Containerd;
use super::*;

/// The real kube-proxy when kubernetes.sh has run here, else a static stand-in (the image's
/// iptables and conntrack are what this test is about).
fn kube_proxy_binary() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    let real = Path::new(&home).join(".cache/capstan-tools/kubernetes-1.20.2/bin/kube-proxy");
    if real.is_file() {
        real
    } else {
        PathBuf::from("/bin/busybox")
    }
}

fn run(d: &Containerd, image: &str, id: &str, cmd: &[&str]) -> String {
    let mut c = d.ctr(&["run", "--rm", "--net-host", image, id]);
    c.args(cmd);
    match exec::output(&mut c) {
        Ok(out) => out,
        Err(e) => panic!("ctr run {image} {cmd:?}: {e:#}\n{}", d.log_tail()),
    }
}

#[test]
fn built_images_are_reproducible_import_and_run() {
    let t = tempfile::tempdir().unwrap();
    let debs_cache = std::env::temp_dir().join("capstan-test-debs");
    let etcd_deb = debs::fetch("etcd-server", &debs_cache).unwrap();
    let unpacked = t.path().join("etcd-server");
    debs::extract(&etcd_deb, &unpacked).unwrap();
    let root = Path::new("/");
    let recipes = [
        images::busybox(root).unwrap(),
        images::etcd(&unpacked, root).unwrap(),
        images::kube_proxy(&kube_proxy_binary(), "v1.20.2", root).unwrap(),
    ];
    let mut archives = Vec::new();
    for (i, image) in recipes.iter().enumerate() {
        let a = t.path().join(format!("{i}-a.tar"));
        let b = t.path().join(format!("{i}-b.tar"));
        let wa = oci::write_archive(image, 1_767_225_600, &a).unwrap();
        oci::write_archive(image, 1_767_225_600, &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "{}", wa.reference);
        archives.push((a, wa));
    }
    let node = t.path().join("node-root");
    let paths: Vec<&Path> = archives.iter().map(|(p, _)| p.as_path()).collect();
    let listed = preload::import(&node, &paths).unwrap();
    for (_, w) in &archives {
        assert!(
            listed.contains(&(w.reference.clone(), w.digest.clone())),
            "{w:?} not in {listed:?}"
        );
    }
    // The store, as the node's containerd finds it at boot.
    let d = Containerd::start(&node.join("var/lib/containerd")).unwrap();
    let bb = &archives[0].1.reference;
    assert_eq!(run(&d, bb, "bb", &["echo", "hello from busybox"]).trim(), "hello from busybox");
    let which = run(&d, bb, "bb-which", &["which", "httpd", "wget", "sh"]);
    assert_eq!(
        which.lines().collect::<Vec<_>>(),
        ["/usr/bin/httpd", "/usr/bin/wget", "/usr/bin/sh"],
        "{which}"
    );
    let etcd = run(&d, "k8s.gcr.io/etcd:3.4.13-0", "etcd", &["etcd", "--version"]);
    assert!(etcd.contains("etcd Version: 3.4."), "{etcd}");
    let kp = "k8s.gcr.io/kube-proxy:v1.20.2";
    for (cmd, want) in [
        ("iptables", "(nf_tables)"),
        ("iptables-nft", "(nf_tables)"),
        ("iptables-legacy", "(legacy)"),
        ("ip6tables-legacy", "(legacy)"),
        ("iptables-restore", "(nf_tables)"),
        ("conntrack", "conntrack v"),
    ] {
        let out = run(&d, kp, &format!("kp-{cmd}"), &[cmd, "--version"]);
        assert!(out.contains(want), "{cmd} --version: {out}");
    }
}
