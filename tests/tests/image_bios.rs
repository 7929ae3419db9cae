//! `capstan build lb --firmware bios`: a hybrid disk (SYSLINUX for legacy BIOS next to
//! systemd-boot for UEFI, both booting the same kernel, initrd and command line), an OVA that
//! asks vSphere for BIOS and passes `capstan ova verify`, the same bytes on a rebuild, and one
//! boot under SeaBIOS with `capstan lab run` that applies a vApp property (OVF ENV CD-ROM) and
//! a guestinfo key (fw_cfg).

#[path = "image_support.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use capstan_e2e::run;
use support::{capstan, lab_run, lb_bios_image, output_digests, s, step};

/// SYSLINUX's GPT MBR code (Debian syslinux-common), what the build puts in the MBR.
const GPTMBR: &str = "/usr/lib/syslinux/mbr/gptmbr.bin";

/// Reads a file from the FAT at `offset` of `raw` with mtools (no mount).
fn esp_file(raw: &Path, offset: u64, path: &str) -> String {
    run(Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{offset}", raw.display()))
        .arg(format!("::{path}")))
    .unwrap_or_else(|e| panic!("reading {path} from the ESP: {e:#}"))
}

/// The value after `key ` on the first line that starts with it (after indentation).
fn directive<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .map(str::trim_start)
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {key} line in:\n{text}"))
        .trim()
}

#[test]
fn bios_build_is_hybrid_sealed_and_its_ova_verifies() {
    let dir = lb_bios_image();
    let ova = dir.join("lb.ova");
    run(Command::new(capstan()).args(["ova", "verify", s(&ova)]))
        .unwrap_or_else(|e| panic!("ova verify: {e:#}"));
    for image in ["lb.ova", "lb.qcow2"] {
        let out = run(Command::new(capstan()).args(["image", "check", s(&dir.join(image))]))
            .unwrap_or_else(|e| panic!("image check {image}: {e:#}"));
        assert!(out.contains("is sealed"), "{out}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("lb.build.json")).unwrap()).unwrap();
    assert_eq!(report["firmware"], "bios");

    // The descriptor asks for no firmware (vSphere's default: BIOS); the rest is as for EFI.
    let ovf = run(Command::new("tar").args(["-xOf", s(&ova), "lb.ovf"])).unwrap();
    assert!(!ovf.contains(r#"vmw:key="firmware""#), "a BIOS OVA must not set firmware");
    for want in [
        r#"ovf:transport="com.vmware.guestInfo iso""#,
        "VirtualSCSI",
        "VmxNet3",
        r#"vmw:key="disk.EnableUUID" vmw:value="TRUE""#,
        r#"ovf:key="capstan.hostname""#,
    ] {
        assert!(ovf.contains(want), "{want} missing from the descriptor");
    }

    // The disk: gptmbr.bin in the MBR, the ESP marked legacy BIOS bootable.
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("lb.raw");
    run(Command::new("qemu-img").args(["convert", "-O", "raw", s(&dir.join("lb.qcow2")), s(&raw)]))
        .unwrap();
    let mbr_code = std::fs::read(GPTMBR)
        .unwrap_or_else(|e| panic!("{GPTMBR}: {e} (install syslinux-common: scripts/setup)"));
    let head = {
        use std::io::Read;
        let mut b = vec![0u8; 512];
        std::fs::File::open(&raw).unwrap().read_exact(&mut b).unwrap();
        b
    };
    assert_eq!(&head[..440], &mbr_code[..], "the MBR boot code is not gptmbr.bin");
    assert_eq!(head[446], 0, "the protective MBR must not be marked active (UEFI spec)");
    let parts = run(Command::new("sfdisk").args(["--json", s(&raw)])).unwrap();
    let parts: serde_json::Value = serde_json::from_str(&parts).unwrap();
    let parts = &parts["partitiontable"]["partitions"];
    assert_eq!(parts[0]["name"], "ESP");
    assert_eq!(parts[0]["attrs"], "LegacyBIOSBootable", "{parts:#}");
    assert!(parts[1].get("attrs").is_none(), "{parts:#}");
    let verify = Command::new("sfdisk").arg("--verify").arg(&raw).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));

    // The ESP: SYSLINUX installed, systemd-boot kept, both boot the same entry.
    let esp = parts[0]["start"].as_u64().unwrap() * 512;
    let listing = run(Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-a", "-b", "-i"])
        .arg(format!("{}@@{esp}", raw.display()))
        .arg("::/syslinux"))
    .unwrap()
    .to_lowercase();
    for f in ["ldlinux.sys", "ldlinux.c32", "syslinux.cfg"] {
        assert!(listing.contains(f), "{f} missing from /syslinux:\n{listing}");
    }
    let sdboot = esp_file(&raw, esp, "/loader/entries/capstan.conf");
    let syslinux = esp_file(&raw, esp, "/syslinux/syslinux.cfg");
    assert_eq!(directive(&syslinux, "LINUX"), directive(&sdboot, "linux"));
    assert_eq!(directive(&syslinux, "INITRD"), directive(&sdboot, "initrd"));
    assert_eq!(directive(&syslinux, "APPEND"), directive(&sdboot, "options"));
    assert!(directive(&sdboot, "options").contains("root=PARTUUID="), "{sdboot}");
    assert_eq!(directive(&syslinux, "DEFAULT"), "capstan", "{syslinux}");
    // The files both entries name are on the ESP, and so is systemd-boot (hybrid).
    for f in [directive(&sdboot, "linux"), directive(&sdboot, "initrd"), "/EFI/BOOT/BOOTX64.EFI"] {
        let out = Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-b", "-i"])
            .arg(format!("{}@@{esp}", raw.display()))
            .arg(format!("::{f}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{f} is not on the ESP");
    }
}

/// The stages of a build report: (name, key, cached).
fn stages(dir: &Path) -> Vec<(String, String, bool)> {
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("lb.build.json")).unwrap()).unwrap();
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().into(),
                s["key"].as_str().unwrap().into(),
                s["cached"] == true,
            )
        })
        .collect()
}

