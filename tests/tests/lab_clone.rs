//! `capstan lab clone` on the built lb template under QEMU (TCG here): one parent, three
//! children started from its saved memory and device state.
//!
//! `children_resume_from_the_parents_memory` checks the lab's mechanism on its own: a small
//! console probe (tests/fixtures/clone-probe.sh), started by the parent's runcmd, prints the
//! agent's "frozen" line and, once the instance-id it reads from fw_cfg changes, the
//! "re-identified" line with what it reads (boot id, uptime, instance-id, host name, SMBIOS
//! UUID). So it shows, without the agent's help,
//! that each child resumed the parent's running kernel (same boot id, uptime continuing from
//! the parent's) and read its own guestinfo through the fw_cfg its own QEMU was given.

#[path = "image_support.rs"]
mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use support::{boot_lock, capstan, lb_image, s, SSH_KEY};

/// Child `i`'s MAC as `lab clone` assigns it.
fn child_mac(i: usize) -> String {
    format!("52:54:00:c1:00:{i:02x}")
}

/// CAPV-style metadata: instance-id, host name, a static address on the first NIC.
fn metadata(name: &str, mac: &str, address: &str) -> String {
    format!(
        "instance-id: {name}-iid\nlocal-hostname: {name}\nnetwork:\n  version: 2\n  ethernets:\n\
         \x20   id0:\n      match:\n        macaddress: \"{mac}\"\n      dhcp4: false\n\
         \x20     addresses:\n        - \"{address}\"\n      gateway4: \"10.0.2.2\"\n"
    )
}

/// Test stand-in for the agent's freeze and re-identification lines (see the module docs).
const PROBE: &str = include_str!("../fixtures/clone-probe.sh");

fn userdata_with_probe() -> String {
    let probe: String = PROBE.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "#cloud-config\nusers:\n  - name: capv\n    ssh_authorized_keys:\n      - \"{SSH_KEY}\"\n\
         write_files:\n  - path: /var/lib/clone-probe/clone-probe\n    permissions: '0755'\n    content: |\n{probe}\
         runcmd:\n  - 'systemd-run --unit=clone-probe /var/lib/clone-probe/clone-probe'\n"
    )
}

/// Runs `capstan lab clone IMAGE --children 3 ARGS --json --log-dir LOGS`.
fn lab_clone(image: &Path, args: &[String], logs: &Path) -> serde_json::Value {
    let _guard = boot_lock();
    let o = Command::new(capstan())
        .args(["lab", "clone", s(image), "--children", "3", "--json"])
        .args(["--timeout", "600", "--reidentify-timeout", "240", "--log-dir", s(logs)])
        .args(args)
        .output()
        .expect("run capstan lab clone");
    assert!(
        o.status.success(),
        "capstan lab clone failed (logs in {}):\n{}",
        logs.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("lab clone output is not JSON ({e}):\n{}", String::from_utf8_lossy(&o.stdout))
    })
}

