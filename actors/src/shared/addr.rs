//! Addresses as every actor sees them: the address book's entry, an address as gossip
//! carries it and the per-peer budget for receiving them, Core's routability rules, network
//! groups, and why an addr-fetch gave nothing. Sans-IO.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::peer::handshake::HandshakeError;
use crate::peer::reason::ProxyError;
use crate::shared::bans::canonical;
use crate::shared::overlay::{Network, OverlayAddr};

/// Which table an entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Table {
    /// Heard of, never connected.
    New,
    /// Connected to at least once.
    Tried,
}

/// One known address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrEntry {
    /// The address.
    pub addr: SocketAddr,
    /// Services it announced (or was announced with).
    pub services: u64,
    /// Last time it was seen, unix seconds (from gossip timestamps or our own contact).
    pub last_seen: u64,
    /// Last time we tried to connect.
    pub last_try: Option<u64>,
    /// Failed attempts since the last success.
    pub attempts: u32,
    /// Last successful connection.
    pub last_success: Option<u64>,
    /// Who told us (the IP of the peer, or of the DNS seed's answer).
    pub source: IpAddr,
    /// Table it is in.
    pub table: Table,
    /// The onion, I2P or CJDNS address `addr` stands for (see [`crate::shared::overlay`]).
    pub overlay: Option<OverlayAddr>,
}

/// Whether an address is loopback, private or link-local (not reachable from the Internet).
pub fn is_local_or_private(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Whether gossip may carry an address (Core's `CNetAddr::IsRoutable`): not loopback,
/// private, link-local, unspecified, CGNAT (100.64/10), benchmarking (198.18/15), "this
/// network" (0/8), reserved (240/4), broadcast or multicast. Documentation ranges
/// (192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32) pass, unlike Core: the namespace
/// labs use them as public addresses, and no real peer is ever found there.
pub fn is_routable(ip: IpAddr) -> bool {
    if is_local_or_private(ip) || ip.is_multicast() {
        return false;
    }
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            // RFC 4843 (ORCHID) and RFC 7343 (ORCHIDv2): 2001:10::/28, 2001:20::/28.
            !(seg[0] == 0x2001 && (seg[1] & 0xfff0 == 0x0010 || seg[1] & 0xfff0 == 0x0020))
        }
    }
}

/// Network groups of inbound onion peers: one of their own, never the loopback group of the
/// local peers they share an address with (they all arrive from Tor on 127.0.0.1).
pub fn onion_inbound_netgroup() -> Vec<u8> {
    vec![4]
}

/// The network group of an address under `asmap` (Core's `NetGroupManager::GetGroup`): the
/// AS that announces it where the map names one (Core's group: its IPv6 class, then the AS
/// number, little-endian, so IPv4 and IPv6 of one AS share it), else [`netgroup`]. Overlay
/// addresses and addresses that are not routable (Core's `NET_UNROUTABLE` class) are never
/// mapped.
pub fn netgroup_as(ip: IpAddr, asmap: Option<&crate::shared::asmap::Asmap>) -> Vec<u8> {
    let ip = canonical(ip);
    if let Some(asn) = asmap.and_then(|m| mapped_as(m, ip)) {
        let mut g = vec![AS_GROUP_CLASS];
        g.extend_from_slice(&asn.to_le_bytes());
        return g;
    }
    netgroup(ip)
}

/// The AS `asmap` names for `ip` (Core's `GetMappedAS`): IPv4 and IPv6 addresses that are
/// routable only, never an overlay's internal address.
pub fn mapped_as(asmap: &crate::shared::asmap::Asmap, ip: IpAddr) -> Option<u32> {
    let ip = canonical(ip);
    if Network::of_ip(ip).is_overlay() || !is_routable(ip) {
        return None;
    }
    asmap.lookup(ip)
}

/// The first byte of an AS group (Core's `NET_IPV6`); no other group is five bytes long
/// starting with it.
const AS_GROUP_CLASS: u8 = 2;

