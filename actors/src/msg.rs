//! The messages of the Connection, Manager and Sync actors, in one leaf module.
//!
//! An actor that sends to another needs only this file, not the other actor's module: the
//! Connection talks to the Manager and Sync, the Manager to its Connections and Sync, Sync to
//! Connections, and none of them imports another's implementation (the Manager still
//! imports `connection` to spawn its children: a supervisor knows its child).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bitcoin::block::{Block, Header};
use bitcoin::p2p::message_blockdata::{GetHeadersMessage, Inventory};
use bitcoin::{BlockHash, Transaction};
use ipnet::IpNet;
use ractor::{ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::peer::DisconnectReason;
use crate::shared::addr::{AddrEntry, GossipAddr};
use crate::shared::bans::BanEntry;
use crate::shared::peers::PeerId;
use crate::wire::{FrameError, Message, PayloadError};

// ---- Connection ----

/// A decoded frame from the reader, holding its share of the reader credit.
pub struct Inbound {
    pub(crate) command: &'static str,
    pub(crate) wire_len: usize,
    pub(crate) message: Result<Message, PayloadError>,
    pub(crate) credit: Option<OwnedSemaphorePermit>,
}

/// Messages a Connection handles.
pub enum ConnectionMsg {
    /// The outbound dial finished.
    Dialed(Result<TcpStream, DisconnectReason>),
    /// The transport (v1 or BIP324 v2) is settled on the connected socket.
    Negotiated(Result<(TcpStream, crate::wire::v2::Negotiated), DisconnectReason>),
    /// A message from the reader.
    Inbound(Inbound),
    /// A frame the reader dropped that costs misbehaviour points (a bad checksum, an
    /// overlong payload); the stream goes on. It holds reader credit like any message.
    DroppedFrame(FrameError, tokio::sync::OwnedSemaphorePermit),
    /// The reader stopped: the peer closed, the socket failed, or the framing broke.
    ReaderEnded(DisconnectReason),
    /// The writer could not write.
    WriterFailed(String),
    /// Check deadlines (handshake, ping) and configuration changes.
    Tick,
    /// Send a message to the peer.
    Send(Message),
    /// Sync's header pipelining for this peer, on or off: while on, a full `headers` batch
    /// makes the Connection ask for the next one at once, before the batch is hashed and
    /// handed to Sync (see [`HashedHeaders::next_requested`]).
    PipelineHeaders(bool),
    /// Send a frame encoded once and shared between peers (a served block).
    SendShared {
        /// Its command, for byte counters.
        command: &'static str,
        /// The whole frame, header included.
        frame: std::sync::Arc<[u8]>,
    },
    /// Sync served the last getdata batch; the next may go.
    GetDataServed,
    /// The send queue drained below the getdata budget.
    SendDrained,
    /// Close the connection with this reason.
    Disconnect(DisconnectReason),
    /// Send these addresses (as `addr` or `addrv2`, whichever the peer asked for).
    SendAddrs(Vec<GossipAddr>),
    /// Charge a violation found elsewhere (Sync: an invalid header or block).
    Punish(&'static str),
    /// Ping as soon as no ping is in flight (Core's `ping` RPC).
    PingNow,
}

// ---- Manager ----

/// How an outbound target is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundKind {
    /// `--connect`: always kept connected, restarted under the window policy.
    Persistent,
    /// `--addnode`: a candidate, dialled while slots are free, restarted under the policy.
    Candidate,
    /// Dialled once; never restarted.
    OneTry,
    /// Chosen from the address book to fill outbound slots; when it ends another is chosen.
    Automatic,
    /// Core's block-relay-only: chosen from the anchors, then the address book, into slots of
    /// its own; our version says `relay=false`, no address is asked of it, sent to it or taken
    /// from it, no transaction is announced either way (one announced to us ends it).
    BlockRelay,
    /// Core's feeler: an address of the new table (or a tried-table occupant under test),
    /// connected to see whether it answers, and closed once it handshakes.
    Feeler,
}

/// A manual peer (`--connect`, `--addnode`, `meshd addnode`) and its state, as Core's
/// getaddednodeinfo shows one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AddedNode {
    /// The address as the operator gave it (an onion name in full).
    pub address: String,
    /// `connect` (kept connected, Core's -connect) or `addnode`.
    pub kind: &'static str,
    /// Handshaked now.
    pub connected: bool,
    /// The connection's peer id while there is one (dialling or connected).
    pub peer: Option<PeerId>,
    /// A redial is scheduled (after a failure, a ban or a disconnect).
    pub retrying: bool,
}

