//! The event bus: typed node events on one broadcast channel.
//!
//! Subscribers get an [`EventStream`], optionally filtered by [`EventKind`]. The channel is
//! bounded ([`EVENT_BUS_CAPACITY`]); a subscriber that falls behind loses the oldest events
//! and its next `recv` says how many ([`EventError::Lagged`]) — it never stalls the node,
//! because publishing never waits. Lifecycle events (connections, handshakes, restarts, bans,
//! evictions) have one publisher, the Manager, so their order is consistent;
//! `MessageReceived` comes from the Connections, and only while someone is subscribed.
//!
//! Every event but `MessageReceived` and `TxReceived` (one per message or transaction: on
//! mainnet they would push the rest out of the buffer in minutes) gets a sequence number,
//! dense from 1 per start, and
//! the last [`REPLAY_CAPACITY`] of them are kept, so an SSE client that reconnects with
//! `Last-Event-ID` gets what it missed ([`EventBus::since`]), or learns how much is gone.

use std::collections::HashSet;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::peer::Direction;
use crate::shared::peers::PeerId;

/// Events buffered per subscriber before the oldest are dropped for it.
///
/// A burst of a few thousand events (a restart storm, a flood of connections) fits; a
/// subscriber slower than that learns how much it missed.
pub const EVENT_BUS_CAPACITY: usize = 4096;

/// Events kept for replay to a subscriber that resumes (`Last-Event-ID`).
///
/// Bounded in entries; an event is a few hundred bytes, so at most about a megabyte. A
/// client away for longer than this many events learns how many it lost.
pub const REPLAY_CAPACITY: usize = 2048;

/// How a block reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockVia {
    /// A whole `block`, asked for.
    #[default]
    Block,
    /// A `cmpctblock` a high-bandwidth peer announced it with (BIP152), reconstructed.
    CompactHighBandwidth,
    /// A `cmpctblock` we asked for (low-bandwidth), reconstructed.
    CompactLowBandwidth,
    /// A compact block that could not be used (a collision, a failed check), then the whole
    /// block.
    Fallback,
    /// Mined here (regtest).
    Local,
}

