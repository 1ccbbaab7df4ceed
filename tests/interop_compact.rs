//! BIP152 compact blocks against bcoin, an independent implementation (its `bip152` module),
//! in both directions over loopback:
//! - bcoin to meshd, low-bandwidth: meshd asks for a new tip with `getdata(MSG_CMPCT_BLOCK)`,
//!   rebuilds it from its relay pool and fetches the one transaction it never saw with
//!   `getblocktxn`.
//! - meshd to bcoin: a bcoin that asked for high-bandwidth announcements gets the
//!   `cmpctblock` pushed unasked; one in low-bandwidth mode is announced the block and asks
//!   for it compact; each asks meshd with `getblocktxn` for the transaction it lacked and
//!   rebuilds the block, which its full validation accepts.
//!
//! The transactions meant to stay unseen stay so because meshd does not answer BIP35 `mempool`
//! (bcoin sends it on regtest once synced; Core answers only NODE_BLOOM or whitelisted peers).
//!
//! - bcoin to meshd, high-bandwidth: bcoin gives meshd a new block while it is the only one
//!   meshd waits for, so meshd picks it as a high-bandwidth peer (Core's
//!   MaybeSetPeerAsAnnouncingHeaderAndIDs) with a second `sendcmpct`; bcoin then pushes its
//!   next block as `cmpctblock` unasked, and meshd fetches what it lacks with `getblocktxn`.
//!
//! bcoin 1.0.2 takes only the first `sendcmpct` a peer sends, and meshd's first is
//! low-bandwidth, as Core's; the high-bandwidth test therefore starts bcoin with the
//! launcher's `--bip152-mode-updates`, which lets a later `sendcmpct` change the mode as BIP152's
//! protocol flow and Core do (tests/peers/bcoin_node.js). That direction is also covered
//! against meshd itself (actors/tests/compact_blocks.rs).

mod common;

use std::time::{Duration, Instant};

use bitcoin::absolute::LockTime;
use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::hashes::Hash;
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, Block, BlockHash, CompactTarget, OutPoint, ScriptBuf, Sequence, Transaction, TxIn,
    TxMerkleNode, TxOut, Witness,
};
use common::bcoin::Bcoin;
use common::{msg, Meshd};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);
/// Blocks mined before the test block: regtest coinbases mature after 100.
const MATURE: u64 = 110;
/// bcoin's regtest P2SH version byte (lib/protocol/networks.js).
const BCOIN_REGTEST_P2SH: u8 = 0x26;
/// The anyone-can-spend script the coins are paid to (OP_TRUE).
const OP_TRUE: u8 = 0x51;

/// bcoin's regtest address of P2SH(OP_TRUE), so its coinbases can be spent without keys.
fn p2sh_op_true_address() -> String {
    let hash = bitcoin::hashes::hash160::Hash::hash(&[OP_TRUE]);
    let mut payload = vec![BCOIN_REGTEST_P2SH];
    payload.extend_from_slice(hash.as_byte_array());
    bitcoin::base58::encode_check(&payload)
}

/// The block at `height` of bcoin's best chain.
fn block_at(b: &Bcoin, height: u64) -> Block {
    let hash = b.rpc("getblockhash", json!([height]));
    let raw = b.rpc("getblock", json!([hash, false]));
    deserialize_hex(raw.as_str().expect("raw block")).expect("block decodes")
}

/// A transaction spending output `vout` of `prev` (paid to `script`) to OP_TRUE, less a fee.
fn spend(prev: &Transaction, script: &ScriptBuf, script_sig: ScriptBuf) -> Transaction {
    let vout = prev
        .output
        .iter()
        .position(|o| &o.script_pubkey == script)
        .expect("the coinbase pays the script");
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(prev.compute_txid(), vout as u32),
            script_sig,
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: prev.output[vout].value - Amount::from_sat(20_000),
            script_pubkey: ScriptBuf::from_bytes(vec![OP_TRUE]),
        }],
    }
}

