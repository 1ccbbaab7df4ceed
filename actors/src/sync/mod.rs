//! The Sync actor: the header chain, headers-first sync, block and transaction relay, and
//! regtest block generation. It learns which peers exist from the Manager alone.
//!
//! - **Headers-first sync.** An outbound peer where one exists (then the most claimed start
//!   height) is asked for headers with a block locator; full batches (2000) are followed by
//!   the next request until a batch comes back short. A sync peer that does not answer within
//!   `sync-stall-timeout`, stops short of the height it claimed, or misses its deadline
//!   (15 min + 1 ms per header) is replaced and not chosen again; the node reads as synced
//!   only when no other peer claims more. Once caught up, peers from 70012 are sent
//!   `sendheaders` (BIP130); an `inv` for an unknown block leads to `getheaders`. meshd
//!   serves `getheaders` and `getblocks` from its chain.
//! - **Headers** are validated by [`HeaderChain`] and appended to the crash-safe
//!   [`HeaderStore`]. A chain below the anti-DoS work (the network's minimum chain work, or
//!   our tip less 144 blocks) goes through presync first ([`chain::presync`]): nothing of it
//!   is stored until it has shown the work. Invalid headers cost the sender (see
//!   [`crate::peer::misbehavior`]).
//! - **Blocks** (`--blocks tip`): blocks announced at the tip are fetched (at most 16 in
//!   flight per peer, asked of another announcer when one expires or its peer leaves), checked
//!   against their header ([`block_check`]: merkle root, CVE-2012-2459 mutation, witness
//!   commitment), `BlockReceived` is published, the last `keep-blocks` are kept, serialized
//!   once, to answer `getdata`, and the block is announced onwards; `notfound` otherwise.
//! - **Transactions** (`relay.rs`): `inv` → `getdata` → `tx` (by wtxid with BIP339 peers)
//!   through Core's context-free checks ([`tx_check`]) into a bounded, expiring relay pool
//!   that evicts its lowest-feerate, then oldest, entry when full → announced to peers that
//!   asked for relay, at most once per peer (a rolling known-inventory filter), after a
//!   Poisson delay (Core's trickling; off with `--no-trickle`). Requests in flight are
//!   tracked per peer ([`requests`]). A peer's `feefilter` is applied whenever the fee is
//!   known (every input spends a pooled transaction's output or one of a kept block, found in
//!   an index); meshd has no UTXO set, so for other transactions the fee is unknown.
//! - **Regtest generation**: [`SyncMsg::Generate`] mines blocks with a BIP34 coinbase and
//!   trivial proof of work on our tip and announces them.

pub mod block_check;
pub mod blocks;
pub mod bloom;
pub mod chain;
pub mod header_sync;
pub mod hints;
pub mod intake;
pub mod mine;
pub mod pool;
mod relay;
pub mod requests;
pub mod tx_check;
pub mod txrequest;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::block::{Block, Header};
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::{GetHeadersMessage, Inventory};
use bitcoin::{BlockHash, Txid};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, error, info, warn};

use crate::peer::DisconnectReason;

use crate::constants::MAX_HEADERS_PER_MESSAGE;
use crate::context::{unix_now, NodeContext};
use crate::events::NodeEvent;
use crate::msg::{ConnectionMsg, HashedHeaders, SyncInput, SyncMsg, SyncState, SyncStatus};
use crate::network::Chain;
use crate::peer::handshake::SENDHEADERS_VERSION;
use crate::peer::RollingFilter;
use crate::shared::peers::PeerId;
use crate::sync::bloom::BloomFilter;
use crate::sync::chain::store::{HeaderLoad, HeaderStore, COMPACT_STALE_SHARE, LOAD_STEP_RECORDS};
use crate::sync::chain::HeaderChain;
use crate::wire::Message;
use blocks::{BlockDownload, Failure, Outcome, MAX_BLOCKS_IN_FLIGHT_PER_PEER};
use chain::presync::{HeadersPresync, PresyncError, PresyncStep};
use header_sync::{HeaderSync, InitialSync, PeerHeaders, SessionEnd, POW_TARGET_SPACING};
use hints::{SegmentAnswer, SegmentSync, HINT_INTERVAL};
use intake::Route;
use pool::RelayPool;
use txrequest::TxRequestTracker;

/// Core's `CanDirectFetch`: blocks of new headers are fetched at once only while our tip is
/// at most this many block intervals old (further behind, they are history, not the tip).
const DIRECT_FETCH_SPACINGS: u32 = 20;
/// While our best header is at most this old, every new peer is asked for headers, not only
/// the sync peer (Core: 24 h, in `SendMessages`).
const RECENT_HEADER_AGE: u32 = 24 * 60 * 60;

/// How often a header file that could not be written (a full disk) is rewritten from the
/// chain: each try writes the whole best chain, so not more often than this.
const STORE_RETRY_INTERVAL: Duration = Duration::from_secs(5);

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
/// Messages Sync holds from peers the Manager has not announced yet.
///
/// # Security
/// Only the first few messages after a handshake can overtake the Manager's PeerUp; the cap
/// keeps a burst from a peer that is never announced from growing without bound.
const MAX_EARLY_INPUTS: usize = 256;
/// How long such a message waits for its PeerUp before it is dropped.
const EARLY_INPUT_TTL: Duration = Duration::from_secs(5);
/// Blocks of work below our tip a chain may lack and still be stored without presync (Core's
/// anti-DoS threshold: a short fork near the tip is normal, a long low-work one is not).
const ANTI_DOS_RECENT_BLOCKS: u32 = 144;
/// Messages held while headers.dat loads (handled once it is in).
///
/// # Security
/// Each peer's share is bounded by its reader credit already; this caps the sum however many
/// peers connect during the load (which takes about a second for mainnet's chain).
const MAX_HELD_WHILE_LOADING: usize = 10_000;
/// How often the Sync actor checks stalls, expiry and trickle timers.
const SYNC_TICK: Duration = Duration::from_millis(100);

/// How long after a peer leaves freed memory is handed back to the system: long enough for
/// its last messages to be dropped, and at most one release per this long however many peers
/// come and go.
const RELEASE_MEMORY_DELAY: Duration = Duration::from_secs(1);

/// What Sync knows of one peer (Core's per-peer `Peer` and `CNodeState`): what it announced
/// and sent, what we asked of it and when.
struct SyncPeer {
    addr: SocketAddr,
    actor: ActorRef<ConnectionMsg>,
    /// What it showed of its chain, what it was asked for and when, its sync-peer record.
    hs: PeerHeaders,
    /// Its protocol version.
    version: u32,
    /// It sent `wtxidrelay` (BIP339): transactions are announced and requested by wtxid.
    wtxid_relay: bool,
    /// Its chain is being presynced (it has not shown enough work yet).
    presync: Option<HeadersPresync>,
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
}

impl SyncPeer {
    fn knows(&self, h: &[u8; 32]) -> bool {
        self.known.contains(h)
    }
    fn learn(&mut self, h: [u8; 32]) {
        self.known.insert(&h);
    }
    /// BIP130's `sendheaders`, to peers whose version understands it (Core: from 70012).
    fn send_sendheaders(&self) {
        if self.version >= SENDHEADERS_VERSION {
            self.send(NetworkMessage::SendHeaders);
        }
    }

    fn send(&self, m: NetworkMessage) {
        let _ = self.actor.cast(ConnectionMsg::Send(Message::Network(m)));
    }
}

/// The Sync actor.
pub struct Sync;

/// A message that overtook its peer's PeerUp, with its share of the peer's reader credit.
struct EarlyInput {
    id: PeerId,
    at: Instant,
    input: SyncInput,
    credit: Option<OwnedSemaphorePermit>,
}

