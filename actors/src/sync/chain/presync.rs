//! Headers presync, after Bitcoin Core's `HeadersSyncState`: a chain a peer offers is not
//! stored until it has shown enough work, and checking that costs bounded memory per peer.
//!
//! 1. **Presync.** The peer's headers are checked as they arrive (linkage, proof of work, a
//!    permitted difficulty transition) and only their cumulative work, the last header and
//!    one salted bit per [`COMMITMENT_PERIOD`] headers are kept. A chain that ends before
//!    reaching the minimum work is dropped: nothing was stored.
//! 2. **Redownload.** Once the work is shown, the same headers are asked for again from the
//!    start. Each is checked again and against the stored bits (a peer that serves another
//!    chain the second time is caught within a period), held in a buffer of
//!    [`REDOWNLOAD_BUFFER`] headers, and released to the header chain (full validation, then
//!    the store) once enough bits after it matched, or once the redownloaded chain itself
//!    reached the minimum work.
//!
//! The commitment salt and offset are random per sync, so a peer cannot grind a chain whose
//! bits match. Memory per peer: one bit per period of the chain's length (bounded by the
//! number of headers the elapsed time permits) plus the buffer (about 1.2 MB at most).

use std::collections::VecDeque;
use std::hash::BuildHasher;

use bitcoin::block::Header;
use bitcoin::pow::Target;
use bitcoin::BlockHash;

use crate::network::DifficultyRule;

/// Headers per commitment bit (Core: 624 for mainnet).
pub const COMMITMENT_PERIOD: u32 = 624;

/// Headers held in redownload before the oldest is released (Core: 14,308): about 23
/// commitment bits must match after a header before it is stored, so a peer that switches
/// chains between the phases gets at most a one-in-eight-million chance.
pub const REDOWNLOAD_BUFFER: usize = 14_308;

/// Headers per `headers` message; a shorter one ends the peer's chain.
const FULL_BATCH: usize = crate::constants::MAX_HEADERS_PER_MESSAGE;

/// Blocks the median-time-past rule lets a chain add per second of clock (Core's bound for
/// the commitments a chain may need).
const MAX_BLOCKS_PER_SECOND: u64 = 6;

/// Why presync gave up on a peer's chain. None of these stored anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresyncError {
    /// The chain ended before showing the minimum work.
    #[error("the chain ended with too little work")]
    LowWork,
    /// A header did not follow the previous one.
    #[error("headers do not connect")]
    NotContinuous,
    /// Proof of work not met, or a target above the network's limit.
    #[error("invalid proof of work")]
    BadProofOfWork,
    /// A difficulty change the network's rule does not permit.
    #[error("difficulty transition not permitted")]
    BadDifficulty,
    /// More headers than the elapsed time permits.
    #[error("more headers than time permits")]
    TooLong,
    /// Redownloaded headers did not match the first download.
    #[error("redownloaded chain differs from the presynced one")]
    CommitmentMismatch,
}

impl PresyncError {
    /// A stable name for metrics and misbehaviour costs.
    pub fn kind(&self) -> &'static str {
        match self {
            PresyncError::LowWork => "presync_low_work",
            PresyncError::NotContinuous => "presync_not_continuous",
            PresyncError::BadProofOfWork => "header_bad_pow",
            PresyncError::BadDifficulty => "header_bad_difficulty",
            PresyncError::TooLong => "presync_too_long",
            PresyncError::CommitmentMismatch => "presync_commitment_mismatch",
        }
    }
}

/// What to do after a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum PresyncStep {
    /// Ask the peer for headers after this locator.
    Request(Vec<BlockHash>),
    /// Store these headers (they passed presync); then ask after `next`, or, when `next`
    /// is `None`, presync is over and ordinary sync goes on.
    Release {
        /// Headers for the header chain, in order.
        headers: Vec<Header>,
        /// Locator for the next request.
        next: Option<Vec<BlockHash>>,
    },
    /// Give up on this peer's chain.
    Abort(PresyncError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Presync,
    Redownload,
}

