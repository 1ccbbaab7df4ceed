//! The fleet's rules as plain functions: subject and stream names, ban advisories and their
//! checks, heartbeats and staleness, block propagation across nodes, and a node's own lag
//! behind the fleet. No I/O: the [`super::Fleet`] actor and the API drive these.

use std::collections::HashMap;
use std::net::IpAddr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::shared::fleet_keys::{hex, unhex};
pub use crate::shared::fleet_keys::{TrustedKeys, MAX_TRUSTED_KEYS};
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

/// Version of the signed advisory envelope ([`SignedAdvisory::v`]) for unbans. Format 2
/// added [`BanAdvisory::action`]; bans are still published as format 1 (no action in the
/// body), which every node reads, and unbans as format 2, which nodes that know only format
/// 1 refuse whole. Each format signs under a domain of its own ([`advisory_domain`]), so an
/// envelope relabelled to the other format does not verify.
pub const ADVISORY_FORMAT: u32 = 2;
/// The oldest envelope format, the one bans are published in.
pub const ADVISORY_FORMAT_MIN: u32 = 1;
/// Most (origin, address) pairs whose latest advisory is remembered, to refuse one that an
/// older advisory would undo out of order. Entries older than the advisory age limit are
/// dropped first (anything that old is refused as stale anyway); the rate limit keeps the
/// rest far below this.
pub const MAX_ADVISORY_ORDER_ENTRIES: usize = 65_536;
/// What a format-1 signature covers before the subject and body, so that a signature made
/// for anything else (another format, another protocol using the same key) never verifies.
pub const ADVISORY_DOMAIN: &[u8] = b"meshd fleet ban advisory v1\0";
/// The same for format 2.
pub const ADVISORY_DOMAIN_V2: &[u8] = b"meshd fleet ban advisory v2\0";

/// The signature domain of envelope format `v`.
pub fn advisory_domain(v: u32) -> &'static [u8] {
    if v >= 2 {
        ADVISORY_DOMAIN_V2
    } else {
        ADVISORY_DOMAIN
    }
}
/// How old an advisory may be when it arrives (by its `issued` time): a signed advisory
/// replayed later cannot renew a ban, and a node that was offline misses old ones.
pub const MAX_ADVISORY_AGE_SECS: u64 = 600;
pub use crate::shared::bans::MAX_ADVISORY_CLOCK_SKEW_SECS;
/// Advisories one origin may have applied in a burst: an operator banning a handful of
/// addresses at once is served, a compromised node cannot ban thousands.
pub const ADVISORY_BURST: u32 = 20;
/// After the burst, one more advisory per this long from that origin.
pub const ADVISORY_REFILL_SECS: u64 = 30;

/// What an advisory asks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdvisoryAction {
    /// Ban the address until `until`.
    #[default]
    Ban,
    /// The origin's operator lifted its ban: lift the ban applied from that origin's
    /// advisory (never a ban of our own operator's or another origin's).
    Unban,
}

impl AdvisoryAction {
    /// Whether it is a ban (then left out of the body: format 1's shape).
    pub fn is_ban(&self) -> bool {
        *self == AdvisoryAction::Ban
    }

    /// The envelope format it is published in.
    pub fn format(&self) -> u32 {
        match self {
            AdvisoryAction::Ban => ADVISORY_FORMAT_MIN,
            AdvisoryAction::Unban => ADVISORY_FORMAT,
        }
    }
}

/// An operator's ban of one address, or its lifting, as one node tells the others (the
/// signed body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanAdvisory {
    /// Ban or unban ([`ADVISORY_FORMAT`] 2; absent in format 1: a ban).
    #[serde(default, skip_serializing_if = "AdvisoryAction::is_ban")]
    pub action: AdvisoryAction,
    /// The banned address (a /32 or /128, or a bare address).
    pub subnet: String,
    /// Why, as the operator said.
    pub reason: String,
    /// The score at which the origin bans.
    pub score: u32,
    /// Expiry, unix seconds.
    pub until: u64,
    /// The node that banned (its `--node-name`).
    pub origin: String,
    /// When it was issued, unix seconds (see [`MAX_ADVISORY_AGE_SECS`]).
    pub issued: u64,
}

