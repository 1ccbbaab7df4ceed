//! Core's context-free transaction checks (`CheckTransaction`) and its relay rule against
//! coinbases, as a sans-IO core: what every transaction passes before it enters the relay
//! pool or is announced to anyone. The size rule is the chain's: BTC's block weight bound on
//! the base size; on BSV, the SV node's post-Genesis consensus limit (1 GB), so a 1.5 MB
//! transaction, legal there, is never taken for misbehaviour. Larger-than-policy transactions
//! never reach this check: the frame decoder skips them unread, free of points
//! (`PayloadLimits::relayed_tx`, 10 MB on BSV as the SV node's `maxtxsizepolicy`).

use std::collections::HashSet;

use bitcoin::{Amount, Transaction};

use crate::network::Chain;

/// Largest block weight (BIP141); a transaction's size without witness, times four, must fit.
const MAX_BLOCK_WEIGHT: usize = 4_000_000;
/// Witness scale factor (BIP141).
const WITNESS_SCALE_FACTOR: usize = 4;
/// BSV's consensus limit on a transaction's size after Genesis (the SV node's
/// `MAX_TX_SIZE_CONSENSUS_AFTER_GENESIS`, one gigabyte).
const BSV_MAX_TX_SIZE_CONSENSUS: usize = 1_000_000_000;

/// Why a transaction was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// No inputs (Core: `bad-txns-vin-empty`).
    #[error("no inputs")]
    NoInputs,
    /// No outputs (`bad-txns-vout-empty`).
    #[error("no outputs")]
    NoOutputs,
    /// Too large for a block (`bad-txns-oversize`).
    #[error("larger than a block allows")]
    Oversize,
    /// An output above the money supply (`bad-txns-vout-toolarge`).
    #[error("output value above 21 million coins")]
    OutputTooLarge,
    /// Outputs summing above the money supply (`bad-txns-txouttotal-toolarge`).
    #[error("outputs total above 21 million coins")]
    TotalTooLarge,
    /// The same outpoint spent twice (`bad-txns-inputs-duplicate`, CVE-2018-17144).
    #[error("an input spent twice")]
    DuplicateInputs,
    /// A null previous output outside a coinbase (`bad-txns-prevout-null`).
    #[error("null previous output")]
    NullPrevout,
    /// A coinbase: only valid in a block, never relayed (Core: `coinbase`).
    #[error("coinbase transaction")]
    Coinbase,
    /// A witness on BSV, which has none (the SV node cannot even read the serialisation):
    /// a copy of a transaction with junk appended that keeps its txid.
    #[error("witness data on a chain without segregated witness")]
    WitnessOnBsv,
}

impl TxError {
    /// A stable name for metrics and misbehaviour costs.
    pub fn kind(&self) -> &'static str {
        match self {
            TxError::NoInputs => "tx_no_inputs",
            TxError::NoOutputs => "tx_no_outputs",
            TxError::Oversize => "tx_oversize",
            TxError::OutputTooLarge | TxError::TotalTooLarge => "tx_value_out_of_range",
            TxError::DuplicateInputs => "tx_duplicate_inputs",
            TxError::NullPrevout => "tx_null_prevout",
            TxError::Coinbase => "tx_coinbase",
            TxError::WitnessOnBsv => "tx_witness_on_bsv",
        }
    }
}

