//! Reseeding the kernel's RNG in a clone whose kernel did not.
//!
//! A fork copies the kernel's CRNG state: without a reseed, every child would draw the same
//! "random" bytes, and so the same machine-id and SSH host keys. Where the kernel's vmgenid
//! driver is bound it has already reseeded on the generation change
//! (`add_vmfork_randomness`); elsewhere (no vmgenid device, or a kernel without the driver)
//! the agent mixes what makes this child unique into the input pool through `/dev/urandom`
//! and asks for an immediate reseed (`RNDRESEEDCRNG`, CAP_SYS_ADMIN). The bytes are not
//! credited as entropy (no `RNDADDENTROPY`): an instance-id is unique, not secret, and the
//! kernel must not be told otherwise. It runs first, before the machine-id and host keys.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::digest;

use super::generation::VmGenId;
use crate::steps::{Ctx, Outcome, StepError};

#[allow(unsafe_code)]
mod ioctl {
    // RNDRESEEDCRNG = _IO('R', 0x07), include/uapi/linux/random.h
    nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);
}

/// What a child mixes into the pool: its identity (from the new instance's sources), the
/// clocks, and 32 bytes of the current CRNG output, hashed together.
pub fn clone_unique_bytes(ctx: &Ctx<'_>) -> [u8; 32] {
    let mut h = digest::Context::new(&digest::SHA256);
    h.update(b"capstan-reidentify\0");
    if let Some(id) = &ctx.plan.instance_id {
        h.update(id.to_string().as_bytes());
    }
    if let Some(n) = &ctx.plan.hostname {
        h.update(n.as_str().as_bytes());
    }
    for nic in &ctx.plan.network.nics {
        if let Some(mac) = nic.mac {
            h.update(&mac.0);
        }
        for a in &nic.addresses {
            h.update(a.to_string().as_bytes());
        }
    }
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    h.update(&wall.as_nanos().to_le_bytes());
    // the monotonic clock (its Debug form is the only stable way to its raw value)
    h.update(format!("{:?}", std::time::Instant::now()).as_bytes());
    let mut extra = [0u8; 32];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut extra).is_ok() {
        h.update(&extra);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    out
}

/// The `rng-reseed` step of a re-identification.
pub(crate) fn step(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    let sys = ctx.root.resolve("/sys").map_err(|e| StepError::wrap("resolve /sys", e))?;
    let genid = VmGenId::probe(&sys);
    if let (Some(dev), true) = (&genid.device, genid.driver_bound) {
        return Ok(Outcome::Skipped(format!(
            "reseeded by the kernel: its vmgenid driver is bound to {dev}"
        )));
    }
    if !ctx.live() {
        return Ok(Outcome::Skipped("not under --root".into()));
    }
    let bytes = clone_unique_bytes(ctx);
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .and_then(|mut f| f.write_all(&bytes))
        .map_err(|e| StepError::wrap("write /dev/urandom", e))?;
    let f =
        std::fs::File::open("/dev/urandom").map_err(|e| StepError::wrap("open /dev/urandom", e))?;
    reseed(&f).map_err(|e| StepError::wrap("ioctl RNDRESEEDCRNG on /dev/urandom", e))?;
    let why = match genid.device {
        Some(d) => format!("{d} has no vmgenid driver bound"),
        None => "no vmgenid device".into(),
    };
    Ok(Outcome::Ok(format!("mixed 32 clone-unique bytes into the pool and reseeded ({why})")))
}

/// `RNDRESEEDCRNG` on an open `/dev/urandom`.
#[allow(unsafe_code)]
fn reseed(f: &std::fs::File) -> nix::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: RNDRESEEDCRNG takes no argument; the fd is an open /dev/urandom that outlives
    // the call.
    unsafe { ioctl::rnd_reseed_crng(f.as_raw_fd()) }.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reseed_ioctl_is_the_kernels() {
        // the real ioctl on the real device: as root (CAP_SYS_ADMIN) the kernel reseeds, as
        // anyone else it refuses with EPERM; never ENOTTY (a wrong request number)
        let f = std::fs::File::open("/dev/urandom").unwrap();
        match reseed(&f) {
            Ok(()) => assert!(nix::unistd::geteuid().is_root()),
            Err(e) => assert_eq!(e, nix::errno::Errno::EPERM, "{e}"),
        }
    }

    #[test]
    fn this_hosts_vmgenid_is_seen_where_it_has_one() {
        // where the host has the device (this build machine is a VM with one), the probe
        // agrees with the driver link sysfs shows
        let sys = std::path::Path::new("/sys");
        let p = VmGenId::probe(sys);
        if let Some(dev) = &p.device {
            let d = sys.join("bus/acpi/devices").join(dev);
            let linked = [d.join("driver"), d.join("physical_node/driver")]
                .iter()
                .filter_map(|l| std::fs::read_link(l).ok())
                .any(|t| t.ends_with("vmgenid"));
            assert_eq!(p.driver_bound, linked, "{p:?}");
        }
    }
}
