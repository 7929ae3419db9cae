//! Typed settings of the `control-plane` and `worker` roles (`kube.*`), parsed from the flat
//! string values of the node configuration.
//!
//! Every leaf value is a newtype with a [`FromStr`] ("parse, don't validate"): the bootstrap
//! token, the CA pin, the certificate key, the endpoint, the CIDRs, the labels and taints in
//! the syntax kubelet's `--node-labels` and `--register-with-taints` accept.
//! [`KubeSettings::from_flat`] builds the whole struct and names the key in every error; the
//! values of the two secrets (`kube.token`, `kube.certificate-key`) never appear in an error
//! or a `Debug` output.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::roles::RoleId;
use crate::schema::{Applies, Kind, Setting, BASE_SETTING};
use crate::types::{Hostname, IpCidr, Port};

/// The vApp wizard category of the keys.
const CATEGORY: &str = "Kubernetes";
/// The profile that carries them (the node template).
pub const PROFILE: &str = "node";

macro_rules! key {
    ($path:expr, $label:expr, $desc:expr $(, $field:ident = $val:expr)* $(,)?) => {
        Setting {
            path: $path,
            kind: Kind::RoleText,
            label: $label,
            description: $desc,
            category: CATEGORY,
            applies: Applies::Profiles(&[PROFILE]),
            $($field: $val,)*
            ..BASE_SETTING
        }
    };
}

/// Default of `kube.pod-cidr` (flannel's and most guides' choice).
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";
/// Default of `kube.service-cidr` (kubeadm's own default).
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";

/// Every key the kube roles read (besides `role`), as schema rows of the node profile.
pub const KEYS: &[Setting] = &[
    key!("kube.endpoint", "API endpoint",
        "host[:port] of the control-plane endpoint (the load balancer's VIP); port 6443 when not given. A control plane initializes the cluster with it as controlPlaneEndpoint, other nodes join through it."),
    key!("kube.token", "Bootstrap token",
        "kubeadm bootstrap token, [a-z0-9]{6}.[a-z0-9]{16}: the token to join with, or on the first control plane the token it creates.",
        secret = true),
    key!("kube.ca-cert-hash", "CA certificate hash",
        "sha256:<64 hex> pin of the cluster CA's public key (kubeadm's --discovery-token-ca-cert-hash). Required to join; a control plane without it initializes a new cluster."),
    key!("kube.certificate-key", "Certificate key",
        "64 hex digits: the key of the control-plane certificates kubeadm uploads (init) or downloads (control-plane join).",
        secret = true),
    key!("kube.pod-cidr", "Pod network",
        "IPv4 CIDR of the cluster's pod network; each node gets a /24 of it.",
        default = Some(DEFAULT_POD_CIDR)),
    key!("kube.service-cidr", "Service network",
        "IPv4 CIDR of the cluster's service addresses (/12 to /28).",
        default = Some(DEFAULT_SERVICE_CIDR)),
    key!("kube.node-labels", "Node labels",
        "Comma-separated key=value labels the kubelet registers the node with (kubelet --node-labels rules: no kubernetes.io/k8s.io keys but kubelet's allowed ones)."),
    key!("kube.node-taints", "Node taints",
        "Comma-separated taints key[=value]:Effect (NoSchedule, PreferNoSchedule, NoExecute) the node registers with; unset keeps kubeadm's default (the control-plane taint on control planes)."),
];

/// Why a settings value was refused. Carries the key; never the value of a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A required key has no value.
    #[error("{key}: required but not set ({why})")]
    Missing {
        /// The key.
        key: &'static str,
        /// Why this role needs it.
        why: &'static str,
    },
    /// A value does not parse or is out of range.
    #[error("{key}: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong (never holds a secret).
        reason: String,
    },
}

/// A leaf value's parse error: the reason only; the caller adds the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError(pub String);

fn err<T>(s: impl Into<String>) -> Result<T, ValueError> {
    Err(ValueError(s.into()))
}

/// Shortens an echoed value so a hostile one cannot flood a log line.
fn short(s: &str) -> String {
    let mut v: String = s.chars().take(60).collect();
    if s.chars().count() > 60 {
        v.push('…');
    }
    v
}

fn all_of(s: &str, n: usize, ok: impl Fn(u8) -> bool) -> bool {
    s.len() == n && s.bytes().all(ok)
}

