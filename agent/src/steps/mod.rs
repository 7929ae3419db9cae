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

use std::any::Any;
use std::cell::RefCell;
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
pub enum Outcome {
    /// Applied; what it did.
    Ok(String),
    /// Not applied; why.
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

/// Everything a step gets.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// Where the effects go.
    pub root: &'a Root,
    /// What to make true.
    pub plan: &'a Plan,
    /// Live, or confined to the root.
    pub mode: Mode,
    /// What earlier runs did for this instance.
    pub state: &'a PerInstance,
    /// The configured role's typed settings (`crate::roles::RoleSettings`), type-erased so
    /// that `steps` stays below `roles`; a role's own step downcasts them.
    pub role: Option<RoleData<'a>>,
    /// Records a step adds besides its own (a role step's sub-steps, say
    /// `kube-preflight/endpoint-tcp`), placed before the step's record, in order.
    pub sub: &'a SubRecords,
}

impl Ctx<'_> {
    /// True on the running system.
    pub fn live(&self) -> bool {
        self.mode == Mode::Live
    }
    /// The role's settings as `T`, when they are.
    pub fn role_settings<T: Any>(&self) -> Option<&T> {
        self.role.and_then(|r| r.0.downcast_ref())
    }
    /// Adds a sub-record (see [`Ctx::sub`]).
    pub fn record(&self, r: StepRecord) {
        self.sub.0.borrow_mut().push(r);
    }
}

/// A role's settings as a step sees them ([`Ctx::role`]).
#[derive(Clone, Copy)]
pub struct RoleData<'a>(pub &'a (dyn Any + Send + Sync));

impl fmt::Debug for RoleData<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // may hold secrets: never printed
        f.write_str("RoleData(..)")
    }
}

/// The sub-records of one step ([`Ctx::sub`]).
#[derive(Debug, Default)]
pub struct SubRecords(RefCell<Vec<StepRecord>>);

/// The identity of a step record: the steps the runner applies, in the order they run, and
/// the records first boot adds around them (`sources`, `role`, `heartbeat`, `sync`). The one
/// list of step names: `status`, the state files, the plan's issues and the runner all use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepId {
    /// The kernel hostname, `/etc/hostname`, `/etc/hosts`.
    Hostname,
    /// A fresh `/etc/machine-id`, once per instance.
    MachineId,
    /// New SSH host keys, once per instance.
    SshHostKeys,
    /// systemd-networkd files.
    Network,
    /// Links and addresses over netlink (live only).
    NetworkLive,
    /// systemd-resolved.
    Dns,
    /// systemd-timesyncd.
    Ntp,
    /// cloud-config `bootcmd`.
    Bootcmd,
    /// cloud-config `write_files` (not deferred).
    WriteFiles,
    /// Users, groups, authorized keys.
    Users,
    /// A bounded wait for a routable address.
    NetworkOnline,
    /// Deferred `write_files`.
    WriteFilesDeferred,
    /// cloud-config `runcmd` and `commands.runcmd`.
    Runcmd,
    /// The record of reading the sources (first in `status`).
    Sources,
    /// The role's record (its settings refused or incomplete).
    Role,
    /// Heartbeat settings refused.
    Heartbeat,
    /// The record the runner adds when applying the run's files failed ([`run_steps`]).
    Sync,
    /// A clone: the kernel's RNG reseeded, where its vmgenid driver did not (first).
    RngReseed,
    /// A clone: the host name told to systemd-hostnamed.
    Hostnamed,
    /// A clone: sshd reloaded with the new host keys.
    SshdReload,
    /// A clone: systemd-networkd told to read the new files and reconfigure the links.
    NetworkdReload,
    /// A clone: the role kept serving or restarted.
    RoleRefresh,
    /// A clone: a heartbeat sent with the new identity.
    HeartbeatIdentity,
    /// The Kubernetes preflight before the user-data's `kubeadm init|join` (Cluster API's
    /// kubeadm bootstrap), placed before `runcmd`, which it gates.
    KubePreflight,
    /// The vApp path of the Kubernetes roles: preflight, kubeadm configuration, `kubeadm
    /// init|join`, the sentinel (after `runcmd`).
    Kubeadm,
}

