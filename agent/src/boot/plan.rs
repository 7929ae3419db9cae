//! From gathered sources to the steps' [`Plan`], and from refused values to failed step records.

use std::collections::BTreeMap;

use crate::cloudinit::Metadata;
use crate::schema::{Config, NetworkSource};
use crate::sources::{Chosen, Gathered};
use crate::steps::{Command, Dns, NetworkConfig, Ntp, Plan, StepId, StepRecord, StepStatus, User};

/// A problem found while building the plan, charged to the step it affects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The step ([`StepId::Network`], [`StepId::Users`], …) or [`StepId::Sources`].
    pub step: StepId,
    /// One line naming the source and key.
    pub message: String,
}

/// The step a schema path feeds. A path under a role's settings (`lb.*`, `kube.*`) feeds
/// the role's record.
pub fn step_for(path: &str) -> StepId {
    let head = path.split('.').next().unwrap_or("");
    match head {
        "hostname" | "fqdn" | "instance-id" => StepId::Hostname,
        "net" => StepId::Network,
        "dns" => StepId::Dns,
        "ntp" => StepId::Ntp,
        "user" | "ssh" => StepId::Users,
        "commands" => StepId::Runcmd,
        "user-data" => StepId::WriteFiles,
        "role" | "kube" => StepId::Role,
        "heartbeat" => StepId::Heartbeat,
        _ if is_role_key(head) => StepId::Role,
        _ => StepId::Sources,
    }
}

/// Whether `head.*` are settings a role owns (`lb` for `lb.vip`).
fn is_role_key(head: &str) -> bool {
    crate::roles::all()
        .iter()
        .any(|r| r.settings().iter().any(|s| s.path.split('.').next() == Some(head)))
}

/// Builds the plan: the one way from gathered sources (the schema's typed config, the
/// cloud-init metadata and cloud-config documents) to what the steps apply. Values refused
/// by the schema were already left out of the config; they come back here as issues charged
/// to their step.
pub fn build_plan(g: &Gathered) -> (Plan, Vec<Issue>) {
    let c = &g.config;
    let mut issues: Vec<Issue> = c
        .errors
        .iter()
        .map(|e| Issue { step: step_for(&e.path), message: e.to_string() })
        .collect();
    let mut plan = Plan {
        instance_id: Some(g.instance_id.clone()),
        hostname: c.hostname.clone(),
        fqdn: c.fqdn.clone(),
        // A fresh machine-id and SSH host keys for every new instance (a clone must not share
        // its template's DHCP client id or host identity).
        machine_id: true,
        ssh_host_key_types: crate::steps::identity::default_host_key_types(),
        ..Plan::default()
    };
    let metadata = metadata(g, &mut issues);
    plan.network = network(g, metadata.as_ref(), &mut issues);
    plan.dns = Dns { nameservers: c.dns.servers.clone(), search: c.dns.search.clone() };
    plan.ntp = ntp(c, &mut issues);
    plan.users = users(c, metadata.as_ref(), &g.public_keys);
    if let Some(cmd) = &c.commands.runcmd {
        plan.runcmd.push(Command::Shell(cmd.clone()));
    }
    // cloud-config documents: vendor-data first (lower precedence), then user-data.
    let (vendor_name, user_name) = match &g.provider {
        Chosen::Vmware => ("guestinfo.vendordata".to_owned(), "guestinfo.userdata".to_owned()),
        other => (format!("{} vendor-data", other.name()), format!("{} user-data", other.name())),
    };
    for (name, text) in [
        (vendor_name.as_str(), g.vendordata.as_deref()),
        (user_name.as_str(), g.userdata.as_deref()),
    ] {
        let Some(text) = text else { continue };
        match super::cloudconfig::overlay(&mut plan, text, &g.flat) {
            Ok(notes) => {
                for n in notes {
                    tracing::info!(source = name, "{n}");
                }
            }
            Err(e) => issues.push(Issue {
                step: StepId::Sources,
                message: format!("{name}: {}", crate::error::chain(&e)),
            }),
        }
    }
    (plan, issues)
}

/// The metadata document, typed by the cloud-init reader.
fn metadata(g: &Gathered, issues: &mut Vec<Issue>) -> Option<Metadata> {
    let text = g.metadata_text.as_deref()?;
    match crate::cloudinit::parse_metadata(text) {
        Ok(md) => Some(md),
        Err(e) => {
            let step = if g.config.network_source == NetworkSource::Metadata {
                StepId::Network
            } else {
                StepId::Sources
            };
            issues.push(Issue { step, message: format!("guestinfo.metadata: {e}") });
            None
        }
    }
}

