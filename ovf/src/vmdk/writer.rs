//! The streaming streamOptimized writer: raw in, VMDK out, to any `Write` (no seeking).
//!
//! Layout, in stream order, as VMware's stream writers lay it out:
//! header (gdOffset = GD_AT_END) | descriptor | padding to sector 128 |
//! per grain table: its grains (marker + zlib data, sector-padded), GT marker, GT |
//! GD marker, GD | footer marker, footer (the header with the real gdOffset) | EOS marker.
//!
//! Compression runs on worker threads over 1 MiB chunks; the calling thread reads the input,
//! writes records in order and keeps at most `2 × threads + 2` chunks in flight, so memory stays
//! bounded (a few MiB per thread) whatever the disk size.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::{mpsc, Arc, Mutex};

use libdeflater::{CompressionLvl, Compressor};

use super::desc::{self, AdapterType, DescriptorParams};
use super::header::*;
use super::VmdkError;

/// Grain size we write: 128 sectors (64 KiB), as every VMware writer does.
const GRAIN_SECTORS: u64 = 128;
const GRAIN_BYTES: usize = (GRAIN_SECTORS * SECTOR) as usize;
/// Entries per grain table (a 2 KiB table, 4 sectors).
const GTES_PER_GT: u64 = 512;
const GT_SECTORS: u64 = GTES_PER_GT * 4 / SECTOR;
/// Sectors reserved for the embedded descriptor.
const DESCRIPTOR_SECTORS: u64 = 20;
/// First grain sector (64 KiB in), as VMware and qemu-img lay it out.
const OVERHEAD_SECTORS: u64 = 128;
/// Grains per compression job (1 MiB of input).
const CHUNK_GRAINS: usize = 16;

/// How to write a streamOptimized VMDK. `Default` gives what VMware's tools write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOptions {
    /// The file name written in the descriptor's extent line (the name inside the OVA).
    pub extent_name: String,
    /// `ddb.adapterType` (default `lsilogic`).
    pub adapter_type: AdapterType,
    /// `ddb.virtualHWVersion` (VMware's stream writers write 4; vSphere ignores it).
    pub hw_version: u32,
    /// `CID`; default derived from the capacity and extent name so outputs are reproducible.
    pub cid: Option<u32>,
    /// `ddb.longContentID`; default derived like the CID.
    pub long_content_id: Option<u128>,
    /// `ddb.toolsVersion`; `2147483647` means "tools managed by the guest" (open-vm-tools).
    pub tools_version: String,
    /// Compression level 1..=12 (libdeflate's scale; 1-9 mean what they mean for zlib).
    /// Default 6: smaller output than qemu-img's zlib level 6, and faster.
    pub compression_level: u32,
    /// Compression threads; 0 = one per available CPU.
    pub threads: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            extent_name: "disk.vmdk".to_string(),
            adapter_type: AdapterType::LsiLogic,
            hw_version: 4,
            cid: None,
            long_content_id: None,
            tools_version: "2147483647".to_string(),
            compression_level: 6,
            threads: 0,
        }
    }
}

/// Progress of a conversion, reported after each chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes consumed (and their output written).
    pub read: u64,
    /// Total input bytes.
    pub total: u64,
    /// Output bytes written so far.
    pub written: u64,
}

/// What a finished write produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteSummary {
    /// Virtual disk capacity in bytes (the input size rounded up to a sector).
    pub capacity: u64,
    /// Bytes of VMDK written.
    pub written: u64,
    /// Grains stored (compressed).
    pub data_grains: u64,
    /// All-zero grains skipped.
    pub zero_grains: u64,
}

