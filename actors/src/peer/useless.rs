//! What frames the reader drops unread cost their sender: a budget of useless frames that
//! refills slowly (a peer past it is disconnected), and a log of the drops at most once a
//! minute per peer, with the count since the last line, so a flood of 24-byte frames turns
//! into neither a disk-filling log nor free work. Sans-IO: it takes drop times and returns
//! what to do.

use std::time::{Duration, Instant};

/// Useless frames (unrequested blocks, unknown v2 message ids, oversized transactions, bad
/// checksums...) a peer may send in a burst. An honest peer sends a handful in a
/// connection's life (a block crossing our request, a newer peer's message we do not know);
/// 500 is far above that and ends a flood of 24-byte frames within 12 KB.
pub const USELESS_FRAME_BURST: u32 = 500;

/// One useless frame more is allowed per this much time: about 3,600 an hour, so a slow
/// drip costs the peer its connection only once it is clearly no accident.
pub const USELESS_FRAME_REFILL: Duration = Duration::from_secs(1);

/// Drops from one peer are logged at most once per this interval (with the count since the
/// last line), so a flood costs a line a minute, not a line a frame.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What to do about one more dropped frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropVerdict {
    /// Log it, with the frames dropped since the last line (this one included).
    Log {
        /// Frames dropped since the last line.
        dropped: u64,
    },
    /// Counted; not worth a line yet.
    Quiet,
    /// Over the budget: end the connection.
    Disconnect {
        /// Frames dropped over the connection's life.
        total: u64,
    },
}

/// One peer's useless-frame account.
#[derive(Debug, Clone)]
pub struct UselessFrames {
    /// Frames still allowed, as of `refilled_at`.
    tokens: u32,
    refilled_at: Instant,
    /// When the last line was logged; `None` until the first drop.
    logged_at: Option<Instant>,
    since_log: u64,
    total: u64,
}

impl UselessFrames {
    /// A fresh account, full budget, as of `now`.
    pub fn new(now: Instant) -> Self {
        UselessFrames {
            tokens: USELESS_FRAME_BURST,
            refilled_at: now,
            logged_at: None,
            since_log: 0,
            total: 0,
        }
    }

    /// One more frame dropped at `now`.
    pub fn on_drop(&mut self, now: Instant) -> DropVerdict {
        self.refill(now);
        self.total = self.total.saturating_add(1);
        self.since_log = self.since_log.saturating_add(1);
        if self.tokens == 0 {
            return DropVerdict::Disconnect { total: self.total };
        }
        self.tokens -= 1;
        let due = self
            .logged_at
            .is_none_or(|at| now.saturating_duration_since(at) >= DROP_LOG_INTERVAL);
        if !due {
            return DropVerdict::Quiet;
        }
        self.logged_at = Some(now);
        let dropped = std::mem::take(&mut self.since_log);
        DropVerdict::Log { dropped }
    }

    /// Frames dropped over the connection's life.
    pub fn total(&self) -> u64 {
        self.total
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let earned = elapsed.as_nanos() / USELESS_FRAME_REFILL.as_nanos();
        if earned == 0 {
            return;
        }
        let room = u128::from(USELESS_FRAME_BURST - self.tokens);
        self.tokens += earned.min(room) as u32;
        // Whole refills only: the remainder keeps counting towards the next one.
        let spent = USELESS_FRAME_REFILL.saturating_mul(earned.min(u128::from(u32::MAX)) as u32);
        self.refilled_at = if earned > room {
            now
        } else {
            self.refilled_at + spent
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_flood_is_logged_once_and_disconnected_past_the_burst() {
        let t0 = Instant::now();
        let mut u = UselessFrames::new(t0);
        assert_eq!(u.on_drop(t0), DropVerdict::Log { dropped: 1 });
        for _ in 1..USELESS_FRAME_BURST {
            assert_eq!(u.on_drop(t0), DropVerdict::Quiet);
        }
        assert_eq!(
            u.on_drop(t0),
            DropVerdict::Disconnect {
                total: u64::from(USELESS_FRAME_BURST) + 1
            }
        );
    }

    #[test]
    fn a_slow_drip_is_never_disconnected_and_logged_once_a_minute_with_its_count() {
        let t0 = Instant::now();
        let mut u = UselessFrames::new(t0);
        let mut lines = Vec::new();
        // One frame every 2 s for an hour: under the refill rate.
        for i in 0..1800u32 {
            match u.on_drop(t0 + Duration::from_secs(2 * u64::from(i))) {
                DropVerdict::Log { dropped } => lines.push(dropped),
                DropVerdict::Quiet => {}
                DropVerdict::Disconnect { .. } => panic!("disconnected at frame {i}"),
            }
        }
        assert_eq!(lines[0], 1);
        assert!(lines[1..].iter().all(|&n| n == 30), "{lines:?}");
        assert_eq!(lines.len(), 60);
        // The last minute's drops wait for the next line; none is lost from the count.
        assert_eq!(u.total(), 1800);
        assert_eq!(lines.iter().sum::<u64>(), 1 + 59 * 30);
    }

    proptest! {
        /// Whatever the timing: at most one line per interval (plus the first), every drop
        /// logged or still pending, and a disconnect exactly when the drops outrun the
        /// budget and its refills.
        #[test]
        fn bounded_lines_and_budget(gaps in proptest::collection::vec(0u64..3_000, 1..2_000)) {
            let t0 = Instant::now();
            let mut u = UselessFrames::new(t0);
            let mut now = t0;
            let (mut lines, mut logged) = (0u64, 0u64);
            for (i, gap) in gaps.iter().enumerate() {
                now += Duration::from_millis(*gap);
                match u.on_drop(now) {
                    DropVerdict::Log { dropped } => {
                        lines += 1;
                        logged += dropped;
                    }
                    DropVerdict::Quiet => {}
                    DropVerdict::Disconnect { total } => {
                        // Only past the burst: the budget never runs dry sooner.
                        prop_assert_eq!(total, i as u64 + 1);
                        prop_assert!(total > u64::from(USELESS_FRAME_BURST));
                        return Ok(());
                    }
                }
                let span = now.duration_since(t0).as_secs() / DROP_LOG_INTERVAL.as_secs();
                prop_assert!(lines <= span + 1);
                prop_assert!(logged <= i as u64 + 1);
            }
            // Not disconnected: the drops stayed within the burst plus the refills earned.
            let refills = now.duration_since(t0).as_secs();
            prop_assert!(gaps.len() as u64 <= u64::from(USELESS_FRAME_BURST) + refills);
        }
    }
}
