//! Property: whatever the contents and size, write -> read gives the input back (padded with
//! zeros to a whole sector), through any buffer size on the reading side.

use std::io::Read;

use ovf::vmdk::{self, WriteOptions};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Seg {
    Zeros(usize),
    Random(Vec<u8>),
    Byte(u8, usize),
}

fn seg() -> impl Strategy<Value = Seg> {
    prop_oneof![
        (1usize..200_000).prop_map(Seg::Zeros),
        proptest::collection::vec(any::<u8>(), 1..70_000).prop_map(Seg::Random),
        (any::<u8>(), 1usize..150_000).prop_map(|(b, n)| Seg::Byte(b, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn write_then_read_gives_the_input_back(
        segs in proptest::collection::vec(seg(), 0..8),
        threads in 1usize..4,
        level in 1u32..10,
        chunk in 1usize..100_000,
    ) {
        let mut raw = Vec::new();
        for s in segs {
            match s {
                Seg::Zeros(n) => raw.extend(std::iter::repeat_n(0u8, n)),
                Seg::Random(v) => raw.extend(v),
                Seg::Byte(b, n) => raw.extend(std::iter::repeat_n(b, n)),
            }
        }
        let opts = WriteOptions { threads, compression_level: level, ..WriteOptions::default() };
        let mut v = Vec::new();
        let mut last = None;
        let s = vmdk::write_stream_optimized(&raw[..], raw.len() as u64, &mut v, &opts, &mut |p| last = Some(p)).unwrap();
        prop_assert_eq!(s.written as usize, v.len());
        if !raw.is_empty() {
            let p = last.unwrap();
            prop_assert_eq!(p.read, raw.len() as u64);
            prop_assert!(p.written < v.len() as u64, "progress counts grains, the tables come after");
        }
        let mut r = vmdk::StreamReader::new(&v[..]).unwrap();
        prop_assert_eq!(r.capacity(), raw.len().div_ceil(512) as u64 * 512);
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 { break; }
            out.extend_from_slice(&buf[..n]);
        }
        prop_assert_eq!(out.len() as u64, r.capacity());
        prop_assert!(out[..raw.len()] == raw[..]);
        prop_assert!(out[raw.len()..].iter().all(|b| *b == 0));
    }
}
