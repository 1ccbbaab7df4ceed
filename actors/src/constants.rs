//! Every limit and interval meshd applies to peers, with the reason it has the value it has.
//!
//! Limits bound what a hostile peer can make us spend (memory, CPU, time); intervals
//! trade liveness against chatter. Per-network message-size limits live with the network
//! profiles in [`crate::network`]; this file holds the ones that are the same everywhere.

use std::time::Duration;

/// Size of a wire frame header: magic(4) command(12) length(4) checksum(4).
pub const FRAME_HEADER_LEN: usize = 24;

/// Bitcoin Core's `MAX_PROTOCOL_MESSAGE_LENGTH`: the largest BTC payload we accept.
///
/// # Security
/// A claimed length above this is refused from the header alone, before a byte of payload is
/// buffered, so a peer cannot make us reserve memory it never sends.
pub const BTC_MAX_PAYLOAD: u32 = 4_000_000;

/// The BSV node's `DEFAULT_MAX_PROTOCOL_RECV_PAYLOAD_LENGTH` (2 MiB): what we accept for
/// ordinary BSV messages, and what we announce as `maxRecvPayloadLength` in our `protoconf`.
pub const BSV_DEFAULT_RECV_PAYLOAD: u32 = 2 * 1024 * 1024;

/// The BSV node's `LEGACY_MAX_PROTOCOL_PAYLOAD_LENGTH` (1 MiB): what a BSV peer is assumed to
/// accept from us until its `protoconf` says more; also the largest `protoconf` payload.
pub const BSV_LEGACY_PAYLOAD: u32 = 1024 * 1024;

/// Default cap for BSV block and transaction content (`block`, `cmpctblock`, `tx`).
///
/// BSV lets those grow far past the ordinary limit. 256 MiB is our default ceiling because a
/// receive buffer of that size, times the number of peers allowed to send blocks at once, is
/// what a modest host can afford; operators raise it with `max-block-message-size`.
pub const BSV_DEFAULT_MAX_BLOCK_MESSAGE: u32 = 256 * 1024 * 1024;

/// Largest transaction meshd reads and relays on BTC networks: Core's `MAX_STANDARD_TX_WEIGHT`
/// (a transaction's size never exceeds its weight).
///
/// # Security
/// Larger ones are valid in a block but Core relays none of them on mainnet; read whole, one
/// would cost up to 4 MB per peer. They are skipped unread, free of points (not misbehaviour).
pub const BTC_MAX_RELAYED_TX: u32 = 400_000;

/// Largest transaction meshd reads and relays on BSV networks: the BSV node's default
/// `maxtxsizepolicy` after Genesis.
pub const BSV_MAX_RELAYED_TX: u32 = 10_000_000;

/// Largest payload accepted before the handshake completes (until the peer's `verack`).
///
/// # Security
/// A version message is about 130 bytes plus a user agent of at most 256; BSV adds an
/// association id. 1 KiB (Zebra's choice as well) leaves room for those and for the small
/// feature-negotiation messages (`sendaddrv2`, `wtxidrelay`), while an unauthenticated
/// stranger cannot make us buffer megabytes before we know what it is.
pub const MAX_PRE_HANDSHAKE_PAYLOAD: u32 = 1024;

/// Longest user agent we accept (Bitcoin Core's `MAX_SUBVERSION_LENGTH`).
pub const MAX_USER_AGENT_LEN: usize = 256;

/// Most headers in one `headers` message (Core's `MAX_HEADERS_RESULTS`).
pub const MAX_HEADERS_PER_MESSAGE: usize = 2000;

/// Most addresses in one `addr`/`addrv2` message (Core's `MAX_ADDR_TO_SEND`).
pub const MAX_ADDR_PER_MESSAGE: usize = 1000;

/// Most entries in one `inv`/`getdata`/`notfound` message (Core's `MAX_INV_SZ`).
pub const MAX_INV_PER_MESSAGE: usize = 50_000;

/// Most hashes in a block locator (Core's `MAX_LOCATOR_SZ`).
pub const MAX_LOCATOR_HASHES: usize = 101;

/// Default time allowed for version and verack to cross, as Bitcoin Core.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default interval between our pings (Core's `PING_INTERVAL`).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(120);

/// Default time a ping may stay unanswered before we disconnect (Core's `TIMEOUT_INTERVAL`).
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Default time allowed for an outbound TCP connect.
///
/// Core uses 5 s (`DEFAULT_CONNECT_TIMEOUT`); a dial that takes longer is to a peer too slow
/// or too far away to be worth a slot.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Lowest protocol version we talk to by default.
///
/// 70001 (BIP37) is the first version whose `version` message always carries the relay flag,
/// which our decoder requires; every maintained BTC and BSV node is far above it.
pub const DEFAULT_MIN_PROTOCOL_VERSION: u32 = 70001;

