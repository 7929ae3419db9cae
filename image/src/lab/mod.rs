//! The QEMU lab: boot a built template on this machine the way vSphere would deliver its
//! configuration, and report what the agent applied.
//!
//! - the disk is never written: QEMU runs on a qcow2 overlay in a temporary directory, or in
//!   the VM's directory in a state dir (an OVA's streamOptimized VMDK is used directly as the
//!   overlay's backing file);
//! - vApp properties become an OVF environment (`ovf-env.xml`) on an ISO labelled `OVF ENV`
//!   attached as an IDE CD-ROM (`/dev/sr0`), as vCenter's ISO transport does;
//! - guestinfo keys (CAPV's `metadata`/`userdata`, `capstan.*`) go through QEMU fw_cfg as
//!   `opt/capstan/guestinfo/<key>`, which the agent reads;
//! - the firmware is OVMF (UEFI) or SeaBIOS (legacy BIOS, QEMU's default), as the OVA's
//!   descriptor asks (`vmw:Config firmware`) or, for a bare disk, as its MBR says (`firmware`);
//! - the serial console goes to a log file; the image's `capstan-report.service` prints the
//!   agent's `status --json` between markers when first boot is done, which is what
//!   `--wait-ready` waits for;
//! - every VM gets its own SMBIOS system UUID (`-uuid`), random unless given, as vSphere gives
//!   each VM a BIOS UUID; the agent takes it as the instance-id when no source names one;
//! - QEMU is always killed by pid at the end (also on error, timeout or panic), unless it is
//!   detached: then its directory and record stay in a state dir ([`state`]) for
//!   `capstan lab stop` and the hub's `lab` remediation.

pub mod clone;
pub mod cluster;
pub mod env;
pub mod firmware;
pub mod qemu;
pub mod state;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use self::firmware::{Decision, FirmwareChoice};
use self::state::Work;
use crate::check::{self, ImageFormat};
use crate::firmware::Firmware;

/// Start of the ready report on the serial console (printed by `capstan-report.service`).
pub const MARK_BEGIN: &str = "CAPSTAN-READY-BEGIN";
/// End of the ready report.
pub const MARK_END: &str = "CAPSTAN-READY-END";

/// A guestinfo value from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestinfoArg {
    /// Key without the `guestinfo.` prefix (`metadata`, `capstan.hostname`).
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
}

/// vSphere's limit for one guestinfo value.
pub const GUESTINFO_MAX: usize = 64 * 1024;

impl GuestinfoArg {
    /// Parses `KEY=VALUE` or `KEY=@FILE`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let (key, value) = s
            .split_once('=')
            .with_context(|| format!("--guestinfo {s:?}: expected KEY=VALUE or KEY=@FILE"))?;
        let key = key.strip_prefix("guestinfo.").unwrap_or(key);
        if key.is_empty()
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            bail!("--guestinfo key {key:?}: use letters, digits, '.', '-' and '_'");
        }
        // fw_cfg names are at most 55 bytes including "opt/capstan/guestinfo/".
        if qemu::FW_CFG_PREFIX.len() + key.len() > 55 {
            bail!(
                "--guestinfo key {key:?} is too long for QEMU fw_cfg (at most {} bytes)",
                55 - qemu::FW_CFG_PREFIX.len()
            );
        }
        let value = match value.strip_prefix('@') {
            Some(path) => {
                std::fs::read(path).with_context(|| format!("--guestinfo {key}: reading {path}"))?
            }
            None => value.as_bytes().to_vec(),
        };
        if value.len() > GUESTINFO_MAX {
            bail!(
                "--guestinfo {key}: value is {} bytes; vSphere allows at most {GUESTINFO_MAX}",
                value.len()
            );
        }
        Ok(Self { key: key.to_string(), value })
    }
}

/// Parses `KEY=VALUE` for `--prop`.
pub fn parse_prop(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s.split_once('=').with_context(|| format!("--prop {s:?}: expected KEY=VALUE"))?;
    if k.is_empty() || k.chars().any(|c| c.is_whitespace() || c == '"' || c == '<') {
        bail!("--prop key {k:?} is not a property key");
    }
    Ok((k.to_string(), v.to_string()))
}

