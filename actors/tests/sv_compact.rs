//! Compact blocks on BSV over real loopback sockets, against peers that speak them as the SV
//! node does (`tests/peers/sv_compact_peer.py`, written from BIP152 and the SV node's code,
//! standard-library Python): `sendcmpct` version 1 only (short ids of txids), 32-bit
//! prefilled and `getblocktxn` indexes. One Python peer gives meshd two blocks compact, the
//! second of more than 65,536 transactions with one prefilled past index 65,535; the other
//! asked meshd for high-bandwidth pushes and rebuilds both from what meshd pushes and answers
//! (`blocktxn`, or the whole block when it asks for more than 99%, as the SV node answers).

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use meshd_actors::config::{NodeConfig, TxRelay};
use meshd_actors::events::{BlockVia, EventKind, NodeEvent};
use meshd_actors::network::NetworkId;
use meshd_actors::node::Node;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Transactions of the large block: past 65,536, so indexes need the SV node's 32 bits.
const BIG_BLOCK_TXS: usize = 70_000;
/// Time for the whole exchange (the Python peer hashes every short id itself).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(240);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/sv_compact_peer.py")
}

/// What `peer` reported of `block` under `key`, if it did.
fn finding(findings: &[Value], peer: &str, block: &str, key: &str) -> Option<Value> {
    findings
        .iter()
        .find(|f| f["peer"] == peer && f["block"] == block && f.get(key).is_some())
        .map(|f| f[key].clone())
}

/// The next `BlockReceived`: its hash, how it came and how many transactions were asked.
async fn received(
    events: &mut meshd_actors::events::EventStream,
    deadline: Instant,
) -> (String, BlockVia, usize, usize) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Ok(e)) => {
                if let NodeEvent::BlockReceived {
                    hash,
                    via,
                    txs_requested,
                    tx_count,
                    ..
                } = &e.event
                {
                    return (hash.clone(), *via, *txs_requested, *tx_count);
                }
            }
            _ => panic!("no block received in time"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sv_node_peers_exchange_version_1_compact_blocks_with_32_bit_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = NodeConfig::new(NetworkId::BsvRegtest, dir.path().to_path_buf());
    c.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.slots.block_relay = 0;
    c.feeler_interval = None;
    c.trickle = false;
    // The source is inbound: relay what it sends, so the sink is told of the pooled ones.
    c.tx_relay = TxRelay::All;
    c.slots.outbound = 0;
    c.v2transport = false;
    let node = Node::start(c).await.unwrap();
    let mut blocks = node.subscribe_to(&[EventKind::BlockReceived]);
    let addr = node.listen_addrs()[0];
    let mut child = Command::new("python3")
        .arg(script())
        .arg(addr.to_string())
        .arg("--big-txs")
        .arg(BIG_BLOCK_TXS.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + EXCHANGE_TIMEOUT;
    let mut findings: Vec<Value> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = tokio::time::timeout(left, lines.next_line())
            .await
            .expect("the SV peers finished in time")
            .expect("read");
        let Some(line) = line else { break };
        let v: Value = serde_json::from_str(&line).expect("json");
        assert!(
            v.get("error").is_none(),
            "SV peer: {v}; before: {findings:?}"
        );
        findings.push(v);
    }
    let status = child.wait().await.unwrap();
    assert!(status.success(), "SV peers failed: {findings:?}");
    eprintln!("SV peers: {findings:?}");
    let done = findings.last().expect("a last line");
    assert_eq!(done["done"], true, "{findings:?}");
    let (small, big) = (
        done["small"].as_str().unwrap().to_string(),
        done["big"].as_str().unwrap().to_string(),
    );

    // meshd rebuilt the small block from the version-1 compact block it asked for,
    // fetching the one transaction it lacked; of the large one it asked for all but the two
    // prefilled (indexes past 16 bits, checked by the source), and took the whole block the
    // SV node answers such a request with.
    assert_eq!(
        received(&mut blocks, deadline).await,
        (small.clone(), BlockVia::CompactLowBandwidth, 1, 5)
    );
    let source = |block: &str, key: &str| finding(&findings, "source", block, key);
    assert_eq!(
        source(&big, "getblocktxn"),
        Some(serde_json::json!(BIG_BLOCK_TXS - 2))
    );
    assert_eq!(
        source(&big, "answered_with"),
        Some(serde_json::json!("block"))
    );
    assert_eq!(
        received(&mut blocks, deadline).await,
        (big.clone(), BlockVia::Fallback, 0, BIG_BLOCK_TXS)
    );
    // The high-bandwidth peer was pushed both, coinbase and what meshd itself lacked
    // prefilled, and rebuilt them after its getblocktxn.
    let sink = |block: &str, key: &str| finding(&findings, "sink", block, key);
    assert_eq!(
        sink(&small, "prefilled"),
        Some(serde_json::json!([0, 4])),
        "coinbase and the transaction meshd lacked"
    );
    assert_eq!(sink(&small, "getblocktxn"), Some(serde_json::json!(3)));
    assert_eq!(
        sink(&small, "answered_with"),
        Some(serde_json::json!("blocktxn"))
    );
    // Nearly all of the large one asked: the whole block, as the SV node answers.
    assert_eq!(
        sink(&big, "answered_with"),
        Some(serde_json::json!("block"))
    );
    assert_eq!(sink(&small, "rebuilt"), Some(serde_json::json!(5)));
    assert_eq!(
        sink(&big, "rebuilt"),
        Some(serde_json::json!(BIG_BLOCK_TXS))
    );
    let asked_big = sink(&big, "getblocktxn").and_then(|v| v.as_u64()).unwrap();
    assert!(
        asked_big > 65_536,
        "the sink asked past 16-bit indexes: {asked_big}"
    );
    node.shutdown().await;
}
