//! The Connection's socket tasks: the transport negotiation (v1, or the BIP324 v2 key
//! exchange, driving the sans-IO [`V2Handshake`]), a reader that frames bytes (decrypting
//! them first on v2) and hands messages to the actor under a byte credit, and a writer that
//! drains the bounded send queue (encrypting on v2). Both pace themselves with the bandwidth
//! [`Throttle`]s.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use bip324::Role;
use ractor::ActorRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::constants::{
    FRAME_HEADER_LEN, GETDATA_SEND_BUDGET, MAX_BLOCKS_EXPECTED, MIN_MESSAGE_WEIGHT,
    READER_CREDIT_BYTES, READ_CHUNK,
};
use crate::context::NodeContext;
use crate::msg::{ConnectionMsg, Inbound};
use crate::peer::misbehavior;
use crate::peer::{DisconnectReason, DropVerdict, UselessFrames};
use crate::shared::bandwidth::Throttle;
use crate::wire::v2::{
    detect, Detected, Negotiated, V2Decoder, V2Encoder, V2Error, V2Handshake, V1_PREFIX_LEN,
};
use crate::wire::{command_label, Extent, Frame, FrameDecoder, FrameError, Message};

/// Bytes read at once during the v2 key exchange: the peer's garbage is at most 4 KiB, so
/// one read takes it; the buffer lives only while the exchange does.
const NEGOTIATION_READ: usize = 4096;

/// How the connection's transport is to be settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    /// v1 without looking (v2 off, BSV, or a fallback dial).
    V1,
    /// Outbound: start the v2 key exchange.
    V2Initiator,
    /// Inbound: tell v1 from v2 by the first bytes, then answer in kind.
    Detect,
}

/// Settles the transport on a connected socket. Bounded in bytes by the v2 handshake's own
/// limits and in time by the Connection's handshake timeout (which aborts this task).
pub(super) async fn negotiate(
    stream: &mut TcpStream,
    magic: [u8; 4],
    plan: Plan,
) -> Result<Negotiated, DisconnectReason> {
    let (mut hs, first) = match plan {
        Plan::V1 => return Ok(Negotiated::V1 { prefix: Vec::new() }),
        Plan::V2Initiator => {
            let (hs, key) = V2Handshake::new(magic, Role::Initiator);
            write(stream, &key).await?;
            (hs, Vec::new())
        }
        Plan::Detect => {
            // Small on purpose: every inbound peer goes through this, most of them in v1.
            let mut prefix = [0u8; V1_PREFIX_LEN];
            let mut seen = Vec::new();
            loop {
                let n = read(stream, &mut prefix[..V1_PREFIX_LEN - seen.len()]).await?;
                if n == 0 {
                    return Err(DisconnectReason::PeerClosed);
                }
                seen.extend_from_slice(&prefix[..n]);
                match detect(magic, &seen) {
                    Detected::V1 => return Ok(Negotiated::V1 { prefix: seen }),
                    Detected::NeedMore => continue,
                    Detected::V2 => break,
                }
            }
            let (hs, key) = V2Handshake::new(magic, Role::Responder);
            write(stream, &key).await?;
            (hs, seen)
        }
    };
    let mut input = first;
    let mut buf = vec![0u8; NEGOTIATION_READ];
    loop {
        let step = hs.feed(&input).map_err(DisconnectReason::V2)?;
        if !step.send.is_empty() {
            write(stream, &step.send).await?;
        }
        if let Some(ready) = step.ready {
            return Ok(Negotiated::V2(Box::new(ready)));
        }
        let n = match stream.read(&mut buf).await {
            Ok(n) => n,
            // A v1-only peer resets or closes on our key: the caller may retry in v1.
            Err(_) if hs.role() == Role::Initiator => 0,
            Err(e) => return Err(DisconnectReason::Io(e.to_string())),
        };
        if n == 0 {
            return Err(DisconnectReason::V2(V2Error::ClosedDuringHandshake));
        }
        input = buf[..n].to_vec();
    }
}

async fn read(stream: &mut TcpStream, buf: &mut [u8]) -> Result<usize, DisconnectReason> {
    stream
        .read(buf)
        .await
        .map_err(|e| DisconnectReason::Io(e.to_string()))
}

