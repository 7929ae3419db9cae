//! The `lab` action against the record `capstan lab run --state-dir` keeps (docs/lab.md):
//! `DIR/<id>/argv.json` and `DIR/<id>/qemu.pid`. Real processes stand in for QEMU (the action
//! runs any recorded command line; tests/tests/hub_lab.rs runs it on a real lab VM): the
//! recorded process is killed and the command line started again; a stale pid is never
//! signalled; a missing directory, a malformed argv.json or qemu.pid, and a command that exits
//! at once are failures naming the file, also as a hub records them.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use capstan_hub::remedy::actions::Action;
use capstan_hub::tracker::node::Node;

fn node(id: &str, uuid: &str) -> Node {
    let mut hb =
        capstan_agent::heartbeat::Heartbeat::new(id.parse().unwrap(), "vm".parse().unwrap(), "lb");
    hb.bios_uuid = uuid.into();
    Node::new(&hb, "10.0.0.9", tokio::time::Instant::now(), 0).0
}

/// A VM directory with `argv` (as JSON text) and, if given, `pid` in qemu.pid.
fn record(dir: &Path, name: &str, argv: &str, pid: Option<&str>) -> std::path::PathBuf {
    let vm = dir.join(name);
    std::fs::create_dir_all(&vm).unwrap();
    std::fs::write(vm.join("argv.json"), argv).unwrap();
    match pid {
        Some(p) => std::fs::write(vm.join("qemu.pid"), p).unwrap(),
        None => drop(std::fs::remove_file(vm.join("qemu.pid"))),
    }
    vm
}

async fn act(dir: &Path, n: &Node) -> Result<String, String> {
    Action::Lab(dir.into()).run(n, "ep-1", Duration::from_secs(20)).await
}

fn recorded_pid(vm: &Path) -> u32 {
    std::fs::read_to_string(vm.join("qemu.pid")).unwrap().trim().parse().unwrap()
}

fn cmdline(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default().replace('\0', " ")
}

