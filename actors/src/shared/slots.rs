//! Connection slots: an outbound limit (full-relay peers), a block-relay-only limit, an
//! inbound limit and a total, reserved atomically before a Connection is spawned and
//! released exactly once, by RAII.
//!
//! The five counts live in one `AtomicU64` (outbound, block-relay-only, feeler, manual and
//! inbound, each in a field of its own), so a reservation checks every limit and takes its
//! slot in a single
//! compare-and-swap: two racing reservations can never both take the last slot. A
//! [`SlotPermit`] gives its slot back when dropped, so every exit path of a Connection
//! (handshake failure, error, panic, kill, graceful stop) releases it exactly once; the
//! permit lives in the Connection's state. Limits can change at run time; lowering one never
//! revokes permits already held (the Manager disconnects the excess in eviction order
//! instead). Block-relay-only connections are outbound too, but have slots of their own,
//! as Core's (`MAX_BLOCK_RELAY_ONLY_CONNECTIONS` beside `MAX_OUTBOUND_FULL_RELAY_CONNECTIONS`);
//! so do manual peers (`--connect`, `--addnode`, one-try: Core's `MAX_ADDNODE_CONNECTIONS`),
//! which never count against the total either, as Core's manual connections do not count
//! against its automatic ones: an operator's peers never crowd out, or are crowded out by,
//! the automatic ones.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::peer::Direction;

/// Default outbound limit (Bitcoin Core: 8 full-relay outbound peers).
pub const DEFAULT_MAX_OUTBOUND: u32 = 8;
/// Default block-relay-only limit (Core's `MAX_BLOCK_RELAY_ONLY_CONNECTIONS`): two outbound
/// peers that carry blocks only, whose existence gossip and transaction relay never reveal,
/// so that an attacker mapping our full-relay peers still misses them.
pub const DEFAULT_MAX_BLOCK_RELAY_ONLY: u32 = 2;
/// Manual peers at most (Core's `MAX_ADDNODE_CONNECTIONS`): `--connect`, `--addnode` and
/// one-try connections, apart from every other kind.
pub const DEFAULT_MAX_MANUAL: u32 = 8;
/// Default inbound limit (Core's 125 total minus its 11 automatic outbound: 8 full-relay, 2
/// block-relay-only and the one short-lived connection a feeler, an addr-fetch or the extra
/// block-relay-only peer takes), so that full inbound slots never shut those out.
pub const DEFAULT_MAX_INBOUND: u32 = 114;
/// Default total (Core's `DEFAULT_MAX_PEER_CONNECTIONS`).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 125;
/// Feeler connections at once (Core's `MAX_FEELER_CONNECTIONS`): a short connection that
/// tests an address of the new table (or a tried-table occupant) and is closed once it
/// handshakes.
pub const MAX_FEELER_CONNECTIONS: u32 = 1;

/// Block-relay-only connections above the limit at once: Core's one extra, opened now and
/// then to sync our tip from someone new (`GetExtraBlockRelayCount`).
pub const MAX_EXTRA_BLOCK_RELAY: u32 = 1;
/// Bits of each count in the packed word: outbound, block-relay-only and manual 12 (4,095),
/// feelers 4, inbound 24 (16 million). Limits above a field's range are held at it.
const FIELDS: [(SlotKind, u32, u32); 5] = [
    (SlotKind::Outbound, 52, 12),
    (SlotKind::BlockRelay, 40, 12),
    (SlotKind::Feeler, 36, 4),
    (SlotKind::Manual, 24, 12),
    (SlotKind::Inbound, 0, 24),
];

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SlotLimits {
    /// Full-relay outbound connections at most.
    pub outbound: u32,
    /// Block-relay-only outbound connections at most.
    pub block_relay: u32,
    /// Manual connections at most (not counted in `total`).
    pub manual: u32,
    /// Inbound connections at most.
    pub inbound: u32,
    /// Automatic and inbound connections in total at most.
    pub total: u32,
}

