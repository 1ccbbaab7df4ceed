//! Interoperability with bcoin, an independent Bitcoin implementation that speaks only v1:
//! meshd dials bcoin (a BIP324 v2 attempt first, as to any manual peer, then the v1 fallback),
//! and bcoin dials meshd (told apart from v2 by its first bytes); in both directions the
//! handshake completes in v1 and pings are answered.

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
    assert_eq!(hs["transport"], "v1", "{hs}");
    assert!(hs["user_agent"].as_str().unwrap().contains("bcoin"), "{hs}");
    // The v2 attempt came first and failed as a v1-only peer's does, once.
    assert_eq!(
        node.count_logs(|v| msg(v).starts_with("v2 attempt failed before its handshake")),
        1
    );
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
    assert_eq!(hs["transport"], "v1", "{hs}");
    assert!(hs["user_agent"].as_str().unwrap().contains("bcoin"), "{hs}");
    let peer = hs["peer"].as_str().unwrap().to_string();
    node.wait_log("bcoin answers our pings", T, |v| {
        msg(v) == "pong" && v["peer"] == peer.as_str()
    });
    bcoin.wait_line("bcoin connected to meshd", T, |l| l.contains("/meshd:"));
    drop(bcoin);
    node.stop();
}
