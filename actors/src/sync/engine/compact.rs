//! Compact blocks (BIP152) in the sync core, as Core's net_processing does them:
//! negotiation (`sendcmpct` after the handshake, low-bandwidth; high-bandwidth asked of the
//! peers that last gave us a new block), receiving `cmpctblock` (reconstruction from the
//! relay pool and the extra pool, `getblocktxn` for the rest, the full block when that
//! fails), and sending `cmpctblock` (to high-bandwidth peers as soon as we have a block, and
//! on request) and `blocktxn`. The message-level work is [`crate::sync::compact`]; this file
//! applies it to the core's peers, block downloads and kept blocks.

use std::sync::Arc;

use bitcoin::bip152::{BlockTransactions, BlockTransactionsRequest};
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::p2p::message_compact_blocks::{BlockTxn, GetBlockTxn, SendCmpct};
use bitcoin::p2p::ServiceFlags;
use bitcoin::{BlockHash, Transaction};
use rand::Rng;
use tracing::{debug, info};

use super::{Action, SyncCore};
use crate::events::BlockVia;
use crate::msg::HashedHeaders;
use crate::network::Chain;
use crate::shared::peers::PeerId;
use crate::sync::block_check;
use crate::sync::blocks::Failure;
use crate::sync::compact::{
    self, answer_getblocktxn, short_id_hash, PartialBlock, ReadError, TxnAnswer,
    CMPCTBLOCKS_VERSION, CMPCTBLOCKS_VERSION_TXID, INVALID_CB_NO_BAN_VERSION, MAX_CMPCTBLOCK_DEPTH,
    SHORT_IDS_BLOCKS_VERSION,
};
use crate::wire::compact::{CompactBlock, IndexWidth, TxnRequest};
use crate::wire::Message;

/// Blocks being reconstructed at once (each waits for its `blocktxn`).
///
/// # Security
/// A partial block holds a slot per transaction of the block (up to 100,000 on BTC): only
/// blocks we want (on our best chain, near the tip) and asked of the sender get one, which
/// is never more than a peer's blocks in flight; this caps the sum whatever peers do.
pub const MAX_PARTIAL_BLOCKS: usize = 16;
/// Blocks remembered as having fallen back from a compact block to the full block, so the
/// full block's arrival is reported as such.
const MAX_FALLBACKS_REMEMBERED: usize = 16;
/// Most transactions a BTC block holds (Core: `MAX_BLOCK_WEIGHT` over
/// `MIN_SERIALIZABLE_TRANSACTION_WEIGHT`, 4,000,000 / 40): a compact block claiming more is
/// invalid.
const MAX_BTC_BLOCK_TXS: usize = 100_000;

/// One peer's compact-block state (Core's `m_provides_cmpctblocks` and
/// `m_requested_hb_cmpctblocks`).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PeerCompact {
    /// It sent `sendcmpct` with our version: it can be asked for, and sent, compact blocks.
    pub(super) provides: bool,
    /// It asked us to announce new blocks to it with `cmpctblock` at once (getpeerinfo's
    /// `bip152_hb_from`).
    pub(super) hb_from: bool,
}

/// A block being reconstructed from one peer's compact block (the key names both), and what
/// it cost so far.
pub(super) struct Partial {
    /// When its `getblocktxn` went: the oldest gives way when the table is full.
    since: std::time::Instant,
    block: PartialBlock,
    pub(super) via: BlockVia,
    wire_bytes: usize,
    requested: usize,
}

/// How a block we keep reached us, for events, metrics and the prefill of our own compact
/// blocks.
#[derive(Debug, Clone, Default)]
pub(super) struct Arrival {
    pub(super) via: BlockVia,
    /// Transactions asked for with `getblocktxn`.
    pub(super) txs_requested: usize,
    /// Bytes of the messages that carried it (frame headers excluded).
    pub(super) wire_bytes: usize,
    /// Positions we lacked when we reconstructed it: prefilled when we pass it on.
    pub(super) missing: Vec<usize>,
    /// Its txids in order, when the block check computed them (empty: not yet), so no
    /// later step hashes its transactions again.
    pub(super) txids: Vec<bitcoin::Txid>,
    /// For a block rebuilt from our pools, the short-id hash each pooled transaction came
    /// with (its wtxid on BTC): not hashed again for our own compact block of it.
    pub(super) known: Vec<Option<[u8; 32]>>,
}

impl Arrival {
    /// An arrival in one message of `wire_bytes`, nothing asked for or missing.
    pub(super) fn whole(via: BlockVia, wire_bytes: usize) -> Arrival {
        Arrival {
            via,
            txs_requested: 0,
            wire_bytes,
            missing: Vec::new(),
            txids: Vec::new(),
            known: Vec::new(),
        }
    }
}

