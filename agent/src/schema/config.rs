//! The typed configuration, built from the merged flat values by the schema table.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use super::{lookup, Kind, NIC_SLOTS, VERSION};
use crate::roles::{ConfigureError, RoleId, RoleSettings};
use crate::types::{DomainName, Fqdn, Hostname, InstanceId, IpCidr, MacAddr, NicName};

/// The source a value came from, as `status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Source {
    /// The baked defaults, `/etc/capstan/agent.toml`.
    Defaults,
    /// The OVF environment.
    OvfEnv,
    /// cloud-init's metadata (`guestinfo.metadata`).
    Metadata,
    /// A direct key over the directory transport (`--guestinfo-dir`).
    GuestinfoDir,
    /// A direct key over QEMU's fw_cfg.
    #[serde(rename = "fw_cfg")]
    FwCfg,
    /// A direct key over the VMware backdoor.
    VmwareBackdoor,
    /// A direct key over another transport.
    Guestinfo,
    /// The operator's override file.
    Override,
    /// A secret kept at an earlier boot of the instance.
    Persisted,
    /// The SMBIOS product UUID.
    Smbios,
    /// Nothing (the instance-id of last resort).
    None,
    /// Several keys together (a role's cross-key rule).
    Merged,
    /// A file given to `config check`.
    File,
    /// A NoCloud seed (`meta-data`, the SMBIOS serial).
    #[serde(rename = "nocloud")]
    NoCloud,
    /// An OpenStack config drive (`openstack/latest/meta_data.json`).
    #[serde(rename = "configdrive")]
    ConfigDrive,
    /// The EC2 instance metadata service.
    Ec2,
}

impl Source {
    /// The name `status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Defaults => "defaults",
            Source::OvfEnv => "ovf-env",
            Source::Metadata => "metadata",
            Source::GuestinfoDir => "guestinfo-dir",
            Source::FwCfg => "fw_cfg",
            Source::VmwareBackdoor => "vmware-backdoor",
            Source::Guestinfo => "guestinfo",
            Source::Override => "override",
            Source::Persisted => "persisted",
            Source::Smbios => "smbios",
            Source::None => "none",
            Source::Merged => "merged",
            Source::File => "file",
            Source::NoCloud => "nocloud",
            Source::ConfigDrive => "configdrive",
            Source::Ec2 => "ec2",
        }
    }

    /// The source of a direct key read over the guestinfo transport named `transport`
    /// ([`crate::guestinfo::Guestinfo::transport`]).
    pub fn of_transport(transport: &str) -> Source {
        match transport {
            "guestinfo-dir" => Source::GuestinfoDir,
            "fw_cfg" => Source::FwCfg,
            "vmware-backdoor" => Source::VmwareBackdoor,
            _ => Source::Guestinfo,
        }
    }

    /// Whether a cloud-config value overrides a value from this source: it is source 3 of
    /// the precedence, above the baked defaults, the OVF environment and the metadata (a
    /// cloud provider's metadata included).
    pub fn below_cloud_config(self) -> bool {
        matches!(
            self,
            Source::Defaults
                | Source::OvfEnv
                | Source::Metadata
                | Source::NoCloud
                | Source::ConfigDrive
                | Source::Ec2
        )
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Source {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Where a value came from: the source and the key inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Origin {
    /// The source.
    pub source: Source,
    /// The key as that source spells it (`guestinfo.capstan.hostname`, `local-hostname`).
    pub key: String,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} key {}", self.source, self.key)
    }
}

/// One flat value with its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatValue {
    /// The value as text.
    pub value: String,
    /// Where it came from.
    pub origin: Origin,
}

/// The merged flat values, by schema path.
pub type Flat = BTreeMap<String, FlatValue>;

/// Tests: a flat set of `KEY=VALUE` pairs from `source`, each keyed `capstan.KEY` there.
#[cfg(test)]
pub(crate) fn flat_from(source: Source, pairs: &[(&str, &str)]) -> Flat {
    pairs
        .iter()
        .map(|(k, v)| {
            let origin = Origin { source, key: format!("capstan.{k}") };
            ((*k).to_owned(), FlatValue { value: (*v).to_owned(), origin })
        })
        .collect()
}

