//! The Bitcoin Core-compatible JSON-RPC through the binary (issue #28, item 5), read by
//! clients written for bitcoind: python-bitcoinrpc (PyPI) with the cookie, npm
//! `bitcoin-core` as a `--rpcauth` user, a fork-observer-style poll of getchaintips, and
//! raw HTTP for Core's status codes, batches and authentication.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bitcoin::hashes::{hmac, sha256, Hash, HashEngine};
use common::{skip_or_fail, Meshd};
use serde_json::{json, Value};

/// A regtest P2WPKH address (BIP173's test vector).
const ADDRESS: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";

fn has_python_bitcoinrpc() -> bool {
    Command::new("python3")
        .args(["-c", "import bitcoinrpc.authproxy"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn script(name: &str) -> String {
    format!("{}/tests/peers/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn cookie_file(node: &Meshd) -> PathBuf {
    node.datadir.join("regtest/.cookie-rpc")
}

/// Runs a client script; its stdout is one JSON value.
fn run_json(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("run the client");
    assert!(
        out.status.success(),
        "client failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn code(v: &Value) -> i64 {
    v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error: {v}"))
}

#[test]
fn python_bitcoinrpc_reads_meshd_as_it_reads_bitcoind() {
    if !has_python_bitcoinrpc() {
        return skip_or_fail("python-bitcoinrpc (pip install python-bitcoinrpc)");
    }
    let mut node = Meshd::start(&["--rpc", "127.0.0.1:0"]);
    let peer = Meshd::start(&[]);
    let rpc = node.rpc.expect("the JSON-RPC listens");
    use std::os::unix::fs::PermissionsExt;
    let cookie = std::fs::read_to_string(cookie_file(&node)).unwrap();
    assert!(
        cookie.starts_with("__cookie__:") && cookie.len() == 11 + 64,
        "{cookie}"
    );
    assert_eq!(
        std::fs::metadata(cookie_file(&node))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // A peer that feeds the pool transactions, so getrawmempool has some to show.
    let mut feeder = Command::new("python3")
        .args([
            &script("txpeer.py"),
            &node.addr.unwrap().to_string(),
            "--interval",
            "0.3",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("txpeer.py");
    common::wait("the feeder connected", 20, || {
        node.api_get("/v1/peers").as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["direction"] == "inbound" && p["state"] == "connected")
        })
    });
    let peer_addr = peer.addr.unwrap().to_string();
    let v = run_json(Command::new("python3").args([
        &script("rpc_client.py"),
        cookie_file(&node).to_str().unwrap(),
        &rpc.port().to_string(),
        &peer_addr,
        ADDRESS,
    ]));
    let _ = feeder.kill();
    let _ = feeder.wait();
    assert!(v.get("timeouts").is_none(), "{v}");

    // Peers: addnode, getaddednodeinfo, getpeerinfo with Core's field names.
    assert_eq!(v["addnode"], Value::Null, "{v}");
    assert_eq!(code(&v["addnode_again"]), -23);
    assert_eq!(
        v["addnode_again"]["error"]["message"],
        "Error: Node already added"
    );
    let added = &v["getaddednodeinfo"][0];
    assert_eq!(added["addednode"], peer_addr.as_str(), "{v}");
    assert_eq!(added["connected"], true);
    assert_eq!(added["addresses"][0]["connected"], "outbound");
    assert_eq!(v["getaddednodeinfo_one"].as_array().unwrap().len(), 1);
    assert_eq!(code(&v["getaddednodeinfo_unknown"]), -24);
    let peers = v["getpeerinfo"].as_array().expect("getpeerinfo");
    let p = peers
        .iter()
        .find(|p| p["addr"] == peer_addr.as_str())
        .unwrap_or_else(|| panic!("the added peer in {peers:?}"));
    assert_eq!(p["inbound"], false);
    assert_eq!(p["connection_type"], "manual");
    assert_eq!(
        p["subver"],
        format!("/meshd:{}/", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(p["services"].as_str().unwrap().len(), 16, "{p}");
    assert!(p["servicesnames"]
        .as_array()
        .unwrap()
        .contains(&json!("NETWORK")));
    assert!(p["pingtime"].as_f64().is_some(), "ping measured: {p}");
    assert!(p["conntime"].as_u64().unwrap() > 1_700_000_000);
    assert!(p["bytessent_per_msg"]["version"].as_u64().is_some(), "{p}");
    assert!(p["bytesrecv"].as_u64().unwrap() > 0);
    // The added peer and the feeder.
    assert_eq!(v["getconnectioncount"], 2);
    let net = &v["getnetworkinfo"];
    assert_eq!(
        net["subversion"],
        format!("/meshd:{}/", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(net["connections_out"], 1, "{net}");
    assert_eq!(net["connections_in"], 1, "{net}");
    assert!(net["networks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["name"] == "ipv4" && n["reachable"] == true));

    // The chain: mined to the address, read back by height, hash and header.
    let hashes = v["generatetoaddress"].as_array().expect("hashes");
    assert_eq!(hashes.len(), 5);
    let last = hashes[4].as_str().unwrap();
    assert_eq!(v["getblockcount"], 5);
    assert_eq!(v["getbestblockhash"], last);
    assert_eq!(v["getblockhash_5"], last);
    assert_eq!(code(&v["getblockhash_out_of_range"]), -8);
    assert_eq!(
        v["getblockhash_out_of_range"]["error"]["message"],
        "Block height out of range"
    );
    assert_eq!(code(&v["getblockhash_negative"]), -8);
    let h = &v["getblockheader"];
    assert_eq!(h["hash"], last, "{h}");
    assert_eq!(h["height"], 5);
    assert_eq!(h["confirmations"], 1);
    assert_eq!(h["previousblockhash"], hashes[3]);
    assert!(h.get("nextblockhash").is_none());
    assert_eq!(h["nTx"], 1);
    assert_eq!(h["bits"], "207fffff");
    assert_eq!(h["chainwork"].as_str().unwrap().len(), 64);
    assert_eq!(v["getblockheader_first"]["confirmations"], 5);
    assert_eq!(v["getblockheader_first"]["nextblockhash"], hashes[1]);
    assert_eq!(v["getblockheader_hex"].as_str().unwrap().len(), 160);
    let raw = v["getblock_0"].as_str().expect("getblock 0");
    assert!(raw.starts_with(&v["getblockheader_hex"].as_str().unwrap()[..160]));
    let b = &v["getblock_1"];
    assert_eq!(b["tx"].as_array().unwrap().len(), 1, "{b}");
    assert_eq!(b["size"].as_u64().unwrap() * 2, raw.len() as u64);
    let coinbase = &v["getblock_2"]["tx"][0];
    assert_eq!(
        coinbase["vout"][0]["scriptPubKey"]["address"], ADDRESS,
        "{coinbase}"
    );
    assert_eq!(
        coinbase["vout"][0]["scriptPubKey"]["type"],
        "witness_v0_keyhash"
    );
    assert!(coinbase["vin"][0]["coinbase"].is_string());
    let in_block = &v["getrawtransaction_in_block"];
    assert_eq!(in_block["blockhash"], last, "{in_block}");
    assert_eq!(in_block["confirmations"], 1);
    assert_eq!(code(&v["getblockheader_unknown"]), -5);
    assert_eq!(
        v["getblockheader_unknown"]["error"]["message"],
        "Block not found"
    );
    assert_eq!(code(&v["getblockheader_bad"]), -8);
    assert_eq!(code(&v["getblock_unknown"]), -5);
    let tips = v["getchaintips"].as_array().unwrap();
    assert_eq!(tips.len(), 1);
    assert_eq!(tips[0]["status"], "active");
    assert_eq!(tips[0]["height"], 5);
    let info = &v["getblockchaininfo"];
    assert_eq!(info["chain"], "regtest", "{info}");
    assert_eq!(info["blocks"], 5);
    assert_eq!(info["headers"], 5);
    assert_eq!(info["bestblockhash"], last);
    assert_eq!(info["pruned"], true);
    assert_eq!(code(&v["generatetoaddress_bad_address"]), -5);

    // The pool.
    let pool = v["getrawmempool"].as_array().expect("pool");
    assert!(!pool.is_empty());
    let txid = pool[0].as_str().unwrap();
    let entry = &v["getrawmempool_verbose"][txid];
    assert!(entry["vsize"].as_u64().unwrap() > 0, "{entry}");
    assert!(entry["wtxid"].is_string());
    let hex = v["getrawtransaction"].as_str().expect("hex");
    let tx: bitcoin::Transaction =
        bitcoin::consensus::encode::deserialize_hex(hex).expect("a transaction");
    assert_eq!(tx.compute_txid().to_string(), txid);
    assert_eq!(v["getrawtransaction_verbose"]["txid"], txid);
    assert_eq!(v["getrawtransaction_verbose"]["hex"], hex);
    assert_eq!(code(&v["getrawtransaction_unknown"]), -5);

    // Bans.
    assert_eq!(v["setban"], Value::Null, "{v}");
    assert_eq!(code(&v["setban_again"]), -23);
    assert_eq!(v["setban_inside_subnet"], Value::Null, "{v}");
    let bans = v["listbanned"].as_array().unwrap();
    let one = bans
        .iter()
        .find(|b| b["address"] == "203.0.113.7/32")
        .unwrap_or_else(|| panic!("{bans:?}"));
    assert_eq!(one["ban_duration"], 3600);
    let until = bans
        .iter()
        .find(|b| b["address"] == "198.51.100.0/24")
        .unwrap_or_else(|| panic!("{bans:?}"));
    assert_eq!(until["banned_until"], 2_000_000_000, "absolute");
    assert_eq!(v["setban_remove"], Value::Null);
    assert_eq!(code(&v["setban_remove_again"]), -30);
    assert_eq!(code(&v["setban_bad"]), -30);
    assert_eq!(v["listbanned_after_clear"], json!([]));

    // The rest, and Core's errors.
    assert!(v["getnettotals"]["totalbytessent"].as_u64().unwrap() > 0);
    assert!(v["getnettotals"]["totalbytesrecv"].as_u64().unwrap() > 0);
    assert!(v["uptime"].as_u64().is_some());
    assert_eq!(code(&v["unknown_method"]), -32601);
    assert_eq!(code(&v["wrong_arity"]), -1);
    assert_eq!(
        v["wrong_arity"]["error"]["message"],
        "getblockhash \"height\""
    );
    assert_eq!(code(&v["wrong_type"]), -3);
    assert_eq!(v["addnode_remove"], Value::Null);
    assert_eq!(code(&v["addnode_remove_again"]), -24);
    assert_eq!(v["getaddednodeinfo_after_remove"], json!([]));
    assert_eq!(v["disconnectnode"], Value::Null);
    assert_eq!(code(&v["disconnectnode_unknown"]), -29);
    assert_eq!(v["stop"], "meshd stopping");
    let status = node.wait_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "stop over the JSON-RPC exits cleanly: {status:?}"
    );
    assert!(
        !cookie_file(&node).exists(),
        "the cookie goes with the node"
    );
    // Removed, then disconnected: not dialled again.
    assert!(
        !v["types_after_remove"]
            .as_array()
            .unwrap()
            .contains(&json!("manual")),
        "{}",
        v["types_after_remove"]
    );
    assert_eq!(
        node.count_logs(|l| common::msg(l) == "manual peer removed; not dialled again"),
        1
    );
}

#[test]
fn a_fork_observer_poll_of_getchaintips_sees_both_branches() {
    if !has_python_bitcoinrpc() {
        return skip_or_fail("python-bitcoinrpc (pip install python-bitcoinrpc)");
    }
    let node = Meshd::start(&["--rpc", "127.0.0.1:0"]);
    let other = Meshd::start(&[]);
    let rpc = node.rpc.unwrap();
    // Three blocks here, five there: connected, this node takes the longer branch and
    // keeps its own three as a side branch.
    let mined = call(&node, "generatetoaddress", json!([3, ADDRESS]));
    let ours = mined["result"][2].as_str().unwrap().to_string();
    let (c, _, e) = other.cli(&["generate", "5"]);
    assert_eq!(c, 0, "{e}");
    let theirs = other.api_get("/v1/sync")["best_header_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let added = call(
        &node,
        "addnode",
        json!([other.addr.unwrap().to_string(), "onetry"]),
    );
    assert_eq!(added["error"], Value::Null, "{added}");
    let tips = run_json(Command::new("python3").args([
        &script("fork_observer.py"),
        cookie_file(&node).to_str().unwrap(),
        &rpc.port().to_string(),
        "2",
        "80",
    ]));
    let tips = tips.as_array().unwrap();
    assert_eq!(tips.len(), 2, "{tips:?}");
    let active = &tips[0];
    assert_eq!(active["status"], "active", "{tips:?}");
    assert_eq!(active["hash"], theirs.as_str());
    assert_eq!(active["height"], 5);
    assert_eq!(active["confirmations"], 1);
    let side = &tips[1];
    assert_eq!(side["hash"], ours.as_str(), "{tips:?}");
    assert_eq!(side["height"], 3);
    assert_eq!(side["branchlen"], 3);
    assert_eq!(side["status"], "valid-headers", "its blocks are kept");
    assert_eq!(side["confirmations"], -1, "off the active chain");
    // The branch walked back by previousblockhash meets the active chain at genesis.
    assert_eq!(side["fork_height"], 0);
    assert_eq!(side["fork_confirmations"], 6);
}

/// One JSON-RPC 2.0 call over raw HTTP with the cookie.
fn call(node: &Meshd, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let (status, _, text) = post(
        node.rpc.unwrap(),
        Some(&cookie_auth(node)),
        &body.to_string(),
    );
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn cookie_auth(node: &Meshd) -> String {
    use base64::Engine;
    let cookie = std::fs::read_to_string(cookie_file(node)).unwrap();
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(cookie.trim())
    )
}

/// A POST to `/`: status, headers, body.
fn post(addr: SocketAddr, auth: Option<&str>, body: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

#[test]
fn http_answers_and_authentication_are_cores() {
    let node = Meshd::start(&["--rpc", "127.0.0.1:0"]);
    let rpc = node.rpc.unwrap();
    let auth = cookie_auth(&node);
    // No password: 401 at once; a wrong one: 401 after Core's delay, one at a time.
    let t = Instant::now();
    let (status, head, _) = post(rpc, None, r#"{"method":"getblockcount"}"#);
    assert_eq!(status, 401);
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "no password, no wait"
    );
    let t = Instant::now();
    let guesses: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || post(rpc, Some("Basic X19jb29raWVfXzp4"), "{}").0))
        .collect();
    for g in guesses {
        assert_eq!(g.join().unwrap(), 401);
    }
    assert!(
        t.elapsed() >= Duration::from_millis(4 * 250),
        "parallel guesses wait in turn: {:?}",
        t.elapsed()
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"jsonrpc\""),
        "{head}"
    );
    let t = Instant::now();
    let (status, _, _) = post(rpc, Some("Basic X19jb29raWVfXzp3cm9uZw=="), "{}");
    assert_eq!(status, 401);
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "a wrong password waits"
    );
    // JSON-RPC 1.x: results 200, an unknown method 404, another error 500; ids echoed.
    let (status, _, body) = post(
        rpc,
        Some(&auth),
        r#"{"id":"a","method":"getblockcount","params":[]}"#,
    );
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, json!({"result": 0, "error": null, "id": "a"}));
    let (status, _, body) = post(rpc, Some(&auth), r#"{"id":7,"method":"nosuch"}"#);
    assert_eq!(status, 404, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["error"],
        json!({"code": -32601, "message": "Method not found"})
    );
    assert_eq!(v["id"], 7);
    let (status, _, _) = post(
        rpc,
        Some(&auth),
        r#"{"id":7,"method":"getblockhash","params":[9]}"#,
    );
    assert_eq!(status, 500);
    // 2.0: always 200, no "error" beside a result; a notification gets no body.
    let (status, _, body) = post(
        rpc,
        Some(&auth),
        r#"{"jsonrpc":"2.0","id":1,"method":"nosuch"}"#,
    );
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["error"]["code"], -32601);
    let (status, _, body) = post(
        rpc,
        Some(&auth),
        r#"{"jsonrpc":"2.0","method":"getblockcount"}"#,
    );
    assert_eq!((status, body.as_str()), (204, ""));
    // Named parameters, a batch, a body that is not JSON.
    let (_, _, body) = post(
        rpc,
        Some(&auth),
        r#"{"jsonrpc":"2.0","id":2,"method":"getblockhash","params":{"height":0}}"#,
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["result"], "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206",
        "regtest's genesis"
    );
    let (status, _, body) = post(
        rpc,
        Some(&auth),
        r#"[{"id":1,"method":"getblockcount"},{"id":2,"method":"getblockhash","params":{"hieght":0}}]"#,
    );
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["result"], 0, "{v}");
    assert_eq!(v[1]["error"]["code"], -8);
    assert_eq!(v[1]["error"]["message"], "Unknown named parameter hieght");
    // Core's aliases: getblock's verbosity is also `verbose`.
    let (_, _, body) = post(
        rpc,
        Some(&auth),
        r#"{"jsonrpc":"2.0","id":3,"method":"getblock","params":{"blockhash":"0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206","verbose":true}}"#,
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], -1, "known, not kept: {v}");
    assert_eq!(v["error"]["message"], "Block not available (pruned data)");
    // Versions Core does not speak, a scalar body, a batch of notifications only.
    let (status, _, body) = post(
        rpc,
        Some(&auth),
        r#"{"jsonrpc":"3.0","id":1,"method":"getblockcount"}"#,
    );
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], -32600);
    let (status, _, body) = post(rpc, Some(&auth), "7");
    assert_eq!(status, 500);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], -32700);
    let (status, _, body) = post(
        rpc,
        Some(&auth),
        r#"[{"jsonrpc":"2.0","method":"getblockcount"},{"jsonrpc":"2.0","method":"uptime"}]"#,
    );
    assert_eq!((status, body.as_str()), (204, ""));
    let (_, _, body) = post(rpc, Some(&auth), r#"{"id":1,"method":"getnetworkinfo"}"#);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["result"]["version"].as_u64().unwrap() >= 209_900,
        "bitcoin-cli -netinfo needs 209900: {v}"
    );
    let (status, _, body) = post(rpc, Some(&auth), "{not json");
    assert_eq!(status, 500);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], -32700);
    // The admin API's token is not the JSON-RPC's password.
    let token = node.token();
    use base64::Engine;
    let api_as_rpc = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("__cookie__:{token}"))
    );
    assert_eq!(post(rpc, Some(&api_as_rpc), "{}").0, 401);
}

