//! The Connection actor: one per peer, outbound or inbound.
//!
//! The actor never awaits socket I/O. A reader task owns the read half: it waits for the
//! socket to be readable, reads into a per-thread scratch buffer (an idle peer holds no read
//! buffer), frames bytes with the [`FrameDecoder`], decodes payloads, and casts each message
//! to the actor holding a share of a byte credit ([`READER_CREDIT_BYTES`]) that the actor
//! returns when it has handled the message; when the credit is used up the reader stops
//! reading and TCP pushes back on the peer. A writer task owns the write half and drains a
//! bounded queue; a full queue disconnects the peer ([`DisconnectReason::SendQueueFull`]).
//! Both tasks pace themselves with token buckets ([`Throttle`]) when bandwidth limits are
//! set: data is delayed, never dropped or reordered.
//!
//! The handshake and keepalive logic live in the sans-IO [`Handshake`] and [`PingTracker`];
//! the actor feeds them messages and ticks and carries out what they return. Violations add
//! to the peer's misbehaviour score ([`crate::peer::misbehavior`]); at the threshold the Manager is
//! told and bans the address. The slot permit lives in the state and is released in
//! `post_stop` (or by RAII if the actor is killed). Every exit path records one
//! [`DisconnectReason`], logged with the peer address in `post_stop` and handed to the
//! Manager in the final state.

mod io;
pub mod listener;
mod outqueue;
pub mod proxy;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::p2p::address::{AddrV2, AddrV2Message, Address};
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::p2p::ServiceFlags;
use bitcoin::BlockHash;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::NodeConfig;
use crate::constants::{
    BSV_LEGACY_PAYLOAD, FRAME_HEADER_LEN, GETDATA_BATCH, GETDATA_BATCH_TIMEOUT,
    GETDATA_SEND_BUDGET, MAX_GETDATA_QUEUE, MAX_HEADERS_PER_MESSAGE, MAX_SEND_QUEUE_BYTES,
    MAX_TICK_INTERVAL, READER_CREDIT_BYTES,
};
use crate::context::{unix_now, NodeContext};
use crate::events::NodeEvent;
use crate::msg::{ConnectionMsg, HashedHeaders, Inbound, ManagerMsg, SyncInput, SyncMsg};
use crate::network::{is_bulk_command, Chain};
use crate::peer::misbehavior;
use crate::peer::{
    Direction, DisconnectReason, Handshake, HandshakeStep, PeerVersion, PingTracker, PongOutcome,
};
use crate::shared::addr::{AddrRateLimiter, GossipAddr};
use crate::shared::bandwidth::{Flow, Throttle};
use crate::shared::overlay::{Network, OverlayAddr};
use crate::shared::overlay_link::OverlayCommand;
use crate::shared::peers::{PeerId, PeerState};
use crate::shared::slots::SlotPermit;
use crate::shared::whitelist::Permissions;
use crate::wire::overlay_announce::OverlayAnnounce;
use crate::wire::v2::{hex, Negotiated, TransportKind, V2Decoder, V2Encoder};
use crate::wire::{command_label, FrameDecoder, FrameError, Message, Protoconf};
use io::{
    negotiate, reader, writer, BlocksExpected, Deframer, OutFrame, Plan, ReaderArgs, SendGauge,
    SocketTask, WriterArgs,
};

/// Time the writer may keep flushing queued messages after the actor stopped.
///
/// A peer that does not read must not keep the task (and socket) alive for ever.
const WRITER_LINGER: Duration = Duration::from_secs(2);
/// Compact blocks remembered as asked of one peer: Sync asks at most one per block in
/// flight (16), so this is never reached by an honest exchange; it bounds the list.
const MAX_COMPACT_BLOCKS_ASKED: usize = 64;
/// `getblocktxn` requests remembered as unanswered by one peer: Sync rebuilds at most a few
/// blocks at once (`MAX_PARTIAL_BLOCKS`), so an honest exchange never reaches this; the
/// oldest gives way, its allowance released.
const MAX_BLOCKTXN_ASKED: usize = 16;
/// How long an unanswered `getblocktxn` lets the peer send a bulk-sized `blocktxn`, or a
/// whole `block` in its place (the SV node's answer when nearly all is asked, Core's for a
/// deep block): Sync moves a stalled reconstruction on well before, and a peer that never
/// answers keeps no standing allowance to send bulk frames unasked.
const BLOCKTXN_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The Connection actor.
pub struct Connection;

/// How the actor gets its socket.
pub enum Transport {
    /// Dial the peer's address (outbound).
    Dial,
    /// An accepted socket (inbound).
    Accepted {
        /// The socket.
        stream: TcpStream,
        /// Accepted on the onion service's listener: the peer came through Tor.
        onion: bool,
    },
}

/// Arguments to spawn a Connection.
pub struct ConnectionArgs {
    pub(crate) id: PeerId,
    pub(crate) addr: SocketAddr,
    pub(crate) direction: Direction,
    pub(crate) manual: bool,
    pub(crate) transport: Transport,
    pub(crate) permit: SlotPermit,
    pub(crate) manager: ActorRef<ManagerMsg>,
    pub(crate) ctx: Arc<NodeContext>,
    /// Outbound: open with the BIP324 v2 key exchange. Inbound: accept v2 as well as v1.
    pub(crate) v2: bool,
    /// The onion, I2P or CJDNS address `addr` stands for.
    pub(crate) overlay: Option<OverlayAddr>,
}

/// The Connection's state; handed to the Manager in the termination event.
pub struct ConnectionState {
    id: PeerId,
    addr: SocketAddr,
    direction: Direction,
    manual: bool,
    ctx: Arc<NodeContext>,
    manager: ActorRef<ManagerMsg>,
    config: watch::Receiver<Arc<NodeConfig>>,
    permit: Option<SlotPermit>,
    transport: Option<Transport>,
    /// Whether v2 is tried (outbound) or accepted (inbound).
    v2: bool,
    /// The onion, I2P or CJDNS address `addr` stands for.
    overlay: Option<OverlayAddr>,
    /// Inbound through our onion service: an onion peer, whatever `addr` says.
    inbound_onion: bool,
    /// Overlays may be linked over this connection: ours told, the peer's dialled (see
    /// `tell_overlay` where it is set).
    overlay_link: bool,
    /// One of our block-relay-only connections (its slot says so): `relay=false` in our
    /// version, no `getaddr`, no address taken or advertised.
    block_relay_only: bool,
    /// A feeler (its slot says so): closed once it handshakes.
    feeler: bool,
    /// The transport settled on, once it is.
    transport_kind: Option<TransportKind>,
    handshake: Handshake,
    ping: Option<PingTracker>,
    started: Instant,
    connected_at: Option<Instant>,
    outbox: Option<outqueue::OutSender>,
    /// Bytes queued for the writer and not yet written.
    gauge: Arc<SendGauge>,
    /// Blocks asked of this peer and not yet received; the reader skips any other `block`.
    blocks_expected: Arc<BlocksExpected>,
    /// Compact blocks asked of this peer (`getdata(MSG_CMPCT_BLOCK)`) and not yet answered,
    /// by hash: a `cmpctblock` of one settles its expected block; a whole `block` (a deep one
    /// is answered so) or a `notfound` of one just ends it.
    compact_blocks_asked: VecDeque<BlockHash>,
    /// Our unanswered `getblocktxn` requests, by block, with when each went.
    blocktxn_asked: VecDeque<(BlockHash, Instant)>,
    /// `block` frames handled (read, or dropped after the reader let them in): compared
    /// with the reader's count of those let in (see `BlocksExpected::admitted_total`).
    blocks_handled: u64,
    /// Sync asked us to request each next `headers` batch ourselves (it syncs from us).
    pipeline_headers: bool,
    /// Items of the peer's `getdata` not yet handed to Sync.
    getdata_queue: VecDeque<Inventory>,
    /// The peer's `getblocktxn` not yet handed to Sync: served in the getdata turn, so its
    /// answer (up to a whole block, for one of a few dozen bytes) waits for the peer to read
    /// what we sent, as Core queues it behind `m_getdata_requests`.
    pending_blocktxn: Option<crate::wire::compact::TxnRequest>,
    /// When the batch now with Sync was handed over.
    getdata_at_sync: Option<Instant>,
    /// Messages that arrived while a getdata was being served: handled after it, in order
    /// (Core does the same), each still holding its share of the reader's credit.
    deferred: VecDeque<Inbound>,
    /// The reader credit of the message being handled.
    credit: Option<OwnedSemaphorePermit>,
    /// Whitelist permissions of the peer's address.
    permissions: Permissions,
    reader: Option<SocketTask>,
    writer: Option<SocketTask>,
    timers: Vec<JoinHandle<()>>,
    /// The dial or the transport negotiation, until it reports back; its handle is then
    /// dropped, so the finished task's memory (about 1 KiB) is not kept for the whole
    /// connection (#29). Aborted if the connection stops first.
    setup: Option<JoinHandle<()>>,
    /// Largest ordinary payload the peer accepts (BSV protoconf raises it).
    peer_max_payload: u32,
    got_protoconf: bool,
    misbehavior: u32,
    myself: Option<ActorRef<ConnectionMsg>>,
    policy: Option<crate::peer::HandshakePolicy>,
    /// Byte counts last copied into the peer table.
    pushed: (u64, u64),
    sendaddrv2: bool,
    getaddr_answered: bool,
    addr_limiter: AddrRateLimiter,
    next_self_advert: Option<Instant>,
    bytes_sent: u64,
    bytes_received: u64,
    sent_per_command: crate::shared::peers::CommandBytes,
    received_per_command: crate::shared::peers::CommandBytes,
    last_send: Option<std::time::SystemTime>,
    last_receive: Option<std::time::SystemTime>,
    close_reason: Option<DisconnectReason>,
}

