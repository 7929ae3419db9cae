//! One node's health: the state machine, pure (time is passed in).
//!
//! ```text
//! healthy ──(silent 2 intervals)──▶ suspect ──(silent unhealthy-after intervals)──▶ unhealthy
//!    ▲  ▲                              │ beat                                          │
//!    │  └──────────────────────────────┘ (back to what it was)                        │
//!    └──────────── 3 consecutive good beats ◀── degraded (a role check fails) ◀───────┘
//! ```

use capstan_agent::heartbeat::wire::{Check, Heartbeat, HostFacts};
use serde::{Deserialize, Serialize};
use tokio::time::{Duration, Instant};

/// A node's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Beating, every check passing.
    Healthy,
    /// Beating, a role check failing.
    Degraded,
    /// Late: no heartbeat for 2 intervals.
    Suspect,
    /// Silent for `unhealthy-after` intervals (or recovering from that).
    Unhealthy,
}

impl State {
    /// Every state, for metrics.
    pub const ALL: [State; 4] = [State::Healthy, State::Degraded, State::Suspect, State::Unhealthy];

    /// The name used in JSON, metrics and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Degraded => "degraded",
            State::Suspect => "suspect",
            State::Unhealthy => "unhealthy",
        }
    }

    /// The inverse of [`State::as_str`].
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Silent states (what the mass-silence rule counts).
    pub fn is_silent(self) -> bool {
        matches!(self, State::Suspect | State::Unhealthy)
    }
}

/// The judging rules.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The expected heartbeat interval.
    pub interval: Duration,
    /// Intervals of silence before suspect.
    pub suspect_after: u32,
    /// Intervals of silence before unhealthy.
    pub unhealthy_after: u32,
    /// Consecutive good beats to be healthy again after degraded or unhealthy.
    pub recover_after: u32,
}

impl Policy {
    /// The silence that makes a node suspect.
    pub fn suspect_silence(&self) -> Duration {
        self.interval * self.suspect_after
    }
    /// The silence that makes a node unhealthy.
    pub fn unhealthy_silence(&self) -> Duration {
        self.interval * self.unhealthy_after
    }
}

/// Everything the hub knows about a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    /// The instance-id.
    pub id: String,
    /// From the last heartbeat.
    pub hostname: String,
    /// The role (the group for the mass-silence rule).
    pub role: String,
    /// The boot id of the last heartbeat.
    pub boot_id: String,
    /// The agent version of the last heartbeat.
    pub agent_version: String,
    /// The VM's BIOS UUID, as reported.
    #[serde(default)]
    pub bios_uuid: String,
    /// The peer address of the last heartbeat.
    pub addr: String,
    /// The current state.
    pub state: State,
    /// Why, in words.
    pub reason: String,
    /// Since when (Unix ms).
    pub since_ms: u64,
    /// The last accepted heartbeat (Unix ms, hub clock).
    pub last_seen_ms: u64,
    /// The last accepted sequence number.
    pub seq: u64,
    /// Consecutive good beats (for recovery).
    pub good_streak: u32,
    /// The last checks.
    pub checks: Vec<Check>,
    /// The last host facts.
    pub host: HostFacts,
    /// Seconds of uptime in the last heartbeat.
    pub uptime_s: u64,
    /// The open episode (set when the node became unhealthy, cleared when healthy again).
    pub episode: Option<String>,
    /// Remediations run for this node, ever.
    pub remediations: u64,
    /// The last remediation's result.
    pub last_result: String,
    /// Set when a person must look (too many actions, action did not help).
    pub flagged: String,
    /// When the state fields ([`STATE_FIELDS`]) last changed (Unix ms, strictly increasing
    /// per node): of two replicas' views, the one with the later stamp has the newer state.
    /// Not `since_ms`, which a remediation's record or a flag leaves as it was.
    #[serde(default)]
    pub changed_ms: u64,
    /// The state before it became suspect (to return to on a beat).
    #[serde(skip)]
    pub before_suspect: Option<State>,
    /// The last heartbeat, hub monotonic clock; reset to the hub's start after a restart.
    #[serde(skip, default = "Instant::now")]
    pub last_seen: Instant,
    /// Not judged before this (a grace period after a remediation).
    #[serde(skip)]
    pub grace_until: Option<Instant>,
}

/// The fields a heartbeat sets (newer `seq` wins when two replicas' views meet).
pub const HEARTBEAT_FIELDS: [&str; 11] = [
    "hostname",
    "role",
    "boot_id",
    "agent_version",
    "bios_uuid",
    "addr",
    "last_seen_ms",
    "seq",
    "checks",
    "host",
    "uptime_s",
];

