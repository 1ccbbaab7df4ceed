//! Transaction requests as Bitcoin Core's `TxRequestTracker` (txrequest.cpp) makes them, as a
//! sans-IO core driven with virtual time: every peer that announced a transaction is
//! remembered, one of them at a time is asked for it, and when that one answers `notfound`,
//! times out or leaves, the next is asked, so no single announcer can censor a transaction.
//!
//! Which announcer is asked: among those whose request time has come, preferred peers
//! (outbound, as Core's `fPreferredDownload`) before the rest, then a salted hash of the
//! transaction and the peer (Core's `PriorityComputer`: random per node, so an attacker
//! cannot arrange to be chosen). An announcement's request time is delayed for non-preferred
//! peers ([`NONPREF_PEER_TX_DELAY`]), for txid announcements while wtxid-relay peers exist
//! ([`TXID_RELAY_DELAY`]) and for peers with many requests in flight
//! ([`OVERLOADED_PEER_TX_DELAY`]), so honest preferred peers get the first chance. At most
//! one request per transaction is in flight, at most [`MAX_PEER_TX_REQUEST_IN_FLIGHT`] per
//! peer, and at most [`MAX_PEER_TX_ANNOUNCEMENTS`] announcements per peer are tracked.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use crate::shared::peers::PeerId;

/// Requests one peer may have in flight at once (Core: `MAX_PEER_TX_REQUEST_IN_FLIGHT`).
///
/// # Security
/// A peer that never answers holds at most this many of our requests, each for at most
/// [`GETDATA_TX_INTERVAL`]; another announcer is asked once it times out.
pub const MAX_PEER_TX_REQUEST_IN_FLIGHT: usize = 100;
/// Announcements tracked per peer, answered or not (Core: `MAX_PEER_TX_ANNOUNCEMENTS`).
///
/// # Security
/// Bounds what one peer's `inv` flood can make us remember (about 100 bytes each); beyond
/// it, its announcements are dropped until some are resolved.
pub const MAX_PEER_TX_ANNOUNCEMENTS: usize = 5_000;
/// How long a request may go unanswered before the next announcer is asked (Core:
/// `GETDATA_TX_INTERVAL`).
pub const GETDATA_TX_INTERVAL: Duration = Duration::from_secs(60);
/// Delay of announcements from non-preferred (inbound) peers (Core: `NONPREF_PEER_TX_DELAY`):
/// the outbound peers we chose get the first chance to deliver.
pub const NONPREF_PEER_TX_DELAY: Duration = Duration::from_secs(2);
/// Delay of txid announcements while wtxid-relay peers are connected (Core:
/// `TXID_RELAY_DELAY`): the wtxid announcement of the same transaction usually follows.
pub const TXID_RELAY_DELAY: Duration = Duration::from_secs(2);
/// Delay of announcements from a peer already at its in-flight limit (Core:
/// `OVERLOADED_PEER_TX_DELAY`).
pub const OVERLOADED_PEER_TX_DELAY: Duration = Duration::from_secs(2);

/// A transaction's hash as announced (txid, or wtxid for BIP339 peers).
pub type TxKey = [u8; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnnState {
    /// May be asked for from its request time on.
    Candidate { ready_at: Instant },
    /// Asked of this peer; the next announcer is asked after `expires`.
    Requested { expires: Instant },
    /// Answered `notfound`, timed out: not asked again.
    Completed,
}

#[derive(Debug, Clone)]
struct Announcement {
    peer: PeerId,
    preferred: bool,
    by_wtxid: bool,
    state: AnnState,
}

#[derive(Debug, Default)]
struct PeerCounts {
    keys: HashSet<TxKey>,
    in_flight: usize,
    /// Transactions this peer would have been asked for but for its in-flight limit.
    blocked: HashSet<TxKey>,
}

/// A request to send: ask `peer` for `key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxRequest {
    /// Whom to ask.
    pub peer: PeerId,
    /// What to ask for.
    pub key: TxKey,
    /// Announced by wtxid (ask with `MSG_WTX`).
    pub by_wtxid: bool,
}

/// What became of an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// Tracked (a new announcer of this transaction, or its first).
    Tracked,
    /// This peer had announced it already.
    Known,
    /// The peer is at [`MAX_PEER_TX_ANNOUNCEMENTS`]: dropped.
    PeerFull,
}

/// What the time or an answer changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Polled {
    /// Requests to send now.
    pub requests: Vec<TxRequest>,
    /// Requests that went unanswered for [`GETDATA_TX_INTERVAL`].
    pub expired: Vec<TxRequest>,
}

