//! `capstan-veritysetup`: the one device-mapper call the capstan initramfs makes, in place of
//! `dmsetup` and the shared libraries it links (2.3 MB of the initramfs; this is a static
//! binary of a few hundred KB). Built by `image/build.rs` with the compiler that builds
//! `capstan`, statically linked, and embedded in `capstan` (`builder::initramfs`).
//!
//! ```text
//! capstan-veritysetup create NAME "START LENGTH TARGET PARAMS"
//! ```
//!
//! creates the device NAME, loads the one-line table read-only (as `dmsetup create --readonly
//! NAME --table ...` does), resumes it and prints its node, `/dev/dm-MINOR` (devtmpfs makes it;
//! no udev runs in the initramfs). It speaks the kernel's device-mapper ioctl interface
//! (`linux/dm-ioctl.h`, version 4) on `/dev/mapper/control`: `DM_DEV_CREATE`, `DM_TABLE_LOAD`
//! with one `struct dm_target_spec` and its parameter string, `DM_DEV_SUSPEND` without the
//! suspend flag (resume). A failure after the device was created removes it again.
//!
//! The ioctl buffers are written by `dm.rs` (tested as bytes against the kernel's header);
//! the one `unsafe` block here is the ioctl call.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::raw::{c_int, c_ulong};

mod dm;
use dm::*;

extern "C" {
    fn ioctl(fd: c_int, request: c_ulong, ...) -> c_int;
}

/// One device-mapper ioctl on the control device; the buffer holds the kernel's reply after.
fn call(control: &File, request: c_ulong, what: &str, buf: &mut [u8]) -> Result<(), String> {
    assert!(buf.len() >= BUFFER, "a full ioctl buffer");
    // SAFETY: `buf` is a live, writable buffer of BUFFER bytes, which is the data_size its
    // header tells the kernel; the kernel reads and writes only within it.
    let r = unsafe { ioctl(control.as_raw_fd(), request, buf.as_mut_ptr()) };
    match r {
        0 => Ok(()),
        _ => Err(format!("{what}: {}", std::io::Error::last_os_error())),
    }
}

/// Creates `name` with table `t` read-only and resumes it; returns its minor number.
fn create(name: &str, t: &Target<'_>) -> Result<u64, String> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .map_err(|e| format!("/dev/mapper/control (is dm_mod loaded?): {e}"))?;
    let mut b = encode_header(name, READONLY)?;
    call(&control, DM_DEV_CREATE, "DM_DEV_CREATE", &mut b)?;
    let loaded = encode_table(name, READONLY, t).and_then(|mut b| {
        call(&control, DM_TABLE_LOAD, "DM_TABLE_LOAD", &mut b)?;
        let mut b = encode_header(name, READONLY)?;
        call(&control, DM_DEV_SUSPEND, "DM_DEV_SUSPEND (resume)", &mut b)?;
        Ok(minor(&b))
    });
    if loaded.is_err() {
        // No half-made device: remove what DM_DEV_CREATE made.
        if let Ok(mut b) = encode_header(name, 0) {
            let _ = call(&control, DM_DEV_REMOVE, "DM_DEV_REMOVE", &mut b);
        }
    }
    loaded
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [cmd, name, table] if cmd == "create" => {
            parse_table(table).and_then(|t| create(name, &t)).map(|m| println!("/dev/dm-{m}"))
        }
        _ => Err("usage: capstan-veritysetup create NAME \"START LENGTH TARGET PARAMS\"".into()),
    };
    if let Err(e) = result {
        eprintln!("capstan-veritysetup: {e}");
        std::process::exit(1);
    }
}
