//! The first-boot steps: what `capstan-agent firstboot` does to a machine.
//!
//! A [`Plan`] is everything the merged configuration says the node should be (identity,
//! network, DNS, NTP, users, files, commands). [`run`] applies it step by step through a
//! [`Root`], recording each step as a [`StepRecord`]. One failed step does not stop the others.
//!
//! Every step is idempotent: its effect is a function of the plan (files are rendered and
//! written whole, users are edited in place), so running it twice changes nothing the second
//! time. Steps whose effect must happen once per instance and not again (a fresh machine-id,
//! new SSH host keys, `write_files` with `append`, `runcmd`) consult [`PerInstance`] and are
//! skipped when they already succeeded for the current instance-id.
//!
//! Order follows cloud-init's stages where they matter: identity, network, DNS, NTP, `bootcmd`,
//! `write_files`, users ([`Stage::Early`], cloud-init's init stage: before the network starts),
//! then waiting for a routable address, deferred `write_files`, `runcmd` ([`Stage::Final`],
//! cloud-final: after the network is online and the container runtime has started, which is
//! where Cluster API's kubeadm bootstrap puts `kubeadm join`).

use std::collections::BTreeSet;
use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::root::Root;
use crate::types::{Fqdn, Hostname, InstanceId};

pub mod commands;
pub mod files;
pub mod identity;
pub mod netlink;
pub mod network;
pub mod online;
pub mod sshkey;
pub mod timedns;
pub mod users;

pub use commands::Command;
pub use files::{Encoding, Owner, WriteFile};
pub use identity::{HostKeyType, ManageEtcHosts};
pub use network::{NetworkConfig, Nic, Route};
pub use timedns::{Dns, Ntp};
pub use users::{Group, User};

/// Everything first boot should make true on this node, after all sources are merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The instance-id this plan is for (cloud-init metadata `instance-id`, OVF env, SMBIOS).
    #[serde(default)]
    pub instance_id: Option<InstanceId>,
    /// Host name (`local-hostname` / `hostname`); the first label goes to the kernel.
    #[serde(default)]
    pub hostname: Option<Hostname>,
    /// Fully qualified name for `/etc/hosts` (cloud-config `fqdn`).
    #[serde(default)]
    pub fqdn: Option<Fqdn>,
    /// How `/etc/hosts` is managed.
    #[serde(default)]
    pub manage_etc_hosts: ManageEtcHosts,
    /// Regenerate `/etc/machine-id` once per instance.
    #[serde(default = "yes")]
    pub machine_id: bool,
    /// SSH host key types to generate once per instance; empty = leave host keys alone.
    #[serde(default = "identity::default_host_key_types")]
    pub ssh_host_key_types: Vec<HostKeyType>,
    /// Per-NIC network configuration.
    #[serde(default)]
    pub network: NetworkConfig,
    /// Global DNS (systemd-resolved), besides per-NIC nameservers.
    #[serde(default)]
    pub dns: Dns,
    /// Time servers (systemd-timesyncd); `None` leaves timesyncd's defaults.
    #[serde(default)]
    pub ntp: Option<Ntp>,
    /// Groups to create (cloud-config `groups`).
    #[serde(default)]
    pub groups: Vec<Group>,
    /// Users to create or update (cloud-config `users`, with `default` already expanded).
    #[serde(default)]
    pub users: Vec<User>,
    /// Files to write (cloud-config `write_files`).
    #[serde(default)]
    pub files: Vec<WriteFile>,
    /// Commands run at every boot, before `write_files` (cloud-config `bootcmd`).
    #[serde(default)]
    pub bootcmd: Vec<Command>,
    /// Commands run once per instance, last (cloud-config `runcmd`).
    #[serde(default)]
    pub runcmd: Vec<Command>,
}

