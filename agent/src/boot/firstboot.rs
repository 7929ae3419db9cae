//! The stages of first boot on gathered sources: plan, run, record, scrub, publish.

use std::collections::BTreeSet;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::plan::{apply_issues, build_plan};
use crate::error::chain;
use crate::root::Root;
use crate::sources::{self, Gathered, SourceOptions};
use crate::state::{RunResult, SourceRecord, StageRun, State, Status, ValueRecord};
use crate::steps::{
    self, Mode, PerInstance, Plan, Stage, Step, StepRecord, StepStatus, BUILTIN, SYNC_STEP,
};

/// The detail of a final-stage step recorded by the early stage.
pub const PENDING_DETAIL: &str =
    "runs in the final stage (capstan-agent-final.service: after network-online and the container runtime)";

/// What one stage did: the merged status and the names of the steps that failed in this run
/// (the final stage's exit code does not repeat the early stage's failures).
#[derive(Debug, Clone)]
pub struct StageOutcome {
    /// The instance's record after the run.
    pub status: Status,
    /// The steps that failed in this run.
    pub failed: Vec<String>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// One pass of first boot: what its stages share.
struct Pass<'a> {
    /// Where the effects go.
    root: &'a Root,
    /// Live, or confined to the root.
    mode: Mode,
    /// Overwrite consumed secrets in guestinfo and publish the short status there.
    scrub: bool,
    /// When the pass began, before the sources were gathered (its recorded duration).
    started: Instant,
    /// The same moment in seconds since the epoch (its recorded start).
    started_at: u64,
}

/// The configured role's settings, for its steps.
fn role(g: &Gathered) -> Option<steps::RoleData<'_>> {
    g.config.role_settings.as_ref().map(|s| s.as_step_data())
}

/// The steps of a run: the built-in ones, then the configured role's (placed by
/// [`steps::place`]); the roles' [`crate::roles::Role::plan_steps`] join once the plan is built.
pub fn steps_for(g: &Gathered) -> Vec<Step> {
    match crate::roles::get(g.config.role) {
        Some(role) => steps::place(BUILTIN.to_vec(), role.steps()),
        None => BUILTIN.to_vec(),
    }
}

/// One pass of first boot, every step ([`Stage::All`]): gather, plan, run the steps, record.
pub fn run_once(opts: &SourceOptions, root: &Root, mode: Mode, scrub: bool) -> Status {
    run_stage(opts, root, mode, scrub, Stage::All).status
}

/// One stage of first boot: gather, plan, run the stage's steps, record.
pub fn run_stage(
    opts: &SourceOptions,
    root: &Root,
    mode: Mode,
    scrub: bool,
    stage: Stage,
) -> StageOutcome {
    let pass = Pass { root, mode, scrub, started: Instant::now(), started_at: now_secs() };
    let g = sources::gather(opts);
    let gather_ms = pass.started.elapsed().as_millis() as u64;
    if stage == Stage::Final {
        return run_final(&pass, &g);
    }
    outcome(run_gathered(&pass, &g, gather_ms, stage, &steps_for(&g)))
}

fn outcome(status: Status) -> StageOutcome {
    let failed = status.failed_steps().into_iter().map(str::to_owned).collect();
    StageOutcome { status, failed }
}

/// Every step but the boot-only ones ([`Step::boot_only`]: `bootcmd`), with sources already
/// gathered: the daemon's re-run for a new instance-id on a running machine (the network is
/// up by then). `started` is when the gathering began.
pub fn rerun(
    g: &Gathered,
    root: &Root,
    mode: Mode,
    scrub: bool,
    started: Instant,
    gather_ms: u64,
) -> Status {
    let steps: Vec<Step> = steps_for(g).into_iter().filter(|s| !s.boot_only).collect();
    rerun_steps(g, root, mode, scrub, (started, gather_ms), &steps)
}

