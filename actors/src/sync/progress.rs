//! Header sync progress as an operator reads it: the rate headers come in at, the time left
//! at that rate, and when to say so in the log. Sans-IO: it takes heights and the time.
//!
//! The rate is measured over the last [`RATE_WINDOW`] of samples (a sync that stalls shows
//! its rate falling, not an average since the start); the headers still to come are
//! estimated from the tip's age, as `header_sync::progress` does (one block per target
//! spacing since the tip was mined), so no peer's claim enters the estimate.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::header_sync::POW_TARGET_SPACING;

/// How often a running header sync says how far it is (Core logs per batch; every few
/// seconds is enough to see it move and never floods the log).
pub const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(5);
/// How far back the rate looks: long enough to smooth batches of 2,000 arriving in
/// bursts, short enough that a stall shows within it.
pub const RATE_WINDOW: Duration = Duration::from_secs(30);
/// Samples kept: one per tick would be 300 in the window; spaced to at most this many.
const MAX_SAMPLES: usize = 64;
/// A sync that does not move says so this often, not every [`PROGRESS_LOG_INTERVAL`]: a
/// stall lasting hours writes a line a minute.
pub const STALLED_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// See the module documentation.
#[derive(Debug, Default)]
pub struct ProgressMeter {
    samples: VecDeque<(Instant, u32)>,
    /// The newest reading, kept apart from the spaced samples so the rate ends at now.
    latest: Option<(Instant, u32)>,
    last_log: Option<(Instant, u32)>,
}

/// A reading of the meter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Headers per second over the window (`None` until two samples a second apart).
    pub headers_per_sec: Option<f64>,
    /// Headers still to come, from the tip's age (`None` where that says nothing: regtest,
    /// whose genesis is from 2011).
    pub remaining: Option<u32>,
    /// Time left at the rate (`None` without a rate, or with a rate of zero).
    pub eta: Option<Duration>,
}

impl ProgressMeter {
    /// Records our best header `height` at `now`.
    pub fn observe(&mut self, now: Instant, height: u32) {
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let spacing = RATE_WINDOW / MAX_SAMPLES as u32;
        let room = self
            .samples
            .back()
            .is_none_or(|(t, _)| now.saturating_duration_since(*t) >= spacing);
        if room {
            self.samples.push_back((now, height));
        }
        self.latest = Some((now, height));
    }

    /// Forgets the samples (a sync that ended: the next one starts its own rate).
    pub fn reset(&mut self) {
        self.samples.clear();
        self.latest = None;
    }

    /// The rate, what is left (the tip `tip_age_secs` old, `None` when its age says
    /// nothing) and the time left.
    pub fn reading(&self, tip_age_secs: Option<u32>) -> Progress {
        let remaining = tip_age_secs.map(|age| age / POW_TARGET_SPACING);
        let rate = match (self.samples.front(), self.latest.as_ref()) {
            (Some((t0, h0)), Some((t1, h1))) => {
                let secs = t1.saturating_duration_since(*t0).as_secs_f64();
                (secs >= 1.0).then(|| f64::from(h1.saturating_sub(*h0)) / secs)
            }
            _ => None,
        };
        let eta = match (rate.filter(|r| *r > 0.0), remaining) {
            (Some(r), Some(left)) => Some(Duration::from_secs_f64(f64::from(left) / r)),
            _ => None,
        };
        Progress {
            headers_per_sec: rate,
            remaining,
            eta,
        }
    }

    /// Whether the log line is due at `now`, at `height` (then it counts as said): every
    /// [`PROGRESS_LOG_INTERVAL`] while the height moves, every [`STALLED_LOG_INTERVAL`]
    /// while it does not.
    pub fn log_due(&mut self, now: Instant, height: u32) -> bool {
        let due = self.last_log.is_none_or(|(t, h)| {
            let since = now.saturating_duration_since(t);
            (since >= PROGRESS_LOG_INTERVAL && h != height) || since >= STALLED_LOG_INTERVAL
        });
        if due {
            self.last_log = Some((now, height));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_rate_follows_the_last_window_and_gives_the_time_left() {
        let t0 = Instant::now();
        let mut m = ProgressMeter::default();
        m.observe(t0, 0);
        assert_eq!(m.reading(Some(6_000)).headers_per_sec, None, "one sample");
        // 2,000 headers a second for ten seconds.
        for s in 1..=10u32 {
            m.observe(t0 + Duration::from_secs(u64::from(s)), s * 2_000);
        }
        let r = m.reading(Some(600 * 40_000));
        assert_eq!(r.headers_per_sec, Some(2_000.0));
        assert_eq!(r.remaining, Some(40_000));
        assert_eq!(r.eta, Some(Duration::from_secs(20)));
        // Then nothing for a minute: the window forgets the fast part.
        m.observe(t0 + Duration::from_secs(70), 20_000);
        m.observe(t0 + Duration::from_secs(75), 20_000);
        let r = m.reading(Some(600 * 40_000));
        assert_eq!(r.headers_per_sec, Some(0.0));
        assert_eq!(r.eta, None, "no time left to give at no rate");
        assert_eq!(
            m.reading(None).eta,
            None,
            "nor without an estimate of what is left"
        );
    }

    #[test]
    fn the_log_is_due_once_per_interval_and_rarely_when_stalled() {
        let t0 = Instant::now();
        let mut m = ProgressMeter::default();
        assert!(m.log_due(t0, 0));
        assert!(!m.log_due(t0 + Duration::from_secs(4), 2_000));
        assert!(m.log_due(t0 + PROGRESS_LOG_INTERVAL, 4_000));
        // Stalled at 4,000: not every 5 s, but once a minute.
        assert!(!m.log_due(t0 + PROGRESS_LOG_INTERVAL * 2, 4_000));
        assert!(!m.log_due(t0 + Duration::from_secs(60), 4_000));
        assert!(m.log_due(t0 + PROGRESS_LOG_INTERVAL + STALLED_LOG_INTERVAL, 4_000));
    }

    proptest! {
        /// Whatever the heights and times: the samples stay bounded and within the window,
        /// and the rate is never negative.
        #[test]
        fn bounded_and_never_negative(steps in proptest::collection::vec((0u64..5_000, 0u32..100_000), 1..500)) {
            let t0 = Instant::now();
            let mut m = ProgressMeter::default();
            let mut now = t0;
            for (ms, h) in steps {
                now += Duration::from_millis(ms);
                m.observe(now, h);
                prop_assert!(m.samples.len() <= MAX_SAMPLES + 1);
                if let Some((t, _)) = m.samples.front() {
                    prop_assert!(now.saturating_duration_since(*t) <= RATE_WINDOW);
                }
                prop_assert!(m.reading(Some(600_000)).headers_per_sec.is_none_or(|r| r >= 0.0));
            }
        }
    }
}
