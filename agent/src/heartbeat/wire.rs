//! The heartbeat message: versioned JSON, defined once for the agent (which sends it) and
//! `capstan-hub` (which parses it with [`parse`]).
//!
//! ```json
//! {"v":1,"instance_id":"iid-1","hostname":"lb-1","role":"lb","boot_id":"…","seq":17,
//!  "agent_version":"0.1.0","uptime_s":42,
//!  "host":{"load1":0.1,"mem_total":1024,"mem_available":512,"root_free":4096},
//!  "checks":[{"name":"haproxy","ok":true,"detail":"running"}],"sent_at":1764756000000}
//! ```
//!
//! `seq` strictly increases per node, across daemon restarts and reboots: the sender starts
//! it at its start time in Unix milliseconds, so a restarted agent continues upward and the hub
//! can reject any stale or replayed message with one comparison.

use serde::{Deserialize, Serialize};

use crate::types::{Hostname, InstanceId};

/// The only version this build speaks.
pub const VERSION: u32 = 1;
/// Largest message accepted, in bytes. A real one is well under 2 KiB.
pub const MAX_BYTES: usize = 16 * 1024;
/// Most checks in one message.
pub const MAX_CHECKS: usize = 32;
/// Longest short text field (role, boot id, version, check name).
pub const MAX_SHORT: usize = 64;
/// Longest check detail.
pub const MAX_DETAIL: usize = 256;

/// One heartbeat. Build it with [`Heartbeat::new`], read it with [`parse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The wire format version, [`VERSION`].
    pub v: u32,
    /// The VM instance (cloud-init's instance-id); the hub's key for the node.
    pub instance_id: InstanceId,
    /// The node's hostname.
    pub hostname: Hostname,
    /// The node's role (`lb`, `control-plane`, `worker`, …): the hub's group.
    pub role: String,
    /// The kernel's boot id: changes at every boot.
    pub boot_id: String,
    /// Strictly increasing per node (see the module docs).
    pub seq: u64,
    /// The sender's version.
    pub agent_version: String,
    /// Seconds since the host booted.
    pub uptime_s: u64,
    /// The VM's BIOS UUID (SMBIOS product UUID; how the hub's vSphere action finds the VM), or
    /// empty.
    #[serde(default)]
    pub bios_uuid: String,
    /// Host facts.
    pub host: HostFacts,
    /// The role's health checks; one that is not ok makes the node degraded.
    pub checks: Vec<Check>,
    /// When the message was sent, Unix milliseconds (informative: the hub judges by its own clock).
    pub sent_at: u64,
}

/// Host facts, from sysinfo.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFacts {
    /// One-minute load average.
    pub load1: f64,
    /// Memory, bytes.
    pub mem_total: u64,
    /// Memory available, bytes.
    pub mem_available: u64,
    /// Free bytes on the root filesystem.
    pub root_free: u64,
}

/// One role health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// What was checked (`haproxy`, `vrrp`, `backends`, `kubelet`).
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// A short human explanation.
    pub detail: String,
}

/// Why a message was refused. Every variant is the sender's fault (an HTTP 4xx).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Longer than [`MAX_BYTES`].
    #[error("heartbeat: {len} bytes, more than the {MAX_BYTES} allowed")]
    TooLarge {
        /// The size received.
        len: usize,
    },
    /// Not JSON, or not the shape of a heartbeat.
    #[error("heartbeat: {0}")]
    Malformed(String),
    /// A version this build does not speak.
    #[error("heartbeat: version {0} is not supported (this hub speaks {VERSION})")]
    UnknownVersion(u64),
    /// A field is out of its bounds.
    #[error("heartbeat: field {field}: {reason}")]
    Field {
        /// The JSON field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Heartbeat {
    /// A version-[`VERSION`] message with no checks, zero facts and `seq`/`sent_at` 0 (the
    /// sender sets those).
    pub fn new(instance_id: InstanceId, hostname: Hostname, role: &str) -> Self {
        Heartbeat {
            v: VERSION,
            instance_id,
            hostname,
            role: role.to_owned(),
            boot_id: String::new(),
            seq: 0,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: 0,
            bios_uuid: String::new(),
            host: HostFacts::default(),
            checks: Vec::new(),
            sent_at: 0,
        }
    }

    /// Whether every role check passed.
    pub fn checks_ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The JSON text.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn validate(&self) -> Result<(), WireError> {
        short("role", &self.role, 1)?;
        short("boot_id", &self.boot_id, 0)?;
        short("agent_version", &self.agent_version, 0)?;
        short("bios_uuid", &self.bios_uuid, 0)?;
        if self.checks.len() > MAX_CHECKS {
            return Err(field(
                "checks",
                format!("{} checks, at most {MAX_CHECKS}", self.checks.len()),
            ));
        }
        for c in &self.checks {
            short("checks.name", &c.name, 1)?;
            text("checks.detail", &c.detail, 0, MAX_DETAIL)?;
        }
        let h = &self.host;
        if !h.load1.is_finite() || h.load1 < 0.0 {
            return Err(field("host.load1", format!("{} is not a load average", h.load1)));
        }
        if h.mem_available > h.mem_total {
            return Err(field("host.mem_available", "more than host.mem_total".into()));
        }
        Ok(())
    }
}

