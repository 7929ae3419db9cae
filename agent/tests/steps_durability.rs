//! What first boot promises about its writes (docs/firstboot.md, "How steps run"): a failed step
//! changes no file; the per-instance record is written after the run's writes were made
//! durable, and last; no per-file fsync; a second run changes nothing. The order of renames
//! and syncs is observed on the real binary with strace.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use capstan_agent::root::Root;
use capstan_agent::steps::{self, Mode, PerInstance, Plan, StepStatus, User};
use common::{snapshot, BIN};

const METADATA: &str = r#"instance-id: "vm-durable-1"
local-hostname: "md-0-durable"
network:
  version: 2
  ethernets:
    id0:
      match:
        macaddress: "00:50:56:aa:bb:01"
      set-name: "eth0"
      addresses: ["10.10.0.21/24"]
      gateway4: "10.10.0.1"
"#;

const USERDATA: &str = r#"#cloud-config
users:
  - name: alice
    sudo: ALL=(ALL) NOPASSWD:ALL
    ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDurable alice@x"]
ntp: {enabled: true, servers: [10.0.0.1]}
write_files:
  - path: /etc/kubernetes/a.conf
    content: "a\n"
  - path: /etc/kubernetes/b.conf
    permissions: '0600'
    content: "b\n"
"#;

/// A minimal Debian-like root in `r`.
fn skeleton_in(r: &Path) {
    for d in ["etc/ssh", "etc/skel", "etc/systemd/network"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    let files = [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n"),
        ("etc/group", "root:x:0:\nadm:x:4:\nshadow:x:42:\nsudo:x:27:\n"),
        ("etc/gshadow", "root:*::\nadm:*::\nshadow:*::\nsudo:*::\n"),
        ("etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\ttemplate\n"),
        ("etc/hostname", "template\n"),
        ("etc/machine-id", ""),
    ];
    for (p, c) in files {
        std::fs::write(r.join(p), c).unwrap();
    }
}

fn skeleton() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    skeleton_in(t.path());
    t
}

/// A step that fails after staging its files leaves every file as it was (temp files
/// included in the comparison, so a leftover shows).
#[test]
fn a_failed_step_changes_no_file() {
    let t = skeleton();
    let b = t.path();
    // alice's ~/.ssh is a file: the users step fails after it staged the account files
    std::fs::create_dir_all(b.join("home/alice")).unwrap();
    std::fs::write(b.join("home/alice/.ssh"), "in the way").unwrap();
    let root = Root::new(b).unwrap();
    let plan = Plan {
        users: vec![User {
            name: "alice".into(),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDurable a@x".into()],
            sudo: vec!["ALL=(ALL) NOPASSWD:ALL".into()],
            ..User::default_user()
        }],
        ssh_host_key_types: Vec::new(),
        ..Plan::default()
    };
    let before = snapshot(b);
    let recs =
        steps::run(&root, &plan, Mode::Rooted { run_commands: false }, &PerInstance::fresh());
    let users = recs.iter().find(|r| r.name == "users").unwrap();
    assert_eq!(users.status, StepStatus::Failed, "{users:?}");
    assert!(users.error.as_deref().unwrap().contains(".ssh"), "{users:?}");
    let after = snapshot(b);
    for f in ["etc/passwd", "etc/shadow", "etc/group", "etc/gshadow"] {
        assert_eq!(before[f], after[f], "{f} changed by a failed step");
    }
    assert!(!b.join("etc/sudoers.d/90-capstan-users").exists());
    // nothing else changed or appeared: no temp files, no sudoers, no authorized_keys
    assert_eq!(before, after, "a failed step changed files");

    // with the obstacle gone the same plan applies, and a second run changes nothing
    std::fs::remove_file(b.join("home/alice/.ssh")).unwrap();
    let recs =
        steps::run(&root, &plan, Mode::Rooted { run_commands: false }, &PerInstance::fresh());
    assert!(recs.iter().all(|r| r.status != StepStatus::Failed), "{recs:?}");
    assert!(std::fs::read_to_string(b.join("etc/passwd")).unwrap().contains("alice:"));
    let done = PerInstance::from_records(&recs);
    let once = snapshot(b);
    steps::run(&root, &plan, Mode::Rooted { run_commands: false }, &done);
    assert_eq!(once, snapshot(b), "a second run changed files");
}

fn strace() -> &'static str {
    let ok = Command::new("strace").arg("-V").output().map(|o| o.status.success());
    assert!(
        matches!(ok, Ok(true)),
        "strace is needed to observe the agent's sync order (apt-get install strace)"
    );
    "strace"
}

/// Runs `firstboot --root` under strace; returns the traced rename/sync calls, one per line.
fn traced_firstboot(root: &Path, gi: &Path) -> Vec<String> {
    let log = root
        .parent()
        .unwrap()
        .join(format!("strace-{}.log", root.file_name().unwrap().to_string_lossy()));
    let out = Command::new(strace())
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=openat,rename,renameat,renameat2,fsync,fdatasync,syncfs,sync",
        ])
        .arg("-o")
        .arg(&log)
        .arg(BIN)
        .args(["firstboot", "--root"])
        .arg(root)
        .arg("--guestinfo-dir")
        .arg(gi)
        .output()
        .unwrap();
    assert!(out.status.success(), "firstboot failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&log).unwrap();
    text.lines().filter(|l| !l.contains("exited with")).map(str::to_owned).collect()
}

