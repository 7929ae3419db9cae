//! Running QEMU for the lab: disk overlay, KVM probe, the VM process (killed by pid on drop).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::{Accel, GuestinfoArg};
use crate::check::{self, ImageFormat};
use crate::exec;
use crate::firmware::Firmware;

/// fw_cfg name prefix for guestinfo keys (what the agent's `FwCfg` source reads).
pub const FW_CFG_PREFIX: &str = "opt/capstan/guestinfo/";
/// UEFI firmware code (Debian `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// UEFI variable store template.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// SeaBIOS, QEMU's default firmware for `pc` (Debian `seabios`, pulled in by
/// `qemu-system-x86`); the lab lets QEMU load it and only checks that it is there.
pub const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// The disk QEMU boots from.
#[derive(Debug)]
pub struct PreparedDisk {
    /// qcow2 overlay in the work directory (backed by the image, which stays untouched).
    pub overlay: PathBuf,
    /// A kernel for the KVM probe.
    pub kernel_probe: Option<PathBuf>,
}

/// Makes the overlay for `image`.
pub fn prepare_disk(image: &Path, work: &Path) -> anyhow::Result<PreparedDisk> {
    let image =
        fs::canonicalize(image).with_context(|| format!("image {} not found", image.display()))?;
    let (backing, fmt) = match check::sniff(&image)? {
        ImageFormat::Ova => (check::extract_ova_disk(&image, work)?, "vmdk"),
        ImageFormat::Vmdk => (image.clone(), "vmdk"),
        ImageFormat::Qcow2 => (image.clone(), "qcow2"),
        ImageFormat::Raw => (image.clone(), "raw"),
    };
    let overlay = work.join("overlay.qcow2");
    exec::run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", fmt, "-b"])
            .arg(&backing)
            .arg(&overlay),
    )
    .context("creating the lab's disk overlay")?;
    let kernel_probe = host_kernel();
    Ok(PreparedDisk { overlay, kernel_probe })
}

/// The host's newest /boot/vmlinuz-*: a stock kernel is what the probe must see boot.
pub fn host_kernel() -> Option<PathBuf> {
    let mut k: Vec<PathBuf> = fs::read_dir("/boot")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .collect();
    k.sort();
    k.pop()
}

/// Decides between KVM and TCG. `/dev/kvm` existing is not enough (on our machines a stock
/// kernel hangs under it): boot a stock kernel with KVM for a few seconds and look for its
/// console output. The verdict is cached per QEMU version and kernel.
pub fn probe_kvm(kernel: &Option<PathBuf>, cache: &Path, work: &Path) -> Accel {
    if fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return Accel::Tcg;
    }
    let Some(kernel) = kernel else {
        return Accel::Tcg;
    };
    let version =
        exec::output(Command::new("qemu-system-x86_64").arg("--version")).unwrap_or_default();
    let size = fs::metadata(kernel).map(|m| m.len()).unwrap_or(0);
    let key = crate::cache::Key::new("kvm-probe")
        .str("qemu", &version)
        .str("kernel", &format!("{}:{size}", kernel.display()))
        .finish();
    let verdict_path = cache.join(format!("kvm-probe-{}", &key[..16]));
    if let Ok(v) = fs::read_to_string(&verdict_path) {
        return if v.trim() == "kvm" { Accel::Kvm } else { Accel::Tcg };
    }
    let log = work.join("kvm-probe.log");
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-machine", "pc", "-m", "256", "-nodefaults"])
        .args(["-display", "none", "-no-reboot", "-no-user-config"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=7"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(child) = child else {
        return Accel::Tcg;
    };
    let mut guard = Guard(Some(child));
    let started = Instant::now();
    let mut ok = false;
    while started.elapsed() < Duration::from_secs(8) {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Kernel panic") || text.contains("VFS:") || text.contains("Run /init") {
            ok = true;
            break;
        }
        if let Some(c) = guard.0.as_mut() {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(guard);
    let verdict = if ok { Accel::Kvm } else { Accel::Tcg };
    let _ = fs::create_dir_all(cache);
    let _ = fs::write(&verdict_path, if ok { "kvm\n" } else { "tcg\n" });
    verdict
}

/// Kills the child by pid when dropped.
#[derive(Debug)]
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What to start.
#[derive(Debug)]
pub struct VmSpec<'a> {
    /// Boot disk (qcow2 overlay).
    pub disk: &'a Path,
    /// CD-ROM image.
    pub cdrom: &'a Path,
    /// fw_cfg guestinfo.
    pub guestinfo: &'a [GuestinfoArg],
    /// MAC of the first NIC.
    pub mac: &'a str,
    /// Accelerator (not Auto).
    pub accel: Accel,
    /// Firmware: OVMF (UEFI) or SeaBIOS (legacy BIOS).
    pub firmware: Firmware,
    /// Memory.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u32,
    /// Serial console log.
    pub serial: &'a Path,
    /// Scratch directory.
    pub work: &'a Path,
    /// Serial on this terminal instead of the log.
    pub interactive: bool,
}

