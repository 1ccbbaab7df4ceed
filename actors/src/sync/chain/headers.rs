//! The header chain as a sans-IO core: a tree of headers from the network's genesis, the
//! best chain by cumulative work, and every check a header must pass before it is stored.
//!
//! Checks, in order: it links to a known header; its proof of work meets the target its
//! nBits encodes, and that target is within the network's limit; its nBits is what the
//! network's difficulty rule demands; its time is above the median of the previous eleven
//! and at most two hours ahead of ours; it matches the checkpoint at its height, if any.
//!
//! Difficulty rules implemented: BTC mainnet and signet (2016-block retarget, clamped to a
//! factor of four); testnet3 (the same, plus the 20-minute minimum-difficulty exception);
//! testnet4 (BIP94: the exception, the retarget computed from the period's first block, and
//! the time-warp limit on the first block of a period); regtest (no retargeting). **BSV**
//! ([`super::bsv_pow`]): the 144-block DAA from the BSV node's activation heights (mainnet
//! 504,031, testnet 1,188,697, STN 2,200), before it the 2016-block retarget with the EDA,
//! and testnet's 20-minute minimum-difficulty rule; BSV regtest does not retarget. Signet's
//! block signatures are not checked (headers do not carry them).
//!
//! # Security
//! A peer must not make us store low-work forks without bound, nor switch off reorgs with
//! them: headers that do not extend the best chain are "stale", and at most
//! [`MAX_STALE_HEADERS`] are kept. When a new fork header finds them full, the stale headers
//! with the least work are evicted (the highest-work half is kept, with the ancestors it
//! needs), so cheap one-header forks can never crowd out a branch that gathers more work.
//! Forks below the last checkpoint we hold are refused (Core: `bad-fork-prior-to-checkpoint`). Memory per header is
//! kept near 120 bytes: the header without its previous-hash (implied by the parent index),
//! the parent index, the height and the cumulative work as a 128-bit integer.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bitcoin::block::{Header, Version};
use bitcoin::hashes::Hash;
use bitcoin::pow::{CompactTarget, Target};
use bitcoin::{BlockHash, Network, TxMerkleNode};

use super::bsv_pow;
use super::index::{HashIndex, MAX_ENTRIES};
use crate::network::{DifficultyRule, NetworkId, Profile};

/// Headers not on the best chain kept at most.
///
/// # Security
/// Bounds the memory a peer can make us spend on forks that do not win, where forks are cheap
/// (regtest, the testnets' minimum-difficulty rule; elsewhere the minimum chain work and
/// checkpoints already price them): 5,000 headers with their index entries come to about
/// 1 MB, and are more than any honest reorganisation needs. When full, the half with the
/// least work goes.
pub const MAX_STALE_HEADERS: usize = 5_000;

/// Best-chain heights between two recorded cumulative works (see `HeaderChain::work_marks`).
///
/// # Security
/// Bounds the cost of the work up to any known header, which a peer can ask for with every
/// headers message (a fork from deep in the chain, a duplicate of an old header): at most 63
/// headers' own work, each one cached nBits lookup, against 16 bytes per 64 headers of memory.
const WORK_MARK_INTERVAL: u32 = 64;

/// How far ahead of our clock a header's time may be (Core's `MAX_FUTURE_BLOCK_TIME`).
pub const MAX_FUTURE_BLOCK_TIME: u32 = 2 * 60 * 60;

/// Blocks in a difficulty period (BTC).
const RETARGET_INTERVAL: u32 = 2016;

/// Testnet: a block this much later than its parent may be at minimum difficulty.
const MIN_DIFFICULTY_GAP: u32 = 20 * 60;

/// BIP94: the first block of a period may be at most this much older than its parent.
const MAX_TIMEWARP: u32 = 600;

/// Mainnet checkpoints (Bitcoin Core's list).
const MAINNET_CHECKPOINTS: &[(u32, &str)] = &[
    (
        11111,
        "0000000069e244f73d78e8fd29ba2fd2ed618bd6fa2ee92559f542fdb26e7c1d",
    ),
    (
        33333,
        "000000002dd5588a74784eaa7ab0507a18ad16a236e7b1ce69f00d7ddfb5d0a6",
    ),
    (
        74000,
        "0000000000573993a3c9e41ce34471c079dcf5f52a0e824a81e7f953b8661a20",
    ),
    (
        105000,
        "00000000000291ce28027faea320c8d2b054b2e0fe44a773f3eefb151d6bdc97",
    ),
    (
        134444,
        "00000000000005b12ffd4cd315cd34ffd4a594f430ac814c91184a0d42d2b0fe",
    ),
    (
        168000,
        "000000000000099e61ea72015e79632f216fe6cb33d7899acb35b75c8303b763",
    ),
    (
        193000,
        "000000000000059f452a5f7340de6682a977387c17010ff6e6c3bd83ca8b1317",
    ),
    (
        210000,
        "000000000000048b95347e83192f69cf0366076336c639f9b7228e9ba171342e",
    ),
    (
        216116,
        "00000000000001b4f4b433e81ee46494af945cf96014816a4e2370f11b23df4e",
    ),
];

/// One stored header: its 80 wire bytes and its height (84 bytes). Its hash, parent and
/// work are computed from the bytes when needed; cumulative work is kept for the best tip and
/// for stale headers only (see [`HeaderChain::work_of`]).
#[derive(Debug, Clone, Copy)]
struct Entry {
    raw: [u8; 80],
    /// [`VACANT`] for the slot of an evicted header.
    height: u32,
}

/// The 80 bytes of a header, encoded without allocating.
pub fn header_bytes(h: &Header) -> [u8; 80] {
    let mut raw = [0u8; 80];
    let mut w: &mut [u8] = &mut raw;
    // Exactly 80 bytes into an 80-byte buffer: cannot fail.
    let _ = bitcoin::consensus::Encodable::consensus_encode(h, &mut w);
    raw
}

/// The chain's maps are looked up for every header: foldhash (randomly seeded per map, so
/// still no fixed collisions to aim at) instead of SipHash, which cost more than the lookups.
type FastHash = foldhash::fast::RandomState;

/// What is kept of a header off the best chain: its cumulative work. (Its hash is computed
/// when needed: stale headers are rarely looked up, and 5,000 hashes kept would cost as much
/// as the headers.)
#[derive(Debug, Clone, Copy)]
struct Stale {
    work: u128,
}

/// The height of a slot whose stale header was evicted (no header is this high).
const VACANT: u32 = u32::MAX;

