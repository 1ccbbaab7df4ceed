//! Addr-fetch: how the DNS seeds are used behind `--proxy`, as Bitcoin Core does it
//! (`AddAddrFetch(seed)` in net.cpp's ThreadDNSAddressSeed when a name proxy is set, and
//! `ConnectionType::ADDR_FETCH`). Nothing is resolved locally: the proxy is asked to connect
//! to the seed's *name* on the network's port (a seed's name also answers as a node there),
//! the version handshake is made, `getaddr` is sent, and the first `addr`/`addrv2` with more
//! than one address ends the connection (Core disconnects an addr-fetch peer then). The
//! addresses go to the address book as a DNS answer's would, the seed as their source.
//!
//! [`AddrFetch`] is the protocol as a sans-IO core (messages in, messages to send or the
//! result out); the Manager drives it over a proxied socket, bounded in time
//! ([`ADDR_FETCH_TIMEOUT`]) and bytes ([`ADDR_FETCH_MAX_BYTES`]), one fetch at a time.

use std::time::{Duration, Instant};

use bitcoin::p2p::message::NetworkMessage;

use crate::peer::handshake::{Handshake, HandshakePolicy, HandshakeStep};
use crate::peer::Direction;
pub use crate::shared::addr::AddrFetchError;
use crate::shared::addr::GossipAddr;
use crate::wire::Message;

