//! OpenStack's config drive documents: `openstack/latest/meta_data.json` (instance id, host
//! name, SSH keys) and `network_data.json` (links, networks, services), read into the agent's
//! own metadata and network model as cloud-init's `convert_net_json` reads them.
//!
//! `network_data.json`:
//!
//! ```json
//! {"links": [{"id": "tap1", "type": "phy", "ethernet_mac_address": "fa:16:3e:00:00:01", "mtu": 1450}],
//!  "networks": [{"id": "net0", "type": "ipv4", "link": "tap1", "ip_address": "10.0.0.5",
//!                "netmask": "255.255.255.0",
//!                "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.0.1"}]},
//!               {"id": "net1", "type": "ipv6_dhcp", "link": "tap1"}],
//!  "services": [{"type": "dns", "address": "10.0.0.2"}]}
//! ```
//!
//! Physical link types are cloud-init's list (`phy`, `ethernet`, `ovs`, `tap`, `vif`, …).
//! Refused, with the key named and nothing applied: `bond` and `vlan` links (the agent
//! configures physical NICs only), unknown link or network types. Deviation from cloud-init,
//! on purpose: a network's own `services` DNS servers go on its NIC (cloud-init drops them and
//! keeps only the global ones, which both give to every NIC).

use std::net::IpAddr;

use serde_yaml::{Mapping, Value};

use super::netv1::parse_address;
use super::{kind, CloudInitError, Cx};
use crate::steps::network::{NetworkConfig, Nic, Route};
use crate::types::{Hostname, InstanceId};

/// Path of the metadata on the drive.
pub const META_DATA: &str = "openstack/latest/meta_data.json";
/// Path of the network data on the drive.
pub const NETWORK_DATA: &str = "openstack/latest/network_data.json";
/// Path of the user-data on the drive.
pub const USER_DATA: &str = "openstack/latest/user_data";
/// Path of the vendor-data on the drive.
pub const VENDOR_DATA: &str = "openstack/latest/vendor_data.json";

/// Link types cloud-init treats as a physical NIC (`KNOWN_PHYSICAL_TYPES`).
const PHYSICAL_TYPES: &[&str] = &[
    "phy",
    "ethernet",
    "bridge",
    "dvs",
    "hw_veb",
    "hyperv",
    "ovs",
    "tap",
    "vhostuser",
    "vif",
    "bgpovs",
    "cascading",
];

/// Largest number of links, networks or services we read.
const MAX_ITEMS: usize = 1024;

/// `meta_data.json`, in the agent's types.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenStackMetadata {
    /// `uuid`.
    pub instance_id: Option<InstanceId>,
    /// `hostname`.
    pub hostname: Option<Hostname>,
    /// `public_keys` values, else `keys[].data` of type `ssh`.
    pub public_keys: Vec<String>,
    /// Keys ignored and other remarks.
    pub warnings: Vec<String>,
}

/// Parses a JSON document that must be an object, through the same value helpers as YAML.
fn json_document(cx: &Cx, text: &str) -> Result<Mapping, CloudInitError> {
    if text.len() > super::MAX_DOCUMENT_BYTES {
        return Err(
            cx.err("(document)", format!("larger than {} bytes", super::MAX_DOCUMENT_BYTES))
        );
    }
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| cx.err("(document)", format!("not valid JSON: {e}")))?;
    let v: Value = serde_yaml::to_value(v)
        .map_err(|e| cx.err("(document)", format!("not representable: {e}")))?;
    match v {
        Value::Mapping(m) => Ok(m),
        other => Err(cx.err("(document)", format!("top level is {}, not an object", kind(&other)))),
    }
}

