//! Blocks in the sync core: direct fetch on every tip change (by hash, from the peers that
//! announced them), accepting only what was asked of the sender, Core's IsBlockMutated
//! checks, keeping the last blocks to serve, and announcing them onwards.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bitcoin::block::Block;
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::p2p::ServiceFlags;
use bitcoin::{BlockHash, Txid};
use tracing::{debug, info, warn};

use super::compact::Arrival;
use super::{Action, AfterKeep, KeptBlock, SyncCore, SyncPeer, DIRECT_FETCH_SPACINGS};
use crate::config::TxRelay;
use crate::events::{BlockVia, NodeEvent};
use crate::msg::HashedHeaders;
use crate::network::Chain;
use crate::shared::peers::PeerId;
use crate::shared::whitelist::Permissions;
use crate::sync::block_check::{self, has_witness};
use crate::sync::blocks::{self, Failure, Outcome, MAX_BLOCKS_IN_FLIGHT_PER_PEER};
use crate::sync::chain::HeaderChain;
use crate::sync::header_sync::POW_TARGET_SPACING;

/// How long after an unvouched block is kept its outbound peers are asked for headers
/// that would vouch for it (see [`SyncCore::ask_for_vouches`]): first once Core has had time
/// to validate a block it pushed before validating (well under a second usually), then once
/// more for a slow one.
pub(super) const VOUCH_ASK_DELAYS: [std::time::Duration; 2] = [
    std::time::Duration::from_secs(2),
    std::time::Duration::from_secs(20),
];

/// How long after an unvouched block is kept an ask held back by a request in flight is
/// still tried again (every tick): past it, that ask counts as made.
pub(super) const VOUCH_ASK_GIVE_UP: std::time::Duration = std::time::Duration::from_secs(60);

/// Blocks [`VouchedBlocks`] remembers.
///
/// # Security
/// Filled only with blocks mined here, sent by a `relay`-whitelisted peer (the operator
/// trusts it), or left as the vouched tip of an outbound peer that disconnected (peers we
/// chose), one hash each; 1,024 covers a week of blocks on BTC, and old entries are
/// forgotten first, so no peer can grow it.
pub(super) const MAX_VOUCHED_BLOCKS: usize = 1024;

/// Blocks a validating node vouched for, as transactions are (#24's relay rule, extended to
/// blocks): meshd checks proof of work and Core's IsBlockMutated but no scripts, so a block
/// with an invalid transaction would pass here, and a Core peer that fetched it from us would
/// discourage us. A block is vouched for when an outbound peer (one we chose) showed it by
/// `headers` or `inv`, or showed a block descending from it: Core serves and announces only
/// its active chain, which it validated (a `cmpctblock` is not such a showing: BIP152 lets
/// it go before validation). Each peer's best such block is its `vouched_tip`; this set
/// holds the rest: blocks mined here, and blocks a `relay`-whitelisted peer sent. Only
/// vouched blocks are announced to ordinary peers; high-bandwidth compact-block peers get
/// the rest too, as BIP152 allows relay before validation and peers from protocol 70015 do
/// not punish it.
#[derive(Debug, Default)]
pub(super) struct VouchedBlocks {
    set: HashSet<BlockHash>,
    order: VecDeque<BlockHash>,
}

