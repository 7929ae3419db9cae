//! The network model (what a NIC should look like) and its systemd-networkd rendering.
//!
//! The model is filled from the netplan v2 `network` document in cloud-init metadata
//! ([`crate::cloudinit::netplan`]) or from the simple per-NIC vApp properties
//! ([`NetworkConfig::from_vapp`]). [`NetworkConfig::validate`] checks the cross-field rules once;
//! [`render`] turns a valid config into `.link`/`.network` files, all in memory, so the step can
//! write all of them or none.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::types::{Hostname, IpCidr, MacAddr, NicName, ValueError};

/// The network configuration of a node: one entry per NIC, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The NICs.
    #[serde(default)]
    pub nics: Vec<Nic>,
}

/// One NIC: how to find it and what to put on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// The config's own id for it (netplan's key, e.g. `id0`, or the vApp `<nic>`); names files.
    pub id: String,
    /// Match the link with this MAC address (CAPV always sets one).
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// Match the link by name when there is no MAC (netplan `match.name`, or the id itself).
    #[serde(default)]
    pub match_name: Option<NicName>,
    /// Rename the link (netplan `set-name`); needs a MAC to match on.
    #[serde(default)]
    pub set_name: Option<NicName>,
    /// Wake-on-LAN by magic packet.
    #[serde(default)]
    pub wakeonlan: bool,
    /// DHCPv4.
    #[serde(default)]
    pub dhcp4: bool,
    /// DHCPv6.
    #[serde(default)]
    pub dhcp6: bool,
    /// Static addresses with prefix.
    #[serde(default)]
    pub addresses: Vec<IpCidr>,
    /// IPv4 default gateway.
    #[serde(default)]
    pub gateway4: Option<Ipv4Addr>,
    /// IPv6 default gateway.
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    /// Static routes.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS servers for this link.
    #[serde(default)]
    pub nameservers: Vec<IpAddr>,
    /// DNS search domains for this link.
    #[serde(default)]
    pub search: Vec<Hostname>,
    /// MTU in bytes.
    #[serde(default)]
    pub mtu: Option<u32>,
}

impl Nic {
    /// A NIC with only an id: no match, no addresses, no DHCP.
    pub fn new(id: impl Into<String>) -> Self {
        Nic {
            id: id.into(),
            mac: None,
            match_name: None,
            set_name: None,
            wakeonlan: false,
            dhcp4: false,
            dhcp6: false,
            addresses: Vec::new(),
            gateway4: None,
            gateway6: None,
            routes: Vec::new(),
            nameservers: Vec::new(),
            search: Vec::new(),
            mtu: None,
        }
    }

    /// The name the link will have once configured (set-name, else the matched name).
    pub fn final_name(&self) -> Option<&NicName> {
        self.set_name.as_ref().or(self.match_name.as_ref())
    }
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination network (`0.0.0.0/0` / `::/0` for `default`).
    pub to: IpCidr,
    /// Next hop; `None` for an on-link route.
    #[serde(default)]
    pub via: Option<IpAddr>,
    /// Route metric.
    #[serde(default)]
    pub metric: Option<u32>,
}

/// A network configuration that breaks a rule; `key` is the path of the offending setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
#[non_exhaustive]
pub struct NetworkError {
    /// The key path, e.g. `network.ethernets.id0.gateway4` or `net.eth0.address`.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

impl NetworkError {
    pub(crate) fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        NetworkError { key: key.into(), problem: problem.into() }
    }
}

/// Smallest and largest MTU we accept (IPv4's minimum, the largest jumbo frame).
const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

