//! The kube preflight against real TLS servers: rustls in process, with a cluster CA and an
//! API server certificate made by rcgen, serving a kubeadm-shaped `cluster-info` whose JWS
//! signature and expected CA pin are computed by OpenSSL (`openssl dgst -hmac`, and kubeadm's
//! documented `openssl x509 -pubkey | openssl pkey -pubin -outform der | openssl dgst -sha256`),
//! so the agent's own SPKI and HMAC code is checked against an independent implementation.
//! Local checks run on fake `/proc`/`/sys` trees and a real containerd.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

mod common;

use base64::Engine as _;
use capstan_agent::roles::kube::preflight::{self, Options, Outcome, Report, Target};
use capstan_agent::steps::StepStatus;
use common::kubenode::{fake_node, Containerd};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "abcdef.0123456789abcdef";

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(cn: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages =
        vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

fn server_cert(ca: &Ca) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "kubernetes".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert, key)
}

fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut c = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    c.stdin.take().unwrap().write_all(input).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "openssl {args:?}");
    o.stdout
}

/// kubeadm's documented way to compute the pin.
fn openssl_pin(ca_pem: &str) -> String {
    let pubkey = openssl(&["x509", "-pubkey", "-noout"], ca_pem.as_bytes());
    let der = openssl(&["pkey", "-pubin", "-outform", "der"], &pubkey);
    let out = String::from_utf8(openssl(&["dgst", "-sha256", "-hex"], &der)).unwrap();
    format!("sha256:{}", out.split_whitespace().last().unwrap())
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The detached JWS kubeadm's bootstrap signer writes, computed with OpenSSL's HMAC.
fn openssl_jws(kubeconfig: &str, token: &str) -> String {
    let (id, secret) = token.split_once('.').unwrap();
    let header = b64url(format!(r#"{{"alg":"HS256","kid":"{id}"}}"#).as_bytes());
    let input = format!("{header}.{}", b64url(kubeconfig.as_bytes()));
    let mac = openssl(
        &["dgst", "-sha256", "-mac", "HMAC", "-macopt", &format!("key:{secret}"), "-binary"],
        input.as_bytes(),
    );
    format!("{header}..{}", b64url(&mac))
}

fn cluster_info(ca_pem: &str, port: u16, tokens: &[&str]) -> String {
    let kubeconfig = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://127.0.0.1:{port}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n",
        base64::engine::general_purpose::STANDARD.encode(ca_pem)
    );
    let mut data = serde_json::json!({ "kubeconfig": kubeconfig });
    for t in tokens {
        let id = &t[..6];
        data[format!("jws-kubeconfig-{id}")] = openssl_jws(&kubeconfig, t).into();
    }
    serde_json::json!({
        "kind": "ConfigMap", "apiVersion": "v1",
        "metadata": { "name": "cluster-info", "namespace": "kube-public" },
        "data": data,
    })
    .to_string()
}

/// What the fake API server answers (its TLS and HTTP are real).
#[derive(Clone)]
struct Answer {
    status: u16,
    date: SystemTime,
    body: String,
}

/// Serves `answer` over TLS with `chain` on 127.0.0.1; returns the port.
async fn serve(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: &KeyPair,
    answer: Answer,
) -> u16 {
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            let a = answer.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                assert!(String::from_utf8_lossy(&req).starts_with(
                    "GET /api/v1/namespaces/kube-public/configmaps/cluster-info HTTP/1.1\r\n"
                ));
                let resp = format!(
                    "HTTP/1.1 {} X\r\nDate: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                    a.status,
                    httpdate::fmt_http_date(a.date),
                    a.body.len(),
                    a.body
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

/// A cluster: its CA, an API server answering with cluster-info for `tokens`.
struct Cluster {
    pin: String,
    port: u16,
}

async fn cluster(tokens: &[&str], skew: i64, status: u16) -> Cluster {
    let ca = ca("kubernetes");
    let (srv, key) = server_cert(&ca);
    let ca_pem = ca.cert.pem();
    // the port is only known after binding; the kubeconfig's server URL is informative
    let body = cluster_info(&ca_pem, 6443, tokens);
    let now = SystemTime::now();
    let date = if skew >= 0 {
        now + Duration::from_secs(skew as u64)
    } else {
        now - Duration::from_secs((-skew) as u64)
    };
    let port = serve(vec![srv.der().clone()], &key, Answer { status, date, body }).await;
    Cluster { pin: openssl_pin(&ca_pem), port }
}

fn target(port: u16, token: &str, pin: &str) -> Target {
    Target {
        endpoint: format!("127.0.0.1:{port}"),
        token: Some(token.into()),
        ca_cert_hash: Some(pin.into()),
    }
}

fn opts() -> Options {
    Options { timeout: Duration::from_secs(2), ..Options::default() }
}

fn outcome<'a>(r: &'a Report, name: &str) -> &'a Outcome {
    &r.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {r:?}"))
        .outcome
}

#[tokio::test]
async fn the_right_pin_and_token_pass_and_are_recorded() {
    let c = cluster(&[TOKEN, "zzzzzz.0000000000000000"], 0, 200).await;
    let r = preflight::remote(&target(c.port, TOKEN, &c.pin), &opts()).await;
    assert_eq!(r.failure(), None, "{r:?}");
    assert!(
        matches!(outcome(&r, "ca-pin"), Outcome::Ok(d) if d.contains(&c.pin) && d.contains("chains to it")),
        "{r:?}"
    );
    assert!(matches!(outcome(&r, "token"), Outcome::Ok(d) if d.contains("abcdef")), "{r:?}");
    let rec = r.records();
    let names: Vec<&str> = rec.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "kube-preflight/values",
            "kube-preflight/endpoint-tcp",
            "kube-preflight/endpoint-tls",
            "kube-preflight/cluster-info",
            "kube-preflight/ca-pin",
            "kube-preflight/token",
            "kube-preflight/clock"
        ]
    );
    assert!(rec.iter().all(|s| s.status == StepStatus::Ok), "{rec:?}");
    assert!(!format!("{rec:?}").contains("0123456789abcdef"));
}

