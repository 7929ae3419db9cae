//! The netplan v2 `network` document, as CAPV writes it into the metadata:
//!
//! ```yaml
//! network:
//!   version: 2
//!   ethernets:
//!     id0:
//!       match: {macaddress: "00:50:56:a5:00:01"}
//!       set-name: eth0
//!       wakeonlan: true
//!       dhcp4: false
//!       addresses: [10.0.0.5/24]
//!       gateway4: 10.0.0.1
//!       routes: [{to: 192.168.0.0/16, via: 10.0.0.254, metric: 100}]
//!       nameservers: {addresses: [10.0.0.2], search: [example.com]}
//!       mtu: 1500
//! ```
//!
//! Only `ethernets` is supported: a document with bonds, bridges or VLANs is an error rather
//! than half a network. Version 1 is not read (CAPV writes version 2).

use std::net::IpAddr;

use serde_yaml::Value;

use super::{show, CloudInitError, Cx};
use crate::steps::network::{NetworkConfig, Nic, Route};
use crate::types::IpCidr;

/// Parses the value of the metadata's `network` key. `Ok(None)` for `config: disabled`.
pub(crate) fn parse_network(
    v: &Value,
    cx: &mut Cx,
) -> Result<Option<NetworkConfig>, CloudInitError> {
    let mut m = cx.mapping(v, "network")?;
    // some writers nest it once more: network: {network: {version: 2, ...}}
    if let (Some(inner @ Value::Mapping(_)), None) = (m.get("network"), m.get("version")) {
        m = cx.mapping(inner, "network")?;
    }
    if m.get("config").and_then(Value::as_str) == Some("disabled") {
        cx.warn("network.config", "disabled: network left as the image has it");
        return Ok(None);
    }
    let version =
        m.get("version").ok_or_else(|| cx.err("network.version", "missing (expected 2)"))?;
    match version.as_u64() {
        Some(2) => {}
        Some(1) => {
            return Err(cx.err(
                "network.version",
                "netplan version 1 is not supported (CAPV writes version 2)",
            ))
        }
        _ => {
            return Err(cx.err(
                "network.version",
                format!("{} is not supported (expected 2)", show(version)),
            ))
        }
    }
    let mut cfg = NetworkConfig::default();
    for (k, v) in cx.entries(m, "network") {
        let key = format!("network.{k}");
        match k.as_str() {
            "version" => {}
            "ethernets" => {
                let eths = cx.mapping(v, &key)?;
                for (id, nv) in cx.entries(eths, &key) {
                    cfg.nics.push(parse_nic(&id, nv, cx)?);
                }
            }
            "renderer" => {}
            "bonds" | "bridges" | "vlans" | "wifis" | "tunnels" | "vrfs" | "modems" => {
                return Err(cx.err(&key, "not supported (only ethernets); nothing applied"));
            }
            _ => cx.warn(&key, "unknown key, ignored"),
        }
    }
    cfg.validate("network.ethernets").map_err(|e| cx.err(e.key, e.problem))?;
    Ok(Some(cfg))
}

fn parse_nic(id: &str, v: &Value, cx: &mut Cx) -> Result<Nic, CloudInitError> {
    let base = format!("network.ethernets.{id}");
    let m = cx.mapping(v, &base)?;
    let mut nic = Nic::new(id);
    let mut gateway4 = None;
    let mut gateway6 = None;
    for (k, v) in cx.entries(m, &base) {
        let key = format!("{base}.{k}");
        let bad = |e: crate::types::ValueError| cx.err(&key, e.to_string());
        match k.as_str() {
            "match" => parse_match(&mut nic, v, &key, cx)?,
            "set-name" => nic.set_name = Some(cx.string(v, &key)?.parse().map_err(bad)?),
            "wakeonlan" => nic.wakeonlan = cx.boolean(v, &key)?,
            "dhcp4" => nic.dhcp4 = cx.boolean(v, &key)?,
            "dhcp6" => nic.dhcp6 = cx.boolean(v, &key)?,
            "addresses" => nic.addresses = parse_addresses(v, &key, cx)?,
            "gateway4" => {
                let s = cx.string(v, &key)?;
                gateway4 = Some(
                    s.trim()
                        .parse()
                        .map_err(|_| cx.err(&key, format!("{s:?} is not an IPv4 address")))?,
                );
            }
            "gateway6" => {
                let s = cx.string(v, &key)?;
                gateway6 = Some(
                    s.trim()
                        .parse()
                        .map_err(|_| cx.err(&key, format!("{s:?} is not an IPv6 address")))?,
                );
            }
            "routes" => {
                let Value::Sequence(items) = v else {
                    return Err(
                        cx.err(&key, format!("expected a list of routes, got {}", super::kind(v)))
                    );
                };
                for (i, r) in items.iter().enumerate() {
                    nic.routes.push(parse_route(&format!("{key}[{i}]"), r, cx)?);
                }
            }
            "nameservers" => parse_nameservers(&mut nic, v, &key, cx)?,
            "mtu" => nic.mtu = Some(cx.uint(v, &key)?),
            "optional" | "critical" | "dhcp-identifier" => {}
            "dhcp4-overrides" | "dhcp6-overrides" | "accept-ra" | "link-local" | "ipv6-privacy"
            | "macaddress" => cx.warn(&key, "not supported, ignored"),
            _ => cx.warn(&key, "unknown key, ignored"),
        }
    }
    nic.gateway4 = gateway4;
    nic.gateway6 = gateway6;
    if nic.mac.is_none() && nic.match_name.is_none() {
        // netplan: without a match, the id is the interface name
        nic.match_name = Some(id.parse().map_err(|e| {
            cx.err(
                format!("{base}.match"),
                format!("no match given and the id is not an interface name: {e}"),
            )
        })?);
    }
    Ok(nic)
}

