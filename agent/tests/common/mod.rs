//! Helpers shared by the agent's integration tests (`mod common;`): a root and a guestinfo
//! directory to run on, the real binary's `firstboot` and `status --json`, and a tree
//! snapshot to compare before and after a run.

// Each test binary uses a subset of these.
#![allow(dead_code)]

pub mod kubenode;
pub mod netns;
pub mod networkd;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;

/// The `capstan-agent` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_capstan-agent");

/// The account files the users step edits, with only root (and the groups sudoers join), in
/// `root/etc`; the directory is created when missing.
pub fn minimal_root(root: &Path) {
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\nadm:x:4:\nsudo:x:27:\n").unwrap();
    std::fs::write(etc.join("shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
}

/// A `--guestinfo-dir` at `gi` (created when missing) holding `files`, each a key as the
/// directory transport reads it (`metadata`, `guestinfo.userdata.encoding`, ...) and its value.
pub fn write_guestinfo(gi: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(gi).unwrap();
    for (key, value) in files {
        std::fs::write(gi.join(key), value).unwrap();
    }
}

/// Standard base64, as guestinfo's `base64` encoding.
pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Gzip at `level`, as the `gzip+base64` encoding (before its base64).
pub fn gzip(b: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// `capstan-agent firstboot --root ROOT --guestinfo-dir GI`, for the caller to add arguments
/// and environment to and run.
pub fn firstboot(root: &Path, gi: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("firstboot").arg("--root").arg(root).arg("--guestinfo-dir").arg(gi);
    cmd
}

/// Asserts that a run exited with `code`, showing its stderr otherwise.
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `capstan-agent status --json --root ROOT`, run and parsed, whatever its exit code (2 after
/// a failed run); panics with its stderr when it printed no JSON.
pub fn status_json(root: &Path) -> serde_json::Value {
    status_json_exit(root).1
}

/// [`status_json`] of a run that must exit 0.
pub fn status_json_ok(root: &Path) -> serde_json::Value {
    let (out, st) = status_json_exit(root);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    st
}

fn status_json_exit(root: &Path) -> (Output, serde_json::Value) {
    let out = Command::new(BIN).args(["status", "--json", "--root"]).arg(root).output().unwrap();
    let st = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out, st)
}

/// The record of step `name` in a status.
pub fn step<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {st:#}"))
}

/// Every file under `dir` (relative path → mode and content), to compare a tree before and
/// after a run.
pub fn snapshot(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, (m.permissions().mode(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out
}

/// The plan production builds from cloud-init documents: `metadata` and `userdata` as a
/// guestinfo directory read by the VMware provider ([`capstan_agent::sources::gather_with`])
/// and planned by [`capstan_agent::boot::build_plan`], with no other source. Returns the plan
/// and the issues (each naming its source and key).
pub fn cloud_init_plan(
    metadata: Option<&str>,
    userdata: Option<&str>,
) -> (capstan_agent::steps::Plan, Vec<capstan_agent::boot::Issue>) {
    let t = tempfile::tempdir().unwrap();
    let gi = t.path().join("gi");
    std::fs::create_dir_all(&gi).unwrap();
    if let Some(m) = metadata {
        std::fs::write(gi.join("metadata"), m).unwrap();
    }
    if let Some(u) = userdata {
        std::fs::write(gi.join("userdata"), u).unwrap();
    }
    let opts = capstan_agent::sources::SourceOptions::rooted(t.path().join("root"));
    let g = capstan_agent::sources::gather_with(
        &opts,
        Some(Box::new(capstan_agent::guestinfo::DirGuestinfo::new(&gi))),
    );
    capstan_agent::boot::build_plan(&g)
}
