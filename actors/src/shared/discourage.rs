//! Discouragement, as Bitcoin Core's banman has done it since 0.20: an automatic verdict
//! (a peer's misbehaviour score reached the threshold) is not a ban. The address goes into a
//! rolling filter in memory, never persisted: it is never dialled, it is accepted inbound
//! only while a slot is free, and it is the first evicted. Only an operator's bans are
//! persisted (`bans.dat`), so no stream of automatic verdicts rewrites a file or pushes an
//! operator's ban out. Beyond Core: once [`IPV6_ESCALATE_AFTER`] addresses of one IPv6 /64
//! are discouraged the whole /64 is, since one host holds a /64 and picks a fresh address
//! per connection for free. Sans-IO.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};

use super::bans::canonical;
use crate::peer::RollingFilter;

/// Addresses remembered at least (Core's `m_discouraged`: 50,000 entries).
pub const DISCOURAGED_CAPACITY: usize = 50_000;

/// False-positive rate of the filter (Core's: one in a million, so an honest address is
/// almost never taken for a discouraged one).
pub const DISCOURAGED_FP_RATE: f64 = 0.000_001;

/// Distinct addresses of one IPv6 /64 discouraged before the /64 itself is.
pub const IPV6_ESCALATE_AFTER: u32 = 3;

/// /64s whose verdicts are counted towards [`IPV6_ESCALATE_AFTER`]; the count is forgotten
/// when more are tracked (a bound: each entry is 12 bytes).
pub const IPV6_PREFIXES_TRACKED: usize = 16_384;

/// What the filter holds: an address, or a whole IPv6 /64.
#[derive(Hash)]
enum Key {
    Addr(IpAddr),
    V6Prefix(u64),
}

/// The discouraged addresses.
#[derive(Debug, Clone)]
pub struct Discouraged {
    filter: RollingFilter,
    /// Verdicts per IPv6 /64 (its first 64 bits), until it is discouraged whole.
    v6_verdicts: HashMap<u64, u32>,
}

impl Default for Discouraged {
    fn default() -> Self {
        Discouraged::new()
    }
}

fn prefix64(ip: &Ipv6Addr) -> u64 {
    (u128::from(*ip) >> 64) as u64
}

impl Discouraged {
    /// An empty set, Core-sized.
    pub fn new() -> Self {
        Discouraged {
            filter: RollingFilter::new(DISCOURAGED_CAPACITY, DISCOURAGED_FP_RATE),
            v6_verdicts: HashMap::new(),
        }
    }

    /// Discourages `ip`; returns what is discouraged now: the address, or its /64 once that
    /// many of its addresses were.
    pub fn discourage(&mut self, ip: IpAddr) -> IpNet {
        let ip = canonical(ip);
        // Counted towards its /64 once: one address back three times is not three hosts.
        let seen = self.filter.contains(&Key::Addr(ip));
        self.filter.insert(&Key::Addr(ip));
        let IpAddr::V6(v6) = ip else {
            return IpNet::from(ip);
        };
        let prefix = prefix64(&v6);
        if seen {
            return match self.filter.contains(&Key::V6Prefix(prefix)) {
                true => Ipv6Net::new(Ipv6Addr::from(u128::from(prefix) << 64), 64)
                    .map(IpNet::V6)
                    .unwrap_or_else(|_| IpNet::from(ip)),
                false => IpNet::from(ip),
            };
        }
        if self.v6_verdicts.len() >= IPV6_PREFIXES_TRACKED
            && !self.v6_verdicts.contains_key(&prefix)
        {
            self.v6_verdicts.clear();
        }
        let n = self.v6_verdicts.entry(prefix).or_insert(0);
        *n += 1;
        if *n < IPV6_ESCALATE_AFTER {
            return IpNet::from(ip);
        }
        self.v6_verdicts.remove(&prefix);
        self.filter.insert(&Key::V6Prefix(prefix));
        Ipv6Net::new(Ipv6Addr::from(u128::from(prefix) << 64), 64)
            .map(IpNet::V6)
            .unwrap_or_else(|_| IpNet::from(ip))
    }

    /// Whether `ip` (or its IPv6 /64) is discouraged.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.filter.contains(&Key::Addr(ip)) {
            return true;
        }
        match ip {
            IpAddr::V6(v6) => self.filter.contains(&Key::V6Prefix(prefix64(&v6))),
            IpAddr::V4(_) => false,
        }
    }

    /// Heap bytes held.
    pub fn memory(&self) -> usize {
        self.filter.memory() + self.v6_verdicts.capacity() * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_verdict_is_remembered_and_ipv4_mapped_is_the_same_address() {
        let mut d = Discouraged::new();
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(!d.contains(ip));
        assert_eq!(d.discourage(ip).to_string(), "203.0.113.7/32");
        assert!(d.contains(ip));
        assert!(d.contains("::ffff:203.0.113.7".parse().unwrap()));
        assert!(!d.contains("203.0.113.8".parse().unwrap()));
    }

    #[test]
    fn three_addresses_of_one_ipv6_slash_64_discourage_it_whole() {
        let mut d = Discouraged::new();
        let a = |i: u16| -> IpAddr { format!("2001:db8:1:2::{i:x}").parse().unwrap() };
        assert_eq!(d.discourage(a(1)).to_string(), "2001:db8:1:2::1/128");
        // The same address again is not another host.
        assert_eq!(d.discourage(a(1)).to_string(), "2001:db8:1:2::1/128");
        assert_eq!(d.discourage(a(1)).to_string(), "2001:db8:1:2::1/128");
        assert!(!d.contains(a(9)));
        assert_eq!(d.discourage(a(2)).to_string(), "2001:db8:1:2::2/128");
        assert!(!d.contains(a(9)));
        assert_eq!(d.discourage(a(3)).to_string(), "2001:db8:1:2::/64");
        assert!(d.contains(a(9)));
        assert!(d.contains("2001:db8:1:2:ffff::1".parse().unwrap()));
        assert!(!d.contains("2001:db8:1:3::1".parse().unwrap()));
    }

    #[test]
    fn memory_is_fixed_whatever_the_verdicts() {
        let mut d = Discouraged::new();
        for i in 0..200_000u32 {
            d.discourage(IpAddr::from([1, (i >> 16) as u8, (i >> 8) as u8, i as u8]));
            let v6 = Ipv6Addr::from(u128::from(i) << 64 | 1);
            d.discourage(IpAddr::V6(v6));
        }
        assert!(d.v6_verdicts.len() <= IPV6_PREFIXES_TRACKED);
        assert!(d.memory() < 2 * 1024 * 1024, "{}", d.memory());
    }

    proptest! {
        /// The last `DISCOURAGED_CAPACITY` verdicts are always remembered.
        #[test]
        fn recent_verdicts_are_never_forgotten(ips in proptest::collection::vec(any::<u32>(), 1..2_000)) {
            let mut d = Discouraged::new();
            for ip in &ips {
                d.discourage(IpAddr::from(ip.to_be_bytes()));
            }
            for ip in &ips {
                prop_assert!(d.contains(IpAddr::from(ip.to_be_bytes())));
            }
        }
    }
}
