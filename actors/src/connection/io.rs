//! The Connection's socket tasks: a reader that frames bytes and hands messages to the actor
//! under a byte credit, and a writer that drains the bounded send queue. Both pace themselves
//! with the bandwidth [`Throttle`]s.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use ractor::ActorRef;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use super::bandwidth::Throttle;
use crate::constants::{
    FRAME_HEADER_LEN, GETDATA_SEND_BUDGET, MAX_BLOCKS_EXPECTED, MIN_MESSAGE_WEIGHT,
    READER_CREDIT_BYTES, READ_CHUNK,
};
use crate::context::NodeContext;
use crate::msg::{ConnectionMsg, Inbound};
use crate::peer::DisconnectReason;
use crate::wire::{command_label, Frame, FrameDecoder, FrameError, Message};

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
    decoder: &mut FrameDecoder,
    max: usize,
    frames: &mut Vec<Result<Frame, FrameError>>,
) -> std::io::Result<usize> {
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        let limit = max.min(buf.len());
        let n = half.try_read(&mut buf[..limit])?;
        let mut input = &buf[..n];
        while let Some(r) = decoder.decode(&mut input) {
            let fatal = matches!(&r, Err(e) if e.is_fatal());
            frames.push(r);
            if fatal {
                break;
            }
        }
        Ok(n)
    })
}

/// Blocks asked of one peer and not yet received: the actor adds when it sends a `getdata`
/// for blocks (and subtracts on `notfound`), the reader subtracts as `block` frames arrive.
#[derive(Default)]
pub(crate) struct BlocksExpected(AtomicU32);

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

    fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

pub(super) async fn reader(
    half: OwnedReadHalf,
    actor: ActorRef<ConnectionMsg>,
    mut decoder: FrameDecoder,
    credit: Arc<Semaphore>,
    mut throttle: Throttle,
    ctx: Arc<NodeContext>,
    blocks: Arc<BlocksExpected>,
) {
    let mut frames = Vec::new();
    loop {
        if let Err(e) = half.readable().await {
            let _ = actor.cast(ConnectionMsg::ReaderEnded(DisconnectReason::Io(
                e.to_string(),
            )));
            return;
        }
        let expected = blocks.get();
        decoder.set_blocks_expected(expected);
        let read = read_available(&half, &mut decoder, throttle.chunk(READ_CHUNK), &mut frames);
        blocks.settled(expected - decoder.blocks_expected().unwrap_or(expected));
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
                    let wire_len = frame.wire_len();
                    let command = command_label(frame.command.as_str());
                    // Weighed by what it holds: a skipped payload holds nothing, a list part
                    // only its own items.
                    let held = (FRAME_HEADER_LEN + frame.payload.len()).max(MIN_MESSAGE_WEIGHT);
                    let weight = held.min(READER_CREDIT_BYTES as usize) as u32;
                    let Ok(permit) = credit.clone().acquire_many_owned(weight).await else {
                        return;
                    };
                    let message = Message::decode(frame);
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
                    metrics::counter!("meshd_frame_errors_total", "kind" => e.kind()).increment(1);
                    let _ = actor.cast(ConnectionMsg::ReaderEnded(DisconnectReason::Frame(e)));
                    return;
                }
                Err(e) => {
                    if actor.cast(ConnectionMsg::DroppedFrame(e)).is_err() {
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

pub(super) async fn writer(
    mut half: OwnedWriteHalf,
    mut rx: mpsc::Receiver<OutFrame>,
    actor: ActorRef<ConnectionMsg>,
    mut throttle: Throttle,
    ctx: Arc<NodeContext>,
    gauge: Arc<SendGauge>,
) {
    while let Some(frame) = rx.recv().await {
        let mut rest = frame.bytes();
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
