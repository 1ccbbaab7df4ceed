//! # meshd-actors: the meshd node as a library
//!
//! meshd is a long-running peer-to-peer node for Bitcoin-family networks (BTC mainnet,
//! testnet3, testnet4, signet, regtest; BSV mainnet, testnet, STN, regtest). This crate is the
//! node itself; the `meshd` binary is a thin daemon around [`node::Node`].
//!
//! ## The supervision tree
//!
//! ```text
//! NodeSupervisor                 restarts Manager/Listener rest-for-one, at most 5 in 60 s
//! ├── Manager                    peer set and peer table; supervisor of every Connection
//! │   └── Connection(peer) × N   handshake, framing, ping/RTT, send queue (one per peer)
//! └── Listener                   accept loops; hands sockets to the Manager
//! ```
//!
//! DNS discovery, STUN, Sync, slots, bans and bandwidth limits join this tree in later work;
//! the seams are marked where they plug in ([`manager::ManagerState`], [`listener`]).
//!
//! ## Who owns what
//!
//! - [`node::Node`] binds the listen sockets and takes an exclusive lock on the data dir before
//!   any actor starts, so a port in use or a second process on the same data dir is a clean
//!   start-up error. It is the API an embedding program holds: peers, connect, disconnect,
//!   send, graceful shutdown.
//! - The **Manager** spawns Connections (linked, so it receives their exit), keeps the
//!   [`peers::PeerTable`] rows, and decides restarts: a `--connect` peer is dialled again, an
//!   inbound peer never is. ractor's default hook would stop the Manager when a child exits;
//!   it overrides it.
//! - Each **Connection** owns one socket through two tasks: a reader that frames bytes and
//!   casts messages to the actor under a byte credit (back-pressure instead of an unbounded
//!   mailbox), and a writer that drains a bounded queue (overflow disconnects). The actor's
//!   handlers never await socket I/O.
//! - The **Listener** only accepts and forwards.
//!
//! ## How a frame travels
//!
//! socket → reader task → [`wire::FrameDecoder`] (magic, command, length checked from the
//! header before any payload is buffered; checksum verified) → [`wire::Message::decode`]
//! (rust-bitcoin payload decoders; item counts checked first) → `ConnectionMsg::Inbound` →
//! before the handshake completes: [`peer::Handshake`]; after: ping/pong via
//! [`peer::PingTracker`], BSV `protoconf`, and (later) Sync and discovery. Outbound messages
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
//! [`wire::FrameDecoder`], [`wire::Message`], [`peer::Handshake`], [`peer::PingTracker`].
//! They are unit- and property-tested with virtual time; the actors are thin drivers tested
//! over real loopback sockets. Every limit is a named constant in [`constants`].

#![warn(missing_docs)]

pub mod bandwidth;
pub mod bans;
pub mod config;
pub mod connection;
pub mod constants;
pub mod context;
pub mod events;
pub mod eviction;
pub mod listener;
mod live_metrics;
pub mod manager;
pub mod misbehavior;
pub mod network;
pub mod node;
pub mod peer;
pub mod peers;
pub mod persist;
pub mod restart;
pub mod slots;
pub mod wire;
