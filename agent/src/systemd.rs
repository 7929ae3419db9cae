//! The agent's one seam with systemd: start, stop, restart and reload units, and ask whether a
//! unit is active, over D-Bus (`org.freedesktop.systemd1` on the system bus), never by spawning
//! `systemctl`.
//!
//! [`Systemd`] is the narrow trait callers take; [`SystemBus`] is the real implementation
//! (tested against a real systemd user manager in `tests/systemd_dbus.rs`). Like
//! `systemctl` (without `--no-block`), every job call waits until systemd reports the job
//! finished and fails unless its result is `done`, so "start" means the unit started.
//! [`block_on`] drives a call from synchronous code (the first-boot steps).
//!
//! The same connection reaches the two other systemd daemons a re-identified clone must tell
//! (see `reidentify`): systemd-networkd (`org.freedesktop.network1`: reload its files,
//! reconfigure a link, renew a DHCP lease) and systemd-hostnamed (`org.freedesktop.hostname1`:
//! the static and transient host name), as [`SystemBus`] methods.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt as _;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{Connection, MatchRule, MessageStream};

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const NETWORKD: &str = "org.freedesktop.network1";
const NETWORKD_PATH: &str = "/org/freedesktop/network1";
const NETWORKD_MANAGER: &str = "org.freedesktop.network1.Manager";
const HOSTNAMED: &str = "org.freedesktop.hostname1";
const HOSTNAMED_PATH: &str = "/org/freedesktop/hostname1";

/// How long [`SystemBus::connect`] waits for the system bus.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether systemd runs `unit` now, asked without the bus: systemd links
/// `/run/systemd/units/invocation:UNIT` for each unit with a running invocation. Lets a caller
/// skip a `try-reload-or-restart` that would do nothing (and need a bus that first boot's
/// early stage may not have yet).
pub fn unit_running(unit: &str) -> bool {
    let link = format!("/run/systemd/units/invocation:{}", unit_name(unit));
    std::fs::symlink_metadata(link).is_ok()
}

/// How long a job may take before the call gives up (systemd's own default start timeout is
/// 90 s; HAProxy and keepalived start in well under a second).
pub const JOB_TIMEOUT: Duration = Duration::from_secs(90);

