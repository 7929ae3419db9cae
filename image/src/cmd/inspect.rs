//! `capstan ova inspect FILE.ova|FILE.ovf [--json]`: hardware, disks, networks and properties
//! of a descriptor, read from a bare `.ovf` or from the first member of an `.ova`.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `capstan ova inspect` (dispatched here by `cmd::ova`).
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The `.ova` archive or `.ovf` descriptor to inspect.
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `capstan ova inspect`.
#[allow(dead_code)] // until `cmd::ova` dispatches its `Inspect` variant here
pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "{}: ova inspect is being implemented (descriptor model landing first)",
        args.file.display()
    )
}