impl Entry {
    fn own_work(&self) -> u128 {
        work_of_bits(self.bits())
    }
    fn header(&self) -> Header {
        // The bytes were produced by encoding a Header: decoding them cannot fail.
        bitcoin::consensus::deserialize(&self.raw).unwrap_or_else(|_| unreachable_header())
    }
    fn hash(&self) -> BlockHash {
        BlockHash::from_raw_hash(bitcoin::hashes::sha256d::Hash::hash(&self.raw))
    }
    fn prev(&self) -> BlockHash {
        let mut b = [0u8; 32];
        b.copy_from_slice(&self.raw[4..36]);
        BlockHash::from_byte_array(b)
    }
    fn time(&self) -> u32 {
        u32::from_le_bytes([self.raw[68], self.raw[69], self.raw[70], self.raw[71]])
    }
    fn bits(&self) -> u32 {
        u32::from_le_bytes([self.raw[72], self.raw[73], self.raw[74], self.raw[75]])
    }
}

fn unreachable_header() -> Header {
    Header {
        version: Version::ONE,
        prev_blockhash: BlockHash::all_zeros(),
        merkle_root: TxMerkleNode::all_zeros(),
        time: 0,
        bits: CompactTarget::from_consensus(0),
        nonce: 0,
    }
}

/// The hash of stored header `idx`: on the best chain without hashing (the tip's is kept,
/// every other one's is its child's `prev_blockhash`); off it, rare, hashed here.
fn entry_hash(entries: &[Entry], best: &[u32], tip_hash: BlockHash, idx: u32) -> BlockHash {
    let height = entries[idx as usize].height as usize;
    if best.get(height) == Some(&idx) {
        return match best.get(height + 1) {
            Some(child) => entries[*child as usize].prev(),
            None => tip_hash,
        };
    }
    entries[idx as usize].hash()
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    /// Its parent is unknown.
    #[error("does not connect: parent {0} unknown")]
    NotConnecting(BlockHash),
    /// The hash does not meet the target.
    #[error("proof of work does not meet its target")]
    BadProofOfWork,
    /// The target is easier than the network allows.
    #[error("target above the network's limit")]
    TargetAboveLimit,
    /// nBits is not what the difficulty rule demands.
    #[error("nBits {got:#010x}, the difficulty rule demands {want:#010x}")]
    BadDifficulty {
        /// nBits in the header.
        got: u32,
        /// nBits required.
        want: u32,
    },
    /// Time not above the median of the previous eleven.
    #[error("time {time} not above median time past {mtp}")]
    TimeTooOld {
        /// Header time.
        time: u32,
        /// Median time past.
        mtp: u32,
    },
    /// Time too far in the future.
    #[error("time {time} more than two hours ahead of {now}")]
    TimeTooNew {
        /// Header time.
        time: u32,
        /// Our clock.
        now: u32,
    },
    /// BIP94 time-warp rule.
    #[error("first block of a period {time} earlier than parent {parent} minus 600 s")]
    TimeWarp {
        /// Header time.
        time: u32,
        /// Parent time.
        parent: u32,
    },
    /// Conflicts with a checkpoint.
    #[error("conflicts with the checkpoint at height {0}")]
    Checkpoint(u32),
    /// Would add to the stale headers past their cap.
    #[error("too many headers off the best chain")]
    TooManyStale,
    /// The chain holds [`MAX_ENTRIES`] headers already.
    #[error("the header chain is full")]
    ChainFull,
    /// A fork below the last checkpoint we hold.
    #[error("fork at height {0}, below the last checkpoint")]
    ForkBeforeCheckpoint(u32),
    /// A header of a batch does not follow the one before it (Core: `non-continuous headers
    /// sequence`).
    #[error("header {0} of the batch does not follow the one before it")]
    NotContinuous(usize),
}

impl AcceptError {
    /// A stable name for metrics and misbehaviour costs.
    pub fn kind(&self) -> &'static str {
        match self {
            AcceptError::NotConnecting(_) => "header_not_connecting",
            AcceptError::BadProofOfWork => "header_bad_pow",
            AcceptError::TargetAboveLimit => "header_bad_pow",
            AcceptError::BadDifficulty { .. } => "header_bad_difficulty",
            AcceptError::TimeTooOld { .. } => "header_bad_time",
            AcceptError::TimeTooNew { .. } => "header_time_too_new",
            AcceptError::TimeWarp { .. } => "header_bad_time",
            AcceptError::Checkpoint(_) => "header_checkpoint",
            AcceptError::TooManyStale => "header_too_many_stale",
            AcceptError::ChainFull => "header_chain_full",
            AcceptError::ForkBeforeCheckpoint(_) => "header_checkpoint",
            AcceptError::NotContinuous(_) => "header_not_continuous",
        }
    }
}

/// What accepting a header did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Already known.
    Duplicate,
    /// Stored; the best tip did not change.
    Stored,
    /// Stored, and it is the new best tip (extending the best chain).
    NewTip,
    /// Stored, and the best chain switched to its branch (a reorganisation); `depth` blocks
    /// of the old best chain left it.
    Reorg {
        /// Blocks disconnected from the old best chain.
        depth: u32,
    },
}

/// The header tree. See the module documentation.
#[derive(Debug)]
pub struct HeaderChain {
    rule: DifficultyRule,
    params: bitcoin::consensus::Params,
    pow_limit: Target,
    checkpoints: Vec<(u32, BlockHash)>,
    entries: Vec<Entry>,
    /// Hash → entry, without keys (see [`HashIndex`]).
    index: HashIndex,
    /// Best chain: `best[h]` is the index of the header at height `h`.
    best: Vec<u32>,
    /// Cumulative work of the best tip.
    tip_work: u128,
    /// `work_marks[k]`: cumulative work of the best chain at height `k *`
    /// [`WORK_MARK_INTERVAL`], so the work up to any best-chain header is a mark plus fewer
    /// than that many headers' own work (O(1) whatever the chain's length).
    work_marks: Vec<u128>,
    /// Cumulative work and hash of each header off the best chain (bounded by
    /// [`MAX_STALE_HEADERS`]).
    stale: HashMap<u32, Stale, FastHash>,
    /// Hash of the best tip. Every other best-chain hash is its child's `prev_blockhash`, so
    /// no lookup on the best chain hashes a header again.
    tip_hash: BlockHash,
    /// Slots of evicted stale headers, reused before `entries` grows.
    vacant: Vec<u32>,
    /// BSV: the height from which the DAA applies (the BSV node's `daaHeight`).
    bsv_daa_height: u32,
    /// BSV testnet: a block 20 minutes after its parent may be at the limit.
    min_difficulty_blocks: bool,
}

thread_local! {
    /// The last nBits whose work was computed, and that work: consecutive headers nearly
    /// always share their nBits, and the work is a 256-bit division.
    static LAST_WORK: std::cell::Cell<(u32, u128)> = const { std::cell::Cell::new((0, 0)) };
}

