//! The vApp path's kubeadm configuration: one golden file per API version and kind
//! (`tests/fixtures/kubeadm/<version>/<case>.yaml`, regenerate with `UPDATE_GOLDEN=1`), and
//! every key of every golden document checked against kubeadm's published Go types
//! (`tests/fixtures/kubeadm/types/<version>.txt`, copied from kubernetes/kubernetes with the
//! commit named there): a renamed or moved field, or a map where kubeadm wants a list, fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use capstan_agent::roles::kube::kubeadm::{self, ApiVersion, KubeVersion, NodeFacts};
use capstan_agent::roles::kube::KubeSettings;
use capstan_agent::roles::RoleId;
use serde_yaml::Value;

const TOKEN: &str = "abcdef.0123456789abcdef";
const HASH: &str = "sha256:7c5d8ca3bbcd0bb2bd9ae4d4ec5cf8b2d5d15e5c4f6b5c5a3e0c1e9f4b1a2d3e";
const CKEY: &str = "e6a2eb8581237ab72a4f494f30285ec12a9694d750b9785706a83bfcbbbd2204";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubeadm")
}

/// (case, role, keys)
/// A case: its name, the role, and the `kube.*` values.
type Case = (&'static str, RoleId, Vec<(&'static str, &'static str)>);

fn cases() -> Vec<Case> {
    let join = vec![
        ("kube.endpoint", "10.0.0.100:6443"),
        ("kube.token", TOKEN),
        ("kube.ca-cert-hash", HASH),
    ];
    let mut worker = join.clone();
    worker.push(("kube.node-labels", "capstan.dev/pool=blue,topology.kubernetes.io/zone=z1"));
    worker.push(("kube.node-taints", "dedicated=db:NoSchedule"));
    let mut cp = join;
    cp.push(("kube.certificate-key", CKEY));
    let init = vec![
        ("kube.endpoint", "10.0.0.100:6443"),
        ("kube.token", TOKEN),
        ("kube.certificate-key", CKEY),
        ("kube.pod-cidr", "10.244.0.0/16"),
        ("kube.service-cidr", "10.96.0.0/12"),
        ("kube.node-labels", "capstan.dev/pool=control"),
    ];
    vec![
        ("init", RoleId::ControlPlane, init),
        ("join-worker", RoleId::Worker, worker),
        ("join-control-plane", RoleId::ControlPlane, cp),
    ]
}

const VERSIONS: &[(&str, ApiVersion)] = &[
    ("v1.20.2", ApiVersion::V1beta2),
    ("v1.28.4", ApiVersion::V1beta3),
    ("v1.31.1", ApiVersion::V1beta4),
];

fn render(version: &str, role: RoleId, keys: &[(&str, &str)]) -> kubeadm::KubeadmConfig {
    let m: BTreeMap<&str, &str> = keys.iter().copied().collect();
    let s = KubeSettings::from_flat(role, |k| m.get(k).copied()).expect("valid settings");
    let facts =
        NodeFacts { name: Some("node-1".into()), version: version.parse::<KubeVersion>().unwrap() };
    kubeadm::render(&s, &facts).unwrap()
}

fn check_golden(path: &Path, got: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create)", path.display()));
    assert_eq!(got, want, "{} differs from its golden file", path.display());
}

/// `TYPE -> field -> child` (child: "" leaf, "map", "T" or "[]T").
type Types = BTreeMap<String, BTreeMap<String, String>>;

fn load_types(api: ApiVersion) -> Types {
    let p = fixtures().join("types").join(format!("{}.txt", api.short()));
    let text = std::fs::read_to_string(&p).unwrap();
    let mut out = Types::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (ty, fields) = line.split_once(':').unwrap();
        let f = fields
            .split_whitespace()
            .map(|f| match f.split_once(':') {
                Some((n, c)) => (n.to_owned(), c.to_owned()),
                None => (f.to_owned(), String::new()),
            })
            .collect();
        out.insert(ty.to_owned(), f);
    }
    out
}

/// Every key of `v` exists in type `ty`, recursively; a list field must hold a list, a
/// struct field a mapping.
fn walk(types: &Types, ty: &str, v: &Value, at: &str, errs: &mut Vec<String>) {
    let Some(fields) = types.get(ty) else {
        return errs.push(format!("{at}: type {ty} is not in the types list"));
    };
    let Value::Mapping(m) = v else {
        return errs.push(format!("{at}: {ty} must be a mapping"));
    };
    for (k, val) in m {
        let k = k.as_str().unwrap_or("?");
        let here = format!("{at}.{k}");
        let Some(child) = fields.get(k) else {
            errs.push(format!("{here}: {ty} has no field {k:?}"));
            continue;
        };
        match child.as_str() {
            "" => {
                if val.is_mapping() {
                    errs.push(format!("{here}: a scalar or list in {ty}, not a mapping"));
                }
            }
            "map" => {
                if !val.is_mapping() {
                    errs.push(format!("{here}: {ty}.{k} is a map"));
                }
            }
            c => match c.strip_prefix("[]") {
                Some(elem) => match val {
                    Value::Sequence(items) => {
                        for (i, it) in items.iter().enumerate() {
                            walk(types, elem, it, &format!("{here}[{i}]"), errs);
                        }
                    }
                    _ => errs.push(format!("{here}: {ty}.{k} is a list of {elem}")),
                },
                None => walk(types, c, val, &here, errs),
            },
        }
    }
}