/// Checks `tx` as Core (BTC) or the SV node (BSV) does before it may enter the pool.
pub fn check_transaction(tx: &Transaction, chain: Chain) -> Result<(), TxError> {
    if tx.input.is_empty() {
        return Err(TxError::NoInputs);
    }
    if tx.output.is_empty() {
        return Err(TxError::NoOutputs);
    }
    if chain == Chain::Bsv && tx.input.iter().any(|i| !i.witness.is_empty()) {
        return Err(TxError::WitnessOnBsv);
    }
    let oversize = match chain {
        Chain::Btc => tx.base_size() * WITNESS_SCALE_FACTOR > MAX_BLOCK_WEIGHT,
        Chain::Bsv => tx.base_size() > BSV_MAX_TX_SIZE_CONSENSUS,
    };
    if oversize {
        return Err(TxError::Oversize);
    }
    let mut total = Amount::ZERO;
    for o in &tx.output {
        if o.value > Amount::MAX_MONEY {
            return Err(TxError::OutputTooLarge);
        }
        total = total.checked_add(o.value).ok_or(TxError::TotalTooLarge)?;
        if total > Amount::MAX_MONEY {
            return Err(TxError::TotalTooLarge);
        }
    }
    let mut seen = HashSet::with_capacity(tx.input.len());
    for i in &tx.input {
        if !seen.insert(i.previous_output) {
            return Err(TxError::DuplicateInputs);
        }
    }
    if tx.is_coinbase() {
        return Err(TxError::Coinbase);
    }
    if tx.input.iter().any(|i| i.previous_output.is_null()) {
        return Err(TxError::NullPrevout);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;
    use bitcoin::{OutPoint, ScriptBuf, Sequence, TxIn, TxOut, Txid, Witness};

    fn tx(inputs: &[OutPoint], values: &[u64]) -> Transaction {
        Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: inputs
                .iter()
                .map(|o| TxIn {
                    previous_output: *o,
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::MAX,
                    witness: Witness::new(),
                })
                .collect(),
            output: values
                .iter()
                .map(|v| TxOut {
                    value: Amount::from_sat(*v),
                    script_pubkey: ScriptBuf::from_bytes(vec![0x51]),
                })
                .collect(),
        }
    }

    fn btc(tx: &Transaction) -> Result<(), TxError> {
        check_transaction(tx, Chain::Btc)
    }

    #[test]
    fn cores_context_free_rules() {
        let a = OutPoint::new(Txid::from_byte_array([1; 32]), 0);
        let b = OutPoint::new(Txid::from_byte_array([2; 32]), 1);
        assert_eq!(btc(&tx(&[a, b], &[1000])), Ok(()));
        assert_eq!(btc(&tx(&[], &[1000])), Err(TxError::NoInputs));
        assert_eq!(btc(&tx(&[a], &[])), Err(TxError::NoOutputs));
        assert_eq!(btc(&tx(&[a, a], &[1])), Err(TxError::DuplicateInputs));
        let max = Amount::MAX_MONEY.to_sat();
        assert_eq!(btc(&tx(&[a], &[max + 1])), Err(TxError::OutputTooLarge));
        assert_eq!(btc(&tx(&[a], &[max, 1])), Err(TxError::TotalTooLarge));
        assert_eq!(btc(&tx(&[OutPoint::null()], &[1])), Err(TxError::Coinbase));
        assert_eq!(
            btc(&tx(&[a, OutPoint::null()], &[1])),
            Err(TxError::NullPrevout)
        );
        let mut big = tx(&[a], &[1]);
        big.output[0].script_pubkey = ScriptBuf::from_bytes(vec![0x6a; 1_000_001]);
        assert_eq!(check_transaction(&big, Chain::Btc), Err(TxError::Oversize));
        // Legal on BSV, whose consensus limit after Genesis is a gigabyte.
        big.output[0].script_pubkey = ScriptBuf::from_bytes(vec![0x6a; 1_500_000]);
        assert_eq!(check_transaction(&big, Chain::Bsv), Ok(()));
        assert_eq!(check_transaction(&big, Chain::Btc), Err(TxError::Oversize));
        // A witness keeps the txid: on BSV, where none exists, it is refused.
        let mut witnessed = tx(&[a], &[1]);
        witnessed.input[0].witness = Witness::from_slice(&[vec![0u8; 100]]);
        assert_eq!(check_transaction(&witnessed, Chain::Btc), Ok(()));
        assert_eq!(
            check_transaction(&witnessed, Chain::Bsv),
            Err(TxError::WitnessOnBsv)
        );
    }
}