/// The work a header with these nBits proves (as `Header::work`, saturating at `u128::MAX`).
fn work_of_bits(bits: u32) -> u128 {
    LAST_WORK.with(|last| {
        let (cached_bits, work) = last.get();
        if cached_bits == bits && bits != 0 {
            return work;
        }
        let work = to_u128(Target::from_compact(CompactTarget::from_consensus(bits)).to_work());
        last.set((bits, work));
        work
    })
}

fn to_u128(work: bitcoin::pow::Work) -> u128 {
    let b = work.to_be_bytes();
    if b[..16].iter().any(|&x| x != 0) {
        return u128::MAX;
    }
    let mut lo = [0u8; 16];
    lo.copy_from_slice(&b[16..]);
    u128::from_be_bytes(lo)
}

impl HeaderChain {
    /// A chain holding only the genesis header of `profile`.
    pub fn new(profile: &Profile) -> HeaderChain {
        let network = match profile.id {
            NetworkId::Mainnet | NetworkId::BsvMainnet => Network::Bitcoin,
            NetworkId::Testnet3 | NetworkId::BsvTestnet | NetworkId::BsvStn => Network::Testnet,
            NetworkId::Testnet4 => Network::Testnet4,
            NetworkId::Signet => Network::Signet,
            NetworkId::Regtest | NetworkId::BsvRegtest => Network::Regtest,
        };
        let params = bitcoin::consensus::Params::new(network);
        let checkpoints = if profile.id == NetworkId::Mainnet {
            MAINNET_CHECKPOINTS
                .iter()
                .filter_map(|(h, s)| s.parse::<BlockHash>().ok().map(|hash| (*h, hash)))
                .collect()
        } else {
            Vec::new()
        };
        let g = profile.genesis;
        let mut chain = HeaderChain {
            rule: profile.difficulty,
            pow_limit: params.max_attainable_target,
            params,
            checkpoints,
            entries: Vec::new(),
            index: HashIndex::default(),
            best: Vec::new(),
            tip_work: to_u128(g.work()),
            work_marks: vec![to_u128(g.work())],
            stale: HashMap::default(),
            tip_hash: g.block_hash(),
            vacant: Vec::new(),
            // The BSV node's chain parameters.
            bsv_daa_height: match profile.id {
                NetworkId::BsvMainnet => 504_031,
                NetworkId::BsvTestnet => 1_188_697,
                NetworkId::BsvStn => 2_200,
                _ => 0,
            },
            min_difficulty_blocks: profile.id == NetworkId::BsvTestnet,
        };
        chain.push(&g, g.block_hash(), 0);
        chain.best.push(0);
        chain
    }

    fn push(&mut self, h: &Header, hash: BlockHash, height: u32) -> u32 {
        if self.index.needs_growth() {
            self.grow_index();
        }
        let raw = header_bytes(h);
        let idx = if let Some(idx) = self.vacant.pop() {
            self.entries[idx as usize] = Entry { raw, height };
            idx
        } else {
            if self.entries.len() == self.entries.capacity() {
                // Grow in steps of one headers message, not by doubling: memory follows the
                // chain.
                self.entries.reserve_exact(2000);
            }
            self.entries.push(Entry { raw, height });
            (self.entries.len() - 1) as u32
        };
        self.index.insert(&hash, idx);
        idx
    }

    /// Doubles the index, reading every stored header's hash in entry order (on the best
    /// chain from its child, so mostly sequential reads and no hashing).
    fn grow_index(&mut self) {
        let (entries, best, tip_hash) = (&self.entries, &self.best, self.tip_hash);
        self.index.rebuild(
            (0..entries.len() as u32)
                .filter(|i| entries[*i as usize].height != VACANT)
                .map(|i| (i, entry_hash(entries, best, tip_hash, i))),
        );
    }

    fn lookup(&self, hash: &BlockHash) -> Option<u32> {
        self.index.find(hash, |i| self.hash_of(i))
    }

    /// Cumulative work up to `idx`: the nearest work mark at or below it on the best chain
    /// plus the headers between (O(1) at any height), or the recorded work of a stale header.
    fn work_of(&self, idx: u32) -> u128 {
        if let Some(st) = self.stale.get(&idx) {
            return st.work;
        }
        self.best_work_at(self.entries[idx as usize].height)
    }

    /// Cumulative work of the best chain at `height` (at most the tip's height).
    fn best_work_at(&self, height: u32) -> u128 {
        let k = (height / WORK_MARK_INTERVAL) as usize;
        let Some(&mark) = self.work_marks.get(k) else {
            return self.tip_work;
        };
        let from = k * WORK_MARK_INTERVAL as usize + 1;
        self.best[from..=height as usize]
            .iter()
            .map(|i| self.entries[*i as usize].own_work())
            .fold(mark, u128::saturating_add)
    }

    /// Records the work marks the best chain has reached (after it grew or was rebuilt above
    /// the last mark kept).
    fn extend_work_marks(&mut self) {
        while let Some(&last) = self.work_marks.last() {
            let next = self.work_marks.len() as u32 * WORK_MARK_INTERVAL;
            if next > self.height() {
                break;
            }
            let from = (next - WORK_MARK_INTERVAL + 1) as usize;
            let work = self.best[from..=next as usize]
                .iter()
                .map(|i| self.entries[*i as usize].own_work())
                .fold(last, u128::saturating_add);
            self.work_marks.push(work);
        }
    }

    fn parent_of(&self, idx: u32) -> Option<u32> {
        if idx == 0 {
            return None;
        }
        let height = self.entries[idx as usize].height as usize;
        if height > 0 && self.best.get(height) == Some(&idx) {
            return Some(self.best[height - 1]);
        }
        self.lookup(&self.entries[idx as usize].prev())
    }

    /// The hash of a stored header (see [`entry_hash`]).
    fn hash_of(&self, idx: u32) -> BlockHash {
        entry_hash(&self.entries, &self.best, self.tip_hash, idx)
    }

    fn header_at(&self, idx: u32) -> Header {
        self.entries[idx as usize].header()
    }

    fn ancestor(&self, mut idx: u32, height: u32) -> u32 {
        // On the best chain this is an index lookup; off it, walk back to the best chain.
        loop {
            let e = &self.entries[idx as usize];
            if e.height == height {
                return idx;
            }
            if self.best.get(e.height as usize) == Some(&idx) {
                return self.best[height as usize];
            }
            match self.parent_of(idx) {
                Some(p) => idx = p,
                None => return 0,
            }
        }
    }

    fn median_time_past(&self, mut idx: u32) -> u32 {
        let mut times = [0u32; 11];
        let mut n = 0;
        while n < 11 {
            times[n] = self.entries[idx as usize].time();
            n += 1;
            match self.parent_of(idx) {
                Some(p) => idx = p,
                None => break,
            }
        }
        let times = &mut times[..n];
        times.sort_unstable();
        times[n / 2]
    }

