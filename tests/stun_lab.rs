//! STUN in a real NAT lab: network namespaces, nftables NAT rules and a real STUN server
//! (coturn, RFC 5780 on two addresses and two ports), built by tests/lab/natlab.sh. meshd runs
//! in the client namespace behind each NAT type and must report the right type and public
//! address. Also: the first server down so the second answers, and no server answering.
//! Needs root (CI runs as root); elsewhere it skips with a loud message.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{usable, Lab};
use common::{msg, Meshd};
use serde_json::Value;

const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lab/natlab.sh");

/// Runs meshd in the client namespace until it reports its NAT type; returns the verdict
/// line, the time it took, what its metrics endpoint showed and its log.
fn verdict(
    prefix: &str,
    client_ip: &str,
    servers: &[&str],
) -> (Value, Duration, String, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let ns = format!("{prefix}cli");
    let listen = format!("{client_ip}:18444");
    let metrics = format!("{client_ip}:9184");
    let mut args = vec![
        // A public network (regtest would advertise its listen address whatever STUN says).
        "--network",
        "testnet4",
        "--no-dns-seed",
        "--listen",
        listen.as_str(),
        "--no-api",
        "--metrics",
        metrics.as_str(),
        "--metrics-allow-remote",
        "--stun-timeout",
        "1s",
        "--log-level",
        "info",
    ];
    for s in servers {
        args.push("--stun-server");
        args.push(s);
    }
    let started = Instant::now();
    let mut node = Meshd::start_wrapped(&["ip", "netns", "exec", &ns], dir.path(), &args, false);
    let v = node.wait_log("NAT verdict", Duration::from_secs(30), |v| {
        msg(v) == "NAT type detected"
    });
    let took = started.elapsed();
    // The metrics endpoint lives in the namespace: fetch it from there.
    let fetch = format!("import urllib.request;print(urllib.request.urlopen('http://{metrics}/metrics').read().decode())");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, "python3", "-c", &fetch])
        .output()
        .unwrap();
    let scraped = String::from_utf8_lossy(&out.stdout).into_owned();
    let logs = node.logs();
    node.stop();
    (v, took, scraped, logs)
}

#[test]
fn nat_type_and_public_address_for_every_lab_type() {
    if !usable("the STUN NAT lab", &["turnserver", "nft", "ip"]) {
        return;
    }
    let prefix = "mshda-";
    let lab = Lab::new(LAB, "NATLAB_PREFIX", prefix);
    let cases = [
        (
            "open",
            "198.51.100.10",
            "open_internet",
            Some("198.51.100.10"),
        ),
        (
            "openfw",
            "198.51.100.10",
            "symmetric_udp_firewall",
            Some("198.51.100.10"),
        ),
        ("fullcone", "10.0.0.10", "full_cone", Some("203.0.113.254")),
        (
            "restricted",
            "10.0.0.10",
            "restricted_cone",
            Some("203.0.113.254"),
        ),
        (
            "portrestricted",
            "10.0.0.10",
            "port_restricted_cone",
            Some("203.0.113.254"),
        ),
        ("symmetric", "10.0.0.10", "symmetric", Some("203.0.113.254")),
        ("udpblocked", "10.0.0.10", "udp_blocked", None),
    ];
    let mut failures = Vec::new();
    for (lab_type, client, expected, public_ip) in cases {
        lab.run(&["up", lab_type]);
        let (v, _, scraped, logs) = verdict(prefix, client, &["203.0.113.1:3478"]);
        let current = format!("meshd_nat_type{{type=\"{expected}\"}} 1");
        if !scraped.contains(&current) {
            failures.push(format!("{lab_type}: metrics lack {current}"));
        }
        if let Some(ip) = public_ip {
            if !scraped.contains(&format!("meshd_public_address_info{{address=\"{ip}:")) {
                failures.push(format!("{lab_type}: metrics lack the public address {ip}"));
            }
        }
        // Reachable nodes advertise their public address (with the P2P port); others do not.
        let advertised = logs
            .iter()
            .find(|l| msg(l) == "advertising our address")
            .map(|l| l["addresses"].to_string());
        let reachable = matches!(expected, "open_internet" | "full_cone");
        let want = public_ip.map(|ip| format!("{ip}:18444"));
        let ok = match (&advertised, &want) {
            (Some(a), Some(w)) => a.contains(w.as_str()) == reachable,
            (Some(_), None) => !reachable,
            (None, _) => false,
        };
        if !ok {
            failures.push(format!(
                "{lab_type}: reachable {reachable}, advertised {advertised:?}, public {want:?}"
            ));
        }
        let got_public = v["public"]
            .as_str()
            .filter(|p| *p != "none")
            .and_then(|p| p.rsplit_once(':').map(|x| x.0.to_string()));
        if v["nat_type"] != expected || got_public.as_deref() != public_ip {
            failures.push(format!(
                "{lab_type}: got {} public {:?}, want {expected} {public_ip:?}",
                v["nat_type"], got_public
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn first_server_down_then_second_answers_and_no_server_means_unknown() {
    if !usable("the STUN NAT lab", &["turnserver", "nft", "ip"]) {
        return;
    }
    let prefix = "mshdb-";
    let lab = Lab::new(LAB, "NATLAB_PREFIX", prefix);
    lab.run(&["up", "fullcone"]);
    // 203.0.113.3 runs no STUN server: the probe falls back to the real one.
    let (v, ..) = verdict(
        prefix,
        "10.0.0.10",
        &["203.0.113.3:3478", "203.0.113.1:3478"],
    );
    assert_eq!(v["nat_type"], "full_cone", "{v}");
    assert_eq!(v["server"], "203.0.113.1:3478", "{v}");
    // Nobody answers at all: unknown, within the timeout (1 s transaction + TCP check).
    let (v, took, ..) = verdict(prefix, "10.0.0.10", &["203.0.113.3:3478"]);
    assert_eq!(v["nat_type"], "unknown", "{v}");
    assert_eq!(v["public"], "none", "{v}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}
