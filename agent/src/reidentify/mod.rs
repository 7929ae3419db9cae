//! Live re-identification: a running machine becomes a new instance without a reboot (an
//! instant clone wakes up with its parent's memory: host name, machine-id, SSH host keys, RNG
//! state, addresses).
//!
//! - [`generation`]: noticing the fork (the kernel's vmgenid uevent where it sends one, the
//!   device's state in sysfs, the fast identity poll of a frozen parent's child);
//! - [`run`]: the re-identification itself, on the new instance's gathered sources: the
//!   first-boot steps for the new instance-id (a fresh machine-id, new SSH host keys, the
//!   host name, networkd files with the new MAC match, users, files, `runcmd`), with the RNG
//!   reseeded first where the kernel did not ([`rng`]), sshd told ([`services`]: `SIGHUP`),
//!   then what the daemon adds (the role's refresh, a heartbeat), each a step record with its
//!   duration, in the instance's `status`, and the `CAPSTAN-REIDENTIFIED` console line
//!   ([`console`]). Only what makes the machine the new instance is on that path: the steps
//!   that tell daemons of what is already true (systemd-hostnamed, networkd's reload, over
//!   D-Bus) run after the line on a thread of their own ([`Later`]), recorded `pending`, then
//!   with their outcome, and the `CAPSTAN-REIDENTIFIED-AFTER` line;
//! - [`freeze`]: `capstan-agent freeze`, preparing a parent to be forked.
//!
//! A new identity whose identity values are refused (a bad host name, a bad network in the
//! new guestinfo) is not applied at all: no new machine-id or keys beside the parent's name.
//!
//! Import rule: `reidentify` imports `boot`, `steps`, `state`, `systemd`, `guestinfo`; the
//! daemon and the CLI import it.

pub mod console;
pub mod freeze;
pub mod generation;
pub mod rng;
pub mod services;

use std::time::Instant;

use crate::boot::{self, build_plan};
use crate::root::Root;
use crate::sources::Gathered;
use crate::state::{Reidentified, RunResult, State, Status};
use crate::steps::{
    Ctx, Flush, Mode, Outcome as StepOutcome, PerInstance, Plan, Step, StepId, StepRecord,
    StepStatus,
};

/// What noticed the new generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The kernel's vmgenid uevent.
    Uevent,
    /// The identity probe of a frozen parent's child (every
    /// [`FROZEN_POLL`](generation::FROZEN_POLL)).
    FrozenPoll,
    /// The daemon's normal poll.
    Poll,
}

impl Trigger {
    /// `uevent`, `frozen-poll`, `poll`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Uevent => "uevent",
            Trigger::FrozenPoll => "frozen-poll",
            Trigger::Poll => "poll",
        }
    }
}

/// One re-identification to do.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Where the effects go.
    pub root: &'a Root,
    /// On the running system (else only files, under the root).
    pub live: bool,
    /// What noticed it.
    pub trigger: Trigger,
    /// When it was noticed (before the sources were gathered).
    pub detected: Instant,
    /// How long gathering the new instance's sources took.
    pub gather_ms: u64,
}

/// How a re-identification ended.
#[derive(Debug)]
pub enum Outcome {
    /// The machine is the new instance (some steps may have failed: see the status); the
    /// steps after the re-identified line still run.
    Done(Box<Status>, Later),
    /// The new identity was refused, nothing applied; one line per refused value, naming
    /// its source and key.
    Refused(Vec<String>),
}

/// The steps whose refused values refuse the whole identity.
const IDENTITY: &[StepId] = &[
    StepId::Hostname,
    StepId::MachineId,
    StepId::SshHostKeys,
    StepId::Network,
    StepId::NetworkLive,
];

/// The refused values that name the new instance (see the module docs); empty when it can
/// be applied.
pub fn identity_refusals(g: &Gathered) -> Vec<String> {
    if g.refused {
        return g.error_lines();
    }
    let (_, issues) = build_plan(g);
    issues.into_iter().filter(|i| IDENTITY.contains(&i.step)).map(|i| i.message).collect()
}

const fn live_step(id: StepId, run: crate::steps::StepFn) -> Step {
    Step::early(id, run).flushing(Flush::WhenLive)
}

/// The steps of a re-identification before the re-identified line: the RNG first, then
/// first boot's for a running machine (not `bootcmd`), with sshd told once every earlier
/// step's files are in place (after `network-live`, which applies them).
pub fn steps_for(g: &Gathered) -> Vec<Step> {
    let mut out = vec![Step::early(StepId::RngReseed, rng::step)];
    for s in boot::steps_for(g).into_iter().filter(|s| !s.boot_only) {
        match s.id {
            StepId::NetworkLive => {
                out.push(Step { run: services::network, ..s });
                out.push(live_step(StepId::SshdReload, services::sshd_reload));
            }
            _ => out.push(s),
        }
    }
    out
}