/// [`rerun`] with the caller's list of steps (`reidentify`: a live clone's, which add the
/// RNG reseed and tell running services). `timing` is when the gathering began and how long
/// it took.
pub fn rerun_steps(
    g: &Gathered,
    root: &Root,
    mode: Mode,
    scrub: bool,
    timing: (Instant, u64),
    steps: &[Step],
) -> Status {
    let pass = Pass { root, mode, scrub, started: timing.0, started_at: now_secs() };
    run_gathered(&pass, g, timing.1, Stage::All, steps)
}

/// The state of the instance before this run: whether it is new, what it already did, and
/// what could not be read.
fn prior(state: &State, id: &str, errors: &mut Vec<String>) -> (bool, BTreeSet<String>) {
    let previous = state.current_instance().unwrap_or_else(|e| {
        errors.push(format!("state: {}", chain(&e)));
        None
    });
    let done = state
        .load(id)
        .unwrap_or_else(|e| {
            errors.push(format!("state: {}", chain(&e)));
            None
        })
        .map(|s| s.done)
        .unwrap_or_default();
    (previous.as_deref() != Some(id), done)
}

/// The early stage's records of the final steps: pending until the final stage replaces them.
fn add_pending(records: &mut Vec<StepRecord>, steps: &[Step]) {
    let at = records.iter().position(|r| r.name == SYNC_STEP).unwrap_or(records.len());
    let pending = steps::final_steps(steps).map(|id| StepRecord {
        name: id.as_str().into(),
        status: StepStatus::Pending,
        detail: PENDING_DETAIL.into(),
        error: None,
        duration_ms: 0,
    });
    records.splice(at..at, pending);
}

/// The steps of `records` that count as done: only when their files were applied (no failed
/// `sync` record); the record saved after is renamed only after a sync makes them durable.
fn add_done(done: &mut BTreeSet<String>, records: &[StepRecord]) {
    if !records.iter().any(|r| r.name == SYNC_STEP) {
        done.extend(records.iter().filter(|r| r.status == StepStatus::Ok).map(|r| r.name.clone()));
    }
}

/// Keeps what the role needs of the secrets about to be overwritten, then scrubs them; when
/// they cannot be kept, guestinfo is left as it is (scrubbing would lose them).
fn keep_and_scrub(state: &State, g: &Gathered, id: &str, errors: &mut Vec<String>) {
    match state.save_secrets(id, &g.guestinfo_secrets()) {
        Ok(()) => {
            for e in g.scrub_secrets() {
                tracing::warn!("scrubbing consumed secrets: {e}");
            }
        }
        Err(e) => errors.push(format!("state (secrets not scrubbed): {}", chain(&e))),
    }
}

/// Saves the record; a record that cannot be saved fails the run.
fn record(pass: &Pass, state: &State, g: &Gathered, status: &mut Status) {
    if let Err(e) = state.save(status) {
        tracing::error!("recording state: {}", chain(&e));
        status.result = RunResult::Failed;
    }
    if pass.scrub {
        publish_status(g, status);
    }
}

