//! The admin API and the CLI against the real binary: auth, every route, errors, the event
//! stream, and the CLI subcommands' tables, JSON and messages.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{meshd_bin, msg, Meshd};
use serde_json::{json, Value};

struct Api {
    base: String,
    token: String,
}

impl Api {
    fn of(node: &Meshd) -> Api {
        Api {
            base: format!("http://{}", node.api.expect("api on")),
            token: node.token(),
        }
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into()
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", token.unwrap_or(&self.token));
        let a = Api::agent();
        let r = match method {
            "GET" => a.get(&url).header("Authorization", &auth).call(),
            "DELETE" => a.delete(&url).header("Authorization", &auth).call(),
            m => {
                let b = body.unwrap_or(Value::Null).to_string();
                let req = if m == "PATCH" {
                    a.patch(&url)
                } else {
                    a.post(&url)
                };
                req.header("Authorization", &auth)
                    .header("Content-Type", "application/json")
                    .send(b.as_bytes())
            }
        };
        let mut r = r.expect("api reachable");
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None, None)
    }
}

fn cli(node: &Meshd, args: &[&str]) -> (i32, String, String) {
    node.cli(args)
}

#[test]
fn requests_without_the_token_get_401_and_the_cookie_is_private() {
    let node = Meshd::start(&[]);
    let api = Api::of(&node);
    let (status, body) = api.call("GET", "/v1/peers", None, Some("wrong"));
    assert_eq!(status, 401);
    assert_eq!(body["code"], "unauthorized");
    let (status, _) = Api::agent()
        .get(&format!("{}/v1/peers", api.base))
        .call()
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 401);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(node.datadir.join("regtest/.cookie"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (status, body) = api.get("/v2/nothing");
    assert_eq!(status, 404);
    assert_eq!(body["code"], "not_found");
}

#[test]
fn peers_routes_list_add_and_disconnect() {
    let target = Meshd::start(&["--max-outbound", "0"]);
    let node = Meshd::start(&[]);
    let api = Api::of(&node);
    let t = target.addr.unwrap().to_string();
    let (status, body) = api.call(
        "POST",
        "/v1/peers",
        Some(json!({"address": t, "onetry": true})),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let peer = loop {
        let (_, peers) = api.get("/v1/peers");
        if let Some(p) = peers
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["state"] == "connected")
        {
            break p.clone();
        }
        assert!(Instant::now() < deadline, "{peers}");
        std::thread::sleep(Duration::from_millis(50));
    };
    for field in [
        "id",
        "address",
        "local_address",
        "direction",
        "connection_type",
        "state",
        "services",
        "protocol_version",
        "user_agent",
        "start_height",
        "synced_height",
        "connected_time",
        "last_send_time",
        "last_receive_time",
        "bytes_sent",
        "bytes_received",
        "bytes_sent_per_command",
        "bytes_received_per_command",
        "ping_last",
        "ping_min",
        "ping_in_flight",
        "restarts",
        "misbehavior_score",
        "transport",
        "session_id",
    ] {
        assert!(peer.get(field).is_some(), "missing {field}: {peer}");
    }
    assert_eq!(peer["address"], t.as_str());
    assert_eq!(peer["connection_type"], "manual");
    // meshd to meshd: BIP324 v2, with Core's 64-hex-digit session id.
    assert_eq!(peer["transport"], "v2", "{peer}");
    assert_eq!(peer["session_id"].as_str().unwrap().len(), 64, "{peer}");
    assert!(peer["bytes_sent_per_command"]["version"].as_u64().unwrap() > 0);
    let id = peer["id"].as_u64().unwrap();
    let (status, _) = api.call("DELETE", &format!("/v1/peers/{id}"), None, None);
    assert_eq!(status, 200);
    let (status, body) = api.call("DELETE", "/v1/peers/999999", None, None);
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, body) = api.call(
        "POST",
        "/v1/peers",
        Some(json!({"address": "nonsense"})),
        None,
    );
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("bad address"),
        "{body}"
    );
}

