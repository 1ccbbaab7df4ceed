//! Inbound eviction, as Bitcoin Core's `SelectNodeToEvict`: a pure function over snapshots of
//! the inbound peers.
//!
//! When the inbound slots are full and a new peer arrives, one existing inbound peer may make
//! room. Peers that are hard for an attacker to imitate are protected first, each rule taking
//! its protected peers out of the candidate set:
//!
//! 1. 4 peers from distinct network groups, chosen by a keyed hash of the group (an attacker
//!    cannot predict which groups are protected);
//! 2. the 8 with the lowest minimum ping;
//! 3. the 4 that most recently sent us a novel transaction a validating peer vouched for (Core:
//!    one its mempool accepted; meshd checks no scripts or inputs, see `--tx-relay`);
//! 4. up to 8 that relay no transactions (block-relay-only peers of theirs) but have the
//!    services we want and most recently sent us a block;
//! 5. the 4 that most recently sent us a block;
//! 6. half of the rest (Core's ProtectEvictionCandidatesByRatio): first up to a quarter of
//!    them from the disadvantaged networks (CJDNS, I2P, localhost, onion: peers reaching us
//!    over them are slower and fewer, and would lose every uptime race), shared between the
//!    networks present, fewest first, oldest connection first; then the longest connected.
//!
//! From what remains, the network group with the most connections is chosen (ties: the group
//! whose newest member connected most recently) and its newest peer is evicted. Manual peers
//! are never candidates. If nothing remains, nobody is evicted and the new peer is refused.

use std::time::{Duration, Instant};

use crate::shared::overlay::Network;
use crate::shared::peers::PeerId;

/// A snapshot of one inbound peer.
#[derive(Debug, Clone)]
pub struct EvictionCandidate {
    /// The peer.
    pub id: PeerId,
    /// When it connected.
    pub connected: Instant,
    /// Lowest ping seen (`None`: never measured, sorts last).
    pub min_ping: Option<Duration>,
    /// When it last sent a block.
    pub last_block: Option<Instant>,
    /// When it last sent a novel transaction that was then vouched for.
    pub last_tx: Option<Instant>,
    /// Its network group ([`crate::shared::addr::netgroup`]).
    pub netgroup: Vec<u8>,
    /// The keyed hash of its network group.
    pub keyed_netgroup: u64,
    /// Never evicted (manual peers).
    pub protected: bool,
    /// Discouraged: among the peers left unprotected, these go first (Core's
    /// `m_prefer_evict`).
    pub prefer_evict: bool,
    /// The network it reached us over (an inbound onion peer: onion, whatever its address).
    pub network: Network,
    /// Connected from a loopback address (and not through our onion service).
    pub is_local: bool,
    /// It asked for transactions in its `version` (Core's `m_relay_txs`).
    pub relay_txs: bool,
    /// It announced the services we require of outbound peers (Core's
    /// `fRelevantServices`).
    pub relevant_services: bool,
}

fn protect_last<K: Ord>(
    c: &mut Vec<EvictionCandidate>,
    n: usize,
    key: impl Fn(&EvictionCandidate) -> K,
) {
    protect_last_where(c, n, key, |_| true);
}

/// Core's EraseLastKElements with a predicate: sorts by `key`, and of the last `n` takes out
/// (protects) those `pick` accepts.
fn protect_last_where<K: Ord>(
    c: &mut Vec<EvictionCandidate>,
    n: usize,
    key: impl Fn(&EvictionCandidate) -> K,
    pick: impl Fn(&EvictionCandidate) -> bool,
) {
    c.sort_by_key(|x| key(x));
    let start = c.len().saturating_sub(n);
    let tail: Vec<EvictionCandidate> = c.drain(start..).filter(|x| !pick(x)).collect();
    c.extend(tail);
}