impl StepId {
    /// The name in `status` and the state files.
    pub fn as_str(self) -> &'static str {
        match self {
            StepId::Hostname => "hostname",
            StepId::MachineId => "machine-id",
            StepId::SshHostKeys => "ssh-host-keys",
            StepId::Network => "network",
            StepId::NetworkLive => "network-live",
            StepId::Dns => "dns",
            StepId::Ntp => "ntp",
            StepId::Bootcmd => "bootcmd",
            StepId::WriteFiles => "write-files",
            StepId::Users => "users",
            StepId::NetworkOnline => "network-online",
            StepId::WriteFilesDeferred => "write-files-deferred",
            StepId::Runcmd => "runcmd",
            StepId::Sources => "sources",
            StepId::Role => "role",
            StepId::Heartbeat => "heartbeat",
            StepId::Sync => "sync",
            StepId::RngReseed => "rng-reseed",
            StepId::Hostnamed => "hostnamed",
            StepId::SshdReload => "sshd-reload",
            StepId::NetworkdReload => "networkd-reload",
            StepId::RoleRefresh => "role-refresh",
            StepId::HeartbeatIdentity => "heartbeat-identity",
            StepId::KubePreflight => "kube-preflight",
            StepId::Kubeadm => "kubeadm",
        }
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<StepId> for String {
    fn eq(&self, other: &StepId) -> bool {
        self == other.as_str()
    }
}

/// The record [`run_steps`] adds when applying the run's files fails (the sync before the
/// renames, or a rename). Then the steps' files may be missing, so no step of the run may be
/// recorded as done for the instance.
pub const SYNC_STEP: StepId = StepId::Sync;

/// Which steps a run applies, after cloud-init's stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    pub fn includes(self, step: &Step) -> bool {
        match self {
            Stage::All => true,
            Stage::Final => step.stage == Stage::Final,
            Stage::Early => step.stage != Stage::Final,
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

/// What a step does before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Nothing: its files are staged with the others.
    No,
    /// Applies the earlier steps' staged files first when live (it starts processes that read
    /// them, as networkd does).
    WhenLive,
    /// Applies them first when commands run (the commands read them).
    WhenCommandsRun,
}

/// The function of a step.
pub type StepFn = fn(&Ctx<'_>) -> Result<Outcome, StepError>;

/// One step the runner applies: its id, stage, what it needs flushed, and its function.
/// [`builtin`] lists first boot's; a role appends its own ([`crate::roles::Role::steps`]).
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Its record's name.
    pub id: StepId,
    /// [`Stage::Early`] or [`Stage::Final`].
    pub stage: Stage,
    /// Whether earlier steps' files must be applied before it runs.
    pub flush: Flush,
    /// Runs only when the machine boots, not when the daemon re-runs first boot for a new
    /// instance-id on a running machine (an instant clone): `bootcmd`, cloud-init's per-boot
    /// commands. Every other step makes the node the new instance.
    pub boot_only: bool,
    /// What it does.
    pub run: StepFn,
    /// Where [`place`] puts it: right before this step (of the same stage), or last.
    pub before: Option<StepId>,
    /// When it fails, the step it is placed before is not run (recorded as skipped, naming
    /// this one): a check that must pass before commands run.
    pub gate: bool,
}

impl Step {
    /// A step of the early stage.
    pub const fn early(id: StepId, run: StepFn) -> Step {
        Step {
            id,
            stage: Stage::Early,
            flush: Flush::No,
            boot_only: false,
            run,
            before: None,
            gate: false,
        }
    }
    /// A step of the final stage.
    pub const fn late(id: StepId, run: StepFn) -> Step {
        Step { stage: Stage::Final, ..Step::early(id, run) }
    }
    /// The same step with earlier steps' files applied first ([`Flush`]).
    pub const fn flushing(self, flush: Flush) -> Step {
        Step { flush, ..self }
    }
    const fn at_boot_only(self) -> Step {
        Step { boot_only: true, ..self }
    }
    /// The same step, placed right before `id` and skipping it when it fails.
    pub const fn gating(self, id: StepId) -> Step {
        Step { before: Some(id), gate: true, ..self }
    }
    fn needs_flush(&self, mode: Mode) -> bool {
        match self.flush {
            Flush::No => false,
            Flush::WhenLive => mode == Mode::Live,
            Flush::WhenCommandsRun => {
                matches!(mode, Mode::Live | Mode::Rooted { run_commands: true })
            }
        }
    }
}

/// First boot's steps, in the order they run.
pub const BUILTIN: &[Step] = &[
    Step::early(StepId::Hostname, identity::hostname),
    Step::early(StepId::MachineId, identity::machine_id),
    Step::early(StepId::SshHostKeys, identity::ssh_host_keys),
    Step::early(StepId::Network, network_files),
    Step::early(StepId::NetworkLive, netlink::step).flushing(Flush::WhenLive),
    Step::early(StepId::Dns, timedns::dns),
    Step::early(StepId::Ntp, timedns::ntp),
    Step::early(StepId::Bootcmd, commands::bootcmd).flushing(Flush::WhenCommandsRun).at_boot_only(),
    Step::early(StepId::WriteFiles, write_files_now),
    Step::early(StepId::Users, users::step),
    Step::late(StepId::NetworkOnline, online::step),
    Step::late(StepId::WriteFilesDeferred, write_files_deferred),
    Step::late(StepId::Runcmd, commands::runcmd).flushing(Flush::WhenCommandsRun),
];

fn write_files_now(c: &Ctx<'_>) -> Result<Outcome, StepError> {
    files::write_files(c, false)
}

fn write_files_deferred(c: &Ctx<'_>) -> Result<Outcome, StepError> {
    files::write_files(c, true)
}

/// `base` with each of `extra` placed ([`Step::before`]): right before its step, or last when
/// it names none (or one not in `base`). A step already in `base` is not added twice.
pub fn place(mut base: Vec<Step>, extra: &[Step]) -> Vec<Step> {
    for s in extra {
        if base.iter().any(|b| b.id == s.id) {
            continue;
        }
        match s.before.and_then(|id| base.iter().position(|b| b.id == id)) {
            Some(at) => base.insert(at, *s),
            None => base.push(*s),
        }
    }
    base
}

/// The steps of the final stage among `steps`, in order.
pub fn final_steps(steps: &[Step]) -> impl Iterator<Item = StepId> + '_ {
    steps.iter().filter(|s| s.stage == Stage::Final).map(|s| s.id)
}

