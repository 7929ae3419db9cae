//! The hub's core: heartbeats in, deadlines, remediation, and the views the HTTP layer serves.
//! Memory holds the truth for reads; the database holds it across restarts ([`crate::store`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use capstan_agent::heartbeat::wire::Heartbeat;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use tokio::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::remedy::{decide, Decision, Rate, RemedyConfig};
use crate::store::{now_ms, Loaded, Op, Store, StoreError};
use crate::tracker::node::{Node, Policy, State, Transition};
use crate::tracker::{Refused, Registry};

/// Why an authenticated, well-formed heartbeat was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// Stale or replayed.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The state change could not be made durable (nothing was acknowledged).
    #[error("storing the state change")]
    Store(#[source] StoreError),
}

/// An alert for a person, as served.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Alert {
    /// When (Unix ms).
    pub at_ms: u64,
    /// The group or node.
    pub subject: String,
    /// What happened.
    pub message: String,
}

/// One running hub.
#[derive(Debug)]
pub struct Hub {
    reg: Mutex<Registry>,
    store: Store,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    remedy: RemedyConfig,
    in_flight: Semaphore,
    rate: Mutex<Rate>,
    recent: Mutex<HashMap<String, Vec<u64>>>,
    alerts: Mutex<Vec<Alert>>,
    wake: Notify,
    leader: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn event(t: &Transition, at_ms: u64) -> Op {
    Op::Event {
        node: t.node.clone(),
        at_ms,
        from: t.from.map(State::as_str).unwrap_or("").to_owned(),
        to: t.to.as_str().to_owned(),
        reason: t.reason.clone(),
    }
}

impl Hub {
    /// A hub over `store` with what was `loaded` from it. Remediations the last run left
    /// without an outcome are reported as "outcome unknown" on their nodes and never retried.
    pub fn new(
        policy: Policy,
        remedy: RemedyConfig,
        store: Store,
        loaded: Loaded,
        leader: bool,
    ) -> Arc<Hub> {
        // Episodes opened but never acted on (the hub stopped between verdict and intent): they
        // are considered again once a full unhealthy period has passed since this start.
        let unacted: Vec<(String, String)> = loaded
            .nodes
            .iter()
            .filter(|n| n.state == State::Unhealthy)
            .filter_map(|n| {
                n.episode.clone().filter(|e| !loaded.acted.contains(e)).map(|e| (n.id.clone(), e))
            })
            .collect();
        let hub = Arc::new(Hub {
            reg: Mutex::new(Registry::new(policy, loaded.nodes, Instant::now())),
            store,
            metrics: Metrics::default(),
            in_flight: Semaphore::new(remedy.max_in_flight.max(1)),
            remedy,
            rate: Mutex::new(Rate::default()),
            recent: Mutex::new(loaded.recent),
            alerts: Mutex::new(Vec::new()),
            wake: Notify::new(),
            leader: AtomicBool::new(leader),
        });
        hub.adopt_unknown(loaded.unknown);
        if !unacted.is_empty() {
            let h = hub.clone();
            tokio::spawn(async move {
                tokio::time::sleep(policy.unhealthy_silence()).await;
                for (id, episode) in unacted {
                    if h.is_leader() {
                        tokio::spawn(h.clone().consider(id, episode));
                    }
                }
            });
        }
        hub
    }

    /// Reports remediations whose outcome is unknown (settled as such in the database) on
    /// their nodes and as alerts. Their episodes stay open: they are never retried.
    pub fn adopt_unknown(&self, unknown: Vec<crate::store::Remediation>) {
        for r in unknown {
            self.metrics.remediation(&r.action, "unknown");
            let message = format!("remediation {} (episode {}): {}", r.action, r.episode, r.detail);
            lock(&self.alerts).push(Alert { at_ms: now_ms(), subject: r.node.clone(), message });
            let mut reg = lock(&self.reg);
            if let Some(n) = reg.get_mut(&r.node) {
                n.last_result = format!("unknown (episode {}): {}", r.episode, r.detail);
                n.remediations += 1;
                n.touch(now_ms());
                self.store.submit(Op::Node(Box::new(n.clone())));
            }
        }
    }

    /// The judging rules.
    pub fn policy(&self) -> Policy {
        lock(&self.reg).policy
    }

    /// Whether this replica runs deadlines and remediation.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// Takes or gives up leadership; a new leader restarts every deadline from now.
    pub fn set_leader(&self, on: bool) {
        if on && !self.leader.swap(true, Ordering::SeqCst) {
            lock(&self.reg).restart_deadlines(Instant::now());
            self.wake.notify_one();
        } else if !on {
            self.leader.store(false, Ordering::SeqCst);
        }
    }

