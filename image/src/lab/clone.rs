//! `capstan lab clone`: the lab's instant clone, as vSphere's `InstantClone_Task` forks a
//! frozen parent.
//!
//! 1. The parent boots like `lab run` (guestinfo over fw_cfg, OVF environment CD-ROM, user
//!    networking), plus a VM generation id (`-device vmgenid`), an SMBIOS UUID and a QMP
//!    socket, and the fw_cfg file `opt/capstan/freeze` (`1`), which makes the image's
//!    `capstan-agent-freeze.service` run `capstan-agent freeze` at the end of boot. The lab
//!    waits for the ready report and the agent's `CAPSTAN-FROZEN` line.
//! 2. The lab stops the parent and saves its memory and device state with QMP `migrate` to a
//!    `file:`; QEMU flushes the disk as the migration completes, and the parent is then killed,
//!    so its qcow2 overlay never changes again: it is the children's backing file.
//! 3. Each child gets a qcow2 overlay over the parent's, its own generation id, SMBIOS UUID,
//!    MAC and guestinfo (fw_cfg comes from the destination's command line; see
//!    [`plan`] for why every VM has the same keys and value lengths), and starts paused with
//!    `-incoming file:`.
//! 4. Children are resumed one at a time (`cont`), so each one's time from resume to the
//!    agent's `CAPSTAN-REIDENTIFIED` line is measured without the others competing for the
//!    CPU; that line's JSON (the child's facts and steps) is its report.
//!
//! Every QEMU is killed by pid and the work directory removed when this returns, also on
//! error; every wait has a timeout.

pub mod plan;
pub mod qmp;
pub mod signal;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use self::plan::{ChildGuestinfo, VmPlan, Wiring};
use self::qmp::Qmp;
use self::signal::{Identity, MARK_AFTER, MARK_FROZEN, MARK_REFUSED, MARK_REIDENTIFIED};
use super::firmware::{self, FirmwareChoice};
use super::{env, find_report, qemu, Accel, GuestinfoArg};
use crate::check::{self, ImageFormat};
use crate::exec;
use crate::firmware::Firmware;

/// How children reach the network: each VM has its own QEMU user-mode network (10.0.2.0/24,
/// gateway 10.0.2.2), so addresses never collide on the host; a child's address is the
/// static one its own guestinfo metadata gives, applied live by the agent.
pub const ADDRESSING: &str =
    "static, from each child's guestinfo metadata; one QEMU user-mode network per VM";

/// What to clone and how.
#[derive(Debug, Clone)]
pub struct CloneOptions {
    /// The image (OVA, qcow2, raw, VMDK).
    pub image: PathBuf,
    /// vApp property values for the parent's OVF environment (children keep it).
    pub props: Vec<(String, String)>,
    /// The parent's guestinfo; children inherit it.
    pub guestinfo: Vec<GuestinfoArg>,
    /// Per-child guestinfo over the parent's.
    pub per_child: Vec<ChildGuestinfo>,
    /// Number of children.
    pub children: usize,
    /// The parent's MAC (children get [`plan::child_mac`]).
    pub mac: String,
    /// Longest wait for the parent to be ready and frozen.
    pub timeout: Duration,
    /// Longest wait, per child, from resume to its report after re-identifying.
    pub reidentify_timeout: Duration,
    /// Accelerator.
    pub accel: Accel,
    /// Firmware.
    pub firmware: FirmwareChoice,
    /// Memory per VM.
    pub memory_mib: u64,
    /// vCPUs per VM.
    pub cpus: u32,
    /// Copy every VM's serial log and QEMU stderr here (also on failure).
    pub log_dir: Option<PathBuf>,
    /// Cache directory (for the KVM probe verdict).
    pub cache: PathBuf,
}

