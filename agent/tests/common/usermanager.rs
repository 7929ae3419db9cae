//! A `systemd --user` manager of its own for tests that talk to a real systemd over D-Bus
//! (`systemd_dbus.rs`, `kube_health.rs`): started in a private mount namespace with a tmpfs
//! `/run` holding `/run/systemd/system` (this machine's PID 1 is not systemd), reached on its
//! user bus. Include with `#[path = "common/usermanager.rs"] mod usermanager;`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capstan_agent::systemd::SystemBus;

pub const SYSTEMD: &str = "/lib/systemd/systemd";

/// One user manager at a time: two of root's at once slow each other's jobs down to the
/// job timeout.
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A `systemd --user` manager with its runtime directory; killed on drop.
pub struct UserManager {
    child: Child,
    pub runtime: tempfile::TempDir,
}

impl UserManager {
    pub fn start() -> anyhow::Result<Option<Self>> {
        if !nix::unistd::geteuid().is_root() || !Path::new(SYSTEMD).exists() {
            eprintln!("skipped: needs root and {SYSTEMD}");
            return Ok(None);
        }
        let runtime = tempfile::tempdir()?;
        std::fs::create_dir_all(runtime.path().join("systemd/user"))?;
        let child = Command::new("unshare")
            .args(["--mount", "sh", "-c"])
            .arg(format!(
                "mount --make-rprivate / && mount -t tmpfs tmpfs /run && \
                 mkdir -p /run/systemd/system && exec {SYSTEMD} --user --log-target=console"
            ))
            .env("XDG_RUNTIME_DIR", runtime.path())
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let m = UserManager { child, runtime };
        let t = Instant::now();
        while !m.socket().exists() {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(20), "no {:?}", m.socket());
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Some(m))
    }

    pub fn socket(&self) -> PathBuf {
        self.runtime.path().join("bus")
    }

    pub fn address(&self) -> String {
        format!("unix:path={}", self.socket().display())
    }

    /// Connects as the agent does; the first connection starts the bus daemon, and the
    /// manager takes its name on the bus shortly after.
    pub async fn connect(&self) -> anyhow::Result<SystemBus> {
        let t = Instant::now();
        loop {
            match SystemBus::connect_at(&self.address()).await {
                Ok(sd) => return Ok(sd),
                Err(e) if t.elapsed() < Duration::from_secs(20) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes a unit where the user manager looks for runtime units.
    pub fn unit(&self, name: &str, text: &str) -> anyhow::Result<()> {
        Ok(std::fs::write(self.runtime.path().join("systemd/user").join(name), text)?)
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