/// Messages the Manager handles.
pub enum ManagerMsg {
    /// The Listener accepted a socket.
    InboundAccepted {
        /// The socket.
        stream: TcpStream,
        /// Remote address.
        addr: SocketAddr,
        /// Accepted on the onion service's own listener: a peer that came through Tor.
        onion: bool,
        /// One of the Listener's [`MAX_PENDING_INBOUND_SOCKETS`](crate::connection::listener::MAX_PENDING_INBOUND_SOCKETS)
        /// permits, given back when the Manager has handled the socket (or the message is
        /// dropped with a failed Manager's mailbox).
        pending: tokio::sync::OwnedSemaphorePermit,
    },
    /// Dial a peer.
    Connect {
        /// Address to dial.
        addr: SocketAddr,
        /// How to keep it.
        kind: OutboundKind,
    },
    /// Timer: dial an outbound target again.
    Redial(SocketAddr),
    /// An outbound v2 attempt failed before its handshake (the peer may speak only v1):
    /// dial it once more, in v1.
    RedialV1 {
        /// The peer.
        addr: SocketAddr,
        /// How it was kept.
        kind: OutboundKind,
    },
    /// Timer: top up outbound connections, sweep bans.
    Upkeep,
    /// A Connection's socket opened.
    PeerConnected(PeerId),
    /// A Connection finished its handshake. The Manager tells Sync (the one owner of the
    /// peer set), so Sync hears of a peer from the Manager only.
    PeerHandshaked {
        /// Peer.
        id: PeerId,
        /// Height in its version.
        start_height: i32,
        /// It wants transactions relayed (version's relay flag).
        relay: bool,
        /// Its protocol version.
        version: u32,
        /// It sent `wtxidrelay` before verack (BIP339).
        wtxid_relay: bool,
    },
    /// A new Sync actor started (after a restart): announce every live peer to it.
    AnnouncePeersToSync,
    /// A Connection's misbehaviour score crossed the threshold.
    Misbehaving {
        /// Peer.
        id: PeerId,
        /// Its address.
        addr: SocketAddr,
        /// The violation that crossed it.
        kind: &'static str,
        /// The score.
        score: u32,
    },
    /// Ban a subnet for a duration; replies with the entry.
    Ban(IpNet, Duration, RpcReplyPort<BanEntry>),
    /// Applies another fleet node's ban advisory (already checked by the Fleet actor).
    FleetBan {
        /// The subnet.
        subnet: IpNet,
        /// Expiry, unix seconds.
        until: u64,
        /// The node that banned.
        origin: String,
        /// Its reason.
        reason: String,
    },
    /// Lifts a ban applied from `origin`'s advisory, on that origin's advisory (already
    /// checked by the Fleet actor); a ban of any other reason or origin stays.
    FleetUnban {
        /// The subnet.
        subnet: IpNet,
        /// The node whose operator lifted it.
        origin: String,
        /// When the unban was issued, unix seconds (the origin's clock).
        issued: u64,
    },
    /// Lift a ban; replies whether one existed.
    Unban(IpNet, RpcReplyPort<bool>),
    /// The live ban list.
    ListBans(RpcReplyPort<Vec<BanEntry>>),
    /// The manual peers and their state (Core's getaddednodeinfo).
    AddedNodes(RpcReplyPort<Vec<AddedNode>>),
    /// Forget a manual peer (Core's `addnode ADDR remove`): not dialled again; a connection
    /// to it stays until it closes. False if it was not one.
    RemoveAddedNode(SocketAddr, RpcReplyPort<bool>),
    /// Have every connection ping as soon as it can (Core's `ping` RPC).
    PingAll,
    /// The configuration changed; enforce it. Replies when done.
    ConfigChanged(RpcReplyPort<()>),
    /// Close one peer's connection; replies whether it existed.
    Disconnect(PeerId, RpcReplyPort<bool>),
    /// Send a message to one peer; replies whether it existed.
    SendTo(PeerId, Message, RpcReplyPort<bool>),
    /// Close every connection and refuse new ones; replies when all have stopped.
    Shutdown(RpcReplyPort<()>),
    /// DnsDiscovery resolved a seed.
    DnsResults {
        /// The seed name.
        seed: String,
        /// Its addresses.
        ips: Vec<IpAddr>,
    },
    /// DnsDiscovery, behind `--proxy`: fetch addresses from this seed by name through the
    /// proxy ([`crate::manager::addr_fetch`]), instead of resolving it.
    AddrFetch {
        /// The seed name.
        seed: String,
    },
    /// An addr-fetch ended.
    AddrFetched {
        /// The seed name.
        seed: String,
        /// The addresses, or why there are none.
        result: Result<Vec<GossipAddr>, crate::shared::addr::AddrFetchError>,
    },
    /// A peer sent addresses (already rate-limited by its Connection).
    AddrsReceived {
        /// The peer.
        id: PeerId,
        /// Its address (the source of the gossip).
        from: SocketAddr,
        /// The addresses.
        addrs: Vec<GossipAddr>,
        /// The message was small enough (≤ 10) to be relayed, as Core decides.
        relayable: bool,
        /// Its share of the peer's reader credit, released once handled.
        credit: Option<OwnedSemaphorePermit>,
    },
    /// A peer asked for addresses (getaddr).
    GetAddr(PeerId),
    /// The address book's entries.
    KnownAddresses(RpcReplyPort<Vec<AddrEntry>>),
    /// Timer: save the address book.
    SaveAddrBook,
}