/// Time one fetch may take, proxy connection and handshake included: a seed that has not
/// answered `getaddr` by then is not going to (Core's addr-fetch peers meet the ordinary
/// handshake and ping timeouts; one short bound serves the same end here).
pub const ADDR_FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes read from one seed at most: an answer is at most 1,000 addresses (about 30 KB in
/// `addrv2`), so anything near this is not an answer.
pub const ADDR_FETCH_MAX_BYTES: usize = 1 << 20;
/// One-address `addr` messages (a peer's own advertisement) taken before the fetch ends
/// with what it has: the seed's answer is the first message with more than one.
pub const ADDR_FETCH_MAX_SINGLES: usize = 8;
/// Seeds waiting for their turn at most (the network's seeds are a handful).
pub const MAX_ADDR_FETCH_QUEUE: usize = 64;
/// After a seed answered, it is not asked again for this long (Core asks the seeds once at
/// start; the book fills from the peers they lead to).
pub const ADDR_FETCH_AFTER_ANSWER: Duration = Duration::from_secs(3600);
/// After a seed failed, the first wait before it is asked again, doubling per failure...
pub const ADDR_FETCH_RETRY_MIN: Duration = Duration::from_secs(60);
/// ...up to this: a seed that is down costs a circuit and a log line an hour at most.
pub const ADDR_FETCH_RETRY_MAX: Duration = Duration::from_secs(3600);

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchStep {
    /// Send this message.
    Send(Message),
    /// The fetch is over: these addresses (close the connection).
    Done(Vec<GossipAddr>),
}

/// One addr-fetch conversation as a sans-IO state machine.
#[derive(Debug)]
pub struct AddrFetch {
    handshake: Handshake,
    policy: HandshakePolicy,
    asked: bool,
    singles: usize,
    got: Vec<GossipAddr>,
}

impl AddrFetch {
    /// A fetch about to start, and its first step (our `version`). The seed is reached by
    /// name through a proxy, so the version names no address of it or of us.
    pub fn start(
        policy: HandshakePolicy,
        nonce: u64,
        now: Instant,
        unix_time: i64,
    ) -> (AddrFetch, Vec<FetchStep>) {
        // `relay` as on any connection of ours (Core's addr-fetch version is an ordinary
        // one): a different flag would mark these connections out to the seed.
        let unspecified = std::net::SocketAddr::from(([0u8; 16], 0));
        let mut handshake = Handshake::new(
            Direction::Outbound,
            false,
            nonce,
            unspecified,
            None,
            now,
            ADDR_FETCH_TIMEOUT,
        );
        let steps = handshake.start(&policy, unix_time);
        let fetch = AddrFetch {
            handshake,
            policy,
            asked: false,
            singles: 0,
            got: Vec::new(),
        };
        (fetch, steps.into_iter().map(Self::step).collect())
    }

    fn step(s: HandshakeStep) -> FetchStep {
        match s {
            HandshakeStep::Send(m) => FetchStep::Send(m),
            // Turned into our `getaddr` by the caller of this mapping.
            HandshakeStep::Complete(_) => FetchStep::Send(Message::net(NetworkMessage::GetAddr)),
        }
    }

    /// Feeds one message from the seed.
    pub fn on_message(
        &mut self,
        msg: &Message,
        unix_time: i64,
        is_our_nonce: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<FetchStep>, AddrFetchError> {
        if !self.handshake.is_complete() {
            let steps = self
                .handshake
                .on_message(msg, &self.policy, unix_time, is_our_nonce)
                .map_err(AddrFetchError::Handshake)?;
            let out: Vec<FetchStep> = steps.into_iter().map(Self::step).collect();
            if self.handshake.is_complete() {
                self.asked = true;
            }
            return Ok(out);
        }
        let (list, len) = match msg {
            Message::Network(NetworkMessage::Ping(nonce)) => {
                return Ok(vec![FetchStep::Send(Message::net(NetworkMessage::Pong(
                    *nonce,
                )))]);
            }
            Message::Network(NetworkMessage::Addr(list)) => {
                (GossipAddr::from_addr_list(list), list.len())
            }
            Message::Network(NetworkMessage::AddrV2(list)) => {
                (GossipAddr::from_addrv2_list(list), list.len())
            }
            // Anything else is of no use here and ignored (Core processes it; nothing of it
            // would outlive this connection).
            _ => return Ok(Vec::new()),
        };
        self.got.extend(list);
        if len > 1 {
            return Ok(vec![FetchStep::Done(std::mem::take(&mut self.got))]);
        }
        self.singles += 1;
        if self.singles >= ADDR_FETCH_MAX_SINGLES {
            return Ok(vec![FetchStep::Done(std::mem::take(&mut self.got))]);
        }
        Ok(Vec::new())
    }

    /// Whether `getaddr` has gone out (the handshake completed).
    pub fn asked(&self) -> bool {
        self.asked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::p2p::address::{AddrV2, AddrV2Message, Address};
    use bitcoin::p2p::message_network::VersionMessage;
    use bitcoin::p2p::ServiceFlags;

    fn policy() -> HandshakePolicy {
        crate::config::NodeConfig::new(
            crate::network::NetworkId::Regtest,
            std::path::PathBuf::from("/nonexistent"),
        )
        .handshake_policy()
    }

    fn seed_version() -> Message {
        let unspecified = std::net::SocketAddr::from(([0u8; 16], 0));
        Message::net(NetworkMessage::Version(VersionMessage {
            version: 70016,
            services: ServiceFlags::NETWORK | ServiceFlags::WITNESS,
            timestamp: 0,
            receiver: Address::new(&unspecified, ServiceFlags::NONE),
            sender: Address::new(&unspecified, ServiceFlags::NONE),
            nonce: 99,
            user_agent: "/seed/".into(),
            start_height: 0,
            relay: true,
        }))
    }

    fn addrv2(n: u8) -> AddrV2Message {
        AddrV2Message {
            time: 1_800_000_000,
            services: ServiceFlags::NETWORK,
            addr: AddrV2::Ipv4(std::net::Ipv4Addr::new(203, 0, 113, n)),
            port: 18444,
        }
    }

    fn sent(steps: &[FetchStep]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                FetchStep::Send(m) => Some(m.command().to_string()),
                FetchStep::Done(_) => None,
            })
            .collect()
    }

    /// As Core's addr-fetch: version, verack, then getaddr; the seed's self-advertisement is
    /// kept, its answer (more than one address) ends the fetch; pings are answered.
    #[test]
    fn handshake_then_getaddr_then_the_first_real_answer_ends_it() {
        let no = |_| false;
        let (mut f, first) = AddrFetch::start(policy(), 1, Instant::now(), 0);
        assert_eq!(sent(&first), ["version"]);
        let steps = f.on_message(&seed_version(), 0, &no).unwrap();
        assert_eq!(sent(&steps), ["wtxidrelay", "sendaddrv2", "verack"]);
        assert!(!f.asked());
        let steps = f
            .on_message(&Message::net(NetworkMessage::Verack), 0, &no)
            .unwrap();
        assert_eq!(sent(&steps), ["getaddr"]);
        assert!(f.asked());
        let steps = f
            .on_message(&Message::net(NetworkMessage::Ping(5)), 0, &no)
            .unwrap();
        assert_eq!(
            steps,
            [FetchStep::Send(Message::net(NetworkMessage::Pong(5)))]
        );
        let own = Message::net(NetworkMessage::AddrV2(vec![addrv2(1)]));
        assert!(f.on_message(&own, 0, &no).unwrap().is_empty());
        let answer = Message::net(NetworkMessage::AddrV2((2..=4).map(addrv2).collect()));
        let steps = f.on_message(&answer, 0, &no).unwrap();
        let [FetchStep::Done(addrs)] = steps.as_slice() else {
            panic!("{steps:?}")
        };
        let got: Vec<String> = addrs.iter().map(|a| a.addr.to_string()).collect();
        assert_eq!(
            got,
            [
                "203.0.113.1:18444",
                "203.0.113.2:18444",
                "203.0.113.3:18444",
                "203.0.113.4:18444"
            ]
        );
    }

    #[test]
    fn a_seed_that_only_advertises_itself_ends_the_fetch_after_a_few() {
        let no = |_| false;
        let (mut f, _) = AddrFetch::start(policy(), 1, Instant::now(), 0);
        f.on_message(&seed_version(), 0, &no).unwrap();
        f.on_message(&Message::net(NetworkMessage::Verack), 0, &no)
            .unwrap();
        let own = Message::net(NetworkMessage::AddrV2(vec![addrv2(1)]));
        for _ in 1..ADDR_FETCH_MAX_SINGLES {
            assert!(f.on_message(&own, 0, &no).unwrap().is_empty());
        }
        let steps = f.on_message(&own, 0, &no).unwrap();
        assert!(
            matches!(steps.as_slice(), [FetchStep::Done(a)] if a.len() == ADDR_FETCH_MAX_SINGLES)
        );
    }

    #[test]
    fn the_handshake_rules_hold() {
        // Our own nonce back: a connection to ourselves through the proxy.
        let (mut f, _) = AddrFetch::start(policy(), 99, Instant::now(), 0);
        let err = f.on_message(&seed_version(), 0, &|_| false).unwrap_err();
        assert_eq!(err.kind(), "handshake");
        // Anything before its version.
        let (mut f, _) = AddrFetch::start(policy(), 1, Instant::now(), 0);
        let early = Message::net(NetworkMessage::AddrV2(vec![addrv2(1), addrv2(2)]));
        assert_eq!(
            f.on_message(&early, 0, &|_| false).unwrap_err().kind(),
            "handshake"
        );
    }
}
