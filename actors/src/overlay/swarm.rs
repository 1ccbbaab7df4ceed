//! The overlay's libp2p Swarm: its transports and behaviours, and every bound on what a
//! remote can make it hold.
//!
//! Transports: TCP and QUIC (v1), each connection secured by Noise and multiplexed by Yamux
//! (QUIC brings its own), DNS names in multiaddrs resolved, and the circuit relay v2 client
//! as a transport, so a node behind a NAT is reachable through a relay's `/p2p-circuit`
//! address. Behaviours: connection limits, relay client and (on a node that may serve)
//! relay server, Identify, Ping, Kademlia on meshd's own protocol per network (so a BTC
//! overlay and a BSV one never share a DHT), GossipSub (signed, strictly validated),
//! mDNS (when asked for), AutoNAT v1 and DCUtR.

use std::num::NonZeroUsize;
use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{global_only, Boxed, OrTransport};
use libp2p::core::{upgrade, Transport as _};
use libp2p::identity::Keypair;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    autonat, connection_limits, dcutr, dns, gossipsub, identify, kad, mdns, noise, ping, quic,
    relay, tcp, yamux, PeerId, StreamProtocol, Swarm, SwarmBuilder,
};

pub use self::behaviour::{MeshBehaviour, MeshBehaviourEvent};

/// Established overlay connections at most: each holds Yamux and Noise buffers, and a
/// remote that opens many must not exhaust our sockets; the Bitcoin side has its own slots.
pub const MAX_OVERLAY_CONNECTIONS: u32 = 64;
/// Yamux streams open on one connection at most.
const MAX_STREAMS_PER_CONNECTION: usize = 64;
/// Established connections that came in, at most: a flood of inbound peers leaves room for
/// the ones we dial (bootstrap, hints, DHT walks).
const MAX_INCOMING_CONNECTIONS: u32 = 48;
/// Connections to one peer at most: one direct and one relayed (DCUtR upgrades the second).
const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Incoming connections still in their handshake at most: a flood of half-open ones costs
/// no more than this many Noise handshakes at a time.
const MAX_PENDING_INCOMING: u32 = 16;
/// Outgoing dials in flight at most (DHT walks dial many peers at once).
const MAX_PENDING_OUTGOING: u32 = 16;
/// A connection with no stream open is closed after this: Kademlia and GossipSub keep
/// the useful ones busy.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// DHT records we store for others at most (Kademlia's `MemoryStore`).
pub const MAX_DHT_RECORDS: usize = 1024;
/// Bytes of one DHT record's value at most.
pub const MAX_DHT_RECORD_BYTES: usize = 4 * 1024;
/// Providers kept per DHT key: Kademlia's replication factor (K = 20).
const MAX_PROVIDERS_PER_KEY: usize = 20;
/// Provider keys the store holds at most, ours and others' (kad's `max_provided_keys`
/// counts every key with a provider); the driver keeps room for ours and gives each remote
/// a share (see `store_remote_provider`).
pub const MAX_PROVIDED_KEYS: usize = 1024;
/// Largest Kademlia message accepted (the crate's default is 16 KiB): a `FIND_NODE`
/// answer of K peers with a few addresses each fits well inside.
const MAX_KAD_PACKET: usize = 16 * 1024;
/// Peers per k-bucket (Kademlia's K): 256 buckets of 20 bound the routing table.
const KBUCKET_SIZE: usize = 20;
/// Limit on one DHT query.
const KAD_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest GossipSub message (RPC frame) accepted or sent: our payloads are small hints
/// and announcements; a remote cannot make us buffer megabytes per frame.
pub const MAX_GOSSIP_MESSAGE: usize = 64 * 1024;
/// Topics one remote peer may be subscribed to, as we track them.
const MAX_TOPICS_PER_REMOTE: usize = 64;
/// Topic changes in one subscription request at most.
const MAX_SUBSCRIPTIONS_PER_REQUEST: usize = 32;
/// GossipSub messages per RPC frame at most.
const MAX_MESSAGES_PER_RPC: usize = 64;
/// GossipSub frames queued to one peer at most (the crate's default is 5,000: at 64 KiB a
/// frame, 320 MiB for one slow peer).
const GOSSIP_QUEUE_PER_PEER: usize = 256;
/// Message ids in one IHAVE, and IHAVEs accepted per heartbeat from a peer.
const MAX_IHAVE_LENGTH: usize = 1000;
/// See [`MAX_IHAVE_LENGTH`].
const MAX_IHAVE_MESSAGES: usize = 10;

