//! One cluster VM: its directory, disk overlay, OVF environment (the template's property
//! defaults, as vSphere delivers them), firmware (from the OVA's descriptor), guestinfo
//! through fw_cfg (CAPV's metadata and user-data, base64 with their `.encoding` keys as CAPV
//! sets them, plus `capstan.*` keys), and QEMU started detached inside the cluster's
//! namespace on the VM's tap. Readiness is the image's ready report on the serial console,
//! as for `capstan lab run --wait-ready`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;

use super::plan::VmPlan;
use crate::check::{self, ImageFormat};
use crate::lab::{self, env, firmware, qemu, state as vmstate, Accel, GuestinfoArg};

/// What a VM is started with.
#[derive(Debug, Clone)]
pub struct Boot<'a> {
    /// The template (an OVA from `capstan build`).
    pub image: &'a Path,
    /// The VM's directory (created).
    pub dir: PathBuf,
    /// Its place in the plan.
    pub vm: &'a VmPlan,
    /// The cluster's namespace.
    pub netns: &'a str,
    /// CAPV's metadata.
    pub metadata: String,
    /// CABPK's user-data (nodes only).
    pub userdata: Option<String>,
    /// Further guestinfo keys (`capstan.role`, `capstan.lb.*`).
    pub guestinfo: Vec<(String, String)>,
    /// Accelerator (not Auto).
    pub accel: Accel,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u32,
}

/// A started VM.
#[derive(Debug, Clone)]
pub struct Started {
    /// Its SMBIOS UUID.
    pub uuid: String,
    /// QEMU's pid.
    pub pid: u32,
    /// When it started.
    pub at: Instant,
    /// Its serial log.
    pub serial: PathBuf,
}

fn encoded(key: &str, text: &str) -> [GuestinfoArg; 2] {
    let b64 = base64::engine::general_purpose::STANDARD.encode(text);
    [
        GuestinfoArg { key: key.into(), value: b64.into_bytes() },
        GuestinfoArg { key: format!("{key}.encoding"), value: b"base64".to_vec() },
    ]
}

fn guestinfo(b: &Boot<'_>) -> anyhow::Result<Vec<GuestinfoArg>> {
    let mut gi: Vec<GuestinfoArg> = encoded("metadata", &b.metadata).into();
    if let Some(u) = &b.userdata {
        gi.extend(encoded("userdata", u));
    }
    for (k, v) in &b.guestinfo {
        gi.push(GuestinfoArg { key: k.clone(), value: v.clone().into_bytes() });
    }
    for g in &gi {
        if g.value.len() > lab::GUESTINFO_MAX {
            bail!(
                "{}: guestinfo.{} is {} bytes, vSphere allows {}",
                b.vm.name,
                g.key,
                g.value.len(),
                lab::GUESTINFO_MAX
            );
        }
    }
    Ok(gi)
}

/// Starts the VM and leaves it running (its pid and command line in its directory).
pub fn start(b: &Boot<'_>) -> anyhow::Result<Started> {
    let dir = &b.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if check::sniff(b.image)? != ImageFormat::Ova {
        bail!("{}: a lab cluster boots OVAs (from `capstan build`)", b.image.display());
    }
    let descriptor = env::read_ova_descriptor(b.image, &dir.join("descriptor"))?;
    let fw = firmware::from_descriptor(&descriptor, &b.image.display().to_string())?;
    let disk = qemu::prepare_disk(b.image, dir)?;
    let props = env::environment_for(b.image, &[], dir)?;
    let cdrom = env::write_iso(&env::build_environment(&props, &b.vm.mac), dir)?;
    let serial = std::path::absolute(dir.join("serial.log"))?;
    let gi = guestinfo(b)?;
    let spec = qemu::VmSpec {
        disk: &disk.overlay,
        cdrom: &cdrom,
        guestinfo: &gi,
        mac: &b.vm.mac,
        accel: b.accel,
        firmware: fw.firmware,
        memory_mib: b.memory_mib,
        cpus: b.cpus,
        serial: &serial,
        work: dir,
        interactive: false,
    };
    let uuid = vmstate::new_uuid();
    let net = qemu::Net::Tap { netns: b.netns.to_owned(), ifname: b.vm.tap.clone() };
    let vm = qemu::Vm::start_net(&spec, &["-uuid".into(), uuid.clone()], &net)?;
    let at = Instant::now();
    // `ip netns exec NS` execs QEMU: the process's command line (what `runs` compares) is
    // QEMU's own from there on
    let argv = vm.argv();
    let qemu_argv =
        argv.iter().position(|a| a == "qemu-system-x86_64").map_or(argv, |i| &argv[i..]);
    vmstate::write_argv(dir, qemu_argv)?;
    vmstate::write_pid(dir, vm.pid())?;
    Ok(Started { uuid, pid: vm.detach(), at, serial })
}

/// Waits for the ready report of a started VM; the seconds since it started.
pub fn wait_ready(name: &str, s: &Started, timeout: Duration) -> anyhow::Result<f64> {
    loop {
        let log = std::fs::read(&s.serial).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        if let Some(r) = lab::find_report(&log) {
            if let Some(why) = lab::report_failure(&r) {
                eprintln!("{name}: reported ready, but {why}");
            }
            return Ok(s.at.elapsed().as_secs_f64());
        }
        if !Path::new(&format!("/proc/{}", s.pid)).exists() || zombie(s.pid) {
            bail!(
                "{name}: QEMU (pid {}) exited before the ready report; see {}",
                s.pid,
                s.serial.display()
            );
        }
        if s.at.elapsed() > timeout {
            let lines: Vec<&str> = log.lines().collect();
            bail!(
                "{name}: no ready report within {}s; last console lines:\n{}",
                timeout.as_secs(),
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(true)
}
