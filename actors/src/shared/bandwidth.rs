//! Bandwidth limits: token buckets in bytes per second, per connection and global, in each
//! direction. Enforced by pacing (the reader waits before reading more, the writer before
//! writing), never by dropping or reordering data.
//!
//! [`TokenBucket`] is the sans-IO core: it takes a byte count, the time and the current rate
//! and burst, and answers how long the caller must wait. It works on debt: bytes already read
//! are always accounted, the balance may go negative, and the wait is the time to pay the debt
//! back, so the long-run rate is exact whatever the chunk sizes. A rate of 0 means unlimited.
//! [`Throttle`] combines a connection's own bucket with the shared global one; rates live in
//! [`RateLimits`] atomics so a live config change applies to every connection at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket. See the module documentation.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now` (full as of the first `take`).
    pub fn new(now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::INFINITY,
            last: now,
        }
    }

    /// Accounts `bytes` at `now` under `rate` bytes/s and `burst` bytes; returns the wait
    /// before the next use. `rate == 0` means unlimited.
    pub fn take(&mut self, bytes: u64, now: Instant, rate: u64, burst: u64) -> Duration {
        if rate == 0 {
            self.tokens = f64::INFINITY;
            self.last = now;
            return Duration::ZERO;
        }
        let burst = burst.max(1) as f64;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate as f64).min(burst) - bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate as f64)
        }
    }
}

/// Rates and bursts in bytes per second / bytes; 0 means unlimited. Shared and live.
#[derive(Debug, Default)]
pub struct RateLimits {
    up_rate: AtomicU64,
    up_burst: AtomicU64,
    down_rate: AtomicU64,
    down_burst: AtomicU64,
}

/// Direction of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Bytes we send.
    Up,
    /// Bytes we receive.
    Down,
}

impl Flow {
    /// `upload` or `download`, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Up => "upload",
            Flow::Down => "download",
        }
    }
}

impl RateLimits {
    /// Limits with these rates and bursts.
    pub fn new(up_rate: u64, up_burst: u64, down_rate: u64, down_burst: u64) -> RateLimits {
        let r = RateLimits::default();
        r.set(up_rate, up_burst, down_rate, down_burst);
        r
    }

    /// Replaces the limits.
    pub fn set(&self, up_rate: u64, up_burst: u64, down_rate: u64, down_burst: u64) {
        self.up_rate.store(up_rate, Ordering::Relaxed);
        self.up_burst
            .store(burst_or_default(up_rate, up_burst), Ordering::Relaxed);
        self.down_rate.store(down_rate, Ordering::Relaxed);
        self.down_burst
            .store(burst_or_default(down_rate, down_burst), Ordering::Relaxed);
    }

    /// (rate, burst) for a direction.
    pub fn get(&self, flow: Flow) -> (u64, u64) {
        match flow {
            Flow::Up => (
                self.up_rate.load(Ordering::Relaxed),
                self.up_burst.load(Ordering::Relaxed),
            ),
            Flow::Down => (
                self.down_rate.load(Ordering::Relaxed),
                self.down_burst.load(Ordering::Relaxed),
            ),
        }
    }
}

/// Burst used when none is configured: a tenth of a second of traffic, at least 16 KiB.
///
/// Small enough that pacing stays smooth, large enough that one socket read or one
/// ordinary message does not always wait.
pub fn burst_or_default(rate: u64, burst: u64) -> u64 {
    if burst > 0 {
        burst
    } else {
        (rate / 10).max(16 * 1024)
    }
}

/// One connection's pacing in one direction: its own bucket plus the global one (none for
/// an exempt connection).
#[derive(Debug)]
pub struct Throttle {
    flow: Flow,
    own: TokenBucket,
    own_limits: Arc<RateLimits>,
    global: Option<Arc<Mutex<TokenBucket>>>,
    global_limits: Arc<RateLimits>,
}

impl Throttle {
    /// A throttle for `flow` under per-connection and global limits.
    pub fn new(
        flow: Flow,
        own_limits: Arc<RateLimits>,
        global: Arc<Mutex<TokenBucket>>,
        global_limits: Arc<RateLimits>,
    ) -> Throttle {
        Throttle {
            flow,
            own: TokenBucket::new(Instant::now()),
            own_limits,
            global: Some(global),
            global_limits,
        }
    }

