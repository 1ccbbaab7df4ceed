//! A Bitcoin Core-compatible JSON-RPC on `--rpc ADDR` (off by default), so tools written for
//! bitcoind (bitcoin-cli, python-bitcoinrpc, npm `bitcoin-core`, fork-observer) read meshd.
//!
//! As Core: HTTP POST of JSON-RPC 1.0/1.1 or 2.0, one request or a batch; HTTP Basic auth
//! with the cookie `__cookie__:HEX` in `DATADIR/<network>/.cookie-rpc` (written per start,
//! 0600) or a user from `--rpcauth USER:SALT$HMAC` (share/rpcauth/rpcauth.py's lines); Core's
//! method names, parameter names (positional or named), field names, and error codes
//! (`rpc/protocol.h`). A JSON-RPC 1.x error is HTTP 500 (404 for an unknown method, 400 for
//! a malformed request), 2.0 answers 200, as `httprpc.cpp` does.
//!
//! meshd validates headers (proof of work, difficulty, checkpoints) and checks the blocks it
//! fetches against their header (merkle root, mutation), but keeps no coins and checks no
//! scripts. So its active chain is the best header chain: `blocks` and `headers` are its
//! height, and it is a pruned node (`pruned`, `pruneheight`) serving only the blocks it
//! keeps; a branch's tip is `headers-only`, or `valid-headers` when its block is kept, never
//! `valid-fork`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::{Block, BlockHash, Transaction, Txid};
use meshd_actors::msg::{ChainAnswer, ChainQuery, GenerateOrder, HeaderInfo};
use meshd_actors::network::NetworkId;

pub use crate::rpc_auth::{RpcAuth, COOKIE_USER};
use meshd_actors::node::Node;
use meshd_actors::peer::Direction;
use meshd_actors::shared::bans::parse_subnet;
use meshd_actors::shared::peers::{PeerId, PeerInfo, PeerState};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tracing::{info, warn};

// Core's error codes (src/rpc/protocol.h).
/// Standard JSON-RPC 2.0: the request is not a valid request object.
pub const RPC_INVALID_REQUEST: i64 = -32600;
/// Standard JSON-RPC 2.0: no such method.
pub const RPC_METHOD_NOT_FOUND: i64 = -32601;
/// Standard JSON-RPC 2.0: the parameters do not fit the method.
pub const RPC_INVALID_PARAMS: i64 = -32602;
/// Standard JSON-RPC 2.0: the body is not JSON.
pub const RPC_PARSE_ERROR: i64 = -32700;
/// Core: a general error (also a call with the wrong number of parameters, answered with
/// the method's usage).
pub const RPC_MISC_ERROR: i64 = -1;
/// Core: a parameter of the wrong JSON type.
pub const RPC_TYPE_ERROR: i64 = -3;
/// Core: no such block or transaction.
pub const RPC_INVALID_ADDRESS_OR_KEY: i64 = -5;
/// Core: a parameter of the right type with a wrong value.
pub const RPC_INVALID_PARAMETER: i64 = -8;
/// Core: still starting (the header chain is loading).
pub const RPC_IN_WARMUP: i64 = -28;
/// Core: `addnode add` of a node already added, `setban add` of a subnet already banned.
pub const RPC_CLIENT_NODE_ALREADY_ADDED: i64 = -23;
/// Core: the node was not added.
pub const RPC_CLIENT_NODE_NOT_ADDED: i64 = -24;
/// Core: the node is not connected.
pub const RPC_CLIENT_NODE_NOT_CONNECTED: i64 = -29;
/// Core: a bad IP or subnet.
pub const RPC_CLIENT_INVALID_IP_OR_SUBNET: i64 = -30;

/// Largest request body taken.
///
/// # Security
/// Every method's parameters fit in a few hundred bytes; a batch of a thousand calls fits
/// in this, and a client cannot make the node buffer more.
pub const MAX_RPC_BODY_BYTES: usize = 1 << 20;

/// Most calls in one batch.
///
/// # Security
/// A batch is answered in one response held in memory; this bounds it (getpeerinfo of a
/// full node is about 300 kB, so a batch of these stays below a gigabyte only if bounded).
pub const MAX_RPC_BATCH: usize = 1000;

/// Requests answered at once; more get Core's 503 "Work queue depth exceeded".
///
/// # Security
/// Core runs 4 RPC threads and queues 64 requests (`-rpcthreads`, `-rpcworkqueue`); each
/// request here holds at most [`MAX_RPC_RESPONSE_BYTES`] of answer, so this bounds the
/// memory all callers together can make the node hold.
pub const MAX_RPC_IN_FLIGHT: usize = 16;

/// Longest a request may take, its body's read included (Core's `-rpcservertimeout`, 30 s).
///
/// # Security
/// A client that sends its body a byte at a time holds a slot this long at most.
pub const RPC_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes of answers one batch collects before its remaining calls are refused.
///
/// # Security
/// A 1 MiB batch of `getblock` verbosity 2 calls on kept 4 MB blocks would otherwise make
/// hundreds of megabytes of JSON.
pub const MAX_RPC_RESPONSE_BYTES: usize = 64 << 20;

/// How long a request with a wrong password waits for its 401, as Core's `httprpc.cpp`
/// (250 ms): guessing passwords over one connection becomes slow.
pub const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(250);

/// Core's default ban (`-bantime`, 24 h) when `setban add` gives no time.
const DEFAULT_BAN_TIME: Duration = Duration::from_secs(24 * 3600);

/// Writes `DIR/.cookie-rpc` as Core writes `.cookie` (`__cookie__:` and 32 random bytes in
/// hex), private and atomic as the API's cookie; returns the password.
pub fn write_rpc_cookie(datadir: &Path) -> std::io::Result<(String, PathBuf)> {
    let password = crate::api::random_secret();
    let path = datadir.join(".cookie-rpc");
    meshd_actors::persist::write_atomic(&path, format!("{COOKIE_USER}:{password}").as_bytes())?;
    Ok((password, path))
}

/// An error answer: Core's code and message.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// Core's code.
    pub code: i64,
    /// Its message.
    pub message: String,
}

fn rpc_err(code: i64, message: impl Into<String>) -> RpcError {
    RpcError {
        code,
        message: message.into(),
    }
}

type RpcResult = Result<Value, RpcError>;

/// Shared by the handler.
#[derive(Clone)]
struct RpcState {
    node: Arc<Node>,
    auth: Arc<RpcAuth>,
    started: SystemTime,
    stop: Arc<tokio::sync::Notify>,
    /// Held through a failed login's delay: one at a time for the whole server.
    auth_delay: Arc<tokio::sync::Mutex<()>>,
    /// Requests being answered.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Failed logins logged (a guessing client must not fill the disk).
    auth_log: Arc<std::sync::Mutex<LogBudget>>,
}

/// Failed-login lines logged per minute; the rest are only counted.
const AUTH_LOG_PER_MINUTE: u32 = 10;

/// A per-minute budget of log lines.
#[derive(Debug, Default)]
struct LogBudget {
    window: Option<std::time::Instant>,
    used: u32,
}

