//! Discovery over real sockets and a real DNS server (dnsmasq): a 10-node loopback mesh that
//! starts from one seed name, addr flooding under the rate limit, DNS failures.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::ServiceFlags;
use common::dnsmasq::Dnsmasq;
use common::{config, AsyncPeer};
use meshd_actors::node::Node;
use meshd_actors::peer::Direction;
use meshd_actors::shared::peers::PeerState;

fn skip(why: &str) {
    let ci = std::env::var("CI")
        .map(|v| !v.is_empty() && v != "false" && v != "0")
        .unwrap_or(false);
    assert!(!ci, "required test dependency missing in CI: {why}");
    eprintln!("\n!!! SKIPPED: {why} (scripts/install-test-deps.sh installs it)\n");
}

fn mesh_addr(net: u8, i: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, net, i), 18444))
}

/// An `addr` message of `addrs`, seen now, with NODE_NETWORK.
fn addr_message(addrs: impl IntoIterator<Item = SocketAddr>) -> NetworkMessage {
    let now = common::unix_now();
    NetworkMessage::Addr(
        addrs
            .into_iter()
            .map(|a| (now, Address::new(&a, ServiceFlags::NETWORK)))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_node_mesh_from_one_seed_name_fills_outbound_slots_and_learns_everyone() {
    let seeds: Vec<IpAddr> = (1..=3).map(|i| mesh_addr(1, i).ip()).collect();
    let Some(dns) = Dnsmasq::start(&[("seed.meshd.test", seeds)]) else {
        return skip("dnsmasq is not installed");
    };
    let dirs: Vec<_> = (0..10).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut c = config(dir.path());
        c.listen = vec![mesh_addr(1, i as u8 + 1)];
        c.dns_servers = vec![dns.addr];
        c.dns_seeds = vec!["seed.meshd.test".into()];
        nodes.push(Node::start(c).await.unwrap());
    }
    let addrs: Vec<SocketAddr> = (1..=10).map(|i| mesh_addr(1, i)).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut done = true;
        let mut report = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let outbound = n
                .peers()
                .iter()
                .filter(|p| p.direction == Direction::Outbound && p.state == PeerState::Connected)
                .count();
            let known: Vec<SocketAddr> = n.known_addresses().await.iter().map(|e| e.addr).collect();
            let knows_all = addrs
                .iter()
                .enumerate()
                .all(|(j, a)| j == i || known.contains(a));
            done &= outbound == 8 && knows_all;
            report.push(format!(
                "node {}: outbound {outbound}, knows {} ({})",
                i + 1,
                known.len(),
                n.peers().len()
            ));
        }
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mesh did not converge:\n{}",
            report.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_addr_flood_is_held_to_the_per_peer_rate() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.slots.outbound = 0;
    let node = Node::start(c).await.unwrap();
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(p.handshake().await);
    let now = common::unix_now();
    for round in 0..5u32 {
        let list: Vec<(u32, Address)> = (0..1000u32)
            .map(|i| {
                let ip = Ipv4Addr::from(0xcb00_0000u32 + (round << 16) + (i << 4) + 1);
                (
                    now,
                    Address::new(&SocketAddr::from((ip, 8333)), ServiceFlags::NETWORK),
                )
            })
            .collect();
        p.send(NetworkMessage::Addr(list)).await;
    }
    // An inbound peer we never asked gets one token plus 0.1 per second.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let known = node.known_addresses().await.len();
    assert!(
        (1..=2).contains(&known),
        "{known} addresses accepted from a flood of 5000"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_failures_are_counted_and_never_fatal() {
    let Some(dns) = Dnsmasq::start(&[("seed.meshd.test", vec![mesh_addr(3, 1).ip()])]) else {
        return skip("dnsmasq is not installed");
    };
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    // One name that does not exist, one that does: the second still counts.
    c.dns_servers = vec![dns.addr];
    c.dns_seeds = vec!["missing.meshd.test".into(), "seed.meshd.test".into()];
    let node = Node::start(c).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node
        .known_addresses()
        .await
        .iter()
        .any(|e| e.addr == mesh_addr(3, 1))
    {
        assert!(
            Instant::now() < deadline,
            "the live seed's answer never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.shutdown().await;

    // A DNS server that is not there: the node runs on.
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    c.dns_servers = vec![dead];
    c.dns_seeds = vec!["seed.meshd.test".into()];
    let node = Node::start(c).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(node.known_addresses().await.is_empty());
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(p.handshake().await, "node still serves peers");
    node.shutdown().await;
}

/// Core's p2p_getaddr_caching: a `getaddr` answer is cached per network and listener, so
/// two peers on one listener get the same sample and a peer on another listener (the onion
/// service's, in use) gets its own; a node's identities cannot be matched by their samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getaddr_answers_are_cached_per_listener() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.slots.outbound = 0;
    c.listen = vec![
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.2:0".parse().unwrap(),
    ];
    c.whitelist =
        vec![meshd_actors::shared::whitelist::WhitelistEntry::parse("addr@127.0.0.3").unwrap()];
    let node = Node::start(c).await.unwrap();
    let (first, second) = (node.listen_addrs()[0], node.listen_addrs()[1]);
    // Fill the book: 2,000 public addresses from a peer allowed to send them all.
    let mut feeder = AsyncPeer::connect_from("127.0.0.3".parse().unwrap(), first)
        .await
        .unwrap();
    assert!(feeder.handshake().await);
    for round in 0..2u32 {
        let addrs = (0..1000u32).map(|i| {
            let ip = Ipv4Addr::from(0x0b00_0000u32 + (round << 20) + (i << 8) + 1);
            SocketAddr::from((ip, 8333))
        });
        feeder.send(addr_message(addrs)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    // One source group fills a limited share of the new table (addrman).
    while node.known_addresses().await.len() < 300 {
        assert!(
            Instant::now() < deadline,
            "the book was not filled: {}",
            node.known_addresses().await.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    async fn sample(from: &str, to: SocketAddr) -> Vec<SocketAddr> {
        let mut p = AsyncPeer::connect_from(from.parse().unwrap(), to)
            .await
            .unwrap();
        assert!(p.handshake().await);
        p.send(NetworkMessage::GetAddr).await;
        let mut got = p
            .wait_for(Duration::from_secs(10), |m| match m {
                // Not the node's advertisement of itself (one address).
                NetworkMessage::Addr(list) if list.len() > 10 => Some(
                    list.iter()
                        .filter_map(|(_, a)| a.socket_addr().ok())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .await
            .expect("an addr answer");
        got.sort();
        got
    }
    let a = sample("127.0.0.4", first).await;
    let b = sample("127.0.0.5", first).await;
    let other = sample("127.0.0.6", second).await;
    assert!(a.len() > 50, "{} addresses", a.len());
    assert_eq!(a, b, "one listener, one cached answer");
    assert_ne!(a, other, "another listener shares the answer");
    node.shutdown().await;
}

/// Core's addrman (p2p_addr_relay): gossip stores routable addresses only, so no outbound
/// slot is ever spent on the operator's LAN or on a localhost service; the public one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_of_private_and_local_addresses_is_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.slots.outbound = 0;
    // As on a public network: no local mesh.
    c.distinct_local_groups = false;
    c.whitelist =
        vec![meshd_actors::shared::whitelist::WhitelistEntry::parse("addr@127.0.0.1").unwrap()];
    let node = Node::start(c).await.unwrap();
    let mut p = AsyncPeer::connect(node.listen_addrs()[0]).await.unwrap();
    assert!(p.handshake().await);
    let gossip = [
        "10.0.0.5:8333",
        "192.168.1.2:8333",
        "127.0.0.1:22",
        "169.254.7.7:8333",
        "100.64.1.1:8333",
        "[fd00::1]:8333",
        "203.0.113.9:8333",
    ];
    p.send(addr_message(gossip.iter().map(|a| a.parse().unwrap())))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.known_addresses().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the public address was not stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let known: Vec<String> = node
        .known_addresses()
        .await
        .iter()
        .map(|e| e.addr.to_string())
        .collect();
    assert_eq!(known, ["203.0.113.9:8333"]);
    node.shutdown().await;
}