/// A value that was refused, naming the source and key. Never carries a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{origin}: {reason}")]
pub struct ConfigError {
    /// The schema path (`net.nic0.address`), or the source key when it is not in the schema.
    pub path: String,
    /// Where the value came from.
    pub origin: Origin,
    /// What is wrong.
    pub reason: String,
}

/// Where the network configuration comes from; never a mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkSource {
    /// Nothing configures the network.
    None,
    /// The per-NIC `net.*` keys ([`Config::nics`]).
    Keys,
    /// The netplan v2 `network` of the cloud-init metadata.
    Metadata,
    /// A `net.*` value was refused: write no network file at all.
    Invalid,
    /// A NoCloud seed's `network-config` (or its `meta-data` `network`).
    #[serde(rename = "nocloud")]
    NoCloud,
    /// A config drive's `network_data.json`.
    #[serde(rename = "configdrive")]
    ConfigDrive,
    /// The NICs the EC2 metadata lists.
    Ec2,
}

impl NetworkSource {
    /// The name `status` shows (`none`, `keys`, `metadata`, `invalid`, or a provider's name).
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkSource::None => "none",
            NetworkSource::Keys => "keys",
            NetworkSource::Metadata => "metadata",
            NetworkSource::Invalid => "invalid",
            NetworkSource::NoCloud => "nocloud",
            NetworkSource::ConfigDrive => "configdrive",
            NetworkSource::Ec2 => "ec2",
        }
    }
}

impl std::fmt::Display for NetworkSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One NIC slot's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nic {
    /// Match by this MAC.
    pub mac: Option<MacAddr>,
    /// Rename to this.
    pub name: Option<NicName>,
    /// DHCPv4.
    pub dhcp4: bool,
    /// DHCPv6.
    pub dhcp6: bool,
    /// Static addresses.
    pub addresses: Vec<IpCidr>,
    /// Gateways.
    pub gateways: Vec<IpAddr>,
    /// MTU.
    pub mtu: Option<u16>,
}

/// Resolver settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Dns {
    /// Name servers.
    pub servers: Vec<IpAddr>,
    /// Search domains.
    pub search: Vec<DomainName>,
}

/// The login user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Login name.
    pub name: String,
    /// crypt(3) hash, if any. Secret: not serialized.
    #[serde(skip)]
    pub password_hash: Option<String>,
}

/// Commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Commands {
    /// `commands.runcmd`: run once per instance with `sh -c`.
    pub runcmd: Option<String>,
}

/// Heartbeat settings (`heartbeat.*`). PEM values are canonical PEM text
/// ([`crate::tls::normalize_pem`]), whatever form the source gave. Valid together only when
/// [`Config::errors_under`]`("heartbeat.")` is empty: the daemon starts nothing otherwise.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Heartbeat {
    /// Hub URL; `None` disables heartbeats.
    pub url: Option<String>,
    /// Interval.
    pub interval: Duration,
    /// The hub's CA certificate(s), PEM.
    pub ca: Option<String>,
    /// The node's client certificate (chain), PEM.
    pub client_cert: Option<String>,
    /// Its private key, PEM. Secret: not serialized.
    #[serde(skip)]
    pub client_key: Option<String>,
    /// The per-node bearer token. Secret: not serialized.
    #[serde(skip)]
    pub token: Option<String>,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<secret>");
        f.debug_struct("Heartbeat")
            .field("url", &self.url)
            .field("interval", &self.interval)
            .field("ca", &self.ca.as_ref().map(|_| "<pem>"))
            .field("client_cert", &self.client_cert.as_ref().map(|_| "<pem>"))
            .field("client_key", &redacted(&self.client_key))
            .field("token", &redacted(&self.token))
            .finish()
    }
}

