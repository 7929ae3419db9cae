#![no_main]
//! Fuzz target: `.mf` manifest parsing. Any input parses or fails with a line-numbered error;
//! what parses renders and parses back to the same entries.
use libfuzzer_sys::fuzz_target;
use ovf::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse_bytes(data) {
        let again = Manifest::parse(&m.render()).expect("rendered manifest parses");
        assert_eq!(again, m);
    }
});
