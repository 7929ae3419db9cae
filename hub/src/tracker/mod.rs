//! Every node's health ([`node`]) and the deadlines that judge them: one binary heap of
//! `(deadline, node)` driven by one task, so a silent node is judged at its deadline, not at the
//! next poll. Each node has at most one heap entry; a heartbeat only moves the node's
//! `last_seen`, and when its entry comes up the node's real deadline is recomputed (and the
//! entry pushed back) if it has moved. Heartbeats therefore never touch the heap.

pub mod node;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use capstan_agent::heartbeat::wire::Heartbeat;
use tokio::time::{Duration, Instant};

use node::{Node, Policy, State, Transition};

/// A heartbeat refused after authentication and parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// Its sequence number is not above the last accepted one.
    #[error("stale or replayed heartbeat: seq {got} is not above the last accepted {last}")]
    Replay {
        /// The last accepted seq.
        last: u64,
        /// The seq received.
        got: u64,
    },
}

/// What an accepted heartbeat did.
#[derive(Debug)]
pub struct Accepted {
    /// The node as it is now (for the database).
    pub snapshot: Node,
    /// The state change, if any.
    pub transition: Option<Transition>,
    /// Whether the deadline task must look again (a new heap entry).
    pub wake: bool,
}

/// All nodes and their deadlines.
#[derive(Debug)]
pub struct Registry {
    /// The judging rules.
    pub policy: Policy,
    nodes: HashMap<String, Node>,
    queued: HashMap<String, Instant>,
    heap: BinaryHeap<Reverse<(Instant, String)>>,
}

impl Registry {
    /// A registry of `nodes` as loaded from the database. Every deadline restarts from `now`:
    /// the hub cannot know what happened while it was away.
    pub fn new(policy: Policy, nodes: Vec<Node>, now: Instant) -> Self {
        let mut r = Registry {
            policy,
            nodes: HashMap::new(),
            queued: HashMap::new(),
            heap: BinaryHeap::new(),
        };
        for mut n in nodes {
            n.last_seen = now;
            n.grace_until = None;
            let id = n.id.clone();
            r.nodes.insert(id.clone(), n);
            r.requeue(&id, now);
        }
        r
    }

    fn requeue(&mut self, id: &str, now: Instant) -> bool {
        let Some(d) = self.nodes.get(id).and_then(|n| n.deadline(&self.policy)) else {
            return false;
        };
        let d = d.max(now);
        match self.queued.get(id) {
            // An earlier entry will find the real deadline when it comes up.
            Some(&q) if q <= d => false,
            _ => {
                self.queued.insert(id.to_owned(), d);
                self.heap.push(Reverse((d, id.to_owned())));
                true
            }
        }
    }

    /// Applies a heartbeat whose sender was authenticated as `hb.instance_id`.
    pub fn beat(
        &mut self,
        hb: &Heartbeat,
        addr: &str,
        now: Instant,
        now_ms: u64,
    ) -> Result<Accepted, Refused> {
        let id = hb.instance_id.as_str();
        let transition = match self.nodes.get_mut(id) {
            Some(n) => {
                if hb.seq <= n.seq {
                    return Err(Refused::Replay { last: n.seq, got: hb.seq });
                }
                n.on_beat(hb, addr, &self.policy, now, now_ms)
            }
            None => {
                let (n, t) = Node::new(hb, addr, now, now_ms);
                self.nodes.insert(id.to_owned(), n);
                Some(t)
            }
        };
        let wake = self.requeue(id, now);
        let snapshot = self.nodes[id].clone();
        Ok(Accepted { snapshot, transition, wake })
    }

