//! Test support for the lb role: a lab of network namespaces joined by a bridge (two load
//! balancers, three backends, one client), TLS backends serving `/readyz`, a client, and the
//! role itself running in each LB namespace. Everything is torn down by Drop guards, also on a
//! failed assertion.

#![allow(dead_code)]

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use capstan_agent::roles::lb::{LbPaths, LbSettings, Processes, RoleOptions, Tools};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

pub const SUBNET: &str = "10.77.0";
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
pub const FRONT_PORT: u16 = 6443;
pub const API_PORT: u16 = 9443;
pub const TOKEN: &str = "test-token-0123456789abcdef";

pub fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, host)
}

/// Fails with a clear message when a tool the test needs is missing.
pub fn require_tools() {
    for t in ["/usr/sbin/haproxy", "/usr/sbin/keepalived", "/usr/bin/pgrep"] {
        assert!(
            std::path::Path::new(t).exists(),
            "{t} is missing: install the Debian packages haproxy keepalived procps (scripts/setup)"
        );
    }
    let ok =
        Command::new("ip").arg("netns").arg("list").status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "`ip netns` does not work: these tests need root and iproute2");
}

fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace, deleted (with every process still in it) on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Result<Self> {
        let _ = sh(&["ip", "netns", "del", &name]);
        sh(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    pub fn kill_all(&self) {
        if let Ok(pids) = sh(&["ip", "netns", "pids", &self.name]) {
            for pid in pids.split_whitespace() {
                let _ = sh(&["kill", "-9", pid]);
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_all();
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// A thread inside a network namespace running a current-thread tokio runtime. Sockets and
/// child processes created by its tasks live in that namespace.
pub struct NsThread {
    handle: tokio::runtime::Handle,
    stop: watch::Sender<bool>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl NsThread {
    pub fn start(ns: &str) -> Result<Self> {
        let path = format!("/run/netns/{ns}");
        let (tx, rx) = mpsc::channel();
        let (stop, mut stop_rx) = watch::channel(false);
        let join = std::thread::Builder::new().name(format!("ns-{ns}")).spawn(move || {
            let r = (|| -> Result<tokio::runtime::Runtime> {
                let f = File::open(&path).with_context(|| format!("opening {path}"))?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
                Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
            })();
            let rt = match r {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(rt.handle().clone()));
            rt.block_on(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            });
            // Give spawned tasks (the role's shutdown) a moment to finish their cleanup.
            rt.shutdown_timeout(Duration::from_secs(8));
        })?;
        let handle = rx.recv().context("ns thread died")??;
        Ok(NsThread { handle, stop, join: Some(join) })
    }

    /// Runs `fut` on the namespace thread and waits for it, at most `limit`.
    pub fn run<T: Send + 'static>(
        &self,
        limit: Duration,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv_timeout(limit).map_err(|_| anyhow::anyhow!("timed out after {limit:?}"))
    }

    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }
}

impl Drop for NsThread {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// Test PKI: one CA; one server certificate valid for the VIP and every lab address.
pub struct Pki {
    pub ca_pem: String,
    pub ca_der: rustls::pki_types::CertificateDer<'static>,
    pub server_cert: rustls::pki_types::CertificateDer<'static>,
    pub server_key: Vec<u8>,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    ca: rcgen::CertifiedKey,
}

impl Pki {
    pub fn new() -> Result<Self> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "capstan test CA");
        let ca_key = rcgen::KeyPair::generate()?;
        let ca_cert = p.self_signed(&ca_key)?;
        let mut sp = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
        for h in [100u8, 11, 12, 21, 22, 23, 31] {
            sp.subject_alt_names.push(rcgen::SanType::IpAddress(IpAddr::V4(ip(h))));
        }
        let skey = rcgen::KeyPair::generate()?;
        let scert = sp.signed_by(&skey, &ca_cert, &ca_key)?;
        let mut cp = rcgen::CertificateParams::new(vec!["api-client".to_string()])?;
        cp.distinguished_name.push(rcgen::DnType::CommonName, "api-client");
        let ckey = rcgen::KeyPair::generate()?;
        let ccert = cp.signed_by(&ckey, &ca_cert, &ca_key)?;
        Ok(Pki {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            server_cert: scert.der().clone(),
            server_key: skey.serialize_der(),
            client_cert_pem: ccert.pem(),
            client_key_pem: ckey.serialize_pem(),
            ca: rcgen::CertifiedKey { cert: ca_cert, key_pair: ca_key },
        })
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![self.server_cert.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.server_key.clone().into()),
            )
            .unwrap();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    }

    /// A client trusting the test CA, or the given roots.
    pub fn client_config(
        &self,
        roots: &[rustls::pki_types::CertificateDer<'static>],
        client_auth: bool,
    ) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut store = rustls::RootCertStore::empty();
        store.add(self.ca_der.clone()).unwrap();
        for r in roots {
            store.add(r.clone()).unwrap();
        }
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store);
        let c = if client_auth {
            let cert = rustls_pemfile::certs(&mut self.client_cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key =
                rustls_pemfile::private_key(&mut self.client_key_pem.as_bytes()).unwrap().unwrap();
            b.with_client_auth_cert(cert, key).unwrap()
        } else {
            b.with_no_client_auth()
        };
        Arc::new(c)
    }
}

/// One HTTP/1.1 request over a fresh TLS connection. Returns (status, body).
pub async fn https_request(
    cfg: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    limit: Duration,
) -> Result<(u16, String)> {
    tokio::time::timeout(limit, async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.context("connect")?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let mut tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        tls.write_all(req.as_bytes()).await.context("write")?;
        // A server may answer (413) and close before the whole body is sent: read the answer.
        let wrote = async {
            tls.write_all(body).await?;
            tls.flush().await
        }
        .await;
        let mut buf = Vec::new();
        // A server that answers early (413) may reset the rest; keep what was read.
        let r = tls.read_to_end(&mut buf).await;
        if buf.is_empty() {
            wrote.context("write body")?;
            r.context("read")?;
            bail!("empty response");
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status line")?;
        let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        // Chunked bodies are not used by our servers (Content-Length is always set).
        Ok((status, body.to_owned()))
    })
    .await
    .map_err(|_| anyhow::anyhow!("request timed out"))?
}

/// A backend host's TLS server on one port: `/readyz` (200, or 503 when unhealthy) and `/who`.
pub struct BackendServer {
    pub name: String,
    pub healthy: Arc<AtomicBool>,
    pub served: Arc<AtomicU64>,
    pub readyz: Arc<AtomicU64>,
}

pub async fn serve_backend(
    listen: SocketAddr,
    name: String,
    tls: Arc<rustls::ServerConfig>,
    healthy: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    readyz: Arc<AtomicU64>,
) -> Result<()> {
    let l =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("bind {listen}"))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { continue };
            let (acceptor, name, healthy, served, readyz) =
                (acceptor.clone(), name.clone(), healthy.clone(), served.clone(), readyz.clone());
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await
                else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (name, healthy, served, readyz) =
                            (name.clone(), healthy.clone(), served.clone(), readyz.clone());
                        async move {
                            let (status, body) = match req.uri().path() {
                                "/readyz" => {
                                    readyz.fetch_add(1, Ordering::Relaxed);
                                    if healthy.load(Ordering::Relaxed) {
                                        (200, "ok".to_string())
                                    } else {
                                        (503, "not ready".to_string())
                                    }
                                }
                                "/who" => {
                                    served.fetch_add(1, Ordering::Relaxed);
                                    (200, name.clone())
                                }
                                _ => (404, "no".to_string()),
                            };
                            let mut r = hyper::Response::new(http_body_util::Full::new(
                                hyper::body::Bytes::from(body),
                            ));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Ok(())
}

/// Host numbers in the lab.
pub const LB1: u8 = 11;
pub const LB2: u8 = 12;
pub const BACKENDS: [u8; 3] = [21, 22, 23];
pub const CLIENT: u8 = 31;
/// Each backend host serves on these ports (six distinct backends for change tests).
pub const BACKEND_PORTS: [u16; 2] = [6443, 6444];

pub fn backend_addr(host: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip(host)), port)
}

