//! The Manager actor: supervisor of every Connection, owner of the peer set, slots, bans and
//! outbound restarts, and the one publisher of lifecycle events.
//!
//! - **Slots.** A slot is reserved ([`crate::shared::slots::SlotPool::try_reserve`]) before a Connection is
//!   spawned; the permit lives in the Connection and is released exactly once. When the
//!   inbound slots are full a new inbound peer may take the place of one chosen by
//!   [`select_for_eviction`]; if nobody is evictable the newcomer is refused.
//! - **Outbound upkeep.** Every [`UPKEEP_INTERVAL`] the Manager dials the persistent
//!   (`--connect`) peers that are not connected, then `--addnode` candidates, then address
//!   book entries while outbound slots are free (Core's ThreadOpenConnections), skipping
//!   banned and given-up addresses. Slots are filled on this tick only: an `addr` message or
//!   a DNS answer adds to the book and nothing more, and a selection draws buckets
//!   ([`addrbook::MAX_SELECT_TRIES`]) rather than scanning the book.
//! - **Restarts.** When an outbound connection ends, the [`RestartTracker`] decides: dial
//!   again after a jittered exponential delay, or give up until the window clears. Inbound
//!   connections are never restarted. One-shot dials (API `onetry`) are not restarted either.
//! - **Bans.** Manual bans (library API) and automatic ones (a Connection reports its
//!   misbehaviour score crossed the threshold) go in the [`BanList`], which is persisted
//!   atomically after each change; connected peers inside a new ban are disconnected.
//! - **Live config.** A new configuration is applied to the shared state by the node, then
//!   the Manager enforces it: excess inbound peers are disconnected in eviction order, excess
//!   outbound peers newest first.
//!
//! The Connection hands back its final state (with the typed [`DisconnectReason`]) in the
//! termination event; ractor's default hook would stop the Manager when a child exits, so it
//! is overridden. Supervision events can overtake a child's last message, so lifecycle
//! notes from a Connection that is already gone are ignored rather than published late.

pub mod addr_fetch;
pub mod addrbook;
pub mod eviction;
/// The cost table lives in the `peer` leaf (the Connection charges by it); kept here too.
pub use crate::peer::misbehavior;
pub mod restart;

use std::collections::{HashMap, HashSet};

use rand::seq::SliceRandom;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash;
use ipnet::IpNet;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::connection::{Connection, ConnectionArgs, ConnectionState, Transport};
use crate::constants::SHUTDOWN_PEER_TIMEOUT;
use crate::context::{unix_now, NodeContext};
use crate::events::NodeEvent;
use crate::manager::addrbook::{AddrBook, AddrBookFile, AddrBookFileV1};
use crate::manager::eviction::{
    extra_block_relay_to_evict, select_for_eviction, BlockRelayPeer, EvictionCandidate,
};
use crate::manager::restart::{RestartDecision, RestartTracker};
use crate::msg::{ConnectionMsg, ManagerMsg, OutboundKind, SyncMsg};
use crate::peer::RollingFilter;
use crate::shared::addr::{netgroup_as, GossipAddr};
use crate::shared::bans::{BanEntry, BanList, BanReason};
use crate::shared::overlay::OverlayAddr;
use crate::shared::peers::{PeerId, PeerInfo};
use crate::shared::slots::{SlotKind, SlotPermit};
use crate::shared::whitelist::Permissions;

const NOBAN: Permissions = Permissions::NOBAN;
use crate::peer::{Direction, DisconnectReason};
use crate::persist;

/// How often the Manager tops up outbound connections and sweeps expired bans.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How often the extra block-relay-only peers are looked at (Core's
/// `EXTRA_PEER_CHECK_INTERVAL`).
pub const EXTRA_PEER_CHECK_INTERVAL: Duration = Duration::from_secs(45);

/// Least time an extra peer is kept, so that it can send us its headers (Core's
/// `MINIMUM_CONNECT_TIME`).
pub const MINIMUM_CONNECT_TIME: Duration = Duration::from_secs(30);

/// Time allowed for an evicted peer to stop and free its slot before the newcomer is refused.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// File kind and format version of the address book.
const ADDRBOOK_KIND: [u8; 4] = *b"ADDR";
/// Version 2 added overlay addresses (onion, I2P, CJDNS) to entries; version 1 files are
/// read and rewritten as version 2.
const ADDRBOOK_VERSION: u16 = 2;
/// anchors.dat: the block-relay-only peers of the last run, dialled first at the next start
/// (Core's anchors, against an attacker who restarts us into a fresh set of peers).
pub const ANCHORS_FILE: &str = "anchors.dat";
const ANCHORS_KIND: [u8; 4] = *b"ANCH";
const ANCHORS_VERSION: u16 = 1;
/// Anchors kept (Core's `MAX_BLOCK_RELAY_ONLY_ANCHORS`).
pub const MAX_BLOCK_RELAY_ONLY_ANCHORS: usize = 2;

/// How long a getaddr answer is reused (Core: 21–27 h, so repeated getaddrs cannot map
/// our book).
const GETADDR_CACHE: Duration = Duration::from_secs(24 * 3600);

/// An answer to an operator's ban or unban, sent once bans.dat holds it.
type BanAck = Box<dyn FnOnce() + Send + Sync>;

/// getaddr caches kept at most: one per network and listener (a handful), bounded in case
/// of many listen addresses.
const MAX_GETADDR_CACHES: usize = 64;

/// How often hopeless address-book entries are dropped.
const ADDRBOOK_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

/// Peers a fresh address is relayed to (Core: 2).
const ADDR_RELAY_FANOUT: usize = 2;

/// Addresses remembered per peer as known to it (Core's rolling filter holds 5000).
///
/// # Security
/// A rolling filter of fixed size (about 15 KB), dropped with the peer.
const ADDR_KNOWN_CAP: usize = 5000;
/// False-positive rate of that filter (Core: 0.001): a false positive means one address not
/// relayed to that peer.
const ADDR_KNOWN_FP_RATE: f64 = 0.001;

/// Gossiped addresses older than this are not relayed (Core: 10 minutes).
const ADDR_RELAY_MAX_AGE: u64 = 600;

/// File kind and format version of the ban list.
const BANS_KIND: [u8; 4] = *b"BANS";
const BANS_VERSION: u16 = 1;

/// The Manager actor.
pub struct Manager;

struct Child {
    id: PeerId,
    addr: SocketAddr,
    direction: Direction,
    kind: Option<OutboundKind>,
    /// The onion, I2P or CJDNS name `addr` stands for.
    overlay: Option<OverlayAddr>,
    actor: ActorRef<ConnectionMsg>,
    /// Start height, relay flag and protocol version from its version, once the handshake
    /// completed (and Sync was told of the peer).
    handshake: Option<(i32, bool, u32, bool)>,
}

impl Child {
    /// Not yet stopped (a stopped child stays listed until its termination event arrives).
    fn is_live(&self) -> bool {
        !matches!(
            self.actor.get_status(),
            ractor::ActorStatus::Stopped | ractor::ActorStatus::Stopping
        )
    }
}

/// The Manager's state.
pub struct ManagerState {
    ctx: Arc<NodeContext>,
    /// The ban list changed since bans.dat was last written.
    bans_dirty: bool,
    /// The bans.dat write in flight, if any; a failed one hands its answers back.
    bans_writing: Option<tokio::task::JoinHandle<Result<(), Vec<BanAck>>>>,
    /// Answers to send once the next bans.dat write is done (bounded by the API's callers:
    /// each waits for its answer).
    bans_acks: Vec<BanAck>,
    children: HashMap<ActorId, Child>,
    by_peer: HashMap<PeerId, ActorId>,
    targets: HashMap<SocketAddr, OutboundKind>,
    scheduled: HashSet<SocketAddr>,
    restarts: RestartTracker,
    bans: BanList,
    book: AddrBook,
    /// getaddr answers, one per network and listener (Core's `m_addr_response_caches`): an
    /// onion peer and a clearnet peer never get the same sample, so the two identities
    /// cannot be matched by it.
    getaddr_cache:
        HashMap<(crate::shared::overlay::Network, Option<SocketAddr>), (Vec<GossipAddr>, Instant)>,
    last_cleanup: Instant,
    /// Addresses each peer is known to have (sent by it or to it), so a relay never sends
    /// an address to a peer twice; bounded like Core's rolling filter.
    addr_known: HashMap<PeerId, RollingFilter>,
    /// Addresses whose v2 attempt failed as a v1-only peer's does: dialled in v1 from then on.
    v1_only: HashSet<SocketAddr>,
    /// The addr-fetch in flight (one at a time), and the seeds waiting for their turn.
    addr_fetch: Option<tokio::task::JoinHandle<()>>,
    addr_fetch_queue: std::collections::VecDeque<String>,
    /// Per seed: not asked again before this, and the wait after its next failure.
    addr_fetch_wait: HashMap<String, (Instant, Duration)>,
    /// The seed being fetched from.
    addr_fetch_current: Option<String>,
    /// When the next feeler is due.
    next_feeler: Option<Instant>,
    /// When the next extra block-relay-only peer is due (see `maybe_extra_block_relay`).
    next_extra_block_relay: Option<Instant>,
    /// When the extra block-relay-only peers were last looked at.
    last_extra_peer_check: Instant,
    /// Last run's block-relay-only peers, not dialled yet (read from anchors.dat at start).
    anchors: Vec<SocketAddr>,
    /// The block-relay-only peers to write to anchors.dat, taken when the shutdown begins
    /// (its connections are closed before the Manager stops).
    anchors_out: Option<Vec<SocketAddr>>,
}

/// Addresses remembered as v1-only.
///
/// # Security
/// Filled by peers that close on our key; when full it is cleared, so the worst a flood of
/// such peers does is cost each remembered address one more v2 attempt.
const MAX_V1_ONLY_ADDRS: usize = 10_000;

fn now_unix() -> u64 {
    unix_now().max(0) as u64
}

