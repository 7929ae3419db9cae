//! `capstan image check IMAGE`: hygiene checks read from the image file, without booting.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::check;

/// `capstan image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Check that a template is sealed (no machine-id, SSH host keys, agent state, leases,
    /// logs, shell history, random seed, root password). Exit 1 names each failure.
    Check(CheckArgs),
}

/// Arguments of `capstan image check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The image: raw, qcow2, VMDK or OVA.
    pub image: PathBuf,
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `capstan image` subcommand.
pub fn run(command: ImageCommand) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::Check(a) => {
            let findings = check::check_image(&a.image)?;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"image": a.image, "ok": findings.is_empty(), "findings": findings})
                );
            } else {
                for f in &findings {
                    println!("FAIL {}: {}", f.rule, f.detail);
                }
                if findings.is_empty() {
                    println!("ok: {} is sealed", a.image.display());
                }
            }
            Ok(if findings.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "capstan image check: {} is not sealed ({} findings)",
                    a.image.display(),
                    findings.len()
                );
                ExitCode::from(1)
            })
        }
    }
}
