//! Header sync along header hints over real loopback sockets: a node with hints fetches a
//! chain's segments from several peers at once; a peer whose segment does not lead to its
//! hint pays once another serves it; wrong hints cost re-requests, never the chain and never
//! an honest peer's score.
//!
//! The serving peers are raw protocol peers of this test (not meshd), answering `getheaders`
//! as Core does: the headers after the first locator hash they know, up to the stop hash or
//! 2,000.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::block::Header;
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::BlockHash;
use common::{AsyncPeer, Seen};
use meshd_actors::config::NodeConfig;
use meshd_actors::network::NetworkId;
use meshd_actors::node::Node;
use meshd_actors::sync::chain::headers::{mine_chain, mine_header};
use meshd_actors::wire::Message;

/// A regtest chain of `n` headers after genesis (index = height).
fn chain(n: u32) -> Vec<Header> {
    let genesis = NetworkId::Regtest.profile().genesis;
    let mut out = vec![genesis];
    out.extend(mine_chain(&genesis, n, 600));
    out
}

fn hints_of(chain: &[Header]) -> Vec<(u32, BlockHash)> {
    (1..chain.len() as u32)
        .filter(|h| h % 2000 == 0)
        .map(|h| (h, chain[h as usize].block_hash()))
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Honest,
    /// Answers segment requests (a stop hash set) with its last header replaced by another
    /// valid one: linked, the right length, but not ending at the hint.
    OffTheHint,
}

/// What the serving peers saw: per peer, the segment requests (stop hash set) it got.
type Log = Arc<Mutex<HashMap<usize, usize>>>;

/// What the serving peers share.
struct Shared {
    chain: Arc<Vec<Header>>,
    index: HashMap<BlockHash, usize>,
    /// Every peer waits for this before its first answer: set once the node's Sync knows
    /// every peer, so that no segment is given up for want of a peer still handshaking.
    gate: tokio::sync::watch::Sender<bool>,
    log: Log,
    until: Instant,
}

/// A serving peer: handshakes claiming the chain's height, then answers until the node
/// closes on it or `until` passes.
async fn serve(node: std::net::SocketAddr, me: usize, behaviour: Behaviour, shared: Arc<Shared>) {
    let Shared {
        chain,
        index,
        gate,
        log,
        until,
    } = &*shared;
    let until = *until;
    let mut p = AsyncPeer::connect(node).await.unwrap();
    assert!(p.handshake_at(chain.len() as i32 - 1).await);
    let _ = gate.subscribe().wait_for(|go| *go).await;
    while Instant::now() < until {
        match p.recv(Duration::from_millis(200)).await {
            Seen::Closed => return,
            Seen::Msg(Message::Network(NetworkMessage::Ping(n))) => {
                p.send(NetworkMessage::Pong(n)).await
            }
            Seen::Msg(Message::Network(NetworkMessage::GetHeaders(m))) => {
                let start = m
                    .locator_hashes
                    .iter()
                    .find_map(|h| index.get(h))
                    .map_or(1, |i| i + 1);
                let mut out: Vec<Header> = Vec::new();
                for h in &chain[start.min(chain.len())..] {
                    out.push(*h);
                    if h.block_hash() == m.stop_hash || out.len() == 2000 {
                        break;
                    }
                }
                let segment = m.stop_hash != BlockHash::all_zeros();
                if segment {
                    *log.lock().unwrap().entry(me).or_default() += 1;
                }
                if segment && behaviour == Behaviour::OffTheHint && out.len() >= 2 {
                    let parent = out[out.len() - 2];
                    let last = out.len() - 1;
                    out[last] = mine_header(
                        &parent,
                        bitcoin::TxMerkleNode::from_byte_array([9; 32]),
                        parent.time + 1,
                        parent.bits,
                    );
                }
                p.send(NetworkMessage::Headers(out)).await;
            }
            _ => {}
        }
    }
}

struct Lab {
    node: Node,
    log: Log,
    _dir: tempfile::TempDir,
    chain: Arc<Vec<Header>>,
}

