//! The sync core: everything the Sync actor decides, as plain Rust over virtual time. It
//! takes what peers sent, the Manager's peer arrivals and departures, timer ticks and the
//! operator's requests, each with a [`Clock`], and returns [`Action`]s: messages to send,
//! charges, peer-table notes, events and headers to store. It owns no socket, timer, file
//! or mailbox; the actor (`sync/mod.rs`) owns those and carries the actions out.
//!
//! Per-peer state is in one place, `SyncPeer` (Core's `Peer` and `CNodeState`): what the
//! peer announced and sent, what we asked of it and when. Under it are the smaller cores:
//! [`crate::sync::header_sync`] (sync peer, one `getheaders` in flight),
//! [`crate::sync::intake`] (a headers batch's path), [`crate::sync::hints`] (sync from many
//! peers), [`crate::sync::blocks`] (blocks in flight and stalling) and
//! [`crate::sync::txrequest`] (Core's TxRequestTracker). The files here apply them:
//! `headers.rs` (header sync), `blocks.rs` (direct fetch, checks, keeping, announcing) and
//! `relay.rs` (transactions).

mod blocks;
mod compact;
mod headers;
mod relay;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::block::{Block, Header};
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::{GetHeadersMessage, Inventory};
use bitcoin::{BlockHash, Transaction, Txid};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, info, warn};

use crate::config::NodeConfig;
use crate::constants::MAX_HEADERS_PER_MESSAGE;
use crate::events::NodeEvent;
use crate::msg::{
    ChainAnswer, ChainQuery, ChainSummary, ChainTip, HeaderInfo, PoolTxInfo, SyncInput, SyncState,
    SyncStatus,
};
use crate::network::Profile;
use crate::peer::handshake::SENDHEADERS_VERSION;
use crate::peer::{DisconnectReason, RollingFilter};
use crate::shared::overlay::Network;
use crate::shared::peers::PeerId;
use crate::shared::whitelist::{permissions_of, Permissions};
use crate::sync::blocks::{BlockDownload, Failure};
use crate::sync::bloom::BloomFilter;
use crate::sync::chain::presync::HeadersPresync;
use crate::sync::chain::HeaderChain;
use crate::sync::header_sync::{self, HeaderSync, InitialSync, PeerHeaders, SessionEnd};
use crate::sync::hints::{SegmentSync, HINT_INTERVAL};
use crate::sync::pool::RelayPool;
use crate::sync::txrequest::TxRequestTracker;

/// Core's `CanDirectFetch`: blocks of new headers are fetched at once only while our tip is
/// at most this many block intervals old (further behind, they are history, not the tip).
const DIRECT_FETCH_SPACINGS: u32 = 20;
/// While our best header is at most this old, every new peer is asked for headers, not only
/// the sync peer (Core: 24 h, in `SendMessages`).
const RECENT_HEADER_AGE: u32 = 24 * 60 * 60;
/// Inventory type of a BIP37 filtered block.
const FILTERED_BLOCK: u32 = 3;
/// The witness flag of inventory types (BIP144).
const WITNESS_FLAG: u32 = 1 << 30;
/// Block hashes in one `getblocks` answer (Core: 500).
const MAX_BLOCKS_INV: usize = 500;
/// Inventory remembered per peer as known to it (Core's `m_tx_inventory_known_filter`).
///
/// # Security
/// A rolling filter: its memory is fixed (about 300 KB, allocated on first use) whatever the
/// peer sends; the oldest entries are forgotten, so an announcement may rarely repeat.
const KNOWN_INV_CAP: usize = 50_000;
/// False-positive rate of that filter (Core: one in a million): a false positive means one
/// announcement the peer does not get.
const KNOWN_INV_FP_RATE: f64 = 1e-6;
/// Transactions refused (or not pooled) remembered so that no other announcer is asked for
/// them again (Core's `m_lazy_recent_rejects`: 120,000 entries).
///
/// # Security
/// A rolling filter, fixed in memory (about 0.7 MB, allocated on the first refusal) however
/// many refusals peers provoke; it is reset when the tip changes, as Core's, since a new tip
/// can make a refused transaction acceptable (a fee rate that now fits, a spent parent).
/// meshd's tip is its best header, not a validated block: on a network where headers are
/// cheap (regtest, testnet4's minimum difficulty) anyone can reset it, which costs us the
/// re-fetch of what was refused, never a wrong acceptance.
const RECENT_REJECTS_CAP: usize = 120_000;
/// False-positive rate of that filter (Core: one in a million): a false positive is one
/// transaction not fetched until the next tip.
const RECENT_REJECTS_FP_RATE: f64 = 1e-6;
/// Transactions in recent blocks remembered, so that a lagging peer's announcement of one is
/// not fetched, pooled and relayed again (Core's `m_recent_confirmed_transactions`: 48,000,
/// by txid and wtxid).
///
/// # Security
/// A rolling filter of fixed memory (about 0.3 MB); reset on a reorganisation, as Core's on
/// a disconnected block, since those transactions may be unconfirmed again.
const RECENT_CONFIRMED_CAP: usize = 48_000;
/// False-positive rate of that filter (Core: one in a million).
const RECENT_CONFIRMED_FP_RATE: f64 = 1e-6;
/// Transactions announced to one peer per flush.
const MAX_INV_PER_FLUSH: usize = 1000;
/// Average trickle delay for inbound peers (Core: 5 s): announcements to peers that chose
/// us are batched and delayed so that the origin of a transaction is harder to tell.
const TRICKLE_INBOUND: Duration = Duration::from_secs(5);
/// Average trickle delay for outbound peers (Core: 2 s): peers we chose are trusted a
/// little more, and relay through them is quicker.
const TRICKLE_OUTBOUND: Duration = Duration::from_secs(2);

/// The time of one step: monotonic for timeouts, unix seconds for header times. The actor
/// passes the system's (the core never reads a clock); tests pass their own.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Monotonic time.
    pub now: Instant,
    /// Wall-clock time, unix seconds.
    pub unix: u32,
}

impl Clock {
    /// This clock `d` later.
    pub fn after(self, d: Duration) -> Clock {
        Clock {
            now: self.now + d,
            unix: self
                .unix
                .saturating_add(d.as_secs().min(u32::MAX as u64) as u32),
        }
    }
}