impl LogBudget {
    fn allow(&mut self, now: std::time::Instant) -> bool {
        if self
            .window
            .is_none_or(|w| now.saturating_duration_since(w) >= Duration::from_secs(60))
        {
            self.window = Some(now);
            self.used = 0;
        }
        self.used += 1;
        self.used <= AUTH_LOG_PER_MINUTE
    }
}

/// A method: its name, its parameters in order (names as Core's), and how many are required.
struct Method {
    name: &'static str,
    params: &'static [&'static str],
    required: usize,
}

const fn m(name: &'static str, params: &'static [&'static str], required: usize) -> Method {
    Method {
        name,
        params,
        required,
    }
}

/// Every method served, with Core's parameter names.
const METHODS: &[Method] = &[
    m("addnode", &["node", "command", "v2transport"], 2),
    m("clearbanned", &[], 0),
    m("disconnectnode", &["address", "nodeid"], 0),
    m("generatetoaddress", &["nblocks", "address", "maxtries"], 2),
    m("getaddednodeinfo", &["node"], 0),
    m("getbestblockhash", &[], 0),
    m("getblock", &["blockhash", "verbosity|verbose"], 1),
    m("getblockchaininfo", &[], 0),
    m("getblockcount", &[], 0),
    m("getblockhash", &["height"], 1),
    m("getblockheader", &["blockhash", "verbose"], 1),
    m("getchaintips", &[], 0),
    m("getconnectioncount", &[], 0),
    m("getnettotals", &[], 0),
    m("getnetworkinfo", &[], 0),
    m("getpeerinfo", &[], 0),
    m("getrawmempool", &["verbose", "mempool_sequence"], 0),
    m(
        "getrawtransaction",
        &["txid", "verbosity|verbose", "blockhash"],
        1,
    ),
    m("help", &["command"], 0),
    m("listbanned", &[], 0),
    m("ping", &[], 0),
    m("setban", &["subnet", "command", "bantime", "absolute"], 2),
    m("stop", &[], 0),
    m("uptime", &[], 0),
];

fn usage(method: &Method) -> String {
    let mut s = method.name.to_string();
    // An alias (`verbosity|verbose`, as Core names them) shows by its first name.
    for (i, p) in method
        .params
        .iter()
        .map(|p| p.split('|').next().unwrap_or(p))
        .enumerate()
    {
        if i < method.required {
            s += &format!(" \"{p}\"");
        } else {
            s += &format!(" ( \"{p}\" )");
        }
    }
    s
}

/// A call's arguments, by position whichever way they were given.
struct Args {
    values: Vec<Option<Value>>,
}

impl Args {
    /// Core's rules: positional up to the method's count, or named (an unknown name is
    /// -8); JSON null counts as not given; a required one missing gets the usage (-1).
    fn new(method: &Method, params: Option<&Value>) -> Result<Args, RpcError> {
        let mut values: Vec<Option<Value>> = vec![None; method.params.len()];
        match params {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                if list.len() > method.params.len() {
                    return Err(rpc_err(RPC_MISC_ERROR, usage(method)));
                }
                for (slot, v) in values.iter_mut().zip(list) {
                    *slot = Some(v.clone()).filter(|v| !v.is_null());
                }
            }
            Some(Value::Object(named)) => {
                for (key, v) in named {
                    let at = method
                        .params
                        .iter()
                        .position(|p| p.split('|').any(|name| name == key))
                        .ok_or_else(|| {
                            rpc_err(
                                RPC_INVALID_PARAMETER,
                                format!("Unknown named parameter {key}"),
                            )
                        })?;
                    values[at] = Some(v.clone()).filter(|v| !v.is_null());
                }
            }
            Some(_) => {
                return Err(rpc_err(
                    RPC_INVALID_REQUEST,
                    "Params must be an array or object",
                ))
            }
        }
        if values[..method.required].iter().any(Option::is_none) {
            return Err(rpc_err(RPC_MISC_ERROR, usage(method)));
        }
        Ok(Args { values })
    }

    fn get(&self, i: usize) -> Option<&Value> {
        self.values.get(i).and_then(Option::as_ref)
    }

    fn str(&self, i: usize) -> Result<Option<&str>, RpcError> {
        match self.get(i) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(type_error(v, "string")),
        }
    }

    fn int(&self, i: usize) -> Result<Option<i64>, RpcError> {
        match self.get(i) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| rpc_err(RPC_TYPE_ERROR, "JSON integer out of range")),
            Some(v) => Err(type_error(v, "number")),
        }
    }

    fn bool(&self, i: usize) -> Result<Option<bool>, RpcError> {
        match self.get(i) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(type_error(v, "bool")),
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Core's `UniValue` type mismatch message.
fn type_error(v: &Value, expected: &str) -> RpcError {
    rpc_err(
        RPC_TYPE_ERROR,
        format!(
            "JSON value of type {} is not of expected type {expected}",
            type_name(v)
        ),
    )
}

/// A hash parameter, as Core's `ParseHashV`.
fn hash_param<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, RpcError> {
    if text.len() != 64 {
        return Err(rpc_err(
            RPC_INVALID_PARAMETER,
            format!(
                "{name} must be of length 64 (not {}, for '{text}')",
                text.len()
            ),
        ));
    }
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(rpc_err(
            RPC_INVALID_PARAMETER,
            format!("{name} must be hexadecimal string (not '{text}')"),
        ));
    }
    text.parse()
        .map_err(|_| rpc_err(RPC_INVALID_PARAMETER, format!("{name} is not a hash")))
}

/// Core's `GetServicesNames`.
pub fn service_names(bits: u64) -> Vec<String> {
    const NAMES: &[(u64, &str)] = &[
        (1 << 0, "NETWORK"),
        (1 << 2, "BLOOM"),
        (1 << 3, "WITNESS"),
        (1 << 6, "COMPACT_FILTERS"),
        (1 << 10, "NETWORK_LIMITED"),
        (1 << 11, "P2P_V2"),
    ];
    (0..64)
        .map(|i| 1u64 << i)
        .filter(|bit| bits & bit != 0)
        .map(|bit| {
            NAMES.iter().find(|(b, _)| *b == bit).map_or_else(
                || format!("UNKNOWN[2^{}]", bit.trailing_zeros()),
                |(_, n)| n.to_string(),
            )
        })
        .collect()
}

fn unix(t: Option<SystemTime>) -> u64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

fn now_unix() -> u64 {
    unix(Some(SystemTime::now()))
}

/// Core's `GetDifficulty`: the genesis target's mantissa over this one's, by bytes of shift.
fn difficulty(bits: u32) -> f64 {
    let mut shift = (bits >> 24) & 0xff;
    let mantissa = (bits & 0x00ff_ffff) as f64;
    if mantissa == 0.0 {
        return 0.0;
    }
    let mut diff = 65535.0 / mantissa;
    while shift < 29 {
        diff *= 256.0;
        shift += 1;
    }
    while shift > 29 {
        diff /= 256.0;
        shift -= 1;
    }
    diff
}

fn target_hex(bits: bitcoin::CompactTarget) -> String {
    let t = bitcoin::Target::from_compact(bits).to_be_bytes();
    t.iter().map(|b| format!("{b:02x}")).collect()
}

fn chainwork_hex(work: u128) -> String {
    format!("{work:064x}")
}

