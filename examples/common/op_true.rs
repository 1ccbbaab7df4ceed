//! Coins anyone can spend, for the labs that load bcoin with real transactions: outputs to
//! P2SH(OP_TRUE), bcoin's regtest address of it (to mine to), and a fan-out of one such coin
//! into many, each then spendable on its own with the script `OP_TRUE` pushed.

use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};

/// P2SH(OP_TRUE).
pub fn op_true_p2sh() -> ScriptBuf {
    ScriptBuf::new_p2sh(&ScriptBuf::from_bytes(vec![0x51]).script_hash())
}

/// The scriptSig that spends a P2SH(OP_TRUE) coin: a push of the redeem script `OP_TRUE`.
pub fn op_true_script_sig() -> ScriptBuf {
    ScriptBuf::from_bytes(vec![0x01, 0x51])
}

/// bcoin's regtest address of P2SH(OP_TRUE) (version byte 0x26, lib/protocol/networks.js).
pub fn bcoin_op_true_address() -> String {
    let mut payload = vec![0x26];
    payload.extend_from_slice(bitcoin::hashes::hash160::Hash::hash(&[0x51]).as_byte_array());
    bitcoin::base58::encode_check(&payload)
}

/// Spends `coin`'s P2SH(OP_TRUE) output into `outputs` equal P2SH(OP_TRUE) coins, less
/// `fee`; returns the fan-out and each new coin's value.
pub fn fan_out(coin: &Transaction, outputs: usize, fee: Amount) -> (Transaction, Amount) {
    let vout = coin
        .output
        .iter()
        .position(|o| o.script_pubkey == op_true_p2sh())
        .expect("the coin pays OP_TRUE");
    let each = (coin.output[vout].value - fee) / outputs as u64;
    let fan = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(coin.compute_txid(), vout as u32),
            script_sig: op_true_script_sig(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: (0..outputs)
            .map(|_| TxOut {
                value: each,
                script_pubkey: op_true_p2sh(),
            })
            .collect(),
    };
    (fan, each)
}

/// A spend of `prev` to P2SH(OP_TRUE) worth `value`, with an OP_RETURN of `pad` bytes
/// numbered from `n` (so each is a distinct transaction of a typical payment's size).
pub fn padded_spend(
    prev: OutPoint,
    value: Amount,
    script_sig: ScriptBuf,
    n: u32,
    pad: usize,
) -> Transaction {
    let mut data = vec![0x6a, 0x4c, pad as u8];
    data.extend((0..pad).map(|i| (n as usize + i) as u8));
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: prev,
            script_sig,
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![
            TxOut {
                value,
                script_pubkey: op_true_p2sh(),
            },
            TxOut {
                value: Amount::ZERO,
                script_pubkey: ScriptBuf::from_bytes(data),
            },
        ],
    }
}
