//! NoCloud seeds and OpenStack config drives read from directories and (NoCloud) from a real
//! ISO 9660 image made by `xorriso`, as `cloud-localds` makes them; hostile seeds are refused
//! whole with the provider, the file and the key named.

use std::path::Path;
use std::process::Command;

use capstan_agent::sources::{configdrive, nocloud};

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, body) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
}

const META: &str = "instance-id: iid-seed-01\nlocal-hostname: lb-1.lab.example\npublic-keys:\n  - ssh-ed25519 AAAAC3Nza seed@lab\n";
const NET_V1: &str = "version: 1\nconfig:\n- type: physical\n  name: eth0\n  mac_address: '52:54:00:12:34:56'\n  subnets:\n  - {type: static, address: 10.0.2.15/24, gateway: 10.0.2.2}\n";
const USER: &str = "#cloud-config\nruncmd: [echo hi]\n";

#[test]
fn nocloud_directory_seed() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        &[
            ("meta-data", META),
            ("user-data", USER),
            ("network-config", NET_V1),
            ("vendor-data", "#cloud-config\n{}\n"),
        ],
    );
    let p = nocloud::read_seed_dir(d.path()).unwrap();
    assert_eq!(p.provider, "nocloud");
    assert_eq!(p.instance_id.unwrap().as_str(), "iid-seed-01");
    assert_eq!(p.hostname.unwrap().short(), "lb-1");
    assert_eq!(p.public_keys, ["ssh-ed25519 AAAAC3Nza seed@lab"]);
    assert_eq!(p.user_data.as_deref(), Some(USER.as_bytes()));
    assert!(p.vendor_data.is_some());
    let n = p.network.unwrap();
    assert_eq!(n.nics[0].addresses[0].to_string(), "10.0.2.15/24");
    assert_eq!(n.nics[0].gateway4.unwrap().to_string(), "10.0.2.2");
}

#[test]
fn nocloud_iso_made_by_xorriso() {
    let d = tempfile::tempdir().unwrap();
    let seed = d.path().join("seed");
    std::fs::create_dir(&seed).unwrap();
    write(&seed, &[("meta-data", META), ("user-data", USER), ("network-config", NET_V1)]);
    let iso = d.path().join("seed.iso");
    let out = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-r", "-o"])
        .arg(&iso)
        .arg(&seed)
        .output()
        .expect("xorriso (Debian's xorriso package) runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = nocloud::read_seed_iso(&iso).unwrap();
    assert_eq!(p.instance_id.unwrap().as_str(), "iid-seed-01");
    assert_eq!(p.user_data.as_deref(), Some(USER.as_bytes()));
    assert!(p.network.is_some() && p.vendor_data.is_none());

    // found by label, as udev links it
    let dev = d.path().join("dev");
    std::fs::create_dir_all(dev.join("disk/by-label")).unwrap();
    assert!(nocloud::find_seed_device(&dev).is_none());
    std::fs::copy(&iso, dev.join("sr1")).unwrap();
    assert_eq!(nocloud::find_seed_device(&dev).unwrap(), dev.join("sr1"), "by its ISO label");
    std::os::unix::fs::symlink("../../sr1", dev.join("disk/by-label/CIDATA")).unwrap();
    assert_eq!(nocloud::find_seed_device(&dev).unwrap(), dev.join("disk/by-label/CIDATA"));

    // another label is not a seed
    let other = d.path().join("other.iso");
    let st = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "OVF ENV", "-o"])
        .arg(&other)
        .arg(&seed)
        .output()
        .unwrap();
    assert!(st.status.success());
    let e = nocloud::read_seed_iso(&other).unwrap_err().to_string();
    assert!(e.ends_with(": (volume label): \"OVF ENV\" is not cidata"), "{e}");
    let e = nocloud::read_seed_iso(&d.path().join("seed/meta-data")).unwrap_err().to_string();
    assert!(e.ends_with("(filesystem): not an ISO 9660 image"), "{e}");
}

