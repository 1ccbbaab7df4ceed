//! Connection slots: an outbound limit, an inbound limit and a total, reserved atomically
//! before a Connection is spawned and released exactly once, by RAII.
//!
//! Both counts live in one `AtomicU64` (outbound in the high half, inbound in the low half),
//! so a reservation checks all three limits and takes its slot in a single compare-and-swap:
//! two racing reservations can never both take the last slot. A [`SlotPermit`] gives its slot
//! back when dropped, so every exit path of a Connection (handshake failure, error, panic,
//! kill, graceful stop) releases it exactly once; the permit lives in the Connection's state.
//! Limits can change at run time; lowering one never revokes permits already held (the
//! Manager disconnects the excess in eviction order instead).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::peer::Direction;

/// Default outbound limit (Bitcoin Core: 8 full-relay outbound peers).
pub const DEFAULT_MAX_OUTBOUND: u32 = 8;
/// Default inbound limit (Core's 125 total minus its outbound).
pub const DEFAULT_MAX_INBOUND: u32 = 117;
/// Default total (Core's `DEFAULT_MAX_PEER_CONNECTIONS`).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 125;

/// The three limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SlotLimits {
    /// Outbound connections at most.
    pub outbound: u32,
    /// Inbound connections at most.
    pub inbound: u32,
    /// Connections in total at most.
    pub total: u32,
}

impl Default for SlotLimits {
    fn default() -> Self {
        SlotLimits {
            outbound: DEFAULT_MAX_OUTBOUND,
            inbound: DEFAULT_MAX_INBOUND,
            total: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Slots in use per direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SlotUsage {
    /// Outbound slots held.
    pub outbound: u32,
    /// Inbound slots held.
    pub inbound: u32,
}

fn unpack(v: u64) -> SlotUsage {
    SlotUsage {
        outbound: (v >> 32) as u32,
        inbound: v as u32,
    }
}

fn unit(direction: Direction) -> u64 {
    match direction {
        Direction::Outbound => 1 << 32,
        Direction::Inbound => 1,
    }
}

#[derive(Debug)]
struct Inner {
    used: AtomicU64,
    max_outbound: AtomicU32,
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
    direction: Direction,
}

impl SlotPermit {
    /// The direction this slot counts against.
    pub fn direction(&self) -> Direction {
        self.direction
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        self.pool
            .used
            .fetch_sub(unit(self.direction), Ordering::AcqRel);
    }
}

impl SlotPool {
    /// A pool with these limits.
    pub fn new(limits: SlotLimits) -> SlotPool {
        SlotPool {
            inner: Arc::new(Inner {
                used: AtomicU64::new(0),
                max_outbound: AtomicU32::new(limits.outbound),
                max_inbound: AtomicU32::new(limits.inbound),
                max_total: AtomicU32::new(limits.total),
            }),
        }
    }

    /// Current limits.
    pub fn limits(&self) -> SlotLimits {
        SlotLimits {
            outbound: self.inner.max_outbound.load(Ordering::Acquire),
            inbound: self.inner.max_inbound.load(Ordering::Acquire),
            total: self.inner.max_total.load(Ordering::Acquire),
        }
    }

    /// Changes the limits (live config). Held permits stay valid.
    pub fn set_limits(&self, limits: SlotLimits) {
        self.inner
            .max_outbound
            .store(limits.outbound, Ordering::Release);
        self.inner
            .max_inbound
            .store(limits.inbound, Ordering::Release);
        self.inner.max_total.store(limits.total, Ordering::Release);
    }

    /// Slots in use now.
    pub fn usage(&self) -> SlotUsage {
        unpack(self.inner.used.load(Ordering::Acquire))
    }

    /// Takes a slot for `direction` if every limit allows it.
    pub fn try_reserve(&self, direction: Direction) -> Option<SlotPermit> {
        let limits = self.limits();
        let mut current = self.inner.used.load(Ordering::Acquire);
        loop {
            let u = unpack(current);
            let total = u.outbound + u.inbound;
            let fits = match direction {
                Direction::Outbound => u.outbound < limits.outbound,
                Direction::Inbound => u.inbound < limits.inbound,
            } && total < limits.total;
            if !fits {
                return None;
            }
            match self.inner.used.compare_exchange_weak(
                current,
                current + unit(direction),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(SlotPermit {
                        pool: self.inner.clone(),
                        direction,
                    })
                }
                Err(now) => current = now,
            }
        }
    }

    /// How many held slots of `direction` are above the limits (after a live shrink).
    pub fn excess(&self, direction: Direction) -> u32 {
        let u = self.usage();
        let l = self.limits();
        let own = match direction {
            Direction::Outbound => u.outbound.saturating_sub(l.outbound),
            Direction::Inbound => u.inbound.saturating_sub(l.inbound),
        };
        let over_total = (u.outbound + u.inbound).saturating_sub(l.total);
        // Over the total, inbound peers go first (they are the ones we can replace).
        match direction {
            Direction::Inbound => own.max(over_total.min(u.inbound)),
            Direction::Outbound => own.max(over_total.saturating_sub(u.inbound)),
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
            outbound in 1u32..6, inbound in 1u32..10, total in 1u32..12, threads in 2usize..12,
        ) {
            let pool = SlotPool::new(SlotLimits { outbound, inbound, total });
            let over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            std::thread::scope(|s| {
                for t in 0..threads {
                    let pool = pool.clone();
                    let over = over.clone();
                    s.spawn(move || {
                        let mut held = Vec::new();
                        for i in 0..2000usize {
                            let dir = if (i + t) % 3 == 0 { Direction::Outbound } else { Direction::Inbound };
                            if let Some(p) = pool.try_reserve(dir) { held.push(p); }
                            let u = pool.usage();
                            if u.outbound > outbound || u.inbound > inbound || u.outbound + u.inbound > total {
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