impl ManagerState {
    fn outbound_to(&self, addr: SocketAddr) -> bool {
        self.children
            .values()
            .any(|c| c.addr == addr && c.direction == Direction::Outbound)
    }

    /// The onion, I2P or CJDNS name behind an internal address: from the address book, or
    /// from the configured manual peers.
    fn overlay_of(&self, addr: SocketAddr) -> Option<OverlayAddr> {
        self.book
            .get(&addr)
            .and_then(|e| e.overlay)
            .or_else(|| self.ctx.config().overlay_peer(addr))
    }

    async fn spawn(
        &mut self,
        myself: &ActorRef<ManagerMsg>,
        addr: SocketAddr,
        direction: Direction,
        kind: Option<OutboundKind>,
        transport: Transport,
        permit: SlotPermit,
    ) {
        let id = self.ctx.next_peer_id();
        // Core's ConnectionType::MANUAL: `--connect`, `--addnode` and one-try peers alike.
        let manual = matches!(
            kind,
            Some(OutboundKind::Persistent | OutboundKind::Candidate | OutboundKind::OneTry)
        );
        let overlay = match direction {
            Direction::Outbound => self.overlay_of(addr),
            Direction::Inbound => None,
        };
        let mut info = PeerInfo::new(id, addr, direction, manual);
        info.overlay = overlay;
        // Tor's peers all arrive from loopback: marked so operators (and the API's
        // `network`) tell them from local ones.
        info.inbound_onion = matches!(transport, Transport::Accepted { onion: true, .. });
        if !info.inbound_onion && overlay.is_none() {
            info.mapped_as = self
                .ctx
                .config()
                .asmap
                .as_ref()
                .and_then(|m| crate::shared::addr::mapped_as(m, addr.ip()));
        }
        // Spelled as Core's getpeerinfo `connection_type`.
        info.connection_type = match kind {
            None => "inbound",
            Some(OutboundKind::Persistent | OutboundKind::Candidate | OutboundKind::OneTry) => {
                "manual"
            }
            Some(OutboundKind::Automatic) => "outbound-full-relay",
            Some(OutboundKind::BlockRelay) => "block-relay-only",
            Some(OutboundKind::Feeler) => "feeler",
        };
        info.permissions = self.ctx.permissions_of(addr.ip()).names();
        self.ctx.peers.insert(info);
        // Core: v2 outbound to peers known to announce NODE_P2P_V2 and to manual peers
        // (--connect, --addnode, onetry), never to one that failed v2 like a v1-only peer.
        let v2 = self.ctx.config().v2_enabled()
            && match direction {
                Direction::Inbound => true,
                Direction::Outbound => {
                    !self.v1_only.contains(&addr)
                        && (!matches!(
                            kind,
                            Some(
                                OutboundKind::Automatic
                                    | OutboundKind::BlockRelay
                                    | OutboundKind::Feeler
                            )
                        ) || self.book.get(&addr).is_some_and(|e| {
                            e.services & bitcoin::p2p::ServiceFlags::P2P_V2.to_u64() != 0
                        }))
                }
            };
        let args = ConnectionArgs {
            id,
            addr,
            direction,
            manual,
            transport,
            permit,
            manager: myself.clone(),
            ctx: self.ctx.clone(),
            v2,
            overlay,
        };
        match Actor::spawn_linked(None, Connection, args, myself.get_cell()).await {
            Ok((actor, _join)) => {
                debug!(peer = %addr, id = %id, %direction, "connection started");
                self.by_peer.insert(id, actor.get_id());
                self.children.insert(
                    actor.get_id(),
                    Child {
                        id,
                        addr,
                        direction,
                        kind,
                        overlay,
                        actor,
                        handshake: None,
                    },
                );
            }
            Err(e) => {
                warn!(peer = %addr, id = %id, error = %e, "could not start a connection actor");
                self.ctx.peers.remove(id);
            }
        }
    }

    /// Dials `addr` if it is allowed and a slot is free. Returns false when out of slots.
    async fn dial(
        &mut self,
        myself: &ActorRef<ManagerMsg>,
        addr: SocketAddr,
        kind: OutboundKind,
    ) -> bool {
        if self.ctx.is_shutting_down() || self.outbound_to(addr) {
            return true;
        }
        if self.ctx.is_banned(addr.ip()) {
            debug!(peer = %addr, "not dialling a banned address");
            return true;
        }
        let slot = match kind {
            OutboundKind::BlockRelay => SlotKind::BlockRelay,
            OutboundKind::Feeler => SlotKind::Feeler,
            OutboundKind::Automatic => SlotKind::Outbound,
            OutboundKind::Persistent | OutboundKind::Candidate | OutboundKind::OneTry => {
                SlotKind::Manual
            }
        };
        let Some(permit) = self.ctx.slots.try_reserve_kind(slot) else {
            return false;
        };
        self.spawn(
            myself,
            addr,
            Direction::Outbound,
            Some(kind),
            Transport::Dial,
            permit,
        )
        .await;
        true
    }

    async fn upkeep(&mut self, myself: &ActorRef<ManagerMsg>) {
        if self.ctx.is_shutting_down() {
            return;
        }
        let now = Instant::now();
        if !self.addr_fetch_queue.is_empty() {
            // A seed that waited for the short-lived slot.
            self.next_addr_fetch(myself);
        }
        let swept = self.bans.sweep(now_unix());
        if !swept.is_empty() {
            self.sync_bans();
        }
        self.write_bans_if_dirty();
        let mut wanted: Vec<(SocketAddr, OutboundKind)> = self
            .targets
            .iter()
            .filter(|(a, _)| !self.scheduled.contains(a) && !self.restarts.is_given_up(a, now))
            .map(|(a, k)| (*a, *k))
            .collect();
        // Persistent peers first, then candidates, each in a stable order.
        wanted.sort_by_key(|(a, k)| (*k != OutboundKind::Persistent, *a));
        for (addr, kind) in wanted {
            if self.outbound_to(addr) {
                continue;
            }
            if !self.dial(myself, addr, kind).await {
                break;
            }
        }
        if self.last_cleanup.elapsed() >= ADDRBOOK_CLEANUP_INTERVAL {
            self.last_cleanup = Instant::now();
            let dropped = self.book.cleanup(now_unix());
            if dropped > 0 {
                debug!(dropped, "dropped hopeless addresses");
                self.publish_book_counts();
            }
        }
        self.fill_from_book(myself).await;
        self.maybe_extra_block_relay(myself).await;
        self.maybe_feeler(myself).await;
        if self.last_extra_peer_check.elapsed() >= EXTRA_PEER_CHECK_INTERVAL {
            self.last_extra_peer_check = Instant::now();
            self.evict_extra_block_relay();
        }
    }

    /// Core's extra block-relay-only peer (ThreadOpenConnections): out of initial sync, with
    /// every full-relay and block-relay-only slot taken, on an exponential timer
    /// (`extra_block_relay_interval`), one more block-relay-only connection from the address
    /// book, long enough to sync headers from someone new: a tip our peers hide from us is
    /// found. [`Self::evict_extra_block_relay`] lets one go again.
    async fn maybe_extra_block_relay(&mut self, myself: &ActorRef<ManagerMsg>) {
        let Some(interval) = self.ctx.config().extra_block_relay_interval else {
            return;
        };
        let synced = self
            .ctx
            .sync_status
            .read()
            .is_ok_and(|s| s.state == crate::msg::SyncState::Synced);
        if !synced {
            return;
        }
        let now = Instant::now();
        let next = *self
            .next_extra_block_relay
            .get_or_insert_with(|| now + poisson_delay(interval));
        if now < next {
            return;
        }
        self.next_extra_block_relay = Some(now + poisson_delay(interval));
        let (used, limits) = (self.ctx.slots.usage(), self.ctx.slots.limits());
        if limits.outbound == 0 || used.outbound < limits.outbound {
            return;
        }
        let (exclude, busy) = self.dial_exclusions();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
        let Some(addr) = self.book.select(now_unix(), &mut rng, &exclude, &busy) else {
            return;
        };
        if self.ctx.is_banned(addr.ip()) || self.ctx.is_discouraged(addr.ip()) {
            return;
        }
        let Some(permit) = self.ctx.slots.try_reserve_extra_block_relay() else {
            return;
        };
        self.book.attempt(&addr, now_unix());
        debug!(peer = %addr, "extra block-relay-only peer");
        metrics::counter!("meshd_extra_block_relay_total").increment(1);
        self.spawn(
            myself,
            addr,
            Direction::Outbound,
            Some(OutboundKind::BlockRelay),
            Transport::Dial,
            permit,
        )
        .await;
    }

    /// Core's EvictExtraOutboundPeers for block-relay-only peers: above the limit, the
    /// youngest goes unless it gave us a block more recently than the second youngest (then
    /// that one goes), and only once it has been connected [`MINIMUM_CONNECT_TIME`] with no
    /// block in flight from it.
    fn evict_extra_block_relay(&self) {
        let (used, limits) = (self.ctx.slots.usage(), self.ctx.slots.limits());
        if used.block_relay <= limits.block_relay {
            return;
        }
        let block_relay: Vec<BlockRelayPeer> = self
            .children
            .values()
            .filter(|c| c.kind == Some(OutboundKind::BlockRelay) && c.is_live())
            .filter_map(|c| self.ctx.peers.get(c.id))
            .map(|p| BlockRelayPeer {
                id: p.id,
                last_block: p.last_block_at,
                connected: p.connected_at,
                blocks_in_flight: p.blocks_in_flight,
            })
            .collect();
        let Some(id) =
            extra_block_relay_to_evict(&block_relay, Instant::now(), MINIMUM_CONNECT_TIME)
        else {
            return;
        };
        if let Some(child) = self.by_peer.get(&id).and_then(|a| self.children.get(a)) {
            debug!(peer = %child.addr, id = %id, "letting an extra block-relay-only peer go");
            let _ = child
                .actor
                .cast(ConnectionMsg::Disconnect(DisconnectReason::ExtraBlockRelay));
        }
    }

