//! Header sync over slow links (issue #15 part 3): 8 serving peers, each behind its own link
//! with a 50 ms round trip and 20 Mbit/s per direction, and one meshd.
//!
//! The serving peers are `tests/peers/header_server.py` (Python standard library, not meshd),
//! one process each, on the same pre-mined regtest chain. The kernel here has no netem, so
//! each link is `tests/peers/delay_relay.py`: a loopback TCP relay that serialises bytes at
//! the rate and delivers them after the one-way delay, per direction.
//!
//! Measured, in one run, from the first completed handshake to the chain's tip:
//! 1. meshd without hints from one peer (the first link);
//! 2. meshd with hints (exported from run 1's chain, as `meshd hints export` writes them)
//!    from all 8 peers;
//! 3. bcoin in SPV mode given the same peers (`--only`), if bcoin is installed
//!    (`scripts/install-test-deps.sh`), from bcoin's "ready" to its height reaching the tip.
//!    On regtest bcoin has no checkpoints, so its SPV mode syncs with `getblocks` and
//!    filtered blocks (`merkleblock`) from one loader peer, which the header server serves
//!    as Core does.
//!
//! Usage: `cargo run --release --example header_lab -- [HEADERS] [PEERS] [--no-bcoin]`
//! (defaults 400,000 and 8).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshd_actors::config::NodeConfig;
use meshd_actors::events::{EventKind, NodeEvent};
use meshd_actors::network::NetworkId;
use meshd_actors::node::Node;

#[allow(dead_code)]
#[path = "../tests/common/header_server.rs"]
mod header_server;

#[allow(dead_code)]
#[path = "../tests/common/bcoin.rs"]
mod bcoin;

/// For the bcoin helper.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// For the bcoin helper: the lab is not a test; a missing bcoin is reported and skipped.
fn skip_or_fail(why: &str) {
    println!("bcoin skipped: {why}");
}

/// Longest the bcoin leg may take.
const BCOIN_DEADLINE: Duration = Duration::from_secs(3600);

/// One-way delay of each link (a 50 ms round trip).
const ONE_WAY_DELAY_MS: u32 = 25;
/// Bandwidth of each link, per direction.
const RATE_MBIT: u32 = 20;

/// A delaying relay in front of one server, killed when dropped.
struct Relay {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn relay(target: SocketAddr) -> Relay {
    use std::io::BufRead;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("python3")
        .arg(root.join("tests/peers/delay_relay.py"))
        .args(["--target", &target.to_string()])
        .args(["--delay-ms", &ONE_WAY_DELAY_MS.to_string()])
        .args(["--rate-mbit", &RATE_MBIT.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the relay");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("relay ready");
    // "listening on 127.0.0.1:PORT"
    let addr = line
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .expect("relay address");
    Relay { child, addr }
}

/// Syncs a fresh node from `peers`, with `hints`; the time from the first handshake to the
/// tip, and the node's hints afterwards.
async fn sync(
    peers: &[SocketAddr],
    hints: Vec<(u32, bitcoin::BlockHash)>,
    headers: u32,
    tip: &str,
) -> (Duration, Vec<(u32, bitcoin::BlockHash)>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = NodeConfig::new(NetworkId::Regtest, dir.path().to_path_buf());
    c.listen = Vec::new();
    c.connect = peers.to_vec();
    c.fetch_blocks = false;
    c.header_hints = hints;
    let node = Node::start(c).await.expect("node starts");
    let mut events = node.subscribe_to(&[EventKind::HandshakeComplete, EventKind::HeadersSynced]);
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut start = None;
    let elapsed = loop {
        let event = tokio::time::timeout_at(deadline.into(), events.recv())
            .await
            .expect("synced within 30 minutes")
            .expect("event stream open");
        match &event.event {
            NodeEvent::HandshakeComplete { .. } => {
                start.get_or_insert_with(Instant::now);
            }
            NodeEvent::HeadersSynced { height, tip: t, .. } if *height == headers && t == tip => {
                break start.expect("handshake first").elapsed();
            }
            _ => {}
        }
    };
    let hints = node.header_hints().await.expect("hints");
    node.shutdown().await;
    (elapsed, hints)
}

/// bcoin's chain height, from its JSON-RPC (0 when it does not answer).
fn bcoin_height(b: &bcoin::Bcoin) -> u64 {
    let url = format!("http://127.0.0.1:{}/", b.http_port);
    let body = r#"{"method":"getblockcount","params":[]}"#;
    ureq::post(&url)
        .send(body.as_bytes())
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["result"].as_u64())
        .unwrap_or(0)
}

fn main() {
    meshd_actors::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let numbers: Vec<u32> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let headers = numbers.first().copied().unwrap_or(400_000);
    let n_peers = numbers.get(1).copied().unwrap_or(8) as usize;
    let with_bcoin = !args.iter().any(|a| a == "--no-bcoin");

    let servers: Vec<_> = (0..n_peers)
        .map(|_| {
            // NETWORK | BLOOM | WITNESS, so bcoin's SPV mode takes them as peers.
            header_server::start_with(headers, &["--services", "0xd"])
                .expect("python3 runs the header server")
        })
        .collect();
    let tip = servers[0].tip.clone();
    let relays: Vec<Relay> = servers.iter().map(|s| relay(s.addr)).collect();
    let links: Vec<SocketAddr> = relays.iter().map(|r| r.addr).collect();
    println!(
        "{n_peers} peers serving {headers} headers, each behind a {} ms round trip at {RATE_MBIT} Mbit/s",
        2 * ONE_WAY_DELAY_MS
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    let (one, hints) = rt.block_on(sync(&links[..1], Vec::new(), headers, &tip));
    println!(
        "meshd, no hints, 1 peer:        {:7.2} s  {:9.0} headers/s",
        one.as_secs_f64(),
        f64::from(headers) / one.as_secs_f64()
    );
    let (many, _) = rt.block_on(sync(&links, hints.clone(), headers, &tip));
    println!(
        "meshd, {} hints, {n_peers} peers:   {:7.2} s  {:9.0} headers/s  ({:.1} times faster)",
        hints.len(),
        many.as_secs_f64(),
        f64::from(headers) / many.as_secs_f64(),
        one.as_secs_f64() / many.as_secs_f64()
    );

    if with_bcoin {
        let only = links
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        if let Some(b) = bcoin::Bcoin::start(&["--spv".into(), format!("--only={only}")]) {
            let started = Instant::now();
            let mut height = 0;
            while height < u64::from(headers) && started.elapsed() < BCOIN_DEADLINE {
                std::thread::sleep(Duration::from_millis(200));
                height = bcoin_height(&b);
            }
            let t = started.elapsed();
            println!(
                "bcoin SPV, {n_peers} peers given:  {:7.2} s  {:9.0} headers/s  (height {height})",
                t.as_secs_f64(),
                height as f64 / t.as_secs_f64()
            );
        }
    }
}
