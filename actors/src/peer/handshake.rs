//! The version handshake as a sans-IO state machine.
//!
//! Outbound sends `version` first; an inbound side answers a `version` with its own. Each side
//! sends `verack` after a valid `version`; the connection is established once our verack has
//! gone out and the peer's has come in, in whatever order the messages cross. Checked on the
//! peer's version: not our own nonce (self-connection), protocol version at least the
//! minimum, user agent not banned, and on automatic outbound connections the required
//! services. Between the peer's `version` and `verack` the feature-negotiation messages
//! (`wtxidrelay`, `sendaddrv2`, ...) are recorded; other messages are ignored, as Core does.
//! Anything but `version` before the peer's version is a protocol violation.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::ServiceFlags;

use super::Direction;
use crate::wire::overlay_announce::OverlayAnnounce;
use crate::wire::Message;

/// Protocol version from which `wtxidrelay` (BIP339) and `sendaddrv2` (BIP155) are sent and
/// honoured.
pub const FEATURE_NEGOTIATION_VERSION: u32 = 70016;
/// Protocol version from which a peer understands `sendheaders` (BIP130).
pub const SENDHEADERS_VERSION: u32 = 70012;

/// What we announce and what we demand of peers. Shared by every connection.
#[derive(Debug, Clone)]
pub struct HandshakePolicy {
    /// Protocol version we announce.
    pub protocol_version: u32,
    /// Lowest protocol version we accept.
    pub min_protocol_version: u32,
    /// User agent we announce.
    pub user_agent: String,
    /// Services we announce.
    pub services: ServiceFlags,
    /// Services an automatic outbound peer must announce.
    pub required_services: ServiceFlags,
    /// Peers whose user agent contains one of these substrings are refused.
    pub banned_user_agents: Vec<String>,
    /// Time allowed for the handshake.
    pub timeout: Duration,
    /// Whether we want transactions relayed to us (version relay flag).
    pub relay: bool,
    /// Height we announce as our best block.
    pub start_height: i32,
    /// Our overlay, told in an `overlayaddr` before our verack to peers from 70016 (see
    /// [`crate::wire::overlay_announce`]); `None`: not told (no overlay, or a peer that must
    /// not link our overlay to this connection).
    pub overlay: Option<OverlayAnnounce>,
}

/// What the peer told us about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerVersion {
    /// Protocol version.
    pub version: u32,
    /// Services announced.
    pub services: ServiceFlags,
    /// User agent.
    pub user_agent: String,
    /// Best height announced.
    pub start_height: i32,
    /// Whether it wants transactions relayed.
    pub relay: bool,
    /// Its version nonce.
    pub nonce: u64,
    /// Its clock, unix seconds.
    pub timestamp: i64,
    /// Our address as the peer sees it.
    pub addr_as_seen: Option<SocketAddr>,
    /// It sent `wtxidrelay` (BIP339).
    pub wtxidrelay: bool,
    /// It sent `sendaddrv2` (BIP155).
    pub sendaddrv2: bool,
    /// Its overlay, from the first `overlayaddr` it sent before its verack.
    pub overlay: Option<OverlayAnnounce>,
}

/// A handshake failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// version and verack did not cross in time.
    #[error("handshake not complete after {0:?}")]
    Timeout(Duration),
    /// The peer echoed one of our own nonces: we dialled ourselves.
    #[error("connected to ourselves (nonce {0:016x})")]
    SelfConnection(u64),
    /// Protocol version below our minimum.
    #[error("protocol version {version} below minimum {min}")]
    ObsoleteVersion {
        /// Peer's version.
        version: u32,
        /// Our minimum.
        min: u32,
    },
    /// The user agent matches a banned pattern.
    #[error("user agent {agent:?} matches banned pattern {pattern:?}")]
    BannedUserAgent {
        /// Peer's user agent.
        agent: String,
        /// The pattern it matched.
        pattern: String,
    },
    /// An automatic outbound peer lacks services we need.
    #[error("peer services {have} lack required {need}")]
    MissingServices {
        /// Peer's services.
        have: ServiceFlags,
        /// Required services.
        need: ServiceFlags,
    },
    /// A second version message.
    #[error("duplicate version message")]
    DuplicateVersion,
    /// A message other than version arrived before the peer's version.
    #[error("{0} before version")]
    MessageBeforeVersion(String),
}

