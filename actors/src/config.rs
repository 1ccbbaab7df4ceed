//! The node's configuration as the library sees it: already parsed and validated.
//!
//! The daemon builds a [`NodeConfig`] from flags and the TOML file; an embedding program
//! builds one directly, starting from [`NodeConfig::new`] which fills in every default for a
//! network.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bitcoin::p2p::ServiceFlags;

use crate::constants::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MIN_PROTOCOL_VERSION,
    DEFAULT_PING_INTERVAL, DEFAULT_PING_TIMEOUT, SEND_QUEUE_CAPACITY,
};
use crate::network::{user_agent, NetworkId, Profile};
use crate::peer::misbehavior::{DEFAULT_BAN_DURATION, DEFAULT_BAN_THRESHOLD};
use crate::peer::HandshakePolicy;
use crate::shared::overlay::{Network, OverlayAddr};
use crate::shared::restart_policy::RestartPolicy;
use crate::shared::slots::SlotLimits;

/// Default interval between address-book saves (Bitcoin Core's `DUMP_PEERS_INTERVAL`).
pub const DEFAULT_ADDRBOOK_SAVE_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// A tip older than this keeps the node in initial sync (Core's `DEFAULT_MAX_TIP_AGE`): a day
/// of blocks missing means the node has not caught up, whatever its peers claim.
pub const DEFAULT_MAX_TIP_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Everything the node needs to run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The network to join.
    pub network: NetworkId,
    /// Directory for this network's state (already includes the network name).
    pub datadir: PathBuf,
    /// Addresses to accept inbound peers on (port 0 picks a free port).
    pub listen: Vec<SocketAddr>,
    /// Peers to dial and keep connected (manual, persistent).
    pub connect: Vec<SocketAddr>,
    /// Time allowed for the version handshake.
    pub handshake_timeout: Duration,
    /// Interval between our pings.
    pub ping_interval: Duration,
    /// Time a ping may go unanswered.
    pub ping_timeout: Duration,
    /// Time allowed for an outbound TCP connect.
    pub connect_timeout: Duration,
    /// Lowest peer protocol version accepted.
    pub min_protocol_version: u32,
    /// Services we announce.
    pub services: ServiceFlags,
    /// Services an automatic outbound peer must announce.
    pub required_services: ServiceFlags,
    /// Substrings of user agents we refuse.
    pub banned_user_agents: Vec<String>,
    /// User agent we announce.
    pub user_agent: String,
    /// Whether we ask peers to relay transactions to us.
    pub relay: bool,
    /// BSV: largest block/transaction message accepted (ignored on BTC).
    pub max_block_message_size: u32,
    /// Messages queued per peer before it is dropped as too slow.
    pub send_queue_capacity: usize,
    /// Outbound candidates (`--addnode`): dialled while outbound slots are free.
    pub addnode: Vec<SocketAddr>,
    /// Connection slot limits.
    pub slots: SlotLimits,
    /// Mean time between feelers (Core's `FEELER_INTERVAL`, 2 min, on an exponential timer):
    /// while the outbound slots are full, a short connection tests an address of the new
    /// table, or the occupant of a tried-table collision. `None`: no feelers (an embedder's
    /// or a test's fixed topology).
    pub feeler_interval: Option<Duration>,
    /// Mean time between extra block-relay-only connections (Core's
    /// `EXTRA_BLOCK_RELAY_ONLY_PEER_INTERVAL`, 5 min, exponential): once out of initial sync
    /// with every outbound slot full, one more block-relay-only peer for a while, to hear of a
    /// better tip our peers may hide; the youngest is then let go unless it gave us a block
    /// more recently than the one before it. `None`: never (a fixed topology).
    pub extra_block_relay_interval: Option<Duration>,
    /// Global upload limit, bytes/s (0: unlimited).
    pub max_upload_rate: u64,
    /// Global download limit, bytes/s (0: unlimited).
    pub max_download_rate: u64,
    /// Burst of the global upload bucket, bytes (0: a tenth of a second, at least 16 KiB).
    pub upload_burst: u64,
    /// Burst of the global download bucket, bytes (0: as above).
    pub download_burst: u64,
    /// Per-connection upload limit, bytes/s (0: unlimited).
    pub peer_max_upload_rate: u64,
    /// Per-connection download limit, bytes/s (0: unlimited).
    pub peer_max_download_rate: u64,
    /// Burst of each connection's buckets, bytes (0: as above).
    pub peer_burst: u64,
    /// Misbehaviour score at which a peer is disconnected and discouraged.
    pub ban_threshold: u32,
    /// Length of a ban given without one (an operator's).
    pub ban_duration: Duration,
    /// Discourage loopback peers automatically too (Bitcoin Core never does).
    pub ban_local_peers: bool,
    /// Restart policy for outbound connections.
    pub restart: RestartPolicy,
    /// DNS servers for seed lookups (empty: the system resolver).
    pub dns_servers: Vec<SocketAddr>,
    /// DNS seed names (the network's by default; empty switches DNS discovery off).
    pub dns_seeds: Vec<String>,
    /// Addresses we advertise as ours (`--externalip`).
    pub external_addrs: Vec<SocketAddr>,
    /// Loopback and private addresses count each as their own network group (default on
    /// regtest), so local meshes can fill their outbound slots.
    pub distinct_local_groups: bool,
    /// How often the address book is saved (also at shutdown).
    pub addrbook_save_interval: Duration,
    /// STUN servers, `HOST:PORT`, tried in order (empty: STUN off).
    pub stun_servers: Vec<String>,
    /// Limit on one STUN transaction, retransmissions included.
    pub stun_timeout: Duration,
    /// How long a STUN result is trusted before it is probed again.
    pub stun_interval: Duration,
    /// Map the listening port on the gateway with PCP, falling back to NAT-PMP (`--natpmp`,
    /// on by default as in Core 30). Only listeners on addresses a gateway can forward to
    /// (not loopback) are mapped.
    pub natpmp: bool,
    /// Map it with UPnP IGD when PCP and NAT-PMP found nothing (`--upnp`, off by default).
    pub upnp: bool,
    /// Fetch blocks announced at the tip (`tip`) or not at all (`none`).
    pub fetch_blocks: bool,
    /// BIP152 compact blocks, both ways (`compact-blocks on|off`).
    pub compact_blocks: bool,
    /// Blocks kept in memory to answer getdata.
    pub keep_blocks: usize,
    /// Header hints (`--header-hints FILE`, see [`crate::sync::hints`]): best-chain hashes
    /// at regular heights, ascending, at most 2,000 apart. Empty: sync from one peer.
    pub header_hints: Vec<(u32, bitcoin::BlockHash)>,
    /// Core's asmap (`--asmap FILE`, see [`crate::shared::asmap`]): network groups by the AS
    /// that announces an address, for the address book's buckets, outbound diversity and
    /// eviction. None: groups by /16 (IPv4) and /32 (IPv6).
    pub asmap: Option<std::sync::Arc<crate::shared::asmap::Asmap>>,
    /// Transactions the relay pool holds at most.
    pub tx_pool_max_count: usize,
    /// Bytes the relay pool holds at most.
    pub tx_pool_max_bytes: usize,
    /// Age after which a pooled transaction is dropped.
    pub tx_pool_max_age: Duration,
    /// Delay transaction announcements with Poisson timers, as Core does (off for benchmarks).
    pub trickle: bool,
    /// Which pooled transactions are announced (`--tx-relay`).
    pub tx_relay: TxRelay,
    /// A sync peer that does not answer getheaders in this time is replaced.
    pub sync_stall_timeout: Duration,
    /// The node is in initial sync while its tip is older than this or has less than the
    /// minimum chain work (`--max-tip-age`, Core's `-maxtipage`, default 24 h).
    pub max_tip_age: Duration,
    /// Overrides the network's minimum chain work (`--minimum-chain-work`, as Core's
    /// `-minimumchainwork`); headers of a chain with less work go through presync.
    pub minimum_chain_work: Option<u128>,
    /// Operators' whitelist (`--whitelist [PERMISSIONS@]CIDR`).
    pub whitelist: Vec<crate::shared::whitelist::WhitelistEntry>,
    /// BIP324 v2 encrypted transport (`--v2transport`, Core's `-v2transport`): announced as
    /// NODE_P2P_V2, accepted inbound, tried outbound. BTC networks only: BSV has no BIP324
    /// and stays v1 whatever this says (see [`NodeConfig::v2_enabled`]).
    pub v2transport: bool,
    /// SOCKS5 proxy for every outbound connection (`--proxy`, Core's `-proxy`).
    pub proxy: Option<ProxyConfig>,
    /// SOCKS5 proxy for onion peers (`--onion`; `None`: the proxy).
    pub onion_proxy: Option<ProxyConfig>,
    /// Fresh random proxy credentials per connection, so Tor isolates each peer on its own
    /// circuit (`--proxy-randomize`, default on).
    pub proxy_randomize: bool,
    /// Networks automatic and manual outbound connections may use (`--onlynet`; empty:
    /// every network with a route).
    pub onlynet: Vec<Network>,
    /// Names of the onion and I2P peers among `connect` and `addnode` (their entries there
    /// are the internal addresses, see [`crate::shared::overlay`]).
    pub overlay_peers: Vec<OverlayAddr>,
    /// Tor's control port, for the inbound onion service (`--torcontrol`).
    pub tor_control: Option<SocketAddr>,
    /// Password for Tor's control port (`--torpassword`; otherwise cookie authentication).
    pub tor_password: Option<String>,
    /// Authenticate to a control port that offers no authentication (`--torcontrol-null-auth`).
    /// Off by default: whatever listens on the port would then get our onion key, unasked.
    pub tor_null_auth: bool,
    /// Create an onion service for inbound peers through the control port
    /// (`--listenonion`, default on).
    pub listen_onion: bool,
    /// Publish to a fleet on NATS JetStream (`--nats`); `None`: an island.
    pub fleet: Option<FleetConfig>,
    /// The libp2p overlay (`--overlay`, see [`crate::overlay`]).
    pub overlay: OverlayConfig,
}

