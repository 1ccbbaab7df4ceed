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

    wait("two current nodes", 20, || {
        let (_, out, _) = b.cli(&["fleet", "status"]);
        out.lines()
            .any(|l| l.starts_with("alpha") && l.contains(" ok "))
            && out
                .lines()
                .any(|l| l.starts_with("beta") && l.contains(" ok "))
    });
    let (_, network, _) = b.cli(&["network"]);
    assert!(network.contains("\"connected\":true"), "{network}");
    // A node that stops goes stale after three heartbeats.
    b.stop();
    wait("beta stale", 20, || {
        let (_, out, _) = a.cli(&["fleet", "status"]);
        out.lines()
            .any(|l| l.starts_with("beta") && l.contains("STALE"))
    });
}