/// What the core asks of its actor, in order.
#[derive(Debug)]
pub enum Action {
    /// Send a message to a peer.
    Send(PeerId, NetworkMessage),
    /// Send a frame serialized once (a kept block) to a peer; the command names it in logs.
    SendShared(PeerId, &'static str, Arc<[u8]>),
    /// A `getdata` is served: the peer's Connection may hand over its next one.
    GetDataServed(PeerId),
    /// Charge a peer for misbehaviour (see [`crate::peer::misbehavior`]).
    Punish(PeerId, &'static str),
    /// End a peer's connection.
    Disconnect(PeerId, DisconnectReason),
    /// Turn a Connection's header pipelining on or off.
    PipelineHeaders(PeerId, bool),
    /// Publish an event.
    Event(NodeEvent),
    /// Peer table: the highest header of ours the peer showed it has.
    SyncedHeight(PeerId, u32),
    /// Peer table: the peer sent a novel valid block now (eviction protection).
    LastBlockAt(PeerId, Instant),
    /// Peer table: a transaction the peer sent at this time was vouched for.
    LastTxAt(PeerId, Instant),
    /// Peer table: blocks asked of the peer and not delivered yet.
    BlocksInFlight(PeerId, usize),
    /// Peer table: BIP152 high-bandwidth modes, as Core's getpeerinfo `bip152_hb_to` (we
    /// asked the peer to announce with `cmpctblock`) and `bip152_hb_from` (it asked us).
    CompactMode(PeerId, bool, bool),
    /// Headers the chain took, in order, for headers.dat.
    Store(Vec<(Header, BlockHash)>),
}

/// The actions of one step.
#[derive(Debug, Default)]
pub struct Outbox(Vec<Action>);

impl Outbox {
    fn push(&mut self, a: Action) {
        self.0.push(a);
    }
    fn send(&mut self, id: PeerId, m: NetworkMessage) {
        self.0.push(Action::Send(id, m));
    }
    fn event(&mut self, e: NodeEvent) {
        self.0.push(Action::Event(e));
    }
    fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.0)
    }
}

/// A peer that finished its handshake, as the Manager reports it.
#[derive(Debug, Clone)]
pub struct NewPeer {
    /// Peer.
    pub id: PeerId,
    /// Its address.
    pub addr: SocketAddr,
    /// How events name it (its address, or an overlay's or a seed's name).
    pub label: String,
    /// Height in its version: shown, never trusted.
    pub start_height: i32,
    /// It wants transactions relayed.
    pub relay: bool,
    /// It dialled us.
    pub inbound: bool,
    /// Its protocol version.
    pub version: u32,
    /// It negotiated BIP339 wtxid relay.
    pub wtxid_relay: bool,
    /// Our block-relay-only connection.
    pub block_relay_only: bool,
    /// The services in its version.
    pub services: bitcoin::p2p::ServiceFlags,
    /// The network it reached us on (an inbound onion peer arrives from loopback).
    pub network: Network,
}

/// What the core knows of one peer (Core's per-peer `Peer` and `CNodeState`): what it
/// announced and sent, what we asked of it and when.
struct SyncPeer {
    id: PeerId,
    addr: SocketAddr,
    /// Its network: inbound peers of one network share an announcement schedule.
    network: Network,
    label: String,
    /// What it showed of its chain, what it was asked for and when, its sync-peer record.
    hs: PeerHeaders,
    /// Its protocol version.
    version: u32,
    /// It sent `wtxidrelay` (BIP339): transactions are announced and requested by wtxid.
    wtxid_relay: bool,
    /// Its chain is being presynced (it has not shown enough work yet). Boxed: 350 bytes
    /// that only a peer being presynced needs.
    presync: Option<Box<HeadersPresync>>,
    wants_headers: bool,
    relay: bool,
    /// Our block-relay-only connection: a transaction announced or sent by it breaks the
    /// `relay=false` we sent, and ends it (Core: "sent in violation of protocol").
    block_relay_only: bool,
    known: RollingFilter,
    pending_tx: Vec<Txid>,
    /// The peer's feefilter, sat per 1000 virtual bytes.
    feefilter: u64,
    /// The peer's BIP37 filter, for `merkleblock` answers.
    bloom: Option<BloomFilter>,
    next_flush: Instant,
    /// Blocks in flight last reported to the peer table.
    reported_in_flight: usize,
    /// Its compact-block state (BIP152).
    cmpct: compact::PeerCompact,
    /// An `inv` of it made us ask it for headers before we synced from it (Core's
    /// `m_inv_triggered_getheaders_before_sync`): not again.
    inv_triggered_getheaders: bool,
    /// The services in its version: whether it serves blocks, and witnesses.
    services: bitcoin::p2p::ServiceFlags,
    /// The most-work block it showed us it has (Core's `pindexBestKnownBlock`): the last of
    /// its headers, a known block it announced or sent. It has every ancestor of it.
    best_known: Option<BlockHash>,
    /// The highest header we sent it (Core's `pindexBestHeaderSent`): in a `headers` answer
    /// or announcement, or a `cmpctblock`. It has every ancestor of it.
    best_header_sent: Option<BlockHash>,
    /// The last block it announced before we had its header (Core's
    /// `hashLastUnknownBlock`), resolved once the header is in.
    last_unknown: Option<BlockHash>,
    /// Outbound: the most-work block it showed by `headers` or `inv`, which vouches for it
    /// and its ancestors (see [`blocks::VouchedBlocks`]).
    vouched_tip: Option<BlockHash>,
    /// Blocks it announced itself (`inv`, `headers`, `cmpctblock`), newest last: sources of
    /// those blocks. Not `known`, which also holds what we told it.
    announced_blocks: VecDeque<BlockHash>,
    /// It has a whitelist entry: the operator trusts it (asked for blocks it announces
    /// whatever its service bits).
    trusted: bool,
    /// It was asked for headers while our best header was recent (Core's `fSyncStarted`
    /// for peers met in initial sync): asked once our header becomes recent otherwise.
    headers_asked_recent: bool,
}

/// Blocks each peer is remembered to have announced itself.
///
/// # Security
/// Per peer, oldest forgotten first: a peer announcing without end holds 64 hashes (2 KiB);
/// the blocks we fetch are the last 16 near the tip, well within it.
const MAX_ANNOUNCED_BLOCKS: usize = 64;

impl SyncPeer {
    fn knows(&self, h: &[u8; 32]) -> bool {
        self.known.contains(h)
    }
    /// It announced `hash` itself.
    fn announced(&mut self, hash: BlockHash) {
        if self.announced_blocks.contains(&hash) {
            return;
        }
        if self.announced_blocks.len() >= MAX_ANNOUNCED_BLOCKS {
            self.announced_blocks.pop_front();
        }
        self.announced_blocks.push_back(hash);
    }
    fn has_announced(&self, hash: &BlockHash) -> bool {
        self.announced_blocks.contains(hash)
    }
    fn learn(&mut self, h: [u8; 32]) {
        self.known.insert(&h);
    }
    /// We sent it the header `hash` as Core records it (the last of a `headers` answer or
    /// announcement, a `cmpctblock`): it is the best header sent, even if lower than the
    /// last (Core assigns, after a reorg too).
    fn set_header_sent(&mut self, hash: BlockHash) {
        self.best_header_sent = Some(hash);
    }

    /// We sent it a block (whose header it then has): recorded only above what it has, a
    /// record off our best chain counting as none (serving an old block says nothing new).
    fn sent_header(&mut self, chain: &HeaderChain, hash: BlockHash) {
        let have = self
            .best_header_sent
            .filter(|b| chain.is_on_best_chain(b))
            .and_then(|b| chain.height_of(&b));
        let higher = match have {
            Some(have) => chain.height_of(&hash).is_some_and(|h| h > have),
            None => true,
        };
        if higher {
            self.best_header_sent = Some(hash);
        }
    }
}

