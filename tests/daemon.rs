//! End-to-end tests of the `meshd` binary: CLI contract, exit codes, two daemons handshaking
//! and pinging over loopback, graceful shutdown.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{meshd_bin, msg, Meshd};

fn run_to_end(args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(meshd_bin())
        .arg("--datadir")
        .arg(dir.path())
        .arg("--no-metrics")
        .arg("--no-api")
        .args(args)
        .output()
        .expect("run meshd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn help_documents_every_option() {
    let out = Command::new(meshd_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--network",
        "--datadir",
        "--listen",
        "--connect",
        "--config",
        "--log-format",
        "--handshake-timeout",
        "--ping-interval",
        "--ping-timeout",
        "--min-protocol-version",
        "--ban-user-agent",
        "--required-services",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn bad_input_gives_one_error_line_and_exit_code_2() {
    let cases: &[&[&str]] = &[
        &["--network", "moonnet"],
        &["--listen", "not-an-address"],
        &["--connect", "1.2.3.4:99999"],
        &["--ping-interval", "soon"],
        &["--config", "/nonexistent/meshd.toml"],
        &["--frobnicate"],
        &["--restart-max", "0"],
        &["--keep-blocks", "0"],
        &["--minimum-chain-work", "not-hex"],
        &["--whitelist", "mint@127.0.0.1"],
    ];
    for args in cases {
        let (code, _, stderr) = run_to_end(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.lines().any(|l| l.contains("error")),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn unknown_config_key_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meshd.toml");
    std::fs::write(&path, "network = \"regtest\"\nping-intervall = \"1m\"\n").unwrap();
    let (code, _, stderr) = run_to_end(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("ping-intervall"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn a_data_dir_in_use_is_one_clear_error_and_exit_2() {
    let first = Meshd::start(&[]);
    let out = Command::new(meshd_bin())
        .arg("--datadir")
        .arg(first.datadir.as_path())
        .args(["--no-metrics", "--no-api", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run meshd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.trim().lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    // The running node is named (its meshd.json, while it holds the lock), with the way
    // to stop it.
    assert!(
        lines[0].starts_with("meshd: error: a meshd node (pid ")
            && lines[0].contains("already runs in")
            && lines[0].contains("meshd stop --datadir"),
        "{stderr}"
    );
}

#[test]
fn port_in_use_is_a_clean_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, stderr) = run_to_end(&["--listen", &addr]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot listen"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn example_config_in_deploy_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/meshd.toml");
    let dir = tempfile::tempdir().unwrap();
    let mut m = Meshd::start_in(
        dir.path(),
        &["--config", path, "--listen", "127.0.0.1:0"],
        false,
    );
    m.wait_log("start", Duration::from_secs(10), |v| {
        msg(v) == "p2p listening"
    });
    m.stop();
}

#[test]
fn two_daemons_handshake_and_ping_then_stop_gracefully() {
    let mut a = Meshd::start(&["--ping-interval", "300ms"]);
    let a_addr = a.addr.unwrap().to_string();
    let mut b = Meshd::start(&["--connect", &a_addr, "--ping-interval", "300ms"]);
    let t = Duration::from_secs(10);
    for node in [&a, &b] {
        let hs = node.wait_log("handshake", t, |v| msg(v) == "handshake complete");
        assert!(
            hs["user_agent"].as_str().unwrap().starts_with("/meshd:"),
            "{hs}"
        );
        node.wait_log("two pongs", t, |v| msg(v) == "pong");
    }
    let outbound = b.wait_log("b outbound", t, |v| msg(v) == "handshake complete");
    assert_eq!(outbound["direction"], "outbound");
    assert_eq!(outbound["peer"], a_addr.as_str());

    let started = Instant::now();
    b.stop();
    assert!(started.elapsed() < Duration::from_secs(5));
    // B's connection is inbound at A (A may also have dialled B's advertised address, and
    // that attempt can end with a reset when B stops).
    let bye = a.wait_log("a sees b leave", t, |v| {
        msg(v) == "peer disconnected" && v["direction"] == "inbound"
    });
    assert_eq!(bye["reason_kind"], "peer_closed", "{bye}");
    let started = Instant::now();
    let status = a.stop_with("INT", Duration::from_secs(10));
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// State files are the node's alone, as Core's under umask 077: the data directory 0700,
/// every file in it 0600 (peers' addresses, bans, the header chain, the lock, the cookie),
/// and a file an older meshd left world-readable is made private when opened.
#[test]
fn the_data_dir_and_every_state_file_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh");
    let mut node = Meshd::start_in(&fresh, &[], true);
    let (code, _, err) = node.cli(&["ban", "203.0.113.9"]);
    assert_eq!(code, 0, "{err}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let net = fresh.join("regtest");
    assert_eq!(mode(&fresh), 0o700, "data dir");
    assert_eq!(mode(&net), 0o700, "network dir");
    assert_eq!(mode(&net.join(".cookie")), 0o600, ".cookie");
    node.stop();
    for f in [".lock", "headers.dat", "peers.dat", "bans.dat"] {
        assert_eq!(mode(&net.join(f)), 0o600, "{f}");
    }
    // A world-readable headers.dat and network directory (an older meshd, or a directory
    // made by hand, under umask 022) are made private at the next start.
    std::fs::set_permissions(
        net.join("headers.dat"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(&net, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut node = Meshd::start_in(&fresh, &[], true);
    assert_eq!(mode(&net.join("headers.dat")), 0o600, "old headers.dat");
    assert_eq!(mode(&net), 0o700, "old network dir");
    node.stop();
}