/// The network, whole from one place (the `net.*` keys or the metadata's netplan).
fn network(g: &Gathered, metadata: Option<&Metadata>, issues: &mut Vec<Issue>) -> NetworkConfig {
    match g.config.network_source {
        NetworkSource::Keys => {
            let mut nics: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
            for (path, v) in &g.flat {
                let Some((nic, leaf)) = path.strip_prefix("net.").and_then(|r| r.split_once('.'))
                else {
                    continue;
                };
                nics.entry(nic.to_owned()).or_default().insert(leaf.to_owned(), v.value.clone());
            }
            NetworkConfig::from_vapp(&nics).unwrap_or_else(|e| {
                issues.push(Issue {
                    step: StepId::Network,
                    message: format!("net.*: {}", crate::error::chain(&e)),
                });
                NetworkConfig::default()
            })
        }
        NetworkSource::Metadata => metadata.and_then(|m| m.network.clone()).unwrap_or_default(),
        // a cloud provider's network, parsed whole when it was read
        NetworkSource::NoCloud | NetworkSource::ConfigDrive | NetworkSource::Ec2 => {
            g.network.clone().unwrap_or_default()
        }
        NetworkSource::None | NetworkSource::Invalid => NetworkConfig::default(),
    }
}

/// The time servers, when the schema sets any.
fn ntp(c: &Config, issues: &mut Vec<Issue>) -> Option<Ntp> {
    if c.ntp_servers.is_empty() {
        return None;
    }
    let mut servers = Vec::new();
    for s in &c.ntp_servers {
        match s.parse() {
            Ok(v) => servers.push(v),
            Err(e) => {
                issues.push(Issue { step: StepId::Ntp, message: format!("ntp.servers: {e}") })
            }
        }
    }
    Some(Ntp { enabled: true, servers, pools: Vec::new() })
}

/// The schema's login user; SSH keys without a user go to the image's default user.
fn users(c: &Config, metadata: Option<&Metadata>, provider_keys: &[String]) -> Vec<User> {
    let mut keys = c.ssh_authorized_keys.clone();
    if let Some(md) = metadata {
        keys.extend(md.public_keys.iter().cloned());
    }
    // a cloud provider's public-keys go to the default user, as cloud-init does
    keys.extend(provider_keys.iter().filter(|k| !c.ssh_authorized_keys.contains(k)).cloned());
    if let Some(u) = &c.user {
        let mut user = User {
            passwd: u.password_hash.clone(),
            lock_passwd: u.password_hash.is_none(),
            ssh_authorized_keys: keys,
            ..User::default_user()
        };
        user.name = u.name.clone();
        user.gecos = None;
        vec![user]
    } else if !keys.is_empty() {
        let mut user = User::default_user();
        user.ssh_authorized_keys = keys;
        vec![user]
    } else {
        Vec::new()
    }
}

/// Adds a `sources` record first and charges each issue to its step's record: the step is
/// marked failed with the issue as its error (a record is added for steps that did not run).
pub fn apply_issues(records: &mut Vec<StepRecord>, g: &Gathered, issues: &[Issue], gather_ms: u64) {
    let mut source_errors: Vec<String> = g.errors.iter().map(ToString::to_string).collect();
    source_errors
        .extend(issues.iter().filter(|i| i.step == StepId::Sources).map(|i| i.message.clone()));
    let names: Vec<&str> = g.sources.iter().map(|s| s.name.as_str()).collect();
    records.insert(
        0,
        StepRecord {
            name: StepId::Sources.as_str().into(),
            status: if source_errors.is_empty() { StepStatus::Ok } else { StepStatus::Failed },
            detail: if names.is_empty() {
                "no source present; schema defaults only".into()
            } else {
                format!("read {}", names.join(", "))
            },
            error: (!source_errors.is_empty()).then(|| source_errors.join("; ")),
            duration_ms: gather_ms,
        },
    );
    if let Some(why) = &g.config.role_unconfigured {
        records.push(StepRecord {
            name: StepId::Role.as_str().into(),
            status: StepStatus::Skipped,
            detail: why.clone(),
            error: None,
            duration_ms: 0,
        });
    }
    // in the order of the step names, as before the ids were typed
    let mut by_step: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for i in issues.iter().filter(|i| i.step != StepId::Sources) {
        by_step.entry(i.step.as_str()).or_default().push(&i.message);
    }
    for (step, msgs) in by_step {
        let error = msgs.join("; ");
        match records.iter_mut().find(|r| r.name == step) {
            Some(r) => {
                r.status = StepStatus::Failed;
                r.error = Some(match r.error.take() {
                    Some(prev) => format!("{error}; {prev}"),
                    None => error,
                });
            }
            None => records.push(StepRecord {
                name: step.to_owned(),
                status: StepStatus::Failed,
                detail: String::new(),
                error: Some(error),
                duration_ms: 0,
            }),
        }
    }
}