fn lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// A kubeadm bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`: a public id and a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken(String);

impl BootstrapToken {
    /// The whole token, for the files kubeadm reads (mode 0600).
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The public token id (the part before the dot; kubeadm logs it too).
    pub fn id(&self) -> &str {
        &self.0[..6]
    }
}

impl FromStr for BootstrapToken {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let s = s.trim();
        let ok = s
            .split_once('.')
            .is_some_and(|(id, sec)| all_of(id, 6, lower_alnum) && all_of(sec, 16, lower_alnum));
        if !ok {
            // a length is safe to say; the value is not
            return err(format!(
                "not a bootstrap token: must be [a-z0-9]{{6}}.[a-z0-9]{{16}}, 23 characters, got {} (secret, not shown)",
                s.chars().count()
            ));
        }
        Ok(BootstrapToken(s.to_owned()))
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootstrapToken({}.<secret>)", self.id())
    }
}

/// A CA pin `sha256:<64 hex>`: SHA-256 of the CA certificate's DER SubjectPublicKeyInfo, as
/// kubeadm's `--discovery-token-ca-cert-hash` takes it. Kept in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertHash([u8; 32]);

impl CaCertHash {
    /// The pin of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> CaCertHash {
        let d = ring::digest::digest(&ring::digest::SHA256, spki_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        CaCertHash(out)
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

impl FromStr for CaCertHash {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let s = s.trim();
        let Some(h) = s.strip_prefix("sha256:") else {
            return err(format!(
                "{:?} is not a CA pin: must be sha256:<64 hex digits> (the only type kubeadm supports)",
                short(s)
            ));
        };
        hex32(h).map(CaCertHash).ok_or_else(|| {
            ValueError(format!(
                "{:?} is not a CA pin: sha256: must be followed by 64 hex digits, got {}",
                short(s),
                h.len()
            ))
        })
    }
}

impl fmt::Display for CaCertHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex(&self.0))
    }
}

/// kubeadm's certificate key: 64 hex digits (an AES-256 key).
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateKey(String);

impl CertificateKey {
    /// The key, for the files kubeadm reads (mode 0600).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for CertificateKey {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let s = s.trim();
        if hex32(s).is_none() {
            return err(format!(
                "not a certificate key: must be 64 hex digits (32 bytes), got {} characters (secret, not shown)",
                s.chars().count()
            ));
        }
        Ok(CertificateKey(s.to_ascii_lowercase()))
    }
}

impl fmt::Debug for CertificateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertificateKey(<secret>)")
    }
}

/// The host of the control-plane endpoint: an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointHost {
    /// An address.
    Ip(IpAddr),
    /// A DNS name.
    Name(Hostname),
}

/// `host[:port]` of the control-plane endpoint (IPv6 in brackets); port 6443 when not given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The host.
    pub host: EndpointHost,
    /// The port.
    pub port: Port,
}

/// The API server's port when the endpoint names none.
pub const DEFAULT_API_PORT: u16 = 6443;

impl FromStr for Endpoint {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let t = s.trim();
        let bad = |why: &str| ValueError(format!("{:?} is not host[:port]: {why}", short(t)));
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
            };
            let ip: std::net::Ipv6Addr = h.parse().map_err(|_| bad("not an IPv6 address"))?;
            (EndpointHost::Ip(IpAddr::V6(ip)), port)
        } else {
            if t.matches(':').count() > 1 {
                return Err(bad("an IPv6 address must be in brackets"));
            }
            let (h, p) = match t.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (t, None),
            };
            let host = match h.parse::<IpAddr>() {
                Ok(ip) => EndpointHost::Ip(ip),
                Err(_) => EndpointHost::Name(h.parse().map_err(|_| bad("not an IP or DNS name"))?),
            };
            (host, p)
        };
        let port = match port {
            None => Port::try_from(DEFAULT_API_PORT).expect("6443 is a port"),
            Some(p) => p.parse().map_err(|_| bad("the port must be 1-65535"))?,
        };
        if let EndpointHost::Ip(ip) = &host {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(bad("not a unicast address"));
            }
        }
        Ok(Endpoint { host, port })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            EndpointHost::Ip(IpAddr::V6(a)) => write!(f, "[{a}]:{}", self.port),
            EndpointHost::Ip(a) => write!(f, "{a}:{}", self.port),
            EndpointHost::Name(n) => write!(f, "{}:{}", n.as_str(), self.port),
        }
    }
}

