//! Hostile and malformed inputs through the real binary: each gets a clear error naming the
//! source and the key, the affected step fails or is skipped, nothing is half-applied, and the
//! agent never panics (exit 0 or 2, never 101).

mod common;

use std::path::{Path, PathBuf};

use common::{b64, step};

struct Case {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Case {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        common::minimal_root(&dir.join("root"));
        common::write_guestinfo(&dir.join("gi"), &[]);
        Case { _tmp: tmp, dir }
    }

    fn gi(&self, key: &str, value: impl AsRef<[u8]>) -> &Self {
        std::fs::write(self.dir.join("gi").join(key), value).unwrap();
        self
    }

    fn ovf(&self, xml: &str) -> &Self {
        std::fs::write(self.dir.join("ovf-env.xml"), xml).unwrap();
        self
    }

    /// Runs firstboot; returns (exit code, stderr, status JSON).
    fn run(&self) -> (i32, String, serde_json::Value) {
        let mut cmd = common::firstboot(&self.dir.join("root"), &self.dir.join("gi"));
        if self.dir.join("ovf-env.xml").exists() {
            cmd.arg("--ovf-env").arg(self.dir.join("ovf-env.xml"));
        }
        let out = cmd.output().unwrap();
        let code = out.status.code().expect("exited, not killed by a signal");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(code == 0 || code == 2, "exit {code} (a panic is 101):\n{stderr}");
        (code, stderr, common::status_json(&self.dir.join("root")))
    }

    fn exists(&self, p: &str) -> bool {
        self.dir.join("root").join(p).exists()
    }