/// A block kept to answer `getdata`: decoded (for filtered blocks and fees) and serialized
/// once as a whole `block` frame, shared by every peer it is sent to.
struct KeptBlock {
    hash: BlockHash,
    block: Arc<Block>,
    /// Its `block` message, framed once (see [`KeptBlock::whole_frame`]).
    frame: std::sync::OnceLock<Arc<[u8]>>,
    /// Positions we lacked when we reconstructed it: prefilled in our compact blocks of it.
    missing: Vec<usize>,
    /// What each transaction's short id is computed over (wtxid or txid, as the network's
    /// compact-block version says), hashed once when the block was kept.
    short_id_hashes: Vec<[u8; 32]>,
    /// Our compact block of it, framed on first need and then served to every peer (one
    /// nonce, as Core's most recent compact block): a request costs no hashing.
    compact: Option<Arc<[u8]>>,
    /// It was announced to ordinary peers (it was vouched for, or is now).
    announced: bool,
    /// When it was kept, and how many times outbound peers were asked to vouch for it
    /// (see [`SyncCore::ask_for_vouches`]).
    kept_at: Instant,
    vouch_asks: u8,
}

impl KeptBlock {
    /// Its `block` message: framed on first need (right after the high-bandwidth push, by
    /// [`SyncCore::after_keep`]), then one shared copy for every peer.
    fn whole_frame(&self, magic: bitcoin::p2p::Magic) -> Arc<[u8]> {
        self.frame
            .get_or_init(|| {
                crate::wire::message::encode_block_frame(magic, &self.block)
                    .0
                    .into()
            })
            .clone()
    }
}

/// What is left of keeping a block once it is pushed to high-bandwidth peers (see
/// [`SyncCore::defer_bookkeeping`]).
struct AfterKeep {
    hash: BlockHash,
    block: Arc<Block>,
    txids: Vec<bitcoin::Txid>,
    from: Option<PeerId>,
    via: crate::events::BlockVia,
    txs_requested: usize,
    wire_bytes: usize,
}

/// The sync core's state.
pub struct SyncCore {
    profile: Profile,
    /// The configuration in force (the actor hands over a reloaded one).
    config: Arc<NodeConfig>,
    /// The time of the step being taken.
    clock: Clock,
    /// What the step asks of the actor.
    out: Outbox,
    /// Trickle delays.
    rng: StdRng,
    /// Core's `m_next_inv_to_inbounds_per_network_key`: when inbound peers of each network
    /// (in `Network::ALL` order) next get their announcements, one Poisson schedule shared
    /// by all of them.
    next_inv_to_inbounds: [Option<Instant>; Network::ALL.len()],
    chain: HeaderChain,
    /// headers.dat is loading: sync waits for the whole chain.
    loading: bool,
    /// Headers sync from many peers at once along the header hints, while it runs.
    segments: Option<SegmentSync>,
    /// The hints turned out wrong (or no peer could serve them): not used again.
    hints_off: bool,
    /// Boxed: the table keeps up to twice its length in slots, and while it grows both
    /// tables at once, so inline values cost about three times their 500 bytes per peer.
    peers: HashMap<PeerId, Box<SyncPeer>>,
    /// The headers sync session (Core's sync peer), if one runs.
    header_sync: HeaderSync,
    state: SyncState,
    /// Initial sync (Core's `IsInitialBlockDownload`, latched off once over; a restart
    /// starts over).
    initial_sync: InitialSync,
    blocks: VecDeque<KeptBlock>,
    /// Blocks asked of peers, and who failed which (Core's blocks in flight and stalling).
    downloads: BlockDownload,
    pool: RelayPool,
    /// Output values of the kept blocks' transactions, for fee rates without scanning blocks.
    block_outputs: HashMap<Txid, Vec<u64>>,
    /// Every transaction announcement and request, by the hash it was announced with (txid,
    /// or wtxid for BIP339 peers): Core's TxRequestTracker.
    tx_requests: TxRequestTracker,
    /// Transactions refused or not pooled since `recent_rejects_tip` became the tip, by
    /// wtxid (and txid where no witness can differ): not fetched again from anyone.
    recent_rejects: RollingFilter,
    /// The tip `recent_rejects` belongs to (Core resets the filter lazily when it changes).
    recent_rejects_tip: BlockHash,
    /// Blocks a validating node vouched for (see [`blocks::VouchedBlocks`]): the only ones
    /// announced to ordinary peers, since meshd checks no scripts.
    vouched_blocks: blocks::VouchedBlocks,
    /// A header that came with a `cmpctblock` (BIP152 lets it go before validation) or a
    /// delivered block is being handled: it shows nothing vouched for.
    header_from_cmpct: bool,
    /// The vouched tip saved before the restart (see [`Self::restore_vouched`]).
    restored_vouch: Option<(u32, BlockHash)>,
    /// Txids and wtxids of the transactions of blocks received since the last reorganisation.
    recent_confirmed: RollingFilter,
    /// This node's coinbase tag for regtest blocks it generates (random per start).
    extra_nonce: u32,
    /// The peers we asked to announce blocks with `cmpctblock` (BIP152 high-bandwidth).
    high_bandwidth: crate::sync::compact::HighBandwidth,
    /// Transactions seen that are not in the pool, for reconstruction (Core's
    /// `vExtraTxnForCompact`).
    extra_txn: crate::sync::compact::ExtraPool,
    /// Blocks being reconstructed, waiting for `blocktxn`.
    /// By block and the peer rebuilding it (the block's request, or a parallel attempt:
    /// see `BlockDownload::add_parallel`).
    partials: HashMap<(BlockHash, PeerId), compact::Partial>,
    /// Blocks whose compact block failed and were asked for whole.
    /// By the peer the whole block was asked of: its request is the fallback's until it
    /// ends (delivered, failed, moved, the peer gone).
    fallbacks: VecDeque<(BlockHash, PeerId)>,
    /// The block a `cmpctblock` being handled carries, and its sender: direct fetch records
    /// it as asked of that sender but sends no `getdata` (the message is the answer).
    compact_in_hand: Option<(BlockHash, PeerId)>,
    /// The block whose `inv` last made us ask a peer we do not sync from for headers
    /// (Core's `m_last_block_inv_triggering_headers_sync`): one such peer per new block.
    last_inv_trigger: Option<BlockHash>,
    /// Kept blocks whose bookkeeping waits for [`SyncCore::run_deferred`].
    kept_pending: VecDeque<AfterKeep>,
    /// Whether it waits (see [`SyncCore::defer_bookkeeping`]).
    defer_after_keep: bool,
    /// The highest block pushed to high-bandwidth peers (Core's m_highest_fast_announce).
    highest_fast_announce: u32,
    /// Blocks are being announced several at once (a branch, or blocks vouched for
    /// together): as headers only, as Core announces anything but a lone new block.
    announcing_batch: bool,
    /// Header sync's rate and time left (see [`crate::sync::progress`]).
    progress: crate::sync::progress::ProgressMeter,
    /// Generated blocks' bookkeeping is deferred: the new tip's state and event follow it
    /// (see [`SyncCore::generated_tip`]).
    generated_after_keep: bool,
}