impl Endpoint {
    /// The host as TLS's server name wants it.
    pub fn host_str(&self) -> String {
        match &self.host {
            EndpointHost::Ip(a) => a.to_string(),
            EndpointHost::Name(n) => n.as_str().to_owned(),
        }
    }
}

/// An IPv4 network (no host bits set), for the pod and service ranges.
fn parse_network(s: &str, min_prefix: u8, max_prefix: u8) -> Result<IpCidr, ValueError> {
    let c: IpCidr =
        s.trim().parse().map_err(|e: crate::types::ValueError| ValueError(e.to_string()))?;
    if !c.is_ipv4() {
        return err(format!("{c} is not IPv4 (the pod network is IPv4 only for now)"));
    }
    if c.network() != c {
        return err(format!("{c} has host bits set; the network is {}", c.network()));
    }
    if c.prefix() < min_prefix || c.prefix() > max_prefix {
        return err(format!("{c}: prefix must be /{min_prefix} to /{max_prefix}"));
    }
    Ok(c)
}

/// The pod network: a node gets a /24 of it, so it is /8 to /23.
pub fn parse_pod_cidr(s: &str) -> Result<IpCidr, ValueError> {
    parse_network(s, 8, 23)
}

/// The service network: kube-apiserver refuses more than 20 host bits (/12).
pub fn parse_service_cidr(s: &str) -> Result<IpCidr, ValueError> {
    parse_network(s, 12, 28)
}

/// Whether two networks share an address.
pub fn overlaps(a: &IpCidr, b: &IpCidr) -> bool {
    a.contains(b.network().addr()) || b.contains(a.network().addr())
}

/// A name part of a label or taint key: 1-63 of `[A-Za-z0-9-_.]`, alphanumeric at both ends
/// (Kubernetes' `IsQualifiedName`).
fn check_name_part(n: &str, what: &str) -> Result<(), ValueError> {
    let b = n.as_bytes();
    let inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(inner);
    if ok {
        Ok(())
    } else {
        err(format!(
            "{what} {:?}: must be 1-63 of A-Z a-z 0-9 - _ ., alphanumeric at both ends",
            short(n)
        ))
    }
}

/// A DNS-1123 subdomain: lower-case labels joined by dots, at most 253 characters.
fn check_prefix(p: &str) -> Result<(), ValueError> {
    let ok = !p.is_empty()
        && p.len() <= 253
        && p.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        });
    if ok {
        Ok(())
    } else {
        err(format!("key prefix {:?} is not a lower-case DNS subdomain", short(p)))
    }
}

/// A qualified key `[prefix/]name`.
fn check_key(k: &str) -> Result<(), ValueError> {
    match k.split_once('/') {
        Some((p, n)) => {
            check_prefix(p)?;
            check_name_part(n, "key name")
        }
        None => check_name_part(k, "key"),
    }
}

/// A label value: empty, or a name part.
fn check_value(v: &str) -> Result<(), ValueError> {
    if v.is_empty() {
        Ok(())
    } else {
        check_name_part(v, "value")
    }
}

/// The kubernetes.io/k8s.io label keys kubelet may set on its own node
/// (`kubeletapis.KubeletLabels` and the two prefixes `kubelet.kubernetes.io/`,
/// `node.kubernetes.io/`); kubelet refuses any other key in those namespaces.
const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/instance-type",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.kubernetes.io/zone",
    "failure-domain.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "node.kubernetes.io/instance-type",
];

fn kubelet_may_set(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else { return true };
    let reserved = ["kubernetes.io", "k8s.io"]
        .iter()
        .any(|ns| prefix == *ns || prefix.ends_with(&format!(".{ns}")));
    !reserved
        || KUBELET_LABELS.contains(&key)
        || ["kubelet.kubernetes.io", "node.kubernetes.io"].contains(&prefix)
}

/// Node labels `key=value,...` as kubelet's `--node-labels` accepts them, in the given order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeLabels(Vec<(String, String)>);

