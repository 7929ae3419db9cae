//! The CABPK shape check (`capstan_agent::cloudinit::cabpk`), which the lab's CABPK-shaped
//! user-data must pass: its constants equal the facts recorded from CABPK's templates
//! (`fixtures/cabpk/shape.toml`, naming the upstream files), CABPK-shaped documents pass, and
//! each rename or change of a field CABPK writes (a path, `owner`, `permissions`, the header,
//! the kubeadm command, the sentinel) fails naming it. The documents also reach the agent's
//! Cluster API hook: their `runcmd` is where the kube preflight finds kubeadm and its file.

use capstan_agent::cloudinit::cabpk::{self, Kind, FILE_KEYS, HEADER, SENTINEL_COMMAND};
use capstan_agent::roles::kube::bootstrap::kubeadm_in_runcmd;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cabpk");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{DIR}/{name}")).unwrap()
}

fn strs(v: &toml::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
}

#[test]
fn the_module_agrees_with_the_facts_recorded_from_cabpk() {
    let facts: toml::Value = toml::from_str(&fixture("shape.toml")).unwrap();
    assert_eq!(strs(&facts["header"]), HEADER);
    assert_eq!(facts["sentinel"].as_str().unwrap(), SENTINEL_COMMAND);
    assert_eq!(strs(&facts["file_keys"]), FILE_KEYS);
    for kind in Kind::ALL {
        let t = &facts[kind.name()];
        let s = cabpk::shape(kind);
        assert!(t["upstream"]
            .as_str()
            .unwrap()
            .starts_with("bootstrap/kubeadm/internal/cloudinit/"));
        assert_eq!(t["runcmd"].as_str().unwrap(), s.kubeadm_command, "{}", kind.name());
        assert!(s.kubeadm_command.ends_with(&format!("&& {SENTINEL_COMMAND}")));
        assert_eq!(t["kubeadm_config"].as_str().unwrap(), s.kubeadm_config.0);
        assert_eq!(strs(&t["kubeadm_kinds"]), s.kubeadm_config.1);
        let files: Vec<(String, String, String)> = t["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let g = |k: &str| f[k].as_str().unwrap().to_owned();
                (g("path"), g("owner"), g("permissions"))
            })
            .collect();
        let ours: Vec<(String, String, String)> =
            s.files.iter().map(|f| (f.path.into(), f.owner.into(), f.permissions.into())).collect();
        assert_eq!(ours, files, "{}", kind.name());
    }
}

#[test]
fn cabpk_shaped_documents_pass_and_reach_the_preflight_hook() {
    for kind in Kind::ALL {
        let doc = fixture(&format!("{}.yaml", kind.name()));
        let parts = cabpk::check(&doc, kind).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parts.pre_kubeadm.len(), 2, "{}", kind.name());
        assert!(parts.pre_kubeadm[0].starts_with("hostnamectl set-hostname"));
        assert_eq!(parts.post_kubeadm, ["echo post-kubeadm"]);
        // the agent's own reading of the same document: the hook finds kubeadm and its file
        let cc = capstan_agent::cloudinit::parse_cloud_config(&doc).unwrap();
        let (action, config) = kubeadm_in_runcmd(&cc.runcmd).expect("kubeadm in runcmd");
        assert_eq!(action, if kind == Kind::Init { "init" } else { "join" });
        assert_eq!(config.as_deref(), Some(cabpk::shape(kind).kubeadm_config.0));
        // with verbosity, as CABPK renders KubeadmVerbosity
        let v = doc.replace(".yaml  &&", ".yaml --v=5 &&");
        assert!(v != doc && cabpk::check(&v, kind).is_ok());
    }
}

/// `doc` changed by `from` → `to` (which must occur) fails naming `names`.
fn fails(kind: Kind, from: &str, to: &str, names: &str) {
    let doc = fixture(&format!("{}.yaml", kind.name()));
    assert!(doc.contains(from), "{} has no {from:?}", kind.name());
    let bad = doc.replacen(from, to, 1);
    let e = cabpk::check(&bad, kind).expect_err(&format!("{from:?} -> {to:?} passed"));
    let msg = e.to_string();
    assert!(msg.contains(names) && msg.contains(kind.name()), "{from:?} -> {to:?}: {msg}");
}

