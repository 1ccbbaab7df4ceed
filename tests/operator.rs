//! The operator's first minutes through the binary (issue #28, item 1): the node says
//! where it is in `DATADIR/<network>/meshd.json`, so `meshd status` and `meshd stop` find
//! it from `--datadir`, `--config` or the absolute default data dir alone; `/v1/health`
//! answers without a token.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{meshd_bin, Meshd};
use serde_json::Value;

/// Runs a client subcommand with only `args` (no `--api`): exit code, stdout, stderr.
fn client(args: &[&str], env: &[(&str, &Path)], cwd: &Path) -> (i32, String, String) {
    let mut cmd = Command::new(meshd_bin());
    cmd.args(args).current_dir(cwd).env_remove("XDG_DATA_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run meshd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A GET without a token: status line and body.
fn get_plain(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

#[test]
fn status_and_stop_find_the_node_from_its_data_dir_alone() {
    let mut node = Meshd::start(&[]);
    let dir = node.datadir.clone();
    let file = dir.join("regtest/meshd.json");
    let about: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(about["api"], node.api.unwrap().to_string(), "{about}");
    assert_eq!(about["metrics"], node.metrics.unwrap().to_string());
    assert_eq!(about["network"], "regtest");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let d = dir.to_str().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    // The API listens on a port chosen at start: only meshd.json tells it.
    let (code, out, err) = client(&["status", "--datadir", d], &[], elsewhere.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("meshd ") && out.contains(" on regtest, up "),
        "{out}"
    );
    assert!(
        out.contains(&dir.join("regtest").display().to_string()),
        "{out}"
    );
    let (code, out, err) = client(&["status", "--datadir", d, "--json"], &[], elsewhere.path());
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["api"], node.api.unwrap().to_string(), "{v}");
    assert_eq!(v["p2p"][0], node.addr.unwrap().to_string());
    assert_eq!(v["peers"]["total"], 0);
    assert_eq!(v["tip"]["height"], 0);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime"].as_u64().is_some());
    // Health needs no token; everything else does.
    let (status, body) = get_plain(node.api.unwrap(), "/v1/health");
    assert!(status.contains("200"), "{status}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "ok"
    );
    for route in ["/v1/status", "/v1/no-such-route", "/v1/health/../status"] {
        let (status, _) = get_plain(node.api.unwrap(), route);
        assert!(
            status.contains("401") || status.contains("404"),
            "{route}: {status}"
        );
        assert!(!status.contains("200"), "{route}: {status}");
    }
    // `stop` stops it as SIGTERM does, and returns once it has exited.
    let (code, out, err) = client(&["stop", "--datadir", d], &[], elsewhere.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("meshd stopped"), "{out}");
    let status = node.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(!file.exists(), "meshd.json removed at the stop");
    let (code, _, err) = client(&["status", "--datadir", d], &[], elsewhere.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read the API cookie") || err.contains("no meshd node"),
        "{err}"
    );
}

#[test]
fn a_config_file_or_the_one_node_running_names_the_network() {
    let node = Meshd::start(&["--network", "bsv-regtest"]);
    let d = node.datadir.to_str().unwrap().to_string();
    let elsewhere = tempfile::tempdir().unwrap();
    // No --network: the one node running under the data dir is on bsv-regtest.
    let (code, out, err) = client(
        &["status", "--datadir", &d, "--json"],
        &[],
        elsewhere.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["network"],
        "bsv-regtest"
    );
    // The node's own config file alone (client subcommands took no --config before).
    let conf = elsewhere.path().join("meshd.toml");
    std::fs::write(
        &conf,
        format!("datadir = {d:?}\nnetwork = \"bsv-regtest\"\n"),
    )
    .unwrap();
    let (code, out, err) = client(
        &["status", "--config", conf.to_str().unwrap(), "--json"],
        &[],
        elsewhere.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["api"],
        node.api.unwrap().to_string()
    );
}

#[test]
fn the_default_data_dir_is_absolute_and_found_from_anywhere() {
    let home = tempfile::tempdir().unwrap();
    let start_in = tempfile::tempdir().unwrap();
    /// Kills the node if the test fails before it stops it.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(
        Command::new(meshd_bin())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--api",
                "127.0.0.1:0",
                "--metrics",
                "127.0.0.1:0",
            ])
            .current_dir(start_in.path())
            .env("HOME", home.path())
            .env_remove("XDG_DATA_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let file = home.path().join(".meshd/regtest/meshd.json");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !file.exists() {
        assert!(Instant::now() < deadline, "no {} written", file.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !start_in.path().join(".meshd").exists(),
        "not relative to the working dir"
    );
    // From another directory, with no flag at all.
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, out, err) = client(
        &["status", "--json"],
        &[("HOME", home.path())],
        elsewhere.path(),
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["datadir"],
        home.path().join(".meshd/regtest").display().to_string()
    );
    // $XDG_DATA_HOME, when set, is where the default lives instead.
    let xdg = tempfile::tempdir().unwrap();
    let (code, _, err) = client(
        &["status"],
        &[("HOME", home.path()), ("XDG_DATA_HOME", xdg.path())],
        elsewhere.path(),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains(&xdg.path().join("meshd").display().to_string()),
        "{err}"
    );
    let (code, _, err) = client(&["stop"], &[("HOME", home.path())], elsewhere.path());
    assert_eq!(code, 0, "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "the node did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_node_on_taken_ports_hears_every_flag_to_change_at_once() {
    // Before, it failed on the metrics port, then (moved) on the API, then on P2P, one
    // run at a time, with no hint.
    let first = Meshd::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(meshd_bin())
        .arg("--datadir")
        .arg(dir.path())
        .args(["--metrics", &first.metrics.unwrap().to_string()])
        .args(["--api", &first.api.unwrap().to_string()])
        .args(["--listen", &first.addr.unwrap().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("meshd: error:"))
        .collect();
    assert_eq!(lines.len(), 3, "{err}");
    for flag in [
        "--metrics ADDR, or --no-metrics",
        "--api ADDR, or --no-api",
        "--listen ADDR, or --no-listen",
    ] {
        assert!(lines.iter().any(|l| l.contains(flag)), "{flag}: {err}");
    }
}

#[test]
fn metrics_carry_build_info_and_each_network_has_its_own_metrics_port() {
    let node = Meshd::start(&[]);
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    let info = node.metric_sum(
        "meshd_build_info",
        &[&version, "network=\"regtest\"", "chain=\"btc\""],
    );
    assert_eq!(info, 1.0, "{}", node.scrape());
    let ports: std::collections::HashSet<u16> = [
        "mainnet",
        "testnet3",
        "testnet4",
        "signet",
        "regtest",
        "bsv-mainnet",
        "bsv-testnet",
        "bsv-stn",
        "bsv-regtest",
    ]
    .iter()
    .map(|n| {
        n.parse::<meshd_actors::network::NetworkId>()
            .unwrap()
            .profile()
            .metrics_port
    })
    .collect();
    assert_eq!(ports.len(), 9);
}

#[test]
fn every_counter_is_exported_at_zero_from_the_start_and_cpu_time_is_not_whole_seconds() {
    // Before, about 30 counters appeared only when they first counted, so an alert on
    // `increase(meshd_misbehavior_total[5m]) > 0` saw nothing until then; and
    // process_cpu_seconds_total moved in whole seconds.
    let node = Meshd::start(&["--rpc", "127.0.0.1:0"]);
    let text = node.scrape();
    for series in [
        "meshd_evictions_total",
        "meshd_misbehavior_total{kind=\"bad_checksum\"}",
        "meshd_misbehavior_total{kind=\"header_bad_pow\"}",
        "meshd_frame_errors_total{kind=\"oversized\"}",
        "meshd_disconnects_total{reason=\"ping_timeout\"}",
        "meshd_disconnects_total{reason=\"v2_bad_aead\"}",
        "meshd_bans_total{reason=\"fleet\"}",
        "meshd_blocks_received_total{via=\"compact_high_bandwidth\"}",
        "meshd_compact_blocks_total{outcome=\"reconstructed\",mode=\"high_bandwidth\"}",
        "meshd_txs_dropped_total{reason=\"pool_full\"}",
        "meshd_unknown_messages_total",
        "meshd_rpc_requests_total",
        "meshd_rpc_auth_failures_total",
    ] {
        assert_eq!(
            node.metric(series),
            Some(0.0),
            "{series} at 0 from the start:\n{text}"
        );
    }
    let cpu = node.metric("process_cpu_seconds_total").expect("cpu time");
    assert!(
        cpu > 0.0 && cpu.fract() != 0.0,
        "sub-second CPU time: {cpu}"
    );
}

#[test]
fn a_long_header_sync_says_how_far_it_is_and_sync_wait_returns_once_synced() {
    // Before, nothing was logged between the handshake and "headers synced", and `meshd
    // sync` printed a bare fraction.
    let a = Meshd::start(&[]);
    let (code, _, err) = a.cli(&["generate", "4000"]);
    assert_eq!(code, 0, "{err}");
    let b = Meshd::start(&[
        "--connect",
        &a.addr.unwrap().to_string(),
        "--max-download-rate",
        "20k",
    ]);
    let line = b.wait_log("progress line", Duration::from_secs(30), |v| {
        common::msg(v) == "headers sync progress"
    });
    assert!(line["height"].as_u64().is_some(), "{line}");
    assert!(line["percent"].as_str().is_some(), "{line}");
    assert_eq!(line["sync_peer"], a.addr.unwrap().to_string(), "{line}");
    // Once a second of headers is in, `meshd sync` has a rate (the sync takes ~16 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let (code, out, err) = b.cli(&["sync", "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        if v["headers_per_sec"].as_f64().is_some() || v["state"] != "syncing" {
            break v;
        }
        assert!(Instant::now() < deadline, "no rate: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(v["state"], "syncing", "still syncing at 20k/s: {v}");
    assert_eq!(v["sync_peer"], a.addr.unwrap().to_string(), "{v}");
    // Regtest's 2011 genesis says nothing of what is left.
    assert!(v["eta"].is_null(), "{v}");
    let (code, out, err) = b.cli(&["sync"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("state "), "{out}");
    let (code, out, err) = b.cli(&["sync", "--wait", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "synced", "{v}");
    assert_eq!(v["header_height"], 4000);
}

#[test]
fn generate_says_what_it_mined_disconnect_takes_an_address_and_empty_hints_are_an_error() {
    let a = Meshd::start(&[]);
    let (code, out, err) = a.cli(&["generate", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "one line, not every hash: {out}");
    assert!(
        out.starts_with("mined 3 blocks (heights 1 to 3), tip "),
        "{out}"
    );
    let (_, out, _) = a.cli(&["generate", "2", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["blocks"].as_array().map(Vec::len), Some(2), "{v}");
    // No hints below 2,000 heights: an error, not an empty file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hints.txt");
    let (code, _, err) = a.cli(&["hints", "export", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("no header hints"), "{err}");
    assert!(!file.exists());
    // Core's disconnectnode takes an address as well as an id.
    let b = Meshd::start(&["--connect", &a.addr.unwrap().to_string()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let address = loop {
        let (_, out, _) = a.cli(&["peers", "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        if let Some(addr) = v
            .as_array()
            .and_then(|p| p.first())
            .and_then(|p| p["address"].as_str())
        {
            break addr.to_string();
        }
        assert!(Instant::now() < deadline, "B never connected");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (code, out, err) = a.cli(&["disconnect", &address]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&address), "{out}");
    let (code, _, err) = a.cli(&["disconnect", "203.0.113.9:8333"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no connected peer at 203.0.113.9:8333"),
        "{err}"
    );
    drop(b);
}

#[test]
fn netinfo_counts_connections_by_network_and_direction_and_shows_a_row_per_peer() {
    // As bitcoin-cli -netinfo 4: one inbound and one outbound peer here.
    let hub = Meshd::start(&[]);
    let out_peer = Meshd::start(&[]);
    let _inbound = Meshd::start(&["--connect", &hub.addr.unwrap().to_string()]);
    let (code, _, err) = hub.cli(&["addnode", &out_peer.addr.unwrap().to_string()]);
    assert_eq!(code, 0, "{err}");
    common::wait("two peers with a ping", 20, || {
        let (_, out, _) = hub.cli(&["peers", "--json"]);
        serde_json::from_str::<Value>(&out)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["ping_last"].is_f64()))
    });
    let (code, out, err) = hub.cli(&["netinfo"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("meshd ") && lines[0].contains(" on regtest, up "),
        "{out}"
    );
    let counts = |label: &str| -> Vec<String> {
        lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(label))
            .unwrap_or_else(|| panic!("a {label} row: {out}"))
            .split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect()
    };
    // ipv4 ipv6 onion i2p cjdns total (block for out).
    assert_eq!(counts("in"), ["1", "0", "0", "0", "0", "1"], "{out}");
    assert_eq!(counts("out"), ["1", "0", "0", "0", "0", "1", "0"], "{out}");
    assert_eq!(counts("total")[5], "2");
    let header = lines
        .iter()
        .find(|l| l.starts_with("<->"))
        .unwrap_or_else(|| panic!("{out}"));
    for col in [
        "PING", "SEND", "RECV", "AGE", "HEIGHT", "SERVICES", "ADDRESS", "VERSION",
    ] {
        assert!(header.contains(col), "{col}: {header}");
    }
    let rows: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("in ") || l.starts_with("out "))
        .filter(|l| l.contains("/meshd:"))
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    let outbound = rows.iter().find(|l| l.starts_with("out")).unwrap();
    assert!(
        outbound.contains("manual") && outbound.contains(" ms "),
        "{outbound}"
    );
    assert!(
        outbound.contains("NETWORK,WITNESS"),
        "service names: {outbound}"
    );
    assert!(
        outbound.contains(&out_peer.addr.unwrap().to_string()),
        "{outbound}"
    );
    assert!(out.contains("Local addresses: "), "{out}");
    let (_, json, _) = hub.cli(&["netinfo", "--json"]);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["peers"].as_array().unwrap().len(), 2);
    assert!(v["peers"][0]["connected_time"].as_u64().unwrap() > 1_700_000_000);
    assert!(v["peers"][0]["services_names"].is_array());
}

#[test]
fn bans_and_config_read_in_local_times_ages_and_units() {
    // Before: `UNTIL (UNIX) 1796248509` and `ban-duration = 86400s`.
    let node = Meshd::start(&["--ban-duration", "7d"]);
    let (code, out, err) = node.cli(&["ban", "198.51.100.0/24"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(in 7d)"), "{out}");
    let (_, out, _) = node.cli(&["bans"]);
    let row = out
        .lines()
        .find(|l| l.starts_with("198.51.100.0/24"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains(" ago ") && row.contains("in 7d"), "{row}");
    assert!(!row.contains("17966"), "no unix numbers: {row}");
    let (_, json, _) = node.cli(&["bans", "--json"]);
    let v: Value = serde_json::from_str(&json).unwrap();
    let until = v[0]["until_time"].as_u64().unwrap();
    let created = v[0]["created_time"].as_u64().unwrap();
    assert_eq!(until - created, 7 * 86_400, "raw unix seconds in --json");
    let (_, out, _) = node.cli(&["config"]);
    let line = |key: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("{key} in {out}"))
            .to_string()
    };
    assert!(line("ban-duration").contains(" 7d "), "{out}");
    assert!(line("ban-duration").contains("until restart"));
    assert!(line("tx-pool-max-bytes").contains("MiB"), "{out}");
    assert!(line("network").contains("at restart"));
    for key in [
        "api",
        "metrics",
        "log-level",
        "blocks",
        "tx-relay",
        "tx-pool-max-count",
    ] {
        line(key);
    }
    assert!(out.contains("until the node restarts"), "{out}");
}

/// A tmux server on a private socket, killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into()
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "{what} never shown:\n{screen}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn top_shows_peers_sync_and_events_under_tmux_and_quits_on_q() {
    if Command::new("tmux").arg("-V").output().is_err() {
        return common::skip_or_fail("tmux (apt install tmux)");
    }
    let node = Meshd::start(&[]);
    let peer = Meshd::start(&["--connect", &node.addr.unwrap().to_string()]);
    let tmux = Tmux {
        socket: format!("meshd-top-{}", std::process::id()),
    };
    // The shell keeps the pane after top exits, to show its exit status.
    let command = format!(
        "{} top --datadir {} --interval 0.5; echo TOP-EXIT=$?; sleep 60",
        meshd_bin(),
        node.datadir.display()
    );
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "45",
        "sh",
        "-c",
        &command,
    ]);
    assert!(started.status.success(), "{started:?}");
    let screen = tmux.wait_for("the peer and the sync state", |s| {
        s.contains("meshd ")
            && s.contains("on regtest")
            && s.contains(" peers ")
            && s.contains("1 in, 0 out")
            && s.contains("/meshd:")
    });
    assert!(
        screen.contains("headers ") && screen.contains("q quit"),
        "{screen}"
    );
    drop(peer);
    let (code, _, err) = node.cli(&["ban", "198.51.100.77"]);
    assert_eq!(code, 0, "{err}");
    tmux.wait_for("the ban event", |s| {
        s.contains("PeerBanned") && s.contains("198.51.100.77")
    });
    let (code, _, err) = node.cli(&["generate", "2"]);
    assert_eq!(code, 0, "{err}");
    tmux.wait_for("the new tip", |s| s.contains("tip       2 "));
    let keys = tmux.run(&["send-keys", "-t", "top", "q"]);
    assert!(keys.status.success());
    let after = tmux.wait_for("top's exit", |s| s.contains("TOP-EXIT="));
    assert!(after.contains("TOP-EXIT=0"), "{after}");
}

#[test]
fn sync_wait_gives_up_after_its_timeout_and_the_banner_says_how_to_stop() {
    // A fresh regtest node with no peer stays in initial sync: --wait alone would wait on.
    let node = Meshd::start(&[]);
    let t = Instant::now();
    let (code, _, err) = node.cli(&["sync", "--wait", "--timeout", "1s"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not synced after 1s"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(15));
    let banner = node.wait_log("the banner", Duration::from_secs(5), |v| {
        common::msg(v).starts_with("meshd ") && common::msg(v).contains(" ready on regtest")
    });
    let datadir = node.datadir.display().to_string();
    assert!(
        banner["stop"]
            .as_str()
            .unwrap()
            .contains(&format!("meshd stop --datadir {datadir}")),
        "{banner}"
    );
    assert!(
        banner["cookies"].as_str().unwrap().starts_with(&datadir),
        "{banner}"
    );
    // One "listening" line per address, and no actor span ids on the lines.
    assert_eq!(
        node.count_logs(|l| {
            l["level"] != "DEBUG"
                && matches!(common::msg(l), "p2p listening" | "listening for peers")
        }),
        1,
        "only the daemon's p2p line"
    );
    // Text logs on the default filter: no actor span ids.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(meshd_bin())
        .args([
            "--datadir",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--api", "127.0.0.1:0", "--no-metrics"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let pid = out.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let text = out.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&text.stderr);
    assert!(text.contains(" ready on regtest"), "{text}");
    assert!(!text.contains("Actor{"), "{text}");
}

#[test]
fn help_is_grouped_by_topic() {
    let out = Command::new(meshd_bin()).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for heading in [
        "Basics:",
        "Connections:",
        "Bandwidth:",
        "Bans and permissions:",
        "Operator interfaces (API, JSON-RPC, metrics):",
        "Discovery and NAT:",
        "Blocks, sync and relay:",
        "Proxies and Tor:",
        "Fleet (NATS):",
        "Overlay (libp2p):",
    ] {
        assert!(text.lines().any(|l| l == heading), "{heading} in:\n{text}");
    }
    // Every option sits under a topic: the generic list holds only help and version.
    let generic: Vec<&str> = text
        .split("\nOptions:\n")
        .nth(1)
        .and_then(|rest| rest.split("\nBasics:\n").next())
        .unwrap_or("")
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .collect();
    assert_eq!(generic.len(), 2, "{generic:?}");
}
