//! The transaction relay pool as a sans-IO core: bounded in count and bytes, indexed by txid
//! and wtxid (BIP339), expiring by age, and, when full, evicting its lowest-feerate entry
//! (unknown fee rates count as zero), then the oldest, in O(log n) through an ordered index.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::{Transaction, Txid, Wtxid};

/// A pooled transaction.
#[derive(Debug, Clone)]
pub struct PoolEntry {
    /// The transaction.
    pub tx: Arc<Transaction>,
    /// Its wtxid (computed once).
    pub wtxid: Wtxid,
    /// When it entered.
    pub at: Instant,
    /// Serialized bytes.
    pub size: usize,
    /// Sat per 1000 virtual bytes, when every input's value is known.
    pub fee_rate: Option<u64>,
    /// A validating node vouched for it (see `--tx-relay`): it may be announced.
    pub vouched: bool,
    /// The peer that sent it first, credited for eviction once it is vouched for.
    pub sender: Option<crate::shared::peers::PeerId>,
}

/// Eviction order: fee rate, then age, then txid (to make keys unique).
type EvictionKey = (u64, Instant, Txid);

fn key(txid: Txid, e: &PoolEntry) -> EvictionKey {
    (e.fee_rate.unwrap_or(0), e.at, txid)
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct RelayPool {
    by_txid: HashMap<Txid, PoolEntry>,
    by_wtxid: HashMap<Wtxid, Txid>,
    eviction: BTreeSet<EvictionKey>,
    bytes: usize,
    /// Evicted by the last insertion, until taken.
    evicted: Vec<Arc<Transaction>>,
}

impl RelayPool {
    /// Every pooled transaction with its txid.
    pub fn entries(&self) -> impl Iterator<Item = (&Txid, &PoolEntry)> {
        self.by_txid.iter()
    }

    /// Transactions held.
    pub fn len(&self) -> usize {
        self.by_txid.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.by_txid.is_empty()
    }

    /// Serialized bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The entry for `txid`.
    pub fn get(&self, txid: &Txid) -> Option<&PoolEntry> {
        self.by_txid.get(txid)
    }

    /// The entry for `wtxid`.
    pub fn get_by_wtxid(&self, wtxid: &Wtxid) -> Option<&PoolEntry> {
        self.by_wtxid.get(wtxid).and_then(|t| self.by_txid.get(t))
    }

    /// The txid of the pooled transaction with `wtxid`.
    pub fn txid_of(&self, wtxid: &Wtxid) -> Option<Txid> {
        self.by_wtxid.get(wtxid).copied()
    }

    /// Whether `txid` is held.
    pub fn contains(&self, txid: &Txid) -> bool {
        self.by_txid.contains_key(txid)
    }

    /// Whether `wtxid` is held.
    pub fn contains_wtxid(&self, wtxid: &Wtxid) -> bool {
        self.by_wtxid.contains_key(wtxid)
    }

    /// Records the peer that sent `txid`.
    pub fn set_sender(&mut self, txid: &Txid, sender: Option<crate::shared::peers::PeerId>) {
        if let Some(e) = self.by_txid.get_mut(txid) {
            e.sender = sender;
        }
    }

    /// Marks `txid` vouched for; true when it was held and not vouched for before.
    pub fn vouch(&mut self, txid: &Txid) -> bool {
        match self.by_txid.get_mut(txid) {
            Some(e) if !e.vouched => {
                e.vouched = true;
                true
            }
            _ => false,
        }
    }

    /// Removes `txid`.
    pub fn remove(&mut self, txid: &Txid) -> Option<PoolEntry> {
        let e = self.by_txid.remove(txid)?;
        self.by_wtxid.remove(&e.wtxid);
        self.eviction.remove(&key(*txid, &e));
        self.bytes -= e.size;
        Some(e)
    }

    /// Adds `tx` if it fits within `max_count` and `max_bytes`, evicting entries that pay no
    /// more than it (any entry when `forced`). Returns the number evicted, or `None` when it
    /// does not fit (nothing was evicted then).
    pub fn insert(
        &mut self,
        tx: impl Into<Arc<Transaction>>,
        size: usize,
        fee_rate: Option<u64>,
        now: Instant,
        (max_count, max_bytes): (usize, usize),
        forced: bool,
    ) -> Option<usize> {
        if size > max_bytes || max_count == 0 {
            return None;
        }
        let tx: Arc<Transaction> = tx.into();
        let txid = tx.compute_txid();
        if self.by_txid.contains_key(&txid) {
            return Some(0);
        }
        let rate = fee_rate.unwrap_or(0);
        // Find the victims first: evict only if the newcomer fits once they are gone.
        let (mut count, mut bytes, mut victims) = (self.len(), self.bytes, Vec::new());
        for k in &self.eviction {
            if count < max_count && bytes + size <= max_bytes {
                break;
            }
            if !forced && k.0 > rate {
                return None;
            }
            count -= 1;
            bytes -= self.by_txid.get(&k.2).map_or(0, |e| e.size);
            victims.push(k.2);
        }
        if count >= max_count || bytes + size > max_bytes {
            return None;
        }
        for v in &victims {
            if let Some(e) = self.remove(v) {
                self.evicted.push(e.tx);
            }
        }
        let e = PoolEntry {
            wtxid: tx.compute_wtxid(),
            tx,
            at: now,
            size,
            fee_rate,
            vouched: false,
            sender: None,
        };
        self.eviction.insert(key(txid, &e));
        self.by_wtxid.insert(e.wtxid, txid);
        self.bytes += size;
        self.by_txid.insert(txid, e);
        Some(victims.len())
    }

    /// The transactions the last insertions evicted, for the compact-block extra pool (the
    /// caller takes them after each insertion, so this holds at most one insertion's victims).
    pub fn take_evicted(&mut self) -> Vec<Arc<Transaction>> {
        std::mem::take(&mut self.evicted)
    }

    /// Removes what entered `max_age` or more before `now`; returns how many.
    pub fn expire(&mut self, now: Instant, max_age: Duration) -> usize {
        let old: Vec<Txid> = self
            .by_txid
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.at) >= max_age)
            .map(|(t, _)| *t)
            .collect();
        for t in &old {
            self.remove(t);
        }
        old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    fn tx(n: u8) -> Transaction {
        Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![bitcoin::TxIn {
                previous_output: bitcoin::OutPoint::new(Txid::from_byte_array([n; 32]), 0),
                ..Default::default()
            }],
            output: vec![bitcoin::TxOut {
                value: bitcoin::Amount::from_sat(1),
                script_pubkey: bitcoin::ScriptBuf::new(),
            }],
        }
    }

    #[test]
    fn full_evicts_lowest_rate_then_oldest_and_never_a_better_payer() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut p = RelayPool::default();
        let limits = (3, 1_000_000);
        assert_eq!(p.insert(tx(1), 100, Some(5), at(0), limits, false), Some(0));
        assert_eq!(p.insert(tx(2), 100, None, at(1), limits, false), Some(0));
        assert_eq!(p.insert(tx(3), 100, None, at(2), limits, false), Some(0));
        // Unknown rate (0) evicts the oldest unknown, not the one paying 5.
        assert_eq!(p.insert(tx(4), 100, None, at(3), limits, false), Some(1));
        assert!(!p.contains(&tx(2).compute_txid()));
        assert!(p.contains(&tx(1).compute_txid()));
        // Paying 1, newcomers evict the zeros, then the oldest paying 1, never the one paying 5.
        assert_eq!(p.insert(tx(5), 100, Some(1), at(4), limits, false), Some(1));
        assert_eq!(p.insert(tx(6), 100, Some(1), at(5), limits, false), Some(1));
        assert_eq!(p.insert(tx(7), 100, Some(1), at(6), limits, false), Some(1));
        assert_eq!(p.len(), 3);
        assert!(p.contains(&tx(1).compute_txid()));
        // Forced (a whitelisted relay peer) evicts regardless.
        assert_eq!(p.insert(tx(8), 100, None, at(7), limits, true), Some(1));
        assert_eq!(p.bytes(), 300);
        assert!(p.get_by_wtxid(&tx(8).compute_wtxid()).is_some());
    }

    #[test]
    fn bytes_bound_and_expiry_keep_every_index_in_step() {
        let t0 = Instant::now();
        let mut p = RelayPool::default();
        assert_eq!(p.insert(tx(1), 600, None, t0, (10, 1000), false), Some(0));
        assert_eq!(p.insert(tx(2), 2000, None, t0, (10, 1000), false), None);
        assert_eq!(
            p.insert(tx(3), 600, Some(1), t0, (10, 1000), false),
            Some(1)
        );
        assert_eq!(
            p.expire(t0 + Duration::from_secs(61), Duration::from_secs(60)),
            1
        );
        assert!(p.is_empty());
        assert_eq!(p.bytes(), 0);
        assert!(p.eviction.is_empty() && p.by_wtxid.is_empty());
    }
}