/// Core's ProtectEvictionCandidatesByRatio: half of the candidates, up to half of those
/// from the disadvantaged networks, the rest by uptime.
fn protect_by_ratio(c: &mut Vec<EvictionCandidate>) {
    let total_protect = c.len() / 2;
    // In Core's order: on equal counts, earlier ones recover unused slots first.
    let on = |local: bool, net: Network| {
        move |x: &EvictionCandidate| {
            if local {
                x.is_local
            } else {
                !x.is_local && x.network == net
            }
        }
    };
    let mut networks: Vec<(bool, Network, usize)> = [
        (false, Network::Cjdns),
        (false, Network::I2p),
        (true, Network::Ipv4),
        (false, Network::Onion),
    ]
    .into_iter()
    .map(|(local, net)| (local, net, c.iter().filter(|x| on(local, net)(x)).count()))
    .collect();
    networks.sort_by_key(|n| n.2);
    let max_by_network = total_protect / 2;
    let mut protected = 0usize;
    while protected < max_by_network {
        let present = networks.iter().filter(|n| n.2 > 0).count();
        if present == 0 {
            break;
        }
        let per_network = ((max_by_network - protected) / present).max(1);
        let mut any = false;
        for n in networks.iter_mut() {
            if n.2 == 0 {
                continue;
            }
            let before = c.len();
            let (local, net) = (n.0, n.1);
            // Matching peers last, the oldest connection last of all.
            protect_last_where(
                c,
                per_network,
                |x| (on(local, net)(x), std::cmp::Reverse(x.connected)),
                on(local, net),
            );
            let taken = before - c.len();
            if taken > 0 {
                any = true;
                protected += taken;
                if protected >= max_by_network {
                    break;
                }
                n.2 -= taken;
            }
        }
        if !any {
            break;
        }
    }
    protect_last(c, total_protect.saturating_sub(protected), |x| {
        std::cmp::Reverse(x.connected)
    });
}

/// Picks the peer to evict, or `None` if every candidate is protected.
pub fn select_for_eviction(candidates: &[EvictionCandidate]) -> Option<PeerId> {
    let mut c: Vec<EvictionCandidate> = candidates
        .iter()
        .filter(|x| !x.protected)
        .cloned()
        .collect();
    // 1. distinct keyed network groups: the 4 highest keys.
    protect_last(&mut c, 4, |x| x.keyed_netgroup);
    // 2. lowest ping: sort descending by ping so the lowest are last.
    protect_last(&mut c, 8, |x| {
        std::cmp::Reverse(x.min_ping.unwrap_or(Duration::MAX))
    });
    // 3. most recent tx (None sorts first, i.e. not protected).
    protect_last(&mut c, 4, |x| x.last_tx);
    // 4. block senders that relay no transactions but have the services we want (Core's
    // CompareNodeBlockRelayOnlyTime).
    protect_last_where(
        &mut c,
        8,
        |x| (!x.relay_txs, x.last_block, x.relevant_services),
        |x| !x.relay_txs && x.relevant_services,
    );
    // 5. most recent block senders.
    protect_last(&mut c, 4, |x| x.last_block);
    // 6. half of the rest: disadvantaged networks first, then uptime.
    protect_by_ratio(&mut c);
    if c.is_empty() {
        return None;
    }
    // Core: only now, so a peer that is the best by the measures above keeps its protection
    // even when discouraged.
    if c.iter().any(|x| x.prefer_evict) {
        c.retain(|x| x.prefer_evict);
    }
    // The most crowded group; ties go to the group with the most recent connection.
    let mut groups: Vec<(Vec<u8>, usize, Instant)> = Vec::new();
    for x in &c {
        match groups.iter_mut().find(|g| g.0 == x.netgroup) {
            Some(g) => {
                g.1 += 1;
                g.2 = g.2.max(x.connected);
            }
            None => groups.push((x.netgroup.clone(), 1, x.connected)),
        }
    }
    let (group, _, _) = groups.into_iter().max_by_key(|g| (g.1, g.2))?;
    c.into_iter()
        .filter(|x| x.netgroup == group)
        .max_by_key(|x| x.connected)
        .map(|x| x.id)
}

/// A block-relay-only peer as Core's `EvictExtraOutboundPeers` sees it.
#[derive(Debug, Clone)]
pub struct BlockRelayPeer {
    /// The peer (ids grow with every connection: the highest is the youngest, as Core's
    /// node ids).
    pub id: PeerId,
    /// When it last sent us a new block.
    pub last_block: Option<Instant>,
    /// When it connected.
    pub connected: Instant,
    /// Blocks asked of it and not yet delivered.
    pub blocks_in_flight: usize,
}

