//! `capstan build node`: the outputs pass their own checks, the OVA carries the node profile's
//! vApp properties, the image holds what the profile promises (containerd, runc, CNI plugins,
//! kubeadm's host tools, kernel modules and sysctls, and no docs, man pages or locales) — read
//! from the image file with debugfs, without booting — `--kube-bin DIR` installs kubeadm,
//! kubelet and kubectl (and refuses a bad DIR clearly), and one lab boot shows the agent's first
//! boot and a running containerd.

#[path = "image_support.rs"]
mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use capstan_e2e::run;
use support::{capstan, lab_run, node_image, s, step, try_build, SSH_KEY};

/// The ext4 root of a built image, read with debugfs (e2fsprogs) from a raw copy: no mount,
/// no loop device, no boot.
struct ImageRoot {
    dev: String,
    tmp: tempfile::TempDir,
}

impl ImageRoot {
    /// Opens a qcow2 or raw image (qcow2 is converted to a sparse raw file first).
    fn open(image: &Path) -> ImageRoot {
        let tmp = tempfile::tempdir().unwrap();
        let raw = if image.extension().is_some_and(|e| e == "raw") {
            image.to_path_buf()
        } else {
            let raw = tmp.path().join("disk.raw");
            run(Command::new("qemu-img").args(["convert", "-O", "raw", s(image), s(&raw)]))
                .unwrap();
            raw
        };
        let parts = run(Command::new("sfdisk").args(["--json", s(&raw)])).unwrap();
        let parts: serde_json::Value = serde_json::from_str(&parts).unwrap();
        let root = &parts["partitiontable"]["partitions"][1];
        assert_eq!(root["name"], "root", "second partition is not the root: {parts:#}");
        let start = root["start"].as_u64().unwrap() * 512;
        ImageRoot { dev: format!("{}?offset={start}", raw.display()), tmp }
    }

    /// Runs one debugfs request; panics with its stderr when debugfs reports an error (it
    /// exits 0 on a missing path and says so on stderr only).
    fn debugfs(&self, request: &str) -> String {
        self.try_debugfs(request).unwrap_or_else(|e| panic!("debugfs {request:?}: {e}"))
    }