/// Parses `meta_data.json`.
pub fn parse_meta_data(text: &str) -> Result<OpenStackMetadata, CloudInitError> {
    let mut cx = Cx::new(META_DATA);
    let doc = json_document(&cx, text)?;
    let mut md = OpenStackMetadata::default();
    let mut listed_keys = Vec::new();
    for (k, v) in cx.entries(&doc, "(document)") {
        match k.as_str() {
            "uuid" => {
                let s = cx.string(v, &k)?;
                md.instance_id = Some(s.trim().parse().map_err(|e| cx.err(&k, format!("{e}")))?);
            }
            "hostname" => {
                let s = cx.string(v, &k)?;
                md.hostname = Some(s.trim().parse().map_err(|e| cx.err(&k, format!("{e}")))?);
            }
            "public_keys" => match v {
                Value::Mapping(keys) => {
                    for (name, key) in cx.entries(keys, &k) {
                        md.public_keys.extend(cx.strings(key, &format!("public_keys.{name}"))?);
                    }
                }
                other => md.public_keys.extend(cx.strings(other, &k)?),
            },
            "keys" => listed_keys = ssh_keys(v, &mut cx)?,
            "name" | "availability_zone" | "launch_index" | "meta" | "random_seed"
            | "project_id" | "files" | "admin_pass" | "devices" | "dedicated_cpus" => {}
            _ => cx.warn(&k, "unknown metadata key, ignored"),
        }
    }
    for key in listed_keys {
        if !md.public_keys.contains(&key) {
            md.public_keys.push(key);
        }
    }
    for (i, key) in md.public_keys.iter().enumerate() {
        if key.contains(['\n', '\r']) || key.trim().is_empty() {
            return Err(cx.err(format!("public_keys[{i}]"), "an SSH key is one non-empty line"));
        }
    }
    md.warnings = cx.warnings;
    Ok(md)
}

/// `keys: [{"type": "ssh", "data": "ssh-ed25519 …", "name": "k"}]`: the SSH ones' data.
fn ssh_keys(v: &Value, cx: &mut Cx) -> Result<Vec<String>, CloudInitError> {
    let items = list(v, "keys", cx)?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("keys[{i}]");
        let m = cx.mapping(item, &key)?;
        let ty = m.get("type").map(|t| cx.string(t, &format!("{key}.type"))).transpose()?;
        if ty.as_deref().is_some_and(|t| t != "ssh") {
            continue;
        }
        if let Some(d) = m.get("data") {
            out.push(cx.string(d, &format!("{key}.data"))?.trim().to_owned());
        }
    }
    Ok(out)
}

fn list<'a>(v: &'a Value, key: &str, cx: &Cx) -> Result<&'a [Value], CloudInitError> {
    match v {
        Value::Sequence(items) if items.len() > MAX_ITEMS => {
            Err(cx.err(key, format!("{} entries, more than {MAX_ITEMS}", items.len())))
        }
        Value::Sequence(items) => Ok(items),
        Value::Null => Ok(&[]),
        other => Err(cx.err(key, format!("expected a list, got {}", kind(other)))),
    }
}

/// Parses `network_data.json` into a validated network; `Ok(None)` when it has no links.
pub fn parse_network_data(text: &str) -> Result<Option<NetworkConfig>, CloudInitError> {
    let mut cx = Cx::new(NETWORK_DATA);
    let doc = json_document(&cx, text)?;
    let empty = Value::Null;
    let links = list(doc.get("links").unwrap_or(&empty), "links", &cx)?;
    let networks = list(doc.get("networks").unwrap_or(&empty), "networks", &cx)?;
    let services = list(doc.get("services").unwrap_or(&empty), "services", &cx)?;
    for (k, _) in cx.entries(&doc, "(document)") {
        if !matches!(k.as_str(), "links" | "networks" | "services") {
            cx.warn(&k, "unknown key, ignored");
        }
    }
    let mut cfg = NetworkConfig::default();
    for (i, l) in links.iter().enumerate() {
        cfg.nics.push(parse_link(&format!("links[{i}]"), l, &mut cx)?);
    }
    for (i, n) in networks.iter().enumerate() {
        parse_net(&format!("networks[{i}]"), n, &mut cx, &mut cfg)?;
    }
    let global_dns = dns_services(services, "services", &mut cx)?;
    for nic in &mut cfg.nics {
        for ns in &global_dns {
            if !nic.nameservers.contains(ns) {
                nic.nameservers.push(*ns);
            }
        }
    }
    if cfg.nics.is_empty() {
        return Ok(None);
    }
    cfg.validate("links").map_err(|e| cx.err(e.key, e.problem))?;
    Ok(Some(cfg))
}

/// The trimmed text of `m[k]`; `None` when absent or null. Errors name `base.k`.
fn opt_text(m: &Mapping, base: &str, k: &str, cx: &Cx) -> Result<Option<String>, CloudInitError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => cx.string(v, &format!("{base}.{k}")).map(|s| Some(s.trim().to_owned())),
    }
}

