//! The command implementations.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::plan::{apply_issues, build_plan};
use super::{SourceArgs, EXIT_ERROR, EXIT_OK, EXIT_STEP_FAILED};
use crate::root::{FileOpts, Root};
use crate::schema::{self, Config};
use crate::sources::{self, chain, Gathered, SourceOptions};
use crate::state::{StageRun, State, Status};
use crate::steps::{self, Mode, PerInstance, Stage, StepRecord, StepStatus};

/// Source options for the command line.
pub fn source_options(src: &SourceArgs) -> SourceOptions {
    let mut opts = match &src.root {
        Some(r) => SourceOptions::rooted(r),
        None => SourceOptions::live(),
    };
    opts.ovf_env_file.clone_from(&src.ovf_env);
    opts.guestinfo_dir.clone_from(&src.guestinfo_dir);
    opts
}

/// A command's outcome: its exit code, or a message that makes it exit 1.
type Outcome = Result<i32, String>;

/// Prints a failed command's message once; returns the exit code.
fn finish(outcome: Outcome) -> i32 {
    outcome.unwrap_or_else(|e| {
        eprintln!("capstan-agent: {e}");
        EXIT_ERROR
    })
}

/// The value of a lookup that must find something: `missing` names what was not there.
fn required<T, E: std::error::Error>(
    found: Result<Option<T>, E>,
    missing: impl FnOnce() -> String,
) -> Result<T, String> {
    found.map_err(|e| chain(&e))?.ok_or_else(missing)
}

/// The root the sources' files and the effects go to (`--root DIR`, created if missing, or
/// `/`) and where the sources are read from: what `firstboot` and `render` share.
fn open(src: &SourceArgs) -> Result<(Root, SourceOptions), String> {
    let dir = src.root.as_deref().unwrap_or(Path::new("/"));
    if src.root.is_some() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("creating root {}: {e}", dir.display()))?;
    }
    let root = Root::new(dir).map_err(|e| chain(&e))?;
    Ok((root, source_options(src)))
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// One pass of first boot, every step ([`Stage::All`]): gather, plan, run the steps, record.
pub fn apply_once(opts: &SourceOptions, root: &Root, mode: Mode, scrub: bool) -> Status {
    apply_stage(opts, root, mode, scrub, Stage::All).0
}

/// One stage of first boot. Returns the merged status and the names of the steps that failed
/// in this run (the final stage's exit code does not repeat the early stage's failures).
pub fn apply_stage(
    opts: &SourceOptions,
    root: &Root,
    mode: Mode,
    scrub: bool,
    stage: Stage,
) -> (Status, Vec<String>) {
    let pass = Pass { root, mode, scrub, started: Instant::now(), started_at: now_secs() };
    let g = sources::gather(opts);
    let gather_ms = pass.started.elapsed().as_millis() as u64;
    if stage == Stage::Final {
        return apply_final(&pass, &g);
    }
    let st = apply_gathered_stage(&pass, &g, gather_ms, stage);
    let failed = st.failed_steps().into_iter().map(str::to_owned).collect();
    (st, failed)
}