    fn try_debugfs(&self, request: &str) -> Result<String, String> {
        let o = Command::new("debugfs").args(["-R", request, &self.dev]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        let errors: Vec<&str> = err.lines().filter(|l| !l.starts_with("debugfs ")).collect();
        if !o.status.success() || !errors.is_empty() {
            return Err(errors.join("\n"));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Follows symlinks (absolute or relative, a few hops) to what they name.
    fn resolve(&self, path: &str) -> (String, Stat) {
        let mut path = path.to_string();
        for _ in 0..8 {
            let st = self.stat(&path);
            if st.kind != "symlink" {
                return (path, st);
            }
            let out = self.debugfs(&format!("stat {path}"));
            let target = out
                .split_once("Fast link dest: \"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(t, _)| t.to_string())
                .unwrap_or_else(|| self.cat(&path));
            path = if target.starts_with('/') {
                target
            } else {
                let dir = Path::new(&path).parent().unwrap();
                format!("{}/{target}", dir.display())
            };
        }
        panic!("{path}: too many symlinks");
    }

    fn cat(&self, path: &str) -> String {
        self.debugfs(&format!("cat {path}"))
    }

    fn exists(&self, path: &str) -> bool {
        self.try_debugfs(&format!("stat {path}")).is_ok()
    }

    /// (type, mode, uid, gid, size) from `debugfs stat`.
    fn stat(&self, path: &str) -> Stat {
        let out = self.debugfs(&format!("stat {path}"));
        let field = |name: &str| -> String {
            let i = out.find(name).unwrap_or_else(|| panic!("no {name} in stat {path}:\n{out}"));
            out[i + name.len()..].split_whitespace().next().unwrap().to_string()
        };
        Stat {
            kind: field("Type:"),
            mode: u32::from_str_radix(&field("Mode:"), 8).unwrap(),
            uid: field("User:").parse().unwrap(),
            gid: field("Group:").parse().unwrap(),
            size: field("Size:").parse().unwrap(),
        }
    }

    /// Names in a directory (without `.` and `..`); empty when it does not exist.
    fn ls(&self, dir: &str) -> Vec<String> {
        let Ok(out) = self.try_debugfs(&format!("ls -p {dir}")) else { return Vec::new() };
        // -p: `/inode/mode/uid/gid/name/size/`
        out.lines()
            .filter_map(|l| l.split('/').nth(5).map(str::to_string))
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .collect()
    }

    /// Copies a directory tree out of the image; returns where it landed.
    fn rdump(&self, dir: &str) -> PathBuf {
        let dest = self.tmp.path().join("dump").join(dir.trim_start_matches('/'));
        let parent = dest.parent().unwrap();
        std::fs::create_dir_all(parent).unwrap();
        self.debugfs(&format!("rdump {dir} {}", parent.display()));
        assert!(dest.is_dir(), "rdump {dir} gave nothing");
        dest
    }
}

#[derive(Debug)]
struct Stat {
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
}

fn report(dir: &Path, profile: &str) -> serde_json::Value {
    let path = dir.join(format!("{profile}.build.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

#[test]
fn node_build_outputs_pass_verify_and_image_check() {
    let dir = node_image();
    let ova = dir.join("node.ova");
    run(Command::new(capstan()).args(["ova", "verify", s(&ova)])).unwrap();
    for image in ["node.ova", "node.qcow2"] {
        let out = run(Command::new(capstan()).args(["image", "check", s(&dir.join(image))]))
            .unwrap_or_else(|e| panic!("image check {image}: {e:#}"));
        assert!(out.contains("is sealed"), "{out}");
    }
    let info = run(Command::new("qemu-img").args(["check", s(&dir.join("node.qcow2"))])).unwrap();
    assert!(info.contains("No errors"), "{info}");
    let r = report(&dir, "node");
    assert_eq!(r["profile"], "node");
    let stages: Vec<&str> =
        r["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(stages, ["rootfs", "customize", "disk", "outputs", "check"]);
    assert!(r["warnings"].as_array().unwrap().is_empty(), "build warnings: {:#}", r["warnings"]);
    // The profile's module list plus dependencies: about a hundred of the thousand shipped.
    let kept = r["image"]["modules_kept"].as_u64().unwrap();
    let total = r["image"]["modules_total"].as_u64().unwrap();
    assert!(kept > 60 && kept < 300 && total > 800, "modules kept: {kept} of {total}");
}

#[test]
fn node_ova_carries_the_node_properties_and_hardware() {
    let ova = node_image().join("node.ova");
    let out = run(Command::new(capstan()).args(["ova", "inspect", "--json", s(&ova)])).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let product = &v["products"][0];
    assert_eq!(product["product"], "Capstan Node", "{product:#}");
    let props = product["properties"].as_array().unwrap();
    let schema = capstan_agent::schema::ovf_properties("node");
    let keys: Vec<&str> = props.iter().map(|p| p["key"].as_str().unwrap()).collect();
    let want: Vec<&str> = schema.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, want, "the descriptor's properties are not the schema's, in order");
    for (p, got) in schema.iter().zip(props) {
        let ctx = format!("{}: {got:#}", p.key);
        assert_eq!(got["type"], p.ty.as_str(), "{ctx}");
        assert_eq!(got["default"].as_str(), p.default.as_deref(), "{ctx}");
        assert_eq!(got["user_configurable"], p.user_configurable, "{ctx}");
        assert_eq!(got["password"], p.password, "{ctx}");
        assert_eq!(got["category"].as_str(), p.category.as_deref(), "{ctx}");
        assert_eq!(got["qualifiers"].as_str(), p.qualifiers.as_deref(), "{ctx}");
    }
    // The node's join settings are there, the lb's are not; the token is masked.
    for key in ["capstan.kube.endpoint", "capstan.kube.token", "capstan.kube.ca-cert-hash"] {
        assert!(keys.contains(&key), "{key} missing: {keys:?}");
    }
    assert!(!keys.iter().any(|k| k.starts_with("capstan.lb.")), "lb keys on a node: {keys:?}");
    let token = props.iter().find(|p| p["key"] == "capstan.kube.token").unwrap();
    assert_eq!(token["password"], true, "{token:#}");

    let hw = &v["virtual_systems"][0]["hardware"][0];
    assert_eq!(hw["cpus"], 2, "{hw:#}");
    assert_eq!(hw["memory_mib"], 4096, "{hw:#}");
    assert_eq!(hw["firmware"], "efi", "{hw:#}");
    assert_eq!(hw["hardware_version"], "vmx-15", "{hw:#}");
    assert_eq!(hw["transport"], "com.vmware.guestInfo iso", "{hw:#}");
    let kinds: Vec<(&str, &str)> = hw["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["kind"].as_str().unwrap(), d["subtype"].as_str().unwrap_or("")))
        .collect();
    assert!(kinds.contains(&("scsi-controller", "VirtualSCSI")), "{kinds:?}");
    assert!(kinds.contains(&("ethernet", "VmxNet3")), "{kinds:?}");

    // The role baked into the image and the descriptor's default agree: vSphere delivers every
    // property (defaults included) in the OVF environment, which outranks baked defaults.
    let role = props.iter().find(|p| p["key"] == "capstan.role").unwrap();
    let root = ImageRoot::open(&node_image().join("node.qcow2"));
    let baked = root.cat("/etc/capstan/agent.toml");
    let baked_role = baked
        .lines()
        .find_map(|l| l.strip_prefix("role = "))
        .map(|r| r.trim().trim_matches('"'))
        .unwrap_or("none");
    assert_eq!(
        role["default"].as_str(),
        Some(baked_role),
        "node.ova's capstan.role default differs from the baked role in agent.toml:\n{baked}"
    );
}

/// Executables kubeadm's preflight looks for on the PATH, and where Debian puts them.
const KUBEADM_HOST_TOOLS: &[&str] = &[
    "/usr/sbin/conntrack",
    "/usr/bin/socat",
    "/usr/sbin/ebtables",
    "/usr/sbin/ethtool",
    "/usr/sbin/iptables",
    "/usr/sbin/ip6tables",
    "/usr/bin/ip",
    "/usr/bin/nsenter",
    "/usr/bin/mount",
    "/usr/sbin/tc",
    "/usr/bin/touch",
    "/usr/sbin/modprobe",
];

#[test]
fn node_image_holds_the_runtime_kubeadm_needs_and_no_docs() {
    let root = ImageRoot::open(&node_image().join("node.qcow2"));

    // Container runtime: containerd (with ctr), runc, the CNI plugins where containerd looks.
    for exe in ["/usr/bin/containerd", "/usr/bin/containerd-shim-runc-v2", "/usr/bin/ctr"]
        .iter()
        .chain(&["/usr/sbin/runc"])
        .chain(KUBEADM_HOST_TOOLS)
    {
        // Symlinks (alternatives: iptables -> iptables-nft) must lead to a file that is there.
        let (target, st) = root.resolve(exe);
        assert_eq!(st.kind, "regular", "{exe} -> {target}: {st:?}");
        assert!(st.uid == 0 && st.mode & 0o111 != 0 && st.size > 0, "{exe} -> {target}: {st:?}");
    }
    let cni = root.ls("/usr/lib/cni");
    for plugin in ["bridge", "host-local", "loopback", "portmap", "bandwidth", "firewall"] {
        assert!(cni.iter().any(|n| n == plugin), "CNI plugin {plugin} missing: {cni:?}");
    }
    let containerd = root.cat("/etc/containerd/config.toml");
    for want in ["SystemdCgroup = true", "bin_dir = \"/usr/lib/cni\"", "io.containerd.runc.v2"] {
        assert!(containerd.contains(want), "containerd config lacks {want}:\n{containerd}");
    }

    // Kernel modules: overlay and br_netfilter are in the image, known to modprobe, and loaded
    // at boot; sysctls for bridged traffic and forwarding are set.
    let kernels = root.ls("/usr/lib/modules");
    assert_eq!(kernels.len(), 1, "{kernels:?}");
    let modules = root.rdump(&format!("/usr/lib/modules/{}", kernels[0]));
    let dep = std::fs::read_to_string(modules.join("modules.dep")).unwrap();
    for (module, path) in [
        ("overlay", "kernel/fs/overlayfs/overlay.ko"),
        ("br_netfilter", "kernel/net/bridge/br_netfilter.ko"),
        ("nf_conntrack", "kernel/net/netfilter/nf_conntrack.ko"),
        ("vxlan", "kernel/drivers/net/vxlan/vxlan.ko"),
    ] {
        assert!(
            dep.lines().any(|l| l.starts_with(&format!("{path}:"))),
            "{module} not in modules.dep"
        );
        assert!(modules.join(path).is_file(), "{module}: {path} missing");
    }
    // Nothing beyond what modules.dep lists (pruning is consistent).
    let mut ko = Vec::new();
    walk(&modules.join("kernel"), &mut ko);
    assert_eq!(ko.len(), dep.lines().count(), "module files vs modules.dep entries");
    let load = root.cat("/etc/modules-load.d/capstan.conf");
    for m in ["overlay", "br_netfilter"] {
        assert!(load.lines().any(|l| l.trim() == m), "{m} not loaded at boot:\n{load}");
    }
    let sysctl = sysctls(&root.cat("/etc/sysctl.d/60-capstan-kubernetes.conf"));
    for key in [
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
        "net.ipv4.ip_forward",
    ] {
        assert_eq!(sysctl.get(key).map(String::as_str), Some("1"), "{key}: {sysctl:?}");
    }

    // Units: containerd and kubelet enabled; kubelet waits for kubeadm's configuration.
    let wants = root.ls("/etc/systemd/system/multi-user.target.wants");
    for unit in ["containerd.service", "kubelet.service", "capstan-agent.service"] {
        assert!(wants.iter().any(|w| w == unit), "{unit} not enabled: {wants:?}");
    }
    let kubelet = root.cat("/usr/lib/systemd/system/kubelet.service");
    assert!(kubelet.contains("ConditionPathExists=/var/lib/kubelet/config.yaml"), "{kubelet}");
    let dropin = root.cat("/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf");
    assert!(dropin.contains("--config=/var/lib/kubelet/config.yaml"), "{dropin}");
    // No Kubernetes binaries without --kube-bin.
    for exe in ["/usr/bin/kubelet", "/usr/bin/kubeadm", "/usr/bin/kubectl"] {
        assert!(!root.exists(exe), "{exe} in an image built without --kube-bin");
    }

    // No docs (copyright files stay), man pages, info pages, locales, apt lists.
    let doc = root.rdump("/usr/share/doc");
    let mut docs = Vec::new();
    walk(&doc, &mut docs);
    assert!(docs.len() > 50, "only {} files under /usr/share/doc", docs.len());
    // Symlinks (a package's doc dir pointing at its source package's) carry no content.
    let extra: Vec<_> = docs
        .iter()
        .filter(|p| p.symlink_metadata().unwrap().is_file())
        .filter(|p| p.file_name().is_some_and(|n| n != "copyright"))
        .collect();
    assert!(extra.is_empty(), "docs besides copyright files: {extra:?}");
    for dir in ["/usr/share/man", "/usr/share/locale"] {
        assert_eq!(root.ls(dir), Vec::<String>::new(), "{dir} is not empty");
    }
    let info: Vec<String> = root.ls("/usr/share/info").into_iter().filter(|n| n != "dir").collect();
    assert!(info.is_empty(), "info pages: {info:?}");
    let lists: Vec<String> = root
        .ls("/var/lib/apt/lists")
        .into_iter()
        .filter(|n| n != "partial" && n != "lock")
        .collect();
    assert!(lists.is_empty(), "apt lists: {lists:?}");
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        if e.file_type().unwrap().is_dir() {
            walk(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

fn sysctls(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Small stand-in executables for kubeadm, kubelet and kubectl: the test is about the
/// builder's copy (content, mode, owner, report), not about Kubernetes (real binaries take
/// ~8 minutes to build: see docs/node.md for a build with them).
fn stand_ins(dir: &Path) -> BTreeMap<&'static str, Vec<u8>> {
    // Fresh every run: a previous run's kubectl symlink would otherwise be written through.
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap();
    }
    std::fs::create_dir_all(dir).unwrap();
    let mut files = BTreeMap::new();
    for name in ["kubeadm", "kubelet", "kubectl"] {
        let body = format!("#!/bin/sh\necho \"{name} stand-in for the capstan e2e tests\"\n");
        files.insert(name, body.into_bytes());
    }
    for (name, body) in &files {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        // Not 0755: the builder installs 0755 whatever the source mode.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    files
}

#[test]
fn kube_bin_installs_kubeadm_kubelet_kubectl() {
    // The node image's build first: its rootfs is the one this build reuses from the cache.
    node_image();
    let kube = support::e2e_dir().join("kube-bin-stand-ins");
    let files = stand_ins(&kube);
    // kubectl given as a symlink (as an unpacked release often has): the file is installed.
    let real = kube.join("kubectl.real");
    std::fs::rename(kube.join("kubectl"), &real).unwrap();
    std::os::unix::fs::symlink("kubectl.real", kube.join("kubectl")).unwrap();

    let out = support::e2e_dir().join("node-kube-bin");
    // qcow2, not raw: the report's SHA-256 of a raw output reads all 20 GiB (~40 s).
    let o = try_build("node", &out, &["--formats", "qcow2", "--kube-bin", s(&kube)]);
    assert!(
        o.status.success(),
        "capstan build node --kube-bin failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let qcow2 = out.join("node.qcow2");
    let check = run(Command::new(capstan()).args(["image", "check", s(&qcow2)])).unwrap();
    assert!(check.contains("is sealed"), "{check}");
    let root = ImageRoot::open(&qcow2);
    for (name, body) in &files {
        let path = format!("/usr/bin/{name}");
        let st = root.stat(&path);
        assert_eq!(st.kind, "regular", "{path}: {st:?}");
        assert_eq!((st.mode & 0o7777, st.uid, st.gid), (0o755, 0, 0), "{path}: {st:?}");
        assert_eq!(root.cat(&path).as_bytes(), body.as_slice(), "{path} differs from the source");
    }
    let r = report(&out, "node");
    let kb = r["inputs"]["kube_bin"].as_str().unwrap_or_default();
    assert_eq!(kb, s(&kube), "report inputs.kube_bin: {:#}", r["inputs"]);
    let installed = r["image"]["kube_bin"]
        .as_array()
        .unwrap_or_else(|| panic!("the report does not list the installed binaries: {r:#}"));
    let names: Vec<&str> = installed.iter().filter_map(|b| b["name"].as_str()).collect();
    assert_eq!(names, ["kubeadm", "kubelet", "kubectl"], "{installed:#?}");
}

#[test]
fn kube_bin_errors_name_the_flag_and_the_file() {
    // The shared cache with the node rootfs in it: a check that came only after the rootfs
    // stage would still fail fast, and no second mmdebstrap races the node image's.
    node_image();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let out = t.join("out");
    let fails = |dir: &Path, wants: &[&str]| {
        let started = Instant::now();
        let o = try_build("node", &out, &["--formats", "raw", "--kube-bin", s(dir)]);
        let took = started.elapsed();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "build with --kube-bin {} succeeded", dir.display());
        for want in wants {
            assert!(err.contains(want), "error lacks {want:?}:\n{err}");
        }
        // Refused before any stage runs (a stage prints `capstan build: NAME  SECS` when it
        // ends): not after a minute of mmdebstrap on a clean machine.
        assert!(!err.contains("capstan build: rootfs"), "a stage ran before the check:\n{err}");
        assert!(took < Duration::from_secs(60), "took {took:?} to refuse");
        assert!(!out.join("node.raw").exists(), "an image was written");
    };

    // DIR does not exist.
    let missing = t.join("no-such-dir");
    fails(&missing, &["--kube-bin", "no-such-dir"]);
    // DIR is a file.
    std::fs::write(t.join("a-file"), "x").unwrap();
    fails(&t.join("a-file"), &["--kube-bin", "a-file"]);
    // One binary missing.
    let partial = t.join("partial");
    stand_ins(&partial);
    std::fs::remove_file(partial.join("kubelet")).unwrap();
    fails(&partial, &["--kube-bin", "kubelet"]);
    // A binary that is not executable (a download without +x, or a text file).
    let noexec = t.join("noexec");
    stand_ins(&noexec);
    std::fs::set_permissions(noexec.join("kubectl"), std::fs::Permissions::from_mode(0o644))
        .unwrap();
    fails(&noexec, &["--kube-bin", "kubectl", "not executable"]);
    // A directory where the binary should be.
    let dirbin = t.join("dirbin");
    stand_ins(&dirbin);
    std::fs::remove_file(dirbin.join("kubeadm")).unwrap();
    std::fs::create_dir(dirbin.join("kubeadm")).unwrap();
    fails(&dirbin, &["--kube-bin", "kubeadm"]);
}

/// The `CAPSTAN-NODE key=value ...` line capstan-node-report.service prints on the console.
fn node_line(serial: &str) -> BTreeMap<String, String> {
    let line = serial
        .lines()
        .find_map(|l| l.split_once("CAPSTAN-NODE ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no CAPSTAN-NODE line in the serial log:\n{serial}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_end_matches('\r').to_string()))
        .collect()
}

#[test]
fn node_lab_boot_applies_identity_and_runs_containerd() {
    let ova = node_image().join("node.ova");
    let args: Vec<String> = [
        "capstan.hostname=node-e2e-1",
        "capstan.net.nic0.address=10.0.2.15/24",
        "capstan.net.nic0.gateway=10.0.2.2",
        &format!("capstan.ssh.authorized-keys={SSH_KEY}"),
    ]
    .iter()
    .flat_map(|p| ["--prop".to_string(), p.to_string()])
    .collect();
    let r = lab_run(&ova, &args);
    assert_eq!(r["ready"], true, "{r:#}");
    let st = &r["status"];
    let h = step(st, "hostname");
    assert_eq!(h["status"], "ok", "{h:#}");
    assert!(h["detail"].as_str().unwrap().contains("node-e2e-1"), "{h:#}");
    assert_eq!(step(st, "network")["status"], "ok", "{st:#}");
    let live = step(st, "network-live");
    assert!(
        live["detail"].as_str().unwrap().contains("10.0.2.15/24"),
        "static address not applied: {live:#}"
    );
    assert_eq!(step(st, "users")["status"], "ok", "{st:#}");
    assert_eq!(step(st, "ssh-host-keys")["status"], "ok", "{st:#}");
    assert_eq!(step(st, "machine-id")["status"], "ok", "{st:#}");
    assert!(st["errors"].as_array().unwrap().is_empty(), "agent errors: {:#}", st["errors"]);

    let log = r["serial_log"].as_str().expect("serial_log in the lab result");
    let serial = String::from_utf8_lossy(&std::fs::read(log).unwrap()).into_owned();
    let node = node_line(&serial);
    let want = [
        ("containerd", "active"),
        ("containerd-api", "ok"),
        // Built without --kube-bin: no kubelet, and nothing restarting.
        ("kubelet-bin", "absent"),
        ("kubelet", "inactive"),
        ("kubelet-restarts", "0"),
        ("br_netfilter", "loaded"),
        ("overlay", "loaded"),
        ("ip_forward", "1"),
        ("bridge-nf-call-iptables", "1"),
    ];
    for (k, v) in want {
        assert_eq!(node.get(k).map(String::as_str), Some(v), "{k} in {node:?}");
    }
    let secs = r["boot_seconds"].as_f64().unwrap();
    assert!(secs > 1.0 && secs < 300.0, "boot took {secs}s");
}

/// The real Kubernetes v1.20.2 folder (`bin/`, `images/`) from `../shared/tools/kubernetes.sh`
/// (scripts/setup builds it; the script only prints the folder when it is there).
fn kubernetes_dir() -> PathBuf {
    let script = capstan_e2e::workspace_root().join("../shared/tools/kubernetes.sh");
    let out =
        run(&mut Command::new(script)).expect("../shared/tools/kubernetes.sh (scripts/setup)");
    PathBuf::from(out.trim())
}

/// Builds (or reuses) the node image with `--kube-bin` the real Kubernetes folder: binaries
/// installed, images built and preloaded.
fn node_kube_image() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        node_image();
        let out = support::e2e_dir().join("node-kube");
        let k = kubernetes_dir();
        let o = try_build("node", &out, &["--formats", "ova,qcow2", "--kube-bin", s(&k)]);
        assert!(
            o.status.success(),
            "capstan build node --kube-bin {} failed:\n{}",
            k.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        out
    })
    .clone()
}

/// What kubeadm v1.20.2 needs and the node carries (CoreDNS: Debian packages none), plus the
/// test-pod image.
const CARRIED: [&str; 7] = [
    "capstan.local/busybox:1.35",
    "k8s.gcr.io/etcd:3.4.13-0",
    "k8s.gcr.io/kube-apiserver:v1.20.2",
    "k8s.gcr.io/kube-controller-manager:v1.20.2",
    "k8s.gcr.io/kube-proxy:v1.20.2",
    "k8s.gcr.io/kube-scheduler:v1.20.2",
    "k8s.gcr.io/pause:3.2",
];

#[test]
#[ignore = "kept out of CI's time budget (passed with --ignored on 2026-12-03: both tests \
            355 s, most of it the node build with the Kubernetes images; CI already builds \
            Kubernetes, ~8 min cold): run with --ignored"]
fn kube_bin_folder_preloads_the_images_kubeadm_needs() {
    let out = node_kube_image();
    let r = report(&out, "node");
    let k = &r["image"]["kubernetes"];
    assert_eq!(k["version"], "v1.20.2", "{k:#}");
    let images = k["images"].as_array().unwrap_or_else(|| panic!("no image.kubernetes: {r:#}"));
    let names: Vec<&str> = images.iter().filter_map(|i| i["name"].as_str()).collect();
    assert_eq!(names, CARRIED, "{k:#}");
    assert_eq!(k["missing"], serde_json::json!(["k8s.gcr.io/coredns:1.7.0"]), "{k:#}");
    let qcow2 = out.join("node.qcow2");
    let root = ImageRoot::open(&qcow2);
    let blobs = "/var/lib/containerd/io.containerd.content.v1.content/blobs/sha256";
    for i in images {
        let digest = i["digest"].as_str().unwrap();
        let hex = digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("{i}"));
        assert_eq!(hex.len(), 64, "{i}");
        assert!(
            root.exists(&format!("{blobs}/{hex}")),
            "{} not in the image's content store",
            i["name"]
        );
    }
    // The built images were unpacked into the snapshotter, as the node's CRI needs them.
    let snaps = root.ls("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots");
    assert!(snaps.len() >= CARRIED.len(), "snapshots: {snaps:?}");
    let containerd = root.cat("/etc/containerd/config.toml");
    assert!(containerd.contains("sandbox_image = \"k8s.gcr.io/pause:3.2\""), "{containerd}");
    assert!(containerd.contains("SystemdCgroup = true"), "{containerd}");
    let dropin = root.cat("/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf");
    assert!(dropin.contains("--volume-plugin-dir=/var/lib/kubelet/volumeplugins"), "{dropin}");
    assert!(dropin.contains("$KUBELET_CAPSTAN_ARGS"), "{dropin}");
    // The SBOM names each image with its digest.
    let sbom = root.cat("/usr/share/capstan/sbom.spdx.json");
    for i in images {
        let hex = i["digest"].as_str().unwrap().trim_start_matches("sha256:");
        assert!(sbom.contains(hex), "{} not in the SBOM", i["name"]);
    }
}

#[test]
#[ignore = "kept out of CI's time budget (passed with --ignored on 2026-12-03: both tests \
            355 s, most of it the node build with the Kubernetes images; CI already builds \
            Kubernetes, ~8 min cold): run with --ignored"]
fn node_with_kubernetes_boots_with_the_images_preloaded() {
    let ova = node_kube_image().join("node.ova");
    let args: Vec<String> =
        ["capstan.hostname=node-kube-1", "capstan.net.nic0.address=10.0.2.15/24"]
            .iter()
            .flat_map(|p| ["--prop".to_string(), p.to_string()])
            .collect();
    let r = lab_run(&ova, &args);
    assert_eq!(r["ready"], true, "{r:#}");
    let log = r["serial_log"].as_str().expect("serial_log in the lab result");
    let serial = String::from_utf8_lossy(&std::fs::read(log).unwrap()).into_owned();
    let node = node_line(&serial);
    for (k, v) in [
        ("containerd", "active"),
        ("containerd-api", "ok"),
        ("kubelet-bin", "present"),
        // Enabled, waiting for kubeadm's config: inactive, not crash-looping.
        ("kubelet", "inactive"),
        ("kubelet-restarts", "0"),
    ] {
        assert_eq!(node.get(k).map(String::as_str), Some(v), "{k} in {node:?}");
    }
    let listed: Vec<&str> = node["k8s-images"].split(',').collect();
    for want in CARRIED {
        assert!(listed.contains(&want), "{want} not listed by ctr in the VM: {listed:?}");
    }
}

/// The watcher the control-plane test hands the node through `guestinfo.userdata`: once
/// `/etc/kubernetes/admin.conf` exists and kubectl (as the cluster's admin, not the node)
/// lists the node `Ready`, and kube-proxy's pod runs (or 5 minutes passed), it prints the
/// nodes and the pods between markers on the console. `runcmd` runs before the agent's
/// kubeadm step, so it starts a transient unit and returns.
const WATCH_USERDATA: &str = r#"#cloud-config
write_files:
- path: /usr/local/sbin/kubevm-watch
  permissions: '0755'
  content: |
    #!/bin/sh
    export KUBECONFIG=/etc/kubernetes/admin.conf
    until [ -f "$KUBECONFIG" ] && kubectl get nodes --no-headers 2>/dev/null | grep -q ' Ready '; do sleep 5; done
    i=0
    until kubectl -n kube-system get pods --no-headers 2>/dev/null | grep kube-proxy | grep -q Running || [ $i -ge 60 ]; do i=$((i+1)); sleep 5; done
    { echo KUBEVM-BEGIN; kubectl get nodes -o wide --no-headers; kubectl get pods -A -o wide --no-headers; echo KUBEVM-END; } > /dev/console 2>&1
runcmd:
- systemd-run --no-block --unit=kubevm-watch /usr/local/sbin/kubevm-watch
"#;

/// A detached lab VM (uuid, state dir), stopped and removed when dropped (also on a failed
/// assertion).
struct Detached(String, PathBuf);

impl Drop for Detached {
    fn drop(&mut self) {
        let _ = Command::new(capstan())
            .args(["lab", "stop", &self.0, "--remove", "--state-dir", s(&self.1)])
            .output();
    }
}

/// What the watcher printed between its markers, waiting up to `bound` for it.
fn watched(serial_log: &Path, bound: Duration) -> Vec<String> {
    let t = Instant::now();
    loop {
        let serial = String::from_utf8_lossy(&std::fs::read(serial_log).unwrap()).into_owned();
        if let Some((_, rest)) = serial.split_once("KUBEVM-BEGIN") {
            if let Some((body, _)) = rest.split_once("KUBEVM-END") {
                return body
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect();
            }
        }
        assert!(t.elapsed() < bound, "no kubectl report after {bound:?}:\n{serial}");
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// The vApp path end to end, on one VM under TCG: `capstan.role=control-plane` with the node's
/// own address as `kube.endpoint` runs the agent's preflight, writes the v1beta2
/// configuration, runs the real `kubeadm init` (stacked etcd from the preloaded Debian etcd
/// image, kube-proxy from the builder's image, no CoreDNS), writes CABPK's sentinel, waits for
/// the node's pod CIDR and writes the CNI conflist, and the node becomes `Ready` — as the
/// agent's status records it, and as kubectl with the cluster's admin.conf sees it.
#[test]
#[ignore = "one VM running a whole control plane under TCG, 3-7 minutes plus the build; passed \
            with --ignored on 2026-12-04 in 432 s on an idle machine (ready report after \
            195 s; docs/kube.md, \"A node VM under TCG\"): run with --ignored"]
fn node_vapp_control_plane_init_becomes_ready() {
    let ova = node_kube_image().join("node.ova");
    let state = tempfile::tempdir().unwrap();
    let ud = state.path().join("user-data");
    std::fs::write(&ud, WATCH_USERDATA).unwrap();
    let props = [
        "capstan.hostname=cp-1",
        "capstan.net.nic0.address=10.0.2.15/24",
        "capstan.net.nic0.gateway=10.0.2.2",
        "capstan.role=control-plane",
        "capstan.kube.endpoint=10.0.2.15:6443",
        "capstan.kube.token=abcdef.0123456789abcdef",
    ];
    let vms = state.path().join("vms");
    let t = Instant::now();
    let o = Command::new(capstan())
        .args(["lab", "run", s(&ova), "--memory", "3072", "--cpus", "2"])
        .args(props.iter().flat_map(|p| ["--prop", p]))
        .args(["--guestinfo", &format!("userdata=@{}", ud.display())])
        .args(["--wait-ready", "--json", "--detach", "--timeout", "2400"])
        .args(["--state-dir", s(&vms)])
        .output()
        .expect("run capstan lab run");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "lab run ({e}):\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let _vm = Detached(r["uuid"].as_str().unwrap().to_owned(), vms.clone());
    let ready_after = t.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(r["ready"], true, "{r:#}");
    let st = &r["status"];
    let k = step(st, "kubeadm");
    assert_eq!(k["status"], "ok", "{st:#}");
    for name in [
        "kubeadm/version",
        "kube-preflight/runtime",
        "kube-preflight/swap",
        "kube-preflight/modules",
        "kube-preflight/sysctls",
        "kubeadm/config",
        "kubeadm/init",
        "kubeadm/sentinel",
        "kubeadm/pod-network",
        "kubeadm/node-ready",
    ] {
        let sub = step(st, name);
        assert_eq!(sub["status"], "ok", "{name}: {sub:#}");
        eprintln!("{name}: {} ms", sub["duration_ms"]);
    }
    assert!(step(st, "kubeadm/config")["detail"].as_str().unwrap().contains("v1beta2"));
    let net = step(st, "kubeadm/pod-network")["detail"].as_str().unwrap().to_owned();
    assert!(net.contains("pod CIDR 10.244.") && net.contains("10-capstan.conflist"), "{net}");

    // kubectl as the cluster's admin: the node Ready, the control plane and kube-proxy running
    let serial = PathBuf::from(r["serial_log"].as_str().expect("serial_log in the lab result"));
    let lines = watched(&serial, Duration::from_secs(600));
    eprintln!("ready report after {ready_after:?}; kubectl:\n{}", lines.join("\n"));
    let node = lines.iter().find(|l| l.starts_with("cp-1 ")).expect("node cp-1 listed");
    let cols: Vec<&str> = node.split_whitespace().collect();
    assert_eq!(cols[1], "Ready", "{node}");
    assert!(cols.contains(&"v1.20.2") && cols.contains(&"10.0.2.15"), "{node}");
    for pod in [
        "etcd-cp-1",
        "kube-apiserver-cp-1",
        "kube-controller-manager-cp-1",
        "kube-scheduler-cp-1",
        "kube-proxy-",
    ] {
        let l =
            lines.iter().find(|l| l.split_whitespace().nth(1).is_some_and(|n| n.starts_with(pod)));
        let l = l.unwrap_or_else(|| panic!("no pod {pod}: {lines:#?}"));
        assert!(l.contains(" Running "), "{l}");
    }
}
