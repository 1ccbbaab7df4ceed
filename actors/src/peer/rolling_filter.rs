//! A rolling bloom filter: remembers at least the last `capacity` items inserted, in memory
//! fixed at construction, with a chosen false-positive rate. Bitcoin Core keeps per-peer
//! known-inventory and known-address sets this way (`CRollingBloomFilter`); a set that is
//! cleared when full, or grows with the peer's traffic, is either forgetful or unbounded.
//!
//! Three generations of plain bloom filters, each sized for half the capacity: inserts go to
//! the newest; when it holds half the capacity the oldest is cleared and becomes the newest.
//! The two full generations always cover the last `capacity` items. A lookup checks all
//! three, so each is sized for a third of the target false-positive rate. Items are hashed
//! with a per-filter random key (foldhash seeded from the OS RNG), so a peer cannot aim for
//! false positives without learning the key: at least as strong as Core's MurmurHash3 with
//! a 32-bit random tweak, though foldhash, unlike SipHash, claims no resistance to a patient
//! attacker who can observe its outcomes.

use std::hash::{BuildHasher, Hash};

/// Generations kept.
const GENERATIONS: usize = 3;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct RollingFilter {
    /// Bits of each generation, as 64-bit words; empty until the generation is first used,
    /// so a peer that never relays costs no filter memory.
    generations: [Vec<u64>; GENERATIONS],
    /// Words per generation.
    words: usize,
    /// Index of the generation inserts go to.
    current: usize,
    /// Items inserted into the current generation.
    in_current: usize,
    /// Items per generation before it rotates.
    per_generation: usize,
    /// Bits per generation.
    bits: u64,
    /// Hash functions per item.
    hashes: u32,
    /// foldhash, keyed from the OS-seeded RNG per filter (and per process): a fraction of
    /// SipHash's cost on the relay path (#29: SipHash and a division per bit made this
    /// filter half of relay's CPU); see the module documentation on aiming at it.
    key: foldhash::quality::SeedableRandomState,
}

/// foldhash's shared seed for every filter of the process, drawn once from the OS-seeded
/// RNG (foldhash's own global seed comes from addresses and the clock).
fn shared_seed() -> &'static foldhash::SharedSeed {
    static SEED: std::sync::OnceLock<foldhash::SharedSeed> = std::sync::OnceLock::new();
    SEED.get_or_init(|| foldhash::SharedSeed::from_u64(rand::random()))
}

/// An item's hashes under one filter's key, so a lookup and the insert after it (and the
/// three generations of a lookup) hash it once.
#[derive(Debug, Clone, Copy)]
pub struct Hashed {
    a: u64,
    b: u64,
}

impl RollingFilter {
    /// A filter that remembers at least the last `capacity` items with false-positive rate
    /// about `fp_rate` (clamped to a sane range).
    pub fn new(capacity: usize, fp_rate: f64) -> RollingFilter {
        let per_generation = capacity.div_ceil(2).max(1);
        let p = (fp_rate / GENERATIONS as f64).clamp(1e-12, 0.5);
        let ln2 = std::f64::consts::LN_2;
        let bits = ((per_generation as f64) * -p.ln() / (ln2 * ln2))
            .ceil()
            .max(64.0) as u64;
        let hashes = ((bits as f64 / per_generation as f64) * ln2)
            .round()
            .clamp(1.0, 50.0) as u32;
        let words = bits.div_ceil(64) as usize;
        RollingFilter {
            generations: std::array::from_fn(|_| Vec::new()),
            words,
            current: 0,
            in_current: 0,
            per_generation,
            bits: words as u64 * 64,
            hashes,
            key: foldhash::quality::SeedableRandomState::with_seed(rand::random(), shared_seed()),
        }
    }

    /// `item`'s hashes under this filter's key.
    pub fn hash<T: Hash + ?Sized>(&self, item: &T) -> Hashed {
        let a = self.key.hash_one(item);
        let b = self.key.hash_one((0xa5a5_u16, a)) | 1;
        Hashed { a, b }
    }