/// Applies the plan: every built-in step in order, each timed and recorded ([`Stage::All`]).
pub fn run(root: &Root, plan: &Plan, mode: Mode, state: &PerInstance) -> Vec<StepRecord> {
    run_steps(root, plan, mode, state, Stage::All, BUILTIN)
}

/// The built-in steps of one stage ([`run_steps`] over [`BUILTIN`]).
pub fn run_stage(
    root: &Root,
    plan: &Plan,
    mode: Mode,
    state: &PerInstance,
    stage: Stage,
) -> Vec<StepRecord> {
    run_steps(root, plan, mode, state, stage, BUILTIN)
}

/// Applies the steps of `steps` that belong to `stage`, in order, each timed and recorded. A
/// failed step does not stop the rest (a node with a broken NTP setting should still get its
/// network).
pub fn run_steps(
    root: &Root,
    plan: &Plan,
    mode: Mode,
    state: &PerInstance,
    stage: Stage,
    steps: &[Step],
) -> Vec<StepRecord> {
    run_steps_with(root, plan, mode, state, stage, steps, None)
}

/// [`run_steps`] with the configured role's settings for its steps ([`Ctx::role`]).
pub fn run_steps_with(
    root: &Root,
    plan: &Plan,
    mode: Mode,
    state: &PerInstance,
    stage: Stage,
    steps: &[Step],
    role: Option<RoleData<'_>>,
) -> Vec<StepRecord> {
    let sub = SubRecords::default();
    let ctx = Ctx { root, plan, mode, state, role, sub: &sub };
    let mut out = Vec::with_capacity(steps.len() + 1);
    // The whole run's file changes are staged and applied together after the last step, so
    // that the files a run replaces cost one sync before their renames, not one per step.
    // Each step is an inner level: a failed step's changes are discarded, the others kept.
    let run_staging = root.stage();
    // a failed gate ([`Step::gate`]) and the step it keeps from running
    let mut gated: Option<(StepId, StepId)> = None;
    for step in steps.iter().filter(|s| stage.includes(s)) {
        if let Some((gate, _)) = gated.filter(|(_, blocked)| *blocked == step.id) {
            tracing::warn!(step = step.id.as_str(), "not run: {gate} failed");
            out.push(StepRecord {
                name: step.id.as_str().into(),
                status: StepStatus::Skipped,
                detail: format!("not run: {gate} failed"),
                error: None,
                duration_ms: 0,
            });
            continue;
        }
        let rec = run_one(&ctx, step);
        if let (true, Some(blocked), StepStatus::Failed) = (step.gate, step.before, rec.status) {
            gated = Some((step.id, blocked));
        }
        out.append(&mut sub.0.take());
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
            let error = crate::error::chain(&e);
            tracing::error!("applying the first-boot writes: {error}");
            out.push(StepRecord {
                name: SYNC_STEP.as_str().into(),
                status: StepStatus::Failed,
                detail: "the steps' files may be missing or not durable; they run again".into(),
                error: Some(error),
                duration_ms,
            });
        }
    }
    out
}

/// One step, in its span, staged as an inner level, timed and recorded.
fn run_one(ctx: &Ctx<'_>, step: &Step) -> StepRecord {
    let name = step.id.as_str();
    let span = tracing::info_span!("step", name);
    let _g = span.enter();
    let t = Instant::now();
    let root = ctx.root;
    // A step that starts other processes that read the files (networkd, the commands) gets
    // the earlier steps' files applied first.
    let flushed = if step.needs_flush(ctx.mode) { root.flush_staged().map(|_| ()) } else { Ok(()) };
    let staging = root.stage();
    let result = match flushed {
        Ok(()) => (step.run)(ctx).and_then(|outcome| {
            staging.commit().map(|_| outcome).map_err(|e| StepError::wrap("stage", e))
        }),
        Err(e) => Err(StepError::wrap("apply the earlier steps' files first", e)),
    };
    let duration_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (status, detail, error) = match result {
        Ok(Outcome::Ok(detail)) => {
            tracing::info!(duration_ms, "{detail}");
            (StepStatus::Ok, detail, None)
        }
        Ok(Outcome::Skipped(detail)) => {
            tracing::info!(duration_ms, "skipped: {detail}");
            (StepStatus::Skipped, detail, None)
        }
        Err(e) => {
            let error = crate::error::chain(&e);
            tracing::error!(duration_ms, "failed: {error}");
            (StepStatus::Failed, String::new(), Some(error))
        }
    };
    StepRecord { name: name.into(), status, detail, error, duration_ms }
}

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
