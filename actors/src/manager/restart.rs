//! Restart policy for manual outbound connections (`--connect`, `--addnode`), as a sans-IO
//! core.
//!
//! By default an address is never given up (Core's added nodes): the wait doubles from the
//! base delay to the largest, with equal jitter. With a limit set (`--restart-max`),
//! [`RestartTracker::on_exit`] decides as a windowed policy: restart after an exponential
//! delay with full jitter (a uniform draw in `[0, min(cap, base × 2^n)]`, as in "Exponential
//! Backoff And Jitter", so a fleet of nodes that lost the same peer do not reconnect in
//! lock-step), or give up because `max_restarts` restarts already happened inside the
//! sliding `window`. A given-up address is dialled again
//! only once the window has cleared of its restarts. A connection that stayed up for
//! `stable_after` resets the address's history: it was a healthy peer that dropped once.
//! Inbound connections never come here: they are never restarted.
//!
//! Time and randomness are arguments, so tests drive it with virtual time.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use crate::shared::restart_policy::{RestartPolicy, NO_RESTART_LIMIT};

/// What to do about an outbound connection that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Dial again after `delay`; `attempt` counts restarts inside the window (1-based).
    Restart {
        /// Delay before the dial.
        delay: Duration,
        /// Restart number inside the window.
        attempt: usize,
    },
    /// Too many restarts inside the window: do not dial before `until`.
    GiveUp {
        /// When the window clears.
        until: Instant,
    },
}

#[derive(Debug, Default, Clone)]
struct History {
    restarts: VecDeque<Instant>,
    given_up_until: Option<Instant>,
    total_restarts: u64,
    /// Manual peers: dials in a row that did not stay up `stable_after`.
    manual_failures: u32,
}

/// Restart histories per address.
#[derive(Debug, Default)]
pub struct RestartTracker {
    policy: RestartPolicy,
    by_addr: HashMap<SocketAddr, History>,
}

