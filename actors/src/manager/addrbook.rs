//! The address book, in the spirit of Bitcoin Core's addrman, as a sans-IO core.
//!
//! Addresses live in two tables. **New** holds addresses we heard of but never connected to;
//! **tried** holds addresses we connected to at least once. Each table is a fixed grid of
//! buckets of [`BUCKET_SIZE`] slots, and where an address may go is decided by keyed hashes
//! (the key is secret and random per node, and persisted with the book):
//!
//! - in new, the bucket depends on the network group of the address *and of the peer that
//!   told us*, and one source group can reach at most [`NEW_BUCKETS_PER_SOURCE_GROUP`]
//!   buckets — so one attacker network, however many addresses it sends, fills at most
//!   64 × 64 slots out of 65,536;
//! - in tried, the bucket depends on the address's group, which reaches at most
//!   [`TRIED_BUCKETS_PER_GROUP`] buckets.
//!
//! A new address whose slot is taken replaces the occupant only if the occupant is
//! "terrible" (see [`AddrBook::is_terrible`]); otherwise the newcomer is dropped, so an honest
//! address once stored is not flushed out by a flood. Network groups are IPv4 /16 and
//! IPv6 /32. On regtest (and where `distinct-local-groups` says so) loopback and private
//! addresses each count as their own group, so a mesh on 127.0.0.x behaves like one spread
//! over the Internet.
//!
//! An address that connected goes to tried; if its tried slot is held by another, the
//! occupant is not evicted at once (Core's test-before-evict): the newcomer waits as a
//! *collision* (at most [`MAX_TRIED_COLLISIONS`]), a feeler tests the occupant
//! ([`AddrBook::select_tried_collision`]), and [`AddrBook::resolve_collisions`] keeps an
//! occupant that connected in the last 4 hours, replaces one that failed its test, and
//! replaces one not tested within 40 minutes. An attacker who connects to us from many
//! addresses cannot flush our working tried peers.
//!
//! Per entry the book keeps services, last seen, last try, attempts, last success and
//! source. Selection for outbound dials picks tried or new with equal odds, favours entries
//! that failed less and were not tried in the last ten minutes, and skips network groups the
//! caller already has an outbound peer in. Time (unix seconds) and randomness come in as
//! arguments.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use bitcoin::hashes::{sha256, Hash, HashEngine};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::shared::addr::{
    is_local_or_private, is_routable, netgroup, netgroup_as, AddrEntry, GossipAddr, Table,
};
use crate::shared::bans::canonical;
use crate::shared::overlay::{Network, OverlayAddr};

/// Buckets of the new table (Core: 1024).
pub const NEW_BUCKET_COUNT: u32 = 1024;
/// Buckets of the tried table (Core: 256).
pub const TRIED_BUCKET_COUNT: u32 = 256;
/// Slots per bucket (Core: 64).
pub const BUCKET_SIZE: u32 = 64;
/// New buckets one source group can reach.
///
/// # Security
/// Bounds what one network (an attacker's /16) can fill: 64 buckets × 64 slots.
pub const NEW_BUCKETS_PER_SOURCE_GROUP: u32 = 64;
/// Tried buckets one address group can reach (Core: 8).
pub const TRIED_BUCKETS_PER_GROUP: u32 = 8;
/// An address last seen longer ago than this is dropped (Core: 30 days).
pub const HORIZON_SECS: u64 = 30 * 86_400;
/// Failed attempts, with no success ever, after which an address is hopeless (Core: 3).
pub const MAX_RETRIES: u32 = 3;
/// Failed attempts after which an address that once worked is hopeless (Core: 10)...
pub const MAX_FAILURES: u32 = 10;
/// ...if its last success is older than this (Core: 7 days).
pub const MIN_FAIL_SECS: u64 = 7 * 86_400;
/// Tried-table collisions waiting for a feeler at most (Core's
/// `ADDRMAN_SET_TRIED_COLLISION_SIZE`): more are dropped, the occupants kept.
pub const MAX_TRIED_COLLISIONS: usize = 10;
/// An occupant that connected within this is kept (Core's `ADDRMAN_REPLACEMENT`, 4 h).
pub const TRIED_REPLACEMENT_SECS: u64 = 4 * 3600;
/// A collision its test has not settled within this replaces the occupant (Core's
/// `ADDRMAN_TEST_WINDOW`, 40 min): it could not be reached.
pub const TRIED_TEST_WINDOW_SECS: u64 = 40 * 60;
/// Time a feeler has to connect to the occupant before a failure is read into its last try.
pub const TRIED_TEST_GRACE_SECS: u64 = 60;
/// Addresses in one getaddr answer at most (Core's `MAX_ADDR_TO_SEND`).
pub const MAX_GETADDR_ANSWER: usize = 1000;
/// Percentage of the book one getaddr answer may reveal at most (Core: 23%).
pub const MAX_GETADDR_PCT: usize = 23;

/// An entry as format version 1 of `peers.dat` kept it (before overlay addresses).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddrEntryV1 {
    addr: SocketAddr,
    services: u64,
    last_seen: u64,
    last_try: Option<u64>,
    attempts: u32,
    last_success: Option<u64>,
    source: IpAddr,
    table: Table,
}

/// Format version 1 of `peers.dat`, read once and rewritten as the current version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddrBookFileV1 {
    key: [u8; 32],
    distinct_local_groups: bool,
    entries: Vec<AddrEntryV1>,
}

impl From<AddrBookFileV1> for AddrBookFile {
    fn from(f: AddrBookFileV1) -> AddrBookFile {
        AddrBookFile {
            key: f.key,
            distinct_local_groups: f.distinct_local_groups,
            entries: f
                .entries
                .into_iter()
                .map(|e| AddrEntry {
                    addr: e.addr,
                    services: e.services,
                    last_seen: e.last_seen,
                    last_try: e.last_try,
                    attempts: e.attempts,
                    last_success: e.last_success,
                    source: e.source,
                    table: e.table,
                    overlay: None,
                })
                .collect(),
        }
    }
}

/// The persisted form: the key and the entries; buckets are recomputed on load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddrBookFile {
    key: [u8; 32],
    distinct_local_groups: bool,
    entries: Vec<AddrEntry>,
}

/// The address book. See the module documentation.
#[derive(Debug, Clone)]
pub struct AddrBook {
    key: [u8; 32],
    distinct_local_groups: bool,
    entries: HashMap<SocketAddr, AddrEntry>,
    slots: HashMap<(Table, u32, u32), SocketAddr>,
    positions: HashMap<SocketAddr, (Table, u32, u32)>,
    /// Which buckets hold an entry, and how many each table holds.
    index: BucketIndex,
    /// Groups by AS (`--asmap`), for buckets and selection.
    asmap: Option<std::sync::Arc<crate::shared::asmap::Asmap>>,
    /// Networks `select` may pick from (those with a route: see `--onlynet`, `--onion`).
    reachable: Vec<Network>,
    /// New addresses that connected but whose tried slot is held: waiting for the occupant
    /// to be tested (not persisted, as Core's `m_tried_collisions`).
    collisions: Vec<SocketAddr>,
}

