//! `capstan-agent firstboot --stage early|final|all` against a temp root: the early stage
//! leaves `runcmd` and deferred `write_files` pending; the final stage runs them once, from
//! the plan the early stage kept (its user-data is scrubbed by then), and merges its records
//! into the instance's status; running either stage again changes nothing; a new instance-id
//! runs both again; a final stage with no early record for the instance runs every step.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::{assert_exit, step, BIN};

fn metadata(instance: &str) -> String {
    format!("instance-id: {instance}\nlocal-hostname: stage-node\n")
}

/// `runcmd` appends to `runcmd.count` under the root, and only succeeds when the deferred file
/// is already there (cloud-init writes deferred files before runcmd).
const USERDATA: &str = r#"#cloud-config
write_files:
- path: /etc/early.conf
  content: early
- path: /etc/deferred.conf
  content: deferred
  defer: true
runcmd:
- 'test -f "$CAPSTAN_ROOT/etc/deferred.conf" && echo ran >> "$CAPSTAN_ROOT/runcmd.count"'
"#;

fn setup(dir: &Path, instance: &str, userdata: &str) {
    if !dir.join("root/etc/passwd").exists() {
        common::minimal_root(&dir.join("root"));
    }
    common::write_guestinfo(
        &dir.join("gi"),
        &[("metadata", &metadata(instance)), ("userdata", userdata)],
    );
}

fn firstboot(dir: &Path, extra: &[&str]) -> Output {
    common::firstboot(&dir.join("root"), &dir.join("gi"))
        .arg("--run-commands")
        .args(extra)
        .env("CAPSTAN_LOG", "warn")
        .output()
        .unwrap()
}

fn status(dir: &Path) -> serde_json::Value {
    common::status_json(&dir.join("root"))
}

fn stages(st: &serde_json::Value) -> Vec<String> {
    st["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap().into()).collect()
}

fn runs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("root/runcmd.count")).map(|s| s.lines().count()).unwrap_or(0)
}

/// Every file under the root except the agent's own status record, with mode and content.
fn snapshot(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut files = common::snapshot(root);
    files.retain(|rel, _| !rel.ends_with("status.json"));
    files
}

#[test]
fn early_leaves_runcmd_pending_and_final_runs_it_once() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    setup(dir, "iid-stage-1", USERDATA);

    // Early, live-like: consumed user-data is scrubbed from guestinfo at the end.
    assert_exit(&firstboot(dir, &["--stage", "early", "--scrub"]), 0);
    assert_eq!(std::fs::read_to_string(dir.join("gi/userdata")).unwrap(), "---");
    let st = status(dir);
    assert_eq!(stages(&st), ["early"]);
    assert_eq!(st["result"], "ok", "{st:#}");
    for s in ["hostname", "machine-id", "write-files"] {
        assert_eq!(step(&st, s)["status"], "ok", "{s}: {st:#}");
    }
    for s in ["network-online", "write-files-deferred", "runcmd"] {
        assert_eq!(step(&st, s)["status"], "pending", "{s}: {st:#}");
    }
    assert_eq!(runs(dir), 0, "the early stage ran runcmd");
    assert!(dir.join("root/etc/early.conf").exists());
    assert!(!dir.join("root/etc/deferred.conf").exists(), "deferred file written early");
    // The final stage's plan is kept, mode 0600 (it holds command lines with tokens).
    let kept = dir.join("root/var/lib/capstan/instances/iid-stage-1/final-plan.json");
    assert_eq!(std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777, 0o600);
    let human = Command::new(BIN).args(["status", "--root"]).arg(dir.join("root")).output();
    let human = String::from_utf8(human.unwrap().stdout).unwrap();
    assert!(human.lines().any(|l| l.contains("pending") && l.contains("runcmd")), "{human}");
    assert!(human.lines().any(|l| l.starts_with("stages") && l.contains("early ok")), "{human}");

    // Final: from the kept plan (the user-data is gone from guestinfo by now).
    assert_exit(&firstboot(dir, &["--stage", "final"]), 0);
    assert_eq!(runs(dir), 1);
    assert_eq!(std::fs::read_to_string(dir.join("root/etc/deferred.conf")).unwrap(), "deferred");
    let st = status(dir);
    assert_eq!(stages(&st), ["early", "final"]);
    assert_eq!(st["result"], "ok", "{st:#}");
    assert_eq!(step(&st, "runcmd")["status"], "ok", "{st:#}");
    assert_eq!(step(&st, "write-files-deferred")["status"], "ok");
    assert_eq!(step(&st, "network-online")["status"], "skipped");
    // The early stage's records are still there, once each, in order.
    let names: Vec<&str> =
        st["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert_eq!(names.iter().filter(|n| **n == "runcmd").count(), 1);
    assert!(pos("sources") < pos("hostname") && pos("users") < pos("network-online"));
    assert!(
        pos("network-online") < pos("write-files-deferred") && pos("runcmd") == names.len() - 1
    );
    assert_eq!(step(&st, "hostname")["status"], "ok");
    let done: Vec<&str> =
        st["done"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert!(done.contains(&"runcmd") && done.contains(&"machine-id"), "{done:?}");

    // Final again: runcmd does not run twice, no file changes.
    let before = snapshot(&dir.join("root"));
    assert_exit(&firstboot(dir, &["--stage", "final"]), 0);
    assert_eq!(runs(dir), 1, "runcmd ran twice for one instance");
    assert_eq!(snapshot(&dir.join("root")), before);
    let st = status(dir);
    assert!(step(&st, "runcmd")["detail"].as_str().unwrap().contains("already ran"), "{st:#}");
    assert_eq!(stages(&st), ["early", "final", "final"]);

    // A reboot of the same instance: early then final again, still one run, nothing changed.
    assert_exit(&firstboot(dir, &["--stage", "early"]), 0);
    assert_exit(&firstboot(dir, &["--stage", "final"]), 0);
    assert_eq!(runs(dir), 1);
    let after = snapshot(&dir.join("root"));
    let changed: Vec<&String> = after.keys().filter(|k| after.get(*k) != before.get(*k)).collect();
    // Only the kept plan may differ: the scrubbed user-data no longer has the commands.
    assert!(changed.iter().all(|k| k.ends_with("final-plan.json")), "{changed:?}");
    assert_eq!(status(dir)["result"], "ok");

    // A new instance-id (a clone, with fresh user-data) runs both stages again.
    setup(dir, "iid-stage-2", USERDATA);
    assert_exit(&firstboot(dir, &["--stage", "early"]), 0);
    assert_eq!(runs(dir), 1, "early stage of the new instance ran runcmd");
    assert_exit(&firstboot(dir, &["--stage", "final"]), 0);
    assert_eq!(runs(dir), 2);
    let st = status(dir);
    assert_eq!(st["instance_id"], "iid-stage-2");
    assert_eq!(st["new_instance"], true);
    assert_eq!(stages(&st), ["early", "final"]);
    assert_eq!(step(&st, "machine-id")["status"], "ok");
    assert_eq!(step(&st, "runcmd")["status"], "ok");
}

#[test]
fn without_a_stage_flag_every_step_runs() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    setup(dir, "iid-all", USERDATA);
    assert_exit(&firstboot(dir, &[]), 0);
    assert_eq!(runs(dir), 1);
    let st = status(dir);
    assert_eq!(stages(&st), ["all"]);
    for s in ["hostname", "write-files", "write-files-deferred", "runcmd"] {
        assert_eq!(step(&st, s)["status"], "ok", "{s}: {st:#}");
    }
    // --root: the wait for a routable address is not a live effect here.
    assert_eq!(step(&st, "network-online")["status"], "skipped");
    // Again: nothing runs twice.
    assert_exit(&firstboot(dir, &[]), 0);
    assert_eq!(runs(dir), 1);
}

