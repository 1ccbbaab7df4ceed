//! Block propagation lab (issue #27): one block of 2,000 transactions, already in every
//! node's pool, crossing a mesh of 10 nodes whose every link goes through a delaying relay
//! (25 ms each way, so a 50 ms round trip, and 20 Mbit/s each way). It measures the time from
//! the first node holding the block to the last, and the bytes the block cost on the mesh's
//! links, for meshd with BIP152 compact blocks, meshd with them off (blocks whole), and bcoin
//! (an independent implementation with BIP152) in the same mesh, in its default
//! low-bandwidth mode.
//!
//! The mesh: node i dials nodes i+1 and i+4 (mod 10) through their own relays, so each node
//! has four links and the block is at most two hops from node 0. The block enters at node 0:
//! for meshd from a lab peer dialling it directly (a `headers` announcement, then the block on
//! request); for bcoin mined there. meshd nodes whitelist each other with `relay`, as the
//! README says a fleet of meshd nodes should (a block delivered by a relay-whitelisted peer is
//! vouched for, so announced on at once). Three warm-up blocks let each node choose its
//! high-bandwidth peers (BIP152: the ones that last gave it a new block).
//!
//! Usage: `cargo run --release --example propagation_lab [-- --runs N] [--no-bcoin] [--no-whole]`
//! To profile the measured block only: `mkfifo /tmp/ctl`, run the built example under
//! `perf record -g --control fifo:/tmp/ctl -D -1` with `PROPAGATION_LAB_PERF_CTL=/tmp/ctl`.
//! (bcoin from `.peers/bcoin`, installed by scripts/install-test-deps.sh).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bitcoin::block::Header;
use bitcoin::consensus::encode::{deserialize, deserialize_hex, serialize_hex};
use bitcoin::hashes::Hash;
use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::{NetworkMessage, RawNetworkMessage};
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::ServiceFlags;
use bitcoin::{Amount, Block, OutPoint, ScriptBuf, Transaction, Txid};
use meshd_actors::config::NodeConfig;
use meshd_actors::events::{EventKind, NodeEvent};
use meshd_actors::network::NetworkId;
use meshd_actors::node::Node;
use meshd_actors::shared::peers::PeerState;
use meshd_actors::shared::whitelist::WhitelistEntry;
use meshd_actors::sync::chain::headers::mine_header;
use meshd_actors::sync::mine::regtest_block;
use meshd_actors::wire::Message;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[path = "common/op_true.rs"]
mod op_true;
use op_true::bcoin_op_true_address;

/// Nodes in the mesh.
const NODES: usize = 10;
/// Each node dials these offsets (mod NODES).
const DIALS: [usize; 2] = [1, 4];
/// One-way delay of every link (a 50 ms round trip).
const ONE_WAY: Duration = Duration::from_millis(25);
/// Each link's rate, each way, bits per second.
const RATE_BPS: f64 = 20e6;
/// Transactions in the measured block.
const BLOCK_TXS: usize = 2_000;
/// Bytes of OP_RETURN data per transaction, so each is about 230 bytes (a typical payment's
/// size) and the block about 460 kB.
const PAD: usize = 140;

/// Counts the bytes crossing every link of a mesh.
#[derive(Default)]
struct Wire(AtomicU64);

/// The lab's own runtime, on a thread of its own: the links (relays) and the arrival
/// watchers. Sharing the nodes' two workers, a relay's wake-up waited behind whatever node
/// step was running (a few ms each), which a real link never does; its delays then read as
/// the nodes' processing.
fn lab_runtime() -> &'static tokio::runtime::Handle {
    static LAB: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
    LAB.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("lab-links".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("lab runtime");
                tx.send(rt.handle().clone()).expect("handle");
                rt.block_on(std::future::pending::<()>());
            })
            .expect("lab thread");
        rx.recv().expect("lab runtime handle")
    })
}

