//! Block download as a sans-IO core (Core's `mapBlocksInFlight`, the block stalling timeout
//! and the per-peer download cap of net_processing): which block is asked of which peer and
//! when, which peers failed which block, and whom to ask next. It takes events and the time
//! and returns the requests to send; the Sync actor sends them and decides which blocks are
//! wanted (on our best chain, near a recent tip).
//!
//! - A block is asked of one peer at a time, at most [`MAX_BLOCKS_IN_FLIGHT_PER_PEER`] per
//!   peer, and taken only from the peer it was asked of (Core processes requested blocks
//!   only; ours come from direct fetch), or from the peer it was moved away from after a
//!   stall (its copy may still arrive first).
//! - A peer that sent a copy we refuse (mutated, or larger than our limit) is not asked for
//!   that block again while it is connected; after [`MAX_BLOCK_TRIES`] connected peers did
//!   so, the block is given up. `notfound`, a stall or an expired request only keep that peer
//!   from being asked again for [`SOFT_FAILURE_MEMORY`], or until it announces the block
//!   again (a peer that had the header first may get the block later); they never count
//!   towards giving up, so neither a peer that reconnects nor many peers that only have
//!   the header can make us give up a block.
//! - The head request of each peer (its oldest) that has been the head longer than the
//!   stalling timeout moves to another source when one has room (Core's
//!   `BLOCK_STALLING_TIMEOUT`, doubling once per peer that starts stalling, up to 64 s, and
//!   shrinking by 0.85 per block delivered). A request is timed from when it became the head
//!   (Core's `m_downloading_since`), so a burst of 16 asked together moves one at a time, a
//!   stalling timeout apart, not one per tick; any request older than
//!   [`BLOCK_DOWNLOAD_TIMEOUT`] is released.
//! - A block that failed and had nobody else to ask is retried on each tick, as sources
//!   gain room or appear.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bitcoin::BlockHash;

use super::requests::InFlight;
use crate::shared::peers::PeerId;

/// Blocks one peer may be downloading for us (Core: `MAX_BLOCKS_IN_TRANSIT_PER_PEER`).
pub const MAX_BLOCKS_IN_FLIGHT_PER_PEER: usize = 16;
/// A block request unanswered this long is released and asked of another peer (Core's
/// block download timeout: one block interval).
pub const BLOCK_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// A block asked this long ago, that another peer has, is asked of that peer (Core:
/// `BLOCK_STALLING_TIMEOUT_DEFAULT`): a tip block waits seconds for a slow peer, not the
/// download timeout.
pub const BLOCK_STALLING_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// Ceiling of the stalling timeout, which doubles on each stall (Core:
/// `BLOCK_STALLING_TIMEOUT_MAX`): on a slow link no block is re-asked for ever.
pub const BLOCK_STALLING_TIMEOUT_MAX: Duration = Duration::from_secs(64);
/// Share of the stalling timeout kept after a block arrives (Core: 0.85, down to the
/// default).
pub const BLOCK_STALLING_DECAY: f64 = 0.85;
/// Connected peers that may send a copy of one block we refuse before it is given up: a
/// block that this many peers could not deliver in a form we take (too large for our
/// limit, or mutated) is not a download problem, and each try may cost a whole block.
pub const MAX_BLOCK_TRIES: usize = 8;
/// How long a `notfound`, a stall or an expired request keeps that peer from being asked
/// for that block again (unless it announces it again): long enough that two peers that
/// only have the header cannot bounce requests between them, and as long as a request may
/// wait anyway.
pub const SOFT_FAILURE_MEMORY: Duration = BLOCK_DOWNLOAD_TIMEOUT;
/// Blocks whose failures are remembered.
///
/// # Security
/// Bounded, oldest forgotten first: entries come only from blocks we asked for (at most a
/// peer's share of the fetch window at a time), so the cap is never reached in normal use;
/// a forgotten block may be tried again from the start.
pub const MAX_FAILED_BLOCKS: usize = 256;
/// Peers one block may be downloading from at once as compact blocks: the peer it was
/// asked of and high-bandwidth peers that pushed it meanwhile (Core's
/// `MAX_CMPCTBLOCKS_INFLIGHT_PER_BLOCK`): a slow first `blocktxn` does not hold the block
/// up, and three round trips per block are the most a block costs.
pub const MAX_CMPCTBLOCKS_INFLIGHT_PER_BLOCK: usize = 3;
/// Failure records kept per block (one per peer, the oldest dropped).
///
/// # Security
/// A block's records are bounded however many peers fail it; the refusals that count
/// towards giving up need [`MAX_BLOCK_TRIES`] of them at most.
pub const MAX_FAILURES_PER_BLOCK: usize = 32;

/// Why a peer did not deliver a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// It sent a copy that failed our checks (Core's IsBlockMutated and the header checks).
    Refused,
    /// Its copy was larger than our limit (skipped unread).
    TooLarge,
    /// It answered `notfound`.
    NotFound,
    /// It did not deliver within the stalling timeout, and another peer had the block.
    Stalled,
    /// It did not deliver within [`BLOCK_DOWNLOAD_TIMEOUT`].
    Expired,
}

impl Failure {
    /// Label for metrics and logs.
    pub fn kind(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::TooLarge => "too_large",
            Failure::NotFound => "not_found",
            Failure::Stalled => "stalled",
            Failure::Expired => "expired",
        }
    }

    /// A copy was sent and could not be taken: counts towards giving the block up, and the
    /// peer is not asked again while connected.
    fn is_hard(self) -> bool {
        matches!(self, Failure::Refused | Failure::TooLarge)
    }
}

/// A `getdata` for `block` to send to `peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Whom to ask.
    pub peer: PeerId,
    /// What to ask for.
    pub block: BlockHash,
}

/// What a failure (or a tick) led to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Requests to send.
    pub requests: Vec<Request>,
    /// Blocks whose peer failed, with that peer and why.
    pub failures: Vec<(BlockHash, PeerId, Failure)>,
    /// Blocks given up: [`MAX_BLOCK_TRIES`] connected peers sent copies we refused.
    pub given_up: Vec<BlockHash>,
}

