//! `capstan-agent run`: the node daemon.
//!
//! - serves the status JSON on a unix socket (`/run/capstan/agent.sock`): connect, read to EOF;
//! - polls the sources every few seconds and re-runs first boot when the instance-id changes
//!   (an instant clone keeps its parent's memory and disk: guestinfo tells it who it is now);
//! - starts the `lb` role when `role = lb`;
//! - keeps only the capabilities those jobs need ([`KEPT_CAPS`]), in the bounding set too, so
//!   nothing it spawns gets more.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::RwLock;

use crate::cli::commands_api::{apply_gathered, source_options};
use crate::cli::SourceArgs;
use crate::root::Root;
use crate::schema::Role;
use crate::sources::{self, chain};
use crate::state::{State, Status};
use crate::steps::Mode;

/// Arguments of `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Sources (with `--root`, state and the socket live under DIR and the role is not started).
    #[command(flatten)]
    pub src: SourceArgs,
    /// The status socket (default `/run/capstan/agent.sock`, under `--root` if given).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Seconds between polls of the sources for a new instance-id.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub poll: u64,
    /// Keep all capabilities (for debugging).
    #[arg(long)]
    pub keep_caps: bool,
}

/// Capabilities `run` keeps, and why:
/// - `CAP_NET_ADMIN`: re-applying the network of a new instance over netlink; keepalived's VIP;
/// - `CAP_NET_RAW`: keepalived's VRRP socket when it runs as our child;
/// - `CAP_NET_BIND_SERVICE`: HAProxy's frontend and the backend API on ports below 1024 if
///   configured so;
/// - `CAP_KILL`: signalling HAProxy and keepalived (reload, stop);
/// - `CAP_SYS_ADMIN`: `sethostname` for a new instance (no narrower capability covers it);
/// - `CAP_CHOWN`, `CAP_FOWNER`, `CAP_DAC_OVERRIDE`: writing users' `authorized_keys` and
///   files owned by others when a new instance re-runs the user and file steps;
/// - `CAP_SETUID`, `CAP_SETGID`: none of ours, but `ssh-keygen`/`runcmd` run as root expect
///   them; kept so per-instance commands behave as at first boot;
/// - `CAP_SYS_RAWIO`: `iopl` for the VMware backdoor where unprivileged access is refused.
///
/// Everything else (module loading, ptrace, mount, raw block I/O, …) is dropped.
pub const KEPT_CAPS: &[caps::Capability] = &[
    caps::Capability::CAP_NET_ADMIN,
    caps::Capability::CAP_NET_RAW,
    caps::Capability::CAP_NET_BIND_SERVICE,
    caps::Capability::CAP_KILL,
    caps::Capability::CAP_SYS_ADMIN,
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_SYS_RAWIO,
];

/// Drops every capability not in `keep` from the bounding, inheritable, effective and
/// permitted sets. Returns what was kept.
pub fn drop_capabilities(
    keep: &[caps::Capability],
) -> Result<Vec<String>, caps::errors::CapsError> {
    use caps::{CapSet, Capability};
    let keep_set: caps::CapsHashSet = keep.iter().copied().collect();
    // Bounding set first: removing from it needs CAP_SETPCAP, which goes last.
    for cap in caps::all() {
        if !keep_set.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap)? {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    let current = caps::read(None, CapSet::Permitted)?;
    let kept: caps::CapsHashSet = current.intersection(&keep_set).copied().collect();
    caps::set(None, CapSet::Inheritable, &caps::CapsHashSet::new())?;
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    let mut names: Vec<String> = kept.iter().map(Capability::to_string).collect();
    names.sort();
    Ok(names)
}

/// What the socket answers.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonStatus {
    /// The daemon's pid.
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// The instance-id seen at the last poll.
    pub instance_id: Option<String>,
    /// Polls done.
    pub polls: u64,
    /// First-boot re-runs done by the daemon.
    pub reruns: u64,
    /// Capabilities kept.
    pub capabilities: Vec<String>,
    /// Role state.
    pub role: String,
    /// The last recorded first-boot status.
    pub firstboot: Option<Status>,
}

/// Entry point of `capstan-agent run`.
pub fn main(args: RunArgs) -> i32 {
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("capstan-agent: starting the runtime: {e}");
                return 1;
            }
        };
    match rt.block_on(run(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("capstan-agent: {e}");
            1
        }
    }
}

fn notify_systemd(msg: &str) {
    // sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET.
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let p = PathBuf::from(path);
    if let Err(e) = sock.send_to(msg.as_bytes(), &p) {
        tracing::debug!("sd_notify: {e}");
    }
}

