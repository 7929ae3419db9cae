//! `capstan-agent freeze`: prepare a running parent to be forked (vSphere Instant Clone, the
//! lab's `capstan lab clone`).
//!
//! In order: the journal synchronized to disk (journald's varlink `Synchronize`, what
//! `journalctl --sync` asks), every filesystem synced, the marker written
//! ([`FROZEN_FILE`], on `/run`: a reboot is not a fork), the `CAPSTAN-FROZEN` console line
//! (with the parent's facts), `guestinfo.capstan.state = frozen ...` where guestinfo is
//! writable, and on VMware the `instantclone.freeze` RPC, which returns once the VM runs
//! again (as a child, or as the parent unfrozen). The daemon sees the marker and asks the
//! instance's identity every [`FROZEN_POLL`](super::generation::FROZEN_POLL): a child's
//! first action after resume is that check (or the vmgenid uevent, where the kernel sends
//! it). The agent's own state is written atomically and synced at each record, so the only
//! writer to stop is the journal.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::console::{self, Facts};
use crate::guestinfo::backdoor::rpci::Port;
use crate::guestinfo::backdoor::Backdoor;
use crate::guestinfo::{Guestinfo, GuestinfoError};
use crate::root::{FileOpts, Root, RootError};
use crate::steps::{StepRecord, StepStatus};

/// The marker of a frozen parent, inside the root.
pub const FROZEN_FILE: &str = "/run/capstan/frozen.json";
/// journald's varlink socket.
pub const JOURNAL_VARLINK: &str = "/run/systemd/journal/io.systemd.journal";
/// VMware's freeze RPC (what `vmware-rpctool "instantclone.freeze"` sends).
pub const INSTANTCLONE_FREEZE: &str = "instantclone.freeze";
/// The guestinfo key the state is published under (`guestinfo.capstan.state`).
pub const STATE_KEY: &str = "capstan.state";

/// The hypervisor call that freezes the VM for forking.
pub trait ForkRpc: std::fmt::Debug {
    /// Freezes; returns (the host's reply) once the VM runs again.
    fn freeze(&self) -> Result<String, GuestinfoError>;
}

impl<P: Port + Send + std::fmt::Debug> ForkRpc for Backdoor<P> {
    fn freeze(&self) -> Result<String, GuestinfoError> {
        self.command(INSTANTCLONE_FREEZE)
    }
}

/// The marker's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frozen {
    /// Seconds since the epoch when the parent froze.
    pub at: u64,
    /// The parent's facts at that moment.
    pub parent: Facts,
}

/// What `freeze` is told.
#[derive(Debug)]
pub struct FreezeOptions {
    /// Where the effects go.
    pub root: Root,
    /// On the running system (journal, sync of every filesystem, the console device).
    pub live: bool,
    /// Where to publish `capstan.state` (none, or read-only, is fine).
    pub guestinfo: Option<Box<dyn Guestinfo>>,
    /// The hypervisor's freeze call (VMware), if any.
    pub rpc: Option<Box<dyn ForkRpc>>,
}

/// What `freeze` did.
#[derive(Debug, Clone, Serialize)]
pub struct FreezeReport {
    /// Each step, timed.
    pub steps: Vec<StepRecord>,
    /// The marker written.
    pub frozen: Frozen,
    /// With a freeze RPC: how long until it returned (the VM ran again).
    pub resumed_after_ms: Option<u64>,
}

/// Why the VM could not be frozen. Nothing is left marked frozen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FreezeError {
    /// Syncing or writing the marker failed.
    #[error("freeze: {what}")]
    Root {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: RootError,
    },
    /// The hypervisor refused to freeze.
    #[error("freeze: the {INSTANTCLONE_FREEZE} RPC")]
    Rpc(#[source] GuestinfoError),
}

fn timed<T>(
    steps: &mut Vec<StepRecord>,
    name: &str,
    f: impl FnOnce() -> Result<(StepStatus, String), T>,
) -> Result<(), T> {
    let t = Instant::now();
    let r = f();
    let duration_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (status, detail) = match &r {
        Ok((s, d)) => (*s, d.clone()),
        Err(_) => (StepStatus::Failed, String::new()),
    };
    steps.push(StepRecord { name: name.into(), status, detail, error: None, duration_ms });
    r.map(|_| ())
}

