//! Hostile peers over real loopback sockets, in the spirit of Bitcoin Core's functional tests
//! (p2p_getdata, p2p_ibd_stalling): each sends exactly the bytes named, and an honest peer in
//! the same test keeps being served.

mod common;

use std::time::{Duration, Instant};

use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use common::{config, AsyncPeer, Seen};
use meshd_actors::node::Node;
use meshd_actors::wire::Message;

/// Resident memory of this process, bytes (the node runs in it).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Round trip of one ping, answering the node's own pings meanwhile.
async fn ping_rtt(p: &mut AsyncPeer) -> Option<Duration> {
    let nonce: u64 = rand::random();
    let start = Instant::now();
    p.send(NetworkMessage::Ping(nonce)).await;
    loop {
        match p.recv(Duration::from_secs(5)).await {
            Seen::Msg(Message::Network(NetworkMessage::Pong(n))) if n == nonce => {
                return Some(start.elapsed())
            }
            Seen::Msg(Message::Network(NetworkMessage::Ping(n))) => {
                p.send(NetworkMessage::Pong(n)).await
            }
            Seen::Msg(_) => {}
            _ => return None,
        }
    }
}

/// Growth of RSS the getdata flood may cause (the old code grew by 130 MB).
const FLOOD_RSS_BOUND: u64 = 32 * 1024 * 1024;
/// An honest peer's ping round trip during the flood.
const HONEST_RTT_BOUND: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_asks_for_a_block_50000_times_and_never_reads_costs_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let addr = node.listen_addrs()[0];
    let block = node.generate(1).await.unwrap()[0];
    let mut honest = AsyncPeer::connect(addr).await.unwrap();
    assert!(honest.handshake().await);
    let mut hostile = AsyncPeer::connect(addr).await.unwrap();
    assert!(hostile.handshake().await);
    ping_rtt(&mut honest).await.expect("honest ping before");
    let before = rss();

    // 12 getdata messages of 50,000 requests for the same block (21 MB), and never a read.
    let flood = tokio::spawn(async move {
        for _ in 0..12 {
            hostile
                .send(NetworkMessage::GetData(vec![
                    Inventory::Block(block);
                    50_000
                ]))
                .await;
        }
        hostile
    });
    let mut worst = Duration::ZERO;
    let mut peak = before;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss());
        let rtt = ping_rtt(&mut honest)
            .await
            .expect("honest peer still answered");
        worst = worst.max(rtt);
    }
    let grew = peak.saturating_sub(before);
    eprintln!(
        "getdata flood: RSS {} KiB before, +{} KiB at peak; worst honest RTT {worst:?}",
        before >> 10,
        grew >> 10
    );
    assert!(
        grew < FLOOD_RSS_BOUND,
        "RSS grew by {} MiB during the getdata flood",
        grew >> 20
    );
    assert!(
        worst < HONEST_RTT_BOUND,
        "honest ping RTT reached {worst:?} during the flood"
    );
    // The honest peer is still served the block.
    honest
        .send(NetworkMessage::GetData(vec![Inventory::Block(block)]))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match honest.recv(Duration::from_secs(5)).await {
            Seen::Msg(Message::Network(NetworkMessage::Block(b))) => {
                assert_eq!(b.block_hash(), block);
                break;
            }
            Seen::Msg(_) => assert!(Instant::now() < deadline, "no block for the honest peer"),
            other => panic!("honest peer: {other:?}"),
        }
    }
    flood.abort();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bip37_filters_disconnect_unless_we_announce_node_bloom() {
    let load = || {
        NetworkMessage::FilterLoad(bitcoin::p2p::message_bloom::FilterLoad {
            filter: vec![0xff; 16],
            hash_funcs: 3,
            tweak: 7,
            flags: bitcoin::p2p::message_bloom::BloomFlags::None,
        })
    };
    // Regtest's default services (NETWORK | WITNESS) do not include NODE_BLOOM.
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(p.handshake().await);
    p.send(load()).await;
    assert!(p.closed_within(Duration::from_secs(5)).await);
    node.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.services = bitcoin::p2p::ServiceFlags::from(0xd);
    let node = Node::start(c).await.unwrap();
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(p.handshake().await);
    p.send(load()).await;
    assert!(
        ping_rtt(&mut p).await.is_some(),
        "a NODE_BLOOM node keeps the peer"
    );
    node.shutdown().await;
}

