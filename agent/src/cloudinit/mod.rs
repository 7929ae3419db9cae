//! Typed reading of what Cluster API vSphere (CAPV) hands a clone in cloud-init's formats:
//! the metadata document (`instance-id`, `local-hostname`, netplan v2 `network`) and the
//! `#cloud-config` subset that Cluster API's kubeadm bootstrap renders.
//!
//! Reading is lenient about keys (an unknown key is a warning, kept in `warnings` and logged) and
//! strict about values: a bad value is a [`CloudInitError`] naming the source and the key path,
//! e.g. `metadata: network.ethernets.id0.addresses[1]: invalid CIDR "10.0.0.300/24": ...`.
//! The text given here is already decoded (base64, gzip) and rendered (jinja) by the sources.

pub mod cabpk;
pub mod cloudconfig;
pub mod netplan;
pub mod netv1;
pub mod openstack;

use serde_yaml::Value;

pub use cloudconfig::{parse_cloud_config, CloudConfig, UserEntry};
use netplan::parse_network;

use crate::steps::NetworkConfig;
use crate::types::{Hostname, InstanceId};

/// A value in a cloud-init document that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {key}: {problem}")]
#[non_exhaustive]
pub struct CloudInitError {
    /// Which document: `metadata` or `userdata`.
    pub origin: &'static str,
    /// Key path, e.g. `write_files[2].encoding`; `(document)` for the whole text.
    pub key: String,
    /// What is wrong, including the offending value.
    pub problem: String,
}

impl CloudInitError {
    pub(crate) fn new(
        origin: &'static str,
        key: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        CloudInitError { origin, key: key.into(), problem: problem.into() }
    }
}

/// Largest document we parse (guestinfo values are at most 64 KiB; decoded gzip can be more).
pub const MAX_DOCUMENT_BYTES: usize = 4 << 20;

/// Parsing context: the document's name and the warnings collected so far.
#[derive(Debug)]
pub(crate) struct Cx {
    pub origin: &'static str,
    pub warnings: Vec<String>,
}

impl Cx {
    pub fn new(origin: &'static str) -> Self {
        Cx { origin, warnings: Vec::new() }
    }
    pub fn err(&self, key: impl Into<String>, problem: impl Into<String>) -> CloudInitError {
        CloudInitError::new(self.origin, key, problem)
    }
    pub fn warn(&mut self, key: &str, what: &str) {
        let w = format!("{}: {key}: {what}", self.origin);
        tracing::warn!("{w}");
        self.warnings.push(w);
    }

    /// Parses a YAML document that must be a mapping (an empty document is an empty mapping).
    pub fn document(&self, text: &str) -> Result<serde_yaml::Mapping, CloudInitError> {
        if text.len() > MAX_DOCUMENT_BYTES {
            return Err(self.err("(document)", format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
        }
        let v: Value = serde_yaml::from_str(text)
            .map_err(|e| self.err("(document)", format!("not valid YAML: {e}")))?;
        match v {
            Value::Mapping(m) => Ok(m),
            Value::Null => Ok(serde_yaml::Mapping::new()),
            other => {
                Err(self.err("(document)", format!("top level is {}, not a mapping", kind(&other))))
            }
        }
    }

    /// Iterates a mapping's entries with string keys, warning about the others.
    pub fn entries<'a>(
        &mut self,
        m: &'a serde_yaml::Mapping,
        path: &str,
    ) -> Vec<(String, &'a Value)> {
        let mut out = Vec::new();
        for (k, v) in m {
            match scalar_string(k) {
                Some(k) => out.push((k, v)),
                None => self.warn(path, &format!("ignored a {} key", kind(k))),
            }
        }
        out
    }

    pub fn mapping<'a>(
        &self,
        v: &'a Value,
        key: &str,
    ) -> Result<&'a serde_yaml::Mapping, CloudInitError> {
        match v {
            Value::Mapping(m) => Ok(m),
            other => Err(self.err(key, format!("expected a mapping, got {}", kind(other)))),
        }
    }

    pub fn string(&self, v: &Value, key: &str) -> Result<String, CloudInitError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(self.err(key, format!("expected a string, got {}", kind(other)))),
        }
    }

    /// A list of strings; a single string is taken as a one-item list.
    pub fn strings(&self, v: &Value, key: &str) -> Result<Vec<String>, CloudInitError> {
        match v {
            Value::Null => Ok(Vec::new()),
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(i, x)| self.string(x, &format!("{key}[{i}]")))
                .collect(),
            other => Ok(vec![self.string(other, key)?]),
        }
    }

    /// A boolean, also from cloud-init's YAML 1.1 words (`yes`, `on`, ...).
    pub fn boolean(&self, v: &Value, key: &str) -> Result<bool, CloudInitError> {
        match v {
            Value::Bool(b) => Ok(*b),
            Value::String(s) => crate::steps::network::parse_bool(s)
                .ok_or_else(|| self.err(key, format!("{s:?} is not true or false"))),
            other => Err(self.err(key, format!("expected true or false, got {}", kind(other)))),
        }
    }

    pub fn uint(&self, v: &Value, key: &str) -> Result<u32, CloudInitError> {
        let n = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        n.and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
            self.err(key, format!("expected a non-negative integer, got {}", show(v)))
        })
    }
}