#[test]
fn final_without_an_early_record_runs_every_step() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    setup(dir, "iid-no-early", USERDATA);
    assert_exit(&firstboot(dir, &["--stage", "final"]), 0);
    assert_eq!(runs(dir), 1);
    let st = status(dir);
    assert_eq!(stages(&st), ["all"], "{st:#}");
    assert_eq!(step(&st, "hostname")["status"], "ok");
    assert_eq!(step(&st, "write-files")["status"], "ok");
    assert_eq!(step(&st, "runcmd")["status"], "ok");
    assert_eq!(std::fs::read_to_string(dir.join("root/etc/hostname")).unwrap(), "stage-node\n");

    // Early ran for another instance (the template's, say): the final stage of this clone
    // must not run its commands on the old identity; it runs everything for the new one.
    setup(dir, "iid-other", USERDATA);
    assert_exit(&firstboot(dir, &["--stage", "final"]), 0);
    assert_eq!(runs(dir), 2);
    let st = status(dir);
    assert_eq!(st["instance_id"], "iid-other");
    assert_eq!(stages(&st), ["all"]);
    assert_eq!(step(&st, "machine-id")["status"], "ok");
}

#[test]
fn final_runs_after_a_failed_early_stage_and_the_record_stays_failed() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    // An early file that cannot be written (its path climbs out of the root): write-files fails.
    let bad = USERDATA.replace("path: /etc/early.conf", "path: /../../escape.conf");
    setup(dir, "iid-early-failed", &bad);
    let o = firstboot(dir, &["--stage", "early"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let st = status(dir);
    assert_eq!(step(&st, "write-files")["status"], "failed", "{st:#}");
    assert_eq!(step(&st, "runcmd")["status"], "pending");

    // As cloud-final after a failed init module: the final steps still run; its exit code is
    // about its own steps; the merged record keeps the early failure.
    assert_exit(&firstboot(dir, &["--stage", "final"]), 0);
    assert_eq!(runs(dir), 1);
    let st = status(dir);
    assert_eq!(stages(&st), ["early", "final"]);
    assert_eq!(step(&st, "runcmd")["status"], "ok");
    assert_eq!(step(&st, "write-files")["status"], "failed");
    assert_eq!(st["result"], "failed");
    assert_eq!(st["stages"][1]["result"], "ok");
    let o = Command::new(BIN).args(["status", "--root"]).arg(dir.join("root")).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "status exit code reflects the failed early step");
    assert!(!dir.join("escape.conf").exists() && !t.path().join("../escape.conf").exists());
}

#[test]
fn a_bad_stage_is_a_usage_error() {
    let t = tempfile::tempdir().unwrap();
    setup(t.path(), "iid-x", USERDATA);
    let o = firstboot(t.path(), &["--stage", "late"]);
    assert_eq!(o.status.code(), Some(1), "a usage error, not a failed step");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--stage") && err.contains("early") && err.contains("final"), "{err}");
    assert!(!t.path().join("root/var/lib/capstan").exists(), "nothing recorded");
}
