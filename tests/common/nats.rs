//! A real `nats-server` with JetStream on loopback for the fleet tests: file storage in a
//! directory of the test's, so a restart on the same port keeps the streams. Shared by both
//! test crates.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server binary, or a skip (a failure in CI).
pub fn nats_path() -> Option<PathBuf> {
    let found = [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    if found.is_none() {
        super::skip_or_fail("nats-server (Debian package nats-server), with JetStream");
    }
    found
}

/// JetStream's file store limit for a test server: above the fleet's default stream size
/// (1 GiB), which the server reserves when the stream is made.
const JETSTREAM_MAX_FILE_STORE: &str = "4GB";

/// JetStream's memory store limit for a test server: the fleet keeps nothing in memory.
const JETSTREAM_MAX_MEMORY_STORE: &str = "64MB";

/// A running nats-server; killed when dropped.
pub struct Nats {
    child: Option<Child>,
    bin: PathBuf,
    /// The server's config file (`-c`): JetStream's store and limits, and the test's
    /// accounts and permissions.
    config: PathBuf,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Nats {
    /// Starts one with JetStream, its store in `dir`.
    pub fn start(bin: &Path, dir: &Path) -> Nats {
        Nats::start_with(bin, dir, None)
    }

    /// Starts one with JetStream and the server config `conf` (users, permissions), its
    /// store in `dir`.
    pub fn start_with(bin: &Path, dir: &Path, conf: Option<&str>) -> Nats {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let store = dir.join("jetstream");
        // JetStream's store limit is set, not left to the server: unset, it is 75% of the
        // disk's free space when the server starts, and a test machine with little free
        // space in its temporary directory (seen in CI) then refuses the fleet's 1 GiB
        // stream, so no node ever joins. Nothing here writes more than a few megabytes.
        let text = format!(
            "{}\njetstream {{ store_dir: {:?}, max_file_store: {JETSTREAM_MAX_FILE_STORE}, max_memory_store: {JETSTREAM_MAX_MEMORY_STORE} }}\n",
            conf.unwrap_or(""),
            store.display().to_string()
        );
        let config = dir.join("nats.conf");
        std::fs::write(&config, text).expect("nats config");
        let mut n = Nats {
            child: None,
            bin: bin.to_path_buf(),
            config,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        n.restart();
        n
    }

    /// Starts one in a fresh temporary directory (kept as long as the returned guard), or
    /// `None` after a skip notice when nats-server is missing (a failure in CI).
    pub fn start_temp() -> Option<(Nats, tempfile::TempDir)> {
        let bin = nats_path()?;
        let dir = tempfile::tempdir().expect("tempdir");
        Some((Nats::start(&bin, dir.path()), dir))
    }

    /// The URL clients take.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Stops the server (SIGKILL), keeping its store.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store; waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(["-a", "127.0.0.1", "-p", &self.addr.port().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(self.addr).is_err() {
            assert!(Instant::now() < deadline, "nats-server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The daemon flags that put a node named `node` into `fleet` on the server at `url`.
pub fn fleet_flags<'a>(url: &'a str, fleet: &'a str, node: &'a str) -> [&'a str; 6] {
    ["--nats", url, "--fleet", fleet, "--node-name", node]
}
