//! Guestinfo over the VMware backdoor (what `vmware-rpctool "info-get guestinfo.KEY"` does).
//!
//! Access: VMware's monitor intercepts the `in` on port `0x5658` even at CPL 3 (it traps the
//! #GP that the I/O permission check raises), so any process can talk to it — that is why
//! guestinfo is readable by every user (CVE-2022-1706) — unless the VMX sets
//! `monitor_control.restrict_backdoor = "TRUE"`. Where the unprivileged path is refused the
//! `in` faults with SIGSEGV, which would kill us, so [`Backdoor::probe`] first checks CPUID
//! for VMware, then tries a GETVERSION call in a forked child; if the child dies it raises the
//! I/O privilege level with `iopl(3)` (needs CAP_SYS_RAWIO) and tries again the same way.
//! The high-bandwidth port (`0x5659`, `rep outsb`) is not used: guestinfo values are at most
//! 64 KiB, which the 4-bytes-per-call path moves in well under a second.

pub mod port;
pub mod rpci;

use std::sync::Mutex;

use super::{check_key, Guestinfo, GuestinfoError};
use rpci::{Port, NO_VALUE};

/// How the backdoor is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Plain `in` from user mode.
    Unprivileged,
    /// After `iopl(3)`.
    Privileged,
}

/// Guestinfo through RPCI. Generic over the port so tests can run it against a simulated host.
#[derive(Debug)]
pub struct Backdoor<P: Port = port::IoPort> {
    port: Mutex<P>,
    access: Access,
}

impl Backdoor<port::IoPort> {
    /// Checks for a VMware CPU, then finds a working access path (see the module docs).
    pub fn probe() -> Result<Self, GuestinfoError> {
        if !port::is_vmware_hypervisor() {
            return Err(GuestinfoError::NotVmware);
        }
        let access = port::probe_access().ok_or(GuestinfoError::NotVmware)?;
        Ok(Self { port: Mutex::new(port::IoPort::new(access)), access })
    }
}

impl<P: Port + Send + std::fmt::Debug> Backdoor<P> {
    /// Wraps an already working port (tests use a simulated host).
    pub fn with_port(port: P, access: Access) -> Self {
        Self { port: Mutex::new(port), access }
    }

    /// How the backdoor is reached.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Sends one RPCI command other than `info-get`/`info-set` (`instantclone.freeze`) and
    /// returns the host's reply text when it succeeded.
    pub fn command(&self, command: &'static str) -> Result<String, GuestinfoError> {
        let (ok, reply) = self.rpc(command.as_bytes())?;
        let text: String = String::from_utf8_lossy(&reply).chars().take(200).collect();
        if ok {
            Ok(text)
        } else {
            Err(GuestinfoError::Refused { command, reply: text })
        }
    }

    fn rpc(&self, msg: &[u8]) -> Result<(bool, Vec<u8>), GuestinfoError> {
        let mut port = self.port.lock().unwrap_or_else(|e| e.into_inner());
        // A checkpoint (snapshot, vMotion) mid-message makes the host drop it; resend.
        let mut tries = 0;
        loop {
            match rpci::rpc(&mut *port, msg) {
                Err(rpci::RpciError::Checkpoint(_)) if tries < 3 => tries += 1,
                other => return Ok(other?),
            }
        }
    }
}

impl<P: Port + Send + std::fmt::Debug> Guestinfo for Backdoor<P> {
    fn transport(&self) -> &'static str {
        "vmware-backdoor"
    }

    fn get(&self, key: &str) -> Result<Option<String>, GuestinfoError> {
        check_key(key)?;
        let (ok, reply) = self.rpc(&rpci::info_get(key))?;
        if !ok {
            if reply == NO_VALUE {
                return Ok(None);
            }
            return Err(GuestinfoError::Refused {
                command: "info-get",
                reply: String::from_utf8_lossy(&reply).chars().take(200).collect(),
            });
        }
        String::from_utf8(reply).map(Some).map_err(|_| GuestinfoError::NotUtf8(key.to_owned()))
    }

    fn set(&self, key: &str, value: &str) -> Result<(), GuestinfoError> {
        check_key(key)?;
        // The host cannot store an empty value; cloud-init writes a single space instead.
        let value = if value.is_empty() { " " } else { value };
        let (ok, reply) = self.rpc(&rpci::info_set(key, value))?;
        if ok {
            Ok(())
        } else {
            Err(GuestinfoError::Refused {
                command: "info-set",
                reply: String::from_utf8_lossy(&reply).chars().take(200).collect(),
            })
        }
    }
}