/// QEMU accelerator choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Probe KVM, fall back to TCG.
    Auto,
    /// KVM.
    Kvm,
    /// TCG (software).
    Tcg,
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// The image (OVA, qcow2, raw, VMDK).
    pub image: PathBuf,
    /// vApp property values (`--prop`).
    pub props: Vec<(String, String)>,
    /// guestinfo keys (`--guestinfo`).
    pub guestinfo: Vec<GuestinfoArg>,
    /// First NIC's MAC.
    pub mac: String,
    /// Wait for the ready report, then power off (unless `detach`).
    pub wait_ready: bool,
    /// Leave QEMU running when the command ends (after the ready report with `wait_ready`,
    /// else at once); implies a state dir.
    pub detach: bool,
    /// The SMBIOS system UUID (`None`: a random one, as vSphere gives each new VM).
    pub uuid: Option<String>,
    /// Keep the VM's files and record in `DIR/<uuid>/` (default with `detach`:
    /// [`state::DEFAULT_DIR`]).
    pub state_dir: Option<PathBuf>,
    /// Give up after this long.
    pub timeout: Duration,
    /// Accelerator.
    pub accel: Accel,
    /// Firmware (`Auto`: the OVA's descriptor, or the disk's MBR).
    pub firmware: FirmwareChoice,
    /// Memory.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u32,
    /// An ISO to attach instead of the generated OVF environment (e.g. a NoCloud seed).
    pub cdrom: Option<PathBuf>,
    /// A seed directory to attach as an ISO (label `cidata` or `config-2`) instead of the
    /// generated OVF environment.
    pub seed: Option<env::Seed>,
    /// Keep the serial log here (default: inside the temporary directory, printed on failure).
    pub serial_log: Option<PathBuf>,
    /// Cache directory (for the KVM probe verdict).
    pub cache: PathBuf,
}

/// What a lab run saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LabResult {
    /// The ready report arrived.
    pub ready: bool,
    /// The VM's SMBIOS system UUID (the agent's instance-id unless its sources give one).
    pub uuid: String,
    /// The VM's kept directory (`DIR/<uuid>`), with `--state-dir` or `--detach`.
    pub state: Option<PathBuf>,
    /// QEMU's pid, when it was left running (`--detach`).
    pub pid: Option<u32>,
    /// Accelerator used.
    pub accel: Accel,
    /// Firmware used: `efi` (OVMF) or `bios` (SeaBIOS).
    pub firmware: Firmware,
    /// Why that firmware: the OVA descriptor's `firmware` key, the disk's MBR, or `--firmware`.
    pub firmware_from: String,
    /// Seconds from starting QEMU to the ready report.
    pub boot_seconds: Option<f64>,
    /// Guest uptime when the report was printed.
    pub guest_uptime: Option<f64>,
    /// The agent's `status --json` (or whatever JSON the image's report unit printed).
    pub status: Option<serde_json::Value>,
    /// The exit code of the status command in the guest.
    pub status_rc: Option<i32>,
    /// The OVF environment delivered (keys and values).
    pub ovf_env: Vec<(String, String)>,
    /// The serial log (when kept).
    pub serial_log: Option<PathBuf>,
}

/// A parsed ready report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Guest uptime.
    pub uptime: Option<f64>,
    /// Parsed JSON.
    pub status: Option<serde_json::Value>,
    /// Raw text between the markers (when it is not JSON).
    pub text: String,
    /// Exit code.
    pub rc: Option<i32>,
}

