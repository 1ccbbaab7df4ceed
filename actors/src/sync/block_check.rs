//! Checks of a block's body against its header, as a sans-IO core, after Core's
//! `IsBlockMutated` (validation.cpp) and the coinbase rules of `CheckBlock`: the merkle root,
//! the mutation Core detects while computing it (CVE-2012-2459: a transaction list with a
//! duplicated tail hashes to the same root as the honest one), a coinbase first and only
//! first (without one, any 64-byte transaction makes the block mutated: it can pose as an
//! inner merkle node), and on BTC Core's `CheckWitnessMalleation`: a block whose coinbase
//! commits to witnesses must carry a 32-byte witness nonce and the witnesses it commits to
//! (a witness-stripped copy fails here; rust-bitcoin's own check passes it, since it asks for
//! nothing when no input carries a witness), and a block without a commitment may carry no
//! witness at all. BSV has no segwit: an output that looks like a commitment is only data.
//! A block that fails is not kept, not served and not credited to its sender.

use bitcoin::hashes::{sha256d, Hash};
use bitcoin::{Block, Txid, WitnessCommitment};

use crate::network::Chain;

/// The start of a witness commitment output (BIP141: OP_RETURN, push 36, 0xaa21a9ed).
const WITNESS_COMMITMENT_MAGIC: [u8; 6] = [0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];
/// Bytes of a witness commitment output script at least (the magic and the 32-byte hash).
const MIN_WITNESS_COMMITMENT_LEN: usize = 38;
/// A transaction of this size without witness can pose as an inner merkle node (64 bytes:
/// two hashes), Core's `IsBlockMutated` rule for blocks without a coinbase.
const MERKLE_NODE_SIZE: usize = 64;

/// Why a block body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// No transactions at all.
    #[error("block has no transactions")]
    Empty,
    /// The transactions do not hash to the header's merkle root.
    #[error("merkle root does not match the header")]
    BadMerkleRoot,
    /// The merkle tree has two identical siblings: a mutated copy of a valid block.
    #[error("mutated transaction list (duplicate merkle siblings)")]
    Mutated,
    /// The witness commitment in the coinbase does not match the witnesses (a stripped
    /// copy), or the coinbase's witness nonce is not one 32-byte item (Core:
    /// `bad-witness-merkle-match`, `bad-witness-nonce-size`).
    #[error("witness commitment does not match")]
    BadWitnessCommitment,
    /// Witnesses in a block that commits to none (Core: `unexpected-witness`).
    #[error("witness data without a witness commitment")]
    UnexpectedWitness,
    /// The first transaction is not a coinbase, or another one is (Core: `bad-cb-missing`,
    /// `bad-cb-multiple`).
    #[error("the coinbase is missing, or not only first")]
    BadCoinbase,
    /// Above BTC's size limits: more transactions or more bytes without witnesses than
    /// [`MAX_BLOCK_WEIGHT`] allows, or a weight above it (Core's CheckBlock `bad-blk-length`
    /// and ContextualCheckBlock `bad-blk-weight`). The reader bounds a whole block's frame
    /// (4 MB on BTC), but 4 MB without witnesses weighs 16 million; a reconstructed block
    /// has no frame at all.
    #[error("block above the weight limit")]
    TooHeavy,
}

/// BIP141's block weight limit (Core's `MAX_BLOCK_WEIGHT`).
pub const MAX_BLOCK_WEIGHT: usize = 4_000_000;
/// Weight of a byte outside witnesses (Core's `WITNESS_SCALE_FACTOR`).
const WITNESS_SCALE_FACTOR: usize = 4;

impl BlockError {
    /// Whether a reconstructed block failing so may be our reconstruction's fault (a
    /// short-id collision put a wrong transaction in, or a peer added a witness the merkle
    /// root does not commit to): the merkle tree's checks and the witness checks (Core's
    /// BLOCK_MUTATED). The rest are the block's own.
    pub fn may_be_collision(&self) -> bool {
        matches!(
            self,
            BlockError::BadMerkleRoot
                | BlockError::Mutated
                | BlockError::BadWitnessCommitment
                | BlockError::UnexpectedWitness
                | BlockError::Empty
        )
    }

    /// A stable name for metrics and misbehaviour costs.
    pub fn kind(&self) -> &'static str {
        match self {
            BlockError::Empty | BlockError::Mutated => "block_mutated",
            BlockError::BadMerkleRoot => "block_bad_merkle_root",
            BlockError::BadWitnessCommitment | BlockError::UnexpectedWitness => {
                "block_bad_witness_commitment"
            }
            BlockError::BadCoinbase => "block_mutated",
            BlockError::TooHeavy => "block_bad_length",
        }
    }
}