#[test]
fn bans_routes_take_cidr_and_ipv6_and_say_what_is_wrong() {
    let node = Meshd::start(&[]);
    let api = Api::of(&node);
    let (s1, _) = api.call(
        "POST",
        "/v1/bans",
        Some(json!({"subnet": "203.0.113.0/24", "duration": "1h"})),
        None,
    );
    let (s2, _) = api.call(
        "POST",
        "/v1/bans",
        Some(json!({"subnet": "2001:db8::/32", "duration": 600})),
        None,
    );
    assert_eq!((s1, s2), (200, 200));
    let (_, bans) = api.get("/v1/bans");
    let subnets: Vec<&str> = bans
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["subnet"].as_str().unwrap())
        .collect();
    assert_eq!(subnets, ["203.0.113.0/24", "2001:db8::/32"]);
    let (status, _) = api.call("DELETE", "/v1/bans/203.0.113.0/24", None, None);
    assert_eq!(status, 200);
    let (status, _) = api.call("DELETE", "/v1/bans/2001:db8::%2F32", None, None);
    assert_eq!(status, 200);
    let (status, body) = api.call(
        "POST",
        "/v1/bans",
        Some(json!({"subnet": "not-an-ip"})),
        None,
    );
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not an IP address"),
        "{body}"
    );
    let (status, _) = api.call("DELETE", "/v1/bans/198.51.100.0/24", None, None);
    assert_eq!(status, 404);
}

#[test]
fn config_patch_changes_runtime_keys_and_refuses_the_rest() {
    let node = Meshd::start(&[]);
    let api = Api::of(&node);
    let (_, cfg) = api.get("/v1/config");
    assert_eq!(cfg["max-inbound"], 114);
    assert_eq!(cfg["max-block-relay-only"], 2);
    let (status, cfg) = api.call(
        "PATCH",
        "/v1/config",
        Some(json!({"max-inbound": 40, "max-block-relay-only": 1, "ping-interval": "30s", "max-upload-rate": "1M"})),
        None,
    );
    assert_eq!(status, 200, "{cfg}");
    assert_eq!(cfg["max-inbound"], 40);
    assert_eq!(cfg["ping-interval"], 30, "durations in seconds");
    assert_eq!(cfg["max-upload-rate"], 1_000_000);
    let (_, net) = api.get("/v1/network");
    assert_eq!(net["slots"]["inbound"]["max"], 40);
    let (status, body) = api.call(
        "PATCH",
        "/v1/config",
        Some(json!({"network": "mainnet"})),
        None,
    );
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("restart"),
        "{body}"
    );
    let (status, body) = api.call("PATCH", "/v1/config", Some(json!({"max-inbonud": 3})), None);
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("unknown config key"),
        "{body}"
    );
    let (status, _) = api.call(
        "PATCH",
        "/v1/config",
        Some(json!({"ping-interval": "soon"})),
        None,
    );
    assert_eq!(status, 400);
    let (status, body) = api.get("/v1/sync");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["header_height"], 0);
    assert!(body["state"].is_string(), "{body}");
}

#[test]
fn event_stream_delivers_filtered_events_as_json() {
    let node = Meshd::start(&[]);
    let api = Api::of(&node);
    let resp = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
        .get(&format!("{}/v1/events?type=PeerBanned", api.base))
        .header("Authorization", &format!("Bearer {}", api.token))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(resp.into_body().into_reader())
            .lines()
            .map_while(Result::ok)
        {
            if let Some(d) = line.strip_prefix("data:") {
                let _ = tx.send(d.trim().to_string());
            }
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    api.call(
        "POST",
        "/v1/bans",
        Some(json!({"subnet": "198.51.100.7"})),
        None,
    );
    let data = rx.recv_timeout(Duration::from_secs(10)).expect("an event");
    let v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["type"], "PeerBanned");
    assert_eq!(v["subnet"], "198.51.100.7/32");
    assert!(v["time"].as_f64().unwrap() > 1.7e9, "unix seconds: {v}");
    let (status, body) = api.get("/v1/events?type=NoSuchThing");
    assert_eq!(status, 400, "{body}");
}

