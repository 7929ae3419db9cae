//! cloud-init 22.4 as the oracle for the providers: for NoCloud `network-config` (v1 and v2) and
//! OpenStack `network_data.json`, the addresses, gateways, routes, DNS, DHCP, MTU and MAC matches
//! of the agent's networkd files (the network step's renderer fed by our parsers) must equal
//! what cloud-init's own networkd renderer writes from the same input. For EC2, cloud-init's Ec2
//! datasource and the agent both read the same FAKE metadata service (written from AWS's docs,
//! `providers_imds`) and must derive the same instance id, host name, keys, user-data and
//! network. Needs Debian's `cloud-init` (22.4) under `/usr/bin/python3`; fails without it.
//!
//! Not compared, on purpose: `Name=` in `[Match]` (cloud-init matches on MAC and name; the agent
//! on the MAC alone, and renames through a `.link` file), cloud-init's `IPv6AcceptRA=` and its
//! EC2 DHCP route metrics (the agent's model has neither).

mod common;
mod providers_imds;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use capstan_agent::cloudinit::netv1::parse_network_config;
use capstan_agent::cloudinit::openstack::parse_network_data;
use capstan_agent::sources::ec2;
use capstan_agent::sources::imds::ImdsOptions;
use capstan_agent::steps::network::{render, NetworkConfig};

use common::networkd::{assert_same, by_mac, facts, Facts};

const PYTHON: &str = "/usr/bin/python3";

