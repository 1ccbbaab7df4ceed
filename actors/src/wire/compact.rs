//! BIP152's `cmpctblock` and `getblocktxn` payloads as both chains carry them.
//!
//! The encodings are BIP152's on both chains; what differs is how wide an index may be.
//! Bitcoin Core holds prefilled and requested indexes to 16 bits (blockencodings.h:
//! `PrefilledTransaction::index` is a `uint16_t`, "index overflowed 16 bits"). The SV node
//! widened both to 32 bits for its large blocks (bitcoin-sv v1.x, src/blockencodings.h:
//! `PrefilledTransaction::index` and `BlockTransactionsRequest::indices` are `uint32_t`,
//! "index overflowed 32 bits"). rust-bitcoin's `bip152` types follow Core (16-bit prefilled
//! gaps, and a `getblocktxn` decoder that refuses indexes past 16 bits), so these two
//! messages are decoded here, for the width of the peer's chain; `sendcmpct` and `blocktxn`
//! are the same everywhere and go through rust-bitcoin.

use bitcoin::bip152::ShortId;
use bitcoin::block::Header;
use bitcoin::consensus::encode::{self, Decodable, Encodable, VarInt};
use bitcoin::hashes::Hash;
use bitcoin::{Block, BlockHash, Transaction};

use crate::network::Chain;

/// How wide a compact block's indexes may be on a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexWidth {
    /// BTC, as Core: 16 bits.
    Bits16,
    /// BSV, as the SV node: 32 bits.
    Bits32,
}

impl IndexWidth {
    /// The width on `chain`.
    pub fn of(chain: Chain) -> IndexWidth {
        match chain {
            Chain::Btc => IndexWidth::Bits16,
            Chain::Bsv => IndexWidth::Bits32,
        }
    }

    /// The largest index (absolute or differential) this width holds.
    pub fn max(self) -> u64 {
        match self {
            IndexWidth::Bits16 => u64::from(u16::MAX),
            IndexWidth::Bits32 => u64::from(u32::MAX),
        }
    }
}

/// One transaction a compact block carries whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefilledTx {
    /// Its position, as on the wire: the gap after the previous prefilled one (BIP152's
    /// differential encoding).
    pub gap: u32,
    /// The transaction.
    pub tx: Transaction,
}

/// A `cmpctblock` payload (BIP152's `HeaderAndShortIDs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactBlock {
    /// The block's header.
    pub header: Header,
    /// The nonce the short ids are keyed with.
    pub nonce: u64,
    /// Short ids of the transactions not prefilled, in block order.
    pub short_ids: Vec<ShortId>,
    /// The transactions sent whole (the coinbase at least).
    pub prefilled: Vec<PrefilledTx>,
}

/// Bytes a short id takes.
const SHORT_ID_LEN: usize = 6;
/// The fewest bytes a prefilled entry takes (a one-byte gap and the smallest transaction
/// rust-bitcoin decodes): bounds how many a payload can hold before any is read.
const MIN_PREFILLED_LEN: usize = 1 + 10;
/// Items reserved ahead of reading for a count a peer sent (prefilled transactions,
/// `getblocktxn` indexes): their in-memory size is a multiple of their wire size, so a
/// message claiming many reserves no more than this before they are read.
const MAX_PREALLOCATED_ITEMS: usize = 1024;

/// The hash a transaction's short id is computed from: its wtxid (`by_wtxid`, version 2)
/// or its txid (version 1).
pub fn short_id_hash(tx: &Transaction, by_wtxid: bool) -> [u8; 32] {
    if by_wtxid {
        tx.compute_wtxid().to_byte_array()
    } else {
        tx.compute_txid().to_byte_array()
    }
}

impl CompactBlock {
    /// The compact block of `block` keyed with `nonce`, short ids of wtxids (`by_wtxid`,
    /// BIP152 version 2) or txids (version 1), with the coinbase and the transactions at
    /// `prefill` (positions in the block; out-of-range ones and duplicates are dropped)
    /// carried whole.
    pub fn from_block(
        block: &Block,
        nonce: u64,
        by_wtxid: bool,
        prefill: &[usize],
    ) -> CompactBlock {
        let hashes: Vec<[u8; 32]> = block
            .txdata
            .iter()
            .map(|tx| short_id_hash(tx, by_wtxid))
            .collect();
        CompactBlock::from_hashed_block(block, nonce, &hashes, prefill)
    }

