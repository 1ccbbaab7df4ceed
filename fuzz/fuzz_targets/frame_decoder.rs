//! Fuzzes the streaming frame decoder: arbitrary bytes, fed in arbitrary chunks, must never
//! panic, and a fatal error must stop the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd_actors::network::NetworkId;
use meshd_actors::wire::FrameDecoder;

fuzz_target!(|data: &[u8]| {
    let p = NetworkId::Regtest.profile();
    // The first byte picks the chunk size, so chunking is fuzzed too.
    let (chunk, rest) = match data.split_first() {
        Some((c, r)) => (usize::from(*c).max(1), r),
        None => return,
    };
    let mut dec = FrameDecoder::new(p.magic, p.limits);
    for piece in rest.chunks(chunk) {
        let mut input = piece;
        while let Some(r) = dec.decode(&mut input) {
            if matches!(&r, Err(e) if e.is_fatal()) {
                return;
            }
        }
    }
});
