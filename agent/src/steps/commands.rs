//! `bootcmd` and `runcmd` with cloud-init's semantics: a list item is executed directly
//! (no shell), a string item with `sh -c`.
//!
//! Like cloud-init, every command runs even when an earlier one failed; the step fails when any
//! did. Command lines can carry secrets (`kubeadm join --token ...`), so logs name a command by
//! its index and program only; output goes, in full, to `/var/log/capstan/commands.log` (mode
//! 0600) under the root, and its last lines into the step's error when it fails.

use std::fmt::Write as _;
use std::process::{Command as Proc, Stdio};

use serde::{Deserialize, Serialize};

use super::{Ctx, Mode, Outcome, StepError};
use crate::root::FileOpts;

/// One command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    /// Program and arguments, executed without a shell.
    Exec(Vec<String>),
    /// A shell snippet, run with `sh -c`.
    Shell(String),
}

impl Command {
    /// How logs refer to it: the program name, never the arguments.
    pub fn label(&self) -> String {
        match self {
            Command::Exec(v) => v.first().cloned().unwrap_or_default(),
            Command::Shell(s) => format!("sh -c ({} bytes)", s.len()),
        }
    }
}

/// Where command output is kept.
pub const LOG: &str = "/var/log/capstan/commands.log";

/// Bytes of output kept in a failure message.
const TAIL: usize = 1024;

fn run_all(ctx: &Ctx<'_>, which: &str, cmds: &[Command]) -> Result<Outcome, StepError> {
    let cwd = ctx.root.base();
    let mut log = String::new();
    let mut failures = Vec::new();
    for (i, c) in cmds.iter().enumerate() {
        let mut p = match c {
            Command::Exec(v) if v.is_empty() => {
                failures.push(format!("{which}[{i}]: empty command"));
                continue;
            }
            Command::Exec(v) => {
                let mut p = Proc::new(&v[0]);
                p.args(&v[1..]);
                p
            }
            Command::Shell(s) => {
                let mut p = Proc::new("/bin/sh");
                p.arg("-c").arg(s);
                p
            }
        };
        p.current_dir(cwd).stdin(Stdio::null());
        if !ctx.live() {
            p.env("CAPSTAN_ROOT", cwd);
        }
        tracing::info!("{which}[{i}]: running {}", c.label());
        let _ = writeln!(log, "=== {which}[{i}] {}", c.label());
        match p.output() {
            Ok(out) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                log.push_str(&text);
                let _ = writeln!(log, "=== {which}[{i}] exit: {}", out.status);
                if !out.status.success() {
                    let start = text.len().saturating_sub(TAIL);
                    let start = (start..text.len())
                        .find(|&j| text.is_char_boundary(j))
                        .unwrap_or(text.len());
                    failures.push(format!(
                        "{which}[{i}] ({}) {}: {}",
                        c.label(),
                        out.status,
                        text[start..].trim()
                    ));
                }
            }
            Err(e) => {
                let _ = writeln!(log, "=== {which}[{i}] could not start: {e}");
                failures.push(format!("{which}[{i}] ({}): could not start: {e}", c.label()));
            }
        }
    }
    // The log is kept even when the step fails (and its staged files are discarded).
    if let Err(e) =
        ctx.root.unstaged(|| ctx.root.append(LOG, log.as_bytes(), FileOpts::mode(0o600)))
    {
        tracing::warn!("could not keep command output in {LOG}: {}", crate::error::chain(&e));
    }
    if failures.is_empty() {
        Ok(Outcome::Ok(format!("ran {} command(s); output in {LOG}", cmds.len())))
    } else {
        Err(StepError::msg(format!(
            "{} of {} command(s) failed: {}",
            failures.len(),
            cmds.len(),
            failures.join("; ")
        )))
    }
}

fn gate(ctx: &Ctx<'_>, cmds: &[Command]) -> Option<Outcome> {
    if cmds.is_empty() {
        return Some(Outcome::Skipped("no commands".into()));
    }
    if let Mode::Rooted { run_commands: false } = ctx.mode {
        return Some(Outcome::Skipped(format!("{} command(s) not run under --root", cmds.len())));
    }
    None
}

pub(crate) fn bootcmd(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    if let Some(o) = gate(ctx, &ctx.plan.bootcmd) {
        return Ok(o);
    }
    run_all(ctx, "bootcmd", &ctx.plan.bootcmd)
}

pub(crate) fn runcmd(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    if let Some(o) = gate(ctx, &ctx.plan.runcmd) {
        return Ok(o);
    }
    if ctx.state.is_done("runcmd") {
        return Ok(Outcome::Skipped("already ran for this instance".into()));
    }
    run_all(ctx, "runcmd", &ctx.plan.runcmd)
}