/// `match:` of an ethernet: `macaddress` and `name` (driver matching is not supported).
fn parse_match(nic: &mut Nic, v: &Value, key: &str, cx: &mut Cx) -> Result<(), CloudInitError> {
    let mm = cx.mapping(v, key)?;
    for (mk, mv) in cx.entries(mm, key) {
        let mkey = format!("{key}.{mk}");
        match mk.as_str() {
            "macaddress" => {
                nic.mac = Some(
                    cx.string(mv, &mkey)?
                        .trim()
                        .parse()
                        .map_err(|e| cx.err(&mkey, format!("{e}")))?,
                )
            }
            "name" => {
                nic.match_name =
                    Some(cx.string(mv, &mkey)?.parse().map_err(|e| cx.err(&mkey, format!("{e}")))?)
            }
            "driver" => cx.warn(&mkey, "matching by driver is not supported, ignored"),
            _ => cx.warn(&mkey, "unknown key, ignored"),
        }
    }
    Ok(())
}

/// `addresses:` of an ethernet: a list of `address/prefix` strings.
fn parse_addresses(v: &Value, key: &str, cx: &mut Cx) -> Result<Vec<IpCidr>, CloudInitError> {
    let Value::Sequence(items) = v else {
        return Err(cx.err(key, format!("expected a list of addresses, got {}", super::kind(v))));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, a) in items.iter().enumerate() {
        let akey = format!("{key}[{i}]");
        let s = match a {
            Value::String(s) => s.trim().to_owned(),
            other => {
                return Err(cx.err(
                    &akey,
                    format!("expected \"address/prefix\", got {}", super::kind(other)),
                ))
            }
        };
        out.push(s.parse().map_err(|e| cx.err(&akey, format!("{e}")))?);
    }
    Ok(out)
}

/// `nameservers:` of an ethernet: `addresses` and `search`.
fn parse_nameservers(
    nic: &mut Nic,
    v: &Value,
    key: &str,
    cx: &mut Cx,
) -> Result<(), CloudInitError> {
    let nm = cx.mapping(v, key)?;
    for (nk, nv) in cx.entries(nm, key) {
        let nkey = format!("{key}.{nk}");
        match nk.as_str() {
            "addresses" => {
                for (i, s) in cx.strings(nv, &nkey)?.iter().enumerate() {
                    nic.nameservers.push(s.trim().parse().map_err(|_| {
                        cx.err(format!("{nkey}[{i}]"), format!("{s:?} is not an IP address"))
                    })?);
                }
            }
            "search" => {
                for (i, s) in cx.strings(nv, &nkey)?.iter().enumerate() {
                    nic.search.push(
                        s.trim()
                            .parse()
                            .map_err(|e| cx.err(format!("{nkey}[{i}]"), format!("{e}")))?,
                    );
                }
            }
            _ => cx.warn(&nkey, "unknown key, ignored"),
        }
    }
    Ok(())
}

