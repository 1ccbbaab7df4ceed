//! Outbound connections through SOCKS5 proxies over real loopback sockets.
//!
//! - microsocks (Debian's): meshd nodes reach each other through it, without and with
//!   username/password authentication; wrong credentials and a proxy that is down give
//!   `proxy_auth_failed` and `proxy_unreachable`.
//! - `tests/peers/socks5_proxy.py` (our own, standard library): it logs the credentials of
//!   each request, so stream isolation (fresh random credentials per connection) is checked
//!   from its log; it resolves names only it knows, standing in for Tor and onion names, so
//!   an onion address gossiped to meshd over addrv2 is kept, relayed to addrv2 peers only,
//!   dialled *by name* through the proxy, shown in full, and survives a restart; its hostile
//!   modes (wrong version, closed mid-handshake, truncated address) give typed errors.
//!
//! - microsocks in a mount namespace of its own, with its own `/etc/hosts` (root): an onion
//!   name that only the proxy can resolve, dialled by name end to end through a proxy that
//!   is not ours (`--connect NAME.onion:PORT`).
//!
//! microsocks and python3 are installed by `scripts/install-test-deps.sh`; outside CI a
//! missing one skips with a notice, in CI it fails.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bitcoin::p2p::address::{AddrV2, AddrV2Message};
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::ServiceFlags;
use common::{config, AsyncPeer, Seen};
use meshd_actors::config::ProxyConfig;
use meshd_actors::events::{EventKind, EventStream, NodeEvent};
use meshd_actors::node::Node;
use meshd_actors::shared::overlay::{Network, OverlayAddr};
use meshd_actors::shared::peers::{PeerInfo, PeerState};
use meshd_actors::wire::Message;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn connectable(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "proxy on {port} never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The microsocks binary, or a skip (a failure in CI).
fn microsocks_path() -> Option<PathBuf> {
    let found = ["/usr/bin/microsocks", "/usr/local/bin/microsocks"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        common::skip_or_fail("microsocks (Debian package microsocks), the SOCKS5 proxy");
    }
    found
}

/// microsocks on a free loopback port, with `user:password` if given.
async fn microsocks(auth: Option<(&str, &str)>) -> Option<(Child, u16)> {
    let path = microsocks_path()?;
    let port = free_port();
    let mut cmd = Command::new(path);
    cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
    if let Some((u, p)) = auth {
        cmd.args(["-u", u, "-P", p]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("microsocks");
    connectable(port).await;
    Some((child, port))
}

/// Our logging proxy (`tests/peers/socks5_proxy.py`) with `args`; its log goes to `log`.
async fn logging_proxy(log: &Path, args: &[String]) -> Option<(Child, u16)> {
    if !std::process::Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        common::skip_or_fail("python3 (the logging SOCKS5 proxy)");
        return None;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/socks5_proxy.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg("--log")
        .arg(log)
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("proxy started")
        .expect("read")
        .expect("a port line")
        .trim()
        .parse()
        .expect("a port");
    Some((child, port))
}

fn proxy_at(port: u16, credentials: Option<(&str, &str)>) -> ProxyConfig {
    ProxyConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
    }
}

fn connected(peers: &[PeerInfo]) -> Vec<&PeerInfo> {
    peers
        .iter()
        .filter(|p| p.state == PeerState::Connected)
        .collect()
}

/// The reason kind of the next failed or lost connection.
async fn next_failure(events: &mut EventStream, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Ok(e)) => match &e.event {
                NodeEvent::ConnectionLost { reason_kind, .. }
                | NodeEvent::ConnectionFailed { reason_kind, .. } => return reason_kind.clone(),
                _ => {}
            },
            other => panic!("no failure within {secs} s: {other:?}"),
        }
    }
}

