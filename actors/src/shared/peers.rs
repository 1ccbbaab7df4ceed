//! The peer table: one row per live connection, shared by the Manager (which adds and removes
//! rows) and each Connection actor (which keeps its own row current). Readers (the admin API,
//! an embedding program) take snapshots without asking any actor.

use crate::shared::overlay::{Network, OverlayAddr};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use serde::Serialize;

use crate::peer::Direction;

/// A peer's id, unique for the life of the node process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PeerId(pub u64);

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// TCP connect in progress.
    Connecting,
    /// version/verack in progress.
    Handshaking,
    /// Handshake complete.
    Connected,
}

impl PeerState {
    /// Lowercase name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Connecting => "connecting",
            PeerState::Handshaking => "handshaking",
            PeerState::Connected => "connected",
        }
    }
}

/// A snapshot of one peer.
#[derive(Debug, Clone, Serialize)]
pub struct PeerInfo {
    /// Id.
    pub id: PeerId,
    /// Remote address.
    pub addr: SocketAddr,
    /// Local address of the socket, once connected.
    pub local_addr: Option<SocketAddr>,
    /// Who dialled.
    pub direction: Direction,
    /// A manual peer (`--connect` or a one-try dial): exempt from the services check.
    pub manual: bool,
    /// How the connection came about, spelled as Core's getpeerinfo: `inbound`, `manual`,
    /// `outbound-full-relay`, `block-relay-only`, `feeler` or `addr-fetch`.
    pub connection_type: &'static str,
    /// Whitelist permissions (`noban`, `relay`, `download`, `addr`, `bloomfilter`).
    pub permissions: Vec<&'static str>,
    /// Lifecycle state.
    pub state: PeerState,
    /// Services announced (raw bits).
    pub services: u64,
    /// Protocol version announced.
    pub version: u32,
    /// User agent announced.
    pub user_agent: String,
    /// Height announced in its version.
    pub start_height: i32,
    /// It asked for transactions in its `version` (`relay`, BIP37's fRelay).
    pub relay: bool,
    /// Highest header height we know the peer has (its version, then its headers).
    pub synced_height: u32,
    /// When the connection started (TCP established or accepted).
    pub connected_since: SystemTime,
    /// Bytes sent, frame headers included.
    pub bytes_sent: u64,
    /// Bytes received, frame headers included.
    pub bytes_received: u64,
    /// Bytes sent per command.
    pub bytes_sent_per_command: CommandBytes,
    /// Bytes received per command.
    pub bytes_received_per_command: CommandBytes,
    /// When we last sent it something.
    pub last_send: Option<SystemTime>,
    /// When it last sent us something.
    pub last_receive: Option<SystemTime>,
    /// Last ping round-trip time.
    pub ping_last: Option<Duration>,
    /// Lowest ping round-trip time.
    pub ping_min: Option<Duration>,
    /// Pongs received that matched our ping.
    pub pongs: u64,
    /// Ping in flight for this long, if any.
    pub ping_wait: Option<Duration>,
    /// Misbehaviour score.
    pub misbehavior: u32,
    /// `v1` or `v2` (BIP324).
    pub transport: &'static str,
    /// BIP324 session id in hex (empty for v1), as Core's getpeerinfo shows it.
    pub session_id: String,
    /// It sent `sendaddrv2` (BIP155): onion, I2P and CJDNS addresses can be relayed to it.
    pub wants_addrv2: bool,
    /// An inbound peer that came through our onion service.
    pub inbound_onion: bool,
    /// The AS that announces its address, under `--asmap` (Core's getpeerinfo `mapped_as`).
    pub mapped_as: Option<u32>,
    /// The name it was reached by, where it has no address of ours (an addr-fetch seed asked
    /// through the proxy, `NAME:PORT`).
    pub name: Option<String>,
    /// The onion, I2P or CJDNS address `addr` stands for (see
    /// [`crate::shared::overlay`]).
    pub overlay: Option<OverlayAddr>,
    /// When the connection started (monotonic; for uptime and eviction).
    #[serde(skip)]
    pub connected_at: Instant,
    /// When it last sent a block.
    #[serde(skip)]
    pub last_block_at: Option<Instant>,
    /// We asked it to announce blocks with `cmpctblock` (BIP152 high-bandwidth; Core's
    /// getpeerinfo `bip152_hb_to`).
    pub bip152_hb_to: bool,
    /// It asked us to (Core's `bip152_hb_from`).
    pub bip152_hb_from: bool,
    /// Blocks asked of it and not yet delivered (kept by Sync; Core's `vBlocksInFlight`).
    #[serde(skip)]
    pub blocks_in_flight: usize,
    /// When it last sent a transaction.
    #[serde(skip)]
    pub last_tx_at: Option<Instant>,
    /// Its libp2p overlay's peer id, when it told us (`overlayaddr`).
    pub overlay_peer_id: Option<String>,
}

