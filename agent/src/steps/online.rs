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

/// True when the kernel has an IPv4 or IPv6 default route (`route`, `ipv6_route` in
/// `/proc/thread-self/net`: this thread's network namespace); reported in the detail, not
/// waited for.
fn has_default_route() -> bool {
    let v4 = std::fs::read_to_string("/proc/thread-self/net/route").unwrap_or_default();
    let v4 = v4.lines().skip(1).any(|l| l.split_whitespace().nth(1) == Some("00000000"));
    let v6 = std::fs::read_to_string("/proc/thread-self/net/ipv6_route").unwrap_or_default();
    let v6 = v6.lines().any(|l| {
        let mut f = l.split_whitespace();
        f.next() == Some("00000000000000000000000000000000")
            && f.next() == Some("00")
            && f.nth(7).is_some_and(|dev| dev != "lo")
    });
    v4 || v6
}

/// The wait bound: `CAPSTAN_ONLINE_TIMEOUT` (seconds) when set, else the default. A value that
/// is not whole seconds is logged (naming the variable) and the default is used: a typo in a
/// unit drop-in must not stop the final stage.
pub fn timeout() -> Duration {
    let value = std::env::var(TIMEOUT_ENV).ok();
    parse_timeout(value.as_deref()).unwrap_or_else(|e| {
        tracing::warn!("{e}; waiting the default {} s", DEFAULT_TIMEOUT.as_secs());
        DEFAULT_TIMEOUT
    })
}

/// [`timeout`]'s parsing: `None` (unset) is the default.
pub fn parse_timeout(value: Option<&str>) -> Result<Duration, String> {
    match value {
        None => Ok(DEFAULT_TIMEOUT),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("{TIMEOUT_ENV}={v:?} is not a whole number of seconds")),
    }
}

pub(crate) fn step(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    if !ctx.live() {
        return Ok(Outcome::Skipped("not waited for under --root".into()));
    }
    wait_online(timeout()).map(Outcome::Ok).map_err(StepError::msg)
}

/// Waits at most `bound` for [`routable_address`]; the detail, or why it gave up.
pub fn wait_online(bound: Duration) -> Result<String, String> {
    let t = Instant::now();
    loop {
        if let Some((link, ip)) = routable_address() {
            return Ok(format!(
                "routable after {:.1} s: {link} {ip}; default route: {}",
                t.elapsed().as_secs_f64(),
                if has_default_route() { "yes" } else { "no" }
            ));
        }
        if t.elapsed() >= bound {
            return Err(format!(
                "no up link got a routable (global) address within {} s ({TIMEOUT_ENV} sets \
                 the bound); the final steps run anyway",
                bound.as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_values_are_whole_seconds_and_bad_ones_are_named() {
        assert_eq!(parse_timeout(None), Ok(DEFAULT_TIMEOUT));
        assert_eq!(parse_timeout(Some(" 5 ")), Ok(Duration::from_secs(5)));
        for bad in ["", "1.5", "-1", "10s", "99999999999999999999999"] {
            let e = parse_timeout(Some(bad)).unwrap_err();
            assert!(e.contains(TIMEOUT_ENV) && e.contains(&format!("{bad:?}")), "{e}");
        }
    }

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
    fn waits_for_a_routable_address_in_a_network_namespace() {
        // A fresh network namespace (this thread only; `ip` children inherit it): only `lo`.
        let r = std::thread::spawn(|| -> Option<(Result<String, String>, Duration, String)> {
            if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                return None; // not root: covered by the lab boot test
            }
            let ip = |args: &str| {
                let o = std::process::Command::new("ip")
                    .args(args.split(' '))
                    .output()
                    .expect("`ip` (iproute2) is required for this test");
                assert!(o.status.success(), "ip {args}: {}", String::from_utf8_lossy(&o.stderr));
            };
            ip("link set lo up");
            let t = Instant::now();
            let none = wait_online(Duration::from_millis(300));
            let waited = t.elapsed();
            assert!(none.is_err(), "{none:?}");
            ip("link add cap0 type veth peer name cap1");
            ip("addr add 192.0.2.5/24 dev cap0");
            ip("link set cap1 up");
            ip("link set cap0 up");
            let found = wait_online(Duration::from_secs(5)).unwrap();
            ip("route add default via 192.0.2.1");
            let routed = wait_online(Duration::from_secs(5)).unwrap();
            assert!(routed.contains("default route: yes"), "{routed}");
            Some((none, waited, found))
        })
        .join()
        .unwrap();
        if let Some((none, waited, found)) = r {
            let e = none.unwrap_err();
            assert!(e.contains("within 0.3 s") && e.contains(TIMEOUT_ENV), "{e}");
            assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(3));
            assert!(
                found.contains("cap0 192.0.2.5") && found.contains("default route: no"),
                "{found}"
            );
        }
    }
}
