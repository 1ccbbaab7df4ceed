//! Behaviour as Bitcoin Core expects it, over real loopback sockets (in the spirit of Core's
//! p2p_sendheaders and p2p_addrv2_relay): feature messages gated by the peer's protocol
//! version, and feature negotiation only between version and verack.

mod common;

use std::time::{Duration, Instant};

use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::ServiceFlags;
use common::{config, AsyncPeer, Seen};
use meshd_actors::node::Node;
use meshd_actors::wire::Message;

fn version(v: u32) -> NetworkMessage {
    let a = Address::new(&"127.0.0.1:1".parse().unwrap(), ServiceFlags::NONE);
    let mut m = VersionMessage::new(
        ServiceFlags::NETWORK | ServiceFlags::WITNESS,
        0,
        a.clone(),
        a,
        rand::random(),
        "/conformance/".into(),
        0,
    );
    m.version = v;
    m.relay = true;
    NetworkMessage::Version(m)
}

/// Every command the node sends for `period`, answering `getheaders` with nothing (so the
/// node reads as synced and sends what a synced node sends) and pings with pongs.
async fn commands_for(p: &mut AsyncPeer, period: Duration) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + period;
    while Instant::now() < deadline {
        match p
            .recv(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Seen::Msg(m) => {
                seen.push(m.command().to_string());
                match m {
                    Message::Network(NetworkMessage::GetHeaders(_)) => {
                        p.send(NetworkMessage::Headers(vec![])).await
                    }
                    Message::Network(NetworkMessage::Ping(n)) => {
                        p.send(NetworkMessage::Pong(n)).await
                    }
                    Message::Network(NetworkMessage::Version(_)) => {
                        p.send(NetworkMessage::Verack).await
                    }
                    _ => {}
                }
            }
            Seen::Timeout => break,
            Seen::Closed => {
                seen.push("<closed>".into());
                break;
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_70001_peer_receives_no_feature_message_it_cannot_know() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    // A recent tip: out of initial sync, so the node would send sendheaders.
    node.generate(1).await.unwrap();
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    p.send(version(70001)).await;
    let seen = commands_for(&mut p, Duration::from_millis(1500)).await;
    assert!(seen.iter().any(|c| c == "verack"), "{seen:?}");
    assert_eq!(
        node.sync_status().state,
        meshd_actors::msg::SyncState::Synced,
        "the node must be synced, so that it would send sendheaders"
    );
    for feature in ["sendheaders", "sendaddrv2", "wtxidrelay"] {
        assert!(
            !seen.iter().any(|c| c == feature),
            "{feature} sent to a 70001 peer: {seen:?}"
        );
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_70016_peer_gets_negotiation_before_verack_and_is_dropped_for_it_after() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    // A recent tip: out of initial sync, so sendheaders is sent.
    node.generate(1).await.unwrap();
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    p.send(version(70016)).await;
    let seen = commands_for(&mut p, Duration::from_millis(1500)).await;
    let at = |c: &str| seen.iter().position(|s| s == c);
    let verack = at("verack").expect("verack");
    for feature in ["wtxidrelay", "sendaddrv2"] {
        let i = at(feature).unwrap_or_else(|| panic!("no {feature}: {seen:?}"));
        assert!(i < verack, "{feature} after verack: {seen:?}");
    }
    assert!(at("sendheaders").is_some(), "{seen:?}");
    // Negotiation after the handshake: Core disconnects, so do we.
    p.send(NetworkMessage::WtxidRelay).await;
    assert!(p.closed_within(Duration::from_secs(5)).await);
    node.shutdown().await;
}

/// Handshakes as a BIP339 peer: `version` 70016, then `wtxidrelay` before our `verack`.
async fn wtxid_peer(addr: std::net::SocketAddr) -> AsyncPeer {
    let mut p = AsyncPeer::connect(addr).await.unwrap();
    p.send(version(70016)).await;
    p.send(NetworkMessage::WtxidRelay).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut version_seen, mut verack_seen) = (false, false);
    while !(version_seen && verack_seen) {
        assert!(Instant::now() < deadline, "handshake");
        match p.recv(Duration::from_secs(5)).await {
            Seen::Msg(Message::Network(NetworkMessage::Version(_))) => {
                version_seen = true;
                p.send(NetworkMessage::Verack).await;
            }
            Seen::Msg(Message::Network(NetworkMessage::Verack)) => verack_seen = true,
            Seen::Msg(_) => {}
            other => panic!("handshake: {other:?}"),
        }
    }
    p
}

/// The next message matching `pick`, answering pings and getheaders meanwhile.
async fn next_matching<T>(
    p: &mut AsyncPeer,
    mut pick: impl FnMut(&NetworkMessage) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match p.recv(left).await {
            Seen::Msg(Message::Network(m)) => {
                if let Some(t) = pick(&m) {
                    return t;
                }
                match m {
                    NetworkMessage::Ping(n) => p.send(NetworkMessage::Pong(n)).await,
                    NetworkMessage::GetHeaders(_) => p.send(NetworkMessage::Headers(vec![])).await,
                    _ => {}
                }
            }
            Seen::Msg(_) => {}
            other => panic!("waiting: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_cross_wtxid_relay_peers_in_both_directions() {
    use bitcoin::hashes::Hash;
    use bitcoin::p2p::message_blockdata::Inventory;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.trickle = false;
    // Both peers are inbound: nobody vouches for the transaction, so relay all of them (this
    // test is about the wtxid encoding; vouching is tests/tx_download.rs's).
    c.tx_relay = meshd_actors::config::TxRelay::All;
    let node = Node::start(c).await.unwrap();
    let addr = node.listen_addrs()[0];
    let mut sender = wtxid_peer(addr).await;
    let mut receiver = wtxid_peer(addr).await;
    // A segwit transaction, so that its wtxid is not its txid.
    let tx = bitcoin::Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![bitcoin::TxIn {
            previous_output: bitcoin::OutPoint::new(bitcoin::Txid::from_byte_array([7; 32]), 0),
            script_sig: bitcoin::ScriptBuf::new(),
            sequence: bitcoin::Sequence::MAX,
            witness: bitcoin::Witness::from_slice(&[vec![1u8, 2, 3]]),
        }],
        output: vec![bitcoin::TxOut {
            value: bitcoin::Amount::from_sat(1_000),
            script_pubkey: bitcoin::ScriptBuf::from_bytes(vec![0x51]),
        }],
    };
    let wtxid = tx.compute_wtxid();
    assert_ne!(wtxid.to_byte_array(), tx.compute_txid().to_byte_array());

    // In: announced by wtxid, requested by MSG_WTX.
    sender
        .send(NetworkMessage::Inv(vec![Inventory::WTx(wtxid)]))
        .await;
    let asked = next_matching(&mut sender, |m| match m {
        NetworkMessage::GetData(items) => Some(items.clone()),
        _ => None,
    })
    .await;
    assert_eq!(asked, vec![Inventory::WTx(wtxid)]);
    sender.send(NetworkMessage::Tx(tx.clone())).await;

    // Out: announced by wtxid, served to a MSG_WTX request.
    let announced = next_matching(&mut receiver, |m| match m {
        NetworkMessage::Inv(items) => Some(items.clone()),
        _ => None,
    })
    .await;
    assert_eq!(announced, vec![Inventory::WTx(wtxid)]);
    receiver
        .send(NetworkMessage::GetData(vec![Inventory::WTx(wtxid)]))
        .await;
    let got = next_matching(&mut receiver, |m| match m {
        NetworkMessage::Tx(t) => Some(t.clone()),
        _ => None,
    })
    .await;
    assert_eq!(got.compute_wtxid(), wtxid);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutated_block_is_refused_not_served_and_its_sender_dropped() {
    use bitcoin::hashes::Hash;
    use bitcoin::p2p::message_blockdata::Inventory;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let genesis = node.profile().genesis;
    // A tip block (recent, so its header is fetched at once, as Core's CanDirectFetch).
    let now = common::unix_now();
    // A valid block of three transactions on genesis...
    let mut block = meshd_actors::sync::mine::regtest_block(&genesis, 1, now, 9);
    for i in 1..3u8 {
        let mut tx = block.txdata[0].clone();
        tx.input[0].previous_output =
            bitcoin::OutPoint::new(bitcoin::Txid::from_byte_array([i; 32]), 0);
        block.txdata.push(tx);
    }
    let root = block.compute_merkle_root().unwrap();
    block.header =
        meshd_actors::sync::chain::headers::mine_header(&genesis, root, now, genesis.bits);
    // ...and its CVE-2012-2459 twin: the last transaction twice, the same merkle root.
    let mut mutated = block.clone();
    mutated.txdata.push(block.txdata[2].clone());
    assert!(mutated.check_merkle_root());

    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    p.send(version(70016)).await;
    let _ = commands_for(&mut p, Duration::from_millis(500)).await; // handshake, synced
    p.send(NetworkMessage::Headers(vec![block.header])).await;
    let hash = block.block_hash();
    let asked = next_matching(&mut p, |m| match m {
        NetworkMessage::GetData(items) => Some(items.clone()),
        _ => None,
    })
    .await;
    assert_eq!(asked, vec![Inventory::WitnessBlock(hash)]);
    p.send(NetworkMessage::Block(mutated)).await;
    assert!(p.closed_within(Duration::from_secs(5)).await, "sender kept");

    // Not kept: another peer asking for it is told notfound.
    let mut q = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(q.handshake().await);
    q.send(NetworkMessage::GetData(vec![Inventory::Block(hash)]))
        .await;
    let answer = next_matching(&mut q, |m| match m {
        NetworkMessage::NotFound(_) => Some(true),
        NetworkMessage::Block(_) => Some(false),
        _ => None,
    })
    .await;
    assert!(answer, "the mutated block was served");
    node.shutdown().await;
}

/// Core's getheaders and headers rules: a null locator asks for the stop header alone (and
/// an unknown stop gets no answer); a non-zero transaction count in `headers` is read and
/// ignored, not charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_locator_getheaders_and_headers_with_a_transaction_count_as_core() {
    use bitcoin::hashes::Hash;
    use bitcoin::p2p::message_blockdata::GetHeadersMessage;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let hashes = node.generate(5).await.unwrap();
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    p.send(version(70016)).await;
    let _ = commands_for(&mut p, Duration::from_millis(300)).await;
    let ask = |stop| {
        NetworkMessage::GetHeaders(GetHeadersMessage {
            version: 70016,
            locator_hashes: vec![],
            stop_hash: stop,
        })
    };
    p.send(ask(hashes[2])).await;
    let got = next_matching(&mut p, |m| match m {
        NetworkMessage::Headers(h) => Some(h.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        got.len(),
        1,
        "the stop header alone (before: a whole batch from genesis)"
    );
    assert_eq!(got[0].block_hash(), hashes[2]);
    // An unknown stop: no answer at all (the pong comes first, and nothing after it).
    p.send(ask(bitcoin::BlockHash::from_byte_array([7; 32])))
        .await;
    p.send(NetworkMessage::Ping(3)).await;
    let first = next_matching(&mut p, |m| match m {
        NetworkMessage::Headers(_) => Some(false),
        NetworkMessage::Pong(3) => Some(true),
        _ => None,
    })
    .await;
    assert!(first, "an unknown stop header was answered");
    // A new header whose transaction count is 1: taken, the sender not charged.
    let tip = node
        .sync_status()
        .best_header_hash
        .parse::<bitcoin::BlockHash>()
        .unwrap();
    assert_eq!(tip, hashes[4]);
    let now = common::unix_now();
    let last = bitcoin::block::Header {
        version: bitcoin::block::Version::TWO,
        prev_blockhash: hashes[4],
        merkle_root: bitcoin::TxMerkleNode::all_zeros(),
        // Past the generated blocks' median time (they may run a few seconds ahead).
        time: now + 100,
        bits: node.profile().genesis.bits,
        nonce: 0,
    };
    let h = mine_on(last);
    let mut payload = vec![1u8];
    payload.extend_from_slice(&bitcoin::consensus::serialize(&h));
    payload.push(1);
    let magic = node.profile().magic;
    p.send_raw(&meshd_actors::wire::encode_frame(
        magic,
        meshd_actors::wire::Command::new("headers").unwrap(),
        &payload,
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.sync_status().header_height != 6 {
        assert!(Instant::now() < deadline, "the header was not taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node.peers()[0].misbehavior, 0);
    node.shutdown().await;
}

/// Grinds `h`'s nonce until it meets its regtest target.
fn mine_on(mut h: bitcoin::block::Header) -> bitcoin::block::Header {
    while !h.target().is_met_by(h.block_hash()) {
        h.nonce += 1;
    }
    h
}

/// Core's p2p_ibd_stalling, for a tip block: the peer asked for it never delivers; another
/// peer that announced it is asked within seconds (Core's 2 s stalling timeout), not after
/// the 10-minute download timeout, and its copy is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tip_block_is_asked_of_another_announcer_within_seconds() {
    use bitcoin::p2p::message_blockdata::Inventory;
    use meshd_actors::events::{EventKind, NodeEvent};
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let block = segwit_block(&node.profile().genesis);
    let hash = block.block_hash();
    let mut events = node.subscribe_to(&[EventKind::BlockReceived]);
    let mut staller = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    staller.send(version(70016)).await;
    let _ = commands_for(&mut staller, Duration::from_millis(300)).await;
    let mut other = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    other.send(version(70016)).await;
    let _ = commands_for(&mut other, Duration::from_millis(300)).await;
    staller
        .send(NetworkMessage::Headers(vec![block.header]))
        .await;
    let asked = next_matching(&mut staller, |m| match m {
        NetworkMessage::GetData(items) => Some(items.clone()),
        _ => None,
    })
    .await;
    assert_eq!(asked, vec![Inventory::WitnessBlock(hash)]);
    let asked_at = Instant::now();
    // The other peer announces it too; it is not asked while the first request is young.
    other
        .send(NetworkMessage::Inv(vec![Inventory::Block(hash)]))
        .await;
    let asked = next_matching(&mut other, |m| match m {
        NetworkMessage::GetData(items) => Some(items.clone()),
        _ => None,
    })
    .await;
    let waited = asked_at.elapsed();
    assert_eq!(asked, vec![Inventory::WitnessBlock(hash)]);
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5),
        "asked of the other announcer after {waited:?} (before: after 10 minutes)"
    );
    other.send(NetworkMessage::Block(block)).await;
    let got = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("block received")
        .expect("event");
    assert!(
        matches!(got.event, NodeEvent::BlockReceived { hash: ref h, .. } if *h == hash.to_string())
    );
    node.shutdown().await;
}

/// A requested block above our limit is skipped unread but for its header, whose hash tells
/// Sync which request failed: the request is released at once and the next announcer asked
/// (before: only after the 2 s stalling timeout), and the peer that sent it, free of points
/// (the limit is our BSV policy, `--max-block-message-size`), is not asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_block_above_our_limit_is_asked_of_the_next_announcer_at_once() {
    use bitcoin::hashes::Hash;
    use bitcoin::p2p::message_blockdata::Inventory;
    use meshd_actors::network::NetworkId;
    let dir = tempfile::tempdir().unwrap();
    let mut c = meshd_actors::config::NodeConfig::new(NetworkId::BsvRegtest, dir.path().into());
    c.listen = vec!["127.0.0.1:0".parse().unwrap()];
    // Blocks above the ordinary limit (2 MiB on BSV) are above our policy.
    c.max_block_message_size = 1;
    let node = Node::start(c).await.unwrap();
    let genesis = node.profile().genesis;
    let now = common::unix_now();
    let header = meshd_actors::sync::chain::headers::mine_header(
        &genesis,
        bitcoin::TxMerkleNode::from_byte_array([3; 32]),
        now,
        genesis.bits,
    );
    let hash = header.block_hash();
    let addr = node.listen_addrs()[0];
    let mut big = AsyncPeer::connect_on(addr, NetworkId::BsvRegtest)
        .await
        .unwrap();
    big.send(version(70016)).await;
    let _ = commands_for(&mut big, Duration::from_millis(300)).await;
    let mut other = AsyncPeer::connect_on(addr, NetworkId::BsvRegtest)
        .await
        .unwrap();
    other.send(version(70016)).await;
    let _ = commands_for(&mut other, Duration::from_millis(300)).await;
    big.send(NetworkMessage::Headers(vec![header])).await;
    let asked = next_matching(&mut big, |m| match m {
        NetworkMessage::GetData(items) => Some(items.clone()),
        _ => None,
    })
    .await;
    // MSG_BLOCK: the SV node serves no other block type.
    assert_eq!(asked, vec![Inventory::Block(hash)]);
    let asked_at = Instant::now();
    // The block's header, then padding past our limit.
    let limit = node.profile().limits.bulk as usize;
    assert!(limit <= 4 << 20, "a block limit of {limit}");
    let mut payload = bitcoin::consensus::serialize(&header);
    payload.resize(limit + 1000, 0);
    big.send_raw(&meshd_actors::wire::encode_frame(
        node.profile().magic,
        meshd_actors::wire::Command::new("block").unwrap(),
        &payload,
    ))
    .await;
    other
        .send(NetworkMessage::Inv(vec![Inventory::Block(hash)]))
        .await;
    let asked = next_matching(&mut other, |m| match m {
        NetworkMessage::GetData(items) => Some(items.clone()),
        _ => None,
    })
    .await;
    assert_eq!(asked, vec![Inventory::Block(hash)]);
    // Without the report, the request to `big` stands until the 2 s stalling timeout.
    let waited = asked_at.elapsed();
    assert!(
        waited < Duration::from_millis(1500),
        "asked of the next announcer {waited:?} after the first request"
    );
    // Free of points, still connected, and not asked for that block again.
    let peers = node.peers();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(peers.iter().all(|p| p.misbehavior == 0), "{peers:?}");
    big.send(NetworkMessage::Inv(vec![Inventory::Block(hash)]))
        .await;
    let again = big
        .wait_for(Duration::from_secs(3), |m| match m {
            NetworkMessage::GetData(items) if items.contains(&Inventory::Block(hash)) => Some(()),
            _ => None,
        })
        .await;
    assert!(
        again.is_none(),
        "the peer whose copy was too large was asked again"
    );
    node.shutdown().await;
}

/// `peer` announces `hash` by `inv`: how long until it is asked for it (MSG_BLOCK).
async fn announced_and_asked(peer: &mut AsyncPeer, hash: bitcoin::BlockHash) -> Duration {
    use bitcoin::p2p::message_blockdata::Inventory;
    peer.send(NetworkMessage::Inv(vec![Inventory::Block(hash)]))
        .await;
    let at = Instant::now();
    let asked = next_matching(peer, |m| match m {
        NetworkMessage::GetData(items) => Some(items.clone()),
        _ => None,
    })
    .await;
    assert_eq!(asked, vec![Inventory::Block(hash)]);
    at.elapsed()
}

/// BSV: the SV node sends a compact block or `blocktxn` of whatever size its block has. One
/// above our policy (`--max-block-message-size`) that answers our request is skipped as such
/// a block is, named by its lead (a `blocktxn`'s 32-byte hash, a `cmpctblock`'s header): free
/// of points, and the block asked of the next announcer at once. Before, either frame was a
/// fatal oversized one (100 points: the honest peer banned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_bsv_compact_block_data_above_our_limit_is_skipped_free_and_asked_elsewhere() {
    use bitcoin::hashes::Hash;
    use bitcoin::p2p::message_blockdata::Inventory;
    use bitcoin::p2p::message_compact_blocks::SendCmpct;
    use meshd_actors::network::NetworkId;
    use meshd_actors::sync::compact::{compact_block, short_id_hashes};
    let dir = tempfile::tempdir().unwrap();
    let mut c = meshd_actors::config::NodeConfig::new(NetworkId::BsvRegtest, dir.path().into());
    c.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.max_block_message_size = 1;
    let node = Node::start(c).await.unwrap();
    let (magic, genesis) = (node.profile().magic, node.profile().genesis);
    let limit = node.profile().limits.bulk as usize;
    let addr = node.listen_addrs()[0];
    let mut big = AsyncPeer::connect_on(addr, NetworkId::BsvRegtest)
        .await
        .unwrap();
    big.send(version(70016)).await;
    let _ = commands_for(&mut big, Duration::from_millis(300)).await;
    big.send(NetworkMessage::SendCmpct(SendCmpct {
        send_compact: false,
        version: 1,
    }))
    .await;
    let mut other = AsyncPeer::connect_on(addr, NetworkId::BsvRegtest)
        .await
        .unwrap();
    other.send(version(70016)).await;
    let _ = commands_for(&mut other, Duration::from_millis(300)).await;
    let frame = |command: &str, lead: &[u8]| {
        let mut payload = lead.to_vec();
        payload.resize(limit + 1000, 0);
        meshd_actors::wire::encode_frame(
            magic,
            meshd_actors::wire::Command::new(command).unwrap(),
            &payload,
        )
    };
    // 1. A blocktxn above the limit, answering our getblocktxn.
    let mut b1 = meshd_actors::sync::mine::regtest_block(&genesis, 1, common::unix_now() - 60, 5);
    b1.txdata.push(spend([9; 32], &[1_000], false));
    let merkle = b1.compute_merkle_root().unwrap();
    b1.header = meshd_actors::sync::chain::headers::mine_header(
        &genesis,
        merkle,
        b1.header.time,
        genesis.bits,
    );
    let h1 = b1.block_hash();
    big.send(NetworkMessage::Headers(vec![b1.header])).await;
    let asked = next_matching(&mut big, |m| match m {
        NetworkMessage::GetData(items) => Some(items.clone()),
        _ => None,
    })
    .await;
    assert_eq!(asked, vec![Inventory::CompactBlock(h1)]);
    let cmpct = compact_block(&b1, 7, &short_id_hashes(&b1, false), &[]);
    big.send_raw(&Message::CmpctBlock(Box::new(cmpct)).encode(magic))
        .await;
    let wanted = next_matching(&mut big, |m| match m {
        NetworkMessage::GetBlockTxn(g) => Some(g.txs_request.clone()),
        _ => None,
    })
    .await;
    assert_eq!((wanted.block_hash, wanted.indexes), (h1, vec![1]));
    big.send_raw(&frame("blocktxn", &h1.to_byte_array())).await;
    let waited = announced_and_asked(&mut other, h1).await;
    assert!(waited < Duration::from_millis(1500), "{waited:?}");
    other.send(NetworkMessage::Block(b1.clone())).await;
    // Kept before its child is announced: a child whose parent's block is missing is asked
    // whole (Core's rule), which a loaded machine would otherwise race into.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let kept = matches!(
            node.query(meshd_actors::msg::ChainQuery::Block(h1)).await,
            Ok(meshd_actors::msg::ChainAnswer::Block(Some(_), _))
        );
        if kept {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "block 1 never kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 2. A cmpctblock above the limit, answering our getdata(MSG_CMPCT_BLOCK).
    let h2_header = meshd_actors::sync::chain::headers::mine_header(
        &b1.header,
        bitcoin::TxMerkleNode::from_byte_array([4; 32]),
        b1.header.time + 1,
        genesis.bits,
    );
    let h2 = h2_header.block_hash();
    big.send(NetworkMessage::Headers(vec![h2_header])).await;
    let asked = next_matching(&mut big, |m| match m {
        NetworkMessage::GetData(items) => Some(items.clone()),
        _ => None,
    })
    .await;
    assert_eq!(asked, vec![Inventory::CompactBlock(h2)]);
    big.send_raw(&frame(
        "cmpctblock",
        &bitcoin::consensus::serialize(&h2_header),
    ))
    .await;
    let waited = announced_and_asked(&mut other, h2).await;
    assert!(waited < Duration::from_millis(1500), "{waited:?}");

    // Free of points, and still connected.
    assert!(
        !big.closed_within(Duration::from_millis(500)).await,
        "the peer was dropped"
    );
    let peers = node.peers();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(peers.iter().all(|p| p.misbehavior == 0), "{peers:?}");
    node.shutdown().await;
}

/// On BTC the block limit is the chain's own: a block above it is invalid even when asked
/// for, and the message is oversized (fatal, charged), not skipped free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_btc_a_requested_block_above_the_limit_is_oversized() {
    use bitcoin::p2p::message_blockdata::Inventory;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let block = segwit_block(&node.profile().genesis);
    let hash = block.block_hash();
    let mut big = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    big.send(version(70016)).await;
    let _ = commands_for(&mut big, Duration::from_millis(300)).await;
    big.send(NetworkMessage::Headers(vec![block.header])).await;
    let asked = next_matching(&mut big, |m| match m {
        NetworkMessage::GetData(items) => Some(items.clone()),
        _ => None,
    })
    .await;
    assert_eq!(asked, vec![Inventory::WitnessBlock(hash)]);
    let mut payload = bitcoin::consensus::serialize(&block.header);
    payload.resize(4_100_000, 0);
    big.send_raw(&meshd_actors::wire::encode_frame(
        node.profile().magic,
        meshd_actors::wire::Command::new("block").unwrap(),
        &payload,
    ))
    .await;
    assert!(
        big.closed_within(Duration::from_secs(5)).await,
        "an oversized block on BTC was taken as our policy's"
    );
    node.shutdown().await;
}

/// A peer that announces a block, answers `notfound` and reconnects, again and again, cannot
/// make the node give the block up: `notfound` never counts towards giving up, and a peer's
/// record leaves with it. An honest announcer afterwards is asked and its block kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_notfound_peer_cannot_make_a_block_be_given_up() {
    use bitcoin::p2p::message_blockdata::Inventory;
    use meshd_actors::events::{EventKind, NodeEvent};
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let block = segwit_block(&node.profile().genesis);
    let hash = block.block_hash();
    let mut events = node.subscribe_to(&[EventKind::BlockReceived]);
    for round in 0..12 {
        let mut liar = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
        liar.send(version(70016)).await;
        let _ = commands_for(&mut liar, Duration::from_millis(200)).await;
        if round == 0 {
            liar.send(NetworkMessage::Headers(vec![block.header])).await;
        } else {
            liar.send(NetworkMessage::Inv(vec![Inventory::Block(hash)]))
                .await;
        }
        let asked = next_matching(&mut liar, |m| match m {
            NetworkMessage::GetData(items) => Some(items.clone()),
            _ => None,
        })
        .await;
        assert_eq!(asked, vec![Inventory::WitnessBlock(hash)], "round {round}");
        liar.send(NetworkMessage::NotFound(asked)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut honest = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    honest.send(version(70016)).await;
    let _ = commands_for(&mut honest, Duration::from_millis(200)).await;
    honest
        .send(NetworkMessage::Inv(vec![Inventory::Block(hash)]))
        .await;
    let asked = next_matching(&mut honest, |m| match m {
        NetworkMessage::GetData(items) => Some(items.clone()),
        _ => None,
    })
    .await;
    assert_eq!(asked, vec![Inventory::WitnessBlock(hash)]);
    honest.send(NetworkMessage::Block(block)).await;
    let got = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("block received")
        .expect("event");
    assert!(
        matches!(got.event, NodeEvent::BlockReceived { hash: ref h, .. } if *h == hash.to_string())
    );
    node.shutdown().await;
}

/// A tip block on genesis with one segwit spend and its witness commitment (BIP141).
fn segwit_block(genesis: &bitcoin::block::Header) -> bitcoin::Block {
    use bitcoin::hashes::Hash;
    let now = common::unix_now();
    let mut block = meshd_actors::sync::mine::regtest_block(genesis, 1, now, 5);
    let mut tx = spend([4; 32], &[1_000], false);
    tx.input[0].witness = bitcoin::Witness::from_slice(&[vec![0x30; 71], vec![0x02; 33]]);
    block.txdata.push(tx);
    block.txdata[0].input[0].witness = bitcoin::Witness::from_slice(&[[0u8; 32]]);
    let root = block.witness_root().unwrap();
    let commitment = bitcoin::Block::compute_witness_commitment(&root, &[0u8; 32]);
    let mut script = vec![0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];
    script.extend_from_slice(commitment.as_byte_array());
    block.txdata[0].output.push(bitcoin::TxOut {
        value: bitcoin::Amount::ZERO,
        script_pubkey: bitcoin::ScriptBuf::from_bytes(script),
    });
    let merkle = block.compute_merkle_root().unwrap();
    block.header =
        meshd_actors::sync::chain::headers::mine_header(genesis, merkle, now, genesis.bits);
    block
}

/// Core's p2p_segwit: a block with its witnesses stripped has the honest block's hash and
/// merkle root; it is refused, its sender charged, and the block asked of another peer that
/// announced it, whose honest copy is kept and published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_stripped_block_is_refused_and_the_honest_copy_fetched_elsewhere() {
    use bitcoin::p2p::message_blockdata::Inventory;
    use meshd_actors::events::{EventKind, NodeEvent};
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let honest = segwit_block(&node.profile().genesis);
    let hash = honest.block_hash();
    let mut stripped = honest.clone();
    for tx in &mut stripped.txdata {
        for input in &mut tx.input {
            input.witness = bitcoin::Witness::new();
        }
    }
    assert_eq!(stripped.block_hash(), hash);
    let mut events = node.subscribe_to(&[EventKind::BlockReceived]);
    let mut b = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    b.send(version(70016)).await;
    let _ = commands_for(&mut b, Duration::from_millis(300)).await;
    b.send(NetworkMessage::Inv(vec![Inventory::Block(hash)]))
        .await;
    let mut a = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    a.send(version(70016)).await;
    let _ = commands_for(&mut a, Duration::from_millis(300)).await;
    a.send(NetworkMessage::Headers(vec![honest.header])).await;
    let asked = next_matching(&mut a, |m| match m {
        NetworkMessage::GetData(items) => Some(items.clone()),
        _ => None,
    })
    .await;
    assert_eq!(asked, vec![Inventory::WitnessBlock(hash)]);
    a.send(NetworkMessage::Block(stripped)).await;
    assert!(
        a.closed_within(Duration::from_secs(5)).await,
        "the stripper was kept"
    );
    // The other announcer is asked, and its copy is the one kept.
    let asked = next_matching(&mut b, |m| match m {
        NetworkMessage::GetData(items) => Some(items.clone()),
        _ => None,
    })
    .await;
    assert_eq!(asked, vec![Inventory::WitnessBlock(hash)]);
    b.send(NetworkMessage::Block(honest.clone())).await;
    let got = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("block received")
        .expect("event");
    assert!(
        matches!(got.event, NodeEvent::BlockReceived { hash: ref h, tx_count: 2, .. } if *h == hash.to_string())
    );
    // It serves the honest copy, witnesses and all.
    b.send(NetworkMessage::GetData(vec![Inventory::WitnessBlock(hash)]))
        .await;
    let served = next_matching(&mut b, |m| match m {
        NetworkMessage::Block(blk) => Some(blk.clone()),
        _ => None,
    })
    .await;
    assert_eq!(served, honest);
    node.shutdown().await;
}

fn spend(prev: [u8; 32], outputs: &[u64], dup_input: bool) -> bitcoin::Transaction {
    use bitcoin::hashes::Hash;
    let input = bitcoin::TxIn {
        previous_output: bitcoin::OutPoint::new(bitcoin::Txid::from_byte_array(prev), 0),
        script_sig: bitcoin::ScriptBuf::new(),
        sequence: bitcoin::Sequence::MAX,
        witness: bitcoin::Witness::new(),
    };
    bitcoin::Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: if dup_input {
            vec![input.clone(), input]
        } else {
            vec![input]
        },
        output: outputs
            .iter()
            .map(|v| bitcoin::TxOut {
                value: bitcoin::Amount::from_sat(*v),
                script_pubkey: bitcoin::ScriptBuf::from_bytes(vec![0x51]),
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_transaction_is_refused_not_relayed_and_costs_its_sender() {
    use bitcoin::p2p::message_blockdata::Inventory;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.trickle = false;
    let node = Node::start(c).await.unwrap();
    let mut watcher = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(watcher.handshake().await);
    let mut sender = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(sender.handshake().await);
    // CVE-2018-17144's shape: one outpoint spent twice.
    let bad = spend([3; 32], &[1_000], true);
    sender
        .send(NetworkMessage::Inv(vec![Inventory::Transaction(
            bad.compute_txid(),
        )]))
        .await;
    let _ = next_matching(&mut sender, |m| {
        matches!(m, NetworkMessage::GetData(_)).then_some(())
    })
    .await;
    sender.send(NetworkMessage::Tx(bad.clone())).await;
    assert!(
        sender.closed_within(Duration::from_secs(5)).await,
        "sender kept"
    );
    assert_eq!(node.sync_status().tx_pool, 0);
    let seen = commands_for(&mut watcher, Duration::from_millis(500)).await;
    assert!(!seen.iter().any(|c| c == "inv"), "relayed: {seen:?}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_evicts_its_lowest_feerate_then_oldest_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.tx_pool_max_count = 3;
    let node = Node::start(c).await.unwrap();
    let txs: Vec<_> = (1..=4u8).map(|i| spend([i; 32], &[1_000], false)).collect();
    for tx in &txs {
        assert!(node.submit_tx(tx.clone()));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.sync_status().tx_pool != 3 {
        assert!(Instant::now() < deadline, "{:?}", node.sync_status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The newest is in, the oldest (all fees unknown, so equal) went.
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(p.handshake().await);
    use bitcoin::p2p::message_blockdata::Inventory;
    p.send(NetworkMessage::GetData(vec![
        Inventory::Transaction(txs[0].compute_txid()),
        Inventory::Transaction(txs[3].compute_txid()),
    ]))
    .await;
    let got = next_matching(&mut p, |m| match m {
        NetworkMessage::Tx(t) => Some(t.compute_txid()),
        _ => None,
    })
    .await;
    assert_eq!(got, txs[3].compute_txid());
    let missing = next_matching(&mut p, |m| match m {
        NetworkMessage::NotFound(items) => Some(items.clone()),
        _ => None,
    })
    .await;
    assert_eq!(missing, vec![Inventory::Transaction(txs[0].compute_txid())]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whitelisted_peer_is_never_charged_or_dropped_and_shows_its_permissions() {
    use meshd_actors::shared::whitelist::WhitelistEntry;
    let genesis = meshd_actors::network::NetworkId::Regtest.profile().genesis;
    // A header whose proof of work fails: 100 points, disconnect, for anyone else.
    let mut bad = meshd_actors::sync::chain::headers::mine_header(
        &genesis,
        bitcoin::TxMerkleNode::from_byte_array([5; 32]),
        genesis.time + 60,
        genesis.bits,
    );
    while bad.target().is_met_by(bad.block_hash()) {
        bad.nonce = bad.nonce.wrapping_add(1);
    }
    let run = |whitelist: Vec<WhitelistEntry>| async move {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.whitelist = whitelist;
        let node = Node::start(c).await.unwrap();
        let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
        assert!(p.handshake().await);
        let permissions = node.peers()[0].permissions.clone();
        p.send(NetworkMessage::Headers(vec![bad])).await;
        // A BIP37 filter without NODE_BLOOM (regtest does not announce it).
        p.send(NetworkMessage::FilterClear).await;
        let closed = p.closed_within(Duration::from_secs(2)).await;
        let score = node.peers().first().map_or(0, |x| x.misbehavior);
        node.shutdown().await;
        (permissions, closed, score)
    };
    use bitcoin::hashes::Hash;
    let (perms, closed, _) = run(Vec::new()).await;
    assert!(perms.is_empty());
    assert!(closed, "an ordinary peer is dropped");
    let (perms, closed, score) = run(vec![
        WhitelistEntry::parse("noban,bloomfilter@127.0.0.0/8").unwrap()
    ])
    .await;
    assert_eq!(perms, ["noban", "bloomfilter"]);
    assert!(!closed, "a whitelisted peer is kept");
    assert_eq!(score, 0, "and never charged");
}

/// Core's PushNodeVersion: `addr_from` is zeros (our address in `version` would link an
/// onion identity to a clearnet one), even with `--externalip` set; `addr_recv` is zeros
/// for a peer whose address is not a public one (loopback here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_version_carries_no_address_of_ours() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.external_addrs = vec!["203.0.113.5:18444".parse().unwrap()];
    let node = Node::start(c).await.unwrap();
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    p.send(version(70016)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        match p
            .recv(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Seen::Msg(Message::Network(NetworkMessage::Version(v))) => break v,
            Seen::Msg(_) => {}
            other => panic!("no version: {other:?}"),
        }
    };
    let zero = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    assert_eq!(v.sender.socket_addr().unwrap(), zero, "addr_from");
    assert_eq!(
        v.receiver.socket_addr().unwrap(),
        zero,
        "addr_recv of a loopback peer"
    );
    node.shutdown().await;
}