pub(crate) fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A short rendering of a value for messages.
pub(crate) fn show(v: &Value) -> String {
    match scalar_string(v) {
        Some(s) if s.chars().count() <= 80 => format!("{s:?}"),
        Some(s) => format!("{:?}…", s.chars().take(80).collect::<String>()),
        None => kind(v).to_string(),
    }
}

/// The cloud-init metadata document (`guestinfo.metadata`).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Metadata {
    /// `instance-id`.
    pub instance_id: Option<InstanceId>,
    /// `local-hostname` (or `hostname`).
    pub local_hostname: Option<Hostname>,
    /// `network`, parsed and validated; `None` when absent or `config: disabled`.
    pub network: Option<NetworkConfig>,
    /// `public-keys` / `public_keys`: SSH keys for the default user.
    pub public_keys: Vec<String>,
    /// The whole document, for templates (`ds.meta_data.*`).
    pub raw: Value,
    /// Keys ignored and other remarks.
    pub warnings: Vec<String>,
}

/// Parses the metadata document (YAML or JSON).
pub fn parse_metadata(text: &str) -> Result<Metadata, CloudInitError> {
    let mut cx = Cx::new("metadata");
    let doc = cx.document(text)?;
    let mut md = Metadata { raw: Value::Mapping(doc.clone()), ..Metadata::default() };
    let encoding =
        doc.get("network.encoding").map(|v| cx.string(v, "network.encoding")).transpose()?;
    for (k, v) in cx.entries(&doc, "(document)") {
        match k.as_str() {
            "instance-id" | "instance_id" => {
                let s = cx.string(v, &k)?;
                md.instance_id = Some(s.trim().parse().map_err(|e| cx.err(&k, format!("{e}")))?);
            }
            "local-hostname" | "local_hostname" | "hostname" => {
                let s = cx.string(v, &k)?;
                let h: Hostname = s.trim().parse().map_err(|e| cx.err(&k, format!("{e}")))?;
                if k == "hostname" && md.local_hostname.is_some() {
                    continue;
                }
                md.local_hostname = Some(h);
            }
            "network" => {
                let decoded;
                let v = match (v, encoding.as_deref()) {
                    (Value::String(s), Some(enc)) => {
                        let e: crate::steps::Encoding =
                            enc.parse().map_err(|e| cx.err("network.encoding", format!("{e}")))?;
                        let bytes = crate::steps::files::decode(e, s)
                            .map_err(|e| cx.err("network", crate::error::chain(&e)))?;
                        let text = String::from_utf8(bytes)
                            .map_err(|_| cx.err("network", "decoded network is not UTF-8"))?;
                        decoded = Value::Mapping(
                            cx.document(&text).map_err(|e| cx.err("network", e.problem))?,
                        );
                        &decoded
                    }
                    (v, _) => v,
                };
                md.network = parse_network(v, &mut cx)?;
            }
            "public-keys" | "public_keys" => md.public_keys = cx.strings(v, &k)?,
            "network.encoding" | "wait-on-network" | "cleanup-guestinfo" | "availability-zone"
            | "region" => {}
            other => cx.warn(other, "unknown metadata key, ignored"),
        }
    }
    md.warnings = cx.warnings;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_basics() {
        let md = parse_metadata("instance-id: vm-1\nlocal-hostname: node-1\nfoo: 1\n").unwrap();
        assert_eq!(md.instance_id.unwrap().as_str(), "vm-1");
        assert_eq!(md.local_hostname.unwrap().as_str(), "node-1");
        assert_eq!(md.warnings.len(), 1);
        let e = parse_metadata("- a\n- b\n").unwrap_err().to_string();
        assert_eq!(e, "metadata: (document): top level is a list, not a mapping");
        let e = parse_metadata("local-hostname: bad_name\n").unwrap_err().to_string();
        assert!(e.starts_with("metadata: local-hostname: invalid hostname"), "{e}");
        let e = parse_metadata("instance-id: ../x\n").unwrap_err().to_string();
        assert!(e.starts_with("metadata: instance-id: invalid instance-id"), "{e}");
        assert!(
            parse_metadata("{\"instance-id\": \"j\"}").unwrap().instance_id.is_some(),
            "JSON too"
        );
    }

    #[test]
    fn encoded_network() {
        use base64::Engine as _;
        let net = "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n";
        let b = base64::engine::general_purpose::STANDARD.encode(net);
        let md = parse_metadata(&format!("network: {b}\nnetwork.encoding: base64\n")).unwrap();
        assert!(md.network.unwrap().nics[0].dhcp4);
        let e =
            parse_metadata("network: '!!'\nnetwork.encoding: base64\n").unwrap_err().to_string();
        assert!(e.starts_with("metadata: network: invalid base64"), "{e}");
    }
}
