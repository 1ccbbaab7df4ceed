//! The header-serving peer `tests/peers/header_server.py` (Python standard library, not
//! meshd) started for a test or benchmark: it mines `headers` regtest headers once (cached
//! under the target directory) and serves them until dropped. Shared by tests/crash.rs,
//! tests/full_disk.rs and examples/header_sync_bench.rs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// The running server, killed when dropped.
pub struct HeaderServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its tip's hash (display order).
    pub tip: String,
}

impl Drop for HeaderServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server with `headers` headers; `None` if python3 cannot run.
pub fn start(headers: u32) -> Option<HeaderServer> {
    start_with(headers, &[])
}

/// [`start`] with more arguments for the server (e.g. `--services 0xd`).
pub fn start_with(headers: u32, extra: &[&str]) -> Option<HeaderServer> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = root.join(format!("target/header-server-{headers}-60s.bin"));
    let mut child = Command::new("python3")
        .arg(root.join("tests/peers/header_server.py"))
        .args(["--headers", &headers.to_string(), "--cache"])
        .arg(&cache)
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take()?)
        .read_line(&mut line)
        .ok()?;
    // "listening on 127.0.0.1:PORT tip HASH"
    let words: Vec<&str> = line.split_whitespace().collect();
    let addr = words.get(2)?.parse().ok()?;
    let tip = words.get(4)?.to_string();
    Some(HeaderServer { child, addr, tip })
}