/// Draws one selection may make before it gives up (Core's ThreadOpenConnections gives up
/// after 100 tries and tries again on its next round; ours is the next upkeep tick).
pub const MAX_SELECT_TRIES: usize = 100;

/// Growth of the acceptance odds after each drawn entry that was not taken (Core's
/// `chance_factor *= 1.2`), so that a book of recently failed addresses still yields one.
const SELECT_CHANCE_GROWTH: f64 = 1.2;

/// Which buckets of each table hold an entry, and how many entries each table holds: a
/// random non-empty bucket and the tables' sizes without a scan. Drawing uniformly among the
/// non-empty buckets is what Core's `Select_` does by drawing buckets until one is not empty.
#[derive(Debug, Clone)]
struct BucketIndex {
    /// Entries per bucket, by table (new, tried).
    fill: [Vec<u8>; 2],
    /// The non-empty buckets, by table, in no order.
    nonempty: [Vec<u32>; 2],
    /// Where each bucket is in `nonempty` (`u32::MAX`: empty).
    at: [Vec<u32>; 2],
    /// Entries per table.
    counts: [usize; 2],
}

impl BucketIndex {
    fn new() -> BucketIndex {
        let sized = |n: u32, v: u32| vec![v; n as usize];
        BucketIndex {
            fill: [
                vec![0; NEW_BUCKET_COUNT as usize],
                vec![0; TRIED_BUCKET_COUNT as usize],
            ],
            nonempty: [Vec::new(), Vec::new()],
            at: [
                sized(NEW_BUCKET_COUNT, u32::MAX),
                sized(TRIED_BUCKET_COUNT, u32::MAX),
            ],
            counts: [0, 0],
        }
    }

    fn t(table: Table) -> usize {
        match table {
            Table::New => 0,
            Table::Tried => 1,
        }
    }

    fn occupy(&mut self, table: Table, bucket: u32) {
        let (t, b) = (Self::t(table), bucket as usize);
        self.fill[t][b] = self.fill[t][b].saturating_add(1);
        self.counts[t] += 1;
        if self.at[t][b] == u32::MAX {
            self.at[t][b] = self.nonempty[t].len() as u32;
            self.nonempty[t].push(bucket);
        }
    }

    fn vacate(&mut self, table: Table, bucket: u32) {
        let (t, b) = (Self::t(table), bucket as usize);
        self.fill[t][b] = self.fill[t][b].saturating_sub(1);
        self.counts[t] = self.counts[t].saturating_sub(1);
        if self.fill[t][b] == 0 && self.at[t][b] != u32::MAX {
            let i = self.at[t][b] as usize;
            self.nonempty[t].swap_remove(i);
            if let Some(&moved) = self.nonempty[t].get(i) {
                self.at[t][moved as usize] = i as u32;
            }
            self.at[t][b] = u32::MAX;
        }
    }

    /// A non-empty bucket of `table`, uniformly.
    fn random_bucket(&self, table: Table, rng: &mut impl Rng) -> Option<u32> {
        let list = &self.nonempty[Self::t(table)];
        (!list.is_empty()).then(|| list[rng.gen_range(0..list.len())])
    }

    /// Entries in `table`.
    fn count(&self, table: Table) -> usize {
        self.counts[Self::t(table)]
    }
}

/// Core's penalty on a gossiped address's time (`addrman`'s `time_penalty` of 2 h for
/// addresses relayed by another peer): a relayed address is older than its sender says.
pub const GOSSIP_TIME_PENALTY_SECS: u64 = 2 * 3600;

impl AddrBook {
    /// An empty book with a secret `key`.
    pub fn new(key: [u8; 32], distinct_local_groups: bool) -> AddrBook {
        AddrBook {
            key,
            distinct_local_groups,
            entries: HashMap::new(),
            slots: HashMap::new(),
            positions: HashMap::new(),
            index: BucketIndex::new(),
            asmap: None,
            reachable: vec![Network::Ipv4, Network::Ipv6],
            collisions: Vec::new(),
        }
    }

    /// Whether local and private addresses are kept (a local mesh: regtest's default).
    pub fn accepts_local(&self) -> bool {
        self.distinct_local_groups
    }

    /// Sets the networks `select` may pick addresses from; the others stay in the book
    /// (and are gossiped) but are not dialled.
    pub fn set_reachable(&mut self, networks: Vec<Network>) {
        self.reachable = networks;
    }

    /// The network of an entry's address.
    fn network_of(e: &AddrEntry) -> Network {
        e.overlay
            .map_or_else(|| Network::of_ip(e.addr.ip()), |o| o.network())
    }

    /// The network group of `ip` under this book's rules.
    pub fn group(&self, ip: IpAddr) -> Vec<u8> {
        let ip = canonical(ip);
        if Network::of_ip(ip).is_overlay() {
            return netgroup(ip);
        }
        if self.distinct_local_groups && is_local_or_private(ip) {
            let mut g = vec![0xff];
            match ip {
                IpAddr::V4(v4) => g.extend_from_slice(&v4.octets()),
                IpAddr::V6(v6) => g.extend_from_slice(&v6.octets()),
            }
            return g;
        }
        netgroup_as(ip, self.asmap.as_deref())
    }