/// Relay reservations we hold for others at most (circuit relay v2 server).
pub const MAX_RELAY_RESERVATIONS: usize = 32;
/// Reservations one peer may hold with us.
const MAX_RELAY_RESERVATIONS_PER_PEER: usize = 2;
/// Relayed circuits in progress at most.
pub const MAX_RELAY_CIRCUITS: usize = 16;
/// Circuits from one source peer at most.
const MAX_RELAY_CIRCUITS_PER_PEER: usize = 4;
/// A relayed circuit is closed after this long: long enough for a handshake, a header
/// sync and DCUtR's upgrade, short enough that one peer cannot make us its permanent relay.
const MAX_RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(10 * 60);
/// Bytes one relayed circuit may carry at most (each way counted together).
const MAX_RELAY_CIRCUIT_BYTES: u64 = 64 * 1024 * 1024;

/// Identify's pushes and answers are cached for this many peers.
const IDENTIFY_CACHE: usize = 128;
/// Interval of AutoNAT's re-checks once it is confident.
const AUTONAT_REFRESH: Duration = Duration::from_secs(5 * 60);
/// Interval of AutoNAT's checks while it is not yet confident.
const AUTONAT_RETRY: Duration = Duration::from_secs(20);

/// The Identify protocol version meshd announces.
pub fn protocol_version(network: &str) -> String {
    format!("/meshd/{network}/1.0.0")
}

/// The Kademlia protocol of one network's overlay.
pub fn kad_protocol(network: &str) -> String {
    format!("/meshd/{network}/kad/1.0.0")
}

/// What the Swarm is built with.
pub struct SwarmSettings {
    /// The network's name (`regtest`, `mainnet`, `bsv-mainnet`, ...).
    pub network: String,
    /// Our user agent, announced by Identify.
    pub agent: String,
    /// mDNS on the LAN.
    pub mdns: bool,
    /// Serve as a circuit relay v2 for others, within the reservation and circuit bounds.
    pub relay_service: bool,
    /// Loopback and private addresses count as reachable (regtest, labs): AutoNAT checks
    /// them and Kademlia keeps them.
    pub local_addrs: bool,
}

mod behaviour {
    //! The derived behaviour: kept in its own module, as `#[derive(NetworkBehaviour)]`
    //! writes an event enum without docs.
    #![allow(missing_docs)]

    use libp2p::swarm::behaviour::toggle::Toggle;
    use libp2p::swarm::NetworkBehaviour;
    use libp2p::{autonat, connection_limits, dcutr, gossipsub, identify, kad, mdns, ping, relay};

    /// Every behaviour of the overlay's Swarm.
    #[derive(NetworkBehaviour)]
    pub struct MeshBehaviour {
        pub limits: connection_limits::Behaviour,
        pub relay_client: relay::client::Behaviour,
        pub relay: Toggle<relay::Behaviour>,
        pub identify: identify::Behaviour,
        pub ping: ping::Behaviour,
        pub kad: kad::Behaviour<kad::store::MemoryStore>,
        pub gossipsub: gossipsub::Behaviour,
        pub mdns: Toggle<mdns::tokio::Behaviour>,
        pub autonat: autonat::Behaviour,
        pub dcutr: dcutr::Behaviour,
    }
}

/// Why the Swarm could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// A transport or behaviour refused its configuration.
    #[error("overlay swarm: {0}")]
    Build(String),
}

fn build_err(e: impl std::fmt::Display) -> SwarmError {
    SwarmError::Build(e.to_string())
}

