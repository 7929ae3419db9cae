//! `capstan-hub simulate`: many nodes speaking the real wire format over TLS, each with its own
//! client certificate minted from the CA in `--certs` and its own kept-alive connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_agent::heartbeat::client::{Client, Credential};
use capstan_agent::heartbeat::sender::unix_ms;
use capstan_agent::heartbeat::wire::{Check, Heartbeat, HostFacts};
use hyper::Method;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

use crate::certs::{Authority, CertError};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The hub, `https://HOST:PORT`.
    pub hub: String,
    /// The directory of `capstan-hub certs init` (its CA signs the nodes' certificates).
    pub certs: PathBuf,
    /// How many nodes.
    pub nodes: usize,
    /// The mean interval.
    pub interval: Duration,
    /// How long.
    pub duration: Duration,
    /// Nodes that fall silent halfway.
    pub kill: usize,
    /// The longest gap between two sends, in intervals (gaps are uniform in
    /// [2 − max, max] intervals, so the mean stays one interval); 1 means exactly one.
    pub gap_max: f64,
    /// The fraction of heartbeats dropped (built and counted, not sent).
    pub drop: f64,
    /// Node ids are `PREFIX-N`.
    pub prefix: String,
    /// The role they report.
    pub role: String,
    /// Send without waiting (a closed loop per connection), for benches.
    pub flood: bool,
}

/// One simulated node's record.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// Its id.
    pub id: String,
    /// Accepted heartbeats.
    pub accepted: u64,
    /// The longest silence the hub can have seen between two accepted heartbeats, ms: from
    /// sending the earlier one to the acknowledgement of the later one (the hub took each beat
    /// somewhere between its send and its acknowledgement, so its own gap is never longer).
    pub max_gap_ms: u64,
    /// Whether it fell silent halfway.
    pub killed: bool,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// Heartbeats sent.
    pub sent: u64,
    /// Accepted (2xx).
    pub accepted: u64,
    /// Refused (4xx/5xx).
    pub refused: u64,
    /// Transport failures.
    pub failed: u64,
    /// Dropped on purpose.
    pub dropped: u64,
    /// Accepted per second over the run.
    pub per_second: f64,
    /// Request latency, µs.
    pub p50_us: u64,
    /// Request latency, µs.
    pub p99_us: u64,
    /// Per node.
    pub nodes: Vec<NodeReport>,
}

/// Simulation failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// Minting certificates.
    #[error("minting node certificates")]
    Certs(#[from] CertError),
    /// rcgen's key PEM did not parse (a bug).
    #[error("a minted node key does not parse")]
    Key,
    /// The hub URL or the CA.
    #[error("client")]
    Client(#[from] capstan_agent::heartbeat::client::ClientError),
}

fn certs_der(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes()).filter_map(Result::ok).collect()
}

fn key_der(pem: &str) -> Option<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut pem.as_bytes()).ok().flatten()
}

struct Tally {
    node: NodeReport,
    sent: u64,
    refused: u64,
    failed: u64,
    dropped: u64,
    latencies: Vec<u32>,
}

/// Runs the simulation to its end.
pub async fn run(opts: SimOptions) -> Result<SimReport, SimError> {
    let ca = Authority::load(&opts.certs)?;
    let ca_der = certs_der(&ca.pem);
    let mut tasks = Vec::with_capacity(opts.nodes);
    let opts = Arc::new(opts);
    let start = Instant::now();
    for i in 0..opts.nodes {
        let id = format!("{}-{i}", opts.prefix);
        let (cert, key) = ca.node_cert(&id)?;
        let chain = certs_der(&cert);
        let key = key_der(&key).ok_or(SimError::Key)?;
        let client = Client::new(
            &opts.hub,
            &ca_der,
            Credential::Cert(chain, Arc::new(key)),
            Duration::from_secs(10),
        )?;
        let killed = i < opts.kill;
        tasks.push(tokio::spawn(node(opts.clone(), id, client, killed, start)));
    }
    let mut tallies = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(t) = t.await {
            tallies.push(t);
        }
    }
    let secs = start.elapsed().as_secs_f64().max(1e-3);
    let mut lat: Vec<u32> = tallies.iter().flat_map(|t| t.latencies.iter().copied()).collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as u64
    };
    let accepted: u64 = tallies.iter().map(|t| t.node.accepted).sum();
    Ok(SimReport {
        sent: tallies.iter().map(|t| t.sent).sum(),
        accepted,
        refused: tallies.iter().map(|t| t.refused).sum(),
        failed: tallies.iter().map(|t| t.failed).sum(),
        dropped: tallies.iter().map(|t| t.dropped).sum(),
        per_second: accepted as f64 / secs,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        nodes: tallies.into_iter().map(|t| t.node).collect(),
    })
}

fn message(id: &str, role: &str, seq: u64, started: u64) -> Heartbeat {
    let mut hb = Heartbeat::new(
        id.parse().expect("simulated ids are valid"),
        "sim".parse().expect("valid"),
        role,
    );
    hb.boot_id = format!("boot-{id}");
    hb.seq = seq;
    hb.sent_at = unix_ms();
    hb.uptime_s = (unix_ms() - started) / 1000;
    hb.host =
        HostFacts { load1: 0.1, mem_total: 1 << 30, mem_available: 1 << 29, root_free: 1 << 32 };
    hb.checks = vec![Check { name: "sim".into(), ok: true, detail: "simulated".into() }];
    hb
}

async fn node(
    opts: Arc<SimOptions>,
    id: String,
    mut client: Client,
    killed: bool,
    start: Instant,
) -> Tally {
    let mut t = Tally {
        node: NodeReport { id: id.clone(), accepted: 0, max_gap_ms: 0, killed },
        sent: 0,
        refused: 0,
        failed: 0,
        dropped: 0,
        latencies: Vec::new(),
    };
    let started = unix_ms();
    let mut seq = started;
    // When the last accepted heartbeat was sent.
    let mut last_ok: Option<Instant> = None;
    let end = start + opts.duration;
    let silent_at = start + opts.duration / 2;
    // Spread the first beats over one interval, as a fleet's would be.
    if !opts.flood {
        tokio::time::sleep(opts.interval.mul_f64(fastrand::f64())).await;
    }
    while Instant::now() < end {
        if killed && Instant::now() >= silent_at {
            break;
        }
        seq += 1;
        if fastrand::f64() < opts.drop {
            t.dropped += 1;
        } else {
            let body = message(&id, &opts.role, seq, started).to_json();
            let sent = Instant::now();
            t.sent += 1;
            match client.request(Method::POST, "/v1/heartbeat", body).await {
                Ok((s, _)) if s.is_success() => {
                    let now = Instant::now();
                    t.latencies.push((now - sent).as_micros().min(u32::MAX as u128) as u32);
                    if let Some(l) = last_ok {
                        t.node.max_gap_ms = t.node.max_gap_ms.max((now - l).as_millis() as u64);
                    }
                    last_ok = Some(sent);
                    t.node.accepted += 1;
                }
                Ok(_) => t.refused += 1,
                Err(_) => t.failed += 1,
            }
        }
        if !opts.flood {
            let g = opts.gap_max.max(1.0);
            let factor = (2.0 - g) + (2.0 * g - 2.0) * fastrand::f64();
            tokio::time::sleep(opts.interval.mul_f64(factor)).await;
        }
    }
    t
}
