//! The overlay against an independent libp2p implementation: js-libp2p 3 (npm `libp2p`,
//! `@libp2p/kad-dht`, `@libp2p/gossipsub`, `@libp2p/circuit-relay-v2`; installed by
//! scripts/install-test-deps.sh into .peers/jslibp2p) driven by tests/peers/js_overlay.mjs.
//! DHT provider records are found both ways, a gossip message crosses each way, js relays
//! between two meshd nodes and meshd relays for js.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshd_actors::config::NodeConfig;
use meshd_actors::events::{EventKind, NodeEvent};
use meshd_actors::libp2p::Multiaddr;
use meshd_actors::node::Node;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(40);

/// Where js-libp2p is installed, if it is.
fn js_dir() -> Option<PathBuf> {
    let peers = std::env::var_os("MESHD_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.peers")));
    let dir = peers.join("jslibp2p");
    dir.join("node_modules/libp2p/package.json")
        .exists()
        .then_some(dir)
}

/// A running js-libp2p node.
struct JsNode {
    child: Child,
    stdin: ChildStdin,
    events: Arc<Mutex<Vec<Value>>>,
    peer_id: String,
    addr: String,
}

impl JsNode {
    fn start(dir: &std::path::Path, extra_listen: &[String]) -> JsNode {
        // ES modules resolve packages from the script's own directory: run a copy there.
        let here = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/peers");
        for f in ["js_overlay.mjs", "polyfill.mjs"] {
            std::fs::copy(format!("{here}/{f}"), dir.join(f)).unwrap();
        }
        let mut child = Command::new("node")
            .current_dir(dir)
            .args(["--import", "./polyfill.mjs", "js_overlay.mjs", "regtest"])
            .args(extra_listen)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        let mut js = JsNode {
            child,
            stdin,
            events,
            peer_id: String::new(),
            addr: String::new(),
        };
        let ready = js.wait("ready", Duration::from_secs(30), |v| v["event"] == "ready");
        js.peer_id = ready["peer_id"].as_str().unwrap().to_string();
        js.addr = ready["addrs"][0].as_str().unwrap().to_string();
        js
    }

    fn send(&mut self, cmd: Value) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.events.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            assert!(
                Instant::now() < deadline,
                "js: timed out waiting for {what}: {:?}",
                self.events.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|v| pred(v))
            .count()
    }

    /// The js node's circuit address through itself as a relay.
    fn circuit(&self) -> String {
        format!("{}/p2p-circuit", self.addr)
    }
}

impl Drop for JsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn overlay_config(dir: &std::path::Path, bootstrap: Vec<Multiaddr>) -> NodeConfig {
    let mut c = common::config(dir);
    c.overlay.enabled = true;
    c.overlay.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    c.overlay.bootstrap = bootstrap;
    c
}

