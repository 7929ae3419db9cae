//! The streaming streamOptimized reader: any stream VMDK in, raw out.
//!
//! It walks the markers in stream order and never seeks, so it reads from a pipe or from the
//! middle of an OVA's tar stream. Grain tables and the directory are skipped: the grain
//! markers carry their own LBA. This handles ours, qemu-img's (GD at the front) and VMware's
//! (GD_AT_END with a footer) alike.

use std::io::{self, Read, Write};

use flate2::{Decompress, FlushDecompress, Status};

use super::header::*;
use super::{desc, VmdkError};

/// Header and descriptor of a sparse VMDK, as read from its first sectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkInfo {
    /// The decoded header.
    pub header: SparseHeader,
    /// The embedded descriptor text (empty when the extent has none).
    pub descriptor: String,
}

impl VmdkInfo {
    /// Virtual capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.header.capacity_bytes()
    }

    /// A descriptor value (`createType`, `ddb.adapterType`, ...), quotes removed.
    pub fn descriptor_value(&self, key: &str) -> Option<&str> {
        desc::lookup(&self.descriptor, key)
    }

    /// True when the extent is compressed with markers: what every stream reader needs.
    pub fn is_stream_optimized(&self) -> bool {
        self.header.flags & (FLAG_COMPRESSED | FLAG_MARKERS) == (FLAG_COMPRESSED | FLAG_MARKERS)
    }
}

/// Reads the header and embedded descriptor of any sparse VMDK.
pub fn inspect<R: Read>(input: R) -> Result<VmdkInfo, VmdkError> {
    let mut src = Counted { inner: input, offset: 0 };
    read_preamble(&mut src)
}

fn read_preamble<R: Read>(src: &mut Counted<R>) -> Result<VmdkInfo, VmdkError> {
    let mut sector = [0u8; 512];
    src.exact(&mut sector, "header")?;
    let header = SparseHeader::decode(&sector)?;
    let mut descriptor = String::new();
    if header.descriptor_offset > 0 && header.descriptor_size > 0 {
        if header.descriptor_offset + header.descriptor_size > header.overhead {
            return Err(VmdkError::BadHeader {
                field: "descriptorOffset",
                value: header.descriptor_offset,
                reason: "the descriptor overlaps the grains (past overHead)",
            });
        }
        src.skip_to(header.descriptor_offset * SECTOR, "descriptor")?;
        let mut text = vec![0u8; (header.descriptor_size * SECTOR) as usize];
        src.exact(&mut text, "descriptor")?;
        let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
        descriptor = String::from_utf8_lossy(&text[..end]).into_owned();
    }
    Ok(VmdkInfo { header, descriptor })
}

/// A `Read` that yields the raw disk contents of a streamOptimized VMDK.
#[derive(Debug)]
pub struct StreamReader<R> {
    src: Counted<R>,
    info: VmdkInfo,
    capacity: u64,
    grain_bytes: usize,
    /// Raw bytes produced so far.
    pos: u64,
    grain: Vec<u8>,
    grain_at: usize,
    grain_end: usize,
    next: Next,
    compressed: Vec<u8>,
    inflater: Decompress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// The next record has not been read yet.
    Unknown,
    /// A grain starting at this byte offset is inflated in `grain[..grain_end]`.
    Grain(u64),
    /// The end-of-stream marker was read.
    End,
}

impl<R: Read> StreamReader<R> {
    /// Reads the header and descriptor and positions the reader at the first grain.
    pub fn new(input: R) -> Result<Self, VmdkError> {
        let mut src = Counted { inner: input, offset: 0 };
        let info = read_preamble(&mut src)?;
        if !info.is_stream_optimized() {
            return Err(VmdkError::NotStreamOptimized { flags: info.header.flags });
        }
        if info.header.compress_algorithm != COMPRESS_DEFLATE {
            return Err(VmdkError::BadHeader {
                field: "compressAlgorithm",
                value: info.header.compress_algorithm.into(),
                reason: "only DEFLATE (1) exists",
            });
        }
        src.skip_to(info.header.overhead * SECTOR, "metadata before the first grain")?;
        let grain_bytes = info.header.grain_bytes() as usize;
        Ok(StreamReader {
            src,
            capacity: info.capacity(),
            grain_bytes,
            info,
            pos: 0,
            grain: vec![0u8; grain_bytes],
            grain_at: 0,
            grain_end: 0,
            next: Next::Unknown,
            compressed: Vec::new(),
            inflater: Decompress::new(true),
        })
    }