    /// Takes a heartbeat from its authenticated sender. A state change is durable before this
    /// returns; a plain heartbeat is snapshotted within a second.
    pub async fn ingest(&self, hb: &Heartbeat, addr: &str) -> Result<(), IngestError> {
        let (now, ms) = (Instant::now(), now_ms());
        let (pending, wake) = {
            let mut reg = lock(&self.reg);
            let acc = reg.beat(hb, addr, now, ms)?;
            let pending = match acc.transition {
                Some(t) => {
                    log_transition(&t);
                    Some(self.store.enqueue(vec![Op::Node(Box::new(acc.snapshot)), event(&t, ms)]))
                }
                None => {
                    self.store.submit(Op::Node(Box::new(acc.snapshot)));
                    None
                }
            };
            (pending, acc.wake)
        };
        self.metrics.heartbeats.fetch_add(1, Ordering::Relaxed);
        if wake {
            self.wake.notify_one();
        }
        match pending {
            Some(p) => p.wait().await.map_err(IngestError::Store),
            None => Ok(()),
        }
    }

    /// The deadline task: sleeps until the earliest deadline (or a new node), judges what is
    /// due, stores the changes, and starts remediation. When it wakes more than an interval
    /// late (the hub stalled), every deadline restarts from then instead.
    pub async fn run_deadlines(self: Arc<Self>) {
        loop {
            if !self.is_leader() {
                // A follower keeps no deadlines; set_leader wakes it.
                let _ =
                    tokio::time::timeout(Duration::from_millis(250), self.wake.notified()).await;
                continue;
            }
            let next = lock(&self.reg).next_wake();
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = tokio::time::sleep_until(next.unwrap_or(far)) => {}
                _ = self.wake.notified() => {}
            }
            let now = Instant::now();
            let interval = self.policy().interval;
            let (changes, pending) = {
                let mut reg = lock(&self.reg);
                if next.is_some_and(|p| now > p + interval) {
                    tracing::warn!(
                        late_ms = (now - next.unwrap_or(now)).as_millis() as u64,
                        "the hub stalled: every deadline restarts now"
                    );
                    reg.restart_deadlines(now);
                }
                let ms = now_ms();
                let ts = reg.fire(now, ms);
                if ts.is_empty() {
                    continue;
                }
                let mut ops = Vec::with_capacity(ts.len() * 2);
                for t in &ts {
                    log_transition(t);
                    if let Some(n) = reg.get(&t.node) {
                        ops.push(Op::Node(Box::new(n.clone())));
                    }
                    ops.push(event(t, ms));
                }
                (ts, self.store.enqueue(ops))
            };
            if let Err(e) = pending.wait().await {
                tracing::error!(error = %capstan_agent::error::chain(&e), "state changes not stored; remediation waits");
                continue;
            }
            for t in changes {
                if let Some(episode) = t.opened {
                    tokio::spawn(self.clone().consider(t.node, episode));
                }
            }
        }
    }

    fn recent_actions(&self, node: &str) -> usize {
        let since = now_ms().saturating_sub(self.remedy.window.as_millis() as u64);
        let mut r = lock(&self.recent);
        let v = r.entry(node.to_owned()).or_default();
        v.retain(|t| *t >= since);
        v.len()
    }

    /// Changes node `id` and queues its document with `ops`, under the registry lock (so the
    /// database sees changes in memory's order); the caller waits on the result.
    fn update(
        &self,
        id: &str,
        f: impl FnOnce(&mut Node),
        mut ops: Vec<Op>,
    ) -> crate::store::Pending {
        let mut reg = lock(&self.reg);
        if let Some(n) = reg.get_mut(id) {
            f(n);
            n.touch(now_ms());
            ops.push(Op::Node(Box::new(n.clone())));
        }
        if reg.reschedule(id, Instant::now()) {
            // An earlier deadline (a grace period's end) than the task sleeps for.
            self.wake.notify_one();
        }
        self.store.enqueue(ops)
    }

    async fn alert(&self, subject: &str, message: String, node: &str, f: impl FnOnce(&mut Node)) {
        tracing::error!(%subject, %message, "alert");
        let at_ms = now_ms();
        lock(&self.alerts).push(Alert { at_ms, subject: subject.into(), message: message.clone() });
        let op = Op::Alert { at_ms, subject: subject.into(), message };
        if let Err(e) = self.update(node, f, vec![op]).wait().await {
            tracing::error!(error = %capstan_agent::error::chain(&e), "alert not stored");
        }
    }

    /// Decides about a node that opened `episode`, and acts at most once for it.
    async fn consider(self: Arc<Self>, id: String, episode: String) {
        let (decision, role) = {
            let reg = lock(&self.reg);
            let Some(n) = reg.get(&id) else { return };
            if n.state != State::Unhealthy || n.episode.as_deref() != Some(&episode) {
                return;
            }
            if n.last_seen.elapsed() < reg.policy.unhealthy_silence() {
                return; // beating again (recovering): nothing to remediate
            }
            let (silent, total) = reg.group_silence(&n.role);
            (decide(&self.remedy, silent, total, self.recent_actions(&id)), n.role.clone())
        };
        match decision {
            Decision::Act => self.act(id, episode).await,
            Decision::ReportOnly => {
                drop(self.update(
                    &id,
                    |n| n.last_result = "report only (--remediate none)".into(),
                    Vec::new(),
                ));
            }
            Decision::MassSilence { silent, total } => {
                self.metrics.alerts.fetch_add(1, Ordering::Relaxed);
                let msg = format!("{silent} of {total} {role} nodes silent at once: the hub or its network is the likely fault; not remediating");
                let note = format!("not remediated: {silent} of {total} {role} nodes silent");
                self.alert(&role, msg, &id, |n| n.last_result = note).await;
            }
            Decision::TooMany { count } => {
                let msg = format!(
                    "{count} remediations within {} s: needs a person",
                    self.remedy.window.as_secs()
                );
                let flag = msg.clone();
                self.alert(&id, msg, &id, |n| n.flagged = flag).await;
            }
        }
    }

