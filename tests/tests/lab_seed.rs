//! Boot the built lb template under QEMU (TCG here) with a cloud seed attached as a CD-ROM
//! (`capstan lab run --seed`): once a NoCloud seed (an ISO labelled `cidata`), once an
//! OpenStack config drive (`config-2`). With no VMware source present, the agent detects the
//! seed, and both apply the host name, the static address and the key; `status` names the
//! provider.

#[path = "image_support.rs"]
mod support;

use std::path::Path;

use support::{assert_identity_applied, lab_run, lb_image, source_names, SSH_KEY};

fn write(dir: &Path, files: &[(&str, String)]) {
    for (name, body) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
}

fn assert_applied(r: &serde_json::Value, hostname: &str, provider: &str) {
    assert_identity_applied(r, hostname);
    let st = &r["status"];
    assert_eq!(st["result"], "ok", "{st:#}");
    assert_eq!(source_names(st), ["defaults", provider], "{st:#}");
    assert_eq!(st["network_source"], provider, "{st:#}");
}

#[test]
fn lab_boot_applies_a_nocloud_seed() {
    let ova = lb_image().join("lb.ova");
    let seed = tempfile::tempdir().unwrap();
    write(
        seed.path(),
        &[
            (
                "meta-data",
                format!("instance-id: lb-nocloud-1\nlocal-hostname: lb-e2e-nocloud\npublic-keys:\n  - \"{SSH_KEY}\"\n"),
            ),
            (
                "network-config",
                "version: 2\nethernets:\n  id0:\n    match:\n      macaddress: \"52:54:00:12:34:56\"\n    addresses: [10.0.2.15/24]\n    gateway4: 10.0.2.2\n".into(),
            ),
            ("user-data", "#cloud-config\n{}\n".into()),
        ],
    );
    let args = vec!["--seed".to_string(), format!("nocloud:{}", seed.path().display())];
    let r = lab_run(&ova, &args);
    assert_applied(&r, "lb-e2e-nocloud", "nocloud");
    assert_eq!(r["status"]["instance_id"], "lb-nocloud-1");
}

#[test]
fn lab_boot_applies_a_config_drive() {
    let ova = lb_image().join("lb.ova");
    let drive = tempfile::tempdir().unwrap();
    let meta = format!(
        r#"{{"uuid": "5d6a1a57-6b43-4a3e-9b4c-0c8d7f3e2a11", "hostname": "lb-e2e-configdrive", "public_keys": {{"e2e": "{SSH_KEY}"}}}}"#
    );
    let net = r#"{"links": [{"id": "tap0", "type": "phy", "ethernet_mac_address": "52:54:00:12:34:56"}],
        "networks": [{"id": "n0", "type": "ipv4", "link": "tap0", "ip_address": "10.0.2.15", "netmask": "255.255.255.0",
                      "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.2.2"}]}]}"#;
    write(
        drive.path(),
        &[
            ("openstack/latest/meta_data.json", meta),
            ("openstack/latest/network_data.json", net.into()),
        ],
    );
    let args = vec!["--seed".to_string(), format!("configdrive:{}", drive.path().display())];
    let r = lab_run(&ova, &args);
    assert_applied(&r, "lb-e2e-configdrive", "configdrive");
    assert_eq!(r["status"]["instance_id"], "5d6a1a57-6b43-4a3e-9b4c-0c8d7f3e2a11");
}