async fn overlay_id(node: &Node) -> (String, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some((s, _)) = node.overlay() {
            let direct = |a: &&String| a.contains("/tcp/") && !a.contains("p2p-circuit");
            if let Some(a) = s.listen_addrs.iter().find(direct) {
                return (s.peer_id.clone(), format!("{a}/p2p/{}", s.peer_id));
            }
        }
        assert!(Instant::now() < deadline, "no overlay");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connected(node: &Node, peer_id: &str) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if node
            .overlay()
            .is_some_and(|(_, peers)| peers.iter().any(|p| p.peer_id == peer_id))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_libp2p_finds_our_records_we_find_its_and_gossip_crosses_each_way() {
    let Some(js_home) = js_dir() else {
        common::skip_or_fail("js-libp2p (npm libp2p 3, in .peers/jslibp2p)");
        return;
    };
    let mut js = JsNode::start(&js_home, &[]);
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(overlay_config(dir.path(), vec![js.addr.parse().unwrap()]))
        .await
        .unwrap();
    let (our_id, _) = overlay_id(&node).await;
    assert!(
        connected(&node, &js.peer_id).await,
        "meshd never reached js"
    );

    // DHT, js → meshd: js announces a topic, meshd finds js among its providers.
    js.send(json!({"cmd": "provide", "topic": "interop/js"}));
    let deadline = Instant::now() + WAIT;
    loop {
        let found = node.overlay_find("interop/js").await.unwrap();
        if found.iter().any(|p| p.peer_id == js.peer_id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "meshd never found js's record: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // DHT, meshd → js: meshd announces its defaults; js finds meshd for one of them.
    let deadline = Instant::now() + WAIT;
    loop {
        let asked = js.count(|v| v["event"] == "providers");
        js.send(json!({"cmd": "find", "topic": "meshd/regtest/blocks"}));
        let deadline_one = Instant::now() + WAIT;
        while js.count(|v| v["event"] == "providers") == asked {
            assert!(Instant::now() < deadline_one, "js's find never ended");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let last = js
            .events
            .lock()
            .unwrap()
            .iter()
            .rfind(|v| v["event"] == "providers")
            .cloned()
            .unwrap();
        if last["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p == our_id.as_str()))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "js never found meshd's record: {last}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Gossip both ways on one topic.
    const TOPIC: &str = "interop/gossip";
    js.send(json!({"cmd": "subscribe", "topic": TOPIC}));
    assert!(node.overlay_subscribe(TOPIC));
    let deadline = Instant::now() + WAIT;
    while js.count(|v| v["event"] == "gossip" && v["data_hex"] == "66726f6d206d65736864") == 0 {
        assert!(Instant::now() < deadline, "meshd's gossip never reached js");
        node.overlay_publish(TOPIC, b"from meshd".to_vec());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let at_js = js.wait("meshd's message", WAIT, |v| v["event"] == "gossip");
    assert_eq!(
        at_js["from"],
        our_id.as_str(),
        "signed by meshd's overlay key"
    );
    let mut events = node.subscribe_to(&[EventKind::OverlayGossipReceived]);
    let deadline = Instant::now() + WAIT;
    'heard: loop {
        assert!(Instant::now() < deadline, "js's gossip never reached meshd");
        js.send(json!({"cmd": "publish", "topic": TOPIC, "data_hex": "66726f6d206a73"}));
        let until = Instant::now() + Duration::from_millis(500);
        while let Ok(Ok(e)) = tokio::time::timeout_at(until.into(), events.recv()).await {
            if let NodeEvent::OverlayGossipReceived { data_hex, from, .. } = &e.event {
                if data_hex == "66726f6d206a73" {
                    assert_eq!(from.as_deref(), Some(js.peer_id.as_str()));
                    break 'heard;
                }
            }
        }
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_relays_between_meshd_nodes_and_meshd_relays_for_js() {
    let Some(js_home) = js_dir() else {
        common::skip_or_fail("js-libp2p (npm libp2p 3, in .peers/jslibp2p)");
        return;
    };
    // js as the relay: meshd A listens only through js's circuit; meshd B, told only that
    // circuit address, reaches A through js.
    let relay = JsNode::start(&js_home, &[]);
    let da = tempfile::tempdir().unwrap();
    let mut ca = overlay_config(da.path(), vec![]);
    ca.overlay.listen.push(relay.circuit().parse().unwrap());
    let a = Node::start(ca).await.unwrap();
    let (a_id, _) = overlay_id(&a).await;
    let deadline = Instant::now() + WAIT;
    while !a
        .overlay()
        .is_some_and(|(s, _)| s.listen_addrs.iter().any(|l| l.contains("p2p-circuit")))
    {
        assert!(
            Instant::now() < deadline,
            "no reservation at js: {:?}",
            a.overlay()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let db = tempfile::tempdir().unwrap();
    let b = Node::start(overlay_config(db.path(), vec![]))
        .await
        .unwrap();
    let mut b_events = b.subscribe_to(&[EventKind::OverlayPeerConnected]);
    let through_js: Multiaddr = format!("{}/p2p/{a_id}", relay.circuit()).parse().unwrap();
    assert!(b.overlay_dial(through_js));
    let first = loop {
        let e = tokio::time::timeout(WAIT, b_events.recv())
            .await
            .expect("B never reached A")
            .unwrap();
        if let NodeEvent::OverlayPeerConnected { peer_id, address } = &e.event {
            if *peer_id == a_id {
                break address.clone();
            }
        }
    };
    assert!(
        first.contains("p2p-circuit"),
        "B reached A by {first}, not through js"
    );

    // meshd as the relay: a js node holds a reservation at meshd A, and meshd B reaches it
    // through A.
    let (_, a_addr) = overlay_id(&a).await;
    let js_home2 = tempfile::tempdir().unwrap();
    for entry in ["node_modules", "package.json"] {
        std::os::unix::fs::symlink(js_home.join(entry), js_home2.path().join(entry)).unwrap();
    }
    let behind = JsNode::start(js_home2.path(), &[format!("{a_addr}/p2p-circuit")]);
    let deadline = Instant::now() + WAIT;
    while a
        .overlay()
        .is_none_or(|(s, _)| s.relay_served.reservations == 0)
    {
        assert!(
            Instant::now() < deadline,
            "js made no reservation at meshd: {:?}",
            a.overlay()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let through_a: Multiaddr = format!("{a_addr}/p2p-circuit/p2p/{}", behind.peer_id)
        .parse()
        .unwrap();
    assert!(b.overlay_dial(through_a));
    let first = loop {
        let e = tokio::time::timeout(WAIT, b_events.recv())
            .await
            .expect("B never reached the js node")
            .unwrap();
        if let NodeEvent::OverlayPeerConnected { peer_id, address } = &e.event {
            if *peer_id == behind.peer_id {
                break address.clone();
            }
        }
    };
    assert!(first.contains("p2p-circuit"), "{first}");
    let deadline = Instant::now() + WAIT;
    while a
        .overlay()
        .is_none_or(|(s, _)| s.relay_served.circuits == 0)
    {
        assert!(
            Instant::now() < deadline,
            "A carries no circuit: {:?}",
            a.overlay()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}
