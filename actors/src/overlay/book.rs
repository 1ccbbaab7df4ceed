//! The overlay's view of its connected peers: how each was found, where it is, what it
//! says it is, its round trip. Sans-IO: the driver feeds it the Swarm's events and a clock.
//!
//! Everything here is bounded: one row per connected peer (the Swarm's connection limit
//! bounds the rows), a few listen addresses per row, an agent string cut to a length, and a
//! short memory of why we dialled whom (so a connection we opened is labelled with why).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

use crate::shared::status::OverlayPeerStatus;

/// Listen addresses kept per peer (from Identify): enough to show and redial it; a peer
/// announcing hundreds cannot grow its row.
pub const MAX_ADDRS_PER_PEER: usize = 4;
/// Bytes of a peer's agent string kept: the rest is cut (at a character boundary).
pub const MAX_AGENT_LEN: usize = 256;
/// Dials whose reason is remembered until their connection comes (or not): older reasons
/// are forgotten first.
pub const MAX_DIALS_REMEMBERED: usize = 64;

/// How a peer came to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundBy {
    /// A `--overlay-bootstrap` address.
    Bootstrap,
    /// mDNS on the LAN.
    Mdns,
    /// A DHT walk.
    Dht,
    /// An operator's dial.
    Dial,
    /// A Bitcoin peer told us of it (`overlayaddr`).
    Hint,
    /// It connected to us.
    Inbound,
}

impl FoundBy {
    /// The label shown.
    pub fn label(self) -> &'static str {
        match self {
            FoundBy::Bootstrap => "bootstrap",
            FoundBy::Mdns => "mdns",
            FoundBy::Dht => "dht",
            FoundBy::Dial => "dial",
            FoundBy::Hint => "hint",
            FoundBy::Inbound => "inbound",
        }
    }
}

#[derive(Debug, Clone)]
struct Row {
    address: Multiaddr,
    connections: usize,
    listen_addrs: Vec<Multiaddr>,
    agent: Option<String>,
    found_by: FoundBy,
    relayed: bool,
    rtt: Option<Duration>,
    since: Instant,
    kad_added: bool,
}

/// The connected overlay peers.
#[derive(Debug, Default)]
pub struct OverlayBook {
    rows: HashMap<PeerId, Row>,
    dials: VecDeque<(PeerId, FoundBy)>,
}

/// Whether a multiaddr runs over a relay's circuit.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
}

impl OverlayBook {
    /// An empty book.
    pub fn new() -> OverlayBook {
        OverlayBook::default()
    }

    /// We are about to dial `peer` for this reason.
    pub fn dialling(&mut self, peer: PeerId, why: FoundBy) {
        self.dials.retain(|(p, _)| *p != peer);
        if self.dials.len() >= MAX_DIALS_REMEMBERED {
            self.dials.pop_front();
        }
        self.dials.push_back((peer, why));
    }

    /// A connection to `peer` was established; true when it is the first (the peer is new).
    pub fn connected(
        &mut self,
        peer: PeerId,
        address: Multiaddr,
        outbound: bool,
        now: Instant,
    ) -> bool {
        if let Some(row) = self.rows.get_mut(&peer) {
            row.connections += 1;
            // We dialled it too (both sides acted on hints at once, the inbound landed
            // first): it is one we chose after all.
            if outbound && row.found_by == FoundBy::Inbound {
                if let Some(i) = self.dials.iter().position(|(p, _)| *p == peer) {
                    if let Some((_, why)) = self.dials.remove(i) {
                        row.found_by = why;
                    }
                }
            }
            // A direct connection next to a relayed one (DCUtR's upgrade) is what we use.
            if row.relayed && !is_relayed(&address) {
                row.relayed = false;
                row.address = address;
            }
            return false;
        }
        // A reason counts only for the connection we opened (kept for it while an inbound
        // one lands first): an inbound connection from the same peer id proves nothing of
        // why we wanted it, and a hint must not protect a stranger who connects in under
        // the hinted id.
        let found_by = if outbound {
            self.dials
                .iter()
                .position(|(p, _)| *p == peer)
                .and_then(|i| self.dials.remove(i))
                .map_or(FoundBy::Dht, |(_, why)| why)
        } else {
            FoundBy::Inbound
        };
        let relayed = is_relayed(&address);
        self.rows.insert(
            peer,
            Row {
                address,
                connections: 1,
                listen_addrs: Vec::new(),
                agent: None,
                found_by,
                relayed,
                rtt: None,
                since: now,
                kad_added: false,
            },
        );
        true
    }