impl BlockVia {
    /// Its name in events and metrics.
    pub fn name(self) -> &'static str {
        match self {
            BlockVia::Block => "block",
            BlockVia::CompactHighBandwidth => "compact_high_bandwidth",
            BlockVia::CompactLowBandwidth => "compact_low_bandwidth",
            BlockVia::Fallback => "fallback",
            BlockVia::Local => "local",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum NodeEvent {
    /// TCP connection open (outbound dialled or inbound accepted).
    ConnectionEstablished {
        /// Peer.
        peer: PeerId,
        /// Remote address.
        addr: SocketAddr,
        /// The onion or I2P name with its port, for such a peer (`addr` is then the
        /// internal address that stands for it).
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Who dialled.
        direction: Direction,
        /// `v1` or `v2` (BIP324).
        transport: &'static str,
    },
    /// An outbound dial failed before a connection existed.
    ConnectionFailed {
        /// Peer id the attempt had.
        peer: PeerId,
        /// Address dialled.
        addr: SocketAddr,
        /// The onion or I2P name with its port, for such a peer (`addr` is then the
        /// internal address that stands for it).
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Why.
        reason: String,
        /// Stable reason name.
        reason_kind: String,
    },
    /// A connection closed.
    ConnectionLost {
        /// Peer.
        peer: PeerId,
        /// Remote address.
        addr: SocketAddr,
        /// The onion or I2P name with its port, for such a peer (`addr` is then the
        /// internal address that stands for it).
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Who dialled.
        direction: Direction,
        /// Why.
        reason: String,
        /// Stable reason name.
        reason_kind: String,
    },
    /// The version handshake completed.
    HandshakeComplete {
        /// Peer.
        peer: PeerId,
        /// Remote address.
        addr: SocketAddr,
        /// The onion or I2P name with its port, for such a peer (`addr` is then the
        /// internal address that stands for it).
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Who dialled.
        direction: Direction,
        /// Its user agent.
        user_agent: String,
        /// Its protocol version.
        version: u32,
        /// Its service bits.
        services: u64,
        /// Its announced height.
        start_height: i32,
        /// `v1` or `v2` (BIP324).
        transport: &'static str,
    },
    /// An outbound peer will be dialled again.
    PeerRestarted {
        /// Address.
        addr: SocketAddr,
        /// Restart number inside the window.
        attempt: usize,
        /// Delay before the dial, milliseconds.
        delay_ms: u64,
    },
    /// Too many restarts inside the window: the address is given up until it clears.
    PeerGaveUp {
        /// Address.
        addr: SocketAddr,
        /// Seconds until it may be dialled again.
        retry_in_secs: u64,
    },
    /// A subnet was banned.
    PeerBanned {
        /// Subnet.
        subnet: String,
        /// Expiry, unix seconds.
        until: u64,
        /// `manual` or `misbehavior`.
        reason: String,
        /// The violation, for automatic bans.
        detail: Option<String>,
    },
    /// An automatic verdict: the address (or its IPv6 /64) is discouraged, in memory only:
    /// never dialled, accepted only while a slot is free, evicted first (Core's banman).
    PeerDiscouraged {
        /// The address as a /32 or /128, or the IPv6 /64.
        subnet: String,
        /// The violation and score.
        detail: String,
    },
    /// A ban was lifted.
    PeerUnbanned {
        /// Subnet.
        subnet: String,
        /// The lifted ban's reason: `manual` (our operator's ban), `misbehavior` or
        /// `fleet`. Only the lifting of an operator's ban is advised to a fleet.
        reason: String,
        /// Who lifted it: `operator`, or `fleet:<origin>` on that origin's advisory.
        by: String,
    },
    /// An inbound peer was evicted to make room.
    PeerEvicted {
        /// Peer.
        peer: PeerId,
        /// Its address.
        addr: SocketAddr,
    },
    /// Our public address (from STUN) changed.
    PublicAddressChanged {
        /// The new address, if any.
        address: Option<String>,
    },
    /// The NAT type was detected or changed.
    NatTypeDetected {
        /// The label (`open_internet`, `full_cone`, ...).
        nat_type: String,
        /// Our public address.
        public: Option<String>,
    },
    /// Our listening port was mapped on the gateway (PCP, NAT-PMP or UPnP), or the mapping
    /// changed; renewals of the same mapping publish nothing.
    PortMapped {
        /// `pcp`, `natpmp` or `upnp`.
        protocol: String,
        /// The gateway's address and port that reach our listener (advertised).
        external: String,
        /// Our listening address it forwards to.
        internal: String,
        /// Seconds granted.
        lifetime: u32,
    },
    /// A mapping round failed (every protocol tried); the next comes later.
    PortMappingFailed {
        /// The last protocol tried.
        protocol: String,
        /// Why.
        error: String,
    },
    /// A mapping ended: it expired, or its renewal failed. (Its deletion at shutdown is
    /// logged, not published: `NodeStopping` is the last event.)
    PortMappingLost {
        /// How it was made.
        protocol: String,
        /// The address no longer advertised.
        external: String,
        /// `expired`.
        reason: String,
    },
    /// A peer connected to us on the overlay (its first connection).
    OverlayPeerConnected {
        /// Its libp2p peer id.
        peer_id: String,
        /// Where we are connected to it.
        address: String,
    },
    /// An overlay peer's last connection closed.
    OverlayPeerDisconnected {
        /// Its libp2p peer id.
        peer_id: String,
    },
    /// AutoNAT's verdict on our overlay addresses changed.
    OverlayReachabilityChanged {
        /// `public`, `private` or `unknown`.
        reachability: String,
    },
    /// A GossipSub message arrived on a topic we follow (published only while someone
    /// listens to traffic; not kept for replay, not sent to the fleet).
    OverlayGossipReceived {
        /// The topic.
        topic: String,
        /// Its author (signed), when it names one.
        from: Option<String>,
        /// Its data, hex, the first 4 KiB.
        data_hex: String,
        /// Its size, bytes.
        size: usize,
    },
    /// The header chain grew or reorganised; `synced` once caught up with the best peer.
    HeadersSynced {
        /// Best header height.
        height: u32,
        /// Best header hash.
        tip: String,
        /// Caught up with the best peer.
        synced: bool,
    },
    /// A block arrived (or was generated) and matches its header's merkle root.
    BlockReceived {
        /// Block hash.
        hash: String,
        /// Height.
        height: u32,
        /// Transactions in it.
        tx_count: usize,
        /// Serialized size, bytes.
        size: usize,
        /// The peer it came from (none: generated or submitted here).
        from: Option<String>,
        /// The message that carried it (BIP152).
        via: BlockVia,
        /// Transactions asked for with `getblocktxn` to reconstruct it.
        txs_requested: usize,
        /// Bytes of the messages that carried it (payloads; for a reconstruction, the
        /// `cmpctblock`, `getblocktxn` and `blocktxn`).
        wire_bytes: usize,
    },
    /// A transaction entered the relay pool.
    TxReceived {
        /// Transaction id.
        txid: String,
        /// Serialized size, bytes.
        size: usize,
        /// The peer it came from (none: submitted here).
        from: Option<String>,
    },
    /// The node began to stop (a signal, `meshd stop`, the RPC's `stop`): the last event.
    NodeStopping,
    /// A message arrived (published only while someone listens).
    MessageReceived {
        /// Peer.
        peer: PeerId,
        /// Command.
        command: String,
        /// Bytes on the wire, header included.
        size: usize,
    },
}

/// The type of an event, for filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum EventKind {
    /// [`NodeEvent::ConnectionEstablished`].
    ConnectionEstablished,
    /// [`NodeEvent::ConnectionFailed`].
    ConnectionFailed,
    /// [`NodeEvent::ConnectionLost`].
    ConnectionLost,
    /// [`NodeEvent::HandshakeComplete`].
    HandshakeComplete,
    /// [`NodeEvent::PeerRestarted`].
    PeerRestarted,
    /// [`NodeEvent::PeerGaveUp`].
    PeerGaveUp,
    /// [`NodeEvent::PeerBanned`].
    PeerBanned,
    /// [`NodeEvent::PeerDiscouraged`].
    PeerDiscouraged,
    /// [`NodeEvent::PeerUnbanned`].
    PeerUnbanned,
    /// [`NodeEvent::PeerEvicted`].
    PeerEvicted,
    /// [`NodeEvent::MessageReceived`].
    MessageReceived,
    /// [`NodeEvent::HeadersSynced`].
    HeadersSynced,
    /// [`NodeEvent::BlockReceived`].
    BlockReceived,
    /// [`NodeEvent::TxReceived`].
    TxReceived,
    /// [`NodeEvent::PublicAddressChanged`].
    PublicAddressChanged,
    /// [`NodeEvent::NatTypeDetected`].
    NatTypeDetected,
    /// [`NodeEvent::PortMapped`].
    PortMapped,
    /// [`NodeEvent::PortMappingFailed`].
    PortMappingFailed,
    /// [`NodeEvent::PortMappingLost`].
    PortMappingLost,
    /// [`NodeEvent::OverlayPeerConnected`].
    OverlayPeerConnected,
    /// [`NodeEvent::OverlayPeerDisconnected`].
    OverlayPeerDisconnected,
    /// [`NodeEvent::OverlayReachabilityChanged`].
    OverlayReachabilityChanged,
    /// [`NodeEvent::OverlayGossipReceived`].
    OverlayGossipReceived,
    /// [`NodeEvent::NodeStopping`].
    NodeStopping,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 24] = [
        EventKind::HeadersSynced,
        EventKind::BlockReceived,
        EventKind::TxReceived,
        EventKind::PublicAddressChanged,
        EventKind::NatTypeDetected,
        EventKind::PortMapped,
        EventKind::PortMappingFailed,
        EventKind::PortMappingLost,
        EventKind::OverlayPeerConnected,
        EventKind::OverlayPeerDisconnected,
        EventKind::OverlayReachabilityChanged,
        EventKind::OverlayGossipReceived,
        EventKind::ConnectionEstablished,
        EventKind::ConnectionFailed,
        EventKind::ConnectionLost,
        EventKind::HandshakeComplete,
        EventKind::PeerRestarted,
        EventKind::PeerGaveUp,
        EventKind::PeerBanned,
        EventKind::PeerDiscouraged,
        EventKind::PeerUnbanned,
        EventKind::PeerEvicted,
        EventKind::NodeStopping,
        EventKind::MessageReceived,
    ];

