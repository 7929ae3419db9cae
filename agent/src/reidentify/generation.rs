//! Noticing that this VM is a new generation: forked (an instant clone), restored from a
//! snapshot, or resumed from saved state.
//!
//! The VM Generation ID (ACPI `VMGENCTR` / `VM_GEN_COUNTER`; QEMU's `-device vmgenid`,
//! vSphere's generation counter) changes on every fork. What Linux tells user space differs by
//! version, read from `drivers/virt/vmgenid.c`:
//!
//! - 5.18 and later: the driver reseeds the kernel's RNG on a change
//!   (`add_vmfork_randomness`). Debian 12's 6.1 does this, and nothing more: no uevent, no
//!   sysfs value. The generation id itself is never exposed to user space.
//! - 6.8, and 6.10 and later: it also sends a `KOBJ_CHANGE` uevent with `NEW_VMGENID=1` on
//!   the device (added in 2024 as ad6bcdad2b67, reverted in 6.9, restored with the platform
//!   driver).
//!
//! So the agent listens for that uevent ([`UeventListener`]) where the kernel sends one, and
//! otherwise relies on its cheap instance-id probe (`sources::identity_of`), polled every
//! [`FROZEN_POLL`] while the VM is frozen for forking (see `freeze`) and at the daemon's
//! normal interval otherwise. [`VmGenId::probe`] reads, from sysfs, whether the device is
//! there and whether the kernel's driver is bound (then the kernel reseeded its RNG).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the instance's identity is asked while the VM is frozen for forking: a child
/// resumes into this loop, so this bounds how late it notices that it is a child on kernels
/// that send no vmgenid uevent (10 ms on average). A frozen VM runs nothing (vSphere stops
/// it; the lab stops it and saves it), so the fast loop only costs in the moment between the
/// marker and the freeze.
pub const FROZEN_POLL: Duration = Duration::from_millis(20);

/// How often a daemon that is not frozen looks for the frozen marker (one `stat` of a tmpfs
/// file): how late it may enter the [`FROZEN_POLL`] loop after `capstan-agent freeze` wrote it.
pub const MARKER_POLL: Duration = Duration::from_millis(100);

/// The largest uevent datagram the kernel sends (`UEVENT_BUFFER_SIZE`).
pub const UEVENT_MAX: usize = 2048;

/// ACPI hardware ids of the generation counter device (Microsoft's spec, QEMU's `_HID`).
const VMGENID_HIDS: &[&str] = &["VMGENCTR", "QEMUVGID", "VM_GEN_COUNTER"];

/// One kernel uevent (a `NETLINK_KOBJECT_UEVENT` datagram): `ACTION@DEVPATH`, then
/// NUL-separated `KEY=VALUE` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    /// `add`, `remove`, `change`, ...
    pub action: String,
    /// The device's path under `/sys`.
    pub devpath: String,
    /// The fields.
    pub vars: BTreeMap<String, String>,
}

/// A datagram that is not a kernel uevent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UeventError {
    /// Nothing in it.
    #[error("empty uevent")]
    Empty,
    /// Longer than any uevent the kernel sends.
    #[error("uevent of {0} bytes is longer than the kernel's {UEVENT_MAX}")]
    TooLong(usize),
    /// udev's re-broadcast (`libudev` header), not the kernel's.
    #[error("a udev message, not a kernel uevent")]
    Udev,
    /// The first field is not `ACTION@DEVPATH`.
    #[error("uevent header {0:?} is not ACTION@DEVPATH")]
    Header(String),
    /// A field is not `KEY=VALUE` text.
    #[error("uevent field {0:?} is not KEY=VALUE")]
    Field(String),
}

