//! The device-mapper ioctl buffers `capstan-veritysetup` hands the kernel, written field by
//! field at the offsets of `linux/dm-ioctl.h` (version 4), so the layout is tested as bytes
//! (`builder::initramfs` tests compile this file as a module and check it against the header).
//! No `unsafe` here: the ioctl call is in `veritysetup.rs`.

use std::os::raw::c_ulong;

/// `sizeof(struct dm_ioctl)`: the header every device-mapper ioctl starts with.
pub const HEADER: usize = 312;
/// `sizeof(struct dm_target_spec)`.
pub const SPEC: usize = 40;
/// The buffer handed to the kernel (dmsetup uses the same size).
pub const BUFFER: usize = 16 * 1024;

const DM_VERSION_MAJOR: u32 = 4;
/// `DM_READONLY_FLAG`: the table opens its devices read-only, the device is read-only.
pub const READONLY: u32 = 1 << 0;

/// `_IOWR(0xfd, nr, struct dm_ioctl)`.
const fn dm_iowr(nr: c_ulong) -> c_ulong {
    (3 << 30) | ((HEADER as c_ulong) << 16) | (0xfd << 8) | nr
}
pub const DM_DEV_CREATE: c_ulong = dm_iowr(3);
pub const DM_DEV_REMOVE: c_ulong = dm_iowr(4);
pub const DM_DEV_SUSPEND: c_ulong = dm_iowr(6);
pub const DM_TABLE_LOAD: c_ulong = dm_iowr(9);

/// One table line as `dmsetup --table` takes it.
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub start: u64,
    pub length: u64,
    pub kind: &'a str,
    pub params: &'a str,
}

/// Parses `START LENGTH TARGET PARAMS`.
pub fn parse_table(line: &str) -> Result<Target<'_>, String> {
    let line = line.trim();
    let mut it = line.splitn(4, char::is_whitespace);
    let mut field = |what: &str| it.next().filter(|f| !f.is_empty()).ok_or(format!("no {what}"));
    let start = field("start sector")?;
    let length = field("length")?;
    let kind = field("target type")?;
    let params = field("target parameters")?.trim_start();
    let num = |v: &str, what: &str| v.parse::<u64>().map_err(|_| format!("{what} {v:?}"));
    let t =
        Target { start: num(start, "start sector")?, length: num(length, "length")?, kind, params };
    if t.kind.len() >= 16 {
        return Err(format!("target type {:?} is longer than 15 bytes", t.kind));
    }
    if t.length == 0 {
        return Err("length 0".into());
    }
    Ok(t)
}

/// A zeroed ioctl buffer with the header for device `name`: version 4.0.0, `flags`,
/// `data_size` the whole buffer, `data_start` right after the header.
pub fn encode_header(name: &str, flags: u32) -> Result<Vec<u8>, String> {
    if name.is_empty() || name.len() >= 128 || name.contains('/') {
        return Err(format!("device name {name:?} (1 to 127 bytes, no '/')"));
    }
    let mut b = vec![0u8; BUFFER];
    put32(&mut b, 0, DM_VERSION_MAJOR);
    put32(&mut b, 12, BUFFER as u32); // data_size
    put32(&mut b, 16, HEADER as u32); // data_start
    put32(&mut b, 28, flags);
    b[48..48 + name.len()].copy_from_slice(name.as_bytes());
    Ok(b)
}

/// The `DM_TABLE_LOAD` buffer: the header with one target, its spec and parameters.
pub fn encode_table(name: &str, flags: u32, t: &Target<'_>) -> Result<Vec<u8>, String> {
    let mut b = encode_header(name, flags)?;
    let params = t.params.as_bytes();
    // The spec, the parameters and their NUL, rounded up to 8 (the next spec's offset).
    let next = (SPEC + params.len() + 1).div_ceil(8) * 8;
    if HEADER + next > BUFFER || params.contains(&0) {
        return Err(format!("target parameters of {} bytes", params.len()));
    }
    put32(&mut b, 20, 1); // target_count
    let s = HEADER;
    b[s..s + 8].copy_from_slice(&t.start.to_le_bytes());
    b[s + 8..s + 16].copy_from_slice(&t.length.to_le_bytes());
    put32(&mut b, s + 20, next as u32);
    b[s + 24..s + 24 + t.kind.len()].copy_from_slice(t.kind.as_bytes());
    b[s + SPEC..s + SPEC + params.len()].copy_from_slice(params);
    Ok(b)
}

/// The minor number in a header's `dev` (the kernel's `huge_encode_dev`).
pub fn minor(header: &[u8]) -> u64 {
    let dev = u64::from_le_bytes(header[40..48].try_into().expect("8 bytes"));
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