/// Core's chain names.
fn chain_name(id: NetworkId) -> &'static str {
    match id {
        NetworkId::Mainnet | NetworkId::BsvMainnet => "main",
        NetworkId::Testnet3 | NetworkId::BsvTestnet => "test",
        NetworkId::Testnet4 => "testnet4",
        NetworkId::Signet => "signet",
        NetworkId::Regtest | NetworkId::BsvRegtest => "regtest",
        NetworkId::BsvStn => "stn",
    }
}

fn bitcoin_network(id: NetworkId) -> bitcoin::Network {
    match id {
        NetworkId::Mainnet | NetworkId::BsvMainnet => bitcoin::Network::Bitcoin,
        NetworkId::Testnet3 | NetworkId::BsvTestnet | NetworkId::BsvStn => {
            bitcoin::Network::Testnet
        }
        NetworkId::Testnet4 => bitcoin::Network::Testnet4,
        NetworkId::Signet => bitcoin::Network::Signet,
        NetworkId::Regtest | NetworkId::BsvRegtest => bitcoin::Network::Regtest,
    }
}

/// getnetworkinfo's `version`: the Core release whose RPC answers meshd's follow (28.0),
/// since tools gate on it (bitcoin-cli's `-netinfo` refuses a server below 209900);
/// `subversion` names meshd and its own version.
const RPC_COMPAT_VERSION: u64 = 280_000;

fn peer_json(p: &PeerInfo) -> Value {
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let ago = |t: Option<std::time::Instant>| {
        t.map_or(0, |t| now_unix().saturating_sub(t.elapsed().as_secs()))
    };
    let mut v = json!({
        "id": p.id.0,
        "addr": p.address(),
        "network": p.network().name(),
        "services": format!("{:016x}", p.services),
        "servicesnames": service_names(p.services),
        "relaytxes": p.relay,
        "lastsend": unix(p.last_send),
        "lastrecv": unix(p.last_receive),
        "last_transaction": ago(p.last_tx_at),
        "last_block": ago(p.last_block_at),
        "bytessent": p.bytes_sent,
        "bytesrecv": p.bytes_received,
        "conntime": unix(Some(p.connected_since)),
        "timeoffset": 0,
        "version": p.version,
        "subver": p.user_agent,
        "inbound": p.direction == Direction::Inbound,
        "bip152_hb_to": p.bip152_hb_to,
        "bip152_hb_from": p.bip152_hb_from,
        "startingheight": p.start_height,
        "presynced_headers": -1,
        // The headers it showed us, not the height it claimed in its version.
        "synced_headers": p.synced_height,
        "synced_blocks": -1,
        "inflight": [],
        "addr_relay_enabled": p.connection_type != "block-relay-only",
        "permissions": p.permissions,
        "bytessent_per_msg": p.bytes_sent_per_command,
        "bytesrecv_per_msg": p.bytes_received_per_command,
        "connection_type": p.connection_type,
        "transport_protocol_type": p.transport,
        "session_id": p.session_id,
    });
    // Core leaves out what it does not know.
    if let Some(a) = p.local_addr {
        v["addrbind"] = json!(a.to_string());
    }
    if let Some(t) = secs(p.ping_last) {
        v["pingtime"] = json!(t);
    }
    if let Some(t) = secs(p.ping_min) {
        v["minping"] = json!(t);
    }
    if let Some(t) = secs(p.ping_wait) {
        v["pingwait"] = json!(t);
    }
    if let Some(asn) = p.mapped_as {
        v["mapped_as"] = json!(asn);
    }
    v
}

fn header_json(hash: &BlockHash, info: &HeaderInfo) -> Value {
    let h = &info.header;
    let mut v = json!({
        "hash": hash.to_string(),
        "confirmations": info.best_height.map_or(-1, |best| i64::from(best) - i64::from(info.height) + 1),
        "height": info.height,
        "version": h.version.to_consensus(),
        "versionHex": format!("{:08x}", h.version.to_consensus()),
        "merkleroot": h.merkle_root.to_string(),
        "time": h.time,
        "mediantime": info.median_time_past,
        "nonce": h.nonce,
        "bits": format!("{:08x}", h.bits.to_consensus()),
        "target": target_hex(h.bits),
        "difficulty": difficulty(h.bits.to_consensus()),
        "chainwork": chainwork_hex(info.chainwork),
        "nTx": info.tx_count.unwrap_or(0),
    });
    if info.height > 0 {
        v["previousblockhash"] = json!(h.prev_blockhash.to_string());
    }
    if let Some(next) = info.next {
        v["nextblockhash"] = json!(next.to_string());
    }
    v
}

/// Core's `ScriptToAsmStr`: pushes of up to 4 bytes as numbers, longer ones in hex, small
/// integers as numbers, other opcodes by Core's names; `[error]` where the script breaks.
fn script_asm(script: &bitcoin::Script) -> String {
    use bitcoin::script::Instruction;
    let mut out: Vec<String> = Vec::new();
    for ins in script.instructions() {
        match ins {
            Err(_) => {
                out.push("[error]".into());
                break;
            }
            Ok(Instruction::PushBytes(b)) => {
                let bytes = b.as_bytes();
                if bytes.len() <= 4 {
                    out.push(script_num(bytes).to_string());
                } else {
                    out.push(bytes.iter().map(|x| format!("{x:02x}")).collect());
                }
            }
            Ok(Instruction::Op(op)) => {
                let code = op.to_u8();
                out.push(match code {
                    0x4f => "-1".into(),
                    0x51..=0x60 => (code - 0x50).to_string(),
                    0xb1 => "OP_CHECKLOCKTIMEVERIFY".into(),
                    0xb2 => "OP_CHECKSEQUENCEVERIFY".into(),
                    _ => op.to_string(),
                });
            }
        }
    }
    out.join(" ")
}

/// A minimally encoded script number (little-endian, sign in the top bit of the last byte).
fn script_num(bytes: &[u8]) -> i64 {
    let Some((&last, _)) = bytes.split_last() else {
        return 0;
    };
    let mut v: i64 = 0;
    for (i, b) in bytes.iter().enumerate() {
        v |= i64::from(*b) << (8 * i);
    }
    if last & 0x80 != 0 {
        let mask = !(0x80i64 << (8 * (bytes.len() - 1)));
        -(v & mask)
    } else {
        v
    }
}

/// Core's script type names (`GetTxnOutputType`).
fn script_type(s: &bitcoin::Script) -> &'static str {
    if s.is_p2pkh() {
        "pubkeyhash"
    } else if s.is_p2sh() {
        "scripthash"
    } else if s.is_p2wpkh() {
        "witness_v0_keyhash"
    } else if s.is_p2wsh() {
        "witness_v0_scripthash"
    } else if s.is_p2tr() {
        "witness_v1_taproot"
    } else if s.is_op_return() {
        "nulldata"
    } else if s.is_p2pk() {
        "pubkey"
    } else if s.is_multisig() {
        "multisig"
    } else if s.is_witness_program() {
        "witness_unknown"
    } else {
        "nonstandard"
    }
}

