//! Requests in flight (transactions or blocks we asked a peer for), as a sans-IO core: who
//! was asked and when, capped per peer, released when the answer (or `notfound`) arrives,
//! when the peer leaves, or when the request expires. Without this, a peer that announces
//! and never delivers holds an item for ever and nobody else is asked for it.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::shared::peers::PeerId;

/// Requests in flight for items of type `K`.
#[derive(Debug)]
pub struct InFlight<K> {
    /// Each item's peer, when it was asked, and the request's place in the order of all
    /// requests (requests sent at one instant, in one `getdata`, are answered in order).
    by_item: HashMap<K, (PeerId, Instant, u64)>,
    per_peer: HashMap<PeerId, usize>,
    next_seq: u64,
}

impl<K> Default for InFlight<K> {
    fn default() -> Self {
        InFlight {
            by_item: HashMap::new(),
            per_peer: HashMap::new(),
            next_seq: 0,
        }
    }
}

impl<K: Hash + Eq + Copy> InFlight<K> {
    /// Records a request for `item` to `peer` unless it is already in flight or the peer
    /// already has `cap` requests outstanding. True when the caller should send it.
    pub fn try_request(&mut self, item: K, peer: PeerId, now: Instant, cap: usize) -> bool {
        if self.by_item.contains_key(&item) {
            return false;
        }
        let count = self.per_peer.entry(peer).or_insert(0);
        if *count >= cap {
            return false;
        }
        *count += 1;
        self.next_seq += 1;
        self.by_item.insert(item, (peer, now, self.next_seq));
        true
    }

    fn forget(&mut self, item: &K) -> Option<PeerId> {
        let (peer, _, _) = self.by_item.remove(item)?;
        if let Some(c) = self.per_peer.get_mut(&peer) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.per_peer.remove(&peer);
            }
        }
        Some(peer)
    }

    /// The item arrived (from anyone): no longer in flight.
    pub fn received(&mut self, item: &K) -> Option<PeerId> {
        self.forget(item)
    }

    /// `peer` said it does not have `item`: released if it was the one asked.
    pub fn not_found(&mut self, item: &K, peer: PeerId) -> bool {
        if self.by_item.get(item).is_some_and(|(p, _, _)| *p == peer) {
            self.forget(item);
            return true;
        }
        false
    }

    /// The peer left: its requests are released and returned.
    pub fn release_peer(&mut self, peer: PeerId) -> Vec<K> {
        if !self.per_peer.contains_key(&peer) {
            return Vec::new();
        }
        let items: Vec<K> = self
            .by_item
            .iter()
            .filter(|(_, (p, _, _))| *p == peer)
            .map(|(k, _)| *k)
            .collect();
        for k in &items {
            self.forget(k);
        }
        // A peer that filled the table (5,000 transactions) leaves no capacity behind.
        if self.by_item.capacity() > 4 * self.by_item.len().max(64) {
            self.by_item.shrink_to(2 * self.by_item.len());
        }
        items
    }

    /// The requests older than `age`, with the peer that was asked (left in flight).
    pub fn older_than(&self, now: Instant, age: Duration) -> Vec<(K, PeerId)> {
        self.by_item
            .iter()
            .filter(|(_, (_, at, _))| now.saturating_duration_since(*at) >= age)
            .map(|(k, (p, _, _))| (*k, *p))
            .collect()
    }

    /// For each peer, its oldest request (the head of its queue: the one that holds the
    /// others up), with that peer and when it was asked.
    pub fn oldest_per_peer(&self) -> Vec<(K, PeerId, Instant)> {
        let mut oldest: HashMap<PeerId, (K, (Instant, u64))> = HashMap::new();
        for (k, (p, at, seq)) in &self.by_item {
            let e = oldest.entry(*p).or_insert((*k, (*at, *seq)));
            if (*at, *seq) < e.1 {
                *e = (*k, (*at, *seq));
            }
        }
        oldest
            .into_iter()
            .map(|(p, (k, (at, _)))| (k, p, at))
            .collect()
    }

    /// The first request to `peer` still in flight: the one its next answer belongs to,
    /// since peers answer `getdata` in order.
    pub fn oldest_of(&self, peer: PeerId) -> Option<K> {
        self.by_item
            .iter()
            .filter(|(_, (p, _, _))| *p == peer)
            .min_by_key(|(_, (_, at, seq))| (*at, *seq))
            .map(|(k, _)| *k)
    }

    /// Releases and returns the requests older than `timeout`, with the peer that was asked.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<(K, PeerId)> {
        let old: Vec<(K, PeerId)> = self
            .by_item
            .iter()
            .filter(|(_, (_, at, _))| now.saturating_duration_since(*at) >= timeout)
            .map(|(k, (p, _, _))| (*k, *p))
            .collect();
        for (k, _) in &old {
            self.forget(k);
        }
        old
    }

    /// The peer `item` was asked of, while in flight.
    pub fn peer_of(&self, item: &K) -> Option<PeerId> {
        self.by_item.get(item).map(|(p, _, _)| *p)
    }

    /// Whether `item` is in flight.
    pub fn contains(&self, item: &K) -> bool {
        self.by_item.contains_key(item)
    }

    /// Requests outstanding to `peer`.
    pub fn of_peer(&self, peer: PeerId) -> usize {
        self.per_peer.get(&peer).copied().unwrap_or(0)
    }

    /// Requests outstanding in all.
    pub fn len(&self) -> usize {
        self.by_item.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.by_item.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn caps_per_peer_release_on_leave_and_expire() {
        let (a, b) = (PeerId(1), PeerId(2));
        let t0 = Instant::now();
        let mut f = InFlight::default();
        assert!(f.try_request(1u32, a, t0, 2));
        assert!(!f.try_request(1u32, b, t0, 2), "already asked of a");
        assert!(f.try_request(2u32, a, t0, 2));
        assert!(!f.try_request(3u32, a, t0, 2), "a is at its cap");
        assert!(f.try_request(3u32, b, t0, 2));
        assert!(!f.not_found(&3, a), "only the peer asked can release it");
        assert_eq!(f.release_peer(a).len(), 2);
        assert!(f.try_request(1u32, b, t0, 2), "free to ask another peer");
        let expired = f.expire(t0 + Duration::from_secs(61), Duration::from_secs(60));
        assert_eq!(expired.len(), 2);
        assert!(f.is_empty());
        assert_eq!(f.of_peer(b), 0);
    }

    proptest! {
        #[test]
        fn counts_always_match_the_items(ops in proptest::collection::vec((0u8..4, 0u32..20, 0u64..4, 0u64..100), 0..200)) {
            let t0 = Instant::now();
            let mut f = InFlight::default();
            for (op, item, peer, secs) in ops {
                let now = t0 + Duration::from_secs(secs);
                let peer = PeerId(peer);
                match op {
                    0 => { f.try_request(item, peer, now, 5); }
                    1 => { f.received(&item); }
                    2 => { f.release_peer(peer); }
                    _ => { f.expire(now, Duration::from_secs(60)); }
                }
                let total: usize = (0..4).map(|p| f.of_peer(PeerId(p))).sum();
                prop_assert_eq!(total, f.len());
                for p in 0..4 {
                    prop_assert!(f.of_peer(PeerId(p)) <= 5);
                }
            }
        }
    }
}