    /// The name used in JSON (`type`) and filters.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::ConnectionEstablished => "ConnectionEstablished",
            EventKind::ConnectionFailed => "ConnectionFailed",
            EventKind::ConnectionLost => "ConnectionLost",
            EventKind::HandshakeComplete => "HandshakeComplete",
            EventKind::PeerRestarted => "PeerRestarted",
            EventKind::PeerGaveUp => "PeerGaveUp",
            EventKind::PeerBanned => "PeerBanned",
            EventKind::PeerDiscouraged => "PeerDiscouraged",
            EventKind::PeerUnbanned => "PeerUnbanned",
            EventKind::PeerEvicted => "PeerEvicted",
            EventKind::MessageReceived => "MessageReceived",
            EventKind::HeadersSynced => "HeadersSynced",
            EventKind::BlockReceived => "BlockReceived",
            EventKind::TxReceived => "TxReceived",
            EventKind::PublicAddressChanged => "PublicAddressChanged",
            EventKind::NatTypeDetected => "NatTypeDetected",
            EventKind::PortMapped => "PortMapped",
            EventKind::PortMappingFailed => "PortMappingFailed",
            EventKind::PortMappingLost => "PortMappingLost",
            EventKind::OverlayPeerConnected => "OverlayPeerConnected",
            EventKind::OverlayPeerDisconnected => "OverlayPeerDisconnected",
            EventKind::OverlayReachabilityChanged => "OverlayReachabilityChanged",
            EventKind::OverlayGossipReceived => "OverlayGossipReceived",
            EventKind::NodeStopping => "NodeStopping",
        }
    }

    /// Whether events of this kind travel on the traffic channel (per message: a
    /// `MessageReceived` for every Bitcoin message, an `OverlayGossipReceived` for every
    /// gossip one), published only while someone listens to traffic.
    pub fn is_traffic(self) -> bool {
        matches!(
            self,
            EventKind::MessageReceived | EventKind::OverlayGossipReceived
        )
    }

    /// Parses a name.
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl NodeEvent {
    /// This event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            NodeEvent::ConnectionEstablished { .. } => EventKind::ConnectionEstablished,
            NodeEvent::ConnectionFailed { .. } => EventKind::ConnectionFailed,
            NodeEvent::ConnectionLost { .. } => EventKind::ConnectionLost,
            NodeEvent::HandshakeComplete { .. } => EventKind::HandshakeComplete,
            NodeEvent::PeerRestarted { .. } => EventKind::PeerRestarted,
            NodeEvent::PeerGaveUp { .. } => EventKind::PeerGaveUp,
            NodeEvent::PeerBanned { .. } => EventKind::PeerBanned,
            NodeEvent::PeerDiscouraged { .. } => EventKind::PeerDiscouraged,
            NodeEvent::PeerUnbanned { .. } => EventKind::PeerUnbanned,
            NodeEvent::PeerEvicted { .. } => EventKind::PeerEvicted,
            NodeEvent::MessageReceived { .. } => EventKind::MessageReceived,
            NodeEvent::HeadersSynced { .. } => EventKind::HeadersSynced,
            NodeEvent::BlockReceived { .. } => EventKind::BlockReceived,
            NodeEvent::TxReceived { .. } => EventKind::TxReceived,
            NodeEvent::PublicAddressChanged { .. } => EventKind::PublicAddressChanged,
            NodeEvent::NatTypeDetected { .. } => EventKind::NatTypeDetected,
            NodeEvent::PortMapped { .. } => EventKind::PortMapped,
            NodeEvent::PortMappingFailed { .. } => EventKind::PortMappingFailed,
            NodeEvent::PortMappingLost { .. } => EventKind::PortMappingLost,
            NodeEvent::OverlayPeerConnected { .. } => EventKind::OverlayPeerConnected,
            NodeEvent::OverlayPeerDisconnected { .. } => EventKind::OverlayPeerDisconnected,
            NodeEvent::OverlayReachabilityChanged { .. } => EventKind::OverlayReachabilityChanged,
            NodeEvent::OverlayGossipReceived { .. } => EventKind::OverlayGossipReceived,
            NodeEvent::NodeStopping => EventKind::NodeStopping,
        }
    }
}