/// One VM of the clone as reported.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VmReport {
    /// `parent`, `child-1`, ...
    pub name: String,
    /// 0 for the parent.
    pub index: usize,
    /// What the agent's status says (`mac` falls back to the NIC's MAC as QEMU sees it).
    #[serde(flatten)]
    pub identity: Identity,
    /// Milliseconds from `cont` to the "re-identified" line (children).
    pub reidentify_ms: Option<f64>,
    /// The agent's own measure on that line (`reidentify_ms`: from noticing the new
    /// identity to its last step before the line), if it gave one.
    pub agent_reidentify_ms: Option<f64>,
    /// Milliseconds from `cont` to the `CAPSTAN-REIDENTIFIED-AFTER` line: the steps that run
    /// after the re-identified line (daemons told of what was already true) ended.
    pub after_ms: Option<f64>,
    /// The agent's own measure on that line (`after_ms`, from noticing).
    pub agent_after_ms: Option<f64>,
    /// Guest uptime: the parent's when frozen, a child's at its report.
    pub uptime: Option<f64>,
    /// The MAC on the QEMU command line.
    pub nic_mac: String,
    /// The NIC's MAC in QEMU's device state after the report (QMP `query-rx-filter`): a
    /// child starts with the parent's (virtio-net migrates it) until the guest sets its own.
    pub device_mac: Option<String>,
    /// VM generation id.
    pub vmgenid: String,
    /// SMBIOS system UUID given to QEMU.
    pub uuid: String,
    /// The parent's `CAPSTAN-FROZEN` facts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frozen: Option<Value>,
    /// The parent: the agent's `status --json` from its ready report; a child: its
    /// `CAPSTAN-REIDENTIFIED` record (facts, trigger, steps with durations).
    pub status: Option<Value>,
    /// Exit code of the status command.
    pub status_rc: Option<i32>,
}

/// What a lab clone saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CloneResult {
    /// Accelerator used.
    pub accel: Accel,
    /// Firmware used.
    pub firmware: Firmware,
    /// How children get distinct addresses ([`ADDRESSING`]).
    pub addressing: &'static str,
    /// Seconds from starting the parent to it being ready and frozen.
    pub parent_boot_seconds: f64,
    /// Seconds to save the parent's state.
    pub save_seconds: f64,
    /// Size of the saved state.
    pub state_bytes: u64,
    /// The parent.
    pub parent: VmReport,
    /// The children, in order.
    pub children: Vec<VmReport>,
}

/// The disk, CD-ROM and machine settings every VM of the clone shares.
struct Base {
    parent_disk: PathBuf,
    cdrom: PathBuf,
    accel: Accel,
    firmware: Firmware,
}

/// Boots the parent, saves it, starts and measures the children.
pub fn run(opts: &CloneOptions) -> anyhow::Result<CloneResult> {
    let work = tempfile::Builder::new().prefix("capstan-lab-clone").tempdir()?;
    let vms = plan::plan(&opts.mac, &opts.guestinfo, &opts.per_child, opts.children)?;
    let result = run_in(opts, &vms, work.path());
    if let Some(dir) = &opts.log_dir {
        if let Err(e) = keep_logs(work.path(), &vms, dir) {
            eprintln!("capstan lab clone: keeping logs in {}: {e:#}", dir.display());
        }
    }
    result
}

fn run_in(opts: &CloneOptions, vms: &[VmPlan], work: &Path) -> anyhow::Result<CloneResult> {
    let base = prepare(opts, &vms[0], work)?;
    let state = work.join("parent.state");
    let started = Instant::now();
    let (parent, save_seconds) = boot_and_save(opts, &base, &vms[0], work, &state)?;
    let parent_boot_seconds = started.elapsed().as_secs_f64() - save_seconds;
    let state_bytes = std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "capstan lab clone: parent saved in {save_seconds:.1}s ({} MiB); starting {} children",
        state_bytes >> 20,
        vms.len() - 1
    );
    let mut children = Vec::new();
    for vm in &vms[1..] {
        children.push(start_child(opts, &base, vm, work, &state)?);
    }
    let mut reports = Vec::new();
    for c in &mut children {
        c.wait_loaded(opts.timeout)?;
    }
    for c in &mut children {
        let r = c.resume_and_report(opts.reidentify_timeout)?;
        eprintln!(
            "capstan lab clone: {} re-identified {:.0} ms after resume",
            r.name,
            r.reidentify_ms.unwrap_or_default()
        );
        reports.push(r);
    }
    Ok(CloneResult {
        accel: base.accel,
        firmware: base.firmware,
        addressing: ADDRESSING,
        parent_boot_seconds,
        save_seconds,
        state_bytes,
        parent,
        children: reports,
    })
}

