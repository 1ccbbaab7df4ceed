//! Transaction relay under load (#29 item 3): a node with 100 inbound peers on loopback, 50
//! announcing and 50 receiving. New transactions arrive at `--rate` a second (1,000 by
//! default) for `--seconds`: each is announced (`inv`) by two announcers 100 ms apart,
//! fetched by the node (`getdata`, answered with `tx`), and relayed with the node's own
//! trickling to every peer that does not have it. Figures per node: its CPU time over the
//! announcing window as a share of one core (user and system time, /proc/PID/stat), and per
//! transaction from the first announcement until the receivers had everything; its RSS at
//! the end; and over every transaction the delay from its first announcement to the `inv`
//! that reached the last receiver (p50, p99, max; ">45" for one that had not reached every
//! receiver 45 s after the last announcement), with the count that reached every receiver.
//!
//! The node under test: the release `meshd` binary (built first), with `--tx-relay all`
//! (the announcers are inbound, and meshd's default relays only what an outbound or
//! `relay`-whitelisted peer vouched for) and a pool large enough for the run; then bcoin
//! (`.peers/bcoin`, installed by scripts/install-test-deps.sh), an independent
//! implementation that validates every transaction against its coins, with the same load.
//! bcoin's transactions are real spends of coins it mined; meshd's have the same shape and
//! size over made-up coins (meshd checks transactions without their inputs).
//!
//! Usage: `cargo run --release --example relay_bench [-- --rate N] [--seconds S] [--no-bcoin]`
//! Not part of the test command.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bitcoin::consensus::encode::{deserialize, deserialize_hex, serialize, serialize_hex};
use bitcoin::hashes::Hash;
use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::{NetworkMessage, RawNetworkMessage};
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::{Magic, ServiceFlags};
use bitcoin::{Amount, Block, OutPoint, Transaction, Txid};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

#[allow(dead_code)]
#[path = "../tests/common/bcoin.rs"]
mod bcoin;
#[path = "common/op_true.rs"]
mod op_true;
use op_true::bcoin_op_true_address;

/// Peers that announce new transactions.
const ANNOUNCERS: usize = 50;
/// Peers that only listen for the node's announcements.
const RECEIVERS: usize = 50;
/// Announcers per transaction: the node fetches from one and must not fetch it twice.
const ANNOUNCERS_PER_TX: usize = 2;
/// The second announcement's delay after the first.
const SECOND_ANNOUNCEMENT: Duration = Duration::from_millis(100);
/// How often the load generator announces what is due.
const TICK: Duration = Duration::from_millis(10);
/// How long after the last announcement the receivers may still be waiting.
const DRAIN: Duration = Duration::from_secs(45);
/// OP_RETURN padding of each transaction: about 230 bytes in all, a typical payment.
const PAD: usize = 140;
/// Outputs of each of bcoin's fan-out transactions (under its 100 kvB standard size).
const FAN_OUTPUTS: usize = 2_000;

/// For the bcoin helper.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// For the bcoin helper.
fn skip_or_fail(what: &str) {
    panic!("{what}");
}

/// A spend of `prev` (a P2SH(OP_TRUE) coin) to P2SH(OP_TRUE), with `n` in its padding.
fn spend(prev: OutPoint, value: Amount, n: u32) -> Transaction {
    op_true::padded_spend(prev, value, op_true::op_true_script_sig(), n, PAD)
}

/// `count` transactions over made-up coins (for meshd, which checks no inputs).
fn made_up(count: usize) -> Vec<Transaction> {
    (0..count as u32)
        .map(|n| {
            let mut prev = [0x5a; 32];
            prev[..4].copy_from_slice(&n.to_le_bytes());
            spend(
                OutPoint::new(Txid::from_byte_array(prev), 0),
                Amount::from_sat(90_000),
                n,
            )
        })
        .collect()
}

