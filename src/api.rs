//! The admin API: HTTP JSON under `/v1`, on `--api ADDR` (loopback by default).
//!
//! Every request needs `Authorization: Bearer TOKEN`; the token is random per start and
//! written to `<datadir>/<network>/.cookie` (mode 0600), unless `--api-token` sets one.
//! Errors are JSON `{"code": "...", "message": "..."}`; bad input is a 400 that says what is
//! wrong. `GET /v1/events` is a server-sent-events stream of the node's events.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use meshd_actors::config::{ConfigUpdate, NodeConfig};
use meshd_actors::events::{EventError, EventKind};
use meshd_actors::node::Node;
use meshd_actors::shared::bans::parse_subnet;
use meshd_actors::shared::peers::{PeerId, PeerInfo};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::settings::{parse_bytes, parse_duration};

/// Shared by the handlers.
#[derive(Clone)]
pub struct ApiState {
    node: Arc<Node>,
    token: Arc<String>,
    process: Arc<Process>,
}

/// What the process knows of itself beyond the node: for `/v1/status` and `/v1/stop`.
pub struct Process {
    /// When the process started.
    pub started: SystemTime,
    /// Where the admin API and the metrics are served.
    pub api: Option<SocketAddr>,
    /// See `api`.
    pub metrics: Option<SocketAddr>,
    /// Notified by `POST /v1/stop`: the process stops as on SIGTERM.
    pub stop: Arc<tokio::sync::Notify>,
    /// Where the JSON-RPC is served (`--rpc`).
    pub rpc: Option<SocketAddr>,
    /// The log filter in force (`--log-level`, or the default).
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: &'static str,
    /// The `--rpcauth` users' names.
    pub rpc_users: Vec<String>,
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }
    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }
    /// A part of the node that is not running (the overlay without `--overlay`).
    fn not_running(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "not_running",
            message: message.into(),
        }
    }
    fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_IMPLEMENTED,
            code: "not_implemented",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// 32 random bytes in hex: a cookie's secret.
pub fn random_secret() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Writes the cookie file (private and atomic, as every state file: see
/// `persist::write_atomic`) and returns the token.
pub fn write_cookie(datadir: &Path) -> std::io::Result<(String, PathBuf)> {
    let token = random_secret();
    let path = datadir.join(".cookie");
    meshd_actors::persist::write_atomic(&path, token.as_bytes())?;
    Ok((token, path))
}

fn ts(t: Option<SystemTime>) -> Value {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(Value::Null, |d| json!(d.as_secs()))
}

/// When a monotonic instant was, as unix seconds.
fn ago(t: Option<std::time::Instant>) -> Value {
    t.map_or(Value::Null, |t| {
        ts(SystemTime::now().checked_sub(t.elapsed()))
    })
}

fn secs(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| json!(d.as_secs_f64()))
}

fn peer_json(node: &Node, p: &PeerInfo) -> Value {
    json!({
        "id": p.id.0,
        // Onion and I2P peers in full (their internal address is never shown).
        "address": p.address(),
        "network": p.network().name(),
        "local_address": p.local_addr.map(|a| a.to_string()),
        "direction": p.direction.as_str(),
        "connection_type": p.connection_type,
        "state": p.state.as_str(),
        "services": format!("0x{:x}", p.services),
        // Core's servicesnames.
        "services_names": crate::rpc::service_names(p.services),
        "protocol_version": p.version,
        "user_agent": p.user_agent,
        // Core's getpeerinfo: transport_protocol_type and session_id.
        "transport": p.transport,
        "session_id": p.session_id,
        "start_height": p.start_height,
        // The best height the peer is known to have: its version, then the headers it sent.
        "synced_height": p.synced_height.max(p.start_height.max(0) as u32),
        // Times as unix seconds, named *_time; durations in seconds.
        "connected_time": ts(Some(p.connected_since)),
        "last_send_time": ts(p.last_send),
        "last_receive_time": ts(p.last_receive),
        "last_block_time": ago(p.last_block_at),
        "last_transaction_time": ago(p.last_tx_at),
        "bytes_sent": p.bytes_sent,
        "bytes_received": p.bytes_received,
        "bytes_sent_per_command": p.bytes_sent_per_command,
        "bytes_received_per_command": p.bytes_received_per_command,
        "ping_last": secs(p.ping_last),
        "ping_min": secs(p.ping_min),
        "ping_in_flight": secs(p.ping_wait),
        "restarts": node.restarts_of(&p.addr),
        "misbehavior_score": p.misbehavior,
        // Core's getpeerinfo `mapped_as`: the AS under --asmap, absent without one.
        "mapped_as": p.mapped_as,
        // Core's getpeerinfo: we chose it to announce blocks with cmpctblock at once
        // (BIP152 high-bandwidth), and it chose us.
        "bip152_hb_to": p.bip152_hb_to,
        "bip152_hb_from": p.bip152_hb_from,
        // Its libp2p overlay's peer id, when it told us (meshd's `overlayaddr`).
        "overlay_peer_id": p.overlay_peer_id,
    })
}