/// The rules within one NIC: unicast, distinct addresses; usable gateways; routes via an
/// address of their family; an MTU in range (and IPv6's minimum when IPv6 is on). `key` makes
/// the key path of a field.
fn check_fields(nic: &Nic, key: impl Fn(&str) -> String) -> Result<(), NetworkError> {
    let mut seen = BTreeSet::new();
    for (i, a) in nic.addresses.iter().enumerate() {
        if !seen.insert(a) {
            return Err(NetworkError::new(
                key(&format!("addresses[{i}]")),
                format!("duplicate address {a}"),
            ));
        }
        if a.addr().is_unspecified() || a.addr().is_multicast() {
            return Err(NetworkError::new(
                key(&format!("addresses[{i}]")),
                format!("{a} is not a unicast address"),
            ));
        }
    }
    if let Some(gw) = nic.gateway4 {
        if gw.is_unspecified() || gw.is_broadcast() || gw.is_multicast() {
            return Err(NetworkError::new(
                key("gateway4"),
                format!("{gw} is not a usable gateway"),
            ));
        }
    }
    if let Some(gw) = nic.gateway6 {
        if gw.is_unspecified() || gw.is_multicast() {
            return Err(NetworkError::new(
                key("gateway6"),
                format!("{gw} is not a usable gateway"),
            ));
        }
    }
    for (i, r) in nic.routes.iter().enumerate() {
        if let Some(via) = r.via {
            if via.is_ipv4() != r.to.is_ipv4() {
                return Err(NetworkError::new(
                    key(&format!("routes[{i}].via")),
                    format!("{via} is not the same address family as {}", r.to),
                ));
            }
        }
    }
    if let Some(mtu) = nic.mtu {
        if !MTU_RANGE.contains(&mtu) {
            return Err(NetworkError::new(
                key("mtu"),
                format!("{mtu} is outside {}-{}", MTU_RANGE.start(), MTU_RANGE.end()),
            ));
        }
        if mtu < 1280 && (nic.dhcp6 || nic.addresses.iter().any(|a| !a.is_ipv4())) {
            return Err(NetworkError::new(
                key("mtu"),
                format!("{mtu} is below IPv6's minimum of 1280"),
            ));
        }
    }
    Ok(())
}

impl NetworkConfig {
    /// Checks the rules that span fields and NICs. `prefix` is the key path of the NIC map
    /// (`network.ethernets` or `net`) used in messages.
    pub fn validate(&self, prefix: &str) -> Result<(), NetworkError> {
        let mut ids = BTreeSet::new();
        let mut macs: BTreeMap<MacAddr, &str> = BTreeMap::new();
        let mut names: BTreeMap<&str, &str> = BTreeMap::new();
        for nic in &self.nics {
            let key = |k: &str| {
                if k.is_empty() {
                    format!("{prefix}.{}", nic.id)
                } else {
                    format!("{prefix}.{}.{k}", nic.id)
                }
            };
            if nic.id.is_empty()
                || !nic.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                || nic.id.len() > 64
            {
                return Err(NetworkError::new(
                    key(""),
                    "NIC id must be 1-64 letters, digits, '-', '_' or '.'",
                ));
            }
            if !ids.insert(nic.id.as_str()) {
                return Err(NetworkError::new(key(""), "duplicate NIC id"));
            }
            if nic.mac.is_none() && nic.match_name.is_none() {
                return Err(NetworkError::new(
                    key("match"),
                    "no MAC address or name to match the link on",
                ));
            }
            if nic.set_name.is_some() && nic.mac.is_none() {
                return Err(NetworkError::new(key("set-name"), "set-name needs match.macaddress"));
            }
            if let Some(mac) = nic.mac {
                if let Some(other) = macs.insert(mac, &nic.id) {
                    return Err(NetworkError::new(
                        key("match.macaddress"),
                        format!("MAC {mac} is also matched by {prefix}.{other}"),
                    ));
                }
            }
            if let Some(name) = nic.final_name() {
                if let Some(other) = names.insert(name.as_str(), &nic.id) {
                    return Err(NetworkError::new(
                        key("set-name"),
                        format!("interface name {name} is also used by {prefix}.{other}"),
                    ));
                }
            }
            check_fields(nic, key)?;
        }
        Ok(())
    }

