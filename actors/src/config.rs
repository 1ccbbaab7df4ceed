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
use crate::peer::HandshakePolicy;

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
        }
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
            services: self.services,
            required_services: self.required_services,
            banned_user_agents: self.banned_user_agents.clone(),
            timeout: self.handshake_timeout,
            relay: self.relay,
            start_height: 0,
        }
    }
}
