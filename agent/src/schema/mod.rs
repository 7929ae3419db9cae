//! The node configuration schema (version 1): one table of every setting a node can be told.
//!
//! Everything else is generated from [`settings`]: parsing and validation of flat key/value
//! sources into the typed [`Config`], the OVF ProductSection properties of a profile
//! ([`ovf_properties`]), `capstan-agent config schema --json|--ovf|--markdown`, and
//! `docs/config-reference.md`.
//!
//! Naming is fixed: the setting at path `a.b` is the vApp property / `ovf-env.xml` key
//! `capstan.a.b` and the guestinfo key `guestinfo.capstan.a.b`. Per-NIC settings use a NIC slot
//! (`nic0` … `nic7`) in place of `{nic}`: `net.nic0.address`.

mod config;
mod markdown;
mod ovf;
mod toml_file;

use std::fmt;

#[cfg(test)]
pub(crate) use config::flat_from;
pub use config::{
    check_value, parse_duration, split_ssh_keys, Commands, Config, ConfigError, Dns, Flat,
    FlatValue, Heartbeat, NetworkSource, Nic, Origin, Source, User,
};
pub use markdown::markdown;
pub use ovf::{
    ovf_properties, ovf_properties_for, product_section_xml, profile_names, ProductProperty,
};
pub use toml_file::{flatten_toml, read_toml_file, TomlError};

/// The schema version this agent reads and writes.
pub const VERSION: u32 = 1;

/// The prefix of every setting in the OVF environment and in guestinfo (`capstan.` + path).
pub const KEY_PREFIX: &str = "capstan.";

/// NIC slots a profile may have, in order; `{nic}` in a path is one of these.
pub const NIC_SLOTS: &[&str] = &["nic0", "nic1", "nic2", "nic3", "nic4", "nic5", "nic6", "nic7"];

/// The value type of a setting: how it parses and how it appears in OVF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// Free text of bounded length.
    Text {
        /// Shortest accepted (0 = may be empty).
        min_len: u32,
        /// Longest accepted.
        max_len: u32,
    },
    /// An unsigned integer in a range.
    Int {
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
    /// `true`/`false` (also `yes`/`no`, `1`/`0`, any case).
    Bool,
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
    /// An RFC 1123 host name (may be fully qualified).
    Hostname,
    /// A fully qualified domain name.
    Fqdn,
    /// cloud-init's instance-id.
    InstanceId,
    /// A MAC address.
    Mac,
    /// A Linux interface name.
    IfName,
    /// Comma-separated `address/prefix` (IPv4 or IPv6).
    CidrList,
    /// One IP address.
    Ip,
    /// Comma-separated IP addresses.
    IpList,
    /// Comma-separated DNS names.
    DomainList,
    /// Comma-separated host names or IP addresses.
    HostList,
    /// An `https://` or `http://` URL.
    Url,
    /// OpenSSH authorized keys: one per line, or comma-separated.
    SshKeys,
    /// A crypt(3) password hash (`$6$…`, `$y$…`).
    PasswordHash,
    /// A duration: seconds, or a number with `s`/`m`/`h`.
    Duration,
    /// Validated by the role that reads it ([`crate::roles::Role::configure`]).
    RoleText,
    /// PEM certificates, or base64 of them ([`crate::tls::normalize_pem`] lists the forms).
    PemCerts,
    /// One PEM private key, or base64 of it.
    PemKey,
    /// A bearer token: 16-256 printable ASCII characters, no spaces.
    Token,
}

impl Kind {
    /// A short description of accepted values for docs and errors.
    pub fn describe(&self) -> String {
        match self {
            Kind::Text { min_len, max_len } => format!("text, {min_len}-{max_len} characters"),
            Kind::Int { min, max } => format!("integer {min}-{max}"),
            Kind::Bool => "boolean".into(),
            Kind::Choice(c) => format!("one of {}", c.join(", ")),
            Kind::Hostname => "host name (RFC 1123)".into(),
            Kind::Fqdn => "fully qualified domain name".into(),
            Kind::InstanceId => "instance id (printable ASCII, no '/')".into(),
            Kind::Mac => "MAC address".into(),
            Kind::IfName => "interface name (1-15 bytes)".into(),
            Kind::CidrList => "comma-separated address/prefix".into(),
            Kind::Ip => "IP address".into(),
            Kind::IpList => "comma-separated IP addresses".into(),
            Kind::DomainList => "comma-separated domain names".into(),
            Kind::HostList => "comma-separated host names or IP addresses".into(),
            Kind::Url => "http(s) URL".into(),
            Kind::SshKeys => "SSH public keys, one per line or comma-separated".into(),
            Kind::PasswordHash => "crypt(3) hash".into(),
            Kind::Duration => "duration (10, 10s, 5m, 1h)".into(),
            Kind::RoleText => "text, validated by the role".into(),
            Kind::PemCerts => "PEM certificate(s), or base64 of the PEM".into(),
            Kind::PemKey => "PEM private key, or base64 of the PEM".into(),
            Kind::Token => "token, 16-256 printable ASCII characters".into(),
        }
    }

