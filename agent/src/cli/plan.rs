//! From gathered sources to the steps' [`Plan`], and from refused values to failed step records.

use std::collections::BTreeMap;

use crate::schema::NetworkSource;
use crate::sources::Gathered;
use crate::steps::{self, Command, Dns, NetworkConfig, Ntp, Plan, StepRecord, StepStatus, User};

/// A problem found while building the plan, charged to the step it affects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The step (`network`, `users`, …) or `sources`.
    pub step: &'static str,
    /// One line naming the source and key.
    pub message: String,
}

/// The step a schema path feeds.
pub fn step_for(path: &str) -> &'static str {
    let head = path.split('.').next().unwrap_or("");
    match head {
        "hostname" | "fqdn" | "instance-id" => "hostname",
        "net" => "network",
        "dns" => "dns",
        "ntp" => "ntp",
        "user" | "ssh" => "users",
        "commands" => "runcmd",
        "user-data" => "write-files",
        "role" | "lb" | "kube" => "role",
        "heartbeat" => "heartbeat",
        _ => "sources",
    }
}

/// Builds the plan. Values refused by the schema were already left out of the config; they
/// come back here as issues charged to their step.
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
        ssh_host_key_types: steps::identity::default_host_key_types(),
        ..Plan::default()
    };

    // The metadata document, typed by the cloud-init reader.
    let metadata = match g.metadata_text.as_deref() {
        Some(text) => match crate::cloudinit::parse_metadata(text) {
            Ok(md) => Some(md),
            Err(e) => {
                issues.push(Issue {
                    step: if c.network_source == NetworkSource::Metadata {
                        "network"
                    } else {
                        "sources"
                    },
                    message: format!("guestinfo.metadata: {e}"),
                });
                None
            }
        },
        None => None,
    };

    plan.network = match c.network_source {
        NetworkSource::Keys => {
            let mut nics: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
            for (path, v) in &g.flat {
                if let Some(rest) = path.strip_prefix("net.") {
                    if let Some((nic, leaf)) = rest.split_once('.') {
                        nics.entry(nic.to_owned())
                            .or_default()
                            .insert(leaf.to_owned(), v.value.clone());
                    }
                }
            }
            match NetworkConfig::from_vapp(&nics) {
                Ok(n) => n,
                Err(e) => {
                    issues.push(Issue {
                        step: "network",
                        message: format!("net.*: {}", steps::error_chain(&e)),
                    });
                    NetworkConfig::default()
                }
            }
        }
        NetworkSource::Metadata => {
            metadata.as_ref().and_then(|m| m.network.clone()).unwrap_or_default()
        }
        NetworkSource::None | NetworkSource::Invalid => NetworkConfig::default(),
    };

    plan.dns = Dns { nameservers: c.dns.servers.clone(), search: c.dns.search.clone() };
    if !c.ntp_servers.is_empty() {
        let mut servers = Vec::new();
        for s in &c.ntp_servers {
            match s.parse() {
                Ok(v) => servers.push(v),
                Err(e) => issues.push(Issue { step: "ntp", message: format!("ntp.servers: {e}") }),
            }
        }
        plan.ntp = Some(Ntp { enabled: true, servers, pools: Vec::new() });
    }

    // The schema's login user; SSH keys without a user go to the image's default user.
    let mut keys = c.ssh_authorized_keys.clone();
    if let Some(md) = &metadata {
        keys.extend(md.public_keys.iter().cloned());
    }
    if let Some(u) = &c.user {
        let mut user = User {
            passwd: u.password_hash.clone(),
            lock_passwd: u.password_hash.is_none(),
            ssh_authorized_keys: keys,
            ..User::default_user()
        };
        user.name = u.name.clone();
        user.gecos = None;
        plan.users.push(user);
    } else if !keys.is_empty() {
        let mut user = User::default_user();
        user.ssh_authorized_keys = keys;
        plan.users.push(user);
    }

    if let Some(cmd) = &c.commands.runcmd {
        plan.runcmd.push(Command::Shell(cmd.clone()));
    }

    // cloud-config documents: vendor-data first (lower precedence), then user-data.
    for (name, text) in [
        ("guestinfo.vendordata", g.vendordata.as_deref()),
        ("guestinfo.userdata", g.userdata.as_deref()),
    ] {
        if let Some(text) = text {
            match super::cloudconfig::overlay(&mut plan, text, &g.flat) {
                Ok(notes) => {
                    for n in notes {
                        tracing::info!(source = name, "{n}");
                    }
                }
                Err(message) => {
                    issues.push(Issue { step: "sources", message: format!("{name}: {message}") })
                }
            }
        }
    }
    (plan, issues)
}

/// Adds a `sources` record first and charges each issue to its step's record: the step is
/// marked failed with the issue as its error (a record is added for steps that did not run).
pub fn apply_issues(records: &mut Vec<StepRecord>, g: &Gathered, issues: &[Issue], gather_ms: u64) {
    let mut source_errors: Vec<String> = g.errors.iter().map(ToString::to_string).collect();
    source_errors.extend(issues.iter().filter(|i| i.step == "sources").map(|i| i.message.clone()));
    let names: Vec<&str> = g.sources.iter().map(|s| s.name.as_str()).collect();
    records.insert(
        0,
        StepRecord {
            name: "sources".into(),
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
            name: "role".into(),
            status: StepStatus::Skipped,
            detail: why.clone(),
            error: None,
            duration_ms: 0,
        });
    }
    let mut by_step: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for i in issues.iter().filter(|i| i.step != "sources") {
        by_step.entry(i.step).or_default().push(&i.message);
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
