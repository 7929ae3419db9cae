//! Helpers for the hub's tests: a real `capstan-hub serve` process, certificates, a client.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use capstan_agent::heartbeat::client::{read_certs, Client, Credential};
use capstan_agent::heartbeat::wire::{Check, Heartbeat};
use capstan_hub::certs::Authority;

/// A `certs init` directory.
pub fn certs(dir: &Path) -> PathBuf {
    let d = dir.join("certs");
    capstan_hub::certs::init(&d, &["127.0.0.1".into(), "localhost".into()]).unwrap();
    d
}

/// A running hub; killed (SIGKILL) on drop.
pub struct HubProc {
    pub child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl HubProc {
    /// Starts `capstan-hub serve` with the certs in `certs`, `--listen 127.0.0.1:0` unless
    /// `extra` names another, and `extra` flags.
    pub fn start(certs: &Path, db: &str, extra: &[&str]) -> HubProc {
        let log = certs.parent().unwrap().join(format!("hub-{}.log", fastrand::u32(..)));
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--db".into(),
            db.into(),
            "--tls-cert".into(),
            certs.join("hub.pem").display().to_string(),
            "--tls-key".into(),
            certs.join("hub-key.pem").display().to_string(),
            "--client-ca".into(),
            certs.join("ca.pem").display().to_string(),
        ];
        if !extra.contains(&"--listen") {
            args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        // A process group of its own: the stall test stops the hub (SIGSTOP), and a stopped
        // member of the test runner's own group would expose the whole run (cargo, the
        // shell) to the kernel's hangup of an orphaned group with stopped jobs.
        let mut child = Command::new(env!("CARGO_BIN_EXE_capstan-hub"))
            .process_group(0)
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| {
            panic!(
                "hub did not start: {line:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        let port = addr.rsplit(':').next().unwrap();
        HubProc { child, url: format!("https://127.0.0.1:{port}"), log }
    }

    /// SIGKILL, and wait.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The hub's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client for `url` with node `id`'s certificate minted from `certs`.
pub fn node_client(url: &str, certs: &Path, id: &str) -> Client {
    let ca = Authority::load(certs).unwrap();
    let (cert, key) = ca.node_cert(id).unwrap();
    let chain = rustls_pemfile::certs(&mut cert.as_bytes()).map(Result::unwrap).collect();
    let key = rustls_pemfile::private_key(&mut key.as_bytes()).unwrap().unwrap();
    let ca_der = read_certs(&certs.join("ca.pem")).unwrap();
    Client::new(url, &ca_der, Credential::Cert(chain, Arc::new(key)), Duration::from_secs(5))
        .unwrap()
}

/// A client with a credential (or none).
pub fn client(url: &str, certs: &Path, cred: Credential) -> Client {
    let ca_der = read_certs(&certs.join("ca.pem")).unwrap();
    Client::new(url, &ca_der, cred, Duration::from_secs(5)).unwrap()
}

/// A heartbeat of node `id`.
pub fn beat(id: &str, seq: u64, ok: bool) -> Heartbeat {
    let mut hb = Heartbeat::new(id.parse().unwrap(), "node".parse().unwrap(), "lb");
    hb.seq = seq;
    hb.boot_id = "boot".into();
    hb.checks.push(Check {
        name: "haproxy".into(),
        ok,
        detail: if ok { "up" } else { "down" }.into(),
    });
    hb
}

/// `GET path` as JSON.
pub async fn get_json(c: &mut Client, path: &str) -> serde_json::Value {
    let (s, body) = c.request(hyper::Method::GET, path, Vec::new()).await.unwrap();
    assert!(s.is_success(), "{path}: {s} {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Polls the condition (an expression that may `.await`) every 20 ms until it holds, or
/// panics after the limit.
#[macro_export]
macro_rules! wait_until {
    ($limit:expr, $what:expr, $cond:expr) => {{
        let end = std::time::Instant::now() + $limit;
        loop {
            if $cond {
                break;
            }
            assert!(std::time::Instant::now() < end, "timed out waiting for {}", $what);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// A node's state as the hub serves it.
pub async fn state(c: &mut Client, id: &str) -> Option<String> {
    let (s, body) =
        c.request(hyper::Method::GET, &format!("/v1/nodes/{id}"), Vec::new()).await.ok()?;
    if !s.is_success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v["node"]["state"].as_str().map(str::to_owned)
}
