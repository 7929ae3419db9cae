//! Helpers shared by the end-to-end tests: locating built binaries and external tools, and
//! running a vCenter simulator.
//!
//! ```no_run
//! let capstan = capstan_e2e::capstan_bin();
//! let sim = capstan_e2e::Vcsim::start().unwrap();
//! let about = sim.govc(&["about"]).unwrap();
//! assert!(about.contains("vcsim") || !about.is_empty());
//! # let _ = capstan;
//! ```
#![forbid(unsafe_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The workspace root (the folder holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The cargo target folder in use (`CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Path to a workspace binary, built (debug) once per test process if needed. `CAPSTAN_BIN`-
/// style overrides: set `<NAME>_BIN` (uppercased, `-` as `_`) to use a prebuilt binary.
///
/// Panics with the build output when the build fails: every caller needs the binary.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    static BUILT: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
    let var = format!("{}_BIN", bin.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&var) {
        return PathBuf::from(p);
    }
    let path = target_dir().join("debug").join(bin);
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == bin) {
        // Always ask cargo: it is a no-op when the binary is fresh, and a stale binary would
        // test old code.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(workspace_root())
            .args(["build", "-q", "-p", package, "--bin", bin])
            .output()
            .unwrap_or_else(|e| panic!("cannot run cargo to build {bin}: {e}"));
        assert!(
            out.status.success(),
            "building {bin} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        built.push(bin.to_string());
    }
    assert!(path.is_file(), "{} is missing after the build", path.display());
    path
}

/// The `capstan` binary (built if needed).
pub fn capstan_bin() -> PathBuf {
    workspace_bin("capstan-image", "capstan")
}

/// Runs a command and returns its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out: Output = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The folder holding `govc` and `vcsim`, built on first use by `../shared/tools/vcsim.sh`
/// (about a minute cold, cached afterwards). Fails with a clear message when the script or
/// its build is missing: tests that need vcsim must not pass without it.
pub fn govmomi_bin_dir() -> anyhow::Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = workspace_root().join("../shared/tools/vcsim.sh");
        if !script.is_file() {
            return Err(format!("{} is missing: govc/vcsim cannot be built", script.display()));
        }
        let out = run(Command::new("bash").arg(&script).stderr(Stdio::inherit()))
            .map_err(|e| format!("{e:#}"))?;
        let dir = PathBuf::from(out.lines().last().unwrap_or_default().trim());
        if !dir.join("govc").is_file() || !dir.join("vcsim").is_file() {
            return Err(format!(
                "{} printed {:?}, which holds no govc and vcsim",
                script.display(),
                dir
            ));
        }
        Ok(dir)
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for a test's own server).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A running vCenter simulator on 127.0.0.1, killed when dropped.
///
/// vcsim's default inventory has datacenter DC0 with cluster DC0_C0 and datastore LocalDS_0;
/// it has two resource pools, so imports and clones need [`Vcsim::POOL`] and [`Vcsim::DS`].
#[derive(Debug)]
pub struct Vcsim {
    child: Child,
    url: String,
    govc: PathBuf,
}

impl Vcsim {
    /// The resource pool to pass as `-pool`.
    pub const POOL: &'static str = "/DC0/host/DC0_C0/Resources";
    /// The datastore to pass as `-ds`.
    pub const DS: &'static str = "LocalDS_0";

    /// Starts vcsim on a free port and waits (up to 60 s) until `govc about` answers.
    pub fn start() -> anyhow::Result<Vcsim> {
        let dir = govmomi_bin_dir()?;
        let port = free_port()?;
        let child = Command::new(dir.join("vcsim"))
            .args(["-l", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start vcsim")?;
        let mut sim = Vcsim {
            child,
            url: format!("https://user:pass@127.0.0.1:{port}/sdk"),
            govc: dir.join("govc"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = sim.child.try_wait()? {
                bail!("vcsim exited early ({status}) on port {port}");
            }
            if sim.govc(&["about"]).is_ok() {
                return Ok(sim);
            }
            if Instant::now() > deadline {
                bail!("vcsim did not answer on 127.0.0.1:{port} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The SDK URL (`https://user:pass@127.0.0.1:PORT/sdk`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A `govc` command pointed at this simulator.
    pub fn govc_command(&self) -> Command {
        let mut c = Command::new(&self.govc);
        c.env("GOVC_URL", &self.url).env("GOVC_INSECURE", "1");
        c
    }

    /// Runs `govc ARGS` against this simulator; stdout, or an error with stderr.
    pub fn govc(&self, args: &[&str]) -> anyhow::Result<String> {
        run(self.govc_command().args(args))
    }
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        // Our own child, by pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