/// Mines coins on bcoin, fans them out into confirmed coins, and returns `count` spends of
/// them, each valid on its own.
fn bcoin_spends(node: &bcoin::Bcoin, count: usize) -> Vec<Transaction> {
    let fans = count.div_ceil(FAN_OUTPUTS);
    let addr = bcoin_op_true_address();
    node.rpc("generatetoaddress", json!([100 + fans, addr]));
    let mut txs = Vec::new();
    for height in 1..=fans {
        let hash = node.rpc("getblockhash", json!([height]));
        let raw = node.rpc("getblock", json!([hash, false]));
        let block: Block = deserialize_hex(raw.as_str().expect("hex")).expect("block");
        // The whole coinbase less a modest fee (bcoin refuses absurd fees).
        let (fan, each) =
            op_true::fan_out(&block.txdata[0], FAN_OUTPUTS, Amount::from_sat(200_000));
        node.rpc("sendrawtransaction", json!([serialize_hex(&fan)]));
        for i in 0..FAN_OUTPUTS {
            if txs.len() < count {
                let n = txs.len() as u32;
                txs.push(spend(
                    OutPoint::new(fan.compute_txid(), i as u32),
                    each - Amount::from_sat(10_000),
                    n,
                ));
            }
        }
    }
    node.rpc("generatetoaddress", json!([1, addr]));
    let pool = node.rpc("getmempoolinfo", json!([]));
    assert_eq!(pool["size"], 0, "the fan-outs are confirmed: {pool}");
    txs
}

/// One message, framed for regtest.
fn frame(magic: Magic, m: NetworkMessage) -> Vec<u8> {
    serialize(&RawNetworkMessage::new(magic, m))
}

/// Reads one message; `None` when the socket ends or sends what does not parse.
async fn read_message(stream: &mut tokio::net::tcp::OwnedReadHalf) -> Option<NetworkMessage> {
    let mut header = [0u8; 24];
    stream.read_exact(&mut header).await.ok()?;
    let len = u32::from_le_bytes(header[16..20].try_into().ok()?) as usize;
    if len > 32 << 20 {
        return None;
    }
    let mut whole = header.to_vec();
    whole.resize(24 + len, 0);
    stream.read_exact(&mut whole[24..]).await.ok()?;
    deserialize::<RawNetworkMessage>(&whole)
        .ok()
        .map(|m| m.payload().clone())
}

fn version(to: SocketAddr) -> NetworkMessage {
    let services = ServiceFlags::NETWORK | ServiceFlags::WITNESS;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    NetworkMessage::Version(VersionMessage {
        version: 70016,
        services,
        timestamp: now,
        receiver: Address::new(&to, ServiceFlags::NONE),
        sender: Address::new(&SocketAddr::from(([0, 0, 0, 0], 0)), services),
        nonce: rand::random(),
        user_agent: "/relay_bench:0.1/".into(),
        start_height: 0,
        relay: true,
    })
}

/// What a peer does once connected.
enum Role {
    /// Announces the transactions it is told to and serves them.
    Announcer(mpsc::UnboundedReceiver<Vec<u32>>),
    /// Records when each transaction is announced to it (µs after the run's start).
    Receiver(Arc<Vec<AtomicU64>>),
}

/// The shared load: the transactions and where each is in the list.
struct Load {
    txs: Vec<Transaction>,
    index: HashMap<Txid, u32>,
    start: Instant,
    /// Peers whose handshake completed.
    ready: AtomicU64,
    /// Peers still connected.
    alive: AtomicU64,
}

