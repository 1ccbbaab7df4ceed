//! A raw regtest peer on a blocking socket for the benchmarks that run one beside a node
//! (hostile_bench, duplicate_headers_bench): message encoding and the dialling side of the
//! handshake.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::ServiceFlags;
use meshd_actors::network::NetworkId;
use meshd_actors::wire::Message;

/// `m` as a regtest frame.
pub fn encode(m: NetworkMessage) -> Vec<u8> {
    Message::Network(m).encode(NetworkId::Regtest.profile().magic)
}

/// Dials `addr` and sends a protocol 70016 `version` (as `user_agent`) and `verack`; what the
/// node answers is left to the caller to read.
pub fn dial_and_handshake(addr: SocketAddr, user_agent: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    let a = Address::new(&"127.0.0.1:1".parse().unwrap(), ServiceFlags::NONE);
    let mut v = VersionMessage::new(
        ServiceFlags::NETWORK,
        0,
        a.clone(),
        a,
        rand::random(),
        user_agent.into(),
        0,
    );
    v.version = 70016;
    s.write_all(&encode(NetworkMessage::Version(v))).unwrap();
    s.write_all(&encode(NetworkMessage::Verack)).unwrap();
    s
}
