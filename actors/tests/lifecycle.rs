//! The supervision tree under failure, over real loopback sockets: a killed Manager leaves no
//! ghost peers, a killed Sync learns every live peer from the Manager and resumes, and a node
//! whose supervisor gives up still saves its address book and ban list.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::ServiceFlags;
use common::{config, listen_only, AsyncPeer};
use meshd_actors::node::{Node, NodeChild, NodeExit};
use meshd_actors::shared::peers::{PeerId, PeerState};

/// The connected peers in the table, by id.
fn connected_ids(node: &Node) -> BTreeSet<PeerId> {
    node.peers()
        .iter()
        .filter(|p| p.state == PeerState::Connected)
        .map(|p| p.id)
        .collect()
}

/// Polls an async condition until it holds or `secs` pass.
macro_rules! eventually {
    ($what:expr, $secs:expr, $cond:expr) => {{
        let deadline = Instant::now() + Duration::from_secs($secs);
        loop {
            if $cond {
                break;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {}", $what);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_manager_leaves_no_ghost_peers() {
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut remotes = Vec::new();
    for d in &dirs[1..] {
        remotes.push(Node::start(listen_only(d.path())).await.unwrap());
    }
    let mut c = config(dirs[0].path());
    c.connect = remotes.iter().map(|r| r.listen_addrs()[0]).collect();
    let node = Node::start(c).await.unwrap();
    eventually!("five handshakes", 15, connected_ids(&node).len() == 5);
    eventually!(
        "Sync told of the five",
        5,
        node.sync_peers().await.len() == 5
    );
    let before = connected_ids(&node);

    let manager = node.child(NodeChild::Manager).await.expect("manager");
    manager.kill();

    // The new Manager redials the five; the old Connections are gone everywhere.
    eventually!(
        "the peer table, Sync, the slots and the sockets to agree",
        20,
        {
            let now = connected_ids(&node);
            let table_len = node.peers().len();
            let sync: BTreeSet<PeerId> = node.sync_peers().await.into_iter().collect();
            let (usage, _) = node.slots();
            let remote_sockets: Vec<usize> = remotes.iter().map(|r| r.peers().len()).collect();
            now.len() == 5
                && table_len == 5
                && now.is_disjoint(&before)
                && sync == now
                && usage.manual == 5
                && usage.outbound == 0
                && usage.inbound == 0
                && remote_sockets.iter().all(|n| *n == 1)
        }
    );
    node.shutdown().await;
    for r in remotes {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sync_learns_every_live_peer_within_a_second_and_resumes() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut ca = listen_only(da.path());
    ca.trickle = false;
    let a = Node::start(ca).await.unwrap();
    a.generate(20).await.unwrap();
    let mut cb = config(db.path());
    cb.connect = vec![a.listen_addrs()[0]];
    let b = Node::start(cb).await.unwrap();
    eventually!("b synced from a", 15, b.sync_status().header_height == 20);
    // An inbound peer too, so Sync must learn of both directions.
    let mut raw = AsyncPeer::connect(b.listen_addrs()[0]).await.unwrap();
    assert!(raw.handshake().await);
    eventually!("two peers at b", 10, connected_ids(&b).len() == 2);

    let old_sync = b.child(NodeChild::Sync).await.expect("sync");
    old_sync.kill();
    let killed_at = Instant::now();
    loop {
        let fresh = b
            .child(NodeChild::Sync)
            .await
            .is_some_and(|c| c.get_id() != old_sync.get_id());
        let sync: BTreeSet<PeerId> = b.sync_peers().await.into_iter().collect();
        if fresh && sync == connected_ids(&b) && sync.len() == 2 {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(1),
            "the restarted Sync did not learn the live peers within a second (knows {sync:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // It reloaded the chain and follows a again.
    assert_eq!(b.sync_status().header_height, 20);
    let tip = *a.generate(5).await.unwrap().last().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while b.sync_status().best_header_hash != tip.to_string() {
        assert!(
            Instant::now() < deadline,
            "b does not follow a after the restart: {:?}, sync peers {:?}, a's status {:?}",
            b.sync_status(),
            b.sync_peers().await,
            a.sync_status()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    drop(raw);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_supervisor_gives_up_saves_its_book_and_bans() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(listen_only(dir.path())).await.unwrap();
    let datadir = node.config().datadir.clone();
    // Something in each file: a gossiped address and a ban.
    let gossiped: SocketAddr = "203.0.113.7:18444".parse().unwrap();
    let mut raw = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(raw.handshake().await);
    let now = common::unix_now();
    raw.send(NetworkMessage::Addr(vec![(
        now,
        Address::new(&gossiped, ServiceFlags::NETWORK),
    )]))
    .await;
    eventually!(
        "the gossiped address in the book",
        10,
        node.known_addresses()
            .await
            .iter()
            .any(|e| e.addr == gossiped)
    );
    let subnet = "198.51.100.0/24".parse().unwrap();
    node.ban(subnet, Duration::from_secs(3600)).await.unwrap();
    // Whatever was written so far goes: only the give-up path can write them again.
    for f in ["peers.dat", "bans.dat"] {
        let _ = std::fs::remove_file(datadir.join(f));
    }

    // A file that means "running" (the daemon's cookie): removed however the node ends.
    let cookie = datadir.join(".cookie");
    std::fs::write(&cookie, b"token").unwrap();
    node.remove_on_exit(cookie.clone());

    // Kill the Stun actor until the restart budget is spent.
    let mut killed = 0;
    while killed < 20 {
        let Some(stun) = node.child(NodeChild::Stun).await else {
            break;
        };
        stun.kill();
        killed += 1;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match node.child(NodeChild::Stun).await {
                Some(c) if c.get_id() != stun.get_id() => break,
                None => break,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
    let exit = tokio::time::timeout(Duration::from_secs(15), node.wait())
        .await
        .expect("the node stops by itself");
    assert!(matches!(exit, NodeExit::Failed(_)), "{exit:?}");
    assert!(
        !cookie.exists(),
        "the cookie outlived a node that stopped by itself"
    );
    drop(raw);
    for f in ["peers.dat", "bans.dat"] {
        assert!(datadir.join(f).exists(), "{f} not saved on give-up");
    }

    // A new node on the same data dir has both.
    let again = Node::start(listen_only(dir.path())).await.unwrap();
    assert!(again
        .known_addresses()
        .await
        .iter()
        .any(|e| e.addr == gossiped));
    assert!(again.bans().await.iter().any(|b| b.subnet == subnet));
    again.shutdown().await;
}