    fn hash(&self, parts: &[&[u8]]) -> u64 {
        let mut engine = sha256::Hash::engine();
        engine.input(&self.key);
        for p in parts {
            engine.input(&(p.len() as u32).to_le_bytes());
            engine.input(p);
        }
        let h = sha256::Hash::from_engine(engine);
        let b = h.as_byte_array();
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    fn addr_bytes(addr: &SocketAddr) -> Vec<u8> {
        let mut v = match canonical(addr.ip()) {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        v.extend_from_slice(&addr.port().to_le_bytes());
        v
    }

    fn new_bucket(&self, addr: &SocketAddr, source: IpAddr) -> u32 {
        let (ag, sg) = (self.group(addr.ip()), self.group(source));
        let inner = self.hash(&[b"N0", &ag, &sg]) % NEW_BUCKETS_PER_SOURCE_GROUP as u64;
        (self.hash(&[b"N1", &sg, &inner.to_le_bytes()]) % NEW_BUCKET_COUNT as u64) as u32
    }

    fn tried_bucket(&self, addr: &SocketAddr) -> u32 {
        let ag = self.group(addr.ip());
        let inner = self.hash(&[b"T0", &Self::addr_bytes(addr)]) % TRIED_BUCKETS_PER_GROUP as u64;
        (self.hash(&[b"T1", &ag, &inner.to_le_bytes()]) % TRIED_BUCKET_COUNT as u64) as u32
    }

    fn position(&self, table: Table, bucket: u32, addr: &SocketAddr) -> u32 {
        let t = [table as u8];
        (self.hash(&[b"P", &t, &bucket.to_le_bytes(), &Self::addr_bytes(addr)])
            % BUCKET_SIZE as u64) as u32
    }

    fn place(&mut self, addr: SocketAddr, slot: (Table, u32, u32)) {
        if self.slots.insert(slot, addr).is_none() {
            self.index.occupy(slot.0, slot.1);
        }
        self.positions.insert(addr, slot);
        if let Some(e) = self.entries.get_mut(&addr) {
            e.table = slot.0;
        }
    }

    /// Empties a slot (its entry's position is the caller's to drop).
    fn vacate(&mut self, slot: &(Table, u32, u32)) {
        if self.slots.remove(slot).is_some() {
            self.index.vacate(slot.0, slot.1);
        }
    }

    fn remove(&mut self, addr: &SocketAddr) -> Option<AddrEntry> {
        if let Some(slot) = self.positions.remove(addr) {
            self.vacate(&slot);
        }
        self.entries.remove(addr)
    }

    /// Whether an entry is not worth keeping (Core's `IsTerrible`).
    pub fn is_terrible(e: &AddrEntry, now: u64) -> bool {
        if e.last_try.is_some_and(|t| now.saturating_sub(t) < 60) {
            return false; // tried in the last minute: give it a chance
        }
        if e.last_seen > now + 600 {
            return true; // from the future
        }
        if now.saturating_sub(e.last_seen) > HORIZON_SECS {
            return true;
        }
        if e.last_success.is_none() && e.attempts >= MAX_RETRIES {
            return true;
        }
        if e.last_success
            .is_some_and(|s| now.saturating_sub(s) > MIN_FAIL_SECS)
            && e.attempts >= MAX_FAILURES
        {
            return true;
        }
        false
    }

    /// Adds an IP address heard from `source`. Returns true if it is new to the book.
    /// Addresses in the internal onion and I2P ranges are refused: they stand for a name
    /// and come in through [`AddrBook::add_overlay`].
    pub fn add(
        &mut self,
        addr: SocketAddr,
        services: u64,
        last_seen: u64,
        source: IpAddr,
        now: u64,
    ) -> bool {
        if matches!(Network::of_ip(addr.ip()), Network::Onion | Network::I2p) {
            return false;
        }
        // Only routable addresses (Core); local and private ones too in a local mesh
        // (regtest's default), where every peer is one.
        if !self.distinct_local_groups && !is_routable(addr.ip()) {
            return false;
        }
        self.insert(addr, None, services, last_seen, source, now)
    }

    fn insert(
        &mut self,
        addr: SocketAddr,
        overlay: Option<OverlayAddr>,
        services: u64,
        last_seen: u64,
        source: IpAddr,
        now: u64,
    ) -> bool {
        // I2P addresses carry port 0 (SAM 3.1 has no ports), as in Core.
        let port_ok = addr.port() != 0 || matches!(overlay, Some(OverlayAddr::I2p(_)));
        if !port_ok || addr.ip().is_unspecified() || addr.ip().is_multicast() {
            return false;
        }
        let last_seen = last_seen.min(now + 600);
        if let Some(e) = self.entries.get_mut(&addr) {
            // Services are what the address itself said in its `version` (see `good`), never
            // what gossip claims for it: a relayed claim could make it look like a better
            // peer than it is.
            e.last_seen = e.last_seen.max(last_seen);
            return false;
        }
        let entry = AddrEntry {
            addr,
            services,
            last_seen,
            last_try: None,
            attempts: 0,
            last_success: None,
            source,
            table: Table::New,
            overlay,
        };
        if Self::is_terrible(&entry, now) {
            return false;
        }
        let bucket = self.new_bucket(&addr, source);
        let slot = (Table::New, bucket, self.position(Table::New, bucket, &addr));
        if let Some(occupant) = self.slots.get(&slot).copied() {
            let terrible = self
                .entries
                .get(&occupant)
                .is_some_and(|e| Self::is_terrible(e, now));
            if !terrible {
                return false;
            }
            self.remove(&occupant);
        }
        self.entries.insert(addr, entry);
        self.place(addr, slot);
        true
    }

    /// Adds an onion, I2P or CJDNS address heard from `source`, under its internal address.
    /// Returns true if it is new to the book.
    pub fn add_overlay(
        &mut self,
        overlay: OverlayAddr,
        port: u16,
        services: u64,
        last_seen: u64,
        source: IpAddr,
        now: u64,
    ) -> bool {
        let addr = overlay.internal(port);
        self.insert(addr, Some(overlay), services, last_seen, source, now)
    }

    /// Adds an address as gossip carries it: its time less Core's 2-hour penalty, unless it
    /// is the sender's own address.
    pub fn add_gossip(&mut self, a: &GossipAddr, source: IpAddr, now: u64) -> bool {
        let penalty = match canonical(a.addr.ip()) == canonical(source) {
            true => 0,
            false => GOSSIP_TIME_PENALTY_SECS,
        };
        let time = (a.time as u64).saturating_sub(penalty);
        match a.overlay {
            Some(o) => self.add_overlay(o, a.addr.port(), a.services, time, source, now),
            None => self.add(a.addr, a.services, time, source, now),
        }
    }

    /// Records a connection attempt.
    pub fn attempt(&mut self, addr: &SocketAddr, now: u64) {
        if let Some(e) = self.entries.get_mut(addr) {
            e.last_try = Some(now);
            e.attempts = e.attempts.saturating_add(1);
        }
    }

    /// Records a successful connection (handshake complete): moves the address to tried.
    pub fn good(&mut self, addr: &SocketAddr, services: u64, now: u64) {
        let Some(e) = self.entries.get_mut(addr) else {
            // An address we dialled without knowing it (manual): remember it as tried, local
            // or not (the operator chose it).
            let source = addr.ip();
            if matches!(Network::of_ip(addr.ip()), Network::Onion | Network::I2p) {
                return;
            }
            self.insert(*addr, None, services, now, source, now);
            if self.entries.contains_key(addr) {
                self.good(addr, services, now);
            }
            return;
        };
        e.last_success = Some(now);
        e.last_seen = now;
        e.last_try = Some(now);
        e.attempts = 0;
        // What it said of itself in `version` (Core's SetServices).
        e.services = services;
        if e.table == Table::Tried {
            return;
        }
        let slot = self.tried_slot(addr);
        if self
            .slots
            .get(&slot)
            .is_some_and(|occupant| occupant != addr)
        {
            // Test before evict: the occupant is tested first.
            if self.collisions.len() < MAX_TRIED_COLLISIONS && !self.collisions.contains(addr) {
                self.collisions.push(*addr);
            }
            return;
        }
        self.make_tried(addr);
    }

    /// The tried slot `addr` goes to.
    fn tried_slot(&self, addr: &SocketAddr) -> (Table, u32, u32) {
        let bucket = self.tried_bucket(addr);
        (
            Table::Tried,
            bucket,
            self.position(Table::Tried, bucket, addr),
        )
    }

    /// Moves `addr` to its tried slot, sending any occupant back to new.
    fn make_tried(&mut self, addr: &SocketAddr) {
        let slot = self.tried_slot(addr);
        if let Some(old) = self.positions.remove(addr) {
            self.vacate(&old);
        }
        if let Some(displaced) = self.slots.get(&slot).copied() {
            // The occupant goes back to new, to its own new slot if that is free.
            self.positions.remove(&displaced);
            self.vacate(&slot);
            let source = self
                .entries
                .get(&displaced)
                .map_or(displaced.ip(), |d| d.source);
            let nb = self.new_bucket(&displaced, source);
            let nslot = (Table::New, nb, self.position(Table::New, nb, &displaced));
            if self.slots.contains_key(&nslot) {
                self.entries.remove(&displaced);
            } else {
                self.place(displaced, nslot);
            }
        }
        self.place(*addr, slot);
    }

    /// Settles the tried collisions (Core's ResolveCollisions): an occupant that connected
    /// in the last [`TRIED_REPLACEMENT_SECS`] stays; one tried since and not connected (given
    /// [`TRIED_TEST_GRACE_SECS`]) is replaced; one not tested within
    /// [`TRIED_TEST_WINDOW_SECS`] of the newcomer's connection is replaced; the rest wait.
    pub fn resolve_collisions(&mut self, now: u64) {
        let mut waiting = Vec::new();
        for addr in std::mem::take(&mut self.collisions) {
            let Some(new) = self.entries.get(&addr) else {
                continue;
            };
            if new.table == Table::Tried {
                continue;
            }
            let new_success = new.last_success.unwrap_or(0);
            let slot = self.tried_slot(&addr);
            let Some(old) = self.slots.get(&slot).and_then(|o| self.entries.get(o)) else {
                self.make_tried(&addr);
                continue;
            };
            let within =
                |t: Option<u64>, secs: u64| t.is_some_and(|t| now.saturating_sub(t) < secs);
            if within(old.last_success, TRIED_REPLACEMENT_SECS) {
                // The occupant works: it stays, the newcomer stays in new.
                continue;
            }
            if within(old.last_try, TRIED_REPLACEMENT_SECS) {
                let tried_at = old.last_try.unwrap_or(now);
                if now.saturating_sub(tried_at) > TRIED_TEST_GRACE_SECS {
                    // Tested, and it did not connect.
                    self.make_tried(&addr);
                } else {
                    waiting.push(addr);
                }
                continue;
            }
            if now.saturating_sub(new_success) > TRIED_TEST_WINDOW_SECS {
                // Never tested in time: it cannot be reached.
                self.make_tried(&addr);
                continue;
            }
            waiting.push(addr);
        }
        self.collisions = waiting;
    }

    /// The occupant of a collision's tried slot, for a feeler to test (Core's
    /// SelectTriedCollision); `None` when there is no collision.
    pub fn select_tried_collision(&self, rng: &mut impl Rng) -> Option<SocketAddr> {
        if self.collisions.is_empty() {
            return None;
        }
        let addr = self.collisions[rng.gen_range(0..self.collisions.len())];
        self.slots.get(&self.tried_slot(&addr)).copied()
    }

    /// Collisions waiting.
    pub fn collisions(&self) -> usize {
        self.collisions.len()
    }

    /// As [`AddrBook::good`], without refreshing when the address was last seen: a
    /// block-relay-only peer's fresh timestamp in our getaddr answers would point it out
    /// (Core's `Good` never sets the time, and `Connected` skips block-relay-only peers).
    pub fn good_unseen(&mut self, addr: &SocketAddr, services: u64, now: u64) {
        let seen = self.entries.get(addr).map(|e| e.last_seen);
        self.good(addr, services, now);
        if let (Some(seen), Some(e)) = (seen, self.entries.get_mut(addr)) {
            e.last_seen = seen;
        }
    }

    /// Drops hopeless entries; returns how many.
    pub fn cleanup(&mut self, now: u64) -> usize {
        let hopeless: Vec<SocketAddr> = self
            .entries
            .values()
            .filter(|e| Self::is_terrible(e, now))
            .map(|e| e.addr)
            .collect();
        for a in &hopeless {
            self.remove(a);
        }
        hopeless.len()
    }

    /// Picks an address to dial: tried or new with equal odds, skipping `exclude` addresses
    /// and the network groups in `busy_groups`. Entries that failed more, or were tried in
    /// the last ten minutes, are less likely to be picked.
    pub fn select(
        &self,
        now: u64,
        rng: &mut impl Rng,
        exclude: &HashSet<SocketAddr>,
        busy_groups: &HashSet<Vec<u8>>,
    ) -> Option<SocketAddr> {
        self.select_in(now, rng, exclude, busy_groups, false)
    }

    /// As [`AddrBook::select`], from the new table only: a feeler's pick (Core's
    /// `Select(new_only=true)`), an address to move to tried if it answers.
    pub fn select_new(
        &self,
        now: u64,
        rng: &mut impl Rng,
        exclude: &HashSet<SocketAddr>,
        busy_groups: &HashSet<Vec<u8>>,
    ) -> Option<SocketAddr> {
        self.select_in(now, rng, exclude, busy_groups, true)
    }

    /// Core's `Select_`, bounded: up to [`MAX_SELECT_TRIES`] draws, each of a table (tried
    /// or new, even odds while both hold entries), a non-empty bucket of it and the first
    /// entry from a random position in it; an entry we may dial is taken with its chance
    /// ([`AddrBook::chance`]) times a factor that grows with every entry drawn and not taken.
    /// O(tries), whatever the book's size: nothing is scanned.
    fn select_in(
        &self,
        now: u64,
        rng: &mut impl Rng,
        exclude: &HashSet<SocketAddr>,
        busy_groups: &HashSet<Vec<u8>>,
        new_only: bool,
    ) -> Option<SocketAddr> {
        let (new, tried) = self.counts();
        let tried = if new_only { 0 } else { tried };
        if new == 0 && tried == 0 {
            return None;
        }
        let mut chance_factor = 1.0f64;
        for _ in 0..MAX_SELECT_TRIES {
            let table = match (tried > 0, new > 0) {
                (true, true) if rng.gen_bool(0.5) => Table::Tried,
                (true, false) => Table::Tried,
                _ => Table::New,
            };
            let Some(bucket) = self.index.random_bucket(table, rng) else {
                continue;
            };
            let start = rng.gen_range(0..BUCKET_SIZE);
            // The first entry on a network we can reach (Core's `Select_(networks)` skips
            // the others while it scans the bucket).
            let found = (0..BUCKET_SIZE).find_map(|i| {
                self.slots
                    .get(&(table, bucket, (start + i) % BUCKET_SIZE))
                    .and_then(|a| self.entries.get(a))
                    .filter(|e| self.reachable.contains(&Self::network_of(e)))
            });
            let Some(e) = found else {
                continue;
            };
            let eligible =
                !exclude.contains(&e.addr) && !busy_groups.contains(&self.group(e.addr.ip()));
            if !eligible {
                continue;
            }
            if rng.gen::<f64>() < (Self::chance(e, now) * chance_factor).min(1.0) {
                return Some(e.addr);
            }
            chance_factor *= SELECT_CHANCE_GROWTH;
        }
        None
    }

    /// Core's `GetChance`: the odds of taking an entry drawn, lower for one tried in the
    /// last 10 minutes (x0.01) and for every failed attempt (x0.66, at most 8 times).
    pub fn chance(e: &AddrEntry, now: u64) -> f64 {
        let mut chance = 0.66f64.powi(e.attempts.min(8) as i32);
        if e.last_try.is_some_and(|t| now.saturating_sub(t) < 600) {
            chance *= 0.01;
        }
        chance
    }

    /// A random sample for a getaddr answer: at most 1000 and at most 23% of the book,
    /// hopeless entries left out.
    pub fn sample(&self, now: u64, rng: &mut impl Rng) -> Vec<AddrEntry> {
        let mut good: Vec<&AddrEntry> = self
            .entries
            .values()
            .filter(|e| !Self::is_terrible(e, now))
            .collect();
        let n = (self.entries.len() * MAX_GETADDR_PCT / 100)
            .min(MAX_GETADDR_ANSWER)
            .min(good.len());
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let j = rng.gen_range(i..good.len());
            good.swap(i, j);
            out.push(good[i].clone());
        }
        out
    }

    /// An entry.
    pub fn get(&self, addr: &SocketAddr) -> Option<&AddrEntry> {
        self.entries.get(addr)
    }

    /// All entries.
    pub fn entries(&self) -> impl Iterator<Item = &AddrEntry> {
        self.entries.values()
    }

    /// Entries in each table: (new, tried).
    pub fn counts(&self) -> (usize, usize) {
        (self.index.count(Table::New), self.index.count(Table::Tried))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The persisted form.
    pub fn to_file(&self) -> AddrBookFile {
        let mut entries: Vec<AddrEntry> = self.entries.values().cloned().collect();
        entries.sort_by_key(|e| (e.table != Table::Tried, e.addr));
        AddrBookFile {
            key: self.key,
            distinct_local_groups: self.distinct_local_groups,
            entries,
        }
    }

    /// Rebuilds a book from its persisted form (tried entries first, then new).
    pub fn from_file(file: AddrBookFile, distinct_local_groups: bool, now: u64) -> AddrBook {
        Self::from_file_mapped(file, distinct_local_groups, None, now)
    }

    /// An empty book that groups by AS under `asmap`.
    pub fn new_mapped(
        key: [u8; 32],
        distinct_local_groups: bool,
        asmap: Option<std::sync::Arc<crate::shared::asmap::Asmap>>,
    ) -> AddrBook {
        let mut book = AddrBook::new(key, distinct_local_groups);
        book.asmap = asmap;
        book
    }

    /// [`AddrBook::from_file`] grouping by AS under `asmap`. Buckets are recomputed from the
    /// entries on every load, so a new or changed asmap re-buckets the book (Core compares
    /// the asmap version stored in peers.dat to do the same).
    pub fn from_file_mapped(
        file: AddrBookFile,
        distinct_local_groups: bool,
        asmap: Option<std::sync::Arc<crate::shared::asmap::Asmap>>,
        now: u64,
    ) -> AddrBook {
        let mut book = AddrBook::new_mapped(file.key, distinct_local_groups, asmap);
        for e in file.entries {
            let tried = e.table == Table::Tried;
            let addr = e.addr;
            let added = match e.overlay {
                // The internal address is recomputed from the name, so a file cannot pair
                // a name with another's address.
                Some(o) => book.add_overlay(o, addr.port(), e.services, e.last_seen, e.source, now),
                // An internal onion or I2P address without its name cannot be dialled.
                None if matches!(Network::of_ip(addr.ip()), Network::Onion | Network::I2p) => false,
                None => book.add(addr, e.services, e.last_seen, e.source, now),
            };
            let addr = e.overlay.map_or(addr, |o| o.internal(addr.port()));
            if added {
                if let Some(slot) = book.entries.get_mut(&addr) {
                    slot.last_try = e.last_try;
                    slot.attempts = e.attempts;
                    slot.last_success = e.last_success;
                }
                if tried {
                    let (last_try, attempts) = (e.last_try, e.attempts);
                    book.good(&addr, e.services, e.last_success.unwrap_or(now));
                    if let Some(slot) = book.entries.get_mut(&addr) {
                        slot.last_try = last_try;
                        slot.attempts = attempts;
                        slot.last_seen = e.last_seen;
                    }
                }
            }
        }
        book
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use std::net::Ipv4Addr;

    const NOW: u64 = 1_800_000_000;

    fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(a, b, c, d), port))
    }