/// The overlay's port is the network's port plus this when no `--overlay-listen` is given
/// (8335 on BTC mainnet): next to the Bitcoin port, clear of Core's RPC (+1).
pub const OVERLAY_PORT_OFFSET: u16 = 2;

/// Overlay peers the node keeps without pruning for diversity: past this, the youngest
/// stranger of the most crowded topic cluster is let go (see [`crate::overlay::cluster`]).
pub const DEFAULT_OVERLAY_PEER_TARGET: usize = 32;

/// The libp2p overlay's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OverlayConfig {
    /// Run it (`--overlay`, off by default).
    pub enabled: bool,
    /// Where to listen (`--overlay-listen`; empty: TCP and QUIC on every IPv4 address at
    /// the network's port plus [`OVERLAY_PORT_OFFSET`]).
    pub listen: Vec<libp2p::Multiaddr>,
    /// Peers to join through (`--overlay-bootstrap`, each ending in `/p2p/<peer id>`).
    pub bootstrap: Vec<libp2p::Multiaddr>,
    /// Find peers on the LAN by mDNS (`--overlay-mdns`, off by default: it announces us to
    /// everyone on the segment).
    pub mdns: bool,
    /// Serve as a circuit relay v2 for others, within bounds (`--overlay-relay-service`,
    /// on by default).
    pub relay_service: bool,
    /// Loopback and private addresses count as reachable (default on regtest): a local
    /// lab's nodes serve the DHT to each other.
    pub local_addrs: bool,
    /// Topics announced beside the defaults (`--overlay-topic`).
    pub topics: Vec<String>,
    /// Jaccard similarity above which peers share a cluster (`--overlay-cluster-threshold`).
    pub cluster_threshold: f64,
    /// Peers kept before the most crowded cluster is pruned.
    pub peer_target: usize,
    /// How long an inbound peer stays before it may be pruned for diversity.
    pub prune_min_age: Duration,
}

