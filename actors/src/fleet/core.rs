//! The fleet's rules as plain functions: subject and stream names, ban advisories and their
//! checks, heartbeats and staleness, block propagation across nodes, and a node's own lag
//! behind the fleet. No I/O: the [`super::Fleet`] actor and the API drive these.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Longest subject token (fleet or node name) kept; longer names are cut.
pub const MAX_TOKEN_LEN: usize = 64;
/// Longest ban an advisory may carry: a node applying advisories never bans longer than
/// this on another node's word, whatever the advisory says.
pub const MAX_ADVISORY_BAN_SECS: u64 = 7 * 86_400;
/// Largest advisory or heartbeat accepted, bytes (they are a few hundred).
pub const MAX_FLEET_MESSAGE: usize = 4096;
/// A heartbeat older than this many intervals marks its node stale.
pub const STALE_AFTER_INTERVALS: u64 = 3;

/// A NATS subject token from a name: letters, digits, `-` and `_` kept, anything else
/// (`.`, `*`, `>`, spaces) becomes `_`, cut to [`MAX_TOKEN_LEN`]; never empty.
pub fn token(name: &str) -> String {
    let t: String = name
        .chars()
        .take(MAX_TOKEN_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

/// `meshd.<fleet>.<node>.<network>.<kind>`.
pub fn subject(fleet: &str, node: &str, network: &str, kind: &str) -> String {
    format!(
        "meshd.{}.{}.{}.{}",
        token(fleet),
        token(node),
        token(network),
        token(kind)
    )
}

/// Every subject of a fleet (the stream's subject filter).
pub fn fleet_subjects(fleet: &str) -> String {
    format!("meshd.{}.>", token(fleet))
}

/// The subject of every node's events of one kind on one network.
pub fn kind_subjects(fleet: &str, network: &str, kind: &str) -> String {
    format!(
        "meshd.{}.*.{}.{}",
        token(fleet),
        token(network),
        token(kind)
    )
}

/// The JetStream stream of a fleet (stream names take no `.`).
pub fn stream_name(fleet: &str) -> String {
    format!("MESHD_{}", token(fleet))
}

/// The key-value bucket of a fleet's heartbeats.
pub fn bucket_name(fleet: &str) -> String {
    format!("meshd_{}_nodes", token(fleet))
}

/// The subject kind of ban advisories.
pub const ADVISORY_KIND: &str = "BanAdvisory";

/// An automatic ban, as one node tells the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanAdvisory {
    /// The banned subnet (CIDR).
    pub subnet: String,
    /// The violation that crossed the threshold.
    pub reason: String,
    /// The score at which the origin bans.
    pub score: u32,
    /// Expiry, unix seconds.
    pub until: u64,
    /// The node that banned.
    pub origin: String,
}

/// Why an advisory is not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvisoryError {
    /// Not JSON of the advisory's shape, or too large.
    #[error("malformed advisory: {0}")]
    Malformed(String),
    /// Not a CIDR subnet.
    #[error("bad subnet {0:?}")]
    BadSubnet(String),
    /// Loopback, private, link-local or unspecified: never banned on another node's word.
    #[error("{0} is local or private")]
    Local(String),
    /// A range, not one address: a single advisory could otherwise ban `128.0.0.0/1`.
    #[error("{0} is a range; advisories name one address")]
    NotSingle(String),
    /// Inside a `--whitelist` range.
    #[error("{0} is whitelisted here")]
    Whitelisted(String),
    /// One of our manual (`--connect`, `--addnode`) peers: the operator's choice holds.
    #[error("{0} is a manual peer here")]
    Manual(String),
    /// Already expired.
    #[error("expired")]
    Expired,
    /// Our own advisory coming back.
    #[error("our own")]
    Own,
}