impl Uevent {
    /// Parses one datagram. Strict: the kernel's format only (header, then `KEY=VALUE`
    /// fields of printable ASCII, `ACTION` and `DEVPATH` agreeing with the header).
    pub fn parse(buf: &[u8]) -> Result<Uevent, UeventError> {
        if buf.len() > UEVENT_MAX {
            return Err(UeventError::TooLong(buf.len()));
        }
        if buf.starts_with(b"libudev\0") {
            return Err(UeventError::Udev);
        }
        let mut fields = buf.split(|b| *b == 0).filter(|f| !f.is_empty());
        let head = fields.next().ok_or(UeventError::Empty)?;
        let text = |f: &[u8]| {
            std::str::from_utf8(f)
                .ok()
                .filter(|s| s.bytes().all(|b| (0x20..0x7f).contains(&b)))
                .map(str::to_owned)
        };
        let lossy = |f: &[u8]| String::from_utf8_lossy(f).chars().take(80).collect::<String>();
        let head = text(head).ok_or_else(|| UeventError::Header(lossy(head)))?;
        let (action, devpath) = head
            .split_once('@')
            .filter(|(a, d)| !a.is_empty() && d.starts_with('/'))
            .ok_or_else(|| UeventError::Header(head.chars().take(80).collect()))?;
        let mut vars = BTreeMap::new();
        for f in fields {
            let kv = text(f).ok_or_else(|| UeventError::Field(lossy(f)))?;
            let (k, v) = kv
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| UeventError::Field(kv.chars().take(80).collect()))?;
            vars.insert(k.to_owned(), v.to_owned());
        }
        for (key, want) in [("ACTION", action), ("DEVPATH", devpath)] {
            if vars.get(key).is_some_and(|v| v != want) {
                return Err(UeventError::Header(head.chars().take(80).collect()));
            }
        }
        Ok(Uevent { action: action.to_owned(), devpath: devpath.to_owned(), vars })
    }

    /// True for the vmgenid driver's "new generation" event.
    pub fn is_new_vmgenid(&self) -> bool {
        self.action == "change" && self.vars.get("NEW_VMGENID").map(String::as_str) == Some("1")
    }
}

/// What sysfs says about the generation counter device.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VmGenId {
    /// The ACPI device (`VMGENCTR:00`, `QEMUVGID:00`), when there is one.
    pub device: Option<String>,
    /// The kernel's `vmgenid` driver is bound to it: the kernel reseeds its RNG on a change.
    pub driver_bound: bool,
}

impl VmGenId {
    /// Reads `SYS/bus/acpi/devices/*/hid` for the device and its `driver` link (an ACPI
    /// driver up to 6.9) or its physical node's (a platform driver from 6.10). Never fails:
    /// what cannot be read counts as absent.
    pub fn probe(sys: &Path) -> VmGenId {
        let dir = sys.join("bus/acpi/devices");
        let Ok(entries) = std::fs::read_dir(&dir) else { return VmGenId::default() };
        let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        for dev in names {
            let hid = std::fs::read_to_string(dev.join("hid")).unwrap_or_default();
            let modalias = std::fs::read_to_string(dev.join("modalias")).unwrap_or_default();
            let is_genid = VMGENID_HIDS.contains(&hid.trim())
                || modalias.to_ascii_uppercase().contains(":VM_GEN_COUNTER:");
            if !is_genid {
                continue;
            }
            let bound = |p: PathBuf| {
                std::fs::read_link(&p)
                    .ok()
                    .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .is_some_and(|n| n == "vmgenid")
            };
            let driver_bound = bound(dev.join("driver")) || bound(dev.join("physical_node/driver"));
            let device = dev.file_name().map(|n| n.to_string_lossy().into_owned());
            return VmGenId { device, driver_bound };
        }
        VmGenId::default()
    }
}

/// A `NETLINK_KOBJECT_UEVENT` socket bound to the kernel's multicast group.
#[derive(Debug)]
pub struct UeventListener {
    sock: netlink_sys::Socket,
}

