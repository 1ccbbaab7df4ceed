//! The node never dies of, or waits on, its own log: standard error closed under it (the
//! `| cat` whose `cat` is killed), on a full file system, or a pipe nobody reads (a stalled
//! journald). Lines that cannot be written are dropped and counted in
//! `meshd_log_dropped_total`; the node keeps serving, and a later SIGTERM still saves its
//! state, removes the cookie and exits 0.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, is_root, meshd_bin};

/// A node started with fixed ports (its log may be unreadable) and `stderr` as given.
struct Node {
    child: Child,
    datadir: PathBuf,
    api: SocketAddr,
    metrics: SocketAddr,
    p2p: SocketAddr,
}

impl Node {
    fn start(datadir: &Path, stderr: Stdio) -> Node {
        let port = |_| SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (api, metrics, p2p) = (port(0), port(1), port(2));
        let child = Command::new(meshd_bin())
            .arg("--datadir")
            .arg(datadir)
            .args(["--log-format", "json", "--log-level", "debug,ractor=warn"])
            .args(["--api", &api.to_string()])
            .args(["--metrics", &metrics.to_string()])
            .args(["--listen", &p2p.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn meshd");
        let node = Node {
            child,
            datadir: datadir.to_path_buf(),
            api,
            metrics,
            p2p,
        };
        node.wait_for("the admin API", |n| {
            n.cookie().exists() && n.scrape().is_some()
        });
        node
    }

    fn cookie(&self) -> PathBuf {
        self.datadir.join("regtest/.cookie")
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    fn wait_for(&self, what: &str, f: impl Fn(&Node) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The metrics page, if it answers within 5 s.
    fn scrape(&self) -> Option<String> {
        use std::io::Read;
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(5)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: meshd\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
    }

    fn log_dropped(&self) -> f64 {
        self.scrape()
            .and_then(|page| {
                page.lines().find_map(|l| {
                    l.strip_prefix("meshd_log_dropped_total ")
                        .and_then(|v| v.trim().parse().ok())
                })
            })
            .unwrap_or(0.0)
    }

    /// Makes the node log: a one-try connection to a closed port (as in the report) and
    /// inbound connections that send garbage, each logged as it comes and goes.
    fn make_it_log(&self, connections: usize) {
        let out = Command::new(meshd_bin())
            .args(["addnode", "127.0.0.1:1", "--onetry"])
            .args(["--api", &self.api.to_string()])
            .arg("--datadir")
            .arg(&self.datadir)
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("run meshd addnode");
        assert!(out.success(), "meshd addnode failed: {out}");
        for _ in 0..connections {
            if let Ok(mut s) = TcpStream::connect_timeout(&self.p2p, Duration::from_secs(2)) {
                let _ = s.write_all(&[0xde; 64]);
            }
        }
    }

    /// SIGTERM, then the exit status within 20 s.
    fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("meshd did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Logging went wrong, the node went on: it logged lines that were dropped and counted,
/// still answers, and a SIGTERM saves peers.dat, removes the cookie and exits 0.
fn check_survived_and_stops_cleanly(mut node: Node) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.log_dropped() == 0.0 {
        assert!(node.alive(), "meshd died of its log");
        assert!(
            Instant::now() < deadline,
            "no dropped log line counted: {:?}",
            node.scrape()
        );
        node.make_it_log(20);
    }
    assert!(node.alive(), "meshd died of its log");
    let peers_dat = node.datadir.join("regtest/peers.dat");
    let cookie = node.cookie();
    let _ = std::fs::remove_file(&peers_dat);
    let status = node.terminate();
    assert!(status.success(), "meshd exited with {status}");
    assert!(peers_dat.exists(), "peers.dat not saved at shutdown");
    assert!(!cookie.exists(), "cookie left behind");
}

#[test]
fn a_closed_log_pipe_costs_lines_not_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), Stdio::piped());
    let mut node = node;
    // Read a first line (the log works), then close the reading end: every later write
    // fails with EPIPE, as when the `cat` of `meshd ... 2>&1 | cat` is killed.
    let stderr = node.child.stderr.take().expect("stderr");
    let mut first = String::new();
    BufReader::new(stderr)
        .read_line(&mut first)
        .expect("a first log line");
    assert!(first.contains("starting node"), "first line: {first}");
    check_survived_and_stops_cleanly(node);
}

/// A full file system under standard error: a 64 KiB tmpfs filled before the start (root;
/// elsewhere `/dev/full`, which fails every write with the same ENOSPC).
#[test]
fn a_log_on_a_full_disk_costs_lines_not_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mounted = is_root()
        && Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(logs.path())
            .status()
            .is_ok_and(|s| s.success());
    let log_file = if mounted {
        let path = logs.path().join("meshd.log");
        let mut filler = std::fs::File::create(logs.path().join("filler")).unwrap();
        while filler.write_all(&[0u8; 4096]).is_ok() {}
        drop(filler);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
    } else {
        eprintln!("not root: standard error on /dev/full instead of a full tmpfs");
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let node = Node::start(dir.path(), Stdio::from(log_file));
    check_survived_and_stops_cleanly(node);
    if mounted {
        let _ = Command::new("umount").arg("-l").arg(logs.path()).status();
    }
}

/// A pipe nobody reads (a stalled journald): once its buffer is full, lines are dropped
/// instead of the node's threads waiting on the write; the API and metrics keep answering.
#[test]
fn an_unread_log_pipe_never_stalls_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), Stdio::piped());
    // Held open and never read.
    let _stderr = node.child.stderr.take().expect("stderr");
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.log_dropped() == 0.0 {
        assert!(Instant::now() < deadline, "no dropped log line counted");
        node.make_it_log(200);
    }
    // Stalled, the node would not answer this (its threads blocked in write).
    let started = Instant::now();
    node.make_it_log(1);
    assert!(node.scrape().is_some(), "metrics stopped answering");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the node answered in {:?}",
        started.elapsed()
    );
    assert!(node.alive());
    check_survived_and_stops_cleanly(node);
}
