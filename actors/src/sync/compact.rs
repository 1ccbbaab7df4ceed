//! BIP152 compact blocks, as a sans-IO core: building a `cmpctblock` from a block we hold,
//! reconstructing a block from one (Core's `PartiallyDownloadedBlock`: the relay pool, then
//! an extra pool of recently seen transactions, then `getblocktxn` for the rest), answering
//! `getblocktxn`, and choosing the peers asked to announce with compact blocks at once
//! (high-bandwidth mode, Core's `MaybeSetPeerAsAnnouncingHeaderAndIDs`).
//!
//! Short ids follow BIP152: SipHash-2-4 keyed with the first two little-endian 64-bit words
//! of SHA256(header || nonce), over the wtxid (version 2, segwit chains) or the txid
//! (version 1, chains without segwit), its six low bytes. A reconstructed block is checked
//! as a fetched one is (merkle root, Core's IsBlockMutated) by the caller; a failure there
//! may be a short-id collision, so it leads to the full block, not a charge.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bitcoin::bip152::{BlockTransactions, ShortId};
use bitcoin::block::Header;
use bitcoin::{Block, Transaction};

use crate::network::Chain;
use crate::shared::peers::PeerId;
use crate::wire::compact::{CompactBlock, IndexWidth, TxnRequest};

/// `sendcmpct` version with wtxid short ids (Core's `CMPCTBLOCKS_VERSION`, BIP152 version 2).
pub const CMPCTBLOCKS_VERSION: u64 = 2;
/// `sendcmpct` version with txid short ids (BIP152 version 1), for chains without segwit.
pub const CMPCTBLOCKS_VERSION_TXID: u64 = 1;
/// The protocol version from which peers understand compact blocks (Core's
/// `SHORT_IDS_BLOCKS_VERSION`).
pub const SHORT_IDS_BLOCKS_VERSION: u32 = 70014;
/// From this protocol version an invalid compact block from a high-bandwidth peer costs it
/// nothing unless its header is invalid (BIP152: such peers relay before full validation;
/// Core's `INVALID_CB_NO_BAN_VERSION`).
pub const INVALID_CB_NO_BAN_VERSION: u32 = 70015;
/// Peers asked to announce with `cmpctblock` at once (BIP152 suggests 3, as Core).
pub const MAX_HIGH_BANDWIDTH_PEERS: usize = 3;
/// Blocks deeper than this below our tip are not served as `cmpctblock` (Core's
/// `MAX_CMPCTBLOCK_DEPTH`): a peer that far behind wants the full block.
pub const MAX_CMPCTBLOCK_DEPTH: u32 = 5;
/// `getblocktxn` for blocks deeper than this is answered with the full block (Core's
/// `MAX_BLOCKTXN_DEPTH`).
pub const MAX_BLOCKTXN_DEPTH: u32 = 10;
/// Transactions kept for reconstruction that did not stay in the relay pool (evicted,
/// refused for their fee rate, replaced): Core keeps 100 (`-blockreconstructionextratxn`).
/// meshd's pool is smaller than a mempool and evicts more often, so more are kept.
pub const MAX_EXTRA_TXN: usize = 256;
/// The extra pool's bound in bytes, whatever the transactions' sizes (a few large BSV
/// transactions cannot hold much memory).
pub const MAX_EXTRA_TXN_BYTES: usize = 8 << 20;
/// The transactions we prefill, beyond the coinbase, are at most this many bytes (BIP152's
/// suggestion: the ones we were missing ourselves, under 10 KB).
pub const MAX_PREFILL_BYTES: usize = 10_000;
/// On BSV, a `getblocktxn` asking for more than this share of a block's transactions (in
/// percent) is answered with the whole block, as the SV node does
/// (`DEFAULT_BLOCK_TXN_MAX_PERCENT`, `-maxblocktxnpercent`): the block's frame is shared and
/// already built, where a `blocktxn` of nearly all of it would be a second copy.
pub const BSV_BLOCK_TXN_MAX_PERCENT: usize = 99;
/// The fewest bytes a transaction can take (Core's `MIN_SERIALIZABLE_TRANSACTION_WEIGHT` /
/// 4 for non-witness bytes): a compact block claiming more transactions than its block's
/// size limit can hold is invalid.
pub const MIN_TRANSACTION_BYTES: usize = 10;

