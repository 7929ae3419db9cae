//! `capstan-agent run`: the node daemon.
//!
//! - serves the status JSON on a unix socket (`/run/capstan/agent.sock`): connect, read to EOF
//!   ([`socket`]);
//! - watches the instance's identity and, when the instance-id changes, re-identifies the
//!   running machine (an instant clone keeps its parent's memory and disk: guestinfo tells it
//!   who it is now; [`crate::reidentify`]). Each poll asks one cheap question
//!   ([`crate::sources::identity`]: the few guestinfo keys that name the instance and the
//!   SMBIOS UUID); only when the answer changes are the sources gathered again ([`watch`]). It
//!   polls faster while the VM is frozen for forking, and at once on the kernel's vmgenid
//!   uevent;
//! - starts the configured role ([`crate::roles::Role::run`]);
//! - sends heartbeats to `capstan-hub` when `heartbeat.url` is set, with the role's checks,
//!   and publishes each beat's short status to `guestinfo.capstan.status` ([`heartbeat`]);
//! - keeps only the capabilities those jobs need ([`kept_caps`]: its own, [`BASE_CAPS`], and
//!   the role's), in the bounding set too, so nothing it spawns gets more.
//!
//! Import rule: the daemon imports `boot`, `reidentify`, `sources`, `roles`, `state`,
//! `heartbeat`; never
//! `cli`.

mod heartbeat;
mod socket;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::RwLock;

use crate::error::chain;
use crate::roles::Role;
use crate::root::{Root, RootError};
use crate::sources::{self, Gathered};
use crate::state::{State, Status};

