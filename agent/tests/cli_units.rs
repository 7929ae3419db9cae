//! The systemd units in agent/units/ pass `systemd-analyze verify` (with ExecStart pointed at
//! the built binary) and carry the ordering first boot depends on.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_capstan-agent");

fn unit(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("units").join(name)).unwrap()
}

#[test]
fn units_verify_and_order_first_boot_before_the_network() {
    let t = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for name in [
        "capstan-agent-firstboot.service",
        "capstan-agent-final.service",
        "capstan-agent.service",
        "capstan-agent-freeze.service",
    ] {
        let text = unit(name).replace("/usr/bin/capstan-agent", BIN);
        let p = t.path().join(name);
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("systemd-analyze (package systemd) is required for this test");
    let err = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("capstan-agent")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify:\n{err}");

    let fb = unit("capstan-agent-firstboot.service");
    for line in [
        "Type=oneshot",
        "RemainAfterExit=yes",
        "DefaultDependencies=no",
        "Wants=network-pre.target",
        "StandardOutput=journal+console",
    ] {
        assert!(fb.lines().any(|l| l == line), "firstboot unit lacks {line}");
    }
    let before = fb.lines().find(|l| l.starts_with("Before=network-pre.target")).unwrap();
    assert!(before.contains("systemd-networkd.service") && before.contains("ssh.service"));
    assert!(fb.lines().any(|l| l.starts_with("After=local-fs.target")));
    // The early stage runs before the network; runcmd waits for the final stage.
    assert!(fb.lines().any(|l| l == "ExecStart=/usr/bin/capstan-agent firstboot --stage early"));
    assert!(fb.lines().any(|l| l == "Also=capstan-agent-final.service"));
    let fin = unit("capstan-agent-final.service");
    for line in [
        "Type=oneshot",
        "RemainAfterExit=yes",
        "Wants=network-online.target",
        "ExecStart=/usr/bin/capstan-agent firstboot --stage final",
    ] {
        assert!(fin.lines().any(|l| l == line), "final unit lacks {line}");
    }
    assert!(!fin.contains("DefaultDependencies=no"), "the final stage runs after basic.target");
    let after: Vec<&str> = fin
        .lines()
        .filter_map(|l| l.strip_prefix("After="))
        .flat_map(|l| l.split_whitespace())
        .collect();
    for u in ["network-online.target", "capstan-agent-firstboot.service", "containerd.service"] {
        assert!(after.contains(&u), "final unit not after {u}: {after:?}");
    }
    let before: Vec<&str> = fin
        .lines()
        .filter_map(|l| l.strip_prefix("Before="))
        .flat_map(|l| l.split_whitespace())
        .collect();
    assert!(before.contains(&"capstan-report.service"), "{before:?}");
    let run = unit("capstan-agent.service");
    assert!(run.contains("ExecStart=/usr/bin/capstan-agent run"));
    // The unit's bounding set matches what the daemon keeps (plus SETPCAP to drop the rest).
    let bounding = run.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).unwrap();
    for c in capstan_agent::daemon::all_kept_caps() {
        assert!(bounding.split(' ').any(|b| b == c.to_string()), "{c} missing from the unit");
    }
}
