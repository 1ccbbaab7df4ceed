//! Keepalive: a ping every interval, nonce-matched pongs, RTT (last and minimum), and a
//! timeout for a ping left unanswered. Sans-IO: time comes in as an argument.

use std::time::{Duration, Instant};

/// Ping state of one connection.
#[derive(Debug, Clone)]
pub struct PingTracker {
    interval: Duration,
    timeout: Duration,
    next_ping_at: Instant,
    in_flight: Option<(u64, Instant)>,
    last_rtt: Option<Duration>,
    min_rtt: Option<Duration>,
}

/// What a pong meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PongOutcome {
    /// It answered our ping; the round-trip time.
    Matched(Duration),
    /// No ping was in flight, or the nonce did not match; ignored (Core does the same).
    Unexpected,
}

impl PingTracker {
    /// A tracker whose first ping goes out right away (at `now`), as Core pings at connect.
    pub fn new(now: Instant, interval: Duration, timeout: Duration) -> PingTracker {
        PingTracker {
            interval,
            timeout,
            next_ping_at: now,
            in_flight: None,
            last_rtt: None,
            min_rtt: None,
        }
    }

    /// Changes the interval and timeout (live config).
    pub fn reconfigure(&mut self, now: Instant, interval: Duration, timeout: Duration) {
        if self.in_flight.is_none() {
            self.next_ping_at = self.next_ping_at.min(now + interval);
        }
        self.interval = interval;
        self.timeout = timeout;
    }

    /// Call on every tick: `Ok(Some(nonce))` means send a ping with that nonce now (taken from
    /// `fresh_nonce`); `Err` means the ping in flight timed out.
    pub fn poll(&mut self, now: Instant, fresh_nonce: u64) -> Result<Option<u64>, Duration> {
        if let Some((_, sent)) = self.in_flight {
            if now.saturating_duration_since(sent) >= self.timeout {
                return Err(self.timeout);
            }
            return Ok(None);
        }
        if now >= self.next_ping_at {
            // Zero means "no nonce" in Core's pong handling; avoid it.
            let nonce = fresh_nonce.max(1);
            self.in_flight = Some((nonce, now));
            return Ok(Some(nonce));
        }
        Ok(None)
    }

    /// Pings at the next poll unless one is in flight (Core's `ping` RPC sets
    /// `fPingQueued`; a ping in flight is not doubled).
    pub fn queue(&mut self, now: Instant) {
        if self.in_flight.is_none() {
            self.next_ping_at = self.next_ping_at.min(now);
        }
    }

    /// Feeds a pong.
    pub fn on_pong(&mut self, nonce: u64, now: Instant) -> PongOutcome {
        match self.in_flight {
            Some((expected, sent)) if expected == nonce => {
                let rtt = now.saturating_duration_since(sent);
                self.in_flight = None;
                self.next_ping_at = sent + self.interval;
                self.last_rtt = Some(rtt);
                self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
                PongOutcome::Matched(rtt)
            }
            _ => PongOutcome::Unexpected,
        }
    }

    /// Last measured round-trip time.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    /// Lowest round-trip time seen.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// How long the ping in flight has waited, if any.
    pub fn waiting(&self, now: Instant) -> Option<Duration> {
        self.in_flight
            .map(|(_, sent)| now.saturating_duration_since(sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_ping_goes_at_the_next_poll_but_never_doubles_one_in_flight() {
        let t0 = Instant::now();
        let mut p = PingTracker::new(t0, Duration::from_secs(120), Duration::from_secs(1200));
        assert_eq!(p.poll(t0, 7), Ok(Some(7)));
        p.queue(t0);
        assert_eq!(p.poll(t0, 8), Ok(None), "one ping in flight at a time");
        assert!(matches!(
            p.on_pong(7, t0 + Duration::from_millis(5)),
            PongOutcome::Matched(_)
        ));
        let later = t0 + Duration::from_secs(1);
        assert_eq!(p.poll(later, 9), Ok(None), "the interval has not passed");
        p.queue(later);
        assert_eq!(p.poll(later, 9), Ok(Some(9)), "queued: sent at once");
    }
    use proptest::prelude::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn pings_at_start_then_every_interval() {
        let t0 = Instant::now();
        let mut p = PingTracker::new(t0, 2 * MIN, 20 * MIN);
        assert_eq!(p.poll(t0, 7), Ok(Some(7)));
        assert_eq!(p.poll(t0 + MIN, 8), Ok(None), "one in flight at a time");
        assert_eq!(
            p.on_pong(7, t0 + Duration::from_millis(30)),
            PongOutcome::Matched(Duration::from_millis(30))
        );
        assert_eq!(p.poll(t0 + MIN, 9), Ok(None));
        assert_eq!(p.poll(t0 + 2 * MIN, 9), Ok(Some(9)));
    }

    #[test]
    fn wrong_nonce_is_ignored_and_rtt_tracks_last_and_min() {
        let t0 = Instant::now();
        let mut p = PingTracker::new(t0, MIN, 20 * MIN);
        p.poll(t0, 1).unwrap();
        assert_eq!(p.on_pong(2, t0), PongOutcome::Unexpected);
        p.on_pong(1, t0 + Duration::from_millis(50));
        p.poll(t0 + MIN, 3).unwrap();
        p.on_pong(3, t0 + MIN + Duration::from_millis(80));
        assert_eq!(p.last_rtt(), Some(Duration::from_millis(80)));
        assert_eq!(p.min_rtt(), Some(Duration::from_millis(50)));
    }

    #[test]
    fn unanswered_ping_times_out() {
        let t0 = Instant::now();
        let mut p = PingTracker::new(t0, 2 * MIN, 20 * MIN);
        p.poll(t0, 1).unwrap();
        assert_eq!(p.poll(t0 + 20 * MIN - Duration::from_secs(1), 2), Ok(None));
        assert_eq!(p.poll(t0 + 20 * MIN, 2), Err(20 * MIN));
    }

    proptest! {
        #[test]
        fn min_rtt_is_the_minimum_of_all_matched(rtts in proptest::collection::vec(1u64..10_000, 1..50)) {
            let t0 = Instant::now();
            let mut p = PingTracker::new(t0, Duration::from_secs(1), Duration::from_secs(100));
            let mut t = t0;
            for (i, ms) in rtts.iter().enumerate() {
                let nonce = p.poll(t, i as u64 + 1).unwrap().expect("due");
                t += Duration::from_millis(*ms);
                prop_assert_eq!(p.on_pong(nonce, t), PongOutcome::Matched(Duration::from_millis(*ms)));
                t += Duration::from_secs(1);
            }
            prop_assert_eq!(p.min_rtt(), Some(Duration::from_millis(*rtts.iter().min().unwrap())));
            prop_assert_eq!(p.last_rtt(), Some(Duration::from_millis(*rtts.last().unwrap())));
        }
    }
}
