//! The Fleet actor: this node as a member of a fleet on NATS JetStream (`--nats`).
//!
//! - **Events.** Every event the SSE stream carries (all but per-message traffic) is
//!   published as the same JSON on `meshd.<fleet>.<node>.<network>.<kind>` into the fleet's
//!   stream, which the node creates if missing (bounded by age and bytes). Publishing never
//!   blocks the node: events wait in a bounded buffer (drops counted in
//!   `meshd_fleet_dropped_total`), one publisher sends them in order and retries each until
//!   JetStream acknowledges it, with a message id (`Nats-Msg-Id`) so a retry after a lost
//!   acknowledgement is not stored twice. The client reconnects with backoff by itself.
//! - **Propagation.** Each node's `BlockReceived` events (hash, time, the peer it came from)
//!   are its first sightings; [`propagation`] reads them back from the stream, and each node
//!   exports its own lag behind the fleet's first sighting (`meshd_fleet_block_lag_seconds`).
//! - **Ban advisories.** An operator's ban of one address is published as a
//!   [`core::BanAdvisory`] signed with this node's ed25519 key ([`key`], over the subject
//!   and the body; automatic verdicts are discouragements, never advised). With
//!   `--fleet-apply-bans`, an advisory is applied only when its key is listed in
//!   `--fleet-trusted-keys` for the node it names as origin, it is published on that node's
//!   own subject and issued within 10 minutes ([`core::verify_advisory`]), its origin has not
//!   spent its budget ([`core::AdvisoryLimiter`]), and what it asks passes
//!   [`core::check_advisory`] (one address only, never loopback, private, whitelisted or a
//!   manual peer, at most a week); anything else is ignored, counted and logged at most once
//!   a minute.
//! - **Heartbeats.** A [`core::Heartbeat`] in the fleet's key-value bucket every interval;
//!   [`nodes`] lists them, stale ones marked.

pub mod core;
pub mod key;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use async_nats::HeaderMap;
use futures_util::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::FleetConfig;
use crate::context::NodeContext;
use crate::events::{EventError, EventKind, NodeEvent};
use crate::msg::ManagerMsg;
pub use crate::shared::fleet::{FleetShared, FleetStatus};
use core::{BanAdvisory, Heartbeat, Propagation, Sighting};

/// First wait before retrying a publish JetStream did not acknowledge...
const RETRY_MIN: Duration = Duration::from_millis(100);
/// ...doubling up to this.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Time allowed for one acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Most stream messages read for one propagation report: the reader stays bounded in time
/// and memory however large the stream grew.
pub const MAX_PROPAGATION_SCAN: usize = 200_000;
/// Most nodes one fleet listing shows.
pub const MAX_FLEET_NODES: usize = 10_000;
/// Heartbeats older than this leave the bucket (a node gone for a day is forgotten).
const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(86_400);
/// Time allowed to read the stream for one report.
const SCAN_TIMEOUT: Duration = Duration::from_secs(20);
/// Ignored advisories are logged at most once per this long, with the count since the last
/// line: whoever may publish on the fleet's subjects cannot fill the disk with our log.
const REJECT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// One message waiting for the publisher.
struct Outgoing {
    subject: String,
    payload: Vec<u8>,
    seq: u64,
}

/// The Fleet actor.
pub struct Fleet;

/// Its state: the tasks it runs, aborted when it stops.
pub struct FleetState {
    tasks: Vec<JoinHandle<()>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Actor for Fleet {
    type Msg = ();
    type State = FleetState;
    type Arguments = (Arc<NodeContext>, ActorRef<ManagerMsg>);

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        (ctx, manager): (Arc<NodeContext>, ActorRef<ManagerMsg>),
    ) -> Result<FleetState, ActorProcessingErr> {
        let Some(config) = ctx.config().fleet.clone() else {
            return Ok(FleetState { tasks: Vec::new() });
        };
        for m in ["meshd_fleet_dropped_total", "meshd_fleet_published_total"] {
            metrics::counter!(m).increment(0);
        }
        metrics::gauge!("meshd_fleet_connected").set(0.0);
        let shared = ctx.fleet_shared();
        // The key signs our advisories; without it (an unreadable file) none is published.
        let signer = match key::load_or_create(&ctx.config().datadir) {
            Ok(k) => {
                let public = core::public_key_hex(&k.verifying_key());
                info!(key = %public, "fleet signing key");
                if let Ok(mut g) = shared.public_key.lock() {
                    *g = Some(public);
                }
                Some(k)
            }
            Err(e) => {
                warn!(error = %e, "no fleet signing key: this node publishes no ban advisories");
                shared.set_error(&e);
                None
            }
        };
        let (tx, rx) = mpsc::channel::<Outgoing>(config.buffer.max(1));
        let tasks = vec![
            tokio::spawn(pump(ctx.clone(), config.clone(), tx, signer)),
            tokio::spawn(run(ctx.clone(), config, shared, rx, manager)),
        ];
        Ok(FleetState { tasks })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<()>,
        state: &mut FleetState,
    ) -> Result<(), ActorProcessingErr> {
        for t in state.tasks.drain(..) {
            t.abort();
        }
        Ok(())
    }
}