// ---- Sync ----

/// Where sync stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    /// In initial sync with nobody to sync from (no peer, or every peer tried).
    #[default]
    Idle,
    /// Loading headers.dat (peers are answered meanwhile; sync starts once it is in).
    Loading,
    /// Downloading headers from a sync peer (or along header hints).
    Syncing,
    /// Out of initial sync (our tip is recent and has the minimum chain work, as Core's
    /// IsInitialBlockDownload decides it) and no sync session running.
    Synced,
}

impl SyncState {
    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Idle => "idle",
            SyncState::Loading => "loading",
            SyncState::Syncing => "syncing",
            SyncState::Synced => "synced",
        }
    }
}

/// Blocks to mine on regtest.
#[derive(Debug, Clone, Default)]
pub struct GenerateOrder {
    /// How many.
    pub blocks: u32,
    /// Transactions after the coinbase of the first.
    pub txs: Vec<Transaction>,
    /// What the coinbases pay to (generatetoaddress); anyone-can-spend without one.
    pub payout: Option<bitcoin::ScriptBuf>,
}

/// A question about the chain or the relay pool (the JSON-RPC's chain methods), answered by
/// Sync from what it holds.
#[derive(Debug, Clone)]
pub enum ChainQuery {
    /// The tip and the kept blocks' range.
    Summary,
    /// A known header, wherever it is in the tree.
    Header(BlockHash),
    /// The best chain's hash at a height.
    HashAt(u32),
    /// Every chain tip (Core's getchaintips).
    Tips,
    /// A kept block.
    Block(BlockHash),
    /// The pool's transactions.
    Pool,
    /// One pooled transaction.
    PoolTx(bitcoin::Txid),
}

/// The answer to a [`ChainQuery`], in the same variant.
#[derive(Debug, Clone)]
pub enum ChainAnswer {
    /// See [`ChainQuery::Summary`].
    Summary(ChainSummary),
    /// See [`ChainQuery::Header`].
    Header(Option<HeaderInfo>),
    /// See [`ChainQuery::HashAt`].
    Hash(Option<BlockHash>),
    /// See [`ChainQuery::Tips`].
    Tips(Vec<ChainTip>),
    /// See [`ChainQuery::Block`]: the block if kept, and whether its header is known.
    Block(Option<std::sync::Arc<Block>>, bool),
    /// See [`ChainQuery::Pool`].
    Pool(Vec<PoolTxInfo>),
    /// See [`ChainQuery::PoolTx`].
    PoolTx(Option<std::sync::Arc<Transaction>>),
}

