//! The typed configuration, built from the merged flat values by the schema table.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use super::{lookup, Kind, NIC_SLOTS, VERSION};
use crate::lb::LbSettings;
use crate::types::{DomainName, Fqdn, Hostname, InstanceId, IpCidr, MacAddr, NicName};

/// Where a value came from: the source and the key inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Origin {
    /// The source (`defaults`, `ovf-env`, `metadata`, `guestinfo`, `override`, `schema-default`).
    pub source: String,
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

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Nothing beyond first boot.
    #[default]
    None,
    /// HA control-plane load balancer.
    Lb,
    /// Kubernetes control plane.
    ControlPlane,
    /// Kubernetes worker.
    Worker,
}

/// Where the network configuration comes from; never a mix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// Kubernetes join settings (node profile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Kube {
    /// host:port of the endpoint.
    pub endpoint: Option<String>,
    /// Bootstrap token. Secret: not serialized.
    #[serde(skip)]
    pub token: Option<String>,
    /// CA pin.
    pub ca_cert_hash: Option<String>,
}

/// Heartbeat settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heartbeat {
    /// Hub URL; `None` disables heartbeats.
    pub url: Option<String>,
    /// Interval.
    pub interval: Duration,
    /// PEM CA of the hub.
    pub ca: Option<String>,
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
    pub role: Role,
    /// Load-balancer settings when `role` is `lb` and they are valid.
    #[serde(skip)]
    pub lb: Option<LbSettings>,
    /// Kubernetes join settings.
    pub kube: Kube,
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