impl VouchedBlocks {
    /// Records `hash`; true when it was not vouched for before.
    pub(super) fn insert(&mut self, hash: BlockHash) -> bool {
        if !self.set.insert(hash) {
            return false;
        }
        self.order.push_back(hash);
        while self.order.len() > MAX_VOUCHED_BLOCKS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    pub(super) fn contains(&self, hash: &BlockHash) -> bool {
        self.set.contains(hash)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &BlockHash> {
        self.order.iter()
    }
}

/// Blocks a NODE_NETWORK_LIMITED peer keeps (BIP159, Core's
/// `NODE_NETWORK_LIMITED_MIN_BLOCKS`): such a peer is asked only for blocks at most this
/// many, less 2 for a tip that moves meanwhile, below its best.
pub(super) const NODE_NETWORK_LIMITED_MIN_BLOCKS: u32 = 288;

/// Whether a peer with `services`, whose best known block is at `best_height`, can serve our
/// best-chain block at `height` (Core's `CanServeBlocks`, `IsLimitedPeer` and
/// `CanServeWitnesses`): it keeps blocks (NODE_NETWORK, or NODE_NETWORK_LIMITED within its
/// last 286), and on BTC, where every block we fetch is past segwit, it serves witnesses.
pub(super) fn can_serve_block(
    chain: Chain,
    services: ServiceFlags,
    height: u32,
    best_height: u32,
) -> bool {
    if chain == Chain::Btc && !services.has(ServiceFlags::WITNESS) {
        return false;
    }
    services.has(ServiceFlags::NETWORK)
        || (services.has(ServiceFlags::NETWORK_LIMITED)
            && best_height.saturating_sub(height) < NODE_NETWORK_LIMITED_MIN_BLOCKS - 2)
}

/// Whether a peer that announced a block is asked for it (Core's direct fetch: whatever
/// its NETWORK bits, it just showed it has the block; on BTC only if it serves witnesses,
/// or it is whitelisted: another meshd announces no services on public networks).
pub(super) fn serves_announced(chain: Chain, p: &SyncPeer) -> bool {
    chain == Chain::Bsv || p.services.has(ServiceFlags::WITNESS) || p.trusted
}

/// Peers that have our best-chain `block` and can serve it, outbound first (Core: the block
/// is an ancestor of the peer's best known block): those that announced it, or whose best
/// known block descends from it, on whatever branch that block is.
pub(super) fn block_sources(
    chain: &HeaderChain,
    chain_kind: Chain,
    peers: &HashMap<PeerId, Box<SyncPeer>>,
    block: &BlockHash,
) -> Vec<PeerId> {
    let Some(height) = chain
        .is_on_best_chain(block)
        .then(|| chain.height_of(block))
        .flatten()
    else {
        return Vec::new();
    };
    let mut sources: Vec<(bool, PeerId)> = peers
        .iter()
        .filter(|(_, p)| {
            // The height its best known block shares with our best chain: it has our
            // blocks up to there, and none of ours above (its branch left ours).
            let shared = p.best_known.and_then(|b| chain.fork_height(&b));
            let best = p.best_known.and_then(|b| chain.height_of(&b)).unwrap_or(0);
            // One that announced it is asked as direct fetch asks (see `fetch_blocks_from`).
            let announced = p.has_announced(block) && serves_announced(chain_kind, p);
            announced
                || (shared.is_some_and(|f| f >= height)
                    && can_serve_block(chain_kind, p.services, height, best.max(height)))
        })
        .map(|(id, p)| (p.hs.inbound, *id))
        .collect();
    sources.sort();
    sources.into_iter().map(|(_, id)| id).collect()
}

impl SyncCore {
    /// The tip moved (in any state): the blocks of the new branch from the fork point are
    /// fetched (Core's direct fetch: at most [`MAX_BLOCKS_IN_FLIGHT_PER_PEER`], only while the
    /// tip is recent, `CanDirectFetch`), or, without blocks, the headers announced onwards.
    pub(super) fn on_new_tip(&mut self, from: PeerId, old_tip: BlockHash, old_height: u32) {
        let tip_height = self.chain.height();
        // A reorganisation: the new branch's blocks at or below the old height count too.
        let fork = self.chain.fork_height(&old_tip).unwrap_or(old_height);
        let first = fork
            .saturating_add(1)
            .max(tip_height.saturating_sub(self.fetch_window() - 1));
        let new: Vec<BlockHash> = (first..=tip_height)
            .filter_map(|h| self.chain.hash_at_height(h))
            .collect();
        if self.config.fetch_blocks {
            self.fetch_blocks_from(&new, from);
        } else if !self.in_ibd() {
            // Several at once go as headers, never as cmpctblock (Core: a lone block only).
            self.announcing_batch = new.len() > 1;
            for h in new {
                self.announce_block(h, Some(from));
            }
            self.announcing_batch = false;
        }
    }

    /// Whether we hold the parent of `hash`: kept, or the genesis block (every node has it).
    fn parent_held(&self, hash: &BlockHash) -> bool {
        let Some((header, _, _)) = self.chain.header_and_work(hash) else {
            return false;
        };
        let parent = header.prev_blockhash;
        parent == self.profile.genesis.block_hash() || self.is_kept(&parent)
    }

    /// Blocks below the tip that are still fetched: the ones kept, at most a peer's share of
    /// requests.
    pub(super) fn fetch_window(&self) -> u32 {
        let keep = self.config.keep_blocks.max(1) as u32;
        keep.min(MAX_BLOCKS_IN_FLIGHT_PER_PEER as u32)
    }

    /// Asks `from`, which announced them or sent their headers, for the blocks of `hashes`
    /// that are wanted: on the best chain within [`Self::fetch_window`] of a recent tip
    /// (Core's `CanDirectFetch`), neither kept nor asked of anyone yet; in one `getdata`.
    /// Whom else to ask when a request fails, and when a peer may be asked again, is the
    /// download core's ([`blocks`]).
    pub(super) fn fetch_blocks_from(&mut self, hashes: &[BlockHash], from: PeerId) {
        if !self.config.fetch_blocks
            || !self.tip_younger_than(DIRECT_FETCH_SPACINGS * POW_TARGET_SPACING)
        {
            return;
        }
        let lowest = self.chain.height().saturating_sub(self.fetch_window() - 1);
        // Core's direct fetch asks the announcer whatever its NETWORK bits (it just showed
        // it has the blocks), but on BTC only one that serves witnesses; a whitelisted peer
        // (another meshd, which announces no services on public networks) too.
        let Some(p) = self.peers.get(&from) else {
            return;
        };
        let serves = serves_announced(self.profile.chain, p);
        let wanted: Vec<BlockHash> = hashes
            .iter()
            .copied()
            .filter(|hash| {
                self.chain.is_on_best_chain(hash)
                    && serves
                    && self
                        .chain
                        .height_of(hash)
                        .is_some_and(|h| h >= lowest && h > 0)
                    && !self.blocks.iter().any(|k| k.hash == *hash)
            })
            .collect();
        let mut asked = self.downloads.fetch(&wanted, from, self.clock.now);
        if let Some((in_hand, peer)) = self.compact_in_hand {
            // A `cmpctblock` of it is being handled: it is the answer, recorded as asked.
            if peer == from {
                asked.retain(|h| *h != in_hand);
            }
        }
        // Core's direct fetch asks for a compact block when it is the one block we wait for
        // and we hold its parent (`BLOCK_VALID_CHAINTX`): our pool is then current for it.
        let alone =
            asked.len() == 1 && self.downloads.in_flight() == 1 && self.parent_held(&asked[0]);
        if let (false, Some(p)) = (asked.is_empty(), self.peers.get(&from)) {
            let items = asked
                .into_iter()
                .map(|h| self.block_request_item(h, p.id, alone))
                .collect();
            self.out.send(p.id, NetworkMessage::GetData(items));
        }
    }

    /// Core's FindNextBlocksToDownload, for the blocks near a recent tip: a wanted block
    /// that is neither kept nor asked of anyone (its only source left, every source had 16
    /// in flight, or a notfound's memory expired) is asked of a peer that has it. Run on
    /// every tick; at most [`Self::fetch_window`] heights are looked at.
    pub(super) fn fetch_missing_blocks(&mut self) {
        if !self.config.fetch_blocks
            || self.loading
            || !self.tip_younger_than(DIRECT_FETCH_SPACINGS * POW_TARGET_SPACING)
        {
            return;
        }
        let tip = self.chain.height();
        let lowest = tip.saturating_sub(self.fetch_window() - 1).max(1);
        for height in lowest..=tip {
            let Some(hash) = self.chain.hash_at_height(height) else {
                continue;
            };
            if self.is_kept(&hash) || self.downloads.asked_of(&hash).is_some() {
                continue;
            }
            for source in self.block_sources(&hash) {
                if self.downloads.retry(hash, source, self.clock.now) {
                    let item = self.block_item(hash);
                    self.out.send(source, NetworkMessage::GetData(vec![item]));
                    break;
                }
            }
        }
    }

    /// How a block is asked for: with its witnesses on BTC (BIP144's MSG_WITNESS_BLOCK);
    /// on BSV as MSG_BLOCK, the only block type the SV node serves (it compares types
    /// exactly, so a witness flag would go unanswered).
    pub(super) fn block_item(&self, hash: BlockHash) -> Inventory {
        match self.profile.chain {
            Chain::Btc => Inventory::WitnessBlock(hash),
            Chain::Bsv => Inventory::Block(hash),
        }
    }

    /// `id` showed it has `hash` (its headers' last, an announcement, a delivery): its best
    /// known block moves there if that has more work (Core's `UpdateBlockAvailability`).
    /// `shown`: by `headers` or `inv` (not a `cmpctblock`, not a delivery), which from an
    /// outbound peer vouches for the block and its ancestors (see [`VouchedBlocks`]).
    pub(super) fn peer_has_block(&mut self, id: PeerId, hash: BlockHash, shown: bool) {
        let Some(work) = self.chain.header_and_work(&hash).map(|(_, _, w)| w) else {
            return;
        };
        let chain = &self.chain;
        let more = |known: Option<BlockHash>| {
            known.is_none_or(|b| chain.header_and_work(&b).is_none_or(|(_, _, w)| work > w))
        };
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if more(p.best_known) {
            p.best_known = Some(hash);
        }
        if shown && !p.hs.inbound && more(p.vouched_tip) {
            p.vouched_tip = Some(hash);
            self.announce_vouched(id);
        }
    }

    /// `id` announced a block whose header we lack (Core's `hashLastUnknownBlock`): it
    /// counts as shown once the header is in ([`Self::resolve_announced`]).
    pub(super) fn peer_announced_unknown(&mut self, id: PeerId, hash: BlockHash) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.last_unknown = Some(hash);
        }
    }