/// Which block-relay-only peer to let go when there is one above the limit (Core's
/// `EvictExtraOutboundPeers`): the youngest, unless it gave us a block more recently than the
/// second youngest, then that one; and only once it has been connected `min_connect` with no
/// block in flight from it (else none this time).
pub fn extra_block_relay_to_evict(
    peers: &[BlockRelayPeer],
    now: Instant,
    min_connect: Duration,
) -> Option<PeerId> {
    let mut by_age: Vec<&BlockRelayPeer> = peers.iter().collect();
    by_age.sort_by_key(|p| std::cmp::Reverse(p.id));
    let youngest = *by_age.first()?;
    let pick = match by_age.get(1) {
        Some(next) if youngest.last_block > next.last_block => *next,
        _ => youngest,
    };
    let settled = now.saturating_duration_since(pick.connected) >= min_connect;
    (settled && pick.blocks_in_flight == 0).then_some(pick.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extra_block_relay_peer_that_goes_is_cores_choice() {
        let t0 = Instant::now();
        let min = Duration::from_secs(30);
        let peer = |id: u64, block: Option<u64>, in_flight: usize| BlockRelayPeer {
            id: PeerId(id),
            last_block: block.map(|s| t0 + Duration::from_secs(s)),
            connected: t0,
            blocks_in_flight: in_flight,
        };
        let later = t0 + Duration::from_secs(60);
        // The youngest goes...
        let p = [peer(1, Some(5), 0), peer(2, Some(7), 0), peer(3, None, 0)];
        assert_eq!(extra_block_relay_to_evict(&p, later, min), Some(PeerId(3)));
        // ...unless it gave us a block more recently than the second youngest.
        let p = [
            peer(1, Some(5), 0),
            peer(2, Some(7), 0),
            peer(3, Some(9), 0),
        ];
        assert_eq!(extra_block_relay_to_evict(&p, later, min), Some(PeerId(2)));
        // Not before it had its minimum time, nor while a block is on its way.
        assert_eq!(
            extra_block_relay_to_evict(&p, t0 + Duration::from_secs(10), min),
            None
        );
        let p = [peer(1, Some(5), 0), peer(2, None, 1), peer(3, None, 0)];
        assert_eq!(extra_block_relay_to_evict(&p, later, min), Some(PeerId(3)));
        let p = [
            peer(1, Some(5), 0),
            peer(2, Some(1), 0),
            peer(3, Some(9), 2),
        ];
        assert_eq!(extra_block_relay_to_evict(&p, later, min), Some(PeerId(2)));
        let p = [peer(1, Some(5), 0), peer(2, None, 2), peer(3, None, 3)];
        assert_eq!(extra_block_relay_to_evict(&p, later, min), None);
        assert_eq!(extra_block_relay_to_evict(&[], later, min), None);
    }
    use proptest::prelude::*;

    fn cand(i: u64, t0: Instant, group: u8) -> EvictionCandidate {
        EvictionCandidate {
            id: PeerId(i),
            connected: t0 + Duration::from_secs(i),
            min_ping: Some(Duration::from_millis(100 + i)),
            last_block: None,
            last_tx: None,
            netgroup: vec![4, group, 0],
            keyed_netgroup: group as u64,
            protected: false,
            prefer_evict: false,
            network: Network::Ipv4,
            is_local: false,
            relay_txs: true,
            relevant_services: true,
        }
    }

    #[test]
    fn a_discouraged_peer_left_unprotected_goes_first() {
        let t0 = Instant::now();
        let base: Vec<_> = (0..30)
            .map(|i| {
                let mut x = cand(i, t0, 1);
                x.keyed_netgroup = i;
                x
            })
            .collect();
        let before = select_for_eviction(&base).unwrap();
        let mut went_first = 0;
        for i in 0..30usize {
            let mut c = base.clone();
            c[i].prefer_evict = true;
            let victim = select_for_eviction(&c).unwrap();
            // Either it goes, or the protections kept it and the usual victim goes.
            assert!(
                victim == PeerId(i as u64) || victim == before,
                "{i}: {victim:?}"
            );
            if victim == PeerId(i as u64) && victim != before {
                went_first += 1;
            }
            if i < 8 {
                // The lowest pings are protected, discouraged or not (Core).
                assert_ne!(victim, PeerId(i as u64));
            }
        }
        assert!(went_first > 0);
    }

    #[test]
    fn too_few_candidates_means_nobody_is_evicted() {
        let t0 = Instant::now();
        let c: Vec<_> = (0..12).map(|i| cand(i, t0, i as u8)).collect();
        assert_eq!(select_for_eviction(&c), None);
    }

    #[test]
    fn evicts_the_newest_of_the_most_crowded_group() {
        let t0 = Instant::now();
        // 20 peers in distinct groups with good pings, plus 10 from one crowded /16 with bad
        // pings: the attacker's group loses its newest member.
        let mut c: Vec<_> = (0..20).map(|i| cand(i, t0, i as u8 + 100)).collect();
        for i in 20..30 {
            let mut x = cand(i, t0, 7);
            x.min_ping = Some(Duration::from_secs(5));
            c.push(x);
        }
        assert_eq!(select_for_eviction(&c), Some(PeerId(29)));
    }

    #[test]
    fn manual_peers_and_recent_block_senders_are_protected() {
        let t0 = Instant::now();
        let mut c: Vec<_> = (0..30).map(|i| cand(i, t0, 7)).collect();
        c[29].protected = true;
        c[28].last_block = Some(t0);
        let victim = select_for_eviction(&c).unwrap();
        assert!(victim != PeerId(29) && victim != PeerId(28));
    }

    /// 40 peers of one group; the newer a peer, the worse its ping and keyed group, so the
    /// first rules protect old peers and only what a test sets tells the new ones apart.
    fn crowd(t0: Instant) -> Vec<EvictionCandidate> {
        (0..40)
            .map(|i| {
                let mut x = cand(i, t0, 7);
                x.keyed_netgroup = 100 - i;
                x
            })
            .collect()
    }

    /// Core's p2p_eviction / eviction_tests: with 20 clearnet peers and 4 onion ones, all
    /// alike but for their network and uptime, the onion peers are protected by the ratio
    /// (up to a quarter of the candidates), although the clearnet ones connected earlier.
    #[test]
    fn onion_and_local_peers_keep_a_protected_share() {
        let t0 = Instant::now();
        let mut c = crowd(t0);
        // The four newest connections reached us over Tor (in the same group as the rest, so
        // that the network is all that tells them apart).
        for x in c.iter_mut().skip(36) {
            x.network = Network::Onion;
        }
        // The first evictions (the share shrinks with the pool, as Core's does).
        let mut victims = Vec::new();
        for _ in 0..3 {
            let Some(v) = select_for_eviction(&c) else {
                break;
            };
            victims.push(v);
            c.retain(|x| x.id != v);
        }
        assert!(!victims.is_empty());
        for v in &victims {
            assert!(v.0 < 36, "an onion peer was evicted: {victims:?}");
        }
        // Localhost peers likewise.
        let mut c = crowd(t0);
        c[39].is_local = true;
        assert_ne!(select_for_eviction(&c), Some(PeerId(39)));
    }

    /// Core protects up to 8 peers that relay no transactions (their block-relay-only
    /// connections to us) and sent us a block most recently.
    #[test]
    fn block_relay_peers_that_sent_blocks_are_protected() {
        let t0 = Instant::now();
        let mut c = crowd(t0);
        // The newest, which the crowded-group rule would evict first.
        c[39].relay_txs = false;
        c[39].last_block = Some(t0);
        for x in c.iter_mut().skip(20).take(10) {
            x.last_block = Some(t0 + Duration::from_secs(100));
        }
        assert_ne!(select_for_eviction(&c), Some(PeerId(39)));
    }

    proptest! {
        /// The victim is always an unprotected candidate, and with ≤ 20 candidates (all
        /// protected by the first four rules) there is none.
        #[test]
        fn victim_is_always_an_unprotected_candidate(
            peers in proptest::collection::vec((any::<u8>(), any::<u16>(), any::<bool>(), any::<bool>()), 0..80)
        ) {
            let t0 = Instant::now();
            let c: Vec<EvictionCandidate> = peers.iter().enumerate().map(|(i, (g, ping, manual, block))| {
                EvictionCandidate {
                    id: PeerId(i as u64),
                    connected: t0 + Duration::from_millis(i as u64),
                    min_ping: Some(Duration::from_micros(*ping as u64)),
                    last_block: block.then_some(t0),
                    last_tx: None,
                    netgroup: vec![4, *g % 8, 0],
                    keyed_netgroup: (*g as u64).wrapping_mul(0x9e37_79b9),
                    protected: *manual,
                    prefer_evict: *g % 3 == 0,
                    network: [Network::Ipv4, Network::Onion, Network::Ipv6][*g as usize % 3],
                    is_local: *g % 5 == 0,
                    relay_txs: *g % 7 != 0,
                    relevant_services: true,
                }
            }).collect();
            if let Some(id) = select_for_eviction(&c) {
                let x = c.iter().find(|x| x.id == id).unwrap();
                prop_assert!(!x.protected);
            }
            if c.iter().filter(|x| !x.protected).count() <= 20 {
                prop_assert_eq!(select_for_eviction(&c), None);
            }
        }
    }
}
