//! Connection-scale load generator: opens N inbound connections to a running meshd from one
//! process, completes the version handshake and one ping on each, then holds them idle.
//!
//! Prints handshakes per second and, given the node's pid, its RSS before and with the
//! connections held (per connected peer). See BENCHMARKS.md and scripts/bench-connections.sh.
//!
//! Usage: `loadgen ADDR N [--concurrency C] [--pid PID] [--hold SECS]`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::ServiceFlags;
use meshd_actors::network::NetworkId;
use meshd_actors::wire::{FrameDecoder, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn read_msg(
    stream: &mut TcpStream,
    dec: &mut FrameDecoder,
    pending: &mut Vec<u8>,
) -> std::io::Result<Message> {
    let mut buf = [0u8; 4096];
    loop {
        let mut input = pending.as_slice();
        if let Some(r) = dec.decode(&mut input) {
            let used = pending.len() - input.len();
            pending.drain(..used);
            let frame = r.map_err(|e| std::io::Error::other(e.to_string()))?;
            return Message::decode(frame).map_err(|e| std::io::Error::other(e.to_string()));
        }
        pending.clear();
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// Connects, handshakes, pings once; returns the open stream.
async fn one(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let profile = NetworkId::Regtest.profile();
    let magic = profile.magic;
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut dec = FrameDecoder::new(magic, profile.limits);
    let mut pending = Vec::new();
    let a = Address::new(&addr, ServiceFlags::NONE);
    let mut v = VersionMessage::new(
        ServiceFlags::NETWORK,
        0,
        a.clone(),
        a,
        rand::random(),
        "/loadgen:1/".into(),
        0,
    );
    v.version = 70016;
    stream
        .write_all(&Message::Network(NetworkMessage::Version(v)).encode(magic))
        .await?;
    let (mut version, mut verack) = (false, false);
    while !(version && verack) {
        match read_msg(&mut stream, &mut dec, &mut pending).await? {
            Message::Network(NetworkMessage::Version(_)) => {
                version = true;
                stream
                    .write_all(&Message::Network(NetworkMessage::Verack).encode(magic))
                    .await?;
            }
            Message::Network(NetworkMessage::Verack) => verack = true,
            _ => {}
        }
    }
    let nonce: u64 = rand::random();
    stream
        .write_all(&Message::Network(NetworkMessage::Ping(nonce)).encode(magic))
        .await?;
    loop {
        match read_msg(&mut stream, &mut dec, &mut pending).await? {
            Message::Network(NetworkMessage::Pong(n)) if n == nonce => break,
            Message::Network(NetworkMessage::Ping(n)) => {
                stream
                    .write_all(&Message::Network(NetworkMessage::Pong(n)).encode(magic))
                    .await?;
            }
            _ => {}
        }
    }
    Ok(stream)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: loadgen ADDR N [--concurrency C] [--pid PID] [--hold SECS]";
    let addr: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let concurrency = flag("--concurrency").unwrap_or(256) as usize;
    let pid = flag("--pid").map(|p| p as u32);
    let hold = Duration::from_secs(flag("--hold").unwrap_or(3));

    let rss_before = pid.and_then(rss_kib);
    let gate = Arc::new(Semaphore::new(concurrency));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = gate.clone().acquire_owned().await.expect("semaphore");
        let failed = failed.clone();
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(30), one(addr)).await;
            drop(permit);
            match r {
                Ok(Ok(s)) => Some(s),
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        }));
    }
    let mut streams = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(Some(s)) = t.await {
            streams.push(s);
        }
    }
    let elapsed = started.elapsed();
    let ok = streams.len();
    println!(
        "connections={n} ok={ok} failed={} elapsed_s={:.3} handshakes_per_s={:.0}",
        failed.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64()
    );
    // Let the node settle (allocator, ticks), then read its RSS with every peer idle.
    tokio::time::sleep(hold).await;
    if let (Some(pid), Some(before)) = (pid, rss_before) {
        if let Some(after) = rss_kib(pid) {
            let per_peer = (after.saturating_sub(before)) as f64 / ok.max(1) as f64;
            println!(
                "rss_before_kib={before} rss_with_peers_kib={after} rss_per_peer_kib={per_peer:.2}"
            );
        }
    }
    drop(streams);
}
