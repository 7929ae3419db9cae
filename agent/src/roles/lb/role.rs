//! `capstan-agent run` with `role = lb`: install the configs, run HAProxy and keepalived,
//! feed HAProxy's liveness to keepalived, serve the backend API.

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::api::{self, Auth};
use super::controller::Controller;
use super::runtime::{RuntimeApi, RuntimeError};
use super::state::{write_durable, DesiredSet, StateError};
use super::tls::{self, TlsError};
use super::{
    check_haproxy, check_keepalived, haproxy_config, keepalived_config, pid_alive, LbPaths,
    LbSettings, RenderError, Tools,
};
use crate::root::{FileOpts, Root};
use crate::systemd::{SystemBus, Systemd, SystemdError};

/// How HAProxy and keepalived are run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processes {
    /// Through systemd (`haproxy.service`, `keepalived.service`): the appliance.
    Systemd,
    /// As child processes of the agent, logs in `log_dir` (tests, or a host without systemd).
    Children {
        /// Where `haproxy.log` and `keepalived.log` go.
        log_dir: PathBuf,
    },
}

/// Options of [`run_role`].
#[derive(Debug, Clone)]
pub struct RoleOptions {
    /// File locations.
    pub paths: LbPaths,
    /// The binaries.
    pub tools: Tools,
    /// How to run the daemons.
    pub processes: Processes,
    /// Label for keepalived's `router_id` (the hostname).
    pub node_label: String,
}

