//! A fleet of meshd nodes on a real `nats-server -js` on loopback.
//!
//! - Three nodes in a line publish; a consumer of the stream sees every event kind that
//!   happened, from every node, in order per node (their `Meshd-Seq` headers); generated
//!   blocks' propagation across the line is computed; heartbeats list the three nodes.
//! - NATS killed for 10 s and restarted: the node keeps working, reconnects, and every event
//!   not counted as dropped arrives, once (with a buffer small enough to drop some).
//! - Ban advisories: an operator's ban is published signed with the node's key; another
//!   node that trusts that key applies it with its origin (a loopback one is refused); an
//!   advisory that is unsigned, signed by an untrusted key, replayed on another node's
//!   subject, stale, over its origin's budget or asking too much is ignored and counted;
//!   malformed heartbeats too.
//! - NATS permissions (README's recipe): each node may publish on its own subjects only,
//!   and the fleet works under them.
//!
//! nats-server is installed by `scripts/install-test-deps.sh`; outside CI a missing one
//! skips with a notice, in CI it fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::config;
use common::nats::Nats;
use futures_util::StreamExt;
use meshd_actors::config::FleetConfig;
use meshd_actors::fleet::core::{
    bucket_name, public_key_hex, sign_advisory, stream_name, BanAdvisory, TrustedKeys,
    ADVISORY_BURST,
};
use meshd_actors::node::Node;

/// One message of the stream: subject, the node's sequence number, its JSON.
struct Record {
    subject: String,
    seq: u64,
    json: serde_json::Value,
    payload: Vec<u8>,
}

/// Every message in the fleet's stream.
async fn read_stream(url: &str, fleet: &str) -> Vec<Record> {
    let client = async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(client);
    let stream = js.get_stream(stream_name(fleet)).await.expect("stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut out = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return out;
    }
    let mut messages = consumer.messages().await.expect("messages");
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await
    {
        let pending = m.info().map(|i| i.pending).unwrap_or(0);
        let seq = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Meshd-Seq"))
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(0);
        out.push(Record {
            subject: m.subject.to_string(),
            seq,
            json: serde_json::from_slice(&m.payload).unwrap_or(serde_json::Value::Null),
            payload: m.payload.to_vec(),
        });
        if pending == 0 {
            break;
        }
    }
    out
}

fn fleet_config(url: &str, fleet: &str, node: &str) -> FleetConfig {
    let mut f = FleetConfig::new(url, fleet, node);
    f.heartbeat_interval = Duration::from_secs(1);
    f
}