/// An event with its time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Its place in this start's sequence (from 1; 0 for `MessageReceived`, which is not
    /// kept for replay). Not serialized: the fleet's messages carry none.
    #[serde(skip)]
    pub seq: u64,
    /// Unix time in milliseconds.
    pub timestamp_ms: u64,
    /// The event.
    #[serde(flatten)]
    pub event: NodeEvent,
}

/// Why `recv` returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The subscriber fell behind; this many events were lost. The stream goes on.
    #[error("lagged: {0} events lost")]
    Lagged(u64),
    /// The node stopped.
    #[error("event bus closed")]
    Closed,
}

/// The bus. Cheap to clone.
///
/// Per-message traffic (`MessageReceived`, one event per message from any peer) has its own
/// channel: a subscriber that asked only for lifecycle events never lags behind, or loses
/// what it asked for, because of traffic it did not ask for.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
    traffic: broadcast::Sender<Arc<Event>>,
    /// The newest events with a sequence number, and the last number given. Publishing
    /// takes the lock to number and send in one step, so numbers reach subscribers in order.
    recent: Arc<Mutex<Recent>>,
}

#[derive(Debug, Default)]
struct Recent {
    last_seq: u64,
    events: VecDeque<Arc<Event>>,
}

/// What [`EventBus::since`] found.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// The kept events after the one asked about, oldest first.
    pub events: Vec<Arc<Event>>,
    /// Events after it that are no longer kept.
    pub lost: u64,
    /// The last sequence number given so far.
    pub last_seq: u64,
}