/// One peer's failure of one block.
#[derive(Debug, Clone, Copy)]
struct FailureRecord {
    peer: PeerId,
    why: Failure,
    at: Instant,
}

/// See the module documentation.
#[derive(Debug)]
pub struct BlockDownload {
    in_flight: InFlight<BlockHash>,
    /// The peer a block was moved away from after a stall, and when: its copy is still
    /// taken (for [`BLOCK_DOWNLOAD_TIMEOUT`]).
    late: HashMap<BlockHash, (PeerId, Instant)>,
    stalling_timeout: Duration,
    /// When each peer's head request became its head: when one of its requests last left
    /// (delivered, not found, moved), as Core's `m_downloading_since`. Peers answer in order,
    /// so a request behind a slow one is not late until the one ahead of it is done.
    head_since: HashMap<PeerId, Instant>,
    /// Peers whose head request moved away and that have delivered nothing since: a peer
    /// stalling again doubles the timeout no more (Core doubles once per staller it drops).
    stallers: HashSet<PeerId>,
    /// Failures of each block, by block; `order` keeps the blocks oldest first.
    failed: HashMap<BlockHash, Vec<FailureRecord>>,
    order: VecDeque<BlockHash>,
    /// Blocks in flight that high-bandwidth peers are also rebuilding for us from their
    /// pushed compact blocks (see [`BlockDownload::add_parallel`]): at most
    /// [`MAX_CMPCTBLOCKS_INFLIGHT_PER_BLOCK`] `- 1` each, kept only while the block is in
    /// flight.
    parallel: HashMap<BlockHash, Vec<PeerId>>,
}

impl Default for BlockDownload {
    fn default() -> Self {
        BlockDownload {
            in_flight: InFlight::default(),
            late: HashMap::new(),
            stalling_timeout: BLOCK_STALLING_TIMEOUT_DEFAULT,
            head_since: HashMap::new(),
            stallers: HashSet::new(),
            failed: HashMap::new(),
            order: VecDeque::new(),
            parallel: HashMap::new(),
        }
    }
}

impl BlockDownload {
    /// The blocks of `blocks` to ask of `peer` now (it announced them, or sent their
    /// headers): those not in flight, not refused from it, not given up, within its cap.
    /// An announcement clears the peer's `notfound` or stall of those blocks: it may have
    /// them now. The caller has kept only the blocks it wants.
    pub fn fetch(&mut self, blocks: &[BlockHash], peer: PeerId, now: Instant) -> Vec<BlockHash> {
        let mut asked = Vec::new();
        for b in blocks {
            if let Some(records) = self.failed.get_mut(b) {
                records.retain(|r| r.peer != peer || r.why.is_hard());
            }
            if self.may_ask(b, peer, now) && self.try_request(*b, peer, now) {
                asked.push(*b);
            }
        }
        asked
    }

    /// Asks `peer` for `block` again, not on an announcement: its failures of the block
    /// stand (a recent `notfound` or stall keeps it from being asked). True when asked.
    pub fn retry(&mut self, block: BlockHash, peer: PeerId, now: Instant) -> bool {
        self.may_ask(&block, peer, now) && self.try_request(block, peer, now)
    }

    fn try_request(&mut self, block: BlockHash, peer: PeerId, now: Instant) -> bool {
        // Its parallel downloads count towards its cap (Core: both are in vBlocksInFlight).
        let cap = MAX_BLOCKS_IN_FLIGHT_PER_PEER.saturating_sub(self.parallel_of(peer));
        self.in_flight.try_request(block, peer, now, cap)
    }

    /// `peer`'s parallel attempt at `block` becomes the block's request (its place moves,
    /// so the per-peer cap does not count it twice). False, and it stays parallel, when the
    /// block has a request or the peer has no room.
    fn promote(&mut self, block: BlockHash, peer: PeerId, now: Instant) -> bool {
        if !self.is_parallel(&block, peer) {
            return false;
        }
        self.remove_parallel(&block, peer);
        if self.try_request(block, peer, now) {
            return true;
        }
        self.parallel.entry(block).or_default().push(peer);
        false
    }

    /// Blocks `peer` is downloading in parallel with their requests.
    fn parallel_of(&self, peer: PeerId) -> usize {
        self.parallel.values().filter(|p| p.contains(&peer)).count()
    }

    fn refusals(&self, block: &BlockHash) -> usize {
        self.failed
            .get(block)
            .map_or(0, |f| f.iter().filter(|r| r.why.is_hard()).count())
    }

    /// Whether `peer` may be asked for `block`: the block is not given up, the peer did not
    /// send a copy we refused, and no `notfound`, stall or expiry of it is recent.
    fn may_ask(&self, block: &BlockHash, peer: PeerId, now: Instant) -> bool {
        let Some(records) = self.failed.get(block) else {
            return true;
        };
        self.refusals(block) < MAX_BLOCK_TRIES
            && !records.iter().any(|r| {
                r.peer == peer
                    && (r.why.is_hard()
                        || now.saturating_duration_since(r.at) < SOFT_FAILURE_MEMORY)
            })
    }

    /// A block arrived from `peer`: true when it was asked of `peer`, or moved away from it
    /// after a stall (then it is no longer in flight, and the stalling timeout shrinks);
    /// false for an unrequested copy, which the caller drops.
    pub fn on_block(&mut self, block: &BlockHash, peer: PeerId, now: Instant) -> bool {
        let asked_of = self.in_flight.peer_of(block);
        let late = self.late.get(block).is_some_and(|(p, _)| *p == peer);
        if asked_of != Some(peer) && !late && !self.is_parallel(block, peer) {
            return false;
        }
        // Here: the parallel attempts at it end too (Core removes every request of it).
        self.parallel.remove(block);
        // From either: the block is here; the other copy, if it comes, is unrequested. If it
        // was the head of its peer's queue, that peer's next request is the head from now
        // (Core's RemoveBlockRequest: only the front moves `m_downloading_since`).
        let was_head = asked_of.filter(|p| self.in_flight.oldest_of(*p) == Some(*block));
        self.in_flight.received(block);
        if let Some(p) = was_head {
            self.head_since.insert(p, now);
        }
        self.stallers.remove(&peer);
        self.late.remove(block);
        self.stalling_timeout = self
            .stalling_timeout
            .mul_f64(BLOCK_STALLING_DECAY)
            .max(BLOCK_STALLING_TIMEOUT_DEFAULT);
        true
    }