impl PeerInfo {
    /// The address as operators know it: the name it was reached by, the full onion or I2P
    /// name, else `addr`.
    pub fn address(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        crate::shared::overlay::display_addr(self.addr, self.overlay.as_ref())
    }

    /// The network the peer is on.
    pub fn network(&self) -> Network {
        if self.inbound_onion {
            return Network::Onion;
        }
        self.overlay
            .map_or_else(|| Network::of_ip(self.addr.ip()), |o| o.network())
    }

    /// A fresh row for a connection that is just starting.
    pub fn new(id: PeerId, addr: SocketAddr, direction: Direction, manual: bool) -> PeerInfo {
        PeerInfo {
            id,
            addr,
            local_addr: None,
            direction,
            manual,
            connection_type: match (direction, manual) {
                (Direction::Inbound, _) => "inbound",
                (Direction::Outbound, true) => "manual",
                (Direction::Outbound, false) => "automatic",
            },
            permissions: Vec::new(),
            state: PeerState::Connecting,
            services: 0,
            version: 0,
            user_agent: String::new(),
            start_height: 0,
            relay: true,
            synced_height: 0,
            connected_since: SystemTime::now(),
            bytes_sent: 0,
            bytes_received: 0,
            bytes_sent_per_command: CommandBytes::default(),
            bytes_received_per_command: CommandBytes::default(),
            last_send: None,
            last_receive: None,
            ping_last: None,
            ping_min: None,
            pongs: 0,
            ping_wait: None,
            misbehavior: 0,
            mapped_as: None,
            name: None,
            transport: "v1",
            wants_addrv2: false,
            inbound_onion: false,
            overlay: None,
            session_id: String::new(),
            connected_at: Instant::now(),
            last_block_at: None,
            bip152_hb_to: false,
            bip152_hb_from: false,
            blocks_in_flight: 0,
            last_tx_at: None,
            overlay_peer_id: None,
        }
    }
}

/// Bytes per message type, in command order. A sorted vector rather than a map: a peer uses
/// a dozen commands, and a `BTreeMap`'s first node alone takes 280 bytes, four of them per
/// connection (#29). Serialized as a JSON object, as Core's `bytessent_per_msg`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandBytes(Vec<(&'static str, u64)>);

impl CommandBytes {
    /// Adds `bytes` to `command`'s count.
    pub fn add(&mut self, command: &'static str, bytes: u64) {
        match self.0.binary_search_by(|(c, _)| c.cmp(&command)) {
            Ok(i) => self.0[i].1 += bytes,
            Err(i) => self.0.insert(i, (command, bytes)),
        }
    }

    /// `command`'s count, if it was ever counted.
    pub fn get(&self, command: &str) -> Option<u64> {
        self.0
            .binary_search_by(|(c, _)| (*c).cmp(command))
            .ok()
            .map(|i| self.0[i].1)
    }

    /// Every command counted, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.0.iter().copied()
    }
}

impl Serialize for CommandBytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(c, n)| (*c, *n)))
    }
}

/// The shared table of live peers.
#[derive(Debug, Clone, Default)]
pub struct PeerTable {
    /// Boxed rows: a shard keeps up to twice its length in slots, so a 500-byte row inline
    /// would cost about 1 KiB per connection (#29).
    rows: Arc<DashMap<PeerId, Box<PeerInfo>>>,
}

impl PeerTable {
    /// Inserts or replaces a row.
    pub fn insert(&self, info: PeerInfo) {
        self.rows.insert(info.id, Box::new(info));
    }

    /// Removes a row.
    pub fn remove(&self, id: PeerId) -> Option<PeerInfo> {
        self.rows.remove(&id).map(|(_, v)| *v)
    }

    /// Applies `f` to a row, if present.
    pub fn update(&self, id: PeerId, f: impl FnOnce(&mut PeerInfo)) {
        if let Some(mut row) = self.rows.get_mut(&id) {
            f(&mut row);
        }
    }

    /// One row.
    pub fn get(&self, id: PeerId) -> Option<PeerInfo> {
        self.rows.get(&id).map(|r| PeerInfo::clone(&r))
    }

    /// All rows, ordered by id.
    pub fn snapshot(&self) -> Vec<PeerInfo> {
        let mut v: Vec<PeerInfo> = self.rows.iter().map(|r| PeerInfo::clone(&r)).collect();
        v.sort_by_key(|p| p.id);
        v
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_bytes_add_up_in_command_order_and_serialize_as_an_object() {
        let mut c = CommandBytes::default();
        for (cmd, n) in [("version", 126), ("ping", 32), ("verack", 24), ("ping", 32)] {
            c.add(cmd, n);
        }
        assert_eq!(
            c.iter().collect::<Vec<_>>(),
            vec![("ping", 64), ("verack", 24), ("version", 126)]
        );
        assert_eq!((c.get("ping"), c.get("pong")), (Some(64), None));
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"ping": 64, "verack": 24, "version": 126})
        );
    }
}