#[test]
fn cli_subcommands_print_tables_json_and_clear_errors() {
    let target = Meshd::start(&["--max-outbound", "0"]);
    let node = Meshd::start(&[]);
    let t = target.addr.unwrap().to_string();
    let (code, out, err) = cli(&node, &["addnode", &t]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("kept connected"), "{out}");
    node.wait_log("handshake", Duration::from_secs(10), |v| {
        msg(v) == "handshake complete"
    });
    let (code, out, _) = cli(&node, &["peers"]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().starts_with("ID"), "{out}");
    assert!(out.contains(&t) && out.contains("/meshd:"), "{out}");
    let (_, out, _) = cli(&node, &["peers", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["connection_type"], "manual");
    assert_eq!(v[0]["transport"], "v2");
    let session = v[0]["session_id"].as_str().unwrap().to_string();
    let (_, table, _) = cli(&node, &["peers"]);
    // The 64-hex session id stays in --json: in the table it made lines 205 columns wide.
    assert!(
        table.contains("TRANSPORT") && !table.contains(&session) && table.contains("P2P_V2"),
        "{table}"
    );
    assert!(
        table.contains(" ago"),
        "last send and receive as ages: {table}"
    );
    let (code, out, _) = cli(&node, &["ban", "203.0.113.0/24", "--duration", "2h"]);
    assert_eq!(code, 0, "{out}");
    let (_, out, _) = cli(&node, &["bans"]);
    assert!(
        out.contains("203.0.113.0/24") && out.contains("manual"),
        "{out}"
    );
    let (code, _, _) = cli(&node, &["unban", "203.0.113.0/24"]);
    assert_eq!(code, 0);
    let (code, out, _) = cli(&node, &["config", "max-inbound=50"]);
    assert_eq!(code, 0);
    assert!(out.contains("max-inbound = 50"), "{out}");
    assert!(out.contains("until the node restarts"), "{out}");
    let (code, _, err) = cli(&node, &["config", "network=mainnet"]);
    assert_eq!(code, 1);
    assert!(err.contains("restart"), "{err}");
    let (_, out, _) = cli(&node, &["network"]);
    assert!(out.contains("SLOTS") && out.contains("unlimited"), "{out}");
    let (code, out, err) = cli(&node, &["generate", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("blocks"), "{out}");
    let (_, out, _) = cli(&node, &["sync", "--json"]);
    let sync: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sync["header_height"], 3, "{sync}");
    let id = v[0]["id"].as_u64().unwrap().to_string();
    let (code, _, _) = cli(&node, &["disconnect", &id]);
    assert_eq!(code, 0);

    // `events` streams until killed.
    let mut child = Command::new(meshd_bin())
        .args(["events", "--type", "PeerBanned", "--json", "--api"])
        .arg(node.api.unwrap().to_string())
        .arg("--datadir")
        .arg(&node.datadir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    cli(&node, &["ban", "198.51.100.9"]);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["subnet"], "198.51.100.9/32");
}

#[test]
fn cli_says_clearly_when_no_node_is_running() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(meshd_bin())
        .args([
            "peers",
            "--api",
            "127.0.0.1:9",
            "--api-token",
            "0123456789abcdef0123",
        ])
        .arg("--datadir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no meshd node answering"), "{err}");
    let out = Command::new(meshd_bin())
        .args(["peers"])
        .arg("--datadir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the API cookie"));
}

#[test]
fn remote_api_needs_an_explicit_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(meshd_bin())
        .args(["--no-metrics", "--api", "0.0.0.0:0", "--datadir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-allow-remote"));
}

/// The metrics are unauthenticated and list every peer's IP: off loopback only on request.
#[test]
fn remote_metrics_need_an_explicit_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(meshd_bin())
        .args(["--no-api", "--metrics", "0.0.0.0:0", "--datadir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--metrics-allow-remote"));
    let node = Meshd::start(&["--metrics", "0.0.0.0:0", "--metrics-allow-remote"]);
    assert!(node.metrics.is_some_and(|m| m.ip().is_unspecified()));
}