/// A duration in the config's JSON: seconds, a whole number when it is one.
fn dur(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        json!(d.as_secs())
    } else {
        json!(d.as_secs_f64())
    }
}

/// The configuration as JSON, keys named as the flags.
pub fn config_json(c: &NodeConfig) -> Value {
    let list = |v: &[SocketAddr]| {
        v.iter()
            .map(|a| meshd_actors::shared::overlay::display_addr(*a, c.overlay_peer(*a).as_ref()))
            .collect::<Vec<_>>()
    };
    // Credentials are never shown.
    let proxy = |p: Option<&meshd_actors::config::ProxyConfig>| p.map(|p| p.addr.to_string());
    json!({
        "network": c.network.name(),
        "datadir": c.datadir.display().to_string(),
        "listen": list(&c.listen),
        "connect": list(&c.connect),
        "addnode": list(&c.addnode),
        "max-outbound": c.slots.outbound,
        "max-block-relay-only": c.slots.block_relay,
        "max-inbound": c.slots.inbound,
        "max-connections": c.slots.total,
        "max-upload-rate": c.max_upload_rate,
        "max-download-rate": c.max_download_rate,
        "peer-max-upload-rate": c.peer_max_upload_rate,
        "peer-max-download-rate": c.peer_max_download_rate,
        "handshake-timeout": dur(c.handshake_timeout),
        "ping-interval": dur(c.ping_interval),
        "ping-timeout": dur(c.ping_timeout),
        "connect-timeout": dur(c.connect_timeout),
        "min-protocol-version": c.min_protocol_version,
        "services": format!("0x{:x}", c.services.to_u64()),
        "required-services": format!("0x{:x}", c.required_services.to_u64()),
        "ban-user-agent": c.banned_user_agents,
        "ban-threshold": c.ban_threshold,
        "ban-duration": dur(c.ban_duration),
        "ban-local-peers": c.ban_local_peers,
        "v2transport": c.v2_enabled(),
        "proxy": proxy(c.proxy.as_ref()),
        "onion": proxy(c.onion_route()),
        "proxy-randomize": c.proxy_randomize,
        "onlynet": c.onlynet.iter().map(|n| n.name()).collect::<Vec<_>>(),
        "reachable": c.reachable_networks().iter().map(|n| n.name()).collect::<Vec<_>>(),
        "torcontrol": c.tor_control.map(|a| a.to_string()),
        "torcontrol-null-auth": c.tor_null_auth,
        "listenonion": c.listen_onion,
        "natpmp": c.natpmp,
        "upnp": c.upnp,
        "overlay": c.overlay.enabled,
        "overlay-listen": c.overlay.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "overlay-bootstrap": c.overlay.bootstrap.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "overlay-mdns": c.overlay.mdns,
        "overlay-relay-service": c.overlay.relay_service,
        "overlay-topic": c.overlay.topics,
        "overlay-cluster-threshold": c.overlay.cluster_threshold,
        // How many hints were loaded from --header-hints, and the last one's height.
        "header-hints": c.header_hints.len(),
        "asmap": c.asmap.as_ref().map(|m| m.version().to_string()),
        "header-hints-last-height": c.header_hints.last().map_or(0, |h| h.0),
        "restart-base-delay": dur(c.restart.base_delay),
        "restart-max-delay": dur(c.restart.max_delay),
        // null: no limit, manual peers are never given up.
        "restart-max": (c.restart.max_restarts != meshd_actors::manager::restart::NO_RESTART_LIMIT)
            .then_some(c.restart.max_restarts),
        "restart-window": dur(c.restart.window),
        "restart-stable-after": dur(c.restart.stable_after),
        "dns-server": list(&c.dns_servers),
        "dns-seed": c.dns_seeds,
        "externalip": list(&c.external_addrs),
        "distinct-local-groups": c.distinct_local_groups,
        "addrbook-save-interval": dur(c.addrbook_save_interval),
        "stun-server": c.stun_servers,
        "stun-timeout": dur(c.stun_timeout),
        "stun-interval": dur(c.stun_interval),
        "max-block-message-size": c.max_block_message_size,
        "blocks": if c.fetch_blocks { "tip" } else { "none" },
        "compact-blocks": if c.compact_blocks { "on" } else { "off" },
        "keep-blocks": c.keep_blocks,
        "tx-relay": match c.tx_relay {
            meshd_actors::config::TxRelay::Vouched => "vouched",
            meshd_actors::config::TxRelay::All => "all",
            meshd_actors::config::TxRelay::None => "none",
        },
        "tx-pool-max-count": c.tx_pool_max_count,
        "tx-pool-max-bytes": c.tx_pool_max_bytes,
        "tx-pool-max-age": dur(c.tx_pool_max_age),
        "no-trickle": !c.trickle,
        "sync-stall-timeout": dur(c.sync_stall_timeout),
        "max-tip-age": dur(c.max_tip_age),
        "minimum-chain-work": c.minimum_chain_work.map(|w| format!("{w:x}")),
        "upload-burst": c.upload_burst,
        "download-burst": c.download_burst,
        "peer-burst": c.peer_burst,
        "whitelist": c
            .whitelist
            .iter()
            .map(|w| format!("{}@{}", w.permissions.names().join(","), w.subnet))
            .collect::<Vec<_>>(),
        // The fleet's keys (credentials never shown), null without --nats.
        "nats": c.fleet.as_ref().map(|f| f.url.clone()),
        "fleet": c.fleet.as_ref().map(|f| f.fleet.clone()),
        "node-name": c.fleet.as_ref().map(|f| f.node_name.clone()),
        "fleet-max-age": c.fleet.as_ref().map(|f| dur(f.max_age)),
        "fleet-max-bytes": c.fleet.as_ref().map(|f| f.max_bytes),
        "fleet-buffer": c.fleet.as_ref().map(|f| f.buffer),
        "fleet-heartbeat-interval": c.fleet.as_ref().map(|f| dur(f.heartbeat_interval)),
        "fleet-apply-bans": c.fleet.as_ref().map(|f| f.apply_bans),
        "fleet-trusted-keys": c.fleet.as_ref().map(|f| f.trusted_keys.len()),
        "fleet-replicas": c.fleet.as_ref().map(|f| f.replicas),
    })
}

