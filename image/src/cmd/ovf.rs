//! `capstan ovf ...`.

use std::process::ExitCode;

use clap::Subcommand;

/// `capstan ovf` subcommands.
#[derive(Debug, Subcommand)]
pub enum OvfCommand {}

/// Runs a `capstan ovf` subcommand.
pub fn run(command: OvfCommand) -> anyhow::Result<ExitCode> {
    match command {}
}
