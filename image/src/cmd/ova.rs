//! `capstan ova inspect|verify|pack`.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ovf::ova::{self, OvaOptions};

/// `capstan ova` subcommands.
#[derive(Debug, Subcommand)]
pub enum OvaCommand {
    /// Show the hardware, disks, networks and properties of an OVA or OVF.
    Inspect(crate::cmd::inspect::InspectArgs),
    /// Check an OVA as vCenter would: descriptor first, manifest second, every member's size
    /// against ovf:size and digest against the manifest, nothing missing or extra. Exit 1
    /// naming the first bad member.
    Verify(VerifyArgs),
    /// Pack a descriptor and its files into an OVA, filling ovf:size and writing a SHA256
    /// manifest. Files not given are looked up next to the descriptor.
    Pack(PackArgs),
}

/// Arguments of `capstan ova verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The OVA to check.
    pub file: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `capstan ova pack`.
#[derive(Debug, Args)]
pub struct PackArgs {
    /// The descriptor.
    #[arg(long)]
    pub ovf: PathBuf,
    /// Files referenced by the descriptor (matched by file name); others are looked up next
    /// to the descriptor.
    pub files: Vec<PathBuf>,
    /// The OVA to write.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Member modification time (seconds since the epoch); default `SOURCE_DATE_EPOCH`, or 0.
    #[arg(long)]
    pub mtime: Option<u64>,
}

/// Runs a `capstan ova` subcommand.
pub fn run(command: OvaCommand) -> anyhow::Result<ExitCode> {
    match command {
        OvaCommand::Inspect(args) => crate::cmd::inspect::run(args),
        OvaCommand::Verify(args) => verify(&args),
        OvaCommand::Pack(args) => pack(&args),
    }
}

fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let report = match ova::verify_path(&args.file) {
        Ok(r) => r,
        Err(e) => {
            // One line: the file, the first bad member and why (with the cause chain).
            let mut msg = format!("{}: {e}", args.file.display());
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("capstan: verify failed: {msg}");
            return Ok(ExitCode::from(1));
        }
    };
    if args.json {
        let members: Vec<_> = report
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name,
                    "size": m.size,
                    "digest": m.checked_with.map(|a| a.to_string()),
                })
            })
            .collect();
        let v = serde_json::json!({
            "file": args.file,
            "ok": true,
            "descriptor": report.descriptor,
            "manifest": report.manifest,
            "certificate": report.certificate,
            "members": members,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{}: OK ({}, {}, {} file(s))",
            args.file.display(),
            report.descriptor,
            report
                .manifest
                .as_deref()
                .map_or("no manifest".to_string(), |m| format!("manifest {m}")),
            report.members.len()
        );
        for m in &report.members {
            let how = m.checked_with.map_or("size only".to_string(), |a| a.to_string());
            println!("  {}  {} bytes  {how}", m.name, m.size);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn pack(args: &PackArgs) -> anyhow::Result<ExitCode> {
    let mut opts = OvaOptions::from_env();
    if let Some(t) = args.mtime {
        opts.mtime = t;
    }
    let parent = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".capstan-pack-")
        .tempfile_in(&parent)
        .with_context(|| format!("{}: cannot create a temporary file", parent.display()))?;
    let (file, tmp_path) = tmp.into_parts();
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("ova [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let summary = ova::pack(&args.ovf, &args.files, &mut out, &opts, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("packing {}", args.output.display()))?;
    out.flush()?;
    let file: File = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    bar.finish_and_clear();
    tmp_path
        .persist(&args.output)
        .with_context(|| format!("{}: cannot move the output into place", args.output.display()))?;
    println!("{}: {} bytes", args.output.display(), summary.written);
    for (name, size) in &summary.files {
        println!("  {name}  {size} bytes");
    }
    Ok(ExitCode::SUCCESS)
}