/// Keys `PATCH /v1/config` accepts (the runtime-changeable ones).
pub const RUNTIME_KEYS: &[&str] = &[
    "max-outbound",
    "max-block-relay-only",
    "max-inbound",
    "max-connections",
    "max-upload-rate",
    "max-download-rate",
    "peer-max-upload-rate",
    "peer-max-download-rate",
    "ping-interval",
    "ping-timeout",
    "handshake-timeout",
    "ban-threshold",
    "ban-duration",
];

fn text_of(key: &str, v: &Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(ApiError::bad(format!(
            "{key}: expected a number or a string"
        ))),
    }
}

fn u32_of(key: &str, v: &Value) -> Result<u32, ApiError> {
    text_of(key, v)?
        .parse()
        .map_err(|_| ApiError::bad(format!("{key}: expected a whole number")))
}

/// Turns a PATCH body into a [`ConfigUpdate`]; keys that need a restart are refused by name.
pub fn parse_update(body: &Map<String, Value>, known: &Value) -> Result<ConfigUpdate, ApiError> {
    let mut u = ConfigUpdate::default();
    for (key, v) in body {
        let k = key.as_str();
        let bytes =
            |v: &Value| parse_bytes(k, &text_of(k, v)?).map_err(|e| ApiError::bad(e.to_string()));
        let duration = |v: &Value| {
            parse_duration(k, &text_of(k, v)?).map_err(|e| ApiError::bad(e.to_string()))
        };
        match k {
            "max-outbound" => u.max_outbound = Some(u32_of(k, v)?),
            "max-block-relay-only" => u.max_block_relay_only = Some(u32_of(k, v)?),
            "max-inbound" => u.max_inbound = Some(u32_of(k, v)?),
            "max-connections" => u.max_connections = Some(u32_of(k, v)?),
            "max-upload-rate" => u.max_upload_rate = Some(bytes(v)?),
            "max-download-rate" => u.max_download_rate = Some(bytes(v)?),
            "peer-max-upload-rate" => u.peer_max_upload_rate = Some(bytes(v)?),
            "peer-max-download-rate" => u.peer_max_download_rate = Some(bytes(v)?),
            "ping-interval" => u.ping_interval = Some(duration(v)?),
            "ping-timeout" => u.ping_timeout = Some(duration(v)?),
            "handshake-timeout" => u.handshake_timeout = Some(duration(v)?),
            "ban-threshold" => u.ban_threshold = Some(u32_of(k, v)?),
            "ban-duration" => u.ban_duration = Some(duration(v)?),
            other if known.get(other).is_some() => {
                return Err(ApiError::bad(format!(
                "{other} cannot change while the node runs; set it in the config file and restart \
                     (runtime keys: {})",
                RUNTIME_KEYS.join(", ")
            )))
            }
            other => return Err(ApiError::bad(format!("unknown config key {other:?}"))),
        }
    }
    Ok(u)
}

async fn get_peers(State(s): State<ApiState>) -> ApiResult {
    let peers: Vec<Value> = s
        .node
        .peers()
        .iter()
        .map(|p| peer_json(&s.node, p))
        .collect();
    Ok(Json(json!(peers)))
}