/// Parses a duration: `10`, `10s`, `500ms`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, mult_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (t, 1000)
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{:?} is not a duration (10, 10s, 5m, 1h)", short(s)))?;
    let ms = n
        .checked_mul(mult_ms)
        .filter(|ms| (100..=86_400_000).contains(ms))
        .ok_or_else(|| format!("{:?} is outside 100ms..24h", short(s)))?;
    Ok(Duration::from_millis(ms))
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
        let mut ok: BTreeMap<&str, &str> = BTreeMap::new();
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
                    let reason = if setting.secret {
                        "invalid value (secret, not shown)".to_owned()
                    } else {
                        reason
                    };
                    errors.push(ConfigError {
                        path: path.clone(),
                        origin: fv.origin.clone(),
                        reason,
                    });
                }
            }
        }
        let get = |p: &str| ok.get(p).map(|v| v.trim());
        let default = |p: &str| lookup(p).and_then(|s| s.default);
        let get_or_default = |p: &str| get(p).or_else(|| default(p));

        // Network.
        let mut nics = BTreeMap::new();
        for slot in NIC_SLOTS {
            let prefix = format!("net.{slot}.");
            if !flat.keys().any(|k| k.starts_with(&prefix)) {
                continue;
            }
            let k = |leaf: &str| format!("{prefix}{leaf}");
            let nic = Nic {
                mac: get(&k("mac")).and_then(|v| v.parse().ok()),
                name: get(&k("name")).and_then(|v| v.parse().ok()),
                dhcp4: get_or_default(&k("dhcp4")).and_then(|v| parse_bool(v).ok()).unwrap_or(true),
                dhcp6: get_or_default(&k("dhcp6"))
                    .and_then(|v| parse_bool(v).ok())
                    .unwrap_or(false),
                addresses: get(&k("address"))
                    .map(|v| list(v).filter_map(|p| p.parse().ok()).collect())
                    .unwrap_or_default(),
                gateways: get(&k("gateway"))
                    .map(|v| list(v).filter_map(|p| p.parse().ok()).collect())
                    .unwrap_or_default(),
                mtu: get(&k("mtu")).and_then(|v| v.parse().ok()),
            };
            nics.insert((*slot).to_owned(), nic);
        }
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

        let role = match get_or_default("role").unwrap_or("none") {
            "lb" => Role::Lb,
            "control-plane" => Role::ControlPlane,
            "worker" => Role::Worker,
            _ => Role::None,
        };
        let mut role_unconfigured = None;
        let lb = if role == Role::Lb {
            use crate::lb::settings::SettingsError;
            match LbSettings::from_flat(|k| ok.get(k).copied()) {
                Ok(s) => Some(s),
                // Not set yet (the VIP and credentials come at deploy time): the role is not
                // started, which is not an error in the values themselves.
                Err(e @ (SettingsError::Missing { .. } | SettingsError::Conflict { .. })) => {
                    role_unconfigured = Some(format!("role lb not configured: {e}"));
                    None
                }
                Err(e) => {
                    let key = match &e {
                        SettingsError::Invalid { key, .. } => (*key).to_owned(),
                        _ => "lb".to_owned(),
                    };
                    let origin = flat.get(&key).map(|f| f.origin.clone()).unwrap_or(Origin {
                        source: "merged".into(),
                        key: format!("capstan.{key}"),
                    });
                    errors.push(ConfigError { path: key, origin, reason: e.to_string() });
                    None
                }
            }
        } else {
            None
        };

        let hostname: Option<Hostname> = get("hostname").and_then(|v| v.parse().ok());
        let fqdn = get("fqdn")
            .and_then(|v| v.parse().ok())
            .or_else(|| hostname.as_ref().and_then(Hostname::as_fqdn));
        Config {
            version: VERSION,
            hostname,
            fqdn,
            instance_id: get("instance-id").and_then(|v| v.parse().ok()),
            network_source,
            nics,
            dns: Dns {
                servers: get("dns.servers")
                    .map(|v| list(v).filter_map(|p| p.parse().ok()).collect())
                    .unwrap_or_default(),
                search: get("dns.search")
                    .map(|v| list(v).filter_map(|p| p.parse().ok()).collect())
                    .unwrap_or_default(),
            },
            ntp_servers: get("ntp.servers")
                .map(|v| list(v).map(str::to_owned).collect())
                .unwrap_or_default(),
            user: match get("user.name") {
                Some(n) => match check_user_name(n) {
                    Ok(()) => Some(User {
                        name: n.to_owned(),
                        password_hash: get("user.password-hash").map(str::to_owned),
                    }),
                    Err(reason) => {
                        errors.push(ConfigError {
                            path: "user.name".into(),
                            origin: flat["user.name"].origin.clone(),
                            reason,
                        });
                        None
                    }
                },
                None => None,
            },
            ssh_authorized_keys: get("ssh.authorized-keys")
                .and_then(|v| split_ssh_keys(v).ok())
                .unwrap_or_default(),
            commands: Commands { runcmd: ok.get("commands.runcmd").map(|v| (*v).to_owned()) },
            user_data: ok.get("user-data").map(|v| decode_user_data(v)),
            role,
            lb,
            kube: Kube {
                endpoint: get("kube.endpoint").map(str::to_owned),
                token: get("kube.token").map(str::to_owned),
                ca_cert_hash: get("kube.ca-cert-hash").map(str::to_owned),
            },
            heartbeat: Heartbeat {
                url: get("heartbeat.url").map(str::to_owned),
                interval: get_or_default("heartbeat.interval")
                    .and_then(|v| parse_duration(v).ok())
                    .unwrap_or(Duration::from_secs(10)),
                ca: ok.get("heartbeat.ca").map(|v| (*v).to_owned()),
            },
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

    fn flat(kv: &[(&str, &str)]) -> Flat {
        kv.iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    FlatValue {
                        value: (*v).to_owned(),
                        origin: Origin { source: "test".into(), key: format!("capstan.{k}") },
                    },
                )
            })
            .collect()
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
        assert_eq!(c.role, Role::None);
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
        assert!(all.contains("test key capstan.net.nic0.address"), "{all}");
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

    #[test]
    fn lb_role_builds_lb_settings_or_names_the_key() {
        let c = Config::from_flat(&flat(&[("role", "lb")]), false);
        assert!(c.lb.is_none());
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert!(c.role_unconfigured.as_deref().unwrap().contains("lb.vip"));
        let c = Config::from_flat(&flat(&[("role", "lb"), ("lb.vip", "10.0.0.1/99")]), false);
        assert!(c.errors.iter().any(|e| e.path == "lb.vip"), "{:?}", c.errors);
        let c = Config::from_flat(
            &flat(&[
                ("role", "lb"),
                ("lb.vip", "10.0.0.100/24"),
                ("lb.vrrp.secret", "s3cret"),
                ("lb.api.token", "0123456789abcdef0123"),
            ]),
            false,
        );
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert!(c.lb.is_some());
    }
}
