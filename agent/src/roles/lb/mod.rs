//! The `lb` role: an HA control-plane load balancer — HAProxy balancing TCP to the API servers,
//! keepalived holding the VIP for an active/standby pair, and an HTTPS API that changes the
//! backends at run time without a reload.
//!
//! # Entry points for the agent binary
//!
//! - [`LbSettings::from_flat`] builds the typed settings from the schema's flat values
//!   ([`settings::KEYS`] lists the keys, defaults and secrets).
//! - [`render`] returns every file the role installs (haproxy.cfg, keepalived.conf, systemd
//!   drop-ins) for `capstan-agent render --root DIR`; nothing is started. [`check_rendered`]
//!   runs `haproxy -c` and `keepalived -t` on files written under a root.
//! - [`run_role`] is the `capstan-agent run` entry point with `role = lb`: restores the persisted
//!   backend set, installs the checked configs, starts HAProxy and keepalived (through systemd
//!   in the appliance, or as child processes with [`Processes::Children`]), supervises them,
//!   feeds HAProxy's liveness to keepalived, and serves the backend API until `shutdown`.
//! - [`status`] is for `capstan-agent status`: VRRP state, VIP, each backend's health.
//!
//! # Files and units (appliance paths, [`LbPaths::appliance`])
//!
//! `/etc/haproxy/haproxy.cfg`, `/etc/keepalived/keepalived.conf` (0600, holds the VRRP secret),
//! drop-ins for `haproxy.service` and `keepalived.service`; state in `/var/lib/capstan/lb`
//! (`backends.json`, the generated API certificate), runtime files in `/run/capstan/lb`.
//! The image enables `haproxy.service` and `keepalived.service`; the agent restarts or reloads
//! them when their files change.

pub mod api;
pub mod controller;
pub mod haproxy;
pub mod keepalived;
pub mod role;
pub(crate) mod role_impl;
pub mod runtime;
pub mod settings;
pub mod state;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

pub use role::{run_role, Processes, RoleError, RoleOptions};
pub use settings::LbSettings;

use crate::steps::netlink::{self, NetlinkError};
use crate::types::NicName;
use haproxy::{HaproxyConfig, SLOTS};
use keepalived::KeepalivedConfig;
use state::DesiredSet;

/// A file the role installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Absolute path on the appliance.
    pub path: PathBuf,
    /// Contents.
    pub contents: String,
    /// Unix mode.
    pub mode: u32,
}

/// Where the role's files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbPaths {
    /// haproxy.cfg.
    pub haproxy_cfg: PathBuf,
    /// HAProxy master pid file.
    pub haproxy_pid: PathBuf,
    /// HAProxy runtime (admin) socket.
    pub admin_socket: PathBuf,
    /// keepalived.conf.
    pub keepalived_conf: PathBuf,
    /// keepalived pid files: main, VRRP child, checker child.
    pub keepalived_pids: [PathBuf; 3],
    /// The file the agent writes with HAProxy's health for keepalived (`0` healthy).
    pub track_file: PathBuf,
    /// keepalived's VRRP state as its notify scripts last wrote it.
    pub vrrp_state_file: PathBuf,
    /// Persistent state (backends.json, generated API certificate).
    pub state_dir: PathBuf,
    /// systemd drop-in directory (`/etc/systemd/system`).
    pub systemd_dir: PathBuf,
}

impl LbPaths {
    /// The appliance layout (matches Debian's haproxy and keepalived units).
    pub fn appliance() -> Self {
        LbPaths {
            haproxy_cfg: "/etc/haproxy/haproxy.cfg".into(),
            haproxy_pid: "/run/haproxy.pid".into(),
            admin_socket: "/run/haproxy/admin.sock".into(),
            keepalived_conf: "/etc/keepalived/keepalived.conf".into(),
            keepalived_pids: [
                "/run/keepalived.pid".into(),
                "/run/keepalived_vrrp.pid".into(),
                "/run/keepalived_checkers.pid".into(),
            ],
            track_file: "/run/capstan/lb/haproxy.state".into(),
            vrrp_state_file: "/run/capstan/lb/vrrp.state".into(),
            state_dir: "/var/lib/capstan/lb".into(),
            systemd_dir: "/etc/systemd/system".into(),
        }
    }