/// Starts `argv` and waits until its command line shows it: `spawn` can return while the child
/// is still inside `execve` (glibc's `posix_spawn` resumes the parent once the new memory map is
/// in place, before the arguments are copied in), and an empty `/proc/PID/cmdline` reads as a
/// stale pid to the action.
fn spawn_running(argv: &[&str]) -> Child {
    let child = Command::new(argv[0]).args(&argv[1..]).spawn().unwrap();
    let want = format!("{} ", argv.join(" "));
    let t = std::time::Instant::now();
    while cmdline(child.id()) != want {
        assert!(t.elapsed() < Duration::from_secs(10), "{argv:?} did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// Kills a process the action started (not our child: by pid).
fn end(pid: u32) {
    let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
}

#[tokio::test]
async fn the_recorded_process_is_killed_and_its_command_line_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut old: Child = spawn_running(&["sleep", "30"]);
    let vm = record(dir.path(), "iid-vm", r#"["sleep","30"]"#, Some(&format!("{}\n", old.id())));
    let r = act(dir.path(), &node("iid-vm", "")).await.unwrap();
    assert!(old.wait().unwrap().code().is_none(), "the old process was killed by a signal");
    let pid = recorded_pid(&vm);
    assert_ne!(pid, old.id());
    assert_eq!(cmdline(pid), "sleep 30 ", "{r}");
    assert!(r.starts_with(&format!("restarted iid-vm ({}) as pid {pid}", vm.display())), "{r}");
    assert!(r.ends_with(&format!("killed pid {}", old.id())), "{r}");
    // Again: now the recorded pid is the action's own child.
    let r2 = act(dir.path(), &node("iid-vm", "")).await.unwrap();
    assert!(r2.ends_with(&format!("killed pid {pid}")), "{r2}");
    end(recorded_pid(&vm));
}

#[tokio::test]
async fn a_stale_pid_is_never_signalled() {
    let dir = tempfile::tempdir().unwrap();
    // qemu.pid names a live process that runs something else (the pid was reused).
    let mut bystander = spawn_running(&["sleep", "31"]);
    let vm =
        record(dir.path(), "iid-vm", r#"["sleep","30"]"#, Some(&format!("{}\n", bystander.id())));
    let r = act(dir.path(), &node("iid-vm", "")).await.unwrap();
    assert!(r.contains(&format!("pid {} in qemu.pid was stale", bystander.id())), "{r}");
    assert_eq!(bystander.try_wait().unwrap(), None, "the bystander was signalled");
    let pid = recorded_pid(&vm);
    assert_eq!(cmdline(pid), "sleep 30 ");
    end(pid);
    let _ = bystander.kill();
    let _ = bystander.wait();
}

#[tokio::test]
async fn the_record_is_found_by_bios_uuid_when_the_instance_id_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let uuid = "4c4c4544-0032-3010-8036-b4c04f4d4432";
    let vm = record(dir.path(), uuid, r#"["sleep","30"]"#, None);
    let r = act(dir.path(), &node("iid-other", uuid)).await.unwrap();
    let pid = recorded_pid(&vm);
    assert!(r.starts_with(&format!("restarted iid-other ({}) as pid {pid}", vm.display())), "{r}");
    end(pid);
}

#[tokio::test]
async fn bad_records_fail_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let e = act(dir.path(), &node("iid-gone", "")).await.unwrap_err();
    assert!(
        e.starts_with(&format!("no lab record for iid-gone: neither {d}/iid-gone exists")),
        "{e}"
    );
    let e = act(dir.path(), &node("iid-gone", "u-1")).await.unwrap_err();
    assert!(e.contains(&format!("nor {d}/u-1")), "{e}");
    for (argv, want) in [
        ("[]", "argv.json: empty command line"),
        ("", "argv.json: not a JSON array of strings"),
        ("{\"argv\":[\"qemu\"]}", "argv.json: not a JSON array of strings"),
        ("[\"qemu\", 7]", "argv.json: not a JSON array of strings"),
        ("[\"qemu\"", "argv.json: not a JSON array of strings"),
    ] {
        record(dir.path(), "iid-bad", argv, None);
        let e = act(dir.path(), &node("iid-bad", "")).await.unwrap_err();
        assert!(e.starts_with(&format!("{d}/iid-bad/{want}")), "{argv:?}: {e}");
    }
    let vm = dir.path().join("iid-bad");
    std::fs::remove_file(vm.join("argv.json")).unwrap();
    let e = act(dir.path(), &node("iid-bad", "")).await.unwrap_err();
    assert!(e.starts_with(&format!("reading {d}/iid-bad/argv.json: No such file")), "{e}");
    for pid in ["", "abc", "-5", "1", "12 13"] {
        record(dir.path(), "iid-bad", r#"["sleep","30"]"#, Some(pid));
        let e = act(dir.path(), &node("iid-bad", "")).await.unwrap_err();
        assert!(e.starts_with(&format!("{d}/iid-bad/qemu.pid: ")), "{pid:?}: {e}");
        assert!(e.ends_with("is not a process id"), "{pid:?}: {e}");
    }
    // A command line that cannot run, or ends at once (QEMU finding its disk locked).
    record(dir.path(), "iid-bad", r#"["/nonexistent/qemu"]"#, None);
    let e = act(dir.path(), &node("iid-bad", "")).await.unwrap_err();
    assert!(e.starts_with("starting /nonexistent/qemu"), "{e}");
    record(
        dir.path(),
        "iid-bad",
        r#"["sh","-c","echo Failed to get write lock >&2; exit 1"]"#,
        None,
    );
    let e = act(dir.path(), &node("iid-bad", "")).await.unwrap_err();
    assert_eq!(e, "sh exited at once (exit status: 1): Failed to get write lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_records_a_missing_record_as_a_failed_remediation() {
    let dir = tempfile::tempdir().unwrap();
    let certs = common::certs(dir.path());
    let lab = dir.path().join("lab");
    std::fs::create_dir(&lab).unwrap();
    record(&lab, "iid-argv", "not json", None);
    let path = dir.path().join("hub.db");
    let remediate = format!("lab:{}", lab.display());
    let hub = common::HubProc::start(
        &certs,
        &format!("sqlite:{}", path.display()),
        &["--interval", "200ms", "--remediate", &remediate],
    );
    for id in ["iid-norecord", "iid-argv"] {
        let mut c = common::node_client(&hub.url, &certs, id);
        // A role each: two silent nodes of one role would be mass silence (no action).
        let mut hb = common::beat(id, 1, true);
        hb.role = id.to_owned();
        let (s, _) = c.request(hyper::Method::POST, "/v1/heartbeat", hb.to_json()).await.unwrap();
        assert!(s.is_success());
    }
    let mut reader = common::node_client(&hub.url, &certs, "reader");
    wait_until!(Duration::from_secs(15), "two failed remediations", {
        let n = common::get_json(&mut reader, "/v1/nodes").await;
        n["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["last_result"].as_str().unwrap_or("").starts_with("lab failed"))
    });
    let rems = capstan_hub::store::Sqlite::open(&path).unwrap().remediations().unwrap();
    assert_eq!(rems.len(), 2, "{rems:?}");
    let by = |id: &str| rems.iter().find(|r| r.node == id).unwrap_or_else(|| panic!("{rems:?}"));
    assert_eq!(by("iid-norecord").outcome, "failed");
    assert!(by("iid-norecord").detail.contains("lab/iid-norecord exists"), "{rems:?}");
    assert!(by("iid-argv").detail.contains("lab/iid-argv/argv.json: not a JSON array"), "{rems:?}");
    let (_, m) = reader.request(hyper::Method::GET, "/metrics", Vec::new()).await.unwrap();
    assert!(String::from_utf8_lossy(&m)
        .contains("capstan_hub_remediations_total{action=\"lab\",result=\"failed\"} 2"));
}
