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
        ServiceFlags::NETWORK,
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