    /// Everything under one directory (tests, and two instances on one host).
    pub fn under(dir: &Path) -> Self {
        LbPaths {
            haproxy_cfg: dir.join("haproxy.cfg"),
            haproxy_pid: dir.join("haproxy.pid"),
            admin_socket: dir.join("admin.sock"),
            keepalived_conf: dir.join("keepalived.conf"),
            keepalived_pids: [
                dir.join("keepalived.pid"),
                dir.join("vrrp.pid"),
                dir.join("checkers.pid"),
            ],
            track_file: dir.join("haproxy.state"),
            vrrp_state_file: dir.join("vrrp.state"),
            state_dir: dir.join("state"),
            systemd_dir: dir.join("systemd"),
        }
    }

    /// The persisted backend set.
    pub fn backends_file(&self) -> PathBuf {
        self.state_dir.join("backends.json")
    }
}

/// Errors of [`render`] and [`check_rendered`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// A checker could not run.
    #[error("running {tool}")]
    Spawn {
        /// The tool.
        tool: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A checker refused a file.
    #[error("{tool} refused {path}: {output}")]
    Refused {
        /// The tool.
        tool: String,
        /// The file.
        path: PathBuf,
        /// What it said.
        output: String,
    },
}

/// The HAProxy configuration for `settings` with the backends of `set`.
pub fn haproxy_config(settings: &LbSettings, paths: &LbPaths, set: &DesiredSet) -> HaproxyConfig {
    debug_assert_eq!(set.slots().len(), SLOTS);
    HaproxyConfig {
        admin_socket: paths.admin_socket.clone(),
        // The Debian package creates the user.
        run_as: Some("haproxy".into()),
        frontend: SocketAddr::new(IpAddr::V4(settings.vip.addr), settings.port.get()),
        metrics: settings.metrics_listen,
        health: settings.health.clone(),
        slots: set.slots().to_vec(),
    }
}

/// The keepalived configuration for `settings`.
pub fn keepalived_config(
    settings: &LbSettings,
    paths: &LbPaths,
    node_label: &str,
) -> KeepalivedConfig {
    KeepalivedConfig {
        node_label: node_label.to_owned(),
        interface: settings.interface.clone(),
        vip: settings.vip,
        router_id: settings.vrrp.router_id,
        priority: settings.vrrp.priority,
        peers: settings.vrrp.peers.clone(),
        secret: settings.vrrp.secret.clone(),
        track_file: paths.track_file.clone(),
        state_file: paths.vrrp_state_file.clone(),
        haproxy_pidfile: paths.haproxy_pid.clone(),
    }
}

const HAPROXY_DROPIN: &str = "\
# Rendered by capstan-agent (lb role).
[Unit]
After=network-online.target

[Service]
# Come back quickly after a crash; keepalived holds the VIP on the peer meanwhile.
Restart=always
RestartSec=1s
";

const KEEPALIVED_DROPIN: &str = "\
# Rendered by capstan-agent (lb role).
[Unit]
After=haproxy.service

[Service]
RuntimeDirectory=capstan/lb
RuntimeDirectoryPreserve=yes
Restart=always
RestartSec=1s
";

/// Every file the role installs, at appliance paths ([`LbPaths::appliance`]), with the
/// backends of `settings` (at run time the persisted set takes their place).
pub fn render(settings: &LbSettings) -> Vec<RenderedFile> {
    render_at(
        settings,
        &LbPaths::appliance(),
        &DesiredSet::from_list(&settings.backends),
        "capstan-lb",
    )
}

