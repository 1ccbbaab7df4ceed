//! The fleet link's state as the rest of the node reads it: counters, the NATS client, this
//! node's block lag and advisory key, and their snapshot for the API. Written by the Fleet
//! actor (`crate::fleet`), read by the API and metrics through the node context.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use tracing::debug;

use crate::config::FleetConfig;

/// What the fleet link is doing, for the API and metrics.
#[derive(Debug, Default)]
pub struct FleetShared {
    pub(crate) connected: AtomicBool,
    pub(crate) sequence: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) client: Mutex<Option<async_nats::Client>>,
    pub(crate) lag: Mutex<LagTracker>,
    pub(crate) public_key: Mutex<Option<String>>,
}

/// A snapshot of [`FleetShared`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FleetStatus {
    /// The fleet.
    pub fleet: String,
    /// This node's name in it.
    pub node: String,
    /// The NATS URL.
    pub url: String,
    /// Connected to NATS now.
    pub connected: bool,
    /// Events numbered so far (each published or dropped, or waiting).
    pub sequence: u64,
    /// Events acknowledged by JetStream.
    pub published: u64,
    /// Events dropped because the buffer was full.
    pub dropped: u64,
    /// Malformed advisories, heartbeats or sightings ignored.
    pub rejected: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// This node's lag behind the fleet's first sighting of the newest block, seconds.
    pub block_lag_secs: Option<f64>,
    /// This node's advisory signing key (hex), for the other nodes' trusted-keys files.
    pub key: Option<String>,
}

impl FleetShared {
    pub(crate) fn set_error(&self, e: impl ToString) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some(e.to_string());
        }
    }

    pub(crate) fn client(&self) -> Option<async_nats::Client> {
        self.client.lock().ok().and_then(|c| c.clone())
    }

    pub(crate) fn reject(&self, kind: &'static str, why: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("meshd_fleet_rejected_total", "kind" => kind).increment(1);
        debug!(kind, why, "fleet message ignored");
    }

    /// The snapshot.
    pub fn status(&self, config: &FleetConfig) -> FleetStatus {
        FleetStatus {
            fleet: config.fleet.clone(),
            node: config.node_name.clone(),
            url: config.url.clone(),
            connected: self.connected.load(Ordering::Relaxed),
            sequence: self.sequence.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            block_lag_secs: self.lag.lock().ok().and_then(|l| l.lag_secs()),
            key: self.public_key.lock().ok().and_then(|k| k.clone()),
        }
    }
}

/// Blocks a node remembers for its lag: enough to match a sighting that arrives late.
pub const LAG_WINDOW: usize = 64;

/// A node's lag behind the fleet's first sighting of each block: fed the fleet's sightings
/// (its own included) as they arrive, it reports the lag of the newest block it has seen.
#[derive(Debug, Default)]
pub struct LagTracker {
    /// Hash → (fleet's first time, our time), newest last.
    pub(crate) blocks: Vec<(String, Option<u64>, Option<u64>)>,
}

impl LagTracker {
    /// Records a sighting by `ours` (this node) or another node.
    pub fn see(&mut self, hash: &str, time_ms: u64, ours: bool) {
        let i = match self.blocks.iter().position(|(h, _, _)| h == hash) {
            Some(i) => i,
            None => {
                if self.blocks.len() >= LAG_WINDOW {
                    self.blocks.remove(0);
                }
                self.blocks.push((hash.to_string(), None, None));
                self.blocks.len() - 1
            }
        };
        let (_, first, own) = &mut self.blocks[i];
        *first = Some(first.map_or(time_ms, |f: u64| f.min(time_ms)));
        if ours {
            *own = Some(own.map_or(time_ms, |o: u64| o.min(time_ms)));
        }
    }

    /// Our lag behind the fleet's first sighting, seconds, for the newest block we saw.
    pub fn lag_secs(&self) -> Option<f64> {
        self.blocks.iter().rev().find_map(|(_, first, own)| {
            Some(own.as_ref()?.saturating_sub((*first)?) as f64 / 1000.0)
        })
    }
}
