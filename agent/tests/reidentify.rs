//! Live re-identification under a root (`reidentify::run`, the daemon's path for a clone of a
//! running parent): the parent's first boot, then children from its state, each becoming its
//! own instance: a fresh machine-id (both files), new SSH host keys (checked with
//! `ssh-keygen`), its host name, networkd files matching its MAC; every step recorded with
//! its duration; the console line the lab reads. Hostile new identities are refused whole.
//! And `capstan-agent freeze --root`: the marker, the console line, the guestinfo state.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use capstan_agent::guestinfo::DirGuestinfo;
use capstan_agent::reidentify::{self, console, freeze, Outcome, Request, Trigger};
use capstan_agent::root::Root;
use capstan_agent::sources::{self, SourceOptions};
use capstan_agent::steps::{Mode, StepId, StepStatus};

fn metadata(id: &str, host: &str, mac: &str, addr: &str) -> String {
    format!(
        "instance-id: {id}\nlocal-hostname: {host}\nnetwork:\n  version: 2\n  ethernets:\n    id0:\n      match:\n        macaddress: \"{mac}\"\n      set-name: eth0\n      addresses: [\"{addr}\"]\n      gateway4: 10.20.0.1\n"
    )
}

/// A root after the parent's first boot (with a dbus machine-id file, as older images have).
fn parent(dir: &Path) -> Root {
    common::minimal_root(dir);
    std::fs::create_dir_all(dir.join("etc/ssh")).unwrap();
    std::fs::create_dir_all(dir.join("var/lib/dbus")).unwrap();
    std::fs::write(dir.join("var/lib/dbus/machine-id"), "template\n").unwrap();
    let gi = dir.join("../gi-parent");
    common::write_guestinfo(
        &gi,
        &[("metadata", &metadata("parent-1", "parent", "00:50:56:aa:00:01", "10.20.0.11/24"))],
    );
    let root = Root::new(dir).unwrap();
    let opts = SourceOptions { guestinfo_dir: Some(gi), ..SourceOptions::rooted(dir) };
    let st =
        capstan_agent::boot::run_once(&opts, &root, Mode::Rooted { run_commands: false }, false);
    assert!(!st.failed(), "{:?}", st.steps);
    root
}

