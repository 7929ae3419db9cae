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
    for sbom in ["lb.spdx.json", "lb.cdx.json"] {
        let (a, b) =
            (std::fs::read(first.join(sbom)).unwrap(), std::fs::read(again.join(sbom)).unwrap());
        assert!(a == b, "{sbom} differs between two builds of the same inputs");
    }
    let ra: serde_json::Value =
        serde_json::from_slice(&std::fs::read(again.join("lb.build.json")).unwrap()).unwrap();
    let cached: Vec<bool> =
        ra["stages"].as_array().unwrap().iter().map(|s| s["cached"] == true).collect();
    assert_eq!(cached[1..4], [false, false, false], "the rebuild must redo customize..outputs");
}

/// The SBOM oracles' venv (`scripts/setup`): `$CAPSTAN_TOOLS_DIR/venv/bin/NAME`.
fn sbom_tool(name: &str) -> std::path::PathBuf {
    let dir =
        std::env::var_os("CAPSTAN_TOOLS_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/capstan-tools")
        });
    let path = dir.join("venv/bin").join(name);
    assert!(path.is_file(), "{} is missing: run scripts/setup", path.display());
    path
}

/// (name, version, purl) of every Debian package in an SPDX document.
fn spdx_debs(doc: &serde_json::Value) -> std::collections::BTreeSet<(String, String, String)> {
    doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            let purl =
                p["externalRefs"].as_array()?.iter().find(|r| r["referenceType"] == "purl")?
                    ["referenceLocator"]
                    .as_str()?;
            purl.starts_with("pkg:deb/").then(|| {
                let f = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                (f("name"), f("versionInfo"), purl.to_string())
            })
        })
        .collect()
}

/// What syft reads of a Debian root (the dpkg database, os-release, copyright files), copied
/// out of the ext4 root partition of `image` with debugfs into `tmp/root`.
fn sealed_dpkg_root(image: &std::path::Path, tmp: &std::path::Path) -> std::path::PathBuf {
    let raw = tmp.join("disk.raw");
    run(Command::new("qemu-img").args(["convert", "-O", "raw", s(image), s(&raw)])).unwrap();
    let table: serde_json::Value =
        serde_json::from_str(&run(Command::new("sfdisk").args(["--json", s(&raw)])).unwrap())
            .unwrap();
    // The x86-64 root and /usr partition types (Discoverable Partitions), as the builder
    // writes them; with a verified /usr, /usr's files are in the usr partition.
    let start_of = |t: &str| {
        table["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["type"] == t)
            .and_then(|p| p["start"].as_u64())
    };
    let start = start_of("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709").expect("a root partition");
    let usr = start_of("8484680C-9521-48C6-9C11-B0720656F69E");
    let root = tmp.join("root");
    for d in ["var/lib", "etc", "usr/share"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let r = |p: &str| root.join(p).display().to_string();
    let in_usr = if usr.is_some() { "" } else { "/usr" };
    let debugfs = |script: String, at: u64, name: &str| {
        std::fs::write(tmp.join(name), script).unwrap();
        let dev = format!("{}?offset={}", s(&raw), at * 512);
        run(Command::new("debugfs").arg("-f").arg(tmp.join(name)).arg(dev)).unwrap();
    };
    debugfs(format!("rdump /var/lib/dpkg {}\n", r("var/lib")), start, "cmds");
    debugfs(
        format!(
            "rdump {in_usr}/share/doc {}\ndump {in_usr}/lib/os-release {}\n",
            r("usr/share"),
            r("etc/os-release")
        ),
        usr.unwrap_or(start),
        "usr-cmds",
    );
    assert!(root.join("var/lib/dpkg/status").is_file(), "no dpkg status in {}", image.display());
    root
}

#[test]
fn lb_sboms_are_in_the_image_and_beside_it_and_match_syft_on_the_sealed_root() {
    let dir = lb_image();
    let spdx = std::fs::read(dir.join("lb.spdx.json")).unwrap();
    let cdx = std::fs::read(dir.join("lb.cdx.json")).unwrap();
    // The image carries the same SPDX document; converted, it is the CycloneDX beside it.
    let out = Command::new(capstan()).args(["image", "sbom", s(&dir.join("lb.qcow2"))]).output();
    assert!(out.as_ref().unwrap().status.success(), "{out:?}");
    assert!(out.unwrap().stdout == spdx, "the image's SPDX differs from lb.spdx.json");
    let out = Command::new(capstan())
        .args(["image", "sbom", s(&dir.join("lb.ova")), "--format", "cyclonedx"])
        .output()
        .unwrap();
    assert!(out.stdout == cdx, "converted SPDX differs from lb.cdx.json");
    // Each is published and reported once.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("lb.build.json")).unwrap()).unwrap();
    let sboms: Vec<&str> = report["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == "sbom")
        .map(|o| o["path"].as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(sboms, ["lb.spdx.json", "lb.cdx.json"]);
    // syft on the sealed root the image holds (read out of the disk: the customize stage's
    // entry may be rebuilt by another test meanwhile).
    let tmp = tempfile::tempdir().unwrap();
    let root = sealed_dpkg_root(&dir.join("lb.qcow2"), tmp.path());
    let theirs = tmp.path().join("syft.json");
    run(Command::new(sbom_tool("syft"))
        .arg(format!("dir:{}", s(&root)))
        .args(["-q", "-o"])
        .arg(format!("spdx-json={}", s(&theirs))))
    .unwrap();
    let theirs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&theirs).unwrap()).unwrap();
    let ours: serde_json::Value = serde_json::from_slice(&spdx).unwrap();
    let (ours_debs, theirs_debs) = (spdx_debs(&ours), spdx_debs(&theirs));
    assert!(ours_debs.len() > 100, "{} packages", ours_debs.len());
    assert_eq!(ours_debs, theirs_debs, "our packages and purls differ from syft's");
    // Every package has its .deb's SHA-256 (the rootfs stage listed them), the agent is there.
    let packages = ours["packages"].as_array().unwrap();
    let no_sum: Vec<&str> = packages
        .iter()
        .filter(|p| p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-deb-"))
        .filter(|p| p["checksums"][0]["checksumValue"].as_str().map(str::len) != Some(64))
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(no_sum.is_empty(), "packages without a .deb SHA-256: {no_sum:?}");
    assert!(packages.iter().any(|p| p["name"] == "capstan-agent"));
    run(Command::new(sbom_tool("pyspdxtools")).arg("-i").arg(dir.join("lb.spdx.json"))).unwrap();
}