/// Writes `input` (exactly `input_len` bytes of raw disk) as a streamOptimized VMDK to `out`.
///
/// `out` never needs to seek: this is what goes straight into an OVA's tar stream. A size not
/// a multiple of 512 is padded with zeros to the next sector. `progress` is called after each
/// 1 MiB chunk is written.
pub fn write_stream_optimized<R: Read, W: Write>(
    mut input: R,
    input_len: u64,
    out: W,
    opts: &WriteOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<WriteSummary, VmdkError> {
    let level = compression_level(opts)?;
    let capacity_sectors = input_len.div_ceil(SECTOR);
    if capacity_sectors > MAX_CAPACITY_SECTORS {
        return Err(VmdkError::TooLarge { what: "capacity", value: input_len });
    }
    let capacity = capacity_sectors * SECTOR;
    let total_grains = capacity_sectors.div_ceil(GRAIN_SECTORS);
    let num_gts = total_grains.div_ceil(GTES_PER_GT);
    let descriptor = descriptor_text(opts, capacity_sectors)?;
    let mut header = stream_header(capacity_sectors);

    let mut sink = Sink {
        out,
        written: 0,
        gt: vec![0u32; GTES_PER_GT as usize],
        gt_index: 0,
        gd: Vec::with_capacity(num_gts as usize),
        data_grains: 0,
        zero_grains: 0,
    };
    sink.put(&header.encode())?;
    let mut meta = vec![0u8; ((OVERHEAD_SECTORS - 1) * SECTOR) as usize];
    meta[..descriptor.len()].copy_from_slice(descriptor.as_bytes());
    sink.put(&meta)?;

    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let max_in_flight = 2 * threads + 2;

    std::thread::scope(|scope| -> Result<(), VmdkError> {
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(max_in_flight);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Result<Done, VmdkError>>();
        for _ in 0..threads {
            let job_rx = Arc::clone(&job_rx);
            let done_tx = done_tx.clone();
            scope.spawn(move || compress_worker(level, &job_rx, &done_tx));
        }
        drop(done_tx);
        // `job_tx` and `done_rx` move in, so an early error drops them and the workers wind
        // down before the scope joins them.
        let stream = Stream { input: &mut input, input_len, capacity, max_in_flight };
        stream.pump(job_tx, done_rx, &mut sink, progress)?;
        finish(&mut sink, &mut header, num_gts)
    })?;

    Ok(WriteSummary {
        capacity,
        written: sink.written,
        data_grains: sink.data_grains,
        zero_grains: sink.zero_grains,
    })
}

/// The libdeflate level of `opts`, refused outside 1..=12.
fn compression_level(opts: &WriteOptions) -> Result<CompressionLvl, VmdkError> {
    CompressionLvl::new(opts.compression_level as i32)
        .ok()
        .filter(|_| opts.compression_level >= 1)
        .ok_or_else(|| VmdkError::InvalidOption {
            option: "compression_level",
            reason: format!("{} is not a level 1..12", opts.compression_level),
        })
}

/// The embedded descriptor, with the CID and long content id derived from the capacity and
/// the extent name unless `opts` sets them (so outputs are reproducible).
fn descriptor_text(opts: &WriteOptions, capacity_sectors: u64) -> Result<String, VmdkError> {
    let capacity = capacity_sectors * SECTOR;
    let cid = opts.cid.unwrap_or_else(|| {
        let h = fnv1a(&[&capacity.to_le_bytes(), opts.extent_name.as_bytes()]) as u32;
        // ffffffff / fffffffe read as "no parent" / "disk of zeros" to some tools.
        if h >= 0xffff_fffe {
            0x1234_5678
        } else {
            h
        }
    });
    let long_content_id = opts.long_content_id.unwrap_or_else(|| {
        let a = fnv1a(&[b"lcid-a", &capacity.to_le_bytes(), opts.extent_name.as_bytes()]);
        let b = fnv1a(&[b"lcid-b", &capacity.to_le_bytes(), opts.extent_name.as_bytes()]);
        (u128::from(a) << 64) | u128::from(b)
    });
    let descriptor = desc::render(&DescriptorParams {
        cid,
        capacity_sectors,
        extent_name: &opts.extent_name,
        adapter: opts.adapter_type,
        hw_version: opts.hw_version,
        long_content_id,
        tools_version: &opts.tools_version,
    });
    if descriptor.len() as u64 > DESCRIPTOR_SECTORS * SECTOR {
        return Err(VmdkError::InvalidOption {
            option: "extent_name",
            reason: "the descriptor does not fit in 20 sectors".to_string(),
        });
    }
    Ok(descriptor)
}

/// The stream header: grain directory at the end (the footer repeats it with the real offset).
fn stream_header(capacity_sectors: u64) -> SparseHeader {
    SparseHeader {
        version: 3,
        flags: STREAM_FLAGS,
        capacity: capacity_sectors,
        grain_size: GRAIN_SECTORS,
        descriptor_offset: 1,
        descriptor_size: DESCRIPTOR_SECTORS,
        num_gtes_per_gt: GTES_PER_GT as u32,
        rgd_offset: 0,
        gd_offset: GD_AT_END,
        overhead: OVERHEAD_SECTORS,
        unclean_shutdown: false,
        compress_algorithm: COMPRESS_DEFLATE,
    }
}

/// One compression thread: takes jobs until the channel closes or the writer is gone.
fn compress_worker(
    level: CompressionLvl,
    job_rx: &Mutex<mpsc::Receiver<Job>>,
    done_tx: &mpsc::Sender<Result<Done, VmdkError>>,
) {
    let mut c = Compressor::new(level);
    loop {
        // The lock is held only to take one job; a poisoned lock means another
        // worker panicked, and the scope will propagate that panic.
        let job = match job_rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        if done_tx.send(compress_job(job, &mut c)).is_err() {
            return;
        }
    }
}

/// The input side of the producer/consumer loop.
struct Stream<'a, R> {
    input: &'a mut R,
    input_len: u64,
    capacity: u64,
    max_in_flight: usize,
}

