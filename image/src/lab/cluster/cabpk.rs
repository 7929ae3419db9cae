//! `guestinfo.userdata` as Cluster API's kubeadm bootstrap provider (CABPK) renders it for
//! the first control plane (`controlplane_init.go`), another control plane
//! (`controlplane_join.go`) and a worker (`node.go`): the `## template: jinja` /
//! `#cloud-config` header, `write_files` in CABPK's `files` template layout (the PKI of a
//! control plane, kubeadm's configuration, the `/run/cluster-api` placeholder), and `runcmd`
//! with the pre-kubeadm commands CAPV's cluster templates add, CABPK's one kubeadm command
//! and its sentinel. Each command is quoted the way Go's `%q` quotes it (CABPK's `commands`
//! template). [`capstan_agent::cloudinit::cabpk::check`] holds the result to CABPK's shape.
//!
//! The kubeadm documents are rendered from typed structs in `kubeadm.k8s.io/v1beta2`, what
//! the node template's kubeadm 1.20.2 reads. As on vSphere with a management cluster, the lab
//! decides the PKI, the bootstrap token and the CA pin; with no management cluster to create
//! the token in the workload cluster, the init configuration lists it (`bootstrapTokens`,
//! no expiry, so that `scale` works on an old lab cluster).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use capstan_agent::cloudinit::cabpk::{Kind, SENTINEL_COMMAND};
use serde::Serialize;

use super::pki::Pki;

/// kubeadm's API version for the carried kubeadm 1.20.2.
pub const KUBEADM_API: &str = "kubeadm.k8s.io/v1beta2";
/// The Kubernetes version the node template carries.
pub const KUBERNETES_VERSION: &str = "v1.20.2";
/// containerd's socket, as kubeadm before 1.24 takes it (a bare path).
pub const CRI_SOCKET: &str = "/var/run/containerd/containerd.sock";
/// CABPK's placeholder file content.
const PLACEHOLDER: &str = "This placeholder file is used to create the /run/cluster-api sub directory in a way that is compatible with both Linux and Windows (mkdir -p /run/cluster-api does not work with Windows)";
/// The node name CAPV's templates give kubeadm (cloud-init's jinja, from CAPV's metadata).
const NODE_NAME: &str = "{{ ds.meta_data.hostname }}";

