//! Compact blocks (BIP152) over real loopback sockets, against a raw peer speaking the
//! messages as Core does: `sendcmpct` version 2 after the handshake, a lone tip block asked
//! as `getdata(MSG_CMPCT_BLOCK)` and rebuilt from the relay pool with one `getblocktxn` for
//! the transaction it lacks, a compact request answered by a whole block (a deep one), and
//! `cmpctblock` pushed to a high-bandwidth peer for a block mined here.

mod common;

use std::time::Duration;

use bitcoin::bip152::{BlockTransactions, HeaderAndShortIds};
use bitcoin::block::Block;
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::p2p::message_compact_blocks::{BlockTxn, CmpctBlock, SendCmpct};
use bitcoin::{BlockHash, Transaction};
use common::{config, handshaked, unix_now, AsyncPeer};
use meshd_actors::config::NodeConfig;
use meshd_actors::events::{BlockVia, EventKind, NodeEvent};
use meshd_actors::node::Node;
use meshd_actors::sync::chain::headers::mine_header;
use meshd_actors::sync::mine::regtest_block;

fn cfg(dir: &std::path::Path) -> NodeConfig {
    let mut c = config(dir);
    c.trickle = false;
    c.slots.outbound = 0;
    // The raw test peer speaks v1.
    c.v2transport = false;
    c
}

fn tx(n: u8) -> Transaction {
    common::made_up_spend(n)
}

/// A regtest block on `parent` at `height` with `txs` after the coinbase, mined.
fn block_with(parent: &bitcoin::block::Header, height: u32, txs: &[Transaction]) -> Block {
    // A second apart per height, each above its parent's median time past.
    let mut block = regtest_block(parent, height, unix_now() - 600 + height, 11);
    block.txdata.extend(txs.iter().cloned());
    let merkle = block.compute_merkle_root().expect("not empty");
    block.header = mine_header(parent, merkle, block.header.time, parent.bits);
    block
}

/// Reads until meshd's low-bandwidth `sendcmpct` version 2, then answers with ours
/// (`announce`: ask meshd for high-bandwidth pushes).
async fn negotiate(peer: &mut AsyncPeer, announce: bool) {
    let offered = peer
        .wait_for(Duration::from_secs(5), |m| match m {
            NetworkMessage::SendCmpct(s) => Some((s.send_compact, s.version)),
            _ => None,
        })
        .await;
    assert_eq!(
        offered,
        Some((false, 2)),
        "meshd offers version 2, low-bandwidth"
    );
    peer.send(NetworkMessage::SendCmpct(SendCmpct {
        send_compact: announce,
        version: 2,
    }))
    .await;
}

/// The next `getdata` item for block `hash`.
async fn asked_for(peer: &mut AsyncPeer, hash: BlockHash) -> Option<Inventory> {
    peer.wait_for(Duration::from_secs(5), |m| match m {
        NetworkMessage::GetData(items) => items
            .iter()
            .find(|i| i.network_hash() == Some(hash.to_byte_array()))
            .copied(),
        _ => None,
    })
    .await
}

