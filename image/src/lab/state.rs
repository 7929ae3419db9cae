//! A lab VM's record that outlives `capstan lab run` (`--state-dir`, `--detach`), so that
//! `capstan lab stop` and the hub's `lab` remediation (`capstan-hub serve --remediate lab:DIR`)
//! can find, stop and restart the same VM on the same disk:
//!
//! ```text
//! DIR/<uuid>/              the VM's SMBIOS system UUID (its instance-id unless one is given)
//!     argv.json            the QEMU command line, a JSON array of strings, program first
//!     qemu.pid             the pid of the QEMU running that command line, decimal, newline
//!     overlay.qcow2        the disk (backed by the image, or by the OVA's extracted VMDK)
//!     ovf-env.iso, guestinfo/<key>, OVMF_VARS.fd, serial.log, qemu.stderr
//! DIR/<instance-id> -> <uuid>   when the agent reported another instance-id
//! ```
//!
//! A pid counts only while `/proc/<pid>/cmdline` is exactly `argv.json`: a stale pid (the VM
//! died and the number was reused) is never signalled. docs/lab.md describes the record; the
//! hub's reader is `capstan_hub::remedy::actions` (another crate, so the few lines that read it
//! are written twice; tests/tests/hub_lab.rs checks that the two agree).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Where `--detach` keeps VMs without `--state-dir`.
pub const DEFAULT_DIR: &str = "/var/lib/capstan/lab";
/// The QEMU command line.
pub const ARGV: &str = "argv.json";
/// The running QEMU's pid.
pub const PID: &str = "qemu.pid";

/// Where a run keeps its files: a temporary directory removed at the end, or a VM's
/// directory in a state dir.
#[derive(Debug)]
pub enum Work {
    /// Removed when dropped.
    Temp(tempfile::TempDir),
    /// `DIR/<uuid>`, kept.
    Kept(PathBuf),
}

impl Work {
    /// A temporary directory.
    pub fn temp() -> anyhow::Result<Work> {
        Ok(Work::Temp(tempfile::Builder::new().prefix("capstan-lab").tempdir()?))
    }

    /// Creates `state_dir/<uuid>`; a VM directory that exists already is refused (its disk
    /// would be replaced).
    pub fn create(state_dir: &Path, uuid: &str) -> anyhow::Result<Work> {
        fs::create_dir_all(state_dir)
            .with_context(|| format!("creating the lab state dir {}", state_dir.display()))?;
        let dir = state_dir.join(uuid);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                "{} exists: a lab VM with UUID {uuid} was started before; \
                 `capstan lab stop {uuid} --state-dir {} --remove` removes it",
                dir.display(),
                state_dir.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
        // Absolute, because QEMU's command line (argv.json) names files in it and is run
        // again from another working directory.
        Ok(Work::Kept(fs::canonicalize(&dir)?))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        match self {
            Work::Temp(t) => t.path(),
            Work::Kept(p) => p,
        }
    }

