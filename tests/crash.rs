//! Crash safety of the data directory: meshd killed with SIGKILL at random moments, 20 times
//! in a row, during header sync from a serving peer that is not meshd
//! (`tests/peers/header_server.py`), and during address gossip and bans (peers.dat and
//! bans.dat written all along). Every restart must be clean: it starts, loads
//! `headers.dat` without an error, keeps everything the previous run had committed (no loss
//! beyond the unflushed tail of the group commit), and the last run syncs to the tip. The
//! download is paced (300 KiB/s, about 3,800 headers/s) so every kill lands in the middle
//! of the sync, which the test checks.

mod common;

use std::time::{Duration, Instant};

use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::ServiceFlags;
use common::rawpeer::{RawPeer, Seen};
use common::{msg, skip_or_fail, Meshd};
use meshd_actors::wire::Message;

const HEADERS: u32 = 60_000;
const KILLS: usize = 20;
/// Headers a kill may lose: the group commit flushes every 20,000 headers or 500 ms; at
/// 300 KiB/s the 500 ms bound comes first (about 1,900 headers), plus the batch in hand.
const UNFLUSHED_TAIL: f64 = 5_000.0;

/// A small deterministic generator for the kill moments (no dependency needed).
fn next_delay(state: &mut u64) -> Duration {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    Duration::from_millis(150 + *state % 1000)
}

#[test]
fn twenty_kill_9s_during_header_sync_each_restart_clean() {
    let Some(server) = common::header_server::start(HEADERS) else {
        return skip_or_fail("python3 (the header-serving peer)");
    };
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--connect",
        addr.as_str(),
        "--blocks",
        "none",
        "--max-download-rate",
        "300KiB",
    ];
    let mut committed = 0.0_f64;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..KILLS {
        let mut node = Meshd::start_in(dir.path(), &args, true);
        let loaded = node.wait_log("chain loaded", Duration::from_secs(30), |v| {
            msg(v) == "header chain loaded"
        });
        let height = loaded["height"].as_f64().unwrap();
        assert!(
            height + UNFLUSHED_TAIL >= committed,
            "round {round}: loaded {height}, the previous run had reached {committed}"
        );
        // Run a random while, read how far it got, then kill it in the middle of the sync.
        std::thread::sleep(next_delay(&mut seed));
        let reached = node.metric("meshd_header_height").unwrap_or(height);
        node.stop_with("KILL", Duration::from_secs(5));
        eprintln!("round {round}: loaded {height}, reached {reached}, killed");
        assert!(
            node.raw_lines()
                .iter()
                .all(|l| !l.contains("\"level\":\"ERROR\"")),
            "round {round}: an error was logged: {:?}",
            node.raw_lines()
                .iter()
                .filter(|l| l.contains("ERROR"))
                .collect::<Vec<_>>()
        );
        assert!(
            reached < f64::from(HEADERS),
            "round {round}: already synced before the kill"
        );
        committed = committed.max(reached);
    }
    // The last run after the 20th kill: loads cleanly and finishes the sync.
    let node = Meshd::start_in(dir.path(), &args, true);
    let loaded = node.wait_log("chain loaded", Duration::from_secs(30), |v| {
        msg(v) == "header chain loaded"
    });
    assert!(loaded["height"].as_f64().unwrap() + UNFLUSHED_TAIL >= committed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.metric("meshd_header_height") != Some(f64::from(HEADERS)) {
        assert!(
            Instant::now() < deadline,
            "not synced after the kills: {:?}",
            node.metric("meshd_header_height")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Serves addresses to whoever dials it: 1,000 on `getaddr`, ten new ones every 100 ms.
fn gossip_server() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut next = 0u32;
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let first = next;
            next = next.wrapping_add(100_000);
            std::thread::spawn(move || serve_gossip(RawPeer::from_stream(stream), first));
        }
    });
    addr
}