/// The steps after the re-identified line ([`services::DEFERRED`]): daemons told, over
/// D-Bus, of what is already true.
pub fn deferred_steps() -> Vec<Step> {
    services::DEFERRED
        .iter()
        .map(|id| match id {
            StepId::Hostnamed => live_step(*id, services::hostnamed),
            _ => live_step(*id, services::networkd_reload),
        })
        .collect()
}

fn ms_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The steps still running after the re-identified line, on a thread of their own.
#[derive(Debug, Default)]
pub struct Later(Option<std::thread::JoinHandle<Option<Status>>>);

impl Later {
    /// Waits for them; the record as saved with their outcome (`None`: nothing deferred, or
    /// the record could not be updated).
    pub fn wait(self) -> Option<Status> {
        self.0.and_then(|h| h.join().ok().flatten())
    }
}

/// What the deferred thread needs.
struct Deferred {
    root: Root,
    plan: Plan,
    mode: Mode,
    live: bool,
    detected: Instant,
    instance_id: String,
}

const PENDING_AFTER: &str = "runs after the re-identified line";

/// Pending records of the deferred steps, for the record saved before the line.
fn pending_records() -> Vec<StepRecord> {
    services::DEFERRED
        .iter()
        .map(|id| StepRecord {
            name: id.as_str().into(),
            status: StepStatus::Pending,
            detail: PENDING_AFTER.into(),
            error: None,
            duration_ms: 0,
        })
        .collect()
}