/// The state of one peer's presync. See the module documentation.
#[derive(Debug)]
pub struct HeadersPresync {
    phase: Phase,
    rule: DifficultyRule,
    pow_limit: Target,
    min_work: u128,
    salt: std::collections::hash_map::RandomState,
    offset: u32,
    start: Header,
    start_height: u32,
    start_work: u128,
    max_commitments: u64,
    commitments: VecDeque<bool>,
    last: Header,
    last_height: u32,
    work: u128,
    buffer: VecDeque<Header>,
    reached: bool,
}

fn work_of(h: &Header) -> u128 {
    let b = h.work().to_be_bytes();
    if b[..16].iter().any(|&x| x != 0) {
        return u128::MAX;
    }
    let mut lo = [0u8; 16];
    lo.copy_from_slice(&b[16..]);
    u128::from_be_bytes(lo)
}

impl HeadersPresync {
    /// Presync of a chain forking from our header `start` (at `start_height`, cumulative work
    /// `start_work`), which must show `min_work` in total. `now` is our clock.
    pub fn new(
        rule: DifficultyRule,
        pow_limit: Target,
        min_work: u128,
        start: Header,
        start_height: u32,
        start_work: u128,
        now: u32,
    ) -> HeadersPresync {
        let seconds = u64::from(now.saturating_add(2 * 60 * 60).saturating_sub(start.time));
        let salt = std::collections::hash_map::RandomState::new();
        let offset = (salt.hash_one(0xc0ffee_u32) % u64::from(COMMITMENT_PERIOD)) as u32;
        HeadersPresync {
            phase: Phase::Presync,
            rule,
            pow_limit,
            min_work,
            salt,
            offset,
            start,
            start_height,
            start_work,
            max_commitments: seconds * MAX_BLOCKS_PER_SECOND / u64::from(COMMITMENT_PERIOD) + 1,
            commitments: VecDeque::new(),
            last: start,
            last_height: start_height,
            work: start_work,
            buffer: VecDeque::new(),
            reached: false,
        }
    }

    /// Whether `first` follows the last header this presync took (the batch is its next).
    pub fn continues(&self, first: &Header) -> bool {
        first.prev_blockhash == self.last.block_hash()
    }

    /// Whether the first download is over (the chain showed its work).
    pub fn is_redownloading(&self) -> bool {
        self.phase == Phase::Redownload
    }

    /// Cumulative work shown so far in the current phase.
    pub fn work(&self) -> u128 {
        self.work
    }

    /// Height reached in the current phase.
    pub fn height(&self) -> u32 {
        self.last_height
    }

    /// Bytes held now (commitments and buffer).
    pub fn memory(&self) -> usize {
        self.commitments.len() + self.buffer.len() * std::mem::size_of::<Header>()
    }

    fn bit(&self, hash: &BlockHash) -> bool {
        self.salt.hash_one(hash) & 1 == 1
    }

    fn check_next(&self, h: &Header) -> Result<(), PresyncError> {
        if h.prev_blockhash != self.last.block_hash() {
            return Err(PresyncError::NotContinuous);
        }
        let target = h.target();
        if target > self.pow_limit || !target.is_met_by(h.block_hash()) {
            return Err(PresyncError::BadProofOfWork);
        }
        let height = self.last_height + 1;
        let permitted = match self.rule {
            DifficultyRule::Regtest => h.bits == self.last.bits,
            DifficultyRule::BtcMainnet | DifficultyRule::BtcSignet => {
                if !height.is_multiple_of(2016) {
                    h.bits == self.last.bits
                } else {
                    // At most a factor of four either way (Core's PermittedDifficultyTransition).
                    let old = self.last.target();
                    let (lo, hi) = (
                        old.min_transition_threshold(),
                        old.max_transition_threshold_unchecked(),
                    );
                    target >= lo && target <= hi
                }
            }
            // Minimum-difficulty exceptions and BSV's per-block DAA: anything within the limit.
            DifficultyRule::BtcTestnet3 | DifficultyRule::BtcTestnet4 | DifficultyRule::BsvDaa => {
                true
            }
        };
        if !permitted {
            return Err(PresyncError::BadDifficulty);
        }
        Ok(())
    }

