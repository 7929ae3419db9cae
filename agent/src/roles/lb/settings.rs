//! Typed settings of the `lb` role, parsed from the flat string values of the node configuration.
//!
//! Every leaf value is a newtype with a [`FromStr`] implementation ("parse, don't validate");
//! [`LbSettings::from_flat`] builds the whole struct from `key → value` lookups and names the key
//! in every error; [`LbSettings::validate`] checks the rules that span keys. Secret values (the
//! VRRP secret, the API token) never appear in an error message or a `Debug` output.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::types::{parse_duration, DurationRule};
pub use crate::types::{NicName, Port};

/// Most backends the role accepts (config or API). HAProxy gets at least this many slots.
pub const MAX_BACKENDS: usize = 64;

/// One settings key of the role: its name, its default (if any), whether it holds a secret, and
/// what it means. [`KEYS`] lists them all so the schema can be built from one list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// The key, as it appears in the node configuration (`lb.vip`).
    pub key: &'static str,
    /// The default value, as a string, when the key is optional.
    pub default: Option<&'static str>,
    /// Whether the value is a secret (never logged, scrubbed from guestinfo).
    pub secret: bool,
    /// One line for the operator.
    pub help: &'static str,
}

/// Every key the `lb` role reads (besides `role = lb`).
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        key: "lb.vip",
        default: None,
        secret: false,
        help: "Virtual IP held by the active load balancer, as IPv4 CIDR (10.0.0.100/24)",
    },
    KeySpec {
        key: "lb.interface",
        // Empty, not a name: vSphere delivers every property's default in the OVF
        // environment, so a default name would count as given and pin the VIP to a NIC that
        // may not exist (udev calls QEMU's and vSphere's first NIC ens*, not eth0).
        default: Some(""),
        secret: false,
        help: "Interface that carries the VIP and the VRRP adverts (empty: the first NIC)",
    },
    KeySpec {
        key: "lb.port",
        default: Some("6443"),
        secret: false,
        help: "TCP port of the control-plane frontend on the VIP",
    },
    KeySpec {
        key: "lb.backends",
        default: Some(""),
        secret: false,
        help: "Initial backends, comma-separated IP:port (10.0.0.11:6443,10.0.0.12:6443)",
    },
    KeySpec {
        key: "lb.health",
        default: Some("https:/readyz"),
        secret: false,
        help: "Backend health check: https:/PATH (TLS, not verified), http:/PATH, or tcp",
    },
    KeySpec {
        key: "lb.health-interval",
        default: Some("2s"),
        secret: false,
        help: "Time between health checks (100ms..60s, suffix ms or s)",
    },
    KeySpec {
        key: "lb.health-rise",
        default: Some("2"),
        secret: false,
        help: "Consecutive passing checks before a backend enters rotation",
    },
    KeySpec {
        key: "lb.health-fall",
        default: Some("3"),
        secret: false,
        help: "Consecutive failing checks before a backend leaves rotation",
    },
    KeySpec {
        key: "lb.vrrp.router-id",
        default: Some("51"),
        secret: false,
        help: "VRRP virtual router id (1..255), the same on both peers, unique on the network",
    },
    KeySpec {
        key: "lb.vrrp.priority",
        default: Some("100"),
        secret: false,
        help: "VRRP priority (1..254); the higher one takes the VIP when both start",
    },
    KeySpec {
        key: "lb.vrrp.peers",
        default: Some(""),
        secret: false,
        help: "Unicast VRRP peers, comma-separated IPv4 addresses",
    },
    KeySpec {
        key: "lb.vrrp.secret",
        default: None,
        secret: true,
        help: "VRRP authentication secret, 1..8 printable ASCII characters (VRRPv2 PASS limit)",
    },
    KeySpec {
        key: "lb.api.listen",
        default: Some("0.0.0.0:9443"),
        secret: false,
        help: "Listen address of the HTTPS backend API",
    },
    KeySpec {
        key: "lb.api.token",
        default: None,
        secret: true,
        help: "Bearer token for the backend API (at least 16 characters)",
    },
    KeySpec {
        key: "lb.api.client-ca",
        default: None,
        secret: false,
        help: "PEM file of the CA that signs API client certificates (mutual TLS)",
    },
    KeySpec {
        key: "lb.api.cert",
        default: None,
        secret: false,
        help: "PEM certificate chain of the API server; generated self-signed when unset",
    },
    KeySpec {
        key: "lb.api.key",
        default: None,
        secret: false,
        help: "Path of the PEM private key of the API server (the path, not the key); generated when unset",
    },
    KeySpec {
        key: "lb.metrics.listen",
        default: Some("0.0.0.0:8404"),
        secret: false,
        help: "HAProxy health (/healthz) and Prometheus (/metrics) listener",
    },
];