/// Whether events of `kind` are numbered and kept for replay (not the per-message and
/// per-transaction ones).
fn is_kept(kind: EventKind) -> bool {
    !matches!(kind, EventKind::TxReceived) && !kind.is_traffic()
}

fn is_traffic(kind: EventKind) -> bool {
    kind.is_traffic()
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(EVENT_BUS_CAPACITY)
    }
}

impl EventBus {
    /// A bus buffering `capacity` events per subscriber.
    pub fn new(capacity: usize) -> EventBus {
        let (tx, _) = broadcast::channel(capacity.max(1));
        let (traffic, _) = broadcast::channel(capacity.max(1));
        EventBus {
            tx,
            traffic,
            recent: Arc::default(),
        }
    }

    /// Publishes; never waits. Events with no subscriber are dropped.
    pub fn publish(&self, event: NodeEvent) {
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        if !is_kept(event.kind()) {
            let channel = if is_traffic(event.kind()) {
                &self.traffic
            } else {
                &self.tx
            };
            let _ = channel.send(Arc::new(Event {
                seq: 0,
                timestamp_ms,
                event,
            }));
            return;
        }
        let mut recent = match self.recent.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        recent.last_seq += 1;
        let e = Arc::new(Event {
            seq: recent.last_seq,
            timestamp_ms,
            event,
        });
        if recent.events.len() >= REPLAY_CAPACITY {
            recent.events.pop_front();
        }
        recent.events.push_back(e.clone());
        let _ = self.tx.send(e);
    }

    /// The kept events after sequence number `seq`, and how many after it are gone. A
    /// number above the last given (the client saw an earlier start) replays all that is
    /// kept.
    pub fn since(&self, seq: u64) -> Replay {
        let recent = match self.recent.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        let seq = if seq > recent.last_seq { 0 } else { seq };
        let oldest = recent.events.front().map_or(recent.last_seq + 1, |e| e.seq);
        Replay {
            events: recent
                .events
                .iter()
                .filter(|e| e.seq > seq)
                .cloned()
                .collect(),
            lost: oldest.saturating_sub(seq + 1),
            last_seq: recent.last_seq,
        }
    }

    /// Whether anyone listens to per-message traffic (to skip building events nobody reads).
    pub fn has_subscribers(&self) -> bool {
        self.traffic.receiver_count() > 0
    }

    /// A stream of every event from now on.
    pub fn subscribe(&self) -> EventStream {
        EventStream {
            rx: self.tx.subscribe(),
            traffic: Some(self.traffic.subscribe()),
            filter: None,
        }
    }

    /// A stream of the given kinds only (traffic only when asked for).
    pub fn subscribe_to(&self, kinds: &[EventKind]) -> EventStream {
        let wants_traffic = kinds.iter().any(|k| is_traffic(*k));
        EventStream {
            rx: self.tx.subscribe(),
            traffic: wants_traffic.then(|| self.traffic.subscribe()),
            filter: Some(kinds.iter().copied().collect()),
        }
    }
}

/// A subscriber's view of the bus.
#[derive(Debug)]
pub struct EventStream {
    rx: broadcast::Receiver<Arc<Event>>,
    traffic: Option<broadcast::Receiver<Arc<Event>>>,
    filter: Option<HashSet<EventKind>>,
}