/// A running VM; QEMU is killed when this is dropped (unless detached).
#[derive(Debug)]
pub struct Vm {
    guard: Guard,
    stderr: PathBuf,
    /// The command line, program first (what a lab VM's `argv.json` records).
    argv: Vec<String>,
}

/// How the VM's NIC is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Net {
    /// QEMU's user-mode network (`-netdev user`): what `lab run` and `lab clone` give.
    User,
    /// A tap device in a network namespace (a lab cluster's bridge, [`super::cluster::net`]):
    /// QEMU runs inside the namespace (`ip netns exec`, which execs it: the pid stays QEMU's)
    /// and opens the tap by name, with no helper scripts.
    Tap {
        /// The namespace.
        netns: String,
        /// The tap device in it.
        ifname: String,
    },
}

impl Net {
    /// The `-netdev` value.
    fn netdev(&self) -> String {
        match self {
            Net::User => "user,id=net0".into(),
            Net::Tap { ifname, .. } => {
                format!("tap,id=net0,ifname={ifname},script=no,downscript=no")
            }
        }
    }
}

/// The QEMU arguments for `spec` (without the program), the NIC on `net`. `vars` is the VM's
/// private copy of the UEFI variable store (`Firmware::Efi` only; SeaBIOS needs no arguments
/// at all).
pub fn args(spec: &VmSpec<'_>, vars: Option<&Path>, net: &Net) -> anyhow::Result<Vec<String>> {
    let esc = |p: &Path| p.display().to_string().replace(',', ",,");
    let accel = match spec.accel {
        Accel::Kvm => "kvm",
        _ => "tcg",
    };
    let mut a: Vec<String> = vec![
        "-machine".into(),
        format!("pc,accel={accel}"),
        "-m".into(),
        spec.memory_mib.to_string(),
        "-smp".into(),
        spec.cpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
    ];
    match (spec.firmware, vars) {
        (Firmware::Efi, Some(vars)) => a.extend([
            "-drive".into(),
            format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", esc(vars)),
        ]),
        (Firmware::Efi, None) => bail!("UEFI boot needs a copy of the OVMF variable store"),
        // QEMU's default firmware for `pc` is SeaBIOS.
        (Firmware::Bios, _) => {}
    }
    a.extend([
        "-drive".into(),
        format!("if=none,id=disk0,format=qcow2,file={}", esc(spec.disk)),
        "-device".into(),
        "virtio-blk-pci,drive=disk0,bootindex=0".into(),
        // The OVF environment on a CD-ROM, /dev/sr0 in the guest, as vSphere attaches it.
        // A SCSI CD-ROM (virtio-scsi): with OVMF under TCG the legacy IDE port of `pc` shows
        // no ATAPI device to Debian's kernel, and the guest only cares about /dev/sr*.
        "-device".into(),
        "virtio-scsi-pci,id=scsi0".into(),
        "-drive".into(),
        format!("if=none,id=cd0,media=cdrom,readonly=on,format=raw,file={}", esc(spec.cdrom)),
        "-device".into(),
        "scsi-cd,bus=scsi0.0,drive=cd0".into(),
        "-netdev".into(),
        net.netdev(),
        "-device".into(),
        format!("virtio-net-pci,netdev=net0,mac={}", spec.mac),
        "-device".into(),
        "virtio-rng-pci".into(),
    ]);
    if spec.interactive {
        a.extend(["-serial".into(), "mon:stdio".into()]);
    } else {
        a.extend(["-serial".into(), format!("file:{}", spec.serial.display())]);
    }
    let gi_dir = spec.work.join("guestinfo");
    for g in spec.guestinfo {
        fs::create_dir_all(&gi_dir)?;
        let file = gi_dir.join(&g.key);
        fs::write(&file, &g.value)?;
        a.push("-fw_cfg".into());
        a.push(format!("name={FW_CFG_PREFIX}{},file={}", g.key, esc(&file)));
    }
    Ok(a)
}

impl Vm {
    /// Starts QEMU with `extra` arguments after [`args`]'s (`lab run`: `-uuid`; `lab clone`:
    /// vmgenid, QMP, `-incoming`).
    pub fn start_with(spec: &VmSpec<'_>, extra: &[String]) -> anyhow::Result<Self> {
        Self::start_net(spec, extra, &Net::User)
    }

