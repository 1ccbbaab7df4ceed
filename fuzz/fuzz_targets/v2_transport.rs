//! Fuzzes the BIP324 v2 transport core. Mode 0: arbitrary bytes, in arbitrary chunks, at a
//! responder's handshake (a stranger's key, garbage, packets). Mode 1: packets a real
//! encoder made from arbitrary contents (message type and payload, decoy or not), some
//! corrupted, fed in arbitrary chunks to an established session's decoder. No input may
//! panic, and after a fatal error the decoder keeps returning it.
#![no_main]

use std::sync::OnceLock;

use bip324::Role;
use meshd_actors::wire::fschacha::{PacketOpener, PacketSealer};
use libfuzzer_sys::fuzz_target;
use meshd_actors::network::NetworkId;
use meshd_actors::wire::v2::{V2Decoder, V2Handshake};
use meshd_actors::wire::FrameDecoder;

fn magic() -> [u8; 4] {
    NetworkId::Regtest.profile().magic.to_bytes()
}

/// One session's ciphers (initiator's outbound, responder's inbound), made once.
fn session() -> &'static (PacketSealer, PacketOpener) {
    static PAIR: OnceLock<(PacketSealer, PacketOpener)> = OnceLock::new();
    PAIR.get_or_init(|| {
        let (mut a, mut to_b) =
            V2Handshake::with_secret(magic(), Role::Initiator, [1; 32], vec![9; 10]);
        let (mut b, mut to_a) = V2Handshake::with_secret(magic(), Role::Responder, [2; 32], vec![]);
        let (mut ra, mut rb) = (None, None);
        while ra.is_none() || rb.is_none() {
            let step = b.feed(&std::mem::take(&mut to_b)).unwrap();
            to_a.extend(step.send);
            rb = rb.or(step.ready);
            let step = a.feed(&std::mem::take(&mut to_a)).unwrap();
            to_b.extend(step.send);
            ra = ra.or(step.ready);
        }
        (ra.unwrap().outbound, rb.unwrap().inbound)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let chunk = (mode as usize >> 2) % 61 + 1;
    if mode & 1 == 0 {
        let (mut hs, _) = V2Handshake::with_secret(magic(), Role::Responder, [7; 32], Vec::new());
        for piece in rest.chunks(chunk) {
            match hs.feed(piece) {
                Ok(step) => {
                    if step.ready.is_some() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        return;
    }
    let (out, inb) = session();
    let mut out = out.clone();
    let p = NetworkId::Regtest.profile();
    let mut rules = FrameDecoder::new(p.magic, p.limits);
    if mode & 2 != 0 {
        // Past verack: the network's limits, not the pre-handshake one.
        let verack = meshd_actors::wire::encode_frame(
            p.magic,
            meshd_actors::wire::Command::new("verack").unwrap(),
            &[],
        );
        rules.decode(&mut &verack[..]);
        rules.set_blocks_expected(u32::from(mode >> 6));
    }
    let mut dec = V2Decoder::new(inb.clone(), rules);
    let mut wire = Vec::new();
    for piece in rest.split(|b| *b == 0xff).take(64) {
        let Some((&flags, contents)) = piece.split_first() else {
            continue;
        };
        let Ok(mut packet) = out.encrypt_to_vec(contents, flags & 1 != 0) else {
            return;
        };
        if flags & 2 != 0 {
            let i = flags as usize % packet.len();
            packet[i] ^= 0x5a;
        }
        wire.extend(packet);
    }
    let mut fatal = None;
    for piece in wire.chunks(chunk) {
        let mut input = piece;
        while let Some(r) = dec.decode(&mut input) {
            if let Err(e) = r {
                if e.is_fatal() {
                    fatal = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = &fatal {
            // A fatal error sticks.
            assert_eq!(dec.decode(&mut &[][..]), Some(Err(e.clone())));
            return;
        }
    }
});
