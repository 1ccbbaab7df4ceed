//! # meshd-actors: the meshd node as a library
//!
//! meshd is a long-running peer-to-peer node for Bitcoin-family networks (BTC mainnet,
//! testnet3, testnet4, signet, regtest; BSV mainnet, testnet, STN, regtest). This crate is the
//! node itself; the `meshd` binary is a thin daemon around [`node::Node`].
//!
//! ## The supervision tree
//!
//! ```text
//! NodeSupervisor                 restarts its children rest-for-one, at most 5 in 60 s
//! ├── Manager                    peer set and peer table; supervisor of every Connection
//! │   └── Connection(peer) × N   handshake, framing, ping/RTT, send queue (one per peer)
//! ├── Listener                   accept loops; drops banned addresses; hands sockets over
//! ├── DnsDiscovery               resolves DNS seeds (hickory-resolver) when the book is short;
//! │                              behind --proxy, has the Manager addr-fetch them by name
//! ├── Stun                       public address and NAT type (RFC 5389/5780), refreshed
//! ├── PortMap                    the listening port mapped on the gateway (PCP, NAT-PMP,
//! │                              UPnP), renewed, deleted at shutdown
//! ├── Sync                       header chain, headers-first sync, block (compact) and tx relay
//! └── Overlay                    libp2p Swarm (with --overlay): Kademlia, GossipSub, mDNS,
//!                                AutoNAT, circuit relay v2, DCUtR
//! ```
//!
//!
//! ## Where things live
//!
//! One folder per actor, holding the actor (`mod.rs`) and its sans-IO cores; the actors'
//! messages in the leaf [`msg`], so an actor that sends to another imports only that. No
//! actor folder imports another (but the Manager its Connections, which it spawns); what
//! they share lives in leaves (`actors/tests/layout.rs` checks both):
//!
//! - [`connection`]: the Connection actor, its reader and writer tasks, its proxy route and
//!   the [`connection::listener`] actor;
//! - [`manager`]: the Manager and its cores [`manager::addrbook`] (Core's addrman),
//!   [`manager::eviction`], [`manager::restart`] and [`manager::addr_fetch`] (DNS seeds
//!   asked by name through a proxy);
//! - [`discovery`]: the DnsDiscovery actor;
//! - [`stun`]: the Stun actor and its codec, transaction schedule, NAT classification and
//!   UDP driver;
//! - [`portmap`]: the PortMap actor over its sans-IO PCP/NAT-PMP messages and mapper, and
//!   the UPnP client;
//! - [`overlay`]: the Overlay actor, its Swarm ([`overlay::swarm`]), the task that drives
//!   it ([`overlay::driver`]), its peers' view ([`overlay::book`]) and its key
//!   ([`overlay::identity`]);
//! - [`sync`]: the Sync actor over its sans-IO core [`sync::engine`] (each peer's state,
//!   header sync, blocks and relay, over a clock, returning actions), the header chain
//!   ([`sync::chain`]), header intake ([`sync::intake`]: a batch's route through the proof
//!   of work check, presync and the anti-DoS threshold), headers-first sync
//!   ([`sync::header_sync`]: per-peer header state, the sync session, initial sync), block
//!   download ([`sync::blocks`]: blocks in flight, stalling, who failed what, parallel
//!   compact downloads), header sync progress ([`sync::progress`]), transaction
//!   requests ([`sync::txrequest`], Core's TxRequestTracker), BIP152 compact blocks
//!   ([`sync::compact`]: short ids, reconstruction, high-bandwidth peers; a `cmpctblock`,
//!   `getblocktxn` or `blocktxn` frame goes Connection → Sync as any chain message), block
//!   checks ([`sync::block_check`]), [`sync::bloom`] and [`sync::mine`];
//! - [`fleet`] and [`tor`]: the Fleet (NATS) and TorControl actors;
//! - the vocabulary the actors share, [`shared`]: peer ids and the peer table
//!   ([`shared::peers`]), slots and permits ([`shared::slots`]), permissions
//!   ([`shared::whitelist`]), bans and discouragement ([`shared::bans`],
//!   [`shared::discourage`]), addresses, network groups and gossip ([`shared::addr`],
//!   [`shared::overlay`]), bandwidth buckets ([`shared::bandwidth`]), the resolver, and the
//!   status types the context holds ([`shared::status`], [`shared::fleet`]);
//! - shared protocol code: [`wire`], [`peer`] (handshake, ping, misbehaviour costs,
//!   disconnect reasons), [`network`], [`constants`], [`config`], [`events`], [`persist`];
//!   [`node`] holds the NodeSupervisor and the [`node::Node`] handle, [`context`] the state
//!   every actor shares.
//!
//! ## Who owns what
//!
//! - [`node::Node`] binds the listen sockets and takes an exclusive lock on the data dir before
//!   any actor starts, so a port in use or a second process on the same data dir is a clean
//!   start-up error. It is the API an embedding program holds: peers, connect, disconnect,
//!   send, graceful shutdown.
//! - The **Manager** is the one owner of the peer set. It reserves a slot
//!   ([`shared::slots::SlotPool`]: full-relay, block-relay-only, feeler, manual or inbound)
//!   before it spawns a Connection (linked, so it receives its exit), dials anchors.dat's
//!   block-relay-only peers first and writes them back when it stops, runs the feelers that
//!   settle the address book's tried collisions, keeps the [`shared::peers::PeerTable`] rows, tells Sync when a peer's handshake
//!   completes and when it ends (once each, in order), evicts inbound peers by Core's rules,
//!   decides outbound restarts ([`manager::restart::RestartTracker`]; inbound peers are never
//!   restarted; manual peers are never given up), owns the ban list (an operator's bans,
//!   written at most once a second), the discouraged addresses (automatic verdicts, in
//!   memory: [`shared::discourage::Discouraged`]) and the address book (persisted through
//!   [`persist`], also when it stops) and is the one publisher of lifecycle events on the
//!   [`events::EventBus`]. A new Manager (after a failure) first clears what the killed
//!   Connections of the old one left: rows, nonces, Sync's entries.
//! - Each **Connection** owns one socket through two tasks: a reader that frames bytes and
//!   casts messages to the actor under a byte credit (back-pressure instead of an unbounded
//!   mailbox; frames it drops cost the peer a budget, [`peer::UselessFrames`]), and a writer
//!   that drains a bounded queue (`connection/outqueue.rs`: its slots held only while
//!   frames wait; overflow disconnects). Both are
//!   aborted with the Connection's state, so a killed Connection closes its socket.
//! - The **Listener** accepts, drops banned addresses before reading a byte, and forwards
//!   the rest to the Manager.
//! - **Sync** learns peers from the Manager only; a peer's chain and relay messages come
//!   straight from its Connection and are held briefly if they overtake the `PeerUp`. It
//!   owns headers.dat and vouched.dat (the highest block a validating node vouched for,
//!   the limit of what it shows peers); a peer's `getblocktxn` is handed to it in the
//!   Connection's getdata turn, like a `getdata` batch. It answers [`msg::ChainQuery`]
//!   (tips, headers, kept blocks, the pool) from its core, for the daemon's JSON-RPC.
//! - The **Overlay** (with `--overlay`) owns the libp2p Swarm through one driver task, and
//!   its key (overlay_key.dat). It publishes its status and its peers into the context,
//!   where the API reads them. The Node handle and Connections reach it through a bounded
//!   command queue in the context: a Connection passes on a peer's `overlayaddr` as a hint.
//! - The [`events::EventBus`] numbers every event but per-message and per-transaction ones
//!   and keeps the last [`events::REPLAY_CAPACITY`] for subscribers that resume.
//!
//! ## How a frame travels
//!
//! socket → reader task → (v2: [`wire::v2::V2Decoder`], the length and packet opened by
//! [`wire::fschacha`]'s ciphers, then the same rules) → [`wire::FrameDecoder`] (magic,
//! command, length checked from the
//! header before any payload is buffered; checksum verified; a frame skipped unread is
//! counted against [`peer::UselessFrames`] there, and reaches the actor only if it costs
//! misbehaviour points) → [`wire::Message::decode`]
//! (rust-bitcoin payload decoders; item counts checked first) → [`msg::ConnectionMsg::Inbound`] →
//! before the handshake completes: [`peer::Handshake`] (which records meshd's `overlayaddr`,
//! [`wire::overlay_announce`], passed on to the Overlay as a hint once the handshake ends); after: ping/pong via
//! [`peer::PingTracker`], BSV `protoconf`, addresses to the Manager, and chain and relay
//! messages to the [`sync`] actor. Outbound messages are encoded once
//! ([`wire::Message::encode`]) and queued for the writer (v2: sealed by
//! [`wire::v2::V2Encoder`] per peer).
//!
//! ## Where restarts are decided
//!
//! Connection failures: in the Manager's `handle_supervisor_evt`, from the
//! [`peer::DisconnectReason`] the Connection leaves in its final state. Failures of the
//! Manager, Listener, DnsDiscovery, Stun, PortMap, Overlay or Sync: in the NodeSupervisor,
//! with a bounded restart intensity (an Overlay that cannot restart, its ports still held,
//! is tried again later with backoff while the node runs on); past it the other children stop in order (so the Manager saves its
//! state), the node stops and the daemon exits 1.
//!
//! ## Sans-IO cores
//!
//! Protocol logic lives in plain types that take bytes, messages and time and return actions:
//! [`wire::FrameDecoder`], [`wire::Message`], [`peer::Handshake`], [`peer::PingTracker`],
//! [`shared::slots::SlotPool`], [`manager::restart::RestartTracker`],
//! [`shared::bandwidth::TokenBucket`], [`shared::bans::BanList`],
//! [`manager::eviction::select_for_eviction`], [`sync::chain::HeaderChain`],
//! [`sync::txrequest::TxRequestTracker`], [`peer::UselessFrames`],
//! [`shared::discourage::Discouraged`], [`wire::v2::V2Handshake`] and the packet ciphers
//! [`wire::fschacha`], the sync core's [`sync::engine::SyncCore::query`].
//! They are unit- and property-tested with virtual time; the actors are thin drivers tested
//! over real loopback sockets. Every limit is a named constant in [`constants`] or next to
//! the code it bounds. None of them imports tokio or ractor (`actors/tests/layout.rs`).