    fn network_files(&self) -> Vec<String> {
        match std::fs::read_dir(self.dir.join("root/etc/systemd/network")) {
            Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// The step failed and its error contains every fragment.
fn failed_with(st: &serde_json::Value, name: &str, fragments: &[&str]) {
    let s = step(st, name);
    assert_eq!(s["status"], "failed", "step {name}: {s:#}");
    let err = s["error"].as_str().unwrap_or("");
    for f in fragments {
        assert!(err.contains(f), "step {name} error lacks {f:?}: {err}");
    }
}

fn gz(b: &[u8]) -> Vec<u8> {
    common::gzip(b, flate2::Compression::best())
}

const META: &str = "instance-id: hostile-1\nlocal-hostname: node-1\nnetwork:\n  version: 2\n  ethernets:\n    id0:\n      match:\n        macaddress: '00:50:56:00:00:01'\n      dhcp4: true\n";

#[test]
fn invalid_base64_names_the_key_and_applies_nothing_from_it() {
    let c = Case::new();
    c.gi("metadata", META).gi("userdata", "#!!! not base64 !!!").gi("userdata.encoding", "base64");
    let (code, stderr, st) = c.run();
    assert_eq!(code, 2);
    failed_with(&st, "sources", &["guestinfo-dir key guestinfo.userdata", "invalid base64"]);
    assert!(stderr.contains("guestinfo.userdata"), "{stderr}");
    // The rest still ran.
    assert_eq!(step(&st, "hostname")["status"], "ok");
    assert_eq!(c.network_files().len(), 1, "{:?}", c.network_files());
}

#[test]
fn unknown_encoding_names_the_encoding_key() {
    let c = Case::new();
    c.gi("metadata", b64(META.as_bytes())).gi("metadata.encoding", "rot13");
    let (code, _, st) = c.run();
    assert_eq!(code, 2);
    failed_with(&st, "sources", &["guestinfo.metadata.encoding", "unknown encoding \"rot13\""]);
    // Metadata refused whole: no network from it, no host name from it.
    assert!(c.network_files().is_empty());
    assert!(!c.exists("etc/hostname"));
}

#[test]
fn gzip_bomb_is_stopped() {
    let c = Case::new();
    let bomb = b64(&gz(&vec![b'\n'; 40 * 1024 * 1024]));
    assert!(bomb.len() < 64 * 1024, "bomb fits a guestinfo value: {}", bomb.len());
    c.gi("metadata", META).gi("userdata", bomb).gi("userdata.encoding", "gzip+base64");
    let (code, _, st) = c.run();
    assert_eq!(code, 2);
    failed_with(&st, "sources", &["guestinfo.userdata", "gzip bomb"]);
}

#[test]
fn values_over_64k_are_refused() {
    let c = Case::new();
    c.gi("metadata", format!("instance-id: big\n# {}\n", "x".repeat(70 * 1024)))
        .gi("guestinfo.capstan.hostname", "h".repeat(66 * 1024));
    let (code, _, st) = c.run();
    assert_eq!(code, 2);
    failed_with(
        &st,
        "sources",
        &["guestinfo.metadata", "guestinfo.capstan.hostname", "65536-byte guestinfo limit"],
    );
    assert!(!c.exists("etc/hostname"));
}

#[test]
fn ovf_env_with_entity_expansion_is_rejected_whole() {
    let c = Case::new();
    c.ovf(
        r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1">
  <PropertySection><Property oe:key="capstan.hostname" oe:value="&lol2;"/></PropertySection>
</Environment>"#,
    );
    let (code, _, st) = c.run();
    assert_eq!(code, 2);
    failed_with(&st, "sources", &["ovf-env key", "ovf-env.xml", "DOCTYPE"]);
    assert!(!c.exists("etc/hostname"), "nothing from the refused document");
}

fn env_with(props: &[(&str, &str)]) -> String {
    let p: String =
        props.iter().map(|(k, v)| format!("<Property oe:key=\"{k}\" oe:value=\"{v}\"/>")).collect();
    format!(
        r#"<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"><PropertySection>{p}</PropertySection></Environment>"#
    )
}

#[test]
fn invalid_cidr_writes_no_network_file_at_all() {
    let c = Case::new();
    c.ovf(&env_with(&[
        ("capstan.instance-id", "cidr-1"),
        ("capstan.hostname", "good-host"),
        ("capstan.net.nic0.mac", "00:50:56:00:00:01"),
        ("capstan.net.nic0.address", "10.0.0.300/24"),
        ("capstan.net.nic1.mac", "00:50:56:00:00:02"),
        ("capstan.net.nic1.dhcp4", "true"),
    ]));
    let (code, _, st) = c.run();
    assert_eq!(code, 2);
    failed_with(&st, "network", &["ovf-env key capstan.net.nic0.address", "10.0.0.300/24"]);
    assert!(c.network_files().is_empty(), "half-applied: {:?}", c.network_files());
    assert_eq!(st["network_source"], "invalid");
    // Unrelated steps still ran.
    assert_eq!(step(&st, "hostname")["status"], "ok");
}

#[test]
fn invalid_mac_from_direct_guestinfo_names_the_guestinfo_key() {
    let c = Case::new();
    c.gi("guestinfo.capstan.instance-id", "mac-1")
        .gi("guestinfo.capstan.net.nic0.mac", "00:50:56:zz:00:01")
        .gi("guestinfo.capstan.net.nic0.dhcp4", "true");
    let (code, _, st) = c.run();
    assert_eq!(code, 2);
    failed_with(&st, "network", &["guestinfo-dir key guestinfo.capstan.net.nic0.mac", "MAC"]);
    assert!(c.network_files().is_empty());
}

#[test]
fn invalid_hostname_from_metadata_fails_the_hostname_step_only() {
    let c = Case::new();
    c.gi("metadata", "instance-id: host-1\nlocal-hostname: bad_host!\n");
    let (code, _, st) = c.run();
    assert_eq!(code, 2);
    failed_with(&st, "hostname", &["metadata key local-hostname", "bad_host!"]);
    assert!(!c.exists("etc/hostname"));
    assert_eq!(st["instance_id"], "host-1", "the rest of the metadata is used");
}

#[test]
fn duplicate_nic_names_refuse_the_network() {
    let c = Case::new();
    c.ovf(&env_with(&[
        ("capstan.instance-id", "dup-1"),
        ("capstan.net.nic0.mac", "00:50:56:00:00:01"),
        ("capstan.net.nic0.name", "eth0"),
        ("capstan.net.nic1.mac", "00:50:56:00:00:02"),
        ("capstan.net.nic1.name", "eth0"),
    ]));
    let (code, _, st) = c.run();
    assert_eq!(code, 2);
    failed_with(&st, "network", &["capstan.net.nic1.name", "duplicate NIC name"]);
    assert!(c.network_files().is_empty());
}

#[test]
fn duplicate_keys_in_ovf_env_are_refused() {
    let c = Case::new();
    c.ovf(&env_with(&[("capstan.hostname", "a"), ("capstan.hostname", "b")]));
    let (code, _, st) = c.run();
    assert_eq!(code, 2);
    failed_with(&st, "sources", &["ovf-env", "capstan.hostname", "set twice"]);
    assert!(!c.exists("etc/hostname"));
}

#[test]
fn yaml_that_is_not_a_mapping_is_refused() {
    let c = Case::new();
    c.gi("metadata", "- instance-id\n- node\n");
    c.gi("userdata", "#cloud-config\n- write_files\n");
    let (code, _, st) = c.run();
    assert_eq!(code, 2);
    failed_with(&st, "sources", &["guestinfo.metadata", "must be a mapping", "guestinfo.userdata"]);
    assert!(!c.exists("etc/hostname"));
}

#[test]
fn secrets_never_reach_logs_or_status() {
    let c = Case::new();
    c.ovf(&env_with(&[
        ("capstan.instance-id", "sec-1"),
        ("capstan.user.name", "ops"),
        ("capstan.user.password-hash", "hunter2-not-a-hash"),
        ("capstan.kube.token", "abcdef.0123456789abcdef"),
    ]));
    let (code, stderr, st) = c.run();
    assert_eq!(code, 2);
    let all = format!("{stderr}\n{st}");
    assert!(!all.contains("hunter2"), "secret leaked: {all}");
    assert!(!all.contains("0123456789abcdef"), "token leaked: {all}");
    failed_with(&st, "users", &["capstan.user.password-hash", "secret, not shown"]);
    let status_file = std::fs::read_to_string(
        Path::new(&c.dir).join("root/var/lib/capstan/instances/sec-1/status.json"),
    )
    .unwrap();
    assert!(!status_file.contains("0123456789abcdef"));
    assert!(status_file.contains("<secret>"));
}