async fn listener_node(dir: &Path) -> Node {
    let mut c = config(dir);
    c.slots.outbound = 0;
    Node::start(c).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_each_other_through_microsocks_with_and_without_auth() {
    let Some((_plain, plain_port)) = microsocks(None).await else {
        return;
    };
    let Some((_auth, auth_port)) = microsocks(Some(("meshd", "s3cret"))).await else {
        return;
    };
    let db = tempfile::tempdir().unwrap();
    let b = listener_node(db.path()).await;
    let target = b.listen_addrs()[0];

    for (port, credentials) in [(plain_port, None), (auth_port, Some(("meshd", "s3cret")))] {
        let da = tempfile::tempdir().unwrap();
        let mut ca = config(da.path());
        ca.connect = vec![target];
        ca.proxy = Some(proxy_at(port, credentials));
        let a = Node::start(ca).await.unwrap();
        let peers =
            common::wait_peers(&a, "a peer through the proxy", |p| connected(p).len() == 1).await;
        assert_eq!(peers[0].address(), target.to_string());
        assert_eq!(peers[0].network(), Network::Ipv4);
        // The connection B sees comes from the proxy's socket, not from A's listener.
        assert!(connected(&b.peers())
            .iter()
            .all(|p| a.listen_addrs()[0] != p.addr));
        a.shutdown().await;
    }

    // Wrong credentials: a typed failure, and restarts as for any failed connect.
    let da = tempfile::tempdir().unwrap();
    let mut ca = config(da.path());
    ca.connect = vec![target];
    ca.proxy = Some(proxy_at(auth_port, Some(("meshd", "wrong"))));
    let a = Node::start(ca).await.unwrap();
    let mut events = a.subscribe_to(&[EventKind::ConnectionFailed, EventKind::ConnectionLost]);
    assert_eq!(next_failure(&mut events, 15).await, "proxy_auth_failed");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_is_down_is_a_typed_connect_failure() {
    let da = tempfile::tempdir().unwrap();
    let mut ca = config(da.path());
    ca.connect = vec!["127.0.0.1:9".parse().unwrap()];
    ca.proxy = Some(proxy_at(free_port(), None));
    let a = Node::start(ca).await.unwrap();
    let mut events = a.subscribe_to(&[EventKind::ConnectionFailed, EventKind::ConnectionLost]);
    assert_eq!(next_failure(&mut events, 15).await, "proxy_unreachable");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_gets_its_own_random_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("proxy.log");
    let Some((_proxy, port)) = logging_proxy(&log, &[]).await else {
        return;
    };
    let (db, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (b, c) = (
        listener_node(db.path()).await,
        listener_node(dc.path()).await,
    );
    let da = tempfile::tempdir().unwrap();
    let mut ca = config(da.path());
    ca.connect = vec![b.listen_addrs()[0], c.listen_addrs()[0]];
    ca.proxy = Some(proxy_at(port, None));
    let a = Node::start(ca).await.unwrap();
    common::wait_peers(&a, "two peers through the proxy", |p| {
        connected(p).len() == 2
    })
    .await;
    // One more connection to B, after a disconnect: isolated again.
    let first = connected(&a.peers())[0].id;
    assert!(a.disconnect(first).await);
    common::wait_peers(&a, "the redial", |p| {
        connected(p).len() == 2 && p.iter().all(|x| x.id != first)
    })
    .await;
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.len() >= 3, "{records:?}");
    let creds: std::collections::HashSet<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["user"].as_str().expect("a username").to_string(),
                r["password"].as_str().expect("a password").to_string(),
            )
        })
        .collect();
    assert_eq!(
        creds.len(),
        records.len(),
        "credentials reused: {records:?}"
    );

    // With --proxy-randomize false no credentials are offered.
    let dd = tempfile::tempdir().unwrap();
    let mut cd = config(dd.path());
    cd.connect = vec![b.listen_addrs()[0]];
    cd.proxy = Some(proxy_at(port, None));
    cd.proxy_randomize = false;
    let d = Node::start(cd).await.unwrap();
    common::wait_peers(&d, "a peer", |p| !connected(p).is_empty()).await;
    let logged = std::fs::read_to_string(&log).unwrap();
    let anonymous = logged
        .lines()
        .filter(|l| l.contains("\"user\": null"))
        .count();
    assert!(anonymous >= 1, "{logged}");
    for n in [a, b, c, d] {
        n.shutdown().await;
    }
}

/// A raw peer that asks for addrv2 (BIP155) in its handshake.
async fn addrv2_peer(addr: SocketAddr) -> AsyncPeer {
    let mut p = AsyncPeer::connect(addr).await.expect("connect");
    p.send(common::version_message(0)).await;
    p.send(NetworkMessage::SendAddrV2).await;
    let (mut version, mut verack) = (false, false);
    while !(version && verack) {
        match p.recv(Duration::from_secs(10)).await {
            Seen::Msg(Message::Network(NetworkMessage::Version(_))) => {
                version = true;
                p.send(NetworkMessage::Verack).await;
            }
            Seen::Msg(Message::Network(NetworkMessage::Verack)) => verack = true,
            Seen::Msg(_) => {}
            other => panic!("handshake: {other:?}"),
        }
    }
    p
}

