//! Crash safety of the data directory: meshd killed with SIGKILL at random moments during
//! header sync, 20 times in a row, against a serving peer that is not meshd
//! (`tests/peers/header_server.py`). Every restart must be clean: it starts, loads
//! `headers.dat` without an error, keeps everything the previous run had committed (no loss
//! beyond the unflushed tail of the group commit), and the last run syncs to the tip. The
//! download is paced (300 KiB/s, about 3,800 headers/s) so every kill lands in the middle
//! of the sync, which the test checks.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{msg, skip_or_fail, Meshd};

const HEADERS: u32 = 60_000;
const KILLS: usize = 20;
/// Headers a kill may lose: the group commit flushes every 20,000 headers or 500 ms; at
/// 300 KiB/s the 500 ms bound comes first (about 1,900 headers), plus the batch in hand.
const UNFLUSHED_TAIL: f64 = 5_000.0;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn header_server() -> Option<(Server, String)> {
    let python = Command::new("python3").arg("--version").output();
    if python.is_err() {
        skip_or_fail("python3 (the header-serving peer)");
        return None;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = root.join(format!("target/header-server-{HEADERS}-60s.bin"));
    let mut child = Command::new("python3")
        .arg(root.join("tests/peers/header_server.py"))
        .args(["--headers", &HEADERS.to_string(), "--cache"])
        .arg(&cache)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the header server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server line");
    // "listening on 127.0.0.1:PORT tip HASH"
    let addr = line.split_whitespace().nth(2).expect("address").to_string();
    Some((Server(child), addr))
}

/// A small deterministic generator for the kill moments (no dependency needed).
fn next_delay(state: &mut u64) -> Duration {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    Duration::from_millis(150 + *state % 1000)
}

#[test]
fn twenty_kill_9s_during_header_sync_each_restart_clean() {
    let Some((_server, addr)) = header_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--connect",
        addr.as_str(),
        "--blocks",
        "none",
        "--max-download-rate",
        "300KiB",
    ];
    let mut committed = 0.0_f64;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..KILLS {
        let mut node = Meshd::start_in(dir.path(), &args, true);
        let loaded = node.wait_log("chain loaded", Duration::from_secs(30), |v| {
            msg(v) == "header chain loaded"
        });
        let height = loaded["height"].as_f64().unwrap();
        assert!(
            height + UNFLUSHED_TAIL >= committed,
            "round {round}: loaded {height}, the previous run had reached {committed}"
        );
        // Run a random while, read how far it got, then kill it in the middle of the sync.
        std::thread::sleep(next_delay(&mut seed));
        let reached = node.metric("meshd_header_height").unwrap_or(height);
        node.stop_with("KILL", Duration::from_secs(5));
        eprintln!("round {round}: loaded {height}, reached {reached}, killed");
        assert!(
            node.raw_lines()
                .iter()
                .all(|l| !l.contains("\"level\":\"ERROR\"")),
            "round {round}: an error was logged: {:?}",
            node.raw_lines()
                .iter()
                .filter(|l| l.contains("ERROR"))
                .collect::<Vec<_>>()
        );
        assert!(
            reached < f64::from(HEADERS),
            "round {round}: already synced before the kill"
        );
        committed = committed.max(reached);
    }
    // The last run after the 20th kill: loads cleanly and finishes the sync.
    let node = Meshd::start_in(dir.path(), &args, true);
    let loaded = node.wait_log("chain loaded", Duration::from_secs(30), |v| {
        msg(v) == "header chain loaded"
    });
    assert!(loaded["height"].as_f64().unwrap() + UNFLUSHED_TAIL >= committed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.metric("meshd_header_height") != Some(f64::from(HEADERS)) {
        assert!(
            Instant::now() < deadline,
            "not synced after the kills: {:?}",
            node.metric("meshd_header_height")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
