//! The agent's preflight before `kubeadm init|join`: seconds, not kubeadm's minutes, to a
//! clear failure that names the key to fix.
//!
//! Remote checks (a join), in order, each bounded by [`Options::timeout`]:
//! 1. `endpoint-tcp`: a TCP connection to `kube.endpoint`;
//! 2. `endpoint-tls`: a TLS handshake (the certificate is not verified yet: like kubeadm's
//!    token discovery, trust comes from the pin);
//! 3. `cluster-info`: an anonymous `GET /api/v1/namespaces/kube-public/configmaps/cluster-info`,
//!    the document kubeadm's discovery reads;
//! 4. `ca-pin`: SHA-256 of the DER SubjectPublicKeyInfo of the CA in cluster-info's kubeconfig
//!    (`certificate-authority-data`) equals `kube.ca-cert-hash` — the pin kubeadm itself checks
//!    — and the certificate the endpoint presented chains to that CA (so the endpoint really is
//!    that cluster's API server, not another cluster behind the same VIP);
//! 5. `token`: cluster-info carries `jws-kubeconfig-<token id>` (the bootstrap signer keeps one
//!    per live token: a missing one means expired, deleted or never created) and that detached
//!    JWS (HS256, keyed by the token secret) verifies over the kubeconfig: the secret is right;
//! 6. `clock`: the `Date` of the cluster-info response is within [`MAX_SKEW`] of ours
//!    (certificates are issued for "now": a skewed clock fails TLS bootstrap later).
//!
//! Local checks, on a rooted `/proc` and `/sys` so tests use fake trees: `runtime`
//! (containerd's socket answers the HTTP/2 preface gRPC speaks), `swap` (`/proc/swaps` lists
//! none), `modules` (`br_netfilter`, `overlay` in `/sys/module`), `sysctls`
//! (`net.ipv4.ip_forward`, `net.bridge.bridge-nf-call-iptables` are 1).
//!
//! Every check is recorded (as `kube-preflight/<name>` step records); the first failure is
//! the one message the operator gets. A remote check that cannot run because an earlier one
//! failed is recorded as skipped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::DigitallySignedStruct;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::settings::{BootstrapToken, CaCertHash, Endpoint};
use crate::steps::{StepRecord, StepStatus};

/// Largest clock difference to the endpoint the preflight accepts.
pub const MAX_SKEW: Duration = Duration::from_secs(60);
/// The default bound of each check.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// The kernel modules kubeadm's preflight and the bridge CNI need.
pub const MODULES: &[&str] = &["br_netfilter", "overlay"];
/// The sysctls that must be 1.
pub const SYSCTLS: &[&str] = &["net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"];

const CLUSTER_INFO: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";

/// What the preflight checks the node against: the values as given (parsed here, so a
/// malformed one is a recorded failure naming its key, on the vApp and Cluster API paths alike).
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `kube.endpoint` (`host[:port]`).
    pub endpoint: String,
    /// `kube.token`; `None` for a control-plane init (nothing to join).
    pub token: Option<String>,
    /// `kube.ca-cert-hash`; `None` for a control-plane init.
    pub ca_cert_hash: Option<String>,
}

impl Target {
    /// The target of a kubeadm `JoinConfiguration` as Cluster API's kubeadm bootstrap writes
    /// it (`/run/kubeadm/kubeadm-join-config.yaml`, any of v1beta2–v1beta4: token discovery
    /// has the same shape in all three), so the preflight runs before CABPK's `kubeadm join`.
    /// Read leniently (other fields are not ours to judge); `None` when the document is not a
    /// join with bootstrap-token discovery (an init, or file discovery).
    pub fn from_join_config(yaml: &str) -> Result<Option<Target>, String> {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
                .map_err(|e| format!("kubeadm configuration is not YAML: {e}"))?;
            if v.get("kind").and_then(|k| k.as_str()) != Some("JoinConfiguration") {
                continue;
            }
            let Some(bt) = v.get("discovery").and_then(|d| d.get("bootstrapToken")) else {
                return Ok(None);
            };
            let text = |k: &str| bt.get(k).and_then(|x| x.as_str()).map(str::to_owned);
            let endpoint = text("apiServerEndpoint").ok_or(
                "JoinConfiguration: discovery.bootstrapToken.apiServerEndpoint is missing",
            )?;
            let ca_cert_hash = bt
                .get("caCertHashes")
                .and_then(|h| h.as_sequence())
                .and_then(|h| h.first())
                .and_then(|h| h.as_str())
                .map(str::to_owned);
            return Ok(Some(Target { endpoint, token: text("token"), ca_cert_hash }));
        }
        Ok(None)
    }
}