    /// The block was taken: its failures are forgotten.
    pub fn accepted(&mut self, block: &BlockHash) {
        self.late.remove(block);
        if self.failed.remove(block).is_some() {
            self.order.retain(|b| b != block);
        }
    }

    /// The copy `peer` delivered (taken by [`Self::on_block`]) was refused: the next of
    /// `sources` (peers that have the block, in preference order) is asked.
    pub fn on_block_refused(
        &mut self,
        block: BlockHash,
        peer: PeerId,
        sources: &[PeerId],
        now: Instant,
    ) -> Outcome {
        let mut out = Outcome::default();
        self.fail(block, peer, Failure::Refused, sources, now, &mut out);
        out
    }

    /// `peer`'s copy of `block` (a block that does not check, a malformed compact block or
    /// `blocktxn`; the caller charges it) was refused: its request, or its parallel attempt,
    /// ends (Core's RemoveBlockRequest for that peer alone); the block's other downloads go
    /// on, a parallel one becoming the request, else the next of `sources` is asked. The
    /// peer is not asked for it again.
    pub fn on_copy_refused(
        &mut self,
        block: BlockHash,
        peer: PeerId,
        sources: &[PeerId],
        now: Instant,
    ) -> Outcome {
        let mut out = Outcome::default();
        if self.is_parallel(&block, peer) {
            self.remove_parallel(&block, peer);
            let before = self.refusals(&block);
            self.record_failure(block, peer, Failure::Refused, now);
            out.failures.push((block, peer, Failure::Refused));
            // The request it ran beside goes on; only the last allowed refusal is reported.
            if before < MAX_BLOCK_TRIES && self.refusals(&block) >= MAX_BLOCK_TRIES {
                out.given_up.push(block);
            }
            return out;
        }
        if self.late.get(&block).is_some_and(|(p, _)| *p == peer) {
            self.late.remove(&block);
        }
        if self.in_flight.peer_of(&block) == Some(peer) {
            let was_head = self.in_flight.oldest_of(peer) == Some(block);
            self.in_flight.received(&block);
            if was_head {
                self.head_since.insert(peer, now);
            }
        }
        self.fail(block, peer, Failure::Refused, sources, now, &mut out);
        out
    }

    /// `peer` answered the request for `block` with `notfound` (`NotFound`), or with a copy
    /// above our limit (`TooLarge`): if it was the peer asked, the next source is asked.
    pub fn on_not_delivered(
        &mut self,
        block: BlockHash,
        peer: PeerId,
        why: Failure,
        sources: &[PeerId],
        now: Instant,
    ) -> Outcome {
        let mut out = Outcome::default();
        if self.late.get(&block).is_some_and(|(p, _)| *p == peer) {
            // The staller has given up on it too; the moved request stands.
            self.late.remove(&block);
            return out;
        }
        if self.is_parallel(&block, peer) {
            // A parallel attempt failed: the request it ran beside stands.
            self.remove_parallel(&block, peer);
            if why.is_hard() {
                self.record_failure(block, peer, why, now);
            }
            out.failures.push((block, peer, why));
            return out;
        }
        if self.in_flight.peer_of(&block) != Some(peer) {
            // Not the peer asked: nothing of ours failed.
            return out;
        }
        let was_head = self.in_flight.oldest_of(peer) == Some(block);
        self.in_flight.received(&block);
        if was_head {
            self.head_since.insert(peer, now);
        }
        self.fail(block, peer, why, sources, now, &mut out);
        out
    }

    fn fail(
        &mut self,
        block: BlockHash,
        peer: PeerId,
        why: Failure,
        sources: &[PeerId],
        now: Instant,
        out: &mut Outcome,
    ) {
        out.failures.push((block, peer, why));
        let before = self.refusals(&block);
        self.record_failure(block, peer, why, now);
        if self.refusals(&block) >= MAX_BLOCK_TRIES {
            if before < MAX_BLOCK_TRIES {
                out.given_up.push(block);
            }
            return;
        }
        self.ask_next(block, sources, now, out);
    }

    fn ask_next(&mut self, block: BlockHash, sources: &[PeerId], now: Instant, out: &mut Outcome) {
        if self.in_flight.contains(&block) {
            return;
        }
        // A parallel attempt becomes the request (Core: the block's next entry in
        // `mapBlocksInFlight` is first in flight): nothing to send, its answer is coming.
        let parallel: Vec<PeerId> = self.parallel_peers(&block).to_vec();
        for p in parallel {
            if self.promote(block, p, now) {
                return;
            }
        }
        if let Some(next) = self.next_source(&block, sources, now) {
            if self.try_request(block, next, now) {
                self.remove_parallel(&block, next);
                out.requests.push(Request { peer: next, block });
            }
        }
    }

    /// Remembers that `peer` failed `block` (one record per peer: the latest, a refusal
    /// kept over anything softer).
    fn record_failure(&mut self, block: BlockHash, peer: PeerId, why: Failure, now: Instant) {
        if !self.failed.contains_key(&block) {
            while self.order.len() >= MAX_FAILED_BLOCKS {
                if let Some(old) = self.order.pop_front() {
                    self.failed.remove(&old);
                }
            }
            self.order.push_back(block);
        }
        let records = self.failed.entry(block).or_default();
        match records.iter_mut().find(|r| r.peer == peer) {
            Some(r) if r.why.is_hard() && !why.is_hard() => r.at = now,
            Some(r) => *r = FailureRecord { peer, why, at: now },
            None => {
                if records.len() >= MAX_FAILURES_PER_BLOCK {
                    // The oldest soft record goes first; refusals are what giving up counts.
                    let victim = records.iter().position(|r| !r.why.is_hard()).unwrap_or(0);
                    records.remove(victim);
                }
                records.push(FailureRecord { peer, why, at: now });
            }
        }
    }