    /// The header and descriptor.
    pub fn info(&self) -> &VmdkInfo {
        &self.info
    }

    /// Virtual capacity in bytes: how many bytes this reader yields in total.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Checks the whole stream — every marker, every grain inflated and size-checked, order,
    /// end of stream — without producing the raw bytes (no zero runs are materialized).
    /// Returns the number of grains stored.
    pub fn check(mut self) -> Result<u64, VmdkError> {
        let mut grains = 0;
        loop {
            self.advance()?;
            match self.next {
                Next::Grain(start) => {
                    grains += 1;
                    self.pos = start + self.grain_end as u64;
                    self.grain_at = self.grain_end;
                    self.next = Next::Unknown;
                }
                Next::End => return Ok(grains),
                Next::Unknown => unreachable!("advance() always decides"),
            }
        }
    }

    /// Fills `buf` with the next raw bytes; `Ok(0)` only at the end of the disk, after the
    /// end-of-stream marker was seen.
    pub fn read_raw(&mut self, buf: &mut [u8]) -> Result<usize, VmdkError> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.grain_at < self.grain_end {
                let n = (self.grain_end - self.grain_at).min(buf.len());
                buf[..n].copy_from_slice(&self.grain[self.grain_at..self.grain_at + n]);
                self.grain_at += n;
                self.pos += n as u64;
                return Ok(n);
            }
            match self.next {
                Next::Unknown => self.advance()?,
                Next::End if self.pos >= self.capacity => return Ok(0),
                Next::End => return Ok(self.zeros(buf, self.capacity)),
                Next::Grain(start) if start > self.pos => return Ok(self.zeros(buf, start)),
                Next::Grain(_) => {
                    self.grain_at = 0;
                    self.grain_end = self.grain_end.min((self.capacity - self.pos) as usize);
                    self.next = Next::Unknown;
                }
            }
        }
    }

    fn zeros(&mut self, buf: &mut [u8], until: u64) -> usize {
        let n = (until - self.pos).min(buf.len() as u64) as usize;
        buf[..n].fill(0);
        self.pos += n as u64;
        n
    }

    /// Reads records until the next grain or the end-of-stream marker.
    fn advance(&mut self) -> Result<(), VmdkError> {
        loop {
            let at = self.src.offset;
            let mut sector = [0u8; 512];
            if !self.src.exact_or_eof(&mut sector, "a marker")? {
                // qemu-img writes its directory at the front and no end-of-stream marker (its
                // zero padding reads as one, when there is any): a clean end is the end. A
                // stream with GD_AT_END must end with its footer and marker, as VMware's does.
                if self.info.header.gd_offset == GD_AT_END {
                    return Err(VmdkError::Truncated {
                        offset: at,
                        what: "a marker (the stream has no footer and end-of-stream marker)",
                    });
                }
                self.next = Next::End;
                return Ok(());
            }
            let val = u64::from_le_bytes(sector[0..8].try_into().expect("8 bytes"));
            let size = u32::from_le_bytes(sector[8..12].try_into().expect("4 bytes"));
            if size == 0 {
                let kind = u32::from_le_bytes(sector[12..16].try_into().expect("4 bytes"));
                match kind {
                    MARKER_EOS => {
                        self.next = Next::End;
                        return Ok(());
                    }
                    MARKER_GT | MARKER_GD | MARKER_FOOTER => {
                        let len = val
                            .checked_mul(SECTOR)
                            .filter(|l| *l <= MAX_METADATA_BYTES)
                            .ok_or(VmdkError::BadMarker {
                                offset: at,
                                reason: format!("metadata of {val} sectors is implausibly long"),
                            })?;
                        self.src.skip(len, "grain table or directory")?;
                    }
                    other => {
                        return Err(VmdkError::BadMarker {
                            offset: at,
                            reason: format!("unknown marker type {other}"),
                        })
                    }
                }
                continue;
            }
            return self.read_grain(at, val, size, &sector);
        }
    }

    fn read_grain(
        &mut self,
        at: u64,
        lba: u64,
        size: u32,
        sector: &[u8; 512],
    ) -> Result<(), VmdkError> {
        let bad = |reason: String| VmdkError::BadGrain { offset: at, lba, reason };
        let grain_sectors = self.info.header.grain_size;
        if lba % grain_sectors != 0 {
            return Err(bad(format!("not aligned to the grain size ({grain_sectors} sectors)")));
        }
        if lba >= self.info.header.capacity {
            return Err(bad(format!("past the capacity of {} sectors", self.info.header.capacity)));
        }
        let start = lba * SECTOR;
        if start < self.pos {
            return Err(bad(format!(
                "out of order: the stream is already at byte {} of the disk",
                self.pos
            )));
        }
        let max = self.grain_bytes + self.grain_bytes / 8 + 1024;
        if size as usize > max {
            return Err(bad(format!(
                "compressed size {size} is larger than any deflate of a {}-byte grain",
                self.grain_bytes
            )));
        }
        let size = size as usize;
        let total = (12 + size).div_ceil(512) * 512;
        self.compressed.clear();
        self.compressed.extend_from_slice(&sector[12..]);
        self.compressed.resize(total - 12, 0);
        self.src.exact(&mut self.compressed[500..], "grain data (file truncated)")?;
        self.inflater.reset(true);
        let status = self
            .inflater
            .decompress(&self.compressed[..size], &mut self.grain, FlushDecompress::Finish)
            .map_err(|e| bad(format!("corrupt deflate data: {e}")))?;
        let out = self.inflater.total_out() as usize;
        if status != Status::StreamEnd {
            return Err(if out == self.grain_bytes {
                bad(format!("inflates to more than the grain size of {} bytes", self.grain_bytes))
            } else {
                bad(format!("compressed data ends early (inflated {out} bytes)"))
            });
        }
        let remaining = (self.capacity - start).min(self.grain_bytes as u64) as usize;
        if out != self.grain_bytes && out != remaining {
            return Err(bad(format!(
                "inflates to {out} bytes, expected {} (or {remaining} for the last grain)",
                self.grain_bytes
            )));
        }
        self.grain_end = out;
        self.grain_at = out; // not yet: `read_raw` starts it when `pos` reaches `start`
        self.next = Next::Grain(start);
        Ok(())
    }
}

