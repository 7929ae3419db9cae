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

pub mod configdrive;
pub mod detect;
pub mod ec2;
pub mod encoding;
pub mod imds;
pub mod iso9660;
pub mod jinja;
pub mod nocloud;
mod ovfenv;
pub mod provider_data;
pub mod provider_spec;
pub mod vmware;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::guestinfo::Guestinfo;
use crate::root::Root;
use crate::schema::{self, Config, FlatValue, NetworkSource, Origin, Source};
use crate::state::{State, SECRETS_FILE};
use crate::steps::NetworkConfig;
use crate::types::InstanceId;

pub use detect::Chosen;
pub use ovfenv::{find_ovf_cdrom, read_ovf_env_cdrom, OVF_ENV_NAMES};
pub use provider_spec::ProviderSpec;
pub use vmware::{guestinfo_transport, parse_metadata};

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
    /// `--provider`: read this provider instead of detecting one ([`detect`]).
    pub provider: Option<ProviderSpec>,
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
            provider: None,
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
            provider: None,
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
        Self {
            source_name: source.to_owned(),
            key: key.to_owned(),
            reason: crate::error::chain(err),
        }
    }
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
    /// The provider read ([`detect`]).
    pub provider: Chosen,
    /// A cloud provider's network, when it is the node's ([`Config::network_source`] names it).
    pub network: Option<NetworkConfig>,
    /// A cloud provider's SSH keys for the default user.
    pub public_keys: Vec<String>,
    /// The provider was found but its data refused whole: apply nothing ([`Found::refused`]).
    pub refused: bool,
    /// How long each part of the gathering took, in order (a re-identification reports them).
    pub phases: Vec<Phase>,
}

/// One timed part of a gathering (`defaults`, `ovf-env`, `cloud-init`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Phase {
    /// What was read or done.
    pub name: &'static str,
    /// Microseconds it took.
    pub us: u64,
}

