//! The address book through the real binary: it survives a restart and a kill -9, and a
//! corrupt or truncated file is set aside with one error line.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, msg, Meshd};

#[test]
fn address_book_survives_kill_9_and_the_node_redials_from_it() {
    let port = free_port();
    let target_addr = format!("127.0.0.1:{port}");
    let tdir = tempfile::tempdir().unwrap();
    let mut target = Meshd::start_in(
        tdir.path(),
        &["--listen", &target_addr, "--max-outbound", "0"],
        false,
    );
    target.wait_log("target up", Duration::from_secs(10), |v| {
        msg(v) == "p2p listening"
    });

    let dir = tempfile::tempdir().unwrap();
    let mut node = Meshd::start_in(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--connect",
            &target_addr,
            "--addrbook-save-interval",
            "300ms",
        ],
        false,
    );
    node.wait_log("handshake", Duration::from_secs(10), |v| {
        msg(v) == "handshake complete"
    });
    let book = dir.path().join("regtest/peers.dat");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !book.exists() {
        assert!(Instant::now() < deadline, "address book never saved");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(700));
    node.stop_with("KILL", Duration::from_secs(5));

    // Restarted without --connect: the book alone leads it back to the target.
    let mut node = Meshd::start_in(dir.path(), &["--listen", "127.0.0.1:0"], false);
    let loaded = node.wait_log("book loaded", Duration::from_secs(10), |v| {
        msg(v) == "address book loaded"
    });
    assert!(loaded["addresses"].as_u64().unwrap() >= 1, "{loaded}");
    let hs = node.wait_log("redial from the book", Duration::from_secs(10), |v| {
        msg(v) == "handshake complete" && v["direction"] == "outbound"
    });
    assert_eq!(hs["peer"], target_addr.as_str());
    assert!(
        node.count_logs(|v| v["level"] == "ERROR") == 0,
        "{:?}",
        node.raw_lines()
    );
    node.stop();
    target.stop();
}

#[test]
fn corrupt_or_truncated_address_book_is_set_aside_and_the_node_starts_empty() {
    for damage in ["garbage", "truncated"] {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("regtest");
        // A valid book first, written by a real node.
        let mut first = Meshd::start_in(
            dir.path(),
            &["--listen", "127.0.0.1:0", "--addnode", "127.0.0.1:1"],
            false,
        );
        first.wait_log("up", Duration::from_secs(10), |v| msg(v) == "p2p listening");
        first.stop();
        let path = net.join("peers.dat");
        let bytes = std::fs::read(&path).expect("book written at shutdown");
        match damage {
            "garbage" => std::fs::write(&path, b"this is not an address book").unwrap(),
            _ => std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap(),
        }
        let mut node = Meshd::start_in(dir.path(), &["--listen", "127.0.0.1:0"], false);
        let err = node.wait_log("error line", Duration::from_secs(10), |v| {
            msg(v).starts_with("address book unreadable")
        });
        assert_eq!(err["level"], "ERROR");
        let loaded = node.wait_log("empty book", Duration::from_secs(10), |v| {
            msg(v) == "address book loaded"
        });
        assert_eq!(loaded["addresses"], 0);
        assert_eq!(
            node.count_logs(|v| msg(v).starts_with("address book unreadable")),
            1
        );
        let aside: Vec<_> = std::fs::read_dir(&net)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("peers.dat.corrupt-")
            })
            .collect();
        assert_eq!(aside.len(), 1, "{damage}: the damaged file is kept aside");
        node.wait_log("up", Duration::from_secs(10), |v| msg(v) == "p2p listening");
        node.stop();
    }
}
