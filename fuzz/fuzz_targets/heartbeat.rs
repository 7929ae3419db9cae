//! The hub's heartbeat parser: any bytes give a heartbeat or an error, never a panic, and a
//! heartbeat that parses round-trips through its own JSON.
#![no_main]

use capstan_agent::heartbeat::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(hb) = wire::parse(data) {
        let again = wire::parse(&hb.to_json()).expect("a parsed heartbeat re-parses");
        assert_eq!(again, hb);
    }
});