    /// Core's feeler (ThreadOpenConnections): on an exponential timer, once the full-relay
    /// and block-relay-only slots are full, settle the tried collisions and connect briefly
    /// to the occupant of one still waiting, or else to an address of the new table, so
    /// that working addresses reach tried and a collision's occupant is tested.
    async fn maybe_feeler(&mut self, myself: &ActorRef<ManagerMsg>) {
        let Some(interval) = self.ctx.config().feeler_interval else {
            return;
        };
        let now = Instant::now();
        let next = *self
            .next_feeler
            .get_or_insert_with(|| now + poisson_delay(interval));
        if now < next {
            return;
        }
        self.next_feeler = Some(now + poisson_delay(interval));
        let (used, limits) = (self.ctx.slots.usage(), self.ctx.slots.limits());
        if limits.outbound == 0
            || used.outbound < limits.outbound
            || used.block_relay < limits.block_relay
        {
            return;
        }
        let unix = now_unix();
        self.book.resolve_collisions(unix);
        let (exclude, busy) = self.dial_exclusions();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
        let pick = self
            .book
            .select_tried_collision(&mut rng)
            .filter(|a| !exclude.contains(a))
            .or_else(|| self.book.select_new(unix, &mut rng, &exclude, &busy));
        let Some(addr) = pick else {
            return;
        };
        if self.ctx.is_banned(addr.ip()) || self.ctx.is_discouraged(addr.ip()) {
            return;
        }
        self.book.attempt(&addr, unix);
        debug!(peer = %addr, "feeler");
        self.dial(myself, addr, OutboundKind::Feeler).await;
    }

    /// What no automatic dial (full-relay, block-relay-only, feeler) may pick: ourselves, the
    /// manual targets and every address we are connected out to; and the network groups of
    /// our automatic outbound peers (one per group, as Core's ThreadOpenConnections).
    fn dial_exclusions(&self) -> (HashSet<SocketAddr>, HashSet<Vec<u8>>) {
        let mut exclude: HashSet<SocketAddr> = self.ctx.own_addrs.iter().copied().collect();
        exclude.extend(self.targets.keys().copied());
        let mut busy = HashSet::new();
        for c in self
            .children
            .values()
            .filter(|c| c.direction == Direction::Outbound)
        {
            exclude.insert(c.addr);
            if matches!(
                c.kind,
                Some(OutboundKind::Automatic | OutboundKind::BlockRelay | OutboundKind::Feeler)
            ) {
                busy.insert(self.book.group(c.addr.ip()));
            }
        }
        (exclude, busy)
    }

    /// Dials address-book entries while slots are free, the full-relay ones first, then the
    /// block-relay-only ones (anchors first): never two automatic outbound peers in one
    /// network group, never ourselves, never an address already connected or configured.
    async fn fill_from_book(&mut self, myself: &ActorRef<ManagerMsg>) {
        self.fill_kind(myself, OutboundKind::Automatic).await;
        self.fill_kind(myself, OutboundKind::BlockRelay).await;
    }

    async fn fill_kind(&mut self, myself: &ActorRef<ManagerMsg>, kind: OutboundKind) {
        let now = now_unix();
        let (mut exclude, mut busy) = self.dial_exclusions();
        if kind != OutboundKind::BlockRelay {
            // Anchors are dialled as block-relay-only, never taken for full relay first.
            exclude.extend(self.anchors.iter().copied());
        }
        // StdRng, not thread_rng: the generator lives across awaits, so it must be Send.
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
        // Bounded: each banned or discouraged pick costs a selection, at most this many a
        // tick (Core's ThreadOpenConnections gives up after 100 tries too).
        for _ in 0..crate::manager::addrbook::MAX_SELECT_TRIES {
            let (used, limits) = (self.ctx.slots.usage(), self.ctx.slots.limits());
            // `--max-outbound 0` makes no automatic outbound connection of either kind.
            let full = match kind {
                OutboundKind::BlockRelay => {
                    used.block_relay >= limits.block_relay || limits.outbound == 0
                }
                _ => used.outbound >= limits.outbound,
            };
            if full || used.total() >= limits.total {
                return;
            }
            // Block-relay-only: last run's anchors first (Core's m_anchors).
            // One peer per network group, anchors too (Core's ThreadOpenConnections).
            let anchor = match kind {
                OutboundKind::BlockRelay => loop {
                    match self.anchors.pop() {
                        Some(a)
                            if exclude.contains(&a) || busy.contains(&self.book.group(a.ip())) =>
                        {
                            continue
                        }
                        other => break other,
                    }
                },
                _ => None,
            };
            let Some(addr) = anchor.or_else(|| self.book.select(now, &mut rng, &exclude, &busy))
            else {
                return;
            };
            exclude.insert(addr);
            // Never dialled: banned, or discouraged (Core's OpenNetworkConnection).
            if self.ctx.is_banned(addr.ip()) || self.ctx.is_discouraged(addr.ip()) {
                continue;
            }
            busy.insert(self.book.group(addr.ip()));
            self.book.attempt(&addr, now);
            if !self.dial(myself, addr, kind).await {
                return;
            }
        }
    }

    fn publish_book_counts(&self) {
        let (new, tried) = self.book.counts();
        self.ctx
            .addrbook_new
            .store(new, std::sync::atomic::Ordering::Relaxed);
        self.ctx
            .addrbook_tried
            .store(tried, std::sync::atomic::Ordering::Relaxed);
        self.ctx
            .addrbook_len
            .store(new + tried, std::sync::atomic::Ordering::Relaxed);
    }

    /// The connected block-relay-only peers, as anchors (Core's GetCurrentBlockRelayOnlyConns).
    fn current_anchors(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self
            .children
            .values()
            .filter(|c| c.kind == Some(OutboundKind::BlockRelay) && c.handshake.is_some())
            .map(|c| c.addr)
            .collect();
        out.sort();
        out.truncate(MAX_BLOCK_RELAY_ONLY_ANCHORS);
        out
    }

    /// Records the connected block-relay-only peers in the shared context (see
    /// `NodeContext::anchors`); not while shutting down, when they are being closed.
    fn remember_anchors(&self) {
        if self.ctx.is_shutting_down() {
            return;
        }
        let anchors = self.current_anchors();
        if let Ok(mut shared) = self.ctx.anchors.lock() {
            *shared = anchors;
        }
    }

    /// Writes anchors.dat: the peers taken when the shutdown began, or those connected now
    /// (a Manager stopped by its supervisor giving up). Core writes it at shutdown only.
    fn save_anchors(&self) {
        let anchors = self
            .anchors_out
            .clone()
            .unwrap_or_else(|| self.current_anchors());
        let path = self.ctx.config().datadir.join(ANCHORS_FILE);
        match persist::save(&path, ANCHORS_KIND, ANCHORS_VERSION, &anchors) {
            Ok(()) => debug!(anchors = anchors.len(), "anchors saved"),
            Err(e) => error!(error = %e, path = %path.display(), "could not save the anchors"),
        }
    }

    fn save_book(&self) {
        let path = self.ctx.config().datadir.join("peers.dat");
        if let Err(e) = persist::save(&path, ADDRBOOK_KIND, ADDRBOOK_VERSION, &self.book.to_file())
        {
            error!(error = %e, path = %path.display(), "could not save the address book");
        }
    }

    fn mark_known(&mut self, id: PeerId, addrs: impl IntoIterator<Item = SocketAddr>) {
        let known = self
            .addr_known
            .entry(id)
            .or_insert_with(|| RollingFilter::new(ADDR_KNOWN_CAP, ADDR_KNOWN_FP_RATE));
        for a in addrs {
            known.insert(&a);
        }
    }

    fn on_addrs(&mut self, id: PeerId, from: SocketAddr, addrs: Vec<GossipAddr>, relayable: bool) {
        let now = now_unix();
        let source = from.ip();
        self.mark_known(id, addrs.iter().map(|a| a.addr));
        let mut fresh = Vec::new();
        for a in &addrs {
            if self.ctx.own_addrs.contains(&a.addr) {
                continue;
            }
            self.book.add_gossip(a, source, now);
            // Never relayed: addresses that are not routable (Core relays only what
            // IsRoutable says), but in a local mesh, where every peer is local.
            let routable = a.overlay.is_some()
                || self.book.accepts_local()
                || crate::shared::addr::is_routable(a.addr.ip());
            if relayable && routable && now.saturating_sub(a.time as u64) <= ADDR_RELAY_MAX_AGE {
                fresh.push(*a);
            }
        }
        self.publish_book_counts();
        if fresh.is_empty() {
            return;
        }
        // Relay each fresh address to a couple of connected peers not known to have it, so
        // it spreads hop by hop; the known-address sets stop it once everyone has it.
        // Each with whether it takes addrv2: onion, I2P and CJDNS addresses go only to those.
        let mut others: Vec<(PeerId, ActorRef<ConnectionMsg>, bool)> = self
            .children
            .values()
            .filter(|c| c.id != id && c.is_live())
            // Block-relay-only peers take no part in address relay (Core's
            // RelayAddrsWithPeer): gossip would reveal them.
            .filter(|c| c.kind != Some(OutboundKind::BlockRelay))
            .filter_map(|c| {
                let p = self.ctx.peers.get(c.id)?;
                (p.state == crate::shared::peers::PeerState::Connected)
                    .then(|| (c.id, c.actor.clone(), p.wants_addrv2))
            })
            .collect();
        let mut rng = rand::thread_rng();
        let mut batches: HashMap<PeerId, (ActorRef<ConnectionMsg>, Vec<GossipAddr>)> =
            HashMap::new();
        for a in fresh {
            others.shuffle(&mut rng);
            let targets: Vec<(PeerId, ActorRef<ConnectionMsg>)> = others
                .iter()
                .filter(|(_, _, addrv2)| *addrv2 || a.overlay.is_none())
                .filter(|(pid, _, _)| {
                    !self
                        .addr_known
                        .get(pid)
                        .is_some_and(|k| k.contains(&a.addr))
                })
                .take(ADDR_RELAY_FANOUT)
                .map(|(pid, actor, _)| (*pid, actor.clone()))
                .collect();
            for (pid, actor) in targets {
                self.mark_known(pid, [a.addr]);
                batches
                    .entry(pid)
                    .or_insert_with(|| (actor, Vec::new()))
                    .1
                    .push(a);
            }
        }
        for (_, (actor, batch)) in batches {
            let _ = actor.cast(ConnectionMsg::SendAddrs(batch));
        }
    }

