//! Two in-process nodes over real loopback sockets: handshake, ping, persistence, shutdown.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshd_actors::config::NodeConfig;
use meshd_actors::network::NetworkId;
use meshd_actors::node::{Node, NodeExit};
use meshd_actors::peer::Direction;
use meshd_actors::shared::peers::{PeerInfo, PeerState};

fn config(dir: &std::path::Path, connect: Vec<SocketAddr>) -> NodeConfig {
    let mut c = NodeConfig::new(NetworkId::Regtest, dir.to_path_buf());
    c.listen = vec!["127.0.0.1:0".parse().unwrap()];
    // A node without --connect only listens here: it must not dial what it learns by gossip.
    if connect.is_empty() {
        c.slots.outbound = 0;
    }
    c.connect = connect;
    c.ping_interval = Duration::from_millis(200);
    c
}

async fn wait_for(node: &Node, what: &str, pred: impl Fn(&[PeerInfo]) -> bool) -> Vec<PeerInfo> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let peers = node.peers();
        if pred(&peers) {
            return peers;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {peers:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_handshake_and_ping_over_loopback() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(config(da.path(), vec![])).await.unwrap();
    let a_addr = a.listen_addrs()[0];
    let b = Node::start(config(db.path(), vec![a_addr])).await.unwrap();

    let b_peers = wait_for(&b, "b's outbound to ping", |p| {
        p.len() == 1 && p[0].state == PeerState::Connected && p[0].pongs >= 2
    })
    .await;
    assert_eq!(b_peers[0].direction, Direction::Outbound);
    assert!(b_peers[0].user_agent.starts_with("/meshd:"));
    assert!(b_peers[0].ping_min.is_some() && b_peers[0].ping_last.is_some());
    let a_peers = wait_for(&a, "a's inbound to ping", |p| {
        p.len() == 1 && p[0].state == PeerState::Connected && p[0].pongs >= 1
    })
    .await;
    assert_eq!(a_peers[0].direction, Direction::Inbound);

    assert_eq!(b.shutdown().await, NodeExit::Graceful);
    wait_for(&a, "a to see b leave", |p| p.is_empty()).await;
    assert_eq!(a.shutdown().await, NodeExit::Graceful);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_peer_is_dialled_again_after_it_returns() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(config(da.path(), vec![])).await.unwrap();
    let a_addr = a.listen_addrs()[0];
    let b = Node::start(config(db.path(), vec![a_addr])).await.unwrap();
    wait_for(&b, "first connection", |p| {
        p.len() == 1 && p[0].state == PeerState::Connected
    })
    .await;
    let first_id = b.peers()[0].id;
    a.shutdown().await;

    // Bring a back on the same address; b's persistent peer must come back by itself.
    let mut cfg = config(da.path(), vec![]);
    cfg.listen = vec![a_addr];
    let a = Node::start(cfg).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = b.peers();
        if p.len() == 1 && p[0].state == PeerState::Connected && p[0].id != first_id {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "persistent peer not re-dialled: {p:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dials_itself_drops_the_connection() {
    let da = tempfile::tempdir().unwrap();
    let a = Node::start(config(da.path(), vec![])).await.unwrap();
    let addr = a.listen_addrs()[0];
    assert!(a.connect(addr, false).await);
    // Both sides of the self-connection must go away, and stay away (one-shot dial).
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_for(&a, "self-connection to drop", |p| p.is_empty()).await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_node_on_the_same_datadir_is_refused() {
    let da = tempfile::tempdir().unwrap();
    let a = Node::start(config(da.path(), vec![])).await.unwrap();
    let err = Node::start(config(da.path(), vec![]))
        .await
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("in use"), "{err}");
    a.shutdown().await;
}
