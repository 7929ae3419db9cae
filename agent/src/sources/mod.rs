//! Configuration sources, merged by precedence (lowest first):
//!
//! 1. baked defaults `/etc/capstan/agent.toml`;
//! 2. the OVF environment (`--ovf-env FILE`, a CD-ROM labelled `OVF ENV`, or `guestinfo.ovfEnv`);
//! 3. cloud-init VMware datasource keys `guestinfo.metadata` / `userdata` / `vendordata`;
//! 4. direct keys `guestinfo.capstan.<path>`;
//! 5. the local override file `/etc/capstan/agent.override.toml`.
//!
//! Every value keeps its [`Origin`] (source and key). A value that cannot be read or decoded
//! is reported as a [`SourceError`] naming the source and key and is left out; it never
//! aborts the gathering of the others.
//!
//! The network comes whole from one place: the metadata's netplan `network` unless a
//! higher-precedence source (direct guestinfo, override file) sets any `net.*` key; otherwise
//! the `net.*` keys merged key by key.

pub mod encoding;
pub mod iso9660;
pub mod jinja;
mod ovfenv;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::guestinfo::{DirGuestinfo, FwCfg, Guestinfo, GuestinfoError};
use crate::schema::{self, all_concrete_paths, Config, FlatValue, Origin};
use crate::types::InstanceId;
use encoding::{DecodeError, Encoding};

pub use ovfenv::{find_ovf_cdrom, read_ovf_env_cdrom, OVF_ENV_NAMES};

/// Baked defaults, relative to the root.
pub const DEFAULTS_FILE: &str = "etc/capstan/agent.toml";
/// Operator override, relative to the root.
pub const OVERRIDE_FILE: &str = "etc/capstan/agent.override.toml";

/// Where to look.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// The root for the TOML files (`/` on a live system, `--root DIR` in tests).
    pub root: PathBuf,
    /// Whether we run against the live system (probe CD-ROMs, fw_cfg, the VMware backdoor,
    /// the SMBIOS UUID). False under `--root`.
    pub live: bool,
    /// `--ovf-env FILE`.
    pub ovf_env_file: Option<PathBuf>,
    /// `--guestinfo-dir DIR`.
    pub guestinfo_dir: Option<PathBuf>,
    /// `/dev` (for the CD-ROM scan).
    pub dev_dir: PathBuf,
    /// `/sys` (fw_cfg and DMI).
    pub sys_dir: PathBuf,
}

impl SourceOptions {
    /// Options for `--root`: files under `root`, no live probing.
    pub fn rooted(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self {
            dev_dir: root.join("dev"),
            sys_dir: root.join("sys"),
            root,
            live: false,
            ovf_env_file: None,
            guestinfo_dir: None,
        }
    }

    /// Options for the live system.
    pub fn live() -> Self {
        Self {
            root: PathBuf::from("/"),
            live: true,
            ovf_env_file: None,
            guestinfo_dir: None,
            dev_dir: PathBuf::from("/dev"),
            sys_dir: PathBuf::from("/sys"),
        }
    }
}

/// A value that could not be used, naming the source and key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{source_name} key {key}: {reason}")]
pub struct SourceError {
    /// The source (`guestinfo-dir`, `ovf-env`, `defaults`, …).
    pub source_name: String,
    /// The key (`guestinfo.userdata`, `capstan.net.nic0.address`, a file path).
    pub key: String,
    /// The cause, with its chain.
    pub reason: String,
}

impl SourceError {
    fn new(source: &str, key: &str, err: &dyn std::error::Error) -> Self {
        Self { source_name: source.to_owned(), key: key.to_owned(), reason: chain(err) }
    }
}

/// `err: cause: cause` in one line.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A source that was consulted, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceReport {
    /// `defaults`, `ovf-env`, `metadata`, `userdata`, `vendordata`, `guestinfo`, `override`.
    pub name: String,
    /// Where it was read from (a path, a device, a transport).
    pub location: String,
    /// How many settings it contributed.
    pub values: usize,
}