#[test]
fn rebuilding_the_bios_image_gives_the_same_bytes() {
    // After the shared build (never two builds of the same stages at once), both builds
    // from one snapshot of the agent binary, back to back.
    lb_bios_image();
    let tmp = tempfile::tempdir().unwrap();
    let agent = tmp.path().join("capstan-agent");
    std::fs::copy(capstan_e2e::workspace_bin("capstan-agent", "capstan-agent"), &agent).unwrap();
    let first =
        support::build_lb_bios_with_agent(&support::e2e_dir().join("lb-bios-first"), &agent, &[]);
    let again = support::build_lb_bios_with_agent(
        &support::e2e_dir().join("lb-bios-rebuild"),
        &agent,
        &["--rebuild", "disk,outputs"],
    );
    let (a, b) = (stages(&first), stages(&again));
    assert_eq!(a[1].1, b[1].1, "the customize inputs changed between the two builds");
    for stage in ["disk", "outputs"] {
        assert!(
            b.iter().any(|(n, _, cached)| n == stage && !cached),
            "the rebuild must redo {stage}: {b:?}"
        );
    }
    // SYSLINUX writes ldlinux.sys/ldlinux.c32 into the FAT: the epoch keeps their times fixed.
    assert_eq!(output_digests(&first, "lb"), output_digests(&again, "lb"));
    let a = std::fs::read(first.join("lb.ova")).unwrap();
    let b = std::fs::read(again.join("lb.ova")).unwrap();
    assert!(a == b, "lb.ova (bios) differs between two builds of the same inputs");
}

#[test]
fn bios_image_boots_under_seabios_with_vapp_properties_and_guestinfo() {
    let ova = lb_bios_image().join("lb.ova");
    let args: Vec<String> =
        ["--prop", "capstan.hostname=lb-e2e-bios", "--guestinfo", "capstan.lb.vip=10.0.2.100/24"]
            .iter()
            .map(|a| a.to_string())
            .collect();
    let r = lab_run(&ova, &args);
    assert_eq!(r["ready"], true, "{r:#}");
    assert_eq!(r["firmware"], "bios", "{r:#}");
    let from = r["firmware_from"].as_str().unwrap();
    assert!(from.contains("OVA descriptor"), "{from}");
    // SeaBIOS ran the MBR, which chained to SYSLINUX (its banner is on the serial console).
    let log = std::fs::read(r["serial_log"].as_str().unwrap()).unwrap();
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("SYSLINUX 6."), "no SYSLINUX banner in the serial log");
    assert!(!log.contains("BdsDxe"), "OVMF ran instead of SeaBIOS");

    let st = &r["status"];
    let sources: Vec<&str> =
        st["sources"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    assert!(sources.contains(&"ovf-env"), "OVF ENV CD-ROM not read: {sources:?}");
    assert!(sources.contains(&"guestinfo"), "fw_cfg guestinfo not read: {sources:?}");
    let h = step(st, "hostname");
    assert_eq!(h["status"], "ok", "{h:#}");
    assert!(h["detail"].as_str().unwrap().contains("lb-e2e-bios"), "{h:#}");
    let vip = st["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["path"] == "lb.vip")
        .unwrap_or_else(|| panic!("lb.vip not set: {st:#}"));
    // Delivered by the lab through QEMU fw_cfg, read by the agent's fw_cfg transport.
    assert_eq!(vip["origin"]["source"], "fw_cfg", "{vip:#}");
    assert_eq!(vip["origin"]["key"], "guestinfo.capstan.lb.vip", "{vip:#}");
    assert_eq!(vip["value"], "10.0.2.100/24", "{vip:#}");
    assert_eq!(step(st, "machine-id")["status"], "ok");
}