/// Core's `TxToUniv`, without the fee (meshd keeps no coins).
fn tx_json(tx: &Transaction, network: bitcoin::Network, with_hex: bool) -> Value {
    let vin: Vec<Value> = tx
        .input
        .iter()
        .map(|i| {
            let mut v = if tx.is_coinbase() {
                json!({"coinbase": i.script_sig.to_hex_string()})
            } else {
                json!({
                    "txid": i.previous_output.txid.to_string(),
                    "vout": i.previous_output.vout,
                    "scriptSig": {
                        "asm": script_asm(&i.script_sig),
                        "hex": i.script_sig.to_hex_string(),
                    },
                })
            };
            if !i.witness.is_empty() {
                v["txinwitness"] = json!(i
                    .witness
                    .iter()
                    .map(|w| w.iter().map(|b| format!("{b:02x}")).collect::<String>())
                    .collect::<Vec<_>>());
            }
            v["sequence"] = json!(i.sequence.0);
            v
        })
        .collect();
    let vout: Vec<Value> = tx
        .output
        .iter()
        .enumerate()
        .map(|(n, o)| {
            let mut spk = json!({
                "asm": script_asm(&o.script_pubkey),
                "hex": o.script_pubkey.to_hex_string(),
                "type": script_type(&o.script_pubkey),
            });
            if let Ok(a) = bitcoin::Address::from_script(&o.script_pubkey, network) {
                spk["address"] = json!(a.to_string());
            }
            json!({"value": o.value.to_btc(), "n": n, "scriptPubKey": spk})
        })
        .collect();
    let weight = tx.weight().to_wu();
    let mut v = json!({
        "txid": tx.compute_txid().to_string(),
        "hash": tx.compute_wtxid().to_string(),
        "version": tx.version.0,
        "size": tx.total_size(),
        "vsize": weight.div_ceil(4),
        "weight": weight,
        "locktime": tx.lock_time.to_consensus_u32(),
        "vin": vin,
        "vout": vout,
    });
    if with_hex {
        v["hex"] = json!(serialize_hex(tx));
    }
    v
}

impl RpcState {
    async fn query(&self, q: ChainQuery) -> Result<ChainAnswer, RpcError> {
        if self.node.sync_status().state == meshd_actors::msg::SyncState::Loading {
            return Err(rpc_err(RPC_IN_WARMUP, "Loading block index..."));
        }
        self.node
            .query(q)
            .await
            .map_err(|e| rpc_err(RPC_MISC_ERROR, e))
    }

    async fn header(&self, hash: BlockHash) -> Result<Option<HeaderInfo>, RpcError> {
        match self.query(ChainQuery::Header(hash)).await? {
            ChainAnswer::Header(h) => Ok(h),
            _ => Err(rpc_err(RPC_MISC_ERROR, "unexpected answer")),
        }
    }

    async fn summary(&self) -> Result<meshd_actors::msg::ChainSummary, RpcError> {
        match self.query(ChainQuery::Summary).await? {
            ChainAnswer::Summary(s) => Ok(s),
            _ => Err(rpc_err(RPC_MISC_ERROR, "unexpected answer")),
        }
    }

