//! What `lab clone` reads on a VM's serial console: the agent's `CAPSTAN-FROZEN {json}` line
//! on the parent (`capstan-agent freeze`), its `CAPSTAN-REIDENTIFIED {json}` (or
//! `CAPSTAN-REIDENTIFY-REFUSED {json}`) line on a child, and the identity fields in them.
//! The format is the agent's (docs/instant-clone.md, "What the host observes"): a marker, a
//! space and one JSON object on one line, written to `/dev/console` with one `write`.

use serde_json::Value;

/// The parent is frozen: ready to be saved and forked.
pub const MARK_FROZEN: &str = "CAPSTAN-FROZEN";
/// A child finished re-identifying.
pub const MARK_REIDENTIFIED: &str = "CAPSTAN-REIDENTIFIED";
/// A child's steps after its re-identified line ended (daemons told of what was already
/// true: systemd-hostnamed, networkd).
pub const MARK_AFTER: &str = "CAPSTAN-REIDENTIFIED-AFTER";
/// A child refused its new identity (nothing applied).
pub const MARK_REFUSED: &str = "CAPSTAN-REIDENTIFY-REFUSED";

/// Where the JSON object starts (written as an escape so that brace-counting tools stay in
/// step).
const OPEN_BRACE: char = '\u{7b}';

/// A complete marker line seen on the console.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    /// Byte offset of the marker in the log.
    pub offset: usize,
    /// The JSON object after the marker (`None` when the line holds none).
    pub body: Option<Value>,
}

impl Mark {
    /// A number in the body.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.body.as_ref()?.get(key)?.as_f64().filter(|v| v.is_finite())
    }
}

/// The first complete (newline-terminated) line holding `marker` followed by a space or the
/// line's end. Text may precede the marker on its line (a journal prefix, another message
/// the console interleaved), and anything after the JSON object is ignored.
pub fn find_mark(log: &str, marker: &str) -> Option<Mark> {
    let mut from = 0;
    while let Some(pos) = log[from..].find(marker) {
        let at = from + pos;
        let rest = &log[at + marker.len()..];
        from = at + marker.len();
        // `CAPSTAN-FROZEN-X` is not `CAPSTAN-FROZEN`; a line still being written is not read.
        let end = rest.find('\n')?;
        let line = rest[..end].trim_end_matches('\r');
        if !(line.is_empty() || line.starts_with(' ')) {
            continue;
        }
        let body = line.find(OPEN_BRACE).and_then(|i| {
            serde_json::Deserializer::from_str(&line[i..]).into_iter::<Value>().next()?.ok()
        });
        return Some(Mark { offset: at, body: body.filter(Value::is_object) });
    }
    None
}

/// The identity fields `lab clone --json` reports per VM, read from the agent's status.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Identity {
    /// `/etc/machine-id`.
    pub machine_id: Option<String>,
    /// The hostname.
    pub hostname: Option<String>,
    /// `/proc/sys/kernel/random/boot_id`: the same in a child as in its parent.
    pub boot_id: Option<String>,
    /// SSH host key fingerprints.
    pub ssh_host_key_fingerprints: Vec<String>,
    /// The first NIC's MAC as the guest has it.
    pub mac: Option<String>,
    /// The first NIC's address.
    pub address: Option<String>,
}

/// Reads the identity from a status document: the `identity` object when there is one,
/// else top-level fields of the same names.
pub fn identity(status: &Value) -> Identity {
    let obj = status.get("identity").filter(|v| v.is_object()).unwrap_or(status);
    let text = |k: &str| obj.get(k).or_else(|| status.get(k)).and_then(text_of);
    let fingerprints = obj
        .get("ssh_host_key_fingerprints")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(text_of).collect())
        .unwrap_or_default();
    let address = text("address").or_else(|| {
        obj.get("addresses").and_then(Value::as_array).and_then(|a| a.first()).and_then(text_of)
    });
    Identity {
        machine_id: text("machine_id"),
        hostname: text("hostname"),
        boot_id: text("boot_id"),
        ssh_host_key_fingerprints: fingerprints,
        mac: text("mac"),
        address,
    }
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        // A fingerprint may come as {"type": "ed25519", "fingerprint": "SHA256:..."}.
        Value::Object(m) => m.get("fingerprint").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn marks_are_found_with_their_json() {
        let log = "[ 12.1] systemd[1]: x\r\nCAPSTAN-FROZEN {\"uptime_s\": 31.5, \"boot_id\": \"b\"}\r\nmore";
        let m = find_mark(log, MARK_FROZEN).unwrap();
        assert_eq!(m.number("uptime_s"), Some(31.5));
        assert_eq!(&log[m.offset..m.offset + 14], "CAPSTAN-FROZEN");
        let log = "[ 9.0] capstan-agent[7]: INFO x: CAPSTAN-REIDENTIFIED {\"reidentify_ms\":412}\u{1b}[0m\n";
        let r = find_mark(log, MARK_REIDENTIFIED).unwrap();
        assert_eq!(r.number("reidentify_ms"), Some(412.0));
        assert_eq!(find_mark("CAPSTAN-FROZEN\n", MARK_FROZEN).unwrap().body, None);
    }

    #[test]
    fn lookalikes_partial_lines_and_garbage_are_not_read() {
        assert!(find_mark("CAPSTAN-FROZEN-NOT {}\n", MARK_FROZEN).is_none());
        assert!(find_mark("nothing here\n", MARK_FROZEN).is_none());
        // still being written: no newline yet
        assert!(find_mark("CAPSTAN-FROZEN {\"uptime_s\": 3", MARK_FROZEN).is_none());
        let m = find_mark("CAPSTAN-FROZEN-X\nCAPSTAN-FROZEN {\"a\": tru\n", MARK_FROZEN).unwrap();
        assert_eq!((m.offset, m.body), (17, None));
        let m = find_mark("CAPSTAN-FROZEN [1, 2]\n", MARK_FROZEN).unwrap();
        assert_eq!(m.body, None, "only an object is a body");
        let m = find_mark("CAPSTAN-FROZEN {\"uptime_s\": \"NaN\"}\n", MARK_FROZEN).unwrap();
        assert_eq!(m.number("uptime_s"), None);
    }

    #[test]
    fn identity_comes_from_the_identity_object_or_the_top_level() {
        let st = json!({
            "hostname": "lb-c1",
            "identity": {
                "machine_id": "0123", "boot_id": "b-1", "mac": "52:54:00:c1:00:01",
                "addresses": ["10.0.2.21/24"],
                "ssh_host_key_fingerprints": ["SHA256:a", {"type": "rsa", "fingerprint": "SHA256:b"}, 7]
            }
        });
        let id = identity(&st);
        assert_eq!(id.hostname.as_deref(), Some("lb-c1"));
        assert_eq!(id.machine_id.as_deref(), Some("0123"));
        assert_eq!(id.address.as_deref(), Some("10.0.2.21/24"));
        assert_eq!(id.ssh_host_key_fingerprints, ["SHA256:a", "SHA256:b"]);
        assert_eq!(identity(&json!({"machine_id": "x"})).machine_id.as_deref(), Some("x"));
        assert_eq!(identity(&json!("not an object")), Identity::default());
    }
}
