#![no_main]
//! Fuzz target: `.cert` member parsing (an OVA's signature and certificate chain). Any input
//! parses or fails with an error; what parses renders and parses back to the same file.
use libfuzzer_sys::fuzz_target;
use ovf::cert::CertFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = CertFile::parse(data) {
        let again = CertFile::parse(&c.render()).expect("rendered .cert parses");
        assert_eq!(again, c);
    }
});