/// The network group of an address: IPv4 /16, IPv6 /32; loopback and unspecified addresses
/// form one "local" group; onion, I2P and CJDNS addresses form sixteen groups per network
/// (by four bits of the address, as Core groups them).
pub fn netgroup(ip: IpAddr) -> Vec<u8> {
    let ip = canonical(ip);
    if ip.is_loopback() || ip.is_unspecified() {
        return vec![0];
    }
    if let IpAddr::V6(v6) = ip {
        let o = v6.octets();
        // BIP155 network ids; the internal address's bits after the prefix (a hash of the
        // key for onion and I2P, the address itself for CJDNS).
        match Network::of_ip(ip) {
            Network::Onion => return vec![4, o[6] >> 4],
            Network::I2p => return vec![5, o[6] >> 4],
            Network::Cjdns => return vec![6, o[1] >> 4],
            Network::Ipv4 | Network::Ipv6 => {}
        }
    }
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            vec![4, o[0], o[1]]
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            vec![6, o[0], o[1], o[2], o[3]]
        }
    }
}

/// An address as gossip carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GossipAddr {
    /// The address (internal, for an overlay address).
    pub addr: SocketAddr,
    /// The onion, I2P or CJDNS address `addr` stands for.
    pub overlay: Option<OverlayAddr>,
    /// Services.
    pub services: u64,
    /// Last seen, unix seconds.
    pub time: u32,
}

impl GossipAddr {
    /// The addresses of an `addr` message (IPv4 and IPv6; anything else dropped).
    pub fn from_addr_list(list: &[(u32, bitcoin::p2p::address::Address)]) -> Vec<GossipAddr> {
        list.iter()
            .filter_map(|(time, a)| {
                a.socket_addr().ok().map(|addr| GossipAddr {
                    addr,
                    overlay: None,
                    services: a.services.to_u64(),
                    time: *time,
                })
            })
            .collect()
    }

    /// The addresses of an `addrv2` message: Tor v3, I2P and CJDNS kept under their
    /// internal addresses; Tor v2 and unknown networks dropped, as Core drops them.
    pub fn from_addrv2_list(list: &[bitcoin::p2p::address::AddrV2Message]) -> Vec<GossipAddr> {
        list.iter()
            .filter_map(|m| {
                let (addr, overlay) = match OverlayAddr::from_addrv2(&m.addr) {
                    Some(o) => (o.internal(m.port), Some(o)),
                    None => (m.socket_addr().ok()?, None),
                };
                Some(GossipAddr {
                    addr,
                    overlay,
                    services: m.services.to_u64(),
                    time: m.time,
                })
            })
            .collect()
    }
}

impl From<&AddrEntry> for GossipAddr {
    fn from(e: &AddrEntry) -> GossipAddr {
        GossipAddr {
            addr: e.addr,
            overlay: e.overlay,
            services: e.services,
            time: e.last_seen.min(u32::MAX as u64) as u32,
        }
    }
}

/// Per-peer token bucket for incoming addresses (Core: 0.1 per second, burst 1000; a peer
/// starts with one token and gets 1000 more when we send it a getaddr).
#[derive(Debug, Clone)]
pub struct AddrRateLimiter {
    tokens: f64,
    last: std::time::Instant,
}

/// Addresses per second a peer may send us beyond what we asked for (Core: 0.1).
pub const ADDR_RATE_PER_SEC: f64 = 0.1;
/// Most address tokens a peer can hold (Core: 1000).
pub const ADDR_BURST: f64 = 1000.0;

impl AddrRateLimiter {
    /// A limiter holding one token.
    pub fn new(now: std::time::Instant) -> AddrRateLimiter {
        AddrRateLimiter {
            tokens: 1.0,
            last: now,
        }
    }