fn gossip_addrs(from: u32, n: u32) -> Vec<(u32, Address)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    (from..from + n)
        .map(|i| {
            // Loopback only (regtest counts each 127.x.y.0/24 as its own group): the node may
            // dial what it learns, and nothing here may reach beyond this machine.
            let ip = std::net::Ipv4Addr::new(127, (i >> 16) as u8 | 1, (i >> 8) as u8, i as u8);
            let a = std::net::SocketAddr::from((ip, 1));
            (now - 60, Address::new(&a, ServiceFlags::NETWORK))
        })
        .collect()
}

fn serve_gossip(mut p: RawPeer, mut next: u32) {
    let mut last = Instant::now();
    loop {
        match p.recv(Duration::from_millis(100)) {
            Seen::Msg(Message::Network(NetworkMessage::Version(_))) => {
                p.send(RawPeer::version("/gossip:1/"));
                p.send(NetworkMessage::Verack);
            }
            Seen::Msg(Message::Network(NetworkMessage::GetAddr)) => {
                p.send(NetworkMessage::Addr(gossip_addrs(next, 1_000)));
                next += 1_000;
            }
            Seen::Msg(Message::Network(NetworkMessage::Ping(n))) => p.send(NetworkMessage::Pong(n)),
            Seen::Closed => return,
            _ => {}
        }
        if last.elapsed() >= Duration::from_millis(100) {
            p.send(NetworkMessage::Addr(gossip_addrs(next, 10)));
            next += 10;
            last = Instant::now();
        }
    }
}

fn post_ban(node: &Meshd, subnet: &str) -> bool {
    let url = format!("http://{}/v1/bans", node.api.expect("api"));
    ureq::post(&url)
        .header("Authorization", &format!("Bearer {}", node.token()))
        .header("Content-Type", "application/json")
        .send(format!(r#"{{"subnet": "{subnet}"}}"#).as_bytes())
        .is_ok()
}

#[test]
fn twenty_kill_9s_during_address_gossip_and_bans_each_restart_clean() {
    let server = gossip_server().to_string();
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--connect",
        server.as_str(),
        "--addrbook-save-interval",
        "200ms",
        "--max-outbound",
        "1",
        "--v2transport",
        "false",
    ];
    let (mut book, mut bans) = (0u64, 0usize);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for round in 0..KILLS {
        let mut node = Meshd::start_in(dir.path(), &args, true);
        let loaded = node.wait_log("address book loaded", Duration::from_secs(30), |v| {
            msg(v) == "address book loaded"
        });
        let addresses = loaded["addresses"].as_u64().unwrap();
        assert!(
            addresses >= book,
            "round {round}: {addresses} addresses loaded, {book} were saved before"
        );
        // Every ban acknowledged before the kill is on disk (saved as it is made).
        let listed = node.api_get("/v1/bans").as_array().map_or(0, Vec::len);
        assert_eq!(listed, bans, "round {round}: bans lost");
        // Two bans, then gossip for a random while, then the kill.
        for k in 0..2 {
            if post_ban(
                &node,
                &format!("203.0.113.{}/32", (round * 2 + k) % 250 + 1),
            ) {
                bans += 1;
            }
        }
        std::thread::sleep(next_delay(&mut seed));
        node.stop_with("KILL", Duration::from_secs(5));
        let errors: Vec<String> = node
            .raw_lines()
            .into_iter()
            .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains("unreadable"))
            .collect();
        assert!(errors.is_empty(), "round {round}: {errors:?}");
        // What the next run must find at least: what this one loaded (the book only grows
        // here; a save in flight at the kill is atomic, so it is either all there or not).
        book = addresses;
        eprintln!("round {round}: {addresses} addresses and {listed} bans loaded, killed");
    }
    let node = Meshd::start_in(dir.path(), &args, true);
    let loaded = node.wait_log("address book loaded", Duration::from_secs(30), |v| {
        msg(v) == "address book loaded"
    });
    assert!(loaded["addresses"].as_u64().unwrap() >= book);
    assert!(book > 0, "no address was ever saved");
    assert_eq!(
        node.api_get("/v1/bans").as_array().map_or(0, Vec::len),
        bans
    );
}