#[test]
fn hostile_nocloud_seeds() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("user-data", USER)], "nocloud meta-data: (document): missing from the seed"),
        (
            &[("meta-data", "- a\n- b\n")],
            "nocloud meta-data: (document): top level is a list, not a mapping",
        ),
        (&[("meta-data", "instance-id: [\n")], "nocloud meta-data: (document): not valid YAML"),
        (
            &[("meta-data", "instance-id: ../../../etc\n")],
            "nocloud meta-data: instance-id: invalid instance-id",
        ),
        (
            &[("meta-data", "local-hostname: 'a;reboot'\n")],
            "nocloud meta-data: local-hostname: invalid hostname",
        ),
        (
            &[
                ("meta-data", META),
                ("network-config", "version: 1\nconfig:\n- {type: bond, name: bond0}\n"),
            ],
            "nocloud network-config: network.config[0].type: bond is not supported",
        ),
        (
            &[
                ("meta-data", META),
                ("network-config", "version: 2\nethernets:\n  eth0: {addresses: [10.0.0.1/99]}\n"),
            ],
            "nocloud network-config: network.ethernets.eth0.addresses[0]: invalid CIDR",
        ),
        (
            &[("meta-data", META), ("network-config", "{")],
            "nocloud network-config: (document): not valid YAML",
        ),
    ];
    for (files, want) in cases {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), files);
        let e = nocloud::read_seed_dir(d.path()).unwrap_err().to_string();
        assert!(e.starts_with(want), "{files:?}:\n got  {e}\n want {want}");
    }
    let d = tempfile::tempdir().unwrap();
    write(d.path(), &[("meta-data", META)]);
    std::os::unix::fs::symlink("/etc/shadow", d.path().join("user-data")).unwrap();
    let e = nocloud::read_seed_dir(d.path()).unwrap_err().to_string();
    assert!(e.starts_with("nocloud user-data: (document): not a regular file"), "{e}");
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("meta-data"), [0xff, 0xfe, b'\n']).unwrap();
    let e = nocloud::read_seed_dir(d.path()).unwrap_err().to_string();
    assert!(e.starts_with("nocloud meta-data: (document): not UTF-8"), "{e}");
    std::fs::write(d.path().join("meta-data"), vec![b'#'; 5 << 20]).unwrap();
    let e = nocloud::read_seed_dir(d.path()).unwrap_err().to_string();
    assert!(e.starts_with("nocloud meta-data: (document): larger than"), "{e}");
}

const OS_META: &str = r#"{"uuid": "6b7b0e2a-43c2-4c9d-9a6e-0b1f0c7c9b11", "hostname": "cp-1.novalocal", "name": "cp-1",
  "public_keys": {"mykey": "ssh-ed25519 AAAAC3Nza os@lab"}, "availability_zone": "nova", "launch_index": 0}"#;
const OS_NET: &str = r#"{"links": [{"id": "tap1", "type": "ovs", "ethernet_mac_address": "fa:16:3e:11:22:33", "mtu": 1450}],
  "networks": [{"id": "n0", "type": "ipv4", "link": "tap1", "ip_address": "10.10.0.5", "netmask": "255.255.255.0",
    "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.10.0.1"}]}],
  "services": [{"type": "dns", "address": "10.10.0.2"}]}"#;

#[test]
fn config_drive_directory() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        &[
            ("openstack/latest/meta_data.json", OS_META),
            ("openstack/latest/network_data.json", OS_NET),
            ("openstack/latest/user_data", USER),
            ("openstack/latest/vendor_data.json", "{\"cloud-init\": \"#cloud-config\\n{}\"}"),
        ],
    );
    let p = configdrive::read_drive_dir(d.path()).unwrap();
    assert_eq!(p.provider, "configdrive");
    assert_eq!(p.instance_id.unwrap().as_str(), "6b7b0e2a-43c2-4c9d-9a6e-0b1f0c7c9b11");
    assert_eq!(p.hostname.unwrap().short(), "cp-1");
    assert_eq!(p.public_keys, ["ssh-ed25519 AAAAC3Nza os@lab"]);
    assert_eq!(p.user_data.as_deref(), Some(USER.as_bytes()));
    let n = p.network.unwrap();
    assert_eq!(n.nics[0].mtu, Some(1450));
    assert_eq!(n.nics[0].nameservers[0].to_string(), "10.10.0.2");

    let dev = d.path().join("dev");
    std::fs::create_dir_all(dev.join("disk/by-label")).unwrap();
    assert!(configdrive::find_drive(&dev).is_none());
    std::fs::write(dev.join("disk/by-label/config-2"), b"").unwrap();
    assert!(configdrive::find_drive(&dev).is_some());
}

#[test]
fn hostile_config_drives() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("openstack/latest/meta_data.json", "{\"uuid\": 5")],
            "configdrive openstack/latest/meta_data.json: (document): not valid JSON",
        ),
        (
            &[("openstack/latest/meta_data.json", "{\"uuid\": \"a/b\"}")],
            "configdrive openstack/latest/meta_data.json: uuid: invalid instance-id",
        ),
        (
            &[
                ("openstack/latest/meta_data.json", OS_META),
                (
                    "openstack/latest/network_data.json",
                    "{\"links\": [{\"id\": \"b\", \"type\": \"bond\"}]}",
                ),
            ],
            "configdrive openstack/latest/network_data.json: links[0].type: bond is not supported",
        ),
        (
            &[
                ("openstack/latest/meta_data.json", OS_META),
                ("openstack/latest/network_data.json", "[]"),
            ],
            "configdrive openstack/latest/network_data.json: (document): top level is a list",
        ),
    ];
    for (files, want) in cases {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), files);
        let e = configdrive::read_drive_dir(d.path()).unwrap_err().to_string();
        assert!(e.starts_with(want), "{files:?}:\n got  {e}\n want {want}");
    }
    let d = tempfile::tempdir().unwrap();
    write(d.path(), &[("openstack/latest/meta_data.json", OS_META)]);
    std::os::unix::fs::symlink("/etc/shadow", d.path().join("openstack/latest/user_data")).unwrap();
    let e = configdrive::read_drive_dir(d.path()).unwrap_err().to_string();
    assert!(
        e.starts_with("configdrive openstack/latest/user_data: (document): not a regular file"),
        "{e}"
    );
}
