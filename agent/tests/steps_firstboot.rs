//! Drives every first-boot step against a temp root, from CAPV-style metadata and user-data,
//! and checks the rendered files against golden files (`UPDATE_GOLDEN=1` rewrites them).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

mod common;

use capstan_agent::cloudinit::parse_metadata;
use capstan_agent::root::Root;
use capstan_agent::steps::{
    self, Command, Mode, NetworkConfig, Nic, PerInstance, Plan, StepRecord, StepStatus, User,
};

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/capv").join(name);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A minimal Debian-like root: account files, /etc/hosts, old SSH host keys, /etc/skel.
fn skeleton() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    let w = |p: &str, c: &str, mode: u32| {
        let p = r.join(p.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, c).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    w(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
        0o644,
    );
    w("/etc/shadow", "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n", 0o640);
    w("/etc/group", "root:x:0:\ndaemon:x:1:\nadm:x:4:\nshadow:x:42:\nsudo:x:27:\n", 0o644);
    w("/etc/gshadow", "root:*::\ndaemon:*::\nadm:*::\nshadow:*::\nsudo:*::\n", 0o640);
    w(
        "/etc/hosts",
        "127.0.0.1\tlocalhost\n127.0.1.1\ttemplate\n\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        0o644,
    );
    w("/etc/hostname", "template\n", 0o644);
    w("/etc/machine-id", "", 0o444);
    w("/etc/ssh/sshd_config", "Include /etc/ssh/sshd_config.d/*.conf\n", 0o644);
    w("/etc/ssh/sshd_config.d/99-capv.conf", "# kept\n", 0o644);
    w("/etc/ssh/ssh_host_rsa_key", "OLD TEMPLATE KEY\n", 0o600);
    w("/etc/ssh/ssh_host_rsa_key.pub", "ssh-rsa OLD\n", 0o644);
    w("/etc/skel/.bashrc", "# skel\n", 0o644);
    w("/etc/systemd/network/10-capstan-stale.network", "[Match]\nName=old0\n", 0o644);
    w("/etc/systemd/network/99-default.link", "# not ours\n", 0o644);
    t
}

fn full_plan() -> Plan {
    let (plan, issues) = common::cloud_init_plan(
        Some(&fixture("metadata-static.yaml")),
        Some(&fixture("userdata-kubeadm.yaml")),
    );
    assert!(issues.is_empty(), "{issues:?}");
    plan
}

fn by_name(recs: &[StepRecord]) -> BTreeMap<String, StepRecord> {
    recs.iter().map(|r| (r.name.clone(), r.clone())).collect()
}

/// Path → (mode, uid, content) of every file under `dir`.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            let content = if m.is_file() { fs::read(e.path()).unwrap() } else { Vec::new() };
            out.insert(
                e.path().strip_prefix(dir).unwrap().to_path_buf(),
                (m.mode(), m.uid(), content),
            );
        }
    }
    out
}

fn golden(name: &str, actual: &str) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/steps").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, actual).unwrap();
    }
    let want = fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("golden {}: {e} (run with UPDATE_GOLDEN=1)", p.display()));
    assert_eq!(actual, want, "golden file {name} differs");
}