/// [`apply_once`] with sources already gathered (the daemon's re-run for a new instance-id:
/// every step, the network is up by then).
pub fn apply_gathered(
    g: &Gathered,
    root: &Root,
    mode: Mode,
    scrub: bool,
    started: Instant,
    started_at: u64,
    gather_ms: u64,
) -> Status {
    apply_gathered_stage(&Pass { root, mode, scrub, started, started_at }, g, gather_ms, Stage::All)
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

/// The detail of a final-stage step recorded by the early stage.
pub const PENDING_DETAIL: &str =
    "runs in the final stage (capstan-agent-final.service: after network-online and the container runtime)";

/// The early stage or all of first boot, with sources gathered; records the run (replacing
/// the instance's earlier record) and keeps the final stage's part of the plan.
fn apply_gathered_stage(pass: &Pass, g: &Gathered, gather_ms: u64, stage: Stage) -> Status {
    let &Pass { root, mode, scrub, started, started_at } = pass;
    for line in g.error_lines() {
        tracing::warn!("{line}");
    }
    let state = State::new(root.clone());
    let id = g.instance_id.to_string();
    let mut extra_errors = Vec::new();
    let previous = match state.current_instance() {
        Ok(p) => p,
        Err(e) => {
            extra_errors.push(format!("state: {}", chain(&e)));
            None
        }
    };
    let new_instance = previous.as_deref() != Some(id.as_str());
    let prior = match state.load(&id) {
        Ok(s) => s,
        Err(e) => {
            extra_errors.push(format!("state: {}", chain(&e)));
            None
        }
    };
    let done = prior.map(|s| s.done).unwrap_or_default();
    tracing::info!(
        instance_id = %id,
        origin = %g.instance_id_origin,
        new_instance,
        "first boot"
    );
    let (plan, issues) = build_plan(g);
    let per_instance = PerInstance { done: done.clone() };
    let mut records = steps::run_stage(root, &plan, mode, &per_instance, stage);
    if stage == Stage::Early {
        // Shown as pending until the final stage replaces them.
        let at = records.iter().position(|r| r.name == steps::SYNC_STEP).unwrap_or(records.len());
        let pending = steps::FINAL_STEPS.iter().map(|n| StepRecord {
            name: (*n).into(),
            status: StepStatus::Pending,
            detail: PENDING_DETAIL.into(),
            error: None,
            duration_ms: 0,
        });
        records.splice(at..at, pending);
    }
    apply_issues(&mut records, g, &issues, gather_ms);
    // What the final stage applies, as planned now (user-data is scrubbed below).
    let final_plan = steps::Plan {
        instance_id: plan.instance_id.clone(),
        files: plan.files.iter().filter(|f| f.defer).cloned().collect(),
        runcmd: plan.runcmd.clone(),
        ..steps::Plan::default()
    };
    if let Err(e) = state.save_final_plan(&id, &final_plan) {
        extra_errors.push(format!("state (final stage plan): {}", chain(&e)));
    }
    let mut done = done;
    // Steps count as done only when their files were applied (no failed `sync` record); the
    // record saved below is renamed only after a sync makes them durable.
    if !records.iter().any(|r| r.name == steps::SYNC_STEP) {
        done.extend(records.iter().filter(|r| r.status == StepStatus::Ok).map(|r| r.name.clone()));
    }
    // The steps log themselves; issues charged to them by the sources are logged here.
    for i in &issues {
        tracing::error!(step = i.step, "{}", i.message);
    }
    if scrub {
        // Keep what we are about to overwrite: the role needs its secrets at every boot.
        match state.save_secrets(&id, &g.guestinfo_secrets()) {
            Ok(()) => {
                for e in g.scrub_secrets() {
                    tracing::warn!("scrubbing consumed secrets: {e}");
                }
            }
            // Scrubbing what could not be kept would lose it: leave guestinfo as it is.
            Err(e) => extra_errors.push(format!("state (secrets not scrubbed): {}", chain(&e))),
        }
    }
    let mut status = Status::new(
        g,
        new_instance,
        started_at,
        started.elapsed().as_millis() as u64,
        records,
        extra_errors,
    );
    status.done = done;
    status.stages = vec![StageRun {
        stage: stage.name().into(),
        started_at,
        duration_ms: status.duration_ms,
        result: status.result.clone(),
    }];
    if let Err(e) = state.save(&status) {
        tracing::error!("recording state: {}", chain(&e));
        status.result = "failed".into();
    }
    if scrub {
        publish_status(g, &status);
    }
    status
}

/// The final stage: the steps of [`steps::FINAL_STEPS`] on the plan the early stage kept for
/// this instance, merged into its record. When no early stage is recorded for the current
/// instance-id (its unit did not run, or a new clone came up without it), every step runs
/// instead: commands must not run on a node whose identity, network, files and users are
/// another instance's. When the early stage ran but a step failed, the final steps run anyway
/// (as cloud-final runs after a failed init module); the record's `result` stays `failed`.
fn apply_final(pass: &Pass, g: &Gathered) -> (Status, Vec<String>) {
    let &Pass { root, mode, scrub, started, started_at } = pass;
    let state = State::new(root.clone());
    let id = g.instance_id.to_string();
    let current = state.current_instance().ok().flatten();
    let prior =
        if current.as_deref() == Some(id.as_str()) { state.load(&id).ok().flatten() } else { None };
    let final_plan = state.load_final_plan(&id);
    let (mut status, plan) = match (prior, final_plan) {
        (Some(p), Ok(Some(plan))) => (p, plan),
        (prior, plan) => {
            let why = match (prior, plan) {
                (None, _) => format!(
                    "no early stage recorded for instance-id {id} (recorded: {})",
                    current.as_deref().unwrap_or("none")
                ),
                (Some(_), Ok(_)) => format!("no final-stage plan kept for instance-id {id}"),
                (Some(_), Err(e)) => format!("final-stage plan: {}", chain(&e)),
            };
            tracing::warn!("{why}: running every step now");
            let gather_ms = started.elapsed().as_millis() as u64;
            let st = apply_gathered_stage(pass, g, gather_ms, Stage::All);
            let failed = st.failed_steps().into_iter().map(str::to_owned).collect();
            return (st, failed);
        }
    };
    tracing::info!(instance_id = %id, "first boot, final stage");
    let per_instance = PerInstance { done: status.done.clone() };
    let mut records = steps::run_stage(root, &plan, mode, &per_instance, Stage::Final);
    // A value refused for a final step (say `commands.runcmd`) fails it, as at the early stage.
    let (_, issues) = build_plan(g);
    for i in issues.iter().filter(|i| steps::FINAL_STEPS.contains(&i.step)) {
        if let Some(r) = records.iter_mut().find(|r| r.name == i.step) {
            r.status = StepStatus::Failed;
            r.error = Some(match r.error.take() {
                Some(prev) => format!("{}; {prev}", i.message),
                None => i.message.clone(),
            });
        }
    }
    let synced = !records.iter().any(|r| r.name == steps::SYNC_STEP);
    if synced {
        status
            .done
            .extend(records.iter().filter(|r| r.status == StepStatus::Ok).map(|r| r.name.clone()));
    }
    let failed: Vec<String> =
        records.iter().filter(|r| r.status == StepStatus::Failed).map(|r| r.name.clone()).collect();
    for rec in records {
        match status.steps.iter_mut().find(|r| r.name == rec.name) {
            Some(r) => *r = rec,
            None => status.steps.push(rec),
        }
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    status.duration_ms += duration_ms;
    status.stages.push(StageRun {
        stage: Stage::Final.name().into(),
        started_at,
        duration_ms,
        result: if failed.is_empty() { "ok" } else { "failed" }.into(),
    });
    let any_failed = status.steps.iter().any(|r| r.status == StepStatus::Failed);
    status.result = if any_failed { "failed" } else { "ok" }.into();
    if let Err(e) = state.save(&status) {
        tracing::error!("recording state: {}", chain(&e));
        status.result = "failed".into();
    }
    if scrub {
        publish_status(g, &status);
    }
    (status, failed)
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

/// `capstan-agent firstboot`.
pub fn firstboot(src: &SourceArgs, run_commands: bool, scrub: bool, stage: Stage) -> i32 {
    let (root, opts) = match open(src) {
        Ok(o) => o,
        Err(e) => return finish(Err(e)),
    };
    let mode = if src.root.is_some() { Mode::Rooted { run_commands } } else { Mode::Live };
    // Under --root nothing is written outside DIR, so guestinfo is only scrubbed when asked.
    let scrub = scrub || src.root.is_none();
    let (status, failed) = apply_stage(&opts, &root, mode, scrub, stage);
    if failed.is_empty() {
        tracing::info!(ms = status.duration_ms, stage = stage.name(), "first boot complete");
        EXIT_OK
    } else {
        eprintln!(
            "capstan-agent: first boot ({} stage) finished with failed steps: {}",
            stage.name(),
            failed.join(", ")
        );
        EXIT_STEP_FAILED
    }
}

/// `capstan-agent status`.
pub fn status(root: Option<&Path>, json: bool) -> i32 {
    finish(show_status(root.unwrap_or(Path::new("/")), json))
}

fn show_status(dir: &Path, json: bool) -> Outcome {
    let root = Root::new(dir).map_err(|e| chain(&e))?;
    let status = required(State::new(root.clone()).load_current(), || {
        format!("no first boot recorded under {}", dir.display())
    })?;
    // The live role state (VRRP, VIP, backends) on the appliance itself.
    let lb = if root.is_live() && status.role == "lb" { live_lb_status() } else { None };
    if json {
        let mut v = serde_json::to_value(&status).unwrap_or_default();
        if let (Some(lb), Some(obj)) = (&lb, v.as_object_mut()) {
            obj.insert("lb".into(), serde_json::to_value(lb).unwrap_or_default());
        }
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
    } else {
        print!("{}", human_status(&status));
        if let Some(lb) = &lb {
            println!("lb");
            match serde_json::to_string_pretty(lb) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("capstan-agent: {e}"),
            }
        }
    }
    Ok(if status.failed() { EXIT_STEP_FAILED } else { EXIT_OK })
}

/// The lb role's live state, from the current settings (gathered as at boot).
fn live_lb_status() -> Option<crate::lb::LbStatus> {
    let g = sources::gather(&SourceOptions::live());
    g.config.lb.as_ref().map(|lb| crate::lb::status(lb, &crate::lb::LbPaths::appliance()))
}

/// The status as a terminal table.
pub fn human_status(s: &Status) -> String {
    let mut o = String::new();
    o.push_str(&format!("instance-id  {} ({})\n", s.instance_id, s.instance_id_origin));
    o.push_str(&format!("result       {} in {} ms\n", s.result, s.duration_ms));
    o.push_str(&format!("role         {}\n", s.role));
    o.push_str(&format!("network      {}\n", s.network_source));
    if !s.stages.is_empty() {
        let runs: Vec<String> = s
            .stages
            .iter()
            .map(|r| format!("{} {} in {} ms", r.stage, r.result, r.duration_ms))
            .collect();
        o.push_str(&format!("stages       {}\n", runs.join(", ")));
    }
    o.push_str("sources\n");
    for src in &s.sources {
        o.push_str(&format!("  {:<11} {} ({} values)\n", src.name, src.location, src.values));
    }
    o.push_str("steps\n");
    for st in &s.steps {
        let tail = match &st.error {
            Some(e) => format!("{} | error: {e}", st.detail),
            None => st.detail.clone(),
        };
        o.push_str(&format!(
            "  {:<8} {:<21} {:>6} ms  {}\n",
            st.status.to_string(),
            st.name,
            st.duration_ms,
            tail
        ));
    }
    o.push_str("values\n");
    for v in &s.values {
        o.push_str(&format!("  {} = {}  ({})\n", v.path, v.value, v.origin));
    }
    if !s.errors.is_empty() {
        o.push_str("refused\n");
        for e in &s.errors {
            o.push_str(&format!("  {e}\n"));
        }
    }
    o
}

/// `capstan-agent config schema`.
pub fn config_schema(json: bool, ovf: bool, markdown: bool, profile: &str) -> i32 {
    if ovf {
        if schema::profile(profile).is_none() {
            eprintln!(
                "capstan-agent: unknown profile {profile:?} (known: {})",
                schema::profile_names().join(", ")
            );
            return EXIT_ERROR;
        }
        print!("{}", schema::product_section_xml(profile));
    } else if markdown {
        print!("{}", schema::markdown());
    } else if json {
        println!("{}", schema_json());
    } else {
        for s in schema::settings() {
            println!("capstan.{:<28} {:<14} {}", s.path, s.kind.name(), s.default.unwrap_or(""));
        }
    }
    EXIT_OK
}

/// The schema as JSON (`config schema --json`).
pub fn schema_json() -> String {
    let settings: Vec<serde_json::Value> = schema::settings()
        .iter()
        .map(|s| {
            serde_json::json!({
                "path": s.path,
                "key": format!("{}{}", schema::KEY_PREFIX, s.path),
                "guestinfo": format!("guestinfo.{}{}", schema::KEY_PREFIX, s.path),
                "type": s.kind.name(),
                "accepts": s.kind.describe(),
                "label": s.label,
                "description": s.description,
                "default": s.default,
                "profile_defaults": s.profile_defaults.iter().map(|(p, v)| (p.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
                "category": s.category,
                "user_configurable": s.user_configurable,
                "secret": s.secret,
                "profiles": match s.applies { schema::Applies::All => None, schema::Applies::Profiles(p) => Some(p) },
            })
        })
        .collect();
    let doc = serde_json::json!({
        "version": schema::VERSION,
        "nic_slots": schema::NIC_SLOTS,
        "settings": settings,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// `capstan-agent config check FILE`: exit 0 when every value is valid.
pub fn config_check(file: &Path) -> i32 {
    let flat = match required(schema::read_toml_file(file, "file"), || {
        format!("{}: no such file", file.display())
    }) {
        Ok(f) => f,
        Err(e) => return finish(Err(e)),
    };
    let n = flat.len();
    let config = Config::from_flat(&flat.into_iter().collect(), false);
    if let Some(why) = &config.role_unconfigured {
        println!("{}: note: {why} (set it at deploy time)", file.display());
    }
    if config.errors.is_empty() {
        println!("{}: {n} settings, all valid", file.display());
        EXIT_OK
    } else {
        for e in &config.errors {
            eprintln!("{}: {}: {}", file.display(), e.path, e.reason);
        }
        EXIT_ERROR
    }
}

/// `capstan-agent render --root DIR`: the files the configuration produces, nothing started.
pub fn render(src: &SourceArgs) -> i32 {
    finish(render_files(src))
}

fn render_files(src: &SourceArgs) -> Outcome {
    if src.root.is_none() {
        return Err("render needs --root DIR".into());
    }
    let (root, opts) = open(src)?;
    let g = sources::gather(&opts);
    let mut failed = false;
    for line in g.error_lines() {
        eprintln!("capstan-agent: {line}");
        failed = true;
    }
    let (plan, issues) = build_plan(&g);
    for i in &issues {
        if !g.error_lines().contains(&i.message) {
            eprintln!("capstan-agent: {}", i.message);
        }
        failed = true;
    }
    let mut files: Vec<(PathBuf, String, u32)> = Vec::new();
    for f in steps::network::render(&plan.network) {
        files.push((PathBuf::from("/etc/systemd/network").join(&f.name), f.content, 0o644));
    }
    if let Some(s) = steps::timedns::render_resolved(&plan.dns) {
        files.push(("/etc/systemd/resolved.conf.d/capstan.conf".into(), s, 0o644));
    }
    if let Some(ntp) = &plan.ntp {
        if let Some(s) = steps::timedns::render_timesyncd(ntp) {
            files.push(("/etc/systemd/timesyncd.conf.d/capstan.conf".into(), s, 0o644));
        }
    }
    if let Some(lb) = &g.config.lb {
        for f in crate::lb::render(lb) {
            files.push((f.path, f.contents, f.mode));
        }
    }
    for (path, contents, mode) in &files {
        match root.write(path, contents.as_bytes(), FileOpts::mode(*mode)) {
            Ok(_) => println!("{}", path.display()),
            Err(e) => {
                eprintln!("capstan-agent: {}", chain(&e));
                failed = true;
            }
        }
    }
    root.sync().map_err(|e| chain(&e))?;
    Ok(if failed { EXIT_STEP_FAILED } else { EXIT_OK })
}