fn parse_route(key: &str, v: &Value, cx: &mut Cx) -> Result<Route, CloudInitError> {
    let m = cx.mapping(v, key)?;
    let mut to = None;
    let mut via: Option<IpAddr> = None;
    let mut metric = None;
    for (k, v) in cx.entries(m, key) {
        let rkey = format!("{key}.{k}");
        match k.as_str() {
            "to" => to = Some(cx.string(v, &rkey)?.trim().to_owned()),
            "via" => {
                let s = cx.string(v, &rkey)?;
                via = Some(
                    s.trim()
                        .parse()
                        .map_err(|_| cx.err(&rkey, format!("{s:?} is not an IP address")))?,
                );
            }
            "metric" => metric = Some(cx.uint(v, &rkey)?),
            "on-link" | "table" | "scope" | "type" | "from" => {
                cx.warn(&rkey, "not supported, ignored")
            }
            _ => cx.warn(&rkey, "unknown key, ignored"),
        }
    }
    let to = to.ok_or_else(|| cx.err(format!("{key}.to"), "missing"))?;
    let to = if to == "default" {
        let v6 = via.is_some_and(|v| v.is_ipv6());
        IpCidr::new(if v6 { IpAddr::V6(0u128.into()) } else { IpAddr::V4(0u32.into()) }, 0)
            .map_err(|e| cx.err(format!("{key}.to"), e.to_string()))?
    } else {
        IpCidr::parse_or_host(&to).map_err(|e| cx.err(format!("{key}.to"), e.to_string()))?
    };
    Ok(Route { to, via, metric })
}

#[cfg(test)]
mod tests {
    use super::super::parse_metadata;

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("addresses: [10.0.0.5/24, 10.0.0.300/24]", "metadata: network.ethernets.id0.addresses[1]: invalid CIDR \"10.0.0.300/24\""),
            ("match: {macaddress: 'zz:00:00:00:00:01'}", "metadata: network.ethernets.id0.match.macaddress: invalid MAC address"),
            ("gateway4: 2001:db8::1", "metadata: network.ethernets.id0.gateway4: \"2001:db8::1\" is not an IPv4 address"),
            ("routes: [{to: 10.1.0.0/16, via: 2001:db8::1}]", "metadata: network.ethernets.id0.routes[0].via: 2001:db8::1 is not the same address family"),
            ("mtu: 20", "metadata: network.ethernets.id0.mtu: 20 is outside 68-65535"),
            ("nameservers: {search: [bad_domain]}", "metadata: network.ethernets.id0.nameservers.search[0]: invalid hostname"),
            ("set-name: 'this-name-is-too-long'", "metadata: network.ethernets.id0.set-name: invalid interface name"),
        ];
        for (nic, want) in cases {
            let md = format!("network:\n  version: 2\n  ethernets:\n    id0:\n      match: {{macaddress: '00:50:56:00:00:01'}}\n      {nic}\n");
            let md = md.replace(
                "      match: {macaddress: '00:50:56:00:00:01'}\n      match:",
                "      match:",
            );
            let e = parse_metadata(&md).unwrap_err().to_string();
            assert!(e.starts_with(want), "{nic}: {e}");
        }
    }

    #[test]
    fn duplicates_and_unsupported() {
        let dup = "network:\n  version: 2\n  ethernets:\n    a: {match: {macaddress: '00:50:56:00:00:01'}, set-name: eth0}\n    b: {match: {macaddress: '00:50:56:00:00:02'}, set-name: eth0}\n";
        let e = parse_metadata(dup).unwrap_err().to_string();
        assert_eq!(e, "metadata: network.ethernets.b.set-name: interface name eth0 is also used by network.ethernets.a");
        let dupmac = dup
            .replace("00:02", "00:01")
            .replace("set-name: eth0}\n    b", "set-name: eth9}\n    b");
        assert!(parse_metadata(&dupmac).unwrap_err().to_string().contains("is also matched by"));
        let e =
            parse_metadata("network: {version: 2, bonds: {bond0: {}}}").unwrap_err().to_string();
        assert_eq!(e, "metadata: network.bonds: not supported (only ethernets); nothing applied");
        let e = parse_metadata("network: {version: 1, config: []}").unwrap_err().to_string();
        assert!(e.contains("version 1 is not supported"));
        let md = parse_metadata("network: {version: 2, ethernets: {eth0: {dhcp4: yes, foo: 1}}}")
            .unwrap();
        let n = md.network.unwrap();
        assert_eq!(n.nics[0].match_name.as_ref().unwrap().as_str(), "eth0");
        assert!(md.warnings.iter().any(|w| w.contains("network.ethernets.eth0.foo")));
    }
}
