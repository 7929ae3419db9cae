//! Telling running services about the new identity: sshd, systemd-networkd and
//! systemd-hostnamed, never by spawning `systemctl`, `networkctl` or `hostnamectl`.
//!
//! What a clone's identity needs before it counts as re-identified is on the critical path
//! and cheap: sshd gets `SIGHUP` from the agent itself (its main process, found in its unit's
//! cgroup), the links get their MAC and addresses over netlink ([`network`]), and a DHCP
//! node's networkd is restarted (its lease is the identity). What only keeps a daemon's view
//! in step is told over D-Bus *after* the `CAPSTAN-REIDENTIFIED` line ([`DEFERRED`], run by
//! `reidentify::run` on a thread of its own): systemd-hostnamed (it reads `/etc/hostname` and
//! the kernel's name on demand; the call only fires its `PropertiesChanged` signal) and
//! networkd's `Reload` + `ReconfigureLink` for static addresses (already on the links).

use std::path::Path;

use crate::steps::netlink::{self, NETWORKD_UNIT};
use crate::steps::{Ctx, Outcome, StepError, StepId};
use crate::systemd::{self, SystemBus, Systemd as _};

/// Where the system bus listens; without it there is nothing to tell.
const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";

/// sshd's unit names (Debian's `ssh.service`, its `sshd.service` alias elsewhere).
const SSHD_UNITS: &[&str] = &["ssh.service", "sshd.service"];

/// Where systemd puts a system service's processes (cgroup v2, Debian 12's default).
const CGROUP_SYSTEM: &str = "/sys/fs/cgroup/system.slice";

/// The steps `reidentify::run` runs after the re-identified line, in this order.
pub const DEFERRED: &[StepId] = &[StepId::Hostnamed, StepId::NetworkdReload];

fn bus_error(what: &str) -> impl FnOnce(systemd::SystemdError) -> StepError + '_ {
    move |e| StepError::wrap(what.to_owned(), e)
}

/// The `hostnamed` step (deferred): the new host name through systemd-hostnamed, so its
/// watchers hear of it (the `hostname` step wrote `/etc/hostname` and set the kernel's name;
/// hostnamed finds them equal).
pub(crate) fn hostnamed(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    let Some(h) = &ctx.plan.hostname else {
        return Ok(Outcome::Skipped("no hostname given".into()));
    };
    if !ctx.live() {
        return Ok(Outcome::Skipped("not under --root".into()));
    }
    if !Path::new(SYSTEM_BUS).exists() {
        return Ok(Outcome::Skipped(format!("no system bus ({SYSTEM_BUS})")));
    }
    let short = h.short().to_owned();
    systemd::block_on(|| async { SystemBus::connect().await?.set_hostname(&short).await })
        .map_err(bus_error("tell systemd-hostnamed"))?;
    Ok(Outcome::Ok(format!("systemd-hostnamed: static and transient name {short}")))
}

/// The main process of a running `unit`: the process of its cgroup whose parent is PID 1 and
/// whose name is `comm` (a service's forks, such as sshd's per-connection children, are not).
pub fn main_pid(cgroup_dir: &Path, proc_dir: &Path, comm: &str) -> Option<i32> {
    let procs = std::fs::read_to_string(cgroup_dir.join("cgroup.procs")).ok()?;
    procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()).find(|pid| {
        let stat =
            std::fs::read_to_string(proc_dir.join(format!("{pid}/stat"))).unwrap_or_default();
        // pid (comm) state ppid ...: comm may hold spaces and parentheses, so after the last ')'
        let Some((head, rest)) = stat.rsplit_once(')') else { return false };
        let name = head.split_once('(').map(|(_, n)| n).unwrap_or_default();
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok());
        name == comm && ppid == Some(1)
    })
}

/// The `sshd-reload` step: a running sshd reads its host keys at start and on `SIGHUP` (it
/// re-executes itself), so its main process gets `SIGHUP` once the new keys are in place,
/// which is what the unit's `ExecReload` sends (without its `sshd -t` check: only the host
/// keys changed, and they were just written whole). Where the main process is not found, the
/// unit is reloaded over D-Bus and the step waits for the job.
pub(crate) fn sshd_reload(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    if ctx.plan.ssh_host_key_types.is_empty() {
        return Ok(Outcome::Skipped("host keys left alone".into()));
    }
    if !ctx.live() {
        return Ok(Outcome::Skipped("not under --root".into()));
    }
    let Some(unit) = SSHD_UNITS.iter().find(|u| systemd::unit_running(u)) else {
        return Ok(Outcome::Skipped("sshd not running".into()));
    };
    let cgroup = Path::new(CGROUP_SYSTEM).join(unit);
    if let Some(pid) = main_pid(&cgroup, Path::new("/proc"), "sshd") {
        use nix::sys::signal::{kill, Signal};
        kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP)
            .map_err(|e| StepError::wrap(format!("SIGHUP to sshd (pid {pid}, {unit})"), e))?;
        return Ok(Outcome::Ok(format!(
            "SIGHUP to {unit}'s sshd (pid {pid}): it re-executes and serves the new host keys"
        )));
    }
    systemd::block_on(|| async { SystemBus::connect().await?.reload(unit).await })
        .map_err(bus_error("reload sshd"))?;
    Ok(Outcome::Ok(format!(
        "reloaded {unit} over D-Bus (no main process found in {})",
        cgroup.display()
    )))
}

