//! A FAKE EC2 instance metadata service, written from AWS's documentation ("Use the Instance
//! Metadata Service to access instance metadata", "Instance metadata categories"), because the
//! real one runs only on EC2. What it does, as documented:
//!
//! - `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1-21600) answers a
//!   token; a missing or out-of-range TTL is `400 Bad Request`; a request with
//!   `X-Forwarded-For` is `403 Forbidden`; any other method on the token path is `405`.
//! - Every other request needs `X-aws-ec2-metadata-token` with a token it issued: without one
//!   it is `401 Unauthorized` (IMDSv2 "required"), unless IMDSv1 is allowed ("optional"); a
//!   wrong token is always `401`.
//! - `/<version>/…` for `latest` and dated versions serves the same tree; a path ending in `/`
//!   lists its children, directories with a trailing `/`; `public-keys/` lists `0=<name>`; an
//!   unknown path (and absent user-data) is `404 Not Found`.
//!
//! Test knobs: serve IMDSv1, have no token endpoint (an IMDSv1-only service), fail the first N requests with `503`, or never answer.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

/// What the fake serves and how it misbehaves.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Leaf paths under `/<version>/` (`meta-data/instance-id`, `user-data`, …) → body.
    pub leaves: BTreeMap<String, String>,
    /// Listings that are not derived from the leaves (`meta-data/public-keys/` → `0=name`).
    pub listings: BTreeMap<String, String>,
    /// Serve requests without a token (IMDSv1).
    pub allow_v1: bool,
    /// Answer `503` to the first this many requests.
    pub fail_first: usize,
    /// Accept connections and never answer.
    pub hang: bool,
    /// No token endpoint (`404`), as an IMDSv1-only service.
    pub no_token: bool,
}

/// A running fake.
pub struct FakeImds {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Every request as `METHOD path [token]`, for assertions.
    pub log: Arc<Mutex<Vec<String>>>,
}

struct State {
    cfg: Config,
    tokens: Mutex<BTreeSet<String>>,
    seen: AtomicUsize,
    log: Arc<Mutex<Vec<String>>>,
}