/// An inbound overlay peer is not pruned for diversity before this: a peer that connects
/// and asks something is not cut off mid-request.
pub const DEFAULT_OVERLAY_PRUNE_MIN_AGE: Duration = Duration::from_secs(120);

impl OverlayConfig {
    /// Defaults for a network (`regtest`: local addresses count).
    pub fn new(regtest: bool) -> OverlayConfig {
        OverlayConfig {
            enabled: false,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: false,
            relay_service: true,
            local_addrs: regtest,
            topics: Vec::new(),
            cluster_threshold: crate::overlay::cluster::DEFAULT_CLUSTER_THRESHOLD,
            peer_target: DEFAULT_OVERLAY_PEER_TARGET,
            prune_min_age: DEFAULT_OVERLAY_PRUNE_MIN_AGE,
        }
    }

    /// The topics a node announces: its network (`meshd/<network>`) and what it offers
    /// (`meshd/<network>/blocks`, `.../compact-blocks` with compact blocks on, `.../hints`,
    /// `.../relay` while it serves as a relay), then `--overlay-topic`'s, without repeats.
    pub fn announced_topics(&self, network: &str, compact_blocks: bool) -> Vec<String> {
        let base = format!("meshd/{network}");
        let mut out = vec![
            base.clone(),
            format!("{base}/blocks"),
            format!("{base}/hints"),
        ];
        if compact_blocks {
            out.insert(2, format!("{base}/compact-blocks"));
        }
        if self.relay_service {
            out.push(format!("{base}/relay"));
        }
        for t in &self.topics {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }

    /// The addresses to listen on: `listen`, or the defaults at `bitcoin_port` plus
    /// [`OVERLAY_PORT_OFFSET`].
    pub fn listen_addrs(&self, bitcoin_port: u16) -> Vec<libp2p::Multiaddr> {
        if !self.listen.is_empty() {
            return self.listen.clone();
        }
        let port = bitcoin_port.saturating_add(OVERLAY_PORT_OFFSET);
        let tcp = libp2p::Multiaddr::empty()
            .with(libp2p::multiaddr::Protocol::Ip4(
                std::net::Ipv4Addr::UNSPECIFIED,
            ))
            .with(libp2p::multiaddr::Protocol::Tcp(port));
        let quic = libp2p::Multiaddr::empty()
            .with(libp2p::multiaddr::Protocol::Ip4(
                std::net::Ipv4Addr::UNSPECIFIED,
            ))
            .with(libp2p::multiaddr::Protocol::Udp(port))
            .with(libp2p::multiaddr::Protocol::QuicV1);
        vec![tcp, quic]
    }
}

/// A fleet of meshd nodes on NATS JetStream (see [`crate::fleet`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// NATS server URL(s), comma-separated (`nats://127.0.0.1:4222`).
    pub url: String,
    /// NATS credentials file (`--nats-credentials`).
    pub credentials_file: Option<PathBuf>,
    /// NATS user and password (`--nats-user`, `--nats-password`).
    pub user_password: Option<(String, String)>,
    /// The fleet's name (`--fleet`).
    pub fleet: String,
    /// This node's name in the fleet (`--node-name`).
    pub node_name: String,
    /// Events kept in the stream at most this long (`--fleet-max-age`).
    pub max_age: Duration,
    /// Bytes kept in the stream at most (`--fleet-max-bytes`).
    pub max_bytes: u64,
    /// Events waiting to be published at most; beyond, they are dropped and counted.
    pub buffer: usize,
    /// Apply other nodes' ban advisories (`--fleet-apply-bans`).
    pub apply_bans: bool,
    /// The keys whose advisories are applied, each bound to its node's name
    /// (`--fleet-trusted-keys FILE`, see [`crate::fleet::core::TrustedKeys`]).
    pub trusted_keys: crate::shared::fleet_keys::TrustedKeys,
    /// Interval of the heartbeat in the fleet's key-value bucket.
    pub heartbeat_interval: Duration,
    /// Copies JetStream keeps of the stream and bucket when it creates them
    /// (`--fleet-replicas`; 3 on a three-server cluster).
    pub replicas: usize,
}