/// One peer: connects, completes the handshake, then plays `role` until the node closes.
async fn peer(node: SocketAddr, magic: Magic, load: Arc<Load>, role: Role) {
    let Ok(stream) = TcpStream::connect(node).await else {
        eprintln!("a peer could not connect");
        return;
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(&frame(magic, version(node)))
        .await
        .expect("version");
    let (mut got_version, mut got_verack) = (false, false);
    while !(got_version && got_verack) {
        let Some(message) = read_message(&mut rd).await else {
            eprintln!("a peer's handshake failed");
            return;
        };
        match message {
            NetworkMessage::Version(_) => {
                got_version = true;
                wr.write_all(&frame(magic, NetworkMessage::Verack))
                    .await
                    .expect("verack");
            }
            NetworkMessage::Verack => got_verack = true,
            _ => {}
        }
    }
    load.ready.fetch_add(1, Ordering::Relaxed);
    load.alive.fetch_add(1, Ordering::Relaxed);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let (seen, mut announce) = match role {
        Role::Receiver(seen) => (Some(seen), None),
        Role::Announcer(rx) => (None, Some(rx)),
    };
    loop {
        let message = tokio::select! {
            m = read_message(&mut rd) => m,
            due = async { announce.as_mut()?.recv().await }, if announce.is_some() => {
                match due {
                    Some(list) => {
                        let inv = list
                            .iter()
                            .map(|&i| Inventory::Transaction(load.txs[i as usize].compute_txid()))
                            .collect();
                        let _ = out_tx.send(frame(magic, NetworkMessage::Inv(inv)));
                    }
                    None => announce = None,
                }
                continue;
            }
        };
        let Some(message) = message else { break };
        match message {
            NetworkMessage::Ping(n) => {
                let _ = out_tx.send(frame(magic, NetworkMessage::Pong(n)));
            }
            // Nothing beyond the node's tip: it is not left waiting for a header sync.
            NetworkMessage::GetHeaders(_) => {
                let _ = out_tx.send(frame(magic, NetworkMessage::Headers(Vec::new())));
            }
            NetworkMessage::GetData(items) if seen.is_none() => {
                for item in items {
                    let txid = match item {
                        Inventory::Transaction(t) | Inventory::WitnessTransaction(t) => t,
                        _ => continue,
                    };
                    if let Some(&i) = load.index.get(&txid) {
                        let tx = load.txs[i as usize].clone();
                        let _ = out_tx.send(frame(magic, NetworkMessage::Tx(tx)));
                    }
                }
            }
            NetworkMessage::Inv(items) => {
                let Some(seen) = &seen else { continue };
                let now = load.start.elapsed().as_micros() as u64;
                for item in items {
                    if let Inventory::Transaction(t) | Inventory::WitnessTransaction(t) = item {
                        if let Some(&i) = load.index.get(&t) {
                            let _ = seen[i as usize].compare_exchange(
                                0,
                                now.max(1),
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }
    load.alive.fetch_sub(1, Ordering::Relaxed);
    drop(out_tx);
    let _ = writer.await;
}

/// CPU time of `pid` in ns: user and system time from /proc/PID/stat, which keeps the time
/// of threads that have exited (tokio's blocking threads come and go).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000_000 / hz
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// One node's figures.
struct Figures {
    /// CPU over the announcing window, as a share of one core.
    cpu_share: f64,
    /// CPU from the first announcement until the receivers had everything (or the drain
    /// ended), per transaction.
    cpu_per_tx: Duration,
    rss_kib: u64,
    reached_all: usize,
    /// Over every transaction sent; `None` where it falls on one that did not reach every
    /// receiver before the drain ended.
    p50: Option<Duration>,
    p99: Option<Duration>,
    max: Option<Duration>,
    sent: usize,
    /// Peers still connected at the end (of 100).
    alive: u64,
}

fn quantile(sorted: &[Option<Duration>], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// A delay in seconds, or that the transaction never reached every receiver in time.
fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || format!(">{}", DRAIN.as_secs()),
        |d| format!("{:.2}", d.as_secs_f64()),
    )
}

/// Runs the load against the node listening on `node` (process `pid`).
async fn run(node: SocketAddr, pid: u32, txs: Vec<Transaction>, rate: u32) -> Figures {
    let magic = Magic::REGTEST;
    let count = txs.len();
    let index = txs
        .iter()
        .enumerate()
        .map(|(i, t)| (t.compute_txid(), i as u32))
        .collect();
    let load = Arc::new(Load {
        txs,
        index,
        start: Instant::now(),
        ready: AtomicU64::new(0),
        alive: AtomicU64::new(0),
    });
    let mut announcers = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..ANNOUNCERS {
        let (tx, rx) = mpsc::unbounded_channel();
        announcers.push(tx);
        tasks.push(tokio::spawn(peer(
            node,
            magic,
            load.clone(),
            Role::Announcer(rx),
        )));
    }
    let mut seen = Vec::new();
    for _ in 0..RECEIVERS {
        let s: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
        seen.push(s.clone());
        tasks.push(tokio::spawn(peer(
            node,
            magic,
            load.clone(),
            Role::Receiver(s),
        )));
    }
    // Every handshake done before the clock starts: the node has them all as peers.
    let peers = (ANNOUNCERS + RECEIVERS) as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.ready.load(Ordering::Relaxed) < peers {
        assert!(
            Instant::now() < deadline,
            "only {} of {peers} peers completed the handshake",
            load.ready.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The node settles its new peers (sendcmpct, feefilter, getheaders) before the load.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first_sent: Vec<AtomicU64> = (0..count).map(|_| AtomicU64::new(0)).collect();
    let (cpu0, wall0) = (cpu_ns(pid), Instant::now());
    let mut next = 0usize;
    let mut second: std::collections::VecDeque<(Instant, Vec<(usize, u32)>)> = Default::default();
    let mut ticker = tokio::time::interval(TICK);
    while next < count || !second.is_empty() {
        ticker.tick().await;
        let now = Instant::now();
        let due = ((now - wall0).as_secs_f64() * rate as f64) as usize;
        let due = due.min(count);
        let mut per: Vec<Vec<u32>> = vec![Vec::new(); ANNOUNCERS];
        let mut later = Vec::new();
        let at = load.start.elapsed().as_micros() as u64;
        for (i, sent) in first_sent.iter().enumerate().take(due).skip(next) {
            let a = i % ANNOUNCERS;
            per[a].push(i as u32);
            sent.store(at.max(1), Ordering::Relaxed);
            for k in 1..ANNOUNCERS_PER_TX {
                // Never the first announcer again: an offset of 1 to ANNOUNCERS - 1.
                let offset = 1 + (7 * k + i / ANNOUNCERS) % (ANNOUNCERS - 1);
                later.push(((a + offset) % ANNOUNCERS, i as u32));
            }
        }
        next = next.max(due);
        if !later.is_empty() {
            second.push_back((now + SECOND_ANNOUNCEMENT, later));
        }
        while second.front().is_some_and(|(t, _)| *t <= now) {
            let (_, list) = second.pop_front().expect("front");
            for (a, i) in list {
                per[a].push(i);
            }
        }
        for (a, list) in per.into_iter().enumerate() {
            if !list.is_empty() {
                let _ = announcers[a].send(list);
            }
        }
        if next >= count && second.is_empty() {
            break;
        }
    }
    let window = wall0.elapsed();
    let cpu = cpu_ns(pid).saturating_sub(cpu0);
    // Until every receiver has every transaction, or the drain time is up.
    let deadline = Instant::now() + DRAIN;
    let all_in = || {
        seen.iter()
            .all(|s| s.iter().all(|t| t.load(Ordering::Relaxed) != 0))
    };
    while Instant::now() < deadline && !all_in() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss = rss_kib(pid);
    let cpu_all = cpu_ns(pid).saturating_sub(cpu0);
    // Per transaction: `None` when some receiver never heard of it; sorted last.
    let mut delays: Vec<Option<Duration>> = Vec::new();
    for (i, sent) in first_sent.iter().enumerate() {
        let sent = sent.load(Ordering::Relaxed);
        let last = seen
            .iter()
            .map(|s| s[i].load(Ordering::Relaxed))
            .try_fold(0u64, |m, t| (t != 0).then_some(m.max(t)));
        delays.push(last.map(|last| Duration::from_micros(last.saturating_sub(sent))));
    }
    delays.sort_by_key(|d| d.unwrap_or(Duration::MAX));
    let alive = load.alive.load(Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    Figures {
        cpu_share: cpu as f64 / window.as_nanos() as f64,
        cpu_per_tx: Duration::from_nanos(cpu_all / count.max(1) as u64),
        rss_kib: rss,
        reached_all: delays.iter().filter(|d| d.is_some()).count(),
        p50: quantile(&delays, 0.5),
        p99: quantile(&delays, 0.99),
        max: delays.last().copied().flatten(),
        sent: count,
        alive,
    }
}

fn print(name: &str, f: &Figures, rate: u32) {
    println!(
        "{name}: rate={rate}/s txs={} reached_all_receivers={} peers_alive={} cpu_share_of_one_core={:.1}% cpu_per_tx_us={:.0} rss_mib={:.1} delay_p50_s={} delay_p99_s={} delay_max_s={}",
        f.sent,
        f.reached_all,
        f.alive,
        f.cpu_share * 100.0,
        f.cpu_per_tx.as_secs_f64() * 1e6,
        f.rss_kib as f64 / 1024.0,
        secs(f.p50),
        secs(f.p99),
        secs(f.max),
    );
}

struct Meshd {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Meshd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn start_meshd(port: u16, pool: usize) -> Meshd {
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "meshd", "-q"])
        .current_dir(root)
        .status()
        .expect("cargo build");
    assert!(status.success(), "building meshd failed");
    let dir = tempfile::tempdir().expect("tempdir");
    let child = Command::new(Path::new(root).join("target/release/meshd"))
        .arg("--datadir")
        .arg(dir.path())
        .args([
            "--network",
            "regtest",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--no-metrics", "--no-api", "--log-level"])
        .arg(std::env::var("RELAY_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
        .args(["--max-inbound", "200", "--max-connections", "300"])
        .args(["--tx-relay", "all"])
        .args(["--tx-pool-max-count", &pool.to_string()])
        .args(["--tx-pool-max-bytes", "512MiB"])
        .stdin(Stdio::null())
        .spawn()
        .expect("start meshd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "meshd did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Meshd { child, _dir: dir }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str, default: u32| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(default)
    };
    let rate = value("--rate", 1_000);
    let seconds = value("--seconds", 20);
    let count = (rate * seconds) as usize;
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "relay_bench: {ANNOUNCERS} announcing and {RECEIVERS} receiving peers, {rate} tx/s for {seconds} s, each announced by {ANNOUNCERS_PER_TX}; cpu {machine}, {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );

    let port = free_port();
    let node = start_meshd(port, count * 2);
    let pid = node.child.id();
    println!("meshd: pid {pid}");
    let f = run(
        SocketAddr::from(([127, 0, 0, 1], port)),
        pid,
        made_up(count),
        rate,
    )
    .await;
    print("meshd", &f, rate);
    drop(node);

    if args.iter().any(|a| a == "--no-bcoin") {
        return;
    }
    let b = tokio::task::spawn_blocking(move || {
        let b = bcoin::Bcoin::start(&["--max-inbound=200".into()]).expect("bcoin");
        let txs = bcoin_spends(&b, count);
        (b, txs)
    })
    .await
    .expect("bcoin setup");
    let (b, txs) = b;
    let addr = SocketAddr::from(([127, 0, 0, 1], b.p2p_port));
    println!("bcoin: pid {}", b.pid());
    let f = run(addr, b.pid(), txs, rate).await;
    print("bcoin", &f, rate);
    let pool = b.rpc("getmempoolinfo", json!([]));
    println!("bcoin: mempool after the run: {}", pool["size"]);
}