    /// The name used in `config schema --json`.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Text { .. } => "string",
            Kind::Int { .. } => "integer",
            Kind::Bool => "boolean",
            Kind::Choice(_) => "choice",
            Kind::Hostname => "hostname",
            Kind::Fqdn => "fqdn",
            Kind::InstanceId => "instance-id",
            Kind::Mac => "mac",
            Kind::IfName => "interface-name",
            Kind::CidrList => "cidr-list",
            Kind::Ip => "ip",
            Kind::IpList => "ip-list",
            Kind::DomainList => "domain-list",
            Kind::HostList => "host-list",
            Kind::Url => "url",
            Kind::SshKeys => "ssh-keys",
            Kind::PasswordHash => "password-hash",
            Kind::Duration => "duration",
            Kind::RoleText => "string",
            Kind::PemCerts => "pem-certificates",
            Kind::PemKey => "pem-private-key",
            Kind::Token => "token",
        }
    }
}

/// The appliance profiles a setting can belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// Every profile.
    All,
    /// Only these profiles.
    Profiles(&'static [&'static str]),
}

impl Applies {
    /// Whether the setting is part of `profile`.
    pub fn includes(&self, profile: &str) -> bool {
        match self {
            Applies::All => true,
            Applies::Profiles(p) => p.contains(&profile),
        }
    }
}

/// One setting of the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The path, with `{nic}` for per-NIC settings (`net.{nic}.address`).
    pub path: &'static str,
    /// The value type.
    pub kind: Kind,
    /// A short label (the vApp wizard shows it).
    pub label: &'static str,
    /// What the setting does.
    pub description: &'static str,
    /// The default, as the string a source would carry.
    pub default: Option<&'static str>,
    /// Profile-specific defaults that replace [`Setting::default`] (`(profile, value)`).
    pub profile_defaults: &'static [(&'static str, &'static str)],
    /// The vApp wizard category.
    pub category: &'static str,
    /// Whether the deploy wizard lets the operator set it (`ovf:userConfigurable`).
    pub user_configurable: bool,
    /// A secret: OVF `ovf:password="true"`, mode 0600 files, never logged, scrubbed from
    /// guestinfo after use.
    pub secret: bool,
    /// Which profiles carry it as a vApp property (every profile *accepts* every key).
    pub applies: Applies,
}

impl Setting {
    /// Whether this is a per-NIC setting.
    pub fn is_per_nic(&self) -> bool {
        self.path.contains("{nic}")
    }

    /// The concrete path for a NIC slot (unchanged for other settings).
    pub fn path_for(&self, nic: &str) -> String {
        self.path.replace("{nic}", nic)
    }

    /// The default for a profile.
    pub fn default_for(&self, profile: &str) -> Option<&'static str> {
        self.profile_defaults.iter().find(|(p, _)| *p == profile).map(|(_, v)| *v).or(self.default)
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path)
    }
}

/// A profile: the template it goes into and its NIC slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// `node` or `lb`.
    pub name: &'static str,
    /// NIC slots the template has (one vApp property set per slot).
    pub nics: &'static [&'static str],
}

/// The profile of a node without a role of its own.
const NODE_PROFILE: Profile = Profile { name: "node", nics: &["nic0"] };

/// The profiles the builder knows: `node`, then the profile of each role that has one
/// ([`crate::roles::Role::profile`]).
pub fn profiles() -> &'static [Profile] {
    static ALL: std::sync::OnceLock<Vec<Profile>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let roles = crate::roles::all().iter().filter_map(|r| r.profile());
        std::iter::once(NODE_PROFILE)
            .chain(roles.map(|name| Profile { name, nics: &["nic0"] }))
            .collect()
    })
}

/// Looks a profile up by name.
pub fn profile(name: &str) -> Option<&'static Profile> {
    profiles().iter().find(|p| p.name == name)
}

const IDENTITY: &str = "Identity";
const NETWORK: &str = "Network";
const ACCESS: &str = "Access";
const SERVICES: &str = "Services";
const ROLE: &str = "Role";
const HEARTBEAT: &str = "Heartbeat";

macro_rules! setting {
    ($path:expr, $kind:expr, $cat:expr, $label:expr, $desc:expr $(, $field:ident = $val:expr)* $(,)?) => {
        Setting {
            path: $path,
            kind: $kind,
            label: $label,
            description: $desc,
            category: $cat,
            $($field: $val,)*
            ..BASE_SETTING
        }
    };
}