/// Everything gathered for one run of the agent.
#[derive(Debug)]
pub struct Gathered {
    /// The merged flat values (after the network rule).
    pub flat: schema::Flat,
    /// The typed configuration.
    pub config: Config,
    /// The instance id and where it came from.
    pub instance_id: InstanceId,
    /// Its origin.
    pub instance_id_origin: Origin,
    /// The sources that were present.
    pub sources: Vec<SourceReport>,
    /// Values that were refused while reading the sources.
    pub errors: Vec<SourceError>,
    /// The decoded metadata mapping (`network` decoded too), when present.
    pub metadata: Option<Map<String, Value>>,
    /// The metadata as YAML text (decoded), for the cloud-init parser.
    pub metadata_text: Option<String>,
    /// The decoded, jinja-rendered user-data (`#cloud-config …`).
    pub userdata: Option<String>,
    /// The decoded vendor-data.
    pub vendordata: Option<String>,
    /// The guestinfo transport used, for scrubbing consumed secrets.
    pub guestinfo: Option<Box<dyn Guestinfo>>,
    /// guestinfo keys that held secrets and were consumed (to scrub after use).
    pub secret_keys: Vec<String>,
}

impl Gathered {
    /// True when any value was refused (by a source or by the schema).
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty() || !self.config.errors.is_empty()
    }

    /// Every refusal as one line each, sources first.
    pub fn error_lines(&self) -> Vec<String> {
        self.errors
            .iter()
            .map(ToString::to_string)
            .chain(self.config.errors.iter().map(ToString::to_string))
            .collect()
    }

    /// Overwrites consumed secrets in guestinfo where the transport allows it (as Ignition and
    /// cloud-init's `redact` do): values become `---`, encodings empty. Returns what failed
    /// (fw_cfg is read-only; vSphere 8.0U3 refuses writes to cloud-init keys unless
    /// `guest_rpc.auth.cloud-init.set = FALSE`).
    pub fn scrub_secrets(&self) -> Vec<SourceError> {
        let Some(gi) = &self.guestinfo else {
            return Vec::new();
        };
        let mut failed = Vec::new();
        for key in &self.secret_keys {
            let res = gi.set(key, encoding::EMPTY_YAML_VALUE).and_then(|()| {
                if matches!(key.as_str(), "userdata" | "vendordata" | "metadata") {
                    gi.set(&format!("{key}.encoding"), "")
                } else {
                    Ok(())
                }
            });
            if let Err(e) = res {
                failed.push(SourceError::new(gi.transport(), &format!("guestinfo.{key}"), &e));
            }
        }
        failed
    }
}

type Layer = Vec<(String, FlatValue)>;

fn fv(value: impl Into<String>, source: &str, key: impl Into<String>) -> FlatValue {
    FlatValue { value: value.into(), origin: Origin { source: source.to_owned(), key: key.into() } }
}

/// Picks the guestinfo transport: `--guestinfo-dir`, else (live only) fw_cfg when QEMU passed
/// keys, else the VMware backdoor when the CPU says VMware.
pub fn guestinfo_transport(opts: &SourceOptions) -> Option<Box<dyn Guestinfo>> {
    if let Some(d) = &opts.guestinfo_dir {
        return Some(Box::new(DirGuestinfo::new(d)));
    }
    if !opts.live {
        return None;
    }
    let fw = FwCfg::new(opts.sys_dir.join("firmware/qemu_fw_cfg/by_name/opt/capstan/guestinfo"));
    if fw.is_present() {
        return Some(Box::new(fw));
    }
    match crate::guestinfo::backdoor::Backdoor::probe() {
        Ok(b) => {
            tracing::debug!(access = ?b.access(), "VMware backdoor available");
            Some(Box::new(b))
        }
        Err(GuestinfoError::NotVmware) => None,
        Err(e) => {
            tracing::warn!(error = %chain(&e), "VMware backdoor unavailable");
            None
        }
    }
}

/// Reads every source and merges them. Never fails: what cannot be read is in
/// [`Gathered::errors`].
pub fn gather(opts: &SourceOptions) -> Gathered {
    let gi = guestinfo_transport(opts);
    gather_with(opts, gi)
}