impl HandshakeError {
    /// A short stable name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            HandshakeError::Timeout(_) => "handshake_timeout",
            HandshakeError::SelfConnection(_) => "self_connection",
            HandshakeError::ObsoleteVersion { .. } => "obsolete_version",
            HandshakeError::BannedUserAgent { .. } => "banned_user_agent",
            HandshakeError::MissingServices { .. } => "missing_services",
            HandshakeError::DuplicateVersion => "duplicate_version",
            HandshakeError::MessageBeforeVersion(_) => "message_before_version",
        }
    }
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum HandshakeStep {
    /// Send this message to the peer.
    Send(Message),
    /// The handshake is complete (emitted once).
    Complete(PeerVersion),
}

/// Handshake state of one connection.
#[derive(Debug)]
pub struct Handshake {
    direction: Direction,
    manual: bool,
    our_nonce: u64,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    started: Instant,
    timeout: Duration,
    sent_version: bool,
    peer_version: Option<PeerVersion>,
    sent_verack: bool,
    got_verack: bool,
    complete: bool,
}

impl Handshake {
    /// A new handshake. `manual` peers (`--connect`) are exempt from the services check.
    pub fn new(
        direction: Direction,
        manual: bool,
        our_nonce: u64,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        now: Instant,
        timeout: Duration,
    ) -> Handshake {
        Handshake {
            direction,
            manual,
            our_nonce,
            peer,
            local,
            started: now,
            timeout,
            sent_version: false,
            peer_version: None,
            sent_verack: false,
            got_verack: false,
            complete: false,
        }
    }

    /// Our nonce for this connection.
    pub fn our_nonce(&self) -> u64 {
        self.our_nonce
    }

    /// Whether both veracks have crossed.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Changes the timeout (live config); measured from the start of the handshake.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Starts the handshake: an outbound side sends its version now.
    pub fn start(&mut self, policy: &HandshakePolicy, unix_time: i64) -> Vec<HandshakeStep> {
        if self.direction == Direction::Outbound {
            vec![self.our_version(policy, unix_time)]
        } else {
            Vec::new()
        }
    }

    /// Fails once the handshake has run past its timeout.
    pub fn check_timeout(&self, now: Instant) -> Result<(), HandshakeError> {
        if !self.complete && now.saturating_duration_since(self.started) >= self.timeout {
            return Err(HandshakeError::Timeout(self.timeout));
        }
        Ok(())
    }

    fn our_version(&mut self, policy: &HandshakePolicy, unix_time: i64) -> HandshakeStep {
        self.sent_version = true;
        let unspecified = SocketAddr::from(([0u8; 16], 0));
        let msg = VersionMessage {
            version: policy.protocol_version,
            services: policy.services,
            timestamp: unix_time,
            receiver: Address::new(&self.peer, ServiceFlags::NONE),
            sender: Address::new(&self.local.unwrap_or(unspecified), policy.services),
            nonce: self.our_nonce,
            user_agent: policy.user_agent.clone(),
            start_height: policy.start_height,
            relay: policy.relay,
        };
        HandshakeStep::Send(Message::Network(NetworkMessage::Version(msg)))
    }

