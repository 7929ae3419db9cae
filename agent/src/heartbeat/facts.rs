//! Host facts for a heartbeat, from sysinfo and the kernel.

use std::path::Path;

use super::wire::HostFacts;

/// Load, memory and root filesystem free space, read now.
pub fn host_facts() -> HostFacts {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    let disks = sysinfo::Disks::new_with_refreshed_list();
    let root_free = disks
        .list()
        .iter()
        .find(|d| d.mount_point() == Path::new("/"))
        .map(|d| d.available_space())
        .unwrap_or(0);
    let (mem_total, mem_available) = (sys.total_memory(), sys.available_memory());
    HostFacts {
        load1: sysinfo::System::load_average().one.max(0.0),
        mem_total,
        mem_available: mem_available.min(mem_total),
        root_free,
    }
}

/// Seconds since the host booted.
pub fn uptime_s() -> u64 {
    sysinfo::System::uptime()
}

/// The kernel's boot id (a new one at every boot), or empty where there is none.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The SMBIOS product UUID (vSphere's BIOS UUID), lower case, or empty where there is none
/// or it is not readable (it is root-only).
pub fn bios_uuid() -> String {
    std::fs::read_to_string("/sys/class/dmi/id/product_uuid")
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_of_this_host_are_plausible() {
        let f = host_facts();
        assert!(f.mem_total > 0 && f.mem_available <= f.mem_total, "{f:?}");
        assert!(f.root_free > 0, "{f:?}");
        assert_eq!(boot_id().len(), 36, "{}", boot_id());
        assert!(uptime_s() > 0);
    }
}