impl EventStream {
    /// The next event that passes the filter.
    pub async fn recv(&mut self) -> Result<Arc<Event>, EventError> {
        loop {
            // Lifecycle events first: they are rare and must not wait behind traffic.
            let got = match self.traffic.as_mut() {
                None => self.rx.recv().await,
                Some(traffic) => tokio::select! {
                    biased;
                    e = self.rx.recv() => e,
                    e = traffic.recv() => e,
                },
            };
            match got {
                Ok(e) => {
                    if self
                        .filter
                        .as_ref()
                        .is_none_or(|f| f.contains(&e.event.kind()))
                    {
                        return Ok(e);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(EventError::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return Err(EventError::Closed),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unbanned(i: usize) -> NodeEvent {
        NodeEvent::PeerUnbanned {
            subnet: format!("10.0.0.{i}/32"),
            reason: "manual".into(),
            by: "operator".into(),
        }
    }

    #[tokio::test]
    async fn filters_by_kind() {
        let bus = EventBus::new(16);
        let mut only_bans = bus.subscribe_to(&[EventKind::PeerBanned]);
        bus.publish(unbanned(1));
        bus.publish(NodeEvent::PeerBanned {
            subnet: "10.0.0.1/32".into(),
            until: 1,
            reason: "manual".into(),
            detail: None,
        });
        assert_eq!(
            only_bans.recv().await.unwrap().event.kind(),
            EventKind::PeerBanned
        );
    }

    #[tokio::test]
    async fn a_slow_subscriber_loses_the_oldest_and_is_told_how_many() {
        let bus = EventBus::new(4);
        let mut slow = bus.subscribe();
        for i in 0..10 {
            bus.publish(unbanned(i)); // never blocks
        }
        assert_eq!(slow.recv().await, Err(EventError::Lagged(6)));
        // It then gets the newest four, in order.
        for i in 6..10 {
            assert_eq!(slow.recv().await.unwrap().event, unbanned(i));
        }
    }

    #[tokio::test]
    async fn traffic_does_not_crowd_out_the_kinds_a_subscriber_asked_for() {
        let bus = EventBus::new(4);
        let mut bans = bus.subscribe_to(&[EventKind::PeerUnbanned]);
        assert!(!bus.has_subscribers(), "nobody asked for traffic");
        bus.publish(unbanned(1));
        for _ in 0..100 {
            bus.publish(NodeEvent::MessageReceived {
                peer: crate::shared::peers::PeerId(1),
                command: "inv".into(),
                size: 61,
            });
        }
        bus.publish(unbanned(2));
        assert_eq!(bans.recv().await.unwrap().event, unbanned(1));
        assert_eq!(bans.recv().await.unwrap().event, unbanned(2));
    }

    #[tokio::test]
    async fn a_resuming_subscriber_gets_what_it_missed_or_how_much_is_gone() {
        let bus = EventBus::new(16);
        for i in 0..5 {
            bus.publish(unbanned(i));
        }
        bus.publish(NodeEvent::MessageReceived {
            peer: crate::shared::peers::PeerId(1),
            command: "inv".into(),
            size: 61,
        });
        let r = bus.since(2);
        let seqs: Vec<u64> = r.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5], "traffic is neither numbered nor kept");
        assert_eq!((r.lost, r.last_seq), (0, 5));
        assert_eq!(bus.since(5).events.len(), 0);
        assert_eq!(
            bus.since(99).events.len(),
            5,
            "another start's number: all kept"
        );
        for i in 0..REPLAY_CAPACITY {
            bus.publish(unbanned(i));
        }
        let r = bus.since(2);
        assert_eq!(r.events.len(), REPLAY_CAPACITY);
        assert_eq!(r.events[0].seq, 6, "the oldest kept");
        assert_eq!(r.lost, 3, "3, 4 and 5 fell out of the buffer");
    }

    #[test]
    fn events_serialize_with_their_type_and_timestamp() {
        let e = Event {
            seq: 1,
            timestamp_ms: 5,
            event: unbanned(3),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "PeerUnbanned");
        assert_eq!(v["timestamp_ms"], 5);
        assert_eq!(v["subnet"], "10.0.0.3/32");
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_name(kind.name()), Some(kind));
        }
    }
}
