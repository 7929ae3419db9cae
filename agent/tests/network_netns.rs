//! The live network path for real: dummy links with known MACs in a fresh network namespace,
//! the CAPV-style config applied over netlink from a thread that joined the namespace, and the
//! result read back with `ip -j` (links matched by MAC, renamed, MTU, addresses, routes).
//! Needs root and iproute2; fails (does not skip) without them.

use std::collections::BTreeSet;
use std::path::Path;

use capstan_agent::cloudinit::parse_metadata;
use capstan_agent::steps::netlink;
use capstan_agent::steps::NetworkConfig;
use serde_json::Value;

mod common;
use common::netns::Netns;

/// A veth pair: `name` with `mac`, its peer `p<name>` up so the link has a carrier. (This
/// kernel has no `dummy` module.)
fn veth(ns: &Netns, name: &str, mac: &str) {
    let peer = format!("p{name}");
    ns.ip(&["link", "add", name, "address", mac, "type", "veth", "peer", "name", &peer]);
    ns.ip(&["link", "set", &peer, "up"]);
}

fn config() -> NetworkConfig {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/capv/metadata-static.yaml");
    parse_metadata(&std::fs::read_to_string(p).unwrap()).unwrap().network.unwrap()
}

fn link_by_mac(links: &Value, mac: &str) -> Value {
    links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["address"] == mac)
        .cloned()
        .unwrap_or_else(|| panic!("no link with {mac}: {links}"))
}

fn addrs(link: &Value) -> BTreeSet<String> {
    link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

fn routes(ns: &Netns, v6: bool) -> BTreeSet<String> {
    let fam = if v6 { "-6" } else { "-4" };
    ns.json(&[fam, "route", "show"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["gateway"].is_string())
        .map(|r| {
            format!(
                "{} via {} dev {}{}",
                r["dst"].as_str().unwrap(),
                r["gateway"].as_str().unwrap(),
                r["dev"].as_str().unwrap(),
                r["metric"]
                    .as_u64()
                    .filter(|m| *m != 1024)
                    .map(|m| format!(" metric {m}"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

#[test]
fn capv_config_applied_over_netlink_in_a_namespace() {
    let ns = Netns::new("nl");
    // kernel names that are not the wanted ones, MACs in mixed case as vSphere prints them
    veth(&ns, "ens192", "00:50:56:A5:00:01");
    veth(&ns, "ens224", "00:50:56:a5:00:02");
    veth(&ns, "ens256", "00:50:56:a5:00:03");
    veth(&ns, "other0", "02:00:00:00:00:99");
    // a stale address from the template on the static NIC must go
    ns.ip(&["addr", "add", "10.9.9.9/24", "dev", "ens256"]);

    let cfg = config();
    let report = ns.run(move || netlink::apply(&cfg)).expect("apply");
    assert!(report.missing.is_empty(), "{report:?}");
    assert_eq!(report.lines.len(), 3);

    // list_links (the same netlink session helper as apply) sees the result from inside
    let listed = ns.run(netlink::list_links).expect("list links");
    let named = |n: &str| listed.iter().find(|l| l.name == n).cloned();
    assert_eq!(
        named("eth0").and_then(|l| l.mac).map(|m| m.to_string()).as_deref(),
        Some("00:50:56:a5:00:01")
    );
    assert_eq!(named("eth2").and_then(|l| l.mtu), Some(1400));
    assert!(named("eth0").is_some_and(|l| l.up));
    assert!(named("other0").is_some() && named("ens192").is_none(), "{listed:?}");

    let links = ns.json(&["addr", "show"]);
    let eth0 = link_by_mac(&links, "00:50:56:a5:00:01");
    let eth1 = link_by_mac(&links, "00:50:56:a5:00:02");
    let eth2 = link_by_mac(&links, "00:50:56:a5:00:03");
    assert_eq!(
        (eth0["ifname"].as_str(), eth1["ifname"].as_str(), eth2["ifname"].as_str()),
        (Some("eth0"), Some("eth1"), Some("eth2"))
    );
    assert_eq!(
        link_by_mac(&links, "02:00:00:00:00:99")["ifname"],
        "other0",
        "unmatched link untouched"
    );
    assert_eq!(eth0["mtu"], 9000);
    assert_eq!(eth2["mtu"], 1400);
    assert!(eth0["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert_eq!(addrs(&eth0), ["10.0.0.5/24", "2001:db8::5/64"].map(String::from).into());
    assert!(addrs(&eth1).is_empty(), "DHCP NIC gets no static address");
    assert_eq!(addrs(&eth2), ["172.16.5.10/20"].map(String::from).into(), "stale 10.9.9.9 removed");

    assert_eq!(
        routes(&ns, false),
        [
            "default via 10.0.0.1 dev eth0",
            "192.168.0.0/16 via 10.0.0.254 dev eth0 metric 100",
            "172.31.0.0/16 via 172.16.0.1 dev eth2"
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(
        routes(&ns, true),
        ["default via 2001:db8::1 dev eth0", "2001:db8:1::/48 via 2001:db8::fe dev eth0"]
            .map(String::from)
            .into()
    );

    // idempotent: a second apply changes nothing
    let before = (ns.ip(&["-j", "addr", "show"]), routes(&ns, false), routes(&ns, true));
    let cfg = config();
    let report = ns.run(move || netlink::apply(&cfg)).expect("apply again");
    for l in &report.lines {
        assert!(
            !l.contains("renamed") && !l.contains('+') && !l.contains("-1"),
            "second apply changed something: {l}"
        );
    }
    assert_eq!((ns.ip(&["-j", "addr", "show"]), routes(&ns, false), routes(&ns, true)), before);
}

#[test]
fn missing_nic_is_reported_and_name_clash_fails() {
    let ns = Netns::new("nl2");
    veth(&ns, "ens192", "00:50:56:a5:00:01");
    veth(&ns, "eth1", "02:00:00:00:01:01"); // squats the name id1 wants... but id1's MAC is absent
    let cfg = config();
    let report = ns.run(move || netlink::apply(&cfg)).expect("apply");
    assert_eq!(report.missing, vec!["id1".to_string(), "id2".to_string()]);
    // now make the clash real: the link with id1's MAC exists and eth1 is taken
    veth(&ns, "ens224", "00:50:56:a5:00:02");
    let cfg = config();
    let err = ns.run(move || netlink::apply(&cfg)).unwrap_err();
    let msg = capstan_agent::error::chain(&err);
    assert!(
        msg.contains("id1: rename ens224 to eth1") && msg.contains("already called eth1"),
        "{msg}"
    );
}
