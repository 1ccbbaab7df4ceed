//! The onion service through a real `tor` daemon, started offline (`DisableNetwork 1`: no
//! circuit is built and nothing leaves the machine, but the control port still creates
//! onion services). Checked: SAFECOOKIE and password authentication, the service is made
//! (delivering to a listener of its own, whose peers are onion peers) and its key saved
//! (mode 0600), the address is advertised over addrv2, a restart reuses
//! the key (same onion address), the service is removed at shutdown, and a wrong password
//! leaves the node running without one.
//!
//! `tor` is installed by `scripts/install-test-deps.sh`; outside CI a missing one skips
//! with a notice, in CI it fails.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bitcoin::p2p::address::AddrV2;
use bitcoin::p2p::message::NetworkMessage;
use common::tor::PASSWORD;
use common::{config, AsyncPeer, Seen};
use meshd_actors::discovery::overlay::OverlayAddr;
use meshd_actors::node::Node;
use meshd_actors::wire::Message;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

async fn wait_onion(node: &Node, secs: u64) -> OverlayAddr {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(o) = node.onion_service() {
            return o.addr;
        }
        assert!(
            Instant::now() < deadline,
            "no onion service within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw peer asking for addrv2; returns the first addrv2 entries it gets within 10 s
/// (none: nothing was advertised to it).
async fn advertised_to_addrv2_peer(node: SocketAddr) -> Vec<AddrV2> {
    let mut p = AsyncPeer::connect(node).await.expect("connect");
    p.send(common::version_message(0)).await;
    p.send(NetworkMessage::SendAddrV2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match p
            .recv(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Seen::Msg(Message::Network(NetworkMessage::Version(_))) => {
                p.send(NetworkMessage::Verack).await
            }
            Seen::Msg(Message::Network(NetworkMessage::AddrV2(list))) => {
                return list.into_iter().map(|m| m.addr).collect()
            }
            Seen::Msg(_) => {}
            Seen::Timeout => return Vec::new(),
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// Asks tor, over our own control connection, whether a service id is known to it: after
/// DEL_ONION, adding the same key again succeeds (a live duplicate would be refused).
async fn tor_accepts_key_again(control: SocketAddr, key: &str) -> bool {
    let mut s = TcpStream::connect(control).await.unwrap();
    let cmd = format!(
        "AUTHENTICATE \"{PASSWORD}\"\r\nADD_ONION {key} Flags=DiscardPK Port=1,127.0.0.1:9\r\n"
    );
    s.write_all(cmd.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(s).lines();
    let mut answers = Vec::new();
    while answers.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("tor answers")
            .unwrap()
            .unwrap_or_default();
        if line.starts_with("250 ") || line.starts_with('5') {
            answers.push(line);
        }
    }
    answers[1].starts_with("250")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onion_service_is_made_advertised_kept_across_restarts_and_removed() {
    let Some(tor) = common::tor::tor_path() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let t = common::tor::Tor::start(&tor, dir.path());
    let nd = tempfile::tempdir().unwrap();
    let mut c = config(nd.path());
    c.tor_control = Some(t.control);
    let public: SocketAddr = "203.0.113.5:18444".parse().unwrap();
    c.external_addrs = vec![public];
    let node = Node::start(c.clone()).await.unwrap();
    let onion = wait_onion(&node, 30).await;
    let service = node.onion_service().unwrap();
    assert_eq!(service.port, node.profile().default_port);
    // Tor delivers to a loopback listener of its own: its peers are known as onion peers.
    assert!(service.target.ip().is_loopback());
    assert_ne!(service.target, node.listen_addrs()[0]);
    let _through_tor = common::handshaked(service.target).await;
    let _local = common::handshaked(node.listen_addrs()[0]).await;
    let peers = common::wait_peers(&node, "two inbound peers", |p| p.len() == 2).await;
    let networks: Vec<_> = {
        let mut n: Vec<_> = peers.iter().map(|p| p.network()).collect();
        n.sort();
        n
    };
    assert_eq!(
        networks,
        [
            meshd_actors::discovery::overlay::Network::Ipv4,
            meshd_actors::discovery::overlay::Network::Onion
        ]
    );

    // The key is saved, private, in Core's format.
    let key_path = nd.path().join(meshd_actors::tor::ONION_KEY_FILE);
    let key = std::fs::read_to_string(&key_path).unwrap();
    assert!(key.starts_with("ED25519-V3:"), "{key}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Advertised to a peer that came through Tor, alone: the onion is never linked to the
    // clearnet address (Core's GetLocalAddrForPeer), whichever way it is asked.
    let to_onion_peer = advertised_to_addrv2_peer(service.target).await;
    assert_eq!(to_onion_peer, [onion.to_addrv2()], "to an onion peer");
    let to_clearnet_peer = advertised_to_addrv2_peer(node.listen_addrs()[0]).await;
    assert_eq!(
        to_clearnet_peer,
        [AddrV2::Ipv4("203.0.113.5".parse().unwrap())],
        "to a clearnet peer"
    );

    // While the node holds it, tor refuses the same key to anyone else.
    assert!(!tor_accepts_key_again(t.control, &key).await);
    node.shutdown().await;
    // Removed at shutdown: the key is free again.
    assert!(
        tor_accepts_key_again(t.control, &key).await,
        "service still held after shutdown: {}",
        t.log()
    );

    // A restart reuses the key: the same address.
    let node = Node::start(c).await.unwrap();
    assert_eq!(wait_onion(&node, 30).await, onion);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_authentication_and_a_wrong_password() {
    let Some(tor) = common::tor::tor_path() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let t = common::tor::Tor::start(&tor, dir.path());

    let good = tempfile::tempdir().unwrap();
    let mut c = config(good.path());
    c.tor_control = Some(t.control);
    c.tor_password = Some(PASSWORD.into());
    let node = Node::start(c).await.unwrap();
    wait_onion(&node, 30).await;
    node.shutdown().await;

    // A wrong password: no service, and the node runs on (still accepting peers).
    let bad = tempfile::tempdir().unwrap();
    let mut c = config(bad.path());
    c.tor_control = Some(t.control);
    c.tor_password = Some("wrong".into());
    let node = Node::start(c).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(node.onion_service().is_none());
    assert!(!bad.path().join(meshd_actors::tor::ONION_KEY_FILE).exists());
    let mut peer = common::handshaked(node.listen_addrs()[0]).await;
    peer.send(NetworkMessage::Ping(7)).await;
    node.shutdown().await;
}