    /// The first of `sources` that may be asked for `block` and has room.
    fn next_source(&self, block: &BlockHash, sources: &[PeerId], now: Instant) -> Option<PeerId> {
        sources.iter().copied().find(|p| {
            self.may_ask(block, *p, now) && self.in_flight_to(*p) < MAX_BLOCKS_IN_FLIGHT_PER_PEER
        })
    }

    /// `peer` left: what it was asked for is asked of the next source of each (from
    /// `sources_of`), and its failures are forgotten (counted refusals are of connected
    /// peers only, so reconnecting never adds up to giving a block up).
    pub fn on_peer_gone(
        &mut self,
        peer: PeerId,
        sources_of: impl Fn(&BlockHash) -> Vec<PeerId>,
        now: Instant,
    ) -> Outcome {
        let mut out = Outcome::default();
        self.late.retain(|_, (p, _)| *p != peer);
        self.parallel.retain(|_, peers| {
            peers.retain(|p| *p != peer);
            !peers.is_empty()
        });
        self.head_since.remove(&peer);
        self.stallers.remove(&peer);
        for records in self.failed.values_mut() {
            records.retain(|r| r.peer != peer);
        }
        for block in self.in_flight.release_peer(peer) {
            let sources: Vec<PeerId> = sources_of(&block)
                .into_iter()
                .filter(|p| *p != peer)
                .collect();
            self.ask_next(block, &sources, now, &mut out);
        }
        out
    }