/// Where and how long.
#[derive(Debug, Clone)]
pub struct Options {
    /// The root `/proc` and `/sys` are read under (`/` on a node).
    pub root: PathBuf,
    /// containerd's socket (under `root`).
    pub containerd_socket: PathBuf,
    /// The bound of each check.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            root: PathBuf::from("/"),
            containerd_socket: PathBuf::from(super::kubeadm::CONTAINERD_SOCKET),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Its name (`endpoint-tcp`, `ca-pin`, ...).
    pub name: &'static str,
    /// The key a failure is about.
    pub key: &'static str,
    /// What it found.
    pub outcome: Outcome,
    /// How long it took.
    pub duration: Duration,
}

/// How a check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed: what was seen.
    Ok(String),
    /// Failed: why (names the key, never a secret).
    Failed(String),
    /// Not run: why.
    Skipped(String),
}

/// The first failed check, as the one message the operator sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("preflight {check}: {key}: {reason}")]
pub struct PreflightError {
    /// The check.
    pub check: &'static str,
    /// The key to fix.
    pub key: &'static str,
    /// Why.
    pub reason: String,
}

/// Every check, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// The first failure, if any.
    pub fn failure(&self) -> Option<PreflightError> {
        self.checks.iter().find_map(|c| match &c.outcome {
            Outcome::Failed(r) => {
                Some(PreflightError { check: c.name, key: c.key, reason: r.clone() })
            }
            _ => None,
        })
    }

    /// The checks as step records for `status` (`kube-preflight/<name>`).
    pub fn records(&self) -> Vec<StepRecord> {
        self.checks
            .iter()
            .map(|c| {
                let (status, detail, error) = match &c.outcome {
                    Outcome::Ok(d) => (StepStatus::Ok, d.clone(), None),
                    Outcome::Skipped(d) => (StepStatus::Skipped, d.clone(), None),
                    Outcome::Failed(r) => {
                        (StepStatus::Failed, String::new(), Some(format!("{}: {r}", c.key)))
                    }
                };
                StepRecord {
                    name: format!("kube-preflight/{}", c.name),
                    status,
                    detail,
                    error,
                    duration_ms: c.duration.as_millis() as u64,
                }
            })
            .collect()
    }

    fn push(&mut self, name: &'static str, key: &'static str, t0: Instant, outcome: Outcome) {
        self.checks.push(Check { name, key, outcome, duration: t0.elapsed() });
    }

    fn ok(
        &mut self,
        name: &'static str,
        key: &'static str,
        t0: Instant,
        r: Result<String, String>,
    ) -> bool {
        let pass = r.is_ok();
        self.push(name, key, t0, r.map_or_else(Outcome::Failed, Outcome::Ok));
        pass
    }

    fn skip(&mut self, names: &[(&'static str, &'static str)], why: &str) {
        for (n, k) in names {
            self.push(n, k, Instant::now(), Outcome::Skipped(why.to_owned()));
        }
    }
}

/// Runs every check (see the module doc) and returns the report; [`Report::failure`] says
/// whether kubeadm may run.
pub async fn run(target: &Target, opts: &Options) -> Report {
    let mut r = local(opts).await;
    r.checks.extend(remote(target, opts).await.checks);
    r
}

/// The checks of this node alone (runtime, swap, modules, sysctls).
pub async fn local(opts: &Options) -> Report {
    let mut r = Report::default();
    local_checks(&mut r, opts).await;
    r
}

