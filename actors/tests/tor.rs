//! The onion service through a real `tor` daemon, started offline (`DisableNetwork 1`: no
//! circuit is built and nothing leaves the machine, but the control port still creates
//! onion services). Checked: SAFECOOKIE and password authentication, the service is made
//! (delivering to a listener of its own, whose peers are onion peers) and its key saved
//! (mode 0600), the address is advertised over addrv2, a restart reuses
//! the key (same onion address), the service is removed at shutdown, and a wrong password
//! leaves the node running without one. Against a fake control port on loopback (no tor
//! needed): a port asking no authentication is used only with `--torcontrol-null-auth`, and
//! a service or key the server chose is never taken or stored.
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
use meshd_actors::node::Node;
use meshd_actors::shared::overlay::OverlayAddr;
use meshd_actors::tor::control;
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
            meshd_actors::shared::overlay::Network::Ipv4,
            meshd_actors::shared::overlay::Network::Onion
        ]
    );

    // The key is saved, private, in Core's format.
    let key_path = nd.path().join(meshd_actors::tor::ONION_KEY_FILE);
    let key = std::fs::read_to_string(&key_path).unwrap();
    assert!(key.starts_with("ED25519-V3:"), "{key}");
    // Our check of Tor's answers derives a key's service as Tor does.
    assert_eq!(
        meshd_actors::tor::control::key_service(&key).map(OverlayAddr::Onion),
        Some(onion)
    );
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
    // A control port that takes the password only (with a readable cookie, SAFECOOKIE is
    // used first: it is the one method where Tor proves who it is).
    let t = common::tor::Tor::start_with(&tor, dir.path(), false);

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

/// A key in Tor's `ED25519-V3:` format and its service id (the onion name without
/// `.onion`).
fn tor_key(seed: u8) -> (String, String) {
    let key = control::new_key([seed; 32]);
    (key.clone(), service_id(&key))
}

/// The service id a key makes.
fn service_id(key: &str) -> String {
    let host = OverlayAddr::Onion(control::key_service(key).unwrap_or_default()).to_string();
    host.trim_end_matches(".onion").to_string()
}

/// A control port that is not Tor: it offers no authentication and answers `ADD_ONION`
/// with the service it chooses (`None`: the one the sent key makes, as Tor would). Every
/// command line it was sent is recorded.
struct FakeControl {
    addr: SocketAddr,
    commands: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeControl {
    async fn start(answer: Option<(String, String)>) -> FakeControl {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let commands = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = commands.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    seen.lock().unwrap().push(line.clone());
                    let reply = if line.starts_with("PROTOCOLINFO") {
                        "250-PROTOCOLINFO 1\r\n250-AUTH METHODS=NULL\r\n250 OK\r\n".to_string()
                    } else if line.starts_with("ADD_ONION") {
                        let sent = line.split(' ').nth(1).unwrap_or_default();
                        let (key, id) = match &answer {
                            Some(a) => a.clone(),
                            None => (String::new(), service_id(sent)),
                        };
                        let key_line = if key.is_empty() {
                            String::new()
                        } else {
                            format!("250-PrivateKey={key}\r\n")
                        };
                        format!("250-ServiceID={id}\r\n{key_line}250 OK\r\n")
                    } else {
                        "250 OK\r\n".to_string()
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            }
        });
        FakeControl { addr, commands }
    }

    fn sent(&self, prefix: &str) -> usize {
        let commands = self.commands.lock().unwrap();
        commands.iter().filter(|c| c.starts_with(prefix)).count()
    }

    /// The key named by the first `ADD_ONION`.
    fn key_sent(&self) -> Option<String> {
        let commands = self.commands.lock().unwrap();
        commands
            .iter()
            .find(|c| c.starts_with("ADD_ONION"))
            .and_then(|c| c.split(' ').nth(1))
            .map(str::to_string)
    }
}

/// Core's torcontrol would authenticate to a port offering NULL; meshd does only when the
/// operator says so, since whatever answers there is then handed the onion key. Allowed, the
/// key is made here (never Tor's `NEW:`), sent, and kept once the answer is its service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_port_asking_no_authentication_is_used_only_when_allowed() {
    let fake = FakeControl::start(None).await;
    let nd = tempfile::tempdir().unwrap();
    let mut c = config(nd.path());
    c.tor_control = Some(fake.addr);
    let node = Node::start(c.clone()).await.unwrap();
    common::wait_until("PROTOCOLINFO asked", Duration::from_secs(10), || {
        fake.sent("PROTOCOLINFO") >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.sent("AUTHENTICATE"), 0, "authenticated without leave");
    assert_eq!(fake.sent("ADD_ONION"), 0, "a key was offered without leave");
    assert!(node.onion_service().is_none());
    node.shutdown().await;

    c.tor_null_auth = true;
    let node = Node::start(c).await.unwrap();
    let onion = wait_onion(&node, 10).await;
    let sent = fake.key_sent().expect("ADD_ONION with a key");
    assert!(
        sent.starts_with("ED25519-V3:"),
        "asked the server for a key: {sent}"
    );
    assert_eq!(onion.to_string(), format!("{}.onion", service_id(&sent)));
    let saved = std::fs::read_to_string(nd.path().join(meshd_actors::tor::ONION_KEY_FILE)).unwrap();
    assert_eq!(saved, sent, "the key kept is the one made here");
    node.shutdown().await;
}

/// A control port that answers our key with a service of its own is refused, and our key is
/// never replaced; a key offered alongside our own service is not stored either; a key file
/// we cannot read is set aside, not overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_server_chose_is_never_stored() {
    let (ours, our_id) = tor_key(1);
    let theirs = tor_key(2);
    let nd = tempfile::tempdir().unwrap();
    let key_path = nd.path().join(meshd_actors::tor::ONION_KEY_FILE);
    std::fs::write(&key_path, &ours).unwrap();

    let fake = FakeControl::start(Some(theirs.clone())).await;
    let mut c = config(nd.path());
    c.tor_control = Some(fake.addr);
    c.tor_null_auth = true;
    let node = Node::start(c.clone()).await.unwrap();
    common::wait_until("ADD_ONION sent", Duration::from_secs(10), || {
        fake.sent("ADD_ONION") >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        node.onion_service().is_none(),
        "took a service that is not our key's"
    );
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), ours);
    node.shutdown().await;

    // Our own service answered, with a key we did not ask for: the service is used, the
    // offered key dropped.
    let fake = FakeControl::start(Some((theirs.0.clone(), our_id.clone()))).await;
    c.tor_control = Some(fake.addr);
    let node = Node::start(c.clone()).await.unwrap();
    let onion = wait_onion(&node, 10).await;
    assert_eq!(onion.to_string(), format!("{our_id}.onion"));
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), ours);
    node.shutdown().await;

    // A key file we cannot use (an RSA key of old) is set aside whole, and a new key made.
    std::fs::write(&key_path, "RSA1024:AAAA").unwrap();
    let fake = FakeControl::start(None).await;
    c.tor_control = Some(fake.addr);
    let node = Node::start(c).await.unwrap();
    wait_onion(&node, 10).await;
    let aside: Vec<_> = std::fs::read_dir(nd.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("onion_v3_private_key.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the unreadable key file was not set aside");
    assert_eq!(
        std::fs::read_to_string(aside[0].path()).unwrap(),
        "RSA1024:AAAA"
    );
    assert_ne!(std::fs::read_to_string(&key_path).unwrap(), ours);
    node.shutdown().await;
}