fn oracle(mode: &str, arg: &str) -> serde_json::Value {
    assert!(Path::new(PYTHON).exists(), "{PYTHON} is missing: install Debian's cloud-init");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/providers_oracle.py");
    let out = Command::new(PYTHON).arg(&script).args([mode, arg]).output().expect("run the oracle");
    assert!(
        out.status.success(),
        "cloud-init oracle failed (is Debian's cloud-init 22.4 installed?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("oracle output is JSON")
}

fn theirs(files: &serde_json::Value) -> BTreeMap<String, Facts> {
    files.as_object().unwrap().values().map(|t| facts(t.as_str().unwrap())).collect()
}

fn ours(cfg: &NetworkConfig) -> BTreeMap<String, Facts> {
    by_mac(render(cfg).iter().map(|f| (f.name.as_str(), f.content.as_str())))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/providers").join(name)
}

fn check_netcfg(name: &str) {
    let p = fixture(name);
    let doc = parse_network_config(&std::fs::read_to_string(&p).unwrap(), "network-config")
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mine = ours(&doc.network.expect("a network"));
    assert_same(name, &mine, &theirs(&oracle("netcfg", p.to_str().unwrap())));
}

fn check_openstack(name: &str) {
    let p = fixture(name);
    let net = parse_network_data(&std::fs::read_to_string(&p).unwrap())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .expect("a network");
    assert_same(name, &ours(&net), &theirs(&oracle("openstack", p.to_str().unwrap())));
}

#[test]
fn nocloud_v1_static_multi_nic_ipv6_routes_dns_match_cloud_init() {
    check_netcfg("nocloud-v1-static.yaml");
}

#[test]
fn nocloud_v1_dhcp_and_ipv6_netmask_match_cloud_init() {
    check_netcfg("nocloud-v1-dhcp.yaml");
}

#[test]
fn nocloud_v2_matches_cloud_init() {
    check_netcfg("nocloud-v2.yaml");
}

#[test]
fn openstack_static_ipv6_routes_dns_match_cloud_init() {
    check_openstack("openstack-static.json");
}

#[test]
fn openstack_dhcp_and_slaac_match_cloud_init() {
    check_openstack("openstack-dhcp.json");
}

#[test]
fn bonds_and_vlans_are_refused_where_cloud_init_accepts_them() {
    let v1 = "version: 1\nconfig:\n- {type: physical, name: eth0, mac_address: '52:54:00:00:00:01'}\n- {type: bond, name: bond0, bond_interfaces: [eth0], subnets: [{type: dhcp}]}\n";
    let v2 = "version: 2\nethernets: {eth0: {match: {macaddress: '52:54:00:00:00:01'}}}\nbonds: {bond0: {interfaces: [eth0], dhcp4: true}}\n";
    let dir = tempfile::tempdir().unwrap();
    for (name, doc, want) in [
        ("v1", v1, "network-config: network.config[1].type: bond is not supported"),
        ("v2", v2, "network-config: network.bonds: not supported"),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, doc).unwrap();
        assert!(!oracle("netcfg", p.to_str().unwrap()).as_object().unwrap().is_empty());
        let e = parse_network_config(doc, "network-config").unwrap_err().to_string();
        assert!(e.starts_with(want), "{name}: {e}");
    }
    let os = r#"{"links": [{"id": "a", "type": "phy", "ethernet_mac_address": "fa:16:3e:00:00:01"},
        {"id": "b", "type": "phy", "ethernet_mac_address": "fa:16:3e:00:00:02"},
        {"id": "bond0", "type": "bond", "bond_links": ["a", "b"], "bond_mode": "802.3ad", "ethernet_mac_address": "fa:16:3e:00:00:01"},
        {"id": "vlan5", "type": "vlan", "vlan_link": "a", "vlan_id": 5, "vlan_mac_address": "fa:16:3e:00:00:01"}],
        "networks": [{"id": "n", "type": "ipv4_dhcp", "link": "bond0"}]}"#;
    let p = dir.path().join("os.json");
    std::fs::write(&p, os).unwrap();
    assert!(!oracle("openstack", p.to_str().unwrap()).as_object().unwrap().is_empty());
    let e = parse_network_data(os).unwrap_err().to_string();
    assert!(e.contains("links[2].type: bond is not supported"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_agent_and_cloud_init_agree_on_the_fake_imds() {
    let imds = providers_imds::start(providers_imds::two_nic_instance()).await;
    let url = imds.url.clone();
    let theirs_all = tokio::task::spawn_blocking(move || oracle("ec2", &url)).await.unwrap();
    let ours_all = ec2::fetch(&imds.url, ImdsOptions::default()).await.unwrap();
    assert_eq!(theirs_all["token_used"], true, "cloud-init used IMDSv2");
    assert_eq!(theirs_all["instance_id"], ours_all.instance_id.as_ref().unwrap().as_str());
    // cloud-init's get_hostname gives the short name unless asked for the FQDN
    let h = ours_all.hostname.as_ref().unwrap();
    assert_eq!(theirs_all["hostname"], h.short());
    let mut keys = ours_all.public_keys.clone();
    keys.sort();
    assert_eq!(theirs_all["keys"], serde_json::json!(keys));
    let ud = String::from_utf8(ours_all.user_data.clone().unwrap()).unwrap();
    assert_eq!(theirs_all["user_data"], ud);
    let net = ours_all.network.as_ref().unwrap();
    assert_same("ec2", &ours(net), &theirs(&theirs_all["files"]));
    let log = imds.log.lock().unwrap().clone();
    let puts = log.iter().filter(|l| l.starts_with("PUT /latest/api/token")).count();
    assert!(puts >= 2, "both asked for a token: {log:?}");
    assert!(log.iter().filter(|l| l.starts_with("GET")).all(|l| l.ends_with("[token]")), "{log:?}");
}

#[test]
fn the_comparison_can_fail() {
    let a = facts(
        "[Match]\nMACAddress=00:50:56:00:00:01\n[Network]\nAddress=10.0.0.5/24\nGateway=10.0.0.1\n",
    );
    let b = facts("[Match]\nMACAddress=00:50:56:00:00:01\n[Network]\nAddress=10.0.0.5/24\n[Route]\nGateway=10.0.0.2\n");
    let c = facts("[Match]\nMACAddress=00:50:56:00:00:01\n[Address]\nAddress=10.0.0.5/24\n[Route]\nDestination=0.0.0.0/0\n\nGateway=10.0.0.1\n");
    assert_ne!(a, b, "a changed gateway is seen");
    assert_eq!(a, c, "Gateway= in [Network] and a default [Route] mean the same");
    let d = facts("[Match]\nMACAddress=00:50:56:00:00:01\n[Network]\nAddress=10.0.0.5/24\nGateway=10.0.0.1\n[Route]\nDestination=10.9.0.0/16\nGateway=10.0.0.9\n");
    assert_ne!(a, d, "an extra route is seen");
}
