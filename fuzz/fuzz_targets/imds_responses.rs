#![no_main]
//! Fuzz target: EC2 instance metadata responses. The input is split at 0xff bytes into bodies:
//! the first ones answer the fixed paths (instance-id, local-hostname, the key and NIC
//! listings, user-data), the next ones the paths those listings lead to, in order, as the
//! client would fetch them; the whole set is then parsed. A network that parses must render.
use capstan_agent::sources::ec2::{
    parse, second_round, Ec2Responses, INSTANCE_ID, LOCAL_HOSTNAME, MACS, PUBLIC_KEYS, USER_DATA,
};
use capstan_agent::steps::network::render;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bodies = data.split(|&b| b == 0xff);
    let mut got = Ec2Responses::new();
    for p in [INSTANCE_ID, LOCAL_HOSTNAME, PUBLIC_KEYS, MACS, USER_DATA] {
        match bodies.next() {
            // an empty part stands for a 404
            Some(b) if !b.is_empty() => {
                got.insert(p.to_owned(), b.to_vec());
            }
            Some(_) => {}
            None => break,
        }
    }
    if let Ok(paths) = second_round(&got) {
        for (p, b) in paths.into_iter().zip(bodies) {
            got.insert(p, b.to_vec());
        }
    }
    if let Ok(d) = parse(&got, "fuzz") {
        if let Some(net) = d.network {
            let _ = render(&net);
        }
    }
});
