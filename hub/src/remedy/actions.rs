//! What a remediation does: `none`, `exec:CMD`, `vsphere:CONFIG`, `lab:DIR`.
//!
//! Every action gets the episode id as its idempotency key (`CAPSTAN_EPISODE` for commands).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

use crate::tracker::node::Node;

/// A configured action.
#[derive(Debug, Clone)]
pub enum Action {
    /// Report only.
    None,
    /// `sh -c CMD` with the node's fields in its environment.
    Exec(String),
    /// Reset (or power on) the VM with the node's BIOS UUID through vCenter.
    Vsphere(Box<Vsphere>),
    /// Restart a VM that `capstan lab run` started, from its record in DIR.
    Lab(PathBuf),
}

/// `--remediate` that does not parse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    /// Not one of the forms.
    #[error("--remediate {0:?}: expected none, exec:CMD, vsphere:CONFIG or lab:DIR")]
    Form(String),
    /// The vSphere configuration is unusable.
    #[error("--remediate vsphere:{path}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The vSphere action's configuration file (JSON).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsphere {
    /// The SDK URL, `https://vcenter/sdk`.
    pub url: String,
    /// The user.
    pub username: String,
    /// A file holding the password (0600).
    pub password_file: PathBuf,
    /// Accept a self-signed vCenter certificate.
    #[serde(default)]
    pub insecure: bool,
    /// The govc binary (default `govc` on PATH).
    #[serde(default = "govc")]
    pub govc: PathBuf,
}

fn govc() -> PathBuf {
    PathBuf::from("govc")
}

impl Action {
    /// Parses `--remediate`.
    pub fn parse(s: &str) -> Result<Action, ActionError> {
        match s.split_once(':') {
            None if s == "none" => Ok(Action::None),
            Some(("exec", cmd)) if !cmd.trim().is_empty() => Ok(Action::Exec(cmd.to_owned())),
            Some(("lab", dir)) if !dir.is_empty() => Ok(Action::Lab(dir.into())),
            Some(("vsphere", path)) if !path.is_empty() => {
                let path = PathBuf::from(path);
                let cfg = |source: Box<dyn std::error::Error + Send + Sync>| ActionError::Config {
                    path: path.clone(),
                    source,
                };
                let text = std::fs::read_to_string(&path).map_err(|e| cfg(Box::new(e)))?;
                let v: Vsphere = serde_json::from_str(&text).map_err(|e| cfg(Box::new(e)))?;
                Ok(Action::Vsphere(Box::new(v)))
            }
            _ => Err(ActionError::Form(s.into())),
        }
    }

    /// The action's name (a metrics label).
    pub fn name(&self) -> &'static str {
        match self {
            Action::None => "none",
            Action::Exec(_) => "exec",
            Action::Vsphere(_) => "vsphere",
            Action::Lab(_) => "lab",
        }
    }

    /// Runs the action for `node` in `episode`; Ok(detail) or Err(detail).
    pub async fn run(
        &self,
        node: &Node,
        episode: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let fut = async {
            match self {
                Action::None => Ok("report only".to_owned()),
                Action::Exec(cmd) => {
                    let mut c = Command::new("sh");
                    c.arg("-c").arg(cmd);
                    node_env(&mut c, node, episode);
                    output(c, "command").await
                }
                Action::Vsphere(v) => vsphere(v, node, episode).await,
                Action::Lab(dir) => lab(dir, node, episode).await,
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {} s", timeout.as_secs())),
        }
    }
}

fn node_env(c: &mut Command, node: &Node, episode: &str) {
    c.env("CAPSTAN_EPISODE", episode)
        .env("CAPSTAN_NODE_ID", &node.id)
        .env("CAPSTAN_NODE_HOSTNAME", &node.hostname)
        .env("CAPSTAN_NODE_ROLE", &node.role)
        .env("CAPSTAN_NODE_ADDR", &node.addr)
        .env("CAPSTAN_NODE_BOOT_ID", &node.boot_id)
        .env("CAPSTAN_NODE_BIOS_UUID", &node.bios_uuid)
        .env("CAPSTAN_NODE_REASON", &node.reason);
}