/// Waits for a `getdata` from the node and returns its items (answering pings meanwhile).
async fn next_getdata(p: &mut AsyncPeer, within: Duration) -> Option<Vec<Inventory>> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match p.recv(left).await {
            Seen::Msg(Message::Network(NetworkMessage::GetData(items))) => return Some(items),
            Seen::Msg(Message::Network(NetworkMessage::Ping(n))) => {
                p.send(NetworkMessage::Pong(n)).await
            }
            Seen::Msg(_) => {}
            _ => return None,
        }
    }
}

fn txid(n: u32) -> bitcoin::Txid {
    use bitcoin::hashes::Hash;
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&n.to_le_bytes());
    b[31] = 0x5a;
    bitcoin::Txid::from_byte_array(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_request_is_released_when_the_peer_leaves_and_asked_of_another() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let addr = node.listen_addrs()[0];
    let mut a = AsyncPeer::connect(addr).await.unwrap();
    assert!(a.handshake().await);
    let mut b = AsyncPeer::connect(addr).await.unwrap();
    assert!(b.handshake().await);
    let t = txid(1);
    a.send(NetworkMessage::Inv(vec![Inventory::Transaction(t)]))
        .await;
    let asked = next_getdata(&mut a, Duration::from_secs(5)).await.unwrap();
    assert_eq!(asked, vec![Inventory::WitnessTransaction(t)]);
    // a never delivers and leaves; b announces the same transaction and is asked for it.
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.send(NetworkMessage::Inv(vec![Inventory::Transaction(t)]))
        .await;
    let asked = next_getdata(&mut b, Duration::from_secs(5))
        .await
        .expect("the transaction is asked of the second announcer");
    assert_eq!(asked, vec![Inventory::WitnessTransaction(t)]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_requests_to_one_peer_are_capped_at_100_in_flight_of_5000_tracked() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.tx_pool_max_count = 100_000;
    let node = Node::start(c).await.unwrap();
    let mut a = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(a.handshake().await);
    let inv: Vec<Inventory> = (0..6_000)
        .map(|n| Inventory::Transaction(txid(n)))
        .collect();
    a.send(NetworkMessage::Inv(inv)).await;
    // Core's TxRequestTracker: 100 requests in flight per peer (an inbound one is asked
    // after 2 s); each `notfound` frees a slot for the next; 5,000 announcements tracked.
    // Unanswered, no more than 100 are asked.
    let mut asked = Vec::new();
    while let Some(items) = next_getdata(&mut a, Duration::from_secs(4)).await {
        asked.extend(items.iter().copied());
    }
    assert_eq!(asked.len(), 100, "requests in flight to one peer");
    a.send(NetworkMessage::NotFound(asked.clone())).await;
    while asked.len() < 6_000 {
        let Some(items) = next_getdata(&mut a, Duration::from_secs(4)).await else {
            break;
        };
        assert!(items.len() <= 100, "{} requests at once", items.len());
        asked.extend(items.iter().copied());
        a.send(NetworkMessage::NotFound(items)).await;
    }
    let distinct: std::collections::HashSet<_> = asked.iter().collect();
    assert_eq!(
        distinct.len(),
        asked.len(),
        "an item asked twice of one peer"
    );
    assert_eq!(
        asked.len(),
        5_000,
        "the announcements past 5,000 were dropped"
    );
    node.shutdown().await;
}

/// A peer that claims `height` and answers every `getheaders` with nothing.
async fn empty_headers_liar(mut p: AsyncPeer, stop: tokio::sync::oneshot::Receiver<()>) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            seen = p.recv(Duration::from_millis(100)) => match seen {
                Seen::Msg(Message::Network(NetworkMessage::GetHeaders(_))) => {
                    p.send(NetworkMessage::Headers(vec![])).await
                }
                Seen::Msg(Message::Network(NetworkMessage::Ping(n))) => {
                    p.send(NetworkMessage::Pong(n)).await
                }
                Seen::Closed => return,
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_peer_claiming_height_and_sending_nothing_does_not_stop_sync() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut ca = config(da.path());
    ca.slots.outbound = 0;
    let honest = Node::start(ca).await.unwrap();
    let tip = *honest.generate(20).await.unwrap().last().unwrap();
    let mut cb = config(db.path());
    cb.slots.outbound = 1;
    let node = Node::start(cb).await.unwrap();
    // The liar comes first: it claims 1,000 blocks and answers getheaders with nothing.
    let mut liar = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(liar.handshake_at(1_000).await);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let liar_task = tokio::spawn(empty_headers_liar(liar, stop_rx));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(node.connect(honest.listen_addrs()[0], false).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.sync_status().best_header_hash != tip.to_string() {
        assert!(
            Instant::now() < deadline,
            "stuck behind the liar: {:?}",
            node.sync_status()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = stop_tx.send(());
    let _ = liar_task.await;
    node.shutdown().await;
    honest.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_20001_cheap_forks_the_node_still_reorganises_to_a_heavier_chain() {
    let (dm, da) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cm = config(dm.path());
    cm.slots.outbound = 1;
    let node = Node::start(cm).await.unwrap();
    node.generate(10).await.unwrap();
    let mut ca = config(da.path());
    ca.slots.outbound = 0;
    let honest = Node::start(ca).await.unwrap();
    let honest_tip = *honest.generate(15).await.unwrap().last().unwrap();

    // 20,001 one-header forks off genesis, one headers message each.
    let genesis = node.profile().genesis;
    let mut spammer = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(spammer.handshake().await);
    let mut batch = Vec::new();
    for i in 0..20_001u32 {
        let h = meshd_actors::sync::chain::headers::mine_header(
            &genesis,
            bitcoin::TxMerkleNode::from_byte_array([0x77; 32]),
            genesis.time + 1 + i,
            genesis.bits,
        );
        batch.extend(
            Message::Network(NetworkMessage::Headers(vec![h])).encode(node.profile().magic),
        );
    }
    spammer.send_raw(&batch).await;
    // Every fork was handled once a ping round trip completes behind them (Sync's pace holds
    // the spammer's reads back: its messages carry its read credit to Sync).
    spammer.send(NetworkMessage::Ping(99)).await;
    loop {
        match spammer.recv(Duration::from_secs(60)).await {
            Seen::Msg(Message::Network(NetworkMessage::Pong(99))) => break,
            Seen::Msg(_) => {}
            other => panic!("the spammer was dropped: {other:?}"),
        }
    }
    assert_eq!(node.sync_status().header_height, 10);

    assert!(node.connect(honest.listen_addrs()[0], false).await);
    let deadline = Instant::now() + Duration::from_secs(15);
    while node.sync_status().best_header_hash != honest_tip.to_string() {
        assert!(
            Instant::now() < deadline,
            "the heavier chain was refused: {:?}",
            node.sync_status()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(node.sync_status().header_height, 15);
    node.shutdown().await;
    honest.shutdown().await;
}

/// Serves `chain` (after genesis) to `getheaders` the way a node does: the 2,000 headers after
/// the first locator hash it knows.
async fn serve_headers(
    mut p: AsyncPeer,
    genesis: bitcoin::block::Header,
    chain: Vec<bitcoin::block::Header>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> usize {
    let mut served = 0;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return served,
            seen = p.recv(Duration::from_millis(100)) => match seen {
                Seen::Msg(Message::Network(NetworkMessage::GetHeaders(m))) => {
                    let start = m
                        .locator_hashes
                        .iter()
                        .find_map(|h| {
                            if *h == genesis.block_hash() {
                                Some(0)
                            } else {
                                chain.iter().position(|c| c.block_hash() == *h).map(|i| i + 1)
                            }
                        })
                        .unwrap_or(0);
                    let batch: Vec<_> = chain.iter().skip(start).take(2000).copied().collect();
                    served += batch.len();
                    p.send(NetworkMessage::Headers(batch)).await
                }
                Seen::Msg(Message::Network(NetworkMessage::Ping(n))) => {
                    p.send(NetworkMessage::Pong(n)).await
                }
                Seen::Closed => return served,
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_below_the_minimum_work_is_never_stored_and_an_honest_one_is() {
    // Regtest headers are worth 2 each: the minimum is a chain of 2,500 blocks.
    const MIN_BLOCKS: u128 = 2_500;
    let (dn, da) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cn = config(dn.path());
    cn.slots.outbound = 1;
    cn.minimum_chain_work = Some(2 * (MIN_BLOCKS + 1));
    let node = Node::start(cn).await.unwrap();
    let genesis = node.profile().genesis;

    // A peer with 2,200 cheap headers: a full chain, but below the minimum work.
    let mut low = Vec::new();
    let mut prev = genesis;
    for i in 0..2_200u32 {
        let h = meshd_actors::sync::chain::headers::mine_header(
            &prev,
            bitcoin::TxMerkleNode::from_byte_array([0x33; 32]),
            genesis.time + 1 + i,
            genesis.bits,
        );
        low.push(h);
        prev = h;
    }
    let mut liar = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(liar.handshake_at(2_200).await);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(serve_headers(liar, genesis, low, stop_rx));
    // Its sync runs, then ends with nothing stored: the node stays in initial sync (idle, its
    // tip below the minimum work), whatever the liar claimed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.sync_peers().await.is_empty() {
        assert!(Instant::now() < deadline, "Sync never learned the liar");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    while node.sync_status().state != meshd_actors::msg::SyncState::Idle {
        assert!(Instant::now() < deadline, "{:?}", node.sync_status());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = stop_tx.send(());
    let served = server.await.unwrap();
    assert!(
        served >= 2_200,
        "the low-work chain was offered ({served} headers)"
    );
    assert_eq!(
        node.sync_status().header_height,
        0,
        "low-work headers were stored"
    );

    // An honest node with 2,600 blocks: presynced, redownloaded, stored.
    let mut ca = config(da.path());
    ca.slots.outbound = 0;
    let honest = Node::start(ca).await.unwrap();
    let mined = honest.generate(2_600).await.unwrap();
    let tip = *mined.last().unwrap();
    let mut blocks = node.subscribe_to(&[meshd_actors::events::EventKind::BlockReceived]);
    assert!(node.connect(honest.listen_addrs()[0], false).await);
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.sync_status().best_header_hash != tip.to_string() {
        assert!(Instant::now() < deadline, "{:?}", node.sync_status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Out of initial sync (the minimum work met, a recent tip) and the tip's blocks fetched.
    common::blocks_received(
        &mut blocks,
        &mined[mined.len() - 8..],
        Duration::from_secs(20),
    )
    .await;
    while node.sync_status().state != meshd_actors::msg::SyncState::Synced {
        assert!(Instant::now() < deadline, "{:?}", node.sync_status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.shutdown().await;
    honest.shutdown().await;
}

/// Growth of RSS allowed while a peer sends 4 MB messages nothing reads (each would cost at
/// least its 4 MB if it were buffered).
const UNREAD_RSS_BOUND: u64 = 3 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_nothing_reads_are_skipped_without_buffering() {
    use meshd_actors::wire::{encode_frame, Command};
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let addr = node.listen_addrs()[0];
    let mut honest = AsyncPeer::connect(addr).await.unwrap();
    assert!(honest.handshake().await);
    let mut hostile = AsyncPeer::connect(addr).await.unwrap();
    assert!(hostile.handshake().await);
    let magic = meshd_actors::network::NetworkId::Regtest.profile().magic;
    let big = vec![0x5a; 3_900_000];
    // A command meshd does not read, a block nobody asked for, then a ping 3.9 MB long.
    let unknown = encode_frame(magic, Command::new("xunknown").unwrap(), &big);
    let block = encode_frame(magic, Command::new("block").unwrap(), &big);
    let ping = encode_frame(magic, Command::new("ping").unwrap(), &big);
    ping_rtt(&mut honest).await.expect("honest ping before");
    let before = rss();

    let flood = tokio::spawn(async move {
        for _ in 0..5 {
            hostile.send_raw(&unknown).await;
            hostile.send_raw(&block).await;
        }
        // Neither costs points: the peer is still there.
        let alive = ping_rtt(&mut hostile).await.is_some();
        hostile.send_raw(&ping).await;
        (hostile, alive)
    });
    // A buffer would live only as long as the message is handled: sample densely.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss());
                std::thread::sleep(Duration::from_millis(1));
            }
            peak
        })
    };
    let mut worst = Duration::ZERO;
    while !flood.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let rtt = ping_rtt(&mut honest).await.expect("honest peer answered");
        worst = worst.max(rtt);
    }
    let (mut hostile, alive) = flood.await.unwrap();
    assert!(
        alive,
        "unknown commands and unrequested blocks are not punished"
    );
    // The overlong ping costs 50 points; the peer stays under the ban threshold.
    assert!(
        ping_rtt(&mut hostile).await.is_some(),
        "stream in sync after it"
    );
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap().max(before);
    let grew = peak.saturating_sub(before);
    eprintln!(
        "unread flood (39 MB): RSS {} KiB before, +{} KiB at peak; worst honest RTT {worst:?}",
        before >> 10,
        grew >> 10
    );
    assert!(grew < UNREAD_RSS_BOUND, "RSS grew by {} KiB", grew >> 10);
    assert!(worst < HONEST_RTT_BOUND, "honest RTT {worst:?}");
    assert_eq!(node.generate(1).await.unwrap().len(), 1, "node still works");
    node.shutdown().await;
}
