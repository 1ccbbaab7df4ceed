//! What duplicate `headers` messages cost Sync at mainnet length (issue #24's probe): a node
//! whose chain holds N regtest headers (written to its headers.dat before it starts) gets
//! 2,000 `headers` messages from one loopback peer, each carrying block 1 again, then a
//! `getheaders` for after its tip. Sync handles one peer's messages in order, so the time
//! from the first duplicate to the `getheaders` answer bounds what the duplicates cost it;
//! the same `getheaders` alone, asked just before, is the baseline subtracted.
//!
//! Usage: `cargo run --release --example duplicate_headers_bench [HEADERS] [RUNS]`
//! (defaults 925,000 and 5).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bitcoin::block::Header;
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::GetHeadersMessage;
use bitcoin::BlockHash;
use meshd_actors::config::NodeConfig;
use meshd_actors::network::NetworkId;
use meshd_actors::node::Node;
use meshd_actors::sync::chain::headers::mine_chain;
use meshd_actors::sync::chain::store::HeaderStore;
use meshd_actors::sync::chain::HeaderChain;
use meshd_actors::wire::FrameDecoder;

#[path = "common/blocking_peer.rs"]
mod blocking_peer;
use blocking_peer::{dial_and_handshake, encode};

/// Duplicate messages per run (the probe).
const DUPLICATES: usize = 2_000;

fn handshake(addr: SocketAddr) -> TcpStream {
    dial_and_handshake(addr, "/dup-bench/")
}

/// Reads frames until a `headers` message; returns when it arrived.
fn wait_headers(s: &mut TcpStream, decoder: &mut FrameDecoder) -> Instant {
    let mut buf = vec![0u8; 1 << 16];
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    loop {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "node closed the connection");
        let mut input = &buf[..n];
        while let Some(frame) = decoder.decode(&mut input) {
            if frame.expect("frame").command.as_str() == "headers" {
                return Instant::now();
            }
        }
    }
}

fn getheaders(tip: BlockHash) -> Vec<u8> {
    encode(NetworkMessage::GetHeaders(GetHeadersMessage {
        version: 70016,
        locator_hashes: vec![tip],
        stop_hash: BlockHash::all_zeros(),
    }))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(925_000);
    let runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let profile = NetworkId::Regtest.profile();
    eprintln!("mining {n} regtest headers");
    let chain: Vec<Header> = mine_chain(&profile.genesis, n, 60);
    let tip = chain.last().expect("a chain").block_hash();
    let dir = tempfile::tempdir().expect("tempdir");
    let datadir = dir.path().to_path_buf();
    {
        let mut empty = HeaderChain::new(&profile);
        let (mut store, _) = HeaderStore::open(
            &datadir.join("headers.dat"),
            profile.magic.to_bytes(),
            &mut empty,
        )
        .expect("header file");
        let with_hashes: Vec<(Header, BlockHash)> =
            chain.iter().map(|h| (*h, h.block_hash())).collect();
        for part in with_hashes.chunks(20_000) {
            store.append(part).expect("append");
        }
        store.sync().expect("sync");
    }
    let mut c = NodeConfig::new(NetworkId::Regtest, dir.path().to_path_buf());
    c.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.fetch_blocks = false;
    let node = Node::start(c).await.expect("node starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while node.sync_status().header_height < n {
        assert!(Instant::now() < deadline, "chain never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr = node.listen_addrs()[0];
    let duplicate = encode(NetworkMessage::Headers(vec![chain[0]]));
    let mut flood = Vec::with_capacity(duplicate.len() * DUPLICATES);
    for _ in 0..DUPLICATES {
        flood.extend_from_slice(&duplicate);
    }
    let result = tokio::task::spawn_blocking(move || {
        let mut costs = Vec::new();
        for run in 0..runs {
            let mut s = handshake(addr);
            let mut decoder =
                FrameDecoder::new_established(profile.magic, profile.limits);
            // Baseline: one getheaders alone, after the handshake settles.
            std::thread::sleep(Duration::from_millis(300));
            let t0 = Instant::now();
            s.write_all(&getheaders(tip)).unwrap();
            let base = wait_headers(&mut s, &mut decoder) - t0;
            let t1 = Instant::now();
            s.write_all(&flood).unwrap();
            s.write_all(&getheaders(tip)).unwrap();
            let with = wait_headers(&mut s, &mut decoder) - t1;
            let cost = with.saturating_sub(base);
            eprintln!(
                "run {run}: baseline {:.2} ms, with {DUPLICATES} duplicates {:.2} ms, cost {:.2} ms",
                base.as_secs_f64() * 1e3,
                with.as_secs_f64() * 1e3,
                cost.as_secs_f64() * 1e3
            );
            costs.push(cost);
        }
        costs.sort();
        costs[costs.len() / 2]
    })
    .await
    .expect("client");
    println!(
        "{DUPLICATES} duplicate headers messages at {n} headers: {:.2} ms (median of {runs}), {:.1} µs each",
        result.as_secs_f64() * 1e3,
        result.as_secs_f64() * 1e6 / DUPLICATES as f64
    );
    node.shutdown().await;
}
