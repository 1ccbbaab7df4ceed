//! BIP37 bloom filters, as a sans-IO core: what an SPV peer loads with `filterload`, and the
//! matching that decides which transactions of a block go into the `merkleblock` we send it.
//!
//! Matching follows BIP37: a transaction matches if the filter contains its txid, a data push
//! of one of its output scripts, one of the outpoints it spends, or a data push of one of its
//! input scripts. When an output matches and the filter's flags ask for it (`ALL`, or
//! `PUBKEY_ONLY` for pay-to-pubkey and multisig outputs), the outpoint is added to the
//! filter, so the peer also learns of the transaction that later spends it.

use bitcoin::consensus::serialize;
use bitcoin::hashes::Hash;
use bitcoin::p2p::message_bloom::{BloomFlags, FilterLoad};
use bitcoin::script::Instruction;
use bitcoin::{OutPoint, Transaction};

/// Largest filter accepted, bytes (BIP37's `MAX_BLOOM_FILTER_SIZE`).
///
/// # Security
/// A filter is per peer and checked for every transaction we serve it; BIP37 caps it.
pub const MAX_BLOOM_FILTER_SIZE: usize = 36_000;
/// Most hash functions accepted (BIP37's `MAX_HASH_FUNCS`).
pub const MAX_HASH_FUNCS: u32 = 50;
/// Largest element a `filteradd` may carry (a script push, BIP37).
pub const MAX_FILTER_ADD: usize = 520;

/// A loaded filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BloomFilter {
    data: Vec<u8>,
    hash_funcs: u32,
    tweak: u32,
    flags: BloomFlags,
}

/// Why a filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BloomError {
    /// Larger than BIP37 allows.
    #[error("bloom filter or element too large")]
    TooLarge,
}

fn murmur3(seed: u32, data: &[u8]) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    let mut k = 0u32;
    for (i, b) in tail.iter().enumerate() {
        k |= (*b as u32) << (8 * i);
    }
    if !tail.is_empty() {
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

impl BloomFilter {
    /// The filter a `filterload` carries, if within BIP37's limits.
    pub fn load(f: &FilterLoad) -> Result<BloomFilter, BloomError> {
        if f.filter.len() > MAX_BLOOM_FILTER_SIZE || f.hash_funcs > MAX_HASH_FUNCS {
            return Err(BloomError::TooLarge);
        }
        Ok(BloomFilter {
            data: f.filter.clone(),
            hash_funcs: f.hash_funcs,
            tweak: f.tweak,
            flags: f.flags,
        })
    }

    fn bit(&self, n: u32, item: &[u8]) -> usize {
        let seed = n.wrapping_mul(0xfba4_c795).wrapping_add(self.tweak);
        murmur3(seed, item) as usize % (self.data.len() * 8)
    }

    /// Whether the filter (probably) contains `item`.
    pub fn contains(&self, item: &[u8]) -> bool {
        if self.data.is_empty() {
            // Core (CVE-2013-5700's fix): an empty filter matches everything.
            return true;
        }
        (0..self.hash_funcs).all(|n| {
            let b = self.bit(n, item);
            self.data[b / 8] & (1 << (b % 8)) != 0
        })
    }

    /// Adds `item` (from `filteradd`, or an outpoint when flags say so).
    pub fn insert(&mut self, item: &[u8]) -> Result<(), BloomError> {
        if item.len() > MAX_FILTER_ADD {
            return Err(BloomError::TooLarge);
        }
        if self.data.is_empty() {
            return Ok(());
        }
        for n in 0..self.hash_funcs {
            let b = self.bit(n, item);
            self.data[b / 8] |= 1 << (b % 8);
        }
        Ok(())
    }

    /// BIP37 matching of one transaction, updating the filter as its flags ask.
    pub fn matches_and_update(&mut self, tx: &Transaction) -> bool {
        let txid = tx.compute_txid();
        let mut found = self.contains(txid.as_byte_array());
        for (vout, out) in tx.output.iter().enumerate() {
            let pushes: Vec<Vec<u8>> = out
                .script_pubkey
                .instructions()
                .filter_map(|i| match i {
                    Ok(Instruction::PushBytes(p)) if !p.is_empty() => Some(p.as_bytes().to_vec()),
                    _ => None,
                })
                .collect();
            if pushes.iter().any(|p| self.contains(p)) {
                found = true;
                let update = match self.flags {
                    BloomFlags::All => true,
                    BloomFlags::PubkeyOnly => {
                        out.script_pubkey.is_p2pk() || out.script_pubkey.is_multisig()
                    }
                    BloomFlags::None => false,
                };
                if update {
                    let _ = self.insert(&serialize(&OutPoint::new(txid, vout as u32)));
                }
            }
        }
        if found {
            return true;
        }
        tx.input.iter().any(|input| {
            self.contains(&serialize(&input.previous_output))
                || input.script_sig.instructions().any(|i| match i {
                    Ok(Instruction::PushBytes(p)) if !p.is_empty() => self.contains(p.as_bytes()),
                    _ => false,
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_the_reference_vectors() {
        // Vectors from Bitcoin Core's hash_tests.cpp.
        assert_eq!(murmur3(0x0000_0000, &[]), 0x0000_0000);
        assert_eq!(murmur3(0xfba4_c795, &[]), 0x6a39_6f08);
        assert_eq!(murmur3(0xffff_ffff, &[]), 0x81f1_6f39);
        assert_eq!(murmur3(0x0000_0000, &[0x00]), 0x514e_28b7);
        assert_eq!(murmur3(0xfba4_c795, &[0x00]), 0xea3f_0b17);
        assert_eq!(murmur3(0x0000_0000, &[0xff]), 0xfd6c_f10d);
        assert_eq!(murmur3(0x0000_0000, &[0x00, 0x11]), 0x16c6_b7ab);
        assert_eq!(murmur3(0x0000_0000, &[0x00, 0x11, 0x22]), 0x8eb5_1c3d);
        assert_eq!(murmur3(0x0000_0000, &[0x00, 0x11, 0x22, 0x33]), 0xb4471bf8);
        assert_eq!(
            murmur3(0x0000_0000, &[0x00, 0x11, 0x22, 0x33, 0x44]),
            0xe2301fa8
        );
    }

    #[test]
    fn inserted_items_are_found_and_limits_hold() {
        let mut f = BloomFilter::load(&FilterLoad {
            filter: vec![0; 64],
            hash_funcs: 5,
            tweak: 7,
            flags: BloomFlags::All,
        })
        .unwrap();
        f.insert(b"hello").unwrap();
        assert!(f.contains(b"hello"));
        assert!(!f.contains(b"world"));
        assert_eq!(f.insert(&[0u8; 521]), Err(BloomError::TooLarge));
        let big = FilterLoad {
            filter: vec![0; MAX_BLOOM_FILTER_SIZE + 1],
            hash_funcs: 1,
            tweak: 0,
            flags: BloomFlags::None,
        };
        assert_eq!(BloomFilter::load(&big), Err(BloomError::TooLarge));
    }
}
