#![no_main]
//! Fuzz target: NoCloud seeds. The first byte picks what the rest is: a `network-config`
//! (version 1 or 2), a whole seed (`meta-data` and `network-config` split at the first NUL), or
//! an SMBIOS serial `ds=nocloud;…`. A network that parses must validate and render.
use capstan_agent::cloudinit::netv1::parse_network_config;
use capstan_agent::sources::nocloud::{parse_seed, parse_smbios_serial, SeedFiles};
use capstan_agent::steps::network::render;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 3 {
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            if let Ok(doc) = parse_network_config(text, "network-config") {
                if let Some(net) = doc.network {
                    net.validate("network").expect("parser returned an invalid config");
                    let _ = render(&net);
                }
            }
        }
        1 => {
            let (md, nc) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], Some(rest[i + 1..].to_vec())),
                None => (rest, None),
            };
            let files = SeedFiles { meta_data: md.to_vec(), network_config: nc, ..SeedFiles::default() };
            if let Ok(d) = parse_seed(&files, "fuzz") {
                if let Some(net) = d.network {
                    let _ = render(&net);
                }
            }
        }
        _ => {
            if let Ok(s) = std::str::from_utf8(rest) {
                let _ = parse_smbios_serial(s);
            }
        }
    }
});
