#![no_main]
//! Fuzz target: kernel uevent datagrams (`NETLINK_KOBJECT_UEVENT`), as the daemon's vmgenid
//! listener receives them. A datagram that parses must keep its header's action and path in
//! its fields, hold only printable text, and say "new VM generation" only for a `change`.
use capstan_agent::reidentify::generation::{Uevent, UEVENT_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(ev) = Uevent::parse(data) else { return };
    assert!(data.len() <= UEVENT_MAX);
    assert!(!ev.action.is_empty() && ev.devpath.starts_with('/'));
    for (k, v) in &ev.vars {
        assert!(!k.is_empty() && !k.contains('='));
        assert!(k.bytes().chain(v.bytes()).all(|b| (0x20..0x7f).contains(&b)));
    }
    for (key, want) in [("ACTION", &ev.action), ("DEVPATH", &ev.devpath)] {
        if let Some(v) = ev.vars.get(key) {
            assert_eq!(v, want);
        }
    }
    if ev.is_new_vmgenid() {
        assert_eq!(ev.action, "change");
    }
});
