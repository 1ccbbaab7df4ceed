//! Proxies and Tor through the real binary: the flags, the log line with the peer, the
//! `meshd_proxy_errors_total` counter, `meshd peers` showing an onion peer in full,
//! `meshd network` and `/metrics` showing the onion service made through an offline `tor`,
//! and a clean stop that removes it.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{msg, wait, Meshd};
use meshd_actors::shared::overlay::OverlayAddr;

#[test]
fn a_dead_proxy_is_logged_with_the_peer_counted_and_retried() {
    let dead = common::free_port().to_string();
    let proxy = format!("127.0.0.1:{dead}");
    let node = Meshd::start(&["--proxy", &proxy, "--connect", "127.0.0.1:9"]);
    let line = node.wait_log("the proxy failure", Duration::from_secs(15), |v| {
        msg(v) == "connection through the proxy failed"
    });
    assert_eq!(line["peer"], "127.0.0.1:9");
    assert_eq!(line["proxy"], proxy.as_str());
    wait("the counter", 10, || {
        node.metric_sum("meshd_proxy_errors_total", &["kind=\"proxy_unreachable\""]) >= 1.0
    });
    // Restarted as any failed connect is.
    node.wait_log("a restart", Duration::from_secs(15), |v| {
        msg(v) == "restarting outbound connection"
    });
    let network = node.api_get("/v1/network");
    assert_eq!(network["proxy"], proxy.as_str());
    assert_eq!(network["onion_proxy"], proxy.as_str());
    let reachable: Vec<&str> = network["reachable_networks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(reachable, ["ipv4", "ipv6", "onion"]);
}

#[test]
fn meshd_peers_shows_an_onion_peer_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let b = Meshd::start(&["--max-outbound", "0"]);
    let port = b.addr.unwrap().port();
    let onion = OverlayAddr::Onion(rand::random());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/socks5_proxy.py");
    let mut proxy = Command::new("python3")
        .arg(script)
        .arg("--log")
        .arg(dir.path().join("proxy.log"))
        .arg("--map")
        .arg(format!("{}=127.0.0.1:{port}", onion.host()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut port_line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(proxy.stdout.take().unwrap()),
        &mut port_line,
    )
    .unwrap();
    let onion_proxy = format!("127.0.0.1:{}", port_line.trim());
    let peer = format!("{}:{port}", onion.host());
    let a = Meshd::start(&["--onion", &onion_proxy, "--connect", &peer]);
    wait("the onion peer", 15, || {
        a.api_get("/v1/peers")
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x["state"] == "connected"))
    });
    let (code, out, _) = a.cli(&["peers"]);
    assert_eq!(code, 0);
    assert!(out.contains(&peer), "{out}");
    let peers = a.api_get("/v1/peers");
    assert_eq!(peers[0]["network"], "onion");
    assert_eq!(peers[0]["address"], peer.as_str());
    let config = a.api_get("/v1/config");
    assert_eq!(config["connect"][0], peer.as_str());
    let _ = proxy.kill();
    let _ = proxy.wait();
}

#[test]
fn meshd_network_shows_the_onion_service_made_through_tor() {
    let Some(tor) = common::tor::tor_path() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let t = common::tor::Tor::start(&tor, dir.path());
    let control = t.control.to_string();
    let mut node = Meshd::start(&["--torcontrol", &control]);
    let up = node.wait_log("onion service up", Duration::from_secs(30), |v| {
        msg(v) == "onion service up"
    });
    let onion = up["onion"].as_str().unwrap().to_string();
    assert!(onion.ends_with(".onion:18444"), "{onion}");
    let (code, out, _) = node.cli(&["network"]);
    assert_eq!(code, 0);
    assert!(out.contains(&onion), "{out}");
    assert_eq!(node.metric("meshd_onion_service_up"), Some(1.0));
    node.stop();
    assert!(node
        .logs()
        .iter()
        .any(|v| msg(v) == "onion service removed"));
}

/// An onion-only node (`--onion ... --onlynet onion`, README's recipe) sends nothing outside
/// its proxy: no STUN probe, no DNS lookup of a seed, even with both configured. Both are
/// real UDP sockets on loopback that count what reaches them; before, STUN probed at once
/// and the seed was looked up at once.
#[test]
fn an_onion_only_node_sends_no_stun_or_dns_packet() {
    let stun = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for s in [&stun, &dns] {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
    // Nobody listens there: onion peers would fail, which is not what is tested.
    let proxy = format!("127.0.0.1:{}", common::free_port());
    let node = Meshd::start(&[
        "--onion",
        &proxy,
        "--onlynet",
        "onion",
        "--stun-server",
        &stun.local_addr().unwrap().to_string(),
        "--dns-server",
        &dns.local_addr().unwrap().to_string(),
        "--dns-seed",
        "seed.example.invalid",
    ]);
    let mut buf = [0u8; 2048];
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    let mut packets = 0;
    while std::time::Instant::now() < deadline {
        for s in [&stun, &dns] {
            if s.recv_from(&mut buf).is_ok() {
                packets += 1;
            }
        }
    }
    assert_eq!(packets, 0, "a packet left outside the proxy");
    assert!(
        node.count_logs(|v| msg(v).starts_with("STUN off")) == 1
            && node.count_logs(|v| msg(v).starts_with("DNS seeding off")) == 1,
        "{:?}",
        node.raw_lines()
    );
}
