//! The daemon's heartbeats: when `heartbeat.url` is set (and every `heartbeat.*` value is
//! valid), the sender ([`crate::heartbeat::spawn_observed`]) runs on its own task with the
//! role's checks as facts, and each beat's short status goes to `guestinfo.capstan.status`
//! where the guestinfo transport can write (VMware's backdoor, a guestinfo directory).
//!
//! The role never waits on the hub: the sender only reads the role's state, on a blocking
//! thread, and a hub that is away only makes the sender back off. Failures are logged at a
//! bounded rate and never stop the daemon.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::guestinfo::Guestinfo;
use crate::heartbeat::wire::{Check, MAX_DETAIL, MAX_SHORT};
use crate::heartbeat::{self, Heartbeat, HeartbeatSettings, Outcome, Sender};
use crate::roles::{Role, RoleSettings};
use crate::sources::Gathered;
use crate::types::{Hostname, InstanceId};

use super::Shared;

/// What the facts closure needs about the node, fixed at start.
struct Node {
    instance_id: InstanceId,
    hostname: Hostname,
    role: Option<(&'static dyn Role, Option<RoleSettings>)>,
    role_name: &'static str,
    shared: Shared,
}

/// Starts heartbeats for the configuration gathered at boot, or says in `shared` why not.
/// Takes the guestinfo transport out of `first` for the status.
pub(super) async fn start(
    first: &mut Gathered,
    role: Option<&'static dyn Role>,
    shared: &Shared,
) -> Option<Sender> {
    let (sender, state) = match try_start(first, role, shared) {
        Ok(Some((sender, url))) => {
            tracing::info!(hub = %url, "heartbeats started");
            (Some(sender), format!("sending to {url}"))
        }
        Ok(None) => (None, "off (heartbeat.url unset)".to_owned()),
        Err(why) => {
            tracing::error!("heartbeats not started: {why}");
            (None, format!("not started: {why}"))
        }
    };
    shared.write().await.heartbeat = state;
    sender
}

/// The sender and the hub's URL; `None` when heartbeats are off; why not, naming the keys.
fn try_start(
    first: &mut Gathered,
    role: Option<&'static dyn Role>,
    shared: &Shared,
) -> Result<Option<(Sender, String)>, String> {
    let refused: Vec<String> =
        first.config.errors_under("heartbeat.").map(ToString::to_string).collect();
    if !refused.is_empty() {
        return Err(refused.join("; "));
    }
    let chain = |e: heartbeat::sender::SettingsError| crate::error::chain(&e);
    let Some(settings) = HeartbeatSettings::from_config(&first.config.heartbeat).map_err(chain)?
    else {
        return Ok(None);
    };
    let node = Arc::new(node(first, role, shared));
    let publish = publisher(first.guestinfo.take(), shared.clone());
    let url = settings.url.clone();
    let sender =
        heartbeat::spawn_observed(settings, move || facts(&node), publish).map_err(chain)?;
    Ok(Some((sender, url)))
}

fn node(first: &Gathered, role: Option<&'static dyn Role>, shared: &Shared) -> Node {
    let hostname = first
        .config
        .hostname
        .clone()
        .or_else(|| nix::unistd::gethostname().ok()?.into_string().ok()?.parse().ok());
    let role_name = first.config.role.as_str();
    Node {
        instance_id: first.instance_id.clone(),
        hostname: hostname
            .or_else(|| format!("capstan-{role_name}").parse().ok())
            .unwrap_or_else(|| "capstan".parse().expect("a valid host name")),
        role: role.map(|r| (r, first.config.role_settings.clone())),
        role_name,
        shared: shared.clone(),
    }
}

fn bounded(s: &str, max: usize) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).collect();
    if out.len() > max {
        let mut cut = max.saturating_sub(3);
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// One heartbeat's content: identity, host facts and the role's checks, read now. Runs on a
/// blocking thread.
fn facts(n: &Node) -> Heartbeat {
    let (current, role_state) = {
        let s = n.shared.blocking_read();
        (s.instance_id.clone(), s.role.clone())
    };
    // The watch follows a new instance-id (an instant clone); the hub then sees the new node.
    let id = current.and_then(|s| s.parse().ok()).unwrap_or_else(|| n.instance_id.clone());
    let mut hb = Heartbeat::new(id, n.hostname.clone(), n.role_name);
    hb.boot_id = heartbeat::facts::boot_id();
    hb.uptime_s = heartbeat::facts::uptime_s();
    hb.bios_uuid = heartbeat::facts::bios_uuid();
    hb.host = heartbeat::facts::host_facts();
    let check = |name: &str, ok, detail: &str| Check {
        name: bounded(name, MAX_SHORT),
        ok,
        detail: bounded(detail, MAX_DETAIL),
    };
    if let Some((role, settings)) = &n.role {
        if role_state != format!("{}: running", n.role_name) {
            hb.checks.push(check("role", false, &role_state));
        }
        if let Some(s) = settings {
            hb.checks.extend(role.checks(s).iter().map(|c| check(c.name, c.ok, &c.detail)));
        }
    }
    hb
}

/// The observer: records the outcome for the status socket and publishes the short status.
fn publisher(
    gi: Option<Box<dyn Guestinfo>>,
    shared: Shared,
) -> impl Fn(&Heartbeat, Outcome) + Send + Sync + 'static {
    let writable = AtomicBool::new(gi.is_some());
    let failures = AtomicU64::new(0);
    move |hb: &Heartbeat, outcome: Outcome| {
        {
            let mut s = shared.blocking_write();
            s.heartbeat_last = Some(format!("{outcome:?} seq={}", hb.seq).to_lowercase());
        }
        let Some(gi) = gi.as_deref().filter(|_| writable.load(Ordering::Relaxed)) else {
            return;
        };
        match heartbeat::status::publish(gi, hb, outcome) {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(
                    "not publishing guestinfo.capstan.status: {} is read-only",
                    gi.transport()
                );
                writable.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                if failures.fetch_add(1, Ordering::Relaxed) % 60 == 0 {
                    tracing::warn!(
                        "publishing guestinfo.capstan.status: {}",
                        crate::error::chain(&e)
                    );
                }
            }
        }
    }
}