/// Why a settings value was refused. Carries the key; never the value of a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A required key has no value.
    #[error("{key}: required but not set")]
    Missing {
        /// The key.
        key: &'static str,
    },
    /// A value does not parse.
    #[error("{key}: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Two or more keys together break a rule.
    #[error("{keys}: {reason}")]
    Conflict {
        /// The keys involved, comma-separated.
        keys: &'static str,
        /// The rule.
        reason: String,
    },
}

/// The error of one leaf parser, without the key (the caller adds it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

fn err<T>(reason: impl Into<String>) -> Result<T, ValueError> {
    Err(ValueError(reason.into()))
}

/// An IPv4 address with its prefix length: the VIP as it is added to the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vip {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length (1..=32).
    pub prefix: u8,
}

impl FromStr for Vip {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let Some((a, p)) = s.trim().split_once('/') else {
            return err(format!("{s:?} is not a CIDR (expected like 10.0.0.100/24)"));
        };
        let addr: Ipv4Addr = match a.parse() {
            Ok(v) => v,
            Err(_) if a.parse::<std::net::Ipv6Addr>().is_ok() => {
                return err("IPv6 VIPs are not supported (VRRPv2, IPv4 only)")
            }
            Err(_) => return err(format!("{a:?} is not an IPv4 address")),
        };
        let prefix: u8 = match p.parse() {
            Ok(v) if (1..=32).contains(&v) => v,
            _ => return err(format!("prefix {p:?} is not in 1..=32")),
        };
        if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() || addr.is_loopback()
        {
            return err(format!("{addr} cannot be a VIP"));
        }
        Ok(Vip { addr, prefix })
    }
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Checks `lb.interface` beyond the kernel's rule ([`NicName`]): keepalived.conf takes the
/// name as a bare word, where `#` and `!` start a comment and `"`, `{` and `}` are syntax, so
/// only letters, digits and `-`, `_`, `.`, `@` are accepted (every name udev or netplan gives).
fn parse_interface(s: &str) -> Result<NicName, ValueError> {
    let name: NicName =
        s.parse().map_err(|e: crate::types::ValueError| ValueError(e.to_string()))?;
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.@".contains(*c))) {
        return err(format!(
            "character {c:?} is not allowed in the VIP interface (keepalived.conf takes letters, \
             digits and - _ . @ here)"
        ));
    }
    Ok(name)
}

fn parse_port(s: &str) -> Result<Port, ValueError> {
    s.trim().parse().map_err(|e: crate::types::ValueError| ValueError(e.to_string()))
}

/// One backend: an IP address and a port. Host names are refused on purpose: HAProxy's runtime
/// API sets addresses, and a name would need a resolver in the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend(SocketAddr);

impl Backend {
    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.0
    }
}

