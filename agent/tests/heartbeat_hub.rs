//! `capstan-agent run` sending heartbeats to a real `capstan-hub serve`, with certificates from
//! the real `capstan-hub certs init` / `certs node`, and settings given as guestinfo keys the
//! way a vApp deployment gives them (the same path `run` always takes: sources, schema,
//! daemon). Mutual TLS and a bearer token each get the node listed with its role and checks;
//! a wrong CA pin and a wrong token are logged failures the hub refuses; an unset URL sends
//! nothing. The short status lands in `guestinfo.capstan.status`.
//!
//! The hub binary is built by cargo on first use (`CAPSTAN_HUB_BIN` names a prebuilt one).

mod common;

use std::io::{BufRead as _, BufReader, Read as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::BIN;

/// The `capstan-hub` binary: `CAPSTAN_HUB_BIN` when set; else the one `cargo test --workspace`
/// built beside this test (`target/debug/capstan-hub`); else built once by cargo (a plain
/// `cargo test -p capstan-agent` does not build other packages' binaries).
fn hub_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("CAPSTAN_HUB_BIN") {
                return PathBuf::from(p);
            }
            // This test runs as target/debug/deps/heartbeat_hub-HASH.
            let exe = std::env::current_exe().unwrap();
            let sibling = exe.parent().and_then(Path::parent).map(|d| d.join("capstan-hub"));
            if let Some(p) = sibling.filter(|p| p.is_file()) {
                return p;
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let out = Command::new(cargo)
                .current_dir(&root)
                .args(["build", "-q", "-p", "capstan-hub", "--bin", "capstan-hub"])
                .output()
                .expect("running cargo to build capstan-hub");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            target.join("debug/capstan-hub")
        })
        .clone()
}

fn hub(args: &[&str]) -> String {
    let out = Command::new(hub_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "capstan-hub {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child killed on drop.
struct Proc(Child, PathBuf);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

/// `certs init` for 127.0.0.1 in `dir`.
fn certs(dir: &Path) -> PathBuf {
    let d = dir.join("certs");
    hub(&["certs", "init", d.to_str().unwrap(), "--host", "127.0.0.1"]);
    d
}

/// `capstan-hub serve` on 127.0.0.1 (reads open: loopback only); returns it and its URL.
fn serve(dir: &Path, certs: &Path, extra: &[&str]) -> (Proc, String) {
    let log = dir.join("hub.log");
    let p = |f: &str| certs.join(f).display().to_string();
    let db = format!("sqlite:{}", dir.join("hub.db").display());
    let mut child = Command::new(hub_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--db", &db, "--interval", "500ms"])
        .args(["--tls-cert", &p("hub.pem"), "--tls-key", &p("hub-key.pem")])
        .args(["--client-ca", &p("ca.pem")])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let proc = Proc(child, log);
    let port = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("hub did not start: {line:?}\n{}", proc.log()))
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    (proc, format!("https://127.0.0.1:{port}"))
}

/// `capstan-hub nodes --json`.
fn nodes(url: &str, certs: &Path) -> serde_json::Value {
    let out =
        hub(&["nodes", "--hub", url, "--ca", certs.join("ca.pem").to_str().unwrap(), "--json"]);
    serde_json::from_str(&out).unwrap()
}

fn node<'a>(list: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    list["nodes"].as_array()?.iter().find(|n| n["id"] == id)
}

/// Polls `f` until it gives `Some`, for up to 60 s (the machine is shared and loaded).
fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>, last: impl Fn() -> String) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}; last: {}", last())
}

/// A node: a root, a guestinfo directory with its metadata and `keys`, and the daemon.
struct Agent {
    dir: PathBuf,
    daemon: Proc,
}