impl Plan {
    /// The plan cloud-init's documents describe: identity and network from the metadata,
    /// everything else from the cloud-config (`users` absent means the default user, as in
    /// cloud-init; metadata `public-keys` and top-level `ssh_authorized_keys` go to the default
    /// user). The caller then lays its own higher-precedence settings over it. Returns remarks
    /// worth a warning.
    pub fn from_cloud_init(
        md: Option<&crate::cloudinit::Metadata>,
        cc: Option<&crate::cloudinit::CloudConfig>,
        default_user: &User,
    ) -> (Plan, Vec<String>) {
        let mut plan = Plan {
            machine_id: true,
            ssh_host_key_types: identity::default_host_key_types(),
            ..Plan::default()
        };
        let mut notes = Vec::new();
        if let Some(md) = md {
            plan.instance_id = md.instance_id.clone();
            plan.hostname = md.local_hostname.clone();
            if let Some(n) = &md.network {
                plan.network = n.clone();
            }
        }
        if let Some(cc) = cc {
            if cc.hostname.is_some() {
                plan.hostname = cc.hostname.clone();
            }
            plan.fqdn = cc.fqdn.clone();
            if let Some(m) = cc.manage_etc_hosts {
                plan.manage_etc_hosts = m;
            }
            let mut du = default_user.clone();
            if let Some(md) = md {
                du.ssh_authorized_keys.extend(md.public_keys.iter().cloned());
            }
            let (users, note) = cc.resolved_users(&du);
            plan.users = users;
            notes.extend(note);
            plan.groups = cc.groups.clone();
            plan.ntp = cc.ntp.clone();
            plan.files = cc.write_files.clone();
            plan.bootcmd = cc.bootcmd.clone();
            plan.runcmd = cc.runcmd.clone();
        }
        (plan, notes)
    }
}

fn yes() -> bool {
    true
}

/// Whether effects outside the filesystem happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On the running system (`/`): also the hostname syscall, netlink, reloading systemd
    /// units, and running commands.
    Live,
    /// Under `--root DIR`: only file effects under DIR. Live effects are recorded as skipped.
    /// Commands are skipped too unless `run_commands` is set, and then they run on the host
    /// with DIR as working directory and `CAPSTAN_ROOT=DIR` in their environment — not confined
    /// to DIR, which is why it takes an explicit flag.
    Rooted {
        /// Run `bootcmd`/`runcmd` (on the host, in DIR).
        run_commands: bool,
    },
}

/// What earlier runs already did for the current instance (loaded by the caller from state).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerInstance {
    /// Names of the once-per-instance steps that already succeeded for this instance-id.
    #[serde(default)]
    pub done: BTreeSet<String>,
}

impl PerInstance {
    /// Nothing done yet (a new instance).
    pub fn fresh() -> Self {
        PerInstance::default()
    }
    /// Builds it from the records of an earlier run for the same instance.
    pub fn from_records(records: &[StepRecord]) -> Self {
        PerInstance {
            done: records
                .iter()
                .filter(|r| r.status == StepStatus::Ok)
                .map(|r| r.name.clone())
                .collect(),
        }
    }
    /// True when `step` already succeeded for this instance.
    pub fn is_done(&self, step: &str) -> bool {
        self.done.contains(step)
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// Applied (or already in the wanted state).
    Ok,
    /// Not applicable, already done for this instance, or not allowed in this mode.
    Skipped,
    /// Failed; `error` says why.
    Failed,
    /// Not run yet: a final-stage step after the early stage ran (the final stage fills it in).
    Pending,
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StepStatus::Ok => "ok",
            StepStatus::Skipped => "skipped",
            StepStatus::Failed => "failed",
            StepStatus::Pending => "pending",
        })
    }
}

/// The record of one step, as `status` prints it and state persists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step name (`hostname`, `network`, ...).
    pub name: String,
    /// How it ended.
    pub status: StepStatus,
    /// What it did, or why it was skipped.
    pub detail: String,
    /// Why it failed (the full error chain), for `failed`.
    #[serde(default)]
    pub error: Option<String>,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

/// What a step returns: done (with a detail) or skipped (with the reason).
#[derive(Debug)]
pub(crate) enum Outcome {
    Ok(String),
    Skipped(String),
}

/// A step failure: a message naming what failed (file, user, key), and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct StepError {
    /// What failed.
    pub what: String,
    /// The cause, if it came from below.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StepError {
    pub(crate) fn msg(what: impl Into<String>) -> Self {
        StepError { what: what.into(), source: None }
    }
    pub(crate) fn wrap(
        what: impl Into<String>,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StepError { what: what.into(), source: Some(Box::new(e)) }
    }
}