impl FromStr for Backend {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let t = s.trim();
        let sa: SocketAddr = match t.parse() {
            Ok(v) => v,
            Err(_) => {
                return err(format!(
                    "{t:?} is not IP:port (like 10.0.0.11:6443 or [fd00::11]:6443; host names are not accepted)"
                ))
            }
        };
        if sa.port() == 0 {
            return err(format!("{t:?}: port 0 is not a backend port"));
        }
        let ip = sa.ip();
        if ip.is_unspecified()
            || ip.is_multicast()
            || matches!(ip, IpAddr::V4(v) if v.is_broadcast())
        {
            return err(format!("{t:?}: {ip} cannot be a backend address"));
        }
        if let SocketAddr::V6(v6) = sa {
            if v6.scope_id() != 0 || v6.flowinfo() != 0 {
                return err(format!("{t:?}: scoped IPv6 addresses are not accepted"));
            }
        }
        Ok(Backend(sa))
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl serde::Serialize for Backend {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Backend {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A list of distinct backends, at most [`MAX_BACKENDS`], in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendList(Vec<Backend>);

impl BackendList {
    /// Builds a list, refusing duplicates and more than [`MAX_BACKENDS`] entries.
    pub fn new(items: Vec<Backend>) -> Result<Self, ValueError> {
        if items.len() > MAX_BACKENDS {
            return err(format!("{} backends, at most {MAX_BACKENDS} are accepted", items.len()));
        }
        let mut seen = BTreeSet::new();
        for b in &items {
            if !seen.insert(*b) {
                return err(format!("{b} is listed twice"));
            }
        }
        Ok(BackendList(items))
    }
    /// The backends.
    pub fn as_slice(&self) -> &[Backend] {
        &self.0
    }
}

impl FromStr for BackendList {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let items = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Backend::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        BackendList::new(items)
    }
}

/// How HAProxy checks a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthKind {
    /// `GET <path>` over TLS (certificate not verified: the check proves liveness, the client
    /// still verifies the API server end to end); expects status 200.
    Https {
        /// Request path, e.g. `/readyz`.
        path: String,
    },
    /// `GET <path>` over plain HTTP; expects status 200.
    Http {
        /// Request path.
        path: String,
    },
    /// A TCP connect.
    Tcp,
}

impl FromStr for HealthKind {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let s = s.trim();
        if s == "tcp" {
            return Ok(HealthKind::Tcp);
        }
        let (scheme, path) = match s.split_once(':') {
            Some((sc, p)) => (sc, p),
            None => (s, "/readyz"),
        };
        if !path.starts_with('/')
            || path.len() > 256
            || !path.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' && b != b'#')
        {
            return err(format!("health path {path:?} must start with / and be printable ASCII without quotes, # or \\"));
        }
        let path = path.to_owned();
        match scheme {
            "https" => Ok(HealthKind::Https { path }),
            "http" => Ok(HealthKind::Http { path }),
            _ => err(format!("{s:?} is not https[:/PATH], http[:/PATH] or tcp")),
        }
    }
}

/// The health check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What to check.
    pub kind: HealthKind,
    /// Time between checks.
    pub interval: Duration,
    /// Passing checks before a backend enters rotation (1..=20).
    pub rise: u8,
    /// Failing checks before a backend leaves rotation (1..=20).
    pub fall: u8,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: HealthKind::Https { path: "/readyz".into() },
            interval: Duration::from_secs(2),
            rise: 2,
            fall: 3,
        }
    }
}

/// What `lb.health-interval` accepts: a bare number counts milliseconds, 100 ms..=60 s.
pub const INTERVAL_RULE: DurationRule = DurationRule {
    bare_unit: Duration::from_millis(1),
    min: Duration::from_millis(100),
    max: Duration::from_secs(60),
};

/// Parses `500ms`, `2s` or a bare number of milliseconds into a duration in 100 ms..=60 s
/// ([`INTERVAL_RULE`]).
pub fn parse_interval(s: &str) -> Result<Duration, ValueError> {
    parse_duration(s, &INTERVAL_RULE).map_err(|e| ValueError(e.to_string()))
}

/// A small number in `lo..=hi`; the error calls it `what` ("a count", "a priority").
fn parse_u8_in(s: &str, lo: u8, hi: u8, what: &str) -> Result<u8, ValueError> {
    match s.trim().parse::<u8>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => err(format!("{s:?} is not {what} in {lo}..={hi}")),
    }
}

fn parse_count(s: &str) -> Result<u8, ValueError> {
    parse_u8_in(s, 1, 20, "a count")
}

/// A VRRP virtual router id, 1..=255.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterId(pub u8);

impl FromStr for RouterId {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        parse_u8_in(s, 1, 255, "a router id").map(RouterId)
    }
}

/// A VRRP priority, 1..=254 (255 is reserved for the address owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority(pub u8);