/// The best chain in brief.
#[derive(Debug, Clone)]
pub struct ChainSummary {
    /// Best header.
    pub tip: BlockHash,
    /// Its height.
    pub height: u32,
    /// Its header.
    pub header: Header,
    /// Cumulative work up to it.
    pub chainwork: u128,
    /// Median time of it and the ten before it.
    pub median_time_past: u32,
    /// The lowest best-chain height of a kept block (Core's pruneheight), if any is kept.
    pub lowest_kept: Option<u32>,
}

/// A known header and where it stands.
#[derive(Debug, Clone)]
pub struct HeaderInfo {
    /// The header.
    pub header: Header,
    /// Its height.
    pub height: u32,
    /// Cumulative work up to it.
    pub chainwork: u128,
    /// Median time past at it.
    pub median_time_past: u32,
    /// Best-chain height (to count confirmations from), when it is on the best chain.
    pub best_height: Option<u32>,
    /// The next header on the best chain, when it is on it and not the tip.
    pub next: Option<BlockHash>,
    /// Its transactions, when the block is kept.
    pub tx_count: Option<usize>,
}

/// A chain tip (Core's getchaintips entry).
#[derive(Debug, Clone)]
pub struct ChainTip {
    /// Its hash.
    pub hash: BlockHash,
    /// Its height.
    pub height: u32,
    /// Headers from it back to the best chain (0 for the best tip).
    pub branch_len: u32,
    /// Core's status: `active`, `valid-headers` (the tip's block is kept) or `headers-only`.
    pub status: &'static str,
}

/// A pooled transaction, for getrawmempool.
#[derive(Debug, Clone)]
pub struct PoolTxInfo {
    /// Its txid.
    pub txid: bitcoin::Txid,
    /// Its wtxid.
    pub wtxid: bitcoin::Wtxid,
    /// Serialized bytes.
    pub size: usize,
    /// Its weight (virtual size is a quarter, rounded up).
    pub weight: u64,
    /// How long it has been pooled.
    pub age: Duration,
    /// Sat per 1000 virtual bytes, when every input's value is known.
    pub fee_rate: Option<u64>,
}

/// A snapshot of sync for the API and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    /// Best header height.
    pub header_height: u32,
    /// Best header hash.
    pub best_header_hash: String,
    /// Highest header height a peer has shown us (headers it sent or we know it has; never
    /// the start height its version claims).
    pub best_peer_height: u32,
    /// Header sync progress from our own chain: height against height plus one block per
    /// interval since the tip's time (1.0 at a recent tip).
    pub progress: f64,
    /// While syncing: headers per second over the last half minute.
    pub headers_per_sec: Option<f64>,
    /// While syncing: seconds left at that rate.
    pub eta_secs: Option<u64>,
    /// The peer headers are synced from, by address.
    pub sync_peer: Option<String>,
    /// State.
    pub state: SyncState,
    /// Transactions in the relay pool.
    pub tx_pool: usize,
    /// Blocks kept in memory.
    pub blocks_kept: usize,
    /// Why headers.dat is behind the chain (a failed write, e.g. a full disk), if it is.
    pub store_error: Option<String>,
}

/// Headers with their hashes, computed where they are decoded (the Connection), so Sync's
/// one thread validates and never hashes a header.
#[derive(Debug, Clone)]
pub struct HashedHeaders {
    /// The headers, in message order.
    pub headers: Vec<Header>,
    /// `hashes[i]` is `headers[i].block_hash()`.
    pub hashes: Vec<bitcoin::BlockHash>,
    /// The Connection already asked the peer for the batch after this one.
    pub next_requested: bool,
}

impl HashedHeaders {
    /// Hashes each header once.
    pub fn new(headers: Vec<Header>) -> HashedHeaders {
        let hashes = headers.iter().map(Header::block_hash).collect();
        HashedHeaders {
            headers,
            hashes,
            next_requested: false,
        }
    }
}

