//! Fuzzes the STUN response decoder (through stun_codec): no datagram may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd_actors::stun::codec::decode_response;

fuzz_target!(|data: &[u8]| {
    let mut tid = [0u8; 12];
    if data.len() >= 20 {
        tid.copy_from_slice(&data[8..20]);
    }
    let _ = decode_response(data, tid);
});