/// Why a compact block could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Malformed (Core's `READ_STATUS_INVALID`): costs the sender.
    #[error("invalid compact block: {0}")]
    Invalid(&'static str),
    /// Well formed but unusable (Core's `READ_STATUS_FAILED`: a short-id collision, or a
    /// reconstruction that does not check): the full block is asked for, free.
    #[error("compact block not usable: {0}")]
    Failed(&'static str),
}

impl ReadError {
    /// Label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ReadError::Invalid(k) | ReadError::Failed(k) => k,
        }
    }
}

/// The hash a transaction's short id is computed from (kept beside the codec, the leaf).
pub use crate::wire::compact::short_id_hash;

/// A rebuilt block and, per position, the short-id hash our pools gave with it.
pub type FilledBlock = (Block, Vec<Option<[u8; 32]>>);

/// A block being reconstructed from a `cmpctblock` (Core's `PartiallyDownloadedBlock`).
#[derive(Debug)]
pub struct PartialBlock {
    header: Header,
    txs: Vec<Option<Arc<Transaction>>>,
    /// For each position filled from a pool, the hash its short id is of, as the pool
    /// computed it when the transaction came in (the block check need not hash it again).
    hashes: Vec<Option<[u8; 32]>>,
    /// Transactions the message carried (the coinbase at least).
    pub prefilled: usize,
    /// Transactions found in the relay pool.
    pub from_pool: usize,
    /// Transactions found in the extra pool.
    pub from_extra: usize,
}

impl PartialBlock {
    /// Places the prefilled transactions, then fills what it can from `pool` and `extra`
    /// (each yields a transaction with the hash its short id is computed from, see
    /// [`short_id_hash`]). `max_txs` is the most transactions a block of this network can
    /// hold. Two candidates matching one short id leave it to be asked for, as Core does.
    pub fn init<'a>(
        cmpct: &CompactBlock,
        max_txs: usize,
        width: IndexWidth,
        pool: impl IntoIterator<Item = ([u8; 32], &'a Arc<Transaction>)>,
        extra: impl IntoIterator<Item = ([u8; 32], &'a Arc<Transaction>)>,
    ) -> Result<PartialBlock, ReadError> {
        if cmpct.header.bits.to_consensus() == 0
            || (cmpct.short_ids.is_empty() && cmpct.prefilled.is_empty())
        {
            return Err(ReadError::Invalid("cmpctblock_empty"));
        }
        let count = cmpct.tx_count();
        if count as u64 > width.max() {
            // Core's "indexes overflowed 16 bits": a decoding failure, not punished (a block
            // of more cannot travel compact there); the whole block is asked for.
            return Err(ReadError::Failed("cmpctblock_indexes_overflowed"));
        }
        if count > max_txs {
            // Above what a block may hold here: on BSV a policy bound (the operator's block
            // size), so free; the whole block is then refused as too large, free too.
            return Err(ReadError::Failed("cmpctblock_too_many_txs"));
        }
        let mut txs: Vec<Option<Arc<Transaction>>> = vec![None; count];
        // Differential indexes: each is the gap after the previous one.
        let mut last: i64 = -1;
        for (i, p) in cmpct.prefilled.iter().enumerate() {
            if p.tx.input.is_empty() && p.tx.output.is_empty() {
                return Err(ReadError::Invalid("cmpctblock_null_tx"));
            }
            last += i64::from(p.gap) + 1;
            if last as u64 > width.max() || last as usize > cmpct.short_ids.len() + i {
                // A position with neither a prefilled transaction nor a short id.
                return Err(ReadError::Invalid("cmpctblock_bad_index"));
            }
            txs[last as usize] = Some(Arc::new(p.tx.clone()));
        }
        // Short id -> position. A `HashMap` keyed by a random SipHash: a peer choosing
        // short ids cannot make it slow (Core instead bounds its buckets' load).
        let mut positions: HashMap<ShortId, usize> = HashMap::with_capacity(cmpct.short_ids.len());
        let mut free = txs
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_none())
            .map(|(i, _)| i);
        for id in &cmpct.short_ids {
            let Some(at) = free.next() else {
                return Err(ReadError::Invalid("cmpctblock_bad_index"));
            };
            if positions.insert(*id, at).is_some() {
                return Err(ReadError::Failed("short_id_collision"));
            }
        }
        let keys = ShortId::calculate_siphash_keys(&cmpct.header, cmpct.nonce);
        let mut partial = PartialBlock {
            header: cmpct.header,
            hashes: vec![None; txs.len()],
            txs,
            prefilled: cmpct.prefilled.len(),
            from_pool: 0,
            from_extra: 0,
        };
        // Positions two candidates matched: asked for, not guessed.
        let mut ambiguous = vec![false; partial.txs.len()];
        // Where each found one came from, so an ambiguity takes it off the right count.
        let mut found_in_extra = vec![false; partial.txs.len()];
        let wanted = positions.len();
        let mut found = 0usize;
        for (from_extra, (hash, tx)) in pool
            .into_iter()
            .map(|c| (false, c))
            .chain(extra.into_iter().map(|c| (true, c)))
        {
            if found == wanted {
                break;
            }
            let Some(&at) = positions.get(&ShortId::with_siphash_keys(&hash, keys)) else {
                continue;
            };
            match &partial.txs[at] {
                _ if ambiguous[at] => {}
                None => {
                    partial.txs[at] = Some(tx.clone());
                    partial.hashes[at] = Some(hash);
                    found += 1;
                    found_in_extra[at] = from_extra;
                    if from_extra {
                        partial.from_extra += 1;
                    } else {
                        partial.from_pool += 1;
                    }
                }
                // The same transaction in both pools is no conflict.
                Some(have)
                    if partial.hashes[at] == Some(hash)
                        && (Arc::ptr_eq(have, tx)
                            || have.compute_wtxid() == tx.compute_wtxid()) => {}
                Some(_) => {
                    partial.txs[at] = None;
                    partial.hashes[at] = None;
                    ambiguous[at] = true;
                    found -= 1;
                    if found_in_extra[at] {
                        partial.from_extra -= 1;
                    } else {
                        partial.from_pool -= 1;
                    }
                }
            }
        }
        Ok(partial)
    }