/// The early stage or all of first boot, with sources gathered; records the run (replacing
/// the instance's earlier record) and keeps the final stage's part of the plan.
fn run_gathered(pass: &Pass, g: &Gathered, gather_ms: u64, stage: Stage, steps: &[Step]) -> Status {
    for line in g.error_lines() {
        tracing::warn!("{line}");
    }
    let state = State::new(pass.root.clone());
    let id = g.instance_id.to_string();
    let mut extra_errors = Vec::new();
    let (new_instance, mut done) = prior(&state, &id, &mut extra_errors);
    tracing::info!(instance_id = %id, origin = %g.instance_id_origin, new_instance, "first boot");
    let (mut plan, issues) = build_plan(g);
    let per_instance = PerInstance { done: done.clone() };
    let steps = &steps::place(steps.to_vec(), &crate::roles::plan_steps(&plan));
    let mut records = if g.refused {
        // the provider is there but its data was refused: nothing at all is applied (not
        // even a hostname or host keys from the defaults); the sources record says why
        plan = Plan { instance_id: plan.instance_id, ..Plan::default() };
        Vec::new()
    } else {
        steps::run_steps_with(pass.root, &plan, pass.mode, &per_instance, stage, steps, role(g))
    };
    if stage == Stage::Early && !g.refused {
        add_pending(&mut records, steps);
    }
    apply_issues(&mut records, g, &issues, gather_ms);
    // What the final stage applies, as planned now (user-data is scrubbed below).
    let final_plan = Plan {
        instance_id: plan.instance_id.clone(),
        // the node's name, for the roles' final steps (kubeadm's node name)
        hostname: plan.hostname.clone(),
        files: plan.files.iter().filter(|f| f.defer).cloned().collect(),
        runcmd: plan.runcmd.clone(),
        ..Plan::default()
    };
    if let Err(e) = state.save_final_plan(&id, &final_plan) {
        extra_errors.push(format!("state (final stage plan): {}", chain(&e)));
    }
    add_done(&mut done, &records);
    // The steps log themselves; issues charged to them by the sources are logged here.
    for i in &issues {
        tracing::error!(step = i.step.as_str(), "{}", i.message);
    }
    if pass.scrub {
        keep_and_scrub(&state, g, &id, &mut extra_errors);
    }
    let duration_ms = pass.started.elapsed().as_millis() as u64;
    let mut status =
        new_status(g, new_instance, pass.started_at, duration_ms, records, extra_errors);
    status.done = done;
    status.stages = vec![StageRun {
        stage,
        started_at: pass.started_at,
        duration_ms: status.duration_ms,
        result: status.result,
    }];
    record(pass, &state, g, &mut status);
    status
}

/// The status of a run from what was gathered and the step records.
fn new_status(
    g: &Gathered,
    new_instance: bool,
    started_at: u64,
    duration_ms: u64,
    steps: Vec<StepRecord>,
    extra_errors: Vec<String>,
) -> Status {
    let values = g
        .flat
        .iter()
        .map(|(path, v)| ValueRecord {
            path: path.clone(),
            value: if crate::schema::lookup(path).is_some_and(|s| s.secret) {
                "<secret>".into()
            } else {
                v.value.chars().take(200).collect()
            },
            origin: v.origin.clone(),
        })
        .collect();
    let failed = steps.iter().any(|s| s.status == StepStatus::Failed);
    let mut errors = g.error_lines();
    errors.extend(extra_errors);
    Status {
        schema_version: crate::schema::VERSION,
        instance_id: g.instance_id.to_string(),
        instance_id_origin: g.instance_id_origin.clone(),
        new_instance,
        started_at,
        duration_ms,
        role: g.config.role,
        network_source: g.config.network_source,
        sources: g
            .sources
            .iter()
            .map(|s| SourceRecord {
                name: s.name.clone(),
                location: s.location.clone(),
                values: s.values,
            })
            .collect(),
        values,
        errors,
        steps,
        result: RunResult::of(!failed),
        done: BTreeSet::new(),
        stages: Vec::new(),
        reidentified: None,
    }
}

/// The early stage's record and kept plan for this instance, or why the final stage cannot
/// build on them.
fn early_record(state: &State, id: &str) -> Result<(Status, Plan), String> {
    let current = state.current_instance().ok().flatten();
    let prior = if current.as_deref() == Some(id) { state.load(id).ok().flatten() } else { None };
    match (prior, state.load_final_plan(id)) {
        (Some(p), Ok(Some(plan))) => Ok((p, plan)),
        (None, _) => Err(format!(
            "no early stage recorded for instance-id {id} (recorded: {})",
            current.as_deref().unwrap_or("none")
        )),
        (Some(_), Ok(None)) => Err(format!("no final-stage plan kept for instance-id {id}")),
        (Some(_), Err(e)) => Err(format!("final-stage plan: {}", chain(&e))),
    }
}

