//! BSV's difficulty rules, as the BSV node computes them (its `pow.cpp`), as a sans-IO core:
//! the 144-block DAA of November 2017 (a target from the work done and the time taken
//! between two median-of-three blocks, the time span clamped to [72, 288] block intervals),
//! and before it the legacy 2016-block retarget with the Emergency Difficulty Adjustment
//! (a 25% easier target when the last six blocks took over 12 hours by median time). The
//! testnet rule (a block over 20 minutes after its parent may be at the limit) is applied
//! where the network allows minimum-difficulty blocks.

use bitcoin::pow::Target;

/// Seconds between blocks the rules aim at.
const TARGET_SPACING: u64 = 600;
/// Blocks in the DAA's window (the BSV node: `nHeight - 144`).
pub const DAA_WINDOW: u32 = 144;
/// The DAA's time span is clamped to [72, 288] block intervals: at most a factor of two
/// either way per block, so no single timestamp makes a difficulty cliff.
const DAA_MIN_SPAN_BLOCKS: u64 = 72;
const DAA_MAX_SPAN_BLOCKS: u64 = 288;
/// The EDA eases the target when six blocks took longer than this by median time.
const EDA_SLOW_SPAN: i64 = 12 * 3600;

/// What the rules need to know of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    /// Its time.
    pub time: u32,
    /// Cumulative work up to and including it.
    pub chain_work: u128,
}

/// The median-of-three block by time among `[b(n-2), b(n-1), b(n)]`, chosen exactly as the
/// BSV node's sorting network does (ties matter: they pick which block's work counts).
pub fn suitable(blocks: [BlockInfo; 3]) -> BlockInfo {
    let mut b = blocks;
    if b[0].time > b[2].time {
        b.swap(0, 2);
    }
    if b[0].time > b[1].time {
        b.swap(0, 1);
    }
    if b[1].time > b[2].time {
        b.swap(1, 2);
    }
    b[1]
}

/// 256-bit `(2^256 - w) / w` for a nonzero 128-bit `w`, as big-endian bytes.
fn complement_div(w: u128) -> [u8; 32] {
    // 2^256 - w as (hi, lo) 128-bit halves.
    let (hi, lo) = (u128::MAX, 0u128.wrapping_sub(w));
    let (hi, lo) = if w == 0 {
        (u128::MAX, u128::MAX)
    } else {
        (hi, lo)
    };
    let d = w.max(1);
    let q_hi = hi / d;
    let mut r = hi % d;
    let mut q_lo = 0u128;
    for i in (0..128).rev() {
        let carry = r >> 127;
        r = (r << 1) | ((lo >> i) & 1);
        q_lo <<= 1;
        if carry == 1 || r >= d {
            r = r.wrapping_sub(d);
            q_lo |= 1;
        }
    }
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(&q_hi.to_be_bytes());
    out[16..].copy_from_slice(&q_lo.to_be_bytes());
    out
}

/// The DAA: nBits for the block after `last`, from the suitable blocks at both ends of the
/// 144-block window.
pub fn cash_next_bits(first: BlockInfo, last: BlockInfo, pow_limit: Target) -> u32 {
    let work = last.chain_work.saturating_sub(first.chain_work);
    let span = u64::from(last.time)
        .saturating_sub(u64::from(first.time))
        .clamp(
            DAA_MIN_SPAN_BLOCKS * TARGET_SPACING,
            DAA_MAX_SPAN_BLOCKS * TARGET_SPACING,
        );
    let w = work.saturating_mul(u128::from(TARGET_SPACING)) / u128::from(span);
    let target = Target::from_be_bytes(complement_div(w));
    if target > pow_limit {
        return pow_limit.to_compact_lossy().to_consensus();
    }
    target.to_compact_lossy().to_consensus()
}

