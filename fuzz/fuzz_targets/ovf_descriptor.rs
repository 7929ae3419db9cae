#![no_main]
//! Fuzz target: the OVF descriptor reader. Arbitrary bytes go through the same path as a file
//! (`Envelope::from_bytes`: BOM sniffing, UTF-8/UTF-16, XML, model); whatever parses is
//! validated, written and read back, and must come back equal.
use libfuzzer_sys::fuzz_target;
use ovf::descriptor::validate::{validate, Options};
use ovf::descriptor::Envelope;

fuzz_target!(|data: &[u8]| {
    let Ok(env) = Envelope::from_bytes(data) else {
        return;
    };
    let _ = validate(&env, &Options::strict());
    let xml = env.to_xml();
    let again = Envelope::parse(&xml).expect("what we write must parse");
    assert_eq!(again, env, "round trip changed the model");
    assert_eq!(again.to_xml(), xml, "writing is not deterministic");
});
