//! Precedence of the five sources (defaults < OVF environment < cloud-init metadata < direct
//! guestinfo keys < override file), each value with its origin; the network rule (the
//! metadata's netplan whole, unless a higher source sets `net.*`); `user-data` through a vApp
//! property; and a corrupt state file that does not stop first boot.

mod common;

use std::path::Path;
use std::process::Command;

use capstan_agent::guestinfo::DirGuestinfo;
use capstan_agent::schema::NetworkSource;
use capstan_agent::sources::{gather_with, SourceOptions};

use common::BIN;

fn env(props: &[(&str, &str)]) -> String {
    let p: String =
        props.iter().map(|(k, v)| format!("<Property oe:key=\"{k}\" oe:value=\"{v}\"/>")).collect();
    format!(
        r#"<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"><PropertySection>{p}</PropertySection></Environment>"#
    )
}

struct Layout {
    _t: tempfile::TempDir,
    root: std::path::PathBuf,
    gi: std::path::PathBuf,
    ovf: std::path::PathBuf,
}

fn layout() -> Layout {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let gi = t.path().join("gi");
    std::fs::create_dir_all(root.join("etc/capstan")).unwrap();
    std::fs::create_dir_all(&gi).unwrap();
    let ovf = t.path().join("ovf-env.xml");
    Layout { root, gi, ovf, _t: t }
}