async fn run(args: RunArgs) -> Result<(), String> {
    let started = Instant::now();
    let root_dir = args.src.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    std::fs::create_dir_all(&root_dir).map_err(|e| format!("{}: {e}", root_dir.display()))?;
    let root = Root::new(&root_dir).map_err(|e| chain(&e))?;
    let live = args.src.root.is_none();
    let opts = source_options(&args.src);

    let capabilities = if args.keep_caps {
        vec!["(all kept: --keep-caps)".to_owned()]
    } else {
        match drop_capabilities(KEPT_CAPS) {
            Ok(k) => {
                tracing::info!(kept = %k.join(","), "capabilities dropped");
                k
            }
            Err(e) => {
                tracing::warn!("dropping capabilities: {e}");
                vec![format!("(drop failed: {e})")]
            }
        }
    };

    let socket = args.socket.clone().unwrap_or_else(|| root_dir.join("run/capstan/agent.sock"));
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| format!("binding {}: {e}", socket.display()))?;
    set_mode(&socket, 0o660);
    tracing::info!(socket = %socket.display(), "status socket listening");

    let state = State::new(root.clone());
    let shared = Arc::new(RwLock::new(DaemonStatus {
        pid: std::process::id(),
        uptime_s: 0,
        instance_id: state.current_instance().ok().flatten(),
        polls: 0,
        reruns: 0,
        capabilities,
        role: "none".into(),
        firstboot: state.load_current().ok().flatten(),
    }));

    // Status socket.
    let sock_shared = shared.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let mut snapshot = sock_shared.read().await.clone();
            snapshot.uptime_s = started.elapsed().as_secs();
            let mut body = serde_json::to_vec_pretty(&snapshot).unwrap_or_default();
            body.push(b'\n');
            tokio::spawn(async move {
                let _ = conn.write_all(&body).await;
                let _ = conn.shutdown().await;
            });
        }
    });

    // Role.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let first = {
        let opts = opts.clone();
        tokio::task::spawn_blocking(move || sources::gather(&opts))
            .await
            .map_err(|e| e.to_string())?
    };
    if first.config.role == Role::Lb {
        match (&first.config.lb, live) {
            (Some(lb), true) => {
                let settings = lb.clone();
                let node_label = first
                    .config
                    .hostname
                    .as_ref()
                    .map(|h| h.short().to_owned())
                    .unwrap_or_else(|| "capstan-lb".into());
                let role_opts = crate::lb::RoleOptions {
                    paths: crate::lb::LbPaths::appliance(),
                    tools: crate::lb::Tools::default(),
                    processes: crate::lb::Processes::Systemd,
                    node_label,
                };
                let mut rx = stop_rx.clone();
                let role_shared = shared.clone();
                role_shared.write().await.role = "lb: starting".into();
                tokio::spawn(async move {
                    let shutdown = async move {
                        let _ = rx.wait_for(|v| *v).await;
                    };
                    let r = crate::lb::run_role(settings, role_opts, shutdown).await;
                    let msg = match r {
                        Ok(()) => "lb: stopped".to_owned(),
                        Err(e) => {
                            tracing::error!("lb role: {}", chain(&e));
                            format!("lb: failed: {}", chain(&e))
                        }
                    };
                    role_shared.write().await.role = msg;
                });
                shared.write().await.role = "lb: running".into();
            }
            (Some(_), false) => {
                shared.write().await.role = "lb: not started under --root".into();
            }
            (None, _) => {
                let why = first
                    .config
                    .errors_under("lb.")
                    .map(ToString::to_string)
                    .chain(first.config.role_unconfigured.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::error!("role lb: settings refused: {why}");
                shared.write().await.role = format!("lb: not started: {why}");
            }
        }
    }
    drop(first);
    notify_systemd("READY=1");

    // Instance-id watch.
    let mode = if live { Mode::Live } else { Mode::Rooted { run_commands: false } };
    let watch_shared = shared.clone();
    let watch_root = root.clone();
    let poll = Duration::from_secs(args.poll);
    let watch = tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll);
        loop {
            tick.tick().await;
            let opts2 = opts.clone();
            let root2 = watch_root.clone();
            let res = tokio::task::spawn_blocking(move || {
                let t0 = Instant::now();
                let g = sources::gather(&opts2);
                let current = State::new(root2.clone()).current_instance().ok().flatten();
                let id = g.instance_id.to_string();
                if current.as_deref() == Some(id.as_str()) {
                    return (id, None);
                }
                tracing::info!(old = ?current, new = %id, "new instance-id: re-running first boot");
                let gather_ms = t0.elapsed().as_millis() as u64;
                let started_at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let st = apply_gathered(&g, &root2, mode, live, t0, started_at, gather_ms);
                (id, Some(st))
            })
            .await;
            let mut s = watch_shared.write().await;
            s.polls += 1;
            match res {
                Ok((id, rerun)) => {
                    s.instance_id = Some(id);
                    if let Some(st) = rerun {
                        s.reruns += 1;
                        s.firstboot = Some(st);
                    }
                }
                Err(e) => tracing::error!("instance watch: {e}"),
            }
        }
    });

    shutdown_signal().await;
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    watch.abort();
    // Give the role a moment to stop its daemons cleanly.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
