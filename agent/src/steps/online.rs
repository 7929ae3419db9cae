//! The `network-online` step, first of the final stage: wait, bounded, until some link has a
//! routable address, so that `runcmd` (`kubeadm join`) starts with a network.
//!
//! Why the agent waits itself rather than relying on `network-online.target`: the appliance
//! profiles mask `systemd-networkd-wait-online.service` (it waits for *every* managed link, two
//! minutes by default, so an unplugged second NIC would stall every boot), and then
//! `network-online.target` is reached at once. This step waits for *any* up link (not loopback)
//! with a global-scope IPv4 or IPv6 address, checked every 100 ms, for at most
//! [`DEFAULT_TIMEOUT`] (or `CAPSTAN_ONLINE_TIMEOUT` seconds). On timeout the step fails, naming
//! what it waited for, and the rest of the final stage still runs — as cloud-final runs after
//! wait-online timed out.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{Ctx, Outcome, StepError};

/// How long the step waits by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The environment variable that overrides [`DEFAULT_TIMEOUT`] (whole seconds).
pub const TIMEOUT_ENV: &str = "CAPSTAN_ONLINE_TIMEOUT";

/// True for an address other hosts can route to: not loopback, link-local, unspecified or
/// multicast (networkd's "routable": a global-scope address).
pub fn is_routable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (a.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// The first up, running, non-loopback link with a routable address: `(link, address)`.
pub fn routable_address() -> Option<(String, IpAddr)> {
    use nix::net::if_::InterfaceFlags as F;
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        if a.flags.contains(F::IFF_LOOPBACK) || !a.flags.contains(F::IFF_UP | F::IFF_RUNNING) {
            continue;
        }
        let Some(addr) = a.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if is_routable(ip) {
            return Some((a.interface_name, ip));
        }
    }
    None
}

/// True when the kernel has an IPv4 or IPv6 default route (`/proc/net/route`,
/// `/proc/net/ipv6_route`); reported in the detail, not waited for.
fn has_default_route() -> bool {
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let v4 = v4.lines().skip(1).any(|l| l.split_whitespace().nth(1) == Some("00000000"));
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    let v6 = v6.lines().any(|l| {
        let mut f = l.split_whitespace();
        f.next() == Some("00000000000000000000000000000000")
            && f.next() == Some("00")
            && f.nth(7).is_some_and(|dev| dev != "lo")
    });
    v4 || v6
}

/// The wait bound: `CAPSTAN_ONLINE_TIMEOUT` (seconds) when set and valid, else the default.
pub fn timeout() -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT)
}

pub(crate) fn step(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    if !ctx.live() {
        return Ok(Outcome::Skipped("not waited for under --root".into()));
    }
    let bound = timeout();
    let t = Instant::now();
    loop {
        if let Some((link, ip)) = routable_address() {
            return Ok(Outcome::Ok(format!(
                "routable after {:.1} s: {link} {ip}; default route: {}",
                t.elapsed().as_secs_f64(),
                if has_default_route() { "yes" } else { "no" }
            )));
        }
        if t.elapsed() >= bound {
            return Err(StepError::msg(format!(
                "no up link got a routable (global) address within {} s ({TIMEOUT_ENV} sets \
                 the bound); the final steps run anyway",
                bound.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routable_means_global_scope() {
        for a in ["10.0.2.15", "192.0.2.1", "2001:db8::1", "fd00::5"] {
            assert!(is_routable(a.parse().unwrap()), "{a}");
        }
        for a in ["127.0.0.1", "169.254.3.4", "0.0.0.0", "224.0.0.1", "::1", "fe80::1", "::"] {
            assert!(!is_routable(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn loopback_alone_is_not_online() {
        // In a fresh network namespace only `lo` exists (and is down): nothing is routable.
        // Without unshare rights (not root) the check is on the host, where it must not panic.
        let found = std::thread::spawn(|| {
            if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_ok() {
                Some(routable_address())
            } else {
                None
            }
        })
        .join()
        .unwrap();
        if let Some(found) = found {
            assert_eq!(found, None);
        }
    }
}