impl<R: Read> Stream<'_, R> {
    /// Reads 1 MiB chunks, hands them to the workers (at most `max_in_flight` at a time), and
    /// writes the compressed grains in input order as they come back.
    fn pump<W: Write>(
        self,
        job_tx: mpsc::SyncSender<Job>,
        done_rx: mpsc::Receiver<Result<Done, VmdkError>>,
        sink: &mut Sink<W>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), VmdkError> {
        let Stream { input, input_len, capacity, max_in_flight } = self;
        let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
        let mut next_seq = 0u64; // next chunk to write
        let mut sent = 0u64;
        let mut read = 0u64; // capacity bytes handed out
        let mut consumed = 0u64; // input bytes read
        let chunk_bytes = (CHUNK_GRAINS * GRAIN_BYTES) as u64;
        let mut written_input = 0u64;
        loop {
            let more = read < capacity;
            if more && sent - next_seq < max_in_flight as u64 {
                let len = (capacity - read).min(chunk_bytes) as usize;
                let mut data = vec![0u8; len];
                let want = (input_len - consumed).min(len as u64) as usize;
                read_full(input, &mut data[..want], consumed, input_len)?;
                consumed += want as u64;
                let job = Job { seq: sent, first_grain: read / GRAIN_BYTES as u64, data };
                read += len as u64;
                sent += 1;
                if job_tx.send(job).is_err() {
                    // Every worker is gone: one of them panicked; the scope re-raises it.
                    return Err(VmdkError::Worker);
                }
                // Write whatever is ready without waiting.
                while let Ok(done) = done_rx.try_recv() {
                    let done = done?;
                    pending.insert(done.seq, done);
                }
            } else if next_seq == sent {
                break;
            } else {
                let done = done_rx.recv().map_err(|_| VmdkError::Worker)??;
                pending.insert(done.seq, done);
            }
            while let Some(done) = pending.remove(&next_seq) {
                written_input += done.input_len;
                sink.grains(done)?;
                next_seq += 1;
                progress(Progress {
                    read: written_input.min(input_len),
                    total: input_len,
                    written: sink.written,
                });
            }
        }
        Ok(())
    }
}

/// After the last grain: the remaining grain tables (those of an all-zero tail too), the grain
/// directory, the footer (the header with the directory's real offset) and end-of-stream.
fn finish<W: Write>(
    sink: &mut Sink<W>,
    header: &mut SparseHeader,
    num_gts: u64,
) -> Result<(), VmdkError> {
    while sink.gt_index < num_gts {
        sink.flush_gt()?;
    }
    let gd_sectors = (num_gts * 4).div_ceil(SECTOR);
    sink.put(&metadata_marker(gd_sectors, MARKER_GD))?;
    header.gd_offset = sink.written / SECTOR;
    let mut gd = vec![0u8; (gd_sectors * SECTOR) as usize];
    for (i, e) in sink.gd.iter().enumerate() {
        gd[i * 4..i * 4 + 4].copy_from_slice(&e.to_le_bytes());
    }
    sink.put(&gd)?;
    sink.put(&metadata_marker(1, MARKER_FOOTER))?;
    sink.put(&header.encode())?;
    sink.put(&metadata_marker(0, MARKER_EOS))?;
    sink.out.flush().map_err(VmdkError::Write)?;
    Ok(())
}