    async fn kept_block(&self, hash: BlockHash) -> Result<Arc<Block>, RpcError> {
        match self.query(ChainQuery::Block(hash)).await? {
            ChainAnswer::Block(Some(b), _) => Ok(b),
            ChainAnswer::Block(None, true) => {
                Err(rpc_err(RPC_MISC_ERROR, "Block not available (pruned data)"))
            }
            _ => Err(rpc_err(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")),
        }
    }

    fn network(&self) -> bitcoin::Network {
        bitcoin_network(self.node.profile().id)
    }

    /// The peers Core's getpeerinfo and getconnectioncount count: those with a socket
    /// (handshaking or connected), not dials still in progress.
    fn connected(&self) -> Vec<PeerInfo> {
        self.node
            .peers()
            .into_iter()
            .filter(|p| p.state != PeerState::Connecting)
            .collect()
    }

    /// The connected peer at `address`, as Core matches `disconnectnode`'s and
    /// `addnode onetry`'s address (the text it was reached by, or IP:PORT).
    fn peer_at(&self, address: &str) -> Option<PeerInfo> {
        let port = self.node.profile().default_port;
        let parsed = crate::settings::parse_endpoint("address", address, port).ok();
        self.node
            .peers()
            .into_iter()
            .find(|p| p.address() == address || Some(p.addr) == parsed)
    }

    async fn call(&self, name: &str, args: &Args) -> RpcResult {
        match name {
            "getpeerinfo" => Ok(json!(self
                .connected()
                .iter()
                .map(peer_json)
                .collect::<Vec<_>>())),
            "getconnectioncount" => Ok(json!(self.connected().len())),
            "getnettotals" => {
                let (recv, sent) = self.node.net_totals();
                let millis = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                Ok(json!({
                    "totalbytesrecv": recv,
                    "totalbytessent": sent,
                    "timemillis": millis,
                    // meshd has no -maxuploadtarget: Core's answer without one.
                    "uploadtarget": {
                        "timeframe": 86400,
                        "target": 0,
                        "target_reached": false,
                        "serve_historical_blocks": true,
                        "bytes_left_in_cycle": 0,
                        "time_left_in_cycle": 0,
                    },
                }))
            }
            "getnetworkinfo" => Ok(self.network_info()),
            "getaddednodeinfo" => {
                let added = self.node.added_nodes().await;
                let only = args.str(0)?;
                if let Some(node) = only {
                    if !added.iter().any(|a| a.address == node) {
                        return Err(rpc_err(
                            RPC_CLIENT_NODE_NOT_ADDED,
                            "Error: Node has not been added.",
                        ));
                    }
                }
                let peers = self.node.peers();
                Ok(json!(added
                    .iter()
                    .filter(|a| only.is_none_or(|n| n == a.address))
                    .map(|a| {
                        let peer = a.peer.and_then(|id| peers.iter().find(|p| p.id == id));
                        let addresses: Vec<Value> = peer
                            .filter(|_| a.connected)
                            .map(|p| vec![json!({"address": p.addr.to_string(), "connected": "outbound"})])
                            .unwrap_or_default();
                        json!({"addednode": a.address, "connected": a.connected, "addresses": addresses})
                    })
                    .collect::<Vec<_>>()))
            }
            "addnode" => self.addnode(args).await,
            "disconnectnode" => {
                let address = args.str(0)?.filter(|a| !a.is_empty());
                let nodeid = args.int(1)?;
                let peer = match (address, nodeid) {
                    (Some(a), None) => self.peer_at(a),
                    (None, Some(id)) => u64::try_from(id)
                        .ok()
                        .and_then(|id| self.node.peers().into_iter().find(|p| p.id == PeerId(id))),
                    _ => {
                        return Err(rpc_err(
                            RPC_INVALID_PARAMS,
                            "Only one of address and nodeid should be provided.",
                        ))
                    }
                };
                match peer {
                    Some(p) if self.node.disconnect(p.id).await => Ok(Value::Null),
                    _ => Err(rpc_err(
                        RPC_CLIENT_NODE_NOT_CONNECTED,
                        "Node not found in connected nodes",
                    )),
                }
            }
            "setban" => self.setban(args).await,
            "listbanned" => {
                let now = now_unix();
                Ok(json!(self
                    .node
                    .bans()
                    .await
                    .iter()
                    .map(|b| json!({
                        "address": b.subnet.to_string(),
                        "ban_created": b.created,
                        "banned_until": b.until,
                        "ban_duration": b.until.saturating_sub(b.created),
                        "time_remaining": b.until.saturating_sub(now),
                    }))
                    .collect::<Vec<_>>()))
            }
            "clearbanned" => {
                for b in self.node.bans().await {
                    self.node.unban(b.subnet).await;
                }
                Ok(Value::Null)
            }
            "ping" => {
                self.node.ping_all().await;
                Ok(Value::Null)
            }
            "uptime" => Ok(json!(SystemTime::now()
                .duration_since(self.started)
                .unwrap_or_default()
                .as_secs())),
            "stop" => {
                info!("stop requested over the JSON-RPC");
                let stop = self.stop.clone();
                tokio::spawn(async move {
                    // The answer leaves first, as Core's.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    stop.notify_one();
                });
                Ok(json!("meshd stopping"))
            }
            "getblockchaininfo" => self.blockchain_info().await,
            "getblockcount" => Ok(json!(self.summary().await?.height)),
            "getbestblockhash" => Ok(json!(self.summary().await?.tip.to_string())),
            "getblockhash" => {
                let height = args.int(0)?.unwrap_or(0);
                let hash = match u32::try_from(height) {
                    Ok(h) => match self.query(ChainQuery::HashAt(h)).await? {
                        ChainAnswer::Hash(hash) => hash,
                        _ => None,
                    },
                    Err(_) => None,
                };
                hash.map(|h| json!(h.to_string()))
                    .ok_or_else(|| rpc_err(RPC_INVALID_PARAMETER, "Block height out of range"))
            }
            "getblockheader" => {
                let hash: BlockHash = hash_param("blockhash", args.str(0)?.unwrap_or_default())?;
                let verbose = args.bool(1)?.unwrap_or(true);
                let info = self
                    .header(hash)
                    .await?
                    .ok_or_else(|| rpc_err(RPC_INVALID_ADDRESS_OR_KEY, "Block not found"))?;
                if verbose {
                    Ok(header_json(&hash, &info))
                } else {
                    Ok(json!(serialize_hex(&info.header)))
                }
            }
            "getchaintips" => match self.query(ChainQuery::Tips).await? {
                ChainAnswer::Tips(tips) => Ok(json!(tips
                    .iter()
                    .map(|t| json!({
                        "height": t.height,
                        "hash": t.hash.to_string(),
                        "branchlen": t.branch_len,
                        "status": t.status,
                    }))
                    .collect::<Vec<_>>())),
                _ => Err(rpc_err(RPC_MISC_ERROR, "unexpected answer")),
            },
            "getblock" => self.getblock(args).await,
            "getrawmempool" => {
                let verbose = args.bool(0)?.unwrap_or(false);
                if args.bool(1)?.unwrap_or(false) {
                    return Err(rpc_err(
                        RPC_INVALID_PARAMETER,
                        "meshd keeps no mempool sequence numbers",
                    ));
                }
                let ChainAnswer::Pool(pool) = self.query(ChainQuery::Pool).await? else {
                    return Err(rpc_err(RPC_MISC_ERROR, "unexpected answer"));
                };
                if !verbose {
                    return Ok(json!(pool
                        .iter()
                        .map(|t| t.txid.to_string())
                        .collect::<Vec<_>>()));
                }
                let now = now_unix();
                let mut out = Map::new();
                for t in &pool {
                    let vsize = t.weight.div_ceil(4);
                    let mut entry = json!({
                        "vsize": vsize,
                        "weight": t.weight,
                        "time": now.saturating_sub(t.age.as_secs()),
                        "wtxid": t.wtxid.to_string(),
                    });
                    // The fee, where every input's value is known (meshd keeps no coins, so
                    // only for transactions spending outputs of blocks it keeps).
                    if let Some(rate) = t.fee_rate {
                        let sats = rate.saturating_mul(vsize) / 1000;
                        let btc = bitcoin::Amount::from_sat(sats).to_btc();
                        entry["fees"] = json!({"base": btc, "modified": btc});
                    }
                    out.insert(t.txid.to_string(), entry);
                }
                Ok(Value::Object(out))
            }
            "getrawtransaction" => self.getrawtransaction(args).await,
            "generatetoaddress" => self.generatetoaddress(args).await,
            "help" => match args.str(0)? {
                None => Ok(json!(METHODS
                    .iter()
                    .map(usage)
                    .collect::<Vec<_>>()
                    .join("\n"))),
                Some(c) => METHODS
                    .iter()
                    .find(|m| m.name == c)
                    .map(|m| json!(usage(m)))
                    .ok_or_else(|| rpc_err(RPC_MISC_ERROR, format!("help: unknown command: {c}"))),
            },
            _ => Err(rpc_err(RPC_METHOD_NOT_FOUND, "Method not found")),
        }
    }

    fn network_info(&self) -> Value {
        let c = self.node.config();
        let connected = self.connected();
        let inbound = connected
            .iter()
            .filter(|p| p.direction == Direction::Inbound)
            .count();
        let reachable = c.reachable_networks();
        let networks: Vec<Value> = ["ipv4", "ipv6", "onion", "i2p", "cjdns"]
            .iter()
            .map(|name| {
                let net = meshd_actors::shared::overlay::Network::parse(name);
                let is_reachable = net.is_some_and(|n| reachable.contains(&n));
                let proxy = match *name {
                    "onion" => c.onion_route().map(|p| p.addr.to_string()),
                    "ipv4" | "ipv6" => c.proxy.as_ref().map(|p| p.addr.to_string()),
                    _ => None,
                };
                json!({
                    "name": name,
                    "limited": !is_reachable,
                    "reachable": is_reachable,
                    "proxy": proxy.unwrap_or_default(),
                    "proxy_randomize_credentials": c.proxy_randomize,
                })
            })
            .collect();
        let services = c.services.to_u64();
        json!({
            "version": RPC_COMPAT_VERSION,
            "subversion": meshd_actors::network::user_agent(),
            "protocolversion": self.node.profile().protocol_version,
            "localservices": format!("{services:016x}"),
            "localservicesnames": service_names(services),
            "localrelay": c.tx_relay != meshd_actors::config::TxRelay::None,
            "timeoffset": 0,
            "networkactive": true,
            "connections": connected.len(),
            "connections_in": inbound,
            "connections_out": connected.len() - inbound,
            "networks": networks,
            // meshd relays what its pool takes, with no fee floor of its own.
            "relayfee": 0.0,
            "incrementalfee": 0.0,
            "localaddresses": self
                .node
                .advertised_addrs()
                .iter()
                .map(|a| json!({"address": a.ip().to_string(), "port": a.port(), "score": 1}))
                .collect::<Vec<_>>(),
            "warnings": [],
        })
    }

    async fn blockchain_info(&self) -> RpcResult {
        let s = self.summary().await?;
        let st = self.node.sync_status();
        let datadir = self.node.config().datadir.clone();
        let size_on_disk: u64 = ["headers.dat", "vouched.dat"]
            .iter()
            .filter_map(|f| std::fs::metadata(datadir.join(f)).ok())
            .map(|m| m.len())
            .sum();
        Ok(json!({
            "chain": chain_name(self.node.profile().id),
            "blocks": s.height,
            "headers": s.height,
            "bestblockhash": s.tip.to_string(),
            "bits": format!("{:08x}", s.header.bits.to_consensus()),
            "target": target_hex(s.header.bits),
            "difficulty": difficulty(s.header.bits.to_consensus()),
            "time": s.header.time,
            "mediantime": s.median_time_past,
            "verificationprogress": st.progress,
            "initialblockdownload": st.state != meshd_actors::msg::SyncState::Synced,
            "chainwork": chainwork_hex(s.chainwork),
            "size_on_disk": size_on_disk,
            "pruned": true,
            // Core's pruneheight: the lowest block served; none kept, none below the tip.
            "pruneheight": s.lowest_kept.unwrap_or(s.height + 1),
            "automatic_pruning": true,
            "warnings": [],
        }))
    }

    async fn addnode(&self, args: &Args) -> RpcResult {
        let node = args.str(0)?.unwrap_or_default();
        let command = args.str(1)?.unwrap_or_default();
        let method = METHODS.iter().find(|m| m.name == "addnode");
        if !matches!(command, "add" | "remove" | "onetry") {
            return Err(rpc_err(
                RPC_MISC_ERROR,
                method.map(usage).unwrap_or_default(),
            ));
        }
        let port = self.node.profile().default_port;
        let addr = crate::settings::parse_endpoint("node", node, port)
            .map_err(|e| rpc_err(RPC_CLIENT_INVALID_IP_OR_SUBNET, format!("Error: {e}")))?;
        let added = self.node.added_nodes().await;
        let is_added = added
            .iter()
            .any(|a| a.address == node || a.address == addr.to_string());
        match command {
            "add" if is_added => Err(rpc_err(
                RPC_CLIENT_NODE_ALREADY_ADDED,
                "Error: Node already added",
            )),
            "add" | "onetry" => {
                if self.node.connect(addr, command == "add").await {
                    Ok(Value::Null)
                } else {
                    Err(rpc_err(RPC_MISC_ERROR, "the node is stopping"))
                }
            }
            _ => {
                if self.node.remove_added_node(addr).await {
                    Ok(Value::Null)
                } else {
                    Err(rpc_err(
                        RPC_CLIENT_NODE_NOT_ADDED,
                        "Error: Node could not be removed. It has not been added previously.",
                    ))
                }
            }
        }
    }

    async fn setban(&self, args: &Args) -> RpcResult {
        let subnet = args.str(0)?.unwrap_or_default();
        let command = args.str(1)?.unwrap_or_default();
        if !matches!(command, "add" | "remove") {
            let method = METHODS.iter().find(|m| m.name == "setban");
            return Err(rpc_err(
                RPC_MISC_ERROR,
                method.map(usage).unwrap_or_default(),
            ));
        }
        let net = parse_subnet(subnet)
            .map_err(|_| rpc_err(RPC_CLIENT_INVALID_IP_OR_SUBNET, "Error: Invalid IP/Subnet"))?;
        let bans = self.node.bans().await;
        if command == "remove" {
            return if self.node.unban(net).await {
                Ok(Value::Null)
            } else {
                Err(rpc_err(
                    RPC_CLIENT_INVALID_IP_OR_SUBNET,
                    "Error: Unban failed. Requested address/subnet was not previously manually banned.",
                ))
            };
        }
        // Core's: one address is banned when any ban covers it; a subnet when it is banned
        // itself.
        let single = net.prefix_len() == net.max_prefix_len();
        let covered = bans.iter().any(|b| {
            if single {
                b.subnet.contains(&net.addr())
            } else {
                b.subnet == net
            }
        });
        if covered {
            return Err(rpc_err(
                RPC_CLIENT_NODE_ALREADY_ADDED,
                "Error: IP/Subnet already banned",
            ));
        }
        let bantime = args.int(2)?.unwrap_or(0);
        let absolute = args.bool(3)?.unwrap_or(false);
        // Core: an absolute time is a unix time (0 and the past are errors); a relative one
        // of 0 or less is the default ban time.
        let duration = if absolute {
            let until = u64::try_from(bantime).unwrap_or(0);
            Duration::from_secs(until.saturating_sub(now_unix()))
        } else if bantime <= 0 {
            DEFAULT_BAN_TIME
        } else {
            Duration::from_secs(bantime as u64)
        };
        if duration.is_zero() {
            return Err(rpc_err(
                RPC_INVALID_PARAMETER,
                "Error: Absolute timestamp is in the past",
            ));
        }
        self.node
            .ban(net, duration)
            .await
            .map(|_| Value::Null)
            .ok_or_else(|| rpc_err(RPC_MISC_ERROR, "the node is stopping"))
    }

    async fn getblock(&self, args: &Args) -> RpcResult {
        let hash: BlockHash = hash_param("blockhash", args.str(0)?.unwrap_or_default())?;
        // Core takes a bool here too (true = 1, false = 0).
        let verbosity = match args.get(1) {
            None => 1,
            Some(Value::Bool(b)) => i64::from(*b),
            Some(_) => args.int(1)?.unwrap_or(1),
        };
        let block = self.kept_block(hash).await?;
        if verbosity <= 0 {
            return Ok(json!(serialize_hex(&*block)));
        }
        let info = self
            .header(hash)
            .await?
            .ok_or_else(|| rpc_err(RPC_INVALID_ADDRESS_OR_KEY, "Block not found"))?;
        let mut v = header_json(&hash, &info);
        let weight = block.weight().to_wu();
        let size = block.total_size();
        v["strippedsize"] = json!((weight as usize).saturating_sub(size) / 3);
        v["size"] = json!(size);
        v["weight"] = json!(weight);
        v["nTx"] = json!(block.txdata.len());
        v["tx"] = if verbosity == 1 {
            json!(block
                .txdata
                .iter()
                .map(|t| t.compute_txid().to_string())
                .collect::<Vec<_>>())
        } else {
            let network = self.network();
            json!(block
                .txdata
                .iter()
                .map(|t| tx_json(t, network, true))
                .collect::<Vec<_>>())
        };
        Ok(v)
    }

    async fn getrawtransaction(&self, args: &Args) -> RpcResult {
        let txid: Txid = hash_param("parameter 1", args.str(0)?.unwrap_or_default())?;
        // Core: a bool, or 0/1/2 (2 adds fees, which meshd does not know: as 1).
        let verbose = match args.get(1) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => args.int(1)?.unwrap_or(0) > 0,
        };
        let (tx, block) = match args.str(2)? {
            Some(b) => {
                let hash: BlockHash = hash_param("parameter 3", b)?;
                let block = match self.query(ChainQuery::Block(hash)).await? {
                    ChainAnswer::Block(Some(block), _) => block,
                    ChainAnswer::Block(None, true) => {
                        return Err(rpc_err(RPC_MISC_ERROR, "Block not available"))
                    }
                    _ => return Err(rpc_err(RPC_INVALID_ADDRESS_OR_KEY, "Block hash not found")),
                };
                let tx = block
                    .txdata
                    .iter()
                    .find(|t| t.compute_txid() == txid)
                    .cloned()
                    .ok_or_else(|| {
                        rpc_err(
                            RPC_INVALID_ADDRESS_OR_KEY,
                            "No such transaction found in the provided block. Use gettransaction for wallet transactions.",
                        )
                    })?;
                (Arc::new(tx), Some(hash))
            }
            None => match self.query(ChainQuery::PoolTx(txid)).await? {
                ChainAnswer::PoolTx(Some(tx)) => (tx, None),
                _ => {
                    return Err(rpc_err(
                        RPC_INVALID_ADDRESS_OR_KEY,
                        "No such mempool transaction. Use -txindex or provide a block hash to enable blockchain transaction queries. Use gettransaction for wallet transactions.",
                    ))
                }
            },
        };
        if !verbose {
            return Ok(json!(serialize_hex(&*tx)));
        }
        let mut v = tx_json(&tx, self.network(), true);
        if let Some(hash) = block {
            v["blockhash"] = json!(hash.to_string());
            if let Some(info) = self.header(hash).await? {
                v["in_active_chain"] = json!(info.best_height.is_some());
                if let Some(best) = info.best_height {
                    v["confirmations"] = json!(best - info.height + 1);
                }
                v["time"] = json!(info.header.time);
                v["blocktime"] = json!(info.header.time);
            }
        }
        Ok(v)
    }

    async fn generatetoaddress(&self, args: &Args) -> RpcResult {
        if !self.node.profile().is_regtest() {
            return Err(rpc_err(
                RPC_METHOD_NOT_FOUND,
                "generatetoaddress works on regtest only",
            ));
        }
        let n = args.int(0)?.unwrap_or(0);
        let blocks = u32::try_from(n)
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| rpc_err(RPC_INVALID_PARAMETER, "nblocks must be between 1 and 10000"))?;
        let address = args.str(1)?.unwrap_or_default();
        let payout = address
            .parse::<bitcoin::Address<bitcoin::address::NetworkUnchecked>>()
            .ok()
            .and_then(|a| a.require_network(self.network()).ok())
            .map(|a| a.script_pubkey())
            .ok_or_else(|| rpc_err(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address"))?;
        let hashes = self
            .node
            .generate_order(GenerateOrder {
                blocks,
                txs: Vec::new(),
                payout: Some(payout),
            })
            .await
            .map_err(|e| rpc_err(RPC_MISC_ERROR, e))?;
        Ok(json!(hashes
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()))
    }
}

/// One JSON-RPC call: its answer object and Core's HTTP status for it.
async fn answer_one(state: &RpcState, req: &Value) -> (Option<Value>, StatusCode) {
    let Some(obj) = req.as_object() else {
        let e = rpc_err(RPC_INVALID_REQUEST, "Invalid Request object");
        return (
            Some(reply_v1(Value::Null, Err(e.clone()))),
            StatusCode::BAD_REQUEST,
        );
    };
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    let v2 = match obj.get("jsonrpc") {
        None => false,
        Some(Value::String(v)) if v == "2.0" => true,
        Some(Value::String(v)) if v == "1.0" => false,
        Some(_) => {
            let e = rpc_err(RPC_INVALID_REQUEST, "JSON-RPC version not supported");
            return (Some(reply_v1(id, Err(e))), StatusCode::BAD_REQUEST);
        }
    };
    let result = match obj.get("method") {
        Some(Value::String(name)) => match METHODS.iter().find(|m| m.name == name) {
            None => Err(rpc_err(RPC_METHOD_NOT_FOUND, "Method not found")),
            Some(method) => match Args::new(method, obj.get("params")) {
                Ok(args) => state.call(name, &args).await,
                Err(e) => Err(e),
            },
        },
        Some(_) => Err(rpc_err(RPC_INVALID_REQUEST, "Method must be a string")),
        None => Err(rpc_err(RPC_INVALID_REQUEST, "Missing method")),
    };
    if let Err(e) = &result {
        metrics::counter!("meshd_rpc_errors_total", "code" => e.code.to_string()).increment(1);
    }
    if v2 {
        // A 2.0 notification (no id) gets no answer; every 2.0 answer is HTTP 200.
        if !obj.contains_key("id") {
            return (None, StatusCode::NO_CONTENT);
        }
        let body = match result {
            Ok(r) => json!({"jsonrpc": "2.0", "result": r, "id": id}),
            Err(e) => {
                json!({"jsonrpc": "2.0", "error": {"code": e.code, "message": e.message}, "id": id})
            }
        };
        return (Some(body), StatusCode::OK);
    }
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) if e.code == RPC_INVALID_REQUEST => StatusCode::BAD_REQUEST,
        Err(e) if e.code == RPC_METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (Some(reply_v1(id, result)), status)
}

fn reply_v1(id: Value, result: RpcResult) -> Value {
    match result {
        Ok(r) => json!({"result": r, "error": null, "id": id}),
        Err(e) => {
            json!({"result": null, "error": {"code": e.code, "message": e.message}, "id": id})
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

/// The gate in front of every request, before its body is read: a missing password is
/// refused at once, a wrong one after [`AUTH_FAILURE_DELAY`] taken one at a time for the
/// whole server (Core's `UninterruptibleSleep` holds one of its few workers, so guesses are
/// slow however many connections make them); at most [`MAX_RPC_IN_FLIGHT`] requests run,
/// each within [`RPC_REQUEST_TIMEOUT`] (its body read included).
async fn gate(
    State(state): State<RpcState>,
    axum::extract::ConnectInfo(from): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let unauthorized = || {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"jsonrpc\"")],
        )
            .into_response()
    };
    if authorization.is_none() {
        return unauthorized();
    }
    if !state.auth.check(authorization) {
        metrics::counter!("meshd_rpc_auth_failures_total").increment(1);
        if state
            .auth_log
            .lock()
            .is_ok_and(|mut l| l.allow(std::time::Instant::now()))
        {
            warn!(%from, "JSON-RPC call with a wrong password");
        }
        let _one_at_a_time = state.auth_delay.lock().await;
        tokio::time::sleep(AUTH_FAILURE_DELAY).await;
        return unauthorized();
    }
    let Ok(_slot) = state.in_flight.clone().try_acquire_owned() else {
        // Core's answer when its work queue is full.
        return (StatusCode::SERVICE_UNAVAILABLE, "Work queue depth exceeded").into_response();
    };
    match tokio::time::timeout(RPC_REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "request timed out").into_response(),
    }
}

