//! Fuzzes the streaming frame decoder: arbitrary bytes, fed in arbitrary chunks, must never
//! panic, a fatal error must stop the stream, and every frame handed out (whole, a list part,
//! or skipped) must decode as a message or give a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd_actors::network::NetworkId;
use meshd_actors::wire::{FrameDecoder, Message};

fuzz_target!(|data: &[u8]| {
    let p = NetworkId::Regtest.profile();
    // The first byte picks the chunk size, so chunking is fuzzed too; the second whether the
    // handshake is done (post-handshake limits, long lists in parts) and how many blocks are
    // expected.
    let [chunk, mode, rest @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    let mut dec = if mode & 1 == 1 {
        FrameDecoder::new_established(p.magic, p.limits)
    } else {
        FrameDecoder::new(p.magic, p.limits)
    };
    if mode & 2 == 2 {
        dec.set_blocks_expected(u32::from(mode >> 2));
    }
    for piece in rest.chunks(chunk) {
        let mut input = piece;
        while let Some(r) = dec.decode(&mut input) {
            match r {
                Ok(frame) => {
                    let _ = Message::decode(frame);
                }
                Err(e) if e.is_fatal() => return,
                Err(_) => {}
            }
        }
    }
});