/// Renders an error with its causes, once each, `a: b: c`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Everything a step gets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub root: &'a Root,
    pub plan: &'a Plan,
    pub mode: Mode,
    pub state: &'a PerInstance,
}

impl Ctx<'_> {
    pub fn live(&self) -> bool {
        self.mode == Mode::Live
    }
}

/// The step names, in the order they run.
pub const STEP_NAMES: &[&str] = &[
    "hostname",
    "machine-id",
    "ssh-host-keys",
    "network",
    "network-live",
    "dns",
    "ntp",
    "bootcmd",
    "write-files",
    "users",
    "network-online",
    "write-files-deferred",
    "runcmd",
];

/// The steps of the final stage (the rest of [`STEP_NAMES`] are the early stage's).
pub const FINAL_STEPS: &[&str] = &["network-online", "write-files-deferred", "runcmd"];

/// Which steps a run applies, after cloud-init's stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Identity, network files and addresses, DNS, NTP, `bootcmd`, `write_files`, users:
    /// before the network starts (`capstan-agent-firstboot.service`).
    Early,
    /// Wait (bounded) for a routable address, deferred `write_files`, `runcmd`: after
    /// `network-online.target` and the container runtime (`capstan-agent-final.service`).
    Final,
    /// Both, in order (tests, `--root` runs, the daemon's re-run for a new instance-id).
    All,
}

impl Stage {
    /// True when `step` belongs to this stage.
    pub fn includes(self, step: &str) -> bool {
        match self {
            Stage::All => true,
            Stage::Final => FINAL_STEPS.contains(&step),
            Stage::Early => !FINAL_STEPS.contains(&step),
        }
    }
    /// `early`, `final` or `all`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Early => "early",
            Stage::Final => "final",
            Stage::All => "all",
        }
    }
}

/// Applies the plan: every step in order, each timed and recorded ([`Stage::All`]).
pub fn run(root: &Root, plan: &Plan, mode: Mode, state: &PerInstance) -> Vec<StepRecord> {
    run_stage(root, plan, mode, state, Stage::All)
}

