//! SQLite, the embedded default: WAL, `synchronous=FULL` (a commit is on disk when it
//! returns), one transaction per batch.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection};

use super::{Loaded, Op, Remediation, Sink, StoreError};
use crate::tracker::node::Node;

/// The schema, shared in spirit with the PostgreSQL one (same tables and columns).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS nodes (
  id TEXT PRIMARY KEY, doc TEXT NOT NULL, state TEXT NOT NULL,
  last_seen_ms INTEGER NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT NOT NULL, at_ms INTEGER NOT NULL,
  from_state TEXT NOT NULL, to_state TEXT NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS remediations (
  episode TEXT PRIMARY KEY, node TEXT NOT NULL, action TEXT NOT NULL,
  started_ms INTEGER NOT NULL, finished_ms INTEGER, outcome TEXT, detail TEXT);
CREATE TABLE IF NOT EXISTS alerts (
  id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, subject TEXT NOT NULL,
  message TEXT NOT NULL);
";

/// What a crashed remediation's outcome reads.
pub const UNKNOWN_DETAIL: &str =
    "outcome unknown: the hub stopped between intent and outcome; not retried";

/// A SQLite database.
#[derive(Debug)]
pub struct Sqlite {
    conn: Connection,
}

fn sq(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { what, source }
}

impl Sqlite {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(sq("open"))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sq("journal_mode=WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(sq("synchronous=FULL"))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sq("busy_timeout"))?;
        conn.execute_batch(SCHEMA).map_err(sq("creating the schema"))?;
        Ok(Sqlite { conn })
    }

    /// Loads every node, marks unfinished remediations `unknown`, and lists recent ones.
    pub fn load(&mut self, window: Duration) -> Result<Loaded, StoreError> {
        let mut out = Loaded::default();
        let tx = self.conn.transaction().map_err(sq("begin"))?;
        {
            let mut st = tx.prepare("SELECT id, doc FROM nodes").map_err(sq("reading nodes"))?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(sq("reading nodes"))?;
            for row in rows {
                let (id, doc) = row.map_err(sq("reading nodes"))?;
                let n: Node =
                    serde_json::from_str(&doc).map_err(|source| StoreError::Doc { id, source })?;
                out.nodes.push(n);
            }
            let mut st = tx
                .prepare("SELECT episode, node, action, started_ms, 'unknown', ?1 FROM remediations WHERE outcome IS NULL")
                .map_err(sq("reading remediations"))?;
            let rows =
                st.query_map([UNKNOWN_DETAIL], remediation).map_err(sq("reading remediations"))?;
            for r in rows {
                out.unknown.push(r.map_err(sq("reading remediations"))?);
            }
            let now = super::now_ms();
            for r in &out.unknown {
                tx.execute(
                    "UPDATE remediations SET outcome = 'unknown', detail = ?2, finished_ms = ?3 WHERE episode = ?1",
                    params![r.episode, UNKNOWN_DETAIL, now as i64],
                )
                .map_err(sq("marking remediations unknown"))?;
            }
            let mut st = tx
                .prepare("SELECT episode FROM remediations")
                .map_err(sq("reading remediations"))?;
            let rows =
                st.query_map([], |r| r.get::<_, String>(0)).map_err(sq("reading remediations"))?;
            for r in rows {
                out.acted.insert(r.map_err(sq("reading remediations"))?);
            }
            let since = now.saturating_sub(window.as_millis() as u64) as i64;
            let mut st = tx
                .prepare("SELECT node, started_ms FROM remediations WHERE started_ms >= ?1")
                .map_err(sq("reading remediations"))?;
            let rows = st
                .query_map([since], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
                .map_err(sq("reading remediations"))?;
            for r in rows {
                let (node, at) = r.map_err(sq("reading remediations"))?;
                out.recent.entry(node).or_default().push(at);
            }
        }
        tx.commit().map_err(sq("commit"))?;
        Ok(out)
    }

    /// Every remediation, oldest first (for `GET /v1/nodes/{id}` and tests).
    pub fn remediations(&self) -> Result<Vec<Remediation>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT episode, node, action, started_ms, COALESCE(outcome, ''), COALESCE(detail, '') FROM remediations ORDER BY started_ms, episode")
            .map_err(sq("reading remediations"))?;
        let rows = st.query_map([], remediation).map_err(sq("reading remediations"))?;
        rows.collect::<Result<_, _>>().map_err(sq("reading remediations"))
    }