/// The last 300 bytes or so of `s`, trimmed, cut at a character boundary.
fn tail(s: &str) -> String {
    let s = s.trim();
    let mut from = s.len().saturating_sub(300);
    while !s.is_char_boundary(from) {
        from += 1;
    }
    s[from..].to_owned()
}

/// Runs `c` (killed if the future is dropped by the timeout); its exit status and the tail of
/// its output are the detail.
async fn output(mut c: Command, what: &str) -> Result<String, String> {
    c.stdin(Stdio::null()).kill_on_drop(true);
    let out = c.output().await.map_err(|e| format!("starting the {what}: {e}"))?;
    let tail = |b: &[u8]| tail(&String::from_utf8_lossy(b));
    let text = [tail(&out.stdout), tail(&out.stderr)]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    if out.status.success() {
        Ok(if text.is_empty() { format!("{what} exited 0") } else { text })
    } else {
        Err(format!("{what} failed ({}): {text}", out.status))
    }
}

/// Resets the VM whose BIOS UUID the node reported, or powers it on when it is off, through
/// govc (the vSphere API client built from Debian's govmomi source): `find -config.uuid`,
/// `object.collect runtime.powerState`, `vm.power`. A wrong password or an unknown UUID is a
/// failed remediation with a message saying which.
async fn vsphere(v: &Vsphere, node: &Node, episode: &str) -> Result<String, String> {
    let uuid = node.bios_uuid.as_str();
    if uuid.is_empty() {
        return Err("the node reported no BIOS UUID".into());
    }
    let password = std::fs::read_to_string(&v.password_file)
        .map_err(|e| format!("reading {}: {e}", v.password_file.display()))?;
    let govc = |args: &[&str]| {
        let mut c = Command::new(&v.govc);
        c.args(args)
            .env("GOVC_URL", &v.url)
            .env("GOVC_USERNAME", &v.username)
            .env("GOVC_PASSWORD", password.trim_end_matches(['\r', '\n']))
            .env("GOVC_INSECURE", if v.insecure { "1" } else { "0" })
            // Every action logs in with the configured credentials, never a cached session.
            .env("GOVC_PERSIST_SESSION", "false")
            .env("CAPSTAN_EPISODE", episode);
        c
    };
    let found = output(govc(&["find", "/", "-type", "m", "-config.uuid", uuid]), "govc find")
        .await
        .map_err(|e| {
            let l = e.to_lowercase();
            if l.contains("login failure") || l.contains("incorrect user name or password") {
                format!(
                    "{} refused the login of {} (wrong user name or password): {e}",
                    v.url, v.username
                )
            } else {
                e
            }
        })?;
    let paths: Vec<&str> = found.lines().map(str::trim).filter(|l| l.starts_with('/')).collect();
    let path = match paths.as_slice() {
        [] => return Err(format!("no VM with BIOS UUID {uuid} in {}", v.url)),
        [p] => *p,
        many => {
            return Err(format!("{} VMs share BIOS UUID {uuid}: {}", many.len(), many.join(", ")))
        }
    };
    let power =
        output(govc(&["object.collect", "-s", path, "runtime.powerState"]), "govc object.collect")
            .await?;
    let (op, did) =
        if power.trim() == "poweredOn" { ("-reset", "reset") } else { ("-on", "powered on") };
    output(govc(&["vm.power", op, path]), "govc vm.power").await?;
    Ok(format!("{did} {path} (BIOS UUID {uuid}, was {})", power.trim()))
}

/// The record `capstan lab run --state-dir DIR` (or `--detach`) keeps for a VM, as docs/lab.md
/// describes it: `DIR/<uuid>/argv.json` (the QEMU command line, a JSON array of strings,
/// program first) and `DIR/<uuid>/qemu.pid` (decimal, a newline), where `DIR/<instance-id>`
/// is the same directory or a symlink to it. The reader of `capstan`'s `lab::state` (another
/// crate, so these lines are written twice; tests/tests/hub_lab.rs checks the two agree).
mod lab_record {
    use std::path::{Path, PathBuf};