async fn handle(State(state): State<RpcState>, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            let body = reply_v1(Value::Null, Err(rpc_err(RPC_PARSE_ERROR, "Parse error")));
            return json_response(StatusCode::INTERNAL_SERVER_ERROR, &body);
        }
    };
    metrics::counter!("meshd_rpc_requests_total").increment(1);
    match request {
        Value::Array(calls) => {
            if calls.len() > MAX_RPC_BATCH {
                let e = rpc_err(
                    RPC_INVALID_REQUEST,
                    format!("a batch holds at most {MAX_RPC_BATCH} calls"),
                );
                return json_response(StatusCode::BAD_REQUEST, &reply_v1(Value::Null, Err(e)));
            }
            let mut out = Vec::with_capacity(calls.len());
            let mut bytes = 0usize;
            for call in &calls {
                if bytes > MAX_RPC_RESPONSE_BYTES {
                    let id = call.get("id").cloned().unwrap_or(Value::Null);
                    let e = rpc_err(
                        RPC_MISC_ERROR,
                        format!("the batch's answer passed {MAX_RPC_RESPONSE_BYTES} bytes: call the rest apart"),
                    );
                    out.push(reply_v1(id, Err(e)));
                    continue;
                }
                if let (Some(answer), _) = answer_one(&state, call).await {
                    bytes += answer.to_string().len();
                    out.push(answer);
                }
            }
            if out.is_empty() {
                // Only notifications: nothing to answer (Core: 204).
                return StatusCode::NO_CONTENT.into_response();
            }
            json_response(StatusCode::OK, &Value::Array(out))
        }
        Value::Object(_) => match answer_one(&state, &request).await {
            (Some(answer), status) => json_response(status, &answer),
            (None, status) => status.into_response(),
        },
        _ => {
            let body = reply_v1(
                Value::Null,
                Err(rpc_err(RPC_PARSE_ERROR, "Top-level object parse error")),
            );
            json_response(StatusCode::INTERNAL_SERVER_ERROR, &body)
        }
    }
}