fn dhcp(ctx: &Ctx<'_>) -> bool {
    ctx.plan.network.nics.iter().any(|n| n.dhcp4 || n.dhcp6)
}

/// The `network-live` step of a clone: the links converged over netlink (a NIC whose MAC no
/// link has takes over the link bearing its name: [`netlink::apply_adopting`]): the new MAC,
/// the new addresses and routes, the parent's gone. When a NIC uses DHCP, networkd is
/// restarted here, because its DHCP client identifier (DUID) derives from the machine-id it
/// read at start, and a clone must not ask for its parent's lease; with static addresses,
/// networkd is told after the re-identified line ([`networkd_reload`]).
pub(crate) fn network(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    let cfg = &ctx.plan.network;
    if cfg.nics.is_empty() {
        return Ok(Outcome::Skipped("no network configuration".into()));
    }
    if !ctx.live() {
        return Ok(Outcome::Skipped("netlink and networkd not done under --root".into()));
    }
    cfg.validate("network").map_err(|e| StepError::wrap("invalid network configuration", e))?;
    let report = netlink::apply_adopting(cfg)
        .map_err(|e| StepError::wrap("apply network over netlink", e))?;
    let mut detail = report.lines.join("; ");
    if !report.missing.is_empty() {
        detail.push_str(&format!("; no link for {}", report.missing.join(", ")));
    }
    if !dhcp(ctx) {
        return Ok(Outcome::Ok(detail));
    }
    if !systemd::unit_running(NETWORKD_UNIT) {
        detail.push_str("; networkd not running");
        return Ok(Outcome::Ok(detail));
    }
    systemd::block_on(|| async { SystemBus::connect().await?.restart(NETWORKD_UNIT).await })
        .map_err(bus_error("restart systemd-networkd"))?;
    detail.push_str("; networkd restarted (new DHCP client id from the new machine-id)");
    Ok(Outcome::Ok(detail))
}

/// The `networkd-reload` step (deferred): networkd reads the files the `network` step wrote
/// (`Manager.Reload`) and reconfigures each of the plan's links (`ReconfigureLink`), so its
/// view matches what `network-live` set. Not with DHCP (`network-live` restarted it).
pub(crate) fn networkd_reload(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    let cfg = &ctx.plan.network;
    if cfg.nics.is_empty() {
        return Ok(Outcome::Skipped("no network configuration".into()));
    }
    if !ctx.live() {
        return Ok(Outcome::Skipped("not under --root".into()));
    }
    if dhcp(ctx) {
        return Ok(Outcome::Skipped("networkd was restarted by network-live (DHCP)".into()));
    }
    if !systemd::unit_running(NETWORKD_UNIT) {
        return Ok(Outcome::Skipped("networkd not running".into()));
    }
    let links = netlink::list_links().map_err(|e| StepError::wrap("list links", e))?;
    let indices: Vec<i32> = links
        .iter()
        .filter(|l| {
            cfg.nics.iter().any(|n| {
                n.final_name().is_some_and(|f| f.to_string() == l.name)
                    || (n.mac.is_some() && n.mac == l.mac)
            })
        })
        .filter_map(|l| i32::try_from(l.index).ok())
        .collect();
    systemd::block_on(|| async {
        let bus = SystemBus::connect().await?;
        bus.networkd_reload().await?;
        for i in &indices {
            bus.networkd_reconfigure(*i).await?;
        }
        Ok(())
    })
    .map_err(bus_error("tell systemd-networkd"))?;
    Ok(Outcome::Ok(format!("networkd reloaded, {} link(s) reconfigured", indices.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_process_is_the_one_pid_1_started() {
        let d = tempfile::tempdir().unwrap();
        let (cg, proc) = (d.path().join("ssh.service"), d.path().join("proc"));
        std::fs::create_dir_all(&cg).unwrap();
        let stat = |pid: i32, comm: &str, ppid: i32| {
            std::fs::create_dir_all(proc.join(pid.to_string())).unwrap();
            std::fs::write(
                proc.join(format!("{pid}/stat")),
                format!("{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 0 0"),
            )
            .unwrap();
        };
        // a pre-auth child first, then the listener, then a helper with a hostile name
        stat(812, "sshd", 640);
        stat(640, "sshd", 1);
        stat(900, "x) S 1 (sshd", 1);
        std::fs::write(cg.join("cgroup.procs"), "812\n900\n640\n").unwrap();
        assert_eq!(main_pid(&cg, &proc, "sshd"), Some(640));
        assert_eq!(main_pid(&cg, &proc, "haproxy"), None);
        std::fs::write(cg.join("cgroup.procs"), "812\n").unwrap();
        assert_eq!(main_pid(&cg, &proc, "sshd"), None, "no listener: no guess");
        assert_eq!(main_pid(&d.path().join("none"), &proc, "sshd"), None);
    }
}
