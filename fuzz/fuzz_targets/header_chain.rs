//! Fuzzes the header chain: arbitrary sequences of headers on top of any header already seen
//! (regtest's easy target, so about half carry valid proof of work), with times going either
//! way and nBits picked among valid and invalid ones. No input may panic, and after every
//! header the chain must agree with itself: the tip is at the best height, found by its hash,
//! and first in the locator.
#![no_main]

use bitcoin::block::{Header, Version};
use bitcoin::hashes::Hash;
use bitcoin::{CompactTarget, TxMerkleNode};
use libfuzzer_sys::fuzz_target;
use meshd_actors::network::NetworkId;
use meshd_actors::sync::chain::headers::HeaderChain;

fuzz_target!(|data: &[u8]| {
    let profile = NetworkId::Regtest.profile();
    let mut chain = HeaderChain::new(&profile);
    let mut seen: Vec<Header> = vec![profile.genesis];
    // Nine bytes per header: parent pick (1), time step (2, signed), nBits pick (1), nonce (4),
    // merkle byte (1).
    for (i, rec) in data.chunks_exact(9).take(2_000).enumerate() {
        let parent = seen[usize::from(rec[0]) % seen.len()];
        let step = i16::from_le_bytes([rec[1], rec[2]]);
        let bits = match rec[3] % 4 {
            0 | 1 => profile.genesis.bits,
            2 => CompactTarget::from_consensus(0x2000_ffff),
            _ => {
                CompactTarget::from_consensus(u32::from_le_bytes([rec[3], rec[4], rec[5], rec[6]]))
            }
        };
        let header = Header {
            version: Version::from_consensus(0x2000_0000),
            prev_blockhash: parent.block_hash(),
            merkle_root: TxMerkleNode::from_byte_array([rec[8]; 32]),
            time: parent.time.wrapping_add_signed(i32::from(step)),
            bits,
            nonce: u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]) ^ i as u32,
        };
        if chain
            .accept(&header, parent.time.saturating_add(7200))
            .is_ok()
        {
            seen.push(header);
        }
        let tip = chain.tip();
        assert_eq!(chain.height_of(&tip), Some(chain.height()));
        assert_eq!(chain.locator().first(), Some(&tip));
        assert_eq!(chain.tip_header().block_hash(), tip);
    }
});
