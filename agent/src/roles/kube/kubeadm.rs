//! The kubeadm configuration of the vApp path: `InitConfiguration` + `ClusterConfiguration` +
//! `KubeletConfiguration` for the first control plane, `JoinConfiguration` for a worker or a
//! control-plane join, in the API version the carried kubeadm speaks.
//!
//! | kubeadm    | API version | what differs |
//! |------------|-------------|--------------|
//! | 1.15–1.21  | `v1beta2`   | `extraArgs` maps; `discovery.timeout`, `apiServer.timeoutForControlPlane`; `criSocket` a path |
//! | 1.22–1.30  | `v1beta3`   | as v1beta2, `criSocket` a `unix://` URL |
//! | 1.31 on    | `v1beta4`   | `extraArgs` lists of `{name, value}`; timeouts under `timeouts.*` |
//!
//! The Cluster API path never comes here: CABPK's file is handed to kubeadm unchanged.
//! Documents are typed structs serialised with serde; the golden files in
//! `tests/fixtures/kubeadm/` are checked key by key against kubeadm's published Go types.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::settings::{Action, KubeSettings, TaintEffect};

/// The kubeadm config API versions this writer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ApiVersion {
    /// `kubeadm.k8s.io/v1beta2` (kubeadm 1.15–1.21).
    V1beta2,
    /// `kubeadm.k8s.io/v1beta3` (kubeadm 1.22–1.30).
    V1beta3,
    /// `kubeadm.k8s.io/v1beta4` (kubeadm 1.31 on).
    V1beta4,
}

impl ApiVersion {
    /// The `apiVersion` field.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1beta2 => "kubeadm.k8s.io/v1beta2",
            ApiVersion::V1beta3 => "kubeadm.k8s.io/v1beta3",
            ApiVersion::V1beta4 => "kubeadm.k8s.io/v1beta4",
        }
    }
    /// The version alone (`v1beta3`).
    pub fn short(self) -> &'static str {
        self.as_str().trim_start_matches("kubeadm.k8s.io/")
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Kubernetes release `v<major>.<minor>.<patch>` (build suffixes kept for display only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeVersion {
    /// Major (1).
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
    /// What `kubeadm version -o short` printed, trimmed (`v1.20.2`).
    pub text: String,
}

/// Why a kubeadm version was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VersionError {
    /// The text is not `vX.Y.Z`.
    #[error("kubeadm version {0:?} is not vMAJOR.MINOR.PATCH")]
    Syntax(String),
    /// No API version of ours covers it.
    #[error(
        "kubeadm {0} is not supported: the agent writes kubeadm configuration for 1.15 and later"
    )]
    Unsupported(String),
}