/// A setting with every field at its usual value, for `..BASE_SETTING` in settings tables
/// (the core table here, each role's own).
pub const BASE_SETTING: Setting = Setting {
    path: "",
    kind: Kind::Bool,
    label: "",
    description: "",
    default: None,
    profile_defaults: &[],
    category: "",
    user_configurable: true,
    secret: false,
    applies: Applies::All,
};

/// Values of the `provider` setting: `auto` or a provider's name.
pub const PROVIDERS: &[&str] = &["auto", "vmware", "nocloud", "configdrive", "ec2"];

/// Roles a node can take.
pub const ROLES: &[&str] = crate::roles::RoleId::NAMES;

/// The settings every profile has, without the keys the roles own ([`crate::roles::Role::settings`]).
const CORE: &[Setting] = &[
    setting!("hostname", Kind::Hostname, IDENTITY, "Host name",
        "Host name of the node; a fully qualified name also sets the domain."),
    setting!("fqdn", Kind::Fqdn, IDENTITY, "Fully qualified name",
        "Fully qualified domain name for /etc/hosts; overrides the domain part of hostname."),
    setting!("instance-id", Kind::InstanceId, IDENTITY, "Instance id",
        "Identity of this VM instance; a new value re-runs per-instance steps. Defaults to the metadata's instance-id, then the OVF environment's vCenter VM id (ve:vCenterId), then the SMBIOS UUID.",
        user_configurable = false),
    setting!("provider", Kind::Choice(PROVIDERS), IDENTITY, "Metadata provider",
        "Where the node learns who it is: auto (detect, in order: VMware, OpenStack config drive, NoCloud, EC2) or one provider. Read only from /etc/capstan/agent.toml and the override file.",
        default = Some("auto"), user_configurable = false),
    setting!("net.{nic}.mac", Kind::Mac, NETWORK, "MAC address",
        "Match the interface by this MAC address (from the OVF environment's adapters when unset)."),
    setting!("net.{nic}.name", Kind::IfName, NETWORK, "Interface name",
        "Rename the matched interface to this name (like netplan set-name)."),
    setting!("net.{nic}.dhcp4", Kind::Bool, NETWORK, "DHCPv4",
        "Get an IPv4 address by DHCP.", default = Some("true")),
    setting!("net.{nic}.dhcp6", Kind::Bool, NETWORK, "DHCPv6",
        "Get an IPv6 address by DHCPv6/SLAAC.", default = Some("false")),
    setting!("net.{nic}.address", Kind::CidrList, NETWORK, "Static addresses",
        "Static addresses as address/prefix, comma-separated (10.0.0.10/24,fd00::10/64)."),
    setting!("net.{nic}.gateway", Kind::IpList, NETWORK, "Gateways",
        "Default gateways (one IPv4 and/or one IPv6), comma-separated."),
    setting!("net.{nic}.mtu", Kind::Int { min: 576, max: 9216 }, NETWORK, "MTU",
        "Interface MTU in bytes."),
    setting!("dns.servers", Kind::IpList, NETWORK, "DNS servers",
        "Name servers, comma-separated."),
    setting!("dns.search", Kind::DomainList, NETWORK, "DNS search domains",
        "Search domains, comma-separated."),
    setting!("ntp.servers", Kind::HostList, SERVICES, "NTP servers",
        "Time servers for systemd-timesyncd, comma-separated."),
    setting!("user.name", Kind::Text { min_len: 0, max_len: 32 }, ACCESS, "User name",
        "Login user created on first boot (member of sudo). Lower-case letters, digits, '-' and '_'."),
    setting!("user.password-hash", Kind::PasswordHash, ACCESS, "Password hash",
        "crypt(3) hash of the user's password (mkpasswd -m sha-512); unset leaves the password locked.",
        secret = true),
    setting!("ssh.authorized-keys", Kind::SshKeys, ACCESS, "SSH public keys",
        "Public keys allowed to log in as the user (the image's default user `capstan` when user.name is unset)."),
    setting!("commands.runcmd", Kind::Text { min_len: 0, max_len: 16384 }, SERVICES, "First-boot command",
        "Shell command run once per instance with sh -c, after the other steps.",
        user_configurable = false),
    setting!("user-data", Kind::Text { min_len: 0, max_len: 65536 }, SERVICES, "User data",
        "A #cloud-config document, plain or base64 (files, users, commands), used when guestinfo.userdata is absent.",
        user_configurable = false),
    setting!("role", Kind::Choice(ROLES), ROLE, "Role",
        "What this node runs: none, lb (HAProxy + keepalived), control-plane or worker.",
        default = Some("none")),
    setting!("heartbeat.url", Kind::Url, HEARTBEAT, "Hub URL",
        "https://HOST[:PORT] of capstan-hub (heartbeats go to /v1/heartbeat); unset disables heartbeats. Needs heartbeat.ca and a credential (heartbeat.client-cert with heartbeat.client-key, or heartbeat.token)."),
    setting!("heartbeat.interval", Kind::Duration, HEARTBEAT, "Heartbeat interval",
        "Time between heartbeats (each one jittered by 10 %); the hub's --interval should match.",
        default = Some("10s")),
    setting!("heartbeat.ca", Kind::PemCerts, HEARTBEAT, "Hub CA",
        "The CA certificate that signs the hub's certificate (ca.pem of capstan-hub certs init), the only one trusted: PEM text, or base64 of it on one line. Required with heartbeat.url."),
    setting!("heartbeat.client-cert", Kind::PemCerts, HEARTBEAT, "Node certificate",
        "This node's client certificate for mutual TLS (NAME.pem of capstan-hub certs node DIR NAME, whose CN is the node's instance-id): PEM text, or base64 of it on one line. Goes with heartbeat.client-key."),
    setting!("heartbeat.client-key", Kind::PemKey, HEARTBEAT, "Node key",
        "The private key of heartbeat.client-cert (NAME-key.pem of capstan-hub certs node), unencrypted: PEM text, or base64 of it on one line.",
        secret = true),
    setting!("heartbeat.token", Kind::Token, HEARTBEAT, "Node token",
        "A per-node bearer token (this instance-id's line in the hub's --token-file), used when no client certificate is given.",
        secret = true),
];

