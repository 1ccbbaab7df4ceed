//! Sync over real loopback sockets, in process: a 5-node mesh reaches the same tip, a
//! reorganisation, transaction relay across the mesh, invalid headers punished, the chain
//! reloaded after a restart, a block announced only once a validating peer vouched for it.

mod common;

use std::time::{Duration, Instant};

use bitcoin::block::Header;
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use common::{config, AsyncPeer};
use meshd_actors::config::NodeConfig;
use meshd_actors::events::{EventKind, NodeEvent};
use meshd_actors::node::Node;

fn cfg(dir: &std::path::Path) -> NodeConfig {
    let mut c = config(dir);
    c.trickle = false;
    c
}

async fn until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_generated_at_one_node_reach_the_same_tip_on_a_five_node_mesh() {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Node> = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let mut c = cfg(d.path());
        if i > 0 {
            c.connect = vec![nodes[i - 1].listen_addrs()[0]];
        }
        nodes.push(Node::start(c).await.unwrap());
    }
    until("a line of handshakes", 10, || {
        nodes.iter().all(|n| !n.peers().is_empty())
    })
    .await;
    // Every node's Sync knows its peers. Nothing waits for "synced": a fresh regtest chain
    // is in initial sync (its tip is from 2011), and the blocks are fetched whatever the
    // state; a peer still handshaking when the tip moves is told of it on arrival.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut all = true;
        for n in &nodes {
            let live = n
                .peers()
                .iter()
                .filter(|p| p.state == meshd_actors::shared::peers::PeerState::Connected)
                .count();
            all &= live > 0 && n.sync_peers().await.len() == live;
        }
        if all {
            break;
        }
        assert!(Instant::now() < deadline, "Sync never learned its peers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut blocks = nodes[4].subscribe_to(&[EventKind::BlockReceived]);
    let hashes = nodes[0].generate(12).await.unwrap();
    let tip = *hashes.last().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(|n| {
        n.sync_status().header_height == 12 && n.sync_status().best_header_hash == tip.to_string()
    }) {
        assert!(
            Instant::now() < deadline,
            "not every node at the new tip: heights {:?}, peers {:?}",
            nodes
                .iter()
                .map(|n| n.sync_status().header_height)
                .collect::<Vec<_>>(),
            nodes
                .iter()
                .map(|n| n
                    .peers()
                    .iter()
                    .map(|p| (p.direction.as_str(), p.state.as_str()))
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Out of initial sync everywhere: the tip is recent, decided from each node's own chain.
    // (A node whose first getheaders went unanswered under load, its peer's Sync not yet
    // knowing it, shows synced once that session's 20 s stall timeout ends it.)
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes
        .iter()
        .all(|n| n.sync_status().state == meshd_actors::msg::SyncState::Synced)
    {
        assert!(
            Instant::now() < deadline,
            "not every node synced: {:?}",
            nodes.iter().map(|n| n.sync_status()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The far end fetched the tip block and checked it against its header.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, blocks.recv()).await {
            Ok(Ok(e)) => {
                if let NodeEvent::BlockReceived {
                    hash,
                    height,
                    tx_count,
                    ..
                } = &e.event
                {
                    if *hash == tip.to_string() {
                        assert_eq!((*height, *tx_count), (12, 1));
                        break;
                    }
                }
            }
            _ => panic!("the tip block never reached the far end"),
        }
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_with_less_work_reorganises_to_the_longer_chain() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut ca = cfg(da.path());
    ca.slots.outbound = 1;
    let a = Node::start(ca).await.unwrap();
    let mut cb = cfg(db.path());
    cb.slots.outbound = 0;
    let b = Node::start(cb).await.unwrap();
    a.generate(3).await.unwrap();
    let longer = b.generate(5).await.unwrap();
    assert_eq!(a.sync_status().header_height, 3);
    let mut blocks = a.subscribe_to(&[EventKind::BlockReceived]);
    // Connect them: a learns b's chain, which has more work, and switches to it.
    assert!(a.connect(b.listen_addrs()[0], false).await);
    until("a follows b's chain", 15, || {
        a.sync_status().best_header_hash == longer.last().unwrap().to_string()
    })
    .await;
    assert_eq!(a.sync_status().header_height, 5);
    // Core's direct fetch on a reorg: the new branch from the fork point, the blocks at or
    // below a's old height (1 to 3) too, not only those above it.
    common::blocks_received(&mut blocks, &longer, Duration::from_secs(15)).await;
    until("a synced on b's chain", 15, || {
        a.sync_status().state == meshd_actors::msg::SyncState::Synced
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_crosses_the_mesh() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Node> = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let mut c = cfg(d.path());
        // A line: manual peers have slots of their own, and no automatic peer adds an edge.
        c.slots.outbound = 0;
        if i > 0 {
            c.connect = vec![nodes[i - 1].listen_addrs()[0]];
        }
        nodes.push(Node::start(c).await.unwrap());
    }
    until("handshakes", 10, || {
        nodes[1].peers().len() == 2 && nodes[2].peers().len() == 1
    })
    .await;
    common::tx_crosses_a_line(&nodes).await;
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_headers_are_refused_and_the_peer_is_punished() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(cfg(dir.path())).await.unwrap();
    let genesis = node.profile().genesis;
    let cases: Vec<(&str, Header)> = {
        let good = meshd_actors::sync::chain::headers::mine_header(
            &genesis,
            bitcoin::TxMerkleNode::all_zeros(),
            genesis.time + 600,
            genesis.bits,
        );
        let mut bad_pow = good;
        while bad_pow.target().is_met_by(bad_pow.block_hash()) {
            bad_pow.nonce = bad_pow.nonce.wrapping_add(1);
        }
        let bad_bits = meshd_actors::sync::chain::headers::mine_header(
            &genesis,
            bitcoin::TxMerkleNode::all_zeros(),
            genesis.time + 600,
            bitcoin::CompactTarget::from_consensus(0x2000_ffff),
        );
        vec![("bad proof of work", bad_pow), ("wrong nBits", bad_bits)]
    };
    for (what, header) in cases {
        let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
        assert!(p.handshake().await);
        p.send(NetworkMessage::Headers(vec![header])).await;
        assert!(
            p.closed_within(Duration::from_secs(5)).await,
            "{what}: peer not disconnected"
        );
        assert_eq!(node.sync_status().header_height, 0, "{what}: header stored");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_is_reloaded_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(cfg(dir.path())).await.unwrap();
    let hashes = node.generate(150).await.unwrap();
    node.shutdown().await;
    let node = Node::start(cfg(dir.path())).await.unwrap();
    until("chain loaded", 10, || {
        node.sync_status().header_height == 150
    })
    .await;
    assert_eq!(
        node.sync_status().best_header_hash,
        hashes.last().unwrap().to_string()
    );
    // What was vouched for (mined here) is shown again at once: vouched.dat kept it.
    let mut p = common::handshaked(node.listen_addrs()[0]).await;
    p.send(NetworkMessage::GetHeaders(
        bitcoin::p2p::message_blockdata::GetHeadersMessage {
            version: 70016,
            locator_hashes: vec![node.profile().genesis.block_hash()],
            stop_hash: bitcoin::BlockHash::all_zeros(),
        },
    ))
    .await;
    let shown = p
        .wait_for(Duration::from_secs(5), |m| match m {
            NetworkMessage::Headers(h) => Some(h.len()),
            _ => None,
        })
        .await;
    assert_eq!(shown, Some(150));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_sync_peer_is_replaced() {
    let (dn, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cb = cfg(db.path());
    cb.slots.outbound = 0;
    let b = Node::start(cb).await.unwrap();
    let mined = b.generate(5).await.unwrap();
    let tip = *mined.last().unwrap();
    let mut cn = cfg(dn.path());
    cn.sync_stall_timeout = Duration::from_millis(500);
    let n = Node::start(cn).await.unwrap();
    let mut blocks = n.subscribe_to(&[EventKind::BlockReceived]);
    // A peer that claims 1000 blocks and never answers getheaders becomes the sync peer...
    let mut staller = AsyncPeer::connect(n.listen_addrs()[0]).await.unwrap();
    assert!(staller.handshake_at(1000).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...then an honest peer arrives; after the stall timeout sync moves to it.
    assert!(n.connect(b.listen_addrs()[0], false).await);
    until("synced from the honest peer", 10, || {
        n.sync_status().best_header_hash == tip.to_string()
    })
    .await;
    // Not only the best header: the blocks are fetched, and the node is out of initial sync.
    common::blocks_received(&mut blocks, &mined, Duration::from_secs(10)).await;
    until("synced", 10, || {
        n.sync_status().state == meshd_actors::msg::SyncState::Synced
    })
    .await;
    drop(staller);
    n.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feefilter_is_applied_when_the_fee_is_known() {
    use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(cfg(dir.path())).await.unwrap();
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(p.handshake().await);
    p.send(NetworkMessage::FeeFilter(1000)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A parent in the pool, then children that spend it with a low and a high fee.
    let parent = Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(bitcoin::Txid::from_byte_array([7; 32]), 0),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(100_000),
            script_pubkey: ScriptBuf::from_bytes(vec![0x51]),
        }],
    };
    let child = |fee: u64, salt: u8| Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(parent.compute_txid(), 0),
            script_sig: ScriptBuf::from_bytes(vec![salt]),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(100_000 - fee),
            script_pubkey: ScriptBuf::from_bytes(vec![0x51]),
        }],
    };
    let (cheap, rich) = (child(10, 1), child(20_000, 2));
    assert!(node.submit_tx(parent.clone()));
    assert!(node.submit_tx(cheap.clone()));
    assert!(node.submit_tx(rich.clone()));
    // The parent's fee is unknown (its input is not ours): announced. The cheap child is
    // below the filter: not announced. The rich child is above it: announced.
    let mut announced = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let common::Seen::Msg(meshd_actors::wire::Message::Network(NetworkMessage::Inv(inv))) =
            p.recv(Duration::from_millis(300)).await
        {
            for i in inv {
                if let bitcoin::p2p::message_blockdata::Inventory::Transaction(t) = i {
                    announced.push(t);
                }
            }
        }
    }
    assert!(announced.contains(&parent.compute_txid()), "{announced:?}");
    assert!(announced.contains(&rich.compute_txid()), "{announced:?}");
    assert!(!announced.contains(&cheap.compute_txid()), "{announced:?}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_headers_are_refused_free_and_unconnecting_ones_get_one_getheaders_free() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(cfg(dir.path())).await.unwrap();
    let genesis = node.profile().genesis;
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(p.handshake().await);
    let now = common::unix_now();
    let future = meshd_actors::sync::chain::headers::mine_header(
        &genesis,
        bitcoin::TxMerkleNode::all_zeros(),
        now + 3 * 3600,
        genesis.bits,
    );
    p.send(NetworkMessage::Headers(vec![future])).await;
    let score = || node.peers().first().map_or(0, |x| x.misbehavior);
    // Refused, but free (Core does not punish BLOCK_TIME_FUTURE: our clock may be wrong).
    // A ping round trip proves the header was handled before the score is read.
    // The node's first getheaders (it syncs from its only peer) is seen first too, so that
    // the count below is of the answers to what follows.
    p.send(NetworkMessage::Ping(7)).await;
    let (mut pong, mut asked) = (false, false);
    while !(pong && asked) {
        match p.recv(Duration::from_secs(5)).await {
            common::Seen::Msg(meshd_actors::wire::Message::Network(NetworkMessage::Pong(7))) => {
                pong = true
            }
            common::Seen::Msg(meshd_actors::wire::Message::Network(
                NetworkMessage::GetHeaders(_),
            )) => asked = true,
            common::Seen::Msg(_) => {}
            other => panic!("{other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(score(), 0);
    assert_eq!(node.sync_status().header_height, 0);

    // Ten header messages that connect to nothing (announcements that crossed): Core master
    // charges nothing and asks for the gap once, with one getheaders in flight at most
    // (before: 20 points every ten, and a getheaders for each).
    let unknown_parent = Header {
        prev_blockhash: bitcoin::BlockHash::from_byte_array([9; 32]),
        ..genesis
    };
    // Its own proof of work is valid (a batch that fails it costs the sender first).
    let orphan = meshd_actors::sync::chain::headers::mine_header(
        &unknown_parent,
        bitcoin::TxMerkleNode::all_zeros(),
        genesis.time + 600,
        genesis.bits,
    );
    for _ in 0..10 {
        p.send(NetworkMessage::Headers(vec![orphan])).await;
    }
    p.send(NetworkMessage::Ping(8)).await;
    let mut getheaders = 0;
    loop {
        match p.recv(Duration::from_secs(5)).await {
            common::Seen::Msg(meshd_actors::wire::Message::Network(NetworkMessage::Pong(8))) => {
                break
            }
            common::Seen::Msg(meshd_actors::wire::Message::Network(
                NetworkMessage::GetHeaders(_),
            )) => getheaders += 1,
            common::Seen::Msg(_) => {}
            other => panic!("{other:?}"),
        }
    }
    // The pong comes from the Connection and may overtake Sync's answer: read on a while.
    while let common::Seen::Msg(m) = p.recv(Duration::from_millis(700)).await {
        if matches!(
            m,
            meshd_actors::wire::Message::Network(NetworkMessage::GetHeaders(_))
        ) {
            getheaders += 1;
        }
    }
    assert_eq!(
        getheaders, 1,
        "one getheaders for ten unconnecting messages"
    );
    assert_eq!(score(), 0, "unconnecting headers are not charged");
    assert_eq!(node.sync_status().header_height, 0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_blocks_can_be_generated_on_a_fresh_node() {
    // Block times follow Core's rule (the later of now and median-time-past + 1), so a long
    // run of blocks does not walk past the two-hour future limit (it did at 7,262).
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(cfg(dir.path())).await.unwrap();
    let hashes = node.generate(10_000).await.unwrap();
    assert_eq!(hashes.len(), 10_000);
    assert_eq!(node.sync_status().header_height, 10_000);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_batch_is_asked_for_before_the_current_one_is_validated() {
    use bitcoin::p2p::message::NetworkMessage as N;
    use common::Seen;
    use meshd_actors::wire::Message;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(cfg(dir.path())).await.unwrap();
    let genesis = node.profile().genesis;
    // 2,000 headers whose last one has a bad proof of work.
    let mut batch = meshd_actors::sync::chain::headers::mine_chain(&genesis, 2000, 600);
    let last = batch.last_mut().unwrap();
    while last.target().is_met_by(last.block_hash()) {
        last.nonce = last.nonce.wrapping_add(1);
    }
    let bad = last.block_hash();
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(p.handshake_at(4000).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut served = false;
    let next = loop {
        assert!(Instant::now() < deadline, "no second getheaders");
        match p.recv(Duration::from_secs(5)).await {
            Seen::Msg(Message::Network(N::GetHeaders(_))) if !served => {
                served = true;
                p.send(N::Headers(batch.clone())).await;
            }
            Seen::Msg(Message::Network(N::GetHeaders(m))) => break m,
            Seen::Msg(Message::Network(N::Ping(n))) => p.send(N::Pong(n)).await,
            Seen::Msg(_) => {}
            other => panic!("before the second getheaders: {other:?}"),
        }
    };
    // Asked from the batch's last hash, which could only be known unvalidated.
    assert_eq!(next.locator_hashes[0], bad);
    // The batch is then checked whole (Core's CheckHeadersPoW): nothing of it is stored, and
    // the bad proof of work costs the peer.
    assert!(p.closed_within(Duration::from_secs(5)).await, "punished");
    assert_eq!(node.sync_status().header_height, 0);
    node.shutdown().await;
}

/// Writes a headers.dat of `n` mined regtest headers after genesis (the file format of
/// `meshd_actors::sync::chain::store`); returns the headers.
fn write_header_file(path: &std::path::Path, genesis: Header, n: u32) -> Vec<Header> {
    use meshd_actors::sync::chain::store::{file_header_bytes, RECORD_BYTES};
    let magic = meshd_actors::network::NetworkId::Regtest
        .profile()
        .magic
        .to_bytes();
    let mut bytes = file_header_bytes(magic);
    bytes.reserve(n as usize * RECORD_BYTES);
    let headers = meshd_actors::sync::chain::headers::mine_chain(&genesis, n, 600);
    for h in &headers {
        bytes.extend_from_slice(&bitcoin::consensus::serialize(h));
        bytes.extend_from_slice(&h.block_hash().as_byte_array()[..4]);
    }
    std::fs::write(path, bytes).unwrap();
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_answered_while_a_long_header_file_loads() {
    const N: u32 = 150_000;
    let dir = tempfile::tempdir().unwrap();
    let genesis = meshd_actors::network::NetworkId::Regtest.profile().genesis;
    let headers = write_header_file(&dir.path().join("headers.dat"), genesis, N);
    // The node that wrote the file had the chain vouched for by a validating peer (else it
    // shows no peer a header above what was vouched for).
    meshd_actors::persist::save(
        &cfg(dir.path())
            .datadir
            .join(meshd_actors::sync::VOUCHED_FILE),
        meshd_actors::sync::VOUCHED_KIND,
        meshd_actors::sync::VOUCHED_VERSION,
        &(N, headers[N as usize - 1].block_hash().to_byte_array()),
    )
    .unwrap();
    let node = Node::start(cfg(dir.path())).await.unwrap();
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(p.handshake().await);
    // Asked from genesis: the first 2,000 headers are loaded within the first step.
    p.send(NetworkMessage::GetHeaders(
        bitcoin::p2p::message_blockdata::GetHeadersMessage {
            version: 70016,
            locator_hashes: vec![genesis.block_hash()],
            stop_hash: bitcoin::BlockHash::all_zeros(),
        },
    ))
    .await;
    // Asked from the tip of the file: only the whole chain can answer it (with nothing).
    p.send(NetworkMessage::GetHeaders(
        bitcoin::p2p::message_blockdata::GetHeadersMessage {
            version: 70016,
            locator_hashes: vec![headers[N as usize - 1].block_hash()],
            stop_hash: bitcoin::BlockHash::all_zeros(),
        },
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        assert!(Instant::now() < deadline, "no headers answer");
        if let common::Seen::Msg(meshd_actors::wire::Message::Network(NetworkMessage::Headers(h))) =
            p.recv(Duration::from_secs(5)).await
        {
            break h;
        }
    };
    let status = node.sync_status();
    assert_eq!(first.len(), 2000);
    assert_eq!(first[0], headers[0]);
    assert_eq!(first[1999], headers[1999]);
    assert_eq!(
        status.state,
        meshd_actors::msg::SyncState::Loading,
        "answered while loading (height {} of {N})",
        status.header_height
    );
    assert!(status.header_height < N);
    let second = loop {
        assert!(Instant::now() < deadline, "no second headers answer");
        if let common::Seen::Msg(meshd_actors::wire::Message::Network(NetworkMessage::Headers(h))) =
            p.recv(Duration::from_secs(5)).await
        {
            break h;
        }
    };
    assert!(second.is_empty(), "the tip's successors: none");
    let status = node.sync_status();
    assert_eq!(status.header_height, N, "the whole file is loaded by then");
    assert_ne!(status.state, meshd_actors::msg::SyncState::Loading);
    node.shutdown().await;
}

/// Whether `m` announces block `hash` (by `inv` or `headers`).
fn announces_block(m: &NetworkMessage, hash: bitcoin::BlockHash) -> Option<()> {
    use bitcoin::p2p::message_blockdata::Inventory;
    let found = match m {
        NetworkMessage::Inv(items) => items
            .iter()
            .any(|i| matches!(i, Inventory::Block(h) | Inventory::WitnessBlock(h) if *h == hash)),
        NetworkMessage::Headers(hs) => hs.iter().any(|h| h.block_hash() == hash),
        _ => false,
    };
    found.then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_only_an_inbound_peer_gave_is_announced_once_an_outbound_peer_vouches() {
    // meshd checks no scripts: a block from an inbound peer alone may be invalid, and a Core
    // peer fetching it from us would discourage us. It is kept and published at once, and
    // announced when a peer we chose (which validated it before announcing) announces it.
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut c = cfg(dir.path());
    c.v2transport = false;
    c.slots.outbound = 1;
    c.connect = vec![listener.local_addr().unwrap()];
    let node = Node::start(c).await.unwrap();
    let mut outbound = AsyncPeer::accept(&listener).await;
    let addr = node.listen_addrs()[0];
    let mut inbound = common::handshaked(addr).await;
    let mut watcher = common::handshaked(addr).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.sync_peers().await.len() < 3 {
        assert!(Instant::now() < deadline, "Sync never learned its peers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let genesis = node.profile().genesis;
    let block = meshd_actors::sync::mine::regtest_block(&genesis, 1, common::unix_now() - 60, 5);
    let hash = block.block_hash();
    let mut received = node.subscribe_to(&[EventKind::BlockReceived]);
    inbound
        .send(NetworkMessage::Headers(vec![block.header]))
        .await;
    let asked = inbound
        .wait_for(Duration::from_secs(5), |m| match m {
            NetworkMessage::GetData(items) => items
                .iter()
                .any(|i| i.network_hash() == Some(hash.to_byte_array()))
                .then_some(()),
            _ => None,
        })
        .await;
    assert!(
        asked.is_some(),
        "the sender of the header was asked for the block"
    );
    inbound.send(NetworkMessage::Block(block.clone())).await;
    common::blocks_received(&mut received, &[hash], Duration::from_secs(5)).await;
    assert!(
        watcher
            .wait_for(Duration::from_millis(1500), |m| announces_block(m, hash))
            .await
            .is_none(),
        "announced on an inbound peer's word"
    );
    outbound
        .send(NetworkMessage::Headers(vec![block.header]))
        .await;
    assert!(
        watcher
            .wait_for(Duration::from_secs(5), |m| announces_block(m, hash))
            .await
            .is_some(),
        "not announced once the outbound peer vouched for it"
    );
    node.shutdown().await;
}

/// A hub that two leaves dial (and nothing else: the leaves do not listen), the hub's
/// whitelist, and whether a block mined at one leaf reaches the other within `wait`.
async fn star_carries_a_block(whitelist: &str, wait: Duration) -> bool {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut ch = cfg(dirs[0].path());
    ch.slots.outbound = 0;
    ch.whitelist = vec![meshd_actors::shared::whitelist::WhitelistEntry::parse(whitelist).unwrap()];
    let hub = Node::start(ch).await.unwrap();
    let mut leaves = Vec::new();
    for d in &dirs[1..] {
        let mut c = cfg(d.path());
        // The hub only: leaves that learnt each other's address would dial each other.
        c.slots.outbound = 1;
        c.listen = Vec::new();
        c.connect = vec![hub.listen_addrs()[0]];
        leaves.push(Node::start(c).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub.sync_peers().await.len() < 2
        || leaves[0].sync_peers().await.is_empty()
        || leaves[1].sync_peers().await.is_empty()
    {
        assert!(Instant::now() < deadline, "the star never formed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut far = leaves[1].subscribe_to(&[EventKind::BlockReceived]);
    let mined = leaves[0].generate(2).await.unwrap();
    let carried = tokio::time::timeout(
        wait,
        common::blocks_received(&mut far, &mined, wait + Duration::from_secs(1)),
    )
    .await
    .is_ok();
    for n in &leaves {
        let peers: Vec<_> = n.peers().iter().map(|p| p.addr).collect();
        assert_eq!(
            peers,
            vec![hub.listen_addrs()[0]],
            "a star: leaves reach only the hub"
        );
    }
    for n in leaves {
        n.shutdown().await;
    }
    hub.shutdown().await;
    carried
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_hub_that_whitelists_its_leaves_for_relay_a_block_reaches_every_leaf() {
    // A mesh of meshd nodes alone has no validating node: the hub takes a leaf's block from
    // an inbound peer, which vouches for nothing unless the operator trusts it (`relay`).
    assert!(star_carries_a_block("relay@127.0.0.1/32", Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_hub_that_trusts_nobody_a_leafs_block_goes_no_further() {
    // Without the whitelist the hub keeps and serves the block but shows it to nobody: no
    // announcement, and getheaders answers stop below it (the vouching asks of outbound
    // peers find none: the hub dials nobody).
    assert!(!star_carries_a_block("noban@127.0.0.9/32", Duration::from_secs(4)).await);
}