    fn book() -> AddrBook {
        AddrBook::new([7u8; 32], false)
    }

    /// Two addresses of one group that share a tried slot, both in new.
    fn colliding_pair(b: &mut AddrBook) -> (SocketAddr, SocketAddr) {
        let mut seen: HashMap<(Table, u32, u32), SocketAddr> = HashMap::new();
        for x in 0..=255u8 {
            for y in 1..=254u8 {
                let a = v4(203, 0, x, y, 8333);
                if let Some(first) = seen.insert(b.tried_slot(&a), a) {
                    for addr in [first, a] {
                        assert!(b.add(addr, 1, NOW, v4(198, 51, 100, 1, 0).ip(), NOW));
                    }
                    return (first, a);
                }
            }
        }
        unreachable!("64 slots in 8 buckets: a pair is found long before")
    }

    fn table(b: &AddrBook, a: &SocketAddr) -> Table {
        b.get(a).unwrap().table
    }

    /// Core's test-before-evict (addrman_tests' addrman_noevict, addrman_evictionworks): a
    /// newcomer whose tried slot is held waits, the occupant is offered to a feeler, and the
    /// collision is settled by the test, or by its absence.
    #[test]
    fn a_tried_collision_waits_for_a_test_of_the_occupant() {
        let hours = |h: u64| h * 3600;
        // The occupant connected recently: kept, the newcomer stays in new.
        let mut b = book();
        let (old, new) = colliding_pair(&mut b);
        b.good(&old, 1, NOW);
        b.good(&new, 1, NOW + 10);
        assert_eq!(
            (table(&b, &old), table(&b, &new)),
            (Table::Tried, Table::New)
        );
        assert_eq!(b.collisions(), 1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(
            b.select_tried_collision(&mut rng),
            Some(old),
            "the occupant is tested"
        );
        b.resolve_collisions(NOW + 20);
        assert_eq!(
            (table(&b, &old), table(&b, &new)),
            (Table::Tried, Table::New)
        );
        assert_eq!(b.collisions(), 0);

        // The occupant is old; the feeler tries it and it does not answer: replaced, after
        // the grace period.
        let mut b = book();
        let (old, new) = colliding_pair(&mut b);
        b.good(&old, 1, NOW - hours(5));
        b.good(&new, 1, NOW);
        b.resolve_collisions(NOW + 1);
        assert_eq!(b.collisions(), 1, "untested: it waits");
        b.attempt(&old, NOW + 10);
        b.resolve_collisions(NOW + 30);
        assert_eq!(table(&b, &new), Table::New, "the test still has time");
        b.resolve_collisions(NOW + 10 + TRIED_TEST_GRACE_SECS + 1);
        assert_eq!((table(&b, &new), b.collisions()), (Table::Tried, 0));
        assert_ne!(b.get(&old).map(|e| e.table), Some(Table::Tried));

        // The old one answers its feeler: it stays.
        let mut b = book();
        let (old, new) = colliding_pair(&mut b);
        b.good(&old, 1, NOW - hours(5));
        b.good(&new, 1, NOW);
        b.attempt(&old, NOW + 10);
        b.good(&old, 1, NOW + 11);
        b.resolve_collisions(NOW + 200);
        assert_eq!(
            (table(&b, &old), table(&b, &new)),
            (Table::Tried, Table::New)
        );

        // Never tested within the window: replaced.
        let mut b = book();
        let (old, new) = colliding_pair(&mut b);
        b.good(&old, 1, NOW - hours(5));
        b.good(&new, 1, NOW);
        b.resolve_collisions(NOW + TRIED_TEST_WINDOW_SECS - 1);
        assert_eq!(table(&b, &new), Table::New);
        b.resolve_collisions(NOW + TRIED_TEST_WINDOW_SECS + 1);
        assert_eq!(table(&b, &new), Table::Tried);
    }

    #[test]
    fn collisions_are_bounded() {
        let mut b = book();
        let mut pairs = Vec::new();
        let mut seen: HashMap<(Table, u32, u32), SocketAddr> = HashMap::new();
        'outer: for x in 0..=255u8 {
            for y in 1..=254u8 {
                let a = v4(203, 0, x, y, 8333);
                if let Some(first) = seen.remove(&b.tried_slot(&a)) {
                    pairs.push((first, a));
                    if pairs.len() > MAX_TRIED_COLLISIONS + 5 {
                        break 'outer;
                    }
                } else {
                    seen.insert(b.tried_slot(&a), a);
                }
            }
        }
        let source = v4(198, 51, 100, 1, 0).ip();
        for (old, new) in &pairs {
            b.add(*old, 1, NOW, source, NOW);
            b.add(*new, 1, NOW, source, NOW);
            b.good(old, 1, NOW);
            b.good(new, 1, NOW);
        }
        assert_eq!(b.collisions(), MAX_TRIED_COLLISIONS);
    }