#[test]
fn children_resume_from_the_parents_memory() {
    let ova = lb_image().join("lb.ova");
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        format!("{}", p.display())
    };
    let mut args = vec![
        "--guestinfo".to_string(),
        format!(
            "metadata=@{}",
            write("parent.yaml", &metadata("lb-clone-parent", "52:54:00:12:34:56", "10.0.2.15/24"))
        ),
        "--guestinfo".to_string(),
        format!("userdata=@{}", write("userdata.yaml", &userdata_with_probe())),
        "--guestinfo".to_string(),
        "capstan.lb.vip=10.0.2.100/24".to_string(),
    ];
    for i in 1..=3 {
        let name = format!("lb-clone-{i}");
        let md = metadata(&name, &child_mac(i), &format!("10.0.2.{}/24", 20 + i));
        args.extend([
            "--guestinfo-for".to_string(),
            i.to_string(),
            format!("metadata=@{}", write(&format!("child-{i}.yaml"), &md)),
        ]);
    }
    let r = lab_clone(&ova, &args, &logs);
    let parent = &r["parent"];
    // The parent's facts at the freeze (its ready report's JSON can be cut by the probe's
    // and the agent's console lines, so it is not relied on here).
    assert_eq!(parent["hostname"], "lb-clone-parent", "{parent:#}");
    assert_eq!(parent["status_rc"], 0, "{parent:#}");
    let parent_boot = parent["boot_id"].as_str().expect("parent boot id").to_string();
    let frozen_at = parent["uptime"].as_f64().expect("parent uptime at the freeze");
    assert_eq!(parent["device_mac"], "52:54:00:12:34:56", "{parent:#}");

    let children = r["children"].as_array().unwrap();
    assert_eq!(children.len(), 3, "{r:#}");
    let mut generations = BTreeSet::from([parent["vmgenid"].as_str().unwrap()]);
    let mut uuids = BTreeSet::from([parent["uuid"].as_str().unwrap()]);
    for (i, c) in children.iter().enumerate().map(|(i, c)| (i + 1, c)) {
        let st = &c["status"];
        // The probe's line, or the agent's when its 100 ms poll won the race: both say which
        // instance-id the child read.
        let instance = st.get("instance").or_else(|| st.get("instance_id"));
        // Its own guestinfo, through the fw_cfg of its own QEMU, read by the parent's kernel.
        assert_eq!(instance, Some(&serde_json::json!(format!("lb-clone-{i}-iid"))), "{c:#}");
        assert_eq!(st["hostname"], format!("lb-clone-{i}"), "{c:#}");
        // Not rebooted: the parent's boot, its uptime going on from the parent's.
        assert_eq!(st["boot_id"], parent_boot.as_str(), "child {i} rebooted: {c:#}");
        let up = c["uptime"].as_f64().unwrap();
        assert!(up >= frozen_at, "child {i} uptime {up} < the parent's {frozen_at} at the freeze");
        assert!(up < frozen_at + 300.0, "child {i} uptime {up}: not the parent's clock");
        let child_log =
            std::fs::read_to_string(logs.join(format!("child-{i}.serial.log"))).unwrap();
        assert!(!child_log.contains("CAPSTAN-FROZEN"), "child {i} replayed the parent's boot");
        // What QEMU and the kernel carry over: virtio-net's MAC is device state (the guest sets
        // its own when told to), the SMBIOS tables were read at the parent's boot.
        assert_eq!(c["nic_mac"], child_mac(i));
        if st["probe"] == true {
            assert_eq!(c["device_mac"], "52:54:00:12:34:56", "{c:#}");
            assert_eq!(st["product_uuid"], parent["uuid"], "{c:#}");
        }
        assert!(c["reidentify_ms"].as_f64().unwrap() > 0.0);
        generations.insert(c["vmgenid"].as_str().unwrap());
        uuids.insert(c["uuid"].as_str().unwrap());
    }
    assert_eq!((generations.len(), uuids.len()), (4, 4), "{r:#}");
    assert!(r["state_bytes"].as_u64().unwrap() > 1 << 20, "{r:#}");
}

fn metadata_named(name: &str, mac: &str, address: &str) -> String {
    // `set-name`: a child's NIC is found by the name the parent's first boot gave the link,
    // then given the child's MAC (docs/instant-clone.md, `network-live`).
    metadata(name, mac, address)
        .replace("      dhcp4: false\n", "      set-name: nic0\n      dhcp4: false\n")
}

