//! Hostile and broken VMDKs: each gets a clear error, never a panic, a hang or a huge
//! allocation.

use std::io::Write as _;

use flate2::{write::ZlibEncoder, Compression};
use ovf::vmdk::header::{metadata_marker, SparseHeader, GD_AT_END, MARKER_EOS};
use ovf::vmdk::{self, VmdkError, WriteOptions};

fn header(capacity: u64, flags: u32, gd_offset: u64) -> SparseHeader {
    SparseHeader {
        version: 3,
        flags,
        capacity,
        grain_size: 128,
        descriptor_offset: 1,
        descriptor_size: 20,
        num_gtes_per_gt: 512,
        rgd_offset: 0,
        gd_offset,
        overhead: 128,
        unclean_shutdown: false,
        compress_algorithm: 1,
    }
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn grain(lba: u64, compressed: &[u8]) -> Vec<u8> {
    let mut rec = lba.to_le_bytes().to_vec();
    rec.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
    rec.extend_from_slice(compressed);
    rec.resize(rec.len().div_ceil(512) * 512, 0);
    rec
}

/// A stream with the given grain records and an end-of-stream marker.
fn craft(capacity: u64, records: &[Vec<u8>]) -> Vec<u8> {
    let mut v = header(capacity, 0x30001, 0).encode().to_vec();
    v.resize(128 * 512, 0);
    for r in records {
        v.extend_from_slice(r);
    }
    v.extend_from_slice(&metadata_marker(0, MARKER_EOS));
    v
}

fn read(v: &[u8]) -> Result<Vec<u8>, VmdkError> {
    let mut out = Vec::new();
    vmdk::read_to_raw(v, &mut out, &mut |_, _| {})?;
    Ok(out)
}

fn err(v: &[u8]) -> String {
    let e = read(v).expect_err("must be rejected");
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

fn good() -> Vec<u8> {
    let raw: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let mut v = Vec::new();
    vmdk::write_stream_optimized(
        &raw[..],
        raw.len() as u64,
        &mut v,
        &WriteOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    v
}

#[test]
fn crafted_stream_reads_with_zero_gaps() {
    let a = vec![0xabu8; 65536];
    let v = craft(128 * 4, &[grain(128, &zlib(&a)), grain(384, &zlib(&a))]);
    let raw = read(&v).unwrap();
    assert_eq!(raw.len(), 4 * 65536);
    assert!(raw[..65536].iter().all(|b| *b == 0));
    assert!(raw[65536..131072].iter().all(|b| *b == 0xab));
    assert!(raw[131072..196608].iter().all(|b| *b == 0));
}

#[test]
fn bad_magic_and_not_stream_optimized() {
    let mut v = good();
    v[0..4].copy_from_slice(b"COWD");
    assert!(err(&v).contains("bad magic"), "{}", err(&v));
    assert!(err(b"").contains("truncated at byte 0"), "{}", err(b""));

    let mut v = header(128, 0x3, 0).encode().to_vec();
    v.resize(65536, 0);
    assert!(err(&v).contains("not a streamOptimized"), "{}", err(&v));
}

#[test]
fn truncation_anywhere_is_an_error() {
    let v = good();
    for cut in [100, 512, 5000, 65536 + 12, 65536 + 700, v.len() - 1536, v.len() - 512, v.len() - 1]
    {
        let e = err(&v[..cut]);
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
    }
}

#[test]
fn corrupt_deflate_data_names_the_grain() {
    let mut v = good();
    // Overwrite compressed bytes of the first grain (after its 12-byte marker and zlib header).
    for b in &mut v[65536 + 20..65536 + 60] {
        *b = 0x55;
    }
    let e = err(&v);
    assert!(e.contains("LBA 0") && e.contains("grain"), "{e}");
}

#[test]
fn lba_past_capacity_misaligned_and_out_of_order() {
    let z = zlib(&[1u8; 65536]);
    let e = err(&craft(256, &[grain(256, &z)]));
    assert!(e.contains("past the capacity"), "{e}");
    let e = err(&craft(256, &[grain(u64::MAX - 127, &z)]));
    assert!(e.contains("past the capacity") || e.contains("aligned"), "{e}");
    let e = err(&craft(256, &[grain(3, &z)]));
    assert!(e.contains("aligned"), "{e}");
    let e = err(&craft(512, &[grain(128, &z), grain(0, &z)]));
    assert!(e.contains("out of order"), "{e}");
    let e = err(&craft(512, &[grain(128, &z), grain(128, &z)]));
    assert!(e.contains("out of order"), "{e}");
}

#[test]
fn decompression_bombs_and_wrong_sizes_are_bounded() {
    // 64 MiB of zeros deflates to ~64 KiB: the reader stops at the grain size.
    let bomb = zlib(&vec![0u8; 64 << 20]);
    let e = err(&craft(256, &[grain(0, &bomb)]));
    assert!(e.contains("more than the grain size") || e.contains("larger than any deflate"), "{e}");
    let small_bomb = zlib(&vec![7u8; 65536 * 2]);
    let e = err(&craft(256, &[grain(0, &small_bomb)]));
    assert!(e.contains("more than the grain size"), "{e}");
    let short = zlib(&[7u8; 1000]);
    let e = err(&craft(256, &[grain(0, &short)]));
    assert!(e.contains("inflates to 1000 bytes"), "{e}");
    // A claimed compressed size of 4 GiB is refused before reading or allocating it.
    let mut rec = 0u64.to_le_bytes().to_vec();
    rec.extend_from_slice(&u32::MAX.to_le_bytes());
    rec.resize(512, 0);
    let e = err(&craft(256, &[rec]));
    assert!(e.contains("larger than any deflate"), "{e}");
}

#[test]
fn gd_at_end_stream_without_footer_is_truncated() {
    let mut v = header(256, 0x30001, GD_AT_END).encode().to_vec();
    v.resize(128 * 512, 0);
    v.extend_from_slice(&grain(0, &zlib(&[1u8; 65536])));
    let e = err(&v);
    assert!(e.contains("no footer"), "{e}");
}

#[test]
fn unknown_marker_and_huge_metadata_are_refused() {
    let e = err(&craft(256, &[metadata_marker(1, 9).to_vec()]));
    assert!(e.contains("unknown marker type 9"), "{e}");
    let e = err(&craft(256, &[metadata_marker(u64::MAX / 2, 1).to_vec()]));
    assert!(e.contains("implausibly long"), "{e}");
}