/// A systemd call that failed. Names the operation and the unit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SystemdError {
    /// The system bus is not reachable (no systemd, or not allowed).
    #[error("connecting to the system bus")]
    Connect(#[source] Box<zbus::Error>),
    /// systemd refused the call or the bus failed.
    #[error("{op} {unit}")]
    Call {
        /// The operation (`start`, `reload`, ...).
        op: &'static str,
        /// The unit.
        unit: String,
        /// The cause.
        #[source]
        source: Box<zbus::Error>,
    },
    /// The job ran but did not succeed (`failed`, `timeout`, `canceled`, `dependency`, ...).
    #[error("{op} {unit}: the job finished with result {result:?}")]
    JobFailed {
        /// The operation.
        op: &'static str,
        /// The unit.
        unit: String,
        /// systemd's job result.
        result: String,
    },
    /// systemd did not report the job's end in time.
    #[error("{op} {unit}: no job result within {timeout:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The unit.
        unit: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// A runtime to drive the call from synchronous code could not start.
    #[error("starting a runtime for a systemd call")]
    Runtime(#[source] std::io::Error),
}

/// What the agent asks of systemd. Each job call returns once the job finished.
pub trait Systemd {
    /// `systemctl start UNIT`.
    fn start(&self, unit: &str) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// `systemctl stop UNIT`.
    fn stop(&self, unit: &str) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// `systemctl restart UNIT`.
    fn restart(&self, unit: &str) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// `systemctl reload UNIT` (fails if the unit is not running or cannot reload).
    fn reload(&self, unit: &str) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// `systemctl try-reload-or-restart UNIT`: reload (or restart) a running unit, leave a
    /// stopped one stopped.
    fn try_reload_or_restart(
        &self,
        unit: &str,
    ) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// `systemctl is-active UNIT`: the unit's `ActiveState` is `active` or `reloading`. A unit
    /// systemd has not loaded is not active.
    fn is_active(&self, unit: &str) -> impl Future<Output = Result<bool, SystemdError>> + Send;
}

/// The real systemd, over one system-bus connection.
#[derive(Debug, Clone)]
pub struct SystemBus {
    conn: Connection,
    timeout: Duration,
}

impl SystemBus {
    /// Connects to the system bus and subscribes to the manager's job signals, giving up
    /// after [`CONNECT_TIMEOUT`] (a socket-activated bus whose daemon cannot start yet would
    /// otherwise hold the caller).
    pub async fn connect() -> Result<Self, SystemdError> {
        let connect = async {
            let conn =
                Connection::system().await.map_err(|e| SystemdError::Connect(Box::new(e)))?;
            Self::subscribed(conn).await
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect).await.unwrap_or_else(|_| {
            Err(SystemdError::Connect(Box::new(zbus::Error::Failure(format!(
                "no answer on the system bus within {CONNECT_TIMEOUT:?}"
            )))))
        })
    }

    /// Connects to the manager on the bus at a D-Bus `address` (`unix:path=...`): a user
    /// manager's bus, for tests. (Not the managers' private sockets: systemd sends messages
    /// there with a well-known sender name, which zbus refuses.)
    pub async fn connect_at(address: &str) -> Result<Self, SystemdError> {
        let conn = zbus::connection::Builder::address(address)
            .map_err(|e| SystemdError::Connect(Box::new(e)))?
            .build()
            .await
            .map_err(|e| SystemdError::Connect(Box::new(e)))?;
        Self::subscribed(conn).await
    }

    async fn subscribed(conn: Connection) -> Result<Self, SystemdError> {
        // systemd sends JobRemoved only to subscribed clients
        conn.call_method(Some(DEST), PATH, Some(MANAGER), "Subscribe", &())
            .await
            .map_err(|e| SystemdError::Connect(Box::new(e)))?;
        Ok(SystemBus { conn, timeout: JOB_TIMEOUT })
    }

    /// The same connection with another bound on job waits.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        SystemBus { timeout, ..self }
    }

    /// Calls a manager method that queues a job (`StartUnit(name, mode)` and its siblings) and
    /// waits for the job's `JobRemoved` signal.
    async fn job(&self, op: &'static str, method: &str, unit: &str) -> Result<(), SystemdError> {
        let call = |e| SystemdError::Call { op, unit: unit.to_owned(), source: Box::new(e) };
        // Listen before queueing: a fast job may end before the reply reaches us.
        let rule = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface(MANAGER)
            .and_then(|b| b.member("JobRemoved"))
            .and_then(|b| b.path(PATH))
            .map(|b| b.build())
            .map_err(call)?;
        let mut signals =
            MessageStream::for_match_rule(rule, &self.conn, Some(64)).await.map_err(call)?;
        let reply = self
            .conn
            .call_method(Some(DEST), PATH, Some(MANAGER), method, &(unit_name(unit), "replace"))
            .await
            .map_err(call)?;
        let job: OwnedObjectPath = reply.body().deserialize().map_err(call)?;
        let wait = async {
            while let Some(msg) = signals.next().await {
                let msg = msg.map_err(call)?;
                // JobRemoved(u id, o job, s unit, s result)
                let Ok((_, path, _, result)) =
                    msg.body().deserialize::<(u32, OwnedObjectPath, String, String)>()
                else {
                    continue;
                };
                if path == job {
                    return Ok(result);
                }
            }
            Err(call(zbus::Error::Failure("the bus closed before the job ended".into())))
        };
        let result = tokio::time::timeout(self.timeout, wait).await.map_err(|_| {
            SystemdError::Timeout { op, unit: unit.to_owned(), timeout: self.timeout }
        })??;
        if result == "done" {
            Ok(())
        } else {
            Err(SystemdError::JobFailed { op, unit: unit.to_owned(), result })
        }
    }
}

impl SystemBus {
    /// One method call on another systemd daemon; `what` names it in errors.
    async fn daemon_call<B>(
        &self,
        (dest, path, iface): (&str, &str, &str),
        method: &str,
        what: String,
        body: &B,
    ) -> Result<(), SystemdError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let call = |e| SystemdError::Call { op: "call", unit: what.clone(), source: Box::new(e) };
        let fut = self.conn.call_method(Some(dest), path, Some(iface), method, body);
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map(|_| ()).map_err(call),
            Err(_) => Err(SystemdError::Timeout { op: "call", unit: what, timeout: self.timeout }),
        }
    }

    /// `networkctl reload`: networkd reads its `.network`/`.link`/`.netdev` files again and
    /// reconfigures the links whose files changed (`Manager.Reload`).
    pub async fn networkd_reload(&self) -> Result<(), SystemdError> {
        let to = (NETWORKD, NETWORKD_PATH, NETWORKD_MANAGER);
        self.daemon_call(to, "Reload", "systemd-networkd Reload".into(), &()).await
    }

    /// `networkctl reconfigure IFINDEX`: networkd drops what it set on the link and applies
    /// its matching `.network` file again (`Manager.ReconfigureLink`).
    pub async fn networkd_reconfigure(&self, ifindex: i32) -> Result<(), SystemdError> {
        let to = (NETWORKD, NETWORKD_PATH, NETWORKD_MANAGER);
        let what = format!("systemd-networkd ReconfigureLink {ifindex}");
        self.daemon_call(to, "ReconfigureLink", what, &(ifindex,)).await
    }

    /// `networkctl renew IFINDEX`: a new DHCP request on the link (`Manager.RenewLink`).
    pub async fn networkd_renew(&self, ifindex: i32) -> Result<(), SystemdError> {
        let to = (NETWORKD, NETWORKD_PATH, NETWORKD_MANAGER);
        let what = format!("systemd-networkd RenewLink {ifindex}");
        self.daemon_call(to, "RenewLink", what, &(ifindex,)).await
    }

    /// `hostnamectl hostname NAME`: hostnamed writes `/etc/hostname` and sets the kernel's
    /// name (`SetStaticHostname`, then `SetHostname`), and tells its watchers.
    pub async fn set_hostname(&self, name: &str) -> Result<(), SystemdError> {
        let to = (HOSTNAMED, HOSTNAMED_PATH, HOSTNAMED);
        let what = format!("systemd-hostnamed SetStaticHostname {name}");
        self.daemon_call(to, "SetStaticHostname", what, &(name, false)).await?;
        let what = format!("systemd-hostnamed SetHostname {name}");
        self.daemon_call(to, "SetHostname", what, &(name, false)).await
    }
}

