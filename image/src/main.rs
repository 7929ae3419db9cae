//! `capstan`: the template builder and operator CLI.
//!
//! A thin binary: each subcommand lives in `cmd/` and calls into the `ovf` crate or the
//! builder modules of this crate. Exit codes: 0 success, 1 a check found problems or the
//! operation failed, 2 bad usage (clap), 3 `ova verify`: intact, but the signature policy asked
//! for (`--require-signature`, `--trust`) is not met.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod builder;
mod cache;
mod check;
mod cmd;
mod exec;
mod firmware;
mod gpt;
mod lab;
mod sign;
mod verity;

/// Build sealed appliance templates (OVA, qcow2, raw) and work with OVF, OVA and VMDK files.
#[derive(Debug, Parser)]
#[command(name = "capstan", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build an appliance template (OVA, qcow2, raw) from a buildroot profile.
    Build(cmd::build::BuildArgs),
    /// List and prune the stage cache `capstan build` keeps (it never evicts by itself).
    #[command(subcommand)]
    Cache(cmd::cache::CacheCommand),
    /// Work with built images.
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Boot images in QEMU the way vSphere delivers their configuration.
    #[command(subcommand)]
    Lab(cmd::lab::LabCommand),
    /// Check OVF descriptors for what vCenter and ovftool reject.
    #[command(subcommand)]
    Ovf(cmd::ovf::OvfCommand),
    /// Inspect, verify, pack and sign OVA archives.
    #[command(subcommand)]
    Ova(cmd::ova::OvaCommand),
    /// Convert between raw disks and streamOptimized VMDK.
    #[command(subcommand)]
    Vmdk(cmd::vmdk::VmdkCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(a) => cmd::build::run(a),
        Command::Cache(c) => cmd::cache::run(c),
        Command::Image(c) => cmd::image::run(c),
        Command::Lab(c) => cmd::lab::run(c),
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
