//! A full disk: meshd's data directory on a 1 MiB tmpfs that fills up during header sync.
//! The failed write is reported once, clearly (log, `/v1/sync`'s `store_error`, the
//! `meshd_header_store_failing` gauge); the node goes on syncing in memory; nothing is
//! corrupted; and when space returns the file is rewritten from the chain, so a kill -9 and
//! restart afterwards loads every header. Needs root for the mount (CI is root); elsewhere it
//! skips with a notice.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{msg, skip_or_fail, Meshd};

const HEADERS: u32 = 60_000;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {size}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn wait_metric(node: &Meshd, name: &str, want: f64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while node.metric(name) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{name} is {:?}, waited for {want}",
            node.metric(name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_full_disk_is_reported_survived_and_recovered_from() {
    if !common::is_root() {
        return skip_or_fail("root, to mount a tmpfs for the data directory");
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(dir.path(), "1m") else {
        return skip_or_fail("mount -t tmpfs");
    };
    let Some(server) = common::header_server::start(HEADERS) else {
        return skip_or_fail("python3 (the header-serving peer)");
    };
    let addr = server.addr.to_string();
    let args = ["--connect", addr.as_str(), "--blocks", "none"];
    let mut node = Meshd::start_in(dir.path(), &args, true);
    let failed = node.wait_log("write failure", Duration::from_secs(60), |v| {
        msg(v).starts_with("cannot write headers.dat")
    });
    assert_eq!(failed["level"], "ERROR", "{failed}");
    // Reported once, and visible to operators.
    wait_metric(&node, "meshd_header_store_failing", 1.0, 10);
    let sync = node.api_get("/v1/sync");
    assert!(sync["store_error"].as_str().is_some(), "{sync}");
    // The chain goes on in memory.
    wait_metric(&node, "meshd_header_height", f64::from(HEADERS), 60);
    assert_eq!(
        node.count_logs(|v| msg(v).starts_with("cannot write headers.dat")),
        1
    );

    // Space returns: the file is rewritten from the chain.
    fs.resize("64m");
    node.wait_log("rewrite", Duration::from_secs(30), |v| {
        msg(v).starts_with("headers.dat rewritten")
    });
    wait_metric(&node, "meshd_header_store_failing", 0.0, 10);
    assert!(node.api_get("/v1/sync")["store_error"].is_null());

    // Nothing lost: killed and restarted, it loads every header.
    node.stop_with("KILL", Duration::from_secs(5));
    let node = Meshd::start_in(dir.path(), &args, true);
    let loaded = node.wait_log("chain loaded", Duration::from_secs(30), |v| {
        msg(v) == "header chain loaded"
    });
    assert_eq!(loaded["height"], HEADERS, "{loaded}");
    drop(node);
    drop(fs);
}