/// The full unit name: `.service` added to a bare name, as `systemctl` does (the manager's
/// methods take full names only).
pub fn unit_name(unit: &str) -> String {
    const SUFFIXES: &[&str] = &[
        ".service",
        ".socket",
        ".target",
        ".timer",
        ".mount",
        ".automount",
        ".swap",
        ".path",
        ".slice",
        ".scope",
        ".device",
    ];
    if SUFFIXES.iter().any(|s| unit.ends_with(s)) {
        unit.to_owned()
    } else {
        format!("{unit}.service")
    }
}

/// Whether a D-Bus error is systemd's "unit not loaded".
fn no_such_unit(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _)
        if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit")
}

impl Systemd for SystemBus {
    async fn start(&self, unit: &str) -> Result<(), SystemdError> {
        self.job("start", "StartUnit", unit).await
    }
    async fn stop(&self, unit: &str) -> Result<(), SystemdError> {
        self.job("stop", "StopUnit", unit).await
    }
    async fn restart(&self, unit: &str) -> Result<(), SystemdError> {
        self.job("restart", "RestartUnit", unit).await
    }
    async fn reload(&self, unit: &str) -> Result<(), SystemdError> {
        self.job("reload", "ReloadUnit", unit).await
    }
    async fn try_reload_or_restart(&self, unit: &str) -> Result<(), SystemdError> {
        // systemctl's try-reload-or-restart is the manager's ReloadOrTryRestartUnit
        self.job("try-reload-or-restart", "ReloadOrTryRestartUnit", unit).await
    }
    async fn is_active(&self, unit: &str) -> Result<bool, SystemdError> {
        let op = "is-active";
        let call = |e| SystemdError::Call { op, unit: unit.to_owned(), source: Box::new(e) };
        let path: OwnedObjectPath = match self
            .conn
            .call_method(Some(DEST), PATH, Some(MANAGER), "GetUnit", &(unit_name(unit),))
            .await
        {
            Ok(reply) => reply.body().deserialize().map_err(call)?,
            Err(e) if no_such_unit(&e) => return Ok(false),
            Err(e) => return Err(call(e)),
        };
        let reply = self
            .conn
            .call_method(
                Some(DEST),
                path.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(UNIT, "ActiveState"),
            )
            .await
            .map_err(call)?;
        let value: OwnedValue = reply.body().deserialize().map_err(call)?;
        let state = String::try_from(value).map_err(|e| call(e.into()))?;
        Ok(matches!(state.as_str(), "active" | "reloading"))
    }
}

/// Runs a systemd call from synchronous code: on a runtime of its own, on this thread, or on a
/// helper thread when this thread already drives a runtime (which may not block).
pub fn block_on<T: Send, F>(f: impl FnOnce() -> F + Send) -> Result<T, SystemdError>
where
    F: Future<Output = Result<T, SystemdError>>,
{
    let run = move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(SystemdError::Runtime)?
            .block_on(f())
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(run).join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    } else {
        run()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_operation_and_unit() {
        let e = SystemdError::JobFailed {
            op: "start",
            unit: "haproxy.service".into(),
            result: "failed".into(),
        };
        assert_eq!(
            e.to_string(),
            r#"start haproxy.service: the job finished with result "failed""#
        );
        let e = SystemdError::Timeout {
            op: "reload",
            unit: "x.service".into(),
            timeout: Duration::from_secs(2),
        };
        assert_eq!(e.to_string(), "reload x.service: no job result within 2s");
        assert_eq!(unit_name("systemd-resolved"), "systemd-resolved.service");
        assert_eq!(unit_name("haproxy.service"), "haproxy.service");
        assert_eq!(unit_name("capstan.target"), "capstan.target");
    }
}