/// An advisory as published: the body exactly as signed, the publisher's ed25519 public key
/// and its signature over [`ADVISORY_DOMAIN`], the subject it is published on and the body
/// (see [`signed_bytes`]), all hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAdvisory {
    /// [`ADVISORY_FORMAT`].
    pub v: u32,
    /// The [`BanAdvisory`] as JSON, exactly the bytes signed.
    pub body: String,
    /// The publisher's public key, 32 bytes in hex.
    pub key: String,
    /// The signature, 64 bytes in hex.
    pub sig: String,
}

/// The bytes a format-`v` advisory's signature covers: the format's domain, the subject (so a
/// copy published on another node's subject does not verify) and the body.
pub fn signed_bytes(v: u32, subject: &str, body: &str) -> Vec<u8> {
    let domain = advisory_domain(v);
    let mut out = Vec::with_capacity(domain.len() + subject.len() + 1 + body.len());
    out.extend_from_slice(domain);
    out.extend_from_slice(subject.as_bytes());
    out.push(0);
    out.extend_from_slice(body.as_bytes());
    out
}

/// Signs `adv` for publication on `subject` with `key`: the message's payload.
pub fn sign_advisory(adv: &BanAdvisory, subject: &str, key: &SigningKey) -> Vec<u8> {
    // Serializing a plain struct of strings and integers cannot fail.
    let body = serde_json::to_string(adv).unwrap_or_default();
    let v = adv.action.format();
    let sig = key.sign(&signed_bytes(v, subject, &body));
    let env = SignedAdvisory {
        v,
        body,
        key: hex(&key.verifying_key().to_bytes()),
        sig: hex(&sig.to_bytes()),
    };
    serde_json::to_vec(&env).unwrap_or_default()
}

/// A public key in hex, as `meshd fleet key` prints it.
pub fn public_key_hex(key: &VerifyingKey) -> String {
    hex(&key.to_bytes())
}

/// Why an advisory is not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvisoryError {
    /// Not JSON of the envelope's or body's shape, or too large.
    #[error("malformed advisory: {0}")]
    Malformed(String),
    /// Signed by a key not in `--fleet-trusted-keys`.
    #[error("signed by an untrusted key")]
    UntrustedKey,
    /// The signature does not verify (over this subject and body).
    #[error("bad signature")]
    BadSignature,
    /// The body's origin is not the node the key signs for.
    #[error("origin {origin:?} is not {expected:?}, whose key signed it")]
    WrongOrigin {
        /// The body's origin.
        origin: String,
        /// The name the key is trusted for.
        expected: String,
    },
    /// Not published on its origin's own subject.
    #[error("published on {0}, not on its origin's own subject")]
    NotOwnSubject(String),
    /// Issued too long ago, or in the future.
    #[error("issued {0} s from now; advisories are applied within 10 minutes")]
    Stale(i64),
    /// Its origin sent more than [`ADVISORY_BURST`] lately.
    #[error("too many advisories from {0}")]
    RateLimited(String),
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
    /// Issued before the latest advisory applied for this origin and address: arriving out
    /// of order, or replayed, it would undo a newer ban or unban.
    #[error("superseded by a newer advisory from {0} for this address")]
    Superseded(String),
}

impl AdvisoryError {
    /// A short stable name, used as the `reason` metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            AdvisoryError::Malformed(_) => "malformed",
            AdvisoryError::UntrustedKey => "untrusted_key",
            AdvisoryError::BadSignature => "bad_signature",
            AdvisoryError::WrongOrigin { .. } => "wrong_origin",
            AdvisoryError::NotOwnSubject(_) => "not_own_subject",
            AdvisoryError::Stale(_) => "stale",
            AdvisoryError::RateLimited(_) => "rate_limited",
            AdvisoryError::BadSubnet(_) => "bad_subnet",
            AdvisoryError::Local(_) => "local",
            AdvisoryError::NotSingle(_) => "not_single_address",
            AdvisoryError::Whitelisted(_) => "whitelisted",
            AdvisoryError::Manual(_) => "manual",
            AdvisoryError::Expired => "expired",
            AdvisoryError::Own => "own",
            AdvisoryError::Superseded(_) => "superseded",
        }
    }
}

