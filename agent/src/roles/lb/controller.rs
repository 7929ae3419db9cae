//! The controller: the one place that changes the backend set. A change is planned against the
//! current set (pure), applied through the runtime socket, persisted, and only then becomes the
//! current set; a failure on the way rolls HAProxy back and leaves the persisted set untouched.

use std::path::PathBuf;
use std::sync::Mutex as StdMutex;

use serde_json::json;
use tokio::sync::{watch, Mutex};

use super::haproxy::slot_name;
use super::runtime::{RuntimeApi, RuntimeError};
use super::settings::{Backend, BackendList};
use super::state::{ChangeError, DesiredSet, Op, StateError};
use crate::root::Root;

/// Why a change was not applied. Nothing is left half-applied in any case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The change does not fit the current set.
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// HAProxy refused or could not be reached.
    #[error("applying the change to HAProxy")]
    Runtime(#[source] RuntimeError),
    /// The set could not be persisted.
    #[error("persisting the backend set")]
    Persist(#[source] StateError),
}

fn slot_of(op: &Op) -> usize {
    match op {
        Op::Assign { slot, .. }
        | Op::Drain { slot }
        | Op::Undrain { slot }
        | Op::Clear { slot } => *slot,
    }
}

/// Owns the desired set and applies changes to it.
#[derive(Debug)]
pub struct Controller {
    current: Mutex<DesiredSet>,
    snapshot: StdMutex<DesiredSet>,
    runtime: RuntimeApi,
    root: Root,
    state_file: PathBuf,
    config_tx: watch::Sender<DesiredSet>,
}

impl Controller {
    /// A controller for `set`, applying through `runtime`, persisting to `state_file` under
    /// `root`, and publishing each new set on `config_tx` (the config file writer listens).
    pub fn new(
        set: DesiredSet,
        runtime: RuntimeApi,
        root: Root,
        state_file: PathBuf,
        config_tx: watch::Sender<DesiredSet>,
    ) -> Self {
        Controller {
            current: Mutex::new(set.clone()),
            snapshot: StdMutex::new(set),
            runtime,
            root,
            state_file,
            config_tx,
        }
    }

    /// The current set.
    pub fn snapshot(&self) -> DesiredSet {
        self.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The runtime API client.
    pub fn runtime(&self) -> &RuntimeApi {
        &self.runtime
    }

    /// The set as JSON, with HAProxy's view of each backend when the socket answers.
    pub async fn listing(&self) -> serde_json::Value {
        let set = self.snapshot();
        let rt = self.runtime.clone();
        let stats = tokio::task::spawn_blocking(move || rt.servers().ok()).await.ok().flatten();
        let backends: Vec<_> = set
            .entries()
            .into_iter()
            .map(|e| {
                let name = slot_name(e.slot);
                let st = stats.as_ref().and_then(|s| s.iter().find(|x| x.name == name));
                json!({
                    "address": e.backend.to_string(),
                    "state": if e.drain { "drain" } else { "ready" },
                    "slot": name,
                    "health": st.map(|s| s.status.clone()),
                    "check": st.map(|s| s.check_status.clone()),
                    "sessions": st.map(|s| s.current_sessions),
                })
            })
            .collect();
        json!({ "backends": backends })
    }

    async fn change(
        &self,
        plan: impl FnOnce(&DesiredSet) -> Result<(DesiredSet, Vec<Op>), ChangeError>,
    ) -> Result<(), ApplyError> {
        let mut cur = self.current.lock().await;
        let (next, ops) = plan(&cur)?;
        let rt = self.runtime.clone();
        let to_apply = ops.clone();
        let applied = tokio::task::spawn_blocking(move || {
            for (i, op) in to_apply.iter().enumerate() {
                rt.apply(op).map_err(|e| (i, e))?;
            }
            Ok::<_, (usize, RuntimeError)>(())
        })
        .await
        .unwrap_or_else(|j| {
            Err((ops.len(), RuntimeError::Parse { command: "apply".into(), reason: j.to_string() }))
        });
        if let Err((failed_at, e)) = applied {
            self.rollback(&cur, &ops[..(failed_at + 1).min(ops.len())]).await;
            return Err(ApplyError::Runtime(e));
        }
        let (to_save, root, path) = (next.clone(), self.root.clone(), self.state_file.clone());
        let saved = tokio::task::spawn_blocking(move || to_save.save(&root, &path)).await;
        let saved = match saved {
            Ok(r) => r,
            Err(j) => {
                Err(StateError::Corrupt { path: self.state_file.clone(), reason: j.to_string() })
            }
        };
        if let Err(e) = saved {
            self.rollback(&cur, &ops).await;
            return Err(ApplyError::Persist(e));
        }
        *cur = next.clone();
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = next.clone();
        self.config_tx.send_replace(next);
        Ok(())
    }

    /// Puts the slots touched by `ops` back to what `set` says (best effort, logged).
    async fn rollback(&self, set: &DesiredSet, ops: &[Op]) {
        let slots: Vec<usize> = ops.iter().map(slot_of).collect();
        let undo: Vec<Op> =
            set.full_sync().into_iter().filter(|op| slots.contains(&slot_of(op))).collect();
        let rt = self.runtime.clone();
        let r =
            tokio::task::spawn_blocking(move || undo.iter().try_for_each(|op| rt.apply(op))).await;
        match r {
            Ok(Ok(())) => tracing::warn!("rolled HAProxy back to the previous backend set"),
            Ok(Err(e)) => {
                tracing::error!(error = %crate::error::chain(&e), "rollback failed; HAProxy may differ from the set until the next change")
            }
            Err(e) => tracing::error!(error = %e, "rollback task failed"),
        }
    }

    /// Makes HAProxy match the current set on every slot.
    pub async fn sync_all(&self) -> Result<(), RuntimeError> {
        let cur = self.current.lock().await;
        let rt = self.runtime.clone();
        let ops = cur.full_sync();
        tokio::task::spawn_blocking(move || ops.iter().try_for_each(|op| rt.apply(op)))
            .await
            .unwrap_or_else(|j| {
                Err(RuntimeError::Parse { command: "sync".into(), reason: j.to_string() })
            })
    }

    /// Adds a backend.
    pub async fn add(&self, b: Backend) -> Result<(), ApplyError> {
        self.change(|s| s.add(b)).await
    }

    /// Removes a backend.
    pub async fn remove(&self, b: Backend) -> Result<(), ApplyError> {
        self.change(|s| s.remove(b)).await
    }

    /// Drains a backend.
    pub async fn drain(&self, b: Backend) -> Result<(), ApplyError> {
        self.change(|s| s.drain(b)).await
    }

    /// Replaces the set.
    pub async fn replace(&self, list: BackendList) -> Result<(), ApplyError> {
        self.change(|s| s.replace(&list)).await
    }
}