/// The fields judging and remediation set (newer `changed_ms` wins).
pub const STATE_FIELDS: [&str; 8] = [
    "state",
    "reason",
    "since_ms",
    "episode",
    "remediations",
    "last_result",
    "flagged",
    "changed_ms",
];

/// A state change, for the database and the remediation engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The node.
    pub node: String,
    /// The state before (`None` for a new node).
    pub from: Option<State>,
    /// The state after.
    pub to: State,
    /// Why.
    pub reason: String,
    /// A new episode opened by this change.
    pub opened: Option<String>,
    /// The episode closed by this change.
    pub closed: Option<String>,
}

fn failing(checks: &[Check]) -> String {
    let names: Vec<_> =
        checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.detail)).collect();
    format!("check failing: {}", names.join("; "))
}

impl Node {
    /// A node first seen with `hb`.
    pub fn new(hb: &Heartbeat, addr: &str, now: Instant, now_ms: u64) -> (Node, Transition) {
        let (state, reason) = if hb.checks_ok() {
            (State::Healthy, "first heartbeat".to_owned())
        } else {
            (State::Degraded, failing(&hb.checks))
        };
        let mut n = Node {
            id: hb.instance_id.to_string(),
            hostname: String::new(),
            role: String::new(),
            boot_id: String::new(),
            agent_version: String::new(),
            bios_uuid: String::new(),
            addr: String::new(),
            state,
            reason: reason.clone(),
            since_ms: now_ms,
            last_seen_ms: now_ms,
            seq: 0,
            good_streak: 0,
            checks: Vec::new(),
            host: HostFacts::default(),
            uptime_s: 0,
            episode: None,
            remediations: 0,
            last_result: String::new(),
            flagged: String::new(),
            changed_ms: now_ms,
            before_suspect: None,
            last_seen: now,
            grace_until: None,
        };
        n.record(hb, addr, now, now_ms);
        let t = Transition {
            node: n.id.clone(),
            from: None,
            to: state,
            reason,
            opened: None,
            closed: None,
        };
        (n, t)
    }

    /// Marks a change of the state fields at `now_ms` (at least 1 ms after the last one).
    pub fn touch(&mut self, now_ms: u64) {
        self.changed_ms = now_ms.max(self.changed_ms + 1);
    }

    /// Takes another replica's view of this node, field group by field group: the heartbeat
    /// fields ([`HEARTBEAT_FIELDS`]) when its `seq` is higher, the state fields
    /// ([`STATE_FIELDS`]) when its `changed_ms` is later. PostgreSQL's upsert does the same
    /// (store::postgres); returns whether the heartbeat fields were taken.
    pub fn merge_from(&mut self, o: Node) -> bool {
        if o.changed_ms > self.changed_ms {
            self.state = o.state;
            self.reason = o.reason;
            self.since_ms = o.since_ms;
            self.episode = o.episode;
            self.last_result = o.last_result;
            self.flagged = o.flagged;
            self.changed_ms = o.changed_ms;
        }
        // A count only grows: a view that changed later but had not seen the last action
        // does not lower it.
        self.remediations = self.remediations.max(o.remediations);
        if o.seq <= self.seq {
            return false;
        }
        self.hostname = o.hostname;
        self.role = o.role;
        self.boot_id = o.boot_id;
        self.agent_version = o.agent_version;
        self.bios_uuid = o.bios_uuid;
        self.addr = o.addr;
        self.last_seen_ms = o.last_seen_ms;
        self.seq = o.seq;
        self.checks = o.checks;
        self.host = o.host;
        self.uptime_s = o.uptime_s;
        true
    }

    fn record(&mut self, hb: &Heartbeat, addr: &str, now: Instant, now_ms: u64) {
        self.hostname = hb.hostname.to_string();
        self.role.clone_from(&hb.role);
        self.boot_id.clone_from(&hb.boot_id);
        self.agent_version.clone_from(&hb.agent_version);
        self.bios_uuid.clone_from(&hb.bios_uuid);
        addr.clone_into(&mut self.addr);
        self.seq = hb.seq;
        self.checks.clone_from(&hb.checks);
        self.host = hb.host;
        self.uptime_s = hb.uptime_s;
        self.last_seen = now;
        self.last_seen_ms = now_ms;
    }

    fn set(&mut self, to: State, reason: String, now_ms: u64) -> Transition {
        let from = Some(self.state);
        self.state = to;
        self.since_ms = now_ms;
        self.touch(now_ms);
        self.reason.clone_from(&reason);
        let closed = if to == State::Healthy { self.episode.take() } else { None };
        Transition { node: self.id.clone(), from, to, reason, opened: None, closed }
    }