    /// The BSV node's rule for the block after `parent` with time `time`: the DAA from its
    /// activation height, the legacy retarget with the EDA before it (see [`bsv_pow`]).
    fn bsv_required_bits(&self, parent: u32, time: u32) -> u32 {
        let p = self.entries[parent as usize];
        let (p_time, p_bits) = (p.time(), p.bits());
        let height = p.height + 1;
        let limit_bits = self.pow_limit_bits();
        let info = |idx: u32| bsv_pow::BlockInfo {
            time: self.entries[idx as usize].time(),
            chain_work: self.work_of(idx),
        };
        let suitable = |idx: u32| {
            let prev = self.parent_of(idx).unwrap_or(idx);
            let prev2 = self.parent_of(prev).unwrap_or(prev);
            bsv_pow::suitable([info(prev2), info(prev), info(idx)])
        };
        if p.height >= self.bsv_daa_height && p.height >= RETARGET_INTERVAL {
            if self.min_difficulty_blocks && time > p_time.saturating_add(MIN_DIFFICULTY_GAP) {
                return limit_bits;
            }
            let first = self.ancestor(parent, p.height - bsv_pow::DAA_WINDOW);
            return bsv_pow::cash_next_bits(suitable(first), suitable(parent), self.pow_limit);
        }
        if height.is_multiple_of(RETARGET_INTERVAL) {
            let first = self.ancestor(parent, height - RETARGET_INTERVAL);
            let timespan = p_time.saturating_sub(self.entries[first as usize].time()) as u64;
            return CompactTarget::from_next_work_required(
                CompactTarget::from_consensus(p_bits),
                timespan,
                &self.params,
            )
            .to_consensus();
        }
        if self.min_difficulty_blocks {
            if time > p_time.saturating_add(MIN_DIFFICULTY_GAP) {
                return limit_bits;
            }
            let mut idx = parent;
            loop {
                let e = &self.entries[idx as usize];
                match self.parent_of(idx) {
                    Some(up)
                        if !e.height.is_multiple_of(RETARGET_INTERVAL)
                            && e.bits() == limit_bits =>
                    {
                        idx = up
                    }
                    _ => return e.bits(),
                }
            }
        }
        if height < 7 {
            return p_bits;
        }
        let six_back = self.ancestor(parent, height - 7);
        bsv_pow::eda_next_bits(
            p_bits,
            self.median_time_past(parent),
            self.median_time_past(six_back),
            self.pow_limit,
        )
    }

    fn pow_limit_bits(&self) -> u32 {
        self.pow_limit.to_compact_lossy().to_consensus()
    }

    /// nBits the difficulty rule demands for a child of `parent` with time `time`; `None`
    /// where the rule is not checked (BSV).
    fn required_bits(&self, parent: u32, time: u32) -> Option<u32> {
        let p = self.entries[parent as usize];
        let (p_time, p_bits) = (p.time(), p.bits());
        let height = p.height + 1;
        let testnet_exception = matches!(
            self.rule,
            DifficultyRule::BtcTestnet3 | DifficultyRule::BtcTestnet4
        );
        match self.rule {
            DifficultyRule::Regtest => Some(p_bits),
            DifficultyRule::BsvDaa => Some(self.bsv_required_bits(parent, time)),
            DifficultyRule::BtcMainnet
            | DifficultyRule::BtcSignet
            | DifficultyRule::BtcTestnet3
            | DifficultyRule::BtcTestnet4 => {
                if !height.is_multiple_of(RETARGET_INTERVAL) {
                    if testnet_exception {
                        if time > p_time.saturating_add(MIN_DIFFICULTY_GAP) {
                            return Some(self.pow_limit_bits());
                        }
                        // Back to the last block not mined under the exception.
                        let limit = self.pow_limit_bits();
                        let mut idx = parent;
                        loop {
                            let e = &self.entries[idx as usize];
                            let parent = self.parent_of(idx);
                            if parent.is_none()
                                || e.height.is_multiple_of(RETARGET_INTERVAL)
                                || e.bits() != limit
                            {
                                return Some(e.bits());
                            }
                            idx = parent.unwrap_or(0);
                        }
                    }
                    return Some(p_bits);
                }
                let first = self.ancestor(parent, height - RETARGET_INTERVAL);
                let f = &self.entries[first as usize];
                let timespan = p_time.saturating_sub(f.time()) as u64;
                // BIP94: testnet4 retargets from the period's first block, not its last.
                let base = if self.rule == DifficultyRule::BtcTestnet4 {
                    f.bits()
                } else {
                    p_bits
                };
                Some(
                    CompactTarget::from_next_work_required(
                        CompactTarget::from_consensus(base),
                        timespan,
                        &self.params,
                    )
                    .to_consensus(),
                )
            }
        }
    }

    /// Core's `CheckHeadersPoW`, for a whole batch before any of it is looked up or its work
    /// counted: every header follows the one before it and meets the target its nBits
    /// encodes, within the network's limit. Cheap (the hashes are computed already), so a
    /// batch that claims work it has not done costs its sender, not us.
    pub fn check_batch(&self, headers: &[Header], hashes: &[BlockHash]) -> Result<(), AcceptError> {
        for (i, (h, hash)) in headers.iter().zip(hashes).enumerate() {
            if i > 0 && h.prev_blockhash != hashes[i - 1] {
                return Err(AcceptError::NotContinuous(i));
            }
            let target = h.target();
            if target > self.pow_limit {
                return Err(AcceptError::TargetAboveLimit);
            }
            if !target.is_met_by(*hash) {
                return Err(AcceptError::BadProofOfWork);
            }
        }
        Ok(())
    }

    /// Validates `h` and stores it. `now` is our clock, unix seconds.
    pub fn accept(&mut self, h: &Header, now: u32) -> Result<Accepted, AcceptError> {
        self.accept_hashed(h, h.block_hash(), now)
    }