    /// [`CompactBlock::from_block`] with each transaction's short-id hash (wtxid or txid)
    /// already known: `hashes[i]` is transaction `i`'s (a missing one is taken as zeros,
    /// which only a caller's bug leaves out).
    pub fn from_hashed_block(
        block: &Block,
        nonce: u64,
        hashes: &[[u8; 32]],
        prefill: &[usize],
    ) -> CompactBlock {
        let mut whole: Vec<usize> = prefill
            .iter()
            .copied()
            .filter(|i| *i > 0 && *i < block.txdata.len())
            .collect();
        whole.push(0);
        whole.sort_unstable();
        whole.dedup();
        if block.txdata.is_empty() {
            whole.clear();
        }
        let keys = ShortId::calculate_siphash_keys(&block.header, nonce);
        let mut short_ids = Vec::with_capacity(block.txdata.len().saturating_sub(whole.len()));
        let mut prefilled = Vec::with_capacity(whole.len());
        let mut next_whole = whole.iter().peekable();
        let mut last_prefilled: Option<usize> = None;
        for (at, tx) in block.txdata.iter().enumerate() {
            if next_whole.peek() == Some(&&at) {
                next_whole.next();
                let gap = match last_prefilled {
                    None => at,
                    Some(last) => at - last - 1,
                };
                last_prefilled = Some(at);
                prefilled.push(PrefilledTx {
                    gap: u32::try_from(gap).unwrap_or(u32::MAX),
                    tx: tx.clone(),
                });
            } else {
                let hash = hashes.get(at).copied().unwrap_or([0u8; 32]);
                short_ids.push(ShortId::with_siphash_keys(&hash, keys));
            }
        }
        CompactBlock {
            header: block.header,
            nonce,
            short_ids,
            prefilled,
        }
    }