/// The event kinds published: everything but per-message traffic.
fn published_kinds() -> Vec<EventKind> {
    EventKind::ALL
        .into_iter()
        .filter(|k| !k.is_traffic())
        .collect()
}

/// Turns node events into messages for the publisher; never waits on it.
async fn pump(
    ctx: Arc<NodeContext>,
    config: FleetConfig,
    tx: mpsc::Sender<Outgoing>,
    signer: Option<ed25519_dalek::SigningKey>,
) {
    let shared = ctx.fleet_shared();
    let network = ctx.config().network.name().to_string();
    let mut events = ctx.events.subscribe_to(&published_kinds());
    let mut seq = 0u64;
    let count_dropped = |n: u64| {
        shared.dropped.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("meshd_fleet_dropped_total").increment(n);
    };
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(EventError::Lagged(n)) => {
                // Lost before they were numbered: they count as numbered and dropped.
                seq += n;
                shared.sequence.store(seq, Ordering::Relaxed);
                count_dropped(n);
                continue;
            }
            Err(EventError::Closed) => return,
        };
        let mut out = Vec::with_capacity(2);
        if let Ok(payload) = serde_json::to_vec(&*event) {
            out.push((event.event.kind().name().to_string(), payload));
        }
        // An operator's ban of one address, or the operator lifting it: automatic verdicts
        // are discouragements, kept to this node (Core's), and fleet bans came from another
        // node's advisory (republishing them, or their lifting, would echo round the fleet).
        // One address only: receivers refuse ranges.
        let advised = match &event.event {
            NodeEvent::PeerBanned {
                subnet,
                until,
                reason,
                detail,
            } if reason == "manual" => Some((
                core::AdvisoryAction::Ban,
                subnet,
                *until,
                detail
                    .clone()
                    .unwrap_or_else(|| "banned by the operator".into()),
            )),
            NodeEvent::PeerUnbanned { subnet, reason, by }
                if reason == "manual" && by == "operator" =>
            {
                Some((
                    core::AdvisoryAction::Unban,
                    subnet,
                    0,
                    "unbanned by the operator".into(),
                ))
            }
            _ => None,
        };
        if let Some((action, subnet, until, why)) = advised {
            let single = subnet
                .parse::<ipnet::IpNet>()
                .is_ok_and(|n| n.prefix_len() == n.max_prefix_len());
            if let (true, Some(key)) = (single, signer.as_ref()) {
                let adv = BanAdvisory {
                    action,
                    subnet: subnet.clone(),
                    reason: why,
                    score: ctx.config().ban_threshold,
                    until,
                    origin: config.node_name.clone(),
                    issued: unix_ms() / 1000,
                };
                let subject = core::subject(
                    &config.fleet,
                    &config.node_name,
                    &network,
                    core::ADVISORY_KIND,
                );
                let payload = core::sign_advisory(&adv, &subject, key);
                out.push((core::ADVISORY_KIND.to_string(), payload));
            }
        }
        for (kind, payload) in out {
            seq += 1;
            shared.sequence.store(seq, Ordering::Relaxed);
            let msg = Outgoing {
                subject: core::subject(&config.fleet, &config.node_name, &network, &kind),
                payload,
                seq,
            };
            if tx.try_send(msg).is_err() {
                count_dropped(1);
            }
        }
    }
}