/// Serves the JSON-RPC until the process ends.
pub fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    auth: RpcAuth,
    started: SystemTime,
    stop: Arc<tokio::sync::Notify>,
) {
    let state = RpcState {
        node,
        auth: Arc::new(auth),
        started,
        stop,
        auth_delay: Arc::new(tokio::sync::Mutex::new(())),
        in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_RPC_IN_FLIGHT)),
        auth_log: Arc::new(std::sync::Mutex::new(LogBudget::default())),
    };
    metrics::describe_counter!(
        "meshd_rpc_requests_total",
        "JSON-RPC requests taken (a batch counts once), after authentication."
    );
    metrics::describe_counter!(
        "meshd_rpc_errors_total",
        "JSON-RPC calls answered with an error, by Core's error code."
    );
    metrics::describe_counter!(
        "meshd_rpc_auth_failures_total",
        "JSON-RPC requests refused for a missing or wrong password."
    );
    metrics::counter!("meshd_rpc_requests_total").increment(0);
    metrics::counter!("meshd_rpc_auth_failures_total").increment(0);
    let app = Router::new()
        .route("/", post(handle))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_RPC_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "JSON-RPC listening");
    }
    tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "JSON-RPC server stopped");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc_auth::RpcAuthUser;
    use bitcoin::hashes::{hmac, sha256, Hash, HashEngine};

    #[test]
    fn rpcauth_lines_from_cores_script_are_checked_as_core_checks_them() {
        // share/rpcauth/rpcauth.py: HMAC-SHA256 keyed by the salt's text, of the password.
        let salt = "cb77f0957de88ff388cf817ddbc7273";
        let mut engine = hmac::HmacEngine::<sha256::Hash>::new(salt.as_bytes());
        engine.input(b"secret");
        let mac = hmac::Hmac::<sha256::Hash>::from_engine(engine);
        let line = format!("alice:{salt}${mac}");
        let user = RpcAuthUser::parse(&line).unwrap();
        assert!(user.accepts("secret"));
        assert!(!user.accepts("secreT"));
        let auth = RpcAuth {
            cookie: Some("c0ffee".into()),
            users: vec![user],
        };
        use base64::Engine;
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert!(auth.check(Some(&basic("alice:secret"))));
        assert!(auth.check(Some(&basic("__cookie__:c0ffee"))));
        assert!(!auth.check(Some(&basic("__cookie__:c0ffef"))));
        assert!(!auth.check(Some(&basic("bob:secret"))));
        assert!(!auth.check(Some("Bearer c0ffee")));
        assert!(!auth.check(None));
        assert!(RpcAuthUser::parse("alice:salt$abc").is_err());
        assert!(RpcAuthUser::parse("alice").is_err());
    }

    #[test]
    fn difficulty_is_cores_for_known_bits() {
        assert_eq!(difficulty(0x1d00ffff), 1.0);
        // Regtest's limit.
        assert!((difficulty(0x207fffff) - 4.656542373906925e-10).abs() < 1e-20);
        assert_eq!(difficulty(0), 0.0);
    }

    #[test]
    fn script_asm_is_cores() {
        let p2wpkh =
            bitcoin::ScriptBuf::from_hex("0014751e76e8199196d454941c45d1b3a323f1433bd6").unwrap();
        assert_eq!(
            script_asm(&p2wpkh),
            "0 751e76e8199196d454941c45d1b3a323f1433bd6"
        );
        let p2pkh =
            bitcoin::ScriptBuf::from_hex("76a914751e76e8199196d454941c45d1b3a323f1433bd688ac")
                .unwrap();
        assert_eq!(
            script_asm(&p2pkh),
            "OP_DUP OP_HASH160 751e76e8199196d454941c45d1b3a323f1433bd6 OP_EQUALVERIFY OP_CHECKSIG"
        );
        // A coinbase's BIP34 height (3 bytes), OP_1, OP_1NEGATE, CSV, a truncated push.
        let s = bitcoin::ScriptBuf::from_hex("03a08601514fb2").unwrap();
        assert_eq!(script_asm(&s), "100000 1 -1 OP_CHECKSEQUENCEVERIFY");
        assert_eq!(script_num(&[0x81]), -1);
        assert_eq!(script_num(&[0xff, 0x80]), -255);
        let broken = bitcoin::ScriptBuf::from_hex("4c05ab").unwrap();
        assert_eq!(script_asm(&broken), "[error]");
    }

    #[test]
    fn service_names_are_cores_spelling() {
        assert_eq!(service_names(0x809), vec!["NETWORK", "WITNESS", "P2P_V2"]);
        assert_eq!(service_names(1 << 24), vec!["UNKNOWN[2^24]"]);
        assert!(service_names(0).is_empty());
    }

    #[test]
    fn arguments_are_taken_by_position_or_by_name_as_core_takes_them() {
        let method = METHODS.iter().find(|m| m.name == "getblockheader").unwrap();
        let a = Args::new(method, Some(&json!(["00", false]))).unwrap();
        assert_eq!(a.str(0).unwrap(), Some("00"));
        assert_eq!(a.bool(1).unwrap(), Some(false));
        let a = Args::new(method, Some(&json!({"blockhash": "00", "verbose": null}))).unwrap();
        assert_eq!(a.bool(1).unwrap(), None);
        let e = Args::new(method, Some(&json!({"hash": "00"})))
            .err()
            .unwrap();
        assert_eq!(e.code, RPC_INVALID_PARAMETER);
        let e = Args::new(method, Some(&json!([]))).err().unwrap();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                RPC_MISC_ERROR,
                "getblockheader \"blockhash\" ( \"verbose\" )"
            )
        );
        let e = Args::new(method, Some(&json!(["00", true, 3])))
            .err()
            .unwrap();
        assert_eq!(e.code, RPC_MISC_ERROR);
        let a = Args::new(method, Some(&json!([7]))).unwrap();
        assert_eq!(
            a.str(0).unwrap_err().message,
            "JSON value of type number is not of expected type string"
        );
    }

    #[test]
    fn hash_parameters_are_checked_as_cores_parsehashv() {
        assert_eq!(
            hash_param::<BlockHash>("blockhash", "abc")
                .unwrap_err()
                .message,
            "blockhash must be of length 64 (not 3, for 'abc')"
        );
        let z = "z".repeat(64);
        assert_eq!(
            hash_param::<BlockHash>("blockhash", &z).unwrap_err().code,
            RPC_INVALID_PARAMETER
        );
    }
}
