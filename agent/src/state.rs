//! What the agent applied, persisted under `/var/lib/capstan/` (inside the root), keyed by
//! instance-id:
//!
//! - `/var/lib/capstan/instance-id`: the instance-id of the last completed first boot;
//! - `/var/lib/capstan/instances/<instance-id>/status.json`: the [`Status`] of the last run
//!   for that instance (sources, values with their origins, refused values, step records).
//!
//! Written atomically through the rooted filesystem handle, mode 0600 (it names where secrets
//! came from, never their values). The image seal removes `/var/lib/capstan`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::roles::RoleId;
use crate::root::{FileOpts, Root, RootError};
use crate::schema::{NetworkSource, Origin};
use crate::steps::{Stage, StepRecord, StepStatus};

/// The state directory, inside the root.
pub const STATE_DIR: &str = "/var/lib/capstan";

/// One resolved setting as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueRecord {
    /// Schema path.
    pub path: String,
    /// The value, or `<secret>` for secrets.
    pub value: String,
    /// Where it came from.
    pub origin: Origin,
}

/// A source as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// Name.
    pub name: String,
    /// Where it was read.
    pub location: String,
    /// How many settings it gave.
    pub values: usize,
}

/// The outcome of one `firstboot` (or a re-run by the daemon).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Schema version of the configuration.
    pub schema_version: u32,
    /// The instance-id.
    pub instance_id: String,
    /// Where the instance-id came from.
    pub instance_id_origin: Origin,
    /// True when this run was for an instance-id not seen before.
    pub new_instance: bool,
    /// Seconds since the epoch when the run started.
    pub started_at: u64,
    /// Wall time of the whole run in milliseconds.
    pub duration_ms: u64,
    /// Role.
    pub role: RoleId,
    /// Where the network configuration came from.
    pub network_source: NetworkSource,
    /// Sources that were present.
    pub sources: Vec<SourceRecord>,
    /// Every resolved setting with its origin (secrets redacted).
    pub values: Vec<ValueRecord>,
    /// Refused values, one line each, naming the source and key.
    pub errors: Vec<String>,
    /// Step records, in order.
    pub steps: Vec<StepRecord>,
    /// `ok` when every step is ok or skipped, else `failed`.
    pub result: RunResult,
    /// Once-per-instance steps that have succeeded for this instance, over all runs.
    #[serde(default)]
    pub done: BTreeSet<String>,
    /// The stages that made this record, in order (`early` then `final`, or `all`).
    #[serde(default)]
    pub stages: Vec<StageRun>,
    /// Set when the daemon made this record by re-identifying a running clone (its steps are
    /// in `steps`, each with its duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reidentified: Option<Reidentified>,
}

/// How a running machine became this instance without a reboot (an instant clone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reidentified {
    /// The instance it was before (the parent's instance-id).
    pub previous_instance_id: Option<String>,
    /// What noticed the change: `uevent` (the kernel's vmgenid event), `frozen-poll` (the
    /// identity probe of a frozen parent's child) or `poll` (the daemon's normal interval).
    pub trigger: String,
    /// Milliseconds from noticing the change to the end of the last step before the
    /// re-identified line: the machine is the new instance from then on.
    pub duration_ms: u64,
    /// Of which: gathering the new instance's sources.
    pub gather_ms: u64,
    /// The steps that run after the re-identified line (daemons told over D-Bus of what is
    /// already true); `pending` in `steps` until they end, then their outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Milliseconds from noticing the change to the end of those steps, once they ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_ms: Option<u64>,
}

/// One stage's run, as recorded in [`Status::stages`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRun {
    /// `early`, `final` or `all`.
    pub stage: Stage,
    /// Seconds since the epoch when it started.
    pub started_at: u64,
    /// Its wall time in milliseconds.
    pub duration_ms: u64,
    /// `ok` when its own steps are ok or skipped, else `failed`.
    pub result: RunResult,
}

/// How a run (or a stage of it) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunResult {
    /// Every step ok or skipped.
    Ok,
    /// A step failed.
    Failed,
}

impl RunResult {
    /// [`RunResult::Ok`] when `ok`.
    pub fn of(ok: bool) -> Self {
        if ok {
            RunResult::Ok
        } else {
            RunResult::Failed
        }
    }
    /// `ok` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Ok => "ok",
            RunResult::Failed => "failed",
        }
    }
}

impl std::fmt::Display for RunResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// File name, in the instance's state directory, of the secrets consumed from guestinfo
/// (mode 0600: later boots of the same instance still have them after the scrub).
pub const SECRETS_FILE: &str = "secrets.json";

/// The file, beside `status.json`, that holds what the final stage applies (deferred
/// `write_files`, `runcmd`) as the early stage planned it: the early stage scrubs consumed
/// user-data from guestinfo, so the final stage cannot read it again. Mode 0600: command lines
/// carry bootstrap tokens (cloud-init keeps them in `/var/lib/cloud/instance/scripts/` too).
pub const FINAL_PLAN_FILE: &str = "final-plan.json";

impl Status {
    /// True when a step failed.
    pub fn failed(&self) -> bool {
        self.result != RunResult::Ok
    }