    /// Builds the config from the simple per-NIC vApp properties `capstan.net.<nic>.<key>`:
    /// `mac`, `name` (rename to), `dhcp4`, `dhcp6` (`true`/`false`), `address` (one or more CIDRs,
    /// comma- or space-separated), `gateway` (IPv4 or IPv6; several allowed, one per family),
    /// `dns` (addresses), `search` (domains), `mtu`. Empty values count as absent. A NIC without
    /// `mac` is matched by the name `<nic>`. Errors name the key (`net.<nic>.<key>`).
    pub fn from_vapp(
        nics: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<NetworkConfig, NetworkError> {
        let mut out = NetworkConfig::default();
        for (id, props) in nics {
            let k = |key: &str| format!("net.{id}.{key}");
            let mut nic = Nic::new(id.clone());
            let list = |v: &str| {
                v.split([',', ' ', ';'])
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            };
            let bad = |key: &str, e: ValueError| NetworkError::new(k(key), e.to_string());
            for (key, value) in props {
                let value = value.trim();
                if value.is_empty() {
                    continue;
                }
                match key.as_str() {
                    "mac" => nic.mac = Some(value.parse().map_err(|e| bad(key, e))?),
                    "name" => nic.set_name = Some(value.parse().map_err(|e| bad(key, e))?),
                    "dhcp4" | "dhcp6" => {
                        let b = parse_bool(value).ok_or_else(|| NetworkError::new(k(key), format!("{value:?} is not true or false")))?;
                        if key == "dhcp4" {
                            nic.dhcp4 = b
                        } else {
                            nic.dhcp6 = b
                        }
                    }
                    "address" => {
                        for a in list(value) {
                            nic.addresses.push(a.parse().map_err(|e| bad(key, e))?);
                        }
                    }
                    "gateway" => {
                        for g in list(value) {
                            match g.parse::<IpAddr>() {
                                Ok(IpAddr::V4(a)) if nic.gateway4.is_none() => nic.gateway4 = Some(a),
                                Ok(IpAddr::V6(a)) if nic.gateway6.is_none() => nic.gateway6 = Some(a),
                                Ok(_) => return Err(NetworkError::new(k(key), "more than one gateway of the same family")),
                                Err(_) => return Err(NetworkError::new(k(key), format!("{g:?} is not an IP address"))),
                            }
                        }
                    }
                    "dns" => {
                        for a in list(value) {
                            nic.nameservers.push(a.parse().map_err(|_| NetworkError::new(k(key), format!("{a:?} is not an IP address")))?);
                        }
                    }
                    "search" => {
                        for d in list(value) {
                            nic.search.push(d.parse().map_err(|e| bad(key, e))?);
                        }
                    }
                    "mtu" => nic.mtu = Some(value.parse().map_err(|_| NetworkError::new(k(key), format!("{value:?} is not a number")))?),
                    other => return Err(NetworkError::new(k(other), "unknown NIC setting (known: mac, name, dhcp4, dhcp6, address, gateway, dns, search, mtu)")),
                }
            }
            if nic.mac.is_none() {
                nic.match_name = Some(id.parse().map_err(|e| {
                    NetworkError::new(
                        format!("net.{id}"),
                        format!("no mac given and the NIC id is not an interface name: {e}"),
                    )
                })?);
            }
            out.nics.push(nic);
        }
        out.validate("net")?;
        Ok(out)
    }
}

/// Reads the booleans cloud-init and vApp forms use (`true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`).
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" | "y" => Some(true),
        "false" | "no" | "off" | "0" | "n" => Some(false),
        _ => None,
    }
}

/// A rendered file: its name under `/etc/systemd/network/` and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkFile {
    /// File name, e.g. `10-capstan-id0.network`.
    pub name: String,
    /// File content.
    pub content: String,
}

/// Prefix of every file we own in `/etc/systemd/network/`; files with it that the new config does
/// not produce are removed, so a clone with fewer NICs loses the old ones.
pub const FILE_PREFIX: &str = "10-capstan-";

