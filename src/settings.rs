//! Turns flags and the TOML file into a validated [`NodeConfig`] plus daemon settings.
//!
//! Rules: every flag has a file key of the same name; a flag given overrides the key; an
//! unknown key, a bad address, an unknown network or a malformed duration is an error that
//! names the offending value (the daemon prints it on one line and exits 2).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bitcoin::p2p::ServiceFlags;
use meshd_actors::config::{FleetConfig, NodeConfig, ProxyConfig, TxRelay};
use meshd_actors::network::NetworkId;
use meshd_actors::shared::overlay::{Network, OverlayAddr, OverlayParseError};
use serde::Deserialize;

use crate::cli::{LogFormat, RunArgs};

/// A configuration error, shown to the user as one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// A duration in the file: a number of seconds, or a string such as `"90s"` or `"2m"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FileDuration {
    /// Seconds.
    Seconds(u64),
    /// With a unit.
    Text(String),
}

/// A service-bit value in the file: an integer or a `"0x..."` string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FileBits {
    /// Integer.
    Number(u64),
    /// Text, decimal or 0x-hex.
    Text(String),
}

/// The TOML file: the same keys as the long flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    network: Option<String>,
    datadir: Option<PathBuf>,
    listen: Option<Vec<String>>,
    no_listen: Option<bool>,
    connect: Option<Vec<String>>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    handshake_timeout: Option<FileDuration>,
    ping_interval: Option<FileDuration>,
    ping_timeout: Option<FileDuration>,
    connect_timeout: Option<FileDuration>,
    min_protocol_version: Option<u32>,
    services: Option<FileBits>,
    required_services: Option<FileBits>,
    ban_user_agent: Option<Vec<String>>,
    whitelist: Option<Vec<String>>,
    max_block_message_size: Option<u32>,
    addnode: Option<Vec<String>>,
    max_outbound: Option<u32>,
    max_block_relay_only: Option<u32>,
    max_inbound: Option<u32>,
    max_connections: Option<u32>,
    max_upload_rate: Option<FileBytes>,
    max_download_rate: Option<FileBytes>,
    upload_burst: Option<FileBytes>,
    download_burst: Option<FileBytes>,
    peer_max_upload_rate: Option<FileBytes>,
    peer_max_download_rate: Option<FileBytes>,
    peer_burst: Option<FileBytes>,
    ban_threshold: Option<u32>,
    ban_duration: Option<FileDuration>,
    ban_local_peers: Option<bool>,
    v2transport: Option<bool>,
    restart_base_delay: Option<FileDuration>,
    restart_max_delay: Option<FileDuration>,
    restart_max: Option<usize>,
    restart_window: Option<FileDuration>,
    restart_stable_after: Option<FileDuration>,
    metrics: Option<String>,
    no_metrics: Option<bool>,
    api: Option<String>,
    no_api: Option<bool>,
    api_token: Option<String>,
    api_allow_remote: Option<bool>,
    rpc: Option<String>,
    rpcauth: Option<Vec<String>>,
    rpc_allow_remote: Option<bool>,
    metrics_allow_remote: Option<bool>,
    dns_server: Option<Vec<String>>,
    dns_seed: Option<Vec<String>>,
    no_dns_seed: Option<bool>,
    externalip: Option<Vec<String>>,
    distinct_local_groups: Option<bool>,
    addrbook_save_interval: Option<FileDuration>,
    stun_server: Option<Vec<String>>,
    no_stun: Option<bool>,
    natpmp: Option<bool>,
    upnp: Option<bool>,
    overlay: Option<bool>,
    overlay_listen: Option<Vec<String>>,
    overlay_bootstrap: Option<Vec<String>>,
    overlay_mdns: Option<bool>,
    overlay_relay_service: Option<bool>,
    overlay_topic: Option<Vec<String>>,
    overlay_cluster_threshold: Option<f64>,
    stun_timeout: Option<FileDuration>,
    stun_interval: Option<FileDuration>,
    blocks: Option<String>,
    compact_blocks: Option<String>,
    keep_blocks: Option<usize>,
    header_hints: Option<PathBuf>,
    asmap: Option<PathBuf>,
    tx_relay: Option<String>,
    tx_pool_max_count: Option<usize>,
    tx_pool_max_bytes: Option<FileBytes>,
    tx_pool_max_age: Option<FileDuration>,
    no_trickle: Option<bool>,
    sync_stall_timeout: Option<FileDuration>,
    max_tip_age: Option<FileDuration>,
    minimum_chain_work: Option<String>,
    proxy: Option<String>,
    onion: Option<String>,
    proxy_randomize: Option<bool>,
    onlynet: Option<Vec<String>>,
    torcontrol: Option<String>,
    torpassword: Option<String>,
    torcontrol_null_auth: Option<bool>,
    listenonion: Option<bool>,
    nats: Option<String>,
    nats_credentials: Option<PathBuf>,
    nats_user: Option<String>,
    nats_password: Option<String>,
    fleet: Option<String>,
    node_name: Option<String>,
    fleet_max_age: Option<FileDuration>,
    fleet_max_bytes: Option<FileBytes>,
    fleet_buffer: Option<usize>,
    fleet_heartbeat_interval: Option<FileDuration>,
    fleet_apply_bans: Option<bool>,
    fleet_trusted_keys: Option<PathBuf>,
    fleet_replicas: Option<usize>,
}

/// A byte count or rate in the file: an integer, or a string with a unit (`"500k"`, `"1MiB"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FileBytes {
    /// Bytes.
    Number(u64),
    /// With a unit.
    Text(String),
}