async fn write(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), DisconnectReason> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| DisconnectReason::Io(e.to_string()))
}

/// Turns received bytes into frames: v1 framing, or v2 packets decrypted then admitted by
/// the same rules.
// The v1 decoder inline: it is what most connections use, and boxing it saves nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Deframer {
    /// Plaintext v1.
    V1(FrameDecoder),
    /// BIP324 v2, boxed: its ciphers are 500 bytes that a v1 connection's reader task
    /// would carry for nothing.
    V2(Box<V2Decoder>),
}

impl Deframer {
    fn decode(&mut self, input: &mut &[u8]) -> Option<Result<Frame, FrameError>> {
        match self {
            Deframer::V1(d) => d.decode(input),
            Deframer::V2(d) => d.decode(input),
        }
    }

    fn rules(&mut self) -> &mut FrameDecoder {
        match self {
            Deframer::V1(d) => d,
            Deframer::V2(d) => d.rules_mut(),
        }
    }
}

/// One frame on its way to the socket: our own bytes, or a frame shared by every peer that
/// asked for it (a served block is serialized once).
pub(crate) enum OutFrame {
    /// Encoded for this peer.
    Owned(Vec<u8>),
    /// Shared with other peers' queues.
    Shared(Arc<[u8]>),
}

impl OutFrame {
    fn bytes(&self) -> &[u8] {
        match self {
            OutFrame::Owned(v) => v,
            OutFrame::Shared(s) => s,
        }
    }
}

/// What one Connection has queued but not yet written, shared by the actor (which adds) and
/// its writer task (which subtracts once a frame is on the wire).
#[derive(Default)]
pub(crate) struct SendGauge {
    /// Unsent bytes, shared frames included.
    pub(crate) total: AtomicUsize,
    /// Unsent bytes of frames encoded for this peer alone.
    pub(crate) owned: AtomicUsize,
    /// The actor waits for the queue to drain (getdata serving paused).
    pub(crate) drain_wanted: AtomicBool,
}

/// A reader or writer task, aborted when dropped.
///
/// A Connection killed without its stop hook (its supervisor failed) drops its state; the
/// socket must close with it rather than stay open in a task nobody owns.
pub(super) struct SocketTask(Option<JoinHandle<()>>);

impl SocketTask {
    /// Spawns `task` on the runtime.
    pub(super) fn spawn(task: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        SocketTask(Some(tokio::spawn(task)))
    }

    /// Gives up ownership: the task is no longer aborted on drop.
    pub(super) fn detach(mut self) -> Option<JoinHandle<()>> {
        self.0.take()
    }
}

impl Drop for SocketTask {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

thread_local! {
    /// One read buffer per worker thread, shared by every reader on it: a read never spans
    /// an await, so an idle connection holds no buffer at all.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0u8; READ_CHUNK]);
}

/// Reads what the socket has (at most `max` bytes) into the thread's scratch buffer and
/// frames it. `Ok(0)` means the peer closed.
fn read_available(
    half: &OwnedReadHalf,
    decoder: &mut Deframer,
    max: usize,
    frames: &mut Vec<Result<Frame, FrameError>>,
) -> std::io::Result<usize> {
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        let limit = max.min(buf.len());
        let n = half.try_read(&mut buf[..limit])?;
        deframe(decoder, &buf[..n], frames);
        Ok(n)
    })
}

/// Frames `bytes`, stopping after a fatal error.
fn deframe(decoder: &mut Deframer, bytes: &[u8], frames: &mut Vec<Result<Frame, FrameError>>) {
    let mut input = bytes;
    while let Some(r) = decoder.decode(&mut input) {
        let fatal = matches!(&r, Err(e) if e.is_fatal());
        frames.push(r);
        if fatal {
            break;
        }
    }
}

/// Blocks asked of one peer and not yet received: the actor adds when it sends a `getdata`
/// for blocks (and subtracts on `notfound`), the reader subtracts as `block` frames arrive.
#[derive(Default)]
pub(crate) struct BlocksExpected(AtomicU32, CompactExpected, BlocksAdmitted);

/// `block` frames the reader has let in, ever: the actor compares it with those it has
/// handled to tell whether one is still on its way (being read, or in its mailbox).
#[derive(Default)]
struct BlocksAdmitted(std::sync::atomic::AtomicU64);

