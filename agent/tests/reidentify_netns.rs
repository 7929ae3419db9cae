//! A clone's network re-applied live, for real: a veth link in a fresh network namespace
//! carries the parent's MAC and address; the child's network (its own MAC and address, the
//! parent's interface name) is applied over rtnetlink from a thread that joined the
//! namespace, and the result is read back with `ip -j`: the link has the new MAC and the new
//! address, and the parent's address is gone. This is the netlink level of the clone's
//! `network-live` step; systemd-networkd does not run in the namespace, so its reload and
//! reconfigure (D-Bus calls the step makes after this) are not part of the test.
//! Needs root and iproute2; fails (does not skip) without them.

use std::collections::BTreeSet;

use capstan_agent::steps::netlink;
use capstan_agent::steps::{NetworkConfig, Nic};
use capstan_agent::types::{IpCidr, MacAddr, NicName};
use serde_json::Value;

mod common;
use common::netns::Netns;

fn addrs(link: &Value) -> BTreeSet<String> {
    link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// The parent as it was frozen: `eth0` (renamed by its own config) with its MAC and address.
fn parent(ns: &Netns) {
    ns.ip(&[
        "link",
        "add",
        "eth0",
        "address",
        "00:50:56:aa:00:01",
        "type",
        "veth",
        "peer",
        "name",
        "peth0",
    ]);
    ns.ip(&["link", "set", "peth0", "up"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["addr", "add", "10.20.0.11/24", "dev", "eth0"]);
    ns.ip(&["route", "add", "default", "via", "10.20.0.1", "dev", "eth0"]);
}

/// The child's network, as its metadata gives it: its own MAC, the same interface name.
fn child(mac: &str, addr: &str, gw: &str) -> NetworkConfig {
    let mut nic = Nic::new("id0");
    nic.mac = Some(mac.parse::<MacAddr>().unwrap());
    nic.set_name = Some("eth0".parse::<NicName>().unwrap());
    nic.addresses = vec![addr.parse::<IpCidr>().unwrap()];
    nic.gateway4 = Some(gw.parse().unwrap());
    let cfg = NetworkConfig { nics: vec![nic] };
    cfg.validate("network").unwrap();
    cfg
}

#[test]
fn a_clone_takes_its_mac_and_address_live_and_the_parents_address_is_gone() {
    let ns = Netns::new("clone");
    parent(&ns);
    let before = ns.link("eth0");
    assert_eq!(before["address"], "00:50:56:aa:00:01");
    assert_eq!(addrs(&before), BTreeSet::from(["10.20.0.11/24".to_owned()]));

    // first boot's apply does not take over a link whose MAC is not the NIC's
    let cfg = child("00:50:56:aa:00:02", "10.20.0.12/24", "10.20.0.1");
    let c = cfg.clone();
    let report = ns.run(move || netlink::apply(&c)).expect("apply");
    assert_eq!(report.missing, vec!["id0".to_owned()], "{report:?}");
    assert_eq!(ns.link("eth0")["address"], "00:50:56:aa:00:01", "first boot changed the MAC");

    // a clone's does: new MAC, new address, the parent's address gone, the gateway kept
    let report = ns.run(move || netlink::apply_adopting(&cfg)).expect("apply for a clone");
    assert!(report.missing.is_empty(), "{report:?}");
    assert_eq!(report.indices.len(), 1);
    let after = ns.link("eth0");
    assert_eq!(after["address"], "00:50:56:aa:00:02", "{after}");
    assert_eq!(addrs(&after), BTreeSet::from(["10.20.0.12/24".to_owned()]), "{after}");
    assert!(after["flags"].as_array().unwrap().iter().any(|f| f == "UP"), "{after}");
    assert_eq!(after["ifindex"], before["ifindex"], "the same link, not a new one");
    assert!(report.lines[0].contains("MAC 00:50:56:aa:00:01 -> 00:50:56:aa:00:02"), "{report:?}");
    assert!(report.lines[0].contains("-10.20.0.11/24, +10.20.0.12/24"), "{report:?}");
    let routes = ns.ip(&["-4", "route", "show", "default"]);
    assert!(routes.contains("via 10.20.0.1 dev eth0"), "{routes}");

    // a second child of the same parent state, on another subnet: the old default route's
    // gateway is replaced too, and applying again changes nothing
    let cfg = child("00:50:56:aa:00:03", "10.30.0.13/24", "10.30.0.1");
    let c = cfg.clone();
    let report = ns.run(move || netlink::apply_adopting(&c)).expect("second child");
    let after = ns.link("eth0");
    assert_eq!(after["address"], "00:50:56:aa:00:03");
    assert_eq!(addrs(&after), BTreeSet::from(["10.30.0.13/24".to_owned()]), "{report:?}");
    let routes = ns.ip(&["-4", "route", "show", "default"]);
    assert!(routes.contains("via 10.30.0.1 dev eth0"), "{routes}");
    let again = ns.run(move || netlink::apply_adopting(&cfg)).expect("again");
    assert!(again.lines[0].ends_with("route 0.0.0.0/0"), "{again:?}");
    assert!(!again.lines[0].contains("MAC"), "{again:?}");
}

#[test]
fn a_hypervisor_changed_mac_is_matched_and_the_old_address_goes() {
    // vSphere gives the child's NIC its new MAC itself: the link is found by MAC, no rename
    // of the MAC is needed, and the parent's address still goes
    let ns = Netns::new("vmac");
    parent(&ns);
    ns.ip(&["link", "set", "eth0", "address", "00:50:56:aa:00:09"]);
    let cfg = child("00:50:56:aa:00:09", "10.20.0.19/24", "10.20.0.1");
    let report = ns.run(move || netlink::apply_adopting(&cfg)).expect("apply");
    assert!(report.missing.is_empty(), "{report:?}");
    assert!(!report.lines[0].contains("MAC"), "{report:?}");
    assert_eq!(addrs(&ns.link("eth0")), BTreeSet::from(["10.20.0.19/24".to_owned()]));
}

#[test]
fn no_link_to_take_over_is_reported_not_guessed() {
    // the NIC's name is borne by no link: nothing changes
    let ns = Netns::new("none");
    parent(&ns);
    let mut cfg = child("00:50:56:aa:00:05", "10.20.0.15/24", "10.20.0.1");
    cfg.nics[0].set_name = Some("eth7".parse().unwrap());
    let report = ns.run(move || netlink::apply_adopting(&cfg)).expect("apply");
    assert_eq!(report.missing, vec!["id0".to_owned()]);
    let l = ns.link("eth0");
    assert_eq!(l["address"], "00:50:56:aa:00:01");
    assert_eq!(addrs(&l), BTreeSet::from(["10.20.0.11/24".to_owned()]));
}