impl FromStr for Priority {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        parse_u8_in(s, 1, 254, "a priority").map(Priority)
    }
}

/// The VRRP authentication secret. VRRPv2 `auth_type PASS` carries at most 8 bytes in clear
/// text on the wire: it stops a misconfigured neighbour, not an attacker on the segment.
#[derive(Clone, PartialEq, Eq)]
pub struct VrrpSecret(String);

impl VrrpSecret {
    /// The secret, for rendering keepalived.conf only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for VrrpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VrrpSecret(<redacted>)")
    }
}

impl FromStr for VrrpSecret {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        if s.is_empty() || s.len() > 8 {
            return err(format!(
                "must be 1..=8 characters (VRRPv2 PASS authentication carries 8 bytes), got {}",
                s.len()
            ));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' && b != b'#' && b != b'!')
        {
            return err("must be printable ASCII without spaces, quotes, \\, # or !");
        }
        Ok(VrrpSecret(s.to_owned()))
    }
}

/// The bearer token of the backend API.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// The token bytes, for the constant-time comparison only.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl FromStr for ApiToken {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        if s.len() < 16 || s.len() > 512 {
            return err(format!("must be 16..=512 characters, got {}", s.len()));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return err("must be printable ASCII without spaces");
        }
        Ok(ApiToken(s.to_owned()))
    }
}

/// VRRP pair settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpSettings {
    /// Virtual router id, the same on both peers.
    pub router_id: RouterId,
    /// This node's priority.
    pub priority: Priority,
    /// Unicast peers (the other load balancer's address).
    pub peers: Vec<Ipv4Addr>,
    /// Authentication secret.
    pub secret: VrrpSecret,
}

/// Backend API settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Bearer token, if token authentication is on.
    pub token: Option<ApiToken>,
    /// CA bundle for client certificates, if mutual TLS is on.
    pub client_ca: Option<PathBuf>,
    /// Server certificate chain (PEM); generated self-signed under the state dir when unset.
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    pub key: Option<PathBuf>,
}

/// The interface name an unset `lb.interface` stands for until [`super::live_settings`]
/// puts the first NIC's real name in its place.
pub const UNSET_INTERFACE: &str = "eth0";

/// All settings of the `lb` role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbSettings {
    /// The VIP.
    pub vip: Vip,
    /// Interface for the VIP and VRRP.
    pub interface: NicName,
    /// Whether `lb.interface` was given; when not, `interface` is the default and the role
    /// runs on the first NIC instead if no link has that name (`lb::live_settings`).
    pub interface_given: bool,
    /// Frontend port.
    pub port: Port,
    /// Initial backends (used when no persisted set exists yet).
    pub backends: BackendList,
    /// Health check.
    pub health: HealthCheck,
    /// VRRP.
    pub vrrp: VrrpSettings,
    /// Backend API.
    pub api: ApiSettings,
    /// HAProxy health and metrics listener.
    pub metrics_listen: SocketAddr,
}

fn parse_key<T: FromStr<Err = ValueError>>(key: &'static str, v: &str) -> Result<T, SettingsError> {
    v.parse().map_err(|ValueError(reason)| SettingsError::Invalid { key, reason })
}

fn parse_with<T>(
    key: &'static str,
    v: &str,
    f: impl FnOnce(&str) -> Result<T, ValueError>,
) -> Result<T, SettingsError> {
    f(v).map_err(|ValueError(reason)| SettingsError::Invalid { key, reason })
}

fn parse_socket(s: &str) -> Result<SocketAddr, ValueError> {
    match s.trim().parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(a),
        _ => err(format!("{s:?} is not IP:port")),
    }
}

fn parse_peers(s: &str) -> Result<Vec<Ipv4Addr>, ValueError> {
    let mut out = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ip: Ipv4Addr =
            p.parse().map_err(|_| ValueError(format!("{p:?} is not an IPv4 address")))?;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() {
            return err(format!("{ip} cannot be a VRRP peer"));
        }
        if out.contains(&ip) {
            return err(format!("{ip} is listed twice"));
        }
        out.push(ip);
    }
    if out.len() > 8 {
        return err("at most 8 peers are accepted");
    }
    Ok(out)
}

