//! The OVF environment on an ISO 9660 CD-ROM labelled `OVF ENV`, made with the real `xorriso`
//! (as vSphere and `capstan lab` deliver it): read without mounting, found by label among
//! `/dev/sr*`, and used by `firstboot --ovf-env IMAGE`.

mod common;

use std::path::Path;
use std::process::Command;

use capstan_agent::sources::{find_ovf_cdrom, iso9660, read_ovf_env_cdrom};
use common::BIN;

const ENV: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" oe:id="">
  <PropertySection>
    <Property oe:key="capstan.instance-id" oe:value="iso-1"/>
    <Property oe:key="capstan.hostname" oe:value="iso-node"/>
  </PropertySection>
</Environment>
"#;

/// Makes an ISO with `xorriso`; fails the test clearly when the tool is missing.
fn make_iso(dir: &Path, label: &str, file_name: &str, joliet: bool) -> std::path::PathBuf {
    let src = dir.join(format!("src-{file_name}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join(file_name), ENV).unwrap();
    let iso = dir.join(format!("{}-{file_name}.iso", label.replace(' ', "_")));
    let mut cmd = Command::new("xorriso");
    cmd.args(["-as", "mkisofs", "-quiet", "-V", label]);
    if joliet {
        cmd.args(["-J", "-R"]);
    }
    let out = cmd.arg("-o").arg(&iso).arg(&src).output().expect(
        "xorriso is required for this test (apt-get install xorriso; scripts/setup installs it)",
    );
    assert!(out.status.success(), "xorriso: {}", String::from_utf8_lossy(&out.stderr));
    iso
}

#[test]
fn reads_ovf_env_from_xorriso_images_without_mounting() {
    let t = tempfile::tempdir().unwrap();
    for (name, joliet) in [("ovf-env.xml", true), ("ovf-env.xml", false), ("ovf_env.xml", false)] {
        let iso = make_iso(t.path(), "OVF ENV", name, joliet);
        let mut f = std::fs::File::open(&iso).unwrap();
        let vol = iso9660::read_volume(&mut f).unwrap();
        assert_eq!(vol.label, "OVF ENV");
        let data = read_ovf_env_cdrom(&iso).unwrap().unwrap_or_else(|| panic!("{name} not found"));
        assert_eq!(String::from_utf8(data).unwrap(), ENV, "{name} joliet={joliet}");
    }
}

#[test]
fn finds_the_cdrom_by_label_among_sr_devices() {
    let t = tempfile::tempdir().unwrap();
    let dev = t.path().join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    let other = make_iso(t.path(), "CIDATA", "ovf-env.xml", true);
    let ours = make_iso(t.path(), "OVF ENV", "ovf-env.xml", true);
    std::fs::copy(&other, dev.join("sr0")).unwrap();
    std::fs::write(dev.join("sr1"), vec![0u8; 40_000]).unwrap();
    std::fs::copy(&ours, dev.join("sr2")).unwrap();
    assert_eq!(find_ovf_cdrom(&dev), Some(dev.join("sr2")));
    // udev's by-label link wins when present.
    std::fs::create_dir_all(dev.join("disk/by-label")).unwrap();
    std::os::unix::fs::symlink(&ours, dev.join("disk/by-label/OVF\\x20ENV")).unwrap();
    assert_eq!(find_ovf_cdrom(&dev), Some(dev.join("disk/by-label/OVF\\x20ENV")));
    let empty = t.path().join("nodev");
    std::fs::create_dir_all(&empty).unwrap();
    assert_eq!(find_ovf_cdrom(&empty), None);
}

#[test]
fn firstboot_takes_an_iso_image_as_ovf_env() {
    let t = tempfile::tempdir().unwrap();
    let iso = make_iso(t.path(), "OVF ENV", "ovf-env.xml", true);
    let root = t.path().join("root");
    let out = Command::new(BIN)
        .arg("firstboot")
        .arg("--root")
        .arg(&root)
        .arg("--ovf-env")
        .arg(&iso)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(root.join("etc/hostname")).unwrap(), "iso-node\n");
    let st = common::status_json(&root);
    assert_eq!(st["instance_id"], "iso-1");
    assert_eq!(st["instance_id_origin"]["source"], "ovf-env");
    assert_eq!(st["sources"][0]["location"], iso.display().to_string());

    // An ISO without the file: a clear error naming the image.
    let src = t.path().join("empty-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("readme.txt"), "x").unwrap();
    let bad = t.path().join("bad.iso");
    let ok = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "OVF ENV", "-o"])
        .arg(&bad)
        .arg(&src)
        .status()
        .unwrap();
    assert!(ok.success());
    let out = Command::new(BIN)
        .arg("firstboot")
        .arg("--root")
        .arg(t.path().join("root2"))
        .arg("--ovf-env")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no ovf-env.xml in the image"), "{err}");
}
