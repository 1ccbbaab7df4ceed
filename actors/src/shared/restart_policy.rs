//! How manual peers are redialled (`--restart-*`), as the configuration holds it; the
//! Manager's [`RestartTracker`](crate::manager::restart::RestartTracker) applies it.

use std::time::Duration;

/// `max_restarts` when no limit is set: the address is never given up.
pub const NO_RESTART_LIMIT: usize = usize::MAX;

/// The policy's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// First delay ceiling; doubles with each restart in the window.
    pub base_delay: Duration,
    /// Largest delay ceiling.
    pub max_delay: Duration,
    /// Restarts allowed inside `window` before giving up; [`NO_RESTART_LIMIT`]: never.
    pub max_restarts: usize,
    /// Sliding window the restarts are counted in.
    pub window: Duration,
    /// Uptime after which a connection counts as healthy and its history is cleared.
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    /// 1 s base, 60 s cap, never given up, stable after 2 minutes.
    ///
    /// Only manual peers (`--connect`, `--addnode`) are restarted, and Core never gives one
    /// up: its added-node loop tries each one not connected every 2 s. Doubling from 1 s to a
    /// minute rides out a peer's restart or a network blip at once, and costs a dead peer one
    /// dial a minute. An operator may set a limit per window (`--restart-max`). Two minutes up
    /// (one ping interval) is enough to call a connection healthy.
    fn default() -> Self {
        RestartPolicy {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            max_restarts: NO_RESTART_LIMIT,
            window: Duration::from_secs(600),
            stable_after: Duration::from_secs(120),
        }
    }
}