/// The typed node configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Schema version.
    pub version: u32,
    /// Host name.
    pub hostname: Option<Hostname>,
    /// FQDN.
    pub fqdn: Option<Fqdn>,
    /// Instance id, when a source set it (the agent falls back to the SMBIOS UUID).
    pub instance_id: Option<InstanceId>,
    /// Where the network comes from.
    pub network_source: NetworkSource,
    /// NIC slots set by any source (only meaningful when `network_source` is `Keys`).
    pub nics: BTreeMap<String, Nic>,
    /// DNS.
    pub dns: Dns,
    /// NTP servers.
    pub ntp_servers: Vec<String>,
    /// Login user.
    pub user: Option<User>,
    /// SSH public keys.
    pub ssh_authorized_keys: Vec<String>,
    /// Commands.
    pub commands: Commands,
    /// `user-data` key (a cloud-config), already base64-decoded if it was.
    #[serde(skip)]
    pub user_data: Option<String>,
    /// Role.
    pub role: RoleId,
    /// The role's typed settings ([`crate::roles::Role::configure`]) when they are valid.
    #[serde(skip)]
    pub role_settings: Option<RoleSettings>,
    /// Heartbeats.
    pub heartbeat: Heartbeat,
    /// Every value refused while building this config.
    pub errors: Vec<ConfigError>,
    /// Why the role's settings are incomplete (a required key unset), when they are: the role
    /// is not started, and first boot records it as skipped rather than failed.
    pub role_unconfigured: Option<String>,
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("{:?} is not a boolean (true/false)", short(s))),
    }
}

fn short(s: &str) -> String {
    let mut v: String = s.chars().take(60).collect();
    if s.chars().count() > 60 {
        v.push('…');
    }
    v
}

fn list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

/// The schema's duration rule: a bare number counts seconds; 100 ms to 24 h.
pub const DURATION_RULE: crate::types::DurationRule = crate::types::DurationRule {
    bare_unit: Duration::from_secs(1),
    min: Duration::from_millis(100),
    max: Duration::from_secs(86_400),
};

/// Parses a duration setting: `10`, `10s`, `500ms`, `5m`, `1h` (the one parser,
/// [`crate::types::parse_duration`], with the schema's rule).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::types::parse_duration(s, &DURATION_RULE).map_err(|e| e.to_string())
}

/// Splits SSH keys given one per line or comma-separated (a comma starts a new key only
/// before a key type, since options like `from="a,b"` contain commas).
pub fn split_ssh_keys(s: &str) -> Result<Vec<String>, String> {
    let mut keys: Vec<String> = Vec::new();
    for line in s.lines() {
        let mut cur = String::new();
        for piece in line.split(',') {
            let starts_key = is_key_type(piece.split_whitespace().next());
            if starts_key && !cur.trim().is_empty() {
                keys.push(std::mem::take(&mut cur).trim().to_owned());
            } else if !cur.is_empty() {
                cur.push(',');
            }
            cur.push_str(piece);
        }
        if !cur.trim().is_empty() {
            keys.push(cur.trim().to_owned());
        }
    }
    for k in &keys {
        let mut f = k.split_whitespace();
        let (t, b) = (f.next(), f.next());
        let ok = is_key_type(t)
            && b.is_some_and(|b| {
                b.len() >= 16
                    && b.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='))
            });
        if !ok {
            return Err(format!(
                "{:?} is not an OpenSSH public key (type and base64 key)",
                short(k)
            ));
        }
    }
    Ok(keys)
}

fn is_key_type(t: Option<&str>) -> bool {
    t.is_some_and(|t| t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-"))
}

fn check_password_hash(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split('$').collect();
    let ok = s.starts_with('$')
        && parts.len() >= 4
        && !s.bytes().any(|b| b.is_ascii_whitespace() || b == b':' || b.is_ascii_control());
    if ok {
        Ok(())
    } else {
        // Never echo the value: it is a secret.
        Err("not a crypt(3) hash like $6$salt$hash (value not shown)".into())
    }
}

fn check_user_name(s: &str) -> Result<(), String> {
    let mut b = s.bytes();
    let ok = b.next().is_some_and(|c| c.is_ascii_lowercase() || c == b'_')
        && s.len() <= 32
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a user name (lower-case letters, digits, '-', '_'; at most 32)",
            short(s)
        ))
    }
}