/// Bytes of a message's payload (encoded into a sink, which only counts).
fn payload_len<T: bitcoin::consensus::Encodable>(m: &T) -> usize {
    m.consensus_encode(&mut bitcoin::io::sink()).unwrap_or(0)
}

pub(super) fn count_outcome(outcome: &'static str, via: BlockVia) {
    let mode = match via {
        BlockVia::CompactHighBandwidth => "high_bandwidth",
        _ => "low_bandwidth",
    };
    metrics::counter!("meshd_compact_blocks_total", "outcome" => outcome, "mode" => mode)
        .increment(1);
}

impl SyncCore {
    /// The compact-block version meshd speaks on this network: wtxid short ids (version 2)
    /// on BTC, as Core; txid short ids (version 1) on BSV, with 32-bit indexes, as the SV
    /// node (bitcoin-sv src/net/net_processing.cpp: it offers and accepts version 1 only).
    pub(super) fn compact_version(&self) -> Option<u64> {
        if !self.config.compact_blocks {
            return None;
        }
        match self.profile.chain {
            Chain::Btc => Some(CMPCTBLOCKS_VERSION),
            Chain::Bsv => Some(CMPCTBLOCKS_VERSION_TXID),
        }
    }

    /// How wide compact-block indexes are here.
    fn index_width(&self) -> IndexWidth {
        IndexWidth::of(self.profile.chain)
    }

    /// A `cmpctblock` framed once, to be sent to one peer or many.
    fn cmpctblock_frame(&self, cmpct: CompactBlock) -> Arc<[u8]> {
        Message::CmpctBlock(Box::new(cmpct))
            .encode(self.profile.magic)
            .into()
    }

    /// Whether short ids are of wtxids (version 2) here.
    pub(super) fn by_wtxid(&self) -> bool {
        self.compact_version() == Some(CMPCTBLOCKS_VERSION)
    }

    /// The most transactions a block of this network can hold.
    fn max_block_txs(&self) -> usize {
        match self.profile.chain {
            Chain::Btc => MAX_BTC_BLOCK_TXS,
            Chain::Bsv => self.block_limit() / compact::MIN_TRANSACTION_BYTES,
        }
    }

    /// Right after the handshake (Core: on `verack`): we offer compact blocks, low-bandwidth
    /// (we do not ask for announcements yet), to peers whose version knows them and, on BTC,
    /// that serve witnesses (version 2 short ids are of wtxids).
    pub(super) fn offer_compact_blocks(
        &mut self,
        id: PeerId,
        version: u32,
        services: ServiceFlags,
    ) {
        let Some(ours) = self.compact_version() else {
            return;
        };
        let witness = self.profile.chain == Chain::Bsv || services.has(ServiceFlags::WITNESS);
        if version >= SHORT_IDS_BLOCKS_VERSION && witness {
            self.out.send(
                id,
                NetworkMessage::SendCmpct(SendCmpct {
                    send_compact: false,
                    version: ours,
                }),
            );
        }
    }

    /// `sendcmpct` from a peer: only our version counts (Core ignores any other); its
    /// `announce` flag says whether it wants new blocks as `cmpctblock` at once.
    pub(super) fn on_sendcmpct(&mut self, id: PeerId, announce: bool, version: u64) {
        if Some(version) != self.compact_version() {
            debug!(peer = %id, version, "sendcmpct of a version we do not speak; ignored");
            return;
        }
        if let Some(p) = self.peers.get_mut(&id) {
            p.cmpct.provides = true;
            p.cmpct.hb_from = announce;
        }
        self.report_compact_mode(id);
    }

    /// Tells the peer table of `id`'s BIP152 modes, and the gauge of high-bandwidth peers.
    pub(super) fn report_compact_mode(&mut self, id: PeerId) {
        let hb_to = self.high_bandwidth.contains(id);
        if let Some(p) = self.peers.get(&id) {
            self.out
                .push(Action::CompactMode(id, hb_to, p.cmpct.hb_from));
        }
        let from = self.peers.values().filter(|p| p.cmpct.hb_from).count();
        metrics::gauge!("meshd_compact_high_bandwidth_peers", "direction" => "to")
            .set(self.high_bandwidth.len() as f64);
        metrics::gauge!("meshd_compact_high_bandwidth_peers", "direction" => "from")
            .set(from as f64);
    }