/// headers.dat being loaded, and what waits for it.
struct Loading {
    load: HeaderLoad,
    started: Instant,
    /// Messages that need the whole chain, in arrival order.
    held: VecDeque<SyncMsg>,
}

/// A block kept to answer `getdata`: decoded (for filtered blocks and fees) and serialized
/// once as a whole `block` frame, shared by every peer it is sent to.
struct KeptBlock {
    hash: BlockHash,
    block: Arc<Block>,
    frame: Arc<[u8]>,
}

/// State of the Sync actor.
pub struct SyncActorState {
    ctx: Arc<NodeContext>,
    /// When to hand freed memory back to the system (set when a peer leaves).
    release_memory_at: Option<Instant>,
    /// When a failed header file is next rewritten from the chain.
    store_retry_at: Option<Instant>,
    chain: HeaderChain,
    store: Option<HeaderStore>,
    /// Set while headers.dat loads (see [`SyncMsg::LoadStep`]).
    loading: Option<Loading>,
    /// Headers sync from many peers at once along the header hints, while it runs.
    segments: Option<SegmentSync>,
    /// The hints turned out wrong (or no peer could serve them): not used again.
    hints_off: bool,
    peers: HashMap<PeerId, SyncPeer>,
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
    /// Txids and wtxids of the transactions of blocks received since the last reorganisation.
    recent_confirmed: RollingFilter,
    /// Messages from peers not yet announced by the Manager, oldest first.
    early: VecDeque<EarlyInput>,
    /// This node's coinbase tag for regtest blocks it generates (random per start).
    extra_nonce: u32,
    timer: Option<tokio::task::JoinHandle<()>>,
}

/// Peers that have `block`, outbound first: those that announced it, or that showed us a
/// best header at least as high on our chain (Core: the block is an ancestor of the peer's
/// best known block).
fn block_sources(
    chain: &HeaderChain,
    peers: &HashMap<PeerId, SyncPeer>,
    block: &BlockHash,
) -> Vec<PeerId> {
    let key = block.to_byte_array();
    let height = chain
        .is_on_best_chain(block)
        .then(|| chain.height_of(block))
        .flatten();
    let mut sources: Vec<(bool, PeerId)> = peers
        .iter()
        .filter(|(_, p)| p.knows(&key) || height.is_some_and(|h| p.hs.best_height >= h))
        .map(|(id, p)| (p.hs.inbound, *id))
        .collect();
    sources.sort();
    sources.into_iter().map(|(_, id)| id).collect()
}

fn now_u32() -> u32 {
    unix_now().clamp(0, u32::MAX as i64) as u32
}

fn poisson(avg: Duration) -> Duration {
    let u: f64 = rand::random::<f64>().max(1e-12);
    avg.mul_f64(-u.ln()).min(avg * 10)
}

impl SyncActorState {
    fn publish_status(&self) {
        let best_peer = self
            .peers
            .values()
            .map(|p| p.hs.best_height)
            .max()
            .unwrap_or(0);
        let status = SyncStatus {
            header_height: self.chain.height(),
            best_header_hash: self.chain.tip().to_string(),
            best_peer_height: best_peer,
            progress: self.progress(),
            state: self.state,
            tx_pool: self.pool.len(),
            blocks_kept: self.blocks.len(),
            store_error: self
                .store
                .as_ref()
                .and_then(|s| s.failure())
                .map(str::to_string),
        };
        if let Ok(mut s) = self.ctx.sync_status.write() {
            *s = status;
        }
    }

    /// Asks `id` for headers after `locator`, whatever was asked before (a presync's next
    /// batch, the sync peer's next batch: they follow an answer).
    fn getheaders_from(&mut self, id: PeerId, locator: Vec<BlockHash>) {
        let version = self.ctx.profile.protocol_version;
        if let Some(p) = self.peers.get_mut(&id) {
            p.hs.asked(Instant::now());
            p.send(NetworkMessage::GetHeaders(GetHeadersMessage {
                version,
                locator_hashes: locator,
                stop_hash: BlockHash::all_zeros(),
            }));
        }
    }

    /// Core's `MaybeSendGetHeaders`: asks `id` for headers after `locator` unless it was
    /// asked less than [`header_sync::HEADERS_RESPONSE_TIME`] ago and has not answered. True when sent.
    fn maybe_getheaders(&mut self, id: PeerId, locator: Vec<BlockHash>) -> bool {
        let Some(p) = self.peers.get_mut(&id) else {
            return false;
        };
        if !p.hs.try_ask(Instant::now()) {
            metrics::counter!("meshd_getheaders_suppressed_total").increment(1);
            return false;
        }
        p.send(NetworkMessage::GetHeaders(GetHeadersMessage {
            version: self.ctx.profile.protocol_version,
            locator_hashes: locator,
            stop_hash: BlockHash::all_zeros(),
        }));
        true
    }

    /// Whether some peer is streaming us full header batches and has not let our request
    /// for the next one go unanswered for [`header_sync::HEADERS_RESPONSE_TIME`].
    fn catching_up(&self) -> bool {
        let now = Instant::now();
        self.peers.values().any(|p| p.hs.streaming(now))
    }

    /// Whether our best header is at most `secs` old.
    fn tip_younger_than(&self, secs: u32) -> bool {
        self.chain.tip_header().time >= now_u32().saturating_sub(secs)
    }

    /// Core's `IsInitialBlockDownload`, from our own chain alone: until the tip has the
    /// minimum chain work and is at most `max-tip-age` old; once over, over until a restart.
    fn in_ibd(&mut self) -> bool {
        if self.initial_sync.is_over() {
            return false;
        }
        let max_age = self.ctx.config().max_tip_age.as_secs().min(u32::MAX as u64) as u32;
        let age = now_u32().saturating_sub(self.chain.tip_header().time);
        let ibd = self
            .initial_sync
            .check(self.chain.tip_work(), self.min_work(), age, max_age);
        if !ibd {
            info!(height = self.chain.height(), tip = %self.chain.tip(), "initial sync over: the tip is recent and has the minimum work");
        }
        ibd
    }

    /// Header sync progress from our own chain (see [`header_sync::progress`]).
    fn progress(&self) -> f64 {
        let age = now_u32().saturating_sub(self.chain.tip_header().time);
        header_sync::progress(self.chain.height(), age)
    }