#[tokio::test]
async fn a_wrong_pin_fails_naming_the_key_and_the_served_pin() {
    let c = cluster(&[TOKEN], 0, 200).await;
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let r = preflight::remote(&target(c.port, TOKEN, &wrong), &opts()).await;
    let f = r.failure().expect("refused");
    assert_eq!((f.check, f.key), ("ca-pin", "kube.ca-cert-hash"));
    assert!(f.reason.contains(&c.pin) && f.reason.contains(&wrong), "{f}");
    assert!(f.to_string().starts_with("preflight ca-pin: kube.ca-cert-hash: "), "{f}");
}

#[tokio::test]
async fn an_endpoint_of_another_cluster_fails_the_pin_even_if_cluster_info_matches() {
    // cluster-info names CA 1, but the presented certificate is issued by CA 2
    let ca1 = ca("kubernetes");
    let ca2 = ca("other");
    let (srv, key) = server_cert(&ca2);
    let body = cluster_info(&ca1.cert.pem(), 6443, &[TOKEN]);
    let port =
        serve(vec![srv.der().clone()], &key, Answer { status: 200, date: SystemTime::now(), body })
            .await;
    let r = preflight::remote(&target(port, TOKEN, &openssl_pin(&ca1.cert.pem())), &opts()).await;
    let f = r.failure().expect("refused");
    assert_eq!(f.key, "kube.ca-cert-hash");
    assert!(f.reason.contains("not issued by that CA"), "{f}");
}

#[tokio::test]
async fn tokens_the_cluster_does_not_know_or_sign_fail_naming_kube_token() {
    let c = cluster(&[TOKEN], 0, 200).await;
    // right id, wrong secret
    let r = preflight::remote(&target(c.port, "abcdef.ffffffffffffffff", &c.pin), &opts()).await;
    let f = r.failure().expect("refused");
    assert_eq!((f.check, f.key), ("token", "kube.token"));
    assert!(f.reason.contains("does not match") && !f.reason.contains("ffffffff"), "{f}");
    // an id the cluster has no signature for: expired (the token cleaner removed it) or never made
    let r = preflight::remote(&target(c.port, "qwerty.0123456789abcdef", &c.pin), &opts()).await;
    let f = r.failure().expect("refused");
    assert_eq!(f.key, "kube.token");
    assert!(
        f.reason.contains("no live token with id qwerty") && f.reason.contains("expired"),
        "{f}"
    );
}