    /// `id` gave us a new valid block while it was the only one we waited for (Core's
    /// BlockChecked, MaybeSetPeerAsAnnouncingHeaderAndIDs): it becomes one of our three
    /// high-bandwidth peers, the longest-serving one going back to low-bandwidth.
    pub(super) fn maybe_high_bandwidth(&mut self, id: PeerId) {
        let Some(ours) = self.compact_version() else {
            return;
        };
        if self.in_ibd()
            || self.downloads.in_flight() != 0
            || !self.peers.get(&id).is_some_and(|p| p.cmpct.provides)
        {
            return;
        }
        let peers = &self.peers;
        let changes = self
            .high_bandwidth
            .block_from(id, |p| peers.get(&p).is_some_and(|p| p.hs.inbound));
        for change in changes {
            info!(peer = %change.peer, high = change.high, "compact blocks: high-bandwidth mode {}", if change.high { "asked" } else { "ended" });
            self.out.send(
                change.peer,
                NetworkMessage::SendCmpct(SendCmpct {
                    send_compact: change.high,
                    version: ours,
                }),
            );
            self.report_compact_mode(change.peer);
        }
    }

    /// A peer left: its high-bandwidth place and its reconstructions go.
    pub(super) fn compact_peer_gone(&mut self, id: PeerId) {
        if self.high_bandwidth.contains(id) {
            self.high_bandwidth.peer_gone(id);
        }
        self.partials.retain(|(_, peer), _| *peer != id);
        self.fallbacks.retain(|(_, peer)| *peer != id);
        let from = self.peers.values().filter(|p| p.cmpct.hb_from).count();
        metrics::gauge!("meshd_compact_high_bandwidth_peers", "direction" => "to")
            .set(self.high_bandwidth.len() as f64);
        metrics::gauge!("meshd_compact_high_bandwidth_peers", "direction" => "from")
            .set(from as f64);
    }

    /// Keeps a transaction that is not (or no longer) in the relay pool for reconstruction.
    pub(super) fn keep_extra(&mut self, tx: Arc<Transaction>) {
        if self.compact_version().is_some() {
            let hash = short_id_hash(&tx, self.by_wtxid());
            self.extra_txn.push(hash, tx);
        }
    }

    /// Whether `hash` is a block we want now: on our best chain within the fetch window of
    /// a recent tip (Core's `CanDirectFetch`), and not kept.
    pub(super) fn block_wanted(&self, hash: &BlockHash) -> bool {
        let lowest = self.chain.height().saturating_sub(self.fetch_window() - 1);
        self.tip_younger_than(
            super::DIRECT_FETCH_SPACINGS * crate::sync::header_sync::POW_TARGET_SPACING,
        ) && self.chain.is_on_best_chain(hash)
            && self
                .chain
                .height_of(hash)
                .is_some_and(|h| h >= lowest && h > 0)
            && !self.is_kept(hash)
    }

    pub(super) fn is_kept(&self, hash: &BlockHash) -> bool {
        self.blocks.iter().any(|k| k.hash == *hash)
    }

    /// How a single block is asked of `peer`: as a compact block when it is the only block
    /// we wait for and the peer speaks compact blocks (Core's direct fetch), else whole.
    pub(super) fn block_request_item(
        &self,
        hash: BlockHash,
        peer: PeerId,
        alone: bool,
    ) -> Inventory {
        let compact = alone
            && self.compact_version().is_some()
            && self.peers.get(&peer).is_some_and(|p| p.cmpct.provides);
        if compact {
            Inventory::CompactBlock(hash)
        } else {
            self.block_item(hash)
        }
    }

    /// Asks `peer` for the whole block after its compact block did not do.
    fn fall_back_to_block(&mut self, peer: PeerId, hash: BlockHash, via: BlockVia) {
        count_outcome("fallback", via);
        self.fallbacks.push_back((hash, peer));
        while self.fallbacks.len() > MAX_FALLBACKS_REMEMBERED {
            self.fallbacks.pop_front();
        }
        let item = self.block_item(hash);
        self.out.send(peer, NetworkMessage::GetData(vec![item]));
    }

