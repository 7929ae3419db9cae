//! The cloud-init readers on what CAPV and CABPK really produce, and on hostile variants:
//! every bad value is an error naming the source and the key.

mod common;

use std::path::Path;

use capstan_agent::cloudinit::{parse_cloud_config, parse_metadata};
use capstan_agent::steps::Command;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/capv").join(name),
    )
    .unwrap()
}

#[test]
fn cabpk_control_plane_user_data() {
    let cc = parse_cloud_config(&fixture("userdata-cabpk-controlplane.yaml")).unwrap();
    assert!(cc.warnings.is_empty(), "{:?}", cc.warnings);
    let paths: Vec<&str> = cc.write_files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths.len(), 6);
    assert_eq!(paths[4], "/run/kubeadm/kubeadm.yaml");
    let kubeadm = String::from_utf8(cc.write_files[4].content.clone()).unwrap();
    assert!(
        kubeadm.contains("kind: InitConfiguration")
            && kubeadm.contains("controlPlaneEndpoint: 10.0.0.100:6443")
    );
    assert_eq!(cc.write_files[1].permissions.bits(), 0o600);
    assert_eq!(cc.write_files[3].permissions.bits(), 0o644, "default mode");
    assert_eq!(cc.runcmd.len(), 4);
    assert!(matches!(&cc.runcmd[3], Command::Shell(s) if s.contains("bootstrap-success.complete")));
    // the plan production builds from the same documents
    let (plan, issues) = common::cloud_init_plan(
        Some(&fixture("metadata-static.yaml")),
        Some(&fixture("userdata-cabpk-controlplane.yaml")),
    );
    assert!(issues.is_empty(), "{issues:?}");
    assert_eq!(plan.users.len(), 1, "users given without default: no default user");
    assert_eq!(plan.users[0].name, "capv");
    assert_eq!(plan.network.nics.len(), 3);
    assert_eq!(plan.hostname.unwrap().as_str(), "cp-0");
    assert_eq!(plan.instance_id.unwrap().as_str(), "cp-0-vm-4f2a");
}

#[test]
fn every_fixture_parses_or_names_its_key() {
    for (f, ok) in [
        ("metadata-static.yaml", true),
        ("metadata-dhcp.yaml", true),
        ("metadata-ipv6.yaml", true),
        ("metadata-invalid-cidr.yaml", false),
        ("metadata-duplicate-name.yaml", false),
    ] {
        let r = parse_metadata(&fixture(f));
        assert_eq!(r.is_ok(), ok, "{f}: {r:?}");
        if let Err(e) = r {
            assert!(e.to_string().starts_with("metadata: network.ethernets.id"), "{f}: {e}");
        }
    }
}

#[test]
fn hostile_user_data() {
    let cases: &[(&str, &str)] = &[
        ("#cloud-config\n[1, 2]\n", "userdata: (document): top level is a list, not a mapping"),
        (
            "#cloud-config\njust a string\n",
            "userdata: (document): top level is a string, not a mapping",
        ),
        (
            "#cloud-config\nwrite_files: {path: /x}\n",
            "userdata: write_files: expected a list, got a mapping",
        ),
        (
            "#cloud-config\nwrite_files: [{path: /x, encoding: zstd, content: a}]\n",
            "userdata: write_files[0] (/x).encoding: invalid encoding \"zstd\": unknown",
        ),
        (
            "#cloud-config\nwrite_files: [{path: /x, permissions: 'rwxr-xr-x'}]\n",
            "userdata: write_files[0] (/x).permissions: invalid permissions",
        ),
        (
            "#cloud-config\nwrite_files: [{path: /x, permissions: 0o77777}]\n",
            "userdata: write_files[0] (/x).permissions: invalid permissions",
        ),
        (
            "#cloud-config\nwrite_files: [{path: /x, owner: 'a b'}]\n",
            "userdata: write_files[0] (/x).owner: invalid owner",
        ),
        (
            "#cloud-config\nwrite_files: [{path: /x, encoding: gz+b64, content: aGVsbG8=}]\n",
            "userdata: write_files[0] (/x).content: invalid gzip data",
        ),
        (
            "#cloud-config\nusers: [{name: root, shell: bash}]\n",
            "userdata: users[0] (root).shell: \"bash\" is not an absolute path",
        ),
        (
            "#cloud-config\nusers: [{name: u, groups: ['Wheel']}]\n",
            "userdata: users[0] (u).groups: \"Wheel\" is not a valid group name",
        ),
        (
            "#cloud-config\nusers: [{name: u, ssh_authorized_keys: [\"a\\nb\"]}]\n",
            "userdata: users[0] (u).ssh_authorized_keys[0]: an SSH key must be one line",
        ),
        ("#cloud-config\nbootcmd: [[]]\n", "userdata: bootcmd[0]: empty command"),
        ("#cloud-config\nfqdn: nodot\n", "userdata: fqdn: invalid FQDN"),
        (
            "#cloud-config\nwrite_files: [{path: /x, source: {uri: 'http://x'}}]\n",
            "userdata: write_files[0] (/x).source: fetching content from a URL is not supported",
        ),
        ("#cloud-config\n: : :\n", "userdata: (document): not valid YAML"),
    ];
    for (text, want) in cases {
        let e = parse_cloud_config(text).unwrap_err().to_string();
        assert!(e.starts_with(want), "{text:?}\n  got:  {e}\n  want: {want}");
    }
}

#[test]
fn hostile_metadata() {
    let cases: &[(&str, &str)] = &[
        ("network: [1]", "metadata: network: expected a mapping, got a list"),
        ("network: {version: 2, ethernets: {eth0: {addresses: 10.0.0.1/24}}}", "metadata: network.ethernets.eth0.addresses: expected a list of addresses, got a string"),
        ("network: {version: 2, ethernets: {eth0: {addresses: [{10.0.0.1/24: {lifetime: 0}}]}}}", "metadata: network.ethernets.eth0.addresses[0]: expected \"address/prefix\", got a mapping"),
        ("network: {version: 2, ethernets: {'bad/name': {dhcp4: true}}}", "metadata: network.ethernets.bad/name"),
        ("network: {version: 2, ethernets: {eth0: {dhcp4: maybe}}}", "metadata: network.ethernets.eth0.dhcp4: \"maybe\" is not true or false"),
        ("network: {version: 2, ethernets: {eth0: {routes: [{via: 10.0.0.1}]}}}", "metadata: network.ethernets.eth0.routes[0].to: missing"),
        ("network: {version: 2, ethernets: {eth0: {mtu: -5}}}", "metadata: network.ethernets.eth0.mtu: expected a non-negative integer"),
        ("network: {version: 2, ethernets: {eth0: {set-name: eth1}}}", "metadata: network.ethernets.eth0.set-name: set-name needs match.macaddress"),
        ("network: {version: 3}", "metadata: network.version: \"3\" is not supported"),
        ("network: {ethernets: {}}", "metadata: network.version: missing"),
        ("instance-id: ''", "metadata: instance-id: invalid instance-id \"\": empty"),
    ];
    for (text, want) in cases {
        let e = parse_metadata(text).unwrap_err().to_string();
        assert!(e.starts_with(want), "{text:?}\n  got:  {e}\n  want: {want}");
    }
}