#[derive(Deserialize)]
struct AddPeer {
    address: String,
    #[serde(default)]
    onetry: bool,
}

async fn add_peer(
    State(s): State<ApiState>,
    body: Result<Json<AddPeer>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let Json(req) = body.map_err(|e| {
        ApiError::bad(format!(
            "expected {{\"address\": \"IP:PORT\", \"onetry\": bool}}: {e}"
        ))
    })?;
    let port = s.node.profile().default_port;
    let addr = crate::settings::parse_endpoint("address", &req.address, port)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    if !s.node.connect(addr, !req.onetry).await {
        return Err(ApiError::unavailable("the node is stopping"));
    }
    Ok(Json(
        json!({"address": addr.to_string(), "onetry": req.onetry}),
    ))
}

async fn delete_peer(State(s): State<ApiState>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad(format!("peer id {id:?} is not a number")))?;
    if s.node.disconnect(PeerId(id)).await {
        Ok(Json(json!({"disconnected": id})))
    } else {
        Err(ApiError::not_found(format!("no peer with id {id}")))
    }
}

/// The manual peers and their state (Core's getaddednodeinfo).
async fn get_added_nodes(State(s): State<ApiState>) -> ApiResult {
    Ok(Json(json!(s.node.added_nodes().await)))
}

async fn get_bans(State(s): State<ApiState>) -> ApiResult {
    let bans: Vec<Value> = s
        .node
        .bans()
        .await
        .iter()
        .map(|b| {
            json!({
                "subnet": b.subnet.to_string(),
                "created_time": b.created,
                "until_time": b.until,
                "reason": b.reason.label(),
                "detail": b.reason.detail(),
                // The fleet node whose advisory this ban applies (--fleet-apply-bans).
                "origin": b.reason.origin(),
            })
        })
        .collect();
    Ok(Json(json!(bans)))
}

#[derive(Deserialize)]
struct AddBan {
    subnet: String,
    duration: Option<Value>,
}

async fn add_ban(
    State(s): State<ApiState>,
    body: Result<Json<AddBan>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let Json(req) = body.map_err(|e| {
        ApiError::bad(format!(
            "expected {{\"subnet\": \"IP or CIDR\", \"duration\": \"24h\"}}: {e}"
        ))
    })?;
    let subnet = parse_subnet(&req.subnet).map_err(ApiError::bad)?;
    let duration = match &req.duration {
        None => s.node.config().ban_duration,
        Some(v) => parse_duration("duration", &text_of("duration", v)?)
            .map_err(|e| ApiError::bad(e.to_string()))?,
    };
    let entry = s
        .node
        .ban(subnet, duration)
        .await
        .ok_or_else(|| ApiError::unavailable("the node is stopping"))?;
    Ok(Json(
        json!({"subnet": entry.subnet.to_string(), "until_time": entry.until}),
    ))
}

async fn delete_ban(State(s): State<ApiState>, UrlPath(subnet): UrlPath<String>) -> ApiResult {
    let net = parse_subnet(&subnet).map_err(ApiError::bad)?;
    if s.node.unban(net).await {
        Ok(Json(json!({"unbanned": net.to_string()})))
    } else {
        Err(ApiError::not_found(format!("no ban on {net}")))
    }
}

/// The libp2p overlay: whether it is configured and runs, its status (peer id, addresses,
/// AutoNAT's reachability, DHT table, topics, relay reservations and service) and its peers.
async fn get_overlay(State(s): State<ApiState>) -> ApiResult {
    let c = s.node.config();
    let view = s.node.overlay();
    let (status, peers) = match view {
        Some((status, peers)) => (Some(status), peers),
        None => (None, Vec::new()),
    };
    Ok(Json(json!({
        "enabled": c.overlay.enabled,
        "running": status.is_some(),
        "status": status,
        "peers": peers,
    })))
}

#[derive(Deserialize)]
struct FindQuery {
    topic: Option<String>,
}

/// The overlay peers that serve a topic (`?topic=`), found by a DHT walk.
async fn find_overlay_topic(State(s): State<ApiState>, Query(q): Query<FindQuery>) -> ApiResult {
    let topic = q
        .topic
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .ok_or_else(|| ApiError::bad("topic: 1 to 128 bytes expected (?topic=...)"))?;
    let providers = s
        .node
        .overlay_find(&topic)
        .await
        .map_err(ApiError::not_running)?;
    Ok(Json(json!({"topic": topic, "providers": providers})))
}

