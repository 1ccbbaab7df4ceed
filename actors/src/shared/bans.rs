//! The ban list: IPv4 and IPv6 subnets (a single address is a /32 or /128) with an expiry,
//! as a sans-IO core. Time is unix seconds, passed in.
//!
//! A ban means: the Listener drops a connection from a banned address before reading a byte,
//! the Manager never dials one, and a ban that covers connected peers disconnects them.
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are matched as the IPv4 address they carry,
//! so a dual-stack listener cannot be used to slip past an IPv4 ban.
//!
//! The list holds at most [`MAX_BANS`] entries (Zebra's bound); when full, a new ban
//! replaces the automatic ban that expires soonest (manual bans go only when nothing else
//! can). A lookup does not scan the list: it tries each prefix length in use for the
//! address's family, one map lookup each.
//!
//! Bitcoin Core distinguishes bans (operator decisions, persisted) from discouragement
//! (automatic, in memory). meshd keeps one list with a reason on each entry: automatic bans
//! are persisted too, so a restart does not hand a hostile peer a fresh start.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// How far in the future a fleet advisory's `issued` time may be: clocks of a fleet differ by
/// seconds, not minutes.
pub const MAX_ADVISORY_CLOCK_SKEW_SECS: u64 = 60;

/// Why an entry exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BanReason {
    /// Banned by the operator.
    Manual,
    /// Banned automatically for misbehaviour; the violation that crossed the threshold.
    Misbehavior(String),
    /// Applied from another fleet node's advisory (`--fleet-apply-bans`). Last, so files
    /// written before it still read.
    Fleet {
        /// The node that banned.
        origin: String,
        /// Its reason.
        reason: String,
    },
}