/// Renders the `.link` and `.network` files for a validated config.
///
/// The `.network` file matches on the MAC address alone when there is one (not on the name too,
/// as cloud-init does): a NIC whose rename has not happened yet — an instant clone before the
/// netlink step, or a name clash with a kernel name — is still configured.
pub fn render(cfg: &NetworkConfig) -> Vec<NetworkFile> {
    let mut out = Vec::new();
    for nic in &cfg.nics {
        if let (Some(mac), true) = (nic.mac, nic.set_name.is_some() || nic.wakeonlan) {
            let mut s = String::from(
                "# Written by capstan-agent firstboot; changes are overwritten.\n[Match]\n",
            );
            let _ = writeln!(s, "MACAddress={mac}");
            s.push_str("\n[Link]\n");
            match &nic.set_name {
                Some(name) => {
                    let _ = writeln!(s, "Name={name}");
                }
                // only the first matching .link applies: keep the naming of 99-default.link
                None => s.push_str(
                    "NamePolicy=keep kernel database onboard slot path\nAlternativeNamesPolicy=database onboard slot path\nMACAddressPolicy=persistent\n",
                ),
            }
            if nic.wakeonlan {
                s.push_str("WakeOnLan=magic\n");
            }
            if let Some(mtu) = nic.mtu {
                let _ = writeln!(s, "MTUBytes={mtu}");
            }
            out.push(NetworkFile { name: format!("{FILE_PREFIX}{}.link", nic.id), content: s });
        }
        let mut s = String::from(
            "# Written by capstan-agent firstboot; changes are overwritten.\n[Match]\n",
        );
        match (&nic.mac, &nic.match_name) {
            (Some(mac), _) => {
                let _ = writeln!(s, "MACAddress={mac}");
            }
            (None, Some(name)) => {
                let _ = writeln!(s, "Name={name}");
            }
            (None, None) => {}
        }
        if let Some(mtu) = nic.mtu {
            let _ = writeln!(s, "\n[Link]\nMTUBytes={mtu}");
        }
        s.push_str("\n[Network]\n");
        let dhcp = match (nic.dhcp4, nic.dhcp6) {
            (true, true) => "yes",
            (true, false) => "ipv4",
            (false, true) => "ipv6",
            (false, false) => "no",
        };
        let _ = writeln!(s, "DHCP={dhcp}");
        for a in &nic.addresses {
            let _ = writeln!(s, "Address={a}");
        }
        if let Some(g) = nic.gateway4 {
            let _ = writeln!(s, "Gateway={g}");
        }
        if let Some(g) = nic.gateway6 {
            let _ = writeln!(s, "Gateway={g}");
        }
        for d in &nic.nameservers {
            let _ = writeln!(s, "DNS={d}");
        }
        if !nic.search.is_empty() {
            let names: Vec<&str> = nic.search.iter().map(Hostname::as_str).collect();
            let _ = writeln!(s, "Domains={}", names.join(" "));
        }
        for r in &nic.routes {
            s.push_str("\n[Route]\n");
            let _ = writeln!(s, "Destination={}", r.to);
            if let Some(via) = r.via {
                let _ = writeln!(s, "Gateway={via}");
            }
            if let Some(m) = r.metric {
                let _ = writeln!(s, "Metric={m}");
            }
        }
        out.push(NetworkFile { name: format!("{FILE_PREFIX}{}.network", nic.id), content: s });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn vapp_properties() {
        let mut m = BTreeMap::new();
        m.insert(
            "eth0".to_string(),
            props(&[
                ("address", "10.0.0.5/24, 2001:db8::5/64"),
                ("gateway", "10.0.0.1 2001:db8::1"),
                ("dns", "10.0.0.2"),
                ("mtu", "1400"),
                ("dhcp6", ""),
            ]),
        );
        m.insert(
            "eth1".to_string(),
            props(&[("mac", "00:50:56:AA:BB:CC"), ("name", "data0"), ("dhcp4", "yes")]),
        );
        let c = NetworkConfig::from_vapp(&m).unwrap();
        assert_eq!(c.nics[0].match_name.as_ref().unwrap().as_str(), "eth0");
        assert_eq!(c.nics[0].addresses.len(), 2);
        assert_eq!(c.nics[0].gateway6.unwrap().to_string(), "2001:db8::1");
        assert!(c.nics[1].dhcp4 && c.nics[1].mac.unwrap().to_string() == "00:50:56:aa:bb:cc");

        m.insert("eth2".to_string(), props(&[("address", "10.0.0.300/24")]));
        let e = NetworkConfig::from_vapp(&m).unwrap_err().to_string();
        assert!(e.starts_with("net.eth2.address: invalid CIDR \"10.0.0.300/24\""), "{e}");
        m.insert("eth2".to_string(), props(&[("name", "data0"), ("mac", "00:50:56:aa:bb:cd")]));
        let e = NetworkConfig::from_vapp(&m).unwrap_err().to_string();
        assert!(e.contains("data0 is also used by net.eth1"), "{e}");
        m.insert("eth2".to_string(), props(&[("speed", "10")]));
        assert!(NetworkConfig::from_vapp(&m)
            .unwrap_err()
            .to_string()
            .starts_with("net.eth2.speed: unknown"));
    }
}