    /// Every state change as (node, from, to), oldest first.
    pub fn events(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT node, from_state, to_state FROM events ORDER BY id")
            .map_err(sq("reading events"))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(sq("reading events"))?;
        rows.collect::<Result<_, _>>().map_err(sq("reading events"))
    }

    /// Alerts as (subject, message).
    pub fn alerts(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT subject, message FROM alerts ORDER BY id")
            .map_err(sq("reading alerts"))?;
        let rows =
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(sq("reading alerts"))?;
        rows.collect::<Result<_, _>>().map_err(sq("reading alerts"))
    }
}

/// A row of (episode, node, action, started_ms, outcome, detail).
fn remediation(r: &rusqlite::Row<'_>) -> rusqlite::Result<Remediation> {
    Ok(Remediation {
        episode: r.get(0)?,
        node: r.get(1)?,
        action: r.get(2)?,
        started_ms: r.get::<_, i64>(3)? as u64,
        outcome: r.get(4)?,
        detail: r.get(5)?,
    })
}

impl Sink for Sqlite {
    fn write(&mut self, nodes: &[Node], ops: &[Op]) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(sq("begin"))?;
        {
            let mut up = tx
                .prepare_cached(
                    "INSERT INTO nodes (id, doc, state, last_seen_ms, seq) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(id) DO UPDATE SET doc = excluded.doc, state = excluded.state,
                       last_seen_ms = excluded.last_seen_ms, seq = excluded.seq",
                )
                .map_err(sq("writing nodes"))?;
            for n in nodes {
                let doc = serde_json::to_string(n).unwrap_or_default();
                up.execute(params![
                    n.id,
                    doc,
                    n.state.as_str(),
                    n.last_seen_ms as i64,
                    n.seq as i64
                ])
                .map_err(sq("writing nodes"))?;
            }
            for op in ops {
                write_op(&tx, op)?;
            }
        }
        tx.commit().map_err(sq("commit"))
    }
}

fn write_op(tx: &rusqlite::Transaction<'_>, op: &Op) -> Result<(), StoreError> {
    match op {
        Op::Node(_) => Ok(()),
        Op::Event { node, at_ms, from, to, reason } => tx
            .prepare_cached("INSERT INTO events (node, at_ms, from_state, to_state, reason) VALUES (?1, ?2, ?3, ?4, ?5)")
            .and_then(|mut s| s.execute(params![node, *at_ms as i64, from, to, reason]))
            .map(drop)
            .map_err(sq("writing an event")),
        Op::Intent { episode, node, action, at_ms } => tx
            .prepare_cached("INSERT INTO remediations (episode, node, action, started_ms) VALUES (?1, ?2, ?3, ?4)")
            .and_then(|mut s| s.execute(params![episode, node, action, *at_ms as i64]))
            .map(drop)
            .map_err(sq("writing a remediation intent")),
        Op::Outcome { episode, at_ms, outcome, detail } => tx
            .prepare_cached("UPDATE remediations SET outcome = ?2, detail = ?3, finished_ms = ?4 WHERE episode = ?1 AND outcome IS NULL")
            .and_then(|mut s| s.execute(params![episode, outcome, detail, *at_ms as i64]))
            .map(drop)
            .map_err(sq("writing a remediation outcome")),
        Op::Alert { at_ms, subject, message } => tx
            .prepare_cached("INSERT INTO alerts (at_ms, subject, message) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![*at_ms as i64, subject, message]))
            .map(drop)
            .map_err(sq("writing an alert")),
    }
}