    /// Bit positions of a hashed item: double hashing, each 64-bit value mapped onto the
    /// bits by a multiply and shift (Lemire's range reduction) rather than a division.
    fn positions(bits: u64, hashes: u32, h: Hashed) -> impl Iterator<Item = u64> {
        (0..hashes as u64).map(move |i| {
            let x = h.a.wrapping_add(i.wrapping_mul(h.b));
            ((u128::from(x) * u128::from(bits)) >> 64) as u64
        })
    }

    /// Remembers `item`.
    pub fn insert<T: Hash + ?Sized>(&mut self, item: &T) {
        self.insert_hashed(self.hash(item));
    }

    /// Whether `item` was inserted (recently), or a false positive.
    pub fn contains<T: Hash + ?Sized>(&self, item: &T) -> bool {
        self.contains_hashed(self.hash(item))
    }

    /// [`Self::insert`] of an item hashed by [`Self::hash`] of this filter.
    pub fn insert_hashed(&mut self, h: Hashed) {
        if self.in_current >= self.per_generation {
            self.current = (self.current + 1) % GENERATIONS;
            self.generations[self.current].fill(0);
            self.in_current = 0;
        }
        if self.generations[self.current].is_empty() {
            self.generations[self.current] = vec![0u64; self.words];
        }
        let positions = Self::positions(self.bits, self.hashes, h);
        let generation = &mut self.generations[self.current];
        for pos in positions {
            generation[(pos / 64) as usize] |= 1 << (pos % 64);
        }
        self.in_current += 1;
    }

    /// [`Self::contains`] of an item hashed by [`Self::hash`] of this filter.
    pub fn contains_hashed(&self, h: Hashed) -> bool {
        self.generations.iter().filter(|g| !g.is_empty()).any(|g| {
            Self::positions(self.bits, self.hashes, h)
                .all(|pos| g[(pos / 64) as usize] & (1 << (pos % 64)) != 0)
        })
    }

    /// Forgets everything and hands the generations' memory back (Core resets its recent
    /// rejects this way when the tip changes).
    pub fn reset(&mut self) {
        self.generations = std::array::from_fn(|_| Vec::new());
        self.current = 0;
        self.in_current = 0;
    }

    /// Bytes of filter memory now (at most three generations, fixed at construction).
    pub fn memory(&self) -> usize {
        self.generations.iter().map(|g| g.len() * 8).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_last_capacity_items_are_always_remembered() {
        let mut f = RollingFilter::new(1000, 1e-6);
        for i in 0..10_000u32 {
            f.insert(&i);
            let oldest = i.saturating_sub(999);
            for j in [oldest, (oldest + i) / 2, i] {
                assert!(f.contains(&j), "{j} forgotten after inserting {i}");
            }
        }
    }

    #[test]
    fn false_positives_stay_near_the_target_and_memory_is_fixed() {
        let mut f = RollingFilter::new(50_000, 1e-6);
        assert_eq!(f.memory(), 0, "nothing allocated before the first insert");
        for i in 0..100_000u64 {
            f.insert(&i);
        }
        let before = f.memory();
        for i in 100_000..200_000u64 {
            f.insert(&i);
        }
        assert_eq!(f.memory(), before);
        // Core's known-inventory filter: 50,000 at one in a million, well under a megabyte.
        assert!(before < 512 * 1024, "{before} bytes");
        let fps = (1_000_000u64..1_100_000).filter(|i| f.contains(i)).count();
        assert!(fps <= 5, "{fps} false positives in 100,000 lookups");
    }

    #[test]
    fn reset_forgets_everything_and_frees_the_memory() {
        let mut f = RollingFilter::new(1000, 1e-6);
        for i in 0..1500u32 {
            f.insert(&i);
        }
        f.reset();
        assert_eq!(f.memory(), 0);
        assert!((0..1500u32).all(|i| !f.contains(&i)));
        f.insert(&7u32);
        assert!(f.contains(&7u32));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn no_false_negatives_within_capacity(items in proptest::collection::vec(any::<[u8; 32]>(), 1..400)) {
            let mut f = RollingFilter::new(200, 0.001);
            for (i, item) in items.iter().enumerate() {
                f.insert(item);
                let start = (i + 1).saturating_sub(200);
                for recent in &items[start..=i] {
                    prop_assert!(f.contains(recent));
                }
            }
        }
    }
}
