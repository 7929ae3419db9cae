//! End to end: `capstan-agent firstboot --root DIR --ovf-env F --guestinfo-dir D` against a temp
//! root, with an OVF environment and CAPV-style gzip+base64 metadata/user-data; then `status
//! --json`, the files, a second run that changes nothing, and a new instance-id that re-runs
//! the per-instance steps.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{assert_exit, step};

const OVF_ENV: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:ve="http://www.vmware.com/schema/ovfenv" oe:id="" ve:vCenterId="vm-101">
  <PlatformSection><Kind>VMware ESXi</Kind><Version>8.0.3</Version><Vendor>VMware, Inc.</Vendor><Locale>en</Locale></PlatformSection>
  <PropertySection>
    <Property oe:key="capstan.hostname" oe:value="from-ovf"/>
    <Property oe:key="capstan.dns.servers" oe:value="10.10.0.2, 10.10.0.3"/>
    <Property oe:key="capstan.dns.search" oe:value="corp.example"/>
    <Property oe:key="capstan.ntp.servers" oe:value="ntp1.corp.example"/>
    <Property oe:key="capstan.net.nic0.dhcp4" oe:value="true"/>
    <Property oe:key="capstan.role" oe:value="none"/>
    <Property oe:key="capstan.user.password-hash" oe:value=""/>
    <Property oe:key="vendor.other" oe:value="ignored"/>
  </PropertySection>
  <ve:EthernetAdapterSection>
    <ve:Adapter ve:mac="00:50:56:aa:bb:cc" ve:network="VM Network" ve:unitNumber="7"/>
  </ve:EthernetAdapterSection>
</Environment>
"#;

fn metadata(instance: &str) -> String {
    format!(
        r#"instance-id: "{instance}"
local-hostname: "capv-md-0-x7k2p"
wait-on-network:
  ipv4: true
  ipv6: false
network:
  version: 2
  ethernets:
    id0:
      match:
        macaddress: "00:50:56:aa:bb:cc"
      set-name: "eth0"
      wakeonlan: true
      dhcp4: false
      addresses:
      - "10.10.0.21/24"
      gateway4: "10.10.0.1"
      nameservers:
        addresses:
        - "10.10.0.2"
"#
    )
}

const USERDATA: &str = r#"## template: jinja
#cloud-config
write_files:
- path: /etc/kubernetes/kubeadm-join-config.yaml
  owner: root:root
  permissions: '0640'
  content: |
    apiVersion: kubeadm.k8s.io/v1beta3
    kind: JoinConfiguration
    nodeRegistration:
      name: '{{ ds.meta_data.hostname }}'
      criSocket: /var/run/containerd/containerd.sock
      kubeletExtraArgs:
        cloud-provider: external
    discovery:
      bootstrapToken:
        apiServerEndpoint: 10.10.0.100:6443
        token: abcdef.0123456789abcdef
        unsafeSkipCAVerification: true
users:
- name: capv
  sudo: ALL=(ALL) NOPASSWD:ALL
  ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ1aWxkZXIta2V5LWZvci10ZXN0aW5nLW9ubHk capv@test
runcmd:
- "kubeadm join --config /etc/kubernetes/kubeadm-join-config.yaml"
- "echo {{ local_hostname }} > /tmp/capstan-test-never-written"
"#;

fn gzb64(text: &str) -> String {
    common::b64(&common::gzip(text.as_bytes(), flate2::Compression::default()))
}

fn setup(dir: &Path, instance: &str) {
    common::minimal_root(&dir.join("root"));
    std::fs::write(dir.join("ovf-env.xml"), OVF_ENV).unwrap();
    write_guestinfo(dir, instance);
}

fn write_guestinfo(dir: &Path, instance: &str) {
    common::write_guestinfo(
        &dir.join("gi"),
        &[
            ("guestinfo.metadata", &gzb64(&metadata(instance))),
            ("guestinfo.metadata.encoding", "gzip+base64"),
            // The second spelling of the file name: without the `guestinfo.` prefix.
            ("userdata", &gzb64(USERDATA)),
            ("userdata.encoding", "gz+b64\n"),
        ],
    );
}

fn firstboot(dir: &Path) -> std::process::Output {
    common::firstboot(&dir.join("root"), &dir.join("gi"))
        .arg("--ovf-env")
        .arg(dir.join("ovf-env.xml"))
        .env("CAPSTAN_LOG", "info")
        .output()
        .expect("run capstan-agent")
}

fn status(dir: &Path) -> serde_json::Value {
    common::status_json_ok(&dir.join("root"))
}

/// Every file under the root except the agent's own state, with mode and content.
fn snapshot(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut files = common::snapshot(root);
    files.retain(|rel, _| !rel.starts_with("var/lib/capstan"));
    files
}