/// Everything the daemon needs to start.
#[derive(Debug)]
pub struct Settings {
    /// The node's configuration.
    pub node: NodeConfig,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter, if set by flag or file.
    pub log_level: Option<String>,
    /// Where to serve metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Where to serve the admin API, if anywhere.
    pub api: Option<SocketAddr>,
    /// A fixed API token (else a random one goes to the cookie file).
    pub api_token: Option<String>,
    /// Where to serve the Core-compatible JSON-RPC, if anywhere (off by default).
    pub rpc: Option<SocketAddr>,
    /// `--rpcauth` users of the JSON-RPC.
    pub rpcauth: Vec<crate::rpc_auth::RpcAuthUser>,
}

/// Parses a byte count or rate: `1000`, `500k`, `2M`, `1G` (powers of 1000), `64KiB`,
/// `1MiB`, `1GiB` (powers of 1024); a trailing `/s` or `B` is allowed.
pub fn parse_bytes(key: &str, text: &str) -> Result<u64, ConfigError> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    let (value, unit) = number_and_unit(t).ok_or_else(|| {
        ConfigError(format!(
            "{key}: bad byte count {text:?} (try 500000, 500k, 2M, 1MiB)"
        ))
    })?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "k" | "K" | "kB" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return err(format!(
                "{key}: bad unit in {text:?} (use k, M, G, KiB, MiB or GiB)"
            ))
        }
    };
    Ok((value * mult).round() as u64)
}

fn pick_bytes(
    key: &str,
    flag: &Option<String>,
    file: &Option<FileBytes>,
    default: u64,
) -> Result<u64, ConfigError> {
    match (flag, file) {
        (Some(f), _) => parse_bytes(key, f),
        (None, Some(FileBytes::Number(n))) => Ok(*n),
        (None, Some(FileBytes::Text(t))) => parse_bytes(key, t),
        (None, None) => Ok(default),
    }
}

/// Splits `"2.5MiB"` into `(2.5, "MiB")`; `None` unless the number is finite and not negative.
fn number_and_unit(t: &str) -> Option<(f64, &str)> {
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    num.parse::<f64>()
        .ok()
        .filter(|v| *v >= 0.0 && v.is_finite())
        .map(|v| (v, unit))
}

/// Parses `"90"`, `"90s"`, `"500ms"`, `"2m"`, `"1h"`, `"7d"`.
pub fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let (value, unit) = number_and_unit(text.trim()).ok_or_else(|| {
        ConfigError(format!(
            "{key}: bad duration {text:?} (try 90s, 500ms, 2m, 1h, 7d)"
        ))
    })?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => {
            return err(format!(
                "{key}: bad duration unit in {text:?} (use ms, s, m, h or d)"
            ))
        }
    };
    if secs <= 0.0 || secs > 30.0 * 86_400.0 {
        return err(format!(
            "{key}: duration {text:?} must be above zero and at most 30 days"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn file_duration(key: &str, d: &FileDuration) -> Result<Duration, ConfigError> {
    match d {
        FileDuration::Seconds(s) => parse_duration(key, &s.to_string()),
        FileDuration::Text(t) => parse_duration(key, t),
    }
}

fn parse_multiaddr(key: &str, text: &str) -> Result<meshd_actors::libp2p::Multiaddr, ConfigError> {
    text.trim()
        .parse()
        .map_err(|e| ConfigError(format!("{key}: {text:?} is not a multiaddr ({e})")))
}

fn pick_duration(
    key: &str,
    flag: &Option<String>,
    file: &Option<FileDuration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match (flag, file) {
        (Some(f), _) => parse_duration(key, f),
        (None, Some(d)) => file_duration(key, d),
        (None, None) => Ok(default),
    }
}

/// Parses service bits, decimal or 0x-hex.
pub fn parse_bits(key: &str, text: &str) -> Result<ServiceFlags, ConfigError> {
    let t = text.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    match parsed {
        Ok(v) => Ok(ServiceFlags::from(v)),
        Err(_) => err(format!("{key}: bad service bits {text:?}")),
    }
}

fn file_bits(key: &str, b: &FileBits) -> Result<ServiceFlags, ConfigError> {
    match b {
        FileBits::Number(n) => Ok(ServiceFlags::from(*n)),
        FileBits::Text(t) => parse_bits(key, t),
    }
}

/// Parses `IP:PORT`, `[IPv6]:PORT`, or an IP alone (then `default_port`).
pub fn parse_endpoint(key: &str, text: &str, default_port: u16) -> Result<SocketAddr, ConfigError> {
    let t = text.trim();
    if let Ok(sa) = t.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let bare = t
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(t);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    err(format!(
        "{key}: bad address {text:?} (expected IP:PORT, [IPv6]:PORT or an IP)"
    ))
}

/// This machine's host name (the default node name starts with it).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "meshd".into())
}

/// Tor's default control port.
const DEFAULT_TOR_CONTROL_PORT: u16 = 9051;

/// Parses a peer: an IP endpoint, or an onion or I2P name with a port (its internal address
/// is returned and the name added to `overlays`).
pub fn parse_peer(
    key: &str,
    text: &str,
    default_port: u16,
    overlays: &mut Vec<OverlayAddr>,
) -> Result<SocketAddr, ConfigError> {
    let t = text.trim();
    let (host, port) = match t.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse::<u16>() {
            Ok(port) => (h, port),
            Err(_) => return err(format!("{key}: bad port in {text:?}")),
        },
        _ => (t, default_port),
    };
    match OverlayAddr::parse_host(host) {
        Ok(o) => {
            if !overlays.contains(&o) {
                overlays.push(o);
            }
            Ok(o.internal(port))
        }
        Err(OverlayParseError::NotOverlay) => parse_endpoint(key, text, default_port),
        Err(e) => err(format!("{key}: {text:?}: {e}")),
    }
}

/// Parses a SOCKS5 proxy, `[USER:PASSWORD@]HOST:PORT`.
pub fn parse_proxy(key: &str, text: &str) -> Result<ProxyConfig, ConfigError> {
    let t = text.trim();
    let (credentials, endpoint) = match t.rsplit_once('@') {
        Some((cred, endpoint)) => match cred.split_once(':') {
            Some((u, p)) if !u.is_empty() && u.len() <= 255 && p.len() <= 255 => {
                (Some((u.to_string(), p.to_string())), endpoint)
            }
            _ => {
                return err(format!(
                    "{key}: credentials must be USER:PASSWORD, each 1 to 255 bytes"
                ))
            }
        },
        None => (None, t),
    };
    let addr = parse_endpoint(key, endpoint, 9050)?;
    Ok(ProxyConfig { addr, credentials })
}

impl FileConfig {
    /// The `network` key.
    pub fn network(&self) -> Option<&str> {
        self.network.as_deref()
    }

    /// The `datadir` key.
    pub fn datadir(&self) -> Option<&Path> {
        self.datadir.as_deref()
    }

    /// The `api` key.
    pub fn api(&self) -> Option<&str> {
        self.api.as_deref()
    }
}

/// Reads and parses a config file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
    parse_file(&text).map_err(|e| ConfigError(format!("config file {}: {}", path.display(), e.0)))
}