    /// A connection to `peer` closed, `remaining` still open; true when the peer is gone.
    pub fn closed(&mut self, peer: &PeerId, remaining: u32) -> bool {
        if remaining > 0 {
            if let Some(row) = self.rows.get_mut(peer) {
                row.connections = remaining as usize;
            }
            return false;
        }
        self.rows.remove(peer).is_some()
    }

    /// What Identify told us of `peer`.
    pub fn identified(&mut self, peer: &PeerId, agent: &str, listen_addrs: &[Multiaddr]) {
        if let Some(row) = self.rows.get_mut(peer) {
            row.agent = Some(cut(agent, MAX_AGENT_LEN));
            row.listen_addrs = listen_addrs
                .iter()
                .take(MAX_ADDRS_PER_PEER)
                .cloned()
                .collect();
        }
    }

    /// A ping's round trip.
    pub fn pinged(&mut self, peer: &PeerId, rtt: Duration) {
        if let Some(row) = self.rows.get_mut(peer) {
            row.rtt = Some(rtt);
        }
    }

    /// Connected peers.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no peer is connected.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Whether `peer` came in (only inbound peers are pruned for diversity: those we chose,
    /// by bootstrap, hint, operator, DHT walk or mDNS, are kept).
    pub fn is_inbound(&self, peer: &PeerId) -> bool {
        self.rows
            .get(peer)
            .is_some_and(|r| r.found_by == FoundBy::Inbound)
    }

    /// Marks `peer`'s addresses as put in the routing table; true the first time on this
    /// connection (a peer pushing Identify again with new addresses cannot grow the table,
    /// but one that turns to serving the DHT later is still added then).
    pub fn mark_kad_added(&mut self, peer: &PeerId) -> bool {
        match self.rows.get_mut(peer) {
            Some(row) if !row.kad_added => {
                row.kad_added = true;
                true
            }
            _ => false,
        }
    }

    /// Where `peer` says it listens (Identify), a few addresses.
    pub fn listen_addrs(&self, peer: &PeerId) -> &[Multiaddr] {
        self.rows
            .get(peer)
            .map_or(&[][..], |r| r.listen_addrs.as_slice())
    }

