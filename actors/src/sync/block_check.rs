//! Checks of a block's body against its header, as a sans-IO core: the merkle root, the
//! mutation Core detects while computing it (CVE-2012-2459: a transaction list with a
//! duplicated tail hashes to the same root as the honest one), and the segwit witness
//! commitment. A block that fails is not kept, not served and not credited to its sender.

use bitcoin::hashes::{sha256d, Hash};
use bitcoin::Block;

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
    /// The witness commitment in the coinbase does not match the witnesses.
    #[error("witness commitment does not match")]
    BadWitnessCommitment,
}

impl BlockError {
    /// A stable name for metrics and misbehaviour costs.
    pub fn kind(&self) -> &'static str {
        match self {
            BlockError::Empty | BlockError::Mutated => "block_mutated",
            BlockError::BadMerkleRoot => "block_bad_merkle_root",
            BlockError::BadWitnessCommitment => "block_bad_witness_commitment",
        }
    }
}

/// Whether computing the merkle root over `hashes` meets two identical siblings at any level
/// (Core's `ComputeMerkleRoot(.., &mutated)`).
pub fn merkle_mutated(mut hashes: Vec<[u8; 32]>) -> bool {
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
    mutated
}

/// Checks `block`'s transactions against its header.
pub fn check_block(block: &Block) -> Result<(), BlockError> {
    if block.txdata.is_empty() {
        return Err(BlockError::Empty);
    }
    if !block.check_merkle_root() {
        return Err(BlockError::BadMerkleRoot);
    }
    let txids = block
        .txdata
        .iter()
        .map(|t| t.compute_txid().to_byte_array())
        .collect();
    if merkle_mutated(txids) {
        return Err(BlockError::Mutated);
    }
    if !block.check_witness_commitment() {
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
        assert_eq!(check_block(&honest), Ok(()));
        let mut mutated = honest.clone();
        mutated.txdata.push(honest.txdata[2].clone());
        assert!(mutated.check_merkle_root(), "same root: that is the attack");
        assert_eq!(check_block(&mutated), Err(BlockError::Mutated));
    }

    #[test]
    fn a_wrong_root_and_an_empty_block_are_refused() {
        let mut b = block_with(2);
        b.txdata.swap(0, 1);
        assert_eq!(check_block(&b), Err(BlockError::BadMerkleRoot));
        b.txdata.clear();
        assert_eq!(check_block(&b), Err(BlockError::Empty));
    }

    #[test]
    fn witnesses_without_a_commitment_are_refused() {
        let mut b = block_with(2);
        b.txdata[1].input[0].witness = bitcoin::Witness::from_slice(&[vec![9u8; 3]]);
        // Witnesses do not change txids, so the root still matches.
        assert!(b.check_merkle_root());
        assert_eq!(check_block(&b), Err(BlockError::BadWitnessCommitment));
    }
}