/// The checks against the endpoint (values, TCP, TLS, cluster-info, CA pin, token, clock).
pub async fn remote(target: &Target, opts: &Options) -> Report {
    let mut r = Report::default();
    remote_checks(&mut r, target, opts).await;
    r
}

/// [`run`] from synchronous code (a first-boot step), on a runtime of its own.
pub fn run_blocking(target: &Target, opts: &Options) -> Report {
    let go = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(run(target, opts)))
            .unwrap_or_else(|e| {
                let mut r = Report::default();
                r.push(
                    "runtime",
                    "kube",
                    Instant::now(),
                    Outcome::Failed(format!("no runtime: {e}")),
                );
                r
            })
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(go).join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    } else {
        go()
    }
}

async fn local_checks(r: &mut Report, opts: &Options) {
    let t0 = Instant::now();
    let sock = under(&opts.root, &opts.containerd_socket);
    let res = containerd_answers(&sock, opts.timeout).await;
    r.ok("runtime", "containerd", t0, res);
    let t0 = Instant::now();
    r.ok("swap", "swap", t0, swap_off(&opts.root));
    let t0 = Instant::now();
    r.ok("modules", "modules", t0, modules_loaded(&opts.root));
    let t0 = Instant::now();
    r.ok("sysctls", "sysctls", t0, sysctls_set(&opts.root));
}

const REMOTE: &[(&str, &str)] = &[
    ("endpoint-tcp", "kube.endpoint"),
    ("endpoint-tls", "kube.endpoint"),
    ("cluster-info", "kube.endpoint"),
    ("ca-pin", "kube.ca-cert-hash"),
    ("token", "kube.token"),
    ("clock", "ntp.servers"),
];

async fn remote_checks(r: &mut Report, target: &Target, opts: &Options) {
    if target.token.is_none() && target.ca_cert_hash.is_none() {
        // the first control plane: the endpoint (the VIP) has no API server behind it yet
        return r.skip(REMOTE, "control-plane init: no cluster to reach yet");
    }
    // the values first: a malformed one needs no network to refuse
    let t0 = Instant::now();
    let endpoint = match target.endpoint.parse::<Endpoint>() {
        Ok(e) => e,
        Err(e) => {
            r.push("values", "kube.endpoint", t0, Outcome::Failed(e.0));
            return r.skip(REMOTE, "kube.endpoint is not valid");
        }
    };
    let token = match target.token.as_deref().map(str::parse::<BootstrapToken>).transpose() {
        Ok(t) => t,
        Err(e) => {
            r.push("values", "kube.token", t0, Outcome::Failed(e.0));
            return r.skip(REMOTE, "kube.token is not valid");
        }
    };
    let pin = match target.ca_cert_hash.as_deref().map(str::parse::<CaCertHash>).transpose() {
        Ok(p) => p,
        Err(e) => {
            r.push("values", "kube.ca-cert-hash", t0, Outcome::Failed(e.0));
            return r.skip(REMOTE, "kube.ca-cert-hash is not valid");
        }
    };
    r.push("values", "kube", t0, Outcome::Ok("endpoint, token and pin are well formed".into()));
    let Some(fetched) = fetch_cluster_info(r, &endpoint, opts.timeout).await else {
        return;
    };
    let t0 = Instant::now();
    let info = ClusterInfo::parse(&fetched.body);
    let info = match info {
        Ok(i) => {
            r.push(
                "cluster-info",
                "kube.endpoint",
                t0,
                Outcome::Ok("read kube-public/cluster-info".into()),
            );
            i
        }
        Err(why) => {
            r.push(
                "cluster-info",
                "kube.endpoint",
                t0,
                Outcome::Failed(format!("{endpoint}: {why}")),
            );
            return r.skip(&REMOTE[3..], "no cluster-info");
        }
    };
    let t0 = Instant::now();
    let res = check_pin(&info, pin.as_ref(), &fetched.chain);
    r.ok("ca-pin", "kube.ca-cert-hash", t0, res);
    let t0 = Instant::now();
    match &token {
        Some(t) => {
            let res = check_token(&info, t);
            r.ok("token", "kube.token", t0, res);
        }
        None => r.push("token", "kube.token", t0, Outcome::Skipped("no token to join with".into())),
    }
    let t0 = Instant::now();
    r.ok("clock", "ntp.servers", t0, check_skew(fetched.date, &endpoint));
}

