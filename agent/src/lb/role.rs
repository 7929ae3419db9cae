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
    check_haproxy, check_keepalived, haproxy_config, keepalived_config, LbPaths, LbSettings,
    RenderError, Tools,
};
use crate::root::{FileOpts, Root};

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
    /// systemctl failed.
    #[error("systemctl {args}: {output}")]
    Systemctl {
        /// The arguments.
        args: String,
        /// What it said.
        output: String,
    },
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
        tracing::error!(error = %crate::sources::chain(&e), "cannot tell keepalived HAProxy's state");
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

async fn systemctl(args: &[&str]) -> Result<(), RoleError> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .await
        .map_err(|source| RoleError::Start { what: "systemctl", source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RoleError::Systemctl {
            args: args.join(" "),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
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

fn pid_alive(pidfile: &Path) -> bool {
    std::fs::read_to_string(pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok()).is_some_and(
        |pid| pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(),
    )
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

/// Runs the role until `shutdown` resolves. See the module docs of [`crate::lb`].
pub async fn run_role(
    settings: LbSettings,
    opts: RoleOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RoleError> {
    let p = opts.paths.clone();
    // The live file system: `LbPaths` are host paths, since HAProxy and keepalived read the same
    // files (tests point them into a temp directory with `LbPaths::under`).
    let root = Root::new("/").map_err(StateError::from)?;
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

    // The desired set: persisted one if any, else the configured backends.
    let set = match DesiredSet::load(&root, &p.backends_file()) {
        Ok(Some(s)) => {
            tracing::info!(backends = s.entries().len(), "restored the persisted backend set");
            s
        }
        Ok(None) => {
            let s = DesiredSet::from_list(&settings.backends);
            s.save(&root, &p.backends_file())?;
            s
        }
        Err(e) => {
            // Keep the operator's file for inspection and serve the configured set.
            tracing::error!(error = %crate::sources::chain(&e), "persisted backend set unreadable; using lb.backends");
            // A copy, not a rename: the save below then replaces the file atomically.
            let aside = p.backends_file().with_extension("json.corrupt");
            if let Ok(Some(bytes)) = root.read(p.backends_file()) {
                let _ = write_durable(&root, &aside, &bytes, 0o644);
            }
            let s = DesiredSet::from_list(&settings.backends);
            s.save(&root, &p.backends_file())?;
            s
        }
    };

    let hcfg = haproxy_config(&settings, &p, &set);
    let old_structure = root.read_string(&p.haproxy_cfg).ok().flatten();
    let tools = opts.tools.clone();
    let haproxy_changed = install_checked(&root, &p.haproxy_cfg, &hcfg.render(), 0o644, |f| {
        check_haproxy(&tools, f)
    })?;
    let structure_changed =
        old_structure.is_none_or(|old| super::haproxy::needs_reload(&old, &hcfg.render()));
    let kcfg = keepalived_config(&settings, &p, &opts.node_label).render();
    let keepalived_changed =
        install_checked(&root, &p.keepalived_conf, &kcfg, 0o600, |f| check_keepalived(&tools, f))?;
    tracing::info!(
        haproxy_changed,
        structure_changed,
        keepalived_changed,
        "configuration installed"
    );

    let rt = RuntimeApi::new(&p.admin_socket);
    let (config_tx, mut config_rx) = watch::channel(set.clone());
    let ctl =
        Arc::new(Controller::new(set, rt.clone(), root.clone(), p.backends_file(), config_tx));

    // Start the daemons. keepalived only after HAProxy answers, so a fresh node never takes the
    // VIP without a working HAProxy behind it.
    write_track(&root, &p, false);
    let (mut haproxy, mut keepalived) = match &opts.processes {
        Processes::Children { log_dir } => {
            std::fs::create_dir_all(log_dir)
                .map_err(|source| RoleError::Dir { path: log_dir.clone(), source })?;
            let mut h = spawn_haproxy(&root, &opts, log_dir)?;
            wait_ready(&rt, Duration::from_secs(10), Some(&mut h)).await?;
            write_track(&root, &p, true);
            let _ = root.remove(&p.vrrp_state_file);
            let k = spawn_keepalived(&opts, log_dir)?;
            (Some(h), Some(k))
        }
        Processes::Systemd => {
            if pid_alive(&p.haproxy_pid) {
                if structure_changed {
                    systemctl(&["reload", "haproxy.service"]).await?;
                }
            } else {
                systemctl(&["start", "haproxy.service"]).await?;
            }
            wait_ready(&rt, Duration::from_secs(10), None).await?;
            // HAProxy may have been running with an older set (agent restart): make it match.
            if let Err(e) = ctl.sync_all().await {
                tracing::error!(error = %crate::sources::chain(&e), "could not sync HAProxy to the backend set");
            }
            write_track(&root, &p, true);
            // A changed file is re-read with SIGHUP (reload): the VIP stays where it is.
            if keepalived_changed && pid_alive(&p.keepalived_pids[0]) {
                systemctl(&["reload", "keepalived.service"]).await?;
            } else {
                systemctl(&["start", "keepalived.service"]).await?;
            }
            (None, None)
        }
    };

    // The API.
    let ips: Vec<IpAddr> = vec![settings.api.listen.ip(), IpAddr::V4(settings.vip.addr)];
    let configured = settings.api.cert.as_deref().zip(settings.api.key.as_deref());
    let (cert, key) = tls::ensure_cert(&root, configured, &p.state_dir, &ips)?;
    let tls_cfg = tls::server_config(&cert, &key, settings.api.client_ca.as_deref())?;
    let listener = TcpListener::bind(settings.api.listen)
        .await
        .map_err(|source| RoleError::Listen { addr: settings.api.listen, source })?;
    let auth =
        Auth { token: settings.api.token.clone(), client_cert: settings.api.client_ca.is_some() };
    let (stop_tx, stop_rx) = watch::channel(false);
    let api_task = {
        let mut stop_rx = stop_rx.clone();
        let ctl = ctl.clone();
        tokio::spawn(api::serve(
            listener,
            tokio_rustls::TlsAcceptor::from(tls_cfg),
            ctl,
            auth,
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
        ))
    };
    tracing::info!(listen = %settings.api.listen, "backend API listening");

    // Keep haproxy.cfg equal to the running set, so a restart or reload starts from it.
    let writer_task = {
        let settings = settings.clone();
        let p = p.clone();
        let tools = opts.tools.clone();
        let root = root.clone();
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
                        tracing::error!(error = %crate::sources::chain(&e), "haproxy.cfg not updated")
                    }
                    Err(e) => tracing::error!(error = %e, "config writer failed"),
                }
            }
        })
    };

    // Supervise.
    tokio::pin!(shutdown);
    let log_dir = match &opts.processes {
        Processes::Children { log_dir } => Some(log_dir.clone()),
        Processes::Systemd => None,
    };
    let mut haproxy_up = true;
    let result = loop {
        let hap_wait = async {
            match haproxy.as_mut() {
                Some(c) => c.wait().await.ok(),
                None => std::future::pending().await,
            }
        };
        let ka_wait = async {
            match keepalived.as_mut() {
                Some(c) => c.wait().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            st = hap_wait => {
                // Tell keepalived first: the peer takes the VIP while HAProxy restarts here.
                write_track(&root, &p, false);
                tracing::error!(status = ?st, "HAProxy exited; releasing the VIP and restarting it");
                let Some(dir) = log_dir.as_deref() else { continue };
                tokio::select! {
                    _ = &mut shutdown => break Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                haproxy = None;
                match spawn_haproxy(&root, &opts, dir) {
                    Ok(c) => haproxy = Some(c),
                    Err(e) => break Err(e),
                }
                match wait_ready(&rt, Duration::from_secs(10), haproxy.as_mut()).await {
                    Ok(()) => {
                        // haproxy.cfg is rewritten after each change, but in the background:
                        // replay the set in case the crash came before the rewrite.
                        if let Err(e) = ctl.sync_all().await {
                            tracing::error!(error = %crate::sources::chain(&e), "could not sync restarted HAProxy");
                        }
                        write_track(&root, &p, true);
                        tracing::info!("HAProxy is back; rejoining as backup");
                    }
                    Err(e) => tracing::error!(error = %crate::sources::chain(&e), "restarted HAProxy is not answering"),
                }
            }
            st = ka_wait => {
                tracing::error!(status = ?st, "keepalived exited; restarting it");
                let Some(dir) = log_dir.as_deref() else { continue };
                tokio::select! {
                    _ = &mut shutdown => break Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                keepalived = None;
                match spawn_keepalived(&opts, dir) {
                    Ok(c) => keepalived = Some(c),
                    Err(e) => break Err(e),
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(200)), if log_dir.is_none() => {
                // Under systemd: watch HAProxy's master pid and mirror it to keepalived.
                let up = pid_alive(&p.haproxy_pid);
                if up != haproxy_up {
                    haproxy_up = up;
                    write_track(&root, &p, up);
                    tracing::warn!(up, "HAProxy liveness changed");
                }
            }
        }
    };

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), api_task).await;
    writer_task.abort();
    // keepalived first: it sends a priority-0 advert so the peer takes the VIP at once.
    if let Some(k) = keepalived.as_mut() {
        terminate(k, "keepalived", Duration::from_secs(3)).await;
    }
    if let Some(h) = haproxy.as_mut() {
        terminate(h, "haproxy", Duration::from_secs(3)).await;
    }
    result
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