/// Merges flags over the file over the defaults.
pub fn resolve(args: &RunArgs) -> Result<Settings, ConfigError> {
    let file = match &args.config {
        Some(path) => read_file(path)?,
        None => FileConfig::default(),
    };
    resolve_with(args, file)
}

/// Parses a config file's text (what `--config` reads). Errors say where (line and
/// column), name the key, suggest the key meant for an unknown one, and speak of values,
/// not of the Rust types behind them.
pub fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError(located(text, &e)))?;
    let known = file_keys();
    for key in table.keys() {
        if !known.iter().any(|k| k == key) {
            return err(unknown_key(key, &known));
        }
    }
    toml::from_str(text).map_err(|e: toml::de::Error| ConfigError(located(text, &e)))
}

/// The keys a config file may have: the long names of `run`'s options, but `config`.
fn file_keys() -> Vec<String> {
    use clap::Args;
    RunArgs::augment_args(clap::Command::new("meshd"))
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| *l != "config")
        .map(str::to_string)
        .collect()
}

/// "unknown key `max_inbound`; did you mean `max-inbound`?", the closest known key when
/// one is close.
fn unknown_key(key: &str, known: &[String]) -> String {
    let dashed = key.replace('_', "-");
    let best = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(&dashed, k), k))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, k)| *d <= (k.len() / 3).max(2));
    match best {
        Some((_, k)) => format!("unknown key `{key}`; did you mean `{k}`?"),
        None => format!("unknown key `{key}` (`meshd --help` lists every key)"),
    }
}

/// A TOML error as "line L, column C: what" (with the key the value belongs to, when it
/// is a value's error), without serde's Rust type names.
fn located(text: &str, e: &toml::de::Error) -> String {
    let what = plain_types(e.message());
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before[line_start..].chars().count() + 1;
            format!("line {line}, column {column}: {what}")
        }
        None => what,
    }
}

/// serde's "expected u32" and friends, in words.
fn plain_types(message: &str) -> String {
    let mut out = message.to_string();
    for (rust, plain) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number (at most 65535)"),
        ("expected u8", "expected a whole number (at most 255)"),
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a sequence", "expected a list"),
        ("expected a boolean", "expected true or false"),
        (
            "data did not match any variant of untagged enum FileDuration",
            "expected a duration (seconds, or 500ms, 90s, 2m, 1h, 7d)",
        ),
        (
            "data did not match any variant of untagged enum FileBytes",
            "expected a size (bytes, or 500k, 1MiB)",
        ),
        (
            "data did not match any variant of untagged enum FileBits",
            "expected service bits (a number, or a 0x hex string)",
        ),
    ] {
        out = out.replace(rust, plain);
    }
    out
}

