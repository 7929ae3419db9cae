//! Preloading images into the node template's containerd store at build time, without a VM:
//! the host's containerd (Debian's 1.6, the image's own line) runs with its `root` inside the
//! image tree (`/var/lib/containerd`), a private socket and state directory, and no CRI
//! plugin; `ctr -n k8s.io images import` unpacks each archive into the overlayfs snapshotter
//! exactly as the node's containerd would; then it is stopped.
//!
//! Not byte-reproducible: containerd's bolt databases record the import's wall-clock times
//! (docs/builder.md, "Preloaded images"). The content store (blobs by digest) and the
//! unpacked snapshots are.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::exec;

/// A containerd of the host's running on a store of our choosing, with a private socket and
/// state directory; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Containerd {
    child: Child,
    sock: PathBuf,
    work: tempfile::TempDir,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(store: &Path, state: &Path, sock: &Path) -> String {
    format!(
        "version = 2\nroot = {store:?}\nstate = {state:?}\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \
         \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \
         \"io.containerd.snapshotter.v1.aufs\", \"io.containerd.internal.v1.tracing\"]\n\
         [grpc]\n  address = {sock:?}\n[ttrpc]\n  address = \"{}.ttrpc\"\n\
         [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
        sock.display()
    )
}

impl Containerd {
    /// Starts containerd with `store` as its root and waits (up to 60 s) until it answers.
    pub fn start(store: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(store).with_context(|| format!("creating {}", store.display()))?;
        let work = tempfile::Builder::new().prefix("capstan-containerd-").tempdir()?;
        let (state, sock) = (work.path().join("state"), work.path().join("containerd.sock"));
        let cfg = work.path().join("config.toml");
        fs::write(&cfg, config(store, &state, &sock))?;
        let log = fs::File::create(work.path().join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the host's containerd (is containerd installed?)")?;
        let mut d = Self { child, sock, work };
        let until = Instant::now() + Duration::from_secs(60);
        while exec::output(&mut d.ctr(&["version"])).is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                bail!("containerd on {} exited ({status}):\n{}", store.display(), d.log_tail());
            }
            if Instant::now() > until {
                bail!("containerd on {} did not answer in 60 s", store.display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(d)
    }

    /// `ctr --address SOCK --namespace k8s.io ARGS`.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.sock).args(["--namespace", "k8s.io"]).args(args);
        c
    }

    /// The last lines of containerd's log.
    pub fn log_tail(&self) -> String {
        tail(&fs::read_to_string(self.work.path().join("containerd.log")).unwrap_or_default())
    }

    /// (name, manifest digest) of every image in the store (`ctr images ls`).
    pub fn images(&self) -> anyhow::Result<Vec<(String, String)>> {
        let list = exec::output(&mut self.ctr(&["images", "ls"]))?;
        // REF TYPE DIGEST SIZE PLATFORMS LABELS, after a header line.
        Ok(list
            .lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                Some((cols.first()?.to_string(), cols.get(2)?.to_string()))
            })
            .collect())
    }
}

/// Imports every archive in `archives` into `root`'s containerd store, namespace `k8s.io`;
/// returns (name, manifest digest) of every image now in the store.
pub fn import(root: &Path, archives: &[&Path]) -> anyhow::Result<Vec<(String, String)>> {
    let d = Containerd::start(&root.join("var/lib/containerd"))?;
    for a in archives {
        exec::run(d.ctr(&["images", "import", "--snapshotter", "overlayfs"]).arg(a))
            .with_context(|| format!("preloading {}", a.display()))?;
    }
    d.images()
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
