//! cloud-init's network configuration version 1 (NoCloud's `network-config`, and what
//! cloud-init turns OpenStack's `network_data.json` into), and the dispatch of a whole
//! `network-config` document to version 1 or to netplan version 2 ([`super::netplan`]).
//!
//! ```yaml
//! version: 1
//! config:
//!   - type: physical
//!     name: eth0
//!     mac_address: "52:54:00:12:34:00"
//!     mtu: 1500
//!     subnets:
//!       - type: static            # static, static6, dhcp, dhcp4, dhcp6, ipv6_slaac, manual
//!         address: 10.0.0.5/24    # or address + netmask (255.255.255.0) or prefix (24)
//!         gateway: 10.0.0.1
//!         dns_nameservers: [10.0.0.2]
//!         dns_search: [example.com]
//!         routes: [{network: 192.168.0.0, netmask: 255.255.0.0, gateway: 10.0.0.254}]
//!   - type: nameserver            # global DNS: given to every NIC, as cloud-init does
//!     address: [10.0.0.3]
//!     search: [example.org]
//!   - type: route                 # global route: put on the NIC whose network holds the gateway
//!     destination: 172.16.0.0/12
//!     gateway: 10.0.0.254
//! ```
//!
//! Refused, with the key named and nothing applied: bonds, bridges and VLANs (the agent's network
//! model has physical NICs only; cloud-init 22.4's networkd renderer writes no `.netdev` for them
//! either), InfiniBand, unknown types. Deviations from cloud-init, on purpose:
//! `ipv6_dhcpv6-stateful` means DHCPv6 (cloud-init's networkd renderer drops it) and a global
//! `route` goes to one NIC, not to every NIC's file.

use std::net::IpAddr;

use serde_yaml::{Mapping, Value};

use super::{kind, show, CloudInitError, Cx};
use crate::steps::network::{NetworkConfig, Nic, Route};
use crate::types::IpCidr;

/// A parsed `network-config` document.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct NetworkDocument {
    /// The network, validated; `None` for `config: disabled` or an empty document.
    pub network: Option<NetworkConfig>,
    /// Keys ignored and other remarks.
    pub warnings: Vec<String>,
}

/// Parses a whole `network-config` document (YAML or JSON), version 1 or 2, bare or under a
/// top-level `network:` key. `origin` names the document in errors (`network-config`).
pub fn parse_network_config(
    text: &str,
    origin: &'static str,
) -> Result<NetworkDocument, CloudInitError> {
    let mut cx = Cx::new(origin);
    let doc = cx.document(text)?;
    if doc.is_empty() {
        return Ok(NetworkDocument::default());
    }
    let mut m = &doc;
    if let (Some(inner), None) = (doc.get("network"), doc.get("version")) {
        m = cx.mapping(inner, "network")?;
    }
    if m.get("config").and_then(Value::as_str) == Some("disabled") {
        cx.warn("network.config", "disabled: network left as the image has it");
        return Ok(NetworkDocument { network: None, warnings: cx.warnings });
    }
    let version =
        m.get("version").ok_or_else(|| cx.err("network.version", "missing (expected 1 or 2)"))?;
    let network = match version.as_u64() {
        Some(1) => Some(parse_network_v1(m, &mut cx)?),
        Some(2) => super::netplan::parse_network(&Value::Mapping(m.clone()), &mut cx)?,
        _ => {
            return Err(cx.err(
                "network.version",
                format!("{} is not supported (expected 1 or 2)", show(version)),
            ))
        }
    };
    Ok(NetworkDocument { network, warnings: cx.warnings })
}

/// Largest number of entries in `config` (a hostile document must not make us allocate forever;
/// no VM has this many NICs).
const MAX_ENTRIES: usize = 1024;

/// Global DNS and routes, applied once every NIC is known.
#[derive(Default)]
struct Globals {
    nameservers: Vec<IpAddr>,
    search: Vec<crate::types::Hostname>,
    routes: Vec<(String, Route)>,
}

