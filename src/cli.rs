//! Command-line interface: `meshd [run] [OPTIONS]`.
//!
//! Every option of `run` has a key of the same name in the TOML config file (`--config`);
//! a flag given on the command line overrides the file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// meshd: a long-running peer-to-peer node for Bitcoin-family networks (BTC and BSV).
#[derive(Debug, Parser)]
#[command(name = "meshd", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `run`, accepted without the subcommand too.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `meshd fleet ...`.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Print this node's fleet signing key (made on first use, kept 0600 in the data dir)
    /// as a line for the other nodes' --fleet-trusted-keys file.
    Key {
        /// The node's data directory. [default: $XDG_DATA_HOME/meshd, else ~/.meshd]
        #[arg(long, value_name = "DIR")]
        datadir: Option<PathBuf>,
        /// The node's network. [default: regtest]
        #[arg(long, value_name = "NETWORK")]
        network: Option<String>,
        /// The node's --node-name, for the line printed. [default: HOSTNAME-NETWORK]
        #[arg(long, value_name = "NAME")]
        node_name: Option<String>,
    },
    /// One line per node of the fleet, from their heartbeats; stale nodes marked.
    Status(ClientArgs),
    /// Per block: when the first and the last node saw it, p50/p90 delay across nodes.
    Propagation {
        /// The newest N blocks.
        #[arg(long, default_value_t = 10)]
        last: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `meshd overlay ...`.
#[derive(Debug, Subcommand)]
pub enum OverlayCommand {
    /// The overlay's peer id, addresses, AutoNAT's reachability, DHT table, topics, relay
    /// reservations and relay service.
    Status(ClientArgs),
    /// One line per connected overlay peer: id, address, how it was found, relayed or
    /// direct, topic cluster and similarity to us, round trip, agent.
    Peers(ClientArgs),
    /// The topics this node announces, each with the connected peers that serve it too.
    Topics(ClientArgs),
    /// The overlay peers that serve TOPIC, found by a DHT walk (at most 30 s).
    Find {
        /// The topic, e.g. meshd/mainnet/compact-blocks.
        topic: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `meshd hints ...`.
#[derive(Debug, Subcommand)]
pub enum HintsCommand {
    /// Write header hints (a best-chain hash every 2,000 heights) from the running node's
    /// chain to FILE, for `--header-hints FILE`.
    Export {
        /// The file to write (replaced atomically).
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node (the default).
    Run(Box<RunArgs>),
    /// Show the running node: version, uptime, data dir, addresses, peers, tip, sync state.
    Status(ClientArgs),
    /// Stop the running node (as SIGTERM does) and wait until it has exited.
    Stop(ClientArgs),
    /// List connected peers.
    Peers(ClientArgs),
    /// Connections by network and direction, then a row per peer (as `bitcoin-cli -netinfo 4`).
    Netinfo(ClientArgs),
    /// A live view of peers, sync, traffic and events (q quits).
    Top {
        /// Seconds between readings.
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        interval: f64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show listen and public addresses, NAT type, slots and limits.
    Network(ClientArgs),
    /// Show header-sync status.
    Sync {
        /// Wait until the headers are synced, with a progress bar (exit 0 once synced).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (exit 1), e.g. `10m`. [default: no limit]
        #[arg(long, value_name = "DURATION", requires = "wait")]
        timeout: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List bans.
    Bans(ClientArgs),
    /// List the manual peers (`--connect`, `--addnode`, `meshd addnode`) and their state, as
    /// Core's getaddednodeinfo.
    Addednodes(ClientArgs),
    /// Ban an IP address or CIDR subnet.
    Ban {
        /// IP or CIDR subnet, IPv4 or IPv6.
        addr: String,
        /// Length of the ban (`24h`, `90m`). [default: the node's ban-duration]
        #[arg(long)]
        duration: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lift a ban.
    Unban {
        /// IP or CIDR subnet, as banned.
        addr: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Connect to a peer and keep it connected (or try once with --onetry).
    Addnode {
        /// IP:PORT (or an IP for the network's port).
        addr: String,
        /// Try once; do not keep the peer connected.
        #[arg(long)]
        onetry: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Disconnect a peer by id (see `meshd peers`).
    Disconnect {
        /// Peer id (as `meshd peers` shows it), or its address (`IP:PORT`), as Core's
        /// disconnectnode takes either.
        peer: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The fleet on NATS (`--nats`): `status` or `propagation`.
    Fleet {
        #[command(subcommand)]
        what: FleetCommand,
    },
    /// The libp2p overlay (`--overlay`): `status` or `peers`.
    Overlay {
        #[command(subcommand)]
        what: OverlayCommand,
    },
    /// Header hints: `export FILE` writes them from the node's chain.
    Hints {
        #[command(subcommand)]
        what: HintsCommand,
    },
    /// Mine N blocks (regtest only).
    Generate {
        /// How many blocks.
        n: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stream the node's events.
    Events {
        /// Only these event types (repeatable or comma-separated), e.g. PeerBanned.
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the configuration, or change runtime keys: `meshd config max-inbound=50`.
    Config {
        /// KEY=VALUE pairs to change (runtime keys only).
        pairs: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// How a CLI subcommand reaches the node's admin API.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Admin API address. [default: the running node's, from DIR/<network>/meshd.json;
    /// else the config file's `api`; else 127.0.0.1 and the network's API port]
    #[arg(long, value_name = "ADDR")]
    pub api: Option<String>,
    /// The node's data directory (its address from DIR/<network>/meshd.json, the token from
    /// DIR/<network>/.cookie). [default: the config file's `datadir`; else $XDG_DATA_HOME/meshd, else ~/.meshd]
    #[arg(long, value_name = "DIR")]
    pub datadir: Option<PathBuf>,
    /// The node's config file: its `datadir`, `network` and `api` keys find the node.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The node's network. [default: the config file's; else the one node running under
    /// the data dir; else regtest]
    #[arg(long, value_name = "NAME")]
    pub network: Option<String>,
    /// API token, instead of reading the cookie file.
    #[arg(long, value_name = "TOKEN", env = "MESHD_API_TOKEN")]
    pub api_token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options of `meshd run`.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// TOML config file; its keys are the long option names (e.g. `ping-interval = "2m"`).
    #[arg(help_heading = "Basics", long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Network: mainnet, testnet3, testnet4, signet, regtest, bsv-mainnet, bsv-testnet,
    /// bsv-stn, bsv-regtest. [default: regtest]
    #[arg(help_heading = "Basics", long, value_name = "NAME")]
    pub network: Option<String>,

    /// Data directory; state lives in DIR/<network>/. [default: $XDG_DATA_HOME/meshd, else ~/.meshd]
    #[arg(help_heading = "Basics", long, value_name = "DIR")]
    pub datadir: Option<PathBuf>,

    /// Accept peers on ADDR (repeatable): `127.0.0.1:18444`, `[::1]:18444`, or an IP alone
    /// for the network's default port. [default: 127.0.0.1 on regtest, 0.0.0.0 elsewhere]
    #[arg(help_heading = "Connections", long, value_name = "ADDR")]
    pub listen: Vec<String>,

    /// Do not accept inbound peers at all.
    #[arg(help_heading = "Connections", long)]
    pub no_listen: bool,

    /// Dial ADDR and keep it connected (repeatable); manual peers skip the services check.
    /// An onion name (`NAME.onion:PORT`) is dialled through --onion or --proxy.
    #[arg(help_heading = "Connections", long, value_name = "ADDR")]
    pub connect: Vec<String>,

    /// Log format.
    #[arg(help_heading = "Basics", long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info,meshd_actors=debug`); RUST_LOG
    /// is used when neither this nor the config key is set. [default: info]
    #[arg(help_heading = "Basics", long, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Time allowed for version and verack to cross (`60s`, `1m`, `500ms`). [default: 60s]
    #[arg(help_heading = "Connections", long, value_name = "DURATION")]
    pub handshake_timeout: Option<String>,

    /// Interval between pings to each peer. [default: 2m]
    #[arg(help_heading = "Connections", long, value_name = "DURATION")]
    pub ping_interval: Option<String>,

    /// Disconnect a peer whose pong is this late. [default: 20m]
    #[arg(help_heading = "Connections", long, value_name = "DURATION")]
    pub ping_timeout: Option<String>,

    /// Time allowed for an outbound TCP connect. [default: 5s]
    #[arg(help_heading = "Connections", long, value_name = "DURATION")]
    pub connect_timeout: Option<String>,

    /// Refuse peers announcing a lower protocol version. [default: 70001]
    #[arg(help_heading = "Connections", long, value_name = "N")]
    pub min_protocol_version: Option<u32>,

    /// Service bits we announce, decimal or 0x-hex. [default: 0x9 on regtest, 0 elsewhere]
    #[arg(help_heading = "Connections", long, value_name = "BITS")]
    pub services: Option<String>,

    /// Service bits automatic outbound peers must announce, decimal or 0x-hex. [default: 0x1]
    #[arg(help_heading = "Connections", long, value_name = "BITS")]
    pub required_services: Option<String>,

    /// Refuse peers whose user agent contains PATTERN (repeatable).
    #[arg(help_heading = "Bans and permissions", long, value_name = "PATTERN")]
    pub ban_user_agent: Vec<String>,

    /// Give peers from CIDR these permissions (repeatable; Bitcoin Core's names: noban, relay,
    /// download, addr, bloomfilter; none given: noban,relay,download).
    #[arg(
        help_heading = "Bans and permissions",
        long,
        value_name = "[PERMISSIONS@]CIDR"
    )]
    pub whitelist: Vec<String>,

    /// BSV only: largest block or transaction message accepted, in bytes. [default: 268435456]
    #[arg(help_heading = "Connections", long, value_name = "BYTES")]
    pub max_block_message_size: Option<u32>,

    /// Add ADDR as an outbound candidate (repeatable), dialled while outbound slots are free.
    #[arg(help_heading = "Connections", long, value_name = "ADDR")]
    pub addnode: Vec<String>,

    /// Outbound connection slots. [default: 8]
    #[arg(help_heading = "Connections", long, value_name = "N")]
    pub max_outbound: Option<u32>,

    /// Block-relay-only outbound slots (Core's 2): peers that carry blocks only, apart from
    /// the full-relay outbound slots. [default: 2]
    #[arg(help_heading = "Connections", long, value_name = "N")]
    pub max_block_relay_only: Option<u32>,

    /// Inbound connection slots. [default: 114]
    #[arg(help_heading = "Connections", long, value_name = "N")]
    pub max_inbound: Option<u32>,

    /// Connections in total. [default: 125]
    #[arg(help_heading = "Connections", long, value_name = "N")]
    pub max_connections: Option<u32>,

    /// Global upload limit in bytes/s (`500k`, `2M`, `1MiB`); 0 means unlimited. [default: 0]
    #[arg(help_heading = "Bandwidth", long, value_name = "RATE")]
    pub max_upload_rate: Option<String>,

    /// Global download limit in bytes/s; 0 means unlimited. [default: 0]
    #[arg(help_heading = "Bandwidth", long, value_name = "RATE")]
    pub max_download_rate: Option<String>,

    /// Burst of the global upload bucket in bytes. [default: rate/10, at least 16 KiB]
    #[arg(help_heading = "Bandwidth", long, value_name = "BYTES")]
    pub upload_burst: Option<String>,

    /// Burst of the global download bucket in bytes. [default: rate/10, at least 16 KiB]
    #[arg(help_heading = "Bandwidth", long, value_name = "BYTES")]
    pub download_burst: Option<String>,

    /// Per-connection upload limit in bytes/s; 0 means unlimited. [default: 0]
    #[arg(help_heading = "Bandwidth", long, value_name = "RATE")]
    pub peer_max_upload_rate: Option<String>,

    /// Per-connection download limit in bytes/s; 0 means unlimited. [default: 0]
    #[arg(help_heading = "Bandwidth", long, value_name = "RATE")]
    pub peer_max_download_rate: Option<String>,

    /// Burst of each connection's buckets in bytes. [default: rate/10, at least 16 KiB]
    #[arg(help_heading = "Bandwidth", long, value_name = "BYTES")]
    pub peer_burst: Option<String>,

    /// Misbehaviour score at which a peer is disconnected and discouraged. [default: 100]
    #[arg(help_heading = "Bans and permissions", long, value_name = "N")]
    pub ban_threshold: Option<u32>,

    /// Length of a ban given without one (`meshd ban`). [default: 24h]
    #[arg(help_heading = "Bans and permissions", long, value_name = "DURATION")]
    pub ban_duration: Option<String>,

    /// Discourage misbehaving loopback peers too (Bitcoin Core never does).
    #[arg(help_heading = "Bans and permissions", long)]
    pub ban_local_peers: bool,

    /// First restart delay ceiling of an outbound peer (doubles per restart). [default: 1s]
    #[arg(help_heading = "Connections", long, value_name = "DURATION")]
    pub restart_base_delay: Option<String>,

    /// Largest restart delay ceiling. [default: 60s]
    #[arg(help_heading = "Connections", long, value_name = "DURATION")]
    pub restart_max_delay: Option<String>,

    /// Restarts of a manual peer allowed inside the window before giving up on it for the
    /// rest of the window. [default: none: never given up, as Core's added nodes]
    #[arg(help_heading = "Connections", long, value_name = "N")]
    pub restart_max: Option<usize>,

    /// Sliding window for restart-max. [default: 10m]
    #[arg(help_heading = "Connections", long, value_name = "DURATION")]
    pub restart_window: Option<String>,

    /// Uptime after which a connection's restart history is cleared. [default: 2m]
    #[arg(help_heading = "Connections", long, value_name = "DURATION")]
    pub restart_stable_after: Option<String>,

    /// Serve Prometheus metrics on ADDR at /metrics. [default: 127.0.0.1 and the network's metrics port: 9184 mainnet, 18452 regtest, ...]
    #[arg(
        help_heading = "Operator interfaces (API, JSON-RPC, metrics)",
        long,
        value_name = "ADDR"
    )]
    pub metrics: Option<String>,

    /// Do not serve metrics.
    #[arg(help_heading = "Operator interfaces (API, JSON-RPC, metrics)", long)]
    pub no_metrics: bool,

    /// Serve the admin API on ADDR. [default: 127.0.0.1 and the network's API port, e.g. 18450 on regtest]
    #[arg(
        help_heading = "Operator interfaces (API, JSON-RPC, metrics)",
        long,
        value_name = "ADDR"
    )]
    pub api: Option<String>,

    /// Do not serve the admin API.
    #[arg(help_heading = "Operator interfaces (API, JSON-RPC, metrics)", long)]
    pub no_api: bool,

    /// Fixed API token instead of a random one written to DATADIR/<network>/.cookie.
    #[arg(
        help_heading = "Operator interfaces (API, JSON-RPC, metrics)",
        long,
        value_name = "TOKEN"
    )]
    pub api_token: Option<String>,

    /// Allow the admin API on a non-loopback address.
    #[arg(help_heading = "Operator interfaces (API, JSON-RPC, metrics)", long)]
    pub api_allow_remote: bool,

    /// Allow metrics on a non-loopback address (unauthenticated: they list every peer's IP).
    #[arg(help_heading = "Operator interfaces (API, JSON-RPC, metrics)", long)]
    pub metrics_allow_remote: bool,

    /// Serve a Bitcoin Core-compatible JSON-RPC on ADDR (off unless given; a bare IP takes
    /// Core's RPC port of the network, e.g. 18443 on regtest). Cookie: DATADIR/<network>/.cookie-rpc.
    #[arg(
        help_heading = "Operator interfaces (API, JSON-RPC, metrics)",
        long,
        value_name = "ADDR"
    )]
    pub rpc: Option<String>,

    /// A JSON-RPC user, as Core's: USER:SALT$HASH from share/rpcauth/rpcauth.py (repeatable).
    #[arg(
        help_heading = "Operator interfaces (API, JSON-RPC, metrics)",
        long,
        value_name = "USER:SALT$HASH"
    )]
    pub rpcauth: Vec<String>,

    /// Allow the JSON-RPC on a non-loopback address.
    #[arg(help_heading = "Operator interfaces (API, JSON-RPC, metrics)", long)]
    pub rpc_allow_remote: bool,

    /// DNS server for seed lookups, ADDR:PORT (repeatable). [default: the system resolver]
    #[arg(help_heading = "Discovery and NAT", long, value_name = "ADDR:PORT")]
    pub dns_server: Vec<String>,

    /// DNS seed name to query instead of the network's list (repeatable).
    #[arg(help_heading = "Discovery and NAT", long, value_name = "NAME")]
    pub dns_seed: Vec<String>,

    /// Do not query DNS seeds.
    #[arg(help_heading = "Discovery and NAT", long)]
    pub no_dns_seed: bool,

    /// Our publicly reachable address, advertised to peers (repeatable); an IP alone means the
    /// network's port. [default: none; on regtest the specific addresses we listen on]
    #[arg(help_heading = "Discovery and NAT", long, value_name = "ADDR")]
    pub externalip: Vec<String>,

    /// Count loopback and private addresses each as their own network group (true/false).
    /// [default: true on regtest, false elsewhere]
    #[arg(help_heading = "Discovery and NAT", long, value_name = "BOOL")]
    pub distinct_local_groups: Option<bool>,

    /// How often the address book is saved (also at shutdown). [default: 15m]
    #[arg(help_heading = "Discovery and NAT", long, value_name = "DURATION")]
    pub addrbook_save_interval: Option<String>,

    /// STUN server, HOST:PORT (repeatable; tried in order). [default: public servers on the
    /// public networks, none on regtest]
    #[arg(help_heading = "Discovery and NAT", long, value_name = "HOST:PORT")]
    pub stun_server: Vec<String>,

    /// Do not use STUN.
    #[arg(help_heading = "Discovery and NAT", long)]
    pub no_stun: bool,

    /// Map the listening port on the gateway with PCP, falling back to NAT-PMP (Core's
    /// -natpmp); only listeners on non-loopback addresses, never through --proxy. The
    /// mapping is renewed at about half its lifetime and deleted at shutdown.
    /// [default: true]
    #[arg(help_heading = "Discovery and NAT", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub natpmp: Option<bool>,

    /// Map the listening port with UPnP IGD when PCP and NAT-PMP found nothing (or with
    /// --natpmp=false). [default: false]
    #[arg(help_heading = "Discovery and NAT", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub upnp: Option<bool>,

    /// Run the libp2p overlay beside the Bitcoin protocol: Kademlia DHT, GossipSub, AutoNAT,
    /// circuit relay v2 and hole punching (DCUtR), with its own identity
    /// (overlay_key.dat). Never with --proxy. [default: false]
    #[arg(help_heading = "Overlay (libp2p)", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub overlay: Option<bool>,

    /// Overlay address to listen on (repeatable), e.g. /ip4/0.0.0.0/tcp/8335 or
    /// /ip4/0.0.0.0/udp/8335/quic-v1. [default: TCP and QUIC on 0.0.0.0 at the network's
    /// port + 2]
    #[arg(help_heading = "Overlay (libp2p)", long, value_name = "MULTIADDR")]
    pub overlay_listen: Vec<String>,

    /// Overlay peer to join through (repeatable), ending in /p2p/<peer id>.
    #[arg(help_heading = "Overlay (libp2p)", long, value_name = "MULTIADDR")]
    pub overlay_bootstrap: Vec<String>,

    /// Find overlay peers on the LAN by mDNS (announces us on the segment). [default: false]
    #[arg(help_heading = "Overlay (libp2p)", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub overlay_mdns: Option<bool>,

    /// A topic the overlay announces (repeatable) beside its defaults: meshd/<network>,
    /// .../blocks, .../compact-blocks, .../hints and .../relay.
    #[arg(help_heading = "Overlay (libp2p)", long, value_name = "TOPIC")]
    pub overlay_topic: Vec<String>,

    /// Jaccard similarity of topic sets above which overlay peers share a cluster (0 to
    /// 1); the most crowded cluster is thinned first when the overlay has too many peers.
    /// [default: 0.7]
    #[arg(help_heading = "Overlay (libp2p)", long, value_name = "FRACTION")]
    pub overlay_cluster_threshold: Option<f64>,

    /// Serve as a circuit relay v2 for overlay peers behind NATs, within bounded
    /// reservations and circuits. [default: true]
    #[arg(help_heading = "Overlay (libp2p)", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub overlay_relay_service: Option<bool>,

    /// Limit on one STUN transaction, retransmissions included. [default: 3s]
    #[arg(help_heading = "Discovery and NAT", long, value_name = "DURATION")]
    pub stun_timeout: Option<String>,

    /// How long a STUN result is trusted before probing again. [default: 5m]
    #[arg(help_heading = "Discovery and NAT", long, value_name = "DURATION")]
    pub stun_interval: Option<String>,

    /// Fetch blocks announced at the tip (`tip`) or none. [default: tip]
    #[arg(help_heading = "Blocks, sync and relay", long, value_name = "none|tip")]
    pub blocks: Option<String>,

    /// BIP152 compact blocks: `on` (offered to every peer that knows them, high-bandwidth
    /// with the three that last gave us a block) or `off` (blocks travel whole). [default: on]
    #[arg(help_heading = "Blocks, sync and relay", long, value_name = "on|off")]
    pub compact_blocks: Option<String>,

    /// Blocks kept in memory to answer getdata. [default: 16]
    #[arg(help_heading = "Blocks, sync and relay", long, value_name = "N")]
    pub keep_blocks: Option<usize>,

    /// Header hints file (written by `meshd hints export`): block hashes at regular heights
    /// that let headers be fetched from many peers at once. Every header is still validated;
    /// a wrong hint costs re-requests, never a wrong chain.
    #[arg(help_heading = "Blocks, sync and relay", long, value_name = "FILE")]
    pub header_hints: Option<PathBuf>,

    /// Bitcoin Core's asmap file (IP prefix to AS, Core's encoded format, as published with
    /// Core or built by its contrib/asmap tool): peers are grouped by the AS that announces
    /// them instead of by /16, for address-book buckets, outbound diversity and eviction. A
    /// relative path is in the network's data directory (DATADIR/<network>/), as in Core.
    #[arg(help_heading = "Blocks, sync and relay", long, value_name = "FILE")]
    pub asmap: Option<PathBuf>,

    /// Which pooled transactions are announced to peers: `vouched` (those an outbound
    /// full-relay peer sent or announced, or a `relay`-whitelisted peer sent: meshd checks no
    /// scripts or inputs, so it passes on only what a validating node vouched for), `all`
    /// (every transaction that passes the context-free checks), or `none`. [default: vouched]
    #[arg(
        help_heading = "Blocks, sync and relay",
        long,
        value_name = "vouched|all|none"
    )]
    pub tx_relay: Option<String>,

    /// Transactions the relay pool holds at most. [default: 10000]
    #[arg(help_heading = "Blocks, sync and relay", long, value_name = "N")]
    pub tx_pool_max_count: Option<usize>,

    /// Bytes the relay pool holds at most. [default: 32MiB]
    #[arg(help_heading = "Blocks, sync and relay", long, value_name = "BYTES")]
    pub tx_pool_max_bytes: Option<String>,

    /// Age after which a pooled transaction is dropped. [default: 1h]
    #[arg(help_heading = "Blocks, sync and relay", long, value_name = "DURATION")]
    pub tx_pool_max_age: Option<String>,

    /// Announce transactions at once instead of on Poisson timers (benchmarks).
    #[arg(help_heading = "Blocks, sync and relay", long)]
    pub no_trickle: bool,

    /// BIP324 v2 encrypted transport (Core's -v2transport): announce NODE_P2P_V2, accept v2
    /// inbound, try v2 outbound with a v1 fallback. BTC networks only; BSV stays v1.
    /// [default: true]
    #[arg(help_heading = "Connections", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub v2transport: Option<bool>,

    /// SOCKS5 proxy for every outbound connection, `[USER:PASSWORD@]HOST:PORT` (Core's
    /// -proxy). DNS seeds are then not looked up locally.
    #[arg(help_heading = "Proxies and Tor", long, value_name = "ADDR")]
    pub proxy: Option<String>,

    /// SOCKS5 proxy for onion peers only, `[USER:PASSWORD@]HOST:PORT` (Core's -onion).
    /// [default: the --proxy]
    #[arg(help_heading = "Proxies and Tor", long, value_name = "ADDR")]
    pub onion: Option<String>,

    /// Random proxy credentials per connection, so Tor gives each peer its own circuit
    /// (Core's -proxyrandomize). [default: true]
    #[arg(help_heading = "Proxies and Tor", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub proxy_randomize: Option<bool>,

    /// Make outbound connections only to this network (repeatable): ipv4, ipv6, onion,
    /// i2p, cjdns (Core's -onlynet). [default: every network with a route]
    #[arg(help_heading = "Proxies and Tor", long, value_name = "NET")]
    pub onlynet: Vec<String>,

    /// Tor's control port, for an onion service taking inbound peers (Core's -torcontrol).
    /// [default: 127.0.0.1:9051, used when it answers]
    #[arg(help_heading = "Proxies and Tor", long, value_name = "HOST:PORT")]
    pub torcontrol: Option<String>,

    /// Password for Tor's control port (otherwise cookie authentication).
    #[arg(help_heading = "Proxies and Tor", long, value_name = "PASSWORD")]
    pub torpassword: Option<String>,

    /// Use a Tor control port that asks for no authentication. Off by default: such a port
    /// may be anything listening there, and it would be handed our onion service's key.
    #[arg(help_heading = "Proxies and Tor", long)]
    pub torcontrol_null_auth: bool,

    /// Create an onion service for inbound peers through Tor's control port (Core's
    /// -listenonion). [default: true]
    #[arg(help_heading = "Proxies and Tor", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub listenonion: Option<bool>,

    /// Join a fleet: publish events, sightings, ban advisories and heartbeats to NATS
    /// JetStream at URL (comma-separated for a cluster), e.g. nats://127.0.0.1:4222.
    #[arg(help_heading = "Fleet (NATS)", long, value_name = "URL")]
    pub nats: Option<String>,

    /// NATS credentials file (JWT and NKey seed).
    #[arg(help_heading = "Fleet (NATS)", long, value_name = "FILE")]
    pub nats_credentials: Option<PathBuf>,

    /// NATS user (with --nats-password).
    #[arg(help_heading = "Fleet (NATS)", long, value_name = "USER")]
    pub nats_user: Option<String>,

    /// NATS password.
    #[arg(help_heading = "Fleet (NATS)", long, value_name = "PASSWORD")]
    pub nats_password: Option<String>,

    /// The fleet's name (a NATS subject token). [default: default]
    #[arg(help_heading = "Fleet (NATS)", long, value_name = "NAME")]
    pub fleet: Option<String>,

    /// This node's name in the fleet. [default: HOSTNAME-NETWORK]
    #[arg(help_heading = "Fleet (NATS)", long, value_name = "NAME")]
    pub node_name: Option<String>,

    /// Events kept in the fleet's stream at most this long. [default: 168h]
    #[arg(help_heading = "Fleet (NATS)", long, value_name = "DURATION")]
    pub fleet_max_age: Option<String>,

    /// Bytes kept in the fleet's stream at most. [default: 1GiB]
    #[arg(help_heading = "Fleet (NATS)", long, value_name = "BYTES")]
    pub fleet_max_bytes: Option<String>,

    /// Events waiting for NATS at most; beyond, dropped and counted. [default: 10000]
    #[arg(help_heading = "Fleet (NATS)", long, value_name = "N")]
    pub fleet_buffer: Option<usize>,

    /// Interval of this node's heartbeat in the fleet's bucket. [default: 10s]
    #[arg(help_heading = "Fleet (NATS)", long, value_name = "DURATION")]
    pub fleet_heartbeat_interval: Option<String>,

    /// Copies JetStream keeps of the fleet's stream and bucket when this node creates them
    /// (3 on a three-server NATS cluster). [default: 1]
    #[arg(help_heading = "Fleet (NATS)", long, value_name = "N")]
    pub fleet_replicas: Option<usize>,

    /// Apply other fleet nodes' ban advisories: signed by a key in --fleet-trusted-keys,
    /// one public address each, never a whitelisted or manual peer's.
    #[arg(help_heading = "Fleet (NATS)", long)]
    pub fleet_apply_bans: bool,

    /// The fleet nodes whose ban advisories are applied: one `PUBKEY NODE_NAME` per line
    /// (the key as `meshd fleet key` prints it on that node).
    #[arg(help_heading = "Fleet (NATS)", long, value_name = "FILE")]
    pub fleet_trusted_keys: Option<PathBuf>,

    /// Replace a sync peer that does not answer getheaders in this time. [default: 20s]
    #[arg(help_heading = "Blocks, sync and relay", long, value_name = "DURATION")]
    pub sync_stall_timeout: Option<String>,

    /// The node counts as synced only once its tip is at most this old (and has the minimum
    /// chain work), as Core's -maxtipage; peers' claims never decide it. [default: 24h]
    #[arg(help_heading = "Blocks, sync and relay", long, value_name = "DURATION")]
    pub max_tip_age: Option<String>,

    /// Minimum cumulative work (hex) a chain must show before its headers are stored;
    /// lower-work chains are presynced first. [default: Bitcoin Core's value per network]
    #[arg(help_heading = "Blocks, sync and relay", long, value_name = "HEX")]
    pub minimum_chain_work: Option<String>,
}