/// What `run` is told.
#[derive(Debug, Clone)]
pub struct Options {
    /// Sources and root (with a root, state and the socket live under it and the role is not
    /// started).
    pub boot: crate::boot::Options,
    /// The status socket (default `/run/capstan/agent.sock`, under the root).
    pub socket: Option<PathBuf>,
    /// Time between polls of the instance's identity.
    pub poll: Duration,
    /// Keep all capabilities (for debugging).
    pub keep_caps: bool,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The async runtime could not start.
    #[error("starting the runtime")]
    Runtime(#[source] std::io::Error),
    /// A directory could not be created.
    #[error("{}", .path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The root could not be opened.
    #[error(transparent)]
    Root(#[from] RootError),
    /// The status socket could not be bound.
    #[error("binding {}", .path.display())]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The first gathering of the sources did not finish.
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
}

/// Capabilities the daemon itself keeps, whatever the role, and why:
/// - `CAP_NET_ADMIN`: re-applying the network of a new instance over netlink;
/// - `CAP_SYS_ADMIN`: `sethostname` for a new instance (no narrower capability covers it);
/// - `CAP_CHOWN`, `CAP_FOWNER`, `CAP_DAC_OVERRIDE`: writing users' `authorized_keys` and
///   files owned by others when a new instance re-runs the user and file steps;
/// - `CAP_SETUID`, `CAP_SETGID`: none of ours, but `ssh-keygen`/`runcmd` run as root expect
///   them; kept so per-instance commands behave as at first boot;
/// - `CAP_SYS_RAWIO`: `iopl` for the VMware backdoor where unprivileged access is refused.
///
/// A role adds its own ([`crate::roles::Role::capabilities`]). Everything else (module
/// loading, ptrace, mount, raw block I/O, …) is dropped.
pub const BASE_CAPS: &[caps::Capability] = &[
    caps::Capability::CAP_NET_ADMIN,
    caps::Capability::CAP_SYS_ADMIN,
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_SYS_RAWIO,
];

/// The capabilities `run` keeps with `role`: [`BASE_CAPS`] and the role's.
pub fn kept_caps(role: Option<&dyn Role>) -> Vec<caps::Capability> {
    let mut all = BASE_CAPS.to_vec();
    for c in role.map(|r| r.capabilities()).unwrap_or_default() {
        if !all.contains(c) {
            all.push(*c);
        }
    }
    all
}

/// Every capability the daemon may keep, with any role (the unit's bounding set).
pub fn all_kept_caps() -> Vec<caps::Capability> {
    let mut all = BASE_CAPS.to_vec();
    for r in crate::roles::all() {
        all.extend(kept_caps(Some(*r)).into_iter().filter(|c| !BASE_CAPS.contains(c)));
    }
    all.sort_by_key(|c| c.index());
    all.dedup();
    all
}

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
    /// The last new identity refused whole by a re-identification (nothing applied), one
    /// line per refused value naming its source and key.
    pub refused_identity: Vec<String>,
    /// Heartbeats: `off (heartbeat.url unset)`, `sending to URL`, or `not started: WHY`.
    pub heartbeat: String,
    /// How the hub took the last heartbeat (`accepted seq=N`, `refused(403) seq=N`,
    /// `unreachable seq=N`).
    pub heartbeat_last: Option<String>,
}

/// The daemon's status, shared by its tasks.
type Shared = Arc<RwLock<DaemonStatus>>;

/// Entry point of `capstan-agent run`.
pub fn main(opts: Options) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    rt.block_on(run(opts))
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

/// Keeps the capabilities of `role` (all of them with `--keep-caps`); returns what `status`
/// shows.
fn keep_capabilities(keep_all: bool, role: Option<&dyn Role>) -> Vec<String> {
    if keep_all {
        return vec!["(all kept: --keep-caps)".to_owned()];
    }
    match drop_capabilities(&kept_caps(role)) {
        Ok(k) => {
            tracing::info!(kept = %k.join(","), "capabilities dropped");
            k
        }
        Err(e) => {
            tracing::warn!("dropping capabilities: {e}");
            vec![format!("(drop failed: {e})")]
        }
    }
}

async fn run(opts: Options) -> Result<(), DaemonError> {
    let started = Instant::now();
    let root_dir = opts.boot.root_dir().to_owned();
    std::fs::create_dir_all(&root_dir)
        .map_err(|source| DaemonError::Dir { path: root_dir.clone(), source })?;
    let root = Root::new(&root_dir)?;
    let source_opts = opts.boot.source_options();
    let socket_path =
        opts.socket.clone().unwrap_or_else(|| root_dir.join("run/capstan/agent.sock"));
    let listener = socket::bind(&socket_path)?;

    // The configuration as at boot: which role, with which settings.
    let mut first = {
        let so = source_opts.clone();
        tokio::task::spawn_blocking(move || sources::gather(&so)).await?
    };
    let role = crate::roles::get(first.config.role);
    let state = State::new(root.clone());
    let shared: Shared = Arc::new(RwLock::new(DaemonStatus {
        pid: std::process::id(),
        uptime_s: 0,
        instance_id: state.current_instance().ok().flatten(),
        polls: 0,
        reruns: 0,
        capabilities: keep_capabilities(opts.keep_caps, role),
        role: "none".into(),
        firstboot: state.load_current().ok().flatten(),
        refused_identity: Vec::new(),
        heartbeat: "starting".into(),
        heartbeat_last: None,
    }));
    tokio::spawn(socket::serve(listener, shared.clone(), started));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (restart_tx, restart_rx) = tokio::sync::mpsc::channel(1);
    if let Some(role) = role {
        let (so, live) = (source_opts.clone(), opts.boot.live());
        watch::supervise_role(role, &first, so, live, &shared, stop_rx, restart_rx).await;
    }
    // After the role: it never waits on the hub.
    let heartbeats = heartbeat::start(&mut first, role, &shared).await;
    drop(first);
    notify_systemd("READY=1");

    let mut watcher =
        watch::Watch::new(source_opts, root, opts.boot.live()).with_role_restart(restart_tx);
    if let Some(now) = heartbeats.as_ref().map(|h| h.nudger()) {
        // After a re-identification the next beat goes at once, with the new identity.
        watcher = watcher.on_reidentified(Box::new(move |_| {
            now.notify_one();
            Ok("the next heartbeat goes now, with the new identity".into())
        }));
    }
    let watch = tokio::spawn(watcher.run(opts.poll, shared.clone()));

    shutdown_signal().await;
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    watch.abort();
    if let Some(h) = heartbeats {
        h.stop();
    }
    // Give the role a moment to stop its daemons cleanly.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

/// Starts the role with the settings gathered at boot (not under a root, and not with
/// refused settings); its state goes to the socket's `role`.
async fn start_role(
    role: &'static dyn Role,
    first: &Gathered,
    live: bool,
    shared: &Shared,
    stop_rx: tokio::sync::watch::Receiver<bool>,
) {
    let name = role.id().as_str();
    let settings = match (&first.config.role_settings, live) {
        (Some(s), true) => s.clone(),
        (Some(_), false) => {
            shared.write().await.role = format!("{name}: not started under --root");
            return;
        }
        (None, _) => {
            let why = first
                .config
                .errors_under(&format!("{name}."))
                .map(ToString::to_string)
                .chain(first.config.role_unconfigured.clone())
                .collect::<Vec<_>>()
                .join("; ");
            tracing::error!("role {name}: settings refused: {why}");
            shared.write().await.role = format!("{name}: not started: {why}");
            return;
        }
    };
    let node_label = first
        .config
        .hostname
        .as_ref()
        .map(|h| h.short().to_owned())
        .unwrap_or_else(|| format!("capstan-{name}"));
    let mut rx = stop_rx;
    let shutdown = Box::pin(async move {
        let _ = rx.wait_for(|v| *v).await;
    });
    let running = role.run(settings, crate::roles::RunOptions { node_label }, shutdown);
    let role_shared = shared.clone();
    role_shared.write().await.role = format!("{name}: starting");
    tokio::spawn(async move {
        let msg = match running.await {
            Ok(()) => format!("{name}: stopped"),
            Err(e) => {
                let why = chain(&*e.source);
                tracing::error!("{name} role: {why}");
                format!("{name}: failed: {why}")
            }
        };
        role_shared.write().await.role = msg;
    });
    shared.write().await.role = format!("{name}: running");
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
