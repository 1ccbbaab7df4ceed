//! Helpers for in-process tests: node configs on loopback, an async raw peer, waits.

#![allow(dead_code)]

pub mod dnsmasq;
#[path = "../../../tests/common/nats.rs"]
pub mod nats;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::ServiceFlags;
use meshd_actors::config::NodeConfig;
use meshd_actors::network::NetworkId;
use meshd_actors::node::Node;
use meshd_actors::shared::peers::PeerInfo;
use meshd_actors::wire::{FrameDecoder, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn config(dir: &std::path::Path) -> NodeConfig {
    let mut c = NodeConfig::new(NetworkId::Regtest, dir.to_path_buf());
    c.listen = vec!["127.0.0.1:0".parse().unwrap()];
    // These tests build exact topologies (lines, meshes, counted peers); block-relay-only
    // connections to gossiped nodes would add edges. Tested on their own in block_relay.rs.
    c.slots.block_relay = 0;
    // Nor feelers (short connections to addresses of the book).
    c.feeler_interval = None;
    c
}

/// A node that only listens: it dials nothing it learns by gossip.
pub fn listen_only(dir: &std::path::Path) -> NodeConfig {
    let mut c = config(dir);
    c.slots.outbound = 0;
    c
}

pub async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_peers(
    node: &Node,
    what: &str,
    pred: impl Fn(&[PeerInfo]) -> bool,
) -> Vec<PeerInfo> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let peers = node.peers();
        if pred(&peers) {
            return peers;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {} peers",
            peers.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw peer through its handshake with the node at `addr`.
pub async fn handshaked(addr: SocketAddr) -> AsyncPeer {
    let mut p = AsyncPeer::connect(addr).await.expect("connect");
    assert!(p.handshake().await, "handshake");
    p
}

/// `n` raw peers, each through its handshake with the node at `addr`.
pub async fn handshaked_peers(addr: SocketAddr, n: usize) -> Vec<AsyncPeer> {
    let mut peers = Vec::with_capacity(n);
    for _ in 0..n {
        peers.push(handshaked(addr).await);
    }
    peers
}

/// Waits until `events` (subscribed to `BlockReceived`) has shown every block of `hashes`;
/// panics with the ones missing after `timeout`.
pub async fn blocks_received(
    events: &mut meshd_actors::events::EventStream,
    hashes: &[bitcoin::BlockHash],
    timeout: Duration,
) {
    let mut missing: std::collections::HashSet<String> =
        hashes.iter().map(|h| h.to_string()).collect();
    let deadline = Instant::now() + timeout;
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Ok(e)) => {
                if let meshd_actors::events::NodeEvent::BlockReceived { hash, .. } = &e.event {
                    missing.remove(hash);
                }
            }
            _ => panic!("blocks never received: {missing:?}"),
        }
    }
}

/// A transaction that passes the context-free checks, without witness (its wtxid is its
/// txid); its input is made up: meshd checks no inputs.
pub fn made_up_spend(n: u8) -> bitcoin::Transaction {
    use bitcoin::hashes::Hash;
    bitcoin::Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![bitcoin::TxIn {
            previous_output: bitcoin::OutPoint::new(bitcoin::Txid::from_byte_array([n; 32]), 0),
            script_sig: bitcoin::ScriptBuf::new(),
            sequence: bitcoin::Sequence::MAX,
            witness: bitcoin::Witness::new(),
        }],
        output: vec![bitcoin::TxOut {
            value: bitcoin::Amount::from_sat(50_000),
            script_pubkey: bitcoin::ScriptBuf::from_bytes(vec![0x51]),
        }],
    }
}

