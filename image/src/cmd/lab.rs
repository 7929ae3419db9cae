//! `capstan lab run IMAGE [--prop KEY=VALUE]... [--guestinfo KEY=VALUE|KEY=@FILE]... [--mac MAC]
//! [--wait-ready] [--json] [--timeout SECONDS] [--firmware auto|efi|bios]
//! [--cdrom ISO | --seed nocloud:DIR|configdrive:DIR] [--uuid UUID] [--state-dir DIR]
//! [--detach]`; `capstan lab stop ID [--state-dir DIR] [--remove]`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use crate::firmware::Firmware;
use crate::lab::firmware::FirmwareChoice;
use crate::lab::{self, Accel, GuestinfoArg, LabOptions};

mod clone;
mod cluster;

/// `capstan lab` subcommands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Boot an image in QEMU with vApp properties (OVF environment ISO) and guestinfo
    /// (fw_cfg), as vSphere would deliver them.
    Run(RunArgs),
    /// Instant clone: boot a parent, wait until its agent froze it, save its memory and
    /// device state, start children from it (each with its own generation id, MAC and
    /// guestinfo) and report how each re-identified.
    Clone(clone::CloneArgs),
    /// Stop a VM that `capstan lab run --detach` (or the hub's `lab` remediation) left
    /// running: SIGTERM, then SIGKILL after 10 s.
    Stop(StopArgs),
    /// A Kubernetes cluster of lab VMs, as Cluster API + CAPV would make it on vSphere.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

/// Arguments of `capstan lab stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// The VM's UUID or the instance-id its agent reported (a directory or symlink in the
    /// state dir).
    pub id: String,
    /// The state dir the VM was started with.
    #[arg(long, value_name = "DIR", default_value = lab::state::DEFAULT_DIR)]
    pub state_dir: PathBuf,
    /// Also delete the VM's directory (disk overlay, record, logs) and its symlinks.
    #[arg(long)]
    pub remove: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
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
    /// Wait until the agent's first boot is finished, print its status, power off (unless
    /// --detach).
    #[arg(long)]
    pub wait_ready: bool,
    /// Leave the VM running when the command ends (after the ready report with
    /// --wait-ready, else at once), its files and record kept in the state dir; stop it with
    /// `capstan lab stop`.
    #[arg(long)]
    pub detach: bool,
    /// The VM's SMBIOS system UUID (default: a random one, as vSphere gives each new VM).
    #[arg(long, value_parser = parse_uuid)]
    pub uuid: Option<String>,
    /// Keep the VM's files in DIR/<uuid>/ (disk overlay, OVF environment, guestinfo,
    /// serial log, argv.json, qemu.pid), so that it can be started again (the hub's `lab`
    /// remediation). Default with --detach: /var/lib/capstan/lab; without either, a
    /// temporary directory removed at the end.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
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
    #[arg(long, value_name = "ISO", conflicts_with = "seed")]
    pub cdrom: Option<PathBuf>,
    /// Attach a cloud seed instead of the OVF environment: `nocloud:DIR` (an ISO labelled
    /// cidata made from DIR's meta-data, user-data, network-config) or `configdrive:DIR` (an
    /// ISO labelled config-2 made from DIR's openstack/latest/...), built with xorriso.
    #[arg(long, value_name = "KIND:DIR")]
    pub seed: Option<lab::env::Seed>,
    /// Keep the serial console log here.
    #[arg(long, value_name = "FILE")]
    pub serial_log: Option<PathBuf>,
}

fn parse_uuid(s: &str) -> Result<String, String> {
    match s.parse::<uuid::Uuid>() {
        Ok(u) if !u.is_nil() && !u.is_max() => Ok(u.hyphenated().to_string()),
        Ok(_) => Err(format!("{s:?}: an all-zero or all-ones UUID means \"none\" to the guest")),
        Err(e) => Err(format!("{s:?} is not a UUID: {e}")),
    }
}

pub(super) fn parse_mac(s: &str) -> Result<String, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!("{s:?} is not a MAC address like 52:54:00:12:34:56"))
    }
}

fn accel(a: AccelArg) -> Accel {
    match a {
        AccelArg::Auto => Accel::Auto,
        AccelArg::Kvm => Accel::Kvm,
        AccelArg::Tcg => Accel::Tcg,
    }
}

fn firmware(f: FirmwareArg) -> FirmwareChoice {
    match f {
        FirmwareArg::Auto => FirmwareChoice::Auto,
        FirmwareArg::Efi => FirmwareChoice::Force(Firmware::Efi),
        FirmwareArg::Bios => FirmwareChoice::Force(Firmware::Bios),
    }
}

/// Runs a `capstan lab` subcommand.
pub fn run(command: LabCommand) -> anyhow::Result<ExitCode> {
    match command {
        LabCommand::Run(a) => run_vm(a),
        LabCommand::Stop(a) => stop(&a),
        LabCommand::Clone(a) => clone::run(a),
        LabCommand::Cluster(c) => cluster::run(c),
    }
}

fn stop(a: &StopArgs) -> anyhow::Result<ExitCode> {
    let s = lab::state::stop(&a.state_dir, &a.id, a.remove, Duration::from_secs(10))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    match s.pid {
        Some(pid) => println!("stopped {} (pid {pid})", a.id),
        None => println!("{} was not running", a.id),
    }
    if s.removed {
        println!("removed {}", s.dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_vm(a: RunArgs) -> anyhow::Result<ExitCode> {
    let opts = LabOptions {
        image: a.image,
        props: a.props,
        guestinfo: a.guestinfo,
        mac: a.mac,
        wait_ready: a.wait_ready,
        detach: a.detach,
        uuid: a.uuid,
        state_dir: a.state_dir,
        timeout: Duration::from_secs(a.timeout),
        accel: accel(a.accel),
        firmware: firmware(a.firmware),
        memory_mib: a.memory,
        cpus: a.cpus,
        cdrom: a.cdrom,
        seed: a.seed,
        serial_log: a.serial_log,
        cache: crate::cache::default_dir(),
    };
    let result = lab::run(&opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        if result.ready {
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
        println!("uuid {}", result.uuid);
        if let Some(dir) = &result.state {
            println!("state {}", dir.display());
        }
        if let Some(pid) = result.pid {
            println!("running as pid {pid}: capstan lab stop {}", result.uuid);
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

    #[test]
    fn uuids_are_checked_and_normalised() {
        assert_eq!(
            parse_uuid("4C4C4544-0032-3010-8036-B4C04F4D4432").unwrap(),
            "4c4c4544-0032-3010-8036-b4c04f4d4432"
        );
        assert!(parse_uuid("4c4c4544").unwrap_err().contains("not a UUID"));
        assert!(parse_uuid("00000000-0000-0000-0000-000000000000").is_err());
        assert!(parse_uuid("ffffffff-ffff-ffff-ffff-ffffffffffff").is_err());
    }
}