impl NodeLabels {
    /// The labels.
    pub fn as_slice(&self) -> &[(String, String)] {
        &self.0
    }
    /// The `--node-labels` value (`a=b,c=d`), or `None` for none.
    pub fn flag_value(&self) -> Option<String> {
        (!self.0.is_empty())
            .then(|| self.0.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
    }
}

impl FromStr for NodeLabels {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let Some((k, v)) = item.split_once('=') else {
                return err(format!("{:?} is not key=value", short(item)));
            };
            check_key(k)?;
            check_value(v)?;
            if !kubelet_may_set(k) {
                return err(format!(
                    "kubelet refuses to set {k:?} on its own node (kubernetes.io and k8s.io keys are reserved; node-role labels are set by an admin, not the kubelet)"
                ));
            }
            if out.iter().any(|(o, _)| o == k) {
                return err(format!("label {k:?} is given twice"));
            }
            out.push((k.to_owned(), v.to_owned()));
        }
        Ok(NodeLabels(out))
    }
}

/// A taint's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaintEffect {
    /// `NoSchedule`.
    NoSchedule,
    /// `PreferNoSchedule`.
    PreferNoSchedule,
    /// `NoExecute`.
    NoExecute,
}

impl TaintEffect {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

/// One taint `key[=value]:Effect` (kubelet's `--register-with-taints` syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    /// The key.
    pub key: String,
    /// The value (may be empty).
    pub value: String,
    /// The effect.
    pub effect: TaintEffect,
}

impl FromStr for Taint {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let Some((kv, effect)) = s.rsplit_once(':') else {
            return err(format!("{:?} is not key[=value]:Effect", short(s)));
        };
        let effect = match effect {
            "NoSchedule" => TaintEffect::NoSchedule,
            "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
            "NoExecute" => TaintEffect::NoExecute,
            e => {
                return err(format!(
                    "taint effect {:?} is not NoSchedule, PreferNoSchedule or NoExecute",
                    short(e)
                ))
            }
        };
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        check_key(k)?;
        check_value(v)?;
        Ok(Taint { key: k.to_owned(), value: v.to_owned(), effect })
    }
}

/// The taints, in order; no two with the same key and effect (the API refuses that).
pub fn parse_taints(s: &str) -> Result<Vec<Taint>, ValueError> {
    let mut out: Vec<Taint> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let t: Taint = item.parse()?;
        if out.iter().any(|o| o.key == t.key && o.effect == t.effect) {
            return err(format!("taint {}:{} is given twice", t.key, t.effect.as_str()));
        }
        out.push(t);
    }
    Ok(out)
}

/// What kubeadm does on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `kubeadm init`: the first control plane (no CA pin to join with).
    Init,
    /// `kubeadm join` as a worker.
    JoinWorker,
    /// `kubeadm join --control-plane`.
    JoinControlPlane,
}

/// The typed settings of a kube role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// `control-plane` or `worker`.
    pub role: RoleId,
    /// `kube.endpoint`.
    pub endpoint: Endpoint,
    /// `kube.token` (required to join).
    pub token: Option<BootstrapToken>,
    /// `kube.ca-cert-hash` (required to join).
    pub ca_cert_hash: Option<CaCertHash>,
    /// `kube.certificate-key` (required for a control-plane join).
    pub certificate_key: Option<CertificateKey>,
    /// `kube.pod-cidr`.
    pub pod_cidr: IpCidr,
    /// `kube.service-cidr`.
    pub service_cidr: IpCidr,
    /// `kube.node-labels`.
    pub node_labels: NodeLabels,
    /// `kube.node-taints`; `None` keeps kubeadm's default.
    pub node_taints: Option<Vec<Taint>>,
}

fn parse_with<T>(
    key: &'static str,
    v: &str,
    f: impl FnOnce(&str) -> Result<T, ValueError>,
) -> Result<T, SettingsError> {
    f(v).map_err(|ValueError(reason)| SettingsError::Invalid { key, reason })
}

fn parse_key<T: FromStr<Err = ValueError>>(key: &'static str, v: &str) -> Result<T, SettingsError> {
    parse_with(key, v, str::parse)
}

impl KubeSettings {
    /// What kubeadm does: a control plane without a CA pin initializes the cluster.
    pub fn action(&self) -> Action {
        match (self.role, &self.ca_cert_hash) {
            (RoleId::ControlPlane, None) => Action::Init,
            (RoleId::ControlPlane, Some(_)) => Action::JoinControlPlane,
            _ => Action::JoinWorker,
        }
    }

