//! The instance watch: one cheap question per poll ([`sources::identity_of`] the provider the
//! last gathering read: VMware's guestinfo keys that name the instance, a NoCloud seed's
//! `meta-data` instance-id, a config drive's `uuid`, EC2's `instance-id`; and the SMBIOS
//! UUID), a full gather only when its answer changes (and at the first poll), and, for a
//! gathered instance-id that differs from the one recorded, first boot (nothing recorded
//! yet) or a live re-identification ([`crate::reidentify`]: a clone of a running parent).
//!
//! When it polls: at the daemon's interval; every [`FROZEN_POLL`] while the VM is frozen for
//! forking (`capstan-agent freeze` left its marker, looked for every [`MARKER_POLL`]: a child
//! resumes into this loop, and its first action is this check); and at once when the kernel
//! sends its vmgenid uevent (a new VM generation), where it does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Shared;
use crate::guestinfo::{Guestinfo, Primed};
use crate::reidentify::generation::{UeventListener, FROZEN_POLL, MARKER_POLL};
use crate::reidentify::{self, freeze, Trigger};
use crate::roles::Role;
use crate::root::Root;
use crate::sources::vmware::IDENTITY_KEYS;
use crate::sources::{self, Chosen, Gathered, Identity, SourceOptions};
use crate::state::{State, Status};
use crate::steps::{Mode, StepId, StepRecord, StepStatus};

/// Called after a re-identification with the new status: the heartbeat with the new
/// identity (the daemon's heartbeat sender plugs in here). Returns what it did, or why not.
pub type ReidentifiedHook = Box<dyn FnMut(&Status) -> Result<String, String> + Send>;

/// The watch's state between polls.
pub struct Watch {
    opts: SourceOptions,
    root: Root,
    live: bool,
    /// The transport the identity is read through, opened once (probing the VMware backdoor
    /// is not free) and handed to each gathering.
    gi: Option<Arc<dyn Guestinfo>>,
    /// The answer at the last poll; `None` before the first.
    last: Option<Identity>,
    /// The provider the last full gathering read (its identity is asked); `None` before it.
    provider: Option<Chosen>,
    /// A digest of what the role was configured with at the last gathering.
    role_print: Option<[u8; 32]>,
    /// Where a role restart is asked for (its identity changed).
    role_restart: Option<mpsc::Sender<()>>,
    /// The heartbeat hook.
    on_reidentified: Option<ReidentifiedHook>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("root", &self.root).field("live", &self.live).finish()
    }
}

/// What one poll found.
#[derive(Debug, Default)]
pub struct Poll {
    /// The instance-id after the poll (`None` when the identity did not change: unchanged).
    pub instance_id: Option<String>,
    /// The status of a re-run or re-identification, when the instance-id was new.
    pub rerun: Option<Status>,
    /// A new identity refused whole (nothing applied), one line per refused value.
    pub refused: Option<Vec<String>>,
}

