//! `kill -9` of the hub, 20 times at random moments, during load and during remediations: no
//! acknowledged node is lost, every node's stored state changes form one unbroken chain ending
//! in its stored state, no episode is remediated twice, and a crash between intent and outcome
//! is recorded as "outcome unknown" and not retried.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_hub::store::Sqlite;
use common::*;

const LIVE: usize = 6;
const ROUNDS: usize = 20;

/// A node beating every 100 ms against whatever hub URL is current; records acknowledgements.
fn live_node(
    id: String,
    certs: std::path::PathBuf,
    url: Arc<Mutex<String>>,
    acked: Arc<Mutex<HashSet<String>>>,
    stop: Arc<AtomicBool>,
    seq: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut current = String::new();
        let mut c = None;
        while !stop.load(Ordering::Relaxed) {
            let u = url.lock().unwrap().clone();
            if u != current {
                c = Some(node_client(&u, &certs, &id));
                current = u;
            }
            let n = seq.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(c) = c.as_mut() {
                if let Ok((s, _)) = c
                    .request(hyper::Method::POST, "/v1/heartbeat", beat(&id, n, true).to_json())
                    .await
                {
                    if s.is_success() {
                        acked.lock().unwrap().insert(id.clone());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_random_moments_loses_nothing_and_never_remediates_twice() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let path = dir.path().join("hub.db");
    let db = format!("sqlite:{}", path.display());
    let log = dir.path().join("episodes");
    // The action takes 300 ms: a kill often lands between intent and outcome.
    let exec = format!("exec:echo $CAPSTAN_EPISODE >> {}; sleep 0.3", log.display());
    let args = [
        "--interval",
        "200ms",
        "--remediate",
        exec.as_str(),
        "--grace",
        "200ms",
        "--per-minute",
        "1000",
        "--max-actions",
        "1000",
    ];
    let url = Arc::new(Mutex::new(String::new()));
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut hub = HubProc::start(&certs, &db, &args);
    *url.lock().unwrap() = hub.url.clone();
    let tasks: Vec<_> = (0..LIVE)
        .map(|i| {
            live_node(
                format!("live-{i}"),
                certs.clone(),
                url.clone(),
                acked.clone(),
                stop.clone(),
                Arc::new(AtomicU64::new(0)),
            )
        })
        .collect();
    let mut kills_during_action = 0;
    for round in 0..ROUNDS {
        // A node that beats three times and dies: unhealthy after 1.2 s, then remediated.
        let id = format!("dead-{round}");
        let mut c = node_client(&hub.url, &certs, &id);
        for seq in 1..=3 {
            // A role of its own: the mass-silence rule must not hold its remediation back.
            let mut hb = beat(&id, seq, true);
            hb.role.clone_from(&id);
            let (s, _) =
                c.request(hyper::Method::POST, "/v1/heartbeat", hb.to_json()).await.unwrap();
            assert!(s.is_success());
            acked.lock().unwrap().insert(id.clone());
        }
        if round % 4 == 0 {
            // Deliberately inside an action: wait for this episode's line, then kill.
            let before = std::fs::read_to_string(&log).unwrap_or_default().lines().count();
            wait_until!(
                Duration::from_secs(5),
                "the action to start",
                std::fs::read_to_string(&log).unwrap_or_default().lines().count() > before
            );
            kills_during_action += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(100..2000))).await;
        }
        hub.kill();
        hub = HubProc::start(&certs, &db, &args);
        *url.lock().unwrap() = hub.url.clone();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    hub.kill();

    let mut s = Sqlite::open(&path).unwrap();
    let events = s.events().unwrap();
    let rems = s.remediations().unwrap();
    let loaded = s.load(Duration::from_secs(3600)).unwrap();
    let stored: HashMap<String, String> =
        loaded.nodes.iter().map(|n| (n.id.clone(), n.state.as_str().to_owned())).collect();
    for id in acked.lock().unwrap().iter() {
        assert!(stored.contains_key(id), "acknowledged node {id} lost");
    }
    let mut chains: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for (n, from, to) in &events {
        chains.entry(n).or_default().push((from, to));
    }
    for (node, chain) in &chains {
        assert_eq!(chain[0].0, "", "{node}: first change is not its registration: {chain:?}");
        for w in chain.windows(2) {
            assert_eq!(w[0].1, w[1].0, "{node}: a state change is missing: {chain:?}");
        }
        assert_eq!(
            Some(&chain.last().unwrap().1.to_string()),
            stored.get(*node),
            "{node}: stored state differs from its last change"
        );
    }
    let lines = std::fs::read_to_string(&log).unwrap();
    let mut seen = HashSet::new();
    for e in lines.lines() {
        assert!(seen.insert(e), "episode {e} remediated twice");
    }
    let by_episode: HashMap<&str, &str> =
        rems.iter().map(|r| (r.episode.as_str(), r.outcome.as_str())).collect();
    for e in &seen {
        assert!(by_episode.contains_key(e), "episode {e} acted without a stored intent");
    }
    let unknown: Vec<_> = rems.iter().filter(|r| r.outcome == "unknown").collect();
    assert!(
        unknown.len() >= kills_during_action,
        "{kills_during_action} kills inside actions, {} unknown: {rems:?}",
        unknown.len()
    );
    assert!(unknown.iter().all(|r| r.detail.contains("outcome unknown")));
    assert!(
        rems.iter().all(|r| !r.outcome.is_empty()),
        "an intent without outcome after load: {rems:?}"
    );
    eprintln!(
        "{} events, {} remediations ({} unknown), {} nodes",
        events.len(),
        rems.len(),
        unknown.len(),
        stored.len()
    );
}
