//! Ingest over real TLS: every bad input is a 4xx and changes nothing; the agent's sender
//! reaches the hub with a client certificate and with a token.

mod common;

async fn post(
    c: &mut capstan_agent::heartbeat::client::Client,
    body: Vec<u8>,
) -> (StatusCode, hyper::body::Bytes) {
    c.request(Method::POST, "/v1/heartbeat", body).await.unwrap()
}

use std::time::Duration;

use capstan_agent::heartbeat::client::Credential;
use capstan_agent::heartbeat::{sender, HeartbeatSettings};
use common::*;
use hyper::{Method, StatusCode};

const NODE_TOKEN: &str = "tok-n2-0123456789abcdef";
const READ_TOKEN: &str = "tok-read-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("n2 {NODE_TOKEN}\n@read {READ_TOKEN}\n")).unwrap();
    let db = format!("sqlite:{}", dir.path().join("hub.db").display());
    // Not loopback-only: reads need a credential.
    let hub = HubProc::start(
        &certs,
        &db,
        &["--listen", "0.0.0.0:0", "--token-file", tokens.to_str().unwrap()],
    );
    let mut n1 = node_client(&hub.url, &certs, "n1");
    let (s, _) = post(&mut n1, beat("n1", 10, true).to_json()).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let mut reader = client(&hub.url, &certs, Credential::Token(READ_TOKEN.into()));
    let before = get_json(&mut reader, "/v1/nodes/n1").await;

    let mut v2 = serde_json::to_value(beat("n1", 20, true)).unwrap();
    v2["v"] = 2.into();
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "malformed",
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "heartbeat: key must be a string",
        ),
        ("oversized", vec![b' '; 20_000], StatusCode::PAYLOAD_TOO_LARGE, "bytes allowed"),
        (
            "unknown version",
            serde_json::to_vec(&v2).unwrap(),
            StatusCode::BAD_REQUEST,
            "version 2 is not supported",
        ),
        (
            "replay",
            beat("n1", 10, true).to_json(),
            StatusCode::CONFLICT,
            "seq 10 is not above the last accepted 10",
        ),
        ("stale", beat("n1", 9, true).to_json(), StatusCode::CONFLICT, "stale or replayed"),
        (
            "another node's id",
            beat("n3", 30, false).to_json(),
            StatusCode::FORBIDDEN,
            r#"the credential is node \"n1\", the heartbeat claims \"n3\""#,
        ),
    ];
    for (what, body, status, msg) in cases {
        let (s, b) = post(&mut n1, body).await;
        let b = String::from_utf8_lossy(&b);
        assert_eq!(s, status, "{what}: {b}");
        assert!(b.contains(msg), "{what}: {b}");
    }
    let mut anon = client(&hub.url, &certs, Credential::None);
    let (s, b) = post(&mut anon, beat("n1", 40, true).to_json()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{}", String::from_utf8_lossy(&b));
    let mut wrong = client(&hub.url, &certs, Credential::Token("tok-wrong-0123456789".into()));
    assert_eq!(post(&mut wrong, beat("n1", 41, true).to_json()).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(post(&mut reader, beat("n1", 42, true).to_json()).await.0, StatusCode::FORBIDDEN);
    let mut n2 = client(&hub.url, &certs, Credential::Token(NODE_TOKEN.into()));
    assert_eq!(post(&mut n2, beat("n1", 43, true).to_json()).await.0, StatusCode::FORBIDDEN);

    // Nothing changed: same node document (but for time), no other node.
    let after = get_json(&mut reader, "/v1/nodes/n1").await;
    assert_eq!(after["node"], before["node"]);
    let all = get_json(&mut reader, "/v1/nodes").await;
    assert_eq!(all["nodes"].as_array().unwrap().len(), 1, "{all}");
    // Reading without a credential is refused off loopback; a node may read.
    assert_eq!(
        anon.request(Method::GET, "/v1/nodes", vec![]).await.unwrap().0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        wrong.request(Method::GET, "/metrics", vec![]).await.unwrap().0,
        StatusCode::UNAUTHORIZED
    );
    assert!(n1.request(Method::GET, "/v1/nodes", vec![]).await.unwrap().0.is_success());
    let (_, m) = reader.request(Method::GET, "/metrics", vec![]).await.unwrap();
    let m = String::from_utf8_lossy(&m).to_string();
    for line in [
        "capstan_hub_heartbeats_total 1",
        "capstan_hub_rejects_total{reason=\"malformed\"} 1",
        "capstan_hub_rejects_total{reason=\"too_large\"} 1",
        "capstan_hub_rejects_total{reason=\"unknown_version\"} 1",
        "capstan_hub_rejects_total{reason=\"replay\"} 2",
        "capstan_hub_rejects_total{reason=\"wrong_identity\"} 3",
        "capstan_hub_rejects_total{reason=\"unauthenticated\"} 2",
        "capstan_hub_rejects_total{reason=\"bad_credential\"} 2",
        "capstan_hub_nodes{state=\"healthy\"} 1",
    ] {
        assert!(m.contains(line), "{line} missing in\n{m}");
    }
    // The token identifies its node.
    assert_eq!(post(&mut n2, beat("n2", 1, false).to_json()).await.0, StatusCode::NO_CONTENT);
    assert_eq!(state(&mut reader, "n2").await.as_deref(), Some("degraded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_sender_reaches_the_hub_with_a_certificate_or_a_token_and_backs_off_while_it_is_away(
) {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let (cert, key) = capstan_hub::certs::node(&certs, "agent-1").unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("agent-2 {NODE_TOKEN}\n")).unwrap();
    let db = format!("sqlite:{}", dir.path().join("hub.db").display());
    let mut hub = HubProc::start(
        &certs,
        &db,
        &["--interval", "200ms", "--token-file", tokens.to_str().unwrap()],
    );
    let settings = |token: Option<&str>| HeartbeatSettings {
        url: hub.url.clone(),
        interval: Duration::from_millis(100),
        ca: capstan_agent::tls::read_certs(&certs.join("ca.pem")).unwrap(),
        credential: match token {
            None => Credential::from_files(&cert, &key).unwrap(),
            Some(t) => Credential::Token(t.to_owned()),
        },
    };
    let facts = |id: &'static str| {
        move || {
            let mut hb = capstan_agent::heartbeat::Heartbeat::new(
                id.parse().unwrap(),
                "agent".parse().unwrap(),
                "lb",
            );
            hb.host = capstan_agent::heartbeat::facts::host_facts();
            hb.boot_id = capstan_agent::heartbeat::facts::boot_id();
            hb
        }
    };
    let s1 = sender::spawn(settings(None), facts("agent-1")).unwrap();
    let s2 = sender::spawn(settings(Some(NODE_TOKEN)), facts("agent-2")).unwrap();
    let mut reader = node_client(&hub.url, &certs, "reader");
    for id in ["agent-1", "agent-2"] {
        wait_until!(
            Duration::from_secs(5),
            id,
            state(&mut reader, id).await.as_deref() == Some("healthy")
        );
    }
    let node = get_json(&mut reader, "/v1/nodes/agent-1").await;
    assert!(node["node"]["host"]["mem_total"].as_u64().unwrap() > 0, "{node}");
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(s1.stats.refused.load(Relaxed), 0);
    // The hub goes away: the sender fails and keeps trying, without blocking anyone.
    hub.kill();
    let accepted = s1.stats.accepted.load(Relaxed);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let failed = s1.stats.failed.load(Relaxed);
    assert!(failed >= 2, "failed {failed}");
    assert_eq!(s1.stats.accepted.load(Relaxed), accepted);
    s1.stop();
    s2.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_heartbeat_is_snapshotted_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let path = dir.path().join("hub.db");
    let hub = HubProc::start(&certs, &format!("sqlite:{}", path.display()), &[]);
    let mut c = node_client(&hub.url, &certs, "snap");
    for seq in 1..=3 {
        assert_eq!(post(&mut c, beat("snap", seq, true).to_json()).await.0, StatusCode::NO_CONTENT);
    }
    let stored_seq = || {
        let mut s = capstan_hub::store::Sqlite::open(&path).unwrap();
        s.load(Duration::from_secs(1)).unwrap().nodes.iter().find(|n| n.id == "snap").map(|n| n.seq)
    };
    // The registration is durable at once; the later beats are a snapshot, at most 1 s behind.
    assert!(stored_seq().is_some());
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(stored_seq(), Some(3));
}