    #[test]
    fn add_attempt_good_moves_to_tried_and_counts() {
        let mut b = book();
        let a = v4(203, 0, 113, 5, 8333);
        assert!(b.add(a, 1, NOW - 100, "198.51.100.1".parse().unwrap(), NOW));
        assert!(
            !b.add(a, 8, NOW, "198.51.100.1".parse().unwrap(), NOW),
            "already known"
        );
        // Gossip does not add service bits.
        assert_eq!(b.get(&a).unwrap().services, 1);
        b.attempt(&a, NOW);
        b.good(&a, 1, NOW);
        let e = b.get(&a).unwrap();
        assert_eq!(
            (e.table, e.attempts, e.last_success),
            (Table::Tried, 0, Some(NOW))
        );
        assert_eq!(b.counts(), (0, 1));
    }

    #[test]
    fn hopeless_entries_are_dropped() {
        let mut b = book();
        let a = v4(203, 0, 113, 5, 8333);
        b.add(a, 1, NOW, "198.51.100.1".parse().unwrap(), NOW);
        for i in 0..3 {
            b.attempt(&a, NOW + i);
        }
        assert_eq!(b.cleanup(NOW + 3600), 1);
        assert!(b.is_empty());
        assert!(!b.add(
            v4(203, 0, 113, 6, 1),
            1,
            NOW - HORIZON_SECS - 1,
            "198.51.100.1".parse().unwrap(),
            NOW
        ));
    }

