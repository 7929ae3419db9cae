//! `capstan lab run IMAGE [--prop KEY=VALUE]... [--guestinfo KEY=VALUE|KEY=@FILE]... [--mac MAC]
//! [--wait-ready] [--json] [--timeout SECONDS] [--firmware auto|efi|bios]`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use crate::build::Firmware;
use crate::lab::firmware::FirmwareChoice;
use crate::lab::{self, Accel, GuestinfoArg, LabOptions};

/// `capstan lab` subcommands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Boot an image in QEMU with vApp properties (OVF environment ISO) and guestinfo
    /// (fw_cfg), as vSphere would deliver them.
    Run(RunArgs),
}

/// Accelerator.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AccelArg {
    /// Probe KVM (boots a stock kernel briefly), fall back to TCG.
    Auto,
    /// Force KVM.
    Kvm,
    /// Force TCG.
    Tcg,
}

/// Firmware to boot with.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FirmwareArg {
    /// What the OVA descriptor asks for (`firmware=efi`: OVMF; none or `bios`: SeaBIOS), or
    /// for a bare disk, SeaBIOS if its MBR has boot code, else OVMF.
    Auto,
    /// UEFI (OVMF).
    Efi,
    /// Legacy BIOS (SeaBIOS, QEMU's default).
    Bios,
}

/// Arguments of `capstan lab run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The image: OVA, qcow2, raw or VMDK (never modified).
    pub image: PathBuf,
    /// A vApp property value (KEY=VALUE), over the OVA's defaults.
    #[arg(long = "prop", value_name = "KEY=VALUE", value_parser = lab::parse_prop)]
    pub props: Vec<(String, String)>,
    /// A guestinfo key (KEY=VALUE or KEY=@FILE), e.g. metadata=@meta.yaml.
    #[arg(long = "guestinfo", value_name = "KEY=VALUE|KEY=@FILE", value_parser = GuestinfoArg::parse)]
    pub guestinfo: Vec<GuestinfoArg>,
    /// MAC address of the first NIC.
    #[arg(long, default_value = "52:54:00:12:34:56", value_parser = parse_mac)]
    pub mac: String,
    /// Wait until the agent's first boot is finished, print its status, power off.
    #[arg(long)]
    pub wait_ready: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// Firmware.
    #[arg(long, value_enum, default_value = "auto")]
    pub firmware: FirmwareArg,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u64,
    /// vCPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Attach this ISO instead of the generated OVF environment (e.g. a NoCloud seed).
    #[arg(long, value_name = "ISO")]
    pub cdrom: Option<PathBuf>,
    /// Keep the serial console log here.
    #[arg(long, value_name = "FILE")]
    pub serial_log: Option<PathBuf>,
}

fn parse_mac(s: &str) -> Result<String, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!("{s:?} is not a MAC address like 52:54:00:12:34:56"))
    }
}

/// Runs a `capstan lab` subcommand.
pub fn run(command: LabCommand) -> anyhow::Result<ExitCode> {
    let LabCommand::Run(a) = command;
    let opts = LabOptions {
        image: a.image,
        props: a.props,
        guestinfo: a.guestinfo,
        mac: a.mac,
        wait_ready: a.wait_ready,
        timeout: Duration::from_secs(a.timeout),
        accel: match a.accel {
            AccelArg::Auto => Accel::Auto,
            AccelArg::Kvm => Accel::Kvm,
            AccelArg::Tcg => Accel::Tcg,
        },
        firmware: match a.firmware {
            FirmwareArg::Auto => FirmwareChoice::Auto,
            FirmwareArg::Efi => FirmwareChoice::Force(Firmware::Efi),
            FirmwareArg::Bios => FirmwareChoice::Force(Firmware::Bios),
        },
        memory_mib: a.memory,
        cpus: a.cpus,
        cdrom: a.cdrom,
        serial_log: a.serial_log,
        cache: crate::build::cache::default_dir(),
    };
    let result = lab::run(&opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else if result.ready {
        println!(
            "ready after {:.1}s ({:?}, {:?}, guest uptime {:.1}s)",
            result.boot_seconds.unwrap_or_default(),
            result.accel,
            result.firmware,
            result.guest_uptime.unwrap_or_default()
        );
        if let Some(s) = &result.status {
            println!("{}", serde_json::to_string_pretty(s)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_checked() {
        assert_eq!(parse_mac("52:54:00:AB:cd:01").unwrap(), "52:54:00:ab:cd:01");
        assert!(parse_mac("52:54:00:12:34").is_err());
        assert!(parse_mac("52:54:00:12:34:zz").is_err());
    }
}
