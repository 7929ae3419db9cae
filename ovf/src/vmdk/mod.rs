//! streamOptimized VMDK: a streaming writer from raw and a reader back to raw.
//!
//! The writer produces the profile VMware's own tools write (header version 3, flags
//! 0x30001, 64 KiB zlib grains with grain markers, grain tables and directory after the data,
//! footer and end-of-stream marker, `gdOffset = GD_AT_END` in the header) to any `Write`, so it
//! can stream straight into an OVA. All-zero grains are skipped and grains are compressed on
//! worker threads with bounded memory.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ovf::vmdk::{write_stream_optimized, WriteOptions};
//! let raw = std::fs::File::open("disk.raw")?;
//! let len = raw.metadata()?.len();
//! let out = std::io::BufWriter::new(std::fs::File::create("disk.vmdk")?);
//! let summary = write_stream_optimized(raw, len, out, &WriteOptions::default(), &mut |_| {})?;
//! println!("{} bytes", summary.written);
//! # Ok(()) }
//! ```
//!
//! The reader ([`StreamReader`], [`read_to_raw`]) turns any streamOptimized VMDK — ours,
//! qemu-img's, VMware's — back into raw bytes by walking its grain markers in stream order.

mod desc;
pub mod header;
mod reader;
mod writer;

use std::io;

pub use desc::{AdapterType, UnknownAdapterType};
pub use header::SparseHeader;
pub use reader::{inspect, read_to_raw, StreamReader, VmdkInfo};
pub use writer::{write_stream_optimized, Progress, WriteOptions, WriteSummary};

/// What can go wrong reading or writing a VMDK. Offsets are byte offsets in the VMDK file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmdkError {
    /// The file does not start with `KDMV`.
    #[error("not a sparse VMDK: bad magic 0x{found:08x} (expected \"KDMV\")")]
    BadMagic {
        /// The first four bytes, little-endian.
        found: u32,
    },
    /// A header field is out of range.
    #[error("bad VMDK header: {field} = {value}: {reason}")]
    BadHeader {
        /// The header field, spelled as in VMware's specification.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A sparse VMDK that is not compressed with markers.
    #[error("not a streamOptimized VMDK: header flags 0x{flags:x} lack compressed grains and markers (0x30000)")]
    NotStreamOptimized {
        /// The header flags.
        flags: u32,
    },
    /// The file ended early.
    #[error("VMDK truncated at byte {offset}: expected {what}")]
    Truncated {
        /// Where the file ended.
        offset: u64,
        /// What was expected there.
        what: &'static str,
    },
    /// A metadata marker that makes no sense.
    #[error("bad VMDK marker at byte {offset}: {reason}")]
    BadMarker {
        /// Offset of the marker.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A grain that cannot be right.
    #[error("bad VMDK grain at byte {offset} (LBA {lba}): {reason}")]
    BadGrain {
        /// Offset of the grain marker.
        offset: u64,
        /// The LBA the marker claims.
        lba: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading the VMDK failed.
    #[error("reading the VMDK at byte {offset}")]
    Read {
        /// Where the read failed.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Reading the raw input failed.
    #[error("reading the raw disk at byte {offset}")]
    ReadInput {
        /// Where the read failed.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The raw input ended before the announced length.
    #[error("the raw disk ended at byte {got}, expected {expected} bytes")]
    InputTooShort {
        /// The announced length.
        expected: u64,
        /// What was there.
        got: u64,
    },
    /// Writing the output failed.
    #[error("writing the output")]
    Write(#[source] io::Error),
    /// The disk is beyond what the format addresses.
    #[error("{what} too large: {value} bytes")]
    TooLarge {
        /// What overflowed.
        what: &'static str,
        /// The size in bytes.
        value: u64,
    },
    /// A write option is out of range.
    #[error("invalid VMDK option {option}: {reason}")]
    InvalidOption {
        /// The option.
        option: &'static str,
        /// Why.
        reason: String,
    },
    /// zlib refused to compress (should not happen).
    #[error("compressing a grain: {0}")]
    Compress(String),
    /// A compression worker thread went away.
    #[error("a compression worker stopped unexpectedly")]
    Worker,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(data: &[u8]) -> Vec<u8> {
        let mut vmdk = Vec::new();
        let s = write_stream_optimized(
            data,
            data.len() as u64,
            &mut vmdk,
            &WriteOptions { threads: 2, ..WriteOptions::default() },
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(s.written, vmdk.len() as u64);
        let mut raw = Vec::new();
        read_to_raw(&vmdk[..], &mut raw, &mut |_, _| {}).unwrap();
        raw
    }

    #[test]
    fn small_disks_round_trip() {
        for len in [0usize, 512, 1000, 65536, 65536 * 3 + 512, 5 << 20] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let raw = roundtrip(&data);
            assert_eq!(raw.len(), len.div_ceil(512) * 512, "len {len}");
            assert_eq!(&raw[..len], &data[..], "len {len}");
            assert!(raw[len..].iter().all(|b| *b == 0));
        }
    }
}