/// Inbound peers' series carry their IP, not their ephemeral port (one new series per
/// reconnection would grow Prometheus without bound); two from one IP are one series.
#[test]
fn per_peer_series_of_inbound_peers_carry_no_ephemeral_port() {
    use common::rawpeer::RawPeer;
    let node = Meshd::start(&[]);
    let mut a = RawPeer::connect(node.addr.unwrap());
    let mut b = RawPeer::connect(node.addr.unwrap());
    a.handshake();
    b.handshake();
    let ports = [a.local_addr().port(), b.local_addr().port()];
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let page = node.scrape();
        if page.contains("meshd_peer_bytes_received_total{peer=\"127.0.0.1\"}") {
            break page;
        }
        assert!(Instant::now() < deadline, "no inbound series: {page}");
        std::thread::sleep(Duration::from_millis(50));
    };
    for port in ports {
        assert!(!page.contains(&format!("127.0.0.1:{port}")), "{page}");
    }
    let series = page
        .lines()
        .filter(|l| l.starts_with("meshd_peer_bytes_received_total{"))
        .count();
    assert_eq!(series, 1, "{page}");
}

/// A peer's user agent reaches the terminal without its escape sequences or bidirectional
/// overrides (Core sanitises a subver before it shows it); `--json` keeps it whole, escaped.
#[test]
fn peer_user_agents_are_sanitised_in_the_cli_tables() {
    use bitcoin::p2p::message::NetworkMessage;
    use common::rawpeer::{RawPeer, Seen};
    use meshd_actors::wire::Message;
    let node = Meshd::start(&[]);
    let mut p = RawPeer::connect(node.addr.unwrap());
    let agent = "/evil:1.0/\u{1b}[2J\u{1b}]0;owned\u{7}\u{202e}txet";
    p.send(RawPeer::version(agent));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut verack = false;
    while !verack {
        assert!(std::time::Instant::now() < deadline, "no handshake");
        match p.recv(Duration::from_secs(10)) {
            Seen::Msg(Message::Network(NetworkMessage::Version(_))) => {
                p.send(NetworkMessage::Verack)
            }
            Seen::Msg(Message::Network(NetworkMessage::Verack)) => verack = true,
            Seen::Msg(_) => {}
            other => panic!("handshake failed: {other:?}"),
        }
    }
    node.wait_log("handshake", Duration::from_secs(10), |v| {
        msg(v) == "handshake complete"
    });
    let (code, out, _) = cli(&node, &["peers"]);
    assert_eq!(code, 0);
    assert!(out.contains("/evil:1.0/[2J]0;ownedtxet"), "{out:?}");
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\u{202e}'),
        "{out:?}"
    );
    let (_, json, _) = cli(&node, &["peers", "--json"]);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["user_agent"], agent);
}

/// One SSE event as read off the wire.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<String>,
    event: String,
    data: Value,
}

/// Opens `/v1/events{query}` (with `Last-Event-ID` if given) and hands its events over a
/// channel from a reader thread; the stream's end closes the channel.
fn open_events(api: &Api, query: &str, last_id: Option<&str>) -> std::sync::mpsc::Receiver<Sse> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent
        .get(&format!("{}/v1/events{query}", api.base))
        .header("Authorization", &format!("Bearer {}", api.token));
    if let Some(id) = last_id {
        req = req.header("Last-Event-ID", id);
    }
    let resp = req.call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Fields gather until the blank line that dispatches the event (the SSE rules).
        let (mut id, mut event, mut data) = (None, String::new(), None);
        for line in BufReader::new(resp.into_body().into_reader())
            .lines()
            .map_while(Result::ok)
        {
            if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                data = Some(serde_json::from_str(d.trim()).unwrap_or(Value::Null));
            } else if line.is_empty() {
                let Some(data) = data.take() else {
                    continue;
                };
                let sent = Sse {
                    id: id.take(),
                    event: std::mem::take(&mut event),
                    data,
                };
                if tx.send(sent).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The events up to and including the next `event`.
fn until(rx: &std::sync::mpsc::Receiver<Sse>, event: &str) -> Vec<Sse> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {event} event after {seen:?}"));
        let done = e.event == event;
        seen.push(e);
        if done {
            return seen;
        }
    }
}

fn next_of(rx: &std::sync::mpsc::Receiver<Sse>, event: &str) -> Sse {
    until(rx, event).pop().expect("the event")
}