    fn on_getaddr(&mut self, id: PeerId) {
        let Some(child) = self.by_peer.get(&id).and_then(|a| self.children.get(a)) else {
            return;
        };
        let now = Instant::now();
        let info = self.ctx.peers.get(id);
        let network = info.as_ref().map_or_else(
            || crate::shared::overlay::Network::of_ip(child.addr.ip()),
            |p| p.network(),
        );
        // The listener an inbound peer came in on (Core's addrBind); outbound ones share.
        let bind = match child.direction {
            Direction::Inbound => info.and_then(|p| p.local_addr),
            Direction::Outbound => None,
        };
        let key = (network, bind);
        let sample = match self.getaddr_cache.get(&key) {
            Some((cached, expiry)) if now < *expiry => cached.clone(),
            _ => {
                let fresh: Vec<GossipAddr> = self
                    .book
                    .sample(now_unix(), &mut rand::thread_rng())
                    .iter()
                    .map(GossipAddr::from)
                    .collect();
                // An empty book is not worth caching for a day.
                if !fresh.is_empty() {
                    if self.getaddr_cache.len() >= MAX_GETADDR_CACHES {
                        self.getaddr_cache.retain(|_, (_, expiry)| now < *expiry);
                    }
                    if self.getaddr_cache.len() < MAX_GETADDR_CACHES {
                        self.getaddr_cache
                            .insert(key, (fresh.clone(), now + GETADDR_CACHE));
                    }
                }
                fresh
            }
        };
        let actor = child.actor.clone();
        self.mark_known(id, sample.iter().map(|a| a.addr));
        let _ = actor.cast(ConnectionMsg::SendAddrs(sample));
    }

    async fn admit_inbound(
        &mut self,
        myself: &ActorRef<ManagerMsg>,
        stream: TcpStream,
        addr: SocketAddr,
        onion: bool,
    ) {
        if self.ctx.is_shutting_down() {
            return;
        }
        if self.ctx.refuses(addr.ip()) {
            metrics::counter!("meshd_inbound_refused_total", "reason" => "banned").increment(1);
            return;
        }
        let mut permit = self.ctx.slots.try_reserve(Direction::Inbound);
        let discouraged = self.ctx.is_discouraged(addr.ip());
        if permit.is_none() && discouraged {
            // Core's AcceptConnection: a discouraged address takes a free slot only, never
            // another peer's.
            debug!(peer = %addr, "inbound slots full; a discouraged address is refused");
            metrics::counter!("meshd_inbound_refused_total", "reason" => "discouraged")
                .increment(1);
            return;
        }
        if permit.is_none() {
            if let Some(victim) = self.eviction_victim() {
                self.evict(victim).await;
                permit = self.ctx.slots.try_reserve(Direction::Inbound);
            }
        }
        match permit {
            Some(p) => {
                self.spawn(
                    myself,
                    addr,
                    Direction::Inbound,
                    None,
                    Transport::Accepted { stream, onion },
                    p,
                )
                .await
            }
            None => {
                info!(peer = %addr, "inbound slots full and no peer evictable; refused");
                metrics::counter!("meshd_inbound_refused_total", "reason" => "full").increment(1);
            }
        }
    }

    fn eviction_candidates(&self) -> Vec<EvictionCandidate> {
        self.children
            .values()
            .filter(|c| c.direction == Direction::Inbound && c.is_live())
            .filter_map(|c| self.ctx.peers.get(c.id))
            .map(|p| {
                // Tor's peers all come from loopback: a group and a network of their own.
                let group = if p.inbound_onion {
                    crate::shared::addr::onion_inbound_netgroup()
                } else {
                    // By AS under an asmap (Core's eviction uses the same groups).
                    netgroup_as(p.addr.ip(), self.ctx.config().asmap.as_deref())
                };
                let required = self.ctx.config().required_services.to_u64();
                EvictionCandidate {
                    network: p.network(),
                    is_local: !p.inbound_onion && p.addr.ip().is_loopback(),
                    relay_txs: p.relay,
                    relevant_services: p.services & required == required,
                    id: p.id,
                    connected: p.connected_at,
                    min_ping: p.ping_min,
                    last_block: p.last_block_at,
                    last_tx: p.last_tx_at,
                    keyed_netgroup: self.ctx.keyed_netgroup(&group),
                    netgroup: group,
                    // Manual and whitelisted (noban) peers are never evicted.
                    protected: p.manual || p.permissions.contains(&"noban"),
                    prefer_evict: self.ctx.is_discouraged(p.addr.ip()),
                }
            })
            .collect()
    }

    fn eviction_victim(&self) -> Option<PeerId> {
        select_for_eviction(&self.eviction_candidates())
    }

    /// Disconnects a peer and waits (bounded) until it has stopped and freed its slot.
    async fn close_and_wait(&self, id: PeerId, reason: DisconnectReason) {
        let Some(child) = self.by_peer.get(&id).and_then(|a| self.children.get(a)) else {
            return;
        };
        let actor = child.actor.clone();
        let _ = actor.cast(ConnectionMsg::Disconnect(reason));
        if tokio::time::timeout(EVICTION_WAIT, actor.wait(None))
            .await
            .is_err()
        {
            actor.stop(None);
        }
    }

    async fn evict(&mut self, id: PeerId) {
        let Some(child) = self.by_peer.get(&id).and_then(|a| self.children.get(a)) else {
            return;
        };
        let addr = child.addr;
        info!(peer = %addr, id = %id, "evicting an inbound peer to make room");
        metrics::counter!("meshd_evictions_total").increment(1);
        self.ctx
            .events
            .publish(NodeEvent::PeerEvicted { peer: id, addr });
        self.close_and_wait(id, DisconnectReason::Evicted).await;
    }

    /// Enforces lowered slot limits: excess inbound peers go in eviction order (falling back
    /// to the newest when all are protected), excess outbound peers newest first.
    async fn enforce_limits(&mut self) {
        loop {
            if self.ctx.slots.excess(Direction::Inbound) == 0 {
                break;
            }
            let victim = self
                .eviction_victim()
                .or_else(|| self.newest(Direction::Inbound));
            let Some(id) = victim else { break };
            self.close_and_wait(id, DisconnectReason::SlotLimitLowered)
                .await;
        }
        while self.ctx.slots.excess(Direction::Outbound) > 0 {
            // The kind over its own limit goes first; over the total only, full-relay peers
            // are kept over block-relay-only ones.
            let (u, l) = (self.ctx.slots.usage(), self.ctx.slots.limits());
            let block_limit = if l.outbound == 0 { 0 } else { l.block_relay };
            let block_relay =
                u.block_relay > block_limit || (u.outbound <= l.outbound && u.block_relay > 0);
            let Some(id) = self
                .newest_outbound(block_relay)
                .or_else(|| self.newest_outbound(!block_relay))
            else {
                break;
            };
            self.close_and_wait(id, DisconnectReason::SlotLimitLowered)
                .await;
        }
    }

    fn newest(&self, direction: Direction) -> Option<PeerId> {
        self.newest_where(|c| c.direction == direction)
    }

    /// The newest automatic outbound peer: block-relay-only, or full-relay. Manual peers
    /// have slots of their own, which no limit change takes.
    fn newest_outbound(&self, block_relay: bool) -> Option<PeerId> {
        let kind = if block_relay {
            OutboundKind::BlockRelay
        } else {
            OutboundKind::Automatic
        };
        self.newest_where(|c| c.direction == Direction::Outbound && c.kind == Some(kind))
    }

    fn newest_where(&self, pick: impl Fn(&Child) -> bool) -> Option<PeerId> {
        self.children
            .values()
            .filter(|c| pick(c) && c.is_live())
            .filter_map(|c| self.ctx.peers.get(c.id))
            .max_by_key(|p| p.connected_at)
            .map(|p| p.id)
    }

    /// Publishes the ban list to the Listener and marks it for the next write (at most one
    /// a second, [`UPKEEP_INTERVAL`], off the actor's thread).
    fn sync_bans(&mut self) {
        if let Ok(mut shared) = self.ctx.bans.write() {
            *shared = self.bans.clone();
        }
        self.bans_dirty = true;
    }

    /// Writes bans.dat if it changed since the last write: in a blocking task, so a slow
    /// disk never stalls the Manager; one write in flight at a time. The answers waiting on
    /// a write go out once it succeeded; a failed write is retried at the next upkeep with
    /// them.
    fn write_bans_if_dirty(&mut self) {
        use futures_util::FutureExt;
        if let Some(mut t) = self.bans_writing.take() {
            // Polled unconstrained: under an exhausted cooperative budget a finished task's
            // handle still answers Pending, and dropping it then lost a failed write's acks.
            let done = if t.is_finished() {
                tokio::task::unconstrained(&mut t).now_or_never()
            } else {
                None
            };
            match done {
                None => {
                    self.bans_writing = Some(t);
                    return;
                }
                Some(Ok(Err(acks))) => {
                    // Failed: the acks wait for the retry, which writes the list as it is now.
                    self.bans_acks.extend(acks);
                    self.bans_dirty = true;
                }
                Some(_) => {}
            }
        }
        if !self.bans_dirty {
            return;
        }
        self.bans_dirty = false;
        let (path, list) = (self.ctx.bans_path(), self.bans.clone());
        let acks = std::mem::take(&mut self.bans_acks);
        self.bans_writing = Some(tokio::task::spawn_blocking(move || {
            match persist::save(&path, BANS_KIND, BANS_VERSION, &list) {
                Ok(()) => {
                    for ack in acks {
                        ack();
                    }
                    Ok(())
                }
                Err(e) => {
                    error!(error = %e, path = %path.display(), "could not save the ban list; retrying");
                    Err(acks)
                }
            }
        }));
    }