/// Applies the steps of one stage in order, each timed and recorded. A failed step does not
/// stop the rest (a node with a broken NTP setting should still get its network).
pub fn run_stage(
    root: &Root,
    plan: &Plan,
    mode: Mode,
    state: &PerInstance,
    stage: Stage,
) -> Vec<StepRecord> {
    let ctx = Ctx { root, plan, mode, state };
    type StepFn = fn(&Ctx<'_>) -> Result<Outcome, StepError>;
    let all: [(&str, StepFn); 13] = [
        ("hostname", identity::hostname),
        ("machine-id", identity::machine_id),
        ("ssh-host-keys", identity::ssh_host_keys),
        ("network", network_files),
        ("network-live", netlink::step),
        ("dns", timedns::dns),
        ("ntp", timedns::ntp),
        ("bootcmd", commands::bootcmd),
        ("write-files", |c| files::write_files(c, false)),
        ("users", users::step),
        ("network-online", online::step),
        ("write-files-deferred", |c| files::write_files(c, true)),
        ("runcmd", commands::runcmd),
    ];
    let steps: Vec<(&str, StepFn)> = all.into_iter().filter(|(n, _)| stage.includes(n)).collect();
    let mut out = Vec::with_capacity(steps.len() + 1);
    // The whole run's file changes are staged and applied together after the last step, so
    // that the files a run replaces cost one sync before their renames, not one per step.
    // Each step is an inner level: a failed step's changes are discarded, the others kept.
    let run_staging = root.stage();
    let commands_run = matches!(mode, Mode::Live | Mode::Rooted { run_commands: true });
    for (name, f) in steps {
        let span = tracing::info_span!("step", name);
        let _g = span.enter();
        let t = Instant::now();
        // A step that starts other processes that read the files (networkd, the commands)
        // gets the earlier steps' files applied first.
        let flush = match name {
            "network-live" => mode == Mode::Live,
            "bootcmd" | "runcmd" => commands_run,
            _ => false,
        };
        let flushed = if flush { root.flush_staged().map(|_| ()) } else { Ok(()) };
        let staging = root.stage();
        let result = match flushed {
            Ok(()) => f(&ctx).and_then(|outcome| {
                staging.commit().map(|_| outcome).map_err(|e| StepError::wrap("stage", e))
            }),
            Err(e) => Err(StepError::wrap("apply the earlier steps' files first", e)),
        };
        let duration_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
        let rec = match result {
            Ok(Outcome::Ok(detail)) => {
                tracing::info!(duration_ms, "{detail}");
                StepRecord {
                    name: name.into(),
                    status: StepStatus::Ok,
                    detail,
                    error: None,
                    duration_ms,
                }
            }
            Ok(Outcome::Skipped(detail)) => {
                tracing::info!(duration_ms, "skipped: {detail}");
                StepRecord {
                    name: name.into(),
                    status: StepStatus::Skipped,
                    detail,
                    error: None,
                    duration_ms,
                }
            }
            Err(e) => {
                let error = error_chain(&e);
                tracing::error!(duration_ms, "failed: {error}");
                StepRecord {
                    name: name.into(),
                    status: StepStatus::Failed,
                    detail: String::new(),
                    error: Some(error),
                    duration_ms,
                }
            }
        };
        out.push(rec);
    }
    // Apply the run's changes (one sync first if they replace files). The caller's record of
    // the run syncs all of it before it is renamed (`State::save`). If applying fails, a
    // `sync` record says so: the caller must not count this run's steps as done.
    let t = Instant::now();
    let synced = run_staging.commit().map(|_| ());
    let duration_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
    match synced {
        Ok(()) => tracing::debug!(duration_ms, "first-boot writes applied"),
        Err(e) => {
            let error = error_chain(&e);
            tracing::error!("applying the first-boot writes: {error}");
            out.push(StepRecord {
                name: SYNC_STEP.into(),
                status: StepStatus::Failed,
                detail: "the steps' files may be missing or not durable; they run again".into(),
                error: Some(error),
                duration_ms,
            });
        }
    }
    out
}

/// The record [`run`] adds when applying the run's files fails (the sync before the renames,
/// or a rename). Then the steps' files may be missing, so no step of the run may be recorded
/// as done for the instance.
pub const SYNC_STEP: &str = "sync";

/// The `network` step: validate all, render all, then write all; remove our stale files.
fn network_files(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    const DIR: &str = "/etc/systemd/network";
    let cfg = &ctx.plan.network;
    cfg.validate("network")
        .map_err(|e| StepError::wrap("invalid network configuration, no file written", e))?;
    let files = network::render(cfg);
    let wanted: BTreeSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let mut changed = 0;
    for f in &files {
        let path = format!("{DIR}/{}", f.name);
        let old = ctx.root.read(&path).map_err(|e| StepError::wrap(format!("read {path}"), e))?;
        if old.as_deref() != Some(f.content.as_bytes()) {
            ctx.root
                .write(&path, f.content.as_bytes(), crate::root::FileOpts::mode(0o644))
                .map_err(|e| StepError::wrap(format!("write {path}"), e))?;
            changed += 1;
        }
    }
    let mut removed = 0;
    for name in ctx.root.list(DIR).map_err(|e| StepError::wrap(format!("list {DIR}"), e))? {
        if name.starts_with(network::FILE_PREFIX) && !wanted.contains(name.as_str()) {
            ctx.root
                .remove(format!("{DIR}/{name}"))
                .map_err(|e| StepError::wrap(format!("remove {DIR}/{name}"), e))?;
            removed += 1;
        }
    }
    if cfg.nics.is_empty() {
        // a clone must not keep its predecessor's static addresses
        return Ok(match removed {
            0 => Outcome::Skipped(
                "no network configuration given; the image's default applies".into(),
            ),
            n => Outcome::Ok(format!(
                "no network configuration given; removed {n} file(s) of the previous instance"
            )),
        });
    }
    Ok(Outcome::Ok(format!(
        "{} NIC(s), {} file(s) rendered, {changed} written, {removed} stale removed",
        cfg.nics.len(),
        files.len()
    )))
}