/// Whether computing the merkle root over `hashes` meets two identical siblings at any level
/// (Core's `ComputeMerkleRoot(.., &mutated)`).
pub fn merkle_mutated(hashes: Vec<[u8; 32]>) -> bool {
    merkle_root_mutated(hashes).1
}

/// The merkle root of `hashes` (leaves in order) and whether the tree is mutated, in one
/// pass. The root of no leaves is all zeros.
pub fn merkle_root_mutated(mut hashes: Vec<[u8; 32]>) -> ([u8; 32], bool) {
    let mut mutated = false;
    while hashes.len() > 1 {
        for pair in hashes.chunks(2) {
            if pair.len() == 2 && pair[0] == pair[1] {
                mutated = true;
            }
        }
        if hashes.len() % 2 == 1 {
            let last = hashes[hashes.len() - 1];
            hashes.push(last);
        }
        hashes = hashes
            .chunks(2)
            .map(|p| {
                let mut both = [0u8; 64];
                both[..32].copy_from_slice(&p[0]);
                both[32..].copy_from_slice(&p[1]);
                sha256d::Hash::hash(&both).to_byte_array()
            })
            .collect();
    }
    (hashes.first().copied().unwrap_or([0u8; 32]), mutated)
}

/// Checks `block`'s transactions against its header, with `chain`'s rules.
pub fn check_block(block: &Block, chain: Chain) -> Result<(), BlockError> {
    check_block_txids(block, chain).map(|_| ())
}

/// [`check_block`], returning the block's txids in order: each transaction is hashed once,
/// for the merkle root, the mutation check and whatever the caller does with them next.
pub fn check_block_txids(block: &Block, chain: Chain) -> Result<Vec<Txid>, BlockError> {
    check_block_known(block, chain, &[])
}

/// [`check_block_txids`] for a block rebuilt from our pools: `known[i]`, when set, is the
/// hash we computed ourselves when transaction `i` entered a pool, the one its short id is
/// of (the wtxid on BTC, the txid on BSV), so it is not hashed again. A transaction without
/// a witness has its txid for wtxid. Anything not known (or past `known`'s end) is hashed.
pub fn check_block_known(
    block: &Block,
    chain: Chain,
    known: &[Option<[u8; 32]>],
) -> Result<Vec<Txid>, BlockError> {
    if block.txdata.is_empty() {
        return Err(BlockError::Empty);
    }
    let txids: Vec<Txid> = block
        .txdata
        .iter()
        .enumerate()
        .map(|(i, t)| match known_at(known, i) {
            Some(h) if chain == Chain::Bsv || !has_witness(t) => Txid::from_byte_array(h),
            _ => t.compute_txid(),
        })
        .collect();
    let (root, mutated) = merkle_root_mutated(txids.iter().map(|t| t.to_byte_array()).collect());
    if root != block.header.merkle_root.to_byte_array() {
        return Err(BlockError::BadMerkleRoot);
    }
    if mutated {
        return Err(BlockError::Mutated);
    }
    if !block.txdata[0].is_coinbase() {
        // Core's IsBlockMutated: a 64-byte transaction may be an inner node posing as a leaf.
        let posing = block
            .txdata
            .iter()
            .any(|t| t.base_size() == MERKLE_NODE_SIZE);
        return Err(if posing {
            BlockError::Mutated
        } else {
            BlockError::BadCoinbase
        });
    }
    if block.txdata[1..].iter().any(|t| t.is_coinbase()) {
        return Err(BlockError::BadCoinbase);
    }
    match chain {
        Chain::Btc => {
            // Core's order: the length limits (CheckBlock), the witness commitment, then
            // the weight (ContextualCheckBlock): padding a witness leaves the block's hash
            // alone, so a padded copy must read as malleated, not as a heavy block.
            let weight = check_length(block)?;
            check_witness_malleation(block, &txids, known)?;
            if weight > MAX_BLOCK_WEIGHT {
                return Err(BlockError::TooHeavy);
            }
        }
        // BSV has no segwit: a witness (rust-bitcoin reads the marker on any chain) leaves
        // the txid and so the merkle root alone, and would be served on to peers that
        // cannot parse it.
        Chain::Bsv => {
            if block
                .txdata
                .iter()
                .any(|t| t.input.iter().any(|i| !i.witness.is_empty()))
            {
                return Err(BlockError::UnexpectedWitness);
            }
        }
    }
    Ok(txids)
}