    /// Peers' announced blocks whose header arrived since (Core's `ProcessBlockAvailability`).
    pub(super) fn resolve_announced(&mut self) {
        let resolved: Vec<(PeerId, BlockHash)> = self
            .peers
            .iter()
            .filter_map(|(id, p)| {
                p.last_unknown
                    .filter(|h| self.chain.contains(h))
                    .map(|h| (*id, h))
            })
            .collect();
        for (id, hash) in resolved {
            if let Some(p) = self.peers.get_mut(&id) {
                p.last_unknown = None;
            }
            self.peer_has_block(id, hash, true);
        }
    }

    /// A block `id` delivered: a `relay`-whitelisted peer vouches for what it sends.
    pub(super) fn block_sent_by(&mut self, id: PeerId, hash: BlockHash) {
        let trusted = self
            .peers
            .get(&id)
            .is_some_and(|p| self.permissions_of(p.addr.ip()).has(Permissions::RELAY));
        if trusted && self.vouched_blocks.insert(hash) && self.is_kept(&hash) {
            self.announce_block(hash, Some(id));
        }
    }

    /// Whether `hash` may be announced to ordinary peers: vouched for (see
    /// [`VouchedBlocks`]), or every block is relayed (`--tx-relay all`: the operator vouches
    /// for everything meshd takes).
    pub(super) fn may_announce_block(&self, hash: &BlockHash) -> bool {
        if self.config.tx_relay == TxRelay::All || self.vouched_blocks.contains(hash) {
            return true;
        }
        // On our best chain at or below a vouched block (an outbound peer's shown tip, one
        // of a peer that left, ours).
        self.best_chain_height(hash)
            .is_some_and(|height| height <= self.vouched_height())
    }

