//! `capstan vmdk convert IN OUT` and `capstan vmdk info FILE`.

use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ovf::vmdk::{self, AdapterType, WriteOptions};

/// `capstan vmdk` subcommands.
#[derive(Debug, Subcommand)]
pub enum VmdkCommand {
    /// Convert a raw disk to a streamOptimized VMDK, or back; OUT's extension decides
    /// (`.vmdk`, or `.raw`/`.img`).
    Convert(ConvertArgs),
    /// Print a VMDK's header fields and embedded descriptor.
    Info(InfoArgs),
}

/// Arguments of `capstan vmdk convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The input: a raw disk image, or a streamOptimized VMDK when OUT is raw.
    pub input: PathBuf,
    /// The output; `.vmdk` writes a streamOptimized VMDK, `.raw` or `.img` a raw image.
    pub output: PathBuf,
    /// `ddb.adapterType` written in the VMDK descriptor: ide, buslogic, lsilogic, legacyESX.
    #[arg(long, default_value = "lsilogic")]
    pub adapter_type: AdapterType,
    /// `ddb.virtualHWVersion` written in the VMDK descriptor.
    #[arg(long, default_value_t = 4)]
    pub hw_version: u32,
    /// Compression level, 1 (fastest) to 12 (smallest); zlib-compatible output at every level.
    #[arg(long, default_value_t = WriteOptions::default().compression_level)]
    pub level: u32,
    /// Compression threads (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Arguments of `capstan vmdk info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The VMDK to read.
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `capstan vmdk` subcommand.
pub fn run(command: VmdkCommand) -> anyhow::Result<ExitCode> {
    match command {
        VmdkCommand::Convert(args) => convert(&args),
        VmdkCommand::Info(args) => info(&args),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToVmdk,
    ToRaw,
}

fn direction(output: &Path) -> anyhow::Result<Direction> {
    let ext = output.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("vmdk") => Ok(Direction::ToVmdk),
        Some("raw" | "img") => Ok(Direction::ToRaw),
        _ => bail!(
            "{}: unknown output format: the extension must be .vmdk, .raw or .img",
            output.display()
        ),
    }
}

fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn convert(args: &ConvertArgs) -> anyhow::Result<ExitCode> {
    let dir = direction(&args.output)?;
    let input = File::open(&args.input)
        .with_context(|| format!("{}: cannot open the input", args.input.display()))?;
    let meta = input
        .metadata()
        .with_context(|| format!("{}: cannot stat the input", args.input.display()))?;
    if !meta.is_file() {
        bail!("{}: not a regular file", args.input.display());
    }
    let parent = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Written next to the output and renamed into place: no half-written OUT on failure.
    let tmp = tempfile::Builder::new()
        .prefix(".capstan-convert-")
        .tempfile_in(&parent)
        .with_context(|| format!("{}: cannot create a temporary file", parent.display()))?;
    let (file, tmp_path) = tmp.into_parts();
    let written = match dir {
        Direction::ToVmdk => to_vmdk(args, input, meta.len(), file)?,
        Direction::ToRaw => to_raw(args, input, file)?,
    };
    tmp_path
        .persist(&args.output)
        .with_context(|| format!("{}: cannot move the output into place", args.output.display()))?;
    println!("{}: {written} bytes", args.output.display());
    Ok(ExitCode::SUCCESS)
}

fn to_vmdk(args: &ConvertArgs, mut input: File, len: u64, out: File) -> anyhow::Result<u64> {
    let mut magic = [0u8; 4];
    if input.read(&mut magic).unwrap_or(0) == 4 && &magic == b"KDMV" {
        bail!("{}: the input is already a VMDK; convert it to .raw first", args.input.display());
    }
    input.rewind()?;
    let extent_name =
        args.output.file_name().and_then(|n| n.to_str()).unwrap_or("disk.vmdk").to_string();
    let opts = WriteOptions {
        extent_name,
        adapter_type: args.adapter_type,
        hw_version: args.hw_version,
        compression_level: args.level,
        threads: args.threads,
        ..WriteOptions::default()
    };
    let bar = progress_bar(len, "vmdk");
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let summary = vmdk::write_stream_optimized(
        BufReader::with_capacity(1 << 20, input),
        len,
        &mut out,
        &opts,
        &mut |p| bar.set_position(p.read),
    )
    .with_context(|| format!("converting {} to {}", args.input.display(), args.output.display()))?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    bar.finish_and_clear();
    Ok(summary.written)
}

fn to_raw(args: &ConvertArgs, input: File, mut out: File) -> anyhow::Result<u64> {
    let ctx = || format!("converting {} to {}", args.input.display(), args.output.display());
    let mut reader =
        vmdk::StreamReader::new(BufReader::with_capacity(1 << 20, input)).with_context(ctx)?;
    let total = reader.capacity();
    let bar = progress_bar(total, "raw");
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = reader.read_raw(&mut buf).with_context(ctx)?;
        if n == 0 {
            break;
        }
        // Zero blocks become holes: a 20 GiB disk with 2 GiB of data stays small.
        if buf[..n].iter().all(|b| *b == 0) {
            out.seek(SeekFrom::Current(n as i64))?;
        } else {
            out.write_all(&buf[..n])
                .with_context(|| format!("{}: write failed", args.output.display()))?;
        }
        done += n as u64;
        bar.set_position(done);
    }
    out.set_len(done)?;
    out.sync_all()?;
    bar.finish_and_clear();
    Ok(done)
}

fn info(args: &InfoArgs) -> anyhow::Result<ExitCode> {
    let f =
        File::open(&args.file).with_context(|| format!("{}: cannot open", args.file.display()))?;
    let info = vmdk::inspect(BufReader::new(f))
        .with_context(|| format!("{}: cannot read the VMDK header", args.file.display()))?;
    let h = &info.header;
    if args.json {
        let v = serde_json::json!({
            "file": args.file,
            "capacity": info.capacity(),
            "version": h.version,
            "flags": format!("0x{:x}", h.flags),
            "grain_size": h.grain_size,
            "gd_offset": h.gd_offset,
            "overhead": h.overhead,
            "stream_optimized": info.is_stream_optimized(),
            "create_type": info.descriptor_value("createType"),
            "adapter_type": info.descriptor_value("ddb.adapterType"),
            "descriptor": info.descriptor,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("file:        {}", args.file.display());
        println!("capacity:    {} bytes", info.capacity());
        println!("version:     {}", h.version);
        println!("flags:       0x{:x}", h.flags);
        println!("grain size:  {} sectors", h.grain_size);
        if h.gd_offset == u64::MAX {
            println!("gd offset:   at end (footer)");
        } else {
            println!("gd offset:   {}", h.gd_offset);
        }
        println!("descriptor:\n{}", info.descriptor.trim_end());
    }
    Ok(ExitCode::SUCCESS)
}
