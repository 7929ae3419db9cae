//! A client for HAProxy's runtime API: the admin unix socket and its text protocol, one
//! command per connection (non-interactive mode).

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::haproxy::{slot_name, BACKEND_NAME};
use super::state::Op;

/// A runtime API failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The socket could not be reached or read.
    #[error("HAProxy runtime socket {path}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// HAProxy refused a command.
    #[error("HAProxy refused `{command}`: {answer}")]
    Refused {
        /// The command.
        command: String,
        /// HAProxy's answer.
        answer: String,
    },
    /// An answer did not parse.
    #[error("unexpected answer to `{command}`: {reason}")]
    Parse {
        /// The command.
        command: String,
        /// What is wrong.
        reason: String,
    },
}

/// One server line of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    /// Server name (`s1`…).
    pub name: String,
    /// `status` column: `UP`, `DOWN`, `MAINT`, `DRAIN`, `UP 1/3`, `no check`, ….
    pub status: String,
    /// `check_status` column (`L7OK`, `L4CON`, …).
    pub check_status: String,
    /// `addr` column (`10.0.0.11:6443`).
    pub addr: String,
    /// Current sessions.
    pub current_sessions: u64,
    /// Total sessions.
    pub total_sessions: u64,
}

/// The runtime API at one socket.
#[derive(Debug, Clone)]
pub struct RuntimeApi {
    socket: PathBuf,
    timeout: Duration,
}

fn haproxy_addr(a: SocketAddr) -> (String, u16) {
    (a.ip().to_string(), a.port())
}

impl RuntimeApi {
    /// A client for the socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        RuntimeApi { socket: socket.into(), timeout: Duration::from_secs(5) }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one command and returns HAProxy's answer.
    pub fn command(&self, command: &str) -> Result<String, RuntimeError> {
        let io = |source| RuntimeError::Io { path: self.socket.clone(), source };
        let mut s = UnixStream::connect(&self.socket).map_err(io)?;
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        s.write_all(command.as_bytes()).map_err(io)?;
        s.write_all(b"\n").map_err(io)?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(io)?;
        Ok(out)
    }

    /// Sends a command whose success answer is empty or one of `ok_markers`.
    fn expect_ok(&self, command: &str, ok_markers: &[&str]) -> Result<(), RuntimeError> {
        let answer = self.command(command)?;
        let t = answer.trim();
        if t.is_empty() || ok_markers.iter().any(|m| t.contains(m)) {
            Ok(())
        } else {
            Err(RuntimeError::Refused { command: command.into(), answer: t.into() })
        }
    }

    /// Applies one slot operation.
    pub fn apply(&self, op: &Op) -> Result<(), RuntimeError> {
        let srv = |slot: usize| format!("{BACKEND_NAME}/{}", slot_name(slot));
        match op {
            Op::Assign { slot, backend, drain } => {
                let (ip, port) = haproxy_addr(backend.addr());
                let s = srv(*slot);
                // Out of rotation first, so no connection sees a half-changed server.
                self.expect_ok(&format!("set server {s} state maint"), &[])?;
                self.expect_ok(
                    &format!("set server {s} addr {ip} port {port}"),
                    &["changed from", "no need to change"],
                )?;
                self.expect_ok(&format!("set weight {s} 1"), &[])?;
                let state = if *drain { "drain" } else { "ready" };
                self.expect_ok(&format!("set server {s} state {state}"), &[])
            }
            Op::Drain { slot } => {
                self.expect_ok(&format!("set server {} state drain", srv(*slot)), &[])
            }
            Op::Undrain { slot } => {
                let s = srv(*slot);
                self.expect_ok(&format!("set weight {s} 1"), &[])?;
                self.expect_ok(&format!("set server {s} state ready"), &[])
            }
            Op::Clear { slot } => {
                self.expect_ok(&format!("set server {} state maint", srv(*slot)), &[])
            }
        }
    }

    /// The servers of the control-plane backend, from `show stat`.
    pub fn servers(&self) -> Result<Vec<ServerStat>, RuntimeError> {
        let command = "show stat";
        let out = self.command(command)?;
        let perr =
            |reason: &str| RuntimeError::Parse { command: command.into(), reason: reason.into() };
        let mut lines = out.lines();
        let header =
            lines.next().and_then(|h| h.strip_prefix("# ")).ok_or_else(|| perr("no header"))?;
        let cols: Vec<&str> = header.split(',').collect();
        let idx = |name: &str| cols.iter().position(|c| *c == name).ok_or_else(|| perr(name));
        let (px, sv, st, ck, ad, scur, stot) = (
            idx("pxname")?,
            idx("svname")?,
            idx("status")?,
            idx("check_status")?,
            idx("addr")?,
            idx("scur")?,
            idx("stot")?,
        );
        let mut out_v = Vec::new();
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() < cols.len() || f[px] != BACKEND_NAME || f[sv] == "BACKEND" {
                continue;
            }
            out_v.push(ServerStat {
                name: f[sv].into(),
                status: f[st].into(),
                check_status: f[ck].into(),
                addr: f[ad].into(),
                current_sessions: f[scur].parse().unwrap_or(0),
                total_sessions: f[stot].parse().unwrap_or(0),
            });
        }
        Ok(out_v)
    }
}