/// The node token of a fleet subject (`meshd.<fleet>.<node>.<network>.<kind>`).
fn subject_node(subject: &str) -> Option<&str> {
    let mut parts = subject.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("meshd"), Some(_), Some(node)) => Some(node),
        _ => None,
    }
}

/// Checks who published an advisory: a well-formed envelope, a key in `trusted`, a valid
/// signature over `subject` and the body, an origin that is the key's node, published on
/// that node's own subject, issued within [`MAX_ADVISORY_AGE_SECS`]. Returns the body;
/// what it asks is checked by [`check_advisory`].
pub fn verify_advisory(
    bytes: &[u8],
    subject: &str,
    trusted: &TrustedKeys,
    now: u64,
) -> Result<BanAdvisory, AdvisoryError> {
    if bytes.len() > MAX_FLEET_MESSAGE {
        return Err(AdvisoryError::Malformed(format!("{} bytes", bytes.len())));
    }
    let env: SignedAdvisory =
        serde_json::from_slice(bytes).map_err(|e| AdvisoryError::Malformed(e.to_string()))?;
    if !(ADVISORY_FORMAT_MIN..=ADVISORY_FORMAT).contains(&env.v) {
        return Err(AdvisoryError::Malformed(format!("format {}", env.v)));
    }
    let key_bytes = unhex::<32>(&env.key)
        .ok_or_else(|| AdvisoryError::Malformed("key is not 32 bytes of hex".into()))?;
    let name = trusted
        .name_of(&key_bytes)
        .ok_or(AdvisoryError::UntrustedKey)?;
    let sig = unhex::<64>(&env.sig)
        .ok_or_else(|| AdvisoryError::Malformed("sig is not 64 bytes of hex".into()))?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| AdvisoryError::UntrustedKey)?;
    key.verify_strict(
        &signed_bytes(env.v, subject, &env.body),
        &Signature::from_bytes(&sig),
    )
    .map_err(|_| AdvisoryError::BadSignature)?;
    let adv: BanAdvisory =
        serde_json::from_str(&env.body).map_err(|e| AdvisoryError::Malformed(e.to_string()))?;
    if env.v < ADVISORY_FORMAT && !adv.action.is_ban() {
        // Format 1 knows bans only: an unban there is nothing any node published.
        return Err(AdvisoryError::Malformed("an unban in format 1".into()));
    }
    if adv.origin != name {
        return Err(AdvisoryError::WrongOrigin {
            origin: adv.origin,
            expected: name.to_string(),
        });
    }
    if subject_node(subject) != Some(token(&adv.origin).as_str()) {
        return Err(AdvisoryError::NotOwnSubject(subject.to_string()));
    }
    let age = now as i64 - adv.issued as i64;
    if age > MAX_ADVISORY_AGE_SECS as i64 || -age > MAX_ADVISORY_CLOCK_SKEW_SECS as i64 {
        return Err(AdvisoryError::Stale(-age));
    }
    Ok(adv)
}

/// Per-origin budget of applied advisories ([`ADVISORY_BURST`], refilled one per
/// [`ADVISORY_REFILL_SECS`]).
///
/// # Security
/// Entries exist only for origins whose signature verified, so the table is bounded by
/// the trusted keys ([`MAX_TRUSTED_KEYS`]).
#[derive(Debug, Default)]
pub struct AdvisoryLimiter {
    /// Per origin: tokens left and when they were last counted.
    buckets: HashMap<String, (u32, u64)>,
}