/// [`gather`] with an explicit guestinfo transport.
pub fn gather_with(opts: &SourceOptions, gi: Option<Box<dyn Guestinfo>>) -> Gathered {
    let mut errors = Vec::new();
    let mut reports = Vec::new();
    let mut secret_keys = Vec::new();
    let gi_name = gi.as_ref().map_or("guestinfo", |g| g.transport());

    // 1. Baked defaults.
    let defaults = read_toml_layer(opts, DEFAULTS_FILE, "defaults", &mut errors, &mut reports);

    // 2. OVF environment.
    let (ovf_layer, ovf_vcenter_id) =
        ovfenv::read_layer(opts, gi.as_deref(), &mut errors, &mut reports);

    // 3. cloud-init metadata / userdata / vendordata.
    let mut meta_layer: Layer = Vec::new();
    let mut metadata = None;
    let mut metadata_text = None;
    let mut userdata = None;
    let mut vendordata = None;
    if let Some(g) = gi.as_deref() {
        if let Some(text) = read_encoded(g, "metadata", &mut errors) {
            match parse_metadata(&text) {
                Ok(mut map) => {
                    decode_metadata_network(&mut map, g.transport(), &mut errors);
                    if let Some(Value::String(id)) = map.get("instance-id") {
                        meta_layer.push((
                            "instance-id".into(),
                            fv(id.clone(), "metadata", "instance-id"),
                        ));
                    }
                    if let Some(Value::String(h)) = map.get("local-hostname") {
                        meta_layer
                            .push(("hostname".into(), fv(h.clone(), "metadata", "local-hostname")));
                    }
                    if let Some(Value::Array(redact)) = map.get("redact") {
                        for k in redact.iter().filter_map(Value::as_str) {
                            let k = k.strip_prefix("guestinfo.").unwrap_or(k);
                            if crate::guestinfo::check_key(k).is_ok() {
                                secret_keys.push(k.to_owned());
                            }
                        }
                    }
                    reports.push(SourceReport {
                        name: "metadata".into(),
                        location: format!("{} guestinfo.metadata", g.transport()),
                        values: meta_layer.len(),
                    });
                    metadata_text = serde_yaml::to_string(&map).ok();
                    metadata = Some(map);
                }
                Err(reason) => errors.push(SourceError {
                    source_name: g.transport().into(),
                    key: "guestinfo.metadata".into(),
                    reason,
                }),
            }
        }
        if let Some(text) = read_encoded(g, "userdata", &mut errors) {
            // User-data carries bootstrap tokens and keys: scrub it after use.
            secret_keys.push("userdata".into());
            reports.push(SourceReport {
                name: "userdata".into(),
                location: format!("{} guestinfo.userdata", g.transport()),
                values: 0,
            });
            userdata = Some(text);
        }
        if let Some(text) = read_encoded(g, "vendordata", &mut errors) {
            reports.push(SourceReport {
                name: "vendordata".into(),
                location: format!("{} guestinfo.vendordata", g.transport()),
                values: 0,
            });
            vendordata = Some(text);
        }
    }

    // 4. Direct guestinfo.capstan.* keys.
    let mut direct: Layer = Vec::new();
    if let Some(g) = gi.as_deref() {
        // A transport that can list its keys is asked only for those it has.
        let listed = g.keys();
        for path in all_concrete_paths() {
            let key = format!("{}{path}", schema::KEY_PREFIX);
            if listed.as_ref().is_some_and(|keys| !keys.contains(&key)) {
                continue;
            }
            match g.get(&key) {
                Ok(Some(v)) if v.len() > encoding::GUESTINFO_VALUE_LIMIT => {
                    errors.push(SourceError::new(
                        gi_name,
                        &format!("guestinfo.{key}"),
                        &DecodeError::TooLarge {
                            len: v.len(),
                            limit: encoding::GUESTINFO_VALUE_LIMIT,
                        },
                    ));
                }
                Ok(Some(v)) if !encoding::is_empty_value(v.as_bytes()) => {
                    if schema::lookup(&path).is_some_and(|s| s.secret) {
                        secret_keys.push(key.clone());
                    }
                    direct.push((path, fv(v, gi_name, format!("guestinfo.{key}"))));
                }
                Ok(_) => {}
                Err(e) => errors.push(SourceError::new(gi_name, &format!("guestinfo.{key}"), &e)),
            }
        }
        if !direct.is_empty() {
            reports.push(SourceReport {
                name: "guestinfo".into(),
                location: format!("{gi_name} guestinfo.capstan.*"),
                values: direct.len(),
            });
        }
    }

    // 5. Override file.
    let overrides = read_toml_layer(opts, OVERRIDE_FILE, "override", &mut errors, &mut reports);

    // The network rule: metadata's netplan wins unless a higher source sets net.*.
    let has_net =
        |l: &Layer| l.iter().any(|(p, v)| p.starts_with("net.") && !v.value.trim().is_empty());
    let metadata_network =
        metadata.as_ref().is_some_and(|m| m.get("network").is_some_and(|n| !n.is_null()))
            && !has_net(&direct)
            && !has_net(&overrides);

    let mut flat: schema::Flat = BTreeMap::new();
    for layer in [defaults, ovf_layer, meta_layer, direct, overrides] {
        for (path, v) in layer {
            if v.value.trim().is_empty() {
                continue; // empty = unset; it does not hide a lower source's value
            }
            flat.insert(path, v);
        }
    }
    if metadata_network {
        flat.retain(|p, _| !p.starts_with("net."));
    }

    let mut config = Config::from_flat(&flat, metadata_network);

    // Instance id: a source, else the OVF environment's vCenter id, else the SMBIOS UUID.
    let (instance_id, instance_id_origin) =
        resolve_instance_id(&config, &flat, ovf_vcenter_id, opts);

    // Secrets scrubbed from guestinfo at an earlier boot of this instance come back from the
    // 0600 file written then (a reboot does not restore the VMX's values; a power-off does).
    let persisted = read_persisted_secrets(&opts.root, &instance_id);
    let mut added = 0;
    for (path, value) in persisted {
        if !flat.contains_key(&path) && schema::lookup(&path).is_some_and(|s| s.secret) {
            flat.insert(path.clone(), fv(value, "persisted", format!("{SECRETS_FILE} {path}")));
            added += 1;
        }
    }
    if added > 0 {
        config = Config::from_flat(&flat, metadata_network);
        reports.push(SourceReport {
            name: "persisted".into(),
            location: format!("/var/lib/capstan/instances/{instance_id}/{SECRETS_FILE}"),
            values: added,
        });
    }
    config.instance_id = Some(instance_id.clone());

    // Render jinja user-data now that the instance data is known.
    if let Some(text) = userdata.take() {
        userdata =
            render_userdata(text, metadata.as_ref(), &instance_id, &config, gi_name, &mut errors);
    }
    if userdata.is_none() {
        if let Some(ud) = config.user_data.clone() {
            userdata = Some(ud);
        }
    }

    Gathered {
        flat,
        config,
        instance_id,
        instance_id_origin,
        sources: reports,
        errors,
        metadata,
        metadata_text,
        userdata,
        vendordata,
        guestinfo: gi,
        secret_keys,
    }
}