async fn lab(chain: Arc<Vec<Header>>, hints: Vec<(u32, BlockHash)>, peers: &[Behaviour]) -> Lab {
    let index: HashMap<BlockHash, usize> = chain
        .iter()
        .enumerate()
        .map(|(i, h)| (h.block_hash(), i))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut c: NodeConfig = common::listen_only(dir.path());
    c.header_hints = hints;
    c.fetch_blocks = false;
    let node = Node::start(c).await.unwrap();
    let addr = node.listen_addrs()[0];
    let log: Log = Arc::default();
    let shared = Arc::new(Shared {
        chain: chain.clone(),
        index,
        // Every peer is known to Sync before any answers, so each can be given work.
        gate: tokio::sync::watch::channel(false).0,
        log: log.clone(),
        until: Instant::now() + Duration::from_secs(60),
    });
    for (i, b) in peers.iter().enumerate() {
        tokio::spawn(serve(addr, i, *b, shared.clone()));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while node.sync_peers().await.len() < peers.len() {
        assert!(Instant::now() < deadline, "Sync never learned every peer");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shared.gate.send_replace(true);
    Lab {
        node,
        log,
        _dir: dir,
        chain,
    }
}

async fn synced_to(node: &Node, chain: &[Header]) {
    let tip = chain[chain.len() - 1].block_hash().to_string();
    common::wait_until("synced to the chain's tip", Duration::from_secs(60), || {
        let s = node.sync_status();
        s.header_height == chain.len() as u32 - 1 && s.best_header_hash == tip
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_are_fetched_from_every_peer_along_the_hints() {
    let c = Arc::new(chain(20_000));
    let hints = hints_of(&c);
    let lab = lab(c, hints, &[Behaviour::Honest; 4]).await;
    synced_to(&lab.node, &lab.chain).await;
    let log = lab.log.lock().unwrap().clone();
    // Ten segments of 2,000, one at a time per peer: every peer served some.
    assert_eq!(log.len(), 4, "segment requests per peer: {log:?}");
    assert!(log.values().sum::<usize>() >= 10, "{log:?}");
    lab.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_off_its_hint_costs_the_sender_and_is_served_by_another_peer() {
    let c = Arc::new(chain(8_000));
    let hints = hints_of(&c);
    let lab = lab(c, hints, &[Behaviour::OffTheHint, Behaviour::Honest]).await;
    synced_to(&lab.node, &lab.chain).await;
    // The liar was asked, failed, and was charged (10 per segment it got wrong).
    assert!(lab.log.lock().unwrap().get(&0).copied().unwrap_or(0) >= 1);
    let peers = lab.node.peers();
    let charged: Vec<u32> = peers.iter().map(|p| p.misbehavior).collect();
    assert!(
        charged.iter().any(|m| *m >= 10),
        "misbehaviour scores {charged:?}"
    );
    lab.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_hint_costs_re_requests_never_the_chain() {
    let c = Arc::new(chain(8_000));
    let mut hints = hints_of(&c);
    // The hint at 4,000 names a block no peer has.
    hints[1].1 = BlockHash::from_byte_array([7; 32]);
    let lab = lab(c, hints, &[Behaviour::Honest; 3]).await;
    // Peers fail that segment, one at a time (one getheaders in flight per peer), until
    // hints are given up or the chain comes in by the normal path (the peer asked for the
    // segment after the wrong hint answers from genesis, as Core does for an unknown
    // locator); the right chain either way.
    synced_to(&lab.node, &lab.chain).await;
    // The hint is the operator's mistake: no peer answer proved it right, so nobody pays.
    let scores: Vec<u32> = lab.node.peers().iter().map(|p| p.misbehavior).collect();
    assert_eq!(scores.len(), 3, "every honest peer stays connected");
    assert!(
        scores.iter().all(|m| *m == 0),
        "honest peers paid for a wrong hint: {scores:?}"
    );
    lab.node.shutdown().await;
}
