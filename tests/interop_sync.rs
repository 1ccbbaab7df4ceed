//! Header sync against bcoin, an independent implementation: meshd syncs more than 10,000
//! regtest headers from it; a kill -9 in the middle of that sync, then a clean restart that
//! resumes from disk.

mod common;

use std::time::{Duration, Instant};

use common::bcoin::Bcoin;
use common::{msg, Meshd};
use serde_json::Value;

/// bcoin 1.0.2's own regtest address format (P2PKH, hash160 = 0x11 × 20).
const MINE_ADDR: &str = "RAqS1bAuWqW2f6ufsU5H4XpKfy5Pqj2oHz";
const BLOCKS: u64 = 10_050;

fn mine(bcoin: &Bcoin, n: u64) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let url = format!("http://127.0.0.1:{}/", bcoin.http_port);
    let mut done = 0;
    while done < n {
        let chunk = (n - done).min(1000);
        let body = format!(r#"{{"method":"generatetoaddress","params":[{chunk},"{MINE_ADDR}"]}}"#);
        let mut r = agent.post(&url).send(body.as_bytes()).expect("bcoin RPC");
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert!(v["error"].is_null(), "bcoin mining failed: {v}");
        done += chunk;
    }
}

fn header_height(node: &Meshd) -> Option<f64> {
    node.metric("meshd_header_height")
}

#[test]
fn meshd_syncs_over_10000_headers_from_bcoin_and_survives_kill_9_midway() {
    let Some(bcoin) = Bcoin::start(&[]) else {
        return;
    };
    mine(&bcoin, BLOCKS);
    let target = format!("127.0.0.1:{}", bcoin.p2p_port);

    // First run: killed with SIGKILL once a few thousand headers are in.
    let dir = tempfile::tempdir().unwrap();
    let mut node = Meshd::start_in(
        dir.path(),
        &["--connect", &target, "--blocks", "none"],
        true,
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while header_height(&node).unwrap_or(0.0) < 2000.0 {
        assert!(
            Instant::now() < deadline,
            "sync did not start: {:?}",
            node.raw_lines().last()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    node.stop_with("KILL", Duration::from_secs(5));

    // Second run: resumes from disk and finishes.
    let mut node = Meshd::start_in(
        dir.path(),
        &["--connect", &target, "--blocks", "none"],
        true,
    );
    let loaded = node.wait_log("chain loaded", Duration::from_secs(30), |v| {
        msg(v) == "header chain loaded"
    });
    let resumed_from = loaded["height"].as_u64().unwrap();
    assert!(
        resumed_from >= 2000,
        "resumed from {resumed_from}: {loaded}"
    );
    // Synced only once the peer has nothing more: while it streams full batches the node
    // is syncing, although its tip is recent (out of initial sync) and no session runs.
    let synced = node.wait_log("synced", Duration::from_secs(180), |v| {
        msg(v) == "headers synced" && v["height"].as_u64() > Some(resumed_from)
    });
    assert_eq!(synced["height"].as_u64(), Some(BLOCKS), "{synced}");
    assert_eq!(
        node.count_logs(|v| v["level"] == "ERROR"),
        0,
        "{:?}",
        node.raw_lines()
    );
    assert_eq!(header_height(&node), Some(BLOCKS as f64));
    node.stop();
}