/// The metadata of a small two-NIC instance with two keys and user-data.
pub fn two_nic_instance() -> Config {
    let m0 = "0e:49:61:0f:c3:11";
    let m1 = "0e:49:61:0f:c3:22";
    let mut leaves: BTreeMap<String, String> = [
        ("meta-data/instance-id", "i-0123456789abcdef0"),
        ("meta-data/local-hostname", "ip-172-31-5-10.ec2.internal"),
        ("meta-data/hostname", "ip-172-31-5-10.ec2.internal"),
        ("meta-data/ami-id", "ami-0abcdef1234567890"),
        ("meta-data/public-keys/0/openssh-key", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake my-key\n"),
        ("meta-data/public-keys/1/openssh-key", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQFake other"),
        ("meta-data/placement/availability-zone", "us-east-1a"),
        ("user-data", "#cloud-config\nhostname: ignored-by-ec2\n"),
        (
            "dynamic/instance-identity/document",
            r#"{"instanceId": "i-0123456789abcdef0", "region": "us-east-1", "availabilityZone": "us-east-1a"}"#,
        ),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let nic = |mac: &str, dev: &str, v4: &str, cidr: &str, v6: Option<&str>| {
        let p = format!("meta-data/network/interfaces/macs/{mac}");
        let mut v = vec![
            (format!("{p}/device-number"), dev.to_string()),
            (format!("{p}/mac"), mac.to_string()),
            (format!("{p}/local-ipv4s"), v4.to_string()),
            (format!("{p}/subnet-ipv4-cidr-block"), cidr.to_string()),
            (format!("{p}/interface-id"), format!("eni-{dev}abc")),
        ];
        if let Some(v6) = v6 {
            v.push((format!("{p}/ipv6s"), v6.to_string()));
            v.push((format!("{p}/subnet-ipv6-cidr-blocks"), "2600:1f18:abc:de00::/64".into()));
        }
        v
    };
    leaves.extend(nic(
        m0,
        "0",
        "172.31.5.10\n172.31.5.11",
        "172.31.0.0/20",
        Some("2600:1f18:abc:de00::10\n2600:1f18:abc:de00::11"),
    ));
    leaves.extend(nic(m1, "1", "172.31.20.7", "172.31.16.0/20", None));
    let listings = [("meta-data/public-keys/".to_string(), "0=my-key\n1=other".to_string())]
        .into_iter()
        .collect();
    Config { leaves, listings, ..Config::default() }
}

/// Starts the fake on a free port of 127.0.0.1; it runs until the test's runtime ends.
pub async fn start(cfg: Config) -> FakeImds {
    start_at(cfg, "127.0.0.1:0").await
}

/// Starts the fake on `bind` (`[::1]:0` for IPv6, as AWS's `fd00:ec2::254`).
pub async fn start_at(cfg: Config, bind: &str) -> FakeImds {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let state = Arc::new(State {
        cfg,
        tokens: Mutex::new(BTreeSet::new()),
        seen: AtomicUsize::new(0),
        log: log.clone(),
    });
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let state = state.clone();
            tokio::spawn(async move {
                if state.cfg.hang {
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                    drop(tcp);
                    return;
                }
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    FakeImds { url: format!("http://{addr}"), log }
}

fn reply(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r
}

fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let header = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let token = header("x-aws-ec2-metadata-token");
    state.log.lock().unwrap().push(format!(
        "{} {path}{}",
        req.method(),
        token.as_ref().map(|_| " [token]").unwrap_or("")
    ));
    if state.seen.fetch_add(1, Ordering::SeqCst) < state.cfg.fail_first {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "");
    }
    if path == "/latest/api/token" && state.cfg.no_token {
        return reply(StatusCode::NOT_FOUND, "");
    }
    if path == "/latest/api/token" {
        if req.method() != Method::PUT {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "");
        }
        if header("x-forwarded-for").is_some() {
            return reply(StatusCode::FORBIDDEN, "");
        }
        let ttl =
            header("x-aws-ec2-metadata-token-ttl-seconds").and_then(|t| t.parse::<u32>().ok());
        if !ttl.is_some_and(|t| (1..=21600).contains(&t)) {
            return reply(StatusCode::BAD_REQUEST, "");
        }
        let mut tokens = state.tokens.lock().unwrap();
        let t = format!("AQAEAFake-token-{}==", tokens.len());
        tokens.insert(t.clone());
        return reply(StatusCode::OK, t);
    }
    match token {
        Some(t) if !state.tokens.lock().unwrap().contains(&t) => {
            return reply(StatusCode::UNAUTHORIZED, "")
        }
        None if !state.cfg.allow_v1 => return reply(StatusCode::UNAUTHORIZED, ""),
        _ => {}
    }
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "");
    }
    serve(&state.cfg, &path)
}

fn serve(cfg: &Config, path: &str) -> Response<Full<Bytes>> {
    let versions = ["latest", "2021-03-23", "2018-09-24", "2016-09-02", "2009-04-04"];
    if path == "/" {
        return reply(StatusCode::OK, versions.join("\n"));
    }
    let Some((version, rest)) = path[1..].split_once('/') else {
        return reply(StatusCode::NOT_FOUND, "");
    };
    if !versions.contains(&version) {
        return reply(StatusCode::NOT_FOUND, "");
    }
    if let Some(body) = cfg.leaves.get(rest) {
        return reply(StatusCode::OK, body.clone());
    }
    let dir =
        if rest.is_empty() || rest.ends_with('/') { rest.to_string() } else { format!("{rest}/") };
    if let Some(l) = cfg.listings.get(&dir) {
        return reply(StatusCode::OK, l.clone());
    }
    let children: BTreeSet<String> = cfg
        .leaves
        .keys()
        .filter_map(|k| k.strip_prefix(&dir))
        .map(|r| match r.split_once('/') {
            Some((d, _)) => format!("{d}/"),
            None => r.to_string(),
        })
        .collect();
    if children.is_empty() {
        return reply(StatusCode::NOT_FOUND, "");
    }
    reply(StatusCode::OK, children.into_iter().collect::<Vec<_>>().join("\n"))
}