    /// The node's directory: `DIR/<instance-id>`, else `DIR/<bios-uuid>`.
    pub fn find(dir: &Path, id: &str, bios_uuid: &str) -> Result<PathBuf, String> {
        let plain = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('/');
        for name in [id, bios_uuid] {
            if plain(name) && dir.join(name).is_dir() {
                return Ok(dir.join(name));
            }
        }
        let by_uuid = if plain(bios_uuid) {
            format!(" nor {}", dir.join(bios_uuid).display())
        } else {
            String::new()
        };
        Err(format!(
            "no lab record for {id}: neither {} exists{by_uuid} (the VM was not started with \
             `capstan lab run --state-dir {}`)",
            dir.join(id).display(),
            dir.display()
        ))
    }

    /// `argv.json`: a non-empty JSON array of strings.
    pub fn argv(vm: &Path) -> Result<Vec<String>, String> {
        let path = vm.join("argv.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let argv: Vec<String> = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a JSON array of strings: {e}", path.display()))?;
        if argv.is_empty() {
            return Err(format!("{}: empty command line", path.display()));
        }
        Ok(argv)
    }

    /// The pid in `qemu.pid` if that process runs `argv` (`Ok(None)`: no pid file); the
    /// second value is a stale pid, never signalled.
    pub fn pid(vm: &Path, argv: &[String]) -> Result<(Option<u32>, Option<u32>), String> {
        let path = vm.join("qemu.pid");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, None)),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        match text.trim().parse::<u32>() {
            Ok(pid) if pid > 1 && runs(pid, argv) => Ok((Some(pid), None)),
            Ok(pid) if pid > 1 => Ok((None, Some(pid))),
            _ => Err(format!("{}: {:?} is not a process id", path.display(), text.trim())),
        }
    }

    /// Whether `pid` is alive (not a zombie) with exactly this command line.
    pub fn runs(pid: u32, argv: &[String]) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
            .unwrap_or(true);
        let mut want = argv.join("\0").into_bytes();
        want.push(0);
        !zombie && cmdline == want
    }

    /// Writes `qemu.pid` through a temporary file and a rename.
    pub fn write_pid(vm: &Path, pid: u32) -> Result<(), String> {
        let path = vm.join("qemu.pid");
        let tmp = vm.join(format!(".qemu.pid.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(format!("{pid}\n").as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(vm)?.sync_all()
        };
        write().map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

/// Restarts the node's lab VM from its record: ends the recorded QEMU if it still runs that
/// command line (a hung VM keeps its process and its disk's lock), starts the command line
/// again with its stderr in `qemu.stderr`, records the new pid, and fails if QEMU exits
/// within two seconds (a disk still locked, a file gone).
async fn lab(dir: &Path, node: &Node, episode: &str) -> Result<String, String> {
    let vm = lab_record::find(dir, &node.id, &node.bios_uuid)?;
    let argv = lab_record::argv(&vm)?;
    let (running, stale) = lab_record::pid(&vm, &argv)?;
    if let Some(pid) = running {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status().await;
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while lab_record::runs(pid, &argv) {
            if tokio::time::Instant::now() > until {
                return Err(format!("pid {pid} ({}) did not end after SIGKILL", vm.display()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let stderr_path = vm.join("qemu.stderr");
    let stderr = std::fs::File::create(&stderr_path)
        .map_err(|e| format!("creating {}: {e}", stderr_path.display()))?;
    let (prog, args) = argv.split_first().expect("argv is not empty");
    let mut child = Command::new(prog)
        .args(args)
        .env("CAPSTAN_EPISODE", episode)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("starting {prog} ({}): {e}", vm.display()))?;
    let pid = child.id().unwrap_or(0);
    lab_record::write_pid(&vm, pid)?;
    if let Ok(status) = tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
        let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        return Err(format!(
            "{prog} exited at once ({}): {}",
            status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            tail(&text)
        ));
    }
    // The VM outlives this call; a task reaps it when it ends.
    tokio::spawn(async move { child.wait().await });
    let was = match (running, stale) {
        (Some(p), _) => format!(", killed pid {p}"),
        (None, Some(p)) => format!(", pid {p} in qemu.pid was stale"),
        (None, None) => String::new(),
    };
    Ok(format!("restarted {} ({}) as pid {pid}{was}", node.id, vm.display()))
}