impl ConnectionState {
    /// Why the connection closed, if it did.
    pub fn close_reason(&self) -> Option<&DisconnectReason> {
        self.close_reason.as_ref()
    }

    /// The peer's id.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// How long the TCP connection was up (zero if it never opened).
    pub fn uptime(&self) -> Duration {
        self.connected_at.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Whether the TCP connection ever opened.
    pub fn was_connected(&self) -> bool {
        self.connected_at.is_some()
    }

    /// Whether this was an outbound v2 attempt that failed before the v2 handshake completed
    /// in a way a v1-only peer fails it (closing on our key, answering in v1, or saying
    /// nothing until the handshake timeout): Core then reconnects once in v1.
    pub fn v1_fallback_suggested(&self) -> bool {
        self.direction == Direction::Outbound
            && self.v2
            && self.connected_at.is_some()
            && self.transport_kind.is_none()
            && match &self.close_reason {
                Some(DisconnectReason::V2(e)) => e.suggests_v1(),
                Some(DisconnectReason::PeerClosed | DisconnectReason::Io(_)) => true,
                Some(DisconnectReason::Handshake(e)) => e.kind() == "handshake_timeout",
                _ => false,
            }
    }
}

fn tick_interval(config: &NodeConfig) -> Duration {
    [
        config.handshake_timeout,
        config.ping_interval,
        config.ping_timeout,
    ]
    .into_iter()
    .min()
    .unwrap_or(MAX_TICK_INTERVAL)
    .div_f32(4.0)
    .clamp(Duration::from_millis(50), MAX_TICK_INTERVAL)
}

impl Actor for Connection {
    type Msg = ConnectionMsg;
    type State = ConnectionState;
    type Arguments = ConnectionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ConnectionArgs,
    ) -> Result<ConnectionState, ActorProcessingErr> {
        // No I/O here: pre_start runs inside the Manager's spawn await.
        let now = Instant::now();
        let config_rx = args.ctx.config_watch();
        let config = args.ctx.config();
        let nonce = loop {
            let n: u64 = rand::random();
            if n != 0 {
                break n;
            }
        };
        let handshake = Handshake::new(
            args.direction,
            args.manual,
            nonce,
            // Onion and I2P peers are told nothing of their internal address (Core sends
            // zeros for addresses `version` cannot carry).
            if args.overlay.is_some() {
                SocketAddr::from(([0, 0, 0, 0], 0))
            } else {
                args.addr
            },
            None,
            now,
            config.handshake_timeout,
        );
        let peer_max_payload = args.ctx.profile.limits.send_default;
        let permissions = args.ctx.permissions_of(args.addr.ip());
        let block_relay_only = args.permit.kind() == crate::shared::slots::SlotKind::BlockRelay;
        let feeler = args.permit.kind() == crate::shared::slots::SlotKind::Feeler;
        Ok(ConnectionState {
            block_relay_only,
            feeler,
            id: args.id,
            addr: args.addr,
            direction: args.direction,
            manual: args.manual,
            manager: args.manager,
            config: config_rx,
            ctx: args.ctx,
            permit: Some(args.permit),
            transport: Some(args.transport),
            v2: args.v2,
            overlay: args.overlay,
            inbound_onion: false,
            overlay_link: false,
            transport_kind: None,
            handshake,
            ping: None,
            started: now,
            connected_at: None,
            outbox: None,
            gauge: Arc::new(SendGauge::default()),
            blocks_expected: Arc::new(BlocksExpected::default()),
            compact_blocks_asked: VecDeque::new(),
            blocktxn_asked: VecDeque::new(),
            blocks_handled: 0,
            pipeline_headers: false,
            getdata_queue: VecDeque::new(),
            pending_blocktxn: None,
            getdata_at_sync: None,
            deferred: VecDeque::new(),
            credit: None,
            permissions,
            reader: None,
            writer: None,
            timers: Vec::new(),
            setup: None,
            peer_max_payload,
            got_protoconf: false,
            misbehavior: 0,
            myself: None,
            policy: None,
            pushed: (0, 0),
            sendaddrv2: false,
            getaddr_answered: false,
            addr_limiter: AddrRateLimiter::new(now),
            next_self_advert: None,
            bytes_sent: 0,
            bytes_received: 0,
            sent_per_command: Default::default(),
            received_per_command: Default::default(),
            last_send: None,
            last_receive: None,
            close_reason: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        state.myself = Some(myself.clone());
        let config = state.ctx.config();
        state
            .timers
            .push(myself.send_interval(tick_interval(&config), || ConnectionMsg::Tick));
        match state.transport.take() {
            Some(Transport::Accepted { stream, onion }) => {
                state.inbound_onion = onion;
                if let Err(reason) = begin_negotiation(&myself, state, stream) {
                    close(&myself, state, reason);
                }
            }
            Some(Transport::Dial) => {
                let timeout = config.connect_timeout;
                let route = proxy::route(&config, state.addr, state.overlay.as_ref());
                let (me, peer, id) = (myself.clone(), state.peer_name(), state.id);
                state.setup = Some(tokio::spawn(async move {
                    let result = match route {
                        Err(no_route) => Err(DisconnectReason::NoRoute(no_route)),
                        Ok(proxy::Route::Direct(addr)) => {
                            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                                Ok(Ok(s)) => Ok(s),
                                Ok(Err(e)) => Err(DisconnectReason::ConnectFailed(e.to_string())),
                                Err(_) => Err(DisconnectReason::ConnectTimeout),
                            }
                        }
                        Ok(proxy::Route::Socks5 {
                            proxy,
                            target,
                            randomize,
                        }) => proxy::connect(&proxy, &target, randomize, timeout)
                            .await
                            .map_err(|e| {
                                warn!(peer = %peer, id = %id, proxy = %proxy.addr, error = %e, "connection through the proxy failed");
                                metrics::counter!("meshd_proxy_errors_total", "kind" => e.kind())
                                    .increment(1);
                                DisconnectReason::Proxy(e)
                            }),
                    };
                    let _ = me.cast(ConnectionMsg::Dialed(result));
                }));
            }
            None => {}
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: ConnectionMsg,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        if state.close_reason.is_some() {
            // Already closing; drop whatever is still queued.
            return Ok(());
        }
        if matches!(msg, ConnectionMsg::Dialed(_) | ConnectionMsg::Negotiated(_)) {
            // Its task has reported and ends by itself.
            state.setup = None;
        }
        let result = match msg {
            ConnectionMsg::Dialed(Ok(stream)) => begin_negotiation(&myself, state, stream),
            ConnectionMsg::Negotiated(Ok((stream, negotiated))) => {
                start_io(&myself, state, stream, negotiated)
            }
            ConnectionMsg::Negotiated(Err(reason)) => Err(reason),
            ConnectionMsg::Dialed(Err(reason)) => Err(reason),
            ConnectionMsg::Inbound(inbound) if serving_getdata(state) => {
                state.deferred.push_back(inbound);
                Ok(())
            }
            ConnectionMsg::Inbound(inbound) => on_inbound(state, inbound),
            ConnectionMsg::SendShared { command, frame } => send_shared(state, command, frame),
            ConnectionMsg::GetDataServed => {
                state.getdata_at_sync = None;
                pump_getdata(state)
            }
            ConnectionMsg::SendDrained => pump_getdata(state),
            ConnectionMsg::DroppedFrame(err, credit) => {
                if matches!(&err,
                    FrameError::RequestedTooLarge { command, .. } | FrameError::BadChecksum { command, .. }
                        if command.as_str() == "block")
                {
                    // Let in by the reader (it counted it), then dropped.
                    state.blocks_handled += 1;
                }
                if let FrameError::RequestedTooLarge {
                    command,
                    block: Some(block),
                    ..
                } = &err
                {
                    let block = *block;
                    let answered = match command.as_str() {
                        // Asked for (the reader let only those in), so free. It was the
                        // answer to whichever ask of it is open (the reader counted it).
                        "block" => {
                            forget_compact_ask(state, &block);
                            forget_blocktxn_ask(state, &block, false);
                            true
                        }
                        // Our getdata(MSG_CMPCT_BLOCK) of it, counted as a block expected.
                        "cmpctblock" => {
                            let asked = forget_compact_ask(state, &block);
                            if asked {
                                state.blocks_expected.settled(1);
                            }
                            asked
                        }
                        "blocktxn" => forget_blocktxn_ask(state, &block, true),
                        _ => false,
                    };
                    state.credit = Some(credit);
                    if answered {
                        // Sync drops the reconstruction and asks another peer.
                        to_sync(state, SyncInput::BlockTooLarge(block));
                    } else {
                        // A high-bandwidth push of a block above our policy (honest on
                        // BSV, and counted as a useless frame by the reader), or a
                        // `blocktxn` nobody asked for: free of points, and dropped.
                        debug!(peer = %state.peer_name(), id = %state.id, %command, %block,
                               "unasked compact block data above our limit; skipped");
                        if command.as_str() == "cmpctblock" {
                            // A push is the peer's announcement of the block: Sync asks
                            // for the header it lacks.
                            to_sync(state, SyncInput::CompactBlockUnread(block));
                        }
                    }
                    return Ok(());
                }
                // Counted and logged (at most once a minute) by the reader; charged here.
                punish(state, err.kind())
            }
            ConnectionMsg::ReaderEnded(reason) => {
                if let DisconnectReason::Frame(e) = &reason {
                    if matches!(e, FrameError::V2RequestedTooLarge { .. })
                        && state.blocks_expected.get() > 0
                    {
                        // Free of points; Sync asks another peer for the block (a packet
                        // with only compact pushes allowed names no request of ours).
                        to_sync(state, SyncInput::FirstRequestedTooLarge);
                    }
                    let _ = punish(state, e.kind());
                }
                Err(reason)
            }
            ConnectionMsg::WriterFailed(e) => Err(DisconnectReason::Io(e)),
            ConnectionMsg::Tick => on_tick(state),
            ConnectionMsg::PingNow => {
                if let Some(p) = state.ping.as_mut() {
                    p.queue(Instant::now());
                }
                on_tick(state)
            }
            ConnectionMsg::Send(m) => send(state, &m),
            ConnectionMsg::PipelineHeaders(on) => {
                state.pipeline_headers = on;
                Ok(())
            }
            ConnectionMsg::Disconnect(reason) => Err(reason),
            ConnectionMsg::SendAddrs(addrs) => send_addrs(state, &addrs),
            ConnectionMsg::Punish(kind) => punish(state, kind).and_then(|_| {
                // A header or block that fails validation ends the connection even below the
                // ban threshold: the peer is on another chain, or lying. Not for noban peers.
                if crate::peer::misbehavior::cost(kind) >= 50
                    && !state.permissions.has(Permissions::NOBAN)
                    && !state.manual
                {
                    Err(DisconnectReason::Protocol(format!(
                        "invalid chain data: {kind}"
                    )))
                } else {
                    Ok(())
                }
            }),
        };
        if let Err(reason) = result {
            close(&myself, state, reason);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        for t in state.timers.drain(..).chain(state.setup.take()) {
            t.abort();
        }
        // Dropping the sender lets the writer flush what is queued and close our side; a
        // peer that does not read gets WRITER_LINGER. The reader drains until then, so the
        // close is a FIN, not a reset for unread bytes.
        state.outbox = None;
        let writer = state.writer.take().and_then(SocketTask::detach);
        let reader = state.reader.take().and_then(SocketTask::detach);
        tokio::spawn(async move {
            if let Some(w) = writer {
                let abort = w.abort_handle();
                if tokio::time::timeout(WRITER_LINGER, w).await.is_err() {
                    abort.abort();
                }
            }
            // After our FIN the peer closes too; the reader sees its EOF and ends, and the
            // socket closes without a reset. A peer that keeps it open gets the linger.
            if let Some(r) = reader {
                let abort = r.abort_handle();
                if tokio::time::timeout(WRITER_LINGER, r).await.is_err() {
                    abort.abort();
                }
            }
        });
        state.myself = None;
        // The final state travels to the Manager; the slot must be free before that, so a
        // waiting inbound peer can take it as soon as this actor is gone.
        state.permit = None;
        let peer = state.peer_name();
        let reason = state.close_reason.get_or_insert_with(|| {
            if state.ctx.is_shutting_down() {
                DisconnectReason::Shutdown
            } else {
                DisconnectReason::Stopped("stopped by its supervisor".into())
            }
        });
        if state.direction == Direction::Outbound {
            state
                .ctx
                .outbound_nonces
                .remove(&state.handshake.our_nonce());
        }
        metrics::counter!("meshd_disconnects_total", "reason" => reason.kind()).increment(1);
        info!(
            peer = %peer,
            id = %state.id,
            direction = %state.direction,
            reason = %reason,
            reason_kind = reason.kind(),
            established = state.handshake.is_complete(),
            "peer disconnected"
        );
        Ok(())
    }
}

fn close(myself: &ActorRef<ConnectionMsg>, state: &mut ConnectionState, reason: DisconnectReason) {
    if state.close_reason.is_none() {
        state.close_reason = Some(reason);
        myself.stop(None);
    }
}

/// Adds the cost of a violation; at the threshold tells the Manager (which bans) and closes.
fn punish(state: &mut ConnectionState, kind: &'static str) -> Result<(), DisconnectReason> {
    let cost = misbehavior::cost(kind);
    if cost == 0 {
        return Ok(());
    }
    if state.permissions.has(Permissions::NOBAN) {
        // Whitelisted: logged and counted, never charged.
        debug!(peer = %state.peer_name(), id = %state.id, kind, "misbehaviour by a noban peer, not charged");
        metrics::counter!("meshd_misbehavior_total", "kind" => kind).increment(1);
        return Ok(());
    }
    state.misbehavior = state.misbehavior.saturating_add(cost);
    let score = state.misbehavior;
    state.ctx.peers.update(state.id, |p| p.misbehavior = score);
    let threshold = state.ctx.config().ban_threshold;
    debug!(peer = %state.peer_name(), id = %state.id, kind, cost, score, threshold, "misbehaviour");
    metrics::counter!("meshd_misbehavior_total", "kind" => kind).increment(1);
    if score >= threshold {
        if state.manual {
            // Core: "not punishing manually connected peer"; the operator chose it. Logged
            // once, when the score crosses the threshold.
            if score - cost < threshold {
                warn!(peer = %state.peer_name(), id = %state.id, kind, score, "manual peer misbehaved; not punished (the operator chose it)");
            }
            return Ok(());
        }
        let _ = state.manager.cast(ManagerMsg::Misbehaving {
            id: state.id,
            addr: state.addr,
            kind,
            score,
        });
        return Err(DisconnectReason::Misbehaving(format!(
            "misbehaviour score {score} ({kind})"
        )));
    }
    Ok(())
}

/// Settles the transport: v1 at once, or the v2 key exchange (and inbound detection) in a
/// task that hands the socket back with [`ConnectionMsg::Negotiated`].
fn begin_negotiation(
    myself: &ActorRef<ConnectionMsg>,
    state: &mut ConnectionState,
    mut stream: TcpStream,
) -> Result<(), DisconnectReason> {
    let plan = match (state.v2, state.direction) {
        (false, _) => Plan::V1,
        (true, Direction::Outbound) => Plan::V2Initiator,
        (true, Direction::Inbound) => Plan::Detect,
    };
    if plan == Plan::V1 {
        return start_io(myself, state, stream, Negotiated::V1 { prefix: Vec::new() });
    }
    let _ = stream.set_nodelay(true);
    // The handshake timeout runs from now on (see on_tick).
    state.connected_at = Some(Instant::now());
    let magic = state.ctx.profile.magic.to_bytes();
    let me = myself.clone();
    state.setup = Some(tokio::spawn(async move {
        let result = negotiate(&mut stream, magic, plan).await;
        let _ = me.cast(ConnectionMsg::Negotiated(result.map(|n| (stream, n))));
    }));
    Ok(())
}

fn start_io(
    myself: &ActorRef<ConnectionMsg>,
    state: &mut ConnectionState,
    stream: TcpStream,
    negotiated: Negotiated,
) -> Result<(), DisconnectReason> {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let (read_half, write_half) = stream.into_split();
    let config = state.ctx.config();
    let (tx, rx) = outqueue::out_queue(config.send_queue_capacity);
    let ctx = &state.ctx;
    let up = if state.permissions.has(Permissions::DOWNLOAD) {
        // Whitelisted `download`: what it downloads from us is not paced, and never touches
        // the shared bucket the others are paced by.
        Throttle::exempt(Flow::Up)
    } else {
        Throttle::new(
            Flow::Up,
            ctx.peer_limits.clone(),
            ctx.global_up.clone(),
            ctx.global_limits.clone(),
        )
    };
    let down = Throttle::new(
        Flow::Down,
        ctx.peer_limits.clone(),
        ctx.global_down.clone(),
        ctx.global_limits.clone(),
    );
    let rules = FrameDecoder::new(state.ctx.profile.magic, state.ctx.profile.limits);
    let (decoder, encoder, initial) = match negotiated {
        Negotiated::V1 { prefix } => {
            state.transport_kind = Some(TransportKind::V1);
            (Deframer::V1(rules), None, prefix)
        }
        Negotiated::V2(ready) => {
            let ready = *ready;
            state.transport_kind = Some(TransportKind::V2);
            let session_id = hex(&ready.session_id);
            debug!(peer = %state.peer_name(), id = %state.id, session_id, "v2 transport established");
            state.ctx.peers.update(state.id, |p| {
                p.transport = "v2";
                p.session_id = session_id.clone();
            });
            (
                Deframer::V2(Box::new(V2Decoder::new(ready.inbound, rules))),
                Some(V2Encoder::new(ready.outbound)),
                ready.leftover,
            )
        }
    };
    state.writer = Some(SocketTask::spawn(writer(WriterArgs {
        half: write_half,
        rx,
        actor: myself.clone(),
        throttle: up,
        ctx: state.ctx.clone(),
        gauge: state.gauge.clone(),
        encoder,
    })));
    state.outbox = Some(tx);
    let credit = Arc::new(Semaphore::new(READER_CREDIT_BYTES as usize));
    state.reader = Some(SocketTask::spawn(reader(ReaderArgs {
        half: read_half,
        actor: myself.clone(),
        decoder,
        initial,
        credit,
        throttle: down,
        ctx: state.ctx.clone(),
        blocks: state.blocks_expected.clone(),
        peer: state.peer_name(),
        id: state.id,
        trusted: state.manual || state.permissions.has(Permissions::NOBAN),
    })));
    let now = Instant::now();
    state.connected_at = Some(now);
    // Core's PushNodeVersion: our own address is never in `version` (zeros: it would link
    // an onion identity to a clearnet one; addresses are advertised by `addr`, per network),
    // and the peer's only when it is a public one reached directly. (Documentation ranges
    // count as public here: the namespace labs use them as public addresses.)
    let proxied = state.direction == Direction::Outbound
        && matches!(
            proxy::route(&config, state.addr, state.overlay.as_ref()),
            Ok(proxy::Route::Socks5 { .. })
        );
    let hidden = state.overlay.is_some()
        || state.inbound_onion
        || proxied
        || crate::shared::addr::is_local_or_private(state.addr.ip());
    let you = match hidden {
        true => SocketAddr::from(([0, 0, 0, 0], 0)),
        false => state.addr,
    };
    // Our overlay's identity and addresses would link this connection to our IP: never to a
    // peer reached or come by Tor, CJDNS or a proxy, nor to one from a local or private
    // address (a hand-made onion service forwards to us from loopback; a lab's regtest is
    // the exception), nor to a block-relay-only peer (which must not be told apart from a
    // stranger) or a feeler. A peer's own overlay is dialled under the same rules.
    let local_ok = config.overlay.local_addrs;
    let tell_overlay = !(state.overlay.is_some()
        || state.inbound_onion
        || proxied
        || state.block_relay_only
        || state.feeler
        || (!local_ok && crate::shared::addr::is_local_or_private(state.addr.ip())));
    state.handshake = Handshake::new(
        state.direction,
        state.manual,
        state.handshake.our_nonce(),
        you,
        None,
        state.started,
        config.handshake_timeout,
    );
    if state.direction == Direction::Outbound {
        state
            .ctx
            .outbound_nonces
            .insert(state.handshake.our_nonce(), state.id);
    }
    state.ctx.peers.update(state.id, |p| {
        p.local_addr = local;
        p.state = PeerState::Handshaking;
        p.connected_since = std::time::SystemTime::now();
        p.connected_at = now;
    });
    let _ = state.manager.cast(ManagerMsg::PeerConnected(state.id));
    debug!(peer = %state.peer_name(), id = %state.id, direction = %state.direction, "socket open, handshaking");
    // Our version announces the height we have now, so peers know whether to sync from us.
    let mut policy = state.ctx.policy.clone();
    if state.block_relay_only {
        // Core's block-relay-only: the peer is told to announce no transactions.
        policy.relay = false;
    }
    policy.start_height = state.ctx.sync_status().header_height.min(i32::MAX as u32) as i32;
    state.overlay_link = tell_overlay;
    policy.overlay = if tell_overlay {
        state.ctx.overlay_announcement()
    } else {
        None
    };
    state.policy = Some(policy);
    let policy = state
        .policy
        .clone()
        .unwrap_or_else(|| state.ctx.policy.clone());
    let steps = state.handshake.start(&policy, unix_now());
    apply_steps(state, steps)
}

fn apply_steps(
    state: &mut ConnectionState,
    steps: Vec<HandshakeStep>,
) -> Result<(), DisconnectReason> {
    for step in steps {
        match step {
            HandshakeStep::Send(m) => send(state, &m)?,
            HandshakeStep::Complete(pv) => on_established(state, pv)?,
        }
    }
    Ok(())
}

/// Copies the connection's traffic counters into its peer-table row.
fn push_counters(state: &mut ConnectionState, now: Instant) {
    let (sent, received) = (state.bytes_sent, state.bytes_received);
    let wait = state.ping.as_ref().and_then(|p| p.waiting(now));
    // Idle peers (most of them, at scale) cost nothing per tick.
    if (sent, received) == state.pushed && wait.is_none() && state.pushed != (0, 0) {
        return;
    }
    state.pushed = (sent, received);
    let (sent_cmd, recv_cmd) = (
        state.sent_per_command.clone(),
        state.received_per_command.clone(),
    );
    let (last_send, last_receive) = (state.last_send, state.last_receive);
    state.ctx.peers.update(state.id, |p| {
        p.bytes_sent = sent;
        p.bytes_received = received;
        p.bytes_sent_per_command = sent_cmd;
        p.bytes_received_per_command = recv_cmd;
        p.last_send = last_send;
        p.last_receive = last_receive;
        p.ping_wait = wait;
    });
}

fn on_established(state: &mut ConnectionState, pv: PeerVersion) -> Result<(), DisconnectReason> {
    let now = Instant::now();
    // Counters first: a reader that sees the row "connected" also sees the handshake's bytes.
    push_counters(state, now);
    let took = now.saturating_duration_since(state.started);
    metrics::histogram!("meshd_handshake_duration_seconds").record(took.as_secs_f64());
    info!(
        peer = %state.peer_name(),
        id = %state.id,
        direction = %state.direction,
        version = pv.version,
        user_agent = %pv.user_agent,
        // One spelling of service bits everywhere an operator reads them: hex.
        services = %format_args!("0x{:x}", pv.services.to_u64()),
        start_height = pv.start_height,
        handshake_ms = took.as_millis() as u64,
        transport = state.transport_kind.unwrap_or_default().as_str(),
        "handshake complete"
    );
    state.ctx.peers.update(state.id, |p| {
        p.state = PeerState::Connected;
        p.version = pv.version;
        p.services = pv.services.to_u64();
        p.user_agent = pv.user_agent.clone();
        p.start_height = pv.start_height;
        p.relay = pv.relay;
        p.wants_addrv2 = pv.sendaddrv2;
        p.overlay_peer_id = pv.overlay.as_ref().map(|o| o.peer_id.to_string());
    });
    if let Some(overlay) = pv.overlay.as_ref().filter(|_| state.overlay_link) {
        hint_overlay(state, overlay);
    }
    let _ = state.manager.cast(ManagerMsg::PeerHandshaked {
        id: state.id,
        start_height: pv.start_height,
        relay: pv.relay,
        version: pv.version,
        wtxid_relay: pv.wtxidrelay,
    });
    if state.feeler {
        // The address answered: the Manager records it and closes us (after it has read
        // this). Nothing else is sent on a feeler.
        return Ok(());
    }
    let config = state.ctx.config();
    state.ping = Some(PingTracker::new(
        now,
        config.ping_interval,
        config.ping_timeout,
    ));
    state.sendaddrv2 = pv.sendaddrv2;
    if state.direction == Direction::Outbound && !state.block_relay_only {
        // Ask outbound peers for addresses once, and accept a full answer (Core; never a
        // block-relay-only peer, which takes no part in address relay).
        send(state, &Message::Network(NetworkMessage::GetAddr))?;
        state.addr_limiter.grant(crate::shared::addr::ADDR_BURST);
    }
    if !state.block_relay_only
        && (!state.ctx.advertised().is_empty() || state.ctx.onion_service().is_some())
    {
        advertise_self(state)?;
    }
    if state.ctx.profile.chain == Chain::Bsv {
        // BSV: announce what we accept, right after the handshake (protoconf spec).
        let conf = Protoconf {
            max_recv_payload_length: state.ctx.profile.limits.general,
            stream_policies: None,
        };
        send(state, &Message::Protoconf(conf))?;
    }
    on_tick(state)
}

/// Tells our overlay (when it runs) where a peer's overlay is: only its addresses on the
/// IP this connection comes from, so a peer cannot make our overlay dial anyone else.
fn hint_overlay(state: &ConnectionState, overlay: &OverlayAnnounce) {
    let ip = state.addr.ip();
    let addrs: Vec<_> = overlay
        .addrs
        .iter()
        .filter(|a| {
            a.iter().next().is_some_and(|p| match p {
                libp2p::multiaddr::Protocol::Ip4(v4) => IpAddr::V4(v4) == ip,
                libp2p::multiaddr::Protocol::Ip6(v6) => IpAddr::V6(v6) == ip,
                _ => false,
            })
        })
        .cloned()
        .collect();
    debug!(peer = %state.peer_name(), id = %state.id, overlay = %overlay.peer_id, usable = addrs.len(), "peer told us its overlay");
    if addrs.is_empty() {
        return;
    }
    state.ctx.overlay_command(OverlayCommand::Hint {
        peer: overlay.peer_id,
        addrs,
    });
}

/// Handles one message; its share of the reader's credit travels on with what it becomes
/// (to Sync or the Manager), so their mailboxes are bounded by the same credit.
fn on_inbound(state: &mut ConnectionState, mut inbound: Inbound) -> Result<(), DisconnectReason> {
    state.credit = inbound.credit.take();
    let result = on_inbound_message(state, inbound);
    state.credit = None;
    result
}

fn on_inbound_message(
    state: &mut ConnectionState,
    inbound: Inbound,
) -> Result<(), DisconnectReason> {
    state.bytes_received += inbound.wire_len as u64;
    state.ctx.total_received.fetch_add(
        inbound.wire_len as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    if inbound.command == "block" {
        // Read whole (decoded or not): one of the frames the reader let in.
        state.blocks_handled += 1;
    }
    state
        .received_per_command
        .add(inbound.command, inbound.wire_len as u64);
    state.last_receive = Some(std::time::SystemTime::now());
    metrics::counter!(
        "meshd_bytes_received_total",
        "command" => inbound.command,
        "transport" => state.transport_kind.unwrap_or_default().as_str()
    )
    .increment(inbound.wire_len as u64);
    if state.ctx.events.has_subscribers() {
        state.ctx.events.publish(NodeEvent::MessageReceived {
            peer: state.id,
            command: inbound.command.to_string(),
            size: inbound.wire_len,
        });
    }
    let message = match inbound.message {
        Ok(m) => m,
        Err(e) if !state.handshake.is_complete() => {
            let _ = punish(state, e.kind());
            return Err(DisconnectReason::Payload(e));
        }
        Err(e) => {
            warn!(peer = %state.peer_name(), id = %state.id, error = %e, "ignored a malformed message");
            metrics::counter!("meshd_payload_errors_total", "kind" => e.kind()).increment(1);
            return punish(state, e.kind());
        }
    };
    if !state.handshake.is_complete() {
        let ctx = state.ctx.clone();
        let is_ours = |n: u64| ctx.outbound_nonces.contains_key(&n);
        let steps = state
            .handshake
            .on_message(
                &message,
                state.policy.as_ref().unwrap_or(&ctx.policy),
                unix_now(),
                &is_ours,
            )
            .map_err(DisconnectReason::Handshake)?;
        return apply_steps(state, steps);
    }
    match message {
        Message::Network(NetworkMessage::Ping(nonce)) => {
            send(state, &Message::Network(NetworkMessage::Pong(nonce)))
        }
        Message::Network(NetworkMessage::Pong(nonce)) => {
            on_pong(state, nonce);
            Ok(())
        }
        Message::Network(NetworkMessage::GetAddr) => {
            // Answered once per connection, and only to inbound peers: answering outbound
            // peers would let them fingerprint us (Core does the same).
            if state.direction == Direction::Inbound && !state.getaddr_answered {
                state.getaddr_answered = true;
                let _ = state.manager.cast(ManagerMsg::GetAddr(state.id));
            }
            Ok(())
        }
        // Core ignores addresses from a block-relay-only peer (ProcessAddrs without address
        // relay set up): nothing it says of others is kept or relayed.
        Message::Network(NetworkMessage::Addr(_) | NetworkMessage::AddrV2(_))
            if state.block_relay_only =>
        {
            Ok(())
        }
        Message::Network(NetworkMessage::Addr(list)) => {
            on_addrs(state, GossipAddr::from_addr_list(&list), list.len());
            Ok(())
        }
        Message::Network(NetworkMessage::AddrV2(list)) => {
            on_addrs(state, GossipAddr::from_addrv2_list(&list), list.len());
            Ok(())
        }
        Message::Network(NetworkMessage::Block(b)) => {
            // A compact block asked for may come whole (a deep one): the reader settled it.
            forget_compact_ask(state, &b.block_hash());
            // So may the answer to a getblocktxn (the reader counted the block against it).
            forget_blocktxn_ask(state, &b.block_hash(), false);
            to_sync(state, SyncInput::Block(Box::new(b)));
            Ok(())
        }
        Message::Network(NetworkMessage::Tx(tx)) => {
            to_sync(state, SyncInput::Tx(Box::new(tx)));
            Ok(())
        }
        Message::Network(NetworkMessage::Headers(h)) => {
            let next_requested = state.pipeline_headers && h.len() >= MAX_HEADERS_PER_MESSAGE;
            if next_requested {
                // The next batch is asked for before this one is even hashed: the peer and
                // our reader work on it while Sync validates this one.
                let last = h[h.len() - 1].block_hash();
                send(
                    state,
                    &Message::Network(NetworkMessage::GetHeaders(
                        bitcoin::p2p::message_blockdata::GetHeadersMessage {
                            version: state.ctx.profile.protocol_version,
                            locator_hashes: vec![last],
                            stop_hash: bitcoin::hashes::Hash::all_zeros(),
                        },
                    )),
                )?;
            } else {
                state.pipeline_headers = false;
            }
            let mut hashed = HashedHeaders::new(h);
            hashed.next_requested = next_requested;
            to_sync(state, SyncInput::Headers(hashed));
            Ok(())
        }
        Message::Network(NetworkMessage::Inv(i)) => {
            to_sync(state, SyncInput::Inv(i));
            Ok(())
        }
        Message::Network(NetworkMessage::GetHeaders(m)) => {
            to_sync(state, SyncInput::GetHeaders(m));
            Ok(())
        }
        Message::Network(NetworkMessage::GetBlocks(m)) => {
            let m = bitcoin::p2p::message_blockdata::GetHeadersMessage {
                version: m.version,
                locator_hashes: m.locator_hashes,
                stop_hash: m.stop_hash,
            };
            to_sync(state, SyncInput::GetBlocks(m));
            Ok(())
        }
        Message::Network(NetworkMessage::GetData(i)) => {
            // Decoding refused more than MAX_GETDATA_ITEMS; the queue is empty here (a
            // getdata arriving while one is served waits in `deferred`).
            if state.getdata_queue.is_empty() && i.len() <= MAX_GETDATA_QUEUE {
                // The decoded message becomes the queue: no copy.
                state.getdata_queue = VecDeque::from(i);
            } else {
                let room = MAX_GETDATA_QUEUE.saturating_sub(state.getdata_queue.len());
                state.getdata_queue.extend(i.into_iter().take(room));
            }
            pump_getdata(state)
        }
        Message::Network(NetworkMessage::NotFound(i)) => {
            state.blocks_expected.settled(count_blocks(&i));
            for item in &i {
                if let Inventory::CompactBlock(h) = item {
                    forget_compact_ask(state, h);
                }
            }
            to_sync(state, SyncInput::NotFound(i));
            Ok(())
        }
        Message::Network(NetworkMessage::SendHeaders) => {
            to_sync(state, SyncInput::SendHeaders);
            Ok(())
        }
        Message::Network(NetworkMessage::SendCmpct(m)) => {
            to_sync(
                state,
                SyncInput::SendCmpct {
                    announce: m.send_compact,
                    version: m.version,
                },
            );
            Ok(())
        }
        Message::CmpctBlock(m) => {
            if forget_compact_ask(state, &m.header.block_hash()) {
                // The answer to our getdata(MSG_CMPCT_BLOCK) of it: that request was counted
                // as a block expected, and no `block` will come for it now.
                state.blocks_expected.settled(1);
            }
            to_sync(state, SyncInput::CmpctBlock(m));
            Ok(())
        }
        Message::GetBlockTxn(request) => {
            // Nothing is being served (else this waited in `deferred`): its turn is next.
            state.pending_blocktxn = Some(request);
            pump_getdata(state)
        }
        Message::Network(NetworkMessage::BlockTxn(m)) => {
            forget_blocktxn_ask(state, &m.transactions.block_hash, true);
            to_sync(state, SyncInput::BlockTxn(Box::new(m.transactions)));
            Ok(())
        }
        Message::Network(
            NetworkMessage::FilterLoad(_)
            | NetworkMessage::FilterAdd(_)
            | NetworkMessage::FilterClear,
        ) if !state.ctx.policy.services.has(ServiceFlags::BLOOM)
            && !state.permissions.has(Permissions::BLOOMFILTER) =>
        {
            // Core disconnects a peer that uses BIP37 when we did not announce NODE_BLOOM.
            metrics::counter!("meshd_payload_errors_total", "kind" => "bloom_not_offered")
                .increment(1);
            Err(DisconnectReason::Protocol(
                "BIP37 filter message, but we do not announce NODE_BLOOM".into(),
            ))
        }
        Message::Network(NetworkMessage::FilterLoad(f)) => {
            to_sync(state, SyncInput::FilterLoad(f));
            Ok(())
        }
        Message::Network(NetworkMessage::FilterAdd(f)) => {
            to_sync(state, SyncInput::FilterAdd(f.data));
            Ok(())
        }
        Message::Network(NetworkMessage::FilterClear) => {
            to_sync(state, SyncInput::FilterClear);
            Ok(())
        }
        Message::Network(NetworkMessage::FeeFilter(f)) => {
            to_sync(state, SyncInput::FeeFilter(f));
            Ok(())
        }
        Message::Protoconf(conf) => {
            if state.got_protoconf {
                punish(state, "protocol_violation")?;
                return Err(DisconnectReason::Protocol("second protoconf".into()));
            }
            state.got_protoconf = true;
            if conf.max_recv_payload_length < BSV_LEGACY_PAYLOAD {
                punish(state, "protocol_violation")?;
                return Err(DisconnectReason::Protocol(format!(
                    "protoconf maxRecvPayloadLength {} below the 1 MiB minimum",
                    conf.max_recv_payload_length
                )));
            }
            state.peer_max_payload = conf.max_recv_payload_length;
            debug!(peer = %state.peer_name(), id = %state.id, max = conf.max_recv_payload_length, "peer protoconf");
            Ok(())
        }
        Message::Unknown { command, .. } => {
            // Its payload was skipped unread by the frame decoder, and the reader counted it
            // against the peer's useless-frame budget (logged there once a minute): a line
            // per message only at trace level.
            tracing::trace!(peer = %state.peer_name(), id = %state.id, %command, "ignored a command meshd does not read");
            metrics::counter!("meshd_unknown_messages_total").increment(1);
            Ok(())
        }
        Message::Network(NetworkMessage::WtxidRelay | NetworkMessage::SendAddrV2)
        | Message::OverlayAddr(_) => {
            // Feature negotiation belongs between version and verack; Core disconnects a
            // peer that sends it later.
            metrics::counter!("meshd_payload_errors_total", "kind" => "late_feature_negotiation")
                .increment(1);
            Err(DisconnectReason::Protocol(format!(
                "{} after verack",
                message.command()
            )))
        }
        Message::Network(NetworkMessage::Version(_)) => {
            // Core ignores (and penalises) a repeated version after the handshake.
            metrics::counter!("meshd_payload_errors_total", "kind" => "duplicate_version")
                .increment(1);
            punish(state, "duplicate_version")
        }
        Message::Network(_) => Ok(()),
    }
}

fn on_pong(state: &mut ConnectionState, nonce: u64) {
    let Some(ping) = state.ping.as_mut() else {
        return;
    };
    match ping.on_pong(nonce, Instant::now()) {
        PongOutcome::Matched(rtt) => {
            metrics::histogram!("meshd_ping_rtt_seconds").record(rtt.as_secs_f64());
            let (last, min) = (ping.last_rtt(), ping.min_rtt());
            state.ctx.peers.update(state.id, |p| {
                p.ping_last = last;
                p.ping_min = min;
                p.ping_wait = None;
                p.pongs += 1;
            });
            debug!(peer = %state.peer_name(), id = %state.id, rtt_us = rtt.as_micros() as u64, "pong");
        }
        PongOutcome::Unexpected => {
            debug!(peer = %state.peer_name(), id = %state.id, nonce, "unexpected pong ignored");
        }
    }
}

fn on_tick(state: &mut ConnectionState) -> Result<(), DisconnectReason> {
    let now = Instant::now();
    if state.config.has_changed().unwrap_or(false) {
        let config = state.config.borrow_and_update().clone();
        state.handshake.set_timeout(config.handshake_timeout);
        if let Some(p) = state.ping.as_mut() {
            p.reconfigure(now, config.ping_interval, config.ping_timeout);
        }
    }
    push_counters(state, now);
    // Not while a block the reader let in is on its way to us (a BSV block may take longer
    // than the timeout to arrive): it may be the answer, which ends the ask and counted
    // itself off; releasing the ask too would count it off twice.
    let block_on_its_way = state.blocks_expected.admitted_total() > state.blocks_handled;
    while !block_on_its_way
        && state
            .blocktxn_asked
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) >= BLOCKTXN_ANSWER_TIMEOUT)
    {
        release_blocktxn_ask(state);
    }
    if state
        .getdata_at_sync
        .is_some_and(|t| now.duration_since(t) >= GETDATA_BATCH_TIMEOUT)
    {
        // Sync never answered (it restarted, or dropped the batch): move on.
        debug!(peer = %state.peer_name(), id = %state.id, "getdata batch unanswered; moving on");
        state.getdata_at_sync = None;
        pump_getdata(state)?;
    }
    if !state.handshake.is_complete() {
        if state.connected_at.is_none() {
            // Still dialling: the connect timeout bounds this phase.
            return Ok(());
        }
        return state
            .handshake
            .check_timeout(now)
            .map_err(DisconnectReason::Handshake);
    }
    if state.next_self_advert.is_some_and(|t| now >= t) {
        advertise_self(state)?;
    }
    let Some(ping) = state.ping.as_mut() else {
        return Ok(());
    };
    match ping.poll(now, rand::random()) {
        Ok(Some(nonce)) => send(state, &Message::Network(NetworkMessage::Ping(nonce))),
        Ok(None) => Ok(()),
        Err(timeout) => Err(DisconnectReason::PingTimeout(timeout)),
    }
}

/// How many entries of a `getdata` or `notfound` ask for a full `block` in reply.
fn count_blocks(items: &[Inventory]) -> u32 {
    items
        .iter()
        .filter(|i| {
            matches!(
                i,
                Inventory::Block(_) | Inventory::WitnessBlock(_) | Inventory::CompactBlock(_)
            )
        })
        .count() as u32
}

/// The answer to our `getblocktxn` for `hash` came: as `blocktxn` (`settle`: the block it
/// might have been is no longer expected) or as the whole block (which the reader counted).
/// True when there was such an ask.
fn forget_blocktxn_ask(state: &mut ConnectionState, hash: &BlockHash, settle: bool) -> bool {
    let Some(at) = state.blocktxn_asked.iter().position(|(h, _)| h == hash) else {
        return false;
    };
    state.blocktxn_asked.remove(at);
    if settle {
        state.blocks_expected.settled(1);
    }
    state.blocks_expected.blocktxn(false);
    true
}

/// The oldest unanswered `getblocktxn` gives up its allowance (expired, or displaced).
fn release_blocktxn_ask(state: &mut ConnectionState) {
    if state.blocktxn_asked.pop_front().is_some() {
        state.blocks_expected.settled(1);
        state.blocks_expected.blocktxn(false);
    }
}

/// Ends our compact-block request for `hash`, if there is one; true when there was.
fn forget_compact_ask(state: &mut ConnectionState, hash: &BlockHash) -> bool {
    match state.compact_blocks_asked.iter().position(|h| h == hash) {
        Some(at) => {
            state.compact_blocks_asked.remove(at);
            true
        }
        None => false,
    }
}

fn send(state: &mut ConnectionState, msg: &Message) -> Result<(), DisconnectReason> {
    if state.outbox.is_none() {
        return Ok(());
    }
    let bytes = msg.encode(state.ctx.profile.magic);
    let command = msg.command();
    let payload_len = bytes.len().saturating_sub(FRAME_HEADER_LEN);
    if !is_bulk_command(command.as_str()) && payload_len > state.peer_max_payload as usize {
        if let Message::Network(NetworkMessage::GetBlockTxn(m)) = msg {
            // Most of a huge BSV block missing: more indexes than the peer reads in one
            // message. The whole block is asked instead, which Sync takes as the answer
            // (as it takes the SV node's whole block for a request of nearly all of it).
            let hash = m.txs_request.block_hash;
            debug!(peer = %state.peer_name(), id = %state.id, %hash, payload_len, limit = state.peer_max_payload,
                   "getblocktxn larger than the peer accepts; asking for the whole block");
            let item = match state.ctx.profile.chain {
                crate::network::Chain::Btc => Inventory::WitnessBlock(hash),
                crate::network::Chain::Bsv => Inventory::Block(hash),
            };
            return send(
                state,
                &Message::Network(NetworkMessage::GetData(vec![item])),
            );
        }
        warn!(peer = %state.peer_name(), id = %state.id, %command, payload_len, limit = state.peer_max_payload,
              "not sending a message larger than the peer accepts");
        return Ok(());
    }
    // What the reader may take in reply, recorded before the request leaves (so the reply
    // always finds it) and only for a request that does leave.
    match msg {
        // What the reader may take above BSV's ordinary limit (see `BlocksExpected`).
        Message::Network(NetworkMessage::SendCmpct(m)) => {
            state.blocks_expected.set_compact_pushes(m.send_compact)
        }
        Message::Network(NetworkMessage::GetBlockTxn(m)) => {
            // Answered by `blocktxn`, or by the whole block: both may be bulk-sized.
            if state.blocktxn_asked.len() >= MAX_BLOCKTXN_ASKED {
                release_blocktxn_ask(state);
            }
            state
                .blocktxn_asked
                .push_back((m.txs_request.block_hash, Instant::now()));
            state.blocks_expected.asked(1);
            state.blocks_expected.blocktxn(true);
        }
        Message::Network(NetworkMessage::GetData(items)) => {
            state.blocks_expected.asked(count_blocks(items));
            // A compact block asked for may come as `cmpctblock` (deep ones as a `block`).
            for item in items {
                if let Inventory::CompactBlock(h) = item {
                    if state.compact_blocks_asked.len() >= MAX_COMPACT_BLOCKS_ASKED {
                        state.compact_blocks_asked.pop_front();
                    }
                    state.compact_blocks_asked.push_back(*h);
                }
            }
        }
        _ => {}
    }
    let Some(outbox) = state.outbox.as_ref() else {
        return Ok(());
    };
    let len = bytes.len() as u64;
    let owned = state.gauge.owned.load(Ordering::Relaxed);
    if owned + bytes.len() > MAX_SEND_QUEUE_BYTES {
        return Err(DisconnectReason::SendQueueFull(owned + bytes.len()));
    }
    match outbox.try_send(OutFrame::Owned(bytes)) {
        Ok(()) => {
            state.gauge.owned.fetch_add(len as usize, Ordering::Relaxed);
            state.gauge.total.fetch_add(len as usize, Ordering::Relaxed);
            count_sent(state, command_label(command.as_str()), len as usize);
            Ok(())
        }
        Err(outqueue::QueueError::Full) => Err(DisconnectReason::SendQueueFull(
            state.ctx.config().send_queue_capacity,
        )),
        Err(outqueue::QueueError::Closed) => Err(DisconnectReason::Io("writer closed".into())),
    }
}

/// Queues a frame shared with other peers (a served block): only a pointer is queued.
fn send_shared(
    state: &mut ConnectionState,
    command: &'static str,
    frame: Arc<[u8]>,
) -> Result<(), DisconnectReason> {
    let Some(outbox) = state.outbox.as_ref() else {
        return Ok(());
    };
    let len = frame.len();
    match outbox.try_send(OutFrame::Shared(frame)) {
        Ok(()) => {
            state.gauge.total.fetch_add(len, Ordering::Relaxed);
            count_sent(state, command, len);
            Ok(())
        }
        Err(outqueue::QueueError::Full) => Err(DisconnectReason::SendQueueFull(
            state.ctx.config().send_queue_capacity,
        )),
        Err(outqueue::QueueError::Closed) => Err(DisconnectReason::Io("writer closed".into())),
    }
}

/// Counts a queued v1 frame of `frame_len` bytes by what it takes on the wire.
fn count_sent(state: &mut ConnectionState, command: &'static str, frame_len: usize) {
    let transport = state.transport_kind.unwrap_or_default();
    let wire = match transport {
        TransportKind::V1 => frame_len,
        TransportKind::V2 => V2Encoder::wire_len(command, frame_len),
    } as u64;
    state.bytes_sent += wire;
    state
        .ctx
        .total_sent
        .fetch_add(wire, std::sync::atomic::Ordering::Relaxed);
    state.sent_per_command.add(command, wire);
    state.last_send = Some(std::time::SystemTime::now());
    metrics::counter!("meshd_bytes_sent_total", "command" => command, "transport" => transport.as_str())
        .increment(wire);
}

/// Whether a getdata is being served: other messages wait until it is.
fn serving_getdata(state: &ConnectionState) -> bool {
    !state.getdata_queue.is_empty()
        || state.getdata_at_sync.is_some()
        || state.pending_blocktxn.is_some()
}

/// Whether the peer has read enough of what we sent for another getdata turn; if not, the
/// writer is asked to say when it drained.
fn send_room(state: &ConnectionState) -> bool {
    let room = state
        .outbox
        .as_ref()
        .is_some_and(|o| o.capacity() >= o.max_capacity() / 2);
    if state.gauge.total.load(Ordering::Relaxed) < GETDATA_SEND_BUDGET && room {
        return true;
    }
    state.gauge.drain_wanted.store(true, Ordering::Release);
    // The writer may have drained between the check and the flag: look again.
    let still_full = state.gauge.total.load(Ordering::Relaxed) >= GETDATA_SEND_BUDGET / 2
        || state
            .outbox
            .as_ref()
            .is_some_and(|o| o.capacity() < o.max_capacity() / 2);
    if still_full {
        metrics::counter!("meshd_getdata_paused_total").increment(1);
        return false;
    }
    state.gauge.drain_wanted.store(false, Ordering::Release);
    true
}

/// Hands Sync the next getdata batch when the last one is served and the peer has read
/// enough of what we sent; once the queue is empty, handles the messages that waited.
fn pump_getdata(state: &mut ConnectionState) -> Result<(), DisconnectReason> {
    loop {
        if state.getdata_at_sync.is_some() {
            return Ok(());
        }
        if state.getdata_queue.is_empty() {
            if state.pending_blocktxn.is_some() {
                if !send_room(state) {
                    return Ok(());
                }
                if let Some(req) = state.pending_blocktxn.take() {
                    // Sync answers GetDataServed once the answer is queued.
                    state.getdata_at_sync = Some(Instant::now());
                    to_sync(state, SyncInput::GetBlockTxn(req));
                }
                return Ok(());
            }
            let Some(next) = state.deferred.pop_front() else {
                return Ok(());
            };
            on_inbound(state, next)?;
            continue;
        }
        if !send_room(state) {
            return Ok(());
        }
        let take = state.getdata_queue.len().min(GETDATA_BATCH);
        let batch: Vec<Inventory> = state.getdata_queue.drain(..take).collect();
        state.getdata_at_sync = Some(Instant::now());
        to_sync(state, SyncInput::GetData(batch));
        return Ok(());
    }
}

/// Hands a chain or relay message to the Sync actor.
fn to_sync(state: &mut ConnectionState, input: SyncInput) {
    let credit = state.credit.take();
    if let Some(sync) = state.ctx.sync_ref() {
        let _ = sync.cast(SyncMsg::FromPeer(state.id, input, credit));
    }
}

impl ConnectionState {
    /// The network the peer is on: onion for a peer through our onion service.
    fn network(&self) -> Network {
        if self.inbound_onion {
            return Network::Onion;
        }
        self.overlay
            .map_or_else(|| Network::of_ip(self.addr.ip()), |o| o.network())
    }

    /// The peer as operators know it: its onion or I2P name, else its address.
    fn peer_name(&self) -> String {
        crate::shared::overlay::display_addr(self.addr, self.overlay.as_ref())
    }
}

/// Average interval between advertisements of our own address to one peer (Core:
/// `AVG_LOCAL_ADDRESS_BROADCAST_INTERVAL`, 24 h), drawn from an exponential distribution so
/// peers cannot line our advertisements up.
const SELF_ADVERT_INTERVAL: Duration = Duration::from_secs(24 * 3600);

fn advertise_self(state: &mut ConnectionState) -> Result<(), DisconnectReason> {
    let now = unix_now().max(0) as u32;
    let services = state.ctx.policy.services.to_u64();
    // The address of the peer's own network only (Core's GetLocalAddrForPeer): an onion
    // peer learns our onion and nothing else, a clearnet peer never learns our onion.
    let network = state.network();
    let ours: Vec<GossipAddr> = state
        .ctx
        .advertised_gossip(services, now)
        .into_iter()
        .filter(|a| {
            a.overlay
                .map_or_else(|| Network::of_ip(a.addr.ip()), |o| o.network())
                == network
        })
        .take(1)
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    let u: f64 = rand::random::<f64>().max(1e-12);
    state.next_self_advert = Some(
        Instant::now()
            + SELF_ADVERT_INTERVAL
                .mul_f64(-u.ln())
                .min(SELF_ADVERT_INTERVAL * 10),
    );
    send_addrs(state, &ours)
}

/// Takes what the peer's address bucket allows and hands it to the Manager.
fn on_addrs(state: &mut ConnectionState, addrs: Vec<GossipAddr>, in_message: usize) {
    let now = Instant::now();
    let mut accepted = Vec::with_capacity(addrs.len());
    let mut limited = 0u64;
    let unlimited = state.permissions.has(Permissions::ADDR);
    for a in addrs {
        if unlimited || state.addr_limiter.take(now) {
            accepted.push(a);
        } else {
            limited += 1;
        }
    }
    metrics::counter!("meshd_addr_processed_total").increment(accepted.len() as u64);
    if limited > 0 {
        metrics::counter!("meshd_addr_rate_limited_total").increment(limited);
        debug!(peer = %state.peer_name(), id = %state.id, limited, "addresses over the rate limit ignored");
    }
    if !accepted.is_empty() {
        let _ = state.manager.cast(ManagerMsg::AddrsReceived {
            credit: state.credit.take(),
            id: state.id,
            from: state.addr,
            addrs: accepted,
            relayable: in_message <= 10,
        });
    }
}

fn send_addrs(state: &mut ConnectionState, addrs: &[GossipAddr]) -> Result<(), DisconnectReason> {
    for chunk in addrs.chunks(crate::constants::MAX_ADDR_PER_MESSAGE) {
        let msg = if state.sendaddrv2 {
            NetworkMessage::AddrV2(
                chunk
                    .iter()
                    .map(|a| AddrV2Message {
                        time: a.time,
                        services: ServiceFlags::from(a.services),
                        addr: match (a.overlay, a.addr.ip()) {
                            (Some(o), _) => o.to_addrv2(),
                            (None, IpAddr::V4(v4)) => AddrV2::Ipv4(v4),
                            (None, IpAddr::V6(v6)) => AddrV2::Ipv6(v6),
                        },
                        port: a.addr.port(),
                    })
                    .collect(),
            )
        } else {
            // `addr` cannot carry onion, I2P or CJDNS addresses (BIP155).
            NetworkMessage::Addr(
                chunk
                    .iter()
                    .filter(|a| a.overlay.is_none())
                    .map(|a| {
                        (
                            a.time,
                            Address::new(&a.addr, ServiceFlags::from(a.services)),
                        )
                    })
                    .collect(),
            )
        };
        if matches!(&msg, NetworkMessage::Addr(list) if list.is_empty()) {
            continue;
        }
        send(state, &Message::Network(msg))?;
    }
    Ok(())
}