    /// Feeds a message received before the handshake completed.
    ///
    /// `is_our_nonce` says whether a nonce is one we sent on any of our outbound connections.
    pub fn on_message(
        &mut self,
        msg: &Message,
        policy: &HandshakePolicy,
        unix_time: i64,
        is_our_nonce: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<HandshakeStep>, HandshakeError> {
        let mut steps = Vec::new();
        match msg {
            Message::Network(NetworkMessage::Version(v)) => {
                if self.peer_version.is_some() {
                    return Err(HandshakeError::DuplicateVersion);
                }
                self.check_version(v, policy, is_our_nonce)?;
                self.peer_version = Some(PeerVersion {
                    version: v.version,
                    services: v.services,
                    user_agent: v.user_agent.clone(),
                    start_height: v.start_height,
                    relay: v.relay,
                    nonce: v.nonce,
                    timestamp: v.timestamp,
                    addr_as_seen: v.receiver.socket_addr().ok(),
                    wtxidrelay: false,
                    sendaddrv2: false,
                    overlay: None,
                });
                if !self.sent_version {
                    steps.push(self.our_version(policy, unix_time));
                }
                // Feature negotiation must precede our verack (BIP339, BIP155), and only to
                // peers from 70016: older software may disconnect on messages it does not know
                // (Core sends neither to them either).
                if v.version >= FEATURE_NEGOTIATION_VERSION {
                    steps.push(HandshakeStep::Send(Message::Network(
                        NetworkMessage::WtxidRelay,
                    )));
                    steps.push(HandshakeStep::Send(Message::Network(
                        NetworkMessage::SendAddrV2,
                    )));
                    if let Some(overlay) = &policy.overlay {
                        steps.push(HandshakeStep::Send(Message::OverlayAddr(overlay.clone())));
                    }
                }
                steps.push(HandshakeStep::Send(Message::Network(
                    NetworkMessage::Verack,
                )));
                self.sent_verack = true;
            }
            _ if self.peer_version.is_none() => {
                return Err(HandshakeError::MessageBeforeVersion(
                    msg.command().to_string(),
                ));
            }
            Message::Network(NetworkMessage::Verack) => self.got_verack = true,
            Message::Network(NetworkMessage::WtxidRelay) => {
                // Core ignores it from a peer that announced a version before 70016.
                if let Some(pv) = self
                    .peer_version
                    .as_mut()
                    .filter(|pv| pv.version >= FEATURE_NEGOTIATION_VERSION)
                {
                    pv.wtxidrelay = true;
                }
            }
            Message::Network(NetworkMessage::SendAddrV2) => {
                if let Some(pv) = &mut self.peer_version {
                    pv.sendaddrv2 = true;
                }
            }
            Message::OverlayAddr(overlay) => {
                // The first one counts; from a peer before 70016 none does (we would not
                // have sent ours either).
                if let Some(pv) = self
                    .peer_version
                    .as_mut()
                    .filter(|pv| pv.version >= FEATURE_NEGOTIATION_VERSION && pv.overlay.is_none())
                {
                    pv.overlay = Some(overlay.clone());
                }
            }
            // Anything else before the verack is ignored, as Core does.
            _ => {}
        }
        if !self.complete && self.sent_verack && self.got_verack {
            if let Some(pv) = &self.peer_version {
                self.complete = true;
                steps.push(HandshakeStep::Complete(pv.clone()));
            }
        }
        Ok(steps)
    }

    fn check_version(
        &self,
        v: &VersionMessage,
        policy: &HandshakePolicy,
        is_our_nonce: &dyn Fn(u64) -> bool,
    ) -> Result<(), HandshakeError> {
        if v.nonce != 0 && (v.nonce == self.our_nonce || is_our_nonce(v.nonce)) {
            return Err(HandshakeError::SelfConnection(v.nonce));
        }
        if v.version < policy.min_protocol_version {
            return Err(HandshakeError::ObsoleteVersion {
                version: v.version,
                min: policy.min_protocol_version,
            });
        }
        if let Some(pattern) = policy
            .banned_user_agents
            .iter()
            .find(|p| !p.is_empty() && v.user_agent.contains(p.as_str()))
        {
            return Err(HandshakeError::BannedUserAgent {
                agent: v.user_agent.clone(),
                pattern: pattern.clone(),
            });
        }
        if self.direction == Direction::Outbound
            && !self.manual
            && !v.services.has(policy.required_services)
        {
            return Err(HandshakeError::MissingServices {
                have: v.services,
                need: policy.required_services,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HandshakePolicy {
        HandshakePolicy {
            protocol_version: 70016,
            min_protocol_version: 70001,
            user_agent: "/meshd:test/".into(),
            services: ServiceFlags::NETWORK,
            required_services: ServiceFlags::NETWORK,
            banned_user_agents: vec!["/evil:".into()],
            timeout: Duration::from_secs(60),
            relay: true,
            start_height: 0,
            overlay: None,
        }
    }

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn version_of(steps: &[HandshakeStep]) -> VersionMessage {
        steps
            .iter()
            .find_map(|s| match s {
                HandshakeStep::Send(Message::Network(NetworkMessage::Version(v))) => {
                    Some(v.clone())
                }
                _ => None,
            })
            .expect("a version")
    }

    fn peer_version(nonce: u64, agent: &str, services: ServiceFlags, version: u32) -> Message {
        let mut v = VersionMessage::new(
            services,
            0,
            Address::new(&addr(1), ServiceFlags::NONE),
            Address::new(&addr(2), services),
            nonce,
            agent.into(),
            7,
        );
        v.version = version;
        Message::Network(NetworkMessage::Version(v))
    }

    fn never(_: u64) -> bool {
        false
    }

    fn verack() -> Message {
        Message::Network(NetworkMessage::Verack)
    }

    fn completed(steps: &[HandshakeStep]) -> bool {
        steps
            .iter()
            .any(|s| matches!(s, HandshakeStep::Complete(_)))
    }

    /// Runs two handshake machines against each other, delivering messages in the order
    /// `order` picks, and checks both complete.
    fn cross(outbound_first: bool) {
        let now = Instant::now();
        let p = policy();
        let mut a = Handshake::new(Direction::Outbound, false, 1, addr(2), None, now, p.timeout);
        let mut b = Handshake::new(Direction::Inbound, false, 2, addr(1), None, now, p.timeout);
        let mut to_b: Vec<Message> = Vec::new();
        let mut to_a: Vec<Message> = Vec::new();
        let sends = |steps: Vec<HandshakeStep>, q: &mut Vec<Message>| -> bool {
            let mut done = false;
            for s in steps {
                match s {
                    HandshakeStep::Send(m) => q.push(m),
                    HandshakeStep::Complete(_) => done = true,
                }
            }
            done
        };
        sends(a.start(&p, 0), &mut to_b);
        sends(b.start(&p, 0), &mut to_a);
        let (mut a_done, mut b_done) = (false, false);
        for _ in 0..20 {
            if outbound_first {
                for m in std::mem::take(&mut to_a) {
                    a_done |= sends(a.on_message(&m, &p, 0, &never).unwrap(), &mut to_b);
                }
                for m in std::mem::take(&mut to_b) {
                    b_done |= sends(b.on_message(&m, &p, 0, &never).unwrap(), &mut to_a);
                }
            } else {
                for m in std::mem::take(&mut to_b) {
                    b_done |= sends(b.on_message(&m, &p, 0, &never).unwrap(), &mut to_a);
                }
                for m in std::mem::take(&mut to_a) {
                    a_done |= sends(a.on_message(&m, &p, 0, &never).unwrap(), &mut to_b);
                }
            }
        }
        assert!(a_done && b_done && a.is_complete() && b.is_complete());
    }

    #[test]
    fn two_sides_complete_whatever_the_delivery_order() {
        cross(true);
        cross(false);
    }

    #[test]
    fn verack_may_arrive_before_our_verack_is_sent() {
        // Outbound: the peer's verack (acking our version) arrives before its version.
        let now = Instant::now();
        let p = policy();
        let mut h = Handshake::new(Direction::Outbound, false, 1, addr(2), None, now, p.timeout);
        let steps = h.start(&p, 0);
        assert_eq!(version_of(&steps).nonce, 1);
        // verack before the peer's version is a violation, as in Core.
        let mut h2 = Handshake::new(Direction::Outbound, false, 1, addr(2), None, now, p.timeout);
        assert!(matches!(
            h2.on_message(&verack(), &p, 0, &never),
            Err(HandshakeError::MessageBeforeVersion(_))
        ));
        let steps = h
            .on_message(
                &peer_version(9, "/x:1/", ServiceFlags::NETWORK, 70016),
                &p,
                0,
                &never,
            )
            .unwrap();
        assert!(!completed(&steps));
        assert!(completed(&h.on_message(&verack(), &p, 0, &never).unwrap()));
    }

    /// The commands of the messages `steps` send, in order.
    fn sent_commands(steps: &[HandshakeStep]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                HandshakeStep::Send(m) => Some(m.command().to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn inbound_answers_version_with_version_then_verack() {
        let now = Instant::now();
        let p = policy();
        let mut h = Handshake::new(Direction::Inbound, false, 5, addr(2), None, now, p.timeout);
        assert!(h.start(&p, 0).is_empty());
        let steps = h
            .on_message(
                &peer_version(9, "/x:1/", ServiceFlags::NONE, 70015),
                &p,
                0,
                &never,
            )
            .unwrap();
        let cmds = sent_commands(&steps);
        // Before 70016 no feature negotiation (Core: older software may not know it).
        assert_eq!(cmds, ["version", "verack"]);
        let mut h = Handshake::new(Direction::Inbound, false, 5, addr(2), None, now, p.timeout);
        let steps = h
            .on_message(
                &peer_version(9, "/x:1/", ServiceFlags::NONE, 70016),
                &p,
                0,
                &never,
            )
            .unwrap();
        assert_eq!(
            sent_commands(&steps),
            ["version", "wtxidrelay", "sendaddrv2", "verack"]
        );
    }

    #[test]
    fn self_connection_is_detected_by_nonce() {
        let now = Instant::now();
        let p = policy();
        let mut h = Handshake::new(Direction::Inbound, false, 5, addr(2), None, now, p.timeout);
        let ours = |n: u64| n == 42;
        assert_eq!(
            h.on_message(
                &peer_version(42, "/meshd/", ServiceFlags::NETWORK, 70016),
                &p,
                0,
                &ours
            ),
            Err(HandshakeError::SelfConnection(42))
        );
    }

    #[test]
    fn policy_checks_refuse_old_banned_and_serviceless_peers() {
        let now = Instant::now();
        let p = policy();
        let fresh = |dir, manual| Handshake::new(dir, manual, 5, addr(2), None, now, p.timeout);
        assert!(matches!(
            fresh(Direction::Inbound, false).on_message(
                &peer_version(9, "/x/", ServiceFlags::NETWORK, 60000),
                &p,
                0,
                &never
            ),
            Err(HandshakeError::ObsoleteVersion { version: 60000, .. })
        ));
        assert!(matches!(
            fresh(Direction::Inbound, false).on_message(
                &peer_version(9, "/evil:1.0/", ServiceFlags::NETWORK, 70016),
                &p,
                0,
                &never
            ),
            Err(HandshakeError::BannedUserAgent { .. })
        ));
        assert!(matches!(
            fresh(Direction::Outbound, false).on_message(
                &peer_version(9, "/x/", ServiceFlags::NONE, 70016),
                &p,
                0,
                &never
            ),
            Err(HandshakeError::MissingServices { .. })
        ));
        // Manual outbound and inbound peers are exempt from the services requirement.
        assert!(fresh(Direction::Outbound, true)
            .on_message(
                &peer_version(9, "/x/", ServiceFlags::NONE, 70016),
                &p,
                0,
                &never
            )
            .is_ok());
        assert!(fresh(Direction::Inbound, false)
            .on_message(
                &peer_version(9, "/x/", ServiceFlags::NONE, 70016),
                &p,
                0,
                &never
            )
            .is_ok());
    }

    #[test]
    fn duplicate_version_and_early_messages_are_violations() {
        let now = Instant::now();
        let p = policy();
        let mut h = Handshake::new(Direction::Inbound, false, 5, addr(2), None, now, p.timeout);
        let ping = Message::Network(NetworkMessage::Ping(1));
        assert!(matches!(
            h.on_message(&ping, &p, 0, &never),
            Err(HandshakeError::MessageBeforeVersion(c)) if c == "ping"
        ));
        let v = peer_version(9, "/x/", ServiceFlags::NETWORK, 70016);
        h.on_message(&v, &p, 0, &never).unwrap();
        assert_eq!(
            h.on_message(&v, &p, 0, &never),
            Err(HandshakeError::DuplicateVersion)
        );
    }

    #[test]
    fn timeout_fires_only_after_the_deadline_in_virtual_time() {
        let t0 = Instant::now();
        let p = policy();
        let h = Handshake::new(Direction::Outbound, false, 1, addr(2), None, t0, p.timeout);
        assert!(h.check_timeout(t0 + Duration::from_secs(59)).is_ok());
        assert_eq!(
            h.check_timeout(t0 + Duration::from_secs(60)),
            Err(HandshakeError::Timeout(Duration::from_secs(60)))
        );
    }

    fn announce(n: u8) -> OverlayAnnounce {
        let key = libp2p::identity::Keypair::ed25519_from_bytes([n; 32]).unwrap();
        OverlayAnnounce {
            peer_id: key.public().to_peer_id(),
            addrs: vec![format!("/ip4/203.0.113.{n}/tcp/8335").parse().unwrap()],
        }
    }

    #[test]
    fn our_overlayaddr_goes_before_verack_to_peers_from_70016_only() {
        let now = Instant::now();
        let mut p = policy();
        p.overlay = Some(announce(1));
        for (version, want) in [
            (70015, &["version", "verack"][..]),
            (
                70016,
                &[
                    "version",
                    "wtxidrelay",
                    "sendaddrv2",
                    "overlayaddr",
                    "verack",
                ][..],
            ),
        ] {
            let mut h = Handshake::new(Direction::Inbound, false, 5, addr(2), None, now, p.timeout);
            let steps = h
                .on_message(
                    &peer_version(9, "/x/", ServiceFlags::NONE, version),
                    &p,
                    0,
                    &never,
                )
                .unwrap();
            assert_eq!(sent_commands(&steps), want, "to a {version} peer");
        }
    }

    #[test]
    fn a_peers_first_overlayaddr_before_verack_is_recorded_and_one_from_before_70016_is_not() {
        let now = Instant::now();
        let p = policy();
        for (version, want) in [(70016, Some(announce(7))), (70015, None)] {
            let mut h =
                Handshake::new(Direction::Outbound, false, 1, addr(2), None, now, p.timeout);
            h.start(&p, 0);
            h.on_message(
                &peer_version(9, "/x/", ServiceFlags::NETWORK, version),
                &p,
                0,
                &never,
            )
            .unwrap();
            h.on_message(&Message::OverlayAddr(announce(7)), &p, 0, &never)
                .unwrap();
            // A second one does not replace the first.
            h.on_message(&Message::OverlayAddr(announce(8)), &p, 0, &never)
                .unwrap();
            let steps = h.on_message(&verack(), &p, 0, &never).unwrap();
            match &steps[..] {
                [HandshakeStep::Complete(pv)] => assert_eq!(pv.overlay, want, "{version}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn negotiation_messages_before_verack_are_recorded() {
        let now = Instant::now();
        let p = policy();
        let mut h = Handshake::new(Direction::Outbound, false, 1, addr(2), None, now, p.timeout);
        h.start(&p, 0);
        h.on_message(
            &peer_version(9, "/x/", ServiceFlags::NETWORK, 70016),
            &p,
            0,
            &never,
        )
        .unwrap();
        h.on_message(&Message::Network(NetworkMessage::WtxidRelay), &p, 0, &never)
            .unwrap();
        h.on_message(&Message::Network(NetworkMessage::SendAddrV2), &p, 0, &never)
            .unwrap();
        let steps = h.on_message(&verack(), &p, 0, &never).unwrap();
        match &steps[..] {
            [HandshakeStep::Complete(pv)] => assert!(pv.wtxidrelay && pv.sendaddrv2),
            other => panic!("{other:?}"),
        }
    }
}