    /// Writes bans.dat now (shutdown), after any write in flight (both use one temp file).
    async fn save_bans_now(&mut self) {
        if let Some(t) = self.bans_writing.take() {
            if let Ok(Err(acks)) = t.await {
                self.bans_acks.extend(acks);
            }
        }
        self.bans_dirty = false;
        if let Err(e) = persist::save(&self.ctx.bans_path(), BANS_KIND, BANS_VERSION, &self.bans) {
            error!(error = %e, path = %self.ctx.bans_path().display(), "could not save the ban list");
        }
        for ack in std::mem::take(&mut self.bans_acks) {
            ack();
        }
    }

    /// Applies a ban; the entry, and whether it changed (then bans.dat will be written).
    fn apply_ban(
        &mut self,
        subnet: IpNet,
        duration: Duration,
        reason: BanReason,
    ) -> (BanEntry, bool) {
        let now = now_unix();
        let secs = duration.as_secs().max(1);
        let (entry, changed) = self.bans.ban(subnet, now, secs, reason.clone());
        if !changed {
            // Another node's advisory for a ban of ours, or nothing new: nothing happened.
            debug!(subnet = %entry.subnet, reason = reason.label(), kept = entry.reason.label(), "ban already in force; unchanged");
            return (entry, false);
        }
        self.sync_bans();
        metrics::counter!("meshd_bans_total", "reason" => reason.label()).increment(1);
        info!(subnet = %entry.subnet, until = entry.until, reason = reason.label(), "banned");
        // The operator's ban is published (and advised) with the expiry the operator asked
        // for, never one another node's advisory gave the entry.
        let until = match reason {
            BanReason::Manual => now.saturating_add(secs),
            _ => entry.until,
        };
        self.ctx.events.publish(NodeEvent::PeerBanned {
            subnet: entry.subnet.to_string(),
            until,
            reason: reason.label().to_string(),
            detail: reason.detail(),
        });
        for child in self.children.values() {
            if subnet.contains(&crate::shared::bans::canonical(child.addr.ip())) {
                let _ = child
                    .actor
                    .cast(ConnectionMsg::Disconnect(DisconnectReason::Banned(
                        entry.subnet.to_string(),
                    )));
            }
        }
        (entry, true)
    }

    fn on_connection_end(
        &mut self,
        myself: &ActorRef<ManagerMsg>,
        actor: ActorId,
        reason: DisconnectReason,
        uptime: Duration,
        was_connected: bool,
        v1_fallback: bool,
    ) {
        let Some(child) = self.children.remove(&actor) else {
            return;
        };
        if child.kind == Some(OutboundKind::BlockRelay) {
            self.remember_anchors();
        }
        self.by_peer.remove(&child.id);
        self.ctx.peers.remove(child.id);
        self.addr_known.remove(&child.id);
        if child.handshake.is_some() {
            if let Some(sync) = self.ctx.sync_ref() {
                let _ = sync.cast(SyncMsg::PeerDown(child.id));
            }
        }
        let event = if was_connected {
            NodeEvent::ConnectionLost {
                peer: child.id,
                addr: child.addr,
                name: child
                    .overlay
                    .map(|o| o.display_with_port(child.addr.port())),
                direction: child.direction,
                reason: reason.to_string(),
                reason_kind: reason.kind().to_string(),
            }
        } else {
            NodeEvent::ConnectionFailed {
                peer: child.id,
                addr: child.addr,
                name: child
                    .overlay
                    .map(|o| o.display_with_port(child.addr.port())),
                reason: reason.to_string(),
                reason_kind: reason.kind().to_string(),
            }
        };
        self.ctx.events.publish(event);
        if v1_fallback && !self.ctx.is_shutting_down() {
            if let Some(kind) = child.kind {
                info!(peer = %child.addr, reason = %reason, "v2 attempt failed before its handshake; reconnecting in v1");
                metrics::counter!("meshd_v2_fallbacks_total").increment(1);
                if self.v1_only.len() >= MAX_V1_ONLY_ADDRS {
                    self.v1_only.clear();
                }
                self.v1_only.insert(child.addr);
                let _ = myself.cast(ManagerMsg::RedialV1 {
                    addr: child.addr,
                    kind,
                });
                return;
            }
        }
        // Manual peers (`--connect`, `--addnode`) are kept for ever, as Core's added nodes:
        // after a ban too (the dial waits while the ban lasts, then goes through).
        let restartable = child.direction == Direction::Outbound
            && matches!(
                child.kind,
                Some(OutboundKind::Persistent) | Some(OutboundKind::Candidate)
            )
            && self.targets.contains_key(&child.addr)
            && !self.ctx.is_shutting_down()
            && !matches!(reason, DisconnectReason::SlotLimitLowered);
        if !restartable {
            return;
        }
        let now = Instant::now();
        let addr = child.addr;
        match self
            .restarts
            .on_exit(addr, now, uptime, rand::random::<f64>())
        {
            RestartDecision::Restart { delay, attempt } => {
                *self.ctx.restart_counts.entry(addr).or_insert(0) += 1;
                info!(peer = %addr, attempt, delay_ms = delay.as_millis() as u64, reason = %reason, "restarting outbound connection");
                self.ctx.events.publish(NodeEvent::PeerRestarted {
                    addr,
                    attempt,
                    delay_ms: delay.as_millis() as u64,
                });
                self.scheduled.insert(addr);
                myself.send_after(delay, move || ManagerMsg::Redial(addr));
            }
            RestartDecision::GiveUp { until } => {
                let wait = until.saturating_duration_since(now);
                warn!(peer = %addr, retry_in_s = wait.as_secs(), "too many restarts; giving up until the window clears");
                metrics::counter!("meshd_connection_giveups_total").increment(1);
                self.ctx.events.publish(NodeEvent::PeerGaveUp {
                    addr,
                    retry_in_secs: wait.as_secs(),
                });
                self.scheduled.insert(addr);
                myself.send_after(wait, move || ManagerMsg::Redial(addr));
            }
        }
    }

    /// The manual targets and their state, in a stable order.
    fn added_nodes(&self) -> Vec<crate::msg::AddedNode> {
        let mut out: Vec<crate::msg::AddedNode> = self
            .targets
            .iter()
            .map(|(addr, kind)| {
                let child = self
                    .children
                    .values()
                    .find(|c| c.addr == *addr && c.direction == Direction::Outbound);
                crate::msg::AddedNode {
                    address: crate::shared::overlay::display_addr(
                        *addr,
                        self.overlay_of(*addr).as_ref(),
                    ),
                    kind: match kind {
                        OutboundKind::Persistent => "connect",
                        _ => "addnode",
                    },
                    connected: child.is_some_and(|c| c.handshake.is_some()),
                    peer: child.map(|c| c.id),
                    retrying: self.scheduled.contains(addr),
                }
            })
            .collect();
        out.sort_by(|a, b| a.address.cmp(&b.address));
        out
    }

    /// Starts the next queued addr-fetch unless one is in flight.
    fn next_addr_fetch(&mut self, myself: &ActorRef<ManagerMsg>) {
        if self.addr_fetch.as_ref().is_some_and(|t| !t.is_finished()) || self.ctx.is_shutting_down()
        {
            return;
        }
        let now = Instant::now();
        let seed = loop {
            let Some(seed) = self.addr_fetch_queue.pop_front() else {
                return;
            };
            // Queued before its wait began (while it was being fetched): skipped.
            if self
                .addr_fetch_wait
                .get(&seed)
                .is_none_or(|(next, _)| now >= *next)
            {
                break seed;
            }
        };
        // Core's addr-fetch takes an outbound grant: ours takes the short-lived slot a
        // feeler would, and waits for the next upkeep when that is busy.
        let Some(permit) = self.ctx.slots.try_reserve_kind(SlotKind::Feeler) else {
            self.addr_fetch_queue.push_front(seed);
            return;
        };
        self.addr_fetch_current = Some(seed.clone());
        let (ctx, me) = (self.ctx.clone(), myself.clone());
        self.addr_fetch = Some(tokio::spawn(async move {
            let _permit = permit;
            let config = ctx.config();
            let nonce: u64 = rand::random();
            let id = ctx.next_peer_id();
            // Registered as any outbound connection's: a seed name that leads back to us is
            // seen as a connection to ourselves on our inbound side.
            ctx.outbound_nonces.insert(nonce, id);
            // Listed while it runs, as Core's getpeerinfo lists `addr-fetch` connections.
            let port = ctx.profile.default_port;
            let mut row = PeerInfo::new(
                id,
                SocketAddr::from(([0, 0, 0, 0], port)),
                Direction::Outbound,
                false,
            );
            row.connection_type = "addr-fetch";
            row.name = Some(format!("{seed}:{port}"));
            ctx.peers.insert(row);
            // Removed however the task ends (aborted with the Manager, too).
            struct Forget<'a>(&'a NodeContext, u64, PeerId);
            impl Drop for Forget<'_> {
                fn drop(&mut self) {
                    self.0.outbound_nonces.remove(&self.1);
                    self.0.peers.remove(self.2);
                }
            }
            let _forget = Forget(&ctx, nonce, id);
            let ours = |n: u64| n != nonce && ctx.outbound_nonces.contains_key(&n);
            let connected = || {
                ctx.peers.update(id, |p| {
                    p.state = crate::shared::peers::PeerState::Handshaking
                })
            };
            let result = run_addr_fetch(&config, &seed, nonce, &ours, &connected).await;
            let _ = me.cast(ManagerMsg::AddrFetched { seed, result });
        }));
    }

    fn publish_lifecycle(&self, id: PeerId, handshaked: bool) {
        // A Connection that is already gone does not get its event published late.
        let Some(child) = self.by_peer.get(&id).and_then(|a| self.children.get(a)) else {
            return;
        };
        let Some(info) = self.ctx.peers.get(id) else {
            return;
        };
        let event = if handshaked {
            NodeEvent::HandshakeComplete {
                peer: id,
                addr: child.addr,
                name: info.overlay.map(|o| o.display_with_port(child.addr.port())),
                direction: child.direction,
                user_agent: info.user_agent,
                version: info.version,
                services: info.services,
                start_height: info.start_height,
                transport: info.transport,
            }
        } else {
            NodeEvent::ConnectionEstablished {
                peer: id,
                addr: child.addr,
                name: info.overlay.map(|o| o.display_with_port(child.addr.port())),
                direction: child.direction,
                transport: info.transport,
            }
        };
        self.ctx.events.publish(event);
    }
}