impl Deferred {
    /// Runs the deferred steps concurrently, then replaces their pending records in the
    /// instance's record, saves it and prints the `CAPSTAN-REIDENTIFIED-AFTER` line.
    fn run(self) -> Option<Status> {
        let per = PerInstance::default();
        let steps = deferred_steps();
        let records: Vec<StepRecord> = std::thread::scope(|s| {
            let running: Vec<_> = steps
                .iter()
                .map(|step| {
                    let (root, plan, mode, per) = (&self.root, &self.plan, self.mode, &per);
                    s.spawn(move || {
                        // A context per thread: its sub-records are the step's own.
                        let sub = crate::steps::SubRecords::default();
                        let ctx = &Ctx { root, plan, mode, state: per, role: None, sub: &sub };
                        let t = Instant::now();
                        let r = (step.run)(ctx)
                            .map(|o| match o {
                                StepOutcome::Ok(d) => (StepStatus::Ok, d),
                                StepOutcome::Skipped(d) => (StepStatus::Skipped, d),
                            })
                            .map_err(|e| crate::error::chain(&e));
                        record(step.id, t, r)
                    })
                })
                .collect();
            running.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let after_ms = ms_since(self.detected);
        for r in &records {
            match &r.error {
                Some(e) => tracing::warn!(step = %r.name, "after re-identifying: {e}"),
                None => {
                    tracing::info!(step = %r.name, r.duration_ms, "after re-identifying: {}", r.detail)
                }
            }
        }
        let state = State::new(self.root.clone());
        let mut status = state.load(&self.instance_id).ok().flatten()?;
        for r in records {
            if let Some(slot) = status
                .steps
                .iter_mut()
                .find(|s| s.name == r.name && s.status == StepStatus::Pending)
            {
                *slot = StepRecord {
                    detail: format!("after the re-identified line: {}", r.detail),
                    ..r
                };
            }
        }
        let failed = status.steps.iter().any(|s| s.status == StepStatus::Failed);
        status.result = RunResult::of(!failed);
        if let Some(re) = status.reidentified.as_mut() {
            re.after_ms = Some(after_ms);
        }
        // a newer instance (another fork) owns the record from now on
        if state.current_instance().ok().flatten().as_deref() != Some(self.instance_id.as_str()) {
            return None;
        }
        if let Err(e) = state.save(&status) {
            tracing::error!(
                "recording the steps after re-identifying: {}",
                crate::error::chain(&e)
            );
            return None;
        }
        let steps: Vec<serde_json::Value> = status
            .steps
            .iter()
            .filter(|s| services::DEFERRED.iter().any(|d| s.name == *d))
            .map(|s| serde_json::json!({"name": s.name, "status": s.status, "duration_ms": s.duration_ms}))
            .collect();
        let body = serde_json::json!({
            "instance_id": self.instance_id,
            "after_ms": after_ms,
            "result": status.result.as_str(),
            "steps": steps,
        });
        console::emit(&self.root, self.live, console::AFTER_MARK, &body);
        Some(status)
    }
}

/// Re-identifies this machine as the instance `g` describes (see the module docs). `after`
/// runs once the machine is the new instance and returns the daemon's own records (the
/// role's refresh, the heartbeat), appended to the status. The steps that only tell daemons
/// of what is already true run after the re-identified line ([`Later`]).
pub fn run(
    g: &Gathered,
    req: &Request<'_>,
    after: &mut dyn FnMut(&Status) -> Vec<StepRecord>,
) -> Outcome {
    let state = State::new(req.root.clone());
    let previous = state.current_instance().ok().flatten();
    let refused = identity_refusals(g);
    if !refused.is_empty() {
        for line in &refused {
            tracing::error!("new identity refused: {line}");
        }
        let body = serde_json::json!({
            "instance_id": g.instance_id.to_string(),
            "previous_instance_id": previous,
            "trigger": req.trigger.as_str(),
            "errors": refused,
        });
        console::emit(req.root, req.live, console::REFUSED_MARK, &body);
        return Outcome::Refused(refused);
    }
    tracing::info!(old = ?previous, new = %g.instance_id, trigger = req.trigger.as_str(), "re-identifying");
    let mode = if req.live { Mode::Live } else { Mode::Rooted { run_commands: false } };
    let steps = steps_for(g);
    let mut status =
        boot::rerun_steps(g, req.root, mode, req.live, (req.detected, req.gather_ms), &steps);
    status.steps.extend(after(&status));
    status.steps.extend(pending_records());
    let failed = status.steps.iter().any(|s| s.status == StepStatus::Failed);
    status.result = RunResult::of(!failed);
    status.duration_ms = ms_since(req.detected);
    status.reidentified = Some(Reidentified {
        previous_instance_id: previous.clone(),
        trigger: req.trigger.as_str().into(),
        duration_ms: status.duration_ms,
        gather_ms: req.gather_ms,
        after: services::DEFERRED.iter().map(|d| d.as_str().to_owned()).collect(),
        after_ms: None,
    });
    if let Err(e) = state.save(&status) {
        tracing::error!("recording the re-identification: {}", crate::error::chain(&e));
        status.result = RunResult::Failed;
    }
    freeze::thaw(req.root);
    let mut line = report(req, &status, g);
    if let Some(obj) = line.as_object_mut() {
        // noticing -> the line: the steps, then the record saved and the marker removed
        obj.insert("line_ms".into(), ms_since(req.detected).into());
    }
    console::emit(req.root, req.live, console::REIDENTIFIED_MARK, &line);
    let deferred = Deferred {
        root: req.root.clone(),
        plan: build_plan(g).0,
        mode,
        live: req.live,
        detected: req.detected,
        instance_id: status.instance_id.clone(),
    };
    let later = std::thread::Builder::new()
        .name("reidentify-after".into())
        .spawn(move || deferred.run())
        .map_err(|e| tracing::error!("starting the steps after re-identifying: {e}"))
        .ok();
    Outcome::Done(Box::new(status), Later(later))
}

/// The body of the `CAPSTAN-REIDENTIFIED` line: the facts (as the lab's `--json` names them),
/// the trigger, `reidentify_ms`, each step's name, status and duration, and the parts of the
/// gathering (`gather_phases`: name and microseconds).
fn report(req: &Request<'_>, status: &Status, g: &Gathered) -> serde_json::Value {
    let mut body = serde_json::to_value(console::facts(req.root, req.live)).unwrap_or_default();
    let steps: Vec<serde_json::Value> = status
        .steps
        .iter()
        .map(|s| {
            serde_json::json!({"name": s.name, "status": s.status, "duration_ms": s.duration_ms})
        })
        .collect();
    if let Some(obj) = body.as_object_mut() {
        let r = status.reidentified.as_ref();
        obj.insert(
            "previous_instance_id".into(),
            r.and_then(|r| r.previous_instance_id.clone()).into(),
        );
        obj.insert("trigger".into(), req.trigger.as_str().into());
        obj.insert("reidentify_ms".into(), status.duration_ms.into());
        obj.insert("gather_ms".into(), req.gather_ms.into());
        obj.insert("gather_phases".into(), serde_json::to_value(&g.phases).unwrap_or_default());
        obj.insert("result".into(), status.result.as_str().into());
        obj.insert("steps".into(), steps.into());
    }
    body
}

/// A record for the daemon's steps ([`run`]'s `after`).
pub fn record(id: StepId, t: Instant, outcome: Result<(StepStatus, String), String>) -> StepRecord {
    let duration_ms = ms_since(t);
    match outcome {
        Ok((status, detail)) => {
            StepRecord { name: id.as_str().into(), status, detail, error: None, duration_ms }
        }
        Err(e) => StepRecord {
            name: id.as_str().into(),
            status: StepStatus::Failed,
            detail: String::new(),
            error: Some(e),
            duration_ms,
        },
    }
}