/// Times `f` as the phase `name`, appended to `phases`.
pub(crate) fn timed<T>(phases: &mut Vec<Phase>, name: &'static str, f: impl FnOnce() -> T) -> T {
    let t = std::time::Instant::now();
    let out = f();
    let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
    phases.push(Phase { name, us });
    out
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

/// Settings by schema path from one source, with their origins.
pub type Layer = Vec<(String, FlatValue)>;

fn fv(value: impl Into<String>, source: Source, key: impl Into<String>) -> FlatValue {
    FlatValue { value: value.into(), origin: Origin { source, key: key.into() } }
}

/// What a [`Provider`] found. Every field defaults to "nothing here".
#[derive(Debug, Default)]
pub struct Found {
    /// Settings by schema path, one layer per source of the provider, lowest precedence
    /// first (for VMware: the OVF environment, the cloud-init metadata, the direct keys).
    pub layers: Vec<Layer>,
    /// The cloud-init metadata mapping (`network` decoded too), when the provider has one.
    pub metadata: Option<Map<String, Value>>,
    /// The same metadata as YAML text, for the cloud-init parser.
    pub metadata_text: Option<String>,
    /// The decoded user-data (a `#cloud-config`, maybe a jinja template).
    pub userdata: Option<String>,
    /// The decoded vendor-data.
    pub vendordata: Option<String>,
    /// An instance-id below every layer (the OVF environment's vCenter VM id), and its origin.
    pub fallback_instance_id: Option<(String, Origin)>,
    /// Keys of the provider's transport that held secrets, to scrub after use.
    pub secret_keys: Vec<String>,
    /// The sources that were present.
    pub reports: Vec<SourceReport>,
    /// Values that were refused, naming the source and key.
    pub errors: Vec<SourceError>,
    /// The network, already in the steps' model, when a cloud provider gave one (VMware's
    /// comes as the metadata's netplan instead), and the name `status` gives its source.
    pub network: Option<(NetworkSource, NetworkConfig)>,
    /// SSH public keys for the default user (a cloud provider's `public-keys`).
    pub public_keys: Vec<String>,
    /// The provider is present but its data was refused whole (see [`Found::errors`]): first
    /// boot applies nothing, rather than a node half configured from defaults.
    pub refused: bool,
    /// How long each of the provider's reads took.
    pub phases: Vec<Phase>,
}

/// The cheap answer to "which instance is this?": the raw values a provider names the
/// instance by, compared between polls (equal values: the same instance).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity(pub Vec<Option<String>>);

/// A metadata provider: where a cloud or hypervisor tells a node who it is (Afterburn's
/// model). [`Vmware`](vmware::Vmware) is the first; NoCloud, OpenStack config drive and
/// EC2 plug in here. I/O lives in the provider; parsing in pure functions beside it.
pub trait Provider {
    /// A short name (`vmware`).
    fn name(&self) -> &'static str;
    /// Reads everything the provider has. Never fails: what cannot be read is in
    /// [`Found::errors`]. Defaults to nothing.
    fn read(&self, _opts: &SourceOptions) -> Found {
        Found::default()
    }
    /// The few values that name the instance, read cheaply (the daemon asks this every poll
    /// instead of a full [`Provider::read`]). Defaults to nothing.
    fn identity(&self) -> Identity {
        Identity::default()
    }
}

/// Reads every source and merges them. Never fails: what cannot be read is in
/// [`Gathered::errors`].
pub fn gather(opts: &SourceOptions) -> Gathered {
    let mut phases = Vec::new();
    let gi = timed(&mut phases, "transport", || guestinfo_transport(opts));
    let mut g = gather_with(opts, gi);
    phases.append(&mut g.phases);
    g.phases = phases;
    g
}

/// The cheap identity question of the daemon's watch for VMware: its identity values and the
/// SMBIOS UUID (one small read each; no CD-ROM scan, no schema-wide key probe).
pub fn identity(opts: &SourceOptions, gi: Option<&dyn Guestinfo>) -> Identity {
    identity_of(&Chosen::Vmware, opts, gi)
}

/// The cheap identity question for the provider a gathering chose ([`Gathered::provider`]):
/// its [`Provider::identity`] and the SMBIOS UUID.
pub fn identity_of(chosen: &Chosen, opts: &SourceOptions, gi: Option<&dyn Guestinfo>) -> Identity {
    let mut id = chosen.identity(gi);
    id.0.push(read_smbios_uuid(&opts.sys_dir.join(SMBIOS_UUID)).map(|u| u.to_string()));
    id
}

/// [`gather`] with an explicit guestinfo transport: the precedence of DESIGN.md over the
/// baked defaults, the providers' layers, and the override file.
pub fn gather_with(opts: &SourceOptions, gi: Option<Box<dyn Guestinfo>>) -> Gathered {
    let mut errors = Vec::new();
    let mut reports = Vec::new();
    let mut phases = Vec::new();
    let gi_name = gi.as_ref().map_or("guestinfo", |g| g.transport());
    // 1. baked defaults
    let defaults = timed(&mut phases, "defaults", || {
        read_toml_layer(opts, DEFAULTS_FILE, Source::Defaults, &mut errors, &mut reports)
    });
    // 5. the override file (read before the provider: it may force one)
    let (mut override_errors, mut override_reports) = (Vec::new(), Vec::new());
    let overrides = timed(&mut phases, "override", || {
        let (errors, reports) = (&mut override_errors, &mut override_reports);
        read_toml_layer(opts, OVERRIDE_FILE, Source::Override, errors, reports)
    });
    // 2.-4. the provider
    let forced = detect::forced(&defaults, &overrides);
    let (provider, mut found) = detect::choose_and_read(opts, gi.as_deref(), forced);
    errors.append(&mut found.errors);
    reports.append(&mut found.reports);
    phases.append(&mut found.phases);
    errors.append(&mut override_errors);
    reports.append(&mut override_reports);

    // The network rule: metadata's netplan wins unless a higher source sets net.*.
    let has_net =
        |l: &Layer| l.iter().any(|(p, v)| p.starts_with("net.") && !v.value.trim().is_empty());
    let above_metadata = found.layers.last().is_some_and(has_net) || has_net(&overrides);
    let metadata_network =
        found.metadata.as_ref().is_some_and(|m| m.get("network").is_some_and(|n| !n.is_null()))
            && !above_metadata;
    // A cloud provider's network wins the same way (no provider layer sets net.*).
    let provider_network = found.network.take().filter(|_| !has_net(&overrides));
    let metadata_network = metadata_network || provider_network.is_some();
    let layers = std::iter::once(defaults).chain(found.layers).chain(std::iter::once(overrides));
    let merged_at = std::time::Instant::now();
    let mut flat = merge(layers);
    if metadata_network {
        flat.retain(|p, _| !p.starts_with("net."));
    }
    let config_of = |flat: &schema::Flat| {
        let mut c = Config::from_flat(flat, metadata_network);
        if let Some((source, _)) = &provider_network {
            c.network_source = *source;
        }
        c
    };
    let mut config = config_of(&flat);
    let us = |t: std::time::Instant| u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
    phases.push(Phase { name: "merge", us: us(merged_at) });
    // Instance id: a source, else the provider's fallback, else the SMBIOS UUID.
    let (instance_id, instance_id_origin) =
        resolve_instance_id(&config, &flat, found.fallback_instance_id, opts);
    let persisted =
        timed(&mut phases, "persisted", || add_persisted_secrets(opts, &instance_id, &mut flat));
    if let Some(report) = persisted {
        config = config_of(&flat);
        reports.push(report);
    }
    config.instance_id = Some(instance_id.clone());
    // Render jinja user-data now that the instance data is known.
    let metadata = found.metadata;
    let (ud_source, ud_key) = match provider {
        Chosen::Vmware => (gi_name, "guestinfo.userdata"),
        ref other => (other.name(), "user-data"),
    };
    let mut userdata = timed(&mut phases, "userdata-render", || {
        found.userdata.and_then(|text| {
            let at = (ud_source, ud_key);
            render_userdata(text, metadata.as_ref(), &instance_id, &config, at, &mut errors)
        })
    });
    if userdata.is_none() {
        userdata.clone_from(&config.user_data);
    }
    Gathered {
        flat,
        config,
        instance_id,
        instance_id_origin,
        sources: reports,
        errors,
        metadata,
        metadata_text: found.metadata_text,
        userdata,
        vendordata: found.vendordata,
        guestinfo: gi,
        secret_keys: found.secret_keys,
        provider,
        network: provider_network.map(|(_, n)| n),
        public_keys: found.public_keys,
        refused: found.refused,
        phases,
    }
}

/// Merges layers, lowest precedence first; an empty value is unset and does not hide a
/// lower source's value.
fn merge(layers: impl Iterator<Item = Layer>) -> schema::Flat {
    let mut flat = schema::Flat::new();
    for (path, v) in layers.flatten() {
        if !v.value.trim().is_empty() {
            flat.insert(path, v);
        }
    }
    flat
}

/// Secrets scrubbed from guestinfo at an earlier boot of this instance come back from the
/// 0600 file written then (a reboot does not restore the VMX's values; a power-off does),
/// read through the rooted state store. Returns the source's report when any came back.
fn add_persisted_secrets(
    opts: &SourceOptions,
    instance_id: &InstanceId,
    flat: &mut schema::Flat,
) -> Option<SourceReport> {
    let state = State::new(Root::new(&opts.root).ok()?);
    let mut added = 0;
    for (path, value) in state.load_secrets(instance_id.as_str()) {
        if !flat.contains_key(&path) && schema::lookup(&path).is_some_and(|s| s.secret) {
            flat.insert(
                path.clone(),
                fv(value, Source::Persisted, format!("{SECRETS_FILE} {path}")),
            );
            added += 1;
        }
    }
    (added > 0).then(|| SourceReport {
        name: "persisted".into(),
        location: State::secrets_location(instance_id.as_str()),
        values: added,
    })
}

/// The TOML layers this process parsed, by path, with the file's bytes then: a file whose bytes
/// are the same is not parsed again (a clone's gathering finds the parent's files unchanged,
/// and the parser's first run after a resume is slow under TCG).
static TOML_LAYERS: std::sync::Mutex<BTreeMap<PathBuf, (Vec<u8>, Layer)>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Files up to this size are kept with their layer.
const TOML_KEPT: usize = 64 * 1024;

/// `path`'s layer: the one parsed before when the file's bytes are the same, else the file
/// parsed (and kept). A file that cannot be read whole, is larger than [`TOML_KEPT`] or is not
/// UTF-8 goes to [`schema::read_toml_file`], which names what is wrong.
fn toml_layer(path: &Path, source: Source) -> Result<Option<Layer>, schema::TomlError> {
    let Some(text) = std::fs::read(path)
        .ok()
        .filter(|b| b.len() <= TOML_KEPT)
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return schema::read_toml_file(path, source);
    };
    let kept = TOML_LAYERS
        .lock()
        .ok()
        .and_then(|m| m.get(path).filter(|(b, _)| *b == text.as_bytes()).map(|(_, l)| l.clone()));
    if let Some(layer) = kept {
        return Ok(Some(layer));
    }
    let layer = schema::flatten_toml(&text, path, source)?;
    if let Ok(mut m) = TOML_LAYERS.lock() {
        m.insert(path.to_owned(), (text.into_bytes(), layer.clone()));
    }
    Ok(Some(layer))
}