/// Who announced: the peer, whether it is preferred (outbound, as Core's preferred download)
/// and whether it is exempt from the caps (a `relay`-whitelisted peer, as Core).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcer {
    /// The peer.
    pub peer: PeerId,
    /// Asked first, without the non-preferred delay.
    pub preferred: bool,
    /// No announcement cap and no overload delay.
    pub exempt: bool,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct TxRequestTracker {
    salt: foldhash::quality::RandomState,
    by_key: HashMap<TxKey, Vec<Announcement>>,
    peers: HashMap<PeerId, PeerCounts>,
    /// When each transaction is next looked at (a request time or an expiry). Entries leave
    /// with their transaction or announcer, so this holds at most one per live announcement
    /// and request (bounded by [`MAX_PEER_TX_ANNOUNCEMENTS`] per peer).
    wake: BTreeSet<(Instant, TxKey)>,
    /// Transactions to look at whatever the time (an answer, a departure, a freed slot).
    dirty: HashSet<TxKey>,
}

impl AnnState {
    /// When the tracker looks at this announcement next, if ever.
    fn wake_at(&self) -> Option<Instant> {
        match *self {
            AnnState::Candidate { ready_at } => Some(ready_at),
            AnnState::Requested { expires } => Some(expires),
            AnnState::Completed => None,
        }
    }
}

impl TxRequestTracker {
    /// `from` announced `key` at `now`; `txid_delay`: a txid announcement while wtxid-relay
    /// peers exist.
    pub fn announce(
        &mut self,
        from: Announcer,
        key: TxKey,
        by_wtxid: bool,
        txid_delay: bool,
        now: Instant,
    ) -> Announced {
        let Announcer {
            peer,
            preferred,
            exempt,
        } = from;
        let counts = self.peers.entry(peer).or_default();
        if counts.keys.contains(&key) {
            return Announced::Known;
        }
        if !exempt && counts.keys.len() >= MAX_PEER_TX_ANNOUNCEMENTS {
            return Announced::PeerFull;
        }
        let mut delay = Duration::ZERO;
        if !preferred {
            delay += NONPREF_PEER_TX_DELAY;
        }
        if txid_delay {
            delay += TXID_RELAY_DELAY;
        }
        if !exempt && counts.in_flight >= MAX_PEER_TX_REQUEST_IN_FLIGHT {
            delay += OVERLOADED_PEER_TX_DELAY;
        }
        counts.keys.insert(key);
        let ready_at = now + delay;
        self.by_key.entry(key).or_default().push(Announcement {
            peer,
            preferred,
            by_wtxid,
            state: AnnState::Candidate { ready_at },
        });
        self.wake.insert((ready_at, key));
        Announced::Tracked
    }

    /// `peer` answered `notfound` for `key`: the next announcer is asked at the next poll.
    pub fn not_found(&mut self, peer: PeerId, key: &TxKey) {
        let Some(anns) = self.by_key.get_mut(key) else {
            return;
        };
        let Some(a) = anns.iter_mut().find(|a| a.peer == peer) else {
            return;
        };
        let was_requested = matches!(a.state, AnnState::Requested { .. });
        if let Some(at) = a.state.wake_at() {
            // Looked at again now (dirty), which schedules what other announcers need.
            self.wake.remove(&(at, *key));
        }
        a.state = AnnState::Completed;
        self.dirty.insert(*key);
        if was_requested {
            if let Some(c) = self.peers.get_mut(&peer) {
                c.in_flight = c.in_flight.saturating_sub(1);
            }
            self.free_slot(peer);
        }
    }

    /// The transaction arrived (from anyone) or is otherwise settled: forgotten (Core's
    /// `ForgetTxHash`).
    pub fn forget(&mut self, key: &TxKey) {
        let Some(anns) = self.by_key.remove(key) else {
            return;
        };
        for a in anns {
            if let Some(at) = a.state.wake_at() {
                self.wake.remove(&(at, *key));
            }
            if let Some(c) = self.peers.get_mut(&a.peer) {
                c.keys.remove(key);
                c.blocked.remove(key);
                if matches!(a.state, AnnState::Requested { .. }) {
                    c.in_flight = c.in_flight.saturating_sub(1);
                    self.free_slot(a.peer);
                }
            }
        }
        self.dirty.remove(key);
    }

