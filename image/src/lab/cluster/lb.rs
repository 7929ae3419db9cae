//! The lab's side of the lb appliances: their settings (guestinfo `capstan.*` keys: the VIP,
//! unicast VRRP between the pair, the API token) and their backend API, which the lab calls
//! as Cluster API's load-balancer provider would, from inside the cluster's namespace with
//! `curl` (the token from a 0600 header file, never on a command line).
//!
//! The appliances' API certificates are self-signed on first boot (`lb.api.cert` unset), so
//! the lab does not verify them (`curl -k`); the namespace holds no one else.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::net;
use super::plan::{LB_API_PORT, PREFIX};

/// The guestinfo keys of lb appliance `index` (0 is preferred: the higher VRRP priority).
pub fn settings(
    index: u32,
    vip: Ipv4Addr,
    peer: Ipv4Addr,
    vrrp_secret: &str,
    api_token: &str,
) -> Vec<(String, String)> {
    let priority = if index == 0 { "110" } else { "100" };
    [
        ("capstan.role", "lb".to_owned()),
        ("capstan.lb.vip", format!("{vip}/{PREFIX}")),
        ("capstan.lb.vrrp.peers", peer.to_string()),
        ("capstan.lb.vrrp.priority", priority.to_owned()),
        ("capstan.lb.vrrp.secret", vrrp_secret.to_owned()),
        ("capstan.lb.api.token", api_token.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn curl(
    netns: &str,
    header: &Path,
    method: &str,
    url: &str,
    body: Option<&str>,
) -> anyhow::Result<String> {
    let mut c = net::command_in(netns, "curl");
    c.args(["-sS", "-k", "--max-time", "10", "--fail-with-body", "-X", method])
        .arg("-H")
        .arg(format!("@{}", header.display()))
        .args(["-H", "Content-Type: application/json"]);
    if let Some(b) = body {
        c.args(["-d", b]);
    }
    c.arg(url);
    run(c, &format!("{method} {url}"))
}

fn run(mut c: Command, what: &str) -> anyhow::Result<String> {
    let out = c
        .output()
        .with_context(|| format!("lb API {what}: starting curl (Debian package curl)"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("lb API {what}: {} {}", text.trim(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(text)
}

fn base(lb: Ipv4Addr) -> String {
    format!("https://{lb}:{LB_API_PORT}/v1/backends")
}

/// Waits until appliance `lb` answers `GET /v1/backends`.
pub fn wait_api(netns: &str, header: &Path, lb: Ipv4Addr, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        match curl(netns, header, "GET", &base(lb), None) {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() > timeout => {
                return Err(e.context(format!(
                    "lb appliance {lb}: API not answering after {}s",
                    timeout.as_secs()
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Adds `backend` to appliance `lb` (`POST /v1/backends`).
pub fn add_backend(
    netns: &str,
    header: &Path,
    lb: Ipv4Addr,
    backend: SocketAddr,
) -> anyhow::Result<()> {
    let body = serde_json::json!({ "address": backend.to_string() }).to_string();
    curl(netns, header, "POST", &base(lb), Some(&body)).map(drop)
}

/// Removes `backend` from appliance `lb` (`DELETE /v1/backends/IP:port`).
pub fn remove_backend(
    netns: &str,
    header: &Path,
    lb: Ipv4Addr,
    backend: SocketAddr,
) -> anyhow::Result<()> {
    curl(netns, header, "DELETE", &format!("{}/{backend}", base(lb)), None).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_agent::roles::lb::settings::check_key;

    #[test]
    fn the_agent_accepts_every_setting() {
        let s = settings(
            0,
            Ipv4Addr::new(10, 77, 0, 10),
            Ipv4Addr::new(10, 77, 0, 12),
            "s3cr3t99",
            "a".repeat(32).as_str(),
        );
        for (k, v) in &s {
            let key = k.strip_prefix("capstan.").unwrap();
            if key == "role" {
                continue;
            }
            match check_key(key, v) {
                Some(Ok(())) => {}
                other => panic!("{key}={v}: {other:?}"),
            }
        }
        assert!(s.iter().any(|(k, v)| k == "capstan.lb.vrrp.priority" && v == "110"));
    }
}