    /// [`Vm::start_with`] with the NIC on `net`.
    pub fn start_net(spec: &VmSpec<'_>, extra: &[String], net: &Net) -> anyhow::Result<Self> {
        let vars = match spec.firmware {
            Firmware::Efi => {
                for f in [OVMF_CODE, OVMF_VARS] {
                    if !Path::new(f).is_file() {
                        bail!("{f} is missing: install the Debian package ovmf (scripts/setup)");
                    }
                }
                let vars = spec.work.join("OVMF_VARS.fd");
                fs::copy(OVMF_VARS, &vars)?;
                Some(vars)
            }
            Firmware::Bios => {
                if !Path::new(SEABIOS).is_file() {
                    bail!(
                        "{SEABIOS} is missing: install the Debian package seabios (scripts/setup)"
                    );
                }
                None
            }
        };
        let mut args = args(spec, vars.as_deref(), net)?;
        args.extend_from_slice(extra);
        let stderr = spec.work.join("qemu.stderr");
        let mut cmd = match net {
            Net::User => Command::new("qemu-system-x86_64"),
            Net::Tap { netns, .. } => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns, "qemu-system-x86_64"]);
                c
            }
        };
        cmd.args(&args).stderr(fs::File::create(&stderr)?);
        if spec.interactive {
            cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit());
        } else {
            cmd.stdin(Stdio::null()).stdout(Stdio::null());
        }
        let child = cmd.spawn().context("starting qemu-system-x86_64 (Debian qemu-system-x86)")?;
        let argv = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        Ok(Self { guard: Guard(Some(child)), stderr, argv })
    }

    /// The command line QEMU runs, program first.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.guard.0.as_ref().map_or(0, Child::id)
    }

    /// Leaves QEMU running after this process ends and returns its pid. The child is not
    /// waited for: when this process exits, init adopts and reaps it.
    pub fn detach(mut self) -> u32 {
        let pid = self.pid();
        drop(self.guard.0.take());
        pid
    }

    /// The exit status if QEMU has exited.
    pub fn try_exit(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match self.guard.0.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("QEMU already stopped"),
        }
    }

    /// Waits for QEMU to exit, killing it after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(s) = self.try_exit()? {
                return Ok(s);
            }
            if started.elapsed() > timeout {
                self.kill();
                bail!("QEMU still running after {}s: killed", timeout.as_secs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines QEMU wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let t = fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        format!("QEMU said: {}", lines[lines.len().saturating_sub(10)..].join("\n"))
    }

    /// Powers off (kills QEMU by pid and reaps it).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.guard.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(firmware: Firmware, work: &'a Path, gi: &'a [GuestinfoArg]) -> VmSpec<'a> {
        VmSpec {
            disk: Path::new("/tmp/overlay.qcow2"),
            cdrom: Path::new("/tmp/ovf-env.iso"),
            guestinfo: gi,
            mac: "52:54:00:12:34:56",
            accel: Accel::Tcg,
            firmware,
            memory_mib: 1024,
            cpus: 2,
            serial: Path::new("/tmp/serial.log"),
            work,
            interactive: false,
        }
    }

    #[test]
    fn efi_gets_ovmf_bios_gets_qemus_default_and_the_rest_is_the_same() {
        let t = tempfile::tempdir().unwrap();
        let gi = [GuestinfoArg { key: "metadata".into(), value: b"x".to_vec() }];
        let vars = t.path().join("OVMF_VARS.fd");
        let efi = args(&spec(Firmware::Efi, t.path(), &gi), Some(&vars), &Net::User).unwrap();
        let bios = args(&spec(Firmware::Bios, t.path(), &gi), None, &Net::User).unwrap();
        let pflash: Vec<&String> = efi.iter().filter(|a| a.starts_with("if=pflash")).collect();
        assert_eq!(pflash.len(), 2, "{efi:?}");
        assert!(pflash[0].contains(OVMF_CODE));
        assert!(!bios.iter().any(|a| a.contains("pflash") || a == "-bios"), "{bios:?}");
        // Disk, OVF ENV CD-ROM, NIC and fw_cfg guestinfo are wired the same way for both.
        let rest: Vec<&String> = efi
            .iter()
            .enumerate()
            .filter(|(i, a)| {
                !a.starts_with("if=pflash")
                    && efi.get(i + 1).is_none_or(|n| !n.starts_with("if=pflash"))
            })
            .map(|(_, a)| a)
            .collect();
        assert_eq!(rest, bios.iter().collect::<Vec<_>>());
        assert!(bios.iter().any(|a| a == "scsi-cd,bus=scsi0.0,drive=cd0"));
        assert!(bios.iter().any(|a| a.starts_with("name=opt/capstan/guestinfo/metadata,file=")));
        assert!(args(&spec(Firmware::Efi, t.path(), &gi), None, &Net::User).is_err());
    }

    #[test]
    fn a_tap_nic_replaces_user_networking_and_nothing_else() {
        let t = tempfile::tempdir().unwrap();
        let s = spec(Firmware::Bios, t.path(), &[]);
        let user = args(&s, None, &Net::User).unwrap();
        let tap = Net::Tap { netns: "capstan-lab".into(), ifname: "tap-cp-0".into() };
        let tapped = args(&s, None, &tap).unwrap();
        let diff: Vec<(&String, &String)> =
            user.iter().zip(&tapped).filter(|(a, b)| a != b).collect();
        assert_eq!(
            diff,
            [(
                &"user,id=net0".to_string(),
                &"tap,id=net0,ifname=tap-cp-0,script=no,downscript=no".to_string()
            )]
        );
        assert!(tapped.iter().any(|a| a == "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56"));
    }
}
