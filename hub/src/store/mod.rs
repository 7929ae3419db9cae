//! Durable state: the last state of every node, state changes, remediation intents and
//! outcomes, alerts. One writer thread per hub batches everything it receives into one
//! transaction (group commit): a heartbeat that changes nothing is only a snapshot, written at
//! most a second later and never waited for; a state change or a remediation intent is waited
//! for ([`Store::commit`]) and shares its commit (and fsync) with whatever else is queued.

mod postgres;
mod sqlite;

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::tracker::node::Node;

pub use postgres::{PgSink, Postgres};
pub use sqlite::{Sqlite, UNKNOWN_DETAIL};

/// How often snapshots are written at the latest (SQLite).
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// The same on PostgreSQL, where other replicas read the snapshots: the leader judges the
/// heartbeats followers took by them, so they must not be a second old.
pub const PG_SNAPSHOT_EVERY: Duration = Duration::from_millis(100);

/// Storage failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `--db` is neither `sqlite:PATH` nor `postgres://…`.
    #[error("--db {0:?}: expected sqlite:PATH or postgres://…")]
    Url(String),
    /// SQLite failed.
    #[error("SQLite {what}")]
    Sqlite {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// PostgreSQL failed.
    #[error("PostgreSQL {what}")]
    Postgres {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A stored node document does not parse (written by another version?).
    #[error("stored node {id}")]
    Doc {
        /// The node.
        id: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The PostgreSQL writer's runtime could not start.
    #[error("starting the PostgreSQL writer")]
    Runtime(#[source] std::io::Error),
    /// The writer thread is gone.
    #[error("the database writer stopped")]
    WriterGone,
}

/// One durable record.
#[derive(Debug, Clone)]
pub enum Op {
    /// The node's current document (upsert; a later one for the same node replaces it).
    Node(Box<Node>),
    /// A state change.
    Event {
        /// The node.
        node: String,
        /// When (Unix ms).
        at_ms: u64,
        /// From (empty for a new node).
        from: String,
        /// To.
        to: String,
        /// Why.
        reason: String,
    },
    /// A remediation is about to run (written before it runs).
    Intent {
        /// The episode, the action's idempotency key.
        episode: String,
        /// The node.
        node: String,
        /// The action (`exec`, `vsphere`, `lab`, `none`).
        action: String,
        /// When (Unix ms).
        at_ms: u64,
    },
    /// A remediation finished.
    Outcome {
        /// The episode.
        episode: String,
        /// When (Unix ms).
        at_ms: u64,
        /// `ok`, `failed`, `skipped`.
        outcome: String,
        /// What happened.
        detail: String,
    },
    /// Something a person should read (mass silence, a flagged node).
    Alert {
        /// When (Unix ms).
        at_ms: u64,
        /// The group or node concerned.
        subject: String,
        /// What happened.
        message: String,
    },
}

/// A remediation as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Remediation {
    /// The episode.
    pub episode: String,
    /// The node.
    pub node: String,
    /// The action.
    pub action: String,
    /// When the intent was written (Unix ms).
    pub started_ms: u64,
    /// `ok`, `failed`, `skipped`, `unknown`, or empty while running.
    pub outcome: String,
    /// What happened.
    pub detail: String,
}

/// What a hub finds at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every node's last document.
    pub nodes: Vec<Node>,
    /// Remediations whose outcome was not recorded (the hub stopped during them): now marked
    /// `unknown` in the database.
    pub unknown: Vec<Remediation>,
    /// Start times of remediations in the last `window`, per node (for the per-node limit).
    pub recent: HashMap<String, Vec<u64>>,
    /// Episodes that have a remediation record (acted on, or being acted on).
    pub acted: std::collections::HashSet<String>,
}

/// A database the writer thread can use.
pub trait Sink: Send + 'static {
    /// Writes the batch in one transaction.
    fn write(&mut self, nodes: &[Node], ops: &[Op]) -> Result<(), StoreError>;
}

enum Msg {
    Submit(Op),
    Commit(Vec<Op>, oneshot::Sender<Result<(), String>>),
}

