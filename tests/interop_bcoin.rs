//! Interoperability with bcoin, an independent Bitcoin implementation: meshd dials bcoin,
//! and bcoin dials meshd; in both directions the handshake completes and pings are answered.

mod common;

use std::time::Duration;

use common::bcoin::Bcoin;
use common::{msg, Meshd};

const T: Duration = Duration::from_secs(30);

#[test]
fn meshd_dials_bcoin_and_they_handshake_and_ping() {
    let Some(bcoin) = Bcoin::start(&[]) else {
        return;
    };
    let target = format!("127.0.0.1:{}", bcoin.p2p_port);
    let mut node = Meshd::start(&["--connect", &target, "--ping-interval", "500ms"]);
    let hs = node.wait_log("handshake with bcoin", T, |v| {
        msg(v) == "handshake complete"
    });
    assert_eq!(hs["direction"], "outbound");
    assert!(hs["user_agent"].as_str().unwrap().contains("bcoin"), "{hs}");
    node.wait_log("bcoin answers our pings", T, |v| {
        msg(v) == "pong" && v["peer"] == target.as_str()
    });
    // bcoin logs the peer it accepted; it saw a valid meshd version.
    bcoin.wait_line("bcoin saw meshd", T, |l| l.contains("/meshd:"));
    node.stop();
}

#[test]
fn bcoin_dials_meshd_and_they_handshake_and_ping() {
    let mut node = Meshd::start(&["--ping-interval", "500ms"]);
    let addr = node.addr.unwrap();
    let Some(bcoin) = Bcoin::start(&[format!("--only={addr}"), "--listen=false".into()]) else {
        return;
    };
    let hs = node.wait_log("handshake from bcoin", T, |v| {
        msg(v) == "handshake complete"
    });
    assert_eq!(hs["direction"], "inbound");
    assert!(hs["user_agent"].as_str().unwrap().contains("bcoin"), "{hs}");
    let peer = hs["peer"].as_str().unwrap().to_string();
    node.wait_log("bcoin answers our pings", T, |v| {
        msg(v) == "pong" && v["peer"] == peer.as_str()
    });
    bcoin.wait_line("bcoin connected to meshd", T, |l| l.contains("/meshd:"));
    drop(bcoin);
    node.stop();
}