/// Waits until `node`'s Sync knows `n` peers.
pub async fn wait_sync_peers(node: &Node, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.sync_peers().await.len() < n {
        assert!(Instant::now() < deadline, "Sync never learned its peers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A protocol 70016 `version` from a raw test peer announcing `start_height`.
pub fn version_message(start_height: i32) -> NetworkMessage {
    let a = Address::new(&"127.0.0.1:1".parse().unwrap(), ServiceFlags::NONE);
    let mut v = VersionMessage::new(
        ServiceFlags::NETWORK | ServiceFlags::WITNESS,
        0,
        a.clone(),
        a,
        rand::random(),
        "/asyncpeer/".into(),
        start_height,
    );
    v.version = 70016;
    v.relay = true;
    NetworkMessage::Version(v)
}

/// What a read saw.
#[derive(Debug)]
pub enum Seen {
    Msg(Message),
    Closed,
    Timeout,
}

/// Now, unix seconds, as `addr` messages carry it.
pub fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

/// A raw protocol peer on a tokio socket.
pub struct AsyncPeer {
    pub stream: TcpStream,
    /// The network's magic its frames carry (regtest unless [`AsyncPeer::connect_on`]).
    magic: bitcoin::p2p::Magic,
    decoder: FrameDecoder,
    pending: Vec<u8>,
    pub received: u64,
}

impl AsyncPeer {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<AsyncPeer> {
        AsyncPeer::over(TcpStream::connect(addr).await?)
    }

    /// A peer of `network` (its magic and limits) that dials `addr`.
    pub async fn connect_on(addr: SocketAddr, network: NetworkId) -> std::io::Result<AsyncPeer> {
        let mut peer = AsyncPeer::over(TcpStream::connect(addr).await?)?;
        let p = network.profile();
        peer.magic = p.magic;
        peer.decoder = FrameDecoder::new(p.magic, p.limits);
        Ok(peer)
    }

    /// A peer over a socket it dialled.
    fn over(stream: TcpStream) -> std::io::Result<AsyncPeer> {
        stream.set_nodelay(true)?;
        let p = NetworkId::Regtest.profile();
        Ok(AsyncPeer {
            stream,
            magic: p.magic,
            decoder: FrameDecoder::new(p.magic, p.limits),
            pending: Vec::new(),
            received: 0,
        })
    }

    /// Connects from `local`, a loopback address of our choice (127.0.0.0/8), so that peers
    /// of one test have addresses of their own.
    pub async fn connect_from(
        local: std::net::IpAddr,
        addr: SocketAddr,
    ) -> std::io::Result<AsyncPeer> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(local, 0))?;
        AsyncPeer::over(socket.connect(addr).await?)
    }

    /// The node dialled `listener`: accepts it and handshakes as the answering side (the
    /// raw peer is then the node's outbound peer).
    pub async fn accept(listener: &tokio::net::TcpListener) -> AsyncPeer {
        AsyncPeer::accept_version(listener).await.0
    }

    /// As [`AsyncPeer::accept`], with the `version` the node sent.
    pub async fn accept_version(
        listener: &tokio::net::TcpListener,
    ) -> (AsyncPeer, bitcoin::p2p::message_network::VersionMessage) {
        let (stream, _) = tokio::time::timeout(Duration::from_secs(15), listener.accept())
            .await
            .expect("the node dials within 15 s")
            .expect("accept");
        stream.set_nodelay(true).expect("nodelay");
        let p = NetworkId::Regtest.profile();
        let mut peer = AsyncPeer {
            stream,
            magic: p.magic,
            decoder: FrameDecoder::new(p.magic, p.limits),
            pending: Vec::new(),
            received: 0,
        };
        let (mut version, mut verack) = (None, false);
        while !(version.is_some() && verack) {
            match peer.recv(Duration::from_secs(10)).await {
                Seen::Msg(Message::Network(NetworkMessage::Version(v))) => {
                    version = Some(v);
                    peer.send(version_message(0)).await;
                    peer.send(NetworkMessage::Verack).await;
                }
                Seen::Msg(Message::Network(NetworkMessage::Verack)) => verack = true,
                Seen::Msg(_) => {}
                other => panic!("handshake with the dialling node: {other:?}"),
            }
        }
        (peer, version.expect("a version"))
    }

    pub async fn send(&mut self, msg: NetworkMessage) {
        let bytes = Message::Network(msg).encode(self.magic);
        let _ = self.stream.write_all(&bytes).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    pub async fn recv(&mut self, timeout: Duration) -> Seen {
        let deadline = Instant::now() + timeout;
        loop {
            let mut input = self.pending.as_slice();
            if let Some(r) = self.decoder.decode(&mut input) {
                let used = self.pending.len() - input.len();
                self.pending.drain(..used);
                let msg = Message::decode(r.expect("valid frame")).expect("valid payload");
                // A BTC compact block's indexes fit rust-bitcoin's type: tests read it so.
                if let Message::CmpctBlock(c) = &msg {
                    if let Some(compact_block) = c.to_rust_bitcoin() {
                        return Seen::Msg(Message::Network(NetworkMessage::CmpctBlock(
                            bitcoin::p2p::message_compact_blocks::CmpctBlock { compact_block },
                        )));
                    }
                }
                // A peer's getblocktxn is kept encoded; tests read rust-bitcoin's type.
                if let Message::GetBlockTxn(r) = &msg {
                    return Seen::Msg(Message::Network(NetworkMessage::GetBlockTxn(
                        bitcoin::p2p::message_compact_blocks::GetBlockTxn {
                            txs_request: r.to_rust_bitcoin(),
                        },
                    )));
                }
                return Seen::Msg(msg);
            }
            self.pending.clear();
            let left = deadline.saturating_duration_since(Instant::now());
            let mut buf = vec![0u8; 65536];
            match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
                Err(_) => return Seen::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Seen::Closed,
                Ok(Ok(n)) => {
                    self.received += n as u64;
                    self.pending.extend_from_slice(&buf[..n]);
                }
            }
        }
    }

    /// Handshakes as the dialling side; false if the node closed on us.
    pub async fn handshake(&mut self) -> bool {
        self.handshake_at(0).await
    }

    /// Handshakes announcing `start_height`.
    pub async fn handshake_at(&mut self, start_height: i32) -> bool {
        self.send(version_message(start_height)).await;
        let (mut version, mut verack) = (false, false);
        while !(version && verack) {
            match self.recv(Duration::from_secs(10)).await {
                Seen::Msg(Message::Network(NetworkMessage::Version(_))) => {
                    version = true;
                    self.send(NetworkMessage::Verack).await;
                }
                Seen::Msg(Message::Network(NetworkMessage::Verack)) => verack = true,
                Seen::Msg(_) => {}
                _ => return false,
            }
        }
        true
    }

    /// Reads (answering pings) until closed or `timeout`; true if closed.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .recv(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Seen::Closed => return true,
                Seen::Timeout => return false,
                Seen::Msg(Message::Network(NetworkMessage::Ping(n))) => {
                    self.send(NetworkMessage::Pong(n)).await
                }
                Seen::Msg(_) => {}
            }
        }
    }

    /// Reads (answering pings) until a message `want` picks, or `timeout`.
    pub async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&NetworkMessage) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .recv(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Seen::Msg(Message::Network(NetworkMessage::Ping(n))) => {
                    self.send(NetworkMessage::Pong(n)).await
                }
                Seen::Msg(Message::Network(m)) => {
                    if let Some(t) = want(&m) {
                        return Some(t);
                    }
                }
                Seen::Msg(_) => {}
                Seen::Closed | Seen::Timeout => return None,
            }
        }
    }

    /// Reads and discards everything (answering pings) for `period`; returns bytes read.
    pub async fn drain_for(&mut self, period: Duration) -> u64 {
        let start = self.received;
        let deadline = Instant::now() + period;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => self.received += n as u64,
                Err(_) => break,
            }
        }
        self.received - start
    }
}