fn read_toml_layer(
    opts: &SourceOptions,
    rel: &str,
    name: &str,
    errors: &mut Vec<SourceError>,
    reports: &mut Vec<SourceReport>,
) -> Layer {
    let path = opts.root.join(rel);
    match schema::read_toml_file(&path, name) {
        Ok(Some(layer)) => {
            reports.push(SourceReport {
                name: name.into(),
                location: format!("/{rel}"),
                values: layer.len(),
            });
            layer
        }
        Ok(None) => Vec::new(),
        Err(e) => {
            // A broken file is refused whole: half of an operator's file is worse than none.
            errors.push(SourceError::new(name, &format!("/{rel}"), &e));
            Vec::new()
        }
    }
}

/// Reads `key` and `key.encoding` and decodes; errors name the key.
fn read_encoded(g: &dyn Guestinfo, key: &str, errors: &mut Vec<SourceError>) -> Option<String> {
    let gk = format!("guestinfo.{key}");
    let raw = match g.get(key) {
        Ok(Some(v)) => v,
        Ok(None) => return None,
        Err(e) => {
            errors.push(SourceError::new(g.transport(), &gk, &e));
            return None;
        }
    };
    let enc_key = format!("{key}.encoding");
    let enc = match g.get(&enc_key) {
        Ok(v) => v,
        Err(e) => {
            errors.push(SourceError::new(g.transport(), &format!("guestinfo.{enc_key}"), &e));
            return None;
        }
    };
    let decoded = Encoding::parse(enc.as_deref()).and_then(|e| encoding::decode(raw.as_bytes(), e));
    match decoded {
        Ok(v) => v,
        Err(e) => {
            let k = if matches!(e, DecodeError::UnknownEncoding(_)) {
                format!("guestinfo.{enc_key}")
            } else {
                gk
            };
            errors.push(SourceError::new(g.transport(), &k, &e));
            None
        }
    }
}

/// Parses metadata as JSON or YAML (as cloud-init does) and requires a mapping.
pub fn parse_metadata(text: &str) -> Result<Map<String, Value>, String> {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            let y: serde_yaml::Value =
                serde_yaml::from_str(text).map_err(|e| format!("not valid YAML or JSON: {e}"))?;
            serde_json::to_value(y).map_err(|e| format!("not representable as JSON: {e}"))?
        }
    };
    match value {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        other => Err(format!(
            "metadata must be a mapping, not {}",
            match other {
                Value::Array(_) => "a list",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "something else",
            }
        )),
    }
}