fn send(b: &Bcoin, tx: &Transaction) {
    b.rpc("sendrawtransaction", json!([serialize_hex(tx)]));
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Mines a block holding only a coinbase on bcoin's tip and submits it, leaving bcoin's
/// mempool as it is (its own `generatetoaddress` would mine the pool).
fn mine_coinbase_only(b: &Bcoin) -> String {
    let tip = b.rpc("getbestblockhash", json!([]));
    let parent = b.rpc("getblockheader", json!([tip, true]));
    let height = parent["height"].as_i64().expect("height") + 1;
    // bcoin answers `bits` as a number; Core as a hex string.
    let bits = match &parent["bits"] {
        Value::String(hex) => u32::from_str_radix(hex, 16).expect("hex bits"),
        n => n.as_u64().expect("bits") as u32,
    };
    let coinbase = Transaction {
        version: Version::ONE,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: bitcoin::script::Builder::new()
                .push_int(height)
                .push_int(0)
                .into_script(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(0),
            script_pubkey: ScriptBuf::from_bytes(vec![OP_TRUE]),
        }],
    };
    let mut header = Header {
        version: BlockVersion::from_consensus(0x2000_0000),
        prev_blockhash: tip
            .as_str()
            .expect("hash")
            .parse::<BlockHash>()
            .expect("hash"),
        merkle_root: TxMerkleNode::from_raw_hash(coinbase.compute_txid().to_raw_hash()),
        time: parent["time"].as_u64().expect("time") as u32 + 1,
        bits: CompactTarget::from_consensus(bits),
        nonce: 0,
    };
    while header.validate_pow(header.target()).is_err() {
        header.nonce += 1;
    }
    let block = Block {
        header,
        txdata: vec![coinbase],
    };
    let answer = b.rpc("submitblock", json!([serialize_hex(&block)]));
    assert!(answer.is_null(), "bcoin refused the block: {answer}");
    block.block_hash().to_string()
}

fn height(b: &Bcoin) -> u64 {
    b.rpc("getblockcount", json!([])).as_u64().unwrap_or(0)
}

fn in_mempool(b: &Bcoin, tx: &Transaction) -> bool {
    let txid = tx.compute_txid().to_string();
    b.rpc("getrawmempool", json!([]))
        .as_array()
        .is_some_and(|a| a.iter().any(|t| t == txid.as_str()))
}

#[test]
fn bcoin_sends_meshd_a_compact_block_and_meshd_asks_for_what_it_lacks() {
    let Some(miner) = Bcoin::start(&["--debug-log".into()]) else {
        return;
    };
    let addr = p2sh_op_true_address();
    miner.rpc("generatetoaddress", json!([MATURE, addr]));
    let pays = ScriptBuf::new_p2sh(&ScriptBuf::from_bytes(vec![OP_TRUE]).script_hash());
    let redeem = ScriptBuf::from_bytes(vec![0x01, OP_TRUE]);
    let coinbase = |h| block_at(&miner, h).txdata[0].clone();
    // Sent while bcoin has no peer: nobody hears of it, so meshd will lack it.
    let unseen = spend(&coinbase(1), &pays, redeem.clone());
    send(&miner, &unseen);

    let target = format!("127.0.0.1:{}", miner.p2p_port);
    let node = Meshd::start(&["--connect", &target]);
    node.wait_log("headers synced", T, |v| {
        msg(v) == "headers synced" && v["height"].as_u64() == Some(MATURE)
    });
    let relayed = [
        spend(&coinbase(2), &pays, redeem.clone()),
        spend(&coinbase(3), &pays, redeem),
    ];
    for tx in &relayed {
        send(&miner, tx);
    }
    wait_until("meshd to pool the relayed transactions", || {
        node.metric("meshd_txs_received_total").unwrap_or(0.0) >= relayed.len() as f64
    });

    let mined = miner.rpc("generatetoaddress", json!([1, addr]));
    let hash = mined[0].as_str().expect("block hash").to_string();
    let got = node.wait_log("the block from bcoin", T, |v| {
        msg(v) == "block received" && v["hash"] == hash.as_str()
    });
    assert_eq!(got["via"], "compact_low_bandwidth", "{got}");
    assert_eq!(got["tx_count"], 4, "{got}");
    // The one it never saw, fetched with getblocktxn; the relayed two came from the pool.
    assert_eq!(got["txs_requested"], 1, "{got}");
    miner.wait_line("bcoin served the compact block", T, |l| {
        l.contains("cmpct=1)")
    });
    miner.wait_line("bcoin answered getblocktxn", T, |l| {
        l.contains("Sending blocktxn for") && l.contains(&hash)
    });
    assert!(
        node.metric_sum("meshd_compact_blocks_total", &["outcome=\"txn_requested\""]) >= 1.0,
        "{}",
        node.scrape()
    );
}

