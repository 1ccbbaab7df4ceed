//! A network partition between two meshd daemons, each in its own network namespace joined
//! by a veth pair (10.77.x.0/24, addresses only these namespaces see). The link is set down
//! under an established connection: the dialling node notices (its ping goes unanswered),
//! restarts the outbound peer with growing delays while the link is down, and once the link
//! is up again it recovers its outbound slot with a new handshake. Needs root for the
//! namespaces (CI is root); elsewhere it skips with a notice.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{msg, skip_or_fail, Meshd};

/// Two namespaces and the veth pair between them, removed when dropped.
struct Lab {
    a: String,
    b: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

impl Lab {
    fn new() -> Option<Lab> {
        let tag = std::process::id() % 100_000;
        let lab = Lab {
            a: format!("mshpa{tag}"),
            b: format!("mshpb{tag}"),
        };
        let subnet = tag % 250 + 1;
        let (addr_a, addr_b) = (
            format!("10.77.{subnet}.1/24"),
            format!("10.77.{subnet}.2/24"),
        );
        let ok = ip(&["netns", "add", &lab.a])
            && ip(&["netns", "add", &lab.b])
            && ip(&[
                "link", "add", "vpa", "netns", &lab.a, "type", "veth", "peer", "name", "vpb",
                "netns", &lab.b,
            ])
            && ip(&["-n", &lab.a, "addr", "add", &addr_a, "dev", "vpa"])
            && ip(&["-n", &lab.b, "addr", "add", &addr_b, "dev", "vpb"])
            && ip(&["-n", &lab.a, "link", "set", "lo", "up"])
            && ip(&["-n", &lab.b, "link", "set", "lo", "up"])
            && ip(&["-n", &lab.a, "link", "set", "vpa", "up"])
            && ip(&["-n", &lab.b, "link", "set", "vpb", "up"]);
        ok.then_some(lab)
    }

    fn addr_b(&self) -> String {
        format!("10.77.{}.2", std::process::id() % 100_000 % 250 + 1)
    }

    fn link(&self, up: bool) {
        assert!(ip(&[
            "-n",
            &self.a,
            "link",
            "set",
            "vpa",
            if up { "up" } else { "down" }
        ]));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.a]);
        ip(&["netns", "del", &self.b]);
    }
}

#[test]
fn outbound_peers_restart_through_a_partition_and_recover_their_slot() {
    if !common::is_root() {
        return skip_or_fail("root, for network namespaces");
    }
    let Some(lab) = Lab::new() else {
        return skip_or_fail("ip netns and veth (iproute2)");
    };
    let target = format!("{}:18444", lab.addr_b());
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ns_b = ["ip", "netns", "exec", lab.b.as_str()];
    let ns_a = ["ip", "netns", "exec", lab.a.as_str()];
    let _b = Meshd::start_wrapped(
        &ns_b,
        Path::new(db.path()),
        &["--listen", &target, "--no-metrics", "--no-api"],
        false,
    );
    let a = Meshd::start_wrapped(
        &ns_a,
        Path::new(da.path()),
        &[
            "--connect",
            &target,
            "--no-metrics",
            "--no-api",
            "--ping-interval",
            "500ms",
            "--ping-timeout",
            "2s",
            "--connect-timeout",
            "1s",
            "--restart-base-delay",
            "200ms",
            "--restart-max",
            "20",
        ],
        false,
    );
    let handshakes = |a: &Meshd| a.count_logs(|v| msg(v) == "handshake complete");
    a.wait_log("first handshake", Duration::from_secs(15), |v| {
        msg(v) == "handshake complete"
    });

    // Partition: the established connection goes quiet; the pong never comes.
    lab.link(false);
    let lost = a.wait_log("partition noticed", Duration::from_secs(15), |v| {
        msg(v) == "peer disconnected" && v["established"] == true
    });
    assert_eq!(lost["reason_kind"], "ping_timeout", "{lost}");
    // While it lasts, the outbound peer is restarted with growing delays (and each dial fails).
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.count_logs(|v| msg(v) == "restarting outbound connection") < 3 {
        assert!(
            Instant::now() < deadline,
            "no restarts during the partition"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let delays: Vec<u64> = a
        .logs()
        .iter()
        .filter(|v| msg(v) == "restarting outbound connection")
        .filter_map(|v| v["delay_ms"].as_u64())
        .collect();
    assert_eq!(handshakes(&a), 1);

    // Healed: the slot is recovered with a new handshake.
    lab.link(true);
    let deadline = Instant::now() + Duration::from_secs(30);
    while handshakes(&a) < 2 {
        assert!(
            Instant::now() < deadline,
            "outbound slot not recovered after the partition; restart delays {delays:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("partition: restart delays during it {delays:?} ms, recovered");
}