impl Default for SlotLimits {
    fn default() -> Self {
        SlotLimits {
            outbound: DEFAULT_MAX_OUTBOUND,
            block_relay: DEFAULT_MAX_BLOCK_RELAY_ONLY,
            manual: DEFAULT_MAX_MANUAL,
            inbound: DEFAULT_MAX_INBOUND,
            total: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Slots in use per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SlotUsage {
    /// Full-relay outbound slots held.
    pub outbound: u32,
    /// Block-relay-only slots held.
    pub block_relay: u32,
    /// Feeler slots held.
    pub feeler: u32,
    /// Manual slots held.
    pub manual: u32,
    /// Inbound slots held.
    pub inbound: u32,
}

impl SlotUsage {
    /// The slots `total` limits: every one but the manual ones.
    pub fn total(&self) -> u32 {
        self.outbound + self.block_relay + self.feeler + self.inbound
    }
}

/// What a slot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// An outbound full-relay (or manual) connection.
    Outbound,
    /// An outbound block-relay-only connection.
    BlockRelay,
    /// A feeler: an outbound connection closed once it handshakes.
    Feeler,
    /// A manual connection (`--connect`, `--addnode`, one-try).
    Manual,
    /// An inbound connection.
    Inbound,
}

impl SlotKind {
    fn field(self) -> (u32, u32) {
        FIELDS
            .iter()
            .find(|(k, _, _)| *k == self)
            .map_or((0, 0), |(_, shift, bits)| (*shift, *bits))
    }

    fn shift(self) -> u32 {
        self.field().0
    }

    /// The largest count the field holds.
    fn max(self) -> u32 {
        ((1u64 << self.field().1) - 1) as u32
    }
}

impl From<Direction> for SlotKind {
    fn from(d: Direction) -> SlotKind {
        match d {
            Direction::Outbound => SlotKind::Outbound,
            Direction::Inbound => SlotKind::Inbound,
        }
    }
}

fn unpack(v: u64) -> SlotUsage {
    let count = |k: SlotKind| ((v >> k.shift()) & u64::from(k.max())) as u32;
    SlotUsage {
        feeler: count(SlotKind::Feeler),
        outbound: count(SlotKind::Outbound),
        block_relay: count(SlotKind::BlockRelay),
        manual: count(SlotKind::Manual),
        inbound: count(SlotKind::Inbound),
    }
}

fn unit(kind: SlotKind) -> u64 {
    1 << kind.shift()
}

#[derive(Debug)]
struct Inner {
    used: AtomicU64,
    max_outbound: AtomicU32,
    max_block_relay: AtomicU32,
    max_manual: AtomicU32,
    max_inbound: AtomicU32,
    max_total: AtomicU32,
}

/// The shared slot counter. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SlotPool {
    inner: Arc<Inner>,
}

/// One reserved slot; released when dropped.
#[derive(Debug)]
pub struct SlotPermit {
    pool: Arc<Inner>,
    kind: SlotKind,
}

impl SlotPermit {
    /// The direction this slot counts against.
    pub fn direction(&self) -> Direction {
        match self.kind {
            SlotKind::Inbound => Direction::Inbound,
            SlotKind::Outbound | SlotKind::BlockRelay | SlotKind::Feeler | SlotKind::Manual => {
                Direction::Outbound
            }
        }
    }

    /// What the slot is for.
    pub fn kind(&self) -> SlotKind {
        self.kind
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        self.pool.used.fetch_sub(unit(self.kind), Ordering::AcqRel);
    }
}

impl SlotPool {
    /// A pool with these limits.
    pub fn new(limits: SlotLimits) -> SlotPool {
        let limits = Self::clamp(limits);
        SlotPool {
            inner: Arc::new(Inner {
                used: AtomicU64::new(0),
                max_outbound: AtomicU32::new(limits.outbound),
                max_block_relay: AtomicU32::new(limits.block_relay),
                max_manual: AtomicU32::new(limits.manual),
                max_inbound: AtomicU32::new(limits.inbound),
                max_total: AtomicU32::new(limits.total),
            }),
        }
    }

    /// Limits above what a packed count holds are held at it: more would spill into the
    /// next count.
    fn clamp(limits: SlotLimits) -> SlotLimits {
        SlotLimits {
            outbound: limits.outbound.min(SlotKind::Outbound.max()),
            block_relay: limits.block_relay.min(SlotKind::BlockRelay.max()),
            manual: limits.manual.min(SlotKind::Manual.max()),
            inbound: limits.inbound.min(SlotKind::Inbound.max()),
            total: limits.total,
        }
    }

    /// Current limits.
    pub fn limits(&self) -> SlotLimits {
        SlotLimits {
            outbound: self.inner.max_outbound.load(Ordering::Acquire),
            block_relay: self.inner.max_block_relay.load(Ordering::Acquire),
            manual: self.inner.max_manual.load(Ordering::Acquire),
            inbound: self.inner.max_inbound.load(Ordering::Acquire),
            total: self.inner.max_total.load(Ordering::Acquire),
        }
    }

    /// Changes the limits (live config). Held permits stay valid.
    pub fn set_limits(&self, limits: SlotLimits) {
        let limits = Self::clamp(limits);
        self.inner
            .max_outbound
            .store(limits.outbound, Ordering::Release);
        self.inner
            .max_block_relay
            .store(limits.block_relay, Ordering::Release);
        self.inner
            .max_manual
            .store(limits.manual, Ordering::Release);
        self.inner
            .max_inbound
            .store(limits.inbound, Ordering::Release);
        self.inner.max_total.store(limits.total, Ordering::Release);
    }