async fn get_network(State(s): State<ApiState>) -> ApiResult {
    let (used, max) = s.node.slots();
    let c = s.node.config();
    let stun = s.node.stun_report();
    Ok(Json(json!({
        "network": c.network.name(),
        "listen": s.node.listen_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "public_addresses": s.node.advertised_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        // Our onion service while Tor holds it (--torcontrol, --listenonion), in full.
        "onion_service": s.node.onion_service().map(|o| json!({
            "address": o.addr.display_with_port(o.port),
            "target": o.target.to_string(),
        })),
        "reachable_networks": c.reachable_networks().iter().map(|n| n.name()).collect::<Vec<_>>(),
        "proxy": c.proxy.as_ref().map(|p| p.addr.to_string()),
        "onion_proxy": c.onion_route().map(|p| p.addr.to_string()),
        // The fleet link (--nats): connected or not, published, dropped.
        "fleet": s.node.fleet_status(),
        "nat_type": stun.as_ref().map(|r| r.nat_type.label()),
        // The listening port's mapping on the gateway (--natpmp, --upnp), or null when
        // mapping is off or has nothing to map.
        "port_mapping": s.node.port_map(),
        // The libp2p overlay in short (--overlay; all of it at /v1/overlay), or null.
        "overlay": s.node.overlay().map(|(o, _)| json!({
            "peer_id": o.peer_id,
            "reachability": o.reachability,
            "peers": o.peers,
        })),
        "stun_servers": c.stun_servers,
        "stun_result": stun.as_ref().map(|r| json!({
            "nat_type": r.nat_type.label(),
            "public_address": r.public.map(|a| a.to_string()),
            "mapping": r.mapping,
            "filtering": r.filtering,
            "answered_by": r.server.map(|a| a.to_string()),
        })),
        "slots": {
            "outbound": {"used": used.outbound, "max": max.outbound},
            "block_relay_only": {"used": used.block_relay, "max": max.block_relay},
            "manual": {"used": used.manual, "max": max.manual},
            "inbound": {"used": used.inbound, "max": max.inbound},
            "total": {"used": used.total(), "max": max.total},
        },
        // Bytes per second; 0 is no limit.
        "limits": {
            "max_upload_rate": c.max_upload_rate,
            "max_download_rate": c.max_download_rate,
            "peer_max_upload_rate": c.peer_max_upload_rate,
            "peer_max_download_rate": c.peer_max_download_rate,
        },
    })))
}

async fn get_sync(State(s): State<ApiState>) -> ApiResult {
    let st = s.node.sync_status();
    Ok(Json(json!({
        "header_height": st.header_height,
        "best_header_hash": st.best_header_hash,
        "best_peer_height": st.best_peer_height,
        "progress": st.progress,
        // While syncing: the rate over the last half minute, the seconds left at it, and
        // the peer headers come from.
        "headers_per_sec": st.headers_per_sec,
        "eta": st.eta_secs,
        "sync_peer": st.sync_peer,
        "state": st.state.as_str(),
        "tx_pool": st.tx_pool,
        "blocks_kept": st.blocks_kept,
        // Why headers.dat is behind the chain (e.g. the disk is full), or null.
        "store_error": st.store_error,
    })))
}

#[derive(Deserialize)]
struct Generate {
    blocks: u32,
}

async fn generate(
    State(s): State<ApiState>,
    body: Result<Json<Generate>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    if !s.node.profile().is_regtest() {
        return Err(ApiError::bad("generate works on regtest only"));
    }
    let Json(req) = body.map_err(|e| ApiError::bad(format!("expected {{\"blocks\": N}}: {e}")))?;
    if req.blocks == 0 || req.blocks > 10_000 {
        return Err(ApiError::bad("blocks must be between 1 and 10000"));
    }
    let hashes = s.node.generate(req.blocks).await.map_err(ApiError::bad)?;
    Ok(Json(json!({
        "blocks": hashes.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        // The height of the last one mined (the status is current when generate answers).
        "tip_height": s.node.sync_status().header_height,
    })))
}

/// Header hints from the node's best chain (a hash every 2,000 heights), for
/// `meshd hints export`.
async fn get_hints(State(s): State<ApiState>) -> ApiResult {
    let hints = s.node.header_hints().await.map_err(ApiError::bad)?;
    Ok(Json(json!({
        "network": s.node.profile().id.name(),
        "interval": meshd_actors::sync::hints::HINT_INTERVAL,
        "hints": hints
            .iter()
            .map(|(height, hash)| json!({"height": height, "hash": hash.to_string()}))
            .collect::<Vec<_>>(),
    })))
}

/// The config with the process's own keys (served addresses, log level), which change
/// only with a restart.
fn full_config(s: &ApiState, c: &NodeConfig) -> Value {
    let mut v = config_json(c);
    let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string());
    v["api"] = json!(addr(s.process.api));
    v["metrics"] = json!(addr(s.process.metrics));
    v["rpc"] = json!(addr(s.process.rpc));
    v["log-level"] = json!(s.process.log_level);
    v["log-format"] = json!(s.process.log_format);
    // The users' names only: their hashes are secrets too.
    v["rpcauth"] = json!(s.process.rpc_users);
    v
}