#![warn(missing_docs)]

pub mod config;
pub mod connection;
pub mod constants;
pub mod context;
pub mod discovery;
pub mod events;
pub mod fleet;
pub mod manager;
mod metrics;
pub use metrics::{describe_metrics, OPEN_LABELS, ZERO_GAUGES, ZERO_SERIES};

/// Keeps glibc's allocator from holding on to memory a hostile peer made us allocate. Call
/// once, first thing, in a long-running process (the daemon does); a no-op elsewhere.
///
/// glibc raises its mmap threshold each time a large block is freed, so the next large
/// buffers (a 4 MB block, a 162 KB `headers`) come from the heap and stay there after they
/// are freed; a fixed threshold of 32 KiB keeps every buffer of a list part (1,000 `inv`
/// entries) or larger in its own mapping, returned to the system when freed (at 128 KiB a
/// 50,000-entry `inv` flood left 11-14% more RSS behind; at 32 KiB, 2%), and two arenas stop
/// every runtime thread from keeping its own.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before the runtime
    // starts threads and takes plain integers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hands memory the allocator holds free back to the system (glibc's `malloc_trim`, which
/// also releases free pages in the middle of the heap); a no-op elsewhere. Sync calls it a
/// moment after a peer leaves, so what a hostile peer made us allocate does not stay resident.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes an integer and
    // is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}
pub mod msg;
pub mod network;
pub mod node;
pub mod overlay;
/// The libp2p crate the overlay is built on, so embedders name its types (`Multiaddr`,
/// `PeerId`) from the same version.
pub use libp2p;
pub mod peer;
pub mod persist;
pub mod portmap;
pub mod shared;
pub mod stun;
pub mod sync;
pub mod tor;
pub mod wire;