/// Default age limit of a fleet's stream.
pub const DEFAULT_FLEET_MAX_AGE: Duration = Duration::from_secs(7 * 86_400);
/// Default size limit of a fleet's stream.
pub const DEFAULT_FLEET_MAX_BYTES: u64 = 1 << 30;
/// Default bound of the events waiting to be published: about 20 minutes of a busy
/// mainnet node's events (see the README's fleet section), a few MiB.
pub const DEFAULT_FLEET_BUFFER: usize = 10_000;
/// Default heartbeat interval.
pub const DEFAULT_FLEET_HEARTBEAT: Duration = Duration::from_secs(10);

impl FleetConfig {
    /// A fleet on `url` with every other setting at its default.
    pub fn new(url: &str, fleet: &str, node_name: &str) -> FleetConfig {
        FleetConfig {
            url: url.to_string(),
            credentials_file: None,
            user_password: None,
            fleet: fleet.to_string(),
            node_name: node_name.to_string(),
            max_age: DEFAULT_FLEET_MAX_AGE,
            max_bytes: DEFAULT_FLEET_MAX_BYTES,
            buffer: DEFAULT_FLEET_BUFFER,
            apply_bans: false,
            trusted_keys: Default::default(),
            heartbeat_interval: DEFAULT_FLEET_HEARTBEAT,
            replicas: 1,
        }
    }
}