#[test]
fn the_event_stream_resumes_from_last_event_id_names_fields_as_peers_does_and_ends_when_the_node_stops(
) {
    let mut node = Meshd::start(&[]);
    let api = Api::of(&node);
    let all = open_events(&api, "", None);
    let traffic = open_events(&api, "?type=MessageReceived", None);
    std::thread::sleep(Duration::from_millis(200));
    // A peer: its handshake event carries /v1/peers' names; its messages reach only the
    // stream that asked for them.
    let other = Meshd::start(&["--connect", &node.addr.unwrap().to_string()]);
    let seen = until(&all, "HandshakeComplete");
    assert!(
        seen.iter().all(|e| e.event != "MessageReceived"),
        "the unfiltered stream carries no per-message traffic: {seen:?}"
    );
    let hs = seen.last().unwrap().clone();
    let (_, peers) = api.get("/v1/peers");
    let row = &peers[0];
    for key in [
        "id",
        "address",
        "direction",
        "user_agent",
        "protocol_version",
        "services",
        "transport",
    ] {
        assert_eq!(
            hs.data[key], row[key],
            "{key}: event {} vs /v1/peers {row}",
            hs.data
        );
    }
    assert!(
        hs.data.get("peer").is_none() && hs.data.get("addr").is_none(),
        "{}",
        hs.data
    );
    assert!(
        hs.data["time"].as_f64().unwrap() > 1.7e9,
        "unix seconds: {}",
        hs.data
    );
    let m = next_of(&traffic, "MessageReceived");
    assert!(m.id.is_none(), "per-message traffic is not kept for replay");
    // Two bans seen live, two more while away; the resume gets exactly those two.
    for subnet in ["198.51.100.1", "198.51.100.2"] {
        api.call("POST", "/v1/bans", Some(json!({"subnet": subnet})), None);
    }
    let first = next_of(&all, "PeerBanned");
    let second = next_of(&all, "PeerBanned");
    assert_eq!(second.data["subnet"], "198.51.100.2/32");
    let id = second.id.clone().expect("an id on every kept event");
    let seq_of = |id: &str| -> (String, u64) {
        let (run, seq) = id.split_once('-').expect("RUN-SEQ");
        (run.to_string(), seq.parse().unwrap())
    };
    let (run, seq) = seq_of(&id);
    let (first_run, first_seq) = seq_of(first.id.as_deref().unwrap());
    assert!(
        run == first_run && first_seq < seq,
        "{first:?} then {second:?}"
    );
    drop(all);
    for subnet in ["198.51.100.3", "198.51.100.4"] {
        api.call("POST", "/v1/bans", Some(json!({"subnet": subnet})), None);
    }
    let resumed = open_events(&api, "?type=PeerBanned", Some(&id));
    assert_eq!(
        next_of(&resumed, "PeerBanned").data["subnet"],
        "198.51.100.3/32"
    );
    assert_eq!(
        next_of(&resumed, "PeerBanned").data["subnet"],
        "198.51.100.4/32"
    );
    // An id the stream never gave is refused, not taken as "from the start".
    let (status, body) = api.get("/v1/events?since=soon");
    assert_eq!(status, 400, "{body}");
    // A bare number could be another start's: refused. A number of this start not given
    // yet would replay all: refused.
    let (status, _) = api.get(&format!("/v1/events?since={seq}"));
    assert_eq!(status, 400);
    let (status, _) = api.get(&format!("/v1/events?since={run}-{}", seq + 1_000_000));
    assert_eq!(status, 400);
    // The CLI follows the stream until the node stops, and says so.
    let follower = Command::new(meshd_bin())
        .args([
            "events",
            "--api",
            &node.api.unwrap().to_string(),
            "--datadir",
        ])
        .arg(&node.datadir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    node.stop();
    let end = next_of(&resumed, "NodeStopping");
    assert!(end.id.is_some());
    assert!(
        resumed.recv_timeout(Duration::from_secs(10)).is_err(),
        "the stream ends after NodeStopping"
    );
    let out = follower.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.trim_end().ends_with("the node is stopping"),
        "{stdout}"
    );
    drop(other);
}
