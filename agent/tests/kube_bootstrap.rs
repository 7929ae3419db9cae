//! The kube roles' first-boot steps through the real step runner, on a temporary root with a
//! real containerd and fake `/proc`/`/sys` trees (`common::kubenode`), without Kubernetes:
//! a template without kubeadm, `--root` without commands, and the preflight that gates
//! Cluster API's `runcmd` (a malformed token, an unreachable endpoint, a missing file), with
//! `runcmd` proven not to run. The join path against a real control plane is
//! `tests/kube_join.rs`.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use capstan_agent::roles::kube::bootstrap::{CABPK_STEPS, VAPP_STEPS};
use capstan_agent::roles::kube::KubeSettings;
use capstan_agent::roles::RoleId;
use capstan_agent::root::Root;
use capstan_agent::steps::{
    self, Command, Mode, PerInstance, Plan, RoleData, Stage, StepRecord, StepStatus, BUILTIN,
};
use common::kubenode::{fake_node, Containerd};

const HASH: &str = "sha256:7c5d8ca3bbcd0bb2bd9ae4d4ec5cf8b2d5d15e5c4f6b5c5a3e0c1e9f4b1a2d3e";
const JOIN: &str = "/run/kubeadm/kubeadm-join-config.yaml";

fn worker(endpoint: &str) -> KubeSettings {
    KubeSettings::from_flat(RoleId::Worker, |k| match k {
        "kube.endpoint" => Some(endpoint),
        "kube.token" => Some("abcdef.0123456789abcdef"),
        "kube.ca-cert-hash" => Some(HASH),
        _ => None,
    })
    .unwrap()
}

fn run(root: &Path, plan: &Plan, mode: Mode, role: Option<&KubeSettings>) -> Vec<StepRecord> {
    let r = Root::new(root).unwrap();
    let list = steps::place(BUILTIN.to_vec(), VAPP_STEPS);
    let list = steps::place(list, &capstan_agent::roles::plan_steps(plan));
    let role = role.map(|s| RoleData(s));
    steps::run_steps_with(&r, plan, mode, &PerInstance::fresh(), Stage::Final, &list, role)
}

fn rec<'a>(rs: &'a [StepRecord], name: &str) -> &'a StepRecord {
    rs.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no {name} record in {rs:#?}"))
}

const RUN: Mode = Mode::Rooted { run_commands: true };

#[test]
fn a_template_without_kubeadm_says_so_and_runs_nothing() {
    let d = tempfile::tempdir().unwrap();
    let rs = run(d.path(), &Plan::default(), RUN, Some(&worker("10.0.0.100")));
    let k = rec(&rs, "kubeadm");
    assert_eq!(k.status, StepStatus::Failed);
    let e = k.error.as_deref().unwrap();
    assert!(e.contains("built without --kube-bin") && e.contains("usr/bin/kubeadm"), "{e}");
    assert_eq!(rec(&rs, "kubeadm/version").status, StepStatus::Failed);
    assert!(!rs.iter().any(|r| r.name.starts_with("kube-preflight")), "{rs:#?}");
    assert!(!d.path().join("run/kubeadm").exists());
    // no role settings: nothing to do, and the role's own record says why
    let rs = run(d.path(), &Plan::default(), RUN, None);
    assert_eq!(rec(&rs, "kubeadm").status, StepStatus::Skipped);
}

#[test]
fn under_root_without_commands_nothing_runs() {
    let d = tempfile::tempdir().unwrap();
    let rs =
        run(d.path(), &Plan::default(), Mode::Rooted { run_commands: false }, Some(&worker("x")));
    let k = rec(&rs, "kubeadm");
    assert_eq!(k.status, StepStatus::Skipped, "{k:?}");
    assert!(k.detail.contains("not run under --root"), "{k:?}");
}