    /// `cmpctblock` from a peer (Core's CMPCTBLOCK handler). Its header is taken as a
    /// `headers` announcement would be (an invalid header costs the sender, whoever it is;
    /// one that does not connect leads to `getheaders`). Its content is read only when we
    /// asked the peer for it, or asked it to announce so (high-bandwidth); unsolicited
    /// compact blocks from other peers are ignored, as Core now does.
    pub(super) fn on_cmpctblock(&mut self, id: PeerId, cmpct: CompactBlock) {
        if self.compact_version().is_none() {
            return;
        }
        let hash = cmpct.header.block_hash();
        let requested = self.downloads.asked_of(&hash) == Some(id);
        let high = self.high_bandwidth.contains(id);
        if !requested && !high {
            metrics::counter!("meshd_compact_blocks_total", "outcome" => "unsolicited", "mode" => "low_bandwidth").increment(1);
            debug!(%hash, peer = %id, "cmpctblock neither asked for nor announced by a high-bandwidth peer; its content is ignored");
            if !self.chain.contains(&hash) {
                // Its header still announces the block, as a `headers` message would.
                self.header_from_cmpct = true;
                self.on_headers(id, HashedHeaders::new(vec![cmpct.header]));
                self.header_from_cmpct = false;
            }
            return;
        }
        let via = if requested {
            BlockVia::CompactLowBandwidth
        } else {
            BlockVia::CompactHighBandwidth
        };
        let wire_bytes = payload_len(&cmpct);
        if !self.chain.contains(&hash) {
            // Taken as an announcement, but the block is not fetched whole: this message is
            // the answer (the request is recorded as made of the sender).
            self.compact_in_hand = Some((hash, id));
            self.header_from_cmpct = true;
            self.on_headers(id, HashedHeaders::new(vec![cmpct.header]));
            self.header_from_cmpct = false;
            self.compact_in_hand = None;
            if !self.chain.contains(&hash) {
                return;
            }
        }
        // The sender has it: nothing of it is announced back, and it is a source of it
        // (Core's UpdateBlockAvailability); no vouch (BIP152 lets it go before validation).
        if let Some(p) = self.peers.get_mut(&id) {
            p.learn(hash.to_byte_array());
            p.announced(hash);
        }
        self.peer_has_block(id, hash, false);
        if self.is_kept(&hash) {
            return;
        }
        if !self.block_wanted(&hash) {
            if self.downloads.asked_of(&hash) == Some(id) {
                // Asked for, but not near our tip now: our pool will not help.
                let item = self.block_item(hash);
                self.out.send(id, NetworkMessage::GetData(vec![item]));
            }
            return;
        }
        let in_flight_from = self.downloads.asked_of(&hash);
        let ours_to_fill = match in_flight_from {
            Some(p) if p == id => true,
            // In flight from another peer: this high-bandwidth peer's push may become one
            // of its parallel downloads (Core >= 25, MAX_CMPCTBLOCKS_INFLIGHT_PER_BLOCK).
            Some(_) => self.downloads.add_parallel(hash, id, self.clock.now),
            None => !self.downloads.fetch(&[hash], id, self.clock.now).is_empty(),
        };
        // Not the block's request but beside it: on failure it gives up and lets the
        // request go on, where the request falls back to the whole block (Core's
        // `first_in_flight`).
        let parallel = self.downloads.is_parallel(&hash, id);
        if !ours_to_fill {
            // In flight from another peer (or this one has too many blocks asked): try
            // without a round trip, and give up quietly if that does not do (Core).
            if let Ok(partial) = self.init_partial(&cmpct) {
                if partial.missing().is_empty() {
                    if let Ok((block, known)) = partial.fill_known(Vec::new()) {
                        let checked =
                            block_check::check_block_known(&block, self.profile.chain, &known)
                                .ok()
                                .filter(|_| !self.above_block_limit(&block));
                        if let Some(txids) = checked {
                            if let Some(other) = in_flight_from {
                                self.downloads.on_block(&hash, other, self.clock.now);
                            }
                            count_outcome("reconstructed", via);
                            let mut arrival = Arrival::whole(via, wire_bytes);
                            arrival.txids = txids;
                            arrival.known = known;
                            self.take_block(id, block, arrival);
                        }
                    }
                }
            }
            return;
        }
        if self.partials.contains_key(&(hash, id)) {
            debug!(%hash, peer = %id, "a second cmpctblock for a block being reconstructed; ignored");
            return;
        }
        if in_flight_from == Some(id) && self.fallbacks.contains(&(hash, id)) {
            // Its compact block failed and the whole block is asked of it: a repeat is not
            // rebuilt again (Core keeps the failed partial: "already syncing").
            debug!(%hash, peer = %id, "a cmpctblock for a block asked whole after its compact block failed; ignored");
            return;
        }
        match self.init_partial(&cmpct) {
            Err(ReadError::Invalid(kind)) => self.refuse_compact(id, hash, kind, via),
            Err(ReadError::Failed(why)) if parallel => {
                debug!(%hash, peer = %id, why, "parallel compact block not usable; waiting for the block's request");
                count_outcome("fallback", via);
                self.downloads.remove_parallel(&hash, id);
            }
            Err(ReadError::Failed(why)) => {
                debug!(%hash, peer = %id, why, "compact block not usable; asking for the block");
                self.fall_back_to_block(id, hash, via);
            }
            Ok(partial) => {
                let missing = partial.missing();
                if missing.is_empty() {
                    let arrival = Arrival::whole(via, wire_bytes);
                    self.reconstructed(id, partial, Vec::new(), arrival);
                    return;
                }
                if parallel && !self.may_round_trip_in_parallel(hash, id) {
                    // Give up for this peer and wait for the others (Core).
                    debug!(%hash, peer = %id, "compact block in flight elsewhere needs a round trip; the last parallel place is kept for an outbound peer");
                    self.downloads.remove_parallel(&hash, id);
                    return;
                }
                let req = BlockTransactionsRequest {
                    block_hash: hash,
                    indexes: missing.clone(),
                };
                let asked = missing.len();
                let req_bytes = payload_len(&req);
                self.out.send(
                    id,
                    NetworkMessage::GetBlockTxn(GetBlockTxn { txs_request: req }),
                );
                if self.partials.len() >= MAX_PARTIAL_BLOCKS {
                    // The oldest gives way: its block is asked of its peer whole, so it does
                    // not wait for a stall to move it (a parallel attempt just ends).
                    let oldest = self
                        .partials
                        .iter()
                        .min_by_key(|(_, p)| p.since)
                        .map(|(k, p)| (*k, p.via));
                    if let Some(((k, peer), via)) = oldest {
                        self.partials.remove(&(k, peer));
                        if self.downloads.is_parallel(&k, peer) {
                            self.downloads.remove_parallel(&k, peer);
                        } else {
                            self.fall_back_to_block(peer, k, via);
                        }
                    }
                }
                self.partials.insert(
                    (hash, id),
                    Partial {
                        since: self.clock.now,
                        block: partial,
                        via,
                        wire_bytes: wire_bytes + req_bytes,
                        requested: asked,
                    },
                );
            }
        }
    }