/// One varlink call on journald's socket: `io.systemd.Journal.Synchronize` (journald writes
/// out everything it holds and fsyncs before it answers).
pub fn journal_synchronize(socket: &std::path::Path) -> std::io::Result<()> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"{\"method\":\"io.systemd.Journal.Synchronize\",\"parameters\":{}}\0")?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    while !reply.contains(&0) && reply.len() < 64 * 1024 {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    let end = reply.iter().position(|b| *b == 0).unwrap_or(reply.len());
    let v: serde_json::Value = serde_json::from_slice(&reply[..end])
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    match v.get("error") {
        Some(e) => Err(std::io::Error::other(format!("journald answered {e}"))),
        None => Ok(()),
    }
}

fn journal_step(live: bool) -> (StepStatus, String) {
    let sock = std::path::Path::new(JOURNAL_VARLINK);
    if !live {
        return (StepStatus::Skipped, "not under --root".into());
    }
    if !sock.exists() {
        return (StepStatus::Skipped, format!("no {JOURNAL_VARLINK}"));
    }
    match journal_synchronize(sock) {
        Ok(()) => (StepStatus::Ok, "journald synchronized to disk".into()),
        // the journal is not worth refusing a fork for: recorded, not fatal
        Err(e) => (StepStatus::Failed, format!("journald Synchronize: {e}")),
    }
}

fn publish(gi: Option<&dyn Guestinfo>, value: &str) -> (StepStatus, String) {
    let Some(gi) = gi else { return (StepStatus::Skipped, "no guestinfo transport".into()) };
    match gi.set(STATE_KEY, value) {
        Ok(()) => (StepStatus::Ok, format!("guestinfo.{STATE_KEY} = {value}")),
        Err(GuestinfoError::ReadOnly(t)) => (StepStatus::Skipped, format!("{t} is read-only")),
        Err(e) => (StepStatus::Failed, crate::error::chain(&e)),
    }
}

/// Freezes this VM for forking (see the module docs).
pub fn freeze(o: &FreezeOptions) -> Result<FreezeReport, FreezeError> {
    let mut steps = Vec::new();
    let _ = timed::<()>(&mut steps, "journal-sync", || Ok(journal_step(o.live)));
    timed(&mut steps, "sync", || {
        if o.live {
            nix::unistd::sync();
            Ok((StepStatus::Ok, "every filesystem synced".into()))
        } else {
            o.root.sync().map(|()| (StepStatus::Ok, "the root synced".into()))
        }
    })
    .map_err(|source| FreezeError::Root { what: "sync", source })?;
    let at = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let frozen = Frozen { at, parent: console::facts(&o.root, o.live) };
    let json = serde_json::to_vec(&frozen).unwrap_or_default();
    timed(&mut steps, "marker", || {
        o.root
            .write(FROZEN_FILE, &json, FileOpts::mode(0o644))
            .map(|_| (StepStatus::Ok, format!("wrote {FROZEN_FILE}")))
    })
    .map_err(|source| FreezeError::Root { what: "write the marker", source })?;
    let id = frozen.parent.instance_id.clone().unwrap_or_default();
    let _ = timed::<()>(&mut steps, "guestinfo", || {
        Ok(publish(o.guestinfo.as_deref(), &format!("frozen instance-id={id}")))
    });
    let mut body = serde_json::to_value(&frozen.parent).unwrap_or_default();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("frozen_at".into(), at.into());
    }
    console::emit(&o.root, o.live, console::FROZEN_MARK, &body);
    let Some(rpc) = &o.rpc else {
        return Ok(FreezeReport { steps, frozen, resumed_after_ms: None });
    };
    let t = Instant::now();
    match rpc.freeze() {
        Ok(reply) => {
            let ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
            steps.push(StepRecord {
                name: INSTANTCLONE_FREEZE.into(),
                status: StepStatus::Ok,
                detail: format!("the VM runs again (host said {reply:?})"),
                error: None,
                duration_ms: ms,
            });
            Ok(FreezeReport { steps, frozen, resumed_after_ms: Some(ms) })
        }
        Err(e) => {
            // not frozen after all: take the marker back
            let _ = o.root.remove(FROZEN_FILE);
            let _ = publish(o.guestinfo.as_deref(), &format!("running instance-id={id}"));
            Err(FreezeError::Rpc(e))
        }
    }
}

/// The marker, when this VM is a frozen parent (or a child that has not re-identified yet).
pub fn frozen(root: &Root) -> Option<Frozen> {
    let b = root.read(FROZEN_FILE).ok()??;
    serde_json::from_slice(&b).ok()
}

/// Removes the marker (a child that became its own instance); true when there was one.
pub fn thaw(root: &Root) -> bool {
    root.remove(FROZEN_FILE).unwrap_or(false)
}