async fn until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connected(node: &Node, secs: u64) {
    until("fleet connected", secs, || {
        node.fleet_status().is_some_and(|s| s.connected)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_publish_every_kind_in_order_with_propagation_and_heartbeats() {
    let Some((nats, _dir)) = Nats::start_temp() else {
        return;
    };
    let url = nats.url();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Node> = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let mut c = config(d.path());
        // A line: each dials the one before it and nothing else.
        // A line: manual peers have slots of their own, and no automatic peer adds an edge.
        c.slots.outbound = 0;
        // Transactions announced at once, not on Poisson timers (as the other relay tests).
        c.trickle = false;
        if let Some(prev) = nodes.last() {
            c.connect = vec![prev.listen_addrs()[0]];
        }
        c.fleet = Some(fleet_config(&url, "line", &format!("n{i}")));
        nodes.push(Node::start(c).await.unwrap());
    }
    for n in &nodes {
        connected(n, 15).await;
    }
    common::wait_peers(&nodes[1], "two peers", |p| p.len() >= 2).await;
    // Blocks and a transaction cross the line; a manual ban on the last node.
    nodes[0].generate(3).await.unwrap();
    common::tx_crosses_a_line(&nodes).await;
    nodes[2]
        .ban("203.0.113.0/24".parse().unwrap(), Duration::from_secs(60))
        .await
        .unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let blocks = records
            .iter()
            .filter(|r: &&Record| r.subject.ends_with(".BlockReceived"))
            .count();
        if blocks >= 9 && records.iter().any(|r| r.subject.ends_with(".PeerBanned")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stream incomplete: {} messages",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        records = read_stream(&url, "line").await;
    }
    // In order per node: sequence numbers strictly rising, the JSON's kind in the subject.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut kinds: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &records {
        let parts: Vec<&str> = r.subject.split('.').collect();
        assert_eq!(parts.len(), 5, "{}", r.subject);
        assert_eq!((parts[0], parts[1], parts[3]), ("meshd", "line", "regtest"));
        let node = parts[2].to_string();
        let prev = last.insert(node.clone(), r.seq).unwrap_or(0);
        assert!(r.seq > prev, "{node}: seq {} after {prev}", r.seq);
        assert_eq!(r.json["type"], parts[4], "{}", r.json);
        kinds.entry(node).or_default().insert(parts[4].to_string());
    }
    for (node, expected) in [
        (
            "n0",
            &[
                "ConnectionEstablished",
                "HandshakeComplete",
                "HeadersSynced",
                "BlockReceived",
                "TxReceived",
            ][..],
        ),
        (
            "n1",
            &[
                "ConnectionEstablished",
                "HandshakeComplete",
                "HeadersSynced",
                "BlockReceived",
                "TxReceived",
            ][..],
        ),
        (
            "n2",
            &[
                "ConnectionEstablished",
                "HandshakeComplete",
                "HeadersSynced",
                "BlockReceived",
                "TxReceived",
                "PeerBanned",
            ][..],
        ),
    ] {
        for k in expected {
            assert!(
                kinds[node].contains(*k),
                "{node} lacks {k}: {:?}",
                kinds[node]
            );
        }
    }
    // Generated on n0, received by n1 from n0 and by n2 from n1.
    let from_of = |node: &str| {
        records
            .iter()
            .find(|r| {
                r.subject.contains(&format!(".{node}.")) && r.subject.ends_with(".BlockReceived")
            })
            .map(|r| r.json["from"].clone())
            .unwrap()
    };
    assert!(from_of("n0").is_null());
    assert_eq!(from_of("n1"), nodes[0].listen_addrs()[0].to_string());

    let p = nodes[2].fleet_propagation(10).await.unwrap();
    assert_eq!(p.len(), 3, "{p:?}");
    for b in &p {
        assert_eq!((b.nodes, b.first_node.as_str()), (3, "n0"), "{b:?}");
        assert!(b.first_ms <= b.first_ms + b.p50_ms && b.p50_ms <= b.p90_ms);
        assert_eq!(b.last_ms - b.first_ms, b.p90_ms);
    }
    // Heartbeats: all three, current.
    until("three heartbeats at height 3", 15, || {
        let nodes_seen = futures_lite(nodes[0].fleet_nodes());
        nodes_seen
            .is_ok_and(|v| v.len() == 3 && v.iter().all(|(hb, stale)| !stale && hb.tip_height == 3))
    })
    .await;
    let status = nodes[1].fleet_status().unwrap();
    assert_eq!(status.dropped, 0);
    assert!(status.published > 0);
    for n in nodes {
        n.shutdown().await;
    }
}

/// Runs an async query from a sync predicate.
fn futures_lite<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_for_ten_seconds_loses_nothing_but_what_is_counted() {
    let Some((mut nats, _dir)) = Nats::start_temp() else {
        return;
    };
    let url = nats.url();
    let nd = tempfile::tempdir().unwrap();
    let mut c = config(nd.path());
    let mut f = fleet_config(&url, "outage", "solo");
    f.buffer = 40;
    c.fleet = Some(f);
    let node = Node::start(c).await.unwrap();
    connected(&node, 15).await;
    node.generate(5).await.unwrap();
    until("first events acknowledged", 10, || {
        node.fleet_status().is_some_and(|s| s.published >= 5)
    })
    .await;

    nats.stop();
    until("disconnect seen", 10, || {
        node.fleet_status().is_some_and(|s| !s.connected)
    })
    .await;
    // The node keeps working without NATS: 60 blocks (120 events) into a 40-event buffer.
    let down = Instant::now();
    for _ in 0..6 {
        node.generate(10).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(node.sync_status().header_height, 65);
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
    nats.restart();
    connected(&node, 30).await;
    let status = loop {
        let s = node.fleet_status().unwrap();
        let records = read_stream(&url, "outage").await;
        if records.len() as u64 == s.published && s.published + s.dropped == s.sequence {
            break (s, records);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            down.elapsed() < Duration::from_secs(60),
            "never caught up: {s:?}"
        );
    };
    let (s, records) = status;
    assert!(
        s.dropped > 0,
        "the buffer of 40 should have overflowed: {s:?}"
    );
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "an event arrived twice");
    // Every event numbered either arrived or was counted as dropped.
    assert!(unique.iter().all(|q| (1..=s.sequence).contains(q)));
    assert_eq!(unique.len() as u64 + s.dropped, s.sequence, "{s:?}");
    // In order.
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    node.shutdown().await;
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An advisory body from `origin`.
fn advisory(origin: &str, subnet: &str, until: u64) -> BanAdvisory {
    BanAdvisory {
        action: meshd_actors::fleet::core::AdvisoryAction::Ban,
        subnet: subnet.into(),
        reason: "banned by the operator".into(),
        score: 100,
        until,
        origin: origin.into(),
        issued: unix_now(),
    }
}

/// The body of a signed advisory record in the stream.
fn body_of(r: &Record) -> serde_json::Value {
    serde_json::from_str(r.json["body"].as_str().expect("a signed envelope")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_advisories_cross_expire_and_bad_ones_are_counted() {
    let Some((nats, _dir)) = Nats::start_temp() else {
        return;
    };
    let url = nats.url();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // a's key, as `meshd fleet key` makes it before the node starts; x is a node of the
    // fleet played by the test.
    let key_a = meshd_actors::fleet::key::load_or_create(da.path()).unwrap();
    let key_x = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let key_rogue = ed25519_dalek::SigningKey::from_bytes(&[66; 32]);
    let mut ca = config(da.path());
    ca.ban_local_peers = true;
    ca.fleet = Some(fleet_config(&url, "bans", "a"));
    let a = Node::start(ca).await.unwrap();
    let mut cb = config(db.path());
    cb.whitelist =
        vec![meshd_actors::shared::whitelist::WhitelistEntry::parse("198.51.100.0/24").unwrap()];
    let mut fb = fleet_config(&url, "bans", "b");
    fb.apply_bans = true;
    fb.trusted_keys = TrustedKeys::parse(&format!(
        "{} a\n{} x\n",
        public_key_hex(&key_a.verifying_key()),
        public_key_hex(&key_x.verifying_key())
    ))
    .unwrap();
    cb.fleet = Some(fb);
    let b = Node::start(cb).await.unwrap();
    connected(&a, 15).await;
    connected(&b, 15).await;
    assert_eq!(
        a.fleet_status().unwrap().key,
        Some(public_key_hex(&key_a.verifying_key())),
        "a signs with the key in its data dir"
    );
    // b's advisory subscription is in place once it counts a malformed probe.
    let probe = async_nats::connect(&url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while b.fleet_status().unwrap().rejected == 0 {
        assert!(Instant::now() < deadline, "b never listened to advisories");
        probe
            .publish("meshd.bans.probe.regtest.BanAdvisory", "{}".into())
            .await
            .unwrap();
        probe.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // probes in flight arrive
    let probes = b.fleet_status().unwrap().rejected;

    // An automatic verdict is not advised: a misbehaving peer (an oversized header, 100
    // points) is disconnected and discouraged on a, and nothing of it reaches the stream.
    let mut peer = common::handshaked(a.listen_addrs()[0]).await;
    let mut frame = NetworkIdMagic::regtest().to_vec();
    frame.extend_from_slice(b"ping\0\0\0\0\0\0\0\0");
    frame.extend_from_slice(&u32::MAX.to_le_bytes());
    frame.extend_from_slice(&[0; 4]);
    peer.send_raw(&frame).await;
    assert!(peer.closed_within(Duration::from_secs(10)).await);
    assert!(
        futures_lite(a.bans()).is_empty(),
        "a discouragement is not a ban"
    );
    // A's operator bans a loopback address: published, signed; b verifies it and refuses
    // it (loopback), counting it.
    a.ban("127.0.0.1/32".parse().unwrap(), Duration::from_secs(600))
        .await
        .expect("banned");
    until("b refused a's loopback advisory", 10, || {
        b.fleet_status().is_some_and(|s| s.rejected > probes)
    })
    .await;
    assert!(futures_lite(b.bans()).is_empty());
    // A's operator bans a public address: b applies it, with a as its origin.
    a.ban("203.0.113.77/32".parse().unwrap(), Duration::from_secs(600))
        .await
        .expect("banned");
    until("b applied a's signed advisory", 10, || {
        futures_lite(b.bans())
            .iter()
            .any(|e| e.subnet.to_string() == "203.0.113.77/32")
    })
    .await;
    let bans = b.bans().await;
    assert_eq!(bans[0].reason.origin(), Some("a"));
    // b's operator bans an address that a's operator bans too, for longer: b's ban stays
    // its own (a longer fleet ban used to take it over, and a's unban then lifted it).
    let ten_minutes = Duration::from_secs(600);
    b.ban("203.0.113.78/32".parse().unwrap(), ten_minutes)
        .await
        .expect("banned");
    a.ban(
        "203.0.113.78/32".parse().unwrap(),
        Duration::from_secs(3600),
    )
    .await
    .expect("banned");
    // a's operator lifts its ban of .77: b lifts the ban it applied from a's advisory.
    assert!(a.unban("203.0.113.77/32".parse().unwrap()).await);
    until("b lifted a's ban on a's unban advisory", 10, || {
        !futures_lite(b.bans())
            .iter()
            .any(|e| e.subnet.to_string() == "203.0.113.77/32")
    })
    .await;
    // a lifts .78 too, then bans .79 (a marker: advisories on one subject arrive in
    // order): b's own ban of .78 outlives a's unban.
    assert!(a.unban("203.0.113.78/32".parse().unwrap()).await);
    a.ban("203.0.113.79/32".parse().unwrap(), ten_minutes)
        .await
        .expect("banned");
    until("b applied a's marker ban", 10, || {
        futures_lite(b.bans())
            .iter()
            .any(|e| e.subnet.to_string() == "203.0.113.79/32")
    })
    .await;
    let kept = b.bans().await;
    let own = kept
        .iter()
        .find(|e| e.subnet.to_string() == "203.0.113.78/32")
        .expect("b's own ban is not lifted by a's advisory");
    assert_eq!(own.reason.label(), "manual");
    // A replayed copy of a's unban of .77, after a re-ban, is refused as superseded (its
    // issue time is older than the re-ban's).
    let records = read_stream(&url, "bans").await;
    let from_a: Vec<_> = records
        .iter()
        .filter(|r| r.subject == "meshd.bans.a.regtest.BanAdvisory")
        .collect();
    let asked: Vec<(String, String)> = from_a
        .iter()
        .map(|r| {
            let body = body_of(r);
            // Bans carry no action (format 1, read by every node), unbans do.
            (
                body["action"].as_str().unwrap_or("ban").to_string(),
                body["subnet"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let pair = |a: &str, s: &str| (a.to_string(), s.to_string());
    assert_eq!(
        asked,
        [
            pair("ban", "127.0.0.1/32"),
            pair("ban", "203.0.113.77/32"),
            pair("ban", "203.0.113.78/32"),
            pair("unban", "203.0.113.77/32"),
            pair("unban", "203.0.113.78/32"),
            pair("ban", "203.0.113.79/32"),
        ],
        "the operator's bans and unbans only"
    );
    assert_eq!(body_of(from_a[0])["origin"], "a");
    assert_eq!(
        from_a[0].json["key"],
        public_key_hex(&key_a.verifying_key())
    );
    let rejected_before = b.fleet_status().unwrap().rejected;
    // Issue times are in seconds: the re-ban is a second newer than the unban.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.ban("203.0.113.77/32".parse().unwrap(), ten_minutes)
        .await
        .expect("banned");
    until("b applied a's re-ban", 10, || {
        futures_lite(b.bans())
            .iter()
            .any(|e| e.subnet.to_string() == "203.0.113.77/32")
    })
    .await;
    let replay = async_nats::connect(&url).await.unwrap();
    replay
        .publish(
            "meshd.bans.a.regtest.BanAdvisory",
            from_a[3].payload.clone().into(),
        )
        .await
        .unwrap();
    replay.flush().await.unwrap();
    until("the replayed unban refused", 10, || {
        b.fleet_status().unwrap().rejected > rejected_before
    })
    .await;
    assert!(futures_lite(b.bans())
        .iter()
        .any(|e| e.subnet.to_string() == "203.0.113.77/32"));
    // b's operator clears its list (its own unban of .78 is advised; the lifting of fleet
    // bans is not).
    for subnet in ["203.0.113.77/32", "203.0.113.78/32", "203.0.113.79/32"] {
        assert!(b.unban(subnet.parse().unwrap()).await);
    }

    // Node x's advisories, as published by the test.
    let client = async_nats::connect(&url).await.unwrap();
    let now = unix_now();
    let publish = |node: &str, payload: Vec<u8>| {
        let client = client.clone();
        let subject = format!("meshd.bans.{node}.regtest.BanAdvisory");
        async move {
            client.publish(subject, payload.into()).await.unwrap();
            client.flush().await.unwrap();
        }
    };
    let subject_of = |node: &str| format!("meshd.bans.{node}.regtest.BanAdvisory");
    let signed = |adv: &BanAdvisory, on: &str, key: &ed25519_dalek::SigningKey| {
        sign_advisory(adv, &subject_of(on), key)
    };
    let rejected_before = b.fleet_status().unwrap().rejected;
    let mut bad = 0;
    // Unsigned (meshd's format before signing): what any client could publish.
    publish(
        "x",
        serde_json::to_vec(&advisory("x", "203.0.113.10/32", now + 60)).unwrap(),
    )
    .await;
    bad += 1;
    // Signed by a key b does not trust.
    publish(
        "x",
        signed(&advisory("x", "203.0.113.11/32", now + 60), "x", &key_rogue),
    )
    .await;
    bad += 1;
    // x's own advisory, replayed on a's subject (the signature covers the subject).
    publish(
        "a",
        signed(&advisory("x", "203.0.113.12/32", now + 60), "x", &key_x),
    )
    .await;
    bad += 1;
    // x's key speaking as a.
    publish(
        "a",
        signed(&advisory("a", "203.0.113.13/32", now + 60), "a", &key_x),
    )
    .await;
    bad += 1;
    // Stale: issued 11 minutes ago, however long its ban.
    let mut old = advisory("x", "203.0.113.14/32", now + 3600);
    old.issued = now - 660;
    publish("x", signed(&old, "x", &key_x)).await;
    bad += 1;
    // Signed and trusted but asking too much: whitelisted on b, private, a range.
    for subnet in ["198.51.100.7/32", "10.0.0.0/8", "128.0.0.0/1"] {
        publish("x", signed(&advisory("x", subnet, now + 60), "x", &key_x)).await;
        bad += 1;
    }
    publish(
        "x",
        signed(&advisory("x", "203.0.113.9/32", now + 3), "x", &key_x),
    )
    .await;
    until("the advisory applied", 10, || {
        futures_lite(b.bans())
            .iter()
            .any(|e| e.subnet.to_string() == "203.0.113.9/32")
    })
    .await;
    let bans = b.bans().await;
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].reason.origin(), Some("x"));
    assert_eq!(bans[0].reason.label(), "fleet");
    assert_eq!(b.fleet_status().unwrap().rejected, rejected_before + bad);
    // The ban expires with the advisory.
    until("the ban expired", 10, || futures_lite(b.bans()).is_empty()).await;
    // x's budget: a burst is applied, the rest refused (a compromised node cannot ban
    // thousands).
    let rejected_before = b.fleet_status().unwrap().rejected;
    let extra = 5u32;
    // x spent four of its burst above: three advisories asking too much, and one applied.
    let spent = 4u32;
    for i in 0..ADVISORY_BURST - spent + extra {
        let subnet = format!("203.0.113.{}/32", 100 + i);
        publish("x", signed(&advisory("x", &subnet, now + 60), "x", &key_x)).await;
    }
    until("the burst applied and the rest refused", 10, || {
        b.fleet_status().unwrap().rejected == rejected_before + u64::from(extra)
    })
    .await;
    assert_eq!(b.bans().await.len(), (ADVISORY_BURST - spent) as usize);
    // A malformed heartbeat in the bucket is skipped and counted.
    let rejected_before = b.fleet_status().unwrap().rejected;
    let js = jetstream::new(client.clone());
    js.publish(
        format!("$KV.{}.garbage", bucket_name("bans")),
        b"not a heartbeat".to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    until("both real heartbeats", 10, || {
        futures_lite(b.fleet_nodes()).is_ok_and(|v| v.len() == 2)
    })
    .await;
    assert!(b.fleet_status().unwrap().rejected > rejected_before);
    // A fleet ban, or its lifting, is not advertised again (no echo from b): b advised its
    // operator's own ban and unban only.
    let records = read_stream(&url, "bans").await;
    let from_b: Vec<_> = records
        .iter()
        .filter(|r| r.subject == "meshd.bans.b.regtest.BanAdvisory")
        .map(|r| {
            let body = body_of(r);
            (
                body["action"].as_str().unwrap_or("ban").to_string(),
                body["subnet"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        from_b,
        [
            pair("ban", "203.0.113.78/32"),
            pair("unban", "203.0.113.78/32")
        ]
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// README's NATS recipe: each node's user may publish on its own subjects (and JetStream's
/// API) only. The fleet works under it (events, heartbeats, a signed advisory applied), and a
/// node's user cannot publish on another node's subject: the server drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_permissions_keep_each_node_to_its_own_subjects() {
    let Some(bin) = common::nats::nats_path() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let user = |name: &str| {
        format!(
            r#"{{ user: "{name}", password: "pw-{name}", permissions: {{
                publish: ["meshd.perm.{name}.>", "$KV.meshd_perm_nodes.{name}", "$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "_INBOX.>"],
                subscribe: ["meshd.perm.>", "$KV.meshd_perm_nodes.>", "_INBOX.>"]
            }} }}"#
        )
    };
    let conf = format!(
        "authorization {{ users = [ {}, {}, {{ user: \"admin\", password: \"pw-admin\" }} ] }}\n",
        user("a"),
        user("b")
    );
    let nats = Nats::start_with(&bin, dir.path(), Some(&conf));
    let url = nats.url();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key_a = meshd_actors::fleet::key::load_or_create(da.path()).unwrap();
    let fleet_of = |node: &str| {
        let mut f = fleet_config(&url, "perm", node);
        f.user_password = Some((node.to_string(), format!("pw-{node}")));
        f
    };
    let mut ca = config(da.path());
    ca.fleet = Some(fleet_of("a"));
    let a = Node::start(ca).await.unwrap();
    let mut cb = config(db.path());
    let mut fb = fleet_of("b");
    fb.apply_bans = true;
    fb.trusted_keys =
        TrustedKeys::parse(&format!("{} a\n", public_key_hex(&key_a.verifying_key()))).unwrap();
    cb.fleet = Some(fb);
    let b = Node::start(cb).await.unwrap();
    connected(&a, 15).await;
    connected(&b, 15).await;
    until("both heartbeats, under the permissions", 15, || {
        futures_lite(b.fleet_nodes()).is_ok_and(|v| v.len() == 2)
    })
    .await;
    // A's signed advisory reaches b through the permitted subjects and is applied.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0u8;
    while !futures_lite(b.bans())
        .iter()
        .any(|e| e.reason.origin() == Some("a"))
    {
        assert!(Instant::now() < deadline, "a's advisory never applied on b");
        // Until b's subscription is live: each try is a new address.
        n += 1;
        a.ban(
            format!("203.0.113.{n}/32").parse().unwrap(),
            Duration::from_secs(600),
        )
        .await
        .expect("banned");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // b's user publishing on a's subject: dropped by the server. On its own: delivered.
    let admin =
        async_nats::ConnectOptions::with_user_and_password("admin".into(), "pw-admin".into())
            .connect(&url)
            .await
            .unwrap();
    let mut watch = admin.subscribe("meshd.perm.>").await.unwrap();
    admin.flush().await.unwrap();
    let as_b = async_nats::ConnectOptions::with_user_and_password("b".into(), "pw-b".into())
        .connect(&url)
        .await
        .unwrap();
    as_b.publish("meshd.perm.a.regtest.BanAdvisory", "forged".into())
        .await
        .unwrap();
    as_b.publish("meshd.perm.b.regtest.Probe", "own".into())
        .await
        .unwrap();
    as_b.flush().await.unwrap();
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(3);
    while let Ok(Some(m)) = tokio::time::timeout_at(end.into(), watch.next()).await {
        if m.payload.as_ref() == b"forged" || m.payload.as_ref() == b"own" {
            seen.push(m.subject.to_string());
        }
        if seen.iter().any(|s| s.ends_with("Probe")) {
            break;
        }
    }
    assert_eq!(
        seen,
        vec!["meshd.perm.b.regtest.Probe".to_string()],
        "b's user published on a's subject"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// The regtest magic, for a raw frame.
struct NetworkIdMagic;

impl NetworkIdMagic {
    fn regtest() -> [u8; 4] {
        meshd_actors::network::NetworkId::Regtest
            .profile()
            .magic
            .to_bytes()
    }
}