    /// Whether a parallel download of `hash` by `id` may cost a round trip (Core's
    /// CMPCTBLOCK handler): from an outbound peer, when an outbound peer already has the
    /// block in flight, or when this is not the last parallel place (kept for an outbound
    /// peer, whose answer is harder to fake).
    fn may_round_trip_in_parallel(&self, hash: BlockHash, id: PeerId) -> bool {
        let outbound = |p: PeerId| self.peers.get(&p).is_some_and(|p| !p.hs.inbound);
        let from_outbound = self.downloads.asked_of(&hash).is_some_and(outbound)
            || self
                .downloads
                .parallel_peers(&hash)
                .iter()
                .any(|p| *p != id && outbound(*p));
        outbound(id)
            || from_outbound
            || self.downloads.downloading_from(&hash)
                < crate::sync::blocks::MAX_CMPCTBLOCKS_INFLIGHT_PER_BLOCK
    }

    /// A malformed compact block or `blocktxn` from `id`: charged (Core: Misbehaving), its
    /// request released first (Core's RemoveBlockRequest), so the next source is asked now;
    /// a parallel attempt just ends, the request it ran beside going on.
    fn refuse_compact(&mut self, id: PeerId, hash: BlockHash, kind: &'static str, via: BlockVia) {
        count_outcome("invalid", via);
        self.punish(id, kind);
        let sources = self.block_sources(&hash);
        let out = self
            .downloads
            .on_copy_refused(hash, id, &sources, self.clock.now);
        self.apply_downloads(out);
    }

    /// Whether a rebuilt block is larger than a whole `block` message we take
    /// (`max-block-message-size`; on BSV the operator's block size, which compact blocks
    /// must not get around).
    fn above_block_limit(&self, block: &bitcoin::Block) -> bool {
        block.total_size() > self.block_limit()
    }

    /// The largest `block` message we read, as the reader applies it (the configured
    /// `max-block-message-size`, never below the ordinary limit on BSV: `config::profile`).
    fn block_limit(&self) -> usize {
        match self.profile.chain {
            Chain::Btc => self.profile.limits.bulk as usize,
            Chain::Bsv => {
                (self.config.max_block_message_size).max(self.profile.limits.general) as usize
            }
        }
    }

    fn init_partial(&self, cmpct: &CompactBlock) -> Result<PartialBlock, ReadError> {
        let by_wtxid = self.by_wtxid();
        let pool = self.pool.entries().map(|(txid, e)| {
            let hash = if by_wtxid {
                e.wtxid.to_byte_array()
            } else {
                txid.to_byte_array()
            };
            (hash, &e.tx)
        });
        PartialBlock::init(
            cmpct,
            self.max_block_txs(),
            self.index_width(),
            pool,
            self.extra_txn.iter(),
        )
    }