    /// Slots in use now.
    pub fn usage(&self) -> SlotUsage {
        unpack(self.inner.used.load(Ordering::Acquire))
    }

    /// Takes a slot for `direction` if every limit allows it (outbound: full-relay).
    pub fn try_reserve(&self, direction: Direction) -> Option<SlotPermit> {
        self.try_reserve_kind(direction.into())
    }

    /// Takes a slot of `kind` if every limit allows it.
    pub fn try_reserve_kind(&self, kind: SlotKind) -> Option<SlotPermit> {
        self.reserve(kind, 0)
    }

    /// Takes a block-relay-only slot above the limit (Core's extra block-relay-only peer):
    /// only while the regular ones are all taken, at most [`MAX_EXTRA_BLOCK_RELAY`] above
    /// it, and within the total.
    pub fn try_reserve_extra_block_relay(&self) -> Option<SlotPermit> {
        let (u, l) = (self.usage(), self.limits());
        if l.block_relay == 0 || u.block_relay < l.block_relay {
            return None;
        }
        self.reserve(SlotKind::BlockRelay, MAX_EXTRA_BLOCK_RELAY)
    }

    fn reserve(&self, kind: SlotKind, extra_block_relay: u32) -> Option<SlotPermit> {
        let limits = self.limits();
        let mut current = self.inner.used.load(Ordering::Acquire);
        loop {
            let u = unpack(current);
            let fits = match kind {
                SlotKind::Outbound => u.outbound < limits.outbound && u.total() < limits.total,
                SlotKind::BlockRelay => {
                    u.block_relay < limits.block_relay + extra_block_relay
                        && u.total() < limits.total
                }
                SlotKind::Feeler => u.feeler < MAX_FEELER_CONNECTIONS && u.total() < limits.total,
                // The operator's peers: their own limit only.
                SlotKind::Manual => u.manual < limits.manual,
                SlotKind::Inbound => u.inbound < limits.inbound && u.total() < limits.total,
            };
            if !fits {
                return None;
            }
            match self.inner.used.compare_exchange_weak(
                current,
                current + unit(kind),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(SlotPermit {
                        pool: self.inner.clone(),
                        kind,
                    })
                }
                Err(now) => current = now,
            }
        }
    }

