#![no_main]
//! Fuzz target: cloud-init metadata (incl. the netplan v2 `network`) and `#cloud-config`
//! user-data parsing, and rendering whatever parses. The first byte picks the parser so one
//! corpus covers both; a parsed network is validated and rendered too (render must not panic
//! on anything the parser accepted).
use capstan_agent::cloudinit::{parse_cloud_config, parse_metadata};
use capstan_agent::steps::network::render;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    if sel & 1 == 0 {
        if let Ok(md) = parse_metadata(text) {
            if let Some(net) = md.network {
                net.validate("network.ethernets").expect("parser returned an invalid config");
                let _ = render(&net);
            }
        }
    } else {
        let body = format!("#cloud-config\n{text}");
        let _ = parse_cloud_config(&body);
        let _ = parse_cloud_config(text);
    }
});