    /// The peer left: its announcements go, and what it was asked for is asked of another.
    pub fn peer_gone(&mut self, peer: PeerId) {
        let Some(counts) = self.peers.remove(&peer) else {
            return;
        };
        for key in counts.keys {
            if let Some(anns) = self.by_key.get_mut(&key) {
                for a in anns.iter().filter(|a| a.peer == peer) {
                    if let Some(at) = a.state.wake_at() {
                        // The key is looked at again below (dirty), which schedules what the
                        // other announcers still need.
                        self.wake.remove(&(at, key));
                    }
                }
                anns.retain(|a| a.peer != peer);
                self.dirty.insert(key);
            }
        }
        // A table a peer filled leaves no capacity behind.
        if self.by_key.capacity() > 4 * self.by_key.len().max(64) {
            self.by_key.shrink_to(2 * self.by_key.len());
        }
    }

    /// A request slot of `peer` was freed: as many of the transactions that waited for one
    /// as it has free slots are looked at again (not all of them: a peer holding 5,000
    /// announcements must not make each `notfound` cost 5,000 looks).
    fn free_slot(&mut self, peer: PeerId) {
        if let Some(c) = self.peers.get_mut(&peer) {
            let free = MAX_PEER_TX_REQUEST_IN_FLIGHT.saturating_sub(c.in_flight);
            let woken: Vec<TxKey> = c.blocked.iter().take(free).copied().collect();
            for k in &woken {
                c.blocked.remove(k);
            }
            self.dirty.extend(woken);
        }
    }