/// The longest metadata block (GT or GD) a reader skips: a 256 TiB disk's directory.
const MAX_METADATA_BYTES: u64 = 64 << 20;

impl<R: Read> Read for StreamReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_raw(buf).map_err(io::Error::other)
    }
}

/// Converts a streamOptimized VMDK to raw, streaming; returns the bytes written (the
/// capacity). `progress` receives the raw bytes written so far.
pub fn read_to_raw<R: Read, W: Write>(
    input: R,
    mut out: W,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, VmdkError> {
    let mut reader = StreamReader::new(input)?;
    let total = reader.capacity();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = reader.read_raw(&mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(VmdkError::Write)?;
        done += n as u64;
        progress(done, total);
    }
    out.flush().map_err(VmdkError::Write)?;
    Ok(done)
}

/// A reader that knows its offset, for error messages and for skipping.
#[derive(Debug)]
struct Counted<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> Counted<R> {
    fn exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), VmdkError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(VmdkError::Truncated { offset: self.offset + filled as u64, what })
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(VmdkError::Read { offset: self.offset + filled as u64, source })
                }
            }
        }
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Like `exact`, but `Ok(false)` when the input ends before the first byte.
    fn exact_or_eof(&mut self, buf: &mut [u8], what: &'static str) -> Result<bool, VmdkError> {
        let first = loop {
            match self.inner.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(VmdkError::Read { offset: self.offset, source }),
            }
        };
        if first == 0 {
            return Ok(false);
        }
        self.offset += first as u64;
        let rest = &mut buf[first..];
        self.exact(rest, what)?;
        Ok(true)
    }

    fn skip(&mut self, len: u64, what: &'static str) -> Result<(), VmdkError> {
        let copied = io::copy(&mut (&mut self.inner).take(len), &mut io::sink())
            .map_err(|source| VmdkError::Read { offset: self.offset, source })?;
        self.offset += copied;
        if copied < len {
            return Err(VmdkError::Truncated { offset: self.offset, what });
        }
        Ok(())
    }

    fn skip_to(&mut self, offset: u64, what: &'static str) -> Result<(), VmdkError> {
        if offset < self.offset {
            return Err(VmdkError::BadHeader {
                field: "overHead",
                value: offset / SECTOR,
                reason: "points back into metadata already read",
            });
        }
        self.skip(offset - self.offset, what)
    }
}