/// Reads until an `addrv2` with `want` arrives (answering pings); false at the timeout.
async fn receives_addrv2(p: &mut AsyncPeer, want: &AddrV2, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match p
            .recv(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Seen::Msg(Message::Network(NetworkMessage::AddrV2(list))) => {
                if list.iter().any(|m| &m.addr == want) {
                    return true;
                }
            }
            Seen::Msg(Message::Network(NetworkMessage::Addr(list))) => {
                assert!(list.len() < 1000, "v1 addr with {} entries", list.len());
            }
            Seen::Msg(Message::Network(NetworkMessage::Ping(n))) => {
                p.send(NetworkMessage::Pong(n)).await
            }
            Seen::Msg(_) => {}
            Seen::Closed | Seen::Timeout => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gossiped_onion_address_is_kept_relayed_and_dialled_by_name_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let b = listener_node(db.path()).await;
    // An onion name for B that only the proxy can resolve.
    let onion = OverlayAddr::Onion(rand::random());
    let port = b.listen_addrs()[0].port();
    let log = dir.path().join("proxy.log");
    let map = format!("{}=127.0.0.1:{port}", onion.host());
    let Some((_proxy, proxy_port)) = logging_proxy(&log, &["--map".into(), map]).await else {
        return;
    };

    let da = tempfile::tempdir().unwrap();
    let mut ca = config(da.path());
    ca.onion_proxy = Some(proxy_at(proxy_port, None));
    // IPv4 stays direct (only --onion is set) and there is nothing else to dial.
    ca.slots.outbound = 1;
    let a = Node::start(ca.clone()).await.unwrap();
    let a_addr = a.listen_addrs()[0];

    // Two listeners: one asked for addrv2, one did not.
    let mut v2_listener = addrv2_peer(a_addr).await;
    let mut v1_listener = common::handshaked(a_addr).await;
    let mut gossiper = addrv2_peer(a_addr).await;
    let now = common::unix_now();
    gossiper
        .send(NetworkMessage::AddrV2(vec![AddrV2Message {
            time: now,
            services: ServiceFlags::NETWORK | ServiceFlags::WITNESS,
            addr: onion.to_addrv2(),
            port,
        }]))
        .await;

    // Kept in the book under its name...
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a
        .known_addresses()
        .await
        .iter()
        .any(|e| e.overlay == Some(onion))
    {
        assert!(
            Instant::now() < deadline,
            "the onion address never reached the book"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...relayed to the addrv2 peer, never to the other...
    assert!(receives_addrv2(&mut v2_listener, &onion.to_addrv2(), 15).await);
    assert!(!receives_addrv2(&mut v1_listener, &onion.to_addrv2(), 1).await);
    // ...and dialled by name through the onion proxy.
    let peers = common::wait_peers(&a, "the onion peer", |p| {
        p.iter()
            .any(|x| x.network() == Network::Onion && x.state == PeerState::Connected)
    })
    .await;
    let peer = peers
        .iter()
        .find(|x| x.network() == Network::Onion)
        .unwrap();
    assert_eq!(peer.address(), format!("{}:{port}", onion.host()));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(&format!("\"target\": \"{}:{port}\"", onion.host())),
        "{logged}"
    );
    // B saw one inbound peer; nothing was looked up or dialled outside the proxy.
    common::wait_peers(&b, "the inbound peer", |p| !connected(p).is_empty()).await;
    a.shutdown().await;

    // The name survives a restart.
    let a = Node::start(ca).await.unwrap();
    let kept = a
        .known_addresses()
        .await
        .into_iter()
        .any(|e| e.overlay == Some(onion) && e.addr == onion.internal(port));
    assert!(kept, "onion entry lost across a restart");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_proxies_give_typed_errors() {
    for (mode, kind) in [
        ("bad-version", "proxy_bad_reply"),
        ("close-mid-handshake", "proxy_closed"),
        ("truncated-address", "proxy_closed"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("proxy.log");
        let Some((_proxy, port)) = logging_proxy(&log, &["--mode".into(), mode.to_string()]).await
        else {
            return;
        };
        let mut c = config(dir.path());
        c.connect = vec!["127.0.0.1:9".parse().unwrap()];
        c.proxy = Some(proxy_at(port, None));
        let a = Node::start(c).await.unwrap();
        let mut events = a.subscribe_to(&[EventKind::ConnectionFailed, EventKind::ConnectionLost]);
        assert_eq!(next_failure(&mut events, 15).await, kind, "{mode}");
        a.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onion_name_only_the_proxy_resolves_is_reached_through_microsocks() {
    if !common::is_root() {
        common::skip_or_fail("root, for microsocks in a mount namespace with its own /etc/hosts");
        return;
    }
    let Some(microsocks) = microsocks_path() else {
        return;
    };
    let db = tempfile::tempdir().unwrap();
    let b = listener_node(db.path()).await;
    let port = b.listen_addrs()[0].port();
    // B's onion name, known only to the proxy's hosts file.
    let onion = OverlayAddr::Onion(rand::random());
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n127.0.0.1 {}\n", onion.host()),
    )
    .unwrap();
    let proxy_port = free_port();
    let script = format!(
        "mount --bind {} /etc/hosts && exec {} -i 127.0.0.1 -p {proxy_port}",
        hosts.display(),
        microsocks.display()
    );
    let _proxy = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("unshare");
    connectable(proxy_port).await;
    // Outside the namespace the name means nothing.
    assert!(tokio::net::lookup_host((onion.host().as_str(), port))
        .await
        .map(|mut a| a.next().is_none())
        .unwrap_or(true));

    let da = tempfile::tempdir().unwrap();
    let mut ca = config(da.path());
    ca.onion_proxy = Some(proxy_at(proxy_port, None));
    ca.overlay_peers = vec![onion];
    ca.connect = vec![onion.internal(port)];
    let a = Node::start(ca).await.unwrap();
    let peers = common::wait_peers(&a, "the onion peer through microsocks", |p| {
        connected(p).iter().any(|x| x.network() == Network::Onion)
    })
    .await;
    let peer = peers
        .iter()
        .find(|x| x.network() == Network::Onion)
        .unwrap();
    assert_eq!(peer.address(), format!("{}:{port}", onion.host()));
    common::wait_peers(&b, "the inbound peer", |p| !connected(p).is_empty()).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Behind `--proxy` the DNS seeds are asked by name through the proxy, as Core's addr-fetch
/// connections (net.cpp's ThreadDNSAddressSeed with a name proxy): the version handshake,
/// `getaddr`, the answer taken into the book and the connection closed. No DNS query
/// leaves: the configured resolver is a UDP socket that counts what reaches it. Before,
/// seeds were not used at all behind a proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_seeds_are_asked_by_name_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let seed_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let seed_port = seed_listener.local_addr().unwrap().port();
    let log = dir.path().join("proxy.log");
    let map = format!("seed.meshd.invalid=127.0.0.1:{seed_port}");
    let Some((_proxy, proxy_port)) = logging_proxy(&log, &["--map".into(), map]).await else {
        return;
    };
    let dns = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    dns.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();

    let nd = tempfile::tempdir().unwrap();
    let mut c = config(nd.path());
    c.proxy = Some(proxy_at(proxy_port, None));
    c.dns_seeds = vec!["seed.meshd.invalid".into()];
    c.dns_servers = vec![dns.local_addr().unwrap()];
    // An outbound slot free and an empty book: the seeds are wanted.
    c.slots.outbound = 1;
    let node = Node::start(c).await.unwrap();

    let mut seed = AsyncPeer::accept(&seed_listener).await;
    let asked = seed
        .wait_for(Duration::from_secs(10), |m| {
            matches!(m, NetworkMessage::GetAddr).then_some(())
        })
        .await;
    assert!(asked.is_some(), "no getaddr after the handshake");
    // Listed while it runs, as Core's getpeerinfo lists it, in the short-lived slot.
    let peers = node.peers();
    let row = peers
        .iter()
        .find(|p| p.connection_type == "addr-fetch")
        .unwrap_or_else(|| panic!("no addr-fetch row: {peers:?}"));
    assert_eq!(row.address(), "seed.meshd.invalid:18444");
    assert_eq!(node.slots().0.feeler, 1);
    // Onion addresses: dialled through the proxy by name, which refuses names it does not
    // know, so nothing is dialled outside this test.
    let onions: Vec<OverlayAddr> = (0..3).map(|_| OverlayAddr::Onion(rand::random())).collect();
    let now = common::unix_now();
    seed.send(NetworkMessage::AddrV2(
        onions
            .iter()
            .map(|o| AddrV2Message {
                time: now,
                services: ServiceFlags::NETWORK | ServiceFlags::WITNESS,
                addr: o.to_addrv2(),
                port: 18444,
            })
            .collect(),
    ))
    .await;
    assert!(
        seed.closed_within(Duration::from_secs(10)).await,
        "the addr-fetch connection stays open after the answer"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while node
        .peers()
        .iter()
        .any(|p| p.connection_type == "addr-fetch")
        || node.slots().0.feeler != 0
    {
        assert!(
            Instant::now() < deadline,
            "the addr-fetch row or slot outlived it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let known = node.known_addresses().await;
        if onions
            .iter()
            .all(|o| known.iter().any(|e| e.overlay == Some(*o)))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the seed's answer never reached the book"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("\"target\": \"seed.meshd.invalid:18444\""),
        "the seed was not asked by name through the proxy: {logged}"
    );
    let mut buf = [0u8; 512];
    assert!(
        dns.recv_from(&mut buf).is_err(),
        "a DNS query left outside the proxy"
    );
    node.shutdown().await;
}