    /// Adds `n` tokens (after we send a getaddr), up to the burst.
    pub fn grant(&mut self, n: f64) {
        self.tokens = (self.tokens + n).min(ADDR_BURST);
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * ADDR_RATE_PER_SEC).min(ADDR_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a fetch gave nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrFetchError {
    /// No `--proxy` to reach a name through.
    #[error("no proxy to fetch addresses through")]
    NoProxy,
    /// The proxy could not reach the seed.
    #[error("{0}")]
    Proxy(ProxyError),
    /// The seed failed the version handshake.
    #[error("handshake: {0}")]
    Handshake(HandshakeError),
    /// A frame or payload we cannot read.
    #[error("bad message: {0}")]
    Malformed(String),
    /// The seed closed the connection before answering.
    #[error("closed before an answer")]
    Closed,
    /// No answer within [`ADDR_FETCH_TIMEOUT`](crate::manager::addr_fetch::ADDR_FETCH_TIMEOUT).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// More than [`ADDR_FETCH_MAX_BYTES`](crate::manager::addr_fetch::ADDR_FETCH_MAX_BYTES) without an answer.
    #[error("over {0} bytes without an answer")]
    TooMuch(usize),
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(String),
}

impl AddrFetchError {
    /// A short stable name, the `result` label of `meshd_addr_fetches_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            AddrFetchError::NoProxy => "no_proxy",
            AddrFetchError::Proxy(_) => "proxy",
            AddrFetchError::Handshake(_) => "handshake",
            AddrFetchError::Malformed(_) => "malformed",
            AddrFetchError::Closed => "closed",
            AddrFetchError::Timeout(_) => "timeout",
            AddrFetchError::TooMuch(_) => "too_much",
            AddrFetchError::Io(_) => "io",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn under_an_asmap_groups_are_by_as_and_unmapped_addresses_keep_their_prefix() {
        use crate::shared::asmap::{encode, Asmap};
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let map = Asmap::from_bytes(encode::prefixes(&[
            (ip("203.0.113.0"), 24, 64500),
            (ip("198.51.100.0"), 24, 64500),
            (ip("2001:db8::"), 32, 64500),
            (ip("192.0.2.0"), 24, 64501),
        ]))
        .unwrap();
        let g = |s: &str| netgroup_as(ip(s), Some(&map));
        // One AS across /16s and across IPv4 and IPv6: one group (Core's GetGroup).
        assert_eq!(g("203.0.113.7"), g("198.51.100.9"));
        assert_eq!(g("203.0.113.7"), g("2001:db8::5"));
        assert_eq!(g("203.0.113.7"), vec![2, 0xf4, 0xfb, 0, 0]);
        assert_ne!(g("203.0.113.7"), g("192.0.2.1"));
        // Unmapped and local addresses: groups by prefix, as without a map.
        assert_eq!(g("8.8.4.4"), netgroup(ip("8.8.4.4")));
        assert_eq!(g("127.0.0.1"), netgroup(ip("127.0.0.1")));
        assert_eq!(mapped_as(&map, ip("10.0.0.1")), None);
        assert_eq!(mapped_as(&map, ip("::ffff:203.0.113.7")), Some(64500));
    }

    #[test]
    fn netgroups_follow_core() {
        assert_eq!(
            netgroup("203.0.113.5".parse().unwrap()),
            netgroup("203.0.7.1".parse().unwrap())
        );
        assert_ne!(
            netgroup("203.0.113.5".parse().unwrap()),
            netgroup("203.1.113.5".parse().unwrap())
        );
        assert_eq!(
            netgroup("127.0.0.1".parse().unwrap()),
            netgroup("::1".parse().unwrap())
        );
        assert_eq!(
            netgroup("::ffff:203.0.113.5".parse().unwrap()),
            netgroup("203.0.1.1".parse().unwrap())
        );
    }

    #[test]
    fn addr_rate_limit_follows_core() {
        let t0 = Instant::now();
        let mut r = AddrRateLimiter::new(t0);
        assert!(r.take(t0));
        assert!(!r.take(t0), "one token to start");
        assert!(r.take(t0 + Duration::from_secs(10)), "0.1 per second");
        r.grant(5000.0);
        let taken = (0..2000)
            .filter(|_| r.take(t0 + Duration::from_secs(10)))
            .count();
        assert_eq!(taken, 1000, "burst capped at 1000");
    }
}
