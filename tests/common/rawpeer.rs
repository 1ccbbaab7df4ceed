//! A scriptable raw peer for hostile-input tests: it can speak the protocol correctly (to get
//! through the handshake) and then send whatever broken bytes a test wants.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::{Magic, ServiceFlags};
use meshd_actors::network::NetworkId;
use meshd_actors::wire::{FrameDecoder, Message};

pub struct RawPeer {
    pub stream: TcpStream,
    pub magic: Magic,
    decoder: FrameDecoder,
    pending: Vec<u8>,
}

/// What a read saw.
#[derive(Debug)]
pub enum Seen {
    Msg(Message),
    Closed,
    Timeout,
}

impl RawPeer {
    pub fn connect(addr: SocketAddr) -> RawPeer {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream.set_nodelay(true).unwrap();
        let p = NetworkId::Regtest.profile();
        RawPeer {
            stream,
            magic: p.magic,
            decoder: FrameDecoder::new(p.magic, p.limits),
            pending: Vec::new(),
        }
    }

    /// A peer over a socket we accepted (the node dialled us).
    pub fn from_stream(stream: TcpStream) -> RawPeer {
        stream.set_nodelay(true).unwrap();
        let p = NetworkId::Regtest.profile();
        RawPeer {
            stream,
            magic: p.magic,
            decoder: FrameDecoder::new(p.magic, p.limits),
            pending: Vec::new(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    pub fn send(&mut self, msg: NetworkMessage) {
        let bytes = Message::Network(msg).encode(self.magic);
        self.send_raw(&bytes);
    }

    pub fn version(agent: &str) -> NetworkMessage {
        let a = Address::new(&"127.0.0.1:1".parse().unwrap(), ServiceFlags::NONE);
        let mut v = VersionMessage::new(
            ServiceFlags::NETWORK | ServiceFlags::WITNESS,
            0,
            a.clone(),
            a,
            rand_nonce(),
            agent.into(),
            0,
        );
        v.version = 70016;
        NetworkMessage::Version(v)
    }

    /// Reads the next message, waiting at most `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Seen {
        let deadline = Instant::now() + timeout;
        loop {
            let mut input = self.pending.as_slice();
            if let Some(r) = self.decoder.decode(&mut input) {
                let used = self.pending.len() - input.len();
                self.pending.drain(..used);
                match r {
                    Ok(frame) => {
                        let msg = Message::decode(frame).expect("meshd sends valid payloads");
                        // Tests read a getblocktxn as rust-bitcoin's type.
                        if let Message::GetBlockTxn(r) = &msg {
                            return Seen::Msg(Message::Network(NetworkMessage::GetBlockTxn(
                                bitcoin::p2p::message_compact_blocks::GetBlockTxn {
                                    txs_request: r.to_rust_bitcoin(),
                                },
                            )));
                        }
                        return Seen::Msg(msg);
                    }
                    Err(e) => panic!("meshd sent a bad frame: {e}"),
                }
            }
            self.pending.clear();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Seen::Timeout;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 65536];
            match self.stream.read(&mut buf) {
                Ok(0) => return Seen::Closed,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Seen::Timeout
                }
                Err(_) => return Seen::Closed,
            }
        }
    }

    /// Completes the handshake as the dialling side.
    pub fn handshake(&mut self) {
        self.send(RawPeer::version("/rawpeer:1.0/"));
        let (mut got_version, mut got_verack) = (false, false);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(got_version && got_verack) {
            assert!(Instant::now() < deadline, "handshake timed out");
            match self.recv(Duration::from_secs(10)) {
                Seen::Msg(Message::Network(NetworkMessage::Version(_))) => {
                    got_version = true;
                    self.send(NetworkMessage::Verack);
                }
                Seen::Msg(Message::Network(NetworkMessage::Verack)) => got_verack = true,
                Seen::Msg(_) => {}
                other => panic!("handshake failed: {other:?}"),
            }
        }
    }

    /// Sends a ping and waits for the matching pong.
    pub fn ping_ok(&mut self) -> bool {
        let nonce = rand_nonce();
        self.send(NetworkMessage::Ping(nonce));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.recv(Duration::from_secs(5)) {
                Seen::Msg(Message::Network(NetworkMessage::Pong(n))) if n == nonce => return true,
                Seen::Msg(Message::Network(NetworkMessage::Ping(n))) => {
                    self.send(NetworkMessage::Pong(n))
                }
                Seen::Msg(_) => {}
                _ => return false,
            }
        }
        false
    }

    /// Waits until meshd closes the connection (true) or `timeout` passes (false).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                Seen::Closed => return true,
                Seen::Timeout => return false,
                Seen::Msg(Message::Network(NetworkMessage::Ping(n))) => {
                    self.send(NetworkMessage::Pong(n))
                }
                Seen::Msg(_) => {}
            }
        }
    }
}

fn rand_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() | 1
}

/// A frame header with arbitrary fields.
pub fn header(magic: [u8; 4], command: &str, length: u32, checksum: [u8; 4]) -> Vec<u8> {
    let mut h = magic.to_vec();
    let mut c = [0u8; 12];
    c[..command.len()].copy_from_slice(command.as_bytes());
    h.extend_from_slice(&c);
    h.extend_from_slice(&length.to_le_bytes());
    h.extend_from_slice(&checksum);
    h
}