    /// `blocktxn`: the transactions our `getblocktxn` asked of the peer. Anything else is
    /// ignored (Core: "block transactions for a block we were not expecting").
    pub(super) fn on_blocktxn(&mut self, id: PeerId, txn: BlockTransactions) {
        let hash = txn.block_hash;
        // From the peer asked, or from a staller whose request moved on: its late answer
        // is still taken (as its late `block` would be).
        let ours = self.partials.contains_key(&(hash, id)) && self.downloads.may_deliver(&hash, id);
        if !ours {
            debug!(%hash, peer = %id, "blocktxn for no block we are reconstructing from it; ignored");
            return;
        }
        let Some(partial) = self.partials.remove(&(hash, id)) else {
            return;
        };
        let wire_bytes = partial.wire_bytes + payload_len(&txn);
        let arrival = Arrival {
            via: partial.via,
            txs_requested: partial.requested,
            wire_bytes,
            missing: partial
                .block
                .missing()
                .into_iter()
                .map(|i| i as usize)
                .collect(),
            txids: Vec::new(),
            known: Vec::new(),
        };
        self.reconstructed(id, partial.block, txn.transactions, arrival);
    }

    /// Fills and checks a reconstruction. A malformed answer costs the peer; a block that
    /// does not check may be a short-id collision, so the whole block is asked for, free.
    fn reconstructed(
        &mut self,
        id: PeerId,
        partial: PartialBlock,
        missing: Vec<Transaction>,
        arrival: Arrival,
    ) {
        let hash = partial.hash();
        let parallel = self.downloads.is_parallel(&hash, id);
        match partial.fill_known(missing) {
            Err(ReadError::Invalid(kind)) => self.refuse_compact(id, hash, kind, arrival.via),
            Err(ReadError::Failed(_)) if parallel => {
                debug!(%hash, peer = %id, "parallel compact block failed to rebuild; waiting for the block's request");
                count_outcome("fallback", arrival.via);
                self.downloads.remove_parallel(&hash, id);
            }
            Err(ReadError::Failed(_)) => self.fall_back_to_block(id, hash, arrival.via),
            Ok((block, known)) => {
                let mut arrival = arrival;
                // What our pools gave is not hashed again: we hashed it when it came in.
                match block_check::check_block_known(&block, self.profile.chain, &known) {
                    Ok(txids) => {
                        arrival.txids = txids;
                        arrival.known = known;
                    }
                    Err(e) if e.may_be_collision() && parallel => {
                        debug!(%hash, peer = %id, error = %e, "parallel reconstruction does not check; waiting for the block's request");
                        count_outcome("fallback", arrival.via);
                        self.downloads.remove_parallel(&hash, id);
                        return;
                    }
                    Err(e) if e.may_be_collision() => {
                        debug!(%hash, peer = %id, error = %e, "reconstructed block does not check (a short-id collision, or a bad block); asking for the block");
                        self.fall_back_to_block(id, hash, arrival.via);
                        return;
                    }
                    Err(e) => {
                        // Its transactions are the block's (they hash to its root): the block
                        // is bad, not our reconstruction. Dropped, unpunished, as Core's
                        // READ_STATUS_CHECKBLOCK_FAILED (BIP152 lets a peer relay a block
                        // before validating it).
                        count_outcome("invalid", arrival.via);
                        metrics::counter!("meshd_blocks_rejected_total", "reason" => e.kind())
                            .increment(1);
                        debug!(%hash, peer = %id, error = %e, "reconstructed block is invalid; dropped");
                        self.partials.remove(&(hash, id));
                        // A failed try (counted against MAX_BLOCK_TRIES), not a delivery: the
                        // peer's request ends (Core's RemoveBlockRequest) and the next source
                        // is asked now; a parallel attempt just ends, the request going on.
                        let sources = self.block_sources(&hash);
                        let out =
                            self.downloads
                                .on_copy_refused(hash, id, &sources, self.clock.now);
                        self.apply_downloads(out);
                        return;
                    }
                }
                // After the merkle check: a block too large only because a collision put
                // wrong transactions in is asked for whole, free, not given up as too large.
                if self.above_block_limit(&block) {
                    // As a whole copy of it would be (skipped unread, RequestedTooLarge): not
                    // kept, and not served on to peers whose limit is ours.
                    count_outcome("too_large", arrival.via);
                    self.partials.remove(&(hash, id));
                    self.block_not_delivered(hash, id, Failure::TooLarge);
                    return;
                }
                if !self.downloads.on_block(&hash, id, self.clock.now) {
                    return;
                }
                let outcome = if arrival.txs_requested == 0 {
                    "reconstructed"
                } else {
                    "txn_requested"
                };
                count_outcome(outcome, arrival.via);
                self.take_block(id, block, arrival);
            }
        }
    }