    #[test]
    fn a_recently_failed_address_is_still_selected_as_core_raises_the_odds() {
        let mut b = book();
        let a = v4(203, 0, 113, 5, 8333);
        b.add(a, 1, NOW, "198.51.100.1".parse().unwrap(), NOW);
        for i in 0..3 {
            b.attempt(&a, NOW - 60 + i);
        }
        // Odds of 0.01 x 0.66^3 per draw, raised x1.2 per draw not taken: one call takes it.
        assert!(AddrBook::chance(b.get(&a).unwrap(), NOW) < 0.003);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..50 {
            assert_eq!(
                b.select(NOW, &mut rng, &HashSet::new(), &HashSet::new()),
                Some(a)
            );
        }
    }

    proptest! {
        /// Whatever the book and the exclusions, a selection is an address we may dial.
        #[test]
        fn a_selection_is_never_excluded_or_in_a_busy_group(
            addrs in proptest::collection::vec((1u8..224, any::<u8>(), any::<u8>()), 1..200),
            excluded in proptest::collection::vec(any::<usize>(), 0..50),
            busy in proptest::collection::vec(any::<usize>(), 0..20),
            seed in any::<u64>(),
        ) {
            let mut b = book();
            let src: IpAddr = "198.51.100.1".parse().unwrap();
            let list: Vec<SocketAddr> = addrs.iter().map(|(a, c, d)| v4(*a, *c, *d, 1, 8333)).collect();
            for a in &list {
                b.add(*a, 1, NOW, src, NOW);
            }
            let exclude: HashSet<SocketAddr> = excluded.iter().map(|i| list[i % list.len()]).collect();
            let busy: HashSet<Vec<u8>> = busy.iter().map(|i| b.group(list[i % list.len()].ip())).collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            if let Some(pick) = b.select(NOW, &mut rng, &exclude, &busy) {
                prop_assert!(!exclude.contains(&pick));
                prop_assert!(!busy.contains(&b.group(pick.ip())));
                prop_assert!(b.get(&pick).is_some());
            }
        }
    }

