//! Block-relay-only connections and anchors (Bitcoin Core's `ConnectionType::BLOCK_RELAY`,
//! `anchors.dat`) over loopback sockets, in the spirit of Core's `p2p_blocksonly.py` and
//! `feature_anchors.py`: a node with one full-relay and one block-relay-only slot dials two
//! raw peers it heard of; the block-relay-only one is sent `relay=false`, never asked for
//! addresses, its addresses are ignored, and it is shown as `block-relay-only`; at shutdown
//! it is written to anchors.dat, which the next start reads, deletes and dials first as
//! block-relay-only again; a transaction announced on it ends it. And Core's feelers
//! (`p2p_add_connections.py`'s feeler part): with the outbound slots full, an address of the
//! new table is connected to, handshaked, closed at once, never asked for addresses, and
//! moved to the tried table. And the extra block-relay-only peer Core opens now and then.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash;
use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::ServiceFlags;
use common::{config, AsyncPeer};
use meshd_actors::manager::ANCHORS_FILE;
use meshd_actors::node::Node;
use tokio::net::TcpListener;

fn addr_message(addrs: &[SocketAddr]) -> NetworkMessage {
    let now = common::unix_now();
    NetworkMessage::Addr(
        addrs
            .iter()
            .map(|a| {
                (
                    now,
                    Address::new(a, ServiceFlags::NETWORK | ServiceFlags::WITNESS),
                )
            })
            .collect(),
    )
}