    /// The height of `hash` if it is on our best chain (O(1)). A peer's block off it (on a
    /// branch we left) vouches for nothing of ours: walking its branch back to the fork
    /// point on every check would cost up to the 5,000 stored fork headers per peer.
    fn best_chain_height(&self, hash: &BlockHash) -> Option<u32> {
        self.chain
            .is_on_best_chain(hash)
            .then(|| self.chain.height_of(hash))
            .flatten()
    }

    /// The height up to which our best chain is vouched for (see [`VouchedBlocks`]): what
    /// `getheaders` and `getblocks` answers show, so that no peer is shown a block no
    /// validating node vouched for (a Core peer fetching it from us would discourage us, and
    /// a meshd peer takes our answer as a vouch).
    pub(super) fn vouched_height(&self) -> u32 {
        if self.config.tx_relay == TxRelay::All {
            return self.chain.height();
        }
        let shown = self
            .peers
            .values()
            .filter_map(|p| p.vouched_tip.and_then(|v| self.best_chain_height(&v)))
            .max()
            .unwrap_or(0);
        let ours = self
            .vouched_blocks
            .iter()
            .filter(|h| self.chain.is_on_best_chain(h))
            .filter_map(|h| self.chain.height_of(h))
            .max()
            .unwrap_or(0);
        let restored = self.restored_vouch.map_or(0, |(height, hash)| {
            if self.loading {
                height.min(self.chain.height())
            } else if self.chain.hash_at_height(height) == Some(hash) {
                height
            } else {
                0
            }
        });
        shown.max(ours).max(restored).min(self.chain.height())
    }

