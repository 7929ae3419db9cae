//! Counters for `GET /metrics` (Prometheus text format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::tracker::node::State;

/// Why a request was refused (a label of `capstan_hub_rejects_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// No credential.
    Unauthenticated,
    /// A credential that is not valid.
    BadCredential,
    /// The message names another node than the credential.
    WrongIdentity,
    /// Not a heartbeat.
    Malformed,
    /// Too large.
    TooLarge,
    /// A version this hub does not speak.
    UnknownVersion,
    /// Stale or replayed seq.
    Replay,
}

impl Reject {
    const ALL: [Reject; 7] = [
        Reject::Unauthenticated,
        Reject::BadCredential,
        Reject::WrongIdentity,
        Reject::Malformed,
        Reject::TooLarge,
        Reject::UnknownVersion,
        Reject::Replay,
    ];
    fn label(self) -> &'static str {
        match self {
            Reject::Unauthenticated => "unauthenticated",
            Reject::BadCredential => "bad_credential",
            Reject::WrongIdentity => "wrong_identity",
            Reject::Malformed => "malformed",
            Reject::TooLarge => "too_large",
            Reject::UnknownVersion => "unknown_version",
            Reject::Replay => "replay",
        }
    }
}

/// Ingest latency buckets, seconds.
const BUCKETS: [f64; 10] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0];

/// Every counter the hub exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Accepted heartbeats.
    pub heartbeats: AtomicU64,
    rejects: [AtomicU64; 7],
    latency: [AtomicU64; 11],
    latency_sum_us: AtomicU64,
    /// Mass-silence alerts raised.
    pub alerts: AtomicU64,
    remediations: Mutex<BTreeMap<(String, String), u64>>,
}

impl Metrics {
    /// Counts a refused request.
    pub fn reject(&self, r: Reject) {
        self.rejects[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Refused requests so far for `r`.
    pub fn rejects(&self, r: Reject) -> u64 {
        self.rejects[r as usize].load(Ordering::Relaxed)
    }

    /// Records one ingest's latency.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS.iter().position(|b| s <= *b).unwrap_or(BUCKETS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts a finished remediation.
    pub fn remediation(&self, action: &str, result: &str) {
        let mut m = self.remediations.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((action.to_owned(), result.to_owned())).or_default() += 1;
    }

    /// The Prometheus text, with the node counts given.
    pub fn render(&self, states: &[(State, usize)], leader: bool) -> String {
        let mut s = String::new();
        let _ =
            writeln!(s, "# HELP capstan_hub_nodes Nodes by state.\n# TYPE capstan_hub_nodes gauge");
        for (st, n) in states {
            let _ = writeln!(s, "capstan_hub_nodes{{state=\"{}\"}} {n}", st.as_str());
        }
        let _ = writeln!(s, "# HELP capstan_hub_heartbeats_total Accepted heartbeats.\n# TYPE capstan_hub_heartbeats_total counter");
        let _ =
            writeln!(s, "capstan_hub_heartbeats_total {}", self.heartbeats.load(Ordering::Relaxed));
        let _ = writeln!(s, "# HELP capstan_hub_rejects_total Refused requests by reason.\n# TYPE capstan_hub_rejects_total counter");
        for r in Reject::ALL {
            let _ = writeln!(
                s,
                "capstan_hub_rejects_total{{reason=\"{}\"}} {}",
                r.label(),
                self.rejects(r)
            );
        }
        let _ = writeln!(s, "# HELP capstan_hub_remediations_total Remediations by action and result.\n# TYPE capstan_hub_remediations_total counter");
        for ((a, r), n) in self.remediations.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ =
                writeln!(s, "capstan_hub_remediations_total{{action=\"{a}\",result=\"{r}\"}} {n}");
        }
        let _ = writeln!(s, "# HELP capstan_hub_alerts_total Mass-silence alerts.\n# TYPE capstan_hub_alerts_total counter");
        let _ = writeln!(s, "capstan_hub_alerts_total {}", self.alerts.load(Ordering::Relaxed));
        let _ = writeln!(s, "# HELP capstan_hub_leader Whether this replica runs deadlines and remediation.\n# TYPE capstan_hub_leader gauge");
        let _ = writeln!(s, "capstan_hub_leader {}", u8::from(leader));
        let _ = writeln!(s, "# HELP capstan_hub_ingest_seconds Heartbeat ingest latency.\n# TYPE capstan_hub_ingest_seconds histogram");
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.latency[i].load(Ordering::Relaxed);
            let _ = writeln!(s, "capstan_hub_ingest_seconds_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.latency[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(s, "capstan_hub_ingest_seconds_bucket{{le=\"+Inf\"}} {cum}");
        let sum = self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            s,
            "capstan_hub_ingest_seconds_sum {sum}\ncapstan_hub_ingest_seconds_count {cum}"
        );
        s
    }
}