#[test]
fn npm_bitcoin_core_calls_as_an_rpcauth_user() {
    let module = std::env::var_os("MESHD_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.peers")))
        .join("rpcclients/node_modules/bitcoin-core");
    if !module.join("package.json").exists() {
        return skip_or_fail("npm bitcoin-core (scripts/install-test-deps.sh)");
    }
    // A line as Core's share/rpcauth/rpcauth.py prints it.
    let salt = "9d6bd4d9c8ff1a1b4d6ef4b1c9a3f2e1";
    let mut engine = hmac::HmacEngine::<sha256::Hash>::new(salt.as_bytes());
    engine.input(b"hunter2");
    let mac = hmac::Hmac::<sha256::Hash>::from_engine(engine);
    let line = format!("alice:{salt}${mac}");
    let node = Meshd::start(&["--rpc", "127.0.0.1:0", "--rpcauth", &line]);
    let v = run_json(Command::new("node").args([
        &script("rpc_client.js"),
        module.to_str().unwrap(),
        &node.rpc.unwrap().port().to_string(),
        "alice",
        "hunter2",
    ]));
    assert_eq!(v["getblockchaininfo"]["chain"], "regtest", "{v}");
    assert_eq!(v["getnetworkinfo"]["connections"], 0);
    assert_eq!(v["generatetoaddress"].as_array().unwrap().len(), 2);
    assert_eq!(v["getblockcount"], 2);
    assert_eq!(v["getchaintips"][0]["height"], 2);
    assert_eq!(v["getblockhash_2"], v["generatetoaddress"][1]);
    assert_eq!(v["unknown"]["error"]["code"], -32601, "{v}");
    assert_eq!(v["batch"][0], v["generatetoaddress"][0], "{v}");
    // bitcoin-core gives a batch's failed call as the error itself.
    assert_eq!(v["batch"][1]["code"], -8, "{v}");
    assert_eq!(v["wrong_password"]["error"]["code"], 401, "{v}");
}