#[path = "../../../tests/common/skip.rs"]
mod skip;
#[path = "../../../tests/common/tor.rs"]
pub mod tor;
#[allow(unused_imports)]
pub use skip::{in_ci, is_root, skip_or_fail};

/// Sends a transaction across a line of three nodes: waits until each node's Sync knows its
/// peers (relay starts then: the Manager announces them), submits at the first a transaction
/// spending a regtest block's coinbase (a coinbase itself is never relayed), and waits for
/// the last to receive it.
pub async fn tx_crosses_a_line(nodes: &[Node]) {
    use meshd_actors::events::{EventKind, NodeEvent};
    let deadline = Instant::now() + Duration::from_secs(10);
    while [
        nodes[0].sync_peers().await.len(),
        nodes[1].sync_peers().await.len(),
        nodes[2].sync_peers().await.len(),
    ] != [1, 2, 1]
    {
        assert!(Instant::now() < deadline, "Sync never learned its peers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut rx = nodes[2].subscribe_to(&[EventKind::TxReceived]);
    let block =
        meshd_actors::sync::mine::regtest_block(&nodes[0].profile().genesis, 1, 1_700_000_000, 0);
    let mut tx = block.txdata[0].clone();
    tx.input[0].previous_output = bitcoin::OutPoint::new(block.txdata[0].compute_txid(), 0);
    tx.input[0].script_sig = bitcoin::ScriptBuf::new();
    let txid = tx.compute_txid();
    assert!(nodes[0].submit_tx(tx));
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Ok(e)) => assert!(
            matches!(&e.event, NodeEvent::TxReceived { txid: t, .. } if *t == txid.to_string())
        ),
        other => panic!(
            "transaction did not reach the far end: {other:?}; pools {:?}",
            nodes
                .iter()
                .map(|n| n.sync_status().tx_pool)
                .collect::<Vec<_>>()
        ),
    }
}
