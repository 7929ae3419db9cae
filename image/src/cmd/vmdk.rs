//! `capstan vmdk ...`.

use std::process::ExitCode;

use clap::Subcommand;

/// `capstan vmdk` subcommands.
#[derive(Debug, Subcommand)]
pub enum VmdkCommand {}

/// Runs a `capstan vmdk` subcommand.
pub fn run(command: VmdkCommand) -> anyhow::Result<ExitCode> {
    match command {}
}