    /// When the deadline task must wake next.
    pub fn next_wake(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Judges every node whose deadline is at or before `now`.
    pub fn fire(&mut self, now: Instant, now_ms: u64) -> Vec<Transition> {
        let mut out = Vec::new();
        while let Some(Reverse((at, _))) = self.heap.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, id))) = self.heap.pop() else { break };
            if self.queued.get(&id) != Some(&at) {
                continue; // superseded by an earlier push
            }
            self.queued.remove(&id);
            let Some(n) = self.nodes.get_mut(&id) else { continue };
            if n.deadline(&self.policy).is_some_and(|d| d <= now) {
                out.extend(n.on_deadline(&self.policy, now, now_ms));
            }
            if let Some(d) = n.deadline(&self.policy) {
                let d = d.max(now + Duration::from_millis(1));
                self.queued.insert(id.clone(), d);
                self.heap.push(Reverse((d, id)));
            }
        }
        out
    }

    /// Restarts every deadline from `now` (after the hub stalled: silence it did not watch is
    /// not the nodes' fault).
    pub fn restart_deadlines(&mut self, now: Instant) {
        let ids: Vec<String> = self.nodes.keys().cloned().collect();
        for id in ids {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.last_seen = n.last_seen.max(now);
            }
        }
    }

    /// A node.
    pub fn get(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// A node, to change (remediation bookkeeping).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Node> {
        self.nodes.get_mut(id)
    }

    /// Re-reads a node's deadline after its grace period changed.
    pub fn reschedule(&mut self, id: &str, now: Instant) -> bool {
        self.requeue(id, now)
    }

    /// Takes what another replica wrote for a node ([`Node::merge_from`]): its heartbeat
    /// fields when its seq is newer, its state fields when they changed later.
    pub fn merge(&mut self, o: Node, now: Instant, now_ms: u64) {
        let age = Duration::from_millis(now_ms.saturating_sub(o.last_seen_ms));
        let seen = now.checked_sub(age).unwrap_or(now);
        let id = o.id.clone();
        match self.nodes.get_mut(&id) {
            None => {
                let mut o = o;
                o.last_seen = seen;
                self.nodes.insert(id.clone(), o);
            }
            Some(n) => {
                if n.merge_from(o) {
                    n.last_seen = n.last_seen.max(seen);
                }
            }
        }
        self.requeue(&id, now);
    }

    /// Every node.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// (silent, total) nodes in `role`.
    pub fn group_silence(&self, role: &str) -> (usize, usize) {
        self.nodes
            .values()
            .filter(|n| n.role == role)
            .fold((0, 0), |(s, t), n| (s + usize::from(n.state.is_silent()), t + 1))
    }

    /// Nodes per state.
    pub fn counts(&self) -> [(State, usize); 4] {
        State::ALL.map(|s| (s, self.nodes.values().filter(|n| n.state == s).count()))
    }

    /// Heap entries (for the memory figure and tests: at most one per node).
    pub fn heap_len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        interval: Duration::from_secs(1),
        suspect_after: 2,
        unhealthy_after: 6,
        recover_after: 3,
    };

    fn hb(id: &str, seq: u64) -> Heartbeat {
        let mut h = Heartbeat::new(id.parse().unwrap(), "n".parse().unwrap(), "lb");
        h.seq = seq;
        h
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_fire_at_their_time_and_beats_never_grow_the_heap() {
        let t0 = Instant::now();
        let mut r = Registry::new(P, Vec::new(), t0);
        for i in 0..100 {
            assert!(r.beat(&hb(&format!("n{i}"), 1), "a", t0, 0).unwrap().wake);
        }
        for s in 2..50 {
            let t = t0 + Duration::from_millis(10 * s);
            for i in 0..100 {
                assert!(!r.beat(&hb(&format!("n{i}"), s), "a", t, 0).unwrap().wake);
            }
        }
        assert_eq!(r.heap_len(), 100);
        let last = t0 + Duration::from_millis(490);
        assert!(r.fire(last + Duration::from_millis(1999), 0).is_empty());
        let s = r.fire(last + Duration::from_millis(2000), 0);
        assert_eq!(s.len(), 100);
        assert!(s.iter().all(|t| t.to == State::Suspect));
        assert_eq!(r.next_wake(), Some(last + Duration::from_secs(6)));
        let u = r.fire(last + Duration::from_secs(6), 0);
        assert_eq!(u.len(), 100);
        assert!(u.iter().all(|t| t.to == State::Unhealthy && t.opened.is_some()));
        assert_eq!(r.next_wake(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn replays_are_refused_and_change_nothing() {
        let t0 = Instant::now();
        let mut r = Registry::new(P, Vec::new(), t0);
        r.beat(&hb("a", 5), "x", t0, 1).unwrap();
        for seq in [5, 4, 0] {
            assert_eq!(
                r.beat(&hb("a", seq), "y", t0, 2).unwrap_err(),
                Refused::Replay { last: 5, got: seq }
            );
        }
        let n = r.get("a").unwrap();
        assert_eq!((n.seq, n.addr.as_str(), n.last_seen_ms), (5, "x", 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_gives_every_node_a_full_deadline() {
        let t0 = Instant::now();
        let mut r = Registry::new(P, Vec::new(), t0);
        r.beat(&hb("a", 1), "x", t0, 1).unwrap();
        let n = r.get("a").unwrap().clone();
        tokio::time::advance(Duration::from_secs(100)).await;
        let t1 = Instant::now();
        let mut r2 = Registry::new(P, vec![n], t1);
        assert!(r2.fire(t1 + Duration::from_millis(1999), 0).is_empty());
        assert_eq!(r2.fire(t1 + Duration::from_secs(2), 0).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn after_remediation_and_recovery_the_node_is_judged_again() {
        let p = Policy { interval: Duration::from_millis(200), ..P };
        let t0 = Instant::now();
        let mut r = Registry::new(p, Vec::new(), t0);
        r.beat(&hb("a", 1), "x", t0, 0).unwrap();
        let t = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(r.fire(t(400), 0).len(), 1);
        let u = r.fire(t(1200), 0);
        assert_eq!(u[0].to, State::Unhealthy);
        r.get_mut("a").unwrap().grace_until = Some(t(1500));
        r.reschedule("a", t(1210));
        assert_eq!(r.next_wake(), Some(t(1500)));
        assert!(r.fire(t(1500), 0).is_empty());
        assert_eq!(r.next_wake(), None);
        for (i, ms) in [1600, 1750, 1900].into_iter().enumerate() {
            r.beat(&hb("a", 2 + i as u64), "x", t(ms), 0).unwrap();
        }
        assert_eq!(r.get("a").unwrap().state, State::Healthy);
        assert_eq!(r.next_wake(), Some(t(2300)));
    }
}
