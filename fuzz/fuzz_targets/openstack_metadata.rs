#![no_main]
//! Fuzz target: OpenStack config drive documents. The first byte picks `meta_data.json` or
//! `network_data.json`; a network that parses must validate and render.
use capstan_agent::cloudinit::openstack::{parse_meta_data, parse_network_data};
use capstan_agent::steps::network::render;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    if sel & 1 == 0 {
        let _ = parse_meta_data(text);
    } else if let Ok(Some(net)) = parse_network_data(text) {
        net.validate("links").expect("parser returned an invalid config");
        let _ = render(&net);
    }
});
