//! State shared by every actor of one node: configuration, the peer table, our version nonces.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

use crate::config::NodeConfig;
use crate::network::Profile;
use crate::peer::HandshakePolicy;
use crate::peers::{PeerId, PeerTable};

/// Shared, read-mostly node state. Handed to actors in an `Arc`; opaque outside the crate.
#[derive(Debug)]
pub struct NodeContext {
    pub(crate) config: NodeConfig,
    pub(crate) profile: Profile,
    pub(crate) policy: HandshakePolicy,
    pub(crate) peers: PeerTable,
    /// Nonces we sent in outbound version messages, to spot an inbound connection from
    /// ourselves.
    pub(crate) outbound_nonces: DashMap<u64, PeerId>,
    next_peer_id: AtomicU64,
    shutting_down: AtomicBool,
}

impl NodeContext {
    pub(crate) fn new(config: NodeConfig) -> NodeContext {
        NodeContext {
            profile: config.profile(),
            policy: config.handshake_policy(),
            config,
            peers: PeerTable::default(),
            outbound_nonces: DashMap::new(),
            next_peer_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
        }
    }

    pub(crate) fn next_peer_id(&self) -> PeerId {
        PeerId(self.next_peer_id.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// Seconds since the Unix epoch, for version timestamps.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
