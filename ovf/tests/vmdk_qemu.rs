//! Cross-checks our streamOptimized VMDKs against qemu-img, the independent implementation we
//! have here: `qemu-img check` accepts ours, `qemu-img convert` reads ours back byte for byte,
//! and our reader reads qemu-img's own streamOptimized output.

use std::path::Path;
use std::process::Command;

use ovf::vmdk::{self, AdapterType, WriteOptions};

/// Deterministic mixed content: random runs, text, zero runs, repeated patterns.
fn mixed_image(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let text = b"The quick brown fox jumps over the lazy dog; capstan streams grains. ";
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let run = (rnd() % 300_000) as usize + 1;
        let run = run.min(len - out.len());
        match rnd() % 4 {
            0 => out.extend((0..run).map(|_| rnd() as u8)),
            1 => out.extend(text.iter().cycle().take(run)),
            2 => out.extend(std::iter::repeat_n(0u8, run)),
            _ => out.extend((0..run).map(|i| (i / 512) as u8)),
        }
    }
    out
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img").args(args).output().unwrap_or_else(|e| {
        panic!("qemu-img is required for this test (apt-get install qemu-utils): {e}")
    });
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn write_ours(raw: &[u8], path: &Path, opts: &WriteOptions) {
    let f = std::fs::File::create(path).unwrap();
    let summary = vmdk::write_stream_optimized(
        raw,
        raw.len() as u64,
        std::io::BufWriter::new(f),
        opts,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(summary.written, std::fs::metadata(path).unwrap().len());
}

const SIZES: [usize; 5] = [
    512,
    64 * 1024 * 3 + 4096,   // not a multiple of the grain
    (33 << 20) + 512 * 7,   // crosses a grain table boundary (32 MiB), odd sector count
    40 << 20,               // exact multiple
    5 * 1024 * 1024 + 1536, // small odd tail
];

#[test]
fn qemu_img_checks_and_reads_our_vmdk_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    for (i, len) in SIZES.iter().enumerate() {
        let raw = mixed_image(*len, i as u64 + 11);
        let vmdk_path = dir.path().join(format!("ours{i}.vmdk"));
        write_ours(&raw, &vmdk_path, &WriteOptions::default());
        let p = vmdk_path.to_str().unwrap();
        qemu_img(&["check", "-f", "vmdk", p]);
        let info = String::from_utf8(qemu_img(&["info", "--output=json", p]).stdout).unwrap();
        assert!(info.contains("\"create-type\": \"streamOptimized\""), "{info}");
        let back = dir.path().join(format!("ours{i}.raw"));
        qemu_img(&["convert", "-f", "vmdk", "-O", "raw", p, back.to_str().unwrap()]);
        let got = std::fs::read(&back).unwrap();
        assert_eq!(got.len(), raw.len(), "size {len}");
        assert!(got == raw, "qemu-img read different bytes for size {len}");
    }
}

#[test]
fn our_reader_reads_qemu_img_stream_optimized_output() {
    let dir = tempfile::tempdir().unwrap();
    for (i, len) in SIZES.iter().enumerate() {
        let raw = mixed_image(*len, i as u64 + 101);
        let raw_path = dir.path().join(format!("in{i}.raw"));
        std::fs::write(&raw_path, &raw).unwrap();
        let q = dir.path().join(format!("qemu{i}.vmdk"));
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            raw_path.to_str().unwrap(),
            q.to_str().unwrap(),
        ]);
        let mut got = Vec::new();
        let n =
            vmdk::read_to_raw(std::fs::File::open(&q).unwrap(), &mut got, &mut |_, _| {}).unwrap();
        assert_eq!(n as usize, raw.len());
        assert!(got == raw, "our reader differs on qemu-img's output, size {len}");
    }
}

#[test]
fn header_descriptor_and_options_are_what_vmware_writes() {
    let raw = mixed_image(3 << 20, 7);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vmdk");
    let opts = WriteOptions {
        extent_name: "node-disk1.vmdk".into(),
        adapter_type: AdapterType::Ide,
        hw_version: 7,
        cid: Some(0xdeadbeef),
        ..WriteOptions::default()
    };
    write_ours(&raw, &path, &opts);
    let info = vmdk::inspect(std::fs::File::open(&path).unwrap()).unwrap();
    assert_eq!(info.header.version, 3);
    assert_eq!(info.header.flags, 0x30001);
    assert_eq!(info.header.grain_size, 128);
    assert_eq!(info.header.gd_offset, u64::MAX, "GD_AT_END in the header");
    assert_eq!(info.capacity(), raw.len() as u64);
    assert_eq!(info.descriptor_value("createType"), Some("streamOptimized"));
    assert_eq!(info.descriptor_value("ddb.adapterType"), Some("ide"));
    assert_eq!(info.descriptor_value("ddb.geometry.heads"), Some("16"));
    assert_eq!(info.descriptor_value("ddb.virtualHWVersion"), Some("7"));
    assert_eq!(info.descriptor_value("ddb.toolsInstallType"), Some("4"));
    assert_eq!(info.descriptor_value("CID"), Some("deadbeef"));
    let bytes = std::fs::read(&path).unwrap();
    assert!(std::str::from_utf8(&bytes[512..1024])
        .unwrap()
        .contains("RW 6144 SPARSE \"node-disk1.vmdk\""));
    // The stream ends: footer marker, footer (gdOffset filled in), end-of-stream marker.
    let n = bytes.len();
    assert_eq!(&bytes[n - 512..], &[0u8; 512][..], "EOS marker");
    assert_eq!(&bytes[n - 1536 + 12..n - 1536 + 16], &3u32.to_le_bytes(), "footer marker");
    let footer: [u8; 512] = bytes[n - 1024..n - 512].try_into().unwrap();
    let footer = vmdk::SparseHeader::decode(&footer).unwrap();
    assert_ne!(footer.gd_offset, u64::MAX);
    let gd_marker = (footer.gd_offset as usize - 1) * 512;
    assert_eq!(&bytes[gd_marker + 12..gd_marker + 16], &2u32.to_le_bytes(), "GD marker");
    // qemu-img agrees on the adapter (it reads the descriptor too).
    let p = path.to_str().unwrap();
    qemu_img(&["check", "-f", "vmdk", p]);
}

#[test]
fn output_is_reproducible_and_zero_grains_are_skipped() {
    let mut raw = mixed_image(8 << 20, 3);
    raw.extend(std::iter::repeat_n(0u8, 16 << 20));
    let mut a = Vec::new();
    let mut b = Vec::new();
    let one = WriteOptions { threads: 1, ..WriteOptions::default() };
    let four = WriteOptions { threads: 4, ..WriteOptions::default() };
    let sa = vmdk::write_stream_optimized(&raw[..], raw.len() as u64, &mut a, &one, &mut |_| {})
        .unwrap();
    vmdk::write_stream_optimized(&raw[..], raw.len() as u64, &mut b, &four, &mut |_| {}).unwrap();
    assert!(a == b, "thread count changed the bytes");
    assert!(sa.zero_grains >= 256, "the 16 MiB zero tail is 256 grains: {sa:?}");
}