#[test]
fn bcoin_pushes_meshd_high_bandwidth_compact_blocks_once_meshd_picks_it() {
    let Some(miner) = Bcoin::start(&["--bip152-mode-updates".into(), "--debug-log".into()]) else {
        return;
    };
    let addr = p2sh_op_true_address();
    miner.rpc("generatetoaddress", json!([MATURE, addr]));
    let pays = ScriptBuf::new_p2sh(&ScriptBuf::from_bytes(vec![OP_TRUE]).script_hash());
    let redeem = ScriptBuf::from_bytes(vec![0x01, OP_TRUE]);
    let coinbase = |h| block_at(&miner, h).txdata[0].clone();
    // In bcoin's pool before meshd connects: meshd never hears of it (it sends no `mempool`).
    let unseen = spend(&coinbase(1), &pays, redeem.clone());
    send(&miner, &unseen);

    let target = format!("127.0.0.1:{}", miner.p2p_port);
    let node = Meshd::start(&["--connect", &target]);
    node.wait_log("headers synced", T, |v| {
        msg(v) == "headers synced" && v["height"].as_u64() == Some(MATURE)
    });
    // A new block from bcoin alone, leaving the pool (and `unseen`) for the next one. meshd
    // may have picked bcoin already, on the last block of its sync (also the only one in
    // flight); this block makes sure of it.
    let first = mine_coinbase_only(&miner);
    node.wait_log("the first new block", T, |v| {
        msg(v) == "block received" && v["hash"] == first.as_str()
    });
    node.wait_log("meshd to pick bcoin as high-bandwidth", T, |v| {
        msg(v).starts_with("compact blocks: high-bandwidth mode") && v["high"] == true
    });
    miner.wait_line("bcoin to take the high-bandwidth ask", T, |l| {
        l.contains("Peer updated compact blocks mode (mode=1, version=2)")
    });
    let relayed = spend(&coinbase(2), &pays, redeem);
    send(&miner, &relayed);
    wait_until("meshd to pool the relayed transaction", || {
        node.metric("meshd_txs_received_total").unwrap_or(0.0) >= 1.0
    });

    let mined = miner.rpc("generatetoaddress", json!([1, addr]));
    let hash = mined[0].as_str().expect("block hash").to_string();
    let got = node.wait_log("the pushed block", T, |v| {
        msg(v) == "block received" && v["hash"] == hash.as_str()
    });
    assert_eq!(got["via"], "compact_high_bandwidth", "{got}");
    assert_eq!(got["tx_count"], 3, "{got}");
    // `unseen` fetched with getblocktxn; the relayed one came from the pool.
    assert_eq!(got["txs_requested"], 1, "{got}");
    miner.wait_line("bcoin answered getblocktxn", T, |l| {
        l.contains("Sending blocktxn for") && l.contains(&hash)
    });
    let peers = node.api_get("/v1/peers");
    let to_high = peers
        .as_array()
        .or_else(|| peers["peers"].as_array())
        .expect("peers")
        .iter()
        .filter(|p| p["bip152_hb_to"] == Value::Bool(true))
        .count();
    assert_eq!(to_high, 1, "{peers}");
}