#[test]
fn a_renamed_or_changed_field_fails_naming_it() {
    let join = "/run/kubeadm/kubeadm-join-config.yaml";
    for kind in Kind::ALL {
        let path = cabpk::shape(kind).kubeadm_config.0;
        fails(kind, "## template: jinja", "## template: none", "header");
        fails(kind, "#cloud-config\n", "#cloud-configs\n", "header");
        fails(kind, "write_files:", "write-files:", "write_files: missing");
        fails(kind, "runcmd:", "run_cmd:", "runcmd: missing");
        fails(kind, &format!("path: {path}"), &format!("path: {path}.new"), &format!("no {path}"));
        // the first file entry's keys, renamed or changed
        fails(
            kind,
            "    permissions: '0640'",
            "    permission: '0640'",
            "\"permission\" is not one CABPK writes",
        );
        fails(kind, "    permissions: '0640'", "    permissions: '0644'", "permissions");
        fails(kind, "    owner: root:root", "    owner: root", "owner");
        fails(kind, "    content: |", "    contents: |", "\"contents\"");
        fails(
            kind,
            "&& echo success > /run/cluster-api/bootstrap-success.complete",
            "&& touch /run/cluster-api/done",
            "runcmd: 0 item(s)",
        );
        fails(kind, "--config /run/kubeadm/", "--config=/run/kubeadm/", "runcmd: 0 item(s)");
    }
    // (an unquoted 0640 is not caught: serde_yaml reads it as the string "0640" too)
    fails(Kind::JoinWorker, "permissions: '0640'", "permissions: 416", "(quoted)");
    fails(
        Kind::Init,
        "path: /etc/kubernetes/pki/ca.key\n    owner: root:root\n    permissions: '0600'",
        "path: /etc/kubernetes/pki/ca.key\n    owner: root:root\n    permissions: '0640'",
        "/etc/kubernetes/pki/ca.key: permissions",
    );
    fails(
        Kind::JoinControlPlane,
        "path: /etc/kubernetes/pki/sa.key",
        "path: /etc/kubernetes/pki/sa.pem",
        "no /etc/kubernetes/pki/sa.key",
    );
    fails(
        Kind::Init,
        "kind: InitConfiguration",
        "kind: JoinConfiguration",
        "no InitConfiguration document",
    );
    fails(Kind::JoinWorker, "kubeadm join --config", "kubeadm  join --config", "runcmd: 0 item(s)");
    fails(Kind::JoinWorker, join, "/tmp/kubeadm-join-config.yaml", "no /run/kubeadm");
    fails(
        Kind::JoinWorker,
        "path: /run/cluster-api/placeholder",
        "path: /run/cluster-api/marker",
        "no /run/cluster-api/placeholder",
    );
    // two kubeadm commands are not CABPK's
    let doc = fixture("join-worker.yaml");
    let twice = doc.replace(
        "  - \"echo post-kubeadm\"",
        &format!("  - kubeadm join --config {join}  && {SENTINEL_COMMAND}"),
    );
    assert!(cabpk::check(&twice, Kind::JoinWorker).unwrap_err().to_string().contains("2 item(s)"));
    assert!(cabpk::check("not yaml: [", Kind::Init).is_err());
    assert!(cabpk::check("", Kind::Init).is_err());
}

/// Found by the `kubeadm_join_config` fuzz target: a kubeadm document that does not parse
/// inside a CABPK-shaped cloud-config made the kinds check loop forever.
#[test]
fn a_broken_kubeadm_document_is_reported_not_looped_on() {
    let doc = fixture("fuzz/timeout-broken-kubeadm-document.yaml");
    let t = std::time::Instant::now();
    let e = cabpk::check(&doc, Kind::JoinWorker).unwrap_err().to_string();
    assert!(t.elapsed() < std::time::Duration::from_secs(2));
    assert!(e.contains("header") && e.contains("no JoinConfiguration document"), "{e}");
}