    /// Applies an accepted heartbeat (its seq already checked); returns the change, if any.
    pub fn on_beat(
        &mut self,
        hb: &Heartbeat,
        addr: &str,
        p: &Policy,
        now: Instant,
        now_ms: u64,
    ) -> Option<Transition> {
        self.record(hb, addr, now, now_ms);
        if !hb.checks_ok() {
            self.good_streak = 0;
            self.before_suspect = None;
            let reason = failing(&hb.checks);
            return match self.state {
                // Unhealthy stays until it recovers: a beat with failing checks is not recovery.
                State::Unhealthy => None,
                State::Degraded if self.reason == reason => None,
                _ => Some(self.set(State::Degraded, reason, now_ms)),
            };
        }
        self.good_streak = self.good_streak.saturating_add(1);
        match self.state {
            State::Healthy => None,
            State::Suspect if self.before_suspect == Some(State::Healthy) => {
                self.before_suspect = None;
                Some(self.set(State::Healthy, "heartbeats again".into(), now_ms))
            }
            _ if self.good_streak >= p.recover_after => {
                self.before_suspect = None;
                let reason = format!("{} good heartbeats in a row", self.good_streak);
                Some(self.set(State::Healthy, reason, now_ms))
            }
            _ => None,
        }
    }

    /// When the node must next be judged, if ever (an unhealthy node has no deadline until it
    /// beats again, except the end of a grace period).
    pub fn deadline(&self, p: &Policy) -> Option<Instant> {
        let d = match self.state {
            State::Healthy | State::Degraded => Some(self.last_seen + p.suspect_silence()),
            State::Suspect => Some(self.last_seen + p.unhealthy_silence()),
            State::Unhealthy => None,
        };
        match (d, self.grace_until) {
            (Some(d), Some(g)) => Some(d.max(g)),
            (None, Some(g)) => Some(g),
            (d, None) => d,
        }
    }

