//! Transaction and inventory relay in the sync core: `inv` handling (what to request),
//! `getdata` serving (blocks, BIP37 filtered blocks, pooled transactions), the relay pool's
//! intake (`tx`), fee rates for `feefilter`, and the trickled announcements.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::{BlockHash, Transaction, Txid, Wtxid};
use tracing::debug;

use super::{
    next_inv_to_inbounds, poisson, Action, SyncCore, FILTERED_BLOCK, MAX_INV_PER_FLUSH,
    RECENT_HEADER_AGE, TRICKLE_OUTBOUND, WITNESS_FLAG,
};
use crate::config::TxRelay;
use crate::events::NodeEvent;
use crate::network::Chain;
use crate::shared::peers::PeerId;
use crate::shared::whitelist::Permissions;
use crate::sync::tx_check::check_transaction;
use crate::sync::txrequest::{Announced, Announcer};

impl SyncCore {
    pub(super) fn on_inv(&mut self, id: PeerId, inv: Vec<Inventory>) {
        let mut unknown_block = None;
        let announces_tx = inv.iter().any(|i| {
            matches!(
                i,
                Inventory::Transaction(_) | Inventory::WitnessTransaction(_) | Inventory::WTx(_)
            )
        });
        if announces_tx && self.refuse_tx_on_block_relay(id, "transaction inv") {
            return;
        }
        let Some(p) = self.peers.get(&id) else {
            return;
        };
        let wtxid_peer = p.wtxid_relay;
        let permissions = self.permissions_of(p.addr.ip());
        // Core's preferred download peers: outbound, or whitelisted `noban`.
        let preferred = !p.hs.inbound || permissions.has(Permissions::NOBAN);
        let exempt = permissions.has(Permissions::RELAY);
        // A txid announcement waits while wtxid-relay peers may announce the same by wtxid.
        let txid_delay = !wtxid_peer && self.peers.values().any(|p| p.wtxid_relay);
        let now = self.clock.now;
        let mut known_blocks = Vec::new();
        self.reset_rejects_on_new_tip();
        for item in inv {
            let (key, pooled) = match item {
                Inventory::Block(h) | Inventory::WitnessBlock(h) => {
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.learn(h.to_byte_array());
                        p.announced(h);
                    }
                    if self.chain.contains(&h) {
                        known_blocks.push(h);
                    } else {
                        unknown_block = Some(h);
                    }
                    continue;
                }
                // BIP339: a wtxid-relay peer announces by wtxid, others by txid; Core ignores
                // the other kind from each, and so do we.
                Inventory::Transaction(t) | Inventory::WitnessTransaction(t) if !wtxid_peer => {
                    (t.to_byte_array(), self.pool.contains(&t).then_some(t))
                }
                // The pool's own index: no transaction is hashed again per announcement.
                Inventory::WTx(w) if wtxid_peer => (w.to_byte_array(), self.pool.txid_of(&w)),
                _ => continue,
            };

            if let Some(p) = self.peers.get_mut(&id) {
                p.learn(key);
            }
            if pooled.is_none() && self.recent_rejects.contains(&key) {
                // Core's AlreadyHaveTx: refused since the tip last changed, asked of nobody.
                metrics::counter!("meshd_tx_announcements_ignored_total", "reason" => "recently_rejected")
                    .increment(1);
                continue;
            }
            if pooled.is_none() && self.recent_confirmed.contains(&key) {
                // In a recent block: a lagging peer's announcement, not news.
                metrics::counter!("meshd_tx_announcements_ignored_total", "reason" => "recently_confirmed")
                    .increment(1);
                continue;
            }
            match pooled {
                // Pooled already: an outbound peer announcing exactly it vouches for it. By
                // wtxid, it names the pooled copy; by txid only where no witness can differ
                // (BSV): on BTC a pooled copy with a junk or stripped witness has the same
                // txid as the one the peer vouches for.
                Some(txid) => {
                    let exact = wtxid_peer || self.profile.chain == Chain::Bsv;
                    let unvouched = self.pool.get(&txid).is_some_and(|e| !e.vouched);
                    if exact && self.vouches(id, false) {
                        self.vouch_and_relay(txid, Some(id));
                    } else if unvouched && self.vouches(id, false) {
                        // A txid names no witness: ask this peer for its copy, which vouches
                        // when it matches ours and replaces ours when it does not.
                        let from = Announcer {
                            peer: id,
                            preferred,
                            exempt,
                        };
                        self.tx_requests
                            .announce(from, key, wtxid_peer, txid_delay, now);
                    }
                }
                None => {
                    let from = Announcer {
                        peer: id,
                        preferred,
                        exempt,
                    };
                    let outcome = self
                        .tx_requests
                        .announce(from, key, wtxid_peer, txid_delay, now);
                    if outcome == Announced::PeerFull {
                        metrics::counter!("meshd_tx_announcements_dropped_total").increment(1);
                    }
                }
            }
        }
        // What it has (an outbound peer announces only blocks it validated: a vouch); one
        // whose header we lack counts once the header is in (Core's hashLastUnknownBlock).
        for &h in &known_blocks {
            self.peer_has_block(id, h, true);
        }
        if let Some(h) = unknown_block {
            self.peer_announced_unknown(id, h);
        }
        // Core fetches a block by hash from a peer that announced it: one whose header we
        // have (a peer that served the header before it had the block) is asked now.
        self.fetch_blocks_from(&known_blocks, id);
        if let Some(best) = unknown_block {
            // Core: through MaybeSendGetHeaders, so a peer already asked (syncing, or asked
            // for an earlier announcement) is asked nothing more. A peer we do not sync
            // from (in initial sync, or with a day-old best header, only the sync peer is)
            // is asked once, and at most one such peer per new block: otherwise every
            // announcer of each block during initial sync would download the whole chain.
            let sync_started =
                self.header_sync.is_sync_peer(id) || self.tip_younger_than(RECENT_HEADER_AGE);
            let triggered_before = self
                .peers
                .get(&id)
                .is_some_and(|p| p.inv_triggered_getheaders);
            if sync_started || (!triggered_before && self.last_inv_trigger != Some(best)) {
                let locator = self.chain.locator();
                if self.maybe_getheaders(id, locator) && !sync_started {
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.inv_triggered_getheaders = true;
                    }
                    self.last_inv_trigger = Some(best);
                }
            }
        }
        self.poll_tx_requests();
    }

    /// Sends the transaction requests whose time came (Core's GetRequestable), one `getdata`
    /// per peer, and counts the requests that expired.
    pub(super) fn poll_tx_requests(&mut self) {
        let polled = self.tx_requests.poll(self.clock.now);
        if !polled.expired.is_empty() {
            metrics::counter!("meshd_requests_expired_total", "kind" => "tx")
                .increment(polled.expired.len() as u64);
        }
        let chain = self.profile.chain;
        let mut by_peer: HashMap<PeerId, Vec<Inventory>> = HashMap::new();
        for r in polled.requests {
            let item = if r.by_wtxid {
                Inventory::WTx(Wtxid::from_byte_array(r.key))
            } else {
                match chain {
                    // BIP144's MSG_WITNESS_TX; the SV node knows MSG_TX only.
                    Chain::Btc => Inventory::WitnessTransaction(Txid::from_byte_array(r.key)),
                    Chain::Bsv => Inventory::Transaction(Txid::from_byte_array(r.key)),
                }
            };
            by_peer.entry(r.peer).or_default().push(item);
        }
        for (id, items) in by_peer {
            if let Some(p) = self.peers.get(&id) {
                self.out.send(p.id, NetworkMessage::GetData(items));
            }
        }
    }

    /// Whether a transaction `id` sent (`sent`) or announced vouches for it: a validating
    /// node accepted it. Outbound peers are full-relay peers we chose, and relay only what
    /// their mempool took; a `relay`-whitelisted peer is trusted with what it sends.
    fn vouches(&self, id: PeerId, sent: bool) -> bool {
        self.peers.get(&id).is_some_and(|p| {
            (!p.hs.inbound && p.relay)
                || (sent && self.permissions_of(p.addr.ip()).has(Permissions::RELAY))
        })
    }

    /// Marks a pooled transaction vouched for and, the first time, announces it as the relay
    /// mode allows.
    /// The vouching is kept in every relay mode: it decides eviction credit as well.
    fn vouch_and_relay(&mut self, txid: Txid, from: Option<PeerId>) {
        if !self.pool.vouch(&txid) {
            return;
        }
        self.credit_sender(txid);
        if self.config.tx_relay == TxRelay::Vouched {
            self.announce_tx(txid, from);
        }
    }

    /// Core protects from eviction the peers that recently sent a novel transaction its
    /// mempool accepted. meshd validates no scripts or inputs, so a transaction counts only
    /// once a validating node vouched for it: its first sender is credited then, with the
    /// time it sent it.
    fn credit_sender(&mut self, txid: Txid) {
        let Some((id, at)) = self.pool.get(&txid).and_then(|e| Some((e.sender?, e.at))) else {
            return;
        };
        self.out.push(Action::LastTxAt(id, at));
    }

    pub(super) fn on_getdata(&mut self, id: PeerId, items: Vec<Inventory>) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let mut missing = Vec::new();
        let mut compact = Vec::new();
        for item in items {
            match item {
                // BIP37 filtered block (also with the witness flag): a merkleblock with the
                // transactions the peer's filter matches, then those transactions.
                Inventory::Unknown { inv_type, hash }
                    if inv_type & !WITNESS_FLAG == FILTERED_BLOCK =>
                {
                    let h = BlockHash::from_byte_array(hash);
                    let block = self
                        .blocks
                        .iter()
                        .find(|k| k.hash == h)
                        .map(|k| k.block.clone());
                    match block {
                        Some(block) if p.bloom.is_some() => {
                            // The merkleblock carries the header, as a served block does.
                            p.sent_header(&self.chain, h);
                            let Some(filter) = p.bloom.as_mut() else {
                                continue;
                            };
                            let matched: Vec<&Transaction> = block
                                .txdata
                                .iter()
                                .filter(|tx| filter.matches_and_update(tx))
                                .collect();
                            let ids: HashSet<Txid> =
                                matched.iter().map(|t| t.compute_txid()).collect();
                            let mb = bitcoin::MerkleBlock::from_block_with_predicate(&block, |t| {
                                ids.contains(t)
                            });
                            self.out.send(p.id, NetworkMessage::MerkleBlock(mb));
                            for tx in matched {
                                self.out.send(p.id, NetworkMessage::Tx(tx.clone()));
                            }
                        }
                        _ => missing.push(item),
                    }
                }
                Inventory::CompactBlock(_) => compact.push(item),
                Inventory::Block(h) | Inventory::WitnessBlock(h) => {
                    // One serialized copy, shared: a peer asking for it many times costs a
                    // pointer per request, and its Connection pauses serving while it does
                    // not read.
                    match self.blocks.iter().find(|k| k.hash == h) {
                        Some(k) => {
                            // It now has the block's header (bcoin, synced by `getblocks`
                            // and `getdata`, shows us nothing else): a high-bandwidth push
                            // of the next block connects for it.
                            p.sent_header(&self.chain, h);
                            self.out.push(Action::SendShared(
                                id,
                                "block",
                                k.whole_frame(self.profile.magic),
                            ));
                        }
                        None => missing.push(item),
                    }
                }
                // A block-relay-only peer has no transaction relay (Core: no `tx_relay`): our
                // pool is never shown to it, so it cannot tell this connection is us.
                Inventory::Transaction(_)
                | Inventory::WitnessTransaction(_)
                | Inventory::WTx(_)
                    if p.block_relay_only =>
                {
                    missing.push(item)
                }
                Inventory::Transaction(t) | Inventory::WitnessTransaction(t) => {
                    match self.pool.get(&t) {
                        Some(e) => self.out.send(p.id, NetworkMessage::Tx((*e.tx).clone())),
                        None => missing.push(item),
                    }
                }
                Inventory::WTx(w) => match self.pool.get_by_wtxid(&w) {
                    Some(e) => self.out.send(p.id, NetworkMessage::Tx((*e.tx).clone())),
                    None => missing.push(item),
                },
                other => missing.push(other),
            }
        }
        // Compact blocks asked for (BIP152), after the rest of the message.
        for item in compact {
            if let Inventory::CompactBlock(h) = item {
                if !self.serve_compact(id, h) {
                    missing.push(item);
                }
            }
        }
        if !missing.is_empty() {
            self.out.send(id, NetworkMessage::NotFound(missing));
        }
        // The Connection hands over the next batch once this one is queued.
        self.out.push(Action::GetDataServed(id));
    }

    /// Core resets its recent rejects when the tip changes: a refusal for a fee rate or a
    /// missing parent may not hold on the new tip.
    fn reset_rejects_on_new_tip(&mut self) {
        let tip = self.chain.tip();
        if self.recent_rejects_tip != tip {
            self.recent_rejects.reset();
            self.recent_rejects_tip = tip;
        }
    }

    /// Remembers a refused transaction so no announcer is asked for it again until the tip
    /// changes: by wtxid only, as Core does, so a copy with a junk witness (same txid) cannot
    /// keep the honest one from being fetched. Without a witness the two are one hash, so a
    /// txid announcement of it is covered too.
    fn remember_rejected(&mut self, wtxid: Wtxid) {
        self.reset_rejects_on_new_tip();
        self.recent_rejects.insert(&wtxid.to_byte_array());
    }

    /// A transaction from a peer (or submitted here): the sender's announcements of it are
    /// answered (Core's `ReceivedResponse`; other announcers stay, and are asked next if it
    /// is not taken); once handled, requests by its wtxid end, and by its txid as below (a
    /// txid names no witness: another peer's copy may be the honest one of a malleated
    /// transaction).
    pub(super) fn on_tx(&mut self, from: Option<PeerId>, tx: Transaction) {
        let txid = tx.compute_txid();
        let wtxid = tx.compute_wtxid();
        let (txid_key, wtxid_key) = (txid.to_byte_array(), wtxid.to_byte_array());
        // Who announced exactly it, before the sender's announcement is marked answered.
        let exact = self.announced_by_vouching_peer(txid, wtxid);
        if let Some(id) = from {
            self.tx_requests.not_found(id, &txid_key);
            self.tx_requests.not_found(id, &wtxid_key);
        }
        self.take_tx(from, tx, txid, wtxid, exact);
        self.tx_requests.forget(&wtxid_key);
        // By txid: once pooled, asked no more, unless the pooled copy is unvouched and a
        // vouching peer announced the txid (its copy vouches, or replaces a malleated one).
        // Refused (or not pooled), the txid's other announcers stay: their copies may differ
        // in the witness (without one, txid and wtxid are one key, forgotten above).
        let keep_txid = match self.pool.get(&txid) {
            Some(e) => {
                !e.vouched
                    && self
                        .tx_requests
                        .announcers(&txid_key)
                        .any(|id| self.vouches(id, false))
            }
            None => true,
        };
        if !keep_txid {
            self.tx_requests.forget(&txid_key);
        }
        self.poll_tx_requests();
    }

    /// Whether a peer that vouches (see [`Self::vouches`]) announced exactly this
    /// transaction: its wtxid, or its txid where no witness can differ (BSV).
    fn announced_by_vouching_peer(&self, txid: Txid, wtxid: Wtxid) -> bool {
        let mut exact_keys = vec![wtxid.to_byte_array()];
        if self.profile.chain == Chain::Bsv {
            exact_keys.push(txid.to_byte_array());
        }
        exact_keys.iter().any(|k| {
            self.tx_requests
                .announcers(k)
                .any(|id| self.vouches(id, false))
        })
    }

    fn take_tx(
        &mut self,
        from: Option<PeerId>,
        tx: Transaction,
        txid: Txid,
        wtxid: Wtxid,
        announced_by_outbound: bool,
    ) {
        if let Some(pooled) = self.pool.get(&txid) {
            let sender_vouches = from.is_some_and(|id| self.vouches(id, true));
            if pooled.wtxid == wtxid {
                if sender_vouches {
                    self.vouch_and_relay(txid, from);
                }
                return;
            }
            if !sender_vouches || pooled.vouched {
                return;
            }
            // The pooled copy differs in its witness from the one a validating peer sent (a
            // malleated copy got here first): the vouched copy replaces it.
            metrics::counter!("meshd_txs_dropped_total", "reason" => "replaced_by_vouched")
                .increment(1);
            if let Some(old) = self.pool.remove(&txid) {
                self.keep_extra(old.tx);
            }
        }
        let sender = from.and_then(|id| self.peers.get(&id)).map(|p| p.addr);
        if let Err(e) = check_transaction(&tx, self.profile.chain) {
            metrics::counter!("meshd_txs_dropped_total", "reason" => e.kind()).increment(1);
            debug!(%txid, peer = ?sender, error = %e, "transaction refused");
            self.remember_rejected(wtxid);
            if let Some(id) = from {
                // Core punishes consensus-invalid transactions (TX_CONSENSUS).
                self.punish(id, e.kind());
            }
            return;
        }
        let config = self.config.clone();
        let size = bitcoin::consensus::serialize(&tx).len();
        let fee_rate = self.fee_rate(&tx);
        // Whitelisted `relay` peers' transactions are pooled even when the pool is full.
        let forced = from
            .and_then(|id| self.peers.get(&id))
            .is_some_and(|p| self.permissions_of(p.addr.ip()).has(Permissions::RELAY));
        let limits = (config.tx_pool_max_count, config.tx_pool_max_bytes);
        let tx = Arc::new(tx);
        let inserted = self
            .pool
            .insert(tx.clone(), size, fee_rate, self.clock.now, limits, forced);
        for old in self.pool.take_evicted() {
            self.keep_extra(old);
        }
        match inserted {
            None => {
                // Not kept, but it may be in the next block: kept for reconstruction.
                self.keep_extra(tx);
                // Not pooled for its fee rate: refused until the tip changes, as Core's
                // mempool-minimum-fee rejects (the pool's floor moves with blocks).
                self.remember_rejected(wtxid);
                metrics::counter!("meshd_txs_dropped_total", "reason" => "pool_full").increment(1);
                debug!(%txid, peer = ?sender, "transaction not pooled: the pool is full of better payers");
                return;
            }
            Some(evicted) => {
                metrics::counter!("meshd_txs_dropped_total", "reason" => "evicted")
                    .increment(evicted as u64);
            }
        }
        self.pool.set_sender(&txid, from);
        metrics::counter!("meshd_txs_received_total").increment(1);
        debug!(%txid, size, "transaction pooled");
        self.out.event(NodeEvent::TxReceived {
            txid: txid.to_string(),
            size,
            from: from
                .and_then(|id| self.peers.get(&id))
                .map(|p| p.label.clone()),
        });
        // Submitted here (the operator's own), sent by a peer that vouches, or announced by
        // one before it came: relayed in `vouched` mode; every one in `all`; none in `none`.
        let vouched = match from {
            None => true,
            Some(id) => self.vouches(id, true) || announced_by_outbound,
        };
        if vouched {
            // Vouched in every relay mode: the sender is credited for eviction.
            self.pool.vouch(&txid);
            self.credit_sender(txid);
        }
        match config.tx_relay {
            TxRelay::All => self.announce_tx(txid, from),
            TxRelay::Vouched if vouched => self.announce_tx(txid, from),
            TxRelay::Vouched => {
                metrics::counter!("meshd_txs_not_relayed_total", "reason" => "not_vouched")
                    .increment(1);
            }
            TxRelay::None => {}
        }
    }

    /// Queues announcements of pooled `txid` to every relay peer that does not know it yet
    /// (and is not `from`), within their fee filters.
    fn announce_tx(&mut self, txid: Txid, from: Option<PeerId>) {
        let Some(entry) = self.pool.get(&txid) else {
            return;
        };
        let (wtxid, fee_rate) = (entry.wtxid, entry.fee_rate);
        let config = self.config.clone();
        let trickle = config.trickle;
        for (id, p) in self.peers.iter_mut() {
            // Each peer knows the transaction by the hash it uses for relay.
            let key = if p.wtxid_relay {
                wtxid.to_byte_array()
            } else {
                txid.to_byte_array()
            };
            // Hashed once for the lookup and the insert below (the filter is keyed per peer).
            let hashed = p.known.hash(&key);
            if Some(*id) == from || !p.relay || p.known.contains_hashed(hashed) {
                continue;
            }
            if fee_rate.is_some_and(|r| r < p.feefilter) {
                metrics::counter!("meshd_txs_filtered_total").increment(1);
                continue;
            }
            // Never more queued announcements than the pool can hold: the rest would only
            // name transactions already evicted.
            if p.pending_tx.len() >= config.tx_pool_max_count {
                continue;
            }
            p.known.insert_hashed(hashed);
            p.pending_tx.push(txid);
            if !trickle {
                p.next_flush = self.clock.now;
            }
        }
        if !trickle {
            self.flush_trickle();
        }
    }

    /// Fee rate (sat per 1000 virtual bytes) when every input spends an output we hold (a
    /// pooled transaction or one in a kept block); `None` otherwise. meshd keeps no UTXO set,
    /// so for most transactions the fee is unknown and `feefilter` cannot be applied to them.
    fn fee_rate(&self, tx: &Transaction) -> Option<u64> {
        let mut inputs = 0u64;
        for input in &tx.input {
            let prev = input.previous_output;
            // Pooled parents, then the index of kept blocks' outputs: no block is scanned.
            let value = match self.pool.get(&prev.txid) {
                Some(e) => e.tx.output.get(prev.vout as usize)?.value.to_sat(),
                None => *self
                    .block_outputs
                    .get(&prev.txid)?
                    .get(prev.vout as usize)?,
            };
            inputs = inputs.checked_add(value)?;
        }
        let outputs: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
        let fee = inputs.checked_sub(outputs)?;
        Some(fee.saturating_mul(1000) / (tx.vsize() as u64).max(1))
    }

    pub(super) fn flush_trickle(&mut self) {
        let now = self.clock.now;
        let trickle = self.config.trickle;
        let pool = &self.pool;
        for p in self.peers.values_mut() {
            if now < p.next_flush {
                continue;
            }
            // Core redraws a passed schedule whether or not anything waits: a peer idle
            // past its time does not hear of the next transaction at the next tick.
            if trickle {
                p.next_flush = if p.hs.inbound {
                    next_inv_to_inbounds(
                        &mut self.next_inv_to_inbounds,
                        &mut self.rng,
                        p.network,
                        now,
                    )
                } else {
                    now + poisson(&mut self.rng, TRICKLE_OUTBOUND)
                };
            }
            if p.pending_tx.is_empty() {
                continue;
            }
            let wtxid_relay = p.wtxid_relay;
            // BIP339: MSG_WTX to wtxid-relay peers, MSG_TX to the rest; a transaction that
            // left the pool meanwhile is not announced.
            let batch: Vec<Inventory> = p
                .pending_tx
                .drain(..p.pending_tx.len().min(MAX_INV_PER_FLUSH))
                .filter_map(|t| match (wtxid_relay, pool.get(&t)) {
                    (_, None) => None,
                    (true, Some(e)) => Some(Inventory::WTx(e.wtxid)),
                    (false, Some(_)) => Some(Inventory::Transaction(t)),
                })
                .collect();
            if batch.is_empty() {
                continue;
            }
            metrics::counter!("meshd_txs_relayed_total").increment(batch.len() as u64);
            self.out.send(p.id, NetworkMessage::Inv(batch));
        }
    }
}
