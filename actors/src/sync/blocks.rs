//! Block download as a sans-IO core (Core's `mapBlocksInFlight`, the block stalling timeout
//! and the per-peer download cap of net_processing): which block is asked of which peer and
//! when, which peers failed which block, and whom to ask next. It takes events and the time
//! and returns the requests to send; the Sync actor sends them and decides which blocks are
//! wanted (on our best chain, near a recent tip).
//!
//! - A block is asked of one peer at a time, at most [`MAX_BLOCKS_IN_FLIGHT_PER_PEER`] per
//!   peer, and taken only from the peer it was asked of (Core processes requested blocks
//!   only; ours come from direct fetch).
//! - A peer that fails a block (a refused copy, a copy above our limit, `notfound`, a stall,
//!   an expired request) is not asked for it again; the next source is, until
//!   [`MAX_BLOCK_TRIES`] peers failed it, when the block is given up (until it falls out of
//!   the bounded failure memory).
//! - A request older than the stalling timeout is moved to another source when there is one
//!   (Core's `BLOCK_STALLING_TIMEOUT`, doubling per stall up to 64 s and shrinking by 0.85
//!   per block delivered); one older than [`BLOCK_DOWNLOAD_TIMEOUT`] is released.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bitcoin::BlockHash;

use super::requests::InFlight;
use crate::manager::peers::PeerId;

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
/// Peers that may fail one block before it is given up: a block that this many peers could
/// not deliver in a form we take (too large for our limit, or refused) is not a download
/// problem, and each try may cost a whole block's bandwidth.
pub const MAX_BLOCK_TRIES: usize = 8;
/// Blocks whose failed peers are remembered.
///
/// # Security
/// Bounded, oldest forgotten first: entries come only from blocks we asked for (at most a
/// peer's share of the fetch window at a time), so the cap is never reached in normal use;
/// a forgotten block may be tried again from the start.
pub const MAX_FAILED_BLOCKS: usize = 256;

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
    /// Blocks given up: [`MAX_BLOCK_TRIES`] peers failed each.
    pub given_up: Vec<BlockHash>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct BlockDownload {
    in_flight: InFlight<BlockHash>,
    stalling_timeout: Duration,
    /// Peers that failed each block, by block; `order` keeps the blocks oldest first.
    failed: HashMap<BlockHash, Vec<PeerId>>,
    order: VecDeque<BlockHash>,
}