/// A delaying relay in front of `target`: each direction's bytes leave after the link's
/// serialisation time at `RATE_BPS` plus `ONE_WAY`, in order. Returns its address. It runs on
/// [`lab_runtime`].
async fn relay(target: SocketAddr, wire: Arc<Wire>) -> SocketAddr {
    lab_runtime()
        .spawn(relay_on_lab(target, wire))
        .await
        .expect("relay starts")
}

async fn relay_on_lab(target: SocketAddr, wire: Arc<Wire>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = listener.local_addr().expect("relay address");
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(target).await else {
                continue;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            tokio::spawn(pipe(ir, ow, wire.clone()));
            tokio::spawn(pipe(or, iw, wire.clone()));
        }
    });
    addr
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    wire: Arc<Wire>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(4096);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut free_at = Instant::now();
    while let Some((read_at, chunk)) = rx.recv().await {
        let serialise = Duration::from_secs_f64(chunk.len() as f64 * 8.0 / RATE_BPS);
        free_at = free_at.max(read_at) + serialise;
        tokio::time::sleep_until((free_at + ONE_WAY).into()).await;
        if to.write_all(&chunk).await.is_err() {
            break;
        }
        wire.0.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
}

/// Link list: (dialler, listener).
fn links() -> Vec<(usize, usize)> {
    (0..NODES)
        .flat_map(|i| DIALS.iter().map(move |d| (i, (i + d) % NODES)))
        .collect()
}

/// The most hops from node 0 to any node.
fn hops_from_origin() -> usize {
    let mut dist = [usize::MAX; NODES];
    dist[0] = 0;
    let mut frontier = vec![0];
    while let Some(n) = frontier.pop() {
        for (a, b) in links() {
            for (x, y) in [(a, b), (b, a)] {
                if x == n && dist[y] > dist[n] + 1 {
                    dist[y] = dist[n] + 1;
                    frontier.push(y);
                }
            }
        }
    }
    dist.into_iter().max().unwrap_or(0)
}

/// A made-up payment of about 230 bytes: one input (`n` names its prevout), a payment output
/// and an OP_RETURN of `PAD` bytes. meshd checks transactions without their inputs' coins,
/// so the prevout need not exist.
fn made_up_tx(n: u32) -> Transaction {
    let mut prev = [0x5a; 32];
    prev[..4].copy_from_slice(&n.to_le_bytes());
    spend_to_op_true(
        OutPoint::new(Txid::from_byte_array(prev), 0),
        Amount::from_sat(100_000),
        ScriptBuf::new(),
        n,
    )
}

