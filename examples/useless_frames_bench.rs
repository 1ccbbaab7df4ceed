//! Issue #25's probe as a benchmark: one handshaked loopback peer sends 500,000 empty
//! `block` frames (24 bytes each, 12 MB) to a meshd daemon; reported are the time from the
//! first frame to the node closing the connection, and the log lines the node wrote from
//! the handshake to a second after the close (targets: within 1 s, at most 100 lines).
//!
//! Usage: `cargo run --release --example useless_frames_bench -- [MESHD] [RUNS] [LOG_LEVEL]`
//! (defaults `target/release/meshd`, 5, `info`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

#[path = "common/blocking_peer.rs"]
mod blocking_peer;
use blocking_peer::dial_and_handshake;

/// Frames per run (the probe's).
const FRAMES: usize = 500_000;

/// An empty regtest `block` frame: magic, command, length 0, sha256d("")[..4].
fn empty_block_frame() -> Vec<u8> {
    let mut f = vec![0xfa, 0xbf, 0xb5, 0xda];
    let mut command = [0u8; 12];
    command[..5].copy_from_slice(b"block");
    f.extend_from_slice(&command);
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&[0x5d, 0xf6, 0xe0, 0xe2]);
    f
}

/// Reads until the node closes; waits at most 30 s.
fn wait_closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let meshd = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "target/release/meshd".into());
    let runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let level = args.get(3).cloned().unwrap_or_else(|| "info".into());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(&meshd)
        .arg("--datadir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--no-api", "--no-metrics"])
        .args(["--log-format", "json", "--log-level", &level])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meshd");
    let lines = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<SocketAddr>();
    let counted = lines.clone();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            counted.fetch_add(1, Ordering::Relaxed);
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
    let mut flood = empty_block_frame().repeat(FRAMES);
    let mut results = Vec::new();
    for run in 0..runs {
        let mut s = dial_and_handshake(addr, "/useless-frames-bench/");
        // Let the handshake's own lines come first.
        std::thread::sleep(Duration::from_millis(500));
        let before = lines.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let mut writer = s.try_clone().expect("clone");
        let sender = std::thread::spawn(move || {
            let _ = writer.write_all(&flood);
            flood
        });
        let closed = wait_closed(&mut s);
        let took = t0.elapsed();
        flood = sender.join().expect("sender");
        std::thread::sleep(Duration::from_secs(1));
        let logged = lines.load(Ordering::Relaxed) - before;
        eprintln!(
            "run {run}: closed {closed} after {:.1} ms, {logged} log lines",
            took.as_secs_f64() * 1e3
        );
        results.push((took, logged, closed));
    }
    results.sort();
    let (took, logged, closed) = results[results.len() / 2];
    println!(
        "{FRAMES} empty block frames: connection closed {closed} after {:.1} ms, {logged} log lines at {level} (median of {runs})",
        took.as_secs_f64() * 1e3
    );
    let _ = child.kill();
    let _ = child.wait();
}