async fn get_config(State(s): State<ApiState>) -> ApiResult {
    Ok(Json(full_config(&s, &s.node.config())))
}

async fn patch_config(
    State(s): State<ApiState>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let Json(v) =
        body.map_err(|e| ApiError::bad(format!("expected a JSON object of config keys: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::bad("expected a JSON object of config keys"))?;
    let update = parse_update(obj, &config_json(&s.node.config()))?;
    let next = s.node.update_config(update).await.map_err(ApiError::bad)?;
    info!(keys = ?obj.keys().collect::<Vec<_>>(), "configuration changed through the API (until restart)");
    Ok(Json(full_config(&s, &next)))
}

/// The fleet's JSON in the API's style (its wire format keeps its own names): unix times as
/// `*_time` and durations in seconds. `first_ms`/`last_ms` (unix milliseconds) become
/// `first_time`/`last_time`, other `*_ms` durations plain seconds, `*_secs` plain names,
/// and a heartbeat's `time` becomes `time` unchanged (already unix seconds).
fn api_style(v: &mut Value) {
    match v {
        Value::Array(a) => a.iter_mut().for_each(api_style),
        Value::Object(o) => {
            let old = std::mem::take(o);
            for (k, mut val) in old {
                api_style(&mut val);
                let secs_of_ms = |val: &Value| {
                    val.as_u64()
                        .map_or(val.clone(), |n| json!(n as f64 / 1000.0))
                };
                let (k, val) = if k == "first_ms" || k == "last_ms" {
                    (format!("{}_time", &k[..k.len() - 3]), secs_of_ms(&val))
                } else if let Some(base) = k.strip_suffix("_ms") {
                    (base.to_string(), secs_of_ms(&val))
                } else if let Some(base) = k.strip_suffix("_secs") {
                    (base.to_string(), val)
                } else {
                    (k, val)
                };
                o.insert(k, val);
            }
        }
        _ => {}
    }
}

/// One line per fleet node from its heartbeat (`meshd fleet status`).
async fn get_fleet(State(s): State<ApiState>) -> ApiResult {
    let Some(status) = s.node.fleet_status() else {
        return Err(ApiError::not_found(
            "not in a fleet (start the node with --nats URL)",
        ));
    };
    let nodes = s.node.fleet_nodes().await.map_err(ApiError::unavailable)?;
    let mut v = json!({
        "fleet": status,
        "nodes": nodes.iter().map(|(hb, stale)| {
            let mut v = json!(hb);
            v["stale"] = json!(stale);
            v
        }).collect::<Vec<_>>(),
    });
    api_style(&mut v);
    Ok(Json(v))
}

#[derive(Deserialize)]
struct PropagationQuery {
    last: Option<usize>,
}

/// Most blocks one propagation answer shows.
const MAX_PROPAGATION_BLOCKS: usize = 1000;

/// Per block, the first and last sighting across the fleet and the delay quantiles.
async fn get_propagation(
    State(s): State<ApiState>,
    Query(q): Query<PropagationQuery>,
) -> ApiResult {
    if s.node.fleet_status().is_none() {
        return Err(ApiError::not_found(
            "not in a fleet (start the node with --nats URL)",
        ));
    }
    let last = q.last.unwrap_or(10).clamp(1, MAX_PROPAGATION_BLOCKS);
    let blocks = s
        .node
        .fleet_propagation(last)
        .await
        .map_err(ApiError::unavailable)?;
    let mut v = json!(blocks);
    api_style(&mut v);
    Ok(Json(v))
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(rename = "type")]
    kinds: Option<String>,
    /// As `Last-Event-ID`, for clients that cannot set headers.
    since: Option<String>,
}

/// An event's JSON in the stream: named as `/v1/peers` names the same things (`id` for the
/// peer's id, `address`, `protocol_version`, `services` in hex), its time as unix seconds
/// (`time`), and its sequence number (`seq`, also the SSE `id`'s last part).
pub fn sse_json(e: &meshd_actors::events::Event) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    let Some(o) = v.as_object_mut() else {
        return v;
    };
    let mut renamed = Map::new();
    for (k, val) in std::mem::take(o) {
        let (k, val) = match (k.as_str(), val) {
            ("peer", val) => ("id".to_string(), val),
            ("addr", val) => ("address".to_string(), val),
            ("version", val) => ("protocol_version".to_string(), val),
            ("delay_ms", Value::Number(n)) => (
                "delay".to_string(),
                json!(n.as_u64().unwrap_or(0) as f64 / 1000.0),
            ),
            ("retry_in_secs", val) => ("retry_in".to_string(), val),
            // Unix seconds, named as every other time.
            ("until", val) => ("until_time".to_string(), val),
            ("services", Value::Number(n)) => (
                "services".to_string(),
                json!(format!("0x{:x}", n.as_u64().unwrap_or(0))),
            ),
            ("timestamp_ms", Value::Number(n)) => (
                "time".to_string(),
                json!(n.as_u64().unwrap_or(0) as f64 / 1000.0),
            ),
            (_, val) => (k, val),
        };
        renamed.insert(k, val);
    }
    // An onion or I2P peer is shown by its name, as in /v1/peers.
    if let Some(name) = renamed.remove("name").filter(|n| n.is_string()) {
        renamed.insert("address".into(), name);
    }
    if e.seq > 0 {
        renamed.insert("seq".into(), json!(e.seq));
    }
    Value::Object(renamed)
}

/// A resume point: `RUN-SEQ` as this server writes SSE ids (RUN is the node's start in
/// unix milliseconds, so an id from an earlier start is known as such). `None` for text
/// that is no such id, or a number this start has not given yet.
fn parse_resume(text: &str, run: u64, last_seq: u64) -> Option<u64> {
    let (r, seq) = text.trim().split_once('-')?;
    let (r, seq): (u64, u64) = (r.parse().ok()?, seq.parse().ok()?);
    if r != run {
        // Another start's numbers mean nothing here: all that is kept is new to it.
        return Some(0);
    }
    (seq <= last_seq).then_some(seq)
}

async fn events(
    State(s): State<ApiState>,
    headers: axum::http::HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let kinds: Vec<EventKind> = match q.kinds.as_deref().filter(|k| !k.is_empty()) {
        // Everything but per-message traffic, which comes only when asked for by name.
        None => EventKind::ALL
            .into_iter()
            .filter(|k| !k.is_traffic())
            .collect(),
        Some(list) => {
            let mut kinds = Vec::new();
            for name in list.split(',') {
                let k = EventKind::from_name(name.trim()).ok_or_else(|| {
                    let all: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
                    ApiError::bad(format!(
                        "unknown event type {name:?} (known: {})",
                        all.join(", ")
                    ))
                })?;
                kinds.push(k);
            }
            kinds
        }
    };
    let mut kinds = kinds;
    // The end of the stream is told whatever the filter.
    if !kinds.contains(&EventKind::NodeStopping) {
        kinds.push(EventKind::NodeStopping);
    }
    let run = s
        .process
        .started
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(q.since.clone());
    let resume = match resume {
        None => None,
        Some(text) => Some(
            parse_resume(&text, run, s.node.events_since(u64::MAX).last_seq).ok_or_else(|| {
                ApiError::bad(format!(
                    "Last-Event-ID {text:?} is not an id this stream gave (RUN-SEQ)"
                ))
            })?,
        ),
    };
    // Subscribed before the replay is read: nothing falls between the two.
    let live = s.node.subscribe_to(&kinds);
    let replay = resume
        .map(|seq| s.node.events_since(seq))
        .unwrap_or_default();
    let replayed_to = replay.events.last().map_or(0, |e| e.seq);
    let mut first: Vec<SseEvent> = Vec::new();
    if replay.lost > 0 {
        let data = json!({"type": "Lagged", "lost": replay.lost}).to_string();
        first.push(SseEvent::default().event("Lagged").data(data));
    }
    let sse = move |e: &meshd_actors::events::Event| {
        let mut ev = SseEvent::default().event(e.event.kind().name());
        if e.seq > 0 {
            ev = ev.id(format!("{run}-{}", e.seq));
        }
        ev.data(sse_json(e).to_string())
    };
    let mut stopping = false;
    for e in replay
        .events
        .iter()
        .filter(|e| kinds.contains(&e.event.kind()))
    {
        stopping |= e.event.kind() == EventKind::NodeStopping;
        first.push(sse(e));
    }
    struct Feed {
        first: std::collections::VecDeque<SseEvent>,
        live: meshd_actors::events::EventStream,
        replayed_to: u64,
        stopping: bool,
    }
    let feed = Feed {
        first: first.into(),
        live,
        replayed_to,
        stopping,
    };
    let body = stream::unfold(feed, move |mut f| async move {
        if let Some(ev) = f.first.pop_front() {
            return Some((Ok(ev), f));
        }
        if f.stopping {
            // NodeStopping was the last: the stream ends with it.
            return None;
        }
        loop {
            match f.live.recv().await {
                // Already replayed.
                Ok(e) if e.seq > 0 && e.seq <= f.replayed_to => continue,
                Ok(e) => {
                    f.stopping = e.event.kind() == EventKind::NodeStopping;
                    return Some((Ok(sse(&e)), f));
                }
                Err(EventError::Lagged(n)) => {
                    let data = json!({"type": "Lagged", "lost": n}).to_string();
                    return Some((Ok(SseEvent::default().event("Lagged").data(data)), f));
                }
                Err(EventError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(body).keep_alive(KeepAlive::default()))
}

fn same_token(a: &[u8], b: &[u8]) -> bool {
    // Constant time in the token's length: a timing side channel must not leak it.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same_token(t.trim().as_bytes(), s.token.as_bytes()));
    if !ok {
        return ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message:
                "missing or wrong token: send Authorization: Bearer <token from the .cookie file>"
                    .into(),
        }
        .into_response();
    }
    next.run(req).await
}

async fn fallback() -> ApiError {
    ApiError::not_found("no such route (routes live under /v1)")
}

/// `GET /v1/status`: what an operator asks first (version, uptime, where it lives and
/// listens, peers, tip, sync).
async fn get_status(State(s): State<ApiState>) -> ApiResult {
    let c = s.node.config();
    let st = s.node.sync_status();
    // Handshaken peers (getconnectioncount's), by direction.
    let peers: Vec<PeerInfo> = s
        .node
        .peers()
        .into_iter()
        .filter(|p| p.state == meshd_actors::shared::peers::PeerState::Connected)
        .collect();
    let inbound = peers
        .iter()
        .filter(|p| p.direction == meshd_actors::peer::Direction::Inbound)
        .count();
    let now = SystemTime::now();
    let uptime = now
        .duration_since(s.process.started)
        .unwrap_or_default()
        .as_secs();
    let datadir = std::path::absolute(&c.datadir).unwrap_or_else(|_| c.datadir.clone());
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "network": c.network.name(),
        "pid": std::process::id(),
        "start_time": ts(Some(s.process.started)),
        "uptime": uptime,
        "datadir": datadir.display().to_string(),
        "api": s.process.api.map(|a| a.to_string()),
        "metrics": s.process.metrics.map(|a| a.to_string()),
        "rpc": s.process.rpc.map(|a| a.to_string()),
        "p2p": s.node.listen_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "peers": {"inbound": inbound, "outbound": peers.len() - inbound, "total": peers.len()},
        "tip": {"height": st.header_height, "hash": st.best_header_hash},
        // Bytes on the wire with every peer since start (getnettotals').
        "bytes_received": s.node.net_totals().0,
        "bytes_sent": s.node.net_totals().1,
        "sync": {"state": st.state.as_str(), "progress": st.progress},
        "store_error": st.store_error,
    })))
}