/// `capstan-agent firstboot --root --ovf-env` on the layout; it must exit 0.
fn firstboot_ok(l: &Layout) {
    let out = Command::new(BIN)
        .arg("firstboot")
        .arg("--root")
        .arg(&l.root)
        .arg("--ovf-env")
        .arg(&l.ovf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `capstan-agent status --json --root`, parsed.
fn status_json(l: &Layout) -> serde_json::Value {
    common::status_json(&l.root)
}

fn gather(l: &Layout) -> capstan_agent::sources::Gathered {
    let mut opts = SourceOptions::rooted(&l.root);
    if l.ovf.exists() {
        opts.ovf_env_file = Some(l.ovf.clone());
    }
    gather_with(&opts, Some(Box::new(DirGuestinfo::new(&l.gi))))
}

fn w(p: &Path, s: &str) {
    std::fs::write(p, s).unwrap();
}

#[test]
fn each_source_overrides_the_ones_below_and_origins_are_kept() {
    let l = layout();
    w(
        &l.root.join("etc/capstan/agent.toml"),
        "hostname = \"from-defaults\"\nntp.servers = [\"ntp.defaults\"]\ndns.servers = \"10.0.0.1\"\n\
         dns.search = \"defaults.example\"\nheartbeat.interval = \"20s\"\n",
    );
    w(
        &l.ovf,
        &env(&[
            ("capstan.hostname", "from-ovf"),
            ("capstan.ntp.servers", "ntp.ovf"),
            ("capstan.dns.servers", "10.0.0.2"),
            // An empty OVF value does not hide the baked default.
            ("capstan.dns.search", ""),
        ]),
    );
    w(&l.gi.join("metadata"), "instance-id: prec-1\nlocal-hostname: from-metadata\n");
    w(&l.gi.join("guestinfo.capstan.dns.servers"), "10.0.0.4");
    w(&l.gi.join("guestinfo.capstan.heartbeat.interval"), "30s");
    w(&l.root.join("etc/capstan/agent.override.toml"), "heartbeat.interval = \"45s\"\n");
    let g = gather(&l);
    assert!(g.errors.is_empty() && g.config.errors.is_empty(), "{:?}", g.error_lines());
    let origin = |p: &str| {
        let v = &g.flat[p];
        (v.value.clone(), v.origin.source.to_string(), v.origin.key.clone())
    };
    assert_eq!(
        origin("hostname"),
        ("from-metadata".into(), "metadata".into(), "local-hostname".into())
    );
    assert_eq!(
        origin("ntp.servers"),
        ("ntp.ovf".into(), "ovf-env".into(), "capstan.ntp.servers".into())
    );
    assert_eq!(
        origin("dns.servers"),
        ("10.0.0.4".into(), "guestinfo-dir".into(), "guestinfo.capstan.dns.servers".into())
    );
    assert_eq!(origin("dns.search").1, "defaults");
    assert_eq!(origin("heartbeat.interval").1, "override");
    assert_eq!(g.config.heartbeat.interval, std::time::Duration::from_secs(45));
    let names: Vec<&str> = g.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["defaults", "ovf-env", "metadata", "guestinfo", "override"]);
}

const NETPLAN_META: &str = "instance-id: net-1\nnetwork:\n  version: 2\n  ethernets:\n    id0:\n      match:\n        macaddress: '00:50:56:00:00:01'\n      dhcp4: true\n";

#[test]
fn metadata_network_wins_over_lower_net_keys_and_loses_to_higher_ones() {
    let l = layout();
    w(&l.ovf, &env(&[("capstan.net.nic0.address", "10.9.9.9/24")]));
    w(&l.gi.join("metadata"), NETPLAN_META);
    let g = gather(&l);
    assert_eq!(g.config.network_source, NetworkSource::Metadata);
    assert!(!g.flat.keys().any(|k| k.starts_with("net.")), "OVF net.* dropped whole");

    w(&l.gi.join("capstan.net.nic0.address"), "10.1.1.1/24");
    let g = gather(&l);
    assert_eq!(g.config.network_source, NetworkSource::Keys);
    // Key-by-key among the flat sources: the OVF address lost to the guestinfo one.
    assert_eq!(g.flat["net.nic0.address"].value, "10.1.1.1/24");
    assert_eq!(g.config.nics["nic0"].addresses.len(), 1);
}

#[test]
fn user_data_vapp_property_in_base64_applies_when_guestinfo_has_none() {
    use base64::Engine as _;
    let l = layout();
    std::fs::write(l.root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    std::fs::write(l.root.join("etc/group"), "root:x:0:\n").unwrap();
    let cc = "#cloud-config\nwrite_files:\n- path: /etc/motd\n  content: from vApp user-data\n";
    let b64 = base64::engine::general_purpose::STANDARD.encode(cc);
    w(&l.ovf, &env(&[("capstan.instance-id", "ud-1"), ("capstan.user-data", &b64)]));
    firstboot_ok(&l);
    assert_eq!(std::fs::read_to_string(l.root.join("etc/motd")).unwrap(), "from vApp user-data");
}

#[test]
fn corrupt_state_is_reported_and_first_boot_still_runs() {
    let l = layout();
    w(&l.ovf, &env(&[("capstan.instance-id", "st-1"), ("capstan.hostname", "st-node")]));
    let dir = l.root.join("var/lib/capstan/instances/st-1");
    std::fs::create_dir_all(&dir).unwrap();
    w(&dir.join("status.json"), "{ not json");
    firstboot_ok(&l);
    assert_eq!(std::fs::read_to_string(l.root.join("etc/hostname")).unwrap(), "st-node\n");
    let st = status_json(&l);
    let errors = st["errors"].to_string();
    assert!(errors.contains("state file") && errors.contains("corrupt"), "{errors}");
    // The rewritten state is valid again.
    let st2 = Command::new(BIN).args(["status", "--root"]).arg(&l.root).output().unwrap();
    assert!(String::from_utf8_lossy(&st2.stdout).contains("instance-id  st-1"));
}

#[test]
fn an_lb_template_deployed_without_a_vip_boots_and_records_the_role_as_skipped() {
    let l = layout();
    w(
        &l.ovf,
        &env(&[("capstan.instance-id", "lb-1"), ("capstan.role", "lb"), ("capstan.lb.vip", "")]),
    );
    firstboot_ok(&l);
    let st = status_json(&l);
    let role = st["steps"].as_array().unwrap().iter().find(|s| s["name"] == "role").unwrap();
    assert_eq!(role["status"], "skipped");
    assert!(role["detail"].as_str().unwrap().contains("lb.vip: required but not set"), "{role}");
}
