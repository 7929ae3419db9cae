#![no_main]
//! Fuzz target: the OVF environment reader (`ovf-env.xml` from a CD-ROM or guestinfo.ovfEnv).
//! Whatever parses is written back and must read back equal.
use libfuzzer_sys::fuzz_target;
use ovf::env::Environment;

fuzz_target!(|data: &[u8]| {
    let Ok(env) = Environment::from_bytes(data) else {
        return;
    };
    let xml = env.to_xml();
    let again = Environment::parse(&xml).expect("what we write must parse");
    assert_eq!(again, env, "round trip changed the environment");
});