/// How long `POST /v1/stop` lets its answer go before the stop begins.
const STOP_ANSWER_GRACE: Duration = Duration::from_millis(100);

/// `POST /v1/stop`: the node stops as on SIGTERM (peers closed, state saved), after this
/// answer (Core's `stop` RPC).
async fn post_stop(State(s): State<ApiState>) -> ApiResult {
    info!("stop requested over the admin API");
    // After this answer has had its moment to leave (the client also takes a connection
    // that closes before the answer as "stopping").
    let stop = s.process.stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(STOP_ANSWER_GRACE).await;
        stop.notify_one();
    });
    Ok(Json(json!({"stopping": true, "pid": std::process::id()})))
}

/// `GET /v1/health`, without a token: 200 `{"status": "ok"}` while the node runs and
/// keeps its headers on disk, 503 `{"status": "degraded", "reason": ...}` when it cannot
/// (a full disk), for load balancers and supervisors that hold no secret.
async fn health(State(s): State<ApiState>) -> Response {
    let st = s.node.sync_status();
    let uptime = SystemTime::now()
        .duration_since(s.process.started)
        .unwrap_or_default()
        .as_secs();
    match st.store_error {
        None => Json(json!({"status": "ok", "uptime": uptime})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "degraded", "reason": reason, "uptime": uptime})),
        )
            .into_response(),
    }
}

