//! `capstan build lb`: the outputs pass their own checks, an unsealed copy fails
//! `capstan image check` naming each leftover, the OVA imports into vcsim with the agent's
//! properties, and a rebuild from the same inputs gives the same OVA bytes.

#[path = "image_support.rs"]
mod support;

use std::process::Command;

use capstan_e2e::{run, Vcsim};
use support::{capstan, lb_image, s};

#[test]
fn lb_build_outputs_pass_verify_and_image_check() {
    let dir = lb_image();
    let ova = dir.join("lb.ova");
    run(Command::new(capstan()).args(["ova", "verify", s(&ova)])).unwrap();
    for image in ["lb.ova", "lb.qcow2"] {
        let out = run(Command::new(capstan()).args(["image", "check", s(&dir.join(image))]))
            .unwrap_or_else(|e| panic!("image check {image}: {e:#}"));
        assert!(out.contains("is sealed"), "{out}");
    }
    let info = run(Command::new("qemu-img").args(["check", s(&dir.join("lb.qcow2"))])).unwrap();
    assert!(info.contains("No errors"), "{info}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("lb.build.json")).unwrap()).unwrap();
    let stages: Vec<&str> =
        report["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(stages, ["rootfs", "customize", "disk", "outputs", "check"]);
    let outputs = report["outputs"].as_array().unwrap();
    let ova_entry = outputs.iter().find(|o| o["format"] == "ova").unwrap();
    assert_eq!(ova_entry["bytes"], std::fs::metadata(&ova).unwrap().len());
    // Pruning kept a few dozen kernel modules of the thousand the kernel ships.
    let kept = report["image"]["modules_kept"].as_u64().unwrap();
    assert!(kept > 20 && kept < 200, "modules kept: {kept}");
}

#[test]
fn unsealed_image_fails_image_check_naming_each_leftover() {
    let dir = lb_image();
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("unsealed.raw");
    run(Command::new("qemu-img").args(["convert", "-O", "raw", s(&dir.join("lb.qcow2")), s(&raw)]))
        .unwrap();
    // What a booted-then-exported VM would carry: write it into the root with debugfs.
    let files = tmp.path().join("f");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::write(files.join("key"), "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
    std::fs::write(files.join("state"), "{}\n").unwrap();
    std::fs::write(files.join("log"), "Nov 25 boot\n").unwrap();
    std::fs::write(files.join("hist"), "sudo -i\n").unwrap();
    let f = |n: &str| files.join(n).display().to_string();
    let script = format!(
        "rm /etc/machine-id\nwrite {} /etc/machine-id\n\
         write {} /etc/ssh/ssh_host_ed25519_key\n\
         mkdir /var/lib/capstan\nwrite {} /var/lib/capstan/firstboot.json\n\
         write {} /var/log/syslog\nwrite {} /root/.bash_history\n",
        f("machine-id"),
        f("key"),
        f("state"),
        f("log"),
        f("hist")
    );
    let cmds = tmp.path().join("cmds");
    std::fs::write(&cmds, script).unwrap();
    // The root partition starts after the 1 MiB gap and the ESP (see buildroot/lb disk.esp_mib).
    let parts = run(Command::new("sfdisk").args(["--json", s(&raw)])).unwrap();
    let parts: serde_json::Value = serde_json::from_str(&parts).unwrap();
    let start = parts["partitiontable"]["partitions"][1]["start"].as_u64().unwrap() * 512;
    run(Command::new("debugfs")
        .args(["-w", "-f", s(&cmds)])
        .arg(format!("{}?offset={start}", raw.display())))
    .unwrap();

    let out = Command::new(capstan()).args(["image", "check", s(&raw)]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "check must fail on an unsealed image");
    let text = String::from_utf8_lossy(&out.stdout);
    for (rule, path) in [
        ("machine-id", "/etc/machine-id"),
        ("ssh-host-keys", "/etc/ssh/ssh_host_ed25519_key"),
        ("agent-state", "/var/lib/capstan/firstboot.json"),
        ("logs", "/var/log/syslog"),
        ("shell-history", "/root/.bash_history"),
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("FAIL {rule}:")) && l.contains(path)),
            "{rule} ({path}) not reported:\n{text}"
        );
    }
    // JSON output carries the same findings.
    let out = Command::new(capstan()).args(["image", "check", "--json", s(&raw)]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["findings"].as_array().unwrap().len(), 5, "{v:#}");
}