    /// Kept best-chain blocks that no validating node vouched for yet (they came from an
    /// inbound peer, or as high-bandwidth `cmpctblock` pushes, after which Core announces
    /// nothing more to us: it counts the block as known to us): each outbound peer that has
    /// not shown it is asked for headers from its parent, [`VOUCH_ASK_DELAYS`] after it was
    /// kept. Core answers from its validated active chain only, and meshd up to its
    /// vouched height, so an answer that shows the block vouches for it.
    pub(super) fn ask_for_vouches(&mut self) {
        let now = self.clock.now;
        let due: Vec<(usize, u32)> = self
            .blocks
            .iter()
            .enumerate()
            .filter(|(_, k)| !k.announced && usize::from(k.vouch_asks) < VOUCH_ASK_DELAYS.len())
            .filter(|(_, k)| {
                now.saturating_duration_since(k.kept_at)
                    >= VOUCH_ASK_DELAYS[usize::from(k.vouch_asks)]
            })
            .filter_map(|(i, k)| {
                let h = self.chain.height_of(&k.hash)?;
                self.chain.is_on_best_chain(&k.hash).then_some((i, h))
            })
            .collect();
        for (i, height) in due {
            if self.may_announce_block(&self.blocks[i].hash) {
                self.blocks[i].vouch_asks += 1;
                continue;
            }
            let chain = &self.chain;
            let askers: Vec<PeerId> = self
                .peers
                .values()
                .filter(|p| !p.hs.inbound)
                .filter(|p| {
                    p.vouched_tip
                        .filter(|v| chain.is_on_best_chain(v))
                        .and_then(|v| chain.height_of(&v))
                        .is_none_or(|vh| vh < height)
                })
                .map(|p| p.id)
                .collect();
            let locator = self.chain.locator_from(height.saturating_sub(1));
            let mut sent = askers.is_empty();
            for id in askers {
                sent |= self.maybe_getheaders(id, locator.clone());
            }
            // An ask held back by a request in flight (whose answer, from our tip, may not
            // show this block) is tried again on the next tick, for a while.
            let late = now.saturating_duration_since(self.blocks[i].kept_at) >= VOUCH_ASK_GIVE_UP;
            if sent || late {
                self.blocks[i].vouch_asks += 1;
            }
        }
    }

    /// `by` vouched for more: kept best-chain blocks not announced yet that are vouched for
    /// now are announced, oldest first (without block download, our tip's header).
    fn announce_vouched(&mut self, by: PeerId) {
        if !self.config.fetch_blocks {
            let tip = self.chain.tip();
            if !self.in_ibd() && self.may_announce_block(&tip) {
                self.announce_block(tip, Some(by));
            }
            return;
        }
        let waiting: Vec<BlockHash> = self
            .blocks
            .iter()
            .filter(|k| !k.announced)
            .map(|k| k.hash)
            .filter(|h| self.chain.is_on_best_chain(h) && self.may_announce_block(h))
            .collect();
        self.announcing_batch = waiting.len() > 1;
        for hash in waiting {
            self.announce_block(hash, Some(by));
        }
        self.announcing_batch = false;
    }