#[test]
fn three_children_reidentify_without_a_reboot() {
    let ova = lb_image().join("lb.ova");
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        format!("{}", p.display())
    };
    // The lab asks the parent to freeze (fw_cfg `opt/capstan/freeze`), the image's unit runs
    // `capstan-agent freeze` once the ready report is out.
    let user = format!(
        "#cloud-config\nusers:\n  - name: capv\n    ssh_authorized_keys:\n      - \"{SSH_KEY}\"\n"
    );
    let parent_md = metadata_named("lb-clone-parent", "52:54:00:12:34:56", "10.0.2.15/24");
    let mut args = vec![
        "--guestinfo".to_string(),
        format!("metadata=@{}", write("parent.yaml", &parent_md)),
        "--guestinfo".to_string(),
        format!("userdata=@{}", write("userdata.yaml", &user)),
        "--guestinfo".to_string(),
        "capstan.lb.vip=10.0.2.100/24".to_string(),
    ];
    for i in 1..=3 {
        let md = metadata_named(
            &format!("lb-clone-{i}"),
            &child_mac(i),
            &format!("10.0.2.{}/24", 20 + i),
        );
        args.extend([
            "--guestinfo-for".to_string(),
            i.to_string(),
            format!("metadata=@{}", write(&format!("child-{i}.yaml"), &md)),
        ]);
    }
    let r = lab_clone(&ova, &args, &logs);
    let parent = &r["parent"];
    let text = |v: &serde_json::Value, k: &str| {
        v[k].as_str().unwrap_or_else(|| panic!("no {k} in {v:#}")).to_string()
    };
    assert_eq!(text(parent, "hostname"), "lb-clone-parent");
    assert_eq!(text(parent, "address"), "10.0.2.15/24");
    let parent_fps: BTreeSet<String> = fingerprints(parent);
    assert!(!parent_fps.is_empty(), "{parent:#}");
    let frozen_at = parent["uptime"].as_f64().unwrap();

    let children = r["children"].as_array().unwrap();
    assert_eq!(children.len(), 3, "{r:#}");
    let mut machine_ids = BTreeSet::from([text(parent, "machine_id")]);
    let mut hostnames = BTreeSet::from([text(parent, "hostname")]);
    let mut macs = BTreeSet::from([text(parent, "mac")]);
    let mut addresses = BTreeSet::from([text(parent, "address")]);
    let mut all_fps = parent_fps.clone();
    for (i, c) in children.iter().enumerate().map(|(i, c)| (i + 1, c)) {
        let st = &c["status"];
        assert_eq!(st["result"], "ok", "child {i}: {c:#}");
        // Its own guestinfo.
        assert_eq!(text(c, "hostname"), format!("lb-clone-{i}"), "{c:#}");
        assert_eq!(st["instance_id"], format!("lb-clone-{i}-iid"), "{c:#}");
        assert_eq!(st["previous_instance_id"], "lb-clone-parent-iid", "{c:#}");
        assert_eq!(text(c, "mac"), child_mac(i), "{c:#}");
        assert_eq!(text(c, "address"), format!("10.0.2.{}/24", 20 + i), "{c:#}");
        // The guest gave the NIC its new MAC: QEMU's device state has it too.
        assert_eq!(c["device_mac"], child_mac(i).as_str(), "{c:#}");
        // Not rebooted.
        assert_eq!(text(c, "boot_id"), text(parent, "boot_id"), "child {i} rebooted: {c:#}");
        let up = c["uptime"].as_f64().unwrap();
        assert!(
            up >= frozen_at && up < frozen_at + 300.0,
            "child {i} uptime {up}, parent froze at {frozen_at}"
        );
        // New host keys, different from the parent's and from the other children's.
        let fps = fingerprints(c);
        assert!(!fps.is_empty(), "{c:#}");
        assert!(fps.is_disjoint(&all_fps), "child {i} shares host keys: {c:#}");
        all_fps.extend(fps);
        assert!(machine_ids.insert(text(c, "machine_id")), "child {i}'s machine-id is not new");
        assert!(hostnames.insert(text(c, "hostname")));
        assert!(macs.insert(text(c, "mac")));
        assert!(addresses.insert(text(c, "address")));
        // Every re-identification step is recorded with its duration.
        let steps: Vec<&str> =
            st["steps"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
        for want in [
            "hostname",
            "machine-id",
            "ssh-host-keys",
            "sshd-reload",
            "network-live",
            "role-refresh",
        ] {
            assert!(steps.contains(&want), "child {i} has no {want} step: {steps:?}");
        }
        for s in st["steps"].as_array().unwrap() {
            assert!(s["duration_ms"].is_u64(), "step without a duration: {s}");
        }
        let ms = c["reidentify_ms"].as_f64().unwrap();
        assert!(ms > 0.0 && ms < 240_000.0, "{ms}");
    }
}

fn fingerprints(v: &serde_json::Value) -> BTreeSet<String> {
    v["ssh_host_key_fingerprints"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}