fn field(field: &'static str, reason: String) -> WireError {
    WireError::Field { field, reason }
}

fn short(name: &'static str, s: &str, min: usize) -> Result<(), WireError> {
    text(name, s, min, MAX_SHORT)
}

fn text(name: &'static str, s: &str, min: usize, max: usize) -> Result<(), WireError> {
    if s.len() < min {
        return Err(field(name, "empty".into()));
    }
    if s.len() > max {
        return Err(field(name, format!("{} bytes, at most {max}", s.len())));
    }
    if s.chars().any(char::is_control) {
        return Err(field(name, "contains control characters".into()));
    }
    Ok(())
}

/// Only the version, read first so that a future message gets "unknown version", not a
/// confusing complaint about its fields.
#[derive(Deserialize)]
struct Probe {
    v: Option<serde_json::Value>,
}

/// Parses one message strictly: size limit first, then the version, then the fields
/// (unknown fields refused), then their bounds.
pub fn parse(bytes: &[u8]) -> Result<Heartbeat, WireError> {
    if bytes.len() > MAX_BYTES {
        return Err(WireError::TooLarge { len: bytes.len() });
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    match probe.v {
        None => return Err(field("v", "missing".into())),
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => return Err(WireError::UnknownVersion(v)),
            None => return Err(field("v", format!("{n} is not a version number"))),
        },
        Some(other) => return Err(field("v", format!("{other} is not a version number"))),
    }
    let hb: Heartbeat =
        serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    hb.validate()?;
    Ok(hb)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Heartbeat {
        let mut hb = Heartbeat::new("iid-1".parse().unwrap(), "lb-1".parse().unwrap(), "lb");
        hb.boot_id = "b7c3".into();
        hb.seq = 17;
        hb.uptime_s = 42;
        hb.host = HostFacts { load1: 0.5, mem_total: 1024, mem_available: 512, root_free: 9 };
        hb.checks.push(Check { name: "haproxy".into(), ok: true, detail: "running".into() });
        hb.sent_at = 1_764_756_000_000;
        hb
    }

    #[test]
    fn round_trips() {
        let hb = sample();
        assert_eq!(parse(&hb.to_json()).unwrap(), hb);
    }

    #[test]
    fn the_documented_example_parses() {
        let doc = r#"{"v":1,"instance_id":"iid-1","hostname":"lb-1","role":"lb","boot_id":"x",
            "seq":17,"agent_version":"0.1.0","uptime_s":42,
            "host":{"load1":0.1,"mem_total":1024,"mem_available":512,"root_free":4096},
            "checks":[{"name":"haproxy","ok":true,"detail":"running"}],"sent_at":1764756000000}"#;
        let hb = parse(doc.as_bytes()).unwrap();
        assert_eq!((hb.instance_id.as_str(), hb.seq, hb.checks_ok()), ("iid-1", 17, true));
    }

    fn with(f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v = serde_json::to_value(sample()).unwrap();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn hostile_messages_are_refused_with_the_field_named() {
        let err = |b: &[u8]| parse(b).unwrap_err().to_string();
        assert!(err(b"").contains("EOF"), "{}", err(b""));
        assert!(err(b"[1]").contains("heartbeat"));
        assert_eq!(parse(&with(|v| v["v"] = 2.into())).unwrap_err(), WireError::UnknownVersion(2));
        assert!(err(&with(|v| v["v"] = "1".into())).contains("field v"));
        assert!(err(&with(|v| {
            v.as_object_mut().unwrap().remove("v");
        }))
        .contains("field v: missing"));
        assert!(err(&with(|v| v["extra"] = 1.into())).contains("unknown field `extra`"));
        assert!(err(&with(|v| v["instance_id"] = "a/b".into())).contains("instance-id"));
        assert!(err(&with(|v| v["instance_id"] = "".into())).contains("instance-id"));
        assert!(err(&with(|v| v["hostname"] = "-bad-".into())).contains("hostname"));
        assert!(err(&with(|v| v["role"] = "".into())).contains("field role: empty"));
        assert!(err(&with(|v| v["role"] = "x".repeat(65).into())).contains("at most 64"));
        assert!(err(&with(|v| v["boot_id"] = "a\u{7}b".into())).contains("control"));
        assert!(err(&with(|v| v["host"]["load1"] = (-1.0).into())).contains("host.load1"));
        assert!(
            err(&with(|v| v["host"]["mem_available"] = 4096.into())).contains("host.mem_available")
        );
        let many: Vec<_> = (0..33)
            .map(|i| serde_json::json!({"name": format!("c{i}"), "ok": true, "detail": ""}))
            .collect();
        assert!(err(&with(|v| v["checks"] = many.into())).contains("33 checks"));
        assert!(err(&with(|v| v["checks"][0]["detail"] = "d".repeat(257).into()))
            .contains("checks.detail"));
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let big = vec![b' '; MAX_BYTES + 1];
        assert_eq!(parse(&big).unwrap_err(), WireError::TooLarge { len: MAX_BYTES + 1 });
    }

    #[test]
    fn a_negative_seq_is_malformed() {
        let e = parse(&with(|v| v["seq"] = (-1).into())).unwrap_err();
        assert!(matches!(e, WireError::Malformed(ref m) if m.contains("invalid value")), "{e}");
    }
}