    /// rust-bitcoin's form of it, when every prefilled gap fits its 16 bits.
    pub fn to_rust_bitcoin(&self) -> Option<bitcoin::bip152::HeaderAndShortIds> {
        let prefilled_txs = self
            .prefilled
            .iter()
            .map(|p| {
                Some(bitcoin::bip152::PrefilledTransaction {
                    idx: u16::try_from(p.gap).ok()?,
                    tx: p.tx.clone(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(bitcoin::bip152::HeaderAndShortIds {
            header: self.header,
            nonce: self.nonce,
            short_ids: self.short_ids.clone(),
            prefilled_txs,
        })
    }

    /// Transactions in the block it stands for.
    pub fn tx_count(&self) -> usize {
        self.short_ids.len() + self.prefilled.len()
    }

    /// Decodes a payload, with indexes of `width`, from the front of `r`.
    pub fn decode(r: &mut &[u8], width: IndexWidth) -> Result<CompactBlock, encode::Error> {
        let header = Header::consensus_decode_from_finite_reader(r)?;
        let nonce = u64::consensus_decode_from_finite_reader(r)?;
        let count = VarInt::consensus_decode_from_finite_reader(r)?.0;
        // Each takes six bytes: a count the rest cannot hold allocates nothing.
        if count > (r.len() / SHORT_ID_LEN) as u64 {
            return Err(encode::Error::ParseFailed(
                "more short ids than the payload holds",
            ));
        }
        let mut short_ids = Vec::with_capacity(count as usize);
        for _ in 0..count {
            short_ids.push(ShortId::consensus_decode_from_finite_reader(r)?);
        }
        let count = VarInt::consensus_decode_from_finite_reader(r)?.0;
        if count > (r.len() / MIN_PREFILLED_LEN) as u64 {
            return Err(encode::Error::ParseFailed(
                "more prefilled transactions than the payload holds",
            ));
        }
        // In memory a prefilled transaction is several times its smallest wire form: room
        // grows with what is actually read, not with what the count claims.
        let mut prefilled = Vec::with_capacity((count as usize).min(MAX_PREALLOCATED_ITEMS));
        for _ in 0..count {
            let gap = VarInt::consensus_decode_from_finite_reader(r)?.0;
            if gap > width.max() {
                return Err(encode::Error::ParseFailed("prefilled index overflowed"));
            }
            let tx = Transaction::consensus_decode_from_finite_reader(r)?;
            prefilled.push(PrefilledTx {
                gap: gap as u32,
                tx,
            });
        }
        Ok(CompactBlock {
            header,
            nonce,
            short_ids,
            prefilled,
        })
    }
}

impl Encodable for CompactBlock {
    fn consensus_encode<W: bitcoin::io::Write + ?Sized>(
        &self,
        w: &mut W,
    ) -> Result<usize, bitcoin::io::Error> {
        let mut len = self.header.consensus_encode(w)?;
        len += self.nonce.consensus_encode(w)?;
        len += VarInt(self.short_ids.len() as u64).consensus_encode(w)?;
        for id in &self.short_ids {
            len += id.consensus_encode(w)?;
        }
        len += VarInt(self.prefilled.len() as u64).consensus_encode(w)?;
        for p in &self.prefilled {
            len += VarInt(u64::from(p.gap)).consensus_encode(w)?;
            len += p.tx.consensus_encode(w)?;
        }
        Ok(len)
    }
}

/// A `getblocktxn` request as a peer sent it: the block, and the indexes asked for kept in
/// their wire encoding (differential compact sizes, checked when read) and decoded as they
/// are iterated.
///
/// # Security
/// Decoded into `u64`s, as rust-bitcoin's `BlockTransactionsRequest` holds them, a
/// request of one-byte gaps takes eight times its wire size: a BSV `getblocktxn` may be
/// megabytes long (see `PayloadLimits::getblocktxn`). Kept encoded it takes its own size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRequest {
    /// The block whose transactions are asked for.
    pub block_hash: BlockHash,
    /// How many indexes `encoded` holds.
    count: usize,
    /// The gaps as they came, each a canonical compact size within the chain's width.
    encoded: Box<[u8]>,
}

impl TxnRequest {
    /// A request for `indexes` (ascending, as BIP152 requires) of `block_hash`.
    pub fn new(block_hash: BlockHash, indexes: &[u64]) -> TxnRequest {
        let mut encoded = Vec::with_capacity(indexes.len());
        let mut next = 0u64;
        for &index in indexes {
            // Writing to a Vec cannot fail.
            let _ = VarInt(index.saturating_sub(next)).consensus_encode(&mut encoded);
            next = index.saturating_add(1);
        }
        TxnRequest {
            block_hash,
            count: indexes.len(),
            encoded: encoded.into_boxed_slice(),
        }
    }

    /// How many transactions are asked for.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The absolute indexes asked for, in order.
    pub fn indexes(&self) -> impl Iterator<Item = u64> + '_ {
        let mut r: &[u8] = &self.encoded;
        let mut next = 0u64;
        (0..self.count).map_while(move |_| {
            // Checked when decoded (or written by `new`): a failure here ends the list.
            let gap = VarInt::consensus_decode(&mut r).ok()?.0;
            let index = next.checked_add(gap)?;
            next = index.checked_add(1)?;
            Some(index)
        })
    }

    /// Bytes its encoded indexes take.
    pub fn encoded_len(&self) -> usize {
        self.encoded.len()
    }

    /// As rust-bitcoin's type, its indexes decoded (for tools and tests that read it so).
    pub fn to_rust_bitcoin(&self) -> bitcoin::bip152::BlockTransactionsRequest {
        bitcoin::bip152::BlockTransactionsRequest {
            block_hash: self.block_hash,
            indexes: self.indexes().collect(),
        }
    }
}

impl Encodable for TxnRequest {
    fn consensus_encode<W: bitcoin::io::Write + ?Sized>(
        &self,
        w: &mut W,
    ) -> Result<usize, bitcoin::io::Error> {
        let mut len = self.block_hash.consensus_encode(w)?;
        len += VarInt(self.count as u64).consensus_encode(w)?;
        w.write_all(&self.encoded)?;
        Ok(len + self.encoded.len())
    }
}

/// Decodes a `getblocktxn` payload with indexes of `width` from the front of `r`: the
/// block hash, then differentially encoded indexes, each absolute one within `width`
/// (the SV node's "indices overflowed 32 bits", Core's 16 bits). At most `max_indexes`.
pub fn decode_getblocktxn(
    r: &mut &[u8],
    width: IndexWidth,
    max_indexes: usize,
) -> Result<TxnRequest, encode::Error> {
    let block_hash = BlockHash::consensus_decode_from_finite_reader(r)?;
    let count = VarInt::consensus_decode_from_finite_reader(r)?.0;
    // Each takes a byte at least.
    if count > max_indexes as u64 || count > r.len() as u64 {
        return Err(encode::Error::ParseFailed("more indexes than allowed"));
    }
    let start: &[u8] = r;
    let mut next: u64 = 0;
    for _ in 0..count {
        let gap = VarInt::consensus_decode_from_finite_reader(r)?.0;
        if gap > width.max() {
            return Err(encode::Error::ParseFailed("index overflowed"));
        }
        let index = next + gap;
        if index > width.max() {
            return Err(encode::Error::ParseFailed("indexes overflowed"));
        }
        next = index + 1;
    }
    let used = start.len() - r.len();
    Ok(TxnRequest {
        block_hash,
        count: count as usize,
        encoded: start[..used].into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::bip152::HeaderAndShortIds;
    use bitcoin::consensus::serialize;

    fn block(n: usize) -> Block {
        let mut b: Block = bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest);
        let cb = b.txdata[0].clone();
        for i in 1..n {
            let mut tx = cb.clone();
            tx.lock_time = bitcoin::absolute::LockTime::from_consensus(i as u32);
            b.txdata.push(tx);
        }
        b
    }

    #[test]
    fn encodes_as_rust_bitcoin_does_where_both_can() {
        let b = block(9);
        for prefill in [&[][..], &[3, 5][..], &[1, 2, 8][..]] {
            for by_wtxid in [false, true] {
                let ours = CompactBlock::from_block(&b, 42, by_wtxid, prefill);
                let version = if by_wtxid { 2 } else { 1 };
                let theirs = HeaderAndShortIds::from_block(&b, 42, version, prefill).unwrap();
                assert_eq!(serialize(&ours), serialize(&theirs));
                let bytes = serialize(&ours);
                let mut r = bytes.as_slice();
                let back = CompactBlock::decode(&mut r, IndexWidth::Bits16).unwrap();
                assert!(r.is_empty());
                assert_eq!(back, ours);
            }
        }
    }

    #[test]
    fn gaps_past_16_bits_are_bsv_only() {
        let mut c = CompactBlock::from_block(&block(2), 7, false, &[]);
        c.prefilled[0].gap = 70_000;
        let bytes = serialize(&c);
        let mut r = bytes.as_slice();
        assert!(CompactBlock::decode(&mut r, IndexWidth::Bits16).is_err());
        let mut r = bytes.as_slice();
        assert_eq!(CompactBlock::decode(&mut r, IndexWidth::Bits32).unwrap(), c);
    }

    #[test]
    fn a_huge_count_allocates_nothing() {
        let c = CompactBlock::from_block(&block(1), 7, false, &[]);
        let mut bytes = serialize(&c.header);
        bytes.extend_from_slice(&7u64.to_le_bytes());
        bytes.extend_from_slice(&serialize(&VarInt(u64::MAX)));
        let mut r = bytes.as_slice();
        assert!(CompactBlock::decode(&mut r, IndexWidth::Bits32).is_err());
    }

    #[test]
    fn getblocktxn_indexes_follow_the_width() {
        // Core's own encoding (rust-bitcoin's) decodes to the same indexes.
        let core = |indexes: Vec<u64>| {
            serialize(&bitcoin::bip152::BlockTransactionsRequest {
                block_hash: BlockHash::all_zeros(),
                indexes,
            })
        };
        let wide = vec![3, 70_000, 70_001, 4_000_000];
        let bytes = core(wide.clone());
        let mut r = bytes.as_slice();
        let req = decode_getblocktxn(&mut r, IndexWidth::Bits32, 10).unwrap();
        assert_eq!(req.indexes().collect::<Vec<_>>(), wide);
        assert_eq!(req, TxnRequest::new(BlockHash::all_zeros(), &wide));
        assert_eq!(serialize(&req), bytes);
        let mut r = bytes.as_slice();
        assert!(decode_getblocktxn(&mut r, IndexWidth::Bits16, 10).is_err());
        let mut r = bytes.as_slice();
        assert!(decode_getblocktxn(&mut r, IndexWidth::Bits32, 3).is_err());
        let narrow = vec![0, 1, 5, 65_535];
        let bytes = core(narrow.clone());
        let mut r = bytes.as_slice();
        let req = decode_getblocktxn(&mut r, IndexWidth::Bits16, 10).unwrap();
        assert_eq!(req.indexes().collect::<Vec<_>>(), narrow);
        assert_eq!(req.len(), 4);
        // An absolute index past 32 bits, in two steps.
        let bytes = core(vec![u64::from(u32::MAX) - 1, u64::from(u32::MAX) + 1]);
        let mut r = bytes.as_slice();
        assert!(decode_getblocktxn(&mut r, IndexWidth::Bits32, 10).is_err());
    }

    #[test]
    fn a_getblocktxn_takes_its_wire_size_in_memory() {
        // 100,000 one-byte gaps: 100 kB on the wire, and as encoded in memory (as `u64`s,
        // 800 kB).
        let indexes: Vec<u64> = (0..100_000).collect();
        let bytes = serialize(&bitcoin::bip152::BlockTransactionsRequest {
            block_hash: BlockHash::all_zeros(),
            indexes: indexes.clone(),
        });
        let mut r = bytes.as_slice();
        let req = decode_getblocktxn(&mut r, IndexWidth::Bits32, 200_000).unwrap();
        assert_eq!(req.encoded_len(), 100_000);
        assert!(req.indexes().eq(indexes.into_iter()));
    }
}