fn parse_link(key: &str, v: &Value, cx: &mut Cx) -> Result<Nic, CloudInitError> {
    let m = cx.mapping(v, key)?;
    let field = |k: &str, cx: &Cx| opt_text(m, key, k, cx);
    let id = field("id", cx)?.ok_or_else(|| cx.err(format!("{key}.id"), "missing"))?;
    let ty = field("type", cx)?.unwrap_or_default();
    match ty.as_str() {
        t if PHYSICAL_TYPES.contains(&t) => {}
        "bond" => {
            return Err(cx.err(
                format!("{key}.type"),
                "bond is not supported (bonds are out of scope); nothing applied",
            ))
        }
        "vlan" => {
            return Err(cx.err(
                format!("{key}.type"),
                "vlan is not supported (the agent configures physical NICs only); nothing applied",
            ))
        }
        other => {
            return Err(cx.err(format!("{key}.type"), format!("{other:?} is not a known link type")))
        }
    }
    let mut nic = Nic::new(id.clone());
    let name = field("name", cx)?
        .map(|n| n.parse().map_err(|e| cx.err(format!("{key}.name"), format!("{e}"))))
        .transpose()?;
    let mac_key = format!("{key}.ethernet_mac_address");
    nic.mac = field("ethernet_mac_address", cx)?
        .map(|s| s.parse().map_err(|e| cx.err(&mac_key, format!("{e}"))))
        .transpose()?;
    match (nic.mac.is_some(), name) {
        (true, name) => nic.set_name = name,
        (false, Some(name)) => nic.match_name = Some(name),
        (false, None) => {
            return Err(cx.err(mac_key, "missing (a link needs a MAC address or a name)"))
        }
    }
    if let Some(mtu) = m.get("mtu").filter(|v| !v.is_null()) {
        nic.mtu = Some(cx.uint(mtu, &format!("{key}.mtu"))?);
    }
    Ok(nic)
}

fn parse_net(
    key: &str,
    v: &Value,
    cx: &mut Cx,
    cfg: &mut NetworkConfig,
) -> Result<(), CloudInitError> {
    let m = cx.mapping(v, key)?;
    let text = |k: &str, cx: &Cx| opt_text(m, key, k, cx);
    let link = text("link", cx)?.ok_or_else(|| cx.err(format!("{key}.link"), "missing"))?;
    let Some(idx) = cfg.nics.iter().position(|n| n.id == link) else {
        return Err(cx.err(format!("{key}.link"), format!("no link has the id {link:?}")));
    };
    let ty = text("type", cx)?.ok_or_else(|| cx.err(format!("{key}.type"), "missing"))?;
    let routes = list(m.get("routes").unwrap_or(&Value::Null), &format!("{key}.routes"), cx)?;
    let dns = list(m.get("services").unwrap_or(&Value::Null), &format!("{key}.services"), cx)?;
    let dns = dns_services(dns, &format!("{key}.services"), cx)?;
    let nic = &mut cfg.nics[idx];
    match ty.as_str() {
        "ipv4" | "ipv6" | "static" | "static6" => {
            let akey = format!("{key}.ip_address");
            let addr = text("ip_address", cx)?.ok_or_else(|| cx.err(&akey, "missing"))?;
            let mask = text("netmask", cx)?;
            nic.addresses
                .push(parse_address(&addr, mask.as_deref(), None).map_err(|p| cx.err(&akey, p))?);
        }
        "ipv4_dhcp" => nic.dhcp4 = true,
        "ipv6_dhcp" | "ipv6_dhcpv6-stateful" => nic.dhcp6 = true,
        "ipv6_slaac" | "ipv6_dhcpv6-stateless" => {}
        other => {
            return Err(
                cx.err(format!("{key}.type"), format!("{other:?} is not a known network type"))
            )
        }
    }
    for (i, r) in routes.iter().enumerate() {
        nic.routes.push(parse_route(&format!("{key}.routes[{i}]"), r, cx)?);
    }
    for ns in dns {
        if !nic.nameservers.contains(&ns) {
            nic.nameservers.push(ns);
        }
    }
    Ok(())
}

fn parse_route(key: &str, v: &Value, cx: &mut Cx) -> Result<Route, CloudInitError> {
    let m = cx.mapping(v, key)?;
    let get = |k: &str, cx: &Cx| opt_text(m, key, k, cx);
    let nkey = format!("{key}.network");
    let network = get("network", cx)?.ok_or_else(|| cx.err(&nkey, "missing"))?;
    let mask = get("netmask", cx)?;
    let to =
        parse_address(&network, mask.as_deref(), None).map_err(|p| cx.err(&nkey, p))?.network();
    let gkey = format!("{key}.gateway");
    let via = get("gateway", cx)?
        .map(|g| {
            g.parse::<IpAddr>().map_err(|_| cx.err(&gkey, format!("{g:?} is not an IP address")))
        })
        .transpose()?;
    Ok(Route { to, via, metric: None })
}

