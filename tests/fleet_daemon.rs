//! The fleet through the real binary and a real nats-server: `meshd fleet status` (one line
//! per node, a stopped node marked stale), `meshd fleet propagation --last N`, the fleet
//! section of `meshd network`. (Fleet bans and their origin: `actors/tests/fleet.rs`.)

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{meshd_bin, Meshd};

fn cli(node: &Meshd, args: &[&str]) -> (i32, String) {
    let out = Command::new(meshd_bin())
        .args(args)
        .arg("--api")
        .arg(node.api.unwrap().to_string())
        .arg("--datadir")
        .arg(&node.datadir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
    )
}

fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn fleet_status_propagation_and_network_through_the_cli() {
    let Some(bin) = common::nats::nats_path() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let nats = common::nats::Nats::start(&bin, dir.path());
    let url = nats.url();
    let args = |name: &'static str| {
        vec![
            "--nats".to_string(),
            url.clone(),
            "--fleet".into(),
            "cli".into(),
            "--node-name".into(),
            name.into(),
            "--fleet-heartbeat-interval".into(),
            "1s".into(),
        ]
    };
    let a_args = [args("alpha"), vec!["--max-outbound".into(), "0".into()]].concat();
    let a = Meshd::start(&a_args.iter().map(String::as_str).collect::<Vec<_>>());
    let a_addr = a.addr.unwrap().to_string();
    let b_args = [args("beta"), vec!["--connect".into(), a_addr]].concat();
    let mut b = Meshd::start(&b_args.iter().map(String::as_str).collect::<Vec<_>>());

    wait("both connected to NATS", 20, || {
        a.api_get("/v1/network")["fleet"]["connected"] == true
            && b.api_get("/v1/network")["fleet"]["connected"] == true
    });
    let (code, out) = cli(&a, &["generate", "2"]);
    assert_eq!(code, 0, "{out}");
    wait("two blocks seen by both nodes", 20, || {
        let (_, out) = cli(&a, &["fleet", "propagation", "--last", "5"]);
        out.lines().filter(|l| l.contains("alpha")).count() == 2
            && out
                .lines()
                .filter(|l| l.contains("alpha"))
                .all(|l| l.split_whitespace().nth(2) == Some("2"))
    });
    let (code, out) = cli(&a, &["fleet", "propagation", "--last", "1", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["height"], 2);

    wait("two current nodes", 20, || {
        let (_, out) = cli(&b, &["fleet", "status"]);
        out.lines()
            .any(|l| l.starts_with("alpha") && l.contains(" ok "))
            && out
                .lines()
                .any(|l| l.starts_with("beta") && l.contains(" ok "))
    });
    let (_, network) = cli(&b, &["network"]);
    assert!(network.contains("\"connected\":true"), "{network}");
    // A node that stops goes stale after three heartbeats.
    b.stop();
    wait("beta stale", 20, || {
        let (_, out) = cli(&a, &["fleet", "status"]);
        out.lines()
            .any(|l| l.starts_with("beta") && l.contains("STALE"))
    });
}