/// A stand-in for the node's kubeadm that only says it ran: `runcmd` must never reach it.
fn marker_kubeadm(root: &Path) {
    let bin = root.join("usr/bin/kubeadm");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(&bin, "#!/bin/sh\necho \"$*\" >> \"$(dirname \"$0\")/../../kubeadm-ran\"\n")
        .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// CABPK's runcmd (controlplane_join/node templates), calling the marker kubeadm by path.
fn cabpk_plan() -> Plan {
    Plan {
        runcmd: vec![Command::Shell(format!(
            "./usr/bin/kubeadm join --config {JOIN}  && echo success > run/cluster-api/bootstrap-success.complete"
        ))],
        ..Plan::default()
    }
}

fn join_config(token: &str, endpoint: &str) -> String {
    format!(
        "apiVersion: kubeadm.k8s.io/v1beta3\nkind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n    apiServerEndpoint: {endpoint}\n    caCertHashes:\n    - {HASH}\n    token: {token}\nnodeRegistration:\n  criSocket: unix:///var/run/containerd/containerd.sock\n  kubeletExtraArgs:\n    cloud-provider: external\n  name: '{{{{ ds.meta_data.hostname }}}}'\n"
    )
}

#[test]
fn the_cluster_api_preflight_gates_runcmd_and_names_the_file_and_field() {
    let d = tempfile::tempdir().unwrap();
    fake_node(d.path());
    marker_kubeadm(d.path());
    let _cd = Containerd::start(d.path());
    let file = d.path().join(JOIN.trim_start_matches('/'));
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let plan = cabpk_plan();
    // without the file
    let rs = run(d.path(), &plan, RUN, None);
    let p = rec(&rs, "kube-preflight");
    assert_eq!(p.status, StepStatus::Failed);
    assert!(p.error.as_deref().unwrap().contains(&format!("{JOIN}: runcmd's kubeadm join")));
    for (token, endpoint, field, why) in [
        ("ABCDEF.0123456789abcdef", "127.0.0.1:6443", "discovery.bootstrapToken.token", "secret"),
        (
            "abcdef.0123456789abcdef",
            "127.0.0.1:1",
            "discovery.bootstrapToken.apiServerEndpoint",
            "TCP connect failed",
        ),
    ] {
        std::fs::write(&file, join_config(token, endpoint)).unwrap();
        let t = std::time::Instant::now();
        let rs = run(d.path(), &plan, RUN, None);
        assert!(t.elapsed().as_secs() < 10, "{:?}", t.elapsed());
        let p = rec(&rs, "kube-preflight");
        assert_eq!(p.status, StepStatus::Failed, "{rs:#?}");
        let e = p.error.as_deref().unwrap();
        assert!(e.contains(&format!("{JOIN}: {field}")) && e.contains(why), "{e}");
        assert!(e.contains("kubeadm join not run") && !e.contains("0123456789abcdef"), "{e}");
        // the check's own record names the file's field too
        let sub = rs.iter().find(|r| r.status == StepStatus::Failed && r.name.contains('/'));
        assert!(sub.unwrap().error.as_deref().unwrap().contains(field), "{rs:#?}");
        let r = rec(&rs, "runcmd");
        assert_eq!(
            (r.status, r.detail.as_str()),
            (StepStatus::Skipped, "not run: kube-preflight failed")
        );
        assert!(!d.path().join("kubeadm-ran").exists(), "runcmd reached kubeadm");
        // the order in status: the preflight's checks, the preflight, then runcmd
        let pos = |n: &str| rs.iter().position(|r| r.name == n).unwrap();
        assert!(pos("kube-preflight/runtime") < pos("kube-preflight"));
        assert!(pos("kube-preflight") < pos("runcmd"));
    }
    // the vApp step stays out of the way of the user-data's kubeadm
    let rs = run(d.path(), &plan, RUN, Some(&worker("127.0.0.1:1")));
    assert!(rec(&rs, "kubeadm").detail.contains("Cluster API path"), "{rs:#?}");
}

#[test]
fn the_preflight_is_added_only_where_runcmd_runs_kubeadm() {
    assert_eq!(capstan_agent::roles::plan_steps(&cabpk_plan()).len(), 1);
    assert_eq!(capstan_agent::roles::plan_steps(&cabpk_plan())[0].id, CABPK_STEPS[0].id);
    let plain =
        Plan { runcmd: vec![Command::Shell("echo kubeadm join".into())], ..Plan::default() };
    assert!(capstan_agent::roles::plan_steps(&plain).is_empty());
    assert!(capstan_agent::roles::plan_steps(&Plan::default()).is_empty());
    let list = steps::place(BUILTIN.to_vec(), CABPK_STEPS);
    let names: Vec<_> = list.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(&names[names.len() - 2..], ["kube-preflight", "runcmd"]);
}

/// `capstan-agent firstboot --root --run-commands` (both stages) on CABPK's worker cloud-config
/// in guestinfo, its endpoint black-holed: the plan's steps reach the real first boot, the
/// preflight runs from the file `write_files` left, and `runcmd` does not run. The
/// pre-kubeadm commands are replaced by markers (they would run on the host otherwise).
#[test]
fn the_cluster_api_path_through_firstboot_gates_runcmd() {
    let d = tempfile::tempdir().unwrap();
    let (root, gi) = (d.path().join("root"), d.path().join("gi"));
    common::minimal_root(&root);
    fake_node(&root);
    let _cd = Containerd::start(&root);
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cabpk/join-worker.yaml"
    ))
    .unwrap();
    let mut lines: Vec<String> = doc.lines().map(str::to_owned).collect();
    for l in lines.iter_mut().filter(|l| l.starts_with("  - \"")) {
        *l = "  - \"touch pre-or-post-ran\"".into();
    }
    let doc = lines.join("\n") + "\n";
    common::write_guestinfo(
        &gi,
        &[
            ("guestinfo.metadata", "instance-id: iid-cabpk-1\nlocal-hostname: w1\n"),
            ("guestinfo.userdata", &common::b64(doc.as_bytes())),
            ("guestinfo.userdata.encoding", "base64"),
        ],
    );
    let out = common::firstboot(&root, &gi).arg("--run-commands").output().unwrap();
    let st = common::status_json(&root);
    let step = |n: &str| common::step(&st, n).clone();
    assert_eq!(step("write-files")["status"], "ok", "{st:#}");
    assert!(root.join(JOIN.trim_start_matches('/')).exists());
    let p = step("kube-preflight");
    assert_eq!(p["status"], "failed", "{st:#}");
    let e = p["error"].as_str().unwrap();
    assert!(
        e.contains(&format!("{JOIN}: discovery.bootstrapToken.apiServerEndpoint"))
            && e.contains("10.10.0.100:6443"),
        "{e}"
    );
    assert_eq!(step("runcmd")["detail"], "not run: kube-preflight failed");
    assert!(!root.join("pre-or-post-ran").exists(), "runcmd ran");
    assert!(!root.join("run/cluster-api/bootstrap-success.complete").exists());
    assert_ne!(out.status.code(), Some(0));
}