/// A delay drawn from an exponential distribution of mean `avg` (Core's trickle), capped at
/// ten times the mean.
fn poisson(rng: &mut StdRng, avg: Duration) -> Duration {
    let u: f64 = rng.gen::<f64>().max(1e-12);
    avg.mul_f64(-u.ln()).min(avg * 10)
}

/// Core's `NextInvToInbounds`: the next announcement time of inbound peers of `network`,
/// drawn anew once passed and shared by every inbound peer of that network, so a spy
/// holding many inbound connections sees one schedule, not many to average, and a
/// transaction reaches every inbound peer at the same moment. Keyed by network, as Core's
/// network key is, so an onion peer's schedule does not link it to a clearnet one. (Core's
/// key also tells apart the local addresses peers reached; meshd's does not.)
fn next_inv_to_inbounds(
    schedules: &mut [Option<Instant>; Network::ALL.len()],
    rng: &mut StdRng,
    network: Network,
    now: Instant,
) -> Instant {
    let slot = Network::ALL.iter().position(|n| *n == network).unwrap_or(0);
    match schedules[slot] {
        Some(at) if at > now => at,
        _ => {
            let at = now + poisson(rng, TRICKLE_INBOUND);
            schedules[slot] = Some(at);
            at
        }
    }
}

/// BIP130's `sendheaders`, to peers whose version understands it (Core: from 70012).
fn send_sendheaders(out: &mut Outbox, p: &SyncPeer) {
    if p.version >= SENDHEADERS_VERSION {
        out.send(p.id, NetworkMessage::SendHeaders);
    }
}

impl SyncCore {
    /// A core at genesis; `seed` draws the trickle delays and the regtest coinbase tag.
    pub fn new(profile: Profile, config: Arc<NodeConfig>, clock: Clock, seed: u64) -> SyncCore {
        let mut rng = StdRng::seed_from_u64(seed);
        SyncCore {
            chain: HeaderChain::new(&profile),
            profile,
            config,
            clock,
            out: Outbox::default(),
            extra_nonce: rng.gen(),
            rng,
            next_inv_to_inbounds: [None; Network::ALL.len()],
            loading: false,
            segments: None,
            hints_off: false,
            peers: HashMap::new(),
            header_sync: HeaderSync::default(),
            state: SyncState::Idle,
            initial_sync: InitialSync::default(),
            blocks: VecDeque::new(),
            downloads: BlockDownload::default(),
            pool: RelayPool::default(),
            block_outputs: HashMap::new(),
            tx_requests: TxRequestTracker::default(),
            recent_rejects: RollingFilter::new(RECENT_REJECTS_CAP, RECENT_REJECTS_FP_RATE),
            recent_rejects_tip: BlockHash::all_zeros(),
            recent_confirmed: RollingFilter::new(RECENT_CONFIRMED_CAP, RECENT_CONFIRMED_FP_RATE),
            high_bandwidth: Default::default(),
            extra_txn: Default::default(),
            partials: HashMap::new(),
            fallbacks: VecDeque::new(),
            kept_pending: VecDeque::new(),
            defer_after_keep: false,
            generated_after_keep: false,
            progress: Default::default(),
            highest_fast_announce: 0,
            announcing_batch: false,
            compact_in_hand: None,
            last_inv_trigger: None,
            vouched_blocks: Default::default(),
            header_from_cmpct: false,
            restored_vouch: None,
        }
    }

    /// Hands over the configuration in force (after a reload).
    pub fn set_config(&mut self, config: Arc<NodeConfig>) {
        if !Arc::ptr_eq(&self.config, &config) {
            self.config = config;
        }
    }

    /// The header chain.
    pub fn chain(&self) -> &HeaderChain {
        &self.chain
    }

    /// The header chain, for loading headers.dat into it.
    pub fn chain_mut(&mut self) -> &mut HeaderChain {
        &mut self.chain
    }

    /// Whether the Manager announced `id`.
    pub fn has_peer(&self, id: PeerId) -> bool {
        self.peers.contains_key(&id)
    }

    /// The peers the core knows, in order.
    pub fn peer_ids(&self) -> Vec<PeerId> {
        let mut ids: Vec<PeerId> = self.peers.keys().copied().collect();
        ids.sort();
        ids
    }

    /// The highest best-chain block a validating node vouched for, with its height, if
    /// any: saved across restarts (`vouched.dat`), since what peers showed is not in
    /// headers.dat.
    pub fn vouched_tip(&self) -> Option<(u32, BlockHash)> {
        match self.vouched_height() {
            0 => None,
            h => self.chain.hash_at_height(h).map(|hash| (h, hash)),
        }
    }

    /// Restores a saved [`Self::vouched_tip`] (call before headers.dat loads): our own
    /// record, trusted up to the part loaded while the file loads, then only if that block
    /// is on the best chain.
    pub fn restore_vouched(&mut self, height: u32, hash: BlockHash) {
        self.restored_vouch = Some((height, hash));
    }

    /// The sync state.
    pub fn state(&self) -> SyncState {
        self.state
    }

    /// Hints from our best chain: a hash every [`HINT_INTERVAL`] heights.
    pub fn hints(&self) -> Vec<(u32, BlockHash)> {
        (1..=self.chain.height() / HINT_INTERVAL)
            .filter_map(|k| {
                let height = k * HINT_INTERVAL;
                self.chain.hash_at_height(height).map(|h| (height, h))
            })
            .collect()
    }