fn read(dir: &Path, p: &str) -> String {
    std::fs::read_to_string(dir.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn child_gather(dir: &Path, gi_name: &str, md: &str) -> sources::Gathered {
    let gi = dir.join(format!("../{gi_name}"));
    common::write_guestinfo(&gi, &[("metadata", md)]);
    let opts = SourceOptions::rooted(dir);
    sources::gather_with(&opts, Some(Box::new(DirGuestinfo::new(&gi))))
}

fn reidentify_as(root: &Root, g: &sources::Gathered) -> Outcome {
    let req = Request {
        root,
        live: false,
        trigger: Trigger::FrozenPoll,
        detected: Instant::now(),
        gather_ms: 3,
    };
    let mut after = |_: &capstan_agent::state::Status| {
        vec![reidentify::record(
            StepId::RoleRefresh,
            Instant::now(),
            Ok((StepStatus::Skipped, "no role".into())),
        )]
    };
    reidentify::run(g, &req, &mut after)
}

fn ssh_keygen_fingerprint(pub_file: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-l")
        .arg("-E")
        .arg("sha256")
        .arg("-f")
        .arg(pub_file)
        .output()
        .expect("ssh-keygen (openssh-client) is required");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().split_whitespace().nth(1).unwrap().to_owned()
}

fn console_lines(dir: &Path, mark: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("dev/console")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix(mark)?.strip_prefix(' '))
        .map(|j| serde_json::from_str(j).unwrap())
        .collect()
}

#[test]
fn children_of_one_parent_each_become_their_own_instance() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("root");
    let root = parent(&dir);
    let parent_mid = read(&dir, "etc/machine-id");
    let parent_key = read(&dir, "etc/ssh/ssh_host_ed25519_key.pub");
    assert_eq!(read(&dir, "var/lib/dbus/machine-id"), parent_mid, "first boot wrote both");
    let snapshot = t.path().join("parent-snapshot");
    assert!(Command::new("cp").arg("-a").arg(&dir).arg(&snapshot).status().unwrap().success());

    let mut seen_mids = vec![parent_mid.clone()];
    let mut seen_fps = vec![ssh_keygen_fingerprint(&dir.join("etc/ssh/ssh_host_ed25519_key.pub"))];
    for i in 1..=3 {
        // each child starts from the parent's state, as a fork does
        let cdir = t.path().join(format!("child-{i}"));
        assert!(Command::new("cp").arg("-a").arg(&snapshot).arg(&cdir).status().unwrap().success());
        let root = Root::new(&cdir).unwrap();
        let md = metadata(
            &format!("child-{i}"),
            &format!("child-{i}"),
            &format!("00:50:56:aa:00:1{i}"),
            &format!("10.20.0.2{i}/24"),
        );
        let g = child_gather(&cdir, &format!("gi-{i}"), &md);
        let Outcome::Done(st, later) = reidentify_as(&root, &g) else { panic!("refused") };
        assert!(!st.failed(), "{:?}", st.steps);
        assert_eq!(st.instance_id, format!("child-{i}"));
        let r = st.reidentified.as_ref().unwrap();
        assert_eq!(r.previous_instance_id.as_deref(), Some("parent-1"));
        assert_eq!(r.trigger, "frozen-poll");
        assert_eq!(r.gather_ms, 3);

        // machine-id: fresh, systemd's format, both files
        let mid = read(&cdir, "etc/machine-id");
        assert_eq!(mid.len(), 33, "{mid:?}");
        assert!(mid.trim_end().bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(&mid[12..13], "4", "a v4 UUID without dashes");
        assert!(!seen_mids.contains(&mid), "machine-id reused: {mid}");
        assert_eq!(read(&cdir, "var/lib/dbus/machine-id"), mid);
        seen_mids.push(mid.clone());

        // SSH host keys: new, valid for ssh-keygen, distinct
        let key = read(&cdir, "etc/ssh/ssh_host_ed25519_key.pub");
        assert_ne!(key, parent_key);
        let fp = ssh_keygen_fingerprint(&cdir.join("etc/ssh/ssh_host_ed25519_key.pub"));
        assert!(!seen_fps.contains(&fp), "{fp} reused");
        assert_eq!(console::fingerprint(&key).unwrap(), fp, "our fingerprint is OpenSSH's");
        seen_fps.push(fp.clone());

        // host name and networkd files: the child's
        assert_eq!(read(&cdir, "etc/hostname"), format!("child-{i}\n"));
        let files: Vec<String> = std::fs::read_dir(cdir.join("etc/systemd/network"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        let all = files.join("\n");
        assert!(all.contains(&format!("MACAddress=00:50:56:aa:00:1{i}")), "{all}");
        assert!(all.contains(&format!("Address=10.20.0.2{i}/24")), "{all}");
        assert!(!all.contains("00:50:56:aa:00:01") && !all.contains("10.20.0.11"), "{all}");

        // every step recorded with its duration, in order: the RNG first, sshd after the
        // keys and files are in place, the daemon's own, then the steps after the line
        let names: Vec<&str> = st.steps.iter().map(|s| s.name.as_str()).collect();
        // the record of reading the sources, then the RNG before anything random
        assert_eq!(names[..2], ["sources", "rng-reseed"], "{names:?}");
        let at = |n: &str| {
            names.iter().position(|x| *x == n).unwrap_or_else(|| panic!("{n}: {names:?}"))
        };
        assert!(at("rng-reseed") < at("machine-id") && at("rng-reseed") < at("ssh-host-keys"));
        assert!(at("ssh-host-keys") < at("sshd-reload"));
        assert_eq!(at("sshd-reload"), at("network-live") + 1);
        assert!(at("network") < at("network-live"));
        assert_eq!(names[names.len() - 3..], ["role-refresh", "hostnamed", "networkd-reload"]);
        for n in ["hostnamed", "networkd-reload"] {
            let s = &st.steps[at(n)];
            assert_eq!(s.status, StepStatus::Pending, "{s:?}");
        }
        assert_eq!(r.after, ["hostnamed", "networkd-reload"]);
        assert_eq!(r.after_ms, None);
        assert!(!names.contains(&"bootcmd"));
        let json = serde_json::to_value(&*st).unwrap();
        assert!(json["steps"].as_array().unwrap().iter().all(|s| s["duration_ms"].is_u64()));

        // recorded: status --json shows it, and the console line carries the facts
        let status = common::status_json_ok(&cdir);
        assert_eq!(status["instance_id"], format!("child-{i}"));
        assert_eq!(status["reidentified"]["previous_instance_id"], "parent-1");
        let lines = console_lines(&cdir, console::REIDENTIFIED_MARK);
        assert_eq!(lines.len(), 1, "one line per re-identification");
        let l = &lines[0];
        assert_eq!(l["instance_id"], format!("child-{i}"));
        assert_eq!(l["hostname"], format!("child-{i}"));
        assert_eq!(l["machine_id"], mid.trim_end());
        assert_eq!(l["ssh_host_key_fingerprints"][0], fp);
        assert_eq!(l["previous_instance_id"], "parent-1");
        assert_eq!(l["trigger"], "frozen-poll");
        assert!(l["reidentify_ms"].is_u64());
        assert_eq!(l["steps"][1]["name"], "rng-reseed");
        assert!(l["steps"].as_array().unwrap().iter().all(|s| s["duration_ms"].is_u64()));

        // the steps after the line end (skipped under a root), recorded in place, and their
        // own line follows
        let done = later.wait().expect("the record is updated after the deferred steps");
        let re = done.reidentified.as_ref().unwrap();
        assert!(re.after_ms.is_some_and(|a| a >= re.duration_ms), "{re:?}");
        for n in ["hostnamed", "networkd-reload"] {
            let s = done.steps.iter().find(|s| s.name == n).unwrap();
            assert_eq!(s.status, StepStatus::Skipped, "{s:?}");
            assert!(s.detail.starts_with("after the re-identified line: "), "{s:?}");
        }
        let status = common::status_json_ok(&cdir);
        assert_eq!(status["steps"].as_array().unwrap().len(), done.steps.len());
        assert!(status["steps"].as_array().unwrap().iter().all(|s| s["status"] != "pending"));
        let after = console_lines(&cdir, console::AFTER_MARK);
        assert_eq!(after.len(), 1, "one line after the deferred steps");
        assert_eq!(after[0]["instance_id"], format!("child-{i}"));
        assert_eq!(after[0]["steps"].as_array().unwrap().len(), 2, "{}", after[0]);
    }
    drop(root);
}

#[test]
fn a_hostile_new_identity_is_refused_whole_and_nothing_is_applied() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("root");
    let root = parent(&dir);
    let before: Vec<(String, String)> = [
        "etc/machine-id",
        "etc/hostname",
        "etc/ssh/ssh_host_ed25519_key.pub",
        "var/lib/capstan/instance-id",
    ]
    .iter()
    .map(|p| (p.to_string(), read(&dir, p)))
    .collect();
    let net_before = std::fs::read_dir(dir.join("etc/systemd/network")).unwrap().count();
    let cases = [
        (
            "bad-host",
            metadata("child-x", "bad_host!", "00:50:56:aa:00:21", "10.20.0.21/24"),
            "local-hostname",
        ),
        (
            "long-host",
            metadata("child-y", &"a".repeat(64), "00:50:56:aa:00:22", "10.20.0.22/24"),
            "local-hostname",
        ),
        (
            "bad-addr",
            metadata("child-z", "child-z", "00:50:56:aa:00:23", "10.20.0.300/24"),
            "addresses",
        ),
        (
            "bad-mac",
            metadata("child-w", "child-w", "00:50:56:zz:00:24", "10.20.0.24/24"),
            "macaddress",
        ),
    ];
    for (tag, md, key) in cases {
        let g = child_gather(&dir, &format!("gi-{tag}"), &md);
        let Outcome::Refused(lines) = reidentify_as(&root, &g) else {
            panic!("{tag}: a hostile identity was applied")
        };
        let all = lines.join("\n");
        assert!(all.contains(key), "{tag}: the error names the key: {all}");
        assert!(all.contains("metadata"), "{tag}: the error names the source: {all}");
        for (p, v) in &before {
            assert_eq!(&read(&dir, p), v, "{tag}: {p} changed");
        }
        assert_eq!(std::fs::read_dir(dir.join("etc/systemd/network")).unwrap().count(), net_before);
    }
    let refused = console_lines(&dir, console::REFUSED_MARK);
    assert_eq!(refused.len(), 4);
    assert!(refused[0]["errors"][0].as_str().unwrap().contains("local-hostname"), "{}", refused[0]);
    assert!(console_lines(&dir, console::REIDENTIFIED_MARK).is_empty());
}

#[test]
fn freeze_marks_the_parent_and_a_child_thaws_it() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("root");
    let root = parent(&dir);
    let gi = t.path().join("gi-parent");
    let out = Command::new(env!("CARGO_BIN_EXE_capstan-agent"))
        .args(["freeze", "--json", "--root"])
        .arg(&dir)
        .arg("--guestinfo-dir")
        .arg(&gi)
        .output()
        .unwrap();
    common::assert_exit(&out, 0);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> =
        report["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["journal-sync", "sync", "marker", "guestinfo"]);
    assert_eq!(report["steps"][0]["status"], "skipped");
    assert_eq!(report["steps"][1]["status"], "ok");
    // the marker, with the parent's facts
    let marker = freeze::frozen(&root).expect("marker");
    assert_eq!(marker.parent.instance_id.as_deref(), Some("parent-1"));
    assert_eq!(marker.parent.hostname.as_deref(), Some("parent"));
    assert_eq!(marker.parent.ssh_host_key_fingerprints.len(), 1);
    // the console line the lab waits for
    let lines = console_lines(&dir, console::FROZEN_MARK);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["instance_id"], "parent-1");
    assert_eq!(lines[0]["machine_id"], read(&dir, "etc/machine-id").trim_end());
    assert!(lines[0]["frozen_at"].is_u64());
    // guestinfo.capstan.state
    let state = std::fs::read_to_string(gi.join("guestinfo.capstan.state"))
        .or_else(|_| std::fs::read_to_string(gi.join("capstan.state")))
        .unwrap();
    assert_eq!(state, "frozen instance-id=parent-1");

    // a child re-identifies: the marker goes
    let g = child_gather(
        &dir,
        "gi-c",
        &metadata("child-1", "child-1", "00:50:56:aa:00:11", "10.20.0.21/24"),
    );
    let Outcome::Done(_, later) = reidentify_as(&root, &g) else { panic!("refused") };
    later.wait();
    assert!(freeze::frozen(&root).is_none());
    assert!(!dir.join("run/capstan/frozen.json").exists());
}

#[test]
fn a_refused_freeze_rpc_leaves_nothing_marked() {
    #[derive(Debug)]
    struct Refuses;
    impl freeze::ForkRpc for Refuses {
        fn freeze(&self) -> Result<String, capstan_agent::guestinfo::GuestinfoError> {
            Err(capstan_agent::guestinfo::GuestinfoError::Refused {
                command: "instantclone.freeze",
                reply: "Instant clone is not enabled".into(),
            })
        }
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("root");
    let root = parent(&dir);
    let gi = t.path().join("gi-parent");
    let opts = freeze::FreezeOptions {
        root: root.clone(),
        live: false,
        guestinfo: Some(Box::new(DirGuestinfo::new(&gi))),
        rpc: Some(Box::new(Refuses)),
    };
    let e = freeze::freeze(&opts).unwrap_err();
    let chain = capstan_agent::error::chain(&e);
    assert!(chain.contains("instantclone.freeze") && chain.contains("not enabled"), "{chain}");
    assert!(freeze::frozen(&root).is_none(), "the marker was taken back");
    let state = std::fs::read_to_string(gi.join("guestinfo.capstan.state"))
        .or_else(|_| std::fs::read_to_string(gi.join("capstan.state")))
        .unwrap();
    assert_eq!(state, "running instance-id=parent-1");
}

#[test]
fn the_uevent_listener_reads_the_kernels_events() {
    // a real kernel uevent: writing "change" to a device's `uevent` file makes the kernel
    // send one (needs root); the listener receives it on its netlink socket and parses it
    use capstan_agent::reidentify::generation::UeventListener;
    let dev = [
        "/sys/devices/virtual/misc/rfkill",
        "/sys/devices/virtual/mem/null",
        "/sys/devices/virtual/tty/tty",
    ]
    .into_iter()
    .find(|d| Path::new(d).join("uevent").exists())
    .expect("a virtual device");
    let l = UeventListener::open().expect("uevent socket");
    let (tx, rx) = std::sync::mpsc::channel();
    let want = dev.trim_start_matches("/sys").to_owned();
    std::thread::spawn(move || loop {
        match l.next() {
            Ok(Ok(ev)) if ev.devpath == want => {
                let _ = tx.send(ev);
                return;
            }
            Ok(_) => {}
            Err(_) => return,
        }
    });
    std::fs::write(Path::new(dev).join("uevent"), "change").expect("trigger a uevent (root)");
    let ev = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the kernel's uevent");
    assert_eq!(ev.action, "change");
    assert_eq!(ev.vars.get("ACTION").map(String::as_str), Some("change"));
    assert!(ev.vars.contains_key("SEQNUM"), "{ev:?}");
    assert!(!ev.is_new_vmgenid(), "not a generation change");
}
