//! `capstan-agent run` as a real process: the status socket answers, a new instance-id in
//! guestinfo (an instant clone) re-runs first boot, capabilities beyond the kept set are gone
//! (effective and bounding), and SIGTERM stops it cleanly.

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::BIN;

/// Kills the daemon by pid if the test fails before stopping it.
struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn metadata(dir: &Path, id: &str) {
    let metadata = format!("instance-id: {id}\nlocal-hostname: {id}\n");
    common::write_guestinfo(&dir.join("gi"), &[("metadata", &metadata)]);
}

fn query(sock: &Path) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    serde_json::from_str(&buf).ok()
}

fn wait_for(
    sock: &Path,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(v) = query(sock) {
            if pred(&v) {
                return v;
            }
            last = Some(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}; last status: {last:#?}");
}

fn cap_mask(line: &str, status: &str) -> u64 {
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .unwrap_or_else(|| panic!("no {line} in /proc status"));
    u64::from_str_radix(v.trim(), 16).unwrap()
}

/// `capstan-agent run` on `DIR/root` with the guestinfo dir `DIR/gi`, its socket at `sock`
/// and `--poll SECS`.
fn spawn_run(dir: &Path, sock: &Path, poll: &str) -> Child {
    Command::new(BIN)
        .arg("run")
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--guestinfo-dir")
        .arg(dir.join("gi"))
        .arg("--socket")
        .arg(sock)
        .args(["--poll", poll])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn run_serves_status_reruns_on_new_instance_and_drops_capabilities() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    std::fs::create_dir_all(dir.join("root/etc")).unwrap();
    metadata(dir, "clone-a");
    let sock = dir.join("agent.sock");
    let child = spawn_run(dir, &sock, "1");
    let pid = child.id();
    let mut d = Daemon(child);

    let v =
        wait_for(&sock, "first run for clone-a", |v| v["firstboot"]["instance_id"] == "clone-a");
    assert_eq!(v["pid"], pid);
    assert_eq!(v["reruns"], 1, "no state yet: the daemon ran first boot itself");
    assert_eq!(std::fs::read_to_string(dir.join("root/etc/hostname")).unwrap(), "clone-a\n");
    let mid_first = std::fs::read_to_string(dir.join("root/etc/machine-id")).unwrap();

    // An instant clone: guestinfo now names a new instance.
    metadata(dir, "clone-b");
    let v = wait_for(&sock, "re-run for clone-b", |v| v["firstboot"]["instance_id"] == "clone-b");
    assert_eq!(v["reruns"], 2);
    assert_eq!(v["firstboot"]["new_instance"], true);
    assert_eq!(std::fs::read_to_string(dir.join("root/etc/hostname")).unwrap(), "clone-b\n");
    assert_ne!(
        std::fs::read_to_string(dir.join("root/etc/machine-id")).unwrap(),
        mid_first,
        "the clone got a fresh machine-id without a reboot"
    );
    // Polls without a change re-run nothing.
    let polls = v["polls"].as_u64().unwrap();
    let v = wait_for(&sock, "more polls", |v| v["polls"].as_u64().unwrap() >= polls + 2);
    assert_eq!(v["reruns"], 2);

    // Capabilities: effective and bounding are within the kept set.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    // role none: the daemon's own capabilities, no role's
    let kept: u64 = capstan_agent::daemon::kept_caps(None).iter().map(|c| 1u64 << c.index()).sum();
    let eff = cap_mask("CapEff:", &status);
    let bnd = cap_mask("CapBnd:", &status);
    assert_eq!(eff & !kept, 0, "effective caps beyond the kept set: {eff:#x}");
    assert_eq!(bnd & !kept, 0, "bounding set beyond the kept set: {bnd:#x}");
    if nix::unistd::geteuid().is_root() {
        assert_eq!(eff, kept, "running as root, exactly the kept set stays effective");
    }

    // SIGTERM: clean exit, socket removed.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGTERM)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = d.0.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
    assert!(!sock.exists(), "socket removed on exit");
}

#[test]
fn a_frozen_parents_child_is_noticed_by_the_fast_poll() {
    // `--poll 3600`: only the frozen parent's 20 ms poll can notice the child in time
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    std::fs::create_dir_all(dir.join("root/etc")).unwrap();
    metadata(dir, "parent-p");
    let sock = dir.join("agent.sock");
    let child = spawn_run(dir, &sock, "3600");
    let mut d = Daemon(child);
    wait_for(&sock, "first boot of the parent", |v| v["firstboot"]["instance_id"] == "parent-p");
    let out = Command::new(BIN).args(["freeze", "--root"]).arg(dir.join("root")).output().unwrap();
    common::assert_exit(&out, 0);
    assert!(dir.join("root/run/capstan/frozen.json").exists());
    // the parent is forked: guestinfo names the child
    metadata(dir, "child-c");
    let v = wait_for(&sock, "the child's re-identification", |v| {
        v["firstboot"]["instance_id"] == "child-c"
    });
    let r = &v["firstboot"]["reidentified"];
    assert_eq!(r["trigger"], "frozen-poll", "{v:#}");
    assert_eq!(r["previous_instance_id"], "parent-p");
    assert!(!dir.join("root/run/capstan/frozen.json").exists(), "the child thawed");
    let console = std::fs::read_to_string(dir.join("root/dev/console")).unwrap();
    assert!(console.lines().any(|l| l.starts_with("CAPSTAN-FROZEN {")), "{console}");
    assert!(console.lines().any(|l| l.starts_with("CAPSTAN-REIDENTIFIED {")), "{console}");
    let _ = d.0.kill();
}