    /// Answers a question about the chain or the pool (the JSON-RPC's chain methods) from
    /// what Sync holds: the header tree, the kept blocks and the relay pool.
    pub fn query(&self, q: &ChainQuery, now: Instant) -> ChainAnswer {
        let kept = |hash: &BlockHash| self.blocks.iter().find(|k| k.hash == *hash);
        match q {
            ChainQuery::Summary => ChainAnswer::Summary(ChainSummary {
                tip: self.chain.tip(),
                height: self.chain.height(),
                header: self.chain.tip_header(),
                chainwork: self.chain.tip_work(),
                median_time_past: self.chain.tip_median_time_past(),
                lowest_kept: self
                    .blocks
                    .iter()
                    .filter(|k| self.chain.is_on_best_chain(&k.hash))
                    .filter_map(|k| self.chain.height_of(&k.hash))
                    .min(),
            }),
            ChainQuery::Header(hash) => ChainAnswer::Header(self.chain.header_and_work(hash).map(
                |(header, height, work)| {
                    let on_best = self.chain.is_on_best_chain(hash);
                    HeaderInfo {
                        header,
                        height,
                        chainwork: work,
                        median_time_past: self.chain.median_time_past_of(hash).unwrap_or(0),
                        best_height: on_best.then(|| self.chain.height()),
                        next: on_best
                            .then(|| self.chain.hash_at_height(height + 1))
                            .flatten(),
                        tx_count: kept(hash).map(|k| k.block.txdata.len()),
                    }
                },
            )),
            ChainQuery::HashAt(height) => ChainAnswer::Hash(self.chain.hash_at_height(*height)),
            ChainQuery::Tips => {
                let mut tips: Vec<ChainTip> = self
                    .chain
                    .tips()
                    .into_iter()
                    .enumerate()
                    .map(|(i, (hash, height, fork))| ChainTip {
                        hash,
                        height,
                        branch_len: height - fork.min(height),
                        // The first is the best tip; a branch's tip is "valid-headers" when
                        // we hold its block (meshd checks no scripts, so never "valid-fork").
                        status: if i == 0 {
                            "active"
                        } else if kept(&hash).is_some() {
                            "valid-headers"
                        } else {
                            "headers-only"
                        },
                    })
                    .collect();
                // Core's order: highest first.
                tips.sort_by(|a, b| {
                    b.height
                        .cmp(&a.height)
                        .then(a.branch_len.cmp(&b.branch_len))
                        .then(a.hash.cmp(&b.hash))
                });
                ChainAnswer::Tips(tips)
            }
            ChainQuery::Block(hash) => ChainAnswer::Block(
                kept(hash).map(|k| k.block.clone()),
                self.chain.contains(hash),
            ),
            ChainQuery::Pool => ChainAnswer::Pool(
                self.pool
                    .entries()
                    .map(|(txid, e)| PoolTxInfo {
                        txid: *txid,
                        wtxid: e.wtxid,
                        size: e.size,
                        weight: e.tx.weight().to_wu(),
                        age: now.saturating_duration_since(e.at),
                        fee_rate: e.fee_rate,
                    })
                    .collect(),
            ),
            ChainQuery::PoolTx(txid) => {
                ChainAnswer::PoolTx(self.pool.get(txid).map(|e| e.tx.clone()))
            }
        }
    }

    /// The status for metrics and the API (the actor adds the header file's error).
    pub fn status(&self, clock: Clock) -> SyncStatus {
        let best_peer = self
            .peers
            .values()
            .map(|p| p.hs.best_height)
            .max()
            .unwrap_or(0);
        let age = clock.unix.saturating_sub(self.chain.tip_header().time);
        let reading = self
            .progress
            .reading((!self.profile.is_regtest()).then_some(age));
        let syncing = self.state == SyncState::Syncing;
        SyncStatus {
            header_height: self.chain.height(),
            best_header_hash: self.chain.tip().to_string(),
            best_peer_height: best_peer,
            progress: header_sync::progress(self.chain.height(), age),
            headers_per_sec: reading.headers_per_sec.filter(|_| syncing),
            eta_secs: reading.eta.filter(|_| syncing).map(|d| d.as_secs()),
            sync_peer: self.sync_peer_label(),
            state: self.state,
            tx_pool: self.pool.len(),
            blocks_kept: self.blocks.len(),
            store_error: None,
        }
    }

    /// While headers sync, every [`crate::sync::progress::PROGRESS_LOG_INTERVAL`]: the
    /// height, the share done, the rate, the time left and the sync peer, in the log.
    fn report_progress(&mut self) {
        if self.state != SyncState::Syncing {
            self.progress.reset();
            return;
        }
        let (now, height) = (self.clock.now, self.chain.height());
        self.progress.observe(now, height);
        if !self.progress.log_due(now, height) {
            return;
        }
        let r = self.progress.reading(self.tip_age_estimate());
        let age = self.clock.unix.saturating_sub(self.chain.tip_header().time);
        let percent = header_sync::progress(height, age) * 100.0;
        let peer = self.sync_peer_label();
        info!(
            height,
            percent = format_args!("{percent:.1}"),
            headers_per_sec = r.headers_per_sec.map(|v| v.round() as u64),
            remaining = r.remaining,
            eta_secs = r.eta.map(|d| d.as_secs()),
            sync_peer = peer.as_deref(),
            "headers sync progress"
        );
    }

    /// The tip's age, where it estimates the headers still to come (not on regtest, whose
    /// 2011 genesis would promise years of blocks).
    fn tip_age_estimate(&self) -> Option<u32> {
        (!self.profile.is_regtest())
            .then(|| self.clock.unix.saturating_sub(self.chain.tip_header().time))
    }

    /// The sync peer's address, as logs and the API name peers.
    fn sync_peer_label(&self) -> Option<String> {
        self.header_sync
            .sync_peer()
            .and_then(|id| self.peers.get(&id))
            .map(|p| p.label.clone())
    }

    /// headers.dat starts or stops loading. While it loads, sync waits; once loaded, the
    /// state follows the chain (call [`Self::start_sync`] after what waited is handled).
    pub fn set_loading(&mut self, clock: Clock, loading: bool) -> Vec<Action> {
        self.clock = clock;
        self.loading = loading;
        self.update_state();
        self.finish()
    }

    /// Starts a sync session when one is due (after loading).
    pub fn start_sync(&mut self, clock: Clock) -> Vec<Action> {
        self.clock = clock;
        self.maybe_start_sync(None);
        self.finish()
    }

    /// A peer finished its handshake. A peer announced twice (a restarted Sync is told of
    /// every live peer, and a handshake may complete meanwhile) keeps its first record.
    pub fn peer_up(&mut self, clock: Clock, new: NewPeer) -> Vec<Action> {
        self.clock = clock;
        if self.peers.contains_key(&new.id) {
            return Vec::new();
        }
        let id = new.id;
        let claimed = new.start_height.max(0) as u32;
        let next_flush = if new.inbound {
            next_inv_to_inbounds(
                &mut self.next_inv_to_inbounds,
                &mut self.rng,
                new.network,
                clock.now,
            )
        } else {
            clock.now + poisson(&mut self.rng, TRICKLE_OUTBOUND)
        };
        let peer = SyncPeer {
            id,
            addr: new.addr,
            network: new.network,
            label: new.label,
            hs: PeerHeaders::new(new.inbound, claimed),
            version: new.version,
            wtxid_relay: new.wtxid_relay,
            presync: None,
            wants_headers: false,
            relay: new.relay,
            block_relay_only: new.block_relay_only,
            known: RollingFilter::new(KNOWN_INV_CAP, KNOWN_INV_FP_RATE),
            pending_tx: Vec::new(),
            feefilter: 0,
            bloom: None,
            next_flush,
            reported_in_flight: 0,
            cmpct: Default::default(),
            inv_triggered_getheaders: false,
            services: new.services,
            best_known: None,
            best_header_sent: None,
            last_unknown: None,
            vouched_tip: None,
            announced_blocks: VecDeque::new(),
            trusted: !self.permissions_of(new.addr.ip()).is_empty(),
            headers_asked_recent: false,
        };
        if self.state == SyncState::Synced {
            send_sendheaders(&mut self.out, &peer);
        }
        let height = self.chain.height();
        let tip = self.chain.tip();
        if claimed < height && self.may_announce_block(&tip) {
            // It says it is behind: tell it of our tip (an announcement made while it was
            // handshaking never reached it), if a validating peer vouched for it (else the
            // vouching announces it to this peer too). Its claim costs us one message.
            self.out
                .send(id, NetworkMessage::Inv(vec![Inventory::Block(tip)]));
        }
        self.peers.insert(id, Box::new(peer));
        self.offer_compact_blocks(id, new.version, new.services);
        self.ask_headers_once_recent();
        self.maybe_start_sync(None);
        self.finish()
    }