fn parse_path(s: &str) -> Result<PathBuf, ValueError> {
    if !s.starts_with('/') || s.contains('\0') || s.contains('\n') {
        return err(format!("{s:?} is not an absolute path"));
    }
    Ok(PathBuf::from(s))
}

/// Checks one `lb.*` value alone with its key's parser, for a check of each key before the
/// settings are built (the schema's): the message names the rule that was broken and never
/// holds the value of a secret. `None` for a key that is not the role's. Rules across keys are
/// [`LbSettings::validate`]'s.
pub fn check_key(key: &str, value: &str) -> Option<Result<(), SettingsError>> {
    let key = KEYS.iter().find(|k| k.key == key)?.key;
    let v = value;
    let r = match key {
        "lb.vip" => v.parse::<Vip>().map(drop),
        "lb.interface" => parse_interface(v).map(drop),
        "lb.port" => parse_port(v).map(drop),
        "lb.backends" => v.parse::<BackendList>().map(drop),
        "lb.health" => v.parse::<HealthKind>().map(drop),
        "lb.health-interval" => parse_interval(v).map(drop),
        "lb.health-rise" | "lb.health-fall" => parse_count(v).map(drop),
        "lb.vrrp.router-id" => v.parse::<RouterId>().map(drop),
        "lb.vrrp.priority" => v.parse::<Priority>().map(drop),
        "lb.vrrp.peers" => parse_peers(v).map(drop),
        "lb.vrrp.secret" => v.parse::<VrrpSecret>().map(drop),
        "lb.api.token" => v.parse::<ApiToken>().map(drop),
        "lb.api.listen" | "lb.metrics.listen" => parse_socket(v).map(drop),
        "lb.api.client-ca" | "lb.api.cert" | "lb.api.key" => parse_path(v).map(drop),
        _ => Ok(()),
    };
    Some(r.map_err(|ValueError(reason)| SettingsError::Invalid { key, reason }))
}