/// Builds the Swarm (it listens on nothing yet).
pub fn build(key: Keypair, settings: &SwarmSettings) -> Result<Swarm<MeshBehaviour>, SwarmError> {
    // With mDNS on, the operator asked for LAN peers: their addresses are private.
    let local_addrs = settings.local_addrs || settings.mdns;
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| base_transport(key, local_addrs))
        .map_err(build_err)?
        .with_relay_client(noise::Config::new, yamux_config)
        .map_err(build_err)?
        .with_behaviour(|key, relay_client| behaviours(key, relay_client, settings))
        .map_err(build_err)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok(swarm)
}

/// TCP (Noise, Yamux) and QUIC, under DNS. Off a lab (and without mDNS, which asks for LAN
/// peers), every dial to an address that is not globally routable is refused (libp2p's `global_only` transport): Kademlia, Identify and
/// DCUtR dial addresses remotes tell us of, and none of them may point our overlay at the
/// operator's own network. DNS names are resolved first, and the addresses they resolve to
/// pass the same check.
fn base_transport(
    key: &Keypair,
    local_addrs: bool,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux_config())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let quic = quic::tokio::Transport::new(quic::Config::new(key))
        .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)));
    let both = OrTransport::new(quic, tcp).map(|either, _| match either {
        futures_util::future::Either::Left(out) | futures_util::future::Either::Right(out) => out,
    });
    let filtered = if local_addrs {
        both.boxed()
    } else {
        global_only::Transport::new(both).boxed()
    };
    Ok(dns::tokio::Transport::system(filtered)?.boxed())
}

/// Yamux with fewer streams per connection than the crate's 512: our protocols open a few
/// each, and a remote's streams are buffers we hold.
fn yamux_config() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
    c
}