    /// Core's SendMessages: while our best header is recent, every peer is asked for headers
    /// once, from our tip's parent so that the answer shows where it is, whether it came
    /// now or while we were in initial sync (else peers met then never show us their best
    /// block, and the blocks at the end of initial sync have one source).
    fn ask_headers_once_recent(&mut self) {
        if !self.tip_younger_than(RECENT_HEADER_AGE) {
            return;
        }
        let waiting: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| !p.headers_asked_recent)
            .map(|p| p.id)
            .collect();
        if waiting.is_empty() {
            return;
        }
        let locator = self
            .chain
            .locator_from(self.chain.height().saturating_sub(1));
        for id in waiting {
            // Held back only by a request in flight, whose answer does as well.
            self.maybe_getheaders(id, locator.clone());
            if let Some(p) = self.peers.get_mut(&id) {
                p.headers_asked_recent = true;
            }
        }
    }

    /// A peer went away: what it was asked for is asked of others.
    pub fn peer_down(&mut self, clock: Clock, id: PeerId) -> Vec<Action> {
        self.clock = clock;
        let Some(gone) = self.peers.remove(&id) else {
            return Vec::new();
        };
        // What it vouched for stays vouched for (a validated block stays validated): our
        // answers and announcements do not shrink because a peer left.
        if let Some(v) = gone.vouched_tip {
            self.vouched_blocks.insert(v);
        }
        self.tx_requests.peer_gone(id);
        self.compact_peer_gone(id);
        self.poll_tx_requests();
        let (chain, peers) = (&self.chain, &self.peers);
        let chain_kind = self.profile.chain;
        let out = self.downloads.on_peer_gone(
            id,
            |b| blocks::block_sources(chain, chain_kind, peers, b),
            clock.now,
        );
        self.apply_downloads(out);
        if self.header_sync.end(id) {
            self.maybe_start_sync(None);
        }
        if let Some(segments) = self.segments.as_mut() {
            segments.peer_gone(id);
            self.schedule_segments();
        }
        self.update_state();
        self.finish()
    }

    /// A message from a peer the core knows (others are ignored: the actor holds them until
    /// the peer's arrival).
    pub fn input(&mut self, clock: Clock, id: PeerId, input: SyncInput) -> Vec<Action> {
        self.clock = clock;
        if self.peers.contains_key(&id) {
            self.on_input(id, input);
        }
        self.finish()
    }

    /// A transaction submitted here (the operator's own).
    pub fn submit_tx(&mut self, clock: Clock, tx: Transaction) -> Vec<Action> {
        self.clock = clock;
        self.on_tx(None, tx);
        self.finish()
    }

    /// The timer: stalls, expiry and trickle.
    pub fn tick(&mut self, clock: Clock) -> Vec<Action> {
        self.clock = clock;
        self.on_tick();
        self.finish()
    }

    /// Splits the handling of a new block in two: a step returns the `cmpctblock` push to
    /// high-bandwidth peers without the block's bookkeeping (its whole frame, the relay
    /// pool's removals, the event, ordinary announcements: a few ms for a block of 2,000
    /// transactions), which [`Self::run_deferred`] then does. An actor turns this on and
    /// calls `run_deferred` as soon as it has sent a step's actions (and yielded, so the
    /// Connections woken run first), so the push leaves before the work; off (the default),
    /// every step does it all. Turning it off leaves pending work to `run_deferred`.
    pub fn defer_bookkeeping(&mut self, on: bool) {
        self.defer_after_keep = on;
    }

    /// Whether [`Self::run_deferred`] has work.
    pub fn has_deferred(&self) -> bool {
        !self.kept_pending.is_empty()
    }

    /// The bookkeeping a step left (see [`Self::defer_bookkeeping`]).
    pub fn run_deferred(&mut self, clock: Clock) -> Vec<Action> {
        self.clock = clock;
        self.run_after_keep();
        self.finish()
    }

    /// Mines `n` regtest blocks on our tip.
    pub fn generate(
        &mut self,
        clock: Clock,
        n: u32,
    ) -> (Result<Vec<BlockHash>, String>, Vec<Action>) {
        self.generate_with(clock, n, Vec::new())
    }

    /// As [`Self::generate`], with `txs` after the coinbase of the first block.
    pub fn generate_with(
        &mut self,
        clock: Clock,
        n: u32,
        txs: Vec<Transaction>,
    ) -> (Result<Vec<BlockHash>, String>, Vec<Action>) {
        self.generate_order(
            clock,
            crate::msg::GenerateOrder {
                blocks: n,
                txs,
                payout: None,
            },
        )
    }

    /// Mines what `order` says on our tip (regtest).
    pub fn generate_order(
        &mut self,
        clock: Clock,
        order: crate::msg::GenerateOrder,
    ) -> (Result<Vec<BlockHash>, String>, Vec<Action>) {
        self.clock = clock;
        let result = self.generate_blocks(order.blocks, order.txs, order.payout.as_deref());
        (result, self.finish())
    }

    /// A `getheaders` while headers.dat loads, answered at once when the part loaded can
    /// answer it in full: the peer's tip is known and a whole batch (or the batch up to its
    /// stop hash) follows it. `None`: it waits for the whole chain.
    pub fn answer_while_loading(&mut self, id: PeerId, m: &GetHeadersMessage) -> Option<Action> {
        if !self.peers.contains_key(&id)
            || !m
                .locator_hashes
                .first()
                .is_some_and(|h| self.chain.is_on_best_chain(h))
        {
            return None;
        }
        let mut headers =
            self.chain
                .headers_after(&m.locator_hashes, m.stop_hash, MAX_HEADERS_PER_MESSAGE);
        self.keep_vouched(&mut headers);
        let complete = headers.len() == MAX_HEADERS_PER_MESSAGE
            || headers.last().is_some_and(|h| {
                m.stop_hash != BlockHash::all_zeros() && h.block_hash() == m.stop_hash
            });
        if !complete {
            return None;
        }
        // As the ordinary answer does (Core's pindexBestHeaderSent): the peer now has them.
        let sent = headers.last().map(|h| h.block_hash());
        if let (Some(p), Some(sent)) = (self.peers.get_mut(&id), sent) {
            p.set_header_sent(sent);
        }
        Some(Action::Send(id, NetworkMessage::Headers(headers)))
    }

    /// Cuts consecutive best-chain `headers` (an answer) above the vouched height.
    fn keep_vouched(&self, headers: &mut Vec<Header>) {
        let Some(first) = headers.first() else {
            return;
        };
        let start = self
            .chain
            .height_of(&first.prev_blockhash)
            .map_or(1, |h| h + 1);
        let keep = (self.vouched_height() + 1).saturating_sub(start) as usize;
        if headers.len() > keep {
            metrics::counter!("meshd_headers_withheld_total")
                .increment((headers.len() - keep) as u64);
            headers.truncate(keep);
        }
    }

    fn permissions_of(&self, ip: std::net::IpAddr) -> Permissions {
        permissions_of(&self.config.whitelist, ip)
    }

    /// Whether our best header is at most `secs` old.
    fn tip_younger_than(&self, secs: u32) -> bool {
        self.chain.tip_header().time >= self.clock.unix.saturating_sub(secs)
    }

    /// Core's `IsInitialBlockDownload`, from our own chain alone: until the tip has the
    /// minimum chain work and is at most `max-tip-age` old; once over, over until a restart.
    fn in_ibd(&mut self) -> bool {
        if self.initial_sync.is_over() {
            return false;
        }
        let max_age = self.config.max_tip_age.as_secs().min(u32::MAX as u64) as u32;
        let age = self.clock.unix.saturating_sub(self.chain.tip_header().time);
        let ibd = self
            .initial_sync
            .check(self.chain.tip_work(), self.min_work(), age, max_age);
        if !ibd {
            info!(height = self.chain.height(), tip = %self.chain.tip(), "initial sync over: the tip is recent and has the minimum work");
        }
        ibd
    }

    /// Synced: out of initial sync with no sync session running; syncing while one runs;
    /// idle otherwise (in initial sync, nobody to sync from). Entering synced is logged,
    /// published and tells every peer to announce by headers (BIP130).
    fn update_state(&mut self) {
        if self.loading {
            self.state = SyncState::Loading;
            return;
        }
        let ibd = self.in_ibd();
        let active =
            self.header_sync.sync_peer().is_some() || self.segments.is_some() || self.catching_up();
        let state = header_sync::sync_state(false, ibd, active);
        if state == SyncState::Synced && self.state != SyncState::Synced {
            info!(height = self.chain.height(), tip = %self.chain.tip(), "headers synced");
            for p in self.peers.values() {
                send_sendheaders(&mut self.out, p);
            }
            self.out.event(NodeEvent::HeadersSynced {
                height: self.chain.height(),
                tip: self.chain.tip().to_string(),
                synced: true,
            });
        }
        self.state = state;
    }

    /// Ends a block-relay-only connection that relayed a transaction to us, as Core does
    /// (no score: the peer broke what it agreed to, it did not lie). True when it was one.
    fn refuse_tx_on_block_relay(&mut self, id: PeerId, what: &'static str) -> bool {
        let Some(p) = self.peers.get(&id).filter(|p| p.block_relay_only) else {
            return false;
        };
        metrics::counter!("meshd_block_relay_violations_total").increment(1);
        debug!(peer = %p.addr, id = %id, what, "transaction relay on a block-relay-only connection; disconnecting");
        self.out.push(Action::Disconnect(
            id,
            DisconnectReason::Protocol(format!("{what} on a block-relay-only connection")),
        ));
        true
    }

    /// Charges `id` for what it sent (the Connection keeps the score).
    fn punish(&mut self, id: PeerId, kind: &'static str) {
        if let Some(p) = self.peers.get(&id) {
            warn!(peer = %p.addr, id = %id, kind, "peer sent an invalid header or block");
            self.out.push(Action::Punish(id, kind));
        }
    }

    /// The step's actions, with each peer's blocks in flight where that changed (the
    /// Manager keeps an extra block-relay-only peer that is delivering a block, as Core).
    fn finish(&mut self) -> Vec<Action> {
        for (id, p) in self.peers.iter_mut() {
            let n = self.downloads.in_flight_to(*id);
            if p.reported_in_flight != n {
                p.reported_in_flight = n;
                self.out.push(Action::BlocksInFlight(*id, n));
            }
        }
        self.out.take()
    }

    /// Handles one message from a peer Sync knows.
    fn on_input(&mut self, id: PeerId, input: SyncInput) {
        match input {
            SyncInput::Headers(h) => self.on_headers(id, h),
            SyncInput::Inv(inv) => self.on_inv(id, inv),
            SyncInput::GetHeaders(m) => {
                let headers = if m.locator_hashes.is_empty() {
                    // Core: a null locator asks for the stop header alone, if it is on our
                    // best chain; otherwise nothing is sent.
                    match self.chain.height_of(&m.stop_hash) {
                        Some(h)
                            if self.chain.is_on_best_chain(&m.stop_hash)
                                && h <= self.vouched_height() =>
                        {
                            self.chain.header_at_height(h).into_iter().collect()
                        }
                        _ => return,
                    }
                } else {
                    let mut headers = self.chain.headers_after(
                        &m.locator_hashes,
                        m.stop_hash,
                        MAX_HEADERS_PER_MESSAGE,
                    );
                    self.keep_vouched(&mut headers);
                    headers
                };
                if let Some(p) = self.peers.get_mut(&id) {
                    // Core: the last header sent, or with none (it has our tip, or all we
                    // show) where its locator met our best chain, which it has.
                    let sent = headers.last().map(|h| h.block_hash()).or_else(|| {
                        m.locator_hashes
                            .iter()
                            .find(|h| self.chain.is_on_best_chain(h))
                            .copied()
                    });
                    if let Some(sent) = sent {
                        p.set_header_sent(sent);
                    }
                    self.out.send(p.id, NetworkMessage::Headers(headers));
                }
            }
            SyncInput::GetBlocks(m) => {
                let mut headers =
                    self.chain
                        .headers_after(&m.locator_hashes, m.stop_hash, MAX_BLOCKS_INV);
                self.keep_vouched(&mut headers);
                let hashes: Vec<Inventory> = headers
                    .iter()
                    .map(|h| Inventory::Block(h.block_hash()))
                    .collect();
                if let (false, Some(p)) = (hashes.is_empty(), self.peers.get(&id)) {
                    self.out.send(p.id, NetworkMessage::Inv(hashes));
                }
            }
            SyncInput::GetData(items) => self.on_getdata(id, items),
            SyncInput::Block(b) => self.on_block(id, *b),
            SyncInput::Tx(tx) => {
                if !self.refuse_tx_on_block_relay(id, "tx") {
                    self.on_tx(Some(id), *tx)
                }
            }
            SyncInput::SendCmpct { announce, version } => self.on_sendcmpct(id, announce, version),
            SyncInput::CmpctBlock(c) => self.on_cmpctblock(id, *c),
            SyncInput::BlockTxn(t) => self.on_blocktxn(id, *t),
            SyncInput::GetBlockTxn(r) => self.on_getblocktxn(id, r),
            SyncInput::SendHeaders => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.wants_headers = true;
                }
            }
            SyncInput::FilterLoad(f) => match BloomFilter::load(&f) {
                Ok(filter) => {
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.bloom = Some(filter);
                    }
                }
                Err(_) => self.punish(id, "bloom_too_large"),
            },
            SyncInput::FilterAdd(data) => {
                // Core: too large, or no filter loaded, is a "bad filteradd message".
                let bad = self
                    .peers
                    .get_mut(&id)
                    .is_some_and(|p| p.bloom.as_mut().is_none_or(|b| b.insert(&data).is_err()));
                if bad {
                    self.punish(id, "bloom_too_large");
                }
            }
            SyncInput::FilterClear => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.bloom = None;
                }
            }
            SyncInput::FeeFilter(rate) => {
                // Core keeps a fee filter only within MoneyRange; another is ignored.
                let in_range = (0..=bitcoin::Amount::MAX_MONEY.to_sat() as i64).contains(&rate);
                if let (true, Some(p)) = (in_range, self.peers.get_mut(&id)) {
                    p.feefilter = rate as u64;
                }
            }
            SyncInput::BlockTooLarge(block) => {
                // Its reconstruction from this peer ends with it (the `blocktxn`, or the
                // whole block in its place, was above our limit).
                if let Some(p) = self.partials.remove(&(block, id)) {
                    compact::count_outcome("too_large", p.via);
                }
                self.block_not_delivered(block, id, Failure::TooLarge)
            }
            SyncInput::CompactBlockUnread(block) => {
                // Its header, asked for as an unknown block's is (no vouch, no fetch: the
                // block is above our limit wherever it comes from).
                if !self.chain.contains(&block) {
                    let locator = self.chain.locator();
                    self.maybe_getheaders(id, locator);
                }
            }
            SyncInput::FirstRequestedTooLarge => {
                if let Some(block) = self.downloads.first_asked_of(id) {
                    self.block_not_delivered(block, id, Failure::TooLarge);
                }
            }
            SyncInput::NotFound(items) => {
                for i in items {
                    match i {
                        Inventory::Block(h)
                        | Inventory::WitnessBlock(h)
                        | Inventory::CompactBlock(h) => {
                            self.block_not_delivered(h, id, Failure::NotFound);
                        }
                        Inventory::Transaction(t) | Inventory::WitnessTransaction(t) => {
                            self.tx_requests.not_found(id, &t.to_byte_array());
                        }
                        Inventory::WTx(w) => {
                            self.tx_requests.not_found(id, &w.to_byte_array());
                        }
                        _ => {}
                    }
                }
                self.poll_tx_requests();
            }
        }
    }

    fn on_tick(&mut self) {
        let now = self.clock.now;
        self.report_progress();
        self.poll_tx_requests();
        self.ask_headers_once_recent();
        self.ask_for_vouches();
        if !self.downloads.is_idle() {
            let lowest = self.chain.height().saturating_sub(self.fetch_window() - 1);
            let (chain, peers, kept) = (&self.chain, &self.peers, &self.blocks);
            let chain_kind = self.profile.chain;
            // A block no longer wanted (reorganised away, kept meanwhile) has no source.
            let wanted = |b: &BlockHash| {
                chain.is_on_best_chain(b)
                    && chain.height_of(b).is_some_and(|h| h >= lowest && h > 0)
                    && !kept.iter().any(|k| k.hash == *b)
            };
            let out = self.downloads.on_tick(now, |b| {
                if wanted(b) {
                    blocks::block_sources(chain, chain_kind, peers, b)
                } else {
                    Vec::new()
                }
            });
            self.apply_downloads(out);
        }
        self.fetch_missing_blocks();
        self.prune_partials();
        if let Some(segments) = self.segments.as_mut() {
            for peer in segments.expire(now) {
                metrics::counter!("meshd_header_segments_total", "outcome" => "expired")
                    .increment(1);
                debug!(%peer, "segment request unanswered; asking another peer");
            }
            self.schedule_segments();
        }
        let config = self.config.clone();
        let tip_recent = self.tip_younger_than(RECENT_HEADER_AGE);
        let peer_state = self
            .header_sync
            .sync_peer()
            .and_then(|id| self.peers.get_mut(&id))
            .map(|p| &mut p.hs);
        match self
            .header_sync
            .check(now, config.sync_stall_timeout, tip_recent, peer_state)
        {
            Some(SessionEnd::Stalled(id)) => {
                warn!(peer = %id, "headers sync stalled; switching peers");
                metrics::counter!("meshd_sync_stalls_total").increment(1);
                self.set_pipelining(id, false);
                self.maybe_start_sync(Some(id));
            }
            Some(SessionEnd::MissedDeadline(id, expected)) => {
                warn!(peer = %id, expected, ours = self.chain.height(),
                      "sync peer did not bring our tip up to date in time; replacing it");
                metrics::counter!("meshd_sync_peer_failures_total", "reason" => "timeout")
                    .increment(1);
                self.set_pipelining(id, false);
                self.maybe_start_sync(Some(id));
            }
            None => {}
        }
        // A peer that streamed us headers went quiet (its stream is over), or the chain
        // changed without a peer (mined here): the state follows within a tick.
        self.update_state();
        self.pool.expire(now, config.tx_pool_max_age);
        self.flush_trickle();
    }

    fn generate_blocks(
        &mut self,
        n: u32,
        txs: Vec<Transaction>,
        payout: Option<&bitcoin::Script>,
    ) -> Result<Vec<BlockHash>, String> {
        if !self.profile.is_regtest() {
            return Err("generate works on regtest only".into());
        }
        let mut hashes = Vec::new();
        let mut txs = Some(txs).filter(|t| !t.is_empty());
        for _ in 0..n {
            let tip = self.chain.tip_header();
            let height = self.chain.height() + 1;
            // Core's rule (and so any number of blocks stays within the future limit): the
            // later of our clock and one second past the median time of the last eleven.
            let time = self
                .clock
                .unix
                .max(self.chain.tip_median_time_past().saturating_add(1));
            let mut block = match payout {
                Some(script) => crate::sync::mine::regtest_block_paying(
                    &tip,
                    height,
                    time,
                    self.extra_nonce,
                    script,
                ),
                None => crate::sync::mine::regtest_block(&tip, height, time, self.extra_nonce),
            };
            if let Some(txs) = txs.take() {
                block.txdata.extend(txs);
                let merkle = block
                    .compute_merkle_root()
                    .ok_or("a block with no transactions")?;
                block.header =
                    crate::sync::chain::headers::mine_header(&tip, merkle, time, tip.bits);
                crate::sync::block_check::check_block(&block, self.profile.chain)
                    .map_err(|e| format!("generated block refused: {e}"))?;
            }
            let hash = block.block_hash();
            self.chain
                .accept(&block.header, self.clock.unix.saturating_add(60))
                .map_err(|e| format!("generated block refused: {e}"))?;
            self.out.push(Action::Store(vec![(block.header, hash)]));
            // Mined here: ours to vouch for.
            self.vouched_blocks.insert(hash);
            let arrival = compact::Arrival {
                via: crate::events::BlockVia::Local,
                ..Default::default()
            };
            self.keep_and_publish(block, None, arrival);
            hashes.push(hash);
        }
        if self.kept_pending.is_empty() {
            self.generated_tip();
        } else {
            // After the blocks' own events, as when nothing is deferred.
            self.generated_after_keep = true;
        }
        Ok(hashes)
    }

    /// A mined tip is recent: the node may be out of initial sync now.
    pub(super) fn generated_tip(&mut self) {
        self.update_state();
        self.out.event(NodeEvent::HeadersSynced {
            height: self.chain.height(),
            tip: self.chain.tip().to_string(),
            synced: self.state == SyncState::Synced,
        });
    }
}