fn spend_to_op_true(prev: OutPoint, value: Amount, script_sig: ScriptBuf, n: u32) -> Transaction {
    op_true::padded_spend(prev, value, script_sig, n, PAD)
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

/// A regtest block on `parent` with `txs` after the coinbase, mined.
fn block_with(parent: &Header, height: u32, txs: &[Transaction]) -> Block {
    let mut block = regtest_block(parent, height, unix_now() - 600 + height, 7);
    block.txdata.extend(txs.iter().cloned());
    let merkle = block.compute_merkle_root().expect("not empty");
    block.header = mine_header(parent, merkle, block.header.time, parent.bits);
    block
}

fn encode(m: NetworkMessage) -> Vec<u8> {
    Message::Network(m).encode(NetworkId::Regtest.profile().magic)
}

/// The lab's block source: a v1 peer dialling node 0 that announces blocks by `headers` and
/// serves them whole on request.
struct Origin {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Origin {
    async fn dial(addr: SocketAddr) -> Origin {
        let mut stream = TcpStream::connect(addr).await.expect("dial node 0");
        stream.set_nodelay(true).ok();
        let a = Address::new(&"127.0.0.1:1".parse().expect("address"), ServiceFlags::NONE);
        let mut v = VersionMessage::new(
            ServiceFlags::NETWORK | ServiceFlags::WITNESS,
            0,
            a.clone(),
            a,
            rand::random(),
            "/propagation-lab:0.1/".into(),
            0,
        );
        v.version = 70016;
        stream
            .write_all(&encode(NetworkMessage::Version(v)))
            .await
            .expect("send");
        stream
            .write_all(&encode(NetworkMessage::Verack))
            .await
            .expect("send");
        Origin {
            stream,
            buf: Vec::new(),
        }
    }

    async fn recv(&mut self) -> NetworkMessage {
        loop {
            if self.buf.len() >= 24 {
                let len =
                    u32::from_le_bytes([self.buf[16], self.buf[17], self.buf[18], self.buf[19]])
                        as usize;
                if self.buf.len() >= 24 + len {
                    let frame: Vec<u8> = self.buf.drain(..24 + len).collect();
                    match deserialize::<RawNetworkMessage>(&frame) {
                        Ok(m) => return m.payload().clone(),
                        Err(_) => continue,
                    }
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).await.expect("node 0 is up");
            assert!(n > 0, "node 0 closed the lab peer");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Announces `block` and serves it when asked (as a whole block, whatever form asked).
    async fn deliver(&mut self, block: &Block) {
        let hash = block.block_hash();
        self.stream
            .write_all(&encode(NetworkMessage::Headers(vec![block.header])))
            .await
            .expect("send");
        loop {
            match self.recv().await {
                NetworkMessage::GetData(items)
                    if items.iter().any(|i| match i {
                        Inventory::Block(h)
                        | Inventory::WitnessBlock(h)
                        | Inventory::CompactBlock(h) => *h == hash,
                        _ => false,
                    }) =>
                {
                    self.stream
                        .write_all(&encode(NetworkMessage::Block(block.clone())))
                        .await
                        .expect("send");
                    return;
                }
                NetworkMessage::Ping(n) => {
                    self.stream
                        .write_all(&encode(NetworkMessage::Pong(n)))
                        .await
                        .expect("send");
                }
                _ => {}
            }
        }
    }
}

/// Switches a `perf record --control fifo:CTL -D -1` on or off around the measured block,
/// when `PROPAGATION_LAB_PERF_CTL` names its control fifo: the profile then holds the
/// block's propagation only, not the setup's submissions.
fn profiler(command: &str) {
    if let Some(path) = std::env::var_os("PROPAGATION_LAB_PERF_CTL") {
        if let Err(e) = std::fs::write(&path, format!("{command}\n")) {
            eprintln!("perf control {}: {e}", PathBuf::from(path).display());
        }
    }
}

/// One measured block: first-to-last time, bytes on the mesh's links, and how it arrived.
struct Outcome {
    spread: Duration,
    bytes: u64,
    how: String,
}

async fn wait_quiet(wire: &Wire, settle: Duration, limit: Duration) {
    let start = Instant::now();
    let mut last = wire.0.load(Ordering::Relaxed);
    let mut since = Instant::now();
    while start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = wire.0.load(Ordering::Relaxed);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= settle {
            return;
        }
    }
}

async fn meshd_round(compact: bool, txs: &[Transaction]) -> Outcome {
    let dirs: Vec<_> = (0..NODES)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut nodes = Vec::new();
    for dir in &dirs {
        let mut c = NodeConfig::new(NetworkId::Regtest, dir.path().to_path_buf());
        c.listen = vec!["127.0.0.1:0".parse().expect("address")];
        // Only the lab's links: no gossiped, block-relay-only or feeler connections.
        c.slots.outbound = 0;
        c.slots.block_relay = 0;
        c.feeler_interval = None;
        c.compact_blocks = compact;
        c.whitelist = vec![WhitelistEntry::parse("relay@127.0.0.1/32").expect("whitelist")];
        nodes.push(Node::start(c).await.expect("node starts"));
    }
    let wire = Arc::new(Wire::default());
    for (i, j) in links() {
        let via = relay(nodes[j].listen_addrs()[0], wire.clone()).await;
        nodes[i].connect(via, true).await;
    }
    let degree = DIALS.len() * 2;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !nodes.iter().all(|n| {
        n.peers()
            .iter()
            .filter(|p| p.state == PeerState::Connected)
            .count()
            >= degree
    }) {
        assert!(Instant::now() < deadline, "the mesh did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut origin = Origin::dial(nodes[0].listen_addrs()[0]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut parent = nodes[0].profile().genesis;
    let mut height = 1;
    // Warm-up blocks, so nodes pick high-bandwidth peers, then the measured one.
    for _ in 0..3 {
        let block = block_with(&parent, height, &[]);
        let received = watch(&nodes, block.block_hash());
        origin.deliver(&block).await;
        received.await;
        parent = block.header;
        height += 1;
    }
    // Every node is handed the block's transactions (they also relay them to each other);
    // each counts its own until it holds them all.
    let mut pooled: Vec<_> = nodes
        .iter()
        .map(|n| n.subscribe_to(&[EventKind::TxReceived]))
        .collect();
    for node in &nodes {
        for tx in txs {
            node.submit_tx(tx.clone());
        }
    }
    for events in &mut pooled {
        let mut n = 0;
        while n < txs.len() {
            match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
                Ok(Ok(_)) => n += 1,
                _ => panic!("a node pooled only {n} of the block's transactions"),
            }
        }
    }
    drop(pooled);
    // Announcements of the transactions trickle out for a while (Poisson, 2 s and 5 s).
    wait_quiet(&wire, Duration::from_secs(6), Duration::from_secs(120)).await;

    let block = block_with(&parent, height, txs);
    let before = wire.0.load(Ordering::Relaxed);
    let received = watch(&nodes, block.block_hash());
    profiler("enable");
    origin.deliver(&block).await;
    let (spread, how) = received.await;
    profiler("disable");
    wait_quiet(&wire, Duration::from_secs(1), Duration::from_secs(10)).await;
    let bytes = wire.0.load(Ordering::Relaxed) - before;
    for node in nodes {
        node.shutdown().await;
    }
    Outcome { spread, bytes, how }
}

/// Resolves when every node has `hash`: the time from the first to the last, and how each
/// got it (`via` counts).
fn watch(
    nodes: &[Node],
    hash: bitcoin::BlockHash,
) -> impl std::future::Future<Output = (Duration, String)> {
    let streams: Vec<_> = nodes
        .iter()
        .map(|n| n.subscribe_to(&[EventKind::BlockReceived]))
        .collect();
    let want = hash.to_string();
    async move {
        let mut tasks = Vec::new();
        for mut s in streams {
            let want = want.clone();
            // On the lab's runtime: the time of arrival is not held up by the nodes' work.
            tasks.push(lab_runtime().spawn(async move {
                loop {
                    let e = tokio::time::timeout(Duration::from_secs(60), s.recv())
                        .await
                        .expect("the block reached every node")
                        .expect("event stream");
                    if let NodeEvent::BlockReceived { hash, via, .. } = &e.event {
                        if *hash == want {
                            return (Instant::now(), via.name());
                        }
                    }
                }
            }));
        }
        let mut at = Vec::new();
        for t in tasks {
            at.push(t.await.expect("watcher"));
        }
        let first = at.iter().map(|a| a.0).min().expect("nodes");
        let last = at.iter().map(|a| a.0).max().expect("nodes");
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for (_, via) in &at {
            match counts.iter_mut().find(|(v, _)| v == via) {
                Some((_, n)) => *n += 1,
                None => counts.push((via, 1)),
            }
        }
        let mut delays: Vec<u128> = at.iter().map(|a| (a.0 - first).as_millis()).collect();
        delays.sort_unstable();
        let how = format!(
            "{}; ms after the first: {}",
            counts
                .iter()
                .map(|(v, n)| format!("{v}:{n}"))
                .collect::<Vec<_>>()
                .join(" "),
            delays
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        (last - first, how)
    }
}

/// A bcoin node of the lab.
struct Bcoin {
    child: Child,
    http: u16,
    p2p: u16,
    dir: Option<tempfile::TempDir>,
}

impl Drop for Bcoin {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Bcoin {
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            // Stopped already (its pid may be another process's by now).
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bcoin_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/.peers/bcoin/node_modules/bcoin"
    ));
    dir.join("package.json").exists().then_some(dir)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Bcoin {
    fn start(p2p: u16, extra: &[String]) -> Bcoin {
        Bcoin::start_in(
            tempfile::tempdir().expect("tempdir"),
            p2p,
            free_port(),
            extra,
        )
    }

    /// Stops the node and starts it again on its data and ports with `extra` options.
    fn restart(mut self, extra: &[String]) -> Bcoin {
        self.stop();
        let dir = self.dir.take().expect("a data directory");
        Bcoin::start_in(dir, self.p2p, self.http, extra)
    }

    fn start_in(dir: tempfile::TempDir, p2p: u16, http: u16, extra: &[String]) -> Bcoin {
        let child = Command::new("node")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/peers/bcoin_node.js"
            ))
            .arg("--network=regtest")
            .arg(format!("--prefix={}", dir.path().display()))
            .arg("--host=127.0.0.1")
            .arg(format!("--port={p2p}"))
            .arg("--http-host=127.0.0.1")
            .arg(format!("--http-port={http}"))
            .arg("--no-auth=true")
            .args(extra)
            .env("BCOIN_DIR", bcoin_dir().expect("bcoin installed"))
            .env("BCOIN_LOG_LEVEL", "warning")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bcoin");
        let b = Bcoin {
            child,
            http,
            p2p,
            dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while b.try_rpc("getblockcount", json!([])).is_none() {
            assert!(Instant::now() < deadline, "bcoin did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        b
    }

    fn try_rpc(&self, method: &str, params: Value) -> Option<Value> {
        let body = json!({"method": method, "params": params}).to_string();
        // A hung node fails the call instead of holding a watcher forever.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let mut r = agent
            .post(&format!("http://127.0.0.1:{}/", self.http))
            .send(body.as_bytes())
            .ok()?;
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
        v["error"].is_null().then(|| v["result"].clone())
    }

    fn rpc(&self, method: &str, params: Value) -> Value {
        self.try_rpc(method, params.clone())
            .unwrap_or_else(|| panic!("bcoin {method} {params} failed"))
    }

    fn height(&self) -> u64 {
        // A busy node may miss a poll: counted as not there yet.
        self.try_rpc("getblockcount", json!([]))
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
    }

    fn mempool(&self) -> u64 {
        self.try_rpc("getmempoolinfo", json!([]))
            .and_then(|v| v["size"].as_u64())
            .unwrap_or(0)
    }
}

/// Waits until `f` holds for every node (at most 180 s).
async fn on_all(nodes: &[Arc<Bcoin>], f: Arc<dyn Fn(&Bcoin) -> bool + Send + Sync>) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let all = {
            let nodes = nodes.to_vec();
            let f = f.clone();
            tokio::task::spawn_blocking(move || nodes.iter().all(|n| f(n)))
                .await
                .expect("poll")
        };
        if all {
            return;
        }
        if Instant::now() > deadline {
            let state: Vec<(u64, u64)> = nodes.iter().map(|n| (n.height(), n.mempool())).collect();
            panic!("bcoin mesh timed out; (height, mempool) per node: {state:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn bcoin_round(high_bandwidth: bool) -> Outcome {
    let wire = Arc::new(Wire::default());
    // Ports first: each node dials its two relays, which need their targets' ports.
    let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let mut dial: Vec<Vec<String>> = vec![Vec::new(); NODES];
    for (i, j) in links() {
        let target: SocketAddr = ([127, 0, 0, 1], ports[j]).into();
        dial[i].push(relay(target, wire.clone()).await.to_string());
    }
    let mut nodes = Vec::new();
    let options = |i: usize, high: bool| {
        let mut extra = vec![format!("--only={}", dial[i].join(","))];
        if high {
            extra.push("--compact-high-bandwidth".into());
        }
        extra
    };
    for (i, &port) in ports.iter().enumerate() {
        // The setup chain is synced in bcoin's default mode: with --compact-high-bandwidth
        // from the start, some nodes of this mesh never synced it (they stayed at height 0).
        let extra = options(i, false);
        let node = tokio::task::spawn_blocking(move || Bcoin::start(port, &extra))
            .await
            .expect("bcoin start");
        nodes.push(Arc::new(node));
    }
    let addr = bcoin_op_true_address();
    let miner = nodes[0].clone();
    let coin = {
        let (miner, addr) = (miner.clone(), addr.clone());
        tokio::task::spawn_blocking(move || {
            miner.rpc("generatetoaddress", json!([101, addr]));
            let hash = miner.rpc("getblockhash", json!([1]));
            let raw = miner.rpc("getblock", json!([hash, false]));
            let block: Block = deserialize_hex(raw.as_str().expect("hex")).expect("block");
            block.txdata[0].clone()
        })
        .await
        .expect("mine")
    };
    // One coinbase fans out to the block's 2,000 coins, confirmed, then 2,000 spends of them.
    // The whole coinbase less a modest fee (bcoin refuses absurd fees, silently over RPC).
    let (fan, each) = op_true::fan_out(&coin, BLOCK_TXS, Amount::from_sat(100_000));
    let spends: Vec<Transaction> = (0..BLOCK_TXS)
        .map(|i| {
            spend_to_op_true(
                OutPoint::new(fan.compute_txid(), i as u32),
                each - Amount::from_sat(10_000),
                op_true::op_true_script_sig(),
                i as u32,
            )
        })
        .collect();
    {
        let (miner, addr, fan) = (miner.clone(), addr.clone(), fan.clone());
        tokio::task::spawn_blocking(move || {
            miner.rpc("sendrawtransaction", json!([serialize_hex(&fan)]));
            miner.rpc("generatetoaddress", json!([1, addr]));
        })
        .await
        .expect("fan out");
    }
    eprintln!("bcoin: chain of 102 blocks mined; waiting for the mesh to sync it");
    on_all(&nodes, Arc::new(|n: &Bcoin| n.height() == 102)).await;
    let (nodes, miner) = if high_bandwidth {
        eprintln!("bcoin: restarting the mesh in high-bandwidth mode");
        drop(miner);
        let mut again = Vec::new();
        for (i, node) in nodes.into_iter().enumerate() {
            let node = Arc::try_unwrap(node).unwrap_or_else(|_| panic!("node {i} still shared"));
            let extra = options(i, true);
            let node = tokio::task::spawn_blocking(move || node.restart(&extra))
                .await
                .expect("bcoin restart");
            again.push(Arc::new(node));
        }
        let miner = again[0].clone();
        (again, miner)
    } else {
        (nodes, miner)
    };
    on_all(&nodes, Arc::new(|n: &Bcoin| n.height() == 102)).await;
    // Warm-up blocks, as for meshd.
    for h in 103..106 {
        let (miner, addr) = (miner.clone(), addr.clone());
        tokio::task::spawn_blocking(move || miner.rpc("generatetoaddress", json!([1, addr])))
            .await
            .expect("warm-up");
        on_all(&nodes, Arc::new(move |n: &Bcoin| n.height() == h)).await;
    }
    {
        let miner = miner.clone();
        tokio::task::spawn_blocking(move || {
            for tx in &spends {
                miner.rpc("sendrawtransaction", json!([serialize_hex(tx)]));
            }
        })
        .await
        .expect("spends");
    }
    eprintln!("bcoin: transactions sent; waiting for every mempool to hold them");
    on_all(
        &nodes,
        Arc::new(|n: &Bcoin| n.mempool() >= BLOCK_TXS as u64),
    )
    .await;
    eprintln!("bcoin: mempools full");
    // Announcements of the transactions trickle out for a while (Poisson, 2 s and 5 s).
    wait_quiet(&wire, Duration::from_secs(6), Duration::from_secs(120)).await;

    let before = wire.0.load(Ordering::Relaxed);
    let target = 106u64;
    // Each node's arrival, polled every 2 ms from its own thread.
    let watchers: Vec<_> = nodes
        .iter()
        .skip(1)
        .map(|n| {
            let n = n.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                while n.height() < target {
                    assert!(
                        Instant::now() < deadline,
                        "the block did not reach a bcoin node"
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
                Instant::now()
            })
        })
        .collect();
    let mined = {
        let (miner, addr) = (miner.clone(), addr.clone());
        tokio::task::spawn_blocking(move || {
            let v = miner.rpc("generatetoaddress", json!([1, addr]));
            let at = Instant::now();
            let hash = v[0].as_str().expect("hash").to_string();
            let b = miner.rpc("getblock", json!([hash, true, false]));
            (at, b["tx"].as_array().map_or(0, |t| t.len()))
        })
        .await
        .expect("mine the block")
    };
    let last = watchers
        .into_iter()
        .map(|w| w.join().expect("watcher"))
        .max()
        .expect("nodes");
    wait_quiet(&wire, Duration::from_secs(1), Duration::from_secs(10)).await;
    let bytes = wire.0.load(Ordering::Relaxed) - before;
    Outcome {
        spread: last.saturating_duration_since(mined.0),
        bytes,
        how: format!("{} transactions in the block", mined.1),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(3usize);
    let with_bcoin = !args.iter().any(|a| a == "--no-bcoin") && bcoin_dir().is_some();
    let txs: Vec<Transaction> = (0..BLOCK_TXS as u32).map(made_up_tx).collect();
    let size: usize = txs.iter().map(|t| t.total_size()).sum();
    println!(
        "propagation lab: {NODES} nodes, links {} ms round trip and {} Mbit/s, at most {} hops from the first node; block of {BLOCK_TXS} transactions (~{} kB), all pooled beforehand; {runs} runs each",
        ONE_WAY.as_millis() * 2,
        RATE_BPS / 1e6,
        hops_from_origin(),
        size / 1000
    );
    let with_whole = !args.iter().any(|a| a == "--no-whole");
    let mut rows: Vec<(String, Vec<Outcome>)> = Vec::new();
    for (name, compact) in [
        ("meshd, compact blocks", true),
        ("meshd, whole blocks", false),
    ] {
        if !compact && !with_whole {
            continue;
        }
        let mut outs = Vec::new();
        for _ in 0..runs {
            outs.push(meshd_round(compact, &txs).await);
        }
        rows.push((name.into(), outs));
    }
    if with_bcoin {
        // bcoin's high-bandwidth mode (--compact-high-bandwidth) only on demand: in this mesh
        // its nodes stopped syncing the setup chain (to be investigated).
        let mut setups = vec![("bcoin 1.0.2, compact low-bandwidth (its default)", false)];
        if args.iter().any(|a| a == "--bcoin-high-bandwidth") {
            setups.push(("bcoin 1.0.2, compact high-bandwidth", true));
        }
        if args.iter().any(|a| a == "--no-bcoin-low-bandwidth") {
            setups.remove(0);
        }
        for (name, hb) in setups {
            let mut outs = Vec::new();
            for _ in 0..runs {
                outs.push(bcoin_round(hb).await);
            }
            rows.push((name.into(), outs));
        }
    } else {
        println!("(bcoin rows skipped: --no-bcoin, or bcoin not installed in .peers/bcoin)");
    }
    println!("| setup | first to last node, median (runs) | bytes on the links, median | arrivals (last run) |");
    println!("|---|---|---|---|");
    for (name, outs) in &rows {
        let spreads: Vec<Duration> = outs.iter().map(|o| o.spread).collect();
        let mut bytes: Vec<u64> = outs.iter().map(|o| o.bytes).collect();
        bytes.sort_unstable();
        println!(
            "| {name} | {} ms ({}) | {} | {} |",
            median(spreads.clone()).as_millis(),
            spreads
                .iter()
                .map(|d| d.as_millis().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            bytes[bytes.len() / 2],
            outs.last().map_or("", |o| o.how.as_str())
        );
    }
}