impl BanReason {
    /// `manual` or `misbehavior`, for metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            BanReason::Manual => "manual",
            BanReason::Misbehavior(_) => "misbehavior",
            BanReason::Fleet { .. } => "fleet",
        }
    }

    /// The detail shown with the ban: the violation, or the origin and its reason.
    pub fn detail(&self) -> Option<String> {
        match self {
            BanReason::Manual => None,
            BanReason::Misbehavior(d) => Some(d.clone()),
            BanReason::Fleet { origin, reason } => Some(format!("from {origin}: {reason}")),
        }
    }

    /// The fleet node that banned, for bans applied from an advisory.
    pub fn origin(&self) -> Option<&str> {
        match self {
            BanReason::Fleet { origin, .. } => Some(origin),
            _ => None,
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

/// Entries the ban list holds at most.
///
/// # Security
/// Automatic bans are created by peers' behaviour; without a bound an attacker with many
/// addresses (an IPv6 /32 holds billions) grows the list, its file and its lookups for ever.
/// Zebra keeps at most 20,000.
pub const MAX_BANS: usize = 20_000;

/// The list as persisted (the lookup index is derived from it).
#[derive(Serialize, Deserialize)]
struct BanListFile {
    entries: BTreeMap<IpNet, BanEntry>,
}

/// The list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "BanListFile", into = "BanListFile")]
pub struct BanList {
    entries: BTreeMap<IpNet, BanEntry>,
    /// Prefix lengths in use, per family, with how many entries use each.
    v4_prefixes: BTreeMap<u8, usize>,
    v6_prefixes: BTreeMap<u8, usize>,
}

impl From<BanListFile> for BanList {
    fn from(f: BanListFile) -> BanList {
        let mut list = BanList::default();
        for (_, e) in f.entries.into_iter().take(MAX_BANS) {
            list.insert(e);
        }
        list
    }
}

impl From<BanList> for BanListFile {
    fn from(l: BanList) -> BanListFile {
        BanListFile { entries: l.entries }
    }
}

impl BanList {
    fn prefixes_of(&mut self, net: &IpNet) -> &mut BTreeMap<u8, usize> {
        match net {
            IpNet::V4(_) => &mut self.v4_prefixes,
            IpNet::V6(_) => &mut self.v6_prefixes,
        }
    }

    fn insert(&mut self, e: BanEntry) {
        let net = e.subnet;
        if self.entries.insert(net, e).is_none() {
            *self.prefixes_of(&net).entry(net.prefix_len()).or_insert(0) += 1;
        }
    }

    fn remove(&mut self, net: &IpNet) -> Option<BanEntry> {
        let e = self.entries.remove(net)?;
        let prefixes = self.prefixes_of(net);
        if let Some(c) = prefixes.get_mut(&net.prefix_len()) {
            *c -= 1;
            if *c == 0 {
                prefixes.remove(&net.prefix_len());
            }
        }
        Some(e)
    }

    /// Makes room for one entry when full: the automatic ban expiring soonest goes (a manual
    /// one only when there is no automatic one).
    fn make_room(&mut self) {
        if self.entries.len() < MAX_BANS {
            return;
        }
        let victim = self
            .entries
            .values()
            .min_by_key(|e| (e.reason == BanReason::Manual, e.until))
            .map(|e| e.subnet);
        if let Some(v) = victim {
            self.remove(&v);
        }
    }

    /// Adds or extends a ban. Returns the entry and whether anything changed.
    pub fn ban(
        &mut self,
        subnet: IpNet,
        now: u64,
        duration_secs: u64,
        reason: BanReason,
    ) -> (BanEntry, bool) {
        let subnet = subnet.trunc();
        let until = now.saturating_add(duration_secs);
        if !self.entries.contains_key(&subnet) {
            self.make_room();
            let entry = BanEntry {
                subnet,
                created: now,
                until,
                reason,
            };
            self.insert(entry.clone());
            return (entry, true);
        }
        let Some(entry) = self.entries.get_mut(&subnet) else {
            unreachable!("inserted above")
        };
        let local = |r: &BanReason| !matches!(r, BanReason::Fleet { .. });
        let before = entry.clone();
        match (&reason, &entry.reason) {
            // The operator's ban is the operator's, however long the one it meets: no fleet
            // advisory can lift it, and lifting it is advised.
            (BanReason::Manual, _) => {
                entry.reason = BanReason::Manual;
                entry.until = entry.until.max(until);
            }
            // Another node's word never changes a ban of ours (its length or its reason).
            (BanReason::Fleet { .. }, r) if local(r) => {}
            _ => {
                if until > entry.until {
                    if entry.reason != reason {
                        // Another verdict takes the entry over: it dates from now (an unban
                        // is checked against when the ban it lifts was applied).
                        entry.created = now;
                    }
                    entry.until = until;
                    entry.reason = reason;
                }
            }
        }
        let changed = *entry != before;
        (entry.clone(), changed)
    }

    /// Removes the ban on exactly this subnet; the entry if there was one.
    pub fn unban(&mut self, subnet: &IpNet) -> Option<BanEntry> {
        self.remove(&subnet.trunc())
    }

    /// The ban on exactly this subnet, live or not.
    pub fn get(&self, subnet: &IpNet) -> Option<&BanEntry> {
        self.entries.get(&subnet.trunc())
    }

    /// The ban covering `ip` at `now`, if any.
    pub fn find(&self, ip: IpAddr, now: u64) -> Option<&BanEntry> {
        let ip = canonical(ip);
        let prefixes = match ip {
            IpAddr::V4(_) => &self.v4_prefixes,
            IpAddr::V6(_) => &self.v6_prefixes,
        };
        // Most specific first, one map lookup per prefix length in use.
        prefixes.keys().rev().find_map(|len| {
            let net = IpNet::new(ip, *len).ok()?.trunc();
            self.entries.get(&net).filter(|e| e.until > now)
        })
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
        expired.iter().filter_map(|s| self.remove(s)).collect()
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
        assert!(b.unban(&parse_subnet("203.0.113.0/24").unwrap()).is_some());
        assert!(!b.is_banned(ip("203.0.113.7"), 50));
        assert_eq!(b.sweep(100).len(), 2);
        assert_eq!(b.len(0), 0);
    }

    #[test]
    fn the_operators_ban_stays_the_operators_and_fleet_bans_never_touch_local_ones() {
        let net = parse_subnet("203.0.113.7").unwrap();
        let fleet = |o: &str| BanReason::Fleet {
            origin: o.into(),
            reason: "r".into(),
        };
        // A long fleet ban, then a shorter one of our operator's: the operator's, lasting the
        // longer of the two.
        let mut b = BanList::default();
        b.ban(net, 0, 86_400, fleet("a"));
        let (e, _) = b.ban(net, 0, 3_600, BanReason::Manual);
        assert_eq!((e.reason, e.until), (BanReason::Manual, 86_400));
        // A longer fleet ban meets our operator's (or a verdict of ours): nothing changes.
        let mut b = BanList::default();
        b.ban(net, 0, 600, BanReason::Manual);
        let (e, changed) = b.ban(net, 0, 86_400, fleet("a"));
        assert_eq!(
            (e.reason, e.until, changed),
            (BanReason::Manual, 600, false)
        );
        let mut b = BanList::default();
        b.ban(net, 0, 600, BanReason::Misbehavior("x".into()));
        let (e, _) = b.ban(net, 0, 86_400, fleet("a"));
        assert_eq!(e.reason, BanReason::Misbehavior("x".into()));
        // Fleet over fleet: the longer one holds, with its origin.
        let mut b = BanList::default();
        b.ban(net, 0, 600, fleet("a"));
        let (e, _) = b.ban(net, 10, 6_000, fleet("c"));
        assert_eq!(
            (e.reason, e.created),
            (fleet("c"), 10),
            "taken over: dated anew"
        );
        assert_eq!(b.ban(net, 20, 60, fleet("a")).0.reason, fleet("c"));
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

    #[test]
    fn the_list_is_bounded_and_full_evicts_the_automatic_ban_expiring_soonest() {
        let mut b = BanList::default();
        b.ban(
            parse_subnet("198.51.100.1").unwrap(),
            0,
            10,
            BanReason::Manual,
        );
        for i in 0..(MAX_BANS as u32 + 100) {
            let ip = std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | i as u128);
            b.ban(
                IpNet::from(IpAddr::V6(ip)),
                0,
                1000 + i as u64,
                BanReason::Misbehavior("x".into()),
            );
        }
        assert_eq!(b.entries.len(), MAX_BANS);
        // The manual ban stayed although it expires first; the oldest automatic ones went.
        assert!(b.is_banned(ip("198.51.100.1"), 5));
        assert!(!b.is_banned(ip("2001:db8::"), 5));
        assert!(b.is_banned(ip("2001:db8::4e83"), 5));
        // The persisted form round-trips with its index.
        let bytes = bincode::serde::encode_to_vec(&b, bincode::config::standard()).unwrap();
        let (back, _): (BanList, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, b);
        assert!(back.is_banned(ip("198.51.100.1"), 5));
    }

    proptest! {
        #[test]
        fn lookups_agree_with_a_scan(nets in proptest::collection::vec((any::<u32>(), 0u8..=32, 1u64..50), 0..40), probe in any::<u32>(), now in 0u64..60) {
            let mut b = BanList::default();
            for (a, len, d) in &nets {
                let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(*a), *len).unwrap().trunc();
                b.ban(IpNet::V4(net), 0, *d, BanReason::Manual);
            }
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(probe));
            let scan = b.entries.values().any(|e| e.until > now && e.subnet.contains(&ip));
            prop_assert_eq!(b.is_banned(ip, now), scan);
        }

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
