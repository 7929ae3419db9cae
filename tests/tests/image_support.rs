//! Shared by the image_* and lab_* tests (included with `#[path]`): one lb image per test run,
//! built into `target/capstan-e2e/` with its own stage cache, so every test after the first
//! (and every later run with unchanged inputs) reuses it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The capstan binary.
pub fn capstan() -> PathBuf {
    capstan_e2e::capstan_bin()
}

/// `target/capstan-e2e`, or `$CAPSTAN_E2E_DIR` (to run the image tests with their own image
/// and stage cache, e.g. next to another run of them).
pub fn e2e_dir() -> PathBuf {
    std::env::var_os("CAPSTAN_E2E_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| capstan_e2e::target_dir().join("capstan-e2e"))
}

/// Path as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn build_into(profile: &str, out: &Path, extra: &[&str]) -> PathBuf {
    let agent = capstan_e2e::workspace_bin("capstan-agent", "capstan-agent");
    let cache = e2e_dir().join("cache");
    let mut cmd = Command::new(capstan());
    cmd.current_dir(capstan_e2e::workspace_root())
        .args(["build", profile, "-o", s(out), "--formats", "ova,qcow2"])
        .args(["--agent-bin", s(&agent), "--cache", s(&cache)])
        .args(extra);
    let o = cmd.output().expect("run capstan build");
    assert!(
        o.status.success(),
        "capstan build {profile} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    out.to_path_buf()
}

/// Builds (or reuses) the lb image; returns its output directory (lb.ova, lb.qcow2,
/// lb.build.json).
pub fn lb_image() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build_into("lb", &e2e_dir().join("lb"), &[])).clone()
}

/// Builds (or reuses) the node image (no `--kube-bin`: the template as built without
/// Kubernetes binaries); returns its output directory (node.ova, node.qcow2, node.build.json).
pub fn node_image() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build_into("node", &e2e_dir().join("node"), &[])).clone()
}

/// Runs `capstan build PROFILE -o OUT --agent-bin .. EXTRA` with the shared stage cache and
/// returns its output, successful or not (for tests of the builder's errors).
pub fn try_build(profile: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let agent = capstan_e2e::workspace_bin("capstan-agent", "capstan-agent");
    let cache = e2e_dir().join("cache");
    Command::new(capstan())
        .current_dir(capstan_e2e::workspace_root())
        .args(["build", profile, "-o", s(out), "--agent-bin", s(&agent), "--cache", s(&cache)])
        .args(extra)
        .output()
        .expect("run capstan build")
}

/// Builds (or reuses) the lb image with `--firmware bios` (SYSLINUX on the ESP; hybrid: it
/// boots under UEFI too) into `lb-bios/`, sharing the stage cache with [`lb_image`].
pub fn lb_bios_image() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build_into("lb", &e2e_dir().join("lb-bios"), &["--firmware", "bios"]))
        .clone()
}

/// Builds lb with `--firmware bios` into `out` with this agent binary (a snapshot, so that a
/// concurrent `cargo build` of the agent cannot change the inputs between two builds), on the
/// shared cache; `extra` e.g. `--rebuild disk,outputs`.
pub fn build_lb_bios_with_agent(out: &Path, agent: &Path, extra: &[&str]) -> PathBuf {
    let cache = e2e_dir().join("cache");
    let o = Command::new(capstan())
        .current_dir(capstan_e2e::workspace_root())
        .args(["build", "lb", "-o", s(out), "--formats", "ova,qcow2", "--firmware", "bios"])
        .args(["--agent-bin", s(agent), "--cache", s(&cache)])
        .args(extra)
        .output()
        .expect("run capstan build");
    assert!(
        o.status.success(),
        "capstan build lb --firmware bios failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    out.to_path_buf()
}

/// The sha256 of each output recorded in `DIR/PROFILE.build.json`, by format.
pub fn output_digests(dir: &Path, profile: &str) -> Vec<(String, String)> {
    let path = dir.join(format!("{profile}.build.json"));
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
    )
    .unwrap();
    let mut out: Vec<(String, String)> = report["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["format"].as_str().unwrap().into(), o["sha256"].as_str().unwrap().into()))
        .collect();
    out.sort();
    out
}

/// Builds lb again into `out`, redoing every stage after the cached rootfs.
pub fn rebuild_lb(out: &Path) -> PathBuf {
    build_into("lb", out, &["--rebuild", "customize,disk,outputs"])
}

/// QEMU under TCG takes both cores: one boot at a time.
pub fn boot_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A test SSH key (not a real key pair; the agent only installs it).
pub const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGNhcHN0YW4tZTJlLXRlc3Qta2V5LW5vdC1hLXJlYWwta2V5 e2e@capstan";

/// Runs `capstan lab run IMAGE ARGS --wait-ready --json` and returns the JSON result.
pub fn lab_run(image: &Path, args: &[String]) -> serde_json::Value {
    let _guard = boot_lock();
    let log = image.with_extension(format!("serial-{}.log", std::process::id()));
    let o = Command::new(capstan())
        .args(["lab", "run", s(image)])
        .args(args)
        .args(["--wait-ready", "--json", "--timeout", "300", "--serial-log", s(&log)])
        .output()
        .expect("run capstan lab run");
    assert!(o.status.success(), "capstan lab run failed:\n{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("lab output is not JSON ({e}):\n{}", String::from_utf8_lossy(&o.stdout))
    })
}

/// The step named `name` in an agent status.
pub fn step<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["steps"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {status:#}"))
}

/// Asserts what every lab boot in these tests gives the appliance, whatever delivered it: the
/// ready report, `hostname` applied, the static address 10.0.2.15/24 live, one SSH key for the
/// user, and host keys generated in the guest (per instance, never baked).
pub fn assert_identity_applied(r: &serde_json::Value, hostname: &str) {
    assert_eq!(r["ready"], true, "{r:#}");
    let st = &r["status"];
    let h = step(st, "hostname");
    assert_eq!(h["status"], "ok", "{h:#}");
    assert!(h["detail"].as_str().unwrap().contains(hostname), "{h:#}");
    let n = step(st, "network");
    assert_eq!(n["status"], "ok", "{n:#}");
    let live = step(st, "network-live");
    assert!(
        live["detail"].as_str().unwrap().contains("10.0.2.15/24"),
        "static address not applied: {live:#}"
    );
    let u = step(st, "users");
    assert_eq!(u["status"], "ok", "{u:#}");
    assert!(u["detail"].as_str().unwrap().contains("1 key"), "{u:#}");
    assert_eq!(step(st, "ssh-host-keys")["status"], "ok");
}

/// The names of the sources an agent status says it read, in order.
pub fn source_names(status: &serde_json::Value) -> Vec<&str> {
    status["sources"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect()
}