/// The EDA between retargets: the parent's nBits, or a target 25% higher (capped at the
/// limit) when the median time of the last six blocks spans more than 12 hours.
pub fn eda_next_bits(prev_bits: u32, mtp_prev: u32, mtp_six_back: u32, pow_limit: Target) -> u32 {
    let limit_bits = pow_limit.to_compact_lossy().to_consensus();
    if prev_bits == limit_bits {
        return limit_bits;
    }
    if i64::from(mtp_prev) - i64::from(mtp_six_back) < EDA_SLOW_SPAN {
        return prev_bits;
    }
    let t = Target::from_compact(bitcoin::CompactTarget::from_consensus(prev_bits));
    let b = t.to_be_bytes();
    let hi = u128::from_be_bytes(b[..16].try_into().unwrap_or([0; 16]));
    let lo = u128::from_be_bytes(b[16..].try_into().unwrap_or([0; 16]));
    // t + t/4 in 256 bits.
    let (q_lo, q_hi) = ((lo >> 2) | (hi << 126), hi >> 2);
    let (new_lo, carry) = lo.overflowing_add(q_lo);
    let new_hi = hi.saturating_add(q_hi).saturating_add(u128::from(carry));
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(&new_hi.to_be_bytes());
    out[16..].copy_from_slice(&new_lo.to_be_bytes());
    let eased = Target::from_be_bytes(out);
    if eased > pow_limit {
        return limit_bits;
    }
    eased.to_compact_lossy().to_consensus()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::CompactTarget;

    /// The BSV node's `powLimit` for mainnet (all ones below 32 leading zero bits).
    fn pow_limit() -> Target {
        let mut b = [0xffu8; 32];
        b[..4].copy_from_slice(&[0, 0, 0, 0]);
        Target::from_be_bytes(b)
    }

    fn work(bits: u32) -> u128 {
        let w = Target::from_compact(CompactTarget::from_consensus(bits))
            .to_work()
            .to_be_bytes();
        u128::from_be_bytes(w[16..].try_into().unwrap())
    }

    /// A chain built the way the BSV node's `cash_difficulty_test` builds it.
    struct Chain(Vec<(u32, u32, u128)>);

    impl Chain {
        fn push(&mut self, interval: i64, bits: u32) {
            let (t, _, w) = *self.0.last().unwrap();
            self.0
                .push(((t as i64 + interval) as u32, bits, w + work(bits)));
        }
        fn info(&self, h: usize) -> BlockInfo {
            let (time, _, chain_work) = self.0[h];
            BlockInfo { time, chain_work }
        }
        fn next(&self) -> u32 {
            let tip = self.0.len() - 1;
            let three = |h: usize| [self.info(h - 2), self.info(h - 1), self.info(h)];
            cash_next_bits(
                suitable(three(tip - DAA_WINDOW as usize)),
                suitable(three(tip)),
                pow_limit(),
            )
        }
    }

    fn target(bits: u32) -> Target {
        Target::from_compact(CompactTarget::from_consensus(bits))
    }

    #[test]
    fn the_bsv_nodes_cash_difficulty_test_figures() {
        // powLimit >> 4, as the BSV node's test starts.
        let mut b = pow_limit().to_be_bytes();
        let v = u128::from_be_bytes(b[..16].try_into().unwrap()) >> 4;
        let low = u128::from_be_bytes(b[16..].try_into().unwrap()) >> 4
            | (u128::from_be_bytes(b[..16].try_into().unwrap()) << 124);
        b[..16].copy_from_slice(&v.to_be_bytes());
        b[16..].copy_from_slice(&low.to_be_bytes());
        let initial = Target::from_be_bytes(b).to_compact_lossy().to_consensus();
        let mut c = Chain(vec![(1_269_211_443, initial, work(initial))]);
        for _ in 1..2050 {
            c.push(600, initial);
        }
        let mut bits = c.next();
        for _ in 0..10 {
            c.push(600, bits);
            assert_eq!(c.next(), bits);
        }
        // A block far in the future, then one back on schedule: no effect.
        c.push(6000, bits);
        assert_eq!(c.next(), bits);
        c.push(2 * 600 - 6000, bits);
        assert_eq!(c.next(), bits);
        for _ in 0..20 {
            c.push(600, bits);
            assert_eq!(c.next(), bits);
        }
        c.push(550, bits);
        assert_eq!(c.next(), bits);
        for _ in 0..10 {
            c.push(550, bits);
            let next = c.next();
            assert!(target(next) < target(bits));
            bits = next;
        }
        assert_eq!(bits, 0x1c0fe7b1);
        for _ in 0..20 {
            c.push(10, bits);
            bits = c.next();
        }
        assert_eq!(bits, 0x1c0db19f);
        c.push(6000, bits);
        bits = c.next();
        assert_eq!(bits, 0x1c0d9222);
        for _ in 0..93 {
            c.push(6000, bits);
            let next = c.next();
            assert!(target(next) > target(bits) && target(next) <= pow_limit());
            bits = next;
        }
        assert_eq!(bits, 0x1c2f13b9);
        c.push(6000, bits);
        bits = c.next();
        assert_eq!(bits, 0x1c2ee9bf);
        for _ in 0..192 {
            c.push(6000, bits);
            bits = c.next();
        }
        assert_eq!(bits, 0x1d00ffff);
        for _ in 0..5 {
            c.push(6000, bits);
            bits = c.next();
            assert_eq!(bits, 0x1d00ffff);
        }
    }

    #[test]
    fn the_eda_eases_by_a_quarter_after_twelve_slow_hours_and_stops_at_the_limit() {
        let limit = pow_limit();
        let start = limit.to_compact_lossy().to_consensus();
        // The BSV node's retargeting_test: from powLimit >> 1.
        let half = {
            let mut b = limit.to_be_bytes();
            let hi = u128::from_be_bytes(b[..16].try_into().unwrap());
            let lo = u128::from_be_bytes(b[16..].try_into().unwrap());
            b[..16].copy_from_slice(&(hi >> 1).to_be_bytes());
            b[16..].copy_from_slice(&((lo >> 1) | (hi << 127)).to_be_bytes());
            Target::from_be_bytes(b).to_compact_lossy().to_consensus()
        };
        assert_eq!(
            eda_next_bits(half, 100_000, 100_000 - 11 * 3600, limit),
            half
        );
        let eased = eda_next_bits(half, 100_000, 100_000 - 13 * 3600, limit);
        assert!(target(eased) > target(half));
        assert_eq!(eda_next_bits(start, 100_000, 0, limit), start);
    }
}