    /// Expires requests, and picks the announcer to ask for every transaction whose time
    /// came or whose situation changed.
    pub fn poll(&mut self, now: Instant) -> Polled {
        let mut keys: Vec<TxKey> = self.dirty.drain().collect();
        while let Some(&(at, key)) = self.wake.first() {
            if at > now {
                break;
            }
            self.wake.pop_first();
            keys.push(key);
        }
        let mut out = Polled::default();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            self.settle(key, now, &mut out);
        }
        out
    }

    fn priority(&self, key: &TxKey, a: &Announcement) -> (bool, u64) {
        (a.preferred, self.salt.hash_one((key, a.peer.0)))
    }

    /// Looks at one transaction: expire its request, ask the best ready announcer with a
    /// free slot, schedule the next look, or forget it when every announcer is done.
    fn settle(&mut self, key: TxKey, now: Instant, out: &mut Polled) {
        let Some(anns) = self.by_key.get(&key) else {
            return;
        };
        let mut requested = None;
        for (i, a) in anns.iter().enumerate() {
            if let AnnState::Requested { expires } = a.state {
                requested = Some((i, expires));
            }
        }
        if let Some((i, expires)) = requested {
            if expires > now {
                return;
            }
            let peer = anns[i].peer;
            out.expired.push(TxRequest {
                peer,
                key,
                by_wtxid: anns[i].by_wtxid,
            });
            if let Some(anns) = self.by_key.get_mut(&key) {
                anns[i].state = AnnState::Completed;
            }
            if let Some(c) = self.peers.get_mut(&peer) {
                c.in_flight = c.in_flight.saturating_sub(1);
            }
            self.free_slot(peer);
        }
        let Some(anns) = self.by_key.get(&key) else {
            return;
        };
        let mut best: Option<(usize, (bool, u64))> = None;
        let mut next_ready: Option<Instant> = None;
        let mut blocked_on = Vec::new();
        for (i, a) in anns.iter().enumerate() {
            let AnnState::Candidate { ready_at } = a.state else {
                continue;
            };
            if ready_at > now {
                next_ready = Some(next_ready.map_or(ready_at, |t| t.min(ready_at)));
                continue;
            }
            let free = self
                .peers
                .get(&a.peer)
                .is_some_and(|c| c.in_flight < MAX_PEER_TX_REQUEST_IN_FLIGHT);
            if !free {
                blocked_on.push(a.peer);
                continue;
            }
            let p = self.priority(&key, a);
            if best.is_none_or(|(_, b)| p > b) {
                best = Some((i, p));
            }
        }
        if let Some((i, _)) = best {
            let expires = now + GETDATA_TX_INTERVAL;
            let Some(anns) = self.by_key.get_mut(&key) else {
                return;
            };
            let a = &mut anns[i];
            if let Some(at) = a.state.wake_at() {
                self.wake.remove(&(at, key));
            }
            a.state = AnnState::Requested { expires };
            out.requests.push(TxRequest {
                peer: a.peer,
                key,
                by_wtxid: a.by_wtxid,
            });
            if let Some(c) = self.peers.get_mut(&a.peer) {
                c.in_flight += 1;
            }
            self.wake.insert((expires, key));
            return;
        }
        // Looked at again when one of those peers' slots frees.
        for peer in blocked_on {
            if let Some(c) = self.peers.get_mut(&peer) {
                c.blocked.insert(key);
            }
        }
        if let Some(at) = next_ready {
            self.wake.insert((at, key));
        }
        let done = anns.iter().all(|a| matches!(a.state, AnnState::Completed));
        if done {
            // Every announcer failed us: forgotten, so a new announcement starts afresh.
            self.forget(&key);
        }
    }

    /// The peers that announced `key` (any state).
    pub fn announcers(&self, key: &TxKey) -> impl Iterator<Item = PeerId> + '_ {
        self.by_key
            .get(key)
            .into_iter()
            .flat_map(|anns| anns.iter().map(|a| a.peer))
    }

    /// Whether `peer` has been asked for `key` and not answered yet.
    pub fn is_requested_from(&self, peer: PeerId, key: &TxKey) -> bool {
        self.by_key.get(key).is_some_and(|anns| {
            anns.iter()
                .any(|a| a.peer == peer && matches!(a.state, AnnState::Requested { .. }))
        })
    }

    /// Requests in flight to `peer`.
    pub fn in_flight(&self, peer: PeerId) -> usize {
        self.peers.get(&peer).map_or(0, |c| c.in_flight)
    }

    /// Announcements tracked for `peer`.
    pub fn announced_by(&self, peer: PeerId) -> usize {
        self.peers.get(&peer).map_or(0, |c| c.keys.len())
    }

    /// Transactions tracked.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> TxKey {
        [n; 32]
    }

    fn ann(peer: PeerId, preferred: bool, exempt: bool) -> Announcer {
        Announcer {
            peer,
            preferred,
            exempt,
        }
    }

    #[test]
    fn preferred_first_then_the_next_announcer_on_notfound_and_timeout() {
        let t0 = Instant::now();
        let mut t = TxRequestTracker::default();
        let (inbound, outbound, other) = (PeerId(1), PeerId(2), PeerId(3));
        t.announce(ann(inbound, false, false), key(1), true, false, t0);
        t.announce(ann(outbound, true, false), key(1), true, false, t0);
        t.announce(ann(other, false, false), key(1), true, false, t0);
        let first = t.poll(t0).requests;
        assert_eq!(first.len(), 1);
        assert_eq!(
            first[0].peer, outbound,
            "the outbound peer is asked at once"
        );
        // Inbound announcers wait 2 s, and while a request is in flight nobody else is asked.
        assert!(t.poll(t0 + Duration::from_secs(3)).requests.is_empty());
        t.not_found(outbound, &key(1));
        let second = t.poll(t0 + Duration::from_secs(3)).requests;
        assert_eq!(second.len(), 1);
        assert!(second[0].peer == inbound || second[0].peer == other);
        let left = if second[0].peer == inbound {
            other
        } else {
            inbound
        };
        // It never answers: after the interval the last announcer is asked.
        let later = t0 + Duration::from_secs(3) + GETDATA_TX_INTERVAL;
        let third = t.poll(later);
        assert_eq!(third.expired.len(), 1);
        assert_eq!(
            third.requests,
            vec![TxRequest {
                peer: left,
                key: key(1),
                by_wtxid: true
            }]
        );
        t.not_found(left, &key(1));
        assert!(t.poll(later).requests.is_empty());
        assert!(t.is_empty(), "every announcer failed: forgotten");
    }

    #[test]
    fn a_departed_peer_hands_its_request_on_and_arrival_forgets() {
        let t0 = Instant::now();
        let mut t = TxRequestTracker::default();
        t.announce(ann(PeerId(1), true, false), key(7), false, false, t0);
        t.announce(ann(PeerId(2), true, false), key(7), false, false, t0);
        let asked = t.poll(t0).requests[0].peer;
        let other = if asked == PeerId(1) {
            PeerId(2)
        } else {
            PeerId(1)
        };
        t.peer_gone(asked);
        assert_eq!(t.poll(t0).requests[0].peer, other);
        t.forget(&key(7));
        assert!(t.is_empty());
        assert_eq!(t.in_flight(other), 0);
        assert_eq!(t.announced_by(other), 0);
    }

    #[test]
    fn per_peer_caps_hold_and_whitelisted_peers_are_exempt() {
        let t0 = Instant::now();
        let mut t = TxRequestTracker::default();
        for i in 0..MAX_PEER_TX_ANNOUNCEMENTS as u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            assert_eq!(
                t.announce(
                    Announcer {
                        peer: PeerId(1),
                        preferred: true,
                        exempt: false
                    },
                    k,
                    true,
                    false,
                    t0
                ),
                Announced::Tracked
            );
        }
        assert_eq!(
            t.announce(
                Announcer {
                    peer: PeerId(1),
                    preferred: true,
                    exempt: false
                },
                [0xff; 32],
                true,
                false,
                t0
            ),
            Announced::PeerFull
        );
        assert_eq!(
            t.announce(
                Announcer {
                    peer: PeerId(9),
                    preferred: true,
                    exempt: true
                },
                [0xff; 32],
                true,
                false,
                t0
            ),
            Announced::Tracked
        );
        let asked = t.poll(t0).requests;
        let of_one = asked.iter().filter(|r| r.peer == PeerId(1)).count();
        assert_eq!(of_one, MAX_PEER_TX_REQUEST_IN_FLIGHT);
        t.announce(ann(PeerId(2), true, false), [0xfd; 32], true, false, t0);
        assert_eq!(
            t.announce(ann(PeerId(2), true, false), [0xfd; 32], true, false, t0),
            Announced::Known
        );
        assert_eq!(t.announced_by(PeerId(2)), 1);
    }

    #[test]
    fn an_overloaded_peers_new_announcement_waits_the_overload_delay() {
        let t0 = Instant::now();
        let mut t = TxRequestTracker::default();
        for i in 0..MAX_PEER_TX_REQUEST_IN_FLIGHT as u8 {
            t.announce(ann(PeerId(1), true, false), key(i), true, false, t0);
        }
        assert_eq!(t.poll(t0).requests.len(), MAX_PEER_TX_REQUEST_IN_FLIGHT);
        // At its limit: the next announcement is delayed, even once a slot frees.
        t.announce(ann(PeerId(1), true, false), key(200), true, false, t0);
        t.not_found(PeerId(1), &key(0));
        assert!(t.poll(t0).requests.is_empty());
        let later = t.poll(t0 + OVERLOADED_PEER_TX_DELAY).requests;
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].key, key(200));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Whatever happens: at most one request per transaction, in-flight counts match the
        /// requests, per-peer caps hold, and a transaction is asked of each announcer at most
        /// once.
        #[test]
        fn invariants_hold_under_any_sequence(
            ops in proptest::collection::vec((0u8..6, 0u8..6, 0u64..4, 0u64..200), 1..300)
        ) {
            let t0 = Instant::now();
            let mut t = TxRequestTracker::default();
            let mut asked: HashSet<(TxKey, PeerId)> = HashSet::new();
            for (op, k, p, secs) in ops {
                let now = t0 + Duration::from_secs(secs);
                let (peer, k) = (PeerId(p), key(k));
                match op {
                    0 | 1 => { t.announce(Announcer { peer, preferred: p % 2 == 0, exempt: false }, k, true, false, now); }
                    2 => t.not_found(peer, &k),
                    3 => { t.forget(&k); asked.retain(|(x, _)| *x != k); }
                    4 => { t.peer_gone(peer); asked.retain(|(_, x)| *x != peer); }
                    _ => {}
                }
                let polled = t.poll(now);
                for r in &polled.requests {
                    prop_assert!(asked.insert((r.key, r.peer)), "asked twice of one peer");
                }
                for (k, anns) in &t.by_key {
                    let requested = anns.iter().filter(|a| matches!(a.state, AnnState::Requested { .. })).count();
                    prop_assert!(requested <= 1, "two requests for {:?}", k[0]);
                }
                for p in 0..4 {
                    let peer = PeerId(p);
                    let real = t.by_key.values().flatten()
                        .filter(|a| a.peer == peer && matches!(a.state, AnnState::Requested { .. }))
                        .count();
                    prop_assert_eq!(t.in_flight(peer), real);
                    prop_assert!(real <= MAX_PEER_TX_REQUEST_IN_FLIGHT);
                    let tracked = t.by_key.values().flatten().filter(|a| a.peer == peer).count();
                    prop_assert_eq!(t.announced_by(peer), tracked);
                }
                let live: usize = t.by_key.values().map(|a| a.len()).sum();
                prop_assert!(t.wake.len() <= 2 * live, "wake entries outlive their announcements");
                // A forgotten transaction may be asked of anyone again once re-announced.
                asked.retain(|(x, _)| t.by_key.contains_key(x));
            }
        }
    }
}