    /// `getdata(MSG_CMPCT_BLOCK)`: a compact block for one of the last
    /// [`MAX_CMPCTBLOCK_DEPTH`] blocks, the whole block for an older one (Core). False when
    /// we do not keep it.
    pub(super) fn serve_compact(&mut self, id: PeerId, hash: BlockHash) -> bool {
        let Some(at) = self.blocks.iter().position(|k| k.hash == hash) else {
            return false;
        };
        // Either answer carries the header: the peer has it.
        if let Some(p) = self.peers.get_mut(&id) {
            p.sent_header(&self.chain, hash);
        }
        let depth = self.kept_depth(&hash);
        if depth <= MAX_CMPCTBLOCK_DEPTH && self.compact_version().is_some() {
            let frame = self.compact_of(at);
            self.out.push(Action::SendShared(id, "cmpctblock", frame));
        } else {
            let frame = self.blocks[at].whole_frame(self.profile.magic);
            self.out.push(Action::SendShared(id, "block", frame));
        }
        true
    }

    /// How far block `hash` lies below the highest block we keep on the best chain. Core
    /// measures the compact-block depths from its active chain, the blocks it has; our
    /// header tip can run ahead of those (headers in, blocks still coming), which would
    /// turn the newest block we can serve into an "old" one.
    fn kept_depth(&self, hash: &BlockHash) -> u32 {
        let Some(height) = self.chain.height_of(hash) else {
            return u32::MAX;
        };
        let top = self
            .kept_tip()
            .and_then(|t| self.chain.height_of(&t))
            .unwrap_or(height);
        top.saturating_sub(height)
    }

    /// The highest block we keep on the best chain (Core's active tip, as far as meshd
    /// has one).
    fn kept_tip(&self) -> Option<BlockHash> {
        self.blocks
            .iter()
            .filter(|k| self.chain.is_on_best_chain(&k.hash))
            .filter_map(|k| self.chain.height_of(&k.hash).map(|h| (h, k.hash)))
            .max_by_key(|(h, _)| *h)
            .map(|(_, hash)| hash)
    }

    /// The compact block of kept block `at`, framed: the coinbase and what we lacked
    /// prefilled.
    fn compact_of(&mut self, at: usize) -> Arc<[u8]> {
        if let Some(frame) = &self.blocks[at].compact {
            return frame.clone();
        }
        let nonce: u64 = self.rng.gen();
        let k = &self.blocks[at];
        let cmpct = compact::compact_block(&k.block, nonce, &k.short_id_hashes, &k.missing);
        let frame = self.cmpctblock_frame(cmpct);
        self.blocks[at].compact = Some(frame.clone());
        frame
    }

    /// `getblocktxn` (Core's handler): answered from a kept block within
    /// [`compact::MAX_BLOCKTXN_DEPTH`], with the whole block below; an index past the
    /// block's end costs the peer; a block we do not keep is not answered.
    pub(super) fn on_getblocktxn(&mut self, id: PeerId, req: TxnRequest) {
        self.answer_getblocktxn(id, req);
        // It was served in the Connection's getdata turn: the next may go.
        self.out.push(Action::GetDataServed(id));
    }

    fn answer_getblocktxn(&mut self, id: PeerId, req: TxnRequest) {
        let Some(k) = self.blocks.iter().find(|k| k.hash == req.block_hash) else {
            debug!(hash = %req.block_hash, peer = %id, "getblocktxn for a block we do not keep");
            return;
        };
        let depth = self.kept_depth(&k.hash);
        match answer_getblocktxn(&req, &k.block, depth, self.profile.chain) {
            TxnAnswer::Txn(transactions) => {
                // Framed here and sent shared, as blocks are: served in the peer's getdata
                // turn, not held against its queue of ordinary messages (a BSV `blocktxn`
                // may be most of a large block).
                let frame: Arc<[u8]> =
                    Message::Network(NetworkMessage::BlockTxn(BlockTxn { transactions }))
                        .encode(self.profile.magic)
                        .into();
                self.out.push(Action::SendShared(id, "blocktxn", frame));
            }
            TxnAnswer::FullBlock => {
                let frame = k.whole_frame(self.profile.magic);
                self.out.push(Action::SendShared(id, "block", frame));
            }
            TxnAnswer::OutOfRange => self.punish(id, "getblocktxn_out_of_range"),
        }
    }

