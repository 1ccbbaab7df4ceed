//! Why a connection ended: one typed reason per exit path, logged with the peer and counted.

use super::HandshakeError;
use crate::shared::overlay::Network;
use crate::wire::v2::V2Error;
use crate::wire::{FrameError, PayloadError};
use std::net::SocketAddr;

/// The reason a connection closed. Every disconnect carries exactly one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisconnectReason {
    /// The TCP connect failed.
    #[error("connect failed: {0}")]
    ConnectFailed(String),
    /// The TCP connect did not finish in time.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The SOCKS5 proxy could not give us the peer.
    #[error("{0}")]
    Proxy(ProxyError),
    /// No route to the peer's network (`--onlynet`, no proxy for onion).
    #[error("{0}")]
    NoRoute(NoRoute),
    /// The peer closed the connection.
    #[error("peer closed the connection")]
    PeerClosed,
    /// A socket read or write failed.
    #[error("socket error: {0}")]
    Io(String),
    /// The byte stream broke the framing rules (wrong magic, oversized, bad command).
    #[error("framing violation: {0}")]
    Frame(FrameError),
    /// The BIP324 v2 handshake failed.
    #[error("v2 transport: {0}")]
    V2(V2Error),
    /// A message that must decode did not (during the handshake).
    #[error("malformed message: {0}")]
    Payload(PayloadError),
    /// The handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(HandshakeError),
    /// The peer broke a protocol rule after the handshake (e.g. a second protoconf).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer sent more frames we drop unread than its budget allows
    /// ([`USELESS_FRAME_BURST`](crate::peer::useless::USELESS_FRAME_BURST)).
    #[error("{0} useless frames (dropped unread)")]
    UselessFrames(u64),
    /// A ping went unanswered past the ping timeout.
    #[error("no pong within {0:?}")]
    PingTimeout(std::time::Duration),
    /// The peer read our messages too slowly and its send queue filled.
    #[error("send queue full ({0} bytes or messages unsent)")]
    SendQueueFull(usize),
    /// Evicted to make room for a new inbound peer.
    #[error("evicted to make room for a new inbound peer")]
    Evicted,
    /// Its address was banned.
    #[error("banned: {0}")]
    Banned(String),
    /// Its misbehaviour score reached the threshold: disconnected (and its address
    /// discouraged, unless it is local, an onion peer or whitelisted), or another
    /// connection from a discouraged address.
    #[error("misbehaving: {0}")]
    Misbehaving(String),
    /// A live config change lowered the slot limit below the connections held.
    #[error("slot limit lowered")]
    SlotLimitLowered,
    /// A local request (API, manager) closed it.
    #[error("disconnect requested")]
    Requested,
    /// A feeler's work is done: the address answered (Core closes a feeler once it
    /// handshakes).
    #[error("feeler done")]
    FeelerDone,
    /// An extra block-relay-only peer's time is up (Core's EvictExtraOutboundPeers).
    #[error("extra block-relay-only peer let go")]
    ExtraBlockRelay,
    /// The node is shutting down.
    #[error("node shutting down")]
    Shutdown,
    /// The actor was stopped without a recorded reason (killed, or its task panicked).
    #[error("connection actor stopped: {0}")]
    Stopped(String),
}

impl DisconnectReason {
    /// A short stable name, used as the `reason` metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            DisconnectReason::ConnectFailed(_) => "connect_failed",
            DisconnectReason::ConnectTimeout => "connect_timeout",
            DisconnectReason::Proxy(e) => e.kind(),
            DisconnectReason::NoRoute(_) => "no_route",
            DisconnectReason::PeerClosed => "peer_closed",
            DisconnectReason::Io(_) => "io_error",
            DisconnectReason::Frame(e) => e.kind(),
            DisconnectReason::V2(e) => e.kind(),
            DisconnectReason::Payload(e) => e.kind(),
            DisconnectReason::Handshake(e) => e.kind(),
            DisconnectReason::Protocol(_) => "protocol_violation",
            DisconnectReason::UselessFrames(_) => "useless_frames",
            DisconnectReason::PingTimeout(_) => "ping_timeout",
            DisconnectReason::SendQueueFull(_) => "send_queue_full",
            DisconnectReason::Evicted => "evicted",
            DisconnectReason::Banned(_) => "banned",
            DisconnectReason::Misbehaving(_) => "misbehaving",
            DisconnectReason::SlotLimitLowered => "slot_limit_lowered",
            DisconnectReason::Requested => "requested",
            DisconnectReason::FeelerDone => "feeler_done",
            DisconnectReason::ExtraBlockRelay => "extra_block_relay",
            DisconnectReason::Shutdown => "shutdown",
            DisconnectReason::Stopped(_) => "stopped",
        }
    }
}

/// Why no route exists to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no route to the {0} network (see --onlynet, --proxy, --onion)")]
pub struct NoRoute(pub Network);

/// A failed connection through a proxy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The proxy itself could not be reached.
    #[error("proxy {0} unreachable: {1}")]
    ProxyUnreachable(SocketAddr, String),
    /// The proxy closed the connection or failed mid-exchange.
    #[error("proxy closed the connection during the SOCKS5 exchange: {0}")]
    Closed(String),
    /// The exchange took longer than the connect timeout.
    #[error("SOCKS5 exchange timed out")]
    Timeout,
    /// The proxy refused our credentials, or none of our authentication methods.
    #[error("proxy authentication failed: {0}")]
    AuthFailed(String),
    /// The proxy's answer broke the protocol (version, reserved byte, address type).
    #[error("malformed SOCKS5 reply: {0}")]
    BadReply(String),
    /// The proxy could not resolve or reach the host (reply 4; Tor's for unknown onions).
    #[error("proxy: host unreachable or unknown")]
    HostUnreachable,
    /// Reply 3.
    #[error("proxy: network unreachable")]
    NetworkUnreachable,
    /// Reply 5: the peer refused the proxy's connection.
    #[error("proxy: connection refused by the peer")]
    Refused,
    /// Reply 6 (Tor: the circuit timed out).
    #[error("proxy: TTL expired")]
    TtlExpired,
    /// Reply 2: the proxy's rules forbid the connection.
    #[error("proxy: connection not allowed by its rules")]
    NotAllowed,
    /// Reply 1, 7, 8 or one not in RFC 1928.
    #[error("proxy failure: {0}")]
    Failure(String),
    /// The target name is not one SOCKS5 can carry (over 255 bytes).
    #[error("target name not valid for SOCKS5: {0}")]
    BadTarget(String),
}

impl ProxyError {
    /// A short stable name, used as the `kind` metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::ProxyUnreachable(..) => "proxy_unreachable",
            ProxyError::Closed(_) => "proxy_closed",
            ProxyError::Timeout => "proxy_timeout",
            ProxyError::AuthFailed(_) => "proxy_auth_failed",
            ProxyError::BadReply(_) => "proxy_bad_reply",
            ProxyError::HostUnreachable => "proxy_host_unreachable",
            ProxyError::NetworkUnreachable => "proxy_network_unreachable",
            ProxyError::Refused => "proxy_connection_refused",
            ProxyError::TtlExpired => "proxy_ttl_expired",
            ProxyError::NotAllowed => "proxy_not_allowed",
            ProxyError::Failure(_) => "proxy_failure",
            ProxyError::BadTarget(_) => "proxy_bad_target",
        }
    }
}