    /// Synced: out of initial sync with no sync session running; syncing while one runs;
    /// idle otherwise (in initial sync, nobody to sync from). Entering synced is logged,
    /// published and tells every peer to announce by headers (BIP130).
    fn update_state(&mut self) {
        if self.loading.is_some() {
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
                p.send_sendheaders();
            }
            self.ctx.events.publish(NodeEvent::HeadersSynced {
                height: self.chain.height(),
                tip: self.chain.tip().to_string(),
                synced: true,
            });
        }
        self.state = state;
    }

    /// In initial sync (or with a day-old best header) and no sync peer: picks one (an
    /// outbound peer where one exists, then the best chain it showed us, never one tried
    /// already) and asks it for headers.
    fn maybe_start_sync(&mut self, exclude: Option<PeerId>) {
        if self.header_sync.sync_peer().is_some() || self.loading.is_some() {
            return;
        }
        // In initial sync, or whenever our best header is a day old (a node that was cut off
        // for a while catches up from one peer, as Core's nSyncStarted == 0 rule).
        if self.in_ibd() || !self.tip_younger_than(RECENT_HEADER_AGE) {
            if self.segments.is_none() {
                self.start_segments();
            }
            if self.segments.is_some() {
                self.schedule_segments();
                self.update_state();
                self.publish_status();
                return;
            }
            let behind = now_u32().saturating_sub(self.chain.tip_header().time);
            let peers = self.peers.iter_mut().map(|(id, p)| (*id, &mut p.hs));
            let chosen = self
                .header_sync
                .choose(peers, exclude, behind, Instant::now());
            if let Some(id) = chosen {
                debug!(peer = %id, ours = self.chain.height(), "headers sync from peer");
                self.set_pipelining(id, true);
                let locator = self.chain.locator();
                self.getheaders_from(id, locator);
            }
        }
        self.update_state();
        self.publish_status();
    }

    /// Starts sync along the header hints when some lie above our tip, agree with our chain
    /// and some peer claims more than we have.
    fn start_segments(&mut self) {
        let config = self.ctx.config();
        if self.hints_off || config.header_hints.is_empty() {
            return;
        }
        let ours = self.chain.height();
        if !self.peers.values().any(|p| p.hs.offered_height() > ours) {
            return;
        }
        let chain = &self.chain;
        let Some(segments) = SegmentSync::new(&config.header_hints, ours, chain.tip(), |h| {
            chain.hash_at_height(h)
        }) else {
            return;
        };
        info!(
            from = ours,
            to = segments.target(),
            peers = self.peers.len(),
            "headers sync along header hints, from many peers at once"
        );
        self.segments = Some(segments);
    }

    /// The peers segments may be asked of, with the heights they claim.
    fn segment_peers(&self) -> Vec<(PeerId, u32)> {
        self.peers
            .iter()
            .filter(|(_, p)| !p.hs.failed() && p.presync.is_none())
            .map(|(id, p)| (*id, p.hs.offered_height()))
            .collect()
    }

    /// Sends segment requests to peers with room; ends the hinted sync when every segment is
    /// in, and gives hints up when a segment is left that no peer can serve.
    fn schedule_segments(&mut self) {
        let peers = self.segment_peers();
        let Some(segments) = self.segments.as_mut() else {
            return;
        };
        if segments.done() {
            self.segments = None;
            info!(
                height = self.chain.height(),
                "headers along the hints are in; the rest from one peer"
            );
            self.maybe_start_sync(None);
            if self.header_sync.sync_peer().is_none() {
                // Our tip is recent now, so no sync session starts: the headers past the
                // last hint are asked of every peer that offers more (one getheaders each).
                let ours = self.chain.height();
                let more: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.hs.offered_height() > ours)
                    .map(|(id, _)| *id)
                    .collect();
                for id in more {
                    let locator = self.chain.locator();
                    self.maybe_getheaders(id, locator);
                }
            }
            return;
        }
        // One getheaders in flight per peer (Core's MaybeSendGetHeaders): a peer asked a
        // segment, or anything else, is asked no segment until it answers.
        let idle: Vec<(PeerId, u32)> = peers
            .iter()
            .copied()
            .filter(|(id, _)| {
                self.peers
                    .get(id)
                    .is_some_and(|p| !p.hs.awaiting(Instant::now()))
            })
            .collect();
        let requests = segments.assign(&idle, Instant::now());
        if requests.is_empty() && segments.asked() == 0 && segments.stuck(&peers) {
            self.give_up_hints("no connected peer can serve the next segment");
            return;
        }
        for r in requests {
            if let Some(p) = self.peers.get_mut(&r.peer) {
                p.hs.asked(Instant::now());
                p.send(NetworkMessage::GetHeaders(GetHeadersMessage {
                    version: self.ctx.profile.protocol_version,
                    locator_hashes: vec![r.from],
                    stop_hash: r.stop,
                }));
            }
        }
    }

    /// Hints are not used any more; sync goes on from one peer.
    fn give_up_hints(&mut self, why: &str) {
        warn!(
            height = self.chain.height(),
            why, "header hints given up; syncing from one peer"
        );
        metrics::counter!("meshd_header_hints_abandoned_total").increment(1);
        self.segments = None;
        self.hints_off = true;
        self.maybe_start_sync(None);
    }

    /// A peer answered a segment request: validate what is ready in chain order, charge a
    /// sender whose answer did not lead to its hint, and keep the peers busy.
    fn on_segment_answer(&mut self, id: PeerId, answer: SegmentAnswer) {
        match answer {
            SegmentAnswer::Taken => {
                metrics::counter!("meshd_header_segments_total", "outcome" => "taken").increment(1);
            }
            SegmentAnswer::Mismatch | SegmentAnswer::HintsWrong => {
                metrics::counter!("meshd_header_segments_total", "outcome" => "mismatch")
                    .increment(1);
                warn!(peer = %id, "headers that do not lead to the header hint; asking another peer");
                self.punish(id, "header_segment_mismatch");
            }
        }
        if answer == SegmentAnswer::HintsWrong {
            self.give_up_hints("peers disagree with a hint");
            return;
        }
        while let Some((peer, batch)) = self.segments.as_mut().and_then(|s| s.next_ready()) {
            let last = batch.hashes.last().copied();
            self.accept_headers(peer, batch, false);
            let ok = last.is_some_and(|h| self.chain.is_on_best_chain(&h));
            if !ok {
                metrics::counter!("meshd_header_segments_total", "outcome" => "invalid")
                    .increment(1);
            }
            if let Some(s) = self.segments.as_mut() {
                s.validated(ok);
            }
        }
        self.schedule_segments();
        self.publish_status();
    }

    /// Ends a block-relay-only connection that relayed a transaction to us, as Core does
    /// (no score: the peer broke what it agreed to, it did not lie). True when it was one.
    fn refuse_tx_on_block_relay(&self, id: PeerId, what: &'static str) -> bool {
        let Some(p) = self.peers.get(&id).filter(|p| p.block_relay_only) else {
            return false;
        };
        metrics::counter!("meshd_block_relay_violations_total").increment(1);
        debug!(peer = %p.addr, id = %id, what, "transaction relay on a block-relay-only connection; disconnecting");
        let _ = p
            .actor
            .cast(ConnectionMsg::Disconnect(DisconnectReason::Protocol(
                format!("{what} on a block-relay-only connection"),
            )));
        true
    }

    fn punish(&self, id: PeerId, kind: &'static str) {
        if let Some(p) = self.peers.get(&id) {
            warn!(peer = %p.addr, id = %id, kind, "peer sent an invalid header or block");
            let _ = p.actor.cast(ConnectionMsg::Punish(kind));
        }
    }

    /// Headers from a peer: through its presync when one runs or when the chain they extend
    /// has too little work to be stored; straight to the chain otherwise.
    fn on_headers(&mut self, id: PeerId, headers: HashedHeaders) {
        // An answer to a segment request goes to the segments; anything else as usual.
        let headers = match self.segments.as_mut() {
            Some(seg) => match seg.on_headers(id, headers) {
                Ok(answer) => {
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.hs.answered(false, Instant::now());
                    }
                    return self.on_segment_answer(id, answer);
                }
                Err(headers) => headers,
            },
            None => headers,
        };
        let anti_dos_work = self.anti_dos_work();
        let presync = self.peers.get_mut(&id).and_then(|p| p.presync.as_mut());
        // Before the presync is fed: whether this answers our request to the peer.
        let answer = intake::is_answer(&self.chain, presync.as_deref(), &headers.headers);
        let route = intake::route(
            &self.chain,
            presync,
            &headers.headers,
            &headers.hashes,
            anti_dos_work,
            now_u32(),
        );
        if let Route::Invalid(kind) = route {
            metrics::counter!("meshd_headers_rejected_total", "reason" => kind).increment(1);
            self.set_pipelining(id, false);
            self.punish(id, kind);
            return;
        }
        if let Some(p) = self.peers.get_mut(&id).filter(|_| answer) {
            // Unless its Connection asked for the next batch already (pipelining): that
            // request is in flight, and an announcement must not add a second one.
            p.hs.answered(headers.next_requested, Instant::now());
        }
        if headers.headers.is_empty() {
            self.header_sync.progress(id, Instant::now());
        }
        let step = match route {
            Route::Invalid(_) | Route::Chain => return self.accept_headers(id, headers, true),
            Route::Dropped => {
                metrics::counter!("meshd_presync_aborted_total", "reason" => "presync_low_work")
                    .increment(1);
                return;
            }
            Route::LowWork => PresyncStep::Abort(PresyncError::LowWork),
            Route::Presync(step) => step,
            Route::NewPresync(ps, step) => {
                info!(peer = %id, reached = ps.height(), "headers presync: the chain must show its work before it is stored");
                if let Some(p) = self.peers.get_mut(&id) {
                    p.presync = Some(*ps);
                }
                step
            }
        };
        self.header_sync.progress(id, Instant::now());
        if headers.next_requested {
            // Presync asks for its own batches; the one the Connection asked for is
            // presync's next when it asks from this batch's end.
            self.set_pipelining(id, false);
            if let (PresyncStep::Request(locator), Some(last)) = (&step, headers.hashes.last()) {
                if locator.first() == Some(last) {
                    return;
                }
            }
        }
        self.apply_presync(id, step)
    }

    /// Turns the Connection's header pipelining for `id` on or off. On only where presync
    /// cannot start (our chain has the minimum work, and the peer is not presyncing), since
    /// presync asks for its own batches.
    fn set_pipelining(&self, id: PeerId, on: bool) {
        if let Some(p) = self.peers.get(&id) {
            let on = on && p.presync.is_none() && self.chain.tip_work() >= self.min_work();
            let _ = p.actor.cast(ConnectionMsg::PipelineHeaders(on));
        }
    }

    /// The minimum chain work in force.
    fn min_work(&self) -> u128 {
        self.ctx
            .config()
            .minimum_chain_work
            .unwrap_or_else(|| self.ctx.profile.min_chain_work())
    }

    /// Work a chain must show before its headers are stored (Core's anti-DoS threshold):
    /// the minimum chain work, or our tip's work less 144 blocks of it, whichever is more.
    fn anti_dos_work(&self) -> u128 {
        let recent = HeaderChain::header_work(&self.chain.tip_header())
            .saturating_mul(u128::from(ANTI_DOS_RECENT_BLOCKS));
        self.min_work()
            .max(self.chain.tip_work().saturating_sub(recent))
    }

    fn apply_presync(&mut self, id: PeerId, step: PresyncStep) {
        match step {
            PresyncStep::Request(locator) => self.getheaders_from(id, locator),
            PresyncStep::Release { headers, next } => {
                metrics::counter!("meshd_presync_released_total").increment(headers.len() as u64);
                self.accept_headers(id, HashedHeaders::new(headers), false);
                match next {
                    Some(locator) => self.getheaders_from(id, locator),
                    None => {
                        info!(peer = %id, height = self.chain.height(), "headers presync done; the chain showed enough work");
                        if let Some(p) = self.peers.get_mut(&id) {
                            p.presync = None;
                        }
                        if self.header_sync.is_sync_peer(id) {
                            self.set_pipelining(id, true);
                        }
                        let locator = self.chain.locator();
                        self.getheaders_from(id, locator);
                    }
                }
            }
            PresyncStep::Abort(e) => {
                metrics::counter!("meshd_presync_aborted_total", "reason" => e.kind()).increment(1);
                if let Some(p) = self.peers.get_mut(&id) {
                    debug!(peer = %p.addr, id = %id, reason = %e, "headers not stored: {e}");
                    p.presync = None;
                }
                if intake::presync_abort_is_charged(&e) {
                    self.punish(id, e.kind());
                }
                if self.header_sync.is_sync_peer(id) {
                    self.sync_batch_ended(id);
                }
                self.publish_status();
            }
        }
    }

    /// The sync peer sent a short batch: it has nothing more. Still in initial sync (its
    /// chain too is old, or it was behind), another peer not tried yet is asked.
    fn sync_batch_ended(&mut self, id: PeerId) {
        self.set_pipelining(id, false);
        self.header_sync.end(id);
        self.maybe_start_sync(Some(id));
    }

    /// Stores headers in the chain; `continue_sync`: this was the sync peer's answer to our
    /// `getheaders`, so ask for more or end the sync round (presync releases decide that
    /// themselves).
    fn accept_headers(&mut self, id: PeerId, hashed: HashedHeaders, continue_sync: bool) {
        let from_sync_peer = continue_sync && self.header_sync.is_sync_peer(id);
        let HashedHeaders {
            headers,
            hashes,
            next_requested,
        } = hashed;
        let full_batch = headers.len() >= MAX_HEADERS_PER_MESSAGE;
        if let (true, true, false, Some(last)) =
            (from_sync_peer, full_batch, next_requested, hashes.last())
        {
            // Pipelined: the next batch is asked for before this one is validated, so the
            // peer works while we do. If this one turns out bad, the answer does not connect
            // and is handled as any unconnecting batch (the peer is punished for this one).
            let mut locator = vec![*last];
            locator.extend(self.chain.locator());
            self.getheaders_from(id, locator);
        }
        let old_tip = self.chain.tip();
        let old_height = self.chain.height();
        // Hashed once, by the Connection; the chain and the store take the hash along.
        let outcome = intake::store(&mut self.chain, &headers, &hashes, now_u32());
        if let Some(depth) = outcome.reorg_depth {
            info!(depth, new_tip = %self.chain.tip(), "chain reorganised");
            // Transactions of the old branch's blocks may be unconfirmed again.
            self.recent_confirmed.reset();
        }
        let stored = outcome.new;
        match outcome.end {
            intake::End::Whole => {}
            intake::End::Unconnecting => {
                // An announcement we cannot connect: ask for the gap, at most one request in
                // flight, and no charge (Core master's HandleUnconnectingHeaders:
                // announcements cross, and honest peers send them).
                metrics::counter!("meshd_headers_unconnecting_total").increment(1);
                let locator = self.chain.locator();
                if from_sync_peer {
                    // It is answering us (a pipelined batch after a refused one).
                    self.getheaders_from(id, locator);
                } else {
                    self.maybe_getheaders(id, locator);
                }
                return;
            }
            intake::End::Refused(kind) => {
                metrics::counter!("meshd_headers_rejected_total", "reason" => kind).increment(1);
                // Nothing more is fetched ahead from a peer that sent a bad header.
                self.set_pipelining(id, false);
                self.punish(id, kind);
            }
        }
        if !stored.is_empty() {
            metrics::counter!("meshd_headers_received_total").increment(stored.len() as u64);
            self.store_headers(&stored);
            // Progress is new headers only: re-sent ones do not keep a stalled peer on.
            self.header_sync.progress(id, Instant::now());
        }
        // What the peer has: the last header it sent, new or known.
        if let Some(&last) = hashes.last() {
            if let Some(last_height) = self.chain.height_of(&last) {
                self.ctx
                    .peers
                    .update(id, |p| p.synced_height = p.synced_height.max(last_height));
                if let Some(p) = self.peers.get_mut(&id) {
                    p.hs.saw(last_height);
                    // It has every ancestor of what it sent: knowing the last is enough not to
                    // announce any of them back.
                    p.learn(last.to_byte_array());
                }
            }
        }
        if headers.len() <= MAX_BLOCKS_IN_FLIGHT_PER_PEER {
            // An announcement (or a short answer): the peer has these blocks, or will.
            self.fetch_blocks_from(&hashes, id);
        }
        if from_sync_peer {
            // A full batch asked for the next one already; a short one is the end.
            if !full_batch {
                self.sync_batch_ended(id);
            }
        } else if continue_sync {
            let mut asked_on = false;
            if full_batch {
                // Core: a full message from any peer means it may have more; ask it on.
                if let Some(&last) = hashes.last().filter(|h| self.chain.contains(h)) {
                    let mut locator = vec![last];
                    locator.extend(self.chain.locator());
                    self.maybe_getheaders(id, locator);
                    asked_on = true;
                }
            }
            // Streaming only while its batches move our tip: re-sent known headers (cheap for
            // a peer to send) cannot keep the node out of Synced.
            let streaming = asked_on && self.chain.tip() != old_tip;
            let changed = self
                .peers
                .get_mut(&id)
                .is_some_and(|p| p.hs.set_streaming(streaming));
            if changed {
                self.update_state();
            }
        }
        if self.chain.tip() != old_tip {
            self.update_state();
            self.ctx.events.publish(NodeEvent::HeadersSynced {
                height: self.chain.height(),
                tip: self.chain.tip().to_string(),
                synced: self.state == SyncState::Synced,
            });
            self.on_new_tip(id, old_tip, old_height);
        }
        self.publish_status();
    }

    /// The tip moved (in any state): the blocks of the new branch from the fork point are
    /// fetched (Core's direct fetch: at most [`MAX_BLOCKS_IN_FLIGHT_PER_PEER`], only while the
    /// tip is recent, `CanDirectFetch`), or, without blocks, the headers announced onwards.
    fn on_new_tip(&mut self, from: PeerId, old_tip: BlockHash, old_height: u32) {
        let tip_height = self.chain.height();
        // A reorganisation: the new branch's blocks at or below the old height count too.
        let fork = self.chain.fork_height(&old_tip).unwrap_or(old_height);
        let first = fork
            .saturating_add(1)
            .max(tip_height.saturating_sub(self.fetch_window() - 1));
        let new: Vec<BlockHash> = (first..=tip_height)
            .filter_map(|h| self.chain.hash_at_height(h))
            .collect();
        if self.ctx.config().fetch_blocks {
            self.fetch_blocks_from(&new, from);
        } else if !self.in_ibd() {
            for h in new {
                self.announce_block(h, Some(from));
            }
        }
    }

    /// Blocks below the tip that are still fetched: the ones kept, at most a peer's share of
    /// requests.
    fn fetch_window(&self) -> u32 {
        let keep = self.ctx.config().keep_blocks.max(1) as u32;
        keep.min(MAX_BLOCKS_IN_FLIGHT_PER_PEER as u32)
    }

    /// Asks `from`, which announced them or sent their headers, for the blocks of `hashes`
    /// that are wanted: on the best chain within [`Self::fetch_window`] of a recent tip
    /// (Core's `CanDirectFetch`), neither kept nor asked of anyone yet; in one `getdata`.
    /// Whom else to ask when a request fails, and when a peer may be asked again, is the
    /// download core's ([`blocks`]).
    fn fetch_blocks_from(&mut self, hashes: &[BlockHash], from: PeerId) {
        if !self.ctx.config().fetch_blocks
            || !self.tip_younger_than(DIRECT_FETCH_SPACINGS * POW_TARGET_SPACING)
        {
            return;
        }
        let lowest = self.chain.height().saturating_sub(self.fetch_window() - 1);
        let wanted: Vec<BlockHash> = hashes
            .iter()
            .copied()
            .filter(|hash| {
                self.chain.is_on_best_chain(hash)
                    && self
                        .chain
                        .height_of(hash)
                        .is_some_and(|h| h >= lowest && h > 0)
                    && !self.blocks.iter().any(|k| k.hash == *hash)
            })
            .collect();
        let asked = self.downloads.fetch(&wanted, from, Instant::now());
        if let (false, Some(p)) = (asked.is_empty(), self.peers.get(&from)) {
            p.send(NetworkMessage::GetData(
                asked.into_iter().map(|h| self.block_item(h)).collect(),
            ));
        }
    }

    /// How a block is asked for: with its witnesses on BTC (BIP144's MSG_WITNESS_BLOCK);
    /// on BSV as MSG_BLOCK, the only block type the SV node serves (it compares types
    /// exactly, so a witness flag would go unanswered).
    fn block_item(&self, hash: BlockHash) -> Inventory {
        match self.ctx.profile.chain {
            Chain::Btc => Inventory::WitnessBlock(hash),
            Chain::Bsv => Inventory::Block(hash),
        }
    }

    fn announce_block(&mut self, hash: BlockHash, except: Option<PeerId>) {
        let header = self
            .chain
            .height_of(&hash)
            .and_then(|h| self.chain.header_at_height(h));
        let key = hash.to_byte_array();
        for (id, p) in self.peers.iter_mut() {
            if Some(*id) == except || p.knows(&key) {
                continue;
            }
            p.learn(key);
            match (p.wants_headers, header) {
                (true, Some(h)) => p.send(NetworkMessage::Headers(vec![h])),
                _ => p.send(NetworkMessage::Inv(vec![Inventory::Block(hash)])),
            }
        }
    }

    /// A block from `id`: taken only when it was asked of `id` (Core processes only requested
    /// blocks; ours come from direct fetch), checked as Core's IsBlockMutated, and on
    /// refusal asked of another announcer (the honest copy of a mutated one may exist).
    fn on_block(&mut self, id: PeerId, block: Block) {
        let hash = block.block_hash();
        if !self.downloads.on_block(&hash, id) {
            metrics::counter!("meshd_blocks_dropped_total", "reason" => "unrequested").increment(1);
            debug!(%hash, peer = %id, "block not asked of this peer; dropped");
            return;
        }
        if !self.chain.contains(&hash) {
            self.on_headers(id, HashedHeaders::new(vec![block.header]));
            if !self.chain.contains(&hash) {
                return;
            }
        }
        if let Err(e) = block_check::check_block(&block, self.ctx.profile.chain) {
            metrics::counter!("meshd_blocks_rejected_total", "reason" => e.kind()).increment(1);
            let addr = self.peers.get(&id).map(|p| p.addr);
            warn!(%hash, peer = ?addr, id = %id, error = %e, "block refused");
            self.punish(id, e.kind());
            let sources = self.block_sources(&hash);
            let out = self
                .downloads
                .on_block_refused(hash, id, &sources, Instant::now());
            self.apply_downloads(out);
            return;
        }
        self.downloads.accepted(&hash);
        // Credited to the sender only now, and only if it is new (Core's eviction rule
        // protects peers that recently sent a novel, valid block).
        if !self.blocks.iter().any(|k| k.hash == hash) {
            self.ctx
                .peers
                .update(id, |p| p.last_block_at = Some(Instant::now()));
        }
        self.keep_and_publish(block, Some(id));
    }

    fn keep_and_publish(&mut self, block: Block, from: Option<PeerId>) {
        let hash = block.block_hash();
        if self.blocks.iter().any(|k| k.hash == hash) {
            return;
        }
        let height = self.chain.height_of(&hash).unwrap_or(0);
        let size = bitcoin::consensus::serialize(&block).len();
        let tx_count = block.txdata.len();
        metrics::counter!("meshd_blocks_received_total").increment(1);
        info!(%hash, height, tx_count, size, "block received");
        self.ctx.events.publish(NodeEvent::BlockReceived {
            hash: hash.to_string(),
            height,
            tx_count,
            size,
            from: from
                .and_then(|id| self.ctx.peers.get(id))
                .map(|p| p.address()),
        });
        // Transactions now in a block leave the relay pool, and are not fetched again.
        for tx in &block.txdata {
            let txid = tx.compute_txid();
            self.pool.remove(&txid);
            self.recent_confirmed.insert(&txid.to_byte_array());
            if tx.input.iter().any(|i| !i.witness.is_empty()) {
                self.recent_confirmed
                    .insert(&tx.compute_wtxid().to_byte_array());
            }
        }
        let block = Arc::new(block);
        let frame: Arc<[u8]> = Message::Network(NetworkMessage::Block((*block).clone()))
            .encode(self.ctx.profile.magic)
            .into();
        for tx in &block.txdata {
            let values = tx.output.iter().map(|o| o.value.to_sat()).collect();
            self.block_outputs.insert(tx.compute_txid(), values);
        }
        self.blocks.push_back(KeptBlock { hash, block, frame });
        while self.blocks.len() > self.ctx.config().keep_blocks {
            if let Some(old) = self.blocks.pop_front() {
                for tx in &old.block.txdata {
                    self.block_outputs.remove(&tx.compute_txid());
                }
            }
        }
        self.announce_block(hash, from);
        self.publish_status();
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
                        Some(h) if self.chain.is_on_best_chain(&m.stop_hash) => {
                            self.chain.header_at_height(h).into_iter().collect()
                        }
                        _ => return,
                    }
                } else {
                    self.chain.headers_after(
                        &m.locator_hashes,
                        m.stop_hash,
                        MAX_HEADERS_PER_MESSAGE,
                    )
                };
                if let Some(p) = self.peers.get(&id) {
                    p.send(NetworkMessage::Headers(headers));
                }
            }
            SyncInput::GetBlocks(m) => {
                let hashes: Vec<Inventory> = self
                    .chain
                    .headers_after(&m.locator_hashes, m.stop_hash, MAX_BLOCKS_INV)
                    .iter()
                    .map(|h| Inventory::Block(h.block_hash()))
                    .collect();
                if let (false, Some(p)) = (hashes.is_empty(), self.peers.get(&id)) {
                    p.send(NetworkMessage::Inv(hashes));
                }
            }
            SyncInput::GetData(items) => self.on_getdata(id, items),
            SyncInput::Block(b) => self.on_block(id, *b),
            SyncInput::Tx(tx) => {
                if !self.refuse_tx_on_block_relay(id, "tx") {
                    self.on_tx(Some(id), *tx)
                }
            }
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
                self.block_not_delivered(block, id, Failure::TooLarge)
            }
            SyncInput::NotFound(items) => {
                for i in items {
                    match i {
                        Inventory::Block(h) | Inventory::WitnessBlock(h) => {
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

    /// A message from a peer Sync has not heard of yet: its Connection sends straight here,
    /// while the peer's arrival comes through the Manager, so the first messages can overtake
    /// it. They wait (bounded in number and time) for the PeerUp.
    fn on_early_input(
        &mut self,
        id: PeerId,
        input: SyncInput,
        credit: Option<OwnedSemaphorePermit>,
    ) {
        if self.early.len() >= MAX_EARLY_INPUTS {
            metrics::counter!("meshd_sync_early_inputs_dropped_total").increment(1);
            debug!(peer = %id, "message from an unannounced peer dropped");
            return;
        }
        self.early.push_back(EarlyInput {
            id,
            at: Instant::now(),
            input,
            credit,
        });
    }

    /// Handles what a peer sent before Sync heard of it.
    fn replay_early(&mut self, id: PeerId) {
        if !self.early.iter().any(|e| e.id == id) {
            return;
        }
        let (mine, rest): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.early)
            .into_iter()
            .partition(|e| e.id == id);
        self.early = rest;
        for early in mine {
            self.on_peer_message(id, early.input, early.credit);
        }
    }

    /// `peer` answered our request for `block` with `notfound` or a copy above our limit:
    /// the next source is asked.
    fn block_not_delivered(&mut self, block: BlockHash, peer: PeerId, why: Failure) {
        let sources = self.block_sources(&block);
        let out = self
            .downloads
            .on_not_delivered(block, peer, why, &sources, Instant::now());
        self.apply_downloads(out);
    }

    fn block_sources(&self, block: &BlockHash) -> Vec<PeerId> {
        block_sources(&self.chain, &self.peers, block)
    }

    /// Sends what the block download core asks for, and reports its failures.
    fn apply_downloads(&mut self, out: Outcome) {
        for (block, peer, why) in out.failures {
            match why {
                Failure::Stalled => {
                    metrics::counter!("meshd_block_stalls_total").increment(1);
                    warn!(%block, %peer, timeout_ms = self.downloads.stalling_timeout().as_millis() as u64,
                          "block download stalled; asking another peer");
                }
                Failure::Expired => {
                    metrics::counter!("meshd_requests_expired_total", "kind" => "block")
                        .increment(1);
                    warn!(%block, %peer, "block request expired");
                }
                Failure::TooLarge => {
                    metrics::counter!("meshd_blocks_dropped_total", "reason" => "too_large")
                        .increment(1);
                    warn!(%block, %peer, "requested block is above our limit (max-block-message-size); asking another peer");
                }
                Failure::NotFound | Failure::Refused => {
                    debug!(%block, %peer, why = why.kind(), "block not delivered; asking another peer");
                }
            }
        }
        for block in out.given_up {
            metrics::counter!("meshd_blocks_given_up_total").increment(1);
            warn!(%block, tries = blocks::MAX_BLOCK_TRIES, "block given up: no peer delivered it in a form we take");
        }
        let mut by_peer: HashMap<PeerId, Vec<Inventory>> = HashMap::new();
        for r in out.requests {
            by_peer
                .entry(r.peer)
                .or_default()
                .push(self.block_item(r.block));
        }
        for (id, items) in by_peer {
            if let Some(p) = self.peers.get(&id) {
                debug!(peer = %id, blocks = items.len(), "asking another peer for blocks");
                p.send(NetworkMessage::GetData(items));
            }
        }
    }

    /// Appends accepted headers to headers.dat (group commit). A failed write (a full disk)
    /// is reported once; the chain goes on in memory and the file is rewritten from it later.
    fn store_headers(&mut self, stored: &[(Header, BlockHash)]) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let result = store
            .append(stored)
            .and_then(|_| store.sync_if_due(Instant::now()));
        if let Err(e) = result {
            self.on_store_failure(e);
        }
    }

    fn on_store_failure(&mut self, e: std::io::Error) {
        error!(
            error = %e,
            height = self.chain.height(),
            retry_s = STORE_RETRY_INTERVAL.as_secs(),
            "cannot write headers.dat; headers are kept in memory and the file is rewritten once writing works again"
        );
        metrics::counter!("meshd_store_errors_total", "file" => "headers.dat").increment(1);
        self.store_retry_at = Some(Instant::now() + STORE_RETRY_INTERVAL);
        self.publish_status();
    }

    /// Rewrites a failed header file from the chain when its retry is due.
    fn retry_store(&mut self, now: Instant) {
        if self.store_retry_at.is_none_or(|at| at > now) {
            return;
        }
        let Some(store) = self.store.as_mut() else {
            return;
        };
        match store.rewrite(&self.chain) {
            Ok(()) => {
                self.store_retry_at = None;
                info!(
                    height = self.chain.height(),
                    "headers.dat rewritten from the chain after a failed write"
                );
                self.publish_status();
            }
            Err(e) => {
                debug!(error = %e, "headers.dat still cannot be written");
                self.store_retry_at = Some(now + STORE_RETRY_INTERVAL);
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if let Some(store) = self.store.as_mut() {
            if let Err(e) = store.sync_if_due(now) {
                self.on_store_failure(e);
            }
        }
        self.retry_store(now);
        // Each peer's blocks in flight, for the Manager (which extra block-relay-only peer
        // it may let go: Core keeps one that is delivering a block).
        for id in self.peers.keys() {
            let n = self.downloads.in_flight_to(*id);
            self.ctx.peers.update(*id, |p| {
                if p.blocks_in_flight != n {
                    p.blocks_in_flight = n;
                }
            });
        }
        if self.release_memory_at.is_some_and(|at| at <= now) {
            self.release_memory_at = None;
            crate::release_free_memory();
        }
        self.poll_tx_requests();
        if !self.downloads.is_idle() {
            let lowest = self.chain.height().saturating_sub(self.fetch_window() - 1);
            let (chain, peers, kept) = (&self.chain, &self.peers, &self.blocks);
            // A block no longer wanted (reorganised away, kept meanwhile) has no source.
            let wanted = |b: &BlockHash| {
                chain.is_on_best_chain(b)
                    && chain.height_of(b).is_some_and(|h| h >= lowest && h > 0)
                    && !kept.iter().any(|k| k.hash == *b)
            };
            let out = self.downloads.on_tick(now, |b| {
                if wanted(b) {
                    block_sources(chain, peers, b)
                } else {
                    Vec::new()
                }
            });
            self.apply_downloads(out);
        }
        while self
            .early
            .front()
            .is_some_and(|e| e.at.elapsed() >= EARLY_INPUT_TTL)
        {
            self.early.pop_front();
        }
        if let Some(segments) = self.segments.as_mut() {
            for peer in segments.expire(now) {
                metrics::counter!("meshd_header_segments_total", "outcome" => "expired")
                    .increment(1);
                debug!(%peer, "segment request unanswered; asking another peer");
            }
            self.schedule_segments();
        }
        let config = self.ctx.config();
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
        let before = self.state;
        self.update_state();
        if self.state != before {
            self.publish_status();
        }
        if self.pool.expire(now, config.tx_pool_max_age) > 0 {
            self.publish_status();
        }
        self.flush_trickle();
    }

    /// Handles one message (the actor's `handle`, and held messages once loading ends).
    fn on_msg(&mut self, myself: &ActorRef<SyncMsg>, msg: SyncMsg) {
        match msg {
            SyncMsg::PeerUp {
                id,
                addr,
                actor,
                start_height,
                relay,
                inbound,
                version,
                wtxid_relay,
                block_relay_only,
            } => {
                if self.peers.contains_key(&id) {
                    // Announced twice (a restarted Sync is told of every live peer, and a
                    // handshake may complete meanwhile): the first one holds.
                    return;
                }
                let synced = self.state == SyncState::Synced;
                let claimed = start_height.max(0) as u32;
                let peer = SyncPeer {
                    addr,
                    actor,
                    hs: PeerHeaders::new(inbound, claimed),
                    version,
                    wtxid_relay,
                    presync: None,
                    wants_headers: false,
                    relay,
                    block_relay_only,
                    known: RollingFilter::new(KNOWN_INV_CAP, KNOWN_INV_FP_RATE),
                    pending_tx: Vec::new(),
                    feefilter: 0,
                    bloom: None,
                    next_flush: Instant::now()
                        + poisson(if inbound {
                            TRICKLE_INBOUND
                        } else {
                            TRICKLE_OUTBOUND
                        }),
                };
                if synced {
                    peer.send_sendheaders();
                }
                let height = self.chain.height();
                if claimed < height {
                    // It says it is behind: tell it of our tip (an announcement made while it
                    // was handshaking never reached it). Its claim costs us one message.
                    let tip = self.chain.tip();
                    peer.send(NetworkMessage::Inv(vec![Inventory::Block(tip)]));
                }
                self.peers.insert(id, peer);
                if self.tip_younger_than(RECENT_HEADER_AGE) {
                    // Core: while our best header is recent, every new peer is asked for
                    // headers, from our tip's parent so that the answer shows where it is.
                    let locator = self.chain.locator_from(height.saturating_sub(1));
                    self.maybe_getheaders(id, locator);
                }
                self.maybe_start_sync(None);
                self.replay_early(id);
                self.publish_status();
            }
            SyncMsg::Peers(reply) => {
                let mut ids: Vec<PeerId> = self.peers.keys().copied().collect();
                ids.sort();
                let _ = reply.send(ids);
            }
            SyncMsg::PeerDown(id) => {
                self.peers.remove(&id);
                // Once its messages in flight are gone too, give the freed memory back.
                self.release_memory_at
                    .get_or_insert(Instant::now() + RELEASE_MEMORY_DELAY);
                self.early.retain(|e| e.id != id);
                if let Some(loading) = self.loading.as_mut() {
                    loading
                        .held
                        .retain(|m| !matches!(m, SyncMsg::FromPeer(p, ..) if *p == id));
                }
                // What it was asked for is free to be asked of others.
                self.tx_requests.peer_gone(id);
                self.poll_tx_requests();
                let (chain, peers) = (&self.chain, &self.peers);
                let out = self.downloads.on_peer_gone(
                    id,
                    |b| block_sources(chain, peers, b),
                    Instant::now(),
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
                self.publish_status();
            }
            msg @ (SyncMsg::Generate(..) | SyncMsg::SubmitTx(_) | SyncMsg::Hints(_))
                if self.loading.is_some() =>
            {
                self.hold(msg);
            }
            SyncMsg::LoadStep => self.load_step(myself),
            SyncMsg::FromPeer(id, input, credit) => self.on_peer_message(id, input, credit),
            SyncMsg::Tick => self.on_tick(),
            SyncMsg::Generate(n, reply) => {
                let _ = reply.send(self.generate(n));
            }
            SyncMsg::SubmitTx(tx) => self.on_tx(None, *tx),
            SyncMsg::Hints(reply) => {
                let hints = (1..=self.chain.height() / HINT_INTERVAL)
                    .filter_map(|k| {
                        let height = k * HINT_INTERVAL;
                        self.chain.hash_at_height(height).map(|h| (height, h))
                    })
                    .collect();
                let _ = reply.send(hints);
            }
        }
    }

    /// A message from a peer: handled, or kept until its PeerUp (see [`Self::on_early_input`])
    /// or until the chain is loaded (only a `getheaders` the part loaded can answer in full
    /// is answered during the load).
    fn on_peer_message(
        &mut self,
        id: PeerId,
        input: SyncInput,
        credit: Option<OwnedSemaphorePermit>,
    ) {
        if !self.peers.contains_key(&id) {
            self.on_early_input(id, input, credit);
        } else if self.loading.is_none() {
            self.on_input(id, input);
        } else {
            let answered =
                matches!(&input, SyncInput::GetHeaders(m) if self.answer_while_loading(id, m));
            if !answered {
                self.hold(SyncMsg::FromPeer(id, input, credit));
            }
        }
    }

    /// Opens headers.dat and starts loading it in steps; a file that is not a header file of
    /// this network is set aside and a new one started.
    fn begin_load(&mut self, myself: &ActorRef<SyncMsg>) {
        let path = self.ctx.config().datadir.join("headers.dat");
        let magic = self.ctx.profile.magic.to_bytes();
        let begun = HeaderLoad::begin(&path, magic).or_else(|e| {
            let aside = crate::persist::set_aside(&path).map(|p| p.display().to_string());
            error!(error = %e, path = %path.display(), set_aside = ?aside, "header file unreadable; starting from genesis");
            HeaderLoad::begin(&path, magic)
        });
        match begun {
            Ok(load) => {
                self.loading = Some(Loading {
                    load,
                    started: Instant::now(),
                    held: VecDeque::new(),
                });
                self.state = SyncState::Loading;
                self.load_step(myself);
            }
            Err(e) => {
                error!(error = %e, "cannot open the header file; headers kept in memory only")
            }
        }
    }

    /// Loads the next part of headers.dat, then lets the mailbox in before the next one.
    fn load_step(&mut self, myself: &ActorRef<SyncMsg>) {
        let Some(loading) = self.loading.as_mut() else {
            return;
        };
        match loading.load.step(&mut self.chain, LOAD_STEP_RECORDS) {
            Ok(false) => {
                self.publish_status();
                let _ = myself.cast(SyncMsg::LoadStep);
            }
            Ok(true) => self.finish_load(myself),
            Err(e) => {
                // A read error is not a bad file: keep it as it is (no truncation) and go on
                // with what was loaded, in memory only.
                error!(error = %e, loaded = loading.load.loaded(), "cannot read the header file; headers kept in memory only");
                metrics::counter!("meshd_store_errors_total", "file" => "headers.dat").increment(1);
                let held = std::mem::take(&mut loading.held);
                self.end_load(myself, None, held);
            }
        }
    }

    fn finish_load(&mut self, myself: &ActorRef<SyncMsg>) {
        let Some(loading) = self.loading.take() else {
            return;
        };
        let started = loading.started;
        let held = loading.held;
        let store = match loading.load.finish() {
            Ok((store, report)) => {
                if report.truncated_bytes > 0 {
                    warn!(
                        bytes = report.truncated_bytes,
                        "cut a torn tail off the header file"
                    );
                }
                info!(height = self.chain.height(), tip = %self.chain.tip(), loaded = report.loaded,
                      skipped = report.skipped,
                      ms = started.elapsed().as_millis() as u64, "header chain loaded");
                let mut store = store;
                let stale = report.stale_share(&self.chain);
                if stale > COMPACT_STALE_SHARE {
                    // Mostly junk (skipped records, forks): the best chain alone, atomically.
                    match store.rewrite(&self.chain) {
                        Ok(()) => info!(
                            stale_share = stale,
                            height = self.chain.height(),
                            "header file compacted to the best chain"
                        ),
                        Err(e) => {
                            warn!(error = %e, "cannot compact the header file; it is kept as it is")
                        }
                    }
                }
                Some(store)
            }
            Err(e) => {
                error!(error = %e, "cannot open the header file; headers kept in memory only");
                None
            }
        };
        self.end_load(myself, store, held);
    }

    /// Loading is over: what waited for the chain is handled in order, and sync may start.
    fn end_load(
        &mut self,
        myself: &ActorRef<SyncMsg>,
        store: Option<HeaderStore>,
        held: VecDeque<SyncMsg>,
    ) {
        self.loading = None;
        self.store = store;
        self.update_state();
        for msg in held {
            self.on_msg(myself, msg);
        }
        self.maybe_start_sync(None);
        self.publish_status();
    }

    /// Keeps a message until the chain is loaded (bounded; a message past the bound is
    /// dropped and counted, a generate request refused).
    fn hold(&mut self, msg: SyncMsg) {
        let Some(loading) = self.loading.as_mut() else {
            return;
        };
        if loading.held.len() < MAX_HELD_WHILE_LOADING {
            loading.held.push_back(msg);
            return;
        }
        metrics::counter!("meshd_sync_held_dropped_total").increment(1);
        match msg {
            SyncMsg::Generate(_, reply) => {
                let _ = reply.send(Err("the header chain is still loading".into()));
            }
            SyncMsg::FromPeer(id, ..) => {
                debug!(peer = %id, "message dropped while the header chain loads")
            }
            _ => {}
        }
    }

    /// A `getheaders` while headers.dat loads is answered at once when the part loaded can
    /// answer it in full: the peer's tip is known and a whole batch (or the batch up to its
    /// stop hash) follows it. Otherwise it waits for the whole chain.
    fn answer_while_loading(&self, id: PeerId, m: &GetHeadersMessage) -> bool {
        let Some(p) = self.peers.get(&id) else {
            return false;
        };
        if !m
            .locator_hashes
            .first()
            .is_some_and(|h| self.chain.is_on_best_chain(h))
        {
            return false;
        }
        let headers =
            self.chain
                .headers_after(&m.locator_hashes, m.stop_hash, MAX_HEADERS_PER_MESSAGE);
        let complete = headers.len() == MAX_HEADERS_PER_MESSAGE
            || headers.last().is_some_and(|h| {
                m.stop_hash != BlockHash::all_zeros() && h.block_hash() == m.stop_hash
            });
        if complete {
            p.send(NetworkMessage::Headers(headers));
        }
        complete
    }

    fn generate(&mut self, n: u32) -> Result<Vec<BlockHash>, String> {
        if !self.ctx.profile.is_regtest() {
            return Err("generate works on regtest only".into());
        }
        let mut hashes = Vec::new();
        for _ in 0..n {
            let tip = self.chain.tip_header();
            let height = self.chain.height() + 1;
            // Core's rule (and so any number of blocks stays within the future limit): the
            // later of our clock and one second past the median time of the last eleven.
            let time = now_u32().max(self.chain.tip_median_time_past().saturating_add(1));
            let block = crate::sync::mine::regtest_block(&tip, height, time, self.extra_nonce);
            let hash = block.block_hash();
            self.chain
                .accept(&block.header, now_u32().saturating_add(60))
                .map_err(|e| format!("generated block refused: {e}"))?;
            self.store_headers(&[(block.header, hash)]);
            self.keep_and_publish(block, None);
            hashes.push(hash);
        }
        // A mined tip is recent: the node may be out of initial sync now.
        self.update_state();
        self.ctx.events.publish(NodeEvent::HeadersSynced {
            height: self.chain.height(),
            tip: self.chain.tip().to_string(),
            synced: self.state == SyncState::Synced,
        });
        self.publish_status();
        Ok(hashes)
    }
}

impl Actor for Sync {
    type Msg = SyncMsg;
    type State = SyncActorState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        _myself: ActorRef<SyncMsg>,
        ctx: Arc<NodeContext>,
    ) -> Result<SyncActorState, ActorProcessingErr> {
        Ok(SyncActorState {
            release_memory_at: None,
            store_retry_at: None,
            chain: HeaderChain::new(&ctx.profile),
            ctx,
            store: None,
            loading: None,
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
            early: VecDeque::new(),
            extra_nonce: rand::random(),
            timer: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<SyncMsg>,
        state: &mut SyncActorState,
    ) -> Result<(), ActorProcessingErr> {
        // The header file is read here, not in pre_start (which runs inside the spawner), and
        // in steps between which peers are answered (`SyncMsg::LoadStep`).
        state.begin_load(&myself);
        for name in [
            "meshd_headers_received_total",
            "meshd_blocks_received_total",
            "meshd_txs_received_total",
            "meshd_txs_relayed_total",
        ] {
            metrics::counter!(name).increment(0);
        }
        state.publish_status();
        state.timer = Some(myself.send_interval(SYNC_TICK, || SyncMsg::Tick));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SyncMsg>,
        msg: SyncMsg,
        state: &mut SyncActorState,
    ) -> Result<(), ActorProcessingErr> {
        state.on_msg(&myself, msg);
        if state.loading.is_some() {
            // Let the tasks this message woke run before the next load step (a Connection
            // sending our answer sits in this worker's next-task slot, which other workers
            // cannot take, until this task yields).
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SyncMsg>,
        state: &mut SyncActorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.timer.take() {
            t.abort();
        }
        if let Some(store) = state.store.as_mut() {
            let _ = store.sync();
        }
        Ok(())
    }
}
