//! Header sync from one independent peer on loopback: headers per second from handshake to
//! synced.
//!
//! The serving peer is `tests/peers/header_server.py` (Python standard library, not meshd),
//! which mines the chain once (kept in a cache file under the target directory) and answers
//! `getheaders` with 2,000 headers at a time. meshd runs in this process on a fresh data
//! directory per run, dials the server as a manual peer, and the clock runs from its
//! `HandshakeComplete` to the `HeadersSynced` event at the server's tip.
//!
//! Usage: `cargo run --release --example header_sync_bench [HEADERS] [RUNS]`
//! (defaults 200,000 and 5). Set `HEADER_SYNC_BENCH_PAUSE=1` to wait for Enter before the
//! runs (attach `perf record -p PID` meanwhile).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshd_actors::config::NodeConfig;
use meshd_actors::events::{EventKind, NodeEvent};
use meshd_actors::network::NetworkId;
use meshd_actors::node::Node;

#[allow(dead_code)]
#[path = "../tests/common/header_server.rs"]
mod header_server;

async fn one_run(server: SocketAddr, headers: u32, tip: &str, dir: &std::path::Path) -> Duration {
    let mut c = NodeConfig::new(NetworkId::Regtest, dir.to_path_buf());
    c.listen = Vec::new();
    c.connect = vec![server];
    c.fetch_blocks = false;
    let mut start = None;
    let node = Node::start(c).await.expect("node starts");
    // Subscribed before the dial completes: a handshake takes a round trip at least.
    let mut events = node.subscribe_to(&[EventKind::HandshakeComplete, EventKind::HeadersSynced]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let elapsed = loop {
        let event = tokio::time::timeout_at(deadline.into(), events.recv())
            .await
            .expect("synced within 2 minutes")
            .expect("event stream open");
        match &event.event {
            NodeEvent::HandshakeComplete { .. } => start = Some(Instant::now()),
            NodeEvent::HeadersSynced { height, tip: t, .. } if *height == headers && t == tip => {
                break start.expect("handshake first").elapsed();
            }
            _ => {}
        }
    };
    println!("  RSS when synced: {} MiB", rss_kib() / 1024);
    node.shutdown().await;
    elapsed
}

/// Resident memory of this process (the node runs in it), KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    // As the daemon does, first thing.
    meshd_actors::tune_allocator();
    let mut args = std::env::args().skip(1);
    let headers: u32 = args.next().map_or(200_000, |a| a.parse().expect("HEADERS"));
    let runs: u32 = args.next().map_or(5, |a| a.parse().expect("RUNS"));
    let server = header_server::start(headers).expect("python3 runs the header server");
    let (addr, tip) = (server.addr, server.tip.clone());
    if std::env::var_os("HEADER_SYNC_BENCH_PAUSE").is_some() {
        eprintln!("pid {}: press Enter to start", std::process::id());
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut rates = Vec::new();
    let mut last_dir = None;
    for run in 1..=runs {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = rt.block_on(one_run(addr, headers, &tip, dir.path()));
        last_dir = Some(dir);
        let rate = f64::from(headers) / t.as_secs_f64();
        println!(
            "run {run}: {headers} headers in {:.3} s = {:.0} headers/s",
            t.as_secs_f64(),
            rate
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "median {:.0} headers/s over {runs} runs",
        rates[rates.len() / 2]
    );
    // A restart on the last run's data directory: how long loading headers.dat takes.
    if let Some(dir) = last_dir {
        let started = Instant::now();
        let mut c = NodeConfig::new(NetworkId::Regtest, dir.path().to_path_buf());
        c.listen = Vec::new();
        let node = rt.block_on(Node::start(c)).expect("node restarts");
        // Sync loads the file as it starts; its status shows the height once done.
        while node.sync_status().header_height < headers && started.elapsed().as_secs() < 60 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let loaded = started.elapsed();
        let height = node.sync_status().header_height;
        println!("  RSS after loading: {} MiB", rss_kib() / 1024);
        rt.block_on(node.shutdown());
        println!(
            "restart: {height} headers loaded from headers.dat in {:.3} s",
            loaded.as_secs_f64()
        );
    }
}