impl UeventListener {
    /// Opens the socket (any user may listen to the kernel's group).
    pub fn open() -> std::io::Result<UeventListener> {
        let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_KOBJECT_UEVENT)?;
        // group 1: the kernel's events (udev re-broadcasts on group 2)
        sock.bind(&netlink_sys::SocketAddr::new(0, 1))?;
        Ok(UeventListener { sock })
    }

    /// Blocks until the next kernel uevent and parses it; datagrams from anyone but the
    /// kernel (port 0) are refused. Receiving fails only when the socket does.
    pub fn next(&self) -> std::io::Result<Result<Uevent, UeventError>> {
        let mut buf = Vec::with_capacity(UEVENT_MAX + 1);
        let (_, from) = self.sock.recv_from(&mut buf, 0)?;
        if from.port_number() != 0 {
            return Ok(Err(UeventError::Header(format!(
                "sent by port {}, not the kernel",
                from.port_number()
            ))));
        }
        Ok(Uevent::parse(&buf))
    }

    /// Runs on a thread of its own, calling `on_change` for every vmgenid uevent, until the
    /// socket fails or `on_change` returns false.
    pub fn spawn(self, mut on_change: impl FnMut() -> bool + Send + 'static) {
        let spawned = std::thread::Builder::new().name("uevent".into()).spawn(move || loop {
            match self.next() {
                Ok(Ok(ev)) if ev.is_new_vmgenid() => {
                    tracing::info!(devpath = %ev.devpath, "vmgenid: new VM generation");
                    if !on_change() {
                        return;
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!("uevent refused: {e}"),
                Err(e) => {
                    tracing::warn!("uevent socket: {e}; relying on the identity poll");
                    return;
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("uevent listener thread: {e}; relying on the identity poll");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dgram(fields: &[&str]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in fields {
            v.extend_from_slice(f.as_bytes());
            v.push(0);
        }
        v
    }

    #[test]
    fn the_vmgenid_uevent_is_recognised() {
        // as kobject_uevent_env sends it for the platform device (6.10 and later)
        let ev = Uevent::parse(&dgram(&[
            "change@/devices/platform/VMGENCTR:00",
            "ACTION=change",
            "DEVPATH=/devices/platform/VMGENCTR:00",
            "SUBSYSTEM=platform",
            "NEW_VMGENID=1",
            "DRIVER=vmgenid",
            "MODALIAS=acpi:VMGENCTR:VM_GEN_COUNTER:",
            "SEQNUM=2391",
        ]))
        .unwrap();
        assert!(ev.is_new_vmgenid());
        assert_eq!(ev.devpath, "/devices/platform/VMGENCTR:00");
        let other = Uevent::parse(&dgram(&[
            "add@/devices/virtual/net/veth0",
            "ACTION=add",
            "DEVPATH=/devices/virtual/net/veth0",
            "SUBSYSTEM=net",
        ]))
        .unwrap();
        assert!(!other.is_new_vmgenid());
        // the key alone on another action is not a generation change
        let odd =
            Uevent::parse(&dgram(&["add@/devices/x", "ACTION=add", "NEW_VMGENID=1"])).unwrap();
        assert!(!odd.is_new_vmgenid());
    }

    #[test]
    fn malformed_and_hostile_datagrams_are_refused() {
        assert_eq!(Uevent::parse(b""), Err(UeventError::Empty));
        assert_eq!(Uevent::parse(b"\0\0"), Err(UeventError::Empty));
        assert_eq!(Uevent::parse(b"libudev\0\xfe\xed\xca\xfe"), Err(UeventError::Udev));
        assert!(matches!(Uevent::parse(b"change\0"), Err(UeventError::Header(_))));
        assert!(matches!(Uevent::parse(b"@/x\0"), Err(UeventError::Header(_))));
        assert!(matches!(Uevent::parse(b"change@rel\0"), Err(UeventError::Header(_))));
        assert!(matches!(
            Uevent::parse(&dgram(&["change@/a", "NOEQUALS"])),
            Err(UeventError::Field(_))
        ));
        assert!(matches!(Uevent::parse(&dgram(&["change@/a", "=v"])), Err(UeventError::Field(_))));
        assert!(matches!(Uevent::parse(b"change@/a\0K=\xff\xfe\0"), Err(UeventError::Field(_))));
        assert!(matches!(Uevent::parse(b"change@/a\0K=line\nbreak\0"), Err(UeventError::Field(_))));
        // the fields must agree with the header
        assert!(matches!(
            Uevent::parse(&dgram(&["change@/a", "ACTION=add", "NEW_VMGENID=1"])),
            Err(UeventError::Header(_))
        ));
        let long = vec![b'a'; UEVENT_MAX + 1];
        assert_eq!(Uevent::parse(&long), Err(UeventError::TooLong(UEVENT_MAX + 1)));
    }

    proptest::proptest! {
        // what the fuzz target checks, on every `cargo test`: no panic, and what parses keeps
        // the kernel format's invariants
        #[test]
        fn any_datagram_parses_or_is_refused(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            fields in proptest::collection::vec("[A-Z_]{1,8}=[ -~]{0,12}", 0..6),
        ) {
            let mut framed = b"change@/devices/x\0".to_vec();
            for f in &fields {
                framed.extend_from_slice(f.as_bytes());
                framed.push(0);
            }
            for d in [&data, &framed] {
                if let Ok(ev) = Uevent::parse(d) {
                    proptest::prop_assert!(ev.devpath.starts_with('/'));
                    for (k, v) in &ev.vars {
                        proptest::prop_assert!(!k.is_empty() && !k.contains('='));
                        proptest::prop_assert!(v.bytes().all(|b| (0x20..0x7f).contains(&b)));
                    }
                    proptest::prop_assert!(!ev.is_new_vmgenid() || ev.action == "change");
                }
            }
        }
    }

    #[test]
    fn sysfs_probe_finds_the_device_and_its_driver() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path();
        assert_eq!(VmGenId::probe(sys), VmGenId::default());
        let acpi = sys.join("bus/acpi/devices");
        std::fs::create_dir_all(acpi.join("PNP0501:00")).unwrap();
        std::fs::write(acpi.join("PNP0501:00/hid"), "PNP0501\n").unwrap();
        // 6.1 with QEMU's device, the ACPI driver not bound (module not loaded)
        let dev = acpi.join("QEMUVGID:00");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("hid"), "QEMUVGID\n").unwrap();
        let p = VmGenId::probe(sys);
        assert_eq!(p.device.as_deref(), Some("QEMUVGID:00"));
        assert!(!p.driver_bound);
        // bound: the driver link names vmgenid
        std::fs::create_dir_all(sys.join("bus/acpi/drivers/vmgenid")).unwrap();
        std::os::unix::fs::symlink(sys.join("bus/acpi/drivers/vmgenid"), dev.join("driver"))
            .unwrap();
        assert!(VmGenId::probe(sys).driver_bound);
        // 6.10 and later: the platform device's driver, found through physical_node
        let d2 = tempfile::tempdir().unwrap();
        let sys = d2.path();
        let dev = sys.join("bus/acpi/devices/VMGENCTR:00");
        let plat = sys.join("devices/platform/VMGENCTR:00");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::create_dir_all(&plat).unwrap();
        std::fs::create_dir_all(sys.join("bus/platform/drivers/vmgenid")).unwrap();
        std::fs::write(dev.join("hid"), "VMGENCTR\n").unwrap();
        std::os::unix::fs::symlink(&plat, dev.join("physical_node")).unwrap();
        std::os::unix::fs::symlink(sys.join("bus/platform/drivers/vmgenid"), plat.join("driver"))
            .unwrap();
        let p = VmGenId::probe(sys);
        assert_eq!(p, VmGenId { device: Some("VMGENCTR:00".into()), driver_bound: true });
    }
}