fn build() -> Vec<Setting> {
    let roles = crate::roles::all();
    // A role's profile defaults `role` to that role.
    let role_defaults: Vec<(&'static str, &'static str)> =
        roles.iter().filter_map(|r| Some((r.profile()?, r.id().as_str()))).collect();
    let role_defaults: &'static [(&'static str, &'static str)] =
        Box::leak(role_defaults.into_boxed_slice());
    let mut all: Vec<Setting> = CORE.to_vec();
    for s in all.iter_mut().filter(|s| s.path == "role") {
        s.profile_defaults = role_defaults;
    }
    for r in roles {
        // roles may share settings (control-plane and worker both own `kube.*`): listed once
        for s in r.settings() {
            if !all.iter().any(|a| a.path == s.path) {
                all.push(s);
            }
        }
    }
    all
}

/// Every setting of schema version 1, in display order.
pub fn settings() -> &'static [Setting] {
    static ALL: std::sync::OnceLock<Vec<Setting>> = std::sync::OnceLock::new();
    ALL.get_or_init(build)
}

/// Finds the setting for a concrete path (`net.nic1.mac` → `net.{nic}.mac`), or `None` for
/// an unknown key. A NIC segment must be one of [`NIC_SLOTS`].
pub fn lookup(path: &str) -> Option<&'static Setting> {
    if let Some(rest) = path.strip_prefix("net.") {
        let (nic, leaf) = rest.split_once('.')?;
        if !NIC_SLOTS.contains(&nic) {
            return None;
        }
        let templ = format!("net.{{nic}}.{leaf}");
        return settings().iter().find(|s| s.path == templ);
    }
    settings().iter().find(|s| !s.is_per_nic() && s.path == path)
}

/// Every concrete path a transport without key listing (the VMware backdoor) must probe:
/// each global setting and each per-NIC setting for every NIC slot.
pub fn all_concrete_paths() -> Vec<String> {
    let mut out = Vec::new();
    for s in settings() {
        if s.is_per_nic() {
            for nic in NIC_SLOTS {
                out.push(s.path_for(nic));
            }
        } else {
            out.push(s.path.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_handles_nics_and_unknown_keys() {
        assert_eq!(lookup("net.nic1.mac").unwrap().path, "net.{nic}.mac");
        assert!(lookup("net.nic9.mac").is_none());
        assert!(lookup("net.nic0.bogus").is_none());
        assert_eq!(lookup("hostname").unwrap().kind, Kind::Hostname);
        assert!(lookup("lb.vrrp.secret").unwrap().secret);
        assert!(lookup("nope").is_none());
    }

    #[test]
    fn paths_are_unique_and_documented() {
        let mut seen = std::collections::BTreeSet::new();
        for s in settings() {
            assert!(seen.insert(s.path), "{} listed twice", s.path);
            assert!(!s.label.is_empty() && !s.description.is_empty(), "{}", s.path);
        }
        assert!(settings().iter().any(|s| s.path == "lb.vip"));
    }
}