/// The parent's overlay, the firmware, the accelerator and the OVF environment ISO.
fn prepare(opts: &CloneOptions, parent: &VmPlan, work: &Path) -> anyhow::Result<Base> {
    if work.to_str().is_none_or(|s| s.contains(',')) {
        bail!("{}: the work directory must be UTF-8 without ','", work.display());
    }
    let pdir = work.join(&parent.name);
    std::fs::create_dir_all(&pdir)?;
    let fw = super::given_firmware(opts.firmware, &opts.image, work)?;
    let disk = qemu::prepare_disk(&migratable_base(&opts.image, work)?, &pdir)?;
    let firmware = match fw {
        Some(d) => d.firmware,
        None => {
            firmware::from_first_sector(&firmware::first_sector(&disk.overlay, "qcow2", work)?)
                .firmware
        }
    };
    let props = env::environment_for(&opts.image, &opts.props, work)?;
    let cdrom = env::write_iso(&env::build_environment(&props, &parent.mac), work)?;
    let accel = match opts.accel {
        Accel::Auto => qemu::probe_kvm(&disk.kernel_probe, &opts.cache, work),
        a => a,
    };
    Ok(Base { parent_disk: disk.overlay, cdrom, accel, firmware })
}

/// A disk QEMU can migrate with: its vmdk driver refuses live migration, so an OVA's (or a
/// bare) VMDK is converted to qcow2 first; qcow2 and raw are used as they are.
fn migratable_base(image: &Path, work: &Path) -> anyhow::Result<PathBuf> {
    let (vmdk, extracted) = match check::sniff(image)? {
        ImageFormat::Ova => (check::extract_ova_disk(image, work)?, true),
        ImageFormat::Vmdk => (image.to_path_buf(), false),
        ImageFormat::Qcow2 | ImageFormat::Raw => return Ok(image.to_path_buf()),
    };
    let base = work.join("base.qcow2");
    exec::run(
        Command::new("qemu-img").args(["convert", "-q", "-O", "qcow2"]).arg(&vmdk).arg(&base),
    )
    .with_context(|| {
        format!("converting {} to qcow2 (QEMU cannot migrate vmdk)", vmdk.display())
    })?;
    if extracted {
        // Only the converted copy is used from here on; the extracted VMDK is as large.
        let _ = std::fs::remove_file(&vmdk);
    }
    Ok(base)
}

fn spec<'a>(
    opts: &CloneOptions,
    base: &'a Base,
    vm: &'a VmPlan,
    disk: &'a Path,
    dir: &'a Path,
    serial: &'a Path,
) -> qemu::VmSpec<'a> {
    qemu::VmSpec {
        disk,
        cdrom: &base.cdrom,
        guestinfo: &vm.guestinfo,
        mac: &vm.mac,
        accel: base.accel,
        firmware: base.firmware,
        memory_mib: opts.memory_mib,
        cpus: opts.cpus,
        serial,
        work: dir,
        interactive: false,
    }
}

