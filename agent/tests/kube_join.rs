//! The kube roles' first-boot steps against real Kubernetes v1.20.2
//! (`../shared/tools/kubernetes.sh`; `scripts/setup` builds it, about 8 minutes cold, cached
//! after): a control plane of Debian's etcd, kube-apiserver and kube-controller-manager
//! (its bootstrapsigner signs cluster-info, its tokencleaner removes expired tokens), with PKI,
//! kubeconfig, bootstrap token, cluster-info and kubeadm-config made by kubeadm's own phases.
//!
//! On the join path, a wrong `ca-cert-hash`, an unknown, a wrong-secret and an expired token,
//! and unreachable endpoints each give a recorded failure naming the key within 10 s, and
//! kubeadm never starts (its calls are recorded; no configuration, no `/etc/kubernetes`
//! in the node's root). With the right values, the real `kubeadm join phase preflight` runs on
//! the agent's configuration: kubeadm's own discovery agrees with the agent's preflight. The
//! init path runs the real `kubeadm init --dry-run` on the agent's configuration, and its
//! failure (`--upload-certs` cannot dry-run) runs the reset.
//!
//! The test host must not become a node, so the node's `usr/bin/kubeadm` is a shim (below)
//! around the real kubeadm: `join` runs only its `phase preflight`, `init` runs `--dry-run`,
//! `reset` is recorded only (1.20's reset has no dry run).
//!
//! Skipped, saying so, when the Kubernetes binaries are absent.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::time::{Duration, Instant};

use capstan_agent::roles::kube::KubeSettings;
use capstan_agent::roles::RoleId;
use capstan_agent::root::Root;
use capstan_agent::steps::{
    self, Command, Mode, PerInstance, Plan, RoleData, Stage, StepRecord, StepStatus, BUILTIN,
};
use common::kubenode::{fake_node, Containerd};

const TOKEN: &str = "abcdef.0123456789abcdef";
const RUN: Mode = Mode::Rooted { run_commands: true };
const JOIN: &str = "/run/kubeadm/kubeadm-join-config.yaml";