/// Why the role stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoleError {
    /// A directory could not be created.
    #[error("creating {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file or directory could not be written.
    #[error("writing the role's files")]
    State(#[from] StateError),
    /// A rendered file was refused by its checker.
    #[error("checking the rendered configuration")]
    Render(#[from] RenderError),
    /// A daemon could not be started.
    #[error("starting {what}")]
    Start {
        /// The daemon.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// HAProxy did not come up.
    #[error("HAProxy did not answer on its runtime socket within {0:?}")]
    NotReady(Duration, #[source] RuntimeError),
    /// systemd refused or failed a unit job.
    #[error("driving haproxy.service and keepalived.service")]
    Systemd(#[from] SystemdError),
    /// TLS setup for the API failed.
    #[error("setting up the API's TLS")]
    Tls(#[from] TlsError),
    /// The API could not listen.
    #[error("listening on {addr}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Installs `contents` at `path` under `root` only if a checker accepts it. The checker gets a
/// candidate copy written next to the target (a host path); the accepted text then replaces the
/// target atomically and durably, and the candidate is removed. Returns whether the file changed.
fn install_checked(
    root: &Root,
    path: &Path,
    contents: &str,
    mode: u32,
    check: impl Fn(&Path) -> Result<(), RenderError>,
) -> Result<bool, RoleError> {
    // An unreadable target counts as different: the write below reports the real problem.
    if root.read(path).ok().flatten().as_deref() == Some(contents.as_bytes()) {
        return Ok(false);
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let candidate = path.with_file_name(format!(".{name}.candidate"));
    let on_disk = root
        .write(&candidate, contents.as_bytes(), FileOpts::mode(mode))
        .map_err(StateError::from)?;
    let checked = check(&on_disk);
    let _ = root.remove(&candidate);
    checked?;
    write_durable(root, path, contents.as_bytes(), mode)?;
    Ok(true)
}

fn write_track(root: &Root, paths: &LbPaths, healthy: bool) {
    let v: &[u8] = if healthy { b"0\n" } else { b"1\n" };
    if let Err(e) = write_durable(root, &paths.track_file, v, 0o644) {
        tracing::error!(error = %crate::error::chain(&e), "cannot tell keepalived HAProxy's state");
    }
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

fn spawn_haproxy(root: &Root, opts: &RoleOptions, log_dir: &Path) -> Result<Child, RoleError> {
    let p = &opts.paths;
    let _ = root.remove(&p.admin_socket);
    Command::new(&opts.tools.haproxy)
        .arg("-W")
        .arg("-f")
        .arg(&p.haproxy_cfg)
        .arg("-p")
        .arg(&p.haproxy_pid)
        .stdin(Stdio::null())
        .stdout(log_file(log_dir, "haproxy.log"))
        .stderr(log_file(log_dir, "haproxy.log"))
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| RoleError::Start { what: "haproxy", source })
}

fn spawn_keepalived(opts: &RoleOptions, log_dir: &Path) -> Result<Child, RoleError> {
    let p = &opts.paths;
    Command::new(&opts.tools.keepalived)
        .args(["--dont-fork", "--log-console", "--log-detail", "--vrrp"])
        .arg("-f")
        .arg(&p.keepalived_conf)
        .arg("-p")
        .arg(&p.keepalived_pids[0])
        .arg("-r")
        .arg(&p.keepalived_pids[1])
        .arg("-c")
        .arg(&p.keepalived_pids[2])
        .stdin(Stdio::null())
        .stdout(log_file(log_dir, "keepalived.log"))
        .stderr(log_file(log_dir, "keepalived.log"))
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| RoleError::Start { what: "keepalived", source })
}

async fn wait_ready(
    rt: &RuntimeApi,
    limit: Duration,
    mut child: Option<&mut Child>,
) -> Result<(), RoleError> {
    let start = Instant::now();
    loop {
        if let Some(Ok(Some(st))) = child.as_mut().map(|c| c.try_wait()) {
            return Err(RoleError::Start {
                what: "haproxy",
                source: std::io::Error::other(format!(
                    "exited at start with {st}; see haproxy.log"
                )),
            });
        }
        let rt2 = rt.clone();
        let r = tokio::task::spawn_blocking(move || rt2.command("show info")).await;
        let err = match r {
            Ok(Ok(s)) if s.contains("Name: HAProxy") => return Ok(()),
            Ok(Ok(s)) => RuntimeError::Parse { command: "show info".into(), reason: s },
            Ok(Err(e)) => e,
            Err(j) => RuntimeError::Parse { command: "show info".into(), reason: j.to_string() },
        };
        if start.elapsed() > limit {
            return Err(RoleError::NotReady(limit, err));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn terminate(child: &mut Child, what: &str, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            tracing::info!(what, "stopped");
            return;
        }
    }
    let _ = child.kill().await;
}

/// What [`install_configs`] changed.
#[derive(Debug, Clone, Copy)]
struct Installed {
    /// haproxy.cfg differs from the file found at start, other than in server lines.
    structure_changed: bool,
    /// keepalived.conf was replaced.
    keepalived_changed: bool,
}

/// Creates the directories the role writes to.
fn make_dirs(root: &Root, p: &LbPaths) -> Result<(), RoleError> {
    for dir in [
        Some(p.state_dir.as_path()),
        p.track_file.parent(),
        p.admin_socket.parent(),
        p.haproxy_cfg.parent(),
        p.keepalived_conf.parent(),
    ]
    .into_iter()
    .flatten()
    {
        root.mkdir_all(dir, FileOpts::mode(0o755)).map_err(StateError::from)?;
    }
    Ok(())
}

/// The desired set: the persisted one if any, else the configured backends (saved). An
/// unreadable file is copied aside for inspection and the configured set is served.
fn restore_set(root: &Root, p: &LbPaths, settings: &LbSettings) -> Result<DesiredSet, RoleError> {
    let file = p.backends_file();
    match DesiredSet::load(root, &file) {
        Ok(Some(s)) => {
            tracing::info!(backends = s.entries().len(), "restored the persisted backend set");
            return Ok(s);
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(error = %crate::error::chain(&e), "persisted backend set unreadable; using lb.backends");
            // A copy, not a rename: the save below then replaces the file atomically.
            let aside = file.with_extension("json.corrupt");
            if let Ok(Some(bytes)) = root.read(&file) {
                let _ = write_durable(root, &aside, &bytes, 0o644);
            }
        }
    }
    let s = DesiredSet::from_list(&settings.backends);
    s.save(root, &file)?;
    Ok(s)
}

/// Installs haproxy.cfg (for `set`) and keepalived.conf, each only if its checker accepts it.
fn install_configs(
    root: &Root,
    settings: &LbSettings,
    opts: &RoleOptions,
    set: &DesiredSet,
) -> Result<Installed, RoleError> {
    let p = &opts.paths;
    let tools = &opts.tools;
    let hcfg = haproxy_config(settings, p, set).render();
    let old_structure = root.read_string(&p.haproxy_cfg).ok().flatten();
    let haproxy_changed =
        install_checked(root, &p.haproxy_cfg, &hcfg, 0o644, |f| check_haproxy(tools, f))?;
    let structure_changed =
        old_structure.is_none_or(|old| super::haproxy::needs_reload(&old, &hcfg));
    let kcfg = keepalived_config(settings, p, &opts.node_label).render();
    let keepalived_changed =
        install_checked(root, &p.keepalived_conf, &kcfg, 0o600, |f| check_keepalived(tools, f))?;
    tracing::info!(
        haproxy_changed,
        structure_changed,
        keepalived_changed,
        "configuration installed"
    );
    Ok(Installed { structure_changed, keepalived_changed })
}

/// Starts HAProxy and keepalived as child processes, keepalived only once HAProxy answers.
async fn start_children(
    root: &Root,
    opts: &RoleOptions,
    rt: &RuntimeApi,
    log_dir: &Path,
) -> Result<(Child, Child), RoleError> {
    let p = &opts.paths;
    std::fs::create_dir_all(log_dir)
        .map_err(|source| RoleError::Dir { path: log_dir.to_owned(), source })?;
    let mut h = spawn_haproxy(root, opts, log_dir)?;
    wait_ready(rt, Duration::from_secs(10), Some(&mut h)).await?;
    write_track(root, p, true);
    let _ = root.remove(&p.vrrp_state_file);
    let k = spawn_keepalived(opts, log_dir)?;
    Ok((h, k))
}

/// Starts (or reloads, when their files changed) `haproxy.service` and `keepalived.service`,
/// keepalived only once HAProxy answers, and brings a running HAProxy to the set.
async fn start_units(
    sd: &impl Systemd,
    root: &Root,
    p: &LbPaths,
    rt: &RuntimeApi,
    ctl: &Controller,
    installed: Installed,
) -> Result<(), RoleError> {
    if pid_alive(&p.haproxy_pid) {
        if installed.structure_changed {
            sd.reload("haproxy.service").await?;
        }
    } else {
        sd.start("haproxy.service").await?;
    }
    wait_ready(rt, Duration::from_secs(10), None).await?;
    // HAProxy may have been running with an older set (agent restart): make it match.
    if let Err(e) = ctl.sync_all().await {
        tracing::error!(error = %crate::error::chain(&e), "could not sync HAProxy to the backend set");
    }
    write_track(root, p, true);
    // A changed file is re-read with SIGHUP (reload): the VIP stays where it is.
    if installed.keepalived_changed && pid_alive(&p.keepalived_pids[0]) {
        sd.reload("keepalived.service").await?;
    } else {
        sd.start("keepalived.service").await?;
    }
    Ok(())
}

/// The running backend API: its task and the switch that stops it.
struct ApiTask {
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

/// Sets up TLS (generating a certificate when none is configured) and serves the backend API.
async fn start_api(
    root: &Root,
    settings: &LbSettings,
    p: &LbPaths,
    ctl: Arc<Controller>,
) -> Result<ApiTask, RoleError> {
    let ips: Vec<IpAddr> = vec![settings.api.listen.ip(), IpAddr::V4(settings.vip.addr)];
    let configured = settings.api.cert.as_deref().zip(settings.api.key.as_deref());
    let (cert, key) = tls::ensure_cert(root, configured, &p.state_dir, &ips)?;
    let tls_cfg = tls::server_config(&cert, &key, settings.api.client_ca.as_deref())?;
    let listener = TcpListener::bind(settings.api.listen)
        .await
        .map_err(|source| RoleError::Listen { addr: settings.api.listen, source })?;
    let auth =
        Auth { token: settings.api.token.clone(), client_cert: settings.api.client_ca.is_some() };
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(api::serve(
        listener,
        tokio_rustls::TlsAcceptor::from(tls_cfg),
        ctl,
        auth,
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    tracing::info!(listen = %settings.api.listen, "backend API listening");
    Ok(ApiTask { task, stop })
}

/// Keeps haproxy.cfg equal to the running set, so a restart or reload starts from it.
fn spawn_config_writer(
    settings: LbSettings,
    opts: &RoleOptions,
    root: Root,
    mut config_rx: watch::Receiver<DesiredSet>,
) -> tokio::task::JoinHandle<()> {
    let (p, tools) = (opts.paths.clone(), opts.tools.clone());
    tokio::spawn(async move {
        while config_rx.changed().await.is_ok() {
            let set = config_rx.borrow_and_update().clone();
            let text = haproxy_config(&settings, &p, &set).render();
            let (p2, tools2, root2) = (p.clone(), tools.clone(), root.clone());
            let r = tokio::task::spawn_blocking(move || {
                install_checked(&root2, &p2.haproxy_cfg, &text, 0o644, |f| {
                    check_haproxy(&tools2, f)
                })
            })
            .await;
            match r {
                Ok(Ok(_)) => tracing::debug!("haproxy.cfg updated to the current set"),
                Ok(Err(e)) => {
                    tracing::error!(error = %crate::error::chain(&e), "haproxy.cfg not updated")
                }
                Err(e) => tracing::error!(error = %e, "config writer failed"),
            }
        }
    })
}

/// Waits for a child to exit, or forever when there is none (under systemd).
async fn exited(child: &mut Option<Child>) -> Option<std::process::ExitStatus> {
    match child.as_mut() {
        Some(c) => c.wait().await.ok(),
        None => std::future::pending().await,
    }
}

/// Sleeps `d` unless `shutdown` comes first; false on shutdown.
async fn pause(shutdown: &mut (impl Future<Output = ()> + Unpin), d: Duration) -> bool {
    tokio::select! {
        _ = shutdown => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Watches the daemons until shutdown: restarts a child that exited (HAProxy's state goes to
/// keepalived first, so the peer takes the VIP meanwhile); under systemd, mirrors HAProxy's
/// master pid to keepalived (systemd restarts the units itself).
struct Supervisor<'a> {
    root: &'a Root,
    opts: &'a RoleOptions,
    rt: &'a RuntimeApi,
    ctl: &'a Controller,
    haproxy: Option<Child>,
    keepalived: Option<Child>,
}

/// Whether the supervisor goes on after handling an event.
enum Next {
    Continue,
    Shutdown,
}

impl Supervisor<'_> {
    async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), RoleError> {
        tokio::pin!(shutdown);
        let log_dir = match &self.opts.processes {
            Processes::Children { log_dir } => Some(log_dir.clone()),
            Processes::Systemd => None,
        };
        let mut haproxy_up = true;
        loop {
            let next = tokio::select! {
                _ = &mut shutdown => Next::Shutdown,
                st = exited(&mut self.haproxy) => {
                    self.haproxy = None;
                    self.haproxy_exited(st, log_dir.as_deref(), &mut shutdown).await?
                }
                st = exited(&mut self.keepalived) => {
                    self.keepalived = None;
                    self.keepalived_exited(st, log_dir.as_deref(), &mut shutdown).await?
                }
                _ = tokio::time::sleep(Duration::from_millis(200)), if log_dir.is_none() => {
                    let up = pid_alive(&self.opts.paths.haproxy_pid);
                    if up != haproxy_up {
                        haproxy_up = up;
                        write_track(self.root, &self.opts.paths, up);
                        tracing::warn!(up, "HAProxy liveness changed");
                    }
                    Next::Continue
                }
            };
            if let Next::Shutdown = next {
                return Ok(());
            }
        }
    }

    async fn haproxy_exited(
        &mut self,
        st: Option<std::process::ExitStatus>,
        log_dir: Option<&Path>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<Next, RoleError> {
        // Tell keepalived first: the peer takes the VIP while HAProxy restarts here.
        write_track(self.root, &self.opts.paths, false);
        tracing::error!(status = ?st, "HAProxy exited; releasing the VIP and restarting it");
        let Some(dir) = log_dir else { return Ok(Next::Continue) };
        if !pause(shutdown, Duration::from_millis(500)).await {
            return Ok(Next::Shutdown);
        }
        self.haproxy = Some(spawn_haproxy(self.root, self.opts, dir)?);
        match wait_ready(self.rt, Duration::from_secs(10), self.haproxy.as_mut()).await {
            Ok(()) => {
                // haproxy.cfg is rewritten after each change, but in the background: replay
                // the set in case the crash came before the rewrite.
                if let Err(e) = self.ctl.sync_all().await {
                    tracing::error!(error = %crate::error::chain(&e), "could not sync restarted HAProxy");
                }
                write_track(self.root, &self.opts.paths, true);
                tracing::info!("HAProxy is back; rejoining as backup");
            }
            Err(e) => {
                tracing::error!(error = %crate::error::chain(&e), "restarted HAProxy is not answering")
            }
        }
        Ok(Next::Continue)
    }

    async fn keepalived_exited(
        &mut self,
        st: Option<std::process::ExitStatus>,
        log_dir: Option<&Path>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<Next, RoleError> {
        tracing::error!(status = ?st, "keepalived exited; restarting it");
        let Some(dir) = log_dir else { return Ok(Next::Continue) };
        if !pause(shutdown, Duration::from_secs(1)).await {
            return Ok(Next::Shutdown);
        }
        self.keepalived = Some(spawn_keepalived(self.opts, dir)?);
        Ok(Next::Continue)
    }

    /// Stops the children: keepalived first, which sends a priority-0 advert so the peer takes
    /// the VIP at once.
    async fn stop(&mut self) {
        if let Some(k) = self.keepalived.as_mut() {
            terminate(k, "keepalived", Duration::from_secs(3)).await;
        }
        if let Some(h) = self.haproxy.as_mut() {
            terminate(h, "haproxy", Duration::from_secs(3)).await;
        }
    }
}

/// Runs the role until `shutdown` resolves. See the module docs of [`crate::roles::lb`].
pub async fn run_role(
    settings: LbSettings,
    opts: RoleOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RoleError> {
    let default = settings.interface.clone();
    let settings = super::live_settings(settings);
    if settings.interface != default {
        tracing::info!(%default, nic = %settings.interface, "lb.interface not set; using the first NIC");
    }
    let p = &opts.paths;
    // The live file system: `LbPaths` are host paths, since HAProxy and keepalived read the same
    // files (tests point them into a temp directory with `LbPaths::under`).
    let root = Root::new("/").map_err(StateError::from)?;
    make_dirs(&root, p)?;
    let set = restore_set(&root, p, &settings)?;
    let installed = install_configs(&root, &settings, &opts, &set)?;

    let rt = RuntimeApi::new(&p.admin_socket);
    let (config_tx, config_rx) = watch::channel(set.clone());
    let ctl =
        Arc::new(Controller::new(set, rt.clone(), root.clone(), p.backends_file(), config_tx));

    // Start the daemons. keepalived only after HAProxy answers, so a fresh node never takes the
    // VIP without a working HAProxy behind it.
    write_track(&root, p, false);
    let (haproxy, keepalived) = match &opts.processes {
        Processes::Children { log_dir } => {
            let (h, k) = start_children(&root, &opts, &rt, log_dir).await?;
            (Some(h), Some(k))
        }
        Processes::Systemd => {
            let sd = SystemBus::connect().await?;
            start_units(&sd, &root, p, &rt, &ctl, installed).await?;
            (None, None)
        }
    };
    let mut sup = Supervisor { root: &root, opts: &opts, rt: &rt, ctl: &ctl, haproxy, keepalived };
    let served = match start_api(&root, &settings, p, ctl.clone()).await {
        Ok(api) => {
            let writer = spawn_config_writer(settings.clone(), &opts, root.clone(), config_rx);
            let result = sup.run(shutdown).await;
            let _ = api.stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(2), api.task).await;
            writer.abort();
            result
        }
        Err(e) => Err(e),
    };
    sup.stop().await;
    served
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    const GOOD: &str = "defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 1s\n    \
                        timeout server 1s\nfrontend f\n    bind 127.0.0.1:1\n    default_backend b\n\
                        backend b\n    server s1 127.0.0.1:2\n";

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn install_checked_installs_only_what_haproxy_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        let tools = Tools::default();
        let check = |f: &Path| check_haproxy(&tools, f);
        let cfg = Path::new("/etc/haproxy/haproxy.cfg");
        let host = dir.path().join("etc/haproxy/haproxy.cfg");

        assert!(install_checked(&root, cfg, GOOD, 0o640, check).unwrap(), "new file");
        assert_eq!(std::fs::read_to_string(&host).unwrap(), GOOD);
        assert_eq!(mode(&host), 0o640);
        assert!(!install_checked(&root, cfg, GOOD, 0o640, check).unwrap(), "same text");

        // A refused text leaves the installed file as it was and no candidate behind.
        let bad = "global\n    no-such-keyword\n";
        match install_checked(&root, cfg, bad, 0o640, check) {
            Err(RoleError::Render(RenderError::Refused { path, .. })) => {
                assert!(path.starts_with(dir.path()), "checked under the root: {path:?}")
            }
            other => panic!("not refused: {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&host).unwrap(), GOOD);
        assert_eq!(root.list("/etc/haproxy").unwrap(), vec!["haproxy.cfg"]);

        // An accepted change replaces the file; the candidate is gone.
        let changed = GOOD.replace("timeout client 1s", "timeout client 2s");
        assert!(install_checked(&root, cfg, &changed, 0o600, check).unwrap());
        assert_eq!(std::fs::read_to_string(&host).unwrap(), changed);
        assert_eq!(mode(&host), 0o600);
        assert_eq!(root.list("/etc/haproxy").unwrap(), vec!["haproxy.cfg"]);

        // Paths stay inside the root.
        let e = install_checked(&root, Path::new("/../x.cfg"), GOOD, 0o644, check).unwrap_err();
        assert!(matches!(e, RoleError::State(StateError::Root(_))), "{e:?}");
    }

    #[test]
    fn track_file_is_written_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        let paths = LbPaths::under(Path::new("/run/capstan/lb"));
        write_track(&root, &paths, false);
        assert_eq!(root.read_string(&paths.track_file).unwrap().as_deref(), Some("1\n"));
        write_track(&root, &paths, true);
        assert_eq!(root.read_string(&paths.track_file).unwrap().as_deref(), Some("0\n"));
        assert_eq!(mode(&root.resolve(&paths.track_file).unwrap()), 0o644);
        assert_eq!(root.list("/run/capstan/lb").unwrap(), vec!["haproxy.state"]);
    }
}
