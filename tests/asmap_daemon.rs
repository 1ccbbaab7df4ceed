//! `--asmap FILE` through the real binary, in the spirit of Core's feature_asmap.py: a node
//! started with a map built here (Core's encoded format, given by a path relative to its data
//! directory) logs and shows the map's version,
//! keeps working with peers, and a file that is not a valid asmap stops the node at start
//! with a message naming it.

mod common;

use std::process::Command;

use common::{wait, Meshd};
use meshd_actors::shared::asmap::{encode, Asmap};

#[test]
fn a_node_runs_with_an_asmap_and_a_bad_file_is_refused() {
    // A relative path is in the network's data directory, as Core resolves -asmap.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("regtest")).unwrap();
    let file = dir.path().join("regtest").join("ip_asn.map");
    let bytes = encode::prefixes(&[
        ("203.0.113.0".parse().unwrap(), 24, 64500),
        ("2001:db8::".parse().unwrap(), 32, 64501),
    ]);
    let version = Asmap::from_bytes(bytes.clone())
        .unwrap()
        .version()
        .to_string();
    std::fs::write(&file, &bytes).unwrap();

    let a = Meshd::start_in(
        dir.path(),
        &["--asmap", "ip_asn.map", "--max-outbound", "0"],
        true,
    );
    assert_eq!(a.api_get("/v1/config")["asmap"], version.as_str());
    assert!(
        a.count_logs(
            |v| common::msg(v).starts_with("using asmap") && v["version"] == version.as_str()
        ) >= 1,
        "the map's version is logged"
    );
    // Peers still connect; a loopback peer is not routable, so it maps to no AS.
    let a_addr = a.addr.unwrap().to_string();
    let b = Meshd::start(&["--connect", &a_addr]);
    wait("b connected to a", 30, || {
        a.api_get("/v1/peers")
            .as_array()
            .is_some_and(|p| !p.is_empty())
    });
    let peers = a.api_get("/v1/peers");
    assert!(peers[0]["mapped_as"].is_null(), "{peers}");
    drop(b);

    // Not an asmap (fails Core's sanity check): refused before the node starts.
    std::fs::write(&file, [0xffu8; 64]).unwrap();
    let datadir = tempfile::tempdir().unwrap();
    let refused = Command::new(common::meshd_bin())
        .arg("--datadir")
        .arg(datadir.path())
        .args(["--asmap", file.to_str().unwrap(), "--no-api"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("asmap") && stderr.contains("sanity check"),
        "{stderr}"
    );
}