impl AdvisoryError {
    /// A short stable name, used as the `reason` metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            AdvisoryError::Malformed(_) => "malformed",
            AdvisoryError::BadSubnet(_) => "bad_subnet",
            AdvisoryError::Local(_) => "local",
            AdvisoryError::NotSingle(_) => "not_single_address",
            AdvisoryError::Whitelisted(_) => "whitelisted",
            AdvisoryError::Manual(_) => "manual",
            AdvisoryError::Expired => "expired",
            AdvisoryError::Own => "own",
        }
    }
}

/// Whether an address is one no advisory may ban: loopback, private, link-local,
/// unspecified, unique-local.
fn is_protected(ip: IpAddr) -> bool {
    crate::discovery::addrbook::is_local_or_private(ip)
}

/// Checks an advisory's bytes; returns the address to ban (as a /32 or /128) and until
/// when (capped at [`MAX_ADVISORY_BAN_SECS`] from `now`). One address only, never a local
/// or private one, one that `whitelisted` or `manual` names.
pub fn check_advisory(
    bytes: &[u8],
    own_node: &str,
    whitelisted: impl Fn(IpAddr) -> bool,
    manual: impl Fn(IpAddr) -> bool,
    now: u64,
) -> Result<(IpNet, u64, BanAdvisory), AdvisoryError> {
    if bytes.len() > MAX_FLEET_MESSAGE {
        return Err(AdvisoryError::Malformed(format!("{} bytes", bytes.len())));
    }
    let adv: BanAdvisory =
        serde_json::from_slice(bytes).map_err(|e| AdvisoryError::Malformed(e.to_string()))?;
    if adv.origin == own_node {
        return Err(AdvisoryError::Own);
    }
    let net: IpNet = match adv.subnet.parse::<IpNet>() {
        Ok(net) => net,
        // A bare address is its own /32 or /128.
        Err(_) => adv
            .subnet
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| AdvisoryError::BadSubnet(adv.subnet.clone()))?,
    };
    // One address: whether a range holds a protected address cannot be told from its ends
    // (8.0.0.0/5 holds 10.0.0.0/8), and no one node's verdict should cover more than one.
    if net.prefix_len() != net.max_prefix_len() {
        return Err(AdvisoryError::NotSingle(net.to_string()));
    }
    let ip = net.addr();
    if is_protected(ip) {
        return Err(AdvisoryError::Local(net.to_string()));
    }
    if whitelisted(ip) {
        return Err(AdvisoryError::Whitelisted(net.to_string()));
    }
    if manual(ip) {
        return Err(AdvisoryError::Manual(net.to_string()));
    }
    if adv.until <= now {
        return Err(AdvisoryError::Expired);
    }
    let until = adv.until.min(now + MAX_ADVISORY_BAN_SECS);
    Ok((net, until, adv))
}

/// One node's state, kept in the fleet's key-value bucket under its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The node's name.
    pub node: String,
    /// meshd's version.
    pub version: String,
    /// The network.
    pub network: String,
    /// Best header height.
    pub tip_height: u32,
    /// Best header hash.
    pub tip_hash: String,
    /// Connected peers by direction.
    pub inbound: usize,
    /// Outbound peers.
    pub outbound: usize,
    /// Connected peers on BIP324 v2.
    pub v2: usize,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// When this was written, unix seconds.
    pub time: u64,
    /// Seconds between heartbeats (for staleness).
    pub interval_secs: u64,
}

