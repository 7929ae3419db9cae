//! `capstan ovf check [--strict] FILE.ovf...`.
//!
//! One line per problem, `FILE:LINE: <element>: message` (warnings as
//! `FILE:LINE: warning: <element>: message`), then a one-line summary per file on stderr.
//! Exit 0 when every file parses and has no error; 1 otherwise. With `--strict`, what vSphere
//! does not support (unknown ResourceType/ResourceSubType, unknown `vmw:Config` key, …) is an
//! error. Files referenced by a descriptor are size-checked when they sit next to it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use ovf::descriptor::validate::{self, Diagnostic, Options, Severity};
use ovf::descriptor::Envelope;

/// `capstan ovf` subcommands.
#[derive(Debug, Subcommand)]
pub enum OvfCommand {
    /// Check OVF descriptors for what vCenter and ovftool reject.
    Check(CheckArgs),
}

/// Arguments of `capstan ovf check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Treat what vSphere does not support (warnings) as errors.
    #[arg(long)]
    pub strict: bool,
    /// Require every referenced file to be present next to the descriptor.
    #[arg(long)]
    pub require_files: bool,
    /// The descriptors to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Runs a `capstan ovf` subcommand.
pub fn run(command: OvfCommand) -> anyhow::Result<ExitCode> {
    match command {
        OvfCommand::Check(args) => Ok(check(&args)),
    }
}

/// The problems found in one file, in line order.
pub(crate) fn check_file(path: &Path, opts: &Options, require_files: bool) -> Vec<Diagnostic> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            return vec![Diagnostic {
                severity: Severity::Error,
                line: 0,
                element: "file".into(),
                message: format!("cannot read: {e}"),
            }]
        }
    };
    let env = match Envelope::from_bytes(&bytes) {
        Ok(env) => env,
        Err(e) => {
            return vec![Diagnostic {
                severity: Severity::Error,
                line: e.line(),
                element: e.element().unwrap_or("xml").to_string(),
                message: error_chain(&e),
            }]
        }
    };
    let mut diags = validate::validate(&env, opts);
    let dir = path.parent().unwrap_or(Path::new("."));
    diags.extend(validate::check_files_in_dir(&env, dir, require_files));
    diags.sort_by_key(|d| d.line);
    diags
}

/// An error and its causes on one line (the one chain printer, `capstan_agent::error`); the
/// element/line prefix the diagnostic shows is not repeated.
fn error_chain(e: &ovf::descriptor::ParseError) -> String {
    let unreadable = matches!(e, ovf::descriptor::ParseError::Xml(_));
    capstan_agent::error::chain_with(e, |depth, link| {
        // The prefix carries line and element already; say what, not where, again.
        if depth == 0 && unreadable {
            return "not readable XML".to_string();
        }
        let s = link.to_string();
        // The top level reads "line N: <element>: ...", XmlError causes "line N: ...".
        let cut = if depth == 0 { s.split_once(">: ") } else { s.split_once(": ") };
        match cut {
            Some((head, rest)) if head.starts_with("line ") => rest.to_string(),
            _ => s,
        }
    })
}

fn check(args: &CheckArgs) -> ExitCode {
    let opts = Options { strict: args.strict };
    let mut failed = false;
    for path in &args.files {
        let diags = check_file(path, &opts, args.require_files);
        let errors = diags.iter().filter(|d| d.is_error()).count();
        let warnings = diags.len() - errors;
        for d in &diags {
            let sev = match d.severity {
                Severity::Error => "",
                Severity::Warning => "warning: ",
            };
            println!("{}:{}: {sev}<{}>: {}", path.display(), d.line, d.element, d.message);
        }
        if errors > 0 {
            failed = true;
            eprintln!("{}: {errors} error(s), {warnings} warning(s)", path.display());
        } else {
            eprintln!("{}: ok ({warnings} warning(s))", path.display());
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