/// The lab: a switch namespace with a bridge, and one namespace per host.
pub struct Lab {
    pub prefix: String,
    pub pki: Arc<Pki>,
    pub dir: tempfile::TempDir,
    pub backends: Vec<(u8, Vec<BackendServer>)>,
    // Drop order: threads (roles, servers) before namespaces.
    pub lbs: Vec<Option<LbNode>>,
    pub threads: Vec<NsThread>,
    pub client: Option<NsThread>,
    pub hosts: Vec<(u8, Netns)>,
    pub switch: Option<Netns>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Lab {
    /// Builds the namespaces and starts the three backends (all healthy).
    pub fn new(tag: &str) -> Result<Self> {
        require_tools();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("cl{}{}{}", tag, std::process::id() % 100_000, n);
        let switch = Netns::new(format!("{prefix}-sw"))?;
        switch.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        switch.exec(&["ip", "link", "set", "br0", "up"])?;
        let mut hosts = Vec::new();
        for h in [LB1, LB2, BACKENDS[0], BACKENDS[1], BACKENDS[2], CLIENT] {
            let ns = Netns::new(format!("{prefix}-h{h}"))?;
            let v = format!("v{h}");
            sh(&[
                "ip",
                "-n",
                &switch.name,
                "link",
                "add",
                &v,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns.name,
            ])?;
            sh(&["ip", "-n", &switch.name, "link", "set", &v, "master", "br0", "up"])?;
            ns.exec(&["ip", "addr", "add", &format!("{}/24", ip(h)), "dev", "eth0"])?;
            ns.exec(&["ip", "link", "set", "eth0", "up"])?;
            hosts.push((h, ns));
        }
        let pki = Arc::new(Pki::new()?);
        let dir = tempfile::Builder::new().prefix(&format!("{prefix}-")).tempdir()?;
        let mut lab = Lab {
            prefix,
            pki: pki.clone(),
            dir,
            backends: Vec::new(),
            lbs: Vec::new(),
            threads: Vec::new(),
            client: None,
            hosts,
            switch: Some(switch),
        };
        for h in BACKENDS {
            let t = NsThread::start(&lab.ns(h))?;
            let mut servers = Vec::new();
            for port in BACKEND_PORTS {
                let s = BackendServer {
                    name: format!("{}:{port}", ip(h)),
                    healthy: Arc::new(AtomicBool::new(true)),
                    served: Arc::new(AtomicU64::new(0)),
                    readyz: Arc::new(AtomicU64::new(0)),
                };
                let (n, hl, sv, rz, tls) = (
                    s.name.clone(),
                    s.healthy.clone(),
                    s.served.clone(),
                    s.readyz.clone(),
                    pki.server_config(),
                );
                t.run(
                    Duration::from_secs(5),
                    serve_backend(backend_addr(h, port), n, tls, hl, sv, rz),
                )??;
                servers.push(s);
            }
            lab.backends.push((h, servers));
            lab.threads.push(t);
        }
        lab.client = Some(NsThread::start(&lab.ns(CLIENT))?);
        Ok(lab)
    }

    pub fn ns(&self, host: u8) -> String {
        format!("{}-h{host}", self.prefix)
    }

    pub fn client(&self) -> &NsThread {
        self.client.as_ref().expect("client")
    }

    pub fn backend(&self, host: u8, port: u16) -> &BackendServer {
        let (_, v) = self.backends.iter().find(|(h, _)| *h == host).expect("backend host");
        &v[BACKEND_PORTS.iter().position(|p| *p == port).expect("port")]
    }

    /// LB settings for host `h` with priority `prio`, health interval `inter_ms`, rise/fall.
    pub fn lb_settings(
        &self,
        h: u8,
        prio: u8,
        backends: &str,
        health: (&str, u64, u8, u8),
    ) -> LbSettings {
        let peer = if h == LB1 { ip(LB2) } else { ip(LB1) };
        let inter = format!("{}ms", health.1);
        let rise = health.2.to_string();
        let fall = health.3.to_string();
        let prio = prio.to_string();
        let peer = peer.to_string();
        let vip = format!("{VIP}/24");
        let listen = format!("{}:{API_PORT}", ip(h));
        let metrics = format!("{}:8404", ip(h));
        let kv: Vec<(&str, &str)> = vec![
            ("lb.vip", &vip),
            ("lb.interface", "eth0"),
            ("lb.backends", backends),
            ("lb.health", health.0),
            ("lb.health-interval", &inter),
            ("lb.health-rise", &rise),
            ("lb.health-fall", &fall),
            ("lb.vrrp.router-id", "51"),
            ("lb.vrrp.priority", &prio),
            ("lb.vrrp.peers", &peer),
            ("lb.vrrp.secret", "pa55w0rd"),
            ("lb.api.listen", &listen),
            ("lb.api.token", TOKEN),
            ("lb.metrics.listen", &metrics),
        ];
        LbSettings::from_flat(|k| kv.iter().find(|(kk, _)| *kk == k).map(|(_, v)| *v))
            .expect("lab settings")
    }

    /// Starts the role on LB host `h` and waits until its API answers.
    pub fn start_lb(&mut self, h: u8, settings: LbSettings) -> Result<()> {
        let dir = self.dir.path().join(format!("lb{h}"));
        std::fs::create_dir_all(&dir)?;
        let node = LbNode::start(&self.ns(h), h, settings, &dir)?;
        self.lbs.push(Some(node));
        Ok(())
    }

    pub fn lb(&self, h: u8) -> &LbNode {
        self.lbs.iter().flatten().find(|n| n.host == h).expect("lb node")
    }

    /// Stops the role on `h` (its daemons exit).
    pub fn stop_lb(&mut self, h: u8) {
        for slot in self.lbs.iter_mut() {
            if slot.as_ref().is_some_and(|n| n.host == h) {
                *slot = None;
            }
        }
    }

    /// Which LB hosts hold the VIP now.
    pub fn vip_holders(&self) -> Vec<u8> {
        [LB1, LB2]
            .into_iter()
            .filter(|h| {
                sh(&["ip", "-n", &self.ns(*h), "-o", "-4", "addr", "show", "dev", "eth0"])
                    .map(|s| s.contains(&format!("inet {VIP}/")))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// Waits until exactly one LB holds the VIP; asserts there are never two.
    pub fn wait_single_holder(&self, limit: Duration) -> Result<u8> {
        let start = Instant::now();
        loop {
            let h = self.vip_holders();
            assert!(h.len() <= 1, "two VIP holders: {h:?}");
            if h.len() == 1 {
                return Ok(h[0]);
            }
            if start.elapsed() > limit {
                bail!("no VIP holder after {limit:?}; logs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in self.lbs.iter().flatten() {
            for f in ["haproxy.log", "keepalived.log"] {
                let p = n.dir.join(f);
                let t = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = t.lines().rev().take(25).collect();
                s.push_str(&format!("--- lb{} {f}\n", n.host));
                for l in tail.into_iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }

    /// The client's TLS config for the backends (through the VIP) and the API.
    pub fn client_tls(&self, h: u8) -> Arc<rustls::ClientConfig> {
        // The API's generated certificate is self-signed: trust it explicitly.
        let mut roots = Vec::new();
        if let Some(n) = self.lbs.iter().flatten().find(|n| n.host == h) {
            let pem = std::fs::read(n.paths.state_dir.join("api-cert.pem")).unwrap_or_default();
            roots = rustls_pemfile::certs(&mut pem.as_slice()).filter_map(|c| c.ok()).collect();
        }
        self.pki.client_config(&roots, false)
    }

    /// Calls the API of LB `h` from the client namespace.
    pub fn api(
        &self,
        h: u8,
        method: &str,
        path: &str,
        body: &str,
        token: Option<&str>,
    ) -> Result<(u16, serde_json::Value)> {
        let cfg = self.client_tls(h);
        let addr = SocketAddr::new(IpAddr::V4(ip(h)), API_PORT);
        let auth = token.map(|t| format!("Bearer {t}"));
        let (method, path, body) = (method.to_owned(), path.to_owned(), body.as_bytes().to_vec());
        let (status, text) = self.client().run(Duration::from_secs(15), async move {
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(a) = auth.as_deref() {
                headers.push(("Authorization", a));
            }
            https_request(cfg, addr, &method, &path, &headers, &body, Duration::from_secs(10)).await
        })??;
        let v = serde_json::from_str(text.trim()).unwrap_or(serde_json::Value::String(text));
        Ok((status, v))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.lbs.clear();
        self.threads.clear();
        self.client = None;
        for (_, ns) in &self.hosts {
            ns.kill_all();
        }
        self.hosts.clear();
        self.switch = None;
    }
}

/// The lb role running in one namespace.
pub struct LbNode {
    pub host: u8,
    pub dir: std::path::PathBuf,
    pub paths: LbPaths,
    pub thread: NsThread,
    pub role: Option<tokio::task::JoinHandle<Result<(), capstan_agent::roles::lb::RoleError>>>,
    stop: watch::Sender<bool>,
}

impl LbNode {
    pub fn start(ns: &str, host: u8, settings: LbSettings, dir: &std::path::Path) -> Result<Self> {
        let paths = LbPaths::under(dir);
        let thread = NsThread::start(ns)?;
        let (stop, mut stop_rx) = watch::channel(false);
        let opts = RoleOptions {
            paths: paths.clone(),
            tools: Tools::default(),
            processes: Processes::Children { log_dir: dir.to_path_buf() },
            node_label: format!("lb{host}"),
        };
        let role = thread.spawn(capstan_agent::roles::lb::run_role(settings, opts, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }));
        let mut node =
            LbNode { host, dir: dir.to_path_buf(), paths, thread, role: Some(role), stop };
        // Wait for the API to listen (the role starts it after HAProxy answers).
        let start = Instant::now();
        let addr = SocketAddr::new(IpAddr::V4(ip(host)), API_PORT);
        loop {
            let ok = node
                .thread
                .run(Duration::from_secs(2), async move {
                    tokio::net::TcpStream::connect(addr).await.is_ok()
                })
                .unwrap_or(false);
            if ok {
                break;
            }
            if node.role.as_ref().is_some_and(|r| r.is_finished()) {
                let role = node.role.take().expect("role");
                let r = node.thread.run(Duration::from_secs(5), role)?;
                let msg = match r {
                    Ok(Ok(())) => "no error".to_string(),
                    Ok(Err(e)) => format!("{:#}", anyhow::Error::from(e)),
                    Err(e) => e.to_string(),
                };
                let logs: String = ["haproxy.log", "keepalived.log"]
                    .iter()
                    .map(|f| {
                        format!(
                            "--- {f}\n{}",
                            std::fs::read_to_string(dir.join(f)).unwrap_or_default()
                        )
                    })
                    .collect();
                bail!("lb{host} role exited at start: {msg}\n{logs}");
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("lb{host} API not listening after 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(node)
    }

    /// Kills this node's HAProxy (master and workers) with SIGKILL.
    pub fn kill_haproxy(&self) -> Result<()> {
        let out =
            sh(&["pgrep", "-f", &format!("haproxy -W -f {}", self.paths.haproxy_cfg.display())])?;
        for pid in out.split_whitespace() {
            let _ = sh(&["kill", "-9", pid]);
        }
        Ok(())
    }
}

impl Drop for LbNode {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(r) = self.role.take() {
            let _ = self.thread.run(Duration::from_secs(10), r);
        }
    }
}

/// Continuous load from the client: `workers` loops, each one request per fresh TLS connection
/// to VIP:6443 `/who`, until `stop` is set or `max` requests are done. Counts per backend.
pub struct Load {
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    pub stop: Arc<AtomicBool>,
    pub errors: Arc<std::sync::Mutex<Vec<String>>>,
    pub seen: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(lab: &Lab, workers: usize, max: u64) -> Load {
        let l = Load {
            ok: Arc::default(),
            failed: Arc::default(),
            stop: Arc::default(),
            errors: Arc::default(),
            seen: Arc::default(),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        let total = Arc::new(AtomicU64::new(0));
        for _ in 0..workers {
            let cfg = lab.pki.client_config(&[], false);
            let (ok, failed, stop, errors, seen, total) = (
                l.ok.clone(),
                l.failed.clone(),
                l.stop.clone(),
                l.errors.clone(),
                l.seen.clone(),
                total.clone(),
            );
            tasks.push(lab.client().spawn(async move {
                while !stop.load(Ordering::Relaxed) && total.fetch_add(1, Ordering::Relaxed) < max {
                    match who_via_vip(cfg.clone(), Duration::from_secs(5)).await {
                        Ok(who) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            *seen.lock().unwrap().entry(who).or_default() += 1;
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push(e);
                        }
                    }
                }
            }));
        }
        Load { tasks, ..l }
    }

    /// Stops and waits for the workers.
    pub fn finish(mut self, lab: &Lab) {
        self.stop.store(true, Ordering::Relaxed);
        let tasks = std::mem::take(&mut self.tasks);
        let _ = lab.client().run(Duration::from_secs(15), async move {
            for t in tasks {
                let _ = t.await;
            }
        });
    }
}

/// One `GET /who` over a fresh TLS connection to VIP:6443: the answering backend's name, or
/// what went wrong (a non-200 status with its body, or the connection error).
async fn who_via_vip(cfg: Arc<rustls::ClientConfig>, limit: Duration) -> Result<String, String> {
    let vip = SocketAddr::new(IpAddr::V4(VIP), FRONT_PORT);
    match https_request(cfg, vip, "GET", "/who", &[], b"", limit).await {
        Ok((200, who)) => Ok(who),
        Ok((s, b)) => Err(format!("status {s}: {b}")),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// `n` requests through the VIP from the client; returns per-backend counts and failures.
pub fn sample(lab: &Lab, n: usize) -> (std::collections::BTreeMap<String, u64>, Vec<String>) {
    let cfg = lab.pki.client_config(&[], false);
    lab.client()
        .run(Duration::from_secs(60), async move {
            let mut seen = std::collections::BTreeMap::new();
            let mut errs = Vec::new();
            for _ in 0..n {
                match who_via_vip(cfg.clone(), Duration::from_secs(3)).await {
                    Ok(who) => *seen.entry(who).or_insert(0u64) += 1,
                    Err(e) => errs.push(e),
                }
            }
            (seen, errs)
        })
        .expect("sampling timed out")
}

impl Lab {
    /// The role's status on LB `h`, gathered inside its namespace.
    pub fn status(&self, h: u8, settings: &LbSettings) -> capstan_agent::roles::lb::LbStatus {
        let node = self.lb(h);
        let (s, p) = (settings.clone(), node.paths.clone());
        node.thread
            .run(Duration::from_secs(10), async move {
                tokio::task::spawn_blocking(move || capstan_agent::roles::lb::status(&s, &p))
                    .await
                    .expect("status task")
            })
            .expect("status timed out")
    }

    /// Calls the API of LB `h` with a given client TLS config and raw body.
    pub fn api_raw(
        &self,
        h: u8,
        cfg: Arc<rustls::ClientConfig>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(u16, serde_json::Value)> {
        let addr = SocketAddr::new(IpAddr::V4(ip(h)), API_PORT);
        let (method, path) = (method.to_owned(), path.to_owned());
        let headers: Vec<(String, String)> =
            headers.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let (status, text) = self.client().run(Duration::from_secs(15), async move {
            let h: Vec<(&str, &str)> =
                headers.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            https_request(cfg, addr, &method, &path, &h, &body, Duration::from_secs(10)).await
        })??;
        let v = serde_json::from_str(text.trim()).unwrap_or(serde_json::Value::String(text));
        Ok((status, v))
    }
}
