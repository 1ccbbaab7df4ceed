//! Hostile-peer memory benchmark: the node's RSS before, during and after each hostile peer,
//! against the same node with one idle peer.
//!
//! The node runs in a child process (this example started with `node`), so the hostile
//! clients' own buffers never count; the parent reads the child's `VmRSS` from `/proc`.
//! Each case: connect, handshake, send exactly the bytes named, sample RSS every 50 ms for
//! 3 s (the peak is "during"), close, wait 3 s, sample "after".
//!
//! Each row runs on a fresh node.
//!
//! Usage: `cargo run --release --example hostile_bench` (`HOSTILE_BENCH_CASE=inv` picks rows,
//! `HOSTILE_BENCH_WRAPPER=heaptrack` runs the node under a profiler).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash;
use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::p2p::ServiceFlags;
use meshd_actors::config::NodeConfig;
use meshd_actors::network::NetworkId;
use meshd_actors::node::Node;
use meshd_actors::sync::chain::headers::mine_header;
use meshd_actors::wire::{encode_frame, Command as WireCommand};

#[path = "common/blocking_peer.rs"]
mod blocking_peer;
use blocking_peer::{dial_and_handshake, encode};

/// The node side: start, mine one block, print the address and the block, run until killed.
async fn node_main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = NodeConfig::new(NetworkId::Regtest, dir.path().to_path_buf());
    c.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.slots.outbound = 0;
    c.slots.inbound = 1000;
    c.slots.total = 1000;
    let node = Node::start(c).await.expect("node starts");
    node.generate(10).await.expect("generate");
    let block = node.generate(1).await.expect("generate")[0];
    println!("{} {}", node.listen_addrs()[0], block);
    node.wait().await;
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn handshake(addr: SocketAddr) -> TcpStream {
    let mut s = dial_and_handshake(addr, "/hostile-bench/");
    // Read the node's version and verack (and whatever follows) for a moment.
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 65536];
    let _ = s.read(&mut buf);
    s
}

/// Sends `count` frames of `command` with a `len`-byte payload of 0x5a bytes.
fn raw_flood(s: &mut TcpStream, command: &str, len: usize, count: usize) {
    let magic = NetworkId::Regtest.profile().magic;
    let frame = encode_frame(magic, WireCommand::new(command).unwrap(), &vec![0x5a; len]);
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..count {
        if s.write_all(&frame).is_err() {
            break;
        }
    }
}

/// One hostile case: what it sends once handshaked. The stream is never read again.
type Case = (
    &'static str,
    Box<dyn Fn(&mut TcpStream, bitcoin::BlockHash) + Sync>,
);

fn cases() -> Vec<Case> {
    let genesis = NetworkId::Regtest.profile().genesis;
    vec![
        (
            "getdata: 12 x 50,000 requests for one block, never reading",
            Box::new(|s: &mut TcpStream, block| {
                s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
                let m = encode(NetworkMessage::GetData(vec![
                    Inventory::Block(block);
                    50_000
                ]));
                for _ in 0..12 {
                    if s.write_all(&m).is_err() {
                        break;
                    }
                }
            }),
        ),
        (
            "headers: 20,001 one-header forks off genesis",
            Box::new(move |s: &mut TcpStream, _| {
                let mut all = Vec::new();
                for i in 0..20_001u32 {
                    let h = mine_header(
                        &genesis,
                        bitcoin::TxMerkleNode::from_byte_array([0x77; 32]),
                        genesis.time + 1 + i,
                        genesis.bits,
                    );
                    all.extend(encode(NetworkMessage::Headers(vec![h])));
                }
                s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = s.write_all(&all);
            }),
        ),
        (
            "inv: 20 x 50,000 unknown transactions",
            Box::new(|s: &mut TcpStream, _| {
                s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
                for round in 0..20u32 {
                    let inv: Vec<Inventory> = (0..50_000u32)
                        .map(|n| {
                            let mut b = [0u8; 32];
                            b[..4].copy_from_slice(&n.to_le_bytes());
                            b[4..8].copy_from_slice(&round.to_le_bytes());
                            Inventory::Transaction(bitcoin::Txid::from_byte_array(b))
                        })
                        .collect();
                    if s.write_all(&encode(NetworkMessage::Inv(inv))).is_err() {
                        break;
                    }
                }
            }),
        ),
        (
            "a command meshd does not read: 10 x 3.9 MB",
            Box::new(|s: &mut TcpStream, _| raw_flood(s, "blocktxn", 3_900_000, 10)),
        ),
        (
            "`block` nobody asked for: 10 x 3.9 MB",
            Box::new(|s: &mut TcpStream, _| raw_flood(s, "block", 3_900_000, 10)),
        ),
        (
            "`tx` larger than any relayed: 10 x 3.9 MB",
            Box::new(|s: &mut TcpStream, _| raw_flood(s, "tx", 3_900_000, 10)),
        ),
        (
            "`ping` 3.9 MB long (longer than any valid one), twice",
            Box::new(|s: &mut TcpStream, _| raw_flood(s, "ping", 3_900_000, 2)),
        ),
        (
            "`tx`: 10 x 399 KB (the largest relayed), never reading",
            Box::new(|s: &mut TcpStream, _| raw_flood(s, "tx", 399_000, 10)),
        ),
        (
            "addr: 200 x 1,000 addresses",
            Box::new(|s: &mut TcpStream, _| {
                s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
                for round in 0..200u32 {
                    let list = (0..1000u32)
                        .map(|n| {
                            let ip = std::net::Ipv4Addr::from(0xcb00_7100 ^ (round << 10 | n));
                            (
                                1_700_000_000,
                                Address::new(&SocketAddr::from((ip, 8333)), ServiceFlags::NETWORK),
                            )
                        })
                        .collect();
                    if s.write_all(&encode(NetworkMessage::Addr(list))).is_err() {
                        break;
                    }
                }
            }),
        ),
    ]
}