/// Fetches addresses from `seed` through `config`'s proxy, on the network's port
/// ([`addr_fetch`]'s core over a proxied socket).
async fn run_addr_fetch(
    config: &crate::config::NodeConfig,
    seed: &str,
    nonce: u64,
    is_our_nonce: &(dyn Fn(u64) -> bool + Sync),
    on_connected: &(dyn Fn() + Sync),
) -> Result<Vec<GossipAddr>, addr_fetch::AddrFetchError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = config
        .proxy
        .clone()
        .ok_or(addr_fetch::AddrFetchError::NoProxy)?;
    let profile = config.profile();
    let target =
        crate::connection::proxy::ProxyTarget::Name(seed.to_string(), profile.default_port);
    let work = async {
        let mut stream = crate::connection::proxy::connect(
            &proxy,
            &target,
            config.proxy_randomize,
            config.connect_timeout,
        )
        .await
        .map_err(addr_fetch::AddrFetchError::Proxy)?;
        on_connected();
        let unix_time = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        };
        let (mut fetch, first) = addr_fetch::AddrFetch::start(
            config.handshake_policy(),
            nonce,
            Instant::now(),
            unix_time(),
        );
        let io = |e: std::io::Error| addr_fetch::AddrFetchError::Io(e.to_string());
        for step in first {
            if let addr_fetch::FetchStep::Send(m) = step {
                stream
                    .write_all(&m.encode(profile.magic))
                    .await
                    .map_err(io)?;
            }
        }
        let mut decoder = crate::wire::FrameDecoder::new(profile.magic, profile.limits);
        // Blocks were never asked for: any is skipped unread.
        decoder.set_blocks_expected(0);
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0usize;
        loop {
            let n = stream.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                return Err(addr_fetch::AddrFetchError::Closed);
            }
            total += n;
            if total > addr_fetch::ADDR_FETCH_MAX_BYTES {
                return Err(addr_fetch::AddrFetchError::TooMuch(
                    addr_fetch::ADDR_FETCH_MAX_BYTES,
                ));
            }
            let mut input = &buf[..n];
            while let Some(frame) = decoder.decode(&mut input) {
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) if e.is_fatal() => {
                        return Err(addr_fetch::AddrFetchError::Malformed(e.to_string()))
                    }
                    Err(_) => continue,
                };
                if frame.extent == crate::wire::Extent::Skipped {
                    continue;
                }
                let msg = crate::wire::Message::decode(frame)
                    .map_err(|e| addr_fetch::AddrFetchError::Malformed(e.to_string()))?;
                for step in fetch.on_message(&msg, unix_time(), is_our_nonce)? {
                    match step {
                        addr_fetch::FetchStep::Send(m) => stream
                            .write_all(&m.encode(profile.magic))
                            .await
                            .map_err(io)?,
                        addr_fetch::FetchStep::Done(addrs) => return Ok(addrs),
                    }
                }
            }
        }
    };
    tokio::time::timeout(addr_fetch::ADDR_FETCH_TIMEOUT, work)
        .await
        .map_err(|_| addr_fetch::AddrFetchError::Timeout(addr_fetch::ADDR_FETCH_TIMEOUT))?
}

/// Tells Sync of a peer whose handshake completed (nothing for one still handshaking).
fn peer_up_to_sync(ctx: &NodeContext, child: &Child) {
    if child.kind == Some(OutboundKind::Feeler) {
        // Closed as soon as it handshakes: nothing for Sync.
        return;
    }
    let (Some((start_height, relay, version, wtxid_relay)), Some(sync)) =
        (child.handshake, ctx.sync_ref())
    else {
        return;
    };
    let block_relay_only = child.kind == Some(OutboundKind::BlockRelay);
    let _ = sync.cast(SyncMsg::PeerUp {
        id: child.id,
        addr: child.addr,
        actor: child.actor.clone(),
        start_height,
        // We said relay=false to it: nothing is announced to it either.
        relay: relay && !block_relay_only,
        inbound: child.direction == Direction::Inbound,
        version,
        wtxid_relay,
        block_relay_only,
    });
}

/// Clears what Connections of a previous Manager left behind. A Manager that failed had its
/// Connections killed without their stop hooks: their rows, outbound nonces and Sync's
/// entries for them would otherwise stay for ever (ghost peers). Their slot permits were
/// dropped with their state.
fn forget_orphans(ctx: &NodeContext) {
    let orphans: Vec<PeerId> = ctx.peers.snapshot().iter().map(|p| p.id).collect();
    if orphans.is_empty() {
        return;
    }
    warn!(
        peers = orphans.len(),
        "forgetting the peers of a Manager that did not stop cleanly"
    );
    ctx.outbound_nonces.clear();
    let sync = ctx.sync_ref();
    for id in orphans {
        ctx.peers.remove(id);
        if let Some(sync) = &sync {
            let _ = sync.cast(SyncMsg::PeerDown(id));
        }
    }
}

/// A pseudo source address for a DNS seed: each seed is its own source group, so one seed
/// fills at most its share of the new table.
fn seed_source(seed: &str) -> IpAddr {
    let h = bitcoin::hashes::sha256::Hash::hash(seed.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.as_byte_array()[..16]);
    b[0] = 0xfd; // unique local address range: never a real peer
    IpAddr::from(b)
}

/// A delay drawn from an exponential distribution of mean `mean` (Core's
/// `rand_exp_duration`): a timer an observer cannot predict; capped at ten means.
fn poisson_delay(mean: Duration) -> Duration {
    let u: f64 = rand::random::<f64>().max(1e-12);
    mean.mul_f64(-u.ln()).min(mean * 10)
}

/// Reads anchors.dat and deletes it, as Core does: after a crash the next start does not
/// dial stale anchors again. Only addresses of networks we reach, never banned ones.
fn take_anchors(config: &crate::config::NodeConfig) -> Vec<SocketAddr> {
    let path = config.datadir.join(ANCHORS_FILE);
    let loaded: Vec<SocketAddr> = match persist::load(&path, ANCHORS_KIND, ANCHORS_VERSION) {
        Ok(Some(a)) => a,
        Ok(None) => return Vec::new(),
        Err(e) => {
            warn!(error = %e, path = %path.display(), "anchors.dat unreadable; starting without anchors");
            Vec::new()
        }
    };
    if let Err(e) = std::fs::remove_file(&path) {
        warn!(error = %e, path = %path.display(), "could not remove anchors.dat");
    }
    let mut anchors: Vec<SocketAddr> = loaded
        .into_iter()
        .filter(|a| config.reachable(crate::shared::overlay::Network::of_ip(a.ip())))
        .take(MAX_BLOCK_RELAY_ONLY_ANCHORS)
        .collect();
    if !anchors.is_empty() {
        info!(
            anchors = anchors.len(),
            "block-relay-only anchors from the last run"
        );
    }
    // Popped from the end: the first anchor is tried first.
    anchors.reverse();
    anchors
}

/// Loads the address book; a corrupt file is set aside and the node starts with an empty
/// book and one error line.
pub(crate) fn load_addrbook(
    datadir: &std::path::Path,
    distinct_local_groups: bool,
    asmap: Option<Arc<crate::shared::asmap::Asmap>>,
) -> AddrBook {
    let path = datadir.join("peers.dat");
    let fresh = || AddrBook::new_mapped(rand::random(), distinct_local_groups, asmap.clone());
    let loaded = match persist::load::<AddrBookFile>(&path, ADDRBOOK_KIND, ADDRBOOK_VERSION) {
        Err(persist::PersistError::UnsupportedVersion { found: 1, .. }) => {
            persist::load::<AddrBookFileV1>(&path, ADDRBOOK_KIND, 1).map(|f| f.map(Into::into))
        }
        other => other,
    };
    match loaded {
        Ok(Some(f)) => {
            AddrBook::from_file_mapped(f, distinct_local_groups, asmap.clone(), now_unix())
        }
        Ok(None) => fresh(),
        Err(e) => {
            let aside = persist::set_aside(&path).map(|p| p.display().to_string());
            error!(error = %e, path = %path.display(), set_aside = ?aside, "address book unreadable; starting with an empty one");
            fresh()
        }
    }
}

/// Loads the ban list; a corrupt file is set aside and the node starts with an empty list.
pub(crate) fn load_bans(datadir: &std::path::Path) -> BanList {
    let path = datadir.join("bans.dat");
    match persist::load::<BanList>(&path, BANS_KIND, BANS_VERSION) {
        Ok(Some(b)) => b,
        Ok(None) => BanList::default(),
        Err(e) => {
            let aside = persist::set_aside(&path).map(|p| p.display().to_string());
            error!(error = %e, path = %path.display(), set_aside = ?aside, "ban list unreadable; starting with an empty one");
            BanList::default()
        }
    }
}

