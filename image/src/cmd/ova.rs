//! `capstan ova inspect|verify|pack|sign`.

use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ovf::ova::{self, OvaOptions};

use crate::sign::{self, SignatureCheck, SigningKey, TrustStore};

/// Exit code of `ova verify` when the archive is intact but the signature policy asked for is
/// not met (unsigned with `--require-signature`; with `--trust`, a signer that is untrusted,
/// expired or not yet valid).
const EXIT_POLICY: u8 = 3;

/// `capstan ova` subcommands.
#[derive(Debug, Subcommand)]
pub enum OvaCommand {
    /// Show the hardware, disks, networks and properties of an OVA or OVF.
    Inspect(crate::cmd::inspect::InspectArgs),
    /// Check an OVA as vCenter would: descriptor first, manifest second, every member's size
    /// against ovf:size and digest against the manifest, nothing missing or extra. Exit 1
    /// naming the first bad member.
    ///
    /// A signed OVA (a .cert member after the manifest) has its manifest's RSA signature
    /// checked with the certificate's key before anything else, and the signer's subject,
    /// issuer, validity and whether it is self-signed are printed. --trust CA.pem also builds
    /// the chain (with the .cert's intermediates) to a certificate of that file. What a human
    /// must weigh is named as vCenter's import warnings are: expired, not yet valid,
    /// self-signed, untrusted.
    ///
    /// Exit codes: 0 intact (with --trust: and the signer trusted and valid now); 1 a member
    /// is broken or changed (named), or the signature does not verify; 2 bad usage; 3 intact,
    /// but unsigned under --require-signature, or under --trust a signer that is untrusted,
    /// expired or not yet valid.
    Verify(VerifyArgs),
    /// Pack a descriptor and its files into an OVA, filling ovf:size and writing a SHA256
    /// manifest. Files not given are looked up next to the descriptor.
    Pack(PackArgs),
    /// Sign an OVA: write it again as .ovf, a SHA256 .mf, a .cert with the manifest's RSA
    /// signature and the certificate chain, then the disks, byte for byte.
    Sign(SignArgs),
}

/// Arguments of `capstan ova verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The OVA to check.
    pub file: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// CA certificates (PEM) the signer must chain to; without it the signature is checked
    /// but trust is not.
    #[arg(long, value_name = "CA.pem")]
    pub trust: Option<PathBuf>,
    /// Fail (exit 3) if the OVA has no .cert member.
    #[arg(long)]
    pub require_signature: bool,
}

/// Arguments of `capstan ova sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The OVA to sign (a signed one is signed again: its .cert is replaced).
    pub input: PathBuf,
    /// The RSA private key (PEM, PKCS#1 or PKCS#8, at least 2048 bits).
    #[arg(long, value_name = "KEY.pem")]
    pub key: PathBuf,
    /// The signer's certificate, then any intermediates (PEM).
    #[arg(long, value_name = "CERT.pem")]
    pub cert: PathBuf,
    /// The signed OVA to write.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Member modification time (seconds since the epoch); default the input's.
    #[arg(long)]
    pub mtime: Option<u64>,
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
        OvaCommand::Sign(args) => sign_ova(&args),
    }
}

fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let trust = args.trust.as_deref().map(TrustStore::load).transpose()?;
    let now = SystemTime::now();
    let mut signature: Option<SignatureCheck> = None;
    let result = File::open(&args.file)
        .map_err(|source| ova::OvaError::File { path: args.file.clone(), source })
        .and_then(|f| {
            ova::verify_with(BufReader::with_capacity(1 << 20, f), &mut |signed| {
                signature = Some(sign::check(signed, trust.as_ref(), now)?);
                Ok(())
            })
        });
    let report = match result {
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
    let refusal = match &signature {
        None if args.require_signature => {
            Some("unsigned (no .cert member), and --require-signature")
        }
        Some(s) if trust.is_some() && !s.trusted() => Some("the signer is not trusted"),
        _ => None,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&verify_json(args, &report, &signature, refusal))?
        );
    } else {
        print_verify(args, &report, signature.as_ref());
    }
    if let Some(why) = refusal {
        let findings: Vec<String> =
            signature.iter().flat_map(|s| s.findings.iter().map(|f| f.to_string())).collect();
        let detail =
            if findings.is_empty() { String::new() } else { format!(": {}", findings.join("; ")) };
        eprintln!("capstan: verify failed: {}: {why}{detail}", args.file.display());
        return Ok(ExitCode::from(EXIT_POLICY));
    }
    Ok(ExitCode::SUCCESS)
}

