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
//! ├── DnsDiscovery               resolves DNS seeds (hickory-resolver) when the book is short
//! ├── Stun                       public address and NAT type (RFC 5389/5780), refreshed
//! └── Sync                       header chain, headers-first sync, block and tx relay
//! ```
//!
//!
//! ## Who owns what
//!
//! - [`node::Node`] binds the listen sockets and takes an exclusive lock on the data dir before
//!   any actor starts, so a port in use or a second process on the same data dir is a clean
//!   start-up error. It is the API an embedding program holds: peers, connect, disconnect,
//!   send, graceful shutdown.
//! - The **Manager** reserves a slot ([`slots::SlotPool`]) before it spawns a Connection
//!   (linked, so it receives its exit), keeps the [`peers::PeerTable`] rows, evicts inbound
//!   peers by Core's rules ([`eviction`]), keeps outbound peers up and decides their restarts
//!   ([`restart::RestartTracker`]; inbound peers are never restarted), owns the ban list
//!   ([`bans`], persisted through [`persist`]), the address book ([`addrbook`], filled by DNS
//!   seeds and addr/addrv2 gossip, persisted the same way) and is the one publisher of lifecycle events
//!   on the [`events::EventBus`]. ractor's default hook would stop the Manager when a child
//!   exits; it overrides it.
//! - Each **Connection** owns one socket through two tasks: a reader that frames bytes and
//!   casts messages to the actor under a byte credit (back-pressure instead of an unbounded
//!   mailbox), and a writer that drains a bounded queue (overflow disconnects). The actor's
//!   handlers never await socket I/O.
//! - The **Listener** accepts, drops banned addresses before reading a byte, and forwards
//!   the rest to the Manager.
//! - Bandwidth limits ([`bandwidth`]) are token buckets shared through the node context; the
//!   reader and writer tasks pace themselves, so nothing is dropped or reordered.
//!
//! ## How a frame travels
//!
//! socket → reader task → [`wire::FrameDecoder`] (magic, command, length checked from the
//! header before any payload is buffered; checksum verified) → [`wire::Message::decode`]
//! (rust-bitcoin payload decoders; item counts checked first) → `ConnectionMsg::Inbound` →
//! before the handshake completes: [`peer::Handshake`]; after: ping/pong via
//! [`peer::PingTracker`], BSV `protoconf`, addresses to the Manager, and chain and relay
//! messages to the [`sync`] actor. Outbound messages
//! are encoded once ([`wire::Message::encode`]) and queued for the writer.
//!
//! ## Where restarts are decided
//!
//! Connection failures: in the Manager's `handle_supervisor_evt`, from the
//! [`peer::DisconnectReason`] the Connection leaves in its final state. Failures of the
//! Manager or Listener: in the NodeSupervisor, with a bounded restart intensity; past it the
//! node stops and the daemon exits 1.
//!
//! ## Sans-IO cores
//!
//! Protocol logic lives in plain types that take bytes, messages and time and return actions:
//! [`wire::FrameDecoder`], [`wire::Message`], [`peer::Handshake`], [`peer::PingTracker`],
//! [`slots::SlotPool`], [`restart::RestartTracker`], [`bandwidth::TokenBucket`],
//! [`bans::BanList`], [`eviction::select_for_eviction`], [`events::EventBus`].
//! They are unit- and property-tested with virtual time; the actors are thin drivers tested
//! over real loopback sockets. Every limit is a named constant in [`constants`].

#![warn(missing_docs)]

pub mod config;
pub mod connection;
pub mod constants;
pub mod context;
pub mod discovery;
pub mod events;
pub mod manager;
mod metrics;
pub mod msg;
pub mod network;
pub mod node;
pub mod peer;
pub mod persist;
pub mod stun;
pub mod sync;
pub mod wire;