struct Job {
    seq: u64,
    first_grain: u64,
    data: Vec<u8>,
}

struct Done {
    seq: u64,
    first_grain: u64,
    input_len: u64,
    /// One entry per grain: the sector-padded record, or `None` for an all-zero grain.
    records: Vec<Option<Vec<u8>>>,
}

fn compress_job(job: Job, c: &mut Compressor) -> Result<Done, VmdkError> {
    let mut records = Vec::with_capacity(CHUNK_GRAINS);
    for (i, grain) in job.data.chunks(GRAIN_BYTES).enumerate() {
        if is_zero(grain) {
            records.push(None);
            continue;
        }
        let lba = (job.first_grain + i as u64) * GRAIN_SECTORS;
        let bound = c.zlib_compress_bound(grain.len());
        let mut rec = vec![0u8; 12 + bound];
        rec[..8].copy_from_slice(&lba.to_le_bytes());
        let n = c
            .zlib_compress(grain, &mut rec[12..])
            .map_err(|e| VmdkError::Compress(e.to_string()))?;
        rec.truncate(12 + n);
        let size = (rec.len() - 12) as u32;
        rec[8..12].copy_from_slice(&size.to_le_bytes());
        let padded = (rec.len() as u64).div_ceil(SECTOR) * SECTOR;
        rec.resize(padded as usize, 0);
        records.push(Some(rec));
    }
    Ok(Done {
        seq: job.seq,
        first_grain: job.first_grain,
        input_len: job.data.len() as u64,
        records,
    })
}

/// The ordered output side: tracks the stream offset and the grain table being filled.
struct Sink<W> {
    out: W,
    written: u64,
    gt: Vec<u32>,
    gt_index: u64,
    gd: Vec<u32>,
    data_grains: u64,
    zero_grains: u64,
}

impl<W: Write> Sink<W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), VmdkError> {
        self.out.write_all(bytes).map_err(VmdkError::Write)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn sector(&self) -> Result<u32, VmdkError> {
        u32::try_from(self.written / SECTOR).map_err(|_| VmdkError::TooLarge {
            what: "compressed VMDK (grain tables address at most 2 TiB)",
            value: self.written,
        })
    }

    fn grains(&mut self, done: Done) -> Result<(), VmdkError> {
        for (i, rec) in done.records.into_iter().enumerate() {
            let grain = done.first_grain + i as u64;
            while grain / GTES_PER_GT > self.gt_index {
                self.flush_gt()?;
            }
            match rec {
                None => self.zero_grains += 1,
                Some(rec) => {
                    self.gt[(grain % GTES_PER_GT) as usize] = self.sector()?;
                    self.put(&rec)?;
                    self.data_grains += 1;
                }
            }
        }
        Ok(())
    }

    /// Writes the current grain table (marker + table) and records it in the directory.
    fn flush_gt(&mut self) -> Result<(), VmdkError> {
        self.put(&metadata_marker(GT_SECTORS, MARKER_GT))?;
        let at = self.sector()?;
        let mut table = vec![0u8; (GT_SECTORS * SECTOR) as usize];
        for (i, e) in self.gt.iter().enumerate() {
            table[i * 4..i * 4 + 4].copy_from_slice(&e.to_le_bytes());
        }
        self.put(&table)?;
        self.gd.push(at);
        self.gt.fill(0);
        self.gt_index += 1;
        Ok(())
    }
}

fn read_full<R: Read>(
    input: &mut R,
    buf: &mut [u8],
    offset: u64,
    expected: u64,
) -> Result<(), VmdkError> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(VmdkError::InputTooShort { expected, got: offset + filled as u64 })
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(VmdkError::ReadInput { offset: offset + filled as u64, source: e })
            }
        }
    }
    Ok(())
}

/// True when every byte is zero. Folding 256-byte blocks lets the compiler vectorize.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(256).all(|block| block.iter().fold(0u8, |acc, b| acc | b) == 0)
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
