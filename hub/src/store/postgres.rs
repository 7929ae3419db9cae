//! PostgreSQL, for several hub replicas on one database. Any replica ingests and writes its
//! nodes' snapshots; exactly one, the holder of a session advisory lock on a dedicated
//! connection, runs deadlines and remediation. When the leader dies its session ends, the lock
//! is free, and another replica takes it at its next try (every 100 ms). Each replica reads
//! back, every 100 ms, the nodes others wrote (snapshots are written every 100 ms here), so
//! the leader judges heartbeats it did not receive itself within ~0.25 s of their arrival.
//!
//! Two replicas' views of a node meet in the upsert, which merges them field group by field
//! group as [`Node::merge_from`] does: the heartbeat fields from the higher `seq`, the state
//! fields from the later `changed_ms`, the larger remediation count. The read-back follows
//! the writing transactions' ids (`xid`, a `xid8`): each read asks for the rows written by
//! transactions that had not finished at the previous read (`pg_snapshot_xmin`), so nothing
//! committed late is missed and nothing is read twice over.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::{Loaded, Op, Remediation, Sink, StoreError};
use crate::engine::Hub;
use crate::tracker::node::{Node, HEARTBEAT_FIELDS, STATE_FIELDS};

/// The advisory lock key of the leader ("capstan" in ASCII).
const LEADER_KEY: i64 = 0x63_6170_7374_616e;
/// How often replicas try for leadership and read back others' writes.
const TICK: Duration = Duration::from_millis(100);
/// The advisory lock key that serialises schema creation among replicas starting together.
const SCHEMA_KEY: i64 = 0x63_6170_7374_6173;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS nodes (
  id TEXT PRIMARY KEY, doc TEXT NOT NULL, state TEXT NOT NULL,
  last_seen_ms BIGINT NOT NULL, seq BIGINT NOT NULL, since_ms BIGINT NOT NULL,
  updated_ms BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS nodes_updated ON nodes (updated_ms);
ALTER TABLE nodes ADD COLUMN IF NOT EXISTS changed_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN IF NOT EXISTS xid xid8 NOT NULL DEFAULT '0';
CREATE INDEX IF NOT EXISTS nodes_xid ON nodes (xid);
CREATE TABLE IF NOT EXISTS events (
  id BIGSERIAL PRIMARY KEY, node TEXT NOT NULL, at_ms BIGINT NOT NULL,
  from_state TEXT NOT NULL, to_state TEXT NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS remediations (
  episode TEXT PRIMARY KEY, node TEXT NOT NULL, action TEXT NOT NULL,
  started_ms BIGINT NOT NULL, finished_ms BIGINT, outcome TEXT, detail TEXT);
CREATE TABLE IF NOT EXISTS alerts (
  id BIGSERIAL PRIMARY KEY, at_ms BIGINT NOT NULL, subject TEXT NOT NULL, message TEXT NOT NULL);
";

fn pg(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Postgres { what, source }
}

async fn connect(url: &str) -> Result<Client, StoreError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.map_err(pg("connect"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// A replica's view of the shared database.
#[derive(Debug)]
pub struct Postgres {
    url: String,
    client: Client,
}

fn nodes_from(rows: Vec<tokio_postgres::Row>) -> Result<Vec<Node>, StoreError> {
    rows.into_iter()
        .map(|r| {
            let (id, doc): (String, String) = (r.get(0), r.get(1));
            serde_json::from_str(&doc).map_err(|source| StoreError::Doc { id, source })
        })
        .collect()
}

impl Postgres {
    /// Connects and creates the schema.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = connect(url).await?;
        let schema = format!("BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_KEY}); {SCHEMA} COMMIT;");
        client.batch_execute(&schema).await.map_err(pg("creating the schema"))?;
        Ok(Postgres { url: url.into(), client })
    }

    /// Every node, and the remediations of the last `window` (unfinished ones are settled
    /// by whoever becomes leader, see [`Postgres::run_replica`]).
    pub async fn load(&self, window: Duration) -> Result<Loaded, StoreError> {
        let rows = self
            .client
            .query("SELECT id, doc FROM nodes", &[])
            .await
            .map_err(pg("reading nodes"))?;
        let mut out = Loaded { nodes: nodes_from(rows)?, ..Loaded::default() };
        let since = super::now_ms().saturating_sub(window.as_millis() as u64) as i64;
        let rows = self
            .client
            .query("SELECT node, started_ms FROM remediations WHERE started_ms >= $1", &[&since])
            .await
            .map_err(pg("reading remediations"))?;
        for r in rows {
            out.recent.entry(r.get::<_, String>(0)).or_default().push(r.get::<_, i64>(1) as u64);
        }
        let rows = self
            .client
            .query("SELECT episode FROM remediations", &[])
            .await
            .map_err(pg("reading remediations"))?;
        out.acted = rows.into_iter().map(|r| r.get(0)).collect();
        Ok(out)
    }

    /// The writer thread's sink: its own connection on its own runtime (built on a thread of
    /// its own: this may be called from async code, where no runtime can be blocked on).
    pub fn sink(&self) -> Result<PgSink, StoreError> {
        let url = self.url.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(StoreError::Runtime)?;
            let client = rt.block_on(async {
                let (client, conn) =
                    tokio_postgres::connect(&url, NoTls).await.map_err(pg("connect"))?;
                tokio::spawn(conn);
                Ok::<_, StoreError>(client)
            })?;
            Ok(PgSink { rt, client })
        })
        .join()
        .map_err(|_| StoreError::WriterGone)?
    }

    /// The replica loop: tries for leadership, keeps it while its session lives, and reads
    /// back what other replicas wrote.
    pub async fn run_replica(self, hub: Arc<Hub>) {
        let mut session: Option<(Client, bool)> = None;
        // Rows written by transactions at or after this id are not yet read ('0': all).
        let mut cursor = String::from("0");
        loop {
            tokio::time::sleep(TICK).await;
            match self.read_back(&cursor).await {
                Ok((nodes, next)) => {
                    if !nodes.is_empty() {
                        hub.merge(nodes);
                    }
                    cursor = next.unwrap_or(cursor);
                }
                Err(e) => {
                    tracing::warn!(error = %capstan_agent::error::chain(&e), "reading back nodes")
                }
            }
            session = self.lead(session, &hub).await;
        }
    }

    /// The nodes written by transactions at or after `cursor` (a `xid8` as text), and the next
    /// cursor: the oldest transaction still running when this read's snapshot was taken
    /// (`None` when no row came back: the same cursor stays right).
    async fn read_back(&self, cursor: &str) -> Result<(Vec<Node>, Option<String>), StoreError> {
        let rows = self
            .client
            .query(
                "SELECT id, doc, pg_snapshot_xmin(pg_current_snapshot())::text FROM nodes
                 WHERE xid >= $1::text::xid8",
                &[&cursor],
            )
            .await
            .map_err(pg("reading back nodes"))?;
        let next = rows.first().map(|r| r.get::<_, String>(2));
        Ok((nodes_from(rows)?, next))
    }

    /// One try for leadership (or, holding it, a check that the session lives). The session's
    /// connection is kept between tries; `bool`: it holds the lock.
    async fn lead(&self, session: Option<(Client, bool)>, hub: &Hub) -> Option<(Client, bool)> {
        let (c, held) = match session {
            Some((c, held)) if !c.is_closed() => (c, held),
            Some((_, true)) => return self.step_down(hub),
            _ => (connect(&self.url).await.ok()?, false),
        };
        if held {
            return match c.simple_query("SELECT 1").await {
                Ok(_) => Some((c, true)),
                Err(_) => self.step_down(hub),
            };
        }
        let got: bool = match c.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_KEY]).await {
            Ok(r) => r.get(0),
            Err(_) => return None,
        };
        if !got {
            return Some((c, false));
        }
        match self.settle_unknown(&c).await {
            Ok(unknown) => hub.adopt_unknown(unknown),
            Err(e) => {
                tracing::error!(error = %capstan_agent::error::chain(&e), "settling unfinished remediations")
            }
        }
        tracing::info!("this replica is the leader");
        hub.set_leader(true);
        Some((c, true))
    }

    fn step_down(&self, hub: &Hub) -> Option<(Client, bool)> {
        tracing::warn!("lost the leader session: stepping down");
        hub.set_leader(false);
        None
    }

    /// Marks remediations a dead leader left unfinished as `unknown`.
    async fn settle_unknown(&self, c: &Client) -> Result<Vec<Remediation>, StoreError> {
        let rows = c
            .query(
                "UPDATE remediations SET outcome = 'unknown', detail = $1, finished_ms = $2
                 WHERE outcome IS NULL RETURNING episode, node, action, started_ms",
                &[&super::sqlite::UNKNOWN_DETAIL, &(super::now_ms() as i64)],
            )
            .await
            .map_err(pg("settling remediations"))?;
        Ok(rows
            .into_iter()
            .map(|r| Remediation {
                episode: r.get(0),
                node: r.get(1),
                action: r.get(2),
                started_ms: r.get::<_, i64>(3) as u64,
                outcome: "unknown".into(),
                detail: super::sqlite::UNKNOWN_DETAIL.into(),
            })
            .collect())
    }
}