impl Agent {
    fn start(dir: &Path, id: &str, keys: &[(&str, String)]) -> Agent {
        let dir = dir.join(id);
        common::minimal_root(&dir.join("root"));
        let metadata = format!("instance-id: {id}\nlocal-hostname: {id}\n");
        common::write_guestinfo(&dir.join("gi"), &[("metadata", &metadata)]);
        for (k, v) in keys {
            std::fs::write(dir.join("gi").join(format!("guestinfo.capstan.{k}")), v).unwrap();
        }
        let log = dir.join("agent.log");
        let child = Command::new(BIN)
            .arg("run")
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--guestinfo-dir")
            .arg(dir.join("gi"))
            .arg("--socket")
            .arg(dir.join("agent.sock"))
            .args(["--poll", "1"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { daemon: Proc(child, log), dir }
    }

    fn status(&self) -> Option<serde_json::Value> {
        let mut s = UnixStream::connect(self.dir.join("agent.sock")).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        serde_json::from_str(&buf).ok()
    }

    /// The daemon's status once `pred` holds.
    fn status_when(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait(
            what,
            || self.status().filter(|v| pred(v)),
            || format!("{:?}\n{}", self.status(), self.daemon.log()),
        )
    }

    /// `guestinfo.capstan.status` as the daemon publishes it (JSON with a `seq`).
    fn published(&self) -> Option<serde_json::Value> {
        let s = std::fs::read_to_string(self.dir.join("gi/guestinfo.capstan.status")).ok()?;
        serde_json::from_str::<serde_json::Value>(&s).ok().filter(|v| v["seq"].as_u64().is_some())
    }
}

fn lb_keys() -> Vec<(&'static str, String)> {
    vec![
        ("role", "lb".into()),
        ("lb.vip", "10.0.0.100/24".into()),
        ("lb.vrrp.secret", "s3cret".into()),
        ("lb.api.token", "0123456789abcdef0123".into()),
        ("lb.backends", "10.0.0.11:6443,10.0.0.12:6443".into()),
        ("heartbeat.interval", "500ms".into()),
    ]
}

fn b64(s: &str) -> String {
    common::b64(s.as_bytes())
}

#[test]
fn an_lb_node_beats_over_mutual_tls_with_its_checks_and_publishes_its_status() {
    let t = tempfile::tempdir().unwrap();
    let certs = certs(t.path());
    hub(&["certs", "node", certs.to_str().unwrap(), "iid-hb-lb"]);
    let (hub_proc, url) = serve(t.path(), &certs, &[]);
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).unwrap();
    let mut keys = lb_keys();
    // Each accepted form once: PEM as written, base64 of it on one line, PEM with its line
    // breaks turned into spaces (a paste into a one-line field).
    keys.push(("heartbeat.url", url.clone()));
    keys.push(("heartbeat.ca", read("ca.pem")));
    keys.push(("heartbeat.client-cert", b64(&read("iid-hb-lb.pem"))));
    keys.push(("heartbeat.client-key", read("iid-hb-lb-key.pem").replace('\n', " ")));
    let agent = Agent::start(t.path(), "iid-hb-lb", &keys);

    let n = wait(
        "the hub to list iid-hb-lb",
        || node(&nodes(&url, &certs), "iid-hb-lb").cloned(),
        || format!("{}\n{}", agent.daemon.log(), hub_proc.log()),
    );
    assert_eq!(n["role"], "lb", "{n}");
    assert_eq!(n["hostname"], "iid-hb-lb", "{n}");
    let checks: Vec<(&str, bool)> = n["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["ok"].as_bool().unwrap()))
        .collect();
    // Under --root the role is not started: the daemon says so, and the lb checks read the
    // real state of this host (no HAProxy, no keepalived here).
    assert_eq!(
        checks,
        [("role", false), ("haproxy", false), ("vrrp", false), ("backends", false)],
        "{n}"
    );
    assert_eq!(n["state"], "degraded", "{n}");
    let reason = n["reason"].as_str().unwrap();
    assert!(reason.contains("haproxy: not running"), "{n}");
    assert!(
        reason.contains("0/2 ready backends up; not up: 10.0.0.11:6443, 10.0.0.12:6443"),
        "{n}"
    );

    let st = agent.status_when("an accepted heartbeat", |v| {
        v["heartbeat_last"].as_str().is_some_and(|s| s.starts_with("accepted"))
    });
    assert_eq!(st["heartbeat"], format!("sending to {url}"));
    let published = wait("guestinfo.capstan.status", || agent.published(), || agent.daemon.log());
    assert_eq!(published["state"], "degraded", "{published}");
    assert_eq!(published["role"], "lb");
    assert_eq!(published["checks"]["haproxy"], false);
    assert!(published["hub"] == "ok", "{published}");
    let log = agent.daemon.log();
    assert!(!log.contains("PRIVATE KEY"), "the key reached a log line:\n{log}");
}

#[test]
fn a_token_node_is_listed_and_a_wrong_token_or_ca_is_refused_and_logged() {
    let t = tempfile::tempdir().unwrap();
    let certs = certs(t.path());
    let tokens = t.path().join("tokens");
    std::fs::write(&tokens, "iid-hb-tok tok-0123456789abcdef\n").unwrap();
    let (hub_proc, url) = serve(t.path(), &certs, &["--token-file", tokens.to_str().unwrap()]);
    let ca = std::fs::read_to_string(certs.join("ca.pem")).unwrap();
    let base = |token: &str, ca: &str| {
        vec![
            ("heartbeat.url", url.clone()),
            ("heartbeat.interval", "500ms".to_owned()),
            ("heartbeat.ca", ca.to_owned()),
            ("heartbeat.token", token.to_owned()),
        ]
    };
    let good = Agent::start(t.path(), "iid-hb-tok", &base("tok-0123456789abcdef", &ca));
    let n = wait(
        "the hub to list iid-hb-tok",
        || node(&nodes(&url, &certs), "iid-hb-tok").cloned(),
        || format!("{}\n{}", good.daemon.log(), hub_proc.log()),
    );
    assert_eq!(n["role"], "none", "{n}");
    assert_eq!(n["checks"], serde_json::json!([]), "{n}");
    assert_eq!(n["state"], "healthy", "{n}");

    // A token the hub does not know: refused (401), logged, never listed.
    let bad = Agent::start(t.path(), "iid-hb-bad", &base("wrong-0123456789abcdef", &ca));
    bad.status_when("a refused heartbeat", |v| {
        v["heartbeat_last"].as_str().is_some_and(|s| s.starts_with("refused(401)"))
    });
    let log = bad.daemon.log();
    assert!(log.contains("heartbeat refused by the hub") && log.contains("401"), "{log}");
    assert!(!log.contains("wrong-0123456789abcdef"), "the token reached a log line:\n{log}");
    let published = wait("the refused status", || bad.published(), || bad.daemon.log());
    assert_eq!(published["hub"], "refused 401", "{published}");

    // Another CA pinned: the handshake fails, logged as unreachable, never listed.
    let other = certs_other(t.path());
    let pinned = std::fs::read_to_string(other.join("ca.pem")).unwrap();
    let wrong_ca = Agent::start(t.path(), "iid-hb-ca", &base("tok-0123456789abcdef", &pinned));
    wrong_ca.status_when("a failed handshake", |v| {
        v["heartbeat_last"].as_str().is_some_and(|s| s.starts_with("unreachable"))
    });
    let log = wrong_ca.daemon.log();
    assert!(log.contains("hub unreachable") && log.contains("TLS handshake"), "{log}");
    let list = nodes(&url, &certs);
    assert!(node(&list, "iid-hb-bad").is_none() && node(&list, "iid-hb-ca").is_none(), "{list}");
    assert!(node(&list, "iid-hb-tok").is_some(), "{list}");
}

fn certs_other(dir: &Path) -> PathBuf {
    let d = dir.join("other-certs");
    hub(&["certs", "init", d.to_str().unwrap(), "--host", "127.0.0.1"]);
    d
}

#[test]
fn without_a_url_nothing_is_sent_and_refused_settings_start_nothing() {
    let t = tempfile::tempdir().unwrap();
    let certs = certs(t.path());
    let (_hub, url) = serve(t.path(), &certs, &[]);
    let off = Agent::start(t.path(), "iid-hb-off", &[]);
    let st = off
        .status_when("the daemon", |v| v["heartbeat"].is_string() && v["heartbeat"] != "starting");
    assert_eq!(st["heartbeat"], "off (heartbeat.url unset)", "{st}");
    assert!(st["heartbeat_last"].is_null(), "{st}");

    // An http:// URL and a key without its certificate: refused, named, nothing started.
    let ca = std::fs::read_to_string(certs.join("ca.pem")).unwrap();
    hub(&["certs", "node", certs.to_str().unwrap(), "iid-hb-half"]);
    let key = std::fs::read_to_string(certs.join("iid-hb-half-key.pem")).unwrap();
    let half = Agent::start(
        t.path(),
        "iid-hb-half",
        &[
            ("heartbeat.url", url.replace("https://", "http://")),
            ("heartbeat.ca", ca),
            ("heartbeat.client-key", key.clone()),
        ],
    );
    let st = half
        .status_when("the daemon", |v| v["heartbeat"].is_string() && v["heartbeat"] != "starting");
    let why = st["heartbeat"].as_str().unwrap();
    assert!(why.starts_with("not started: "), "{why}");
    assert!(why.contains("guestinfo-dir key guestinfo.capstan.heartbeat.url"), "{why}");
    assert!(why.contains("is not https://"), "{why}");
    assert!(
        why.contains("heartbeat.client-key") && why.contains("heartbeat.client-cert is not"),
        "{why}"
    );
    let body = key.lines().nth(1).unwrap();
    assert!(!why.contains(body) && !half.daemon.log().contains(body), "key material shown");
    assert!(st["heartbeat_last"].is_null(), "{st}");
    // Nothing reached the hub from either node.
    assert_eq!(nodes(&url, &certs)["nodes"], serde_json::json!([]));
}