fn read(root: &Path, p: &str) -> String {
    fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn mode(root: &Path, p: &str) -> (u32, u32, u32) {
    let m =
        fs::metadata(root.join(p.trim_start_matches('/'))).unwrap_or_else(|e| panic!("{p}: {e}"));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn full_capv_input_renders_golden_files() {
    let t = skeleton();
    let root = Root::new(t.path()).unwrap();
    let recs = steps::run(
        &root,
        &full_plan(),
        Mode::Rooted { run_commands: false },
        &PerInstance::fresh(),
    );
    let r = by_name(&recs);
    assert_eq!(recs.len(), steps::BUILTIN.len());
    for rec in &recs {
        assert_ne!(rec.status, StepStatus::Failed, "{rec:?}");
    }
    assert_eq!(r["network-live"].status, StepStatus::Skipped);
    assert_eq!(r["runcmd"].status, StepStatus::Skipped);
    assert!(r["runcmd"].detail.contains("not run under --root"), "{:?}", r["runcmd"]);
    assert!(r["hostname"].detail.contains("kernel hostname skipped"));
    let b = root.base();

    // networkd: every file we own, and the stale one gone, the foreign one kept
    let names = root.list("/etc/systemd/network").unwrap();
    assert_eq!(
        names,
        [
            "10-capstan-id0.link",
            "10-capstan-id0.network",
            "10-capstan-id1.link",
            "10-capstan-id1.network",
            "10-capstan-id2.link",
            "10-capstan-id2.network",
            "99-default.link"
        ]
    );
    for n in names.iter().filter(|n| n.starts_with("10-capstan-")) {
        golden(&format!("network/{n}"), &read(b, &format!("/etc/systemd/network/{n}")));
    }
    golden("hosts", &read(b, "/etc/hosts"));
    assert_eq!(read(b, "/etc/hostname"), "cp-0\n");
    golden("timesyncd-capstan.conf", &read(b, "/etc/systemd/timesyncd.conf.d/capstan.conf"));
    assert!(!b.join("etc/systemd/resolved.conf.d/capstan.conf").exists(), "no global DNS given");

    // accounts
    golden("passwd", &read(b, "/etc/passwd"));
    golden("group", &read(b, "/etc/group"));
    golden("shadow", &read(b, "/etc/shadow"));
    golden("gshadow", &read(b, "/etc/gshadow"));
    golden("sudoers-90-capstan-users", &read(b, "/etc/sudoers.d/90-capstan-users"));
    assert_eq!(mode(b, "/etc/sudoers.d/90-capstan-users").0, 0o440);
    assert_eq!(mode(b, "/etc/shadow"), (0o640, 0, 42));
    assert_eq!(mode(b, "/home/capv/.ssh/authorized_keys"), (0o600, 1000, 1000));
    assert_eq!(mode(b, "/home/capv/.ssh"), (0o700, 1000, 1000));
    assert_eq!(mode(b, "/home/ops"), (0o700, 1001, 1001));
    assert_eq!(read(b, "/home/ops/.bashrc"), "# skel\n");
    assert!(read(b, "/home/capv/.ssh/authorized_keys").contains("capv@mgmt"));

    // write_files: content, modes, owners, append, deferred after users
    assert!(
        read(b, "/etc/kubernetes/pki/ca.key").starts_with("-----BEGIN PRIVATE KEY-----\nfake\n")
    );
    assert_eq!(mode(b, "/etc/kubernetes/pki/ca.key"), (0o600, 0, 0));
    assert_eq!(mode(b, "/etc/kubernetes/pki/ca.crt").0, 0o640);
    assert_eq!(
        read(b, "/etc/ssh/sshd_config.d/99-capv.conf"),
        "# kept\nPasswordAuthentication no\n"
    );
    assert_eq!(mode(b, "/home/capv/.profile-capstan"), (0o600, 1000, 1000));

    // identity
    let mid = read(b, "/etc/machine-id");
    assert_eq!(mid.len(), 33, "{mid:?}");
    assert!(mid.trim().bytes().all(|c| c.is_ascii_hexdigit()));
    assert!(!b.join("etc/ssh/ssh_host_rsa_key").exists(), "template key removed");
    assert_eq!(mode(b, "/etc/ssh/ssh_host_ed25519_key").0, 0o600);
    assert_eq!(mode(b, "/etc/ssh/ssh_host_ed25519_key.pub").0, 0o644);
    assert!(!b.join("etc/ssh/ssh_host_ecdsa_key").exists(), "ed25519 only by default");
    assert!(read(b, "/etc/ssh/ssh_host_ed25519_key.pub").starts_with("ssh-ed25519 "));
    let out = std::process::Command::new("ssh-keygen")
        .arg("-l")
        .arg("-f")
        .arg(b.join("etc/ssh/ssh_host_ed25519_key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen cannot read the generated key");
    // the in-process Ed25519 key: OpenSSH derives the same public key from the private file
    let out = std::process::Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(b.join("etc/ssh/ssh_host_ed25519_key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen -y: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        read(b, "/etc/ssh/ssh_host_ed25519_key.pub").trim()
    );
}

#[test]
fn second_run_changes_nothing_and_new_instance_reruns() {
    let t = skeleton();
    let root = Root::new(t.path()).unwrap();
    let plan = full_plan();
    let first =
        steps::run(&root, &plan, Mode::Rooted { run_commands: false }, &PerInstance::fresh());
    let before = snapshot(t.path());
    let second = steps::run(
        &root,
        &plan,
        Mode::Rooted { run_commands: false },
        &PerInstance::from_records(&first),
    );
    let after = snapshot(t.path());
    let changed: Vec<_> =
        before.keys().chain(after.keys()).filter(|k| before.get(*k) != after.get(*k)).collect();
    assert!(changed.is_empty(), "second run changed {changed:?}");
    let r = by_name(&second);
    for s in ["machine-id", "ssh-host-keys", "write-files", "write-files-deferred"] {
        assert_eq!(r[s].status, StepStatus::Skipped, "{s}: {:?}", r[s]);
        assert!(r[s].detail.contains("for this instance"), "{:?}", r[s]);
    }
    // a clone: same input, new instance → fresh identity
    let mid = read(t.path(), "/etc/machine-id");
    let key = read(t.path(), "/etc/ssh/ssh_host_ed25519_key.pub");
    steps::run(&root, &plan, Mode::Rooted { run_commands: false }, &PerInstance::fresh());
    assert_ne!(read(t.path(), "/etc/machine-id"), mid);
    assert_ne!(read(t.path(), "/etc/ssh/ssh_host_ed25519_key.pub"), key);
}

#[test]
fn write_files_escaping_the_root_is_refused_and_nothing_is_written() {
    let t = skeleton();
    let root = Root::new(t.path()).unwrap();
    let (plan, _) = common::cloud_init_plan(None, Some(&fixture("userdata-escape.yaml")));
    let recs =
        steps::run(&root, &plan, Mode::Rooted { run_commands: false }, &PerInstance::fresh());
    let r = &by_name(&recs)["write-files"];
    assert_eq!(r.status, StepStatus::Failed);
    let err = r.error.as_deref().unwrap();
    assert!(
        err.contains("write_files[1] /../../etc/escaped") && err.contains("escapes the root"),
        "{err}"
    );
    assert!(!t.path().join("etc/ok.conf").exists(), "half-applied: the valid file was written");
    assert!(!Path::new("/etc/escaped").exists());
    // the other steps still ran (production plans no default user for a cloud-config
    // without `users`: the users step has nothing to do, it is not blocked)
    let users = &by_name(&recs)["users"];
    assert!(matches!(users.status, StepStatus::Ok | StepStatus::Skipped), "{users:?}");
    assert_eq!(by_name(&recs)["machine-id"].status, StepStatus::Ok);

    // symlink tricks: an absolute symlink is resolved inside the root, a relative one that
    // climbs out is refused
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), t.path().join("etc/abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../", t.path().join("etc/up")).unwrap();
    let mut plan = Plan::default();
    let f = |p: &str| steps::WriteFile {
        path: p.into(),
        content: b"x".to_vec(),
        permissions: "0644".parse().unwrap(),
        owner: Default::default(),
        append: false,
        defer: false,
    };
    plan.files = vec![f("/etc/abs/inside")];
    let recs =
        steps::run(&root, &plan, Mode::Rooted { run_commands: false }, &PerInstance::fresh());
    assert_eq!(by_name(&recs)["write-files"].status, StepStatus::Ok);
    assert!(fs::read_dir(outside.path()).unwrap().next().is_none(), "wrote outside the root");
    let inside = t.path().join(outside.path().strip_prefix("/").unwrap()).join("inside");
    assert!(inside.exists(), "absolute symlink target taken inside the root");
    plan.files = vec![f("/etc/up/tmp/x")];
    let recs =
        steps::run(&root, &plan, Mode::Rooted { run_commands: false }, &PerInstance::fresh());
    let r = &by_name(&recs)["write-files"];
    assert_eq!(r.status, StepStatus::Failed);
    assert!(r.error.as_deref().unwrap().contains("escapes the root"), "{r:?}");
}

#[test]
fn invalid_network_config_writes_no_network_file() {
    let t = skeleton();
    let root = Root::new(t.path()).unwrap();
    // the parsers refuse these, naming source and key
    for (f, want) in [
        ("metadata-invalid-cidr.yaml", "metadata: network.ethernets.id0.addresses[1]: invalid CIDR \"10.0.0.300/24\""),
        ("metadata-duplicate-name.yaml", "metadata: network.ethernets.id1.set-name: interface name eth0 is also used by network.ethernets.id0"),
    ] {
        let e = parse_metadata(&fixture(f)).unwrap_err().to_string();
        assert!(e.starts_with(want), "{f}: {e}");
    }
    // and a plan built around the parser is checked again by the step, before any write
    let mut a = Nic::new("a");
    a.mac = Some("00:50:56:00:00:01".parse().unwrap());
    a.set_name = Some("eth0".parse().unwrap());
    a.dhcp4 = true;
    let mut b = a.clone();
    b.id = "b".into();
    b.mac = Some("00:50:56:00:00:02".parse().unwrap());
    let plan = Plan { network: NetworkConfig { nics: vec![a, b] }, ..Plan::default() };
    let before = root.list("/etc/systemd/network").unwrap();
    let recs =
        steps::run(&root, &plan, Mode::Rooted { run_commands: false }, &PerInstance::fresh());
    let r = &by_name(&recs)["network"];
    assert_eq!(r.status, StepStatus::Failed);
    assert!(r.error.as_deref().unwrap().contains("no file written"), "{r:?}");
    assert_eq!(root.list("/etc/systemd/network").unwrap(), before);
}

#[test]
fn commands_follow_cloud_init_semantics_when_allowed() {
    let t = skeleton();
    let root = Root::new(t.path()).unwrap();
    let plan = Plan {
        bootcmd: vec![Command::Shell("echo \"boot $1\" > \"$CAPSTAN_ROOT/boot-marker\"".into())],
        runcmd: vec![
            // a list is exec'd without a shell: the '>' and '$' reach echo literally
            Command::Exec(vec!["sh".into(), "-c".into(), "echo exec-ok > run-marker".into()]),
            Command::Exec(vec!["echo".into(), "$HOME".into(), ">".into(), "x".into()]),
            Command::Shell("echo out; echo err >&2; exit 3".into()),
            Command::Shell("echo after-failure > after-marker".into()),
        ],
        ..Plan::default()
    };
    let recs =
        steps::run(&root, &plan, Mode::Rooted { run_commands: false }, &PerInstance::fresh());
    assert_eq!(by_name(&recs)["bootcmd"].status, StepStatus::Skipped);
    assert!(!t.path().join("boot-marker").exists());

    let recs = steps::run(&root, &plan, Mode::Rooted { run_commands: true }, &PerInstance::fresh());
    let r = by_name(&recs);
    assert_eq!(r["bootcmd"].status, StepStatus::Ok, "{:?}", r["bootcmd"]);
    assert_eq!(read(t.path(), "/boot-marker"), "boot \n");
    assert_eq!(read(t.path(), "/run-marker"), "exec-ok\n");
    assert!(!t.path().join("x").exists(), "list item went through a shell");
    assert_eq!(read(t.path(), "/after-marker"), "after-failure\n", "later commands still run");
    assert_eq!(r["runcmd"].status, StepStatus::Failed);
    let err = r["runcmd"].error.as_deref().unwrap();
    assert!(
        err.contains("1 of 4 command(s) failed")
            && err.contains("runcmd[2]")
            && err.contains("err"),
        "{err}"
    );
    let log = read(t.path(), "/var/log/capstan/commands.log");
    assert!(log.contains("$HOME > x\n"), "{log}");
    assert_eq!(mode(t.path(), "/var/log/capstan/commands.log").0, 0o600);
}

#[test]
fn vapp_network_and_global_dns() {
    let t = skeleton();
    let root = Root::new(t.path()).unwrap();
    let mut nics = BTreeMap::new();
    nics.insert(
        "ens192".to_string(),
        [
            ("address", "192.168.10.20/24"),
            ("gateway", "192.168.10.1"),
            ("dns", "192.168.10.2"),
            ("search", "lab.example.com"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let plan = Plan {
        network: NetworkConfig::from_vapp(&nics).unwrap(),
        dns: steps::Dns {
            nameservers: vec!["1.1.1.1".parse().unwrap()],
            search: vec!["example.com".parse().unwrap()],
        },
        hostname: Some("lb-0".parse().unwrap()),
        manage_etc_hosts: steps::ManageEtcHosts::Template,
        ..Plan::default()
    };
    let recs =
        steps::run(&root, &plan, Mode::Rooted { run_commands: false }, &PerInstance::fresh());
    assert!(recs.iter().all(|r| r.status != StepStatus::Failed), "{recs:?}");
    golden(
        "network/vapp-10-capstan-ens192.network",
        &read(t.path(), "/etc/systemd/network/10-capstan-ens192.network"),
    );
    golden("resolved-capstan.conf", &read(t.path(), "/etc/systemd/resolved.conf.d/capstan.conf"));
    golden("hosts-template", &read(t.path(), "/etc/hosts"));

    // the next instance has no network settings: our files go, the image's default applies
    let plan = Plan { network: NetworkConfig::default(), ..plan };
    let recs =
        steps::run(&root, &plan, Mode::Rooted { run_commands: false }, &PerInstance::fresh());
    assert!(by_name(&recs)["network"].detail.contains("removed 1 file(s)"), "{recs:?}");
    assert_eq!(root.list("/etc/systemd/network").unwrap(), ["99-default.link"]);
    assert!(
        !t.path().join("etc/systemd/network/10-capstan-ens192.link").exists(),
        "no rename, no .link"
    );
}

#[test]
fn sudoers_drop_in_is_visudo_valid_and_bad_rules_are_refused() {
    let visudo = Path::new("/usr/sbin/visudo");
    assert!(visudo.exists(), "visudo is missing: install the `sudo` package (scripts/setup)");
    let t = skeleton();
    let root = Root::new(t.path()).unwrap();
    let recs = steps::run(
        &root,
        &full_plan(),
        Mode::Rooted { run_commands: false },
        &PerInstance::fresh(),
    );
    assert_eq!(by_name(&recs)["users"].status, StepStatus::Ok);
    let out = std::process::Command::new(visudo)
        .args(["-c", "-f"])
        .arg(t.path().join("etc/sudoers.d/90-capstan-users"))
        .output()
        .unwrap();
    assert!(out.status.success(), "visudo: {}", String::from_utf8_lossy(&out.stderr));

    // every rule that skips visudo is one visudo accepts
    let mut u = User::new("known");
    u.sudo = steps::users::KNOWN_GOOD_RULES.iter().map(|r| r.to_string()).collect();
    let text = steps::users::render_sudoers(&[u]).unwrap();
    let f = t.path().join("known-rules");
    fs::write(&f, text).unwrap();
    let out = std::process::Command::new(visudo).args(["-c", "-f"]).arg(&f).output().unwrap();
    assert!(out.status.success(), "visudo: {}", String::from_utf8_lossy(&out.stderr));

    // a rule visudo rejects fails the step before the drop-in is written
    let t = skeleton();
    let root = Root::new(t.path()).unwrap();
    let mut u = User::new("bad");
    u.sudo = vec!["ALL=(ALL NOPASSWD ALL".into()];
    let plan = Plan { users: vec![u], ..Plan::default() };
    let recs =
        steps::run(&root, &plan, Mode::Rooted { run_commands: false }, &PerInstance::fresh());
    let r = &by_name(&recs)["users"];
    assert_eq!(r.status, StepStatus::Failed);
    assert!(r.error.as_deref().unwrap().contains("visudo rejects it"), "{r:?}");
    assert!(!t.path().join("etc/sudoers.d/90-capstan-users").exists());
    assert!(
        !read(t.path(), "/etc/passwd").contains("bad:"),
        "account created despite the refused rule"
    );
}

#[test]
fn all_host_key_types_and_a_failing_keygen() {
    use capstan_agent::steps::HostKeyType;
    let t = skeleton();
    let root = Root::new(t.path()).unwrap();
    let plan = Plan {
        ssh_host_key_types: vec![HostKeyType::Ed25519, HostKeyType::Ecdsa, HostKeyType::Rsa],
        ..Plan::default()
    };
    let recs =
        steps::run(&root, &plan, Mode::Rooted { run_commands: false }, &PerInstance::fresh());
    assert_eq!(by_name(&recs)["ssh-host-keys"].status, StepStatus::Ok, "{recs:?}");
    for (t_, prefix) in
        [("ed25519", "ssh-ed25519 "), ("ecdsa", "ecdsa-sha2-nistp256 "), ("rsa", "ssh-rsa ")]
    {
        assert!(read(t.path(), &format!("/etc/ssh/ssh_host_{t_}_key.pub")).starts_with(prefix));
        assert_eq!(mode(t.path(), &format!("/etc/ssh/ssh_host_{t_}_key")).0, 0o600);
    }
    let names = root.list("/etc/ssh").unwrap();
    assert!(!names.iter().any(|n| n.starts_with(".capstan-keygen")), "temp keys left: {names:?}");
    let rsa = read(t.path(), "/etc/ssh/ssh_host_rsa_key.pub");

    // /etc/ssh not writable as a directory for ssh-keygen: a file in its place makes it fail,
    // and the existing keys stay
    let t2 = skeleton();
    let root2 = Root::new(t2.path()).unwrap();
    fs::create_dir(t2.path().join(
        "etc/ssh/.capstan-keygen-ecdsa-".to_string() + &std::process::id().to_string() + ".pub",
    ))
    .unwrap();
    let plan = Plan {
        ssh_host_key_types: vec![HostKeyType::Ed25519, HostKeyType::Ecdsa],
        ..Plan::default()
    };
    let recs =
        steps::run(&root2, &plan, Mode::Rooted { run_commands: false }, &PerInstance::fresh());
    let r = &by_name(&recs)["ssh-host-keys"];
    assert_eq!(r.status, StepStatus::Failed, "{r:?}");
    assert_eq!(
        read(t2.path(), "/etc/ssh/ssh_host_rsa_key"),
        "OLD TEMPLATE KEY\n",
        "old keys kept on failure"
    );
    assert!(!rsa.is_empty());
}