fn read_toml_layer(
    opts: &SourceOptions,
    rel: &str,
    source: Source,
    errors: &mut Vec<SourceError>,
    reports: &mut Vec<SourceReport>,
) -> Layer {
    let path = opts.root.join(rel);
    let name = source.as_str();
    match toml_layer(&path, source) {
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

fn render_userdata(
    text: String,
    metadata: Option<&Map<String, Value>>,
    instance_id: &InstanceId,
    config: &Config,
    (source, key): (&str, &str),
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
            errors.push(SourceError::new(source, key, &e));
            None
        }
    }
}

fn resolve_instance_id(
    config: &Config,
    flat: &schema::Flat,
    fallback: Option<(String, Origin)>,
    opts: &SourceOptions,
) -> (InstanceId, Origin) {
    if let (Some(id), Some(v)) = (&config.instance_id, flat.get("instance-id")) {
        return (id.clone(), v.origin.clone());
    }
    if let Some((id, origin)) = fallback.and_then(|(v, o)| Some((v.parse::<InstanceId>().ok()?, o)))
    {
        return (id, origin);
    }
    let dmi = opts.sys_dir.join(SMBIOS_UUID);
    if let Some(id) = read_smbios_uuid(&dmi) {
        return (
            id,
            Origin { source: Source::Smbios, key: "/sys/class/dmi/id/product_uuid".into() },
        );
    }
    (
        "iid-unknown".parse().expect("constant is a valid instance-id"),
        Origin { source: Source::None, key: "no source gave an instance-id".into() },
    )
}

