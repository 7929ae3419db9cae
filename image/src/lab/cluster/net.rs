//! The cluster's private L2: a network namespace `capstan-<name>` holding a bridge `br0`
//! (with the plan's bridge address, the namespace side of the host's forwarded port) and one
//! tap per VM enslaved to it. QEMU runs inside the namespace (`ip netns exec`), so nothing of
//! the cluster, VRRP adverts included, ever touches a host interface.
//!
//! Done with iproute2 (`ip`, its JSON output for reading): the tool an operator checks with.
//! [`delete`] is idempotent: it ends the processes still in the namespace (by pid; they are
//! the cluster's QEMUs and forwarder), then removes the namespace, which takes the bridge and
//! taps with it.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::exec;

/// The bridge's name inside the namespace.
pub const BRIDGE: &str = "br0";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    exec::run(Command::new("ip").args(args)).context("iproute2 (Debian package iproute2)")
}

fn ip_json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = exec::output(Command::new("ip").arg("-j").args(args))?;
    if out.trim().is_empty() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_str(&out).with_context(|| format!("ip -j {}: not JSON", args.join(" ")))
}

/// Whether the namespace exists.
pub fn exists(ns: &str) -> anyhow::Result<bool> {
    let list = ip_json(&["netns", "list"])?;
    Ok(list.as_array().into_iter().flatten().any(|n| n["name"] == ns))
}

/// Creates the namespace with `lo` up and the bridge holding `bridge_ip/prefix`.
pub fn create(ns: &str, bridge_ip: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
    if exists(ns)? {
        bail!("network namespace {ns} exists already (delete the cluster first)");
    }
    ip(&["netns", "add", ns])?;
    let r = (|| {
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", ns, "addr", "add", &format!("{bridge_ip}/{prefix}"), "dev", BRIDGE])?;
        ip(&["-n", ns, "link", "set", BRIDGE, "up"])
    })();
    if r.is_err() {
        let _ = ip(&["netns", "del", ns]);
    }
    r
}

/// Adds a tap device enslaved to the bridge (QEMU opens it by name: `ifname=`).
pub fn add_tap(ns: &str, tap: &str) -> anyhow::Result<()> {
    ip(&["-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"])?;
    ip(&["-n", ns, "link", "set", tap, "master", BRIDGE, "up"])
}

/// Removes a tap (nothing when it is gone already).
pub fn del_tap(ns: &str, tap: &str) -> anyhow::Result<()> {
    if links(ns)?.iter().any(|l| l == tap) {
        ip(&["-n", ns, "link", "del", tap])?;
    }
    Ok(())
}

/// The namespace's links by name (`ip -j link`).
pub fn links(ns: &str) -> anyhow::Result<Vec<String>> {
    let v = ip_json(&["-n", ns, "link", "show"])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect())
}

/// The pids of the processes in the namespace (`ip netns pids`).
pub fn pids(ns: &str) -> anyhow::Result<Vec<i32>> {
    let out = exec::output(Command::new("ip").args(["netns", "pids", ns]))?;
    Ok(out.split_whitespace().filter_map(|p| p.parse().ok()).collect())
}

/// Ends the processes in the namespace (SIGTERM, SIGKILL after `grace`) and removes it.
/// Nothing to do when it does not exist.
pub fn delete(ns: &str, grace: Duration) -> anyhow::Result<()> {
    if !exists(ns)? {
        return Ok(());
    }
    let signal = |sig| {
        for pid in pids(ns).unwrap_or_default() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    };
    signal(nix::sys::signal::Signal::SIGTERM);
    let started = Instant::now();
    while !pids(ns)?.is_empty() {
        if started.elapsed() > grace {
            signal(nix::sys::signal::Signal::SIGKILL);
        }
        if started.elapsed() > grace + Duration::from_secs(5) {
            bail!("processes {:?} in namespace {ns} do not end", pids(ns)?);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ip(&["netns", "del", ns])
}

/// `ip netns exec NS` followed by `program`: a command that runs inside the namespace (with
/// the same pid: `ip` execs it).
pub fn command_in(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    /// Removes the test's namespace however the test ends.
    pub(crate) struct NsGuard(pub String);
    impl Drop for NsGuard {
        fn drop(&mut self) {
            let _ = delete(&self.0, Duration::from_secs(1));
        }
    }

    /// Real namespaces: needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) as the lab does.
    #[test]
    fn create_tap_and_delete_leaves_nothing() {
        let ns = format!("capstan-test-{}", std::process::id());
        let _ = delete(&ns, Duration::from_secs(1));
        let _guard = NsGuard(ns.clone());
        create(&ns, Ipv4Addr::new(10, 77, 0, 1), 24).unwrap();
        assert!(create(&ns, Ipv4Addr::new(10, 77, 0, 1), 24)
            .unwrap_err()
            .to_string()
            .contains("exists already"));
        add_tap(&ns, "tap-cp-0").unwrap();
        add_tap(&ns, "tap-w-0").unwrap();
        let link = ip_json(&["-n", &ns, "link", "show", "tap-cp-0"]).unwrap();
        assert_eq!(link[0]["master"], BRIDGE, "{link}");
        let addr = ip_json(&["-n", &ns, "addr", "show", BRIDGE]).unwrap();
        let a = &addr[0]["addr_info"];
        assert!(
            a.as_array().unwrap().iter().any(|i| i["local"] == "10.77.0.1" && i["prefixlen"] == 24),
            "{addr}"
        );
        // nothing on the host: the taps and bridge live in the namespace only
        let host = ip_json(&["link", "show"]).unwrap();
        assert!(!host.to_string().contains("tap-cp-0"));
        del_tap(&ns, "tap-w-0").unwrap();
        del_tap(&ns, "tap-w-0").unwrap();
        assert_eq!(links(&ns).unwrap().iter().filter(|l| l.starts_with("tap-")).count(), 1);
        // a process in the namespace is ended by delete
        let mut sleeper = command_in(&ns, "sleep").arg("300").spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids(&ns).unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(pids(&ns).unwrap(), [i32::try_from(sleeper.id()).unwrap()]);
        delete(&ns, Duration::from_secs(2)).unwrap();
        assert_eq!(sleeper.wait().unwrap().signal(), Some(15), "ended by SIGTERM");
        assert!(!exists(&ns).unwrap());
        assert!(!std::path::Path::new("/run/netns").join(&ns).exists());
        delete(&ns, Duration::from_secs(1)).unwrap();
    }
}
