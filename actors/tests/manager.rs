//! The Manager over real loopback sockets, in process: events, bans (CIDR, IPv6, automatic,
//! persisted), inbound slots and eviction, live config, bandwidth accuracy, restarts.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bitcoin::p2p::message::NetworkMessage;
use common::{config, wait_peers, wait_until, AsyncPeer};
use meshd_actors::config::ConfigUpdate;
use meshd_actors::events::{EventKind, NodeEvent};
use meshd_actors::node::Node;
use meshd_actors::peer::Direction;
use meshd_actors::shared::bans::parse_subnet;
use meshd_actors::shared::peers::PeerState;
use meshd_actors::wire::{Command, Message};

async fn next_of(stream: &mut meshd_actors::events::EventStream, kind: EventKind) -> NodeEvent {
    // Generous: under a loaded machine restarts and handshakes take longer; waits end early
    // when the event arrives.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.recv()).await {
            Ok(Ok(e)) if e.event.kind() == kind => return e.event.clone(),
            Ok(_) => {}
            Err(_) => panic!("no {kind:?} event"),
        }
    }
}

/// Ten frames with bad checksums: 10 points each, 100 is the threshold.
async fn send_bad_checksums(node: &Node, p: &mut AsyncPeer) {
    for i in 0..10u64 {
        let mut bytes =
            Message::Network(NetworkMessage::Ping(i)).encode(node.config().profile().magic);
        bytes[20] ^= 0xff;
        p.send_raw(&bytes).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_arrive_in_order_from_one_publisher() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(common::listen_only(da.path())).await.unwrap();
    let mut events = a.subscribe_to(&[
        EventKind::ConnectionEstablished,
        EventKind::HandshakeComplete,
        EventKind::ConnectionLost,
    ]);
    let mut cb = config(db.path());
    cb.connect = vec![a.listen_addrs()[0]];
    let b = Node::start(cb).await.unwrap();
    let kinds: Vec<EventKind> = [
        next_of(&mut events, EventKind::ConnectionEstablished).await,
        next_of(&mut events, EventKind::HandshakeComplete).await,
    ]
    .iter()
    .map(|e| e.kind())
    .collect();
    assert_eq!(
        kinds,
        [
            EventKind::ConnectionEstablished,
            EventKind::HandshakeComplete
        ]
    );
    b.shutdown().await;
    match next_of(&mut events, EventKind::ConnectionLost).await {
        NodeEvent::ConnectionLost {
            direction,
            reason_kind,
            ..
        } => {
            assert_eq!(direction, Direction::Inbound);
            assert_eq!(reason_kind, "peer_closed");
        }
        e => panic!("{e:?}"),
    }
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_by_cidr_and_ipv6_refuse_before_reading_disconnect_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.listen = vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
    let node = Node::start(c.clone()).await.unwrap();
    let (v4, v6) = (node.listen_addrs()[0], node.listen_addrs()[1]);
    let mut bans = node.subscribe_to(&[EventKind::PeerBanned, EventKind::PeerUnbanned]);

    // A connected peer inside a new CIDR ban is disconnected.
    let mut p = AsyncPeer::connect(v4).await.unwrap();
    assert!(p.handshake().await);
    node.ban(
        parse_subnet("127.0.0.0/8").unwrap(),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert!(p.closed_within(Duration::from_secs(5)).await);
    assert!(
        matches!(next_of(&mut bans, EventKind::PeerBanned).await, NodeEvent::PeerBanned { ref subnet, .. } if subnet == "127.0.0.0/8")
    );

    // A new connection from the banned range gets no byte at all.
    let mut q = AsyncPeer::connect(v4).await.unwrap();
    assert!(q.closed_within(Duration::from_secs(5)).await);
    assert_eq!(q.received, 0, "banned peer must not get our version");

    // IPv6: ::1 is a different family; ban it too, then lift it.
    let mut r = AsyncPeer::connect(v6).await.unwrap();
    assert!(r.handshake().await);
    node.ban(parse_subnet("::1").unwrap(), Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(r.closed_within(Duration::from_secs(5)).await);
    let mut s = AsyncPeer::connect(v6).await.unwrap();
    assert!(s.closed_within(Duration::from_secs(5)).await);
    assert!(node.unban(parse_subnet("::1/128").unwrap()).await);
    let mut t = AsyncPeer::connect(v6).await.unwrap();
    assert!(t.handshake().await, "unbanned address is accepted again");

    // Never dialled: a persistent target in a banned range is not connected.
    assert!(
        node.connect(SocketAddr::from(([127, 0, 0, 9], 1)), true)
            .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!node
        .peers()
        .iter()
        .any(|p| p.direction == Direction::Outbound));

    let listed: Vec<String> = node
        .bans()
        .await
        .iter()
        .map(|b| b.subnet.to_string())
        .collect();
    assert_eq!(listed, ["127.0.0.0/8"]);
    node.shutdown().await;

    // The ban list was saved and is reloaded.
    let again = Node::start(c).await.unwrap();
    let listed: Vec<String> = again
        .bans()
        .await
        .iter()
        .map(|b| b.subnet.to_string())
        .collect();
    assert_eq!(listed, ["127.0.0.0/8"]);
    again.shutdown().await;
}

/// Core's banman since 0.20 (p2p_disconnect_ban, p2p_eviction): a score past the threshold
/// discourages the address, in memory, instead of banning it. Nothing is written to
/// bans.dat; the address may come back while a slot is free, and takes no one's slot when
/// they are full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaviour_past_the_threshold_discourages_and_never_bans() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.ban_local_peers = true;
    c.slots.inbound = 2;
    let node = Node::start(c).await.unwrap();
    let addr = node.listen_addrs()[0];
    let (bad, other, third) = (
        "127.0.0.2".parse().unwrap(),
        "127.0.0.3".parse().unwrap(),
        "127.0.0.4".parse().unwrap(),
    );
    let mut events = node.subscribe_to(&[EventKind::PeerDiscouraged, EventKind::PeerBanned]);
    let mut p = AsyncPeer::connect_from(bad, addr).await.unwrap();
    assert!(p.handshake().await);
    send_bad_checksums(&node, &mut p).await;
    assert!(p.closed_within(Duration::from_secs(5)).await);
    match next_of(&mut events, EventKind::PeerDiscouraged).await {
        NodeEvent::PeerDiscouraged { subnet, detail } => {
            assert_eq!(subnet, "127.0.0.2/32");
            assert!(detail.contains("bad_checksum"), "{detail}");
        }
        e => panic!("{e:?}"),
    }
    assert!(
        node.bans().await.is_empty(),
        "a discouragement is not a ban"
    );
    // A free slot: the discouraged address may take it (Core's AcceptConnection).
    let mut q = AsyncPeer::connect_from(bad, addr).await.unwrap();
    assert!(
        q.handshake().await,
        "a discouraged address is refused a free slot"
    );
    let mut r = AsyncPeer::connect_from(other, addr).await.unwrap();
    assert!(r.handshake().await);
    // Full: the discouraged address is refused at once.
    let mut s = AsyncPeer::connect_from(bad, addr).await.unwrap();
    assert!(s.closed_within(Duration::from_secs(5)).await);
    assert_eq!(s.received, 0);
    let mut t = AsyncPeer::connect_from(third, addr).await.unwrap();
    assert!(t.closed_within(Duration::from_secs(5)).await);
    // The two admitted stay.
    assert!(!q.closed_within(Duration::from_millis(300)).await);
    assert!(!r.closed_within(Duration::from_millis(300)).await);
    // No ban event came with it.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), events.recv())
            .await
            .is_err()
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_misbehaving_peers_are_disconnected_but_not_banned_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let addr = node.listen_addrs()[0];
    let mut p = AsyncPeer::connect(addr).await.unwrap();
    assert!(p.handshake().await);
    let mut header = node.config().profile().magic.to_bytes().to_vec();
    header.extend_from_slice(&Command::new("block").unwrap().to_wire());
    header.extend_from_slice(&4_000_001u32.to_le_bytes());
    header.extend_from_slice(&[0; 4]);
    p.send_raw(&header).await;
    assert!(p.closed_within(Duration::from_secs(5)).await);
    assert!(node.bans().await.is_empty());
    let mut q = AsyncPeer::connect(addr).await.unwrap();
    assert!(q.handshake().await);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inbound_flood_beyond_the_slots_evicts_or_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.slots.inbound = 24;
    let node = Node::start(c).await.unwrap();
    let addr = node.listen_addrs()[0];
    let mut evictions = node.subscribe_to(&[EventKind::PeerEvicted]);
    let mut held = common::handshaked_peers(addr, 24).await;
    assert_eq!(node.slots().0.inbound, 24);
    // All 24 are in the local network group; 20 are protected, 2 more by uptime: the next
    // newcomers evict the newest of the rest.
    for _ in 0..6 {
        let mut p = AsyncPeer::connect(addr).await.unwrap();
        assert!(p.handshake().await, "newcomer admitted by eviction");
        held.push(p);
    }
    assert!(matches!(
        next_of(&mut evictions, EventKind::PeerEvicted).await,
        NodeEvent::PeerEvicted { .. }
    ));
    let (used, limits) = node.slots();
    assert_eq!(used.inbound, 24);
    assert!(used.inbound <= limits.inbound);
    node.shutdown().await;
}

/// Core's AcceptConnection: when the inbound slots are full, a newcomer may evict a peer,
/// but a discouraged address may not: it is refused where another address evicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discouraged_address_never_takes_a_slot_by_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.ban_local_peers = true;
    c.slots.inbound = 24;
    let node = Node::start(c).await.unwrap();
    let addr = node.listen_addrs()[0];
    let bad: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut events = node.subscribe_to(&[EventKind::PeerDiscouraged]);
    let mut p = AsyncPeer::connect_from(bad, addr).await.unwrap();
    assert!(p.handshake().await);
    send_bad_checksums(&node, &mut p).await;
    assert!(p.closed_within(Duration::from_secs(5)).await);
    next_of(&mut events, EventKind::PeerDiscouraged).await;
    // Fill every slot from one other address: 20 protected, 2 more by uptime, 2 evictable.
    let _held = common::handshaked_peers(addr, 24).await;
    assert_eq!(node.slots().0.inbound, 24);
    let mut refused = AsyncPeer::connect_from(bad, addr).await.unwrap();
    assert!(refused.closed_within(Duration::from_secs(5)).await);
    assert_eq!(refused.received, 0, "a discouraged address evicted a peer");
    let mut newcomer = AsyncPeer::connect(addr).await.unwrap();
    assert!(
        newcomer.handshake().await,
        "a newcomer from elsewhere evicts as usual"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_nobody_evictable_a_new_inbound_peer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.slots.inbound = 5;
    let node = Node::start(c).await.unwrap();
    let addr = node.listen_addrs()[0];
    // Held open for the rest of the test: they fill every inbound slot.
    let _held = common::handshaked_peers(addr, 5).await;
    let mut late = AsyncPeer::connect(addr).await.unwrap();
    assert!(late.closed_within(Duration::from_secs(5)).await);
    assert_eq!(late.received, 0);
    assert_eq!(node.slots().0.inbound, 5);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_config_shrinks_inbound_and_reaches_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let addr = node.listen_addrs()[0];
    let mut held = common::handshaked_peers(addr, 25).await;
    wait_peers(&node, "25 connected", |p| {
        p.len() == 25 && p.iter().all(|x| x.state == PeerState::Connected)
    })
    .await;
    let mut lost = node.subscribe_to(&[EventKind::ConnectionLost]);
    let update = ConfigUpdate {
        max_inbound: Some(22),
        ping_interval: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    node.update_config(update).await.unwrap();
    for _ in 0..3 {
        match next_of(&mut lost, EventKind::ConnectionLost).await {
            NodeEvent::ConnectionLost { reason_kind, .. } => {
                assert_eq!(reason_kind, "slot_limit_lowered")
            }
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(node.slots().0.inbound, 22);
    // The shorter ping interval reached the live connections: pings now come every 200 ms.
    let mut pinged = 0;
    for p in held.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match p.recv(Duration::from_millis(500)).await {
                common::Seen::Msg(Message::Network(NetworkMessage::Ping(n))) => {
                    p.send(NetworkMessage::Pong(n)).await;
                    pinged += 1;
                }
                common::Seen::Closed => break,
                _ => {}
            }
        }
        if pinged >= 10 {
            break;
        }
    }
    assert!(pinged >= 10, "pings at the new interval: {pinged}");
    assert!(node
        .update_config(ConfigUpdate {
            ping_interval: Some(Duration::ZERO),
            ..Default::default()
        })
        .await
        .is_err());
    node.shutdown().await;
}

async fn upload_rate_over(rate: u64, global: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    if global {
        c.max_upload_rate = rate;
    } else {
        c.peer_max_upload_rate = rate;
    }
    let node = Node::start(c).await.unwrap();
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(p.handshake().await);
    let id = wait_peers(&node, "peer", |p| {
        p.len() == 1 && p[0].state == PeerState::Connected
    })
    .await[0]
        .id;
    // Queue far more than 12 s worth: 40 KB unknown-command messages.
    let filler = Message::Unknown {
        command: Command::new("filler").unwrap(),
        payload: vec![7u8; 40_000],
    };
    let total = rate * 16;
    for _ in 0..(total / 40_000) {
        assert!(node.send_to(id, filler.clone()).await);
    }
    // Let the socket buffers fill, then measure 10 s of steady state at the receiver.
    p.drain_for(Duration::from_secs(2)).await;
    let start = Instant::now();
    let got = p.drain_for(Duration::from_secs(10)).await;
    let measured = got as f64 / start.elapsed().as_secs_f64();
    node.shutdown().await;
    measured
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_upload_limit_is_accurate_within_5_percent_over_10_s() {
    let rate = 200_000;
    let measured = upload_rate_over(rate, true).await;
    let err = (measured - rate as f64).abs() / rate as f64;
    eprintln!(
        "bandwidth: measured {measured:.0} B/s for a limit of {rate} B/s ({:.2}% off)",
        err * 100.0
    );
    assert!(
        err < 0.05,
        "measured {measured:.0} B/s for a limit of {rate} B/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_connection_download_limit_is_accurate_within_5_percent_over_10_s() {
    let rate = 300_000u64;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.peer_max_download_rate = rate;
    let node = Node::start(c).await.unwrap();
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(p.handshake().await);
    let (mut rd, mut wr) = p.stream.into_split();
    // Writer: as fast as TCP lets it, unknown-command frames the node reads and ignores.
    let frame = Message::Unknown {
        command: Command::new("filler").unwrap(),
        payload: vec![9u8; 20_000],
    }
    .encode(node.config().profile().magic);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let deadline = Instant::now() + Duration::from_secs(14);
        while Instant::now() < deadline {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    // Reader: answer nothing, just keep our receive side empty.
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The peer table's byte counts move once per connection tick: sample right as they move,
    // so both ends of the window sit on a tick and the count matches the time.
    async fn next_update(node: &Node) -> (u64, Instant) {
        let bytes = || node.peers().first().map_or(0, |p| p.bytes_received);
        let start = bytes();
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = bytes();
            if now != start {
                return (now, Instant::now());
            }
        }
    }
    let (b0, t0) = next_update(&node).await;
    tokio::time::sleep(Duration::from_millis(9_900)).await;
    let (b1, t1) = next_update(&node).await;
    let measured = (b1 - b0) as f64 / (t1 - t0).as_secs_f64();
    let err = (measured - rate as f64).abs() / rate as f64;
    eprintln!(
        "bandwidth: measured {measured:.0} B/s for a limit of {rate} B/s ({:.2}% off)",
        err * 100.0
    );
    writer.abort();
    reader.abort();
    node.shutdown().await;
    assert!(
        err < 0.05,
        "measured {measured:.0} B/s for a limit of {rate} B/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_restarts_back_off_then_give_up_and_inbound_is_never_restarted() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let target = Node::start(common::listen_only(da.path())).await.unwrap();
    let taddr = target.listen_addrs()[0];
    let mut cb = config(db.path());
    cb.connect = vec![taddr];
    cb.restart.base_delay = Duration::from_millis(100);
    cb.restart.max_restarts = 3;
    cb.restart.window = Duration::from_secs(4);
    let node = Node::start(cb).await.unwrap();
    let mut ev = node.subscribe_to(&[
        EventKind::PeerRestarted,
        EventKind::PeerGaveUp,
        EventKind::HandshakeComplete,
    ]);
    next_of(&mut ev, EventKind::HandshakeComplete).await;
    let mut tev = target.subscribe_to(&[EventKind::ConnectionLost]);
    target.shutdown().await;
    drop(tev.recv());
    for attempt in 1..=3 {
        match next_of(&mut ev, EventKind::PeerRestarted).await {
            NodeEvent::PeerRestarted {
                addr, attempt: a, ..
            } => {
                assert_eq!(addr, taddr);
                assert_eq!(a, attempt);
            }
            e => panic!("{e:?}"),
        }
    }
    assert!(matches!(
        next_of(&mut ev, EventKind::PeerGaveUp).await,
        NodeEvent::PeerGaveUp { .. }
    ));
    let metrics = node.render_live_metrics();
    assert!(
        metrics.contains(&format!(
            "meshd_connection_restarts_total{{peer=\"{taddr}\"}} 3"
        )),
        "{metrics}"
    );

    // Bring the target back on the same address: once the window clears, it is dialled again.
    let mut ca = common::listen_only(da.path());
    ca.listen = vec![taddr];
    let target = Node::start(ca).await.unwrap();
    let mut tin = target.subscribe_to(&[EventKind::ConnectionLost]);
    next_of(&mut ev, EventKind::HandshakeComplete).await;
    // The target sees an inbound peer; when the dialler goes, the target does not dial back.
    node.shutdown().await;
    next_of(&mut tin, EventKind::ConnectionLost).await;
    wait_until("target has no peers", Duration::from_secs(5), || {
        target.peers().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        target.peers().is_empty(),
        "inbound connections are never restarted"
    );
    target.shutdown().await;
}

/// Core's manual connections have slots of their own (`MAX_ADDNODE_CONNECTIONS`, 8) outside
/// the automatic limits: with no outbound slot and a total of one, both `--connect` peers
/// are dialled and an inbound peer still takes the one slot of the total; the peers are
/// listed with their state as Core's getaddednodeinfo lists them. Before, manual peers
/// took outbound slots, and none were dialled with `max-outbound 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_peers_have_their_own_slots_outside_the_automatic_limits() {
    let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.slots.outbound = 0;
    c.slots.total = 1;
    c.connect = vec![a1, a2];
    // The raw peers speak v1 (manual peers are otherwise tried in v2 first).
    c.v2transport = false;
    let node = Node::start(c).await.unwrap();
    let (_p1, _p2) = tokio::join!(AsyncPeer::accept(&l1), AsyncPeer::accept(&l2));
    let _inbound = common::handshaked(node.listen_addrs()[0]).await;
    wait_until(
        "both manual peers and the inbound one",
        Duration::from_secs(10),
        || {
            let (used, _) = node.slots();
            used.manual == 2 && used.inbound == 1 && used.outbound == 0
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let added = loop {
        let added = node.added_nodes().await;
        if added.iter().filter(|n| n.connected).count() == 2 {
            break added;
        }
        assert!(Instant::now() < deadline, "{added:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut listed: Vec<String> = added.iter().map(|n| n.address.clone()).collect();
    let mut want = vec![a1.to_string(), a2.to_string()];
    listed.sort();
    want.sort();
    assert_eq!(listed, want);
    assert!(added
        .iter()
        .all(|n| n.kind == "connect" && n.peer.is_some() && !n.retrying));
    node.shutdown().await;
}

/// Issue #25 item 7: a `download`-whitelisted peer is not paced, and never touches the
/// shared global bucket, so the global upload cap still holds for every other peer while it
/// transfers. Before, each of its writes refilled the shared bucket and the cap stopped
/// holding for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_peer_transferring_leaves_the_global_upload_cap_holding_for_the_others() {
    use tokio::io::AsyncReadExt;
    let rate = 200_000u64;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_upload_rate = rate;
    c.whitelist =
        vec![
            meshd_actors::shared::whitelist::WhitelistEntry::parse("download@127.0.0.2/32")
                .unwrap(),
        ];
    let node = Node::start(c).await.unwrap();
    let addr = node.listen_addrs()[0];
    let mut exempt = AsyncPeer::connect_from("127.0.0.2".parse().unwrap(), addr)
        .await
        .unwrap();
    assert!(exempt.handshake().await);
    let mut paced = AsyncPeer::connect_from("127.0.0.3".parse().unwrap(), addr)
        .await
        .unwrap();
    assert!(paced.handshake().await);
    let peers = wait_peers(&node, "both peers", |p| {
        p.len() == 2 && p.iter().all(|x| x.state == PeerState::Connected)
    })
    .await;
    let id_of = |ip: &str| {
        peers
            .iter()
            .find(|p| p.addr.ip().to_string() == ip)
            .map(|p| p.id)
            .unwrap()
    };
    let filler = Message::Unknown {
        command: Command::new("filler").unwrap(),
        payload: vec![7u8; 40_000],
    };
    // 12 MB for the exempt peer, read slowly so that it transfers all along; 16 s worth of
    // the cap for the paced one.
    for _ in 0..300 {
        assert!(node.send_to(id_of("127.0.0.2"), filler.clone()).await);
    }
    for _ in 0..(rate * 16 / 40_000) {
        assert!(node.send_to(id_of("127.0.0.3"), filler.clone()).await);
    }
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut got = 0u64;
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(200), exempt.stream.read(&mut buf))
                .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got += n as u64,
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        got
    });
    paced.drain_for(Duration::from_secs(1)).await;
    let start = Instant::now();
    let got = paced.drain_for(Duration::from_secs(6)).await;
    let measured = got as f64 / start.elapsed().as_secs_f64();
    let exempt_bytes = reader.await.unwrap();
    eprintln!("paced peer: {measured:.0} B/s under a cap of {rate} B/s; exempt peer: {exempt_bytes} bytes in 8 s");
    assert!(
        measured < rate as f64 * 1.05,
        "the global cap did not hold: {measured:.0} B/s for a cap of {rate} B/s"
    );
    assert!(
        exempt_bytes > rate * 8 * 2,
        "the download peer was paced: {exempt_bytes} bytes in 8 s"
    );
    node.shutdown().await;
}