#[test]
fn meshd_sends_bcoin_compact_blocks_high_and_low_bandwidth() {
    // bcoin peers dial in (it syncs only from peers it dialled); the miner's blocks count as
    // vouched for because it is relay-whitelisted (Core announces only validated blocks).
    let node = Meshd::start(&[
        "--whitelist",
        "relay,noban@127.0.0.1/32",
        "--keep-blocks",
        "200",
    ]);
    let (code, out, err) = node.cli(&["generate", &MATURE.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let meshd = node.addr.expect("listening").to_string();
    let only = format!("--only={meshd}");
    let Some(miner) = Bcoin::start(&[only.clone(), "--debug-log".into()]) else {
        return;
    };
    wait_until("bcoin to sync meshd's chain", || height(&miner) == MATURE);
    // meshd's coinbases pay a bare OP_TRUE: spent with an empty scriptSig.
    let pays = ScriptBuf::from_bytes(vec![OP_TRUE]);
    let coinbase = |h| block_at(&miner, h).txdata[0].clone();
    // Relayed to meshd before the two receivers connect: they will lack it.
    let early = spend(&coinbase(1), &pays, ScriptBuf::new());
    send(&miner, &early);
    wait_until("meshd to pool the early transaction", || {
        node.metric("meshd_txs_received_total").unwrap_or(0.0) >= 1.0
    });

    let high = Bcoin::start(&[
        only.clone(),
        "--listen=false".into(),
        "--compact-high-bandwidth".into(),
        "--debug-log".into(),
    ])
    .expect("bcoin installed");
    let low = Bcoin::start(&[only, "--listen=false".into(), "--debug-log".into()])
        .expect("bcoin installed");
    for b in [&high, &low] {
        wait_until("bcoin to sync meshd's chain", || height(b) == MATURE);
    }
    wait_until("the high-bandwidth ask to reach meshd", || {
        node.metric_sum(
            "meshd_compact_high_bandwidth_peers",
            &["direction=\"from\""],
        ) >= 1.0
    });
    let late = spend(&coinbase(2), &pays, ScriptBuf::new());
    send(&miner, &late);
    wait_until("meshd to relay the late transaction", || {
        in_mempool(&high, &late) && in_mempool(&low, &late)
    });

    let mined = miner.rpc("generatetoaddress", json!([1, p2sh_op_true_address()]));
    let hash = mined[0].as_str().expect("block hash").to_string();
    let got = node.wait_log("the block from the miner", T, |v| {
        msg(v) == "block received" && v["hash"] == hash.as_str()
    });
    assert_eq!(got["tx_count"], 3, "{got}");
    // meshd had both transactions: rebuilt from its pool, nothing asked.
    assert_eq!(got["via"], "compact_low_bandwidth", "{got}");
    assert_eq!(got["txs_requested"], 0, "{got}");
    for (b, mode) in [(&high, "high-bandwidth"), (&low, "low-bandwidth")] {
        wait_until("bcoin to take the block from meshd", || {
            height(b) == MATURE + 1
        });
        // It lacked the early transaction: asked for it, then filled the block.
        b.wait_line(mode, T, |l| {
            l.contains("Received non-full compact block") && l.contains(&hash) && l.contains(&meshd)
        });
        b.wait_line(mode, T, |l| {
            l.contains("Filled compact block") && l.contains(&hash)
        });
    }
    // Pushed unasked to the high-bandwidth one.
    assert!(
        node.metric("meshd_compact_blocks_sent_total")
            .unwrap_or(0.0)
            >= 1.0,
        "{}",
        node.scrape()
    );
    let peers = node.api_get("/v1/peers");
    let from_high = peers
        .as_array()
        .or_else(|| peers["peers"].as_array())
        .expect("peers")
        .iter()
        .filter(|p| p["bip152_hb_from"] == Value::Bool(true))
        .count();
    assert_eq!(from_high, 1, "{peers}");
}
