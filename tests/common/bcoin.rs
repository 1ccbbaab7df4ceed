//! Runs a real bcoin node (installed by scripts/install-test-deps.sh) as a peer.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::free_port;

/// A running bcoin.
pub struct Bcoin {
    child: Child,
    pub p2p_port: u16,
    pub http_port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// Where bcoin is installed, if it is.
pub fn bcoin_dir() -> Option<PathBuf> {
    let peers = std::env::var_os("MESHD_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.peers")));
    let dir = peers.join("bcoin/node_modules/bcoin");
    dir.join("package.json").exists().then_some(dir)
}

impl Bcoin {
    /// Starts bcoin on regtest on free loopback ports with `extra` options; waits until ready.
    pub fn start(extra: &[String]) -> Option<Bcoin> {
        let Some(bcoin) = bcoin_dir() else {
            super::skip_or_fail("bcoin is not installed (.peers/bcoin)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let (p2p_port, http_port) = (free_port(), free_port());
        let launcher = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/bcoin_node.js");
        let mut child = Command::new("node")
            .arg(launcher)
            .arg("--network=regtest")
            .arg(format!("--prefix={}", dir.path().display()))
            .arg("--host=127.0.0.1")
            .arg(format!("--port={p2p_port}"))
            .arg("--http-host=127.0.0.1")
            .arg(format!("--http-port={http_port}"))
            .arg("--no-auth=true")
            .args(extra)
            .env("BCOIN_DIR", &bcoin)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start node");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let l = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if std::env::var_os("MESHD_TEST_ECHO").is_some() {
                        eprintln!("[bcoin] {line}");
                    }
                    l.lock().unwrap().push(line);
                }
            });
        }
        let b = Bcoin {
            child,
            p2p_port,
            http_port,
            lines,
            _dir: dir,
        };
        b.wait_line("bcoin ready", Duration::from_secs(60), |l| {
            l.contains("[bcoin-launcher] ready")
        });
        Some(b)
    }

    /// Waits for an output line matching `pred`.
    pub fn wait_line(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                return l.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; bcoin said:\n{}",
                    self.lines.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Calls bcoin's JSON-RPC `method`; panics on an error answer.
    pub fn rpc(&self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let url = format!("http://127.0.0.1:{}/", self.http_port);
        let body = serde_json::json!({"method": method, "params": params}).to_string();
        let mut r = agent.post(&url).send(body.as_bytes()).expect("bcoin RPC");
        let v: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert!(v["error"].is_null(), "bcoin {method} failed: {v}");
        v["result"].clone()
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything bcoin printed.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Bcoin {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