impl Heartbeat {
    /// Parses a heartbeat's bytes (bounded).
    pub fn parse(bytes: &[u8]) -> Result<Heartbeat, String> {
        if bytes.len() > MAX_FLEET_MESSAGE {
            return Err(format!("{} bytes", bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// Whether it is older than [`STALE_AFTER_INTERVALS`] intervals at `now`.
    pub fn is_stale(&self, now: u64) -> bool {
        now.saturating_sub(self.time) > STALE_AFTER_INTERVALS * self.interval_secs.max(1)
    }
}

/// One node's first sighting of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// The node.
    pub node: String,
    /// The block hash.
    pub hash: String,
    /// Height, as the node knew it.
    pub height: u32,
    /// When the node first saw it, unix milliseconds.
    pub time_ms: u64,
    /// The peer it came from (none: generated or submitted there).
    pub from: Option<String>,
}

/// A block's spread across the fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Propagation {
    /// Block hash.
    pub hash: String,
    /// Height.
    pub height: u32,
    /// Nodes that saw it.
    pub nodes: usize,
    /// The first node to see it.
    pub first_node: String,
    /// When the first node saw it, unix milliseconds.
    pub first_ms: u64,
    /// When the last node saw it, unix milliseconds.
    pub last_ms: u64,
    /// Median delay after the first sighting, across nodes (the first included, at 0).
    pub p50_ms: u64,
    /// 90th-percentile delay.
    pub p90_ms: u64,
}

/// The `q`-quantile (nearest rank) of sorted values.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Per block: first and last sighting and the delay quantiles; a node's repeated sightings
/// count once (its first). The `last` blocks by first sighting, newest last.
pub fn propagation(sightings: &[Sighting], last: usize) -> Vec<Propagation> {
    let mut by_block: HashMap<&str, HashMap<&str, (u64, u32)>> = HashMap::new();
    for s in sightings {
        let nodes = by_block.entry(&s.hash).or_default();
        let e = nodes.entry(&s.node).or_insert((s.time_ms, s.height));
        if s.time_ms < e.0 {
            *e = (s.time_ms, s.height);
        }
    }
    let mut out: Vec<Propagation> = by_block
        .into_iter()
        .filter_map(|(hash, nodes)| {
            let (first_node, &(first_ms, height)) =
                nodes.iter().min_by_key(|(n, (t, _))| (*t, **n))?;
            let mut delays: Vec<u64> = nodes.values().map(|(t, _)| t - first_ms).collect();
            delays.sort_unstable();
            Some(Propagation {
                hash: hash.to_string(),
                height,
                nodes: nodes.len(),
                first_node: first_node.to_string(),
                first_ms,
                last_ms: first_ms + delays.last().copied().unwrap_or(0),
                p50_ms: quantile(&delays, 0.5),
                p90_ms: quantile(&delays, 0.9),
            })
        })
        .collect();
    // Blocks seen in the same millisecond (generated together) keep their chain order.
    out.sort_by(|a, b| (a.first_ms, a.height, &a.hash).cmp(&(b.first_ms, b.height, &b.hash)));
    let skip = out.len().saturating_sub(last);
    out.split_off(skip)
}

/// Blocks a node remembers for its lag: enough to match a sighting that arrives late.
pub const LAG_WINDOW: usize = 64;

/// A node's lag behind the fleet's first sighting of each block: fed the fleet's sightings
/// (its own included) as they arrive, it reports the lag of the newest block it has seen.
#[derive(Debug, Default)]
pub struct LagTracker {
    /// Hash → (fleet's first time, our time), newest last.
    blocks: Vec<(String, Option<u64>, Option<u64>)>,
}

impl LagTracker {
    /// Records a sighting by `ours` (this node) or another node.
    pub fn see(&mut self, hash: &str, time_ms: u64, ours: bool) {
        let i = match self.blocks.iter().position(|(h, _, _)| h == hash) {
            Some(i) => i,
            None => {
                if self.blocks.len() >= LAG_WINDOW {
                    self.blocks.remove(0);
                }
                self.blocks.push((hash.to_string(), None, None));
                self.blocks.len() - 1
            }
        };
        let (_, first, own) = &mut self.blocks[i];
        *first = Some(first.map_or(time_ms, |f: u64| f.min(time_ms)));
        if ours {
            *own = Some(own.map_or(time_ms, |o: u64| o.min(time_ms)));
        }
    }

    /// Our lag behind the fleet's first sighting, seconds, for the newest block we saw.
    pub fn lag_secs(&self) -> Option<f64> {
        self.blocks.iter().rev().find_map(|(_, first, own)| {
            Some(own.as_ref()?.saturating_sub((*first)?) as f64 / 1000.0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000;

    fn advisory(subnet: &str, until: u64, origin: &str) -> Vec<u8> {
        serde_json::to_vec(&BanAdvisory {
            subnet: subnet.into(),
            reason: "bad_headers".into(),
            score: 100,
            until,
            origin: origin.into(),
        })
        .unwrap()
    }

    #[test]
    fn names_are_safe_subject_tokens() {
        assert_eq!(token("eu-1"), "eu-1");
        assert_eq!(token("a.b *>c"), "a_b___c");
        assert_eq!(token(""), "_");
        assert_eq!(token(&"x".repeat(100)).len(), MAX_TOKEN_LEN);
        assert_eq!(
            subject("prod", "node.1", "mainnet", "BlockReceived"),
            "meshd.prod.node_1.mainnet.BlockReceived"
        );
        assert_eq!(stream_name("prod"), "MESHD_prod");
        assert_eq!(fleet_subjects("prod"), "meshd.prod.>");
    }

    #[test]
    fn advisories_are_checked_before_they_are_applied() {
        let none = |_: IpAddr| false;
        let (net, until, adv) = check_advisory(
            &advisory("203.0.113.7/32", NOW + 60, "b"),
            "a",
            none,
            none,
            NOW,
        )
        .unwrap();
        assert_eq!(net.to_string(), "203.0.113.7/32");
        let (net, _, _) = check_advisory(
            &advisory("2001:db8::7", NOW + 60, "b"),
            "a",
            none,
            none,
            NOW,
        )
        .unwrap();
        assert_eq!(net.to_string(), "2001:db8::7/128");
        assert_eq!(until, NOW + 60);
        assert_eq!(adv.origin, "b");
        // Capped at a week.
        let (_, until, _) = check_advisory(
            &advisory("203.0.113.9/32", u64::MAX, "b"),
            "a",
            none,
            none,
            NOW,
        )
        .unwrap();
        assert_eq!(until, NOW + MAX_ADVISORY_BAN_SECS);
        let kind = |bytes: &[u8], wl: &dyn Fn(IpAddr) -> bool| {
            check_advisory(bytes, "a", wl, none, NOW)
                .unwrap_err()
                .kind()
        };
        // Ranges, whatever they hold: issue #26's half of IPv4 among them.
        for range in [
            "128.0.0.0/1",
            "64.0.0.0/2",
            "2000::/3",
            "8.0.0.0/5",
            "203.0.113.0/24",
            "203.0.113.7/31",
            "2001:db8::/127",
        ] {
            assert_eq!(
                kind(&advisory(range, NOW + 60, "b"), &none),
                "not_single_address",
                "{range}"
            );
        }
        let manual = |ip: IpAddr| ip.to_string() == "203.0.113.5";
        assert_eq!(
            check_advisory(
                &advisory("203.0.113.5/32", NOW + 60, "b"),
                "a",
                none,
                manual,
                NOW
            )
            .unwrap_err()
            .kind(),
            "manual"
        );
        assert_eq!(kind(b"{not json", &none), "malformed");
        assert_eq!(kind(&vec![b' '; MAX_FLEET_MESSAGE + 1], &none), "malformed");
        assert_eq!(
            kind(&advisory("nonsense", NOW + 60, "b"), &none),
            "bad_subnet"
        );
        for local in [
            "127.0.0.1/32",
            "10.1.2.3/32",
            "192.168.7.7",
            "::1/128",
            "0.0.0.0/32",
            "fe80::1/128",
        ] {
            assert_eq!(
                kind(&advisory(local, NOW + 60, "b"), &none),
                "local",
                "{local}"
            );
        }
        assert_eq!(
            kind(&advisory("203.0.113.7/32", NOW - 1, "b"), &none),
            "expired"
        );
        assert_eq!(
            kind(&advisory("203.0.113.7/32", NOW + 60, "a"), &none),
            "own"
        );
        let wl = |ip: IpAddr| ip.to_string().starts_with("198.51.100.");
        assert_eq!(
            kind(&advisory("198.51.100.9/32", NOW + 60, "b"), &wl),
            "whitelisted"
        );
    }

    #[test]
    fn heartbeats_go_stale_after_three_intervals() {
        let hb = Heartbeat {
            node: "a".into(),
            version: "0.1.0".into(),
            network: "regtest".into(),
            tip_height: 5,
            tip_hash: "00".into(),
            inbound: 1,
            outbound: 2,
            v2: 1,
            uptime_secs: 9,
            time: NOW,
            interval_secs: 10,
        };
        let back = Heartbeat::parse(&serde_json::to_vec(&hb).unwrap()).unwrap();
        assert_eq!(back, hb);
        assert!(!hb.is_stale(NOW + 30));
        assert!(hb.is_stale(NOW + 31));
        assert!(Heartbeat::parse(b"{}").is_err());
    }

    fn seen(node: &str, hash: &str, t: u64) -> Sighting {
        Sighting {
            node: node.into(),
            hash: hash.into(),
            height: 1,
            time_ms: t,
            from: None,
        }
    }

    #[test]
    fn propagation_per_block() {
        let s = vec![
            seen("a", "h1", 1000),
            seen("b", "h1", 1040),
            seen("c", "h1", 1100),
            seen("b", "h1", 1500), // b's repeat counts once
            seen("b", "h2", 2000),
            seen("a", "h2", 2010),
        ];
        let p = propagation(&s, 10);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].hash, "h1");
        assert_eq!((p[0].nodes, p[0].first_node.as_str()), (3, "a"));
        assert_eq!((p[0].first_ms, p[0].last_ms), (1000, 1100));
        assert_eq!((p[0].p50_ms, p[0].p90_ms), (40, 100));
        assert_eq!(p[1].first_node, "b");
        assert_eq!(propagation(&s, 1).len(), 1);
        assert_eq!(propagation(&s, 1)[0].hash, "h2");
        // Same millisecond: by height, whatever the hashes.
        let mut a = seen("a", "zz", 5000);
        a.height = 1;
        let mut b = seen("a", "aa", 5000);
        b.height = 2;
        assert_eq!(propagation(&[a, b], 1)[0].hash, "aa");
    }

    #[test]
    fn lag_behind_the_first_sighting() {
        let mut l = LagTracker::default();
        assert_eq!(l.lag_secs(), None);
        l.see("h1", 1000, false);
        l.see("h1", 1250, true);
        assert_eq!(l.lag_secs(), Some(0.25));
        l.see("h2", 5000, true);
        assert_eq!(l.lag_secs(), Some(0.0));
        // Another node's earlier sighting arriving late still counts.
        l.see("h2", 4900, false);
        assert_eq!(l.lag_secs(), Some(0.1));
        for i in 0..(LAG_WINDOW * 2) {
            l.see(&format!("x{i}"), i as u64, false);
        }
        assert!(l.blocks.len() <= LAG_WINDOW);
    }

    proptest! {
        #[test]
        fn quantiles_lie_between_first_and_last(times in proptest::collection::vec(0u64..1_000_000, 1..50)) {
            let s: Vec<Sighting> = times.iter().enumerate().map(|(i, t)| seen(&format!("n{i}"), "h", *t)).collect();
            let p = &propagation(&s, 1)[0];
            prop_assert_eq!(p.nodes, times.len());
            prop_assert!(p.p50_ms <= p.p90_ms);
            prop_assert!(p.first_ms + p.p90_ms <= p.last_ms);
            prop_assert_eq!(p.first_ms, *times.iter().min().unwrap());
            prop_assert_eq!(p.last_ms, *times.iter().max().unwrap());
        }

        #[test]
        fn arbitrary_advisories_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = check_advisory(&bytes, "a", |_| false, |_| false, NOW);
            let _ = Heartbeat::parse(&bytes);
        }
    }
}
