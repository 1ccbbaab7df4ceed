//! What other parts of meshd ask of the Overlay actor: the commands queued to its driver.
//!
//! A leaf, so the Connection actor (which learns a peer's overlay from its `overlayaddr`)
//! and the [`crate::node::Node`] handle can ask without importing the overlay's folder.

use libp2p::{Multiaddr, PeerId};

/// Commands waiting for the overlay's driver at most: past this they are dropped (and
/// counted), never waited for, so no caller stalls on a busy overlay.
pub const OVERLAY_COMMAND_QUEUE: usize = 64;

/// A request to the overlay.
#[derive(Debug)]
pub enum OverlayCommand {
    /// Dial this address (an operator's request).
    Dial(Multiaddr),
    /// A Bitcoin peer told us its overlay (`overlayaddr`): dial it. The addresses are only
    /// those on the Bitcoin peer's own IP (the Connection filters them), so a peer cannot
    /// make us dial others.
    Hint {
        /// Its overlay peer id.
        peer: PeerId,
        /// Its overlay addresses on its IP.
        addrs: Vec<Multiaddr>,
    },
    /// Subscribe to a GossipSub topic.
    Subscribe(String),
    /// Announce a topic we serve (seed 004's `announce_topic`): a DHT provider record, and
    /// a GossipSub subscription, so connected peers see it among our topics.
    Provide(String),
    /// Find the peers that serve a topic (seed 004's `find_peers_for_topic`): a DHT walk
    /// for its providers; those not connected are dialled.
    Find {
        /// The topic.
        topic: String,
        /// Where the providers go, once the walk ends.
        reply: tokio::sync::oneshot::Sender<Vec<crate::shared::status::TopicProvider>>,
    },
    /// Publish on a GossipSub topic.
    Publish {
        /// The topic.
        topic: String,
        /// The message.
        data: Vec<u8>,
    },
}