    /// The block's hash.
    pub fn hash(&self) -> bitcoin::BlockHash {
        self.header.block_hash()
    }

    /// Positions still missing, for `getblocktxn`.
    pub fn missing(&self) -> Vec<u64> {
        self.txs
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_none())
            .map(|(i, _)| i as u64)
            .collect()
    }

    /// The block, with `missing` (a `blocktxn`'s transactions, in order) in the gaps. The
    /// caller checks it (merkle root, IsBlockMutated); a failure there is
    /// [`ReadError::Failed`], since a short-id collision looks the same.
    pub fn fill(self, missing: Vec<Transaction>) -> Result<Block, ReadError> {
        self.fill_known(missing).map(|(block, _)| block)
    }

    /// [`fill`](Self::fill), with the hash each position's short id is of where a pool
    /// gave it (see [`crate::sync::block_check::check_block_known`]).
    pub fn fill_known(self, missing: Vec<Transaction>) -> Result<FilledBlock, ReadError> {
        let gaps = self.txs.iter().filter(|t| t.is_none()).count();
        if missing.len() != gaps {
            return Err(ReadError::Invalid("blocktxn_wrong_count"));
        }
        let mut missing = missing.into_iter();
        let txdata = self
            .txs
            .into_iter()
            .map(|t| match t {
                Some(tx) => Arc::unwrap_or_clone(tx),
                // Counted above: one per gap.
                None => missing.next().unwrap_or_else(empty_tx),
            })
            .collect();
        Ok((
            Block {
                header: self.header,
                txdata,
            },
            self.hashes,
        ))
    }
}

fn empty_tx() -> Transaction {
    Transaction {
        version: bitcoin::transaction::Version::ONE,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: Vec::new(),
        output: Vec::new(),
    }
}

/// A `cmpctblock` for `block`: the coinbase and the transactions at `missing` (the ones we
/// lacked when we reconstructed it, BIP152's advice) prefilled, within
/// [`MAX_PREFILL_BYTES`]; short ids of wtxids (`by_wtxid`) or txids.
pub fn compact_block(
    block: &Block,
    nonce: u64,
    short_id_hashes: &[[u8; 32]],
    missing: &[usize],
) -> CompactBlock {
    let mut prefill: Vec<usize> = missing
        .iter()
        .copied()
        .filter(|i| *i > 0 && *i < block.txdata.len())
        .collect();
    prefill.sort_unstable();
    prefill.dedup();
    // Each that still fits, in block order: a large one does not keep later small ones out.
    let mut bytes = 0usize;
    prefill.retain(|i| {
        let size = block.txdata[*i].total_size();
        let fits = bytes + size <= MAX_PREFILL_BYTES;
        if fits {
            bytes += size;
        }
        fits
    });
    CompactBlock::from_hashed_block(block, nonce, short_id_hashes, &prefill)
}