fn verify_json(
    args: &VerifyArgs,
    report: &ova::Report,
    signature: &Option<SignatureCheck>,
    refusal: Option<&str>,
) -> serde_json::Value {
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
    serde_json::json!({
        "file": args.file,
        "ok": refusal.is_none(),
        "refused": refusal,
        "descriptor": report.descriptor,
        "manifest": report.manifest,
        "certificate": report.certificate,
        "signature": signature,
        "members": members,
    })
}

fn print_verify(args: &VerifyArgs, report: &ova::Report, signature: Option<&SignatureCheck>) {
    println!(
        "{}: OK ({}, {}, {} file(s))",
        args.file.display(),
        report.descriptor,
        report.manifest.as_deref().map_or("no manifest".to_string(), |m| format!("manifest {m}")),
        report.members.len()
    );
    for m in &report.members {
        let how = m.checked_with.map_or("size only".to_string(), |a| a.to_string());
        println!("  {}  {} bytes  {how}", m.name, m.size);
    }
    let Some(s) = signature else {
        println!("  unsigned: no .cert member");
        return;
    };
    let mf = report.manifest.as_deref().unwrap_or_default();
    println!("  signed: {} ({} RSA signature over {mf} verifies)", s.certificate, s.algorithm);
    println!("    signer       {}", s.signer.subject);
    println!("    issuer       {}", s.signer.issuer);
    println!("    not before   {}", s.signer.not_before);
    println!("    not after    {}", s.signer.not_after);
    println!("    self-signed  {}", if s.signer.self_signed { "yes" } else { "no" });
    println!("    sha256       {}", s.signer.sha256);
    for c in &s.intermediates {
        println!("    chain        {} (issuer {}, not after {})", c.subject, c.issuer, c.not_after);
    }
    match &s.trust {
        sign::Trust::NotChecked => println!("    trust        not checked (no --trust)"),
        sign::Trust::Trusted(why) => println!("    trust        trusted: {why}"),
        sign::Trust::Untrusted(why) => println!("    trust        untrusted: {why}"),
    }
    for f in &s.findings {
        println!("  warning: {f}");
    }
}

/// Writes `output` through a temporary file beside it, renamed into place only once `write`
/// succeeded and the data is on disk.
fn write_atomically<T>(
    output: &Path,
    write: impl FnOnce(&mut BufWriter<File>, &ProgressBar) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".capstan-ova-")
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
    let value = write(&mut out, &bar)?;
    out.flush()?;
    let file: File = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    bar.finish_and_clear();
    tmp_path
        .persist(output)
        .with_context(|| format!("{}: cannot move the output into place", output.display()))?;
    Ok(value)
}

fn sign_ova(args: &SignArgs) -> anyhow::Result<ExitCode> {
    let key = SigningKey::load(&args.key, &args.cert)?;
    let summary = write_atomically(&args.output, |out, bar| {
        ova::sign_ova(&args.input, out, &key, args.mtime, &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .with_context(|| format!("signing {}", args.input.display()))
    })?;
    let again = if summary.replaced_certificate { " (its old .cert replaced)" } else { "" };
    println!(
        "{}: {} bytes, signed by {}{again}",
        args.output.display(),
        summary.written,
        key.signer().subject
    );
    for (name, size) in &summary.files {
        println!("  {name}  {size} bytes");
    }
    Ok(ExitCode::SUCCESS)
}

fn pack(args: &PackArgs) -> anyhow::Result<ExitCode> {
    let mut opts = OvaOptions::from_env();
    if let Some(t) = args.mtime {
        opts.mtime = t;
    }
    let summary = write_atomically(&args.output, |out, bar| {
        ova::pack(&args.ovf, &args.files, out, &opts, &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .with_context(|| format!("packing {}", args.output.display()))
    })?;
    println!("{}: {} bytes", args.output.display(), summary.written);
    for (name, size) in &summary.files {
        println!("  {name}  {size} bytes");
    }
    Ok(ExitCode::SUCCESS)
}