impl Gathered {
    /// The secret settings that came from guestinfo (and will be scrubbed there), to persist
    /// with mode 0600 so that later boots of the same instance still have them.
    pub fn guestinfo_secrets(&self) -> BTreeMap<String, String> {
        let transport = self.guestinfo.as_ref().map(|g| g.transport());
        self.flat
            .iter()
            .filter(|(p, v)| {
                transport.map(Source::of_transport) == Some(v.origin.source)
                    && schema::lookup(p).is_some_and(|s| s.secret)
            })
            .map(|(p, v)| (p.clone(), v.value.clone()))
            .collect()
    }
}

/// The SMBIOS product UUID, under `/sys`.
const SMBIOS_UUID: &str = "class/dmi/id/product_uuid";

/// The SMBIOS product UUID, lower-cased like cloud-init does.
fn read_smbios_uuid(path: &Path) -> Option<InstanceId> {
    let s = std::fs::read_to_string(path).ok()?;
    s.trim().to_ascii_lowercase().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_toml_file_is_not_parsed_again_and_a_changed_one_is() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("agent.toml");
        std::fs::write(&path, "[dns]\nservers = [\"192.0.2.53\"]\n").unwrap();
        let a = toml_layer(&path, Source::Defaults).unwrap().unwrap();
        assert_eq!(a.len(), 1, "{a:?}");
        // the kept layer answers while the bytes are the same (here: planted, to tell)
        let planted = vec![("dns.search".to_owned(), fv("x", Source::Defaults, "planted"))];
        let bytes = std::fs::read(&path).unwrap();
        TOML_LAYERS.lock().unwrap().insert(path.clone(), (bytes, planted.clone()));
        assert_eq!(toml_layer(&path, Source::Defaults).unwrap().unwrap(), planted);
        // other bytes: parsed again
        std::fs::write(&path, "[dns]\nservers = [\"192.0.2.54\"]\n").unwrap();
        let b = toml_layer(&path, Source::Defaults).unwrap().unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].1.value, "192.0.2.54");
        // a broken file is still refused, naming the file, and a missing one is none
        std::fs::write(&path, "[dns\n").unwrap();
        let e = toml_layer(&path, Source::Defaults).unwrap_err().to_string();
        assert!(e.contains("agent.toml"), "{e}");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(toml_layer(&path, Source::Defaults).is_err());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(toml_layer(&path, Source::Defaults).unwrap(), None);
    }
}