impl Actor for Manager {
    type Msg = ManagerMsg;
    type State = ManagerState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: Arc<NodeContext>,
    ) -> Result<ManagerState, ActorProcessingErr> {
        forget_orphans(&ctx);
        let config = ctx.config();
        let mut targets = HashMap::new();
        for a in &config.addnode {
            targets.insert(*a, OutboundKind::Candidate);
        }
        for a in &config.connect {
            targets.insert(*a, OutboundKind::Persistent);
        }
        for a in targets.keys() {
            ctx.add_manual_ip(a.ip());
        }
        let bans = match ctx.bans.read() {
            Ok(b) => b.clone(),
            Err(p) => p.into_inner().clone(),
        };
        Ok(ManagerState {
            // A Manager restarted after a failure may hold bans its predecessor had not
            // written yet: written at the first upkeep.
            bans_dirty: true,
            bans_writing: None,
            bans_acks: Vec::new(),
            restarts: RestartTracker::new(config.restart),
            ctx,
            children: HashMap::new(),
            by_peer: HashMap::new(),
            targets,
            scheduled: HashSet::new(),
            bans,
            book: AddrBook::new([0; 32], false),
            getaddr_cache: HashMap::new(),
            last_cleanup: Instant::now(),
            addr_known: HashMap::new(),
            v1_only: HashSet::new(),
            addr_fetch: None,
            addr_fetch_queue: std::collections::VecDeque::new(),
            addr_fetch_wait: HashMap::new(),
            addr_fetch_current: None,
            next_feeler: None,
            next_extra_block_relay: None,
            last_extra_peer_check: Instant::now(),
            anchors: Vec::new(),
            anchors_out: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        // Make the counters exist (at zero) from the start, so dashboards and alerts see them.
        metrics::counter!("meshd_connection_giveups_total").increment(0);
        for reason in ["manual", "misbehavior"] {
            metrics::counter!("meshd_bans_total", "reason" => reason).increment(0);
        }
        metrics::counter!("meshd_addr_processed_total").increment(0);
        metrics::counter!("meshd_addr_rate_limited_total").increment(0);
        // The book is loaded here, not in pre_start, which runs inside the spawner's await.
        let config = state.ctx.config();
        if let Some(map) = &config.asmap {
            info!(
                version = map.version(),
                "using asmap for IP bucketing, outbound diversity and eviction"
            );
        }
        state.book = load_addrbook(
            &config.datadir,
            config.distinct_local_groups,
            config.asmap.clone(),
        );
        state.anchors = take_anchors(&config);
        if state.anchors.is_empty() {
            // A Manager restarted after a failure: its predecessor's block-relay-only peers.
            let kept = match state.ctx.anchors.lock() {
                Ok(a) => a.clone(),
                Err(p) => p.into_inner().clone(),
            };
            state.anchors = kept.into_iter().rev().collect();
        }
        state.book.set_reachable(config.reachable_networks());
        state.publish_book_counts();
        info!(addresses = state.book.len(), "address book loaded");
        myself.send_interval(UPKEEP_INTERVAL, || ManagerMsg::Upkeep);
        myself.send_interval(config.addrbook_save_interval, || ManagerMsg::SaveAddrBook);
        state.upkeep(&myself).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: ManagerMsg,
        state: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        // Time in the handler: the Manager's share of a core under load (the addr-flood
        // benchmark reads it), as a histogram of handling times.
        let started = Instant::now();
        let result = handle_manager_msg(myself, msg, state).await;
        metrics::histogram!("meshd_manager_handle_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        // However the Manager stops (shutdown, or its supervisor giving up), what it owns is
        // saved. A Manager that fails skips this hook; bans are written within a second of a
        // change and the book every `addrbook-save-interval`, so at most that interval of
        // gossip is lost.
        if let Some(fetch) = state.addr_fetch.take() {
            fetch.abort();
        }
        state.save_bans_now().await;
        state.save_book();
        state.save_anchors();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, final_state, _) => {
                let final_state = final_state.and_then(|mut s| s.take::<ConnectionState>().ok());
                let (reason, uptime, connected, fallback) = match &final_state {
                    Some(s) => (
                        s.close_reason().cloned().unwrap_or_else(|| {
                            DisconnectReason::Stopped("no reason recorded".into())
                        }),
                        s.uptime(),
                        s.was_connected(),
                        s.v1_fallback_suggested(),
                    ),
                    None => (
                        DisconnectReason::Stopped("killed".into()),
                        Duration::ZERO,
                        true,
                        false,
                    ),
                };
                state.on_connection_end(
                    &myself,
                    cell.get_id(),
                    reason,
                    uptime,
                    connected,
                    fallback,
                );
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let addr = state.children.get(&cell.get_id()).map(|c| c.addr);
                warn!(peer = ?addr, error = %err, "connection actor failed");
                metrics::counter!("meshd_disconnects_total", "reason" => "actor_failed")
                    .increment(1);
                state.on_connection_end(
                    &myself,
                    cell.get_id(),
                    DisconnectReason::Stopped(format!("actor failed: {err}")),
                    Duration::ZERO,
                    true,
                    false,
                );
            }
            _ => {}
        }
        Ok(())
    }
}

