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
use super::state::{write_atomic, DesiredSet, StateError};
use super::tls::{self, TlsError};
use super::{
    check_haproxy, check_keepalived, haproxy_config, keepalived_config, LbPaths, LbSettings,
    RenderError, Tools,
};

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
    /// A file could not be written.
    #[error("installing a file")]
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

/// Installs `contents` at `path` only if a checker accepts it: written to a temp file next to
/// it, checked, renamed over. Returns whether the file changed.
fn install_checked(
    path: &Path,
    contents: &str,
    mode: u32,
    check: impl Fn(&Path) -> Result<(), RenderError>,
) -> Result<bool, RoleError> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(contents) {
        return Ok(false);
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let candidate = path.with_file_name(format!(".{name}.candidate"));
    write_atomic(&candidate, contents.as_bytes(), mode)?;
    if let Err(e) = check(&candidate) {
        let _ = std::fs::remove_file(&candidate);
        return Err(e.into());
    }
    std::fs::rename(&candidate, path).map_err(|source| StateError::Io {
        op: "renaming into",
        path: path.into(),
        source,
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|source| StateError::Io {
        op: "syncing",
        path: dir.into(),
        source,
    })?;
    Ok(true)
}

fn write_track(paths: &LbPaths, healthy: bool) {
    let v: &[u8] = if healthy { b"0\n" } else { b"1\n" };
    if let Err(e) = write_atomic(&paths.track_file, v, 0o644) {
        tracing::error!(error = %api::crate_chain(&e), "cannot tell keepalived HAProxy's state");
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

fn spawn_haproxy(opts: &RoleOptions, log_dir: &Path) -> Result<Child, RoleError> {
    let p = &opts.paths;
    let _ = std::fs::remove_file(&p.admin_socket);
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
        std::fs::create_dir_all(dir)
            .map_err(|source| RoleError::Dir { path: dir.into(), source })?;
    }

    // The desired set: persisted one if any, else the configured backends.
    let set = match DesiredSet::load(&p.backends_file()) {
        Ok(Some(s)) => {
            tracing::info!(backends = s.entries().len(), "restored the persisted backend set");
            s
        }
        Ok(None) => {
            let s = DesiredSet::from_list(&settings.backends);
            s.save(&p.backends_file())?;
            s
        }
        Err(e) => {
            // Keep the operator's file for inspection and serve the configured set.
            tracing::error!(error = %api::crate_chain(&e), "persisted backend set unreadable; using lb.backends");
            let aside = p.backends_file().with_extension("json.corrupt");
            let _ = std::fs::rename(p.backends_file(), aside);
            let s = DesiredSet::from_list(&settings.backends);
            s.save(&p.backends_file())?;
            s
        }
    };

    let hcfg = haproxy_config(&settings, &p, &set);
    let old_structure = std::fs::read_to_string(&p.haproxy_cfg).ok();
    let tools = opts.tools.clone();
    let haproxy_changed =
        install_checked(&p.haproxy_cfg, &hcfg.render(), 0o644, |f| check_haproxy(&tools, f))?;
    let structure_changed =
        old_structure.is_none_or(|old| super::haproxy::needs_reload(&old, &hcfg.render()));
    let kcfg = keepalived_config(&settings, &p, &opts.node_label).render();
    let keepalived_changed =
        install_checked(&p.keepalived_conf, &kcfg, 0o600, |f| check_keepalived(&tools, f))?;
    tracing::info!(
        haproxy_changed,
        structure_changed,
        keepalived_changed,
        "configuration installed"
    );

    let rt = RuntimeApi::new(&p.admin_socket);
    let (config_tx, mut config_rx) = watch::channel(set.clone());
    let ctl = Arc::new(Controller::new(set, rt.clone(), p.backends_file(), config_tx));

    // Start the daemons. keepalived only after HAProxy answers, so a fresh node never takes the
    // VIP without a working HAProxy behind it.
    write_track(&p, false);
    let (mut haproxy, mut keepalived) = match &opts.processes {
        Processes::Children { log_dir } => {
            std::fs::create_dir_all(log_dir)
                .map_err(|source| RoleError::Dir { path: log_dir.clone(), source })?;
            let mut h = spawn_haproxy(&opts, log_dir)?;
            wait_ready(&rt, Duration::from_secs(10), Some(&mut h)).await?;
            write_track(&p, true);
            let _ = std::fs::remove_file(&p.vrrp_state_file);
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
                tracing::error!(error = %api::crate_chain(&e), "could not sync HAProxy to the backend set");
            }
            write_track(&p, true);
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
    let (cert, key) = tls::ensure_cert(configured, &p.state_dir, &ips)?;
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
        tokio::spawn(async move {
            while config_rx.changed().await.is_ok() {
                let set = config_rx.borrow_and_update().clone();
                let text = haproxy_config(&settings, &p, &set).render();
                let (p2, tools2) = (p.clone(), tools.clone());
                let r = tokio::task::spawn_blocking(move || {
                    install_checked(&p2.haproxy_cfg, &text, 0o644, |f| check_haproxy(&tools2, f))
                })
                .await;
                match r {
                    Ok(Ok(_)) => tracing::debug!("haproxy.cfg updated to the current set"),
                    Ok(Err(e)) => {
                        tracing::error!(error = %api::crate_chain(&e), "haproxy.cfg not updated")
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
                write_track(&p, false);
                tracing::error!(status = ?st, "HAProxy exited; releasing the VIP and restarting it");
                let Some(dir) = log_dir.as_deref() else { continue };
                tokio::select! {
                    _ = &mut shutdown => break Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                haproxy = None;
                match spawn_haproxy(&opts, dir) {
                    Ok(c) => haproxy = Some(c),
                    Err(e) => break Err(e),
                }
                match wait_ready(&rt, Duration::from_secs(10), haproxy.as_mut()).await {
                    Ok(()) => {
                        // haproxy.cfg is rewritten after each change, but in the background:
                        // replay the set in case the crash came before the rewrite.
                        if let Err(e) = ctl.sync_all().await {
                            tracing::error!(error = %api::crate_chain(&e), "could not sync restarted HAProxy");
                        }
                        write_track(&p, true);
                        tracing::info!("HAProxy is back; rejoining as backup");
                    }
                    Err(e) => tracing::error!(error = %api::crate_chain(&e), "restarted HAProxy is not answering"),
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
                    write_track(&p, up);
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