fn check_against_types(yaml: &str, api: ApiVersion) -> Vec<String> {
    let types = load_types(api);
    let mut errs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let v = Value::deserialize(doc).unwrap();
        let kind = v["kind"].as_str().unwrap_or("?").to_owned();
        let want_api = if kind == "KubeletConfiguration" {
            "kubelet.config.k8s.io/v1beta1"
        } else {
            api.as_str()
        };
        if v["apiVersion"].as_str() != Some(want_api) {
            errs.push(format!("doc {i} ({kind}): apiVersion {:?}", v["apiVersion"]));
        }
        walk(&types, &kind, &v, &kind, &mut errs);
    }
    errs
}

use serde::Deserialize as _;

#[test]
fn every_version_and_kind_matches_its_golden_file_and_kubeadms_types() {
    for (version, api) in VERSIONS {
        for (case, role, keys) in cases() {
            let cfg = render(version, role, &keys);
            assert_eq!(cfg.api, *api);
            let path = fixtures().join(api.short()).join(format!("{case}.yaml"));
            check_golden(&path, &cfg.yaml);
            let errs = check_against_types(&cfg.yaml, *api);
            assert!(errs.is_empty(), "{}:\n{}", path.display(), errs.join("\n"));
        }
    }
}

#[test]
fn a_renamed_or_moved_field_fails_the_type_check() {
    // v1beta4 moved the timeouts and turned extraArgs into lists: its documents are wrong
    // for v1beta3 and the other way round
    let (_, role, keys) = &cases()[1];
    let v4 = render("v1.31.1", *role, keys).yaml;
    let errs = check_against_types(&v4, ApiVersion::V1beta3);
    assert!(
        errs.iter().any(|e| e.contains("JoinConfiguration has no field \"timeouts\"")),
        "{errs:?}"
    );
    assert!(errs.iter().any(|e| e.contains("kubeletExtraArgs is a map")), "{errs:?}");
    let v3 = render("v1.28.4", *role, keys).yaml;
    let errs = check_against_types(&v3, ApiVersion::V1beta4);
    assert!(errs.iter().any(|e| e.contains("Discovery has no field \"timeout\"")), "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("is a list of Arg")), "{errs:?}");
    let renamed = v3.replace("caCertHashes", "caCertHash");
    let errs = check_against_types(&renamed, ApiVersion::V1beta3);
    assert_eq!(errs, ["JoinConfiguration.discovery.bootstrapToken.caCertHash: BootstrapTokenDiscovery has no field \"caCertHash\""]);
}

#[test]
fn documents_carry_what_kubeadm_needs() {
    let (_, role, keys) = &cases()[0];
    let init = render("v1.31.1", *role, keys);
    assert_eq!(
        init.argv,
        ["kubeadm", "init", "--config", "/run/kubeadm/kubeadm.yaml", "--upload-certs"]
    );
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&init.yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 3);
    assert_eq!(docs[0]["nodeRegistration"]["criSocket"], "unix:///run/containerd/containerd.sock");
    assert_eq!(docs[0]["nodeRegistration"]["kubeletExtraArgs"][0]["name"], "node-labels");
    assert_eq!(docs[0]["timeouts"]["controlPlaneComponentHealthCheck"], "20m0s");
    assert_eq!(docs[1]["kubernetesVersion"], "v1.31.1");
    assert_eq!(docs[1]["controlPlaneEndpoint"], "10.0.0.100:6443");
    assert_eq!(docs[2]["cgroupDriver"], "systemd");
    // the control plane keeps kubeadm's default taint when none is given
    assert!(docs[0]["nodeRegistration"].get("taints").is_none());
    let old = render("v1.20.2", *role, keys);
    let d: Value = serde_yaml::Deserializer::from_str(&old.yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .next()
        .unwrap();
    assert_eq!(d["nodeRegistration"]["criSocket"], "/run/containerd/containerd.sock");
    assert_eq!(
        d["nodeRegistration"]["kubeletExtraArgs"]["node-labels"],
        "capstan.dev/pool=control"
    );

    let (_, role, keys) = &cases()[2];
    let cp = render("v1.28.4", *role, keys);
    assert_eq!(cp.argv, ["kubeadm", "join", "--config", "/run/kubeadm/kubeadm-join-config.yaml"]);
    let d: Value = serde_yaml::from_str(&cp.yaml).unwrap();
    assert_eq!(d["controlPlane"]["certificateKey"], CKEY);
    assert_eq!(d["discovery"]["bootstrapToken"]["caCertHashes"][0], HASH);
    assert_eq!(d["discovery"]["timeout"], "2m0s");
    // secrets are in the file, never in the Debug form
    let dbg = format!("{cp:?}");
    assert!(!dbg.contains(CKEY) && !dbg.contains("0123456789abcdef"), "{dbg}");
}

#[test]
fn an_old_kubeadm_is_refused_clearly() {
    let (_, role, keys) = &cases()[1];
    let m: BTreeMap<&str, &str> = keys.iter().copied().collect();
    let s = KubeSettings::from_flat(*role, |k| m.get(k).copied()).unwrap();
    let facts = NodeFacts { name: None, version: "v1.14.3".parse().unwrap() };
    let e = kubeadm::render(&s, &facts).unwrap_err().to_string();
    assert!(e.contains("v1.14.3") && e.contains("1.15"), "{e}");
}

/// The preflight reads its target from a join configuration: ours (every version) and one in
/// the shape Cluster API's kubeadm bootstrap writes (keys sorted, CAPV's jinja host name; written
/// from CABPK's output format, not captured from a cluster).
#[test]
fn the_preflight_target_is_read_from_join_configurations() {
    use capstan_agent::roles::kube::preflight::Target;
    for (version, _) in VERSIONS {
        for (case, role, keys) in cases().into_iter().skip(1) {
            let cfg = render(version, role, &keys);
            let t =
                Target::from_join_config(&cfg.yaml).unwrap().unwrap_or_else(|| panic!("{case}"));
            assert_eq!(t.endpoint, "10.0.0.100:6443");
            assert_eq!(t.token.as_deref(), Some(TOKEN));
            assert_eq!(t.ca_cert_hash.as_deref(), Some(HASH));
        }
        // an init has nothing to join
        let (_, role, keys) = &cases()[0];
        assert!(Target::from_join_config(&render(version, *role, keys).yaml).unwrap().is_none());
    }
    let cabpk = "apiVersion: kubeadm.k8s.io/v1beta3\ndiscovery:\n  bootstrapToken:\n    apiServerEndpoint: 10.0.0.100:6443\n    caCertHashes:\n    - sha256:7c5d8ca3bbcd0bb2bd9ae4d4ec5cf8b2d5d15e5c4f6b5c5a3e0c1e9f4b1a2d3e\n    token: abcdef.0123456789abcdef\nkind: JoinConfiguration\nnodeRegistration:\n  criSocket: /var/run/containerd/containerd.sock\n  kubeletExtraArgs:\n    cloud-provider: external\n  name: '{{ ds.meta_data.hostname }}'\n";
    let t = Target::from_join_config(cabpk).unwrap().unwrap();
    assert_eq!((t.endpoint.as_str(), t.token.as_deref()), ("10.0.0.100:6443", Some(TOKEN)));
    let file = "apiVersion: kubeadm.k8s.io/v1beta3\nkind: JoinConfiguration\ndiscovery:\n  file:\n    kubeConfigPath: /etc/kubernetes/discovery.yaml\n";
    assert!(Target::from_join_config(file).unwrap().is_none());
    let e = Target::from_join_config(
        "kind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n    token: x\n",
    )
    .unwrap_err();
    assert!(e.contains("apiServerEndpoint"), "{e}");
    assert!(Target::from_join_config("{ not yaml").is_err());
}

/// A template without `--kube-bin` says so when asked for its kubeadm; a binary that is not
/// kubeadm (or not runnable) is refused by what it did.
#[test]
fn the_carried_kubeadm_is_found_or_its_absence_named() {
    use capstan_agent::roles::kube::kubeadm::{carried_version, CarriedError};
    let d = tempfile::tempdir().unwrap();
    let e = carried_version(&d.path().join("usr/bin/kubeadm")).unwrap_err();
    assert!(matches!(e, CarriedError::Missing { .. }), "{e:?}");
    assert!(e.to_string().contains("built without --kube-bin"), "{e}");
    // not executable
    let f = d.path().join("kubeadm");
    std::fs::write(&f, "#!/bin/sh\necho v1.20.2\n").unwrap();
    assert!(matches!(carried_version(&f), Err(CarriedError::Run { .. })));
    // a real program whose answer is not a version
    let e = carried_version(Path::new("/bin/echo")).unwrap_err();
    assert!(e.to_string().contains("\"version -o short\" is not vMAJOR.MINOR.PATCH"), "{e}");
    // a real program that fails
    let e = carried_version(Path::new("/bin/false")).unwrap_err();
    assert!(matches!(e, CarriedError::Failed { .. }), "{e:?}");
}