/// Serves the API until the process ends.
pub fn serve(listener: TcpListener, node: Arc<Node>, token: String, process: Process) {
    let state = ApiState {
        node,
        token: Arc::new(token),
        process: Arc::new(process),
    };
    let app = Router::new()
        .route("/v1/peers", get(get_peers).post(add_peer))
        .route("/v1/peers/{id}", delete(delete_peer))
        .route("/v1/addednodes", get(get_added_nodes))
        .route("/v1/bans", get(get_bans).post(add_ban))
        .route("/v1/bans/{*subnet}", delete(delete_ban))
        .route("/v1/network", get(get_network))
        .route("/v1/overlay", get(get_overlay))
        .route("/v1/overlay/find", get(find_overlay_topic))
        .route("/v1/sync", get(get_sync))
        .route("/v1/config", get(get_config).patch(patch_config))
        .route("/v1/generate", post(generate))
        .route("/v1/hints", get(get_hints))
        .route("/v1/events", get(events))
        .route("/v1/fleet", get(get_fleet))
        .route("/v1/fleet/propagation", get(get_propagation))
        .route("/v1/status", get(get_status))
        .route("/v1/stop", post(post_stop))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        // Outside the token check: a health probe holds no secret.
        .route("/v1/health", get(health))
        .with_state(state);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "api listening");
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "api server stopped");
        }
    });
}
