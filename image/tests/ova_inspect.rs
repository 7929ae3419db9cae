//! `capstan ova inspect` on a descriptor and on an OVA made by `capstan ova pack`.

use std::process::Command;

use ovf::descriptor::builder::{
    DiskSpec, Firmware, NicSpec, ProductInfo, ProductProperty, VmBuilder,
};
use ovf::descriptor::PropertyType;

fn capstan(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_capstan")).args(args).output().expect("run capstan")
}

fn descriptor() -> String {
    VmBuilder::new("node")
        .os("debian12_64Guest", 96)
        .cpus(4)
        .memory_mib(8192)
        .firmware(Firmware::Efi)
        .disk(DiskSpec::new("node-disk1.vmdk", 20 << 30))
        .nic(NicSpec::new("VM Network"))
        .transport("com.vmware.guestInfo")
        .product(ProductInfo {
            product: "Capstan".into(),
            vendor: "Capstan".into(),
            version: "1".into(),
            ..Default::default()
        })
        .property(
            ProductProperty::new("role", PropertyType::String)
                .default_value("worker")
                .category("Cluster")
                .label("Role"),
        )
        .property(
            ProductProperty::new("token", PropertyType::String).default_value("s3cret").password(),
        )
        .build()
        .to_xml()
}

fn check_report(v: &serde_json::Value) {
    let vs = &v["virtual_systems"][0];
    assert_eq!(vs["id"], "node");
    assert_eq!(vs["os"]["os_type"], "debian12_64Guest");
    let hw = &vs["hardware"][0];
    assert_eq!(hw["cpus"], 4);
    assert_eq!(hw["memory_mib"], 8192);
    assert_eq!(hw["firmware"], "efi");
    assert_eq!(hw["hardware_version"], "vmx-19");
    assert_eq!(hw["transport"], "com.vmware.guestInfo");
    let kinds: Vec<&str> =
        hw["devices"].as_array().unwrap().iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["cpu", "memory", "scsi-controller", "disk", "ethernet"]);
    assert_eq!(v["disks"][0]["capacity_bytes"], 20u64 << 30);
    assert_eq!(v["disks"][0]["file"], "node-disk1.vmdk");
    assert_eq!(v["networks"][0]["name"], "VM Network");
    let props = v["products"][0]["properties"].as_array().unwrap();
    assert_eq!(props[0]["key"], "role");
    assert_eq!(props[0]["default"], "worker");
    assert_eq!(props[0]["category"], "Cluster");
    assert_eq!(props[1]["password"], true);
}

