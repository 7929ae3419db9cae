//! The short status the daemon publishes to `guestinfo.capstan.status` after each heartbeat,
//! so that vCenter and `govc vm.info -e` show a node's health without logging in to it or
//! asking the hub: compact JSON under [`MAX_STATUS`] bytes.
//!
//! ```json
//! {"state":"degraded","role":"lb","checks":{"haproxy":true,"vrrp":false},"seq":1764756000001,"hub":"ok"}
//! ```
//!
//! `state` is `healthy` when every check passes and `degraded` otherwise; `checks` maps each
//! check to whether it passed (only the failing ones, then only their count, when the map
//! would not fit); `hub` is the outcome of the heartbeat: `ok`, `refused NNN` or
//! `unreachable`.

use serde_json::{json, Map, Value};

use super::wire::Heartbeat;
use crate::guestinfo::{Guestinfo, GuestinfoError};

/// The guestinfo key (without `guestinfo.`).
pub const STATUS_KEY: &str = "capstan.status";

/// Longest status published, in bytes: well under what vCenter shows in one line.
pub const MAX_STATUS: usize = 1024;

/// How the hub took a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted (2xx).
    Accepted,
    /// Refused with this HTTP status.
    Refused(u16),
    /// Not reached (connection, TLS or timeout).
    Unreachable,
}

impl Outcome {
    fn as_text(self) -> String {
        match self {
            Outcome::Accepted => "ok".into(),
            Outcome::Refused(s) => format!("refused {s}"),
            Outcome::Unreachable => "unreachable".into(),
        }
    }
}

/// The short status of `hb` after `outcome`, at most [`MAX_STATUS`] bytes.
pub fn short_status(hb: &Heartbeat, outcome: Outcome) -> String {
    let state = if hb.checks_ok() { "healthy" } else { "degraded" };
    let render = |checks: Value| {
        json!({"state": state, "role": hb.role, "checks": checks, "seq": hb.seq,
               "hub": outcome.as_text()})
        .to_string()
    };
    let all: Map<String, Value> =
        hb.checks.iter().map(|c| (c.name.clone(), Value::Bool(c.ok))).collect();
    let out = render(Value::Object(all));
    if out.len() <= MAX_STATUS {
        return out;
    }
    let failing: Map<String, Value> =
        hb.checks.iter().filter(|c| !c.ok).map(|c| (c.name.clone(), Value::Bool(false))).collect();
    let out = render(Value::Object(failing));
    if out.len() <= MAX_STATUS {
        return out;
    }
    render(json!({"failing": hb.checks.iter().filter(|c| !c.ok).count()}))
}

/// Publishes the short status over `gi`. `Ok(false)` when the transport cannot write (fw_cfg):
/// the caller stops trying.
pub fn publish(
    gi: &dyn Guestinfo,
    hb: &Heartbeat,
    outcome: Outcome,
) -> Result<bool, GuestinfoError> {
    match gi.set(STATUS_KEY, &short_status(hb, outcome)) {
        Ok(()) => Ok(true),
        Err(GuestinfoError::ReadOnly(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::wire::{Check, MAX_CHECKS, MAX_SHORT};

    fn hb(checks: Vec<Check>) -> Heartbeat {
        let mut hb = Heartbeat::new("iid-1".parse().unwrap(), "lb-1".parse().unwrap(), "lb");
        hb.seq = 42;
        hb.checks = checks;
        hb
    }

    fn check(name: &str, ok: bool) -> Check {
        Check { name: name.into(), ok, detail: "d".repeat(200) }
    }

    #[test]
    fn status_is_compact_json_with_state_role_checks_seq_and_hub() {
        let s = short_status(
            &hb(vec![check("haproxy", true), check("vrrp", false)]),
            Outcome::Refused(403),
        );
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(
            v,
            json!({"state":"degraded","role":"lb","checks":{"haproxy":true,"vrrp":false},
                   "seq":42,"hub":"refused 403"})
        );
        let s = short_status(&hb(vec![check("haproxy", true)]), Outcome::Accepted);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!((v["state"].as_str(), v["hub"].as_str()), (Some("healthy"), Some("ok")), "{s}");
        assert!(!s.contains("ddd"), "details stay out: {s}");
    }

    #[test]
    fn the_bound_holds_for_the_largest_message_the_wire_allows() {
        let named = |i: usize, width: usize, ok| check(&format!("{i:0>width$}"), ok);
        let many: Vec<Check> = (0..MAX_CHECKS).map(|i| named(i, 40, i % 2 == 0)).collect();
        let s = short_status(&hb(many), Outcome::Unreachable);
        assert!(s.len() <= MAX_STATUS, "{}", s.len());
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["checks"].as_object().unwrap().len(), MAX_CHECKS / 2, "only the failing ones");
        let all_bad: Vec<Check> = (0..MAX_CHECKS).map(|i| named(i, MAX_SHORT, false)).collect();
        let s = short_status(&hb(all_bad), Outcome::Unreachable);
        assert!(s.len() <= MAX_STATUS);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["checks"], json!({"failing": MAX_CHECKS}));
        assert_eq!(v["hub"], "unreachable");
    }
}