/// The next `BlockReceived` for `hash`: how it came and how many transactions were asked.
async fn received(
    events: &mut meshd_actors::events::EventStream,
    hash: BlockHash,
) -> (BlockVia, usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Ok(e)) => {
                if let NodeEvent::BlockReceived {
                    hash: h,
                    via,
                    txs_requested,
                    ..
                } = &e.event
                {
                    if *h == hash.to_string() {
                        return (*via, *txs_requested);
                    }
                }
            }
            _ => panic!("block {hash} never received"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_tip_block_is_rebuilt_from_the_pool_with_one_getblocktxn() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(cfg(dir.path())).await.unwrap();
    let mut peer = handshaked(node.listen_addrs()[0]).await;
    negotiate(&mut peer, false).await;
    common::wait_sync_peers(&node, 1).await;
    // One of the block's two transactions is in meshd's pool.
    let (pooled, missing) = (tx(1), tx(2));
    let mut txs = node.subscribe_to(&[EventKind::TxReceived]);
    peer.send(NetworkMessage::Inv(vec![Inventory::Transaction(
        pooled.compute_txid(),
    )]))
    .await;
    let asked = peer
        .wait_for(Duration::from_secs(10), |m| {
            matches!(m, NetworkMessage::GetData(_)).then_some(())
        })
        .await;
    assert!(asked.is_some(), "the transaction was asked for");
    peer.send(NetworkMessage::Tx(pooled.clone())).await;
    tokio::time::timeout(Duration::from_secs(5), txs.recv())
        .await
        .expect("pooled")
        .expect("event");

    let genesis = node.profile().genesis;
    let block = block_with(&genesis, 1, &[pooled, missing.clone()]);
    let hash = block.block_hash();
    let mut blocks = node.subscribe_to(&[EventKind::BlockReceived]);
    peer.send(NetworkMessage::Headers(vec![block.header])).await;
    assert_eq!(
        asked_for(&mut peer, hash).await,
        Some(Inventory::CompactBlock(hash)),
        "the one block we wait for is asked compact (Core's direct fetch)"
    );
    let compact = HeaderAndShortIds::from_block(&block, 0x5eed, 2, &[]).unwrap();
    peer.send(NetworkMessage::CmpctBlock(CmpctBlock {
        compact_block: compact,
    }))
    .await;
    let request = peer
        .wait_for(Duration::from_secs(5), |m| match m {
            NetworkMessage::GetBlockTxn(g) => Some(g.txs_request.clone()),
            _ => None,
        })
        .await
        .expect("the missing transaction is asked with getblocktxn");
    assert_eq!(request.block_hash, hash);
    assert_eq!(request.indexes, vec![2], "only the one not pooled");
    peer.send(NetworkMessage::BlockTxn(BlockTxn {
        transactions: BlockTransactions {
            block_hash: hash,
            transactions: vec![missing],
        },
    }))
    .await;
    assert_eq!(
        received(&mut blocks, hash).await,
        (BlockVia::CompactLowBandwidth, 1)
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_request_answered_by_a_whole_block_leaves_no_block_unread() {
    // A peer may answer getdata(MSG_CMPCT_BLOCK) with a whole block (Core does for a deep
    // one). That request must end there: counted on as a cmpctblock still to come, a later
    // unsolicited cmpctblock made the Connection skip a block it had asked for unread.
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(cfg(dir.path())).await.unwrap();
    let mut peer = handshaked(node.listen_addrs()[0]).await;
    negotiate(&mut peer, false).await;
    common::wait_sync_peers(&node, 1).await;
    let genesis = node.profile().genesis;
    let b1 = block_with(&genesis, 1, &[]);
    let b2 = block_with(&b1.header, 2, &[]);
    let b3 = block_with(&b2.header, 3, &[]);
    let mut blocks = node.subscribe_to(&[EventKind::BlockReceived]);
    peer.send(NetworkMessage::Headers(vec![b1.header])).await;
    assert_eq!(
        asked_for(&mut peer, b1.block_hash()).await,
        Some(Inventory::CompactBlock(b1.block_hash()))
    );
    peer.send(NetworkMessage::Block(b1.clone())).await;
    assert_eq!(
        received(&mut blocks, b1.block_hash()).await.0,
        BlockVia::Block
    );
    // Two blocks at once: asked whole.
    peer.send(NetworkMessage::Headers(vec![b2.header, b3.header]))
        .await;
    assert!(asked_for(&mut peer, b3.block_hash()).await.is_some());
    // An unsolicited cmpctblock of another block, then the two blocks asked for.
    let other = block_with(&genesis, 1, &[tx(9)]);
    peer.send(NetworkMessage::CmpctBlock(CmpctBlock {
        compact_block: HeaderAndShortIds::from_block(&other, 1, 2, &[]).unwrap(),
    }))
    .await;
    peer.send(NetworkMessage::Block(b2.clone())).await;
    peer.send(NetworkMessage::Block(b3.clone())).await;
    received(&mut blocks, b3.block_hash()).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_mined_here_is_pushed_as_cmpctblock_to_a_high_bandwidth_peer() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(cfg(dir.path())).await.unwrap();
    let mut peer = handshaked(node.listen_addrs()[0]).await;
    negotiate(&mut peer, true).await;
    common::wait_sync_peers(&node, 1).await;
    // Give the sendcmpct time to reach Sync before the block is mined.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mined = node.generate(1).await.unwrap()[0];
    let first = peer
        .wait_for(Duration::from_secs(5), |m| match m {
            NetworkMessage::CmpctBlock(c) => Some(Ok(c.compact_block.header.block_hash())),
            NetworkMessage::Inv(i)
                if i.iter()
                    .any(|x| x.network_hash() == Some(mined.to_byte_array())) =>
            {
                Some(Err("inv"))
            }
            NetworkMessage::Headers(h) if h.iter().any(|x| x.block_hash() == mined) => {
                Some(Err("headers"))
            }
            _ => None,
        })
        .await;
    assert_eq!(
        first,
        Some(Ok(mined)),
        "pushed as cmpctblock before any other announcement"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getblocktxn_is_answered_in_the_getdata_turn_and_deep_ones_with_the_block() {
    // Core: blocktxn for the last 10 blocks, the whole block below (queued as a getdata).
    // Answers keep their order with the peer's other messages and none wedges the next.
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.keep_blocks = 16;
    let node = Node::start(c).await.unwrap();
    let mut peer = handshaked(node.listen_addrs()[0]).await;
    negotiate(&mut peer, false).await;
    common::wait_sync_peers(&node, 1).await;
    let mined = node.generate(12).await.unwrap();
    let (recent, deep) = (mined[11], mined[0]);
    let ask = |block_hash| {
        NetworkMessage::GetBlockTxn(bitcoin::p2p::message_compact_blocks::GetBlockTxn {
            txs_request: bitcoin::bip152::BlockTransactionsRequest {
                block_hash,
                indexes: vec![0],
            },
        })
    };
    peer.send(ask(recent)).await;
    peer.send(ask(deep)).await;
    peer.send(ask(recent)).await;
    peer.send(NetworkMessage::Ping(77)).await;
    let mut answers = Vec::new();
    while answers.len() < 4 {
        let got = peer
            .wait_for(Duration::from_secs(5), |m| match m {
                NetworkMessage::BlockTxn(b) => {
                    Some(format!("blocktxn {}", b.transactions.block_hash))
                }
                NetworkMessage::Block(b) => Some(format!("block {}", b.block_hash())),
                NetworkMessage::Pong(77) => Some("pong".to_string()),
                _ => None,
            })
            .await;
        answers.push(got.expect("every request answered"));
    }
    assert_eq!(
        answers,
        vec![
            format!("blocktxn {recent}"),
            format!("block {deep}"),
            format!("blocktxn {recent}"),
            "pong".to_string()
        ]
    );
    node.shutdown().await;
}

/// Core >= 25: a high-bandwidth peer's `cmpctblock` of a block already asked of another
/// peer gets its own `getblocktxn` (MAX_CMPCTBLOCKS_INFLIGHT_PER_BLOCK), and its answer
/// gives the block while the first peer's is still to come. Before, it was only tried
/// without a round trip, and the block waited for the slow first peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_bandwidth_push_of_a_block_asked_elsewhere_is_fetched_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(cfg(dir.path())).await.unwrap();
    let mut fast = handshaked(node.listen_addrs()[0]).await;
    negotiate(&mut fast, false).await;
    let mut slow = handshaked(node.listen_addrs()[0]).await;
    negotiate(&mut slow, false).await;
    common::wait_sync_peers(&node, 2).await;
    let genesis = node.profile().genesis;
    let mut blocks = node.subscribe_to(&[EventKind::BlockReceived]);

    // `fast` gives the node block 1 while it is the only block waited for: the node asks
    // it for high-bandwidth pushes.
    let b1 = block_with(&genesis, 1, &[]);
    fast.send(NetworkMessage::Headers(vec![b1.header])).await;
    assert_eq!(
        asked_for(&mut fast, b1.block_hash()).await,
        Some(Inventory::CompactBlock(b1.block_hash()))
    );
    fast.send(NetworkMessage::CmpctBlock(CmpctBlock {
        compact_block: HeaderAndShortIds::from_block(&b1, 1, 2, &[]).unwrap(),
    }))
    .await;
    received(&mut blocks, b1.block_hash()).await;
    let high = fast
        .wait_for(Duration::from_secs(5), |m| match m {
            NetworkMessage::SendCmpct(s) if s.send_compact => Some(()),
            _ => None,
        })
        .await;
    assert!(high.is_some(), "fast asked for high-bandwidth pushes");

    // Block 2, with a transaction the node lacks: `slow` announces it first and is asked.
    let b2 = block_with(&b1.header, 2, &[tx(5)]);
    let h2 = b2.block_hash();
    slow.send(NetworkMessage::Headers(vec![b2.header])).await;
    assert_eq!(
        asked_for(&mut slow, h2).await,
        Some(Inventory::CompactBlock(h2))
    );
    slow.send(NetworkMessage::CmpctBlock(CmpctBlock {
        compact_block: HeaderAndShortIds::from_block(&b2, 2, 2, &[]).unwrap(),
    }))
    .await;
    let first = slow
        .wait_for(Duration::from_secs(5), |m| match m {
            NetworkMessage::GetBlockTxn(g) => Some(g.txs_request.indexes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(first, Some(vec![1]));
    // `fast` pushes it too (high-bandwidth): asked in parallel, and its answer is the block.
    fast.send(NetworkMessage::CmpctBlock(CmpctBlock {
        compact_block: HeaderAndShortIds::from_block(&b2, 3, 2, &[]).unwrap(),
    }))
    .await;
    let parallel = fast
        .wait_for(Duration::from_secs(5), |m| match m {
            NetworkMessage::GetBlockTxn(g) => Some(g.txs_request.indexes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(parallel, Some(vec![1]), "the push gets its own getblocktxn");
    fast.send(NetworkMessage::BlockTxn(BlockTxn {
        transactions: BlockTransactions {
            block_hash: h2,
            transactions: vec![b2.txdata[1].clone()],
        },
    }))
    .await;
    assert_eq!(
        received(&mut blocks, h2).await,
        (BlockVia::CompactHighBandwidth, 1)
    );
    // The slow answer, late, is not a second block, and costs nothing.
    slow.send(NetworkMessage::BlockTxn(BlockTxn {
        transactions: BlockTransactions {
            block_hash: h2,
            transactions: vec![b2.txdata[1].clone()],
        },
    }))
    .await;
    let again = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match blocks.recv().await {
                Ok(e) if matches!(&e.event, NodeEvent::BlockReceived { hash, .. } if *hash == h2.to_string()) => {
                    return true
                }
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    })
    .await;
    assert!(
        !matches!(again, Ok(true)),
        "the late answer gave the block twice"
    );
    let peers = node.peers();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(peers.iter().all(|p| p.misbehavior == 0), "{peers:?}");
    node.shutdown().await;
}

/// A compact block whose short ids collide (BIP152: possible, and never the sender's
/// fault) is not rebuilt: the whole block is asked of its sender, free, and arrives as a
/// fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_id_collision_falls_back_to_the_whole_block() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(cfg(dir.path())).await.unwrap();
    let mut peer = handshaked(node.listen_addrs()[0]).await;
    negotiate(&mut peer, false).await;
    common::wait_sync_peers(&node, 1).await;
    let genesis = node.profile().genesis;
    let block = block_with(&genesis, 1, &[tx(3), tx(4)]);
    let hash = block.block_hash();
    let mut blocks = node.subscribe_to(&[EventKind::BlockReceived]);
    peer.send(NetworkMessage::Headers(vec![block.header])).await;
    assert_eq!(
        asked_for(&mut peer, hash).await,
        Some(Inventory::CompactBlock(hash))
    );
    let mut compact = HeaderAndShortIds::from_block(&block, 9, 2, &[]).unwrap();
    compact.short_ids[1] = compact.short_ids[0];
    peer.send(NetworkMessage::CmpctBlock(CmpctBlock {
        compact_block: compact,
    }))
    .await;
    assert_eq!(
        asked_for(&mut peer, hash).await,
        Some(Inventory::WitnessBlock(hash)),
        "the whole block, of the same peer"
    );
    peer.send(NetworkMessage::Block(block.clone())).await;
    assert_eq!(received(&mut blocks, hash).await.0, BlockVia::Fallback);
    assert!(node.peers().iter().all(|p| p.misbehavior == 0));
    node.shutdown().await;
}

/// Waits until `node` shows a peer with `pick`.
async fn until_peer(
    node: &Node,
    what: &str,
    pick: impl Fn(&meshd_actors::shared::peers::PeerInfo) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !node.peers().iter().any(&pick) {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// meshd against meshd, both ways: a high-bandwidth push from the node that mined the block,
/// rebuilt by the other from its pool with one `getblocktxn` for the transaction it lacks,
/// and, the other way, a low-bandwidth `getdata(MSG_CMPCT_BLOCK)` answered the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_meshd_nodes_exchange_compact_blocks_both_ways_with_getblocktxn() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(cfg(da.path())).await.unwrap();
    let mut cb = cfg(db.path());
    cb.connect = vec![a.listen_addrs()[0]];
    let b = Node::start(cb).await.unwrap();
    common::wait_sync_peers(&a, 1).await;
    common::wait_sync_peers(&b, 1).await;
    let mut at_a = a.subscribe_to(&[EventKind::BlockReceived]);
    let mut at_b = b.subscribe_to(&[EventKind::BlockReceived]);

    // A's first block makes A one of B's high-bandwidth peers (it gave B a new block).
    let first = a.generate(1).await.unwrap()[0];
    received(&mut at_b, first).await;
    until_peer(&a, "B asks A for high-bandwidth pushes", |p| {
        p.bip152_hb_from
    })
    .await;

    // A mines a block with one transaction B has pooled and one it has not seen.
    let (pooled, unseen) = (tx(21), tx(22));
    let mut pool_b = b.subscribe_to(&[EventKind::TxReceived]);
    assert!(b.submit_tx(pooled.clone()));
    tokio::time::timeout(Duration::from_secs(5), pool_b.recv())
        .await
        .expect("pooled at B")
        .expect("event");
    let pushed = a.generate_with(1, vec![pooled, unseen]).await.unwrap()[0];
    assert_eq!(
        received(&mut at_b, pushed).await,
        (BlockVia::CompactHighBandwidth, 1),
        "pushed compact, the unseen one asked with getblocktxn"
    );

    // The other way: B mines on top with a transaction A has not seen; A, which did not
    // ask B for pushes, is told of it and asks for the compact block.
    let back = b.generate_with(1, vec![tx(23)]).await.unwrap()[0];
    let (via, asked) = received(&mut at_a, back).await;
    assert_eq!(via, BlockVia::CompactLowBandwidth, "asked compact");
    assert_eq!(asked, 1, "the unseen one asked with getblocktxn");
    b.shutdown().await;
    a.shutdown().await;
}