/// A digest of the role and what configures it (the short host name and every setting the
/// role's record is charged with); secrets are hashed, never kept.
fn role_print(g: &Gathered) -> [u8; 32] {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    h.update(g.config.role.as_str().as_bytes());
    if let Some(n) = &g.config.hostname {
        h.update(n.short().as_bytes());
    }
    for (path, v) in &g.flat {
        if crate::boot::step_for(path) == StepId::Role {
            h.update(path.as_bytes());
            h.update(&[0]);
            h.update(v.value.as_bytes());
            h.update(&[0]);
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    out
}

impl Watch {
    /// A watch over the sources of `opts`, re-running first boot into `root`.
    pub fn new(opts: SourceOptions, root: Root, live: bool) -> Self {
        let gi = sources::guestinfo_transport(&opts).map(Arc::from);
        Watch {
            opts,
            root,
            live,
            gi,
            last: None,
            provider: None,
            role_print: None,
            role_restart: None,
            on_reidentified: None,
        }
    }

    /// Asks for a role restart on `tx` when a re-identification changes the role's identity.
    pub fn with_role_restart(mut self, tx: mpsc::Sender<()>) -> Self {
        self.role_restart = Some(tx);
        self
    }

    /// Runs `hook` after each re-identification (the heartbeat with the new identity).
    pub fn on_reidentified(mut self, hook: ReidentifiedHook) -> Self {
        self.on_reidentified = Some(hook);
        self
    }

    /// One poll, `trigger` saying what made it poll: the cheap question, then (only on a
    /// changed answer) the full gather and, for a new instance-id, first boot or a
    /// re-identification.
    pub fn poll_for(&mut self, trigger: Trigger) -> Poll {
        let detected = Instant::now();
        let identity = match &self.provider {
            Some(p) => sources::identity_of(p, &self.opts, self.gi.as_deref()),
            None => sources::identity(&self.opts, self.gi.as_deref()),
        };
        if self.last.as_ref() == Some(&identity) {
            return Poll::default();
        }
        let probed = u64::try_from(detected.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut g = match self.transport_for_gather(&identity) {
            Some(gi) => sources::gather_with(&self.opts, Some(gi)),
            None => sources::gather(&self.opts),
        };
        self.last = Some(identity);
        g.phases.insert(0, sources::Phase { name: "identity", us: probed });
        if g.refused {
            // a provider that answers badly (a seed being rewritten, IMDS down) is not a new
            // instance: ask again at the next poll
            tracing::warn!(
                provider = g.provider.name(),
                "provider data refused: {:?}",
                g.error_lines()
            );
            self.last = None;
            return Poll::default();
        }
        if self.provider.as_ref() != Some(&g.provider) {
            // the answer to compare with from now on is the chosen provider's
            self.last = Some(sources::identity_of(&g.provider, &self.opts, self.gi.as_deref()));
            self.provider = Some(g.provider.clone());
        }
        let current = State::new(self.root.clone()).current_instance().ok().flatten();
        let id = g.instance_id.to_string();
        let gather_ms = u64::try_from(detected.elapsed().as_millis()).unwrap_or(u64::MAX);
        if current.as_deref() == Some(id.as_str()) {
            self.role_print = Some(role_print(&g));
            return Poll { instance_id: Some(id), ..Poll::default() };
        }
        if current.is_none() {
            tracing::info!(new = %id, "no instance recorded: running first boot");
            let mode = if self.live { Mode::Live } else { Mode::Rooted { run_commands: false } };
            let st = crate::boot::rerun(&g, &self.root, mode, self.live, detected, gather_ms);
            self.role_print = Some(role_print(&g));
            return Poll { instance_id: Some(id), rerun: Some(st), ..Poll::default() };
        }
        self.reidentify(&g, trigger, detected, gather_ms, id)
    }

    /// The watch's own transport for a gathering (none: the gathering looks for one), with the
    /// values the identity probe just read primed (VMware's [`IDENTITY_KEYS`]): the gathering
    /// does not ask the transport for them again.
    fn transport_for_gather(&self, identity: &Identity) -> Option<Box<dyn Guestinfo>> {
        let gi = self.gi.clone()?;
        let known: Vec<(String, String)> = match self.provider {
            None | Some(Chosen::Vmware) => IDENTITY_KEYS
                .iter()
                .zip(&identity.0)
                .filter_map(|(k, v)| Some(((*k).to_owned(), v.clone()?)))
                .collect(),
            Some(_) => Vec::new(),
        };
        Some(Box::new(Primed::new(gi, known)))
    }

    fn reidentify(
        &mut self,
        g: &Gathered,
        trigger: Trigger,
        detected: Instant,
        gather_ms: u64,
        id: String,
    ) -> Poll {
        let root = self.root.clone();
        let req =
            reidentify::Request { root: &root, live: self.live, trigger, detected, gather_ms };
        let mut after = |st: &Status| self.after_reidentify(g, st);
        match reidentify::run(g, &req, &mut after) {
            // the steps after the re-identified line go on on their own thread
            reidentify::Outcome::Done(st, _later) => {
                Poll { instance_id: Some(id), rerun: Some(*st), ..Poll::default() }
            }
            reidentify::Outcome::Refused(lines) => {
                // asked again at the next poll: an operator may fix the value
                self.last = None;
                Poll { refused: Some(lines), ..Poll::default() }
            }
        }
    }

    /// The daemon's records of a re-identification: the role's refresh, the heartbeat.
    fn after_reidentify(&mut self, g: &Gathered, st: &Status) -> Vec<StepRecord> {
        let t = Instant::now();
        let new_print = role_print(g);
        let old_print = self.role_print.replace(new_print);
        let role = crate::roles::get(g.config.role).map(|r: &dyn Role| r.id().as_str());
        let refresh = match (role, self.live) {
            (None, _) => Ok((StepStatus::Skipped, "no role".to_owned())),
            (Some(r), false) => Ok((StepStatus::Skipped, format!("{r}: not started under --root"))),
            (Some(r), true) if old_print == Some(new_print) => {
                Ok((StepStatus::Ok, format!("{r}: identity unchanged, kept serving")))
            }
            (Some(r), true) => match &self.role_restart {
                Some(tx) => match tx.try_send(()) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(())) => Ok((
                        StepStatus::Ok,
                        format!("{r}: identity changed, restarting it with the new settings"),
                    )),
                    Err(e) => Err(format!("{r}: asking for a restart: {e}")),
                },
                None => Ok((StepStatus::Skipped, format!("{r}: identity changed; not running"))),
            },
        };
        let mut out = vec![reidentify::record(StepId::RoleRefresh, t, refresh)];
        let t = Instant::now();
        let beat = match &mut self.on_reidentified {
            Some(hook) => hook(st).map(|d| (StepStatus::Ok, d)),
            None => Ok((StepStatus::Skipped, "heartbeats are not sent by this daemon".into())),
        };
        out.push(reidentify::record(StepId::HeartbeatIdentity, t, beat));
        out
    }

    /// Whether the VM is frozen for forking (the marker of `capstan-agent freeze`).
    fn frozen(&self) -> bool {
        self.root.resolve(freeze::FROZEN_FILE).map(|p| p.exists()).unwrap_or(false)
    }

    /// Polls until aborted (see the module docs), recording each poll in `shared`.
    pub async fn run(self, every: Duration, shared: Shared) {
        let (tx, mut uevents) = mpsc::channel::<()>(1);
        if self.live {
            match UeventListener::open() {
                Ok(l) => l.spawn(move || {
                    !matches!(tx.try_send(()), Err(mpsc::error::TrySendError::Closed(_)))
                }),
                Err(e) => tracing::warn!("uevent socket: {e}; relying on the identity poll"),
            }
        } else {
            drop(tx);
        }
        let mut watch = Some(self);
        // the first poll at once; then at `every`, every FROZEN_POLL while frozen (the marker
        // is looked at every MARKER_POLL: one stat of a tmpfs file), at once on a uevent
        let mut last_poll: Option<Instant> = None;
        loop {
            let frozen = watch.as_ref().is_some_and(Watch::frozen);
            let due = last_poll.map_or(Duration::ZERO, |t| every.saturating_sub(t.elapsed()));
            let trigger = if last_poll.is_none() {
                Trigger::Poll
            } else if frozen {
                tokio::select! {
                    _ = tokio::time::sleep(FROZEN_POLL) => Trigger::FrozenPoll,
                    Some(()) = uevents.recv() => Trigger::Uevent,
                }
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(due.min(MARKER_POLL)) => {
                        if due > MARKER_POLL {
                            continue;
                        }
                        Trigger::Poll
                    }
                    Some(()) = uevents.recv() => Trigger::Uevent,
                }
            };
            last_poll = Some(Instant::now());
            let Some(mut w) = watch.take() else {
                return;
            };
            let res = tokio::task::spawn_blocking(move || {
                let p = w.poll_for(trigger);
                (w, p)
            })
            .await;
            let mut s = shared.write().await;
            s.polls += 1;
            match res {
                Ok((w, p)) => {
                    watch = Some(w);
                    if let Some(id) = p.instance_id {
                        s.instance_id = Some(id);
                    }
                    if let Some(st) = p.rerun {
                        s.reruns += 1;
                        s.firstboot = Some(st);
                    }
                    if let Some(lines) = p.refused {
                        s.refused_identity = lines;
                    }
                }
                Err(e) => {
                    tracing::error!("instance watch: {e}");
                    return;
                }
            }
        }
    }
}