fn under(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// containerd serves gRPC, i.e. HTTP/2: after the client preface and an empty SETTINGS
/// frame, a live server sends its own SETTINGS frame (type 4) first.
pub(crate) async fn containerd_answers(sock: &Path, timeout: Duration) -> Result<String, String> {
    let talk = async {
        let mut s =
            tokio::net::UnixStream::connect(sock).await.map_err(|e| format!("connect: {e}"))?;
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, no flags, stream 0
        s.write_all(&hello).await.map_err(|e| format!("write: {e}"))?;
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.map_err(|e| format!("read: {e}"))?;
        if head[3] != 4 {
            return Err(format!("answered with HTTP/2 frame type {} instead of SETTINGS", head[3]));
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, talk).await {
        Ok(Ok(())) => Ok(format!("containerd answers on {}", sock.display())),
        Ok(Err(e)) => {
            Err(format!("containerd at {}: {e} (is containerd running?)", sock.display()))
        }
        Err(_) => {
            Err(format!("containerd at {} did not answer within {timeout:?}", sock.display()))
        }
    }
}

fn swap_off(root: &Path) -> Result<String, String> {
    let p = root.join("proc/swaps");
    let t = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    let active: Vec<&str> = t.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    if active.is_empty() {
        Ok("no swap".into())
    } else {
        Err(format!("swap is on ({}); kubelet refuses to run with swap", active.join(", ")))
    }
}

fn modules_loaded(root: &Path) -> Result<String, String> {
    let missing: Vec<&str> =
        MODULES.iter().copied().filter(|m| !root.join("sys/module").join(m).is_dir()).collect();
    if missing.is_empty() {
        Ok(format!("{} loaded", MODULES.join(", ")))
    } else {
        Err(format!("kernel module(s) not loaded: {} (modules-load.d)", missing.join(", ")))
    }
}

fn sysctls_set(root: &Path) -> Result<String, String> {
    for s in SYSCTLS {
        let p = root.join("proc/sys").join(s.replace('.', "/"));
        match std::fs::read_to_string(&p) {
            Ok(v) if v.trim() == "1" => {}
            Ok(v) => return Err(format!("{s} is {}, must be 1", v.trim())),
            Err(e) => return Err(format!("{s}: {} unreadable: {e}", p.display())),
        }
    }
    Ok(format!("{} = 1", SYSCTLS.join(", ")))
}

/// What the endpoint answered.
struct Fetched {
    chain: Vec<CertificateDer<'static>>,
    date: Option<SystemTime>,
    body: Vec<u8>,
}

async fn fetch_cluster_info(r: &mut Report, ep: &Endpoint, timeout: Duration) -> Option<Fetched> {
    let t0 = Instant::now();
    let addr = (ep.host_str(), ep.port.get());
    let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            r.push(
                "endpoint-tcp",
                "kube.endpoint",
                t0,
                Outcome::Failed(format!("{ep}: TCP connect failed: {e}")),
            );
            r.skip(&REMOTE[1..], "no TCP connection");
            return None;
        }
        Err(_) => {
            let why = format!("{ep}: no TCP connection within {timeout:?}");
            r.push("endpoint-tcp", "kube.endpoint", t0, Outcome::Failed(why));
            r.skip(&REMOTE[1..], "no TCP connection");
            return None;
        }
    };
    r.push("endpoint-tcp", "kube.endpoint", t0, Outcome::Ok(format!("connected to {ep}")));
    let t0 = Instant::now();
    let (tls, chain) = match tls_connect(tcp, ep, timeout).await {
        Ok(x) => x,
        Err(why) => {
            r.push("endpoint-tls", "kube.endpoint", t0, Outcome::Failed(format!("{ep}: {why}")));
            r.skip(&REMOTE[2..], "no TLS session");
            return None;
        }
    };
    r.push(
        "endpoint-tls",
        "kube.endpoint",
        t0,
        Outcome::Ok(format!("TLS with {ep}, {} certificate(s)", chain.len())),
    );
    let t0 = Instant::now();
    match tokio::time::timeout(timeout, http_get(tls, &ep.host_str(), CLUSTER_INFO)).await {
        Ok(Ok((200, date, body))) => Some(Fetched { chain, date, body }),
        Ok(Ok((status, _, _))) => {
            let why = format!(
                "{ep}: GET {CLUSTER_INFO} answered HTTP {status} (not a kubeadm cluster's API server, or anonymous access to cluster-info is off)"
            );
            r.push("cluster-info", "kube.endpoint", t0, Outcome::Failed(why));
            r.skip(&REMOTE[3..], "no cluster-info");
            None
        }
        Ok(Err(e)) => {
            r.push(
                "cluster-info",
                "kube.endpoint",
                t0,
                Outcome::Failed(format!("{ep}: GET {CLUSTER_INFO}: {e}")),
            );
            r.skip(&REMOTE[3..], "no cluster-info");
            None
        }
        Err(_) => {
            let why = format!("{ep}: no answer to GET {CLUSTER_INFO} within {timeout:?}");
            r.push("cluster-info", "kube.endpoint", t0, Outcome::Failed(why));
            r.skip(&REMOTE[3..], "no cluster-info");
            None
        }
    }
}