/// Merges flags over an already parsed file over the defaults.
pub fn resolve_with(args: &RunArgs, file: FileConfig) -> Result<Settings, ConfigError> {
    let network_name = args
        .network
        .clone()
        .or(file.network.clone())
        .unwrap_or_else(|| "regtest".into());
    let network: NetworkId = network_name
        .parse()
        .map_err(|e: meshd_actors::network::UnknownNetwork| ConfigError(format!("network: {e}")))?;
    let profile = network.profile();
    // Every flag and its file key share a name: the field `max_upload_rate` is the flag
    // `--max-upload-rate` and the key `max-upload-rate`.
    macro_rules! duration {
        ($key:ident, $default:expr) => {
            pick_duration(
                &stringify!($key).replace('_', "-"),
                &args.$key,
                &file.$key,
                $default,
            )?
        };
    }
    macro_rules! bytes {
        ($key:ident, $default:expr) => {
            pick_bytes(
                &stringify!($key).replace('_', "-"),
                &args.$key,
                &file.$key,
                $default,
            )?
        };
    }
    let base = args
        .datadir
        .clone()
        .or(file.datadir.clone())
        .unwrap_or_else(crate::nodefile::default_datadir);
    // Absolute from here on (a relative one is taken from the working directory, as
    // Core's), so the logs, meshd.json and `meshd status` name it in full.
    let base = std::path::absolute(&base).unwrap_or(base);
    let mut node = NodeConfig::new(network, base.join(network.name()));

    let pick = |flag: &Vec<String>, key: &Option<Vec<String>>| -> Vec<String> {
        if flag.is_empty() {
            key.clone().unwrap_or_default()
        } else {
            flag.clone()
        }
    };
    let no_listen = args.no_listen || file.no_listen.unwrap_or(false);
    let listen = pick(&args.listen, &file.listen);
    node.listen = if no_listen {
        if !listen.is_empty() {
            return err("no-listen and listen cannot both be given");
        }
        Vec::new()
    } else if listen.is_empty() {
        let ip: IpAddr = if profile.is_regtest() {
            [127, 0, 0, 1].into()
        } else {
            [0, 0, 0, 0].into()
        };
        vec![SocketAddr::new(ip, profile.default_port)]
    } else {
        listen
            .iter()
            .map(|l| parse_endpoint("listen", l, profile.default_port))
            .collect::<Result<_, _>>()?
    };
    node.overlay_peers = Vec::new();
    node.connect = pick(&args.connect, &file.connect)
        .iter()
        .map(|c| parse_peer("connect", c, profile.default_port, &mut node.overlay_peers))
        .collect::<Result<_, _>>()?;

    node.handshake_timeout = duration!(handshake_timeout, node.handshake_timeout);
    node.ping_interval = duration!(ping_interval, node.ping_interval);
    node.ping_timeout = duration!(ping_timeout, node.ping_timeout);
    node.connect_timeout = duration!(connect_timeout, node.connect_timeout);
    if let Some(v) = args.min_protocol_version.or(file.min_protocol_version) {
        node.min_protocol_version = v;
    }
    let bits = |key: &str,
                flag: &Option<String>,
                file: &Option<FileBits>,
                default: ServiceFlags| match (flag, file) {
        (Some(f), _) => parse_bits(key, f),
        (None, Some(b)) => file_bits(key, b),
        (None, None) => Ok(default),
    };
    node.services = bits("services", &args.services, &file.services, node.services)?;
    node.required_services = bits(
        "required-services",
        &args.required_services,
        &file.required_services,
        node.required_services,
    )?;
    node.banned_user_agents = pick(&args.ban_user_agent, &file.ban_user_agent);
    node.whitelist = Vec::new();
    for entry in pick(&args.whitelist, &file.whitelist) {
        match meshd_actors::shared::whitelist::WhitelistEntry::parse(&entry) {
            Ok(e) => node.whitelist.push(e),
            Err(e) => return err(e),
        }
    }
    if let Some(v) = args.max_block_message_size.or(file.max_block_message_size) {
        node.max_block_message_size = v;
    }
    node.addnode = pick(&args.addnode, &file.addnode)
        .iter()
        .map(|c| parse_peer("addnode", c, profile.default_port, &mut node.overlay_peers))
        .collect::<Result<_, _>>()?;
    if let Some(v) = args.max_outbound.or(file.max_outbound) {
        node.slots.outbound = v;
    }
    if let Some(v) = args.max_block_relay_only.or(file.max_block_relay_only) {
        node.slots.block_relay = v;
    }
    if let Some(v) = args.max_inbound.or(file.max_inbound) {
        node.slots.inbound = v;
    }
    if let Some(v) = args.max_connections.or(file.max_connections) {
        node.slots.total = v;
    }
    node.max_upload_rate = bytes!(max_upload_rate, 0);
    node.max_download_rate = bytes!(max_download_rate, 0);
    node.upload_burst = bytes!(upload_burst, 0);
    node.download_burst = bytes!(download_burst, 0);
    node.peer_max_upload_rate = bytes!(peer_max_upload_rate, 0);
    node.peer_max_download_rate = bytes!(peer_max_download_rate, 0);
    node.peer_burst = bytes!(peer_burst, 0);
    if let Some(v) = args.ban_threshold.or(file.ban_threshold) {
        if v == 0 {
            return err("ban-threshold must be above zero");
        }
        node.ban_threshold = v;
    }
    node.ban_duration = duration!(ban_duration, node.ban_duration);
    node.ban_local_peers = args.ban_local_peers || file.ban_local_peers.unwrap_or(false);
    let r = &mut node.restart;
    r.base_delay = duration!(restart_base_delay, r.base_delay);
    r.max_delay = duration!(restart_max_delay, r.max_delay);
    r.window = duration!(restart_window, r.window);
    r.stable_after = duration!(restart_stable_after, r.stable_after);
    if let Some(v) = args.restart_max.or(file.restart_max) {
        if v == 0 {
            // Zero would give up on every outbound peer at its first drop: not a policy
            // anyone means (Core has no such setting either).
            return err("restart-max: must be at least 1");
        }
        r.max_restarts = v;
    }
    node.dns_servers = pick(&args.dns_server, &file.dns_server)
        .iter()
        .map(|c| parse_endpoint("dns-server", c, 53))
        .collect::<Result<_, _>>()?;
    let seeds = pick(&args.dns_seed, &file.dns_seed);
    if !seeds.is_empty() {
        node.dns_seeds = seeds;
    }
    if args.no_dns_seed || file.no_dns_seed.unwrap_or(false) {
        node.dns_seeds.clear();
    }
    node.external_addrs = pick(&args.externalip, &file.externalip)
        .iter()
        .map(|c| parse_endpoint("externalip", c, profile.default_port))
        .collect::<Result<_, _>>()?;
    if let Some(v) = args.distinct_local_groups.or(file.distinct_local_groups) {
        node.distinct_local_groups = v;
    }
    node.addrbook_save_interval = duration!(addrbook_save_interval, node.addrbook_save_interval);
    let stun = pick(&args.stun_server, &file.stun_server);
    for s in &stun {
        let port_ok = s
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !port_ok {
            return err(format!("stun-server: {s:?} is not HOST:PORT"));
        }
    }
    if !stun.is_empty() {
        node.stun_servers = stun;
    }
    if args.no_stun || file.no_stun.unwrap_or(false) {
        node.stun_servers.clear();
    }
    node.stun_timeout = duration!(stun_timeout, node.stun_timeout);
    node.stun_interval = duration!(stun_interval, node.stun_interval);
    match args.blocks.clone().or(file.blocks.clone()).as_deref() {
        None | Some("tip") => node.fetch_blocks = true,
        Some("none") => node.fetch_blocks = false,
        Some(other) => return err(format!("blocks: {other:?} is not none or tip")),
    }
    node.tx_relay = match args.tx_relay.clone().or(file.tx_relay.clone()).as_deref() {
        None | Some("vouched") => TxRelay::Vouched,
        Some("all") => TxRelay::All,
        Some("none") => TxRelay::None,
        Some(other) => return err(format!("tx-relay: {other:?} is not vouched, all or none")),
    };
    match args
        .compact_blocks
        .clone()
        .or(file.compact_blocks.clone())
        .as_deref()
    {
        None | Some("on") => node.compact_blocks = true,
        Some("off") => node.compact_blocks = false,
        Some(other) => return err(format!("compact-blocks: {other:?} is not on or off")),
    }
    if let Some(v) = args.keep_blocks.or(file.keep_blocks) {
        if v == 0 {
            // The tip block must be kept to check and relay it; use --blocks none to fetch none.
            return err("keep-blocks: must be at least 1 (use --blocks none to fetch no blocks)");
        }
        node.keep_blocks = v;
    }
    if let Some(path) = args.header_hints.clone().or(file.header_hints.clone()) {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ConfigError(format!("header-hints: cannot read {}: {e}", path.display()))
        })?;
        node.header_hints = meshd_actors::sync::hints::parse(&text, node.network.name())
            .map_err(|e| ConfigError(format!("header-hints: {}: {e}", path.display())))?;
    }
    if let Some(path) = args.asmap.clone().or(file.asmap.clone()) {
        // A relative path is in the network's data directory, as Core resolves -asmap.
        let path = if path.is_absolute() {
            path
        } else {
            node.datadir.join(path)
        };
        let map = meshd_actors::shared::asmap::Asmap::load(&path)
            .map_err(|e| ConfigError(format!("asmap: {e}")))?;
        node.asmap = Some(std::sync::Arc::new(map));
    }
    if let Some(v) = args.tx_pool_max_count.or(file.tx_pool_max_count) {
        node.tx_pool_max_count = v;
    }
    node.tx_pool_max_bytes = bytes!(tx_pool_max_bytes, node.tx_pool_max_bytes as u64) as usize;
    node.tx_pool_max_age = duration!(tx_pool_max_age, node.tx_pool_max_age);
    node.trickle = !(args.no_trickle || file.no_trickle.unwrap_or(false));
    node.v2transport = args.v2transport.or(file.v2transport).unwrap_or(true);
    node.sync_stall_timeout = duration!(sync_stall_timeout, node.sync_stall_timeout);
    node.max_tip_age = duration!(max_tip_age, node.max_tip_age);
    let proxy = |key: &str, v: Option<String>| v.map(|t| parse_proxy(key, &t)).transpose();
    node.proxy = proxy("proxy", args.proxy.clone().or(file.proxy.clone()))?;
    node.onion_proxy = proxy("onion", args.onion.clone().or(file.onion.clone()))?;
    node.proxy_randomize = args
        .proxy_randomize
        .or(file.proxy_randomize)
        .unwrap_or(true);
    node.onlynet = Vec::new();
    for net in pick(&args.onlynet, &file.onlynet) {
        match Network::parse(&net) {
            Some(n) if !node.onlynet.contains(&n) => node.onlynet.push(n),
            Some(_) => {}
            None => {
                return err(format!(
                    "onlynet: unknown network {net:?} (ipv4, ipv6, onion, i2p, cjdns)"
                ))
            }
        }
    }
    if node.onlynet.contains(&Network::Onion) && node.onion_route().is_none() {
        return err("onlynet: onion needs --onion or --proxy (a SOCKS5 proxy such as Tor)");
    }
    if node.onlynet.contains(&Network::I2p) {
        return err("onlynet: i2p is not supported (meshd opens no I2P SAM session)");
    }
    node.tor_control = args
        .torcontrol
        .clone()
        .or(file.torcontrol.clone())
        .map(|t| parse_endpoint("torcontrol", &t, DEFAULT_TOR_CONTROL_PORT))
        .transpose()?;
    node.tor_password = args.torpassword.clone().or(file.torpassword.clone());
    node.tor_null_auth = args.torcontrol_null_auth || file.torcontrol_null_auth.unwrap_or(false);
    node.listen_onion = args.listenonion.or(file.listenonion).unwrap_or(true);
    node.natpmp = args.natpmp.or(file.natpmp).unwrap_or(node.natpmp);
    node.upnp = args.upnp.or(file.upnp).unwrap_or(node.upnp);
    node.overlay.enabled = args.overlay.or(file.overlay).unwrap_or(false);
    if node.overlay.enabled && node.proxy.is_some() {
        // The overlay dials and listens directly: it would reveal what the proxy hides.
        return err("overlay: not with --proxy (the overlay dials and listens directly)");
    }
    node.overlay.mdns = args.overlay_mdns.or(file.overlay_mdns).unwrap_or(false);
    node.overlay.relay_service = args
        .overlay_relay_service
        .or(file.overlay_relay_service)
        .unwrap_or(true);
    node.overlay.listen = pick(&args.overlay_listen, &file.overlay_listen)
        .iter()
        .map(|a| parse_multiaddr("overlay-listen", a))
        .collect::<Result<_, _>>()?;
    node.overlay.topics = Vec::new();
    for t in pick(&args.overlay_topic, &file.overlay_topic) {
        let t = t.trim().to_string();
        if t.is_empty() || t.len() > 128 {
            return err(format!("overlay-topic: {t:?} must be 1 to 128 bytes"));
        }
        node.overlay.topics.push(t);
    }
    if let Some(t) = args
        .overlay_cluster_threshold
        .or(file.overlay_cluster_threshold)
    {
        if !(t > 0.0 && t <= 1.0) {
            return err(format!(
                "overlay-cluster-threshold: {t} is not a similarity above 0 and at most 1"
            ));
        }
        node.overlay.cluster_threshold = t;
    }
    node.overlay.bootstrap = Vec::new();
    for a in pick(&args.overlay_bootstrap, &file.overlay_bootstrap) {
        let addr = parse_multiaddr("overlay-bootstrap", &a)?;
        if !matches!(
            addr.iter().last(),
            Some(meshd_actors::libp2p::multiaddr::Protocol::P2p(_))
        ) {
            return err(format!(
                "overlay-bootstrap: {a:?} does not end in /p2p/<peer id>"
            ));
        }
        node.overlay.bootstrap.push(addr);
    }
    node.fleet = None;
    if let Some(url) = args.nats.clone().or(file.nats.clone()) {
        let network = node.network.name();
        let mut fleet = FleetConfig::new(
            &url,
            &args
                .fleet
                .clone()
                .or(file.fleet.clone())
                .unwrap_or_else(|| "default".into()),
            &args
                .node_name
                .clone()
                .or(file.node_name.clone())
                .unwrap_or_else(|| format!("{}-{network}", host_name())),
        );
        if fleet.fleet.trim().is_empty() || fleet.node_name.trim().is_empty() {
            return err("fleet and node-name must not be empty");
        }
        fleet.credentials_file = args
            .nats_credentials
            .clone()
            .or(file.nats_credentials.clone());
        match (
            args.nats_user.clone().or(file.nats_user.clone()),
            args.nats_password.clone().or(file.nats_password.clone()),
        ) {
            (Some(u), Some(p)) => fleet.user_password = Some((u, p)),
            (None, None) => {}
            _ => return err("nats-user and nats-password go together"),
        }
        fleet.max_age = duration!(fleet_max_age, fleet.max_age);
        fleet.max_bytes = bytes!(fleet_max_bytes, fleet.max_bytes);
        if let Some(n) = args.fleet_buffer.or(file.fleet_buffer) {
            if n == 0 {
                return err("fleet-buffer must be at least 1");
            }
            fleet.buffer = n;
        }
        fleet.heartbeat_interval = duration!(fleet_heartbeat_interval, fleet.heartbeat_interval);
        fleet.apply_bans = args.fleet_apply_bans || file.fleet_apply_bans.unwrap_or(false);
        let trusted = args
            .fleet_trusted_keys
            .clone()
            .or(file.fleet_trusted_keys.clone());
        match trusted {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError(format!(
                        "fleet-trusted-keys: cannot read {}: {e}",
                        path.display()
                    ))
                })?;
                fleet.trusted_keys =
                    meshd_actors::fleet::core::TrustedKeys::parse(&text).map_err(|e| {
                        ConfigError(format!("fleet-trusted-keys: {}: {e}", path.display()))
                    })?;
            }
            None if fleet.apply_bans => {
                return err("fleet-apply-bans needs --fleet-trusted-keys FILE: advisories are applied only from the nodes it lists");
            }
            None => {}
        }
        if let Some(r) = args.fleet_replicas.or(file.fleet_replicas) {
            if !(1..=5).contains(&r) {
                return err("fleet-replicas must be 1 to 5 (JetStream's limit)");
            }
            fleet.replicas = r;
        }
        node.fleet = Some(fleet);
    } else if args.fleet_apply_bans
        || args.fleet.is_some()
        || args.node_name.is_some()
        || args.fleet_trusted_keys.is_some()
    {
        return err(
            "--fleet, --node-name, --fleet-apply-bans and --fleet-trusted-keys need --nats URL",
        );
    }
    if let Some(hex) = args
        .minimum_chain_work
        .clone()
        .or(file.minimum_chain_work.clone())
    {
        let digits = hex.trim().trim_start_matches("0x").trim_start_matches('0');
        node.minimum_chain_work = Some(if digits.is_empty() {
            0
        } else {
            match u128::from_str_radix(digits, 16) {
                Ok(v) => v,
                Err(_) => {
                    return err(format!(
                        "minimum-chain-work: {hex:?} is not a hex number below 2^128"
                    ))
                }
            }
        });
    }
    let no_metrics = args.no_metrics || file.no_metrics.unwrap_or(false);
    let metrics = match (no_metrics, args.metrics.clone().or(file.metrics.clone())) {
        (true, Some(_)) => return err("no-metrics and metrics cannot both be given"),
        (true, None) => None,
        (false, Some(m)) => Some(parse_endpoint("metrics", &m, profile.metrics_port)?),
        (false, None) => Some(SocketAddr::from(([127, 0, 0, 1], profile.metrics_port))),
    };
    let metrics_remote = args.metrics_allow_remote || file.metrics_allow_remote.unwrap_or(false);
    if let Some(m) = metrics {
        if !m.ip().is_loopback() && !metrics_remote {
            // Unauthenticated, and every peer's IP is in it (Core's RPC binds loopback too).
            return err(format!(
                "metrics: {m} is not a loopback address; add --metrics-allow-remote to expose the metrics (they list every peer's IP, without authentication)"
            ));
        }
    }
    let no_api = args.no_api || file.no_api.unwrap_or(false);
    let api = match (no_api, args.api.clone().or(file.api.clone())) {
        (true, Some(_)) => return err("no-api and api cannot both be given"),
        (true, None) => None,
        (false, Some(a)) => Some(parse_endpoint("api", &a, profile.api_port)?),
        (false, None) => Some(SocketAddr::from(([127, 0, 0, 1], profile.api_port))),
    };
    let allow_remote = args.api_allow_remote || file.api_allow_remote.unwrap_or(false);
    if let Some(a) = api {
        if !a.ip().is_loopback() && !allow_remote {
            return err(format!(
                "api: {a} is not a loopback address; add --api-allow-remote to expose the admin API"
            ));
        }
    }
    let api_token = args.api_token.clone().or(file.api_token.clone());
    if api_token.as_ref().is_some_and(|t| t.len() < 16) {
        return err("api-token: use at least 16 characters");
    }
    let rpc = match args.rpc.clone().or(file.rpc.clone()) {
        None => None,
        Some(r) => Some(parse_endpoint(
            "rpc",
            &r,
            crate::rpc_auth::default_rpc_port(profile.id),
        )?),
    };
    let rpc_remote = args.rpc_allow_remote || file.rpc_allow_remote.unwrap_or(false);
    if let Some(r) = rpc {
        if !r.ip().is_loopback() && !rpc_remote {
            return err(format!(
                "rpc: {r} is not a loopback address; add --rpc-allow-remote to expose the JSON-RPC"
            ));
        }
    }
    let rpcauth_lines = if args.rpcauth.is_empty() {
        file.rpcauth.clone().unwrap_or_default()
    } else {
        args.rpcauth.clone()
    };
    let rpcauth = rpcauth_lines
        .iter()
        .map(|l| crate::rpc_auth::RpcAuthUser::parse(l).map_err(ConfigError))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Settings {
        api,
        api_token,
        rpc,
        rpcauth,
        metrics,
        node,
        log_format: args
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text),
        log_level: args.log_level.clone().or(file.log_level),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_key_is_a_known_one_and_the_other_way_round() {
        // serde lists the fields it takes when it meets one it does not.
        let e = toml::from_str::<FileConfig>("zzz = 1").unwrap_err();
        let msg = e.message().to_string();
        let list = msg.split("expected one of ").nth(1).expect("a list");
        let serde_keys: Vec<String> = list
            .split(", ")
            .map(|k| k.trim_matches(|c| c == '`' || c == ' ').to_string())
            .collect();
        let mut known = file_keys();
        known.sort();
        let mut serde_sorted = serde_keys.clone();
        serde_sorted.sort();
        assert_eq!(known, serde_sorted);
    }

    #[test]
    fn config_file_errors_say_where_and_what_in_words() {
        let e = parse_file("max_inbound = 10\n").unwrap_err().0;
        assert_eq!(e, "unknown key `max_inbound`; did you mean `max-inbound`?");
        let e = parse_file("max-inbuond = 10\n").unwrap_err().0;
        assert!(e.contains("did you mean `max-inbound`"), "{e}");
        let e = parse_file("zzzz = 1").unwrap_err().0;
        assert!(e.contains("meshd --help"), "{e}");
        let e = parse_file("network = \"regtest\"\nmax-inbound = \"ten\"\n")
            .unwrap_err()
            .0;
        assert!(e.starts_with("line 2, column 15: "), "{e}");
        assert!(!e.contains("u32") && e.contains("whole number"), "{e}");
        let e = parse_file("network = [\n").unwrap_err().0;
        assert!(e.starts_with("line "), "{e}");
    }

    #[test]
    fn durations_take_days() {
        assert_eq!(
            parse_duration("ban-duration", "7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert!(parse_duration("ban-duration", "7w")
            .unwrap_err()
            .0
            .contains("d"));
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("k", "90").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("k", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_duration("k", "2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("k", "0").is_err());
        assert!(parse_duration("k", "soon").is_err());
        assert!(parse_duration("k", "5 fortnights").is_err());
    }

    #[test]
    fn byte_counts_take_units() {
        assert_eq!(parse_bytes("k", "1000").unwrap(), 1000);
        assert_eq!(parse_bytes("k", "500k").unwrap(), 500_000);
        assert_eq!(parse_bytes("k", "2M/s").unwrap(), 2_000_000);
        assert_eq!(parse_bytes("k", "1MiB").unwrap(), 1_048_576);
        assert!(parse_bytes("k", "lots").is_err());
        assert!(parse_bytes("k", "5 parsecs").is_err());
    }

    #[test]
    fn endpoints_accept_ipv6_brackets_and_bare_ips() {
        assert_eq!(
            parse_endpoint("k", "[::1]:1", 9).unwrap(),
            "[::1]:1".parse().unwrap()
        );
        assert_eq!(
            parse_endpoint("k", "[::1]", 9).unwrap(),
            "[::1]:9".parse().unwrap()
        );
        assert_eq!(
            parse_endpoint("k", "10.0.0.1", 9).unwrap(),
            "10.0.0.1:9".parse().unwrap()
        );
        assert!(parse_endpoint("k", "example.com:1", 9).is_err());
        assert!(parse_endpoint("k", "1.2.3.4:99999", 9).is_err());
    }

    #[test]
    fn proxies_take_optional_credentials() {
        let p = parse_proxy("proxy", "127.0.0.1:9050").unwrap();
        assert_eq!(p.addr, "127.0.0.1:9050".parse().unwrap());
        assert_eq!(p.credentials, None);
        let p = parse_proxy("proxy", "alice:s3:cret@[::1]:1080").unwrap();
        assert_eq!(p.addr, "[::1]:1080".parse().unwrap());
        assert_eq!(
            p.credentials,
            Some(("alice".to_string(), "s3:cret".to_string()))
        );
        assert_eq!(parse_proxy("proxy", "127.0.0.1").unwrap().addr.port(), 9050);
        assert!(parse_proxy("proxy", "nopassword@127.0.0.1:1").is_err());
        assert!(parse_proxy("proxy", "tor.example:9050").is_err());
    }

    #[test]
    fn peers_may_be_onion_names() {
        let name = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion";
        let mut overlays = Vec::new();
        let a = parse_peer("connect", &format!("{name}:8333"), 18444, &mut overlays).unwrap();
        let b = parse_peer("connect", name, 18444, &mut overlays).unwrap();
        assert_eq!(overlays.len(), 1, "one name, kept once");
        assert_eq!(a, overlays[0].internal(8333));
        assert_eq!(b.port(), 18444);
        assert_eq!(
            parse_peer("connect", "127.0.0.1:5", 1, &mut overlays).unwrap(),
            "127.0.0.1:5".parse().unwrap()
        );
        let v2 = parse_peer("connect", "expyuzz4wqqyqhjn.onion:8333", 1, &mut overlays);
        assert!(v2.unwrap_err().0.contains("v2"));
        assert!(parse_peer("connect", &format!("{name}:x"), 1, &mut overlays).is_err());
    }

    #[test]
    fn onlynet_needs_a_route_and_knows_its_networks() {
        let run = |args: RunArgs| resolve_with(&args, FileConfig::default());
        let s = run(RunArgs {
            onlynet: vec!["onion".into(), "ipv4".into()],
            onion: Some("127.0.0.1:9050".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.node.onlynet, vec![Network::Onion, Network::Ipv4]);
        assert_eq!(
            s.node.reachable_networks(),
            vec![Network::Ipv4, Network::Onion]
        );
        assert!(run(RunArgs {
            onlynet: vec!["onion".into()],
            ..Default::default()
        })
        .unwrap_err()
        .0
        .contains("needs --onion or --proxy"));
        assert!(run(RunArgs {
            onlynet: vec!["carrier-pigeon".into()],
            ..Default::default()
        })
        .is_err());
        assert!(run(RunArgs {
            onlynet: vec!["i2p".into()],
            ..Default::default()
        })
        .is_err());
        // The file takes the same keys.
        let file = parse_file(
            "proxy = \"127.0.0.1:9050\"\nproxy-randomize = false\nonlynet = [\"onion\"]\n\
             torcontrol = \"127.0.0.1:9051\"\nlistenonion = false\n",
        )
        .unwrap();
        let s = resolve_with(&RunArgs::default(), file).unwrap();
        assert!(!s.node.proxy_randomize && !s.node.listen_onion);
        assert_eq!(s.node.tor_control, Some("127.0.0.1:9051".parse().unwrap()));
        assert_eq!(s.node.onion_route().unwrap().addr.port(), 9050);
    }

    #[test]
    fn fleet_flags_and_their_rules() {
        let run = |args: RunArgs| resolve_with(&args, FileConfig::default());
        let s = run(RunArgs::default()).unwrap();
        assert!(s.node.fleet.is_none());
        let dir = tempfile::tempdir().unwrap();
        let key = meshd_actors::fleet::key::load_or_create(dir.path()).unwrap();
        let public = meshd_actors::fleet::core::public_key_hex(&key.verifying_key());
        let keys = dir.path().join("trusted");
        std::fs::write(&keys, format!("# the fleet\n{public} eu-2\n")).unwrap();
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, "not a key\n").unwrap();
        let s = run(RunArgs {
            nats: Some("nats://127.0.0.1:4222,nats://127.0.0.2:4222".into()),
            fleet_apply_bans: true,
            fleet_trusted_keys: Some(keys.clone()),
            fleet_max_age: Some("48h".into()),
            fleet_max_bytes: Some("10MiB".into()),
            fleet_replicas: Some(3),
            ..Default::default()
        })
        .unwrap();
        let f = s.node.fleet.unwrap();
        assert_eq!(f.fleet, "default");
        assert!(f.node_name.ends_with("-regtest"), "{}", f.node_name);
        assert!(f.apply_bans);
        assert_eq!(
            f.trusted_keys.name_of(&key.verifying_key().to_bytes()),
            Some("eu-2")
        );
        assert_eq!(f.max_age, Duration::from_secs(2 * 86_400));
        assert_eq!(f.max_bytes, 10 * 1024 * 1024);
        assert_eq!(f.replicas, 3);
        for bad in [
            RunArgs {
                fleet_apply_bans: true,
                ..Default::default()
            },
            // Applying advisories without saying whose: refused (no implicit trust).
            RunArgs {
                nats: Some("nats://127.0.0.1:4222".into()),
                fleet_apply_bans: true,
                ..Default::default()
            },
            RunArgs {
                nats: Some("nats://127.0.0.1:4222".into()),
                fleet_apply_bans: true,
                fleet_trusted_keys: Some(garbage.clone()),
                ..Default::default()
            },
            RunArgs {
                fleet_trusted_keys: Some(keys.clone()),
                ..Default::default()
            },
            RunArgs {
                nats: Some("nats://127.0.0.1:4222".into()),
                nats_user: Some("u".into()),
                ..Default::default()
            },
            RunArgs {
                nats: Some("nats://127.0.0.1:4222".into()),
                fleet_buffer: Some(0),
                ..Default::default()
            },
            RunArgs {
                nats: Some("nats://127.0.0.1:4222".into()),
                fleet_replicas: Some(7),
                ..Default::default()
            },
        ] {
            assert!(run(bad).is_err());
        }
        let file = parse_file(&format!(
            "nats = \"nats://127.0.0.1:4222\"\nfleet = \"prod\"\nnode-name = \"eu-1\"\nfleet-apply-bans = true\nfleet-trusted-keys = \"{}\"\n",
            keys.display()
        ))
        .unwrap();
        let f = resolve_with(&RunArgs::default(), file)
            .unwrap()
            .node
            .fleet
            .unwrap();
        assert_eq!((f.fleet.as_str(), f.node_name.as_str()), ("prod", "eu-1"));
        assert!(f.apply_bans);
    }

    #[test]
    fn flags_override_the_file_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "network = \"testnet4\"\nping-interval = 30\nconnect = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        let args = RunArgs {
            config: Some(path.clone()),
            ping_interval: Some("10s".into()),
            ..Default::default()
        };
        let s = resolve(&args).unwrap();
        assert_eq!(s.node.network, NetworkId::Testnet4);
        assert_eq!(s.node.ping_interval, Duration::from_secs(10));
        assert_eq!(s.node.connect, vec!["127.0.0.1:1".parse().unwrap()]);
        assert!(s.node.datadir.ends_with("testnet4"));

        std::fs::write(&path, "pingg-interval = 30\n").unwrap();
        let e = resolve(&args).unwrap_err().to_string();
        assert!(e.contains("pingg-interval"), "{e}");
    }
}