/// How long after the hostile peer leaves "after" is sampled.
const AFTER_SECS: u64 = 3;

/// A node in a child process, with one idle peer connected.
struct ChildNode {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    block: bitcoin::BlockHash,
    _idle: TcpStream,
}

impl ChildNode {
    fn start() -> ChildNode {
        let me = std::env::current_exe().unwrap();
        // HOSTILE_BENCH_WRAPPER runs the node under a profiler (e.g. `heaptrack`).
        let mut command = match std::env::var("HOSTILE_BENCH_WRAPPER") {
            Ok(wrapper) => {
                let mut c = Command::new(wrapper);
                c.arg(me);
                c
            }
            Err(_) => Command::new(me),
        };
        let mut child: Child = command
            .arg("node")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node process");
        let pid = child.id();
        // The node's first line of its own is "<address> <block>"; a wrapper may print first.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (addr, block) = loop {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0, "node exited");
            let mut parts = line.split_whitespace();
            let addr = parts.next().and_then(|a| a.parse::<SocketAddr>().ok());
            let block = parts
                .next()
                .and_then(|b| b.parse::<bitcoin::BlockHash>().ok());
            if let (Some(addr), Some(block)) = (addr, block) {
                break (addr, block);
            }
        };
        std::thread::sleep(Duration::from_secs(1));
        let idle = handshake(addr);
        std::thread::sleep(Duration::from_secs(1));
        ChildNode {
            child,
            pid,
            addr,
            block,
            _idle: idle,
        }
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("node") {
        if std::env::var_os("HOSTILE_BENCH_DEFAULT_ALLOCATOR").is_none() {
            meshd_actors::tune_allocator();
        }
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(node_main());
        return;
    }
    println!("| hostile peer | node with one idle peer | peak during | beyond the idle peer | after it left |");
    println!("|---|---|---|---|---|");
    // HOSTILE_BENCH_CASE picks the rows whose name contains it.
    let only = std::env::var("HOSTILE_BENCH_CASE").unwrap_or_default();
    for (name, send) in cases().into_iter().filter(|(n, _)| n.contains(&only)) {
        // A fresh node per row, so no row pays for another's leftovers.
        let node = ChildNode::start();
        let before = rss_kib(node.pid);
        let mut s = handshake(node.addr);
        let start = Instant::now();
        let mut peak = before;
        std::thread::scope(|scope| {
            let sender = scope.spawn(|| send(&mut s, node.block));
            while start.elapsed() < Duration::from_secs(3) || !sender.is_finished() {
                peak = peak.max(rss_kib(node.pid));
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        drop(s);
        std::thread::sleep(Duration::from_secs(AFTER_SECS));
        let after = rss_kib(node.pid);
        println!(
            "| {name} | {before} KiB | {peak} KiB | +{} KiB | {after} KiB ({:+.1}%) |",
            peak.saturating_sub(before),
            (after as f64 - before as f64) * 100.0 / before as f64
        );
    }
}