impl AdvisoryLimiter {
    /// Takes one advisory of `origin` at `now`; false when its budget is spent.
    pub fn allow(&mut self, origin: &str, now: u64) -> bool {
        let (tokens, at) = self
            .buckets
            .entry(origin.to_string())
            .or_insert((ADVISORY_BURST, now));
        let refilled = now.saturating_sub(*at) / ADVISORY_REFILL_SECS;
        if refilled > 0 {
            *tokens = (*tokens as u64 + refilled).min(ADVISORY_BURST as u64) as u32;
            *at += refilled * ADVISORY_REFILL_SECS;
        }
        if *tokens == 0 {
            return false;
        }
        *tokens -= 1;
        true
    }
}

/// The latest applied advisory's issue time per (origin, address): an advisory issued
/// before it is refused ([`AdvisoryError::Superseded`]), so a ban and its unban take effect
/// in the order the origin's operator made them, however they arrive.
///
/// # Security
/// Only verified advisories within the age limit and the origin's budget reach it; entries
/// past the age limit are dropped, and it never holds more than
/// [`MAX_ADVISORY_ORDER_ENTRIES`].
#[derive(Debug, Default)]
pub struct AdvisoryOrder {
    latest: HashMap<(String, IpNet), u64>,
}

impl AdvisoryOrder {
    /// Records `adv` for `net` unless a newer one from its origin was recorded.
    pub fn admit(&mut self, adv: &BanAdvisory, net: IpNet, now: u64) -> Result<(), AdvisoryError> {
        let key = (adv.origin.clone(), net);
        if self.latest.get(&key).is_some_and(|&t| adv.issued < t) {
            return Err(AdvisoryError::Superseded(adv.origin.clone()));
        }
        if self.latest.len() >= MAX_ADVISORY_ORDER_ENTRIES && !self.latest.contains_key(&key) {
            let horizon = now.saturating_sub(MAX_ADVISORY_AGE_SECS + MAX_ADVISORY_CLOCK_SKEW_SECS);
            self.latest.retain(|_, t| *t >= horizon);
            if self.latest.len() >= MAX_ADVISORY_ORDER_ENTRIES {
                // Still full of fresh entries: forget the oldest one.
                if let Some(oldest) = self
                    .latest
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(k, _)| k.clone())
                {
                    self.latest.remove(&oldest);
                }
            }
        }
        self.latest.insert(key, adv.issued);
        Ok(())
    }

    /// How many pairs are remembered.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

/// The address a verified unban advisory lifts: one address, never our own advisory.
pub fn check_unban(adv: &BanAdvisory, own_node: &str) -> Result<IpNet, AdvisoryError> {
    if adv.origin == own_node {
        return Err(AdvisoryError::Own);
    }
    single_address(&adv.subnet)
}

/// One address (a bare address, a /32 or a /128) as a subnet.
fn single_address(subnet: &str) -> Result<IpNet, AdvisoryError> {
    let net = single_address_as_written(subnet)?;
    // `::ffff:a.b.c.d/128` is a.b.c.d: one address, one entry (as bans.dat keys it).
    Ok(IpNet::from(crate::shared::bans::canonical(net.addr())))
}

fn single_address_as_written(subnet: &str) -> Result<IpNet, AdvisoryError> {
    let net: IpNet = match subnet.parse::<IpNet>() {
        Ok(net) => net,
        // A bare address is its own /32 or /128.
        Err(_) => subnet
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| AdvisoryError::BadSubnet(subnet.to_string()))?,
    };
    // One address: whether a range holds a protected address cannot be told from its ends
    // (8.0.0.0/5 holds 10.0.0.0/8), and no one node's verdict should cover more than one.
    if net.prefix_len() != net.max_prefix_len() {
        return Err(AdvisoryError::NotSingle(net.to_string()));
    }
    Ok(net)
}

/// Whether an address is one no advisory may ban: loopback, private, link-local,
/// unspecified, unique-local.
fn is_protected(ip: IpAddr) -> bool {
    crate::shared::addr::is_local_or_private(ip)
}