fn behaviours(
    key: &Keypair,
    relay_client: relay::client::Behaviour,
    settings: &SwarmSettings,
) -> Result<MeshBehaviour, Box<dyn std::error::Error + Send + Sync>> {
    let me = key.public().to_peer_id();
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(MAX_OVERLAY_CONNECTIONS))
        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
        .with_max_pending_outgoing(Some(MAX_PENDING_OUTGOING))
        .with_max_established_incoming(Some(MAX_INCOMING_CONNECTIONS));

    let relay = settings.relay_service.then(|| {
        relay::Behaviour::new(
            me,
            relay::Config {
                max_reservations: MAX_RELAY_RESERVATIONS,
                max_reservations_per_peer: MAX_RELAY_RESERVATIONS_PER_PEER,
                max_circuits: MAX_RELAY_CIRCUITS,
                max_circuits_per_peer: MAX_RELAY_CIRCUITS_PER_PEER,
                max_circuit_duration: MAX_RELAY_CIRCUIT_DURATION,
                max_circuit_bytes: MAX_RELAY_CIRCUIT_BYTES,
                ..relay::Config::default()
            },
        )
    });

    let identify = identify::Behaviour::new(
        identify::Config::new(protocol_version(&settings.network), key.public())
            .with_agent_version(settings.agent.clone())
            .with_cache_size(IDENTIFY_CACHE),
    );

    let protocol = StreamProtocol::try_from_owned(kad_protocol(&settings.network))
        .map_err(|e| format!("kad protocol: {e}"))?;
    let mut kad_config = kad::Config::new(protocol);
    kad_config
        .set_max_packet_size(MAX_KAD_PACKET)
        .set_query_timeout(KAD_QUERY_TIMEOUT)
        .set_kbucket_size(NonZeroUsize::new(KBUCKET_SIZE).ok_or("k-bucket size")?)
        // Records others ask us to store are checked before they are: none is taken blindly.
        .set_record_filtering(kad::StoreInserts::FilterBoth);
    let store = kad::store::MemoryStore::with_config(
        me,
        kad::store::MemoryStoreConfig {
            max_records: MAX_DHT_RECORDS,
            max_value_bytes: MAX_DHT_RECORD_BYTES,
            max_providers_per_key: MAX_PROVIDERS_PER_KEY,
            max_provided_keys: MAX_PROVIDED_KEYS,
        },
    );
    let mut kad = kad::Behaviour::with_config(me, store, kad_config);
    if settings.local_addrs {
        // AutoNAT never confirms a loopback address, and a client-mode node is left out of
        // others' routing tables: in a local lab every node serves the DHT.
        kad.set_mode(Some(kad::Mode::Server));
    }

    let gossip_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .max_transmit_size(MAX_GOSSIP_MESSAGE)
        .max_messages_per_rpc(Some(MAX_MESSAGES_PER_RPC))
        .max_ihave_length(MAX_IHAVE_LENGTH)
        .max_ihave_messages(MAX_IHAVE_MESSAGES)
        .connection_handler_queue_len(GOSSIP_QUEUE_PER_PEER)
        .build()
        .map_err(|e| format!("gossipsub: {e}"))?;
    let gossipsub = gossipsub::Behaviour::new_with_subscription_filter(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossip_config,
        gossipsub::MaxCountSubscriptionFilter {
            filter: gossipsub::AllowAllSubscriptionFilter {},
            max_subscribed_topics: MAX_TOPICS_PER_REMOTE,
            max_subscriptions_per_request: MAX_SUBSCRIPTIONS_PER_REQUEST,
        },
    )?;

    let mdns = if settings.mdns {
        Some(mdns::tokio::Behaviour::new(mdns::Config::default(), me)?)
    } else {
        None
    };

    let autonat = autonat::Behaviour::new(
        me,
        autonat::Config {
            refresh_interval: AUTONAT_REFRESH,
            retry_interval: AUTONAT_RETRY,
            only_global_ips: !settings.local_addrs,
            ..autonat::Config::default()
        },
    );

    Ok(MeshBehaviour {
        limits: connection_limits::Behaviour::new(limits),
        relay_client,
        relay: Toggle::from(relay),
        identify,
        ping: ping::Behaviour::new(ping::Config::new()),
        kad,
        gossipsub,
        mdns: Toggle::from(mdns),
        autonat,
        dcutr: dcutr::Behaviour::new(me),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_swarm_builds_with_every_behaviour() {
        let settings = SwarmSettings {
            network: "regtest".into(),
            agent: "/meshd:test/".into(),
            mdns: false,
            relay_service: true,
            local_addrs: true,
        };
        let swarm = build(Keypair::generate_ed25519(), &settings).unwrap();
        assert!(swarm.behaviour().relay.is_enabled());
        assert!(!swarm.behaviour().mdns.is_enabled());
        assert_eq!(kad_protocol("regtest"), "/meshd/regtest/kad/1.0.0");
    }

    #[tokio::test]
    async fn off_a_lab_addresses_that_are_not_global_are_never_dialled() {
        use futures_util::StreamExt;
        use libp2p::swarm::{DialError, SwarmEvent};
        let settings = SwarmSettings {
            network: "mainnet".into(),
            agent: "/meshd:test/".into(),
            mdns: false,
            relay_service: false,
            local_addrs: false,
        };
        let mut swarm = build(Keypair::generate_ed25519(), &settings).unwrap();
        // A listener on loopback, so a dial that got through would not fail for want of one.
        let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = target.local_addr().unwrap().port();
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        for addr in [
            format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}"),
            format!("/ip4/10.1.2.3/tcp/{port}/p2p/{peer}"),
            format!("/ip4/192.168.0.1/udp/{port}/quic-v1/p2p/{peer}"),
        ] {
            swarm
                .dial(addr.parse::<libp2p::Multiaddr>().unwrap())
                .unwrap();
            let error = loop {
                if let SwarmEvent::OutgoingConnectionError { error, .. } =
                    swarm.select_next_some().await
                {
                    break error;
                }
            };
            match error {
                // Refused before any socket (under DNS the refusal comes wrapped).
                DialError::Transport(errors) => assert!(
                    errors
                        .iter()
                        .all(|(_, e)| format!("{e:?}").contains("MultiaddrNotSupported")),
                    "{addr}: {errors:?}"
                ),
                other => panic!("{addr}: {other:?}"),
            }
        }
        // Nothing reached the listener.
        target.set_nonblocking(true).unwrap();
        assert!(target.accept().is_err());
    }
}