impl LbSettings {
    /// Builds the settings from flat `key → value` lookups (values as strings, the way the
    /// schema stores them), applying the defaults of [`KEYS`] for unset keys, then runs
    /// [`LbSettings::validate`]. An empty string counts as unset.
    pub fn from_flat<'a>(lookup: impl Fn(&str) -> Option<&'a str>) -> Result<Self, SettingsError> {
        let get = |key: &'static str| -> Option<&'a str> {
            match lookup(key) {
                Some(v) if !v.trim().is_empty() => Some(v),
                _ => KEYS.iter().find(|k| k.key == key).and_then(|k| k.default),
            }
        };
        let req = |key: &'static str| get(key).ok_or(SettingsError::Missing { key });
        let opt_path =
            |key: &'static str| get(key).map(|v| parse_with(key, v, parse_path)).transpose();
        let s = LbSettings {
            vip: parse_key("lb.vip", req("lb.vip")?)?,
            interface: parse_with(
                "lb.interface",
                get("lb.interface").filter(|v| !v.trim().is_empty()).unwrap_or(UNSET_INTERFACE),
                parse_interface,
            )?,
            // Empty (today's descriptor default) and `eth0` (the default of OVAs built before)
            // count as not given: an OVF environment carries every property with its default,
            // and on vSphere and QEMU the NIC is `ens192` or `ens4` (keepalived on a missing
            // eth0 stays in FAULT). live_settings keeps eth0 where such a link exists.
            interface_given: lookup("lb.interface")
                .is_some_and(|v| !v.trim().is_empty() && v.trim() != UNSET_INTERFACE),
            port: parse_with("lb.port", req("lb.port")?, parse_port)?,
            backends: parse_key("lb.backends", get("lb.backends").unwrap_or(""))?,
            health: HealthCheck {
                kind: parse_key("lb.health", req("lb.health")?)?,
                interval: parse_with(
                    "lb.health-interval",
                    req("lb.health-interval")?,
                    parse_interval,
                )?,
                rise: parse_with("lb.health-rise", req("lb.health-rise")?, parse_count)?,
                fall: parse_with("lb.health-fall", req("lb.health-fall")?, parse_count)?,
            },
            vrrp: VrrpSettings {
                router_id: parse_key("lb.vrrp.router-id", req("lb.vrrp.router-id")?)?,
                priority: parse_key("lb.vrrp.priority", req("lb.vrrp.priority")?)?,
                peers: parse_with(
                    "lb.vrrp.peers",
                    get("lb.vrrp.peers").unwrap_or(""),
                    parse_peers,
                )?,
                secret: parse_key("lb.vrrp.secret", req("lb.vrrp.secret")?)?,
            },
            api: ApiSettings {
                listen: parse_with("lb.api.listen", req("lb.api.listen")?, parse_socket)?,
                token: get("lb.api.token").map(|v| parse_key("lb.api.token", v)).transpose()?,
                client_ca: opt_path("lb.api.client-ca")?,
                cert: opt_path("lb.api.cert")?,
                key: opt_path("lb.api.key")?,
            },
            metrics_listen: parse_with(
                "lb.metrics.listen",
                req("lb.metrics.listen")?,
                parse_socket,
            )?,
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks the rules that span keys.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.api.token.is_none() && self.api.client_ca.is_none() {
            return Err(SettingsError::Conflict {
                keys: "lb.api.token, lb.api.client-ca",
                reason: "the backend API needs a bearer token or a client CA (or both)".into(),
            });
        }
        if self.api.cert.is_some() != self.api.key.is_some() {
            return Err(SettingsError::Conflict {
                keys: "lb.api.cert, lb.api.key",
                reason: "set both or neither".into(),
            });
        }
        if self.vrrp.peers.contains(&self.vip.addr) {
            return Err(SettingsError::Conflict {
                keys: "lb.vip, lb.vrrp.peers",
                reason: format!("{} is both the VIP and a VRRP peer", self.vip.addr),
            });
        }
        let front = SocketAddr::new(IpAddr::V4(self.vip.addr), self.port.get());
        if self.backends.as_slice().iter().any(|b| b.addr() == front) {
            return Err(SettingsError::Conflict {
                keys: "lb.vip, lb.port, lb.backends",
                reason: format!("backend {front} is the frontend itself"),
            });
        }
        let ports = [
            ("lb.port", self.port.get()),
            ("lb.api.listen", self.api.listen.port()),
            ("lb.metrics.listen", self.metrics_listen.port()),
        ];
        for (i, (ka, pa)) in ports.iter().enumerate() {
            for (kb, pb) in &ports[i + 1..] {
                if pa == pb {
                    return Err(SettingsError::Conflict {
                        keys: "lb.port, lb.api.listen, lb.metrics.listen",
                        reason: format!("{ka} and {kb} both use port {pa}"),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn base() -> BTreeMap<&'static str, &'static str> {
        BTreeMap::from([
            ("lb.vip", "10.0.0.100/24"),
            ("lb.vrrp.secret", "s3cret"),
            ("lb.api.token", "0123456789abcdef0123"),
        ])
    }

    fn build(m: &BTreeMap<&'static str, &'static str>) -> Result<LbSettings, SettingsError> {
        LbSettings::from_flat(|k| m.get(k).copied())
    }

    #[test]
    fn the_old_default_interface_from_an_ovf_environment_counts_as_not_given() {
        let mut m = base();
        m.insert("lb.interface", "eth0");
        let s = build(&m).unwrap();
        assert_eq!((s.interface.as_str(), s.interface_given), ("eth0", false));
        m.insert("lb.interface", "ens192");
        let s = build(&m).unwrap();
        assert_eq!((s.interface.as_str(), s.interface_given), ("ens192", true));
    }

    #[test]
    fn defaults_apply() {
        let s = build(&base()).unwrap();
        assert_eq!(s.port.get(), 6443);
        assert_eq!(s.interface.as_str(), "eth0");
        assert_eq!(s.health, HealthCheck::default());
        assert!(s.backends.as_slice().is_empty());
        assert_eq!(s.vrrp.router_id, RouterId(51));
    }

    #[test]
    fn an_empty_interface_as_vsphere_delivers_the_default_is_not_given() {
        // vSphere writes every property into the OVF environment, defaults included.
        let mut m = base();
        m.insert("lb.interface", "");
        let s = build(&m).unwrap();
        assert!(!s.interface_given);
        assert_eq!(s.interface.as_str(), UNSET_INTERFACE);
        m.insert("lb.interface", "ens192");
        let s = build(&m).unwrap();
        assert!(s.interface_given);
        assert_eq!(s.interface.as_str(), "ens192");
        let d = KEYS.iter().find(|k| k.key == "lb.interface").unwrap().default;
        assert_eq!(d, Some(""), "a named default would pin the VIP on vSphere");
    }

    #[test]
    fn errors_name_the_key_and_hide_secrets() {
        let mut m = base();
        m.insert("lb.vrrp.secret", "waytoolongsecret");
        let e = build(&m).unwrap_err().to_string();
        assert!(e.starts_with("lb.vrrp.secret:"), "{e}");
        assert!(!e.contains("waytoolong"), "{e}");
        let mut m = base();
        m.insert("lb.backends", "10.0.0.1:6443,kube.example:6443");
        let e = build(&m).unwrap_err().to_string();
        assert!(e.starts_with("lb.backends:") && e.contains("kube.example"), "{e}");
        let mut m = base();
        m.remove("lb.vip");
        assert_eq!(build(&m).unwrap_err(), SettingsError::Missing { key: "lb.vip" });
    }

    #[test]
    fn one_key_checks_name_the_rule_and_hide_secrets() {
        let e = check_key("lb.vrrp.secret", "thirteenchars").unwrap().unwrap_err().to_string();
        assert_eq!(
            e,
            "lb.vrrp.secret: must be 1..=8 characters (VRRPv2 PASS authentication carries 8 bytes), got 13"
        );
        let e = check_key("lb.vrrp.secret", "a\"b").unwrap().unwrap_err().to_string();
        assert!(e.contains("printable ASCII") && !e.contains("a\"b"), "{e}");
        let e = check_key("lb.api.token", "shortsecret").unwrap().unwrap_err().to_string();
        assert_eq!(e, "lb.api.token: must be 16..=512 characters, got 11");
        assert!(check_key("lb.vrrp.secret", "s3cret").unwrap().is_ok());
        assert!(check_key("lb.interface", "ens4").unwrap().is_ok());
        let e = check_key("lb.interface", "en#4").unwrap().unwrap_err().to_string();
        assert!(e.starts_with("lb.interface: character '#' is not allowed"), "{e}");
        let e = check_key("lb.interface", "abcdefghijklmnop").unwrap().unwrap_err().to_string();
        assert!(e.contains("longer than 15 bytes"), "{e}");
        let e = check_key("lb.port", " 0 ").unwrap().unwrap_err().to_string();
        assert_eq!(e, r#"lb.port: invalid port "0": must be 1-65535"#);
        let e = check_key("lb.health-interval", "10ms").unwrap().unwrap_err().to_string();
        assert_eq!(e, r#"lb.health-interval: "10ms" is outside 100ms..60s"#);
        assert!(check_key("hostname", "x").is_none());
        // every key has a checker that agrees with from_flat on a good value
        for k in KEYS {
            if let Some(d) = k.default.filter(|d| !d.is_empty()) {
                assert!(check_key(k.key, d).unwrap().is_ok(), "{}", k.key);
            }
        }
    }

    #[test]
    fn small_number_messages() {
        assert_eq!(parse_count("0").unwrap_err().0, r#""0" is not a count in 1..=20"#);
        assert_eq!(parse_count(" 20 ").unwrap(), 20);
        assert_eq!("0".parse::<RouterId>().unwrap_err().0, r#""0" is not a router id in 1..=255"#);
        assert_eq!("255".parse::<RouterId>().unwrap(), RouterId(255));
        assert_eq!(
            "255".parse::<Priority>().unwrap_err().0,
            r#""255" is not a priority in 1..=254"#
        );
        assert_eq!("x".parse::<Priority>().unwrap_err().0, r#""x" is not a priority in 1..=254"#);
        assert_eq!("1".parse::<Priority>().unwrap(), Priority(1));
    }

    #[test]
    fn hostile_values_are_refused() {
        for (k, v) in [
            ("lb.vip", "10.0.0.1"),
            ("lb.vip", "10.0.0.1/33"),
            ("lb.vip", "fd00::1/64"),
            ("lb.interface", "eth0\nvrrp_instance x {"),
            ("lb.interface", "a-very-long-interface"),
            ("lb.port", "0"),
            ("lb.port", "70000"),
            ("lb.backends", "10.0.0.1:6443,10.0.0.1:6443"),
            ("lb.backends", "10.0.0.1:0"),
            ("lb.backends", "0.0.0.0:6443"),
            ("lb.health", "https:/readyz\"\n  server x"),
            ("lb.health", "ftp:/x"),
            ("lb.health-interval", "10ms"),
            ("lb.health-rise", "0"),
            ("lb.vrrp.router-id", "0"),
            ("lb.vrrp.priority", "255"),
            ("lb.vrrp.peers", "10.0.0.2,10.0.0.2"),
            ("lb.vrrp.secret", "a b"),
            ("lb.api.token", "short"),
            ("lb.api.client-ca", "relative/ca.pem"),
            ("lb.api.listen", "localhost:9443"),
        ] {
            let mut m = base();
            m.insert(k, v);
            let e = build(&m).expect_err(v);
            assert!(e.to_string().starts_with(k), "{k}={v:?}: {e}");
        }
    }

    #[test]
    fn cross_field_rules() {
        let mut m = base();
        m.remove("lb.api.token");
        assert!(matches!(build(&m), Err(SettingsError::Conflict { .. })));
        let mut m = base();
        m.insert("lb.vrrp.peers", "10.0.0.100");
        assert!(matches!(build(&m), Err(SettingsError::Conflict { .. })));
        let mut m = base();
        m.insert("lb.api.listen", "0.0.0.0:6443");
        assert!(matches!(build(&m), Err(SettingsError::Conflict { .. })));
        let mut m = base();
        m.insert("lb.api.cert", "/etc/capstan/api.pem");
        assert!(matches!(build(&m), Err(SettingsError::Conflict { .. })));
    }

    #[test]
    fn parses_full_set() {
        let mut m = base();
        m.insert("lb.backends", " 10.0.0.11:6443, [fd00::12]:6443 ,");
        m.insert("lb.health", "tcp");
        m.insert("lb.health-interval", "500ms");
        m.insert("lb.vrrp.peers", "10.0.0.12");
        let s = build(&m).unwrap();
        assert_eq!(s.backends.as_slice().len(), 2);
        assert_eq!(s.health.kind, HealthKind::Tcp);
        assert_eq!(s.health.interval, Duration::from_millis(500));
        assert_eq!(s.vrrp.peers, vec![Ipv4Addr::new(10, 0, 0, 12)]);
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    proptest::proptest! {
        #[test]
        fn any_value_for_any_key_is_parsed_or_refused_by_name(key_i in 0usize..KEYS.len(), v in "\\PC{0,40}") {
            let key = KEYS[key_i].key;
            let mut m: BTreeMap<&'static str, String> =
                base().into_iter().map(|(k, v)| (k, v.to_string())).collect();
            m.insert(key, v.clone());
            match LbSettings::from_flat(|k| m.get(k).map(String::as_str)) {
                Ok(s) => proptest::prop_assert!(s.validate().is_ok()),
                Err(e) => {
                    let msg = e.to_string();
                    proptest::prop_assert!(msg.contains(key), "{key}: {msg}");
                    if KEYS[key_i].secret && v.len() > 3 {
                        proptest::prop_assert!(!msg.contains(&v), "secret echoed: {msg}");
                    }
                }
            }
        }

        #[test]
        fn rendered_backends_roundtrip(a in proptest::array::uniform4(0u8..=255), port in 1u16..) {
            let text = format!("{}.{}.{}.{}:{port}", a[0], a[1], a[2], a[3]);
            if let Ok(b) = text.parse::<Backend>() {
                proptest::prop_assert_eq!(b.to_string(), text);
            }
        }
    }
}