/// Core's CheckBlock length limits of a BTC block (see [`BlockError::TooHeavy`]): the
/// transaction count and the size without witnesses. Returns the block's weight.
fn check_length(block: &Block) -> Result<usize, BlockError> {
    if block.txdata.len() * WITNESS_SCALE_FACTOR > MAX_BLOCK_WEIGHT {
        return Err(BlockError::TooHeavy);
    }
    // Weight: bytes without witnesses count four times, witness bytes once.
    let weight = block.weight().to_wu() as usize;
    let base = weight.saturating_sub(block.total_size()) / (WITNESS_SCALE_FACTOR - 1);
    if base * WITNESS_SCALE_FACTOR > MAX_BLOCK_WEIGHT {
        return Err(BlockError::TooHeavy);
    }
    Ok(weight)
}

/// Whether `tx`'s wtxid may differ from its txid: it carries a witness, or it has no inputs
/// (rust-bitcoin then writes the segwit marker, so its wtxid is of other bytes).
pub(crate) fn has_witness(tx: &bitcoin::Transaction) -> bool {
    tx.input.is_empty() || tx.input.iter().any(|i| !i.witness.is_empty())
}

/// `known[i]`, when there is one.
fn known_at(known: &[Option<[u8; 32]>], i: usize) -> Option<[u8; 32]> {
    known.get(i).copied().flatten()
}