/// Checks what a verified advisory asks; returns the address to ban (as a /32 or /128) and
/// until when (capped at [`MAX_ADVISORY_BAN_SECS`] from its issue and from `now`). One
/// address only, never a local or private one, one that `whitelisted` or `manual` names.
pub fn check_advisory(
    adv: &BanAdvisory,
    own_node: &str,
    whitelisted: impl Fn(IpAddr) -> bool,
    manual: impl Fn(IpAddr) -> bool,
    now: u64,
) -> Result<(IpNet, u64), AdvisoryError> {
    if adv.origin == own_node {
        return Err(AdvisoryError::Own);
    }
    let net = single_address(&adv.subnet)?;
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
    let until = adv
        .until
        .min(now + MAX_ADVISORY_BAN_SECS)
        .min(adv.issued.saturating_add(MAX_ADVISORY_BAN_SECS));
    Ok((net, until))
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
    /// The message that carried it there (`BlockReceived`'s `via`: `block`,
    /// `compact_high_bandwidth`, `compact_low_bandwidth`, `fallback`, `local`), if the node
    /// said.
    pub via: Option<String>,
}

/// Arrivals shown per block, earliest first: a report stays small whatever node names fleet
/// members publish under (`nodes` still counts them all).
pub const MAX_ARRIVALS_PER_BLOCK: usize = 256;