    /// The kept directory, if any.
    pub fn kept(&self) -> Option<&Path> {
        match self {
            Work::Temp(_) => None,
            Work::Kept(p) => Some(p),
        }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory: fsync, rename,
/// fsync the directory. A reader sees the old record or the new one, never half of one.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("a record file has a directory")?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).with_context(|| format!("writing {}", path.display()))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Writes `argv.json`.
pub fn write_argv(vm: &Path, argv: &[String]) -> anyhow::Result<()> {
    write_atomic(&vm.join(ARGV), serde_json::to_string(argv)?.as_bytes())
}

/// Writes `qemu.pid`.
pub fn write_pid(vm: &Path, pid: u32) -> anyhow::Result<()> {
    write_atomic(&vm.join(PID), format!("{pid}\n").as_bytes())
}

/// Reads `argv.json`: a non-empty JSON array of strings.
pub fn read_argv(vm: &Path) -> anyhow::Result<Vec<String>> {
    let path = vm.join(ARGV);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let argv: Vec<String> = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a JSON array of strings", path.display()))?;
    if argv.is_empty() {
        bail!("{}: empty command line", path.display());
    }
    Ok(argv)
}

/// The pid in `qemu.pid` if that process is running `argv`; `None` when there is no pid file
/// or the pid is stale. A pid file that is not a pid is an error naming it.
pub fn running_pid(vm: &Path, argv: &[String]) -> anyhow::Result<Option<u32>> {
    let path = vm.join(PID);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let pid: u32 = match text.trim().parse() {
        Ok(p) if p > 1 => p,
        _ => bail!("{}: {:?} is not a process id", path.display(), text.trim()),
    };
    Ok(runs(pid, argv).then_some(pid))
}

/// Whether process `pid` is alive (not a zombie) with exactly this command line.
pub fn runs(pid: u32, argv: &[String]) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(true);
    let mut want = argv.join("\0").into_bytes();
    want.push(0);
    !zombie && cmdline == want
}

/// After a ready report whose instance-id is not the UUID: `state_dir/<instance-id>` becomes a
/// symlink to the UUID's directory (replacing an older symlink; a real directory of that name
/// is left alone and reported). Returns the link.
pub fn link_instance_id(
    state_dir: &Path,
    uuid: &str,
    instance_id: &str,
) -> anyhow::Result<Option<PathBuf>> {
    let plain = !instance_id.is_empty()
        && instance_id != "."
        && instance_id != ".."
        && !instance_id.contains(['/', '\0']);
    if instance_id == uuid || !plain {
        return Ok(None);
    }
    let link = state_dir.join(instance_id);
    if link.is_dir() && !link.is_symlink() {
        bail!("{} is another lab VM's directory: not linked to {uuid}", link.display());
    }
    let tmp = state_dir.join(format!(".{instance_id}.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(uuid, &tmp)
        .with_context(|| format!("creating the symlink {}", tmp.display()))?;
    fs::rename(&tmp, &link).with_context(|| format!("creating the symlink {}", link.display()))?;
    Ok(Some(link))
}

/// `state_dir/<id>`: the UUID's directory, or the instance-id's symlink to it.
pub fn resolve(state_dir: &Path, id: &str) -> anyhow::Result<PathBuf> {
    if id.is_empty() || id.contains('/') || id == "." || id == ".." {
        bail!("{id:?} is not a lab VM's UUID or instance-id");
    }
    let dir = state_dir.join(id);
    fs::canonicalize(&dir).with_context(|| {
        format!("no lab VM {id} in {}: {} does not exist", state_dir.display(), dir.display())
    })
}

/// What `capstan lab stop` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stopped {
    /// The VM's directory.
    pub dir: PathBuf,
    /// The pid that was stopped (`None`: it was not running).
    pub pid: Option<u32>,
    /// The directory (and its instance-id symlinks) was removed.
    pub removed: bool,
}

/// Stops the VM `id` (SIGTERM, then SIGKILL after `patience`) and, with `remove`, deletes its
/// directory and the symlinks to it.
pub fn stop(
    state_dir: &Path,
    id: &str,
    remove: bool,
    patience: Duration,
) -> anyhow::Result<Stopped> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dir = resolve(state_dir, id)?;
    // A directory without a readable command line has nothing this tool started running.
    let pid = match read_argv(&dir) {
        Ok(argv) => running_pid(&dir, &argv)?.map(|pid| (pid, argv)),
        Err(e) if remove => {
            eprintln!("capstan lab: {e:#}; removing anyway");
            None
        }
        Err(e) => return Err(e),
    };
    if let Some((pid, argv)) = &pid {
        let target = Pid::from_raw(i32::try_from(*pid)?);
        let _ = kill(target, Signal::SIGTERM);
        let started = Instant::now();
        while runs(*pid, argv) {
            if started.elapsed() > patience {
                let _ = kill(target, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = fs::remove_file(dir.join(PID));
    }
    if remove {
        remove_links(state_dir, &dir)?;
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(Stopped { dir, pid: pid.map(|(p, _)| p), removed: remove })
}

/// Removes the symlinks in `state_dir` that point at `dir`.
fn remove_links(state_dir: &Path, dir: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(state_dir)? {
        let path = entry?.path();
        if path.is_symlink() && fs::canonicalize(&path).ok().as_deref() == Some(dir) {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// A random SMBIOS system UUID (version 4), as vSphere gives every new VM one.
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn the_record_round_trips_and_bad_records_name_their_file() {
        let t = tempfile::tempdir().unwrap();
        let work = Work::create(t.path(), "4c4c4544-0000-1111-2222-333344445555").unwrap();
        let vm = work.kept().unwrap().to_path_buf();
        let e = Work::create(t.path(), "4c4c4544-0000-1111-2222-333344445555").unwrap_err();
        assert!(e.to_string().contains("--remove"), "{e}");
        let argv: Vec<String> = ["sleep", "30"].map(String::from).into();
        write_argv(&vm, &argv).unwrap();
        assert_eq!(fs::read_to_string(vm.join(ARGV)).unwrap(), r#"["sleep","30"]"#);
        assert_eq!(read_argv(&vm).unwrap(), argv);
        assert_eq!(running_pid(&vm, &argv).unwrap(), None, "no pid file: not running");
        for (text, want) in [
            ("[]", "empty command line"),
            ("{\"a\":1}", "not a JSON array of strings"),
            ("[\"qemu\", 1]", "not a JSON array of strings"),
            ("", "not a JSON array of strings"),
        ] {
            fs::write(vm.join(ARGV), text).unwrap();
            let e = format!("{:#}", read_argv(&vm).unwrap_err());
            assert!(e.contains(want) && e.contains("argv.json"), "{text:?}: {e}");
        }
        fs::write(vm.join(PID), "12ab\n").unwrap();
        let e = running_pid(&vm, &argv).unwrap_err().to_string();
        assert!(e.contains("qemu.pid") && e.contains("not a process id"), "{e}");
        let e = format!("{:#}", resolve(t.path(), "absent").unwrap_err());
        assert!(e.contains("absent does not exist"), "{e}");
        assert!(resolve(t.path(), "../etc").is_err());
    }

    #[test]
    fn a_pid_counts_only_while_it_runs_the_recorded_command_line() {
        let t = tempfile::tempdir().unwrap();
        let vm = Work::create(t.path(), "u1").unwrap().kept().unwrap().to_path_buf();
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        write_pid(&vm, child.id()).unwrap();
        let argv: Vec<String> = ["sleep", "30"].map(String::from).into();
        assert_eq!(running_pid(&vm, &argv).unwrap(), Some(child.id()));
        // The same pid with another command line (a reused pid) is stale.
        let other: Vec<String> = ["sleep", "31"].map(String::from).into();
        assert_eq!(running_pid(&vm, &other).unwrap(), None);
        write_argv(&vm, &argv).unwrap();
        let s = stop(t.path(), "u1", false, Duration::from_secs(5)).unwrap();
        assert_eq!(s.pid, Some(child.id()));
        // SIGTERM ended it (the zombie waits for us, its parent, and does not count).
        assert!(child.wait().unwrap().code().is_none());
        assert!(!vm.join(PID).exists());
        assert_eq!(stop(t.path(), "u1", false, Duration::from_secs(5)).unwrap().pid, None);
    }

    #[test]
    fn instance_ids_are_symlinks_and_remove_takes_them_along() {
        let t = tempfile::tempdir().unwrap();
        let vm = Work::create(t.path(), "u2").unwrap().kept().unwrap().to_path_buf();
        write_argv(&vm, &["true".to_string()]).unwrap();
        let link = link_instance_id(t.path(), "u2", "iid-lb-1").unwrap().unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("u2"));
        assert_eq!(resolve(t.path(), "iid-lb-1").unwrap(), vm);
        assert_eq!(link_instance_id(t.path(), "u2", "u2").unwrap(), None);
        assert_eq!(link_instance_id(t.path(), "u2", "../x").unwrap(), None);
        Work::create(t.path(), "u3").unwrap();
        assert!(link_instance_id(t.path(), "u2", "u3").is_err(), "a real dir is kept");
        let s = stop(t.path(), "iid-lb-1", true, Duration::from_secs(1)).unwrap();
        assert!(s.removed && s.pid.is_none());
        assert!(!vm.exists() && !link.is_symlink());
        assert!(t.path().join("u3").is_dir());
    }

    #[test]
    fn uuids_are_random_and_well_formed() {
        let (a, b) = (new_uuid(), new_uuid());
        assert_ne!(a, b);
        assert_eq!(a.parse::<uuid::Uuid>().unwrap().get_version_num(), 4);
    }
}