    /// Checks `h` against the last header and takes it as the new last; true when its
    /// height carries a commitment bit.
    fn advance(&mut self, h: &Header) -> Result<bool, PresyncError> {
        self.check_next(h)?;
        self.last = *h;
        self.last_height += 1;
        self.work = self.work.saturating_add(work_of(h));
        Ok(self.last_height % COMMITMENT_PERIOD == self.offset)
    }

    /// Feeds one `headers` message from the peer.
    pub fn on_headers(&mut self, headers: &[Header]) -> PresyncStep {
        let full = headers.len() >= FULL_BATCH;
        match self.phase {
            Phase::Presync => {
                for h in headers {
                    let at_commitment = match self.advance(h) {
                        Ok(at) => at,
                        Err(e) => return PresyncStep::Abort(e),
                    };
                    if at_commitment {
                        if self.commitments.len() as u64 >= self.max_commitments {
                            return PresyncStep::Abort(PresyncError::TooLong);
                        }
                        let bit = self.bit(&h.block_hash());
                        self.commitments.push_back(bit);
                    }
                    if self.work >= self.min_work {
                        // Enough work shown: download it again from the start, for real.
                        self.phase = Phase::Redownload;
                        self.last = self.start;
                        self.last_height = self.start_height;
                        self.work = self.start_work;
                        return PresyncStep::Request(vec![self.start.block_hash()]);
                    }
                }
                if !full {
                    return PresyncStep::Abort(PresyncError::LowWork);
                }
                PresyncStep::Request(vec![self.last.block_hash()])
            }
            Phase::Redownload => {
                for h in headers {
                    let at_commitment = match self.advance(h) {
                        Ok(at) => at,
                        Err(e) => return PresyncStep::Abort(e),
                    };
                    if !self.reached && at_commitment {
                        match self.commitments.pop_front() {
                            Some(bit) if bit == self.bit(&h.block_hash()) => {}
                            _ => return PresyncStep::Abort(PresyncError::CommitmentMismatch),
                        }
                    }
                    self.buffer.push_back(*h);
                    if self.work >= self.min_work {
                        self.reached = true;
                    }
                }
                let release = if self.reached {
                    self.buffer.len()
                } else {
                    self.buffer.len().saturating_sub(REDOWNLOAD_BUFFER)
                };
                let released: Vec<Header> = self.buffer.drain(..release).collect();
                if self.reached && self.buffer.is_empty() {
                    return PresyncStep::Release {
                        headers: released,
                        next: None,
                    };
                }
                if !full {
                    return PresyncStep::Abort(PresyncError::LowWork);
                }
                PresyncStep::Release {
                    headers: released,
                    next: Some(vec![self.last.block_hash()]),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkId;
    use crate::sync::chain::headers::mine_header;
    use bitcoin::hashes::Hash;
    use bitcoin::TxMerkleNode;

    fn chain_from(start: Header, n: usize, salt: u8) -> Vec<Header> {
        let mut out = Vec::with_capacity(n);
        let mut prev = start;
        for i in 0..n {
            let h = mine_header(
                &prev,
                TxMerkleNode::from_byte_array([salt; 32]),
                prev.time + 1 + (i % 2) as u32,
                prev.bits,
            );
            out.push(h);
            prev = h;
        }
        out
    }

    fn presync(min_blocks: u128) -> (HeadersPresync, Header) {
        let p = NetworkId::Regtest.profile();
        let g = p.genesis;
        let per = work_of(&g);
        let limit =
            bitcoin::consensus::Params::new(bitcoin::Network::Regtest).max_attainable_target;
        let s = HeadersPresync::new(
            DifficultyRule::Regtest,
            limit,
            per * (min_blocks + 1),
            g,
            0,
            per,
            g.time + 10_000_000,
        );
        (s, g)
    }

    /// Feeds `chain` as full batches the way a peer answers `getheaders`.
    fn serve(s: &mut HeadersPresync, chain: &[Header]) -> (Vec<Header>, Option<PresyncError>) {
        let mut stored = Vec::new();
        let mut from = 0usize;
        for _ in 0..10_000 {
            let batch = &chain[from..(from + FULL_BATCH).min(chain.len())];
            match s.on_headers(batch) {
                PresyncStep::Request(loc) => {
                    from = chain
                        .iter()
                        .position(|h| h.block_hash() == loc[0])
                        .map_or(0, |i| i + 1);
                }
                PresyncStep::Release { headers, next } => {
                    stored.extend(headers);
                    match next {
                        None => return (stored, None),
                        Some(loc) => {
                            from = chain.iter().position(|h| h.block_hash() == loc[0]).unwrap() + 1;
                        }
                    }
                }
                PresyncStep::Abort(e) => return (stored, Some(e)),
            }
        }
        panic!("did not finish");
    }

    #[test]
    fn a_chain_with_enough_work_is_released_whole_after_the_redownload() {
        let (mut s, g) = presync(5_000);
        let chain = chain_from(g, 6_500, 1);
        let (stored, err) = serve(&mut s, &chain);
        assert_eq!(err, None);
        // Everything up to (at least) the header that reached the work, in order.
        assert!(stored.len() >= 5_000, "{}", stored.len());
        assert_eq!(stored[..], chain[..stored.len()]);
    }

    #[test]
    fn a_low_work_chain_stores_nothing() {
        let (mut s, g) = presync(5_000);
        let chain = chain_from(g, 4_500, 2);
        let (stored, err) = serve(&mut s, &chain);
        assert_eq!(err, Some(PresyncError::LowWork));
        assert!(stored.is_empty());
        assert!(s.memory() < 64, "{} bytes held", s.memory());
    }

    #[test]
    fn a_peer_that_switches_chains_for_the_redownload_is_caught() {
        let (mut s, g) = presync(40_000);
        let honest = chain_from(g, 40_001, 3);
        // Presync on the honest chain (enough work)...
        let mut from = 0;
        loop {
            let batch = &honest[from..(from + FULL_BATCH).min(honest.len())];
            match s.on_headers(batch) {
                PresyncStep::Request(loc) if loc[0] == g.block_hash() => break,
                PresyncStep::Request(_) => from += FULL_BATCH,
                other => panic!("{other:?}"),
            }
        }
        // ...then a different chain of the same length the second time.
        let other = chain_from(g, 40_001, 4);
        let (stored, err) = serve(&mut s, &other);
        assert_eq!(err, Some(PresyncError::CommitmentMismatch));
        assert!(stored.len() <= 2 * FULL_BATCH, "{} stored", stored.len());
    }

    #[test]
    fn broken_links_and_difficulty_are_refused() {
        let (mut s, g) = presync(5_000);
        let mut chain = chain_from(g, 10, 5);
        chain[3].prev_blockhash = BlockHash::all_zeros();
        assert_eq!(
            s.on_headers(&chain),
            PresyncStep::Abort(PresyncError::NotContinuous)
        );
        let (mut s, g) = presync(5_000);
        // Harder than its parent on regtest, where difficulty never changes.
        let harder = bitcoin::CompactTarget::from_consensus(0x2000ffff);
        let bad = mine_header(&g, TxMerkleNode::all_zeros(), g.time + 1, harder);
        assert_eq!(
            s.on_headers(&[bad]),
            PresyncStep::Abort(PresyncError::BadDifficulty)
        );
    }
}