/// What each of `block`'s transactions' short id is computed over: wtxids (`by_wtxid`,
/// version 2) or txids.
pub fn short_id_hashes(block: &Block, by_wtxid: bool) -> Vec<[u8; 32]> {
    block
        .txdata
        .iter()
        .map(|tx| short_id_hash(tx, by_wtxid))
        .collect()
}

/// How to answer a `getblocktxn`.
#[derive(Debug, PartialEq, Eq)]
pub enum TxnAnswer {
    /// The transactions asked for.
    Txn(BlockTransactions),
    /// The block is deeper than [`MAX_BLOCKTXN_DEPTH`]: the full block instead (Core).
    FullBlock,
    /// An index past the block's end (Core: 100 points, "getblocktxn with out-of-bounds tx
    /// indices").
    OutOfRange,
}

/// Answers `req` for `block`, `depth` blocks below our tip, on `chain`.
pub fn answer_getblocktxn(req: &TxnRequest, block: &Block, depth: u32, chain: Chain) -> TxnAnswer {
    if depth > MAX_BLOCKTXN_DEPTH {
        return TxnAnswer::FullBlock;
    }
    let in_range = |i: u64| i < block.txdata.len() as u64;
    if chain == Chain::Bsv
        && req.len().saturating_mul(100) > block.txdata.len() * BSV_BLOCK_TXN_MAX_PERCENT
        && req.indexes().all(in_range)
    {
        return TxnAnswer::FullBlock;
    }
    // Checked before anything is copied: an index past the end costs the peer, and a
    // request of many gets nothing built for it.
    if !req.indexes().all(in_range) {
        return TxnAnswer::OutOfRange;
    }
    TxnAnswer::Txn(BlockTransactions {
        block_hash: req.block_hash,
        transactions: req
            .indexes()
            .map(|i| block.txdata[i as usize].clone())
            .collect(),
    })
}

/// Recently seen transactions that did not stay in the relay pool, kept for reconstruction
/// (Core's `vExtraTxnForCompact`): oldest out first, bounded in count and bytes.
#[derive(Debug, Default)]
pub struct ExtraPool {
    txs: VecDeque<([u8; 32], Arc<Transaction>, usize)>,
    bytes: usize,
}

impl ExtraPool {
    /// Keeps `tx` under the hash its short id uses (see [`short_id_hash`]).
    pub fn push(&mut self, hash: [u8; 32], tx: Arc<Transaction>) {
        let size = tx.total_size();
        if size > MAX_EXTRA_TXN_BYTES {
            return;
        }
        self.txs.push_back((hash, tx, size));
        self.bytes += size;
        while self.txs.len() > MAX_EXTRA_TXN || self.bytes > MAX_EXTRA_TXN_BYTES {
            match self.txs.pop_front() {
                Some((_, _, s)) => self.bytes -= s,
                None => break,
            }
        }
    }

    /// The kept transactions with their hashes.
    pub fn iter(&self) -> impl Iterator<Item = ([u8; 32], &Arc<Transaction>)> {
        self.txs.iter().map(|(h, tx, _)| (*h, tx))
    }

    /// Transactions kept.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }
}

/// The peers we asked to announce blocks with `cmpctblock` at once (Core's
/// `lNodesAnnouncingHeaderAndIDs`), most recent last.
#[derive(Debug, Default)]
pub struct HighBandwidth {
    peers: VecDeque<PeerId>,
}

/// A `sendcmpct` to send: `high` asks for (or ends) high-bandwidth announcements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendCmpct {
    /// To whom.
    pub peer: PeerId,
    /// High-bandwidth mode on or off.
    pub high: bool,
}

