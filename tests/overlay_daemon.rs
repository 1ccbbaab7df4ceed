//! The overlay through the binary (#30, item 2): `--overlay`, `--overlay-listen` and
//! `--overlay-bootstrap` bring two daemons together; `/v1/overlay`, `meshd overlay status`,
//! `meshd overlay peers` and the metrics show it; the key is kept 0600 in the data dir;
//! a bootstrap address without a peer id is refused; without `--overlay` nothing runs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{meshd_bin, wait, Meshd};

const TCP_LOOPBACK: &str = "/ip4/127.0.0.1/tcp/0";

fn overlay_of(node: &Meshd) -> serde_json::Value {
    node.api_get("/v1/overlay")
}

#[test]
fn two_daemons_meet_on_the_overlay_and_the_operator_sees_it() {
    let a = Meshd::start(&["--overlay", "--overlay-listen", TCP_LOOPBACK]);
    wait("A's overlay to listen", 20, || {
        overlay_of(&a)["status"]["listen_addrs"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
    });
    let st = overlay_of(&a)["status"].clone();
    let a_id = st["peer_id"].as_str().unwrap().to_string();
    let a_addr = format!("{}/p2p/{a_id}", st["listen_addrs"][0].as_str().unwrap());
    let b = Meshd::start(&[
        "--overlay=true",
        "--overlay-listen",
        TCP_LOOPBACK,
        "--overlay-bootstrap",
        &a_addr,
        "--overlay-topic",
        "lab/x",
        "--overlay-cluster-threshold",
        "0.5",
    ]);
    wait("B to connect to A", 20, || {
        overlay_of(&b)["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["peer_id"] == a_id.as_str()))
    });
    let v = overlay_of(&b);
    assert_eq!(v["enabled"], true);
    assert_eq!(v["running"], true);
    let row = v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == a_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["found_by"], "bootstrap");
    assert_eq!(row["relayed"], false);

    let (code, out, err) = b.cli(&["overlay", "status"]);
    assert_eq!(code, 0, "{err}");
    let b_id = v["status"]["peer_id"].as_str().unwrap();
    assert!(out.contains(b_id), "{out}");
    assert!(out.lines().any(|l| l.starts_with("reachability")), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("hole punch") && l.contains("0 direct, 0 gave up")),
        "{out}"
    );
    assert_eq!(v["status"]["hole_punches"]["ok"], 0);
    let (code, out, err) = b.cli(&["overlay", "peers"]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains(&a_id))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("bootstrap") && line.contains("direct"),
        "{line}"
    );

    wait("the peer gauge", 10, || {
        b.metric("meshd_overlay_peers") == Some(1.0)
    });
    assert!(b.metric("meshd_overlay_events_total{event=\"connected\"}") >= Some(1.0));
    assert_eq!(
        b.metric("meshd_overlay_events_total{event=\"hole_punch_ok\"}"),
        Some(0.0)
    );

    let key = b.datadir.join("regtest").join("overlay_key.dat");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    let config = b.api_get("/v1/config");
    assert_eq!(config["overlay"], true);
    assert_eq!(config["overlay-bootstrap"][0], a_addr.as_str());
    assert_eq!(config["overlay-cluster-threshold"], 0.5);

    // Topics: B announces lab/x beside the defaults, and A finds B by it.
    let (code, out, err) = b.cli(&["overlay", "topics"]);
    assert_eq!(code, 0, "{err}");
    for t in [
        "lab/x",
        "meshd/regtest/blocks",
        "meshd/regtest/compact-blocks",
    ] {
        assert!(out.lines().any(|l| l.starts_with(t)), "{t} in {out}");
    }
    assert!(out.contains("threshold 0.5"), "{out}");
    let b_id = b_id.to_string();
    wait("A to find B by its topic", 30, || {
        let (code, out, _) = a.cli(&["overlay", "find", "lab/x"]);
        code == 0 && out.contains(&b_id)
    });
    let found = a.api_get("/v1/overlay/find?topic=lab/x");
    assert_eq!(found["providers"][0]["peer_id"], b_id.as_str());
    let (code, out, _) = b.cli(&["overlay", "peers"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .next()
            .is_some_and(|h| h.contains("CLUSTER") && h.contains("SIMILAR")),
        "{out}"
    );
}

#[test]
fn without_the_flag_no_overlay_runs_and_the_client_says_so() {
    let node = Meshd::start(&[]);
    let v = overlay_of(&node);
    assert_eq!(v["enabled"], false);
    assert_eq!(v["running"], false);
    let (code, out, _) = node.cli(&["overlay", "status"]);
    assert_eq!(code, 0);
    assert!(out.contains("--overlay"), "{out}");
    assert!(!node
        .datadir
        .join("regtest")
        .join("overlay_key.dat")
        .exists());
    let (code, _, err) = node.cli(&["overlay", "find", "meshd/regtest"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--overlay"), "{err}");
    // Every overlay series is there from the start, at 0.
    assert_eq!(
        node.metric("meshd_overlay_events_total{event=\"relay_served_circuit\"}"),
        Some(0.0)
    );
}

#[test]
fn a_bootstrap_address_without_a_peer_id_or_a_taken_port_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(meshd_bin())
        .arg("--datadir")
        .arg(dir.path())
        .args([
            "--overlay",
            "--overlay-bootstrap",
            "/ip4/127.0.0.1/tcp/4001",
        ])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/p2p/<peer id>"), "{err}");
    let out = std::process::Command::new(meshd_bin())
        .arg("--datadir")
        .arg(dir.path())
        .args(["--overlay", "--overlay-cluster-threshold", "1.5"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("overlay-cluster-threshold"));
    // Behind a proxy the overlay would dial and listen around it: refused.
    let out = std::process::Command::new(meshd_bin())
        .arg("--datadir")
        .arg(dir.path())
        .args(["--overlay", "--proxy", "127.0.0.1:9050"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not with --proxy"));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let mut child = std::process::Command::new(meshd_bin())
        .arg("--datadir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--no-api", "--no-metrics"])
        .args(["--overlay", "--overlay-listen", &listen])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("meshd ran on with its overlay port taken");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("overlay cannot listen"), "{err}");
    drop(taken);
}
