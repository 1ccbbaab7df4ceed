//! Harness for end-to-end tests: starts the real `meshd` binary, collects its JSON log lines,
//! and stops it with a signal. Every wait is bounded in time.

#![allow(dead_code)]

pub mod bcoin;
pub mod rawpeer;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running meshd process.
pub struct Meshd {
    child: Option<Child>,
    logs: Arc<Mutex<Vec<Value>>>,
    raw: Arc<Mutex<Vec<String>>>,
    /// The first P2P listen address, if it listens.
    pub addr: Option<SocketAddr>,
    /// The metrics address, if it serves metrics.
    pub metrics: Option<SocketAddr>,
    /// The admin API address, if it serves one.
    pub api: Option<SocketAddr>,
    /// The JSON-RPC address, if it serves one (`--rpc`).
    pub rpc: Option<SocketAddr>,
    _dir: Option<tempfile::TempDir>,
    pub datadir: PathBuf,
}

pub fn meshd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_meshd")
}

/// Polls `f` every 100 ms until it holds; fails after `secs`.
pub fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Meshd {
    /// Starts meshd on regtest in a fresh data dir with `--listen 127.0.0.1:0` and JSON logs,
    /// plus `extra` arguments; waits until it listens.
    pub fn start(extra: &[&str]) -> Meshd {
        let dir = tempfile::tempdir().expect("tempdir");
        let datadir = dir.path().to_path_buf();
        let mut m = Meshd::start_in(&datadir, extra, true);
        m._dir = Some(dir);
        m
    }

    /// Starts meshd with `datadir`; `listen` adds `--listen 127.0.0.1:0`.
    pub fn start_in(datadir: &Path, extra: &[&str], listen: bool) -> Meshd {
        Meshd::start_wrapped(&[], datadir, extra, listen)
    }

    /// Starts meshd under a wrapper command (e.g. `ip netns exec NS`).
    pub fn start_wrapped(wrapper: &[&str], datadir: &Path, extra: &[&str], listen: bool) -> Meshd {
        let mut cmd = match wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(meshd_bin());
                c
            }
            None => Command::new(meshd_bin()),
        };
        cmd.arg("--datadir")
            .arg(datadir)
            .args(["--log-format", "json"]);
        if listen {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !extra.contains(&"--metrics") && !extra.contains(&"--no-metrics") {
            cmd.args(["--metrics", "127.0.0.1:0"]);
        }
        if !extra.contains(&"--api") && !extra.contains(&"--no-api") {
            cmd.args(["--api", "127.0.0.1:0"]);
        }
        if !extra.contains(&"--log-level") {
            cmd.args(["--log-level", "debug,ractor=warn"]);
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn meshd");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (l2, r2) = (logs.clone(), raw.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("MESHD_TEST_ECHO").is_some() {
                    eprintln!("[meshd] {line}");
                }
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    l2.lock().unwrap().push(v);
                }
                r2.lock().unwrap().push(line);
            }
        });
        let mut m = Meshd {
            child: Some(child),
            logs,
            raw,
            addr: None,
            metrics: None,
            api: None,
            rpc: None,
            _dir: None,
            datadir: datadir.to_path_buf(),
        };
        if listen {
            let line = m.wait_log("p2p listening", Duration::from_secs(10), |v| {
                msg(v) == "p2p listening"
            });
            m.addr = line["addr"].as_str().and_then(|a| a.parse().ok());
        }
        if let Some(v) = m.logs().iter().find(|v| msg(v) == "metrics listening") {
            m.metrics = v["addr"].as_str().and_then(|a| a.parse().ok());
        }
        if let Some(v) = m.logs().iter().find(|v| msg(v) == "api listening") {
            m.api = v["addr"].as_str().and_then(|a| a.parse().ok());
        }
        if let Some(v) = m.logs().iter().find(|v| msg(v) == "JSON-RPC listening") {
            m.rpc = v["addr"].as_str().and_then(|a| a.parse().ok());
        }
        m
    }

    /// Runs a CLI subcommand against this node's API: exit code, stdout, stderr.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(meshd_bin())
            .args(args)
            .arg("--api")
            .arg(self.api.expect("api enabled").to_string())
            .arg("--datadir")
            .arg(&self.datadir)
            .output()
            .expect("run meshd");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// Scrapes /metrics (plain HTTP/1.0 over a TcpStream: no client library needed).
    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let addr = self.metrics.expect("metrics enabled");
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .expect("connect metrics");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: meshd\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }

    /// GETs an admin API route (with the cookie's token) and parses the JSON answer.
    pub fn api_get(&self, route: &str) -> Value {
        let url = format!("http://{}{route}", self.api.expect("api enabled"));
        let mut r = ureq::get(&url)
            .header("Authorization", &format!("Bearer {}", self.token()))
            .call()
            .expect("api answers");
        serde_json::from_str(&r.body_mut().read_to_string().expect("body")).expect("json")
    }

    /// The API token from the node's cookie file.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.datadir.join("regtest/.cookie"))
            .expect("cookie")
            .trim()
            .to_string()
    }

    /// The value of one series in a scrape (`name{labels}` exactly as rendered), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.scrape().lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
    }

    /// The sum of every series of `name` whose labels include all of `labels` (each
    /// `key="value"`), e.g. `meshd_peers` across transports.
    pub fn metric_sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.scrape()
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix('{')?;
                let (set, value) = rest.split_once('}')?;
                let have: Vec<&str> = set.split(',').collect();
                labels
                    .iter()
                    .all(|want| have.contains(want))
                    .then(|| value.trim().parse::<f64>().ok())?
            })
            .sum()
    }

    /// All JSON log lines so far.
    pub fn logs(&self) -> Vec<Value> {
        self.logs.lock().unwrap().clone()
    }

    /// All raw stderr lines so far.
    pub fn raw_lines(&self) -> Vec<String> {
        self.raw.lock().unwrap().clone()
    }

    /// Waits for a log line matching `pred`, or panics with what was seen.
    pub fn wait_log(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.logs.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; log:\n{}",
                    self.raw_lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Counts log lines matching `pred`.
    pub fn count_logs(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.logs.lock().unwrap().iter().filter(|v| pred(v)).count()
    }

    /// Sends `sig` (e.g. "TERM") and waits for exit.
    pub fn stop_with(&mut self, sig: &str, timeout: Duration) -> ExitStatus {
        let pid = self.child.as_ref().expect("running").id();
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status();
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit by itself (e.g. after `meshd stop`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("meshd did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful stop; asserts exit code 0.
    pub fn stop(&mut self) {
        let status = self.stop_with("TERM", Duration::from_secs(10));
        assert!(status.success(), "meshd exited with {status}");
    }
}

impl Drop for Meshd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `message` of a JSON log line.
pub fn msg(v: &Value) -> &str {
    v["message"].as_str().unwrap_or("")
}

pub mod header_server;
pub mod lab;

pub mod nats;
mod skip;
pub mod tor;
#[allow(unused_imports)]
pub use skip::{in_ci, is_root, skip_or_fail};