fn check_url(s: &str) -> Result<(), String> {
    let ok = (s.starts_with("https://") || s.starts_with("http://"))
        && s.len() <= 2048
        && s.len() > "https://".len()
        && !s.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
    if ok {
        Ok(())
    } else {
        Err(format!("{:?} is not an http(s) URL", short(s)))
    }
}

/// Checks one value against its kind (the leaf parse of every setting).
pub fn check_value(kind: &Kind, v: &str) -> Result<(), String> {
    let e = |x: crate::types::ValueError| x.to_string();
    match kind {
        Kind::Text { min_len, max_len } => {
            let n = v.chars().count() as u32;
            if n < *min_len || n > *max_len {
                return Err(format!("length {n} is outside {min_len}-{max_len}"));
            }
            if v.contains('\0') {
                return Err("contains a NUL byte".into());
            }
            Ok(())
        }
        Kind::Int { min, max } => {
            let n: u64 =
                v.trim().parse().map_err(|_| format!("{:?} is not a whole number", short(v)))?;
            if n < *min || n > *max {
                return Err(format!("{n} is outside {min}-{max}"));
            }
            Ok(())
        }
        Kind::Bool => parse_bool(v).map(|_| ()),
        Kind::Choice(c) => {
            if c.contains(&v.trim()) {
                Ok(())
            } else {
                Err(format!("{:?} is not one of {}", short(v), c.join(", ")))
            }
        }
        Kind::Hostname => v.trim().parse::<Hostname>().map(|_| ()).map_err(e),
        Kind::Fqdn => v.trim().parse::<Fqdn>().map(|_| ()).map_err(e),
        Kind::InstanceId => v.trim().parse::<InstanceId>().map(|_| ()).map_err(e),
        Kind::Mac => v.trim().parse::<MacAddr>().map(|_| ()).map_err(e),
        Kind::IfName => v.trim().parse::<NicName>().map(|_| ()).map_err(e),
        Kind::CidrList => list(v).try_for_each(|p| p.parse::<IpCidr>().map(|_| ()).map_err(e)),
        Kind::Ip => v
            .trim()
            .parse::<IpAddr>()
            .map(|_| ())
            .map_err(|_| format!("{:?} is not an IP address", short(v))),
        Kind::IpList => list(v).try_for_each(|p| {
            p.parse::<IpAddr>()
                .map(|_| ())
                .map_err(|_| format!("{:?} is not an IP address", short(p)))
        }),
        Kind::DomainList => {
            list(v).try_for_each(|p| p.parse::<DomainName>().map(|_| ()).map_err(e))
        }
        Kind::HostList => list(v).try_for_each(|p| {
            if p.parse::<IpAddr>().is_ok() {
                Ok(())
            } else {
                p.parse::<Hostname>().map(|_| ()).map_err(e)
            }
        }),
        Kind::Url => check_url(v.trim()),
        Kind::SshKeys => split_ssh_keys(v).map(|_| ()),
        Kind::PasswordHash => check_password_hash(v.trim()),
        Kind::Duration => parse_duration(v).map(|_| ()),
        Kind::RoleText => {
            if v.contains('\0') {
                Err("contains a NUL byte".into())
            } else {
                Ok(())
            }
        }
        Kind::PemCerts | Kind::PemKey if v.len() > MAX_PEM => {
            Err(format!("length {} is more than {MAX_PEM}", v.len()))
        }
        Kind::PemCerts => crate::tls::certs_from_pem(v).map(|_| ()).map_err(|e| e.to_string()),
        Kind::PemKey => crate::tls::key_from_pem(v).map(|_| ()).map_err(|e| e.to_string()),
        Kind::Token => check_token(v.trim()),
    }
}

/// Longest PEM value (a chain of a few certificates, or base64 of it; the OVF MaxLen too).
pub const MAX_PEM: usize = 16384;