impl HighBandwidth {
    /// `peer` just gave us a new valid block: it becomes (or stays, moved to the back) a
    /// high-bandwidth peer; with [`MAX_HIGH_BANDWIDTH_PEERS`] already, the longest-serving
    /// one is dropped, but never the last outbound one for an inbound newcomer (Core keeps
    /// one outbound peer, which an attacker cannot occupy). `inbound` tells a peer's
    /// direction.
    pub fn block_from(&mut self, peer: PeerId, inbound: impl Fn(PeerId) -> bool) -> Vec<SendCmpct> {
        if let Some(at) = self.peers.iter().position(|p| *p == peer) {
            self.peers.remove(at);
            self.peers.push_back(peer);
            return Vec::new();
        }
        let mut out = Vec::new();
        if self.peers.len() >= MAX_HIGH_BANDWIDTH_PEERS {
            let outbound = self.peers.iter().filter(|p| !inbound(**p)).count();
            if inbound(peer) && outbound == 1 && self.peers.front().is_some_and(|p| !inbound(*p)) {
                // The one outbound peer would go first: it moves to second place.
                self.peers.swap(0, 1);
            }
            if let Some(old) = self.peers.pop_front() {
                out.push(SendCmpct {
                    peer: old,
                    high: false,
                });
            }
        }
        self.peers.push_back(peer);
        out.push(SendCmpct { peer, high: true });
        out
    }

    /// `peer` left.
    pub fn peer_gone(&mut self, peer: PeerId) {
        self.peers.retain(|p| *p != peer);
    }

    /// Whether we asked `peer` for high-bandwidth announcements (Core's
    /// `bip152_highbandwidth_to`).
    pub fn contains(&self, peer: PeerId) -> bool {
        self.peers.contains(&peer)
    }