/// Starts the role and restarts it, with the sources gathered again, whenever the watch asks
/// (a re-identification changed its identity): the running one is told to stop and given
/// up to [`ROLE_STOP`] to do so; the daemon's stop reaches whichever is running.
pub(super) async fn supervise_role(
    role: &'static dyn Role,
    first: &Gathered,
    opts: SourceOptions,
    live: bool,
    shared: &Shared,
    stop_rx: tokio::sync::watch::Receiver<bool>,
    mut restart: mpsc::Receiver<()>,
) {
    let (inc_tx, inc_rx) = tokio::sync::watch::channel(false);
    super::start_role(role, first, live, shared, inc_rx).await;
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut inc_tx = inc_tx;
        let mut stop_rx = stop_rx;
        loop {
            tokio::select! {
                _ = stop_rx.wait_for(|v| *v) => { let _ = inc_tx.send(true); return; }
                r = restart.recv() => if r.is_none() { return },
            }
            let name = role.id().as_str();
            tracing::info!("{name}: identity changed, restarting the role");
            let _ = inc_tx.send(true);
            let t = Instant::now();
            while t.elapsed() < ROLE_STOP {
                let st = shared.read().await.role.clone();
                if st.ends_with(": stopped") || st.contains(": failed") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let so = opts.clone();
            let Ok(g) = tokio::task::spawn_blocking(move || sources::gather(&so)).await else {
                return;
            };
            let (tx, rx) = tokio::sync::watch::channel(false);
            inc_tx = tx;
            super::start_role(role, &g, live, &shared, rx).await;
        }
    });
}

/// How long a role being restarted may take to stop.
pub const ROLE_STOP: Duration = Duration::from_secs(10);