    async fn act(self: Arc<Self>, id: String, episode: String) {
        let Ok(permit) = self.in_flight.acquire().await else { return };
        loop {
            let wait = lock(&self.rate).wait(self.remedy.per_minute, Instant::now());
            match wait {
                None => break,
                Some(d) => tokio::time::sleep(d).await,
            }
        }
        let node = {
            let reg = lock(&self.reg);
            match reg.get(&id) {
                Some(n)
                    if n.state == State::Unhealthy && n.episode.as_deref() == Some(&episode) =>
                {
                    n.clone()
                }
                _ => return, // recovered while waiting for a slot
            }
        };
        lock(&self.rate).start(Instant::now());
        let action = self.remedy.action.name();
        let started = now_ms();
        lock(&self.recent).entry(id.clone()).or_default().push(started);
        let intent = Op::Intent {
            episode: episode.clone(),
            node: id.clone(),
            action: action.into(),
            at_ms: started,
        };
        if let Err(e) = self.store.commit(vec![intent]).await {
            // No durable intent, no action: the next hub would not know it ran.
            tracing::error!(error = %capstan_agent::error::chain(&e), node = %id, "remediation intent not stored; not acting");
            return;
        }
        tracing::warn!(node = %id, %episode, action, "remediating");
        let (outcome, detail) =
            match self.remedy.action.run(&node, &episode, self.remedy.timeout).await {
                Ok(d) => ("ok", d),
                Err(d) => ("failed", d),
            };
        self.metrics.remediation(action, outcome);
        let grace = Instant::now() + self.remedy.grace;
        let result = format!("{action} {outcome}: {detail}");
        let op = Op::Outcome {
            episode: episode.clone(),
            at_ms: now_ms(),
            outcome: outcome.into(),
            detail,
        };
        let set = |n: &mut Node| {
            n.remediations += 1;
            n.last_result = result;
            n.grace_until = Some(grace);
        };
        if let Err(e) = self.update(&id, set, vec![op]).wait().await {
            tracing::error!(error = %capstan_agent::error::chain(&e), node = %id, "remediation outcome not stored");
        }
        drop(permit);
        tokio::time::sleep(self.remedy.grace).await;
        let still = lock(&self.reg)
            .get(&id)
            .is_some_and(|n| n.state == State::Unhealthy && n.episode.as_deref() == Some(&episode));
        if still {
            let msg = format!(
                "still unhealthy {} s after remediation (episode {episode}): needs a person",
                self.remedy.grace.as_secs()
            );
            let flag = msg.clone();
            self.alert(&id, msg, &id, |n| n.flagged = flag).await;
        }
    }

    /// `GET /v1/nodes`.
    pub fn nodes_json(&self) -> serde_json::Value {
        let reg = lock(&self.reg);
        let mut nodes: Vec<&Node> = reg.nodes().collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let alerts = lock(&self.alerts);
        let recent = &alerts[alerts.len().saturating_sub(20)..];
        json!({ "now_ms": now_ms(), "leader": self.is_leader(), "nodes": nodes, "alerts": recent })
    }

    /// `GET /v1/nodes/{id}`.
    pub fn node_json(&self, id: &str) -> Option<serde_json::Value> {
        lock(&self.reg).get(id).map(|n| json!({ "now_ms": now_ms(), "node": n }))
    }

    /// `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        let counts = lock(&self.reg).counts();
        self.metrics.render(&counts, self.is_leader())
    }

    /// A node's state (tests and benches).
    pub fn state_of(&self, id: &str) -> Option<State> {
        lock(&self.reg).get(id).map(|n| n.state)
    }

    /// Applies nodes other replicas wrote (PostgreSQL): newer heartbeats and newer states win.
    pub fn merge(&self, others: Vec<Node>) {
        let now = Instant::now();
        let now_ms = now_ms();
        let mut reg = lock(&self.reg);
        for o in others {
            reg.merge(o, now, now_ms);
        }
        drop(reg);
        self.wake.notify_one();
    }
}

fn log_transition(t: &Transition) {
    let from = t.from.map(State::as_str).unwrap_or("new");
    match t.to {
        State::Unhealthy => {
            tracing::warn!(node = %t.node, from, to = t.to.as_str(), reason = %t.reason, "state")
        }
        _ => tracing::info!(node = %t.node, from, to = t.to.as_str(), reason = %t.reason, "state"),
    }
}
