//! Connection-scale load generator: opens N inbound connections to a running meshd from one
//! process, completes the version handshake and one ping on each, then holds them idle.
//!
//! Prints handshakes per second and, given the node's pid, its RSS before and with the
//! connections held (per connected peer). See BENCHMARKS.md and scripts/bench-connections.sh.
//!
//! With `--v2` every connection opens with the BIP324 v2 key exchange (meshd's own sans-IO
//! core as the initiator), so v1 and v2 handshake rates and idle RSS compare directly.
//!
//! Usage: `loadgen ADDR N [--concurrency C] [--pid PID] [--hold SECS] [--v2]`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bip324::Role;
use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::ServiceFlags;
use meshd_actors::network::NetworkId;
use meshd_actors::wire::v2::{V2Decoder, V2Encoder, V2Handshake};
use meshd_actors::wire::{Frame, FrameDecoder, FrameError, Message};
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

/// One connection's framing: plaintext v1, or BIP324 v2 through meshd's own sans-IO core.
enum Wire {
    V1 { dec: Box<FrameDecoder> },
    V2 { enc: V2Encoder, dec: Box<V2Decoder> },
}

impl Wire {
    fn encode(&mut self, m: NetworkMessage) -> Vec<u8> {
        let frame = Message::Network(m).encode(NetworkId::Regtest.profile().magic);
        match self {
            Wire::V1 { .. } => frame,
            // The load generator sends only small messages.
            Wire::V2 { enc, .. } => enc.encrypt_v1_frame(&frame).unwrap_or_default(),
        }
    }

    fn decode(&mut self, input: &mut &[u8]) -> Option<Result<Frame, FrameError>> {
        match self {
            Wire::V1 { dec } => dec.decode(input),
            Wire::V2 { dec, .. } => dec.decode(input),
        }
    }
}

async fn read_msg(
    stream: &mut TcpStream,
    wire: &mut Wire,
    pending: &mut Vec<u8>,
) -> std::io::Result<Message> {
    let mut buf = [0u8; 4096];
    loop {
        let mut input = pending.as_slice();
        if let Some(r) = wire.decode(&mut input) {
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

/// The v2 key exchange as initiator; returns the session's framing and what the node sent
/// after its version packet.
async fn v2_handshake(stream: &mut TcpStream) -> std::io::Result<(Wire, Vec<u8>)> {
    let profile = NetworkId::Regtest.profile();
    let (mut hs, key) = V2Handshake::new(profile.magic.to_bytes(), Role::Initiator);
    stream.write_all(&key).await?;
    let mut buf = [0u8; 4096];
    let mut input = Vec::new();
    loop {
        let step = hs
            .feed(&input)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        stream.write_all(&step.send).await?;
        if let Some(ready) = step.ready {
            let wire = Wire::V2 {
                enc: V2Encoder::new(ready.outbound),
                dec: Box::new(V2Decoder::new(
                    ready.inbound,
                    FrameDecoder::new(profile.magic, profile.limits),
                )),
            };
            return Ok((wire, ready.leftover));
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        input = buf[..n].to_vec();
    }
}

/// Connects, handshakes (v1 or v2), pings once; returns the open stream.
async fn one(addr: SocketAddr, v2: bool) -> std::io::Result<TcpStream> {
    let profile = NetworkId::Regtest.profile();
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut wire, mut pending) = if v2 {
        v2_handshake(&mut stream).await?
    } else {
        let dec = Box::new(FrameDecoder::new(profile.magic, profile.limits));
        (Wire::V1 { dec }, Vec::new())
    };
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
    let bytes = wire.encode(NetworkMessage::Version(v));
    stream.write_all(&bytes).await?;
    let (mut version, mut verack) = (false, false);
    while !(version && verack) {
        match read_msg(&mut stream, &mut wire, &mut pending).await? {
            Message::Network(NetworkMessage::Version(_)) => {
                version = true;
                let bytes = wire.encode(NetworkMessage::Verack);
                stream.write_all(&bytes).await?;
            }
            Message::Network(NetworkMessage::Verack) => verack = true,
            _ => {}
        }
    }
    let nonce: u64 = rand::random();
    let bytes = wire.encode(NetworkMessage::Ping(nonce));
    stream.write_all(&bytes).await?;
    loop {
        match read_msg(&mut stream, &mut wire, &mut pending).await? {
            Message::Network(NetworkMessage::Pong(n)) if n == nonce => break,
            Message::Network(NetworkMessage::Ping(n)) => {
                let bytes = wire.encode(NetworkMessage::Pong(n));
                stream.write_all(&bytes).await?;
            }
            _ => {}
        }
    }
    Ok(stream)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: loadgen ADDR N [--concurrency C] [--pid PID] [--hold SECS] [--v2]";
    let v2 = args.iter().any(|a| a == "--v2");
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
            let r = tokio::time::timeout(Duration::from_secs(30), one(addr, v2)).await;
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
        "transport={} connections={n} ok={ok} failed={} elapsed_s={:.3} handshakes_per_s={:.0}",
        if v2 { "v2" } else { "v1" },
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
