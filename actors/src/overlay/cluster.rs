//! Peers clustered by the topics they serve (seed 004's `ClusteringManager`): Jaccard
//! similarity of topic sets, a threshold (`--overlay-cluster-threshold`, 0.7 by default),
//! and the choice of whom to let go when the overlay holds more peers than it wants, so
//! that no one cluster crowds out the others.
//!
//! Sans-IO and deterministic: the same peers and topics give the same clusters. A peer's
//! topics are what it is subscribed to on GossipSub (every meshd node subscribes to the
//! topics it announces in the DHT), which GossipSub bounds per peer.

use std::collections::BTreeSet;

/// The default similarity above which two peers share a cluster.
pub const DEFAULT_CLUSTER_THRESHOLD: f64 = 0.7;

/// Jaccard similarity of two topic sets: |A ∩ B| / |A ∪ B|; two empty sets are alike (1).
pub fn jaccard(a: &BTreeSet<String>, b: &BTreeSet<String>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

/// One peer as the clustering sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member<K> {
    /// Who (a peer id, or anything ordered).
    pub key: K,
    /// Its topics.
    pub topics: BTreeSet<String>,
    /// Protected from being let go (a bootstrap peer, one a Bitcoin peer told us of, a
    /// relay holding our reservation).
    pub protected: bool,
    /// When it connected, in any monotonic unit (the youngest is let go first).
    pub since: u64,
}

/// Clusters by leader: members in key order, each joining the first cluster whose first
/// member (its leader) is at least `threshold` alike, else founding a new one. Returns each
/// member's cluster number (0, 1, ...: in order of founding), in the members' order.
pub fn clusters<K: Ord + Clone>(members: &[Member<K>], threshold: f64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by(|a, b| members[*a].key.cmp(&members[*b].key));
    let mut leaders: Vec<usize> = Vec::new();
    let mut out = vec![0; members.len()];
    for i in order {
        let found = leaders
            .iter()
            .position(|l| jaccard(&members[*l].topics, &members[i].topics) >= threshold);
        out[i] = match found {
            Some(c) => c,
            None => {
                leaders.push(i);
                leaders.len() - 1
            }
        };
    }
    out
}

/// Whom to let go when `members` are more than `target`: the youngest unprotected member of
/// the largest cluster with more than one member (ties: the cluster founded first). None
/// when within the target, or when every crowded cluster's members are protected.
pub fn diversity_victim<K: Ord + Clone>(
    members: &[Member<K>],
    threshold: f64,
    target: usize,
) -> Option<K> {
    if members.len() <= target {
        return None;
    }
    let labels = clusters(members, threshold);
    let count = labels.iter().copied().max().map_or(0, |m| m + 1);
    let mut sizes = vec![0usize; count];
    for l in &labels {
        sizes[*l] += 1;
    }
    let mut by_size: Vec<usize> = (0..count).filter(|c| sizes[*c] > 1).collect();
    by_size.sort_by(|a, b| sizes[*b].cmp(&sizes[*a]).then(a.cmp(b)));
    for c in by_size {
        let victim = members
            .iter()
            .zip(&labels)
            .filter(|(m, l)| **l == c && !m.protected)
            .max_by(|(a, _), (b, _)| a.since.cmp(&b.since).then(a.key.cmp(&b.key)))
            .map(|(m, _)| m.key.clone());
        if victim.is_some() {
            return victim;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(topics: &[&str]) -> BTreeSet<String> {
        topics.iter().map(|t| t.to_string()).collect()
    }

    fn member(key: u32, topics: &[&str], since: u64) -> Member<u32> {
        Member {
            key,
            topics: set(topics),
            protected: false,
            since,
        }
    }

    #[test]
    fn jaccard_is_shared_over_all() {
        assert_eq!(jaccard(&set(&["a", "b"]), &set(&["a", "b"])), 1.0);
        assert_eq!(jaccard(&set(&["a", "b"]), &set(&["c"])), 0.0);
        assert!((jaccard(&set(&["a", "b", "c"]), &set(&["a", "b", "d"])) - 0.5).abs() < 1e-9);
        assert_eq!(jaccard(&set(&[]), &set(&[])), 1.0);
    }

    #[test]
    fn alike_peers_share_a_cluster_and_others_found_their_own() {
        let members = vec![
            member(1, &["btc", "btc/blocks", "btc/hints"], 0),
            member(2, &["btc", "btc/blocks", "btc/hints"], 1),
            member(3, &["bsv", "bsv/blocks"], 2),
            member(4, &["btc", "btc/blocks", "btc/hints", "btc/relay"], 3),
        ];
        // 3 of 4 alike: 0.75 >= 0.7.
        assert_eq!(clusters(&members, 0.7), vec![0, 0, 1, 0]);
        // Stricter: the fourth is on its own.
        assert_eq!(clusters(&members, 0.8), vec![0, 0, 1, 2]);
    }

    #[test]
    fn the_youngest_unprotected_peer_of_the_largest_cluster_goes() {
        let mut members = vec![
            member(1, &["btc"], 0),
            member(2, &["btc"], 5),
            member(3, &["btc"], 9),
            member(4, &["bsv"], 10),
        ];
        assert_eq!(
            diversity_victim(&members, 0.7, 4),
            None,
            "within the target"
        );
        assert_eq!(diversity_victim(&members, 0.7, 3), Some(3));
        members[2].protected = true;
        assert_eq!(diversity_victim(&members, 0.7, 3), Some(2));
        members[1].protected = true;
        members[0].protected = true;
        // The only other cluster has one member: nobody goes.
        assert_eq!(diversity_victim(&members, 0.7, 3), None);
    }

    fn arb_members() -> impl Strategy<Value = Vec<Member<u32>>> {
        let topic = prop::sample::select(vec!["a", "b", "c", "d", "e"]);
        proptest::collection::vec(
            (
                proptest::collection::btree_set(topic, 0..5),
                any::<bool>(),
                0u64..100,
            ),
            0..20,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (t, protected, since))| Member {
                    key: i as u32,
                    topics: t.into_iter().map(String::from).collect(),
                    protected,
                    since,
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn clusters_hold_their_leaders_alike_and_a_victim_is_unprotected_and_crowded(
            members in arb_members(),
            threshold in 0.1f64..1.0,
            target in 0usize..20,
        ) {
            let labels = clusters(&members, threshold);
            prop_assert_eq!(labels.len(), members.len());
            // Shuffled input, same clusters per key.
            let mut reversed = members.clone();
            reversed.reverse();
            let again = clusters(&reversed, threshold);
            for (i, m) in members.iter().enumerate() {
                let j = reversed.iter().position(|r| r.key == m.key).unwrap();
                prop_assert_eq!(labels[i], again[j]);
            }
            if let Some(v) = diversity_victim(&members, threshold, target) {
                prop_assert!(members.len() > target);
                let i = members.iter().position(|m| m.key == v).unwrap();
                prop_assert!(!members[i].protected);
                prop_assert!(labels.iter().filter(|l| **l == labels[i]).count() > 1);
            }
        }
    }
}
