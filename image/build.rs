//! Two things `capstan` carries from its own build:
//!
//! - `capstan-veritysetup` (`image/initramfs/veritysetup.rs`), the builder's initramfs helper
//!   that maps the verified `/usr`: compiled here with the same `rustc`, statically linked
//!   (`+crt-static`, so it runs in an initramfs without a libc), `panic=abort`, stripped, with
//!   the checkout's path remapped, into `OUT_DIR`; `builder::initramfs` embeds it.
//! - Which crates the `capstan-agent` binary links, for the SBOM (`builder::sbom`):
//!
//! The agent installed by `capstan build` is built from this workspace, so its dependency
//! closure is the workspace's resolve: `cargo metadata` (offline, for the appliance's target)
//! gives each package's dependencies with their kinds. The closure follows normal dependencies
//! only (not dev or build dependencies) and stops at proc-macro crates, which run in the
//! compiler and are not linked. Features are the workspace's unified ones, so a crate enabled
//! only by another member's feature may be listed too (an over-approximation, never a miss).
//! Checksums come from `Cargo.lock`, licences from each crate's manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    build_veritysetup(&manifest_dir);
    let workspace = manifest_dir.parent().expect("image/ is in the workspace");
    let lock = workspace.join("Cargo.lock");
    for watched in ["Cargo.lock", "Cargo.toml", "agent/Cargo.toml", "ovf/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--filter-platform", TARGET])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let checksums = lock_checksums(&std::fs::read_to_string(&lock).expect("reading Cargo.lock"));
    let crates = agent_closure(&meta, &checksums);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    std::fs::write(out_dir.join("agent-crates.json"), serde_json::to_vec(&crates).unwrap())
        .expect("writing agent-crates.json");
}

/// Compiles the initramfs helper into `OUT_DIR/capstan-veritysetup`.
fn build_veritysetup(manifest_dir: &std::path::Path) {
    let src = manifest_dir.join("initramfs/veritysetup.rs");
    println!("cargo:rerun-if-changed={}", manifest_dir.join("initramfs").display());
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("capstan-veritysetup");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let o = Command::new(rustc)
        .args(["--edition", "2021", "--crate-type", "bin", "--crate-name", "capstan_veritysetup"])
        .args(["--target", TARGET, "-C", "target-feature=+crt-static", "-C", "panic=abort"])
        .args(["-C", "opt-level=z", "-C", "codegen-units=1", "-C", "lto=fat"])
        .args(["-C", "strip=symbols", "-C", "debuginfo=0"])
        .arg(format!("--remap-path-prefix={}=image", manifest_dir.display()))
        .arg("-o")
        .arg(&out)
        .arg(&src)
        // The fuzz and coverage builds' flags are for capstan, not for the helper.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("running rustc for capstan-veritysetup");
    assert!(
        o.status.success(),
        "building capstan-veritysetup (static: needs glibc's libc.a, Debian libc6-dev): {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `name version` -> checksum, from `Cargo.lock`'s `[[package]]` tables.
fn lock_checksums(lock: &str) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for block in lock.split("[[package]]") {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                let v = l.strip_prefix(key)?.trim_start().strip_prefix('=')?.trim();
                Some(v.trim_matches('"').to_string())
            })
        };
        if let (Some(n), Some(v), Some(c)) = (field("name"), field("version"), field("checksum")) {
            out.insert((n, v), c);
        }
    }
    out
}

/// The agent package and everything it links: `[{name, version, sha256?, license?}]`, sorted.
fn agent_closure(meta: &Value, checksums: &BTreeMap<(String, String), String>) -> Vec<Value> {
    let packages: BTreeMap<&str, &Value> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("id"), p))
        .collect();
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .map(|n| (n["id"].as_str().expect("id"), n))
        .collect();
    let root = packages
        .values()
        .find(|p| p["name"] == "capstan-agent" && p["source"].is_null())
        .expect("capstan-agent in the workspace");
    let is_proc_macro = |p: &Value| {
        p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["kind"].as_array().into_iter().flatten().any(|k| k == "proc-macro"))
    };
    let mut seen = BTreeSet::new();
    let mut stack = vec![root["id"].as_str().expect("id")];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().into_iter().flatten() {
            let normal =
                dep["dep_kinds"].as_array().into_iter().flatten().any(|k| k["kind"].is_null());
            let dep_id = dep["pkg"].as_str().expect("pkg");
            if normal && !is_proc_macro(packages[dep_id]) {
                stack.push(dep_id);
            }
        }
    }
    let mut crates: Vec<Value> = seen
        .iter()
        .map(|id| {
            let p = packages[id];
            let name = p["name"].as_str().expect("name").to_string();
            let version = p["version"].as_str().expect("version").to_string();
            let sha = checksums.get(&(name.clone(), version.clone()));
            // Old manifests spell `MIT OR Apache-2.0` as `MIT/Apache-2.0`.
            let license = p["license"].as_str().map(|l| l.replace('/', " OR "));
            serde_json::json!({
                "name": name,
                "version": version,
                "sha256": sha,
                "license": license,
                "workspace": p["source"].is_null(),
            })
        })
        .collect();
    crates.sort_by(|a, b| {
        (a["name"].as_str(), a["version"].as_str())
            .cmp(&(b["name"].as_str(), b["version"].as_str()))
    });
    crates
}