fn field<T: std::str::FromStr>(line: &str, name: &str) -> Option<T> {
    line.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

/// Finds the ready report in serial console text, if complete.
pub fn find_report(log: &str) -> Option<Report> {
    let start = log.find(MARK_BEGIN)?;
    let rest = &log[start..];
    let end = rest.find(MARK_END)?;
    let (head, body) = rest[..end].split_once('\n')?;
    let tail = rest[end..].lines().next().unwrap_or("");
    // Kernel or systemd lines may interleave with the report: keep lines that belong to it.
    let text: String = body
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let status = serde_json::from_str(&text).ok().or_else(|| {
        let filtered: String = text
            .lines()
            .filter(|l| !l.starts_with('[') || l.starts_with("[{") || l.trim() == "[")
            .collect::<Vec<_>>()
            .join("\n");
        serde_json::from_str(&filtered).ok()
    });
    Some(Report { uptime: field(head, "uptime"), status, text, rc: field(tail, "rc") })
}

/// Why a ready report says first boot did not succeed (`None` when its status command
/// exited 0, or when its end line was cut and gives no code): the exit code, the failed
/// steps with their errors, the status's errors.
pub fn report_failure(r: &Report) -> Option<String> {
    let rc = r.rc.filter(|c| *c != 0)?;
    let rc = format!("exit code {rc}");
    let mut why = Vec::new();
    if let Some(st) = &r.status {
        for s in st["steps"].as_array().into_iter().flatten() {
            if s["status"] == "failed" {
                let name = s["name"].as_str().unwrap_or("?");
                why.push(format!("step {name} failed: {}", s["error"].as_str().unwrap_or("")));
            }
        }
        for e in st["errors"].as_array().into_iter().flatten().filter_map(|e| e.as_str()) {
            why.push(e.to_owned());
        }
    } else if !r.text.is_empty() {
        why.push(r.text.lines().take(5).collect::<Vec<_>>().join(" / "));
    }
    let why = if why.is_empty() { String::new() } else { format!(": {}", why.join("; ")) };
    Some(format!("its first-boot status command reported {rc}{why}"))
}

/// Boots the image and (with `wait_ready`) waits for the report. With a state dir (or
/// `detach`), the VM's files stay in `DIR/<uuid>/` with its record ([`state`]); a run that
/// fails removes the directory it created.
pub fn run(opts: &LabOptions) -> anyhow::Result<LabResult> {
    let uuid = match &opts.uuid {
        Some(u) => u.clone(),
        None => state::new_uuid(),
    };
    let state_dir =
        opts.state_dir.clone().or_else(|| opts.detach.then(|| PathBuf::from(state::DEFAULT_DIR)));
    let work = match &state_dir {
        Some(d) => Work::create(d, &uuid)?,
        None => Work::temp()?,
    };
    let result = run_in(opts, &uuid, &work, state_dir.as_deref());
    if let (Err(_), Some(dir)) = (&result, work.kept()) {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// The disk, firmware, CD-ROM and accelerator of a run.
struct Prepared {
    disk: qemu::PreparedDisk,
    fw: Decision,
    cdrom: PathBuf,
    ovf_env: Vec<(String, String)>,
    accel: Accel,
}

fn prepare(opts: &LabOptions, work: &Path) -> anyhow::Result<Prepared> {
    // Before the disk is extracted: a descriptor that asks for no valid firmware fails fast.
    let fw = given_firmware(opts.firmware, &opts.image, work)?;
    let disk = qemu::prepare_disk(&opts.image, work)?;
    let fw = match fw {
        Some(fw) => fw,
        None => firmware::from_first_sector(&firmware::first_sector(&disk.overlay, "qcow2", work)?),
    };
    let (cdrom, ovf_env) = match (&opts.cdrom, &opts.seed) {
        // Absolute: a kept VM's command line (argv.json) is run again from anywhere.
        (Some(iso), _) => (std::path::absolute(iso)?, Vec::new()),
        (None, Some(seed)) => (env::write_seed_iso(seed, work)?, Vec::new()),
        (None, None) => {
            let props = env::environment_for(&opts.image, &opts.props, work)?;
            let env = env::build_environment(&props, &opts.mac);
            let iso = env::write_iso(&env, work)?;
            (iso, props)
        }
    };
    let accel = match opts.accel {
        Accel::Auto => qemu::probe_kvm(&disk.kernel_probe, &opts.cache, work),
        a => a,
    };
    Ok(Prepared { disk, fw, cdrom, ovf_env, accel })
}

fn run_in(
    opts: &LabOptions,
    uuid: &str,
    work: &Work,
    state_dir: Option<&Path>,
) -> anyhow::Result<LabResult> {
    let p = prepare(opts, work.path())?;
    let serial = opts.serial_log.clone().unwrap_or_else(|| work.path().join("serial.log"));
    let serial = std::path::absolute(&serial)?;
    // QEMU appends to an existing file: a stale report must never look like this boot's.
    if serial.exists() {
        std::fs::remove_file(&serial)
            .with_context(|| format!("removing old serial log {}", serial.display()))?;
    }
    let spec = qemu::VmSpec {
        disk: &p.disk.overlay,
        cdrom: &p.cdrom,
        guestinfo: &opts.guestinfo,
        mac: &opts.mac,
        accel: p.accel,
        firmware: p.fw.firmware,
        memory_mib: opts.memory_mib,
        cpus: opts.cpus,
        serial: &serial,
        work: work.path(),
        interactive: !opts.wait_ready && !opts.detach,
    };
    // The SMBIOS type 1 UUID, which the guest reads as /sys/class/dmi/id/product_uuid.
    let mut vm = qemu::Vm::start_with(&spec, &["-uuid".into(), uuid.to_owned()])?;
    let started = Instant::now();
    if let Some(dir) = work.kept() {
        state::write_argv(dir, vm.argv())?;
        state::write_pid(dir, vm.pid())?;
    }
    let mut result = LabResult {
        ready: false,
        uuid: uuid.to_owned(),
        state: work.kept().map(Path::to_path_buf),
        pid: None,
        accel: p.accel,
        firmware: p.fw.firmware,
        firmware_from: p.fw.from,
        boot_seconds: None,
        guest_uptime: None,
        status: None,
        status_rc: None,
        ovf_env: p.ovf_env,
        serial_log: opts.serial_log.clone().or_else(|| work.kept().map(|_| serial.clone())),
    };
    if !opts.wait_ready && !opts.detach {
        let code = vm.wait(opts.timeout)?;
        eprintln!("capstan lab: QEMU exited ({code})");
        return Ok(result);
    }
    if opts.wait_ready {
        let r = wait_report(&mut vm, &serial, opts.timeout, p.accel)?;
        if let Some(why) = report_failure(&r) {
            // Reported, not fatal: the report is the result (tests of refused input read it).
            eprintln!("capstan lab: VM {uuid} reported ready, but {why}");
        }
        result.ready = true;
        result.boot_seconds = Some(started.elapsed().as_secs_f64());
        result.guest_uptime = r.uptime;
        result.status_rc = r.rc;
        result.status = Some(r.status.unwrap_or(serde_json::Value::String(r.text)));
        let iid = result.status.as_ref().and_then(|s| s["instance_id"].as_str());
        if let (Some(dir), Some(iid)) = (state_dir, iid) {
            if let Err(e) = state::link_instance_id(dir, uuid, iid) {
                eprintln!("capstan lab: {e:#}");
            }
        }
    }
    if opts.detach {
        result.pid = Some(vm.detach());
    } else {
        vm.kill();
        if let Some(dir) = work.kept() {
            // The record stays (the VM can be started again from it); the process is gone.
            let _ = std::fs::remove_file(dir.join(state::PID));
        }
    }
    Ok(result)
}

/// Polls the serial log until the ready report is complete.
fn wait_report(
    vm: &mut qemu::Vm,
    serial: &Path,
    timeout: Duration,
    accel: Accel,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    loop {
        let log = std::fs::read(serial).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        if let Some(r) = find_report(&log) {
            return Ok(r);
        }
        if let Some(code) = vm.try_exit()? {
            bail!(
                "QEMU exited ({code}) before the image reported ready; {}\n{}",
                vm.stderr_tail(),
                tail(&log, 40)
            );
        }
        if started.elapsed() > timeout {
            bail!(
                "no ready report from the guest within {}s ({accel:?}); last console lines:\n{}",
                timeout.as_secs(),
                tail(&log, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `--firmware`, else what an OVA's descriptor asks for; `None` for a bare disk (its MBR
/// decides, once the overlay exists). `lab run` and `lab clone` alike.
pub(crate) fn given_firmware(
    choice: FirmwareChoice,
    image: &Path,
    work: &Path,
) -> anyhow::Result<Option<Decision>> {
    if let FirmwareChoice::Force(firmware) = choice {
        return Ok(Some(Decision { firmware, from: "--firmware".into() }));
    }
    // An unreadable path is not an OVA here; preparing the disk names the problem.
    if check::sniff(image).ok() == Some(ImageFormat::Ova) {
        let env = env::read_ova_descriptor(image, &work.join("firmware"))?;
        return firmware::from_descriptor(&env, &image.display().to_string()).map(Some);
    }
    Ok(None)
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_found_between_markers() {
        let log = "boot...\r\nCAPSTAN-READY-BEGIN uptime=9.81\r\n{\"hostname\":\"lb-1\",\r\n\"steps\":[]}\r\nCAPSTAN-READY-END rc=0\r\n";
        let r = find_report(log).unwrap();
        assert_eq!(r.uptime, Some(9.81));
        assert_eq!(r.rc, Some(0));
        assert_eq!(r.status.unwrap()["hostname"], "lb-1");
    }

    #[test]
    fn interleaved_kernel_lines_are_dropped() {
        let log = "CAPSTAN-READY-BEGIN uptime=1\n{\"a\":\n[   12.5] random: crng init done\n1}\nCAPSTAN-READY-END rc=3\n";
        let r = find_report(log).unwrap();
        assert_eq!(r.status.unwrap()["a"], 1);
        assert_eq!(r.rc, Some(3));
    }

    #[test]
    fn a_failed_report_says_why() {
        let ok = find_report("CAPSTAN-READY-BEGIN uptime=1\n{}\nCAPSTAN-READY-END rc=0\n").unwrap();
        assert_eq!(report_failure(&ok), None);
        let log =
            "CAPSTAN-READY-BEGIN uptime=1\n{\"steps\":[{\"name\":\"hostname\",\"status\":\"ok\"},\
            {\"name\":\"network\",\"status\":\"failed\",\"error\":\"bad MAC\"}],\
            \"errors\":[\"guestinfo key metadata: bad\"]}\nCAPSTAN-READY-END rc=1\n";
        let why = report_failure(&find_report(log).unwrap()).unwrap();
        assert!(why.contains("exit code 1"), "{why}");
        assert!(why.contains("step network failed: bad MAC"), "{why}");
        assert!(why.contains("guestinfo key metadata: bad") && !why.contains("hostname"), "{why}");
        let text = "CAPSTAN-READY-BEGIN uptime=1\nsh: capstan-agent: Input/output error\nCAPSTAN-READY-END rc=126\n";
        let why = report_failure(&find_report(text).unwrap()).unwrap();
        assert!(why.contains("exit code 126") && why.contains("Input/output error"), "{why}");
        // an end line cut by other console output gives no code: not taken as a failure
        let cut = "CAPSTAN-READY-BEGIN uptime=1\n{}\nCAPSTAN-READY-END\n";
        assert_eq!(report_failure(&find_report(cut).unwrap()), None);
    }

    #[test]
    fn incomplete_report_is_not_ready() {
        assert!(find_report("CAPSTAN-READY-BEGIN uptime=1\n{\"a\":1}\n").is_none());
        assert!(find_report("nothing").is_none());
    }

    #[test]
    fn guestinfo_args_are_checked() {
        let g = GuestinfoArg::parse("guestinfo.metadata=abc").unwrap();
        assert_eq!(g.key, "metadata");
        assert_eq!(g.value, b"abc");
        assert!(GuestinfoArg::parse("novalue").is_err());
        assert!(GuestinfoArg::parse("bad key=1").is_err());
        assert!(GuestinfoArg::parse(&format!("{}=1", "k".repeat(40))).is_err());
        let big = format!("userdata={}", "x".repeat(GUESTINFO_MAX + 1));
        assert!(GuestinfoArg::parse(&big).unwrap_err().to_string().contains("at most 65536"));
        let err = GuestinfoArg::parse("metadata=@/nonexistent/file").unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/file"));
    }

    #[test]
    fn props_are_key_value() {
        assert_eq!(
            parse_prop("capstan.hostname=lb-1").unwrap(),
            ("capstan.hostname".to_string(), "lb-1".to_string())
        );
        assert_eq!(parse_prop("k=a=b").unwrap().1, "a=b");
        assert!(parse_prop("novalue").is_err());
    }
}