/// How one node first got a block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Arrival {
    /// The node.
    pub node: String,
    /// After the fleet's first sighting, milliseconds.
    pub delay_ms: u64,
    /// The message that first carried it to the node (see [`Sighting::via`]).
    pub via: Option<String>,
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
    /// Each node's first sighting, earliest first: when, by which message, from whom.
    pub arrivals: Vec<Arrival>,
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
    // Per block, per node: its first sighting.
    let mut by_block: HashMap<&str, HashMap<&str, &Sighting>> = HashMap::new();
    for s in sightings {
        let nodes = by_block.entry(&s.hash).or_default();
        let e = nodes.entry(&s.node).or_insert(s);
        if s.time_ms < e.time_ms {
            *e = s;
        }
    }
    let mut out: Vec<Propagation> = by_block
        .into_iter()
        .filter_map(|(hash, nodes)| {
            let first = nodes
                .values()
                .min_by_key(|s| (s.time_ms, s.node.as_str()))?;
            let first_ms = first.time_ms;
            let mut arrivals: Vec<Arrival> = nodes
                .values()
                .map(|s| Arrival {
                    node: s.node.clone(),
                    delay_ms: s.time_ms - first_ms,
                    via: s.via.clone(),
                    from: s.from.clone(),
                })
                .collect();
            arrivals.sort_by(|a, b| (a.delay_ms, &a.node).cmp(&(b.delay_ms, &b.node)));
            let delays: Vec<u64> = arrivals.iter().map(|a| a.delay_ms).collect();
            arrivals.truncate(MAX_ARRIVALS_PER_BLOCK);
            Some(Propagation {
                hash: hash.to_string(),
                height: first.height,
                nodes: nodes.len(),
                first_node: first.node.clone(),
                first_ms,
                last_ms: first_ms + delays.last().copied().unwrap_or(0),
                p50_ms: quantile(&delays, 0.5),
                p90_ms: quantile(&delays, 0.9),
                arrivals,
            })
        })
        .collect();
    // Blocks seen in the same millisecond (generated together) keep their chain order.
    out.sort_by(|a, b| (a.first_ms, a.height, &a.hash).cmp(&(b.first_ms, b.height, &b.hash)));
    let skip = out.len().saturating_sub(last);
    out.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::fleet::{LagTracker, LAG_WINDOW};
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000;

    fn advisory(subnet: &str, until: u64, origin: &str) -> BanAdvisory {
        BanAdvisory {
            action: AdvisoryAction::Ban,
            subnet: subnet.into(),
            reason: "bad_headers".into(),
            score: 100,
            until,
            origin: origin.into(),
            issued: NOW,
        }
    }

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn on_subject_of(node: &str) -> String {
        subject("f", node, "regtest", ADVISORY_KIND)
    }

    /// Node "b" signs with key 2; "c" with key 3.
    fn trusted() -> TrustedKeys {
        TrustedKeys::parse(&format!(
            "# the fleet\n{} b\n\n{} c # eu\n",
            public_key_hex(&key(2).verifying_key()),
            public_key_hex(&key(3).verifying_key())
        ))
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
    fn only_trusted_keys_on_their_own_subject_within_ten_minutes_verify() {
        let t = trusted();
        let adv = advisory("203.0.113.7/32", NOW + 60, "b");
        let subj = on_subject_of("b");
        let ok = sign_advisory(&adv, &subj, &key(2));
        assert_eq!(verify_advisory(&ok, &subj, &t, NOW).unwrap(), adv);
        let kind = |bytes: &[u8], subj: &str, now: u64| {
            verify_advisory(bytes, subj, &t, now).unwrap_err().kind()
        };
        // Signed by a key nobody listed.
        assert_eq!(
            kind(&sign_advisory(&adv, &subj, &key(9)), &subj, NOW),
            "untrusted_key"
        );
        // The signature covers the subject: b's advisory replayed on c's subject fails.
        assert_eq!(kind(&ok, &on_subject_of("c"), NOW), "bad_signature");
        // A body changed after signing.
        let mut env: SignedAdvisory = serde_json::from_slice(&ok).unwrap();
        env.body = env.body.replace("203.0.113.7", "203.0.113.8");
        assert_eq!(
            kind(&serde_json::to_vec(&env).unwrap(), &subj, NOW),
            "bad_signature"
        );
        // c's key cannot speak for b, nor b's key on c's subject.
        let as_b = sign_advisory(&adv, &on_subject_of("b"), &key(3));
        assert_eq!(kind(&as_b, &on_subject_of("b"), NOW), "wrong_origin");
        let elsewhere = sign_advisory(&adv, &on_subject_of("c"), &key(2));
        assert_eq!(
            kind(&elsewhere, &on_subject_of("c"), NOW),
            "not_own_subject"
        );
        // Replayed later than ten minutes, or issued in the future.
        assert_eq!(kind(&ok, &subj, NOW + MAX_ADVISORY_AGE_SECS + 1), "stale");
        assert_eq!(
            kind(&ok, &subj, NOW - MAX_ADVISORY_CLOCK_SKEW_SECS - 1),
            "stale"
        );
        // Unsigned (the old format), garbage, another format version, too large.
        assert_eq!(
            kind(&serde_json::to_vec(&adv).unwrap(), &subj, NOW),
            "malformed"
        );
        assert_eq!(kind(b"{not json", &subj, NOW), "malformed");
        env.v = ADVISORY_FORMAT + 1;
        assert_eq!(
            kind(&serde_json::to_vec(&env).unwrap(), &subj, NOW),
            "malformed"
        );
        assert_eq!(
            kind(&vec![b' '; MAX_FLEET_MESSAGE + 1], &subj, NOW),
            "malformed"
        );
    }

    #[test]
    fn a_format_one_body_is_a_ban_and_unbans_name_one_address() {
        let subj = on_subject_of("b");
        // A format-1 envelope, as nodes before unbans signed it: no action in the body.
        let body = r#"{"subnet":"203.0.113.7/32","reason":"r","score":100,"until":1800000060,"origin":"b","issued":1800000000}"#;
        let env = SignedAdvisory {
            v: 1,
            body: body.into(),
            key: public_key_hex(&key(2).verifying_key()),
            sig: hex(&key(2).sign(&signed_bytes(1, &subj, body)).to_bytes()),
        };
        let adv = verify_advisory(&serde_json::to_vec(&env).unwrap(), &subj, &trusted(), NOW);
        assert_eq!(adv.unwrap().action, AdvisoryAction::Ban);
        // Bans are still published that way: an older node reads them.
        let ban = advisory("203.0.113.7/32", NOW + 60, "b");
        let published: SignedAdvisory =
            serde_json::from_slice(&sign_advisory(&ban, &subj, &key(2))).unwrap();
        assert_eq!(published.v, 1);
        assert!(!published.body.contains("action"), "{}", published.body);
        // An unban is format 2, under its own domain: relabelled as format 1 (which an older
        // node would read as a ban) it does not verify.
        let mut unban = advisory("203.0.113.7", 0, "b");
        unban.action = AdvisoryAction::Unban;
        let signed = sign_advisory(&unban, &subj, &key(2));
        let mut env: SignedAdvisory = serde_json::from_slice(&signed).unwrap();
        assert_eq!(env.v, 2);
        assert_eq!(
            verify_advisory(&signed, &subj, &trusted(), NOW).unwrap(),
            unban
        );
        env.v = 1;
        let relabelled = serde_json::to_vec(&env).unwrap();
        assert_eq!(
            verify_advisory(&relabelled, &subj, &trusted(), NOW)
                .unwrap_err()
                .kind(),
            "bad_signature"
        );
        // Signed as format 1 on purpose: still refused.
        let body = serde_json::to_string(&unban).unwrap();
        let env = SignedAdvisory {
            v: 1,
            sig: hex(&key(2).sign(&signed_bytes(1, &subj, &body)).to_bytes()),
            body,
            key: public_key_hex(&key(2).verifying_key()),
        };
        assert_eq!(
            verify_advisory(&serde_json::to_vec(&env).unwrap(), &subj, &trusted(), NOW)
                .unwrap_err()
                .kind(),
            "malformed"
        );
        // An IPv4-mapped address is the IPv4 address.
        unban.subnet = "::ffff:203.0.113.7/128".into();
        assert_eq!(
            check_unban(&unban, "a").unwrap().to_string(),
            "203.0.113.7/32"
        );
        let mut unban = advisory("203.0.113.7", 0, "b");
        unban.action = AdvisoryAction::Unban;
        assert_eq!(
            check_unban(&unban, "a").unwrap().to_string(),
            "203.0.113.7/32"
        );
        assert_eq!(check_unban(&unban, "b").unwrap_err().kind(), "own");
        unban.subnet = "203.0.113.0/24".into();
        assert_eq!(
            check_unban(&unban, "a").unwrap_err().kind(),
            "not_single_address"
        );
    }

    #[test]
    fn an_advisory_older_than_the_latest_for_its_address_is_superseded() {
        let net: IpNet = "203.0.113.7/32".parse().unwrap();
        let mut order = AdvisoryOrder::default();
        let ban = advisory("203.0.113.7/32", NOW + 60, "b");
        let mut unban = ban.clone();
        unban.action = AdvisoryAction::Unban;
        unban.issued = NOW + 5;
        let mut reban = ban.clone();
        reban.issued = NOW + 9;
        assert!(order.admit(&ban, net, NOW).is_ok());
        assert!(order.admit(&unban, net, NOW + 5).is_ok());
        assert!(order.admit(&reban, net, NOW + 9).is_ok());
        // The unban replayed after the new ban would lift it: refused.
        assert_eq!(
            order.admit(&unban, net, NOW + 10).unwrap_err().kind(),
            "superseded"
        );
        // Another origin's advisories for the address are ordered apart.
        let mut from_c = unban.clone();
        from_c.origin = "c".into();
        assert!(order.admit(&from_c, net, NOW + 10).is_ok());
        // Bounded: filling it past its size keeps it at its size.
        for i in 0..MAX_ADVISORY_ORDER_ENTRIES as u32 + 10 {
            let net = IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(0x0100_0000 + i)));
            let _ = order.admit(&ban, net, NOW);
        }
        assert_eq!(order.len(), MAX_ADVISORY_ORDER_ENTRIES);
    }

    #[test]
    fn trusted_key_files_are_parsed_strictly() {
        let k = public_key_hex(&key(2).verifying_key());
        assert_eq!(trusted().len(), 2);
        assert_eq!(
            trusted().name_of(&key(3).verifying_key().to_bytes()),
            Some("c")
        );
        assert!(TrustedKeys::parse("").unwrap().is_empty());
        for bad in [
            k.clone(),
            format!("{k} b extra"),
            format!("{} b", &k[..62]),
            format!("zz{} b", &k[2..]),
        ] {
            assert!(TrustedKeys::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_origin_has_a_budget() {
        let mut l = AdvisoryLimiter::default();
        for _ in 0..ADVISORY_BURST {
            assert!(l.allow("b", NOW));
        }
        assert!(!l.allow("b", NOW));
        assert!(l.allow("c", NOW), "another origin has its own");
        assert!(!l.allow("b", NOW + ADVISORY_REFILL_SECS - 1));
        assert!(l.allow("b", NOW + ADVISORY_REFILL_SECS));
        assert!(!l.allow("b", NOW + ADVISORY_REFILL_SECS));
    }

    #[test]
    fn advisories_are_checked_before_they_are_applied() {
        let none = |_: IpAddr| false;
        let check = |adv: &BanAdvisory, wl: &dyn Fn(IpAddr) -> bool| {
            check_advisory(adv, "a", wl, none, NOW)
        };
        let (net, until) = check(&advisory("203.0.113.7/32", NOW + 60, "b"), &none).unwrap();
        assert_eq!(net.to_string(), "203.0.113.7/32");
        assert_eq!(until, NOW + 60);
        let (net, _) = check(&advisory("2001:db8::7", NOW + 60, "b"), &none).unwrap();
        assert_eq!(net.to_string(), "2001:db8::7/128");
        // Capped at a week.
        let (_, until) = check(&advisory("203.0.113.9/32", u64::MAX, "b"), &none).unwrap();
        assert_eq!(until, NOW + MAX_ADVISORY_BAN_SECS);
        let kind =
            |adv: &BanAdvisory, wl: &dyn Fn(IpAddr) -> bool| check(adv, wl).unwrap_err().kind();
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
            via: None,
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
        let order: Vec<(&str, u64)> = p[0]
            .arrivals
            .iter()
            .map(|a| (a.node.as_str(), a.delay_ms))
            .collect();
        assert_eq!(order, [("a", 0), ("b", 40), ("c", 100)]);
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
    fn each_node_shows_the_message_that_first_carried_the_block() {
        let mut mined = seen("a", "h", 1000);
        mined.via = Some("local".into());
        let mut full = seen("b", "h", 1100);
        full.via = Some("block".into());
        full.from = Some("10.0.0.1:8333".into());
        let mut compact = seen("b", "h", 1050);
        compact.via = Some("compact_high_bandwidth".into());
        compact.from = Some("10.0.0.2:8333".into());
        let p = propagation(&[mined, full, compact], 1);
        let b = &p[0].arrivals[1];
        // b's first sighting wins, with its own message and sender.
        assert_eq!(
            (
                b.node.as_str(),
                b.delay_ms,
                b.via.as_deref(),
                b.from.as_deref()
            ),
            (
                "b",
                50,
                Some("compact_high_bandwidth"),
                Some("10.0.0.2:8333")
            )
        );
        assert_eq!(p[0].arrivals[0].via.as_deref(), Some("local"));
        // However many nodes sighted it, the report shows the earliest few.
        let many: Vec<Sighting> = (0..MAX_ARRIVALS_PER_BLOCK as u64 + 50)
            .map(|i| seen(&format!("n{i}"), "h", 1000 + i))
            .collect();
        let p = propagation(&many, 1);
        assert_eq!(p[0].nodes, MAX_ARRIVALS_PER_BLOCK + 50);
        assert_eq!(p[0].arrivals.len(), MAX_ARRIVALS_PER_BLOCK);
        assert_eq!(p[0].arrivals[0].node, "n0");
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
            let _ = verify_advisory(&bytes, &on_subject_of("b"), &trusted(), NOW);
            let _ = Heartbeat::parse(&bytes);
        }
    }
}
