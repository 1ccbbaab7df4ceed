//! The ban list: IPv4 and IPv6 subnets (a single address is a /32 or /128) with an expiry,
//! as a sans-IO core. Time is unix seconds, passed in.
//!
//! A ban means: the Listener drops a connection from a banned address before reading a byte,
//! the Manager never dials one, and a ban that covers connected peers disconnects them.
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are matched as the IPv4 address they carry,
//! so a dual-stack listener cannot be used to slip past an IPv4 ban.
//!
//! Bitcoin Core distinguishes bans (operator decisions, persisted) from discouragement
//! (automatic, in memory). meshd keeps one list with a reason on each entry: automatic bans
//! are persisted too, so a restart does not hand a hostile peer a fresh start.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Why an entry exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BanReason {
    /// Banned by the operator.
    Manual,
    /// Banned automatically for misbehaviour; the violation that crossed the threshold.
    Misbehavior(String),
}

impl BanReason {
    /// `manual` or `misbehavior`, for metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            BanReason::Manual => "manual",
            BanReason::Misbehavior(_) => "misbehavior",
        }
    }
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanEntry {
    /// The banned subnet.
    pub subnet: IpNet,
    /// When it was created, unix seconds.
    pub created: u64,
    /// When it expires, unix seconds.
    pub until: u64,
    /// Why.
    pub reason: BanReason,
}

/// Normalises an address: IPv4-mapped IPv6 becomes IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Parses `1.2.3.4`, `1.2.3.0/24`, `::1`, `2001:db8::/32`, `[::1]`.
pub fn parse_subnet(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(t);
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    t.parse::<IpAddr>()
        .map(|ip| IpNet::from(canonical(ip)))
        .map_err(|_| format!("{text:?} is not an IP address or CIDR subnet"))
}

/// The list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanList {
    entries: BTreeMap<IpNet, BanEntry>,
}

impl BanList {
    /// Adds or extends a ban. Returns the entry.
    pub fn ban(
        &mut self,
        subnet: IpNet,
        now: u64,
        duration_secs: u64,
        reason: BanReason,
    ) -> BanEntry {
        let subnet = subnet.trunc();
        let until = now.saturating_add(duration_secs);
        let entry = self.entries.entry(subnet).or_insert(BanEntry {
            subnet,
            created: now,
            until,
            reason: reason.clone(),
        });
        if until > entry.until {
            entry.until = until;
            entry.reason = reason;
        }
        entry.clone()
    }

    /// Removes the ban on exactly this subnet. True if there was one.
    pub fn unban(&mut self, subnet: &IpNet) -> bool {
        self.entries.remove(&subnet.trunc()).is_some()
    }

    /// The ban covering `ip` at `now`, if any.
    pub fn find(&self, ip: IpAddr, now: u64) -> Option<&BanEntry> {
        let ip = canonical(ip);
        self.entries
            .values()
            .find(|e| e.until > now && e.subnet.contains(&ip))
    }

    /// Whether `ip` is banned at `now`.
    pub fn is_banned(&self, ip: IpAddr, now: u64) -> bool {
        self.find(ip, now).is_some()
    }

    /// Drops expired entries; returns them.
    pub fn sweep(&mut self, now: u64) -> Vec<BanEntry> {
        let expired: Vec<IpNet> = self
            .entries
            .values()
            .filter(|e| e.until <= now)
            .map(|e| e.subnet)
            .collect();
        expired
            .iter()
            .filter_map(|s| self.entries.remove(s))
            .collect()
    }

    /// Live entries.
    pub fn entries(&self, now: u64) -> Vec<BanEntry> {
        self.entries
            .values()
            .filter(|e| e.until > now)
            .cloned()
            .collect()
    }

    /// Number of live entries.
    pub fn len(&self, now: u64) -> usize {
        self.entries.values().filter(|e| e.until > now).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn single_addresses_and_subnets_in_both_families() {
        let mut b = BanList::default();
        b.ban(
            parse_subnet("203.0.113.0/24").unwrap(),
            0,
            100,
            BanReason::Manual,
        );
        b.ban(
            parse_subnet("2001:db8::/32").unwrap(),
            0,
            100,
            BanReason::Manual,
        );
        b.ban(parse_subnet("[::1]").unwrap(), 0, 100, BanReason::Manual);
        assert!(b.is_banned(ip("203.0.113.7"), 50));
        assert!(!b.is_banned(ip("203.0.114.7"), 50));
        assert!(b.is_banned(ip("2001:db8:1::5"), 50));
        assert!(b.is_banned(ip("::1"), 50));
        assert!(
            b.is_banned(ip("::ffff:203.0.113.9"), 50),
            "mapped IPv4 matches the v4 ban"
        );
        assert!(!b.is_banned(ip("203.0.113.7"), 100), "expired");
        assert!(b.unban(&parse_subnet("203.0.113.0/24").unwrap()));
        assert!(!b.is_banned(ip("203.0.113.7"), 50));
        assert_eq!(b.sweep(100).len(), 2);
        assert_eq!(b.len(0), 0);
    }

    #[test]
    fn host_bits_are_truncated_and_bad_input_is_refused() {
        assert_eq!(
            parse_subnet("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!(parse_subnet("10.1.2.3/33").is_err());
        assert!(parse_subnet("example.com").is_err());
    }

    proptest! {
        #[test]
        fn an_address_inside_a_banned_subnet_is_banned(a in any::<u32>(), prefix in 0u8..=32) {
            let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(a), prefix).unwrap().trunc();
            let mut b = BanList::default();
            b.ban(IpNet::V4(net), 10, 10, BanReason::Manual);
            prop_assert!(b.is_banned(IpAddr::V4(std::net::Ipv4Addr::from(a)), 11));
            prop_assert!(!b.is_banned(IpAddr::V4(std::net::Ipv4Addr::from(a)), 20));
        }
    }
}
