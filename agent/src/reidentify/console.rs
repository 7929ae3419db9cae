//! What a frozen parent and a re-identified child say on the console, for the host to read
//! (the lab reads the serial console; see `docs/instant-clone.md`): one line each, a marker
//! and one JSON object, written with a single `write` so other console output cannot split
//! it.

use std::io::Write as _;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::root::Root;
use crate::state::State;

/// The line a parent prints once it is ready to be forked: `CAPSTAN-FROZEN {json}`.
pub const FROZEN_MARK: &str = "CAPSTAN-FROZEN";
/// The line a child prints once it is the new instance: `CAPSTAN-REIDENTIFIED {json}`.
pub const REIDENTIFIED_MARK: &str = "CAPSTAN-REIDENTIFIED";
/// The line a child prints once the steps after the re-identified line ended (daemons told
/// of what was already true): `CAPSTAN-REIDENTIFIED-AFTER {json}`.
pub const AFTER_MARK: &str = "CAPSTAN-REIDENTIFIED-AFTER";
/// The line a child prints when the new identity was refused (nothing applied).
pub const REFUSED_MARK: &str = "CAPSTAN-REIDENTIFY-REFUSED";

/// Who this machine is right now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// The recorded instance-id.
    pub instance_id: Option<String>,
    /// `/etc/machine-id`.
    pub machine_id: Option<String>,
    /// The kernel's host name (live), else `/etc/hostname`.
    pub hostname: Option<String>,
    /// The kernel's boot id: a clone keeps its parent's (it did not boot).
    pub boot_id: Option<String>,
    /// Seconds since boot (continuous across a fork).
    pub uptime_s: Option<f64>,
    /// `SHA256:...` of each `/etc/ssh/ssh_host_*_key.pub`, sorted.
    pub ssh_host_key_fingerprints: Vec<String>,
    /// The MAC of the first Ethernet link with an IPv4 address (live only).
    pub mac: Option<String>,
    /// That address, with its prefix length.
    pub address: Option<String>,
}

/// OpenSSH's fingerprint of a public key line: `SHA256:` and the unpadded base64 of the
/// SHA-256 of the key blob.
pub fn fingerprint(line: &str) -> Option<String> {
    let blob = line.split_whitespace().nth(1)?;
    let raw = base64::engine::general_purpose::STANDARD.decode(blob).ok()?;
    let d = ring::digest::digest(&ring::digest::SHA256, &raw);
    Some(format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(d)))
}

fn trimmed(s: Option<String>) -> Option<String> {
    s.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Reads the facts (files through `root`; the kernel's name, boot id, uptime and links only
/// when `live`). Never fails: what cannot be read is left out.
pub fn facts(root: &Root, live: bool) -> Facts {
    let mut f = Facts {
        instance_id: State::new(root.clone()).current_instance().ok().flatten(),
        machine_id: trimmed(root.read_string("/etc/machine-id").ok().flatten()),
        ..Facts::default()
    };
    let mut fps: Vec<String> = root
        .list("/etc/ssh")
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with("ssh_host_") && n.ends_with("_key.pub"))
        .filter_map(|n| root.read_string(format!("/etc/ssh/{n}")).ok().flatten())
        .filter_map(|l| fingerprint(&l))
        .collect();
    fps.sort();
    f.ssh_host_key_fingerprints = fps;
    if !live {
        f.hostname = trimmed(root.read_string("/etc/hostname").ok().flatten());
        return f;
    }
    f.hostname = nix::unistd::gethostname().ok().and_then(|s| s.into_string().ok());
    f.boot_id = trimmed(std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok());
    f.uptime_s = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|u| u.parse().ok()));
    if let Some((mac, addr)) = first_address() {
        f.mac = Some(mac);
        f.address = Some(addr);
    }
    f
}

/// The first link (by index) with a MAC and a global IPv4 address.
fn first_address() -> Option<(String, String)> {
    let mut links = crate::steps::netlink::list_links().ok()?;
    links.sort_by_key(|l| l.index);
    links.into_iter().filter(|l| l.mac.is_some()).find_map(|l| {
        let addrs = crate::steps::netlink::link_addresses(&l.name).ok()??;
        let a = addrs.into_iter().find(|a| match a.addr() {
            std::net::IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_loopback(),
            std::net::IpAddr::V6(_) => false,
        })?;
        Some((l.mac?.to_string(), a.to_string()))
    })
}

/// The line for `mark` and `body`, newline-terminated.
pub fn line(mark: &str, body: &serde_json::Value) -> String {
    format!("{mark} {}\n", serde_json::to_string(body).unwrap_or_else(|_| "{}".into()))
}

/// Writes the line to the console (`/dev/console`; under a root, the file `DIR/dev/console`,
/// created) and logs it. A console that cannot be written is logged, not fatal.
pub fn emit(root: &Root, live: bool, mark: &str, body: &serde_json::Value) {
    let text = line(mark, body);
    tracing::info!("{}", text.trim_end());
    let path = match root.resolve("/dev/console") {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("console: {}", crate::error::chain(&e));
            return;
        }
    };
    if !live {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
    }
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(!live)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        tracing::warn!("writing {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_openssh_s() {
        // ssh-keygen -l -E sha256 of this key prints SHA256:... (checked in tests/reidentify.rs)
        let line =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        let fp = fingerprint(line).unwrap();
        assert!(fp.starts_with("SHA256:"));
        assert_eq!(fp.len(), "SHA256:".len() + 43);
        assert_eq!(fingerprint("ssh-ed25519"), None);
        assert_eq!(fingerprint("ssh-ed25519 !!!"), None);
    }

    #[test]
    fn a_line_is_one_line() {
        let l = line(FROZEN_MARK, &serde_json::json!({"hostname": "a\nb"}));
        assert_eq!(l.matches('\n').count(), 1);
        assert!(l.starts_with("CAPSTAN-FROZEN {"));
    }
}
