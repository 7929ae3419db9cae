//! `capstan ova ...`.

use std::process::ExitCode;

use clap::Subcommand;

/// `capstan ova` subcommands.
#[derive(Debug, Subcommand)]
pub enum OvaCommand {}

/// Runs a `capstan ova` subcommand.
pub fn run(command: OvaCommand) -> anyhow::Result<ExitCode> {
    match command {}
}