/// [`render`] with explicit paths, backend set and node label.
pub fn render_at(
    settings: &LbSettings,
    paths: &LbPaths,
    set: &DesiredSet,
    node_label: &str,
) -> Vec<RenderedFile> {
    vec![
        RenderedFile {
            path: paths.haproxy_cfg.clone(),
            contents: haproxy_config(settings, paths, set).render(),
            mode: 0o644,
        },
        RenderedFile {
            path: paths.keepalived_conf.clone(),
            contents: keepalived_config(settings, paths, node_label).render(),
            mode: 0o600,
        },
        RenderedFile {
            path: paths.systemd_dir.join("haproxy.service.d/capstan.conf"),
            contents: HAPROXY_DROPIN.into(),
            mode: 0o644,
        },
        RenderedFile {
            path: paths.systemd_dir.join("keepalived.service.d/capstan.conf"),
            contents: KEEPALIVED_DROPIN.into(),
            mode: 0o644,
        },
    ]
}

/// The binaries the role runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// haproxy.
    pub haproxy: PathBuf,
    /// keepalived.
    pub keepalived: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Tools { haproxy: "/usr/sbin/haproxy".into(), keepalived: "/usr/sbin/keepalived".into() }
    }
}

fn run_check(tool: &Path, args: &[&std::ffi::OsStr], path: &Path) -> Result<(), RenderError> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|source| RenderError::Spawn { tool: tool.display().to_string(), source })?;
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stdout));
    Err(RenderError::Refused {
        tool: tool.display().to_string(),
        path: path.into(),
        output: output.trim().into(),
    })
}

/// `haproxy -c -f FILE`.
pub fn check_haproxy(tools: &Tools, file: &Path) -> Result<(), RenderError> {
    run_check(
        &tools.haproxy,
        &["-c".as_ref(), "-q".as_ref(), "-f".as_ref(), file.as_os_str()],
        file,
    )
}

/// `keepalived -t -f FILE`.
pub fn check_keepalived(tools: &Tools, file: &Path) -> Result<(), RenderError> {
    run_check(
        &tools.keepalived,
        &["-t".as_ref(), "-l".as_ref(), "-f".as_ref(), file.as_os_str()],
        file,
    )
}

/// Runs the checkers on the files of `render` written under `root`.
pub fn check_rendered(
    tools: &Tools,
    root: &Path,
    files: &[RenderedFile],
) -> Result<(), RenderError> {
    let paths = LbPaths::appliance();
    for f in files {
        let on_disk = root.join(f.path.strip_prefix("/").unwrap_or(&f.path));
        if f.path == paths.haproxy_cfg {
            check_haproxy(tools, &on_disk)?;
        } else if f.path == paths.keepalived_conf {
            check_keepalived(tools, &on_disk)?;
        }
    }
    Ok(())
}

/// The VRRP state of this node as `status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VrrpState {
    /// Holds the VIP (as keepalived reports it).
    Master,
    /// Ready to take over.
    Backup,
    /// HAProxy is down here: will not take the VIP.
    Fault,
    /// keepalived is not running (or stopping).
    Stopped,
    /// keepalived runs but has not reported a state yet.
    Starting,
}

/// One backend in `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackendStatus {
    /// IP:port.
    pub address: String,
    /// `ready` or `drain`.
    pub state: &'static str,
    /// HAProxy's status (`UP`, `DOWN`, …), when its socket answers.
    pub health: Option<String>,
    /// Last check result (`L7OK`, `L4CON`, …).
    pub check: Option<String>,
}

/// What `capstan-agent status` shows for the role.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LbStatus {
    /// VRRP state.
    pub vrrp: VrrpState,
    /// Whether this node holds the VIP.
    pub holds_vip: bool,
    /// Whether HAProxy's master process is alive.
    pub haproxy_running: bool,
    /// The persisted backend set with HAProxy's view.
    pub backends: Vec<BackendStatus>,
    /// Problems found while gathering the status.
    pub errors: Vec<String>,
}