    /// To the peers that asked for high-bandwidth announcements and do not know it yet: the
    /// new tip block as `cmpctblock`, before any other announcement (BIP152 allows relay
    /// once the header's proof of work is checked; ours is checked, and the block too).
    /// Returns the peers sent to, which other announcements skip.
    pub(super) fn announce_compact(&mut self, hash: BlockHash) -> Vec<PeerId> {
        if self.compact_version().is_none() || self.chain.tip() != hash {
            return Vec::new();
        }
        let Some(at) = self.blocks.iter().position(|k| k.hash == hash) else {
            return Vec::new();
        };
        // Core's m_highest_fast_announce: once per height. A reorganisation onto a block
        // no higher than one already pushed goes the ordinary way (`announce_block`), as
        // `cmpctblock` still to the high-bandwidth peers that have its parent.
        let height = self.chain.height_of(&hash).unwrap_or(0);
        if height <= self.highest_fast_announce {
            return Vec::new();
        }
        self.highest_fast_announce = height;
        let key = hash.to_byte_array();
        let parent = self.blocks[at].block.header.prev_blockhash;
        let chain = &self.chain;
        let to: Vec<PeerId> = self
            .peers
            .values()
            // Core's NewPoWValidBlock: only to peers from INVALID_CB_NO_BAN_VERSION, which
            // do not punish a compact block that turns out invalid, that do not have its
            // header and do have its parent's (PeerHasHeader: else it could not connect it).
            .filter(|p| {
                p.cmpct.provides
                    && p.cmpct.hb_from
                    && p.version >= INVALID_CB_NO_BAN_VERSION
                    && !p.knows(&key)
                    && super::blocks::peer_has_header(chain, p, parent)
            })
            .map(|p| p.id)
            .collect();
        if to.is_empty() {
            return to;
        }
        // One nonce for all: the short ids are computed once.
        let frame = self.compact_of(at);
        for id in &to {
            if let Some(p) = self.peers.get_mut(id) {
                p.learn(key);
                p.set_header_sent(hash);
            }
            self.out
                .push(Action::SendShared(*id, "cmpctblock", frame.clone()));
        }
        metrics::counter!("meshd_compact_blocks_sent_total").increment(to.len() as u64);
        to
    }

    /// The ordinary announcement of a kept block to a peer that asked for high-bandwidth
    /// compact blocks: the `cmpctblock` in place of the lone header (Core's SendMessages,
    /// the path of peers below INVALID_CB_NO_BAN_VERSION, which the push skips, and of
    /// blocks the push did not carry). `None`: not such a peer, or not a block we keep.
    pub(super) fn compact_announcement(
        &mut self,
        id: PeerId,
        hash: BlockHash,
    ) -> Option<Arc<[u8]>> {
        let p = self.peers.get(&id)?;
        // Core sends header-and-ids only for a lone new block, the tip of the blocks it
        // has: a batch (a branch, blocks vouched for together) goes as headers.
        if !(p.cmpct.provides && p.cmpct.hb_from)
            || self.compact_version().is_none()
            || self.announcing_batch
            || self.kept_tip() != Some(hash)
        {
            return None;
        }
        let at = self.blocks.iter().position(|k| k.hash == hash)?;
        Some(self.compact_of(at))
    }

    /// Whether the block's whole copy was asked for after its compact block failed.
    pub(super) fn fell_back(&mut self, hash: &BlockHash) -> bool {
        let before = self.fallbacks.len();
        self.fallbacks.retain(|(h, _)| h != hash);
        self.fallbacks.len() != before
    }

    /// `peer`'s request of `block` ended without the block: a fallback it was is over (a
    /// compact block from it, asked again, is read again).
    pub(super) fn fallback_ended(&mut self, block: &BlockHash, peer: PeerId) {
        self.fallbacks.retain(|(h, p)| !(h == block && *p == peer));
    }

    /// Forgets reconstructions whose peer's copy would no longer be taken (the block came
    /// another way, or the stall that moved it is past the download timeout).
    pub(super) fn prune_partials(&mut self) {
        let downloads = &self.downloads;
        self.partials
            .retain(|(hash, peer), _| downloads.may_deliver(hash, *peer));
    }

    /// Bytes a block's arrival saved against the whole block.
    pub(super) fn count_saving(size: usize, arrival: &Arrival) {
        if arrival.via != BlockVia::Block && arrival.via != BlockVia::Fallback {
            metrics::counter!("meshd_compact_block_bytes_saved_total")
                .increment(size.saturating_sub(arrival.wire_bytes) as u64);
        }
    }
}
