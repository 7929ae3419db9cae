//! cloud-init 22.4 as an oracle: for CAPV-style metadata, the addresses, gateways, routes, DNS,
//! DHCP, MTU and MAC matches of our networkd files must equal what cloud-init's own networkd
//! renderer (`cloudinit.net.networkd.Renderer`, fed by `network_state.parse_net_config_data`)
//! produces from the same input. Needs Debian's `cloud-init` package and `/usr/bin/python3`;
//! the test fails when they are missing.
//!
//! Not compared, on purpose: route metrics (cloud-init 22.4 drops `metric` from v2 routes;
//! our golden files check them) and `Name=` in `[Match]` (cloud-init matches on MAC *and*
//! set-name; we match on the MAC alone so a not-yet-renamed link is still configured).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use capstan_agent::cloudinit::parse_metadata;
use capstan_agent::steps::network::render;

mod common;
use common::networkd::{assert_same, by_mac, facts, Facts};

const PYTHON: &str = "/usr/bin/python3";

fn cloud_init(metadata: &Path) -> BTreeMap<String, Facts> {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: install Debian's python3 and cloud-init (scripts/setup)"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/networkd_oracle.py");
    let out = Command::new(PYTHON)
        .arg(&script)
        .arg(metadata)
        .output()
        .expect("run the cloud-init oracle");
    assert!(
        out.status.success(),
        "cloud-init oracle failed (is Debian's cloud-init 22.4 installed?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: BTreeMap<String, String> =
        serde_json::from_slice(&out.stdout).expect("oracle output is JSON");
    files.values().map(|t| facts(t)).collect()
}

fn ours(metadata: &Path) -> BTreeMap<String, Facts> {
    let md = parse_metadata(&std::fs::read_to_string(metadata).unwrap()).unwrap();
    let files = render(&md.network.expect("fixture has a network"));
    by_mac(files.iter().map(|f| (f.name.as_str(), f.content.as_str())))
}

fn check(fixture: &str) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/capv").join(fixture);
    let theirs = cloud_init(&p);
    let mine = ours(&p);
    assert_same(fixture, &mine, &theirs);
}

#[test]
fn static_multi_nic_ipv6_routes_mtu_match_cloud_init() {
    check("metadata-static.yaml");
}

#[test]
fn dhcp_matches_cloud_init() {
    check("metadata-dhcp.yaml");
}

#[test]
fn ipv6_only_matches_cloud_init() {
    check("metadata-ipv6.yaml");
}

#[test]
fn normalizer_sees_differences() {
    // the comparison must be able to fail: a changed gateway or route is noticed
    let a = facts(
        "[Match]\nMACAddress=00:50:56:00:00:01\n[Network]\nAddress=10.0.0.5/24\nGateway=10.0.0.1\n",
    );
    let b = facts("[Match]\nMACAddress=00:50:56:00:00:01\n[Network]\nAddress=10.0.0.5/24\n[Route]\nGateway=10.0.0.2\n");
    assert_ne!(a, b);
    let c = facts("[Match]\nMACAddress=00:50:56:00:00:01\n[Network]\nAddress=10.0.0.5/24\n[Route]\nGateway=10.0.0.1\n");
    assert_eq!(a, c, "Gateway= in [Network] and a default [Route] mean the same");
}