/// Decodes `network` when `network.encoding` says it is base64/gzip (cloud-init's
/// process_metadata); on failure drops `network` and records the error.
fn decode_metadata_network(
    map: &mut Map<String, Value>,
    transport: &str,
    errors: &mut Vec<SourceError>,
) {
    let enc = map.remove("network.encoding");
    let Some(Value::String(s)) = map.get("network").cloned() else {
        return;
    };
    let enc_s = enc.as_ref().and_then(Value::as_str);
    let result = Encoding::parse(enc_s)
        .and_then(|e| encoding::decode(s.as_bytes(), e))
        .map_err(|e| chain(&e))
        .and_then(|t| match t {
            Some(t) => parse_metadata(&t),
            None => Ok(Map::new()),
        });
    match result {
        Ok(m) if m.is_empty() => {
            map.remove("network");
        }
        Ok(m) => {
            map.insert("network".into(), Value::Object(m));
        }
        Err(reason) => {
            map.remove("network");
            errors.push(SourceError {
                source_name: transport.into(),
                key: "guestinfo.metadata: network".into(),
                reason,
            });
        }
    }
}

fn render_userdata(
    text: String,
    metadata: Option<&Map<String, Value>>,
    instance_id: &InstanceId,
    config: &Config,
    transport: &str,
    errors: &mut Vec<SourceError>,
) -> Option<String> {
    if !jinja::is_jinja_template(&text) {
        return Some(text);
    }
    let empty = Map::new();
    let host = config.hostname.as_ref().map(|h| h.short().to_owned()).unwrap_or_default();
    let vars = jinja::instance_data(metadata.unwrap_or(&empty), instance_id.as_str(), &host);
    match jinja::render(&text, &vars) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(SourceError::new(transport, "guestinfo.userdata", &e));
            None
        }
    }
}

fn resolve_instance_id(
    config: &Config,
    flat: &schema::Flat,
    vcenter_id: Option<String>,
    opts: &SourceOptions,
) -> (InstanceId, Origin) {
    if let (Some(id), Some(v)) = (&config.instance_id, flat.get("instance-id")) {
        return (id.clone(), v.origin.clone());
    }
    if let Some(id) = vcenter_id.and_then(|v| v.parse::<InstanceId>().ok()) {
        return (id, Origin { source: "ovf-env".into(), key: "ve:vCenterId".into() });
    }
    let dmi = opts.sys_dir.join("class/dmi/id/product_uuid");
    if let Some(id) = read_smbios_uuid(&dmi) {
        return (
            id,
            Origin { source: "smbios".into(), key: "/sys/class/dmi/id/product_uuid".into() },
        );
    }
    (
        "iid-unknown".parse().expect("constant is a valid instance-id"),
        Origin { source: "none".into(), key: "no source gave an instance-id".into() },
    )
}

/// File name, in the instance's state directory, of the secrets consumed from guestinfo.
pub const SECRETS_FILE: &str = "secrets.json";

fn read_persisted_secrets(root: &Path, id: &InstanceId) -> BTreeMap<String, String> {
    let path = root.join("var/lib/capstan/instances").join(id.as_str()).join(SECRETS_FILE);
    std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

impl Gathered {
    /// The secret settings that came from guestinfo (and will be scrubbed there), to persist
    /// with mode 0600 so that later boots of the same instance still have them.
    pub fn guestinfo_secrets(&self) -> BTreeMap<String, String> {
        let transport = self.guestinfo.as_ref().map(|g| g.transport());
        self.flat
            .iter()
            .filter(|(p, v)| {
                Some(v.origin.source.as_str()) == transport
                    && schema::lookup(p).is_some_and(|s| s.secret)
            })
            .map(|(p, v)| (p.clone(), v.value.clone()))
            .collect()
    }
}

/// The SMBIOS product UUID, lower-cased like cloud-init does.
fn read_smbios_uuid(path: &Path) -> Option<InstanceId> {
    let s = std::fs::read_to_string(path).ok()?;
    s.trim().to_ascii_lowercase().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_must_be_a_mapping() {
        assert!(parse_metadata("instance-id: a\n").is_ok());
        assert!(parse_metadata("{\"instance-id\": \"a\"}").is_ok());
        let e = parse_metadata("- a\n- b\n").unwrap_err();
        assert!(e.contains("mapping"), "{e}");
        assert!(parse_metadata("just text").unwrap_err().contains("mapping"));
        assert!(parse_metadata("a: [").is_err());
    }
}
