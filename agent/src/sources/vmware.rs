//! The VMware provider: everything VMware-specific about where a node's configuration comes
//! from — the OVF environment (an `OVF ENV` CD-ROM, `--ovf-env FILE`, or `guestinfo.ovfEnv`),
//! cloud-init's VMware datasource keys that Cluster API vSphere (CAPV) sets
//! (`guestinfo.metadata`, `userdata`, `vendordata`, with their `.encoding`), and the direct
//! `guestinfo.capstan.*` keys, all over one guestinfo transport (the VMware backdoor, QEMU
//! fw_cfg, or a directory).

use serde_json::{Map, Value};

use super::encoding::{self, DecodeError, Encoding};
use super::{
    fv, ovfenv, Found, Identity, Layer, Provider, SourceError, SourceOptions, SourceReport,
};
use crate::error::chain;
use crate::guestinfo::{DirGuestinfo, FwCfg, Guestinfo, GuestinfoError};
use crate::schema::{self, all_concrete_paths, Origin, Source};

/// The guestinfo keys whose values name the instance: what the daemon's watch asks at every
/// tick instead of gathering everything (an instant clone changes them).
pub const IDENTITY_KEYS: &[&str] = &["capstan.instance-id", "metadata", "ovfEnv"];

/// The VMware provider over a guestinfo transport (none: only an OVF environment file or
/// CD-ROM).
#[derive(Debug, Clone, Copy)]
pub struct Vmware<'a> {
    gi: Option<&'a dyn Guestinfo>,
}

impl<'a> Vmware<'a> {
    /// The provider reading through `gi`.
    pub fn new(gi: Option<&'a dyn Guestinfo>) -> Self {
        Vmware { gi }
    }
}

impl Provider for Vmware<'_> {
    fn name(&self) -> &'static str {
        "vmware"
    }

    fn read(&self, opts: &SourceOptions) -> Found {
        let mut found = Found::default();
        // 2. the OVF environment
        let mut phases = Vec::new();
        let (ovf_layer, vcenter_id) = super::timed(&mut phases, "ovf-env", || {
            ovfenv::read_layer(opts, self.gi, &mut found.errors, &mut found.reports)
        });
        found.layers.push(ovf_layer);
        found.fallback_instance_id = vcenter_id
            .map(|id| (id, Origin { source: Source::OvfEnv, key: "ve:vCenterId".into() }));
        let Some(g) = self.gi else {
            found.layers.extend([Vec::new(), Vec::new()]);
            found.phases = phases;
            return found;
        };
        // 3. cloud-init metadata / userdata / vendordata
        let meta = super::timed(&mut phases, "cloud-init", || read_cloud_init(g, &mut found));
        found.layers.push(meta);
        // 4. direct guestinfo.capstan.* keys
        let direct = super::timed(&mut phases, "direct", || read_direct(g, &mut found));
        found.layers.push(direct);
        found.phases = phases;
        found
    }

    fn identity(&self) -> Identity {
        let Some(g) = self.gi else {
            return Identity::default();
        };
        Identity(IDENTITY_KEYS.iter().map(|k| g.get(k).ok().flatten()).collect())
    }
}

/// The cloud-init documents: the metadata's layer (`instance-id`, `local-hostname`), its
/// mapping and text, `redact`, and the user-data and vendor-data texts.
fn read_cloud_init(g: &dyn Guestinfo, found: &mut Found) -> Layer {
    let mut meta_layer: Layer = Vec::new();
    if let Some(text) = read_encoded(g, "metadata", &mut found.errors) {
        match parse_metadata(&text) {
            Ok(mut map) => {
                decode_metadata_network(&mut map, g.transport(), &mut found.errors);
                if let Some(Value::String(id)) = map.get("instance-id") {
                    meta_layer.push((
                        "instance-id".into(),
                        fv(id.clone(), Source::Metadata, "instance-id"),
                    ));
                }
                if let Some(Value::String(h)) = map.get("local-hostname") {
                    meta_layer.push((
                        "hostname".into(),
                        fv(h.clone(), Source::Metadata, "local-hostname"),
                    ));
                }
                if let Some(Value::Array(redact)) = map.get("redact") {
                    for k in redact.iter().filter_map(Value::as_str) {
                        let k = k.strip_prefix("guestinfo.").unwrap_or(k);
                        if crate::guestinfo::check_key(k).is_ok() {
                            found.secret_keys.push(k.to_owned());
                        }
                    }
                }
                found.reports.push(SourceReport {
                    name: "metadata".into(),
                    location: format!("{} guestinfo.metadata", g.transport()),
                    values: meta_layer.len(),
                });
                found.metadata_text = serde_yaml::to_string(&map).ok();
                found.metadata = Some(map);
            }
            Err(reason) => found.errors.push(SourceError {
                source_name: g.transport().into(),
                key: "guestinfo.metadata".into(),
                reason,
            }),
        }
    }
    if let Some(text) = read_encoded(g, "userdata", &mut found.errors) {
        // User-data carries bootstrap tokens and keys: scrub it after use.
        found.secret_keys.push("userdata".into());
        found.reports.push(SourceReport {
            name: "userdata".into(),
            location: format!("{} guestinfo.userdata", g.transport()),
            values: 0,
        });
        found.userdata = Some(text);
    }
    if let Some(text) = read_encoded(g, "vendordata", &mut found.errors) {
        found.reports.push(SourceReport {
            name: "vendordata".into(),
            location: format!("{} guestinfo.vendordata", g.transport()),
            values: 0,
        });
        found.vendordata = Some(text);
    }
    meta_layer
}

/// The direct `guestinfo.capstan.<path>` keys. A transport that can list its keys is asked
/// only for those it has.
fn read_direct(g: &dyn Guestinfo, found: &mut Found) -> Layer {
    let gi_name = g.transport();
    let mut direct: Layer = Vec::new();
    let listed = g.keys();
    for path in all_concrete_paths() {
        let key = format!("{}{path}", schema::KEY_PREFIX);
        if listed.as_ref().is_some_and(|keys| !keys.contains(&key)) {
            continue;
        }
        let gk = format!("guestinfo.{key}");
        match g.get(&key) {
            Ok(Some(v)) if v.len() > encoding::GUESTINFO_VALUE_LIMIT => {
                let e =
                    DecodeError::TooLarge { len: v.len(), limit: encoding::GUESTINFO_VALUE_LIMIT };
                found.errors.push(SourceError::new(gi_name, &gk, &e));
            }
            Ok(Some(v)) if !encoding::is_empty_value(v.as_bytes()) => {
                if schema::lookup(&path).is_some_and(|s| s.secret) {
                    found.secret_keys.push(key.clone());
                }
                direct.push((path, fv(v, Source::of_transport(gi_name), gk)));
            }
            Ok(_) => {}
            Err(e) => found.errors.push(SourceError::new(gi_name, &gk, &e)),
        }
    }
    if !direct.is_empty() {
        found.reports.push(SourceReport {
            name: "guestinfo".into(),
            location: format!("{gi_name} guestinfo.capstan.*"),
            values: direct.len(),
        });
    }
    direct
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
