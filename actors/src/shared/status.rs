//! Status types the node context holds for every actor to read: the NAT report STUN found
//! (RFC 5780 labels) and the onion service Tor runs for us.

use std::net::SocketAddr;

use serde::Serialize;

use crate::shared::overlay::OverlayAddr;

/// The classic NAT labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NatType {
    /// No NAT, no filtering.
    OpenInternet,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestrictedCone,
    /// Mapping depends on the destination.
    Symmetric,
    /// No NAT, but a stateful firewall filters unsolicited traffic.
    SymmetricUdpFirewall,
    /// The STUN servers are reachable, but not over UDP.
    UdpBlocked,
    /// Cannot tell (no server reachable, or no RFC 5780 support).
    Unknown,
}

impl NatType {
    /// Every label, for metrics.
    pub const ALL: [NatType; 8] = [
        NatType::OpenInternet,
        NatType::FullCone,
        NatType::RestrictedCone,
        NatType::PortRestrictedCone,
        NatType::Symmetric,
        NatType::SymmetricUdpFirewall,
        NatType::UdpBlocked,
        NatType::Unknown,
    ];

    /// The stable name (metric label, API, logs).
    pub fn label(self) -> &'static str {
        match self {
            NatType::OpenInternet => "open_internet",
            NatType::FullCone => "full_cone",
            NatType::RestrictedCone => "restricted_cone",
            NatType::PortRestrictedCone => "port_restricted_cone",
            NatType::Symmetric => "symmetric",
            NatType::SymmetricUdpFirewall => "symmetric_udp_firewall",
            NatType::UdpBlocked => "udp_blocked",
            NatType::Unknown => "unknown",
        }
    }

    /// Whether peers can reach us unsolicited (so advertising our address makes sense).
    pub fn is_reachable(self) -> bool {
        matches!(self, NatType::OpenInternet | NatType::FullCone)
    }
}

/// Mapping or filtering behaviour (RFC 4787 terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Behavior {
    /// Independent of the remote endpoint.
    EndpointIndependent,
    /// Depends on the remote address.
    AddressDependent,
    /// Depends on the remote address and port.
    AddressAndPortDependent,
}

/// The outcome of a probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NatReport {
    /// The label.
    pub nat_type: NatType,
    /// Mapping behaviour, if measured.
    pub mapping: Option<Behavior>,
    /// Filtering behaviour, if measured.
    pub filtering: Option<Behavior>,
    /// Our public address as seen by the server.
    pub public: Option<SocketAddr>,
    /// The server that answered.
    pub server: Option<SocketAddr>,
}

/// Our listening port's mapping on the gateway (PCP, NAT-PMP or UPnP), as the PortMap actor
/// last found it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PortMapStatus {
    /// `mapped`, `failed` (a round found no mapping; retried later) or `trying`.
    pub state: &'static str,
    /// `pcp`, `natpmp` or `upnp`: what made the mapping, or what was tried last.
    pub protocol: Option<&'static str>,
    /// The gateway asked.
    pub gateway: Option<SocketAddr>,
    /// Our listening address the gateway forwards to.
    pub internal: SocketAddr,
    /// The gateway's address and port that reach us (advertised while mapped).
    pub external: Option<SocketAddr>,
    /// Seconds granted.
    pub lifetime: Option<u32>,
    /// Unix time the mapping was last made or renewed.
    pub renewed_time: Option<u64>,
    /// Why the last round failed, if it did.
    pub last_error: Option<String>,
    /// Whether STUN's public IP (when STUN ran) is the mapped address's IP.
    pub stun_agrees: Option<bool>,
}

/// An onion service that is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnionService {
    /// Its address.
    pub addr: OverlayAddr,
    /// The port peers connect to.
    pub port: u16,
    /// Where Tor delivers its connections.
    pub target: SocketAddr,
}

/// The overlay (libp2p) as the Overlay actor last saw it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct OverlayStatus {
    /// Our libp2p peer id.
    pub peer_id: String,
    /// Multiaddrs we listen on.
    pub listen_addrs: Vec<String>,
    /// Multiaddrs others can reach us at, as confirmed (AutoNAT, Identify, relay
    /// reservations: `/p2p-circuit` ones).
    pub external_addrs: Vec<String>,
    /// AutoNAT's verdict: `unknown`, `public` or `private`.
    pub reachability: String,
    /// Connected overlay peers.
    pub peers: usize,
    /// Peers in the Kademlia routing table.
    pub routing_table: usize,
    /// GossipSub topics we are subscribed to.
    pub topics: Vec<String>,
    /// Topics we announce as DHT provider records (and follow on GossipSub).
    pub provided: Vec<String>,
    /// Similarity above which peers share a cluster (`--overlay-cluster-threshold`).
    pub cluster_threshold: f64,
    /// Clusters among our connected peers.
    pub clusters: usize,
    /// Relays holding a reservation for us.
    pub relay_reservations: Vec<String>,
    /// Whether we serve as a circuit relay for others.
    pub relay_service: bool,
    /// Reservations we hold for others, and circuits we carry now.
    pub relay_served: RelayServed,
    /// Whether mDNS runs.
    pub mdns: bool,
    /// DCUtR's hole punches since the overlay started: direct connections made, and
    /// attempts that gave up (the relay then carries the connection).
    pub hole_punches: HolePunches,
}

/// Hole-punch outcomes (DCUtR).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HolePunches {
    /// Direct connections made.
    pub ok: u64,
    /// Attempts that gave up.
    pub failed: u64,
}

/// What our relay service carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelayServed {
    /// Reservations held for others.
    pub reservations: usize,
    /// Circuits open now.
    pub circuits: usize,
}

/// One connected overlay peer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OverlayPeerStatus {
    /// Its libp2p peer id.
    pub peer_id: String,
    /// Where we are connected to it (the first connection's remote address).
    pub address: String,
    /// Its listen addresses (from Identify), a few.
    pub listen_addrs: Vec<String>,
    /// Its agent (Identify), bounded.
    pub agent: Option<String>,
    /// How we came to know it: `bootstrap`, `mdns`, `dht`, `hint` (a Bitcoin peer told us),
    /// `dial` (an operator) or `inbound`.
    pub found_by: &'static str,
    /// Whether the connection runs over a relay's circuit.
    pub relayed: bool,
    /// The last ping's round trip, milliseconds.
    pub rtt_ms: Option<u64>,
    /// Seconds connected.
    pub connected_secs: u64,
    /// The topics it serves (its GossipSub subscriptions).
    pub topics: Vec<String>,
    /// Its cluster among our peers (0, 1, ...), by the Jaccard similarity of topic sets.
    pub cluster: usize,
    /// Jaccard similarity of its topics and ours.
    pub similarity: f64,
}

/// A peer found serving a topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TopicProvider {
    /// Its libp2p peer id.
    pub peer_id: String,
    /// Whether we are connected to it now.
    pub connected: bool,
}