fn read(dir: &Path, p: &str) -> String {
    std::fs::read_to_string(dir.join("root").join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn firstboot_end_to_end_is_idempotent_and_reruns_for_a_new_instance() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    setup(dir, "capv-md-0-x7k2p");

    let out = firstboot(dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "first run failed:\n{stderr}");
    assert!(!stderr.contains("abcdef.0123456789abcdef"), "token leaked into logs");

    let st = status(dir);
    assert_eq!(st["instance_id"], "capv-md-0-x7k2p");
    assert_eq!(st["instance_id_origin"]["source"], "metadata");
    assert_eq!(st["network_source"], "metadata");
    assert_eq!(st["result"], "ok");
    assert_eq!(st["new_instance"], true);
    let sources: Vec<&str> =
        st["sources"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(sources, ["ovf-env", "metadata", "userdata"]);
    for s in ["sources", "hostname", "machine-id", "network", "dns", "ntp", "write-files", "users"]
    {
        assert_eq!(step(&st, s)["status"], "ok", "step {s}: {:#}", step(&st, s));
    }
    assert_eq!(step(&st, "runcmd")["status"], "skipped");
    assert_eq!(step(&st, "network-live")["status"], "skipped");
    // The metadata's local-hostname beats the OVF property; DNS comes from the OVF env.
    let values = st["values"].as_array().unwrap();
    let value = |p: &str| values.iter().find(|v| v["path"] == p).cloned();
    let h = value("hostname").unwrap();
    assert_eq!(h["value"], "capv-md-0-x7k2p");
    assert_eq!(h["origin"]["key"], "local-hostname");
    let d = value("dns.servers").unwrap();
    assert_eq!(d["origin"]["source"], "ovf-env");
    assert_eq!(d["origin"]["key"], "capstan.dns.servers");
    assert!(value("net.nic0.dhcp4").is_none(), "net.* dropped: the metadata network wins");

    // The files.
    assert_eq!(read(dir, "etc/hostname"), "capv-md-0-x7k2p\n");
    let net = read(dir, "etc/systemd/network/10-capstan-id0.network");
    assert!(net.contains("MACAddress=00:50:56:aa:bb:cc"), "{net}");
    assert!(net.contains("Address=10.10.0.21/24"), "{net}");
    assert!(net.contains("Gateway=10.10.0.1"), "{net}");
    let link = read(dir, "etc/systemd/network/10-capstan-id0.link");
    assert!(link.contains("Name=eth0"), "{link}");
    let resolved = read(dir, "etc/systemd/resolved.conf.d/capstan.conf");
    assert!(resolved.contains("10.10.0.2") && resolved.contains("corp.example"), "{resolved}");
    assert!(read(dir, "etc/systemd/timesyncd.conf.d/capstan.conf").contains("ntp1.corp.example"));
    let join = read(dir, "etc/kubernetes/kubeadm-join-config.yaml");
    assert!(join.contains("name: 'capv-md-0-x7k2p'"), "jinja rendered: {join}");
    let mode = std::fs::metadata(dir.join("root/etc/kubernetes/kubeadm-join-config.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    assert!(read(dir, "home/capv/.ssh/authorized_keys").contains("capv@test"));
    assert!(!Path::new("/tmp/capstan-test-never-written").exists());
    let machine_id = read(dir, "etc/machine-id");
    assert_eq!(machine_id.trim().len(), 32);
    // State is 0600: it names where secrets came from.
    let state = dir.join("root/var/lib/capstan/instances/capv-md-0-x7k2p/status.json");
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o600);
    // Under --root nothing outside DIR is touched: guestinfo is not scrubbed.
    assert!(std::fs::read_to_string(dir.join("gi/userdata")).unwrap().len() > 100);

    // Second run: nothing changes.
    let before = snapshot(&dir.join("root"));
    let out = firstboot(dir);
    assert_exit(&out, 0);
    let after = snapshot(&dir.join("root"));
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
    for (k, v) in &before {
        assert_eq!(v, &after[k], "{k} changed on the second run");
    }
    let st = status(dir);
    assert_eq!(st["new_instance"], false);
    assert_eq!(step(&st, "machine-id")["status"], "skipped");

    // A clone: new instance-id → per-instance steps run again (new machine-id).
    write_guestinfo(dir, "capv-md-0-clone2");
    let out = firstboot(dir);
    assert_exit(&out, 0);
    let st = status(dir);
    assert_eq!(st["instance_id"], "capv-md-0-clone2");
    assert_eq!(st["new_instance"], true);
    assert_eq!(step(&st, "machine-id")["status"], "ok");
    assert_ne!(read(dir, "etc/machine-id"), machine_id, "a clone gets a new machine-id");
}

#[test]
fn scrub_overwrites_consumed_userdata_in_a_guestinfo_dir() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    setup(dir, "scrub-1");
    std::fs::write(dir.join("gi/guestinfo.capstan.lb.vrrp.secret"), "s3cret").unwrap();
    let out =
        common::firstboot(&dir.join("root"), &dir.join("gi")).arg("--scrub").output().unwrap();
    assert_exit(&out, 0);
    assert_eq!(std::fs::read_to_string(dir.join("gi/userdata")).unwrap(), "---");
    assert_eq!(std::fs::read_to_string(dir.join("gi/userdata.encoding")).unwrap(), "");
    // The short status is published for vCenter/govc.
    let published = std::fs::read_to_string(dir.join("gi/guestinfo.capstan.status")).unwrap();
    assert!(published.starts_with("ok instance-id=scrub-1 steps="), "{published}");
    // Metadata is not secret and stays, so the instance-id is still known at the next boot.
    assert!(std::fs::read_to_string(dir.join("gi/guestinfo.metadata")).unwrap().len() > 50);
    // A second boot without user-data changes nothing and keeps the instance.
    let out = firstboot(dir);
    assert_exit(&out, 0);
    let st = status(dir);
    assert_eq!(st["new_instance"], false);
    // The scrubbed secret was kept (0600) for later boots of the same instance.
    assert_eq!(
        std::fs::read_to_string(dir.join("gi/guestinfo.capstan.lb.vrrp.secret")).unwrap(),
        "---"
    );
    let secrets = dir.join("root/var/lib/capstan/instances/scrub-1/secrets.json");
    assert_eq!(std::fs::metadata(&secrets).unwrap().permissions().mode() & 0o777, 0o600);
    let v = st["values"].as_array().unwrap();
    let s = v.iter().find(|v| v["path"] == "lb.vrrp.secret").expect("secret restored");
    assert_eq!(s["origin"]["source"], "persisted");
    assert_eq!(s["value"], "<secret>");
}
