//! The EC2 provider against a FAKE instance metadata service written from AWS's documentation
//! (`providers_imds`; the real IMDS runs only on EC2): IMDSv2 token first, IMDSv1 only when
//! allowed, bounded retries and timeouts, and the fake's own protocol rules.

mod providers_imds;

use std::time::{Duration, Instant};

use capstan_agent::sources::ec2;
use capstan_agent::sources::imds::ImdsOptions;
use capstan_agent::sources::provider_spec::ProviderSpec;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn quick() -> ImdsOptions {
    ImdsOptions {
        timeout: Duration::from_millis(500),
        backoff: Duration::from_millis(10),
        attempts: 3,
        ..ImdsOptions::default()
    }
}

/// Sends one raw request and returns the status code.
async fn status(url: &str, head: &str) -> u16 {
    let addr = url.strip_prefix("http://").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_fake_keeps_the_documented_rules() {
    let imds = providers_imds::start(providers_imds::two_nic_instance()).await;
    let u = &imds.url;
    assert_eq!(status(u, "GET /latest/meta-data/instance-id HTTP/1.1").await, 401, "no token");
    assert_eq!(status(u, "PUT /latest/api/token HTTP/1.1").await, 400, "no TTL");
    let ttl = "X-aws-ec2-metadata-token-ttl-seconds";
    assert_eq!(status(u, &format!("PUT /latest/api/token HTTP/1.1\r\n{ttl}: 0")).await, 400);
    assert_eq!(status(u, &format!("PUT /latest/api/token HTTP/1.1\r\n{ttl}: 21601")).await, 400);
    assert_eq!(status(u, &format!("PUT /latest/api/token HTTP/1.1\r\n{ttl}: 60")).await, 200);
    let fwd = format!("PUT /latest/api/token HTTP/1.1\r\n{ttl}: 60\r\nX-Forwarded-For: 1.2.3.4");
    assert_eq!(status(u, &fwd).await, 403);
    assert_eq!(status(u, "GET /latest/api/token HTTP/1.1").await, 405);
    let bad = "GET /latest/meta-data/instance-id HTTP/1.1\r\nX-aws-ec2-metadata-token: forged";
    assert_eq!(status(u, bad).await, 401, "a token it did not issue");
}

#[tokio::test]
async fn imdsv2_reads_identity_keys_network_and_user_data() {
    let imds = providers_imds::start(providers_imds::two_nic_instance()).await;
    let d = ec2::fetch(&imds.url, quick()).await.unwrap();
    assert_eq!(d.provider, "ec2");
    assert_eq!(d.instance_id.as_ref().unwrap().as_str(), "i-0123456789abcdef0");
    assert_eq!(d.hostname.as_ref().unwrap().as_str(), "ip-172-31-5-10.ec2.internal");
    assert_eq!(d.public_keys.len(), 2);
    assert!(d.public_keys[0].ends_with("my-key"));
    assert!(d.user_data.as_deref().unwrap().starts_with(b"#cloud-config"));
    let n = d.network.unwrap();
    assert_eq!(n.nics[0].mac.unwrap().to_string(), "0e:49:61:0f:c3:11", "device-number 0 first");
    let a: Vec<String> = n.nics[0].addresses.iter().map(ToString::to_string).collect();
    assert_eq!(a, ["172.31.5.11/20", "2600:1f18:abc:de00::11/128"]);
    assert!(n.nics[0].dhcp6 && !n.nics[1].dhcp6);
    let log = imds.log.lock().unwrap().clone();
    assert_eq!(log[0], "PUT /latest/api/token", "the token comes first");
    assert_eq!(log.iter().filter(|l| l.starts_with("PUT")).count(), 1, "one token for all");
    assert!(log[1..].iter().all(|l| l.ends_with("[token]")), "{log:?}");
}

#[tokio::test]
async fn the_provider_spec_reads_the_same() {
    let imds = providers_imds::start(providers_imds::two_nic_instance()).await;
    let spec: ProviderSpec = format!("ec2:{}", imds.url).parse().unwrap();
    let a = spec.read(quick()).await.unwrap();
    let b = ec2::fetch(&imds.url, quick()).await.unwrap();
    assert_eq!(a, b);
    let seed = tempfile::tempdir().unwrap();
    std::fs::write(seed.path().join("meta-data"), "instance-id: iid-spec\n").unwrap();
    let spec: ProviderSpec = format!("nocloud:{}", seed.path().display()).parse().unwrap();
    assert_eq!(spec.read(quick()).await.unwrap().instance_id.unwrap().as_str(), "iid-spec");
}

#[tokio::test]
async fn the_ipv6_endpoint_works() {
    let imds = providers_imds::start_at(providers_imds::two_nic_instance(), "[::1]:0").await;
    assert!(imds.url.starts_with("http://[::1]:"), "{}", imds.url);
    let d = ec2::fetch(&imds.url, quick()).await.unwrap();
    assert_eq!(d.instance_id.unwrap().as_str(), "i-0123456789abcdef0");
}

#[tokio::test]
async fn absent_user_data_is_none() {
    let mut cfg = providers_imds::two_nic_instance();
    cfg.leaves.remove("user-data");
    let imds = providers_imds::start(cfg).await;
    assert!(ec2::fetch(&imds.url, quick()).await.unwrap().user_data.is_none());
}

#[tokio::test]
async fn imdsv1_is_refused_unless_allowed() {
    let mut cfg = providers_imds::two_nic_instance();
    cfg.no_token = true;
    cfg.allow_v1 = true;
    let imds = providers_imds::start(cfg).await;
    let e = ec2::fetch(&imds.url, quick()).await.unwrap_err().to_string();
    assert_eq!(
        e,
        format!("ec2 {}/latest/api/token: IMDSv2 token refused (HTTP 404 Not Found); IMDSv1 is not allowed", imds.url)
    );
    let d = ec2::fetch(&imds.url, ImdsOptions { allow_v1: true, ..quick() }).await.unwrap();
    assert_eq!(d.instance_id.unwrap().as_str(), "i-0123456789abcdef0");
    assert!(imds.log.lock().unwrap().iter().all(|l| !l.ends_with("[token]")));
}

#[tokio::test]
async fn retries_are_bounded() {
    let mut cfg = providers_imds::two_nic_instance();
    cfg.fail_first = 2;
    let imds = providers_imds::start(cfg.clone()).await;
    assert!(ec2::fetch(&imds.url, quick()).await.is_ok(), "two 503s, then fine");
    cfg.fail_first = usize::MAX;
    let imds = providers_imds::start(cfg).await;
    let e = ec2::fetch(&imds.url, quick()).await.unwrap_err().to_string();
    assert!(
        e.ends_with("/latest/api/token: HTTP 503 Service Unavailable (after 3 attempts)"),
        "{e}"
    );
    assert_eq!(imds.log.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_silent_service_times_out() {
    let mut cfg = providers_imds::two_nic_instance();
    cfg.hang = true;
    let imds = providers_imds::start(cfg).await;
    let opts = ImdsOptions { timeout: Duration::from_millis(200), attempts: 2, ..quick() };
    let t = Instant::now();
    let e = ec2::fetch(&imds.url, opts.clone()).await.unwrap_err().to_string();
    assert!(e.ends_with("no answer within 200ms (after 2 attempts)"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let opts = ImdsOptions { budget: Duration::from_millis(300), attempts: 100, ..opts };
    let t = Instant::now();
    let e = ec2::fetch(&imds.url, opts).await.unwrap_err().to_string();
    assert!(e.contains("budget is spent"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "the budget bounds the retries");
    let closed = ec2::fetch("http://127.0.0.1:9", quick()).await.unwrap_err().to_string();
    assert!(closed.contains("cannot connect"), "{closed}");
}

#[tokio::test]
async fn hostile_responses_are_refused_whole() {
    let mut cfg = providers_imds::two_nic_instance();
    cfg.leaves.insert(
        "meta-data/network/interfaces/macs/0e:49:61:0f:c3:22/local-ipv4s".into(),
        "172.31.20.7\n; rm -rf /".into(),
    );
    let imds = providers_imds::start(cfg).await;
    let e = ec2::fetch(&imds.url, quick()).await.unwrap_err().to_string();
    assert_eq!(e, "ec2 meta-data/network/interfaces/macs/0e:49:61:0f:c3:22/local-ipv4s: (value): \"; rm -rf /\" is not an IP address");
    let mut cfg = providers_imds::two_nic_instance();
    cfg.leaves.insert("meta-data/instance-id".into(), "x".repeat(5 << 20));
    let imds = providers_imds::start(cfg).await;
    let e = ec2::fetch(&imds.url, quick()).await.unwrap_err().to_string();
    assert!(e.contains("reading the body"), "{e}");
}