    /// Whether `peer` is connected.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.rows.contains_key(peer)
    }

    /// The rows as shown, by peer id.
    pub fn status(&self, now: Instant) -> Vec<OverlayPeerStatus> {
        let mut out: Vec<OverlayPeerStatus> = self
            .rows
            .iter()
            .map(|(peer, row)| OverlayPeerStatus {
                peer_id: peer.to_string(),
                address: row.address.to_string(),
                listen_addrs: row.listen_addrs.iter().map(|a| a.to_string()).collect(),
                agent: row.agent.clone(),
                found_by: row.found_by.label(),
                relayed: row.relayed,
                rtt_ms: row.rtt.map(|d| d.as_millis() as u64),
                connected_secs: now.saturating_duration_since(row.since).as_secs(),
                topics: Vec::new(),
                cluster: 0,
                similarity: 0.0,
            })
            .collect();
        out.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        out
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_dialled_peer_is_labelled_with_why_and_an_unasked_one_as_inbound() {
        let mut book = OverlayBook::new();
        let now = Instant::now();
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        book.dialling(a, FoundBy::Bootstrap);
        assert!(book.connected(a, addr("/ip4/127.0.0.1/tcp/1"), true, now));
        assert!(book.connected(b, addr("/ip4/127.0.0.1/tcp/2"), false, now));
        assert!(book.connected(c, addr("/ip4/127.0.0.1/tcp/3"), true, now));
        let rows = book.status(now);
        let by = |p: PeerId| rows.iter().find(|r| r.peer_id == p.to_string()).unwrap();
        assert_eq!(by(a).found_by, "bootstrap");
        assert_eq!(by(b).found_by, "inbound");
        // A dial reason does not label an inbound connection from the same id.
        let d = PeerId::random();
        book.dialling(d, FoundBy::Hint);
        assert!(book.connected(d, addr("/ip4/127.0.0.1/tcp/4"), false, now));
        assert!(book.is_inbound(&d));
        // Our own dial to it lands next: it is one we chose after all.
        assert!(!book.connected(d, addr("/ip4/127.0.0.1/tcp/5"), true, now));
        assert!(!book.is_inbound(&d));
        // Its addresses enter the routing table once per connection.
        assert!(book.mark_kad_added(&d));
        assert!(!book.mark_kad_added(&d));
        assert_eq!(by(c).found_by, "dht");
    }

    #[test]
    fn a_peer_leaves_with_its_last_connection_and_a_direct_one_replaces_a_relayed_one() {
        let mut book = OverlayBook::new();
        let now = Instant::now();
        let p = PeerId::random();
        let relayed = addr("/ip4/203.0.113.1/tcp/4001/p2p-circuit");
        assert!(book.connected(p, relayed, true, now));
        assert!(book.status(now)[0].relayed);
        assert!(!book.connected(p, addr("/ip4/198.51.100.2/tcp/4001"), true, now));
        assert!(!book.status(now)[0].relayed);
        assert!(!book.closed(&p, 1));
        assert!(book.contains(&p));
        assert!(book.closed(&p, 0));
        assert!(book.is_empty());
    }

    #[test]
    fn identify_is_bounded_and_dial_reasons_are_forgotten_oldest_first() {
        let mut book = OverlayBook::new();
        let now = Instant::now();
        let p = PeerId::random();
        book.connected(p, addr("/ip4/127.0.0.1/tcp/1"), false, now);
        let many: Vec<Multiaddr> = (0..100)
            .map(|i| addr(&format!("/ip4/127.0.0.1/tcp/{}", 1000 + i)))
            .collect();
        book.identified(&p, &"é".repeat(500), &many);
        let row = &book.status(now)[0];
        assert_eq!(row.listen_addrs.len(), MAX_ADDRS_PER_PEER);
        let agent = row.agent.as_ref().unwrap();
        assert!(agent.len() <= MAX_AGENT_LEN && agent.len() >= MAX_AGENT_LEN - 1);

        let first = PeerId::random();
        book.dialling(first, FoundBy::Mdns);
        for _ in 0..MAX_DIALS_REMEMBERED {
            book.dialling(PeerId::random(), FoundBy::Dial);
        }
        assert!(book.dials.len() <= MAX_DIALS_REMEMBERED);
        book.connected(first, addr("/ip4/127.0.0.1/tcp/9"), true, now);
        let rows = book.status(now);
        let row = rows
            .iter()
            .find(|r| r.peer_id == first.to_string())
            .unwrap();
        assert_eq!(row.found_by, "dht", "its reason was forgotten");
    }

    proptest! {
        #[test]
        fn rows_follow_connections(ops in proptest::collection::vec((0usize..4, any::<bool>()), 0..64)) {
            let peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
            let mut open = [0u32; 4];
            let mut book = OverlayBook::new();
            let now = Instant::now();
            for (i, up) in ops {
                if up {
                    book.connected(peers[i], addr("/ip4/127.0.0.1/tcp/1"), true, now);
                    open[i] += 1;
                } else if open[i] > 0 {
                    open[i] -= 1;
                    book.closed(&peers[i], open[i]);
                }
                let want = open.iter().filter(|n| **n > 0).count();
                prop_assert_eq!(book.len(), want);
                prop_assert!(book.dials.len() <= MAX_DIALS_REMEMBERED);
            }
        }
    }
}