/// A SOCKS5 proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Fixed credentials (`USER:PASSWORD@HOST:PORT`); they take the place of random ones.
    pub credentials: Option<(String, String)>,
}

/// Default limit on one STUN transaction (RFC 5389 retransmissions fit 3 sends in it).
pub const DEFAULT_STUN_TIMEOUT: Duration = Duration::from_secs(3);
/// Default life of a STUN result: addresses behind home routers change rarely, but do.
pub const DEFAULT_STUN_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Core's `FEELER_INTERVAL`.
pub const DEFAULT_FEELER_INTERVAL: Duration = Duration::from_secs(120);

/// Core's `EXTRA_BLOCK_RELAY_ONLY_PEER_INTERVAL`: the mean wait between extra
/// block-relay-only connections.
pub const DEFAULT_EXTRA_BLOCK_RELAY_INTERVAL: Duration = Duration::from_secs(300);

/// Keys that can change while the node runs. `None` leaves a key as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigUpdate {
    /// Outbound slot limit.
    pub max_outbound: Option<u32>,
    /// Block-relay-only slot limit.
    pub max_block_relay_only: Option<u32>,
    /// Inbound slot limit.
    pub max_inbound: Option<u32>,
    /// Total slot limit.
    pub max_connections: Option<u32>,
    /// Global upload limit, bytes/s.
    pub max_upload_rate: Option<u64>,
    /// Global download limit, bytes/s.
    pub max_download_rate: Option<u64>,
    /// Per-connection upload limit, bytes/s.
    pub peer_max_upload_rate: Option<u64>,
    /// Per-connection download limit, bytes/s.
    pub peer_max_download_rate: Option<u64>,
    /// Ping interval.
    pub ping_interval: Option<Duration>,
    /// Ping timeout.
    pub ping_timeout: Option<Duration>,
    /// Handshake timeout.
    pub handshake_timeout: Option<Duration>,
    /// Ban threshold.
    pub ban_threshold: Option<u32>,
    /// Automatic ban duration.
    pub ban_duration: Option<Duration>,
}

impl ConfigUpdate {
    /// Applies the update to `config`, refusing values that make no sense.
    pub fn apply(&self, config: &mut NodeConfig) -> Result<(), String> {
        let positive = |name: &str, d: Option<Duration>| match d {
            Some(d) if d.is_zero() => Err(format!("{name} must be above zero")),
            _ => Ok(()),
        };
        positive("ping-interval", self.ping_interval)?;
        positive("ping-timeout", self.ping_timeout)?;
        positive("handshake-timeout", self.handshake_timeout)?;
        positive("ban-duration", self.ban_duration)?;
        if self.ban_threshold == Some(0) {
            return Err("ban-threshold must be above zero".into());
        }
        let set = |slot: &mut u32, v: Option<u32>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut config.slots.outbound, self.max_outbound);
        set(&mut config.slots.block_relay, self.max_block_relay_only);
        set(&mut config.slots.inbound, self.max_inbound);
        set(&mut config.slots.total, self.max_connections);
        set(&mut config.ban_threshold, self.ban_threshold);
        let set64 = |slot: &mut u64, v: Option<u64>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set64(&mut config.max_upload_rate, self.max_upload_rate);
        set64(&mut config.max_download_rate, self.max_download_rate);
        set64(&mut config.peer_max_upload_rate, self.peer_max_upload_rate);
        set64(
            &mut config.peer_max_download_rate,
            self.peer_max_download_rate,
        );
        let setd = |slot: &mut Duration, v: Option<Duration>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        setd(&mut config.ping_interval, self.ping_interval);
        setd(&mut config.ping_timeout, self.ping_timeout);
        setd(&mut config.handshake_timeout, self.handshake_timeout);
        setd(&mut config.ban_duration, self.ban_duration);
        Ok(())
    }
}