/// The snapshot upsert: a new node is inserted; a stored one is merged with the snapshot as
/// [`Node::merge_from`] merges two views: the heartbeat fields ($9) from the snapshot when its
/// `seq` is higher, the state fields ($10) when its `changed_ms` is later, the larger
/// remediation count. A snapshot newer in neither changes nothing (a follower's view of the
/// same seq but an older state does not undo the leader's change). Rows are taken in id order,
/// so two replicas' batches lock shared rows in the same order.
const UPSERT: &str = "
INSERT INTO nodes (id, doc, state, last_seen_ms, seq, since_ms, changed_ms, updated_ms, xid)
SELECT i, d, s, l, q, c, g, $8, pg_current_xact_id()
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[])
  AS t(i, d, s, l, q, c, g)
ORDER BY i
ON CONFLICT (id) DO UPDATE SET
  doc = (nodes.doc::jsonb
    || CASE WHEN EXCLUDED.seq > nodes.seq THEN (
         SELECT COALESCE(jsonb_object_agg(key, value), '{}'::jsonb)
         FROM jsonb_each(EXCLUDED.doc::jsonb) WHERE key = ANY($9::text[]))
       ELSE '{}'::jsonb END
    || CASE WHEN EXCLUDED.changed_ms > nodes.changed_ms THEN (
         SELECT COALESCE(jsonb_object_agg(key, value), '{}'::jsonb)
         FROM jsonb_each(EXCLUDED.doc::jsonb) WHERE key = ANY($10::text[]))
       ELSE '{}'::jsonb END
    || jsonb_build_object('remediations', GREATEST(
         (nodes.doc::jsonb ->> 'remediations')::int8,
         (EXCLUDED.doc::jsonb ->> 'remediations')::int8))
  )::text,
  state = CASE WHEN EXCLUDED.changed_ms > nodes.changed_ms THEN EXCLUDED.state ELSE nodes.state END,
  since_ms = CASE WHEN EXCLUDED.changed_ms > nodes.changed_ms
    THEN EXCLUDED.since_ms ELSE nodes.since_ms END,
  changed_ms = GREATEST(nodes.changed_ms, EXCLUDED.changed_ms),
  last_seen_ms = CASE WHEN EXCLUDED.seq > nodes.seq
    THEN EXCLUDED.last_seen_ms ELSE nodes.last_seen_ms END,
  seq = GREATEST(nodes.seq, EXCLUDED.seq),
  updated_ms = EXCLUDED.updated_ms,
  xid = EXCLUDED.xid