/// Tells `node` of `addr` through an inbound peer of its own (each inbound peer may give
/// one address at once), and waits until the book holds it.
async fn gossip(node: &Node, addr: SocketAddr) -> AsyncPeer {
    let mut g = common::handshaked(node.listen_addrs()[0]).await;
    g.send(addr_message(&[addr])).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.known_addresses().await.iter().any(|e| e.addr == addr) {
        assert!(Instant::now() < deadline, "{addr} never reached the book");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    g
}

async fn listener(ip: &str) -> TcpListener {
    TcpListener::bind(format!("{ip}:0")).await.unwrap()
}

/// Both listeners' first connections from the node, each with the version it was sent.
async fn both_dialled(
    a: &TcpListener,
    b: &TcpListener,
) -> ((AsyncPeer, VersionMessage), (AsyncPeer, VersionMessage)) {
    tokio::join!(AsyncPeer::accept_version(a), AsyncPeer::accept_version(b))
}

async fn connection_type(node: &Node, addr: SocketAddr) -> String {
    let peers = common::wait_peers(node, "the peer in the table", |p| {
        p.iter().any(|x| x.addr == addr)
    })
    .await;
    peers
        .iter()
        .find(|x| x.addr == addr)
        .map(|x| x.connection_type.to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_relay_only_peers_carry_no_addresses_or_transactions_and_come_back_as_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.slots.outbound = 1;
    c.slots.block_relay = 1;
    let l2 = listener("127.0.0.2").await;
    let l3 = listener("127.0.0.3").await;
    let (a2, a3) = (l2.local_addr().unwrap(), l3.local_addr().unwrap());

    let node = Node::start(c.clone()).await.unwrap();
    let _g2 = gossip(&node, a2).await;
    let _g3 = gossip(&node, a3).await;
    let ((p2, v2), (p3, v3)) = both_dialled(&l2, &l3).await;
    assert_ne!(v2.relay, v3.relay, "one full-relay, one block-relay-only");
    let (mut full, mut blocks, blocks_addr) = if v2.relay { (p2, p3, a3) } else { (p3, p2, a2) };
    let full_addr = if blocks_addr == a2 { a3 } else { a2 };
    assert_eq!(
        connection_type(&node, blocks_addr).await,
        "block-relay-only"
    );
    assert_eq!(
        connection_type(&node, full_addr).await,
        "outbound-full-relay"
    );
    // The full-relay peer is asked for addresses; the block-relay-only one never is.
    let asked = |m: &NetworkMessage| matches!(m, NetworkMessage::GetAddr).then_some(());
    assert!(full.wait_for(Duration::from_secs(5), asked).await.is_some());
    assert!(
        blocks
            .wait_for(Duration::from_secs(2), asked)
            .await
            .is_none(),
        "getaddr sent on a block-relay-only connection"
    );
    // Its addresses are ignored; the full-relay peer's are kept.
    let from_blocks: SocketAddr = "127.0.0.10:1".parse().unwrap();
    let from_full: SocketAddr = "127.0.0.9:1".parse().unwrap();
    blocks.send(addr_message(&[from_blocks])).await;
    full.send(addr_message(&[from_full])).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node
        .known_addresses()
        .await
        .iter()
        .any(|e| e.addr == from_full)
    {
        assert!(
            Instant::now() < deadline,
            "the full-relay peer's address was not kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !node
            .known_addresses()
            .await
            .iter()
            .any(|e| e.addr == from_blocks),
        "an address from a block-relay-only peer was kept"
    );
    let (used, _) = node.slots();
    assert_eq!((used.outbound, used.block_relay), (1, 1));

    // Shut down: the block-relay-only peer is the anchor.
    node.shutdown().await;
    assert!(dir.path().join(ANCHORS_FILE).exists(), "no anchors.dat");

    // The next start reads anchors.dat, deletes it, and dials the anchor first, again as
    // block-relay-only.
    let node = Node::start(c).await.unwrap();
    let blocks_listener = if blocks_addr == a2 { &l2 } else { &l3 };
    let (mut again, version) = AsyncPeer::accept_version(blocks_listener).await;
    assert!(!version.relay, "the anchor came back as a full-relay peer");
    assert_eq!(
        connection_type(&node, blocks_addr).await,
        "block-relay-only"
    );
    assert!(
        !dir.path().join(ANCHORS_FILE).exists(),
        "anchors.dat is kept after it was read"
    );
    // A transaction announced on it breaks `relay=false`: the connection ends.
    again
        .send(NetworkMessage::Inv(vec![Inventory::Transaction(
            bitcoin::Txid::from_byte_array([7; 32]),
        )]))
        .await;
    assert!(
        again.closed_within(Duration::from_secs(10)).await,
        "a transaction inv on a block-relay-only connection was taken"
    );
    node.shutdown().await;
}

async fn table_of(node: &Node, addr: SocketAddr) -> Option<meshd_actors::shared::addr::Table> {
    node.known_addresses()
        .await
        .into_iter()
        .find(|e| e.addr == addr)
        .map(|e| e.table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_outbound_slots_full_a_feeler_tests_a_new_address_and_moves_it_to_tried() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.slots.outbound = 1;
    c.slots.block_relay = 0;
    c.feeler_interval = Some(Duration::from_millis(200));
    let full = listener("127.0.0.4").await;
    let new = listener("127.0.0.5").await;
    let (full_addr, new_addr) = (full.local_addr().unwrap(), new.local_addr().unwrap());
    let node = Node::start(c).await.unwrap();
    let _g1 = gossip(&node, full_addr).await;
    let (_full_peer, _) = AsyncPeer::accept_version(&full).await;
    let _g2 = gossip(&node, new_addr).await;
    assert_eq!(
        table_of(&node, new_addr).await,
        Some(meshd_actors::shared::addr::Table::New)
    );
    // The outbound slot is full: the new address gets a feeler.
    let (mut feeler, _) = AsyncPeer::accept_version(&new).await;
    assert!(
        feeler
            .wait_for(Duration::from_secs(5), |m| {
                matches!(m, NetworkMessage::GetAddr).then_some(())
            })
            .await
            .is_none(),
        "a feeler asked for addresses, or stayed open"
    );
    assert!(feeler.closed_within(Duration::from_secs(1)).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while table_of(&node, new_addr).await != Some(meshd_actors::shared::addr::Table::Tried) {
        assert!(
            Instant::now() < deadline,
            "the feeler's address was not moved to tried"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The slot is released when the feeler's actor has stopped, which may come a moment
    // after the address book's move to tried.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.slots().0.feeler != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (used, _) = node.slots();
    assert_eq!(
        (used.outbound, used.feeler),
        (1, 0),
        "the feeler's slot is released"
    );
    node.shutdown().await;
}

/// Core's extra block-relay-only peer (`p2p_blocksonly`/`p2p_outbound_eviction` spirit): out
/// of initial sync with every outbound slot full, the node opens one more block-relay-only
/// connection from its book now and then (relay=false, never asked for addresses), above the
/// block-relay-only limit by one and no more. (Which one it lets go again is Core's rule,
/// unit-tested in `manager/eviction.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_synced_with_its_slots_full_an_extra_block_relay_only_peer_comes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.slots.outbound = 1;
    c.slots.block_relay = 1;
    c.extra_block_relay_interval = Some(Duration::from_millis(200));
    let full = listener("127.0.0.4").await;
    let br = listener("127.0.0.6").await;
    let extra = listener("127.0.0.7").await;
    let spare = listener("127.0.0.8").await;
    let node = Node::start(c).await.unwrap();
    // A recent tip: out of initial sync.
    node.generate(1).await.unwrap();
    let _g1 = gossip(&node, full.local_addr().unwrap()).await;
    let (_full_peer, v) = AsyncPeer::accept_version(&full).await;
    assert!(v.relay, "the full-relay peer first");
    let _g2 = gossip(&node, br.local_addr().unwrap()).await;
    let (_br_peer, v) = AsyncPeer::accept_version(&br).await;
    assert!(!v.relay);
    let _g3 = gossip(&node, extra.local_addr().unwrap()).await;
    let (mut extra_peer, v) = AsyncPeer::accept_version(&extra).await;
    assert!(!v.relay, "the extra peer is block-relay-only");
    assert_eq!(
        connection_type(&node, extra.local_addr().unwrap()).await,
        "block-relay-only"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.slots().0.block_relay < 2 {
        assert!(
            Instant::now() < deadline,
            "the extra peer's slot is not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One extra at most: another address in the book is not dialled meanwhile.
    let _g4 = gossip(&node, spare.local_addr().unwrap()).await;
    let second = tokio::time::timeout(Duration::from_secs(2), spare.accept()).await;
    assert!(
        second.is_err(),
        "a second extra block-relay-only peer was dialled"
    );
    assert!(
        extra_peer
            .wait_for(Duration::from_millis(500), |m| {
                matches!(m, NetworkMessage::GetAddr).then_some(())
            })
            .await
            .is_none(),
        "the extra block-relay-only peer was asked for addresses"
    );
    assert_eq!(node.slots().0.block_relay, 2);
    node.shutdown().await;
}