/// A bearer token: it goes into an HTTP header, so printable ASCII without spaces. The reason
/// never shows the value.
fn check_token(v: &str) -> Result<(), String> {
    let n = v.chars().count();
    if !(16..=256).contains(&n) {
        return Err(format!("length {n} is outside 16-256"));
    }
    if !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("has a space, a control or a non-ASCII character".into());
    }
    Ok(())
}

/// Why a secret's value was refused, naming the rule and never the value: a length rule's
/// message carries only the length; any other rule is described by its kind.
fn secret_reason(kind: &Kind, reason: String) -> String {
    match kind {
        // These reasons carry a length or a rule, never the value.
        Kind::Text { .. } | Kind::PemKey | Kind::Token => format!("{reason} (secret, not shown)"),
        other => format!("invalid value (secret, not shown): must be {}", other.describe()),
    }
}

/// The valid values of `flat`, by path; the refused ones go to `errors`.
fn valid_values<'a>(flat: &'a Flat, errors: &mut Vec<ConfigError>) -> BTreeMap<&'a str, &'a str> {
    let mut ok = BTreeMap::new();
    for (path, fv) in flat {
        let Some(setting) = lookup(path) else {
            errors.push(ConfigError {
                path: path.clone(),
                origin: fv.origin.clone(),
                reason: "not a setting of schema version 1".into(),
            });
            continue;
        };
        if fv.value.trim().is_empty() {
            continue; // empty = unset (vSphere writes every property, set or not)
        }
        match check_value(&setting.kind, &fv.value) {
            Ok(()) => {
                ok.insert(path.as_str(), fv.value.as_str());
            }
            Err(reason) => {
                let reason =
                    if setting.secret { secret_reason(&setting.kind, reason) } else { reason };
                errors.push(ConfigError { path: path.clone(), origin: fv.origin.clone(), reason });
            }
        }
    }
    ok
}

/// The valid values, with the schema's defaults behind them.
struct Values<'a> {
    ok: BTreeMap<&'a str, &'a str>,
}

impl Values<'_> {
    fn get(&self, p: &str) -> Option<&str> {
        self.ok.get(p).map(|v| v.trim())
    }
    fn get_or_default(&self, p: &str) -> Option<&str> {
        self.get(p).or_else(|| lookup(p).and_then(|s| s.default))
    }
    fn list<T: std::str::FromStr>(&self, p: &str) -> Vec<T> {
        self.get(p).map(|v| list(v).filter_map(|p| p.parse().ok()).collect()).unwrap_or_default()
    }
}

/// The NIC slots any source set.
fn nics(flat: &Flat, v: &Values<'_>) -> BTreeMap<String, Nic> {
    let mut nics = BTreeMap::new();
    for slot in NIC_SLOTS {
        let prefix = format!("net.{slot}.");
        if !flat.keys().any(|k| k.starts_with(&prefix)) {
            continue;
        }
        let k = |leaf: &str| format!("{prefix}{leaf}");
        let flag = |leaf: &str| v.get_or_default(&k(leaf)).and_then(|v| parse_bool(v).ok());
        let nic = Nic {
            mac: v.get(&k("mac")).and_then(|v| v.parse().ok()),
            name: v.get(&k("name")).and_then(|v| v.parse().ok()),
            dhcp4: flag("dhcp4").unwrap_or(true),
            dhcp6: flag("dhcp6").unwrap_or(false),
            addresses: v.list(&k("address")),
            gateways: v.list(&k("gateway")),
            mtu: v.get(&k("mtu")).and_then(|v| v.parse().ok()),
        };
        nics.insert((*slot).to_owned(), nic);
    }
    nics
}