/// Parses a version 1 mapping (`version: 1`, `config: [...]`) into a validated model.
pub(crate) fn parse_network_v1(m: &Mapping, cx: &mut Cx) -> Result<NetworkConfig, CloudInitError> {
    let mut cfg = NetworkConfig::default();
    let mut globals = Globals::default();
    for (k, v) in cx.entries(m, "network") {
        match k.as_str() {
            "version" => {}
            "config" => {
                let Value::Sequence(items) = v else {
                    return Err(
                        cx.err("network.config", format!("expected a list, got {}", kind(v)))
                    );
                };
                if items.len() > MAX_ENTRIES {
                    return Err(cx.err(
                        "network.config",
                        format!("{} entries, more than {MAX_ENTRIES}", items.len()),
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    parse_entry(&format!("network.config[{i}]"), item, cx, &mut cfg, &mut globals)?;
                }
            }
            _ => cx.warn(&format!("network.{k}"), "unknown key, ignored"),
        }
    }
    apply_globals(&mut cfg, globals, cx)?;
    cfg.validate("network.config").map_err(|e| cx.err(e.key, e.problem))?;
    Ok(cfg)
}

fn parse_entry(
    key: &str,
    v: &Value,
    cx: &mut Cx,
    cfg: &mut NetworkConfig,
    globals: &mut Globals,
) -> Result<(), CloudInitError> {
    let m = cx.mapping(v, key)?;
    let ty = m.get("type").ok_or_else(|| cx.err(format!("{key}.type"), "missing"))?;
    let ty = cx.string(ty, &format!("{key}.type"))?;
    match ty.as_str() {
        "physical" => cfg.nics.push(parse_physical(key, m, cx)?),
        "nameserver" => {
            let (ns, search) = parse_nameserver(key, m, cx)?;
            globals.nameservers.extend(ns);
            globals.search.extend(search);
        }
        "route" => globals.routes.push((key.to_owned(), parse_route(key, m, cx)?)),
        "bond" | "bridge" => {
            return Err(cx.err(
                format!("{key}.type"),
                format!(
                    "{ty} is not supported (bonds and bridges are out of scope); nothing applied"
                ),
            ))
        }
        "vlan" => {
            return Err(cx.err(
                format!("{key}.type"),
                "vlan is not supported (the agent configures physical NICs only); nothing applied",
            ))
        }
        other => {
            return Err(cx.err(
                format!("{key}.type"),
                format!("{:?} is not supported (physical, nameserver, route)", other),
            ))
        }
    }
    Ok(())
}

fn parse_physical(key: &str, m: &Mapping, cx: &mut Cx) -> Result<Nic, CloudInitError> {
    let name = m.get("name").ok_or_else(|| cx.err(format!("{key}.name"), "missing"))?;
    let name = cx.string(name, &format!("{key}.name"))?;
    let nic_name: crate::types::NicName =
        name.parse().map_err(|e| cx.err(format!("{key}.name"), format!("{e}")))?;
    let mut nic = Nic::new(name.clone());
    let mut subnets = None;
    for (k, v) in cx.entries(m, key) {
        let fkey = format!("{key}.{k}");
        match k.as_str() {
            "type" | "name" => {}
            "mac_address" => {
                let s = cx.string(v, &fkey)?;
                nic.mac = Some(s.trim().parse().map_err(|e| cx.err(&fkey, format!("{e}")))?);
            }
            "mtu" => nic.mtu = Some(cx.uint(v, &fkey)?),
            "wakeonlan" => nic.wakeonlan = cx.boolean(v, &fkey)?,
            "subnets" => subnets = Some(v),
            "accept-ra" | "params" => cx.warn(&fkey, "not supported, ignored"),
            _ => cx.warn(&fkey, "unknown key, ignored"),
        }
    }
    // With a MAC the link is matched on it and renamed (cloud-init renames by MAC too);
    // without, it is matched by name.
    if nic.mac.is_some() {
        nic.set_name = Some(nic_name);
    } else {
        nic.match_name = Some(nic_name);
    }
    if let Some(v) = subnets {
        let Value::Sequence(items) = v else {
            return Err(
                cx.err(format!("{key}.subnets"), format!("expected a list, got {}", kind(v)))
            );
        };
        for (i, s) in items.iter().enumerate() {
            parse_subnet(&format!("{key}.subnets[{i}]"), s, cx, &mut nic)?;
        }
    }
    Ok(nic)
}

fn parse_subnet(key: &str, v: &Value, cx: &mut Cx, nic: &mut Nic) -> Result<(), CloudInitError> {
    let m = cx.mapping(v, key)?;
    let tkey = format!("{key}.type");
    let ty = m.get("type").ok_or_else(|| cx.err(&tkey, "missing"))?;
    let ty = cx.string(ty, &tkey)?;
    let is_static = match ty.as_str() {
        "static" | "static6" => true,
        "dhcp" | "dhcp4" => {
            nic.dhcp4 = true;
            false
        }
        "dhcp6" | "ipv6_dhcpv6-stateful" => {
            nic.dhcp6 = true;
            false
        }
        // router advertisements: networkd's default, nothing to write
        "ipv6_slaac" | "ipv6_dhcpv6-stateless" | "manual" => false,
        other => {
            return Err(cx.err(
                &tkey,
                format!("{other:?} is not supported (static, static6, dhcp, dhcp4, dhcp6, ipv6_slaac, manual)"),
            ))
        }
    };
    let text = |k: &str, cx: &Cx| -> Result<Option<String>, CloudInitError> {
        m.get(k)
            .map(|v| cx.string(v, &format!("{key}.{k}")).map(|s| s.trim().to_owned()))
            .transpose()
    };
    if is_static {
        let akey = format!("{key}.address");
        let addr =
            text("address", cx)?.ok_or_else(|| cx.err(&akey, "missing for a static subnet"))?;
        let prefix = m.get("prefix").map(|p| cx.uint(p, &format!("{key}.prefix"))).transpose()?;
        let netmask = text("netmask", cx)?;
        let a = parse_address(&addr, netmask.as_deref(), prefix).map_err(|p| cx.err(&akey, p))?;
        nic.addresses.push(a);
    }
    for (k, v) in cx.entries(m, key) {
        let fkey = format!("{key}.{k}");
        match k.as_str() {
            "type" | "address" | "netmask" | "prefix" => {}
            "gateway" => set_gateway(nic, &cx.string(v, &fkey)?, &fkey, cx)?,
            "dns_nameservers" => {
                for (i, s) in cx.strings(v, &fkey)?.iter().enumerate() {
                    nic.nameservers.push(parse_ip(s, &format!("{fkey}[{i}]"), cx)?);
                }
            }
            "dns_search" => {
                for (i, s) in cx.strings(v, &fkey)?.iter().enumerate() {
                    nic.search.push(
                        s.trim()
                            .parse()
                            .map_err(|e| cx.err(format!("{fkey}[{i}]"), format!("{e}")))?,
                    );
                }
            }
            "routes" => {
                let Value::Sequence(items) = v else {
                    return Err(cx.err(&fkey, format!("expected a list, got {}", kind(v))));
                };
                for (i, r) in items.iter().enumerate() {
                    let rkey = format!("{fkey}[{i}]");
                    let rm = cx.mapping(r, &rkey)?;
                    nic.routes.push(parse_route(&rkey, rm, cx)?);
                }
            }
            "metric" | "broadcast" | "scope" | "pointopoint" | "control" => {
                cx.warn(&fkey, "not supported, ignored")
            }
            _ => cx.warn(&fkey, "unknown key, ignored"),
        }
    }
    Ok(())
}

fn set_gateway(nic: &mut Nic, s: &str, key: &str, cx: &Cx) -> Result<(), CloudInitError> {
    match parse_ip(s, key, cx)? {
        IpAddr::V4(g) => match nic.gateway4 {
            Some(old) if old != g => {
                Err(cx.err(key, format!("a second IPv4 gateway {g} (already {old})")))
            }
            _ => {
                nic.gateway4 = Some(g);
                Ok(())
            }
        },
        IpAddr::V6(g) => match nic.gateway6 {
            Some(old) if old != g => {
                Err(cx.err(key, format!("a second IPv6 gateway {g} (already {old})")))
            }
            _ => {
                nic.gateway6 = Some(g);
                Ok(())
            }
        },
    }
}

fn parse_ip(s: &str, key: &str, cx: &Cx) -> Result<IpAddr, CloudInitError> {
    s.trim().parse().map_err(|_| cx.err(key, format!("{:?} is not an IP address", s)))
}

fn parse_nameserver(
    key: &str,
    m: &Mapping,
    cx: &mut Cx,
) -> Result<(Vec<IpAddr>, Vec<crate::types::Hostname>), CloudInitError> {
    let mut ns = Vec::new();
    let mut search = Vec::new();
    for (k, v) in cx.entries(m, key) {
        let fkey = format!("{key}.{k}");
        match k.as_str() {
            "type" => {}
            "address" => {
                for (i, s) in cx.strings(v, &fkey)?.iter().enumerate() {
                    ns.push(parse_ip(s, &format!("{fkey}[{i}]"), cx)?);
                }
            }
            "search" => {
                for (i, s) in cx.strings(v, &fkey)?.iter().enumerate() {
                    search.push(
                        s.trim()
                            .parse()
                            .map_err(|e| cx.err(format!("{fkey}[{i}]"), format!("{e}")))?,
                    );
                }
            }
            "interface" => cx.warn(&fkey, "per-interface nameservers are given to every NIC"),
            _ => cx.warn(&fkey, "unknown key, ignored"),
        }
    }
    Ok((ns, search))
}

/// A route: `network` (or `destination`) with `netmask` or `prefix`, `gateway`, `metric`.
fn parse_route(key: &str, m: &Mapping, cx: &mut Cx) -> Result<Route, CloudInitError> {
    let mut dest = None;
    let mut netmask = None;
    let mut prefix = None;
    let mut via = None;
    let mut metric = None;
    for (k, v) in cx.entries(m, key) {
        let fkey = format!("{key}.{k}");
        match k.as_str() {
            "type" => {}
            "network" | "destination" => dest = Some((fkey.clone(), cx.string(v, &fkey)?)),
            "netmask" => netmask = Some(cx.string(v, &fkey)?),
            "prefix" => prefix = Some(cx.uint(v, &fkey)?),
            "gateway" => via = Some(parse_ip(&cx.string(v, &fkey)?, &fkey, cx)?),
            "metric" => metric = Some(cx.uint(v, &fkey)?),
            _ => cx.warn(&fkey, "unknown key, ignored"),
        }
    }
    let (dkey, dest) = dest.ok_or_else(|| cx.err(format!("{key}.network"), "missing"))?;
    let to = parse_address(dest.trim(), netmask.as_deref().map(str::trim), prefix)
        .map_err(|p| cx.err(&dkey, p))?
        .network();
    Ok(Route { to, via, metric })
}

/// Gives global nameservers to every NIC (cloud-init's networkd renderer writes them into every
/// `.network` file) and each global route to the NIC whose static network holds its gateway.
fn apply_globals(cfg: &mut NetworkConfig, g: Globals, cx: &Cx) -> Result<(), CloudInitError> {
    for nic in &mut cfg.nics {
        for ns in &g.nameservers {
            if !nic.nameservers.contains(ns) {
                nic.nameservers.push(*ns);
            }
        }
        for s in &g.search {
            if !nic.search.contains(s) {
                nic.search.push(s.clone());
            }
        }
    }
    for (key, route) in g.routes {
        let holder = route.via.and_then(|via| {
            cfg.nics.iter_mut().find(|n| n.addresses.iter().any(|a| a.contains(via)))
        });
        match holder {
            Some(nic) => nic.routes.push(route),
            None => {
                return Err(cx.err(
                    format!("{key}.gateway"),
                    "no NIC has a static address on the gateway's network",
                ))
            }
        }
    }
    Ok(())
}

/// An interface address from cloud-init's forms: `addr/prefix`, `addr/netmask`, `addr` with a
/// `prefix` or `netmask` key, or a bare address (cloud-init's defaults: /24 for IPv4, /64 for
/// IPv6).
pub(crate) fn parse_address(
    addr: &str,
    netmask: Option<&str>,
    prefix: Option<u32>,
) -> Result<IpCidr, String> {
    let (ip_s, mask_s) = match addr.split_once('/') {
        Some((a, m)) => (a, Some(m)),
        None => (addr, None),
    };
    let ip: IpAddr = ip_s.trim().parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
    let prefix = match (mask_s, prefix, netmask) {
        (Some(m), _, _) => mask_to_prefix(ip, m)?,
        (None, Some(p), _) => p,
        (None, None, Some(m)) => mask_to_prefix(ip, m)?,
        (None, None, None) => {
            if ip.is_ipv4() {
                24
            } else {
                64
            }
        }
    };
    let prefix = u8::try_from(prefix).map_err(|_| format!("prefix {prefix} is too long"))?;
    IpCidr::new(ip, prefix).map_err(|e| e.to_string())
}

/// `24`, `255.255.255.0` or `ffff:ffff:ffff:ffff::` as a prefix length for `ip`'s family.
fn mask_to_prefix(ip: IpAddr, mask: &str) -> Result<u32, String> {
    let mask = mask.trim();
    if let Ok(n) = mask.parse::<u32>() {
        return Ok(n);
    }
    let bad = || format!("{mask:?} is not a netmask for {ip}");
    let bits: u128 = match (ip, mask.parse::<IpAddr>().map_err(|_| bad())?) {
        (IpAddr::V4(_), IpAddr::V4(m)) => u128::from(u32::from(m)) << 96,
        (IpAddr::V6(_), IpAddr::V6(m)) => u128::from(m),
        _ => return Err(bad()),
    };
    let ones = bits.leading_ones();
    if bits.checked_shl(ones).unwrap_or(0) != 0 {
        return Err(format!("{mask:?} is not a contiguous netmask"));
    }
    Ok(ones)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NetworkConfig, String> {
        parse_network_config(text, "network-config")
            .map(|d| d.network.expect("a network"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn addresses_in_every_form() {
        let a = |s, m, p| parse_address(s, m, p).map(|c| c.to_string());
        assert_eq!(a("10.0.0.5/24", None, None).unwrap(), "10.0.0.5/24");
        assert_eq!(a("10.0.0.5/255.255.0.0", None, None).unwrap(), "10.0.0.5/16");
        assert_eq!(a("10.0.0.5", Some("255.255.255.128"), None).unwrap(), "10.0.0.5/25");
        assert_eq!(a("10.0.0.5", None, Some(8)).unwrap(), "10.0.0.5/8");
        assert_eq!(a("10.0.0.5", None, None).unwrap(), "10.0.0.5/24");
        assert_eq!(a("2001:db8::5", None, None).unwrap(), "2001:db8::5/64");
        assert_eq!(
            a("2001:db8::5", Some("ffff:ffff:ffff:ff00::"), None).unwrap(),
            "2001:db8::5/56"
        );
        assert!(a("10.0.0.5", Some("255.0.255.0"), None).unwrap_err().contains("contiguous"));
        assert!(a("10.0.0.5", Some("ffff::"), None).unwrap_err().contains("not a netmask"));
        assert!(a("10.0.0.5/33", None, None).is_err());
        assert!(a("10.0.0.5", None, Some(4_000_000_000)).unwrap_err().contains("too long"));
        assert!(a("10.0.0.300", None, None).unwrap_err().contains("not an IP address"));
    }

    #[test]
    fn static_dhcp_dns_and_routes() {
        let n = parse(
            "version: 1\nconfig:\n- type: physical\n  name: eth0\n  mac_address: '52:54:00:12:34:00'\n  mtu: 1400\n  subnets:\n  - type: static\n    address: 10.0.0.5\n    netmask: 255.255.255.0\n    gateway: 10.0.0.1\n    dns_nameservers: [10.0.0.2]\n    routes: [{network: 192.168.0.0, prefix: 16, gateway: 10.0.0.254, metric: 50}]\n  - type: dhcp6\n- type: physical\n  name: eth1\n  subnets: [{type: dhcp}]\n- type: nameserver\n  address: [10.0.0.3]\n  search: example.org\n",
        )
        .unwrap();
        let e0 = &n.nics[0];
        assert_eq!(e0.set_name.as_ref().unwrap().as_str(), "eth0");
        assert_eq!(e0.addresses[0].to_string(), "10.0.0.5/24");
        assert_eq!(e0.gateway4.unwrap().to_string(), "10.0.0.1");
        assert_eq!(e0.routes[0].to.to_string(), "192.168.0.0/16");
        assert_eq!(e0.routes[0].metric, Some(50));
        assert!(e0.dhcp6 && !e0.dhcp4);
        assert_eq!(e0.nameservers.len(), 2, "own and global");
        let e1 = &n.nics[1];
        assert!(e1.dhcp4 && e1.mac.is_none());
        assert_eq!(e1.match_name.as_ref().unwrap().as_str(), "eth1");
        assert_eq!(e1.search[0].as_str(), "example.org");
    }

    #[test]
    fn global_route_goes_to_the_gateways_nic() {
        let base = "version: 1\nconfig:\n- {type: physical, name: eth0, subnets: [{type: static, address: 10.0.0.5/24}]}\n- {type: physical, name: eth1, subnets: [{type: static, address: 10.1.0.5/24}]}\n";
        let n = parse(&format!(
            "{base}- {{type: route, destination: 172.16.0.0/12, gateway: 10.1.0.1}}\n"
        ))
        .unwrap();
        assert!(n.nics[0].routes.is_empty());
        assert_eq!(n.nics[1].routes[0].to.to_string(), "172.16.0.0/12");
        let e = parse(&format!(
            "{base}- {{type: route, destination: 172.16.0.0/12, gateway: 10.9.0.1}}\n"
        ))
        .unwrap_err();
        assert_eq!(e, "network-config: network.config[2].gateway: no NIC has a static address on the gateway's network");
    }

    #[test]
    fn refusals_name_the_key() {
        let cases = [
            ("- {type: bond, name: bond0}", "network-config: network.config[0].type: bond is not supported"),
            ("- {type: bridge, name: br0}", "network-config: network.config[0].type: bridge is not supported"),
            ("- {type: vlan, name: eth0.5, vlan_link: eth0, vlan_id: 5}", "network-config: network.config[0].type: vlan is not supported"),
            ("- {type: wifi}", "network-config: network.config[0].type: \"wifi\" is not supported"),
            ("- {name: eth0}", "network-config: network.config[0].type: missing"),
            ("- {type: physical}", "network-config: network.config[0].name: missing"),
            ("- {type: physical, name: ../../etc}", "network-config: network.config[0].name: invalid interface name"),
            ("- {type: physical, name: eth0, mac_address: 'zz:00:00:00:00:00'}", "network-config: network.config[0].mac_address: invalid MAC address"),
            ("- {type: physical, name: eth0, mtu: 99999999999}", "network-config: network.config[0].mtu: expected a non-negative integer"),
            ("- {type: physical, name: eth0, mtu: 20}", "network-config: network.config.eth0.mtu: 20 is outside"),
            ("- {type: physical, name: eth0, subnets: [{type: static}]}", "network-config: network.config[0].subnets[0].address: missing"),
            ("- {type: physical, name: eth0, subnets: [{type: static, address: 10.0.0.1/24, gateway: 10.0.0.999}]}", "network-config: network.config[0].subnets[0].gateway: \"10.0.0.999\" is not an IP address"),
            ("- {type: physical, name: eth0, subnets: [{type: static, address: 10.0.0.1/24, gateway: 10.0.0.2}, {type: static, address: 10.1.0.1/24, gateway: 10.1.0.2}]}", "network-config: network.config[0].subnets[1].gateway: a second IPv4 gateway"),
            ("- {type: physical, name: eth0, subnets: [{type: static, address: 10.0.0.1/24, routes: [{gateway: 10.0.0.2}]}]}", "network-config: network.config[0].subnets[0].routes[0].network: missing"),
            ("- {type: physical, name: eth0, subnets: [{type: static, address: 10.0.0.1/24, routes: [{network: 10.2.0.0/16, gateway: '2001:db8::1'}]}]}", "network-config: network.config.eth0.routes[0].via: 2001:db8::1 is not the same address family"),
            ("- {type: physical, name: eth0, subnets: [{type: dhcp7}]}", "network-config: network.config[0].subnets[0].type: \"dhcp7\" is not supported"),
            ("- {type: physical, name: eth0, subnets: [{type: static, address: 10.0.0.1/24, dns_search: [bad_domain]}]}", "network-config: network.config[0].subnets[0].dns_search[0]: invalid hostname"),
            ("- {type: nameserver, address: [nonsense]}", "network-config: network.config[0].address[0]: \"nonsense\" is not an IP address"),
            ("- {type: physical, name: eth0}\n- {type: physical, name: eth0}", "network-config: network.config.eth0: duplicate NIC id"),
            ("- 7", "network-config: network.config[0]: expected a mapping, got a number"),
        ];
        for (cfg, want) in cases {
            let e = parse(&format!("version: 1\nconfig:\n{cfg}\n")).unwrap_err();
            assert!(e.starts_with(want), "{cfg}:\n got  {e}\n want {want}");
        }
        let e = parse("version: 1\nconfig: {a: 1}\n").unwrap_err();
        assert_eq!(e, "network-config: network.config: expected a list, got a mapping");
        let e = parse("version: 3\n").unwrap_err();
        assert_eq!(e, "network-config: network.version: \"3\" is not supported (expected 1 or 2)");
        assert!(parse("version: [\n")
            .unwrap_err()
            .starts_with("network-config: (document): not valid YAML"));
        let many =
            format!("version: 1\nconfig:\n{}", "- {type: nameserver}\n".repeat(MAX_ENTRIES + 1));
        assert!(parse(&many).unwrap_err().contains("more than 1024"));
    }

    #[test]
    fn dispatch_v2_wrapped_and_disabled() {
        let n = parse("network:\n  version: 2\n  ethernets:\n    eth0: {dhcp4: true}\n").unwrap();
        assert!(n.nics[0].dhcp4);
        let d = parse_network_config("network: {config: disabled}\n", "network-config").unwrap();
        assert!(d.network.is_none() && !d.warnings.is_empty());
        assert!(parse_network_config("", "network-config").unwrap().network.is_none());
        let e = parse("version: 2\nbonds: {bond0: {}}\n").unwrap_err();
        assert_eq!(
            e,
            "network-config: network.bonds: not supported (only ethernets); nothing applied"
        );
        let e = parse("config: []\n").unwrap_err();
        assert_eq!(e, "network-config: network.version: missing (expected 1 or 2)");
    }
}