/// Whether compact-block messages may come from the peer unasked by `getdata`: we asked it
/// to push compact blocks (high-bandwidth), or `blocktxn` answers to our `getblocktxn` are
/// outstanding.
#[derive(Default)]
struct CompactExpected {
    pushes: std::sync::atomic::AtomicBool,
    txn: AtomicU32,
}

impl BlocksExpected {
    /// `n` more blocks asked for, saturating at [`MAX_BLOCKS_EXPECTED`].
    pub(crate) fn asked(&self, n: u32) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_add(n).min(MAX_BLOCKS_EXPECTED))
            });
    }

    /// `n` fewer outstanding (received, or refused by `notfound`).
    pub(crate) fn settled(&self, n: u32) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// Blocks asked of the peer and not yet received.
    pub(crate) fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }

    /// The reader let `n` more `block` frames in (each took one off the count).
    fn admitted(&self, n: u32) {
        (self.2).0.fetch_add(u64::from(n), Ordering::AcqRel);
    }

    /// How many `block` frames the reader has let in since the connection began.
    pub(crate) fn admitted_total(&self) -> u64 {
        (self.2).0.load(Ordering::Acquire)
    }

    /// We asked the peer to push compact blocks to us, or told it to stop.
    pub(crate) fn set_compact_pushes(&self, on: bool) {
        self.1.pushes.store(on, Ordering::Release);
    }

    /// A `getblocktxn` went (`asked`) or its `blocktxn` came.
    pub(crate) fn blocktxn(&self, asked: bool) {
        let _ = self
            .1
            .txn
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(if asked {
                    v.saturating_add(1).min(MAX_BLOCKS_EXPECTED)
                } else {
                    v.saturating_sub(1)
                })
            });
    }

    fn compact_expected(&self) -> bool {
        self.1.pushes.load(Ordering::Acquire) || self.1.txn.load(Ordering::Acquire) > 0
    }
}

/// Arguments of the [`reader`] task.
pub(super) struct ReaderArgs {
    pub(super) half: OwnedReadHalf,
    pub(super) actor: ActorRef<ConnectionMsg>,
    pub(super) decoder: Deframer,
    /// Bytes already read from the socket (v1 detection or after the v2 version packet).
    pub(super) initial: Vec<u8>,
    pub(super) credit: Arc<Semaphore>,
    pub(super) throttle: Throttle,
    pub(super) ctx: Arc<NodeContext>,
    pub(super) blocks: Arc<BlocksExpected>,
    /// The peer as logs name it, and its id.
    pub(super) peer: String,
    pub(super) id: crate::shared::peers::PeerId,
    /// A `noban` or manual peer: its drops are counted and logged, never a disconnect (Core
    /// disconnects neither for unsolicited data).
    pub(super) trusted: bool,
}

