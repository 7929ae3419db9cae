//! `capstan ova pack` and `capstan ova verify` as an operator runs them: a packed OVA
//! verifies; a tampered member, a missing member and a wrong ovf:size each fail with exit 1
//! and a message naming the member.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn capstan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capstan")).args(args).output().expect("run capstan")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn descriptor(disk_size: Option<u64>) -> String {
    let size = disk_size.map(|s| format!(" ovf:size=\"{s}\"")).unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <File ovf:id="file1" ovf:href="app-disk1.vmdk"{size}/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="2" ovf:capacityAllocationUnits="byte * 2^20" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="app">
    <Info>A virtual machine</Info>
  </VirtualSystem>
</Envelope>
"#
    )
}

/// A folder with app.ovf and app-disk1.vmdk (made by `capstan vmdk convert`).
fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("app.raw");
    let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 97) as u8).collect();
    std::fs::write(&raw, data).unwrap();
    let out = capstan(&["vmdk", "convert", p(&raw), p(&dir.path().join("app-disk1.vmdk"))]);
    assert!(out.status.success(), "{out:?}");
    let ovf = dir.path().join("app.ovf");
    std::fs::write(&ovf, descriptor(None)).unwrap();
    (dir, ovf)
}

fn pack(dir: &Path, ovf: &Path, name: &str) -> PathBuf {
    let ova = dir.join(name);
    let out = capstan(&["ova", "pack", "--ovf", p(ovf), "-o", p(&ova)]);
    assert!(out.status.success(), "{out:?}");
    ova
}

fn fails_naming(ova: &Path, member: &str, what: &str) {
    let out = capstan(&["ova", "verify", p(ova)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(member) && err.contains(what), "expected {member}/{what}: {err}");
    assert_eq!(err.lines().count(), 1, "one line per failure: {err}");
}

#[test]
fn packed_ova_verifies_and_json_report_lists_members() {
    let (dir, ovf) = setup();
    let ova = pack(dir.path(), &ovf, "app.ova");
    let out = capstan(&["ova", "verify", p(&ova)]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("OK") && text.contains("app-disk1.vmdk"), "{text}");
    let out = capstan(&["ova", "verify", "--json", p(&ova)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["manifest"], "app.mf");
    assert_eq!(v["members"][0]["name"], "app-disk1.vmdk");
    assert_eq!(v["members"][0]["digest"], "SHA256");
    // SOURCE_DATE_EPOCH makes two packs identical.
    let a = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["ova", "pack", "--ovf", p(&ovf), "-o", p(&dir.path().join("a.ova"))])
        .status()
        .unwrap();
    let b = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["ova", "pack", "--mtime", "1700000000", "--ovf", p(&ovf), "-o"])
        .arg(dir.path().join("b.ova"))
        .status()
        .unwrap();
    assert!(a.success() && b.success());
    assert!(
        std::fs::read(dir.path().join("a.ova")).unwrap()
            == std::fs::read(dir.path().join("b.ova")).unwrap()
    );
}

#[test]
fn verify_rejects_a_tampered_member() {
    let (dir, ovf) = setup();
    let ova = pack(dir.path(), &ovf, "app.ova");
    let mut bytes = std::fs::read(&ova).unwrap();
    // Flip a byte near the end of the disk member's data (before the tar trailer).
    let n = bytes.len();
    bytes[n - 2048] ^= 0xff;
    std::fs::write(&ova, bytes).unwrap();
    fails_naming(&ova, "app-disk1.vmdk", "does not match the manifest");
}

#[test]
fn verify_rejects_a_missing_member() {
    let (dir, ovf) = setup();
    // An archive made by GNU tar with the descriptor and manifest but without the disk.
    let ova = pack(dir.path(), &ovf, "full.ova");
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    assert!(Command::new("tar").args(["-xf", p(&ova), "-C", p(&x)]).status().unwrap().success());
    let broken = dir.path().join("missing.ova");
    assert!(Command::new("tar")
        .current_dir(&x)
        .args(["--format=ustar", "-cf", p(&broken), "app.ovf", "app.mf"])
        .status()
        .unwrap()
        .success());
    fails_naming(&broken, "app-disk1.vmdk", "missing from the archive");
}

#[test]
fn verify_rejects_a_wrong_ovf_size() {
    let (dir, ovf) = setup();
    let ova = pack(dir.path(), &ovf, "full.ova");
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    assert!(Command::new("tar").args(["-xf", p(&ova), "-C", p(&x)]).status().unwrap().success());
    let real = std::fs::metadata(x.join("app-disk1.vmdk")).unwrap().len();
    // Rewrite the descriptor with a wrong size and no manifest, so only the size is wrong.
    std::fs::write(x.join("app.ovf"), descriptor(Some(real + 512))).unwrap();
    let broken = dir.path().join("wrongsize.ova");
    assert!(Command::new("tar")
        .current_dir(&x)
        .args(["--format=ustar", "-cf", p(&broken), "app.ovf", "app-disk1.vmdk"])
        .status()
        .unwrap()
        .success());
    fails_naming(&broken, "app-disk1.vmdk", "ovf:size");
}

#[test]
fn pack_and_verify_errors_are_clear() {
    let (dir, ovf) = setup();
    std::fs::remove_file(dir.path().join("app-disk1.vmdk")).unwrap();
    let out = capstan(&["ova", "pack", "--ovf", p(&ovf), "-o", p(&dir.path().join("o.ova"))]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("app-disk1.vmdk") && err.contains("not found"), "{err}");
    assert!(!dir.path().join("o.ova").exists());

    let out = capstan(&["ova", "verify", p(&dir.path().join("nope.ova"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.ova"));
}