impl RestartTracker {
    /// A tracker with `policy`.
    pub fn new(policy: RestartPolicy) -> RestartTracker {
        RestartTracker {
            policy,
            by_addr: HashMap::new(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> RestartPolicy {
        self.policy
    }

    /// Changes the policy (live config).
    pub fn set_policy(&mut self, policy: RestartPolicy) {
        self.policy = policy;
    }

    /// Decides about `addr`, whose connection ended at `now` after `uptime` (zero if it never
    /// connected). `jitter` is a uniform draw in `[0, 1)`.
    pub fn on_exit(
        &mut self,
        addr: SocketAddr,
        now: Instant,
        uptime: Duration,
        jitter: f64,
    ) -> RestartDecision {
        let p = self.policy;
        if p.max_restarts == NO_RESTART_LIMIT {
            return self.unlimited(addr, uptime, jitter);
        }
        let h = self.by_addr.entry(addr).or_default();
        if uptime >= p.stable_after {
            h.restarts.clear();
            h.given_up_until = None;
        }
        while h
            .restarts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= p.window)
        {
            h.restarts.pop_front();
        }
        if h.restarts.len() >= p.max_restarts {
            // The window clears when its oldest restart leaves it.
            let until = h.restarts.front().map_or(now, |t| *t + p.window);
            h.given_up_until = Some(until);
            return RestartDecision::GiveUp { until };
        }
        h.restarts.push_back(now);
        h.total_restarts += 1;
        let attempt = h.restarts.len();
        let exp = 1u32.checked_shl(attempt as u32 - 1).unwrap_or(u32::MAX);
        let ceiling = p.base_delay.saturating_mul(exp).min(p.max_delay);
        let delay = ceiling.mul_f64(jitter.clamp(0.0, 1.0));
        RestartDecision::Restart { delay, attempt }
    }

    /// Without a limit: never given up, as Core's added nodes; the wait doubles from the
    /// base delay up to the largest, with equal jitter (at least half the ceiling, so a peer
    /// that accepts and closes at once cannot make us spin), and starts over after a
    /// connection that stayed up.
    fn unlimited(&mut self, addr: SocketAddr, uptime: Duration, jitter: f64) -> RestartDecision {
        let p = self.policy;
        let h = self.by_addr.entry(addr).or_default();
        h.given_up_until = None;
        h.restarts.clear();
        if uptime >= p.stable_after {
            h.manual_failures = 0;
        }
        h.manual_failures = h.manual_failures.saturating_add(1);
        h.total_restarts += 1;
        let exp = 1u32.checked_shl(h.manual_failures - 1).unwrap_or(u32::MAX);
        let ceiling = p
            .base_delay
            .saturating_mul(exp)
            .min(p.max_delay.max(p.base_delay));
        let delay = ceiling.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0);
        RestartDecision::Restart {
            delay,
            attempt: h.manual_failures as usize,
        }
    }

    /// Whether `addr` is given up on at `now`.
    pub fn is_given_up(&self, addr: &SocketAddr, now: Instant) -> bool {
        self.by_addr
            .get(addr)
            .and_then(|h| h.given_up_until)
            .is_some_and(|until| now < until)
    }

    /// Restarts of `addr` since the process started.
    pub fn total_restarts(&self, addr: &SocketAddr) -> u64 {
        self.by_addr.get(addr).map_or(0, |h| h.total_restarts)
    }

    /// Forgets an address (it was removed from the persistent set).
    pub fn forget(&mut self, addr: &SocketAddr) {
        self.by_addr.remove(addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:18444".parse().unwrap()
    }

    #[test]
    fn delays_grow_exponentially_up_to_the_cap_with_full_jitter() {
        let mut t = RestartTracker::new(RestartPolicy {
            max_restarts: 100,
            ..RestartPolicy::default()
        });
        let now = Instant::now();
        let ceilings: Vec<Duration> = (0..9)
            .map(
                |i| match t.on_exit(addr(), now + Duration::from_millis(i), Duration::ZERO, 1.0) {
                    RestartDecision::Restart { delay, .. } => delay,
                    d => panic!("{d:?}"),
                },
            )
            .collect();
        let secs: Vec<u64> = ceilings.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        match t.on_exit(addr(), now, Duration::ZERO, 0.0) {
            RestartDecision::Restart { delay, .. } => assert_eq!(delay, Duration::ZERO),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn manual_peers_are_never_given_up_and_wait_at_most_a_minute() {
        let mut t = RestartTracker::new(RestartPolicy::default());
        let mut ceilings = Vec::new();
        for _ in 0..1_000 {
            match t.on_exit(addr(), Instant::now(), Duration::ZERO, 1.0) {
                RestartDecision::Restart { delay, .. } => ceilings.push(delay.as_secs()),
                d => panic!("a manual peer given up: {d:?}"),
            }
        }
        assert_eq!(ceilings[..8], [1, 2, 4, 8, 16, 32, 60, 60]);
        assert!(ceilings.iter().all(|&c| c <= 60));
        // Half the ceiling at least, whatever the draw.
        match t.on_exit(addr(), Instant::now(), Duration::ZERO, 0.0) {
            RestartDecision::Restart { delay, .. } => assert_eq!(delay.as_secs(), 30),
            d => panic!("{d:?}"),
        }
        assert!(!t.is_given_up(&addr(), Instant::now()));
        // A connection that stayed up starts the backoff over.
        match t.on_exit(addr(), Instant::now(), Duration::from_secs(600), 1.0) {
            RestartDecision::Restart { delay, attempt } => {
                assert_eq!((delay.as_secs(), attempt), (1, 1));
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn gives_up_after_max_restarts_in_the_window_until_it_clears() {
        let p = RestartPolicy {
            max_restarts: 5,
            ..RestartPolicy::default()
        };
        let mut t = RestartTracker::new(p);
        let t0 = Instant::now();
        for i in 0..5 {
            let now = t0 + Duration::from_secs(i * 10);
            assert!(matches!(
                t.on_exit(addr(), now, Duration::ZERO, 0.5),
                RestartDecision::Restart { attempt, .. } if attempt == i as usize + 1
            ));
        }
        let now = t0 + Duration::from_secs(60);
        let until = match t.on_exit(addr(), now, Duration::ZERO, 0.5) {
            RestartDecision::GiveUp { until } => until,
            d => panic!("{d:?}"),
        };
        assert_eq!(until, t0 + p.window);
        assert!(t.is_given_up(&addr(), now));
        assert!(!t.is_given_up(&addr(), until));
        // Once the oldest restart has left the window, a restart is allowed again.
        assert!(matches!(
            t.on_exit(addr(), until, Duration::ZERO, 0.5),
            RestartDecision::Restart { attempt: 5, .. }
        ));
    }

    #[test]
    fn a_connection_that_stayed_up_resets_its_window() {
        let mut t = RestartTracker::new(RestartPolicy {
            max_restarts: 5,
            ..RestartPolicy::default()
        });
        let t0 = Instant::now();
        for i in 0..5 {
            t.on_exit(addr(), t0 + Duration::from_secs(i), Duration::ZERO, 0.5);
        }
        let d = t.on_exit(
            addr(),
            t0 + Duration::from_secs(300),
            Duration::from_secs(200),
            0.5,
        );
        assert!(
            matches!(d, RestartDecision::Restart { attempt: 1, .. }),
            "{d:?}"
        );
    }

    proptest! {
        /// Whatever the exit times, no more than max_restarts restarts fall in any window.
        #[test]
        fn restarts_inside_any_window_never_exceed_the_limit(
            gaps in proptest::collection::vec(0u64..400_000, 1..200),
            jitter in 0.0f64..1.0,
        ) {
            let p = RestartPolicy { max_restarts: 5, ..RestartPolicy::default() };
            let mut t = RestartTracker::new(p);
            let t0 = Instant::now();
            let mut now = t0;
            let mut restarts: Vec<Instant> = Vec::new();
            for g in gaps {
                now += Duration::from_millis(g);
                if let RestartDecision::Restart { delay, .. } = t.on_exit(addr(), now, Duration::ZERO, jitter) {
                    prop_assert!(delay <= p.max_delay);
                    restarts.push(now);
                }
                let in_window = restarts.iter().filter(|r| now.duration_since(**r) < p.window).count();
                prop_assert!(in_window <= p.max_restarts);
            }
        }
    }
}