/// Whether the process whose pid `pidfile` holds is alive (signal 0 reaches it).
pub(crate) fn pid_alive(pidfile: &Path) -> bool {
    let Some(pid) =
        std::fs::read_to_string(pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return false;
    };
    pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Whether the VIP is configured on `lb.interface` (in this network namespace), asked over
/// netlink. A missing interface holds nothing.
pub fn holds_vip(settings: &LbSettings) -> Result<bool, NetlinkError> {
    let vip = IpAddr::V4(settings.vip.addr);
    let addrs = netlink::link_addresses(settings.interface.as_str())?.unwrap_or_default();
    Ok(addrs.iter().any(|a| a.addr() == vip))
}

/// The name of the first NIC of this network namespace: the Ethernet-like link (one with a
/// MAC address) of the lowest index. Not `lo`, whose address is all zeros (keepalived refuses
/// a loopback interface for VRRP).
fn first_nic() -> Option<NicName> {
    let mut links = netlink::list_links().ok()?;
    links.retain(|l| l.mac.is_some_and(|m| m.0 != [0; 6]));
    links.sort_by_key(|l| l.index);
    links.into_iter().find_map(|l| l.name.parse().ok())
}

/// `settings` as the role runs them on this host: an unset `lb.interface`
/// ([`settings::UNSET_INTERFACE`] until now) that names no link here becomes the first NIC's
/// real name (`ens4` where udev names QEMU's NIC so). A given `lb.interface` is kept as is.
pub fn live_settings(mut settings: LbSettings) -> LbSettings {
    if settings.interface_given {
        return settings;
    }
    let exists = netlink::list_links()
        .map(|ls| ls.iter().any(|l| l.name == settings.interface.as_str()))
        .unwrap_or(true);
    if !exists {
        // Silent: `status` and every heartbeat come here too (the role logs it once at start).
        if let Some(nic) = first_nic() {
            settings.interface = nic;
        }
    }
    settings
}

/// Gathers the role's status. Never fails: what cannot be read is listed in `errors`.
pub fn status(settings: &LbSettings, paths: &LbPaths) -> LbStatus {
    let settings = &live_settings(settings.clone());
    let mut errors = Vec::new();
    let holds = holds_vip(settings).unwrap_or_else(|e| {
        errors.push(format!(
            "reading addresses of {}: {}",
            settings.interface,
            crate::error::chain(&e)
        ));
        false
    });
    let haproxy_running = pid_alive(&paths.haproxy_pid);
    let keepalived_running = pid_alive(&paths.keepalived_pids[0]);
    let reported = std::fs::read_to_string(&paths.vrrp_state_file).unwrap_or_default();
    let vrrp = if !keepalived_running {
        VrrpState::Stopped
    } else {
        match reported.trim() {
            "MASTER" => VrrpState::Master,
            "BACKUP" => VrrpState::Backup,
            "FAULT" => VrrpState::Fault,
            "STOP" => VrrpState::Stopped,
            // No transition yet: keepalived starts in BACKUP (or FAULT, if HAProxy is down).
            _ => VrrpState::Starting,
        }
    };
    if vrrp == VrrpState::Master && !holds {
        errors.push(format!(
            "keepalived reports MASTER but {} is not on {}",
            settings.vip.addr, settings.interface
        ));
    }
    let loaded = crate::root::Root::new("/")
        .map_err(state::StateError::from)
        .and_then(|root| DesiredSet::load(&root, &paths.backends_file()));
    let set = match loaded {
        Ok(Some(s)) => s,
        Ok(None) => DesiredSet::from_list(&settings.backends),
        Err(e) => {
            errors.push(crate::error::chain(&e));
            DesiredSet::default()
        }
    };
    let stats = match runtime::RuntimeApi::new(&paths.admin_socket).servers() {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(crate::error::chain(&e));
            None
        }
    };
    let backends = set
        .entries()
        .into_iter()
        .map(|e| {
            let name = haproxy::slot_name(e.slot);
            let st = stats.as_ref().and_then(|s| s.iter().find(|x| x.name == name));
            BackendStatus {
                address: e.backend.to_string(),
                state: if e.drain { "drain" } else { "ready" },
                health: st.map(|s| s.status.clone()),
                check: st.map(|s| s.check_status.clone()),
            }
        })
        .collect();
    LbStatus { vrrp, holds_vip: holds, haproxy_running, backends, errors }
}
