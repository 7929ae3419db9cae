//! cloud-init 22.4 as an oracle: for CAPV-style metadata, the addresses, gateways, routes, DNS,
//! DHCP, MTU and MAC matches of our networkd files must equal what cloud-init's own networkd
//! renderer (`cloudinit.net.networkd.Renderer`, fed by `network_state.parse_net_config_data`)
//! produces from the same input. Needs Debian's `cloud-init` package and `/usr/bin/python3`;
//! the test fails when they are missing.
//!
//! Not compared, on purpose: route metrics (cloud-init 22.4 drops `metric` from v2 routes;
//! our golden files check them) and `Name=` in `[Match]` (cloud-init matches on MAC *and*
//! set-name; we match on the MAC alone so a not-yet-renamed link is still configured).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use capstan_agent::cloudinit::parse_metadata;
use capstan_agent::steps::network::render;
use capstan_agent::types::IpCidr;

const PYTHON: &str = "/usr/bin/python3";

/// What a `.network` file says, as sets.
#[derive(Debug, Default, PartialEq, Eq)]
struct Norm {
    mac: String,
    dhcp: String,
    mtu: Option<String>,
    addresses: BTreeSet<String>,
    gateways: BTreeSet<String>,
    routes: BTreeSet<(String, String)>,
    dns: BTreeSet<String>,
    domains: BTreeSet<String>,
}

fn normalize(text: &str) -> Norm {
    let mut n = Norm { dhcp: "no".into(), ..Norm::default() };
    // split into sections; each [Route] is its own
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.to_string(), Vec::new()));
        } else if let Some((k, v)) = line.split_once('=') {
            sections
                .last_mut()
                .expect("key before any section")
                .1
                .push((k.to_string(), v.to_string()));
        }
    }
    let net = |c: &str| {
        IpCidr::parse_or_host(c).unwrap_or_else(|e| panic!("{c}: {e}")).network().to_string()
    };
    for (sec, kvs) in sections {
        let get = |key: &str| kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        match sec.as_str() {
            "Match" => n.mac = get("MACAddress").unwrap_or_default().to_lowercase(),
            "Link" => n.mtu = get("MTUBytes"),
            "Network" | "Address" => {
                for (k, v) in &kvs {
                    match k.as_str() {
                        "DHCP" => n.dhcp = v.clone(),
                        "Address" => {
                            n.addresses.insert(v.parse::<IpCidr>().unwrap().to_string());
                        }
                        "Gateway" => {
                            n.gateways.insert(v.clone());
                        }
                        "DNS" => n.dns.extend(v.split_whitespace().map(str::to_string)),
                        "Domains" => n.domains.extend(v.split_whitespace().map(str::to_string)),
                        _ => {}
                    }
                }
            }
            "Route" => {
                let gw = get("Gateway").unwrap_or_default();
                match get("Destination").map(|d| net(&d)) {
                    None => {
                        n.gateways.insert(gw);
                    }
                    Some(d) if d == "0.0.0.0/0" || d == "::/0" => {
                        n.gateways.insert(gw);
                    }
                    Some(d) => {
                        n.routes.insert((d, gw));
                    }
                }
            }
            _ => {}
        }
    }
    n
}

fn cloud_init(metadata: &Path) -> BTreeMap<String, Norm> {
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
    files.values().map(|t| normalize(t)).map(|n| (n.mac.clone(), n)).collect()
}

fn ours(metadata: &Path) -> BTreeMap<String, Norm> {
    let md = parse_metadata(&std::fs::read_to_string(metadata).unwrap()).unwrap();
    render(&md.network.expect("fixture has a network"))
        .into_iter()
        .filter(|f| f.name.ends_with(".network"))
        .map(|f| normalize(&f.content))
        .map(|n| (n.mac.clone(), n))
        .collect()
}

fn check(fixture: &str) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/capv").join(fixture);
    let theirs = cloud_init(&p);
    let mine = ours(&p);
    assert!(!theirs.is_empty(), "{fixture}: cloud-init rendered nothing");
    assert_eq!(
        mine.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "{fixture}: MAC matches differ"
    );
    for (mac, t) in &theirs {
        assert_eq!(&mine[mac], t, "{fixture}: NIC {mac} differs from cloud-init");
    }
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
    let a = normalize(
        "[Match]\nMACAddress=00:50:56:00:00:01\n[Network]\nAddress=10.0.0.5/24\nGateway=10.0.0.1\n",
    );
    let b = normalize("[Match]\nMACAddress=00:50:56:00:00:01\n[Network]\nAddress=10.0.0.5/24\n[Route]\nGateway=10.0.0.2\n");
    assert_ne!(a, b);
    let c = normalize("[Match]\nMACAddress=00:50:56:00:00:01\n[Network]\nAddress=10.0.0.5/24\n[Route]\nGateway=10.0.0.1\n");
    assert_eq!(a, c, "Gateway= in [Network] and a default [Route] mean the same");
}
