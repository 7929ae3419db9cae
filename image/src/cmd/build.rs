//! `capstan build PROFILE -o DIR [--formats ova,qcow2,raw] [--firmware efi|bios] [--kube-bin DIR]
//! [--sign-key KEY.pem --sign-cert CERT.pem]`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::builder::{self, outputs::Format, BuildOptions, Stage};
use crate::firmware::Firmware;

/// Boot firmware.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FirmwareArg {
    /// UEFI (systemd-boot on the ESP); what vSphere templates use.
    Efi,
    /// Legacy BIOS (SYSLINUX on the ESP, gptmbr.bin); the disk still boots under UEFI, the
    /// OVA asks vSphere for BIOS.
    Bios,
}

/// Arguments of `capstan build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Profile name under the buildroot (`lb`, `node`) or a profile directory.
    pub profile: String,
    /// Output directory (the images, PROFILE.spdx.json and PROFILE.cdx.json: the SBOM,
    /// PROFILE.build.json: the report).
    #[arg(short = 'o', long = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Comma-separated formats: ova, qcow2, raw, vmdk.
    #[arg(long, value_delimiter = ',', default_value = "ova,qcow2")]
    pub formats: Vec<Format>,
    /// Boot firmware.
    #[arg(long, value_enum, default_value = "efi")]
    pub firmware: FirmwareArg,
    /// Directory with kubeadm, kubelet and kubectl to install (node profile).
    #[arg(long, value_name = "DIR")]
    pub kube_bin: Option<PathBuf>,
    /// The capstan-agent binary to bake in [default: next to this capstan binary].
    #[arg(long, value_name = "FILE")]
    pub agent_bin: Option<PathBuf>,
    /// Directory of buildroot profiles [default: ./buildroot, or the source tree's].
    #[arg(long, value_name = "DIR")]
    pub buildroot: Option<PathBuf>,
    /// Stage cache [default: $CAPSTAN_CACHE or ~/.cache/capstan].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Rebuild every stage.
    #[arg(long)]
    pub no_cache: bool,
    /// Rebuild these stages even when cached (rootfs, customize, disk, outputs).
    #[arg(long, value_delimiter = ',', value_name = "STAGES")]
    pub rebuild: Vec<String>,
    /// Sign the OVA with this RSA key (PEM, PKCS#1 or PKCS#8, at least 2048 bits); needs
    /// --sign-cert.
    #[arg(long, value_name = "KEY.pem", requires = "sign_cert")]
    pub sign_key: Option<PathBuf>,
    /// The signer's certificate, then any intermediates (PEM); needs --sign-key.
    #[arg(long, value_name = "CERT.pem", requires = "sign_key")]
    pub sign_cert: Option<PathBuf>,
}

/// The source tree this binary was built from (for buildroot/ and agent/units defaults).
fn source_tree() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn default_buildroot() -> PathBuf {
    let local = PathBuf::from("buildroot");
    if local.is_dir() {
        local
    } else {
        source_tree().join("buildroot")
    }
}

fn default_agent_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the capstan binary")?;
    let candidate = exe.with_file_name("capstan-agent");
    if candidate.is_file() {
        return Ok(candidate);
    }
    anyhow::bail!(
        "no capstan-agent next to {} (build it: cargo build -p capstan-agent), or pass --agent-bin",
        exe.display()
    )
}

/// Runs `capstan build`.
pub fn run(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let buildroot = args.buildroot.unwrap_or_else(default_buildroot);
    let agent_bin = match args.agent_bin {
        Some(p) => p,
        None => default_agent_bin()?,
    };
    let units = if PathBuf::from("agent/units").is_dir() {
        PathBuf::from("agent/units")
    } else {
        source_tree().join("agent/units")
    };
    let formats: BTreeSet<Format> = args.formats.into_iter().collect();
    let rebuild = args
        .rebuild
        .iter()
        .map(|s| s.parse::<Stage>())
        .collect::<Result<BTreeSet<Stage>, String>>()
        .map_err(|e| anyhow::anyhow!("--rebuild {e}"))?;
    // The key is read (and checked against the certificate) before any stage runs.
    let sign = match (&args.sign_key, &args.sign_cert) {
        (Some(key), Some(cert)) => {
            if !formats.contains(&Format::Ova) {
                anyhow::bail!("--sign-key signs the OVA, and --formats has no ova");
            }
            Some(std::sync::Arc::new(crate::sign::SigningKey::load(key, cert)?))
        }
        _ => None,
    };
    let opts = BuildOptions {
        buildroot,
        profile: args.profile,
        out: args.out,
        formats,
        firmware: match args.firmware {
            FirmwareArg::Efi => Firmware::Efi,
            FirmwareArg::Bios => Firmware::Bios,
        },
        kube_bin: args.kube_bin,
        agent_bin,
        agent_units: Some(units),
        cache: args.cache.unwrap_or_else(crate::cache::default_dir),
        no_cache: args.no_cache,
        rebuild,
        sign,
    };
    let report = builder::build(&opts)?;
    for w in &report.warnings {
        eprintln!("capstan build: warning: {w}");
    }
    for o in &report.outputs {
        let signed = o.signed_by.as_ref().map(|s| format!("  (signed by {s})")).unwrap_or_default();
        println!("{}  {:>12}  {}{signed}", o.sha256, o.bytes, o.path.display());
    }
    eprintln!(
        "capstan build: {} {} done in {:.1}s; report: {}",
        report.profile,
        report.version,
        report.seconds,
        opts.out.join(format!("{}.build.json", report.profile)).display()
    );
    Ok(ExitCode::SUCCESS)
}