    /// Judges the node at `now` (its deadline has passed); returns the change, if any.
    pub fn on_deadline(&mut self, p: &Policy, now: Instant, now_ms: u64) -> Option<Transition> {
        if let Some(g) = self.grace_until {
            if now < g {
                return None;
            }
            self.grace_until = None;
        }
        let silent = now.saturating_duration_since(self.last_seen);
        if silent >= p.unhealthy_silence() && self.state != State::Unhealthy {
            let mut t = self.set(
                State::Unhealthy,
                format!("no heartbeat for {:.1} s", silent.as_secs_f64()),
                now_ms,
            );
            self.good_streak = 0;
            self.before_suspect = None;
            if self.episode.is_none() {
                let e = uuid::Uuid::new_v4().to_string();
                self.episode = Some(e.clone());
                t.opened = Some(e);
            }
            return Some(t);
        }
        if silent >= p.suspect_silence() && matches!(self.state, State::Healthy | State::Degraded) {
            self.before_suspect = Some(self.state);
            self.good_streak = 0;
            let reason = format!("no heartbeat for {:.1} s", silent.as_secs_f64());
            return Some(self.set(State::Suspect, reason, now_ms));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        interval: Duration::from_secs(10),
        suspect_after: 2,
        unhealthy_after: 6,
        recover_after: 3,
    };

    fn hb(ok: bool) -> Heartbeat {
        let mut h = Heartbeat::new("iid-1".parse().unwrap(), "n1".parse().unwrap(), "lb");
        h.checks.push(Check {
            name: "haproxy".into(),
            ok,
            detail: if ok { "up" } else { "down" }.into(),
        });
        h
    }

    #[tokio::test(start_paused = true)]
    async fn silence_walks_healthy_suspect_unhealthy_and_three_beats_bring_it_back() {
        let t0 = Instant::now();
        let (mut n, t) = Node::new(&hb(true), "10.0.0.1", t0, 0);
        assert_eq!((t.from, t.to), (None, State::Healthy));
        assert_eq!(n.deadline(&P), Some(t0 + Duration::from_secs(20)));
        assert_eq!(n.on_deadline(&P, t0 + Duration::from_secs(19), 0), None);
        let s = n.on_deadline(&P, t0 + Duration::from_secs(20), 0).unwrap();
        assert_eq!((s.from, s.to), (Some(State::Healthy), State::Suspect));
        assert_eq!(n.deadline(&P), Some(t0 + Duration::from_secs(60)));
        let u = n.on_deadline(&P, t0 + Duration::from_secs(60), 0).unwrap();
        assert_eq!(u.to, State::Unhealthy);
        let episode = u.opened.clone().expect("an episode opens");
        assert_eq!(n.deadline(&P), None);
        let now = t0 + Duration::from_secs(70);
        assert_eq!(n.on_beat(&hb(true), "a", &P, now, 0), None);
        assert_eq!(n.on_beat(&hb(true), "a", &P, now, 0), None);
        let h = n.on_beat(&hb(true), "a", &P, now, 0).unwrap();
        assert_eq!((h.to, h.closed), (State::Healthy, Some(episode)));
        assert_eq!(n.episode, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_beat_returns_a_suspect_to_what_it_was_and_checks_make_it_degraded() {
        let t0 = Instant::now();
        let (mut n, _) = Node::new(&hb(true), "a", t0, 0);
        n.on_deadline(&P, t0 + Duration::from_secs(25), 0).unwrap();
        let back = n.on_beat(&hb(true), "a", &P, t0 + Duration::from_secs(26), 0).unwrap();
        assert_eq!(back.to, State::Healthy);
        let d = n.on_beat(&hb(false), "a", &P, t0 + Duration::from_secs(27), 0).unwrap();
        assert_eq!((d.to, d.reason.as_str()), (State::Degraded, "check failing: haproxy: down"));
        assert_eq!(n.on_beat(&hb(false), "a", &P, t0 + Duration::from_secs(28), 0), None);
        n.on_deadline(&P, t0 + Duration::from_secs(50), 0).unwrap();
        assert_eq!(n.state, State::Suspect);
        // Back from suspect to degraded needs the same three good beats as degraded does.
        assert_eq!(n.on_beat(&hb(true), "a", &P, t0 + Duration::from_secs(51), 0), None);
        assert_eq!(n.on_beat(&hb(true), "a", &P, t0 + Duration::from_secs(52), 0), None);
        assert_eq!(
            n.on_beat(&hb(true), "a", &P, t0 + Duration::from_secs(53), 0).unwrap().to,
            State::Healthy
        );
    }

    #[tokio::test(start_paused = true)]
    async fn every_stored_field_is_in_one_merge_group() {
        // PostgreSQL's upsert merges by these lists; a new field must join one of them.
        let (n, _) = Node::new(&hb(true), "a", Instant::now(), 0);
        let v = serde_json::to_value(&n).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut groups: Vec<&str> = HEARTBEAT_FIELDS.iter().chain(&STATE_FIELDS).copied().collect();
        // The id is the row's key; the streak is each replica's own count.
        groups.extend(["id", "good_streak"]);
        keys.sort_unstable();
        groups.sort_unstable();
        assert_eq!(keys, groups);
    }

    #[tokio::test(start_paused = true)]
    async fn merging_takes_the_newer_heartbeat_and_the_newer_state_separately() {
        let t0 = Instant::now();
        let (mut a, _) = Node::new(&hb(true), "a", t0, 1_000);
        let mut b = a.clone();
        // a judges (newer state), b takes a beat (newer heartbeat).
        a.on_deadline(&P, t0 + Duration::from_secs(60), 61_000).unwrap();
        let mut beat = hb(false);
        beat.seq = 7;
        b.on_beat(&beat, "b", &P, t0 + Duration::from_secs(59), 59_000);
        b.remediations = 0;
        a.remediations = 2;
        let mut m = a.clone();
        assert!(m.merge_from(b.clone()));
        assert_eq!((m.state, m.seq, m.addr.as_str()), (State::Unhealthy, 7, "b"));
        assert_eq!(m.remediations, 2);
        let mut m2 = b.clone();
        assert!(!m2.merge_from(a.clone()));
        assert_eq!((m2.state, m2.seq, m2.addr.as_str()), (State::Unhealthy, 7, "b"));
        // The same view again changes nothing.
        let before = serde_json::to_value(&m).unwrap();
        assert!(!m.merge_from(m2.clone()));
        assert_eq!(serde_json::to_value(&m).unwrap(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn a_grace_period_holds_judgement() {
        let t0 = Instant::now();
        let (mut n, _) = Node::new(&hb(true), "a", t0, 0);
        n.grace_until = Some(t0 + Duration::from_secs(120));
        assert_eq!(n.deadline(&P), Some(t0 + Duration::from_secs(120)));
        assert_eq!(n.on_deadline(&P, t0 + Duration::from_secs(100), 0), None);
        assert_eq!(
            n.on_deadline(&P, t0 + Duration::from_secs(120), 0).unwrap().to,
            State::Unhealthy
        );
    }
}
