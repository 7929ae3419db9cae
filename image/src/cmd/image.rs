//! `capstan image check IMAGE`: hygiene checks read from the image file, without booting;
//! `capstan image sbom IMAGE`: the SBOM the image carries.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use std::io::Write;

use anyhow::Context;

use crate::builder::sbom;
use crate::check;

/// `capstan image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Check that a template is sealed (no machine-id, SSH host keys, agent state, leases,
    /// logs, shell history, random seed, root password). Exit 1 names each failure.
    Check(CheckArgs),
    /// Print the SBOM a built image carries (`/usr/share/capstan/sbom.spdx.json`): SPDX 2.3
    /// JSON as stored, or converted to CycloneDX 1.5.
    Sbom(SbomArgs),
}

/// Arguments of `capstan image sbom`.
#[derive(Debug, Args)]
pub struct SbomArgs {
    /// The image: raw, qcow2, VMDK or OVA.
    pub image: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = SbomFormat::Spdx)]
    pub format: SbomFormat,
}

/// The document `capstan image sbom` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SbomFormat {
    /// SPDX 2.3 JSON, the bytes the image holds.
    Spdx,
    /// CycloneDX 1.5 JSON, converted from them (the same document the build wrote).
    Cyclonedx,
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
        ImageCommand::Sbom(a) => {
            let path = format!("/{}", sbom::IMAGE_PATH);
            let Some(spdx) = check::read_image_file(&a.image, &path)? else {
                anyhow::bail!(
                    "{} has no {path} (built before capstan wrote SBOMs?)",
                    a.image.display()
                );
            };
            let out = match a.format {
                SbomFormat::Spdx => spdx,
                SbomFormat::Cyclonedx => sbom::Sbom::from_spdx(&spdx)
                    .with_context(|| format!("{}: {path}", a.image.display()))?
                    .to_cyclonedx(),
            };
            std::io::stdout().write_all(&out)?;
            Ok(ExitCode::SUCCESS)
        }
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