    /// Builds the settings of `role` from flat `key → value` lookups (an empty string counts as
    /// unset), with the defaults of [`KEYS`], and checks the rules across keys.
    pub fn from_flat<'a>(
        role: RoleId,
        lookup: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Self, SettingsError> {
        let get = |key: &'static str| -> Option<&'a str> {
            match lookup(key) {
                Some(v) if !v.trim().is_empty() => Some(v),
                _ => KEYS.iter().find(|k| k.path == key).and_then(|k| k.default),
            }
        };
        let endpoint = get("kube.endpoint").ok_or(SettingsError::Missing {
            key: "kube.endpoint",
            why: "every kube node needs the control-plane endpoint",
        })?;
        let s = KubeSettings {
            role,
            endpoint: parse_key("kube.endpoint", endpoint)?,
            token: get("kube.token").map(|v| parse_key("kube.token", v)).transpose()?,
            ca_cert_hash: get("kube.ca-cert-hash")
                .map(|v| parse_key("kube.ca-cert-hash", v))
                .transpose()?,
            certificate_key: get("kube.certificate-key")
                .map(|v| parse_key("kube.certificate-key", v))
                .transpose()?,
            pod_cidr: parse_with(
                "kube.pod-cidr",
                get("kube.pod-cidr").unwrap_or(DEFAULT_POD_CIDR),
                parse_pod_cidr,
            )?,
            service_cidr: parse_with(
                "kube.service-cidr",
                get("kube.service-cidr").unwrap_or(DEFAULT_SERVICE_CIDR),
                parse_service_cidr,
            )?,
            node_labels: parse_key("kube.node-labels", get("kube.node-labels").unwrap_or(""))?,
            node_taints: get("kube.node-taints")
                .map(|v| parse_with("kube.node-taints", v, parse_taints))
                .transpose()?,
        };
        s.validate()?;
        Ok(s)
    }