/// What a node's user-data needs from the cluster.
#[derive(Debug, Clone)]
pub struct Bootstrap<'a> {
    /// The cluster's name (`clusterName`).
    pub cluster: &'a str,
    /// `VIP:6443`.
    pub endpoint: String,
    /// The node's own address (advertised by a control plane; the kubelet's node IP).
    pub node_ip: Ipv4Addr,
    /// The bootstrap token (secret).
    pub token: &'a str,
    /// `sha256:…` pin of the cluster CA.
    pub ca_cert_hash: &'a str,
    /// Pod network.
    pub pod_cidr: &'a str,
    /// Service network.
    pub service_cidr: &'a str,
    /// The PKI (written on control planes only).
    pub pki: &'a Pki,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeRegistration {
    name: &'static str,
    cri_socket: &'static str,
    kubelet_extra_args: std::collections::BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiEndpoint {
    advertise_address: String,
    bind_port: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BootstrapToken<'a> {
    token: &'a str,
    ttl: &'static str,
    usages: [&'static str; 2],
    groups: [&'static str; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InitConfiguration<'a> {
    api_version: &'static str,
    kind: &'static str,
    bootstrap_tokens: Vec<BootstrapToken<'a>>,
    #[serde(rename = "localAPIEndpoint")]
    local_api_endpoint: ApiEndpoint,
    node_registration: NodeRegistration,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiServer {
    /// The host reaches the API through a forwarded loopback port.
    cert_s_a_ns: [&'static str; 2],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Networking<'a> {
    dns_domain: &'static str,
    pod_subnet: &'a str,
    service_subnet: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterConfiguration<'a> {
    api_version: &'static str,
    kind: &'static str,
    api_server: ApiServer,
    cluster_name: &'a str,
    control_plane_endpoint: &'a str,
    kubernetes_version: &'static str,
    networking: Networking<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenDiscovery<'a> {
    api_server_endpoint: &'a str,
    ca_cert_hashes: [&'a str; 1],
    token: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Discovery<'a> {
    bootstrap_token: TokenDiscovery<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinControlPlane {
    #[serde(rename = "localAPIEndpoint")]
    local_api_endpoint: ApiEndpoint,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinConfiguration<'a> {
    api_version: &'static str,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    control_plane: Option<JoinControlPlane>,
    discovery: Discovery<'a>,
    node_registration: NodeRegistration,
}

fn yaml<T: Serialize>(t: &T) -> String {
    // our own plain structs always serialise
    serde_yaml::to_string(t).expect("kubeadm documents serialise")
}

fn registration(b: &Bootstrap<'_>) -> NodeRegistration {
    NodeRegistration {
        name: NODE_NAME,
        cri_socket: CRI_SOCKET,
        kubelet_extra_args: [("node-ip", b.node_ip.to_string())].into_iter().collect(),
    }
}

fn endpoint(b: &Bootstrap<'_>) -> ApiEndpoint {
    ApiEndpoint { advertise_address: b.node_ip.to_string(), bind_port: super::plan::API_PORT }
}

/// `ClusterConfiguration` then `InitConfiguration`, as CABPK's init template joins them.
fn init_config(b: &Bootstrap<'_>) -> String {
    let cluster = ClusterConfiguration {
        api_version: KUBEADM_API,
        kind: "ClusterConfiguration",
        api_server: ApiServer { cert_s_a_ns: ["127.0.0.1", "localhost"] },
        cluster_name: b.cluster,
        control_plane_endpoint: &b.endpoint,
        kubernetes_version: KUBERNETES_VERSION,
        networking: Networking {
            dns_domain: "cluster.local",
            pod_subnet: b.pod_cidr,
            service_subnet: b.service_cidr,
        },
    };
    let init = InitConfiguration {
        api_version: KUBEADM_API,
        kind: "InitConfiguration",
        bootstrap_tokens: vec![BootstrapToken {
            token: b.token,
            ttl: "0s",
            usages: ["signing", "authentication"],
            groups: ["system:bootstrappers:kubeadm:default-node-token"],
        }],
        local_api_endpoint: endpoint(b),
        node_registration: registration(b),
    };
    format!("---\n{}---\n{}", yaml(&cluster), yaml(&init))
}

fn join_config(b: &Bootstrap<'_>, control_plane: bool) -> String {
    let join = JoinConfiguration {
        api_version: KUBEADM_API,
        kind: "JoinConfiguration",
        control_plane: control_plane.then(|| JoinControlPlane { local_api_endpoint: endpoint(b) }),
        discovery: Discovery {
            bootstrap_token: TokenDiscovery {
                api_server_endpoint: &b.endpoint,
                ca_cert_hashes: [b.ca_cert_hash],
                token: b.token,
            },
        },
        node_registration: registration(b),
    };
    format!("---\n{}", yaml(&join))
}

/// Go's `%q` for the printable ASCII our commands hold (CABPK's `commands` template).
fn go_quote(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(q, "\\x{:02x}", u32::from(c));
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// One `write_files` entry in CABPK's `files` template layout.
fn file(out: &mut String, path: &str, permissions: &str, content: &str) {
    let _ = write!(out, "-   path: {path}\n    owner: root:root\n    permissions: '{permissions}'\n    content: |\n");
    for line in content.lines() {
        let _ = writeln!(out, "      {line}");
    }
}

fn pki_files(out: &mut String, pki: &Pki) {
    for (base, pair) in [
        ("/etc/kubernetes/pki/ca", &pki.ca),
        ("/etc/kubernetes/pki/etcd/ca", &pki.etcd_ca),
        ("/etc/kubernetes/pki/front-proxy-ca", &pki.front_proxy_ca),
    ] {
        file(out, &format!("{base}.crt"), "0640", &pair.cert);
        file(out, &format!("{base}.key"), "0600", &pair.key);
    }
    file(out, "/etc/kubernetes/pki/sa.pub", "0640", &pki.sa.cert);
    file(out, "/etc/kubernetes/pki/sa.key", "0600", &pki.sa.key);
}

/// The pre-kubeadm commands CAPV's cluster templates give every machine.
pub const PRE_KUBEADM: [&str; 3] = [
    "hostnamectl set-hostname \"{{ ds.meta_data.hostname }}\"",
    "echo \"::1         ipv6-localhost ipv6-loopback localhost6 localhost6.localdomain6\" >/etc/hosts",
    "echo \"127.0.0.1   {{ ds.meta_data.hostname }} {{ local_hostname }} localhost localhost.localdomain localhost4 localhost4.localdomain4\" >>/etc/hosts",
];

/// The user-data of a node of `kind`.
pub fn render(kind: Kind, b: &Bootstrap<'_>) -> String {
    let mut out = String::from("## template: jinja\n#cloud-config\n\nwrite_files:\n");
    if kind != Kind::JoinWorker {
        pki_files(&mut out, b.pki);
    }
    let (config_path, config) = match kind {
        Kind::Init => ("/run/kubeadm/kubeadm.yaml", init_config(b)),
        Kind::JoinControlPlane => ("/run/kubeadm/kubeadm-join-config.yaml", join_config(b, true)),
        Kind::JoinWorker => ("/run/kubeadm/kubeadm-join-config.yaml", join_config(b, false)),
    };
    file(&mut out, config_path, "0640", &config);
    if kind != Kind::JoinControlPlane {
        let _ = write!(
            out,
            "-   path: /run/cluster-api/placeholder\n    owner: root:root\n    permissions: '0640'\n    content: \"{PLACEHOLDER}\"\n"
        );
    }
    out.push_str("runcmd:\n");
    for c in PRE_KUBEADM {
        let _ = writeln!(out, "  - {}", go_quote(c));
    }
    let _ = match kind {
        // controlplane_init.go quotes its command in single quotes; the joins do not quote
        Kind::Init => writeln!(
            out,
            "  - 'kubeadm init --config /run/kubeadm/kubeadm.yaml  && {SENTINEL_COMMAND}'"
        ),
        _ => writeln!(
            out,
            "  - kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml  && {SENTINEL_COMMAND}"
        ),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::super::pki;
    use super::*;
    use capstan_agent::cloudinit::cabpk::check;

    fn with_bootstrap(f: impl FnOnce(&Bootstrap<'_>)) {
        let t = tempfile::tempdir().unwrap();
        let pki = pki::generate(&t.path().join("pki")).unwrap();
        let hash = pki::ca_cert_hash(&pki.ca.cert).unwrap();
        let b = Bootstrap {
            cluster: "lab",
            endpoint: "10.77.0.10:6443".into(),
            node_ip: Ipv4Addr::new(10, 77, 0, 21),
            token: "abcdef.0123456789abcdef",
            ca_cert_hash: &hash,
            pod_cidr: "10.244.0.0/16",
            service_cidr: "10.96.0.0/12",
            pki: &pki,
        };
        f(&b);
    }

    fn kubeadm_docs(user_data: &str, path: &str) -> Vec<serde_yaml::Value> {
        let doc: serde_yaml::Value = serde_yaml::from_str(user_data).unwrap();
        let files = doc["write_files"].as_sequence().unwrap();
        let f = files.iter().find(|f| f["path"] == path).unwrap();
        serde_yaml::Deserializer::from_str(f["content"].as_str().unwrap())
            .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
            .collect()
    }

    #[test]
    fn every_kind_has_cabpks_shape() {
        with_bootstrap(|b| {
            for kind in Kind::ALL {
                let ud = render(kind, b);
                let parts = check(&ud, kind).unwrap_or_else(|e| panic!("{e}\n{ud}"));
                assert_eq!(parts.pre_kubeadm, PRE_KUBEADM, "{kind:?}");
                assert!(parts.post_kubeadm.is_empty());
                assert!(ud.len() < crate::lab::GUESTINFO_MAX, "{} bytes", ud.len());
                // a worker gets no PKI
                assert_eq!(ud.contains("PRIVATE KEY"), kind != Kind::JoinWorker, "{kind:?}");
            }
        });
    }

    #[test]
    fn the_kubeadm_documents_carry_the_cluster() {
        with_bootstrap(|b| {
            let init = kubeadm_docs(&render(Kind::Init, b), "/run/kubeadm/kubeadm.yaml");
            assert_eq!(init[0]["kind"], "ClusterConfiguration");
            assert_eq!(init[0]["apiVersion"], KUBEADM_API);
            assert_eq!(init[0]["controlPlaneEndpoint"], "10.77.0.10:6443");
            assert_eq!(init[0]["kubernetesVersion"], "v1.20.2");
            assert_eq!(init[0]["apiServer"]["certSANs"][0], "127.0.0.1");
            assert_eq!(init[1]["bootstrapTokens"][0]["token"], b.token);
            assert_eq!(init[1]["localAPIEndpoint"]["advertiseAddress"], "10.77.0.21");
            assert_eq!(init[1]["nodeRegistration"]["criSocket"], CRI_SOCKET);
            let path = "/run/kubeadm/kubeadm-join-config.yaml";
            let cp = kubeadm_docs(&render(Kind::JoinControlPlane, b), path);
            let w = kubeadm_docs(&render(Kind::JoinWorker, b), path);
            for j in [&cp[0], &w[0]] {
                let d = &j["discovery"]["bootstrapToken"];
                assert_eq!(d["caCertHashes"][0].as_str().unwrap(), b.ca_cert_hash);
                assert_eq!(d["apiServerEndpoint"], "10.77.0.10:6443");
                assert_eq!(j["nodeRegistration"]["name"], NODE_NAME);
            }
            assert_eq!(cp[0]["controlPlane"]["localAPIEndpoint"]["advertiseAddress"], "10.77.0.21");
            assert!(w[0].get("controlPlane").is_none());
        });
    }

    #[test]
    fn commands_are_quoted_as_go_does() {
        assert_eq!(go_quote("echo \"a\\b\"\n"), "\"echo \\\"a\\\\b\\\"\\n\"");
        assert_eq!(go_quote("a\u{1}"), "\"a\\x01\"");
    }
}