async fn connect(config: &FleetConfig) -> Result<async_nats::Client, String> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("meshd {}", config.node_name))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempt| {
            // 100 ms doubling to 5 s, as the publisher's own retries.
            RETRY_MIN
                .saturating_mul(2u32.saturating_pow(attempt as u32))
                .min(RETRY_MAX)
        });
    if let Some(path) = &config.credentials_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| format!("credentials file {}: {e}", path.display()))?;
    }
    if let Some((user, pass)) = &config.user_password {
        opts = opts.user_and_password(user.clone(), pass.clone());
    }
    // A cluster is given as comma-separated URLs; the client tries them and follows the
    // cluster's own list of servers from then on.
    let servers: Vec<String> = config
        .url
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    opts.connect(servers).await.map_err(|e| e.to_string())
}

/// Creates the fleet's stream and its heartbeat bucket if missing. The bucket is made by
/// JetStream's key-value conventions (stream `KV_<bucket>`, subjects `$KV.<bucket>.<key>`,
/// one message per subject, rollups allowed, deletes denied), so `nats kv` tools read it;
/// it is created and written through plain JetStream calls because async-nats' key-value
/// API does not parse the answers of Debian's nats-server 2.9.
async fn ensure(js: &jetstream::Context, config: &FleetConfig) -> Result<(), String> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: core::stream_name(&config.fleet),
        subjects: vec![core::fleet_subjects(&config.fleet)],
        max_age: config.max_age,
        max_bytes: config.max_bytes.min(i64::MAX as u64) as i64,
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        num_replicas: config.replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("stream: {e}{}", storage_hint(&e, config.max_bytes)))?;
    let bucket = core::bucket_name(&config.fleet);
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: HEARTBEAT_MAX_AGE,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        num_replicas: config.replicas.max(1),
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("bucket: {e}"))?;
    Ok(())
}

/// What an operator can do when the server refuses the stream for want of storage: the
/// server reserves the whole `max_bytes` when the stream is made, and by default it allows
/// only 75% of its disk's free space, so a node on a full-ish server never joins otherwise.
fn storage_hint(e: &jetstream::context::CreateStreamError, max_bytes: u64) -> String {
    use jetstream::{context::CreateStreamErrorKind, ErrorCode};
    match e.kind() {
        CreateStreamErrorKind::JetStream(j)
            if matches!(
                j.error_code(),
                ErrorCode::STORAGE_RESOURCES_EXCEEDED | ErrorCode::INSUFFICIENT_RESOURCES
            ) =>
        {
            format!(
                "; the server cannot reserve the stream's {max_bytes} bytes: lower \
                 --fleet-max-bytes, or free disk or raise max_file_store on the server"
            )
        }
        _ => String::new(),
    }
}