/// Core's `CheckWitnessMalleation` (segwit active): the commitment, when the coinbase has
/// one, must match the witnesses with a 32-byte nonce; without one, no witness at all.
/// `txids` are the block's; `known` as in [`check_block_known`] (wtxids).
fn check_witness_malleation(
    block: &Block,
    txids: &[Txid],
    known: &[Option<[u8; 32]>],
) -> Result<(), BlockError> {
    let coinbase = &block.txdata[0];
    let commitment = coinbase.output.iter().rev().find_map(|o| {
        let script = o.script_pubkey.as_bytes();
        (script.len() >= MIN_WITNESS_COMMITMENT_LEN
            && script[..WITNESS_COMMITMENT_MAGIC.len()] == WITNESS_COMMITMENT_MAGIC)
            .then(|| WitnessCommitment::from_slice(&script[6..38]).ok())
            .flatten()
    });
    let Some(commitment) = commitment else {
        return if block
            .txdata
            .iter()
            .any(|t| t.input.iter().any(|i| !i.witness.is_empty()))
        {
            Err(BlockError::UnexpectedWitness)
        } else {
            Ok(())
        };
    };
    let nonce: Vec<&[u8]> = coinbase
        .input
        .first()
        .map(|i| i.witness.iter().collect())
        .unwrap_or_default();
    if nonce.len() != 1 || nonce[0].len() != 32 {
        return Err(BlockError::BadWitnessCommitment);
    }
    // BIP141's witness root: the coinbase's wtxid taken as zeros; a transaction without a
    // witness has its txid for wtxid, and a known one is not hashed again.
    let wtxids: Vec<[u8; 32]> = block
        .txdata
        .iter()
        .zip(txids)
        .enumerate()
        .map(|(i, (tx, txid))| {
            if i == 0 {
                [0u8; 32]
            } else if !has_witness(tx) {
                txid.to_byte_array()
            } else if let Some(h) = known_at(known, i) {
                h
            } else {
                tx.compute_wtxid().to_byte_array()
            }
        })
        .collect();
    let root = bitcoin::WitnessMerkleNode::from_byte_array(merkle_root_mutated(wtxids).0);
    if Block::compute_witness_commitment(&root, nonce[0]) != commitment {
        return Err(BlockError::BadWitnessCommitment);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkId;

    fn block_with(n: u32) -> Block {
        let genesis = NetworkId::Regtest.profile().genesis;
        let mut b = crate::sync::mine::regtest_block(&genesis, 1, genesis.time + 1, 0);
        for i in 1..n {
            let mut tx = b.txdata[0].clone();
            tx.input[0].previous_output.vout = i;
            tx.input[0].previous_output.txid = bitcoin::Txid::from_byte_array([i as u8; 32]);
            b.txdata.push(tx);
        }
        b.header.merkle_root = b.compute_merkle_root().unwrap();
        b
    }

    #[test]
    fn a_duplicated_tail_keeps_the_root_but_is_caught() {
        // Three transactions: the last one duplicated gives the same merkle root.
        let honest = block_with(3);
        assert_eq!(check_block(&honest, Chain::Btc), Ok(()));
        let mut mutated = honest.clone();
        mutated.txdata.push(honest.txdata[2].clone());
        assert!(mutated.check_merkle_root(), "same root: that is the attack");
        assert_eq!(check_block(&mutated, Chain::Btc), Err(BlockError::Mutated));
    }

    #[test]
    fn a_wrong_root_and_an_empty_block_are_refused() {
        let mut b = block_with(2);
        b.txdata.swap(0, 1);
        assert_eq!(check_block(&b, Chain::Btc), Err(BlockError::BadMerkleRoot));
        b.txdata.clear();
        assert_eq!(check_block(&b, Chain::Btc), Err(BlockError::Empty));
    }

    #[test]
    fn witnesses_without_a_commitment_are_refused() {
        let mut b = block_with(2);
        b.txdata[1].input[0].witness = bitcoin::Witness::from_slice(&[vec![9u8; 3]]);
        // Witnesses do not change txids, so the root still matches.
        assert!(b.check_merkle_root());
        assert_eq!(
            check_block(&b, Chain::Btc),
            Err(BlockError::UnexpectedWitness)
        );
    }

    /// A segwit block with its commitment, and the same block with its witnesses stripped.
    fn segwit_block() -> Block {
        let mut b = block_with(2);
        b.txdata[1].input[0].witness =
            bitcoin::Witness::from_slice(&[vec![7u8; 72], vec![2u8; 33]]);
        b.txdata[0].input[0].witness = bitcoin::Witness::from_slice(&[[0u8; 32]]);
        let root = b.witness_root().unwrap();
        let commitment = Block::compute_witness_commitment(&root, &[0u8; 32]);
        let mut script = WITNESS_COMMITMENT_MAGIC.to_vec();
        script.extend_from_slice(commitment.as_byte_array());
        b.txdata[0].output.push(bitcoin::TxOut {
            value: bitcoin::Amount::ZERO,
            script_pubkey: bitcoin::ScriptBuf::from_bytes(script),
        });
        b.header.merkle_root = b.compute_merkle_root().unwrap();
        b
    }

    #[test]
    fn a_block_above_the_weight_limit_is_refused_on_btc_only() {
        // 1 MB and a little without witnesses: within a 4 MB frame, above 4 million weight.
        let mut b = block_with(2);
        b.txdata[1].output[0].script_pubkey =
            bitcoin::ScriptBuf::from_bytes(vec![0x6a; MAX_BLOCK_WEIGHT / 4]);
        b.header.merkle_root = b.compute_merkle_root().unwrap();
        assert!(b.total_size() < 4_000_000);
        assert_eq!(check_block(&b, Chain::Btc), Err(BlockError::TooHeavy));
        assert_eq!(BlockError::TooHeavy.kind(), "block_bad_length");
        assert!(!BlockError::TooHeavy.may_be_collision());
        // BSV has no weight: its block size is the operator's (max-block-message-size).
        assert_eq!(check_block(&b, Chain::Bsv), Ok(()));
        // Just under: taken.
        let mut b = block_with(2);
        b.txdata[1].output[0].script_pubkey = bitcoin::ScriptBuf::from_bytes(vec![0x6a; 900_000]);
        b.header.merkle_root = b.compute_merkle_root().unwrap();
        assert_eq!(check_block(&b, Chain::Btc), Ok(()));
    }

    #[test]
    fn a_padded_witness_reads_as_malleated_not_as_a_heavy_block() {
        // Witness bytes leave the block's hash alone: a relayer padding the coinbase's
        // witness past the weight limit must not make the honest block look invalid (Core
        // checks the commitment before the weight).
        let honest = segwit_block();
        let mut padded = honest.clone();
        padded.txdata[0].input[0].witness =
            bitcoin::Witness::from_slice(&[vec![0u8; 32], vec![1u8; MAX_BLOCK_WEIGHT]]);
        assert_eq!(padded.block_hash(), honest.block_hash());
        let err = check_block(&padded, Chain::Btc).unwrap_err();
        assert_eq!(err, BlockError::BadWitnessCommitment);
        assert!(
            err.may_be_collision(),
            "the whole block is asked, not given up"
        );
    }

    #[test]
    fn hashes_known_from_the_pool_give_the_verdicts_hashing_gives() {
        // The hashes a pool holds: wtxids on BTC (the txid without a witness).
        let known = |b: &Block| -> Vec<Option<[u8; 32]>> {
            b.txdata
                .iter()
                .map(|t| Some(t.compute_wtxid().to_byte_array()))
                .collect()
        };
        let honest = segwit_block();
        let all = known(&honest);
        let txids = check_block_txids(&honest, Chain::Btc).unwrap();
        assert_eq!(
            check_block_known(&honest, Chain::Btc, &all),
            Ok(txids.clone())
        );
        // Some known, some not, or a short list: the same.
        let some = vec![None, all[1]];
        assert_eq!(check_block_known(&honest, Chain::Btc, &some), Ok(txids));
        // A witness altered after the pool hashed it cannot happen (the pool's copy is the
        // one in the block); a block whose commitment does not match is still refused, with
        // or without known hashes.
        let mut altered = honest.clone();
        altered.txdata[1].input[0].witness = bitcoin::Witness::from_slice(&[vec![8u8; 72]]);
        let altered_known = known(&altered);
        assert_eq!(
            check_block_known(&altered, Chain::Btc, &altered_known),
            Err(BlockError::BadWitnessCommitment)
        );
        // A wrong root is found whatever is known.
        let mut b = block_with(3);
        let k = known(&b);
        b.txdata.swap(1, 2);
        assert_eq!(
            check_block_known(&b, Chain::Btc, &[k[0], k[2], k[1]]),
            Err(BlockError::BadMerkleRoot)
        );
        // On BSV the known hash is the txid.
        let b = block_with(4);
        let k: Vec<_> = b
            .txdata
            .iter()
            .map(|t| Some(t.compute_txid().to_byte_array()))
            .collect();
        assert_eq!(
            check_block_known(&b, Chain::Bsv, &k),
            check_block_txids(&b, Chain::Bsv)
        );
    }

    #[test]
    fn a_witness_stripped_copy_is_refused_and_the_honest_one_kept() {
        let honest = segwit_block();
        assert_eq!(check_block(&honest, Chain::Btc), Ok(()));
        let mut stripped = honest.clone();
        for tx in &mut stripped.txdata {
            for input in &mut tx.input {
                input.witness = bitcoin::Witness::new();
            }
        }
        // Same header, same merkle root: only the witness commitment tells them apart.
        assert_eq!(stripped.block_hash(), honest.block_hash());
        assert!(stripped.check_merkle_root());
        assert!(
            stripped.check_witness_commitment(),
            "rust-bitcoin's check passes it"
        );
        assert_eq!(
            check_block(&stripped, Chain::Btc),
            Err(BlockError::BadWitnessCommitment)
        );
        // Only the coinbase's nonce stripped, or a witness altered: refused too.
        let mut no_nonce = honest.clone();
        no_nonce.txdata[0].input[0].witness = bitcoin::Witness::new();
        assert_eq!(
            check_block(&no_nonce, Chain::Btc),
            Err(BlockError::BadWitnessCommitment)
        );
        let mut altered = honest.clone();
        altered.txdata[1].input[0].witness = bitcoin::Witness::from_slice(&[vec![8u8; 72]]);
        assert_eq!(
            check_block(&altered, Chain::Btc),
            Err(BlockError::BadWitnessCommitment)
        );
        // BSV has no segwit: such outputs are data, and a witness is refused (its txid,
        // and so the merkle root, leave it out).
        assert_eq!(check_block(&stripped, Chain::Bsv), Ok(()));
        assert_eq!(
            check_block(&honest, Chain::Bsv),
            Err(BlockError::UnexpectedWitness)
        );
    }

    #[test]
    fn the_txids_returned_are_the_blocks_in_order() {
        let b = block_with(5);
        let txids = check_block_txids(&b, Chain::Btc).unwrap();
        let expect: Vec<Txid> = b.txdata.iter().map(|t| t.compute_txid()).collect();
        assert_eq!(txids, expect);
    }

    #[test]
    fn the_coinbase_comes_first_and_only_first() {
        let mut b = block_with(3);
        b.txdata.swap(0, 1);
        b.header.merkle_root = b.compute_merkle_root().unwrap();
        assert_eq!(check_block(&b, Chain::Btc), Err(BlockError::BadCoinbase));
        let mut two = block_with(2);
        let mut cb = two.txdata[0].clone();
        cb.lock_time = bitcoin::absolute::LockTime::from_consensus(1);
        two.txdata.push(cb);
        two.header.merkle_root = two.compute_merkle_root().unwrap();
        assert_eq!(check_block(&two, Chain::Btc), Err(BlockError::BadCoinbase));
    }
}
