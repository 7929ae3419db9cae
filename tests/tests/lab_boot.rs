//! Boot the built lb template under QEMU (TCG here) with `capstan lab run` and read what the
//! agent applied: once with vApp properties (OVF environment ISO, as vCenter delivers them)
//! and once with CAPV-style guestinfo metadata/userdata (through fw_cfg), whose `runcmd` must
//! run in the final stage: after systemd-networkd is up and the default route is set.

#[path = "image_support.rs"]
mod support;

use support::{assert_identity_applied, lab_run, lb_image, source_names, step, SSH_KEY};

fn assert_applied(r: &serde_json::Value, hostname: &str, source: &str) {
    assert_identity_applied(r, hostname);
    let st = &r["status"];
    let sources = source_names(st);
    assert!(sources.contains(&source), "source {source} not read: {sources:?}\n{st:#}");
    assert_eq!(step(st, "machine-id")["status"], "ok");
    let secs = r["boot_seconds"].as_f64().unwrap();
    assert!(secs > 1.0 && secs < 300.0, "boot took {secs}s");
}

#[test]
fn lab_boot_applies_vapp_properties() {
    let ova = lb_image().join("lb.ova");
    let args: Vec<String> = [
        "capstan.hostname=lb-e2e-props",
        "capstan.net.nic0.address=10.0.2.15/24",
        "capstan.net.nic0.gateway=10.0.2.2",
        &format!("capstan.ssh.authorized-keys={SSH_KEY}"),
        "capstan.lb.vip=10.0.2.100/24",
    ]
    .iter()
    .flat_map(|p| ["--prop".to_string(), p.to_string()])
    .collect();
    let r = lab_run(&ova, &args);
    assert_applied(&r, "lb-e2e-props", "ovf-env");
    // The environment the lab delivered holds the descriptor's defaults plus our values.
    let env = r["ovf_env"].as_array().unwrap();
    assert!(env.len() > 10, "only {} properties delivered", env.len());
    assert!(env.iter().any(|kv| kv[0] == "capstan.hostname" && kv[1] == "lb-e2e-props"));
}

#[test]
fn lab_boot_applies_capv_guestinfo() {
    let ova = lb_image().join("lb.ova");
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("metadata.yaml");
    std::fs::write(
        &meta,
        "instance-id: lb-e2e-capv-1\nlocal-hostname: lb-e2e-capv\nwait-on-network:\n  ipv4: true\n\
         network:\n  version: 2\n  ethernets:\n    id0:\n      match:\n        macaddress: \"52:54:00:12:34:56\"\n\
         \x20     wait-on-network:\n        ipv4: true\n      dhcp4: false\n      addresses:\n        - \"10.0.2.15/24\"\n\
         \x20     gateway4: \"10.0.2.2\"\n",
    )
    .unwrap();
    let user = dir.path().join("userdata.yaml");
    std::fs::write(
        &user,
        format!(
            "#cloud-config\nusers:\n  - name: capv\n    sudo: ALL=(ALL) NOPASSWD:ALL\n    ssh_authorized_keys:\n      - \"{SSH_KEY}\"\n\
             bootcmd:\n  - '{BOOTCMD_PROBE}'\nruncmd:\n  - '{RUNCMD_PROBE}'\n"
        ),
    )
    .unwrap();
    let args = vec![
        "--guestinfo".to_string(),
        format!("metadata=@{}", meta.display()),
        "--guestinfo".to_string(),
        format!("userdata=@{}", user.display()),
        "--guestinfo".to_string(),
        "capstan.lb.vip=10.0.2.100/24".to_string(),
    ];
    let r = lab_run(&ova, &args);
    assert_applied(&r, "lb-e2e-capv", "guestinfo");
    let st = &r["status"];
    assert_eq!(st["instance_id"], "lb-e2e-capv-1");
    // runcmd ran in the final stage, once the network was up: the probe exits non-zero (and
    // the step fails with its output) unless networkd is active and the default route is set.
    let stages: Vec<&str> =
        st["stages"].as_array().unwrap().iter().filter_map(|s| s["stage"].as_str()).collect();
    assert_eq!(stages, ["early", "final"], "{st:#}");
    let online = step(st, "network-online");
    assert_eq!(online["status"], "ok", "{online:#}");
    assert!(online["detail"].as_str().unwrap().contains("10.0.2.15"), "{online:#}");
    let run = step(st, "runcmd");
    assert_eq!(run["status"], "ok", "runcmd ran before the network was up: {run:#}");
    assert_eq!(step(st, "bootcmd")["status"], "ok");
    assert!(run["detail"].as_str().unwrap().contains("ran 1 command"), "{run:#}");
    assert_eq!(st["result"], "ok", "{st:#}");
}

/// The control: `bootcmd` runs in the early stage, before networkd; it records what it saw.
const BOOTCMD_PROBE: &str = "systemctl is-active systemd-networkd > /run/capstan-probe.early; true";

/// A runcmd entry that succeeds only when the early stage saw networkd not yet active, and
/// now systemd-networkd is active and an IPv4 default route exists.
const RUNCMD_PROBE: &str = "grep -qx inactive /run/capstan-probe.early && systemctl is-active systemd-networkd && ip -4 route show default | grep -q via && echo probe-ok";
