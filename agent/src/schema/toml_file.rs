//! The TOML form of the configuration: baked defaults (`/etc/capstan/agent.toml`) and the
//! local override file. Tables nest the schema path: `[net.nic0] address = "10.0.0.10/24"`
//! is `net.nic0.address`. A top-level `version`, if present, must be 1.

use std::path::{Path, PathBuf};

use super::config::{FlatValue, Origin, Source};
use super::VERSION;

/// Why a TOML configuration file was refused as a whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TomlError {
    /// The file could not be read.
    #[error("{path}: cannot read")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML.
    #[error("{path}: not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (line and column included).
        message: String,
    },
    /// A value of a type the schema has no use for (a date, a table in an array, …).
    #[error("{path}: key {key}: {reason}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// `version` is not 1.
    #[error("{path}: version {found} is not supported (this agent reads version {VERSION})")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: String,
    },
}

/// The largest configuration file read (a generous bound on an operator-written file).
pub const MAX_TOML: u64 = 1024 * 1024;

/// Reads and flattens a TOML configuration file; `source` names it in origins (`defaults`,
/// `override`). A missing file is `Ok(None)`.
pub fn read_toml_file(
    path: &Path,
    source: Source,
) -> Result<Option<Vec<(String, FlatValue)>>, TomlError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(TomlError::Read { path: path.to_owned(), source }),
    };
    let mut text = String::new();
    file.take(MAX_TOML)
        .read_to_string(&mut text)
        .map_err(|source| TomlError::Read { path: path.to_owned(), source })?;
    flatten_toml(&text, path, source).map(Some)
}

/// Flattens TOML text into `(schema path, value)` pairs. Arrays become comma-separated lists
/// (newline-separated for `ssh.authorized-keys`).
pub fn flatten_toml(
    text: &str,
    path: &Path,
    source: Source,
) -> Result<Vec<(String, FlatValue)>, TomlError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| TomlError::Syntax {
        path: path.to_owned(),
        message: e.message().to_owned()
            + &e.span().map(|s| format!(" (at byte {})", s.start)).unwrap_or_default(),
    })?;
    let mut out = Vec::new();
    if let Some(v) = table.get("version") {
        if v.as_integer() != Some(i64::from(VERSION)) {
            return Err(TomlError::Version { path: path.to_owned(), found: v.to_string() });
        }
    }
    walk(&table, "", path, source, &mut out)?;
    Ok(out)
}

fn walk(
    table: &toml::Table,
    prefix: &str,
    path: &Path,
    source: Source,
    out: &mut Vec<(String, FlatValue)>,
) -> Result<(), TomlError> {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        if key == "version" {
            continue;
        }
        let err = |reason: &str| TomlError::Value {
            path: path.to_owned(),
            key: key.clone(),
            reason: reason.to_owned(),
        };
        let value = match v {
            toml::Value::Table(t) => {
                walk(t, &key, path, source, out)?;
                continue;
            }
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(_) => return Err(err("floating-point values are not used")),
            toml::Value::Datetime(_) => return Err(err("dates are not used")),
            toml::Value::Array(items) => {
                let mut parts = Vec::new();
                for it in items {
                    match it {
                        toml::Value::String(s) => parts.push(s.clone()),
                        toml::Value::Integer(i) => parts.push(i.to_string()),
                        _ => return Err(err("arrays may hold only strings and integers")),
                    }
                }
                let sep = if key == "ssh.authorized-keys" { "\n" } else { "," };
                parts.join(sep)
            }
        };
        out.push((
            key.clone(),
            FlatValue {
                value,
                origin: Origin { source, key: format!("{}: {key}", path.display()) },
            },
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nests_tables_into_paths() {
        let t = r#"
version = 1
hostname = "n1"
ntp.servers = ["a.example", "b.example"]
[net.nic0]
dhcp4 = false
address = "10.0.0.2/24"
mtu = 9000
[lb.vrrp]
priority = 150
"#;
        let flat = flatten_toml(t, Path::new("/etc/capstan/agent.toml"), Source::Defaults).unwrap();
        let get = |k: &str| flat.iter().find(|(p, _)| p == k).map(|(_, v)| v.value.clone());
        assert_eq!(get("hostname").as_deref(), Some("n1"));
        assert_eq!(get("ntp.servers").as_deref(), Some("a.example,b.example"));
        assert_eq!(get("net.nic0.dhcp4").as_deref(), Some("false"));
        assert_eq!(get("net.nic0.mtu").as_deref(), Some("9000"));
        assert_eq!(get("lb.vrrp.priority").as_deref(), Some("150"));
        assert!(get("version").is_none());
        let (_, v) = flat.iter().find(|(p, _)| p == "hostname").unwrap();
        assert_eq!(v.origin.key, "/etc/capstan/agent.toml: hostname");
    }

    #[test]
    fn refuses_bad_files() {
        let p = Path::new("x.toml");
        assert!(matches!(
            flatten_toml("version = 2", p, Source::Defaults),
            Err(TomlError::Version { .. })
        ));
        assert!(matches!(
            flatten_toml("hostname = ", p, Source::Defaults),
            Err(TomlError::Syntax { .. })
        ));
        let e = flatten_toml("net.nic0.mtu = 1.5", p, Source::Defaults).unwrap_err();
        assert!(e.to_string().contains("net.nic0.mtu"), "{e}");
    }
}