/// Boots the parent, waits for its report and its "frozen" line, saves its state to
/// `state` and kills it. Returns its report and the seconds the save took.
fn boot_and_save(
    opts: &CloneOptions,
    base: &Base,
    vm: &VmPlan,
    work: &Path,
    state: &Path,
) -> anyhow::Result<(VmReport, f64)> {
    let dir = work.join(&vm.name);
    let serial = dir.join("serial.log");
    let qmp_path = dir.join("qmp.sock");
    let extra = plan::extra_args(vm, Wiring { qmp: &qmp_path, incoming: None })?;
    eprintln!("capstan lab clone: booting the parent ({:?})", base.accel);
    let mut qemu =
        qemu::Vm::start_with(&spec(opts, base, vm, &base.parent_disk, &dir, &serial), &extra)?;
    let mut qmp = Qmp::connect(&qmp_path, Duration::from_secs(60))?;
    let started = Instant::now();
    let (report, frozen) = loop {
        let log = read_log(&serial);
        match parent_progress(&log) {
            Progress::Frozen(r, f) => break (*r, f),
            Progress::Failed(why) => bail!(
                "the parent ({}) will not freeze: {why}; last console lines:\n{}",
                vm.name,
                super::tail(&log, 40)
            ),
            Progress::Booting { missing } if started.elapsed() > opts.timeout => bail!(
                "the parent printed no {missing} within {}s; last console lines:\n{}",
                opts.timeout.as_secs(),
                super::tail(&log, 40)
            ),
            Progress::Booting { .. } => {}
        }
        if let Some(code) = qemu.try_exit()? {
            bail!(
                "the parent's QEMU exited ({code}); {}\n{}",
                qemu.stderr_tail(),
                super::tail(&log, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("capstan lab clone: parent frozen; saving its memory and device state");
    let device_mac = device_mac(&mut qmp);
    let save_started = Instant::now();
    save(&mut qmp, state, opts.timeout).map_err(|e| e.context(qemu.stderr_tail()))?;
    let save_seconds = save_started.elapsed().as_secs_f64();
    qemu.kill();
    let status = report.status.unwrap_or(Value::String(report.text));
    // The agent's facts at the freeze; the ready report's status for what it lacks.
    let facts = frozen.body.clone().unwrap_or_else(|| status.clone());
    let mut identity = signal::identity(&facts);
    if identity == Identity::default() {
        identity = signal::identity(&status);
    }
    Ok((
        VmReport {
            name: vm.name.clone(),
            index: 0,
            identity: with_mac(identity, &device_mac),
            reidentify_ms: None,
            agent_reidentify_ms: None,
            after_ms: None,
            agent_after_ms: None,
            uptime: frozen.number("uptime_s").or(report.uptime),
            nic_mac: vm.mac.clone(),
            device_mac,
            vmgenid: vm.vmgenid.to_string(),
            uuid: vm.uuid.to_string(),
            frozen: frozen.body,
            status: Some(status),
            status_rc: report.rc,
        },
        save_seconds,
    ))
}

/// How far the parent is, from its console.
#[derive(Debug)]
enum Progress {
    /// Not there yet; what is still missing.
    Booting { missing: &'static str },
    /// Its ready report says first boot failed: it will never freeze (its freeze unit runs
    /// after the report, and a parent that is not configured must not be forked).
    Failed(String),
    /// Ready and frozen.
    Frozen(Box<super::Report>, signal::Mark),
}

/// Reads the parent's console so far (see [`Progress`]).
fn parent_progress(log: &str) -> Progress {
    let report = find_report(log);
    if let Some(why) = report.as_ref().and_then(super::report_failure) {
        return Progress::Failed(format!("its ready report says first boot failed: {why}"));
    }
    match (report, signal::find_mark(log, MARK_FROZEN)) {
        (Some(r), Some(f)) => Progress::Frozen(Box::new(r), f),
        (Some(_), None) => Progress::Booting {
            missing: "CAPSTAN-FROZEN line (does the image have capstan-agent-freeze.service?)",
        },
        (None, _) => Progress::Booting { missing: "ready report" },
    }
}

/// Stops the VM and migrates it to `file:STATE`, waiting for completion.
fn save(qmp: &mut Qmp, state: &Path, timeout: Duration) -> anyhow::Result<()> {
    qmp.execute("stop", None)?;
    // The default bandwidth cap (128 MiB/s) only slows a local file down.
    qmp.execute("migrate-set-parameters", Some(json!({ "max-bandwidth": 8u64 << 30 })))?;
    let uri = format!("file:{}", state.display());
    qmp.execute("migrate", Some(json!({ "uri": uri })))?;
    let started = Instant::now();
    loop {
        let m = qmp.execute("query-migrate", None)?;
        match m["status"].as_str() {
            Some("completed") => return Ok(()),
            Some("failed" | "cancelled") => bail!(
                "saving the parent's state to {}: {}",
                state.display(),
                m["error-desc"].as_str().unwrap_or("migration failed")
            ),
            _ if started.elapsed() > timeout => {
                bail!("saving the parent's state took over {}s", timeout.as_secs())
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The first NIC's MAC in QEMU's device state.
fn device_mac(qmp: &mut Qmp) -> Option<String> {
    let filters = qmp.execute("query-rx-filter", None).ok()?;
    filters.as_array()?.first()?["main-mac"].as_str().map(str::to_ascii_lowercase)
}

fn with_mac(mut id: Identity, device_mac: &Option<String>) -> Identity {
    if id.mac.is_none() {
        id.mac = device_mac.clone();
    }
    id
}

fn read_log(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// How often a resumed child's console is read for its line: the resolution of the measured
/// resume -> re-identified time.
const LINE_POLL: Duration = Duration::from_millis(2);

/// A child QEMU, started paused on the parent's saved state.
struct Child<'a> {
    vm: &'a VmPlan,
    qemu: qemu::Vm,
    qmp: Option<Qmp>,
    qmp_path: PathBuf,
    serial: PathBuf,
}

fn start_child<'a>(
    opts: &CloneOptions,
    base: &Base,
    vm: &'a VmPlan,
    work: &Path,
    state: &Path,
) -> anyhow::Result<Child<'a>> {
    let dir = work.join(&vm.name);
    std::fs::create_dir_all(&dir)?;
    let disk = dir.join("disk.qcow2");
    exec::run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base.parent_disk)
            .arg(&disk),
    )
    .with_context(|| format!("creating {}'s overlay on the parent's disk", vm.name))?;
    let serial = dir.join("serial.log");
    let qmp_path = dir.join("qmp.sock");
    let extra = plan::extra_args(vm, Wiring { qmp: &qmp_path, incoming: Some(state) })?;
    let qemu = qemu::Vm::start_with(&spec(opts, base, vm, &disk, &dir, &serial), &extra)
        .with_context(|| format!("starting {}", vm.name))?;
    Ok(Child { vm, qemu, qmp: None, qmp_path, serial })
}

impl Child<'_> {
    /// Waits until the incoming state is loaded (the VM is paused, not `inmigrate`).
    fn wait_loaded(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let name = &self.vm.name;
        let mut qmp = Qmp::connect(&self.qmp_path, Duration::from_secs(60))
            .with_context(|| format!("{name}: {}", self.qemu.stderr_tail()))?;
        let started = Instant::now();
        loop {
            let st = qmp
                .execute("query-status", None)
                .with_context(|| format!("{name}: {}", self.qemu.stderr_tail()))?;
            match st["status"].as_str() {
                Some("inmigrate") if started.elapsed() > timeout => {
                    bail!("{name}: loading the parent's state took over {}s", timeout.as_secs())
                }
                Some("inmigrate") => std::thread::sleep(Duration::from_millis(50)),
                Some("paused" | "prelaunch") => break,
                other => bail!(
                    "{name}: after loading the parent's state QEMU is {other:?}, not paused; {}",
                    self.qemu.stderr_tail()
                ),
            }
        }
        self.qmp = Some(qmp);
        Ok(())
    }

    /// Resumes the child and waits for its "re-identified" line.
    fn resume_and_report(&mut self, timeout: Duration) -> anyhow::Result<VmReport> {
        let name = self.vm.name.clone();
        let qmp = self.qmp.as_mut().context("child not loaded")?;
        let resumed = Instant::now();
        qmp.execute("cont", None)?;
        let (ms, mark) = loop {
            let log = read_log(&self.serial);
            if let Some(m) = signal::find_mark(&log, MARK_REIDENTIFIED) {
                break (resumed.elapsed().as_secs_f64() * 1000.0, m);
            }
            if let Some(m) = signal::find_mark(&log, MARK_REFUSED) {
                let why = m.body.map(|b| b.to_string()).unwrap_or_default();
                bail!("{name} refused its new identity: {why}");
            }
            if let Some(code) = self.qemu.try_exit()? {
                bail!(
                    "{name}'s QEMU exited ({code}); {}\n{}",
                    self.qemu.stderr_tail(),
                    super::tail(&log, 40)
                );
            }
            if resumed.elapsed() > timeout {
                bail!(
                    "{name} printed no {MARK_REIDENTIFIED} line within {}s of resuming; last \
                     console lines:\n{}",
                    timeout.as_secs(),
                    super::tail(&log, 40)
                );
            }
            // Fine-grained: this poll is the resolution of the measured time (a child's log is
            // small: only what it printed since its resume).
            std::thread::sleep(LINE_POLL);
        };
        let status = mark.body.clone().unwrap_or(Value::Null);
        let after = if has_pending(&status) { self.wait_after(resumed, timeout) } else { None };
        let qmp = self.qmp.as_mut().context("child not loaded")?;
        let device_mac = device_mac(qmp);
        Ok(VmReport {
            name,
            index: self.vm.index,
            identity: with_mac(signal::identity(&status), &device_mac),
            reidentify_ms: Some(ms),
            agent_reidentify_ms: mark.number("reidentify_ms"),
            after_ms: after.as_ref().map(|(ms, _)| *ms),
            agent_after_ms: after.and_then(|(_, m)| m.number("after_ms")),
            uptime: mark.number("uptime_s"),
            nic_mac: self.vm.mac.clone(),
            device_mac,
            vmgenid: self.vm.vmgenid.to_string(),
            uuid: self.vm.uuid.to_string(),
            frozen: None,
            status: Some(status),
            status_rc: None,
        })
    }
}

/// Whether a `CAPSTAN-REIDENTIFIED` body has steps still to run after the line.
fn has_pending(status: &Value) -> bool {
    status["steps"].as_array().is_some_and(|a| a.iter().any(|s| s["status"] == "pending"))
}

impl Child<'_> {
    /// Waits for the `CAPSTAN-REIDENTIFIED-AFTER` line (before the next child resumes, so the
    /// children do not compete); `None`, with a warning, when it does not come in time.
    fn wait_after(&mut self, resumed: Instant, timeout: Duration) -> Option<(f64, signal::Mark)> {
        loop {
            let log = read_log(&self.serial);
            if let Some(m) = signal::find_mark(&log, MARK_AFTER) {
                return Some((resumed.elapsed().as_secs_f64() * 1000.0, m));
            }
            let gone = !matches!(self.qemu.try_exit(), Ok(None));
            if gone || resumed.elapsed() > timeout {
                eprintln!("capstan lab clone: {}: no {MARK_AFTER} line", self.vm.name);
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Copies each VM's serial log and QEMU stderr to `dir` as `NAME.serial.log`,
/// `NAME.qemu.stderr`.
fn keep_logs(work: &Path, vms: &[VmPlan], dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for vm in vms {
        for (file, suffix) in [("serial.log", "serial.log"), ("qemu.stderr", "qemu.stderr")] {
            let from = work.join(&vm.name).join(file);
            if from.exists() {
                std::fs::copy(&from, dir.join(format!("{}.{suffix}", vm.name)))
                    .with_context(|| format!("copying {}", from.display()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT_OK: &str = "CAPSTAN-READY-BEGIN uptime=30.5\n{\"instance_id\":\"p\",\"steps\":[]}\nCAPSTAN-READY-END rc=0\n";
    const FROZEN: &str = "CAPSTAN-FROZEN {\"instance_id\":\"p\",\"uptime_s\":31.0}\n";

    #[test]
    fn the_parent_is_waited_for_until_reported_and_frozen() {
        let booting = parent_progress("[    3.1] systemd[1]: Starting ...\n");
        assert!(matches!(booting, Progress::Booting { missing: "ready report" }), "{booting:?}");
        let reported = parent_progress(REPORT_OK);
        assert!(
            matches!(reported, Progress::Booting { missing } if missing.starts_with("CAPSTAN-FROZEN")),
            "{reported:?}"
        );
        // the frozen line may come first: the report is still waited for
        let early = parent_progress(FROZEN);
        assert!(matches!(early, Progress::Booting { missing: "ready report" }), "{early:?}");
        match parent_progress(&format!("{REPORT_OK}{FROZEN}")) {
            Progress::Frozen(r, f) => {
                assert_eq!(r.rc, Some(0));
                assert_eq!(f.number("uptime_s"), Some(31.0));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_first_boot_stops_the_wait_at_once_and_says_why() {
        let log = "CAPSTAN-READY-BEGIN uptime=30.5\n{\"steps\":[{\"name\":\"write-files\",\
            \"status\":\"failed\",\"error\":\"write /usr/local/x: Read-only file system\"}],\
            \"errors\":[]}\nCAPSTAN-READY-END rc=1\n";
        match parent_progress(log) {
            Progress::Failed(why) => {
                assert!(why.contains("exit code 1"), "{why}");
                assert!(why.contains("step write-files failed: write /usr/local/x"), "{why}");
            }
            other => panic!("a failed report must end the wait: {other:?}"),
        }
        // even with a frozen line (an image whose freeze unit does not wait for a good report)
        assert!(matches!(parent_progress(&format!("{log}{FROZEN}")), Progress::Failed(_)));
        // the status command itself failing (no JSON) is a failure too
        let text = "CAPSTAN-READY-BEGIN uptime=1\nsh: 1: capstan-agent: not found\nCAPSTAN-READY-END rc=127\n";
        match parent_progress(text) {
            Progress::Failed(why) => {
                assert!(why.contains("127") && why.contains("not found"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pending_steps_are_waited_for() {
        let v = serde_json::json!({"steps": [{"name": "hostname", "status": "ok"},
            {"name": "hostnamed", "status": "pending"}]});
        assert!(has_pending(&v));
        assert!(!has_pending(&serde_json::json!({"steps": [{"name": "a", "status": "ok"}]})));
        assert!(!has_pending(&serde_json::json!({})));
    }
}