    /// [`accept`](Self::accept) for a header whose hash the caller has computed already (a
    /// header is hashed once on its way in).
    pub fn accept_hashed(
        &mut self,
        h: &Header,
        hash: BlockHash,
        now: u32,
    ) -> Result<Accepted, AcceptError> {
        if self.lookup(&hash).is_some() {
            return Ok(Accepted::Duplicate);
        }
        let parent = self
            .lookup(&h.prev_blockhash)
            .ok_or(AcceptError::NotConnecting(h.prev_blockhash))?;
        let p = self.entries[parent as usize];
        let height = p.height + 1;
        let target = h.target();
        if target > self.pow_limit {
            return Err(AcceptError::TargetAboveLimit);
        }
        if !target.is_met_by(hash) {
            return Err(AcceptError::BadProofOfWork);
        }
        if let Some(want) = self.required_bits(parent, h.time) {
            if h.bits.to_consensus() != want {
                return Err(AcceptError::BadDifficulty {
                    got: h.bits.to_consensus(),
                    want,
                });
            }
        }
        let mtp = self.median_time_past(parent);
        if h.time <= mtp {
            return Err(AcceptError::TimeTooOld { time: h.time, mtp });
        }
        if h.time > now.saturating_add(MAX_FUTURE_BLOCK_TIME) {
            return Err(AcceptError::TimeTooNew { time: h.time, now });
        }
        if self.rule == DifficultyRule::BtcTestnet4
            && height.is_multiple_of(RETARGET_INTERVAL)
            && h.time < p.time().saturating_sub(MAX_TIMEWARP)
        {
            return Err(AcceptError::TimeWarp {
                time: h.time,
                parent: p.time(),
            });
        }
        if let Some((_, cp)) = self.checkpoints.iter().find(|(ch, _)| *ch == height) {
            if *cp != hash {
                return Err(AcceptError::Checkpoint(height));
            }
        }
        let extends_best = parent == *self.best.last().unwrap_or(&0);
        if !extends_best && height <= self.last_checkpoint_held() {
            return Err(AcceptError::ForkBeforeCheckpoint(height));
        }
        let work = self
            .work_of(parent)
            .saturating_add(work_of_bits(h.bits.to_consensus()));
        if !extends_best && self.stale_count() >= MAX_STALE_HEADERS {
            self.evict_stale(MAX_STALE_HEADERS / 2);
            if self.lookup(&h.prev_blockhash).is_none() {
                // Its parent was a least-work stale header and went: it has less work than
                // everything kept, so it is refused like the rest of that branch.
                return Err(AcceptError::TooManyStale);
            }
        }
        if self.vacant.is_empty() && self.entries.len() >= MAX_ENTRIES as usize {
            return Err(AcceptError::ChainFull);
        }
        let idx = self.push(h, hash, height);
        if extends_best {
            self.best.push(idx);
            self.tip_work = work;
            self.tip_hash = hash;
            if height.is_multiple_of(WORK_MARK_INTERVAL) {
                self.work_marks.push(work);
            }
            return Ok(Accepted::NewTip);
        }
        self.stale.insert(idx, Stale { work });
        if work > self.tip_work {
            return Ok(Accepted::Reorg {
                depth: self.switch_to(idx, hash),
            });
        }
        Ok(Accepted::Stored)
    }

    /// Makes `idx` the best tip; returns how many old best-chain blocks left the chain.
    fn switch_to(&mut self, idx: u32, hash: BlockHash) -> u32 {
        let mut branch = Vec::new();
        let mut cur = idx;
        while self.best.get(self.entries[cur as usize].height as usize) != Some(&cur) {
            branch.push(cur);
            match self.parent_of(cur) {
                Some(p) => cur = p,
                None => break,
            }
        }
        let fork_height = self.entries[cur as usize].height;
        let depth = (self.best.len() as u32 - 1) - fork_height;
        // The old best chain above the fork becomes stale: record its cumulative work.
        let mut w = self.tip_work;
        for h in (fork_height as usize + 1..self.best.len()).rev() {
            let i = self.best[h];
            self.stale.insert(i, Stale { work: w });
            w = w.saturating_sub(self.entries[i as usize].own_work());
        }
        let new_tip = self.stale.get(&idx).copied();
        for i in &branch {
            self.stale.remove(i);
        }
        self.best.truncate(fork_height as usize + 1);
        self.best.extend(branch.into_iter().rev());
        self.work_marks
            .truncate((fork_height / WORK_MARK_INTERVAL) as usize + 1);
        self.extend_work_marks();
        if let Some(tip) = new_tip {
            self.tip_work = tip.work;
            self.tip_hash = hash;
        }
        depth
    }

    fn stale_count(&self) -> usize {
        self.stale.len()
    }

    /// Height of the highest checkpoint on our best chain (0 when none).
    fn last_checkpoint_held(&self) -> u32 {
        self.checkpoints
            .iter()
            .filter(|(h, hash)| {
                self.best
                    .get(*h as usize)
                    .is_some_and(|i| self.hash_of(*i) == *hash)
            })
            .map(|(h, _)| *h)
            .max()
            .unwrap_or(0)
    }

    /// Keeps the `keep` stale headers with the most work (newest first among equals) and the
    /// stale ancestors they need; the others leave the index and their slots are reused by
    /// later headers. O(stale headers): the best chain is not touched, however long.
    fn evict_stale(&mut self, keep: usize) {
        let before = self.stale.len();
        let mut ranked: Vec<(u128, u32)> = self.stale.iter().map(|(i, st)| (st.work, *i)).collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        let mut kept: HashSet<u32> = HashSet::with_capacity(keep);
        for &(_, idx) in ranked.iter().take(keep) {
            // The branch down to the best chain stays too, or the header could not be found.
            // A descendant has more work than its ancestors, so what goes has no child kept.
            let mut cur = idx;
            while self.stale.contains_key(&cur) && kept.insert(cur) {
                match self.parent_of(cur) {
                    Some(p) => cur = p,
                    None => break,
                }
            }
        }
        for (_, idx) in ranked {
            if kept.contains(&idx) {
                continue;
            }
            let hash = self.hash_of(idx);
            let (entries, best, tip_hash) = (&self.entries, &self.best, self.tip_hash);
            self.index
                .remove(&hash, idx, |i| entry_hash(entries, best, tip_hash, i));
            self.stale.remove(&idx);
            self.entries[idx as usize].height = VACANT;
            self.vacant.push(idx);
        }
        tracing::debug!(
            before,
            after = self.stale.len(),
            "evicted the least-work stale headers"
        );
    }

    /// Height of the best tip.
    pub fn height(&self) -> u32 {
        (self.best.len() - 1) as u32
    }

    /// Hash of the best tip.
    pub fn tip(&self) -> BlockHash {
        self.tip_hash
    }

    /// The best tip's header.
    pub fn tip_header(&self) -> Header {
        self.header_at(*self.best.last().unwrap_or(&0))
    }

    /// Cumulative work of the best chain.
    pub fn tip_work(&self) -> u128 {
        self.tip_work
    }

    /// Median time of the best tip and the ten headers before it.
    pub fn tip_median_time_past(&self) -> u32 {
        self.median_time_past(*self.best.last().unwrap_or(&0))
    }