#[test]
fn image_check_rejects_what_is_not_a_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.raw");
    std::fs::write(&junk, vec![7u8; 64 * 1024]).unwrap();
    let out = Command::new(capstan()).args(["image", "check", s(&junk)]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GPT") && err.contains("junk.raw"), "{err}");
}

#[test]
fn lb_ova_imports_into_vcsim_lists_properties_and_clones() {
    let dir = lb_image();
    let ova = dir.join("lb.ova");
    let sim = Vcsim::start().expect("vcsim (built by ../shared/tools/vcsim.sh) must run");
    let spec = sim.govc(&["import.spec", s(&ova)]).unwrap();
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let props = spec["PropertyMapping"].as_array().unwrap_or_else(|| panic!("{spec:#}"));
    let schema = capstan_agent_properties();
    assert_eq!(props.len(), schema.len(), "import.spec: {spec:#}");
    for (key, default) in &schema {
        let p = props
            .iter()
            .find(|p| p["Key"] == key.as_str())
            .unwrap_or_else(|| panic!("{key} missing from import.spec"));
        // vcsim prints boolean defaults the way Go formats them ("True").
        let got = p["Value"].as_str().unwrap_or("");
        assert!(got.eq_ignore_ascii_case(default), "default of {key}: {got:?}, schema {default:?}");
    }
    // The descriptor itself carries the types (govc import.spec shows keys and defaults).
    let ovf = run(Command::new("tar").args(["-xOf", s(&ova), "lb.ovf"])).unwrap();
    for (want, what) in [
        (r#"ovf:key="capstan.hostname""#, "hostname property"),
        (r#"ovf:transport="com.vmware.guestInfo iso""#, "transport"),
        ("VirtualSCSI", "PVSCSI controller"),
        ("VmxNet3", "VMXNET3 NIC"),
        (r#"vmw:key="firmware" vmw:value="efi""#, "EFI firmware"),
        (r#"vmw:key="disk.EnableUUID" vmw:value="TRUE""#, "disk.EnableUUID"),
        (r#"vmw:key="tools.syncTimeWithHost" vmw:value="false""#, "no host time sync"),
        ("vmx-15", "hardware version"),
    ] {
        assert!(ovf.contains(want), "{what} ({want}) missing from the descriptor");
    }
    // Every schema property is in the descriptor with the schema's type.
    for p in capstan_agent::schema::ovf_properties("lb") {
        let want = format!(r#"ovf:key="{}" ovf:type="{}""#, p.key, p.ty.as_str());
        assert!(ovf.contains(&want), "{want} missing from the descriptor");
    }

    sim.govc(&[
        "import.ova",
        "-pool",
        Vcsim::POOL,
        "-ds",
        Vcsim::DS,
        "-name",
        "capstan-lb",
        s(&ova),
    ])
    .unwrap();
    sim.govc(&["vm.markastemplate", "capstan-lb"]).unwrap();
    sim.govc(&[
        "vm.clone",
        "-vm",
        "capstan-lb",
        "-pool",
        Vcsim::POOL,
        "-ds",
        Vcsim::DS,
        "-on=false",
        "lb-clone-1",
    ])
    .unwrap();
    let info = sim.govc(&["vm.info", "lb-clone-1"]).unwrap();
    assert!(info.contains("lb-clone-1"), "{info}");
}

/// The lb profile's user-configurable properties per the agent's schema: (key, default).
fn capstan_agent_properties() -> Vec<(String, String)> {
    capstan_agent::schema::ovf_properties("lb")
        .into_iter()
        .filter(|p| p.user_configurable)
        .map(|p| (p.key, p.default.unwrap_or_default()))
        .collect()
}

#[test]
fn rebuilding_from_the_same_inputs_gives_the_same_ova() {
    let first = lb_image();
    let again = support::e2e_dir().join("lb-rebuild");
    support::rebuild_lb(&again);
    let a = std::fs::read(first.join("lb.ova")).unwrap();
    let b = std::fs::read(again.join("lb.ova")).unwrap();
    assert!(a == b, "lb.ova differs between two builds of the same inputs");
    let ra: serde_json::Value =
        serde_json::from_slice(&std::fs::read(again.join("lb.build.json")).unwrap()).unwrap();
    let cached: Vec<bool> =
        ra["stages"].as_array().unwrap().iter().map(|s| s["cached"] == true).collect();
    assert_eq!(cached[1..4], [false, false, false], "the rebuild must redo customize..outputs");
}