    pub(super) fn announce_block(&mut self, hash: BlockHash, except: Option<PeerId>) {
        // High-bandwidth compact-block peers first, and only once (BIP152: before
        // validation, so vouched or not).
        self.announce_compact(hash);
        if !self.may_announce_block(&hash) {
            metrics::counter!("meshd_blocks_not_relayed_total", "reason" => "not_vouched")
                .increment(1);
            debug!(%hash, "block not announced: no validating peer vouched for it yet");
            return;
        }
        if let Some(k) = self.blocks.iter_mut().find(|k| k.hash == hash) {
            k.announced = true;
        }
        let header = self
            .chain
            .height_of(&hash)
            .and_then(|h| self.chain.header_at_height(h));
        let key = hash.to_byte_array();
        let mut ids: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(id, p)| Some(**id) != except && !p.knows(&key))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            // A lone header must connect for the peer (Core: headers only when the peer has
            // the parent's header, `PeerHasHeader`); else an `inv` makes it ask.
            let connects = self.peers.get(&id).is_some_and(|p| {
                header.is_some_and(|h| peer_has_header(&self.chain, p, h.prev_blockhash))
            });
            let compact = if connects {
                self.compact_announcement(id, hash)
            } else {
                None
            };
            let Some(p) = self.peers.get_mut(&id) else {
                continue;
            };
            p.learn(key);
            match (compact, p.wants_headers && connects, header) {
                (Some(frame), ..) => {
                    p.set_header_sent(hash);
                    metrics::counter!("meshd_compact_blocks_sent_total").increment(1);
                    self.out.push(Action::SendShared(id, "cmpctblock", frame));
                }
                (None, true, Some(h)) => {
                    p.set_header_sent(hash);
                    self.out.send(id, NetworkMessage::Headers(vec![h]))
                }
                _ => self
                    .out
                    .send(id, NetworkMessage::Inv(vec![Inventory::Block(hash)])),
            }
        }
    }

    /// A block from `id`: taken only when it was asked of `id` (Core processes only requested
    /// blocks; ours come from direct fetch), checked as Core's IsBlockMutated, and on
    /// refusal asked of another announcer (the honest copy of a mutated one may exist).
    pub(super) fn on_block(&mut self, id: PeerId, block: Block) {
        let hash = block.block_hash();
        if !self.downloads.may_deliver(&hash, id) {
            metrics::counter!("meshd_blocks_dropped_total", "reason" => "unrequested").increment(1);
            debug!(%hash, peer = %id, "block not asked of this peer; dropped");
            return;
        }
        if !self.chain.contains(&hash) {
            // A delivery vouches for nothing (we serve unvouched blocks on request too).
            self.header_from_cmpct = true;
            self.on_headers(id, HashedHeaders::new(vec![block.header]));
            self.header_from_cmpct = false;
            if !self.chain.contains(&hash) {
                return;
            }
        }
        // Checked before it counts as delivered: a refused copy ends only its sender's
        // download (Core's RemoveBlockRequest(hash, peer)), so a parallel one goes on, or
        // takes the request over.
        let txids = match block_check::check_block_txids(&block, self.profile.chain) {
            Ok(txids) => txids,
            Err(e) => {
                self.partials.remove(&(hash, id));
                self.refuse_block(id, hash, e);
                return;
            }
        };
        if !self.downloads.on_block(&hash, id, self.clock.now) {
            return;
        }
        // The whole block in answer to our getblocktxn (the SV node's answer when nearly all
        // is asked, Core's for a deep block) ends that reconstruction: a fallback.
        let answered_getblocktxn = match self.partials.remove(&(hash, id)) {
            Some(p) => {
                super::compact::count_outcome("fallback", p.via);
                true
            }
            None => false,
        };
        let via = if self.fell_back(&hash) || answered_getblocktxn {
            BlockVia::Fallback
        } else {
            BlockVia::Block
        };
        let wire_bytes = block.total_size();
        let mut arrival = Arrival::whole(via, wire_bytes);
        arrival.txids = txids;
        self.take_block(id, block, arrival);
    }

    /// A block from `id` that does not check: the sender pays, and the honest copy (a
    /// mutated one may have one) is asked of another announcer.
    fn refuse_block(&mut self, id: PeerId, hash: BlockHash, e: block_check::BlockError) {
        metrics::counter!("meshd_blocks_rejected_total", "reason" => e.kind()).increment(1);
        let addr = self.peers.get(&id).map(|p| p.addr);
        warn!(%hash, peer = ?addr, id = %id, error = %e, "block refused");
        self.punish(id, e.kind());
        let sources = self.block_sources(&hash);
        let out = self
            .downloads
            .on_copy_refused(hash, id, &sources, self.clock.now);
        self.apply_downloads(out);
    }

    /// A block from `id` that was asked of it and checks: kept, published and announced;
    /// the sender may become a high-bandwidth compact-block peer.
    pub(super) fn take_block(&mut self, id: PeerId, block: Block, arrival: Arrival) {
        let hash = block.block_hash();
        self.downloads.accepted(&hash);
        // Credited to the sender only now, and only if it is new (Core's eviction rule
        // protects peers that recently sent a novel, valid block).
        if let Some(p) = self.peers.get_mut(&id) {
            // It has it: not announced back to it, as cmpctblock or otherwise.
            p.learn(hash.to_byte_array());
        }
        self.peer_has_block(id, hash, false);
        self.block_sent_by(id, hash);
        if !self.is_kept(&hash) {
            self.out.push(Action::LastBlockAt(id, self.clock.now));
            self.keep_and_publish(block, Some(id), arrival);
            self.maybe_high_bandwidth(id);
        }
    }

    /// Keeps a checked block, then passes it on: first as `cmpctblock` to high-bandwidth
    /// peers (the latency that matters: nothing else is done before), then the rest in
    /// [`Self::after_keep`]. Its transactions are hashed once, here or by the block check.
    pub(super) fn keep_and_publish(
        &mut self,
        block: Block,
        from: Option<PeerId>,
        arrival: Arrival,
    ) {
        let hash = block.block_hash();
        if self.blocks.iter().any(|k| k.hash == hash) {
            return;
        }
        let Arrival {
            via,
            txs_requested,
            wire_bytes,
            missing,
            txids,
            known,
        } = arrival;
        let txids = if txids.len() == block.txdata.len() {
            txids
        } else {
            block.txdata.iter().map(|t| t.compute_txid()).collect()
        };
        // What short ids are computed over: wtxids on BTC (version 2), the same as the txid
        // for a transaction without witness; txids on BSV.
        // By the chain, not the configuration in force: a reload that turns compact blocks
        // on must not find txids where wtxids belong.
        let by_wtxid = self.profile.chain == Chain::Btc;
        let short_id_hashes: Vec<[u8; 32]> = block
            .txdata
            .iter()
            .zip(&txids)
            .enumerate()
            .map(|(i, (tx, txid))| {
                if by_wtxid && has_witness(tx) {
                    // From our pools when rebuilt from them (their wtxid), else hashed.
                    known
                        .get(i)
                        .copied()
                        .flatten()
                        .unwrap_or_else(|| tx.compute_wtxid().to_byte_array())
                } else {
                    txid.to_byte_array()
                }
            })
            .collect();
        let block = Arc::new(block);
        self.blocks.push_back(KeptBlock {
            hash,
            block: block.clone(),
            // Framed after the push, once (see `after_keep`), and served whole from then on.
            frame: std::sync::OnceLock::new(),
            missing,
            short_id_hashes,
            compact: None,
            announced: false,
            kept_at: self.clock.now,
            vouch_asks: 0,
        });
        self.announce_compact(hash);
        self.kept_pending.push_back(AfterKeep {
            hash,
            block,
            txids,
            from,
            via,
            txs_requested,
            wire_bytes,
        });
        if !self.defer_after_keep {
            self.run_after_keep();
        }
    }

    /// Everything a kept block still needs once it is pushed, oldest first.
    pub(super) fn run_after_keep(&mut self) {
        let any = !self.kept_pending.is_empty();
        while let Some(kept) = self.kept_pending.pop_front() {
            self.after_keep(kept);
        }
        if any {
            self.trim_kept_blocks();
        }
        if std::mem::take(&mut self.generated_after_keep) {
            self.generated_tip();
        }
    }

    /// The rest of keeping a block: its whole frame, the count and the event, the relay
    /// pool's and the outputs index's bookkeeping, and ordinary announcements (the trim of
    /// kept blocks follows the run, see [`Self::trim_kept_blocks`]). Split from [`Self::keep_and_publish`] so that the actor can send the
    /// high-bandwidth push before this work (see [`SyncCore::defer_bookkeeping`]).
    fn after_keep(&mut self, kept: AfterKeep) {
        let AfterKeep {
            hash,
            block,
            txids,
            from,
            via,
            txs_requested,
            wire_bytes,
        } = kept;
        let height = self.chain.height_of(&hash).unwrap_or(0);
        let magic = self.profile.magic;
        let size = match self.blocks.iter().find(|k| k.hash == hash) {
            Some(k) => k.whole_frame(magic).len() - crate::constants::FRAME_HEADER_LEN,
            None => block.total_size(),
        };
        let tx_count = block.txdata.len();
        metrics::counter!("meshd_blocks_received_total", "via" => via.name()).increment(1);
        let arrival = Arrival {
            via,
            txs_requested,
            wire_bytes,
            missing: Vec::new(),
            txids: Vec::new(),
            known: Vec::new(),
        };
        SyncCore::count_saving(size, &arrival);
        info!(%hash, height, tx_count, size, via = via.name(), txs_requested, wire_bytes, "block received");
        self.out.event(NodeEvent::BlockReceived {
            hash: hash.to_string(),
            height,
            tx_count,
            size,
            from: from
                .and_then(|id| self.peers.get(&id))
                .map(|p| p.label.clone()),
            via,
            txs_requested,
            wire_bytes,
        });
        // wtxids as hashed when the block was kept (BTC's short ids are of them).
        let wtxids = match self.blocks.iter().find(|k| k.hash == hash) {
            Some(k) if self.profile.chain == Chain::Btc => Some(k.short_id_hashes.clone()),
            _ => None,
        };
        // Transactions now in a block leave the relay pool, and are not fetched again.
        for (i, (tx, txid)) in block.txdata.iter().zip(&txids).enumerate() {
            self.pool.remove(txid);
            self.recent_confirmed.insert(&txid.to_byte_array());
            if has_witness(tx) {
                let wtxid = wtxids
                    .as_ref()
                    .and_then(|w| w.get(i).copied())
                    .unwrap_or_else(|| tx.compute_wtxid().to_byte_array());
                self.recent_confirmed.insert(&wtxid);
            }
            let values = tx.output.iter().map(|o| o.value.to_sat()).collect();
            self.block_outputs.insert(*txid, values);
        }
        self.announce_block(hash, from);
    }

    /// Kept blocks past `keep_blocks` go, oldest first, with their outputs' index entries:
    /// once a run of deferred bookkeeping is done (a block trimmed earlier would have its
    /// outputs indexed after, and never removed).
    pub(super) fn trim_kept_blocks(&mut self) {
        while self.blocks.len() > self.config.keep_blocks {
            if let Some(old) = self.blocks.pop_front() {
                // Its txids, without hashing: the short-id hash is the txid but for a
                // transaction with a witness on BTC.
                for (tx, h) in old.block.txdata.iter().zip(&old.short_id_hashes) {
                    let txid = if has_witness(tx) {
                        tx.compute_txid()
                    } else {
                        Txid::from_byte_array(*h)
                    };
                    self.block_outputs.remove(&txid);
                }
            }
        }
    }

    /// `peer` answered our request for `block` with `notfound` or a copy above our limit:
    /// the next source is asked.
    pub(super) fn block_not_delivered(&mut self, block: BlockHash, peer: PeerId, why: Failure) {
        let sources = self.block_sources(&block);
        let out = self
            .downloads
            .on_not_delivered(block, peer, why, &sources, self.clock.now);
        self.apply_downloads(out);
    }

    pub(super) fn block_sources(&self, block: &BlockHash) -> Vec<PeerId> {
        block_sources(&self.chain, self.profile.chain, &self.peers, block)
    }

    /// Sends what the block download core asks for, and reports its failures.
    pub(super) fn apply_downloads(&mut self, out: Outcome) {
        for (block, peer, why) in out.failures {
            self.fallback_ended(&block, peer);
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
                self.out.send(p.id, NetworkMessage::GetData(items));
            }
        }
    }
}

/// Whether `p` has the header `hash` as far as we know (Core's `PeerHasHeader`): one it
/// sent or was told of, or it is (an ancestor on our best chain of) its best known block or
/// the best header we sent it, or it is the genesis.
pub(super) fn peer_has_header(chain: &HeaderChain, p: &SyncPeer, hash: BlockHash) -> bool {
    let at_or_below = |b: BlockHash| {
        b == hash
            || (chain.is_on_best_chain(&b)
                && chain.is_on_best_chain(&hash)
                && chain
                    .height_of(&hash)
                    .is_some_and(|h| chain.height_of(&b).is_some_and(|bh| bh >= h)))
    };
    // Every peer of the network has its genesis.
    chain.height_of(&hash) == Some(0)
        || p.knows(&hash.to_byte_array())
        || p.best_known.is_some_and(at_or_below)
        || p.best_header_sent.is_some_and(at_or_below)
}