/// The addresses of the `dns` services in a `services` list (other service types are ignored).
fn dns_services(items: &[Value], key: &str, cx: &mut Cx) -> Result<Vec<IpAddr>, CloudInitError> {
    let mut out = Vec::new();
    for (i, s) in items.iter().enumerate() {
        let skey = format!("{key}[{i}]");
        let m = cx.mapping(s, &skey)?;
        let ty = m.get("type").map(|t| cx.string(t, &format!("{skey}.type"))).transpose()?;
        if ty.as_deref() != Some("dns") {
            cx.warn(&skey, "not a dns service, ignored");
            continue;
        }
        let akey = format!("{skey}.address");
        let a = m.get("address").ok_or_else(|| cx.err(&akey, "missing"))?;
        let a = cx.string(a, &akey)?;
        out.push(
            a.trim().parse().map_err(|_| cx.err(&akey, format!("{a:?} is not an IP address")))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: &str = r#"{"links": [
        {"id": "tap1", "type": "phy", "ethernet_mac_address": "FA:16:3E:00:00:01", "mtu": 1450},
        {"id": "tap2", "type": "ovs", "ethernet_mac_address": "fa:16:3e:00:00:02", "mtu": null}],
      "networks": [
        {"id": "n0", "type": "ipv4", "link": "tap1", "ip_address": "10.0.0.5", "netmask": "255.255.255.0",
         "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.0.1"},
                    {"network": "192.168.0.0", "netmask": "255.255.0.0", "gateway": "10.0.0.254"}],
         "network_id": "x"},
        {"id": "n1", "type": "ipv6", "link": "tap1", "ip_address": "2001:db8::5/64"},
        {"id": "n2", "type": "ipv4_dhcp", "link": "tap2"}],
      "services": [{"type": "dns", "address": "10.0.0.2"}, {"type": "ntp", "address": "10.0.0.3"}]}"#;

    #[test]
    fn links_networks_services() {
        let n = parse_network_data(NET).unwrap().unwrap();
        assert_eq!(n.nics.len(), 2);
        let a = &n.nics[0];
        assert_eq!(a.mac.unwrap().to_string(), "fa:16:3e:00:00:01");
        assert_eq!(a.mtu, Some(1450));
        let addrs: Vec<String> = a.addresses.iter().map(ToString::to_string).collect();
        assert_eq!(addrs, ["10.0.0.5/24", "2001:db8::5/64"]);
        assert_eq!(a.routes[0].to.to_string(), "0.0.0.0/0");
        assert_eq!(a.routes[1].to.to_string(), "192.168.0.0/16");
        assert_eq!(a.nameservers[0].to_string(), "10.0.0.2");
        assert!(n.nics[1].dhcp4 && n.nics[1].mtu.is_none());
        assert_eq!(n.nics[1].nameservers.len(), 1, "global DNS on every NIC");
    }

    #[test]
    fn meta_data_keys() {
        let md = parse_meta_data(r#"{"uuid": "83679162-1378-4288-a2d4-70e13ec132aa", "hostname": "test.novalocal",
            "public_keys": {"k": "ssh-ed25519 AAAA k"}, "keys": [{"type": "ssh", "data": "ssh-ed25519 AAAA k"},
            {"type": "x509", "data": "cert"}, {"type": "ssh", "data": "ssh-rsa BBBB j"}], "extra": 1}"#).unwrap();
        assert_eq!(md.instance_id.unwrap().as_str(), "83679162-1378-4288-a2d4-70e13ec132aa");
        assert_eq!(md.hostname.unwrap().short(), "test");
        assert_eq!(md.public_keys, ["ssh-ed25519 AAAA k", "ssh-rsa BBBB j"]);
        assert_eq!(md.warnings.len(), 1);
    }

    #[test]
    fn hostile_meta_data() {
        let cases = [
            ("[]", "openstack/latest/meta_data.json: (document): top level is a list"),
            ("{\"uuid\": ", "openstack/latest/meta_data.json: (document): not valid JSON"),
            (
                "{\"uuid\": \"../../etc\"}",
                "openstack/latest/meta_data.json: uuid: invalid instance-id",
            ),
            ("{\"uuid\": {}}", "openstack/latest/meta_data.json: uuid: expected a string"),
            (
                "{\"hostname\": \"a_b\"}",
                "openstack/latest/meta_data.json: hostname: invalid hostname",
            ),
            (
                "{\"public_keys\": {\"k\": \"ssh-rsa A\\nssh-rsa B\"}}",
                "openstack/latest/meta_data.json: public_keys[0]: an SSH key is one non-empty line",
            ),
            ("{\"keys\": 5}", "openstack/latest/meta_data.json: keys: expected a list"),
        ];
        for (doc, want) in cases {
            let e = parse_meta_data(doc).unwrap_err().to_string();
            assert!(e.starts_with(want), "{doc}: {e}");
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_meta_data(&deep).unwrap_err().to_string().contains("not valid JSON"));
        let huge = format!("{{\"uuid\": \"{}\"}}", "a".repeat(super::super::MAX_DOCUMENT_BYTES));
        assert!(parse_meta_data(&huge).unwrap_err().to_string().contains("larger than"));
    }

    #[test]
    fn hostile_network_data() {
        let link = r#"{"id": "tap1", "type": "phy", "ethernet_mac_address": "fa:16:3e:00:00:01"}"#;
        let cases = [
            (format!(r#"{{"links": [{link}, {{"id": "b0", "type": "bond", "bond_links": ["tap1"]}}]}}"#), "links[1].type: bond is not supported"),
            (format!(r#"{{"links": [{link}, {{"id": "v0", "type": "vlan", "vlan_link": "tap1", "vlan_id": 5}}]}}"#), "links[1].type: vlan is not supported"),
            (r#"{"links": [{"id": "x", "type": "infiniband"}]}"#.to_string(), "links[0].type: \"infiniband\" is not a known link type"),
            (r#"{"links": [{"id": "x", "type": "phy"}]}"#.to_string(), "links[0].ethernet_mac_address: missing"),
            (r#"{"links": [{"id": "x", "type": "phy", "ethernet_mac_address": "fa:16:3e:00:00"}]}"#.to_string(), "links[0].ethernet_mac_address: invalid MAC address"),
            (r#"{"links": [{"id": "../../x", "type": "phy", "ethernet_mac_address": "fa:16:3e:00:00:01"}]}"#.to_string(), "links.../../x: NIC id must be"),
            (r#"{"links": [{"type": "phy"}]}"#.to_string(), "links[0].id: missing"),
            (format!(r#"{{"links": [{link}], "networks": [{{"type": "ipv4", "link": "nope", "ip_address": "10.0.0.1"}}]}}"#), "networks[0].link: no link has the id \"nope\""),
            (format!(r#"{{"links": [{link}], "networks": [{{"type": "ipv4", "link": "tap1"}}]}}"#), "networks[0].ip_address: missing"),
            (format!(r#"{{"links": [{link}], "networks": [{{"type": "ipv4", "link": "tap1", "ip_address": "10.0.0.1", "netmask": "255.0.255.0"}}]}}"#), "networks[0].ip_address: \"255.0.255.0\" is not a contiguous netmask"),
            (format!(r#"{{"links": [{link}], "networks": [{{"type": "ipv9", "link": "tap1"}}]}}"#), "networks[0].type: \"ipv9\" is not a known network type"),
            (format!(r#"{{"links": [{link}], "networks": [{{"type": "ipv4_dhcp", "link": "tap1", "routes": [{{"network": "10.0.0.0", "netmask": "255.0.0.0", "gateway": "x"}}]}}]}}"#), "networks[0].routes[0].gateway: \"x\" is not an IP address"),
            (format!(r#"{{"links": [{link}], "services": [{{"type": "dns", "address": "10.0.0.256"}}]}}"#), "services[0].address: \"10.0.0.256\" is not an IP address"),
            (r#"{"links": {"id": 1}}"#.to_string(), "links: expected a list, got a mapping"),
            (format!(r#"{{"links": [{link}, {link}]}}"#), "links.tap1: duplicate NIC id"),
            (r#"{"links": [{"id": "a", "type": "phy", "ethernet_mac_address": "fa:16:3e:00:00:01", "mtu": -5}]}"#.to_string(), "links[0].mtu: expected a non-negative integer"),
        ];
        for (doc, want) in cases {
            let e = parse_network_data(&doc).unwrap_err().to_string();
            let want = format!("{NETWORK_DATA}: {want}");
            assert!(e.starts_with(&want), "{doc}:\n got  {e}\n want {want}");
        }
        assert!(parse_network_data("{}").unwrap().is_none());
    }
}