    #[test]
    fn under_an_asmap_one_as_is_one_group_for_buckets_and_selection() {
        use crate::shared::asmap::{encode, Asmap};
        let map = Asmap::from_bytes(encode::prefixes(&[
            ("203.0.113.0".parse().unwrap(), 24, 64500),
            ("198.51.100.0".parse().unwrap(), 24, 64500),
        ]))
        .unwrap();
        let mut b = AddrBook::new_mapped([7u8; 32], false, Some(std::sync::Arc::new(map)));
        let src: IpAddr = "192.0.2.1".parse().unwrap();
        let (a, c, d) = (
            v4(203, 0, 113, 5, 8333),
            v4(198, 51, 100, 9, 8333),
            v4(8, 8, 4, 4, 8333),
        );
        for x in [a, c, d] {
            assert!(b.add(x, 1, NOW, src, NOW));
        }
        // Two /16s, one AS: one group, so a peer in that AS makes the other address busy.
        assert_eq!(b.group(a.ip()), b.group(c.ip()));
        assert_ne!(book().group(a.ip()), book().group(c.ip()));
        let busy: HashSet<Vec<u8>> = [b.group(a.ip())].into();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for _ in 0..20 {
            assert_eq!(b.select(NOW, &mut rng, &HashSet::new(), &busy), Some(d));
        }
        // The book loads under the map it is given: buckets by AS again after a restart.
        let back = AddrBook::from_file_mapped(b.to_file(), false, b.asmap.clone(), NOW);
        assert_eq!(back.group(a.ip()), back.group(c.ip()));
    }

    #[test]
    fn selection_skips_busy_groups_and_excluded_addresses() {
        let mut b = book();
        let src: IpAddr = "198.51.100.1".parse().unwrap();
        let a = v4(203, 0, 113, 5, 8333);
        let c = v4(198, 51, 100, 9, 8333);
        b.add(a, 1, NOW, src, NOW);
        b.add(c, 1, NOW, src, NOW);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let busy: HashSet<Vec<u8>> = [b.group(a.ip())].into();
        for _ in 0..20 {
            assert_eq!(b.select(NOW, &mut rng, &HashSet::new(), &busy), Some(c));
        }
        let exclude: HashSet<SocketAddr> = [c].into();
        assert_eq!(b.select(NOW, &mut rng, &exclude, &busy), None);
    }

    #[test]
    fn local_addresses_are_their_own_group_when_asked() {
        let plain = book();
        let distinct = AddrBook::new([7u8; 32], true);
        let (x, y): (IpAddr, IpAddr) = ("127.0.1.1".parse().unwrap(), "127.0.1.2".parse().unwrap());
        assert_eq!(plain.group(x), plain.group(y));
        assert_ne!(distinct.group(x), distinct.group(y));
        let (p, q): (IpAddr, IpAddr) = ("10.1.2.3".parse().unwrap(), "10.1.2.4".parse().unwrap());
        assert_ne!(distinct.group(p), distinct.group(q));
        assert_eq!(plain.group(p), plain.group(q));
    }

    #[test]
    fn getaddr_sample_is_bounded_by_23_percent_and_1000() {
        let mut b = book();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for i in 0..100u32 {
            let a = SocketAddr::from((Ipv4Addr::from(0x0b00_0000 + (i << 16) + 1), 8333));
            b.add(
                a,
                1,
                NOW,
                IpAddr::from(Ipv4Addr::from(0x0c00_0000 + (i << 16))),
                NOW,
            );
        }
        let n = b.len();
        assert!(n > 50);
        assert_eq!(b.sample(NOW, &mut rng).len(), n * 23 / 100);
    }

    #[test]
    fn flooding_from_one_source_group_cannot_take_more_than_its_bucket_share() {
        let mut b = book();
        // Honest addresses from many sources.
        let mut honest = Vec::new();
        for i in 0..2000u32 {
            let a = SocketAddr::from((Ipv4Addr::from(0x2000_0000 + (i << 12) + 7), 8333));
            let src = IpAddr::from(Ipv4Addr::from(0x3000_0000 + (i << 16)));
            if b.add(a, 1, NOW, src, NOW) {
                honest.push(a);
            }
        }
        // The attacker: 200,000 addresses in every group, all announced by peers in 6.6.0.0/16.
        for i in 0..200_000u32 {
            let a = SocketAddr::from((
                Ipv4Addr::from(0x4000_0000u32.wrapping_add(i.wrapping_mul(2_654_435_761))),
                8333,
            ));
            let src = IpAddr::from(Ipv4Addr::new(6, 6, (i >> 8) as u8, i as u8));
            b.add(a, 1, NOW, src, NOW);
        }
        let attacker = b
            .entries()
            .filter(|e| canonical(e.source).to_string().starts_with("6.6."))
            .count();
        assert!(
            attacker <= (NEW_BUCKETS_PER_SOURCE_GROUP * BUCKET_SIZE) as usize,
            "attacker holds {attacker} entries"
        );
        let kept = honest.iter().filter(|a| b.get(a).is_some()).count();
        assert_eq!(kept, honest.len(), "no honest entry was flushed out");
    }

    #[test]
    fn overlay_addresses_are_kept_grouped_selected_only_when_reachable_and_persisted() {
        let mut b = book();
        let src: IpAddr = "198.51.100.1".parse().unwrap();
        let onion = OverlayAddr::Onion([3; 32]);
        let i2p = OverlayAddr::I2p([4; 32]);
        assert!(b.add_overlay(onion, 8333, 1, NOW, src, NOW));
        assert!(b.add_overlay(i2p, 0, 1, NOW, src, NOW));
        // The internal address alone, without its name, is refused.
        assert!(!b.add(OverlayAddr::Onion([5; 32]).internal(8333), 1, NOW, src, NOW));
        let e = b.get(&onion.internal(8333)).unwrap();
        assert_eq!(e.overlay, Some(onion));
        assert_eq!(GossipAddr::from(e).overlay, Some(onion));
        // Onion groups are their own (not the IPv6 /32 of the internal range).
        assert_eq!(b.group(onion.internal_ip())[0], 4);
        assert_eq!(b.group(i2p.internal_ip())[0], 5);
        // Not reachable by default: never selected.
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let none = HashSet::new();
        assert_eq!(b.select(NOW, &mut rng, &none, &HashSet::new()), None);
        b.set_reachable(vec![Network::Onion]);
        assert_eq!(
            b.select(NOW, &mut rng, &none, &HashSet::new()),
            Some(onion.internal(8333))
        );
        // Persisted with the name; the internal address is recomputed from it.
        let mut file = b.to_file();
        for e in &mut file.entries {
            e.addr = SocketAddr::new("fd87:d87e:eb43::1".parse().unwrap(), e.addr.port());
        }
        let back = AddrBook::from_file(file, false, NOW);
        assert_eq!(
            back.get(&onion.internal(8333)).unwrap().overlay,
            Some(onion)
        );
        assert_eq!(back.len(), 2);
    }