/// Accepts any server certificate and keeps the chain: trust comes from the CA pin, checked
/// afterwards on what was presented (what kubeadm's token discovery does, too).
#[derive(Debug)]
struct Recorder {
    chain: Mutex<Vec<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut c = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        c.clear();
        c.push(end_entity.clone().into_owned());
        c.extend(intermediates.iter().map(|i| i.clone().into_owned()));
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(
    tcp: tokio::net::TcpStream,
    ep: &Endpoint,
    timeout: Duration,
) -> Result<(Tls, Vec<CertificateDer<'static>>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let rec = Arc::new(Recorder { chain: Mutex::new(Vec::new()), provider: provider.clone() });
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(rec.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(ep.host_str()).map_err(|e| format!("server name: {e}"))?;
    let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tls = match tokio::time::timeout(timeout, conn.connect(name, tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
        Err(_) => return Err(format!("no TLS handshake within {timeout:?}")),
    };
    let chain = rec.chain.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok((tls, chain))
}

/// Largest response the preflight reads (cluster-info is a few KiB).
const MAX_BODY: usize = 1 << 20;

/// One HTTP/1.1 GET with `Connection: close`: status, `Date`, body (chunked or not).
async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    path: &str,
) -> Result<(u16, Option<SystemTime>, Vec<u8>), String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nUser-Agent: capstan-agent\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(n) => n,
            // servers that close without close_notify: what was read counts
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(format!("read: {e}")),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_BODY {
            return Err(format!("response larger than {MAX_BODY} bytes"));
        }
    }
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> Result<(u16, Option<SystemTime>, Vec<u8>), String> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no HTTP header")?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "HTTP header is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("no HTTP status line")?;
    let mut date = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let v = v.trim();
        if k.eq_ignore_ascii_case("date") {
            date = httpdate::parse_http_date(v).ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.eq_ignore_ascii_case("chunked");
        }
    }
    let body = &buf[end + 4..];
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    Ok((status, date, body))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or("truncated chunk size")?;
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let size = size.ok_or("bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// The parts of cluster-info the checks read.
struct ClusterInfo {
    /// The `kubeconfig` data, as signed.
    kubeconfig: String,
    /// The CA certificate (DER) from it.
    ca: Vec<u8>,
    /// `jws-kubeconfig-<id>` → detached JWS.
    signatures: Vec<(String, String)>,
}

impl ClusterInfo {
    fn parse(body: &[u8]) -> Result<ClusterInfo, String> {
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("cluster-info is not JSON: {e}"))?;
        let data = v.get("data").and_then(|d| d.as_object()).ok_or("cluster-info has no data")?;
        let kubeconfig = data
            .get("kubeconfig")
            .and_then(|k| k.as_str())
            .ok_or("cluster-info has no kubeconfig")?
            .to_owned();
        let kc: serde_yaml::Value = serde_yaml::from_str(&kubeconfig)
            .map_err(|e| format!("cluster-info's kubeconfig is not YAML: {e}"))?;
        let ca_b64 = kc
            .get("clusters")
            .and_then(|c| c.get(0))
            .and_then(|c| c.get("cluster"))
            .and_then(|c| c.get("certificate-authority-data"))
            .and_then(|c| c.as_str())
            .ok_or("cluster-info's kubeconfig has no certificate-authority-data")?;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(ca_b64.trim())
            .map_err(|_| "certificate-authority-data is not base64")?;
        let ca = rustls_pemfile::certs(&mut pem.as_slice())
            .next()
            .and_then(Result::ok)
            .ok_or("certificate-authority-data holds no PEM certificate")?
            .to_vec();
        let signatures = data
            .iter()
            .filter_map(|(k, v)| {
                Some((k.strip_prefix("jws-kubeconfig-")?.to_owned(), v.as_str()?.to_owned()))
            })
            .collect();
        Ok(ClusterInfo { kubeconfig, ca, signatures })
    }
}