impl NodeConfig {
    /// Defaults for `network`, with state kept in `datadir`.
    pub fn new(network: NetworkId, datadir: PathBuf) -> NodeConfig {
        let profile = network.profile();
        NodeConfig {
            network,
            datadir,
            listen: Vec::new(),
            connect: Vec::new(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            min_protocol_version: DEFAULT_MIN_PROTOCOL_VERSION,
            services: profile.default_services,
            required_services: profile.default_required_services,
            banned_user_agents: Vec::new(),
            user_agent: user_agent(),
            relay: true,
            max_block_message_size: profile.limits.bulk,
            send_queue_capacity: SEND_QUEUE_CAPACITY,
            addnode: Vec::new(),
            slots: SlotLimits::default(),
            feeler_interval: Some(DEFAULT_FEELER_INTERVAL),
            extra_block_relay_interval: Some(DEFAULT_EXTRA_BLOCK_RELAY_INTERVAL),
            max_upload_rate: 0,
            max_download_rate: 0,
            upload_burst: 0,
            download_burst: 0,
            peer_max_upload_rate: 0,
            peer_max_download_rate: 0,
            peer_burst: 0,
            ban_threshold: DEFAULT_BAN_THRESHOLD,
            ban_duration: DEFAULT_BAN_DURATION,
            ban_local_peers: false,
            restart: RestartPolicy::default(),
            dns_servers: Vec::new(),
            dns_seeds: profile.dns_seeds.iter().map(|s| s.to_string()).collect(),
            external_addrs: Vec::new(),
            distinct_local_groups: profile.is_regtest(),
            addrbook_save_interval: DEFAULT_ADDRBOOK_SAVE_INTERVAL,
            stun_servers: profile.stun_servers.iter().map(|s| s.to_string()).collect(),
            stun_timeout: DEFAULT_STUN_TIMEOUT,
            stun_interval: DEFAULT_STUN_INTERVAL,
            natpmp: true,
            upnp: false,
            fetch_blocks: true,
            compact_blocks: true,
            keep_blocks: 16,
            header_hints: Vec::new(),
            asmap: None,
            tx_pool_max_count: 10_000,
            tx_pool_max_bytes: 32 * 1024 * 1024,
            tx_pool_max_age: Duration::from_secs(3600),
            trickle: true,
            tx_relay: TxRelay::Vouched,
            sync_stall_timeout: Duration::from_secs(20),
            max_tip_age: DEFAULT_MAX_TIP_AGE,
            minimum_chain_work: None,
            whitelist: Vec::new(),
            v2transport: true,
            proxy: None,
            onion_proxy: None,
            proxy_randomize: true,
            onlynet: Vec::new(),
            overlay_peers: Vec::new(),
            tor_control: None,
            tor_password: None,
            tor_null_auth: false,
            listen_onion: true,
            fleet: None,
            overlay: OverlayConfig::new(profile.is_regtest()),
        }
    }

    /// The proxy onion peers are reached through: `--onion`, else `--proxy`.
    pub fn onion_route(&self) -> Option<&ProxyConfig> {
        self.onion_proxy.as_ref().or(self.proxy.as_ref())
    }

    /// Whether outbound connections may go to `network`: it is allowed by `--onlynet` and
    /// has a route (onion: a proxy; I2P: never, meshd opens no SAM session; CJDNS: only when
    /// `--onlynet cjdns` says the host routes it, as Core's `-cjdnsreachable`).
    pub fn reachable(&self, network: Network) -> bool {
        let allowed = self.onlynet.is_empty() || self.onlynet.contains(&network);
        allowed
            && match network {
                Network::Ipv4 | Network::Ipv6 => true,
                Network::Onion => self.onion_route().is_some(),
                Network::I2p => false,
                Network::Cjdns => self.onlynet.contains(&Network::Cjdns),
            }
    }

    /// Whether the node may send packets of its own to the Internet outside a proxy (DNS
    /// lookups, STUN): not behind `--proxy`, and only when `--onlynet` allows IPv4 or IPv6.
    /// An onion-only node talks to nothing but its proxy.
    pub fn direct_ip(&self) -> bool {
        self.proxy.is_none()
            && (self.onlynet.is_empty()
                || self.onlynet.contains(&Network::Ipv4)
                || self.onlynet.contains(&Network::Ipv6))
    }

    /// Every network [`NodeConfig::reachable`] says yes to.
    pub fn reachable_networks(&self) -> Vec<Network> {
        Network::ALL
            .into_iter()
            .filter(|n| self.reachable(*n))
            .collect()
    }

    /// The name of a configured onion or I2P peer, by its internal address.
    pub fn overlay_peer(&self, addr: SocketAddr) -> Option<OverlayAddr> {
        self.overlay_peers
            .iter()
            .copied()
            .find(|o| o.internal_ip() == addr.ip())
    }

    /// Whether this node speaks BIP324 v2: asked for, and on a BTC network.
    pub fn v2_enabled(&self) -> bool {
        self.v2transport && self.network.profile().chain == crate::network::Chain::Btc
    }

    /// The network profile with the configured limits applied.
    pub fn profile(&self) -> Profile {
        let mut p = self.network.profile();
        if p.chain == crate::network::Chain::Bsv {
            p.limits.bulk = self.max_block_message_size.max(p.limits.general);
        }
        p
    }

    /// The handshake policy derived from this configuration.
    pub fn handshake_policy(&self) -> HandshakePolicy {
        HandshakePolicy {
            protocol_version: self.network.profile().protocol_version,
            min_protocol_version: self.min_protocol_version,
            user_agent: self.user_agent.clone(),
            services: if self.v2_enabled() {
                self.services | ServiceFlags::P2P_V2
            } else {
                self.services
            },
            required_services: self.required_services,
            banned_user_agents: self.banned_user_agents.clone(),
            timeout: self.handshake_timeout,
            relay: self.relay,
            start_height: 0,
            overlay: None,
        }
    }
}

/// Which pooled transactions meshd announces to its peers (`--tx-relay`).
///
/// meshd checks no scripts and holds no UTXO set, so a transaction that passes its
/// context-free checks may still be invalid (an output above its inputs, a bad signature);
/// a validating peer that gets one announced and fetches it counts that against us (Core
/// discourages the sender of an invalid transaction). Relaying only what a validating node
/// vouched for keeps meshd from ever being that sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TxRelay {
    /// Only transactions an outbound full-relay peer sent or announced (it chose to relay
    /// them: its mempool accepted them), those a `relay`-whitelisted peer sent, and those
    /// submitted to this node.
    #[default]
    Vouched,
    /// Every transaction that passes the context-free checks.
    All,
    /// None: transactions are pooled, published and served on request, never announced.
    None,
}

impl TxRelay {
    /// The option's value.
    pub fn as_str(self) -> &'static str {
        match self {
            TxRelay::Vouched => "vouched",
            TxRelay::All => "all",
            TxRelay::None => "none",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_is_on_by_default_on_btc_announced_as_p2p_v2_and_never_on_bsv() {
        let dir = PathBuf::from("/nonexistent");
        let mut btc = NodeConfig::new(NetworkId::Regtest, dir.clone());
        assert!(btc.v2_enabled());
        assert!(btc.handshake_policy().services.has(ServiceFlags::P2P_V2));
        btc.v2transport = false;
        assert!(!btc.v2_enabled());
        assert!(!btc.handshake_policy().services.has(ServiceFlags::P2P_V2));
        let bsv = NodeConfig::new(NetworkId::BsvRegtest, dir);
        assert!(bsv.v2transport && !bsv.v2_enabled());
        assert!(!bsv.handshake_policy().services.has(ServiceFlags::P2P_V2));
    }
}
