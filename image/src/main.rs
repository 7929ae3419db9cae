//! `capstan`: the template builder and operator CLI.
//!
//! A thin binary: each subcommand lives in `cmd/` and calls into the `ovf` crate or the
//! builder modules of this crate. Exit codes: 0 success, 1 a check found problems or the
//! operation failed, 2 bad usage (clap).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// Build sealed appliance templates (OVA, qcow2, raw) and work with OVF, OVA and VMDK files.
#[derive(Debug, Parser)]
#[command(name = "capstan", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check OVF descriptors for what vCenter and ovftool reject.
    #[command(subcommand)]
    Ovf(cmd::ovf::OvfCommand),
    /// Inspect, verify and pack OVA archives.
    #[command(subcommand)]
    Ova(cmd::ova::OvaCommand),
    /// Convert between raw disks and streamOptimized VMDK.
    #[command(subcommand)]
    Vmdk(cmd::vmdk::VmdkCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ovf(c) => cmd::ovf::run(c),
        Command::Ova(c) => cmd::ova::run(c),
        Command::Vmdk(c) => cmd::vmdk::run(c),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("capstan: error: {err:#}");
            ExitCode::from(1)
        }
    }
}