/// Connects, sets up, then publishes, beats and listens until the node stops.
async fn run(
    ctx: Arc<NodeContext>,
    config: FleetConfig,
    shared: Arc<FleetShared>,
    mut rx: mpsc::Receiver<Outgoing>,
    manager: ActorRef<ManagerMsg>,
) {
    let client = loop {
        match connect(&config).await {
            Ok(c) => break c,
            Err(e) => {
                shared.set_error(&e);
                warn!(url = %config.url, error = %e, "cannot reach NATS; retrying");
                tokio::time::sleep(RETRY_MAX).await;
            }
        }
    };
    if let Ok(mut c) = shared.client.lock() {
        *c = Some(client.clone());
    }
    let js = jetstream::new(client.clone());
    let mut delay = RETRY_MIN;
    loop {
        match ensure(&js, &config).await {
            Ok(()) => break,
            Err(e) => {
                shared.set_error(&e);
                warn!(error = %e, "fleet stream not ready; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
    info!(fleet = %config.fleet, node = %config.node_name, url = %config.url, "fleet connected");
    let watch = tokio::spawn(watch_connection(client.clone(), shared.clone()));
    let beat = tokio::spawn(heartbeats(ctx.clone(), config.clone(), js.clone()));
    let sightings = tokio::spawn(follow_sightings(
        ctx.clone(),
        config.clone(),
        client.clone(),
        shared.clone(),
    ));
    let advisories = config.apply_bans.then(|| {
        tokio::spawn(apply_advisories(
            ctx.clone(),
            config.clone(),
            client.clone(),
            shared.clone(),
            manager,
        ))
    });
    let _guard = AbortOnDrop(vec![Some(watch), Some(beat), Some(sightings), advisories]);

    while let Some(msg) = rx.recv().await {
        let mut delay = RETRY_MIN;
        loop {
            let mut headers = HeaderMap::new();
            headers.insert(
                "Nats-Msg-Id",
                format!("{}-{}-{}", config.node_name, ctx.started_unix(), msg.seq).as_str(),
            );
            headers.insert("Meshd-Seq", msg.seq.to_string().as_str());
            let sent = js
                .publish_with_headers(msg.subject.clone(), headers, msg.payload.clone().into())
                .await;
            let acked = match sent {
                Ok(ack) => tokio::time::timeout(ACK_TIMEOUT, ack)
                    .await
                    .map_err(|_| "no acknowledgement".to_string())
                    .and_then(|r| r.map_err(|e| e.to_string())),
                Err(e) => Err(e.to_string()),
            };
            match acked {
                Ok(_) => {
                    shared.published.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("meshd_fleet_published_total").increment(1);
                    break;
                }
                Err(e) => {
                    shared.set_error(&e);
                    debug!(error = %e, seq = msg.seq, retry_in = ?delay, "publish not acknowledged; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

struct AbortOnDrop(Vec<Option<JoinHandle<()>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in self.0.iter().flatten() {
            t.abort();
        }
    }
}

/// Keeps `connected` and its gauge current.
async fn watch_connection(client: async_nats::Client, shared: Arc<FleetShared>) {
    let mut was = None;
    loop {
        let up = client.connection_state() == async_nats::connection::State::Connected;
        if was != Some(up) {
            shared.connected.store(up, Ordering::Relaxed);
            metrics::gauge!("meshd_fleet_connected").set(if up { 1.0 } else { 0.0 });
            if was.is_some() {
                if up {
                    info!("fleet: NATS connection back");
                } else {
                    warn!("fleet: NATS connection lost; events wait in the buffer");
                }
            }
            was = Some(up);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes this node's heartbeat every interval (a key-value put: a publish to
/// `$KV.<bucket>.<node>`).
async fn heartbeats(ctx: Arc<NodeContext>, config: FleetConfig, js: jetstream::Context) {
    let subject = format!(
        "$KV.{}.{}",
        core::bucket_name(&config.fleet),
        core::token(&config.node_name)
    );
    let mut tick = tokio::time::interval(config.heartbeat_interval);
    loop {
        tick.tick().await;
        let hb = heartbeat(&ctx, &config);
        if let Ok(bytes) = serde_json::to_vec(&hb) {
            let acked = match js.publish(subject.clone(), bytes.into()).await {
                Ok(ack) => tokio::time::timeout(ACK_TIMEOUT, ack)
                    .await
                    .is_ok_and(|r| r.is_ok()),
                Err(_) => false,
            };
            if !acked {
                debug!("heartbeat not written");
            }
        }
    }
}

fn heartbeat(ctx: &NodeContext, config: &FleetConfig) -> Heartbeat {
    let peers = ctx.peers.snapshot();
    let connected: Vec<_> = peers
        .iter()
        .filter(|p| p.state == crate::shared::peers::PeerState::Connected)
        .collect();
    let status = ctx.sync_status();
    Heartbeat {
        node: config.node_name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        network: ctx.config().network.name().to_string(),
        tip_height: status.header_height,
        tip_hash: status.best_header_hash.clone(),
        inbound: connected
            .iter()
            .filter(|p| p.direction == crate::peer::Direction::Inbound)
            .count(),
        outbound: connected
            .iter()
            .filter(|p| p.direction == crate::peer::Direction::Outbound)
            .count(),
        v2: connected.iter().filter(|p| p.transport == "v2").count(),
        uptime_secs: ctx.uptime().as_secs(),
        time: unix_ms() / 1000,
        interval_secs: config.heartbeat_interval.as_secs().max(1),
    }
}

/// The node token of a subject `meshd.<fleet>.<node>.<network>.<kind>`.
fn subject_node(subject: &str) -> Option<&str> {
    subject.split('.').nth(2)
}

/// The longest `via` kept from another node's sighting (ours are at most 22 bytes).
const MAX_VIA_LEN: usize = 32;
/// The longest `from` kept from another node's sighting: an onion v3 address with its port
/// is 68 bytes, so anything longer is not a peer address.
const MAX_FROM_LEN: usize = 100;

/// A `BlockReceived` event's hash, height, time, sender and carrying message, from its JSON.
fn parse_sighting(node: &str, payload: &[u8]) -> Option<Sighting> {
    if payload.len() > core::MAX_FLEET_MESSAGE {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    Some(Sighting {
        node: node.to_string(),
        hash: v["hash"].as_str()?.to_string(),
        height: v["height"].as_u64()? as u32,
        time_ms: v["timestamp_ms"].as_u64()?,
        // Another node's word, shown to operators: an address's characters, or not at all.
        from: v["from"]
            .as_str()
            .filter(|from| {
                from.len() <= MAX_FROM_LEN
                    && from
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".:[]-_".contains(&b))
            })
            .map(str::to_string),
        // Another node's word, shown to operators: short and plain, or not at all.
        via: v["via"]
            .as_str()
            .filter(|via| {
                via.len() <= MAX_VIA_LEN && via.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
            .map(str::to_string),
    })
}

/// Follows every node's block sightings to keep this node's lag current.
async fn follow_sightings(
    ctx: Arc<NodeContext>,
    config: FleetConfig,
    client: async_nats::Client,
    shared: Arc<FleetShared>,
) {
    let network = ctx.config().network.name().to_string();
    let own = core::token(&config.node_name);
    let subject = core::kind_subjects(&config.fleet, &network, EventKind::BlockReceived.name());
    let Ok(mut sub) = client.subscribe(subject).await else {
        return;
    };
    while let Some(msg) = sub.next().await {
        let Some(node) = subject_node(&msg.subject) else {
            continue;
        };
        let Some(s) = parse_sighting(node, &msg.payload) else {
            shared.reject("sighting", "not a BlockReceived event");
            continue;
        };
        if let Ok(mut lag) = shared.lag.lock() {
            lag.see(&s.hash, s.time_ms, node == own);
            if let Some(secs) = lag.lag_secs() {
                metrics::gauge!("meshd_fleet_block_lag_seconds").set(secs);
            }
        }
    }
}

/// Applies other nodes' ban advisories (`--fleet-apply-bans`).
async fn apply_advisories(
    ctx: Arc<NodeContext>,
    config: FleetConfig,
    client: async_nats::Client,
    shared: Arc<FleetShared>,
    manager: ActorRef<ManagerMsg>,
) {
    let network = ctx.config().network.name().to_string();
    let subject = core::kind_subjects(&config.fleet, &network, core::ADVISORY_KIND);
    let Ok(mut sub) = client.subscribe(subject).await else {
        return;
    };
    let mut limiter = core::AdvisoryLimiter::default();
    let mut order = core::AdvisoryOrder::default();
    let mut log = RejectLog::default();
    while let Some(msg) = sub.next().await {
        let now = unix_ms() / 1000;
        let whitelisted = |ip| {
            ctx.config()
                .whitelist
                .iter()
                .any(|w| w.subnet.contains(&ip))
        };
        // Configured or added at run time (`meshd addnode`), compared canonically.
        let manual = |ip: IpAddr| ctx.is_manual_ip(ip);
        let checked = core::verify_advisory(&msg.payload, &msg.subject, &config.trusted_keys, now)
            .and_then(|adv| {
                if !limiter.allow(&adv.origin, now) {
                    return Err(core::AdvisoryError::RateLimited(adv.origin));
                }
                let asked = match adv.action {
                    core::AdvisoryAction::Ban => {
                        core::check_advisory(&adv, &config.node_name, whitelisted, manual, now)
                            .map(|(subnet, until)| (subnet, Some(until)))
                    }
                    core::AdvisoryAction::Unban => {
                        core::check_unban(&adv, &config.node_name).map(|subnet| (subnet, None))
                    }
                }?;
                order.admit(&adv, asked.0, now)?;
                Ok((asked, adv))
            });
        match checked {
            Ok(((subnet, Some(until)), adv)) => {
                metrics::counter!("meshd_fleet_advisories_applied_total").increment(1);
                info!(%subnet, origin = %adv.origin, until, "fleet ban advisory applied");
                let _ = manager.cast(ManagerMsg::FleetBan {
                    subnet,
                    until,
                    origin: adv.origin,
                    reason: adv.reason,
                });
            }
            Ok(((subnet, None), adv)) => {
                metrics::counter!("meshd_fleet_advisories_applied_total").increment(1);
                info!(%subnet, origin = %adv.origin, "fleet unban advisory applied");
                let _ = manager.cast(ManagerMsg::FleetUnban {
                    subnet,
                    origin: adv.origin,
                    issued: adv.issued,
                });
            }
            Err(core::AdvisoryError::Own) => {}
            Err(e) => {
                shared.reject(e.kind(), &e.to_string());
                log.rejected(&msg.subject, &e, Instant::now());
            }
        }
    }
}

/// Ignored advisories, logged at most once per [`REJECT_LOG_INTERVAL`] with a count.
#[derive(Default)]
struct RejectLog {
    last: Option<Instant>,
    since: u64,
}

impl RejectLog {
    fn rejected(&mut self, subject: &str, e: &core::AdvisoryError, now: Instant) {
        self.since += 1;
        if self
            .last
            .is_some_and(|at| now.duration_since(at) < REJECT_LOG_INTERVAL)
        {
            return;
        }
        // Debug formatting escapes whatever a publisher put in the subject or the body.
        warn!(subject = ?subject, error = ?e.to_string(), ignored = self.since,
              "ban advisories ignored (this one, and the count since the last line)");
        self.last = Some(now);
        self.since = 0;
    }
}

/// Reads a stream through an ordered consumer on `filter` from `deliver` until nothing is
/// pending, at most `max` messages and [`SCAN_TIMEOUT`]; each message goes to `each`.
async fn scan(
    js: &jetstream::Context,
    stream: String,
    filter: String,
    deliver: jetstream::consumer::DeliverPolicy,
    max: usize,
    mut each: impl FnMut(&jetstream::Message),
) -> Result<(), String> {
    let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: deliver,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(());
    }
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + SCAN_TIMEOUT;
    for _ in 0..max {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(Ok(msg))) = tokio::time::timeout(left, messages.next()).await else {
            break;
        };
        each(&msg);
        if msg.info().map_or(true, |i| i.pending == 0) {
            break;
        }
    }
    Ok(())
}

/// The fleet's config and a JetStream context on its connection.
fn fleet_link(ctx: &NodeContext) -> Result<(FleetConfig, jetstream::Context), String> {
    let config = ctx
        .config()
        .fleet
        .clone()
        .ok_or("not in a fleet (--nats)")?;
    let client = ctx
        .fleet_shared()
        .client()
        .ok_or("not connected to NATS yet")?;
    Ok((config, jetstream::new(client)))
}

/// The fleet's heartbeats, each with whether it is stale; malformed ones are skipped and
/// counted. Read as the last message per key of the bucket.
pub async fn nodes(ctx: &NodeContext) -> Result<Vec<(Heartbeat, bool)>, String> {
    let (config, js) = fleet_link(ctx)?;
    let shared = ctx.fleet_shared();
    let bucket = core::bucket_name(&config.fleet);
    let now = unix_ms() / 1000;
    let mut out = Vec::new();
    scan(
        &js,
        format!("KV_{bucket}"),
        format!("$KV.{bucket}.>"),
        jetstream::consumer::DeliverPolicy::LastPerSubject,
        MAX_FLEET_NODES,
        |msg| match Heartbeat::parse(&msg.payload) {
            Ok(hb) => {
                let stale = hb.is_stale(now);
                out.push((hb, stale));
            }
            Err(e) => shared.reject("heartbeat", &e),
        },
    )
    .await?;
    out.sort_by(|a, b| a.0.node.cmp(&b.0.node));
    Ok(out)
}

/// Per block, when the first and the last node saw it and the delay quantiles, for the
/// `last` newest blocks in the stream (bounded by [`MAX_PROPAGATION_SCAN`] messages and
/// `SCAN_TIMEOUT`).
pub async fn propagation(ctx: &NodeContext, last: usize) -> Result<Vec<Propagation>, String> {
    let (config, js) = fleet_link(ctx)?;
    let shared = ctx.fleet_shared();
    let network = ctx.config().network.name().to_string();
    let mut sightings = Vec::new();
    scan(
        &js,
        core::stream_name(&config.fleet),
        core::kind_subjects(&config.fleet, &network, EventKind::BlockReceived.name()),
        jetstream::consumer::DeliverPolicy::All,
        MAX_PROPAGATION_SCAN,
        |msg| {
            let parsed = subject_node(&msg.subject).and_then(|n| parse_sighting(n, &msg.payload));
            match parsed {
                Some(s) => sightings.push(s),
                None => shared.reject("sighting", "not a BlockReceived event"),
            }
        },
    )
    .await?;
    Ok(core::propagation(&sightings, last))
}