/// The final stage: the final steps on the plan the early stage kept for this instance,
/// merged into its record. When no early stage is recorded for the current instance-id (its
/// unit did not run, or a new clone came up without it), every step runs instead: commands
/// must not run on a node whose identity, network, files and users are another instance's.
/// When the early stage ran but a step failed, the final steps run anyway (as cloud-final
/// runs after a failed init module); the record's `result` stays `failed`.
fn run_final(pass: &Pass, g: &Gathered) -> StageOutcome {
    let state = State::new(pass.root.clone());
    let id = g.instance_id.to_string();
    let (mut status, plan) = match early_record(&state, &id) {
        Ok(found) => found,
        Err(why) => {
            tracing::warn!("{why}: running every step now");
            let gather_ms = pass.started.elapsed().as_millis() as u64;
            return outcome(run_gathered(pass, g, gather_ms, Stage::All, &steps_for(g)));
        }
    };
    tracing::info!(instance_id = %id, "first boot, final stage");
    let per_instance = PerInstance { done: status.done.clone() };
    let steps = steps::place(steps_for(g), &crate::roles::plan_steps(&plan));
    let mut records = steps::run_steps_with(
        pass.root,
        &plan,
        pass.mode,
        &per_instance,
        Stage::Final,
        &steps,
        role(g),
    );
    charge_final_issues(g, &steps, &mut records);
    add_done(&mut status.done, &records);
    let failed: Vec<String> =
        records.iter().filter(|r| r.status == StepStatus::Failed).map(|r| r.name.clone()).collect();
    for rec in records {
        match status.steps.iter_mut().find(|r| r.name == rec.name) {
            Some(r) => *r = rec,
            None => status.steps.push(rec),
        }
    }
    let duration_ms = pass.started.elapsed().as_millis() as u64;
    status.duration_ms += duration_ms;
    status.stages.push(StageRun {
        stage: Stage::Final,
        started_at: pass.started_at,
        duration_ms,
        result: RunResult::of(failed.is_empty()),
    });
    let any_failed = status.steps.iter().any(|r| r.status == StepStatus::Failed);
    status.result = RunResult::of(!any_failed);
    record(pass, &state, g, &mut status);
    StageOutcome { status, failed }
}

/// A value refused for a final step (say `commands.runcmd`) fails it, as at the early stage.
fn charge_final_issues(g: &Gathered, steps: &[Step], records: &mut [StepRecord]) {
    let (_, issues) = build_plan(g);
    let finals: Vec<_> = steps::final_steps(steps).collect();
    for i in issues.iter().filter(|i| finals.contains(&i.step)) {
        if let Some(r) = records.iter_mut().find(|r| r.name == i.step) {
            r.status = StepStatus::Failed;
            r.error = Some(match r.error.take() {
                Some(prev) => format!("{}; {prev}", i.message),
                None => i.message.clone(),
            });
        }
    }
}

/// The one-line status published to `guestinfo.capstan.status` (vCenter and govc can read it
/// without logging in to the node).
pub fn short_status(status: &Status) -> String {
    let failed = status.failed_steps();
    if failed.is_empty() {
        format!(
            "ok instance-id={} steps={} ms={}",
            status.instance_id,
            status.steps.len(),
            status.duration_ms
        )
    } else {
        format!("failed instance-id={} failed-steps={}", status.instance_id, failed.join(","))
    }
}

fn publish_status(g: &Gathered, status: &Status) {
    let Some(gi) = &g.guestinfo else {
        return;
    };
    match gi.set("capstan.status", &short_status(status)) {
        Ok(()) => {}
        Err(crate::guestinfo::GuestinfoError::ReadOnly(t)) => {
            tracing::debug!("not publishing status: {t} is read-only")
        }
        Err(e) => tracing::warn!("publishing guestinfo.capstan.status: {}", chain(&e)),
    }
}
