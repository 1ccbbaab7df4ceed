//! The Overlay actor over real loopback sockets: nodes join through a bootstrap peer and
//! find each other by the DHT (over TCP and QUIC), gossip crosses both ways, the identity
//! survives a kill of the actor and a restart of the node, and nothing runs without
//! `--overlay`.

mod common;

use std::time::{Duration, Instant};

use meshd_actors::config::NodeConfig;
use meshd_actors::events::{EventKind, NodeEvent};
use meshd_actors::libp2p::Multiaddr;
use meshd_actors::node::{Node, NodeChild};
use meshd_actors::overlay::identity::OVERLAY_KEY_FILE;
use meshd_actors::shared::status::OverlayStatus;

const WAIT: Duration = Duration::from_secs(30);

fn overlay_config(dir: &std::path::Path, bootstrap: Vec<Multiaddr>) -> NodeConfig {
    let mut c = common::config(dir);
    c.overlay.enabled = true;
    c.overlay.listen = vec![
        "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
    ];
    c.overlay.bootstrap = bootstrap;
    c
}

async fn status_of(
    node: &Node,
    what: &str,
    pred: impl Fn(&OverlayStatus) -> bool,
) -> OverlayStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some((status, _)) = node.overlay() {
            if pred(&status) {
                return status;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node's overlay address on `transport` (`tcp` or `quic-v1`), with its peer id.
async fn address_of(node: &Node, transport: &str) -> Multiaddr {
    let status = status_of(node, "a listen address", |s| {
        s.listen_addrs.iter().any(|a| a.contains(transport))
    })
    .await;
    let addr = status
        .listen_addrs
        .iter()
        .find(|a| a.contains(transport))
        .unwrap();
    format!("{addr}/p2p/{}", status.peer_id).parse().unwrap()
}

async fn connected_to(node: &Node, peer_id: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some((_, peers)) = node.overlay() {
            if peers.iter().any(|p| p.peer_id == peer_id) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for a connection to {peer_id}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_through_a_bootstrap_peer_and_find_each_other_by_the_dht() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Node::start(overlay_config(dirs[0].path(), vec![]))
        .await
        .unwrap();
    let a_tcp = address_of(&a, "/tcp/").await;
    let a_quic = address_of(&a, "quic-v1").await;
    // B joins over TCP, C over QUIC; neither is told of the other.
    let b = Node::start(overlay_config(dirs[1].path(), vec![a_tcp]))
        .await
        .unwrap();
    let c = Node::start(overlay_config(dirs[2].path(), vec![a_quic.clone()]))
        .await
        .unwrap();
    let a_id = status_of(&a, "A's id", |_| true).await.peer_id;
    let b_id = status_of(&b, "B's id", |_| true).await.peer_id;
    let c_id = status_of(&c, "C's id", |_| true).await.peer_id;
    connected_to(&b, &a_id).await;
    connected_to(&c, &a_id).await;
    // Kademlia's bootstrap walk from each brings B and C into each other's tables.
    status_of(&c, "C's routing table to hold A and B", |s| {
        s.routing_table >= 2
    })
    .await;
    status_of(&b, "B's routing table to hold A and C", |s| {
        s.routing_table >= 2
    })
    .await;
    let (_, a_peers) = a.overlay().unwrap();
    let via_quic = a_peers.iter().find(|p| p.peer_id == c_id).unwrap();
    assert!(via_quic.address.contains("quic-v1"), "{via_quic:?}");
    assert_eq!(via_quic.found_by, "inbound");
    let (_, b_peers) = b.overlay().unwrap();
    let row = b_peers.iter().find(|p| p.peer_id == a_id).unwrap();
    assert_eq!(row.found_by, "bootstrap");
    common::wait_until("Identify to name A's agent", WAIT, || {
        b.overlay().is_some_and(|(_, peers)| {
            peers.iter().any(|p| {
                p.peer_id == a_id && p.agent.as_deref().is_some_and(|a| a.contains("meshd"))
            })
        })
    })
    .await;
    assert_ne!(b_id, c_id);
    for n in [&a, &b, &c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_crosses_the_overlay_both_ways() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(overlay_config(da.path(), vec![]))
        .await
        .unwrap();
    let a_addr = address_of(&a, "/tcp/").await;
    let b = Node::start(overlay_config(db.path(), vec![a_addr]))
        .await
        .unwrap();
    let a_id = status_of(&a, "A's id", |_| true).await.peer_id;
    connected_to(&b, &a_id).await;
    const TOPIC: &str = "meshd/regtest/test";
    assert!(a.overlay_subscribe(TOPIC));
    assert!(b.overlay_subscribe(TOPIC));
    status_of(&a, "A's topic", |s| s.topics.iter().any(|t| t == TOPIC)).await;
    for (from, to, data) in [(&a, &b, b"from a".to_vec()), (&b, &a, b"from b".to_vec())] {
        let mut events = to.subscribe_to(&[EventKind::OverlayGossipReceived]);
        let want = data.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let deadline = Instant::now() + WAIT;
        // The mesh forms at GossipSub's heartbeat: publish until a message arrives.
        'sent: loop {
            assert!(Instant::now() < deadline, "gossip never arrived");
            from.overlay_publish(TOPIC, data.clone());
            let until = Instant::now() + Duration::from_millis(500);
            while let Ok(Ok(e)) = tokio::time::timeout_at(until.into(), events.recv()).await {
                if let NodeEvent::OverlayGossipReceived {
                    topic,
                    data_hex,
                    size,
                    from: author,
                } = &e.event
                {
                    assert_eq!(topic, TOPIC);
                    assert_eq!(*size, data.len());
                    assert!(author.is_some(), "signed messages name their author");
                    if *data_hex == want {
                        break 'sent;
                    }
                }
            }
        }
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_survives_a_kill_of_the_actor_and_a_restart_of_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(overlay_config(dir.path(), vec![]))
        .await
        .unwrap();
    let first = status_of(&node, "an overlay", |s| !s.listen_addrs.is_empty()).await;
    let key = dir.path().join(OVERLAY_KEY_FILE);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let actor = node.child(NodeChild::Overlay).await.expect("overlay actor");
    let old_id = actor.get_id();
    actor.kill();
    let deadline = Instant::now() + WAIT;
    while node
        .child(NodeChild::Overlay)
        .await
        .is_none_or(|c| c.get_id() == old_id)
    {
        assert!(Instant::now() < deadline, "no new Overlay actor");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A new Swarm (new ports: port 0), not the dead one's status.
    let again = status_of(&node, "the overlay again", |s| {
        !s.listen_addrs.is_empty() && s.listen_addrs != first.listen_addrs
    })
    .await;
    assert_eq!(again.peer_id, first.peer_id);
    // The new actor's command queue is in place (the old one's end did not clear it).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(node.overlay_subscribe("meshd/regtest/after-a-kill"));
    status_of(&node, "the subscription", |s| {
        s.topics.iter().any(|t| t == "meshd/regtest/after-a-kill")
    })
    .await;
    node.shutdown().await;
    assert!(node.overlay().is_none(), "no status once stopped");

    let node = Node::start(overlay_config(dir.path(), vec![]))
        .await
        .unwrap();
    let restarted = status_of(&node, "the overlay after a restart", |_| true).await;
    assert_eq!(restarted.peer_id, first.peer_id);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_overlay_runs_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(common::config(dir.path())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(node.overlay().is_none());
    assert!(node.child(NodeChild::Overlay).await.is_none());
    assert!(!node.overlay_subscribe("x"));
    assert!(!dir.path().join(OVERLAY_KEY_FILE).exists());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlay_port_in_use_is_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut config = overlay_config(dir.path(), vec![]);
    config.overlay.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()];
    let err = match Node::start(config.clone()).await {
        Ok(_) => panic!("the node started with its overlay port in use"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("overlay cannot listen"), "{err}");
    drop(taken);
    // The data dir is free again, and with the port free the node starts.
    let node = Node::start(config)
        .await
        .expect("starts once the port is free");
    status_of(&node, "the overlay", |s| !s.listen_addrs.is_empty()).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitcoin_peers_tell_each_other_their_overlay_and_their_overlays_meet() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(overlay_config(da.path(), vec![]))
        .await
        .unwrap();
    let b = Node::start(overlay_config(db.path(), vec![]))
        .await
        .unwrap();
    let a_id = status_of(&a, "A's overlay", |s| !s.listen_addrs.is_empty())
        .await
        .peer_id;
    let b_id = status_of(&b, "B's overlay", |s| !s.listen_addrs.is_empty())
        .await
        .peer_id;
    // No bootstrap: only the Bitcoin connection brings them together.
    assert!(b.connect(a.listen_addrs()[0], true).await);
    let peers = common::wait_peers(&b, "B's Bitcoin peer to name A's overlay", |p| {
        p.iter()
            .any(|p| p.overlay_peer_id.as_deref() == Some(a_id.as_str()))
    })
    .await;
    assert_eq!(peers.len(), 1);
    common::wait_peers(&a, "A's inbound peer to name B's overlay", |p| {
        p.iter()
            .any(|p| p.overlay_peer_id.as_deref() == Some(b_id.as_str()))
    })
    .await;
    connected_to(&b, &a_id).await;
    connected_to(&a, &b_id).await;
    let (_, rows) = b.overlay().unwrap();
    let row = rows.iter().find(|r| r.peer_id == a_id).unwrap();
    // Only the hints could bring them together (no bootstrap, no mDNS): B dialled on its
    // hint, or A on its own first, or Kademlia, which the hint gave A's address, did.
    assert!(
        ["hint", "inbound", "dht"].contains(&row.found_by),
        "{row:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_an_overlay_tells_nothing_and_ignores_nothing() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(overlay_config(da.path(), vec![]))
        .await
        .unwrap();
    status_of(&a, "A's overlay", |s| !s.listen_addrs.is_empty()).await;
    let b = Node::start(common::config(db.path())).await.unwrap();
    assert!(b.connect(a.listen_addrs()[0], true).await);
    // B hears A's overlayaddr (it knows the message) but runs no overlay to dial it with.
    let peers = common::wait_peers(&b, "the handshake", |p| {
        p.iter().any(|p| p.overlay_peer_id.is_some())
    })
    .await;
    assert_eq!(peers.len(), 1);
    let a_peers = common::wait_peers(&a, "A's side", |p| !p.is_empty()).await;
    assert!(
        a_peers[0].overlay_peer_id.is_none(),
        "B has no overlay to tell"
    );
    assert!(b.overlay().is_none());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlayaddr_comes_before_verack_to_a_70016_peer_and_a_late_one_is_dropped() {
    use bitcoin::p2p::message::NetworkMessage;
    use common::{AsyncPeer, Seen};
    use meshd_actors::wire::Message;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(overlay_config(dir.path(), vec![]))
        .await
        .unwrap();
    let our_id = status_of(&node, "the overlay", |s| !s.listen_addrs.is_empty())
        .await
        .peer_id;
    // (The announcement is set with the status that first lists a listen address.)
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    p.send(common::version_message(0)).await;
    let (mut seen, mut told) = (Vec::new(), None);
    let deadline = Instant::now() + WAIT;
    while !seen.iter().any(|c| c == "verack") {
        assert!(Instant::now() < deadline, "no verack: {seen:?}");
        match p.recv(Duration::from_secs(5)).await {
            Seen::Msg(m) => {
                seen.push(m.command().to_string());
                match m {
                    Message::Network(NetworkMessage::Version(_)) => {
                        p.send(NetworkMessage::Verack).await
                    }
                    Message::OverlayAddr(a) => told = Some(a),
                    _ => {}
                }
            }
            other => panic!("handshake: {other:?}"),
        }
    }
    let told = told.unwrap_or_else(|| panic!("no overlayaddr before verack: {seen:?}"));
    assert_eq!(told.peer_id.to_string(), our_id);
    assert!(told
        .addrs
        .iter()
        .all(|a| a.to_string().starts_with("/ip4/127.0.0.1/")));
    // After verack it is negotiation out of turn: Core drops a late wtxidrelay, we drop this.
    let late = Message::OverlayAddr(told).encode(node.profile().magic);
    p.send_raw(&late).await;
    assert!(p.closed_within(Duration::from_secs(5)).await);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_announced_and_found_across_five_nodes_and_peers_cluster_by_them() {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let first = Node::start(overlay_config(dirs[0].path(), vec![]))
        .await
        .unwrap();
    let boot = address_of(&first, "/tcp/").await;
    let mut nodes = vec![first];
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let mut c = overlay_config(dir.path(), vec![boot.clone()]);
        if i == 3 {
            // One node serves something the others do not, and so stands apart.
            c.overlay.topics = (0..6).map(|n| format!("lab/special/{n}")).collect();
        }
        nodes.push(Node::start(c).await.unwrap());
    }
    let mut ids = Vec::new();
    for n in &nodes {
        ids.push(status_of(n, "an id", |_| true).await.peer_id);
    }
    let defaults = status_of(&nodes[1], "node 1's topics", |s| !s.provided.is_empty())
        .await
        .provided;
    for t in [
        "meshd/regtest",
        "meshd/regtest/blocks",
        "meshd/regtest/compact-blocks",
        "meshd/regtest/hints",
        "meshd/regtest/relay",
    ] {
        assert!(defaults.iter().any(|d| d == t), "{t} in {defaults:?}");
    }
    // Node 1 finds node 3 by its own topic: only through the DHT (they share no bootstrap
    // connection but through node 0).
    let deadline = Instant::now() + WAIT;
    loop {
        let found = nodes[1].overlay_find("lab/special/0").await.unwrap();
        if found.iter().any(|p| p.peer_id == ids[3]) {
            assert_eq!(found.len(), 1, "only node 3 serves it: {found:?}");
            break;
        }
        assert!(Instant::now() < deadline, "node 3 never found: {found:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A default topic: every other node serves it.
    let deadline = Instant::now() + WAIT;
    loop {
        let found = nodes[2].overlay_find("meshd/regtest/blocks").await.unwrap();
        let others: Vec<_> = ids.iter().filter(|id| **id != ids[2]).collect();
        if others
            .iter()
            .all(|id| found.iter().any(|p| &p.peer_id == *id))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every provider found: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Node 0 sees the others' topics (their GossipSub subscriptions) and clusters them:
    // nodes 1, 2 and 4 alike (and like node 0), node 3 apart.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, peers) = nodes[0].overlay().unwrap();
        let row = |i: usize| peers.iter().find(|p| p.peer_id == ids[i]);
        let ready = [1, 2, 3, 4]
            .iter()
            .all(|i| row(*i).is_some_and(|r| !r.topics.is_empty()));
        if ready {
            let (r1, r2, r3, r4) = (
                row(1).unwrap(),
                row(2).unwrap(),
                row(3).unwrap(),
                row(4).unwrap(),
            );
            assert_eq!(r1.cluster, r2.cluster);
            assert_eq!(r1.cluster, r4.cluster);
            assert_ne!(r1.cluster, r3.cluster);
            assert_eq!(r1.similarity, 1.0);
            assert!(r3.similarity < 0.7, "{}", r3.similarity);
            assert_eq!(status.clusters, 2);
            assert_eq!(status.cluster_threshold, 0.7);
            break;
        }
        assert!(Instant::now() < deadline, "topics never seen: {peers:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_peer_target_the_overlay_lets_the_most_crowded_cluster_thin() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut hub_config = overlay_config(dirs[0].path(), vec![]);
    hub_config.overlay.peer_target = 2;
    hub_config.overlay.prune_min_age = Duration::ZERO;
    let hub = Node::start(hub_config).await.unwrap();
    let boot = address_of(&hub, "/tcp/").await;
    status_of(&hub, "the hub", |_| true).await;
    let mut gone = hub.subscribe_to(&[EventKind::OverlayPeerDisconnected]);
    let mut spokes = Vec::new();
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let mut c = overlay_config(dir.path(), vec![]);
        if i == 3 {
            c.overlay.topics = (0..6).map(|n| format!("lab/odd/{n}")).collect();
        }
        let n = Node::start(c).await.unwrap();
        // Dialled by the spokes' operators: unprotected at the hub (inbound there).
        assert!(n.overlay_dial(boot.clone()));
        spokes.push(n);
    }
    let odd = status_of(&spokes[2], "the odd one", |_| true).await.peer_id;
    let alike: Vec<String> = [&spokes[0], &spokes[1]]
        .iter()
        .map(|n| n.overlay().unwrap().0.peer_id)
        .collect();
    // Three peers for a target of two: one of the two alike ones goes, never the only
    // member of its cluster.
    let dropped = loop {
        let event = tokio::time::timeout(WAIT, gone.recv())
            .await
            .expect("no prune")
            .unwrap();
        if let NodeEvent::OverlayPeerDisconnected { peer_id } = &event.event {
            break peer_id.clone();
        }
    };
    assert!(
        alike.contains(&dropped),
        "{dropped} is not one of the alike pair"
    );
    assert_ne!(dropped, odd);
    let (_, peers) = hub.overlay().unwrap();
    assert!(peers.iter().any(|p| p.peer_id == odd), "{peers:?}");
    hub.shutdown().await;
    for n in &spokes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_a_lab_a_peer_from_a_local_address_is_not_told_our_overlay() {
    use common::{AsyncPeer, Seen};
    let dir = tempfile::tempdir().unwrap();
    let mut config = overlay_config(dir.path(), vec![]);
    // As on a public network: loopback is not a place peers reach our overlay from (a
    // hand-made onion service forwards its peers from there).
    config.overlay.local_addrs = false;
    let node = Node::start(config).await.unwrap();
    status_of(&node, "the overlay", |s| !s.listen_addrs.is_empty()).await;
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    p.send(common::version_message(0)).await;
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !seen.iter().any(|c| c == "verack") {
        assert!(Instant::now() < deadline, "no verack: {seen:?}");
        match p.recv(Duration::from_secs(5)).await {
            Seen::Msg(m) => {
                let cmd = m.command().to_string();
                if cmd == "version" {
                    p.send(bitcoin::p2p::message::NetworkMessage::Verack).await;
                }
                seen.push(cmd);
            }
            other => panic!("handshake: {other:?}"),
        }
    }
    assert!(!seen.iter().any(|c| c == "overlayaddr"), "{seen:?}");
    node.shutdown().await;
}