    #[test]
    fn version_1_files_are_read_as_version_2() {
        let mut b = book();
        let src: IpAddr = "198.51.100.1".parse().unwrap();
        b.add(v4(203, 0, 113, 5, 8333), 1, NOW, src, NOW);
        let current = b.to_file();
        let v1 = AddrBookFileV1 {
            key: current.key,
            distinct_local_groups: current.distinct_local_groups,
            entries: current
                .entries
                .iter()
                .map(|e| AddrEntryV1 {
                    addr: e.addr,
                    services: e.services,
                    last_seen: e.last_seen,
                    last_try: e.last_try,
                    attempts: e.attempts,
                    last_success: e.last_success,
                    source: e.source,
                    table: e.table,
                })
                .collect(),
        };
        let bytes = crate::persist::encode(*b"ADDR", 1, &v1).unwrap();
        let read: AddrBookFileV1 = crate::persist::decode(*b"ADDR", 1, &bytes).unwrap();
        let back = AddrBook::from_file(read.into(), false, NOW);
        assert_eq!(back.len(), 1);
        assert_eq!(back.get(&v4(203, 0, 113, 5, 8333)).unwrap().overlay, None);
    }

    #[test]
    fn gossip_keeps_routable_addresses_only_with_a_time_penalty_and_its_own_services() {
        let mut b = book();
        let now = 1_800_000_000u64;
        let src: IpAddr = "198.51.100.1".parse().unwrap();
        let gossip = |ip: &str, services: u64, time: u64| GossipAddr {
            addr: SocketAddr::new(ip.parse().unwrap(), 8333),
            overlay: None,
            services,
            time: time as u32,
        };
        for local in [
            "10.0.0.5",
            "192.168.1.2",
            "172.16.0.9",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "198.18.0.1",
            "0.1.2.3",
            "240.0.0.1",
            "fe80::1",
            "fd00::1",
            "::1",
            "2001:10::1",
            "ff02::1",
        ] {
            assert!(!b.add_gossip(&gossip(local, 1, now), src, now), "{local}");
        }
        assert!(b.is_empty());
        // A public address: kept, two hours older than the sender says.
        assert!(b.add_gossip(&gossip("203.0.113.9", 1, now), src, now));
        let e = b.get(&"203.0.113.9:8333".parse().unwrap()).unwrap();
        assert_eq!(e.last_seen, now - GOSSIP_TIME_PENALTY_SECS);
        // The sender's own address carries no penalty.
        assert!(b.add_gossip(&gossip("198.51.100.1", 1, now), src, now));
        let e = b.get(&"198.51.100.1:8333".parse().unwrap()).unwrap();
        assert_eq!(e.last_seen, now);
        // Gossip never adds service bits; the address's own version sets them.
        b.add_gossip(&gossip("203.0.113.9", 0x809, now), src, now);
        assert_eq!(
            b.get(&"203.0.113.9:8333".parse().unwrap())
                .unwrap()
                .services,
            1
        );
        b.good(&"203.0.113.9:8333".parse().unwrap(), 0x8, now);
        assert_eq!(
            b.get(&"203.0.113.9:8333".parse().unwrap())
                .unwrap()
                .services,
            0x8
        );
        // A manual peer on the LAN is remembered once it handshakes.
        b.good(&"192.168.1.2:8333".parse().unwrap(), 1, now);
        assert!(b.get(&"192.168.1.2:8333".parse().unwrap()).is_some());
        // A local mesh (regtest) keeps local addresses.
        let mut mesh = AddrBook::new([7u8; 32], true);
        assert!(mesh.add_gossip(
            &gossip("127.0.0.1", 1, now),
            "127.0.0.2".parse().unwrap(),
            now
        ));
    }

    #[test]
    fn persisted_form_round_trips() {
        let mut b = book();
        let src: IpAddr = "198.51.100.1".parse().unwrap();
        for i in 0..50u8 {
            let a = v4(203, i, 113, 5, 8333);
            b.add(a, 1, NOW, src, NOW);
            if i % 3 == 0 {
                b.good(&a, 1, NOW);
            }
        }
        let back = AddrBook::from_file(b.to_file(), false, NOW);
        assert_eq!(back.counts(), b.counts());
        for e in b.entries() {
            assert_eq!(back.get(&e.addr).map(|x| x.table), Some(e.table));
        }
    }

    proptest! {
        #[test]
        fn slots_and_entries_stay_consistent(ops in proptest::collection::vec((any::<u32>(), any::<u16>(), 0u8..4), 1..400)) {
            let mut b = book();
            for (ip, src, op) in ops {
                let a = SocketAddr::from((Ipv4Addr::from(ip | 0x0100_0000), 8333));
                let s = IpAddr::from(Ipv4Addr::from(0x0500_0000 | (src as u32) << 8));
                match op {
                    0 | 1 => { b.add(a, 1, NOW, s, NOW); }
                    2 => b.good(&a, 1, NOW),
                    _ => b.attempt(&a, NOW),
                }
                prop_assert_eq!(b.slots.len(), b.entries.len());
                // The bucket index agrees with the slots.
                for table in [Table::New, Table::Tried] {
                    let t = BucketIndex::t(table);
                    let mut per_bucket: HashMap<u32, usize> = HashMap::new();
                    for k in b.slots.keys().filter(|k| k.0 == table) {
                        *per_bucket.entry(k.1).or_default() += 1;
                    }
                    prop_assert_eq!(b.index.count(table), per_bucket.values().sum::<usize>());
                    let mut buckets: Vec<u32> = per_bucket.keys().copied().collect();
                    buckets.sort_unstable();
                    let mut listed = b.index.nonempty[t].clone();
                    listed.sort_unstable();
                    prop_assert_eq!(&listed, &buckets);
                    for (&k, &n) in &per_bucket {
                        prop_assert_eq!(b.index.fill[t][k as usize] as usize, n);
                    }
                }
                prop_assert_eq!(b.positions.len(), b.entries.len());
                for (slot, addr) in &b.slots {
                    prop_assert_eq!(b.positions.get(addr), Some(slot));
                    prop_assert_eq!(b.entries.get(addr).map(|e| e.table), Some(slot.0));
                }
            }
        }
    }
}