    /// The rules across keys.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if overlaps(&self.pod_cidr, &self.service_cidr) {
            return Err(SettingsError::Invalid {
                key: "kube.pod-cidr",
                reason: format!(
                    "{} overlaps kube.service-cidr {}",
                    self.pod_cidr, self.service_cidr
                ),
            });
        }
        let join = self.action() != Action::Init;
        if join && self.token.is_none() {
            return Err(SettingsError::Missing {
                key: "kube.token",
                why: "joining a cluster needs a bootstrap token",
            });
        }
        if join && self.ca_cert_hash.is_none() {
            return Err(SettingsError::Missing {
                key: "kube.ca-cert-hash",
                why: "a worker joins only a cluster whose CA it can pin",
            });
        }
        if self.action() == Action::JoinControlPlane && self.certificate_key.is_none() {
            return Err(SettingsError::Missing {
                key: "kube.certificate-key",
                why: "a control plane joining a cluster fetches the cluster's certificates with it",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const TOKEN: &str = "abcdef.0123456789abcdef";
    const HASH: &str = "sha256:7c5d8ca3bbcd0bb2bd9ae4d4ec5cf8b2d5d15e5c4f6b5c5a3e0c1e9f4b1a2d3e";
    const CKEY: &str = "e6a2eb8581237ab72a4f494f30285ec12a9694d750b9785706a83bfcbbbd2204";

    fn worker() -> BTreeMap<&'static str, &'static str> {
        BTreeMap::from([
            ("kube.endpoint", "10.0.0.100:6443"),
            ("kube.token", TOKEN),
            ("kube.ca-cert-hash", HASH),
        ])
    }

    fn build(
        role: RoleId,
        m: &BTreeMap<&'static str, &'static str>,
    ) -> Result<KubeSettings, SettingsError> {
        KubeSettings::from_flat(role, |k| m.get(k).copied())
    }

    #[test]
    fn a_worker_joins_with_defaults() {
        let s = build(RoleId::Worker, &worker()).unwrap();
        assert_eq!(s.action(), Action::JoinWorker);
        assert_eq!(s.endpoint.to_string(), "10.0.0.100:6443");
        assert_eq!(s.pod_cidr.to_string(), DEFAULT_POD_CIDR);
        assert_eq!(s.service_cidr.to_string(), DEFAULT_SERVICE_CIDR);
        assert_eq!(s.ca_cert_hash.as_ref().unwrap().to_string(), HASH);
        assert!(s.node_taints.is_none());
        let dbg = format!("{s:?}");
        assert!(dbg.contains("abcdef.<secret>") && !dbg.contains("0123456789abcdef"), "{dbg}");
    }

    #[test]
    fn a_control_plane_inits_without_a_pin_and_joins_with_one() {
        let m = BTreeMap::from([("kube.endpoint", "cp.example.com")]);
        let s = build(RoleId::ControlPlane, &m).unwrap();
        assert_eq!(s.action(), Action::Init);
        assert_eq!(s.endpoint.to_string(), "cp.example.com:6443");
        let e = build(RoleId::ControlPlane, &worker()).unwrap_err();
        assert!(matches!(e, SettingsError::Missing { key: "kube.certificate-key", .. }), "{e}");
        let mut m = worker();
        m.insert("kube.certificate-key", CKEY);
        let s = build(RoleId::ControlPlane, &m).unwrap();
        assert_eq!(s.action(), Action::JoinControlPlane);
        assert!(!format!("{s:?}").contains(CKEY));
    }

    #[test]
    fn a_worker_needs_token_and_pin() {
        let mut m = worker();
        m.remove("kube.ca-cert-hash");
        let e = build(RoleId::Worker, &m).unwrap_err();
        assert!(matches!(e, SettingsError::Missing { key: "kube.ca-cert-hash", .. }), "{e}");
        let mut m = worker();
        m.remove("kube.token");
        let e = build(RoleId::Worker, &m).unwrap_err();
        assert!(e.to_string().starts_with("kube.token: required but not set"), "{e}");
        let e = build(RoleId::Worker, &BTreeMap::new()).unwrap_err();
        assert!(matches!(e, SettingsError::Missing { key: "kube.endpoint", .. }), "{e}");
    }

    #[test]
    fn secrets_are_refused_by_rule_not_value() {
        for (k, v) in [
            ("kube.token", "ABCDEF.0123456789abcdef"),
            ("kube.token", "abcdef0123456789abcdef"),
            ("kube.token", "abcdef.0123456789abcde"),
            ("kube.token", "abcdef.0123456789abcdef.x"),
            ("kube.token", "abcde-.0123456789abcdef"),
            (
                "kube.certificate-key",
                "e6a2eb8581237ab72a4f494f30285ec12a9694d750b9785706a83bfcbbbd220",
            ),
            (
                "kube.certificate-key",
                "g6a2eb8581237ab72a4f494f30285ec12a9694d750b9785706a83bfcbbbd2204",
            ),
        ] {
            let mut m = worker();
            m.insert(k, v);
            let e = build(RoleId::Worker, &m).expect_err(v).to_string();
            assert!(e.starts_with(k), "{k}={v:?}: {e}");
            assert!(e.contains("secret, not shown"), "{e}");
            assert!(!e.contains(v.trim()), "secret echoed: {e}");
        }
        // a token's whitespace around it is trimmed, not refused
        assert!(" abcdef.0123456789abcdef ".parse::<BootstrapToken>().is_ok());
    }

    #[test]
    fn hostile_values_name_their_key() {
        for (k, v) in [
            ("kube.endpoint", "10.0.0.1:0"),
            ("kube.endpoint", "10.0.0.1:65536"),
            ("kube.endpoint", "fd00::1:6443"),
            ("kube.endpoint", "[fd00::1"),
            ("kube.endpoint", "bad_host!:6443"),
            ("kube.endpoint", "0.0.0.0:6443"),
            ("kube.endpoint", "cp\n.example:6443"),
            (
                "kube.ca-cert-hash",
                "7c5d8ca3bbcd0bb2bd9ae4d4ec5cf8b2d5d15e5c4f6b5c5a3e0c1e9f4b1a2d3e",
            ),
            ("kube.ca-cert-hash", "sha1:7c5d8ca3bbcd0bb2bd9ae4d4ec5cf8b2d5d15e5c"),
            ("kube.ca-cert-hash", "sha256:7c5d"),
            ("kube.pod-cidr", "10.244.1.0/16"),
            ("kube.pod-cidr", "10.244.0.0/24"),
            ("kube.pod-cidr", "fd00::/48"),
            ("kube.pod-cidr", "10.96.0.0/16"),
            ("kube.service-cidr", "10.0.0.0/8"),
            ("kube.service-cidr", "10.96.0.0"),
            ("kube.node-labels", "role=worker,role=db"),
            ("kube.node-labels", "node-role.kubernetes.io/worker="),
            ("kube.node-labels", "example.com/-x=y"),
            ("kube.node-labels", "a=b c"),
            ("kube.node-labels", "Example.com/x=y"),
            ("kube.node-labels", "novalue"),
            ("kube.node-taints", "dedicated=db"),
            ("kube.node-taints", "dedicated=db:NoSchedul"),
            ("kube.node-taints", "a:NoSchedule,a=b:NoSchedule"),
            ("kube.node-taints", "=x:NoSchedule"),
        ] {
            let mut m = worker();
            m.insert(k, v);
            let e = build(RoleId::Worker, &m).expect_err(v).to_string();
            assert!(e.starts_with(k), "{k}={v:?}: {e}");
        }
    }

    #[test]
    fn labels_and_taints_in_kubelet_syntax() {
        let l: NodeLabels =
            "capstan.dev/pool=blue, node.kubernetes.io/exclude-from-external-load-balancers=, topology.kubernetes.io/zone=z1"
                .parse()
                .unwrap();
        assert_eq!(l.as_slice().len(), 3);
        assert_eq!(
            l.flag_value().unwrap(),
            "capstan.dev/pool=blue,node.kubernetes.io/exclude-from-external-load-balancers=,topology.kubernetes.io/zone=z1"
        );
        assert_eq!("".parse::<NodeLabels>().unwrap().flag_value(), None);
        let t =
            parse_taints("dedicated=db:NoSchedule,gpu:PreferNoSchedule, a=b:NoExecute").unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!((t[1].key.as_str(), t[1].value.as_str()), ("gpu", ""));
        assert_eq!(t[2].effect, TaintEffect::NoExecute);
        // same key, different effect: allowed
        assert_eq!(parse_taints("a:NoSchedule,a:NoExecute").unwrap().len(), 2);
    }

    #[test]
    fn endpoints_print_as_kubeadm_wants_them() {
        for (i, o) in [
            ("10.0.0.1", "10.0.0.1:6443"),
            ("[fd00::1]:8443", "[fd00::1]:8443"),
            ("[fd00::1]", "[fd00::1]:6443"),
            (" api.example.com:443 ", "api.example.com:443"),
        ] {
            assert_eq!(i.parse::<Endpoint>().unwrap().to_string(), o);
        }
    }

    #[test]
    fn pins_are_case_insensitive_and_print_lower() {
        let h: CaCertHash = HASH.to_ascii_uppercase().replace("SHA256", "sha256").parse().unwrap();
        assert_eq!(h.to_string(), HASH);
        // the pin of the empty SPKI is SHA-256 of nothing
        assert_eq!(
            CaCertHash::of_spki(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn every_key_is_a_node_setting_with_a_label() {
        for k in KEYS {
            assert!(k.path.starts_with("kube.") && !k.label.is_empty(), "{}", k.path);
            assert!(k.applies.includes("node") && !k.applies.includes("lb"), "{}", k.path);
        }
        let secret: Vec<_> = KEYS.iter().filter(|k| k.secret).map(|k| k.path).collect();
        assert_eq!(secret, ["kube.token", "kube.certificate-key"]);
    }

    proptest::proptest! {
        #[test]
        fn any_value_for_any_key_is_parsed_or_refused_by_name(i in 0usize..KEYS.len(), v in "\\PC{0,40}") {
            let key = KEYS[i].path;
            let mut m: BTreeMap<&'static str, String> =
                worker().into_iter().map(|(k, v)| (k, v.to_string())).collect();
            m.insert(key, v.clone());
            match KubeSettings::from_flat(RoleId::Worker, |k| m.get(k).map(String::as_str)) {
                Ok(s) => proptest::prop_assert!(s.validate().is_ok()),
                Err(e) => {
                    let msg = e.to_string();
                    proptest::prop_assert!(msg.contains("kube."), "{key}: {msg}");
                    if KEYS[i].secret && v.trim().len() > 3 {
                        proptest::prop_assert!(!msg.contains(v.trim()), "secret echoed: {msg}");
                    }
                }
            }
        }
    }
}