/// The Manager's handling of one message (see [`Manager`]'s `handle`).
async fn handle_manager_msg(
    myself: ActorRef<ManagerMsg>,
    msg: ManagerMsg,
    state: &mut ManagerState,
) -> Result<(), ActorProcessingErr> {
    match msg {
        ManagerMsg::InboundAccepted {
            stream,
            addr,
            onion,
            pending,
        } => {
            state.admit_inbound(&myself, stream, addr, onion).await;
            // Handled: the Listener may accept one more.
            drop(pending);
        }
        ManagerMsg::Connect { addr, kind } => {
            if kind != OutboundKind::OneTry {
                state.targets.insert(addr, kind);
                state.ctx.add_manual_ip(addr.ip());
            }
            if !state.dial(&myself, addr, kind).await {
                info!(peer = %addr, "no outbound slot free; will dial when one is");
            }
        }
        ManagerMsg::RedialV1 { addr, kind } => {
            let dialled = state.dial(&myself, addr, kind).await;
            // The extra block-relay-only peer held a slot above the limit: its v1 retry takes
            // one there again.
            if !dialled && kind == OutboundKind::BlockRelay {
                if let Some(permit) = state.ctx.slots.try_reserve_extra_block_relay() {
                    state
                        .spawn(
                            &myself,
                            addr,
                            Direction::Outbound,
                            Some(kind),
                            Transport::Dial,
                            permit,
                        )
                        .await;
                }
            }
        }
        ManagerMsg::Redial(addr) => {
            state.scheduled.remove(&addr);
            if let Some(kind) = state.targets.get(&addr).copied() {
                state.dial(&myself, addr, kind).await;
            }
        }
        ManagerMsg::Upkeep => state.upkeep(&myself).await,
        ManagerMsg::AnnouncePeersToSync => {
            for child in state.children.values() {
                peer_up_to_sync(&state.ctx, child);
            }
        }
        ManagerMsg::PeerConnected(id) => state.publish_lifecycle(id, false),
        ManagerMsg::PeerHandshaked {
            id,
            start_height,
            relay,
            version,
            wtxid_relay,
        } => {
            if let Some(child) = state
                .by_peer
                .get(&id)
                .and_then(|a| state.children.get_mut(a))
            {
                child.handshake = Some((start_height, relay, version, wtxid_relay));
                peer_up_to_sync(&state.ctx, child);
            }
            state.publish_lifecycle(id, true);
            let outbound = state
                .by_peer
                .get(&id)
                .and_then(|a| state.children.get(a))
                .filter(|c| c.direction == Direction::Outbound)
                .map(|c| (c.addr, c.kind == Some(OutboundKind::BlockRelay)));
            if let Some((_, true)) = outbound {
                state.remember_anchors();
            }
            if let (Some((addr, block_relay)), Some(info)) = (outbound, state.ctx.peers.get(id)) {
                let now = now_unix();
                if let (None, Some(o)) = (state.book.get(&addr), info.overlay) {
                    // A manual onion peer: remembered under its name, like any other.
                    state
                        .book
                        .add_overlay(o, addr.port(), info.services, now, addr.ip(), now);
                }
                if block_relay {
                    state.book.good_unseen(&addr, info.services, now);
                } else {
                    state.book.good(&addr, info.services, now);
                }
                state.publish_book_counts();
                let feeler = state
                    .by_peer
                    .get(&id)
                    .and_then(|a| state.children.get(a))
                    .filter(|c| c.kind == Some(OutboundKind::Feeler));
                if let Some(child) = feeler {
                    // Core closes a feeler once it handshakes: its work is done.
                    let _ = child
                        .actor
                        .cast(ConnectionMsg::Disconnect(DisconnectReason::FeelerDone));
                }
            }
        }
        ManagerMsg::DnsResults { seed, ips } => {
            let port = state.ctx.profile.default_port;
            let source = seed_source(&seed);
            let now = now_unix();
            let services = state.ctx.config().required_services.to_u64();
            let added = ips
                .iter()
                .filter(|ip| {
                    state
                        .book
                        .add(SocketAddr::new(**ip, port), services, now, source, now)
                })
                .count();
            state.publish_book_counts();
            // Dialled on the next upkeep tick: slots are filled there only, not per answer.
            debug!(seed = %seed, added, "DNS addresses added to the book");
        }
        ManagerMsg::AddrFetch { seed } => {
            let waiting = state
                .addr_fetch_wait
                .get(&seed)
                .is_some_and(|(next, _)| Instant::now() < *next);
            let running = state.addr_fetch_current.as_ref() == Some(&seed);
            if !waiting
                && !running
                && !state.addr_fetch_queue.contains(&seed)
                && state.addr_fetch_queue.len() < addr_fetch::MAX_ADDR_FETCH_QUEUE
            {
                state.addr_fetch_queue.push_back(seed);
            }
            state.next_addr_fetch(&myself);
        }
        ManagerMsg::AddrFetched { seed, result } => {
            state.addr_fetch = None;
            state.addr_fetch_current = None;
            if state.addr_fetch_wait.len() >= addr_fetch::MAX_ADDR_FETCH_QUEUE {
                state.addr_fetch_wait.clear();
            }
            let retry = state
                .addr_fetch_wait
                .get(&seed)
                .map_or(addr_fetch::ADDR_FETCH_RETRY_MIN, |(_, r)| *r);
            let now = Instant::now();
            let wait = match &result {
                Ok(_) => (
                    now + addr_fetch::ADDR_FETCH_AFTER_ANSWER,
                    addr_fetch::ADDR_FETCH_RETRY_MIN,
                ),
                Err(_) => (
                    now + retry,
                    (retry * 2).min(addr_fetch::ADDR_FETCH_RETRY_MAX),
                ),
            };
            state.addr_fetch_wait.insert(seed.clone(), wait);
            match result {
                Ok(addrs) => {
                    metrics::counter!("meshd_addr_fetches_total", "result" => "ok").increment(1);
                    let source = seed_source(&seed);
                    let now = now_unix();
                    let added = addrs
                        .iter()
                        .filter(|a| !state.ctx.own_addrs.contains(&a.addr))
                        .filter(|a| state.book.add_gossip(a, source, now))
                        .count();
                    info!(seed = %seed, addresses = addrs.len(), added, "addresses fetched from a DNS seed through the proxy");
                    state.publish_book_counts();
                }
                Err(e) => {
                    metrics::counter!("meshd_addr_fetches_total", "result" => e.kind())
                        .increment(1);
                    // One line per seed per round (DnsDiscovery asks at most once a minute).
                    warn!(seed = %seed, error = %e, "addr-fetch from a DNS seed through the proxy failed");
                }
            }
            state.next_addr_fetch(&myself);
        }
        ManagerMsg::AddrsReceived {
            id,
            from,
            addrs,
            relayable,
            credit,
        } => {
            // No dial here: slots are filled on the upkeep tick only, so an addr flood
            // costs what storing and relaying it costs, never a selection per message.
            state.on_addrs(id, from, addrs, relayable);
            drop(credit);
        }
        ManagerMsg::GetAddr(id) => state.on_getaddr(id),
        ManagerMsg::KnownAddresses(reply) => {
            let _ = reply.send(state.book.entries().cloned().collect());
        }
        ManagerMsg::SaveAddrBook => state.save_book(),
        ManagerMsg::Misbehaving {
            id,
            addr,
            kind,
            score,
        } => {
            let config = state.ctx.config();
            let ip = crate::shared::bans::canonical(addr.ip());
            let info = state.ctx.peers.get(id);
            if info.as_ref().is_some_and(|p| p.manual) {
                // The Connection does not report manual peers; should one come, the
                // operator's choice still holds (Core: "not punishing manually
                // connected peer").
                warn!(peer = %addr, id = %id, kind, score, "manual peer misbehaved; not discouraged");
            } else if info.as_ref().is_some_and(|p| p.inbound_onion) {
                // Core: "disconnecting but not discouraging inbound onion peer": they
                // all come from the Tor daemon's address.
                warn!(peer = %addr, id = %id, kind, score, "onion peer misbehaved; disconnected, not discouraged");
            } else if state.ctx.permissions_of(ip).has(NOBAN) {
                warn!(peer = %addr, id = %id, kind, score, "whitelisted (noban) peer misbehaved; not discouraged");
            } else if ip.is_loopback() && !config.ban_local_peers {
                warn!(peer = %addr, id = %id, kind, score, "local peer misbehaved; disconnected, not discouraged");
            } else {
                // Core's Discourage and DisconnectNode(addr): in memory only, and every
                // connection from it closed (but manual and noban ones).
                let net = state.ctx.discourage(ip);
                let detail = format!("{kind} (score {score})");
                metrics::counter!("meshd_discouraged_total").increment(1);
                info!(peer = %addr, id = %id, subnet = %net, %detail, "discouraged");
                state.ctx.events.publish(NodeEvent::PeerDiscouraged {
                    subnet: net.to_string(),
                    detail: detail.clone(),
                });
                for child in state.children.values() {
                    let manual = matches!(
                        child.kind,
                        Some(
                            OutboundKind::Persistent
                                | OutboundKind::Candidate
                                | OutboundKind::OneTry
                        )
                    );
                    let child_ip = crate::shared::bans::canonical(child.addr.ip());
                    let onion = state
                        .ctx
                        .peers
                        .get(child.id)
                        .is_some_and(|p| p.inbound_onion);
                    if child.id != id
                        && !manual
                        && !onion
                        && net.contains(&child_ip)
                        && !state.ctx.permissions_of(child_ip).has(NOBAN)
                    {
                        let _ = child.actor.cast(ConnectionMsg::Disconnect(
                            DisconnectReason::Misbehaving(detail.clone()),
                        ));
                    }
                }
            }
        }
        ManagerMsg::FleetBan {
            subnet,
            until,
            origin,
            reason,
        } => {
            let now = now_unix();
            if until > now && !state.ctx.is_shutting_down() {
                info!(%subnet, %origin, %reason, "ban advisory applied");
                state.apply_ban(
                    subnet,
                    Duration::from_secs(until - now),
                    BanReason::Fleet { origin, reason },
                );
            }
        }
        ManagerMsg::Ban(subnet, duration, reply) => {
            let (entry, changed) = state.apply_ban(subnet, duration, BanReason::Manual);
            // Answered once the ban is on disk: an operator's ban, once acknowledged,
            // survives a kill -9 (the write is coalesced, at most one a second). One
            // already in force is on disk already.
            if changed {
                state
                    .bans_acks
                    .push(Box::new(move || drop(reply.send(entry))));
            } else {
                let _ = reply.send(entry);
            }
        }
        ManagerMsg::FleetUnban {
            subnet,
            origin,
            issued,
        } => {
            // Only the ban applied from that origin, and only one applied before the unban
            // was issued (allowing the fleet's clock skew): an unban replayed after a
            // restart (the order memory is gone) cannot lift a ban made since.
            let skew = crate::shared::bans::MAX_ADVISORY_CLOCK_SKEW_SECS;
            let from_origin = state.bans.get(&subnet).is_some_and(|e| {
                e.reason.origin() == Some(origin.as_str())
                    && issued.saturating_add(skew) >= e.created
            });
            if from_origin && !state.ctx.is_shutting_down() {
                if let Some(entry) = state.bans.unban(&subnet) {
                    state.sync_bans();
                    info!(%subnet, %origin, "ban lifted on its origin's advisory");
                    state.ctx.events.publish(NodeEvent::PeerUnbanned {
                        subnet: entry.subnet.to_string(),
                        reason: entry.reason.label().to_string(),
                        by: format!("fleet:{origin}"),
                    });
                }
            }
        }
        ManagerMsg::Unban(subnet, reply) => {
            if let Some(entry) = state.bans.unban(&subnet) {
                state.sync_bans();
                info!(subnet = %subnet, "unbanned");
                state.ctx.events.publish(NodeEvent::PeerUnbanned {
                    subnet: entry.subnet.to_string(),
                    reason: entry.reason.label().to_string(),
                    by: "operator".into(),
                });
                state
                    .bans_acks
                    .push(Box::new(move || drop(reply.send(true))));
            } else {
                let _ = reply.send(false);
            }
        }
        ManagerMsg::AddedNodes(reply) => {
            let _ = reply.send(state.added_nodes());
        }
        ManagerMsg::RemoveAddedNode(addr, reply) => {
            let removed = state.targets.remove(&addr).is_some();
            if removed {
                // Another manual peer may share the IP (another port): it stays manual.
                if !state.targets.keys().any(|a| a.ip() == addr.ip()) {
                    state.ctx.remove_manual_ip(addr.ip());
                }
                info!(peer = %addr, "manual peer removed; not dialled again");
            }
            let _ = reply.send(removed);
        }
        ManagerMsg::PingAll => {
            for child in state.children.values() {
                let _ = child.actor.cast(ConnectionMsg::PingNow);
            }
        }
        ManagerMsg::ListBans(reply) => {
            let _ = reply.send(state.bans.entries(now_unix()));
        }
        ManagerMsg::ConfigChanged(reply) => {
            let config = state.ctx.config();
            state.restarts.set_policy(config.restart);
            state.enforce_limits().await;
            info!(
                max_outbound = config.slots.outbound,
                max_inbound = config.slots.inbound,
                max_connections = config.slots.total,
                "configuration updated"
            );
            let _ = reply.send(());
        }
        ManagerMsg::Disconnect(id, reply) => {
            let found = state.by_peer.get(&id).and_then(|a| state.children.get(a));
            if let Some(child) = found {
                let _ = child
                    .actor
                    .cast(ConnectionMsg::Disconnect(DisconnectReason::Requested));
            }
            let _ = reply.send(found.is_some());
        }
        ManagerMsg::SendTo(id, message, reply) => {
            let found = state.by_peer.get(&id).and_then(|a| state.children.get(a));
            if let Some(child) = found {
                let _ = child.actor.cast(ConnectionMsg::Send(message));
            }
            let _ = reply.send(found.is_some());
        }
        ManagerMsg::Shutdown(reply) => {
            state.anchors_out = Some(state.current_anchors());
            state.ctx.begin_shutdown();
            let mut stopping = JoinSet::new();
            for child in state.children.values() {
                let actor = child.actor.clone();
                let _ = actor.cast(ConnectionMsg::Disconnect(DisconnectReason::Shutdown));
                stopping.spawn(async move {
                    // The Disconnect above lets the Connection record its reason and run
                    // its stop hook; the stop is the backstop if its mailbox is stuck.
                    let _ = tokio::time::timeout(SHUTDOWN_PEER_TIMEOUT, actor.wait(None)).await;
                    if actor.get_status() != ractor::ActorStatus::Stopped {
                        let _ = actor.stop_and_wait(None, Some(SHUTDOWN_PEER_TIMEOUT)).await;
                    }
                });
            }
            let count = stopping.len();
            while stopping.join_next().await.is_some() {}
            state.save_bans_now().await;
            state.save_book();
            state.save_anchors();
            info!(peers = count, "all connections closed, state saved");
            let _ = reply.send(());
        }
    }
    Ok(())
}