    /// A known header, its height and the cumulative work up to it.
    pub fn header_and_work(&self, hash: &BlockHash) -> Option<(Header, u32, u128)> {
        let idx = self.lookup(hash)?;
        let e = &self.entries[idx as usize];
        Some((e.header(), e.height, self.work_of(idx)))
    }

    /// Work of one header.
    pub fn header_work(h: &Header) -> u128 {
        work_of_bits(h.bits.to_consensus())
    }

    /// The network's difficulty rule and target limit (for presync).
    pub fn rule_and_limit(&self) -> (DifficultyRule, Target) {
        (self.rule, self.pow_limit)
    }

    /// Height of a known header.
    pub fn height_of(&self, hash: &BlockHash) -> Option<u32> {
        self.lookup(hash).map(|i| self.entries[i as usize].height)
    }

    /// Whether a header is known.
    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.lookup(hash).is_some()
    }

    /// Height of the last header that `hash`'s branch shares with the best chain (its own
    /// height when it is on it); `None` for an unknown header.
    pub fn fork_height(&self, hash: &BlockHash) -> Option<u32> {
        let mut idx = self.lookup(hash)?;
        loop {
            let height = self.entries[idx as usize].height;
            if self.best.get(height as usize) == Some(&idx) {
                return Some(height);
            }
            idx = self.parent_of(idx)?;
        }
    }

    /// Median time past at a known header (it and the ten before it).
    pub fn median_time_past_of(&self, hash: &BlockHash) -> Option<u32> {
        self.lookup(hash).map(|i| self.median_time_past(i))
    }

    /// Every chain tip, as Core's getchaintips finds them: the best tip, then each stored
    /// header off the best chain that no other stored header builds on. Each as (hash,
    /// height, height of the last header its branch shares with the best chain).
    pub fn tips(&self) -> Vec<(BlockHash, u32, u32)> {
        let parents: std::collections::HashSet<u32> = self
            .stale
            .keys()
            .filter_map(|&i| self.parent_of(i))
            .collect();
        // Each stale header's fork height, found once: a branch's headers share it, so
        // the walk back stops at the first header already known (linear in stale headers).
        let mut fork_of: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        let mut out = vec![(self.tip_hash, self.height(), self.height())];
        for &idx in self.stale.keys() {
            if parents.contains(&idx) {
                continue;
            }
            let mut path = Vec::new();
            let mut at = Some(idx);
            let fork = loop {
                let Some(i) = at else { break 0 };
                if let Some(&f) = fork_of.get(&i) {
                    break f;
                }
                let height = self.entries[i as usize].height;
                if self.best.get(height as usize) == Some(&i) {
                    break height;
                }
                path.push(i);
                at = self.parent_of(i);
            };
            for i in path {
                fork_of.insert(i, fork);
            }
            let height = self.entries[idx as usize].height;
            out.push((self.hash_of(idx), height, fork));
        }
        out
    }

    /// Whether a known header is on the best chain.
    pub fn is_on_best_chain(&self, hash: &BlockHash) -> bool {
        self.lookup(hash)
            .is_some_and(|i| self.best.get(self.entries[i as usize].height as usize) == Some(&i))
    }

    /// The best-chain header at `height`.
    pub fn header_at_height(&self, height: u32) -> Option<Header> {
        self.best.get(height as usize).map(|i| self.header_at(*i))
    }

    /// The best-chain hash at `height`.
    pub fn hash_at_height(&self, height: u32) -> Option<BlockHash> {
        self.best.get(height as usize).map(|i| self.hash_of(*i))
    }

    /// A block locator for the best chain: the last ten hashes, then exponentially sparser,
    /// ending at genesis.
    pub fn locator(&self) -> Vec<BlockHash> {
        self.locator_from(self.height())
    }

    /// A block locator starting at the best-chain header at `height` (at most the tip's).
    pub fn locator_from(&self, height: u32) -> Vec<BlockHash> {
        let mut out = Vec::new();
        let mut h = height.min(self.height()) as i64;
        let mut step = 1i64;
        while h > 0 {
            out.push(self.hash_of(self.best[h as usize]));
            if out.len() >= 10 {
                step *= 2;
            }
            h -= step;
        }
        out.push(self.hash_of(self.best[0]));
        out
    }

    /// Serves a getheaders: best-chain headers after the first locator hash we know (genesis
    /// if none), up to `max` and stopping at `stop` (inclusive) when it is set.
    pub fn headers_after(&self, locator: &[BlockHash], stop: BlockHash, max: usize) -> Vec<Header> {
        let start = locator
            .iter()
            .find(|h| self.is_on_best_chain(h))
            .and_then(|h| self.height_of(h))
            .map_or(1, |height| height + 1);
        let mut out = Vec::new();
        for height in start..=self.height() {
            if out.len() >= max {
                break;
            }
            let idx = self.best[height as usize];
            out.push(self.entries[idx as usize].header());
            if self.hash_of(idx) == stop {
                break;
            }
        }
        out
    }

    /// Bytes used by the chain's storage (capacities included), for the memory target.
    pub fn memory_bytes(&self) -> usize {
        let entry = std::mem::size_of::<Entry>() * self.entries.capacity();
        // hashbrown: one (key, value) slot plus one control byte per bucket; buckets are the
        // next power of two above capacity × 8/7.
        let buckets = |cap: usize| {
            if cap == 0 {
                0
            } else {
                (cap * 8 / 7).next_power_of_two()
            }
        };
        let index = self.index.memory_bytes();
        let best = std::mem::size_of::<u32>() * self.best.capacity()
            + std::mem::size_of::<u128>() * self.work_marks.capacity();
        let stale = buckets(self.stale.capacity()) * (std::mem::size_of::<(u32, Stale)>() + 1);
        entry + index + best + stale
    }

    /// Number of stored headers (all branches).
    pub fn len(&self) -> usize {
        self.entries.len() - self.vacant.len()
    }

    /// Whether only genesis is stored.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }

    /// The time allowed ahead of our clock.
    pub fn max_future() -> Duration {
        Duration::from_secs(MAX_FUTURE_BLOCK_TIME as u64)
    }
}

/// Mines a header on top of `parent` with the given bits (trivial on regtest): tries nonces
/// until the hash meets the target. For tests and regtest generation.
pub fn mine_header(
    parent: &Header,
    merkle_root: TxMerkleNode,
    time: u32,
    bits: CompactTarget,
) -> Header {
    let mut h = Header {
        version: Version::from_consensus(0x2000_0000),
        prev_blockhash: parent.block_hash(),
        merkle_root,
        time,
        bits,
        nonce: 0,
    };
    let target = h.target();
    while !target.is_met_by(h.block_hash()) {
        h.nonce = h.nonce.wrapping_add(1);
        if h.nonce == 0 {
            h.time += 1;
        }
    }
    h
}

