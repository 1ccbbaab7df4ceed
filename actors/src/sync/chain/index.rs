//! The chain's hash index: block hash → entry number, in four bytes per table slot.
//!
//! A header chain of mainnet's length has about a million headers, and a general hash map
//! from hash (or a part of it) to entry spends 9 bytes per bucket at a load of at most 7/8,
//! about 20 bytes per header. The hash of every stored header can be had from the chain
//! itself (on the best chain without hashing: it is the child's `prev_blockhash`), so this
//! table stores no keys at all: a slot holds the entry number and a few tag bits of the
//! hash, and a candidate is confirmed by asking the chain for that entry's hash. Open
//! addressing with linear probing, at most 3/4 full; the tag makes a probe past a foreign
//! slot cost no lookup in the chain 63 times in 64.
//!
//! # Security
//! Slots come from a hash of the block hash under a random seed per table, so headers cannot
//! be ground to pile up in one run of the table. (Grinding for a collision of the whole
//! seeded 64-bit key is not feasible.)

use std::hash::BuildHasher;

use bitcoin::hashes::Hash;
use bitcoin::BlockHash;

/// Bits of a slot that hold the entry number.
const ENTRY_BITS: u32 = 26;
/// Mask of the entry number in a slot.
const ENTRY_MASK: u32 = (1 << ENTRY_BITS) - 1;
/// A free slot (its entry number is all ones, which [`MAX_ENTRIES`] keeps unused).
const EMPTY: u32 = u32::MAX;

/// Entries the index can hold.
///
/// # Security
/// 67 million headers, 70 times mainnet's length (5.6 GB of headers): no chain of a
/// supported network comes near it, and the chain refuses headers beyond it rather than
/// index them wrongly.
pub const MAX_ENTRIES: u32 = ENTRY_MASK;

/// Smallest table (slots); it doubles when 3/4 full.
const MIN_SLOTS: usize = 1024;

/// The index. Callers give it the hash of any entry it holds through a closure, since it
/// keeps none itself.
#[derive(Debug)]
pub struct HashIndex {
    slots: Vec<u32>,
    len: usize,
    seed: foldhash::fast::RandomState,
}

impl Default for HashIndex {
    fn default() -> Self {
        HashIndex {
            slots: vec![EMPTY; MIN_SLOTS],
            len: 0,
            seed: foldhash::fast::RandomState::default(),
        }
    }
}

impl HashIndex {
    /// The seeded key of a hash: its top bits choose the slot, its low six are the tag.
    fn key(&self, hash: &BlockHash) -> u64 {
        let b = hash.as_byte_array();
        let mut first = [0u8; 8];
        first.copy_from_slice(&b[..8]);
        self.seed.hash_one(u64::from_le_bytes(first))
    }

    fn home(&self, key: u64) -> usize {
        // Slots are a power of two: the top bits of the key, scaled.
        ((key >> 32) as usize) & (self.slots.len() - 1)
    }

    fn tag(key: u64) -> u32 {
        ((key & 0x3f) as u32) << ENTRY_BITS
    }

    /// The entry whose hash is `hash`, if indexed. `hash_of` gives an indexed entry's hash.
    pub fn find(&self, hash: &BlockHash, hash_of: impl Fn(u32) -> BlockHash) -> Option<u32> {
        let key = self.key(hash);
        let tag = Self::tag(key);
        let mask = self.slots.len() - 1;
        let mut at = self.home(key);
        loop {
            let slot = self.slots[at];
            if slot == EMPTY {
                return None;
            }
            if slot & !ENTRY_MASK == tag && hash_of(slot & ENTRY_MASK) == *hash {
                return Some(slot & ENTRY_MASK);
            }
            at = (at + 1) & mask;
        }
    }

    /// Whether inserting one more entry needs a larger table first (see [`rebuild`]).
    ///
    /// [`rebuild`]: Self::rebuild
    pub fn needs_growth(&self) -> bool {
        (self.len + 1) * 4 > self.slots.len() * 3
    }