/// CABPK's join file is outside input: hostile documents give an error or a target, quickly,
/// never a panic or a hang (the alias bomb is refused by the YAML reader's limits).
#[test]
fn hostile_join_configurations_are_refused_or_read_quickly() {
    use capstan_agent::roles::kube::preflight::Target;
    let bomb = {
        let mut s = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            s.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n", p = if i == 1 { String::new() } else { (i - 1).to_string() }));
        }
        s.replace("*a1,", "*a,").replace("*a1]", "*a]") + "kind: JoinConfiguration\n"
    };
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let cases: Vec<(String, bool)> = vec![
        (bomb, false),
        (deep, false),
        ("kind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n    token: 7\n    caCertHashes: sha256:x\n".into(), false),
        ("kind: JoinConfiguration\ndiscovery:\n  bootstrapToken: [1, 2]\n".into(), false),
        ("kind: JoinConfiguration\ndiscovery: {bootstrapToken: {apiServerEndpoint: {a: b}}}\n".into(), false),
        ("kind: [JoinConfiguration]\n".into(), true),
        ("--- !!binary aGVsbG8=\n---\nkind: JoinConfiguration\n".into(), true),
        ("\u{0}\u{1}\u{2}".into(), false),
        ("kind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n    apiServerEndpoint: \"\u{202e}10.0.0.1:6443\"\n    token: abcdef.0123456789abcdef\n".into(), true),
    ];
    for (doc, may_parse) in &cases {
        let t = std::time::Instant::now();
        let r = Target::from_join_config(doc);
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", &doc[..doc.len().min(60)]);
        if !may_parse {
            assert!(!matches!(r, Ok(Some(Target { ref token, .. })) if token.is_some()), "{r:?}");
        }
    }
    // a target from a hostile endpoint is still refused by the preflight's value check
    let d = tempfile::tempdir().unwrap();
    let t = Target::from_join_config(&cases.last().unwrap().0).unwrap().unwrap();
    let r = capstan_agent::roles::kube::preflight::run_blocking(
        &t,
        &capstan_agent::roles::kube::preflight::Options {
            root: d.path().to_owned(),
            ..Default::default()
        },
    );
    let f = r.checks.iter().find(|c| c.name == "values").unwrap();
    assert!(
        matches!(f.outcome, capstan_agent::roles::kube::preflight::Outcome::Failed(_)),
        "{r:?}"
    );
}
