//! Addresses of the overlay networks BIP155 gossips: Tor v3 onion services, I2P and CJDNS.
//!
//! The rest of meshd (slots, restarts, bans, the address book's buckets) keys peers by a
//! `SocketAddr`. An onion or I2P address does not fit in one, so each is given an
//! *internal* IPv6 address inside a range reserved for it, the way Bitcoin Core once kept
//! Tor v2 addresses in OnionCat's `fd87:d87e:eb43::/48`: Tor v3 keys map into that range and
//! I2P hashes into GarliCat's `fd60:db4d:ddb5::/48`, each by 80 bits of a SHA-256 of the
//! key. The internal address is only ever an identity inside this process and its state
//! files; the [`OverlayAddr`] itself (kept next to it in the address book and the peer
//! table) is what is dialled, gossiped and shown. CJDNS addresses are IPv6 addresses in
//! `fc00::/8` and are their own internal address.
//!
//! Text forms follow Tor (`rend-spec-v3`: base32 of key, checksum and version, `.onion`)
//! and I2P (base32 of the destination hash, `.b32.i2p`). Tor v2 addresses are refused, as
//! Core refuses them since Tor dropped them.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use bitcoin::hashes::{sha256, Hash};
use bitcoin::p2p::address::AddrV2;
use serde::{Deserialize, Serialize};
use sha3::{Digest, Sha3_256};

/// OnionCat's prefix, where meshd keeps the internal addresses of Tor v3 peers.
const ONION_PREFIX: [u8; 6] = [0xfd, 0x87, 0xd8, 0x7e, 0xeb, 0x43];
/// GarliCat's prefix, where meshd keeps the internal addresses of I2P peers.
const I2P_PREFIX: [u8; 6] = [0xfd, 0x60, 0xdb, 0x4d, 0xdd, 0xb5];
/// Version byte of a Tor v3 onion address.
const ONION_V3_VERSION: u8 = 3;
/// Characters of a Tor v3 onion address before `.onion`: base32 of 35 bytes.
const ONION_V3_CHARS: usize = 56;
/// Characters of an I2P address before `.b32.i2p`: base32 (no padding) of 32 bytes.
const I2P_CHARS: usize = 52;

/// The network an address belongs to, as `--onlynet` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// IPv4.
    Ipv4,
    /// IPv6 (not CJDNS).
    Ipv6,
    /// Tor v3 onion services.
    Onion,
    /// I2P.
    I2p,
    /// CJDNS.
    Cjdns,
}

impl Network {
    /// Every network, in `--onlynet` order.
    pub const ALL: [Network; 5] = [
        Network::Ipv4,
        Network::Ipv6,
        Network::Onion,
        Network::I2p,
        Network::Cjdns,
    ];

