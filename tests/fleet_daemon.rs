//! The fleet through the real binary and a real nats-server: `meshd fleet status` (one line
//! per node, a stopped node marked stale), `meshd fleet propagation --last N`, the fleet
//! section of `meshd network`. (Fleet bans and their origin: `actors/tests/fleet.rs`.)

mod common;

use common::{wait, Meshd};

#[test]
fn fleet_status_propagation_and_network_through_the_cli() {
    let Some((nats, _dir)) = common::nats::Nats::start_temp() else {
        return;
    };
    let url = nats.url();
    let beat = ["--fleet-heartbeat-interval", "1s"];
    let fleet = |name| common::nats::fleet_flags(&url, "cli", name);
    let a = Meshd::start(&[&fleet("alpha")[..], &beat, &["--max-outbound", "0"]].concat());
    let a_addr = a.addr.unwrap().to_string();
    let mut b = Meshd::start(&[&fleet("beta")[..], &beat, &["--connect", &a_addr]].concat());

    wait("both connected to NATS", 20, || {
        a.api_get("/v1/network")["fleet"]["connected"] == true
            && b.api_get("/v1/network")["fleet"]["connected"] == true
    });
    let (code, out, _) = a.cli(&["generate", "2"]);
    assert_eq!(code, 0, "{out}");
    wait("two blocks seen by both nodes", 20, || {
        let (_, out, _) = a.cli(&["fleet", "propagation", "--last", "5"]);
        out.lines().filter(|l| l.contains("alpha")).count() == 2
            && out
                .lines()
                .filter(|l| l.contains("alpha"))
                .all(|l| l.split_whitespace().nth(2) == Some("2"))
    });
    let (code, out, _) = a.cli(&["fleet", "propagation", "--last", "1", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["height"], 2);
    // The API's style: unix seconds as *_time, delays in seconds.
    assert!(v[0]["first_time"].as_f64().unwrap() > 1.7e9, "{v}");
    assert!(
        v[0]["p50"].is_number() && v[0].get("p50_ms").is_none(),
        "{v}"
    );
    assert!(v[0]["arrivals"][1]["delay"].is_number(), "{v}");
    // Which message first carried the block to each node: alpha mined it, beta got it from
    // alpha whole (two new blocks at once are fetched as blocks).
    let arrivals = v[0]["arrivals"].as_array().unwrap();
    assert_eq!(arrivals[0]["node"], "alpha", "{v}");
    assert_eq!(arrivals[0]["via"], "local", "{v}");
    assert_eq!(arrivals[1]["node"], "beta", "{v}");
    assert_eq!(arrivals[1]["via"], "block", "{v}");
    assert_eq!(arrivals[1]["from"], a_addr.as_str(), "{v}");
    // Having given beta a new block, alpha was asked to announce compact at once (BIP152
    // high-bandwidth, Core's choice of the last block giver): the third block is pushed as
    // a cmpctblock, and the table says so.
    wait("beta's high-bandwidth ask reaching alpha", 20, || {
        a.api_get("/v1/peers")
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["bip152_hb_from"] == true))
    });
    let (code, out, _) = a.cli(&["generate", "1"]);
    assert_eq!(code, 0, "{out}");
    wait("the third block seen by both nodes", 20, || {
        let (_, out, _) = a.cli(&["fleet", "propagation", "--last", "1"]);
        out.lines().any(|l| {
            l.split_whitespace().next() == Some("3")
                && l.ends_with("compact_high_bandwidth:1,local:1")
        })
    });

    wait("two current nodes", 20, || {
        let (_, out, _) = b.cli(&["fleet", "status"]);
        out.lines()
            .any(|l| l.starts_with("alpha") && l.contains(" ok "))
            && out
                .lines()
                .any(|l| l.starts_with("beta") && l.contains(" ok "))
    });
    let (_, network, _) = b.cli(&["network"]);
    assert!(
        network
            .lines()
            .any(|l| l.starts_with("fleet") && l.ends_with("(connected)")),
        "{network}"
    );
    // A node that stops goes stale after three heartbeats.
    b.stop();
    wait("beta stale", 45, || {
        let (_, out, _) = a.cli(&["fleet", "status"]);
        out.lines()
            .any(|l| l.starts_with("beta") && l.contains("STALE"))
    });
}

/// `meshd fleet key` prints (making it on first use) the key the node then signs its ban
/// advisories with, as a line for another node's `--fleet-trusted-keys` file; that node
/// applies the operator's ban with its origin. `--fleet-apply-bans` without a trusted-keys
/// file is refused at start.
#[test]
fn fleet_key_is_the_signing_key_and_trusted_nodes_apply_its_bans() {
    use std::os::unix::fs::PermissionsExt;
    let Some((nats, _dir)) = common::nats::Nats::start_temp() else {
        return;
    };
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let key_cmd = || {
        let out = std::process::Command::new(common::meshd_bin())
            .args(["fleet", "key", "--node-name", "alpha", "--datadir"])
            .arg(dir.path())
            .output()
            .expect("run meshd");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let line = key_cmd();
    assert_eq!(line, key_cmd(), "the same key each time");
    let (public, name) = line.trim().split_once(' ').expect("PUBKEY NAME");
    assert_eq!((public.len(), name), (64, "alpha"));
    let mode = std::fs::metadata(dir.path().join("regtest/fleet_key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let trusted = dir.path().join("trusted-keys");
    std::fs::write(&trusted, &line).unwrap();
    let trusted = trusted.to_str().unwrap();

    // Applying advisories needs to know whose.
    let out = std::process::Command::new(common::meshd_bin())
        .args(["--nats", &url, "--fleet-apply-bans", "--datadir"])
        .arg(dir.path().join("refused"))
        .output()
        .expect("run meshd");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("fleet-trusted-keys"));

    let fleet = |name| common::nats::fleet_flags(&url, "keys", name);
    let a = Meshd::start_in(dir.path(), &fleet("alpha"), true);
    let b = Meshd::start(
        &[
            &fleet("beta")[..],
            &["--fleet-apply-bans", "--fleet-trusted-keys", trusted],
        ]
        .concat(),
    );
    wait("both connected to NATS", 20, || {
        a.api_get("/v1/network")["fleet"]["connected"] == true
            && b.api_get("/v1/network")["fleet"]["connected"] == true
    });
    assert_eq!(a.api_get("/v1/network")["fleet"]["key"], public);
    // Until beta's subscription is live, each try bans another address.
    let mut n = 0;
    wait("beta applied alpha's ban", 20, || {
        n += 1;
        let (code, out, _) = a.cli(&["ban", &format!("203.0.113.{n}")]);
        assert_eq!(code, 0, "{out}");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let (_, out, _) = b.cli(&["bans"]);
        out.lines()
            .any(|l| l.contains("203.0.113.") && l.contains("fleet") && l.contains("alpha"))
    });
}