/// On a filesystem that does not order a replacing rename after the new file's data (tmpfs
/// here; also ext4 without a journal, XFS, ...): a sync before the renames, one before the
/// record.
#[test]
fn the_record_is_written_last_after_one_sync_and_a_rerun_changes_nothing() {
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    the_record_is_written_last(work.path(), 2);
}

/// On ext4 with a journal in its default modes (`data=ordered`, `auto_da_alloc`), as the
/// appliance's root is made: a rename that replaces a file waits for the new data by itself,
/// so the only sync is the one before the record.
#[test]
fn on_a_journalled_ext4_the_only_sync_is_before_the_record() {
    let fs = LoopExt4::new();
    the_record_is_written_last(&fs.mnt, 1);
}

/// A fresh ext4 (journal, mkfs defaults) loop-mounted for one test; unmounted on drop.
struct LoopExt4 {
    _dir: tempfile::TempDir,
    mnt: std::path::PathBuf,
}

impl LoopExt4 {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
        let run = |cmd: &mut Command, what: &str| {
            let out =
                cmd.output().unwrap_or_else(|e| panic!("{what}: {e} (needs e2fsprogs, mount)"));
            assert!(
                out.status.success(),
                "{what} failed (needs root and loop devices): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(
            Command::new("mkfs.ext4").args(["-q", "-F", "-E", "lazy_itable_init=0"]).arg(&img),
            "mkfs.ext4",
        );
        run(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&mnt), "mount -o loop");
        LoopExt4 { _dir: dir, mnt }
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

fn the_record_is_written_last(work: &Path, expected_syncs: usize) {
    let gi = work.join("gi");
    common::write_guestinfo(&gi, &[("metadata", METADATA), ("userdata", USERDATA)]);
    let root = work.join("root");
    skeleton_in(&root);

    let calls = traced_firstboot(&root, &gi);
    let fsyncs: Vec<_> =
        calls.iter().filter(|l| l.contains("fsync(") || l.contains("fdatasync(")).collect();
    assert!(fsyncs.is_empty(), "per-file fsyncs: {fsyncs:?}");
    let is_sync = |l: &String| l.contains("syncfs(");
    let syncs = calls.iter().filter(|l| is_sync(l)).count();
    // one before the renames that replace files (unless the filesystem orders them itself),
    // one after them (before the record's renames)
    assert_eq!(syncs, expected_syncs, "syncfs calls: {calls:#?}");
    let pos = |needle: &str| {
        calls
            .iter()
            .rposition(|l| l.contains("rename") && l.contains(needle))
            .unwrap_or_else(|| panic!("no rename of {needle}: {calls:#?}"))
    };
    let status = pos("status.json");
    let marker = pos("lib/capstan/instance-id");
    // the last rename of a step's file: everything renamed that is not state
    let last_step = calls
        .iter()
        .rposition(|l| l.contains("rename") && !l.contains("/var/lib/capstan/"))
        .unwrap();
    assert!(last_step < status && status < marker, "order: {calls:#?}");
    let sync_before_record = last_step
        + calls[last_step..status].iter().position(is_sync).unwrap_or_else(|| {
            panic!("no syncfs between the steps' renames and the record: {calls:#?}")
        });
    // the record's content is written before that sync: its rename cannot expose an empty file
    let record_temp = calls
        .iter()
        .position(|l| l.contains("openat") && l.contains(".status.json.capstan-"))
        .unwrap_or_else(|| panic!("no temp file for the record: {calls:#?}"));
    assert!(record_temp < sync_before_record, "record written after the sync: {calls:#?}");
    assert!(calls[status..marker]
        .iter()
        .all(|l| !l.contains("rename") || l.contains("/var/lib/capstan/")));

    // the files are there, and a second run changes nothing but the record
    let b = &root;
    assert!(std::fs::read_to_string(b.join("etc/passwd")).unwrap().contains("alice:"));
    assert_eq!(std::fs::read_to_string(b.join("etc/kubernetes/b.conf")).unwrap(), "b\n");
    let strip_state = |mut s: BTreeMap<String, (u32, Vec<u8>)>| {
        s.retain(|k, _| !k.starts_with("var/lib/capstan"));
        s
    };
    let once = strip_state(snapshot(b));
    let calls = traced_firstboot(&root, &gi);
    assert_eq!(once, strip_state(snapshot(b)), "the second run changed files");
    let step_renames: Vec<_> =
        calls.iter().filter(|l| l.contains("rename") && !l.contains("/var/lib/capstan/")).collect();
    assert!(step_renames.is_empty(), "the second run rewrote files: {step_renames:?}");
}

#[test]
fn later_steps_see_earlier_steps_staged_files() {
    // write_files puts a file into /etc/skel; the users step, later in the same run, copies it
    // into a new home although it is still staged (not on disk) when users runs
    let t = skeleton();
    let b = t.path();
    let (mut plan, _) = common::cloud_init_plan(
        None,
        Some("#cloud-config\nusers:\n  - name: bob\nwrite_files:\n  - path: /etc/skel/.capstanrc\n    content: \"hello\\n\"\n"),
    );
    plan.ssh_host_key_types = Vec::new();
    plan.machine_id = false;
    let root = Root::new(b).unwrap();
    let recs =
        steps::run(&root, &plan, Mode::Rooted { run_commands: false }, &PerInstance::fresh());
    assert!(recs.iter().all(|r| r.status != StepStatus::Failed), "{recs:?}");
    assert_eq!(std::fs::read_to_string(b.join("home/bob/.capstanrc")).unwrap(), "hello\n");
    assert_eq!(std::fs::read_to_string(b.join("etc/skel/.capstanrc")).unwrap(), "hello\n");
}