    /// The name `--onlynet` takes and the API shows.
    pub fn name(self) -> &'static str {
        match self {
            Network::Ipv4 => "ipv4",
            Network::Ipv6 => "ipv6",
            Network::Onion => "onion",
            Network::I2p => "i2p",
            Network::Cjdns => "cjdns",
        }
    }

    /// Parses an `--onlynet` value (Core's names; `tor` is accepted for `onion`).
    pub fn parse(s: &str) -> Option<Network> {
        match s.to_ascii_lowercase().as_str() {
            "ipv4" => Some(Network::Ipv4),
            "ipv6" => Some(Network::Ipv6),
            "onion" | "tor" => Some(Network::Onion),
            "i2p" => Some(Network::I2p),
            "cjdns" => Some(Network::Cjdns),
            _ => None,
        }
    }

    /// The network of an internal address (see the module documentation).
    pub fn of_ip(ip: IpAddr) -> Network {
        match ip {
            IpAddr::V4(_) => Network::Ipv4,
            IpAddr::V6(v6) => {
                if v6.to_ipv4_mapped().is_some() {
                    return Network::Ipv4;
                }
                let o = v6.octets();
                if o[..6] == ONION_PREFIX {
                    Network::Onion
                } else if o[..6] == I2P_PREFIX {
                    Network::I2p
                } else if o[0] == 0xfc {
                    Network::Cjdns
                } else {
                    Network::Ipv6
                }
            }
        }
    }

    /// Whether this is an overlay network (not reached over plain IP routing).
    pub fn is_overlay(self) -> bool {
        matches!(self, Network::Onion | Network::I2p | Network::Cjdns)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An address on an overlay network, as gossip carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OverlayAddr {
    /// A Tor v3 onion service: its ed25519 public key.
    Onion([u8; 32]),
    /// An I2P destination: the SHA-256 of it.
    I2p([u8; 32]),
    /// A CJDNS address (in `fc00::/8`).
    Cjdns(Ipv6Addr),
}

/// Why a host name is not an overlay address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverlayParseError {
    /// Not an `.onion` or `.b32.i2p` name.
    #[error("not an onion or I2P name")]
    NotOverlay,
    /// A Tor v2 address (16 characters): Tor no longer serves them.
    #[error("Tor v2 onion addresses are no longer supported")]
    OnionV2,
    /// Wrong length, bad base32, bad checksum or version.
    #[error("malformed {0} address")]
    Malformed(&'static str),
}

impl OverlayAddr {
    /// The network.
    pub fn network(&self) -> Network {
        match self {
            OverlayAddr::Onion(_) => Network::Onion,
            OverlayAddr::I2p(_) => Network::I2p,
            OverlayAddr::Cjdns(_) => Network::Cjdns,
        }
    }

    /// The internal address that stands for it (see the module documentation).
    pub fn internal_ip(&self) -> IpAddr {
        let mapped = |prefix: [u8; 6], tag: &[u8], key: &[u8; 32]| {
            let mut data = Vec::with_capacity(tag.len() + 32);
            data.extend_from_slice(tag);
            data.extend_from_slice(key);
            let h = sha256::Hash::hash(&data);
            let mut o = [0u8; 16];
            o[..6].copy_from_slice(&prefix);
            o[6..].copy_from_slice(&h.as_byte_array()[..10]);
            IpAddr::V6(Ipv6Addr::from(o))
        };
        match self {
            OverlayAddr::Onion(k) => mapped(ONION_PREFIX, b"meshd onion v3", k),
            OverlayAddr::I2p(h) => mapped(I2P_PREFIX, b"meshd i2p", h),
            OverlayAddr::Cjdns(ip) => IpAddr::V6(*ip),
        }
    }

    /// The internal socket address for `port`.
    pub fn internal(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.internal_ip(), port)
    }

    /// The host name a proxy is asked for (`<56 chars>.onion`, `<52 chars>.b32.i2p`), or the
    /// CJDNS IPv6 address.
    pub fn host(&self) -> String {
        let b32 = |bytes: &[u8]| {
            data_encoding::BASE32_NOPAD
                .encode(bytes)
                .to_ascii_lowercase()
        };
        match self {
            OverlayAddr::Onion(key) => {
                let mut raw = Vec::with_capacity(35);
                raw.extend_from_slice(key);
                raw.extend_from_slice(&onion_checksum(key));
                raw.push(ONION_V3_VERSION);
                format!("{}.onion", b32(&raw))
            }
            OverlayAddr::I2p(hash) => format!("{}.b32.i2p", b32(hash)),
            OverlayAddr::Cjdns(ip) => ip.to_string(),
        }
    }

    /// `host:port`, with brackets around a CJDNS address.
    pub fn display_with_port(&self, port: u16) -> String {
        match self {
            OverlayAddr::Cjdns(ip) => SocketAddr::new(IpAddr::V6(*ip), port).to_string(),
            _ => format!("{}:{port}", self.host()),
        }
    }

    /// Parses an `.onion` (v3) or `.b32.i2p` host name.
    pub fn parse_host(host: &str) -> Result<OverlayAddr, OverlayParseError> {
        let lower = host.to_ascii_lowercase();
        let decode = |s: &str| {
            data_encoding::BASE32_NOPAD
                .decode(s.to_ascii_uppercase().as_bytes())
                .ok()
        };
        if let Some(name) = lower.strip_suffix(".onion") {
            // Subdomains of an onion name are the same service.
            let name = name.rsplit('.').next().unwrap_or(name);
            if name.len() == 16 {
                return Err(OverlayParseError::OnionV2);
            }
            if name.len() != ONION_V3_CHARS {
                return Err(OverlayParseError::Malformed("onion"));
            }
            let raw = decode(name).ok_or(OverlayParseError::Malformed("onion"))?;
            if raw.len() != 35 || raw[34] != ONION_V3_VERSION {
                return Err(OverlayParseError::Malformed("onion"));
            }
            let mut key = [0u8; 32];
            key.copy_from_slice(&raw[..32]);
            if raw[32..34] != onion_checksum(&key) {
                return Err(OverlayParseError::Malformed("onion"));
            }
            return Ok(OverlayAddr::Onion(key));
        }
        if let Some(name) = lower.strip_suffix(".b32.i2p") {
            if name.len() != I2P_CHARS {
                return Err(OverlayParseError::Malformed("i2p"));
            }
            let raw = decode(name).ok_or(OverlayParseError::Malformed("i2p"))?;
            let hash: [u8; 32] = raw
                .try_into()
                .map_err(|_| OverlayParseError::Malformed("i2p"))?;
            return Ok(OverlayAddr::I2p(hash));
        }
        Err(OverlayParseError::NotOverlay)
    }

    /// From a BIP155 address: TorV3, I2P and CJDNS (in `fc00::/8`); `None` for IP
    /// addresses and for what is refused (Tor v2, CJDNS outside its range, unknown ids).
    pub fn from_addrv2(addr: &AddrV2) -> Option<OverlayAddr> {
        match addr {
            AddrV2::TorV3(key) => Some(OverlayAddr::Onion(*key)),
            AddrV2::I2p(hash) => Some(OverlayAddr::I2p(*hash)),
            AddrV2::Cjdns(ip) if ip.octets()[0] == 0xfc => Some(OverlayAddr::Cjdns(*ip)),
            _ => None,
        }
    }

    /// As a BIP155 address.
    pub fn to_addrv2(&self) -> AddrV2 {
        match self {
            OverlayAddr::Onion(k) => AddrV2::TorV3(*k),
            OverlayAddr::I2p(h) => AddrV2::I2p(*h),
            OverlayAddr::Cjdns(ip) => AddrV2::Cjdns(*ip),
        }
    }
}