#[test]
fn inspects_a_descriptor_as_json_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let ovf = dir.path().join("node.ovf");
    std::fs::write(&ovf, descriptor()).unwrap();
    let out = capstan(&["ova".as_ref(), "inspect".as_ref(), "--json".as_ref(), ovf.as_os_str()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_report(&serde_json::from_slice(&out.stdout).unwrap());

    let out = capstan(&["ova".as_ref(), "inspect".as_ref(), ovf.as_os_str()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "virtual system node (node)",
        "hardware vmx-19: 4 cpu, 8192 MiB, firmware efi, transport com.vmware.guestInfo",
        "[4] disk Hard Disk 1 on 3:0 -> ovf:/disk/vmdisk1",
        "[5] ethernet Network adapter 1 (VmxNet3) network \"VM Network\"",
        "vmdisk1: 21474836480 bytes, file node-disk1.vmdk",
        "role : string = \"worker\" [configurable] \"Role\" in \"Cluster\"",
        "token : string = ****",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    assert!(!text.contains("s3cret"), "password default printed:\n{text}");
}

#[test]
fn inspects_an_ova() {
    let dir = tempfile::tempdir().unwrap();
    let ovf = dir.path().join("node.ovf");
    std::fs::write(&ovf, descriptor()).unwrap();
    std::fs::write(dir.path().join("node-disk1.vmdk"), vec![7u8; 4096]).unwrap();
    let ova = dir.path().join("node.ova");
    pack(&ovf, &ova);
    let out = capstan(&["ova".as_ref(), "inspect".as_ref(), "--json".as_ref(), ova.as_os_str()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    check_report(&v);
    // pack filled ovf:size from the real file.
    assert_eq!(v["files"][0]["size"], 4096);
}

#[test]
fn bad_inputs_fail_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.ovf");
    std::fs::write(
        &bad,
        "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\">\n<References>",
    )
    .unwrap();
    let out = capstan(&["ova".as_ref(), "inspect".as_ref(), bad.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("bad.ovf") && err.contains("line 2"), "{err}");
    let notova = dir.path().join("x.ova");
    std::fs::write(&notova, b"not a tar").unwrap();
    let out = capstan(&["ova".as_ref(), "inspect".as_ref(), notova.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr).unwrap().contains("x.ova"));
}

/// Writes `NAME.ovf` (and `NAME.ova`, packed by `capstan ova pack`) with a tiny disk.
fn write_pair(
    dir: &std::path::Path,
    name: &str,
    xml: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let ovf = dir.join(format!("{name}.ovf"));
    std::fs::write(&ovf, xml).unwrap();
    std::fs::write(dir.join("vm-disk1.vmdk"), vec![7u8; 4096]).unwrap();
    let ova = dir.join(format!("{name}.ova"));
    pack(&ovf, &ova);
    (ovf, ova)
}

/// `capstan ova pack --ovf OVF -o OVA`, which must succeed.
fn pack(ovf: &std::path::Path, ova: &std::path::Path) {
    let out = capstan(&[
        "ova".as_ref(),
        "pack".as_ref(),
        "--ovf".as_ref(),
        ovf.as_os_str(),
        "-o".as_ref(),
        ova.as_os_str(),
    ]);
    assert!(out.status.success(), "pack: {}", String::from_utf8_lossy(&out.stderr));
}

fn vm() -> VmBuilder {
    VmBuilder::new("vm").disk(DiskSpec::new("vm-disk1.vmdk", 1 << 30))
}

#[test]
fn firmware_is_what_the_lab_decides() {
    let dir = tempfile::tempdir().unwrap();
    for (name, builder, want, from) in [
        ("efi", vm().firmware(Firmware::Efi), "efi", "OVA descriptor: vmw:Config firmware=efi"),
        ("nokey", vm(), "bios", "OVA descriptor: no vmw:Config firmware (vSphere's default, BIOS)"),
        (
            "bios",
            vm().config("firmware", "bios"),
            "bios",
            "OVA descriptor: vmw:Config firmware=bios",
        ),
    ] {
        let xml = builder.build().to_xml();
        assert_eq!(xml.contains("\"firmware\""), name != "nokey", "{name}: {xml}");
        let (ovf, ova) = write_pair(dir.path(), name, &xml);
        for file in [&ovf, &ova] {
            let out =
                capstan(&["ova".as_ref(), "inspect".as_ref(), "--json".as_ref(), file.as_os_str()]);
            assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["firmware"], want, "{name}: {v:#}");
            assert_eq!(v["firmware_from"], from, "{name}");
            assert_eq!(v["virtual_systems"][0]["hardware"][0]["firmware"], want, "{name}");
            let out = capstan(&["ova".as_ref(), "inspect".as_ref(), file.as_os_str()]);
            let text = String::from_utf8(out.stdout).unwrap();
            let line = format!("firmware: {want} ({from})");
            assert!(text.contains(&line), "{name}: {line:?} missing from\n{text}");
            assert!(text.contains(&format!("MiB, firmware {want}, transport")), "{name}\n{text}");
        }
    }
}

/// The one line `capstan` printed on stderr, with the file's path replaced by `FILE`.
fn error_line(out: &std::process::Output, file: &std::path::Path) -> String {
    assert_eq!(out.status.code(), Some(1), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert!(out.stdout.is_empty(), "printed a report: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(err.lines().count(), 1, "not one line:\n{err}");
    err.trim_end().replace(&file.display().to_string(), "FILE")
}

#[test]
fn a_bad_firmware_is_the_same_error_in_inspect_and_lab() {
    let dir = tempfile::tempdir().unwrap();
    let big = "b".repeat(10 * 1024);
    for (name, builder, shown) in [
        ("newline", vm().config("firmware", "efi\nbios"), "firmware=\"efi"),
        ("big", vm().config("firmware", &big), "firmware=\"bbbb"),
        ("coreboot", vm().config("firmware", "coreboot"), "firmware=\"coreboot\""),
        (
            "twice",
            vm().config("firmware", "efi").config("firmware", "bios").config("firmware", "efi"),
            "firmware is set to different values (\"efi\", \"bios\");",
        ),
    ] {
        let (ovf, ova) = write_pair(dir.path(), name, &builder.build().to_xml());
        for file in [&ovf, &ova] {
            for json in [true, false] {
                let mut args = vec!["ova".as_ref(), "inspect".as_ref(), file.as_os_str()];
                if json {
                    args.push("--json".as_ref());
                }
                let got = error_line(&capstan(&args), file);
                assert!(got.starts_with("capstan: error: FILE: vmw:Config "), "{name}: {got}");
                assert!(got.contains(shown), "{name}: {shown:?} missing: {got}");
                assert!(got.len() < 300, "{name}: {} bytes: {got}", got.len());
                assert_eq!(got.matches("vmw:Config").count(), 1, "said twice: {got}");
            }
        }
        // The lab refuses the OVA with the very same message, before extracting its disk.
        let inspect =
            error_line(&capstan(&["ova".as_ref(), "inspect".as_ref(), ova.as_os_str()]), &ova);
        let started = std::time::Instant::now();
        let lab = capstan(&["lab".as_ref(), "run".as_ref(), "--json".as_ref(), ova.as_os_str()]);
        assert_eq!(error_line(&lab, &ova), inspect, "{name}");
        assert!(started.elapsed().as_secs() < 30, "{name}: the lab took {:?}", started.elapsed());
    }
}