impl std::str::FromStr for KubeVersion {
    type Err = VersionError;
    /// Parses `kubeadm version -o short` output: `v1.20.2`, `v1.31.0-rc.1`, `v1.29.3+k3s1`,
    /// `v1.20.2-dirty` (a first line only; surrounding whitespace ignored).
    fn from_str(s: &str) -> Result<Self, VersionError> {
        let text = s.lines().next().unwrap_or("").trim();
        let bad = || VersionError::Syntax(text.chars().take(40).collect());
        let core = text.strip_prefix('v').ok_or_else(bad)?;
        let core = core.split(['-', '+']).next().unwrap_or("");
        let mut it = core.split('.');
        let mut num = || -> Result<u32, VersionError> {
            let p = it.next().ok_or_else(bad)?;
            if p.is_empty() || p.len() > 6 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        let (major, minor, patch) = (num()?, num()?, num()?);
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(KubeVersion { major, minor, patch, text: text.to_owned() })
    }
}

/// The API version kubeadm `v` speaks (the same boundaries as Cluster API's kubeadm
/// bootstrap provider: v1beta3 for 1.22–1.30, v1beta4 from 1.31; v1beta2 below, down to 1.15).
pub fn api_version_for(v: &KubeVersion) -> Result<ApiVersion, VersionError> {
    match (v.major, v.minor) {
        (1, 15..=21) => Ok(ApiVersion::V1beta2),
        (1, 22..=30) => Ok(ApiVersion::V1beta3),
        (1, 31..) => Ok(ApiVersion::V1beta4),
        _ => Err(VersionError::Unsupported(v.text.clone())),
    }
}

/// Where the node template installs kubeadm (`capstan build node --kube-bin DIR`).
pub const KUBEADM: &str = "/usr/bin/kubeadm";

/// Why the carried kubeadm's version is unknown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CarriedError {
    /// No kubeadm: the template was built without `--kube-bin`.
    #[error("{}: no kubeadm: this node template was built without --kube-bin, so it cannot take the control-plane or worker role", path.display())]
    Missing {
        /// Where it was looked for.
        path: std::path::PathBuf,
    },
    /// It could not be run.
    #[error("running {} version -o short", path.display())]
    Run {
        /// The binary.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("{} version -o short exited with {status}: {stderr}", path.display())]
    Failed {
        /// The binary.
        path: std::path::PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The start of its stderr.
        stderr: String,
    },
    /// It printed no version we know.
    #[error(transparent)]
    Version(#[from] VersionError),
}

/// The version of the kubeadm at `path` (`kubeadm version -o short`).
pub fn carried_version(path: &std::path::Path) -> Result<KubeVersion, CarriedError> {
    if !path.exists() {
        return Err(CarriedError::Missing { path: path.to_owned() });
    }
    let out = std::process::Command::new(path)
        .args(["version", "-o", "short"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| CarriedError::Run { path: path.to_owned(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).chars().take(200).collect();
        return Err(CarriedError::Failed { path: path.to_owned(), status: out.status, stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).parse()?)
}

/// containerd's CRI socket.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// Where the vApp path writes kubeadm's configuration (CABPK's paths, so both paths leave the
/// same files behind).
pub const INIT_CONFIG_PATH: &str = "/run/kubeadm/kubeadm.yaml";
/// The join configuration's path.
pub const JOIN_CONFIG_PATH: &str = "/run/kubeadm/kubeadm-join-config.yaml";
/// The sentinel CABPK's runcmd writes after a successful init or join.
pub const SENTINEL_PATH: &str = "/run/cluster-api/bootstrap-success.complete";

/// How long kubeadm waits for the control plane to come up. kubeadm's default is 4 minutes;
/// under emulation (TCG) the first API server start takes longer: a node VM (2 vCPUs under
/// TCG) finished `kubeadm init` in 4 minutes unloaded, but with load in the guest its
/// `/healthz` was still not `ok` when 10 minutes ran out (docs/kube.md). With the
/// pod-network and Ready waits ([`super::podnet`]) this stays inside the final stage's 30 min.
const CONTROL_PLANE_TIMEOUT: &str = "20m0s";
/// How long kubeadm's discovery may take. The preflight has already reached the endpoint and
/// checked the CA pin, so kubeadm's 5-minute default would only delay a failure.
const DISCOVERY_TIMEOUT: &str = "2m0s";

/// What the node knows about itself for the documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's name (its short host name), if known; kubeadm uses the host name otherwise.
    pub name: Option<String>,
    /// The carried kubeadm's version (the cluster's `kubernetesVersion` at init).
    pub version: KubeVersion,
}

/// Extra arguments: a map up to v1beta3, a list of `{name, value}` from v1beta4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
enum Args {
    Map(BTreeMap<String, String>),
    List(Vec<Arg>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Arg {
    name: String,
    value: String,
}

impl Args {
    fn new(api: ApiVersion, pairs: Vec<(&str, String)>) -> Option<Args> {
        if pairs.is_empty() {
            return None;
        }
        let owned = pairs.into_iter().map(|(k, v)| (k.to_owned(), v));
        Some(match api {
            ApiVersion::V1beta4 => {
                Args::List(owned.map(|(name, value)| Arg { name, value }).collect())
            }
            _ => Args::Map(owned.collect()),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct TaintDoc {
    key: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    value: String,
    effect: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeRegistration {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    cri_socket: String,
    /// `None` keeps kubeadm's default (the control-plane taint on control planes).
    #[serde(skip_serializing_if = "Option::is_none")]
    taints: Option<Vec<TaintDoc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubelet_extra_args: Option<Args>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct BootstrapTokenDoc {
    token: String,
    description: &'static str,
    ttl: &'static str,
    usages: [&'static str; 2],
    groups: [&'static str; 1],
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Timeouts {
    #[serde(skip_serializing_if = "Option::is_none")]
    control_plane_component_health_check: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    discovery: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct InitConfiguration {
    api_version: &'static str,
    kind: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bootstrap_tokens: Vec<BootstrapTokenDoc>,
    node_registration: NodeRegistration,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeouts: Option<Timeouts>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Networking {
    pod_subnet: String,
    service_subnet: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiServer {
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_for_control_plane: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterConfiguration {
    api_version: &'static str,
    kind: &'static str,
    kubernetes_version: String,
    control_plane_endpoint: String,
    networking: Networking,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_server: Option<ApiServer>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct KubeletConfiguration {
    api_version: &'static str,
    kind: &'static str,
    /// Always systemd: containerd runs with `SystemdCgroup = true` in the node template.
    cgroup_driver: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct BootstrapTokenDiscovery {
    api_server_endpoint: String,
    token: String,
    ca_cert_hashes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Discovery {
    bootstrap_token: BootstrapTokenDiscovery,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinControlPlane {
    certificate_key: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinConfiguration {
    api_version: &'static str,
    kind: &'static str,
    node_registration: NodeRegistration,
    discovery: Discovery,
    #[serde(skip_serializing_if = "Option::is_none")]
    control_plane: Option<JoinControlPlane>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeouts: Option<Timeouts>,
}

/// The rendered configuration: where it goes and the kubeadm command that reads it.
#[derive(Clone, PartialEq, Eq)]
pub struct KubeadmConfig {
    /// The API version it is written in.
    pub api: ApiVersion,
    /// [`INIT_CONFIG_PATH`] or [`JOIN_CONFIG_PATH`].
    pub path: &'static str,
    /// The YAML (holds the token and certificate key: mode 0600, never logged).
    pub yaml: String,
    /// `kubeadm init|join --config PATH [...]`.
    pub argv: Vec<String>,
}

impl fmt::Debug for KubeadmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // the YAML holds secrets
        f.debug_struct("KubeadmConfig")
            .field("api", &self.api)
            .field("path", &self.path)
            .field("argv", &self.argv)
            .finish_non_exhaustive()
    }
}

fn node_registration(api: ApiVersion, s: &KubeSettings, facts: &NodeFacts) -> NodeRegistration {
    let cri_socket = match api {
        // kubeadm before 1.24 takes a bare path (and warns about URLs it cannot detect)
        ApiVersion::V1beta2 => CONTAINERD_SOCKET.to_owned(),
        _ => format!("unix://{CONTAINERD_SOCKET}"),
    };
    let mut args = Vec::new();
    if let Some(l) = s.node_labels.flag_value() {
        args.push(("node-labels", l));
    }
    let taints = s.node_taints.as_ref().map(|ts| {
        ts.iter()
            .map(|t| TaintDoc {
                key: t.key.clone(),
                value: t.value.clone(),
                effect: TaintEffect::as_str(t.effect),
            })
            .collect()
    });
    NodeRegistration {
        name: facts.name.clone(),
        cri_socket,
        taints,
        kubelet_extra_args: Args::new(api, args),
    }
}

fn yaml_doc<T: Serialize>(t: &T) -> String {
    // Serialising our own plain structs cannot fail.
    serde_yaml::to_string(t).expect("kubeadm documents serialise")
}

fn render_init(api: ApiVersion, s: &KubeSettings, facts: &NodeFacts) -> String {
    let v4 = api == ApiVersion::V1beta4;
    let init = InitConfiguration {
        api_version: api.as_str(),
        kind: "InitConfiguration",
        bootstrap_tokens: s
            .token
            .iter()
            .map(|t| BootstrapTokenDoc {
                token: t.expose().to_owned(),
                description: "capstan: the token the vApp nodes join with",
                ttl: "24h0m0s",
                usages: ["signing", "authentication"],
                groups: ["system:bootstrappers:kubeadm:default-node-token"],
            })
            .collect(),
        node_registration: node_registration(api, s, facts),
        certificate_key: s.certificate_key.as_ref().map(|k| k.expose().to_owned()),
        timeouts: v4.then_some(Timeouts {
            control_plane_component_health_check: Some(CONTROL_PLANE_TIMEOUT),
            discovery: None,
        }),
    };
    let cluster = ClusterConfiguration {
        api_version: api.as_str(),
        kind: "ClusterConfiguration",
        kubernetes_version: format!(
            "v{}.{}.{}",
            facts.version.major, facts.version.minor, facts.version.patch
        ),
        control_plane_endpoint: s.endpoint.to_string(),
        networking: Networking {
            pod_subnet: s.pod_cidr.to_string(),
            service_subnet: s.service_cidr.to_string(),
        },
        api_server: (!v4)
            .then_some(ApiServer { timeout_for_control_plane: Some(CONTROL_PLANE_TIMEOUT) }),
    };
    let kubelet = KubeletConfiguration {
        api_version: "kubelet.config.k8s.io/v1beta1",
        kind: "KubeletConfiguration",
        cgroup_driver: "systemd",
    };
    [yaml_doc(&init), yaml_doc(&cluster), yaml_doc(&kubelet)].join("---\n")
}

fn render_join(api: ApiVersion, s: &KubeSettings, facts: &NodeFacts) -> String {
    let v4 = api == ApiVersion::V1beta4;
    let join = JoinConfiguration {
        api_version: api.as_str(),
        kind: "JoinConfiguration",
        node_registration: node_registration(api, s, facts),
        discovery: Discovery {
            bootstrap_token: BootstrapTokenDiscovery {
                api_server_endpoint: s.endpoint.to_string(),
                token: s.token.as_ref().map(|t| t.expose().to_owned()).unwrap_or_default(),
                ca_cert_hashes: s.ca_cert_hash.iter().map(ToString::to_string).collect(),
            },
            timeout: (!v4).then_some(DISCOVERY_TIMEOUT),
        },
        control_plane: match s.action() {
            Action::JoinControlPlane => s
                .certificate_key
                .as_ref()
                .map(|k| JoinControlPlane { certificate_key: k.expose().to_owned() }),
            _ => None,
        },
        timeouts: v4.then_some(Timeouts {
            control_plane_component_health_check: None,
            discovery: Some(DISCOVERY_TIMEOUT),
        }),
    };
    yaml_doc(&join)
}

/// The kubeadm configuration and command for these settings, in the API version the carried
/// kubeadm (`facts.version`) speaks.
pub fn render(s: &KubeSettings, facts: &NodeFacts) -> Result<KubeadmConfig, VersionError> {
    let api = api_version_for(&facts.version)?;
    let (path, yaml, mut argv) = match s.action() {
        Action::Init => (INIT_CONFIG_PATH, render_init(api, s, facts), vec!["init"]),
        Action::JoinWorker | Action::JoinControlPlane => {
            (JOIN_CONFIG_PATH, render_join(api, s, facts), vec!["join"])
        }
    };
    argv.extend(["--config", path]);
    if s.action() == Action::Init && s.certificate_key.is_some() {
        // the config's certificateKey only names the key; the flag runs the upload
        argv.push("--upload-certs");
    }
    let argv = std::iter::once("kubeadm").chain(argv).map(str::to_owned).collect();
    Ok(KubeadmConfig { api, path, yaml, argv })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> KubeVersion {
        s.parse().unwrap()
    }

    #[test]
    fn versions_map_to_api_versions_on_the_boundaries() {
        for (text, api) in [
            ("v1.15.0", ApiVersion::V1beta2),
            ("v1.20.2", ApiVersion::V1beta2),
            ("v1.21.14", ApiVersion::V1beta2),
            ("v1.22.0", ApiVersion::V1beta3),
            ("v1.30.9", ApiVersion::V1beta3),
            ("v1.31.0", ApiVersion::V1beta4),
            ("v1.31.0-rc.1", ApiVersion::V1beta4),
            ("v1.36.4", ApiVersion::V1beta4),
        ] {
            assert_eq!(api_version_for(&v(text)).unwrap(), api, "{text}");
        }
        for text in ["v1.14.10", "v2.0.0", "v0.31.0"] {
            assert!(
                matches!(api_version_for(&v(text)), Err(VersionError::Unsupported(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn kubeadm_version_output_is_parsed() {
        let k = v("v1.20.2\n");
        assert_eq!((k.major, k.minor, k.patch, k.text.as_str()), (1, 20, 2, "v1.20.2"));
        assert_eq!(v("  v1.29.3+k3s1 ").minor, 29);
        assert_eq!(v("v1.20.2-dirty").patch, 2);
        for bad in ["", "1.20.2", "v1.20", "v1.20.2.1", "v1..2", "vx.y.z", "v1.20.2x", "v-1.2.3"] {
            assert!(matches!(bad.parse::<KubeVersion>(), Err(VersionError::Syntax(_))), "{bad:?}");
        }
    }
}