/// The role and its settings, through the role's own [`crate::roles::Role::configure`].
/// Returns the role, its settings when valid, and why it is unconfigured when it is.
fn role_settings(
    flat: &Flat,
    v: &Values<'_>,
    errors: &mut Vec<ConfigError>,
) -> (RoleId, Option<RoleSettings>, Option<String>) {
    let role = v.get_or_default("role").and_then(RoleId::parse).unwrap_or_default();
    let Some(imp) = crate::roles::get(role) else {
        return (role, None, None);
    };
    let get = |k: &str| v.ok.get(k).copied();
    match imp.configure(&get) {
        Ok(s) => (role, Some(s), None),
        Err(e @ ConfigureError::Unconfigured { .. }) => (role, None, Some(e.to_string())),
        Err(ConfigureError::Invalid { key, reason }) => {
            let origin = flat
                .get(&key)
                .map(|f| f.origin.clone())
                .unwrap_or(Origin { source: Source::Merged, key: format!("capstan.{key}") });
            errors.push(ConfigError { path: key, origin, reason });
            (role, None, None)
        }
    }
}

/// The login user, when `user.name` is set and valid.
fn user(flat: &Flat, v: &Values<'_>, errors: &mut Vec<ConfigError>) -> Option<User> {
    let n = v.get("user.name")?;
    match check_user_name(n) {
        Ok(()) => Some(User {
            name: n.to_owned(),
            password_hash: v.get("user.password-hash").map(str::to_owned),
        }),
        Err(reason) => {
            errors.push(ConfigError {
                path: "user.name".into(),
                origin: flat["user.name"].origin.clone(),
                reason,
            });
            None
        }
    }
}

impl Config {
    /// Builds the config from merged flat values. `metadata_network` says whether the
    /// cloud-init metadata carries a `network` that wins over the `net.*` keys (the caller
    /// decides that from precedence). Refused values are dropped (as if unset) and listed in
    /// [`Config::errors`], each naming its source and key; a refused `net.*` value makes the
    /// whole network [`NetworkSource::Invalid`] so that nothing is half-applied.
    pub fn from_flat(flat: &Flat, metadata_network: bool) -> Config {
        let mut errors = Vec::new();
        let v = Values { ok: valid_values(flat, &mut errors) };
        let nics = nics(flat, &v);
        cross_check_nics(&nics, flat, &mut errors);
        let net_error = errors.iter().any(|e| e.path.starts_with("net."));
        let network_source = if metadata_network {
            NetworkSource::Metadata
        } else if net_error {
            NetworkSource::Invalid
        } else if nics.is_empty() {
            NetworkSource::None
        } else {
            NetworkSource::Keys
        };
        let (role, role_settings, role_unconfigured) = role_settings(flat, &v, &mut errors);
        let hostname: Option<Hostname> = v.get("hostname").and_then(|v| v.parse().ok());
        let fqdn = v
            .get("fqdn")
            .and_then(|v| v.parse().ok())
            .or_else(|| hostname.as_ref().and_then(Hostname::as_fqdn));
        let user = user(flat, &v, &mut errors);
        Config {
            version: VERSION,
            hostname,
            fqdn,
            instance_id: v.get("instance-id").and_then(|v| v.parse().ok()),
            network_source,
            nics,
            dns: Dns { servers: v.list("dns.servers"), search: v.list("dns.search") },
            ntp_servers: v.list("ntp.servers"),
            user,
            ssh_authorized_keys: v
                .get("ssh.authorized-keys")
                .and_then(|v| split_ssh_keys(v).ok())
                .unwrap_or_default(),
            commands: Commands { runcmd: v.ok.get("commands.runcmd").map(|v| (*v).to_owned()) },
            user_data: v.ok.get("user-data").map(|v| decode_user_data(v)),
            role,
            role_settings,
            heartbeat: heartbeat(flat, &v, &mut errors),
            errors,
            role_unconfigured,
        }
    }

    /// The refused values whose path starts with `prefix` (e.g. `net.` for the network step).
    pub fn errors_under<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a ConfigError> + 'a {
        self.errors.iter().filter(move |e| e.path.starts_with(prefix))
    }
}

