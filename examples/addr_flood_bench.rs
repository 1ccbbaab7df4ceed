//! Issue #25's addr-flood target as a benchmark: 100 handshaked loopback peers each send
//! `addr` messages of 1,000 addresses as fast as the node reads them, for a fixed time; the
//! figures are the CPU the meshd process spends meanwhile, as a share of one core (from
//! /proc/PID/stat), and the Manager's own share (the time in its handler, from the
//! `meshd_manager_handle_seconds` sum on /metrics), each next to the share with the same peers
//! connected and silent.
//!
//! meshd makes no outbound connection here (`--max-outbound 0`), so no gossiped address is
//! ever dialled; the addresses are in 203.0.113.0/24 (documentation) anyway.
//!
//! Usage: `cargo run --release --example addr_flood_bench -- [MESHD] [SECS] [PEERS] [FLAGS...]`
//! (defaults `target/release/meshd`, 20, 100); FLAGS go to meshd, e.g. `--whitelist
//! addr@127.0.0.1` so that Core's addr rate limit lets the whole flood reach the Manager.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::ServiceFlags;

#[path = "common/blocking_peer.rs"]
mod blocking_peer;
use blocking_peer::{dial_and_handshake, encode};

/// Addresses per message (Core's MAX_ADDR_TO_SEND).
const ADDRS_PER_MESSAGE: usize = 1000;

/// CPU seconds (user + system) the process has used, from /proc/PID/stat.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after state.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / clock_ticks()
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// One `addr` message of peer `n`'s own addresses (distinct across peers by port).
fn addr_message(n: usize) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let list = (0..ADDRS_PER_MESSAGE)
        .map(|i| {
            let a: SocketAddr = SocketAddr::from((
                [203, 0, 113, (i % 250) as u8 + 1],
                1024 + (n * ADDRS_PER_MESSAGE + i) as u16 % 60_000,
            ));
            (now, Address::new(&a, ServiceFlags::NETWORK))
        })
        .collect();
    encode(NetworkMessage::Addr(list))
}

/// Seconds the Manager has spent in its handler (the histogram's sum on /metrics).
fn manager_busy(port: u16) -> f64 {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0.0;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find(|l| l.starts_with("meshd_manager_handle_seconds_sum"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The node's CPU share and the Manager's over `secs`.
fn measure(pid: u32, port: u16, secs: u64) -> (f64, f64) {
    let (c0, m0, t0) = (cpu_secs(pid), manager_busy(port), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let wall = t0.elapsed().as_secs_f64();
    (
        (cpu_secs(pid) - c0) / wall,
        (manager_busy(port) - m0) / wall,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let meshd = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "target/release/meshd".into());
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let peers: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(100);
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = Command::new(&meshd)
        .arg("--datadir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--no-api"])
        .args(["--metrics", &format!("127.0.0.1:{metrics_port}")])
        .args([
            "--max-outbound",
            "0",
            "--max-inbound",
            "125",
            "--no-dns-seed",
        ])
        .args(["--log-format", "json", "--log-level", "info"])
        .args(args.iter().skip(4))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meshd");
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<SocketAddr>();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("\"p2p listening\"") {
                if let Some(addr) = line
                    .split("\"addr\":\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .and_then(|a| a.parse().ok())
                {
                    let _ = tx.send(addr);
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("meshd listens");
    let flooding = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for n in 0..peers {
        let s = dial_and_handshake(addr, "/addr-flood-bench/");
        // Whatever the node sends is read and dropped, so its writes never block.
        let mut reader = s.try_clone().expect("clone");
        let gone = closed.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while matches!(reader.read(&mut buf), Ok(k) if k > 0) {}
            gone.fetch_add(1, Ordering::Relaxed);
        });
        let (flooding, stop, sent) = (flooding.clone(), stop.clone(), sent.clone());
        threads.push(std::thread::spawn(move || {
            let mut s = s;
            let msg = addr_message(n);
            while !stop.load(Ordering::Relaxed) {
                if !flooding.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                if s.write_all(&msg).is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Handshakes done and settled.
    std::thread::sleep(Duration::from_secs(3));
    let (idle, manager_idle) = measure(pid, metrics_port, secs);
    flooding.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let (busy, manager) = measure(pid, metrics_port, secs);
    let messages = sent.load(Ordering::Relaxed);
    let took = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    println!(
        "{peers} peers, {secs} s: meshd used {:.1}% of a core idle and {:.1}% under the flood, \
         its Manager {:.1}% idle and {:.1}% under the flood; \
         {messages} addr messages ({:.0}/s, {:.0} addresses/s, {:.1} MB/s) sent; {} connections closed by the node",
        idle * 100.0,
        busy * 100.0,
        manager_idle * 100.0,
        manager * 100.0,
        messages as f64 / took,
        messages as f64 * ADDRS_PER_MESSAGE as f64 / took,
        messages as f64 * (ADDRS_PER_MESSAGE * 30 + 27) as f64 / took / 1e6,
        closed.load(Ordering::Relaxed)
    );
    let _ = child.kill();
    let _ = child.wait();
}