/// `n` headers mined on top of `parent`, `spacing` seconds apart, each with `parent`'s nBits
/// (trivial work on regtest). For tests and benchmarks.
pub fn mine_chain(parent: &Header, n: u32, spacing: u32) -> Vec<Header> {
    let mut out: Vec<Header> = Vec::with_capacity(n as usize);
    let mut last = *parent;
    for i in 0..n {
        last = mine_header(
            &last,
            TxMerkleNode::all_zeros(),
            parent.time + spacing * (i + 1),
            parent.bits,
        );
        out.push(last);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regtest() -> HeaderChain {
        HeaderChain::new(&NetworkId::Regtest.profile())
    }

    /// Every stored header's hash, as the chain reads it without hashing, is its real hash,
    /// and a lookup by it finds it.
    fn check_hashes(c: &HeaderChain) {
        for (idx, e) in c.entries.iter().enumerate() {
            if e.height == VACANT {
                continue;
            }
            let real = e.hash();
            assert_eq!(
                c.hash_of(idx as u32),
                real,
                "slot {idx} at height {}",
                e.height
            );
            assert_eq!(c.lookup(&real), Some(idx as u32));
        }
        assert_eq!(c.tip(), c.entries[*c.best.last().unwrap() as usize].hash());
        // The work up to every best-chain header, from the marks, is the plain sum.
        let mut sum = 0u128;
        for (h, i) in c.best.iter().enumerate() {
            sum += c.entries[*i as usize].own_work();
            assert_eq!(c.best_work_at(h as u32), sum, "work at height {h}");
        }
        assert_eq!(c.tip_work(), sum);
        assert_eq!(
            c.work_marks.len() as u32,
            c.height() / WORK_MARK_INTERVAL + 1
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn hashes_read_without_hashing_stay_right_through_forks_and_reorgs(
            steps in proptest::collection::vec((0usize..1000, 1u32..8), 1..60)
        ) {
            let mut c = regtest();
            let mut known = vec![c.tip_header()];
            for (i, (pick, len)) in steps.into_iter().enumerate() {
                // Extend any known header by a short branch: a new tip, a stale fork, or a
                // heavier fork that reorganises.
                let from = known[pick % known.len()];
                let mut parent = from;
                for j in 0..len {
                    let h = mine_header(
                        &parent,
                        TxMerkleNode::from_byte_array([(i % 250) as u8 + 1; 32]),
                        parent.time + 1 + j,
                        parent.bits,
                    );
                    c.accept(&h, u32::MAX / 2).unwrap();
                    known.push(h);
                    parent = h;
                }
                check_hashes(&c);
            }
        }
    }

    fn grow(chain: &mut HeaderChain, from: Header, n: u32, salt: u8) -> Vec<Header> {
        let mut out = Vec::new();
        let mut parent = from;
        for i in 0..n {
            let h = mine_header(
                &parent,
                TxMerkleNode::from_byte_array([salt; 32]),
                parent.time + 600 + i % 3,
                parent.bits,
            );
            chain.accept(&h, u32::MAX / 2).unwrap();
            out.push(h);
            parent = h;
        }
        out
    }

    #[test]
    fn extends_and_serves_and_locates() {
        let mut c = regtest();
        let g = c.tip_header();
        let hs = grow(&mut c, g, 50, 1);
        assert_eq!(c.height(), 50);
        assert_eq!(c.tip(), hs[49].block_hash());
        let loc = c.locator();
        assert_eq!(loc[0], c.tip());
        assert_eq!(*loc.last().unwrap(), g.block_hash());
        let served = c.headers_after(&[hs[9].block_hash()], BlockHash::all_zeros(), 2000);
        assert_eq!(served.len(), 40);
        assert_eq!(served[0], hs[10]);
        assert_eq!(c.headers_after(&[], hs[4].block_hash(), 2000).len(), 5);
    }

    #[test]
    fn most_work_wins_and_reorgs_are_reported() {
        let mut c = regtest();
        let g = c.tip_header();
        let a = grow(&mut c, g, 5, 1);
        let fork_base = a[1];
        // A competing branch from height 2: 3 blocks do not win (4 vs 5 total ... equal work
        // needs more), 4 do.
        let mut parent = fork_base;
        let mut outcome = Vec::new();
        for i in 0..4 {
            let h = mine_header(
                &parent,
                TxMerkleNode::from_byte_array([2; 32]),
                parent.time + 700 + i,
                parent.bits,
            );
            outcome.push(c.accept(&h, u32::MAX / 2).unwrap());
            parent = h;
        }
        assert_eq!(
            outcome[..3],
            [Accepted::Stored, Accepted::Stored, Accepted::Stored]
        );
        assert_eq!(outcome[3], Accepted::Reorg { depth: 3 });
        assert_eq!(c.height(), 6);
        assert_eq!(c.tip(), parent.block_hash());
        assert!(!c.is_on_best_chain(&a[4].block_hash()));
    }

    #[test]
    fn invalid_headers_are_refused_with_typed_errors() {
        let mut c = regtest();
        let g = c.tip_header();
        let good = mine_header(
            &g,
            TxMerkleNode::from_byte_array([1; 32]),
            g.time + 600,
            g.bits,
        );
        // Bad proof of work: a nonce that does not meet the target.
        let mut bad = good;
        while bad.target().is_met_by(bad.block_hash()) {
            bad.nonce = bad.nonce.wrapping_add(1);
        }
        assert_eq!(
            c.accept(&bad, u32::MAX / 2),
            Err(AcceptError::BadProofOfWork)
        );
        // Wrong nBits (harder than regtest's fixed target, so the work is still met).
        let harder = mine_header(
            &g,
            TxMerkleNode::from_byte_array([1; 32]),
            g.time + 600,
            CompactTarget::from_consensus(0x2000_ffff),
        );
        assert!(matches!(
            c.accept(&harder, u32::MAX / 2),
            Err(AcceptError::BadDifficulty { .. })
        ));
        // Too far in the future.
        let now = g.time + 1000;
        let future = mine_header(
            &g,
            TxMerkleNode::from_byte_array([1; 32]),
            now + MAX_FUTURE_BLOCK_TIME + 1,
            g.bits,
        );
        assert!(matches!(
            c.accept(&future, now),
            Err(AcceptError::TimeTooNew { .. })
        ));
        // Not above the median time past.
        let old = mine_header(&g, TxMerkleNode::from_byte_array([1; 32]), g.time, g.bits);
        assert!(matches!(
            c.accept(&old, u32::MAX / 2),
            Err(AcceptError::TimeTooOld { .. })
        ));
        // Not connecting.
        let mut orphan = good;
        orphan.prev_blockhash = BlockHash::from_byte_array([9; 32]);
        assert!(matches!(
            c.accept(&orphan, u32::MAX / 2),
            Err(AcceptError::NotConnecting(_))
        ));
        assert_eq!(c.accept(&good, u32::MAX / 2), Ok(Accepted::NewTip));
        assert_eq!(c.accept(&good, u32::MAX / 2), Ok(Accepted::Duplicate));
    }

    #[test]
    fn mainnet_first_retarget_and_genesis_rules_hold() {
        // Height 1 on mainnet must carry genesis's bits; anything else is refused before any
        // proof of work is attempted on it.
        let mut c = HeaderChain::new(&NetworkId::Mainnet.profile());
        assert_eq!(
            c.required_bits(0, c.tip_header().time + 600),
            Some(0x1d00_ffff)
        );
        let g = c.tip_header();
        let h = Header {
            version: Version::from_consensus(1),
            prev_blockhash: g.block_hash(),
            merkle_root: TxMerkleNode::all_zeros(),
            time: g.time + 600,
            bits: CompactTarget::from_consensus(0x207f_ffff),
            nonce: 0,
        };
        assert_eq!(
            c.accept(&h, u32::MAX / 2),
            Err(AcceptError::TargetAboveLimit)
        );
    }

    #[test]
    fn testnet_minimum_difficulty_exception_after_twenty_minutes() {
        let c = HeaderChain::new(&NetworkId::Testnet3.profile());
        let g = c.tip_header();
        let limit = c.pow_limit_bits();
        assert_eq!(c.required_bits(0, g.time + 20 * 60 + 1), Some(limit));
        assert_eq!(c.required_bits(0, g.time + 60), Some(g.bits.to_consensus()));
    }

    #[test]
    fn stale_headers_are_capped_and_a_heavier_fork_still_wins() {
        let mut c = regtest();
        let g = c.tip_header();
        let tip = *grow(&mut c, g, 10, 1).last().unwrap();
        // A two-header stale branch, with more work than the one-header forks to come: it and
        // its parent outlive every eviction.
        let b1 = mine_header(
            &g,
            TxMerkleNode::from_byte_array([9; 32]),
            g.time + 1,
            g.bits,
        );
        let b2 = mine_header(
            &b1,
            TxMerkleNode::from_byte_array([9; 32]),
            g.time + 2,
            g.bits,
        );
        c.accept(&b1, u32::MAX / 2).unwrap();
        c.accept(&b2, u32::MAX / 2).unwrap();
        // Four floods of one-header forks from genesis: they never win, so they are stale.
        let mut slots = 0;
        for round in 0..4u32 {
            for i in 0..(MAX_STALE_HEADERS as u32 + 1) {
                let h = mine_header(
                    &g,
                    TxMerkleNode::from_byte_array([3; 32]),
                    g.time + 601 + round * 100_000 + i,
                    g.bits,
                );
                assert!(c.accept(&h, u32::MAX / 2).is_ok());
                assert!(c.stale_count() <= MAX_STALE_HEADERS);
            }
            if round == 0 {
                slots = c.entries.len();
            }
            // Evicted slots are reused: the table does not grow with each flood.
            assert_eq!(c.entries.len(), slots, "round {round}");
            assert!(c.len() <= 11 + MAX_STALE_HEADERS);
        }
        assert_eq!(c.tip(), tip.block_hash());
        assert!(c.contains(&b1.block_hash()) && c.contains(&b2.block_hash()));
        check_hashes(&c);
        // An honest 15-header branch from genesis still takes over.
        let honest = *grow(&mut c, g, 15, 7).last().unwrap();
        assert_eq!(c.height(), 15);
        assert_eq!(c.tip(), honest.block_hash());
        // Lookups still work after compaction.
        assert_eq!(c.height_of(&honest.block_hash()), Some(15));
        assert!(c.hash_at_height(10).is_some());
    }

    /// Appends headers without proof of work (BSV's limit cannot be mined in a test), so
    /// the difficulty rule can be read at any height.
    fn grow_unchecked(c: &mut HeaderChain, n: u32, spacing: u32, bits: u32) {
        for _ in 0..n {
            let parent = *c.best.last().unwrap();
            let p = c.header_at(parent);
            let h = Header {
                prev_blockhash: p.block_hash(),
                time: p.time + spacing,
                bits: CompactTarget::from_consensus(bits),
                ..p
            };
            let idx = c.push(&h, h.block_hash(), c.entries[parent as usize].height + 1);
            c.best.push(idx);
            c.tip_work += to_u128(h.work());
            c.tip_hash = h.block_hash();
            c.extend_work_marks();
        }
    }

    #[test]
    fn bsv_rules_are_applied_per_network() {
        let harder = 0x1c0f_ffff;
        let tip = |c: &HeaderChain| *c.best.last().unwrap();
        // STN: the DAA from 2,200. Blocks every 5 minutes: the next target is lower.
        let mut stn = HeaderChain::new(&NetworkId::BsvStn.profile());
        grow_unchecked(&mut stn, 2_300, 300, harder);
        let t = stn.tip_header().time;
        let next = stn.required_bits(tip(&stn), t + 300).unwrap();
        assert!(
            Target::from_compact(CompactTarget::from_consensus(next))
                < Target::from_compact(CompactTarget::from_consensus(harder)),
            "{next:x}"
        );
        // Mainnet before the DAA: the EDA eases a target after six blocks over 12 hours.
        let mut main = HeaderChain::new(&NetworkId::BsvMainnet.profile());
        grow_unchecked(&mut main, 100, 600, harder);
        assert_eq!(main.required_bits(tip(&main), 0), Some(harder));
        grow_unchecked(&mut main, 12, 3 * 3600, harder);
        let eased = main.required_bits(tip(&main), 0).unwrap();
        assert!(
            Target::from_compact(CompactTarget::from_consensus(eased))
                > Target::from_compact(CompactTarget::from_consensus(harder))
        );
        // Testnet: 20 minutes after its parent a block may be at the limit; otherwise not.
        let mut test = HeaderChain::new(&NetworkId::BsvTestnet.profile());
        grow_unchecked(&mut test, 50, 600, harder);
        let t = test.tip_header().time;
        assert_eq!(
            test.required_bits(tip(&test), t + 1_201),
            Some(test.pow_limit_bits())
        );
        assert_eq!(test.required_bits(tip(&test), t + 600), Some(harder));
    }

    #[test]
    fn memory_per_header_stays_under_128_bytes() {
        let mut c = regtest();
        let g = c.tip_header();
        grow(&mut c, g, 20_000, 1);
        let per = c.memory_bytes() as f64 / c.len() as f64;
        eprintln!(
            "header chain memory: {per:.1} bytes per header at {} headers",
            c.len()
        );
        assert!(per <= 128.0, "{per:.1} bytes per header");
    }
}
