//! Header hints through the real binary: `meshd hints export FILE` writes them from a
//! node's chain, a second node started with `--header-hints FILE` syncs along them, and a
//! hints file of another network is refused at start with a message.

mod common;

use std::process::Command;

use common::{wait, Meshd};

#[test]
fn hints_exported_by_one_node_sync_another_and_a_wrong_file_is_refused() {
    let a = Meshd::start(&["--max-outbound", "0"]);
    let (code, out, err) = a.cli(&["generate", "4100"]);
    assert_eq!(code, 0, "{out}{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hints.txt");
    let (code, out, err) = a.cli(&["hints", "export", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines[0], "network regtest", "{text}");
    let hint_2000 = a.api_get("/v1/hints")["hints"][0]["hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(lines[1], format!("2000 {hint_2000}"));
    assert!(lines[2].starts_with("4000 "), "{text}");
    assert_eq!(lines.len(), 3, "{text}");

    let a_addr = a.addr.unwrap().to_string();
    let b = Meshd::start(&[
        "--header-hints",
        file.to_str().unwrap(),
        "--connect",
        &a_addr,
    ]);
    wait("b synced along the hints", 60, || {
        b.api_get("/v1/sync")["header_height"] == 4100
    });
    assert!(
        b.count_logs(|v| common::msg(v).starts_with("headers sync along header hints")) >= 1,
        "the hints were used"
    );
    assert_eq!(b.api_get("/v1/config")["header-hints"], 2);

    // Another network's hints: refused before the node starts.
    std::fs::write(&file, text.replace("network regtest", "network mainnet")).unwrap();
    let datadir = tempfile::tempdir().unwrap();
    let refused = Command::new(common::meshd_bin())
        .arg("--datadir")
        .arg(datadir.path())
        .args(["--header-hints", file.to_str().unwrap(), "--no-api"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("header-hints") && stderr.contains("network mainnet"),
        "{stderr}"
    );
}
