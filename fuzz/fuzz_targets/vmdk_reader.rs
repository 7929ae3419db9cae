#![no_main]
//! Fuzz target: the streamOptimized VMDK reader (header, markers, grains, inflate). Any input
//! reads or fails with an error; never a panic, a hang or an unbounded allocation. Output is
//! capped because a hostile header may announce a huge (all-zero) capacity.
use libfuzzer_sys::fuzz_target;
use ovf::vmdk::{inspect, StreamReader};

const MAX_OUTPUT: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let _ = inspect(data);
    // The whole-stream check (what `ova verify` runs on disks) must agree with reading.
    let checked = StreamReader::new(data).and_then(|r| r.check()).is_ok();
    let Ok(mut reader) = StreamReader::new(data) else {
        return;
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut read_ok = false;
    while total < MAX_OUTPUT {
        match reader.read_raw(&mut buf) {
            Ok(0) => {
                read_ok = true;
                break;
            }
            Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    assert!(total <= reader.capacity());
    if read_ok {
        assert!(checked, "read to the end but check() failed");
    }
});