/// The built Kubernetes binaries. Their absence fails the test: scripts/setup builds them, and
/// a skipped test would pass without proving anything.
fn kube_bin() -> Option<PathBuf> {
    let dir = std::env::var_os("CAPSTAN_KUBE_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let tools = std::env::var_os("CAPSTAN_TOOLS_DIR").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/capstan-tools")
        });
        tools.join("kubernetes-1.20.2/bin")
    });
    assert!(
        dir.join("kubeadm").exists() && dir.join("kube-apiserver").exists(),
        "no Kubernetes binaries in {} (scripts/setup builds them, about 8 minutes cold; or set \
         CAPSTAN_KUBE_BIN)",
        dir.display()
    );
    Some(dir)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn run_ok(p: &mut Proc) -> String {
    let o = p.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{p:?}: {e}"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{p:?}: {}\n{text}", o.status);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn wait(what: &str, bound: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The kubelet configuration `kubeadm join` reads and its RBAC, as kubeadm 1.20's
/// `upload-config kubelet` phase writes them.
const KUBELET_CONFIG: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: kubelet-config-1.20, namespace: kube-system}
data:
  kubelet: |
    apiVersion: kubelet.config.k8s.io/v1beta1
    kind: KubeletConfiguration
    cgroupDriver: systemd
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: kubeadm:kubelet-config-1.20, namespace: kube-system}
rules:
- {apiGroups: [\"\"], resources: [configmaps], resourceNames: [kubelet-config-1.20], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: kubeadm:kubelet-config-1.20, namespace: kube-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: kubeadm:kubelet-config-1.20}
subjects:
- {kind: Group, name: \"system:bootstrappers:kubeadm:default-node-token\"}
- {kind: Group, name: \"system:nodes\"}
";

/// A real control plane on loopback ports, stopped on drop.
struct ControlPlane {
    dir: tempfile::TempDir,
    kids: Vec<Child>,
    bin: PathBuf,
    port: u16,
    pin: String,
}

impl ControlPlane {
    fn start(bin: &Path) -> ControlPlane {
        let dir = tempfile::tempdir().unwrap();
        let d = &dir.path().to_owned();
        let (client, peer, port) = (free_port(), free_port(), free_port());
        let cfg = d.join("kubeadm.yaml");
        std::fs::write(&cfg, format!(
            "apiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration\nbootstrapTokens:\n- token: {TOKEN}\nlocalAPIEndpoint:\n  bindPort: {port}\nnodeRegistration:\n  name: fixture\n---\napiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\nkubernetesVersion: v1.20.2\ncertificatesDir: {}/pki\ncontrolPlaneEndpoint: 127.0.0.1:{port}\n",
            d.display()
        )).unwrap();
        let mut cp =
            ControlPlane { kids: Vec::new(), bin: bin.to_owned(), port, pin: String::new(), dir };
        cp.kubeadm(&["init", "phase", "certs", "all", "--config", &cfg.to_string_lossy()]);
        cp.kubeadm(&[
            "init",
            "phase",
            "kubeconfig",
            "admin",
            "--config",
            &cfg.to_string_lossy(),
            "--kubeconfig-dir",
            &d.to_string_lossy(),
        ]);
        let log = |n: &str| std::fs::File::create(d.join(n)).unwrap();
        let pki = |f: &str| format!("{}/pki/{f}", d.display());
        cp.spawn(
            Proc::new("etcd")
                .args([
                    "--name",
                    "fixture",
                    "--data-dir",
                    &format!("{}/etcd", d.display()),
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &format!("fixture=http://127.0.0.1:{peer}"),
                ])
                .stderr(log("etcd.log")),
        );
        cp.spawn(
            Proc::new(bin.join("kube-apiserver"))
                .args([
                    &format!("--etcd-servers=http://127.0.0.1:{client}"),
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    &format!("--secure-port={port}"),
                    "--insecure-port=0",
                    &format!("--client-ca-file={}", pki("ca.crt")),
                    &format!("--tls-cert-file={}", pki("apiserver.crt")),
                    &format!("--tls-private-key-file={}", pki("apiserver.key")),
                    &format!("--service-account-key-file={}", pki("sa.pub")),
                    &format!("--service-account-signing-key-file={}", pki("sa.key")),
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    "--authorization-mode=Node,RBAC",
                    "--enable-bootstrap-token-auth",
                    "--service-cluster-ip-range=10.96.0.0/12",
                ])
                .stderr(log("apiserver.log")),
        );
        wait("kube-apiserver ready", Duration::from_secs(240), || {
            cp.kubectl_status(&["get", "--raw", "/readyz"])
        });
        let admin = format!("{}/admin.conf", d.display());
        cp.spawn(
            Proc::new(bin.join("kube-controller-manager"))
                .args([
                    &format!("--kubeconfig={admin}"),
                    "--controllers=bootstrapsigner,tokencleaner",
                    "--leader-elect=false",
                    "--secure-port=0",
                    "--port=0",
                ])
                .stderr(log("controller-manager.log")),
        );
        let c = cfg.to_string_lossy();
        cp.kubeadm(&["init", "phase", "bootstrap-token", "--config", &c, "--kubeconfig", &admin]);
        cp.kubeadm(&[
            "init",
            "phase",
            "upload-config",
            "kubeadm",
            "--config",
            &c,
            "--kubeconfig",
            &admin,
        ]);
        // what `upload-config kubelet` creates (its last part, annotating the control plane's
        // Node with the CRI socket, needs a kubelet): the kubelet configuration join reads
        let kubelet = d.join("kubelet-config.yaml");
        std::fs::write(&kubelet, KUBELET_CONFIG).unwrap();
        run_ok(
            Proc::new(bin.join("kubectl"))
                .args(["--kubeconfig", &admin, "create", "-f"])
                .arg(&kubelet),
        );
        wait("cluster-info signed", Duration::from_secs(120), || {
            cp.signed().contains(&"abcdef".to_owned())
        });
        let ca = std::fs::read_to_string(pki("ca.crt")).unwrap();
        cp.pin = openssl_pin(&ca);
        cp
    }

    fn spawn(&mut self, p: &mut Proc) {
        self.kids.push(
            p.stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{p:?}: {e}")),
        );
    }

    fn kubeadm(&self, args: &[&str]) -> String {
        run_ok(Proc::new(self.bin.join("kubeadm")).args(args))
    }

    fn kubectl_status(&self, args: &[&str]) -> bool {
        Proc::new(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.dir.path().join("admin.conf"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The token ids cluster-info carries a signature for.
    fn signed(&self) -> Vec<String> {
        let out = Proc::new(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.dir.path().join("admin.conf"))
            .args(["-n", "kube-public", "get", "configmap", "cluster-info", "-o", "json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["data"]
            .as_object()
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.strip_prefix("jws-kubeconfig-"))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for k in self.kids.iter_mut().rev() {
            let _ = k.kill();
            let _ = k.wait();
        }
    }
}

/// kubeadm's documented pin computation.
fn openssl_pin(ca_pem: &str) -> String {
    let sh = "openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -hex";
    let mut c = Proc::new("sh")
        .args(["-c", sh])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    c.stdin.take().unwrap().write_all(ca_pem.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    format!("sha256:{}", String::from_utf8_lossy(&o.stdout).split_whitespace().last().unwrap())
}

/// The node's kubeadm on a host that must not become a node (see the module doc).
fn shim(root: &Path, real: &Path) {
    let bin = root.join("usr/bin/kubeadm");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(&bin, format!(r#"#!/bin/sh
here=$(cd "$(dirname "$0")/../.." && pwd)
echo "$*" >> "$here/kubeadm-calls"
real={real}
case "$1" in
version) exec "$real" "$@" ;;
init)
  # one dry run at a time on this host: each leaves /etc/kubernetes/tmp/kubeadm-init-dryrun*
  exec 9>/tmp/capstan-kubeadm-dryrun.lock; flock 9
  shift; args=""
  for a in "$@"; do case "$a" in --ignore-preflight-errors=*) ;; *) args="$args $a" ;; esac; done
  "$real" init $args --dry-run --ignore-preflight-errors=all; rc=$?
  rm -rf /etc/kubernetes/tmp/kubeadm-init-dryrun*; rmdir /etc/kubernetes/tmp /etc/kubernetes 2>/dev/null
  exit $rc ;;
join) exec "$real" join phase preflight --config "$3" --ignore-preflight-errors=all ;;
reset) exit 0 ;;
*) exit 2 ;;
esac
"#, real = real.join("kubeadm").display())).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A node's root: fake `/proc`/`/sys`, a real containerd, the kubeadm shim.
struct Node {
    dir: tempfile::TempDir,
    _containerd: Containerd,
}

impl Node {
    fn new(bin: &Path) -> Node {
        let dir = tempfile::tempdir().unwrap();
        fake_node(dir.path());
        shim(dir.path(), bin);
        let cd = Containerd::start(dir.path());
        Node { dir, _containerd: cd }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }
    fn calls(&self) -> String {
        std::fs::read_to_string(self.path("kubeadm-calls")).unwrap_or_default()
    }
    /// A fresh instance: no calls, no sentinel, no configuration.
    fn reset(&self) {
        for p in [
            "kubeadm-calls",
            "run/cluster-api/bootstrap-success.complete",
            JOIN,
            "run/kubeadm/kubeadm.yaml",
        ] {
            let _ = std::fs::remove_file(self.path(p));
        }
    }
    fn run(&self, plan: &Plan, role: Option<&KubeSettings>) -> (Vec<StepRecord>, Duration) {
        self.reset();
        let r = Root::new(self.dir.path()).unwrap();
        let list =
            steps::place(BUILTIN.to_vec(), capstan_agent::roles::kube::bootstrap::VAPP_STEPS);
        let list = steps::place(list, &capstan_agent::roles::plan_steps(plan));
        let t = Instant::now();
        let rs = steps::run_steps_with(
            &r,
            plan,
            RUN,
            &PerInstance::fresh(),
            Stage::Final,
            &list,
            role.map(|s| RoleData(s)),
        );
        (rs, t.elapsed())
    }
    /// kubeadm never started: only its version was asked, nothing was written for it.
    fn assert_nothing_started(&self) {
        assert_eq!(self.calls(), "version -o short\n");
        for p in [
            JOIN,
            "run/cluster-api/bootstrap-success.complete",
            "etc/kubernetes/kubelet.conf",
            "etc/kubernetes",
        ] {
            assert!(!self.path(p).exists(), "{p} exists");
        }
    }
}

fn settings(role: RoleId, pairs: &[(&str, &str)]) -> KubeSettings {
    KubeSettings::from_flat(role, |k| pairs.iter().find(|(x, _)| *x == k).map(|(_, v)| *v)).unwrap()
}

fn rec<'a>(rs: &'a [StepRecord], name: &str) -> &'a StepRecord {
    rs.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no {name} in {rs:#?}"))
}

/// The vApp step failed, naming `key` and saying `why`, within 10 s, before kubeadm.
fn assert_refused(node: &Node, rs: &[StepRecord], took: Duration, key: &str, why: &str) {
    eprintln!("refused in {took:?}: {key} ({why})");
    let k = rec(rs, "kubeadm");
    assert_eq!(k.status, StepStatus::Failed, "{rs:#?}");
    let e = k.error.as_deref().unwrap();
    assert!(e.contains(key) && e.contains(why) && e.contains("kubeadm not run"), "{key}: {e}");
    assert!(!e.contains("0123456789abcdef"), "a secret in {e}");
    assert!(took < Duration::from_secs(10), "{key}: {took:?}");
    let failed: Vec<_> =
        rs.iter().filter(|r| r.status == StepStatus::Failed).map(|r| r.name.as_str()).collect();
    assert_eq!(failed.len(), 2, "one check and the step: {failed:?}");
    node.assert_nothing_started();
}

#[test]
fn join_preflight_failures_name_the_key_and_kubeadm_never_starts() {
    let Some(bin) = kube_bin() else { return };
    let cp = ControlPlane::start(&bin);
    let node = Node::new(&bin);
    let ep = cp.endpoint();
    let worker = |pairs: &[(&str, &str)]| {
        let mut all = vec![
            ("kube.endpoint", ep.as_str()),
            ("kube.token", TOKEN),
            ("kube.ca-cert-hash", cp.pin.as_str()),
        ];
        for (k, v) in pairs {
            all.retain(|(x, _)| x != k);
            all.push((k, v));
        }
        settings(RoleId::Worker, &all)
    };
    let zero = format!("sha256:{}", "0".repeat(64));
    let cases: Vec<(KubeSettings, &str, &str)> = vec![
        (worker(&[("kube.ca-cert-hash", &zero)]), "kube.ca-cert-hash", "not the configured"),
        (
            worker(&[("kube.token", "zzzzzz.0123456789abcdef")]),
            "kube.token",
            "no live token with id zzzzzz",
        ),
        (worker(&[("kube.token", "abcdef.0123456789abcdee")]), "kube.token", "wrong token secret"),
        (
            worker(&[("kube.endpoint", &format!("127.0.0.1:{}", free_port()))]),
            "kube.endpoint",
            "TCP connect failed",
        ),
        (worker(&[("kube.endpoint", "10.255.255.1:6443")]), "kube.endpoint", "10.255.255.1:6443: "),
    ];
    for (s, key, why) in &cases {
        let (rs, took) = node.run(&Plan::default(), Some(s));
        assert_refused(&node, &rs, took, key, why);
    }
    // a malformed token never reaches the step on the vApp path: the settings refuse it
    let bad = KubeSettings::from_flat(RoleId::Worker, |k| match k {
        "kube.endpoint" => Some(ep.as_str()),
        "kube.token" => Some("abcdef-0123456789abcdef"),
        _ => None,
    });
    assert!(bad.is_err_and(|e| e.to_string().contains("kube.token")));
    // an expired token: the tokencleaner deletes it, the bootstrapsigner drops its signature
    cp.kubeadm(&[
        "token",
        "create",
        "exp1re.0123456789abcdef",
        "--ttl",
        "1s",
        "--kubeconfig",
        &cp.dir.path().join("admin.conf").to_string_lossy(),
    ]);
    wait("the expired token's signature gone", Duration::from_secs(120), || {
        !cp.signed().contains(&"exp1re".to_owned())
    });
    let (rs, took) =
        node.run(&Plan::default(), Some(&worker(&[("kube.token", "exp1re.0123456789abcdef")])));
    assert_refused(&node, &rs, took, "kube.token", "no live token with id exp1re (expired");

    // the right values: every check passes, and kubeadm's own discovery agrees
    let (rs, _) = node.run(&Plan::default(), Some(&worker(&[])));
    assert_eq!(
        rec(&rs, "kubeadm").status,
        StepStatus::Ok,
        "{rs:#?}\n{}",
        std::fs::read_to_string(node.path("var/log/capstan/commands.log")).unwrap_or_default()
    );
    for c in ["endpoint-tcp", "endpoint-tls", "cluster-info", "ca-pin", "token", "clock"] {
        assert_eq!(rec(&rs, &format!("kube-preflight/{c}")).status, StepStatus::Ok, "{c}");
    }
    let calls = node.calls();
    assert!(
        calls.contains(&format!(
            "join --config {} --ignore-preflight-errors=FileExisting-crictl,ImagePull",
            node.path(JOIN).display()
        )),
        "{calls}"
    );
    assert!(!calls.contains("reset"), "{calls}");
    let mode = std::fs::metadata(node.path(JOIN)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(node.path("run/cluster-api/bootstrap-success.complete").exists());
    assert!(rec(&rs, "kubeadm/join").duration_ms > 0);

    // the Cluster API path: the same checks from CABPK's file, gating runcmd
    let cabpk = Plan {
        runcmd: vec![Command::Shell(format!("./usr/bin/kubeadm join --config {JOIN}  && echo success > run/cluster-api/bootstrap-success.complete"))],
        ..Plan::default()
    };
    let file = |hash: &str| {
        format!("apiVersion: kubeadm.k8s.io/v1beta2\nkind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n    apiServerEndpoint: {ep}\n    caCertHashes:\n    - {hash}\n    token: {TOKEN}\nnodeRegistration:\n  criSocket: /var/run/containerd/containerd.sock\n")
    };
    for (hash, ok) in [(zero.as_str(), false), (cp.pin.as_str(), true)] {
        node.reset();
        std::fs::create_dir_all(node.path("run/kubeadm")).unwrap();
        std::fs::write(node.path(JOIN), file(hash)).unwrap();
        let r = Root::new(node.dir.path()).unwrap();
        let list = steps::place(BUILTIN.to_vec(), &capstan_agent::roles::plan_steps(&cabpk));
        let t = Instant::now();
        let rs = steps::run_steps_with(
            &r,
            &cabpk,
            RUN,
            &PerInstance::fresh(),
            Stage::Final,
            &list,
            None,
        );
        let p = rec(&rs, "kube-preflight");
        if ok {
            assert_eq!(p.status, StepStatus::Ok, "{rs:#?}");
            assert!(node.calls().contains("join --config"), "runcmd ran kubeadm");
        } else {
            assert!(t.elapsed() < Duration::from_secs(10));
            let e = p.error.as_deref().unwrap();
            assert!(e.contains(&format!("{JOIN}: discovery.bootstrapToken.caCertHashes")), "{e}");
            assert_eq!(rec(&rs, "runcmd").status, StepStatus::Skipped);
            assert_eq!(node.calls(), "");
        }
    }
}

#[test]
fn init_runs_the_real_kubeadm_on_the_agents_configuration_and_resets_on_failure() {
    let Some(bin) = kube_bin() else { return };
    let node = Node::new(&bin);
    let cp = |extra: &[(&'static str, &'static str)]| {
        let mut all = vec![("kube.endpoint", "10.0.0.100"), ("kube.token", TOKEN)];
        all.extend_from_slice(extra);
        settings(RoleId::ControlPlane, &all)
    };
    let (rs, _) = node.run(&Plan::default(), Some(&cp(&[])));
    let log = std::fs::read_to_string(node.path("var/log/capstan/commands.log")).unwrap();
    assert_eq!(rec(&rs, "kubeadm").status, StepStatus::Ok, "{rs:#?}\n{log}");
    assert!(rec(&rs, "kube-preflight/endpoint-tcp").detail.contains("control-plane init"));
    let calls = node.calls();
    assert!(
        calls.contains(&format!(
            "init --config {} --skip-phases=preflight,addon/coredns",
            node.path("run/kubeadm/kubeadm.yaml").display()
        )),
        "{calls}"
    );
    // kubeadm printed the join command; the log keeps it without the token's secret
    assert!(log.contains("kubeadm join 10.0.0.100:6443 --token abcdef.<secret>"), "{log}");
    assert!(!log.contains("0123456789abcdef"));
    assert!(node.path("run/cluster-api/bootstrap-success.complete").exists());

    // --upload-certs cannot dry-run: a real kubeadm failure after it started
    let key = "e6a2eb8581237ab72a4f494f30285ec12a9694d750b9785706a83bfcbbbd2204";
    let (rs, _) = node.run(&Plan::default(), Some(&cp(&[("kube.certificate-key", key)])));
    let k = rec(&rs, "kubeadm");
    assert_eq!(k.status, StepStatus::Failed, "{rs:#?}");
    let e = k.error.as_deref().unwrap();
    assert!(
        e.contains("kubeadm init failed") && e.contains("upload-certs") && e.contains("reset"),
        "{e}"
    );
    assert!(!e.contains(key), "{e}");
    assert_eq!(rec(&rs, "kubeadm/init").status, StepStatus::Failed);
    assert_eq!(rec(&rs, "kubeadm/reset").status, StepStatus::Ok);
    assert!(node.calls().ends_with("reset -f\n"), "{}", node.calls());
    assert!(node.calls().contains("--upload-certs"));
    // the configuration (with its secrets) went with the reset; no sentinel
    assert!(!node.path("run/kubeadm/kubeadm.yaml").exists());
    assert!(!node.path("run/cluster-api/bootstrap-success.complete").exists());
}

/// The vApp path through `capstan-agent firstboot --root` (early, then final with
/// `--run-commands`, as the two units run): the
/// role and `kube.*` from guestinfo reach the `kubeadm` step as its settings, and the real
/// kubeadm (`init --dry-run`, through the shim) takes the configuration; `status` records the
/// sub-steps with their durations.
#[test]
fn the_vapp_init_through_firstboot() {
    let Some(bin) = kube_bin() else { return };
    let node = Node::new(&bin);
    let root = node.dir.path();
    common::minimal_root(root);
    let gi = root.join("gi");
    common::write_guestinfo(
        &gi,
        &[
            ("guestinfo.metadata", "instance-id: iid-cp-1\nlocal-hostname: cp1\n"),
            ("guestinfo.capstan.role", "control-plane"),
            ("guestinfo.capstan.kube.endpoint", "10.0.0.100"),
            ("guestinfo.capstan.kube.token", TOKEN),
        ],
    );
    // the two units: early (kubeadm pending), then final
    let out = common::firstboot(root, &gi).args(["--stage", "early"]).output().unwrap();
    let st = common::status_json(root);
    assert_eq!(out.status.code(), Some(0), "{st:#}");
    assert_eq!(common::step(&st, "kubeadm")["status"], "pending", "{st:#}");
    let out =
        common::firstboot(root, &gi).args(["--stage", "final", "--run-commands"]).output().unwrap();
    let st = common::status_json(root);
    assert_eq!(out.status.code(), Some(0), "{st:#}");
    let step = |n: &str| common::step(&st, n).clone();
    assert_eq!(step("kubeadm")["status"], "ok", "{st:#}");
    for s in ["kubeadm/version", "kubeadm/config", "kubeadm/init", "kubeadm/sentinel"] {
        assert_eq!(step(s)["status"], "ok", "{s}");
    }
    assert!(step("kubeadm/init")["duration_ms"].as_u64().unwrap() > 0);
    let cfg = std::fs::read_to_string(node.path("run/kubeadm/kubeadm.yaml")).unwrap();
    assert!(
        cfg.contains("apiVersion: kubeadm.k8s.io/v1beta2") && cfg.contains("name: cp1"),
        "{cfg}"
    );
    assert!(!format!("{st}").contains("0123456789abcdef"), "a secret in status");
}
