//! The lb renderers against golden files, and the real checkers on what they produce:
//! `haproxy -c -f` and `keepalived -t -f`. Regenerate the goldens with `UPDATE_GOLDEN=1`.

use std::path::{Path, PathBuf};

use capstan_agent::roles::lb::{
    check_haproxy, check_keepalived, check_rendered, render, LbSettings, RenderedFile, Tools,
};

fn settings(extra: &[(&'static str, &'static str)]) -> LbSettings {
    let mut kv: Vec<(&str, &str)> = vec![
        ("lb.vip", "192.168.10.100/24"),
        ("lb.interface", "ens192"),
        ("lb.backends", "192.168.10.11:6443,192.168.10.12:6443,[fd00::13]:6443"),
        ("lb.vrrp.router-id", "42"),
        ("lb.vrrp.priority", "150"),
        ("lb.vrrp.peers", "192.168.10.3"),
        ("lb.vrrp.secret", "k8s-vip"),
        ("lb.api.token", "0123456789abcdef0123456789abcdef"),
    ];
    for (k, v) in extra {
        kv.retain(|(kk, _)| kk != k);
        kv.push((k, v));
    }
    LbSettings::from_flat(|k| kv.iter().find(|(kk, _)| *kk == k).map(|(_, v)| *v))
        .expect("settings")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/lb")
}

fn check_golden(case: &str, files: &[RenderedFile]) {
    for f in files {
        let name = format!("{case}{}", f.path.display()).replace('/', "__");
        let path = golden_dir().join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(golden_dir()).unwrap();
            std::fs::write(&path, &f.contents).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create)", path.display())
        });
        assert_eq!(
            f.contents,
            want,
            "{} differs from its golden file {}",
            f.path.display(),
            path.display()
        );
    }
}

fn write_root(files: &[RenderedFile]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for f in files {
        let p = root.path().join(f.path.strip_prefix("/").unwrap());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &f.contents).unwrap();
    }
    root
}

fn require_tools() {
    for t in ["/usr/sbin/haproxy", "/usr/sbin/keepalived"] {
        assert!(
            Path::new(t).exists(),
            "{t} is missing: install the haproxy and keepalived packages (scripts/setup)"
        );
    }
}

#[test]
fn https_health_default() {
    let files = render(&settings(&[]));
    check_golden("https", &files);
    let modes: Vec<_> = files.iter().map(|f| (f.path.display().to_string(), f.mode)).collect();
    assert!(modes.contains(&("/etc/keepalived/keepalived.conf".into(), 0o600)), "{modes:?}");
    require_tools();
    let root = write_root(&files);
    check_rendered(&Tools::default(), root.path(), &files).expect("haproxy -c / keepalived -t");
}

#[test]
fn tcp_health_no_backends_no_peers() {
    let files = render(&settings(&[
        ("lb.health", "tcp"),
        ("lb.health-interval", "500ms"),
        ("lb.health-rise", "1"),
        ("lb.health-fall", "5"),
        ("lb.backends", ""),
        ("lb.vrrp.peers", ""),
        ("lb.port", "8443"),
    ]));
    check_golden("tcp", &files);
    require_tools();
    let root = write_root(&files);
    check_rendered(&Tools::default(), root.path(), &files).expect("haproxy -c / keepalived -t");
}

#[test]
fn checkers_refuse_broken_files() {
    // The checks are real: a broken file is refused, with the tool's message.
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join("haproxy.cfg");
    std::fs::write(&h, "global\n    no-such-keyword\n").unwrap();
    let e = check_haproxy(&Tools::default(), &h).unwrap_err().to_string();
    assert!(e.contains("refused"), "{e}");
    let k = dir.path().join("keepalived.conf");
    std::fs::write(&k, "vrrp_instance x {\n    virtual_router_id 999\n}\n").unwrap();
    let e = check_keepalived(&Tools::default(), &k).unwrap_err().to_string();
    assert!(e.contains("refused"), "{e}");
}

#[test]
fn track_script_follows_the_haproxy_pid() {
    // Run the rendered check command the way keepalived does: alive pid passes, dead fails.
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("haproxy.pid");
    let files = render(&settings(&[]));
    let conf = &files.iter().find(|f| f.path.ends_with("keepalived.conf")).unwrap().contents;
    let line = conf.lines().find(|l| l.trim_start().starts_with("script ")).unwrap();
    let cmd = line.trim().trim_start_matches("script ").trim_matches('"');
    let inner = cmd.split_once("-c '").unwrap().1.trim_end_matches('\'');
    let inner = inner.replace("/run/haproxy.pid", pidfile.to_str().unwrap());
    let run =
        || std::process::Command::new("/bin/sh").arg("-c").arg(&inner).status().unwrap().success();
    assert!(!run(), "no pid file must fail");
    std::fs::write(&pidfile, format!("{}\n", std::process::id())).unwrap();
    assert!(run(), "a live pid must pass");
    std::fs::write(&pidfile, "999999999\n").unwrap();
    assert!(!run(), "a dead pid must fail");
}