/// What a Connection forwards to Sync.
pub enum SyncInput {
    /// `headers`.
    Headers(HashedHeaders),
    /// `inv`.
    Inv(Vec<Inventory>),
    /// `getheaders`.
    GetHeaders(GetHeadersMessage),
    /// `getblocks`.
    GetBlocks(GetHeadersMessage),
    /// `getdata`.
    GetData(Vec<Inventory>),
    /// `block`.
    Block(Box<Block>),
    /// `tx`.
    Tx(Box<Transaction>),
    /// `sendheaders`.
    SendHeaders,
    /// `feefilter`.
    FeeFilter(i64),
    /// `notfound`.
    NotFound(Vec<Inventory>),
    /// `filterload` (BIP37).
    FilterLoad(bitcoin::p2p::message_bloom::FilterLoad),
    /// `filteradd` (BIP37).
    FilterAdd(Vec<u8>),
    /// `filterclear` (BIP37).
    FilterClear,
    /// `sendcmpct` (BIP152): the version the peer offers, and whether it asks us to announce
    /// blocks to it with `cmpctblock` at once (high-bandwidth mode).
    SendCmpct {
        /// It asks for high-bandwidth announcements.
        announce: bool,
        /// Its compact-block version.
        version: u64,
    },
    /// `cmpctblock` (BIP152).
    CmpctBlock(Box<crate::wire::compact::CompactBlock>),
    /// `getblocktxn` (BIP152).
    GetBlockTxn(crate::wire::compact::TxnRequest),
    /// `blocktxn` (BIP152).
    BlockTxn(Box<bitcoin::bip152::BlockTransactions>),
    /// A `block` we asked for that was above our size limit, skipped unread: its hash, from
    /// its header.
    BlockTooLarge(BlockHash),
    /// A `cmpctblock` pushed to us (high-bandwidth) above our size limit, skipped unread:
    /// its block's hash, from its header. It still announces the block (without a vouch:
    /// BIP152 lets a push go before validation).
    CompactBlockUnread(BlockHash),
    /// A v2 packet too large for anything but a `block` we asked for, above our policy limit:
    /// the session ends (a v2 packet cannot be skipped unread), and the block is the first
    /// one asked of the peer and not delivered, since peers answer `getdata` in order.
    FirstRequestedTooLarge,
}

/// Messages of the Sync actor.
pub enum SyncMsg {
    /// A peer finished its handshake.
    PeerUp {
        /// Peer.
        id: PeerId,
        /// Its address.
        addr: SocketAddr,
        /// Its Connection.
        actor: ActorRef<ConnectionMsg>,
        /// Height in its version.
        start_height: i32,
        /// It wants transactions relayed.
        relay: bool,
        /// It dialled us.
        inbound: bool,
        /// Its protocol version (which feature messages it understands).
        version: u32,
        /// It negotiated BIP339 wtxid relay.
        wtxid_relay: bool,
        /// A block-relay-only connection of ours: no transaction relay either way.
        block_relay_only: bool,
    },
    /// A peer went away.
    PeerDown(PeerId),
    /// The peers Sync knows (tests and the API check them against the peer table).
    Peers(RpcReplyPort<Vec<PeerId>>),
    /// A message from a peer, with its share of the peer's reader credit (released when
    /// Sync has handled it, so a peer's messages queued here are bounded in bytes).
    FromPeer(PeerId, SyncInput, Option<OwnedSemaphorePermit>),
    /// Timer.
    Tick,
    /// Mine blocks on our tip (regtest); replies with their hashes.
    Generate(GenerateOrder, RpcReplyPort<Result<Vec<BlockHash>, String>>),
    /// Relay a transaction as if a peer had sent it (library and tests).
    SubmitTx(Box<Transaction>),
    /// Hints from our best chain (a hash every `hints::HINT_INTERVAL` heights), for
    /// `meshd hints export`.
    Hints(RpcReplyPort<Vec<(u32, BlockHash)>>),
    /// A question about the chain or the pool (the JSON-RPC).
    Query(ChainQuery, RpcReplyPort<ChainAnswer>),
    /// Load the next part of headers.dat (sent by Sync to itself, so that the messages that
    /// came in meanwhile are handled between parts).
    LoadStep,
}