/// The heartbeat settings, with the rules across its keys: an `https` URL, the hub's CA and a
/// credential when the URL is set, a certificate and its own key together. A refused rule is
/// an error on the key to fix; the daemon then starts no heartbeats at all.
fn heartbeat(flat: &Flat, v: &Values<'_>, errors: &mut Vec<ConfigError>) -> Heartbeat {
    let pem = |p: &str, k| v.get(p).and_then(|x| crate::tls::normalize_pem(x, k).ok());
    let hb = Heartbeat {
        url: v.get("heartbeat.url").map(str::to_owned),
        interval: v
            .get_or_default("heartbeat.interval")
            .and_then(|v| parse_duration(v).ok())
            .unwrap_or(Duration::from_secs(10)),
        ca: pem("heartbeat.ca", crate::tls::PemKind::Certificates),
        client_cert: pem("heartbeat.client-cert", crate::tls::PemKind::Certificates),
        client_key: pem("heartbeat.client-key", crate::tls::PemKind::PrivateKey),
        token: v.get("heartbeat.token").map(str::to_owned),
    };
    // Given at all (even if refused): a refused value is reported once, as itself.
    let given = |p: &str| flat.get(p).is_some_and(|f| !f.value.trim().is_empty());
    let mut refuse = |path: &str, reason: String| {
        let origin = flat
            .get(path)
            .map(|f| f.origin.clone())
            .unwrap_or(Origin { source: Source::Merged, key: format!("capstan.{path}") });
        errors.push(ConfigError { path: path.into(), origin, reason });
    };
    if let Some(url) = &hb.url {
        if !url.starts_with("https://") {
            refuse(
                "heartbeat.url",
                format!("{:?} is not https:// (the hub only speaks TLS)", short(url)),
            );
        }
        if !given("heartbeat.ca") {
            refuse(
                "heartbeat.url",
                "is set but heartbeat.ca is not (the hub's CA is pinned)".into(),
            );
        }
        if !given("heartbeat.client-cert") && !given("heartbeat.token") {
            refuse("heartbeat.url", "is set but neither heartbeat.client-cert (with heartbeat.client-key) nor heartbeat.token is".into());
        }
    }
    match (given("heartbeat.client-cert"), given("heartbeat.client-key")) {
        (true, false) => refuse(
            "heartbeat.client-cert",
            "is set but heartbeat.client-key is not (they go together)".into(),
        ),
        (false, true) => refuse(
            "heartbeat.client-key",
            "is set but heartbeat.client-cert is not (they go together; secret, not shown)".into(),
        ),
        _ => {}
    }
    if let (Some(c), Some(k)) = (&hb.client_cert, &hb.client_key) {
        let pair = crate::tls::certs_from_pem(c)
            .and_then(|c| crate::tls::key_from_pem(k).and_then(|k| crate::tls::check_pair(&c, &k)));
        if let Err(e) = pair {
            refuse(
                "heartbeat.client-key",
                format!("{e} (heartbeat.client-cert; secret, not shown)"),
            );
        }
    }
    hb
}