impl Default for BlockDownload {
    fn default() -> Self {
        BlockDownload {
            in_flight: InFlight::default(),
            stalling_timeout: BLOCK_STALLING_TIMEOUT_DEFAULT,
            failed: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl BlockDownload {
    /// The blocks of `blocks` to ask of `peer` now (it announced them, or sent their
    /// headers): those not in flight, not failed by it, not given up, within its cap.
    /// The caller has kept only the blocks it wants.
    pub fn fetch(&mut self, blocks: &[BlockHash], peer: PeerId, now: Instant) -> Vec<BlockHash> {
        blocks
            .iter()
            .copied()
            .filter(|b| self.may_ask(b, peer) && self.try_request(*b, peer, now))
            .collect()
    }

    fn try_request(&mut self, block: BlockHash, peer: PeerId, now: Instant) -> bool {
        self.in_flight
            .try_request(block, peer, now, MAX_BLOCKS_IN_FLIGHT_PER_PEER)
    }

    /// Whether `peer` may be asked for `block`: it has not failed it, and the block is not
    /// given up.
    fn may_ask(&self, block: &BlockHash, peer: PeerId) -> bool {
        self.failed
            .get(block)
            .is_none_or(|f| f.len() < MAX_BLOCK_TRIES && !f.contains(&peer))
    }

    /// A block arrived from `peer`: true when it was asked of `peer` (then it is no longer
    /// in flight, and the stalling timeout shrinks); false for an unrequested copy, which
    /// the caller drops.
    pub fn on_block(&mut self, block: &BlockHash, peer: PeerId) -> bool {
        if self.in_flight.peer_of(block) != Some(peer) {
            return false;
        }
        self.in_flight.received(block);
        self.stalling_timeout = self
            .stalling_timeout
            .mul_f64(BLOCK_STALLING_DECAY)
            .max(BLOCK_STALLING_TIMEOUT_DEFAULT);
        true
    }

    /// The block was taken: its failures are forgotten.
    pub fn accepted(&mut self, block: &BlockHash) {
        if self.failed.remove(block).is_some() {
            self.order.retain(|b| b != block);
        }
    }

    /// `peer` failed `block` (see [`Failure`]; for `NotFound` and `TooLarge` only if it was
    /// the peer asked): the next of `sources` (peers that have the block, in preference
    /// order) that has not failed it and has room is asked.
    pub fn on_failure(
        &mut self,
        block: BlockHash,
        peer: PeerId,
        why: Failure,
        sources: &[PeerId],
        now: Instant,
    ) -> Outcome {
        let mut out = Outcome::default();
        match why {
            // A copy that was processed left flight already (see `on_block`).
            Failure::Refused => {}
            _ if self.in_flight.peer_of(&block) == Some(peer) => {
                self.in_flight.received(&block);
            }
            // Not the peer asked: nothing of ours failed.
            _ => return out,
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
        let tries = self.record_failure(block, peer);
        if tries >= MAX_BLOCK_TRIES {
            out.given_up.push(block);
            return;
        }
        if let Some(next) = self.next_source(&block, sources) {
            if self.try_request(block, next, now) {
                out.requests.push(Request { peer: next, block });
            }
        }
    }

    /// Remembers that `peer` failed `block`; returns how many peers have.
    fn record_failure(&mut self, block: BlockHash, peer: PeerId) -> usize {
        if !self.failed.contains_key(&block) {
            while self.order.len() >= MAX_FAILED_BLOCKS {
                if let Some(old) = self.order.pop_front() {
                    self.failed.remove(&old);
                }
            }
            self.order.push_back(block);
        }
        let peers = self.failed.entry(block).or_default();
        if !peers.contains(&peer) {
            peers.push(peer);
        }
        peers.len()
    }

    /// The first of `sources` that may be asked for `block` and has room.
    fn next_source(&self, block: &BlockHash, sources: &[PeerId]) -> Option<PeerId> {
        sources.iter().copied().find(|p| {
            self.may_ask(block, *p) && self.in_flight.of_peer(*p) < MAX_BLOCKS_IN_FLIGHT_PER_PEER
        })
    }

    /// `peer` left: what it was asked for is asked of the next source of each (from
    /// `sources_of`), without counting as its failure.
    pub fn on_peer_gone(
        &mut self,
        peer: PeerId,
        sources_of: impl Fn(&BlockHash) -> Vec<PeerId>,
        now: Instant,
    ) -> Outcome {
        let mut out = Outcome::default();
        for block in self.in_flight.release_peer(peer) {
            let sources: Vec<PeerId> = sources_of(&block)
                .into_iter()
                .filter(|p| *p != peer)
                .collect();
            if let Some(next) = self.next_source(&block, &sources) {
                if self.try_request(block, next, now) {
                    out.requests.push(Request { peer: next, block });
                }
            }
        }
        out
    }

    /// Stalls and expiry: a request older than the stalling timeout moves to another source
    /// when one has room (the timeout then doubles, up to [`BLOCK_STALLING_TIMEOUT_MAX`]),
    /// and one older than [`BLOCK_DOWNLOAD_TIMEOUT`] is released whether or not another can
    /// be asked.
    pub fn on_tick(
        &mut self,
        now: Instant,
        sources_of: impl Fn(&BlockHash) -> Vec<PeerId>,
    ) -> Outcome {
        let mut out = Outcome::default();
        for (block, peer) in self.in_flight.expire(now, BLOCK_DOWNLOAD_TIMEOUT) {
            let sources = sources_of(&block);
            self.fail(block, peer, Failure::Expired, &sources, now, &mut out);
        }
        let mut stalled_any = false;
        for (block, peer) in self.in_flight.older_than(now, self.stalling_timeout) {
            let sources = sources_of(&block);
            let has_other = sources.iter().any(|p| {
                *p != peer
                    && self.may_ask(&block, *p)
                    && self.in_flight.of_peer(*p) < MAX_BLOCKS_IN_FLIGHT_PER_PEER
            });
            if !has_other {
                // Nobody else to ask: the slow peer keeps it (until the download timeout).
                continue;
            }
            self.in_flight.received(&block);
            self.fail(block, peer, Failure::Stalled, &sources, now, &mut out);
            stalled_any = true;
        }
        if stalled_any {
            self.stalling_timeout = (self.stalling_timeout * 2).min(BLOCK_STALLING_TIMEOUT_MAX);
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

    /// Requests outstanding to `peer`.
    pub fn in_flight_to(&self, peer: PeerId) -> usize {
        self.in_flight.of_peer(peer)
    }

    /// Requests outstanding in all.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
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
        assert!(!d.on_block(&block(1), B), "B was not asked");
        assert!(d.on_block(&block(1), A));
        assert!(!d.on_block(&block(1), A), "a second copy is unrequested");
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
    fn a_failed_copy_goes_to_the_next_source_and_never_back() {
        let t0 = Instant::now();
        let mut d = BlockDownload::default();
        d.fetch(&[block(1)], A, t0);
        let out = d.on_failure(block(1), A, Failure::TooLarge, &[A, B], t0);
        assert_eq!(
            out.requests,
            vec![Request {
                peer: B,
                block: block(1)
            }]
        );
        // B fails it too: A has failed it already, so nobody is asked (before: A, B, A, ...
        // each time a whole block's download).
        let out = d.on_failure(block(1), B, Failure::TooLarge, &[A, B], t0);
        assert!(out.requests.is_empty());
        assert!(d.fetch(&[block(1)], A, t0).is_empty());
        // A third peer may still be asked.
        assert_eq!(d.fetch(&[block(1)], C, t0), vec![block(1)]);
    }

    #[test]
    fn a_notfound_from_a_peer_not_asked_changes_nothing() {
        let t0 = Instant::now();
        let mut d = BlockDownload::default();
        d.fetch(&[block(1)], A, t0);
        let out = d.on_failure(block(1), B, Failure::NotFound, &[B, C], t0);
        assert_eq!(out, Outcome::default());
        assert_eq!(d.asked_of(&block(1)), Some(A));
    }

    #[test]
    fn a_block_is_given_up_after_max_tries() {
        let t0 = Instant::now();
        let mut d = BlockDownload::default();
        let peers: Vec<PeerId> = (0..20).map(PeerId).collect();
        d.fetch(&[block(1)], peers[0], t0);
        let mut asked = peers[0];
        for i in 0..MAX_BLOCK_TRIES {
            let out = d.on_failure(block(1), asked, Failure::NotFound, &peers, t0);
            if i + 1 == MAX_BLOCK_TRIES {
                assert_eq!(out.given_up, vec![block(1)]);
                assert!(out.requests.is_empty());
            } else {
                asked = out.requests[0].peer;
            }
        }
        assert!(d.fetch(&[block(1)], peers[19], t0).is_empty(), "given up");
    }

    #[test]
    fn stalling_moves_a_block_and_the_timeout_adapts() {
        let t0 = Instant::now();
        let mut d = BlockDownload::default();
        d.fetch(&[block(1)], A, t0);
        // Nobody else has it: A keeps it however slow.
        let out = d.on_tick(t0 + Duration::from_secs(5), |_| vec![A]);
        assert!(out.requests.is_empty());
        assert_eq!(d.stalling_timeout(), BLOCK_STALLING_TIMEOUT_DEFAULT);
        // B has it: moved, and the timeout doubles.
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
        assert!(
            !d.on_block(&block(1), A),
            "the staller's late copy is dropped"
        );
        assert!(d.on_block(&block(1), B));
        assert!(d.stalling_timeout() < BLOCK_STALLING_TIMEOUT_DEFAULT * 2);
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
        Block(u8, u64),
        Fail(u8, u64, u8),
        Gone(u64),
        Tick(u64),
        Accepted(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (proptest::collection::vec(0u8..24, 1..20), 0u64..6).prop_map(|(b, p)| Op::Fetch(b, p)),
            (0u8..24, 0u64..6).prop_map(|(b, p)| Op::Block(b, p)),
            (0u8..24, 0u64..6, 0u8..4).prop_map(|(b, p, w)| Op::Fail(b, p, w)),
            (0u64..6).prop_map(Op::Gone),
            (0u64..700).prop_map(Op::Tick),
            (0u8..24).prop_map(Op::Accepted),
        ]
    }

    proptest! {
        /// Under any sequence of events in virtual time: no peer above its cap, a block in
        /// flight to one peer only and never to a peer that failed it, the stalling timeout
        /// within its bounds, and the failure memory within its bounds.
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
                    Op::Block(b, p) => {
                        let asked = d.asked_of(&block(b));
                        let took = d.on_block(&block(b), PeerId(p));
                        prop_assert_eq!(took, asked == Some(PeerId(p)));
                        Outcome::default()
                    }
                    Op::Fail(b, p, w) => {
                        let why = [Failure::Refused, Failure::TooLarge, Failure::NotFound, Failure::Refused][w as usize];
                        d.on_failure(block(b), PeerId(p), why, &live, now)
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
                };
                for r in &out.requests {
                    prop_assert_eq!(d.asked_of(&r.block), Some(r.peer));
                    prop_assert!(!gone.contains(&r.peer), "a request to a peer that left");
                    prop_assert!(d.failed.get(&r.block).is_none_or(|f| !f.contains(&r.peer)),
                        "asked again of a peer that failed it");
                }
                for p in &all {
                    prop_assert!(d.in_flight_to(*p) <= MAX_BLOCKS_IN_FLIGHT_PER_PEER);
                }
                let st = d.stalling_timeout();
                prop_assert!((BLOCK_STALLING_TIMEOUT_DEFAULT..=BLOCK_STALLING_TIMEOUT_MAX).contains(&st));
                prop_assert!(d.failed.len() <= MAX_FAILED_BLOCKS);
                prop_assert_eq!(d.failed.len(), d.order.len());
                prop_assert!(d.failed.values().all(|f| f.len() <= MAX_BLOCK_TRIES));
            }
        }
    }
}