/// The handle the hub writes through.
#[derive(Debug, Clone)]
pub struct Store {
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl Store {
    /// Starts the writer thread over `sink`, writing snapshots at least `every`.
    pub fn start(sink: impl Sink, every: Duration) -> Store {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("hub-db-writer".into())
            .spawn(move || writer(sink, rx, every))
            .expect("spawning the database writer thread");
        Store { tx }
    }

    /// Queues a record without waiting (a snapshot).
    pub fn submit(&self, op: Op) {
        let _ = self.tx.send(Msg::Submit(op));
    }

    /// Queues `ops` for the next commit and returns what to wait on. Callers enqueue while
    /// they hold the lock under which they changed memory, so the database sees changes in
    /// the order memory did.
    pub fn enqueue(&self, ops: Vec<Op>) -> Pending {
        let (done, wait) = oneshot::channel();
        let sent = self.tx.send(Msg::Commit(ops, done)).is_ok();
        Pending { wait: sent.then_some(wait) }
    }

    /// Writes `ops` durably, with whatever else is queued, and waits for the commit.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.enqueue(ops).wait().await
    }
}

/// A queued durable write.
#[derive(Debug)]
pub struct Pending {
    wait: Option<oneshot::Receiver<Result<(), String>>>,
}

impl Pending {
    /// Waits until the write is committed.
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.wait {
            None => Err(StoreError::WriterGone),
            Some(w) => match w.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "database commit failed");
                    Err(StoreError::WriterGone)
                }
                Err(_) => Err(StoreError::WriterGone),
            },
        }
    }
}

#[derive(Default)]
struct Batch {
    nodes: HashMap<String, Node>,
    ops: Vec<Op>,
    waiters: Vec<oneshot::Sender<Result<(), String>>>,
}

impl Batch {
    fn add(&mut self, op: Op) {
        match op {
            Op::Node(n) => {
                self.nodes.insert(n.id.clone(), *n);
            }
            other => self.ops.push(other),
        }
    }
    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Submit(op) => self.add(op),
            Msg::Commit(ops, done) => {
                ops.into_iter().for_each(|op| self.add(op));
                self.waiters.push(done);
            }
        }
    }
    fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.ops.is_empty() && self.waiters.is_empty()
    }
}

fn writer(mut sink: impl Sink, rx: mpsc::Receiver<Msg>, every: Duration) {
    let mut batch = Batch::default();
    let mut last = Instant::now();
    loop {
        let wait = (last + every).saturating_duration_since(Instant::now());
        let gone = match rx.recv_timeout(wait) {
            Ok(m) => {
                batch.take(m);
                // Everything already queued joins this commit.
                while let Ok(m) = rx.try_recv() {
                    batch.take(m);
                }
                false
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => true,
        };
        let due = !batch.waiters.is_empty() || last.elapsed() >= every || gone;
        if due && !batch.is_empty() {
            let b = std::mem::take(&mut batch);
            let nodes: Vec<Node> = b.nodes.into_values().collect();
            let r = sink.write(&nodes, &b.ops).map_err(|e| capstan_agent::error::chain(&e));
            if let Err(e) = &r {
                tracing::error!(error = %e, "database write failed");
            }
            for w in b.waiters {
                let _ = w.send(r.clone());
            }
            last = Instant::now();
        } else if due {
            last = Instant::now();
        }
        if gone {
            return;
        }
    }
}

/// Opens the database named by `--db` and loads it; `window` bounds [`Loaded::recent`].
/// A PostgreSQL URL also returns the replica handle (leadership and read-back).
pub async fn open(
    db: &str,
    window: Duration,
) -> Result<(Store, Loaded, Option<Postgres>), StoreError> {
    if let Some(path) = db.strip_prefix("sqlite:") {
        let mut s = Sqlite::open(std::path::Path::new(path))?;
        let loaded = s.load(window)?;
        Ok((Store::start(s, SNAPSHOT_EVERY), loaded, None))
    } else if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        let pg = Postgres::connect(db).await?;
        let loaded = pg.load(window).await?;
        let sink = pg.sink()?;
        Ok((Store::start(sink, PG_SNAPSHOT_EVERY), loaded, Some(pg)))
    } else {
        Err(StoreError::Url(db.into()))
    }
}

/// Unix ms now.
pub fn now_ms() -> u64 {
    capstan_agent::heartbeat::sender::unix_ms()
}