    /// How many peers are in high-bandwidth mode.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::block_check::check_block;
    use crate::sync::chain::headers::mine_header;
    use crate::wire::compact::PrefilledTx;
    use bitcoin::hashes::Hash;
    use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, TxIn, TxOut, Witness};
    use proptest::prelude::*;
    use std::hash::Hasher;

    /// A transaction spending `(seed, n)`, with a witness when `witness`.
    fn tx(seed: u32, n: u32, witness: bool) -> Transaction {
        let mut w = Witness::new();
        if witness {
            w.push(seed.to_le_bytes());
        }
        Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint {
                    txid: bitcoin::Txid::from_byte_array([(seed % 251) as u8; 32]),
                    vout: n,
                },
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness: w,
            }],
            output: vec![TxOut {
                value: Amount::from_sat(u64::from(seed) * 1000 + u64::from(n)),
                script_pubkey: ScriptBuf::from_bytes(vec![0x51]),
            }],
        }
    }

    /// A regtest block of a coinbase and `n` transactions, its merkle root right.
    fn block(n: u32, witness: bool) -> Block {
        let parent = crate::network::NetworkId::Regtest.profile().genesis;
        let coinbase = crate::sync::mine::regtest_block(&parent, 1, parent.time + 600, 7)
            .txdata
            .remove(0);
        let mut txdata = vec![coinbase];
        txdata.extend((0..n).map(|i| tx(i + 1, i, witness)));
        let mut b = Block {
            header: parent,
            txdata,
        };
        let root = b.compute_merkle_root().unwrap();
        b.header = mine_header(&parent, root, parent.time + 600, parent.bits);
        b
    }

    fn pool_of(txs: &[Transaction], by_wtxid: bool) -> Vec<([u8; 32], Arc<Transaction>)> {
        txs.iter()
            .map(|t| (short_id_hash(t, by_wtxid), Arc::new(t.clone())))
            .collect()
    }

    fn refs(
        p: &[([u8; 32], Arc<Transaction>)],
    ) -> impl Iterator<Item = ([u8; 32], &Arc<Transaction>)> {
        p.iter().map(|(h, t)| (*h, t))
    }

    /// BIP152's construction written out independently: SHA256(header || nonce LE), its
    /// first two little-endian words keying SipHash-2-4 (the `siphasher` crate), six bytes.
    fn bip152_short_id(header: &Header, nonce: u64, hash: &[u8; 32]) -> [u8; 6] {
        let mut preimage = bitcoin::consensus::serialize(header);
        preimage.extend(nonce.to_le_bytes());
        let h = bitcoin::hashes::sha256::Hash::hash(&preimage).to_byte_array();
        let k0 = u64::from_le_bytes(h[0..8].try_into().unwrap());
        let k1 = u64::from_le_bytes(h[8..16].try_into().unwrap());
        let mut s = siphasher::sip::SipHasher24::new_with_keys(k0, k1);
        s.write(hash);
        let v = s.finish() & 0xffff_ffff_ffff;
        v.to_le_bytes()[..6].try_into().unwrap()
    }

    #[test]
    fn a_block_comes_back_whole_from_a_pool_that_has_it() {
        let b = block(50, true);
        let c = compact_block(&b, 42, &short_id_hashes(&b, true), &[]);
        assert_eq!(c.prefilled.len(), 1, "the coinbase");
        let pool = pool_of(&b.txdata[1..], true);
        let p = PartialBlock::init(
            &c,
            100_000,
            IndexWidth::Bits16,
            refs(&pool),
            std::iter::empty(),
        )
        .unwrap();
        assert!(p.missing().is_empty());
        assert_eq!(p.from_pool, 50);
        let rebuilt = p.fill(Vec::new()).unwrap();
        assert_eq!(rebuilt, b);
        // Without witnesses (this block has no commitment), it passes the fetched-block checks.
        let plain = block(50, false);
        let c = compact_block(&plain, 42, &short_id_hashes(&plain, false), &[]);
        let pool = pool_of(&plain.txdata[1..], false);
        let p = PartialBlock::init(
            &c,
            100_000,
            IndexWidth::Bits16,
            refs(&pool),
            std::iter::empty(),
        )
        .unwrap();
        check_block(&p.fill(Vec::new()).unwrap(), crate::network::Chain::Btc).unwrap();
    }

    #[test]
    fn two_candidates_for_one_short_id_leave_it_missing_and_off_the_counts() {
        // Another transaction under the same short id as a pooled one, seen first: the
        // position is asked for, and counted as found by no pool.
        let b = block(5, true);
        let c = compact_block(&b, 3, &short_id_hashes(&b, true), &[]);
        let real = pool_of(&b.txdata[1..], true);
        let mut pool = vec![(real[1].0, Arc::new(b.txdata[4].clone()))];
        pool.extend(real);
        let p = PartialBlock::init(
            &c,
            100_000,
            IndexWidth::Bits16,
            refs(&pool),
            std::iter::empty(),
        )
        .unwrap();
        assert_eq!(p.missing(), vec![2]);
        assert_eq!((p.from_pool, p.from_extra), (4, 0));
    }

    #[test]
    fn missing_transactions_are_asked_by_position_and_filled_in_order() {
        let b = block(20, true);
        let c = compact_block(&b, 1, &short_id_hashes(&b, true), &[]);
        // The pool lacks 3 and 17; the extra pool has 9 (and a copy of 5).
        let pool: Vec<_> = pool_of(&b.txdata[1..], true)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| ![2, 8, 16].contains(i))
            .map(|(_, e)| e)
            .collect();
        let extra = pool_of(&[b.txdata[9].clone(), b.txdata[5].clone()], true);
        let p =
            PartialBlock::init(&c, 100_000, IndexWidth::Bits16, refs(&pool), refs(&extra)).unwrap();
        assert_eq!(p.missing(), vec![3, 17]);
        assert_eq!(p.from_extra, 1);
        let rebuilt = p
            .fill(vec![b.txdata[3].clone(), b.txdata[17].clone()])
            .unwrap();
        assert_eq!(rebuilt, b);
    }

    #[test]
    fn a_short_id_collision_in_the_message_falls_back_to_the_full_block() {
        let b = block(4, true);
        let mut c = compact_block(&b, 1, &short_id_hashes(&b, true), &[]);
        c.short_ids[1] = c.short_ids[0];
        let err = PartialBlock::init(
            &c,
            100_000,
            IndexWidth::Bits16,
            std::iter::empty(),
            std::iter::empty(),
        );
        assert_eq!(err.unwrap_err(), ReadError::Failed("short_id_collision"));
    }

    #[test]
    fn two_pool_transactions_on_one_short_id_leave_it_to_be_asked() {
        let b = block(3, true);
        let c = compact_block(&b, 1, &short_id_hashes(&b, true), &[]);
        let keys = ShortId::calculate_siphash_keys(&c.header, c.nonce);
        // A second candidate claiming tx 1's short id under a made-up hash that collides:
        // search a few million hashes would be slow, so forge the candidate's hash instead.
        let real = short_id_hash(&b.txdata[1], true);
        let impostor = Arc::new(tx(999, 0, true));
        let pool = vec![(real, Arc::new(b.txdata[1].clone())), (real, impostor)];
        assert_eq!(ShortId::with_siphash_keys(&real, keys), c.short_ids[0]);
        let p = PartialBlock::init(
            &c,
            100_000,
            IndexWidth::Bits16,
            refs(&pool),
            std::iter::empty(),
        )
        .unwrap();
        assert!(p.missing().contains(&1), "ambiguous: asked for");
    }

    #[test]
    fn malformed_compact_blocks_are_invalid() {
        let b = block(2, true);
        let c = compact_block(&b, 1, &short_id_hashes(&b, true), &[]);
        let mut empty = c.clone();
        empty.short_ids.clear();
        empty.prefilled.clear();
        let mut gap = c.clone();
        gap.prefilled[0].gap = 5;
        let none = std::iter::empty::<([u8; 32], &Arc<Transaction>)>;
        assert_eq!(
            PartialBlock::init(&empty, 10, IndexWidth::Bits16, none(), none()).unwrap_err(),
            ReadError::Invalid("cmpctblock_empty")
        );
        assert_eq!(
            PartialBlock::init(&gap, 10, IndexWidth::Bits16, none(), none()).unwrap_err(),
            ReadError::Invalid("cmpctblock_bad_index")
        );
        assert_eq!(
            PartialBlock::init(&c, 2, IndexWidth::Bits16, none(), none()).unwrap_err(),
            ReadError::Failed("cmpctblock_too_many_txs")
        );
        // Past 16 bits (Core's limit, not ours on BSV): a free decoding failure.
        let mut wide = c.clone();
        let id = wide.short_ids[0];
        wide.short_ids = vec![id; 65_535];
        assert_eq!(
            PartialBlock::init(&wide, 100_000, IndexWidth::Bits16, none(), none()).unwrap_err(),
            ReadError::Failed("cmpctblock_indexes_overflowed")
        );
        assert_ne!(
            PartialBlock::init(&wide, 100_000, IndexWidth::Bits32, none(), none()).unwrap_err(),
            ReadError::Failed("cmpctblock_indexes_overflowed"),
            "BSV's 32-bit indexes take it (the repeated short id then collides)"
        );
        let p = PartialBlock::init(&c, 10, IndexWidth::Bits16, none(), none()).unwrap();
        assert_eq!(
            p.fill(vec![]).unwrap_err(),
            ReadError::Invalid("blocktxn_wrong_count")
        );
    }

    #[test]
    fn what_we_lacked_is_prefilled_under_ten_kilobytes() {
        let b = block(10, true);
        let c = compact_block(&b, 1, &short_id_hashes(&b, true), &[4, 2, 2, 0, 99]);
        let mut at = -1i64;
        let positions: Vec<i64> = c
            .prefilled
            .iter()
            .map(|p| {
                at += i64::from(p.gap) + 1;
                at
            })
            .collect();
        assert_eq!(positions, vec![0, 2, 4]);
        assert_eq!(c.short_ids.len(), 8);
    }

    #[test]
    fn getblocktxn_is_answered_within_core_depth_limits() {
        let b = block(5, true);
        let req = TxnRequest::new(b.block_hash(), &[1, 4]);
        match answer_getblocktxn(&req, &b, MAX_BLOCKTXN_DEPTH, Chain::Btc) {
            TxnAnswer::Txn(t) => assert_eq!(
                t.transactions,
                vec![b.txdata[1].clone(), b.txdata[4].clone()]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            answer_getblocktxn(&req, &b, MAX_BLOCKTXN_DEPTH + 1, Chain::Btc),
            TxnAnswer::FullBlock
        );
        let bad = TxnRequest::new(b.block_hash(), &[6]);
        assert_eq!(
            answer_getblocktxn(&bad, &b, 0, Chain::Btc),
            TxnAnswer::OutOfRange
        );
        assert_eq!(
            answer_getblocktxn(&bad, &b, 0, Chain::Bsv),
            TxnAnswer::OutOfRange
        );
    }

    #[test]
    fn on_bsv_nearly_all_of_a_block_asked_is_answered_with_the_block() {
        // The SV node's -maxblocktxnpercent (99): above it, the whole block; Core always
        // answers within its depth.
        let b = block(199, false);
        let ask = |n: u64| TxnRequest::new(b.block_hash(), &(0..n).collect::<Vec<_>>());
        assert!(matches!(
            answer_getblocktxn(&ask(198), &b, 0, Chain::Bsv),
            TxnAnswer::Txn(_)
        ));
        assert_eq!(
            answer_getblocktxn(&ask(199), &b, 0, Chain::Bsv),
            TxnAnswer::FullBlock
        );
        assert!(matches!(
            answer_getblocktxn(&ask(199), &b, 0, Chain::Btc),
            TxnAnswer::Txn(_)
        ));
    }

    #[test]
    fn high_bandwidth_peers_are_the_last_three_block_givers_keeping_one_outbound() {
        let inbound = |p: PeerId| p.0 >= 10;
        let mut hb = HighBandwidth::default();
        assert_eq!(
            hb.block_from(PeerId(1), inbound),
            vec![SendCmpct {
                peer: PeerId(1),
                high: true
            }]
        );
        hb.block_from(PeerId(10), inbound);
        hb.block_from(PeerId(11), inbound);
        assert_eq!(hb.len(), 3);
        // A fourth, inbound: the oldest would be the only outbound one; the next goes.
        let sent = hb.block_from(PeerId(12), inbound);
        assert_eq!(
            sent,
            vec![
                SendCmpct {
                    peer: PeerId(10),
                    high: false
                },
                SendCmpct {
                    peer: PeerId(12),
                    high: true
                }
            ]
        );
        assert!(hb.contains(PeerId(1)));
        // A known one moves to the back and nothing is sent.
        assert!(hb.block_from(PeerId(11), inbound).is_empty());
        hb.peer_gone(PeerId(1));
        assert!(!hb.contains(PeerId(1)));
    }

    #[test]
    fn the_extra_pool_is_bounded_in_count_and_bytes() {
        let mut x = ExtraPool::default();
        for i in 0..(MAX_EXTRA_TXN as u32 + 10) {
            let t = tx(i + 1, 0, false);
            x.push(short_id_hash(&t, true), Arc::new(t));
        }
        assert_eq!(x.len(), MAX_EXTRA_TXN);
    }

    proptest! {
        /// Short ids are BIP152's construction, for wtxids and txids alike.
        #[test]
        fn short_ids_follow_bip152(nonce in any::<u64>(), n in 1u32..30, by_wtxid in any::<bool>()) {
            let b = block(n, true);
            let c = compact_block(&b, nonce, &short_id_hashes(&b, by_wtxid), &[]);
            for (tx, id) in b.txdata[1..].iter().zip(&c.short_ids) {
                let want = bip152_short_id(&b.header, nonce, &short_id_hash(tx, by_wtxid));
                let id: &[u8] = id.as_ref();
                prop_assert_eq!(id, &want[..]);
            }
        }

        /// Whatever the pool holds, reconstruction gives the block back once the missing
        /// positions are sent, and asks for exactly what the pool lacked.
        #[test]
        fn reconstruction_round_trips(
            n in 1u32..60,
            have in proptest::collection::vec(any::<bool>(), 60),
            noise in 0u32..20,
            nonce in any::<u64>(),
        ) {
            let b = block(n, true);
            let c = compact_block(&b, nonce, &short_id_hashes(&b, true), &[]);
            let mut pool: Vec<Transaction> = b.txdata[1..]
                .iter()
                .zip(&have)
                .filter(|(_, h)| **h)
                .map(|(t, _)| t.clone())
                .collect();
            pool.extend((0..noise).map(|i| tx(10_000 + i, 1, true)));
            let pool = pool_of(&pool, true);
            let p = PartialBlock::init(&c, 100_000, IndexWidth::Bits16, refs(&pool), std::iter::empty()).unwrap();
            let missing = p.missing();
            let lacked: Vec<u64> = (1..=n as u64).filter(|i| !have[*i as usize - 1]).collect();
            prop_assert_eq!(&missing, &lacked);
            let sent = missing.iter().map(|i| b.txdata[*i as usize].clone()).collect();
            prop_assert_eq!(p.fill(sent).unwrap(), b);
        }

        /// Arbitrary prefilled positions and counts never panic, and an accepted message's
        /// gaps match its short ids.
        #[test]
        fn arbitrary_compact_blocks_never_panic(
            idx in proptest::collection::vec(any::<u16>(), 0..8),
            short in 0usize..40,
        ) {
            let b = block(2, false);
            let c = CompactBlock {
                header: b.header,
                nonce: 0,
                short_ids: (0..short).map(|i| ShortId::from([i as u8, (i >> 8) as u8, 0, 0, 0, 1])).collect(),
                prefilled: idx
                    .iter()
                    .map(|i| PrefilledTx { gap: u32::from(*i), tx: b.txdata[0].clone() })
                    .collect(),
            };
            if let Ok(p) = PartialBlock::init(&c, 100_000, IndexWidth::Bits16, std::iter::empty(), std::iter::empty()) {
                prop_assert_eq!(p.missing().len(), short);
            }
        }
    }
}