    /// A throttle that paces nothing and never touches the shared global bucket (a
    /// `download`-whitelisted peer's uploads): an unlimited take would refill the shared
    /// bucket, and the global cap would stop holding for every other peer.
    pub fn exempt(flow: Flow) -> Throttle {
        let unlimited = Arc::new(RateLimits::new(0, 0, 0, 0));
        Throttle {
            flow,
            own: TokenBucket::new(Instant::now()),
            own_limits: unlimited.clone(),
            global: None,
            global_limits: unlimited,
        }
    }

    /// Largest chunk worth reading or writing at once under the current limits.
    pub fn chunk(&self, default: usize) -> usize {
        let (r1, b1) = self.own_limits.get(self.flow);
        let (r2, b2) = self.global_limits.get(self.flow);
        let mut c = default;
        if r1 > 0 {
            c = c.min(b1 as usize);
        }
        if r2 > 0 {
            c = c.min(b2 as usize);
        }
        c.max(1)
    }

    /// Accounts `bytes` now; returns how long to wait before the next read or write.
    pub fn take(&mut self, bytes: usize) -> Duration {
        let now = Instant::now();
        let (rate, burst) = self.own_limits.get(self.flow);
        let own = self.own.take(bytes as u64, now, rate, burst);
        let Some(shared) = &self.global else {
            return own;
        };
        let (grate, gburst) = self.global_limits.get(self.flow);
        let global = match shared.lock() {
            Ok(mut g) => g.take(bytes as u64, now, grate, gburst),
            Err(poisoned) => poisoned.into_inner().take(bytes as u64, now, grate, gburst),
        };
        own.max(global)
    }

    /// The direction.
    pub fn flow(&self) -> Flow {
        self.flow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An exempt throttle leaves the shared bucket alone: the other connections' debt stays.
    #[test]
    fn an_exempt_throttle_never_refills_the_shared_bucket() {
        let limits = Arc::new(RateLimits::new(1000, 1000, 0, 0));
        let shared = Arc::new(Mutex::new(TokenBucket::new(Instant::now())));
        let unlimited = Arc::new(RateLimits::new(0, 0, 0, 0));
        let mut paced = Throttle::new(Flow::Up, unlimited, shared.clone(), limits);
        let mut exempt = Throttle::exempt(Flow::Up);
        assert!(paced.take(5000) > Duration::from_secs(3), "in debt");
        assert_eq!(exempt.take(1_000_000), Duration::ZERO);
        assert!(
            paced.take(1) > Duration::from_secs(3),
            "the debt is still there"
        );
    }

    #[test]
    fn unlimited_never_waits() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0);
        assert_eq!(b.take(u64::MAX / 2, t0, 0, 0), Duration::ZERO);
    }

    #[test]
    fn burst_is_free_then_debt_is_paid_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0);
        assert_eq!(b.take(1000, t0, 1000, 1000), Duration::ZERO);
        assert_eq!(b.take(500, t0, 1000, 1000), Duration::from_millis(500));
        // Half a second later the debt is paid; another 500 bytes cost another 0.5 s.
        assert_eq!(
            b.take(500, t0 + Duration::from_millis(500), 1000, 1000),
            Duration::from_millis(500)
        );
    }

    proptest! {
        /// Following the waits, the bytes moved over a period never exceed burst + rate × time.
        #[test]
        fn paced_traffic_stays_within_rate_plus_burst(
            chunks in proptest::collection::vec(1u64..50_000, 1..300),
            rate in 1_000u64..10_000_000,
            burst in 1u64..100_000,
        ) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(t0);
            let mut now = t0;
            let mut moved = 0u64;
            for c in chunks {
                moved += c;
                let wait = b.take(c, now, rate, burst);
                now += wait;
                let allowed = burst as f64 + rate as f64 * now.duration_since(t0).as_secs_f64() + c as f64;
                prop_assert!((moved as f64) <= allowed + 1.0, "moved {} allowed {}", moved, allowed);
            }
        }
    }
}
