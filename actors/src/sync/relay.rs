//! Transaction and inventory relay of the Sync actor: `inv` handling (what to request),
//! `getdata` serving (blocks, BIP37 filtered blocks, pooled transactions), the relay pool's
//! intake (`tx`), fee rates for `feefilter`, and the trickled announcements.

use std::collections::HashSet;
use std::time::Instant;

use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::{BlockHash, Transaction, Txid};
use tracing::debug;

use super::tx_check::check_transaction;
use super::{
    poisson, SyncActorState, FILTERED_BLOCK, MAX_INV_PER_FLUSH, MAX_PEER_TX_IN_FLIGHT,
    TRICKLE_INBOUND, TRICKLE_OUTBOUND, WITNESS_FLAG,
};
use crate::events::NodeEvent;
use crate::manager::peers::PeerId;
use crate::manager::whitelist::Permissions;
use crate::msg::ConnectionMsg;

impl SyncActorState {
    pub(super) fn on_inv(&mut self, id: PeerId, inv: Vec<Inventory>) {
        let mut want_tx = Vec::new();
        let mut unknown_block = None;
        let wtxid_peer = self.peers.get(&id).is_some_and(|p| p.wtxid_relay);
        for item in inv {
            match item {
                Inventory::Block(h) | Inventory::WitnessBlock(h) => {
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.learn(h.to_byte_array());
                    }
                    if !self.chain.contains(&h) {
                        unknown_block = Some(h);
                    }
                }
                // BIP339: a wtxid-relay peer announces by wtxid, others by txid; Core ignores
                // the other kind from each, and so do we.
                Inventory::Transaction(t) | Inventory::WitnessTransaction(t) if !wtxid_peer => {
                    let pooled = self.pool.contains(&t);
                    want_tx.extend(self.consider_tx(
                        id,
                        t.to_byte_array(),
                        pooled,
                        Inventory::WitnessTransaction(t),
                    ));
                }
                Inventory::WTx(w) if wtxid_peer => {
                    let pooled = self.pool.contains_wtxid(&w);
                    want_tx.extend(self.consider_tx(
                        id,
                        w.to_byte_array(),
                        pooled,
                        Inventory::WTx(w),
                    ));
                }
                _ => {}
            }
        }
        if unknown_block.is_some() {
            self.getheaders(id, BlockHash::all_zeros());
        }
        if let (false, Some(p)) = (want_tx.is_empty(), self.peers.get(&id)) {
            p.send(NetworkMessage::GetData(want_tx));
        }
    }

    /// A transaction announced by `id` under `key`: remembered as known to it, and asked for
    /// (`ask`) unless pooled or already asked of someone, within the peer's request cap. A
    /// full pool still asks: the newcomer may pay more than what it would evict.
    fn consider_tx(
        &mut self,
        id: PeerId,
        key: [u8; 32],
        pooled: bool,
        ask: Inventory,
    ) -> Option<Inventory> {
        if let Some(p) = self.peers.get_mut(&id) {
            p.learn(key);
        }
        let wanted = !pooled
            && self
                .requested_tx
                .try_request(key, id, Instant::now(), MAX_PEER_TX_IN_FLIGHT);
        wanted.then_some(ask)
    }

    pub(super) fn on_getdata(&mut self, id: PeerId, items: Vec<Inventory>) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let mut missing = Vec::new();
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
                    match (block, p.bloom.as_mut()) {
                        (Some(block), Some(filter)) => {
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
                            p.send(NetworkMessage::MerkleBlock(mb));
                            for tx in matched {
                                p.send(NetworkMessage::Tx(tx.clone()));
                            }
                        }
                        _ => missing.push(item),
                    }
                }
                Inventory::Block(h) | Inventory::WitnessBlock(h) => {
                    // One serialized copy, shared: a peer asking for it many times costs a
                    // pointer per request, and its Connection pauses serving while it does
                    // not read.
                    match self.blocks.iter().find(|k| k.hash == h) {
                        Some(k) => {
                            let _ = p.actor.cast(ConnectionMsg::SendShared {
                                command: "block",
                                frame: k.frame.clone(),
                            });
                        }
                        None => missing.push(item),
                    }
                }
                Inventory::Transaction(t) | Inventory::WitnessTransaction(t) => {
                    match self.pool.get(&t) {
                        Some(e) => p.send(NetworkMessage::Tx((*e.tx).clone())),
                        None => missing.push(item),
                    }
                }
                Inventory::WTx(w) => match self.pool.get_by_wtxid(&w) {
                    Some(e) => p.send(NetworkMessage::Tx((*e.tx).clone())),
                    None => missing.push(item),
                },
                other => missing.push(other),
            }
        }
        if !missing.is_empty() {
            p.send(NetworkMessage::NotFound(missing));
        }
        // The Connection hands over the next batch once this one is queued.
        let _ = p.actor.cast(ConnectionMsg::GetDataServed);
    }

    pub(super) fn on_tx(&mut self, from: Option<PeerId>, tx: Transaction) {
        let txid = tx.compute_txid();
        let wtxid = tx.compute_wtxid();
        self.requested_tx.received(&txid.to_byte_array());
        self.requested_tx.received(&wtxid.to_byte_array());
        if self.pool.contains(&txid) {
            return;
        }
        let sender = from.and_then(|id| self.peers.get(&id)).map(|p| p.addr);
        if let Err(e) = check_transaction(&tx) {
            metrics::counter!("meshd_txs_dropped_total", "reason" => e.kind()).increment(1);
            debug!(%txid, peer = ?sender, error = %e, "transaction refused");
            if let Some(id) = from {
                // Core punishes consensus-invalid transactions (TX_CONSENSUS).
                self.punish(id, e.kind());
            }
            return;
        }
        let config = self.ctx.config();
        let size = bitcoin::consensus::serialize(&tx).len();
        let fee_rate = self.fee_rate(&tx);
        // Whitelisted `relay` peers' transactions are pooled even when the pool is full.
        let forced = from
            .and_then(|id| self.peers.get(&id))
            .is_some_and(|p| self.ctx.permissions_of(p.addr.ip()).has(Permissions::RELAY));
        let limits = (config.tx_pool_max_count, config.tx_pool_max_bytes);
        match self
            .pool
            .insert(tx, size, fee_rate, Instant::now(), limits, forced)
        {
            None => {
                metrics::counter!("meshd_txs_dropped_total", "reason" => "pool_full").increment(1);
                debug!(%txid, peer = ?sender, "transaction not pooled: the pool is full of better payers");
                return;
            }
            Some(evicted) => {
                metrics::counter!("meshd_txs_dropped_total", "reason" => "evicted")
                    .increment(evicted as u64);
            }
        }
        if let Some(id) = from {
            // A novel transaction that entered the pool: credited for eviction (Core).
            self.ctx
                .peers
                .update(id, |p| p.last_tx_at = Some(Instant::now()));
        }
        metrics::counter!("meshd_txs_received_total").increment(1);
        debug!(%txid, size, "transaction pooled");
        self.ctx.events.publish(NodeEvent::TxReceived {
            txid: txid.to_string(),
            size,
            from: from
                .and_then(|id| self.ctx.peers.get(id))
                .map(|p| p.address()),
        });
        let trickle = config.trickle;
        for (id, p) in self.peers.iter_mut() {
            // Each peer knows the transaction by the hash it uses for relay.
            let key = if p.wtxid_relay {
                wtxid.to_byte_array()
            } else {
                txid.to_byte_array()
            };
            if Some(*id) == from || !p.relay || p.knows(&key) {
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
            p.learn(key);
            p.pending_tx.push(txid);
            if !trickle {
                p.next_flush = Instant::now();
            }
        }
        if !trickle {
            self.flush_trickle();
        }
        self.publish_status();
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
        let now = Instant::now();
        let trickle = self.ctx.config().trickle;
        let pool = &self.pool;
        for p in self.peers.values_mut() {
            if p.pending_tx.is_empty() || now < p.next_flush {
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
            p.send(NetworkMessage::Inv(batch));
            if trickle {
                p.next_flush = now
                    + poisson(if p.inbound {
                        TRICKLE_INBOUND
                    } else {
                        TRICKLE_OUTBOUND
                    });
            }
        }
    }
}
