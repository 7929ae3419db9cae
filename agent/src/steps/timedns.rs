//! DNS (systemd-resolved drop-in) and NTP (systemd-timesyncd drop-in).

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Ctx, Outcome, StepError};
use crate::root::FileOpts;
use crate::systemd::{self, Systemd as _};
use crate::types::Hostname;

/// Global DNS settings, written to `/etc/systemd/resolved.conf.d/capstan.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Name servers.
    #[serde(default)]
    pub nameservers: Vec<IpAddr>,
    /// Search domains.
    #[serde(default)]
    pub search: Vec<Hostname>,
}

/// NTP settings (cloud-config `ntp`), written to `/etc/systemd/timesyncd.conf.d/capstan.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ntp {
    /// `false` removes our drop-in and leaves timesyncd as the image has it.
    #[serde(default = "super::yes")]
    pub enabled: bool,
    /// Servers (host names or addresses).
    #[serde(default)]
    pub servers: Vec<NtpServer>,
    /// Pools (host names); timesyncd treats them like servers.
    #[serde(default)]
    pub pools: Vec<NtpServer>,
}

/// An NTP server: a host name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NtpServer {
    /// By address.
    Addr(IpAddr),
    /// By name.
    Name(Hostname),
}

impl std::fmt::Display for NtpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NtpServer::Addr(a) => write!(f, "{a}"),
            NtpServer::Name(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for NtpServer {
    type Err = crate::types::ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<IpAddr>() {
            Ok(a) => Ok(NtpServer::Addr(a)),
            Err(_) => s.parse().map(NtpServer::Name),
        }
    }
}

const HEADER: &str = "# Written by capstan-agent firstboot; changes are overwritten.\n";
const RESOLVED: &str = "/etc/systemd/resolved.conf.d/capstan.conf";
const TIMESYNCD: &str = "/etc/systemd/timesyncd.conf.d/capstan.conf";

/// Renders the resolved drop-in, `None` when there is nothing to say.
pub fn render_resolved(dns: &Dns) -> Option<String> {
    if dns.nameservers.is_empty() && dns.search.is_empty() {
        return None;
    }
    let mut s = format!("{HEADER}[Resolve]\n");
    if !dns.nameservers.is_empty() {
        let v: Vec<String> = dns.nameservers.iter().map(ToString::to_string).collect();
        let _ = writeln!(s, "DNS={}", v.join(" "));
    }
    if !dns.search.is_empty() {
        let v: Vec<&str> = dns.search.iter().map(Hostname::as_str).collect();
        let _ = writeln!(s, "Domains={}", v.join(" "));
    }
    Some(s)
}

/// Renders the timesyncd drop-in, `None` when NTP is disabled or lists no server.
pub fn render_timesyncd(ntp: &Ntp) -> Option<String> {
    if !ntp.enabled || (ntp.servers.is_empty() && ntp.pools.is_empty()) {
        return None;
    }
    let v: Vec<String> = ntp.servers.iter().chain(&ntp.pools).map(ToString::to_string).collect();
    Some(format!("{HEADER}[Time]\nNTP={}\n", v.join(" ")))
}

/// Writes `content` to `path`, or removes our file when `None`; reports what changed.
pub(crate) fn converge(
    ctx: &Ctx<'_>,
    path: &str,
    content: Option<String>,
) -> Result<String, StepError> {
    converge_mode(ctx, path, content, 0o644)
}

/// [`converge`] for a file with another mode than 0644.
pub(crate) fn converge_mode(
    ctx: &Ctx<'_>,
    path: &str,
    content: Option<String>,
    mode: u32,
) -> Result<String, StepError> {
    let old = ctx.root.read(path).map_err(|e| StepError::wrap(format!("read {path}"), e))?;
    match content {
        Some(c) if old.as_deref() == Some(c.as_bytes()) => Ok(format!("{path} unchanged")),
        Some(c) => {
            ctx.root
                .write(path, c.as_bytes(), FileOpts::mode(mode))
                .map_err(|e| StepError::wrap(format!("write {path}"), e))?;
            Ok(format!("wrote {path}"))
        }
        None => {
            let removed =
                ctx.root.remove(path).map_err(|e| StepError::wrap(format!("remove {path}"), e))?;
            Ok(if removed { format!("removed {path}") } else { "nothing to configure".into() })
        }
    }
}

/// Live only: restarts a unit whose drop-in changed, if it runs (`try-reload-or-restart`
/// leaves a stopped unit stopped). Returns what to add to the step's detail.
fn reload(ctx: &Ctx<'_>, unit: &str, did: &str) -> String {
    if !ctx.live() || did.ends_with("unchanged") || did == "nothing to configure" {
        return did.to_owned();
    }
    // the unit reads the file: apply what is staged now
    if let Err(e) = ctx.root.flush_staged() {
        return format!("{did}; {unit} not reloaded ({})", crate::error::chain(&e));
    }
    if !systemd::unit_running(unit) {
        // try-reload-or-restart leaves a stopped unit stopped: nothing to ask systemd
        return format!("{did}; {unit} not running, not reloaded");
    }
    let reloaded = systemd::block_on(|| async {
        systemd::SystemBus::connect().await?.try_reload_or_restart(unit).await
    });
    match reloaded {
        Ok(()) => format!("{did}; {unit} reloaded"),
        Err(e) => {
            tracing::debug!(unit, error = %crate::error::chain(&e), "try-reload-or-restart");
            format!("{did}; {unit} not reloaded (systemd not reachable)")
        }
    }
}

pub(crate) fn dns(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    let r = converge(ctx, RESOLVED, render_resolved(&ctx.plan.dns))?;
    if r == "nothing to configure" {
        return Ok(Outcome::Skipped("no global DNS given".into()));
    }
    Ok(Outcome::Ok(reload(ctx, "systemd-resolved", &r)))
}

pub(crate) fn ntp(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    let Some(ntp) = &ctx.plan.ntp else {
        return Ok(Outcome::Skipped("no ntp settings; timesyncd defaults apply".into()));
    };
    let r = converge(ctx, TIMESYNCD, render_timesyncd(ntp))?;
    Ok(Outcome::Ok(reload(ctx, "systemd-timesyncd", &r)))
}
