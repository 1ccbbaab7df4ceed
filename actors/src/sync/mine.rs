//! Regtest block construction: a coinbase with the BIP34 height and an anyone-can-spend
//! output, the merkle root, and a header mined against regtest's trivial target.

use bitcoin::absolute::LockTime;
use bitcoin::block::Header;
use bitcoin::script::Builder;
use bitcoin::transaction::Version;
use bitcoin::{Amount, Block, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};

use crate::sync::chain::headers::mine_header;

/// Builds and mines a block at `height` on `parent` with time `time`. `extra_nonce` goes in
/// the coinbase after the height, so two nodes mining in the same second build different
/// blocks (Core's differ by the key each wallet pays to).
pub fn regtest_block(parent: &Header, height: u32, time: u32, extra_nonce: u32) -> Block {
    regtest_block_paying(
        parent,
        height,
        time,
        extra_nonce,
        &ScriptBuf::from_bytes(vec![0x51]),
    )
}

/// As [`regtest_block`], the coinbase paying to `payout` (generatetoaddress).
pub fn regtest_block_paying(
    parent: &Header,
    height: u32,
    time: u32,
    extra_nonce: u32,
    payout: &bitcoin::Script,
) -> Block {
    let script_sig = Builder::new()
        .push_int(height as i64)
        .push_int(extra_nonce as i64)
        .into_script();
    let coinbase = Transaction {
        version: Version::ONE,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig,
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            // Regtest halves the subsidy every 150 blocks.
            value: Amount::from_sat((50 * 100_000_000u64) >> (height / 150).min(63)),
            script_pubkey: payout.to_owned(),
        }],
    };
    let mut block = Block {
        header: *parent,
        txdata: vec![coinbase],
    };
    // One transaction: the merkle root is its txid; compute_merkle_root is None only when empty.
    let merkle = block
        .compute_merkle_root()
        .unwrap_or_else(<bitcoin::TxMerkleNode as bitcoin::hashes::Hash>::all_zeros);
    block.header = mine_header(parent, merkle, time, parent.bits);
    block
}