WHERE EXCLUDED.seq > nodes.seq OR EXCLUDED.changed_ms > nodes.changed_ms
  OR (EXCLUDED.doc::jsonb ->> 'remediations')::int8 > (nodes.doc::jsonb ->> 'remediations')::int8
";

/// The writer's connection.
#[derive(Debug)]
pub struct PgSink {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Sink for PgSink {
    fn write(&mut self, nodes: &[Node], ops: &[Op]) -> Result<(), StoreError> {
        let client = &mut self.client;
        self.rt.block_on(async move {
            let tx = client.transaction().await.map_err(pg("begin"))?;
            if !nodes.is_empty() {
                let now = super::now_ms() as i64;
                let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
                let docs: Vec<String> =
                    nodes.iter().map(|n| serde_json::to_string(n).unwrap_or_default()).collect();
                let states: Vec<&str> = nodes.iter().map(|n| n.state.as_str()).collect();
                let seen: Vec<i64> = nodes.iter().map(|n| n.last_seen_ms as i64).collect();
                let seqs: Vec<i64> = nodes.iter().map(|n| n.seq as i64).collect();
                let since: Vec<i64> = nodes.iter().map(|n| n.since_ms as i64).collect();
                let changed: Vec<i64> = nodes.iter().map(|n| n.changed_ms as i64).collect();
                let hb_fields: Vec<&str> = HEARTBEAT_FIELDS.to_vec();
                let state_fields: Vec<&str> = STATE_FIELDS.to_vec();
                tx.execute(
                    UPSERT,
                    &[
                        &ids,
                        &docs,
                        &states,
                        &seen,
                        &seqs,
                        &since,
                        &changed,
                        &now,
                        &hb_fields,
                        &state_fields,
                    ],
                )
                .await
                .map_err(pg("writing nodes"))?;
            }
            for op in ops {
                write_op(&tx, op).await?;
            }
            tx.commit().await.map_err(pg("commit"))
        })
    }
}

async fn write_op(tx: &tokio_postgres::Transaction<'_>, op: &Op) -> Result<(), StoreError> {
    let r = match op {
        Op::Node(_) => return Ok(()),
        Op::Event { node, at_ms, from, to, reason } => tx
            .execute(
                "INSERT INTO events (node, at_ms, from_state, to_state, reason) VALUES ($1, $2, $3, $4, $5)",
                &[node, &(*at_ms as i64), from, to, reason],
            )
            .await
            .map_err(pg("writing an event")),
        Op::Intent { episode, node, action, at_ms } => tx
            .execute(
                "INSERT INTO remediations (episode, node, action, started_ms) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[episode, node, action, &(*at_ms as i64)],
            )
            .await
            .map_err(pg("writing a remediation intent")),
        Op::Outcome { episode, at_ms, outcome, detail } => tx
            .execute(
                "UPDATE remediations SET outcome = $2, detail = $3, finished_ms = $4 WHERE episode = $1 AND outcome IS NULL",
                &[episode, outcome, detail, &(*at_ms as i64)],
            )
            .await
            .map_err(pg("writing a remediation outcome")),
        Op::Alert { at_ms, subject, message } => tx
            .execute("INSERT INTO alerts (at_ms, subject, message) VALUES ($1, $2, $3)", &[&(*at_ms as i64), subject, message])
            .await
            .map_err(pg("writing an alert")),
    };
    r.map(drop)
}