    /// How many held slots of `direction` are above the limits (after a live shrink);
    /// outbound counts full-relay and block-relay-only slots together.
    pub fn excess(&self, direction: Direction) -> u32 {
        let u = self.usage();
        let mut l = self.limits();
        if l.outbound == 0 {
            // `max-outbound 0`: no automatic outbound peer of either kind.
            l.block_relay = 0;
        }
        let outbound = u.outbound + u.block_relay;
        let own = match direction {
            Direction::Outbound => {
                // The extra block-relay-only peer is allowed above its limit, not excess.
                let extra = if l.block_relay > 0 {
                    MAX_EXTRA_BLOCK_RELAY
                } else {
                    0
                };
                u.outbound.saturating_sub(l.outbound)
                    + u.block_relay.saturating_sub(l.block_relay + extra)
            }
            Direction::Inbound => u.inbound.saturating_sub(l.inbound),
        };
        let over_total = u.total().saturating_sub(l.total);
        // Over the total, inbound peers go first (they are the ones we can replace).
        match direction {
            Direction::Inbound => own.max(over_total.min(u.inbound)),
            Direction::Outbound => own.max(over_total.saturating_sub(u.inbound)).min(outbound),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn limits_per_direction_and_total_hold() {
        let pool = SlotPool::new(SlotLimits {
            outbound: 2,
            block_relay: 0,
            manual: 0,
            inbound: 3,
            total: 4,
        });
        let o1 = pool.try_reserve(Direction::Outbound).unwrap();
        let _o2 = pool.try_reserve(Direction::Outbound).unwrap();
        assert!(pool.try_reserve(Direction::Outbound).is_none());
        let _i1 = pool.try_reserve(Direction::Inbound).unwrap();
        let _i2 = pool.try_reserve(Direction::Inbound).unwrap();
        assert!(
            pool.try_reserve(Direction::Inbound).is_none(),
            "total of 4 reached"
        );
        drop(o1);
        assert!(pool.try_reserve(Direction::Inbound).is_some());
    }

    #[test]
    fn with_the_defaults_full_inbound_never_shuts_out_the_short_lived_slot() {
        let pool = SlotPool::new(SlotLimits::default());
        let mut held = Vec::new();
        for _ in 0..DEFAULT_MAX_INBOUND {
            held.push(pool.try_reserve(Direction::Inbound).unwrap());
        }
        for _ in 0..DEFAULT_MAX_OUTBOUND {
            held.push(pool.try_reserve_kind(SlotKind::Outbound).unwrap());
        }
        for _ in 0..DEFAULT_MAX_BLOCK_RELAY_ONLY {
            held.push(pool.try_reserve_kind(SlotKind::BlockRelay).unwrap());
        }
        // Core's 11th automatic outbound grant: a feeler (or an addr-fetch), or else the
        // extra block-relay-only peer; one of them, within the total of 125.
        let extra = pool.try_reserve_extra_block_relay().unwrap();
        assert!(pool.try_reserve_kind(SlotKind::Feeler).is_none());
        assert_eq!(
            pool.excess(Direction::Outbound),
            0,
            "the extra peer is not excess"
        );
        drop(extra);
        let _feeler = pool.try_reserve_kind(SlotKind::Feeler).unwrap();
        assert!(pool.try_reserve_extra_block_relay().is_none());
        assert!(pool.try_reserve(Direction::Inbound).is_none());
    }

    #[test]
    fn block_relay_only_slots_are_their_own_and_count_in_the_total() {
        let pool = SlotPool::new(SlotLimits {
            outbound: 1,
            block_relay: 2,
            manual: 2,
            inbound: 5,
            total: 4,
        });
        let _o = pool.try_reserve(Direction::Outbound).unwrap();
        assert!(pool.try_reserve(Direction::Outbound).is_none());
        let b1 = pool.try_reserve_kind(SlotKind::BlockRelay).unwrap();
        assert_eq!(b1.direction(), Direction::Outbound);
        let _b2 = pool.try_reserve_kind(SlotKind::BlockRelay).unwrap();
        assert!(pool.try_reserve_kind(SlotKind::BlockRelay).is_none());
        assert_eq!(
            pool.usage(),
            SlotUsage {
                outbound: 1,
                block_relay: 2,
                feeler: 0,
                manual: 0,
                inbound: 0
            }
        );
        let _i = pool.try_reserve(Direction::Inbound).unwrap();
        assert!(pool.try_reserve(Direction::Inbound).is_none(), "total of 4");
        assert!(
            pool.try_reserve_kind(SlotKind::Feeler).is_none(),
            "total of 4"
        );
        // Manual peers have their own slots, outside the total.
        let m1 = pool.try_reserve_kind(SlotKind::Manual).unwrap();
        let _m2 = pool.try_reserve_kind(SlotKind::Manual).unwrap();
        assert!(pool.try_reserve_kind(SlotKind::Manual).is_none());
        assert_eq!(m1.direction(), Direction::Outbound);
        assert_eq!(pool.usage().total(), 4);
        drop(b1);
        assert_eq!(pool.usage().block_relay, 1);
    }

    #[test]
    fn shrinking_reports_excess_and_keeps_permits() {
        let pool = SlotPool::new(SlotLimits::default());
        let held: Vec<_> = (0..10)
            .filter_map(|_| pool.try_reserve(Direction::Inbound))
            .collect();
        pool.set_limits(SlotLimits {
            inbound: 6,
            ..SlotLimits::default()
        });
        assert_eq!(pool.excess(Direction::Inbound), 4);
        assert_eq!(pool.usage().inbound, 10);
        drop(held);
        assert_eq!(pool.usage(), SlotUsage::default());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Many threads hammer reserve and release; the counts never pass a limit and return
        /// to zero.
        #[test]
        fn concurrent_reserve_and_release_never_exceed_limits(
            outbound in 1u32..6, block_relay in 0u32..3, manual in 0u32..4, inbound in 1u32..10,
            total in 1u32..12, threads in 2usize..12,
        ) {
            let pool = SlotPool::new(SlotLimits { outbound, block_relay, manual, inbound, total });
            let over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            std::thread::scope(|s| {
                for t in 0..threads {
                    let pool = pool.clone();
                    let over = over.clone();
                    s.spawn(move || {
                        let mut held = Vec::new();
                        for i in 0..2000usize {
                            let kind = match (i + t) % 7 {
                                0 | 1 => SlotKind::Outbound,
                                2 => SlotKind::BlockRelay,
                                3 => SlotKind::Manual,
                                4 => SlotKind::Feeler,
                                _ => SlotKind::Inbound,
                            };
                            if let Some(p) = pool.try_reserve_kind(kind) { held.push(p); }
                            let u = pool.usage();
                            if u.outbound > outbound || u.block_relay > block_relay
                                || u.manual > manual || u.feeler > MAX_FEELER_CONNECTIONS
                                || u.inbound > inbound || u.total() > total {
                                over.store(true, std::sync::atomic::Ordering::SeqCst);
                            }
                            if i % 2 == 1 { held.pop(); }
                            if i % 7 == 0 { held.clear(); }
                        }
                    });
                }
            });
            prop_assert!(!over.load(std::sync::atomic::Ordering::SeqCst));
            prop_assert_eq!(pool.usage(), SlotUsage::default());
        }
    }
}