/// The pure part of the remote checks on an API server's raw answer to the cluster-info GET
/// (HTTP/1.1 head, chunked or not; the ConfigMap's JSON; its kubeconfig's YAML; the CA's
/// base64 PEM): the served CA's pin, and whether `token` signs cluster-info. For the fuzz
/// target and tests; the preflight itself goes through the same functions.
pub fn inspect_cluster_info(
    http_response: &[u8],
    token: &BootstrapToken,
) -> Result<(CaCertHash, Result<String, String>), String> {
    let (status, _, body) = parse_response(http_response)?;
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    let info = ClusterInfo::parse(&body)?;
    let pin = pin_of_cert(&info.ca)?;
    Ok((pin, check_token(&info, token)))
}

/// The pin of a DER certificate: SHA-256 of its SubjectPublicKeyInfo.
pub fn pin_of_cert(der: &[u8]) -> Result<CaCertHash, String> {
    let c = CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&c)
        .map_err(|e| format!("unreadable certificate: {e:?}"))?;
    Ok(CaCertHash::of_spki(cert.subject_public_key_info().as_ref()))
}

fn check_pin(
    info: &ClusterInfo,
    pin: Option<&CaCertHash>,
    chain: &[CertificateDer<'static>],
) -> Result<String, String> {
    let served = pin_of_cert(&info.ca)?;
    let Some(pin) = pin else {
        return Ok(format!("no pin configured; cluster CA is {served}"));
    };
    if &served != pin {
        return Err(format!(
            "the cluster's CA (from cluster-info) has pin {served}, not the configured {pin}"
        ));
    }
    // the presented certificate must be issued under that CA
    let ca = CertificateDer::from(info.ca.as_slice());
    let anchor = webpki::anchor_from_trusted_cert(&ca)
        .map_err(|e| format!("the cluster CA is unusable: {e:?}"))?;
    let leaf = chain.first().ok_or("the endpoint presented no certificate")?;
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("the endpoint's certificate is unreadable: {e:?}"))?;
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    ee.verify_for_usage(
        algs.all,
        &[anchor],
        &chain[1..],
        UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| {
        format!("pin matches, but the endpoint's certificate is not issued by that CA: {e:?}")
    })?;
    Ok(format!("cluster CA matches {pin}; the endpoint's certificate chains to it"))
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn check_token(info: &ClusterInfo, token: &BootstrapToken) -> Result<String, String> {
    let id = token.id();
    let Some((_, jws)) = info.signatures.iter().find(|(k, _)| k == id) else {
        return Err(format!(
            "the cluster has no live token with id {id} (expired, deleted, or never created)"
        ));
    };
    let mut parts = jws.split('.');
    let (Some(header), Some(""), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("jws-kubeconfig-{id} is not a detached JWS"));
    };
    let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .ok_or_else(|| format!("jws-kubeconfig-{id} has an unreadable header"))?;
    if h.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(format!("jws-kubeconfig-{id} is not HS256"));
    }
    let secret = &token.expose()[7..];
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let signing_input = format!("{header}.{}", b64url(info.kubeconfig.as_bytes()));
    let want = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| format!("jws-kubeconfig-{id} has an unreadable signature"))?;
    ring::hmac::verify(&key, signing_input.as_bytes(), &want).map_err(|_| {
        format!("token {id}.<secret>: the secret does not match the cluster's signature (wrong token secret)")
    })?;
    Ok(format!("token {id} is live and its secret signs cluster-info"))
}

