//! The command implementations: each calls the engine ([`crate::boot`], [`crate::schema`])
//! and prints what it returns. Every command ends in a [`Done`] or a [`CliError`];
//! [`exit_code`] maps both to the exit code by one exhaustive match.

use std::path::{Path, PathBuf};

use super::{SourceArgs, EXIT_ERROR, EXIT_OK, EXIT_STEP_FAILED};
use crate::boot::{self, BootError};
use crate::error::chain;
use crate::schema::{self, Config, TomlError};
use crate::state::Status;
use crate::steps::Stage;

/// How a command that ran ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Everything succeeded or was skipped.
    Ok,
    /// At least one step failed (the others still ran), or a value was refused.
    StepFailed,
    /// `config check`: the file has invalid values.
    Invalid,
}

/// Why a command could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The engine refused.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// `config check`: the file does not parse.
    #[error(transparent)]
    Toml(#[from] TomlError),
    /// `config check`: no such file.
    #[error("{}: no such file", .0.display())]
    NoSuchFile(PathBuf),
    /// `config schema --ovf`: an unknown profile.
    #[error("unknown profile {profile:?} (known: {known})")]
    UnknownProfile {
        /// What was asked for.
        profile: String,
        /// The profiles there are.
        known: String,
    },
    /// The daemon could not start.
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    /// Printing JSON failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// `freeze`: the root could not be opened.
    #[error(transparent)]
    Root(#[from] crate::root::RootError),
    /// `freeze` failed (nothing is left marked frozen).
    #[error(transparent)]
    Freeze(#[from] crate::reidentify::freeze::FreezeError),
}

/// The exit code of a command: the one place outcomes become numbers.
pub fn exit_code(outcome: Result<Done, CliError>) -> i32 {
    match outcome {
        Ok(Done::Ok) => EXIT_OK,
        Ok(Done::StepFailed) => EXIT_STEP_FAILED,
        Ok(Done::Invalid) => EXIT_ERROR,
        Err(e) => {
            eprintln!("capstan-agent: {}", chain(&e));
            match e {
                CliError::Boot(_)
                | CliError::Toml(_)
                | CliError::NoSuchFile(_)
                | CliError::UnknownProfile { .. }
                | CliError::Daemon(_)
                | CliError::Json(_)
                | CliError::Root(_)
                | CliError::Freeze(_) => EXIT_ERROR,
            }
        }
    }
}

/// `capstan-agent firstboot`.
pub fn firstboot(
    src: &SourceArgs,
    run_commands: bool,
    scrub: bool,
    stage: Stage,
) -> Result<Done, CliError> {
    let opts = src.options();
    let (root, source_opts) = opts.open()?;
    // Under --root nothing is written outside DIR, so guestinfo is only scrubbed when asked.
    let scrub = scrub || opts.live();
    let out = boot::run_stage(&source_opts, &root, opts.mode(run_commands), scrub, stage);
    if out.failed.is_empty() {
        tracing::info!(ms = out.status.duration_ms, stage = stage.name(), "first boot complete");
        Ok(Done::Ok)
    } else {
        eprintln!(
            "capstan-agent: first boot ({} stage) finished with failed steps: {}",
            stage.name(),
            out.failed.join(", ")
        );
        Ok(Done::StepFailed)
    }
}

/// `capstan-agent freeze`.
pub fn freeze(
    root: Option<&Path>,
    guestinfo_dir: Option<&Path>,
    no_rpc: bool,
    json: bool,
) -> Result<Done, CliError> {
    use crate::reidentify::freeze::{self, ForkRpc, FreezeOptions};
    let live = root.is_none();
    let dir = root.unwrap_or(Path::new("/"));
    let root = crate::root::Root::new(dir)?;
    let guestinfo: Option<Box<dyn crate::guestinfo::Guestinfo>> = match guestinfo_dir {
        Some(d) => Some(Box::new(crate::guestinfo::DirGuestinfo::new(d))),
        None if live => crate::sources::guestinfo_transport(&crate::sources::SourceOptions::live()),
        None => None,
    };
    let rpc: Option<Box<dyn ForkRpc>> = if live && !no_rpc {
        crate::guestinfo::backdoor::Backdoor::probe().ok().map(|b| Box::new(b) as Box<dyn ForkRpc>)
    } else {
        None
    };
    let report = freeze::freeze(&FreezeOptions { root, live, guestinfo, rpc })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for s in &report.steps {
            println!(
                "{:<8} {:<21} {:>6} ms  {}",
                s.status.to_string(),
                s.name,
                s.duration_ms,
                s.detail
            );
        }
        match report.resumed_after_ms {
            Some(ms) => println!("frozen; running again after {ms} ms"),
            None => println!("frozen: ready to fork ({})", freeze::FROZEN_FILE),
        }
    }
    Ok(Done::Ok)
}

/// `capstan-agent status`.
pub fn status(root: Option<&Path>, json: bool) -> Result<Done, CliError> {
    let (root, status) = boot::recorded_status(root.unwrap_or(Path::new("/")))?;
    // The live role state (VRRP, VIP, backends) on the appliance itself.
    let health = boot::role_health(&root, &status);
    if json {
        let mut v = serde_json::to_value(&status).unwrap_or_default();
        if let (Some((role, h)), Some(obj)) = (&health, v.as_object_mut()) {
            obj.insert(role.as_str().into(), h.clone());
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", human_status(&status));
        if let Some((role, h)) = &health {
            println!("{role}");
            match serde_json::to_string_pretty(h) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("capstan-agent: {e}"),
            }
        }
    }
    Ok(if status.failed() { Done::StepFailed } else { Done::Ok })
}

/// `capstan-agent render --root DIR`: the files the configuration produces, nothing started.
pub fn render(src: &SourceArgs) -> Result<Done, CliError> {
    let r = boot::render(&src.options())?;
    for line in &r.refused {
        eprintln!("capstan-agent: {line}");
    }
    for (path, written) in &r.files {
        match written {
            Ok(()) => println!("{}", path.display()),
            Err(e) => eprintln!("capstan-agent: {}", chain(e)),
        }
    }
    let failed = r.failed();
    r.sync.map_err(BootError::from)?;
    Ok(if failed { Done::StepFailed } else { Done::Ok })
}

/// The status as a terminal table.
pub fn human_status(s: &Status) -> String {
    let mut o = String::new();
    o.push_str(&format!("instance-id  {} ({})\n", s.instance_id, s.instance_id_origin));
    o.push_str(&format!("result       {} in {} ms\n", s.result, s.duration_ms));
    o.push_str(&format!("role         {}\n", s.role));
    o.push_str(&format!("network      {}\n", s.network_source));
    if let Some(r) = &s.reidentified {
        o.push_str(&format!(
            "reidentified from {} ({}) in {} ms, without a reboot\n",
            r.previous_instance_id.as_deref().unwrap_or("?"),
            r.trigger,
            r.duration_ms
        ));
    }
    if !s.stages.is_empty() {
        let runs: Vec<String> = s
            .stages
            .iter()
            .map(|r| format!("{} {} in {} ms", r.stage.name(), r.result, r.duration_ms))
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
pub fn config_schema(
    json: bool,
    ovf: bool,
    markdown: bool,
    profile: &str,
) -> Result<Done, CliError> {
    if ovf {
        if schema::profile(profile).is_none() {
            return Err(CliError::UnknownProfile {
                profile: profile.to_owned(),
                known: schema::profile_names().join(", "),
            });
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
    Ok(Done::Ok)
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
pub fn config_check(file: &Path) -> Result<Done, CliError> {
    let flat = schema::read_toml_file(file, schema::Source::File)?
        .ok_or_else(|| CliError::NoSuchFile(file.to_owned()))?;
    let n = flat.len();
    let config = Config::from_flat(&flat.into_iter().collect(), false);
    if let Some(why) = &config.role_unconfigured {
        println!("{}: note: {why} (set it at deploy time)", file.display());
    }
    if config.errors.is_empty() {
        println!("{}: {n} settings, all valid", file.display());
        Ok(Done::Ok)
    } else {
        for e in &config.errors {
            eprintln!("{}: {}: {}", file.display(), e.path, e.reason);
        }
        Ok(Done::Invalid)
    }
}