/// `user-data` may be plain `#cloud-config` or base64 of it (as Ubuntu's OVAs take it).
fn decode_user_data(v: &str) -> String {
    let t = v.trim_start();
    if t.starts_with('#') || t.starts_with("##") {
        return v.to_owned();
    }
    match crate::sources::encoding::base64_decode(v.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
    {
        Some(s) if s.trim_start().starts_with('#') => s,
        _ => v.to_owned(),
    }
}

/// Rules across NIC slots: no two slots with the same MAC or the same interface name.
fn cross_check_nics(nics: &BTreeMap<String, Nic>, flat: &Flat, errors: &mut Vec<ConfigError>) {
    let mut macs: BTreeMap<MacAddr, &str> = BTreeMap::new();
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    for (slot, nic) in nics {
        if let Some(mac) = nic.mac {
            if let Some(first) = macs.insert(mac, slot) {
                let path = format!("net.{slot}.mac");
                errors.push(ConfigError {
                    origin: flat[&path].origin.clone(),
                    path,
                    reason: format!("MAC {mac} is also given to net.{first}.mac"),
                });
            }
        }
        if let Some(name) = &nic.name {
            if let Some(first) = names.insert(name.as_str(), slot) {
                let path = format!("net.{slot}.name");
                errors.push(ConfigError {
                    origin: flat[&path].origin.clone(),
                    path,
                    reason: format!(
                        "interface name {name} is also given to net.{first}.name (duplicate NIC name)"
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_serialise_as_the_names_status_has_always_shown() {
        use Source::*;
        let all = [
            Defaults,
            OvfEnv,
            Metadata,
            GuestinfoDir,
            FwCfg,
            VmwareBackdoor,
            Guestinfo,
            Override,
            Persisted,
            Smbios,
            None,
            Merged,
            File,
        ];
        for s in all {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            let back: Source = serde_json::from_value(s.as_str().into()).unwrap();
            assert_eq!(back, s);
        }
        for t in ["guestinfo-dir", "fw_cfg", "vmware-backdoor"] {
            assert_eq!(Source::of_transport(t).as_str(), t);
        }
        assert!(serde_json::from_value::<Source>("schema-default".into()).is_err());
        assert!(Metadata.below_cloud_config() && !GuestinfoDir.below_cloud_config());
    }

    fn flat(kv: &[(&str, &str)]) -> Flat {
        flat_from(Source::Defaults, kv)
    }

    #[test]
    fn builds_typed_config() {
        let c = Config::from_flat(
            &flat(&[
                ("hostname", "node-1.example.com"),
                ("net.nic0.mac", "00:50:56:AA:BB:CC"),
                ("net.nic0.address", "10.0.0.10/24, fd00::10/64"),
                ("net.nic0.gateway", "10.0.0.1"),
                ("net.nic0.dhcp4", "False"),
                ("dns.servers", "10.0.0.2,10.0.0.3"),
                ("ssh.authorized-keys", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA a@b,ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB c@d"),
                ("heartbeat.interval", "30s"),
            ]),
            false,
        );
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert_eq!(c.network_source, NetworkSource::Keys);
        let n = &c.nics["nic0"];
        assert!(!n.dhcp4 && !n.dhcp6);
        assert_eq!(n.addresses.len(), 2);
        assert_eq!(c.fqdn.unwrap().as_str(), "node-1.example.com");
        assert_eq!(c.ssh_authorized_keys.len(), 2);
        assert_eq!(c.heartbeat.interval, Duration::from_secs(30));
        assert_eq!(c.role, RoleId::None);
    }

    #[test]
    fn bad_values_name_source_and_key_and_block_the_network() {
        let c = Config::from_flat(
            &flat(&[
                ("net.nic0.address", "10.0.0.300/24"),
                ("net.nic1.mac", "zz:00"),
                ("hostname", "bad_host!"),
                ("user.password-hash", "hunter2"),
                ("bogus", "x"),
            ]),
            false,
        );
        assert_eq!(c.network_source, NetworkSource::Invalid);
        let msgs: Vec<String> = c.errors.iter().map(|e| e.to_string()).collect();
        let all = msgs.join("\n");
        assert!(all.contains("defaults key capstan.net.nic0.address"), "{all}");
        assert!(all.contains("capstan.net.nic1.mac"), "{all}");
        assert!(all.contains("capstan.hostname"), "{all}");
        assert!(all.contains("capstan.bogus"), "{all}");
        assert!(!all.contains("hunter2"), "secret leaked: {all}");
        assert!(c.hostname.is_none());
    }

    #[test]
    fn duplicate_nic_names_and_macs_are_refused() {
        let c = Config::from_flat(
            &flat(&[
                ("net.nic0.name", "eth0"),
                ("net.nic1.name", "eth0"),
                ("net.nic0.mac", "00:50:56:00:00:01"),
                ("net.nic1.mac", "00:50:56:00:00:01"),
            ]),
            false,
        );
        assert_eq!(c.network_source, NetworkSource::Invalid);
        assert_eq!(c.errors.len(), 2, "{:?}", c.errors);
        assert!(c.errors[1].reason.contains("duplicate NIC name"));
    }
}