#[tokio::test]
async fn a_malformed_token_fails_before_any_connection() {
    // port 1 on loopback: nothing listens; the value check comes first
    let t0 = Instant::now();
    let r = preflight::remote(
        &target(1, "abcdef-0123456789abcdef", &format!("sha256:{}", "00".repeat(32))),
        &opts(),
    )
    .await;
    let f = r.failure().expect("refused");
    assert_eq!((f.check, f.key), ("values", "kube.token"));
    assert!(f.reason.contains("secret, not shown") && !f.reason.contains("0123456789"), "{f}");
    assert!(matches!(outcome(&r, "endpoint-tcp"), Outcome::Skipped(_)));
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_within_the_timeout_naming_kube_endpoint() {
    // refused: a port that was just free
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let r =
        preflight::remote(&target(port, TOKEN, &format!("sha256:{}", "00".repeat(32))), &opts())
            .await;
    let f = r.failure().expect("refused");
    assert_eq!((f.check, f.key), ("endpoint-tcp", "kube.endpoint"));
    assert!(f.reason.contains(&format!("127.0.0.1:{port}")), "{f}");
    // silent: accepts TCP and never speaks TLS (an LB with no healthy backend that holds the
    // connection); the TLS check gives up at the timeout
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let t0 = Instant::now();
    let o = Options { timeout: Duration::from_secs(1), ..Options::default() };
    let r =
        preflight::remote(&target(port, TOKEN, &format!("sha256:{}", "00".repeat(32))), &o).await;
    let f = r.failure().expect("refused");
    assert_eq!((f.check, f.key), ("endpoint-tls", "kube.endpoint"));
    assert!(f.reason.contains("no TLS handshake within 1s"), "{f}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn a_skewed_clock_fails_naming_ntp() {
    let c = cluster(&[TOKEN], -300, 200).await;
    let r = preflight::remote(&target(c.port, TOKEN, &c.pin), &opts()).await;
    let f = r.failure().expect("refused");
    assert_eq!((f.check, f.key), ("clock", "ntp.servers"));
    assert!(f.reason.contains("ahead of") && f.reason.contains("limit 60s"), "{f}");
    let c = cluster(&[TOKEN], 20, 200).await;
    let r = preflight::remote(&target(c.port, TOKEN, &c.pin), &opts()).await;
    assert_eq!(r.failure(), None, "{r:?}");
}

#[tokio::test]
async fn no_cluster_info_fails_naming_the_endpoint() {
    let c = cluster(&[TOKEN], 0, 403).await;
    let r = preflight::remote(&target(c.port, TOKEN, &c.pin), &opts()).await;
    let f = r.failure().expect("refused");
    assert_eq!((f.check, f.key), ("cluster-info", "kube.endpoint"));
    assert!(f.reason.contains("HTTP 403"), "{f}");
    assert!(matches!(outcome(&r, "ca-pin"), Outcome::Skipped(_)));
}

#[tokio::test]
async fn a_control_plane_init_checks_nothing_remote() {
    let t = Target { endpoint: "10.255.255.1:6443".into(), token: None, ca_cert_hash: None };
    let r = preflight::remote(&t, &opts()).await;
    assert_eq!(r.failure(), None);
    assert!(r.checks.iter().all(|c| matches!(c.outcome, Outcome::Skipped(_))), "{r:?}");
}

#[tokio::test]
async fn local_checks_pass_with_a_real_containerd_and_fail_without() {
    let d = tempfile::tempdir().unwrap();
    fake_node(d.path());
    let o = Options { root: d.path().to_owned(), ..opts() };
    let r = preflight::local(&o).await;
    let f = r.failure().expect("no containerd yet");
    assert_eq!((f.check, f.key), ("runtime", "containerd"));
    assert!(f.reason.contains("is containerd running?"), "{f}");
    let cd = Containerd::start(d.path());
    let r = preflight::local(&o).await;
    assert_eq!(r.failure(), None, "{r:?}");
    assert!(matches!(outcome(&r, "runtime"), Outcome::Ok(_)));
    drop(cd);
    // a socket that accepts and never answers is not a runtime
    let _ = std::fs::remove_file(d.path().join("run/containerd/containerd.sock"));
    let l =
        tokio::net::UnixListener::bind(d.path().join("run/containerd/containerd.sock")).unwrap();
    let r = preflight::local(&Options { timeout: Duration::from_secs(1), ..o.clone() }).await;
    drop(l);
    let f = r.failure().expect("silent socket");
    assert!(f.reason.contains("did not answer within 1s"), "{f}");
    // swap on
    std::fs::write(
        d.path().join("proc/swaps"),
        "Filename Type Size Used Priority\n/swapfile file 1024 0 -2\n",
    )
    .unwrap();
    std::fs::remove_dir(d.path().join("sys/module/overlay")).unwrap();
    let r = preflight::local(&o).await;
    assert!(matches!(outcome(&r, "swap"), Outcome::Failed(w) if w.contains("/swapfile")));
    assert!(matches!(outcome(&r, "modules"), Outcome::Failed(w) if w.contains("overlay")));
}