    /// Indexes `entry` under `hash` (not indexed yet, and below [`MAX_ENTRIES`]). The table
    /// must have room: see [`needs_growth`](Self::needs_growth).
    pub fn insert(&mut self, hash: &BlockHash, entry: u32) {
        debug_assert!(entry < MAX_ENTRIES);
        let key = self.key(hash);
        let mask = self.slots.len() - 1;
        let mut at = self.home(key);
        while self.slots[at] != EMPTY {
            at = (at + 1) & mask;
        }
        self.slots[at] = Self::tag(key) | (entry & ENTRY_MASK);
        self.len += 1;
    }

    /// Replaces the table with one of twice the size holding `entries` (every entry to be
    /// indexed, with its hash).
    pub fn rebuild(&mut self, entries: impl Iterator<Item = (u32, BlockHash)>) {
        let slots = (self.slots.len() * 2).max(MIN_SLOTS);
        self.slots = Vec::new();
        let mut fresh = vec![EMPTY; slots];
        std::mem::swap(&mut self.slots, &mut fresh);
        self.len = 0;
        for (entry, hash) in entries {
            self.insert(&hash, entry);
        }
    }

    /// Takes `entry` (indexed under `hash`) out. Later slots of its run move back (linear
    /// probing's deletion without tombstones), so `hash_of` is asked for their hashes.
    pub fn remove(&mut self, hash: &BlockHash, entry: u32, hash_of: impl Fn(u32) -> BlockHash) {
        let key = self.key(hash);
        let mask = self.slots.len() - 1;
        let mut at = self.home(key);
        loop {
            let slot = self.slots[at];
            if slot == EMPTY {
                return;
            }
            if slot & ENTRY_MASK == entry {
                break;
            }
            at = (at + 1) & mask;
        }
        let mut hole = at;
        let mut next = (hole + 1) & mask;
        while self.slots[next] != EMPTY {
            let slot = self.slots[next];
            let home = self.home(self.key(&hash_of(slot & ENTRY_MASK)));
            // The slot may move into the hole unless its home lies cyclically in
            // (hole, next]: then it would move before its home and never be found.
            let home_in_between = if hole <= next {
                hole < home && home <= next
            } else {
                hole < home || home <= next
            };
            if !home_in_between {
                self.slots[hole] = slot;
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
    }

    /// Entries indexed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the table.
    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn hash(n: u32) -> BlockHash {
        BlockHash::hash(&n.to_le_bytes())
    }

    proptest! {
        /// Against a map: any sequence of inserts and removes (growth included) finds
        /// exactly what the map holds.
        #[test]
        fn agrees_with_a_map(ops in proptest::collection::vec((any::<bool>(), 0u32..3000), 1..4000)) {
            let mut index = HashIndex::default();
            let mut model: HashMap<u32, BlockHash> = HashMap::new();
            for (insert, n) in ops {
                let h = hash(n);
                if insert {
                    if model.contains_key(&n) {
                        continue;
                    }
                    if index.needs_growth() {
                        let all: Vec<_> = model.iter().map(|(e, h)| (*e, *h)).collect();
                        index.rebuild(all.into_iter());
                    }
                    index.insert(&h, n);
                    model.insert(n, h);
                } else if model.remove(&n).is_some() {
                    let m = &model;
                    index.remove(&h, n, |e| if e == n { h } else { m[&e] });
                }
                prop_assert_eq!(index.len(), model.len());
            }
            for n in 0..3000u32 {
                let found = index.find(&hash(n), |e| model[&e]);
                prop_assert_eq!(found, model.contains_key(&n).then_some(n));
            }
        }
    }

    #[test]
    fn four_bytes_a_slot_and_at_most_three_quarters_full() {
        let mut index = HashIndex::default();
        let mut hashes = Vec::new();
        for n in 0..90_000u32 {
            if index.needs_growth() {
                index.rebuild(hashes.iter().copied());
            }
            index.insert(&hash(n), n);
            hashes.push((n, hash(n)));
        }
        assert_eq!(index.memory_bytes(), 131_072 * 4);
        assert!(index.len() * 4 <= 131_072 * 3);
        assert_eq!(
            index.find(&hash(89_999), |e| hashes[e as usize].1),
            Some(89_999)
        );
        assert_eq!(index.find(&hash(90_000), |e| hashes[e as usize].1), None);
    }
}