    /// Stalls, expiry and retries. Each peer's head request (its oldest) older than the
    /// stalling timeout moves to another source when one has room (the timeout then
    /// doubles, up to [`BLOCK_STALLING_TIMEOUT_MAX`]; the staller's copy is still taken); a
    /// request older than [`BLOCK_DOWNLOAD_TIMEOUT`] is released whether or not another
    /// can be asked; a failed block that nobody is asked for is asked of a source that has
    /// room now. `sources_of` gives no source for a block no longer wanted.
    pub fn on_tick(
        &mut self,
        now: Instant,
        sources_of: impl Fn(&BlockHash) -> Vec<PeerId>,
    ) -> Outcome {
        let mut out = Outcome::default();
        self.late
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < BLOCK_DOWNLOAD_TIMEOUT);
        for (block, peer) in self.in_flight.expire(now, BLOCK_DOWNLOAD_TIMEOUT) {
            let sources = sources_of(&block);
            self.fail(block, peer, Failure::Expired, &sources, now, &mut out);
        }
        let mut new_stallers = 0;
        let timeout = self.stalling_timeout;
        let heads: Vec<(BlockHash, PeerId)> = self
            .in_flight
            .oldest_per_peer()
            .into_iter()
            .filter(|(_, peer, asked_at)| {
                let since = self
                    .head_since
                    .get(peer)
                    .map_or(*asked_at, |h| (*h).max(*asked_at));
                now.saturating_duration_since(since) >= timeout
            })
            .map(|(block, peer, _)| (block, peer))
            .collect();
        for (block, peer) in heads {
            // A peer rebuilding it in parallel takes the request over, with nothing sent
            // (its `blocktxn` is coming); else the next source is asked.
            let sources = sources_of(&block);
            // Not for a block no longer wanted (no sources): the slow peer keeps it then.
            let parallel = self
                .parallel_peers(&block)
                .first()
                .copied()
                .filter(|_| !sources.is_empty());
            let others: Vec<PeerId> = sources.iter().copied().filter(|p| *p != peer).collect();
            let other = parallel.or_else(|| self.next_source(&block, &others, now));
            let Some(other) = other else {
                // Nobody else to ask: the slow peer keeps it (until the download timeout).
                continue;
            };
            self.in_flight.received(&block);
            if self.late.len() < MAX_FAILED_BLOCKS {
                self.late.insert(block, (peer, now));
            }
            out.failures.push((block, peer, Failure::Stalled));
            self.record_failure(block, peer, Failure::Stalled, now);
            if parallel == Some(other) {
                self.promote(block, other, now);
            } else if self.try_request(block, other, now) {
                out.requests.push(Request { peer: other, block });
            }
            self.head_since.insert(peer, now);
            if self.stallers.insert(peer) {
                new_stallers += 1;
            }
        }
        if new_stallers > 0 {
            // Once per tick however many started: our own link may be what is slow, and
            // then every peer stalls at once (Core's reason for doubling).
            self.stalling_timeout = (self.stalling_timeout * 2).min(BLOCK_STALLING_TIMEOUT_MAX);
        }
        // Only peers with requests in flight need a head time (bounded by connected peers).
        let in_flight = &self.in_flight;
        self.head_since.retain(|p, _| in_flight.of_peer(*p) > 0);
        // Parallel attempts run beside a request: not past it (expired, given up), so the
        // table is bounded by the blocks in flight.
        let late = &self.late;
        self.parallel
            .retain(|b, _| in_flight.contains(b) || late.contains_key(b));
        let orphans: Vec<BlockHash> = self
            .order
            .iter()
            .copied()
            .filter(|b| !self.in_flight.contains(b))
            .filter(|b| self.refusals(b) < MAX_BLOCK_TRIES)
            .collect();
        for block in orphans {
            let sources = sources_of(&block);
            self.ask_next(block, &sources, now, &mut out);
        }
        out
    }

    /// The stalling timeout in force.
    pub fn stalling_timeout(&self) -> Duration {
        self.stalling_timeout
    }

    /// The peer `block` is asked of, while in flight.
    pub fn asked_of(&self, block: &BlockHash) -> Option<PeerId> {
        self.in_flight.peer_of(block)
    }

    /// Whether `peer`'s copy of `block` would be taken: it was asked of it, moved away
    /// from it after a stall (see [`Self::on_block`]), or it is rebuilding it in parallel.
    pub fn may_deliver(&self, block: &BlockHash, peer: PeerId) -> bool {
        self.in_flight.peer_of(block) == Some(peer)
            || self.late.get(block).is_some_and(|(p, _)| *p == peer)
            || self.is_parallel(block, peer)
    }

    /// Peers `block` is downloading from: the one asked, and the parallel attempts (Core's
    /// `already_in_flight`, the count of its entries in `mapBlocksInFlight`).
    pub fn downloading_from(&self, block: &BlockHash) -> usize {
        usize::from(self.in_flight.contains(block)) + self.parallel.get(block).map_or(0, Vec::len)
    }

    /// The peers rebuilding `block` in parallel with its request.
    pub fn parallel_peers(&self, block: &BlockHash) -> &[PeerId] {
        self.parallel.get(block).map_or(&[], Vec::as_slice)
    }

    /// Whether `peer` is rebuilding `block` in parallel with its request.
    pub fn is_parallel(&self, block: &BlockHash, peer: PeerId) -> bool {
        self.parallel.get(block).is_some_and(|p| p.contains(&peer))
    }

    /// `peer` pushed a compact block of `block`, which is in flight from another peer:
    /// it becomes one of the block's parallel downloads (Core's BlockRequested from the
    /// CMPCTBLOCK handler) when the block has room for one more
    /// ([`MAX_CMPCTBLOCKS_INFLIGHT_PER_BLOCK`]) and the peer for one more block
    /// ([`MAX_BLOCKS_IN_FLIGHT_PER_PEER`]), and it did not fail the block. True when it is
    /// one now (or was already).
    pub fn add_parallel(&mut self, block: BlockHash, peer: PeerId, now: Instant) -> bool {
        if self.is_parallel(&block, peer) {
            return true;
        }
        let Some(first) = self.in_flight.peer_of(&block) else {
            return false;
        };
        let theirs = self.in_flight_to(peer);
        if first == peer
            || self.downloading_from(&block) >= MAX_CMPCTBLOCKS_INFLIGHT_PER_BLOCK
            || theirs >= MAX_BLOCKS_IN_FLIGHT_PER_PEER
            || !self.may_ask(&block, peer, now)
        {
            return false;
        }
        self.parallel.entry(block).or_default().push(peer);
        true
    }

    /// `peer` gave up its parallel attempt at `block` (Core's RemoveBlockRequest for it):
    /// the request it ran beside stands.
    pub fn remove_parallel(&mut self, block: &BlockHash, peer: PeerId) {
        if let Some(peers) = self.parallel.get_mut(block) {
            peers.retain(|p| *p != peer);
            if peers.is_empty() {
                self.parallel.remove(block);
            }
        }
    }

    /// The block `peer` was asked for first and has not delivered: the one its next
    /// `block` answers (peers serve `getdata` in order).
    pub fn first_asked_of(&self, peer: PeerId) -> Option<BlockHash> {
        self.in_flight.oldest_of(peer)
    }

    /// Blocks `peer` is downloading for us: requests, and parallel compact downloads.
    pub fn in_flight_to(&self, peer: PeerId) -> usize {
        self.in_flight.of_peer(peer) + self.parallel_of(peer)
    }

    /// Requests outstanding in all.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether anything needs the tick: requests in flight, or failed blocks to retry.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.order.is_empty()
    }

    /// Blocks whose failures are remembered.
    pub fn failed_blocks(&self) -> usize {
        self.failed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;
    use proptest::prelude::*;

    fn block(n: u8) -> BlockHash {
        BlockHash::from_byte_array([n; 32])
    }

    const A: PeerId = PeerId(1);
    const B: PeerId = PeerId(2);
    const C: PeerId = PeerId(3);

    #[test]
    fn a_block_is_taken_only_from_the_peer_it_was_asked_of() {
        let t0 = Instant::now();
        let mut d = BlockDownload::default();
        assert_eq!(d.fetch(&[block(1)], A, t0), vec![block(1)]);
        assert!(d.fetch(&[block(1)], B, t0).is_empty(), "one peer at a time");
        assert!(!d.on_block(&block(1), B, t0), "B was not asked");
        assert!(d.on_block(&block(1), A, t0));
        assert!(
            !d.on_block(&block(1), A, t0),
            "a second copy is unrequested"
        );
    }

    #[test]
    fn parallel_downloads_of_a_block_are_capped_and_end_with_it() {
        let t0 = Instant::now();
        let d4 = PeerId(4);
        let mut d = BlockDownload::default();
        assert!(
            !d.add_parallel(block(1), B, t0),
            "nothing in flight to run beside"
        );
        d.fetch(&[block(1)], A, t0);
        assert!(!d.add_parallel(block(1), A, t0), "the request's own peer");
        assert!(d.add_parallel(block(1), B, t0));
        assert!(d.add_parallel(block(1), C, t0));
        assert_eq!(
            d.downloading_from(&block(1)),
            MAX_CMPCTBLOCKS_INFLIGHT_PER_BLOCK
        );
        assert!(!d.add_parallel(block(1), d4, t0), "three at most");
        // A parallel failure ends that attempt only; the request stands.
        let out = d.on_not_delivered(block(1), C, Failure::TooLarge, &[d4], t0);
        assert!(out.requests.is_empty(), "{out:?}");
        assert_eq!(d.asked_of(&block(1)), Some(A));
        assert!(!d.add_parallel(block(1), C, t0), "C's copy was refused");
        // A parallel peer's copy is the block: every attempt at it ends.
        assert!(d.on_block(&block(1), B, t0));
        assert_eq!(d.downloading_from(&block(1)), 0);
        assert!(
            !d.on_block(&block(1), A, t0),
            "the request's copy now unrequested"
        );
        // A peer gone leaves no parallel attempt behind; a tick drops those of a block no
        // longer in flight.
        d.fetch(&[block(2)], A, t0);
        assert!(d.add_parallel(block(2), B, t0));
        let _ = d.on_peer_gone(B, |_| Vec::new(), t0);
        assert!(!d.is_parallel(&block(2), B));
        assert!(d.add_parallel(block(2), C, t0));
        // The request's peer gone: the parallel attempt becomes the request, nothing sent.
        let out = d.on_peer_gone(A, |_| vec![d4], t0);
        assert!(out.requests.is_empty(), "{out:?}");
        assert_eq!(d.asked_of(&block(2)), Some(C));
        assert!(!d.is_parallel(&block(2), C));
        // So on the request's expiry.
        d.fetch(&[block(3)], A, t0);
        assert!(d.add_parallel(block(3), B, t0));
        let _ = d.on_tick(t0 + BLOCK_DOWNLOAD_TIMEOUT, |_| Vec::new());
        assert_eq!(d.asked_of(&block(3)), Some(B));
        assert_eq!(d.downloading_from(&block(3)), 1);
    }

    #[test]
    fn a_peer_downloads_at_most_sixteen_blocks_counting_parallel_ones() {
        let t0 = Instant::now();
        let mut d = BlockDownload::default();
        // B runs beside 10 blocks asked of A and C, and then gets 6 requests of its own:
        // sixteen, its cap.
        let blocks: Vec<BlockHash> = (0..20).map(block).collect();
        d.fetch(&blocks[..10], A, t0);
        assert_eq!(d.fetch(&blocks[10..], C, t0).len(), 10);
        for b in &blocks[..10] {
            assert!(d.add_parallel(*b, B, t0));
        }
        let own: Vec<BlockHash> = (40..50).map(block).collect();
        assert_eq!(
            d.fetch(&own, B, t0).len(),
            6,
            "requests beside ten parallel ones"
        );
        assert_eq!(d.in_flight_to(B), MAX_BLOCKS_IN_FLIGHT_PER_PEER);
        assert!(!d.add_parallel(blocks[10], B, t0), "B has sixteen");
        // A promotion moves a place, not adds one: B at its cap still takes A's request
        // over when A leaves.
        let _ = d.on_peer_gone(A, |_| Vec::new(), t0);
        assert_eq!(d.asked_of(&blocks[0]), Some(B));
        assert_eq!(d.in_flight_to(B), MAX_BLOCKS_IN_FLIGHT_PER_PEER);
    }

    #[test]
    fn a_stalled_request_goes_to_the_parallel_download_with_nothing_sent() {
        let t0 = Instant::now();
        let mut d = BlockDownload::default();
        d.fetch(&[block(1)], A, t0);
        assert!(d.add_parallel(block(1), B, t0));
        let out = d.on_tick(t0 + BLOCK_STALLING_TIMEOUT_DEFAULT, |_| vec![A, B, C]);
        assert_eq!(out.failures, vec![(block(1), A, Failure::Stalled)]);
        assert!(out.requests.is_empty(), "{out:?}");
        assert_eq!(d.asked_of(&block(1)), Some(B));
        assert_eq!(d.downloading_from(&block(1)), 1);
    }

    #[test]
    fn at_most_sixteen_in_flight_per_peer() {
        let t0 = Instant::now();
        let mut d = BlockDownload::default();
        let blocks: Vec<BlockHash> = (0..40).map(block).collect();
        assert_eq!(d.fetch(&blocks, A, t0).len(), MAX_BLOCKS_IN_FLIGHT_PER_PEER);
        assert_eq!(d.fetch(&blocks, B, t0).len(), MAX_BLOCKS_IN_FLIGHT_PER_PEER);
    }

    #[test]
    fn a_refused_copy_goes_to_the_next_source_and_never_back() {
        let t0 = Instant::now();
        let mut d = BlockDownload::default();
        d.fetch(&[block(1)], A, t0);
        let out = d.on_not_delivered(block(1), A, Failure::TooLarge, &[A, B], t0);
        assert_eq!(
            out.requests,
            vec![Request {
                peer: B,
                block: block(1)
            }]
        );
        assert!(d.on_block(&block(1), B, t0));
        // B's copy is refused too: A's was, so nobody is asked (before: A, B, A, ... each
        // time a whole block's download).
        let out = d.on_block_refused(block(1), B, &[A, B], t0);
        assert!(out.requests.is_empty());
        assert!(
            d.fetch(&[block(1)], A, t0).is_empty(),
            "not even on a new announcement"
        );
        // A third peer may still be asked.
        assert_eq!(d.fetch(&[block(1)], C, t0), vec![block(1)]);
    }

    #[test]
    fn a_notfound_from_a_peer_not_asked_changes_nothing() {
        let t0 = Instant::now();
        let mut d = BlockDownload::default();
        d.fetch(&[block(1)], A, t0);
        let out = d.on_not_delivered(block(1), B, Failure::NotFound, &[B, C], t0);
        assert_eq!(out, Outcome::default());
        assert_eq!(d.asked_of(&block(1)), Some(A));
    }

    #[test]
    fn notfounds_never_give_a_block_up_and_a_new_announcement_is_heard() {
        let t0 = Instant::now();
        let mut d = BlockDownload::default();
        // Many peers that have only the header, and one that reconnects each time.
        for i in 0..(3 * MAX_BLOCK_TRIES as u64) {
            let p = PeerId(100 + i);
            assert_eq!(d.fetch(&[block(1)], p, t0), vec![block(1)], "try {i}");
            let out = d.on_not_delivered(block(1), p, Failure::NotFound, &[p], t0);
            assert!(out.given_up.is_empty());
            if i % 2 == 0 {
                d.on_peer_gone(p, |_| vec![], t0);
            }
        }
        // A peer that said notfound is not asked again on its own, so two such peers do not
        // bounce requests; its new announcement is heard (it may have the block now).
        d.fetch(&[block(2)], A, t0);
        let out = d.on_not_delivered(block(2), A, Failure::NotFound, &[A, B], t0);
        assert_eq!(
            out.requests,
            vec![Request {
                peer: B,
                block: block(2)
            }]
        );
        let out = d.on_not_delivered(block(2), B, Failure::NotFound, &[A, B], t0);
        assert!(out.requests.is_empty(), "not back to A at once");
        let only_2 = |b: &BlockHash| {
            if *b == block(2) {
                vec![A, B]
            } else {
                Vec::new()
            }
        };
        assert!(d
            .on_tick(t0 + Duration::from_secs(1), only_2)
            .requests
            .is_empty());
        assert_eq!(d.fetch(&[block(2)], A, t0), vec![block(2)]);
        // And after a while a retry goes out by itself.
        d.on_not_delivered(block(2), A, Failure::NotFound, &[A, B], t0);
        let later = t0 + SOFT_FAILURE_MEMORY;
        let out = d.on_tick(later, only_2);
        assert_eq!(out.requests.len(), 1);
    }

    #[test]
    fn refusals_of_connected_peers_give_a_block_up_and_leaving_takes_yours_back() {
        let t0 = Instant::now();
        let mut d = BlockDownload::default();
        let peers: Vec<PeerId> = (0..20).map(PeerId).collect();
        d.fetch(&[block(1)], peers[0], t0);
        let mut asked = peers[0];
        for i in 0..MAX_BLOCK_TRIES {
            assert!(d.on_block(&block(1), asked, t0));
            let out = d.on_block_refused(block(1), asked, &peers, t0);
            if i + 1 == MAX_BLOCK_TRIES {
                assert_eq!(out.given_up, vec![block(1)]);
                assert!(out.requests.is_empty());
            } else {
                asked = out.requests[0].peer;
            }
        }
        assert!(d.fetch(&[block(1)], peers[19], t0).is_empty(), "given up");
        // One refuser leaves: below the count again, and the block is tried once more.
        d.on_peer_gone(peers[0], |_| vec![], t0);
        assert_eq!(d.fetch(&[block(1)], peers[19], t0), vec![block(1)]);
    }

    #[test]
    fn only_a_peers_head_request_stalls_and_the_stallers_copy_is_still_taken() {
        let t0 = Instant::now();
        let mut d = BlockDownload::default();
        d.fetch(&[block(1)], A, t0);
        d.fetch(&[block(2)], A, t0 + Duration::from_millis(500));
        // Nobody else has them: A keeps them however slow.
        let out = d.on_tick(t0 + Duration::from_secs(5), |_| vec![A]);
        assert!(out.requests.is_empty());
        assert_eq!(d.stalling_timeout(), BLOCK_STALLING_TIMEOUT_DEFAULT);
        // B has them: the head one moves, not both, and the timeout doubles.
        let out = d.on_tick(t0 + Duration::from_secs(5), |_| vec![A, B]);
        assert_eq!(
            out.requests,
            vec![Request {
                peer: B,
                block: block(1)
            }]
        );
        assert_eq!(out.failures, vec![(block(1), A, Failure::Stalled)]);
        assert_eq!(d.stalling_timeout(), BLOCK_STALLING_TIMEOUT_DEFAULT * 2);
        assert_eq!(d.asked_of(&block(2)), Some(A));
        // The staller's copy arrives first: taken; B's later one is unrequested.
        assert!(d.on_block(&block(1), A, t0));
        assert!(!d.on_block(&block(1), B, t0));
        assert!(d.stalling_timeout() < BLOCK_STALLING_TIMEOUT_DEFAULT * 2);
    }

    #[test]
    fn a_stalling_burst_moves_one_head_per_timeout_and_doubles_the_timeout_once() {
        // Core times a peer's queue head from when it became the head and doubles the
        // timeout once per staller: 16 requests asked together of a peer that sends nothing
        // do not each stall on the next tick, nor push the timeout to its ceiling.
        let t0 = Instant::now();
        let mut d = BlockDownload::default();
        let burst: Vec<BlockHash> = (1..=16).map(block).collect();
        assert_eq!(d.fetch(&burst, A, t0).len(), 16);
        let mut moved = Vec::new();
        let mut t = t0;
        for _ in 0..100 {
            t += Duration::from_millis(100);
            moved.extend(d.on_tick(t, |_| vec![A, B]).requests);
        }
        // Moves at 2 s (the timeout becomes 4 s), then 6 s and 10 s.
        assert_eq!(moved.len(), 3, "{moved:?}");
        assert!(moved.iter().all(|r| r.peer == B));
        assert_eq!(d.stalling_timeout(), BLOCK_STALLING_TIMEOUT_DEFAULT * 2);
        // A delivers a block behind its head: the head stays as old (Core moves
        // m_downloading_since only when the front goes), so a peer cannot hold its head by
        // delivering the rest one by one.
        let mut mine: Vec<BlockHash> = (1..=16)
            .map(block)
            .filter(|b| d.asked_of(b) == Some(A))
            .collect();
        let last = mine.pop().unwrap();
        assert!(d.on_block(&last, A, t));
        t += BLOCK_STALLING_TIMEOUT_DEFAULT * 2;
        let out = d.on_tick(t, |_| vec![A, B]);
        assert_eq!(out.requests.len(), 1, "the head still stalls");
        // It delivers its head: no longer a staller, and its next head is timed from now.
        let head = mine
            .iter()
            .copied()
            .find(|b| d.asked_of(b) == Some(A))
            .unwrap();
        assert!(d.on_block(&head, A, t));
        let out = d.on_tick(t + Duration::from_millis(100), |_| vec![A, B]);
        assert!(out.requests.is_empty(), "the new head was just reached");
    }

    #[test]
    fn an_expired_request_is_released_even_with_no_other_source() {
        let t0 = Instant::now();
        let mut d = BlockDownload::default();
        d.fetch(&[block(1)], A, t0);
        let out = d.on_tick(t0 + BLOCK_DOWNLOAD_TIMEOUT, |_| vec![A]);
        assert_eq!(out.failures, vec![(block(1), A, Failure::Expired)]);
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn a_failed_block_with_nobody_to_ask_is_retried_when_a_source_appears() {
        let t0 = Instant::now();
        let mut d = BlockDownload::default();
        d.fetch(&[block(1)], A, t0);
        let out = d.on_not_delivered(block(1), A, Failure::NotFound, &[A], t0);
        assert!(out.requests.is_empty());
        let out = d.on_tick(t0 + Duration::from_millis(100), |_| vec![A, B]);
        assert_eq!(
            out.requests,
            vec![Request {
                peer: B,
                block: block(1)
            }]
        );
    }

    #[test]
    fn a_peer_leaving_hands_its_blocks_on_without_a_failure() {
        let t0 = Instant::now();
        let mut d = BlockDownload::default();
        d.fetch(&[block(1), block(2)], A, t0);
        let out = d.on_peer_gone(A, |_| vec![A, B], t0);
        assert_eq!(out.requests.len(), 2);
        assert!(out.failures.is_empty());
        assert_eq!(d.in_flight_to(B), 2);
        assert_eq!(d.failed_blocks(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Fetch(Vec<u8>, u64),
        Block(u8, u64, bool),
        NotDelivered(u8, u64, bool),
        Gone(u64),
        Tick(u64),
        Accepted(u8),
        Parallel(u8, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (proptest::collection::vec(0u8..24, 1..20), 0u64..6).prop_map(|(b, p)| Op::Fetch(b, p)),
            (0u8..24, 0u64..6, any::<bool>()).prop_map(|(b, p, ok)| Op::Block(b, p, ok)),
            (0u8..24, 0u64..6, any::<bool>()).prop_map(|(b, p, big)| Op::NotDelivered(b, p, big)),
            (0u64..6).prop_map(Op::Gone),
            (0u64..700).prop_map(Op::Tick),
            (0u8..24).prop_map(Op::Accepted),
            (0u8..24, 0u64..6).prop_map(|(b, p)| Op::Parallel(b, p)),
        ]
    }

    proptest! {
        /// Under any sequence of events in virtual time: no peer above its cap, a block in
        /// flight to one peer only and never to a peer that sent a refused copy of it, the
        /// stalling timeout within its bounds, the failure memory within its bounds, and a
        /// block given up only on refusals of connected peers.
        #[test]
        fn invariants_hold_under_any_events(ops in proptest::collection::vec(op(), 0..300)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut d = BlockDownload::default();
            let all: Vec<PeerId> = (0..6).map(PeerId).collect();
            let mut gone: Vec<PeerId> = Vec::new();
            for op in ops {
                let live: Vec<PeerId> = all.iter().copied().filter(|p| !gone.contains(p)).collect();
                let out = match op {
                    Op::Fetch(blocks, p) => {
                        let peer = PeerId(p);
                        if gone.contains(&peer) { continue; }
                        let blocks: Vec<BlockHash> = blocks.into_iter().map(block).collect();
                        for b in d.fetch(&blocks, peer, now) {
                            prop_assert_eq!(d.asked_of(&b), Some(peer));
                        }
                        Outcome::default()
                    }
                    Op::Block(b, p, ok) => {
                        let asked = d.asked_of(&block(b));
                        if ok {
                            let took = d.on_block(&block(b), PeerId(p), now);
                            if asked == Some(PeerId(p)) {
                                prop_assert!(took);
                            }
                            Outcome::default()
                        } else {
                            // As Sync refuses a copy: checked before it counts as delivered.
                            let out = d.on_copy_refused(block(b), PeerId(p), &live, now);
                            prop_assert_ne!(d.asked_of(&block(b)), Some(PeerId(p)));
                            out
                        }
                    }
                    Op::NotDelivered(b, p, big) => {
                        let why = if big { Failure::TooLarge } else { Failure::NotFound };
                        d.on_not_delivered(block(b), PeerId(p), why, &live, now)
                    }
                    Op::Gone(p) => {
                        gone.push(PeerId(p));
                        let live: Vec<PeerId> = live.iter().copied().filter(|x| *x != PeerId(p)).collect();
                        let out = d.on_peer_gone(PeerId(p), |_| live.clone(), now);
                        prop_assert_eq!(d.in_flight_to(PeerId(p)), 0);
                        out
                    }
                    Op::Tick(secs) => {
                        now += Duration::from_secs(secs);
                        d.on_tick(now, |_| live.clone())
                    }
                    Op::Accepted(b) => { d.accepted(&block(b)); Outcome::default() }
                    Op::Parallel(b, p) => {
                        let peer = PeerId(p);
                        if gone.contains(&peer) { continue; }
                        if d.add_parallel(block(b), peer, now) {
                            prop_assert!(d.may_deliver(&block(b), peer));
                        }
                        Outcome::default()
                    }
                };
                for (b, peers) in &d.parallel {
                    prop_assert!(!peers.is_empty());
                    prop_assert!(d.downloading_from(b) <= MAX_CMPCTBLOCKS_INFLIGHT_PER_BLOCK);
                    prop_assert!(!peers.contains(&d.asked_of(b).unwrap_or(PeerId(u64::MAX))),
                        "a parallel download beside its own peer's request");
                    prop_assert!(peers.iter().all(|p| !gone.contains(p)), "a peer that left");
                }
                for r in &out.requests {
                    prop_assert_eq!(d.asked_of(&r.block), Some(r.peer));
                    prop_assert!(!gone.contains(&r.peer), "a request to a peer that left");
                    prop_assert!(d.failed.get(&r.block).is_none_or(|f| !f.iter().any(|x| x.peer == r.peer && x.why.is_hard())),
                        "asked again of a peer whose copy was refused");
                }
                for b in &out.given_up {
                    let refusers: Vec<PeerId> = d.failed[b].iter().filter(|r| r.why.is_hard()).map(|r| r.peer).collect();
                    prop_assert!(refusers.iter().all(|p| !gone.contains(p)));
                    prop_assert!(refusers.len() >= MAX_BLOCK_TRIES);
                }
                for p in &all {
                    prop_assert!(d.in_flight_to(*p) <= MAX_BLOCKS_IN_FLIGHT_PER_PEER);
                }
                let st = d.stalling_timeout();
                prop_assert!((BLOCK_STALLING_TIMEOUT_DEFAULT..=BLOCK_STALLING_TIMEOUT_MAX).contains(&st));
                prop_assert!(d.failed.len() <= MAX_FAILED_BLOCKS);
                prop_assert_eq!(d.failed.len(), d.order.len());
                prop_assert!(d.failed.values().all(|f| f.len() <= MAX_FAILURES_PER_BLOCK));
                prop_assert!(d.late.len() <= MAX_FAILED_BLOCKS);
            }
        }
    }
}
