//! The queue between a Connection actor and its writer task: bounded in frames, one
//! producer and one consumer, and empty-handed while idle. tokio's bounded channel would
//! do the job but allocates 1.3 KiB per connection up front (its cache-padded state and a
//! first block of 32 slots) and keeps it for life; at 10,000 idle peers that is 13 MiB
//! spent on queues that hold nothing (#29). Here the slots are allocated when frames are
//! queued and handed back when the writer finds the queue empty.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::io::OutFrame;

/// Slots an empty queue may keep: an active peer's usual burst (ping, inv, a few
/// announcements) without allocating each time, about 100 bytes.
const IDLE_SLOTS: usize = 4;

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum QueueError {
    /// `capacity` frames are already waiting.
    Full,
    /// The writer has ended.
    Closed,
}

struct Shared {
    frames: Mutex<VecDeque<OutFrame>>,
    /// Wakes the writer: a frame was queued or the sender went away.
    wake: Notify,
    /// The sender is gone.
    sender_gone: AtomicBool,
    /// The receiver is gone.
    receiver_gone: AtomicBool,
    capacity: usize,
}

impl Shared {
    fn frames(&self) -> MutexGuard<'_, VecDeque<OutFrame>> {
        // A panic while the lock was held leaves only whole frames behind.
        self.frames.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The actor's end.
pub(crate) struct OutSender {
    shared: Arc<Shared>,
}

/// The writer's end.
pub(crate) struct OutReceiver {
    shared: Arc<Shared>,
}

/// A queue of at most `capacity` frames (at least one).
pub(crate) fn out_queue(capacity: usize) -> (OutSender, OutReceiver) {
    let shared = Arc::new(Shared {
        frames: Mutex::new(VecDeque::new()),
        wake: Notify::new(),
        sender_gone: AtomicBool::new(false),
        receiver_gone: AtomicBool::new(false),
        capacity: capacity.max(1),
    });
    (
        OutSender {
            shared: shared.clone(),
        },
        OutReceiver { shared },
    )
}

impl OutSender {
    /// Queues `frame` unless the queue is full or the writer has ended.
    pub(crate) fn try_send(&self, frame: OutFrame) -> Result<(), QueueError> {
        {
            let mut frames = self.shared.frames();
            // Under the lock the receiver's drop also clears under: nothing is left behind.
            if self.shared.receiver_gone.load(Ordering::Acquire) {
                return Err(QueueError::Closed);
            }
            if frames.len() >= self.shared.capacity {
                return Err(QueueError::Full);
            }
            frames.push_back(frame);
        }
        // One consumer: a wake with no one waiting is kept for its next wait.
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Frames that can still be queued.
    pub(crate) fn capacity(&self) -> usize {
        self.shared.capacity - self.shared.frames().len().min(self.shared.capacity)
    }

    /// The most frames the queue holds.
    pub(crate) fn max_capacity(&self) -> usize {
        self.shared.capacity
    }
}

impl Drop for OutSender {
    fn drop(&mut self) {
        self.shared.sender_gone.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

impl OutReceiver {
    /// The next frame, in order; `None` once the sender is gone and every frame it queued
    /// has been taken.
    pub(crate) async fn recv(&mut self) -> Option<OutFrame> {
        loop {
            {
                let mut frames = self.shared.frames();
                if let Some(frame) = frames.pop_front() {
                    return Some(frame);
                }
                if self.shared.sender_gone.load(Ordering::Acquire) {
                    return None;
                }
                // Empty and about to wait: the slots of the last burst go back (not at every
                // pop that empties it, which a queue going 0, 5, 0 would pay each time).
                if frames.capacity() > IDLE_SLOTS {
                    frames.shrink_to(IDLE_SLOTS);
                }
            }
            self.shared.wake.notified().await;
        }
    }

    /// Frames waiting.
    pub(crate) fn len(&self) -> usize {
        self.shared.frames().len()
    }

    /// The most frames the queue holds.
    pub(crate) fn max_capacity(&self) -> usize {
        self.shared.capacity
    }
}

impl Drop for OutReceiver {
    fn drop(&mut self) {
        let mut frames = self.shared.frames();
        self.shared.receiver_gone.store(true, Ordering::Release);
        // What is left is never written: free it now, not when the sender goes.
        *frames = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn owned(b: u8) -> OutFrame {
        OutFrame::Owned(vec![b])
    }

    fn first_byte(f: OutFrame) -> u8 {
        match f {
            OutFrame::Owned(v) => v[0],
            OutFrame::Shared(s) => s[0],
        }
    }

    #[tokio::test]
    async fn frames_arrive_in_order_and_a_full_queue_refuses() {
        let (tx, mut rx) = out_queue(3);
        for b in 0..3 {
            tx.try_send(owned(b)).unwrap();
        }
        assert_eq!(tx.try_send(owned(9)), Err(QueueError::Full));
        assert_eq!((tx.capacity(), rx.len()), (0, 3));
        for b in 0..3 {
            assert_eq!(first_byte(rx.recv().await.unwrap()), b);
        }
        assert_eq!(tx.capacity(), 3);
    }

    #[tokio::test]
    async fn the_writer_drains_what_was_queued_before_the_sender_went() {
        let (tx, mut rx) = out_queue(8);
        tx.try_send(owned(1)).unwrap();
        tx.try_send(OutFrame::Shared(Arc::from(&[2u8][..])))
            .unwrap();
        drop(tx);
        assert_eq!(first_byte(rx.recv().await.unwrap()), 1);
        assert_eq!(first_byte(rx.recv().await.unwrap()), 2);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_for_a_frame_and_for_the_end() {
        let (tx, mut rx) = out_queue(8);
        let writer = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(f) = rx.recv().await {
                got.push(first_byte(f));
            }
            got
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(owned(7)).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(owned(8)).unwrap();
        drop(tx);
        let got = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, vec![7, 8]);
    }

    #[tokio::test]
    async fn a_gone_writer_refuses_frames() {
        let (tx, rx) = out_queue(8);
        tx.try_send(owned(1)).unwrap();
        drop(rx);
        assert_eq!(tx.try_send(owned(2)), Err(QueueError::Closed));
    }

    #[tokio::test]
    async fn an_emptied_queue_gives_back_its_slots() {
        let (tx, mut rx) = out_queue(1000);
        for b in 0..200u32 {
            tx.try_send(owned(b as u8)).unwrap();
        }
        assert!(rx.shared.frames().capacity() >= 200);
        for _ in 0..200 {
            rx.recv().await.unwrap();
        }
        // The writer looks for the next frame and finds none: it is about to wait.
        let waiting = tokio::time::timeout(Duration::from_millis(20), rx.recv()).await;
        assert!(waiting.is_err(), "nothing queued");
        assert!(rx.shared.frames().capacity() <= IDLE_SLOTS);
        // A fresh queue holds nothing at all.
        let (_tx, rx) = out_queue(1000);
        assert_eq!(rx.shared.frames().capacity(), 0);
    }

    #[test]
    fn frames_from_another_thread_arrive_in_order_under_contention() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, mut rx) = out_queue(64);
            let producer = std::thread::spawn(move || {
                let mut sent = 0u32;
                while sent < 20_000 {
                    match tx.try_send(OutFrame::Owned(sent.to_le_bytes().to_vec())) {
                        Ok(()) => sent += 1,
                        Err(QueueError::Full) => std::thread::yield_now(),
                        Err(QueueError::Closed) => panic!("closed"),
                    }
                }
            });
            let mut next = 0u32;
            while let Some(f) = rx.recv().await {
                let OutFrame::Owned(v) = f else { panic!() };
                assert_eq!(u32::from_le_bytes(v[..4].try_into().unwrap()), next);
                next += 1;
            }
            producer.join().unwrap();
            assert_eq!(next, 20_000);
        });
    }
}