    /// The names of the steps that failed, in order.
    pub fn failed_steps(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|s| s.status == StepStatus::Failed)
            .map(|s| s.name.as_str())
            .collect()
    }
}

/// Errors reading or writing state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The filesystem refused.
    #[error("state")]
    Root(#[from] RootError),
    /// A state file is not what we wrote.
    #[error("state file {path} is corrupt")]
    Corrupt {
        /// Which file.
        path: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

/// The state store inside a root.
#[derive(Debug, Clone)]
pub struct State {
    root: Root,
}

impl State {
    /// The store for `root`.
    pub fn new(root: Root) -> Self {
        Self { root }
    }

    fn instance_dir(id: &str) -> PathBuf {
        PathBuf::from(STATE_DIR).join("instances").join(id)
    }

    /// The instance-id of the last completed run, if any.
    pub fn current_instance(&self) -> Result<Option<String>, StateError> {
        Ok(self
            .root
            .read_string(PathBuf::from(STATE_DIR).join("instance-id"))?
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty()))
    }

    /// The last status recorded for `instance_id`.
    pub fn load(&self, instance_id: &str) -> Result<Option<Status>, StateError> {
        let path = Self::instance_dir(instance_id).join("status.json");
        match self.root.read(&path)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| StateError::Corrupt { path: path.display().to_string(), source }),
        }
    }

    /// The status of the current instance.
    pub fn load_current(&self) -> Result<Option<Status>, StateError> {
        match self.current_instance()? {
            Some(id) => self.load(&id),
            None => Ok(None),
        }
    }

    /// Persists secrets consumed from guestinfo for this instance (mode 0600), merged with what
    /// earlier boots kept. Nothing is written when there is nothing to keep.
    pub fn save_secrets(
        &self,
        instance_id: &str,
        secrets: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), StateError> {
        if secrets.is_empty() {
            return Ok(());
        }
        let path = Self::instance_dir(instance_id).join(SECRETS_FILE);
        let mut all: std::collections::BTreeMap<String, String> = self
            .root
            .read(&path)?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        all.extend(secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
        let json = serde_json::to_vec(&all)
            .map_err(|source| StateError::Corrupt { path: path.display().to_string(), source })?;
        self.root.write(&path, &json, FileOpts::mode(0o600))?;
        // durable before the caller overwrites the originals in guestinfo
        self.root.sync()?;
        Ok(())
    }

    /// The secrets [`State::save_secrets`] kept for `instance_id`; empty when there are none
    /// or the file is unreadable (the sources then report them missing).
    pub fn load_secrets(&self, instance_id: &str) -> std::collections::BTreeMap<String, String> {
        let path = Self::instance_dir(instance_id).join(SECRETS_FILE);
        match self.root.read(&path) {
            Ok(Some(b)) => serde_json::from_slice(&b).unwrap_or_default(),
            Ok(None) | Err(_) => Default::default(),
        }
    }

    /// Where the secrets of `instance_id` are kept (for `status`).
    pub fn secrets_location(instance_id: &str) -> String {
        Self::instance_dir(instance_id).join(SECRETS_FILE).display().to_string()
    }

    /// Records a run: the status file (whose `done` set is the per-instance completion record),
    /// then the current instance-id, staged and renamed together after one sync that makes
    /// everything written before durable (the run's files and their renames, and these two
    /// files' content): a record never survives a crash that its run's writes did not. The
    /// renames become durable with the filesystem's next commit; a crash before that loses
    /// the record, and the next boot runs the stage again, as after a crash during it. Either
    /// file surviving without the other is safe: a missing or older status only makes the
    /// next boot run steps again.
    pub fn save(&self, status: &Status) -> Result<(), StateError> {
        let mut json = serde_json::to_vec_pretty(status)
            .map_err(|source| StateError::Corrupt { path: "status".into(), source })?;
        json.push(b'\n');
        let dir = Self::instance_dir(&status.instance_id);
        let staging = self.root.stage();
        self.root.write(dir.join("status.json"), &json, FileOpts::mode(0o600))?;
        self.root.write(
            PathBuf::from(STATE_DIR).join("instance-id"),
            format!("{}\n", status.instance_id).as_bytes(),
            FileOpts::mode(0o644),
        )?;
        staging.commit_after_sync()?;
        Ok(())
    }

    /// Keeps the final stage's part of the plan for `instance_id` (mode 0600).
    pub fn save_final_plan(
        &self,
        instance_id: &str,
        plan: &crate::steps::Plan,
    ) -> Result<(), StateError> {
        let path = Self::instance_dir(instance_id).join(FINAL_PLAN_FILE);
        let json = serde_json::to_vec_pretty(plan)
            .map_err(|source| StateError::Corrupt { path: path.display().to_string(), source })?;
        self.root.write(&path, &json, FileOpts::mode(0o600))?;
        Ok(())
    }

    /// The final stage's part of the plan the early stage kept for `instance_id`.
    pub fn load_final_plan(
        &self,
        instance_id: &str,
    ) -> Result<Option<crate::steps::Plan>, StateError> {
        let path = Self::instance_dir(instance_id).join(FINAL_PLAN_FILE);
        match self.root.read(&path)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| StateError::Corrupt { path: path.display().to_string(), source }),
        }
    }
}