fn check_skew(date: Option<SystemTime>, ep: &Endpoint) -> Result<String, String> {
    let Some(date) = date else {
        return Ok(format!("{ep} sent no Date header; clock not compared"));
    };
    let now = SystemTime::now();
    let (skew, ahead) = match now.duration_since(date) {
        Ok(d) => (d, true),
        Err(e) => (e.duration(), false),
    };
    // Date has one-second resolution
    if skew > MAX_SKEW {
        return Err(format!(
            "this node's clock is {}s {} {ep}'s (limit {}s): set ntp.servers or fix the host clock",
            skew.as_secs(),
            if ahead { "ahead of" } else { "behind" },
            MAX_SKEW.as_secs()
        ));
    }
    Ok(format!("clock within {}s of {ep}", skew.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_parsed_chunked_or_not() {
        let r = b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 2\r\n\r\n{}";
        let (s, d, b) = parse_response(r).unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"{}"[..]));
        assert_eq!(d.unwrap(), httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap());
        let r = b"HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let (s, d, b) = parse_response(r).unwrap();
        assert_eq!((s, d, b.as_slice()), (403, None, &b"abcde"[..]));
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn local_checks_read_the_rooted_trees() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("proc/sys/net/ipv4")).unwrap();
        std::fs::create_dir_all(root.join("proc/sys/net/bridge")).unwrap();
        std::fs::write(root.join("proc/swaps"), "Filename\tType\tSize\tUsed\tPriority\n").unwrap();
        std::fs::write(root.join("proc/sys/net/ipv4/ip_forward"), "1\n").unwrap();
        std::fs::write(root.join("proc/sys/net/bridge/bridge-nf-call-iptables"), "0\n").unwrap();
        std::fs::create_dir_all(root.join("sys/module/overlay")).unwrap();
        assert!(swap_off(root).is_ok());
        let e = modules_loaded(root).unwrap_err();
        assert!(e.contains("br_netfilter") && !e.contains("overlay"), "{e}");
        let e = sysctls_set(root).unwrap_err();
        assert_eq!(e, "net.bridge.bridge-nf-call-iptables is 0, must be 1");
        std::fs::create_dir_all(root.join("sys/module/br_netfilter")).unwrap();
        std::fs::write(root.join("proc/sys/net/bridge/bridge-nf-call-iptables"), "1").unwrap();
        assert!(modules_loaded(root).is_ok() && sysctls_set(root).is_ok());
        std::fs::write(
            root.join("proc/swaps"),
            "Filename\tType\tSize\tUsed\tPriority\n/dev/vda3 partition 1048572 0 -2\n",
        )
        .unwrap();
        assert!(swap_off(root).unwrap_err().contains("/dev/vda3"));
    }

    #[test]
    fn skew_is_measured_both_ways() {
        let ep: Endpoint = "10.0.0.1".parse().unwrap();
        let now = SystemTime::now();
        assert!(check_skew(Some(now), &ep).is_ok());
        let e = check_skew(Some(now - Duration::from_secs(120)), &ep).unwrap_err();
        assert!(e.contains("ahead of") && e.contains("ntp.servers"), "{e}");
        let e = check_skew(Some(now + Duration::from_secs(120)), &ep).unwrap_err();
        assert!(e.contains("behind"), "{e}");
        assert!(check_skew(None, &ep).is_ok());
    }
}