impl fmt::Display for OverlayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host())
    }
}

/// `H(".onion checksum" | key | version)[..2]` (Tor's rend-spec-v3).
fn onion_checksum(key: &[u8; 32]) -> [u8; 2] {
    let mut h = Sha3_256::new();
    h.update(b".onion checksum");
    h.update(key);
    h.update([ONION_V3_VERSION]);
    let d = h.finalize();
    [d[0], d[1]]
}

/// How an address is shown to operators: the overlay name where there is one, else the
/// socket address.
pub fn display_addr(addr: SocketAddr, overlay: Option<&OverlayAddr>) -> String {
    match overlay {
        Some(o) => o.display_with_port(addr.port()),
        None => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The onion address of the Tor Project's website, a published v3 name.
    const TORPROJECT: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion";

    #[test]
    fn a_published_onion_v3_name_round_trips_and_maps_into_onioncat() {
        let o = OverlayAddr::parse_host(TORPROJECT).expect("valid v3 name");
        assert_eq!(o.host(), TORPROJECT);
        assert_eq!(o.network(), Network::Onion);
        assert_eq!(Network::of_ip(o.internal_ip()), Network::Onion);
        assert_eq!(o.display_with_port(8333), format!("{TORPROJECT}:8333"));
        // Upper case and a subdomain name the same service.
        let sub = format!("www.{}", TORPROJECT.to_ascii_uppercase());
        assert_eq!(OverlayAddr::parse_host(&sub), Ok(o));
    }

    #[test]
    fn bad_onion_names_are_refused_with_their_reason() {
        assert_eq!(
            OverlayAddr::parse_host("expyuzz4wqqyqhjn.onion"),
            Err(OverlayParseError::OnionV2)
        );
        let mut bad = TORPROJECT.to_string();
        bad.replace_range(0..1, "3"); // checksum no longer matches
        assert_eq!(
            OverlayAddr::parse_host(&bad),
            Err(OverlayParseError::Malformed("onion"))
        );
        assert_eq!(
            OverlayAddr::parse_host("example.com"),
            Err(OverlayParseError::NotOverlay)
        );
        assert!(OverlayAddr::parse_host("abc.b32.i2p").is_err());
    }

    #[test]
    fn networks_of_internal_and_plain_addresses() {
        assert_eq!(
            Network::of_ip("203.0.113.1".parse().unwrap()),
            Network::Ipv4
        );
        assert_eq!(
            Network::of_ip("::ffff:1.2.3.4".parse().unwrap()),
            Network::Ipv4
        );
        assert_eq!(
            Network::of_ip("2001:db8::1".parse().unwrap()),
            Network::Ipv6
        );
        assert_eq!(Network::of_ip("fc00::1".parse().unwrap()), Network::Cjdns);
        let i2p = OverlayAddr::I2p([7; 32]);
        assert_eq!(Network::of_ip(i2p.internal_ip()), Network::I2p);
        assert!(i2p.host().ends_with(".b32.i2p"));
        assert_eq!(OverlayAddr::parse_host(&i2p.host()), Ok(i2p));
        for n in Network::ALL {
            assert_eq!(Network::parse(n.name()), Some(n));
        }
        assert_eq!(Network::parse("tor"), Some(Network::Onion));
    }

    #[test]
    fn addrv2_conversions_keep_overlays_and_refuse_the_rest() {
        let k = [9u8; 32];
        assert_eq!(
            OverlayAddr::from_addrv2(&AddrV2::TorV3(k)),
            Some(OverlayAddr::Onion(k))
        );
        assert_eq!(OverlayAddr::from_addrv2(&AddrV2::TorV2([1; 10])), None);
        assert_eq!(
            OverlayAddr::from_addrv2(&AddrV2::Cjdns("fd00::1".parse().unwrap())),
            None
        );
        let c = OverlayAddr::Cjdns("fc01::2".parse().unwrap());
        assert_eq!(OverlayAddr::from_addrv2(&c.to_addrv2()), Some(c));
        assert_eq!(c.internal_ip(), "fc01::2".parse::<IpAddr>().unwrap());
    }

    proptest! {
        #[test]
        fn every_key_round_trips_through_its_name(key in any::<[u8; 32]>(), i2p in any::<bool>()) {
            let o = if i2p { OverlayAddr::I2p(key) } else { OverlayAddr::Onion(key) };
            prop_assert_eq!(OverlayAddr::parse_host(&o.host()), Ok(o));
            prop_assert_eq!(Network::of_ip(o.internal_ip()), o.network());
        }

        #[test]
        fn arbitrary_names_never_panic(s in "\\PC{0,80}") {
            let _ = OverlayAddr::parse_host(&s);
            let _ = OverlayAddr::parse_host(&format!("{s}.onion"));
        }
    }
}