/// Protocol version we announce on BTC networks (Core 0.21+: wtxidrelay, BIP339).
pub const BTC_PROTOCOL_VERSION: u32 = 70016;

/// Protocol version we announce on BSV networks (the BSV node's current version).
pub const BSV_PROTOCOL_VERSION: u32 = 70016;

/// Messages queued for a peer's writer before the connection is dropped as too slow.
///
/// # Security
/// A peer that stops reading would otherwise make its queue, and our memory, grow without
/// bound. 1024 messages cover bursts (a full inv trickle, a headers reply) with room to spare.
pub const SEND_QUEUE_CAPACITY: usize = 1024;

/// Bytes a peer may leave unsent in its own (not shared) messages before it is disconnected.
///
/// # Security
/// The queue is bounded in bytes, not only in messages: 1024 large messages would otherwise
/// hold gigabytes for a peer that does not read. Served blocks are shared frames and do not
/// count here; `getdata` serving pauses long before (see [`GETDATA_SEND_BUDGET`]).
pub const MAX_SEND_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// Unsent bytes (shared frames included) above which serving a peer's `getdata` pauses until
/// its queue drains.
///
/// # Security
/// Bitcoin Core stops processing `getdata` while a peer's send buffer is full; without the
/// pause a peer that asks for the same block 50,000 times and never reads grows our memory
/// by gigabytes.
pub const GETDATA_SEND_BUDGET: usize = 1024 * 1024;

/// Inventory items handed to Sync at a time when serving `getdata`; the next batch goes when
/// this one is served and the queue is under [`GETDATA_SEND_BUDGET`].
pub const GETDATA_BATCH: usize = 16;

/// Items a `getdata` may name (Core's `MAX_INV_SZ`); more is a protocol violation.
pub const MAX_GETDATA_ITEMS: usize = 50_000;

/// Items waiting to be served per peer.
///
/// # Security
/// While a peer's getdata queue is non-empty its further messages wait (as in Core), holding
/// the reader's byte credit, so the queue cannot grow past one message's worth of items.
pub const MAX_GETDATA_QUEUE: usize = MAX_GETDATA_ITEMS;

/// How long a getdata batch may stay with Sync unanswered before the Connection gives up on
/// it (Sync restarted, or the batch was dropped) and moves on.
pub const GETDATA_BATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Most `block` messages a Connection lets in ahead of being asked (the count of blocks asked
/// for and not yet received saturates here).
///
/// # Security
/// A `block` nobody asked for is skipped unread, so a peer cannot make us buffer megabytes
/// (on BSV, gigabytes) unasked. Sync asks one peer for at most 16 blocks at a time; the count
/// may overstate what is outstanding (a peer that never answers), never understate it.
pub const MAX_BLOCKS_EXPECTED: u32 = 64;

/// Bytes of decoded but not yet handled frames the reader may hold ahead of the actor.
///
/// # Security
/// The reader stops reading the socket while this credit is used up, so a peer that sends
/// faster than we process applies TCP back-pressure to itself instead of filling our mailbox.
/// Decoded messages take more memory than their bytes (a 36-byte `inv` entry is 40, plus the
/// envelope); 256 KiB keeps what one peer has waiting under about 1 MB, and still holds a
/// full `headers` message (162 KB) or seven `inv` parts. A message larger than the credit
/// (a block) takes all of it, so one waits at a time.
pub const READER_CREDIT_BYTES: u32 = 256 * 1024;

/// The least a message weighs against [`READER_CREDIT_BYTES`], whatever its size.
///
/// # Security
/// A small message costs more in memory than its bytes (its decoded form, its envelope in a
/// mailbox, its share of the credit): 20,000 one-header `headers` messages would otherwise fit
/// in the credit and cost 3 MB queued. At 512 bytes each, at most 512 wait per peer.
pub const MIN_MESSAGE_WEIGHT: usize = 512;

/// Size of one socket read.
pub const READ_CHUNK: usize = 64 * 1024;

/// How often each Connection actor checks its deadlines (handshake, ping) at most.
pub const MAX_TICK_INTERVAL: Duration = Duration::from_secs(1);

/// Restarts of one NodeSupervisor child tolerated inside [`SUPERVISOR_RESTART_WINDOW`].
///
/// Past this the fault is not transient: the node stops with an error rather than spin.
pub const SUPERVISOR_MAX_RESTARTS: usize = 5;

/// Sliding window for [`SUPERVISOR_MAX_RESTARTS`].
pub const SUPERVISOR_RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Time a graceful shutdown waits for each Connection to run its stop hooks.
/// Time the Manager gets to close its peers and save its state when the node stops; a
/// Manager stuck past it is stopped without its save (its state was saved periodically).
pub const SHUTDOWN_MANAGER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a peer gets to stop cleanly at shutdown.
pub const SHUTDOWN_PEER_TIMEOUT: Duration = Duration::from_secs(3);