/// The socket's reader task. A plain function returning the future, not an `async fn`:
/// an `async fn` keeps its argument beside the fields moved out of it for as long as it
/// runs, 700 bytes more per connection (#29).
pub(super) fn reader(args: ReaderArgs) -> impl std::future::Future<Output = ()> {
    let ReaderArgs {
        half,
        actor,
        mut decoder,
        initial,
        credit,
        mut throttle,
        ctx,
        blocks,
        peer,
        id,
        trusted,
    } = args;
    async move {
        let mut frames = Vec::new();
        let mut useless = UselessFrames::new(std::time::Instant::now());
        let mut initial = Some(initial).filter(|b| !b.is_empty());
        loop {
            let first = initial.take();
            if first.is_none() {
                // Idle from here, perhaps for minutes: the last batch's slots go back.
                frames.shrink_to_fit();
                if let Err(e) = half.readable().await {
                    let _ = actor.cast(ConnectionMsg::ReaderEnded(DisconnectReason::Io(
                        e.to_string(),
                    )));
                    return;
                }
            }
            // Read after the wait: a getdata sent meanwhile has raised it.
            let expected = blocks.get();
            decoder.rules().set_blocks_expected(expected);
            decoder
                .rules()
                .set_compact_expected(blocks.compact_expected());
            let read = if let Some(bytes) = first {
                // Read during the negotiation: framed (and paced) first, as if just read.
                deframe(&mut decoder, &bytes, &mut frames);
                Ok(bytes.len())
            } else {
                read_available(&half, &mut decoder, throttle.chunk(READ_CHUNK), &mut frames)
            };
            let admitted = expected - decoder.rules().blocks_expected().unwrap_or(expected);
            blocks.settled(admitted);
            blocks.admitted(admitted);
            let n = match read {
                Ok(0) => {
                    let _ = actor.cast(ConnectionMsg::ReaderEnded(DisconnectReason::PeerClosed));
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    let _ = actor.cast(ConnectionMsg::ReaderEnded(DisconnectReason::Io(
                        e.to_string(),
                    )));
                    return;
                }
            };
            for result in frames.drain(..) {
                match result {
                    Ok(frame) => {
                        if frame.extent == Extent::Skipped {
                            // A command nothing reads, its payload skipped unread: a useless frame
                            // like any other dropped one (Core ignores unknown messages; a flood
                            // of them is still work), counted against the same budget.
                            match useless.on_drop(std::time::Instant::now()) {
                                DropVerdict::Log { dropped } => {
                                    warn!(%peer, %id, dropped, last = %frame.command.as_str(), "dropped frames");
                                }
                                DropVerdict::Quiet => {}
                                DropVerdict::Disconnect { .. } if trusted => {}
                                DropVerdict::Disconnect { total } => {
                                    metrics::counter!("meshd_useless_frame_disconnects_total")
                                        .increment(1);
                                    warn!(%peer, %id, total, last = %frame.command.as_str(), "too many useless frames; disconnecting");
                                    let _ = actor.cast(ConnectionMsg::ReaderEnded(
                                        DisconnectReason::UselessFrames(total),
                                    ));
                                    return;
                                }
                            }
                        }
                        let wire_len = frame.wire_len();
                        let command = command_label(frame.command.as_str());
                        // Weighed by what it holds: a skipped payload holds nothing, a list part
                        // only its own items.
                        let held = (FRAME_HEADER_LEN + frame.payload.len()).max(MIN_MESSAGE_WEIGHT);
                        let weight = held.min(READER_CREDIT_BYTES as usize) as u32;
                        let Ok(permit) = credit.clone().acquire_many_owned(weight).await else {
                            return;
                        };
                        let message = Message::decode_for(frame, ctx.profile.chain);
                        let inbound = Inbound {
                            command,
                            wire_len,
                            message,
                            credit: Some(permit),
                        };
                        if actor.cast(ConnectionMsg::Inbound(inbound)).is_err() {
                            discard_until_closed(&half).await;
                            return;
                        }
                    }
                    Err(e) if e.is_fatal() => {
                        metrics::counter!("meshd_frame_errors_total", "kind" => e.kind())
                            .increment(1);
                        let _ = actor.cast(ConnectionMsg::ReaderEnded(DisconnectReason::Frame(e)));
                        return;
                    }
                    Err(e) => {
                        metrics::counter!("meshd_frame_errors_total", "kind" => e.kind())
                            .increment(1);
                        // A block we asked for that is above our limit: not the peer's fault, and
                        // Sync needs to hear of it (it asks another peer). At most as many as we
                        // asked for, so it takes no budget.
                        let asked_for =
                            matches!(e, FrameError::RequestedTooLarge { block: Some(_), .. });
                        // A too-large compact block or `blocktxn` may not answer anything of
                        // ours (the actor matches it): it counts as useless, as a block never
                        // does (the reader counted it against what we asked).
                        let whole_block = asked_for
                            && matches!(&e, FrameError::RequestedTooLarge { command, .. } if command.as_str() == "block");
                        // Dropped unread, but never free: counted against the peer's budget of
                        // useless frames, and logged at most once a minute with the count.
                        let verdict = if whole_block {
                            DropVerdict::Quiet
                        } else {
                            useless.on_drop(std::time::Instant::now())
                        };
                        match verdict {
                            DropVerdict::Log { dropped } => {
                                // At most once a minute per peer, with the count since the last line.
                                warn!(%peer, %id, dropped, last = %e, "dropped frames");
                            }
                            DropVerdict::Quiet => {}
                            DropVerdict::Disconnect { .. } if trusted => {}
                            DropVerdict::Disconnect { total } => {
                                metrics::counter!("meshd_useless_frame_disconnects_total")
                                    .increment(1);
                                warn!(%peer, %id, total, last = %e, "too many useless frames; disconnecting");
                                let _ = actor.cast(ConnectionMsg::ReaderEnded(
                                    DisconnectReason::UselessFrames(total),
                                ));
                                return;
                            }
                        }
                        if misbehavior::cost(e.kind()) == 0 && !asked_for {
                            continue;
                        }
                        // Chargeable: the actor owns the score, and the message weighs what any
                        // message does against the reader's credit.
                        let Ok(permit) = credit
                            .clone()
                            .acquire_many_owned(MIN_MESSAGE_WEIGHT as u32)
                            .await
                        else {
                            return;
                        };
                        if actor.cast(ConnectionMsg::DroppedFrame(e, permit)).is_err() {
                            discard_until_closed(&half).await;
                            return;
                        }
                    }
                }
            }
            let wait = throttle.take(n);
            if !wait.is_zero() {
                ctx.throttled_down_us
                    .fetch_add(wait.as_micros() as u64, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// After the actor stopped: reads and drops what the peer still sends until it closes (or the
/// closing task aborts us), so that closing the socket sends FIN rather than a reset for
/// unread data.
async fn discard_until_closed(half: &OwnedReadHalf) {
    loop {
        if half.readable().await.is_err() {
            return;
        }
        let done = SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            match half.try_read(&mut buf[..]) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        });
        if done {
            return;
        }
    }
}

/// Arguments of the [`writer`] task.
pub(super) struct WriterArgs {
    pub(super) half: OwnedWriteHalf,
    pub(super) rx: super::outqueue::OutReceiver,
    pub(super) actor: ActorRef<ConnectionMsg>,
    pub(super) throttle: Throttle,
    pub(super) ctx: Arc<NodeContext>,
    pub(super) gauge: Arc<SendGauge>,
    /// v2: encrypts each frame as it is written.
    pub(super) encoder: Option<V2Encoder>,
}

/// The socket's writer task (a plain function for the reason [`reader`] gives).
pub(super) fn writer(args: WriterArgs) -> impl std::future::Future<Output = ()> {
    let WriterArgs {
        mut half,
        mut rx,
        actor,
        mut throttle,
        ctx,
        gauge,
        mut encoder,
    } = args;
    async move {
        while let Some(frame) = rx.recv().await {
            let packet;
            let mut rest = match encoder.as_mut() {
                Some(enc) => match enc.encrypt_v1_frame(frame.bytes()) {
                    Ok(p) => {
                        packet = p;
                        &packet[..]
                    }
                    Err(e) => {
                        // No message meshd sends on BTC comes near 16 MiB; one that did
                        // cannot be framed on v2, and the session cannot skip it.
                        let _ = actor.cast(ConnectionMsg::WriterFailed(e.to_string()));
                        return;
                    }
                },
                None => frame.bytes(),
            };
            while !rest.is_empty() {
                let n = throttle.chunk(rest.len()).min(rest.len());
                let wait = throttle.take(n);
                if !wait.is_zero() {
                    ctx.throttled_up_us
                        .fetch_add(wait.as_micros() as u64, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                }
                if let Err(e) = half.write_all(&rest[..n]).await {
                    let _ = actor.cast(ConnectionMsg::WriterFailed(e.to_string()));
                    return;
                }
                rest = &rest[n..];
            }
            let len = frame.bytes().len();
            gauge.total.fetch_sub(len, Ordering::Relaxed);
            if let OutFrame::Owned(_) = frame {
                gauge.owned.fetch_sub(len, Ordering::Relaxed);
            }
            drop(frame);
            let drained = gauge.total.load(Ordering::Relaxed) < GETDATA_SEND_BUDGET / 2
                && rx.len() < rx.max_capacity() / 2;
            if drained && gauge.drain_wanted.swap(false, Ordering::AcqRel) {
                let _ = actor.cast(ConnectionMsg::SendDrained);
            }
        }
        // The actor is gone and the queue is drained: close our side.
        let _ = half.shutdown().await;
    }
}
