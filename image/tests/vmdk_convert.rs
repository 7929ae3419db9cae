//! `capstan vmdk convert` and `capstan vmdk info` as an operator runs them.

use std::path::Path;
use std::process::{Command, Output};

fn capstan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capstan")).args(args).output().expect("run capstan")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn sample_raw(len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| ((i * 31) ^ (i >> 9)) as u8).collect();
    v[len / 3..len / 2].fill(0);
    v
}

#[test]
fn raw_to_vmdk_and_back_is_lossless_and_qemu_img_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let data = sample_raw(3 * 1024 * 1024 + 4096);
    std::fs::write(&raw, &data).unwrap();
    let vmdk = dir.path().join("disk.vmdk");
    let out = capstan(&["vmdk", "convert", p(&raw), p(&vmdk)]);
    assert!(out.status.success(), "{out:?}");
    let q = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "vmdk", p(&raw), p(&vmdk)])
        .output()
        .expect("qemu-img is required (apt-get install qemu-utils)");
    assert!(q.status.success(), "qemu-img compare: {q:?}");

    let back = dir.path().join("back.img");
    let out = capstan(&["vmdk", "convert", p(&vmdk), p(&back)]);
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::read(&back).unwrap() == data);

    let out = capstan(&["vmdk", "info", "--json", p(&vmdk)]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["capacity"], data.len() as u64);
    assert_eq!(v["create_type"], "streamOptimized");
    assert_eq!(v["adapter_type"], "lsilogic");
    assert_eq!(v["flags"], "0x30001");
}

#[test]
fn adapter_type_option_reaches_the_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    std::fs::write(&raw, sample_raw(70_000 / 512 * 512)).unwrap();
    let vmdk = dir.path().join("d.vmdk");
    let out = capstan(&["vmdk", "convert", "--adapter-type", "ide", p(&raw), p(&vmdk)]);
    assert!(out.status.success(), "{out:?}");
    let out = capstan(&["vmdk", "info", p(&vmdk)]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("ddb.adapterType = \"ide\""), "{text}");
    let out = capstan(&["vmdk", "convert", "--adapter-type", "nvme", p(&raw), p(&vmdk)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown VMDK adapter type"));
}

#[test]
fn clear_errors_for_missing_input_unknown_extension_and_bad_vmdk() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.raw");
    let out = capstan(&["vmdk", "convert", p(&missing), p(&dir.path().join("x.vmdk"))]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.raw") && err.contains("cannot open"), "{err}");

    let raw = dir.path().join("in.raw");
    std::fs::write(&raw, vec![1u8; 4096]).unwrap();
    let out = capstan(&["vmdk", "convert", p(&raw), p(&dir.path().join("x.qcow2"))]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("x.qcow2") && err.contains(".vmdk, .raw or .img"), "{err}");

    // A raw file is not a VMDK: converting it "back" names the input and the problem, and
    // leaves no output behind.
    let target = dir.path().join("out.raw");
    let out = capstan(&["vmdk", "convert", p(&raw), p(&target)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in.raw") && err.contains("bad magic"), "{err}");
    assert!(!target.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".capstan"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
