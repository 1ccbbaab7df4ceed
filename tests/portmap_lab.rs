//! Port mapping behind a real gateway: miniupnpd (Debian `miniupnpd-nftables`, with PCP,
//! NAT-PMP and UPnP IGD on) in the NAT lab's [nat] namespace (tests/lab/natlab.sh), meshd in
//! [cli] behind a port-restricted cone NAT, and a peer in [pub] outside it. meshd maps its
//! listening port (PCP by default, UPnP with `--natpmp=false --upnp`), advertises the mapped
//! address, the outside peer completes a version handshake through it, `upnpc -l` on the LAN
//! sees the mapping, and after a graceful stop the mapping is gone.
//! Needs root (CI runs as root); elsewhere it skips with a loud message.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{usable, Lab};
use common::{msg, Meshd};

const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lab/natlab.sh");
const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/version_probe.py");
/// testnet4's message start: a public network, so only what meshd learnt is advertised
/// (regtest advertises its listening address whatever happens).
const TESTNET4_MAGIC: &str = "1c163f28";
/// meshd's address in [cli], and the [nat] gateway's public one.
const CLIENT: &str = "10.0.0.10";
const PUBLIC: &str = "203.0.113.254";
const T: Duration = Duration::from_secs(30);

/// The gateway's mapping list as a LAN host sees it (`upnpc -i -l`: miniupnpd keeps PCP,
/// NAT-PMP and UPnP mappings in one list).
fn gateway_mappings(prefix: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{prefix}cli"),
            "upnpc",
            "-i",
            "-l",
        ])
        .output()
        .expect("upnpc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `upnpc`'s list satisfies `pred`.
fn wait_mappings(prefix: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + T;
    loop {
        let list = gateway_mappings(prefix);
        if pred(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "timed out: {what}\n{list}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A version handshake from [pub], outside the NAT, to the mapped address.
fn handshake_from_outside(prefix: &str, port: u16) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("{prefix}pub"), "python3", PROBE])
        .arg(format!("{PUBLIC}:{port}"))
        .arg(TESTNET4_MAGIC)
        .output()
        .expect("version probe");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "no handshake through the mapping: {text}"
    );
    text
}

fn mapping_round_trip(prefix: &'static str, port: u16, extra: &[&str], protocol: &str) {
    let with_stun = extra.contains(&"--stun-server");
    let lab = Lab::new(LAB, "NATLAB_PREFIX", prefix);
    lab.run(&["up", "portrestricted"]);
    lab.run(&["miniupnpd"]);
    let dir = tempfile::tempdir().unwrap();
    let ns = format!("{prefix}cli");
    let listen = format!("{CLIENT}:{port}");
    let mut args = vec![
        "--network",
        "testnet4",
        "--no-dns-seed",
        "--listen",
        listen.as_str(),
        "--max-outbound",
        "0",
        "--log-level",
        "info",
    ];
    args.extend_from_slice(extra);
    let mut node = Meshd::start_wrapped(&["ip", "netns", "exec", &ns], dir.path(), &args, false);
    let external = format!("{PUBLIC}:{port}");
    let mapped = node.wait_log("the port mapped", T, |v| {
        msg(v) == "port mapped on the gateway"
    });
    assert_eq!(mapped["protocol"], protocol, "{mapped}");
    assert_eq!(mapped["external"], external.as_str(), "{mapped}");
    assert_eq!(mapped["internal"], listen.as_str(), "{mapped}");
    node.wait_log("the mapped address advertised", T, |v| {
        msg(v) == "advertising our address"
            && v["addresses"]
                .as_str()
                .is_some_and(|a| a.contains(&external))
    });
    // The operator's view, from inside [cli] where the API and metrics listen.
    let ns_meshd = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(common::meshd_bin())
            .args(args)
            .arg("--datadir")
            .arg(dir.path())
            .args(["--network", "testnet4"])
            .output()
            .expect("meshd client");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let network: serde_json::Value =
        serde_json::from_str(&ns_meshd(&["network", "--json"])).expect("network json");
    let pm = &network["port_mapping"];
    assert_eq!(pm["state"], "mapped", "{network}");
    assert_eq!(pm["protocol"], protocol, "{network}");
    assert_eq!(pm["external"], external.as_str(), "{network}");
    assert_eq!(pm["internal"], listen.as_str(), "{network}");
    assert_eq!(pm["lifetime"], 2400, "{network}");
    assert!(
        network["public_addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == external.as_str())),
        "{network}"
    );
    if with_stun {
        // STUN's public address agrees with the gateway's.
        let deadline = Instant::now() + T;
        loop {
            let n: serde_json::Value =
                serde_json::from_str(&ns_meshd(&["network", "--json"])).expect("network json");
            if n["port_mapping"]["stun_agrees"] == true {
                break;
            }
            assert!(Instant::now() < deadline, "STUN never agreed: {n}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let human = ns_meshd(&["network"]);
    assert!(
        human.contains(&format!("port map     {protocol} {external} -> {listen}")),
        "{human}"
    );
    let fetch = format!(
        "import urllib.request;print(urllib.request.urlopen('http://{}/metrics').read().decode())",
        node.logs()
            .iter()
            .find(|v| msg(v) == "metrics listening")
            .and_then(|v| v["addr"].as_str().map(String::from))
            .expect("metrics address")
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, "python3", "-c", &fetch])
        .output()
        .expect("scrape");
    let metrics = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        metrics.contains(&format!(
            "meshd_port_mapping_active{{protocol=\"{protocol}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshd_port_mapping_rounds_total{outcome=\"mapped\"} 1"),
        "{metrics}"
    );
    let entry = format!("TCP {port}->{CLIENT}:{port}");
    wait_mappings(prefix, "the gateway to list the mapping", |l| {
        l.contains(&entry)
    });

    let said = handshake_from_outside(prefix, port);
    assert!(said.contains("handshake ok"), "{said}");
    // It came in from outside: an inbound peer from [pub]'s address, DNATed by the gateway.
    let hs = node.wait_log("the outside peer's handshake", T, |v| {
        msg(v) == "handshake complete" && v["user_agent"] == "/version_probe:0.1/"
    });
    assert_eq!(hs["direction"], "inbound", "{hs}");
    assert!(
        hs["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("203.0.113.")),
        "{hs}"
    );

    node.stop();
    let logs = node.logs();
    let deleted = logs
        .iter()
        .find(|v| msg(v) == "port mapping deleted")
        .unwrap_or_else(|| panic!("no deletion logged: {logs:#?}"));
    assert_eq!(deleted["protocol"], protocol, "{deleted}");
    wait_mappings(prefix, "the mapping to be gone after the stop", |l| {
        !l.contains(&entry) && l.contains("ExternalIPAddress")
    });
}

#[test]
fn pcp_maps_the_listener_behind_miniupnpd_and_deletes_it_at_shutdown() {
    if !usable(
        "the port-mapping lab",
        &["turnserver", "nft", "ip", "miniupnpd", "upnpc", "python3"],
    ) {
        return;
    }
    mapping_round_trip(
        "mshdp-",
        18444,
        &["--stun-server", "203.0.113.1:3478"],
        "pcp",
    );
}

#[test]
fn upnp_maps_the_listener_when_natpmp_is_off() {
    if !usable(
        "the port-mapping lab",
        &["turnserver", "nft", "ip", "miniupnpd", "upnpc", "python3"],
    ) {
        return;
    }
    mapping_round_trip("mshdu-", 18445, &["--natpmp=false", "--upnp"], "upnp");
}
